"""Issue 7: an API server (or a proxy in front of it) that answers wrongly, slowly, endlessly or
not at all must never crash the process, run the command early, print the token, hang it, or make
it spin. Each test names its item of the issue; in each the fault then ends and the dependency gets
met, and the command must then run (no traceback on the way).

The hostile answers are the fake's raw faults: api.inject(raw=bytes or raw(wfile, stopping))."""

import itertools
import json
import re
import threading
import time
from urllib.parse import urlencode

import pytest

import fakeapi as k8s
import kubernetes_entrypoint as ke
from conftest import wait_for
from test_fakeapi import fetch, fetch_json
from test_process import SCENARIOS, service_met, this_pod, wait_until_waiting

READY = {"conditions": [{"type": "Ready", "status": "True"}]}
MIB = 1 << 20
FAST = {"ENTRYPOINT_POLL_INTERVAL": "0.1"}  # retries back off from here: recovery stays quick


# Raw answers ------------------------------------------------------------------------------

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


def list_body(kind, *objects):
    """A well-formed list answer holding exactly `objects`, whatever was asked."""
    return {"kind": kind, "apiVersion": objects[0]["apiVersion"], "metadata": {"resourceVersion": "1"},
            "items": list(objects)}


def as_json(document):
    return json.dumps(document).encode()


class Flood:
    """A raw answer: `head`, then `piece` `count` times as fast as the client reads, then `tail`.
    `done` is set once it stops, having sent everything or found the client gone."""

    def __init__(self, head, piece, count, tail=b""):
        self.head, self.piece, self.count, self.tail = head, piece, count, tail
        self.done = threading.Event()

    def __call__(self, wfile, stopping):
        try:
            wfile.write(self.head)
            for _ in range(self.count):
                if stopping.is_set():
                    return
                wfile.write(self.piece)
            wfile.write(self.tail)
        finally:
            self.done.set()


def trickle(head, then):
    """A raw answer: the bytes of `head`, then `then` forever, one byte every half second."""
    def answer(wfile, stopping):
        for byte in itertools.chain(head, itertools.repeat(then[0])):
            wfile.write(bytes([byte]))
            if stopping.wait(0.5):
                return
    return answer


# The entrypoint under attack --------------------------------------------------------------

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


def job_requests(api):
    return [r for r in api.requests if r.resource == "jobs"]


# The fake's hostile side itself -----------------------------------------------------------

@pytest.mark.parametrize("selector, expected", [
    (r"metadata.name=a\,b", ["a,b"]),
    (r"metadata.name=a\=b", ["a=b"]),
    (r"metadata.name=a\\b", ["a\\b"]),
    (r"metadata.name!=a\,b,metadata.name!=c", ["a", "a=b", "a\\b"]),
    (r"metadata.name=a,b", 400),       # an unescaped comma ends the requirement: "b" is none
    (r"metadata.name=a=b", 400),       # an unescaped "=" in a value
    (r"metadata.name=a\b", 400),       # an escape that means nothing
    ("metadata.name=a\\", 400),        # a lone trailing backslash
])
def test_fake_field_selector_escapes(api, selector, expected):
    """Any string can name a custom resource: fieldSelector values escape `\\` `,` `=`."""
    api.register_resource("example.com/v1", "widgets", "Widget")
    for name in ("a", "a,b", "a=b", "a\\b", "c"):
        api.put(k8s.custom("example.com/v1", "Widget", name, "default"))
    status, body = fetch_json(api, "/apis/example.com/v1/namespaces/default/widgets?"
                              + urlencode({"fieldSelector": selector}))
    if expected == 400:
        assert (status, body["reason"]) == (400, "BadRequest")
    else:
        assert (status, [item["metadata"]["name"] for item in body["items"]]) == (200, expected)
    # a quoted name in an object's path is the name itself
    assert fetch_json(api, "/apis/example.com/v1/namespaces/default/widgets/a%2Cb")[0] == 200


