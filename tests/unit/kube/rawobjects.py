"""Raw Kubernetes objects (dicts as the API server sends them) for the store tests."""

from __future__ import annotations

import itertools
from typing import Any

_rv = itertools.count(1000)


def meta(name: str, namespace: str | None, *, uid: str | None = None, rv: int | None = None,
         labels: dict | None = None, generation: int | None = 1) -> dict[str, Any]:
    m: dict[str, Any] = {"name": name, "uid": uid or f"uid-{namespace}-{name}",
                         "resourceVersion": str(rv if rv is not None else next(_rv)),
                         "creationTimestamp": "2024-01-01T00:00:00Z"}
    if namespace is not None:
        m["namespace"] = namespace
    if labels:
        m["labels"] = labels
    if generation is not None:
        m["generation"] = generation
    return m


def import_(name: str = "reviews", namespace: str = "default", *, port: int = 9080, target: int | None = None,
            status: dict | None = None, **kw: Any) -> dict[str, Any]:
    spec: dict[str, Any] = {"port": port, "sources": [{"peer": "server1", "exportName": name,
                                                       "exportNamespace": "default"}]}
    if target is not None:
        spec["targetPort"] = target
    obj = {"apiVersion": "clusterlink.net/v1alpha1", "kind": "Import", "metadata": meta(name, namespace, **kw),
           "spec": spec}
    if status:
        obj["status"] = status
    return obj


def export(name: str = "reviews", namespace: str = "default", *, port: int = 9080, host: str | None = None,
           **kw: Any) -> dict[str, Any]:
    spec: dict[str, Any] = {"port": port}
    if host:
        spec["host"] = host
    return {"apiVersion": "clusterlink.net/v1alpha1", "kind": "Export", "metadata": meta(name, namespace, **kw),
            "spec": spec}


def peer(name: str = "server1", namespace: str = "clusterlink-system", **kw: Any) -> dict[str, Any]:
    return {"apiVersion": "clusterlink.net/v1alpha1", "kind": "Peer", "metadata": meta(name, namespace, **kw),
            "spec": {"gateways": [{"host": "10.0.0.1", "port": 30443}]}}


def policy(name: str = "allow", namespace: str = "default", *, selector: dict | None = None,
           **kw: Any) -> dict[str, Any]:
    entry = {"workloadSelector": selector or {}}
    return {"apiVersion": "clusterlink.net/v1alpha1", "kind": "AccessPolicy", "metadata": meta(name, namespace, **kw),
            "spec": {"action": "allow", "from": [entry], "to": [entry]}}


def service(name: str, namespace: str = "default", *, cluster_ip: str = "10.96.7.7", labels: dict | None = None,
            selector: dict | None = None, ports: list | None = None, **kw: Any) -> dict[str, Any]:
    spec: dict[str, Any] = {"type": "ClusterIP", "clusterIP": cluster_ip,
                            "ports": ports or [{"name": "http", "port": 80, "targetPort": 8080, "protocol": "TCP"}]}
    if selector:
        spec["selector"] = selector
    return {"apiVersion": "v1", "kind": "Service",
            "metadata": meta(name, namespace, labels=labels, generation=None, **kw), "spec": spec}


def gateway_pod(name: str, ip: str, *, ready: bool = True, namespace: str = "clusterlink-system") -> dict[str, Any]:
    return {"apiVersion": "v1", "kind": "Pod",
            "metadata": meta(name, namespace, generation=None,
                             labels={"app.kubernetes.io/name": "clusterlink",
                                     "app.kubernetes.io/component": "gateway"}),
            "status": {"podIP": ip, "conditions": [{"type": "Ready", "status": "True" if ready else "False"}]}}
