"""Each check alone, against a dict-backed reader: no HTTP, no waiting."""

import os
import shutil
import tempfile

import time

import pytest

import fakeapi as k8s
import kubernetes_entrypoint as ke
from hostile import FAST, assert_waits
from scenarios import wait_until_waiting


class DictReader:
    """The whole read interface the checks use (get, list, resource_for), answered from a dict of
    objects stored by (group_version, resource); selectors are matched as the reader matches them
    (ke.Selector, ke.Field)."""

    def __init__(self, discovery=None):
        self.objects = {}
        self.refused = set()
        self.discovery = discovery or {}
        self.calls = []

    def add(self, group_version, resource, obj):
        self.objects.setdefault((group_version, resource), []).append(obj)
        return obj

    def _refuse(self, verb, resource):
        if (verb, resource) in self.refused:
            raise ke.ApiError(403, "%s is forbidden" % resource, "Forbidden")

    def get(self, group_version, resource, namespace, name, settled=None, fresh=False):
        self.calls.append(("get", resource, namespace, name))
        self._refuse("get", resource)
        for obj in self.objects.get((group_version, resource), []):
            meta = obj["metadata"]
            if meta["name"] == name and meta.get("namespace") == namespace:
                return obj
        return None

    def list(self, group_version, resource, namespace, labels=None, fields=None):
        self.calls.append(("list", resource, namespace, labels, fields))
        self._refuse("list", resource)
        return [o for o in self.objects.get((group_version, resource), [])
                if o["metadata"].get("namespace") == namespace
                and (labels is None or labels.matches(o["metadata"].get("labels")))
                and (fields is None or fields.matches(o))]

    def resource_for(self, group_version, kind):
        served = [r for r in self.discovery.get(group_version, [])
                  if r["kind"] == kind and "/" not in r["name"]]
        return served[0] if served else None


def meta(name, namespace="default", labels=None):
    return {"name": name, "namespace": namespace, "labels": labels or {}}


def pod(name, ready=False, node="node-a", labels=None, namespace="default", **extra):
    obj = {"metadata": meta(name, namespace, labels), "spec": {"nodeName": node},
           "status": {"conditions": [{"type": "Ready", "status": "True" if ready else "False"}]}}
    obj.update(extra)
    return obj


def dep(variable="DEPENDENCY_SERVICE", **attributes):
    return ke.Dependency(label="test", kind=ke.KIND_OF[variable], **attributes)


# SERVICE ----------------------------------------------------------------------------------

SERVICE = dict(namespace="default", name="db")


def endpoint_slice(*endpoints):
    return {"metadata": meta("db-abc", labels={"kubernetes.io/service-name": "db"}),
            "endpoints": list(endpoints)}


def test_service_met_by_a_ready_endpoint_in_a_slice():
    read = DictReader()
    read.add("discovery.k8s.io/v1", "endpointslices", endpoint_slice(
        {"addresses": ["10.0.0.1"], "conditions": {"ready": False}},
        {"addresses": ["10.0.0.2"], "conditions": {}}))  # absent ready counts as ready
    assert ke.check_service(dep(**SERVICE), read).met
    assert ("get", "endpoints", "default", "db") not in read.calls  # no fallback needed


def test_service_not_met_when_no_endpoint_is_ready():
    read = DictReader()
    read.add("discovery.k8s.io/v1", "endpointslices", endpoint_slice(
        {"addresses": ["10.0.0.1"], "conditions": {"ready": False}},
        {"addresses": [], "conditions": {"ready": True}}))
    verdict = ke.check_service(dep(**SERVICE), read)
    assert not verdict.met and verdict.reason == "0 of 2 endpoints ready"


@pytest.mark.parametrize("slices_refused", [True, False])
def test_service_falls_back_to_endpoints(slices_refused):
    read = DictReader()
    if slices_refused:
        read.refused.add(("list", "endpointslices"))
    endpoints = read.add("v1", "endpoints", {"metadata": meta("db"), "subsets": [
        {"notReadyAddresses": [{"ip": "10.0.0.1"}]}]})
    verdict = ke.check_service(dep(**SERVICE), read)
    assert not verdict.met and verdict.reason == "0 of 1 endpoints ready"
    endpoints["subsets"].append({"addresses": [{"ip": "10.0.0.2"}]})
    assert ke.check_service(dep(**SERVICE), read).met


def test_service_without_anything_is_not_met():
    verdict = ke.check_service(dep(**SERVICE), DictReader())
    assert not verdict.met and "no endpoints" in verdict.reason


