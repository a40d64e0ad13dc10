"""Kubernetes mode end to end without an API server: raw watch events into the store, the reconciler
with the Import Services provider, and the Services, EndpointSlices and status writes that come out."""

import pytest

from controlplane.model.conditions import get_condition
from controlplane.server.reconciler import Reconciler, ReconcilerConfig
from controlplane.store import kubeapi as K
from controlplane.store.base import StoreError
from controlplane.store.kube import MCS_WATCHED, WATCHED, KubeStore
from controlplane.store.kube_mcs import MultiClusterServices
from controlplane.store.kube_services import ImportServices
from tests.unit.kube import rawobjects as R
from tests.unit.kube.fakekube import FakeKube

SYSTEM = "clusterlink-system"
SELECTOR = {"app.kubernetes.io/name": "clusterlink", "app.kubernetes.io/component": "gateway"}
IMPORTS = K.CLUSTERLINK["Import"]
EXPORTS = K.CLUSTERLINK["Export"]


class Cluster:
    """A fake cluster (the wrapper fake), the store fed from it, and a leader reconciler."""

    def __init__(self, *, mcs=False, mcs_synced=True):
        self.api = FakeKube()
        self.store = KubeStore(self.api, namespace=SYSTEM, mcs=mcs)
        self.store.leader = True
        self.services = ImportServices(self.api, self.store, system_namespace=SYSTEM, gateway_selector=SELECTOR)
        self.mcs = MultiClusterServices(self.api, self.store) if mcs else None
        config = ReconcilerConfig(peer_name="client", peer_labels={}, system_namespace=SYSTEM,
                                  reserved_ports={8443: "peer listener", 4443: "agent listener"}, vip_range=None,
                                  gateway_agent_address="gw:4443", kubernetes=True)
        self.reconciler = Reconciler(config, self.store, token_key=b"k" * 32, services=self.services,
                                     front_door=self.mcs)
        for resource in WATCHED + (MCS_WATCHED if mcs and mcs_synced else ()):
            self.store.handle_list(resource, [])

    def add(self, resource, raw):
        stored = self.api.put(resource, raw)
        self.store.handle_event(resource, "ADDED", stored)
        return stored

    def modify(self, resource, namespace, name, patch):
        stored = self.api.patch(resource, namespace, name, patch)
        self.api.writes.pop()  # not ours: the user's
        self.store.handle_event(resource, "MODIFIED", stored)

    def remove(self, resource, namespace, name):
        raw = self.api.find(resource, namespace, name)
        del self.api.objects[self.api.key(resource, namespace, name)]
        self.store.handle_event(resource, "DELETED", raw)

    def reconcile(self):
        self.api.writes.clear()
        self.reconciler.reconcile_once()
        return list(self.api.writes)

    def status(self, kind, namespace, name):
        resource = K.CLUSTERLINK[kind]
        return (self.api.find(resource, namespace, name) or {}).get("status") or {}


def cond(status, type_):
    c = get_condition(status, type_)
    return (c["status"], c["reason"], c["message"]) if c else None


@pytest.fixture
def cluster():
    return Cluster()


def test_import_in_the_clusterlink_namespace_gets_a_gateway_selector_service(cluster):
    cluster.add(IMPORTS, R.import_("reviews", SYSTEM))
    writes = cluster.reconcile()
    assert [(w[0], w[1]) for w in writes] == [("patch", "imports"), ("create", "services"),
                                              ("patch_status", "imports")]
    target = cluster.api.find(IMPORTS, SYSTEM, "reviews")["spec"]["targetPort"]
    assert 1024 <= target < 49152
    svc = cluster.api.find(K.SERVICES, SYSTEM, "reviews")
    assert svc["metadata"]["labels"] == {"app.kubernetes.io/managed-by": "clusterlink.net",
                                         "clusterlink.net/import-name": "reviews",
                                         "clusterlink.net/import-namespace": SYSTEM}
    assert svc["spec"]["selector"] == SELECTOR and svc["spec"]["type"] == "ClusterIP"
    assert svc["spec"]["ports"] == [{"name": "import", "protocol": "TCP", "port": 9080, "targetPort": target}]
    owner, = svc["metadata"]["ownerReferences"]
    assert owner["kind"] == "Import" and owner["uid"] == cluster.api.find(IMPORTS, SYSTEM, "reviews")["metadata"]["uid"]
    status = cluster.status("Import", SYSTEM, "reviews")
    assert status["vip"] == svc["spec"]["clusterIP"]
    assert cond(status, "ImportTargetPortValid")[:2] == ("True", "Leased")
    assert cond(status, "ImportServiceValid")[:2] == ("True", "Valid")
    assert cluster.reconcile() == []  # converged: nothing is written again


