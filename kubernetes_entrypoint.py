#!/usr/bin/python3 -IS
"""kubernetes-entrypoint: wait until a container's Kubernetes dependencies are met, then exec its command.

It reads DEPENDENCY_* variables (services, containers, daemonsets, jobs, pods, custom resources,
sockets, config templates), asks the API server with the pod's service-account token until every
one is met, and replaces itself with COMMAND (same PID, same environment).

The file reads top to bottom: logging, configuration (pure parsing), connections (one deadline
for all of a request), API access, the read interface the checks use (each read listed once, then
watched, or polled where watching is refused), files written whole or not at all, one check per
kind, the kinds table, the waiting engine, Events on the pod, and main/exec. Standard library
only, Python 3.8+.
"""

import _signal  # the built-in half of `signal`, already loaded: the handlers come before all else

EARLY_SIGNALS = []  # stop signals that came before main() took over, while Python was loading


def remember_early_signal(signum, frame):
    """A SIGTERM while the file still loads is kept for main() to act on; without a handler, PID 1
    would never see it, and raising here would print a traceback."""
    EARLY_SIGNALS.append(signum)


if __name__ == "__main__":
    _signal.signal(_signal.SIGINT, remember_early_signal)
    _signal.signal(_signal.SIGTERM, remember_early_signal)

import signal  # noqa: E402  (the handlers above come first, before anything slow)
import sys  # noqa: E402
import errno  # noqa: E402
import io  # noqa: E402  (loaded with Python itself: costs nothing)
import json  # noqa: E402
import os  # noqa: E402
import re  # noqa: E402
import socket  # noqa: E402
import stat  # noqa: E402
import string  # noqa: E402
import threading  # noqa: E402
import time  # noqa: E402
import types  # noqa: E402

__version__ = "0.1.0"

DEFAULT_SERVICEACCOUNT_DIR = "/var/run/secrets/kubernetes.io/serviceaccount"
DEFAULT_CONFIGMAPS_DIR = "/configmaps"
DEFAULT_TERMINATION_LOG = "/dev/termination-log"  # Kubernetes' default terminationMessagePath
TERMINATION_MESSAGE_BYTES = 4096                  # what the kubelet keeps of it
POLL_INTERVAL = 2.0          # seconds between rounds, as the original (ENTRYPOINT_POLL_INTERVAL)
REQUEST_TIMEOUT = 10.0       # seconds for any one API request
TOKEN_REREAD_AFTER = 60.0    # the kubelet rotates the token; reread it at least this often


# --------------------------------------------------------------------------------------------
# Logging: one place writes every line, so the format cannot drift.
# --------------------------------------------------------------------------------------------

LEVELS = ("DEBUG", "INFO", "WARNING", "ERROR")
LOG = types.SimpleNamespace(json=False, threshold=LEVELS.index("INFO"))


def log(level, message, dependency=None):
    """Write one line about this program's own work; errors to stderr, the rest to stdout.

    Text (the original's format): `Entrypoint LEVEL: YYYY/MM/DD HH:MM:SS message`. JSON
    (ENTRYPOINT_LOG_FORMAT=json): {"time", "level", "message", "dependency" when about one}.
    A line break in a path or in a server's message is escaped, so no line can be forged.
    """
    if LEVELS.index(level) < LOG.threshold:
        return
    now = time.time()
    if LOG.json:
        record = {"time": time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(now))
                  + ".%03dZ" % (now % 1 * 1000), "level": level.lower(), "message": message}
        if dependency is not None:
            record["dependency"] = str(dependency)
        line = json.dumps(record) + "\n"
    else:
        line = "Entrypoint %s: %s %s\n" % (level, time.strftime("%Y/%m/%d %H:%M:%S",
                                                               time.localtime(now)),
                                          one_line(message))
    write(sys.stderr if level == "ERROR" else sys.stdout, line)


CONTROL_CHARACTERS = re.compile("[\x00-\x1f\x7f-\x9f\u2028\u2029]")


def one_line(text):
    """Control characters (line breaks above all) written as escapes: `\\n`, `\\x1b`."""
    return CONTROL_CHARACTERS.sub(lambda m: repr(m.group())[1:-1], text)


def shown(value, limit=80):
    """A value from the environment or the server, quoted and cut short for an error line."""
    text = redact(repr(value))  # before the cut, as in clip()
    return text if len(text) <= limit else text[:limit - 4] + "...'"


SECRETS = set()        # every token read: never printed, whatever text carries it
SECRET_PIECES = set()  # every PIECE characters in a row of each: a piece of one is found too
PIECE = 16
TOKEN_RUN = re.compile(r"[A-Za-z0-9._~+/=-]{%d,}" % PIECE)  # characters a token is made of


def keep_secret(token):
    SECRETS.add(token)
    SECRET_PIECES.update(token[i:i + PIECE] for i in range(len(token) - PIECE + 1))


def redact(text):
    """The text without any token, whole or in part: a piece that something cut (or a server
    echoed) is taken out too, whatever stands around it."""
    for secret in tuple(SECRETS):  # a copy: another thread may read a new token meanwhile
        if secret in text:
            text = text.replace(secret, "[token]")
    return TOKEN_RUN.sub(hide_pieces, text) if SECRET_PIECES else text


def hide_pieces(match):
    """The run of token characters with every stretch that is part of a token as [token]."""
    run = match.group()
    hidden = [False] * len(run)
    for start in range(len(run) - PIECE + 1):
        if run[start:start + PIECE] in SECRET_PIECES:
            hidden[start:start + PIECE] = [True] * PIECE
    if not any(hidden):
        return run
    parts, start = [], 0
    for end in range(1, len(run) + 1):
        if end == len(run) or hidden[end] != hidden[start]:
            parts.append("[token]" if hidden[start] else run[start:end])
            start = end
    return "".join(parts)


def clip(text, limit):
    """Text cut to `limit` characters, the token taken out first: a cut must not leave a piece of it
    that redact() would no longer recognise."""
    text = redact(text)
    return text if len(text) <= limit else text[:limit - 3] + "..."


def write(stream, text):
    """Write unbuffered to the stream's file descriptor. A stream that was closed at start or whose
    reader went away (a broken pipe) is not worth dying for: the text is dropped."""
    if stream is None:
        return
    data = redact(text).encode("utf-8", "backslashreplace")
    try:
        fd = stream.fileno()
    except (AttributeError, OSError, ValueError):  # not a file (a test's capture): use it as it is
        stream.write(data.decode("utf-8"))
        stream.flush()
        return
    try:
        while data:
            data = data[os.write(fd, data):]
    except OSError:
        pass


def configure_logging(env):
    """ENTRYPOINT_LOG_FORMAT (text or json) and ENTRYPOINT_LOG_LEVEL (debug adds API requests)."""
    log_format = env.get("ENTRYPOINT_LOG_FORMAT", "").strip().lower() or "text"
    level = env.get("ENTRYPOINT_LOG_LEVEL", "").strip().upper() or "INFO"
    if log_format not in ("text", "json"):
        raise ConfigError("ENTRYPOINT_LOG_FORMAT", "%r is not text or json" % log_format)
    if level not in LEVELS:
        raise ConfigError("ENTRYPOINT_LOG_LEVEL", "%r is not one of %s"
                          % (level.lower(), ", ".join(v.lower() for v in LEVELS)))
    LOG.json, LOG.threshold = log_format == "json", LEVELS.index(level)


# --------------------------------------------------------------------------------------------
# Configuration: pure functions from the environment to a list of dependencies.
# --------------------------------------------------------------------------------------------

class ConfigError(Exception):
    """A setting the operator must fix; main prints it as one line naming the variable, exit 2."""

    def __init__(self, variable, problem):
        super().__init__("%s: %s" % (variable, problem))
        self.variable = variable


class Dependency(types.SimpleNamespace):
    """One thing to wait for.

    Every dependency has `label` (how logs name it) and `needs_api`; parse_dependencies adds the
    `variable` it came from and its kind's `check`. The other attributes are what that check reads
    (namespace, name, labels, pod_name, path, ...).
    """

    def __str__(self):
        return self.label


# Names as the API server validates them: a name outside these rules can never exist, so waiting
# for it would hang silently. Patterns are used with fullmatch (no `$` that lets a newline by).
DNS_LABEL = r"[a-z0-9](?:[-a-z0-9]{0,61}[a-z0-9])?"
SUBDOMAIN_PART = r"[a-z0-9](?:[-a-z0-9]*[a-z0-9])?"  # Kubernetes bounds only the whole name
DNS_SUBDOMAIN = r"(?=.{1,253}\Z)%s(?:\.%s)*" % (SUBDOMAIN_PART, SUBDOMAIN_PART)
OBJECT_NAME = re.compile(DNS_SUBDOMAIN)                        # pods, daemonsets, ...
LABEL_NAME = re.compile(DNS_LABEL)                             # namespaces, containers
SERVICE_NAME = re.compile(r"[a-z](?:[-a-z0-9]{0,61}[a-z0-9])?")  # DNS-1035 label
JOB_NAME = re.compile(r"(?=.{1,63}\Z)" + DNS_SUBDOMAIN)         # its pods carry it as a label
LABEL_PART = re.compile(r"[A-Za-z0-9](?:[-A-Za-z0-9_.]{0,61}[A-Za-z0-9])?")  # a key's name, a value
VERSION = re.compile(r"[a-z](?:[-a-z0-9]{0,61}[a-z0-9])?")                  # v1, v1beta1
KIND_NAME = re.compile(r"[A-Za-z](?:[-A-Za-z0-9]{0,61}[A-Za-z0-9])?")
RESOURCE_NAME = OBJECT_NAME  # a plural resource name from discovery
HOST_PART = r"[A-Za-z0-9](?:[-A-Za-z0-9]{0,61}[A-Za-z0-9])?"
HOST_NAME = re.compile(r"(?=.{1,253}\Z)%s(?:\.%s)*\.?" % (HOST_PART, HOST_PART))


def is_label_key(key):
    """`name` or `prefix/name`, the prefix a DNS subdomain."""
    prefix, slash, name = key.rpartition("/")
    return bool(LABEL_PART.fullmatch(name) and (not slash or OBJECT_NAME.fullmatch(prefix)))


def is_label_value(value):
    return value == "" or bool(LABEL_PART.fullmatch(value))


def is_group_version(group_version):
    """`v1` (the core group) or `group/version`, the group a DNS subdomain."""
    group, slash, version = group_version.rpartition("/")
    return bool(VERSION.fullmatch(version) and (not slash or OBJECT_NAME.fullmatch(group)))


class Settings(types.SimpleNamespace):
    """What every parser may need besides its own variable: base namespace, pod, directories."""


def read_settings(env):
    """Collect the non-dependency variables; NAMESPACE falls back to the service account's namespace."""
    sa_dir = env.get("ENTRYPOINT_SERVICEACCOUNT_DIR", "").strip() or DEFAULT_SERVICEACCOUNT_DIR
    namespace = env.get("NAMESPACE", "").strip()
    if namespace:
        check_name("NAMESPACE", namespace, "namespace", LABEL_NAME)
    else:
        namespace_file = os.path.join(sa_dir, "namespace")
        namespace = read_text(namespace_file).strip() or "default"
        if not LABEL_NAME.fullmatch(namespace):
            raise ConfigError("NAMESPACE", "not set, and %s holds %s, not a valid namespace"
                              % (namespace_file, shown(namespace)))
    pod_name = env.get("POD_NAME", "").strip()
    if pod_name:
        check_name("POD_NAME", pod_name, "pod name")
    return Settings(
        namespace=namespace,
        pod_name=pod_name,
        interface=env.get("INTERFACE_NAME", "").strip(),
        serviceaccount_dir=sa_dir,
        configmaps_dir=env.get("ENTRYPOINT_CONFIGMAPS_DIR", "").strip() or DEFAULT_CONFIGMAPS_DIR,
        poll_interval=seconds_setting(env, "ENTRYPOINT_POLL_INTERVAL", POLL_INTERVAL, 0.1, 3600),
        timeout=seconds_setting(env, "ENTRYPOINT_TIMEOUT", 0, 0, YEAR),
        progress_interval=seconds_setting(env, "ENTRYPOINT_PROGRESS_INTERVAL", 30, 1, YEAR,
                                          zero_means_off=True),
        request_timeout=seconds_setting(env, "ENTRYPOINT_REQUEST_TIMEOUT", REQUEST_TIMEOUT,
                                        0.1, 3600),
        api_server=api_server_setting(env.get("ENTRYPOINT_API_SERVER", "").strip()),
        events=switch_setting(env, "ENTRYPOINT_EVENTS", True),
    )


def read_text(path, limit=65536):
    """A small file's text ('' when missing or unreadable); bytes that are not UTF-8 are replaced."""
    try:
        with open(path, "rb") as f:
            return f.read(limit).decode("utf-8", "replace")
    except (OSError, ValueError):
        return ""


YEAR = 365 * 24 * 3600


def seconds_setting(env, variable, default, minimum, maximum, zero_means_off=False):
    """A number of seconds from the environment, from `minimum` (a floor that keeps a typo such as
    1e-9 from hammering the API server) to `maximum`; 0 too where it means "off"."""
    value = env.get(variable, "").strip()
    if not value:
        return default
    try:
        seconds = float(value)
    except ValueError:
        seconds = -1.0
    if not (minimum <= seconds <= maximum or zero_means_off and seconds == 0):
        raise ConfigError(variable, "%s is not a number of seconds (%s%g to %d)"
                          % (shown(value), "0 for off, or " if zero_means_off else "", minimum,
                             maximum))
    return seconds


def switch_setting(env, variable, default):
    """true or false (any case); empty is the default."""
    value = env.get(variable, "").strip().lower()
    if value not in ("", "true", "false"):
        raise ConfigError(variable, "%s is not true or false" % shown(env[variable].strip()))
    return default if not value else value == "true"


def api_server_setting(url):
    """ENTRYPOINT_API_SERVER: https://... (token and CA as in a pod), or http:// to this machine only
    (kubectl proxy); plain HTTP elsewhere would send requests unprotected."""
    if not url:
        return None
    import urllib.parse
    try:
        parts = urllib.parse.urlsplit(url)
        port = parts.port
    except ValueError:
        parts = port = None
    bracketed = re.search(r"\[(.*)\]", parts.netloc) if parts is not None else None
    if (parts is None or parts.scheme not in ("http", "https") or not parts.hostname
            or bracketed and getattr(ip_address(bracketed.group(1)), "version", 0) != 6
            or port == 0 or "@" in parts.netloc or parts.query or parts.fragment
            or CONTROL_CHARACTERS.search(url) or " " in url
            or not is_host(parts.hostname)):
        raise ConfigError("ENTRYPOINT_API_SERVER", "%s is not an http:// or https:// URL of an API "
                                                   "server (host, optional port and path)"
                          % shown(url))
    if parts.scheme == "http" and not is_loopback(parts.hostname):
        raise ConfigError("ENTRYPOINT_API_SERVER", "plain http is only for this machine (kubectl "
                                                   "proxy on 127.0.0.1); use https for %s"
                          % parts.hostname)
    return url


def ip_address(host):
    import ipaddress
    try:
        return ipaddress.ip_address(host)
    except ValueError:
        return None


def is_host(host):
    """A host name or an IP address, as a URL may carry it. A name whose last label is a number
    (`1`, `127.1`, `0x7f`) is neither: the C library would take it for an address."""
    if ip_address(host) is not None:
        return True
    last_label = host.rstrip(".").rpartition(".")[2]
    return bool(HOST_NAME.fullmatch(host)) and not re.fullmatch(r"[0-9]+|0[xX][0-9a-fA-F]*",
                                                                  last_label)


def is_loopback(host):
    address = ip_address(host)
    return host == "localhost" or address is not None and address.is_loopback


def split_list(value):
    """Comma-separated items, whitespace trimmed, empty items (a trailing comma) skipped."""
    return [item.strip() for item in value.split(",") if item.strip()]


def check_name(variable, name, what="name", pattern=OBJECT_NAME):
    if not pattern.fullmatch(name):
        raise ConfigError(variable, "%s is not a valid Kubernetes %s" % (shown(name), what))
    return name


# What each kind's names must be, as the API server validates them.
NAME_RULES = {
    "DEPENDENCY_SERVICE": (SERVICE_NAME, "Service name (a DNS-1035 label: a-z, 0-9, '-', "
                                         "starting with a letter, at most 63)"),
    "DEPENDENCY_JOBS": (JOB_NAME, "Job name (at most 63 characters)"),
    "DEPENDENCY_JOBS_JSON": (JOB_NAME, "Job name (at most 63 characters)"),
}


