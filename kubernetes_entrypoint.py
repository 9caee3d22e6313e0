#!/usr/bin/python3 -IS
"""kubernetes-entrypoint: wait until a container's Kubernetes dependencies are met, then exec it.

The idea: yes/no questions about the cluster (is this Service ready? has that Job succeeded?),
asked again whenever an answer may have changed, and an exec the moment every answer is yes.
DEPENDENCY_* variables ask the questions; COMMAND replaces this process (same PID, environment).

The file reads top to bottom, the idea first, then the machinery it rests on:
  1. Configuration  environment -> dependencies   7. Reads        kept fresh; what is believed
  2. Checks         one question per kind         8. API client   requests, watches, the token
  3. Kinds          one row per variable          9. Connections  one deadline per request; TLS
  4. Engine         ask again what changed       10. Files        written whole or not at all
  5. main           parse, look up, wait, exec   11. Events       why the pod waits, on the pod
  6. Signals        SIGTERM, SIGINT, the alarm   12. Logging      one writer; never the token
Standard library only, Python 3.8+. docs/design.md tells the why at more length.
"""

import _signal  # the built-in half of `signal`, already loaded: the handlers come before all else


class Stopping:
    """Where the stop signals stand (see Signals): one that came early, the one that stopped us."""
    early = signal = None
    finishing = False


def remember_early_signal(signum, frame):
    """A SIGTERM while the file loads is kept for main(): PID 1 without a handler never sees one."""
    Stopping.early = Stopping.early or signum


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
YEAR = 365 * 24 * 3600


# 1. Configuration =================================================================================
# Pure functions from the environment to a list of dependencies; one error type, naming the variable.

class ConfigError(Exception):
    """A setting the operator must fix; main prints it as one line naming the variable, exit 2."""
    def __init__(self, variable, problem):
        super().__init__("%s: %s" % (variable, problem))
        self.variable = variable


class Dependency(types.SimpleNamespace):
    """One thing to wait for: its `kind` (a row of KINDS), `label`, and what its check reads."""
    absent_is_done = False  # a Job's: absent counts as done (ENTRYPOINT_JOB_ABSENT_IS_DONE)

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
HOST_PART = r"[A-Za-z0-9](?:[-A-Za-z0-9]{0,61}[A-Za-z0-9])?"
HOST_NAME = re.compile(r"(?=.{1,253}\Z)%s(?:\.%s)*\.?" % (HOST_PART, HOST_PART))
FIELD_PATH = re.compile(r"[^.\s]+(?:\.[^.\s]+)*")  # status.phase: no empty part, no blank


def is_label_key(key):
    """`name` or `prefix/name`, the prefix a DNS subdomain."""
    prefix, slash, name = key.rpartition("/")
    return bool(LABEL_PART.fullmatch(name) and (not slash or OBJECT_NAME.fullmatch(prefix)))


def is_label_value(value):
    return value == "" or bool(LABEL_PART.fullmatch(value))


NAMESPACE_RULE = ("namespace (a DNS-1123 label: a-z, 0-9 and '-', a letter or digit at both ends, "
                  "at most 63, e.g. openstack)")


def check_name(variable, name, what="name", pattern=OBJECT_NAME):
    if not pattern.fullmatch(name):
        raise ConfigError(variable, "%s is not a valid Kubernetes %s" % (shown(name), what))
    return name


def name_rule(pattern, what):
    """A kind's rule for the names it is given (see check_name)."""
    return lambda variable, name: check_name(variable, name, what, pattern)


def check_custom_resource_name(variable, name):
    """Some kinds allow any name (`:` and `,` included), but none a path could not carry."""
    if (name in (".", "..") or "/" in name or "%" in name or len(name) > 253
            or CONTROL_CHARACTERS.search(name)):
        raise ConfigError(variable, "%s is not a name an object can have (no '/', '%%' or control "
                                    "characters, not '.' or '..', at most 253)" % shown(name))
    return name


# Settings ---------------------------------------------------------------------------------------

def read_settings(env):
    """The variables besides the dependencies; NAMESPACE falls back to the service account's."""
    refuse_unknown(env, "ENTRYPOINT_", [name for name, _ in SETTINGS_HELP], "not a setting")
    http_ca = env.get("ENTRYPOINT_HTTP_CA", "").strip()
    sa_dir = env.get("ENTRYPOINT_SERVICEACCOUNT_DIR", "").strip() or DEFAULT_SERVICEACCOUNT_DIR
    namespace = env.get("NAMESPACE", "").strip()
    if namespace:
        check_name("NAMESPACE", namespace, NAMESPACE_RULE, LABEL_NAME)
    else:
        namespace_file = os.path.join(sa_dir, "namespace")
        namespace = read_text(namespace_file).strip() or "default"
        if not LABEL_NAME.fullmatch(namespace):
            raise ConfigError("NAMESPACE", "not set, and %s holds %s, not a valid namespace"
                              % (namespace_file, shown(namespace)))
    pod_name = env.get("POD_NAME", "").strip()
    if pod_name:
        check_name("POD_NAME", pod_name, "pod name")
    return types.SimpleNamespace(
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
        events=true_or_false(env, "ENTRYPOINT_EVENTS", True),
        fail_fast=true_or_false(env, "ENTRYPOINT_FAIL_FAST", False),
        job_absent_is_done=true_or_false(env, "ENTRYPOINT_JOB_ABSENT_IS_DONE", False),
        job_absent_grace=seconds_setting(env, "ENTRYPOINT_JOB_ABSENT_GRACE", 10, 0, 3600),
        http_context=http_tls_context(http_ca) if http_ca else None,
    )


def true_or_false(env, variable, default):
    value = env.get(variable, "").strip().lower()
    if value not in ("", "true", "false"):
        raise ConfigError(variable, "%s is not true or false" % shown(env[variable].strip()))
    return default if not value else value == "true"


def read_text(path, limit=65536):
    """A small file's text ('' when missing or unreadable), bytes not UTF-8 replaced."""
    try:
        with open(path, "rb") as f:
            return f.read(limit).decode("utf-8", "replace")
    except (OSError, ValueError):
        return ""


def seconds_setting(env, variable, default, minimum, maximum, zero_means_off=False):
    """Seconds from `minimum` (no typo such as 1e-9 may hammer the API server) to `maximum`."""
    value = env.get(variable, "").strip()
    if not value:
        return default
    try:
        seconds = float(value)
    except ValueError:
        seconds = -1.0
    if not (minimum <= seconds <= maximum or zero_means_off and seconds == 0):
        raise ConfigError(variable, "%s is not a number of seconds from %g to %d%s"
                          % (shown(value), minimum, maximum, " (or 0 for off)" if zero_means_off
                             else ""))
    return seconds


def api_server_setting(url):
    """ENTRYPOINT_API_SERVER: https://, or plain http:// to this machine only (kubectl proxy)."""
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
            or CONTROL_CHARACTERS.search(url) or " " in url or not is_host(parts.hostname)):
        raise ConfigError("ENTRYPOINT_API_SERVER", "%s is not an http:// or https:// URL of an "
                          "API server (host, optional port and path)" % shown(url))
    if parts.scheme == "http" and not (parts.hostname == "localhost"
                                       or getattr(ip_address(parts.hostname), "is_loopback", 0)):
        raise ConfigError("ENTRYPOINT_API_SERVER", "plain http is only for this machine (kubectl "
                          "proxy on 127.0.0.1); use https for %s" % parts.hostname)
    return url


def ip_address(host):
    import ipaddress
    try:
        return ipaddress.ip_address(host)
    except ValueError:
        return None


def is_host(host):
    """A host name or an address; not a name ending in a number (`127.1`: libc's address)."""
    if ip_address(host) is not None:
        return True
    numeric = re.fullmatch(r"[0-9]+|0[xX][0-9a-fA-F]*", host.rstrip(".").rpartition(".")[2])
    return bool(HOST_NAME.fullmatch(host)) and not numeric


# Lists, names and JSON --------------------------------------------------------------------------

def split_list(value):
    """Comma-separated items, whitespace trimmed, empty items (a trailing comma) skipped."""
    return [item.strip() for item in value.split(",") if item.strip()]


def split_namespaced(kind, item, base_namespace):
    """`namespace:name` or `name` (in the base namespace); anything else is an error."""
    parts = item.split(":")
    if len(parts) == 1 and item.count("/") == 1 and all(
            LABEL_NAME.fullmatch(part) for part in item.split("/")):
        raise ConfigError(kind.variable, "%r is not a name; did you mean %r (namespace:name)?"
                          % (item, item.replace("/", ":")))
    if len(parts) == 1:
        return base_namespace, kind.names(kind.variable, item)
    if len(parts) > 2:
        raise ConfigError(kind.variable, "%r has more than one colon (want namespace:name)" % item)
    namespace, name = parts[0].strip(), parts[1].strip()
    for part, what in ((namespace, "namespace"), (name, "name")):
        if not part:
            raise ConfigError(kind.variable, "%r has an empty %s (want namespace:name)"
                              % (item, what))
    return (check_name(kind.variable, namespace, NAMESPACE_RULE, LABEL_NAME),
            kind.names(kind.variable, name))


def without_namespace(variable, item):
    """CONTAINER, SOCKET and CONFIG items are local to this pod: a namespace makes no sense."""
    if ":" in item:
        raise ConfigError(variable, "%r: this kind takes no namespace (no colon allowed)" % item)
    return item


def go_map(labels):
    """Labels as the original prints them (Go's map formatting), so log greps keep matching."""
    return "map[%s]" % " ".join("%s:%s" % (k, labels[k]) for k in sorted(labels))


def closest(word, choices):
    """The choice a misspelt word most likely meant, or None."""
    import difflib
    close = difflib.get_close_matches(word, choices, n=1, cutoff=0.6)
    return close[0] if close else None


def parse_json_list(kind, value):
    try:
        entries = json.loads(value)
    except (ValueError, RecursionError) as e:
        raise ConfigError(kind.variable, "invalid JSON (%s)" % e)
    if not isinstance(entries, list):
        raise ConfigError(kind.variable, "expected a JSON list of objects, got %s"
                          % type(entries).__name__)
    for entry in entries:
        if not isinstance(entry, dict):
            raise ConfigError(kind.variable, "expected a JSON list of objects, found %s"
                              % entry_text(entry))
        unknown = sorted(set(entry) - set(kind.json_keys))
        if unknown:
            close = closest(unknown[0], kind.json_keys)
            raise ConfigError(kind.variable, "unknown key %s in %s (%s)" % (
                shown(unknown[0]), entry_text(entry), "did you mean %r?" % close if close
                else "known: " + ", ".join(kind.json_keys)))
    return entries


def entry_text(entry):
    """A JSON entry as an error line shows it: compact, cut short."""
    text = json.dumps(entry)
    return text if len(text) <= 200 else text[:196] + "...}"


def json_string(variable, entry, key, required=False):
    """A string member, trimmed; None when absent or blank (an error where `required`)."""
    value = entry.get(key)
    if value is not None and not isinstance(value, str):
        raise ConfigError(variable, "%r must be a string in %s" % (key, entry_text(entry)))
    value = (value or "").strip()
    if not value and required:
        raise ConfigError(variable, "entry %s has no %r" % (entry_text(entry), key))
    return value or None


def json_namespace(variable, entry, settings):
    namespace = json_string(variable, entry, "namespace")
    return check_name(variable, namespace, NAMESPACE_RULE, LABEL_NAME) if namespace \
        else settings.namespace


def json_labels(variable, entry, required):
    """An entry's `labels`, as Kubernetes checks them (`app!` and `x` would read `app!=x`)."""
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
        if not is_label_key(key):
            raise ConfigError(variable, "%s is not a valid label key ([prefix/]name: name up to 63 "
                                        "of A-Z a-z 0-9 - _ ., prefix a DNS subdomain)" % shown(key))
        if not is_label_value(val):
            raise ConfigError(variable, "%s is not a valid value for label %s (empty, or up to 63 "
                                        "of A-Z a-z 0-9 - _ ., alphanumeric at both ends)"
                              % (shown(val), key))
    return labels


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


# Selectors, kept as values ----------------------------------------------------------------------

class Selector(tuple):
    """A label selector as a value: requirements (key, in|notin|exists|!, values); text for URLs."""
    @classmethod
    def of(cls, labels):
        """key=value for every pair (a JSON variable's labels, a matchLabels)."""
        return cls((key, "in", (labels[key],)) for key in sorted(labels))

    def text(self):
        return ",".join(
            "%s=%s" % (key, values[0]) if operator == "in" and len(values) == 1
            else "%s %s (%s)" % (key, operator, ",".join(values)) if operator in ("in", "notin")
            else key if operator == "exists" else "!" + key
            for key, operator, values in self)

    def matches(self, labels):
        labels = labels if isinstance(labels, dict) else {}
        return all((labels.get(key) in values) == (operator == "in") if operator in ("in", "notin")
                   else (key in labels) == (operator == "exists")
                   for key, operator, values in self)


class Field(tuple):
    """A field selector of one requirement, as a value: (dotted path, value)."""
    def __new__(cls, path, value):
        return super().__new__(cls, (path, value))

    def text(self):
        """As the API server reads it: `\\`, `,` and `=` in the value escaped."""
        return "%s=%s" % (self[0], re.sub(r"([\\,=])", r"\\\1", self[1]))

    def matches(self, obj):
        return (dig(obj, *self[0].split(".")) or "") == self[1]


# One parser per kind: (kind, value, settings) -> [Dependency] -----------------------------------

def parse_names(kind, value, settings):
    """`[namespace:]name,...` (SERVICE, DAEMONSET, JOBS), each named by the kind's label."""
    return [Dependency(kind=kind, namespace=namespace, name=name, selector=None,
                       label=kind.label % (name, namespace))
            for namespace, name in (split_namespaced(kind, item, settings.namespace)
                                    for item in split_list(value))]


def parse_local(kind, value, settings):
    """`name,...` (CONTAINER) or `path,...` (SOCKET): this pod's, so with no namespace."""
    return [Dependency(kind=kind, name=kind.names(kind.variable, item), path=item,
                       label=kind.label % item)
            for item in (without_namespace(kind.variable, item) for item in split_list(value))]


def parse_jobs_json(kind, value, settings):
    deps = []
    for entry in parse_json_list(kind, value):
        name = json_string(kind.variable, entry, "name")
        labels = json_labels(kind.variable, entry, required=False)
        if bool(name) == bool(labels):
            raise ConfigError(kind.variable, "give 'name' or 'labels', not both, in %s" % entry_text(
                entry) if name else "entry %s has neither 'name' nor 'labels'" % entry_text(entry))
        namespace = json_namespace(kind.variable, entry, settings)
        absent_is_done = entry.get("absentIsDone", settings.job_absent_is_done)
        if not isinstance(absent_is_done, bool):
            raise ConfigError(kind.variable, "'absentIsDone' must be true or false in %s"
                              % entry_text(entry))
        deps.append(Dependency(
            kind=kind, namespace=namespace, name=name and kind.names(kind.variable, name),
            selector=Selector.of(labels) if labels else None, absent_is_done=absent_is_done,
            label=kind.label % (name, namespace) if name else
            "Jobs with labels %s in namespace %s" % (go_map(labels), namespace)))
    return deps


def parse_job_names(kind, value, settings):
    """DEPENDENCY_JOBS: names, each absent-is-done as ENTRYPOINT_JOB_ABSENT_IS_DONE says."""
    deps = parse_names(kind, value, settings)
    for dep in deps:
        dep.absent_is_done = settings.job_absent_is_done
    return deps


def parse_pods_json(kind, value, settings):
    deps = []
    for entry in parse_json_list(kind, value):
        labels = json_labels(kind.variable, entry, required=True)
        namespace = json_namespace(kind.variable, entry, settings)
        same_node = entry.get("requireSameNode", False)
        if not isinstance(same_node, bool):
            raise ConfigError(kind.variable, "'requireSameNode' must be true or false in %s"
                              % entry_text(entry))
        deps.append(Dependency(
            kind=kind, namespace=namespace, selector=Selector.of(labels), require_same_node=same_node,
            label="Pod on same host with labels %s in namespace %s" % (go_map(labels), namespace)))
    return deps


def parse_custom_resources(kind, value, settings):
    deps, variable = [], kind.variable
    for entry in parse_json_list(kind, value):
        api_version = json_string(variable, entry, "apiVersion", required=True)
        resource_kind = json_string(variable, entry, "kind", required=True)
        name = json_string(variable, entry, "name", required=True)
        group, slash, version = api_version.rpartition("/")  # `group/version`, or core `v1`
        if not VERSION.fullmatch(version) or slash and not OBJECT_NAME.fullmatch(group):
            raise ConfigError(variable, "apiVersion %s is not group/version (example.com/v1) or a "
                                        "core version (v1)" % shown(api_version))
        check_name(variable, resource_kind, "kind (CamelCase letters and digits)", KIND_NAME)
        kind.names(variable, name)
        namespace = json_namespace(variable, entry, settings)
        fields = json_pairs(variable, entry, "fields", "key", "value")
        for key, _ in fields:
            if not FIELD_PATH.fullmatch(key):
                raise ConfigError(variable, "field key %s is not a dotted path such as "
                                            "status.phase" % shown(key))
        deps.append(Dependency(
            kind=kind, api_version=api_version, resource_kind=resource_kind, name=name,
            namespace=namespace, fields=fields,
            conditions=json_pairs(variable, entry, "conditions", "type", "status", "True"),
            label="%s %s in namespace %s" % (resource_kind, name, namespace),
            cluster_label="%s %s" % (resource_kind, name)))
    return deps


