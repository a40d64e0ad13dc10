"""The reconcile loop: store changes in, status writes and new snapshots out.

Every store event marks the state dirty; the loop (debounced) re-plans Imports and Exports, writes
the conditions that changed, restarts heartbeats for new Peers, and publishes fresh snapshots to
the watchers (gateways and agents). Only a leader writes (always true in standalone mode).
"""

from __future__ import annotations

import asyncio
import logging
import random
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Protocol

from controlplane.api import clusterlink_pb2 as pb
from controlplane.api.logsetup import fields
from controlplane.model import schema as S
from controlplane.model.conditions import set_condition
from controlplane.model.objects import Object, ObjectKey
from controlplane.store.base import Event, Store

from .events import Events, NoEvents, ObjectRef, condition_note
from .exports import ExportTarget, resolve_export
from .imports import ImportPlan, VipPool, plan_imports
from .snapshots import DesiredState, Versioner, agent_view, gateway_view

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class ReconcilerConfig:
    peer_name: str
    peer_labels: Mapping[str, str]
    system_namespace: str
    reserved_ports: Mapping[int, str]
    vip_range: str | None  # standalone: lease VIPs from this CIDR; None: VIPs come from elsewhere (Kubernetes)
    gateway_agent_address: str
    kubernetes: bool = False
    cluster_domain: str = "cluster.local"
    debounce: float = 0.02


class ImportService(Protocol):
    """What a service provider reports for one Import: its VIP and the ImportServiceValid condition."""

    vip: str
    ok: bool
    reason: str
    message: str


class ServiceProvider(Protocol):
    """Where Imports get their service address when it is not leased from a VIP range (Kubernetes:
    a Service per Import, VIP = its ClusterIP), and which local services exist (export validity)."""

    def local_services(self) -> Mapping[tuple[str, str], str]: ...

    def reconcile(self, imports: Sequence[tuple[Object, int]]) -> Mapping[ObjectKey, ImportService]:
        """Ensure the service of every (Import, target port; 0 = none valid); leader only."""


class FrontDoor(Protocol):
    """Another API onto the same objects (Kubernetes: the MCS API, `store.kube_mcs`); leader only."""

    def reconcile_exports(self) -> None:
        """Make the Exports it asks for (before the pass reads them)."""

    def reconcile_imports(self, imports: Sequence[Object]) -> None:
        """Mirror the Imports, with the statuses this pass wrote."""


@dataclass
class Publication:
    """The latest views; watchers wait on `changed` and read what they need."""

    gateway: pb.Snapshot | None = None
    agents: dict[str, pb.Snapshot] = field(default_factory=dict)
    serial: int = 0


