"""Export validity."""

from controlplane.model.objects import Object
from controlplane.server.exports import resolve_export


def export(host=""):
    spec = {"port": 9080}
    if host:
        spec["host"] = host
    return Object(kind="Export", name="reviews", namespace="default", spec=spec)


def test_host_is_used_unchecked():
    t = resolve_export(export("db.example.com"), {})
    assert t.valid and t.host == "db.example.com" and t.reason == "Verified"


def test_standalone_local_service():
    t = resolve_export(export(), {("default", "reviews"): "10.1.0.5"})
    assert t.valid and t.host == "10.1.0.5"


def test_missing_service_is_clusterlink_error_message():
    t = resolve_export(export(), {})
    assert not t.valid and t.reason == "Error"
    assert t.message == "export service 'default/reviews' does not exist"


def test_kubernetes_targets_the_service_dns_name():
    t = resolve_export(export(), {("default", "reviews"): "10.0.0.1"}, kubernetes=True)
    assert t.host == "reviews.default.svc.cluster.local"


def test_kubernetes_cluster_domain_is_configurable():
    t = resolve_export(export(), {("default", "reviews"): "10.0.0.1"}, kubernetes=True, cluster_domain="corp.example")
    assert t.host == "reviews.default.svc.corp.example"
