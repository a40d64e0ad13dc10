"""Heartbeats: one task per remote Peer probing its gateways and writing `PeerReachable`.

The decision logic is `health.PeerHealth`; this module only schedules probes, records the results
and writes the Peer status (condition + the labels the peer reported) when it changes.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass

from controlplane.api.logsetup import fields
from controlplane.model import schema as S
from controlplane.model.conditions import set_condition
from controlplane.store.base import Store

from .events import Events, NoEvents, ObjectRef, peer_note
from .health import PROBE_TIMEOUT, PeerHealth

log = logging.getLogger(__name__)

# probe(peer name, [(host, port)...]) -> the peer's labels; raises on failure
Prober = Callable[[str, Sequence[tuple[str, int]]], Awaitable[Mapping[str, str]]]
ResultHook = Callable[[str, bool], None]


@dataclass
class _Tracked:
    task: asyncio.Task
    health: PeerHealth


class Heartbeats:
    def __init__(self, store: Store, *, namespace: str, probe: Prober, on_result: ResultHook | None = None,
                 timeout: float = PROBE_TIMEOUT, events: Events | None = None) -> None:
        self.store = store
        self._events: Events = events or NoEvents()
        self.namespace = namespace
        self._probe = probe
        self._on_result = on_result
        self._timeout = timeout
        self._peers: dict[str, _Tracked] = {}
        self._wake: dict[str, asyncio.Event] = {}

    def reachable(self) -> dict[str, bool]:
        return {name: bool(t.health.reachable) for name, t in self._peers.items() if t.health.reachable is not None}

    def sync(self) -> None:
        """Start a task for every Peer of the namespace, stop the tasks of deleted ones."""
        wanted = {p.name for p in self.store.list(S.PEER.kind) if p.namespace == self.namespace}
        for name in set(self._peers) - wanted:
            self._peers.pop(name).task.cancel()
            self._wake.pop(name, None)
        for name in wanted - set(self._peers):
            self._wake[name] = asyncio.Event()
            health = PeerHealth()
            task = asyncio.create_task(self._run(name, health), name=f"heartbeat:{name}")
            self._peers[name] = _Tracked(task, health)

    def poke(self, name: str) -> None:
        """Probe a peer now (e.g. its gateways changed)."""
        if name in self._wake:
            self._wake[name].set()

    async def stop(self) -> None:
        tasks = [t.task for t in self._peers.values()]
        self._peers.clear()
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)

    async def _run(self, name: str, health: PeerHealth) -> None:
        while True:
            peer = self.store.get(S.PEER.kind, self.namespace, name)
            if peer is None:
                return
            gateways = [(g["host"], int(g["port"])) for g in peer.spec["gateways"]]
            labels: Mapping[str, str] | None = None
            try:
                labels = await asyncio.wait_for(self._probe(name, gateways), self._timeout)
                ok = True
            except asyncio.CancelledError:
                raise
            except Exception as exc:  # every failure mode of a probe counts as a failed heartbeat
                ok = False
                log.debug("heartbeat to peer %s failed: %s", name, exc)
            before = health.reachable
            changed = health.record(ok)
            if self._on_result:
                self._on_result(name, ok)
            if changed:
                log.info("peer %s is now %s", name, "reachable" if health.reachable else "unreachable",
                         extra=fields(peer=name, result="up" if health.reachable else "down", reason="heartbeat"))
                note = peer_note(name, bool(health.reachable), before)
                if note is not None:
                    self._events.record(ObjectRef(S.PEER.kind, self.namespace, name, peer.uid), note)
            self._write_status(name, health, labels)
            wake = self._wake.get(name)
            if wake is None:
                return
            try:
                await asyncio.wait_for(wake.wait(), health.interval())
            except asyncio.TimeoutError:
                pass
            wake.clear()

    def _write_status(self, name: str, health: PeerHealth, labels: Mapping[str, str] | None) -> None:
        peer = self.store.get(S.PEER.kind, self.namespace, name)
        if peer is None or health.reachable is None:
            return
        message = "heartbeat succeeded" if health.reachable else "heartbeats failed"
        status = set_condition(peer.status, S.PEER_REACHABLE, health.reachable, S.REASON_HEARTBEAT, message,
                               generation=peer.generation)
        if labels is not None:
            status["labels"] = dict(labels)
        self.store.set_status(S.PEER.kind, self.namespace, name, status)
