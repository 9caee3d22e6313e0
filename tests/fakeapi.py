"""A fake Kubernetes API server for tests: real HTTPS on 127.0.0.1, read-only but for Events.

Why it exists: the entrypoint talks raw HTTP(S) to the API server, so its tests
need a server speaking the same wire protocol (TLS checked against the
service-account CA, bearer tokens, Status error bodies, discovery, chunked
watch streams), plus knobs a real cluster lacks: RBAC denials on demand, token
rotation, history compaction and injected faults, down to raw bytes that no
well-behaved server would send (a hostile or broken apiserver or proxy).

Only GET is served over HTTP, and POST and PATCH of core v1 Events (what the
entrypoint writes, checked as the real apiserver checks them: see api.events()),
and POST of a SelfSubjectRulesReview (what the account may do in a namespace, as
deny() or use_roles() set it: see _rules_review());
tests change objects through the Python methods (put, update, delete), and
every change is seen by open watches::

    with FakeKubeAPI(tmp_path) as api:
        api.put(pod("web-0", labels={"app": "web"}, ready=True))
        subprocess.run(cmd, env=dict(os.environ, **api.env()))

Standard library only, plus ``trustme`` for the CA and server certificate.
Runs on Python 3.8 and later.
"""

import collections
import copy
import hashlib
import http.client
import http.server
import json
import os
import re
import secrets
import socket
import ssl
import struct
import threading
import time
import uuid
from pathlib import Path
from urllib.parse import parse_qsl, unquote, urlsplit

import trustme

# ---------------------------------------------------------------------------
# Resource registry
# ---------------------------------------------------------------------------


class ResourceType(collections.namedtuple("ResourceType", "group_version resource kind namespaced")):
    """One servable resource, as discovery describes it: ("apps/v1", "deployments", "Deployment", True)."""

    __slots__ = ()

    @property
    def key(self):
        return (self.group_version, self.resource)

    @property
    def group(self):
        """API group, "" for the core group (group_version "v1")."""
        return self.group_version.rpartition("/")[0]

    @property
    def qualified(self):
        """How the apiserver names the resource in messages: "pods", "jobs.batch"."""
        return self.resource + "." + self.group if self.group else self.resource


BUILTIN_RESOURCES = (
    ResourceType("v1", "pods", "Pod", True),
    ResourceType("v1", "services", "Service", True),
    ResourceType("v1", "endpoints", "Endpoints", True),
    ResourceType("v1", "namespaces", "Namespace", False),
    ResourceType("v1", "nodes", "Node", False),
    ResourceType("v1", "configmaps", "ConfigMap", True),
    ResourceType("v1", "persistentvolumeclaims", "PersistentVolumeClaim", True),
    ResourceType("discovery.k8s.io/v1", "endpointslices", "EndpointSlice", True),
    ResourceType("apps/v1", "daemonsets", "DaemonSet", True),
    ResourceType("apps/v1", "deployments", "Deployment", True),
    ResourceType("apps/v1", "statefulsets", "StatefulSet", True),
    ResourceType("batch/v1", "jobs", "Job", True),
    ResourceType("v1", "events", "Event", True),
)

VERBS = ("get", "list", "watch", "create", "patch")
WRITABLE = {("v1", "events")}  # the only resource written over HTTP
# Created (POST) only, by any authenticated user (system:basic-user); not in discovery here.
RULES_REVIEW = ResourceType("authorization.k8s.io/v1", "selfsubjectrulesreviews",
                            "SelfSubjectRulesReview", False)
# What system:basic-user and system:discovery grant every account, as a review lists them.
BASIC_RULES = [{"verbs": ["create"], "apiGroups": ["authorization.k8s.io"],
                "resources": ["selfsubjectaccessreviews", "selfsubjectrulesreviews"]}]
BASIC_NON_RESOURCE_RULES = [{"verbs": ["get"], "nonResourceURLs": [
    "/api", "/api/*", "/apis", "/apis/*", "/healthz", "/livez", "/readyz", "/version", "/version/"]}]

# ---------------------------------------------------------------------------
# Status bodies: every error carries one, shaped like the real apiserver's
# ---------------------------------------------------------------------------

SERVICE_ACCOUNT_USER = "system:serviceaccount:default:default"

_REASONS = {
    400: "BadRequest",
    401: "Unauthorized",
    403: "Forbidden",
    404: "NotFound",
    405: "MethodNotAllowed",
    409: "Conflict",
    410: "Expired",
    429: "TooManyRequests",
    500: "InternalError",
    503: "ServiceUnavailable",
    504: "Timeout",
}


def status_body(code, message, reason=None, details=None):
    """A metav1.Status failure; `details` is left out when None, as in the 401 body."""
    body = {
        "kind": "Status",
        "apiVersion": "v1",
        "metadata": {},
        "status": "Failure",
        "message": message,
        "reason": reason or _REASONS.get(code, ""),
    }
    if details is not None:
        body["details"] = details
    body["code"] = code
    return body


def _details(rtype, name=None):
    details = {}
    if name:
        details["name"] = name
    if rtype.group:
        details["group"] = rtype.group
    details["kind"] = rtype.resource
    return details


def _not_found(rtype, name):
    return status_body(404, '%s "%s" not found' % (rtype.qualified, name), details=_details(rtype, name))


def _forbidden(verb, rtype, namespace, name):
    subject = '%s "%s"' % (rtype.qualified, name) if name else rtype.qualified
    scope = 'in the namespace "%s"' % namespace if namespace else "at the cluster scope"
    message = '%s is forbidden: User "%s" cannot %s resource "%s" in API group "%s" %s' % (
        subject, SERVICE_ACCOUNT_USER, verb, rtype.resource, rtype.group, scope)
    return status_body(403, message, details=_details(rtype, name))


def _grants(rule, verb, rtype, name):
    """Whether one RBAC PolicyRule allows the request; resourceNames only where a name is asked
    (a get, or a list or watch with fieldSelector metadata.name=NAME)."""
    def has(field, value):
        values = rule.get(field) or ()
        return "*" in values or value in values
    names = rule.get("resourceNames") or ()
    return (has("verbs", verb) and has("apiGroups", rtype.group) and has("resources", rtype.resource)
            and (not names or name in names))


def _name_asked(route, query):
    """The object name RBAC sees: the path's, or a list's or watch's fieldSelector metadata.name."""
    if route.name or route.verb not in ("list", "watch"):
        return route.name
    match = re.fullmatch(r"metadata\.name==?([^,]*)", query.get("fieldSelector", "").strip())
    return _unescape_field_value(match.group(1)) if match else None


UNAUTHORIZED = status_body(401, "Unauthorized")
NOT_FOUND_PATH = status_body(404, "the server could not find the requested resource", details={})
METHOD_NOT_ALLOWED = status_body(
    405, "the server does not allow this method on the requested resource", details={})


class BadRequest(Exception):
    """A request the real apiserver refuses with 400 BadRequest (bad selector or parameter)."""


# ---------------------------------------------------------------------------
# Selectors: labelSelector and fieldSelector as the apiserver parses them
# ---------------------------------------------------------------------------

