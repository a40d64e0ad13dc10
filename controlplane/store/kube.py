"""The Kubernetes store: the `Store` protocol served from an in-memory cache fed by watches.

Reflectors (`kube_reflector`) hand raw list results and watch events to `handle_list` /
`handle_event`, which must run on the thread that owns the store (the control plane's event loop;
see `kube_backend.LoopSink`). The cache holds:

- the five ClusterLink kinds as validated `Object`s (an object the model rejects, e.g. a policy
  with `workloadSets`, is logged once and left out, as ClusterLink leaves it out of its PDP);
- a slim view of every Service (export validity, Import Services, conflicts);
- the gateway pods and ClusterLink's EndpointSlices (Imports outside the ClusterLink namespace).

Store listeners get an `Event` only when an object's spec, labels, annotations or status really
changed, so a periodic resync that finds nothing new wakes nobody. Changes of the other resources
call the `on_cluster_change` hooks when they can matter (a Service an Export or Import names, one
of ours, a gateway pod).

Writes go to the API server and, on success, straight into the cache (write-through), so that
the next reconcile pass sees them before the watch event arrives. Controller writes (status,
spec write-back) happen only while `leader` is set; a follower's `set_status` is a no-op, which
is how the heartbeats of every replica keep running while only the leader writes.
Errors: a temporary API failure raises `StoreError` (the reconciler retries); a permanent one
(forbidden, invalid) is logged with the object named and counted, and the write is dropped.
"""

from __future__ import annotations

import base64
import json
import logging
import secrets as _secrets
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field, replace
from typing import Any, Protocol

from controlplane.model import schema as S
from controlplane.model.objects import Object, from_dict
from controlplane.model.validate import FieldError

from .base import Event, EventType, Listener, StoreError
from .kubeapi import (
    CLUSTERLINK,
    ENDPOINT_SLICES,
    PODS,
    SECRETS,
    SERVICE_EXPORTS,
    SERVICE_IMPORTS,
    SERVICES,
    AlreadyExists,
    Conflict,
    KubeError,
    NotFound,
    Resource,
)

log = logging.getLogger(__name__)

# Labels of everything ClusterLink creates for an Import (ClusterLink's names).
LABEL_MANAGED_BY = "app.kubernetes.io/managed-by"
MANAGER = "clusterlink.net"
LABEL_IMPORT_NAME = "clusterlink.net/import-name"
LABEL_IMPORT_NAMESPACE = "clusterlink.net/import-namespace"
SECRET_PREFIX = "clusterlink-"
WATCHED: tuple[Resource, ...] = (*CLUSTERLINK.values(), SERVICES, ENDPOINT_SLICES, PODS)
MCS_WATCHED: tuple[Resource, ...] = (SERVICE_EXPORTS, SERVICE_IMPORTS)  # with --mcs on (their CRDs installed)


class KubeWriter(Protocol):
    """The part of `kubeapi.KubeAPI` the store and the Import Services use."""

    def get(self, resource: Resource, namespace: str | None, name: str) -> dict[str, Any]: ...

    def create(self, resource: Resource, namespace: str | None, body: Mapping[str, Any]) -> dict[str, Any]: ...

    def patch(self, resource: Resource, namespace: str | None, name: str,
              patch: Mapping[str, Any]) -> dict[str, Any]: ...

    def patch_status(self, resource: Resource, namespace: str | None, name: str,
                     status: Mapping[str, Any]) -> dict[str, Any]: ...

    def delete(self, resource: Resource, namespace: str | None, name: str, *, uid: str | None = None) -> None: ...


# -- views of the non-ClusterLink resources -------------------------------------------------------


@dataclass(frozen=True)
class ServicePort:
    name: str
    port: int
    target_port: int | str
    protocol: str