def test_import_elsewhere_gets_a_selectorless_service_and_an_endpoint_slice_of_the_gateways(cluster):
    cluster.add(K.PODS, R.gateway_pod("gw-1", "10.244.1.5"))
    cluster.add(K.PODS, R.gateway_pod("gw-0", "10.244.0.5", ready=False))
    cluster.add(IMPORTS, R.import_("reviews", "default", target=7000))
    writes = cluster.reconcile()
    assert [(w[0], w[1]) for w in writes] == [("create", "services"), ("create", "endpointslices"),
                                              ("patch_status", "imports")]
    svc = cluster.api.find(K.SERVICES, "default", "reviews")
    assert "selector" not in svc["spec"]
    eps = cluster.api.find(K.ENDPOINT_SLICES, "default", "reviews-clusterlink")
    assert eps["metadata"]["labels"]["kubernetes.io/service-name"] == "reviews"
    assert eps["metadata"]["labels"]["endpointslice.kubernetes.io/managed-by"] == "clusterlink.net"
    assert eps["addressType"] == "IPv4"
    assert [(e["addresses"], e["conditions"]["ready"]) for e in eps["endpoints"]] == [(["10.244.0.5"], False),
                                                                                       (["10.244.1.5"], True)]
    assert eps["ports"] == [{"name": "import", "protocol": "TCP", "port": 7000}]
    assert cluster.reconcile() == []

    # a gateway pod becomes ready, another is deleted: the slice follows
    cluster.modify(K.PODS, SYSTEM, "gw-0", {"status": {"conditions": [{"type": "Ready", "status": "True"}]}})
    cluster.remove(K.PODS, SYSTEM, "gw-1")
    writes = cluster.reconcile()
    assert [(w[0], w[1]) for w in writes] == [("patch", "endpointslices")]
    eps = cluster.api.find(K.ENDPOINT_SLICES, "default", "reviews-clusterlink")
    assert [(e["addresses"], e["conditions"]["ready"]) for e in eps["endpoints"]] == [(["10.244.0.5"], True)]


def test_service_is_deleted_with_the_import(cluster):
    cluster.add(IMPORTS, R.import_("reviews", "default", target=7000))
    cluster.reconcile()
    uid = cluster.api.find(K.SERVICES, "default", "reviews")["metadata"]["uid"]
    cluster.remove(IMPORTS, "default", "reviews")
    writes = cluster.reconcile()
    assert ("delete", "services", "default", "reviews", uid) in writes
    assert any(w[:2] == ("delete", "endpointslices") for w in writes)
    assert cluster.api.find(K.SERVICES, "default", "reviews") is None
    assert cluster.api.find(K.ENDPOINT_SLICES, "default", "reviews-clusterlink") is None


def test_existing_unlabelled_service_is_a_conflict_until_it_carries_the_labels(cluster):
    cluster.add(K.SERVICES, R.service("reviews", "default", cluster_ip="10.96.9.9"))
    cluster.add(IMPORTS, R.import_("reviews", "default", target=7000))
    writes = cluster.reconcile()
    assert [(w[0], w[1]) for w in writes] == [("patch_status", "imports")]  # the user's Service is left alone
    status = cluster.status("Import", "default", "reviews")
    assert cond(status, "ImportServiceValid") == (
        "False", "Error",
        "service 'default/reviews' already exists and managed by 'unknown' (it lacks the clusterlink.net labels)")
    assert "vip" not in status

    cluster.modify(K.SERVICES, "default", "reviews", {"metadata": {"labels": {
        "app.kubernetes.io/managed-by": "clusterlink.net", "clusterlink.net/import-name": "reviews",
        "clusterlink.net/import-namespace": "default"}}})
    writes = cluster.reconcile()
    assert ("patch", "services") in [(w[0], w[1]) for w in writes]  # adopted: made ours (ports, owner)
    svc = cluster.api.find(K.SERVICES, "default", "reviews")
    assert svc["spec"]["ports"][0]["targetPort"] == 7000 and svc["metadata"]["ownerReferences"][0]["kind"] == "Import"
    status = cluster.status("Import", "default", "reviews")
    assert cond(status, "ImportServiceValid")[0] == "True" and status["vip"] == "10.96.9.9"


def test_service_managed_by_someone_else_is_named_in_the_condition(cluster):
    cluster.add(K.SERVICES, R.service("reviews", "default", labels={"app.kubernetes.io/managed-by": "helm"}))
    cluster.add(IMPORTS, R.import_("reviews", "default", target=7000))
    cluster.reconcile()
    assert cond(cluster.status("Import", "default", "reviews"), "ImportServiceValid")[2] == \
        "service 'default/reviews' already exists and managed by 'helm'"


