"""Events on the pod: what it waits for, where `kubectl describe pod` and `kubectl get events`
show it. End to end through the process, and the write budget with a clock of the test's own."""

import time

import pytest

import fakeapi as k8s
import kubernetes_entrypoint as ke
from conftest import FakeClock, wait_for
from scenarios import wait_until_waiting


def this_pod(api):
    return api.put(k8s.pod("web-0", node="node-a"))


def waiting_on_mariadb(api, **extra):
    """The environment of a pod web-0 waiting for Service mariadb (0 of 2 endpoints ready)."""
    api.put(k8s.endpoint_slice("mariadb", "openstack", addresses=(("10.0.0.1", False),
                                                               ("10.0.0.2", False))))
    return dict(api.env(), DEPENDENCY_SERVICE="openstack:mariadb", POD_NAME="web-0", **extra)


def make_ready(api):
    api.put(k8s.endpoint_slice("mariadb", "openstack", addresses=(("10.0.0.1", True),)))


def event_writes(api):
    return [r for r in api.requests if r.resource == "events"]


def test_waiting_then_met_on_the_pod(api, entrypoint):
    pod = this_pod(api)
    run = entrypoint(waiting_on_mariadb(api))
    [waiting] = wait_for(api.events)
    assert waiting["involvedObject"] == {"apiVersion": "v1", "kind": "Pod", "name": "web-0",
                                         "namespace": "default", "uid": pod["metadata"]["uid"]}
    assert (waiting["type"], waiting["reason"], waiting["count"]) == ("Normal", "Waiting", 1)
    assert waiting["message"] == "Service mariadb in namespace openstack: 0 of 2 endpoints ready"
    assert waiting["source"] == {"component": "kubernetes-entrypoint", "host": "node-a"}
    assert waiting["firstTimestamp"] == waiting["lastTimestamp"]
    make_ready(api)
    run.assert_execd()
    met = api.events()[-1]
    assert (met["type"], met["reason"]) == ("Normal", "DependenciesMet")
    assert met["message"].startswith("its dependency met after ")
    assert met["involvedObject"] == waiting["involvedObject"]


def test_no_wait_no_event(api, entrypoint):
    """A pod whose dependencies are met at once has nothing to explain: no write at all."""
    this_pod(api)
    env = waiting_on_mariadb(api)
    make_ready(api)
    entrypoint(env).assert_execd()
    assert event_writes(api) == []


def test_a_new_reason_is_a_new_event(api, entrypoint):
    this_pod(api)
    run = entrypoint(waiting_on_mariadb(api, DEPENDENCY_JOBS="db-init"))
    api.put(k8s.job("db-init", active=1))
    wait_for(lambda: len(api.events()) == 2)
    messages = sorted(e["message"] for e in api.events())
    assert messages == ["Job db-init in namespace default: not succeeded (1 active, 0 failed)",
                        "Service mariadb in namespace openstack: 0 of 2 endpoints ready"]
    run.stop()


def test_timeout_is_a_warning_with_what_was_unmet(api, entrypoint):
    this_pod(api)
    run = entrypoint(waiting_on_mariadb(api, ENTRYPOINT_TIMEOUT="1"))
    assert run.finish() == 1
    last = api.events()[-1]
    assert (last["type"], last["reason"]) == ("Warning", "TimedOut")
    assert last["message"] == ("timed out after 1s waiting for 1 of 1 dependencies; Service "
                               "mariadb in namespace openstack: 0 of 2 endpoints ready")


def test_sigterm_is_a_warning(api, entrypoint):
    this_pod(api)
    run = entrypoint(waiting_on_mariadb(api))
    wait_for(api.events)
    run.process.terminate()
    assert run.finish() == 143
    last = api.events()[-1]
    assert (last["type"], last["reason"]) == ("Warning", "Stopped")
    assert last["message"].startswith("stopped by SIGTERM after ")


def test_configuration_error_is_a_warning(api, entrypoint):
    this_pod(api)
    run = entrypoint(dict(api.env(), POD_NAME="web-0", DEPENDENCY_SERVICE="Bad_Name"))
    assert run.finish() == 2
    [event] = api.events()
    assert (event["type"], event["reason"]) == ("Warning", "ConfigurationError")
    assert event["message"].startswith("DEPENDENCY_SERVICE: 'Bad_Name' is not a valid")


