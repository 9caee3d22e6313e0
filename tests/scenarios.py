"""End-to-end scenarios against the fake API server, for the tests of several sections: one
per kind (its variables, a state where it is not met, the change that meets it), waiting until the
entrypoint waits, and the few set-ups that many tests share."""

import json
import time

import fakeapi as k8s
import kubernetes_entrypoint as ke
from conftest import wait_for


ME = {"POD_NAME": "me", "NAMESPACE": "default"}


def wait_until_waiting(api):
    """The entrypoint has read the cluster and is now waiting: watching, or polling round after round."""
    wait_for(lambda: api.open_watches >= 1 or len(api.requests) >= 6)
    time.sleep(0.3)


def this_pod(api, node="node-a", **extra):
    return api.put(k8s.pod("me", node=node, host_ip="192.0.2.1", **extra))


# One scenario per kind: the variables, a state where the dependency is not met, and the change
# that meets it. The same scenarios run "met at once" and "met while waiting".

def service_unmet(api):
    api.put(k8s.service("db"))
    api.put(k8s.endpoint_slice("db", addresses=(("10.0.0.1", False),)))


def service_met(api):
    api.put(k8s.endpoint_slice("db", addresses=(("10.0.0.1", False), ("10.0.0.2", True))))


def container_unmet(api):
    this_pod(api, containers=("app", "libvirt"))


def container_met(api):
    this_pod(api, containers=("app", "libvirt"), ready_containers=("libvirt",))


def daemonset_unmet(api):
    this_pod(api)
    api.put(k8s.daemonset("ovs", "infra", match_labels={"app": "ovs"}))
    # ready, but on another node: does not count
    api.put(k8s.pod("ovs-b", "infra", labels={"app": "ovs"}, node="node-b", host_ip="192.0.2.2",
                    ready=True))
    # on this node, scheduled but not started: no hostIP yet, so it must be waited for
    api.put(k8s.pod("ovs-a", "infra", labels={"app": "ovs"}, node="node-a"))


def daemonset_met(api):
    api.put(k8s.pod("ovs-a", "infra", labels={"app": "ovs"}, node="node-a", host_ip="192.0.2.1",
                    ready=True))


def jobs_unmet(api):
    api.put(k8s.job("db-init", "openstack", active=1))


def jobs_met(api):
    api.put(k8s.job("db-init", "openstack", succeeded=1))


def jobs_json_unmet(api):
    api.put(k8s.job("a", labels={"app": "nova"}, succeeded=1))
    api.put(k8s.job("b", labels={"app": "nova"}, active=1))  # a match that has not succeeded
    api.put(k8s.job("c", labels={"app": "other"}))


def jobs_json_met(api):
    api.put(k8s.job("b", labels={"app": "nova"}, succeeded=1))


def pods_unmet(api):
    this_pod(api)
    api.put(k8s.pod("x-b", labels={"app": "x"}, node="node-b", ready=True))
    api.put(k8s.pod("x-a", labels={"app": "x"}, node="node-a"))


def pods_met(api):
    api.put(k8s.pod("x-a", labels={"app": "x"}, node="node-a", host_ip="192.0.2.1", ready=True))


def widget_unmet(api):
    # the kind is not served yet (its CRD is not installed): not met, not an error
    pass


def widget_met(api):
    api.register_resource("example.com/v1", "widgets", "Widget")
    api.put(k8s.custom("example.com/v1", "Widget", "w", "default", spec={"size": 3},
                       status={"conditions": [{"type": "Ready", "status": "True"}]}))


SCENARIOS = {
    "service": ({"DEPENDENCY_SERVICE": "db"}, service_unmet, service_met),
    "container": (dict(ME, DEPENDENCY_CONTAINER="libvirt"), container_unmet, container_met),
    "daemonset": (dict(ME, DEPENDENCY_DAEMONSET="infra:ovs"), daemonset_unmet, daemonset_met),
    "jobs": ({"DEPENDENCY_JOBS": "openstack:db-init"}, jobs_unmet, jobs_met),
    "jobs_json": ({"DEPENDENCY_JOBS_JSON": '[{"labels": {"app": "nova"}}]'},
                  jobs_json_unmet, jobs_json_met),
    "pod_json": (dict(ME, DEPENDENCY_POD_JSON='[{"labels": {"app": "x"}, "requireSameNode": true}]'),
                 pods_unmet, pods_met),
    "custom_resource": (
        {"DEPENDENCY_CUSTOM_RESOURCE": json.dumps([{
            "apiVersion": "example.com/v1", "kind": "Widget", "name": "w",
            "fields": [{"key": "spec.size", "value": "3"}],
            "conditions": [{"type": "Ready"}]}])},
        widget_unmet, widget_met),
}


# Shared set-ups -------------------------------------------------------------------------------

def unmet_service(api):
    api.put(k8s.endpoint_slice("mariadb", "openstack", addresses=(("10.0.0.1", False),
                                                               ("10.0.0.2", False))))
    return dict(api.env(), DEPENDENCY_SERVICE="openstack:mariadb")


def ke_run(entrypoint, env, arguments):
    """The entrypoint with command-line arguments."""
    return entrypoint(env, arguments=arguments)


def client_for(api, **kwargs):
    return ke.ApiClient(api.url, str(api.sa_dir), **kwargs)


def parse(env):
    return ke.parse_dependencies(env, ke.read_settings(env))
