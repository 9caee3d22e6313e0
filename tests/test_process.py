"""End to end: the script as a subprocess against the fake API server, as an operator runs it."""

import json
import os
import signal
import subprocess
import sys
import time

import pytest

import fakeapi as k8s
from conftest import SCRIPT, wait_for

ME = {"POD_NAME": "me", "NAMESPACE": "default"}


def wait_until_waiting(api):
    """The entrypoint has read the cluster and is now waiting: watching, or polling round after round."""
    wait_for(lambda: api.open_watches >= 1 or len(api.requests) >= 6)
    time.sleep(0.3)


def this_pod(api, node="node-a", **extra):
    return api.put(k8s.pod("me", node=node, host_ip="192.0.2.1", **extra))


# One scenario per kind: the variables, a state where the dependency is not met, and the change
# that meets it. The same scenarios run "met at once" and "met while waiting".

def service_unmet(api):
    api.put(k8s.service("db"))
    api.put(k8s.endpoint_slice("db", addresses=(("10.0.0.1", False),)))


def service_met(api):
    api.put(k8s.endpoint_slice("db", addresses=(("10.0.0.1", False), ("10.0.0.2", True))))


def container_unmet(api):
    this_pod(api, containers=("app", "libvirt"))


def container_met(api):
    this_pod(api, containers=("app", "libvirt"), ready_containers=("libvirt",))


def daemonset_unmet(api):
    this_pod(api)
    api.put(k8s.daemonset("ovs", "infra", match_labels={"app": "ovs"}))
    # ready, but on another node: does not count
    api.put(k8s.pod("ovs-b", "infra", labels={"app": "ovs"}, node="node-b", host_ip="192.0.2.2",
                    ready=True))
    # on this node, scheduled but not started: no hostIP yet, so it must be waited for
    api.put(k8s.pod("ovs-a", "infra", labels={"app": "ovs"}, node="node-a"))


def daemonset_met(api):
    api.put(k8s.pod("ovs-a", "infra", labels={"app": "ovs"}, node="node-a", host_ip="192.0.2.1",
                    ready=True))


def jobs_unmet(api):
    api.put(k8s.job("db-init", "openstack", active=1))


def jobs_met(api):
    api.put(k8s.job("db-init", "openstack", succeeded=1))


def jobs_json_unmet(api):
    api.put(k8s.job("a", labels={"app": "nova"}, succeeded=1))
    api.put(k8s.job("b", labels={"app": "nova"}, active=1))  # a match that has not succeeded
    api.put(k8s.job("c", labels={"app": "other"}))


def jobs_json_met(api):
    api.put(k8s.job("b", labels={"app": "nova"}, succeeded=1))


def pods_unmet(api):
    this_pod(api)
    api.put(k8s.pod("x-b", labels={"app": "x"}, node="node-b", ready=True))
    api.put(k8s.pod("x-a", labels={"app": "x"}, node="node-a"))


def pods_met(api):
    api.put(k8s.pod("x-a", labels={"app": "x"}, node="node-a", host_ip="192.0.2.1", ready=True))


def widget_unmet(api):
    # the kind is not served yet (its CRD is not installed): not met, not an error
    pass


def widget_met(api):
    api.register_resource("example.com/v1", "widgets", "Widget")
    api.put(k8s.custom("example.com/v1", "Widget", "w", "default", spec={"size": 3},
                       status={"conditions": [{"type": "Ready", "status": "True"}]}))


SCENARIOS = {
    "service": ({"DEPENDENCY_SERVICE": "db"}, service_unmet, service_met),
    "container": (dict(ME, DEPENDENCY_CONTAINER="libvirt"), container_unmet, container_met),
    "daemonset": (dict(ME, DEPENDENCY_DAEMONSET="infra:ovs"), daemonset_unmet, daemonset_met),
    "jobs": ({"DEPENDENCY_JOBS": "openstack:db-init"}, jobs_unmet, jobs_met),
    "jobs_json": ({"DEPENDENCY_JOBS_JSON": '[{"labels": {"app": "nova"}}]'},
                  jobs_json_unmet, jobs_json_met),
    "pod_json": (dict(ME, DEPENDENCY_POD_JSON='[{"labels": {"app": "x"}, "requireSameNode": true}]'),
                 pods_unmet, pods_met),
    "custom_resource": (
        {"DEPENDENCY_CUSTOM_RESOURCE": json.dumps([{
            "apiVersion": "example.com/v1", "kind": "Widget", "name": "w",
            "fields": [{"key": "spec.size", "value": "3"}],
            "conditions": [{"type": "Ready"}]}])},
        widget_unmet, widget_met),
}


