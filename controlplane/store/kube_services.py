"""The Services of Imports in Kubernetes: desired state (pure) and the provider the reconciler calls.

Every Import gets a ClusterIP Service of the same name in its own namespace, port `spec.port` →
the gateway's `spec.targetPort` (one port per protocol `spec.protocol` carries: `import` for TCP,
`import-udp` for UDP, on the same number), labelled `app.kubernetes.io/managed-by: clusterlink.net`,
`clusterlink.net/import-name`, `clusterlink.net/import-namespace`, and owned by the Import (so
the garbage collector removes it even when the control plane is down). Its ClusterIP is the
Import's VIP: the address the agents redirect, written to `status.vip`. Clients on nodes without
an agent reach the gateway pods through the Service itself (kube-proxy), the classic way.

A Service selector only selects pods of its own namespace. So:
- an Import in the ClusterLink namespace gets a Service whose selector is the gateway pods;
- an Import elsewhere gets a selector-less Service plus one EndpointSlice (`<name>-clusterlink`,
  managed by clusterlink.net) listing the gateway pods' addresses on the target port, kept in step
  with the gateway pods the store watches.
(The original ClusterLink creates a system Service plus an ExternalName Service instead; an
ExternalName Service has no ClusterIP, and the agents need one to redirect.)

An existing Service is adopted only when it carries the three labels for this very Import;
otherwise the Import gets `ImportServiceValid=False` with "service 'ns/x' already exists and
managed by '...'" and the Service is left alone. When an Import goes away (or has no valid target
port) its Service and EndpointSlice are deleted; the sweep only touches objects labelled for an
Import that no longer exists.
"""

from __future__ import annotations

import ipaddress
import logging
from collections.abc import Mapping, Sequence
from typing import Any, NamedTuple

from controlplane.model import schema as S
from controlplane.model.objects import Object, ObjectKey

from .base import StoreError
from .kube import (
    LABEL_IMPORT_NAME,
    LABEL_IMPORT_NAMESPACE,
    LABEL_MANAGED_BY,
    MANAGER,
    GatewayPod,
    KubeStore,
    KubeWriter,
    ServiceView,
    SliceView,
)
from .kubeapi import ENDPOINT_SLICES, SERVICES, KubeError, NotFound

log = logging.getLogger(__name__)

PORT_NAME = "import"
UDP_PORT_NAME = PORT_NAME + "-udp"  # the UDP port of a UDP or TCPAndUDP Import (same port number)
SLICE_SUFFIX = "-clusterlink"
LABEL_SLICE_SERVICE = "kubernetes.io/service-name"
LABEL_SLICE_MANAGED_BY = "endpointslice.kubernetes.io/managed-by"


class ImportServiceState(NamedTuple):
    """What the reconciler writes for one Import: its VIP and the ImportServiceValid condition."""

    vip: str
    ok: bool
    reason: str
    message: str


# -- pure: desired state and ownership -------------------------------------------------------------


def import_labels(imp: Object) -> dict[str, str]:
    return {LABEL_MANAGED_BY: MANAGER, LABEL_IMPORT_NAME: imp.name, LABEL_IMPORT_NAMESPACE: imp.namespace}


def owner_reference(imp: Object) -> dict[str, Any]:
    return {"apiVersion": S.API_VERSION, "kind": S.IMPORT.kind, "name": imp.name, "uid": imp.uid, "controller": True}


def port_names(protocol: str | None) -> list[tuple[str, str]]:
    """(port name, protocol) of every port an Import's Service (and EndpointSlice, ServiceImport) has:
    `import`/TCP, `import-udp`/UDP, or both (TCP first) for TCPAndUDP. Each name stands for one
    protocol, so a change of protocol always changes the names."""
    protocols = S.carried(protocol)
    return [(name, proto) for name, proto in ((PORT_NAME, S.PROTOCOL_TCP), (UDP_PORT_NAME, S.PROTOCOL_UDP))
            if proto in protocols]


