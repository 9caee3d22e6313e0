"""Configuration: pure functions from an environment to dependencies or a ConfigError. Every
value is checked as Kubernetes would check it (names, namespaces, labels, each DEPENDENCY_* kind
and its JSON, the settings, the API server's address, COMMAND, CONFIG templates and the interface
they take the address of), so a mistake is one line and exit 2 at start, never a request that can
never succeed, a traceback or a silent hang."""

import json
import re
import signal
import socket

import pytest

import fakeapi as k8s
import kubernetes_entrypoint as ke
from templates import config_deps, make_template


def parse(tmp_path, **env):
    env.setdefault("ENTRYPOINT_SERVICEACCOUNT_DIR", str(tmp_path / "no-serviceaccount"))
    return ke.parse_dependencies(env, ke.read_settings(env))


def labels_of(deps):
    return [d.label for d in deps]


def config_error(tmp_path, **env):
    with pytest.raises(ke.ConfigError) as caught:
        parse(tmp_path, **env)
    return caught.value


def assert_config_exit(run, variable):
    """Exit 2, one stderr line naming `variable`, no traceback, and the command never ran."""
    code = run.finish()
    assert "Traceback" not in run.stderr, run.stderr
    assert code == 2, (code, run.stdout, run.stderr)
    errors = run.stderr.splitlines()
    assert len(errors) == 1 and errors[0].startswith("Entrypoint ERROR: "), run.stderr
    assert variable + ": " in errors[0], errors[0]
    assert run.report() is None


def short(value):
    """A readable test id for a value that may be 120000 characters long."""
    text = repr(value)
    return text if len(text) <= 24 else "%s...(%d chars)" % (text[:16], len(value))


def ready_file(tmp_path):
    """A DEPENDENCY_SOCKET that is met at once: a dependency that needs neither API nor POD_NAME."""
    path = tmp_path / "ready"
    path.write_text("")
    return str(path)


# Names, namespaces and unknown variables ------------------------------------------------------

def test_service_names_with_and_without_namespace(tmp_path):
    deps = parse(tmp_path, NAMESPACE="openstack", DEPENDENCY_SERVICE="mysql:mariadb,keystone-api")
    assert labels_of(deps) == ["Service mariadb in namespace mysql",
                               "Service keystone-api in namespace openstack"]
    assert [(d.namespace, d.name, d.kind.variable) for d in deps] == [
        ("mysql", "mariadb", "DEPENDENCY_SERVICE"), ("openstack", "keystone-api", "DEPENDENCY_SERVICE")]
    assert all(d.kind.needs_api and d.kind.check is ke.check_service for d in deps)


def test_whitespace_trimmed_and_empty_items_skipped(tmp_path):
    deps = parse(tmp_path, DEPENDENCY_SERVICE=" a , b,, ", DEPENDENCY_JOBS="")
    assert labels_of(deps) == ["Service a in namespace default", "Service b in namespace default"]


def test_empty_variables_mean_nothing_to_wait_for(tmp_path):
    env = {kind.variable: "" for kind in ke.KINDS}
    assert parse(tmp_path, **env) == []


def test_namespace_falls_back_to_serviceaccount_file_then_default(tmp_path):
    sa = tmp_path / "sa"
    sa.mkdir()
    (sa / "namespace").write_text("from-file\n")
    deps = parse(tmp_path, ENTRYPOINT_SERVICEACCOUNT_DIR=str(sa), NAMESPACE="", DEPENDENCY_SERVICE="x")
    assert deps[0].namespace == "from-file"
    deps = parse(tmp_path, ENTRYPOINT_SERVICEACCOUNT_DIR=str(sa), NAMESPACE="ns1", DEPENDENCY_SERVICE="x")
    assert deps[0].namespace == "ns1"
    assert parse(tmp_path, DEPENDENCY_SERVICE="x")[0].namespace == "default"


@pytest.mark.parametrize("item, problem", [
    ("a:b:c", "more than one colon"),
    (":name", "empty namespace"),
    ("ns:", "empty name"),
    ("Bad_Name", "is not a valid Kubernetes"),
    ("ns/x:name", "not a valid Kubernetes namespace"),
])
def test_bad_namespaced_items_are_errors(tmp_path, item, problem):
    for variable in ("DEPENDENCY_SERVICE", "DEPENDENCY_JOBS"):
        error = config_error(tmp_path, **{variable: "ok," + item, "POD_NAME": "p"})
        assert error.variable == variable
        assert problem in str(error) and str(error).startswith(variable + ": ")


def test_bad_base_namespace(tmp_path):
    error = config_error(tmp_path, NAMESPACE="Open Stack", DEPENDENCY_SERVICE="db")
    assert error.variable == "NAMESPACE"
    sa = tmp_path / "sa"
    sa.mkdir()
    (sa / "namespace").write_bytes(b"bad\xff")
    error = config_error(tmp_path, ENTRYPOINT_SERVICEACCOUNT_DIR=str(sa), DEPENDENCY_SOCKET="/x")
    assert error.variable == "NAMESPACE" and "namespace" in str(error)


@pytest.mark.parametrize("variable", ["DEPENDENCY_CONTAINER", "DEPENDENCY_SOCKET", "DEPENDENCY_CONFIG"])
def test_kinds_without_namespace_refuse_one(tmp_path, variable):
    error = config_error(tmp_path, POD_NAME="p", INTERFACE_NAME="lo", **{variable: "ns:thing"})
    assert error.variable == variable and "takes no namespace" in str(error)


def test_socket_needs_no_api(tmp_path):
    deps = parse(tmp_path, DEPENDENCY_SOCKET="/run/a.sock, /run/b.sock")
    assert labels_of(deps) == ["Socket /run/a.sock", "Socket /run/b.sock"]
    assert not any(d.kind.needs_api for d in deps)


