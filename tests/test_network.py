"""DEPENDENCY_TCP and DEPENDENCY_HTTP: dependencies outside the cluster's objects, with real
listeners and HTTP servers on 127.0.0.1. Met when a connection succeeds, or a GET answers 2xx;
each checked once a round in a thread of its own (a slow host delays nothing else), every attempt
within the request timeout, the reason naming what went wrong; no token sent, no redirect
followed, no socket left to the command; bad values are exit 2."""

import http.server
import socket
import ssl
import threading
import time

import pytest
import trustme

import fakeapi as k8s
import kubernetes_entrypoint as ke
from conftest import wait_for
from hostile import assert_waits
from scenarios import parse

FAST = {"ENTRYPOINT_POLL_INTERVAL": "0.1"}


def free_port():
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def stop_listening(sock):
    """Close a listening socket and wake the thread accepting on it: no thread is left behind
    (a later test sending this process a signal must not find it there)."""
    try:
        sock.shutdown(socket.SHUT_RDWR)
    except OSError:
        pass
    sock.close()


class Listener:
    """A TCP port that accepts connections (and closes them) once listen() is called."""

    def __init__(self, family=socket.AF_INET, host="127.0.0.1"):
        self.sock = socket.socket(family, socket.SOCK_STREAM)
        self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self.sock.bind((host, 0))
        self.port = self.sock.getsockname()[1]
        self.accepted = 0

    def listen(self):
        self.sock.listen(16)
        threading.Thread(target=self._accept, daemon=True).start()
        return self

    def _accept(self):
        while True:
            try:
                conn, _ = self.sock.accept()
            except OSError:
                return
            self.accepted += 1
            conn.close()

    def close(self):
        stop_listening(self.sock)


class Web:
    """An HTTP(S) server on 127.0.0.1 answering GET from a list of (status, headers, body), the
    last one for ever; `hang` holds every answer back that many seconds. Requests are recorded."""

    def __init__(self, answers, tls=None, hang=0):
        web, self.answers, self.requests, self.hang = self, list(answers), [], hang
        self.closed = threading.Event()

        class Handler(http.server.BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def do_GET(self):
                web.requests.append((self.path, dict(self.headers)))
                if web.hang:
                    web.closed.wait(web.hang)  # cut short by close(): no thread left asleep
                status, headers, body = web.answers[0] if len(web.answers) == 1 \
                    else web.answers.pop(0)
                self.send_response(status)
                for name, value in headers:
                    self.send_header(name, value)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, *args):
                pass

        self.server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        if tls is not None:
            self.server.socket = tls.wrap_socket(self.server.socket, server_side=True)
        self.port = self.server.server_address[1]
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def url(self, path="/health", scheme="http"):
        return "%s://127.0.0.1:%d%s" % (scheme, self.port, path)

    def close(self):
        self.closed.set()
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture
def servers():
    made = []
    yield made
    for server in made:
        server.close()


def web(servers, answers, **kwargs):
    servers.append(Web(answers, **kwargs))
    return servers[-1]


OK = (200, [], b"ok")
UNAVAILABLE = (503, [("Content-Type", "text/html")],
               b"<html><body>\n  <h1>Service   Unavailable</h1>\x1b[2J" + b"x" * 20000)


# TCP ------------------------------------------------------------------------------------------

def test_tcp_port_that_starts_listening_later(entrypoint):
    listener = Listener()
    try:
        run = entrypoint(dict(FAST, DEPENDENCY_TCP="127.0.0.1:%d" % listener.port))
        assert "Resolving TCP 127.0.0.1:%d" % listener.port in run.process.stdout.readline()
        assert_waits(run, 0.5)
        listener.listen()
        report = run.assert_execd()
        assert report["sockets"] == "0"  # none left open for the command
        assert "cannot connect to 127.0.0.1:%d: connection refused" % listener.port in run.stdout
        assert "Dependency TCP 127.0.0.1:%d is resolved." % listener.port in run.stdout
    finally:
        listener.close()


def test_tcp_by_name_and_ipv6_and_with_a_scheme(entrypoint):
    listeners = [Listener().listen()]
    items = ["tcp://localhost:%d" % listeners[0].port]
    if socket.has_ipv6:
        try:
            listeners.append(Listener(socket.AF_INET6, "::1").listen())
            items.append("[::1]:%d" % listeners[1].port)
        except OSError:
            pass  # no IPv6 loopback here
    try:
        run = entrypoint(dict(FAST, DEPENDENCY_TCP=",".join(items)))
        run.assert_execd()
        assert all(listener.accepted >= 1 for listener in listeners)
    finally:
        for listener in listeners:
            listener.close()


