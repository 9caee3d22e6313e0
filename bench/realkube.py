#!/usr/bin/env python3
"""What N waiting processes cost a real kube-apiserver and its etcd.

    python3 bench/realkube.py --kit DIR [--processes 60] [--window 60] [--baseline REV]

DIR is a kube-apiserver v1.28 + etcd kit on loopback (start.sh, stop.sh, admin.kubeconfig,
pki/ca.crt, run/token-getlist, run/token-watcher, run/audit.log; see bench/README.md). It is
started here if it is not running, and stopped again at the end if it was started here. Without
a kit the benchmark says so and exits 0: it is not part of CI.

For each service account (getlist: helm-toolkit's get/list Role; watcher: get/list/watch), and
for this checkout's kubernetes_entrypoint.py and the one of git revision REV (the version before
reads from the watch cache), N processes each wait on a Service of their own whose one endpoint
never gets ready. After they settle, for `window` seconds: requests per minute from the audit log (by
user), and CPU seconds per minute of kube-apiserver and etcd from /proc. Markdown on stdout.
"""

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
SCRIPT = os.path.join(ROOT, "kubernetes_entrypoint.py")
ACCOUNTS = ("getlist", "watcher")
NAMESPACE = "default"


def say(text):
    sys.stderr.write(text + "\n")
    sys.stderr.flush()


def kubectl(kit, *arguments, stdin=None):
    return subprocess.run(["kubectl", "--kubeconfig", os.path.join(kit, "admin.kubeconfig")]
                          + list(arguments), input=stdin, stdout=subprocess.PIPE,
                          stderr=subprocess.PIPE, universal_newlines=True, timeout=120, check=True)


def running(kit):
    for name in ("kube-apiserver", "etcd"):
        try:
            with open(os.path.join(kit, "run", name + ".pid")) as f:
                os.kill(int(f.read()), 0)
        except (OSError, ValueError):
            return False
    return True


def cpu_seconds(kit, name):
    with open(os.path.join(kit, "run", name + ".pid")) as f:
        pid = int(f.read())
    with open("/proc/%d/stat" % pid) as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def audit_requests(kit, account, since, until):
    """Requests the account made between two wall-clock times (RequestReceived stage)."""
    user = "system:serviceaccount:%s:%s" % (NAMESPACE, account)
    count = 0
    with open(os.path.join(kit, "run", "audit.log")) as f:
        for line in f:
            if user not in line:
                continue
            event = json.loads(line)
            stamp = event.get("requestReceivedTimestamp", "")
            if event.get("user", {}).get("username") == user and since <= stamp < until:
                count += 1
    return count


def utc(seconds):
    return time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(seconds)) + ".%06dZ" % (seconds % 1 * 1e6)


def service_account_dir(kit, account, where):
    path = os.path.join(where, "sa-" + account)
    os.makedirs(path, exist_ok=True)
    shutil.copy(os.path.join(kit, "run", "token-" + account), os.path.join(path, "token"))
    shutil.copy(os.path.join(kit, "pki", "ca.crt"), os.path.join(path, "ca.crt"))
    with open(os.path.join(path, "namespace"), "w") as f:
        f.write(NAMESPACE)
    return path


def measure_idle(kit, options):
    """CPU seconds per minute of the servers with nobody waiting: what the others include."""
    start = time.monotonic()
    cpu = {name: cpu_seconds(kit, name) for name in ("kube-apiserver", "etcd")}
    time.sleep(options.window)
    minutes = (time.monotonic() - start) / 60
    return 0.0, ((cpu_seconds(kit, "kube-apiserver") - cpu["kube-apiserver"]) / minutes), \
        (cpu_seconds(kit, "etcd") - cpu["etcd"]) / minutes


