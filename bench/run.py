#!/usr/bin/env python3
"""Benchmark of kubernetes_entrypoint.py against the fake API server of tests/fakeapi.py.

    python3 bench/run.py            # the full run (about 4-5 minutes on 2 cores)
    python3 bench/run.py --quick    # a smoke test (under 2 minutes)

Each figure is measured twice: with watch allowed, and with "watch" denied on every resource
(its rules review says so, and a watch would be answered 403), so that the entrypoint polls every
ENTRYPOINT_POLL_INTERVAL (2 s by default).
Progress goes to stderr; the result tables (Markdown) go to stdout. See bench/README.md.

The entrypoint runs as the tests run it: `python -I -S kubernetes_entrypoint.py` with only the
in-cluster variables. Its COMMAND is a small /bin/sh script, written here, that records
`date +%s%N` and its PID, so the moment of exec is compared with time.time_ns() in this process.
Everything listens on 127.0.0.1 only; every wait is bounded; every process started here is
killed and every server stopped on the way out, Ctrl-C and errors included.
"""

import argparse
import json
import os
import platform
import random
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import threading
import time

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
TESTS = os.path.join(ROOT, "tests")
SCRIPT = os.path.join(ROOT, "kubernetes_entrypoint.py")
sys.path.insert(0, TESTS)

try:
    import fakeapi as k8s  # noqa: E402  (tests/ is on the path now)
except ImportError as error:  # trustme, usually
    sys.exit("bench: cannot import tests/fakeapi.py (%s); install its needs: "
             "python3 -m pip install trustme" % error)

WATCH, REFUSED = "watch allowed", "watch refused"
MODES = (WATCH, REFUSED)
POLL_INTERVAL = 2.0   # the entrypoint's default; the bench does not change it
NS = 1000000000
STARTED = time.monotonic()

# What the Go kubernetes-entrypoint sends per 2-second round while a dependency of each kind is
# not met (the brief's numbers); per minute it is 30 times that.
ORIGINAL_PER_ROUND = {"SERVICE": 2, "JOBS": 1, "POD_JSON": 2, "DAEMONSET": 3,
                      "CUSTOM_RESOURCE": 2, "CONTAINER": 1}
KIND_ORDER = ("SERVICE", "JOBS", "POD_JSON", "DAEMONSET", "CUSTOM_RESOURCE", "CONTAINER")

REPORTER = """#!/bin/sh
# Written by bench/run.py: the COMMAND the entrypoint execs. It records when it started
# (ns since the epoch) and its PID, renamed into place so the bench never reads half a line.
now=$(date +%s%N)
echo "$now $$" > "$1.tmp" && mv "$1.tmp" "$1"
"""


def say(message):
    sys.stderr.write("[%6.1fs] %s\n" % (time.monotonic() - STARTED, message))
    sys.stderr.flush()


class BenchError(Exception):
    """Something went wrong in a measurement (not a missed target)."""


def wait_until(predicate, timeout, what, interval=0.01, stop=None):
    """Poll `predicate` until it returns something true; BenchError after `timeout` seconds."""
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            raise BenchError("timed out after %.0f s waiting for %s" % (timeout, what))
        if stop is not None and stop.is_set():
            raise BenchError("stopped while waiting for %s" % what)
        time.sleep(interval)


# --------------------------------------------------------------------------------------------
# Scenarios: what the fake cluster holds, and the DEPENDENCY_* variables that read it.
# --------------------------------------------------------------------------------------------

ME = {"POD_NAME": "me", "NAMESPACE": "default"}
POD_JSON = json.dumps([{"labels": {"app": "x"}, "requireSameNode": True}])
WIDGET_VERSION, WIDGETS, WIDGET = "example.com/v1", "widgets", "Widget"
CUSTOM_RESOURCE = json.dumps([{"apiVersion": WIDGET_VERSION, "kind": WIDGET, "name": "w",
                               "conditions": [{"type": "Ready"}]}])


def this_pod(api, containers=("app",), ready_containers=()):
    api.put(k8s.pod("me", node="node-a", host_ip="192.0.2.1", containers=containers,
                    ready_containers=ready_containers, ready=bool(ready_containers)))


def unready_slice(name):
    return k8s.endpoint_slice(name, addresses=(("10.0.0.1", False),))


def ready_slice(name):
    return k8s.endpoint_slice(name, addresses=(("10.0.0.1", True),))


def setup_service(api):
    api.put(k8s.service("db"))
    api.put(unready_slice("db"))