def check_object_name(variable, name):
    pattern, what = NAME_RULES.get(variable, (OBJECT_NAME, "name"))
    return check_name(variable, name, what, pattern)


def split_namespaced(variable, item, base_namespace):
    """`namespace:name` or `name` (in the base namespace); anything else is an error."""
    parts = item.split(":")
    if len(parts) == 1:
        return base_namespace, check_object_name(variable, item)
    if len(parts) > 2:
        raise ConfigError(variable, "%r has more than one colon (want namespace:name)" % item)
    namespace, name = parts[0].strip(), parts[1].strip()
    if not namespace:
        raise ConfigError(variable, "%r has an empty namespace (want namespace:name)" % item)
    if not name:
        raise ConfigError(variable, "%r has an empty name (want namespace:name)" % item)
    return (check_name(variable, namespace, "namespace", LABEL_NAME),
            check_object_name(variable, name))


def without_namespace(variable, item):
    """CONTAINER, SOCKET and CONFIG items are local to this pod: a namespace makes no sense."""
    if ":" in item:
        raise ConfigError(variable, "%r: this kind takes no namespace (no colon allowed)" % item)
    return item


def require_pod_name(variable, settings):
    if not settings.pod_name:
        raise ConfigError("POD_NAME", "not set, but %s needs it to find this pod "
                                      "(set it from the downward API: metadata.name)" % variable)
    return settings.pod_name


def go_map(labels):
    """Labels as the original prints them (Go's map formatting), so log greps keep matching."""
    return "map[%s]" % " ".join("%s:%s" % (k, labels[k]) for k in sorted(labels))


def selector_from_labels(labels):
    """A label selector string requiring every key=value pair."""
    return ",".join("%s=%s" % (k, labels[k]) for k in sorted(labels))


# JSON variables ---------------------------------------------------------------------------

def parse_json_list(variable, value):
    try:
        entries = json.loads(value)
    except (ValueError, RecursionError) as e:
        raise ConfigError(variable, "invalid JSON (%s)" % e)
    if not isinstance(entries, list):
        raise ConfigError(variable, "expected a JSON list of objects, got %s" % type(entries).__name__)
    for entry in entries:
        if not isinstance(entry, dict):
            raise ConfigError(variable, "expected a JSON list of objects, found %s" % entry_text(entry))
        unknown = sorted(set(entry) - set(JSON_KEYS[variable]))
        if unknown:
            import difflib
            close = difflib.get_close_matches(unknown[0], JSON_KEYS[variable], n=1)
            raise ConfigError(variable, "unknown key %s in %s (%s)" % (
                shown(unknown[0]), entry_text(entry), "did you mean %r?" % close[0] if close
                else "known: " + ", ".join(JSON_KEYS[variable])))
    return entries


JSON_KEYS = {
    "DEPENDENCY_JOBS_JSON": ("name", "labels", "namespace"),
    "DEPENDENCY_POD_JSON": ("labels", "namespace", "requireSameNode"),
    "DEPENDENCY_CUSTOM_RESOURCE": ("apiVersion", "kind", "name", "namespace", "fields", "conditions"),
}


def json_string(variable, entry, key, required=False):
    """A string member, trimmed; None when absent or blank (an error where `required`)."""
    value = entry.get(key)
    if value is not None and not isinstance(value, str):
        raise ConfigError(variable, "%r must be a string in %s" % (key, entry_text(entry)))
    value = (value or "").strip()
    if not value:
        if required:
            raise ConfigError(variable, "entry %s has no %r" % (entry_text(entry), key))
        return None
    return value


def entry_text(entry):
    """A JSON entry as an error line shows it: compact, cut short."""
    text = json.dumps(entry)
    return text if len(text) <= 200 else text[:196] + "...}"


def json_labels(variable, entry, required):
    labels = entry.get("labels")
    if labels is None:
        if required:
            raise ConfigError(variable, "entry %s has no 'labels'" % entry_text(entry))
        return None
    if not isinstance(labels, dict) or not labels:
        raise ConfigError(variable, "'labels' must be a non-empty object (an empty one matches "
                                    "everything) in %s" % entry_text(entry))
    for key, val in labels.items():
        if not isinstance(val, str):
            raise ConfigError(variable, "label %s must have a string value in %s"
                              % (shown(key), entry_text(entry)))
        # Checked as Kubernetes does: anything else would change the selector's meaning
        # (`app!` + `=x` reads `app!=x`) or be refused by the API server on every try.
        if not is_label_key(key):
            raise ConfigError(variable, "%s is not a valid label key ([prefix/]name: name up to 63 "
                                        "of A-Z a-z 0-9 - _ ., prefix a DNS subdomain)" % shown(key))
        if not is_label_value(val):
            raise ConfigError(variable, "%s is not a valid value for label %s (empty, or up to 63 "
                                        "of A-Z a-z 0-9 - _ ., alphanumeric at both ends)"
                              % (shown(val), key))
    return labels


def json_namespace(variable, entry, settings):
    namespace = json_string(variable, entry, "namespace")
    if namespace is None:
        return settings.namespace
    return check_name(variable, namespace, "namespace", LABEL_NAME)


# One parser per kind: (variable, value, settings) -> [Dependency] --------------------------

def parse_services(variable, value, settings):
    deps = []
    for item in split_list(value):
        namespace, name = split_namespaced(variable, item, settings.namespace)
        deps.append(Dependency(needs_api=True, namespace=namespace, name=name,
                               label="Service %s in namespace %s" % (name, namespace)))
    return deps


def parse_containers(variable, value, settings):
    names = [check_name(variable, without_namespace(variable, item), "container name", LABEL_NAME)
             for item in split_list(value)]
    pod_name = require_pod_name(variable, settings) if names else None
    return [Dependency(needs_api=True, name=name, pod_namespace=settings.namespace,
                       pod_name=pod_name, label="Container %s" % name) for name in names]


def parse_daemonsets(variable, value, settings):
    items = split_list(value)
    pod_name = require_pod_name(variable, settings) if items else None
    deps = []
    for item in items:
        namespace, name = split_namespaced(variable, item, settings.namespace)
        deps.append(Dependency(needs_api=True, namespace=namespace, name=name,
                               pod_name=pod_name, pod_namespace=settings.namespace,
                               label="Daemonset %s in namespace %s" % (name, namespace)))
    return deps


def job_dependency(namespace, name=None, labels=None):
    if name:
        label = "Job %s in namespace %s" % (name, namespace)
    else:
        label = "Jobs with labels %s in namespace %s" % (go_map(labels), namespace)
    return Dependency(needs_api=True, namespace=namespace, name=name,
                      labels=labels, label=label)


def parse_jobs(variable, value, settings):
    return [job_dependency(*split_namespaced(variable, item, settings.namespace))
            for item in split_list(value)]


def parse_jobs_json(variable, value, settings):
    deps = []
    for entry in parse_json_list(variable, value):
        name = json_string(variable, entry, "name")
        labels = json_labels(variable, entry, required=False)
        if name and labels:
            raise ConfigError(variable, "give 'name' or 'labels', not both, in %s" % entry_text(entry))
        if not name and not labels:
            raise ConfigError(variable, "entry %s has neither 'name' nor 'labels'" % entry_text(entry))
        if name:
            check_object_name(variable, name)
        deps.append(job_dependency(json_namespace(variable, entry, settings), name, labels))
    return deps


def parse_pods_json(variable, value, settings):
    deps = []
    for entry in parse_json_list(variable, value):
        labels = json_labels(variable, entry, required=True)
        namespace = json_namespace(variable, entry, settings)
        same_node = entry.get("requireSameNode", False)
        if not isinstance(same_node, bool):
            raise ConfigError(variable, "'requireSameNode' must be true or false in %s"
                              % entry_text(entry))
        deps.append(Dependency(
            needs_api=True, namespace=namespace, labels=labels,
            require_same_node=same_node,
            pod_name=require_pod_name(variable, settings) if same_node else None,
            pod_namespace=settings.namespace,
            label="Pod on same host with labels %s in namespace %s" % (go_map(labels), namespace)))
    return deps


def json_pairs(variable, entry, key, first, second, second_default=None):
    """A list of {first: str, second: scalar} objects, e.g. fields [{key, value}]."""
    items = entry.get(key) or []
    if not isinstance(items, list):
        raise ConfigError(variable, "%r must be a list in %s" % (key, entry_text(entry)))
    pairs = []
    for item in items:
        if not isinstance(item, dict) or not isinstance(item.get(first), str) or not item[first]:
            raise ConfigError(variable, "each of %r needs a string %r, got %s"
                              % (key, first, entry_text(item)))
        want = item.get(second, second_default)
        if want is None or isinstance(want, (dict, list)):
            raise ConfigError(variable, "each of %r needs a %r, got %s"
                              % (key, second, entry_text(item)))
        pairs.append((item[first], want if isinstance(want, str) else json.dumps(want)))
    return pairs


def parse_custom_resources(variable, value, settings):
    deps = []
    for entry in parse_json_list(variable, value):
        api_version = json_string(variable, entry, "apiVersion", required=True)
        kind = json_string(variable, entry, "kind", required=True)
        name = json_string(variable, entry, "name", required=True)
        if not is_group_version(api_version):
            raise ConfigError(variable, "apiVersion %s is not group/version (example.com/v1) or a "
                                        "core version (v1)" % shown(api_version))
        check_name(variable, kind, "kind (CamelCase letters and digits)", KIND_NAME)
        check_custom_resource_name(variable, name)
        namespace = json_namespace(variable, entry, settings)
        fields = json_pairs(variable, entry, "fields", "key", "value")
        for key, _ in fields:
            if not FIELD_PATH.fullmatch(key):
                raise ConfigError(variable, "field key %s is not a dotted path such as "
                                            "status.phase" % shown(key))
        deps.append(Dependency(
            needs_api=True, api_version=api_version, resource_kind=kind,
            name=name, namespace=namespace, fields=fields,
            conditions=json_pairs(variable, entry, "conditions", "type", "status", "True"),
            label="%s %s in namespace %s" % (kind, name, namespace)))
    return deps


FIELD_PATH = re.compile(r"[^.\s]+(?:\.[^.\s]+)*")  # status.phase: no empty part, no blank


def check_custom_resource_name(variable, name):
    """Some kinds allow any name (`:` and `,` included), but none a path could not carry."""
    if (name in (".", "..") or "/" in name or "%" in name or len(name) > 253
            or CONTROL_CHARACTERS.search(name)):
        raise ConfigError(variable, "%s is not a name an object can have (no '/', '%%' or control "
                                    "characters, not '.' or '..', at most 253)" % shown(name))


def parse_sockets(variable, value, settings):
    return [Dependency(needs_api=False, path=without_namespace(variable, item),
                       label="Socket %s" % item) for item in split_list(value)]


# CONFIG: templates rendered once, before waiting -----------------------------------------

class ConfigTemplate(string.Template):
    """`{{ .IP }}` placeholders (the Go template syntax users already have in ConfigMaps)."""
    flags = 0  # case-sensitive, as Go templates are
    pattern = r"""
        \{\{ \s* (?:
            \. (?P<named>[A-Za-z_][A-Za-z0-9_]*) \s* \}\}
          | (?P<braced>(?!)) | (?P<escaped>(?!))
          | (?P<invalid>)
        )
    """


TEMPLATE_VALUES = ("IP", "HOSTNAME", "IP_ERLANG")


def render_template(variable, source, text, values):
    """Substitute the known placeholders; anything else inside {{ }} is an error naming it."""
    for match in ConfigTemplate.pattern.finditer(text):
        name = match.group("named")
        if name not in values:
            start = match.start()
            line_end = text.find("\n", start)
            if line_end < 0:
                line_end = len(text)
            end = text.find("}}", start, line_end)
            placeholder = text[start:end + 2] if end >= 0 else text[start:min(line_end, start + 20)]
            line = text.count("\n", 0, start) + 1
            raise ConfigError(variable, "unknown placeholder %s in %s line %d (known: %s)"
                              % (placeholder, source, line,
                                 ", ".join("{{ .%s }}" % v for v in TEMPLATE_VALUES)))
    return ConfigTemplate(text).substitute(values)


SIOCGIFADDR = 0x8915


def ipv4_address(interface):
    """The interface's first IPv4 address by ioctl, or None when it has none."""
    import fcntl
    import struct
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        try:
            answer = fcntl.ioctl(sock.fileno(), SIOCGIFADDR,
                                 struct.pack("256s", interface.encode()[:15]))
        except OSError as e:
            if e.errno == errno.EADDRNOTAVAIL:
                return None
            raise
    return socket.inet_ntoa(answer[20:24])


def ipv6_global_address(if_inet6_text, interface):
    """The interface's global IPv6 address from /proc/net/if_inet6 text, as 32 hex digits, or None."""
    for line in if_inet6_text.splitlines():
        fields = line.split()
        if len(fields) == 6 and fields[5] == interface and fields[3] == "00":
            return fields[0]
    return None


def template_values(interface):
    """IP, HOSTNAME and IP_ERLANG for INTERFACE_NAME: IPv4 if it has one, else its global IPv6."""
    if not interface:
        raise ConfigError("INTERFACE_NAME", "not set, but DEPENDENCY_CONFIG needs it to template {{ .IP }}")
    try:
        socket.if_nametoindex(interface)
        ip = ipv4_address(interface)
    except (OSError, ValueError):
        raise ConfigError("INTERFACE_NAME", "there is no network interface named %s"
                          % shown(interface))
    if ip is not None:
        erlang = ip.replace(".", ",")
    else:
        try:
            with open("/proc/net/if_inet6") as f:
                hex_address = ipv6_global_address(f.read(), interface)
        except OSError:
            hex_address = None
        if hex_address is None:
            raise ConfigError("INTERFACE_NAME", "interface %s has no IPv4 or global IPv6 address"
                              % shown(interface))
        ip, erlang = ipv6_forms(hex_address)
    return {"IP": ip, "HOSTNAME": socket.gethostname(), "IP_ERLANG": erlang}


def ipv6_forms(hex_address):
    """(text form, Erlang tuple form: the eight 16-bit groups in decimal) of a 32-hex-digit address."""
    text = socket.inet_ntop(socket.AF_INET6, bytes.fromhex(hex_address))
    erlang = ",".join(str(int(hex_address[i:i + 4], 16)) for i in range(0, 32, 4))
    return text, erlang


def parse_configs(variable, value, settings):
    destinations = [without_namespace(variable, item) for item in split_list(value)]
    if not destinations:
        return []
    values = template_values(settings.interface)
    deps = []
    for destination in destinations:
        base = os.path.basename(destination)
        if base in ("", ".", ".."):
            raise ConfigError(variable, "%s does not name a file" % shown(destination))
        source = os.path.join(settings.configmaps_dir, base, base)
        try:
            with open(source, "rb") as f:
                template = f.read()
        except (OSError, ValueError) as e:
            raise ConfigError(variable, "cannot read template %s for %s: %s"
                              % (source, destination, getattr(e, "strerror", None) or e))
        deps.append(Dependency(needs_api=False, path=destination,
                               content=render_bytes(variable, source, template, values),
                               label="Config %s" % destination))
    return deps


def render_bytes(variable, source, template, values):
    """The template's bytes as they are (line ends, any encoding), placeholders replaced, as the
    original copies them: bytes that are not UTF-8 pass through untouched."""
    text = template.decode("utf-8", "surrogateescape")
    return render_template(variable, source, text, values).encode("utf-8", "surrogateescape")


# --------------------------------------------------------------------------------------------
# Connections: every request to the API server within one deadline, from the name lookup to
# the last byte of the answer; TLS verified as client-go verifies it.
# --------------------------------------------------------------------------------------------

class DeadlineSocket:
    """A connected socket whose every send and receive ends at its connection's one deadline, so
    that a server trickling a byte at a time cannot hold a request past its whole time.

    As with socket.makefile(), closing it while a response is still being read (an answer after
    which the server closes the connection) closes it only once that response is done."""

    def __init__(self, sock, connection):
        self._sock = sock
        self._connection = connection
        self._readers = 0
        self._closed = False

    def _arm(self):
        remaining = self._connection.deadline - time.monotonic()
        if remaining <= 0:
            raise socket.timeout("timed out")
        self._sock.settimeout(remaining)

    def sendall(self, data):
        self._arm()
        self._sock.sendall(data)

    def recv_into(self, buffer, size=0):
        self._arm()
        return self._sock.recv_into(buffer, size)

    def makefile(self, mode="rb"):
        self._readers += 1
        return io.BufferedReader(SocketReader(self))

    def reader_closed(self):
        self._readers -= 1
        if self._closed and not self._readers:
            self._sock.close()

    def close(self):
        self._closed = True
        if not self._readers:
            self._sock.close()