def test_tcp_name_not_found_is_the_reason(entrypoint):
    run = entrypoint(dict(FAST, DEPENDENCY_TCP="no-such-host.invalid:5432", ENTRYPOINT_TIMEOUT="2",
                          ENTRYPOINT_REQUEST_TIMEOUT="1"))
    assert run.finish() == 1
    assert "still unmet: TCP no-such-host.invalid:5432: cannot connect to no-such-host.invalid: " \
        in run.stderr
    assert "name not found" in run.stderr or "timed out" in run.stderr


def test_a_met_dependency_stays_met(entrypoint, servers):
    """The listener goes away once met; the HTTP dependency is met later; the command runs."""
    listener = Listener().listen()
    server = web(servers, [(503, [], b"")])
    run = entrypoint(dict(FAST, DEPENDENCY_TCP="127.0.0.1:%d" % listener.port,
                          DEPENDENCY_HTTP=server.url()))
    wait_for(lambda: listener.accepted >= 1)
    listener.close()
    wait_for(lambda: len(server.requests) >= 2)
    server.answers[:] = [OK]
    run.assert_execd()


# HTTP -----------------------------------------------------------------------------------------

def test_http_503_then_200(entrypoint, servers):
    server = web(servers, [UNAVAILABLE, UNAVAILABLE, OK])
    run = entrypoint(dict(FAST, DEPENDENCY_HTTP=server.url("/health?ready=1")))
    report = run.assert_execd()
    assert report["sockets"] == "0"
    [line] = [line for line in run.stdout.splitlines() if "failed:" in line]
    reason = line.split("failed: ", 1)[1]
    assert reason.startswith("503 Service Unavailable: Service Unavailable \\x1b[2J")
    assert len(reason) < 200  # a short piece of the body, not 20 kB
    assert server.requests[0][0] == "/health?ready=1"


def test_http_sends_no_token_even_with_the_api_at_hand(api, entrypoint, servers):
    api.put(k8s.endpoint_slice("db"))
    server = web(servers, [OK])
    run = entrypoint(dict(api.env(), DEPENDENCY_SERVICE="db", DEPENDENCY_HTTP=server.url()))
    run.assert_execd()
    [(_, headers)] = server.requests
    assert "Authorization" not in headers and api.token not in str(headers)
    assert headers["User-Agent"].startswith("kubernetes-entrypoint/")


def test_http_redirect_is_not_followed(entrypoint, servers):
    server = web(servers, [(302, [("Location", "http://elsewhere.example/\x1b[2J")], b"")])
    run = entrypoint(dict(FAST, DEPENDENCY_HTTP=server.url(), ENTRYPOINT_TIMEOUT="1"))
    assert run.finish() == 1
    assert "302 Found, redirects to http://elsewhere.example/\\x1b[2J (not followed)" in run.stderr
    assert all(path == "/health" for path, _ in server.requests)


@pytest.fixture
def https(tmp_path):
    ca = trustme.CA()
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    ca.issue_cert("127.0.0.1").configure_cert(context)
    ca_file = tmp_path / "ca.pem"
    ca.cert_pem.write_to_path(str(ca_file))
    return context, str(ca_file)


def test_https_verified_against_entrypoint_http_ca(entrypoint, servers, https):
    context, ca_file = https
    server = web(servers, [OK], tls=context)
    run = entrypoint(dict(FAST, DEPENDENCY_HTTP=server.url(scheme="https"),
                          ENTRYPOINT_HTTP_CA=ca_file))
    run.assert_execd()


def test_https_not_trusted_is_the_reason(entrypoint, servers, https):
    context, _ = https
    server = web(servers, [OK], tls=context)
    run = entrypoint(dict(FAST, DEPENDENCY_HTTP=server.url(scheme="https"), ENTRYPOINT_TIMEOUT="1"))
    assert run.finish() == 1
    assert "GET failed: certificate not trusted" in run.stderr
    assert server.requests == []


