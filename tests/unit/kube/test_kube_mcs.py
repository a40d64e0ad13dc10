"""The Multi-Cluster Services API front door (`--mcs on`) without an API server: raw ServiceExports,
Services and Imports into the store (the wrapper fake), the reconciler with the MCS controller, and
the Exports, ServiceImports and statuses that come out. The objects it writes are checked against
the chart's MCS CRD schemas."""

from __future__ import annotations

import jsonschema
import pytest
import yaml

from controlplane.model.conditions import get_condition
from controlplane.store import kubeapi as K
from controlplane.store.base import StoreError
from controlplane.store.kube import MCS_WATCHED, WATCHED, KubeStore
from controlplane.store.kube_mcs import MultiClusterServices
from tests.unit.kube import rawobjects as R
from tests.unit.kube.fakekube import FakeKube
from tests.unit.kube.test_kube_reconcile import SYSTEM
from tests.unit.kube.test_kube_reconcile import Cluster as BaseCluster

IMPORTS = K.CLUSTERLINK["Import"]
EXPORTS = K.CLUSTERLINK["Export"]
OURS = {"app.kubernetes.io/managed-by": "clusterlink.net", "clusterlink.net/service-export": "true"}


def service_export(name, namespace="default", *, annotations=None):
    raw = {"apiVersion": "multicluster.x-k8s.io/v1alpha1", "kind": "ServiceExport",
           "metadata": R.meta(name, namespace)}
    if annotations:
        raw["metadata"]["annotations"] = annotations
    return raw


class Cluster(BaseCluster):
    """The reconcile tests' cluster with the MCS controller; writes are fed back as watch events."""

    def __init__(self, *, synced=True):
        super().__init__(mcs=True, mcs_synced=synced)

    def reconcile(self):
        """One pass, then feed back what it wrote as watch events (as the API server would)."""
        self.api.writes.clear()
        self.reconciler.reconcile_once()
        writes = list(self.api.writes)
        for verb, plural, namespace, name, _ in writes:
            resource = next(r for r in WATCHED + MCS_WATCHED if r.plural == plural)
            raw = self.api.find(resource, namespace, name)
            if raw is not None:
                self.store.handle_event(resource, "MODIFIED", raw)
            elif verb == "delete":
                self.store.handle_event(resource, "DELETED", {"metadata": {"namespace": namespace, "name": name}})
        return writes

    def condition(self, namespace, name):
        raw = self.api.find(K.SERVICE_EXPORTS, namespace, name)
        c = get_condition(raw.get("status") or {}, "Valid")
        return (c["status"], c["reason"], c["message"]) if c else None


@pytest.fixture
def cluster():
    return Cluster()


def crd_schema(kind):
    from tests.unit.chart.test_chart import render

    docs = render({"mcs": {"enabled": True}})
    crd, = [d for d in docs if d["kind"] == "CustomResourceDefinition" and d["spec"]["names"]["kind"] == kind]
    return crd["spec"]["versions"][0]["schema"]["openAPIV3Schema"]


def test_a_service_export_makes_the_export_of_its_service(cluster):
    cluster.add(K.SERVICES, R.service("reviews", ports=[{"name": "http", "port": 9080, "protocol": "TCP"}]))
    cluster.add(K.SERVICE_EXPORTS, service_export("reviews"))
    writes = cluster.reconcile()
    assert ("create", "exports") in [(w[0], w[1]) for w in writes]
    export = cluster.api.find(EXPORTS, "default", "reviews")
    assert export["spec"] == {"port": 9080, "protocol": "TCP"} and export["metadata"]["labels"] == OURS
    assert cluster.condition("default", "reviews") == ("True", "Exported",
                                                       "exported as the Export default/reviews, port 9080")
    # the Export is an ordinary one: the reconciler validates it against the Service
    assert get_condition(cluster.api.find(EXPORTS, "default", "reviews")["status"], "ExportValid")["status"] == "True"
    assert cluster.reconcile() == []  # converged
    jsonschema.validate(cluster.api.find(K.SERVICE_EXPORTS, "default", "reviews"), crd_schema("ServiceExport"))


def test_the_export_follows_the_service_port_and_goes_with_the_service_export(cluster):
    cluster.add(K.SERVICES, R.service("reviews", ports=[{"name": "http", "port": 9080, "protocol": "TCP"}]))
    cluster.add(K.SERVICE_EXPORTS, service_export("reviews"))
    cluster.reconcile()
    cluster.add(K.SERVICES, R.service("reviews", ports=[{"name": "http", "port": 9090, "protocol": "TCP"}]))
    cluster.reconcile()
    assert cluster.api.find(EXPORTS, "default", "reviews")["spec"] == {"port": 9090, "protocol": "TCP"}
    cluster.remove(K.SERVICE_EXPORTS, "default", "reviews")
    writes = cluster.reconcile()
    assert ("delete", "exports", "default", "reviews") in [w[:4] for w in writes]
    assert cluster.api.find(EXPORTS, "default", "reviews") is None


