"""The waiting engine: Waiting checks every dependency round after round until all are met,
logging a reason once when it changes; rounds start at a random phase and never come closer than
the interval, so pods started together do not poll in step; progress lines say what is unmet."""

import re
import threading
import time

import fakeapi as k8s
import kubernetes_entrypoint as ke
from conftest import FakeClock
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
    time.sleep(3.5)
    api.put(k8s.endpoint_slice("mariadb", "openstack"))
    run.assert_execd()
    progress = [line for line in run.stdout.splitlines() if "Still waiting" in line]
    assert 2 <= len(progress) <= 4
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
