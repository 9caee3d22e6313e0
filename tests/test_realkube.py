"""On a real kube-apiserver (v1.28, RBAC on, audit log on): what the fake cannot prove. Each
openstack-helm init container, with its chart's own Role, gets what it waits for without one
refused request in the audit log; the Role that --rbac prints, applied as printed, lets it watch
and write Events, never refused.

Needs a kit (REALKUBE_KIT: a folder with start.sh, stop.sh, admin.kubeconfig, pki/ca.crt, as
bench/README.md says) and kubectl; skipped without them. The kit must not be running: the test
starts it with an audit policy of its own (one event per request, with the answer's code) and
stops it after. Workers of pytest-xdist take turns (a lock in the kit's run/ folder)."""

import fcntl
import json
import os
import shutil
import subprocess
import time

import pytest

from conftest import wait_for
from test_rbac import CASES

KIT = os.environ.get("REALKUBE_KIT", "")
pytestmark = pytest.mark.skipif(
    not (KIT and os.path.exists(os.path.join(KIT, "start.sh")) and shutil.which("kubectl")),
    reason="no kube-apiserver kit (REALKUBE_KIT) or no kubectl")
PORT = "6443"
RUN = "%x" % (int(time.time()) % 0xfffff)  # in names: the kit keeps the objects of earlier runs
AUDIT_POLICY = """apiVersion: audit.k8s.io/v1
kind: Policy
omitStages: ["RequestReceived", "ResponseStarted", "Panic"]
rules:
- level: Metadata
"""


def kubectl(*arguments, stdin=None):
    done = subprocess.run(["kubectl", "--kubeconfig", os.path.join(KIT, "admin.kubeconfig")]
                          + list(arguments), input=stdin, stdout=subprocess.PIPE,
                          stderr=subprocess.PIPE, universal_newlines=True, timeout=60)
    assert done.returncode == 0, "kubectl %s: %s" % (" ".join(arguments), done.stderr)
    return done.stdout


def apply(*objects):
    kubectl("apply", "-f", "-", stdin="\n".join(json.dumps(obj) for obj in objects))


