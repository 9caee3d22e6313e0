#!/usr/bin/env python3
"""Reads per poll round for the init containers that openstack-helm's charts render.

    python3 bench/reads_per_round.py [--cases FILE]

FILE holds init containers as the charts render them (their env, the pod's downward-API
variables, the Role); by default openstack-helm-init-containers.json beside this checkout, if
there is one. Each case waits, as in a pod whose Role has get and list only (so it polls), on a
fake API server (tests/fakeapi.py) where every dependency exists and is not met yet: a Service's
EndpointSlice has one endpoint not ready, a Job is active, a pod is not ready. After the first
check of every dependency, one poll round is made and its requests counted: with reads merged
per namespace (as the entrypoint does) and without (each read on its own). Markdown on stdout.
"""

import argparse
import json
import os
import sys
import tempfile
from pathlib import Path

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
sys.path[:0] = [ROOT, os.path.join(ROOT, "tests")]

import fakeapi as k8s  # noqa: E402  (tests/ is on the path now)
import kubernetes_entrypoint as ke  # noqa: E402


def populate(api, deps, pod_name, namespace):
    """Every object the dependencies read, there but not met."""
    api.put(k8s.pod(pod_name, namespace, node="node-a"))
    for dep in deps:
        variable = dep.kind.variable
        if variable == "DEPENDENCY_SERVICE":
            api.put(k8s.endpoint_slice(dep.name, dep.namespace, addresses=(("10.0.0.1", False),)))
        elif variable in ("DEPENDENCY_JOBS", "DEPENDENCY_JOBS_JSON") and dep.name:
            api.put(k8s.job(dep.name, dep.namespace, active=1))
        elif variable == "DEPENDENCY_POD_JSON":
            labels = {key: values[0] for key, _, values in dep.selector}
            api.put(k8s.pod("waited-for", dep.namespace, labels=labels, node="node-a"))


def one_round(case, merge):
    """Requests of one poll round after the first check of every dependency."""
    namespace = case["workload"]["namespace"]
    pod_name = case["workload"]["name"] + "-0"
    with tempfile.TemporaryDirectory() as work, k8s.FakeKubeAPI(Path(work)) as api:
        for verb in ("watch",):
            for resource in ("endpointslices", "endpoints", "jobs", "pods", "daemonsets"):
                api.deny(verb, resource)
        (api.sa_dir / "namespace").write_text(namespace)
        env = {name: value for name, value in case["env"].items() if name.startswith("DEPENDENCY")}
        env.update(api.env(), POD_NAME=pod_name, NAMESPACE=namespace)
        settings = ke.read_settings(env)
        deps = ke.parse_dependencies(env, settings)
        populate(api, deps, pod_name, namespace)
        reader = ke.ApiReader(ke.ApiClient(api.url, str(api.sa_dir)), watch=False)
        if merge:
            reader.merge([dep.kind.merge(dep) for dep in deps if dep.kind.merge])
        waiting = ke.Waiting(deps, reader)
        for entry in list(waiting.pending):
            waiting._check(entry)
        if not waiting.pending:
            raise SystemExit("%s: every dependency is met; the fake cluster is wrong" % case["chart"])
        in_use = set().union(*(entry.reads for entry in waiting.pending))
        reader.follow(in_use)
        api.clear_requests()
        reader.poll(in_use)
        return len(api.requests)


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--cases", default=os.path.join(os.path.dirname(ROOT), "shared",
                                                        "openstack-helm-init-containers.json"))
    options = parser.parse_args()
    if not os.path.exists(options.cases):
        sys.stderr.write("no cases file %s: nothing measured\n" % options.cases)
        return 0
    with open(options.cases) as f:
        cases = json.load(f)["cases"]
    ke.LOG.threshold = ke.LEVELS.index("ERROR")
    rows = [(case["chart"], case["workload"]["name"], one_round(case, False),
             one_round(case, True)) for case in cases]
    print("| chart | workload | reads per round, each on its own | merged per namespace |")
    print("|---|---|---|---|")
    for row in rows:
        print("| %s | %s | %d | %d |" % row)
    print("| **average** (%d cases) | | %.2f | %.2f |" % (
        len(rows), sum(r[2] for r in rows) / len(rows), sum(r[3] for r in rows) / len(rows)))
    return 0


if __name__ == "__main__":
    sys.exit(main())