def setup_service_and_pod(api):
    setup_service(api)
    this_pod(api)


def setup_jobs(api):
    api.put(k8s.job("db-init", active=1))


def setup_pod_json(api):
    this_pod(api)
    api.put(k8s.pod("x-a", labels={"app": "x"}, node="node-a"))  # on this node, not ready


def setup_daemonset(api):
    this_pod(api)
    api.put(k8s.daemonset("ovs", match_labels={"app": "ovs"}))
    api.put(k8s.pod("ovs-a", labels={"app": "ovs"}, node="node-a"))  # on this node, not ready


def setup_custom_resource(api):
    api.register_resource(WIDGET_VERSION, WIDGETS, WIDGET)
    api.put(k8s.custom(WIDGET_VERSION, WIDGET, "w", "default",
                       status={"conditions": [{"type": "Ready", "status": "False"}]}))


def setup_container(api):
    this_pod(api, containers=("app", "libvirt"))  # libvirt not ready


# One dependency of each kind, not met: (variables, setup). Figure 3 runs one process per kind.
UNMET = {
    "SERVICE": ({"DEPENDENCY_SERVICE": "db"}, setup_service),
    "JOBS": ({"DEPENDENCY_JOBS": "db-init"}, setup_jobs),
    "POD_JSON": (dict(ME, DEPENDENCY_POD_JSON=POD_JSON), setup_pod_json),
    "DAEMONSET": (dict(ME, DEPENDENCY_DAEMONSET="ovs"), setup_daemonset),
    "CUSTOM_RESOURCE": ({"DEPENDENCY_CUSTOM_RESOURCE": CUSTOM_RESOURCE}, setup_custom_resource),
    "CONTAINER": (dict(ME, DEPENDENCY_CONTAINER="libvirt"), setup_container),
}

# Figure 1: one each of SERVICE, JOBS, POD_JSON and DAEMONSET, all met before the process starts.
ALL_MET_ENV = dict(ME, DEPENDENCY_SERVICE="db", DEPENDENCY_JOBS="db-init",
                   DEPENDENCY_POD_JSON=POD_JSON, DEPENDENCY_DAEMONSET="ovs")


def setup_all_met(api):
    this_pod(api)
    api.put(k8s.service("db"))
    api.put(ready_slice("db"))
    api.put(k8s.job("db-init", succeeded=1))
    api.put(k8s.pod("x-a", labels={"app": "x"}, node="node-a", host_ip="192.0.2.1", ready=True))
    api.put(k8s.daemonset("ovs", match_labels={"app": "ovs"}))
    api.put(k8s.pod("ovs-a", labels={"app": "ovs"}, node="node-a", host_ip="192.0.2.1",
                    ready=True))


# Every resource a scenario reads; "watch refused" denies watch on all of them.
DENIED_RESOURCES = sorted({rtype.resource for rtype in k8s.BUILTIN_RESOURCES} | {WIDGETS})


# --------------------------------------------------------------------------------------------
# Processes and servers, all tracked so that close() can end them whatever happened.
# --------------------------------------------------------------------------------------------

class Run:
    """One spawned process whose COMMAND is the reporter: when it was spawned, where it reports."""

    def __init__(self, process, spawned_ns, report_path, log_path):
        self.process = process
        self.spawned_ns = spawned_ns
        self.report_path = report_path
        self.log_path = log_path

    @property
    def pid(self):
        return self.process.pid

    def report(self):
        """(ns since the epoch when COMMAND ran, its PID), or None while it has not run."""
        try:
            with open(self.report_path) as f:
                stamp, pid = f.read().split()
        except (OSError, ValueError):
            return None
        return int(stamp), int(pid)

    def running(self):
        return self.process.poll() is None

    def log_tail(self, lines=8):
        try:
            with open(self.log_path, errors="replace") as f:
                return "".join(f.readlines()[-lines:])
        except OSError:
            return "(no log)"

    def wait_exec(self, timeout, stop=None):
        """The epoch-ns moment COMMAND ran; checks it ran as this very process (exec, same PID)."""
        report = wait_until(lambda: self.report() or (not self.running() and self.report() is None
                                                      and "exited"),
                            timeout, "pid %d to exec its command" % self.pid, interval=0.002,
                            stop=stop)
        if report == "exited" or report is None:
            raise BenchError("pid %d exited with %s without running its command:\n%s"
                             % (self.pid, self.process.poll(), self.log_tail()))
        try:
            code = self.process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            raise BenchError("pid %d ran its command but did not exit" % self.pid)
        if code != 0 or report[1] != self.pid:
            raise BenchError("pid %d: exit %s, command ran as pid %d (want exit 0, same pid):\n%s"
                             % (self.pid, code, report[1], self.log_tail()))
        return report[0]

    def vm_hwm_mb(self):
        """Peak resident set size (VmHWM) in MB, read from /proc while the process is alive."""
        with open("/proc/%d/status" % self.pid) as f:
            for line in f:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) / 1024.0
        raise BenchError("no VmHWM in /proc/%d/status" % self.pid)