def test_fake_raw_answers(api):
    """Raw bytes or a callable are the whole answer; the rule counts what it served."""
    rule = api.inject(raw=http("418 I'm a teapot", b'{"x": 1}'), match="/pods", times=2)
    assert fetch(api, "/api/v1/pods")[::2] == (418, b'{"x": 1}')
    flood = Flood(CHUNKED_200, chunk(b"x" * 10), 3, b"0\r\n\r\n")
    api.clear_faults()
    api.inject(raw=flood)
    assert fetch(api, "/api/v1/pods")[::2] == (200, b"x" * 30)
    assert rule.served == 1 and flood.done.is_set()
    assert [r.status for r in api.requests] == [418, 0]


# Item 3: a 200 answer of the wrong shape is malformed (retried), never an empty answer -----

WRONG_LISTS = {
    "empty object": {},
    "items not a list": {"items": "x"},
    "items not objects": {"items": [1, 2]},
    "a Status": {"kind": "Status", "status": "Failure", "message": "x", "code": 500},
    "an item without a name": {"kind": "PodList", "items": [{"metadata": {}, "status": READY}]},
    "a Status with items": {"kind": "Status", "status": "Failure", "code": 500, "items": []},
    "items without a kind": {"items": []},
    "a list of another kind": {"kind": "JobList", "apiVersion": "batch/v1", "items": []},
}


@pytest.mark.parametrize("body", sorted(WRONG_LISTS))
def test_item_3_list_of_the_wrong_shape_is_not_an_empty_list(api, entrypoint, body):
    """Issue 7 item 3: no pod of the DaemonSet on this node means met, so a list answer of the
    wrong shape must be malformed (retried), never read as an empty list."""
    env, unmet, met = SCENARIOS["daemonset"]
    api.deny("watch", "pods")
    api.deny("watch", "daemonsets")
    unmet(api)
    run = entrypoint(dict(api.env(), **dict(FAST, **env)))
    wait_until_waiting(api)
    rule = api.inject(status=200, body=as_json(WRONG_LISTS[body]), match="app%3Dovs", times=None)
    assert_waits_out_the_fault(api, run, rule, met, seconds=1.5, served=2)


WRONG_OBJECTS = {
    "empty object": {},
    "a Status": {"kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Failure",
                 "message": "x", "code": 500},
    "metadata not an object": {"apiVersion": "example.com/v1", "kind": "Widget", "metadata": "w"},
    "another object": k8s.custom("example.com/v1", "Widget", "other", "default"),
    "an object of another kind named w": dict(k8s.custom("example.com/v1", "Widget", "w",
                                                         "default"), kind="Gadget"),
}


@pytest.mark.parametrize("body", sorted(WRONG_OBJECTS))
def test_item_3_get_answer_of_the_wrong_shape_is_not_the_object(api, entrypoint, body):
    """Issue 7 item 3: Widget w, wanted only to exist, read by name (list refused): an answer
    that is not an object named w is malformed, not w."""
    api.register_resource("example.com/v1", "widgets", "Widget")
    api.deny("list", "widgets")
    api.deny("watch", "widgets")
    run = entrypoint(dict(api.env(), DEPENDENCY_CUSTOM_RESOURCE=json.dumps(
        [{"apiVersion": "example.com/v1", "kind": "Widget", "name": "w"}]), **FAST))
    wait_until_waiting(api)
    rule = api.inject(status=200, body=as_json(WRONG_OBJECTS[body]), match="/widgets/w", times=None)
    assert_waits_out_the_fault(api, run, rule, served=2, met=lambda api: api.put(
        k8s.custom("example.com/v1", "Widget", "w", "default")))


BAD_EVENTS = {
    "object without metadata": {"type": "ADDED", "object": {"status": {"succeeded": 1}}},
    "object not an object": {"type": "ADDED", "object": "x"},
    "no object": {"type": "ADDED"},
    "an object of another kind": {"type": "ADDED", "object": dict(
        k8s.pod("j", labels={"job-name": "j"}), status={"succeeded": 1})},
}