_KEY = r"[A-Za-z0-9](?:[-A-Za-z0-9_./]*[A-Za-z0-9])?"
_VALUE = r"(?:[A-Za-z0-9](?:[-A-Za-z0-9_.]*[A-Za-z0-9])?)?"
_SET_REQUIREMENT = re.compile(r"(%s)\s+(in|notin)\s*\((.*)\)" % _KEY)
_EQUALITY_REQUIREMENT = re.compile(r"(%s)\s*(==|!=|=)\s*(%s)" % (_KEY, _VALUE))
_EXISTS_REQUIREMENT = re.compile(r"(!?)\s*(%s)" % _KEY)
_FIELD_REQUIREMENT = re.compile(r"\s*([A-Za-z.]+)\s*(==|!=|=)\s*(.*?)\s*")

_COMMON_FIELDS = ("metadata.name", "metadata.namespace")
_KIND_FIELDS = {"Pod": ("spec.nodeName", "status.phase")}


def _split_outside_parens(text):
    """Split on the commas that separate requirements, not those inside "in (a,b)"."""
    parts, depth, current = [], 0, ""
    for char in text:
        depth += {"(": 1, ")": -1}.get(char, 0)
        if char == "," and depth == 0:
            parts.append(current)
            current = ""
        else:
            current += char
    return parts + [current]


class LabelSelector:
    """A parsed labelSelector: requirements (operator, key, values) that must all hold.

    `=`/`==` become "in" with one value and `!=` becomes "notin", which is what
    they mean: `k!=v` and `k notin (...)` also match objects without label k.
    """

    def __init__(self, text):
        self.requirements = []
        if text.strip():
            self.requirements = [self._parse(part.strip()) for part in _split_outside_parens(text)]

    @staticmethod
    def _parse(requirement):
        match = _SET_REQUIREMENT.fullmatch(requirement)
        if match:
            key, operator, inside = match.groups()
            values = [value.strip() for value in inside.split(",")]
            if inside.strip() and all(re.fullmatch(_VALUE, value) for value in values):
                return operator, key, frozenset(values)
        match = _EQUALITY_REQUIREMENT.fullmatch(requirement)
        if match:
            key, operator, value = match.groups()
            return ("notin" if operator == "!=" else "in"), key, frozenset([value])
        match = _EXISTS_REQUIREMENT.fullmatch(requirement)
        if match:
            return ("!exists" if match.group(1) else "exists"), match.group(2), frozenset()
        raise BadRequest("unable to parse requirement: %r" % requirement)

    def matches(self, labels):
        for operator, key, values in self.requirements:
            if operator == "exists":
                held = key in labels
            elif operator == "!exists":
                held = key not in labels
            elif operator == "in":
                held = key in labels and labels[key] in values
            else:
                held = labels.get(key) not in values
            if not held:
                return False
        return True


def _split_unescaped_commas(text):
    """Split on the commas that separate requirements, not the escaped `\\,` inside a value."""
    parts, current, escaped = [], "", False
    for char in text:
        if char == "," and not escaped:
            parts.append(current)
            current = ""
        else:
            current += char
        escaped = char == "\\" and not escaped
    return parts + [current]


def _unescape_field_value(value):
    """A fieldSelector value as fields.UnescapeValue reads it.

    Why: any string can be an object's name (custom resources allow commas and `=`), so clients
    escape `\\` `,` `=` as `\\\\` `\\,` `\\=` (fields.EscapeValue); any other escape, a lone
    trailing backslash, or a bare `,` or `=` is a 400, as on the real apiserver.
    """
    result, escaped = "", False
    for char in value:
        if escaped:
            if char not in "\\,=":
                raise BadRequest("invalid field selector: invalid escape sequence: \\" + char)
            result += char
            escaped = False
        elif char == "\\":
            escaped = True
        elif char in ",=":
            raise BadRequest("invalid field selector: unescaped character in value: " + char)
        else:
            result += char
    if escaped:
        raise BadRequest("invalid field selector: invalid escape sequence: \\")
    return result


class FieldSelector:
    """A parsed fieldSelector; only the fields the real apiserver indexes for the kind are accepted.
    Values may carry the escapes of fields.EscapeValue (`metadata.name=a\\,b` selects `a,b`)."""

    def __init__(self, text, kind):
        self.requirements = []
        for part in _split_unescaped_commas(text) if text.strip() else ():
            match = _FIELD_REQUIREMENT.fullmatch(part)
            if not match:
                raise BadRequest("invalid selector: '%s'; can't understand '%s'" % (text, part))
            field, operator, value = match.groups()
            if field not in _COMMON_FIELDS + _KIND_FIELDS.get(kind, ()):
                raise BadRequest("field label not supported: " + field)
            self.requirements.append((field, operator == "!=", _unescape_field_value(value)))

    def matches(self, obj):
        return all((_field_value(obj, field) == value) != negated
                   for field, negated, value in self.requirements)


def _field_value(obj, dotted):
    """The field as a string, "" when absent (so `spec.nodeName=` finds unscheduled pods)."""
    value = obj
    for part in dotted.split("."):
        value = value.get(part) if isinstance(value, dict) else None
    return "" if value is None else str(value)


# ---------------------------------------------------------------------------
# Watches: each open stream has its own queue of changes to translate and send
# ---------------------------------------------------------------------------

# One stored change; old is None for a creation, new is None for a deletion.
_Change = collections.namedtuple("_Change", "resource_version key old new")


def _event(event_type, obj):
    return {"type": event_type, "object": obj}


class _Selection:
    """Which objects a list or watch asks for: resource, namespace (None = all) and selectors."""

    def __init__(self, rtype, namespace, query):
        self.rtype = rtype
        self.namespace = namespace
        self.labels = LabelSelector(query.get("labelSelector", ""))
        self.fields = FieldSelector(query.get("fieldSelector", ""), rtype.kind)

    def selects(self, obj):
        meta = obj["metadata"]
        return ((self.namespace is None or meta.get("namespace") == self.namespace)
                and self.labels.matches(meta.get("labels") or {})
                and self.fields.matches(obj))


class _Watch:
    """One open watch stream. Changes are queued here at commit time, so a slow reader loses none."""

    def __init__(self, selection):
        self.selection = selection
        self.pending = collections.deque()
        self.aborted = False

    def event_for(self, change):
        """What this watcher sees of a change, or None.

        Like the apiserver's watch cache: an object that starts matching the
        selection arrives as ADDED, one that stops matching as DELETED (its
        previous content, stamped with the change's resourceVersion).
        """
        now = change.new is not None and self.selection.selects(change.new)
        before = change.old is not None and self.selection.selects(change.old)
        if now:
            return _event("MODIFIED" if before else "ADDED", change.new)
        if before:
            meta = dict(change.old["metadata"], resourceVersion=str(change.resource_version))
            return _event("DELETED", dict(change.old, metadata=meta))
        return None


_DNS_SUBDOMAIN = re.compile(r"(?=.{1,253}\Z)[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*")


def _merge_patch(target, patch):
    """RFC 7386: null deletes, objects merge, anything else replaces."""
    for key, value in patch.items():
        if value is None:
            target.pop(key, None)
        elif isinstance(value, dict) and isinstance(target.get(key), dict):
            _merge_patch(target[key], value)
        else:
            target[key] = value
    return target