class Bench:
    """Owns the temporary directory, every fake API server and every process of the benchmark."""

    def __init__(self, python):
        self.python = python
        self.workdir = tempfile.mkdtemp(prefix="entrypoint-bench-")
        if any(c.isspace() for c in self.workdir):
            raise BenchError("temporary directory %r has whitespace; COMMAND is split on it"
                             % self.workdir)
        self.reporter = os.path.join(self.workdir, "report.sh")
        with open(self.reporter, "w") as f:
            f.write(REPORTER)
        os.chmod(self.reporter, 0o755)
        self._lock = threading.Lock()
        self._runs = []
        self._servers = []
        self._serial = 0
        self._closed = False

    def _new_path(self, tag):
        with self._lock:
            self._serial += 1
            return os.path.join(self.workdir, "%s-%d" % (tag, self._serial))

    # servers -------------------------------------------------------------------------------

    def server(self, mode, setup=None):
        """A started fake API server holding `setup`'s objects; in REFUSED mode watch is denied."""
        api = k8s.FakeKubeAPI(self._new_path("api"))
        # The real apiserver sends a BOOKMARK about once a minute, not every second as the fake
        # does by default for its tests. Bookmarks are not requests; this only saves CPU.
        api.bookmark_interval = 60.0
        if setup is not None:
            setup(api)
        if mode == REFUSED:
            for resource in DENIED_RESOURCES:
                api.deny("watch", resource)
        with self._lock:
            if self._closed:
                raise BenchError("the benchmark is stopping")
            self._servers.append(api)
            return api.start()

    def stop_server(self, api):
        api.stop()
        with self._lock:
            if api in self._servers:
                self._servers.remove(api)

    # processes -----------------------------------------------------------------------------

    def spawn(self, argv, env, tag, report_path=None):
        """Start argv with exactly `env`; stdout and stderr go to a log file in the workdir."""
        base = self._new_path(tag)
        log_path = base + ".log"
        with open(log_path, "wb") as log:
            spawned_ns = time.time_ns()
            process = subprocess.Popen(argv, env=env, cwd=self.workdir, stdin=subprocess.DEVNULL,
                                       stdout=log, stderr=subprocess.STDOUT)
        run = Run(process, spawned_ns, report_path or base + ".report", log_path)
        with self._lock:
            closed = self._closed
            if not closed:
                self._runs.append(run)
        if closed:  # a worker thread raced close(): end this one too
            process.kill()
            process.wait()
            raise BenchError("the benchmark is stopping")
        return run

    def report_path(self, tag):
        return self._new_path(tag) + ".report"

    def entrypoint(self, api, variables, tag="entrypoint"):
        """The entrypoint as the tests run it, waiting for `variables` against `api`."""
        report_path = self.report_path(tag)
        env = {"PATH": "/usr/bin:/bin", "COMMAND": "%s %s" % (self.reporter, report_path)}
        if api is not None:
            env.update(api.env())
        env.update(variables)
        return self.spawn([self.python, "-I", "-S", SCRIPT], env, tag, report_path)

    def kill(self, run):
        if run.running():
            try:
                run.process.kill()
            except OSError:
                pass
        try:
            run.process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            pass
        with self._lock:
            if run in self._runs:
                self._runs.remove(run)

    def close(self, keep=False):
        """Kill every process still running (by its own PID), stop every server, clean up."""
        with self._lock:
            self._closed = True
            runs, self._runs = list(self._runs), []
            servers, self._servers = list(self._servers), []
        for run in runs:
            if run.running():
                try:
                    run.process.kill()
                except OSError:
                    pass
        for run in runs:
            try:
                run.process.wait(timeout=10)
            except subprocess.TimeoutExpired:
                say("warning: pid %d did not exit after SIGKILL" % run.pid)
        for api in servers:
            try:
                api.stop()
            except Exception as error:  # keep stopping the others
                say("warning: stopping a fake API server: %s" % error)
        if keep:
            say("kept %s" % self.workdir)
        else:
            shutil.rmtree(self.workdir, ignore_errors=True)


