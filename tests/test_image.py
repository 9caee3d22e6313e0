"""The image as users run it: the Dockerfile built with podman on the distroless base, run with
`podman run --network host` against the fake API on 127.0.0.1.

`.ci/run` builds the image (tag kubernetes-entrypoint, or ENTRYPOINT_TEST_IMAGE) before the tests.
Without podman or the image the tests are skipped, except in CI (CI=true), where they must run.
"""

import json
import os
import shutil
import subprocess
import time

import pytest

import fakeapi as k8s
from certs import Authority
from conftest import wait_for

IMAGE = os.environ.get("ENTRYPOINT_TEST_IMAGE", "kubernetes-entrypoint")
SERVICEACCOUNT = "/var/run/secrets/kubernetes.io/serviceaccount"
PRINT_PID_AND_UID = "/usr/bin/python3 -I -c print(__import__('os').getpid(),__import__('os').getuid())"


def image_present():
    if not shutil.which("podman"):
        return False
    return subprocess.run(["podman", "image", "exists", IMAGE]).returncode == 0


pytestmark = pytest.mark.skipif(
    os.environ.get("CI") != "true" and not image_present(),
    reason="podman or the image %s is missing (.ci/run builds it)" % IMAGE)


def podman_run(env=None, options=(), name=None, background=False, arguments=()):
    """`podman run` of the image with these variables; the result, or the Popen when background."""
    command = ["podman", "run", "--rm", "--network", "host"]
    if name:
        command += ["--name", name]
    for key, value in (env or {}).items():
        command += ["-e", "%s=%s" % (key, value)]
    command += list(options) + [IMAGE] + list(arguments)
    if background:
        return subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                universal_newlines=True)
    return subprocess.run(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                          universal_newlines=True, timeout=120)


def readable_by_anyone(directory):
    """Files mounted into the image are read by uid 65534."""
    os.chmod(str(directory), 0o755)
    for path in directory.iterdir():
        os.chmod(str(path), 0o755 if path.is_dir() else 0o644)


def test_echo_is_answered_in_process():
    result = podman_run({"COMMAND": "echo hello from distroless"})
    assert result.returncode == 0, result.stderr
    assert result.stdout.splitlines()[-1] == "hello from distroless"


def test_command_is_execd_as_pid_1_by_user_65534():
    result = podman_run({"COMMAND": PRINT_PID_AND_UID})
    assert result.returncode == 0, result.stderr
    assert result.stdout.split() == ["1", "65534"]


def test_config_rendered_on_a_read_only_root(tmp_path):
    configmaps = tmp_path / "configmaps"
    (configmaps / "app.conf").mkdir(parents=True)
    (configmaps / "app.conf" / "app.conf").write_bytes(b"listen {{ .IP }}\r\n")
    readable_by_anyone(configmaps)
    readable_by_anyone(configmaps / "app.conf")
    result = podman_run({
        "DEPENDENCY_CONFIG": "/tmp/etc/app.conf", "INTERFACE_NAME": "lo",
        "COMMAND": "/usr/bin/python3 -I -c print(open('/tmp/etc/app.conf','rb').read())",
    }, options=["--read-only", "--tmpfs", "/tmp", "-v", "%s:/configmaps:ro" % configmaps])
    assert result.returncode == 0, result.stderr
    assert result.stdout.splitlines()[-1] == repr(b"listen 127.0.0.1\r\n")


def test_service_over_tls_with_a_ca_strict_mode_refuses(tmp_path):
    """Python 3.13's strict X.509 rules would refuse this older cluster's certificates."""
    authority = Authority(key_usage=False, subject_key_id=False)
    tls = authority.issue(authority_key_id=False) + (authority.pem,)
    with k8s.FakeKubeAPI(tmp_path / "api", tls=tls) as api:
        api.put(k8s.endpoint_slice("db"))
        readable_by_anyone(api.sa_dir)
        result = podman_run({
            "KUBERNETES_SERVICE_HOST": api.host, "KUBERNETES_SERVICE_PORT": str(api.port),
            "DEPENDENCY_SERVICE": "db", "COMMAND": PRINT_PID_AND_UID,
        }, options=["-v", "%s:%s:ro" % (api.sa_dir, SERVICEACCOUNT)])
        assert result.returncode == 0, result.stdout + result.stderr
        assert result.stdout.splitlines()[-1].split() == ["1", "65534"]
        assert "Dependency Service db in namespace default is resolved." in result.stdout


def test_sigterm_to_pid_1_right_after_start_exits_143(tmp_path):
    name = "kubernetes-entrypoint-test-%d" % os.getpid()
    run = podman_run({"DEPENDENCY_SOCKET": "/never"}, name=name, background=True)
    try:
        wait_for(lambda: subprocess.run(
            ["podman", "container", "inspect", "-f", "{{.State.Running}}", name],
            stdout=subprocess.PIPE, stderr=subprocess.DEVNULL,
            universal_newlines=True).stdout.strip() == "true", timeout=60, interval=0.005)
        started = time.monotonic()
        subprocess.run(["podman", "kill", "--signal", "TERM", name], stdout=subprocess.DEVNULL)
        stdout, stderr = run.communicate(timeout=30)
        assert run.returncode == 143, stdout + stderr
        assert time.monotonic() - started < 5
        assert "Traceback" not in stderr
    finally:
        if run.poll() is None:
            subprocess.run(["podman", "kill", name], stdout=subprocess.DEVNULL,
                           stderr=subprocess.DEVNULL)
            run.communicate()