def _truthy(value):
    """Query booleans parse like Go's strconv.ParseBool."""
    return value in ("1", "t", "T", "true", "TRUE", "True")


# ---------------------------------------------------------------------------
# HTTP layer
# ---------------------------------------------------------------------------

HANDSHAKE_TIMEOUT = 10.0

Request = collections.namedtuple("Request", "method path query status verb resource namespace name")
Request.__doc__ = "One logged request; status 0 means no response was sent (reset or hang fault)."

# The parsed meaning of a request path; verb None means an unknown path (404).
_Route = collections.namedtuple("_Route", "verb rtype namespace name document")
_UNKNOWN = _Route(None, None, None, None, None)


class _Fault:
    """One inject() rule; `remaining` None means until clear_faults(). `served` counts the
    requests it has answered, so a test can wait for its fault to be hit, or prove it was."""

    def __init__(self, status, remaining, match, retry_after, body, reset, hang, raw=None):
        self.status = status
        self.remaining = remaining
        self.match = match
        self.retry_after = retry_after
        self.body = body
        self.reset = reset
        self.hang = hang
        self.raw = raw
        self.served = 0


class _Server(http.server.ThreadingHTTPServer):
    """Threaded HTTPS server. The TLS handshake runs in each connection's own
    thread, so a client that never completes it cannot stall accept()."""

    daemon_threads = True

    def __init__(self, api, port):
        self.api = api
        super().__init__((api.host, port), _Handler)

    def get_request(self):
        sock, address = super().get_request()
        self.api._count_connection()
        return sock, address

    def finish_request(self, request, client_address):
        request.settimeout(HANDSHAKE_TIMEOUT)
        conn = self.api._tls.wrap_socket(request, server_side=True)
        conn.settimeout(None)
        self.api._track_connection(conn, True)
        try:
            self.RequestHandlerClass(conn, client_address, self)
        finally:
            self.api._track_connection(conn, False)
            conn.close()

    def handle_error(self, request, client_address):
        """Stay quiet: clients vanishing mid-request is what many tests do on purpose."""


class _Handler(http.server.BaseHTTPRequestHandler):
    """Serves one connection: faults first, then authentication, then the Kubernetes API."""

    protocol_version = "HTTP/1.1"
    # TCP_NODELAY, as the real apiserver sets: with Nagle on, a body written after its headers
    # waits for the client's delayed ACK, about 40 ms per request on loopback.
    disable_nagle_algorithm = True
    server_version = "fake-kube-apiserver"
    sys_version = ""

    def log_message(self, format, *args):
        """No per-request stderr lines; api.requests is the log."""

    def do_GET(self):
        api = self.server.api
        length = int(self.headers.get("Content-Length") or 0)
        self.body = self.rfile.read(length) if length else b""
        target = urlsplit(self.path)
        self.record_path = target.path
        self.query = dict(parse_qsl(target.query, keep_blank_values=True))
        self.route = api._route(target.path, self.query, self.command)
        fault = api._take_fault(self.path)
        if fault is not None:
            self._apply_fault(fault)
        elif not api._authorized(self.headers.get("Authorization", "")):
            self._send_json(401, UNAUTHORIZED)
        elif self.command not in ("GET", "POST", "PATCH") or self.route.verb == "unwritable":
            self._send_json(405, METHOD_NOT_ALLOWED)
        else:
            try:
                self._serve()
            except BadRequest as error:
                self._send_json(400, status_body(400, str(error)))

    do_HEAD = do_POST = do_PUT = do_PATCH = do_DELETE = do_OPTIONS = do_GET

    def _serve(self):
        api, route = self.server.api, self.route
        if route.verb is None:
            return self._send_json(404, NOT_FOUND_PATH)
        if route.verb == "discovery":
            return self._send_json(200, route.document)
        if api._is_denied(route.verb, route.rtype, route.namespace, _name_asked(route, self.query)):
            return self._send_json(403, _forbidden(route.verb, route.rtype, route.namespace, route.name))
        if route.rtype == RULES_REVIEW:
            return self._send_json(*api._rules_review(self.body))
        if route.verb in ("create", "patch"):
            status, document = api._write_event(route, self.headers.get("Content-Type", ""),
                                                self.body)
            return self._send_json(status, document)
        if route.verb in ("get", "list"):
            refusal = api._version_refusal(self.query)
            if refusal is not None:
                status, document, headers = refusal
                return self._send(status, json.dumps(document).encode(), headers)
        frozen = api._frozen if self.query.get("resourceVersion") else None
        if route.verb == "get":
            obj = api._stored(route.rtype, route.namespace, route.name, frozen)
            if obj is None:
                return self._send_json(404, _not_found(route.rtype, route.name))
            return self._send_json(200, obj)
        selection = _Selection(route.rtype, route.namespace, self.query)
        if route.verb == "list":
            return self._send_json(200, api._list_body(selection, frozen))
        self._stream_watch(selection)

    # -- responses ---------------------------------------------------------

    def _log(self, status):
        route = self.route
        self.server.api._log_request(Request(
            self.command, self.record_path, self.query, status, route.verb,
            route.rtype.resource if route.rtype else None, route.namespace, route.name))

    def _send(self, status, body, headers=()):
        """A complete response with Content-Length, so the connection stays usable."""
        self._log(status)
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        for name, value in headers:
            self.send_header(name, value)
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(body)

    def _send_json(self, status, document):
        self._send(status, json.dumps(document).encode())

    def _apply_fault(self, fault):
        if fault.raw is not None:
            return self._send_raw(fault.raw)
        if fault.reset or fault.hang is not None:
            self._log(0)
            if fault.hang is not None:
                self.server.api._stopping.wait(fault.hang)
            if fault.reset:
                # Linger 0: closing sends an RST instead of a FIN.
                self.connection.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
            self.close_connection = True
            return
        body = fault.body
        if body is None:
            phrase = http.client.responses.get(fault.status, "Unknown")
            body = json.dumps(status_body(fault.status, "injected fault: " + phrase, details={})).encode()
        headers = [("Retry-After", str(fault.retry_after))] if fault.retry_after is not None else []
        self._send(fault.status, body, headers)

    def _send_raw(self, raw):
        """A raw fault: bytes written as they are, or raw(wfile, stopping) writing what it likes;
        then the connection is closed. Logged with the status of a bytes answer's status line
        (0 for a callable, or bytes that are no HTTP at all)."""
        status = 0
        if not callable(raw):
            match = re.match(rb"HTTP/\d\.\d (\d{3})", raw)
            status = int(match.group(1)) if match else 0
        self._log(status)
        try:
            if callable(raw):
                raw(self.wfile, self.server.api._stopping)
            else:
                self.wfile.write(raw)
        except OSError:
            pass  # the client hung up: what a client does that gives up on an endless answer
        self.close_connection = True

    # -- watch -------------------------------------------------------------

    def _stream_watch(self, selection):
        api = self.server.api
        try:
            timeout = int(self.query.get("timeoutSeconds") or 0)
        except ValueError:
            raise BadRequest("invalid timeoutSeconds: %r" % self.query["timeoutSeconds"])
        bookmarks = _truthy(self.query.get("allowWatchBookmarks", ""))
        watch, first_events = api._open_watch(selection, self.query.get("resourceVersion", ""))
        if watch is None and api.expire_with_http_410:
            status = first_events[0]["object"]
            return self._send_json(410, status)
        self._log(200)
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Transfer-Encoding", "chunked")
        self.end_headers()
        try:
            for event in first_events:
                self._write_event(event)
            if watch is not None and not self._follow(watch, timeout, bookmarks):
                self.close_connection = True  # aborted: no terminating chunk
                return
            self.wfile.write(b"0\r\n\r\n")
        except OSError:
            self.close_connection = True  # the client went away
        finally:
            if watch is not None:
                api._close_watch(watch)

    def _follow(self, watch, timeout, bookmarks):
        """Send changes as they come; True when timeoutSeconds ran out, False when aborted."""
        api = self.server.api
        now = time.monotonic()
        deadline = now + timeout if timeout > 0 else None
        next_bookmark = now + api.bookmark_interval if bookmarks else None
        while True:
            events = []
            with api._cond:
                while not events:
                    if watch.aborted:
                        return False
                    now = time.monotonic()
                    if deadline is not None and now >= deadline:
                        return True
                    while watch.pending:
                        event = watch.event_for(watch.pending.popleft())
                        if event is not None:
                            events.append(event)
                    if next_bookmark is not None and now >= next_bookmark:
                        events.append(api._bookmark(watch.selection.rtype))
                        next_bookmark = now + api.bookmark_interval
                    if not events:
                        waits = [moment - now for moment in (deadline, next_bookmark) if moment is not None]
                        api._cond.wait(min(waits) if waits else None)
            for event in events:
                self._write_event(event)

    def _write_event(self, event):
        """One event per chunk, one JSON document per line."""
        data = json.dumps(event).encode() + b"\n"
        self.wfile.write(b"%x\r\n%s\r\n" % (len(data), data))