class Reconciler:
    def __init__(self, config: ReconcilerConfig, store: Store, *, token_key: bytes,
                 reachable: Callable[[], Mapping[str, bool]] = dict,
                 on_peers_changed: Callable[[], None] | None = None, rng: random.Random | None = None,
                 services: ServiceProvider | None = None, events: Events | None = None,
                 front_door: FrontDoor | None = None) -> None:
        self.config = config
        self._front_door = front_door
        self._events: Events = events or NoEvents()
        self.store = store
        self._services = services
        self._token_key = token_key
        self._reachable = reachable
        self._on_peers_changed = on_peers_changed
        self._rng = rng or random.Random()
        self._vip_pool = VipPool(config.vip_range) if config.vip_range else None
        self._dirty = asyncio.Event()
        self._changed = asyncio.Condition()
        self._versioner = Versioner()
        self._agent_nodes: dict[str, int] = {}  # node -> number of watchers
        self._dirty_gen = 0  # counts changes; a pass publishes the count it started from
        self._published_gen = 0
        self.publication = Publication()
        self.leader = True
        self.reconcile_seconds: Callable[[float], None] | None = None
        self._state: DesiredState | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._loop_thread = 0
        self._unsubscribe = store.subscribe(self._on_event)

    # -- inputs ------------------------------------------------------------------------------------
    def _on_event(self, event: Event) -> None:
        """Store listener; the store may call it from the reconcile thread: hop to the loop."""
        loop = self._loop
        if loop is not None and threading.get_ident() != self._loop_thread:
            loop.call_soon_threadsafe(self._handle_event, event)
        else:
            self._handle_event(event)

    def _handle_event(self, event: Event) -> None:
        self.mark_dirty()
        if event.obj.kind == S.PEER.kind and self._on_peers_changed:
            self._on_peers_changed()

    def mark_dirty(self) -> None:
        self._dirty_gen += 1
        self._dirty.set()

    async def settled(self, timeout: float) -> bool:
        """Wait until a pass that started after this call (so after every store write made before
        it) has published its snapshots; False if that took longer than `timeout`."""
        self.mark_dirty()
        target = self._dirty_gen
        async with self._changed:
            try:
                await asyncio.wait_for(self._changed.wait_for(lambda: self._published_gen >= target), timeout)
            except TimeoutError:
                return False
        return True

    # -- the loop ----------------------------------------------------------------------------------
    async def run(self) -> None:
        """Reconcile on every change. With a thread-safe store (`store.thread_safe`, SQLite) each pass
        runs in a worker thread, so its writes never stall the snapshot streams served from the event
        loop; a store owned by the loop (Kubernetes: its cache is fed on the loop) is reconciled on it,
        with the API client's short timeouts bounding a stall."""
        self._loop = asyncio.get_running_loop()
        self._loop_thread = threading.get_ident()
        self._dirty.set()
        try:
            while True:
                await self._dirty.wait()
                await asyncio.sleep(self.config.debounce)
                self._dirty.clear()
                generation = self._dirty_gen
                start = time.perf_counter()
                try:
                    if getattr(self.store, "thread_safe", False):
                        await asyncio.to_thread(self.reconcile_once)
                    else:
                        self.reconcile_once()
                except Exception:
                    log.exception("reconcile failed; retrying in 1 s")
                    await asyncio.sleep(1.0)
                    self._dirty.set()
                    continue
                if self.reconcile_seconds:
                    self.reconcile_seconds(time.perf_counter() - start)
                await self._publish(generation)
        finally:
            self._unsubscribe()

    def reconcile_once(self) -> None:
        """Plan and write statuses; then render the desired state for snapshots."""
        if self.leader and self._front_door is not None:
            self._front_door.reconcile_exports()
        imports = self.store.list(S.IMPORT.kind)
        if self._services is not None:
            services = self._services.local_services()
        else:
            services = {(s.namespace, s.name): s.spec["host"] for s in self.store.list(S.LOCAL_SERVICE.kind)}
        exports = [(e, resolve_export(e, services, kubernetes=self.config.kubernetes,
                                       cluster_domain=self.config.cluster_domain))
                   for e in self.store.list(S.EXPORT.kind)]
        if self.leader:
            self._write_imports(imports)
            self._write_exports(exports)
            imports = self.store.list(S.IMPORT.kind)
            if self._front_door is not None:
                self._front_door.reconcile_imports(imports)
        self._state = DesiredState(
            peer_name=self.config.peer_name,
            peer_labels=self.config.peer_labels,
            system_namespace=self.config.system_namespace,
            peers=self.store.list(S.PEER.kind),
            exports=exports,
            imports=imports,
            policies=self.store.list(S.ACCESS_POLICY.kind) + self.store.list(S.PRIVILEGED_ACCESS_POLICY.kind),
            workloads=self.store.list(S.WORKLOAD.kind),
            token_key=self._token_key,
            gateway_agent_address=self.config.gateway_agent_address,
            reachable=self._reachable(),
        )

    def _write_imports(self, imports: list[Object]) -> None:
        plans = plan_imports(imports, reserved=self.config.reserved_ports, vip_pool=self._vip_pool, rng=self._rng)
        by_key = {i.key: i for i in imports}
        planned: list[tuple[Object, ImportPlan]] = []
        for plan in plans:
            obj = by_key[plan.key]
            if plan.write_back:
                spec = dict(obj.spec)
                spec["targetPort"] = plan.target_port
                updated = self.store.update_spec(obj, spec)
                if updated is None:
                    continue
                obj = updated
            planned.append((obj, plan))
        provided: Mapping[ObjectKey, ImportService] = {}
        if self._services is not None:
            provided = self._services.reconcile([(obj, plan.target_port) for obj, plan in planned])
        for obj, plan in planned:
            status = dict(obj.status)
            status = set_condition(status, S.IMPORT_TARGET_PORT_VALID, plan.port_condition.ok,
                                   plan.port_condition.reason, plan.port_condition.message, generation=obj.generation)
            service = provided.get(obj.key)
            if service is not None:
                status = set_condition(status, S.IMPORT_SERVICE_VALID, service.ok, service.reason, service.message,
                                       generation=obj.generation)
            else:
                status = set_condition(status, S.IMPORT_SERVICE_VALID, plan.service_condition.ok,
                                       plan.service_condition.reason, plan.service_condition.message,
                                       generation=obj.generation)
            if service is not None or self._vip_pool is not None:
                vip = service.vip if service is not None else plan.vip
                if vip:
                    status["vip"] = vip
                else:
                    status.pop("vip", None)
            if self.store.set_status(S.IMPORT.kind, obj.namespace, obj.name, status):
                if not plan.port_condition.ok:
                    log.warning("import %s/%s: %s", obj.namespace, obj.name, plan.port_condition.message,
                                extra=fields(kind=S.IMPORT.kind, object=f"{obj.namespace}/{obj.name}"))
                self._condition_events(obj, status, (S.IMPORT_TARGET_PORT_VALID, S.IMPORT_SERVICE_VALID))

    def _write_exports(self, exports: list[tuple[Object, ExportTarget]]) -> None:
        for obj, target in exports:
            status = set_condition(obj.status, S.EXPORT_VALID, target.valid, target.reason, target.message,
                                   generation=obj.generation)
            if self.store.set_status(S.EXPORT.kind, obj.namespace, obj.name, status):
                if not target.valid:
                    log.warning("export %s/%s: %s", obj.namespace, obj.name, target.message,
                                extra=fields(kind=S.EXPORT.kind, object=f"{obj.namespace}/{obj.name}"))
                self._condition_events(obj, status, (S.EXPORT_VALID,))

    def _condition_events(self, obj: Object, status: Mapping[str, object], types: Sequence[str]) -> None:
        """Events for the conditions of `obj` that changed in a way a user must see (events.py)."""
        for type_ in types:
            note = condition_note(obj.status, status, type_)
            if note is not None:
                self._events.record(ObjectRef.of(obj), note)

    # -- publication -------------------------------------------------------------------------------
    async def _publish(self, generation: int) -> None:
        state = self._state
        if state is None:
            return
        pub = Publication(gateway=self._versioner.stamp("gateway", gateway_view(state)),
                          agents={node: self._versioner.stamp(f"agent:{node}", agent_view(state, node))
                                  for node in self._agent_nodes},
                          serial=self.publication.serial + 1)
        async with self._changed:
            self.publication = pub
            self._published_gen = max(self._published_gen, generation)
            self._changed.notify_all()

    def agent_snapshot(self, node: str) -> pb.Snapshot | None:
        if self._state is None:
            return None
        snap = self.publication.agents.get(node)
        if snap is None:
            snap = self._versioner.stamp(f"agent:{node}", agent_view(self._state, node))
            self.publication.agents[node] = snap
        return snap

    def add_agent(self, node: str) -> None:
        self._agent_nodes[node] = self._agent_nodes.get(node, 0) + 1

    def remove_agent(self, node: str) -> None:
        left = self._agent_nodes.get(node, 0) - 1
        if left <= 0:
            self._agent_nodes.pop(node, None)
        else:
            self._agent_nodes[node] = left

    async def wait_changed(self, serial: int, timeout: float | None = None) -> int:
        """Wait until the publication serial differs from `serial`; returns the new serial."""
        async with self._changed:
            try:
                await asyncio.wait_for(self._changed.wait_for(lambda: self.publication.serial != serial), timeout)
            except asyncio.TimeoutError:
                pass
            return self.publication.serial
