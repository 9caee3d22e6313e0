"""Reads kept fresh: each distinct read is a collection, watched, or polled where watching is
refused or fails, and merged per namespace. Polls read from the API server's cache once a version
is known, never back in time, and plainly from servers that cannot answer so. A refusal (403) falls
back to what is allowed; an answer of the wrong shape or kind is malformed and retried, never an
empty list or another object; after a fault while waiting the command runs once its dependency is
met, never early, and the process never crashes."""

import json
import sys
import time
from urllib.parse import urlencode

import pytest

import fakeapi as k8s
import kubernetes_entrypoint as ke
from conftest import SCRIPT, fetch_json, wait_for
from hostile import (CHUNKED_200, FAST, as_json, assert_execd_cleanly, assert_waits,
                     assert_waits_out_the_fault, chunk, chunked_stream, http, job_succeeds,
                     list_body, stream, wait_for_job)
from scenarios import (SCENARIOS, client_for, daemonset_met, parse, service_met, this_pod,
                       wait_until_waiting)


READY = {"conditions": [{"type": "Ready", "status": "True"}]}
ME = {"POD_NAME": "me"}


# The reader, in-process -----------------------------------------------------------------------

def test_get_list_and_one_kept_alive_connection(api):
    api.put(k8s.pod("me", labels={"app": "x"}))
    api.put(k8s.pod("other", labels={"app": "y"}))
    read = ke.ApiReader(client_for(api))
    assert read.get("v1", "pods", "default", "me")["metadata"]["name"] == "me"
    assert read.get("v1", "pods", "default", "missing") is None
    assert [p["metadata"]["name"] for p in read.list("v1", "pods", "default", labels=ke.Selector.of({"app": "x"}))] == ["me"]
    assert read.list("v1", "pods", "elsewhere") == []
    assert api.connections == 1


def test_shared_reads_happen_once_per_round(api):
    """CONTAINER, DAEMONSET and POD_JSON all read this pod: one GET per round serves them all."""
    api.put(k8s.pod("me", node="n1", containers=("app", "side"), ready_containers=("side",)))
    api.put(k8s.daemonset("ovs", match_labels={"app": "ovs"}))
    api.put(k8s.pod("x", labels={"app": "x"}, node="n1", ready=True))
    env = dict(api.env(), POD_NAME="me", DEPENDENCY_CONTAINER="side", DEPENDENCY_DAEMONSET="ovs",
               DEPENDENCY_POD_JSON='[{"labels": {"app": "x"}, "requireSameNode": true}]')
    ke.Waiting(parse(env), ke.ApiReader(client_for(api))).run()
    reads_of_me = [r for r in api.requests if r.query.get("fieldSelector") == "metadata.name=me"]
    assert len(reads_of_me) == 1


# Polls read from the cache: resourceVersion with NotOlderThan ---------------------------------

def unmet_service(api):
    api.put(k8s.endpoint_slice("mariadb", addresses=(("10.0.0.1", False),)))
    api.deny("watch", "endpointslices")
    return dict(api.env(), DEPENDENCY_SERVICE="mariadb", ENTRYPOINT_POLL_INTERVAL="0.2")


def slice_lists(api):
    return [r for r in api.requests if r.resource == "endpointslices" and r.verb == "list"
            and r.status != 403]


def cache_read(request):
    return "resourceVersion" in request.query


def make_ready(api):
    api.put(k8s.endpoint_slice("mariadb", addresses=(("10.0.0.1", True),)))


def test_polls_after_the_first_read_come_from_the_cache(api, entrypoint):
    run = entrypoint(unmet_service(api))
    wait_for(lambda: len(slice_lists(api)) >= 4)
    first, *later = slice_lists(api)
    assert not cache_read(first)  # nothing seen yet: the quorum read
    assert all(r.query["resourceVersionMatch"] == "NotOlderThan" for r in later)
    versions = [int(r.query["resourceVersion"]) for r in later]
    assert versions == sorted(versions)  # never back in time
    make_ready(api)
    run.assert_execd()