# ---------------------------------------------------------------------------
# The fake API server
# ---------------------------------------------------------------------------


def _now():
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())


class FakeKubeAPI:
    """A Kubernetes API server on 127.0.0.1 for one test; see the module docstring.

    Settings tests may change at any time:
      history_limit: how many changes are kept for watches resuming from a resourceVersion.
      bookmark_interval: seconds between BOOKMARK events (allowWatchBookmarks=true).
      cache_reads: how a get or list with a resourceVersion (a read from the watch cache,
        not older than that version) is answered: "serve" (default: as the real apiserver,
        504 "Too large resource version" for a version it has not reached), "lagging" (504 for
        every one, as a server whose cache lags behind), "refuse" (400, as a server that does
        not know the parameters), "ignore" (answered as a plain read).
      expire_with_http_410: answer a too-old resourceVersion with HTTP 410 instead of
        the default 200 stream carrying one ERROR event (what the real apiserver does).
      review_incomplete: SelfSubjectRulesReviews say incomplete (as where another authorizer,
        e.g. a webhook, decides too), with an evaluationError.
      review_status: None, or review_status(namespace, status) -> what a review answers as its
        status instead (anything JSON: a hostile or broken server).
    A review is refused like any request with deny("create", "selfsubjectrulesreviews").
    """

    host = "127.0.0.1"

    def __init__(self, workdir, tls=None):
        self.history_limit = 1000
        self.bookmark_interval = 1.0
        self.expire_with_http_410 = False
        self.cache_reads = "serve"
        self.review_incomplete = False
        self.review_status = None
        self._frozen = None       # (objects, resourceVersion) that reads from the cache get

        self._lock = threading.RLock()
        self._cond = threading.Condition(self._lock)
        self._types = {}          # (group_version, resource) -> ResourceType
        self._list_kinds = {}     # custom resources: (group_version, resource) -> a list's kind
        self._objects = {}        # (group_version, resource) -> {(namespace, name): object}
        self._rv = 0
        self._history = collections.deque()
        self._compacted_rv = 0    # changes up to here are forgotten
        self._watches = []
        self._denials = set()
        self._roles = None        # use_roles(): [(kind, namespace, rule), ...]
        self._faults = []
        self._requests = []
        self._connections = 0
        self._open_connections = set()
        self._stopping = threading.Event()
        self._server = None
        self._thread = None
        self._port = None
        for rtype in BUILTIN_RESOURCES:
            self.register_resource(*rtype)

        self._tls = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        self.sa_dir = Path(workdir) / "serviceaccount"
        self.sa_dir.mkdir(parents=True, exist_ok=True)
        self.ca_path = self.sa_dir / "ca.crt"
        if tls is None:  # a CA and a server certificate as a well-kept cluster has them
            ca = trustme.CA()
            ca.issue_cert("127.0.0.1", "localhost").configure_cert(self._tls)
            ca.cert_pem.write_to_path(str(self.ca_path))
        else:  # (certificate PEM, key PEM, CA PEM) of the test's own making (tests/certs.py)
            certificate, key, ca_pem = tls
            server_files = Path(workdir) / "server-tls"
            server_files.mkdir(parents=True, exist_ok=True)
            (server_files / "tls.crt").write_bytes(certificate)
            (server_files / "tls.key").write_bytes(key)
            self._tls.load_cert_chain(str(server_files / "tls.crt"), str(server_files / "tls.key"))
            self.ca_path.write_bytes(ca_pem)
        (self.sa_dir / "namespace").write_text("default")
        self._tokens = set()
        self._token = None
        self.rotate_token()

    # -- lifecycle ---------------------------------------------------------

    def start(self):
        """Serve in a background thread; after a stop(), restart on the same port with the same objects."""
        if self._server is None:
            self._stopping.clear()
            self._server = _Server(self, self._port or 0)
            self._port = self._server.server_address[1]
            self._thread = threading.Thread(
                target=self._server.serve_forever, kwargs={"poll_interval": 0.05},
                name="fake-kube-api", daemon=True)
            self._thread.start()
        return self

    def stop(self):
        """Stop listening and drop every open connection and watch."""
        server, self._server = self._server, None
        if server is None:
            return
        self._stopping.set()
        server.shutdown()
        server.server_close()
        self._thread.join()
        self.close_watches()
        with self._lock:
            connections = list(self._open_connections)
        for conn in connections:
            try:
                # The plain-socket shutdown wakes the handler's blocked read without tearing
                # down the TLS object under it.
                socket.socket.shutdown(conn, socket.SHUT_RDWR)
            except OSError:
                pass

    def __enter__(self):
        return self.start()

    def __exit__(self, *exc_info):
        self.stop()

    @property
    def port(self):
        if self._port is None:
            raise RuntimeError("FakeKubeAPI is not started")
        return self._port

    @property
    def url(self):
        return "https://%s:%d" % (self.host, self.port)

    def env(self):
        """The environment the entrypoint finds the API server by."""
        return {
            "KUBERNETES_SERVICE_HOST": self.host,
            "KUBERNETES_SERVICE_PORT": str(self.port),
            "ENTRYPOINT_SERVICEACCOUNT_DIR": str(self.sa_dir),
        }

    # -- tokens ------------------------------------------------------------

    @property
    def token(self):
        return self._token

    def rotate_token(self, token=None):
        """Write a new token (random unless given) to sa_dir/token; old tokens stay valid until
        revoke_old_tokens()."""
        token = token or secrets.token_urlsafe(32)
        temporary = self.sa_dir / ".token.tmp"
        temporary.write_text(token)
        os.replace(str(temporary), str(self.sa_dir / "token"))  # readers never see half a token
        with self._lock:
            self._token = token
            self._tokens.add(token)
        return token

    def revoke_old_tokens(self):
        with self._lock:
            self._tokens = {self._token}

    def _authorized(self, header):
        scheme, _, token = header.partition(" ")
        with self._lock:
            return scheme.lower() == "bearer" and token.strip() in self._tokens

    # -- resource types ----------------------------------------------------

    def register_resource(self, group_version, resource, kind, namespaced=True, list_kind=None):
        """Serve a resource; it appears in discovery from now on. One not built in is a custom
        resource, as a CRD makes it: its list is of kind `list_kind` (the CRD's
        spec.names.listKind, <Kind>List by default), and its items keep apiVersion and kind."""
        rtype = ResourceType(group_version, resource, kind, namespaced)
        with self._lock:
            self._types[rtype.key] = rtype
            if rtype not in BUILTIN_RESOURCES:
                self._list_kinds[rtype.key] = list_kind or kind + "List"
            self._objects.setdefault(rtype.key, {})
        return rtype

    def unregister_resource(self, group_version, resource):
        """Stop serving a resource; its objects are dropped, as deleting a CRD does."""
        with self._lock:
            self._types.pop((group_version, resource), None)
            self._objects.pop((group_version, resource), None)

    def _type_of(self, api_version, kind):
        with self._lock:
            for rtype in self._types.values():
                if rtype.group_version == api_version and rtype.kind == kind:
                    return rtype
        raise KeyError("no resource registered for apiVersion %r kind %r" % (api_version, kind))

    # -- objects -----------------------------------------------------------

    @property
    def resource_version(self):
        """The global resourceVersion counter: that of the latest change."""
        with self._lock:
            return str(self._rv)

    def put(self, obj):
        """Create or replace an object (apiVersion/kind pick its resource); returns a copy as stored.

        Sets metadata.resourceVersion, and keeps (or on creation assigns) uid and
        creationTimestamp; namespaced kinds default to namespace "default".
        """
        obj = copy.deepcopy(obj)
        meta = obj.setdefault("metadata", {})
        if not meta.get("name"):
            raise ValueError("metadata.name is required")
        with self._cond:
            rtype = self._type_of(obj.get("apiVersion"), obj.get("kind"))
            if rtype.namespaced:
                meta["namespace"] = meta.get("namespace") or "default"
            else:
                meta.pop("namespace", None)
            store = self._objects[rtype.key]
            key = (meta.get("namespace", ""), meta["name"])
            old = store.get(key)
            meta.setdefault("uid", old["metadata"]["uid"] if old else str(uuid.uuid4()))
            meta.setdefault("creationTimestamp", old["metadata"]["creationTimestamp"] if old else _now())
            self._rv += 1
            meta["resourceVersion"] = str(self._rv)
            store[key] = obj
            self._commit(rtype.key, old, obj)
            return copy.deepcopy(obj)

    def get(self, api_version, kind, name, namespace="default"):
        """A copy of the stored object, or None."""
        with self._lock:
            return copy.deepcopy(self._stored(self._type_of(api_version, kind), namespace, name))

    def delete(self, api_version, kind, name, namespace="default"):
        """Delete an object; returns its last content, or None when there was none."""
        with self._cond:
            rtype = self._type_of(api_version, kind)
            old = self._objects[rtype.key].pop(self._store_key(rtype, namespace, name), None)
            if old is None:
                return None
            self._rv += 1
            self._commit(rtype.key, old, None)
            return copy.deepcopy(old)

    def update(self, api_version, kind, name, fn, namespace="default"):
        """Atomically: fn(copy) mutates a copy of the object (or returns a replacement), then put() it."""
        with self._cond:
            current = self.get(api_version, kind, name, namespace)
            if current is None:
                raise KeyError("%s %s/%s not found" % (kind, namespace, name))
            replacement = fn(current)
            return self.put(current if replacement is None else replacement)

    @staticmethod
    def _store_key(rtype, namespace, name):
        return ((namespace or "default") if rtype.namespaced else "", name)

    def _stored(self, rtype, namespace, name, frozen=None):
        """The stored object itself (never mutated after storing, so safe to serialize)."""
        with self._lock:
            objects = frozen[0] if frozen else self._objects
            return objects.get(rtype.key, {}).get(self._store_key(rtype, namespace, name))

    def freeze_cache(self):
        """From now on, reads with a resourceVersion (reads from the watch cache) see the objects
        as they are now, whatever changes later and whatever version they ask for: a cache
        stuck in the past that ignores "not older than"."""
        with self._lock:
            self._frozen = ({key: dict(store) for key, store in self._objects.items()}, self._rv)

    def thaw_cache(self):
        with self._lock:
            self._frozen = None

    def _commit(self, key, old, new):
        """Record a change (lock held): keep it for resuming watches and queue it for open ones."""
        change = _Change(self._rv, key, old, new)
        self._history.append(change)
        while len(self._history) > self.history_limit:
            self._compacted_rv = self._history.popleft().resource_version
        for watch in self._watches:
            if watch.selection.rtype.key == key:
                watch.pending.append(change)
        self._cond.notify_all()

    def _list_body(self, selection, frozen=None):
        with self._lock:
            store, version = frozen if frozen else (self._objects, self._rv)
            objects = sorted(store.get(selection.rtype.key, {}).items())
            custom = self._list_kinds.get(selection.rtype.key)
            items = [{field: value for field, value in obj.items()
                      if custom or field not in ("kind", "apiVersion")}
                     for _, obj in objects if selection.selects(obj)]
            return {
                "kind": custom or selection.rtype.kind + "List",
                "apiVersion": selection.rtype.group_version,
                "metadata": {"resourceVersion": str(version)},
                "items": items,
            }

    # -- watches -----------------------------------------------------------

    @property
    def open_watches(self):
        """How many watch streams are open now."""
        with self._lock:
            return len(self._watches)

    def compact(self):
        """Forget all change history: resuming from any older resourceVersion now gets 410 Expired."""
        with self._lock:
            self._history.clear()
            self._compacted_rv = self._rv

    def close_watches(self):
        """End every open watch stream abruptly (no terminating chunk), as a dying apiserver would."""
        with self._cond:
            for watch in self._watches:
                watch.aborted = True
            self._cond.notify_all()

    def _open_watch(self, selection, resource_version):
        """Register a watch; returns (watch, first events), or (None, [ERROR]) when the version is too old."""
        with self._cond:
            watch = _Watch(selection)
            if resource_version in ("", "0"):
                objects = sorted(self._objects.get(selection.rtype.key, {}).items())
                events = [_event("ADDED", obj) for _, obj in objects if selection.selects(obj)]
            else:
                try:
                    since = int(resource_version)
                except ValueError:
                    raise BadRequest("invalid resourceVersion: %r" % resource_version)
                if since < self._compacted_rv:
                    message = "too old resource version: %d (%d)" % (since, self._compacted_rv)
                    return None, [_event("ERROR", status_body(410, message, "Expired"))]
                changes = [change for change in self._history
                           if change.key == selection.rtype.key and change.resource_version > since]
                events = [event for event in map(watch.event_for, changes) if event is not None]
            self._watches.append(watch)
            return watch, events

    def _close_watch(self, watch):
        with self._lock:
            self._watches.remove(watch)

    def _bookmark(self, rtype):
        with self._lock:
            return _event("BOOKMARK", {"kind": rtype.kind, "apiVersion": rtype.group_version,
                                       "metadata": {"resourceVersion": str(self._rv)}})

    def _version_refusal(self, query):
        """(status, Status, headers) refusing a get or list's resourceVersion parameters, or None
        to serve it (the current state is never older than any version asked for)."""
        version, match = query.get("resourceVersion", ""), query.get("resourceVersionMatch", "")
        if not version and not match or self.cache_reads == "ignore":
            return None
        if self.cache_reads == "refuse":
            return 400, status_body(400, "resourceVersionMatch: unsupported"), []
        if match and not version:
            return 400, status_body(400, "resourceVersionMatch is forbidden unless "
                                         "resourceVersion is provided"), []
        if match not in ("", "NotOlderThan", "Exact") or not version.isdigit():
            return 400, status_body(400, "invalid resourceVersion or resourceVersionMatch"), []
        with self._lock:
            current = self._rv
        if self.cache_reads == "lagging" or int(version) > current:
            message = "Too large resource version: %s, current: %d" % (version, current)
            return 504, status_body(504, message, "Timeout", details={"causes": [
                {"reason": "ResourceVersionTooLarge", "message": "Too large resource version"}],
                "retryAfterSeconds": 1}), [("Retry-After", "1")]
        if match == "Exact" and int(version) != current:
            return 410, status_body(410, "too old resource version: %s (%d)" % (version, current),
                                    "Expired"), []
        return None

    # -- events: the one resource written over HTTP ---------------------------

    def events(self, namespace=None):
        """The stored Events (copies), oldest first; each as written, with count and timestamps."""
        with self._lock:
            stored = [obj for (ns, _), obj in self._objects[("v1", "events")].items()
                      if namespace is None or ns == namespace]
            return copy.deepcopy(sorted(stored, key=lambda e: int(e["metadata"]["resourceVersion"])))

    def _write_event(self, route, content_type, body):
        """(status, document) for a POST or PATCH of an Event, validated as the real apiserver
        validates a core v1 Event without eventTime."""
        try:
            document = json.loads(body.decode("utf-8"))
        except ValueError:
            return 400, status_body(400, "body is not JSON")
        if not isinstance(document, dict):
            return 400, status_body(400, "body is not a JSON object")
        if route.verb == "patch":
            if content_type.split(";")[0].strip() not in (
                    "application/merge-patch+json", "application/strategic-merge-patch+json"):
                return 415, status_body(415, "the body of the request was in an unknown format")
            with self._cond:
                old = self._stored(route.rtype, route.namespace, route.name)
                if old is None:
                    return 404, _not_found(route.rtype, route.name)
                new = _merge_patch(copy.deepcopy(old), document)
                for field in ("involvedObject", "reason", "message", "source", "firstTimestamp",
                              "type"):
                    if new.get(field) != old.get(field):
                        return 422, status_body(422, "Event is invalid: %s: field is immutable"
                                                % field, "Invalid")
                return 200, self.put(new)
        meta = document.get("metadata") or {}
        problems = []
        if (document.get("apiVersion"), document.get("kind")) != ("v1", "Event"):
            problems.append("apiVersion/kind: must be v1 Event")
        if not isinstance(meta.get("name"), str) or not _DNS_SUBDOMAIN.fullmatch(meta["name"]):
            problems.append("metadata.name: must be a DNS subdomain")
        if meta.get("namespace", route.namespace) != route.namespace:
            problems.append("metadata.namespace: does not match the request")
        involved = document.get("involvedObject") or {}
        if involved.get("namespace", "") not in ("", route.namespace) or (
                not involved.get("namespace") and route.namespace != "default"):
            problems.append("involvedObject.namespace: does not match event.namespace")
        if len(str(document.get("reason", ""))) > 128 or len(str(document.get("message", ""))) > 1024 * 4:
            problems.append("reason or message too long")
        if problems:
            return 422, status_body(422, "Event is invalid: " + "; ".join(problems), "Invalid")
        with self._cond:
            if self._stored(route.rtype, route.namespace, meta["name"]) is not None:
                return 409, status_body(409, 'events "%s" already exists' % meta["name"],
                                        "AlreadyExists")
            document = dict(document, metadata=dict(meta, namespace=route.namespace))
            document["metadata"].pop("uid", None)
            return 201, self.put(document)

    # -- RBAC --------------------------------------------------------------

    def deny(self, verb, resource, namespace=None):
        """Refuse `verb` on `resource` (plural) with 403, everywhere or in one namespace.

        A deny limited to a namespace also refuses all-namespaces requests, as
        RBAC would: access to every namespace includes that one.
        """
        if verb not in VERBS:
            raise ValueError("verb must be one of %s" % (VERBS,))
        with self._lock:
            self._denials.add((verb, resource, namespace))

    def allow(self, verb, resource, namespace=None):
        """Undo the deny() with the same arguments."""
        with self._lock:
            self._denials.discard((verb, resource, namespace))

    def use_roles(self, roles):
        """Authorize as RBAC would with these Role and ClusterRole objects (dicts as kubectl
        applies them) bound to the account: a request is allowed only where a rule grants it
        (wildcards "*", resourceNames, a Role only in its own namespace); None: allow everything
        again. deny() still refuses on top of them. Reviews are always allowed (basic-user)."""
        with self._lock:
            self._roles = None if roles is None else [
                (role.get("kind"), (role.get("metadata") or {}).get("namespace"), rule)
                for role in roles for rule in role.get("rules") or ()]

    def refused(self):
        """The requests answered 403 so far: what an audit log would show as refused."""
        return [request for request in self.requests if request.status == 403]

    def _is_denied(self, verb, rtype, namespace, name=None):
        """Refused by a deny(), or (under use_roles()) granted by no rule."""
        with self._lock:
            if any(rule_verb == verb and rule_resource == rtype.resource
                   and (rule_namespace is None or namespace is None or rule_namespace == namespace)
                   for rule_verb, rule_resource, rule_namespace in self._denials):
                return True
            if self._roles is None or rtype == RULES_REVIEW:
                return False
            return not any(_grants(rule, verb, rtype, name) for kind, role_namespace, rule
                           in self._roles if kind == "ClusterRole" or (
                               namespace is not None and role_namespace == namespace))

    def _rules_of_denials(self, namespace):
        """Without use_roles(): everything ("*") where nothing is denied, as for cluster-admin;
        else one rule per resource known (served or denied, in any group) with the verbs not
        denied, so that a resource served only later is not in it (a Role naming no CRD yet)."""
        if not any(rule_namespace in (None, namespace) for _, _, rule_namespace in self._denials):
            return [{"verbs": ["*"], "apiGroups": ["*"], "resources": ["*"]}]
        resources = {rtype.resource: rtype.key in WRITABLE for rtype in self._types.values()}
        for _, resource, _ in self._denials:
            resources.setdefault(resource, False)
        rules = []
        for resource, writable in sorted(resources.items()):
            verbs = [verb for verb in (VERBS if writable else VERBS[:3]) if not self._is_denied(
                verb, ResourceType("", resource, "", True), namespace)]
            if verbs:
                rules.append({"verbs": verbs, "apiGroups": ["*"], "resources": [resource]})
        return rules

    def _rules_review(self, body):
        """(status, document) for a SelfSubjectRulesReview: the rules that use_roles() or the
        deny() list give the namespace asked, as the real apiserver lists them."""
        try:
            document = json.loads(body.decode("utf-8"))
            namespace = document["spec"]["namespace"]
            assert (document.get("apiVersion"), document.get("kind")) == (
                RULES_REVIEW.group_version, RULES_REVIEW.kind)
        except (ValueError, KeyError, TypeError, AssertionError):
            return 400, status_body(400, "not a SelfSubjectRulesReview with spec.namespace")
        if not isinstance(namespace, str) or not namespace:
            return 400, status_body(400, "spec.namespace: Required value")
        with self._lock:
            if self._roles is not None:
                rules = [copy.deepcopy(rule) for kind, role_namespace, rule in self._roles
                         if kind == "ClusterRole" or role_namespace == namespace]
            else:
                rules = self._rules_of_denials(namespace)
            status = {"resourceRules": rules + copy.deepcopy(BASIC_RULES),
                      "nonResourceRules": copy.deepcopy(BASIC_NON_RESOURCE_RULES),
                      "incomplete": self.review_incomplete}
            if self.review_incomplete:
                status["evaluationError"] = "webhook authorizer: rules cannot be listed"
            if self.review_status is not None:
                status = self.review_status(namespace, status)
        return 201, dict(document, metadata={"creationTimestamp": None}, status=status)

    # -- faults ------------------------------------------------------------

    def inject(self, status=500, times=1, match=None, retry_after=None, body=None, reset=False, hang=None,
               raw=None):
        """Make the next `times` requests (None: all, until clear_faults()) whose target
        (path and query, as sent: still percent-encoded) contains `match` fail, before
        authentication is checked:

          default: HTTP `status` with a Status body, or the raw `body` bytes;
          retry_after: add a Retry-After header with this value;
          reset=True: close the connection with an RST, sending nothing;
          hang=seconds: send nothing for that long, then close (with reset=True, by RST);
          raw=bytes: write exactly these bytes (status line, headers, body, or anything else),
            then close the connection: a hostile server, e.g. a body cut short of its
            Content-Length, a chunk size no client can hold, a status line never finished;
          raw=callable: call raw(wfile, stopping) to write, stream or sleep as it likes (an
            endless line, one byte a second), then close. It should return once `stopping`
            (a threading.Event, set by stop()) is set; OSError from a client gone is ignored.
        Rules are tried in the order they were injected. Returns the rule; its `served` counts
        the requests it has answered.
        """
        fault = _Fault(status, times, match, retry_after, body, reset, hang, raw)
        with self._lock:
            self._faults.append(fault)
        return fault

    def clear_faults(self):
        with self._lock:
            self._faults = []

    def _take_fault(self, target):
        with self._lock:
            for fault in self._faults:
                if fault.match is None or fault.match in target:
                    fault.served += 1
                    if fault.remaining is not None:
                        fault.remaining -= 1
                        if fault.remaining <= 0:
                            self._faults.remove(fault)
                    return fault
        return None

    # -- request log and connections -----------------------------------------

    @property
    def requests(self):
        """Every request so far, oldest first (a copy)."""
        with self._lock:
            return list(self._requests)

    def clear_requests(self):
        with self._lock:
            self._requests = []

    @property
    def connections(self):
        """TCP connections accepted so far."""
        with self._lock:
            return self._connections

    def _log_request(self, request):
        with self._lock:
            self._requests.append(request)

    def _count_connection(self):
        with self._lock:
            self._connections += 1

    def _track_connection(self, conn, is_open):
        with self._lock:
            if is_open:
                self._open_connections.add(conn)
            else:
                self._open_connections.discard(conn)

    # -- routing and discovery ---------------------------------------------

    def _route(self, path, query, method="GET"):
        """What a request means: discovery, get, list, watch, create or patch, or unknown."""
        # Segments are percent-decoded, as the real apiserver does: a client quotes a name like
        # "a,b" as a%2Cb in an object's path.
        parts = [unquote(part) for part in path.split("/") if part]
        with self._lock:
            if parts == ["api"]:
                return _Route("discovery", None, None, None, self._api_versions())
            if parts == ["apis"]:
                groups = sorted({rtype.group for rtype in self._types.values()} - {""})
                return _Route("discovery", None, None, None, {
                    "kind": "APIGroupList", "apiVersion": "v1",
                    "groups": [self._api_group(group) for group in groups]})
            if len(parts) == 2 and parts[0] == "apis":
                group = self._api_group(parts[1])
                if not group["versions"]:
                    return _UNKNOWN
                return _Route("discovery", None, None, None, dict(group, kind="APIGroup", apiVersion="v1"))
            if parts[:2] == ["api", "v1"]:
                group_version, rest = "v1", parts[2:]
            elif len(parts) >= 3 and parts[0] == "apis":
                group_version, rest = parts[1] + "/" + parts[2], parts[3:]
            else:
                return _UNKNOWN
            if (group_version, rest) == (RULES_REVIEW.group_version, [RULES_REVIEW.resource]):
                return _Route("create" if method == "POST" else "unwritable", RULES_REVIEW, None,
                              None, None)
            if not rest:
                document = self._api_resource_list(group_version)
                return _Route("discovery", None, None, None, document) if document["resources"] else _UNKNOWN
            namespace = None
            if len(rest) >= 3 and rest[0] == "namespaces":
                namespace, rest = rest[1], rest[2:]
            if len(rest) > 2:
                return _UNKNOWN
            rtype = self._types.get((group_version, rest[0]))
            name = rest[1] if len(rest) == 2 else None
            if (rtype is None or (namespace is not None and not rtype.namespaced)
                    or (name is not None and namespace is None and rtype.namespaced)):
                return _UNKNOWN
            verb = "get" if name else ("watch" if _truthy(query.get("watch", "")) else "list")
            if method in ("POST", "PATCH"):
                verb = {("POST", False): "create", ("PATCH", True): "patch"}.get(
                    (method, bool(name)), "unwritable")
                if rtype.key not in WRITABLE:
                    verb = "unwritable"
            return _Route(verb, rtype, namespace, name, None)

    def _api_versions(self):
        return {"kind": "APIVersions", "versions": ["v1"], "serverAddressByClientCIDRs": [
            {"clientCIDR": "0.0.0.0/0", "serverAddress": "%s:%d" % (self.host, self.port)}]}

    def _api_group(self, group):
        versions = sorted({rtype.group_version for rtype in self._types.values() if rtype.group == group})
        entries = [{"groupVersion": gv, "version": gv.rpartition("/")[2]} for gv in versions]
        return {"name": group, "versions": entries, "preferredVersion": entries[0] if entries else None}

    def _api_resource_list(self, group_version):
        resources = sorted((rtype for rtype in self._types.values() if rtype.group_version == group_version),
                           key=lambda rtype: rtype.resource)
        return {"kind": "APIResourceList", "apiVersion": "v1", "groupVersion": group_version, "resources": [
            {"name": rtype.resource, "singularName": rtype.kind.lower(), "namespaced": rtype.namespaced,
             "kind": rtype.kind, "verbs": list(VERBS) if rtype.key in WRITABLE else list(VERBS[:3])}
            for rtype in resources]}


