"""Spawn-to-exec timer that needs nothing but Python, so it also runs inside the distroless image.

    python3 exec_timer.py CONFIG.json

CONFIG: {"runs": N, "python": "/usr/bin/python3", "entrypoint": [argv...],
         "cases": {"name": {"env": {...}} or {"python_code": "..."}}}

Each case is spawned `runs` times, interleaved with the others (one warm-up round first). The
command every case execs is a copy of the interpreter under another name (/tmp/...-sentinel,
run as `sentinel -c pass`): the moment /proc/<pid>/exe turns into it is the moment of exec, found
by polling from here. "python_code" cases are the floor: `python -I -S -c CODE` and then an exec of
the sentinel, as the entrypoint ends. Prints {"case": [seconds, ...]} as JSON.
"""

import json
import os
import shutil
import subprocess
import sys
import tempfile
import time


def spawn_to_exec(argv, env, sentinel, limit=20.0):
    started = time.perf_counter()
    process = subprocess.Popen(argv, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    exe = "/proc/%d/exe" % process.pid
    try:
        while time.perf_counter() - started < limit:
            try:
                if os.readlink(exe) == sentinel:
                    return time.perf_counter() - started
            except OSError:
                pass  # not readable yet, or gone
            if process.poll() is not None:
                raise RuntimeError("%s exited %s before exec: %s" % (
                    argv[-1], process.returncode, process.stderr.read().decode()[-500:]))
        raise RuntimeError("%s did not exec within %gs" % (argv, limit))
    finally:
        process.kill()
        process.wait()
        process.stderr.close()


def main(config_path):
    with open(config_path) as f:
        config = json.load(f)
    directory = tempfile.mkdtemp(prefix="exec-timer-")
    sentinel = os.path.join(directory, "exec-timer-sentinel")
    shutil.copy(os.path.realpath(config["python"]), sentinel)
    commands = {}
    for name, case in config["cases"].items():
        if "python_code" in case:
            program = "%s\nimport os\nos.execv(%r, [%r, '-c', 'pass'])" % (
                case["python_code"], sentinel, sentinel)
            commands[name] = ([config["python"], "-I", "-S", "-c", program], {"PATH": "/usr/bin"})
        else:
            env = dict(case["env"], PATH="/usr/bin", COMMAND="%s -c pass" % sentinel)
            commands[name] = (config["entrypoint"], env)
    samples = {name: [] for name in commands}
    try:
        for round_number in range(config["runs"] + 1):
            for name, (argv, env) in commands.items():
                seconds = spawn_to_exec(argv, env, sentinel)
                if round_number:  # the first round warms the page cache
                    samples[name].append(seconds)
    finally:
        shutil.rmtree(directory, ignore_errors=True)
    json.dump(samples, sys.stdout)


if __name__ == "__main__":
    main(sys.argv[1])
