"""The termination message: why the container ended, where `kubectl describe pod` shows it."""

import signal

import pytest

import fakeapi as k8s
import kubernetes_entrypoint as ke
from test_process import wait_until_waiting


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