@pytest.mark.parametrize("server, plain_after", [("lagging", 3), ("refuse", 1)])
def test_server_that_cannot_read_its_cache_is_read_plainly(api, entrypoint, server, plain_after):
    api.cache_reads = server
    run = entrypoint(unmet_service(api))
    wait_for(lambda: len(slice_lists(api)) >= 2 + 2 * plain_after + 3)
    reads = slice_lists(api)
    refused = [r for r in reads if cache_read(r)]
    assert len(refused) == plain_after and all(r.status in (400, 504) for r in refused)
    assert not any(cache_read(r) for r in reads[-3:])  # from then on, plain reads only
    make_ready(api)
    run.assert_execd()
    assert "Traceback" not in run.stderr


def test_server_ignoring_the_parameters_works(api, entrypoint):
    api.cache_reads = "ignore"
    run = entrypoint(unmet_service(api))
    wait_for(lambda: len(slice_lists(api)) >= 3)
    make_ready(api)
    run.assert_execd()


def test_get_by_name_asks_for_the_version_seen(api, entrypoint):
    job = api.put(k8s.job("db-init", active=1))
    api.deny("list", "jobs")
    run = entrypoint(dict(api.env(), DEPENDENCY_JOBS="db-init", ENTRYPOINT_POLL_INTERVAL="0.2"))
    gets = lambda: [r for r in api.requests if r.resource == "jobs" and r.verb == "get"]  # noqa
    wait_for(lambda: len(gets()) >= 3)
    assert "resourceVersion" not in gets()[0].query
    assert gets()[1].query == {"resourceVersion": job["metadata"]["resourceVersion"]}
    api.put(k8s.job("db-init", succeeded=1))
    run.assert_execd()


def test_cache_is_tried_again_after_a_pause(api, entrypoint):
    api.cache_reads = "lagging"
    run = entrypoint(unmet_service(api))
    wait_for(lambda: sum(map(cache_read, slice_lists(api))) >= 3)
    api.cache_reads = "serve"
    wait_for(lambda: len(slice_lists(api)) >= 1 + 3 * 2 + ke.CACHE_PAUSE + 2, timeout=20)
    assert cache_read(slice_lists(api)[-1])  # the cache again, and it answers now
    make_ready(api)
    run.assert_execd()


def test_a_server_refusing_the_parameters_is_never_asked_again(api, entrypoint):
    api.put(k8s.endpoint_slice("mariadb", addresses=(("10.0.0.1", False),)))
    api.deny("watch", "endpointslices")
    api.cache_reads = "refuse"
    api.inject(status=504, times=2, match="resourceVersionMatch")
    run = entrypoint(dict(api.env(), DEPENDENCY_SERVICE="mariadb", ENTRYPOINT_POLL_INTERVAL="0.1"))
    wait_for(lambda: len(slice_lists(api)) >= 1 + 3 * 2 + ke.CACHE_PAUSE + 5, timeout=30)
    refused = [r for r in api.requests if r.resource == "endpointslices" and r.status == 400]
    assert len(refused) == 1
    assert run.running()


def test_a_cache_read_failing_otherwise_is_read_from_storage_at_once(api, entrypoint):
    """A 500 from cache reads: the same round reads storage, so the dependency does not go in
    and out of error."""
    api.put(k8s.endpoint_slice("mariadb", addresses=(("10.0.0.1", False),)))
    api.deny("watch", "endpointslices")
    api.inject(status=500, times=None, match="resourceVersionMatch")
    run = entrypoint(dict(api.env(), DEPENDENCY_SERVICE="mariadb", ENTRYPOINT_POLL_INTERVAL="0.1"))
    wait_for(lambda: len(slice_lists(api)) >= 12, timeout=20)
    run.process.terminate()
    run.finish()
    assert "works again" not in run.stdout and "failed: " not in run.stdout.replace(
        "failed: 0 of 1 endpoints ready", "")


# A cache that answers from the past -----------------------------------------------------------

def test_an_answer_older_than_one_seen_is_not_believed(api, entrypoint):
    api.put(k8s.endpoint_slice("mariadb", addresses=(("10.0.0.1", True),)))
    api.freeze_cache()  # the cache still has it ready; storage has it unready from now
    env = unmet_service(api)
    run = entrypoint(env)
    wait_for(lambda: len(slice_lists(api)) >= 10)  # the first, 3 times cache then storage, ...
    assert run.running() and run.report() is None
    assert not any(cache_read(r) for r in slice_lists(api)[-3:])  # storage only, from then on
    make_ready(api)
    run.assert_execd()