def test_a_slow_host_delays_nothing_else(servers):
    """One server holds its answer back past the request timeout; the other dependencies are met
    meanwhile, and the slow one's reason says it timed out, within the timeout."""
    slow = web(servers, [OK], hang=30)
    fast = web(servers, [OK])
    listener = Listener().listen()
    deps = parse({"DEPENDENCY_HTTP": "%s,%s" % (slow.url(), fast.url()),
                  "DEPENDENCY_TCP": "127.0.0.1:%d" % listener.port,
                  "ENTRYPOINT_REQUEST_TIMEOUT": "2"})
    waiting = ke.Waiting(deps, None, interval=0.1)
    thread = threading.Thread(target=waiting.run, daemon=True)
    started = time.monotonic()
    thread.start()
    try:
        wait_for(lambda: len(waiting.pending) == 1, timeout=1.5)
        assert waiting.pending[0].label == "HTTP " + slow.url()
        wait_for(lambda: waiting.pending[0].reason is not None, timeout=5)
        assert waiting.pending[0].reason.startswith("GET failed: ")
        assert waiting.pending[0].reason.endswith("timed out")
        assert time.monotonic() - started < 4
    finally:
        slow.hang = 0
        listener.close()
    thread.join(10)
    assert not thread.is_alive()


@pytest.mark.parametrize("status", [200, 503])
def test_an_answer_that_never_ends_is_bounded(entrypoint, status):
    """A body that trickles for ever: a 2xx is met at its status line; another status is the
    reason once the request timeout ends the read of its body."""
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    sock.listen(4)
    stop = threading.Event()

    def trickle():
        while not stop.is_set():
            try:
                conn, _ = sock.accept()
            except OSError:
                return
            conn.recv(65536)
            conn.sendall(b"HTTP/1.1 %d Slow\r\nContent-Length: 100000000\r\n\r\n" % status)
            while not stop.wait(0.2):
                try:
                    conn.sendall(b"x")
                except OSError:
                    break
            conn.close()

    threading.Thread(target=trickle, daemon=True).start()
    try:
        run = entrypoint(dict(FAST, DEPENDENCY_HTTP="http://127.0.0.1:%d/" % sock.getsockname()[1],
                              ENTRYPOINT_REQUEST_TIMEOUT="1", ENTRYPOINT_TIMEOUT="3"))
        if status == 200:
            run.assert_execd()
        else:
            assert run.finish() == 1
            assert "still unmet: HTTP http://127.0.0.1:%d/: 503 Slow" % sock.getsockname()[1] \
                in run.stderr
    finally:
        stop.set()
        stop_listening(sock)


# Bad values, --check and --validate -------------------------------------------------------------

@pytest.mark.parametrize("variable, value, says", [
    ("DEPENDENCY_TCP", "db", "'db' has no port (want host:port)"),
    ("DEPENDENCY_TCP", "db:0", "the port must be a number from 1 to 65535"),
    ("DEPENDENCY_TCP", "db:99999", "the port must be a number from 1 to 65535"),
    ("DEPENDENCY_TCP", "db:http", "the port must be a number from 1 to 65535"),
    ("DEPENDENCY_TCP", "[::1:5432", "unbalanced brackets"),
    ("DEPENDENCY_TCP", "::1:5432", "an IPv6 address goes in brackets, e.g. [::1]:5432"),
    ("DEPENDENCY_TCP", "[10.0.0.1]:80", "only an IPv6 address goes in brackets"),
    ("DEPENDENCY_TCP", "db..x:80", "'db..x' is not a host name or address"),
    ("DEPENDENCY_TCP", "http://db:80", "is not host:port (for a URL, use DEPENDENCY_HTTP)"),
    ("DEPENDENCY_TCP", "127.0.0.1:1:2", "'127.0.0.1:1:2' is not host:port"),
    ("DEPENDENCY_TCP", "[fe80::1%a b]:80", "only an IPv6 address goes in brackets"),
    ("DEPENDENCY_HTTP", "ftp://db/", "is not an http:// or https:// URL"),
    ("DEPENDENCY_HTTP", "db:8080/health", "is not an http:// or https:// URL"),
    ("DEPENDENCY_HTTP", "http://db/a b", "has spaces, control or non-ASCII characters"),
    ("DEPENDENCY_HTTP", "http:///health", "has no host"),
    ("DEPENDENCY_HTTP", "http://db:0/", "the port must be a number from 1 to 65535"),
    ("DEPENDENCY_HTTP", "http://[::1/", "is not a URL"),
    ("DEPENDENCY_HTTP", "http://user:secret@db/", "holds credentials"),
    ("ENTRYPOINT_HTTP_CA", "/no/such/ca.pem", "cannot load the CA certificates"),
])
def test_bad_values_are_exit_2_naming_the_variable(entrypoint, variable, value, says):
    run = entrypoint({variable: value})  # (a CA that cannot be loaded, even with no https URL)
    assert run.finish() == 2 and run.report() is None
    [line] = run.stderr.splitlines()
    assert line.startswith("Entrypoint ERROR: ") and ("%s: " % variable) in line and says in line
    assert "secret" not in line and "Traceback" not in run.stderr


