"""The Role, known before asking: one SelfSubjectRulesReview per namespace says what the account
may do, so that nothing is sent that would be refused (no 403 in an audit log); a review refused,
failed, incomplete or of the wrong shape is not believed, and reads are tried as without one; a
Role granted while waiting is used. --rbac prints the Roles that let it do its best, --check says
what the account lacks. openstack-helm's init containers run with their charts' own Roles."""

import json
import os

import pytest

import fakeapi as k8s
import kubernetes_entrypoint as ke
from conftest import wait_for
from scenarios import client_for, parse, wait_until_waiting

SLICES = ("discovery.k8s.io/v1", "endpointslices", "default")
DB = ke.Selector.of({"kubernetes.io/service-name": "db"})
GET_AND_LIST = [{"kind": "Role", "metadata": {"name": "r", "namespace": "default"}, "rules": [
    {"apiGroups": ["", "discovery.k8s.io", "batch"], "verbs": ["get", "list"],
     "resources": ["services", "endpoints", "endpointslices", "jobs", "pods"]}]}]


def a_reader(api):
    now = [0.0]
    read = ke.ApiReader(client_for(api), interval=0.1, clock=lambda: now[0])
    return read, now


def slices_of(read):
    read.begin()
    read.list(*SLICES, labels=DB)
    [collection] = read.collections.values()
    return collection


# What the review tells the reader --------------------------------------------------------------

def test_get_and_list_only_polls_and_nothing_is_refused(api, entrypoint):
    api.use_roles(GET_AND_LIST)
    api.put(k8s.endpoint_slice("db", addresses=(("10.0.0.1", False),)))
    run = entrypoint(dict(api.env(), DEPENDENCY_SERVICE="db", POD_NAME="web-0"))
    wait_until_waiting(api)
    api.put(k8s.endpoint_slice("db"))
    run.assert_execd()
    assert api.refused() == [] and not [r for r in api.requests if r.verb == "watch"]
    said = [line for line in run.stdout.splitlines() if "the Role allows no watch" in line]
    assert len(said) == 1 and "endpointslices.discovery.k8s.io" in said[0]
    assert "polling it every 0.2s instead" in said[0] and "--rbac prints a Role" in said[0]
    assert "the Role allows no 'create' on 'events'" in run.stdout


def polled_for_want_of_watch(api):
    """A reader whose Role allows no watch on EndpointSlices, and the collection it polls."""
    api.deny("watch", "endpointslices")
    api.put(k8s.endpoint_slice("db", addresses=(("10.0.0.1", False),)))
    read, now = a_reader(api)
    read.role.review(["default"])
    collection = slices_of(read)
    assert collection.mode == "poll"
    return read, now, collection


def test_a_watch_granted_while_waiting_is_used(api):
    read, now, collection = polled_for_want_of_watch(api)
    api.allow("watch", "endpointslices")
    now[0] += ke.REVIEW_EVERY - 1
    read.poll(read.end())
    assert collection.mode == "poll"  # not reviewed again yet
    now[0] += 1
    read.poll(read.end())
    assert collection.mode == "watch"
    read.follow(read.end())
    wait_for(lambda: api.open_watches == 1)
    api.put(k8s.endpoint_slice("db"))
    assert read.wait(5) == {collection.key}
    assert api.refused() == []
    reviews = [r for r in api.requests if r.resource == "selfsubjectrulesreviews"]
    assert len(reviews) == 2
    collection.stopped = True


def test_a_watch_granted_after_several_reviews_is_used_still(api):
    read, now, collection = polled_for_want_of_watch(api)
    for _ in range(3):  # reviewed again, nothing changed: asked again later all the same
        now[0] += ke.REVIEW_EVERY
        read.poll(read.end())
    assert collection.mode == "poll"
    api.allow("watch", "endpointslices")
    now[0] += ke.REVIEW_EVERY
    read.poll(read.end())
    assert collection.mode == "watch"
    assert len([r for r in api.requests if r.resource == "selfsubjectrulesreviews"]) == 5


