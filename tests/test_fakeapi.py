"""The fake API server itself, checked with plain stdlib HTTPS clients (urllib, http.client, ssl)."""

import http.client
import json
import socket
import time
import urllib.parse

import pytest

from conftest import fetch, fetch_json, tls
from fakeapi import (FakeKubeAPI, custom, daemonset, endpoint_slice, endpoints, job, pod,
                     service)

PODS = "/api/v1/namespaces/default/pods"


@pytest.fixture
def api(tmp_path):
    with FakeKubeAPI(tmp_path) as server:
        yield server


def names(document):
    return [item["metadata"]["name"] for item in document["items"]]


def connect(api, timeout=5):
    return http.client.HTTPSConnection(api.host, api.port, context=tls(api), timeout=timeout)


def open_watch(api, path, timeout=5):
    """Start a watch on its own connection; returns (connection, response)."""
    conn = connect(api, timeout)
    conn.request("GET", path, headers={"Authorization": "Bearer " + api.token})
    return conn, conn.getresponse()


def next_event(response):
    line = response.readline()
    return json.loads(line) if line else None


def wait_for_watches(api, count):
    deadline = time.monotonic() + 5
    while api.open_watches < count:
        assert time.monotonic() < deadline, "watch did not open"
        time.sleep(0.01)


# ---------------------------------------------------------------------------
# Setup, service account, authentication
# ---------------------------------------------------------------------------


def test_service_account_directory_and_env(api):
    assert (api.sa_dir / "token").read_text() == api.token
    assert (api.sa_dir / "namespace").read_text() == "default"
    assert api.ca_path == api.sa_dir / "ca.crt"
    assert api.ca_path.read_text().startswith("-----BEGIN CERTIFICATE-----")
    assert api.url == "https://127.0.0.1:%d" % api.port
    assert api.env() == {
        "KUBERNETES_SERVICE_HOST": "127.0.0.1",
        "KUBERNETES_SERVICE_PORT": str(api.port),
        "ENTRYPOINT_SERVICEACCOUNT_DIR": str(api.sa_dir),
    }


def test_certificate_is_valid_for_localhost_too(api):
    conn = http.client.HTTPSConnection("localhost", api.port, context=tls(api), timeout=5)
    conn.request("GET", "/api", headers={"Authorization": "Bearer " + api.token})
    assert conn.getresponse().status == 200
    conn.close()


@pytest.mark.parametrize("token", [False, "wrong"])
def test_missing_or_wrong_token_is_401(api, token):
    status, body = fetch_json(api, PODS, token=token)
    assert status == 401
    assert body == {"kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Failure",
                    "message": "Unauthorized", "reason": "Unauthorized", "code": 401}
    assert api.requests[-1].status == 401


def test_token_rotation_then_revocation(api):
    old = api.token
    new = api.rotate_token()
    assert new == api.token != old
    assert (api.sa_dir / "token").read_text() == new
    assert fetch(api, PODS, token=old)[0] == 200
    assert fetch(api, PODS, token=new)[0] == 200
    api.revoke_old_tokens()
    assert fetch(api, PODS, token=old)[0] == 401
    assert fetch(api, PODS, token=new)[0] == 200


def test_other_methods_are_405(api):
    for method in ("POST", "DELETE", "PUT"):
        status, body = fetch_json(api, PODS, method=method)
        assert (status, body["reason"], body["code"]) == (405, "MethodNotAllowed", 405)


def send_json(api, method, path, document, content_type="application/json"):
    """A POST or PATCH with a JSON body; returns (status, answer)."""
    conn = connect(api)
    conn.request(method, path, body=json.dumps(document).encode(), headers={
        "Authorization": "Bearer " + api.token, "Content-Type": content_type})
    response = conn.getresponse()
    answer = json.loads(response.read())
    conn.close()
    return response.status, answer


EVENTS = "/api/v1/namespaces/default/events"


def an_event(name="web-0.1", namespace="default", **fields):
    return dict({"apiVersion": "v1", "kind": "Event",
                 "metadata": {"name": name, "namespace": namespace},
                 "involvedObject": {"kind": "Pod", "name": "web-0", "namespace": namespace},
                 "reason": "Waiting", "message": "m", "type": "Normal", "count": 1}, **fields)


