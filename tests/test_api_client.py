"""The API client: HTTPS requests with the service-account token (read again every minute and
after a 401), an API server given by URL or reached through kubectl proxy, answers no server should
give (raw bytes, cut short, slow, endless, oversized, closing the connection), one deadline for
each request from the name lookup to its last byte, and TLS as client-go does it."""

import itertools
import json
import re
import shutil
import threading
import time

import pytest
import trustme

import fakeapi as k8s
import kubernetes_entrypoint as ke
from certs import Authority
from conftest import fetch, wait_for
from hostile import (CHUNKED_200, as_json, assert_execd_cleanly, assert_waits,
                     assert_waits_out_the_fault, chunk, gone, http, job_succeeds, list_body,
                     wait_for_job)
from scenarios import client_for, ke_run


MIB = 1 << 20


# Requests -------------------------------------------------------------------------------------

def test_connection_closed_by_the_server_is_reopened(api):
    client = client_for(api)
    client.get("/api/v1")
    api.inject(reset=True)
    assert client.get("/api/v1")["kind"] == "APIResourceList"
    assert api.connections == 2


def test_errors_carry_the_status_message(api):
    client = client_for(api)
    api.inject(status=500)
    with pytest.raises(ke.ApiError) as caught:
        client.get("/api/v1")
    assert caught.value.status == 500
    api.inject(status=200, body=b'{"kind":')
    with pytest.raises(ke.ApiError) as caught:
        client.get("/api/v1")
    assert "malformed" in str(caught.value)
    with pytest.raises(ke.ApiError) as caught:
        client.get(client.path("v1", "pods", "default", "nope"))
    assert caught.value.status == 404 and 'pods "nope" not found' in str(caught.value)


def test_paths():
    client = ke.ApiClient("http://127.0.0.1:8001", "/nonexistent")  # plain http: no files needed
    assert client.path("v1", "pods", "ns", "p") == "/api/v1/namespaces/ns/pods/p"
    assert client.path("apps/v1", "daemonsets", "ns") == "/apis/apps/v1/namespaces/ns/daemonsets"
    assert client.path("example.com/v1", "gadgets", None, "g") == "/apis/example.com/v1/gadgets/g"
    assert client.path("example.com/v1", None) == "/apis/example.com/v1"
    proxied = ke.ApiClient("http://localhost:8001/k8s/clusters/c1/", "/nonexistent")
    assert proxied.path("v1", "pods", "ns") == "/k8s/clusters/c1/api/v1/namespaces/ns/pods"


# The token ------------------------------------------------------------------------------------

def test_token_reread_after_401(api):
    client = client_for(api)
    client.get("/api/v1")
    api.rotate_token()
    api.revoke_old_tokens()  # the old token is refused from now on
    assert client.get("/api/v1")["kind"] == "APIResourceList"
    statuses = [r.status for r in api.requests]
    assert statuses == [200, 401, 200]


def test_token_reread_every_minute(tmp_path):
    path = tmp_path / "token"
    path.write_text("first\n")
    now = [100.0]
    token = ke.TokenFile(str(path), clock=lambda: now[0])
    path.write_text("second")
    now[0] += 59
    assert token.current() == "first"
    now[0] += 2
    assert token.current() == "second"
    path.write_text("")  # a failed reread keeps the token it had
    now[0] += 61
    assert token.current() == "second"


def test_refused_token_is_an_api_error_not_a_crash(api):
    client = client_for(api)
    (api.sa_dir / "token").write_text("stolen")
    client.token.refresh()
    with pytest.raises(ke.ApiError) as caught:
        client.get("/api/v1")
    assert caught.value.status == 401


# An API server given by URL -------------------------------------------------------------------

def test_api_server_url_with_serviceaccount_files(api, entrypoint):
    api.put(k8s.endpoint_slice("db"))
    env = {"ENTRYPOINT_API_SERVER": api.url, "ENTRYPOINT_SERVICEACCOUNT_DIR": str(api.sa_dir),
           "DEPENDENCY_SERVICE": "db"}
    entrypoint(env).assert_execd()
    review, read = api.requests  # what the account may do, then the one read
    assert (review.resource, review.status, read.status) == ("selfsubjectrulesreviews", 201, 200)