@dataclass(frozen=True)
class ServiceView:
    namespace: str
    name: str
    uid: str
    labels: Mapping[str, str]
    cluster_ip: str
    type: str
    selector: Mapping[str, str] | None
    ports: tuple[ServicePort, ...]
    owner_references: tuple[Mapping[str, Any], ...] = ()

    @classmethod
    def from_raw(cls, raw: Mapping[str, Any]) -> ServiceView:
        meta = raw.get("metadata") or {}
        spec = raw.get("spec") or {}
        ports = tuple(ServicePort(str(p.get("name") or ""), int(p.get("port") or 0),
                                  p.get("targetPort", p.get("port") or 0), str(p.get("protocol") or "TCP"))
                      for p in spec.get("ports") or ())
        return cls(namespace=str(meta.get("namespace") or ""), name=str(meta.get("name") or ""),
                   uid=str(meta.get("uid") or ""), labels=dict(meta.get("labels") or {}),
                   cluster_ip=str(spec.get("clusterIP") or ""), type=str(spec.get("type") or "ClusterIP"),
                   selector=dict(spec["selector"]) if spec.get("selector") else None, ports=ports,
                   owner_references=tuple(dict(r) for r in meta.get("ownerReferences") or ()))

    @property
    def managed_by(self) -> str:
        return self.labels.get(LABEL_MANAGED_BY, "")


@dataclass(frozen=True)
class SliceView:
    namespace: str
    name: str
    uid: str
    labels: Mapping[str, str]
    address_type: str
    endpoints: tuple[tuple[str, bool], ...]  # (address, ready)
    ports: tuple[tuple[str, int], ...]  # (name, port)

    @classmethod
    def from_raw(cls, raw: Mapping[str, Any]) -> SliceView:
        meta = raw.get("metadata") or {}
        endpoints = tuple((str(a), bool((e.get("conditions") or {}).get("ready", True)))
                          for e in raw.get("endpoints") or () for a in e.get("addresses") or ())
        ports = tuple((str(p.get("name") or ""), int(p.get("port") or 0)) for p in raw.get("ports") or ())
        return cls(namespace=str(meta.get("namespace") or ""), name=str(meta.get("name") or ""),
                   uid=str(meta.get("uid") or ""), labels=dict(meta.get("labels") or {}),
                   address_type=str(raw.get("addressType") or ""), endpoints=endpoints, ports=ports)


@dataclass(frozen=True)
class GatewayPod:
    name: str
    ip: str
    ready: bool

    @classmethod
    def from_raw(cls, raw: Mapping[str, Any]) -> GatewayPod:
        meta = raw.get("metadata") or {}
        status = raw.get("status") or {}
        ready = any(c.get("type") == "Ready" and c.get("status") == "True" for c in status.get("conditions") or ())
        return cls(name=str(meta.get("name") or ""), ip=str(status.get("podIP") or ""),
                   ready=ready and not meta.get("deletionTimestamp"))


@dataclass(frozen=True)
class ServiceExportView:
    """An MCS ServiceExport: its existence asks to export the Service of the same name."""

    namespace: str
    name: str
    uid: str
    generation: int
    annotations: Mapping[str, str]
    status: Mapping[str, Any]

    @classmethod
    def from_raw(cls, raw: Mapping[str, Any]) -> ServiceExportView:
        meta = raw.get("metadata") or {}
        status = raw.get("status")
        return cls(namespace=str(meta.get("namespace") or ""), name=str(meta.get("name") or ""),
                   uid=str(meta.get("uid") or ""), generation=int(meta.get("generation") or 0),
                   annotations=dict(meta.get("annotations") or {}),
                   status=dict(status) if isinstance(status, Mapping) else {})