def desired_service(imp: Object, target_port: int, *, selector: Mapping[str, str] | None) -> dict[str, Any]:
    """The Service of an Import. `selector`: the gateway pods' labels (same namespace), or None.
    One port per protocol the Import carries, all `spec.port` → `target_port`."""
    spec: dict[str, Any] = {"type": "ClusterIP",
                            "ports": [{"name": name, "protocol": proto, "port": int(imp.spec["port"]),
                                       "targetPort": int(target_port)}
                                      for name, proto in port_names(imp.spec.get("protocol"))]}
    if selector is not None:
        spec["selector"] = dict(selector)
    meta: dict[str, Any] = {"name": imp.name, "namespace": imp.namespace, "labels": import_labels(imp)}
    if imp.uid:
        meta["ownerReferences"] = [owner_reference(imp)]
    return {"apiVersion": "v1", "kind": "Service", "metadata": meta, "spec": spec}


def conflict(existing: ServiceView, imp: Object) -> str | None:
    """Why `existing` cannot be the Import's Service, or None when it is ours (or adoptable)."""
    labels = existing.labels
    if (labels.get(LABEL_MANAGED_BY) == MANAGER and labels.get(LABEL_IMPORT_NAME) == imp.name
            and labels.get(LABEL_IMPORT_NAMESPACE) == imp.namespace):
        return None
    where = f"service '{existing.namespace}/{existing.name}' already exists and managed by "
    manager = labels.get(LABEL_MANAGED_BY)
    if manager == MANAGER:
        other = f"{labels.get(LABEL_IMPORT_NAMESPACE, '?')}/{labels.get(LABEL_IMPORT_NAME, '?')}"
        return where + f"'{MANAGER}' for import '{other}'"
    if manager:
        return where + f"'{manager}'"
    return where + "'unknown' (it lacks the clusterlink.net labels)"


def _owner_refs(existing: ServiceView | None, imp: Object) -> list[dict[str, Any]]:
    keep = [dict(r) for r in (existing.owner_references if existing else ())
            if not (r.get("kind") == S.IMPORT.kind and str(r.get("apiVersion", "")).startswith(S.GROUP + "/"))]
    return keep + ([owner_reference(imp)] if imp.uid else [])


def service_patch(existing: ServiceView, desired: Mapping[str, Any], imp: Object) -> dict[str, Any] | None:
    """The merge patch that makes `existing` (ours or adoptable) the desired Service; None when it is."""
    want_spec = desired["spec"]
    want_ports = tuple((p["name"], p["port"], p["targetPort"], p["protocol"]) for p in want_spec["ports"])
    have_ports = tuple((p.name, p.port, p.target_port, p.protocol) for p in existing.ports)
    want_selector = want_spec.get("selector")
    refs = _owner_refs(existing, imp)
    labels_ok = all(existing.labels.get(k) == v for k, v in desired["metadata"]["labels"].items())
    same = (labels_ok and have_ports == want_ports and (existing.selector or None) == (want_selector or None)
            and existing.type == "ClusterIP" and list(existing.owner_references) == refs)
    if same:
        return None
    return {"metadata": {"labels": desired["metadata"]["labels"], "ownerReferences": refs},
            "spec": {"type": "ClusterIP", "ports": want_spec["ports"], "selector": want_selector}}


def slice_name(import_name: str) -> str:
    return import_name + SLICE_SUFFIX


def desired_slice(imp: Object, target_port: int, gateways: Sequence[GatewayPod], *,
                  system_namespace: str) -> dict[str, Any]:
    """The EndpointSlice that backs a selector-less Import Service with the gateway pods."""
    pods = sorted((p for p in gateways if p.ip), key=lambda p: p.name)
    families = {ipaddress.ip_address(p.ip).version for p in pods}
    address_type = "IPv6" if families == {6} else "IPv4"
    wanted_family = 6 if address_type == "IPv6" else 4
    endpoints = [{"addresses": [p.ip], "conditions": {"ready": p.ready},
                  "targetRef": {"kind": "Pod", "namespace": system_namespace, "name": p.name}}
                 for p in pods if ipaddress.ip_address(p.ip).version == wanted_family]
    labels = {**import_labels(imp), LABEL_SLICE_SERVICE: imp.name, LABEL_SLICE_MANAGED_BY: MANAGER}
    meta: dict[str, Any] = {"name": slice_name(imp.name), "namespace": imp.namespace, "labels": labels}
    if imp.uid:
        meta["ownerReferences"] = [owner_reference(imp)]
    return {"apiVersion": "discovery.k8s.io/v1", "kind": "EndpointSlice", "metadata": meta,
            "addressType": address_type, "endpoints": endpoints,
            "ports": [{"name": name, "protocol": proto, "port": int(target_port)}
                      for name, proto in port_names(imp.spec.get("protocol"))]}


