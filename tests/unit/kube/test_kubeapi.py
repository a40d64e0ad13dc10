"""The Kubernetes wrapper: error translation with the client's real exception types, REST paths, and
real HTTP round trips (list, watch, writes, errors) against a scripted server."""

import json
import socket
import threading

import pytest
import urllib3.exceptions
from kubernetes import client as k8s_client
from kubernetes.client.exceptions import ApiException

from controlplane.store import kubeapi as K
from tests.unit.kube.httpfake import HOLD, FakeAPIServer


def status_body(code, reason, message="boom"):
    return json.dumps({"kind": "Status", "apiVersion": "v1", "status": "Failure", "code": code, "reason": reason,
                       "message": message})


def api_exc(code, reason=""):
    exc = ApiException(status=code, reason=reason or "x")
    exc.body = status_body(code, reason)
    return exc


@pytest.mark.parametrize("exc, cls, temporary", [
    (api_exc(410, "Expired"), K.Gone, True),
    (api_exc(409, "AlreadyExists"), K.AlreadyExists, True),
    (api_exc(409, "Conflict"), K.Conflict, True),
    (api_exc(404, "NotFound"), K.NotFound, False),
    (api_exc(403, "Forbidden"), K.PermanentError, False),
    (api_exc(422, "Invalid"), K.PermanentError, False),
    (api_exc(400, "BadRequest"), K.PermanentError, False),
    (api_exc(429, "TooManyRequests"), K.TemporaryError, True),
    (api_exc(500, "InternalError"), K.TemporaryError, True),
    (api_exc(503, "ServiceUnavailable"), K.TemporaryError, True),
    (urllib3.exceptions.MaxRetryError(None, "/api", "refused"), K.TemporaryError, True),
    (urllib3.exceptions.ProtocolError("Connection aborted"), K.TemporaryError, True),
    (urllib3.exceptions.ReadTimeoutError(None, "/api", "read timed out"), K.TemporaryError, True),
    (ConnectionRefusedError(111, "Connection refused"), K.TemporaryError, True),
    (TimeoutError("timed out"), K.TemporaryError, True),
])
def test_translate_classifies_client_errors(exc, cls, temporary):
    err = K.translate(exc, "patching Import default/x")
    assert type(err) is cls and err.temporary is temporary
    assert str(err).startswith("patching Import default/x: ")


def test_translate_uses_the_status_message_and_keeps_the_http_code():
    exc = ApiException(status=403, reason="Forbidden")
    exc.body = status_body(403, "Forbidden", 'services "x" is forbidden: User cannot create')
    err = K.translate(exc, "creating Service default/x")
    assert err.status == 403 and err.reason == "Forbidden"
    assert 'services "x" is forbidden' in str(err)


def test_translate_of_a_non_json_body_and_of_our_own_errors():
    exc = ApiException(status=502, reason="Bad Gateway")
    exc.body = "<html>bad gateway</html>"
    assert isinstance(K.translate(exc, "x"), K.TemporaryError)
    gone = K.Gone("old", status=410)
    assert K.translate(gone, "y") is gone


@pytest.mark.parametrize("resource, args, path", [
    (K.SERVICES, (None,), "/api/v1/services"),
    (K.SERVICES, ("ns",), "/api/v1/namespaces/ns/services"),
    (K.SERVICES, ("ns", "x"), "/api/v1/namespaces/ns/services/x"),
    (K.CLUSTERLINK["Import"], ("ns", "x", "status"), "/apis/clusterlink.net/v1alpha1/namespaces/ns/imports/x/status"),
    (K.CLUSTERLINK["PrivilegedAccessPolicy"], (None, "p"),
     "/apis/clusterlink.net/v1alpha1/privilegedaccesspolicies/p"),
    (K.LEASES, ("cl", "l"), "/apis/coordination.k8s.io/v1/namespaces/cl/leases/l"),
    (K.ENDPOINT_SLICES, (None,), "/apis/discovery.k8s.io/v1/endpointslices"),
    (K.CRDS, (None, "imports.clusterlink.net"),
     "/apis/apiextensions.k8s.io/v1/customresourcedefinitions/imports.clusterlink.net"),
])
def test_paths(resource, args, path):
    assert resource.path(*args) == path


def test_a_namespaced_object_needs_a_namespace():
    with pytest.raises(ValueError, match="needs a namespace"):
        K.SERVICES.path(None, "x")


def test_every_clusterlink_kind_has_a_resource():
    assert set(K.CLUSTERLINK) == {"Peer", "Export", "Import", "AccessPolicy", "PrivilegedAccessPolicy"}
    assert not K.CLUSTERLINK["PrivilegedAccessPolicy"].namespaced


# -- over HTTP ------------------------------------------------------------------------------------


@pytest.fixture
def server():
    s = FakeAPIServer().start()
    yield s
    s.stop()


@pytest.fixture
def api(server):
    cfg = k8s_client.Configuration(host=server.url)
    a = K.KubeAPI(k8s_client.ApiClient(cfg), timeout=(2.0, 5.0))
    yield a
    a.close()


def test_list_adds_kind_and_returns_the_resource_version(server, api):
    server.route("GET", "/api/v1/services", (200, {"kind": "ServiceList", "metadata": {"resourceVersion": "42"},
                                                   "items": [{"metadata": {"name": "a", "namespace": "n"}}]}))
    got = api.list(K.SERVICES, label_selector="a=b")
    assert got.resource_version == "42"
    assert got.items == [{"apiVersion": "v1", "kind": "Service", "metadata": {"name": "a", "namespace": "n"}}]
    assert server.requests[0].query == {"labelSelector": "a=b"}