def test_events_the_role_does_not_allow_are_not_sent(api, entrypoint):
    """The rules review says no create on events: said once, and nothing is sent to be refused,
    not even the read of this pod (its uid is only for the Events)."""
    this_pod(api)
    api.deny("create", "events")
    run = entrypoint(waiting_on_mariadb(api, DEPENDENCY_JOBS="db-init", ENTRYPOINT_TIMEOUT="2"))
    api.put(k8s.job("db-init", active=1))
    assert run.finish() == 1
    assert event_writes(api) == [] and api.refused() == []
    assert not [r for r in api.requests if r.resource == "pods" and r.name == "web-0"]
    said = [line for line in run.stdout.splitlines() if "Events on pod web-0" in line]
    assert len(said) == 1 and "INFO" in said[0]
    assert "the Role allows no 'create' on 'events' in namespace default" in said[0]


def test_refusal_is_said_once_and_never_retried(api, entrypoint):
    """Without a rules review (refused too), the first write is tried, refused, and the last."""
    this_pod(api)
    api.deny("create", "events")
    api.deny("create", "selfsubjectrulesreviews")
    run = entrypoint(waiting_on_mariadb(api, DEPENDENCY_JOBS="db-init", ENTRYPOINT_TIMEOUT="2"))
    api.put(k8s.job("db-init", active=1))
    assert run.finish() == 1
    assert len(event_writes(api)) == 1  # not the second Waiting, not the TimedOut
    said = [line for line in run.stdout.splitlines() if "Events on pod web-0" in line]
    assert len(said) == 1 and "INFO" in said[0]
    assert "allow 'create' and 'patch' on 'events' in namespace default" in said[0]
    assert api.events() == []


def test_unreadable_pod_events_go_without_uid(api, entrypoint):
    this_pod(api)
    api.deny("get", "pods")
    run = entrypoint(waiting_on_mariadb(api))
    [event] = wait_for(api.events)
    assert "uid" not in event["involvedObject"]
    run.process.terminate()
    run.finish()
    assert "`kubectl describe pod` does not" in run.stdout
    assert api.refused() == []  # the rules review said so: the pod was not asked for


def test_hung_events_endpoint_does_not_delay_the_command(api, entrypoint):
    this_pod(api)
    api.inject(hang=30, match="/events", times=None)
    run = entrypoint(waiting_on_mariadb(api, ENTRYPOINT_REQUEST_TIMEOUT="20"))
    wait_until_waiting(api)
    wait_for(lambda: event_writes(api))
    ready = time.monotonic()
    make_ready(api)
    wait_for(run.report, timeout=10)
    assert time.monotonic() - ready < 3  # the hang is 30 s; exec waits 0.3 s at most for events
    run.assert_execd()


def test_failing_events_endpoint_changes_nothing(api, entrypoint):
    this_pod(api)
    api.inject(status=500, match="/events", times=None)
    run = entrypoint(waiting_on_mariadb(api))
    wait_for(lambda: event_writes(api))
    make_ready(api)
    run.assert_execd()
    assert "Traceback" not in run.stderr and run.stderr == ""


@pytest.mark.parametrize("env", [{"ENTRYPOINT_EVENTS": "false"}, {"ENTRYPOINT_EVENTS": "FALSE"},
                                 {"POD_NAME": ""}])
def test_turned_off(api, entrypoint, env):
    this_pod(api)
    run = entrypoint(dict(waiting_on_mariadb(api), **env))
    wait_until_waiting(api)
    make_ready(api)
    run.assert_execd()
    assert event_writes(api) == []


def test_bad_switch_is_a_configuration_error(api, entrypoint):
    run = entrypoint(dict(waiting_on_mariadb(api), ENTRYPOINT_EVENTS="no"))
    assert run.finish() == 2
    assert "ENTRYPOINT_EVENTS: 'no' is not true or false" in run.stderr
    assert run.report() is None


# The write budget, over ten minutes of a clock the test moves ---------------------------------