@dataclass(frozen=True)
class ServiceImportView:
    """An MCS ServiceImport made from an Import (only ClusterLink's are watched)."""

    namespace: str
    name: str
    uid: str
    labels: Mapping[str, str]
    spec: Mapping[str, Any]
    status: Mapping[str, Any]
    owner_references: tuple[Mapping[str, Any], ...] = ()

    @classmethod
    def from_raw(cls, raw: Mapping[str, Any]) -> ServiceImportView:
        meta = raw.get("metadata") or {}
        spec, status = raw.get("spec"), raw.get("status")
        return cls(namespace=str(meta.get("namespace") or ""), name=str(meta.get("name") or ""),
                   uid=str(meta.get("uid") or ""), labels=dict(meta.get("labels") or {}),
                   spec=dict(spec) if isinstance(spec, Mapping) else {},
                   status=dict(status) if isinstance(status, Mapping) else {},
                   owner_references=tuple(dict(r) for r in meta.get("ownerReferences") or ()))


# -- helpers --------------------------------------------------------------------------------------


def _canon(value: Any) -> str:
    return json.dumps(value, sort_keys=True, separators=(",", ":"), default=str)


def merge_patch(old: Mapping[str, Any], new: Mapping[str, Any]) -> dict[str, Any]:
    """The JSON merge patch (RFC 7386) that turns `old` into `new`: removed keys become None."""
    patch: dict[str, Any] = {}
    for key, value in new.items():
        before = old.get(key)
        if isinstance(value, Mapping) and isinstance(before, Mapping):
            sub = merge_patch(before, value)
            if sub:
                patch[key] = sub
        elif key not in old or _canon(before) != _canon(value):
            patch[key] = value
    for key in old:
        if key not in new:
            patch[key] = None
    return patch


def _version(raw: Mapping[str, Any]) -> str:
    return str((raw.get("metadata") or {}).get("resourceVersion") or "")


def _older(incoming: str, cached: str) -> bool:
    """True when `incoming` is known to be an older version than `cached` (both etcd revisions)."""
    return incoming.isdigit() and cached.isdigit() and int(incoming) < int(cached)


def object_from_raw(raw: Mapping[str, Any], resource: Resource) -> Object:
    """Validate a ClusterLink object from the API server into the model's `Object` (FieldError if the
    model rejects it). The status is kept as written (ours); metadata the model ignores is dropped."""
    meta = raw.get("metadata") or {}
    doc = {"apiVersion": raw.get("apiVersion") or resource.api_version, "kind": raw.get("kind") or resource.kind,
           "metadata": {k: meta[k] for k in ("name", "namespace", "labels", "annotations") if meta.get(k)},
           "spec": raw.get("spec")}
    obj = from_dict(doc, default_namespace=str(meta.get("namespace") or ""))
    version = _version(raw)
    return replace(obj, status=dict(raw.get("status") or {}),
                   resource_version=int(version) if version.isdigit() else 0,
                   generation=int(meta.get("generation") or 0), uid=str(meta.get("uid") or ""),
                   creation_timestamp=str(meta.get("creationTimestamp") or ""))


def _content(obj: Object) -> str:
    return _canon([obj.spec, obj.labels, obj.annotations, obj.status])


def _key(raw: Mapping[str, Any]) -> tuple[str, str]:
    meta = raw.get("metadata") or {}
    return str(meta.get("namespace") or ""), str(meta.get("name") or "")


# -- the store ------------------------------------------------------------------------------------


@dataclass
class _Cache:
    objects: dict[str, dict[tuple[str, str], Object]] = field(
        default_factory=lambda: {kind: {} for kind in CLUSTERLINK})
    versions: dict[tuple[str, str, str], str] = field(default_factory=dict)  # (kind, ns, name) -> resourceVersion
    invalid: dict[tuple[str, str, str], str] = field(default_factory=dict)  # rejected by the model -> why
    invalid_uids: dict[tuple[str, str, str], str] = field(default_factory=dict)  # their uids (for Events)
    services: dict[tuple[str, str], ServiceView] = field(default_factory=dict)
    slices: dict[tuple[str, str], SliceView] = field(default_factory=dict)
    gateway_pods: dict[str, GatewayPod] = field(default_factory=dict)
    service_exports: dict[tuple[str, str], ServiceExportView] = field(default_factory=dict)
    service_imports: dict[tuple[str, str], ServiceImportView] = field(default_factory=dict)