def test_get_missing_is_not_found(server, api):
    with pytest.raises(K.NotFound, match="reading Service n/x"):
        api.get(K.SERVICES, "n", "x")


def test_create_conflict_is_already_exists(server, api):
    server.route("POST", "/api/v1/namespaces/n/services",
                 (409, json.loads(status_body(409, "AlreadyExists", 'services "x" already exists'))))
    with pytest.raises(K.AlreadyExists, match='services "x" already exists'):
        api.create(K.SERVICES, "n", {"metadata": {"name": "x"}})
    assert server.requests[0].body == {"metadata": {"name": "x"}}


def test_server_errors_are_temporary(server, api):
    server.route("GET", "/api/v1/namespaces/n/services/x", (500, json.loads(status_body(500, "InternalError"))))
    with pytest.raises(K.TemporaryError):
        api.get(K.SERVICES, "n", "x")


def test_patch_and_patch_status_send_merge_patches(server, api):
    server.route("PATCH", "/apis/clusterlink.net/v1alpha1/namespaces/n/imports/x/status",
                 (200, {"metadata": {"name": "x"}, "status": {"vip": "10.0.0.1"}}))
    server.route("PATCH", "/apis/clusterlink.net/v1alpha1/namespaces/n/imports/x", (200, {"metadata": {"name": "x"}}))
    imports = K.CLUSTERLINK["Import"]
    assert api.patch_status(imports, "n", "x", {"vip": "10.0.0.1", "gone": None})["status"] == {"vip": "10.0.0.1"}
    api.patch(imports, "n", "x", {"spec": {"targetPort": 5000}})
    status_req, spec_req = server.requests
    assert status_req.headers["Content-Type"] == K.MERGE_PATCH and spec_req.headers["Content-Type"] == K.MERGE_PATCH
    assert status_req.body == {"status": {"vip": "10.0.0.1", "gone": None}}
    assert spec_req.body == {"spec": {"targetPort": 5000}}


def test_delete_sends_a_uid_precondition(server, api):
    server.route("DELETE", "/api/v1/namespaces/n/services/x", (200, {"kind": "Status", "status": "Success"}))
    api.delete(K.SERVICES, "n", "x", uid="u-1")
    assert server.requests[0].body["preconditions"] == {"uid": "u-1"}
    assert server.requests[0].body["propagationPolicy"] == "Background"


def test_watch_yields_events_and_bookmarks_with_the_right_query(server, api):
    server.route("GET", "/api/v1/services", [
        {"type": "ADDED", "object": {"metadata": {"name": "a", "resourceVersion": "5"}}},
        {"type": "BOOKMARK", "object": {"metadata": {"resourceVersion": "7"}}},
        {"type": "DELETED", "object": {"metadata": {"name": "a", "resourceVersion": "8"}}},
    ])
    events = list(api.watch(K.SERVICES, resource_version="4", timeout_seconds=9, field_selector="x=y"))
    assert [(t, o["metadata"]["resourceVersion"]) for t, o in events] == [("ADDED", "5"), ("BOOKMARK", "7"),
                                                                          ("DELETED", "8")]
    q = server.requests[0].query
    assert q == {"watch": "true", "resourceVersion": "4", "allowWatchBookmarks": "true", "timeoutSeconds": "9",
                 "fieldSelector": "x=y"}


def test_watch_error_event_410_raises_gone(server, api):
    server.route("GET", "/api/v1/services", [
        {"type": "ADDED", "object": {"metadata": {"name": "a", "resourceVersion": "5"}}},
        {"type": "ERROR", "object": {"kind": "Status", "code": 410, "reason": "Expired",
                                     "message": "too old resource version: 4 (9)"}},
    ])
    stream = api.watch(K.SERVICES, resource_version="4")
    it = iter(stream)
    assert next(it)[0] == "ADDED"
    with pytest.raises(K.Gone, match="too old resource version"):
        next(it)


def test_watch_undecodable_line_is_temporary(server, api):
    server.route("GET", "/api/v1/pods", ["{not json"])
    with pytest.raises(K.TemporaryError, match="undecodable"):
        list(api.watch(K.PODS, resource_version="1"))


def test_close_wakes_a_thread_blocked_in_a_watch(server, api):
    server.route("GET", "/api/v1/pods", HOLD)
    stream = api.watch(K.PODS, resource_version="1")
    done = threading.Event()
    outcome = []

    def reader():
        try:
            outcome.append(list(stream))
        except K.KubeError as exc:  # pragma: no cover - reported below
            outcome.append(exc)
        done.set()

    t = threading.Thread(target=reader, daemon=True)
    t.start()
    assert not done.wait(0.3)  # blocked: the server holds the stream open
    stream.close()
    assert done.wait(5), "close() did not wake the reader"
    assert outcome == [[]]


def test_unreachable_api_server_is_temporary():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]  # closed again: nothing listens there
    cfg = k8s_client.Configuration(host=f"http://127.0.0.1:{port}")
    cfg.retries = 0
    api = K.KubeAPI(k8s_client.ApiClient(cfg), timeout=(1.0, 1.0))
    try:
        with pytest.raises(K.TemporaryError, match="cannot reach the Kubernetes API"):
            api.get(K.SERVICES, "n", "x")
    finally:
        api.close()


def test_missing_configuration_is_permanent(tmp_path, monkeypatch):
    monkeypatch.delenv("KUBERNETES_SERVICE_HOST", raising=False)
    with pytest.raises(K.PermanentError, match="no Kubernetes configuration"):
        K.KubeAPI.from_environment(str(tmp_path / "missing-kubeconfig"))