@pytest.mark.parametrize("event", sorted(BAD_EVENTS))
def test_item_3_watch_event_of_the_wrong_shape_is_malformed(api, entrypoint, event):
    """Issue 7 item 3: a watch event that is not {"type": ..., "object": {metadata...}} is
    malformed: it neither stands for Job j (not created yet) nor stays in the way of the real one."""
    run = entrypoint(dict(api.env(), DEPENDENCY_JOBS="j", **FAST))
    wait_until_waiting(api)
    rule = api.inject(raw=stream(BAD_EVENTS[event]), match="watch=1")
    api.close_watches()
    wait_for(lambda: rule.served)
    assert_waits(run, 1)
    job_succeeds(api)
    assert_execd_cleanly(run)


def endpoint_slices_of_every_service(api):
    """SERVICE db: its own slice is not ready, another service's is; the answer has both."""
    api.deny("watch", "endpointslices")
    api.put(k8s.service("db"))
    own = api.put(k8s.endpoint_slice("db", addresses=(("10.0.0.1", False),)))
    other = api.put(k8s.endpoint_slice("other", addresses=(("10.0.0.9", True),)))
    return {"DEPENDENCY_SERVICE": "db"}, "/endpointslices", list_body("EndpointSliceList", own, other), \
        service_met


def another_job_by_name(api):
    """JOBS j (active): the answer to metadata.name=j lists Job k, which succeeded."""
    api.deny("watch", "jobs")
    api.put(k8s.job("j", active=1))
    other = api.put(k8s.job("k", succeeded=1))
    return {"DEPENDENCY_JOBS": "j"}, "/jobs", list_body("JobList", other), job_succeeds


@pytest.mark.parametrize("setup", [endpoint_slices_of_every_service, another_job_by_name])
def test_item_3_answer_ignoring_the_selectors_meets_nothing(api, entrypoint, setup):
    """Issue 7 item 3 (sibling): objects the read's selectors exclude, sent by a server that
    ignores them, do not count."""
    env, match, body, met = setup(api)
    run = entrypoint(dict(api.env(), **dict(FAST, **env)))
    wait_until_waiting(api)
    rule = api.inject(status=200, body=as_json(body), match=match, times=None)
    assert_waits_out_the_fault(api, run, rule, met, served=2)


# Item 5: the token is never printed --------------------------------------------------------

ECHOES = {
    "500 Status": lambda api: dict(status=500, match="/jobs", body=as_json(
        k8s.status_body(500, "no such token: " + api.token))),
    "401 Status": lambda api: dict(status=401, match="/jobs", body=as_json(
        k8s.status_body(401, "Unauthorized: " + api.token))),
    "watch ERROR event": lambda api: dict(match="watch=1", raw=stream(
        {"type": "ERROR", "object": k8s.status_body(500, "no such token: " + api.token)})),
}


@pytest.mark.parametrize("log", [{"ENTRYPOINT_LOG_LEVEL": "debug"},
                                 {"ENTRYPOINT_LOG_LEVEL": "debug", "ENTRYPOINT_LOG_FORMAT": "json"}],
                         ids=["text", "json"])
@pytest.mark.parametrize("echo", sorted(ECHOES))
def test_item_5_token_echoed_by_the_server_is_never_printed(api, entrypoint, echo, log):
    """Issue 7 item 5: a server's message is logged, but never the token it may echo back."""
    run = wait_for_job(api, entrypoint, **log)
    rule = api.inject(times=None, **ECHOES[echo](api))
    api.close_watches()
    assert_waits_out_the_fault(api, run, rule, job_succeeds)
    assert api.token not in run.stdout + run.stderr


def test_item_5_token_with_a_line_break_exits_2_without_printing_it(api, entrypoint):
    """Issue 7 item 5: such a token cannot go in a header; saying so must not print it."""
    (api.sa_dir / "token").write_text("abc123\nxyz789")
    run = entrypoint(dict(api.env(), DEPENDENCY_SERVICE="db"))
    assert run.finish(timeout=5) == 2
    lines = run.stderr.splitlines()
    assert len(lines) == 1 and lines[0].startswith("Entrypoint ERROR: ") and "token" in lines[0]
    assert "abc123" not in run.stdout + run.stderr and "xyz789" not in run.stdout + run.stderr


