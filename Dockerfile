# kubernetes-entrypoint on a distroless Python base: no shell, no coreutils, runs as nobody.
# Also usable as a source stage in another image's build:
#   COPY --from=kubernetes-entrypoint /usr/local/bin/kubernetes-entrypoint /usr/local/bin/
FROM gcr.io/distroless/python3-debian13:nonroot

COPY --chmod=0755 kubernetes_entrypoint.py /usr/local/bin/kubernetes-entrypoint

USER 65534:65534
ENTRYPOINT ["/usr/local/bin/kubernetes-entrypoint"]