def test_an_object_gone_does_not_come_back(api, entrypoint):
    api.put(k8s.job("db-init", succeeded=1))
    api.freeze_cache()
    api.delete("batch/v1", "Job", "db-init")
    api.deny("watch", "jobs")
    run = entrypoint(dict(api.env(), DEPENDENCY_JOBS="db-init", ENTRYPOINT_POLL_INTERVAL="0.2"))
    wait_for(lambda: sum(r.resource == "jobs" and "resourceVersion" in r.query
                         for r in api.requests) >= 3)
    assert run.running() and run.report() is None
    api.put(k8s.job("db-init", succeeded=1))
    run.assert_execd()


def test_not_older_compares_objects_versions():
    def answer(**versions):
        return {key: {"metadata": {"resourceVersion": str(v)}} for key, v in versions.items()}
    assert ke.not_older(answer(a=5), 9, answer(a=5), "7")          # a quiet cache: fine
    assert ke.not_older(answer(a=5), 9, answer(a=8), "8")          # changed since
    assert ke.not_older(answer(a=5), 9, answer(a=5, b=10), "10")   # created since
    assert ke.not_older(answer(a=5), 9, answer(), "6")             # deleted since
    assert not ke.not_older(answer(a=5), 9, answer(a=4), "9")      # went back
    assert not ke.not_older(answer(), 9, answer(b=3), "9")         # came back from before
    assert not ke.not_older(answer(a=5), 9, answer(), "4")         # too old to know it
    assert not ke.not_older(answer(a=5), 9, answer(a="x"), "9")    # not a number
    assert not ke.not_older(answer(a=5), 9, answer(a=12), "10")    # newer than its answer
    assert not ke.not_older(answer(a="\u00b2"), 9, answer(a="\u00b2"), "9")  # digit, no number
    assert not ke.not_older(answer(a="9" * 5000), 9, answer(a="9" * 5000), "9")


def test_a_lagging_cache_does_not_bring_back_a_slice_gone_before_the_first_read(api, entrypoint):
    """Honest caches at two versions, both older than the first (storage) read: the newest
    version seen stays the mark, so a slice deleted before it cannot come back."""
    api.put(k8s.endpoint_slice("mariadb", addresses=(("10.0.0.1", False),)))
    api.freeze_cache()
    at_a = api._frozen                       # a cache at A
    api.put(k8s.endpoint_slice("mariadb", name="mariadb-t", addresses=(("10.0.0.2", True),)))
    api.freeze_cache()
    at_a1 = api._frozen                      # a cache at A+1: the ready slice t still there
    api._frozen = at_a
    api.delete("discovery.k8s.io/v1", "EndpointSlice", "mariadb-t")
    api.put(k8s.job("unrelated", active=1))  # the list's version moves on
    api.deny("watch", "endpointslices")
    run = entrypoint(dict(api.env(), DEPENDENCY_SERVICE="mariadb", ENTRYPOINT_POLL_INTERVAL="0.2"))
    wait_for(lambda: sum(map(cache_read, slice_lists(api))) >= 1)
    api._frozen = at_a1
    wait_for(lambda: not run.running() or sum(map(cache_read, slice_lists(api))) >= 4)
    time.sleep(0.5)
    assert run.running() and run.report() is None


# Reads merged per namespace -------------------------------------------------------------------

def slices_of(api, *names, namespace="default", ready=False):
    for name in names:
        api.put(k8s.endpoint_slice(name, namespace, addresses=(("10.0.0.1", ready),)))


