"""Configuration parsing: pure functions from an environment mapping to dependencies or a ConfigError."""

import json

import pytest

import kubernetes_entrypoint as ke


def parse(tmp_path, **env):
    env.setdefault("ENTRYPOINT_SERVICEACCOUNT_DIR", str(tmp_path / "no-serviceaccount"))
    return ke.parse_dependencies(env, ke.read_settings(env))


def labels_of(deps):
    return [d.label for d in deps]


def config_error(tmp_path, **env):
    with pytest.raises(ke.ConfigError) as caught:
        parse(tmp_path, **env)
    return caught.value


# Names and namespaces -----------------------------------------------------------------------

def test_service_names_with_and_without_namespace(tmp_path):
    deps = parse(tmp_path, NAMESPACE="openstack", DEPENDENCY_SERVICE="mysql:mariadb,keystone-api")
    assert labels_of(deps) == ["Service mariadb in namespace mysql",
                               "Service keystone-api in namespace openstack"]
    assert [(d.namespace, d.name, d.variable) for d in deps] == [
        ("mysql", "mariadb", "DEPENDENCY_SERVICE"), ("openstack", "keystone-api", "DEPENDENCY_SERVICE")]
    assert all(d.needs_api and d.check is ke.check_service for d in deps)


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


@pytest.mark.parametrize("variable", ["DEPENDENCY_CONTAINER", "DEPENDENCY_SOCKET", "DEPENDENCY_CONFIG"])
def test_kinds_without_namespace_refuse_one(tmp_path, variable):
    error = config_error(tmp_path, POD_NAME="p", INTERFACE_NAME="lo", **{variable: "ns:thing"})
    assert error.variable == variable and "takes no namespace" in str(error)


def test_unknown_dependency_variable_suggests_the_closest(tmp_path):
    error = config_error(tmp_path, DEPENDENCY_SERVICES="mariadb")
    assert error.variable == "DEPENDENCY_SERVICES"
    assert "did you mean DEPENDENCY_SERVICE?" in str(error)
    error = config_error(tmp_path, DEPENDENCY_WHATEVER_ELSE="x")
    assert "DEPENDENCY_POD_JSON" in str(error)  # lists the valid names
    assert parse(tmp_path, DEPENDENCY_SERVICES="") == []  # empty: nothing to complain about


# POD_NAME ---------------------------------------------------------------------------------

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


# JSON kinds -------------------------------------------------------------------------------

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


def test_socket_needs_no_api(tmp_path):
    deps = parse(tmp_path, DEPENDENCY_SOCKET="/run/a.sock, /run/b.sock")
    assert labels_of(deps) == ["Socket /run/a.sock", "Socket /run/b.sock"]
    assert not any(d.needs_api for d in deps)


def test_poll_interval_must_be_positive(tmp_path):
    for bad in ("0", "-1", "soon", "inf", "nan"):
        with pytest.raises(ke.ConfigError) as caught:
            ke.read_settings({"ENTRYPOINT_POLL_INTERVAL": bad})
        assert caught.value.variable == "ENTRYPOINT_POLL_INTERVAL"
    assert ke.read_settings({"ENTRYPOINT_POLL_INTERVAL": "0.25"}).poll_interval == 0.25
    assert ke.read_settings({}).poll_interval == 2.0


# COMMAND ----------------------------------------------------------------------------------

def test_command_splits_on_runs_of_whitespace():
    assert ke.split_command("  sleep   inf \t") == ["sleep", "inf"]
    assert ke.split_command("") == []


def test_find_command(tmp_path):
    tool = tmp_path / "tool"
    tool.write_text("#!/bin/sh\n")
    tool.chmod(0o755)
    plain = tmp_path / "plain"
    plain.write_text("data")
    plain.chmod(0o644)
    assert ke.find_command(["tool"], "/nonexistent:" + str(tmp_path)) == str(tool)
    assert ke.find_command([str(tool)], "") == str(tool)
    with pytest.raises(ke.CommandError) as caught:
        ke.find_command(["plain"], str(tmp_path))
    assert caught.value.code == 126
    with pytest.raises(ke.CommandError) as caught:
        ke.find_command(["missing"], str(tmp_path))
    assert caught.value.code == 127
    # true and echo are answered in-process where the image has no coreutils
    assert ke.find_command(["true"], str(tmp_path)) is None
    assert ke.find_command(["/bin/echo", "x"], "") in ("/bin/echo", None)


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


def test_bad_base_namespace(tmp_path):
    error = config_error(tmp_path, NAMESPACE="Open Stack", DEPENDENCY_SERVICE="db")
    assert error.variable == "NAMESPACE"
    sa = tmp_path / "sa"
    sa.mkdir()
    (sa / "namespace").write_bytes(b"bad\xff")
    error = config_error(tmp_path, ENTRYPOINT_SERVICEACCOUNT_DIR=str(sa), DEPENDENCY_SOCKET="/x")
    assert error.variable == "NAMESPACE" and "namespace" in str(error)


def test_unknown_json_key_is_a_typo(tmp_path):
    error = config_error(tmp_path, DEPENDENCY_JOBS_JSON='[{"name": "j", "namepsace": "other"}]')
    assert error.variable == "DEPENDENCY_JOBS_JSON" and "did you mean 'namespace'?" in str(error)


def test_deeply_nested_json_is_an_error(tmp_path):
    error = config_error(tmp_path, DEPENDENCY_JOBS_JSON="[" * 100000)
    assert "invalid JSON" in str(error)


def test_huge_poll_interval_is_an_error():
    with pytest.raises(ke.ConfigError):
        ke.read_settings({"ENTRYPOINT_POLL_INTERVAL": "1e10"})


def test_custom_resource_names_may_be_anything_kubernetes_allows(tmp_path):
    value = '[{"apiVersion": "rbac.authorization.k8s.io/v1", "kind": "ClusterRole", ' \
            '"name": "system:aggregate-to-admin"}]'
    [dep] = parse(tmp_path, DEPENDENCY_CUSTOM_RESOURCE=value)
    assert dep.name == "system:aggregate-to-admin"


def test_directory_as_command_is_not_executable(tmp_path):
    with pytest.raises(ke.CommandError) as caught:
        ke.find_command([str(tmp_path)], "")
    assert caught.value.code == 126


def test_every_option_taking_a_value_is_known_before_parsing():
    """is_run_by_hand skips the value of each option in VALUE_OPTIONS: every such option of the
    parser must be there, or `--new-option --check` would be misread."""
    parser = ke.argument_parser()
    taking_values = {option for action in parser._actions if action.option_strings
                     and action.nargs != 0 for option in action.option_strings}
    assert taking_values == set(ke.VALUE_OPTIONS)
    assert ke.is_run_by_hand(["--timeout", "5", "--check"])
    assert ke.is_run_by_hand(["--time", "5", "--val"])
    assert not ke.is_run_by_hand(["--timeout", "--check"])  # --check is the timeout's value
    assert not ke.is_run_by_hand(["run", "--check"])         # the command's own option