def test_events_are_created_patched_and_recorded(api):
    status, created = send_json(api, "POST", EVENTS, an_event())
    assert status == 201 and created["metadata"]["uid"]
    assert send_json(api, "POST", EVENTS, an_event())[0] == 409
    status, patched = send_json(api, "PATCH", EVENTS + "/web-0.1", {"count": 2},
                                "application/merge-patch+json")
    assert (status, patched["count"]) == (200, 2)
    assert [e["count"] for e in api.events()] == [2]
    assert send_json(api, "PATCH", EVENTS + "/missing", {"count": 2},
                     "application/merge-patch+json")[0] == 404
    assert send_json(api, "PATCH", EVENTS + "/web-0.1", {"message": "other"},
                     "application/merge-patch+json")[0] == 422
    assert send_json(api, "PATCH", EVENTS + "/web-0.1", {"count": 3})[0] == 415


def test_events_are_validated_and_refused_as_rbac_says(api):
    wrong_namespace = an_event(involvedObject={"kind": "Pod", "name": "p", "namespace": "other"})
    assert send_json(api, "POST", EVENTS, wrong_namespace)[0] == 422
    assert send_json(api, "POST", EVENTS, an_event(name="Not_A_Name"))[0] == 422
    api.deny("create", "events")
    status, answer = send_json(api, "POST", EVENTS, an_event())
    assert status == 403 and "cannot create resource" in answer["message"]
    assert api.events() == []


def test_writes_other_than_events_are_405(api):
    status, body = send_json(api, "POST", "/api/v1/namespaces/default/pods", {})
    assert (status, body["reason"]) == (405, "MethodNotAllowed")


def test_connections_are_kept_alive(api):
    conn = connect(api)
    for path in (PODS, "/api/v1/namespaces/default/pods/missing", "/api/v1"):
        conn.request("GET", path, headers={"Authorization": "Bearer " + api.token})
        response = conn.getresponse()
        assert response.getheader("Content-Length") == str(len(response.read()))
    conn.close()
    assert api.connections == 1


def test_stop_and_start_again_keeps_port_and_objects(tmp_path):
    api = FakeKubeAPI(tmp_path)
    api.start()
    port = api.port
    api.put(pod("kept"))
    api.stop()
    with pytest.raises(OSError):
        fetch(api, PODS, timeout=1)
    with api:
        assert api.port == port
        assert names(fetch_json(api, PODS)[1]) == ["kept"]


# ---------------------------------------------------------------------------
# Objects: put/get/delete/update, get and list over HTTP
# ---------------------------------------------------------------------------


def test_put_assigns_bookkeeping_metadata(api):
    first = api.put(pod("a"))
    meta = first["metadata"]
    assert meta["namespace"] == "default"
    assert meta["resourceVersion"] == "1"
    assert meta["uid"] and meta["creationTimestamp"].endswith("Z")
    second = api.put(pod("a", labels={"v": "2"}))
    assert second["metadata"]["resourceVersion"] == "2"
    assert second["metadata"]["uid"] == meta["uid"]
    assert api.put(custom("v1", "Namespace", "ns1", namespace="ignored"))["metadata"].get("namespace") is None
    assert api.resource_version == "3"


def test_objects_are_copied_in_and_out(api):
    original = pod("a")
    stored = api.put(original)
    original["metadata"]["name"] = "changed"
    stored["spec"]["nodeName"] = "changed"
    api.get("v1", "Pod", "a")["spec"]["nodeName"] = "changed"
    assert "nodeName" not in api.get("v1", "Pod", "a")["spec"]


def test_update_and_delete(api):
    api.put(pod("a"))
    updated = api.update("v1", "Pod", "a", lambda obj: obj["metadata"].update(labels={"k": "v"}))
    assert updated["metadata"]["labels"] == {"k": "v"}
    assert updated["metadata"]["resourceVersion"] == "2"
    deleted = api.delete("v1", "Pod", "a")
    assert deleted["metadata"]["name"] == "a"
    assert api.get("v1", "Pod", "a") is None
    assert api.delete("v1", "Pod", "a") is None
    assert api.resource_version == "3"
    with pytest.raises(KeyError):
        api.update("v1", "Pod", "a", lambda obj: None)
    with pytest.raises(KeyError):
        api.put(custom("example.com/v1", "Unknown", "x"))


def test_get_object(api):
    stored = api.put(pod("a", namespace="ns1"))
    status, body = fetch_json(api, "/api/v1/namespaces/ns1/pods/a")
    assert status == 200
    assert body == stored
    assert (body["kind"], body["apiVersion"]) == ("Pod", "v1")
    api.put(custom("v1", "Namespace", "ns1"))
    assert fetch_json(api, "/api/v1/namespaces/ns1")[1]["kind"] == "Namespace"
    api.put(job("j"))
    assert fetch_json(api, "/apis/batch/v1/namespaces/default/jobs/j")[1]["kind"] == "Job"