def test_service_other_errors_are_not_a_fallback():
    class Broken(DictReader):
        def list(self, *args, **kwargs):
            raise ke.ApiError(500, "boom", "InternalError")
    with pytest.raises(ke.ApiError):
        ke.check_service(dep(**SERVICE), Broken())


# CONTAINER --------------------------------------------------------------------------------

def container_pod(statuses, init_statuses=()):
    return {"metadata": meta("me"),
            "spec": {"containers": [{"name": "app"}, {"name": "libvirt"}],
                     "initContainers": [{"name": "sidecar", "restartPolicy": "Always"}]},
            "status": {"containerStatuses": list(statuses),
                       "initContainerStatuses": list(init_statuses)}}


CONTAINER = dict(pod_namespace="default", pod_name="me")


def test_container_ready_and_not_ready():
    read = DictReader()
    read.add("v1", "pods", container_pod([{"name": "libvirt", "ready": False}],
                                         [{"name": "sidecar", "ready": True}]))
    assert not ke.check_container(dep(name="libvirt", **CONTAINER), read).met
    assert ke.check_container(dep(name="sidecar", **CONTAINER), read).met
    verdict = ke.check_container(dep(name="app", **CONTAINER), read)
    assert not verdict.met and "no status" in verdict.reason


def test_container_not_in_spec_is_a_config_error():
    read = DictReader()
    read.add("v1", "pods", container_pod([]))
    verdict = ke.check_container(dep("DEPENDENCY_CONTAINER", name="libvrt", **CONTAINER), read)
    assert not verdict.met and isinstance(verdict.mistake, ke.ConfigError)  # the wait ends, exit 2
    assert verdict.mistake.variable == "DEPENDENCY_CONTAINER" and "libvirt" in str(verdict.mistake)


def test_container_pod_missing_is_waited_for():
    verdict = ke.check_container(dep(name="app", **CONTAINER), DictReader())
    assert not verdict.met and "POD_NAME" in verdict.reason


# DAEMONSET --------------------------------------------------------------------------------

DAEMONSET = dict(namespace="infra", name="ovs", pod_name="me", pod_namespace="default")


def daemonset_reader(*pods):
    read = DictReader()
    read.add("v1", "pods", pod("me", node="node-a"))
    read.add("apps/v1", "daemonsets", {"metadata": meta("ovs", "infra"),
                                       "spec": {"selector": {"matchLabels": {"app": "ovs"}}}})
    for p in pods:
        read.add("v1", "pods", p)
    return read


def test_daemonset_ready_pod_on_this_node():
    read = daemonset_reader(pod("ovs-1", ready=True, node="node-a", labels={"app": "ovs"},
                                namespace="infra"))
    assert ke.check_daemonset(dep(**DAEMONSET), read).met


def test_daemonset_ready_pod_on_another_node_does_not_count():
    read = daemonset_reader(
        pod("ovs-1", ready=True, node="node-b", labels={"app": "ovs"}, namespace="infra"),
        pod("ovs-2", ready=False, node="node-a", labels={"app": "ovs"}, namespace="infra"))
    verdict = ke.check_daemonset(dep(**DAEMONSET), read)
    assert not verdict.met and "ovs-2" in verdict.reason and "node-a" in verdict.reason


def test_daemonset_without_pod_on_this_node_is_met():
    read = daemonset_reader(pod("ovs-1", ready=False, node="node-b", labels={"app": "ovs"},
                                namespace="infra"))
    assert ke.check_daemonset(dep(**DAEMONSET), read).met


def test_daemonset_missing_is_waited_for():
    read = DictReader()
    read.add("v1", "pods", pod("me"))
    assert not ke.check_daemonset(dep(**DAEMONSET), read).met


def test_selector_from_label_selector():
    selector = {"matchLabels": {"b": "2", "a": "1"}, "matchExpressions": [
        {"key": "tier", "operator": "In", "values": ["x", "y"]},
        {"key": "env", "operator": "NotIn", "values": ["dev"]},
        {"key": "has", "operator": "Exists"},
        {"key": "hasnot", "operator": "DoesNotExist"}]}
    assert ke.daemonset_selector(selector).text() == \
        "a=1,b=2,tier in (x,y),env notin (dev),has,!hasnot"


# JOBS -------------------------------------------------------------------------------------

