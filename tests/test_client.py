"""API access and the waiting engine, in-process against the fake HTTPS API server."""

import shutil
import threading
import time

import pytest
import trustme

import fakeapi as k8s
import kubernetes_entrypoint as ke
from conftest import wait_for


def client_for(api, **kwargs):
    return ke.ApiClient(api.url, str(api.sa_dir), **kwargs)


def test_get_list_and_one_kept_alive_connection(api):
    api.put(k8s.pod("me", labels={"app": "x"}))
    api.put(k8s.pod("other", labels={"app": "y"}))
    read = ke.ApiReader(client_for(api))
    assert read.get("v1", "pods", "default", "me")["metadata"]["name"] == "me"
    assert read.get("v1", "pods", "default", "missing") is None
    assert [p["metadata"]["name"] for p in read.list("v1", "pods", "default", labels="app=x")] == ["me"]
    assert read.list("v1", "pods", "elsewhere") == []
    assert api.connections == 1


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


def test_every_request_has_a_timeout(api):
    client = client_for(api, timeout=0.5)
    api.inject(hang=5)
    start = time.monotonic()
    with pytest.raises(ke.ApiError) as caught:
        client.get("/api/v1")
    assert time.monotonic() - start < 3
    assert caught.value.status is None
    assert client.get("/api/v1")["kind"] == "APIResourceList"  # and it recovers


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


def test_ipv6_host_in_brackets():
    env = {"KUBERNETES_SERVICE_HOST": "fd00::1", "KUBERNETES_SERVICE_PORT": "443"}
    assert ke.api_server_url(env, "DEPENDENCY_SERVICE") == "https://[fd00::1]:443"


def test_refusal_logged_once_with_verb_resource_and_namespace(api, capsys):
    api.deny("list", "jobs", "openstack")
    now = [0.0]
    read = ke.ApiReader(client_for(api), clock=lambda: now[0])
    with pytest.raises(ke.ApiError) as caught:
        read.list("batch/v1", "jobs", "openstack", labels="app=x")
    assert caught.value.status == 403
    for _ in range(3):
        now[0] += 60
        read.poll(read.end())
    assert len([r for r in api.requests if r.resource == "jobs"]) == 4
    lines = [line for line in capsys.readouterr().out.splitlines() if "refused" in line]
    assert len(lines) == 1
    assert "list jobs.batch in namespace openstack" in lines[0] and "'list' on jobs" in lines[0]


def parse(env):
    return ke.parse_dependencies(env, ke.read_settings(env))


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