def test_rules_in_any_order_and_limited_by_name():
    rules = ke.review_rules({"status": {"incomplete": False, "resourceRules": [
        {"verbs": ["get", "list", "watch"], "apiGroups": [""], "resources": ["pods"],
         "resourceNames": ["me"]},
        {"verbs": ["list", "watch"], "apiGroups": [""], "resources": ["pods"]}]}})
    role = ke.Permissions(None)
    role.rules["default"] = rules
    assert role.may("watch", "", "pods", "default", "me") is True
    assert role.may("watch", "", "pods", "default") is True
    assert role.may("get", "", "pods", "default", "me") is True
    assert role.may("get", "", "pods", "default", "you") is False


@pytest.mark.parametrize("falsy", [{}, "", 0, False])
def test_a_field_of_the_wrong_type_makes_the_review_malformed(falsy):
    for field in ("verbs", "apiGroups", "resources", "resourceNames"):
        rule = {"verbs": ["get"], "apiGroups": [""], "resources": ["pods"], field: falsy}
        assert ke.review_rules({"status": {"incomplete": False, "resourceRules": [rule]}}) is None


def test_a_namespace_where_everything_is_allowed_is_not_reviewed_again(api):
    read, now = a_reader(api)
    read.role.review(["default"])
    slices_of(read)
    now[0] += 10 * ke.REVIEW_EVERY
    read.poll(read.end())
    assert len([r for r in api.requests if r.resource == "selfsubjectrulesreviews"]) == 1


def test_a_failed_review_is_asked_again_a_refused_one_never(api):
    api.inject(status=500, match="selfsubjectrulesreviews")
    read, now = a_reader(api)
    read.role.review(["default"])
    assert read.role.may("watch", "discovery.k8s.io", "endpointslices", "default") is None
    now[0] += ke.REVIEW_EVERY
    read.role.review_due()
    assert read.role.may("watch", "discovery.k8s.io", "endpointslices", "default") is True
    api.deny("create", "selfsubjectrulesreviews")
    read.role.review(["other"])
    now[0] += 10 * ke.REVIEW_EVERY
    read.role.review_due()
    assert read.role.may("get", "", "pods", "other") is None
    assert [r.namespace for r in api.refused()] == [None]  # once


HOSTILE_STATUSES = {
    "incomplete": lambda status: dict(status, incomplete=True),
    "incomplete missing": lambda status: {"resourceRules": status["resourceRules"]},
    "incomplete as a string": lambda status: dict(status, incomplete="false"),
    "not an object": lambda status: "everything",
    "rules not a list": lambda status: dict(status, resourceRules={"verbs": ["*"]}),
    "verbs a string": lambda status: dict(status, resourceRules=[
        {"verbs": "get", "apiGroups": [""], "resources": ["pods"]}]),
    "verbs not strings": lambda status: dict(status, resourceRules=[
        {"verbs": [1], "apiGroups": [""], "resources": ["pods"]}]),
    "a rule not an object": lambda status: dict(status, resourceRules=["get pods"]),
}


@pytest.mark.parametrize("hostile", sorted(HOSTILE_STATUSES))
def test_a_review_of_the_wrong_shape_is_not_believed(api, hostile):
    """Not told what is allowed: the watch is tried, refused, and the collection polled."""
    api.deny("watch", "endpointslices")
    api.review_status = lambda namespace, status: HOSTILE_STATUSES[hostile](status)
    api.put(k8s.endpoint_slice("db", addresses=(("10.0.0.1", False),)))
    read, _ = a_reader(api)
    read.role.review(["default"])
    assert read.role.may("list", "discovery.k8s.io", "endpointslices", "default") is None
    collection = slices_of(read)
    assert collection.mode == "watch"
    read.follow(read.end())
    wait_for(lambda: collection.mode == "poll")
    assert [r.verb for r in api.refused()] == ["watch"]


def test_a_review_that_says_too_much_is_not_believed_over_a_refusal(api, entrypoint):
    api.deny("watch", "endpointslices")
    api.review_status = lambda namespace, status: dict(status, resourceRules=[
        {"verbs": ["*"], "apiGroups": ["*"], "resources": ["*"]}])
    api.put(k8s.endpoint_slice("db", addresses=(("10.0.0.1", False),)))
    run = entrypoint(dict(api.env(), DEPENDENCY_SERVICE="db"))
    wait_until_waiting(api)
    api.put(k8s.endpoint_slice("db"))
    run.assert_execd()
    assert [r.verb for r in api.refused()] == ["watch"]
    assert "API refused watch" in run.stdout