def events_on(api, clock):
    client = ke.ApiClient(api.url, str(api.sa_dir))
    return ke.Events(lambda: client, "default", "web-0", clock=clock,
                     wall=lambda: 1.7e9 + clock(), background=False)


def flap(api, events, clock, seconds, reasons=("0 of 2 endpoints ready", "1 of 2 endpoints ready")):
    """The reason changes every second for `seconds`; every due write is made as it falls due."""
    for second in range(seconds):
        clock.now += 1
        events.waiting("Service mariadb in namespace openstack", reasons[second // 7 % len(reasons)])
        while events.write_next(block=False):
            pass


def test_flapping_reason_is_counted_not_multiplied(api):
    this_pod(api)
    clock = FakeClock(1000.0)
    events = events_on(api, clock)
    flap(api, events, clock, 600)
    writes = event_writes(api)
    assert len(writes) <= 25  # one per 30 s at most
    assert {w.method for w in writes} == {"POST", "PATCH"}
    stored = api.events()
    assert len(stored) == 2  # one object per message; its count says how often
    assert sum(e["count"] for e in stored) == len(writes)
    assert all(e["lastTimestamp"] > e["firstTimestamp"] for e in stored)


def test_many_dependencies_share_one_budget(api):
    this_pod(api)
    clock = FakeClock(1000.0)
    events = events_on(api, clock)
    for second in range(600):
        clock.now += 1
        for n in range(40):
            events.waiting("Service db-%d in namespace default" % n, "reason %d" % (second % 2))
        while events.write_next(block=False):
            pass
    assert len(event_writes(api)) <= ke.EVENT_BURST + 600 / ke.EVENT_REFILL + 1


def test_failing_server_gets_no_more_writes(api):
    this_pod(api)
    api.inject(status=503, match="/events", times=None)
    clock = FakeClock(1000.0)
    events = events_on(api, clock)
    flap(api, events, clock, 600)
    assert len(event_writes(api)) <= 25


def test_expired_event_is_made_anew(api):
    this_pod(api)
    clock = FakeClock(1000.0)
    events = events_on(api, clock)
    events.waiting("Job db-init in namespace default", "not succeeded")
    assert events.write_next(block=False)
    [first] = api.events()
    api.delete("v1", "Event", first["metadata"]["name"])  # events expire after an hour
    clock.now += ke.EVENT_SPACING
    events.waiting("Job db-init in namespace default", "not succeeded")
    assert events.write_next(block=False)  # the PATCH: 404
    assert api.events() == [] and not events.write_next(block=False)  # one write per turn
    clock.now += ke.EVENT_SPACING
    assert events.write_next(block=False)
    [again] = api.events()
    assert again["message"] == first["message"] and again["count"] == 1


@pytest.mark.parametrize("option", ["--check", "--validate"])
def test_run_by_hand_writes_no_event(api, entrypoint, option):
    this_pod(api)
    run = entrypoint(dict(waiting_on_mariadb(api), DEPENDENCY_SERVICE="Bad_Name"),
                     arguments=[option])
    assert run.finish() == 2
    run = entrypoint(waiting_on_mariadb(api), arguments=[option])
    assert run.finish() == (1 if option == "--check" else 0)
    assert event_writes(api) == []


@pytest.mark.parametrize("option", ["--check", "--validate"])
@pytest.mark.parametrize("env", [{}, {"ENTRYPOINT_LOG_FORMAT": "xml"}])
def test_run_by_hand_with_a_bad_argument_writes_no_event(api, entrypoint, option, env):
    """An error found before the options are parsed is still an error of a run by hand."""
    this_pod(api)
    run = entrypoint(dict(waiting_on_mariadb(api), **env), arguments=[option, "--timeout", "x"])
    assert run.finish() == 2
    assert event_writes(api) == []


@pytest.mark.parametrize("fault", [dict(status=404, match="/events/"),  # every PATCH: 404
                                   dict(status=401, match="/events")])  # every write: 401
def test_budget_counts_every_write_the_server_gets(api, fault):
    this_pod(api)
    api.inject(times=None, **fault)
    clock = FakeClock(1000.0)
    events = events_on(api, clock)
    flap(api, events, clock, 600)
    assert len(event_writes(api)) <= 25