def parse_configs(kind, value, settings):
    """CONFIG: each template rendered once, now, with this pod's address (written by the check)."""
    variable = kind.variable
    destinations = [without_namespace(variable, item) for item in split_list(value)]
    values = template_values(settings.interface) if destinations else None
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
        deps.append(Dependency(kind=kind, path=destination, label="Config %s" % destination,
                               content=render_template(variable, source, template, values)))
    return deps


# TCP and HTTP: addresses outside the cluster's objects ------------------------------------------

def host_and_port(variable, item, default_port=None, whole=None):
    """`host:port`, `[IPv6]:port` (the port optional with a default): the host as connect() wants
    it (no brackets) and the port, 1 to 65535; anything else is an error, naming `whole` (the URL
    the item is part of) or the item."""
    said = shown(whole or item)
    rest = item
    if item.startswith("["):
        host, bracket, rest = item[1:].partition("]")
        if not bracket or "[" in host:
            raise ConfigError(variable, "%s has unbalanced brackets (want [IPv6]:port)" % said)
        if whole:  # a URL writes a zone's % as %25 (RFC 6874)
            host = host.replace("%25", "%")
        address, _, zone = host.partition("%")  # (3.8's ipaddress knows no zone: apart)
        if getattr(ip_address(address), "version", 0) != 6 or "%" in host and not re.fullmatch(
                r"[A-Za-z0-9_.-]{1,64}", zone):
            raise ConfigError(variable, "%s: only an IPv6 address goes in brackets" % said)
        port = rest[1:] if rest.startswith(":") else None if not rest else ""
        port = None if whole and port == "" else port  # `http://[::1]:/`: the default port
    elif "[" in item or "]" in item:
        raise ConfigError(variable, "%s has unbalanced brackets (want [IPv6]:port)" % said)
    elif item.count(":") > 1:
        address = item.rpartition(":")[0]
        raise ConfigError(variable, "%s: an IPv6 address goes in brackets, e.g. [%s]:5432"
                          % (said, address) if ip_address(address) is not None else
                          "%s is not host:port" % said)
    else:
        host, colon, port = item.partition(":")
        port = port if colon and (port or not whole) else None
        if not is_host(host):
            raise ConfigError(variable, "%s: %s is not a host name or address" % (said, shown(host)))
    if port is None and default_port is None:
        raise ConfigError(variable, "%s has no port (want host:port)" % said)
    if port is None:
        return host, default_port
    if not re.fullmatch(r"[0-9]{1,5}", port) or not 1 <= int(port) <= 65535:
        raise ConfigError(variable, "%s: the port must be a number from 1 to 65535" % said)
    return host, int(port)


def parse_tcp(kind, value, settings):
    """`host:port,...` (`tcp://` before it allowed, as other waiters write it)."""
    deps = []
    for item in split_list(value):
        address = item[len("tcp://"):] if item.lower().startswith("tcp://") else item
        if "/" in address:
            raise ConfigError(kind.variable, "%s is not host:port (for a URL, use DEPENDENCY_HTTP)"
                              % shown(item))
        host, port = host_and_port(kind.variable, address)
        deps.append(Dependency(kind=kind, host=host, port=port, timeout=settings.request_timeout,
                               label=kind.label % address))
    return deps


def parse_http(kind, value, settings):
    """`http://...` or `https://...` URLs: a host, no credentials (they would be logged), nothing a
    request line cannot carry. https verifies against ENTRYPOINT_HTTP_CA, else the system's CAs."""
    from urllib.parse import urlsplit
    deps, context = [], None
    for url in split_list(value):
        if CONTROL_CHARACTERS.search(url) or " " in url or not url.isascii():
            raise ConfigError(kind.variable, "%s has spaces, control or non-ASCII characters "
                                             "(percent-encode them: %%20)" % shown(url))
        try:
            parts = urlsplit(url)
        except ValueError as e:  # brackets that hold no IPv6 address
            raise ConfigError(kind.variable, "%s is not a URL (%s)" % (shown(url), e))
        if parts.scheme.lower() not in ("http", "https"):
            raise ConfigError(kind.variable, "%s is not an http:// or https:// URL" % shown(url))
        if "@" in parts.netloc:
            hidden = "%s://...@%s" % (parts.scheme, parts.netloc.rpartition("@")[2])
            raise ConfigError(kind.variable, "%s holds credentials: they would be logged; "
                                             "remove them" % shown(hidden))
        if not parts.netloc:
            raise ConfigError(kind.variable, "%s has no host" % shown(url))
        https = parts.scheme.lower() == "https"
        host, port = host_and_port(kind.variable, parts.netloc, 443 if https else 80, url)
        if https and context is None:
            context = settings.http_context or http_tls_context(None)
        deps.append(Dependency(kind=kind, url=url, host=host, port=port,
                               context=context if https else None,
                               target=(parts.path or "/") + ("?" + parts.query if parts.query else ""),
                               timeout=settings.request_timeout, label=kind.label % url))
    return deps


def http_tls_context(ca_path):
    """How an https dependency is verified: ENTRYPOINT_HTTP_CA's certificates, else the system's."""
    import ssl
    try:
        return tls_context(ca_path or None)
    except (OSError, ssl.SSLError) as e:
        raise ConfigError("ENTRYPOINT_HTTP_CA", "cannot load the CA certificates %s (%s)"
                          % (shown(ca_path), getattr(e, "strerror", None) or e))


# CONFIG templates -------------------------------------------------------------------------------

class ConfigTemplate(string.Template):
    """`{{ .IP }}` placeholders (the Go template syntax users already have in ConfigMaps)."""
    flags = 0  # case-sensitive, as Go templates are (string.Template adds re.VERBOSE)
    pattern = r"\{\{ \s* (?: \. (?P<named>[A-Za-z_][A-Za-z0-9_]*) \s* \}\} | (?P<braced>(?!)) " \
              r"| (?P<escaped>(?!)) | (?P<invalid>) )"


TEMPLATE_VALUES = ("IP", "HOSTNAME", "IP_ERLANG")


def render_template(variable, source, template, values):
    """The template's bytes as they are, known placeholders replaced; other {{ }}: an error."""
    text = template.decode("utf-8", "surrogateescape")
    for match in ConfigTemplate.pattern.finditer(text):
        if match.group("named") not in values:
            start = match.start()
            line_end = text.find("\n", start)
            line_end = len(text) if line_end < 0 else line_end
            end = text.find("}}", start, line_end)
            placeholder = text[start:end + 2] if end >= 0 else text[start:min(line_end, start + 20)]
            raise ConfigError(variable, "unknown placeholder %s in %s line %d (known: %s)"
                              % (placeholder, source, text.count("\n", 0, start) + 1,
                                 ", ".join("{{ .%s }}" % v for v in TEMPLATE_VALUES)))
    return ConfigTemplate(text).substitute(values).encode("utf-8", "surrogateescape")


def template_values(interface):
    """IP, HOSTNAME and IP_ERLANG for INTERFACE_NAME: IPv4 if it has one, else its global IPv6."""
    if not interface:
        raise ConfigError("INTERFACE_NAME", "not set, but DEPENDENCY_CONFIG needs it to template "
                                            "{{ .IP }}")
    try:
        socket.if_nametoindex(interface)
        ip = ipv4_address(interface)
    except (OSError, ValueError):
        raise ConfigError("INTERFACE_NAME", "there is no network interface named %s"
                          % shown(interface))
    if ip is not None:
        erlang = ip.replace(".", ",")
    else:
        hex_address = ipv6_global_address(read_text("/proc/net/if_inet6"), interface)
        if hex_address is None:
            raise ConfigError("INTERFACE_NAME", "interface %s has no IPv4 or global IPv6 address"
                              % shown(interface))
        ip, erlang = ipv6_forms(hex_address)
    return {"IP": ip, "HOSTNAME": socket.gethostname(), "IP_ERLANG": erlang}


def ipv6_forms(hex_address):
    """(text form, Erlang form: eight 16-bit groups in decimal) of a 32-hex-digit address."""
    return (socket.inet_ntop(socket.AF_INET6, bytes.fromhex(hex_address)),
            ",".join(str(int(hex_address[i:i + 4], 16)) for i in range(0, 32, 4)))


def ipv4_address(interface):
    """The interface's first IPv4 address by ioctl (SIOCGIFADDR), or None when it has none."""
    import fcntl
    import struct
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        try:
            answer = fcntl.ioctl(sock.fileno(), 0x8915, struct.pack("256s", interface.encode()[:15]))
        except OSError as e:
            if e.errno == errno.EADDRNOTAVAIL:
                return None
            raise
    return socket.inet_ntoa(answer[20:24])


def ipv6_global_address(if_inet6_text, interface):
    """The interface's global IPv6 address in /proc/net/if_inet6 text (32 hex digits)."""
    for line in if_inet6_text.splitlines():
        fields = line.split()
        if len(fields) == 6 and fields[5] == interface and fields[3] == "00":
            return fields[0]
    return None


# All of them ------------------------------------------------------------------------------------

def parse_dependencies(env, settings):
    """Every dependency the environment names, in table order; ConfigError on the first mistake
    (an unknown DEPENDENCY_* is a typo). One that reads this pod gets POD_NAME and namespace here."""
    refuse_unknown(env, "DEPENDENCY_", KIND_OF, "not a dependency kind")
    jobs_json = env.get("DEPENDENCY_JOBS_JSON", "").strip()
    if jobs_json and env.get("DEPENDENCY_JOBS", "").strip():
        log("WARNING", "both DEPENDENCY_JOBS and DEPENDENCY_JOBS_JSON are set: using "
                       "DEPENDENCY_JOBS_JSON")
    dependencies = []
    for kind in KINDS:
        value = env.get(kind.variable, "")
        if not value.strip() or kind.variable == "DEPENDENCY_JOBS" and jobs_json:
            continue
        for dep in kind.parse(kind, value, settings):
            if kind.needs_pod(dep):
                if not settings.pod_name:
                    raise ConfigError("POD_NAME", "not set, but %s needs it to find this pod (set "
                                                  "it from the downward API: metadata.name)"
                                      % kind.variable)
                dep.pod_name, dep.pod_namespace = settings.pod_name, settings.namespace
            dependencies.append(dep)
    return dependencies


def refuse_unknown(env, prefix, known, what):
    """A set variable with our prefix that we do not know is a typo, never silently ignored."""
    for variable in sorted(env):
        if variable.startswith(prefix) and variable not in known and env[variable].strip():
            close = closest(variable[len(prefix):], [v[len(prefix):] for v in known])
            raise ConfigError(variable, "%s; %s" % (what, "did you mean %s%s?" % (prefix, close)
                                                    if close else "valid: " + ", ".join(known)))


def misspelt_command(env):
    """With no command, a variable set within two edits of COMMAND (COMAND, command) is one."""
    for variable in sorted(env):
        if variable != "COMMAND" and env[variable].strip() and edits(variable.upper(), "COMMAND") <= 2:
            raise ConfigError("COMMAND", "empty, but %s is set: did you mean COMMAND? (as it is, "
                                         "the command would never run)" % variable)


def edits(a, b):
    """How many single-character insertions, deletions or changes turn a into b."""
    row = list(range(len(b) + 1))
    for i, char in enumerate(a, 1):
        row, last = [i] + [0] * len(b), row
        for j, other in enumerate(b, 1):
            row[j] = min(last[j] + 1, row[j - 1] + 1, last[j - 1] + (char != other))
    return row[-1]


def split_command(value):
    """COMMAND split on runs of ASCII whitespace (a no-break space is in a word); no quoting."""
    return [word for word in re.split("[ \t\n\r\v\f]+", value) if word]


# 2. Checks ========================================================================================
# One question per kind: (dependency, read) -> Verdict. No I/O but `read` (see ApiReader).

class Verdict(types.SimpleNamespace):
    """Met, or not with a reason to act on; `label`: a better name; `mistake`: a ConfigError;
    `failed`: it can never be met as it is (a Job failed for good); `absent`: an absent Job that
    may count as done (the engine judges how long it has been absent)."""
    label = mistake = None
    failed = absent = False


MET = Verdict(met=True, reason="")


def not_met(reason, **more):
    return Verdict(met=False, reason=reason, **more)


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


def list_of(value):
    """A list from an answer, or [] where the server sent something else (never counted)."""
    return value if isinstance(value, list) else []


def count_of(value):
    """A counter from an answer (status.succeeded...): a real integer, else 0."""
    return value if type(value) is int else 0


def is_pod_ready(pod):
    return any(c.get("type") == "Ready" and c.get("status") == "True"
               for c in list_of(dig(pod, "status", "conditions")) if isinstance(c, dict))


def summary(names, limit=3):
    """`a, b, c and 7 more`: a reason names a few, never thousands."""
    names = list(names)
    return ", ".join(names[:limit]) + (" and %d more" % (len(names) - limit)
                                       if len(names) > limit else "")


def node_of(pod):
    """spec.nodeName, or None while the pod is not scheduled (absent, empty, or not a name)."""
    node = dig(pod, "spec", "nodeName")
    return node if isinstance(node, str) and node else None


def this_pod_not_found(dep):
    return not_met("this pod %s is not found in namespace %s (check POD_NAME and NAMESPACE)"
                   % (dep.pod_name, dep.pod_namespace))


def this_pod_node(dep, read):
    """(the node this pod runs on, None), or (None, why not yet); settled once scheduled."""
    pod = read.get("v1", "pods", dep.pod_namespace, dep.pod_name,
                   settled=lambda pod: node_of(pod) is not None)
    if pod is None:
        return None, this_pod_not_found(dep)
    if node_of(pod) is None:
        return None, not_met("this pod %s is not scheduled to a node yet" % dep.pod_name)
    return node_of(pod), None


def service_read(dep):
    """The read check_service begins with, known up front: a namespace's Services share it."""
    return ("discovery.k8s.io/v1", "endpointslices", dep.namespace,
            Selector.of({"kubernetes.io/service-name": dep.name}))


def check_service(dep, read):
    """An endpoint has an address and is ready: EndpointSlices, or the Endpoints object."""
    slices_readable = True
    try:
        slices = read.list(*service_read(dep))
    except ApiError as e:
        if e.status not in (403, 404):
            raise
        slices, slices_readable = [], False
    if slices:
        endpoints = [e for s in slices for e in list_of(s.get("endpoints")) if isinstance(e, dict)]
        ready = sum(1 for e in endpoints
                    if list_of(e.get("addresses")) and dig(e, "conditions", "ready") is not False)
        return MET if ready else not_met("0 of %d endpoints ready" % len(endpoints))
    try:
        endpoints = read.get("v1", "endpoints", dep.namespace, dep.name)
    except ApiError as e:
        if e.reason != "NotAllowed" or not slices_readable:
            raise
        return not_met("no EndpointSlice for the Service yet (is it created?)")
    if endpoints is None:
        return not_met("no endpoints yet (is the Service created?)")
    subsets = [s for s in list_of(endpoints.get("subsets")) if isinstance(s, dict)]
    ready = sum(len(list_of(s.get("addresses"))) for s in subsets)
    total = ready + sum(len(list_of(s.get("notReadyAddresses"))) for s in subsets)
    return MET if ready else not_met("0 of %d endpoints ready" % total)


def check_container(dep, read):
    """This pod's container (or native sidecar) is ready; one its spec lacks is a mistake."""
    pod = read.get("v1", "pods", dep.pod_namespace, dep.pod_name)
    if pod is None:
        return this_pod_not_found(dep)
    if not list_of(dig(pod, "spec", "containers")):  # every pod has one: not an answer to trust
        raise malformed("pod " + dep.pod_name, "no list of containers")
    declared = [c.get("name") for key in ("containers", "initContainers")
                for c in list_of(dig(pod, "spec", key)) if isinstance(c, dict)]
    if dep.name not in declared:
        return not_met("not in the pod's spec", mistake=ConfigError(
            dep.kind.variable, "pod %s has no container %r (it has: %s)"
            % (dep.pod_name, dep.name, summary(map(str, declared), 10))))
    for key in ("containerStatuses", "initContainerStatuses"):
        for status in list_of(dig(pod, "status", key)):
            if isinstance(status, dict) and status.get("name") == dep.name:
                return MET if status.get("ready") is True else not_met("container is not ready")
    return not_met("container has no status yet")


