"""Issue 7, hardening: CONFIG files written whole or not at all, signal races, control characters
in logs, --check's timeout, threads that cannot start, long reasons. Each test names its item."""

import errno
import json
import os
import random
import re
import resource
import signal
import subprocess
import sys
import threading
import time

import pytest

import fakeapi as k8s
import kubernetes_entrypoint as ke
from conftest import REPORTER, SCRIPT, Entrypoint, wait_for
from test_process import SCENARIOS, daemonset_met, this_pod


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


def make_template(tmp_path, name, text):
    directory = tmp_path / "configmaps" / name
    directory.mkdir(parents=True)
    (directory / name).write_text(text)


def config_env(tmp_path, destination):
    return {"DEPENDENCY_CONFIG": str(destination), "INTERFACE_NAME": "lo",
            "ENTRYPOINT_CONFIGMAPS_DIR": str(tmp_path / "configmaps"),
            "ENTRYPOINT_SERVICEACCOUNT_DIR": str(tmp_path / "sa")}


def rendered(tmp_path, text, old=None):
    """A CONFIG dependency for tmp_path/etc/x.conf as the module parses it, so its content has the
    module's own type (str or bytes); `old`: bytes the destination holds before."""
    make_template(tmp_path, "x.conf", text)
    (tmp_path / "etc").mkdir()
    env = config_env(tmp_path, tmp_path / "etc" / "x.conf")
    [dep] = ke.parse_dependencies(env, ke.read_settings(env))
    if old is not None:
        (tmp_path / "etc" / "x.conf").write_bytes(old)
    return dep


def left_in(directory):
    return sorted(os.listdir(str(directory)))


# Item 1: a CONFIG file is written completely or not at all ---------------------------------

def limit_file_size():
    resource.setrlimit(resource.RLIMIT_FSIZE, (4096, 4096))


@pytest.mark.parametrize("old", [None, b"old bytes\n"])
def test_item1_config_beyond_the_file_size_limit_is_not_written(tmp_path, spawn, old):
    """issue 7 item 1: a write cut short by RLIMIT_FSIZE must not be renamed into place."""
    make_template(tmp_path, "big.conf", "line {{ .IP }}\n" * 4500)  # 67,500 bytes rendered
    destination = tmp_path / "etc" / "big.conf"
    destination.parent.mkdir()
    if old is not None:
        destination.write_bytes(old)
    run = spawn(dict(config_env(tmp_path, destination), ENTRYPOINT_TIMEOUT="2"),
                preexec_fn=limit_file_size)
    assert run.finish() == 1, (run.stdout, run.stderr)
    assert run.report() is None  # the command never ran
    if old is None:
        assert not destination.exists()
    else:
        assert destination.read_bytes() == old
    assert left_in(destination.parent) == ([] if old is None else ["big.conf"])
    assert "cannot write" in run.stderr