# --------------------------------------------------------------------------------------------
# Statistics and formatting
# --------------------------------------------------------------------------------------------

def percentile(values, q):
    """The q-th percentile (0-100), linear between the closest ranks."""
    ordered = sorted(values)
    if not ordered:
        return float("nan")
    position = (len(ordered) - 1) * q / 100.0
    low = int(position)
    high = min(low + 1, len(ordered) - 1)
    return ordered[low] + (ordered[high] - ordered[low]) * (position - low)


def seconds_text(seconds):
    if seconds != seconds:
        return "n/a"
    if seconds < 1.0:
        return "%.0f ms" % (seconds * 1000) if seconds >= 0.0995 else "%.1f ms" % (seconds * 1000)
    return "%.2f s" % seconds


def mark(ok):
    return "✓" if ok else "✗ (misses)"


def rate_text(value):
    return "%.0f" % value if value >= 10 or value == 0 else "%.1f" % value


# --------------------------------------------------------------------------------------------
# Figure 1: start to exec, every dependency already met
# --------------------------------------------------------------------------------------------

def spawn_to_exec(bench, run, stop=None):
    return (run.wait_exec(15, stop) - run.spawned_ns) / NS


def figure_1(bench, runs):
    """Median spawn-to-exec for the entrypoint with four dependencies met, per mode, plus floors."""
    say("figure 1: start to exec with SERVICE, JOBS, POD_JSON, DAEMONSET met (%d runs per mode)"
        % runs)
    apis = {mode: bench.server(mode, setup_all_met) for mode in MODES}
    python = bench.python
    ca_path = str(apis[WATCH].ca_path)

    def exec_reporter(code):
        """python -I -S -c CODE, then exec the reporter in the same process (as the entrypoint)."""
        def one():
            path = bench.report_path("floor")
            program = ("%s\nimport os\nos.execv(%r, [%r, %r])"
                       % (code, bench.reporter, bench.reporter, path))
            return spawn_to_exec(bench, bench.spawn([python, "-I", "-S", "-c", program],
                                                    {"PATH": "/usr/bin:/bin"}, "floor", path))
        return one

    def reporter_alone():
        path = bench.report_path("floor")
        return spawn_to_exec(bench, bench.spawn([bench.reporter, path], {"PATH": "/usr/bin:/bin"},
                                                "floor", path))

    floors = [
        ("/bin/sh reporter alone (no Python)", reporter_alone),
        ("python -I -S -c pass, then exec", exec_reporter("pass")),
        ("python -I -S: import ssl, then exec", exec_reporter("import ssl")),
        ("python -I -S: import ssl, http.client, json + SSLContext with ca.crt, then exec",
         exec_reporter("import ssl, http.client, json\n"
                       "ssl.create_default_context(cafile=%r)" % ca_path)),
        ("python -I -S: compile kubernetes_entrypoint.py (not run), then exec",
         exec_reporter("with open(%r) as f:\n    compile(f.read(), %r, 'exec')"
                       % (SCRIPT, SCRIPT))),
        ("entrypoint, no dependencies (parse + exec)",
         lambda: spawn_to_exec(bench, bench.entrypoint(None, {}, "nodeps"))),
    ]

    def full(mode):
        def one():
            before = len(apis[mode].requests)
            seconds = spawn_to_exec(bench, bench.entrypoint(apis[mode], ALL_MET_ENV, "met"))
            request_counts[mode].append(len(apis[mode].requests) - before)
            return seconds
        return one

    request_counts = {mode: [] for mode in MODES}
    measures = [(name, fn) for name, fn in floors] + [(mode, full(mode)) for mode in MODES]
    for _, fn in measures:  # warm-up: page cache, first-run effects
        fn()
    for counts in request_counts.values():
        del counts[:]
    samples = {name: [] for name, _ in measures}
    for _ in range(runs):  # interleaved, so that a slow moment of the machine hits all alike
        for name, fn in measures:
            samples[name].append(fn())
    for mode in MODES:
        bench.stop_server(apis[mode])
    result = {name: statistics.median(values) for name, values in samples.items()}
    result["requests"] = {mode: statistics.median(c) for mode, c in request_counts.items()}
    result["floors"] = [name for name, _ in floors]
    result["spread"] = {name: (min(v), max(v)) for name, v in samples.items()}
    for name, _ in measures:
        say("  %-80s median %s (min %s, max %s)" % (name, seconds_text(result[name]),
                                                      seconds_text(min(samples[name])),
                                                      seconds_text(max(samples[name]))))
    return result