def test_zone_ids_and_default_ports_are_understood(entrypoint):
    run = entrypoint({"DEPENDENCY_TCP": "[fe80::1%lo]:80",
                      "DEPENDENCY_HTTP": "http://[fe80::1%25lo]:/x,https://db:/"},
                     arguments=["--validate"])
    assert run.finish() == 0, run.stderr
    deps = parse({"DEPENDENCY_TCP": "[fe80::1%lo]:80",
                  "DEPENDENCY_HTTP": "http://[fe80::1%25lo]:/x,https://db:/"})
    assert [(dep.host, dep.port) for dep in deps] == [
        ("fe80::1%lo", 80), ("fe80::1%lo", 80), ("db", 443)]


def raw_server(answer, hold=True):
    """A server answering each connection with these bytes, then keeping it open (`hold`)."""
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    sock.listen(8)
    held = []

    def serve():
        while True:
            try:
                conn, _ = sock.accept()
            except OSError:
                return
            conn.recv(65536)
            conn.sendall(answer)
            if hold:
                held.append(conn)
            else:
                conn.close()

    threading.Thread(target=serve, daemon=True).start()
    return sock, "http://127.0.0.1:%d/" % sock.getsockname()[1]


def test_informational_answers_before_the_final_one(entrypoint):
    sock, url = raw_server(b"HTTP/1.1 103 Early Hints\r\nLink: </a.css>\r\n\r\n"
                           b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok")
    try:
        entrypoint(dict(FAST, DEPENDENCY_HTTP=url)).assert_execd()
    finally:
        stop_listening(sock)


def test_a_status_with_a_body_that_never_ends_is_the_reason(entrypoint):
    sock, url = raw_server(b"HTTP/1.1 503 Service Unavailable\r\n\r\nnot ready")
    try:
        run = entrypoint(dict(FAST, DEPENDENCY_HTTP=url, ENTRYPOINT_REQUEST_TIMEOUT="0.5",
                              ENTRYPOINT_TIMEOUT="2"))
        assert run.finish() == 1
        assert "still unmet: HTTP %s: 503 Service Unavailable: not ready\n" % url in run.stderr
    finally:
        stop_listening(sock)


def test_check_and_validate_know_both_kinds(entrypoint, servers):
    listener = Listener().listen()
    server = web(servers, [(500, [], b"boom")])
    env = {"DEPENDENCY_TCP": "127.0.0.1:%d" % listener.port, "DEPENDENCY_HTTP": server.url()}
    try:
        run = entrypoint(env, arguments=["--check"])
        assert run.finish() == 1
        rows = run.stdout.splitlines()
        assert any(row.startswith("TCP 127.0.0.1:%d" % listener.port) and " yes " in row + " "
                   for row in rows)
        assert any(row.startswith("HTTP " + server.url()) and "500 Internal Server Error: boom"
                   in row for row in rows)
        run = entrypoint(env, arguments=["--validate"])
        assert run.finish() == 0
        assert run.stdout.splitlines()[:2] == ["TCP 127.0.0.1:%d" % listener.port,
                                               "HTTP " + server.url()]
    finally:
        listener.close()


def test_sigterm_while_an_attempt_hangs_exits_143_promptly(entrypoint, servers):
    import signal
    server = web(servers, [OK], hang=30)
    run = entrypoint(dict(FAST, DEPENDENCY_HTTP=server.url()))
    wait_for(lambda: server.requests)
    started = time.monotonic()
    run.process.send_signal(signal.SIGTERM)
    assert run.finish() == 143
    assert time.monotonic() - started < 3  # generous: it takes milliseconds
    server.hang = 0


def test_a_verdict_not_taken_yet_is_never_replaced():
    """A finished attempt's verdict waits for the engine: no new attempt replaces it (a met TCP
    dependency whose listener then went away would be lost)."""
    listener = Listener().listen()
    [dep] = parse({"DEPENDENCY_TCP": "127.0.0.1:%d" % listener.port})
    entry = type("Entry", (), {"dep": dep})()
    probes = ke.Probes()
    probes.start(entry)
    wait_for(lambda: not probes.running)
    listener.close()
    probes.start(entry)  # a new round before the engine took the verdict
    assert not probes.running
    [(taken, verdict)] = probes.take()
    assert taken is entry and verdict.met