def test_missing_objects_are_404_with_status_body(api):
    status, body = fetch_json(api, "/api/v1/namespaces/default/pods/x")
    assert status == 404
    assert body == {"kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Failure",
                    "message": 'pods "x" not found', "reason": "NotFound",
                    "details": {"name": "x", "kind": "pods"}, "code": 404}
    status, body = fetch_json(api, "/apis/apps/v1/namespaces/default/deployments/d")
    assert body["message"] == 'deployments.apps "d" not found'
    assert body["details"] == {"name": "d", "group": "apps", "kind": "deployments"}


@pytest.mark.parametrize("path", [
    "/", "/healthz", "/api/v2", "/api/v1/widgets", "/api/v1/namespaces/default/widgets",
    "/api/v1/pods/a",                          # namespaced resource without its namespace
    "/api/v1/namespaces/default/nodes",        # cluster-scoped resource in a namespace
    "/api/v1/namespaces/default/pods/a/status",
    "/apis/nope.example.com", "/apis/nope.example.com/v1", "/apis/apps/v2/deployments",
])
def test_unknown_paths_are_404(api, path):
    status, body = fetch_json(api, path)
    assert (status, body["reason"]) == (404, "NotFound")
    assert body["message"] == "the server could not find the requested resource"


def test_list_in_namespace_and_across_namespaces(api):
    for namespace, name in (("b", "p2"), ("a", "p3"), ("b", "p1"), ("a", "p0")):
        api.put(pod(name, namespace=namespace))
    status, body = fetch_json(api, "/api/v1/namespaces/b/pods")
    assert status == 200
    assert (body["kind"], body["apiVersion"]) == ("PodList", "v1")
    assert body["metadata"] == {"resourceVersion": "4"}
    assert names(body) == ["p1", "p2"]
    assert all("kind" not in item and "apiVersion" not in item for item in body["items"])
    assert names(fetch_json(api, "/api/v1/pods")[1]) == ["p0", "p3", "p1", "p2"]
    assert names(fetch_json(api, "/api/v1/namespaces/empty/pods")[1]) == []


def test_list_cluster_scoped_and_group_resources(api):
    api.put(custom("v1", "Node", "n2"))
    api.put(custom("v1", "Node", "n1"))
    assert names(fetch_json(api, "/api/v1/nodes")[1]) == ["n1", "n2"]
    assert fetch_json(api, "/api/v1/nodes/n1")[1]["metadata"]["name"] == "n1"
    api.put(endpoint_slice("web"))
    body = fetch_json(api, "/apis/discovery.k8s.io/v1/namespaces/default/endpointslices")[1]
    assert body["kind"] == "EndpointSliceList"
    assert body["apiVersion"] == "discovery.k8s.io/v1"


# ---------------------------------------------------------------------------
# Selectors
# ---------------------------------------------------------------------------


@pytest.fixture
def labelled(api):
    api.put(pod("a", labels={"app": "web", "tier": "front"}))
    api.put(pod("b", labels={"app": "db", "tier": "back"}))
    api.put(pod("c", labels={"app": "cache"}))
    api.put(pod("d"))
    return api


@pytest.mark.parametrize("selector, expected", [
    ("app=web", ["a"]),
    ("app==web", ["a"]),
    ("app!=web", ["b", "c", "d"]),
    ("app in (web, db)", ["a", "b"]),
    ("app notin (web,db)", ["c", "d"]),
    ("tier", ["a", "b"]),
    ("!tier", ["c", "d"]),
    ("app in (web,db),tier=back", ["b"]),
    ("app, !tier", ["c"]),
    ("", ["a", "b", "c", "d"]),
])
def test_label_selectors(labelled, selector, expected):
    query = urllib.parse.urlencode({"labelSelector": selector})
    status, body = fetch_json(labelled, PODS + "?" + query)
    assert status == 200
    assert names(body) == expected


@pytest.mark.parametrize("selector", ["app=", "=web", "app in ()", "a b", "app=web,", "app=(x"])
def test_bad_label_selector_is_400(labelled, selector):
    status, body = fetch_json(labelled, PODS + "?" + urllib.parse.urlencode({"labelSelector": selector}))
    if selector == "app=":
        assert status == 200 and names(body) == []  # an empty value is valid
    else:
        assert (status, body["reason"], body["code"]) == (400, "BadRequest", 400)