def test_item1_short_writes_are_continued(tmp_path, monkeypatch):
    """issue 7 item 1: os.write may write less than it is given; the rest must follow."""
    text = "".join("line %05d\n" % i for i in range(2000))
    dep = rendered(tmp_path, text)
    real_write = os.write

    def half_write(fd, data):
        return real_write(fd, data[:max(1, len(data) // 2)])

    with monkeypatch.context() as patch:
        patch.setattr(ke.os, "write", half_write)
        verdict = ke.check_config(dep, None)
    assert verdict.met, verdict.reason
    assert (tmp_path / "etc" / "x.conf").read_bytes() == text.encode()
    assert left_in(tmp_path / "etc") == ["x.conf"]


@pytest.mark.parametrize("old", [None, b"old bytes\n"])
def test_item1_disk_full_mid_write_leaves_nothing(tmp_path, monkeypatch, old):
    """issue 7 item 1: ENOSPC after a partial write: not met, the destination as it was, no temp."""
    text = "".join("line %05d\n" % i for i in range(2000))
    dep = rendered(tmp_path, text, old)
    real_write, calls = os.write, []

    def write_then_enospc(fd, data):
        calls.append(len(data))
        if len(calls) > 1:
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        return real_write(fd, data[:len(data) // 2])

    with monkeypatch.context() as patch:
        patch.setattr(ke.os, "write", write_then_enospc)
        verdict = ke.check_config(dep, None)
    assert not verdict.met
    destination = tmp_path / "etc" / "x.conf"
    if old is None:
        assert not destination.exists()
    else:
        assert destination.read_bytes() == old
    assert left_in(tmp_path / "etc") == ([] if old is None else ["x.conf"])


# Item 2: the temporary file's name is not predictable, and it is never followed ------------

def test_item2_planted_symlinks_at_guessable_temporary_names_are_not_followed(tmp_path):
    """issue 7 item 2: `.<name>.<pid>.tmp` symlinked to a victim must not redirect the write."""
    dep = rendered(tmp_path, "new content\n")
    victim = tmp_path / "victim"
    victim.write_bytes(b"precious\n")
    directory = tmp_path / "etc"
    guesses = {os.getpid(), os.getppid(), threading.get_native_id(), 1}
    guesses |= set(range(os.getpid() - 5, os.getpid() + 6))
    planted = [".x.conf.%d.tmp" % pid for pid in guesses] + [".x.conf.tmp", "x.conf.tmp"]
    for name in planted:
        os.symlink(str(victim), str(directory / name))
    ke.write_file_atomically(dep.path, dep.content)
    assert victim.read_bytes() == b"precious\n"
    assert not os.path.islink(dep.path)
    assert (directory / "x.conf").read_bytes() == b"new content\n"
    assert left_in(directory) == sorted(planted + ["x.conf"])  # no temporary file of its own left


# Item 14: a pod read before it is scheduled is read again ----------------------------------

@pytest.mark.parametrize("node_name", ["absent", "empty", "not a string"])
@pytest.mark.parametrize("watch", ["allowed", "denied"])
def test_item14_pod_read_before_scheduling_is_not_cached_as_unscheduled(api, entrypoint, watch,
                                                                        node_name):
    """issue 7 item 14: this pod has no node when first read; it gets one while waiting."""
    if watch == "denied":
        api.deny("watch", "pods")
        api.deny("watch", "daemonsets")
    pod = k8s.pod("me")  # not scheduled yet
    if node_name != "absent":
        pod["spec"]["nodeName"] = "" if node_name == "empty" else 7
    api.put(pod)
    api.put(k8s.daemonset("ovs", "infra", match_labels={"app": "ovs"}))
    api.put(k8s.pod("ovs-a", "infra", labels={"app": "ovs"}, node="node-a"))  # not ready
    env = SCENARIOS["daemonset"][0]
    run = entrypoint(dict(api.env(), ENTRYPOINT_TIMEOUT="10", **env))
    wait_for(lambda: any(r.resource == "pods" for r in api.requests))
    time.sleep(0.6)
    assert run.running() and run.report() is None
    this_pod(api)  # now on node-a
    daemonset_met(api)
    run.assert_execd()


# Item 16: no traceback in any signal race; exit codes stay sane -----------------------------

NOISE = ("Traceback", "Exception ignored", "ignored due to race condition")


def wait_until_it_catches(process, signum=signal.SIGTERM):
    """Until the process has a handler for `signum` (per /proc), or has exited."""
    while process.poll() is None:
        try:
            with open("/proc/%d/status" % process.pid) as f:
                caught = next(int(line.split()[1], 16) for line in f if line.startswith("SigCgt:"))
        except (OSError, StopIteration, ValueError):
            return
        if caught >> (signum - 1) & 1:
            return
        time.sleep(0.0002)


def aim(process, run):
    """Even runs: a random 0-60 ms after start. Odd runs: the moment the stop handler is in, or up
    to 1 ms later; the whole life after that is a few ms, so this is where races at exit lie."""
    if run % 2:
        wait_until_it_catches(process)
        time.sleep(random.choice([0, random.uniform(0, 0.001)]))
    else:
        time.sleep(random.uniform(0, 0.06))


def test_item16a_sigterm_racing_a_configuration_error(spawn):
    """issue 7 item 16 (a)."""
    bad = []
    for i in range(30):
        run = spawn({"DEPENDENCY_SERVICE": "Bad_Name"})
        aim(run.process, i)
        run.process.send_signal(signal.SIGTERM)
        code = run.finish()
        if code not in (2, 143, -15) or any(word in run.stderr for word in NOISE):
            bad.append((code, run.stderr[-400:]))
    assert not bad, "%d of 30 runs: %s" % (len(bad), bad[:2])


def test_item16b_sigterm_flood_while_exiting_zero(spawn):
    """issue 7 item 16 (b): COMMAND empty, nothing to wait for: it exits 0 at once."""
    bad = []
    for i in range(30):
        run = spawn({"COMMAND": ""})
        aim(run.process, i)
        while run.running():
            run.process.send_signal(signal.SIGTERM)
            time.sleep(0.001)
        code = run.finish()
        if code not in (0, 143, -15) or any(word in run.stderr for word in NOISE):
            bad.append((code, run.stderr[-400:]))
    assert not bad, "%d of 30 runs: %s" % (len(bad), bad[:2])


def handler_line():
    """The line of the script that installs its first SIGINT handler."""
    with open(SCRIPT) as f:
        return next(n for n, line in enumerate(f, 1) if "_signal.signal(_signal.SIGINT" in line)


def before_the_script_ran(stderr):
    """A SIGINT while the interpreter starts or compiles the file meets Python's own handler before
    the script's handler is in: a KeyboardInterrupt no script can prevent (no frame of it past the
    line that installs the handler; Python raises a signal pending since compiling at the first
    line). The interpreter may even print it and run the script anyway ("Failed checking if
    argv[0] is an import path entry"): that SIGINT is gone before the script exists."""
    if "KeyboardInterrupt" not in stderr:
        return False
    lines = [int(n) for n in re.findall(r'File "%s", line (\d+)' % re.escape(SCRIPT), stderr)]
    return all(n <= handler_line() for n in lines)


def test_item16c_sigint_during_module_load(tmp_path, spawn):
    """issue 7 item 16 (c)."""
    bad = []
    for _ in range(30):
        run = spawn({"DEPENDENCY_SOCKET": str(tmp_path / "never")})
        time.sleep(random.uniform(0, 0.04))
        run.process.send_signal(signal.SIGINT)
        try:
            run.stdout, run.stderr = run.process.communicate(timeout=5)
            code = run.process.returncode
        except subprocess.TimeoutExpired:
            run.process.kill()
            run.stdout, run.stderr = run.process.communicate()
            code = "still waiting 5s after SIGINT"
        if before_the_script_ran(run.stderr):
            continue
        if code not in (130, -2) or "Traceback" in run.stderr or "KeyboardInterrupt" in run.stderr:
            bad.append((code, run.stderr[:300]))  # its first frame: the script's line
    assert not bad, "%d of 30 runs: %s" % (len(bad), bad[:2])


def test_item16d_flood_of_stop_signals_while_stopping(tmp_path, spawn):
    """issue 7 item 16 (d): ten waiting processes, each flooded with SIGTERM/SIGINT for 0.5 s."""
    runs = [spawn({"DEPENDENCY_SOCKET": str(tmp_path / "never")}) for _ in range(10)]
    for run in runs:
        wait_until_it_catches(run.process)
    time.sleep(0.3)  # well into waiting

    def flood(run):
        end = time.monotonic() + 0.5
        while time.monotonic() < end and run.running():
            run.process.send_signal(random.choice((signal.SIGTERM, signal.SIGINT)))
            time.sleep(0.0001)

    threads = [threading.Thread(target=flood, args=(run,)) for run in runs]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    for run in runs:
        assert run.finish() in (143, 130), run.stderr
        assert not any(word in run.stderr for word in NOISE), run.stderr


DROPPED_STOP = """
import os, signal, sys, threading, weakref
sys.path.insert(0, sys.argv[1])
import kubernetes_entrypoint as ke

class Thing:
    pass

held = [Thing()]

def finalizer(ref):  # a weakref callback: Python prints and drops what is raised in one
    os.kill(os.getpid(), signal.SIGTERM)
    for _ in range(100000):
        pass

ref = weakref.ref(held[0], finalizer)
[kind] = [k for k in ke.KINDS if k.variable == "DEPENDENCY_SOCKET"]
check = kind.check

def check_dropping_the_thing(dep, read):
    if held:
        held.pop()  # the finalizer runs here, on the main thread, and the signal lands in it
    return check(dep, read)

kind.check = check_dropping_the_thing
threading.Timer(1.0, open, [sys.argv[2], "w"]).start()  # the dependency is met a second later
sys.exit(ke.main([], {"PATH": "/usr/bin:/bin", "DEPENDENCY_SOCKET": sys.argv[2],
                      "ENTRYPOINT_POLL_INTERVAL": "30", "COMMAND": "echo the command ran",
                      "ENTRYPOINT_TERMINATION_LOG": ""}))
"""


def test_item16e_a_stop_dropped_inside_a_finalizer_still_stops(tmp_path):
    """A SIGTERM whose Stop is raised inside a weakref callback (Python drops exceptions there)
    must still stop the wait, within about a second even with a 30 s poll interval, and the
    command must not run once its dependency is met."""
    driver = tmp_path / "driver.py"
    driver.write_text(DROPPED_STOP)
    started = time.monotonic()
    result = subprocess.run(
        [sys.executable, "-I", "-S", str(driver), os.path.dirname(SCRIPT),
         str(tmp_path / "ready")], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
        universal_newlines=True, timeout=60)
    assert result.returncode == 143, result.stdout + result.stderr
    assert "the command ran" not in result.stdout
    assert "stopped by SIGTERM" in result.stdout + result.stderr
    assert not any(word in result.stderr for word in NOISE), result.stderr
    assert time.monotonic() - started < 10


# Item 17: a stop signal during the temporary file's write leaves no temporary file ----------

@pytest.mark.parametrize("call", ["write", "fsync"])
def test_item17_stop_during_the_write_leaves_no_temporary_file(tmp_path, monkeypatch, call):
    """issue 7 item 17: the signal handler's Stop raised from inside os.write or os.fsync."""
    dep = rendered(tmp_path, "new content\n", old=b"old bytes\n")

    def stop(*args):
        raise ke.Stop(signal.SIGTERM)

    with monkeypatch.context() as patch:
        patch.setattr(ke.os, call, stop)
        with pytest.raises(ke.Stop):
            ke.write_file_atomically(dep.path, dep.content)
    assert left_in(tmp_path / "etc") == ["x.conf"]
    assert (tmp_path / "etc" / "x.conf").read_bytes() == b"old bytes\n"


# Item 18: --check honours --timeout and ENTRYPOINT_TIMEOUT --------------------------------

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


# Item 19: no control character reaches a text log line raw --------------------------------

LOG_LINE = re.compile(r"Entrypoint (DEBUG|INFO|WARNING|ERROR): \d{4}/\d\d/\d\d \d\d:\d\d:\d\d "
                      r"[^\x00-\x1f\x7f]*")
FORGED_PATH = "/tmp/x\nEntrypoint INFO forged\r\x1b[2K"  # no colon: CONFIG/SOCKET refuse one
FORGED_STATUS = json.dumps({"kind": "Status", "status": "Failure", "code": 500,
                            "message": "boom\nEntrypoint INFO: forged"}).encode()


def assert_only_log_lines(run):
    for line in (run.stdout + run.stderr).splitlines():
        assert LOG_LINE.fullmatch(line), "not one whole log line: %r" % line


def test_item19_path_with_control_characters_is_escaped(entrypoint):
    """issue 7 item 19: a SOCKET path holding a newline, a carriage return and an escape."""
    run = entrypoint({"DEPENDENCY_SOCKET": FORGED_PATH, "ENTRYPOINT_TIMEOUT": "1"})
    assert run.finish() == 1
    assert_only_log_lines(run)
    assert "/tmp/x\\nEntrypoint INFO forged" in run.stdout  # shown, escaped


def test_item19_api_status_message_with_a_newline_is_escaped(api, entrypoint):
    """issue 7 item 19: the API server's Status message is text from outside."""
    api.inject(status=500, body=FORGED_STATUS, times=None)
    api.deny("watch", "endpointslices")
    run = entrypoint(dict(api.env(), DEPENDENCY_SERVICE="db", ENTRYPOINT_TIMEOUT="1"))
    assert run.finish() == 1
    assert_only_log_lines(run)
    assert "forged" in run.stdout + run.stderr


def test_item19_check_table_rows_are_one_line_each(api, entrypoint):
    """issue 7 item 19: --check's table, with both a path and a reason holding newlines."""
    api.inject(status=500, body=FORGED_STATUS, times=None)
    run = entrypoint(dict(api.env(), DEPENDENCY_SOCKET=FORGED_PATH, DEPENDENCY_SERVICE="db"),
                     arguments=["--check"])
    assert run.finish() == 1
    rows = [line for line in run.stdout.splitlines() if not LOG_LINE.fullmatch(line)]
    assert len(rows) == 3, rows  # the header and one row per dependency; log lines aside
    assert not any(re.search(r"[\x00-\x1f\x7f]", row) for row in rows), rows


# Item 20: starting a thread can fail -------------------------------------------------------

THREAD_LIMIT = """\
import runpy, sys, threading
started, real_start = [0], threading.Thread.start
def start(self):
    started[0] += 1
    if started[0] > 3:
        raise RuntimeError("can't start new thread")
    real_start(self)
threading.Thread.start = start
sys.argv = [%r]
runpy.run_path(%r, run_name="__main__")
""" % (SCRIPT, SCRIPT)


def test_item20_thread_that_cannot_start_is_no_crash(api, spawn):
    """issue 7 item 20: as under a low pids limit, only three threads can start. (Ten
    namespaces: the Services of one namespace would share one read, and one thread.)"""
    namespaces = ["n%d" % i for i in range(10)]
    for namespace in namespaces:
        api.put(k8s.endpoint_slice("s", namespace, addresses=(("10.0.0.1", False),)))
    run = spawn(dict(api.env(), DEPENDENCY_SERVICE=",".join(ns + ":s" for ns in namespaces)),
                head=(sys.executable, "-I", "-S", "-c", THREAD_LIMIT))
    wait_for(lambda: len(api.requests) >= 10)
    time.sleep(1)
    if not run.running():
        run.finish()
        pytest.fail("it stopped waiting: %s" % run.stderr[-1000:])
    for namespace in namespaces:
        api.put(k8s.endpoint_slice("s", namespace))
    code = run.finish()
    assert code == 0 and run.report() is not None, (run.stdout, run.stderr)
    assert "Traceback" not in run.stderr


# Item 21: reasons are summarised -----------------------------------------------------------

def test_item21_reason_for_many_jobs_is_summarised(api, entrypoint):
    """issue 7 item 21: 300 matching Jobs, none succeeded."""
    for i in range(300):
        api.put(k8s.job("job-%d" % i, labels={"app": "x"}, active=1))
    run = entrypoint(dict(api.env(), DEPENDENCY_JOBS_JSON='[{"labels": {"app": "x"}}]',
                          ENTRYPOINT_PROGRESS_INTERVAL="1", ENTRYPOINT_TIMEOUT="3"))
    assert run.finish() == 1
    lines = (run.stdout + run.stderr).splitlines()
    assert max(len(line) for line in lines) <= 1000, max(len(line) for line in lines)
    assert "300" in run.stderr  # how many are not succeeded


def test_stop_signal_while_the_temporary_file_is_created_leaves_none(tmp_path, monkeypatch):
    """Found in review: a SIGTERM right after the temporary file is opened (before anything could
    note it for cleanup) must leave neither the file nor its descriptor behind."""
    destination = tmp_path / "app.conf"
    destination.write_bytes(b"old\n")
    real_open = os.open

    def open_then_signal(path, *args, **kwargs):
        fd = real_open(path, *args, **kwargs)
        if str(path).endswith(".tmp"):
            os.kill(os.getpid(), signal.SIGTERM)
        return fd

    previous = signal.signal(signal.SIGTERM, ke.on_stop_signal)
    del ke.STOPPING[:]
    monkeypatch.setattr(ke.os, "open", open_then_signal)
    try:
        with pytest.raises(ke.Stop):
            ke.write_file_atomically(str(destination), b"new\n")
    finally:
        signal.signal(signal.SIGTERM, previous)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["app.conf"]
    assert destination.read_bytes() in (b"old\n", b"new\n")
