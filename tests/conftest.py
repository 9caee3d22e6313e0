"""Shared fixtures: the fake API server, and running the entrypoint as an operator does."""

import os
import subprocess
import sys
import time

import pytest

TESTS = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(TESTS)
sys.path[:0] = [ROOT, TESTS]

from fakeapi import FakeKubeAPI  # noqa: E402  (needs the path above)

SCRIPT = os.path.join(ROOT, "kubernetes_entrypoint.py")
REPORTER = os.path.join(TESTS, "report_command.sh")


@pytest.fixture
def api(tmp_path):
    with FakeKubeAPI(tmp_path / "api") as server:
        yield server


def wait_for(predicate, timeout=10.0, interval=0.02):
    """Poll `predicate` until it returns something true; fail the test after `timeout` seconds."""
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError("timed out after %.1fs waiting for %s" % (timeout, predicate))
        time.sleep(interval)


class Entrypoint:
    """The script as a subprocess, as in a container: `python3 -I -S`, only the variables given.

    Its COMMAND, unless the test sets one, is tests/report_command.sh, which writes the PID it
    runs as into `report_path`, so a test can tell whether (and as which process) it ran.
    """

    def __init__(self, tmp_path, env, command=None, arguments=()):
        self.report_path = str(tmp_path / "report")
        full_env = {"PATH": "/usr/bin:/bin", "ENTRYPOINT_POLL_INTERVAL": "0.2",
                    "COMMAND": "%s %s arg1  arg2" % (REPORTER, self.report_path)}
        if command is not None or arguments:
            full_env["COMMAND"] = command or ""
        full_env.update(env)
        self.process = subprocess.Popen(
            [sys.executable, "-I", "-S", SCRIPT] + list(arguments), env=full_env, cwd=str(tmp_path),
            stdout=subprocess.PIPE, stderr=subprocess.PIPE, universal_newlines=True)
        self.stdout = self.stderr = None

    def report(self):
        """What the exec'd command recorded, or None while it has not run."""
        try:
            with open(self.report_path) as f:
                return dict(line.rstrip("\n").split("=", 1) if "=" in line
                            else line.rstrip("\n").split(":\t", 1) for line in f)
        except FileNotFoundError:
            return None

    def running(self):
        return self.process.poll() is None

    def finish(self, timeout=15.0):
        """Wait for exit; keep the output; return the exit code."""
        try:
            self.stdout, self.stderr = self.process.communicate(timeout=timeout)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.stdout, self.stderr = self.process.communicate()
            raise AssertionError("entrypoint still running after %.0fs:\n%s\n%s"
                                 % (timeout, self.stdout, self.stderr))
        return self.process.returncode

    def stop(self):
        if self.running():
            self.process.kill()
        self.process.communicate()

    def assert_execd(self):
        """Exited 0 through the command, which ran as the entrypoint's own PID."""
        code = self.finish()
        report = self.report()
        assert code == 0, (self.stdout, self.stderr)
        assert report is not None, "the command never ran:\n%s\n%s" % (self.stdout, self.stderr)
        assert int(report["pid"]) == self.process.pid
        return report


@pytest.fixture
def entrypoint(tmp_path):
    started = []

    def start(env, command=None, arguments=()):
        run = Entrypoint(tmp_path, env, command, arguments)
        started.append(run)
        return run

    yield start
    for run in started:
        run.stop()