TCP80 = {"name": "http", "port": 80, "protocol": "TCP"}
TCP81 = {"name": "grpc", "port": 81, "protocol": "TCP"}
DNS = {"name": "dns", "port": 53, "protocol": "UDP"}
DNS_TCP = {"name": "dns-tcp", "port": 53, "protocol": "TCP"}
METRICS = {"name": "metrics", "port": 9153, "protocol": "TCP"}
EXPORT_PORT = "clusterlink.net/export-port"


@pytest.mark.parametrize("ports, annotations, want, export", [
    (None, None, ("False", "NoService"), None),
    ([{"name": "sctp", "port": 9, "protocol": "SCTP"}], None, ("False", "NoPort"), None),
    ([TCP80, TCP81], None, ("False", "AmbiguousPort"), None),
    ([TCP80, TCP81], {EXPORT_PORT: "grpc"}, ("True", "Exported"), (81, "TCP")),
    ([TCP80, TCP81], {EXPORT_PORT: "80"}, ("True", "Exported"), (80, "TCP")),
    ([TCP80], {EXPORT_PORT: "metrics"}, ("False", "NoSuchPort"), None),
    # UDP: a Service with only UDP ports exports UDP; TCP and UDP on one number exports both
    ([DNS], None, ("True", "Exported"), (53, "UDP")),
    ([DNS, {"name": "syslog", "port": 514, "protocol": "UDP"}], None, ("False", "AmbiguousPort"), None),
    ([DNS, DNS_TCP], None, ("True", "Exported"), (53, "TCPAndUDP")),
    ([TCP80, DNS], None, ("True", "Exported"), (80, "TCP")),  # TCP ports first, as before UDP was carried
    # kube-dns: dns/UDP 53, dns-tcp/TCP 53, metrics/TCP 9153
    ([DNS, DNS_TCP, METRICS], None, ("False", "AmbiguousPort"), None),
    ([DNS, DNS_TCP, METRICS], {EXPORT_PORT: "53"}, ("True", "Exported"), (53, "TCPAndUDP")),
    ([DNS, DNS_TCP, METRICS], {EXPORT_PORT: "dns"}, ("True", "Exported"), (53, "UDP")),
    ([DNS, DNS_TCP, METRICS], {EXPORT_PORT: "dns-tcp"}, ("True", "Exported"), (53, "TCP")),
    ([DNS, DNS_TCP, METRICS], {EXPORT_PORT: "9153"}, ("True", "Exported"), (9153, "TCP")),
    ([{"name": "sctp", "port": 9, "protocol": "SCTP"}], {EXPORT_PORT: "9"}, ("False", "NoSuchPort"), None),
])
def test_which_port_is_exported_and_why_not(cluster, ports, annotations, want, export):
    if ports is not None:
        cluster.add(K.SERVICES, R.service("reviews", ports=ports))
    cluster.add(K.SERVICE_EXPORTS, service_export("reviews", annotations=annotations))
    cluster.reconcile()
    assert cluster.condition("default", "reviews")[:2] == want
    got = cluster.api.find(EXPORTS, "default", "reviews")
    assert ((got["spec"]["port"], got["spec"]["protocol"]) if got else None) == export
    if got:
        assert cluster.reconcile() == []  # converged


def test_condition_messages_name_the_protocols(cluster):
    cluster.add(K.SERVICES, R.service("dns", ports=[DNS, DNS_TCP]))
    cluster.add(K.SERVICE_EXPORTS, service_export("dns"))
    cluster.add(K.SERVICES, R.service("none", ports=[{"name": "sctp", "port": 9, "protocol": "SCTP"}]))
    cluster.add(K.SERVICE_EXPORTS, service_export("none"))
    cluster.add(K.SERVICES, R.service("two", ports=[DNS, {"name": "syslog", "port": 514, "protocol": "UDP"}]))
    cluster.add(K.SERVICE_EXPORTS, service_export("two"))
    cluster.add(K.SERVICES, R.service("named", ports=[TCP80]))
    cluster.add(K.SERVICE_EXPORTS, service_export("named", annotations={EXPORT_PORT: "dns"}))
    cluster.reconcile()
    assert cluster.condition("default", "dns")[2] == "exported as the Export default/dns, port 53 (TCPAndUDP)"
    assert cluster.condition("default", "none")[2] == ("the Service default/none has no TCP or UDP port "
                                                      "(ClusterLink carries TCP and UDP)")
    assert cluster.condition("default", "two")[2].startswith("the Service default/two has 2 UDP ports (dns, syslog)")
    assert cluster.condition("default", "named")[2] == ("the Service default/named has no TCP or UDP port 'dns' "
                                                       "(clusterlink.net/export-port)")