@pytest.mark.parametrize("path, selector, expected", [
    (PODS, "metadata.name=b", ["b"]),
    (PODS, "metadata.name!=b", ["a", "c"]),
    ("/api/v1/pods", "metadata.namespace==other", ["z"]),
    (PODS, "spec.nodeName=node1", ["a", "b"]),
    (PODS, "spec.nodeName=", ["c"]),
    (PODS, "status.phase=Pending", ["c"]),
    (PODS, "status.phase!=Pending,spec.nodeName=node1", ["a", "b"]),
])
def test_field_selectors(api, path, selector, expected):
    api.put(pod("a", node="node1"))
    api.put(pod("b", node="node1"))
    api.put(pod("c", phase="Pending"))
    api.put(pod("z", namespace="other", node="node2"))
    status, body = fetch_json(api, path + "?" + urllib.parse.urlencode({"fieldSelector": selector}))
    assert status == 200
    assert names(body) == expected


def test_unsupported_field_selector_is_400(api):
    status, body = fetch_json(api, "/api/v1/services?fieldSelector=spec.nodeName%3Dx")
    assert status == 400
    assert body == {"kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Failure",
                    "message": "field label not supported: spec.nodeName", "reason": "BadRequest",
                    "code": 400}
    assert fetch(api, PODS + "?fieldSelector=spec.foo%3Dx")[0] == 400


# ---------------------------------------------------------------------------
# Discovery
# ---------------------------------------------------------------------------


def test_core_discovery(api):
    status, body = fetch_json(api, "/api")
    assert status == 200
    assert body["kind"] == "APIVersions" and body["versions"] == ["v1"]
    body = fetch_json(api, "/api/v1")[1]
    assert (body["kind"], body["groupVersion"]) == ("APIResourceList", "v1")
    resources = {resource["name"]: resource for resource in body["resources"]}
    assert resources["pods"] == {"name": "pods", "singularName": "pod", "namespaced": True,
                                 "kind": "Pod", "verbs": ["get", "list", "watch"]}
    assert resources["nodes"]["namespaced"] is False
    assert resources["namespaces"]["namespaced"] is False
    assert {"services", "endpoints", "configmaps", "persistentvolumeclaims"} <= set(resources)
    assert api.requests[-1].verb == "discovery"


def test_group_discovery(api):
    body = fetch_json(api, "/apis")[1]
    assert body["kind"] == "APIGroupList"
    groups = {group["name"]: group for group in body["groups"]}
    assert set(groups) == {"apps", "batch", "discovery.k8s.io"}
    assert groups["apps"]["preferredVersion"] == {"groupVersion": "apps/v1", "version": "v1"}
    body = fetch_json(api, "/apis/apps/v1")[1]
    assert [resource["name"] for resource in body["resources"]] == ["daemonsets", "deployments", "statefulsets"]
    assert fetch_json(api, "/apis/batch")[1]["kind"] == "APIGroup"


def test_registered_crd_is_discovered_and_served(api):
    assert fetch(api, "/apis/example.com/v1")[0] == 404
    api.register_resource("example.com/v1", "widgets", "Widget")
    api.register_resource("example.com/v1", "gadgets", "Gadget", namespaced=False)
    groups = [group["name"] for group in fetch_json(api, "/apis")[1]["groups"]]
    assert "example.com" in groups
    body = fetch_json(api, "/apis/example.com/v1")[1]
    assert [(r["name"], r["kind"], r["namespaced"]) for r in body["resources"]] == [
        ("gadgets", "Gadget", False), ("widgets", "Widget", True)]
    api.put(custom("example.com/v1", "Widget", "w", status={"phase": "Ready"}))
    status, widget = fetch_json(api, "/apis/example.com/v1/namespaces/default/widgets/w")
    assert (status, widget["status"]) == (200, {"phase": "Ready"})
    api.unregister_resource("example.com/v1", "widgets")
    assert fetch(api, "/apis/example.com/v1/namespaces/default/widgets/w")[0] == 404
    api.unregister_resource("example.com/v1", "gadgets")
    assert fetch(api, "/apis/example.com/v1")[0] == 404


# ---------------------------------------------------------------------------
# RBAC denials
# ---------------------------------------------------------------------------

SLICES = "/apis/discovery.k8s.io/v1/namespaces/%s/endpointslices"


def test_denied_list_is_403_with_real_message(api):
    api.deny("list", "endpointslices", namespace="ns")
    status, body = fetch_json(api, SLICES % "ns")
    assert status == 403
    assert body == {
        "kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Failure",
        "message": 'endpointslices.discovery.k8s.io is forbidden: User "system:serviceaccount:default:default"'
                   ' cannot list resource "endpointslices" in API group "discovery.k8s.io" in the namespace "ns"',
        "reason": "Forbidden", "details": {"group": "discovery.k8s.io", "kind": "endpointslices"},
        "code": 403}
    assert fetch(api, SLICES % "other")[0] == 200
    assert fetch(api, "/apis/discovery.k8s.io/v1/endpointslices")[0] == 403  # all namespaces include ns
    api.allow("list", "endpointslices", namespace="ns")
    assert fetch(api, SLICES % "ns")[0] == 200