# ---------------------------------------------------------------------------
# Object builders: plain dicts shaped like real objects, stored only when put()
# ---------------------------------------------------------------------------

_PORTS = [{"name": "http", "port": 80, "protocol": "TCP"}]


def _meta(name, namespace, labels=None):
    meta = {"name": name}
    if namespace is not None:
        meta["namespace"] = namespace
    if labels:
        meta["labels"] = dict(labels)
    return meta


def _condition(condition_type, true, **extra):
    return dict({"type": condition_type, "status": "True" if true else "False",
                 "lastTransitionTime": _now()}, **extra)


def _container_status(name, ready, init):
    if init and ready:
        state = {"terminated": {"exitCode": 0, "reason": "Completed", "finishedAt": _now()}}
    else:
        state = {"running": {"startedAt": _now()}}
    return {"name": name, "ready": ready, "restartCount": 0,
            "image": "registry.example/%s:1" % name, "state": state}


def pod(name, namespace="default", labels=None, node=None, host_ip=None, ready=False,
        containers=("app",), ready_containers=(), init_containers=(), phase="Running", pod_ip=None):
    """A Pod. `ready` sets the Ready and ContainersReady conditions; a container
    (or init container) is ready when named in `ready_containers`, and a ready
    init container is shown terminated with Completed."""
    spec = {"containers": [{"name": c, "image": "registry.example/%s:1" % c} for c in containers]}
    status = {
        "phase": phase,
        "conditions": [_condition("Ready", ready), _condition("ContainersReady", ready)],
        "containerStatuses": [_container_status(c, c in ready_containers, False) for c in containers],
    }
    if init_containers:
        spec["initContainers"] = [{"name": c, "image": "registry.example/%s:1" % c} for c in init_containers]
        status["initContainerStatuses"] = [
            _container_status(c, c in ready_containers, True) for c in init_containers]
    if node:
        spec["nodeName"] = node
        status["conditions"].append(_condition("PodScheduled", True))
    if host_ip:
        status["hostIP"] = host_ip
        status["hostIPs"] = [{"ip": host_ip}]
    if pod_ip:
        status["podIP"] = pod_ip
        status["podIPs"] = [{"ip": pod_ip}]
    return {"apiVersion": "v1", "kind": "Pod", "metadata": _meta(name, namespace, labels),
            "spec": spec, "status": status}