def measure(kit, options, script, account, sa_dir):
    env = {"KUBERNETES_SERVICE_HOST": "127.0.0.1", "KUBERNETES_SERVICE_PORT": options.port,
           "ENTRYPOINT_SERVICEACCOUNT_DIR": sa_dir, "PATH": os.defpath,
           "ENTRYPOINT_TERMINATION_LOG": "", "COMMAND": "true"}
    processes = []
    try:
        for i in range(options.processes):
            processes.append(subprocess.Popen(
                [options.python, "-I", "-S", script], env=dict(env, DEPENDENCY_SERVICE="wait-%d" % i),
                stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL))
        time.sleep(options.settle)
        start_wall, start = time.time(), time.monotonic()
        cpu = {name: cpu_seconds(kit, name) for name in ("kube-apiserver", "etcd")}
        time.sleep(options.window)
        minutes = (time.monotonic() - start) / 60
        cpu = {name: (cpu_seconds(kit, name) - cpu[name]) / minutes for name in cpu}
        dead = [p for p in processes if p.poll() is not None]
        if dead:
            raise SystemExit("%d processes stopped waiting" % len(dead))
        requests = audit_requests(kit, account, utc(start_wall), utc(time.time())) / minutes
        return requests, cpu["kube-apiserver"], cpu["etcd"]
    finally:
        for p in processes:
            p.kill()
        for p in processes:
            p.wait()


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--kit", default=os.environ.get("REALKUBE_KIT", ""))
    parser.add_argument("--processes", type=int, default=60)
    parser.add_argument("--window", type=float, default=60.0)
    parser.add_argument("--settle", type=float, default=15.0)
    parser.add_argument("--baseline", default="6e29c49",
                        help="git revision to compare with (default: before watch-cache reads)")
    parser.add_argument("--python", default=sys.executable)
    parser.add_argument("--port", default="6443")
    options = parser.parse_args()
    kit = options.kit
    if not kit or not os.path.exists(os.path.join(kit, "start.sh")):
        say("no kube-apiserver kit (give --kit or REALKUBE_KIT): nothing measured")
        return 0
    started = False
    if not running(kit):
        subprocess.run([os.path.join(kit, "start.sh")], check=True, stdout=subprocess.DEVNULL)
        started = True
    where = tempfile.mkdtemp(prefix="realkube-bench-")
    try:
        baseline = os.path.join(where, "baseline.py")
        with open(baseline, "w") as f:
            f.write(subprocess.run(["git", "-C", ROOT, "show", options.baseline
                                    + ":kubernetes_entrypoint.py"], stdout=subprocess.PIPE,
                                   universal_newlines=True, check=True).stdout)
        # Each Service has an EndpointSlice whose one endpoint is not ready, as a Service whose
        # pods are starting (the kit runs no controller-manager to make them).
        kubectl(kit, "apply", "-f", "-", stdin="\n".join(json.dumps(obj) for i in range(
            options.processes) for obj in (
            {"apiVersion": "v1", "kind": "Service", "metadata": {"name": "wait-%d" % i,
                                                                 "namespace": NAMESPACE},
             "spec": {"ports": [{"port": 80}], "selector": {"never": "matches"}}},
            {"apiVersion": "discovery.k8s.io/v1", "kind": "EndpointSlice",
             "metadata": {"name": "wait-%d-1" % i, "namespace": NAMESPACE,
                          "labels": {"kubernetes.io/service-name": "wait-%d" % i}},
             "addressType": "IPv4", "ports": [{"port": 80}],
             "endpoints": [{"addresses": ["10.0.0.%d" % (i % 250 + 1)],
                            "conditions": {"ready": False}}]})))
        say("nobody waiting: measure %gs" % options.window)
        rows = [("-", "nobody waiting") + measure_idle(kit, options)]
        for account in ACCOUNTS:
            sa_dir = service_account_dir(kit, account, where)
            for label, script in (("before (%s)" % options.baseline, baseline), ("now", SCRIPT)):
                say("%d processes, %s, %s: settle %gs, measure %gs"
                    % (options.processes, account, label, options.settle, options.window))
                requests, apiserver, etcd = measure(kit, options, script, account, sa_dir)
                say("  %.0f requests/min, kube-apiserver %.2f CPU s/min, etcd %.2f CPU s/min"
                    % (requests, apiserver, etcd))
                rows.append((account, label, requests, apiserver, etcd))
        print("| account | entrypoint | requests/min | kube-apiserver CPU s/min | etcd CPU s/min |")
        print("|---|---|---|---|---|")
        for account, label, requests, apiserver, etcd in rows:
            print("| %s | %s | %.0f | %.2f | %.2f |" % (account, label, requests, apiserver, etcd))
        print("\n%d processes, each waiting on its own Service; %gs window after %gs to settle."
              % (options.processes, options.window, options.settle))
    finally:
        shutil.rmtree(where, ignore_errors=True)
        if started:
            subprocess.run([os.path.join(kit, "stop.sh")], stdout=subprocess.DEVNULL)
    return 0


if __name__ == "__main__":
    sys.exit(main())