@pytest.mark.parametrize("kind", sorted(SCENARIOS))
def test_met_at_once(api, entrypoint, kind):
    env, unmet, met = SCENARIOS[kind]
    unmet(api)
    met(api)
    run = entrypoint(dict(api.env(), **env))
    report = run.assert_execd()
    assert report["args"] == "arg1 arg2"  # COMMAND split on runs of whitespace
    assert "Resolving " in run.stdout and " is resolved." in run.stdout


@pytest.mark.parametrize("kind", sorted(SCENARIOS))
def test_not_met_then_met_while_waiting(api, entrypoint, kind):
    env, unmet, met = SCENARIOS[kind]
    unmet(api)
    run = entrypoint(dict(api.env(), **env))
    wait_until_waiting(api)
    assert run.running() and run.report() is None, "ran before its dependency was met"
    met(api)
    run.assert_execd()
    assert "failed:" in run.stdout  # the reason it waited was logged


def test_service_in_another_namespace(api, entrypoint):
    api.put(k8s.endpoint_slice("mariadb", "mysql"))
    run = entrypoint(dict(api.env(), DEPENDENCY_SERVICE="mysql:mariadb", NAMESPACE="openstack"))
    run.assert_execd()
    assert "Service mariadb in namespace mysql" in run.stdout


def test_wrong_namespace_keeps_waiting(api, entrypoint):
    api.put(k8s.endpoint_slice("mariadb", "mysql"))
    api.put(k8s.job("init", "mysql", succeeded=1))
    run = entrypoint(dict(api.env(), DEPENDENCY_SERVICE="mariadb", DEPENDENCY_JOBS="init",
                          NAMESPACE="openstack"))
    wait_until_waiting(api)
    assert run.running() and run.report() is None
    run.process.send_signal(signal.SIGTERM)
    assert run.finish() == 143
    assert run.report() is None


def test_socket_appears_while_waiting(tmp_path, entrypoint):
    path = tmp_path / "ovs.sock"
    run = entrypoint({"DEPENDENCY_SOCKET": str(path)})  # no cluster settings at all
    time.sleep(0.5)
    assert run.running() and run.report() is None
    path.write_text("")
    run.assert_execd()


def test_config_rendered_before_exec(tmp_path, entrypoint):
    source = tmp_path / "configmaps" / "app.conf" / "app.conf"
    source.parent.mkdir(parents=True)
    source.write_text("listen {{ .IP }}\n")
    destination = tmp_path / "etc" / "app.conf"
    run = entrypoint({"DEPENDENCY_CONFIG": str(destination), "INTERFACE_NAME": "lo",
                      "ENTRYPOINT_CONFIGMAPS_DIR": str(tmp_path / "configmaps")})
    run.assert_execd()
    assert destination.read_text() == "listen 127.0.0.1\n"


# Exit codes -------------------------------------------------------------------------------

def test_no_dependencies_execs_at_once(entrypoint):
    entrypoint({}).assert_execd()


def test_empty_command_exits_zero_with_the_original_warning(entrypoint):
    run = entrypoint({}, command="")
    assert run.finish() == 0
    assert "Entrypoint WARNING: " in run.stdout and "COMMAND env is empty" in run.stdout


def test_in_process_true_and_echo(tmp_path, entrypoint):
    empty_path = {"PATH": str(tmp_path)}  # no coreutils, as in distroless
    run = entrypoint(empty_path, command="echo hello   world")
    assert run.finish() == 0 and "hello world\n" in run.stdout
    run = entrypoint(empty_path, command="/bin/true")
    assert run.finish() == 0 or os.path.exists("/bin/true")


@pytest.mark.parametrize("env, variable", [
    ({"DEPENDENCY_SERVICE": "a:b:c"}, "DEPENDENCY_SERVICE"),
    ({"DEPENDENCY_SERVICES": "db"}, "DEPENDENCY_SERVICES"),
    ({"DEPENDENCY_POD_JSON": '{"labels": {"a": "b"}}'}, "DEPENDENCY_POD_JSON"),
    ({"DEPENDENCY_DAEMONSET": "ovs"}, "POD_NAME"),
    ({"DEPENDENCY_CONFIG": "/etc/x.conf"}, "INTERFACE_NAME"),
    ({"DEPENDENCY_SERVICE": "db"}, "KUBERNETES_SERVICE_HOST"),
    ({"ENTRYPOINT_POLL_INTERVAL": "0"}, "ENTRYPOINT_POLL_INTERVAL"),
])
def test_bad_configuration_exits_2_with_one_line(entrypoint, env, variable):
    run = entrypoint(env)
    assert run.finish() == 2
    lines = run.stderr.splitlines()
    assert len(lines) == 1 and lines[0].startswith("Entrypoint ERROR: ")
    assert variable + ": " in lines[0]
    assert "Traceback" not in run.stdout + run.stderr
    assert run.report() is None