def job(name, succeeded=0, active=0, failed=0, labels=None, failed_for_good=False):
    conditions = [{"type": "Failed", "status": "True"}] if failed_for_good else []
    return {"metadata": meta(name, labels=labels),
            "status": {"succeeded": succeeded, "active": active, "failed": failed,
                       "conditions": conditions}}


def test_job_by_name():
    read = DictReader()
    read.add("batch/v1", "jobs", job("init", active=1, failed=2))
    verdict = ke.check_jobs(dep(namespace="default", name="init", selector=None), read)
    assert verdict.reason == "not succeeded (1 active, 2 failed)"
    read.objects[("batch/v1", "jobs")][0]["status"]["succeeded"] = 1
    assert ke.check_jobs(dep(namespace="default", name="init", selector=None), read).met


def test_job_failed_for_good_and_missing_say_so():
    read = DictReader()
    read.add("batch/v1", "jobs", job("init", failed=6, failed_for_good=True))
    verdict = ke.check_jobs(dep(namespace="default", name="init", selector=None), read)
    assert not verdict.met and "failed for good" in verdict.reason
    verdict = ke.check_jobs(dep(namespace="default", name="gone", selector=None), read)
    assert not verdict.met and "not found" in verdict.reason


def test_jobs_by_labels_need_every_match_succeeded():
    read = DictReader()
    labels = {"app": "nova"}
    jobs_dep = dep(namespace="default", name=None, selector=ke.Selector.of(labels))
    assert ke.check_jobs(jobs_dep, read).reason == "no job matches the labels"
    read.add("batch/v1", "jobs", job("a", succeeded=1, labels=labels))
    read.add("batch/v1", "jobs", job("b", active=1, labels=labels))
    read.add("batch/v1", "jobs", job("other", labels={"app": "x"}))
    verdict = ke.check_jobs(jobs_dep, read)
    assert not verdict.met and "job b" in verdict.reason and "job a" not in verdict.reason
    read.objects[("batch/v1", "jobs")][1]["status"]["succeeded"] = 2
    assert ke.check_jobs(jobs_dep, read).met


def test_failed_job_names_its_condition_and_is_failed_for_good():
    read = DictReader()
    failed = job("init", failed=3)
    failed["status"]["conditions"] = [
        {"type": "Complete", "status": "False"},
        {"type": "Failed", "status": "True", "reason": "DeadlineExceeded",
         "message": "Job was active longer than specified deadline"}]
    read.add("batch/v1", "jobs", failed)
    verdict = ke.check_jobs(dep(namespace="default", name="init", selector=None), read)
    assert verdict.failed and not verdict.absent
    assert verdict.reason == ("failed for good (DeadlineExceeded: Job was active longer than "
                              "specified deadline; 0 active, 3 failed): it succeeds only if "
                              "re-created")


def test_failed_condition_not_true_or_without_words():
    read = DictReader()
    read.add("batch/v1", "jobs", job("init", active=1))
    read.objects[("batch/v1", "jobs")][0]["status"]["conditions"] = [
        {"type": "Failed", "status": "False", "reason": "X"}]
    verdict = ke.check_jobs(dep(namespace="default", name="init", selector=None), read)
    assert not verdict.failed and verdict.reason == "not succeeded (1 active, 0 failed)"
    read.objects[("batch/v1", "jobs")][0]["status"]["conditions"] = [
        {"type": "Failed", "status": "True", "reason": ["not", "a string"]}]
    verdict = ke.check_jobs(dep(namespace="default", name="init", selector=None), read)
    assert verdict.failed and verdict.reason.startswith("failed for good (condition Failed; ")


def test_suspended_job_says_so_and_is_not_failed():
    read = DictReader()
    suspended = read.add("batch/v1", "jobs", job("init"))
    suspended["spec"] = {"suspend": True}
    verdict = ke.check_jobs(dep(namespace="default", name="init", selector=None), read)
    assert not verdict.met and not verdict.failed
    assert verdict.reason == "suspended (spec.suspend is true; 0 active, 0 failed): it runs " \
                             "once resumed"


def test_jobs_by_labels_name_the_failed_one_first():
    read = DictReader()
    labels = {"app": "nova"}
    read.add("batch/v1", "jobs", job("a", active=1, labels=labels))
    read.add("batch/v1", "jobs", job("b", failed=6, labels=labels, failed_for_good=True))
    verdict = ke.check_jobs(dep(namespace="default", name=None, selector=ke.Selector.of(labels)),
                            read)
    assert verdict.failed and verdict.reason.startswith("2 of 2 matching jobs not succeeded: job b "
                                                        "failed for good")
    assert verdict.reason.endswith("; also a")