def new_namespace(name):
    """A namespace with its `default` service account (the kit runs no controller to make it)."""
    apply({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": name}},
          {"apiVersion": "v1", "kind": "ServiceAccount",
           "metadata": {"name": "default", "namespace": name}})


def patch_status(kind, name, namespace, status):
    kubectl("patch", kind, name, "-n", namespace, "--subresource=status", "--type=merge",
            "-p", json.dumps({"status": status}))


class Cluster:
    """The running kit: its audit log, and service accounts made on demand."""

    def __init__(self, where):
        self.where, self.audit_log = where, os.path.join(where, "audit.log")

    def account(self, namespace, name, tmp_path):
        """A service-account folder (token, ca.crt, namespace) as the kubelet mounts it."""
        apply({"apiVersion": "v1", "kind": "ServiceAccount",
               "metadata": {"name": name, "namespace": namespace}})
        folder = tmp_path / ("sa-" + name)
        folder.mkdir()
        (folder / "token").write_text(kubectl("create", "token", name, "-n", namespace).strip())
        shutil.copy(os.path.join(KIT, "pki", "ca.crt"), str(folder / "ca.crt"))
        (folder / "namespace").write_text(namespace)
        return {"KUBERNETES_SERVICE_HOST": "127.0.0.1", "KUBERNETES_SERVICE_PORT": PORT,
                "ENTRYPOINT_SERVICEACCOUNT_DIR": str(folder)}

    def wait_until_read(self, namespace, name):
        """The account has read what it waits for (a get or list answered), so it is waiting."""
        wait_for(lambda: any(verb in ("get", "list") and code == 200 for verb, _, code
                             in self.answers(namespace, name)), timeout=20)

    def answers(self, namespace, name):
        """(verb, resource, code) of every request the account made, from the audit log."""
        user = "system:serviceaccount:%s:%s" % (namespace, name)
        found = []
        with open(self.audit_log) as f:
            for line in f:
                event = json.loads(line)
                if event.get("user", {}).get("username") == user:
                    found.append((event.get("verb"), event.get("objectRef", {}).get("resource"),
                                  event.get("responseStatus", {}).get("code")))
        return found


@pytest.fixture(scope="module")
def cluster(tmp_path_factory):
    where = str(tmp_path_factory.mktemp("realkube"))
    os.makedirs(os.path.join(KIT, "run"), exist_ok=True)
    with open(os.path.join(KIT, "run", "tests.lock"), "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if subprocess.run(["pgrep", "-f", os.path.join(KIT, "bin", "kube-apiserver")],
                          stdout=subprocess.DEVNULL).returncode == 0:
            pytest.skip("the kit is running: stop it (stop.sh) so that the test can start it "
                        "with its own audit policy")
        policy = os.path.join(where, "policy.yaml")
        with open(policy, "w") as f:
            f.write(AUDIT_POLICY)
        env = dict(os.environ, NO_BOOTSTRAP="1", K8S_PORT=PORT, APISERVER_EXTRA_ARGS=(
            "--audit-policy-file=%s --audit-log-path=%s" % (policy, os.path.join(where, "audit.log"))))
        subprocess.run([os.path.join(KIT, "start.sh")], env=env, check=True,
                       stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, timeout=180)
        try:
            wait_for(lambda: "default" in kubectl("get", "namespaces", "-o", "name"), timeout=60)
            yield Cluster(where)
        finally:
            subprocess.run([os.path.join(KIT, "stop.sh")], stdout=subprocess.DEVNULL,
                           stderr=subprocess.DEVNULL)


def pod(name, namespace, labels=None):
    return {"apiVersion": "v1", "kind": "Pod",
            "metadata": {"name": name, "namespace": namespace, "labels": labels or {}},
            "spec": {"nodeName": "node-a", "containers": [{"name": "main", "image": "app"}]}}


def service_not_ready(name, namespace):
    return [{"apiVersion": "v1", "kind": "Service", "metadata": {"name": name, "namespace": namespace},
             "spec": {"ports": [{"port": 80}], "selector": {"app": name}}},
            endpoint_slice(name, namespace, ready=False)]


def endpoint_slice(name, namespace, ready):
    return {"apiVersion": "discovery.k8s.io/v1", "kind": "EndpointSlice",
            "metadata": {"name": name + "-1", "namespace": namespace,
                         "labels": {"kubernetes.io/service-name": name}},
            "addressType": "IPv4", "ports": [{"port": 80}],
            "endpoints": [{"addresses": ["10.0.0.1"], "conditions": {"ready": ready}}]}


def job(name, namespace):
    return {"apiVersion": "batch/v1", "kind": "Job", "metadata": {"name": name, "namespace": namespace},
            "spec": {"template": {"spec": {"restartPolicy": "Never",
                                           "containers": [{"name": "main", "image": "job"}]}}}}


def met_job(name, namespace):
    now = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
    patch_status("job", name, namespace, {
        "startTime": now, "completionTime": now, "succeeded": 1,
        "conditions": [{"type": "Complete", "status": "True", "lastTransitionTime": now}]})


def waited_for(env, namespace):
    """The objects the dependencies read, there and not met; a function that meets them all."""
    from scenarios import parse
    objects, meet = [], []
    for dep in parse(env):
        variable = dep.kind.variable
        if variable == "DEPENDENCY_SERVICE":
            objects += service_not_ready(dep.name, dep.namespace)
            meet.append(lambda dep=dep: apply(endpoint_slice(dep.name, dep.namespace, True)))
        elif variable == "DEPENDENCY_JOBS":
            objects.append(job(dep.name, dep.namespace))
            meet.append(lambda dep=dep: met_job(dep.name, dep.namespace))
        elif variable == "DEPENDENCY_POD_JSON":
            labels = {key: values[0] for key, _, values in dep.selector}
            objects.append(pod("waited-for", dep.namespace, labels))
            meet.append(lambda dep=dep: patch_status("pod", "waited-for", dep.namespace, {
                "phase": "Running", "conditions": [{"type": "Ready", "status": "True"}]}))
        else:
            raise AssertionError("no case reads %s yet: add it here" % variable)
    apply(*objects)
    return lambda: [step() for step in meet]


def in_its_own_namespace(case):
    """The case with "openstack" renamed to a namespace of its own, so that cases (and runs, the
    kit keeping its objects) do not meet."""
    namespace = "os-%s-%s" % (case["chart"], RUN)
    return json.loads(json.dumps(case).replace("openstack", namespace)), namespace


@pytest.mark.parametrize("case", CASES, ids=[case["chart"] for case in CASES])
def test_openstack_helm_init_container_is_never_refused(cluster, entrypoint, tmp_path, case):
    case, namespace = in_its_own_namespace(case)
    new_namespace(namespace)
    rbac = case["rbac"]
    for role in rbac["roles"]:
        role["metadata"].setdefault("namespace", namespace)
    apply(*rbac["roles"] + rbac["clusterRoles"] + rbac["roleBindings"] + rbac["clusterRoleBindings"])
    pod_name = case["workload"]["name"] + "-x7k2p"
    apply(pod(pod_name, namespace))
    env = {name: value for name, value in case["env"].items() if name != "PATH"}
    env.update(cluster.account(namespace, case["serviceAccount"], tmp_path),
               POD_NAME=pod_name, NAMESPACE=namespace)
    meet = waited_for(env, namespace)
    run = entrypoint(env)
    cluster.wait_until_read(namespace, case["serviceAccount"])
    assert run.running() and run.report() is None
    meet()
    run.assert_execd()
    answers = cluster.answers(namespace, case["serviceAccount"])
    assert ("create", "selfsubjectrulesreviews", 201) in answers
    assert [a for a in answers if a[2] == 403] == [], run.stdout


def test_the_role_rbac_prints_lets_it_watch_and_write_events(cluster, entrypoint, tmp_path):
    namespace = "rbac-printed-" + RUN
    new_namespace(namespace)
    env = {"DEPENDENCY_SERVICE": "db", "DEPENDENCY_JOBS": "db-sync", "POD_NAME": "web-0",
           "NAMESPACE": namespace}
    printed = entrypoint(env, arguments=["--rbac"])
    assert printed.finish() == 0
    roles = json.loads(printed.stdout)
    kubectl("apply", "-f", "-", stdin=printed.stdout)
    for role in roles["items"]:
        kubectl("create", "rolebinding", role["metadata"]["name"], "--role",
                role["metadata"]["name"], "--serviceaccount", namespace + ":web", "-n", namespace)
    apply(pod("web-0", namespace))
    env.update(cluster.account(namespace, "web", tmp_path))
    meet = waited_for(env, namespace)
    run = entrypoint(env)
    cluster.wait_until_read(namespace, "web")
    assert run.running() and run.report() is None
    meet()
    run.assert_execd()
    answers = cluster.answers(namespace, "web")
    assert [a for a in answers if a[2] == 403] == [], run.stdout
    assert {("watch", "endpointslices"), ("watch", "jobs"), ("create", "events")} <= {
        a[:2] for a in answers}
    assert "the Role allows no" not in run.stdout
    assert json.loads(kubectl("get", "events", "-n", namespace, "-o", "json"))["items"]