class LocalProxy:
    """What `kubectl proxy` is to the entrypoint: plain HTTP on 127.0.0.1, forwarding every GET to
    the API server over verified HTTPS with the credentials added on the way."""

    def __init__(self, api):
        import http.client
        import http.server
        import ssl
        import threading
        context = ssl.create_default_context(cafile=str(api.ca_path))
        self.seen_headers = []
        proxy = self

        class Handler(http.server.BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *args):
                pass

            def do_GET(self):
                proxy.seen_headers.append(dict(self.headers))
                upstream = http.client.HTTPSConnection(api.host, api.port, context=context,
                                                       timeout=10)
                upstream.request("GET", self.path, headers={"Authorization": "Bearer " + api.token})
                answer = upstream.getresponse()
                body = answer.read()  # no streaming: enough for --check, which never watches
                upstream.close()
                self.send_response(answer.status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

        self.server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        self.url = "http://127.0.0.1:%d" % self.server.server_address[1]
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def close(self):
        self.server.shutdown()
        self.server.server_close()


def test_through_kubectl_proxy_over_plain_http(api, entrypoint, tmp_path):
    api.put(k8s.job("init", active=1))
    proxy = LocalProxy(api)
    try:
        env = {"ENTRYPOINT_API_SERVER": proxy.url, "DEPENDENCY_JOBS": "init",
               "ENTRYPOINT_SERVICEACCOUNT_DIR": str(tmp_path / "none")}  # no token, no CA needed
        run = ke_run(entrypoint, env, ["--check"])
        assert run.finish() == 1 and "not succeeded (1 active, 0 failed)" in run.stdout
        api.put(k8s.job("init", succeeded=1))
        run = ke_run(entrypoint, env, ["--check"])
        assert run.finish() == 0, run.stdout + run.stderr
    finally:
        proxy.close()
    assert proxy.seen_headers and not any("Authorization" in h for h in proxy.seen_headers)


# Raw answers from the fake --------------------------------------------------------------------

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


def job_requests(api):
    return [r for r in api.requests if r.resource == "jobs"]


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


# Item 7: a broken answer is a failed request, not a traceback and exit 1 ----------------------

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


# Answers that end the connection after them ---------------------------------------------------

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


# Item 8: every request has a total deadline, ENTRYPOINT_REQUEST_TIMEOUT -----------------------

def test_every_request_has_a_timeout(api):
    client = client_for(api, timeout=0.5)
    api.inject(hang=5)
    start = time.monotonic()
    with pytest.raises(ke.ApiError) as caught:
        client.get("/api/v1")
    assert time.monotonic() - start < 3
    assert caught.value.status is None
    assert client.get("/api/v1")["kind"] == "APIResourceList"  # and it recovers


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


# Item 9: an answer or watch line past the size cap is malformed, never held in memory ---------

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


# The name lookup, within the request's deadline -----------------------------------------------

class SilentServer:
    """Accepts TCP connections and never says a word: a TLS handshake with it never ends."""

    def __init__(self):
        import socket
        self.sock = socket.socket()
        self.sock.bind(("127.0.0.1", 0))
        self.sock.listen(8)
        self.port = self.sock.getsockname()[1]

    def close(self):
        self.sock.close()


@pytest.fixture
def silent_server():
    server = SilentServer()
    yield server
    server.close()


def slow_lookup(monkeypatch, name, release=None, seconds=0.0):
    """socket.getaddrinfo for `name` answers 127.0.0.1 after `seconds`, or once `release` is set;
    returns the list of names looked up."""
    import socket
    real, calls = socket.getaddrinfo, []

    def getaddrinfo(host, port, *args, **kwargs):
        if host != name:
            return real(host, port, *args, **kwargs)
        calls.append(host)
        if release is not None:
            release.wait()
        time.sleep(seconds)
        return real("127.0.0.1", port, *args, **kwargs)

    monkeypatch.setattr(socket, "getaddrinfo", getaddrinfo)
    return calls


def test_name_lookup_connect_and_handshake_share_the_request_timeout(silent_server, api,
                                                                     monkeypatch):
    """A lookup taking 1 s leaves 1 s of a 2 s timeout for the handshake, not 2 s more."""
    slow_lookup(monkeypatch, "slow.invalid", seconds=1.0)
    client = ke.ApiClient("https://slow.invalid:%d" % silent_server.port, str(api.sa_dir),
                          timeout=2.0)
    start = time.monotonic()
    with pytest.raises(ke.ApiError) as caught:
        client.get("/api/v1")
    assert 1.9 < time.monotonic() - start < 2.7
    assert "within 2s" in str(caught.value)


def test_a_name_lookup_that_never_ends_is_abandoned_and_never_started_twice(api, monkeypatch):
    release = threading.Event()
    calls = slow_lookup(monkeypatch, "stuck.invalid", release=release)
    client = ke.ApiClient("https://stuck.invalid:%d" % api.port, str(api.sa_dir), timeout=0.5)
    try:
        for _ in range(2):
            start = time.monotonic()
            with pytest.raises(ke.ApiError) as caught:
                client.get("/api/v1")
            assert time.monotonic() - start < 1.5 and "within 0.5s" in str(caught.value)
        assert calls == ["stuck.invalid"]  # the second request waited for the same lookup
    finally:
        release.set()
    # Once the lookup answers, the next request uses its answer: it reaches the server (whose
    # certificate does not name stuck.invalid, so it is refused there, as it should be).
    with pytest.raises(ke.ApiError) as caught:
        client.get("/api/v1")
    assert "not trusted: Hostname mismatch" in str(caught.value) and calls == ["stuck.invalid"]
    assert not ke.LOOKUPS


def test_a_lookup_that_failed_after_its_request_gave_up_is_not_reused(api, monkeypatch):
    import socket
    release, calls, real = threading.Event(), [], socket.getaddrinfo

    def getaddrinfo(host, port, *args, **kwargs):
        if host != "flaky.invalid":
            return real(host, port, *args, **kwargs)
        calls.append(host)
        if len(calls) == 1:
            release.wait()
            raise socket.gaierror(socket.EAI_AGAIN, "Temporary failure in name resolution")
        return real("127.0.0.1", port, *args, **kwargs)

    monkeypatch.setattr(socket, "getaddrinfo", getaddrinfo)
    client = ke.ApiClient("https://flaky.invalid:%d" % api.port, str(api.sa_dir), timeout=0.5)
    with pytest.raises(ke.ApiError) as caught:
        client.get("/api/v1")
    assert "timed out" in str(caught.value) or "within 0.5s" in str(caught.value)
    release.set()
    wait_for(lambda: not any(t.name == "lookup" for t in threading.enumerate()))
    with pytest.raises(ke.ApiError) as caught:  # a fresh lookup, which reaches the server
        client.get("/api/v1")
    assert "not trusted: Hostname mismatch" in str(caught.value) and len(calls) == 2


def test_a_failed_name_lookup_is_a_reason(api, monkeypatch):
    import socket

    def getaddrinfo(host, *args, **kwargs):
        raise socket.gaierror(socket.EAI_NONAME, "Name or service not known")

    monkeypatch.setattr(socket, "getaddrinfo", getaddrinfo)
    client = ke.ApiClient("https://nowhere.invalid:443", str(api.sa_dir), timeout=2.0)
    with pytest.raises(ke.ApiError) as caught:
        client.get("/api/v1")
    assert "cannot reach the API server" in str(caught.value)
    assert "Name or service not known" in str(caught.value)


# TLS as client-go does it, on every Python from 3.8 to 3.13: certificates real clusters serve
# are accepted even where OpenSSL's strict rules (on by default from Python 3.13) would refuse them,
# and everything client-go refuses is refused, with the reason in the error.

def test_server_verified_against_the_serviceaccount_ca(api, tmp_path):
    other = tmp_path / "other-sa"
    shutil.copytree(str(api.sa_dir), str(other))
    trustme.CA().cert_pem.write_to_path(str(other / "ca.crt"))
    client = ke.ApiClient(api.url, str(other))
    with pytest.raises(ke.ApiError) as caught:
        client.get("/api/v1")
    assert caught.value.status is None and "certificate is not trusted" in str(caught.value)
    assert api.requests == []  # nothing was sent, not even the token


def test_missing_ca_is_a_configuration_error(api):
    (api.sa_dir / "ca.crt").unlink()
    with pytest.raises(ke.ConfigError) as caught:
        client_for(api)
    assert "ca.crt" in str(caught.value)


def serve(tmp_path, certificate, key, ca_pem):
    return k8s.FakeKubeAPI(tmp_path / "api", tls=(certificate, key, ca_pem))


ACCEPTED = {
    "CA without keyUsage": (dict(key_usage=False), {}),
    "CA without subject key identifier": (dict(subject_key_id=False), {}),
    "server certificate without authority key identifier": ({}, dict(authority_key_id=False)),
    "all three, as older clusters serve them": (dict(key_usage=False, subject_key_id=False),
                                                dict(authority_key_id=False)),
    "SAN with the IP only": ({}, dict(names=("127.0.0.1",))),
}


@pytest.mark.parametrize("case", sorted(ACCEPTED))
def test_certificates_client_go_accepts_are_accepted(tmp_path, case):
    ca_options, server_options = ACCEPTED[case]
    authority = Authority(**ca_options)
    with serve(tmp_path, *authority.issue(**server_options), authority.pem) as api:
        client = ke.ApiClient(api.url, str(api.sa_dir))
        assert client.get("/api/v1")["kind"] == "APIResourceList"


def refused(tmp_path, certificate, key, ca_pem):
    with serve(tmp_path, certificate, key, ca_pem) as api:
        client = ke.ApiClient(api.url, str(api.sa_dir))
        with pytest.raises(ke.ApiError) as caught:
            client.get("/api/v1")
        assert api.requests == []  # nothing was sent: not the token, not the request
        return str(caught.value)


def test_another_ca_is_refused(tmp_path):
    certificate, key = Authority().issue()
    reason = refused(tmp_path, certificate, key, Authority().pem)
    assert "certificate is not trusted: unable to get local issuer certificate" in reason
    assert reason.endswith("/ca.crt)")  # where the CA it was verified against is


@pytest.mark.parametrize("names", [("10.0.0.1", "example.com"), ()],
                         ids=["another name", "name only in the subject CN"])
def test_a_certificate_for_another_name_is_refused(tmp_path, names):
    authority = Authority()
    certificate, key = authority.issue(names=names, common_name="127.0.0.1")
    reason = refused(tmp_path, certificate, key, authority.pem)
    assert "not trusted" in reason and "mismatch" in reason


@pytest.mark.parametrize("valid_from, valid_until, words", [
    (-30, -1, "expired"), (1, 30, "not yet valid")])
def test_a_certificate_outside_its_validity_is_refused(tmp_path, valid_from, valid_until, words):
    authority = Authority()
    certificate, key = authority.issue(valid_from=valid_from, valid_until=valid_until)
    reason = refused(tmp_path, certificate, key, authority.pem)
    assert "not trusted" in reason and words in reason


def test_end_to_end_with_a_ca_strict_mode_refuses(tmp_path, entrypoint):
    """The process as it runs in a pod, against the certificates of an older cluster."""
    authority = Authority(key_usage=False, subject_key_id=False)
    with serve(tmp_path, *authority.issue(authority_key_id=False), authority.pem) as api:
        api.put(k8s.endpoint_slice("db"))
        entrypoint(dict(api.env(), DEPENDENCY_SERVICE="db")).assert_execd()


def test_tls_before_1_2_is_refused_on_every_python():
    """As Go's default; 3.8 and 3.9 would leave the floor to the system's OpenSSL policy."""
    import ssl
    context = ke.tls_context(None)  # the system's CAs: any will do here
    assert context.minimum_version >= ssl.TLSVersion.TLSv1_2
