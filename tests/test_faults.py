"""Faults while waiting, then recovery: the command runs once its dependency is met, never early,
and the process never crashes. Each kind that reads the API, with watch allowed and refused."""

import time

import pytest

import fakeapi as k8s
from test_process import SCENARIOS, wait_until_waiting

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
        assert "'watch'" in run.stdout  # said once which verb is missing
        assert api.open_watches == 0


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


def test_list_refused_reads_by_name(api, entrypoint):
    """Custom resources often come with `get` only: the object is then polled by name."""
    env, _, met = SCENARIOS["custom_resource"]
    api.deny("list", "widgets")
    api.deny("watch", "widgets")
    crd_installed_but_not_ready(api)
    run = entrypoint(dict(api.env(), **env))
    wait_until_waiting(api)
    met(api)
    run.assert_execd()
    gets = [r for r in api.requests if r.verb == "get" and r.resource == "widgets"]
    assert len(gets) >= 2  # polled by name until the condition held
    assert run.stdout.count("API refused list widgets.example.com w in namespace default") == 1
    assert "polling it by name instead" in run.stdout


def test_list_answer_of_the_wrong_shape_is_retried(api, entrypoint):
    api.deny("watch", "jobs")
    api.put(k8s.job("j", active=1))
    run = entrypoint(dict(api.env(), DEPENDENCY_JOBS="j", ENTRYPOINT_POLL_INTERVAL="0.1"))
    wait_until_waiting(api)
    api.inject(status=200, body=b'{"kind": "JobList", "metadata": {}, "items": 5}', times=3)
    api.put(k8s.job("j", succeeded=1))
    run.assert_execd()
    assert "Traceback" not in run.stderr and "malformed answer" in run.stdout


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


def test_timeout_is_kept_even_while_requests_hang(api, entrypoint):
    api.inject(hang=60, times=None)
    run = entrypoint(dict(api.env(), DEPENDENCY_SERVICE="a,b,c", ENTRYPOINT_TIMEOUT="1.5"))
    start = time.monotonic()
    assert run.finish() == 1
    assert time.monotonic() - start < 5
    assert "timed out after 1s" in run.stderr and "Traceback" not in run.stderr