def test_denied_get_names_the_object(api):
    api.deny("get", "pods")
    status, body = fetch_json(api, PODS + "/a")
    assert status == 403
    assert body["message"] == ('pods "a" is forbidden: User "system:serviceaccount:default:default"'
                               ' cannot get resource "pods" in API group "" in the namespace "default"')
    assert body["details"] == {"name": "a", "kind": "pods"}
    assert fetch(api, PODS)[0] == 200
    api.deny("list", "nodes")
    assert fetch_json(api, "/api/v1/nodes")[1]["message"].endswith(
        'cannot list resource "nodes" in API group "" at the cluster scope')


def test_watch_and_list_are_denied_separately(api):
    api.deny("watch", "pods")
    assert fetch(api, PODS)[0] == 200
    status, body = fetch_json(api, PODS + "?watch=1")
    assert status == 403
    assert 'cannot watch resource "pods"' in body["message"]
    api.allow("watch", "pods")
    api.deny("list", "pods")
    assert fetch(api, PODS)[0] == 403
    conn, response = open_watch(api, PODS + "?watch=true&timeoutSeconds=1")
    assert response.status == 200
    conn.close()


REVIEWS = "/apis/authorization.k8s.io/v1/selfsubjectrulesreviews"


def review(api, namespace="default"):
    return send_json(api, "POST", REVIEWS, {"apiVersion": "authorization.k8s.io/v1",
                                            "kind": "SelfSubjectRulesReview",
                                            "spec": {"namespace": namespace}})


def granted(rules, verb, group, resource):
    return any(("*" in r["verbs"] or verb in r["verbs"]) and ("*" in r["apiGroups"] or group in
               r["apiGroups"]) and ("*" in r["resources"] or resource in r["resources"])
               for r in rules)


def test_rules_review_without_denials_allows_everything(api):
    status, answer = review(api)
    assert status == 201 and answer["kind"] == "SelfSubjectRulesReview"
    assert answer["status"]["incomplete"] is False
    assert granted(answer["status"]["resourceRules"], "watch", "example.com", "widgets")
    assert api.requests[-1][:2] == ("POST", REVIEWS) and api.requests[-1].verb == "create"


def test_rules_review_lists_what_deny_leaves(api):
    api.deny("watch", "jobs")
    api.deny("list", "pods", "other")
    rules = review(api)[1]["status"]["resourceRules"]
    assert not granted(rules, "watch", "batch", "jobs")
    assert granted(rules, "list", "batch", "jobs") and granted(rules, "list", "", "pods")
    assert granted(rules, "create", "", "events") and not granted(rules, "create", "", "pods")
    assert not granted(review(api, "other")[1]["status"]["resourceRules"], "list", "", "pods")


def test_rules_review_refused_incomplete_or_replaced(api):
    api.review_incomplete = True
    answer = review(api)[1]["status"]
    assert answer["incomplete"] is True and answer["evaluationError"]
    api.review_status = lambda namespace, status: "not a status"
    assert review(api)[1]["status"] == "not a status"
    api.deny("create", "selfsubjectrulesreviews")
    status, answer = review(api)
    assert (status, answer["reason"]) == (403, "Forbidden")
    assert "cannot create resource \"selfsubjectrulesreviews\"" in answer["message"]
    assert [r.status for r in api.refused()] == [403]


def test_rules_review_needs_a_namespace_and_a_post(api):
    assert send_json(api, "POST", REVIEWS, {"kind": "SelfSubjectRulesReview"})[0] == 400
    assert fetch(api, REVIEWS)[0] == 405


ROLES = [
    {"kind": "Role", "metadata": {"name": "r", "namespace": "default"}, "rules": [
        {"apiGroups": [""], "resources": ["pods"], "verbs": ["get", "list"]},
        {"apiGroups": ["batch"], "resources": ["jobs"], "verbs": ["get"], "resourceNames": ["db-sync"]}]},
    {"kind": "ClusterRole", "metadata": {"name": "c"}, "rules": [
        {"apiGroups": ["*"], "resources": ["endpointslices"], "verbs": ["*"]}]},
]


