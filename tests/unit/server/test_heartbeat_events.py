"""Heartbeats record Peer Events when the verdict changes (not on a first good heartbeat)."""

from __future__ import annotations

import asyncio

from controlplane.model.objects import parse_documents
from controlplane.server import events as E
from controlplane.server.heartbeats import Heartbeats
from controlplane.store.sqlite import SQLiteStore

PEER = """
apiVersion: clusterlink.net/v1alpha1
kind: Peer
metadata: {name: cl2, namespace: clusterlink-system}
spec: {gateways: [{host: 127.0.0.1, port: 9}]}
"""


class Recorded:
    def __init__(self) -> None:
        self.notes: list[tuple[E.ObjectRef, E.EventNote]] = []

    def record(self, ref: E.ObjectRef, note: E.EventNote, count: int = 1) -> None:
        self.notes.append((ref, note))


async def _until(check, timeout: float = 5.0) -> None:  # type: ignore[no-untyped-def]
    async with asyncio.timeout(timeout):
        while not check():
            await asyncio.sleep(0.01)


def test_down_then_up_records_a_warning_then_a_normal_event(tmp_path) -> None:  # type: ignore[no-untyped-def]
    store = SQLiteStore(tmp_path / "state.db")
    (peer,) = parse_documents(PEER)
    uid = store.apply(peer).uid
    answers = {"ok": False}
    probes = []

    async def probe(name, gateways):  # type: ignore[no-untyped-def]
        probes.append(name)
        if not answers["ok"]:
            raise ConnectionRefusedError("nobody home")
        return {}

    async def scenario() -> list[tuple[E.ObjectRef, E.EventNote]]:
        events = Recorded()
        beats = Heartbeats(store, namespace="clusterlink-system", probe=probe, timeout=1.0, events=events)
        beats.sync()
        try:
            await _until(lambda: len(events.notes) == 1)  # the first heartbeat failed: down at once
            answers["ok"] = True
            for n in range(3):  # three successes make it reachable again
                seen = len(probes)
                beats.poke("cl2")
                await _until(lambda: len(probes) > seen)
            await _until(lambda: len(events.notes) == 2)
        finally:
            await beats.stop()
        return events.notes

    try:
        notes = asyncio.run(scenario())
    finally:
        store.close()
    (ref1, down), (ref2, up) = notes
    assert ref1 == ref2 == E.ObjectRef("Peer", "clusterlink-system", "cl2", uid)
    assert (down.type, down.reason) == (E.WARNING, E.PEER_UNREACHABLE)
    assert (up.type, up.reason) == (E.NORMAL, E.PEER_REACHABLE)


def test_a_first_good_heartbeat_records_nothing(tmp_path) -> None:  # type: ignore[no-untyped-def]
    store = SQLiteStore(tmp_path / "state.db")
    (peer,) = parse_documents(PEER)
    store.apply(peer)
    probes = []

    async def probe(name, gateways):  # type: ignore[no-untyped-def]
        probes.append(name)
        return {}

    async def scenario() -> Recorded:
        events = Recorded()
        beats = Heartbeats(store, namespace="clusterlink-system", probe=probe, timeout=1.0, events=events)
        beats.sync()
        try:
            await _until(lambda: len(probes) >= 2)
        finally:
            await beats.stop()
        return events

    try:
        assert asyncio.run(scenario()).notes == []
    finally:
        store.close()