def test_unknown_dependency_variable_suggests_the_closest(tmp_path):
    error = config_error(tmp_path, DEPENDENCY_SERVICES="mariadb")
    assert error.variable == "DEPENDENCY_SERVICES"
    assert "did you mean DEPENDENCY_SERVICE?" in str(error)
    error = config_error(tmp_path, DEPENDENCY_WHATEVER_ELSE="x")
    assert "DEPENDENCY_POD_JSON" in str(error)  # lists the valid names
    assert parse(tmp_path, DEPENDENCY_SERVICES="") == []  # empty: nothing to complain about


# Our own variables misspelt ---------------------------------------------------------------

def test_unknown_entrypoint_variable_suggests_the_closest(tmp_path, entrypoint):
    run = entrypoint({"ENTRYPOINT_TIMOUT": "1"})
    assert_config_exit(run, "ENTRYPOINT_TIMOUT")
    assert "did you mean ENTRYPOINT_TIMEOUT?" in run.stderr
    error = config_error(tmp_path, ENTRYPOINT_WHATEVER_ELSE="x")
    assert error.variable == "ENTRYPOINT_WHATEVER_ELSE" and "ENTRYPOINT_FAIL_FAST" in str(error)
    assert parse(tmp_path, ENTRYPOINT_TIMOUT="") == []  # empty: nothing to complain about


def test_every_entrypoint_variable_read_is_a_known_one():
    with open(ke.__file__) as f:
        read = set(re.findall(r'"(ENTRYPOINT_[A-Z_]+)"', f.read()))
    assert read == {name for name, _ in ke.SETTINGS_HELP if name.startswith("ENTRYPOINT_")}


@pytest.mark.parametrize("variable", ["COMAND", "COMMANDS", "COMMMAND", "command", "Comand"])
def test_misspelt_command_is_a_mistake_not_a_silent_exit(entrypoint, variable):
    run = entrypoint({variable: "/bin/true"}, command="")
    assert_config_exit(run, "COMMAND")
    assert "did you mean COMMAND?" in run.stderr and variable in run.stderr


def test_a_variable_like_command_beside_a_command_is_fine(tmp_path, entrypoint):
    run = entrypoint({"COMMANDS": "x"})  # the default COMMAND runs the reporter
    run.assert_execd()
    assert ke.edits("COMMON", "COMMAND") == 2 and ke.edits("HOME", "COMMAND") > 2


def test_slash_for_a_namespace_suggests_the_colon(tmp_path):
    error = config_error(tmp_path, DEPENDENCY_SERVICE="openstack/mariadb")
    assert error.variable == "DEPENDENCY_SERVICE"
    assert "did you mean 'openstack:mariadb' (namespace:name)?" in str(error)


def test_bad_namespace_says_what_a_valid_one_looks_like(tmp_path):
    error = config_error(tmp_path, NAMESPACE="OpenStack", DEPENDENCY_SERVICE="db")
    assert str(error).startswith("NAMESPACE: 'OpenStack' is not a valid Kubernetes namespace (a "
                                 "DNS-1123 label: a-z, 0-9 and '-'")
    assert "e.g. openstack" in str(error)


# Jobs: absentIsDone -------------------------------------------------------------------------

def test_absent_is_done_from_the_variable_and_per_entry(tmp_path):
    entries = json.dumps([{"name": "a"}, {"name": "b", "absentIsDone": False},
                          {"labels": {"app": "c"}, "absentIsDone": True}])
    deps = parse(tmp_path, DEPENDENCY_JOBS_JSON=entries)
    assert [d.absent_is_done for d in deps] == [False, False, True]
    deps = parse(tmp_path, DEPENDENCY_JOBS_JSON=entries, ENTRYPOINT_JOB_ABSENT_IS_DONE="true")
    assert [d.absent_is_done for d in deps] == [True, False, True]
    deps = parse(tmp_path, DEPENDENCY_JOBS="a,b", ENTRYPOINT_JOB_ABSENT_IS_DONE="TRUE")
    assert [d.absent_is_done for d in deps] == [True, True]
    assert [d.absent_is_done for d in parse(tmp_path, DEPENDENCY_JOBS="a")] == [False]


@pytest.mark.parametrize("env, variable", [
    ({"DEPENDENCY_JOBS_JSON": '[{"name": "a", "absentIsDone": "yes"}]'}, "DEPENDENCY_JOBS_JSON"),
    ({"DEPENDENCY_JOBS_JSON": '[{"name": "a", "absentIsdone": true}]'}, "DEPENDENCY_JOBS_JSON"),
    ({"ENTRYPOINT_JOB_ABSENT_IS_DONE": "1"}, "ENTRYPOINT_JOB_ABSENT_IS_DONE"),
    ({"ENTRYPOINT_JOB_ABSENT_GRACE": "3601"}, "ENTRYPOINT_JOB_ABSENT_GRACE"),
    ({"ENTRYPOINT_JOB_ABSENT_GRACE": "-1"}, "ENTRYPOINT_JOB_ABSENT_GRACE"),
    ({"ENTRYPOINT_FAIL_FAST": "yes"}, "ENTRYPOINT_FAIL_FAST"),
])
def test_job_settings_refuse_nonsense(tmp_path, env, variable):
    error = config_error(tmp_path, DEPENDENCY_JOBS="a", **env)
    assert error.variable == variable


# Item 13: Service, Job and DaemonSet names ----------------------------------------------------