class SocketReader(io.RawIOBase):
    """The raw stream http.client reads a response from, through a DeadlineSocket."""

    def __init__(self, sock):
        super().__init__()
        self._sock = sock

    def readable(self):
        return True

    def readinto(self, buffer):
        return self._sock.recv_into(buffer)

    def close(self):
        if not self.closed:
            super().close()
            self._sock.reader_closed()


def time_left(deadline, what):
    remaining = deadline - time.monotonic()
    if remaining <= 0:
        raise socket.timeout("%s timed out" % what)
    return remaining


def start_thread(thread):
    """Start a background thread with the stop signals blocked in it (a thread inherits the mask),
    so that they always reach the main thread, which handles them."""
    with stop_signals_held():
        thread.start()


LOOKUPS = {}  # (host, port): the name lookup under way, which the next request waits for too
LOOKUP_KEPT = 60.0  # seconds the answer of a lookup that ended after its request gave up is used
LOOKUPS_LOCK = threading.Lock()


def addresses(host, port, deadline):
    """getaddrinfo for a TCP connection, within `deadline`. The C library's lookup cannot be cut
    short, so it runs in a thread that is waited for until the deadline; a request that comes
    while a lookup of its host is still under way waits for that one rather than start another,
    so a resolver that never answers holds one thread, not one per request."""
    def look_up():
        try:
            lookup.answer = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
        except Exception as e:  # (an idna error is a ValueError)
            lookup.answer = e if isinstance(e, OSError) else OSError(str(e))
        lookup.finished = time.monotonic()

    if ip_address(host) is not None:  # nothing to look up
        return socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
    with LOOKUPS_LOCK:
        lookup = LOOKUPS.get((host, port))
        if lookup is not None and not lookup.is_alive() and (
                isinstance(lookup.answer, OSError)
                or time.monotonic() - lookup.finished > LOOKUP_KEPT):
            lookup = None  # one that nobody waited for to the end: a failure, or too old
        if lookup is None:
            lookup = threading.Thread(target=look_up, name="lookup", daemon=True)
            lookup.answer, lookup.finished = None, 0.0
            try:
                start_thread(lookup)
            except RuntimeError:  # no thread to spare (a low pids limit): look up in this one
                lookup = None
            else:
                LOOKUPS[(host, port)] = lookup
    if lookup is None:
        return socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
    lookup.join(time_left(deadline, "name lookup of %s" % host))
    if lookup.is_alive():
        raise socket.timeout("name lookup of %s timed out" % host)
    with LOOKUPS_LOCK:
        if LOOKUPS.get((host, port)) is lookup:
            del LOOKUPS[(host, port)]
    if isinstance(lookup.answer, OSError):
        raise lookup.answer
    return lookup.answer


def connect_before(deadline, address):
    """A TCP connection to `address` (host, port), name lookup included, made before `deadline`;
    the socket's timeout is then what is left, for the TLS handshake (one timeout for all of it)."""
    host, port = address
    failure = None
    for family, kind, protocol, _, socket_address in addresses(host, port, deadline):
        sock = socket.socket(family, kind, protocol)
        try:
            sock.settimeout(time_left(deadline, "connection"))
            sock.connect(socket_address)
            sock.settimeout(time_left(deadline, "connection"))
            return sock
        except OSError as e:
            sock.close()
            failure = e
    raise failure or OSError("no address for %s" % host)


def bounded_connection(base):
    """An http.client connection class whose name lookup, connect, TLS handshake, request and
    response all fit in `deadline` (time.monotonic), set before each request."""

    class Bounded(base):
        deadline = 0.0

        def connect(self):
            self._create_connection = lambda address, *_: connect_before(self.deadline, address)
            super().connect()
            self.sock = DeadlineSocket(self.sock, self)

    return Bounded


def tls_context(ca_path):
    """Verify the API server as client-go does: its chain must lead to a certificate in `ca_path`
    (any of them is a trust anchor, as in Go), and a subjectAltName must match the host or IP (the
    subject's CN does not count, as in Go). Python 3.13 adds OpenSSL's strict X.509 rules, which
    refuse what real clusters serve and client-go accepts (a CA without keyUsage, a certificate
    without authority key identifier): those rules are left off on every version."""
    import ssl
    context = ssl.create_default_context(cafile=ca_path)
    context.verify_flags = ((context.verify_flags & ~ssl.VERIFY_X509_STRICT)
                            | getattr(ssl, "VERIFY_X509_PARTIAL_CHAIN", 0x80000))
    context.hostname_checks_common_name = False
    context.minimum_version = ssl.TLSVersion.TLSv1_2  # as Go; 3.8 and 3.9 leave it to OpenSSL
    return context


def describe_failure(error):
    """What went wrong with a connection, for a log line. A ValueError's text is not shown: it can
    quote a header (the token) that http.client refused to send."""
    if isinstance(error, ValueError) and not isinstance(error, OSError):  # (TLS errors are both)
        return "the request could not be sent (%s)" % type(error).__name__
    return clip(str(error) or type(error).__name__, 300)


# --------------------------------------------------------------------------------------------
# API access: HTTPS requests and watch streams with the service-account token.
# --------------------------------------------------------------------------------------------

class ApiError(Exception):
    """A request that did not give an answer: `status` is the HTTP code, or None when none came."""

    def __init__(self, status, message, reason="", retry_after=None):
        super().__init__(message)
        self.status = status
        self.reason = reason
        self.message = message
        self.retry_after = retry_after

    def __str__(self):
        if self.status is None:
            return self.message
        return "%d %s: %s" % (self.status, self.reason or "error", self.message)


MAX_ANSWER_BYTES = 8 * 1024 * 1024  # one answer or one watch event; more is malformed
MAX_ERROR_BYTES = 64 * 1024         # what is read of an error answer
RETRY_AFTER_LIMIT = 10              # seconds: the longest Retry-After honoured (then backoff)
# A bearer token's characters (RFC 6750): anything else would break the header (and the error
# would show it), or be escaped in a JSON log line where redact() would not recognise it.
TOKEN_TEXT = re.compile(r"[A-Za-z0-9._~+/-]{1,65536}=*")


class TokenFile:
    """The service-account token, reread every minute (the kubelet rotates it) and on demand.

    A token is never printed: each one read is kept as a secret, which every output line is
    cleaned of (see redact).
    """

    def __init__(self, path, clock=time.monotonic):
        self.path = path
        self.clock = clock
        self.value = None
        self.read_at = None
        self.problem = None
        self.refresh(required=True)

    def refresh(self, required=False):
        try:
            with open(self.path, "rb") as f:
                value = f.read(65537).strip()
        except OSError as e:
            value, problem = b"", e.strerror
        else:
            problem = "the file is empty"
            if value and not TOKEN_TEXT.fullmatch(value.decode("latin-1")):
                value, problem = b"", ("the file does not hold one bearer token (it has line "
                                       "breaks, spaces or other characters a token cannot have, "
                                       "or is too long)")
        if value:
            self.value = value.decode("ascii")
            keep_secret(self.value)
            self.read_at, self.problem = self.clock(), None
        elif required:
            raise ConfigError("ENTRYPOINT_SERVICEACCOUNT_DIR",
                              "cannot read the service-account token %s: %s" % (self.path, problem))
        elif problem != self.problem:
            self.problem = problem
            log("WARNING", "cannot reread the service-account token %s: %s; keeping the one read "
                           "before" % (self.path, problem))

    def current(self):
        if self.clock() - self.read_at >= TOKEN_REREAD_AFTER:
            self.refresh()
        return self.value


def api_server_url(env, variable_hint):
    """https://host:port from the in-cluster variables (an IPv6 host goes in brackets)."""
    host = env.get("KUBERNETES_SERVICE_HOST", "").strip()
    port = env.get("KUBERNETES_SERVICE_PORT", "").strip()
    for name, value in (("KUBERNETES_SERVICE_HOST", host), ("KUBERNETES_SERVICE_PORT", port)):
        if not value:
            raise ConfigError(name, "not set, but %s needs the Kubernetes API "
                                    "(Kubernetes sets it in every pod)" % variable_hint)
    if not re.fullmatch(r"[0-9]{1,5}", port) or not 0 < int(port) < 65536:
        raise ConfigError("KUBERNETES_SERVICE_PORT", "%s is not a port number" % shown(port))
    bracketed = host.startswith("[") and host.endswith("]")
    address = ip_address(host[1:-1] if bracketed else host)
    if not (is_host(host) or bracketed and address is not None and address.version == 6):
        raise ConfigError("KUBERNETES_SERVICE_HOST", "%s is not a host name or address"
                          % shown(host))
    if address is not None and address.version == 6:
        host = "[%s]" % address
    return "https://%s:%s" % (host, port)


class ApiClient:
    """GETs and watch streams (and the writes of Events), each thread on its own kept-alive
    connection.

    HTTPS is always verified against the service-account CA and sends the token. Plain HTTP is
    only for `kubectl proxy` on this machine (ENTRYPOINT_API_SERVER), which authenticates itself.
    Every request has one deadline for all of it, and every answer a size limit: no server can
    hold a request for ever or fill the memory.
    """

    def __init__(self, server_url, serviceaccount_dir, timeout=REQUEST_TIMEOUT):
        import http.client
        import urllib.parse
        self._http = http.client
        self._quote = urllib.parse.quote
        self._urlencode = urllib.parse.urlencode
        url = urllib.parse.urlsplit(server_url)
        self._host, self._port, self._prefix = url.hostname, url.port, url.path.rstrip("/")
        self._timeout = timeout
        self._local = threading.local()
        self._context = None
        self._untrusted = ()  # the error of a server certificate that fails verification
        self.token = None
        if url.scheme == "https":
            import ssl
            ca_path = self._ca_path = os.path.join(serviceaccount_dir, "ca.crt")
            self._untrusted = ssl.SSLCertVerificationError
            try:
                self._context = tls_context(ca_path)
            except (OSError, ssl.SSLError) as e:
                raise ConfigError("ENTRYPOINT_SERVICEACCOUNT_DIR",
                                  "cannot load the API server's CA %s (%s); refusing to connect "
                                  "unverified" % (ca_path, getattr(e, "strerror", None) or e))
            self.token = TokenFile(os.path.join(serviceaccount_dir, "token"))
            self._connection_class = bounded_connection(http.client.HTTPSConnection)
        else:
            self._connection_class = bounded_connection(http.client.HTTPConnection)

    def _connect(self):
        if self._context is None:
            return self._connection_class(self._host, self._port or 80)
        return self._connection_class(self._host, self._port or 443, context=self._context)

    def path(self, group_version, resource, namespace=None, name=None):
        """The URL path of a collection, an object or discovery; the one place URLs are built.
        Every part is quoted, whether it came from the environment or from the server."""
        quote = self._quote
        parts = [self._prefix + ("/api/v1" if group_version == "v1"
                                 else "/apis/" + quote(group_version, safe="/"))]
        if namespace:
            parts += ["namespaces", quote(namespace, safe="")]
        if resource:
            parts.append(quote(resource, safe=""))
        if name:
            parts.append(quote(name, safe=""))
        return "/".join(parts)

    def get(self, path, query=None):
        """The parsed JSON answer (an object), or an ApiError."""
        response = self._open(path, query)
        body = self._read_body(response, MAX_ANSWER_BYTES if response.status == 200
                               else MAX_ERROR_BYTES)
        if response.status != 200:
            raise self._error(response, body)
        try:
            answer = json.loads(body.decode("utf-8"))
        except (ValueError, RecursionError):
            answer = None
        if not isinstance(answer, dict):
            raise ApiError(None, "malformed answer from the API server for %s" % path, "Malformed")
        return answer

    def watch(self, path, query, seconds):
        """Yield (event, its size in bytes) for each event of a watch stream until it ends (the
        event's shape unchecked).

        The answer must come within the request timeout; the stream may then last `seconds` (the
        server's timeoutSeconds and some slack), and no event may be larger than an answer.
        """
        response = self._open(path, query)
        if response.status != 200:
            raise self._error(response, self._read_body(response, MAX_ERROR_BYTES))
        self._local.connection.deadline = time.monotonic() + seconds
        try:
            while True:
                line = response.readline(MAX_ANSWER_BYTES + 1)
                if not line:
                    return  # the server ended the stream (timeoutSeconds, or it went away)
                if len(line) > MAX_ANSWER_BYTES:
                    raise ApiError(None, "watch event larger than %d MiB from the API server"
                                   % (MAX_ANSWER_BYTES >> 20), "Malformed")
                if line.strip():
                    try:
                        event = json.loads(line.decode("utf-8"))
                    except (ValueError, RecursionError):
                        raise ApiError(None, "malformed watch event from the API server",
                                       "Malformed")
                    yield event, len(line)
        except (OSError, self._http.HTTPException) as e:
            raise ApiError(None, "watch stream broken: %s" % describe_failure(e))
        finally:
            self.close()  # a stream is not reused; the next request opens a fresh connection

    def send(self, method, path, document, content_type="application/json"):
        """POST or PATCH a JSON document; its status (200 or 201), or an ApiError. Nothing in the
        answer is needed, so its body is read (bounded) and dropped."""
        response = self._open(path, None, method, json.dumps(document).encode(), content_type)
        body = self._read_body(response, MAX_ERROR_BYTES)
        if response.status not in (200, 201):
            raise self._error(response, body)
        return response.status

    def _read_body(self, response, limit):
        """The whole body, at most `limit` bytes, within the request's deadline; an answer cut
        short or too large is an ApiError (a truncated error body is kept as far as it came)."""
        chunks, size = [], 0
        try:
            if response.length is not None and response.length > limit:
                raise ApiError(None, "answer larger than %d KiB from the API server"
                               % (limit >> 10), "Malformed")
            while True:
                chunk = response.read(65536)
                if not chunk:
                    break
                size += len(chunk)
                if size > limit:
                    raise ApiError(None, "answer larger than %d KiB from the API server"
                                   % (limit >> 10), "Malformed")
                chunks.append(chunk)
            if response.length:  # the connection closed before Content-Length was sent
                raise self._http.IncompleteRead(b"", response.length)
        except (OSError, self._http.HTTPException, ApiError) as e:
            self.close()
            if response.status != 200:
                return b"".join(chunks)
            if isinstance(e, ApiError):
                raise
            raise ApiError(None, "no whole answer from the API server: %s" % describe_failure(e))
        if response.will_close:
            self.close()
        return b"".join(chunks)

    def _error(self, response, body):
        """An ApiError from an error answer: its Status message if it has one (cut short)."""
        try:
            status = json.loads(body.decode("utf-8"))
        except (ValueError, RecursionError):
            status = None
        status = status if isinstance(status, dict) else {}
        message, reason = status.get("message"), status.get("reason")
        if not isinstance(message, str) or not message:
            message = redact(body.decode("utf-8", "replace")).strip() or "no message"
        if not isinstance(reason, str) or not reason:
            reason = response.reason
        retry_after = (response.getheader("Retry-After") or "").strip()
        return ApiError(response.status, clip(message, 500), clip(str(reason), 100),
                        min(int(retry_after), RETRY_AFTER_LIMIT)
                        if re.fullmatch("[0-9]{1,9}", retry_after) else None)

    def _open(self, path, query, method="GET", body=None, content_type=None):
        """Send a request and return the response, its body unread; after a 401 reread the token,
        and send it again if the token changed. Everything until the body is read shares one
        deadline."""
        if query:
            path += "?" + self._urlencode(query)
        deadline = time.monotonic() + self._timeout
        response = self._send(method, path, deadline, body, content_type)
        if response.status == 401 and self.token is not None:
            refused = self.token.value
            self.token.refresh()
            if self.token.value != refused:
                self._read_body(response, MAX_ERROR_BYTES)
                response = self._send(method, path, deadline, body, content_type)
        return response

    def _send(self, method, path, deadline, body=None, content_type=None):
        """One request on this thread's kept-alive connection; one the server closed is reopened
        once (a write sent twice that way is harmless: an Event's name is ours, see Events)."""
        headers = {"Accept": "application/json", "User-Agent": "kubernetes-entrypoint/" + __version__}
        if body is not None:
            headers["Content-Type"] = content_type
        if self.token is not None:
            headers["Authorization"] = "Bearer " + self.token.current()
        for attempt in (1, 2):
            connection = getattr(self._local, "connection", None)
            reused = connection is not None
            if not reused:
                connection = self._local.connection = self._connect()
            connection.deadline = deadline
            started = time.monotonic()
            try:
                connection.request(method, path, body=body, headers=headers)
                response = connection.getresponse()
                log("DEBUG", "%s %s: %d in %.0f ms" % (method, path, response.status,
                                                       (time.monotonic() - started) * 1000))
                return response
            except (OSError, ValueError, self._http.HTTPException) as e:
                log("DEBUG", "%s %s: failed after %.0f ms (%s)" % (
                    method, path, (time.monotonic() - started) * 1000, describe_failure(e)))
                self.close()
                if reused and attempt == 1 and isinstance(
                        e, (self._http.RemoteDisconnected, ConnectionResetError, BrokenPipeError)):
                    continue
                if isinstance(e, self._untrusted):
                    raise ApiError(None, "the API server's certificate is not trusted: %s "
                                         "(verified against %s)"
                                   % (clip(str(e.verify_message), 300), self._ca_path))
                if time.monotonic() >= deadline:
                    raise ApiError(None, "no answer from the API server within %gs"
                                   % self._timeout)
                raise ApiError(None, "cannot reach the API server: %s" % describe_failure(e))

    def close(self):
        connection = getattr(self._local, "connection", None)
        if connection is not None:
            connection.close()
            self._local.connection = None