# --------------------------------------------------------------------------------------------
# Figure 2: reaction time from a dependency becoming ready to exec
# --------------------------------------------------------------------------------------------

def reaction_sample(bench, mode, delay, stop):
    """One process waiting on SERVICE db; `delay` s after it waits, the slice turns ready;
    the seconds from then until COMMAND ran."""
    api = bench.server(mode, setup_service_and_pod)
    run = None
    try:
        # With POD_NAME and the pod there, it writes Events: the exec waits for the last one.
        run = bench.entrypoint(api, dict(ME, DEPENDENCY_SERVICE="db"), "react")
        if mode == WATCH:
            wait_until(lambda: api.open_watches >= 1 or not run.running(), 15,
                       "pid %d to open its watch" % run.pid, stop=stop)
            time.sleep(delay)  # steady waiting, not the first moments
        else:
            wait_until(lambda: len(api.requests) >= 2 or not run.running(), 15,
                       "pid %d to review its Role and list" % run.pid, stop=stop)
            time.sleep(delay)  # where in the poll interval the change lands
        if not run.running() or run.report() is not None:
            raise BenchError("pid %d stopped waiting before its service was ready:\n%s"
                             % (run.pid, run.log_tail()))
        verbs = [(r.verb, r.status) for r in api.requests]
        if mode == REFUSED and any(verb == "watch" and status == 200 for verb, status in verbs):
            raise BenchError("watch refused mode, but a watch was answered: %s" % verbs)
        if mode == WATCH and any(status == 403 for _, status in verbs):
            raise BenchError("watch allowed mode, but a request was refused: %s" % verbs)
        t0 = time.time_ns()
        api.put(ready_slice("db"))
        return (run.wait_exec(15, stop) - t0) / NS
    finally:
        if run is not None:
            bench.kill(run)
        bench.stop_server(api)


def figure_2(bench, samples, workers):
    say("figure 2: reaction time, SERVICE turning ready (%d samples per mode)" % samples)
    result = {}
    for mode in MODES:
        # Watch mode reacts in milliseconds: samples one at a time, so nothing else competes for
        # the CPU. Poll mode waits up to 2 s per sample: several at once, each its own server.
        parallel = 1 if mode == WATCH else max(1, workers)
        values, errors = [], []
        lock = threading.Lock()
        stop = threading.Event()
        if mode == WATCH:
            delays = [random.uniform(0.2, 0.5) for _ in range(samples)]
        else:
            # A random moment of the 2 s poll interval for each sample, stratified: one in each
            # of `samples` equal slices of it, in random order. Every phase is as likely as with
            # plain uniform delays, but the percentiles do not swing by ±0.2 s from run to run.
            delays = [(i + random.random()) * POLL_INTERVAL / samples for i in range(samples)]
            random.shuffle(delays)

        def worker():
            while not stop.is_set():
                with lock:
                    if not delays:
                        return
                    delay = delays.pop()
                try:
                    value = reaction_sample(bench, mode, delay, stop)
                except Exception as error:  # reported by the main thread
                    with lock:
                        errors.append(error)
                    stop.set()
                    return
                with lock:
                    values.append(value)

        threads = [threading.Thread(target=worker, daemon=True) for _ in range(parallel)]
        try:
            for thread in threads:
                thread.start()
            deadline = time.monotonic() + 60 + samples * 6
            for thread in threads:
                thread.join(max(0.0, deadline - time.monotonic()))
            if any(thread.is_alive() for thread in threads):
                raise BenchError("figure 2 (%s) did not finish in time" % mode)
        finally:
            stop.set()
        if errors:
            raise errors[0]
        result[mode] = (percentile(values, 50), percentile(values, 95), len(values), max(values))
        say("  %-14s p50 %s  p95 %s  max %s  (n=%d, %d at a time)"
            % (mode, seconds_text(result[mode][0]), seconds_text(result[mode][1]),
               seconds_text(max(values)), len(values), parallel))
    return result


# --------------------------------------------------------------------------------------------
# Figures 3 and 4: requests per minute and peak memory while waiting, one kind per server
# --------------------------------------------------------------------------------------------