def test_a_server_without_reviews_is_read_as_before(api, entrypoint):
    api.inject(status=404, match="selfsubjectrulesreviews", times=None)
    api.put(k8s.endpoint_slice("db"))
    run = entrypoint(dict(api.env(), DEPENDENCY_SERVICE="db", ENTRYPOINT_LOG_LEVEL="debug"))
    run.assert_execd()
    assert "no rules review of namespace default (404" in run.stdout


# openstack-helm's init containers, each with its chart's own Role --------------------------------

CASES_FILE = os.path.join(os.path.dirname(os.path.dirname(os.path.dirname(
    os.path.abspath(__file__)))), "shared", "openstack-helm-init-containers.json")
CASES = json.load(open(CASES_FILE))["cases"] if os.path.exists(CASES_FILE) else []


def bound_roles(rbac):
    """The Roles and ClusterRoles bound to the account, as a use_roles() list: a ClusterRole
    bound by a RoleBinding counts in the binding's namespace only."""
    by_name = {(role["kind"], role["metadata"]["name"]): role
               for role in rbac["roles"] + rbac["clusterRoles"]}
    roles = []
    for binding in rbac["roleBindings"]:
        role = by_name[(binding["roleRef"]["kind"], binding["roleRef"]["name"])]
        roles.append({"kind": "Role", "metadata": {"namespace": binding["metadata"].get(
            "namespace", "openstack")}, "rules": role["rules"]})
    for binding in rbac["clusterRoleBindings"]:
        roles.append(by_name[("ClusterRole", binding["roleRef"]["name"])])
    return roles


def cluster_as_waited_for(api, env, pod_name, namespace):
    """Every object the dependencies read, there and not met; the function that meets them all."""
    api.put(k8s.pod(pod_name, namespace, node="node-a"))
    meet = []
    for dep in parse(env):
        variable = dep.kind.variable
        if variable == "DEPENDENCY_SERVICE":
            api.put(k8s.endpoint_slice(dep.name, dep.namespace, addresses=(("10.0.0.1", False),)))
            meet.append(k8s.endpoint_slice(dep.name, dep.namespace))
        elif variable == "DEPENDENCY_JOBS":
            api.put(k8s.job(dep.name, dep.namespace, active=1))
            meet.append(k8s.job(dep.name, dep.namespace, succeeded=1))
        elif variable == "DEPENDENCY_POD_JSON":
            labels = {key: values[0] for key, _, values in dep.selector}
            api.put(k8s.pod("waited-for", dep.namespace, labels=labels, node="node-a"))
            meet.append(k8s.pod("waited-for", dep.namespace, labels=labels, node="node-a",
                                ready=True))
        else:
            raise AssertionError("no case reads %s yet: add it here" % variable)
    return lambda: [api.put(obj) for obj in meet]


@pytest.mark.skipif(not CASES, reason="no openstack-helm-init-containers.json beside the checkout")
@pytest.mark.parametrize("case", CASES, ids=[case["chart"] for case in CASES])
def test_openstack_helm_init_container_with_its_charts_role_is_never_refused(api, entrypoint, case):
    namespace = case["workload"]["namespace"]
    pod_name = case["workload"]["name"] + "-x7k2p"
    (api.sa_dir / "namespace").write_text(namespace)
    api.use_roles(bound_roles(case["rbac"]))
    env = {name: value for name, value in case["env"].items() if name != "PATH"}
    env.update(api.env(), POD_NAME=pod_name, NAMESPACE=namespace)
    meet = cluster_as_waited_for(api, env, pod_name, namespace)
    run = entrypoint(env)
    wait_until_waiting(api)
    meet()
    run.assert_execd()
    assert api.refused() == [], run.stdout
    assert "Traceback" not in run.stdout + run.stderr


# --rbac and --check ---------------------------------------------------------------------------