def service(name, namespace="default", selector=None):
    """A ClusterIP Service on port 80; without a selector, as for manually managed endpoints."""
    spec = {"type": "ClusterIP", "ports": [dict(_PORTS[0], targetPort=80)]}
    if selector:
        spec["selector"] = dict(selector)
    return {"apiVersion": "v1", "kind": "Service", "metadata": _meta(name, namespace), "spec": spec}


def endpoint_slice(service_name, namespace="default", addresses=(("10.0.0.1", True),), name=None):
    """An IPv4 EndpointSlice of a service. `addresses` holds (ip, ready) pairs; ready None
    leaves the "ready" condition out (meaning unknown). With no addresses, "endpoints"
    is null, as the real apiserver sends it. The default name is derived from the service's."""
    endpoints = [{"addresses": [ip], "conditions": {} if ready is None else {"ready": ready}}
                 for ip, ready in addresses]
    name = name or "%s-%s" % (service_name, hashlib.sha1(service_name.encode()).hexdigest()[:5])
    return {"apiVersion": "discovery.k8s.io/v1", "kind": "EndpointSlice",
            "metadata": _meta(name, namespace, {"kubernetes.io/service-name": service_name}),
            "addressType": "IPv4", "endpoints": endpoints or None, "ports": list(_PORTS)}