@pytest.mark.parametrize("variable, value", [
    ("DEPENDENCY_SERVICE", "a" * 64), ("DEPENDENCY_SERVICE", "1db"),
    ("DEPENDENCY_SERVICE", "a..b"), ("DEPENDENCY_SERVICE", "a.b"),
    ("DEPENDENCY_SERVICE", "ns:" + "a" * 64), ("DEPENDENCY_SERVICE", "ns:1db"),
    ("DEPENDENCY_SERVICE", "ns:a.b"),
    ("DEPENDENCY_JOBS", "a" * 64), ("DEPENDENCY_JOBS", "a..b"), ("DEPENDENCY_JOBS", "ns:a..b"),
    ("DEPENDENCY_JOBS", "ns:" + "a" * 64),
    ("DEPENDENCY_JOBS_JSON", json.dumps([{"name": "a" * 64}])),
    ("DEPENDENCY_JOBS_JSON", json.dumps([{"name": "a..b"}])),
    ("DEPENDENCY_DAEMONSET", "a..b"), ("DEPENDENCY_DAEMONSET", "ns:a..b"),
    ("DEPENDENCY_DAEMONSET", "a" * 254),
], ids=short)
def test_item13_invalid_object_name_is_an_error(tmp_path, variable, value):
    """issue 7 item 13: Services are DNS-1035 labels, Jobs subdomains <= 63, DaemonSets <= 253."""
    error = config_error(tmp_path, POD_NAME="p", **{variable: value})
    assert error.variable == variable


@pytest.mark.parametrize("variable, value", [
    ("DEPENDENCY_SERVICE", "a" * 63), ("DEPENDENCY_SERVICE", "ns:db-1"),
    ("DEPENDENCY_JOBS", "a" * 63), ("DEPENDENCY_JOBS", "db-init.v2"),
    ("DEPENDENCY_JOBS_JSON", json.dumps([{"name": "db-init.v2"}])),
    ("DEPENDENCY_JOBS_JSON", json.dumps([{"name": "a" * 63}])),
    ("DEPENDENCY_DAEMONSET", "a" * 253), ("DEPENDENCY_DAEMONSET", "ns:ovs.agent"),
], ids=short)
def test_item13_valid_object_names_parse(tmp_path, variable, value):
    """issue 7 item 13: the longest and dotted names Kubernetes allows still parse."""
    assert len(parse(tmp_path, POD_NAME="p", **{variable: value})) == 1


# POD_NAME -------------------------------------------------------------------------------------

@pytest.mark.parametrize("env", [
    {"DEPENDENCY_CONTAINER": "app"},
    {"DEPENDENCY_DAEMONSET": "ovs"},
    {"DEPENDENCY_POD_JSON": '[{"labels": {"a": "b"}, "requireSameNode": true}]'},
])
def test_pod_name_required_where_needed(tmp_path, env):
    error = config_error(tmp_path, **env)
    assert error.variable == "POD_NAME"
    assert list(env)[0] in str(error)


def test_pod_json_without_same_node_needs_no_pod_name(tmp_path):
    deps = parse(tmp_path, DEPENDENCY_POD_JSON='[{"labels": {"app": "x"}, "namespace": "n"}]')
    assert labels_of(deps) == ["Pod on same host with labels map[app:x] in namespace n"]
    assert deps[0].require_same_node is False


def test_daemonset_and_container(tmp_path):
    deps = parse(tmp_path, POD_NAME="me", NAMESPACE="os", DEPENDENCY_DAEMONSET="ovs,infra:agent",
                 DEPENDENCY_CONTAINER="nova-libvirt")
    assert labels_of(deps) == ["Container nova-libvirt", "Daemonset ovs in namespace os",
                               "Daemonset agent in namespace infra"]
    assert {d.pod_name for d in deps} == {"me"}


@pytest.mark.parametrize("pod_name", ["My Pod", "../x?y#", "a\nb", "a" * 120000, "a..b",
                                      "-a", "a-", ".a", "a" * 254], ids=short)
def test_item11_invalid_pod_name_is_an_error(tmp_path, pod_name):
    """issue 7 item 11: a POD_NAME that is no object name is an error even where none needs it."""
    error = config_error(tmp_path, POD_NAME=pod_name, DEPENDENCY_SERVICE="x")
    assert error.variable == "POD_NAME"


@pytest.mark.parametrize("pod_name", ["nova-api-7d9f-x2", "a.b", "a" * 253, "   "],
                         ids=short)
def test_item11_valid_or_unset_pod_name(tmp_path, pod_name):
    """issue 7 item 11: valid names, and a blank (unset) POD_NAME, are fine."""
    assert len(parse(tmp_path, POD_NAME=pod_name, DEPENDENCY_SERVICE="x")) == 1


@pytest.mark.parametrize("pod_name", ["My Pod", "a\nb"])
def test_item11_invalid_pod_name_end_to_end(entrypoint, tmp_path, pod_name):
    """issue 7 item 11: exit 2 in one line, though no dependency needs POD_NAME."""
    run = entrypoint({"POD_NAME": pod_name, "DEPENDENCY_SOCKET": ready_file(tmp_path)})
    assert_config_exit(run, "POD_NAME")


# JSON kinds -----------------------------------------------------------------------------------

def test_jobs_json_by_name_and_labels(tmp_path):
    value = json.dumps([{"name": "db-init"}, {"labels": {"tier": "db", "app": "nova"}, "namespace": "x"}])
    deps = parse(tmp_path, NAMESPACE="os", DEPENDENCY_JOBS_JSON=value)
    assert labels_of(deps) == ["Job db-init in namespace os",
                               "Jobs with labels map[app:nova tier:db] in namespace x"]


def test_jobs_json_wins_over_jobs(tmp_path, capsys):
    deps = parse(tmp_path, DEPENDENCY_JOBS="a", DEPENDENCY_JOBS_JSON='[{"name": "b"}]')
    assert labels_of(deps) == ["Job b in namespace default"]
    assert "using DEPENDENCY_JOBS_JSON" in capsys.readouterr().out