def test_rbac_prints_roles_that_allow_everything_it_does(api, entrypoint):
    env = {"DEPENDENCY_SERVICE": "db", "DEPENDENCY_JOBS": "other:db-sync", "POD_NAME": "web-0",
           "NAMESPACE": "default"}
    run = entrypoint(env, arguments=["--rbac"])  # no API server given: none is needed
    assert run.finish() == 0
    printed = json.loads(run.stdout)  # stdout is JSON only: the hint is on stderr
    assert (printed["apiVersion"], printed["kind"]) == ("v1", "List")
    roles = {role["metadata"]["namespace"]: role for role in printed["items"]}
    assert sorted(roles) == ["default", "other"]
    assert all(role["kind"] == "Role" and role["metadata"]["name"].startswith(
        "kubernetes-entrypoint-") for role in roles.values())
    assert {"apiGroups": ["batch"], "resources": ["jobs"], "verbs": ["get", "list", "watch"]} \
        in roles["other"]["rules"]
    assert {"apiGroups": [""], "resources": ["events"], "verbs": ["create", "patch"]} \
        in roles["default"]["rules"]
    assert "rolebinding" in run.stderr
    # Applied as printed: every read watched, Events written, nothing refused.
    api.use_roles(printed["items"])
    api.put(k8s.pod("web-0", node="node-a"))
    api.put(k8s.endpoint_slice("db", addresses=(("10.0.0.1", False),)))
    api.put(k8s.job("db-sync", "other", active=1))
    run = entrypoint(dict(api.env(), **env))
    wait_for(lambda: api.open_watches == 2)
    api.put(k8s.endpoint_slice("db"))
    api.put(k8s.job("db-sync", "other", succeeded=1))
    run.assert_execd()
    assert api.refused() == [] and api.events()
    assert "the Role allows no" not in run.stdout


def test_check_knows_a_role_limited_by_name_and_discovered_plurals(api, entrypoint):
    api.register_resource("example.com/v1", "redis", "Redis")
    api.put(k8s.custom("example.com/v1", "Redis", "cache", "default"))
    api.put(k8s.pod("web-0", node="node-a", ready=True, ready_containers=("app",)))
    api.use_roles([{"kind": "Role", "metadata": {"namespace": "default"}, "rules": [
        {"apiGroups": [""], "resources": ["pods"], "verbs": ["get", "list", "watch"],
         "resourceNames": ["web-0"]},
        {"apiGroups": ["example.com"], "resources": ["redis"], "verbs": ["get", "list", "watch"]},
        {"apiGroups": [""], "resources": ["events"], "verbs": ["create", "patch"]}]}])
    env = dict(api.env(), POD_NAME="web-0", DEPENDENCY_CONTAINER="app",
               DEPENDENCY_CUSTOM_RESOURCE=json.dumps([{"apiVersion": "example.com/v1",
                                                       "kind": "Redis", "name": "cache"}]))
    run = entrypoint(env, arguments=["--check"])
    assert run.finish() == 0, run.stdout
    assert "lacks" not in run.stdout and api.refused() == []


def test_an_event_kept_while_not_allowed_is_written_once_allowed(api):
    from conftest import FakeClock
    api.deny("create", "events")
    api.put(k8s.pod("web-0", node="node-a"))
    clock = FakeClock()
    role = ke.Permissions(client_for(api), clock)
    role.review(["default"])
    events = ke.Events(lambda: client_for(api), "default", "web-0", background=False,
                       clock=clock, role=role)
    events.waiting("Service db in namespace default", "0 of 1 endpoints ready")
    events.write_next(False)
    assert api.events() == []
    api.allow("create", "events")
    clock.sleep(ke.REVIEW_EVERY)
    role.review_due()
    clock.sleep(60)
    events.write_next(False)
    assert [e["reason"] for e in api.events()] == ["Waiting"]
    assert api.refused() == []


def test_rbac_with_bad_input_is_exit_2(entrypoint):
    run = entrypoint({"DEPENDENCY_SERVICE": "a:b:c"}, arguments=["--rbac"])
    assert run.finish() == 2 and run.stdout == ""
    assert "DEPENDENCY_SERVICE" in run.stderr


def test_check_says_what_the_account_lacks(api, entrypoint):
    api.use_roles(GET_AND_LIST)
    api.put(k8s.endpoint_slice("db"))
    run = entrypoint(dict(api.env(), DEPENDENCY_SERVICE="db", POD_NAME="web-0"),
                     arguments=["--check"])
    assert run.finish() == 0
    [lacking] = [line for line in run.stdout.splitlines() if "the account lacks" in line]
    assert "endpoints" not in lacking.replace("endpointslices", "")  # read only without slices
    assert "watch on endpointslices.discovery.k8s.io in namespace default" in lacking
    assert "create, patch on events in namespace default" in lacking
    assert api.refused() == []
