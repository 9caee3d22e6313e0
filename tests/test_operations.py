"""Operating it: timeout, signals, progress, JSON and debug logs, the command line, --check,
--validate, and an API server given by URL. End to end where it concerns the process."""

import json
import re
import signal
import time

import pytest

import fakeapi as k8s
import kubernetes_entrypoint as ke
from conftest import REPORTER, wait_for
from test_process import wait_until_waiting

NEVER = {"DEPENDENCY_SOCKET": "/nonexistent/never.sock"}


def unmet_service(api):
    api.put(k8s.endpoint_slice("mariadb", "openstack", addresses=(("10.0.0.1", False),
                                                               ("10.0.0.2", False))))
    return dict(api.env(), DEPENDENCY_SERVICE="openstack:mariadb")


# Timeout ----------------------------------------------------------------------------------

@pytest.mark.parametrize("how", ["variable", "option"])
def test_timeout_lists_what_is_unmet_and_exits_1(api, entrypoint, tmp_path, how):
    env = unmet_service(api)
    env["DEPENDENCY_JOBS"] = "db-init"
    api.put(k8s.job("db-init", active=1, failed=2))
    if how == "variable":
        run = entrypoint(dict(env, ENTRYPOINT_TIMEOUT="1"))
    else:
        run = ke_run(entrypoint, env, ["--timeout", "1", REPORTER, str(tmp_path / "report")])
    start = time.monotonic()
    assert run.finish() == 1
    assert 0.8 < time.monotonic() - start < 8
    assert run.report() is None
    errors = run.stderr.splitlines()
    assert "timed out after 1s waiting for 2 of 2 dependencies; the command was not run" in errors[0]
    assert errors[1].endswith("still unmet: Service mariadb in namespace openstack: "
                              "0 of 2 endpoints ready")
    assert errors[2].endswith("still unmet: Job db-init in namespace default: "
                              "not succeeded (1 active, 2 failed)")


def ke_run(entrypoint, env, arguments):
    """The entrypoint with command-line arguments."""
    return entrypoint(env, arguments=arguments)


def test_zero_timeout_waits_forever(entrypoint):
    run = entrypoint(dict(NEVER, ENTRYPOINT_TIMEOUT="0"))
    time.sleep(1)
    assert run.running()


# Signals ----------------------------------------------------------------------------------

@pytest.mark.parametrize("signum, code", [(signal.SIGTERM, 143), (signal.SIGINT, 130)])
def test_signal_stops_promptly_saying_what_was_unmet(api, entrypoint, signum, code):
    run = entrypoint(unmet_service(api))
    wait_until_waiting(api)
    start = time.monotonic()
    run.process.send_signal(signum)
    assert run.finish() == code
    assert time.monotonic() - start < 3  # generous: it takes milliseconds
    assert run.report() is None
    name = signal.Signals(signum).name
    assert "stopped by %s after" % name in run.stderr
    assert "still unmet: Service mariadb in namespace openstack: 0 of 2 endpoints ready" in run.stderr


# Progress and logs ------------------------------------------------------------------------

def test_progress_lines_say_what_is_unmet_and_for_how_long(api, entrypoint):
    run = entrypoint(dict(unmet_service(api), ENTRYPOINT_PROGRESS_INTERVAL="1"))
    time.sleep(3.5)
    api.put(k8s.endpoint_slice("mariadb", "openstack"))
    run.assert_execd()
    progress = [line for line in run.stdout.splitlines() if "Still waiting" in line]
    assert 2 <= len(progress) <= 4
    assert re.search(r"Entrypoint INFO: \S+ \S+ Still waiting after \ds for 1 of 1 dependencies: "
                     r"Service mariadb in namespace openstack: 0 of 2 endpoints ready$", progress[0])


def test_progress_line_names_a_few_of_many(entrypoint, tmp_path):
    """A thousand unmet dependencies make one short progress line; the timeout lists them all."""
    paths = [str(tmp_path / ("socket-%04d" % i)) for i in range(1000)]
    run = entrypoint({"DEPENDENCY_SOCKET": ",".join(paths), "ENTRYPOINT_PROGRESS_INTERVAL": "1",
                      "ENTRYPOINT_TIMEOUT": "1.8"})
    assert run.finish() == 1
    [progress] = [line for line in run.stdout.splitlines() if "Still waiting" in line]
    assert progress.endswith("; and 996 more") and progress.count("socket-") == 4
    assert len(progress) < 1000
    assert (run.stdout + run.stderr).count("still unmet: ") == 1000