@pytest.mark.parametrize("variable, value, problem", [
    ("DEPENDENCY_JOBS_JSON", "[{", "invalid JSON"),
    ("DEPENDENCY_JOBS_JSON", '{"name": "x"}', "expected a JSON list"),
    ("DEPENDENCY_JOBS_JSON", '["x"]', "expected a JSON list of objects"),
    ("DEPENDENCY_JOBS_JSON", '[{"name": "x", "labels": {"a": "b"}}]', "not both"),
    ("DEPENDENCY_JOBS_JSON", '[{"namespace": "x"}]', "neither"),
    ("DEPENDENCY_JOBS_JSON", '[{"labels": {"a": 1}}]', "string value"),
    ("DEPENDENCY_JOBS_JSON", '[{"name": 5}]', "must be a string"),
    ("DEPENDENCY_POD_JSON", '[{"namespace": "x"}]', "no 'labels'"),
    ("DEPENDENCY_POD_JSON", '[{"labels": {}}]', "non-empty"),
    ("DEPENDENCY_POD_JSON", '[{"labels": {"a": "b"}, "requireSameNode": "yes"}]', "true or false"),
    ("DEPENDENCY_CUSTOM_RESOURCE", '[{"kind": "Widget", "name": "w"}]', "'apiVersion'"),
    ("DEPENDENCY_CUSTOM_RESOURCE", '[{"apiVersion": "a/v1", "name": "w"}]', "'kind'"),
    ("DEPENDENCY_CUSTOM_RESOURCE", '[{"apiVersion": "a/v1", "kind": "W"}]', "'name'"),
    ("DEPENDENCY_CUSTOM_RESOURCE", '[{"apiVersion": "a/v1", "kind": "W", "name": "w", '
                                   '"fields": [{"value": "x"}]}]', "'key'"),
    ("DEPENDENCY_CUSTOM_RESOURCE", '[{"apiVersion": "a/v1", "kind": "W", "name": "w", '
                                   '"fields": {"key": "x"}}]', "must be a list"),
])
def test_bad_json_is_an_error_naming_the_variable(tmp_path, variable, value, problem):
    error = config_error(tmp_path, POD_NAME="p", **{variable: value})
    assert error.variable == variable and problem in str(error)


def test_unknown_json_key_is_a_typo(tmp_path):
    error = config_error(tmp_path, DEPENDENCY_JOBS_JSON='[{"name": "j", "namepsace": "other"}]')
    assert error.variable == "DEPENDENCY_JOBS_JSON" and "did you mean 'namespace'?" in str(error)


def test_deeply_nested_json_is_an_error(tmp_path):
    error = config_error(tmp_path, DEPENDENCY_JOBS_JSON="[" * 100000)
    assert "invalid JSON" in str(error)


# Item 4: label keys and values in DEPENDENCY_JOBS_JSON and DEPENDENCY_POD_JSON ----------------

BAD_LABELS = [
    {"app!": "db-sync"}, {"a": "b,c=d"}, {"a": "x y"}, {"a": "v" * 64}, {"": "x"},
    {"Bad_Prefix/x": "y"}, {"a/b/c": "y"}, {"-a": "y"},
    {"k" * 64: "y"}, {"a.": "y"}, {"a": "-v"}, {"example.com/": "y"}, {"/x": "y"},
    {"a" * 254 + "/x": "y"},
]
GOOD_LABELS = [
    {"example.com/app": ""}, {"app": "a.b-c_D9"}, {"application": "nova", "component": "db-sync"},
    {"k" * 63: "v" * 63}, {"a" * 253 + "/x": "y"}, {"A_b.C": "Z"},
]
LABEL_VARIABLES = ["DEPENDENCY_JOBS_JSON", "DEPENDENCY_POD_JSON"]


@pytest.mark.parametrize("variable", LABEL_VARIABLES)
@pytest.mark.parametrize("labels", BAD_LABELS, ids=short)
def test_item4_invalid_label_is_an_error(tmp_path, variable, labels):
    """issue 7 item 4: a label Kubernetes would refuse is a ConfigError naming the variable."""
    error = config_error(tmp_path, **{variable: json.dumps([{"labels": labels}])})
    assert error.variable == variable


@pytest.mark.parametrize("variable", LABEL_VARIABLES)
@pytest.mark.parametrize("labels", GOOD_LABELS, ids=short)
def test_item4_valid_labels_parse(tmp_path, variable, labels):
    """issue 7 item 4: every label Kubernetes accepts still parses."""
    assert len(parse(tmp_path, **{variable: json.dumps([{"labels": labels}])})) == 1


def test_item4_invalid_label_end_to_end(api, entrypoint):
    """issue 7 item 4: a bad label is exit 2 at start, not a wrong selector waited on forever."""
    env = dict(api.env(), DEPENDENCY_JOBS_JSON=json.dumps([{"labels": {"a": "b,c=d"}}]),
               ENTRYPOINT_TIMEOUT="2")  # the old code, which accepts it, gives up after 2s
    assert_config_exit(entrypoint(env), "DEPENDENCY_JOBS_JSON")


# DEPENDENCY_CUSTOM_RESOURCE: apiVersion, kind, name, fields and conditions --------------------

def test_custom_resource_defaults(tmp_path):
    value = json.dumps([
        {"apiVersion": "example.com/v1", "kind": "Widget", "name": "w",
         "fields": [{"key": "spec.size", "value": 3}, {"key": "status.phase", "value": "Ready"}],
         "conditions": [{"type": "Available"}, {"type": "Degraded", "status": "False"}]},
        {"apiVersion": "v1", "kind": "PersistentVolumeClaim", "name": "data", "namespace": "db"},
    ])
    first, second = parse(tmp_path, NAMESPACE="os", DEPENDENCY_CUSTOM_RESOURCE=value)
    assert first.label == "Widget w in namespace os"
    assert first.fields == [("spec.size", "3"), ("status.phase", "Ready")]
    assert first.conditions == [("Available", "True"), ("Degraded", "False")]
    assert second.label == "PersistentVolumeClaim data in namespace db"
    assert second.fields == [] and second.conditions == []


def test_custom_resource_names_may_be_anything_kubernetes_allows(tmp_path):
    value = '[{"apiVersion": "rbac.authorization.k8s.io/v1", "kind": "ClusterRole", ' \
            '"name": "system:aggregate-to-admin"}]'
    [dep] = parse(tmp_path, DEPENDENCY_CUSTOM_RESOURCE=value)
    assert dep.name == "system:aggregate-to-admin"


