"""Shared fixtures and helpers: the fake API server, plain requests to it, and running the
entrypoint as an operator does (or through a wrapper, or with a resource limit)."""

import json
import os
import ssl
import subprocess
import sys
import time
import urllib.error
import urllib.request

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


# Plain HTTPS requests to the fake, as any client makes them -----------------------------------

def tls(api):
    return ssl.create_default_context(cafile=str(api.ca_path))


def fetch(api, path, token=True, method="GET", timeout=5):
    """One request with urllib; returns (status, headers, body bytes), errors included."""
    headers = {}
    if token:
        headers["Authorization"] = "Bearer " + (api.token if token is True else token)
    request = urllib.request.Request(api.url + path, method=method, headers=headers)
    try:
        with urllib.request.urlopen(request, context=tls(api), timeout=timeout) as response:
            return response.status, response.headers, response.read()
    except urllib.error.HTTPError as error:
        with error:
            return error.code, error.headers, error.read()


def fetch_json(api, path, **kwargs):
    status, _, body = fetch(api, path, **kwargs)
    return status, json.loads(body)


# The entrypoint through a wrapper, or with a resource limit -----------------------------------

class Run(Entrypoint):
    """conftest's Entrypoint, started through `head` (the script, or a wrapper running it) and with
    an optional preexec_fn (a resource limit)."""

    def __init__(self, tmp_path, env, head=(sys.executable, "-I", "-S", SCRIPT), preexec_fn=None):
        self.report_path = str(tmp_path / "report")
        full_env = {"PATH": "/usr/bin:/bin", "ENTRYPOINT_POLL_INTERVAL": "0.2",
                    "COMMAND": "%s %s" % (REPORTER, self.report_path)}
        full_env.update(env)
        self.process = subprocess.Popen(
            list(head), env=full_env, cwd=str(tmp_path), stdout=subprocess.PIPE,
            stderr=subprocess.PIPE, universal_newlines=True, preexec_fn=preexec_fn)
        self.stdout = self.stderr = None


@pytest.fixture
def spawn(tmp_path):
    started = []

    def start(env, **kwargs):
        started.append(Run(tmp_path, env, **kwargs))
        return started[-1]

    yield start
    for run in started:
        run.stop()


class FakeClock:
    """Time a test moves: call it for the time, `sleep` moves it on."""

    def __init__(self, now=0.0):
        self.now = now

    def __call__(self):
        return self.now

    def sleep(self, seconds):
        self.now += seconds
