#!/usr/bin/env python3
"""Start-up figures inside the image, beside the same figures on this machine.

    python3 bench/image.py [--image kubernetes-entrypoint] [--runs 15]

Builds nothing: the image must exist (`podman build -t kubernetes-entrypoint .`). Two fake API
servers (tests/fakeapi.py, HTTPS on 127.0.0.1) hold figure 1's objects, one of them refusing
watch. bench/exec_timer.py then times spawn to exec of each case, once here with
`python -I -S kubernetes_entrypoint.py` and once in the image (`podman run --network host`,
the service-account files mounted, /usr/local/bin/kubernetes-entrypoint as users run it):

- python -I -S -c pass, then exec: the floor, what any Python program costs;
- python -I -S importing ssl, http.client and json, then exec: the TLS stack;
- SOCKET met: one dependency that needs no API;
- figure 1: SERVICE + JOBS + POD_JSON + DAEMONSET, all met, over TLS, watch allowed / refused.

Prints a Markdown table of medians (and min - max). Every server is stopped on the way out.
"""

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)

import run as bench  # noqa: E402  (bench/run.py: figure 1's objects and the fake API server)

IMAGE_SERVICEACCOUNTS = "/serviceaccounts"


def cases(apis, serviceaccount_root):
    """The timed cases; `serviceaccount_root` is where each server's files are, by mode."""
    result = {
        "python -I -S -c pass, then exec": {"python_code": "pass"},
        "python -I -S: import ssl, http.client, json, then exec":
            {"python_code": "import ssl, http.client, json"},
        "entrypoint, SOCKET met": {"env": {"DEPENDENCY_SOCKET": "/usr/bin"}},
    }
    for mode, api in apis.items():
        result["entrypoint, figure 1 (%s)" % mode] = {"env": dict(
            bench.ALL_MET_ENV, KUBERNETES_SERVICE_HOST=api.host,
            KUBERNETES_SERVICE_PORT=str(api.port),
            ENTRYPOINT_SERVICEACCOUNT_DIR="%s/%s" % (serviceaccount_root, mode.replace(" ", "-")))}
    return result


def time_cases(config, command):
    output = subprocess.run(command, input=None, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            universal_newlines=True, timeout=1800)
    if output.returncode != 0:
        raise SystemExit("bench: %s failed:\n%s" % (" ".join(command[:4]), output.stderr[-2000:]))
    return json.loads(output.stdout)


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--image", default="kubernetes-entrypoint")
    parser.add_argument("--runs", type=int, default=15)
    parser.add_argument("--python", default=sys.executable, help="the interpreter on this machine")
    options = parser.parse_args()
    if subprocess.run(["podman", "image", "exists", options.image]).returncode != 0:
        raise SystemExit("bench: no image %s; build it: podman build -t %s ."
                         % (options.image, options.image))
    workdir = tempfile.mkdtemp(prefix="entrypoint-image-bench-")
    apis = {}
    try:
        host_accounts = os.path.join(workdir, "serviceaccounts")
        for mode in bench.MODES:
            api = apis[mode] = bench.k8s.FakeKubeAPI(os.path.join(workdir, mode.replace(" ", "-")))
            api.bookmark_interval = 60.0
            bench.setup_all_met(api)
            if mode == bench.REFUSED:
                for resource in bench.DENIED_RESOURCES:
                    api.deny("watch", resource)
            api.start()
            shutil.copytree(str(api.sa_dir), os.path.join(host_accounts, mode.replace(" ", "-")))
        for directory, _, files in os.walk(workdir):  # the image runs as uid 65534
            os.chmod(directory, 0o755)
            for name in files:
                os.chmod(os.path.join(directory, name), 0o644)
        results = {}
        for where, accounts, python, entrypoint in (
                ("this machine", host_accounts, options.python,
                 [options.python, "-I", "-S", bench.SCRIPT]),
                ("image", IMAGE_SERVICEACCOUNTS, "/usr/bin/python3",
                 ["/usr/local/bin/kubernetes-entrypoint"])):
            config_path = os.path.join(workdir, "config-%s.json" % where.replace(" ", "-"))
            with open(config_path, "w") as f:
                json.dump({"runs": options.runs, "python": python, "entrypoint": entrypoint,
                           "cases": cases(apis, accounts)}, f)
            os.chmod(config_path, 0o644)
            timer = os.path.join(HERE, "exec_timer.py")
            if where == "image":
                command = ["podman", "run", "--rm", "--network", "host",
                           "-v", "%s:/bench:ro" % HERE, "-v", "%s:/config.json:ro" % config_path,
                           "-v", "%s:%s:ro" % (host_accounts, IMAGE_SERVICEACCOUNTS),
                           "--entrypoint", "/usr/bin/python3", options.image,
                           "-I", "-S", "/bench/exec_timer.py", "/config.json"]
            else:
                command = [options.python, "-I", "-S", timer, config_path]
            bench.say("timing %d runs of each case on %s" % (options.runs, where))
            results[where] = time_cases(config_path, command)
    finally:
        for api in apis.values():
            api.stop()
        shutil.rmtree(workdir, ignore_errors=True)
    print(table(results, options))


def table(results, options):
    def cell(values):
        return "%s (%s – %s)" % tuple(bench.seconds_text(v) for v in (
            statistics.median(values), min(values), max(values)))

    size = subprocess.run(["podman", "image", "inspect", "-f", "{{.Size}}", options.image],
                          stdout=subprocess.PIPE, universal_newlines=True).stdout.strip()
    versions = {where: subprocess.run(command, stdout=subprocess.PIPE,
                                      universal_newlines=True).stdout.strip()
                for where, command in (
                    ("this machine", [options.python, "-c", "import sys; print(sys.version.split()[0])"]),
                    ("image", ["podman", "run", "--rm", "--entrypoint", "/usr/bin/python3",
                               options.image, "-c", "import sys; print(sys.version.split()[0])"]))}
    lines = ["| spawn to exec, median (min – max) of %d | this machine (Python %s) | image (Python %s) |"
             % (options.runs, versions["this machine"], versions["image"]), "|---|---|---|"]
    for name in results["image"]:
        lines.append("| %s | %s | %s |" % (name, cell(results["this machine"][name]),
                                           cell(results["image"][name])))
    lines.append("")
    lines.append("Image %s: %.1f MB." % (options.image, int(size) / 1e6 if size.isdigit() else 0))
    return "\n".join(lines)


if __name__ == "__main__":
    main()