def custom_resource(**changes):
    entry = {"apiVersion": "example.com/v1", "kind": "Widget", "name": "w"}
    entry.update(changes)
    return json.dumps([entry])


@pytest.mark.parametrize("key, value", [
    ("apiVersion", " "), ("kind", " "), ("name", " "), ("name", "\t "),
    ("apiVersion", "example.com/v1?watch=1#"), ("apiVersion", "../v1"),
    ("apiVersion", "Example.com/v1"), ("apiVersion", "example.com/"), ("apiVersion", "/v1"),
    ("apiVersion", "example.com/V1"), ("apiVersion", "V1"), ("apiVersion", "example.com/1v"),
    ("apiVersion", "example.com/" + "v" * 64), ("apiVersion", "a" * 254 + "/v1"),
    ("apiVersion", "exa mple.com/v1"),
    ("kind", "Wid get"), ("kind", "1Widget"), ("kind", "Widget/x"), ("kind", "Widget-"),
    ("kind", "W" * 64),
    ("name", "."), ("name", ".."), ("name", "a/b"), ("name", "/"), ("name", "a%2Fb"),
    ("name", "%"), ("name", "a\nb"), ("name", "a\tb"), ("name", "a\x00b"), ("name", "a\x7fb"),
], ids=short)
def test_item12_invalid_custom_resource_is_an_error(tmp_path, key, value):
    """issue 7 item 12: apiVersion, kind or name that cannot make a valid request is an error."""
    error = config_error(tmp_path, DEPENDENCY_CUSTOM_RESOURCE=custom_resource(**{key: value}))
    assert error.variable == "DEPENDENCY_CUSTOM_RESOURCE"


@pytest.mark.parametrize("key, value", [
    ("apiVersion", "v1"), ("apiVersion", "apps/v1"), ("apiVersion", "example.com/v1beta1"),
    ("apiVersion", "rbac.authorization.k8s.io/v1"),
    ("kind", "X"), ("kind", "Cron-Tab2"), ("kind", "W" * 63),
    ("name", "a,b"), ("name", "a=b"), ("name", "a:b"), ("name", "..."), ("name", "a..b"),
    ("name", "Upper_Case"),
])
def test_item12_valid_custom_resource_parses(tmp_path, key, value):
    """issue 7 item 12: what the API allows still parses (names may hold , = and :)."""
    [dep] = parse(tmp_path, DEPENDENCY_CUSTOM_RESOURCE=custom_resource(**{key: value}))
    assert key != "name" or dep.name == value


@pytest.mark.parametrize("key", ["a..b", ".a", "a.", " ", "status. phase", "a\nb"], ids=short)
def test_item12_field_key_that_no_object_can_have_is_an_error(tmp_path, key):
    """A field key is a dotted path into the object; an empty or blank part can never be met."""
    error = config_error(tmp_path, DEPENDENCY_CUSTOM_RESOURCE=custom_resource(
        fields=[{"key": key, "value": "x"}]))
    assert error.variable == "DEPENDENCY_CUSTOM_RESOURCE" and "dotted path" in str(error)


def test_item12_field_keys_as_objects_have_them(tmp_path):
    [dep] = parse(tmp_path, DEPENDENCY_CUSTOM_RESOURCE=custom_resource(fields=[
        {"key": "status.phase", "value": "Ready"}, {"key": "spec.x-y_z:1", "value": 1}]))
    assert dep.fields == [("status.phase", "Ready"), ("spec.x-y_z:1", "1")]


def test_item12_invalid_custom_resource_end_to_end(api, entrypoint):
    """issue 7 item 12: a query string smuggled into apiVersion is exit 2 at start."""
    env = dict(api.env(), ENTRYPOINT_TIMEOUT="2",
               DEPENDENCY_CUSTOM_RESOURCE=custom_resource(apiVersion="example.com/v1?x=1#"))
    assert_config_exit(entrypoint(env), "DEPENDENCY_CUSTOM_RESOURCE")


# Settings -------------------------------------------------------------------------------------

def test_poll_interval_must_be_positive(tmp_path):
    for bad in ("0", "-1", "soon", "inf", "nan"):
        with pytest.raises(ke.ConfigError) as caught:
            ke.read_settings({"ENTRYPOINT_POLL_INTERVAL": bad})
        assert caught.value.variable == "ENTRYPOINT_POLL_INTERVAL"
    assert ke.read_settings({"ENTRYPOINT_POLL_INTERVAL": "0.25"}).poll_interval == 0.25
    assert ke.read_settings({}).poll_interval == 2.0


def test_huge_poll_interval_is_an_error():
    with pytest.raises(ke.ConfigError):
        ke.read_settings({"ENTRYPOINT_POLL_INTERVAL": "1e10"})


def test_directory_settings_are_trimmed(tmp_path):
    settings = ke.read_settings({"ENTRYPOINT_CONFIGMAPS_DIR": " /etc/maps \n",
                                 "ENTRYPOINT_SERVICEACCOUNT_DIR": "\t/sa "})
    assert settings.configmaps_dir == "/etc/maps"
    assert settings.serviceaccount_dir == "/sa"


@pytest.mark.parametrize("variable, value", [("ENTRYPOINT_LOG_FORMAT", "yaml"),
                                             ("ENTRYPOINT_LOG_LEVEL", "loud"),
                                             ("ENTRYPOINT_TIMEOUT", "-1"),
                                             ("ENTRYPOINT_PROGRESS_INTERVAL", "soon"),
                                             ("ENTRYPOINT_API_SERVER", "http://10.0.0.1:8001"),
                                             ("ENTRYPOINT_API_SERVER", "ftp://127.0.0.1")])