def test_the_export_follows_the_service_protocol(cluster):
    cluster.add(K.SERVICES, R.service("dns", ports=[DNS]))
    cluster.add(K.SERVICE_EXPORTS, service_export("dns"))
    cluster.reconcile()
    assert cluster.api.find(EXPORTS, "default", "dns")["spec"] == {"port": 53, "protocol": "UDP"}
    cluster.add(K.SERVICES, R.service("dns", ports=[DNS, DNS_TCP]))
    cluster.reconcile()
    assert cluster.api.find(EXPORTS, "default", "dns")["spec"] == {"port": 53, "protocol": "TCPAndUDP"}
    assert cluster.reconcile() == []


def test_an_export_that_turns_invalid_is_removed(cluster):
    cluster.add(K.SERVICES, R.service("reviews", ports=[{"name": "http", "port": 80, "protocol": "TCP"}]))
    cluster.add(K.SERVICE_EXPORTS, service_export("reviews"))
    cluster.reconcile()
    cluster.remove(K.SERVICES, "default", "reviews")
    cluster.reconcile()
    assert cluster.api.find(EXPORTS, "default", "reviews") is None
    assert cluster.condition("default", "reviews")[:2] == ("False", "NoService")


def test_an_export_made_by_hand_is_never_touched(cluster):
    cluster.add(K.SERVICES, R.service("reviews", ports=[{"name": "http", "port": 80, "protocol": "TCP"}]))
    cluster.add(EXPORTS, R.export("reviews", port=8080, host="elsewhere.example"))
    cluster.add(K.SERVICE_EXPORTS, service_export("reviews"))
    writes = cluster.reconcile()
    assert not [w for w in writes if w[1] == "exports" and w[0] != "patch_status"]
    assert cluster.api.find(EXPORTS, "default", "reviews")["spec"] == {"port": 8080, "host": "elsewhere.example"}
    assert cluster.condition("default", "reviews")[:2] == ("True", "ExportExists")
    cluster.remove(K.SERVICE_EXPORTS, "default", "reviews")
    cluster.reconcile()
    assert cluster.api.find(EXPORTS, "default", "reviews") is not None  # not ours: stays


def test_nothing_is_swept_from_an_incomplete_cache():
    cluster = Cluster(synced=False)
    cluster.store.handle_list(K.SERVICE_IMPORTS, [])  # ServiceExports not listed yet
    cluster.add(EXPORTS, {**R.export("reviews", port=80), "metadata": {**R.meta("reviews", "default"),
                                                                        "labels": OURS}})
    cluster.reconcile()
    assert cluster.api.find(EXPORTS, "default", "reviews") is not None
    cluster.store.handle_list(K.SERVICE_EXPORTS, [])
    cluster.reconcile()
    assert cluster.api.find(EXPORTS, "default", "reviews") is None  # listed: now it is an orphan


def test_an_import_gets_a_service_import_with_its_vip(cluster):
    cluster.add(IMPORTS, R.import_("reviews", "default", target=7000))
    cluster.reconcile()
    vip = cluster.api.find(IMPORTS, "default", "reviews")["status"]["vip"]
    si = cluster.api.find(K.SERVICE_IMPORTS, "default", "reviews")
    assert si["spec"] == {"type": "ClusterSetIP", "ips": [vip],
                          "ports": [{"name": "import", "protocol": "TCP", "port": 9080}]}
    assert si["status"] == {"clusters": [{"cluster": "server1"}]}
    assert si["metadata"]["labels"]["app.kubernetes.io/managed-by"] == "clusterlink.net"
    owner, = si["metadata"]["ownerReferences"]
    assert owner["kind"] == "Import" and owner["uid"] == cluster.api.find(IMPORTS, "default", "reviews")["metadata"]["uid"]
    jsonschema.validate(si, crd_schema("ServiceImport"))
    assert cluster.reconcile() == []  # converged

    # the port changes: the ServiceImport follows; the Import goes: so does the ServiceImport
    cluster.add(IMPORTS, R.import_("reviews", "default", port=9443, target=7000,
                                   status=cluster.api.find(IMPORTS, "default", "reviews")["status"],
                                   uid=owner["uid"]))
    cluster.reconcile()
    assert cluster.api.find(K.SERVICE_IMPORTS, "default", "reviews")["spec"]["ports"][0]["port"] == 9443
    cluster.remove(IMPORTS, "default", "reviews")
    writes = cluster.reconcile()
    assert ("delete", "serviceimports", "default", "reviews") in [w[:4] for w in writes]
    assert cluster.api.find(K.SERVICE_IMPORTS, "default", "reviews") is None