def test_missing_token_exits_2(api, entrypoint):
    os.unlink(str(api.sa_dir / "token"))
    run = entrypoint(dict(api.env(), DEPENDENCY_SERVICE="db"))
    assert run.finish() == 2 and "token" in run.stderr


def test_container_not_in_spec_exits_2_once_the_pod_is_read(api, entrypoint):
    this_pod(api, containers=("app", "libvirt"))
    run = entrypoint(dict(api.env(), DEPENDENCY_CONTAINER="libvrt", **ME))
    assert run.finish() == 2
    assert "DEPENDENCY_CONTAINER: " in run.stderr and "libvirt" in run.stderr


@pytest.mark.parametrize("command, code, words", [
    ("no-such-program", 127, "command not found"),
    ("{tmp}/plain-file", 126, "not executable"),
])
def test_command_checked_before_waiting(tmp_path, entrypoint, command, code, words):
    (tmp_path / "plain-file").write_text("data")
    command = command.format(tmp=tmp_path)
    run = entrypoint({"DEPENDENCY_SOCKET": str(tmp_path / "never")}, command=command)
    assert run.finish(timeout=5) == code
    assert words in run.stderr and "Traceback" not in run.stderr


def test_sigterm_while_waiting_exits_143_promptly(tmp_path, entrypoint):
    run = entrypoint({"DEPENDENCY_SOCKET": str(tmp_path / "never")})
    time.sleep(0.5)  # well into waiting
    start = time.monotonic()
    run.process.send_signal(signal.SIGTERM)
    assert run.finish() == 143
    assert time.monotonic() - start < 3  # generous: it should take milliseconds
    assert run.report() is None
    assert "Resolving Socket" in run.stdout


def test_command_inherits_default_signals_and_pid(api, entrypoint):
    report = entrypoint({}).assert_execd()
    # CPython ignores SIGPIPE and SIGXFSZ; ignored dispositions survive exec unless restored
    assert int(report["SigIgn"], 16) & (1 << (signal.SIGPIPE - 1)) == 0
    assert int(report["SigIgn"], 16) & (1 << (signal.SIGXFSZ - 1)) == 0
    assert int(report["SigBlk"], 16) == 0


def test_token_never_logged(api, entrypoint):
    api.deny("list", "endpointslices")
    api.put(k8s.endpoints("db"))
    run = entrypoint(dict(api.env(), DEPENDENCY_SERVICE="db"))
    run.assert_execd()
    assert api.token not in run.stdout + run.stderr
    assert "Authorization" not in run.stdout + run.stderr
    assert "list" in run.stdout and "endpointslices" in run.stdout  # the 403 named the rule


def test_runs_isolated_without_site_packages():
    """The product imports only the standard library, and TLS only when the API is needed."""
    import subprocess
    code = ("import sys; sys.path.insert(0, %r)\n"
            "import kubernetes_entrypoint as k\n"
            "k.prepare({'DEPENDENCY_SOCKET': '/x'}, k.parse_arguments([]))\n"
            "print(sorted(m for m in ('ssl', 'http.client', 'urllib.request') if m in sys.modules))"
            % os.path.dirname(SCRIPT))
    out = subprocess.check_output([sys.executable, "-I", "-S", "-c", code],
                                  cwd=os.path.dirname(SCRIPT), universal_newlines=True)
    assert out.strip() == "[]"


def test_every_import_is_in_the_standard_library():
    """Each module the file imports, at the top or lazily, imports with no site-packages at all."""
    import ast
    import subprocess
    with open(SCRIPT) as f:
        tree = ast.parse(f.read())
    modules = {alias.name for node in ast.walk(tree) if isinstance(node, ast.Import)
               for alias in node.names}
    modules |= {node.module for node in ast.walk(tree) if isinstance(node, ast.ImportFrom)}
    assert "ssl" in modules and "json" in modules
    subprocess.check_call([sys.executable, "-I", "-S", "-c", "import " + ", ".join(sorted(modules))])


def test_discovery_looked_at_again_until_the_kind_is_served(api, entrypoint):
    """The group is served already (another kind), the wanted kind's CRD comes later."""
    api.register_resource("example.com/v1", "foos", "Foo")
    run = entrypoint(dict(api.env(), DEPENDENCY_CUSTOM_RESOURCE=json.dumps(
        [{"apiVersion": "example.com/v1", "kind": "Bar", "name": "b1"}])))
    wait_for(lambda: len([r for r in api.requests if r.path == "/apis/example.com/v1"]) >= 2)
    assert run.running() and run.report() is None
    api.register_resource("example.com/v1", "bars", "Bar")
    api.put(k8s.custom("example.com/v1", "Bar", "b1", "default"))
    run.assert_execd()


