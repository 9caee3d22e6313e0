"""Signals: SIGTERM and SIGINT stop the wait at once, exit 143 or 130 and say what was unmet; a
second signal while stopping is ignored; no race, from the module's load to the exit, makes a
traceback or loses the stop; and a stop while a CONFIG file is written leaves no temporary file."""

import os
import random
import re
import signal
import subprocess
import sys
import threading
import time

import pytest

import kubernetes_entrypoint as ke
from conftest import SCRIPT, wait_for
from scenarios import unmet_service, wait_until_waiting
from templates import left_in, rendered


# Stopping the wait ----------------------------------------------------------------------------

def test_sigterm_while_waiting_exits_143_promptly(tmp_path, entrypoint):
    run = entrypoint({"DEPENDENCY_SOCKET": str(tmp_path / "never")})
    assert "Resolving Socket" in run.process.stdout.readline()  # waiting now
    start = time.monotonic()
    run.process.send_signal(signal.SIGTERM)
    assert run.finish() == 143
    assert time.monotonic() - start < 3  # generous: it should take milliseconds
    assert run.report() is None


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


# Item 16: no traceback in any signal race; exit codes stay sane -------------------------------

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


def sigint_as_a_container_has_it():
    """In the child: SIGINT at its default, as a container's PID 1 starts, whatever the test run's
    own (a runner started in the background of a shell without job control ignores it, and an
    ignored signal is inherited: one before the script's handler would be lost)."""
    signal.signal(signal.SIGINT, signal.SIG_DFL)


def test_item16c_sigint_during_module_load(tmp_path, spawn):
    """issue 7 item 16 (c)."""
    bad = []
    for _ in range(30):
        run = spawn({"DEPENDENCY_SOCKET": str(tmp_path / "never")},
                    preexec_fn=sigint_as_a_container_has_it)
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


# Item 17: a stop signal while the temporary file is written leaves no temporary file ----------

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


def test_stop_signal_while_the_temporary_file_is_created_leaves_none(tmp_path, monkeypatch):
    """Found in review: a SIGTERM right after the temporary file is opened (before anything could
    note it for cleanup) must leave neither the file nor its descriptor behind."""
    destination = tmp_path / "app.conf"
    destination.write_bytes(b"old\n")
    real_open = os.open

    def open_then_signal(path, *args, **kwargs):
        fd = real_open(path, *args, **kwargs)
        if str(path).endswith(".tmp"):  # to this thread: as in the entrypoint, where every other
            signal.pthread_kill(threading.get_ident(), signal.SIGTERM)  # thread blocks it
        return fd

    previous = signal.signal(signal.SIGTERM, ke.on_stop_signal)
    ke.Stopping.signal, ke.Stopping.finishing = None, False
    monkeypatch.setattr(ke.os, "open", open_then_signal)
    try:
        with pytest.raises(ke.Stop):
            ke.write_file_atomically(str(destination), b"new\n")
    finally:
        signal.signal(signal.SIGTERM, previous)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["app.conf"]
    assert destination.read_bytes() in (b"old\n", b"new\n")