def endpoints(name, namespace="default", ready=("10.0.0.1",), not_ready=()):
    """An Endpoints object; with no addresses at all it has no "subsets", as on a real cluster."""
    obj = {"apiVersion": "v1", "kind": "Endpoints", "metadata": _meta(name, namespace)}
    subset = {}
    if ready:
        subset["addresses"] = [{"ip": ip} for ip in ready]
    if not_ready:
        subset["notReadyAddresses"] = [{"ip": ip} for ip in not_ready]
    if subset:
        subset["ports"] = list(_PORTS)
        obj["subsets"] = [subset]
    return obj


def daemonset(name, namespace="default", match_labels=None, match_expressions=None):
    """A DaemonSet; with neither selector part given it selects {"app": name}."""
    if match_labels is None and match_expressions is None:
        match_labels = {"app": name}
    selector = {}
    if match_labels is not None:
        selector["matchLabels"] = dict(match_labels)
    if match_expressions is not None:
        selector["matchExpressions"] = [dict(expression) for expression in match_expressions]
    template = {"metadata": {"labels": dict(match_labels or {})},
                "spec": {"containers": [{"name": name, "image": "registry.example/%s:1" % name}]}}
    return {"apiVersion": "apps/v1", "kind": "DaemonSet", "metadata": _meta(name, namespace),
            "spec": {"selector": selector, "template": template},
            "status": {"currentNumberScheduled": 0, "desiredNumberScheduled": 0,
                       "numberMisscheduled": 0, "numberReady": 0}}