def test_use_roles_authorizes_as_rbac(api):
    api.use_roles(ROLES)
    assert fetch(api, PODS)[0] == 200
    assert fetch(api, PODS + "?watch=1", timeout=1)[0] == 403
    assert fetch(api, "/api/v1/namespaces/other/pods")[0] == 403  # a Role: its namespace only
    assert fetch(api, "/apis/discovery.k8s.io/v1/namespaces/other/endpointslices")[0] == 200
    assert fetch(api, "/apis/batch/v1/namespaces/default/jobs/db-sync")[0] == 404  # allowed, absent
    assert fetch(api, "/apis/batch/v1/namespaces/default/jobs/other")[0] == 403
    assert fetch(api, "/apis/batch/v1/namespaces/default/jobs")[0] == 403
    assert fetch(api, EVENTS)[0] == 403
    rules = review(api)[1]["status"]["resourceRules"]
    assert {"apiGroups": ["batch"], "resources": ["jobs"], "verbs": ["get"],
            "resourceNames": ["db-sync"]} in rules
    assert review(api, "other")[1]["status"]["resourceRules"][0]["resources"] == ["endpointslices"]
    api.use_roles(None)
    assert fetch(api, EVENTS)[0] == 200


def test_use_roles_names_from_a_field_selector(api):
    """RBAC sees a list or watch of metadata.name=NAME as asking for NAME (resourceNames)."""
    api.use_roles([{"kind": "Role", "metadata": {"namespace": "default"}, "rules": [
        {"apiGroups": [""], "resources": ["pods"], "verbs": ["list"], "resourceNames": ["me"]}]}])
    assert fetch(api, PODS + "?fieldSelector=metadata.name%3Dme")[0] == 200
    assert fetch(api, PODS + "?fieldSelector=metadata.name%3Dyou")[0] == 403


# ---------------------------------------------------------------------------
# Request log
# ---------------------------------------------------------------------------


def test_request_log(api):
    fetch(api, "/api/v1")
    fetch(api, "/api/v1/namespaces/ns/pods/a")
    fetch(api, "/api/v1/pods?labelSelector=app%3Dweb&limit=5")
    fetch(api, "/api/v1/nodes?watch=1&timeoutSeconds=1")
    fetch(api, "/nowhere", token=False)
    assert [tuple(r) for r in api.requests] == [
        ("GET", "/api/v1", {}, 200, "discovery", None, None, None),
        ("GET", "/api/v1/namespaces/ns/pods/a", {}, 404, "get", "pods", "ns", "a"),
        ("GET", "/api/v1/pods", {"labelSelector": "app=web", "limit": "5"}, 200, "list", "pods", None, None),
        ("GET", "/api/v1/nodes", {"watch": "1", "timeoutSeconds": "1"}, 200, "watch", "nodes", None, None),
        ("GET", "/nowhere", {}, 401, None, None, None, None),
    ]
    api.clear_requests()
    assert api.requests == []


# ---------------------------------------------------------------------------
# Watch
# ---------------------------------------------------------------------------


def test_watch_sends_current_objects_then_changes(api):
    api.put(pod("b"))
    api.put(pod("a"))
    api.put(pod("other", namespace="elsewhere"))
    conn, response = open_watch(api, PODS + "?watch=1")
    assert response.status == 200
    assert response.getheader("Content-Type") == "application/json"
    assert response.getheader("Transfer-Encoding") == "chunked"
    assert [(e["type"], e["object"]["metadata"]["name"]) for e in (next_event(response), next_event(response))] \
        == [("ADDED", "a"), ("ADDED", "b")]
    assert api.requests[-1].verb == "watch"

    started = time.monotonic()
    api.put(pod("other", namespace="elsewhere", ready=True))  # not in this namespace: not sent
    api.put(pod("a", ready=True))
    event = next_event(response)
    assert time.monotonic() - started < 0.5
    assert event["type"] == "MODIFIED"
    assert (event["object"]["kind"], event["object"]["metadata"]["resourceVersion"]) == ("Pod", "5")
    api.delete("v1", "Pod", "b")
    event = next_event(response)
    assert (event["type"], event["object"]["metadata"]["name"]) == ("DELETED", "b")
    assert event["object"]["metadata"]["resourceVersion"] == "6"
    api.put(pod("c"))
    assert next_event(response)["type"] == "ADDED"
    conn.close()


def test_watch_from_resource_version_replays_later_changes(api):
    api.put(pod("a"))
    version = api.put(pod("b"))["metadata"]["resourceVersion"]
    api.put(pod("a", ready=True))
    api.put(service("not-a-pod"))
    api.delete("v1", "Pod", "b")
    conn, response = open_watch(api, PODS + "?watch=1&resourceVersion=" + version)
    assert [(e["type"], e["object"]["metadata"]["name"]) for e in (next_event(response), next_event(response))] \
        == [("MODIFIED", "a"), ("DELETED", "b")]
    api.put(pod("c"))
    assert next_event(response)["object"]["metadata"]["resourceVersion"] == "6"
    conn.close()


