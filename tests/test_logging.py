"""Logging: a line is one whole line of text, or one JSON record; control characters in text
from outside are escaped; the token is never printed, whole or in part, whatever echoes it."""

import json
import re
import secrets
import tracemalloc

import pytest

import fakeapi as k8s
import kubernetes_entrypoint as ke
from hostile import (FAST, as_json, assert_execd_cleanly, assert_waits, assert_waits_out_the_fault,
                     job_succeeds, stream, wait_for_job)
from scenarios import unmet_service


# JSON logs, and debug lines -------------------------------------------------------------------

def test_json_logs(api, entrypoint):
    run = entrypoint(dict(unmet_service(api), ENTRYPOINT_LOG_FORMAT="json", ENTRYPOINT_TIMEOUT="0.5"))
    assert run.finish() == 1
    records = [json.loads(line) for line in (run.stdout + run.stderr).splitlines()]
    assert records and all(set(r) <= {"time", "level", "message", "dependency"} for r in records)
    assert all(re.match(r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z$", r["time"]) for r in records)
    resolving = records[0]
    assert resolving == dict(resolving, level="info", message="Resolving Service mariadb in "
                             "namespace openstack", dependency="Service mariadb in namespace openstack")
    levels = {r["level"] for r in records}
    assert levels == {"info", "warning", "error"}


def test_debug_logs_every_request_without_the_token(api, entrypoint):
    api.put(k8s.endpoint_slice("db"))
    run = entrypoint(dict(api.env(), DEPENDENCY_SERVICE="db", ENTRYPOINT_LOG_LEVEL="debug"))
    run.assert_execd()
    requests = [line for line in run.stdout.splitlines() if line.startswith("Entrypoint DEBUG: ")]
    assert len(requests) == len(api.requests) == 2
    assert re.search(r"POST /apis/authorization\.k8s\.io/v1/selfsubjectrulesreviews: 201 in \d+ ms$",
                     requests[0])
    assert re.search(r"GET /apis/discovery\.k8s\.io/v1/namespaces/default/endpointslices\?"
                     r"labelSelector=kubernetes\.io%2Fservice-name%3Ddb: 200 in \d+ ms$", requests[1])
    assert api.token not in run.stdout + run.stderr and "Bearer" not in run.stdout + run.stderr


# Item 19: no control character reaches a text log line raw ------------------------------------

LOG_LINE = re.compile(r"Entrypoint (DEBUG|INFO|WARNING|ERROR): \d{4}/\d\d/\d\d \d\d:\d\d:\d\d "
                      r"[^\x00-\x1f\x7f]*")
FORGED_PATH = "/tmp/x\nEntrypoint INFO forged\r\x1b[2K"  # no colon: CONFIG/SOCKET refuse one
FORGED_STATUS = json.dumps({"kind": "Status", "status": "Failure", "code": 500,
                            "message": "boom\nEntrypoint INFO: forged"}).encode()


def assert_only_log_lines(run):
    for line in (run.stdout + run.stderr).splitlines():
        assert LOG_LINE.fullmatch(line), "not one whole log line: %r" % line


def test_item19_path_with_control_characters_is_escaped(entrypoint):
    """issue 7 item 19: a SOCKET path holding a newline, a carriage return and an escape."""
    run = entrypoint({"DEPENDENCY_SOCKET": FORGED_PATH, "ENTRYPOINT_TIMEOUT": "1"})
    assert run.finish() == 1
    assert_only_log_lines(run)
    assert "/tmp/x\\nEntrypoint INFO forged" in run.stdout  # shown, escaped


def test_item19_api_status_message_with_a_newline_is_escaped(api, entrypoint):
    """issue 7 item 19: the API server's Status message is text from outside."""
    api.inject(status=500, body=FORGED_STATUS, times=None)
    api.deny("watch", "endpointslices")
    run = entrypoint(dict(api.env(), DEPENDENCY_SERVICE="db", ENTRYPOINT_TIMEOUT="1"))
    assert run.finish() == 1
    assert_only_log_lines(run)
    assert "forged" in run.stdout + run.stderr


def test_item19_check_table_rows_are_one_line_each(api, entrypoint):
    """issue 7 item 19: --check's table, with both a path and a reason holding newlines."""
    api.inject(status=500, body=FORGED_STATUS, times=None)
    run = entrypoint(dict(api.env(), DEPENDENCY_SOCKET=FORGED_PATH, DEPENDENCY_SERVICE="db"),
                     arguments=["--check"])
    assert run.finish() == 1
    rows = [line for line in run.stdout.splitlines() if not LOG_LINE.fullmatch(line)]
    assert len(rows) == 3, rows  # the header and one row per dependency; log lines aside
    assert not any(re.search(r"[\x00-\x1f\x7f]", row) for row in rows), rows


# Item 5: the token is never printed -----------------------------------------------------------

def test_token_never_logged(api, entrypoint):
    api.deny("list", "endpointslices")
    api.put(k8s.endpoints("db"))
    run = entrypoint(dict(api.env(), DEPENDENCY_SERVICE="db"))
    run.assert_execd()
    assert api.token not in run.stdout + run.stderr
    assert "Authorization" not in run.stdout + run.stderr
    assert "list" in run.stdout and "endpointslices" in run.stdout  # the 403 named the rule


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
    monkeypatch.setattr(ke, "SECRETS", ke.types.SimpleNamespace(tokens=(), pieces=frozenset()))
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


# Only the current and the previous token are kept -----------------------------------------------

def test_only_the_current_and_the_previous_token_are_kept(tmp_path):
    """Issue 14 defect 4: 150 rotations of a 1 KB token grew the process by 17 MB."""
    path = tmp_path / "token"
    tokens = [secrets.token_urlsafe(768) for _ in range(151)]
    path.write_text(tokens[0])
    token = ke.TokenFile(str(path))
    tracemalloc.start()
    try:
        for value in tokens[1:]:
            path.write_text(value)
            token.refresh()
        grown = tracemalloc.get_traced_memory()[0]
    finally:
        tracemalloc.stop()
    assert grown < 2 << 20, grown
    assert len(ke.SECRETS.tokens) == 2 and len(ke.SECRETS.pieces) <= 2 * 1024
    assert ke.redact("old %s new %s" % tuple(tokens[-2:])) == "old [token] new [token]"