def slice_matches(existing: SliceView, desired: Mapping[str, Any]) -> bool:
    endpoints = tuple((a, bool(e["conditions"]["ready"])) for e in desired["endpoints"] for a in e["addresses"])
    ports = tuple((p["name"], p["port"]) for p in desired["ports"])
    labels_ok = all(existing.labels.get(k) == v for k, v in desired["metadata"]["labels"].items())
    return (labels_ok and existing.address_type == desired["addressType"] and existing.endpoints == endpoints
            and existing.ports == ports)


def _ours_for_missing_import(labels: Mapping[str, str], namespace: str, name: str, store: KubeStore) -> bool:
    return (labels.get(LABEL_MANAGED_BY) == MANAGER and labels.get(LABEL_IMPORT_NAMESPACE) == namespace
            and labels.get(LABEL_IMPORT_NAME) == name and not store.exists(S.IMPORT.kind, namespace, name))


# -- the provider -----------------------------------------------------------------------------------


class ImportServices:
    """The reconciler's service provider in Kubernetes mode (leader only)."""

    def __init__(self, api: KubeWriter, store: KubeStore, *, system_namespace: str,
                 gateway_selector: Mapping[str, str]) -> None:
        if not gateway_selector:
            raise ValueError("the gateway selector must name at least one label")
        self._api = api
        self._store = store
        self.system_namespace = system_namespace
        self.gateway_selector = dict(gateway_selector)

    def local_services(self) -> dict[tuple[str, str], str]:
        """Existing Services → their ClusterIP (or name), for export validity."""
        return {key: view.cluster_ip or view.name for key, view in self._store.services.items()}

    def reconcile(self, imports: Sequence[tuple[Object, int]]) -> dict[ObjectKey, ImportServiceState]:
        """Ensure the Service (and EndpointSlice) of every Import; `imports` pairs each with its target
        port (0: none valid). Then delete what belongs to Imports that no longer exist."""
        out = {imp.key: self._ensure(imp, port) for imp, port in imports}
        self._sweep()
        return out

    # -- one Import --------------------------------------------------------------------------------
    def _ensure(self, imp: Object, target_port: int) -> ImportServiceState:
        key = (imp.namespace, imp.name)
        existing = self._store.services.get(key)
        if existing is not None:
            why = conflict(existing, imp)
            if why is not None:
                return ImportServiceState("", False, S.REASON_ERROR, why)
        if not target_port:
            self._delete_service(imp.namespace, imp.name)
            self._delete_slice(imp.namespace, slice_name(imp.name))
            return ImportServiceState("", False, S.REASON_ERROR,
                                      f"service '{imp.namespace}/{imp.name}' not created: the import has no "
                                      f"valid target port")
        in_system = imp.namespace == self.system_namespace
        desired = desired_service(imp, target_port, selector=self.gateway_selector if in_system else None)
        action = "creating" if existing is None else "updating"
        try:
            if existing is None:
                view = self._store.put_service(self._api.create(SERVICES, imp.namespace, desired))
                log.info("created service %s/%s for import %s/%s", imp.namespace, imp.name, imp.namespace, imp.name)
            else:
                patch = service_patch(existing, desired, imp)
                view = existing if patch is None else self._store.put_service(
                    self._api.patch(SERVICES, imp.namespace, imp.name, patch))
            if in_system:
                self._delete_slice(imp.namespace, slice_name(imp.name))
            else:
                action = "updating the endpoints of"
                self._ensure_slice(imp, target_port)
        except KubeError as exc:
            if exc.temporary:  # includes AlreadyExists/Conflict: the cache lags; the next pass sees it
                raise StoreError(f"{action} service {imp.namespace}/{imp.name}: {exc}") from exc
            log.error("import %s/%s: %s service failed: %s", imp.namespace, imp.name, action, exc)
            return ImportServiceState("", False, S.REASON_ERROR,
                                      f"{action} service '{imp.namespace}/{imp.name}' failed: {exc}")
        if not view.cluster_ip or view.cluster_ip == "None":
            return ImportServiceState("", False, S.REASON_ERROR,
                                      f"service '{imp.namespace}/{imp.name}' has no cluster IP")
        protocol = str(imp.spec.get("protocol") or S.PROTOCOL_TCP)
        carried = "" if protocol == S.PROTOCOL_TCP else f" ({protocol})"
        return ImportServiceState(view.cluster_ip, True, S.REASON_VALID,
                                  f"service {imp.namespace}/{imp.name} {view.cluster_ip}:{imp.spec['port']} → "
                                  f"gateway port {target_port}{carried}")

    def _ensure_slice(self, imp: Object, target_port: int) -> None:
        desired = desired_slice(imp, target_port, list(self._store.gateway_pods.values()),
                                system_namespace=self.system_namespace)
        name = desired["metadata"]["name"]
        existing = self._store.endpoint_slices.get((imp.namespace, name))
        if existing is not None and slice_matches(existing, desired):
            return
        if existing is not None and existing.address_type != desired["addressType"]:
            self._delete_slice(imp.namespace, name)  # addressType is immutable
            existing = None
        if existing is None:
            self._store.put_slice(self._api.create(ENDPOINT_SLICES, imp.namespace, desired))
        else:
            patch = {"metadata": {"labels": desired["metadata"]["labels"],
                                  "ownerReferences": desired["metadata"].get("ownerReferences")},
                     "endpoints": desired["endpoints"], "ports": desired["ports"]}
            self._store.put_slice(self._api.patch(ENDPOINT_SLICES, imp.namespace, name, patch))

    # -- cleanup -----------------------------------------------------------------------------------
    def _delete_service(self, namespace: str, name: str) -> None:
        view = self._store.services.get((namespace, name))
        if view is None or view.managed_by != MANAGER:
            return
        try:
            self._api.delete(SERVICES, namespace, name, uid=view.uid or None)
            log.info("deleted service %s/%s (its import is gone or has no valid target port)", namespace, name)
        except NotFound:
            pass  # already gone: the watch will confirm
        except KubeError as exc:
            if exc.temporary:
                raise StoreError(f"deleting service {namespace}/{name}: {exc}") from exc
            log.error("deleting service %s/%s failed: %s", namespace, name, exc)
            return
        self._store.forget_service(namespace, name)

    def _delete_slice(self, namespace: str, name: str) -> None:
        view = self._store.endpoint_slices.get((namespace, name))
        if view is None:
            return
        try:
            self._api.delete(ENDPOINT_SLICES, namespace, name, uid=view.uid or None)
        except NotFound:
            pass
        except KubeError as exc:
            if exc.temporary:
                raise StoreError(f"deleting endpoint slice {namespace}/{name}: {exc}") from exc
            log.error("deleting endpoint slice %s/%s failed: %s", namespace, name, exc)
            return
        self._store.forget_slice(namespace, name)

    def _sweep(self) -> None:
        if not self._store.is_synced():
            return  # an incomplete cache would make every Service look orphaned
        for (namespace, name), view in list(self._store.services.items()):
            if _ours_for_missing_import(view.labels, namespace, name, self._store):
                self._delete_service(namespace, name)
        for (namespace, name), slice_view in list(self._store.endpoint_slices.items()):
            import_name = name[:-len(SLICE_SUFFIX)] if name.endswith(SLICE_SUFFIX) else ""
            if import_name and _ours_for_missing_import(slice_view.labels, namespace, import_name, self._store):
                self._delete_slice(namespace, name)