@pytest.mark.parametrize("watch", [True, False])
def test_services_of_one_namespace_share_one_read(api, entrypoint, watch):
    slices_of(api, "mariadb", "rabbitmq", "memcached")
    slices_of(api, "keystone", namespace="openstack")
    if not watch:
        api.deny("watch", "endpointslices")
    run = entrypoint(dict(api.env(), ENTRYPOINT_POLL_INTERVAL="0.2",
                          DEPENDENCY_SERVICE="mariadb,rabbitmq,memcached,openstack:keystone"))
    if watch:
        wait_for(lambda: api.open_watches == 2)
    else:
        wait_for(lambda: len(slice_lists(api)) >= 6)
    selectors = {r.query["labelSelector"] for r in slice_lists(api)}
    assert selectors == {"kubernetes.io/service-name in (mariadb,memcached,rabbitmq)",
                         "kubernetes.io/service-name=keystone"}
    slices_of(api, "mariadb", "memcached", ready=True)
    slices_of(api, "keystone", namespace="openstack", ready=True)
    time.sleep(0.5)  # long enough for a watch event, or two poll rounds, to be seen
    reads = len(slice_lists(api))
    wait_for(lambda: watch or len(slice_lists(api)) >= reads + 4)
    assert run.running()  # rabbitmq is still not ready: the other Services' slices do not count
    slices_of(api, "rabbitmq", ready=True)
    run.assert_execd()
    assert "Resolving dependency Service rabbitmq in namespace default failed: 0 of 1 " \
           "endpoints ready ." in run.stdout
    assert run.stdout.count("is resolved") == 4


# Watch and poll -------------------------------------------------------------------------------

def test_watch_not_supported_falls_back_to_polling(api, entrypoint):
    api.put(k8s.job("j", active=1))
    api.inject(status=405, match="watch=1", times=None)
    run = entrypoint(dict(api.env(), DEPENDENCY_JOBS="j", ENTRYPOINT_POLL_INTERVAL="0.1"))
    wait_until_waiting(api)
    api.put(k8s.job("j", succeeded=1))
    run.assert_execd()
    assert "'watch'" in run.stdout


def test_failing_watch_keeps_the_answer_true_by_listing(api, entrypoint):
    """Watching fails on and on (not refused): the lists between tries still see the change."""
    api.put(k8s.job("j", active=1))
    run = entrypoint(dict(api.env(), DEPENDENCY_JOBS="j", ENTRYPOINT_POLL_INTERVAL="0.1"))
    wait_until_waiting(api)
    api.inject(status=500, match="watch=1", times=None)
    api.close_watches()
    api.put(k8s.job("j", succeeded=1))
    run.assert_execd()


def test_stream_that_ends_at_once_is_retried_with_backoff(api, entrypoint):
    api.put(k8s.job("j", active=1))
    run = entrypoint(dict(api.env(), DEPENDENCY_JOBS="j", ENTRYPOINT_POLL_INTERVAL="0.1"))
    wait_until_waiting(api)
    api.clear_requests()
    api.inject(status=200, body=b"", match="watch=1", times=None)
    api.close_watches()
    time.sleep(3)
    assert len([r for r in api.requests if r.verb == "watch"]) <= 8
    api.clear_faults()
    api.put(k8s.job("j", succeeded=1))
    run.assert_execd()


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


# Item 6: a watch thread never dies ------------------------------------------------------------

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


# Item 10: reconnecting backs off, whatever ends the watch -------------------------------------

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


# Item 20: starting a thread can fail ----------------------------------------------------------

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


# Faults while waiting, then recovery ----------------------------------------------------------

KINDS = ["service", "pod_json", "daemonset", "custom_resource"]
RESOURCES = ["endpointslices", "endpoints", "pods", "daemonsets", "jobs", "widgets"]


def crd_installed_but_not_ready(api):
    api.register_resource("example.com/v1", "widgets", "Widget")
    api.put(k8s.custom("example.com/v1", "Widget", "w", "default", spec={"size": 3},
                       status={"conditions": [{"type": "Ready", "status": "False"}]}))


# What each fault does to the next requests. With watch allowed the entrypoint sends nothing
# while it waits, so the open watches are closed too: the faults then hit the resumed watch.
FAULTS = {
    "500": lambda api: api.inject(status=500, times=3),
    "429 with Retry-After": lambda api: api.inject(status=429, retry_after=1, times=2),
    "connection reset": lambda api: api.inject(reset=True, times=2),
    "hung response": lambda api: api.inject(hang=1.5, times=1),
    "malformed JSON": lambda api: api.inject(status=200, body=b'{"kind": "Status", ', times=2),
    "history compacted": lambda api: api.compact(),
}