def count_steady(apis, runs, settle, window, started):
    """Let `runs` settle until `started + settle`, then count each server's requests for `window` s.

    Returns (start-up request counts, steady counts, measured window seconds); the processes
    must all still be waiting at the end.
    """
    time.sleep(max(0.0, started + settle - time.monotonic()))
    startup = [len(api.requests) for api in apis]
    for api in apis:
        api.clear_requests()
    opened = time.monotonic()
    deadline = opened + window
    while time.monotonic() < deadline:  # bounded: a dead process ends the wait early
        dead = [run for run in runs if not run.running()]
        if dead:
            raise BenchError("pid %d stopped waiting (exit %s):\n%s"
                             % (dead[0].pid, dead[0].process.poll(), dead[0].log_tail()))
        time.sleep(min(0.5, max(0.0, deadline - time.monotonic())))
    steady = [len(api.requests) for api in apis]
    return startup, steady, time.monotonic() - opened


def figure_3_4(bench, settle, window):
    say("figures 3 and 4: one process per kind waiting, each on its own server "
        "(settle %.0f s, count %.0f s)" % (settle, window))
    result = {}
    for mode in MODES:
        apis, runs = [], []
        try:
            for kind in KIND_ORDER:
                variables, setup = UNMET[kind]
                apis.append(bench.server(mode, setup))
            started = time.monotonic()
            for kind, api in zip(KIND_ORDER, apis):
                runs.append(bench.entrypoint(api, UNMET[kind][0], kind.lower()))
            startup, steady, seconds = count_steady(apis, runs, settle, window, started)
            memory = [run.vm_hwm_mb() for run in runs]  # still waiting: before any exec
            refused = [sum(1 for r in api.requests if r.status == 403) for api in apis]
            per_minute = {kind: count * 60.0 / seconds for kind, count in zip(KIND_ORDER, steady)}
            result[mode] = {"per_minute": per_minute,
                            "startup": dict(zip(KIND_ORDER, startup)),
                            "memory": dict(zip(KIND_ORDER, memory)),
                            "window": seconds, "steady_403": sum(refused)}
            say("  %-14s requests/min %s (sum %.0f); start-up requests %s; VmHWM MB %s"
                % (mode, ", ".join("%s %s" % (k, rate_text(per_minute[k])) for k in KIND_ORDER),
                   sum(per_minute.values()), startup,
                   ", ".join("%.1f" % m for m in memory)))
        finally:
            for run in runs:
                bench.kill(run)
            for api in apis:
                bench.stop_server(api)
    return result


# --------------------------------------------------------------------------------------------
# Figure 5: 100 processes waiting at once against one server
# --------------------------------------------------------------------------------------------

def figure_5(bench, processes, batch, settle, window):
    say("figure 5: %d processes waiting on one SERVICE each, one server (batches of %d)"
        % (processes, batch))
    names = ["svc-%03d" % i for i in range(processes)]

    def setup(api):
        for name in names:
            api.put(k8s.service(name))
            api.put(unready_slice(name))

    result = {}
    for mode in MODES:
        api = bench.server(mode, setup)
        runs = []
        try:
            begun = time.monotonic()
            for first in range(0, processes, batch):
                group = names[first:first + batch]
                for name in group:
                    runs.append(bench.entrypoint(api, {"DEPENDENCY_SERVICE": name}, "many"))
                wanted = set(names[:first + len(group)])

                def waiting():
                    # every service so far is watched, or (its Role allowing no watch) listed
                    first_read = "watch" if mode == WATCH else "list"
                    watched = {r.query.get("labelSelector", "").rpartition("=")[2]
                               for r in api.requests if r.verb == first_read}
                    return wanted <= watched or any(not run.running() for run in runs)

                wait_until(waiting, 60, "batch %d-%d to be waiting" % (first, first + len(group)),
                           interval=0.05)
                dead = [run for run in runs if not run.running()]
                if dead:
                    raise BenchError("pid %d exited while starting:\n%s"
                                     % (dead[0].pid, dead[0].log_tail()))
            startup_seconds = time.monotonic() - begun
            startup_requests = len(api.requests)
            watches = api.open_watches
            _, steady, seconds = count_steady([api], runs, settle, window, time.monotonic())
            memory = [run.vm_hwm_mb() for run in runs]
            per_minute = steady[0] * 60.0 / seconds
            result[mode] = {"per_minute": per_minute, "startup_seconds": startup_seconds,
                            "startup_requests": startup_requests, "watches": watches,
                            "memory_median": statistics.median(memory), "window": seconds}
            say("  %-14s %.0f requests/min over %.0f s; start-up %.1f s (%d requests, "
                "%d watches open); VmHWM median %.1f MB"
                % (mode, per_minute, seconds, startup_seconds, startup_requests, watches,
                   statistics.median(memory)))
        finally:
            for run in runs:
                bench.kill(run)
            bench.stop_server(api)
    return result


