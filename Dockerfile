# kubernetes-entrypoint on a distroless Python base: no shell, no coreutils, runs as nobody.
# Also usable as a source stage in another image's build:
#   COPY --from=kubernetes-entrypoint /usr/local/bin/kubernetes-entrypoint /usr/local/bin/

# Built by the image's own Python: the executable (the script and its bytecode in one file) and
# the bytecode of the standard library modules it uses, which distroless does not ship.
FROM gcr.io/distroless/python3-debian13:nonroot AS build
COPY kubernetes_entrypoint.py image/build.py /tmp/build/
RUN ["/usr/bin/python3", "-I", "-S", "/tmp/build/build.py", "/tmp/build/kubernetes_entrypoint.py", "/tmp/out"]

FROM gcr.io/distroless/python3-debian13:nonroot
COPY --from=build --chown=0:0 /tmp/out/ /
USER 65534:65534
ENTRYPOINT ["/usr/local/bin/kubernetes-entrypoint"]