def check_daemonset(dep, read):
    """A pod of the DaemonSet on this node is Ready, or it has no pod on this node. Read once (its
    selector cannot change), and again from storage before it counts: one re-created differs."""
    def judged_by(daemonset):
        if daemonset is None:
            return not_met("daemonset not found")
        node, problem = this_pod_node(dep, read)
        if problem:
            return problem
        pods = read.list("v1", "pods", dep.namespace, daemonset_selector(
            dig(daemonset, "spec", "selector")), Field("spec.nodeName", node))
        if not pods or any(is_pod_ready(p) for p in pods):
            return MET
        return not_met("pod %s on node %s is not ready"
                       % (summary(dig(p, "metadata", "name") for p in pods), node))

    def get(**fresh):
        return read.get("apps/v1", "daemonsets", dep.namespace, dep.name,
                        settled=lambda daemonset: True, **fresh)  # spec.selector is immutable

    daemonset = get()
    verdict = judged_by(daemonset)
    if verdict.met:
        current = get(fresh=True)
        if dig(current, "metadata", "uid") != dig(daemonset, "metadata", "uid"):
            verdict = judged_by(current)
    return verdict


def daemonset_selector(selector):
    """A DaemonSet's LabelSelector as a Selector; anything not valid is malformed, never dropped."""
    def bad(problem):
        return malformed("the daemonset's selector", problem)

    match_labels = selector.get("matchLabels") if isinstance(selector, dict) else None
    expressions = selector.get("matchExpressions") if isinstance(selector, dict) else None
    if not isinstance(match_labels or {}, dict) or not isinstance(expressions or [], list):
        raise bad("not a LabelSelector")
    for key, value in (match_labels or {}).items():
        if not isinstance(value, str) or not is_label_key(key) or not is_label_value(value):
            raise bad("an invalid label %s" % shown(key))
    requirements = list(Selector.of(match_labels or {}))
    operators = {"In": "in", "NotIn": "notin", "Exists": "exists", "DoesNotExist": "!"}
    for expression in expressions or []:
        expression = expression if isinstance(expression, dict) else {}
        key, operator = expression.get("key"), operators.get(expression.get("operator"))
        values = list_of(expression.get("values"))
        if not isinstance(key, str) or not is_label_key(key) or not all(
                isinstance(v, str) and is_label_value(v) for v in values):
            raise bad("an invalid expression %s" % shown(expression))
        if operator is None or bool(values) != (operator in ("in", "notin")):
            raise bad("an expression this program cannot read: %s" % shown(expression))
        requirements.append((key, operator, tuple(values)))
    if not requirements:
        raise bad("empty (it would select every pod)")
    return Selector(requirements)


def job_state(job):
    """(what keeps the Job from being done, whether it failed for good: only re-created can it)."""
    status = job.get("status") if isinstance(job.get("status"), dict) else {}
    failed = [c for c in list_of(status.get("conditions")) if isinstance(c, dict)
              and c.get("type") == "Failed" and c.get("status") == "True"]
    counts = "%d active, %d failed" % (count_of(status.get("active")), count_of(status.get("failed")))
    if failed:
        why = ": ".join(clip(failed[0][key], 200) for key in ("reason", "message")
                        if isinstance(failed[0].get(key), str) and failed[0][key])
        return "failed for good (%s; %s): it succeeds only if re-created" % (
            why or "condition Failed", counts), True
    if dig(job, "spec", "suspend") is True:
        return "suspended (spec.suspend is true; %s): it runs once resumed" % counts, False
    return "not succeeded (%s)" % counts, False


def check_jobs(dep, read):
    """Every Job named, or every Job with the labels (at least one), has succeeded at least once.
    None there is absent: with absent-is-done, the engine may count that as done."""
    if dep.name:
        job = read.get("batch/v1", "jobs", dep.namespace, dep.name)
        if job is None:
            return not_met("job not found (deleted, or not created yet)", absent=dep.absent_is_done)
        jobs = [job]
    else:
        jobs = read.list("batch/v1", "jobs", dep.namespace, dep.selector)
        if not jobs:
            return not_met("no job matches the labels", absent=dep.absent_is_done)
    states = [(job_state(j), dig(j, "metadata", "name")) for j in jobs
              if count_of(dig(j, "status", "succeeded")) < 1]
    if not states:
        return MET
    states.sort(key=lambda state: not state[0][1])  # one failed for good is named first
    failed = states[0][0][1]
    if dep.name:
        return not_met(states[0][0][0], failed=failed)
    first = "job %s %s" % (states[0][1], states[0][0][0])
    if len(states) == 1:
        return not_met(first, failed=failed)
    return not_met("%d of %d matching jobs not succeeded: %s; also %s" % (
        len(states), len(jobs), first, summary(name for _, name in states[1:])), failed=failed)


def check_pods(dep, read):
    """At least one pod with the labels is Ready (on this node when requireSameNode)."""
    fields, where = None, ""
    if dep.require_same_node:
        node, problem = this_pod_node(dep, read)
        if problem:
            return problem
        fields, where = Field("spec.nodeName", node), " on node %s" % node
    pods = read.list("v1", "pods", dep.namespace, dep.selector, fields)
    if any(is_pod_ready(p) for p in pods):
        return MET
    if not pods:
        return not_met("found no pods%s matching the labels" % where)
    return not_met("found %d pods%s, but none ready" % (len(pods), where))


def check_custom_resource(dep, read):
    """The object exists (kind found by discovery) with the fields and conditions wanted."""
    resource = read.resource_for(dep.api_version, dep.resource_kind)
    if resource is None:
        return not_met("the API server does not serve kind %s in %s (yet)"
                       % (dep.resource_kind, dep.api_version))
    label = None if resource.get("namespaced") else dep.cluster_label
    obj = read.get(dep.api_version, resource["name"], None if label else dep.namespace, dep.name)
    if obj is None:
        return not_met("not found", label=label)
    for key, want in dep.fields:
        value = dig(obj, *key.split("."))
        text = value if isinstance(value, str) else json.dumps(value)  # as the operator wrote it
        if value is None or text != want:
            return not_met("field %s is %s, want %r" % (
                key, "missing" if value is None else repr(text), want), label=label)
    conditions = [c for c in list_of(dig(obj, "status", "conditions")) if isinstance(c, dict)]
    for kind, want in dep.conditions:
        found = [c.get("status") for c in conditions if c.get("type") == kind]
        if not found or found[0] != want:
            return not_met("no condition %s yet, want %r" % (kind, want) if not found else
                           "condition %s is %r, want %r" % (kind, found[0], want), label=label)
    return Verdict(met=True, reason="", label=label)


def check_socket(dep, read):
    """The path exists and this process may read it."""
    try:
        os.stat(dep.path)
    except OSError as e:
        return not_met(e.strerror or str(e))
    return MET if os.access(dep.path, os.R_OK) else not_met(
        "exists, but is not readable by uid %d" % os.getuid())


def check_tcp(dep, read):
    """A TCP connection to the host and port succeeds, to any address the name resolves to (each
    tried in turn); it is closed at once, nothing sent. All within the request timeout."""
    failures = []
    try:
        connect_before(time.monotonic() + dep.timeout, (dep.host, dep.port), failures).close()
    except OSError as e:
        return not_met("cannot connect to %s" % "; to ".join(
            "%s: %s" % (where, network_failure(error))
            for where, error in failures or [(dep.host, e)]))  # none tried: the lookup failed
    return MET


HTTP_BODY_READ = 4096  # bytes of an answer's body read (a piece is shown in the reason)
HTTP_BODY_SHOWN = 100  # characters of it in the reason


def check_http(dep, read):
    """A GET of the URL answers 2xx. A redirect is not followed (3xx: not met, saying where it
    points); no token, no proxy; the answer bounded in time and size, a clean piece in the reason."""
    import http.client
    make = bounded_connection(http.client.HTTPSConnection if dep.context else
                              http.client.HTTPConnection)
    connection = make(dep.host, dep.port, **({"context": dep.context} if dep.context else {}))
    connection.deadline = time.monotonic() + dep.timeout
    response = None
    try:
        connection.request("GET", dep.target, headers={
            "User-Agent": "kubernetes-entrypoint/" + __version__, "Accept": "*/*",
            "Connection": "close"})
        response = connection.getresponse()
        for _ in range(10):  # 1xx (103 Early Hints...) come before the answer; 100 is skipped
            if not 100 < response.status < 200 or response.status == 101:
                break
            response = next_response(response)
        if 200 <= response.status < 300:
            return MET  # its body is not waited for
        try:
            body = response.read1(HTTP_BODY_READ)  # what has come, not waiting for the rest
        except (OSError, ValueError, http.client.HTTPException):  # cut short: the status says
            body = b""
    except (OSError, http.client.HTTPException) as e:
        return not_met("GET failed: %s" % network_failure(e))
    finally:
        if response is not None:
            response.close()  # its socket with it: none is left for the command
        connection.close()
    answer = "%d %s" % (response.status, one_line(response.reason or "")[:60])
    if 300 <= response.status < 400:
        where = one_line(response.getheader("Location") or "nowhere")
        return not_met("%s, redirects to %s (not followed)" % (answer.strip(), clip(where, 200)))
    piece = body.decode("utf-8", "replace")
    if "html" in (response.getheader("Content-Type") or "").lower():
        piece = re.sub(r"<[^>]*>?", " ", piece)  # the words of an error page, not its markup
    piece = " ".join(piece.split())
    return not_met("%s%s" % (answer.strip(), ": " + clip(one_line(piece), HTTP_BODY_SHOWN)
                             if piece else ""))


def next_response(informational):
    """The answer after an informational (1xx) one, read on from where it ended."""
    import http.client
    stream, informational.fp = informational.fp, None  # the next answer's now: not closed with it

    class Rest:
        def makefile(self, mode):
            return stream

    response = http.client.HTTPResponse(Rest(), method="GET")
    response.begin()
    return response


def network_failure(error):
    """What went wrong, as someone reading `nc` or `wget` output would say it."""
    ssl = sys.modules.get("ssl")  # loaded where https is used, and only then can it fail so
    if isinstance(error, socket.timeout):
        return str(error) if "timed out" in str(error) else "timed out"
    if isinstance(error, ConnectionRefusedError):
        return "connection refused"
    if isinstance(error, socket.gaierror):
        return "name not found (%s)" % (error.strerror or error)
    if ssl is not None and isinstance(error, ssl.SSLCertVerificationError):
        return "certificate not trusted (%s)" % clip(one_line(error.verify_message or ""), 200)
    return describe_failure(error)


def check_config(dep, read):
    """The rendered template is written to its destination (retried while it cannot be)."""
    try:
        write_file_atomically(dep.path, dep.content)
    except OSError as e:
        return not_met("cannot write: %s" % (e.strerror or e))
    return MET


def config_written(dep, read):
    """--check's question for CONFIG, which writes nothing: the file already holds the rendering."""
    if not os.path.exists(dep.path):
        return not_met("not written yet")
    try:
        with open(dep.path, "rb") as f:
            written = f.read()
    except OSError:
        written = None
    return MET if written == dep.content else not_met("differs from the rendering")


# 3. Kinds =========================================================================================
# One row per DEPENDENCY_* variable: the single source of everything about it.

class Kind:
    """One DEPENDENCY_* variable; adding a kind is one parser, one check and one row: parse(kind,
    value, settings); check(dep, read); dry_check (--check's, where check writes); needs_api;
    needs_pod(dep): POD_NAME needed; names(variable, name): the names' rule; label (from name,
    namespace); json_keys; merge(dep): the label read a namespace shares; example (--help);
    in_thread: the check goes to the network, so each round it runs in a thread of its own."""
    def __init__(self, variable, parse, check, example, needs_api=True, needs_pod=False,
                 names=name_rule(OBJECT_NAME, "name"), label=None, json_keys=(), dry_check=None,
                 merge=None, reads=(), in_thread=False):
        self.variable, self.parse, self.check, self.example = variable, parse, check, example
        self.in_thread = in_thread
        self.needs_api, self.names, self.label, self.json_keys = needs_api, names, label, json_keys
        self.needs_pod = needs_pod if callable(needs_pod) else (lambda dep: needs_pod)
        self.dry_check, self.merge = dry_check or check, merge
        # reads(dep, plural): [(namespace, API group, resource, name or None, fallback)] its check
        # reads, by name where it reads one object (this pod's aside), `fallback` where it is read
        # only when another cannot be; plural(apiVersion, kind) names a custom resource. In the
        # table: (group, resource, by name, fallback).
        self.reads = reads if callable(reads) else (
            lambda dep, plural: [(dep.namespace, group, resource, dep.name if by_name else None,
                                  fallback) for group, resource, by_name, fallback in reads])


JOB_NAMES = name_rule(JOB_NAME, "Job name (at most 63 characters)")
JOBS_READ = [("batch", "jobs", True, False)]
KINDS = [
    Kind("DEPENDENCY_SERVICE", parse_names, check_service, "[ns:]service,...",
         names=name_rule(SERVICE_NAME, "Service name (a DNS-1035 label: a-z, 0-9, '-', starting "
                                       "with a letter, at most 63)"),
         label="Service %s in namespace %s", merge=service_read,
         reads=[("discovery.k8s.io", "endpointslices", False, False), ("", "endpoints", True, True)]),
    Kind("DEPENDENCY_CONTAINER", parse_local, check_container,
         "container,... (needs POD_NAME)", needs_pod=True,
         names=name_rule(LABEL_NAME, "container name"), label="Container %s"),
    Kind("DEPENDENCY_DAEMONSET", parse_names, check_daemonset,
         "[ns:]daemonset,... (needs POD_NAME)", needs_pod=True,
         label="Daemonset %s in namespace %s",
         reads=[("apps", "daemonsets", True, False), ("", "pods", False, False)]),
    Kind("DEPENDENCY_JOBS", parse_job_names, check_jobs, "[ns:]job,...", names=JOB_NAMES,
         label="Job %s in namespace %s", reads=JOBS_READ),
    Kind("DEPENDENCY_JOBS_JSON", parse_jobs_json, check_jobs,
         '[{"name": ...} or {"labels": {...}}, "namespace": ...]', names=JOB_NAMES,
         label="Job %s in namespace %s", json_keys=("name", "labels", "namespace", "absentIsDone"),
         reads=JOBS_READ),
    Kind("DEPENDENCY_POD_JSON", parse_pods_json, check_pods,
         '[{"labels": {...}, "namespace": ..., "requireSameNode": bool}]',
         needs_pod=lambda dep: dep.require_same_node,
         json_keys=("labels", "namespace", "requireSameNode"), reads=[("", "pods", False, False)]),
    Kind("DEPENDENCY_CUSTOM_RESOURCE", parse_custom_resources, check_custom_resource,
         '[{"apiVersion", "kind", "name", "namespace", "fields", "conditions"}]',
         names=check_custom_resource_name,
         json_keys=("apiVersion", "kind", "name", "namespace", "fields", "conditions"),
         reads=lambda dep, plural: [(dep.namespace, dep.api_version.rpartition("/")[0],
                                     plural(dep.api_version, dep.resource_kind), dep.name, False)]),
    Kind("DEPENDENCY_SOCKET", parse_local, check_socket, "path,...", needs_api=False,
         names=lambda variable, path: path, label="Socket %s"),
    Kind("DEPENDENCY_TCP", parse_tcp, check_tcp, "host:port,... ([IPv6]:port)", needs_api=False,
         label="TCP %s", in_thread=True),
    Kind("DEPENDENCY_HTTP", parse_http, check_http, "http(s)://...,... (met on 2xx)",
         needs_api=False, label="HTTP %s", in_thread=True),
    Kind("DEPENDENCY_CONFIG", parse_configs, check_config,
         "destination path,... (needs INTERFACE_NAME)", needs_api=False, dry_check=config_written),
]
KIND_OF = {kind.variable: kind for kind in KINDS}


# What a Role must allow, from the table -------------------------------------------------------

READ_VERBS = ("get", "list", "watch")  # of one object: watch to react at once; get at the least
LIST_VERBS = ("list", "watch")         # of a selection (labels): never read with get
EVENT_VERBS = ("create", "patch")


def access_needed(dependencies, settings=None, plural=None):
    """[(namespace, API group, resource, name or None, fallback, verbs)]: what the checks read (by
    name where they read one object), this pod where one reads it, and, where Events are written
    (per `settings`), events and this pod (for its uid). `plural`: a custom resource's name,
    guessed from its kind unless told (what discovery said)."""
    found = []
    for dep in dependencies:
        reads = dep.kind.reads(dep, plural or (lambda api_version, kind: plural_of(kind)))
        if dep.kind.needs_pod(dep):
            reads.append((dep.pod_namespace, "", "pods", dep.pod_name, False))
        found += [read + (READ_VERBS if read[3] else LIST_VERBS,) for read in reads]
    events_in = settings.events and events_namespace(settings) if settings else None
    if events_in:
        found += [(events_in, "", "events", None, False, EVENT_VERBS),
                  (events_in, "", "pods", settings.pod_name, False, ("get",))]
    return found


def rules_needed(access):
    """{namespace: {(API group, resource): verbs}}: the access needed, names aside (a Role's)."""
    needed = {}
    for namespace, group, resource, _, _, verbs in access:
        if namespace:
            needed.setdefault(namespace, {}).setdefault((group, resource), set()).update(verbs)
    return needed