def kind_of_resource(group_version, resource):
    """`endpointslices.discovery.k8s.io`, `pods`: how RBAC rules and messages name a resource."""
    group = group_version.rpartition("/")[0]
    return "%s.%s" % (resource, group) if group else resource


# --------------------------------------------------------------------------------------------
# The read interface: what the checks see. Each distinct read is a collection, listed once and
# then kept fresh by a watch (or, where watching is refused, by polling), shared by every check.
# An answer is believed only once its shape is checked, and only the objects that really match
# the read's namespace and selectors are kept, whatever the server sent.
# --------------------------------------------------------------------------------------------

WATCH_SECONDS = 240          # server-side timeoutSeconds of a watch, plus up to a minute of jitter
WATCH_SILENCE = 30           # a stream still open this long past its timeoutSeconds is dropped
HEALTHY_STREAM = 30          # seconds: a watch that ends sooner counts as a failure (backoff)
UNUSED_GRACE = 60            # seconds a watched collection out of use is kept
BACKOFF_LIMIT = 30.0         # seconds: the longest wait between retries of a failing read
MERGE_LIMIT = 50             # label values in one merged read (its URL stays short)
CACHE_MISSES = 3             # cache reads failing in a row before a collection reads storage...
CACHE_PAUSE = 30             # ... for this many reads (a minute at the default interval)
WATCH_EVENTS = ("ADDED", "MODIFIED", "DELETED", "BOOKMARK", "ERROR")


def backoff(failures, interval, retry_after=None):
    """Capped exponential backoff with jitter; a 429's Retry-After is a floor."""
    import random
    delay = min(BACKOFF_LIMIT, interval * 2 ** max(failures - 1, 0)) * random.uniform(0.8, 1.2)
    return max(delay, retry_after or 0)


# The kinds the checks read; a custom resource's kind comes from discovery (resource_for).
BUILT_IN_KINDS = {("v1", "pods"): "Pod", ("v1", "endpoints"): "Endpoints",
                  ("discovery.k8s.io/v1", "endpointslices"): "EndpointSlice",
                  ("apps/v1", "daemonsets"): "DaemonSet", ("batch/v1", "jobs"): "Job"}


def is_list_of(answer, items, collection):
    """A list of the collection's kind, as the API server says it: `<Kind>List`, exactly so for
    the kinds the checks read. A custom resource's CRD may name its list kind otherwise
    (spec.names.listKind), but its items always say their kind, and must say this one."""
    if answer.get("kind") == "%sList" % collection.kind:
        return all(item.get("kind", collection.kind) == collection.kind for item in items)
    return ((collection.group_version, collection.resource) not in BUILT_IN_KINDS
            and answer.get("kind") != "Status"
            and all(item.get("kind") == collection.kind for item in items))


def malformed(what, problem):
    return ApiError(None, "malformed answer for %s: %s" % (what, problem), "Malformed")


def is_object(obj):
    """Shaped like a Kubernetes object: metadata with a string name, a string namespace if any,
    and labels (if any) mapping strings to strings."""
    meta = obj.get("metadata") if isinstance(obj, dict) else None
    if not isinstance(meta, dict) or not isinstance(meta.get("name"), str) \
            or not isinstance(meta.get("namespace", ""), str):
        return False
    labels = meta.get("labels") or {}
    return isinstance(labels, dict) and all(
        isinstance(k, str) and isinstance(v, str) for k, v in labels.items())


def parse_selector(selector):
    """The requirements of a label selector this file wrote (`k=v`, `k in (a,b)`, `k notin (a,b)`,
    `k`, `!k`), as (key, operator, values); its keys and values are validated, so plain splitting
    is enough."""
    requirements, depth, start = [], 0, 0
    for i, char in enumerate(selector + ","):
        depth += {"(": 1, ")": -1}.get(char, 0)
        if char == "," and depth == 0:
            part, start = selector[start:i].strip(), i + 1
            if " in (" in part or " notin (" in part:
                key, operator, values = part.split(" ", 2)
                requirements.append((key, operator, set(values.strip("()").split(","))))
            elif "=" in part:
                key, _, value = part.partition("=")
                requirements.append((key, "in", {value}))
            elif part.startswith("!"):
                requirements.append((part[1:], "absent", set()))
            elif part:
                requirements.append((part, "exists", set()))
    return requirements


def labels_match(requirements, labels):
    labels = labels if isinstance(labels, dict) else {}
    for key, operator, values in requirements:
        if operator == "in" and labels.get(key) not in values \
                or operator == "notin" and labels.get(key) in values \
                or operator == "exists" and key not in labels \
                or operator == "absent" and key in labels:
            return False
    return True


def field_selector(path, value):
    """`path=value` with the value escaped as the API server reads it (`\\`, `,` and `=`)."""
    return "%s=%s" % (path, value.replace("\\", "\\\\").replace(",", "\\,").replace("=", "\\="))


def parse_field_selector(selector):
    """(dotted path, value) of a one-requirement field selector written by field_selector()."""
    path, _, value = selector.partition("=")
    return path.split("."), re.sub(r"\\(.)", r"\1", value)


class Collection(types.SimpleNamespace):
    """One read: a list with selectors, an object by name (a list by metadata.name), or discovery.

    `items` maps (namespace, name) to objects, or resource name to resource for discovery; it is
    None until the first answer. `mode` says how it is kept fresh: "watch", "poll" (list every
    round), "get" (get by name every round, where list is refused) or "discovery".
    """

    def holds(self, obj):
        """An object of this read's kind (as the API server always says) that it selects."""
        return self.of_kind(obj) and self.selects(obj)

    def of_kind(self, obj):
        return obj.get("kind") == (self.kind or obj.get("kind"))

    def selects(self, obj):
        """Whether an object really belongs to this read: a server that ignores a selector (or
        sends another namespace's objects) must not make a dependency met."""
        meta = obj["metadata"]
        if self.namespace and meta.get("namespace") not in (None, self.namespace):
            return False
        if not labels_match(self.label_requirements, meta.get("labels")):
            return False
        if self.field_requirement:
            path, value = self.field_requirement
            if (dig(obj, *path) or "") != value:
                return False
        return True