def test_item_5_token_rotated_to_one_with_a_line_break_is_never_printed(api, entrypoint):
    """Issue 7 item 5: a bad token read while waiting is neither printed nor fatal."""
    run = wait_for_job(api, entrypoint, watch=False, ENTRYPOINT_LOG_LEVEL="debug")
    (api.sa_dir / "token").write_text("abc123\nxyz789")
    rule = api.inject(status=401, match="/jobs", times=None)  # makes it read the token file again
    assert_waits(run, 1)
    assert rule.served >= 1
    api.clear_faults()
    api.rotate_token()
    job_succeeds(api)
    assert_execd_cleanly(run)
    assert "abc123" not in run.stdout + run.stderr and "xyz789" not in run.stdout + run.stderr


# Item 6: a watch thread never dies ---------------------------------------------------------

WATCH_KILLERS = {
    "ERROR event with a code not a number": stream(
        {"type": "ERROR", "object": {"code": "x", "message": 5}}),
    "error answer cut short": http("500 Internal Server Error", b'{"kind": "', length=100),
    "429 with a huge Retry-After": http("429 Too Many Requests", as_json(
        k8s.status_body(429, "slow down")), headers=[("Retry-After", "99999999999")]),
}


@pytest.mark.parametrize("answer", sorted(WATCH_KILLERS))
def test_item_6_watch_survives_a_hostile_answer(api, entrypoint, answer):
    """Issue 7 item 6: after any answer to a watch, the collection is still followed, and the
    change that meets the dependency is seen within seconds (assert_execd waits 15 s)."""
    run = wait_for_job(api, entrypoint)
    rule = api.inject(raw=WATCH_KILLERS[answer], match="watch=1")
    api.close_watches()
    wait_for(lambda: rule.served)
    time.sleep(0.5)  # the answer is dealt with before the change comes
    job_succeeds(api)
    assert_execd_cleanly(run)


# Item 7: a broken answer is a failed request, not a traceback and exit 1 -------------------

BROKEN_ANSWERS = {
    "401 cut short": http("401 Unauthorized", b'{"kind": "Status", ', length=1000),
    "huge Content-Length": http("200 OK", b'{"items": [', length=1000000000000000),
    "huge chunk size": b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\nffffffffffff\r\n"
                       b'{"items": [',
}


@pytest.mark.parametrize("answer", sorted(BROKEN_ANSWERS))
def test_item_7_broken_answer_is_no_crash(api, entrypoint, answer):
    """Issue 7 item 7: a body cut short or too big to hold is a failed read: wait, retry."""
    run = wait_for_job(api, entrypoint, watch=False)
    rule = api.inject(raw=BROKEN_ANSWERS[answer], match="/jobs", times=None)
    assert_waits_out_the_fault(api, run, rule, job_succeeds)


# Item 8: every request has a total deadline, ENTRYPOINT_REQUEST_TIMEOUT ---------------------

TRICKLES = {
    "status line and headers": trickle(b"HTTP/1.1 200 OK\r\nX-Slow: ", b"a"),
    "body": trickle(http("200 OK", length=MIB), b" "),
}


@pytest.mark.parametrize("where", sorted(TRICKLES))
def test_item_8_trickling_answer_is_abandoned_at_the_deadline(api, entrypoint, where):
    """Issue 7 item 8: a byte every half second never trips a per-read timeout; the request's
    total deadline (ENTRYPOINT_REQUEST_TIMEOUT) ends it, with a warning, and it is retried."""
    run = wait_for_job(api, entrypoint, watch=False, ENTRYPOINT_REQUEST_TIMEOUT="1.5")
    rule = api.inject(raw=TRICKLES[where], match="/jobs")
    wait_for(lambda: rule.served)
    started, sent = time.monotonic(), len(job_requests(api))
    wait_for(lambda: len(job_requests(api)) > sent, timeout=5)  # given up on, and retried
    assert time.monotonic() - started > 1.0
    job_succeeds(api)
    assert_execd_cleanly(run)
    assert re.search(r"WARNING.*(1\.5|timed? ?out|deadline)", run.stdout, re.IGNORECASE), run.stdout