def test_import_without_a_valid_target_port_gets_no_service(cluster):
    cluster.add(IMPORTS, R.import_("old", "default", target=7000))
    cluster.add(IMPORTS, R.import_("new", "default", target=7000))
    cluster.api.objects[cluster.api.key(IMPORTS, "default", "new")]["metadata"]["creationTimestamp"] = \
        "2024-02-01T00:00:00Z"
    cluster.store.handle_event(IMPORTS, "MODIFIED", cluster.api.find(IMPORTS, "default", "new"))
    cluster.reconcile()
    assert cluster.api.find(K.SERVICES, "default", "new") is None
    status = cluster.status("Import", "default", "new")
    assert cond(status, "ImportTargetPortValid")[:2] == ("False", "Error")
    assert cond(status, "ImportServiceValid")[:2] == ("False", "Error")
    # the conflict resolved (another port): the Service appears
    cluster.modify(IMPORTS, "default", "new", {"spec": {"targetPort": 7001}})
    cluster.reconcile()
    assert cluster.api.find(K.SERVICES, "default", "new")["spec"]["ports"][0]["targetPort"] == 7001
    assert cond(cluster.status("Import", "default", "new"), "ImportServiceValid")[0] == "True"


def test_changed_import_port_updates_the_service(cluster):
    cluster.add(IMPORTS, R.import_("reviews", SYSTEM, target=7000))
    cluster.reconcile()
    cluster.modify(IMPORTS, SYSTEM, "reviews", {"spec": {"port": 80}})
    writes = cluster.reconcile()
    assert ("patch", "services") in [(w[0], w[1]) for w in writes]
    assert cluster.api.find(K.SERVICES, SYSTEM, "reviews")["spec"]["ports"][0]["port"] == 80


def test_orphaned_service_of_a_missing_import_is_swept_and_foreign_ones_are_not(cluster):
    labels = {"app.kubernetes.io/managed-by": "clusterlink.net", "clusterlink.net/import-name": "gone",
              "clusterlink.net/import-namespace": "default"}
    cluster.add(K.SERVICES, R.service("gone", "default", labels=labels))
    cluster.add(K.SERVICES, R.service("mine", "default", labels={"app.kubernetes.io/managed-by": "helm"}))
    cluster.reconcile()
    assert cluster.api.find(K.SERVICES, "default", "gone") is None
    assert cluster.api.find(K.SERVICES, "default", "mine") is not None


def test_nothing_is_swept_before_the_caches_are_filled():
    api = FakeKube()
    store = KubeStore(api, namespace=SYSTEM)
    store.leader = True
    labels = {"app.kubernetes.io/managed-by": "clusterlink.net", "clusterlink.net/import-name": "a",
              "clusterlink.net/import-namespace": "default"}
    store.handle_list(K.SERVICES, [api.put(K.SERVICES, R.service("a", "default", labels=labels))])
    ImportServices(api, store, system_namespace=SYSTEM, gateway_selector=SELECTOR).reconcile([])
    assert api.writes == []


def test_export_validity_follows_the_target_service(cluster):
    cluster.add(EXPORTS, R.export("reviews", "default"))
    cluster.add(EXPORTS, R.export("external", "default", host="db.example.com"))
    cluster.reconcile()
    assert cond(cluster.status("Export", "default", "reviews"), "ExportValid") == (
        "False", "Error", "export service 'default/reviews' does not exist")
    assert cond(cluster.status("Export", "default", "external"), "ExportValid")[:2] == ("True", "Verified")
    cluster.add(K.SERVICES, R.service("reviews", "default"))
    cluster.reconcile()
    valid = cond(cluster.status("Export", "default", "reviews"), "ExportValid")
    assert valid[:2] == ("True", "Verified") and "reviews.default.svc.cluster.local:9080" in valid[2]
    cluster.remove(K.SERVICES, "default", "reviews")
    cluster.reconcile()
    assert cond(cluster.status("Export", "default", "reviews"), "ExportValid")[0] == "False"


def test_followers_write_nothing(cluster):
    cluster.store.leader = False
    cluster.reconciler.leader = False
    cluster.add(IMPORTS, R.import_("reviews", "default"))
    cluster.add(EXPORTS, R.export("reviews", "default"))
    assert cluster.reconcile() == []


def test_temporary_failure_creating_the_service_retries_the_pass(cluster):
    cluster.add(IMPORTS, R.import_("reviews", "default", target=7000))
    cluster.api.errors[("create", "services")].append(K.TemporaryError("API server unavailable (503)", status=503))
    with pytest.raises(StoreError, match="unavailable"):
        cluster.reconcile()
    assert cluster.status("Import", "default", "reviews") == {}  # nothing half-reported
    cluster.reconcile()
    assert cond(cluster.status("Import", "default", "reviews"), "ImportServiceValid")[0] == "True"