class ApiReader:
    """get, list and resource_for for the checks, answered from collections.

    The engine learns which collections each check read (begin/end), asks for the ones still in use
    to be followed (follow), polled when due (poll), and waits for the watched ones to change (wait).
    """

    def __init__(self, client, interval=POLL_INTERVAL, watch=True, clock=time.monotonic):
        import queue
        self.client = client
        self.interval = interval
        self.watch_allowed = watch
        self.clock = clock
        self.collections = {}
        self.settled = {}           # answers that can no longer change, read once
        self.reads = set()          # collections read by the check being evaluated
        self.changes = queue.Queue()  # collection keys, from watch threads
        self._empty = queue.Empty
        self.lock = threading.Lock()
        self.said = set()           # messages logged once
        self.watch_refused = set()  # collection paths where watching is refused: poll them
        self.troubles = {}          # collection key -> [last error text, times seen]
        self.merged = {}            # a read's key -> the key of the merged read that answers it
        self.kinds = dict(BUILT_IN_KINDS)  # (group version, resource) -> the kind it serves

    # What checks call ---------------------------------------------------------------------

    def get(self, group_version, resource, namespace, name, settled=None):
        """The object, or None while it does not exist. `settled(obj)`: true once what the check
        needs of the object can no longer change; from then on it is not read again."""
        key = (group_version, resource, namespace, None, field_selector("metadata.name", name))
        if settled is not None and key in self.settled:
            return self.settled[key]
        items = self._answer(key, name)
        obj = items[0] if items else None
        if settled is not None and obj is not None and settled(obj):
            self.settled[key] = obj
            self.reads.discard(key)
        return obj

    def list(self, group_version, resource, namespace, labels=None, fields=None):
        return self._answer((group_version, resource, namespace, labels or None, fields or None))

    def forget_settled(self, group_version, resource, namespace, name):
        """The object was replaced (deleted and created again): the next settled get reads it."""
        self.settled.pop((group_version, resource, namespace, None,
                          field_selector("metadata.name", name)), None)

    def resource_for(self, group_version, kind):
        """The discovery entry serving `kind`, or None while none does (its CRD not installed yet)."""
        if (group_version, kind) not in self.settled:
            key = (group_version, None, None, None, None)
            served = [r for r in self._answer(key) if r["kind"] == kind]
            if not served:
                return None
            self.settled[(group_version, kind)] = served[0]
            self.kinds[(group_version, served[0]["name"])] = kind
            self.reads.discard(key)
        return self.settled[(group_version, kind)]

    def merge(self, reads):
        """Make label reads that one selector can say together one read: `k=a` and `k=b` of a
        resource in one namespace become `k in (a,b)` (at most MERGE_LIMIT values each). Each
        check still sees only its own objects; one list, one watch, one poll serves them all."""
        groups = {}
        for group_version, resource, namespace, labels in reads:
            key, _, value = labels.partition("=")
            values = groups.setdefault((group_version, resource, namespace, key), [])
            if value not in values:
                values.append(value)
        for (group_version, resource, namespace, key), values in groups.items():
            for start in range(0, len(values), MERGE_LIMIT):
                chunk = sorted(values[start:start + MERGE_LIMIT])
                if len(chunk) < 2:
                    continue
                merged = (group_version, resource, namespace,
                          "%s in (%s)" % (key, ",".join(chunk)), None)
                for value in chunk:
                    self.merged[(group_version, resource, namespace, "%s=%s" % (key, value),
                                 None)] = merged

    def _answer(self, key, name=None):
        source = self.merged.get(key, key)
        self.reads.add(source)
        collection = self.collections.get(source)
        if collection is None:
            collection = self.collections[source] = self._new_collection(source, name)
            self.refresh(collection)
        with self.lock:
            if collection.items is None:
                raise collection.error
            items = list(collection.items.values())
        if source is not key:  # only this read's own objects
            wanted = parse_selector(key[3])
            items = [obj for obj in items if labels_match(wanted, obj["metadata"].get("labels"))]
        return items

    # What the engine calls ----------------------------------------------------------------

    def begin(self):
        self.reads = set()

    def end(self):
        return self.reads

    def follow(self, in_use):
        """Watch the collections still in use; forget the rest (a later read lists them afresh).

        A watched collection out of use is kept, and watched, for UNUSED_GRACE seconds first:
        a check that reads it now and then (the Endpoints while a Service has no EndpointSlice)
        must not cost a list and a new watch each time a server makes it flip.
        """
        now = self.clock()
        for key in list(self.collections):
            collection = self.collections[key]
            if key in in_use:
                collection.unused_since = None
            elif collection.mode == "watch" and collection.watcher is not None and (
                    collection.unused_since is None or now - collection.unused_since < UNUSED_GRACE):
                collection.unused_since = collection.unused_since or now
            else:
                collection.stopped = True
                del self.collections[key]
                continue
            if collection.mode == "watch" and collection.items is not None \
                    and collection.watcher is None:
                collection.watcher = threading.Thread(target=self._watch, args=(collection,),
                                                      daemon=True)
                try:
                    start_thread(collection.watcher)
                except RuntimeError as e:  # a low pids limit: poll this one instead
                    collection.watcher, collection.mode = None, "poll"
                    self._say_once(("thread", collection.path),
                                   "cannot start a thread to watch %s (%s): polling it every %gs "
                                   "instead" % (self._describe(collection), e, self.interval))

    def poll(self, in_use):
        """Refresh the polled collections in use that are due; return the keys whose answer changed."""
        now = self.clock()
        due = [c for k, c in self.collections.items() if k in in_use and c.next_refresh <= now
               and (c.mode != "watch" or c.watcher is None and c.items is None)]
        return {c.key for c in due if self.refresh(c)}

    def wait(self, timeout):
        """Block until a watched collection changes or `timeout` passes; return the changed keys."""
        changed = set()
        try:
            changed.add(self.changes.get(timeout=max(timeout, 0.001)))
            while True:
                changed.add(self.changes.get_nowait())
        except self._empty:
            return changed

    # Keeping collections fresh -------------------------------------------------------------

    def _new_collection(self, key, name):
        group_version, resource, namespace, labels, fields = key
        query = {}
        if labels:
            query["labelSelector"] = labels
        if fields:
            query["fieldSelector"] = fields
        path = self.client.path(group_version, resource, namespace)
        if resource is None:
            mode = "discovery"
        elif self.watch_allowed and path not in self.watch_refused:
            mode = "watch"
        else:
            mode = "poll"
        return Collection(key=key, group_version=group_version, resource=resource,
                          kind=self.kinds.get((group_version, resource)),
                          namespace=namespace, name=name, query=query, mode=mode, path=path,
                          label_requirements=parse_selector(labels or ""),
                          field_requirement=parse_field_selector(fields) if fields else None,
                          items=None, error=None, resource_version=None, failures=0,
                          next_refresh=0.0, watcher=None, stopped=False, event_bytes=0,
                          unused_since=None, cache_misses=0, storage_reads=0,
                          from_cache=False, seen_version=0)

    def refresh(self, collection):
        """Read the collection once (list, get by name, or discovery); True if its answer changed.
        Whatever goes wrong is an ApiError kept in the collection, never an exception that escapes."""
        try:
            try:
                items, resource_version, from_cache = self._read(collection)
            except ApiError:
                raise
            except Exception as e:  # an answer no check of its shape foresaw
                raise malformed(self._describe(collection), "%s: %s" % (type(e).__name__, e))
        except ApiError as e:
            if e.status == 403 and collection.mode in ("watch", "poll") and collection.name:
                collection.mode = "get"
                self._say_once(("list", collection.path),
                               "API refused list %s (403): polling it by name instead; grant 'list' "
                               "and 'watch' to react at once" % self._describe(collection))
                return self.refresh(collection)
            if e.status == 403:
                self._log_refusal("list" if collection.mode in ("watch", "poll") else "get",
                                  collection)
            collection.failures += 1
            collection.next_refresh = self.clock() + backoff(collection.failures, self.interval,
                                                             e.retry_after)
            self._trouble(collection, e)
            changed = collection.items is not None or str(collection.error) != str(e)
            with self.lock:
                collection.items, collection.error = None, e
            return changed
        self._trouble(collection, None)
        changed = versions(items) != versions(collection.items)
        if collection.mode == "discovery":
            # a kind not served yet: look again, less and less often while nothing changes
            collection.failures = 0 if changed else collection.failures + 1
            collection.next_refresh = self.clock() + backoff(collection.failures, self.interval)
        else:
            collection.failures = 0
            collection.next_refresh = 0.0  # polled collections are due every round
        with self.lock:
            collection.items, collection.error = items, None
            collection.resource_version = resource_version
            collection.seen_version = max(collection.seen_version,
                                          object_version(resource_version) or 0)
            collection.from_cache = from_cache
            collection.event_bytes = 0
        return changed

    def _read(self, collection):
        """One read of the collection: (items, resourceVersion of the answer or None, whether the
        answer came from the API server's cache).

        The first read is the plain, quorum read. The next ones ask for the watch cache (no trip
        to etcd) as of a version not older than the last answer, and are believed only once no
        object in them is older than in that answer and none comes back that was gone by the
        newest version seen (see not_older). Where the server cannot answer so (a lagging
        cache's "too large resource version", 410, any failure but a refusal or a 429) or its
        answer is older, the read is done the plain way at once; after CACHE_MISSES of those in
        a row, so are the next CACHE_PAUSE reads, and all of them where the server refuses the
        parameters (400, 422).
        """
        if collection.mode == "discovery":
            try:
                answer = self.client.get(collection.path)
            except ApiError as e:
                if e.status != 404:
                    raise
                return {}, None, False  # the group/version is not served (yet)
            return discovered_resources(answer, self._describe(collection)), None, False
        if collection.storage_reads > 0:
            collection.storage_reads -= 1
        elif collection.items is not None and collection.resource_version \
                and (collection.items or collection.mode != "get"):
            answer = self._read_from_cache(collection)
            if answer is not None:
                return answer + (True,)
        items, version = self._read_once(collection, None)
        return items, version, False

    def _read_from_cache(self, collection):
        """(items, resourceVersion) from the watch cache, or None (the miss counted and said)."""
        seen = max(collection.seen_version, object_version(collection.resource_version) or 0)
        refused, expected = False, True
        try:
            items, version = self._read_once(collection, cache_version(collection))
            if not_older(collection.items, seen, items, version):
                collection.cache_misses = 0
                return items, version
            problem = "its answer is older than one already seen"
        except ApiError as e:
            if e.status in (401, 403, 404, 429):
                raise  # said and retried as for any read
            problem, refused = str(e), e.status in (400, 422)  # parameters not understood
            expected = e.status in (410, 504)
        collection.cache_misses += 1
        if refused:
            collection.storage_reads = float("inf")
        elif collection.cache_misses >= CACHE_MISSES:
            collection.cache_misses, collection.storage_reads = 0, CACHE_PAUSE
        message = "reading %s from the API server's cache failed (%s); reading it from storage" \
            % (self._describe(collection), problem)
        if expected:  # a cache behind, as caches are now and then
            log("DEBUG", message)
        else:  # a failure worth knowing of, said once for the collection
            self._say_once(("cache", collection.path), message)
        return None

    def _read_once(self, collection, version):
        """One request: (items, resourceVersion), read as of `version` or, None, from storage."""
        what = self._describe(collection)
        if collection.mode == "get":
            try:  # a get's resourceVersion means "not older than" by itself
                obj = self.client.get(self.client.path(
                    collection.group_version, collection.resource, collection.namespace,
                    collection.name), {"resourceVersion": version} if version else None)
            except ApiError as e:
                if e.status != 404:
                    raise
                return {}, version
            if not is_object(obj) or not collection.holds(obj):
                raise malformed(what, "not the object asked for")
            version = dig(obj, "metadata", "resourceVersion")
            return {object_key(obj): obj}, version if isinstance(version, str) else None
        query = collection.query
        if version:
            query = dict(query, resourceVersion=version, resourceVersionMatch="NotOlderThan")
        answer = self.client.get(collection.path, query)
        items = answer.get("items")
        if not isinstance(items, list) or not all(is_object(item) for item in items):
            raise malformed(what, "not a list of objects")
        if not is_list_of(answer, items, collection):
            raise malformed(what, "kind %s, not a list of %s objects"
                            % (shown(answer.get("kind"), 40), collection.kind))
        version = dig(answer, "metadata", "resourceVersion")
        return ({object_key(item): item for item in items if collection.selects(item)},
                version if isinstance(version, str) else None)

    def _watch(self, collection):
        """A watch thread. Whatever goes wrong, it never leaves its collection frozen: on an error
        no check foresaw, the collection is handed to the engine's polling."""
        try:
            self._keep_watching(collection)
        except Exception as e:
            log("WARNING", "watching %s failed (%s: %s); polling it every %gs instead"
                % (self._describe(collection), type(e).__name__, e, self.interval))
            collection.mode = "poll"
            self.changes.put(collection.key)

    def _keep_watching(self, collection):
        """Follow the collection from its list's resourceVersion, for as long as it is in use.

        A stream that ends after a while: resume from the last resourceVersion. ERROR 410 (history
        compacted): list again. Streams that end early or fail in a row back off, so that no
        answer can make this loop spin. Watch refused (403) or not supported (405): hand the
        collection to the engine's polling and stop.
        """
        import random
        failures, relist = 0, False
        while not collection.stopped:
            if (relist or collection.items is None) and not self._relist(collection):
                failures += 1  # the list's own error is already logged
                time.sleep(backoff(failures, self.interval, collection.error.retry_after))
                continue
            relist = False
            seconds = WATCH_SECONDS + random.randint(0, 60)
            query = dict(collection.query, watch="1", allowWatchBookmarks="true",
                         timeoutSeconds=str(seconds))
            if collection.resource_version:
                query["resourceVersion"] = collection.resource_version
            opened, error = time.monotonic(), None
            try:
                for event, size in self.client.watch(collection.path, query,
                                                     seconds + WATCH_SILENCE):
                    if collection.stopped:
                        return
                    collection.event_bytes += size
                    if collection.event_bytes > MAX_ANSWER_BYTES:
                        # A list is bounded; so are the changes believed on top of it, or a
                        # server could grow the memory without end: list afresh.
                        raise ApiError(410, "more than %d MiB of changes since the last list"
                                       % (MAX_ANSWER_BYTES >> 20), "Expired")
                    self._apply(collection, event)
                    self._trouble(collection, None)
            except ApiError as e:
                error = e
            if error is None and time.monotonic() - opened >= HEALTHY_STREAM:
                failures = 0
                continue  # a normal end (timeoutSeconds): resume
            if error is not None and error.status in (403, 405) and collection.mode == "watch":
                self._log_refusal("watch", collection, "polling every %gs instead; grant 'watch' "
                                  "to react at once" % self.interval)
                self.watch_refused.add(collection.path)
                collection.mode = "poll"
            if collection.mode != "watch":
                self.changes.put(collection.key)  # the engine polls it from now on
                return
            failures += 1
            if error is None or error.status == 410:
                # ended early, or its history is gone: at once the first time, then backing off
                relist = error is not None
                delay = backoff(failures - 1, self.interval) if failures > 1 else 0
            else:
                relist = True
                self._trouble(collection, error)
                delay = backoff(failures, self.interval, error.retry_after)
            time.sleep(delay)

    def _relist(self, collection):
        """List again (the watch history is gone); changes it finds are passed on like events.
        True when the list was read."""
        if self.refresh(collection):
            self.changes.put(collection.key)
        return collection.items is not None

    def _apply(self, collection, event):
        """One watch event, checked first: anything not shaped like an event is malformed."""
        kind = event.get("type") if isinstance(event, dict) else None
        obj = event.get("object") if kind in WATCH_EVENTS else None
        if not isinstance(obj, dict):
            raise malformed(self._describe(collection), "not a watch event")
        if kind == "ERROR":
            code, message = obj.get("code"), obj.get("message")
            reason = obj.get("reason")
            raise ApiError(code if type(code) is int else None,
                           clip(message, 500) if isinstance(message, str) else "watch error",
                           clip(reason, 100) if isinstance(reason, str) else "")
        version = dig(obj, "metadata", "resourceVersion")
        version = version if isinstance(version, str) else None
        if kind == "BOOKMARK":
            collection.resource_version = version or collection.resource_version
            return
        if not is_object(obj) or not collection.of_kind(obj):
            raise malformed(self._describe(collection), "an event without an object of its kind")
        with self.lock:
            if collection.items is None:
                return  # a failed list is being redone; it will bring this change too
            if kind == "DELETED" or not collection.selects(obj):
                collection.items.pop(object_key(obj), None)
            else:
                collection.items[object_key(obj)] = obj
            collection.resource_version = version or collection.resource_version
        self.changes.put(collection.key)

    # Logging -----------------------------------------------------------------------------

    @staticmethod
    def _describe(collection):
        """`pods me in namespace x`, `jobs.batch in namespace x`, `discovery of example.com/v1`."""
        if collection.resource is None:
            return "discovery of " + collection.group_version
        what = kind_of_resource(collection.group_version, collection.resource)
        if collection.name:
            what += " " + collection.name
        if collection.namespace:
            what += " in namespace " + collection.namespace
        return what

    def _say_once(self, key, message):
        if key not in self.said:
            self.said.add(key)
            log("WARNING", message)

    def _log_refusal(self, verb, collection, then=""):
        self._say_once((verb, collection.path),
                       "API refused %s %s (403): the Role needs %r on %s%s"
                       % (verb, self._describe(collection), verb,
                          collection.resource or "discovery", "; " + then if then else ""))

    def _trouble(self, collection, error):
        """Log a failing read when its error first appears or changes, and once more with a count
        when it clears: a repeating error is one line, not one per try."""
        with self.lock:  # watch threads and the engine both report
            last = self.troubles.get(collection.key)
            if error is None:
                self.troubles.pop(collection.key, None)
            elif error.status != 403:  # refusals are logged once, with the rule to add
                if last and last[0] == str(error):
                    last[1] += 1
                    return
                self.troubles[collection.key] = [str(error), 1]
        if error is None and last:
            log("INFO", "reading %s works again (it failed %d times: %s)"
                % (self._describe(collection), last[1], last[0]))
        elif error is not None and error.status != 403:
            log("WARNING", "reading %s failed: %s; retrying" % (self._describe(collection), error))


def discovered_resources(answer, what):
    """The resources a discovery answer lists, by name; entries of the wrong shape, subresources
    (`pods/log`) and names no URL path could carry are left out."""
    resources = answer.get("resources")
    if not isinstance(resources, list):
        raise malformed(what, "no list of resources")
    return {r["name"]: r for r in resources
            if isinstance(r, dict) and isinstance(r.get("name"), str)
            and RESOURCE_NAME.fullmatch(r["name"]) and isinstance(r.get("kind"), str)
            and isinstance(r.get("namespaced"), bool)}


def object_key(obj):
    return dig(obj, "metadata", "namespace"), dig(obj, "metadata", "name")


def cache_version(collection):
    """The version to read the collection's next answer as of, from the cache. An answer from
    the cache gives its own. One from storage gives the newest of its objects' versions: the
    cache has seen those (they are changes of this resource), not always the list's version,
    which is etcd's latest of any resource; a cache lagging behind it answers only after 3 s,
    with "too large resource version". No object: any version ("0"), checked by not_older."""
    if collection.from_cache or collection.mode == "get":
        return collection.resource_version
    seen = [object_version(obj) for obj in collection.items.values()]
    return str(max(seen)) if seen and None not in seen else "0"


def object_version(obj):
    """A resourceVersion (an object's, or a version string itself) as a number (etcd's
    revision), or None if it is none."""
    version = obj if isinstance(obj, str) else dig(obj, "metadata", "resourceVersion")
    return int(version) if isinstance(version, str) and re.fullmatch("[0-9]{1,20}", version) \
        else None


def not_older(before, seen, after, after_version):
    """Whether an answer (`after`, as of `after_version`) is not older than what was seen: no
    object has an older version than in the answer before, none has come back that was gone
    by `seen` (the newest version seen of the collection: an object not there before, in a
    version from before then), none is newer than the answer itself, and none is missing that
    the answer is too old to have seen removed. Versions that are not numbers: not believed."""
    at_after = object_version(after_version)
    old = {key: object_version(obj) for key, obj in before.items()}
    new = {key: object_version(obj) for key, obj in after.items()}
    if at_after is None or None in old.values() or None in new.values():
        return False
    if any(version > at_after or (version < old[key] if key in old else version <= seen)
           for key, version in new.items()):
        return False
    return all(key in new or version <= at_after for key, version in old.items())


def versions(items):
    """What identifies an answer's content: each object's resourceVersion (or itself)."""
    if items is None:
        return None
    return {key: dig(obj, "metadata", "resourceVersion") or json.dumps(obj, sort_keys=True)
            for key, obj in items.items()}


# --------------------------------------------------------------------------------------------
# Files: a rendered config is written whole or not at all, never through a planted link, and
# no stop signal leaves a temporary file behind.
# --------------------------------------------------------------------------------------------

def write_file_atomically(path, data):
    """Write `data` (bytes) all or nothing: into a new temporary file, flushed to disk, then renamed
    over `path`, so no reader ever sees half a file and a full disk leaves the old one in place.

    The temporary file has a random name and is created exclusively, never through a symlink
    another container may have planted. It keeps an existing file's mode (else 0644). A
    single-file mount cannot be renamed over (EBUSY), and its directory may be read-only: there
    the file is written in place (write_in_place).
    """
    directory = os.path.dirname(path) or "."
    os.makedirs(directory, exist_ok=True)
    try:
        mode = stat.S_IMODE(os.stat(path).st_mode)
    except FileNotFoundError:
        mode = 0o644
    with stop_signals_held():  # a signal between creating and removing the file would leak it
        try:
            fd, temporary = create_temporary_file(directory, os.path.basename(path))
        except OSError as e:
            if e.errno not in (errno.EROFS, errno.EACCES, errno.EPERM) or not os.path.isfile(path):
                raise
            return write_in_place(path, data)
        try:
            try:
                os.fchmod(fd, mode)
                write_all(fd, data)
                os.fsync(fd)
            finally:
                os.close(fd)
            os.replace(temporary, path)
        except BaseException as e:  # a full disk: leave nothing behind
            remove_quietly(temporary)
            if not isinstance(e, OSError) or e.errno != errno.EBUSY:
                raise
            write_in_place(path, data)


class stop_signals_held:
    """Within it, the stop signals wait (blocked); they are handled the moment it ends."""

    def __enter__(self):
        self.previous = signal.pthread_sigmask(signal.SIG_BLOCK, stop_signal_numbers())

    def __exit__(self, *exc_info):
        signal.pthread_sigmask(signal.SIG_SETMASK, self.previous)


def create_temporary_file(directory, base):
    """(fd, path) of a new file `.<base>.<random>.tmp`, created exclusively and without following
    a symlink."""
    flags = (os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_NOFOLLOW", 0)
             | getattr(os, "O_CLOEXEC", 0))
    for _ in range(100):
        temporary = os.path.join(directory, ".%s.%s.tmp" % (base[:200], os.urandom(8).hex()))
        try:
            return os.open(temporary, flags, 0o600), temporary
        except FileExistsError:
            continue
    raise FileExistsError(errno.EEXIST, "no free temporary file name", directory)


def write_all(fd, data):
    """os.write until everything is written: a short count is not the end (a full disk raises)."""
    view = memoryview(data)
    while view:
        written = os.write(fd, view)
        if written <= 0:
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        view = view[written:]


def remove_quietly(path):
    try:
        os.unlink(path)
    except OSError:
        pass


def write_in_place(path, data):
    """Rewrite a file that cannot be replaced (a single-file mount). Nothing atomic is possible:
    the new bytes are written over the old without truncating first, and if that fails the old
    bytes are put back, so a full disk does not leave half a file."""
    fd = os.open(path, os.O_RDWR | getattr(os, "O_CLOEXEC", 0))
    try:
        old = b""
        while True:
            chunk = os.read(fd, 1 << 20)
            if not chunk:
                break
            old += chunk
        if old == data:
            return
        try:
            os.lseek(fd, 0, os.SEEK_SET)
            write_all(fd, data)
            os.ftruncate(fd, len(data))
            os.fsync(fd)
        except BaseException:
            try:
                os.lseek(fd, 0, os.SEEK_SET)
                write_all(fd, old)
                os.ftruncate(fd, len(old))
            except OSError:
                pass
            raise
    finally:
        os.close(fd)


def read_bytes(path):
    try:
        with open(path, "rb") as f:
            return f.read()
    except OSError:
        return None


# --------------------------------------------------------------------------------------------
# Checks: one plain function per kind, (dependency, read) -> Verdict. No I/O but `read`.
# --------------------------------------------------------------------------------------------

class Verdict(types.SimpleNamespace):
    """Met, or not met with a reason a human can act on."""


MET = Verdict(met=True, reason="")


def not_met(reason):
    return Verdict(met=False, reason=reason)


