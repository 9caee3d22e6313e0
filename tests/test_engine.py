"""The waiting engine: Waiting checks every dependency round after round until all are met,
logging a reason once when it changes; rounds start at a random phase and never come closer than
the interval, so pods started together do not poll in step; progress lines say what is unmet."""

import re
import threading
import time

import pytest

import fakeapi as k8s
import kubernetes_entrypoint as ke
from conftest import FakeClock, wait_for
from scenarios import client_for, parse, unmet_service


# Waiting, in-process against the fake API server ----------------------------------------------

def test_engine_polls_until_met_and_logs_reason_changes_once(api, capsys):
    api.put(k8s.job("init", active=1))
    deps = parse(dict(api.env(), DEPENDENCY_JOBS="init"))
    read = ke.ApiReader(client_for(api), interval=0.05, watch=False)
    timer = threading.Timer(0.5, api.put, [k8s.job("init", succeeded=1)])
    timer.start()
    ke.Waiting(deps, read, interval=0.05).run()
    timer.join()
    polls = [r for r in api.requests if r.resource == "jobs"]
    assert 5 <= len(polls) <= 15 and all(r.verb == "list" for r in polls)
    out = capsys.readouterr().out
    assert out.count("failed: not succeeded (1 active, 0 failed) .") == 1
    assert out.count("Dependency Job init in namespace default is resolved.") == 1


def test_api_errors_while_waiting_are_reasons_not_crashes(api, capsys):
    api.put(k8s.endpoint_slice("db"))
    deps = parse(dict(api.env(), DEPENDENCY_SERVICE="db"))
    api.inject(status=503, times=2)
    ke.Waiting(deps, ke.ApiReader(client_for(api), interval=0.05), interval=0.05).run()
    assert "503" in capsys.readouterr().out


# Poll rounds ----------------------------------------------------------------------------------