@pytest.mark.parametrize("watch", ["watch allowed", "watch refused"])
@pytest.mark.parametrize("fault", sorted(FAULTS))
@pytest.mark.parametrize("kind", KINDS)
def test_fault_while_waiting_then_recovery(api, entrypoint, kind, fault, watch):
    env, unmet, met = SCENARIOS[kind]
    if kind == "custom_resource":
        unmet = crd_installed_but_not_ready
    if watch == "watch refused":
        for resource in RESOURCES:
            api.deny("watch", resource)
    unmet(api)
    run = entrypoint(dict(api.env(), ENTRYPOINT_POLL_INTERVAL="0.1", **env))
    wait_until_waiting(api)
    FAULTS[fault](api)
    api.close_watches()
    met(api)
    run.assert_execd()
    output = run.stdout + run.stderr
    assert "Traceback" not in output
    if watch == "watch refused":
        assert "the Role allows no watch on" in run.stdout  # said once which verb is missing
        assert api.open_watches == 0
        assert api.refused() == []  # the rules review said so: no watch was tried


def test_repeating_error_is_logged_once_with_a_count(api, entrypoint):
    env, unmet, met = SCENARIOS["service"]
    api.deny("watch", "endpointslices")
    unmet(api)
    run = entrypoint(dict(api.env(), ENTRYPOINT_POLL_INTERVAL="0.1", **env))
    wait_until_waiting(api)
    api.inject(status=503, times=6)
    met(api)
    run.assert_execd()
    failures = [line for line in run.stdout.splitlines() if "reading " in line and "503" in line
                and "cache" not in line]  # a failed read from the cache is said once, apart
    assert len(failures) == 2, run.stdout  # when it starts, and when it clears
    # Six faults, and a failed read from the cache goes on to storage in the same round: the
    # first failed read may have met two of them.
    assert "failed 6 times" in failures[1] or "failed 5 times" in failures[1]


# Refusals, and what falls back ----------------------------------------------------------------

def test_refusal_logged_once_with_verb_resource_and_namespace(api, capsys):
    api.deny("list", "jobs", "openstack")
    now = [0.0]
    read = ke.ApiReader(client_for(api), clock=lambda: now[0])
    with pytest.raises(ke.ApiError) as caught:
        read.list("batch/v1", "jobs", "openstack", labels=ke.Selector.of({"app": "x"}))
    assert caught.value.status == 403
    for _ in range(3):
        now[0] += 60
        read.poll(read.end())
    assert len([r for r in api.requests if r.resource == "jobs"]) == 4
    lines = [line for line in capsys.readouterr().out.splitlines() if "refused" in line]
    assert len(lines) == 1
    assert "list jobs.batch in namespace openstack" in lines[0] and "'list' on jobs" in lines[0]


@pytest.mark.parametrize("review", ["reviewed", "review refused"])
def test_list_refused_reads_by_name(api, entrypoint, review):
    """Custom resources often come with `get` only: the object is then polled by name. The rules
    review says so before anything is asked; where it is refused too, the list is tried once."""
    env, _, met = SCENARIOS["custom_resource"]
    api.deny("list", "widgets")
    api.deny("watch", "widgets")
    if review == "review refused":
        api.deny("create", "selfsubjectrulesreviews")
    crd_installed_but_not_ready(api)
    run = entrypoint(dict(api.env(), **env))
    wait_until_waiting(api)
    met(api)
    run.assert_execd()
    gets = [r for r in api.requests if r.verb == "get" and r.resource == "widgets"]
    assert len(gets) >= 2  # polled by name until the condition held
    if review == "reviewed":
        assert run.stdout.count("the Role allows no list or watch on widgets.example.com w in "
                                "namespace default: polling it by name every 0.2s instead") == 1
        assert api.refused() == []  # neither was tried
    else:
        assert run.stdout.count("API refused list widgets.example.com w in namespace default") == 1
        assert "polling it by name instead" in run.stdout
        assert [r.verb for r in api.refused()] == ["create", "list"]  # the review, one list


# Discovery ------------------------------------------------------------------------------------

def test_discovery_looked_at_again_until_the_kind_is_served(api, entrypoint):
    """The group is served already (another kind), the wanted kind's CRD comes later."""
    api.register_resource("example.com/v1", "foos", "Foo")
    run = entrypoint(dict(api.env(), DEPENDENCY_CUSTOM_RESOURCE=json.dumps(
        [{"apiVersion": "example.com/v1", "kind": "Bar", "name": "b1"}])))
    wait_for(lambda: len([r for r in api.requests if r.path == "/apis/example.com/v1"]) >= 2)
    assert run.running() and run.report() is None
    api.register_resource("example.com/v1", "bars", "Bar")
    api.put(k8s.custom("example.com/v1", "Bar", "b1", "default"))
    run.assert_execd()


