"""The agent in Kubernetes: cgroup path → pod UID (table + properties), the node's pod index fed by
raw watch events, the watch loop (410, reconnect), the resolver, and the pod wrapper over HTTP."""

import asyncio
import json
import threading
import uuid

import pytest
from hypothesis import given
from hypothesis import strategies as st
from kubernetes import client as k8s_client
from kubernetes.client.exceptions import ApiException

from agent.kube import PodResolver, WorkloadAttributes
from agent.kube.cgroup import pod_uid_from_cgroup
from agent.kube.podapi import Expired, PodAPI, PodAPIError, translate
from agent.kube.pods import PodIndex, PodWatcher
from tests.unit.kube.httpfake import FakeAPIServer

UID = "1b4b3f7a-2c1d-4e5f-8a9b-0c1d2e3f4a5b"
U_ = UID.replace("-", "_")
HASH = "d41d8cd98f00b204e9800998ecf8427e"


@pytest.mark.parametrize("path, uid", [
    # cgroupfs driver (cgroup v1 or v2), each QoS class
    (f"/kubepods/burstable/pod{UID}/0123abcd", UID),
    (f"/kubepods/besteffort/pod{UID}/0123abcd", UID),
    (f"/kubepods/pod{UID}/0123abcd", UID),  # guaranteed: no QoS level
    (f"/sys/fs/cgroup/kubepods/burstable/pod{UID}", UID),
    # systemd driver, containerd / CRI-O / docker scopes
    (f"/kubepods.slice/kubepods-burstable.slice/kubepods-burstable-pod{U_}.slice/cri-containerd-ab12.scope", UID),
    (f"/sys/fs/cgroup/kubepods.slice/kubepods-besteffort.slice/kubepods-besteffort-pod{U_}.slice/crio-ab.scope",
     UID),
    (f"/kubepods.slice/kubepods-pod{U_}.slice/docker-ab.scope", UID),
    # kind / custom kubelet cgroup root
    (f"/kubelet.slice/kubelet-kubepods.slice/kubelet-kubepods-besteffort.slice/"
     f"kubelet-kubepods-besteffort-pod{U_}.slice/cri-containerd-1.scope", UID),
    # nested cgroups inside a container still belong to the pod
    (f"/kubepods/burstable/pod{UID}/0123abcd/app/worker", UID),
    # static pods: the config hash
    (f"/kubepods/burstable/pod{HASH}/c1", HASH),
    (f"/kubepods.slice/kubepods-burstable.slice/kubepods-burstable-pod{HASH}.slice/cri-containerd-1.scope", HASH),
    # not a pod
    ("/system.slice/containerd.service", None),
    ("/kubepods/burstable", None),
    ("/kubepods.slice/kubepods-burstable.slice", None),
    ("/", None),
    ("", None),
    ("/kubepods/burstable/podnot-a-uid/c", None),
    (f"/user.slice/pod{UID[:-1]}/c", None),
])
def test_pod_uid_from_cgroup(path, uid):
    assert pod_uid_from_cgroup(path) == uid


@given(st.uuids(), st.sampled_from(["", "burstable", "besteffort"]), st.text(alphabet="0123456789abcdef",
                                                                            min_size=1, max_size=64))
def test_both_layouts_give_back_the_uid(u, qos, container):
    uid = str(u)
    level = f"/{qos}" if qos else ""
    assert pod_uid_from_cgroup(f"/kubepods{level}/pod{uid}/{container}") == uid
    slice_ = f"kubepods-{qos}" if qos else "kubepods"
    systemd = (f"/kubepods.slice{'/kubepods-' + qos + '.slice' if qos else ''}/{slice_}-pod"
               f"{uid.replace('-', '_')}.slice/cri-containerd-{container}.scope")
    assert pod_uid_from_cgroup(systemd) == uid


@given(st.lists(st.text(alphabet="abcdefghijklmnopqrstuvwxyz0123456789-_.", max_size=30), max_size=8))
def test_paths_without_pod_components_never_resolve(parts):
    path = "/" + "/".join(p for p in parts if not p.startswith("pod") and "-pod" not in p)
    assert pod_uid_from_cgroup(path) is None


# -- the index --------------------------------------------------------------------------------------


def pod(name, uid=UID, *, ns="default", sa="reviewer", labels=None, mirror=None, rv="5"):
    meta = {"name": name, "namespace": ns, "uid": uid, "resourceVersion": rv, "labels": labels or {"app": name}}
    if mirror:
        meta["annotations"] = {"kubernetes.io/config.mirror": mirror}
    return {"metadata": meta, "spec": {"serviceAccountName": sa, "nodeName": "n1"} if sa else {"nodeName": "n1"}}


def test_index_resolves_cgroups_to_pod_attributes():
    index = PodIndex()
    index.handle_list([pod("web")])
    got = index.resolve(f"/kubepods/burstable/pod{UID}/c")
    assert got == WorkloadAttributes("default", "web", "reviewer", {"app": "web"})
    assert got.attributes() == {"client.clusterlink.net/namespace": "default",
                                "client.clusterlink.net/service-account": "reviewer",
                                "client.clusterlink.net/labels.app": "web"}
    assert index.resolve("/system.slice/x") is None


