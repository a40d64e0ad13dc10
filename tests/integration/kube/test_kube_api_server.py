"""Against a real Kubernetes API server (CLUSTERLINK_TEST_KUBECONFIG names its kubeconfig): apply the
CRDs, run the Kubernetes backend (watches, Lease, Import Services) with the reconciler and the
heartbeats, create an Export, an Import and a Peer, and see what a user sees: the Import's Service
with a ClusterIP that is also the Import's VIP, the conditions written, the Service deleted with
the Import, and the API server enforcing the CRD schema and the Import name rule."""

from __future__ import annotations

import asyncio
import os
import threading
import time
import uuid

import pytest

from controlplane.model import crdgen
from controlplane.model import schema as S
from controlplane.model.conditions import get_condition
from controlplane.server.heartbeats import Heartbeats
from controlplane.server.kube_events import KubeEvents
from controlplane.server.reconciler import Reconciler, ReconcilerConfig
from controlplane.store import kubeapi as K
from controlplane.store.kube_backend import KubeBackend, KubeSettings

KUBECONFIG = os.environ.get("CLUSTERLINK_TEST_KUBECONFIG")

pytestmark = [
    pytest.mark.kube,
    pytest.mark.skipif(not KUBECONFIG, reason="needs a Kubernetes API server: set CLUSTERLINK_TEST_KUBECONFIG to "
                                              "its kubeconfig (none on this machine)"),
]


def wait_for(what, check, timeout=60.0, interval=0.25):
    deadline = time.monotonic() + timeout
    last = None
    while time.monotonic() < deadline:
        try:
            last = check()
        except K.NotFound:
            last = None
        if last:
            return last
        time.sleep(interval)
    raise AssertionError(f"timed out waiting for {what} (last: {last!r})")


@pytest.fixture(scope="module")
def api():
    a = K.KubeAPI.from_environment(KUBECONFIG)
    for info in S.CRD_KINDS:
        crd = crdgen.crd(info)
        name = crd["metadata"]["name"]
        try:
            current = a.get(K.CRDS, None, name)
            crd["metadata"]["resourceVersion"] = current["metadata"]["resourceVersion"]
            a.replace(K.CRDS, None, name, crd)
        except K.NotFound:
            a.create(K.CRDS, None, crd)
        wait_for(f"CRD {name} established", lambda n=name: any(
            c["type"] == "Established" and c["status"] == "True"
            for c in (a.get(K.CRDS, None, n).get("status") or {}).get("conditions") or ()))
    yield a
    a.close()


@pytest.fixture
def namespace(api):
    name = f"cl-it-{uuid.uuid4().hex[:8]}"
    api.create(K.NAMESPACES, None, {"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": name}})
    yield name
    api.delete(K.NAMESPACES, None, name)


def cr(kind, namespace, name, spec):
    return {"apiVersion": S.API_VERSION, "kind": kind, "metadata": {"name": name, "namespace": namespace},
            "spec": spec}


def condition(api, kind, namespace, name, type_):
    obj = api.get(K.CLUSTERLINK[kind], namespace, name)
    return get_condition(obj.get("status") or {}, type_)