def test_bad_settings_exit_2(entrypoint, variable, value):
    run = entrypoint({variable: value})
    assert run.finish() == 2
    assert run.stderr.count("\n") == 1 and variable + ": " in run.stderr


@pytest.mark.parametrize("value", ["0", "0.05", "soon"])
def test_item_8_request_timeout_setting_is_checked(api, entrypoint, value):
    """Issue 7 item 8: ENTRYPOINT_REQUEST_TIMEOUT is seconds, at least 0.1."""
    api.put(k8s.job("j", succeeded=1))
    run = entrypoint(dict(api.env(), DEPENDENCY_JOBS="j", ENTRYPOINT_REQUEST_TIMEOUT=value))
    assert run.finish() == 2, run.stdout
    lines = run.stderr.splitlines()
    assert len(lines) == 1 and "ENTRYPOINT_REQUEST_TIMEOUT: " in lines[0]
    assert run.report() is None


@pytest.mark.parametrize("variable, value", [
    ("ENTRYPOINT_API_SERVER", "https://127.0.0.1:0"), ("ENTRYPOINT_API_SERVER", "https://1:443"),
    ("ENTRYPOINT_API_SERVER", "http://127.1:8001"),
    ("ENTRYPOINT_API_SERVER", "https://[10.0.0.1]:6443"),
    ("ENTRYPOINT_API_SERVER", "https://[kubernetes.default.svc]:443"),
    ("ENTRYPOINT_POLL_INTERVAL", "1e-9"), ("ENTRYPOINT_POLL_INTERVAL", "0.01"),
    ("ENTRYPOINT_POLL_INTERVAL", "0.099"),
    ("ENTRYPOINT_PROGRESS_INTERVAL", "0.5"), ("ENTRYPOINT_PROGRESS_INTERVAL", "1e-9"),
    # ENTRYPOINT_REQUEST_TIMEOUT is new (default 10, minimum 0.1): the old code ignores it.
    ("ENTRYPOINT_REQUEST_TIMEOUT", "0"), ("ENTRYPOINT_REQUEST_TIMEOUT", "abc"),
    ("ENTRYPOINT_REQUEST_TIMEOUT", "0.05"), ("ENTRYPOINT_REQUEST_TIMEOUT", "-1"),
    ("ENTRYPOINT_REQUEST_TIMEOUT", "nan"),
])
def test_item13_bad_setting_exits_2(entrypoint, variable, value):
    """issue 7 item 13: settings below their minimum (or unusable) are exit 2 naming them."""
    assert_config_exit(entrypoint({variable: value}), variable)


@pytest.mark.parametrize("variable, value", [
    ("ENTRYPOINT_POLL_INTERVAL", "0.1"), ("ENTRYPOINT_PROGRESS_INTERVAL", "0"),
    ("ENTRYPOINT_PROGRESS_INTERVAL", "1"), ("ENTRYPOINT_REQUEST_TIMEOUT", "0.1"),
    ("ENTRYPOINT_REQUEST_TIMEOUT", "10"),
])
def test_item13_setting_at_its_minimum_is_fine(entrypoint, variable, value):
    """issue 7 item 13: the minimum itself (and 0 for progress: off) is accepted."""
    entrypoint({variable: value}).assert_execd()


# The API server's address ---------------------------------------------------------------------

def test_api_server_port_must_be_a_number():
    with pytest.raises(ke.ConfigError) as caught:
        ke.api_server_url({"KUBERNETES_SERVICE_HOST": "10.0.0.1", "KUBERNETES_SERVICE_PORT": "https"},
                          "DEPENDENCY_SERVICE")
    assert caught.value.variable == "KUBERNETES_SERVICE_PORT"


@pytest.mark.parametrize("host, port, variable", [
    ("1:2:3", "443", "KUBERNETES_SERVICE_HOST"),
    ("[::1", "443", "KUBERNETES_SERVICE_HOST"),
    ("a b", "443", "KUBERNETES_SERVICE_HOST"),
    ("10.0.0.1", "\u00b2", "KUBERNETES_SERVICE_PORT"),
    ("10.0.0.1", "70000", "KUBERNETES_SERVICE_PORT"),
])
def test_odd_api_server_settings(host, port, variable):
    with pytest.raises(ke.ConfigError) as caught:
        ke.api_server_url({"KUBERNETES_SERVICE_HOST": host, "KUBERNETES_SERVICE_PORT": port}, "X")
    assert caught.value.variable == variable


def test_ipv6_host_in_brackets():
    env = {"KUBERNETES_SERVICE_HOST": "fd00::1", "KUBERNETES_SERVICE_PORT": "443"}
    assert ke.api_server_url(env, "DEPENDENCY_SERVICE") == "https://[fd00::1]:443"


def test_plain_http_only_to_loopback():
    assert ke.api_server_setting("http://127.0.0.1:8001") == "http://127.0.0.1:8001"
    assert ke.api_server_setting("http://[::1]:8001")
    assert ke.api_server_setting("http://localhost:8001")
    with pytest.raises(ke.ConfigError):
        ke.api_server_setting("http://kubernetes.default:8001")
    assert ke.api_server_setting("https://kubernetes.example.com:6443")


@pytest.mark.parametrize("host", ["-1", "..", "a..b", "a" * 120000, "host name", "a-.com",
                                  "a" * 64 + ".com", "[1]", "[a]", "[127.0.0.1]", "1", "0",
                                  "127.1", "0x7f000001", "a.b.017"], ids=short)
def test_item13_invalid_api_host_exits_2(api, entrypoint, host):
    """issue 7 item 13: KUBERNETES_SERVICE_HOST must be an IP address or a DNS host name."""
    env = dict(api.env(), KUBERNETES_SERVICE_HOST=host, DEPENDENCY_SERVICE="x",
               ENTRYPOINT_TIMEOUT="2")  # the old code, which accepts these, gives up after 2s
    assert_config_exit(entrypoint(env), "KUBERNETES_SERVICE_HOST")