def test_json_logs(api, entrypoint):
    run = entrypoint(dict(unmet_service(api), ENTRYPOINT_LOG_FORMAT="json", ENTRYPOINT_TIMEOUT="0.5"))
    assert run.finish() == 1
    records = [json.loads(line) for line in (run.stdout + run.stderr).splitlines()]
    assert records and all(set(r) <= {"time", "level", "message", "dependency"} for r in records)
    assert all(re.match(r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z$", r["time"]) for r in records)
    resolving = records[0]
    assert resolving == dict(resolving, level="info", message="Resolving Service mariadb in "
                             "namespace openstack", dependency="Service mariadb in namespace openstack")
    levels = {r["level"] for r in records}
    assert levels == {"info", "warning", "error"}


def test_debug_logs_every_request_without_the_token(api, entrypoint):
    api.put(k8s.endpoint_slice("db"))
    run = entrypoint(dict(api.env(), DEPENDENCY_SERVICE="db", ENTRYPOINT_LOG_LEVEL="debug"))
    run.assert_execd()
    requests = [line for line in run.stdout.splitlines() if line.startswith("Entrypoint DEBUG: ")]
    assert len(requests) == len(api.requests) == 1
    assert re.search(r"GET /apis/discovery\.k8s\.io/v1/namespaces/default/endpointslices\?"
                     r"labelSelector=kubernetes\.io%2Fservice-name%3Ddb: 200 in \d+ ms$", requests[0])
    assert api.token not in run.stdout + run.stderr and "Bearer" not in run.stdout + run.stderr


@pytest.mark.parametrize("variable, value", [("ENTRYPOINT_LOG_FORMAT", "yaml"),
                                             ("ENTRYPOINT_LOG_LEVEL", "loud"),
                                             ("ENTRYPOINT_TIMEOUT", "-1"),
                                             ("ENTRYPOINT_PROGRESS_INTERVAL", "soon"),
                                             ("ENTRYPOINT_API_SERVER", "http://10.0.0.1:8001"),
                                             ("ENTRYPOINT_API_SERVER", "ftp://127.0.0.1")])
def test_bad_settings_exit_2(entrypoint, variable, value):
    run = entrypoint({variable: value})
    assert run.finish() == 2
    assert run.stderr.count("\n") == 1 and variable + ": " in run.stderr


# The command line -------------------------------------------------------------------------

def test_command_from_arguments_untouched(entrypoint, tmp_path):
    report = str(tmp_path / "report")
    run = ke_run(entrypoint, {}, ["--timeout", "30", REPORTER, report, "--timeout", "a  b"])
    run.assert_execd()
    assert run.report()["args"] == "--timeout a  b"


def test_double_dash_ends_the_options(entrypoint, tmp_path):
    run = ke_run(entrypoint, {}, ["--", REPORTER, str(tmp_path / "report"), "--check"])
    run.assert_execd()
    assert run.report()["args"] == "--check"


def test_command_both_in_variable_and_arguments_is_an_error(entrypoint, tmp_path):
    run = ke_run(entrypoint, {"COMMAND": "true"}, ["true"])
    assert run.finish() == 2 and "COMMAND: " in run.stderr


def test_empty_command_variable_with_arguments_is_no_conflict(entrypoint, tmp_path):
    run = ke_run(entrypoint, {"COMMAND": ""}, [REPORTER, str(tmp_path / "report")])
    run.assert_execd()


def test_unknown_option_is_one_line(entrypoint):
    run = ke_run(entrypoint, {}, ["--wait-forever"])
    assert run.finish() == 2
    assert run.stderr.count("\n") == 1 and "unrecognized arguments: --wait-forever" in run.stderr


def test_help_lists_every_variable_and_exit_code(entrypoint):
    run = ke_run(entrypoint, {}, ["--help"])
    assert run.finish() == 0
    for kind in ke.KINDS:
        assert kind.variable in run.stdout
    for name, _ in ke.SETTINGS_HELP:
        assert name in run.stdout
    for code in ("0 ", "1 ", "2 ", "126, 127", "130, 143"):
        assert "\n  " + code in run.stdout
    run = ke_run(entrypoint, {}, ["--version"])
    assert run.finish() == 0 and run.stdout.strip() == "kubernetes-entrypoint " + ke.__version__


# --check and --validate -------------------------------------------------------------------

def test_check_prints_a_table_and_writes_nothing(api, entrypoint, tmp_path):
    env = unmet_service(api)
    api.put(k8s.job("done", succeeded=1))
    template = tmp_path / "configmaps" / "app.conf" / "app.conf"
    template.parent.mkdir(parents=True)
    template.write_text("ip={{ .IP }}\n")
    destination = tmp_path / "etc" / "app.conf"
    env.update(DEPENDENCY_JOBS="done", DEPENDENCY_CONFIG=str(destination), INTERFACE_NAME="lo",
               ENTRYPOINT_CONFIGMAPS_DIR=str(tmp_path / "configmaps"), COMMAND="no-such-command")
    run = ke_run(entrypoint, env, ["--check"])
    assert run.finish() == 1
    table = run.stdout.splitlines()
    assert table[0].split() == ["DEPENDENCY", "MET", "REASON"]
    rows = {line.split("  ")[0].strip(): line for line in table[1:]}
    assert " yes " in rows["Job done in namespace default"] + " "
    assert "no   0 of 2 endpoints ready" in rows["Service mariadb in namespace openstack"]
    assert "no   not written yet" in rows["Config %s" % destination]
    assert not destination.exists()
    assert api.open_watches == 0 and all(r.verb != "watch" for r in api.requests)
    api.put(k8s.endpoint_slice("mariadb", "openstack"))
    destination.parent.mkdir()
    destination.write_text("ip=127.0.0.1\n")
    run = ke_run(entrypoint, env, ["--check"])
    assert run.finish() == 0, run.stdout


def test_check_counts_api_errors_as_not_met(api, entrypoint):
    api.inject(status=500, times=10)
    run = ke_run(entrypoint, dict(api.env(), DEPENDENCY_JOBS="x"), ["--check"])
    assert run.finish() == 1 and "500" in run.stdout


def test_check_configuration_error_is_still_2(entrypoint):
    run = ke_run(entrypoint, {"DEPENDENCY_SERVICE": "a:b:c"}, ["--check"])
    assert run.finish() == 2


def test_validate_prints_dependencies_without_the_api(api, entrypoint):
    env = dict(api.env(), DEPENDENCY_SERVICE="mysql:mariadb", DEPENDENCY_JOBS="init",
               COMMAND="true")
    del env["KUBERNETES_SERVICE_HOST"]  # not needed: no request is made
    run = ke_run(entrypoint, env, ["--validate"])
    assert run.finish() == 0
    assert run.stdout.splitlines()[:2] == ["Service mariadb in namespace mysql",
                                           "Job init in namespace default"]
    assert run.stdout.splitlines()[2].startswith("command: ")
    assert api.requests == []
    run = ke_run(entrypoint, dict(env, DEPENDENCY_JOBS_JSON="[}"), ["--validate"])
    assert run.finish() == 2 and "DEPENDENCY_JOBS_JSON: " in run.stderr
    run = ke_run(entrypoint, dict(env, COMMAND="no-such-command"), ["--validate"])
    assert run.finish() == 2 and "COMMAND: " in run.stderr


# An API server given by URL ---------------------------------------------------------------

def test_api_server_url_with_serviceaccount_files(api, entrypoint):
    api.put(k8s.endpoint_slice("db"))
    env = {"ENTRYPOINT_API_SERVER": api.url, "ENTRYPOINT_SERVICEACCOUNT_DIR": str(api.sa_dir),
           "DEPENDENCY_SERVICE": "db"}
    entrypoint(env).assert_execd()
    assert len(api.requests) == 1 and api.requests[0].status == 200


def test_plain_http_only_to_loopback():
    assert ke.api_server_setting("http://127.0.0.1:8001") == "http://127.0.0.1:8001"
    assert ke.api_server_setting("http://[::1]:8001")
    assert ke.api_server_setting("http://localhost:8001")
    with pytest.raises(ke.ConfigError):
        ke.api_server_setting("http://kubernetes.default:8001")
    assert ke.api_server_setting("https://kubernetes.example.com:6443")


def test_second_signal_while_stopping_is_ignored(api, entrypoint):
    run = entrypoint(unmet_service(api))
    wait_until_waiting(api)
    run.process.send_signal(signal.SIGINT)

    def signal_again():  # until exit, interpreter shutdown included
        run.process.send_signal(signal.SIGINT)
        run.process.send_signal(signal.SIGTERM)
        return not run.running()

    wait_for(signal_again, interval=0.001)
    assert run.finish() == 130
    assert "Traceback" not in run.stderr and "Exception ignored" not in run.stderr


def test_closed_stdout_with_a_command(tmp_path):
    import os
    import subprocess
    import sys
    from conftest import SCRIPT
    (tmp_path / "ready").write_text("")
    report = tmp_path / "report"
    result = subprocess.run([sys.executable, "-I", "-S", SCRIPT], stderr=subprocess.PIPE,
                            universal_newlines=True, preexec_fn=lambda: os.close(1),
                            env={"DEPENDENCY_SOCKET": str(tmp_path / "ready"), "PATH": "/usr/bin:/bin",
                                 "COMMAND": "%s %s" % (REPORTER, report)})
    assert result.returncode == 0 and report.exists(), result.stderr


def test_broken_pipe_is_no_traceback(tmp_path):
    import subprocess
    import sys
    from conftest import SCRIPT
    (tmp_path / "ready").write_text("")
    reader, writer = __import__("os").pipe()
    __import__("os").close(reader)  # nobody reads: every write is a broken pipe
    result = subprocess.run([sys.executable, "-I", "-S", SCRIPT, "--check"], stdout=writer,
                            stderr=subprocess.PIPE, universal_newlines=True,
                            env={"DEPENDENCY_SOCKET": str(tmp_path / "ready"), "PATH": "/usr/bin:/bin"})
    __import__("os").close(writer)
    assert result.returncode == 0 and result.stderr == ""


class LocalProxy:
    """What `kubectl proxy` is to the entrypoint: plain HTTP on 127.0.0.1, forwarding every GET to
    the API server over verified HTTPS with the credentials added on the way."""

    def __init__(self, api):
        import http.client
        import http.server
        import ssl
        import threading
        context = ssl.create_default_context(cafile=str(api.ca_path))
        self.seen_headers = []
        proxy = self

        class Handler(http.server.BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *args):
                pass

            def do_GET(self):
                proxy.seen_headers.append(dict(self.headers))
                upstream = http.client.HTTPSConnection(api.host, api.port, context=context,
                                                       timeout=10)
                upstream.request("GET", self.path, headers={"Authorization": "Bearer " + api.token})
                answer = upstream.getresponse()
                body = answer.read()  # no streaming: enough for --check, which never watches
                upstream.close()
                self.send_response(answer.status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

        self.server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        self.url = "http://127.0.0.1:%d" % self.server.server_address[1]
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def close(self):
        self.server.shutdown()
        self.server.server_close()


def test_through_kubectl_proxy_over_plain_http(api, entrypoint, tmp_path):
    api.put(k8s.job("init", active=1))
    proxy = LocalProxy(api)
    try:
        env = {"ENTRYPOINT_API_SERVER": proxy.url, "DEPENDENCY_JOBS": "init",
               "ENTRYPOINT_SERVICEACCOUNT_DIR": str(tmp_path / "none")}  # no token, no CA needed
        run = ke_run(entrypoint, env, ["--check"])
        assert run.finish() == 1 and "not succeeded (1 active, 0 failed)" in run.stdout
        api.put(k8s.job("init", succeeded=1))
        run = ke_run(entrypoint, env, ["--check"])
        assert run.finish() == 0, run.stdout + run.stderr
    finally:
        proxy.close()
    assert proxy.seen_headers and not any("Authorization" in h for h in proxy.seen_headers)