def namespaces_read(dependencies):
    return set(rules_needed(access_needed(dependencies)))


def plural_of(kind):
    """A kind's resource as most CRDs name it (Widget: widgets, Policy: policies)."""
    word = kind.lower()
    if re.search("(s|x|z|ch|sh)$", word):
        return word + "es"
    return word[:-1] + "ies" if re.search("[^aeiou]y$", word) else word + "s"


# 4. Engine ========================================================================================
# Re-check a dependency whenever what it read may have changed, until all are met.

MAX_REASON = 300  # characters of one reason in a log line
STOP_RECHECK = 1.0  # seconds: the longest the wait goes without looking for a dropped Stop
PROGRESS_SHOWN = 5  # a progress line names 5 unmet dependencies, or 4 and "and N more"
EVERY_ROUND = ("every round",)  # in a check's reads: check it again every round
PROBED = ("probed",)  # told the reader's waiters: a check in a thread of its own has finished


def evaluate(dependency, read, check=None):
    """Ask the dependency's question (its kind's check, or `check`); a failure is a reason."""
    try:
        verdict = (check or dependency.kind.check)(dependency, read)
    except ApiError as e:
        verdict = not_met(str(e))
    except (AttributeError, KeyError, TypeError, ValueError, RecursionError) as e:
        verdict = not_met("unexpected answer from the API server (%s: %s)" % (type(e).__name__, e))
    reason = clip(verdict.reason, MAX_REASON)  # the token out now: an older one is forgotten
    return verdict if reason == verdict.reason else Verdict(**dict(vars(verdict), reason=reason))


class DependencyFailed(Exception):
    """A dependency that can never be met as it is, with ENTRYPOINT_FAIL_FAST: exit 3."""


class Probes:
    """The checks that go to the network (TCP, HTTP), each attempt in a thread of its own, so that
    a slow host holds up neither the others nor the wait: one attempt per dependency at a time,
    started by the engine's rounds, bounded by the request timeout; the engine takes what has
    finished, woken by `tell` (the reader's) or wait(). No attempt is under way once all are met."""
    def __init__(self, tell=None):
        self.tell, self.finished, self.running = tell, {}, set()
        self.done = threading.Condition()

    def start(self, entry):
        """An attempt for the entry, unless one is under way or its verdict not taken yet."""
        with self.done:
            if id(entry) in self.running or id(entry) in self.finished:
                return
            self.running.add(id(entry))
        thread = threading.Thread(target=self._attempt, args=(entry,), name="probe", daemon=True)
        try:
            start_thread(thread)
        except RuntimeError:  # no thread to spare (a low pids limit): in this one
            self._attempt(entry)

    def _attempt(self, entry):
        verdict = evaluate(entry.dep, None)
        with self.done:
            self.running.discard(id(entry))
            self.finished[id(entry)] = (entry, verdict)
            self.done.notify_all()
        if self.tell is not None:
            self.tell(PROBED)

    def take(self):
        """(entry, verdict) of each attempt finished since the last take."""
        with self.done:
            finished, self.finished = self.finished, {}
        return list(finished.values())

    def busy(self):
        with self.done:
            return bool(self.running or self.finished)

    def wait(self, timeout):
        with self.done:
            self.done.wait_for(lambda: self.finished, max(timeout, 0.001))


def absent_reason(reason, grace):
    return "%s; counted as done once absent for %s (absent is done)" % (reason, duration(grace))


class Waiting:
    """The wait: which dependencies are unmet, why, for how long. run() checks each, and again when
    a collection it read changed (or each round), until all are met. Time is injected.

    What a check cannot know is judged here, on reads from storage (a cache may lag): an absent
    Job counts as done once absent for `absent_grace` seconds (a Job re-created meanwhile is
    judged as it is); with `fail_fast`, one failed for good ends the wait (DependencyFailed)."""
    def __init__(self, dependencies, read, interval=POLL_INTERVAL, clock=time.monotonic,
                 sleep=time.sleep, on_reason=None, random=None, absent_grace=10.0,
                 fail_fast=False):
        import random as random_module
        self.dependencies, self.read, self.interval = dependencies, read, interval
        self.clock, self.sleep, self.random = clock, sleep, random or random_module.random
        self.on_reason = on_reason  # told each new reason a dependency is unmet (for Events)
        self.absent_grace, self.fail_fast = absent_grace, fail_fast
        # Local checks first (config files are written before any request); reads: None unchecked.
        self.pending = [types.SimpleNamespace(dep=dep, label=str(dep), reads=None, reason=None,
                                              absent_since=None)
                        for dep in sorted(dependencies, key=lambda d: d.kind.needs_api)]
        self.counted_done = []  # (label, why): absent, counted as done
        self.probes = Probes(read.tell if read is not None else None)
        self.started = clock()

    def waited(self):
        return self.clock() - self.started

    def unmet(self):
        """(how the dependency is named, its last reason) for each dependency not met."""
        return [(entry.label, entry.reason or "not checked yet") for entry in self.pending]

    def run(self, progress_every=0):
        """Wait until every dependency is met, logging progress every `progress_every` seconds."""
        for dep in self.dependencies:
            log("INFO", "Resolving %s" % dep, dep)
        next_progress = self.started + progress_every if progress_every else float("inf")
        changed, new_round = set(), True
        # Pods started together must not poll in step: a random phase, rounds 0-10 % longer.
        next_round = self.clock() + self.interval * (0.1 + 0.9 * self.random())
        while True:
            raise_if_stopped()
            for entry, verdict in self.probes.take():  # before new attempts: none is lost
                if entry in self.pending:
                    self._judge(entry, verdict)
            for entry in list(self.pending):
                reads = entry.reads
                if entry.dep.kind.in_thread:
                    if reads is None or new_round:
                        entry.reads = set()
                        self.probes.start(entry)
                elif reads is None or reads & changed or new_round and (
                        not reads or EVERY_ROUND in reads) or self._absence_due(entry):
                    self._check(entry)
            if not self.pending:
                return
            now = self.clock()
            if now >= next_progress:
                self._log_progress()
                next_progress = now + progress_every
            wake = min([next_round, next_progress, now + STOP_RECHECK] + [
                entry.absent_since + self.absent_grace for entry in self.pending
                if entry.absent_since is not None]) - now
            in_use = set().union(*(entry.reads for entry in self.pending))
            if self.read is None and self.probes.busy():
                self.probes.wait(wake)
                changed = set()
            elif self.read is None:
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

    def _absence_due(self, entry):
        return entry.absent_since is not None and \
            self.clock() >= entry.absent_since + self.absent_grace

    def _check(self, entry):
        if self.read is not None:
            self.read.begin()
        verdict = evaluate(entry.dep, self.read)
        if (verdict.absent or verdict.failed and self.fail_fast) and self.read is not None:
            self.read.again_from_storage()  # what ends the wait is never a cache's lag
            verdict = evaluate(entry.dep, self.read)
        entry.reads = self.read.end() if self.read is not None else set()
        self._judge(entry, verdict)

    def _judge(self, entry, verdict):
        """A check's verdict taken: met (said once), or its reason said when it changes."""
        entry.label = verdict.label or entry.label
        if verdict.mistake is not None:
            raise verdict.mistake
        if verdict.failed and self.fail_fast:
            raise DependencyFailed("%s: %s (ENTRYPOINT_FAIL_FAST)"
                                   % (entry.label, verdict.reason))
        if not verdict.absent:
            entry.absent_since = None
        else:
            if entry.absent_since is None:
                entry.absent_since = self.clock()
            if not self._absence_due(entry):
                verdict = not_met(absent_reason(verdict.reason, self.absent_grace))
        if verdict.met or verdict.absent:
            note = "" if verdict.met else " (counted as done: absent for %s)" % duration(
                self.clock() - entry.absent_since)
            if note:
                self.counted_done.append((entry.label, note[2:-1]))
            log("INFO", "Dependency %s is resolved%s." % (entry.label, note), entry.label)
            self.pending.remove(entry)
        elif entry.reason != verdict.reason:
            entry.reason = verdict.reason
            log("WARNING", "Resolving dependency %s failed: %s ." % (entry.label, verdict.reason),
                entry.label)
            if self.on_reason is not None:
                self.on_reason(entry.label, verdict.reason)

    def _log_progress(self):
        """One line naming a few unmet dependencies (the timeout's report names them all)."""
        unmet = ["%s: %s" % item for item in self.unmet()]
        if len(unmet) > PROGRESS_SHOWN:
            unmet[PROGRESS_SHOWN - 1:] = ["and %d more" % (len(unmet) - PROGRESS_SHOWN + 1)]
        log("INFO", "Still waiting after %s for %d of %d dependencies: %s" % (
            duration(self.waited()), len(self.pending), len(self.dependencies), "; ".join(unmet)))