def test_backend_against_a_real_api_server(api, namespace):
    imports, exports, peers = K.CLUSTERLINK["Import"], K.CLUSTERLINK["Export"], K.CLUSTERLINK["Peer"]

    async def failing_probe(name, gateways):
        raise ConnectionRefusedError(f"no gateway of {name} in this test")

    async def run_backend(stop: asyncio.Event):
        backend = KubeBackend(api, KubeSettings(namespace=namespace, identity=f"it-{uuid.uuid4().hex[:6]}",
                                                resync_period=30.0))
        await backend.start()
        events = KubeEvents(api, fallback_namespace=namespace, leading=lambda: reconciler.leader)
        events_stop = threading.Event()
        events_thread = events.start(events_stop)
        heartbeats = Heartbeats(backend.store, namespace=namespace, probe=failing_probe, timeout=1.0, events=events)
        reconciler = Reconciler(
            ReconcilerConfig(peer_name="it", peer_labels={}, system_namespace=namespace,
                             reserved_ports={8443: "peer listener"}, vip_range=None, gateway_agent_address="",
                             kubernetes=True),
            backend.store, token_key=backend.store.secret("token-key"), reachable=heartbeats.reachable,
            on_peers_changed=heartbeats.sync, services=backend.services, events=events)
        reconciler.leader = False

        def leadership(leading):
            reconciler.leader = leading
            reconciler.mark_dirty()

        backend.on_leadership(leadership)
        backend.store.on_cluster_change(reconciler.mark_dirty)
        try:
            async with asyncio.TaskGroup() as tg:
                tasks = [tg.create_task(reconciler.run()), tg.create_task(backend.run_leader_election())]
                heartbeats.sync()
                await stop.wait()
                for task in tasks:
                    task.cancel()
        finally:
            await heartbeats.stop()
            events_stop.set()
            events_thread.join(5)
            await backend.stop()

    loop = asyncio.new_event_loop()
    stop = asyncio.Event()
    runner = threading.Thread(target=lambda: loop.run_until_complete(run_backend(stop)), daemon=True)
    runner.start()
    try:
        # the leader holds the Lease
        lease = wait_for("the Lease", lambda: api.get(K.LEASES, namespace, "clusterlink-controlplane"))
        assert lease["spec"]["holderIdentity"].startswith("it-")

        # an Export without its Service is invalid until the Service appears
        api.create(exports, namespace, cr("Export", namespace, "echo", {"port": 8080}))
        wait_for("ExportValid=False", lambda: (condition(api, "Export", namespace, "echo", "ExportValid") or {})
                 .get("status") == "False")
        api.create(K.SERVICES, namespace, {"apiVersion": "v1", "kind": "Service",
                                           "metadata": {"name": "echo", "namespace": namespace},
                                           "spec": {"ports": [{"port": 8080}], "selector": {"app": "echo"}}})
        wait_for("ExportValid=True", lambda: (condition(api, "Export", namespace, "echo", "ExportValid") or {})
                 .get("status") == "True")

        # a Peer gets PeerReachable from the heartbeats (False: nothing answers here)
        api.create(peers, namespace, cr("Peer", namespace, "server1",
                                        {"gateways": [{"host": "127.0.0.1", "port": 9}]}))
        cond = wait_for("PeerReachable", lambda: condition(api, "Peer", namespace, "server1", "PeerReachable"))
        assert cond["status"] == "False" and cond["reason"] == "Heartbeat"
        # ... and Events say so, on the Peer and on the Export that was invalid
        def reasons():
            return {(e["regarding"]["kind"], e["regarding"]["name"], e["reason"])
                    for e in api.list(K.EVENTS, namespace=namespace).items}
        wait_for("the Events", lambda: {("Peer", "server1", "PeerUnreachable"),
                                        ("Export", "echo", "Error")} <= reasons())

        # an Import gets a target port, a Service with a ClusterIP, and that ClusterIP as its VIP
        api.create(imports, namespace, cr("Import", namespace, "reviews", {
            "port": 9080, "sources": [{"peer": "server1", "exportName": "echo", "exportNamespace": namespace}]}))
        svc = wait_for("the Import's Service", lambda: api.get(K.SERVICES, namespace, "reviews"))
        assert svc["spec"]["clusterIP"] and svc["spec"]["clusterIP"] != "None"
        assert svc["metadata"]["labels"]["app.kubernetes.io/managed-by"] == "clusterlink.net"
        imp = wait_for("the Import's status", lambda: (
            (o := api.get(imports, namespace, "reviews")).get("status", {}).get("vip") and o))
        assert imp["status"]["vip"] == svc["spec"]["clusterIP"]
        assert imp["spec"]["lbScheme"] == "round-robin"  # the CRD default, applied by the API server
        target = imp["spec"]["targetPort"]
        assert svc["spec"]["ports"][0]["targetPort"] == target and svc["spec"]["ports"][0]["port"] == 9080
        for type_ in ("ImportTargetPortValid", "ImportServiceValid"):
            assert get_condition(imp["status"], type_)["status"] == "True"

        # the Service goes with the Import
        api.delete(imports, namespace, "reviews")
        wait_for("the Service deleted", lambda: not _exists(api, K.SERVICES, namespace, "reviews"))

        # the API server enforces the CRDs: the Import name rule (CEL, Kubernetes 1.29+) and the schema
        with pytest.raises(K.PermanentError, match="63"):
            api.create(imports, namespace, cr("Import", namespace, "x" * 64, {
                "port": 80, "sources": [{"peer": "p", "exportName": "e", "exportNamespace": "n"}]}))
        api.create(imports, namespace, cr("Import", namespace, "x" * 63, {
            "port": 80, "sources": [{"peer": "p", "exportName": "e", "exportNamespace": "n"}]}))
        with pytest.raises(K.PermanentError):
            api.create(imports, namespace, cr("Import", namespace, "bad", {"port": 80, "sources": [],
                                                                            "lbScheme": "weighted"}))
    finally:
        loop.call_soon_threadsafe(stop.set)
        runner.join(30)


def _exists(api, resource, namespace, name):
    try:
        api.get(resource, namespace, name)
        return True
    except K.NotFound:
        return False


def test_wrapper_watch_and_410_against_a_real_api_server(api, namespace):
    listed = api.list(K.SERVICES, namespace=namespace)
    api.create(K.SERVICES, namespace, {"apiVersion": "v1", "kind": "Service",
                                       "metadata": {"name": "w", "namespace": namespace},
                                       "spec": {"ports": [{"port": 80}]}})
    stream = api.watch(K.SERVICES, namespace=namespace, resource_version=listed.resource_version, timeout_seconds=5)
    events = [(t, o["metadata"].get("name")) for t, o in stream if t != "BOOKMARK"]
    assert ("ADDED", "w") in events
    with pytest.raises(K.Gone):
        for _ in api.watch(K.SERVICES, resource_version="1", timeout_seconds=5):
            pass