def test_watch_follows_objects_into_and_out_of_the_selection(api):
    api.put(pod("a", labels={"app": "web"}))
    conn, response = open_watch(api, PODS + "?watch=1&labelSelector=app%3Dweb&fieldSelector=metadata.name%3Da")
    assert next_event(response)["type"] == "ADDED"
    api.put(pod("a", labels={"app": "db"}))
    event = next_event(response)
    assert event["type"] == "DELETED"
    assert event["object"]["metadata"]["labels"] == {"app": "web"}  # previous content...
    assert event["object"]["metadata"]["resourceVersion"] == "2"    # ...at the change's version
    api.put(pod("b", labels={"app": "web"}))  # field selector excludes it
    api.put(pod("a", labels={"app": "web"}))
    event = next_event(response)
    assert (event["type"], event["object"]["metadata"]["resourceVersion"]) == ("ADDED", "4")
    conn.close()


def test_bookmarks(api):
    api.bookmark_interval = 0.1
    api.put(pod("a"))
    conn, response = open_watch(api, PODS + "?watch=1&allowWatchBookmarks=true&resourceVersion=1")
    started = time.monotonic()
    event = next_event(response)
    assert 0.05 < time.monotonic() - started < 1
    assert event == {"type": "BOOKMARK", "object": {"kind": "Pod", "apiVersion": "v1",
                                                     "metadata": {"resourceVersion": "1"}}}
    api.put(service("s"))
    assert next_event(response)["object"]["metadata"] == {"resourceVersion": "2"}
    conn.close()


def test_too_old_resource_version_is_an_error_event_then_end(api):
    api.put(pod("a"))
    api.put(pod("a"))
    api.compact()
    conn, response = open_watch(api, PODS + "?watch=1&resourceVersion=1")
    assert response.status == 200
    assert next_event(response) == {"type": "ERROR", "object": {
        "kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Failure",
        "message": "too old resource version: 1 (2)", "reason": "Expired", "code": 410}}
    assert next_event(response) is None  # ended cleanly
    conn.close()
    conn, response = open_watch(api, PODS + "?watch=1&resourceVersion=2&timeoutSeconds=1")
    assert response.status == 200
    api.put(pod("a"))
    assert next_event(response)["type"] == "MODIFIED"
    conn.close()


def test_history_limit_and_http_410_mode(api):
    api.history_limit = 2
    for _ in range(4):
        api.put(pod("a"))
    api.expire_with_http_410 = True
    status, body = fetch_json(api, PODS + "?watch=1&resourceVersion=1")
    assert (status, body["reason"], body["message"]) == (410, "Expired", "too old resource version: 1 (2)")
    assert fetch(api, PODS + "?watch=1&resourceVersion=2&timeoutSeconds=1")[0] == 200


def test_bad_watch_parameters_are_400(api):
    assert fetch(api, PODS + "?watch=1&resourceVersion=abc")[0] == 400
    assert fetch(api, PODS + "?watch=1&timeoutSeconds=soon")[0] == 400


def test_timeout_seconds_ends_the_stream_cleanly_and_keeps_the_connection(api):
    conn, response = open_watch(api, PODS + "?watch=1&timeoutSeconds=1")
    started = time.monotonic()
    assert response.read() == b""
    assert 0.9 < time.monotonic() - started < 2
    conn.request("GET", PODS, headers={"Authorization": "Bearer " + api.token})
    assert conn.getresponse().status == 200
    conn.close()
    assert api.connections == 1
    assert api.open_watches == 0


def test_close_watches_ends_streams_abruptly(api):
    conn, response = open_watch(api, PODS + "?watch=1")
    wait_for_watches(api, 1)
    api.close_watches()
    with pytest.raises(http.client.IncompleteRead):  # no terminating chunk (readline() would hide it)
        response.read()
    conn.close()


# ---------------------------------------------------------------------------
# Fault injection
# ---------------------------------------------------------------------------


def test_injected_status_with_retry_after(api):
    api.inject(status=429, times=2, retry_after=3)
    for _ in range(2):
        status, headers, body = fetch(api, PODS)
        assert (status, headers["Retry-After"]) == (429, "3")
        assert json.loads(body)["reason"] == "TooManyRequests"
    assert fetch(api, PODS)[0] == 200
    assert [r.status for r in api.requests] == [429, 429, 200]