@pytest.mark.parametrize("absent_is_done", [False, True])
def test_absent_job_is_absent_only_where_it_may_count_as_done(absent_is_done):
    read = DictReader()
    by_name = dep(namespace="default", name="gone", selector=None, absent_is_done=absent_is_done)
    by_labels = dep(namespace="default", name=None, selector=ke.Selector.of({"app": "x"}),
                    absent_is_done=absent_is_done)
    for verdict in (ke.check_jobs(by_name, read), ke.check_jobs(by_labels, read)):
        assert not verdict.met and verdict.absent is absent_is_done
    read.add("batch/v1", "jobs", job("gone", active=1))  # one that exists is judged as it is
    verdict = ke.check_jobs(by_name, read)
    assert not verdict.met and not verdict.absent


# POD_JSON ---------------------------------------------------------------------------------

def pods_dep(same_node):
    return dep(namespace="default", selector=ke.Selector.of({"app": "x"}), require_same_node=same_node,
               pod_name="me", pod_namespace="default")


def test_pods_any_ready_match():
    read = DictReader()
    read.add("v1", "pods", pod("me"))
    assert ke.check_pods(pods_dep(False), read).reason == "found no pods matching the labels"
    read.add("v1", "pods", pod("x-1", ready=False, labels={"app": "x"}))
    assert ke.check_pods(pods_dep(False), read).reason == "found 1 pods, but none ready"
    read.add("v1", "pods", pod("x-2", ready=True, node="node-b", labels={"app": "x"}))
    assert ke.check_pods(pods_dep(False), read).met
    verdict = ke.check_pods(pods_dep(True), read)
    assert verdict.reason == "found 1 pods on node node-a, but none ready"


# CUSTOM_RESOURCE --------------------------------------------------------------------------

WIDGETS = {"example.com/v1": [{"name": "widgets", "kind": "Widget", "namespaced": True},
                              {"name": "widgets/status", "kind": "Widget", "namespaced": True}],
           "example.com/v2": [{"name": "gadgets", "kind": "Gadget", "namespaced": False}]}


def cr_dep(kind="Widget", api_version="example.com/v1", fields=(), conditions=()):
    return dep("DEPENDENCY_CUSTOM_RESOURCE", api_version=api_version, resource_kind=kind,
               name="w", namespace="default", fields=list(fields), conditions=list(conditions),
               cluster_label="%s w" % kind)


def test_custom_resource_kind_not_served_yet():
    verdict = ke.check_custom_resource(cr_dep(), DictReader())
    assert not verdict.met and "does not serve kind Widget" in verdict.reason


def test_custom_resource_exists():
    read = DictReader(WIDGETS)
    assert ke.check_custom_resource(cr_dep(), read).reason == "not found"
    read.add("example.com/v1", "widgets", {"metadata": meta("w")})
    assert ke.check_custom_resource(cr_dep(), read).met


def test_custom_resource_cluster_scoped_ignores_namespace():
    read = DictReader(WIDGETS)
    read.add("example.com/v2", "gadgets", {"metadata": {"name": "w", "namespace": None}})
    assert ke.check_custom_resource(cr_dep("Gadget", "example.com/v2"), read).met


def test_custom_resource_fields_compare_as_text():
    read = DictReader(WIDGETS)
    read.add("example.com/v1", "widgets", {"metadata": meta("w"), "spec": {
        "replicas": 3, "paused": True, "phase": "Ready", "items": [{"id": "a"}]}})
    fields = [("spec.replicas", "3"), ("spec.paused", "true"), ("spec.phase", "Ready"),
              ("spec.items.0.id", "a")]
    assert ke.check_custom_resource(cr_dep(fields=fields), read).met
    verdict = ke.check_custom_resource(cr_dep(fields=[("spec.replicas", "4")]), read)
    assert verdict.reason == "field spec.replicas is '3', want '4'"
    verdict = ke.check_custom_resource(cr_dep(fields=[("status.phase", "Ready")]), read)
    assert "missing" in verdict.reason