def test_index_follows_added_modified_deleted():
    index = PodIndex()
    index.handle_list([])
    other = str(uuid.uuid4())
    index.handle_event("ADDED", pod("a", other, sa=""))
    assert index.get(other).service_account == "default"  # no serviceAccountName: the default one
    index.handle_event("MODIFIED", pod("a", other, labels={"v": "2"}))
    assert index.get(other).labels == {"v": "2"}
    index.handle_event("DELETED", pod("a", other))
    assert index.get(other) is None and len(index) == 0


def test_static_pod_is_found_by_its_config_hash():
    index = PodIndex()
    index.handle_list([pod("etcd-n1", str(uuid.uuid4()), ns="kube-system", mirror=HASH)])
    assert index.resolve(f"/kubepods/pod{HASH}/c").name == "etcd-n1"


def test_relist_forgets_pods_that_went_away():
    index = PodIndex()
    index.handle_list([pod("a")])
    index.handle_list([])
    assert index.get(UID) is None


# -- the watch loop ---------------------------------------------------------------------------------


class FakePods:
    def __init__(self, scripts, stop):
        self.items = [pod("a")]
        self.scripts = list(scripts)
        self.stop = stop
        self.calls = []

    def list_pods(self, field_selector):
        self.calls.append(("list", field_selector))
        return list(self.items), "100"

    def watch_pods(self, field_selector, resource_version, timeout_seconds):
        self.calls.append(("watch", resource_version))
        if not self.scripts:
            self.stop.set()
            return Stream([])
        script = self.scripts.pop(0)
        if isinstance(script, Exception):
            raise script
        return Stream(script)


class Stream:
    def __init__(self, script):
        self.script = script

    def __iter__(self):
        for item in self.script:
            if isinstance(item, Exception):
                raise item
            yield item

    def close(self):
        pass


def test_watch_loop_relists_on_expiry_and_reconnects_from_the_last_version():
    stop = threading.Event()
    b = str(uuid.uuid4())
    api = FakePods([[("ADDED", pod("b", b, rv="110"))],
                    PodAPIError("connection refused", temporary=True),
                    [("BOOKMARK", {"metadata": {"resourceVersion": "120"}}), Expired("too old (410)")]], stop)
    index = PodIndex()
    watcher = PodWatcher(api, "n1", index, backoff_initial=0.001, backoff_max=0.002)
    api.items.append(pod("b", b, rv="110"))
    watcher.run(stop)
    assert api.calls == [("list", "spec.nodeName=n1"), ("watch", "100"), ("watch", "110"), ("watch", "110"),
                         ("list", "spec.nodeName=n1"), ("watch", "100")]
    assert index.get(b).name == "b" and watcher.errors == 1


def test_resolver_start_resolve_stop():
    stop = threading.Event()
    api = FakePods([], stop)

    async def main():
        resolver = PodResolver("n1", api=api, sync_timeout=5)
        await resolver.start()
        assert resolver.resolve(f"/kubepods/besteffort/pod{UID}/c").name == "a"
        await resolver.stop()

    asyncio.run(main())


def test_resolver_needs_a_node():
    with pytest.raises(ValueError):
        PodResolver("")


# -- the pod wrapper ------------------------------------------------------------------------------


@pytest.mark.parametrize("status, cls, temporary", [(410, Expired, True), (503, PodAPIError, True),
                                                    (429, PodAPIError, True), (403, PodAPIError, False)])
def test_pod_api_translation(status, cls, temporary):
    exc = ApiException(status=status, reason="x")
    exc.body = json.dumps({"kind": "Status", "code": status, "message": "pods is forbidden"})
    err = translate(exc, "listing pods")
    assert type(err) is cls and err.temporary is temporary and "pods is forbidden" in str(err)


def test_pod_api_over_http():
    server = FakeAPIServer().start()
    try:
        server.route("GET", "/api/v1/pods",
                     (200, {"metadata": {"resourceVersion": "7"}, "items": [pod("a")]}),
                     [{"type": "ADDED", "object": pod("b", rv="8")},
                      {"type": "ERROR", "object": {"kind": "Status", "code": 410, "message": "too old"}}])
        api = PodAPI(k8s_client.ApiClient(k8s_client.Configuration(host=server.url)))
        items, rv = api.list_pods("spec.nodeName=n1")
        assert rv == "7" and items[0]["metadata"]["name"] == "a"
        stream = iter(api.watch_pods("spec.nodeName=n1", rv, 30))
        assert next(stream)[1]["metadata"]["name"] == "b"
        with pytest.raises(Expired):
            next(stream)
        assert server.requests[0].query == {"fieldSelector": "spec.nodeName=n1"}
        assert server.requests[1].query["resourceVersion"] == "7"
        api.close()
    finally:
        server.stop()
