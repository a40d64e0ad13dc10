"""The Kubernetes Multi-Cluster Services API (`multicluster.x-k8s.io/v1alpha1`) as a second front door
to ClusterLink's own objects, with `--mcs on` (leader only, like every controller write).

- **ServiceExport → Export.** A ServiceExport `ns/name` asks to export the Service `ns/name`. The
  control plane makes the Export `ns/name` with `spec.port` = the Service's port: its only TCP port
  (without TCP ports: its only UDP port), or the one the annotation `clusterlink.net/export-port`
  names (port name or number) when it has several (a ClusterLink Export carries one port number).
  `spec.protocol` is what the chosen port number carries: TCP, UDP, or TCPAndUDP when the Service
  has both on that number (a port chosen by name carries only its own protocol). The Export is
  labelled `app.kubernetes.io/managed-by: clusterlink.net` and `clusterlink.net/service-export: "true"`;
  only such Exports are updated or deleted (when their ServiceExport goes away). An Export of the
  same name made by hand is left alone: it already exports the service. The ServiceExport's
  condition `Valid` says what happened (`Exported`, `ExportExists`, `NoService`, `NoPort` (no TCP
  or UDP port), `AmbiguousPort`, `NoSuchPort`).
- **Import → ServiceImport.** Every Import with a service address (`status.vip`, its Service's
  ClusterIP) gets a ServiceImport `ns/name`: `spec.type: ClusterSetIP`, `spec.ips: [vip]`,
  `spec.ports`: `spec.port` once per protocol the Import carries (`import`/TCP, `import-udp`/UDP),
  `status.clusters` = the Import's source peers; labelled like the Import's Service and owned by
  the Import. DNS for
  `<name>.<ns>.svc.clusterset.local` comes from the ServiceImports (CoreDNS's `multicluster` plugin
  answers with `spec.ips`), so a pod's lookup gives the VIP that the agents redirect. A ServiceImport
  that is not ClusterLink's is never touched (the create fails with AlreadyExists: logged once).

ClusterLink's CRDs stay the primary API: ServiceExports only ever produce Exports, Imports only ever
produce ServiceImports; policies apply to both alike (the Export is an ordinary Export).
"""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from typing import Any, NamedTuple

from controlplane.model import schema as S
from controlplane.model.conditions import set_condition
from controlplane.model.objects import Object

from .base import StoreError
from .kube import (
    LABEL_MANAGED_BY,
    MANAGER,
    KubeStore,
    KubeWriter,
    ServiceImportView,
    ServicePort,
    ServiceView,
    merge_patch,
)
from .kube_services import PORT_NAME, import_labels, owner_reference, port_names
from .kubeapi import SERVICE_EXPORTS, SERVICE_IMPORTS, AlreadyExists, KubeError, NotFound

log = logging.getLogger(__name__)

LABEL_SERVICE_EXPORT = "clusterlink.net/service-export"
ANNOTATION_EXPORT_PORT = "clusterlink.net/export-port"
CONDITION_VALID = "Valid"  # the MCS API's ServiceExport condition
SERVICE_IMPORT_PORT_NAME = PORT_NAME  # the TCP port's; the UDP port's is kube_services.UDP_PORT_NAME


class ExportPlan(NamedTuple):
    """What one ServiceExport asks for: the Export's port (0: none) and protocol, and its Valid condition."""

    port: int
    ok: bool
    reason: str
    message: str
    protocol: str = S.PROTOCOL_TCP


# -- pure ------------------------------------------------------------------------------------------

_CARRIABLE = (S.PROTOCOL_TCP, S.PROTOCOL_UDP)  # Service port protocols ClusterLink carries (not SCTP)


def _protocol_of(ports: Sequence[ServicePort]) -> str:
    """The Export protocol that carries `ports` (all on one port number)."""
    protocols = {p.protocol for p in ports}
    if protocols == {S.PROTOCOL_UDP}:
        return S.PROTOCOL_UDP
    return S.PROTOCOL_BOTH if S.PROTOCOL_UDP in protocols else S.PROTOCOL_TCP