# --------------------------------------------------------------------------------------------
# Report
# --------------------------------------------------------------------------------------------

def report(results, options, elapsed):
    lines = ["| figure | %s | %s | target |" % MODES, "|---|---|---|---|"]
    f1, f2, f3, f5 = (results.get(n) for n in ("1", "2", "3", "5"))

    def row(title, cells, target):
        lines.append("| %s | %s | %s | %s |" % (title, cells[0], cells[1], target))

    if f1:
        row("1. start to exec, SERVICE+JOBS+POD_JSON+DAEMONSET met (median of %d)" % options.runs,
            ["%s %s" % (seconds_text(f1[m]), mark(f1[m] <= 0.150)) for m in MODES],
            "≤150 ms both")
    if f2:
        limits = {WATCH: (0.100, 0.300), REFUSED: (1.2, 2.5)}
        row("2. SERVICE ready → exec, p50 / p95 (n=%d)" % f2[WATCH][2],
            ["%s / %s %s" % (seconds_text(f2[m][0]), seconds_text(f2[m][1]),
                             mark(f2[m][0] <= limits[m][0] and f2[m][1] <= limits[m][1]))
             for m in MODES],
            "≤100 ms / ≤300 ms (watch); ≤1.2 s / ≤2.5 s (refused)")
    if f3:
        cells = []
        for mode in MODES:
            rates = f3[mode]["per_minute"]
            total, worst = sum(rates.values()), max(rates.values())
            ok = worst <= 2 if mode == WATCH else total <= 180
            cells.append("%s/min summed (max %s per dependency) %s"
                         % (rate_text(total), rate_text(worst), mark(ok)))
        row("3. requests/min while waiting, one unmet dependency of each of 6 kinds "
            "(%.0f s window)" % f3[WATCH]["window"], cells,
            "≤2 per dependency (watch); summed ≤180 (refused; original 330)")
        cells = []
        for mode in MODES:
            memory = list(f3[mode]["memory"].values())
            cells.append("%.1f / %.1f MB %s" % (max(memory), statistics.median(memory),
                                                mark(max(memory) <= 30)))
        row("4. peak RSS (VmHWM) while waiting, max / median of the 6 processes of 3", cells,
            "≤30 MB")
    if f5:
        limits = {WATCH: 200, REFUSED: 3000}
        row("5. requests/min, %d processes waiting on one SERVICE each (%.0f s window)"
            % (options.procs, f5[WATCH]["window"]),
            ["%s/min (start-up of all: %.1f s) %s" % (rate_text(f5[m]["per_minute"]),
                                                     f5[m]["startup_seconds"],
                                                     mark(f5[m]["per_minute"] <= limits[m]))
             for m in MODES],
            "≤200/min (watch); ≤3000 (refused; original 6000)")
    if f3:
        lines += ["", "Figure 3 per kind, requests per minute while waiting (start-up: requests "
                      "in the first %.0f s after spawn, not counted above):" % options.settle, "",
                  "| kind | %s | %s | original | start-up requests (allowed / refused) |" % MODES,
                  "|---|---|---|---|---|"]
        for kind in KIND_ORDER:
            lines.append("| %s | %s | %s | %d | %d / %d |" % (
                kind, rate_text(f3[WATCH]["per_minute"][kind]),
                rate_text(f3[REFUSED]["per_minute"][kind]), ORIGINAL_PER_ROUND[kind] * 30,
                f3[WATCH]["startup"][kind], f3[REFUSED]["startup"][kind]))
        lines.append("| sum | %s | %s | %d | %d / %d |" % (
            rate_text(sum(f3[WATCH]["per_minute"].values())),
            rate_text(sum(f3[REFUSED]["per_minute"].values())),
            sum(ORIGINAL_PER_ROUND.values()) * 30,
            sum(f3[WATCH]["startup"].values()), sum(f3[REFUSED]["startup"].values())))
    if f1:
        lines += ["", "Figure 1 floor: spawn to exec of the same reporter command by simpler "
                      "programs (median of %d; requests per entrypoint run: %s):"
                  % (options.runs, ", ".join("%s %g" % (m, f1["requests"][m]) for m in MODES)),
                  "", "| program | median | min – max |", "|---|---|---|"]
        for name in f1["floors"] + list(MODES):
            label = "entrypoint, figure 1 (%s)" % name if name in MODES else name
            low, high = f1["spread"][name]
            lines.append("| %s | %s | %s – %s |" % (label, seconds_text(f1[name]),
                                                    seconds_text(low), seconds_text(high)))
    if f5:
        lines += ["", "Figure 5 detail: " + "; ".join(
            "%s: %d requests and %d open watches at the end of start-up, VmHWM median %.1f MB"
            % (m, f5[m]["startup_requests"], f5[m]["watches"], f5[m]["memory_median"])
            for m in MODES) + "."]
    import ssl
    entrypoint_python = subprocess.run(
        [options.python, "-I", "-S", "-c", "import platform; print(platform.python_version())"],
        stdout=subprocess.PIPE, universal_newlines=True, timeout=30).stdout.strip()
    lines += ["", "Machine: Python %s (the entrypoint's: %s), %s, nproc %d, %s %s; benchmark "
              "took %.0f s."
              % (platform.python_version(), entrypoint_python, ssl.OPENSSL_VERSION,
                 os.cpu_count() or 0, platform.system(), platform.machine(), elapsed)]
    return "\n".join(lines)