def test_injected_fault_only_hits_matching_paths(api):
    api.inject(status=503, match="watch=", times=None)
    assert fetch(api, PODS)[0] == 200
    assert fetch(api, PODS + "?watch=1")[0] == 503
    assert fetch(api, PODS + "?watch=1")[0] == 503
    api.clear_faults()
    assert fetch(api, PODS + "?watch=1&timeoutSeconds=1")[0] == 200


def test_injected_malformed_body(api):
    api.inject(status=200, body=b'{"kind":')
    status, headers, body = fetch(api, PODS)
    assert (status, body, headers["Content-Length"]) == (200, b'{"kind":', "8")


def test_injected_reset(api):
    api.inject(reset=True)
    conn = connect(api)
    conn.request("GET", PODS, headers={"Authorization": "Bearer " + api.token})
    with pytest.raises(ConnectionResetError):
        conn.getresponse()
    conn.close()
    assert api.requests[-1].status == 0
    assert fetch(api, PODS)[0] == 200


def test_injected_hang(api):
    api.inject(hang=2)
    started = time.monotonic()
    with pytest.raises(socket.timeout):
        fetch(api, PODS, timeout=0.3)
    assert time.monotonic() - started < 1
    assert fetch(api, PODS)[0] == 200


# ---------------------------------------------------------------------------
# Builders
# ---------------------------------------------------------------------------


def test_pod_builder():
    built = pod("p", labels={"a": "b"}, node="n1", host_ip="10.1.0.1", ready=True,
                containers=("app", "side"), ready_containers=("app", "init1"), init_containers=("init1", "init2"))
    assert built["spec"]["nodeName"] == "n1"
    assert built["status"]["hostIP"] == "10.1.0.1"
    conditions = {c["type"]: c["status"] for c in built["status"]["conditions"]}
    assert conditions["Ready"] == "True"
    assert [(s["name"], s["ready"]) for s in built["status"]["containerStatuses"]] == [
        ("app", True), ("side", False)]
    assert [c["name"] for c in built["spec"]["initContainers"]] == ["init1", "init2"]
    init = {s["name"]: s for s in built["status"]["initContainerStatuses"]}
    assert init["init1"]["ready"] and "terminated" in init["init1"]["state"]
    assert not init["init2"]["ready"]
    plain = pod("q")
    assert {c["type"]: c["status"] for c in plain["status"]["conditions"]}["Ready"] == "False"
    assert "initContainers" not in plain["spec"] and "nodeName" not in plain["spec"]


def test_network_builders():
    assert service("s", selector={"app": "web"})["spec"]["selector"] == {"app": "web"}
    built = endpoint_slice("web", addresses=(("10.0.0.1", True), ("10.0.0.2", False), ("10.0.0.3", None)))
    assert built["metadata"]["labels"] == {"kubernetes.io/service-name": "web"}
    assert built["addressType"] == "IPv4"
    assert [e["conditions"] for e in built["endpoints"]] == [{"ready": True}, {"ready": False}, {}]
    assert endpoint_slice("web", addresses=())["endpoints"] is None
    assert endpoint_slice("web", name="web-1")["metadata"]["name"] == "web-1"
    subset = endpoints("web", ready=("10.0.0.1",), not_ready=("10.0.0.2",))["subsets"][0]
    assert subset["addresses"] == [{"ip": "10.0.0.1"}]
    assert subset["notReadyAddresses"] == [{"ip": "10.0.0.2"}]
    assert "subsets" not in endpoints("web", ready=())


def test_workload_builders():
    assert daemonset("ds")["spec"]["selector"] == {"matchLabels": {"app": "ds"}}
    expressions = [{"key": "app", "operator": "In", "values": ["x"]}]
    assert daemonset("ds", match_expressions=expressions)["spec"]["selector"] == {"matchExpressions": expressions}
    assert job("j", succeeded=1)["status"] == {"succeeded": 1}
    failed = job("j", failed=6, failed_for_good=True)["status"]
    assert failed["failed"] == 6
    assert [(c["type"], c["status"]) for c in failed["conditions"]] == [("Failed", "True")]
    [condition] = job("j", failed_for_good=("DeadlineExceeded", "too long"))["status"]["conditions"]
    assert (condition["reason"], condition["message"]) == ("DeadlineExceeded", "too long")
    suspended = job("j", suspended=True)
    assert suspended["spec"]["suspend"] is True
    assert suspended["status"]["conditions"][0]["type"] == "Suspended"
    built = custom("example.com/v1", "Widget", "w", spec={"size": 1})
    assert built == {"apiVersion": "example.com/v1", "kind": "Widget", "metadata": {"name": "w"},
                     "spec": {"size": 1}}