def dig(obj, *keys):
    """obj[k1][k2]... or None where any step is missing; a list takes an index (int or digits)."""
    for key in keys:
        if isinstance(obj, dict):
            obj = obj.get(key)
        elif isinstance(obj, list) and str(key).isdigit() and int(key) < len(obj):
            obj = obj[int(key)]
        else:
            return None
    return obj


def is_pod_ready(pod):
    return any(c.get("type") == "Ready" and c.get("status") == "True"
               for c in list_of(dig(pod, "status", "conditions")) if isinstance(c, dict))


def list_of(value):
    """A list from an answer, or [] where the server sent something else (never counted)."""
    return value if isinstance(value, list) else []


def count_of(value):
    """A counter from an answer (status.succeeded...): a real integer, else 0."""
    return value if type(value) is int else 0


def summary(names, limit=3):
    """`a, b, c and 7 more`: a reason names a few, never thousands."""
    names = list(names)
    shown_names = ", ".join(names[:limit])
    return shown_names + (" and %d more" % (len(names) - limit) if len(names) > limit else "")


def this_pod_not_found(dep):
    return not_met("this pod %s is not found in namespace %s (check POD_NAME and NAMESPACE)"
                   % (dep.pod_name, dep.pod_namespace))


def node_of(pod):
    """spec.nodeName, or None while the pod is not scheduled (absent, empty, or not a name)."""
    node = dig(pod, "spec", "nodeName")
    return node if isinstance(node, str) and node else None


def this_pod_node(dep, read):
    """The node this pod runs on (spec.nodeName): set once the pod is scheduled, never changed."""
    pod = read.get("v1", "pods", dep.pod_namespace, dep.pod_name,
                   settled=lambda pod: node_of(pod) is not None)
    if pod is None:
        return None, this_pod_not_found(dep)
    node = node_of(pod)
    if node is None:
        return None, not_met("this pod %s is not scheduled to a node yet" % dep.pod_name)
    return node, None


def service_reads(dep):
    """What check_service lists first, announced before the first check so that the Services of
    one namespace can share one read (see ApiReader.merge)."""
    return [("discovery.k8s.io/v1", "endpointslices", dep.namespace,
             "kubernetes.io/service-name=" + dep.name)]


def check_service(dep, read):
    """Some endpoint has an address and is ready; EndpointSlices first, the Endpoints object as fallback."""
    try:
        [(group_version, resource, namespace, labels)] = service_reads(dep)
        slices = read.list(group_version, resource, namespace, labels=labels)
    except ApiError as e:
        if e.status not in (403, 404):
            raise
        slices = []
    if slices:
        endpoints = [e for s in slices for e in list_of(s.get("endpoints")) if isinstance(e, dict)]
        ready = sum(1 for e in endpoints
                    if list_of(e.get("addresses")) and dig(e, "conditions", "ready") is not False)
        return MET if ready else not_met("0 of %d endpoints ready" % len(endpoints))
    endpoints = read.get("v1", "endpoints", dep.namespace, dep.name)
    if endpoints is None:
        return not_met("no endpoints yet (is the Service created?)")
    subsets = [s for s in list_of(endpoints.get("subsets")) if isinstance(s, dict)]
    ready = sum(len(list_of(s.get("addresses"))) for s in subsets)
    total = ready + sum(len(list_of(s.get("notReadyAddresses"))) for s in subsets)
    return MET if ready else not_met("0 of %d endpoints ready" % total)


def check_container(dep, read):
    """This pod's container `name` (app container or native sidecar) reports ready."""
    pod = read.get("v1", "pods", dep.pod_namespace, dep.pod_name)
    if pod is None:
        return this_pod_not_found(dep)
    if not list_of(dig(pod, "spec", "containers")):  # every pod has one: not an answer to trust
        raise ApiError(None, "malformed answer: this pod has no list of containers", "Malformed")
    declared = [c.get("name") for key in ("containers", "initContainers")
                for c in list_of(dig(pod, "spec", key)) if isinstance(c, dict)]
    if dep.name not in declared:
        raise ConfigError("DEPENDENCY_CONTAINER", "pod %s has no container %r (it has: %s)"
                          % (dep.pod_name, dep.name, summary(map(str, declared), 10)))
    for key in ("containerStatuses", "initContainerStatuses"):
        for status in list_of(dig(pod, "status", key)):
            if isinstance(status, dict) and status.get("name") == dep.name:
                return MET if status.get("ready") is True else not_met("container is not ready")
    return not_met("container has no status yet")


def selector_from_label_selector(selector):
    """A DaemonSet's LabelSelector (matchLabels + matchExpressions) as a label selector string.

    It comes from the server, so every key, value and operator is checked first: one that is
    not valid is a malformed answer, never dropped (that would select more pods) nor pasted in.
    """
    def bad(problem):
        return ApiError(None, "malformed answer: the daemonset's selector %s" % problem, "Malformed")

    match_labels = selector.get("matchLabels") if isinstance(selector, dict) else None
    expressions = selector.get("matchExpressions") if isinstance(selector, dict) else None
    if not isinstance(match_labels or {}, dict) or not isinstance(expressions or [], list):
        raise bad("is not a LabelSelector")
    requirements = []
    for key, value in sorted((match_labels or {}).items()):
        if not isinstance(value, str) or not is_label_key(key) \
                or not is_label_value(value):
            raise bad("has an invalid label %s" % shown(key))
        requirements.append("%s=%s" % (key, value))
    for expression in expressions or []:
        expression = expression if isinstance(expression, dict) else {}
        key, operator = expression.get("key"), expression.get("operator")
        values = list_of(expression.get("values"))
        if not isinstance(key, str) or not is_label_key(key) or not all(
                isinstance(v, str) and is_label_value(v) for v in values):
            raise bad("has an invalid expression %s" % shown(expression))
        if operator in ("In", "NotIn") and values:
            requirements.append("%s %s (%s)" % (key, operator.lower(), ",".join(values)))
        elif operator in ("Exists", "DoesNotExist") and not values:
            requirements.append(("!" if operator == "DoesNotExist" else "") + key)
        else:
            raise bad("has an expression this program cannot read: %s" % shown(expression))
    if not requirements:
        raise bad("is empty (it would select every pod)")
    return ",".join(requirements)


def check_daemonset(dep, read):
    """A pod of the DaemonSet on this node is Ready, or the DaemonSet has no pod on this node.

    Its selector cannot change, so the DaemonSet is read once; then only its pods are followed.
    """
    daemonset = read.get("apps/v1", "daemonsets", dep.namespace, dep.name,
                         settled=lambda daemonset: True)  # spec.selector is immutable
    if daemonset is None:
        return not_met("daemonset not found")
    node, problem = this_pod_node(dep, read)
    if problem:
        return problem
    selector = selector_from_label_selector(dig(daemonset, "spec", "selector"))
    pods = read.list("v1", "pods", dep.namespace, labels=selector,
                     fields=field_selector("spec.nodeName", node))
    if any(is_pod_ready(p) for p in pods):
        return MET
    if not pods:
        # Met for want of a pod here, so it must be the DaemonSet read before: one deleted, or
        # re-created with another selector, is read anew (a selector itself never changes).
        current = read.get("apps/v1", "daemonsets", dep.namespace, dep.name)
        if current is None:
            return not_met("daemonset not found")
        if dig(current, "metadata", "uid") != dig(daemonset, "metadata", "uid"):
            read.forget_settled("apps/v1", "daemonsets", dep.namespace, dep.name)
            return check_daemonset(dep, read)
        return MET
    return not_met("pod %s on node %s is not ready"
                   % (summary(dig(p, "metadata", "name") for p in pods), node))


def job_state(job):
    status = job.get("status") if isinstance(job.get("status"), dict) else {}
    failed_for_good = any(c.get("type") == "Failed" and c.get("status") == "True"
                          for c in list_of(status.get("conditions")) if isinstance(c, dict))
    return "not succeeded (%d active, %d failed%s)" % (
        count_of(status.get("active")), count_of(status.get("failed")),
        "; failed for good, waiting for it to be re-run" if failed_for_good else "")


def has_succeeded(job):
    return count_of(dig(job, "status", "succeeded")) >= 1


def check_jobs(dep, read):
    """Every Job named, or every Job with the labels (at least one), has succeeded at least once."""
    if dep.name:
        job = read.get("batch/v1", "jobs", dep.namespace, dep.name)
        if job is None:
            return not_met("job not found (deleted, or not created yet)")
        jobs = [job]
    else:
        jobs = read.list("batch/v1", "jobs", dep.namespace, labels=selector_from_labels(dep.labels))
        if not jobs:
            return not_met("no job matches the labels")
    pending = [j for j in jobs if not has_succeeded(j)]
    if not pending:
        return MET
    if dep.name:
        return not_met(job_state(pending[0]))
    first = "job %s %s" % (dig(pending[0], "metadata", "name"), job_state(pending[0]))
    if len(pending) == 1:
        return not_met(first)
    return not_met("%d of %d matching jobs not succeeded: %s; also %s" % (
        len(pending), len(jobs), first,
        summary(dig(j, "metadata", "name") for j in pending[1:])))


def check_pods(dep, read):
    """At least one pod with the labels is Ready (on this node when requireSameNode)."""
    fields, where = None, ""
    if dep.require_same_node:
        node, problem = this_pod_node(dep, read)
        if problem:
            return problem
        fields, where = field_selector("spec.nodeName", node), " on node %s" % node
    pods = read.list("v1", "pods", dep.namespace, labels=selector_from_labels(dep.labels),
                     fields=fields)
    if any(is_pod_ready(p) for p in pods):
        return MET
    if not pods:
        return not_met("found no pods%s matching the labels" % where)
    return not_met("found %d pods%s, but none ready" % (len(pods), where))


def field_text(value):
    """A field's value as the string the operator wrote: strings as they are, the rest as JSON."""
    return value if isinstance(value, str) else json.dumps(value)


def check_custom_resource(dep, read):
    """The object exists (kind found by discovery), with every field value and condition wanted."""
    resource = read.resource_for(dep.api_version, dep.resource_kind)
    if resource is None:
        return not_met("the API server does not serve kind %s in %s (yet)"
                       % (dep.resource_kind, dep.api_version))
    namespace = dep.namespace if resource.get("namespaced") else None
    if namespace is None:
        dep.label = "%s %s" % (dep.resource_kind, dep.name)  # cluster-scoped: named without one
    obj = read.get(dep.api_version, resource["name"], namespace, dep.name)
    if obj is None:
        return not_met("not found")
    for key, want in dep.fields:
        value = dig(obj, *key.split("."))
        if value is None:
            return not_met("field %s is missing, want %r" % (key, want))
        if field_text(value) != want:
            return not_met("field %s is %r, want %r" % (key, field_text(value), want))
    conditions = [c for c in list_of(dig(obj, "status", "conditions")) if isinstance(c, dict)]
    for kind, want in dep.conditions:
        found = [c.get("status") for c in conditions if c.get("type") == kind]
        if not found:
            return not_met("no condition %s yet, want %r" % (kind, want))
        if found[0] != want:
            return not_met("condition %s is %r, want %r" % (kind, found[0], want))
    return MET


def check_socket(dep, read):
    """The path exists and this process may read it."""
    try:
        os.stat(dep.path)
    except OSError as e:
        return not_met(e.strerror or str(e))
    if not os.access(dep.path, os.R_OK):
        return not_met("exists, but is not readable by uid %d" % os.getuid())
    return MET


def check_config(dep, read):
    """The rendered template is written to its destination (retried while it cannot be).

    With `dry_run` (--check) nothing is written: met when the file already holds the rendering.
    """
    if getattr(dep, "dry_run", False):
        if not os.path.exists(dep.path):
            return not_met("not written yet")
        return MET if read_bytes(dep.path) == dep.content else not_met("differs from the rendering")
    try:
        write_file_atomically(dep.path, dep.content)
    except OSError as e:
        return not_met("cannot write: %s" % (e.strerror or e))
    return MET


# --------------------------------------------------------------------------------------------
# The kinds table: one row per DEPENDENCY_* variable.
# --------------------------------------------------------------------------------------------

class Kind(types.SimpleNamespace):
    """A DEPENDENCY_* variable: how its value parses, how its dependencies are checked, and which
    of their reads can be announced before the first check (for merging)."""

    reads = None


KINDS = [
    Kind(variable="DEPENDENCY_SERVICE", parse=parse_services, check=check_service,
         reads=service_reads, example="[ns:]service,..."),
    Kind(variable="DEPENDENCY_CONTAINER", parse=parse_containers, check=check_container,
         example="container,... (needs POD_NAME)"),
    Kind(variable="DEPENDENCY_DAEMONSET", parse=parse_daemonsets, check=check_daemonset,
         example="[ns:]daemonset,... (needs POD_NAME)"),
    Kind(variable="DEPENDENCY_JOBS", parse=parse_jobs, check=check_jobs,
         example="[ns:]job,..."),
    Kind(variable="DEPENDENCY_JOBS_JSON", parse=parse_jobs_json, check=check_jobs,
         example='[{"name": ...} or {"labels": {...}}, "namespace": ...]'),
    Kind(variable="DEPENDENCY_POD_JSON", parse=parse_pods_json, check=check_pods,
         example='[{"labels": {...}, "namespace": ..., "requireSameNode": bool}]'),
    Kind(variable="DEPENDENCY_CUSTOM_RESOURCE", parse=parse_custom_resources,
         check=check_custom_resource,
         example='[{"apiVersion", "kind", "name", "namespace", "fields", "conditions"}]'),
    Kind(variable="DEPENDENCY_SOCKET", parse=parse_sockets, check=check_socket,
         example="path,..."),
    Kind(variable="DEPENDENCY_CONFIG", parse=parse_configs, check=check_config,
         example="destination path,... (needs INTERFACE_NAME)"),
]
VARIABLES = [kind.variable for kind in KINDS]


def reject_unknown_variables(env):
    """A non-empty DEPENDENCY_* variable that no kind reads is a typo, never silently ignored."""
    for variable in sorted(env):
        if variable.startswith("DEPENDENCY_") and variable not in VARIABLES and env[variable].strip():
            import difflib
            prefix = len("DEPENDENCY_")  # shared by all, so compare what follows it
            close = difflib.get_close_matches(variable[prefix:], [v[prefix:] for v in VARIABLES],
                                              n=1, cutoff=0.6)
            hint = ("did you mean DEPENDENCY_%s?" % close[0] if close
                    else "valid: %s" % ", ".join(VARIABLES))
            raise ConfigError(variable, "not a dependency kind; %s" % hint)


def parse_dependencies(env, settings):
    """Every dependency the environment names, in table order; ConfigError on the first mistake."""
    reject_unknown_variables(env)
    skip = set()
    if env.get("DEPENDENCY_JOBS_JSON", "").strip() and env.get("DEPENDENCY_JOBS", "").strip():
        log("WARNING", "both DEPENDENCY_JOBS and DEPENDENCY_JOBS_JSON are set: using DEPENDENCY_JOBS_JSON")
        skip.add("DEPENDENCY_JOBS")
    dependencies = []
    for kind in KINDS:
        value = env.get(kind.variable, "")
        if kind.variable not in skip and value.strip():
            for dep in kind.parse(kind.variable, value, settings):
                dep.variable, dep.check, dep.reads = kind.variable, kind.check, kind.reads
                dependencies.append(dep)
    return dependencies


def split_command(value):
    """COMMAND split on runs of ASCII whitespace, as a shell would (a no-break space or other
    Unicode space belongs to the word); no shell, no quoting."""
    return [word for word in re.split("[ \t\n\r\v\f]+", value) if word]


# --------------------------------------------------------------------------------------------
# The waiting engine: re-check a dependency whenever what it read changes, until all are met.
# --------------------------------------------------------------------------------------------

MAX_REASON = 300  # characters of one reason in a log line
STOP_RECHECK = 1.0  # seconds: the longest the wait goes without looking for a dropped Stop
PROGRESS_SHOWN = 5  # a progress line names 5 unmet dependencies, or 4 and "and N more"


def evaluate(dependency, read):
    """Run the dependency's check; an API failure or an answer of the wrong shape is a reason to
    wait, not a crash. Reasons are cut short: a server's message may be long."""
    try:
        verdict = dependency.check(dependency, read)
    except ApiError as e:
        verdict = not_met(str(e))
    except (AttributeError, KeyError, TypeError, ValueError, RecursionError) as e:
        verdict = not_met("unexpected answer from the API server (%s: %s)" % (type(e).__name__, e))
    if len(verdict.reason) > MAX_REASON:
        verdict = not_met(clip(verdict.reason, MAX_REASON))
    return verdict