# --------------------------------------------------------------------------------------------
# main
# --------------------------------------------------------------------------------------------

def parse_args(argv):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true",
                        help="smoke test: fewer runs and shorter windows (under 2 minutes)")
    parser.add_argument("--runs", type=int, help="figure 1 runs per mode (default 15; quick 5)")
    parser.add_argument("--samples", type=int,
                        help="figure 2 samples per mode (default 20; quick 8)")
    parser.add_argument("--workers", type=int, default=4,
                        help="figure 2, watch refused: samples taken at once (default 4)")
    parser.add_argument("--settle", type=float, default=3.0,
                        help="figures 3 and 5: seconds after start before counting (default 3)")
    parser.add_argument("--window", type=float,
                        help="figures 3 and 5: seconds of steady state counted "
                             "(default 30; quick 10)")
    parser.add_argument("--procs", type=int, help="figure 5: processes (default 100)")
    parser.add_argument("--batch", type=int, default=10,
                        help="figure 5: processes started at once (default 10)")
    parser.add_argument("--figures", default="1,2,3,5",
                        help="which figures to run, e.g. 1,3 (4 comes with 3; default all)")
    parser.add_argument("--python", default=sys.executable,
                        help="interpreter that runs the entrypoint (default: this one)")
    parser.add_argument("--keep", action="store_true", help="keep the temporary directory")
    options = parser.parse_args(argv)
    defaults = {"runs": (15, 5), "samples": (20, 8), "window": (30.0, 10.0), "procs": (100, 100)}
    for name, (full, quick) in defaults.items():
        if getattr(options, name) is None:
            setattr(options, name, quick if options.quick else full)
    options.figures = {f.strip() for f in options.figures.split(",") if f.strip()}
    if "4" in options.figures:
        options.figures.add("3")
    unknown = options.figures - {"1", "2", "3", "5"}
    if unknown:
        parser.error("unknown figure(s): %s" % ", ".join(sorted(unknown)))
    if min(options.runs, options.samples, options.procs, options.batch, options.workers) < 1 \
            or options.window < 1 or options.settle < 0:
        parser.error("counts must be at least 1, --window at least 1 s")
    return options


def on_sigterm(signum, frame):
    raise KeyboardInterrupt


def main(argv=None):
    options = parse_args(sys.argv[1:] if argv is None else argv)
    signal.signal(signal.SIGTERM, on_sigterm)
    # Also when started in the background, where SIGINT arrives ignored: Ctrl-C or kill -INT
    # must still end the run through the cleanup below.
    signal.signal(signal.SIGINT, signal.default_int_handler)
    say("entrypoint %s, python %s" % (SCRIPT, options.python))
    bench = Bench(options.python)
    results = {}
    failed = False
    try:
        if "1" in options.figures:
            results["1"] = figure_1(bench, options.runs)
        if "2" in options.figures:
            results["2"] = figure_2(bench, options.samples, options.workers)
        if "3" in options.figures:
            results["3"] = figure_3_4(bench, options.settle, options.window)
        if "5" in options.figures:
            results["5"] = figure_5(bench, options.procs, options.batch, options.settle,
                                    options.window)
    except KeyboardInterrupt:
        say("interrupted: stopping every process and server")
        failed = 130
    except BenchError as error:
        say("error: %s" % error)
        failed = 1
    finally:
        bench.close(keep=options.keep)
    if results:
        print(report(results, options, time.monotonic() - STARTED))
        sys.stdout.flush()
    return failed or 0


if __name__ == "__main__":
    sys.exit(main())