# Item 22: a discovery entry whose name is no plain resource name is not used ------------------

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


# This pod, read again as it changes -----------------------------------------------------------

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


def test_container_and_daemonset_together_see_the_pod_change(api, entrypoint):
    """The DaemonSet check keeps this pod's node; the container check must still see it change."""
    this_pod(api, containers=("app", "libvirt"))
    api.put(k8s.daemonset("ovs", match_labels={"app": "ovs"}))  # no pod of it on node-a: met
    run = entrypoint(dict(api.env(), DEPENDENCY_CONTAINER="libvirt", DEPENDENCY_DAEMONSET="ovs",
                          **ME))
    wait_until_waiting(api)
    this_pod(api, containers=("app", "libvirt"), ready_containers=("libvirt",))
    assert_execd_cleanly(run)


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


# Item 3: a 200 answer of the wrong shape is malformed (retried), never an empty answer --------

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


def test_list_answer_of_the_wrong_shape_is_retried(api, entrypoint):
    api.deny("watch", "jobs")
    api.put(k8s.job("j", active=1))
    run = entrypoint(dict(api.env(), DEPENDENCY_JOBS="j", ENTRYPOINT_POLL_INTERVAL="0.1"))
    wait_until_waiting(api)
    api.inject(status=200, body=b'{"kind": "JobList", "metadata": {}, "items": 5}', times=3)
    api.put(k8s.job("j", succeeded=1))
    run.assert_execd()
    assert "Traceback" not in run.stderr and "malformed answer" in run.stdout


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


# Answers of a custom resource's kind ----------------------------------------------------------

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


# Item 12 (on the wire): a name with a comma is escaped in the fieldSelector -------------------

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


def test_item_12_custom_resource_named_with_a_comma(api, entrypoint):
    """Issue 7 item 12: `metadata.name=a,b` would be two requirements; the name is escaped."""
    api.register_resource("example.com/v1", "widgets", "Widget")
    api.put(k8s.custom("example.com/v1", "Widget", "a,b", "default", status=READY))
    run = entrypoint(dict(api.env(), ENTRYPOINT_TIMEOUT="5", DEPENDENCY_CUSTOM_RESOURCE=json.dumps(
        [{"apiVersion": "example.com/v1", "kind": "Widget", "name": "a,b",
          "conditions": [{"type": "Ready"}]}])))
    assert_execd_cleanly(run)


# One rule for what is believed: lists, gets, watch events and bookmarks -------------------------

def test_watch_event_of_an_older_incarnation_is_not_believed(api, entrypoint):
    """The list shows Job j re-created and running; the watch then replays the old j, succeeded."""
    old = api.put(k8s.job("j", succeeded=1))
    api.delete("batch/v1", "Job", "j")
    api.put(k8s.job("j", active=1))
    api.put(k8s.job("filler", active=1))  # the list's version is newer than j's
    rule = api.inject(raw=chunked_stream({"type": "ADDED", "object": old}, hold=2.0),
                      match="watch=1", times=1)
    run = entrypoint(dict(api.env(), DEPENDENCY_JOBS="j", **FAST))
    wait_for(lambda: rule.served)
    assert_waits(run, 1.5)
    api.put(k8s.job("j", succeeded=1))
    run.assert_execd()


def test_watch_event_older_than_the_object_listed_is_not_believed(api, entrypoint):
    """The slice is listed not ready; a MODIFIED from before it says ready."""
    ready = api.put(k8s.endpoint_slice("db"))
    api.put(k8s.endpoint_slice("db", addresses=(("10.0.0.1", False),)))
    rule = api.inject(raw=chunked_stream({"type": "MODIFIED", "object": ready}, hold=2.0),
                      match="watch=1", times=1)
    run = entrypoint(dict(api.env(), DEPENDENCY_SERVICE="db", **FAST))
    wait_for(lambda: rule.served)
    assert_waits(run, 1.5)
    api.put(k8s.endpoint_slice("db"))
    run.assert_execd()


