"""main: the process end to end, as an operator runs it against the fake API server. The
command exec'd as the entrypoint's own PID once every dependency is met, found on PATH (126, 127),
exit 2 for a mistake, the command line (options, --check, --validate, --help), the timeout, the
termination message, the environment the command gets, and the interpreter's isolation (-I -S,
the standard library only)."""

import json
import os
import signal
import subprocess
import sys
import time

import pytest

import fakeapi as k8s
import kubernetes_entrypoint as ke
from conftest import REPORTER, SCRIPT
from scenarios import ME, SCENARIOS, ke_run, this_pod, unmet_service, wait_until_waiting


# Each kind, met at once or while waiting: then the command runs -------------------------------

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


def test_cluster_scoped_resource_named_without_namespace(api, entrypoint):
    api.put({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": "kube-system"}})
    run = entrypoint(dict(api.env(), DEPENDENCY_CUSTOM_RESOURCE=json.dumps(
        [{"apiVersion": "v1", "kind": "Namespace", "name": "kube-system"}])))
    run.assert_execd()
    assert "Dependency Namespace kube-system is resolved." in run.stdout


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


def test_no_dependencies_execs_at_once(entrypoint):
    entrypoint({}).assert_execd()


# The command: exec'd as this PID, looked up on PATH (126, 127) --------------------------------

def test_command_inherits_default_signals_and_pid(api, entrypoint):
    report = entrypoint({}).assert_execd()
    # CPython ignores SIGPIPE and SIGXFSZ; ignored dispositions survive exec unless restored
    assert int(report["SigIgn"], 16) & (1 << (signal.SIGPIPE - 1)) == 0
    assert int(report["SigIgn"], 16) & (1 << (signal.SIGXFSZ - 1)) == 0
    assert int(report["SigBlk"], 16) == 0


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


def test_find_command(tmp_path):
    tool = tmp_path / "tool"
    tool.write_text("#!/bin/sh\n")
    tool.chmod(0o755)
    plain = tmp_path / "plain"
    plain.write_text("data")
    plain.chmod(0o644)
    assert ke.find_command(["tool"], "/nonexistent:" + str(tmp_path)) == str(tool)
    assert ke.find_command([str(tool)], "") == str(tool)
    with pytest.raises(ke.CommandError) as caught:
        ke.find_command(["plain"], str(tmp_path))
    assert caught.value.code == 126
    with pytest.raises(ke.CommandError) as caught:
        ke.find_command(["missing"], str(tmp_path))
    assert caught.value.code == 127
    # true and echo are answered in-process where the image has no coreutils
    assert ke.find_command(["true"], str(tmp_path)) is None
    assert ke.find_command(["/bin/echo", "x"], "") in ("/bin/echo", None)


def test_directory_as_command_is_not_executable(tmp_path):
    with pytest.raises(ke.CommandError) as caught:
        ke.find_command([str(tmp_path)], "")
    assert caught.value.code == 126


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


# Exit 2: a mistake is one line at start -------------------------------------------------------

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


def test_token_that_is_not_text_exits_2(api, entrypoint):
    (api.sa_dir / "token").write_bytes(b"tok\xff")
    run = entrypoint(dict(api.env(), DEPENDENCY_SERVICE="db"))
    assert run.finish() == 2 and "ENTRYPOINT_SERVICEACCOUNT_DIR" in run.stderr
    assert "Traceback" not in run.stderr


def test_container_not_in_spec_exits_2_once_the_pod_is_read(api, entrypoint):
    this_pod(api, containers=("app", "libvirt"))
    run = entrypoint(dict(api.env(), DEPENDENCY_CONTAINER="libvrt", **ME))
    assert run.finish() == 2
    assert "DEPENDENCY_CONTAINER: " in run.stderr and "libvirt" in run.stderr


# The command line -----------------------------------------------------------------------------

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


def test_every_option_taking_a_value_is_known_before_parsing():
    """A run by hand (--check, --validate) is known from the one parser, which skips the value of
    every option that takes one, so `--timeout --check` is no check."""
    assert {option for option, (takes, _) in ke.OPTIONS.items() if takes} == {"--timeout"}
    assert ke.parse_arguments(["--timeout", "5", "--check"]).check
    assert ke.parse_arguments(["--time", "5", "--val"]).validate
    assert not ke.parse_arguments(["--timeout", "--check"]).check  # --check is the timeout's value
    assert not ke.parse_arguments(["run", "--check"]).check         # the command's own option


# --check and --validate -----------------------------------------------------------------------

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


def test_check_names_the_dependency_in_a_failed_read_and_does_not_retry(api, entrypoint):
    api.inject(status=500, times=10, match="endpointslices")
    api.inject(status=500, times=10, match="endpoints")
    run = ke_run(entrypoint, dict(api.env(), DEPENDENCY_SERVICE="db"), ["--check"])
    assert run.finish() == 1
    failed = [line for line in run.stdout.splitlines() if "failed:" in line]
    assert failed and all(" for Service db in namespace default failed: " in line
                          and "retrying" not in line for line in failed), run.stdout


def test_check_and_validate_together_is_a_mistake(entrypoint):
    run = ke_run(entrypoint, {}, ["--check", "--validate"])
    assert run.finish() == 2
    assert "arguments: --check and --validate do not go together" in run.stderr


def test_check_says_a_job_is_suspended_or_failed_and_why(api, entrypoint):
    api.put(k8s.job("paused", suspended=True))
    api.put(k8s.job("late", failed=1, failed_for_good=("DeadlineExceeded", "too slow")))
    run = ke_run(entrypoint, dict(api.env(), DEPENDENCY_JOBS="paused,late"), ["--check"])
    assert run.finish() == 1
    assert "suspended (spec.suspend is true; 0 active, 0 failed): it runs once resumed" in run.stdout
    assert "failed for good (DeadlineExceeded: too slow; 0 active, 1 failed)" in run.stdout


def test_rbac_with_check_or_validate_is_a_mistake(entrypoint):
    for other in ("--check", "--validate"):
        run = ke_run(entrypoint, {}, ["--rbac", other])
        assert run.finish() == 2 and "do not go together" in run.stderr and run.stdout == ""


def test_check_counts_an_absent_job_as_done_only_without_a_grace(api, entrypoint):
    env = dict(api.env(), DEPENDENCY_JOBS="gone", ENTRYPOINT_JOB_ABSENT_IS_DONE="true")
    run = ke_run(entrypoint, env, ["--check"])
    assert run.finish() == 1 and "counted as done once absent for 10s" in run.stdout
    run = ke_run(entrypoint, dict(env, ENTRYPOINT_JOB_ABSENT_GRACE="0"), ["--check"])
    assert run.finish() == 0, run.stdout


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


# Timeout --------------------------------------------------------------------------------------

NEVER = {"DEPENDENCY_SOCKET": "/nonexistent/never.sock"}


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


def test_zero_timeout_waits_forever(entrypoint):
    run = entrypoint(dict(NEVER, ENTRYPOINT_TIMEOUT="0"))
    time.sleep(1)
    assert run.running()


def test_timeout_is_kept_even_while_requests_hang(api, entrypoint):
    api.inject(hang=60, times=None)
    run = entrypoint(dict(api.env(), DEPENDENCY_SERVICE="a,b,c", ENTRYPOINT_TIMEOUT="1.5"))
    start = time.monotonic()
    assert run.finish() == 1
    assert time.monotonic() - start < 5
    assert "timed out after 1s" in run.stderr and "Traceback" not in run.stderr


@pytest.mark.parametrize("how", ["option", "variable"])
def test_item18_check_gives_up_at_the_timeout(api, entrypoint, how):
    """issue 7 item 18: every request hangs for a minute."""
    api.inject(hang=60, times=None)
    env = dict(api.env(), DEPENDENCY_SERVICE="a")
    arguments = ["--check", "--timeout", "1"]
    if how == "variable":
        env["ENTRYPOINT_TIMEOUT"], arguments = "1", ["--check"]
    started = time.monotonic()
    run = entrypoint(env, arguments=arguments)
    code = run.finish(timeout=60)
    assert time.monotonic() - started < 6, "took %.1fs" % (time.monotonic() - started)
    assert code == 1, (run.stdout, run.stderr)
    assert "Traceback" not in run.stderr


# The termination message: why the container ended, where `kubectl describe pod` shows it ------

@pytest.fixture
def message_file(tmp_path):
    """A termination message file as the kubelet provides it: present and empty."""
    path = tmp_path / "termination-log"
    path.write_bytes(b"")
    return path


def unmet_services(api, count):
    for i in range(count):
        api.put(k8s.endpoint_slice("db-%d" % i, addresses=(("10.0.0.1", False),)))
    return ",".join("db-%d" % i for i in range(count))


def lines_of(path):
    return path.read_text().splitlines()


def test_timeout_says_what_was_unmet(api, entrypoint, message_file):
    services = unmet_services(api, 2)
    run = entrypoint(dict(api.env(), DEPENDENCY_SERVICE=services, ENTRYPOINT_TIMEOUT="1",
                          ENTRYPOINT_TERMINATION_LOG=str(message_file)))
    assert run.finish() == 1
    assert lines_of(message_file) == [
        "timed out after 1s waiting for 2 of 2 dependencies",
        "Service db-0 in namespace default: 0 of 1 endpoints ready",
        "Service db-1 in namespace default: 0 of 1 endpoints ready"]


@pytest.mark.parametrize("signum, code", [(signal.SIGTERM, 143), (signal.SIGINT, 130)])
def test_signal_says_what_was_unmet(api, entrypoint, message_file, signum, code):
    run = entrypoint(dict(api.env(), DEPENDENCY_SERVICE=unmet_services(api, 1),
                          ENTRYPOINT_TERMINATION_LOG=str(message_file)))
    wait_until_waiting(api)
    run.process.send_signal(signum)
    assert run.finish() == code
    lines = lines_of(message_file)
    assert lines[0].startswith("stopped by %s after " % signal.Signals(signum).name)
    assert lines[0].endswith(" waiting for 1 of 1 dependencies")
    assert lines[1:] == ["Service db-0 in namespace default: 0 of 1 endpoints ready"]


def test_configuration_error(entrypoint, message_file):
    run = entrypoint({"DEPENDENCY_SERVICE": "Bad_Name",
                      "ENTRYPOINT_TERMINATION_LOG": str(message_file)})
    assert run.finish() == 2
    [line] = lines_of(message_file)
    assert line.startswith("DEPENDENCY_SERVICE: 'Bad_Name' is not a valid Kubernetes Service name")


def test_command_not_found(entrypoint, message_file):
    run = entrypoint({"ENTRYPOINT_TERMINATION_LOG": str(message_file)}, command="no-such-command")
    assert run.finish() == 127
    assert lines_of(message_file)[0].startswith("COMMAND: no-such-command: command not found")


def test_job_failed_for_good_with_fail_fast_is_exit_3_said_everywhere(api, entrypoint,
                                                                        message_file):
    this_pod(api)
    api.put(k8s.job("db-sync", failed=6, failed_for_good=True))
    run = entrypoint(dict(api.env(), DEPENDENCY_JOBS="db-sync", ENTRYPOINT_FAIL_FAST="true",
                          POD_NAME="me", ENTRYPOINT_TERMINATION_LOG=str(message_file)))
    assert run.finish() == 3 and run.report() is None
    expected = ("Job db-sync in namespace default: failed for good (BackoffLimitExceeded: Job has "
                "reached the specified backoff limit; 0 active, 6 failed): it succeeds only if "
                "re-created (ENTRYPOINT_FAIL_FAST); the command was not run")
    assert lines_of(message_file) == [expected]
    assert run.stderr.startswith("Entrypoint ERROR: ") and run.stderr.endswith(expected + "\n")
    warning = api.events()[-1]
    assert (warning["type"], warning["reason"], warning["message"]) == (
        "Warning", "DependencyFailed", expected)


def test_job_failed_for_good_without_fail_fast_is_waited_for(api, entrypoint):
    api.put(k8s.job("db-sync", failed=6, failed_for_good=True))
    run = entrypoint(dict(api.env(), DEPENDENCY_JOBS="db-sync"))
    wait_until_waiting(api)
    assert run.running()
    api.put(k8s.job("db-sync", succeeded=1))  # re-created, and it succeeded
    run.assert_execd()
    assert "failed for good (BackoffLimitExceeded: Job has reached" in run.stdout


def test_absent_job_counted_as_done_is_said_everywhere(api, entrypoint, message_file):
    this_pod(api)
    run = entrypoint(dict(api.env(), DEPENDENCY_JOBS="db-sync", POD_NAME="me",
                          ENTRYPOINT_JOB_ABSENT_IS_DONE="true", ENTRYPOINT_JOB_ABSENT_GRACE="1",
                          ENTRYPOINT_TERMINATION_LOG=str(message_file)), command="")
    assert run.finish() == 0
    lines = lines_of(message_file)
    assert lines[0].startswith("its dependency met after ")
    assert lines[1].startswith("Job db-sync in namespace default: counted as done: absent for ")
    assert "is resolved (counted as done: absent for " in run.stdout
    met = api.events()[-1]
    assert (met["reason"], met["message"]) == ("DependenciesMet", "; ".join(lines))


def test_met_without_a_command(api, entrypoint, message_file):
    """The init-container case: everything met, nothing to exec."""
    api.put(k8s.endpoint_slice("db"))
    run = entrypoint(dict(api.env(), DEPENDENCY_SERVICE="db",
                          ENTRYPOINT_TERMINATION_LOG=str(message_file)), command="")
    assert run.finish() == 0
    assert lines_of(message_file) == ["its dependency met after 0s"]


def test_an_execd_command_finds_the_file_untouched(entrypoint, message_file):
    message_file.write_bytes(b"the command's own\n")
    entrypoint({"ENTRYPOINT_TERMINATION_LOG": str(message_file)}).assert_execd()
    assert message_file.read_bytes() == b"the command's own\n"


def test_at_most_4096_bytes_cut_at_a_line(api, entrypoint, message_file):
    run = entrypoint(dict(api.env(), DEPENDENCY_SERVICE=unmet_services(api, 120),
                          ENTRYPOINT_TIMEOUT="2", ENTRYPOINT_TERMINATION_LOG=str(message_file)))
    assert run.finish() == 1
    message = message_file.read_bytes()
    assert len(message) <= 4096 and message.endswith(b"\n")
    lines = message.decode().splitlines()
    assert lines[0] == "timed out after 2s waiting for 120 of 120 dependencies"
    shown = [line for line in lines[1:-1]]
    assert all(line.endswith(": 0 of 1 endpoints ready") for line in shown)
    assert lines[-1] == "\u2026 and %d more" % (120 - len(shown))


@pytest.mark.parametrize("where", ["missing", "a directory", "read-only", "off"])
def test_no_file_to_write_changes_nothing(tmp_path, entrypoint, message_file, where):
    path = {"missing": str(tmp_path / "nowhere" / "termination-log"), "a directory": str(tmp_path),
            "read-only": "/proc/version", "off": ""}[where]
    run = entrypoint({"DEPENDENCY_SERVICE": "Bad_Name", "ENTRYPOINT_TERMINATION_LOG": path})
    assert run.finish() == 2
    assert run.stdout == "" and len(run.stderr.splitlines()) == 1
    assert message_file.read_bytes() == b""


def test_cut_keeps_whole_lines_and_counts_the_rest():
    lines = ["headline"] + ["line %d %s" % (i, "x" * 50) for i in range(10)]
    message = ke.termination_message(lines, limit=200)
    assert len(message) <= 200
    kept = message.decode().splitlines()
    assert kept[0] == "headline" and kept[-1] == "\u2026 and %d more" % (11 - len(kept) + 1)
    assert ke.termination_message(["a", "b"], limit=200) == b"a\nb\n"
    assert ke.termination_message(["x\ny"]) == b"x\\ny\n"  # one line, as in the log


# The environment the command gets -------------------------------------------------------------

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


# Isolation: -I -S, the standard library only --------------------------------------------------

def test_runs_isolated_without_site_packages():
    """The product imports only the standard library, and TLS only when the API is needed."""
    import subprocess
    code = ("import sys; sys.path.insert(0, %r)\n"
            "import kubernetes_entrypoint as k\n"
            "k.run(['--check'], {'DEPENDENCY_SOCKET': '/x'}, k.Outcome(''))\n"
            "print(sorted(m for m in ('ssl', 'http.client', 'urllib.request') if m in sys.modules))"
            % os.path.dirname(SCRIPT))
    out = subprocess.check_output([sys.executable, "-I", "-S", "-c", code],
                                  cwd=os.path.dirname(SCRIPT), universal_newlines=True)
    assert out.strip().splitlines()[-1] == "[]", out


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


# Output closed or a broken pipe ---------------------------------------------------------------

def test_closed_stdout_is_no_crash(tmp_path):
    import subprocess
    (tmp_path / "ready").write_text("")
    code = subprocess.call([sys.executable, "-I", "-S", SCRIPT], stdout=subprocess.DEVNULL,
                           stderr=subprocess.DEVNULL, close_fds=True, pass_fds=(),
                           env={"DEPENDENCY_SOCKET": str(tmp_path / "ready"), "COMMAND": "",
                                "PATH": "/usr/bin:/bin"},
                           preexec_fn=lambda: os.close(1))
    assert code == 0


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


# The termination message never holds the exit ---------------------------------------------------

@pytest.mark.parametrize("ending", ["configuration error", "timeout", "SIGTERM"])
def test_a_fifo_as_termination_log_does_not_hang_the_exit(tmp_path, entrypoint, ending):
    fifo = tmp_path / "termination-log"
    os.mkfifo(str(fifo))
    env = {"ENTRYPOINT_TERMINATION_LOG": str(fifo), "DEPENDENCY_SOCKET": str(tmp_path / "never")}
    if ending == "configuration error":
        env["DEPENDENCY_SOCKET"] = "ns:bad"
    elif ending == "timeout":
        env["ENTRYPOINT_TIMEOUT"] = "0.5"
    run = entrypoint(env)
    if ending == "SIGTERM":
        time.sleep(1.0)  # started and waiting: nothing outside the process shows it sooner
        run.process.send_signal(signal.SIGTERM)
    code = run.finish(timeout=10)
    assert code == {"configuration error": 2, "timeout": 1, "SIGTERM": 143}[ending], run.stderr


def test_the_termination_message_is_written_to_a_regular_file_only(tmp_path):
    fifo = tmp_path / "fifo"
    os.mkfifo(str(fifo))
    reader = os.open(str(fifo), os.O_RDONLY | os.O_NONBLOCK)  # someone reads: it would open
    try:
        ke.write_termination_message(str(fifo), ["said"])
        assert os.read(reader, 100) == b""
    finally:
        os.close(reader)
    regular = tmp_path / "log"
    regular.write_bytes(b"an older and longer message\n")
    ke.write_termination_message(str(regular), ["said"])
    assert regular.read_bytes() == b"said\n"