@pytest.mark.parametrize("value", ["0", "0.05", "soon"])
def test_item_8_request_timeout_setting_is_checked(api, entrypoint, value):
    """Issue 7 item 8: ENTRYPOINT_REQUEST_TIMEOUT is seconds, at least 0.1."""
    api.put(k8s.job("j", succeeded=1))
    run = entrypoint(dict(api.env(), DEPENDENCY_JOBS="j", ENTRYPOINT_REQUEST_TIMEOUT=value))
    assert run.finish() == 2, run.stdout
    lines = run.stderr.splitlines()
    assert len(lines) == 1 and "ENTRYPOINT_REQUEST_TIMEOUT: " in lines[0]
    assert run.report() is None


# Item 9: an answer or watch line past the size cap is malformed, never held in memory ------

def peak_rss_mib(pid):
    with open("/proc/%d/status" % pid) as f:
        for line in f:
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024.0
    return 0.0


FLOODS = {  # (watch allowed, which requests, the answer)
    "endless watch line": (True, "watch=1", lambda: Flood(
        CHUNKED_200, chunk(b"x" * MIB), 200, b"0\r\n\r\n")),
    "300 MiB list": (False, "/jobs", lambda: Flood(
        http("200 OK", length=300 * MIB), b" " * MIB, 300)),
}


@pytest.mark.parametrize("flood", sorted(FLOODS))
def test_item_9_huge_answer_is_not_held_in_memory(api, entrypoint, flood):
    """Issue 7 item 9: past 8 MiB an answer or a watch line is malformed and dropped, so the
    process's peak RSS stays far below what the server sends (200-300 MiB)."""
    watch, match, make = FLOODS[flood]
    answer = make()
    run = wait_for_job(api, entrypoint, watch=watch)
    api.inject(raw=answer, match=match)
    api.close_watches()
    deadline = time.monotonic() + 15
    while not answer.done.wait(0.05):  # until it was all sent, or the client hung up
        assert run.running(), "should wait, but " + gone(run)
        assert time.monotonic() < deadline, "still reading after 15s"
        peak = peak_rss_mib(run.process.pid)
        assert peak < 100, "peak RSS %.0f MiB" % peak
    assert peak_rss_mib(run.process.pid) < 100
    assert_waits(run, 0.5)
    job_succeeds(api)
    assert_execd_cleanly(run)


# Item 10: reconnecting backs off, whatever ends the watch ----------------------------------

WATCH_LOOPS = {
    "ERROR 410 event": lambda api: dict(raw=stream({"type": "ERROR", "object": k8s.status_body(
        410, "too old resource version: 1 (2)", "Expired")})),
    "HTTP 410": lambda api: dict(status=410),
    "one event, then the end": lambda api: dict(raw=stream(
        {"type": "ADDED", "object": api.get("batch/v1", "Job", "j")})),
    "a list, not a watch": lambda api: dict(raw=http("200 OK", as_json(
        list_body("JobList", api.get("batch/v1", "Job", "j"))))),
}


@pytest.mark.parametrize("loop", sorted(WATCH_LOOPS))
def test_item_10_reconnect_loop_backs_off(api, entrypoint, loop):
    """Issue 7 item 10: however a watch ends at once, again and again, reconnecting backs off
    (from 0.2 s: some 10 requests in 3 s, not hundreds)."""
    run = wait_for_job(api, entrypoint, ENTRYPOINT_POLL_INTERVAL="0.2")
    rule = api.inject(match="watch=1", times=None, **WATCH_LOOPS[loop](api))
    api.clear_requests()
    api.close_watches()
    time.sleep(3)
    assert rule.served >= 1
    assert len(api.requests) <= 20, [(r.verb, r.status) for r in api.requests]
    api.clear_faults()
    job_succeeds(api)
    assert_execd_cleanly(run)