def test_forbidden_service_creation_is_reported_on_the_import(cluster):
    cluster.add(IMPORTS, R.import_("reviews", "locked", target=7000))
    cluster.api.errors[("create", "services")].append(
        K.PermanentError('creating Service locked/reviews: services is forbidden (403)', status=403))
    cluster.reconcile()
    ok, reason, message = cond(cluster.status("Import", "locked", "reviews"), "ImportServiceValid")
    assert (ok, reason) == ("False", "Error") and "forbidden" in message


def test_snapshots_carry_the_cluster_ip_as_the_vip(cluster):
    cluster.add(IMPORTS, R.import_("reviews", "default", target=7000))
    cluster.reconcile()
    cluster.reconcile()  # the next pass renders the state with the written status
    from controlplane.server.snapshots import agent_view

    view = agent_view(cluster.reconciler._state, "node-1")
    (imp,) = view.imports
    assert imp.vip == cluster.api.find(K.SERVICES, "default", "reviews")["spec"]["clusterIP"]
    assert imp.target_port == 7000


def import_with_protocol(name, namespace, protocol, **kw):
    raw = R.import_(name, namespace, **kw)
    if protocol is not None:
        raw["spec"]["protocol"] = protocol
    return raw


@pytest.mark.parametrize("protocol, ports", [
    (None, [("import", "TCP")]),
    ("TCP", [("import", "TCP")]),
    ("UDP", [("import-udp", "UDP")]),
    ("TCPAndUDP", [("import", "TCP"), ("import-udp", "UDP")]),
])
def test_the_import_service_has_one_port_per_carried_protocol(cluster, protocol, ports):
    cluster.add(K.PODS, R.gateway_pod("gw-0", "10.244.0.5"))
    cluster.add(IMPORTS, import_with_protocol("dns", SYSTEM, protocol, port=53, target=7000))
    cluster.add(IMPORTS, import_with_protocol("dns", "default", protocol, port=53, target=7001))
    cluster.reconcile()
    svc = cluster.api.find(K.SERVICES, SYSTEM, "dns")
    assert svc["spec"]["ports"] == [{"name": n, "protocol": p, "port": 53, "targetPort": 7000} for n, p in ports]
    svc = cluster.api.find(K.SERVICES, "default", "dns")
    assert svc["spec"]["ports"] == [{"name": n, "protocol": p, "port": 53, "targetPort": 7001} for n, p in ports]
    eps = cluster.api.find(K.ENDPOINT_SLICES, "default", "dns-clusterlink")
    assert eps["ports"] == [{"name": n, "protocol": p, "port": 7001} for n, p in ports]
    assert cond(cluster.status("Import", "default", "dns"), "ImportServiceValid")[:2] == ("True", "Valid")
    assert cluster.reconcile() == []  # converged


def test_tcp_import_service_and_slice_are_unchanged():
    from controlplane.model.objects import from_dict
    from controlplane.store.kube import GatewayPod
    from controlplane.store.kube_services import desired_service, desired_slice

    imp = from_dict(R.import_("reviews", "default", target=7000))
    assert imp.spec["protocol"] == "TCP"
    assert desired_service(imp, 7000, selector=None)["spec"] == {
        "type": "ClusterIP", "ports": [{"name": "import", "protocol": "TCP", "port": 9080, "targetPort": 7000}]}
    pods = [GatewayPod(name="gw-0", ip="10.244.0.5", ready=True)]
    assert desired_slice(imp, 7000, pods, system_namespace=SYSTEM)["ports"] == [
        {"name": "import", "protocol": "TCP", "port": 7000}]
    del imp.spec["protocol"]  # absent (e.g. not defaulted): TCP
    assert desired_service(imp, 7000, selector=None)["spec"]["ports"] == [
        {"name": "import", "protocol": "TCP", "port": 9080, "targetPort": 7000}]


def test_changing_the_protocol_updates_the_service_and_the_slice(cluster):
    cluster.add(K.PODS, R.gateway_pod("gw-0", "10.244.0.5"))
    cluster.add(IMPORTS, R.import_("dns", "default", port=53, target=7000))
    cluster.reconcile()
    cluster.modify(IMPORTS, "default", "dns", {"spec": {"protocol": "UDP"}})
    writes = cluster.reconcile()
    assert {("patch", "services"), ("patch", "endpointslices")} <= {(w[0], w[1]) for w in writes}
    assert [(p["name"], p["protocol"]) for p in cluster.api.find(K.SERVICES, "default", "dns")["spec"]["ports"]] == [
        ("import-udp", "UDP")]
    assert [(p["name"], p["protocol"]) for p in cluster.api.find(K.ENDPOINT_SLICES, "default",
                                                                 "dns-clusterlink")["ports"]] == [("import-udp", "UDP")]
    ok, reason, message = cond(cluster.status("Import", "default", "dns"), "ImportServiceValid")
    assert (ok, reason) == ("True", "Valid") and message.endswith("gateway port 7000 (UDP)")
    assert cluster.reconcile() == []