def duration(seconds):
    """`45s`, `3m05s`, `2h00m`: how long, for people."""
    seconds = int(seconds)
    return "%ds" % seconds if seconds < 60 else "%dm%02ds" % divmod(seconds, 60) \
        if seconds < 3600 else "%dh%02dm" % divmod(seconds // 60, 60)


# 5. main ==========================================================================================
# The recipe: parse, look the command up, wait (or --check, --validate), exec.

def main(arguments=None, env=None):
    """Run; the exit code. A stop signal, whenever it comes, ends here as one report: 128+signal."""
    env = os.environ if env is None else env
    outcome = Outcome(env.get("ENTRYPOINT_TERMINATION_LOG", DEFAULT_TERMINATION_LOG).strip())
    try:
        take_stop_signals()
        code = run(sys.argv[1:] if arguments is None else arguments, env, outcome)
        finish_quietly()
    except Stop as stop:
        finish_quietly()
        code = outcome.stopped(stop.args[0])
    if not outcome.by_hand:
        outcome.tell(env)
    return code


def run(arguments, env, outcome):
    """The recipe, step by step; each fails one clear way (ConfigError: 2, CommandError: 126/127)."""
    options = parse_arguments(arguments)
    outcome.by_hand = options.check or options.validate or options.rbac  # not a container's
    LOG.stdout_is_output = options.rbac  # JSON for kubectl apply: every log line to stderr
    try:
        # 1. How to log, and the options: every line from here is in the format asked for.
        configure_logging(env)
        if options.mistake or options.help or options.version:
            return say_options(options)
        # 2. The settings, the dependencies and the command, parsed whole (templates rendered).
        settings = read_settings(env)
        dependencies = parse_dependencies(env, settings)
        argv = split_command(env.get("COMMAND", ""))
        if argv and options.command:
            raise ConfigError("COMMAND", "a command is given both in COMMAND and as arguments; "
                                         "give only one")
        argv = argv or options.command
        if not argv:
            misspelt_command(env)
        # 3. --validate and --rbac end here: nothing read from the API, nothing written.
        if options.validate:
            return validate(dependencies, argv, env)
        if options.rbac:
            return print_roles(dependencies, settings)
        # 4. The API, where some dependency needs it: its CA and token are read now.
        needing = [dep.kind.variable for dep in dependencies if dep.kind.needs_api]
        reader = None if not needing else ApiReader(ApiClient(
            settings.api_server or api_server_url(env, needing[0]), settings.serviceaccount_dir,
            settings.request_timeout), settings.poll_interval, watch=not options.check,
            once=options.check)
        if reader is not None:
            reader.merge([dep.kind.merge(dep) for dep in dependencies if dep.kind.merge])
        # 5. The timeout, as an alarm: not even a request that hangs can hold us past it.
        outcome.timeout = settings.timeout if options.timeout is None else options.timeout
        if outcome.timeout:
            signal.setitimer(signal.ITIMER_REAL, outcome.timeout)
        if reader is not None:  # what the Role allows, asked first: nothing it refuses is sent
            reader.role.review(namespaces_read(dependencies))
        # 6. --check ends here: every dependency asked once, nothing written.
        if options.check:
            code = check_once(dependencies, reader, settings.job_absent_grace)
            if reader is not None:
                access = access_needed(dependencies, settings, reader.plural)
                reader.role.review(rules_needed(access))
                say_what_is_lacking(reader.role, access)
            return code
        # 7. The command, looked up now: a typo fails at once, not after the wait.
        executable = find_command(argv, env.get("PATH", os.defpath)) if argv else None
        # 8. The wait, with Events on the pod saying why while it lasts.
        events = outcome.events = events_for(env, settings, reader)
        if events is not None and reader is not None:
            reader.role.review([events.namespace])
        outcome.waiting = Waiting(dependencies, reader, settings.poll_interval,
                                  on_reason=events.waiting if events else None,
                                  absent_grace=settings.job_absent_grace,
                                  fail_fast=settings.fail_fast)
        outcome.waiting.run(settings.progress_interval)
        signal.setitimer(signal.ITIMER_REAL, 0)
        # 9. Everything met: said, then the command replaces this process.
        outcome.met()
        if not argv:
            log("WARNING", "COMMAND env is empty")
            return 0
        return exec_command(argv, executable)
    except ConfigError as e:
        return outcome.failed(2, "ConfigurationError", str(e))
    except CommandError as e:
        return outcome.failed(e.code, "CommandFailed", str(e))
    except DependencyFailed as e:
        return outcome.failed(3, "DependencyFailed", "%s; the command was not run" % e)


class Outcome:
    """How the run ended (the termination message, a Warning's reason); what a stop report needs."""
    def __init__(self, termination_log):
        self.termination_log, self.lines, self.timeout = termination_log, [], 0
        self.by_hand = False  # --check, --validate: no termination message, no Event
        self.waiting = self.events = self.warning = None

    def failed(self, code, warning, message):
        log("ERROR", message)
        self.lines, self.warning = [message], warning
        return code

    def met(self):
        """Everything met: the termination message's line, and after a wait, the Event saying so."""
        count = len(self.waiting.dependencies)
        self.lines = ["%s met after %s" % ("its dependency" if count == 1 else
                                           "all %d dependencies" % count,
                                           duration(self.waiting.waited()))]
        self.lines += ["%s: %s" % item for item in self.waiting.counted_done]
        if self.events is not None and (self.events.used or self.waiting.counted_done):
            self.events.finish("Normal", "DependenciesMet", "; ".join(self.lines), EVENT_FLUSH_EXEC)

    def stopped(self, signum):
        """What was unmet when the timeout or a signal stopped the wait, said; the exit code."""
        timed_out = signum == signal.SIGALRM
        self.warning = "TimedOut" if timed_out else "Stopped"
        headline = "timed out" if timed_out else "stopped by " + signal.Signals(signum).name
        unmet = self.waiting.unmet() if self.waiting else []
        if self.waiting:  # the timeout counts from the start, before the wait: say it as set
            headline = "%s after %s waiting for %d of %d dependencies" % (
                headline, duration(self.timeout if timed_out else self.waiting.waited()),
                len(unmet), len(self.waiting.dependencies))
        elif timed_out:
            headline = "timed out after %s before every dependency was checked" % duration(
                self.timeout)
        log("ERROR", headline + "; the command was not run")
        self.lines = [headline]
        for label, reason in unmet:
            log("ERROR", "still unmet: %s: %s" % (label, reason), label)
            self.lines.append("%s: %s" % (label, reason))
        return 1 if timed_out else 128 + signum

    def tell(self, env):
        """Say why the process ends: the termination message, and a Warning if nothing ran."""
        write_termination_message(self.termination_log, self.lines)
        if self.warning is None:
            return
        events = self.events
        if events is None:
            try:
                events = events_for(env, read_settings(env))
            except ConfigError:
                return
        if events is not None:
            events.finish("Warning", self.warning, "; ".join(self.lines), EVENT_FLUSH_EXIT)


def validate(dependencies, argv, env):
    """--validate: the dependencies as parsed, and the command as it would run."""
    for dep in dependencies:
        write(sys.stdout, "%s\n" % one_line(str(dep)))
    if argv:
        try:
            executable = find_command(argv, env.get("PATH", os.defpath))
        except CommandError as e:
            raise ConfigError("COMMAND", str(e).split(": ", 1)[-1])
        write(sys.stdout, "command: %s\n" % one_line(" ".join(
            [executable or argv[0] + " (answered in-process)"] + argv[1:])))
    else:
        write(sys.stdout, "command: none (exit 0 once everything is met)\n")
    return 0


def print_roles(dependencies, settings):
    """--rbac: one Role per namespace read, as JSON kubectl applies; each named by its rules, so
    that the Roles of different needs never replace one another."""
    import hashlib
    needed = rules_needed(access_needed(dependencies, settings))
    roles = []
    for namespace in sorted(ns for ns in needed if ns):
        grouped = {}
        for (group, resource), verbs in sorted(needed[namespace].items()):
            grouped.setdefault((group, tuple(sorted(verbs))), []).append(resource)
        rules = [{"apiGroups": [group], "resources": resources, "verbs": list(verbs)}
                 for (group, verbs), resources in sorted(grouped.items())]
        digest = hashlib.sha256(json.dumps(rules, sort_keys=True).encode()).hexdigest()[:10]
        roles.append({"apiVersion": "rbac.authorization.k8s.io/v1", "kind": "Role",
                      "metadata": {"name": "kubernetes-entrypoint-" + digest, "namespace": namespace},
                      "rules": rules})
    write(sys.stdout, json.dumps({"apiVersion": "v1", "kind": "List", "items": roles}, indent=2)
          + "\n")
    if roles:
        log("INFO", "bind each Role to the pod's service account: kubectl create rolebinding "
                    "NAME --role ROLE --serviceaccount NAMESPACE:ACCOUNT -n NAMESPACE%s" % (
                        "; custom resources: check each resource name (guessed from the kind), "
                        "and a cluster-scoped kind needs a ClusterRole" if any(
                            dep.kind.variable == "DEPENDENCY_CUSTOM_RESOURCE"
                            for dep in dependencies) else ""))
    return 0


def say_what_is_lacking(role, access):
    """--check: after the table, what the account may not do of the `access` it needs (and where
    the review cannot tell), as log lines."""
    lacking, unknown = {}, set()
    for namespace, group, resource, name, fallback, verbs in access:
        if not namespace or fallback:  # (Endpoints: read only where EndpointSlices cannot be)
            continue
        answers = {verb: role.may(verb, group, resource, namespace, name) for verb in verbs}
        missing = lacking.setdefault((namespace, group, resource), set())
        missing.update(verb for verb, allowed in answers.items() if allowed is False)
        if None in answers.values():
            unknown.add(namespace)
    lacking = ["%s on %s%s in namespace %s" % (", ".join(sorted(verbs)), resource,
                                               "." + group if group else "", namespace)
               for (namespace, group, resource), verbs in sorted(lacking.items()) if verbs]
    if lacking:
        log("WARNING", "the account lacks: %s (--rbac prints Roles that allow them)"
            % "; ".join(lacking))
    if unknown:
        log("INFO", "what the account may do in namespace %s cannot be told (its rules review "
                    "was refused, failed or incomplete)" % ", ".join(sorted(unknown)))


def check_once(dependencies, read, absent_grace):
    """--check: every dependency asked once, nothing written; a table; 0 if all are met, else 1.
    An absent Job counts as done only with no grace: --check cannot tell how long it was absent."""
    rows = []
    for dep in dependencies:
        if read is not None:
            read.begin(dep)
        verdict = evaluate(dep, read, dep.kind.dry_check)
        if verdict.mistake is not None:
            raise verdict.mistake
        if verdict.absent:
            verdict = MET if not absent_grace else not_met(absent_reason(verdict.reason,
                                                                         absent_grace))
        rows.append((one_line(verdict.label or str(dep)), "yes" if verdict.met else "no",
                     one_line(verdict.reason)))
    raise_if_stopped()
    width = max([len("DEPENDENCY")] + [len(row[0]) for row in rows])
    write(sys.stdout, "".join("%-*s  %-3s  %s\n" % ((width,) + row)
                              for row in [("DEPENDENCY", "MET", "REASON")] + rows))
    return 0 if all(row[1] == "yes" for row in rows) else 1


def termination_message(lines, limit=TERMINATION_MESSAGE_BYTES):
    """The lines as at most `limit` bytes: whole lines, then how many were left out."""
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
    """Tell Kubernetes why the container ended: to a regular file only, never blocking."""
    if not path or not lines:
        return
    try:
        fd = os.open(path, os.O_WRONLY | os.O_NONBLOCK | os.O_NOCTTY | getattr(os, "O_CLOEXEC", 0))
        try:
            if not stat.S_ISREG(os.fstat(fd).st_mode):
                raise OSError(errno.EINVAL, "not a regular file")
            write_all(fd, termination_message(lines), at=0)
        finally:
            os.close(fd)
    except (OSError, ValueError) as e:
        log("DEBUG", "no termination message written to %s: %s"
            % (path, getattr(e, "strerror", None) or e))


# The command ------------------------------------------------------------------------------

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
    candidates = [name] if "/" in name else [os.path.join(d or ".", name)
                                             for d in path_variable.split(os.pathsep)]
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


def exec_command(argv, executable):
    """Replace this process with the command; `true` and `echo` are answered here if absent."""
    if executable is None:
        raise_if_stopped()
        if os.path.basename(argv[0]) == "echo":
            write(sys.stdout, " ".join(argv[1:]) + "\n")
        return 0
    restore_locale_variable()
    # Default dispositions, an empty mask (ignored signals survive exec); then a dropped Stop.
    signal.setitimer(signal.ITIMER_REAL, 0)
    for signum in (signal.SIGPIPE, signal.SIGXFSZ) + STOP_SIGNALS:
        signal.signal(signum, signal.SIG_DFL)
    signal.pthread_sigmask(signal.SIG_SETMASK, [])
    raise_if_stopped()
    try:
        os.execv(executable, argv)
    except OSError as e:
        raise CommandError(127 if e.errno == errno.ENOENT else 126,
                           "COMMAND: cannot execute %s: %s" % (executable, e.strerror or e))


def restore_locale_variable(started_with="/proc/self/environ"):
    """Undo Python's LC_CTYPE=C.UTF-8 (PEP 538): the command gets LC_CTYPE as it was given."""
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


# The command line -------------------------------------------------------------------------------

OPTIONS = {  # each option: the value it takes (or None), and what it does
    "--timeout": ("SECONDS", "give up after this long, exit 1 (overrides ENTRYPOINT_TIMEOUT)"),
    "--check": (None, "check every dependency once, print a table; exit 0 if all are met, else 1"),
    "--validate": (None, "print the dependencies as parsed, without the API; exit 2 on a mistake"),
    "--rbac": (None, "print the Roles (JSON) that let it do its best here, without the API"),
    "--help": (None, "show this help and exit"),
    "--version": (None, "print the version and exit"),
}


def parse_arguments(arguments):
    """Options, then the command, untouched (from the first word that is no option, or after
    `--`). Options may be shortened; a mistake is kept, not raised, so --check is known even then."""
    options = types.SimpleNamespace(timeout=None, check=False, validate=False, rbac=False,
                                    help=False, version=False, command=[], mistake=None)
    words = list(arguments)
    while words and words[0].startswith("-") and words[0] != "-":
        word = words.pop(0)
        if word == "--":
            break
        name, equals, value = word.partition("=")
        found = [o for o in OPTIONS if o == name] or [
            o for o in OPTIONS if len(name) > 2 and o.startswith(name)] or (
            ["--help"] if name == "-h" else [])
        takes = len(found) == 1 and OPTIONS[found[0]][0]
        if takes and not equals and words:
            value, equals = words.pop(0), "="
        problem = ("unrecognized arguments: %s" % word if not found else
                   "ambiguous option: %s could match %s" % (name, ", ".join(found)) if found[1:]
                   else "argument %s: expected one argument" % found[0] if takes and not equals
                   else "argument %s: ignored explicit argument %r" % (found[0], value)
                   if equals and not takes else None)
        variable = "arguments"
        if takes and not problem:
            try:
                options.timeout = float(value)
            except ValueError:
                options.timeout = -1.0
            if not 0 <= options.timeout <= YEAR:
                variable, problem = "--timeout", "%s is not a number of seconds (0 to %d)" % (
                    shown(value), YEAR)
        elif not problem:
            setattr(options, found[0][2:], True)
        if problem and not options.mistake:
            options.mistake = ConfigError(variable, problem)
    by_hand = [o for o in ("--check", "--validate", "--rbac") if getattr(options, o[2:])]
    if len(by_hand) > 1 and not options.mistake:
        options.mistake = ConfigError("arguments", "%s do not go together: give one"
                                      % " and ".join(by_hand))
    options.command = words
    return options


def say_options(options):
    """What --help and --version print (exit 0), or the mistake in the options (exit 2)."""
    if options.mistake:
        raise options.mistake
    if options.version:
        write(sys.stdout, "kubernetes-entrypoint %s\n" % __version__)
        return 0
    write(sys.stdout, "\n".join(
        ["usage: kubernetes-entrypoint [options] [--] [command ...]", "",
         "Wait until the Kubernetes dependencies in DEPENDENCY_* variables are met, then exec",
         "the command (arguments, or COMMAND). --check writes no file and runs no command.", "",
         "options:"]
        + ["  %-18s %s" % (option + " " + (takes or ""), text)
           for option, (takes, text) in OPTIONS.items()]
        + ["", "dependencies and settings (environment):"]
        + ["  %-29s %s" % row for row in [(kind.variable, kind.example) for kind in KINDS]
           + SETTINGS_HELP]
        + ["", "exit codes:"] + ["  %-9s  %s" % row for row in EXIT_CODES]) + "\n")
    return 0


SETTINGS_HELP = [
    ("COMMAND", "what to exec once all is met (split on whitespace), or the arguments; empty: exit 0"),
    ("NAMESPACE", "of names without ns: (default: the service account's, else default)"),
    ("POD_NAME", "this pod's name (downward API), for CONTAINER, DAEMONSET, requireSameNode"),
    ("INTERFACE_NAME", "the interface whose address {{ .IP }} templates, for CONFIG"),
    ("KUBERNETES_SERVICE_HOST/_PORT", "the API server, as Kubernetes sets them in every pod"),
    ("ENTRYPOINT_API_SERVER", "https://... (token and CA as in a pod), or http://127.0.0.1:8001"),
    ("ENTRYPOINT_SERVICEACCOUNT_DIR", "token, ca.crt, namespace (%s)" % DEFAULT_SERVICEACCOUNT_DIR),
    ("ENTRYPOINT_CONFIGMAPS_DIR", "where CONFIG templates are (default %s)" % DEFAULT_CONFIGMAPS_DIR),
    ("ENTRYPOINT_TIMEOUT", "give up after this many seconds, exit 1 (default 0: never)"),
    ("ENTRYPOINT_POLL_INTERVAL", "seconds between polls where watch is refused (default 2, >= 0.1)"),
    ("ENTRYPOINT_REQUEST_TIMEOUT", "seconds one API request may take in all (default 10, >= 0.1)"),
    ("ENTRYPOINT_PROGRESS_INTERVAL", "seconds between lines saying what is unmet (30; >= 1; 0: none)"),
    ("ENTRYPOINT_TERMINATION_LOG", "why it ended unexec'd (%s; empty: none)" % DEFAULT_TERMINATION_LOG),
    ("ENTRYPOINT_EVENTS", "with POD_NAME, Events on the pod saying what it waits for (default true)"),
    ("ENTRYPOINT_JOB_ABSENT_IS_DONE", "true: a Job not found counts as done (a deleted one succeeded)"),
    ("ENTRYPOINT_JOB_ABSENT_GRACE", "seconds a Job must stay absent for that (default 10, 0-3600)"),
    ("ENTRYPOINT_FAIL_FAST", "true: a Job failed for good ends the wait at once, exit 3"),
    ("ENTRYPOINT_HTTP_CA", "CA certificates (PEM) for https:// in HTTP (default: the system's)"),
    ("ENTRYPOINT_LOG_FORMAT", "text (default) or json"),
    ("ENTRYPOINT_LOG_LEVEL", "debug (adds every API request), info (default), warning, error"),
]
EXIT_CODES = [
    ("0", "everything met and no command to run (or --check: everything met)"),
    ("1", "timed out (--check: something not met)"),
    ("2", "configuration error: one line names the variable; the command never runs"),
    ("3", "a dependency failed for good (ENTRYPOINT_FAIL_FAST); the command never runs"),
    ("126, 127", "the command is not executable, or not found"),
    ("130, 143", "stopped by SIGINT or SIGTERM while waiting"),
    ("otherwise", "the command's own: it replaced this process"),
]


# 6. Signals =======================================================================================
# SIGTERM and SIGINT stop the wait at once, and so does the timeout's SIGALRM; the command never
# runs after one. Their state is Stopping, at the top of the file.

class Stop(BaseException):
    """Raised by a signal handler (args: the signal); a BaseException, which no error handler takes."""


STOP_SIGNALS = (signal.SIGTERM, signal.SIGINT, signal.SIGALRM)  # SIGALRM: ENTRYPOINT_TIMEOUT


def take_stop_signals():
    """From here a stop signal raises Stop; one that came while the file loaded does so now."""
    Stopping.signal, Stopping.finishing = None, False
    # A Stop that Python dropped (see raise_if_stopped) is no error to print; anything else is.
    sys.unraisablehook = lambda unraisable: isinstance(unraisable.exc_value, Stop) \
        or sys.__unraisablehook__(unraisable)
    for signum in STOP_SIGNALS:
        signal.signal(signum, on_stop_signal)
    if Stopping.early is not None:
        Stopping.signal = Stopping.early
        raise Stop(Stopping.early)


def on_stop_signal(signum, frame):
    """The first signal stops the wait; later ones are let go while the process reports."""
    if Stopping.signal is None and not Stopping.finishing:
        Stopping.signal = signum
        raise Stop(signum)


def raise_if_stopped():
    """A Stop raised in a finalizer is dropped by Python: the wait and the exec look here too."""
    if Stopping.signal is not None and not Stopping.finishing:
        raise Stop(Stopping.signal)


class stop_signals_held:
    """Within it, the stop signals wait (blocked); they are handled the moment it ends."""
    def __enter__(self):
        self.previous = signal.pthread_sigmask(signal.SIG_BLOCK, STOP_SIGNALS)

    def __exit__(self, *exc_info):
        signal.pthread_sigmask(signal.SIG_SETMASK, self.previous)


def start_thread(thread):
    """Start a thread with the stop signals blocked in it: only the main thread gets them."""
    with stop_signals_held():
        thread.start()


def finish_quietly():
    """From here the process only reports and exits: the handler raises no more (not SIG_IGN)."""
    Stopping.finishing = True
    signal.setitimer(signal.ITIMER_REAL, 0)


def exit_quietly(code):
    """Exit at once, our output flushed; not sys.exit, which can crash inside a watch's TLS read."""
    signal.pthread_sigmask(signal.SIG_BLOCK, STOP_SIGNALS)
    for stream in (sys.stdout, sys.stderr):
        try:
            if stream is not None:  # None: the descriptor was closed when Python started
                stream.flush()
        except (OSError, ValueError):
            pass  # a closed pipe: nothing more can be said
    os._exit(code)


# 7. Reads =========================================================================================
# What the checks see: each distinct read a collection, listed once, then kept fresh by a watch (or
# polling where watching is refused) and shared. An answer is believed once its shape is checked
# and it is not older than what was seen (Freshness); only what matches the read is kept.

WATCH_SECONDS = 240          # server-side timeoutSeconds of a watch, plus up to a minute of jitter
WATCH_SILENCE = 30           # a stream still open this long past its timeoutSeconds is dropped
HEALTHY_STREAM = 30          # seconds: a watch that ends sooner counts as a failure (backoff)
UNUSED_GRACE = 60            # seconds a watched collection out of use is kept
BACKOFF_LIMIT = 30.0         # seconds: the longest wait between retries of a failing read
MERGE_LIMIT = 50             # label values in one merged read (its URL stays short)
CACHE_MISSES = 3             # cache reads failing in a row before a collection reads storage...
CACHE_PAUSE = 30             # ... for this many reads (a minute at the default interval)
STORAGE_REFUSALS = 3         # storage answers not believed in a row before starting over
WATCH_EVENTS = ("ADDED", "MODIFIED", "DELETED", "BOOKMARK", "ERROR")
# The kinds the checks read; a custom resource's kind comes from discovery (resource_for).
BUILT_IN_KINDS = {("v1", "pods"): "Pod", ("v1", "endpoints"): "Endpoints",
                  ("discovery.k8s.io/v1", "endpointslices"): "EndpointSlice",
                  ("apps/v1", "daemonsets"): "DaemonSet", ("batch/v1", "jobs"): "Job"}


def backoff(failures, interval, retry_after=None):
    """Capped exponential backoff with jitter; a 429's Retry-After is a floor."""
    import random
    delay = min(BACKOFF_LIMIT, interval * 2 ** max(failures - 1, 0)) * random.uniform(0.8, 1.2)
    return max(delay, retry_after or 0)


def malformed(what, problem):
    """The error of an answer whose shape or kind is wrong: never believed, retried."""
    return ApiError(None, "malformed answer%s: %s" % (" for " + what if what else "", problem),
                    "Malformed")


def is_object(obj):
    """Shaped like an object: metadata with a string name, a string namespace, string labels."""
    meta = obj.get("metadata") if isinstance(obj, dict) else None
    if not isinstance(meta, dict) or not isinstance(meta.get("name"), str) \
            or not isinstance(meta.get("namespace", ""), str):
        return False
    labels = meta.get("labels") or {}
    return isinstance(labels, dict) and all(
        isinstance(k, str) and isinstance(v, str) for k, v in labels.items())


def object_key(obj):
    return dig(obj, "metadata", "namespace"), dig(obj, "metadata", "name")


def object_version(obj):
    """A resourceVersion (an object's, or the string itself) as a number, or None."""
    version = obj if isinstance(obj, str) else dig(obj, "metadata", "resourceVersion")
    return int(version) if isinstance(version, str) and re.fullmatch("[0-9]{1,20}", version) \
        else None


def not_older(before, seen, after, after_version):
    """Whether `after` (as of `after_version`) is not older than what was seen: no object older
    than before, back after `seen`, newer than the answer, or missing though the answer is older."""
    at_after = object_version(after_version)
    old = {key: object_version(obj) for key, obj in before.items()}
    new = {key: object_version(obj) for key, obj in after.items()}
    if at_after is None or None in old.values() or None in new.values():
        return False
    if any(version > at_after or (version < old[key] if key in old else version <= seen)
           for key, version in new.items()):
        return False
    return all(key in new or version <= at_after for key, version in old.items())


class Freshness:
    """What is believed of one collection, and where its next read comes from: the cache
    policy, whole.

    Believed: versions are etcd's revisions, compared as numbers; `seen`, the newest seen in an
    answer or event, is the mark no answer may go behind. A list or get is believed when
    not_older() holds against what is held; a watch event when its object is not older than the
    one held or, none held, newer than `seen`; a bookmark (no object: it moves no `seen`) when it
    does not move the resume point back. A list or get not believed is a failed read, but the
    STORAGE_REFUSALS-th storage answer refused in a row starts the collection over from it (the
    versions went back: an etcd restored). An event not believed ends the stream: the collection is
    listed again from storage. Versions that are not numbers cannot be compared: from storage
    believed as they come, from the cache never, in an event malformed.

    Where reads come from: the first, and any after a failure, from storage (a quorum read); the
    next from the watch cache, not older than the last answer (as_of). A cache read that fails
    (but for a refusal or 429) or is not believed goes to storage at once; CACHE_MISSES in a row
    send the next CACHE_PAUSE reads there, and a refusal of the parameters (400, 422) all reads."""
    def __init__(self):
        self.seen = 0              # the newest version seen
        self.version = None        # the last answer's, then each event's: where a watch resumes
        self.from_cache = False    # the last answer came from the cache
        self.misses = 0            # cache reads that failed in a row
        self.storage_reads = 0     # reads to make from storage before the cache is tried again
        self.cache_refused, self.refused = False, 0  # storage answers refused in a row

    def as_of(self, items, by_name):
        """The version to read the cache as of, or None (storage): a cache answer's own, an object's
        by name, else its objects' newest (the list's is etcd's latest: a cache behind waits 3 s)."""
        if self.storage_reads > 0:
            self.storage_reads -= 1
            return None
        if self.cache_refused or items is None or not self.version or by_name and not items:
            return None
        if self.from_cache or by_name:
            return self.version
        seen = [object_version(obj) for obj in items.values()]
        return str(max(seen)) if seen and None not in seen else "0"

    def believes(self, held, items, version, from_cache):
        """Whether a list or a get (`items`, as of `version`) is believed against what is held."""
        held = held or {}
        if not_older(held, self.seen, items, version):
            return True
        # From storage, versions that are not numbers cannot be compared: believed as they come.
        return not from_cache and None in [object_version(version)] + [
            object_version(obj) for obj in list(held.values()) + list(items.values())]

    def believes_change(self, held, version):
        """Whether an event's object, at `version`, is believed against the one held (or None)."""
        held_version = None if held is None else object_version(held)
        return version >= held_version if held_version is not None else version > self.seen

    def took(self, version, from_cache):
        """A believed answer: where a watch resumes from, and the newest version seen."""
        self.version, self.from_cache, self.refused = version, from_cache, 0
        self.seen = max(self.seen, object_version(version) or 0)

    def start_over(self):
        """A storage answer not believed; True at the STORAGE_REFUSALS-th in a row: start over."""
        self.refused += 1
        if self.refused >= STORAGE_REFUSALS:
            self.__init__()
        return not self.refused

    def moved(self, version, bookmark=False):
        """A believed event or bookmark at `version`: the resume point onwards, never back."""
        if version > (object_version(self.version) or 0):
            self.version = str(version)
        self.seen = self.seen if bookmark else max(self.seen, version)

    def missed(self, error):
        """A cache read failed (`error`) or was not believed (None); True if to be expected."""
        self.misses += 1
        if error is not None and error.status in (400, 422):  # parameters not understood
            self.cache_refused = True
        elif self.misses >= CACHE_MISSES:
            self.misses, self.storage_reads = 0, CACHE_PAUSE
        return error is None or error.status in (410, 504)


class Collection:
    """One read: a list with selectors, an object by name, or discovery. `items`: what was last
    believed; `error`: the last failure, which checks see instead; `mode`: "watch", "poll", "get"
    (by name, where list is refused) or "discovery", changed by ApiReader.change_mode only."""
    def __init__(self, reader, key, kind, path, mode):
        self.reader, self.key = reader, key
        self.group_version, self.resource, self.namespace, self.labels, self.fields = key
        self.kind, self.path, self.mode = kind, path, mode
        self.name = self.fields[1] if self.fields and self.fields[0] == "metadata.name" else None
        self.items = self.error = self.watcher = self.unused_since = self.read_at = None
        self.freshness = Freshness()
        self.failures, self.next_refresh, self.event_bytes, self.stopped = 0, 0.0, 0, False

    def query(self, **more):
        if self.labels:
            more["labelSelector"] = self.labels.text()
        if self.fields:
            more["fieldSelector"] = self.fields.text()
        return more

    def of_kind(self, obj):
        return obj.get("kind") == (self.kind or obj.get("kind"))

    def selects(self, obj):
        """Whether the object belongs to this read, whatever a server ignoring selectors sends."""
        meta = obj["metadata"]
        return (not self.namespace or meta.get("namespace") in (None, self.namespace)) \
            and (not self.labels or self.labels.matches(meta.get("labels"))) \
            and (not self.fields or self.fields.matches(obj))

    def describe(self):
        """`pods me in namespace x`, `jobs.batch in namespace x`, `discovery of example.com/v1`."""
        if self.resource is None:
            return "discovery of " + self.group_version
        group = self.group_version.rpartition("/")[0]  # as RBAC rules name a resource
        return "%s%s%s%s" % (self.resource, "." + group if group else "",
                             " " + self.name if self.name else "",
                             " in namespace " + self.namespace if self.namespace else "")

    def fetch(self, client, as_of):
        """One request, as of `as_of` (cache) or None (storage); shape and kind checked."""
        what = self.describe()
        if self.mode == "discovery":
            try:
                resources = client.get(self.path).get("resources")
            except ApiError as e:
                if e.status != 404:
                    raise
                return {}, None  # the group/version is not served (yet)
            if not isinstance(resources, list):
                raise malformed(what, "no list of resources")
            # Entries of the wrong shape, subresources (pods/log), names no path carries: left out.
            return {r["name"]: r for r in resources if isinstance(r, dict)
                    and isinstance(r.get("name"), str) and OBJECT_NAME.fullmatch(r["name"])
                    and isinstance(r.get("kind"), str) and isinstance(r.get("namespaced"), bool)
                    }, None
        if self.mode == "get":
            try:  # a get's resourceVersion means "not older than" by itself
                obj = client.get(client.path(self.group_version, self.resource, self.namespace,
                                             self.name), {"resourceVersion": as_of} if as_of else None)
            except ApiError as e:
                if e.status != 404:
                    raise
                return {}, as_of
            if not is_object(obj) or not self.of_kind(obj) or not self.selects(obj):
                raise malformed(what, "not the object asked for")
            version = dig(obj, "metadata", "resourceVersion")
            return {object_key(obj): obj}, version if isinstance(version, str) else None
        more = {"resourceVersion": as_of, "resourceVersionMatch": "NotOlderThan"} if as_of else {}
        answer = client.get(self.path, self.query(**more))
        items = answer.get("items")
        if not isinstance(items, list) or not all(is_object(item) for item in items):
            raise malformed(what, "not a list of objects")
        # A list of this read's kind: `<Kind>List` for the kinds the checks read; a CRD may name
        # its list otherwise, but then its items must each say the kind.
        if answer.get("kind") == "%sList" % self.kind:
            of_kind = all(item.get("kind", self.kind) == self.kind for item in items)
        else:
            of_kind = (self.group_version, self.resource) not in BUILT_IN_KINDS and answer.get(
                "kind") != "Status" and all(item.get("kind") == self.kind for item in items)
        if not of_kind:
            raise malformed(what, "kind %s, not a list of %s objects"
                            % (shown(answer.get("kind"), 40), self.kind))
        version = dig(answer, "metadata", "resourceVersion")
        return ({object_key(item): item for item in items if self.selects(item)},
                version if isinstance(version, str) else None)

    def took(self, items, version, from_cache, now):
        """Make an answer what checks see (lock held); False: a storage answer not believed."""
        if self.mode != "discovery" and not from_cache and not self.freshness.believes(
                self.items, items, version, False):
            if not self.freshness.start_over():
                return False
            log("WARNING", "the versions of %s went back: read anew" % self.describe())
        self.items, self.error, self.event_bytes = items, None, 0
        self.freshness.took(version, from_cache)
        self.read_at = now if not from_cache else self.read_at
        return True

    def watch(self):
        """The thread keeping this collection fresh from watch streams while it is in use; each
        event is believed first, and an error nobody foresaw hands it to the engine's polling."""
        try:
            self._follow()
        except Exception as e:
            self.reader.change_mode(self, "poll", "watch failed", "watching %s failed (%s: %s); "
                                    "polling it every %gs instead"
                                    % (self.describe(), type(e).__name__, e, self.reader.interval))

    def _follow(self):
        import random
        reader = self.reader
        failures, relist = 0, False
        while not self.stopped and self.mode == "watch":
            if relist or self.error is not None:
                relist = False
                if reader.refresh(self):
                    reader.tell(self.key)
                if self.error is not None:
                    failures += 1  # the list's own error is already logged
                    time.sleep(backoff(failures, reader.interval, self.error.retry_after))
                    continue
            seconds = WATCH_SECONDS + random.randint(0, 60)
            query = self.query(watch="1", allowWatchBookmarks="true",
                                     timeoutSeconds=str(seconds))
            if self.freshness.version:
                query["resourceVersion"] = self.freshness.version
            opened, error = reader.clock(), None
            try:
                for event, size in reader.client.watch(self.path, query,
                                                       seconds + WATCH_SILENCE):
                    if self.stopped:
                        return
                    self.event_bytes += size
                    if self.event_bytes > MAX_ANSWER_BYTES:
                        # Bounded as a list is, or a server could grow the memory: list afresh.
                        raise ApiError(410, "more than %d MiB of changes since the last list"
                                       % (MAX_ANSWER_BYTES >> 20), "Expired")
                    self._apply(event)
                    reader.trouble(self, None)
            except ApiError as e:
                error = e
            action, failures, delay = after_stream(error, reader.clock() - opened, failures,
                                                   reader.interval)
            if action == "poll" and self.mode == "watch":
                reader.change_mode(self, "poll", "watch refused", reader.refusal(
                    "watch", self, "polling every %gs instead; grant 'watch' to react at once"
                    % reader.interval))
            if self.mode != "watch":
                return  # the engine polls it from now on (change_mode told it)
            if error is not None and error.status != 410:
                reader.trouble(self, error)
            relist = action == "relist"
            time.sleep(delay)

    def _apply(self, event):
        """One watch event: malformed unless shaped like one; left out unless believed."""
        reader = self.reader
        kind = event.get("type") if isinstance(event, dict) else None
        obj = event.get("object") if kind in WATCH_EVENTS else None
        if not isinstance(obj, dict):
            raise malformed(self.describe(), "not a watch event")
        if kind == "ERROR":
            code = obj.get("code")
            raise status_error(code if type(code) is int else None, obj, "watch error", "")
        version = object_version(obj)
        if kind == "BOOKMARK":
            if version is not None:
                with reader.lock:
                    self.freshness.moved(version, bookmark=True)
            return
        if not is_object(obj) or not self.of_kind(obj) or version is None:
            raise malformed(self.describe(), "an event without an object of its kind and its "
                                             "resourceVersion")
        key = object_key(obj)
        with reader.lock:
            if self.items is None:
                return  # (no watch starts before its list is read)
            if not self.freshness.believes_change(self.items.get(key), version):
                # Left out; from storage, the list tells whether it is old news or we are wrong.
                self.freshness.storage_reads = max(self.freshness.storage_reads, 1)
                raise ApiError(410, "an event older than what was seen (%s %s at %d): listing "
                                    "again" % (kind, key[1], version), "Expired")
            if kind == "DELETED" or not self.selects(obj):
                self.items.pop(key, None)
            else:
                self.items[key] = obj
            self.freshness.moved(version)
        reader.tell(self.key)


# The verbs each mode of a collection asks for: a watch lists first, a poll lists, a read by name
# gets; the first is what one read of it is.
MODE_VERBS = {"watch": ("list", "watch"), "poll": ("list",), "get": ("get",)}


class ApiReader:
    """The read interface of the checks (get, list, resource_for); what the engine drives."""
    def __init__(self, client, interval=POLL_INTERVAL, watch=True, clock=time.monotonic, once=False):
        self.client, self.interval, self.watch_allowed, self.clock = client, interval, watch, clock
        self.once, self.asking = once, None  # --check: each read once; the dependency asked
        self.collections, self.lock = {}, threading.Lock()
        self.settled = {}           # answers that can no longer change, read once
        self.reads, self.began = set(), 0.0  # what the check being asked read; when it began
        self.from_storage = False   # every read of this check from storage (again_from_storage)
        self.changes, self.changed = threading.Condition(), set()  # keys changed, from watchers
        self.said, self.watch_refused = set(), set()  # messages said once; paths not to watch
        self.troubles = {}          # collection key -> [last error text, times seen]
        self.merged = {}            # a read's key -> the key of the merged read that answers it
        self.kinds = dict(BUILT_IN_KINDS)  # (group version, resource) -> the kind it serves
        self.role = Permissions(client, clock)  # what may be asked, known before asking

    # What checks call ---------------------------------------------------------------------------

    def get(self, group_version, resource, namespace, name, settled=None, fresh=False):
        """The object, or None. `settled(obj)`: true once what is needed of it cannot change (not
        read again); `fresh`: read from storage during this check, whatever is kept."""
        key = (group_version, resource, namespace, None, Field("metadata.name", name))
        fresh = fresh or self.from_storage
        if settled is not None and key in self.settled and not fresh:
            return self.settled[key]
        items = self._answer(key, fresh)
        obj = items[0] if items else None
        if fresh:
            self.settled.pop(key, None)
        if settled is not None and obj is not None and settled(obj):
            self.settled[key] = obj
            self.reads.discard(key)
        return obj

    def list(self, group_version, resource, namespace, labels=None, fields=None):
        return self._answer((group_version, resource, namespace, labels or None, fields or None))

    def resource_for(self, group_version, kind):
        """The discovery entry serving `kind`, or None while none does (no CRD yet)."""
        if (group_version, kind) not in self.settled:
            key = (group_version, None, None, None, None)
            served = [r for r in self._answer(key) if r["kind"] == kind]
            if not served:
                return None
            self.settled[(group_version, kind)] = served[0]
            self.kinds[(group_version, served[0]["name"])] = kind
            self.reads.discard(key)
        return self.settled[(group_version, kind)]

    def plural(self, group_version, kind):
        """The resource serving `kind`, as discovery said, else as most CRDs name it."""
        served = self.settled.get((group_version, kind))
        return served["name"] if served else plural_of(kind)

    def merge(self, reads):
        """Reads one selector can say become one (`k in (a,b)`); each check sees only its own."""
        groups = {}
        for group_version, resource, namespace, labels in reads:
            [(key, _, (value,))] = labels
            values = groups.setdefault((group_version, resource, namespace, key), [])
            if value not in values:
                values.append(value)
        for (group_version, resource, namespace, key), values in groups.items():
            for start in range(0, len(values), MERGE_LIMIT):
                chunk = sorted(values[start:start + MERGE_LIMIT])
                if len(chunk) < 2:
                    continue
                merged = (group_version, resource, namespace,
                          Selector([(key, "in", tuple(chunk))]), None)
                for value in chunk:
                    self.merged[(group_version, resource, namespace, Selector.of({key: value}),
                                 None)] = merged

    def _answer(self, key, fresh=False):
        fresh = fresh or self.from_storage
        source = self.merged.get(key, key)
        self.reads.add(source)
        collection = self.collections.get(source)
        if collection is None:
            collection = self.collections[source] = self._new_collection(source)
            self.refresh(collection)
        elif fresh and (collection.read_at or float("-inf")) < self.began:
            self.refresh(collection, fresh=True)
        with self.lock:
            if collection.error is not None:
                raise collection.error
            items = list(collection.items.values())
        if source is not key:  # only this read's own objects
            items = [obj for obj in items if key[3].matches(obj["metadata"].get("labels"))]
        return items

    # What the engine calls ----------------------------------------------------------------------

    def begin(self, asking=None):
        self.reads, self.began, self.from_storage = set(), self.clock(), False
        self.asking = asking

    def again_from_storage(self):
        """The check being asked is asked again: each read from storage, unless it was already."""
        self.from_storage = True

    def end(self):
        return self.reads

    def follow(self, in_use):
        """Watch the collections in use; forget the rest (a watched one after UNUSED_GRACE)."""
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
                collection.watcher = threading.Thread(target=collection.watch, daemon=True)
                try:
                    start_thread(collection.watcher)
                except RuntimeError as e:  # a low pids limit: poll this one instead
                    collection.watcher = None
                    self.change_mode(collection, "poll", "no thread",
                                     "cannot start a thread to watch %s (%s): polling it every %gs "
                                     "instead" % (collection.describe(), e, self.interval))

    def poll(self, in_use):
        """Refresh the polled collections in use that are due; the keys whose answer changed.
        Now and then the Role is reviewed again: a read it now allows is made the best way."""
        for namespace in self.role.review_due():
            for collection in list(self.collections.values()):
                if collection.namespace == namespace:
                    self._use_the_role(collection, upgrade=True)
                    if getattr(collection.error, "reason", None) == "NotAllowed":
                        collection.next_refresh = 0.0  # not asked for the Role: now it may be
        now = self.clock()
        due = [c for k, c in self.collections.items() if k in in_use and c.next_refresh <= now
               and (c.mode != "watch" or c.watcher is None and c.items is None)]
        return {c.key for c in due if self.refresh(c)}

    def wait(self, timeout):
        """Block until a watched collection changes or `timeout` passes; return the changed keys."""
        with self.changes:
            self.changes.wait_for(lambda: self.changed, max(timeout, 0.001))
            changed, self.changed = self.changed, set()
        return changed

    def tell(self, key):
        """The collection `key` changed (from any thread): the engine's wait ends."""
        with self.changes:
            self.changed.add(key)
            self.changes.notify()

    # Keeping collections fresh ------------------------------------------------------------------

    def _new_collection(self, key):
        group_version, resource, namespace = key[:3]
        path = self.client.path(group_version, resource, namespace)
        mode = "discovery" if resource is None else "watch" if self.watch_allowed \
            and path not in self.watch_refused else "poll"
        collection = Collection(self, key, self.kinds.get((group_version, resource)), path, mode)
        if mode != "discovery":
            self._use_the_role(collection)
        return collection

    def may(self, verb, collection):
        """Whether the Role allows `verb` on the collection: True, False, or None (try it)."""
        return self.role.may(verb, collection.group_version.rpartition("/")[0],
                             collection.resource, collection.namespace, collection.name)

    def _use_the_role(self, collection, upgrade=False):
        """Make the mode the best the Role allows: what it refuses is not asked (MODE_VERBS);
        after a review, what it now allows for sure (`upgrade`) is used. Said once: what is
        missing and what it costs."""
        rank = ["get", "poll", "watch"] if collection.name else ["poll", "watch"]
        answers = {mode: [self.may(verb, collection) for verb in MODE_VERBS[mode]] for mode in rank}
        best = collection.mode
        while False in answers[best] and best != rank[0]:
            best = rank[rank.index(best) - 1]
        for mode in rank[rank.index(best) + 1:] if upgrade else ():
            if not all(answer is True for answer in answers[mode]) or mode == "watch" and not \
                    self.watch_allowed:
                break
            best = mode
        if False in answers[best]:
            self.change_mode(collection, best, "not allowed", "the Role allows no %s on %s: it is "
                             "not read; grant get, list and watch (--rbac prints a Role)" % (
                                 " or ".join(MODE_VERBS[best]), collection.describe()))
        elif rank.index(best) < rank.index(collection.mode):
            self.change_mode(collection, best, "no " + collection.mode, (
                "the Role allows no %s on %s: polling it%s every %gs instead; grant get, list and "
                "watch to react at once (--rbac prints a Role)" % (
                    "watch" if best == "poll" else "list or watch", collection.describe(),
                    " by name" if best == "get" else "", self.interval)))
        elif best != collection.mode:
            self.watch_refused.discard(collection.path)
            self.change_mode(collection, best, "allowed " + best, "the Role now allows %s on %s: "
                             "%s it" % (" and ".join(MODE_VERBS[best]), collection.describe(),
                                        "watching" if best == "watch" else "listing"))

    def refresh(self, collection, fresh=False):
        """Read the collection once (from storage if `fresh`); True if what checks see changed."""
        try:
            sent = self.clock()
            verb = MODE_VERBS.get(collection.mode, (None,))[0]  # what a read is (not discovery)
            if verb and self.may(verb, collection) is False:  # known, so not asked
                raise ApiError(403, "the Role allows no %s on %s (its rules review says so)"
                               % (verb, collection.describe()), "NotAllowed")
            items, version, from_cache = self._read(collection, fresh)
            with self.lock:
                changed = collection.error is not None or items != collection.items
                if not collection.took(items, version, from_cache, sent):
                    raise malformed(collection.describe(), "an answer older than one already seen")
        except ApiError as e:
            if fresh:
                self.reads.add(EVERY_ROUND)
                raise
            if e.status == 403 and collection.mode in ("watch", "poll") and collection.name:
                self.change_mode(collection, "get", "list refused",
                                 "API refused list %s (403): polling it by name instead; grant "
                                 "'list' and 'watch' to react at once" % collection.describe())
                return self.refresh(collection)
            if e.status == 403 and e.reason != "NotAllowed":  # (that one was said: not sent)
                verb = MODE_VERBS.get(collection.mode, ("get",))[0]
                self.say_once((verb, collection.path), self.refusal(verb, collection))
            collection.failures += 1
            collection.next_refresh = self.clock() + backoff(collection.failures, self.interval,
                                                             e.retry_after)
            self.trouble(collection, e)
            with self.lock:
                changed = collection.error is None or str(collection.error) != str(e)
                collection.error = e
            return changed
        self.trouble(collection, None)
        # Polled: due every round; discovery of a kind not served yet: less often while unchanged.
        discovery = collection.mode == "discovery"
        collection.failures = collection.failures + 1 if discovery and not changed else 0
        collection.next_refresh = self.clock() + backoff(collection.failures, self.interval) \
            if discovery else 0.0
        return changed

    def _read(self, collection, fresh):
        """(items, version, from the cache?): from the cache where Freshness says so."""
        freshness = collection.freshness
        as_of = None if fresh or collection.mode == "discovery" or collection.error else \
            freshness.as_of(collection.items, collection.mode == "get")
        if as_of is not None:
            error = None
            try:
                items, version = self._fetch(collection, as_of)
            except ApiError as e:
                if e.status in (401, 403, 404, 429):
                    raise  # said and retried as for any read
                error, problem = e, str(e)
            else:
                with self.lock:
                    believed = freshness.believes(collection.items, items, version, True)
                if believed:
                    freshness.misses = 0
                    return items, version, True
                problem = "its answer is older than one already seen"
            message = "reading %s from the API server's cache failed (%s); reading it from " \
                      "storage" % (collection.describe(), problem)
            if freshness.missed(error):  # a cache behind, as caches are now and then
                log("DEBUG", message)
            else:  # a failure worth knowing of, said once for the collection
                self.say_once(("cache", collection.path), message)
        return self._fetch(collection, None) + (False,)

    def _fetch(self, collection, as_of):
        """collection.fetch(), where nothing but an ApiError may leave."""
        try:
            return collection.fetch(self.client, as_of)
        except ApiError:
            raise
        except Exception as e:  # an answer no check of its shape foresaw
            raise malformed(collection.describe(), "%s: %s" % (type(e).__name__, e))

    def change_mode(self, collection, mode, why, message):
        """The one place a mode changes, said once per resource and reason; the engine is told."""
        collection.mode = mode
        if why == "watch refused":
            self.watch_refused.add(collection.path)
        if mode == "watch" and collection.watcher is not None and not collection.watcher.is_alive():
            collection.watcher = None  # a watch the Role allows again: follow() starts one
        self.say_once((why, collection.path), message, "INFO" if why.startswith("allowed") else
                      "WARNING")
        self.tell(collection.key)

    # Saying what goes wrong, once ---------------------------------------------------------------

    def say_once(self, key, message, level="WARNING"):
        if key not in self.said:
            self.said.add(key)
            log(level, message)

    @staticmethod
    def refusal(verb, collection, then=""):
        return "API refused %s %s (403): the Role needs %r on %s%s" % (
            verb, collection.describe(), verb, collection.resource or "discovery",
            "; " + then if then else "")

    def trouble(self, collection, error):
        """Log a failing read when its error appears or changes, and with a count when it clears."""
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
                % (collection.describe(), last[1], last[0]))
        elif error is not None and error.status != 403 and self.once:
            log("WARNING", "reading %s for %s failed: %s" % (collection.describe(), self.asking, error))
        elif error is not None and error.status != 403:
            log("WARNING", "reading %s failed: %s; retrying" % (collection.describe(), error))