# Item 22: a discovery entry whose name is no plain resource name is not used ---------------

@pytest.mark.parametrize("name", ["widgets?watch=1#", "../secrets", "a/b", ".."])
def test_item_22_discovered_resource_name_is_checked(api, entrypoint, name):
    """Issue 7 item 22: a discovered resource name goes into request paths, so one that is no
    plain name is not used (nothing is requested under the group version) until a good one comes."""
    env, _, met = SCENARIOS["custom_resource"]
    api.register_resource("example.com/v1", name, "Widget")
    run = entrypoint(dict(api.env(), **dict(FAST, **env)))
    wait_for(lambda: any(r.path == "/apis/example.com/v1" for r in api.requests))
    assert_waits(run, 1)
    used = [r.path + "?" + urlencode(r.query) for r in api.requests
            if r.path.startswith("/apis/example.com/v1/")]
    assert used == []
    api.unregister_resource("example.com/v1", name)
    met(api)
    assert_execd_cleanly(run)


# Item 12 (on the wire): a name with a comma is escaped in the fieldSelector ----------------

def test_custom_resource_whose_crd_names_its_own_list_kind(api, entrypoint):
    """A CRD may set spec.names.listKind to anything; its items still say their kind."""
    api.register_resource("mygroup.example.com/v1beta1", "noxus", "WishIHadChosenNoxu",
                          list_kind="NoxuItemList")
    api.put(k8s.custom("mygroup.example.com/v1beta1", "WishIHadChosenNoxu", "n1", "default"))
    entrypoint(dict(api.env(), DEPENDENCY_CUSTOM_RESOURCE=json.dumps([{
        "apiVersion": "mygroup.example.com/v1beta1", "kind": "WishIHadChosenNoxu",
        "name": "n1"}]), **FAST)).assert_execd()


def test_custom_resource_list_with_an_item_of_another_kind_is_malformed(api, entrypoint):
    api.register_resource("example.com/v1", "widgets", "Widget")
    api.deny("watch", "widgets")
    run = entrypoint(dict(api.env(), DEPENDENCY_CUSTOM_RESOURCE=json.dumps([{
        "apiVersion": "example.com/v1", "kind": "Widget", "name": "w"}]), **FAST))
    wait_until_waiting(api)
    other = dict(k8s.custom("example.com/v1", "Widget", "w", "default"), kind="Gadget")
    rule = api.inject(status=200, body=as_json(list_body("WidgetList", other)), match="/widgets",
                      times=None)
    assert_waits_out_the_fault(api, run, rule, served=2, met=lambda api: api.put(
        k8s.custom("example.com/v1", "Widget", "w", "default")))


def test_item_12_custom_resource_named_with_a_comma(api, entrypoint):
    """Issue 7 item 12: `metadata.name=a,b` would be two requirements; the name is escaped."""
    api.register_resource("example.com/v1", "widgets", "Widget")
    api.put(k8s.custom("example.com/v1", "Widget", "a,b", "default", status=READY))
    run = entrypoint(dict(api.env(), ENTRYPOINT_TIMEOUT="5", DEPENDENCY_CUSTOM_RESOURCE=json.dumps(
        [{"apiVersion": "example.com/v1", "kind": "Widget", "name": "a,b",
          "conditions": [{"type": "Ready"}]}])))
    assert_execd_cleanly(run)


# Answers that end the connection after them --------------------------------------------------

def succeeded_job_list(api):
    job = k8s.job("j", succeeded=1)
    job["metadata"].update(namespace="default", resourceVersion="99")
    return as_json(list_body("JobList", job))


CLOSING_ANSWERS = {
    "Connection: close": lambda body: http("200 OK", body, headers=[("Connection", "close")]),
    "HTTP/1.0, read until closed": lambda body: b"HTTP/1.0 200 OK\r\n\r\n" + body,
}