# COMMAND --------------------------------------------------------------------------------------

def test_command_splits_on_runs_of_whitespace():
    assert ke.split_command("  sleep   inf \t") == ["sleep", "inf"]
    assert ke.split_command("") == []


@pytest.mark.parametrize("value, words", [
    ("a\xa0b c", ["a\xa0b", "c"]),
    ("a\x1cb", ["a\x1cb"]),
    ("a\u2003b", ["a\u2003b"]),
    ("a\u2028b\x85c", ["a\u2028b\x85c"]),
    ("  a \t b\n", ["a", "b"]),
    ("a\vb\fc\rd", ["a", "b", "c", "d"]),
], ids=short)
def test_item13_command_split_on_ascii_whitespace_only(value, words):
    """issue 7 item 13: COMMAND splits on ASCII whitespace only, never inside a Unicode word."""
    assert ke.split_command(value) == words


# CONFIG templates -----------------------------------------------------------------------------

def test_render_for_loopback(tmp_path):
    make_template(tmp_path / "configmaps", "nova.conf",
                  "my_ip = {{ .IP }}\nhost={{.HOSTNAME}}\nerl = {{   .IP_ERLANG   }}\n$HOME stays\n")
    destination = tmp_path / "etc" / "nova" / "nova.conf"
    [dep] = config_deps(tmp_path, str(destination))
    assert dep.label == "Config %s" % destination and not dep.kind.needs_api
    assert ke.check_config(dep, None).met
    assert destination.read_text() == ("my_ip = 127.0.0.1\nhost=%s\nerl = 127,0,0,1\n$HOME stays\n"
                                       % socket.gethostname())
    assert oct(destination.stat().st_mode & 0o777) == oct(0o644)


def test_unknown_placeholder_is_an_error_naming_it(tmp_path):
    make_template(tmp_path / "configmaps", "x.conf", "a\nb = {{ .FOO }}\n")
    with pytest.raises(ke.ConfigError) as caught:
        config_deps(tmp_path, str(tmp_path / "x.conf"))
    assert caught.value.variable == "DEPENDENCY_CONFIG"
    assert "{{ .FOO }}" in str(caught.value) and "line 2" in str(caught.value)


def test_placeholders_are_case_sensitive_like_go(tmp_path):
    make_template(tmp_path / "configmaps", "x.conf", "{{ .ip }}")
    with pytest.raises(ke.ConfigError):
        config_deps(tmp_path, str(tmp_path / "x.conf"))


def test_placeholder_error_is_one_line(tmp_path):
    make_template(tmp_path / "configmaps", "x.conf", "x {{ .IP }\nmore }}\n")
    with pytest.raises(ke.ConfigError) as caught:
        config_deps(tmp_path, str(tmp_path / "x.conf"))
    assert "\n" not in str(caught.value)


def test_missing_template_is_an_error(tmp_path):
    with pytest.raises(ke.ConfigError) as caught:
        config_deps(tmp_path, "/etc/none.conf")
    assert caught.value.variable == "DEPENDENCY_CONFIG" and "none.conf/none.conf" in str(caught.value)


def test_template_that_is_not_utf8_is_copied_as_bytes(tmp_path):
    """As the original does: bytes that are not UTF-8 and line ends pass through untouched."""
    make_template(tmp_path / "configmaps", "x.conf", "")
    (tmp_path / "configmaps" / "x.conf" / "x.conf").write_bytes(b"x \xff {{ .IP }}\r\n\r")
    [dep] = config_deps(tmp_path, str(tmp_path / "x.conf"))
    assert dep.content == b"x \xff 127.0.0.1\r\n\r"


# Item 15: CONFIG templates are bytes, copied exactly but for the placeholders -----------------

TEMPLATES = [
    (b"caf\xe9 {{ .IP }}\r\nx\ry\n", b"caf\xe9 127.0.0.1\r\nx\ry\n"),  # Latin-1, CRLF, lone CR
    (b"a = {{ .IP }}\r\nb\r\n", b"a = 127.0.0.1\r\nb\r\n"),  # UTF-8 (ASCII) with CRLF
    (b"x\r{{ .IP }}", b"x\r127.0.0.1"),  # lone CR, no final newline
    (b"caf\xc3\xa9 \xff\xfe {{ .IP }}\n", b"caf\xc3\xa9 \xff\xfe 127.0.0.1\n"),  # mixed bytes
]


def config_env(tmp_path, template):
    source = tmp_path / "configmaps" / "app.conf" / "app.conf"
    source.parent.mkdir(parents=True)
    source.write_bytes(template)
    destination = tmp_path / "etc" / "app.conf"
    env = {"DEPENDENCY_CONFIG": str(destination), "INTERFACE_NAME": "lo",
           "ENTRYPOINT_CONFIGMAPS_DIR": str(tmp_path / "configmaps")}
    return env, destination


@pytest.mark.parametrize("template, rendered", TEMPLATES, ids=short)
def test_item15_template_bytes_copied_exactly(entrypoint, tmp_path, template, rendered):
    """issue 7 item 15: CRLF, lone CR and non-UTF-8 bytes survive rendering; the command runs."""
    env, destination = config_env(tmp_path, template)
    entrypoint(env).assert_execd()
    assert destination.read_bytes() == rendered


@pytest.mark.parametrize("template, rendered", TEMPLATES, ids=short)
def test_item15_check_sees_exact_bytes_as_met(entrypoint, tmp_path, template, rendered):
    """issue 7 item 15: --check finds a destination holding exactly the rendering met."""
    env, destination = config_env(tmp_path, template)
    destination.parent.mkdir()
    destination.write_bytes(rendered)
    run = entrypoint(env, arguments=["--check"])
    assert run.finish() == 0, (run.stdout, run.stderr)
    assert destination.read_bytes() == rendered