def test_pods_python_variables_do_not_reach_the_entrypoint():
    """An app image's virtualenv settings: the entrypoint runs isolated, the command sees them."""
    variables = {"PYTHONHOME": "/opt/venv", "PYTHONPATH": "/opt/app/lib"}
    result = podman_run(dict(variables, COMMAND="/usr/bin/python3 -I -c "
                             "print(__import__('json').dumps(dict(__import__('os').environ)))"))
    assert result.returncode == 0, result.stderr
    seen = json.loads(result.stdout.splitlines()[-1])
    assert {k: seen.get(k) for k in variables} == variables


def test_executable_lifted_into_another_image_runs_on_its_python(tmp_path):
    """`COPY --from=` takes the one file; where the Python differs from the image's, the bytecode
    inside is passed over and the source beside it runs."""
    container = subprocess.run(["podman", "create", IMAGE], stdout=subprocess.PIPE,
                               universal_newlines=True, check=True).stdout.strip()
    try:
        lifted = tmp_path / "kubernetes-entrypoint"
        subprocess.run(["podman", "cp", "%s:/usr/local/bin/kubernetes-entrypoint" % container,
                        str(lifted)], check=True)
    finally:
        subprocess.run(["podman", "rm", container], stdout=subprocess.DEVNULL)
    assert os.access(str(lifted), os.X_OK)
    if not os.access("/usr/bin/python3", os.X_OK):
        pytest.skip("no /usr/bin/python3 here to run it with")
    result = subprocess.run([str(lifted)], env={"PATH": "/usr/bin:/bin", "COMMAND": "echo lifted"},
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            universal_newlines=True, timeout=30)
    assert (result.returncode, result.stdout) == (0, "lifted\n"), result.stderr


def test_plain_source_copied_in_still_runs(tmp_path):
    script = tmp_path / "kubernetes_entrypoint.py"
    shutil.copy(os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))),
                             "kubernetes_entrypoint.py"), str(script))
    os.chmod(str(tmp_path), 0o755)
    os.chmod(str(script), 0o644)
    result = podman_run({"COMMAND": "echo from source"}, options=[
        "-v", "%s:/app:ro" % tmp_path, "--entrypoint", "/usr/bin/python3"],
        arguments=["-I", "-S", "/app/kubernetes_entrypoint.py"])
    assert (result.returncode, result.stdout) == (0, "from source\n"), result.stderr


def compiled_from_source(stderr):
    """The modules `python -v` says it compiled from source rather than loaded as bytecode."""
    return [line for line in stderr.splitlines()
            if line.startswith("# code object from") and not line.rstrip("'").endswith(".pyc")]


def test_nothing_is_compiled_at_start(tmp_path):
    """A TLS request (whose host name goes through the idna codec) and --help (every option's
    text) load only bytecode: the build compiled all they import, even without an import
    statement in the source."""
    verbose = ["--read-only", "--entrypoint", "/usr/bin/python3"]
    executable = ["-I", "-S", "-v", "/usr/local/bin/kubernetes-entrypoint"]
    with k8s.FakeKubeAPI(tmp_path / "api") as api:
        api.put(k8s.endpoint_slice("db"))
        readable_by_anyone(api.sa_dir)
        result = podman_run({
            "KUBERNETES_SERVICE_HOST": api.host, "KUBERNETES_SERVICE_PORT": str(api.port),
            "DEPENDENCY_SERVICE": "db", "COMMAND": "echo met",
        }, options=verbose + ["-v", "%s:%s:ro" % (api.sa_dir, SERVICEACCOUNT)],
            arguments=executable)
    assert result.returncode == 0 and result.stdout.splitlines()[-1] == "met", result.stderr
    assert compiled_from_source(result.stderr) == []
    result = podman_run(options=verbose, arguments=executable + ["--help"])
    assert result.returncode == 0, result.stderr
    assert compiled_from_source(result.stderr) == []


def test_tcp_and_https_dependencies_in_the_image(tmp_path):
    """http.client and ssl, loaded only for an HTTP dependency, work on the distroless Python."""
    import socket
    import ssl
    import threading
    import http.server
    import trustme

    ca = trustme.CA()
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    ca.issue_cert("127.0.0.1").configure_cert(context)
    certs = tmp_path / "certs"
    certs.mkdir()
    ca.cert_pem.write_to_path(str(certs / "ca.pem"))
    readable_by_anyone(certs)

    class Healthy(http.server.BaseHTTPRequestHandler):
        def do_GET(self):
            self.send_response(204)
            self.end_headers()

        def log_message(self, *args):
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Healthy)
    server.socket = context.wrap_socket(server.socket, server_side=True)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen(4)
    try:
        result = podman_run({
            "DEPENDENCY_TCP": "127.0.0.1:%d" % listener.getsockname()[1],
            "DEPENDENCY_HTTP": "https://127.0.0.1:%d/healthz" % server.server_address[1],
            "ENTRYPOINT_HTTP_CA": "/certs/ca.pem", "COMMAND": PRINT_PID_AND_UID,
        }, options=["-v", "%s:/certs:ro" % certs])
        assert result.returncode == 0, result.stdout + result.stderr
        assert result.stdout.splitlines()[-1].split() == ["1", "65534"]
    finally:
        server.shutdown()
        listener.close()