def plan_export(namespace: str, name: str, service: ServiceView | None,
                annotations: Mapping[str, str]) -> ExportPlan:
    """The Export a ServiceExport asks for. The port: the one `clusterlink.net/export-port` names
    (by name: that port; by number: the TCP and UDP ports of that number), else the Service's only
    TCP port number (or, without TCP ports, its only UDP port number). The protocol: what the chosen
    ports carry; TCP and UDP on the same number give TCPAndUDP."""
    where = f"{namespace}/{name}"
    if service is None:
        return ExportPlan(0, False, "NoService", f"no Service {where} to export")
    ports = [p for p in service.ports if p.protocol in _CARRIABLE and p.port]
    chosen = annotations.get(ANNOTATION_EXPORT_PORT, "").strip()
    if chosen:
        match = [p for p in ports if p.name == chosen]
        if not match:
            match = [p for p in ports if str(p.port) == chosen]
        if not match:
            return ExportPlan(0, False, "NoSuchPort",
                              f"the Service {where} has no TCP or UDP port {chosen!r} ({ANNOTATION_EXPORT_PORT})")
        number = match[0].port
        match = [p for p in match if p.port == number]
    else:
        if not ports:
            return ExportPlan(0, False, "NoPort", f"the Service {where} has no TCP or UDP port "
                                                  f"(ClusterLink carries TCP and UDP)")
        tcp = [p for p in ports if p.protocol == S.PROTOCOL_TCP]
        candidates = tcp or ports  # TCP ports first, as before UDP was carried; else the UDP ports
        if len(candidates) > 1:
            kind = "TCP" if tcp else "UDP"
            names = ", ".join(p.name or str(p.port) for p in candidates)
            return ExportPlan(0, False, "AmbiguousPort",
                              f"the Service {where} has {len(candidates)} {kind} ports ({names}); a ClusterLink "
                              f"Export carries one: name it with the annotation {ANNOTATION_EXPORT_PORT}")
        number = candidates[0].port
        match = [p for p in ports if p.port == number]
    protocol = _protocol_of(match)
    carried = "" if protocol == S.PROTOCOL_TCP else f" ({protocol})"
    return ExportPlan(number, True, "Exported", f"exported as the Export {where}, port {number}{carried}", protocol)


def export_object(namespace: str, name: str, port: int, protocol: str = S.PROTOCOL_TCP) -> Object:
    # protocol is always written (even TCP, the default): the API server defaults it, and an Export
    # without it would differ from the stored one on every pass.
    return Object(kind=S.EXPORT.kind, name=name, namespace=namespace, spec={"port": port, "protocol": protocol},
                  labels={LABEL_MANAGED_BY: MANAGER, LABEL_SERVICE_EXPORT: "true"})


def from_service_export(export: Object) -> bool:
    return export.labels.get(LABEL_SERVICE_EXPORT) == "true" and export.labels.get(LABEL_MANAGED_BY) == MANAGER


def desired_service_import(imp: Object, vip: str) -> dict[str, Any]:
    peers = sorted({str(s["peer"]) for s in imp.spec.get("sources") or ()})
    return {
        "apiVersion": SERVICE_IMPORTS.api_version, "kind": SERVICE_IMPORTS.kind,
        "metadata": {"name": imp.name, "namespace": imp.namespace, "labels": import_labels(imp),
                     "ownerReferences": [owner_reference(imp)]},
        "spec": {"type": "ClusterSetIP", "ips": [vip],
                 "ports": [{"name": port_name, "protocol": proto, "port": int(imp.spec["port"])}
                           for port_name, proto in port_names(imp.spec.get("protocol"))]},
        "status": {"clusters": [{"cluster": p} for p in peers]},
    }


# -- the controller ----------------------------------------------------------------------------------