@pytest.mark.parametrize("answer", sorted(CLOSING_ANSWERS))
def test_answer_that_closes_the_connection_is_read_whole(api, entrypoint, answer):
    """A server may close the connection after an answer (going away, an HTTP/1.0 proxy): the
    answer is still read to its end and believed."""
    run = wait_for_job(api, entrypoint, watch=False)
    api.inject(raw=CLOSING_ANSWERS[answer](succeeded_job_list(api)), match="/jobs", times=None)
    assert_execd_cleanly(run)


# Found in review ------------------------------------------------------------------------------

ME = {"POD_NAME": "me"}


def test_container_and_daemonset_together_see_the_pod_change(api, entrypoint):
    """The DaemonSet check keeps this pod's node; the container check must still see it change."""
    this_pod(api, containers=("app", "libvirt"))
    api.put(k8s.daemonset("ovs", match_labels={"app": "ovs"}))  # no pod of it on node-a: met
    run = entrypoint(dict(api.env(), DEPENDENCY_CONTAINER="libvirt", DEPENDENCY_DAEMONSET="ovs",
                          **ME))
    wait_until_waiting(api)
    this_pod(api, containers=("app", "libvirt"), ready_containers=("libvirt",))
    assert_execd_cleanly(run)


HOSTILE_FIELDS = {
    "Retry-After: a digit that int() refuses": lambda api: dict(raw=(
        b"HTTP/1.1 429 Too Many Requests\r\nContent-Length: 2\r\nRetry-After: \xb2\r\n\r\n{}")),
    "a label value that is a list": lambda api: dict(status=200, body=as_json(list_body(
        "JobList", dict(k8s.job("j", succeeded=1), metadata={
            "name": "j", "namespace": "default", "labels": {"app": ["x"]}})))),
    "a namespace that is a list": lambda api: dict(status=200, body=as_json(list_body(
        "JobList", dict(k8s.job("j", succeeded=1), metadata={"name": "j", "namespace": ["x"]})))),
}


@pytest.mark.parametrize("answer", sorted(HOSTILE_FIELDS))
def test_odd_fields_are_malformed_not_a_crash(api, entrypoint, answer):
    run = wait_for_job(api, entrypoint, watch=False)
    rule = api.inject(match="/jobs", times=None, **HOSTILE_FIELDS[answer](api))
    assert_waits_out_the_fault(api, run, rule, job_succeeds, seconds=1.5)


def test_token_echoed_where_a_message_is_cut_is_not_printed_in_part(api, entrypoint):
    """Messages are cut to a length: the token is taken out before, not after."""
    for padding in (229, 480):
        api.put(k8s.job("j", active=1))
        message = "y" * padding + " token " + api.token + " (end)"
        api.inject(status=500, body=as_json(k8s.status_body(500, message)), match="/jobs",
                   times=None)
        run = entrypoint(dict(api.env(), DEPENDENCY_JOBS="j", ENTRYPOINT_TIMEOUT="1.5", **FAST))
        run.finish()
        api.clear_faults()
        assert api.token[:12] not in run.stdout + run.stderr


def test_long_token_echoed_in_a_plain_text_error_is_not_printed_in_part(api, entrypoint):
    """A token longer than the part of an error body that is kept: taken out before any cut."""
    import secrets
    api.rotate_token(secrets.token_urlsafe(3750))  # 5000 characters
    api.put(k8s.job("j", active=1))
    api.inject(status=500, body=("Authorization: Bearer %s\n" % api.token).encode(),
               match="/jobs", times=None)
    run = entrypoint(dict(api.env(), DEPENDENCY_JOBS="j", ENTRYPOINT_TIMEOUT="1.5", **FAST))
    run.finish()
    assert "[token]" in run.stdout
    for start in range(0, len(api.token) - 16, 16):
        assert api.token[start:start + 16] not in run.stdout + run.stderr