class Waiting:
    """The wait for a set of dependencies: which are still unmet, why, and for how long.

    run() checks every dependency, then re-checks one when a collection it read changes (a watch
    event, or a poll round that found a difference), or every round if it reads nothing from the
    API. It returns the moment the last one is met; unmet() says what was still missing when a
    signal (or the timeout's alarm) stopped the wait.
    """

    def __init__(self, dependencies, read, interval=POLL_INTERVAL, clock=time.monotonic,
                 sleep=time.sleep, on_reason=None, random=None):
        self.dependencies = dependencies
        self.on_reason = on_reason  # told each new reason a dependency is unmet (for Events)
        self.read = read
        self.interval = interval
        self.clock = clock
        self.sleep = sleep
        if random is None:
            import random as random_module
            random = random_module.random
        self.random = random
        # Local checks first: config files are written before any request can keep them waiting.
        self.pending = [[dep, None] for dep in sorted(dependencies, key=lambda d: d.needs_api)]
        self.reasons = {}
        self.started = clock()

    def waited(self):
        return self.clock() - self.started

    def unmet(self):
        """(dependency, its last reason) for each dependency not met."""
        return [(dep, self.reasons.get(id(dep), "not checked yet")) for dep, _ in self.pending]

    def run(self, progress_every=0):
        """Wait until every dependency is met, logging progress every `progress_every` seconds."""
        for dep in self.dependencies:
            log("INFO", "Resolving %s" % dep, dep)
        next_progress = self.started + progress_every if progress_every else float("inf")
        changed, new_round = set(), True
        # Pods started together must not poll in step: a random phase, and a little jitter on
        # every round, only ever longer (never more requests than one per interval).
        next_round = self.clock() + self.interval * (0.1 + 0.9 * self.random())
        while True:
            raise_if_stopped()
            for entry in list(self.pending):
                reads = entry[1]
                if reads is None or reads & changed or (new_round and not reads):
                    self._check(entry)
            if not self.pending:
                return
            now = self.clock()
            if now >= next_progress:
                self._log_progress()
                next_progress = now + progress_every
            wake = min(next_round, next_progress, now + STOP_RECHECK) - now
            in_use = set().union(*(reads for _, reads in self.pending))
            if self.read is None:
                self.sleep(max(0.0, wake))
                changed = set()
            else:
                self.read.follow(in_use)
                changed = self.read.wait(wake)
            new_round = self.clock() >= next_round
            if new_round:
                next_round = self.clock() + self.interval * (1 + 0.1 * self.random())
                if self.read is not None:
                    changed |= self.read.poll(in_use)

    def _check(self, entry):
        dep = entry[0]
        if self.read is not None:
            self.read.begin()
        verdict = evaluate(dep, self.read)
        entry[1] = self.read.end() if self.read is not None else set()
        if verdict.met:
            log("INFO", "Dependency %s is resolved." % dep, dep)
            self.pending.remove(entry)
        elif self.reasons.get(id(dep)) != verdict.reason:
            self.reasons[id(dep)] = verdict.reason
            log("WARNING", "Resolving dependency %s failed: %s ." % (dep, verdict.reason), dep)
            if self.on_reason is not None:
                self.on_reason(dep, verdict.reason)

    def _log_progress(self):
        """One line, naming a few of the unmet dependencies (a thousand Jobs make no 88 KB line);
        the timeout's report lists them all, one line each."""
        unmet = ["%s: %s" % item for item in self.unmet()]
        if len(unmet) > PROGRESS_SHOWN:
            unmet[PROGRESS_SHOWN - 1:] = ["and %d more" % (len(unmet) - PROGRESS_SHOWN + 1)]
        log("INFO", "Still waiting after %s for %d of %d dependencies: %s" % (
            duration(self.waited()), len(self.pending), len(self.dependencies), "; ".join(unmet)))


def duration(seconds):
    """`45s`, `3m05s`, `2h00m`: how long, for people."""
    seconds = int(seconds)
    if seconds < 60:
        return "%ds" % seconds
    if seconds < 3600:
        return "%dm%02ds" % divmod(seconds, 60)
    return "%dh%02dm" % divmod(seconds // 60, 60)


# --------------------------------------------------------------------------------------------
# Events: why the pod waits, where `kubectl describe pod` and `kubectl get events` show it.
# --------------------------------------------------------------------------------------------

EVENT_SPACING = 30.0      # seconds: at most one write about one dependency this often
EVENT_BURST = 25          # writes at most at once; then one more per EVENT_REFILL seconds
EVENT_REFILL = 30.0
EVENT_FLUSH_EXEC = 0.3    # seconds the last event may hold the exec
EVENT_FLUSH_EXIT = 1.0    # ... or an exit without the command
EVENT_MESSAGE = 1024      # characters of a message the API server keeps
COMPONENT = "kubernetes-entrypoint"
LAST = "last"             # the key of the last event: met, timed out, stopped, failed


class Events:
    """Core v1 Events on this pod, written by one background thread, so that no write (slow,
    failing or hung) can delay the wait or the command.

    record() keeps the latest event per key (a dependency) and returns at once. Writes are spaced:
    one per key per EVENT_SPACING seconds at most, and EVENT_BURST in all, refilled slowly, whatever
    the server answers. The same event again raises its count (a PATCH), as Kubernetes' own
    recorder does. A refusal (403) is said once, and nothing more is written.
    """

    def __init__(self, make_client, namespace, pod_name, clock=time.monotonic, wall=time.time,
                 background=True):
        self.make_client = make_client  # called on the thread: no cost before the first event
        self.background = background    # False: a test calls write_next() itself
        self.namespace, self.pod_name = namespace, pod_name
        self.clock, self.wall = clock, wall
        self.client = self.involved = self.host = self.thread = None
        self.lock = threading.Condition()
        self.pending = {}      # key -> (type, reason, message): the latest, not yet written
        self.last_write = {}   # key -> clock() of its last write
        self.written = {}      # (type, reason, message) -> [event name, count]
        self.tokens, self.refilled = float(EVENT_BURST), clock()
        self.retry_at, self.failures = float("-inf"), 0
        self.writing = self.last_only = self.off = False
        self.used = False      # something was recorded: the wait is worth an event at its end
        self.last_stamp = 0

    def record(self, key, event_type, reason, message):
        with self.lock:
            if self.off:
                return
            self.used = True
            self.pending[key] = (event_type, reason, clip(one_line(message), EVENT_MESSAGE))
            self.lock.notify_all()
            if self.thread is None and self.background:
                self.thread = threading.Thread(target=self._run, name="events", daemon=True)
                try:
                    start_thread(self.thread)
                except RuntimeError:
                    self.off = True

    def waiting(self, dependency, reason):
        self.record(str(dependency), "Normal", "Waiting", "%s: %s" % (dependency, reason))

    def finish(self, event_type, reason, message, seconds):
        """Write the last event within `seconds` or not at all; whatever else waits is dropped."""
        deadline = self.clock() + seconds
        self.record(LAST, event_type, reason, message)
        with self.lock:
            self.last_only = True
            while not self.off and (LAST in self.pending or self.writing):
                left = deadline - self.clock()
                if left <= 0:
                    log("DEBUG", "the last event was not written within %gs" % seconds)
                    return
                self.lock.wait(left)

    def _run(self):
        while self.write_next(block=True):
            pass

    def write_next(self, block):
        """Write the next event that is due, waiting for one if `block`; False once there is none
        (and, blocking, only when writing has stopped for good)."""
        with self.lock:
            key, wait = self._due(self.clock())
            while key is None:
                if self.off or not block:
                    return False
                self.lock.wait(wait)
                key, wait = self._due(self.clock())
            item = self.pending.pop(key)
            self.writing = True
        try:
            self._write(key, item)
        finally:
            with self.lock:
                self.writing = False
                self.lock.notify_all()
        return True

    def _due(self, now):
        """(the key to write now, None), or (None, seconds until one may be; None: nothing to do)."""
        if LAST in self.pending:
            return LAST, None  # one write, whatever the budget: it says how the wait ended
        if self.last_only or not self.pending:
            return None, None
        self.tokens = min(EVENT_BURST, self.tokens + (now - self.refilled) / EVENT_REFILL)
        self.refilled = now
        key = min(self.pending, key=lambda k: self.last_write.get(k, float("-inf")))
        when = max(self.last_write.get(key, float("-inf")) + EVENT_SPACING, self.retry_at,
                   now + (1 - self.tokens) * EVENT_REFILL)
        return (key, None) if when <= now else (None, when - now)

    def _write(self, key, item):
        self.tokens -= 1
        self.last_write[key] = self.clock()
        try:
            if self.client is None:
                self.client = self.make_client()
            if self.involved is None:
                self.involved = self._pod_reference()
            self._send(key, *item)
            self.failures = 0
        except ConfigError as e:  # no API server to write to
            log("DEBUG", "no events: %s" % e)
            self._stop()
        except ApiError as e:
            if e.status == 403:
                log("INFO", "Events on pod %s are not written: the API server refused (%s). For "
                            "`kubectl describe pod` to say what it waits for, allow 'create' and "
                            "'patch' on 'events' in namespace %s." % (self.pod_name, e, self.namespace))
                return self._stop()
            log("DEBUG", "event %s not written: %s" % (item[1], e))
            self.failures += 1
            self.retry_at = self.clock() + backoff(self.failures, 1.0, e.retry_after)
            if key != LAST:  # tried again in its turn, unless a newer one replaced it
                with self.lock:
                    self.pending.setdefault(key, item)

    def _stop(self):
        with self.lock:
            self.off = True
            self.pending.clear()
            self.lock.notify_all()

    def _pod_reference(self):
        """This pod as an Event's involvedObject. The uid is what `kubectl describe pod` selects
        events by; where the pod cannot be read, events go without it (and say so once)."""
        reference = {"apiVersion": "v1", "kind": "Pod", "namespace": self.namespace,
                     "name": self.pod_name}
        try:
            pod = self.client.get(self.client.path("v1", "pods", self.namespace, self.pod_name))
        except ApiError as e:
            if e.status not in (403, 404):
                raise
            log("INFO", "Events on pod %s go without its uid, so `kubectl get events` shows them "
                        "but `kubectl describe pod` does not: reading the pod failed (%s)"
                % (self.pod_name, e))
            return reference
        uid, node = dig(pod, "metadata", "uid"), dig(pod, "spec", "nodeName")
        if dig(pod, "metadata", "name") == self.pod_name and isinstance(uid, str) \
                and re.fullmatch(r"[-0-9A-Za-z]{1,64}", uid):
            reference["uid"] = uid
        if isinstance(node, str) and HOST_NAME.fullmatch(node):
            self.host = node
        return reference

    def _send(self, key, event_type, reason, message):
        """Raise the count of the same event if there is one, else create it. One write per call:
        where the event to count is gone (events expire, an hour by default), it is made anew in
        the key's next turn (at once for the last event)."""
        stamp = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(self.wall()))
        known = self.written.get((event_type, reason, message))
        if known is not None:
            try:
                self.client.send("PATCH", self.client.path("v1", "events", self.namespace, known[0]),
                                 {"count": known[1] + 1, "lastTimestamp": stamp},
                                 "application/merge-patch+json")
                known[1] += 1
                return
            except ApiError as e:
                if e.status != 404:
                    raise
                del self.written[(event_type, reason, message)]
                if key != LAST:
                    with self.lock:
                        self.pending.setdefault(key, (event_type, reason, message))
                    return
        self.last_stamp = max(int(self.wall() * 1e9), self.last_stamp + 1)
        name = "%s.%x" % (self.pod_name[:236].rstrip("-."), self.last_stamp)
        source = {"component": COMPONENT}
        if self.host:
            source["host"] = self.host
        event = {"apiVersion": "v1", "kind": "Event",
                 "metadata": {"name": name, "namespace": self.namespace},
                 "involvedObject": self.involved, "type": event_type, "reason": reason,
                 "message": message, "source": source, "count": 1,
                 "firstTimestamp": stamp, "lastTimestamp": stamp,
                 "reportingComponent": COMPONENT, "reportingInstance": self.pod_name[:128]}
        try:
            self.client.send("POST", self.client.path("v1", "events", self.namespace), event)
        except ApiError as e:
            if e.status != 409:
                raise  # 409: our own POST, sent again after the connection dropped
        self.written[(event_type, reason, message)] = [name, 1]


def events_for(env, settings, reader=None):
    """The pod's Events, or None without POD_NAME or with ENTRYPOINT_EVENTS=false. The pod is in
    its service account's namespace; the client is the reader's, or made on the first event."""
    if not settings.events or not settings.pod_name:
        return None
    namespace = read_text(os.path.join(settings.serviceaccount_dir, "namespace")).strip()

    def make_client():
        if reader is not None:
            return reader.client
        url = settings.api_server or api_server_url(env, "ENTRYPOINT_EVENTS")
        return ApiClient(url, settings.serviceaccount_dir, settings.request_timeout)

    return Events(make_client, namespace if LABEL_NAME.fullmatch(namespace) else settings.namespace,
                  settings.pod_name)


# --------------------------------------------------------------------------------------------
# main: the command line, parse, check the command, wait (or --check, --validate), exec.
# --------------------------------------------------------------------------------------------

class Stop(BaseException):
    """Raised by a signal handler so a wait ends at once, from whatever call it is in. Not an
    Exception, so that no handler of errors (a read's, a check's) can swallow it."""

    def __init__(self, signum):
        super().__init__(signum)
        self.signum = signum


STOP_SIGNALS = ("SIGTERM", "SIGINT", "SIGALRM")  # SIGALRM: ENTRYPOINT_TIMEOUT


STOPPING = []  # the signal that stopped the wait, once one has


def stop_signal_numbers():
    return {getattr(signal, name) for name in STOP_SIGNALS}


def on_stop_signal(signum, frame):
    """The first signal stops the wait; later ones are let go while the process reports and exits
    (see finish_quietly)."""
    if not STOPPING:
        STOPPING.append(signum)
        raise Stop(signum)


def raise_if_stopped():
    """A signal handler runs wherever the main thread is, and a Stop raised inside a finalizer or
    a weakref callback is dropped by Python: the signal is then only in STOPPING. The wait looks
    here at least every STOP_RECHECK seconds, and so does the exec, so that it still stops."""
    if STOPPING and STOPPING[0] is not None:
        raise Stop(STOPPING[0])


def drop_swallowed_stop(unraisable):
    """sys.unraisablehook: a Stop that Python dropped is no error to print (see raise_if_stopped);
    anything else is printed as Python would."""
    if not isinstance(unraisable.exc_value, Stop):
        sys.__unraisablehook__(unraisable)


class CommandError(Exception):
    """The command cannot run: exit 127 (not found) or 126 (not executable), as a shell does."""

    def __init__(self, code, message):
        super().__init__(message)
        self.code = code


IN_PROCESS_COMMANDS = {"true", "/bin/true", "/usr/bin/true", "echo", "/bin/echo", "/usr/bin/echo"}


def find_command(argv, path_variable):
    """The executable argv[0] names (PATH lookup), or None for a true/echo answered in-process."""
    name = argv[0]
    if "/" in name and os.path.isdir(name):
        raise CommandError(126, "COMMAND: %s is a directory" % name)
    if "/" in name:
        candidates = [name]
    else:
        candidates = [os.path.join(d or ".", name) for d in path_variable.split(os.pathsep)]
    not_executable = None
    for candidate in candidates:
        if os.path.isfile(candidate):
            if os.access(candidate, os.X_OK):
                return candidate
            not_executable = not_executable or candidate
    if name in IN_PROCESS_COMMANDS:
        return None
    if not_executable:
        raise CommandError(126, "COMMAND: %s is not executable" % not_executable)
    raise CommandError(127, "COMMAND: %s: command not found%s"
                       % (name, "" if "/" in name else " in PATH=%s" % path_variable))


def run_in_process(argv):
    """`true` and `echo` for images without coreutils (distroless)."""
    if os.path.basename(argv[0]) == "echo":
        write(sys.stdout, " ".join(argv[1:]) + "\n")
    return 0


def restore_signals():
    """Hand the command default signal dispositions and an empty mask (ignored signals survive exec)."""
    signal.setitimer(signal.ITIMER_REAL, 0)
    for name in ("SIGPIPE", "SIGXFSZ") + STOP_SIGNALS:
        signal.signal(getattr(signal, name), signal.SIG_DFL)
    if hasattr(signal, "pthread_sigmask"):
        signal.pthread_sigmask(signal.SIG_SETMASK, [])