def after_stream(error, lasted, failures, interval):
    """What a watch does when its stream ends: (action, failures in a row, seconds to wait):
    "resume", "relist" (410, a failure) or "poll" (403, 405). A clean end after HEALTHY_STREAM
    resumes at once, as does the first early end or 410; failures in a row back off."""
    if error is None and lasted >= HEALTHY_STREAM:
        return "resume", 0, 0.0
    if error is not None and error.status in (403, 405):
        return "poll", failures, 0.0
    failures += 1
    if error is None or error.status == 410:
        delay = backoff(failures - 1, interval) if failures > 1 else 0.0
        return ("resume" if error is None else "relist"), failures, delay
    return "relist", failures, backoff(failures, interval, error.retry_after)


# What the Role allows -----------------------------------------------------------------------

REVIEW_EVERY = 120.0  # seconds between reviews of a namespace where something was not allowed
RULES_REVIEW = "/apis/authorization.k8s.io/v1/selfsubjectrulesreviews"  # any account may ask


class Permissions:
    """What this account may do in each namespace, as a SelfSubjectRulesReview says, so that
    nothing is asked that would be refused. may() is True (a rule allows it), False (the review is
    complete and no rule does) or None (cannot tell: no namespace, the review refused, failed,
    malformed or incomplete): then reads try, as without a review. A namespace where something
    was not allowed, or whose review failed, is reviewed again every REVIEW_EVERY seconds."""
    def __init__(self, client, clock=time.monotonic):
        self.client, self.clock = client, clock
        self.rules = {}     # namespace -> [rule, ...] of a complete review, or None: cannot tell
        self.again_at = {}  # namespace -> when to review it again (a failure, a "no")

    def review(self, namespaces):
        """Review each namespace not reviewed yet; the namespaces whose rules changed."""
        return [ns for ns in sorted(namespaces) if ns not in self.rules and self._review(ns)]

    def review_due(self):
        """Review again the namespaces due; the namespaces whose rules changed."""
        now = self.clock()
        return [ns for ns, when in sorted(self.again_at.items()) if when <= now and self._review(ns)]

    def _review(self, namespace):
        before = self.rules.get(namespace, ())
        wanted = self.again_at.pop(namespace, None) is not None
        try:
            answer = self.client.send("POST", RULES_REVIEW, {
                "apiVersion": "authorization.k8s.io/v1", "kind": "SelfSubjectRulesReview",
                "spec": {"namespace": namespace}})
            self.rules[namespace] = rules = review_rules(answer)
            if rules is None:
                log("DEBUG", "the rules review of namespace %s cannot tell what is allowed "
                             "(incomplete or malformed): requests are tried" % namespace)
            elif wanted and rules == before:  # what was not allowed still is not: ask again later
                self.again_at[namespace] = self.clock() + REVIEW_EVERY
        except ApiError as e:
            self.rules[namespace] = None
            log("DEBUG", "no rules review of namespace %s (%s): requests are tried" % (namespace, e))
            if e.status not in (403, 404):  # a refusal, a server without it: not asked again
                self.again_at[namespace] = self.clock() + REVIEW_EVERY
        return self.rules[namespace] != before

    def may(self, verb, group, resource, namespace, name=None):
        rules = self.rules.get(namespace) if namespace else None
        if rules is None:
            return None
        for verbs, groups, resources, names in rules:
            if (verb in verbs or "*" in verbs) and (group in groups or "*" in groups) and (
                    resource in resources or "*" in resources) and (not names or name in names):
                return True  # by name too: a list or watch of one name asks for that name
        self.again_at.setdefault(namespace, self.clock() + REVIEW_EVERY)
        return False