def test_custom_resource_conditions():
    read = DictReader(WIDGETS)
    widget = read.add("example.com/v1", "widgets", {"metadata": meta("w"), "status": {}})
    conditions = [("Ready", "True"), ("Degraded", "False")]
    assert "no condition Ready" in ke.check_custom_resource(cr_dep(conditions=conditions), read).reason
    widget["status"]["conditions"] = [{"type": "Ready", "status": "True"},
                                      {"type": "Degraded", "status": "True"}]
    verdict = ke.check_custom_resource(cr_dep(conditions=conditions), read)
    assert verdict.reason == "condition Degraded is 'True', want 'False'"
    widget["status"]["conditions"][1]["status"] = "False"
    assert ke.check_custom_resource(cr_dep(conditions=conditions, fields=[("metadata.name", "w")]),
                                    read).met


# SOCKET -----------------------------------------------------------------------------------

def test_socket(tmp_path):
    path = tmp_path / "ovs.sock"
    verdict = ke.check_socket(dep(path=str(path)), None)
    assert not verdict.met and "No such file" in verdict.reason
    path.write_text("")
    assert ke.check_socket(dep(path=str(path)), None).met


@pytest.fixture
def open_dir():
    """A directory every user may traverse (pytest's tmp_path is private to root)."""
    directory = tempfile.mkdtemp()
    os.chmod(directory, 0o755)
    yield directory
    shutil.rmtree(directory)


@pytest.mark.skipif(os.getuid() != 0, reason="needs root to drop to another user")
def test_socket_unreadable_is_not_met(open_dir):
    """Root reads everything, so the check runs in a child that dropped to uid 65534."""
    path = os.path.join(open_dir, "secret.sock")
    with open(path, "w"):
        pass
    os.chmod(path, 0o600)
    pid = os.fork()
    if pid == 0:  # child: report through the exit status only
        try:
            if os.getuid() == 0:
                os.setuid(65534)
            verdict = ke.check_socket(dep(path=path), None)
            os._exit(0 if not verdict.met and "not readable" in verdict.reason else 1)
        except BaseException:
            os._exit(3)
    _, status = os.waitpid(pid, 0)
    assert os.WEXITSTATUS(status) == 0


def test_answers_of_the_wrong_shape_are_reasons_not_crashes():
    class Odd(DictReader):
        def resource_for(self, group_version, kind):
            return "widgets"  # discovery answered with something that is not an object
    dependency = cr_dep()
    verdict = ke.evaluate(dependency, Odd())
    assert not verdict.met and "unexpected answer" in verdict.reason


def test_custom_resource_field_path_with_digit_map_key():
    read = DictReader({"v1": [{"name": "configmaps", "kind": "ConfigMap", "namespaced": True}]})
    read.add("v1", "configmaps", {"metadata": meta("w"), "data": {"1": "x"}})
    assert ke.check_custom_resource(cr_dep("ConfigMap", "v1", fields=[("data.1", "x")]), read).met


def test_cluster_scoped_custom_resource_is_named_without_namespace():
    read = DictReader(WIDGETS)
    dependency = cr_dep("Gadget", "example.com/v2")
    dependency.label = "Gadget w in namespace default"
    verdict = ke.check_custom_resource(dependency, read)
    assert verdict.label == "Gadget w"  # how the engine names it from now on


# A check concludes from the object as it is now -------------------------------------------------

@pytest.mark.parametrize("watch", [True, False], ids=["watch", "poll"])
def test_recreated_daemonset_is_not_met_by_a_pod_of_the_old_selector(api, entrypoint, watch):
    if not watch:
        api.deny("watch", "pods")
        api.deny("watch", "daemonsets")
    api.put(k8s.pod("me", node="node-a", host_ip="192.0.2.1"))
    api.put(k8s.daemonset("agent", match_labels={"app": "agent-v1"}))
    api.put(k8s.pod("agent-old", labels={"app": "agent-v1"}, node="node-a"))
    run = entrypoint(dict(api.env(), POD_NAME="me", DEPENDENCY_DAEMONSET="agent", **FAST))
    wait_until_waiting(api)
    api.delete("apps/v1", "DaemonSet", "agent")
    api.put(k8s.daemonset("agent", match_labels={"app": "agent-v2"}))
    api.put(k8s.pod("agent-new", labels={"app": "agent-v2"}, node="node-a"))
    time.sleep(0.3)
    # the orphan of the old DaemonSet turns Ready: it says nothing of the DaemonSet as it is now
    api.put(k8s.pod("agent-old", labels={"app": "agent-v1"}, node="node-a", host_ip="192.0.2.1",
                    ready=True))
    assert_waits(run, 1.5)
    api.put(k8s.pod("agent-new", labels={"app": "agent-v2"}, node="node-a", host_ip="192.0.2.1",
                    ready=True))
    run.assert_execd()