class KubeStore:
    def __init__(self, api: KubeWriter, *, namespace: str, mcs: bool = False) -> None:
        self._api = api
        self.namespace = namespace
        self.mcs = mcs
        self.watched = WATCHED + (MCS_WATCHED if mcs else ())
        self._cache = _Cache()
        self._listeners: list[Listener] = []
        self._cluster_listeners: list[Callable[[], None]] = []
        self._synced: set[str] = set()
        self.leader = False
        self.write_errors = 0
        # Told of each object the model newly rejects: (kind, namespace, name, uid, why).
        self.on_invalid: Callable[[str, str, str, str, str], None] | None = None

    # -- feeding (reflector sink; on the owning thread) -------------------------------------------
    def handle_list(self, resource: Resource, items: list[dict[str, Any]]) -> None:
        """Replace everything of `resource` with `items`: events for what appeared, changed or vanished."""
        if resource.kind in CLUSTERLINK:
            seen = set()
            for raw in items:
                seen.add(_key(raw))
                self._put_object(resource, raw, from_list=True)
            for key in [k for k in self._cache.objects[resource.kind] if k not in seen]:
                self._drop_object(resource, key)
            for key in [k for k in self._cache.invalid if k[0] == resource.kind and (k[1], k[2]) not in seen]:
                del self._cache.invalid[key]
        else:
            table = self._table(resource)
            fresh = {self._table_key(resource, raw): self._view(resource, raw) for raw in items}
            changed = {k for k in set(table) | set(fresh) if table.get(k) != fresh.get(k)}
            table.clear()
            table.update(fresh)
            if changed:
                self._cluster_changed(resource, changed)
        self._synced.add(resource.plural)

    def handle_event(self, resource: Resource, etype: str, obj: dict[str, Any]) -> None:
        key = _key(obj)
        if resource.kind in CLUSTERLINK:
            if etype == "DELETED":
                if not _older(_version(obj), self._cache.versions.get((resource.kind, *key), "")):
                    self._drop_object(resource, key)
                    self._cache.invalid.pop((resource.kind, *key), None)
            else:
                self._put_object(resource, obj)
            return
        table = self._table(resource)
        tkey = self._table_key(resource, obj)
        if etype == "DELETED":
            if table.pop(tkey, None) is not None:
                self._cluster_changed(resource, {tkey})
            return
        view = self._view(resource, obj)
        if table.get(tkey) != view:
            table[tkey] = view
            self._cluster_changed(resource, {tkey})

    def is_synced(self) -> bool:
        """True once every watched resource has been listed (before that the cache is incomplete)."""
        return all(r.plural in self._synced for r in self.watched)

    def _table(self, resource: Resource) -> dict[Any, Any]:
        if resource is SERVICES:
            return self._cache.services
        if resource is ENDPOINT_SLICES:
            return self._cache.slices
        if resource is PODS:
            return self._cache.gateway_pods
        if resource is SERVICE_EXPORTS and self.mcs:
            return self._cache.service_exports
        if resource is SERVICE_IMPORTS and self.mcs:
            return self._cache.service_imports
        raise ValueError(f"the Kubernetes store does not cache {resource.plural}")

    @staticmethod
    def _table_key(resource: Resource, raw: Mapping[str, Any]) -> Any:
        return _key(raw)[1] if resource is PODS else _key(raw)  # gateway pods live in one namespace

    def _view(self, resource: Resource, raw: Mapping[str, Any]) -> Any:
        if resource is SERVICES:
            return ServiceView.from_raw(raw)
        if resource is ENDPOINT_SLICES:
            return SliceView.from_raw(raw)
        if resource is SERVICE_EXPORTS:
            return ServiceExportView.from_raw(raw)
        if resource is SERVICE_IMPORTS:
            return ServiceImportView.from_raw(raw)
        return GatewayPod.from_raw(raw)

    def _put_object(self, resource: Resource, raw: Mapping[str, Any], *, from_list: bool = False) -> Object | None:
        ns, name = _key(raw)
        ckey = (resource.kind, ns, name)
        version = _version(raw)
        if not from_list and _older(version, self._cache.versions.get(ckey, "")):
            return self._cache.objects[resource.kind].get((ns, name))  # a stale event after our own write
        try:
            obj = object_from_raw(raw, resource)
        except FieldError as exc:
            why = str(exc)
            uid = str((raw.get("metadata") or {}).get("uid") or "")
            if self._cache.invalid.get(ckey) != why:
                log.error("%s %s/%s is invalid and ignored: %s", resource.kind, ns, name, why)
                if self.on_invalid is not None:
                    self.on_invalid(resource.kind, ns, name, uid, why)
            self._cache.invalid[ckey] = why
            self._cache.invalid_uids[ckey] = uid
            self._drop_object(resource, (ns, name))
            return None
        self._cache.invalid.pop(ckey, None)
        self._cache.versions[ckey] = version
        table = self._cache.objects[resource.kind]
        old = table.get((ns, name))
        table[(ns, name)] = obj
        if old is None or old.uid != obj.uid:
            if old is not None:
                self._emit(Event(EventType.DELETED, old))
            self._emit(Event(EventType.ADDED, obj))
        elif _content(old) != _content(obj):
            self._emit(Event(EventType.MODIFIED, obj))
        return obj

    def _drop_object(self, resource: Resource, key: tuple[str, str]) -> None:
        old = self._cache.objects[resource.kind].pop(key, None)
        self._cache.versions.pop((resource.kind, *key), None)
        if old is not None:
            self._emit(Event(EventType.DELETED, old))

    def _cluster_changed(self, resource: Resource, keys: set[Any]) -> None:
        if resource is SERVICES and not any(self._service_matters(k) for k in keys):
            return
        for hook in list(self._cluster_listeners):
            hook()

    def _service_matters(self, key: tuple[str, str]) -> bool:
        if (key in self._cache.objects[S.EXPORT.kind] or key in self._cache.objects[S.IMPORT.kind]
                or key in self._cache.service_exports):
            return True
        view = self._cache.services.get(key)
        return view is not None and view.managed_by == MANAGER

    # -- reading ----------------------------------------------------------------------------------
    def list(self, kind: str) -> list[Object]:
        table = self._cache.objects.get(kind)
        if table is None:  # standalone-only kinds do not exist in Kubernetes
            return []
        return [table[k] for k in sorted(table)]

    def get(self, kind: str, namespace: str, name: str) -> Object | None:
        table = self._cache.objects.get(kind)
        return None if table is None else table.get((namespace, name))

    def exists(self, kind: str, namespace: str, name: str) -> bool:
        """Whether the object exists in the cluster, even if the model rejected it."""
        return self.get(kind, namespace, name) is not None or (kind, namespace, name) in self._cache.invalid

    def replay_invalid(self) -> None:
        """Tell `on_invalid` of every object rejected now, again (a new leader says what was
        rejected before it led: the first list comes before the election)."""
        if self.on_invalid is None:
            return
        for (kind, namespace, name), why in list(self._cache.invalid.items()):
            self.on_invalid(kind, namespace, name, self._cache.invalid_uids.get((kind, namespace, name), ""), why)

    def invalid(self) -> dict[tuple[str, str, str], str]:
        """Objects the model rejected: (kind, namespace, name) → why."""
        return dict(self._cache.invalid)

    @property
    def services(self) -> Mapping[tuple[str, str], ServiceView]:
        return self._cache.services

    @property
    def endpoint_slices(self) -> Mapping[tuple[str, str], SliceView]:
        return self._cache.slices

    @property
    def gateway_pods(self) -> Mapping[str, GatewayPod]:
        return self._cache.gateway_pods

    def put_service(self, raw: Mapping[str, Any]) -> ServiceView:
        """Write-through of a Service we created or patched."""
        view = ServiceView.from_raw(raw)
        self._cache.services[(view.namespace, view.name)] = view
        return view

    def forget_service(self, namespace: str, name: str) -> None:
        self._cache.services.pop((namespace, name), None)

    def put_slice(self, raw: Mapping[str, Any]) -> SliceView:
        view = SliceView.from_raw(raw)
        self._cache.slices[(view.namespace, view.name)] = view
        return view

    def forget_slice(self, namespace: str, name: str) -> None:
        self._cache.slices.pop((namespace, name), None)

    @property
    def service_exports(self) -> Mapping[tuple[str, str], ServiceExportView]:
        return self._cache.service_exports

    @property
    def service_imports(self) -> Mapping[tuple[str, str], ServiceImportView]:
        return self._cache.service_imports

    def put_mcs(self, resource: Resource, raw: Mapping[str, Any]) -> Any:
        """Write-through of a ServiceExport status or a ServiceImport we wrote."""
        view = self._view(resource, raw)
        self._table(resource)[(view.namespace, view.name)] = view
        return view

    def forget_mcs(self, resource: Resource, namespace: str, name: str) -> None:
        self._table(resource).pop((namespace, name), None)

    # -- writing ----------------------------------------------------------------------------------
    def _resource(self, kind: str) -> Resource:
        resource = CLUSTERLINK.get(kind)
        if resource is None:
            raise StoreError(f"{kind} objects exist only in standalone mode, not in Kubernetes")
        return resource

    def _fail(self, exc: KubeError, action: str) -> None:
        """A write failed: temporary → StoreError (the caller retries); permanent → logged and counted."""
        if exc.temporary:
            raise StoreError(f"{action}: {exc}") from exc
        self.write_errors += 1
        log.error("%s failed and will not be retried until the object changes: %s", action, exc)

    def apply(self, obj: Object) -> Object:
        resource = self._resource(obj.kind)
        ns = obj.namespace or None
        body = {k: v for k, v in obj.to_dict().items() if k != "status"}
        body["metadata"] = {k: v for k, v in body["metadata"].items()
                            if k in ("name", "namespace", "labels", "annotations")}
        current = self.get(obj.kind, obj.namespace, obj.name)
        try:
            if current is None:
                try:
                    raw = self._api.create(resource, ns, body)
                except AlreadyExists:
                    raw = self._api.patch(resource, ns, obj.name, {"metadata": body["metadata"],
                                                                   "spec": body["spec"]})
            else:
                old = {"metadata": {"labels": dict(current.labels), "annotations": dict(current.annotations)},
                       "spec": dict(current.spec)}
                new = {"metadata": {"labels": dict(obj.labels), "annotations": dict(obj.annotations)},
                       "spec": dict(obj.spec)}
                patch = merge_patch(old, new)
                if not patch:
                    return current
                raw = self._api.patch(resource, ns, obj.name, patch)
        except KubeError as exc:
            raise StoreError(f"cannot store {obj.key}: {exc}") from exc
        stored = self._put_object(resource, raw)
        if stored is None:
            raise StoreError(f"{obj.key} was stored but the model rejects what the API server returned")
        return stored

    def update_spec(self, obj: Object, spec: Mapping[str, Any]) -> Object | None:
        if not self.leader:
            return None
        resource = self._resource(obj.kind)
        current = self.get(obj.kind, obj.namespace, obj.name)
        if current is None or current.uid != obj.uid:
            return None
        patch: dict[str, Any] = {"metadata": {"uid": current.uid}, "spec": merge_patch(current.spec, spec)}
        version = self._cache.versions.get((obj.kind, obj.namespace, obj.name))
        if version:
            patch["metadata"]["resourceVersion"] = version  # never overwrite a spec the user just changed
        try:
            raw = self._api.patch(resource, obj.namespace or None, obj.name, patch)
        except (Conflict, NotFound) as exc:
            log.info("%s changed or vanished before its spec write-back; the next pass retries (%s)", obj.key, exc)
            return None
        except KubeError as exc:
            self._fail(exc, f"writing back the spec of {obj.key}")
            return None
        return self._put_object(resource, raw)

    def delete(self, kind: str, namespace: str, name: str) -> bool:
        resource = self._resource(kind)
        try:
            self._api.delete(resource, namespace or None, name)
        except NotFound:
            existed = self.get(kind, namespace, name) is not None
            self._drop_object(resource, (namespace, name))
            return existed
        except KubeError as exc:
            raise StoreError(f"cannot delete {kind} {namespace}/{name}: {exc}") from exc
        self._drop_object(resource, (namespace, name))
        return True

    def set_status(self, kind: str, namespace: str, name: str, status: Mapping[str, Any]) -> bool:
        if not self.leader:
            return False
        resource = self._resource(kind)
        current = self.get(kind, namespace, name)
        if current is None or _canon(current.status) == _canon(status):
            return False
        patch = merge_patch(current.status, status)
        try:
            raw = self._api.patch_status(resource, namespace or None, name, patch)
        except NotFound:
            return False
        except KubeError as exc:
            self._fail(exc, f"writing the status of {kind} {namespace}/{name}")
            return False
        self._put_object(resource, raw)
        return True

    def secret(self, name: str, size: int = 32) -> bytes:
        """Get, or create once, Secret `clusterlink-<name>` (key `value`) in the ClusterLink namespace."""
        return self._get_or_create(name, "value", lambda: _secrets.token_bytes(size))

    def token(self, name: str) -> str:
        """Get, or create once, Secret `clusterlink-<name>` holding a random token as text (key
        `token`), so that pods can mount it as a file."""
        return self._get_or_create(name, "token", lambda: _secrets.token_urlsafe(32).encode()).decode()

    def _get_or_create(self, name: str, key: str, make: Callable[[], bytes]) -> bytes:
        secret_name = SECRET_PREFIX + name
        what = f"Secret {self.namespace}/{secret_name}"
        for _attempt in range(3):
            try:
                raw = self._api.get(SECRETS, self.namespace, secret_name)
                data = (raw.get("data") or {}).get(key)
                if not data:
                    raise StoreError(f"{what} has no {key!r} key")
                return base64.b64decode(data)
            except NotFound:
                pass
            except KubeError as exc:
                raise StoreError(f"cannot read {what}: {exc}") from exc
            value = make()
            body = {"apiVersion": "v1", "kind": "Secret", "type": "Opaque",
                    "metadata": {"name": secret_name, "namespace": self.namespace,
                                 "labels": {LABEL_MANAGED_BY: MANAGER}},
                    "data": {key: base64.b64encode(value).decode()}}
            try:
                self._api.create(SECRETS, self.namespace, body)
                log.info("created %s", what)
                return value
            except AlreadyExists:
                continue  # another replica created it first: read theirs
            except KubeError as exc:
                raise StoreError(f"cannot create {what}: {exc}") from exc
        raise StoreError(f"{what} keeps appearing and vanishing")

    # -- events -----------------------------------------------------------------------------------
    def subscribe(self, listener: Listener) -> Callable[[], None]:
        self._listeners.append(listener)

        def unsubscribe() -> None:
            if listener in self._listeners:
                self._listeners.remove(listener)

        return unsubscribe

    def on_cluster_change(self, hook: Callable[[], None]) -> Callable[[], None]:
        """Call `hook()` when a Service, gateway pod or EndpointSlice that matters changed."""
        self._cluster_listeners.append(hook)

        def remove() -> None:
            if hook in self._cluster_listeners:
                self._cluster_listeners.remove(hook)

        return remove

    def _emit(self, event: Event) -> None:
        for listener in list(self._listeners):
            try:
                listener(event)
            except Exception:
                log.exception("store listener %r failed on %s %s", listener, event.type.value, event.obj.key)

    def close(self) -> None:
        self._listeners.clear()
        self._cluster_listeners.clear()