def job(name, namespace="default", labels=None, succeeded=0, active=0, failed=0, failed_for_good=False,
        suspended=False):
    """A Job; zero counters are left out of status as the real apiserver does.
    failed_for_good adds the Failed condition: True for the backoff limit reached, or a
    (reason, message) pair. suspended sets spec.suspend and the Suspended condition."""
    status = {field: count for field, count in
              (("active", active), ("succeeded", succeeded), ("failed", failed)) if count}
    spec = {"backoffLimit": 6, "completions": 1, "parallelism": 1}
    conditions = []
    if suspended:
        spec["suspend"] = True
        conditions.append(_condition("Suspended", True, reason="JobSuspended",
                                     message="Job suspended"))
    if failed_for_good:
        reason, message = (failed_for_good if isinstance(failed_for_good, tuple) else
                           ("BackoffLimitExceeded", "Job has reached the specified backoff limit"))
        conditions.append(_condition("Failed", True, reason=reason, message=message))
    if conditions:
        status["conditions"] = conditions
    return {"apiVersion": "batch/v1", "kind": "Job", "metadata": _meta(name, namespace, labels),
            "spec": spec, "status": status}


def custom(api_version, kind, name, namespace=None, spec=None, status=None):
    """Any object, e.g. a custom resource; put() defaults the namespace of namespaced kinds."""
    obj = {"apiVersion": api_version, "kind": kind, "metadata": _meta(name, namespace)}
    if spec is not None:
        obj["spec"] = spec
    if status is not None:
        obj["status"] = status
    return obj