def test_cluster_scoped_resource_named_without_namespace(api, entrypoint):
    api.put({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": "kube-system"}})
    run = entrypoint(dict(api.env(), DEPENDENCY_CUSTOM_RESOURCE=json.dumps(
        [{"apiVersion": "v1", "kind": "Namespace", "name": "kube-system"}])))
    run.assert_execd()
    assert "Dependency Namespace kube-system is resolved." in run.stdout


def test_token_that_is_not_text_exits_2(api, entrypoint):
    (api.sa_dir / "token").write_bytes(b"tok\xff")
    run = entrypoint(dict(api.env(), DEPENDENCY_SERVICE="db"))
    assert run.finish() == 2 and "ENTRYPOINT_SERVICEACCOUNT_DIR" in run.stderr
    assert "Traceback" not in run.stderr


def test_closed_stdout_is_no_crash(tmp_path):
    import subprocess
    (tmp_path / "ready").write_text("")
    code = subprocess.call([sys.executable, "-I", "-S", SCRIPT], stdout=subprocess.DEVNULL,
                           stderr=subprocess.DEVNULL, close_fds=True, pass_fds=(),
                           env={"DEPENDENCY_SOCKET": str(tmp_path / "ready"), "COMMAND": "",
                                "PATH": "/usr/bin:/bin"},
                           preexec_fn=lambda: os.close(1))
    assert code == 0


@pytest.mark.skipif(not os.access("/usr/bin/python3", os.X_OK), reason="no /usr/bin/python3")
def test_run_by_its_shebang_ignores_the_pods_python_variables(tmp_path):
    """An app image's PYTHONHOME/PYTHONPATH must not reach the entrypoint's own interpreter (a
    PYTHONHOME of a virtualenv would stop Python before it starts), but the command gets them."""
    executable = tmp_path / "kubernetes-entrypoint"
    executable.write_bytes(open(SCRIPT, "rb").read())
    executable.chmod(0o755)
    python_variables = {"PYTHONHOME": str(tmp_path / "venv"), "PYTHONPATH": str(tmp_path / "lib"),
                        "PYTHONSTARTUP": str(tmp_path / "nothing.py")}
    result = subprocess.run([str(executable)], env=dict(
        python_variables, PATH="/usr/bin:/bin", COMMAND="/usr/bin/env"),
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, universal_newlines=True, timeout=30)
    assert result.returncode == 0, result.stderr
    for name, value in python_variables.items():
        assert "%s=%s\n" % (name, value) in result.stdout


@pytest.mark.parametrize("given", [{}, {"LANG": "C"}, {"LC_CTYPE": "C"}, {"LC_CTYPE": "POSIX"},
                                   {"LC_CTYPE": "C.UTF-8", "LANG": "C"}])
def test_command_gets_the_locale_variables_as_given(entrypoint, given):
    """Where the locale is C, Python sets LC_CTYPE=C.UTF-8 in its own environment at start (PEP
    538); the command must see the environment the container was given, not that."""
    run = entrypoint(dict(given), command="/usr/bin/env")
    assert run.finish() == 0, run.stderr
    seen = dict(line.split("=", 1) for line in run.stdout.splitlines() if "=" in line
                and line.split("=", 1)[0] in ("LANG", "LC_CTYPE", "LC_ALL"))
    assert seen == given


def test_command_gets_the_environment_as_exec_passes_it(tmp_path):
    """Entries an environment may hold that no dict can (a name twice, an entry without '=') pass
    to the command as they came; only Python's LC_CTYPE is undone."""
    driver = tmp_path / "driver.py"
    driver.write_text(
        "import ctypes, sys\n"
        "libc = ctypes.CDLL(None, use_errno=True)\n"
        "args = [sys.executable, '-I', '-S', sys.argv[1]]\n"
        "env = [b'PATH=/usr/bin:/bin', b'COMMAND=/usr/bin/env', b'DUP=first', b'DUP=second',\n"
        "       b'NOEQUALS', b'LANG=C']\n"
        "argv = (ctypes.c_char_p * (len(args) + 1))(*[a.encode() for a in args], None)\n"
        "envp = (ctypes.c_char_p * (len(env) + 1))(*env, None)\n"
        "libc.execve(args[0].encode(), argv, envp)\n")
    result = subprocess.run([sys.executable, str(driver), SCRIPT], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, universal_newlines=True, timeout=30)
    assert result.returncode == 0, result.stderr
    lines = result.stdout.splitlines()
    assert lines.count("DUP=first") == 1 and lines.count("DUP=second") == 1
    assert "NOEQUALS" in lines and "LANG=C" in lines
    assert not [line for line in lines if line.startswith("LC_CTYPE=")]
