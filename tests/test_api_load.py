"""What waiting costs the API server: polls read from its watch cache once a version is known,
never back in time, with a way back to plain reads for servers that cannot answer so; and poll
rounds that do not march in step across pods started together."""

import time

import pytest

import fakeapi as k8s
import kubernetes_entrypoint as ke
from conftest import wait_for


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


# Poll rounds -------------------------------------------------------------------------------

class FakeTime:
    def __init__(self):
        self.now = 0.0

    def clock(self):
        return self.now

    def sleep(self, seconds):
        self.now += seconds


def round_times(randoms, rounds):
    """When a dependency read every round is checked, for the given random draws."""
    times, fake, draws = [], FakeTime(), iter(randoms)

    def check(dep, read):
        times.append(round(fake.now, 3))
        return ke.MET if len(times) > rounds else ke.not_met("not yet")

    dep = ke.Dependency(variable="DEPENDENCY_SOCKET", check=check, needs_api=False, label="x")
    ke.Waiting([dep], None, interval=2.0, clock=fake.clock, sleep=fake.sleep,
               random=lambda: next(draws)).run()
    return times


def test_rounds_start_at_a_random_phase_and_jitter():
    assert round_times([0.0, 0.5, 0.5, 0.5], 3) == [0.0, 0.2, 2.3, 4.4]
    assert round_times([1.0, 0.0, 1.0, 0.5], 3) == [0.0, 2.0, 4.0, 6.2]


def test_rounds_are_never_closer_than_the_interval():
    import random
    draws = [random.random() for _ in range(2001)]
    times = round_times(draws, 2000)
    gaps = [later - earlier for earlier, later in zip(times[1:], times[2:])]
    assert min(gaps) >= 2.0 - 1e-6 and max(gaps) <= 2.2 + 1e-6


# A cache that answers from the past ----------------------------------------------------------

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


# Reads merged per namespace ---------------------------------------------------------------------

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


def test_cache_is_tried_again_after_a_pause(api, entrypoint):
    api.cache_reads = "lagging"
    run = entrypoint(unmet_service(api))
    wait_for(lambda: sum(map(cache_read, slice_lists(api))) >= 3)
    api.cache_reads = "serve"
    wait_for(lambda: len(slice_lists(api)) >= 1 + 3 * 2 + ke.CACHE_PAUSE + 2, timeout=20)
    assert cache_read(slice_lists(api)[-1])  # the cache again, and it answers now
    make_ready(api)
    run.assert_execd()


# Found by review: each failed before its fix ------------------------------------------------

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