def test_pieces_of_a_token_are_redacted(monkeypatch):
    token = "eyJhbGciOiJSUzI1NiJ9.eyJpc3MiOiJrdWJlcm5ldGVzIn0." + "".join(
        "%02x" % (i * 37 % 256) for i in range(60))
    monkeypatch.setattr(ke, "SECRETS", set())
    monkeypatch.setattr(ke, "SECRET_PIECES", set())
    ke.keep_secret(token)
    assert ke.redact("whole %s here" % token) == "whole [token] here"
    assert ke.redact("cut: %s" % token[:60]) == "cut: [token]"
    assert ke.redact("cut: %s (end)" % token[-40:]) == "cut: [token] (end)"
    assert ke.redact("kind %s...'" % token[30:70]) == "kind [token]...'"  # dots stuck to it
    assert ke.redact("x/%s/y" % token[50:80]) == "x/[token]/y"
    assert token[100:140] not in ke.shown(token[100:], 40)
    for text in ("/api/v1/namespaces/default/pods?labelSelector=app%3Dx",
                 "resourceVersion 1234567890123456789", "kubernetes.default.svc.cluster.local"):
        assert ke.redact(text) == text


def test_endless_stream_of_new_objects_is_bounded(api, entrypoint):
    """Each event is bounded, and so is what a watch adds on top of its list."""
    def flood(wfile, stopping):
        wfile.write(CHUNKED_200)
        for i in range(20000):
            if stopping.is_set():
                return
            pod = k8s.pod("x-%d" % i, labels={"app": "x"})
            pod["metadata"].update(annotations={"pad": "p" * 10000}, resourceVersion=str(i + 10))
            wfile.write(chunk(json.dumps({"type": "ADDED", "object": pod}).encode() + b"\n"))
        stopping.wait(30)

    api.inject(raw=flood, match="watch=1", times=1)
    run = entrypoint(dict(api.env(), DEPENDENCY_POD_JSON='[{"labels": {"app": "x"}}]'))
    time.sleep(8)
    assert run.running() and run.report() is None
    assert peak_rss_mib(run.process.pid) < 100


def test_flapping_slices_do_not_drive_requests(api, entrypoint):
    """A server adding and deleting a Service's only EndpointSlice over and over: the Endpoints
    the check then reads are not listed and watched anew on every flip."""
    api.put(k8s.endpoint_slice("db", addresses=(("10.0.0.1", False),)))
    flapping = k8s.endpoint_slice("db", addresses=(("10.0.0.1", False),))

    def flap(wfile, stopping):
        wfile.write(CHUNKED_200)
        for i in range(5000):
            flapping["metadata"]["resourceVersion"] = str(1000 + i)
            kind = "DELETED" if i % 2 == 0 else "ADDED"
            wfile.write(chunk(json.dumps({"type": kind, "object": flapping}).encode() + b"\n"))
            if stopping.wait(0.001):
                return

    api.inject(raw=flap, match="service-name%3Ddb&watch=1", times=1)
    run = entrypoint(dict(api.env(), DEPENDENCY_SERVICE="db"))
    time.sleep(4)
    assert run.running()
    assert len([r for r in api.requests if r.resource == "endpoints"]) <= 4


def test_daemonset_recreated_with_another_selector_is_read_anew(api, entrypoint):
    """A selector never changes, but a DaemonSet can be deleted and created again with another:
    "no pod of it on this node" must be judged by the new one."""
    this_pod(api)
    api.put(k8s.daemonset("ovs", match_labels={"app": "ovs"}))
    api.put(k8s.pod("ovs-a", labels={"app": "ovs"}, node="node-a"))
    run = entrypoint(dict(api.env(), DEPENDENCY_DAEMONSET="ovs", **dict(FAST, **ME)))
    wait_until_waiting(api)
    api.put(k8s.pod("ovs2-a", labels={"app": "ovs2"}, node="node-a"))  # the new one's, not ready
    api.delete("apps/v1", "DaemonSet", "ovs")
    api.put(k8s.daemonset("ovs", match_labels={"app": "ovs2"}))
    time.sleep(0.5)
    api.delete("v1", "Pod", "ovs-a")
    assert_waits(run, 2)
    api.put(k8s.pod("ovs2-a", labels={"app": "ovs2"}, node="node-a", ready=True))
    assert_execd_cleanly(run)