@pytest.mark.parametrize("destination", ["/tmp/x/..", "/tmp/x/.", "..", "."])
def test_item15_destination_named_dot_or_dot_dot_is_an_error(tmp_path, destination):
    """issue 7 item 15 / 12 (path safety): a destination whose base name is . or .. is refused."""
    (tmp_path / "configmaps").mkdir()
    error = config_error(tmp_path, DEPENDENCY_CONFIG=destination, INTERFACE_NAME="lo",
                         ENTRYPOINT_CONFIGMAPS_DIR=str(tmp_path / "configmaps"))
    assert error.variable == "DEPENDENCY_CONFIG"


# INTERFACE_NAME: the address a template is rendered with --------------------------------------

@pytest.mark.parametrize("interface, problem", [("", "not set"), ("nosuch0", "no network interface")])
def test_interface_name_missing_or_wrong(tmp_path, interface, problem):
    make_template(tmp_path / "configmaps", "x.conf", "{{ .IP }}")
    with pytest.raises(ke.ConfigError) as caught:
        config_deps(tmp_path, str(tmp_path / "x.conf"), interface)
    assert caught.value.variable == "INTERFACE_NAME" and problem in str(caught.value)


IF_INET6 = """\
00000000000000000000000000000001 01 80 10 80       lo
fe800000000000000000000000000001 02 40 20 80     eth0
20010db8000000000000000000000042 02 40 00 80     eth0
20010db80000000000000000000000aa 03 40 00 80     eth1
"""


def test_ipv6_global_address_from_sample_data():
    hex_address = ke.ipv6_global_address(IF_INET6, "eth0")
    assert hex_address == "20010db8000000000000000000000042"
    assert ke.ipv6_forms(hex_address) == ("2001:db8::42", "8193,3512,0,0,0,0,0,66")
    assert ke.ipv6_global_address(IF_INET6, "lo") is None  # host scope only
    assert ke.ipv6_global_address(IF_INET6, "eth9") is None


# Fuzz guard: hostile values in every variable are exit 0 or a one-line exit 2, never a crash ---

HOSTILE = ["\x00", "\n", "a" * 100000, "{{", "[{}]", "\xff", "-1", "nan", "inf"]
FUZZED = [kind.variable for kind in ke.KINDS] + [
    "NAMESPACE", "POD_NAME", "INTERFACE_NAME", "KUBERNETES_SERVICE_HOST",
    "KUBERNETES_SERVICE_PORT", "ENTRYPOINT_TIMEOUT", "ENTRYPOINT_POLL_INTERVAL",
    "ENTRYPOINT_PROGRESS_INTERVAL", "ENTRYPOINT_REQUEST_TIMEOUT", "ENTRYPOINT_LOG_FORMAT",
    "ENTRYPOINT_LOG_LEVEL", "ENTRYPOINT_API_SERVER", "COMMAND",
]


def fuzz_env(tmp_path, variable, value):
    """A working configuration that reaches every variable, with `variable` set to `value`."""
    template = tmp_path / "configmaps" / "app.conf" / "app.conf"
    template.parent.mkdir(parents=True, exist_ok=True)
    template.write_bytes(b"ip={{ .IP }}\n")
    env = {"PATH": "/usr/bin:/bin", "ENTRYPOINT_SERVICEACCOUNT_DIR": str(tmp_path / "no-sa"),
           "ENTRYPOINT_CONFIGMAPS_DIR": str(tmp_path / "configmaps"), "POD_NAME": "p",
           "INTERFACE_NAME": "lo", "DEPENDENCY_SERVICE": "db",
           "DEPENDENCY_CONFIG": str(tmp_path / "out" / "app.conf"),
           "KUBERNETES_SERVICE_HOST": "127.0.0.1", "KUBERNETES_SERVICE_PORT": "443"}
    env[variable] = value
    return env


@pytest.fixture
def main_in_process(capfd):
    """ke.main(["--validate"], env) in this process: (exit code, stderr); signals and log state
    restored afterwards, since main installs its own."""
    signums = (signal.SIGTERM, signal.SIGINT, signal.SIGALRM)
    saved_signals = {signum: signal.getsignal(signum) for signum in signums}
    log_state = getattr(getattr(ke, "LOG", None), "__dict__", None)
    saved_log = dict(log_state) if log_state is not None else None

    def run(env):
        code = ke.main(["--validate"], env)
        return code, capfd.readouterr().err

    yield run
    for signum, handler in saved_signals.items():
        signal.signal(signum, handler)
    if saved_log is not None:
        log_state.update(saved_log)


def test_fuzz_baseline_is_valid(main_in_process, tmp_path):
    """issue 7 fuzz guard: the configuration the fuzz starts from is itself fine."""
    assert main_in_process(fuzz_env(tmp_path, "COMMAND", "true")) == (0, "")


@pytest.mark.parametrize("value", HOSTILE, ids=short)
@pytest.mark.parametrize("variable", FUZZED)
def test_fuzz_hostile_values_are_exit_0_or_one_line_exit_2(main_in_process, tmp_path, variable,
                                                           value):
    """issue 7 fuzz guard: no hostile value crashes parsing, or makes more than one error line."""
    code, stderr = main_in_process(fuzz_env(tmp_path, variable, value))
    assert code in (0, 2), (code, stderr)
    assert "Traceback" not in stderr
    if code == 2:
        assert len(stderr.splitlines()) == 1, stderr


@pytest.mark.parametrize("variable", FUZZED)
def test_fuzz_end_to_end(entrypoint, tmp_path, variable):
    """issue 7 fuzz guard, as a process: a long non-ASCII value is exit 0 or one-line exit 2."""
    run = entrypoint(fuzz_env(tmp_path, variable, "\xff" + "a" * 100000 + "{{\n"),
                     arguments=["--validate"])
    code = run.finish()
    assert code in (0, 2) and "Traceback" not in run.stderr, (code, run.stderr[-2000:])
    if code == 2:
        assert len(run.stderr.splitlines()) == 1, run.stderr[-2000:]