def review_rules(answer):
    """A complete review's rules as (verbs, apiGroups, resources, resourceNames) sets, or None."""
    status = answer.get("status") if isinstance(answer, dict) else None
    rules = status.get("resourceRules") if isinstance(status, dict) else None
    if not isinstance(rules, list) or status.get("incomplete") is not False:
        return None
    found = []
    for rule in rules:
        if not isinstance(rule, dict):
            return None
        fields = [rule.get(key) for key in ("verbs", "apiGroups", "resources", "resourceNames")]
        if any(value is not None and not (isinstance(value, list) and all(
                isinstance(v, str) for v in value)) for value in fields):
            return None
        found.append(tuple(frozenset(value or ()) for value in fields))
    return found


# 8. API client ====================================================================================
# HTTPS requests and watch streams with the service-account token.

class ApiError(Exception):
    """A request that did not give an answer: `status` is the HTTP code, or None when none came."""
    def __init__(self, status, message, reason="", retry_after=None):
        super().__init__(message)
        self.status, self.message = status, message
        self.reason, self.retry_after = reason, retry_after

    def __str__(self):
        return self.message if self.status is None else "%d %s: %s" % (
            self.status, self.reason or "error", self.message)


MAX_ANSWER_BYTES = 8 * 1024 * 1024  # one answer or one watch event; more is malformed
MAX_ERROR_BYTES = 64 * 1024         # what is read of an error answer
RETRY_AFTER_LIMIT = 10              # seconds: the longest Retry-After honoured (then backoff)
# A bearer token's characters (RFC 6750): others would break the header or escape redact().
TOKEN_TEXT = re.compile(r"[A-Za-z0-9._~+/-]{1,65536}=*")


class TokenFile:
    """The service-account token, reread every minute (the kubelet rotates it) and on demand."""
    def __init__(self, path, clock=time.monotonic):
        self.path, self.clock, self.value, self.read_at, self.problem = path, clock, None, None, None
        self.refresh(required=True)

    def refresh(self, required=False):
        value, problem = b"", "the file is empty"
        try:
            with open(self.path, "rb") as f:
                value = f.read(65537).strip()
        except OSError as e:
            problem = e.strerror
        if value and not TOKEN_TEXT.fullmatch(value.decode("latin-1")):
            value, problem = b"", ("the file does not hold one bearer token (it has line breaks, "
                                   "spaces or other characters a token cannot have, or is too long)")
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
    ipv6 = getattr(ip_address(host[1:-1] if bracketed else host), "version", 0) == 6
    if not (is_host(host) or bracketed and ipv6):
        raise ConfigError("KUBERNETES_SERVICE_HOST", "%s is not a host name or address"
                          % shown(host))
    return "https://%s:%s" % ("[%s]" % ip_address(host.strip("[]")) if ipv6 else host, port)