def round_times(randoms, rounds):
    """When a dependency read every round is checked, for the given random draws."""
    times, fake, draws = [], FakeClock(), iter(randoms)

    def check(dep, read):
        times.append(round(fake.now, 3))
        return ke.MET if len(times) > rounds else ke.not_met("not yet")

    dep = ke.Dependency(kind=ke.Kind("DEPENDENCY_SOCKET", None, check, "", needs_api=False),
                        label="x")
    ke.Waiting([dep], None, interval=2.0, clock=fake, sleep=fake.sleep,
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


# Progress lines and reasons -------------------------------------------------------------------

def test_progress_lines_say_what_is_unmet_and_for_how_long(api, entrypoint):
    run = entrypoint(dict(unmet_service(api), ENTRYPOINT_PROGRESS_INTERVAL="1"))
    seen = []  # read as they come: the second progress line, then the dependency is met
    while sum("Still waiting" in line for line in seen) < 2:
        seen.append(run.process.stdout.readline().rstrip("\n"))
        assert seen[-1], "ended before two progress lines"
    api.put(k8s.endpoint_slice("mariadb", "openstack"))
    run.assert_execd()
    progress = [line for line in seen + run.stdout.splitlines() if "Still waiting" in line]
    assert 2 <= len(progress) <= 3
    assert re.search(r"Entrypoint INFO: \S+ \S+ Still waiting after \ds for 1 of 1 dependencies: "
                     r"Service mariadb in namespace openstack: 0 of 2 endpoints ready$", progress[0])


def test_progress_line_names_a_few_of_many(entrypoint, tmp_path):
    """A thousand unmet dependencies make one short progress line; the timeout lists them all."""
    paths = [str(tmp_path / ("socket-%04d" % i)) for i in range(1000)]
    run = entrypoint({"DEPENDENCY_SOCKET": ",".join(paths), "ENTRYPOINT_PROGRESS_INTERVAL": "1",
                      "ENTRYPOINT_TIMEOUT": "1.8"})
    assert run.finish() == 1
    [progress] = [line for line in run.stdout.splitlines() if "Still waiting" in line]
    assert progress.endswith("; and 996 more") and progress.count("socket-") == 4
    assert len(progress) < 1000
    assert (run.stdout + run.stderr).count("still unmet: ") == 1000


def test_item21_reason_for_many_jobs_is_summarised(api, entrypoint):
    """issue 7 item 21: 300 matching Jobs, none succeeded."""
    for i in range(300):
        api.put(k8s.job("job-%d" % i, labels={"app": "x"}, active=1))
    run = entrypoint(dict(api.env(), DEPENDENCY_JOBS_JSON='[{"labels": {"app": "x"}}]',
                          ENTRYPOINT_PROGRESS_INTERVAL="1", ENTRYPOINT_TIMEOUT="3"))
    assert run.finish() == 1
    lines = (run.stdout + run.stderr).splitlines()
    assert max(len(line) for line in lines) <= 1000, max(len(line) for line in lines)
    assert "300" in run.stderr  # how many are not succeeded


# Jobs: absent counted as done after a grace, failed for good ended at once --------------------

def waiting_for_job(api, grace, **env):
    deps = parse(dict(api.env(), DEPENDENCY_JOBS="db-sync", **env))
    read = ke.ApiReader(client_for(api), interval=0.05, watch=False)
    return ke.Waiting(deps, read, interval=0.05, absent_grace=grace)


def run_in_thread(waiting):
    thread = threading.Thread(target=waiting.run, daemon=True)
    thread.start()
    return thread


def test_absent_job_counts_as_done_after_the_grace_judged_on_storage(api, capsys):
    waiting = waiting_for_job(api, 0.5, ENTRYPOINT_JOB_ABSENT_IS_DONE="true")
    started = time.monotonic()
    waiting.run()
    assert time.monotonic() - started >= 0.5
    [(label, why)] = waiting.counted_done
    assert label == "Job db-sync in namespace default"
    assert why.startswith("counted as done: absent for ")
    out = capsys.readouterr().out
    assert "failed: job not found (deleted, or not created yet); counted as done once absent for " \
           "0s (absent is done) ." in out
    assert "Dependency Job db-sync in namespace default is resolved (counted as done: absent " \
           "for " in out
    last = [r for r in api.requests if r.resource == "jobs"][-1]
    assert "resourceVersion" not in last.query  # the absence that counted was read from storage


def test_absent_job_without_the_setting_is_waited_for(api):
    waiting = waiting_for_job(api, 0.0)
    thread = run_in_thread(waiting)
    time.sleep(0.5)
    assert thread.is_alive() and waiting.unmet() == [
        ("Job db-sync in namespace default", "job not found (deleted, or not created yet)")]
    api.put(k8s.job("db-sync", succeeded=1))
    thread.join(5)
    assert not thread.is_alive() and waiting.counted_done == []


def test_job_recreated_within_the_grace_is_judged_as_it_is(api, capsys):
    """Helm's before-hook-creation: the old Job deleted, the new one created a moment later."""
    waiting = waiting_for_job(api, 1.0, ENTRYPOINT_JOB_ABSENT_IS_DONE="true")
    thread = run_in_thread(waiting)
    wait_for(lambda: waiting.pending[0].absent_since is not None)
    api.freeze_cache()  # a cache behind: it still says absent
    api.put(k8s.job("db-sync", active=1))
    time.sleep(1.5)
    assert thread.is_alive(), "an absence that ended counted as done"
    assert waiting.pending[0].absent_since is None
    api.thaw_cache()
    api.put(k8s.job("db-sync", succeeded=1))
    thread.join(5)
    assert not thread.is_alive() and waiting.counted_done == []
    assert "counted as done:" not in capsys.readouterr().out


def test_grace_zero_counts_at_the_first_storage_read(api):
    waiting = waiting_for_job(api, 0.0, ENTRYPOINT_JOB_ABSENT_IS_DONE="true")
    waiting.run()
    assert len(waiting.counted_done) == 1


def test_failed_for_good_ends_the_wait_with_fail_fast(api):
    api.put(k8s.job("db-sync", failed=6, failed_for_good=True))
    deps = parse(dict(api.env(), DEPENDENCY_JOBS="db-sync"))
    read = ke.ApiReader(client_for(api), interval=0.05, watch=False)
    with pytest.raises(ke.DependencyFailed) as failed:
        ke.Waiting(deps, read, interval=0.05, fail_fast=True).run()
    assert str(failed.value) == (
        "Job db-sync in namespace default: failed for good (BackoffLimitExceeded: "
        "Job has reached the specified backoff limit; 0 active, 6 failed): it succeeds only if "
        "re-created (ENTRYPOINT_FAIL_FAST)")


def test_failed_in_a_lagging_cache_only_does_not_end_the_wait(api):
    api.put(k8s.job("db-sync", active=1))
    deps = parse(dict(api.env(), DEPENDENCY_JOBS="db-sync"))
    read = ke.ApiReader(client_for(api), interval=0.05, watch=False)
    waiting = ke.Waiting(deps, read, interval=0.05, fail_fast=True)
    api.put(k8s.job("db-sync", failed=6, failed_for_good=True))
    api.freeze_cache()  # the cache says failed for good ...
    api.put(k8s.job("db-sync", active=1))  # ... but it was re-created
    thread = run_in_thread(waiting)
    time.sleep(0.5)
    assert thread.is_alive()
    api.thaw_cache()
    api.put(k8s.job("db-sync", succeeded=1))
    thread.join(5)
    assert not thread.is_alive()
