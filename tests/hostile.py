"""A hostile API server, for the tests of reads, of the API client and of logging: raw answers
to inject (api.inject(raw=bytes or raw(wfile, stopping))), and the entrypoint waiting for a Job
while the fault lasts. Once the fault ends and the Job succeeds the command must run, with no
traceback on the way."""

import json
import time

import fakeapi as k8s
from scenarios import wait_until_waiting


FAST = {"ENTRYPOINT_POLL_INTERVAL": "0.1"}  # retries back off from here: recovery stays quick


# Raw answers ----------------------------------------------------------------------------------

def http(status, body=b"", length=None, headers=()):
    """An HTTP/1.1 answer as bytes; `length` declares a Content-Length other than the body's."""
    lines = ["HTTP/1.1 " + status, "Content-Type: application/json",
             "Content-Length: %d" % (len(body) if length is None else length)]
    lines += ["%s: %s" % header for header in headers]
    return ("\r\n".join(lines) + "\r\n\r\n").encode() + body


CHUNKED_200 = b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nTransfer-Encoding: chunked\r\n\r\n"


def chunk(data):
    return b"%x\r\n%s\r\n" % (len(data), data)


def stream(*events):
    """A whole watch stream: one JSON line per chunk, then the terminating chunk."""
    return CHUNKED_200 + b"".join(chunk(json.dumps(e).encode() + b"\n") for e in events) + b"0\r\n\r\n"


def chunked_stream(*events, hold=None):
    """A raw watch answer: each event as a chunk, then (after `hold` seconds, or once the server
    stops) the end of the stream."""
    def answer(wfile, stopping):
        wfile.write(CHUNKED_200 + b"".join(chunk(json.dumps(e).encode() + b"\n") for e in events))
        wfile.flush()
        if hold:
            stopping.wait(hold)
        wfile.write(b"0\r\n\r\n")
    return answer


def list_body(kind, *objects):
    """A well-formed list answer holding exactly `objects`, whatever was asked; as of the newest
    of their versions (a list is never older than what it holds)."""
    version = max([int(o.get("metadata", {}).get("resourceVersion", 1)) for o in objects
                   if isinstance(o, dict) and str(o.get("metadata", {}).get("resourceVersion", 1))
                   .isdigit()] + [1])
    return {"kind": kind, "apiVersion": objects[0]["apiVersion"],
            "metadata": {"resourceVersion": str(version)}, "items": list(objects)}


def as_json(document):
    return json.dumps(document).encode()


# The entrypoint under attack ------------------------------------------------------------------

def wait_for_job(api, entrypoint, watch=True, **env):
    """DEPENDENCY_JOBS=j, job j active (not met): the run, once it is waiting."""
    api.put(k8s.job("j", active=1))
    if not watch:
        api.deny("watch", "jobs")
    run = entrypoint(dict(api.env(), DEPENDENCY_JOBS="j", **dict(FAST, **env)))
    wait_until_waiting(api)
    return run


def job_succeeds(api):
    api.put(k8s.job("j", succeeded=1))


def gone(run):
    """How the process ended, with its output, for a failure message."""
    code = run.finish()
    return "%s (exit %s):\n%s\n%s" % ("ran the command" if run.report() else "ended", code,
                                      run.stdout, run.stderr)


def assert_waits(run, seconds):
    """For `seconds` the process neither ends nor runs the command."""
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        if not run.running() or run.report() is not None:
            raise AssertionError("should wait, but " + gone(run))
        time.sleep(0.05)


def assert_execd_cleanly(run):
    run.assert_execd()
    assert "Traceback" not in run.stdout + run.stderr, run.stderr


def assert_waits_out_the_fault(api, run, rule, met, seconds=1, served=1):
    """While the fault lasts (and was served at least `served` times) the process waits, neither
    ending nor running the command; once it is gone and `met(api)`, the command runs."""
    assert_waits(run, seconds)
    assert rule.served >= served
    api.clear_faults()
    met(api)
    assert_execd_cleanly(run)