class ApiClient:
    """GETs, watch streams and Event writes, each thread on its own kept-alive connection: HTTPS
    verified, with the token (plain HTTP only to this machine); one deadline, bounded answers."""
    def __init__(self, server_url, serviceaccount_dir, timeout=REQUEST_TIMEOUT):
        import http.client
        from urllib.parse import quote, urlencode, urlsplit
        self._http, self._quote, self._urlencode = http.client, quote, urlencode
        url = urlsplit(server_url)
        self._host, self._port, self._prefix = url.hostname, url.port, url.path.rstrip("/")
        self._timeout, self._local = timeout, threading.local()
        self._context = self.token = None
        self._untrusted = ()  # the error of a server certificate that fails verification
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
        return self._connection_class(self._host, self._port or 80) if self._context is None \
            else self._connection_class(self._host, self._port or 443, context=self._context)

    def path(self, group_version, resource, namespace=None, name=None):
        """The URL path of a collection, object or discovery, each part quoted: built here only."""
        quote = self._quote
        parts = [self._prefix + ("/api/v1" if group_version == "v1"
                                 else "/apis/" + quote(group_version, safe="/"))]
        parts += ["namespaces", namespace] if namespace else []
        return "/".join(parts[:1] + [quote(part, safe="") for part in parts[1:] + [resource, name]
                                     if part])

    def get(self, path, query=None):
        """The parsed JSON answer (an object), or an ApiError."""
        response = self._open(path, query)
        body = self._read_body(response, MAX_ANSWER_BYTES if response.status == 200
                               else MAX_ERROR_BYTES)
        if response.status != 200:
            raise self._error(response, body)
        answer = json_of(body)
        if not isinstance(answer, dict):
            raise malformed(path, "not a JSON object")
        return answer

    def watch(self, path, query, seconds):
        """Yield (event, its size) until the stream ends; no event larger than an answer."""
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
                    raise malformed(path, "a watch event larger than %d MiB"
                                    % (MAX_ANSWER_BYTES >> 20))
                if line.strip():
                    event = json_of(line)
                    if event is None:
                        raise malformed(path, "a watch event that is not JSON")
                    yield event, len(line)
        except (OSError, self._http.HTTPException) as e:
            raise ApiError(None, "watch stream broken: %s" % describe_failure(e))
        finally:
            self.close()  # a stream is not reused; the next request opens a fresh connection

    def send(self, method, path, document, content_type="application/json"):
        """POST or PATCH a JSON document; the answer (an object, or None), or an ApiError."""
        response = self._open(path, None, method, json.dumps(document).encode(), content_type)
        body = self._read_body(response, MAX_ANSWER_BYTES if response.status in (200, 201)
                               else MAX_ERROR_BYTES)
        if response.status not in (200, 201):
            raise self._error(response, body)
        answer = json_of(body)
        return answer if isinstance(answer, dict) else None

    def _read_body(self, response, limit):
        """The whole body, at most `limit` bytes; cut short or too large: an ApiError."""
        chunks, size = [], 0
        too_large = malformed(None, "larger than %d KiB" % (limit >> 10))
        try:
            if response.length is not None and response.length > limit:
                raise too_large
            while True:
                chunk = response.read(65536)
                if not chunk:
                    break
                size += len(chunk)
                if size > limit:
                    raise too_large
                chunks.append(chunk)
            if response.length:  # the connection closed before Content-Length was sent
                raise self._http.IncompleteRead(b"", response.length)
        except (OSError, self._http.HTTPException, ApiError) as e:
            self.close()
            if response.status not in (200, 201):
                return b"".join(chunks)
            if isinstance(e, ApiError):
                raise
            raise ApiError(None, "no whole answer from the API server: %s" % describe_failure(e))
        if response.will_close:
            self.close()
        return b"".join(chunks)

    def _error(self, response, body):
        """An ApiError from an error answer: its Status message if it has one (cut short)."""
        retry_after = (response.getheader("Retry-After") or "").strip()
        return status_error(response.status, json_of(body), redact(body.decode("utf-8", "replace"))
                            .strip() or "no message", response.reason,
                            min(int(retry_after), RETRY_AFTER_LIMIT)
                            if re.fullmatch("[0-9]{1,9}", retry_after) else None)

    def _open(self, path, query, method="GET", body=None, content_type=None):
        """Send a request (one deadline); after a 401, again with a reread token if it changed."""
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
        """One request on this thread's connection, reopened once if the server closed it."""
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


def json_of(data):
    """The JSON document in `data` (bytes), or None where there is none."""
    try:
        return json.loads(data.decode("utf-8"))
    except (ValueError, RecursionError):
        return None


def status_error(code, status, message, reason, retry_after=None):
    """An ApiError from a Status (an error body, a watch's ERROR event), cut short."""
    status = status if isinstance(status, dict) else {}
    text, why = status.get("message"), status.get("reason")
    return ApiError(code, clip(text if isinstance(text, str) and text else message, 500),
                    clip(str(why if isinstance(why, str) and why else reason), 100), retry_after)


# 9. Connections ===================================================================================
# Every request to the API server within one deadline, from the name lookup to the last byte of the
# answer; TLS verified as client-go verifies it.

class DeadlineSocket:
    """A socket whose every send and receive ends at its connection's deadline (no trickling server
    holds a request longer); closed only once the response being read is done."""
    def __init__(self, sock, connection):
        self._sock, self._connection, self._readers, self._closed = sock, connection, 0, False

    def sendall(self, data):
        self._sock.settimeout(time_left(self._connection.deadline, "the request"))
        self._sock.sendall(data)

    def recv_into(self, buffer, size=0):
        self._sock.settimeout(time_left(self._connection.deadline, "the answer"))
        return self._sock.recv_into(buffer, size)

    def makefile(self, mode="rb"):
        self._readers += 1
        return io.BufferedReader(SocketReader(self))

    def reader_closed(self):
        self._readers -= 1
        if self._closed:
            self.close()

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


LOOKUPS = {}  # (host, port): the name lookup under way, which the next request waits for too
LOOKUP_KEPT = 60.0  # seconds the answer of a lookup that ended after its request gave up is used
LOOKUPS_LOCK = threading.Lock()


def addresses(host, port, deadline):
    """getaddrinfo within `deadline`, in a thread waited for until then; a request for a host being
    looked up waits for that lookup, so a resolver that never answers holds one thread."""
    def look_up():
        try:
            lookup.answer = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
        except Exception as e:  # (an idna error is a ValueError)
            lookup.answer = e if isinstance(e, OSError) else OSError(str(e))
        lookup.finished = time.monotonic()

    lookup = None
    if ip_address(host) is None:  # else nothing to look up
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
                    LOOKUPS[(host, port)] = lookup
                except RuntimeError:  # no thread to spare (a low pids limit): look up in this one
                    lookup = None
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


def connect_before(deadline, address, failures=None):
    """A TCP connection to (host, port), lookup included, before `deadline`: each address it
    resolves to tried in turn until then, each failure put in `failures` as ("addr:port", error)."""
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
            if failures is not None:
                failures.append((("[%s]:%d" if family == socket.AF_INET6 else "%s:%d")
                                 % socket_address[:2], e))
            if time.monotonic() >= deadline:
                break
    raise failure or OSError("no address for %s" % host)


def bounded_connection(base):
    """An http.client connection class whose every step fits in `deadline`."""

    class Bounded(base):
        deadline = 0.0

        def connect(self):
            self._create_connection = lambda address, *_: connect_before(self.deadline, address)
            super().connect()
            self.sock = DeadlineSocket(self.sock, self)

    return Bounded


def tls_context(ca_path):
    """Verify the API server as client-go does: a chain to any certificate in `ca_path`, a SAN
    matching the host, and not OpenSSL's strict X.509 rules (Python 3.13), which refuse real ones."""
    import ssl
    context = ssl.create_default_context(cafile=ca_path)
    context.verify_flags = ((context.verify_flags & ~ssl.VERIFY_X509_STRICT)
                            | getattr(ssl, "VERIFY_X509_PARTIAL_CHAIN", 0x80000))
    context.hostname_checks_common_name = False
    context.minimum_version = ssl.TLSVersion.TLSv1_2  # as Go; 3.8 and 3.9 leave it to OpenSSL
    return context


def describe_failure(error):
    """A connection's failure for a log line; not a ValueError's (it can quote a header)."""
    if isinstance(error, ValueError) and not isinstance(error, OSError):  # (TLS errors are both)
        return "the request could not be sent (%s)" % type(error).__name__
    return clip(str(error) or type(error).__name__, 300)


# 10. Files ========================================================================================
# A rendered config is written whole or not at all, never through a planted link, and no stop
# signal leaves a temporary file behind.

def write_file_atomically(path, data):
    """Write `data` all or nothing: a new temporary file (random, exclusive, no symlink, the
    old mode or 0644), flushed, renamed over; a single-file mount or read-only directory: in place."""
    directory = os.path.dirname(path) or "."
    os.makedirs(directory, exist_ok=True)
    try:
        mode = stat.S_IMODE(os.stat(path).st_mode)
    except FileNotFoundError:
        mode = 0o644
    with stop_signals_held():  # a signal between creating and removing the file would leak it
        try:  # `.<name>.<random>.tmp`, created exclusively, never through a symlink
            temporary = os.path.join(directory, ".%s.%s.tmp" % (os.path.basename(path)[:200],
                                                                os.urandom(8).hex()))
            fd = os.open(temporary, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW
                         | os.O_CLOEXEC, 0o600)
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
            try:
                os.unlink(temporary)
            except OSError:
                pass
            if not isinstance(e, OSError) or e.errno != errno.EBUSY:
                raise
            write_in_place(path, data)


def write_all(fd, data, at=None):
    """os.write until all is written; with `at`, from there, the file then ending with it."""
    if at is not None:
        os.lseek(fd, at, os.SEEK_SET)
    view = memoryview(data)
    while view:
        written = os.write(fd, view)
        if written <= 0:
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        view = view[written:]
    if at is not None:
        os.ftruncate(fd, at + len(data))


def write_in_place(path, data):
    """Rewrite a file that cannot be replaced (a single-file mount); put back on failure."""
    fd = os.open(path, os.O_RDWR | getattr(os, "O_CLOEXEC", 0))
    try:
        old = b"".join(iter(lambda: os.read(fd, 1 << 20), b""))
        if old == data:
            return
        try:
            write_all(fd, data, at=0)
            os.fsync(fd)
        except BaseException:
            try:
                write_all(fd, old, at=0)
            except OSError:
                pass
            raise
    finally:
        os.close(fd)


# 11. Events =======================================================================================
# Why the pod waits, where `kubectl describe pod` and `kubectl get events` show it.

EVENT_SPACING = 30.0      # seconds: at most one write about one dependency this often
EVENT_BURST = 25          # writes at most at once; then one more per EVENT_REFILL seconds
EVENT_REFILL = 30.0
EVENT_FLUSH_EXEC = 0.3    # seconds the last event may hold the exec
EVENT_FLUSH_EXIT = 1.0    # ... or an exit without the command
EVENT_MESSAGE = 1024      # characters of a message the API server keeps
COMPONENT = "kubernetes-entrypoint"
LAST = "last"             # the key of the last event: met, timed out, stopped, failed


class Events:
    """Core v1 Events on this pod, written by a background thread (no write delays the wait).
    record() keeps the latest per key; writes are spaced (EVENT_SPACING a key, EVENT_BURST refilled
    slowly); the same event raises its count by PATCH; a refusal (403) is said once and ends it."""
    def __init__(self, make_client, namespace, pod_name, clock=time.monotonic, wall=time.time,
                 background=True, role=None):
        self.make_client = make_client  # called on the thread: no cost before the first event
        self.role = role                # Permissions: what the Role allows, or None (try)
        self.background = background    # False: a test calls write_next() itself
        self.namespace, self.pod_name, self.clock, self.wall = namespace, pod_name, clock, wall
        self.client = self.involved = self.host = self.thread = None
        self.lock = threading.Condition()
        self.pending = {}      # key -> (type, reason, message): the latest, not yet written
        self.last_write = {}   # key -> clock() of its last write
        self.written = {}      # (type, reason, message) -> [event name, count]
        self.tokens, self.refilled = float(EVENT_BURST), clock()
        self.retry_at, self.failures, self.last_stamp = float("-inf"), 0, 0
        self.writing = self.last_only = self.off = self.used = False  # used: an event recorded
        self.said = set()      # messages said once

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
                if deadline <= self.clock():
                    return log("DEBUG", "the last event was not written within %gs" % seconds)
                self.lock.wait(deadline - self.clock())

    def _run(self):
        while self.write_next(block=True):
            continue

    def write_next(self, block):
        """Write the next event due, waiting for one if `block`; False once there is none."""
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
        """(the key to write now, None), or (None, seconds until one may be, or None)."""
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
        if self._may("create") is False:  # known, so not asked; kept for a Role granted later
            self._again(key, item)
            return self._say_once("Events on pod %s are not written: the Role allows no 'create' "
                                  "on 'events' in namespace %s (--rbac prints a Role)"
                                  % (self.pod_name, self.namespace))
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
            self._again(key, item)

    def _may(self, verb, resource="events", name=None):
        return None if self.role is None else self.role.may(verb, "", resource, self.namespace, name)

    def _say_once(self, message):
        if message not in self.said:
            self.said.add(message)
            log("INFO", message)

    def _again(self, key, item):
        """Write the item again in its key's next turn (unless replaced); never the last."""
        if key != LAST:
            with self.lock:
                self.pending.setdefault(key, item)

    def _stop(self):
        with self.lock:
            self.off = True
            self.pending.clear()
            self.lock.notify_all()

    def _pod_reference(self):
        """This pod as involvedObject, with its uid (`kubectl describe pod` needs it)."""
        reference = {"apiVersion": "v1", "kind": "Pod", "namespace": self.namespace,
                     "name": self.pod_name}
        try:
            if self._may("get", "pods", self.pod_name) is False:
                raise ApiError(403, "the Role allows no 'get' on 'pods'", "NotAllowed")
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
        """Raise the same event's count (PATCH), else create it; one write per call."""
        stamp = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(self.wall()))
        item = (event_type, reason, message)
        known = self.written.get(item)
        if known is not None and self._may("patch") is not False:  # else: a new event each time
            try:
                self.client.send("PATCH", self.client.path("v1", "events", self.namespace, known[0]),
                                 {"count": known[1] + 1, "lastTimestamp": stamp},
                                 "application/merge-patch+json")
                known[1] += 1
                return
            except ApiError as e:
                if e.status != 404:
                    raise
                del self.written[item]
                if key != LAST:
                    return self._again(key, item)
        self.last_stamp = max(int(self.wall() * 1e9), self.last_stamp + 1)
        name = "%s.%x" % (self.pod_name[:236].rstrip("-."), self.last_stamp)
        source = dict({"component": COMPONENT}, **({"host": self.host} if self.host else {}))
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
        self.written[item] = [name, 1]


def events_for(env, settings, reader=None):
    """The pod's Events, or None (no POD_NAME, or ENTRYPOINT_EVENTS=false)."""
    if not settings.events or not settings.pod_name:
        return None

    def make_client():
        return reader.client if reader is not None else ApiClient(
            settings.api_server or api_server_url(env, "ENTRYPOINT_EVENTS"),
            settings.serviceaccount_dir, settings.request_timeout)

    return Events(make_client, events_namespace(settings), settings.pod_name,
                  role=reader.role if reader is not None else None)


def events_namespace(settings):
    """Where this pod is, and so its Events: the service account's namespace, else NAMESPACE;
    None without POD_NAME (no Events)."""
    if not settings.pod_name:
        return None
    namespace = read_text(os.path.join(settings.serviceaccount_dir, "namespace")).strip()
    return namespace if LABEL_NAME.fullmatch(namespace) else settings.namespace


# 12. Logging ======================================================================================
# One place writes every line, so the format cannot drift; no token is ever in one.

LEVELS = ("DEBUG", "INFO", "WARNING", "ERROR")
LOG = types.SimpleNamespace(json=False, threshold=LEVELS.index("INFO"),
                            stdout_is_output=False)  # --rbac: stdout holds JSON, logs go to stderr


def log(level, message, dependency=None):
    """One line about our own work (errors to stderr), as the original writes it, or JSON."""
    if LEVELS.index(level) < LOG.threshold:
        return
    now = time.time()
    if LOG.json:
        record = {"time": time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(now))
                  + ".%03dZ" % (now % 1 * 1000), "level": level.lower(), "message": message}
        record.update({"dependency": str(dependency)} if dependency is not None else {})
        line = json.dumps(record) + "\n"
    else:
        line = "Entrypoint %s: %s %s\n" % (
            level, time.strftime("%Y/%m/%d %H:%M:%S", time.localtime(now)), one_line(message))
    write(sys.stderr if level == "ERROR" or LOG.stdout_is_output else sys.stdout, line)


CONTROL_CHARACTERS = re.compile("[\x00-\x1f\x7f-\x9f\u2028\u2029]")


def one_line(text):
    """Control characters (line breaks above all) written as escapes: `\\n`, `\\x1b`."""
    return CONTROL_CHARACTERS.sub(lambda m: repr(m.group())[1:-1], text)


def shown(value, limit=80):
    """A value from the environment or the server, quoted and cut short for an error line."""
    text = redact(repr(value))  # before the cut, as in clip()
    return text if len(text) <= limit else text[:limit - 4] + "...'"


# The tokens never printed: the current one and the one before (a request may carry it), and
# every PIECE characters in a row of each, so that a piece is found too; each replaced whole.
SECRETS = types.SimpleNamespace(tokens=(), pieces=frozenset())
PIECE = 16
TOKEN_RUN = re.compile(r"[A-Za-z0-9._~+/=-]{%d,}" % PIECE)  # characters a token is made of


def keep_secret(token):
    """Keep a token out of every line, with the one before it; older ones are forgotten."""
    if token not in SECRETS.tokens:
        tokens = SECRETS.tokens[-1:] + (token,)
        SECRETS.pieces = frozenset(t[i:i + PIECE] for t in tokens
                                   for i in range(len(t) - PIECE + 1))
        SECRETS.tokens = tokens


def redact(text):
    """The text without any token, whole or a piece of it (cut, or echoed by a server)."""
    tokens, pieces = SECRETS.tokens, SECRETS.pieces
    for secret in tokens:
        if secret in text:
            text = text.replace(secret, "[token]")
    return TOKEN_RUN.sub(lambda run: hide_pieces(run.group(), pieces), text) if pieces else text


def hide_pieces(run, pieces):
    """The run of token characters with every stretch that is part of a token as [token]."""
    hidden = [False] * len(run)
    for start in range(len(run) - PIECE + 1):
        if run[start:start + PIECE] in pieces:
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
    """Text cut to `limit` characters, the token taken out first (a cut piece escapes redact)."""
    text = redact(text)
    return text if len(text) <= limit else text[:limit - 3] + "..."


def write(stream, text):
    """Write unbuffered to the stream's descriptor; a closed stream or broken pipe drops it."""
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


if __name__ == "__main__":
    exit_quietly(main())