def test_a_bookmark_never_moves_the_resume_point_back(api, entrypoint):
    for name in ("a", "b", "c"):
        api.put(k8s.job(name, active=1))
    api.put(k8s.job("j", active=1))
    listed = int(api.resource_version)
    bookmark = {"type": "BOOKMARK", "object": {"kind": "Job", "apiVersion": "batch/v1",
                                               "metadata": {"resourceVersion": "1"}}}
    rule = api.inject(raw=chunked_stream(bookmark), match="watch=1", times=1)
    run = entrypoint(dict(api.env(), DEPENDENCY_JOBS="j", **FAST))
    wait_for(lambda: rule.served and api.open_watches >= 1)
    resumed = [r for r in api.requests if r.verb == "watch"]
    assert resumed and int(resumed[-1].query["resourceVersion"]) >= listed, resumed
    api.put(k8s.job("j", succeeded=1))
    run.assert_execd()


def test_one_rule_for_every_answer():
    """A list from storage, a get, an event and a bookmark: none may go behind what was seen."""
    def obj(version, name="j"):
        return {"metadata": {"name": name, "namespace": "d", "resourceVersion": str(version)}}

    fresh = ke.Freshness()
    held = {("d", "j"): obj(40)}
    fresh.took("100", from_cache=False)
    assert not fresh.believes(held, {("d", "j"): obj(20)}, "100", from_cache=False)
    assert not fresh.believes(held, {("d", "j"): obj(20)}, "20", from_cache=False)
    assert fresh.believes(held, {("d", "j"): obj(41)}, "101", from_cache=False)
    assert not fresh.believes_change(obj(40), 20)    # older than the object held
    assert not fresh.believes_change(None, 20)       # gone by the version seen
    assert fresh.believes_change(obj(40), 120)
    fresh.moved(120)
    fresh.moved(3)                                   # a bookmark from the past
    assert fresh.version == "120" and fresh.seen == 120


# A wrong version, or versions that went back, never wedge a collection ---------------------------

def test_a_bookmark_from_the_future_does_not_wedge_what_is_believed(api, entrypoint):
    """A bookmark holds no object: however far ahead, it never makes a real change look old."""
    run = entrypoint(dict(api.env(), DEPENDENCY_JOBS="j", **FAST))  # Job j not created yet
    wait_until_waiting(api)
    job = k8s.job("j", succeeded=1)  # told by the raw stream below only, never stored
    job["metadata"].update(namespace="default", resourceVersion=str(int(api.resource_version) + 1))
    bookmark = {"kind": "Job", "apiVersion": "batch/v1",
                "metadata": {"resourceVersion": "99999999999"}}
    api.inject(match="watch=1", times=1, raw=chunked_stream(
        {"type": "BOOKMARK", "object": bookmark}, {"type": "ADDED", "object": job}, hold=5))
    api.close_watches()
    assert_execd_cleanly(run)


def test_a_list_with_an_inflated_version_does_not_wedge_polling(api, entrypoint):
    api.deny("watch", "jobs")
    run = entrypoint(dict(api.env(), DEPENDENCY_JOBS="j", **FAST))
    wait_until_waiting(api)
    listed = {"kind": "JobList", "apiVersion": "batch/v1", "items": [],
              "metadata": {"resourceVersion": "99999999999"}}
    rule = api.inject(match="jobs", raw=http("200 OK", as_json(listed)), times=1)
    wait_for(lambda: rule.served)
    api.put(k8s.job("j", succeeded=1))
    assert_execd_cleanly(run)


def test_versions_that_went_back_start_the_collection_over():
    """An etcd restored without bumping its revision: storage answers older than what was held
    are not believed, and the third in a row starts the collection over."""
    def job(version, succeeded):
        return {("d", "j"): {"metadata": {"name": "j", "namespace": "d",
                                          "resourceVersion": str(version)},
                             "status": {"succeeded": succeeded}}}

    collection = ke.Collection(None, ("batch/v1", "jobs", "d", None, None), "Job", "/", "poll")
    assert collection.took(job(500, 0), "600", False, 0.0)
    assert not collection.took(job(300, 1), "400", False, 1.0)
    assert not collection.took(job(300, 1), "400", False, 2.0)
    assert collection.took(job(300, 1), "400", False, 3.0)
    assert collection.items == job(300, 1) and collection.freshness.seen == 400