class MultiClusterServices:
    def __init__(self, api: KubeWriter, store: KubeStore) -> None:
        if not store.mcs:
            raise ValueError("the store does not watch the MCS API (KubeStore(mcs=True))")
        self._api = api
        self._store = store
        self._foreign: set[tuple[str, str]] = set()  # ServiceImports that exist and are not ours (logged)

    def _temporary(self, exc: KubeError, action: str) -> None:
        if exc.temporary:
            raise StoreError(f"{action}: {exc}") from exc
        log.error("%s failed: %s", action, exc)

    # -- ServiceExport → Export --------------------------------------------------------------------
    def reconcile_exports(self) -> None:
        exports = {(e.namespace, e.name): e for e in self._store.list(S.EXPORT.kind)}
        for (namespace, name), se in sorted(self._store.service_exports.items()):
            plan = plan_export(namespace, name, self._store.services.get((namespace, name)), se.annotations)
            existing = exports.get((namespace, name))
            if existing is not None and not from_service_export(existing):
                plan = ExportPlan(0, True, "ExportExists", f"the Export {namespace}/{name} (not made from this "
                                                           f"ServiceExport) exports it; left as it is")
            elif plan.port:
                self._store.apply(export_object(namespace, name, plan.port, plan.protocol))
            elif existing is not None:
                self._delete_export(existing, f"its ServiceExport is not valid: {plan.message}")
            self._write_condition(se.namespace, se.name, se.status, plan, se.generation)
        if not self._store.is_synced():
            return  # an incomplete cache would make every Export look orphaned
        for key, export in exports.items():
            if from_service_export(export) and key not in self._store.service_exports:
                self._delete_export(export, "its ServiceExport is gone")

    def _delete_export(self, export: Object, why: str) -> None:
        if self._store.delete(S.EXPORT.kind, export.namespace, export.name):
            log.info("deleted export %s/%s: %s", export.namespace, export.name, why)

    def _write_condition(self, namespace: str, name: str, status: Mapping[str, Any], plan: ExportPlan,
                         generation: int) -> None:
        if not self._store.leader:
            return
        new = set_condition(status, CONDITION_VALID, plan.ok, plan.reason, plan.message, generation=generation)
        if new.get("conditions") == status.get("conditions"):
            return
        try:
            raw = self._api.patch_status(SERVICE_EXPORTS, namespace, name, {"conditions": new["conditions"]})
        except NotFound:
            return  # deleted meanwhile: the watch says so
        except KubeError as exc:
            self._temporary(exc, f"writing the status of ServiceExport {namespace}/{name}")
            return
        self._store.put_mcs(SERVICE_EXPORTS, raw)
        if not plan.ok:
            log.warning("ServiceExport %s/%s: %s", namespace, name, plan.message)

    # -- Import → ServiceImport --------------------------------------------------------------------
    def reconcile_imports(self, imports: Sequence[Object]) -> None:
        wanted = set()
        for imp in imports:
            vip = str(imp.status.get("vip") or "")
            if vip:
                wanted.add((imp.namespace, imp.name))
                self._ensure_import(imp, vip)
        if not self._store.is_synced():
            return
        for key, view in list(self._store.service_imports.items()):
            if key not in wanted and view.labels.get(LABEL_MANAGED_BY) == MANAGER:
                self._delete_import(view)

    def _ensure_import(self, imp: Object, vip: str) -> None:
        key = (imp.namespace, imp.name)
        desired = desired_service_import(imp, vip)
        existing = self._store.service_imports.get(key)
        what = f"ServiceImport {imp.namespace}/{imp.name}"
        if existing is not None and existing.labels.get(LABEL_MANAGED_BY) != MANAGER:
            self._foreign_one(key, what, imp)
            return
        try:
            if existing is None:
                body = {k: v for k, v in desired.items() if k != "status"}
                try:
                    raw = self._api.create(SERVICE_IMPORTS, imp.namespace, body)
                except AlreadyExists:
                    self._foreign_one(key, what, imp)
                    return
                self._foreign.discard(key)
                existing = self._store.put_mcs(SERVICE_IMPORTS, raw)
                log.info("created %s for import %s/%s (%s)", what, imp.namespace, imp.name, vip)
            else:
                patch = self._patch(existing, desired)
                if patch:
                    existing = self._store.put_mcs(
                        SERVICE_IMPORTS, self._api.patch(SERVICE_IMPORTS, imp.namespace, imp.name, patch))
            if isinstance(existing, ServiceImportView) and existing.status.get("clusters") != desired["status"]["clusters"]:
                self._store.put_mcs(SERVICE_IMPORTS, self._api.patch_status(
                    SERVICE_IMPORTS, imp.namespace, imp.name, desired["status"]))
        except NotFound:
            return  # deleted meanwhile: the next pass creates it again
        except KubeError as exc:
            self._temporary(exc, f"writing {what}")

    def _foreign_one(self, key: tuple[str, str], what: str, imp: Object) -> None:
        if key not in self._foreign:
            self._foreign.add(key)
            log.warning("%s exists and is not ClusterLink's: the Import %s/%s gets none", what, imp.namespace,
                        imp.name)

    @staticmethod
    def _patch(existing: ServiceImportView, desired: Mapping[str, Any]) -> dict[str, Any]:
        meta = desired["metadata"]
        old = {"metadata": {"labels": dict(existing.labels)}, "spec": dict(existing.spec)}
        new = {"metadata": {"labels": {**existing.labels, **meta["labels"]}}, "spec": desired["spec"]}
        patch = merge_patch(old, new)
        if [dict(r) for r in existing.owner_references] != meta["ownerReferences"]:
            patch.setdefault("metadata", {})["ownerReferences"] = meta["ownerReferences"]
        return patch

    def _delete_import(self, view: ServiceImportView) -> None:
        what = f"ServiceImport {view.namespace}/{view.name}"
        try:
            self._api.delete(SERVICE_IMPORTS, view.namespace, view.name, uid=view.uid or None)
            log.info("deleted %s (its import is gone or has no service address)", what)
        except NotFound:
            pass
        except KubeError as exc:
            self._temporary(exc, f"deleting {what}")
            return
        self._store.forget_mcs(SERVICE_IMPORTS, view.namespace, view.name)