def exec_command(argv, executable):
    """Replace this process with the command. An in-process `true`/`echo` returns its exit code;
    an exec that fails raises CommandError."""
    if executable is None:
        raise_if_stopped()
        return run_in_process(argv)
    restore_locale_variable()
    restore_signals()  # from here a stop signal has its default effect...
    raise_if_stopped()  # ... and one whose Stop Python dropped before is acted on here
    try:
        os.execv(executable, argv)
    except OSError as e:
        raise CommandError(127 if e.errno == errno.ENOENT else 126,
                           "COMMAND: cannot execute %s: %s" % (executable, e.strerror or e))


def restore_locale_variable(started_with="/proc/self/environ"):
    """Where the locale is C, Python sets LC_CTYPE to C.UTF-8 in its environment at start (PEP
    538). The command gets LC_CTYPE as the container gave it, or none; the rest of the
    environment goes to it untouched, as exec passes it on."""
    try:
        with open(started_with, "rb") as f:
            original = f.read()
    except OSError:
        return  # no /proc: nothing known to undo
    given = [entry[len(b"LC_CTYPE="):] for entry in original.split(b"\0")
             if entry.startswith(b"LC_CTYPE=")]
    if given:
        os.environb[b"LC_CTYPE"] = given[0]  # the first one is the one getenv() sees
    else:
        os.environ.pop("LC_CTYPE", None)


SETTINGS_HELP = [
    ("COMMAND", "the command to exec once everything is met (split on whitespace); or give it as "
                "arguments. Empty: exit 0 when met"),
    ("NAMESPACE", "namespace of names without ns: (default: the service account's, else default)"),
    ("POD_NAME", "this pod's name (downward API), for CONTAINER, DAEMONSET, requireSameNode"),
    ("INTERFACE_NAME", "interface whose address {{ .IP }} templates, for CONFIG"),
    ("KUBERNETES_SERVICE_HOST/_PORT", "the API server, as Kubernetes sets them in every pod"),
    ("ENTRYPOINT_API_SERVER", "another API server URL: https://... with the service-account "
                              "token and CA, or http://127.0.0.1:8001 (kubectl proxy)"),
    ("ENTRYPOINT_SERVICEACCOUNT_DIR", "token, ca.crt, namespace (default %s)"
                                      % DEFAULT_SERVICEACCOUNT_DIR),
    ("ENTRYPOINT_CONFIGMAPS_DIR", "where CONFIG templates are (default %s)" % DEFAULT_CONFIGMAPS_DIR),
    ("ENTRYPOINT_TIMEOUT", "give up after this many seconds, exit 1 (default 0: never)"),
    ("ENTRYPOINT_POLL_INTERVAL", "seconds between polls where watch is refused (default 2, "
                                 "at least 0.1)"),
    ("ENTRYPOINT_REQUEST_TIMEOUT", "seconds one API request may take in all (default 10, at "
                                   "least 0.1)"),
    ("ENTRYPOINT_PROGRESS_INTERVAL", "seconds between lines saying what is still unmet (default 30, "
                                     "at least 1; 0: none)"),
    ("ENTRYPOINT_TERMINATION_LOG", "where to say why the process ended without exec'ing (default "
                                   "%s; empty: nowhere)" % DEFAULT_TERMINATION_LOG),
    ("ENTRYPOINT_EVENTS", "with POD_NAME, Events on the pod saying what it waits for (default "
                          "true; false: none)"),
    ("ENTRYPOINT_LOG_FORMAT", "text (default) or json"),
    ("ENTRYPOINT_LOG_LEVEL", "debug (adds every API request), info (default), warning, error"),
]
EXIT_CODES = [
    ("0", "everything met and no command to run (or --check: everything met)"),
    ("1", "timed out (--check: something not met)"),
    ("2", "configuration error: one line names the variable; the command never runs"),
    ("126, 127", "the command is not executable, or not found"),
    ("130, 143", "stopped by SIGINT or SIGTERM while waiting"),
    ("otherwise", "the command's own: it replaced this process"),
]


def help_text():
    """The variables and exit codes, derived from the tables so that --help cannot drift."""
    rows = [(kind.variable, kind.example) for kind in KINDS] + SETTINGS_HELP
    width = max(len(name) for name, _ in rows)
    lines = ["dependencies and settings (environment):"]
    lines += ["  %-*s  %s" % (width, name, text) for name, text in rows]
    lines += ["", "exit codes:"] + ["  %-9s  %s" % row for row in EXIT_CODES]
    return "\n".join(lines)


BY_HAND_OPTIONS = ("--check", "--validate")  # a person runs these, not a pod
VALUE_OPTIONS = ("--timeout",)                 # options whose value is the next argument


def is_run_by_hand(arguments):
    """--check or --validate among the options (before the command), known before anything that
    can fail is parsed: a run by hand writes no termination message and no Event."""
    value_next = False
    for argument in arguments:
        if value_next:
            value_next = False
        elif argument in ("-", "--") or not argument.startswith("-"):
            return False  # the command begins
        elif len(argument) > 2 and any(option.startswith(argument)  # as argparse: --che
                                       for option in BY_HAND_OPTIONS):
            return True
        elif len(argument) > 2 and any(option.startswith(argument) for option in VALUE_OPTIONS):
            value_next = True
    return False


def parse_arguments(arguments):
    """Options first; from the first non-option (or after --) everything is the command, untouched."""
    defaults = types.SimpleNamespace(timeout=None, check=False, validate=False, command=[])
    if not arguments:
        return defaults  # the common case needs no argparse at all
    options = argument_parser().parse_args(arguments)
    if options.command[:1] == ["--"]:
        options.command = options.command[1:]
    if options.timeout is not None and not 0 <= options.timeout <= YEAR:
        raise ConfigError("--timeout", "%g is not a number of seconds (0 to %d)"
                          % (options.timeout, YEAR))
    return options


def argument_parser():
    """The options. One that takes a value must be in VALUE_OPTIONS too (see is_run_by_hand)."""
    import argparse

    class Parser(argparse.ArgumentParser):
        def error(self, message):
            raise ConfigError("arguments", message)

    parser = Parser(
        prog="kubernetes-entrypoint", formatter_class=argparse.RawDescriptionHelpFormatter,
        usage="%(prog)s [options] [--] [command ...]", epilog=help_text(),
        description="Wait until the Kubernetes dependencies in DEPENDENCY_* variables are met, "
                    "then exec the command (arguments, or COMMAND).")
    parser.add_argument("--timeout", type=float, metavar="SECONDS",
                        help="give up after this long, exit 1 (overrides ENTRYPOINT_TIMEOUT)")
    parser.add_argument("--check", action="store_true",
                        help="check every dependency once, print a table, exit 0 if all are met, "
                             "else 1; writes no file, runs no command")
    parser.add_argument("--validate", action="store_true",
                        help="parse and print the dependencies without touching the API or "
                             "writing any file; exit 2 on any error")
    parser.add_argument("--version", action="version", version="%(prog)s " + __version__)
    parser.add_argument("command", nargs=argparse.REMAINDER, help=argparse.SUPPRESS)
    return parser


def prepare(env, options, connect=True):
    """Everything that can fail before waiting: settings, dependencies, reader or None, argv.

    The reader exists only when some dependency needs the API (and `connect`).
    """
    settings = read_settings(env)
    dependencies = parse_dependencies(env, settings)
    argv = split_command(env.get("COMMAND", ""))
    if argv and options.command:
        raise ConfigError("COMMAND", "a command is given both in COMMAND and as arguments; "
                                     "give only one")
    argv = argv or options.command
    reader = None
    api_variables = [d.variable for d in dependencies if d.needs_api]
    if api_variables and connect:
        url = settings.api_server or api_server_url(env, api_variables[0])
        client = ApiClient(url, settings.serviceaccount_dir, settings.request_timeout)
        reader = ApiReader(client, settings.poll_interval,
                           watch=not options.check)
    return settings, dependencies, reader, argv


def validate(dependencies, argv, env):
    """--validate: the dependencies as parsed, and the command as it would run."""
    for dep in dependencies:
        write(sys.stdout, "%s\n" % one_line(str(dep)))
    if argv:
        executable = find_command(argv, env.get("PATH", os.defpath))
        write(sys.stdout, "command: %s\n" % one_line(" ".join(
            [executable or argv[0] + " (answered in-process)"] + argv[1:])))
    else:
        write(sys.stdout, "command: none (exit 0 once everything is met)\n")
    return 0


def check_once(dependencies, read):
    """--check: every dependency once, as a table; 0 if all are met, else 1. Writes nothing."""
    rows = []
    for dep in dependencies:
        dep.dry_run = True
        verdict = evaluate(dep, read)
        rows.append((one_line(str(dep)), "yes" if verdict.met else "no", one_line(verdict.reason)))
    raise_if_stopped()
    width = max([len("DEPENDENCY")] + [len(row[0]) for row in rows])
    write(sys.stdout, "".join("%-*s  %-3s  %s\n" % ((width,) + row)
                              for row in [("DEPENDENCY", "MET", "REASON")] + rows))
    return 0 if all(row[1] == "yes" for row in rows) else 1


def report_unmet(waiting, headline, state, waited):
    """Log what was unmet when the wait was stopped, and keep it for the termination message."""
    headline = "%s after %s waiting for %d of %d dependencies" % (
        headline, duration(waited), len(waiting.pending), len(waiting.dependencies))
    log("ERROR", headline + "; the command was not run")
    state.summary = [headline]
    for dep, reason in waiting.unmet():
        log("ERROR", "still unmet: %s: %s" % (dep, reason), dep)
        state.summary.append("%s: %s" % (dep, reason))


def termination_message(lines, limit=TERMINATION_MESSAGE_BYTES):
    """The lines, most useful first, as bytes of at most `limit`: whole lines only, and where
    some do not fit, a last line saying how many were left out."""
    encoded = [one_line(clip(line, 1000)).encode("utf-8", "backslashreplace") + b"\n"
               for line in lines]
    message = b""
    for index, line in enumerate(encoded):
        left = len(encoded) - index - 1
        tail = ("\u2026 and %d more\n" % (left + 1)).encode("utf-8") if left else b""
        if len(message) + len(line) + len(tail) > limit and (left or len(message) + len(line) > limit):
            return message + ("\u2026 and %d more\n" % (len(encoded) - index)).encode("utf-8")
        message += line
    return message


def write_termination_message(path, lines):
    """Tell Kubernetes why the container ended: `kubectl describe pod` shows it. The file is the
    kubelet's to create; where it is missing or cannot be written, nothing is said above debug."""
    if not path or not lines:
        return
    try:
        fd = os.open(path, os.O_WRONLY | os.O_TRUNC | getattr(os, "O_CLOEXEC", 0))
        try:
            write_all(fd, termination_message(lines))
        finally:
            os.close(fd)
    except (OSError, ValueError) as e:
        log("DEBUG", "no termination message written to %s: %s"
            % (path, getattr(e, "strerror", None) or e))


def main(arguments=None, env=None):
    """Run, and return the exit code. Whenever a stop signal comes (even while an error is being
    reported), it ends here as one report and 128+signal: never a traceback."""
    env = os.environ if env is None else env
    state = types.SimpleNamespace(waiting=None, timeout=0, summary=[], outcome=None, events=None,
                                  by_hand=False, termination_log=env.get(
                                      "ENTRYPOINT_TERMINATION_LOG", DEFAULT_TERMINATION_LOG).strip())
    try:
        del STOPPING[:]
        sys.unraisablehook = drop_swallowed_stop
        for name in STOP_SIGNALS:
            signal.signal(getattr(signal, name), on_stop_signal)
        if EARLY_SIGNALS:  # it came while Python was still loading this file
            STOPPING.append(EARLY_SIGNALS[0])
            raise Stop(EARLY_SIGNALS[0])
        code = run(sys.argv[1:] if arguments is None else arguments, env, state)
        finish_quietly()
    except Stop as stop:
        finish_quietly()
        code = report_stop(stop.signum, state)
    if not state.by_hand:
        write_termination_message(state.termination_log, state.summary)
        write_last_event(state, env)
    return code


def run(arguments, env, state):
    """Parse, check the command, then wait (or --check, or --validate) and exec."""
    state.by_hand = is_run_by_hand(arguments)  # not as a container's process
    try:
        configure_logging(env)
        options = parse_arguments(arguments)
        settings, dependencies, reader, argv = prepare(env, options, connect=not options.validate)
        if options.validate:
            try:
                return validate(dependencies, argv, env)
            except CommandError as e:
                raise ConfigError("COMMAND", str(e).split(": ", 1)[-1])
        state.timeout = settings.timeout if options.timeout is None else options.timeout
        if state.timeout:  # an alarm, so that even a request that hangs cannot hold us past it
            signal.setitimer(signal.ITIMER_REAL, state.timeout)
        if options.check:
            return check_once(dependencies, reader)
        executable = find_command(argv, env.get("PATH", os.defpath)) if argv else None
        events = state.events = events_for(env, settings, reader)
        if reader is not None:
            reader.merge([read for dep in dependencies if dep.reads for read in dep.reads(dep)])
        state.waiting = Waiting(dependencies, reader, settings.poll_interval,
                                on_reason=events.waiting if events else None)
        state.waiting.run(settings.progress_interval)
        signal.setitimer(signal.ITIMER_REAL, 0)
        state.summary = ["%s met after %s" % (
            "its dependency" if len(dependencies) == 1 else "all %d dependencies"
            % len(dependencies), duration(state.waiting.waited()))]
        if events is not None and events.used:  # it waited: say for how long
            events.finish("Normal", "DependenciesMet", state.summary[0], EVENT_FLUSH_EXEC)
        if not argv:
            log("WARNING", "COMMAND env is empty")
            return 0
        return exec_command(argv, executable)
    except ConfigError as e:
        log("ERROR", str(e))
        state.summary, state.outcome = [str(e)], "ConfigurationError"
        return 2
    except CommandError as e:
        log("ERROR", str(e))
        state.summary, state.outcome = [str(e)], "CommandFailed"
        return e.code


def write_last_event(state, env):
    """A Warning on the pod when the process ends without its command: what was unmet, or what
    is wrong. Where the error came before the Events existed, they are made from the environment,
    if it allows."""
    if state.outcome is None:
        return
    events = state.events
    if events is None:
        try:
            events = events_for(env, read_settings(env))
        except ConfigError:
            return
    if events is not None:
        events.finish("Warning", state.outcome, "; ".join(state.summary), EVENT_FLUSH_EXIT)


def finish_quietly():
    """From here the process only reports and exits, and no signal can change that: the handler
    raises no more. (Not SIG_IGN, which makes a signal already pending print "ignored due to race
    condition".)"""
    STOPPING.append(None)
    signal.setitimer(signal.ITIMER_REAL, 0)


def exit_quietly(code):
    """Exit at once with `code`, the stop signals blocked so none can change it. Not sys.exit:
    tearing the interpreter and OpenSSL down while a watch thread is still inside a TLS read can
    crash the process (a double free or SIGSEGV seen on exit after a timeout). Our output is all
    that needs saving, and it is flushed here."""
    signal.pthread_sigmask(signal.SIG_BLOCK, stop_signal_numbers())
    for stream in (sys.stdout, sys.stderr):
        try:
            if stream is not None:  # None: the descriptor was closed when Python started
                stream.flush()
        except (OSError, ValueError):
            pass  # a closed pipe: nothing more can be said
    os._exit(code)


def report_stop(signum, state):
    """What was unmet when the timeout or a signal stopped the wait; the exit code."""
    if signum == signal.SIGALRM:
        headline, code, state.outcome = "timed out", 1, "TimedOut"
    else:
        headline, code = "stopped by " + signal.Signals(signum).name, 128 + signum
        state.outcome = "Stopped"
    if state.waiting is not None:
        # The timeout counts from the start, before the wait: say the time it was set to.
        report_unmet(state.waiting, headline, state, state.timeout if signum == signal.SIGALRM
                     else state.waiting.waited())
        return code
    if signum == signal.SIGALRM:
        headline = "timed out after %s before every dependency was checked" % duration(state.timeout)
    log("ERROR", "%s; the command was not run" % headline)
    state.summary = [headline]
    return code


if __name__ == "__main__":
    exit_quietly(main())