def test_a_service_import_that_is_not_ours_is_left_alone(cluster, caplog):
    foreign = {"apiVersion": "multicluster.x-k8s.io/v1alpha1", "kind": "ServiceImport",
               "metadata": R.meta("reviews", "default"), "spec": {"type": "Headless", "ports": [{"port": 1}]}}
    cluster.api.put(K.SERVICE_IMPORTS, foreign)  # not labelled: the store's watch never sees it
    cluster.add(IMPORTS, R.import_("reviews", "default", target=7000))
    cluster.reconcile()
    cluster.reconcile()
    assert cluster.api.find(K.SERVICE_IMPORTS, "default", "reviews")["spec"]["type"] == "Headless"
    assert sum("is not ClusterLink's" in r.getMessage() for r in caplog.records) == 1


def test_an_import_without_a_vip_has_no_service_import(cluster):
    cluster.add(IMPORTS, R.import_("reviews", "default", target=8443))  # the peer listener's port: no lease
    cluster.reconcile()
    assert "vip" not in (cluster.api.find(IMPORTS, "default", "reviews").get("status") or {})
    assert cluster.api.find(K.SERVICE_IMPORTS, "default", "reviews") is None


def test_api_failures_are_retried_or_reported(cluster):
    cluster.add(IMPORTS, R.import_("reviews", "default", target=7000))
    cluster.api.errors[("create", "serviceimports")].append(K.TemporaryError("503", status=503))
    with pytest.raises(StoreError, match="ServiceImport default/reviews"):
        cluster.reconcile()
    cluster.reconcile()  # the next pass makes it
    assert cluster.api.find(K.SERVICE_IMPORTS, "default", "reviews") is not None

    cluster.add(K.SERVICES, R.service("ratings", ports=[{"name": "http", "port": 80, "protocol": "TCP"}]))
    cluster.add(K.SERVICE_EXPORTS, service_export("ratings"))
    cluster.api.errors[("patch_status", "serviceexports")].append(K.PermanentError("403 forbidden", status=403))
    cluster.reconcile()  # a permanent failure is logged, not raised: the Export is still made
    assert cluster.api.find(EXPORTS, "default", "ratings") is not None


def test_a_follower_writes_nothing(cluster):
    cluster.reconciler.leader = False
    cluster.add(K.SERVICES, R.service("reviews", ports=[{"name": "http", "port": 80, "protocol": "TCP"}]))
    cluster.add(K.SERVICE_EXPORTS, service_export("reviews"))
    cluster.add(IMPORTS, R.import_("reviews", "default", target=7000))
    assert cluster.reconcile() == []


def test_the_store_needs_the_mcs_watches_to_be_synced():
    api = FakeKube()
    store = KubeStore(api, namespace=SYSTEM, mcs=True)
    for resource in WATCHED:
        store.handle_list(resource, [])
    assert not store.is_synced()
    for resource in MCS_WATCHED:
        store.handle_list(resource, [])
    assert store.is_synced()
    with pytest.raises(ValueError, match="MCS"):
        MultiClusterServices(api, KubeStore(api, namespace=SYSTEM))


def test_the_mcs_crds_accept_what_users_write():
    svcex = yaml.safe_load("apiVersion: multicluster.x-k8s.io/v1alpha1\nkind: ServiceExport\n"
                           "metadata: {name: reviews, namespace: default}\n")
    jsonschema.validate(svcex, crd_schema("ServiceExport"))
    with pytest.raises(jsonschema.ValidationError):
        jsonschema.validate({"spec": {"type": "Somewhere", "ports": []}}, crd_schema("ServiceImport"))


@pytest.mark.parametrize("protocol, ports", [
    ("UDP", [{"name": "import-udp", "protocol": "UDP", "port": 53}]),
    ("TCPAndUDP", [{"name": "import", "protocol": "TCP", "port": 53},
                   {"name": "import-udp", "protocol": "UDP", "port": 53}]),
])
def test_the_service_import_lists_the_carried_protocols(cluster, protocol, ports):
    raw = R.import_("dns", "default", port=53, target=7000)
    raw["spec"]["protocol"] = protocol
    cluster.add(IMPORTS, raw)
    cluster.reconcile()
    si = cluster.api.find(K.SERVICE_IMPORTS, "default", "dns")
    assert si["spec"]["ports"] == ports
    jsonschema.validate(si, crd_schema("ServiceImport"))
    assert cluster.reconcile() == []
