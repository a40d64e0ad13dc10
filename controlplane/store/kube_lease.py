"""Leader election on a coordination.k8s.io/v1 Lease, the way client-go does it.

Every control-plane replica serves snapshots; only the holder of the Lease writes status,
spec write-backs and Import Services. `LeaderElector.step()` makes one blocking attempt to create,
renew or take over the Lease (optimistic concurrency: a replace carrying the resourceVersion it
read, so two replicas can never both win) and reports a change of leadership:

- a Lease held by someone else is taken over only after it went unrenewed for its duration, as
  measured on *our* clock from when we last saw its record change (so clock skew between replicas
  does not matter);
- a leader that cannot renew for `renew_deadline` steps down (before the Lease expires for the
  others); a leader that finds the Lease taken steps down at once;
- `release()` on shutdown hands the Lease over immediately (holder cleared, duration 1 s).

`run()` drives `step()` every `retry_period` from asyncio (each attempt in a worker thread) and
calls `on_change(leading)` on the event loop.
"""

from __future__ import annotations

import asyncio
import datetime as _dt
import enum
import logging
import random
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any, Protocol

from .kubeapi import LEASES, AlreadyExists, Conflict, KubeError, NotFound, Resource

log = logging.getLogger(__name__)

MICROTIME = "%Y-%m-%dT%H:%M:%S.%fZ"


class LeaseAPI(Protocol):
    def get(self, resource: Resource, namespace: str | None, name: str) -> dict[str, Any]: ...

    def create(self, resource: Resource, namespace: str | None, body: Mapping[str, Any]) -> dict[str, Any]: ...

    def replace(self, resource: Resource, namespace: str | None, name: str,
                body: Mapping[str, Any]) -> dict[str, Any]: ...


@dataclass(frozen=True)
class LeaseConfig:
    namespace: str
    name: str
    identity: str
    duration: float = 15.0
    renew_deadline: float = 10.0
    retry_period: float = 2.0

    def __post_init__(self) -> None:
        if not self.identity:
            raise ValueError("leader election needs an identity (the pod name)")
        if not self.duration > self.renew_deadline > self.retry_period > 0:
            raise ValueError("leader election needs duration > renew_deadline > retry_period > 0")


@dataclass(frozen=True)
class LeaseRecord:
    holder: str
    duration: int
    acquire_time: str
    renew_time: str
    transitions: int

    @classmethod
    def from_raw(cls, raw: Mapping[str, Any]) -> LeaseRecord:
        spec = raw.get("spec") or {}
        return cls(holder=str(spec.get("holderIdentity") or ""), duration=int(spec.get("leaseDurationSeconds") or 0),
                   acquire_time=str(spec.get("acquireTime") or ""), renew_time=str(spec.get("renewTime") or ""),
                   transitions=int(spec.get("leaseTransitions") or 0))

    def to_spec(self) -> dict[str, Any]:
        spec: dict[str, Any] = {"holderIdentity": self.holder or None, "leaseDurationSeconds": self.duration,
                                "renewTime": self.renew_time or None, "leaseTransitions": self.transitions}
        if self.acquire_time:
            spec["acquireTime"] = self.acquire_time
        return spec


class Attempt(enum.Enum):
    HELD = "held"  # we hold the Lease now
    OTHER = "other"  # someone else holds a live Lease
    FAILED = "failed"  # the API call failed: we do not know


def _now_micro(wall: Callable[[], _dt.datetime]) -> str:
    return wall().astimezone(_dt.timezone.utc).strftime(MICROTIME)


class LeaderElector:
    def __init__(self, api: LeaseAPI, config: LeaseConfig, *,
                 clock: Callable[[], float] = time.monotonic,
                 wall: Callable[[], _dt.datetime] = lambda: _dt.datetime.now(_dt.timezone.utc),
                 rng: random.Random | None = None) -> None:
        self._api = api
        self.config = config
        self._clock = clock
        self._wall = wall
        self._rng = rng or random.Random()
        self.leading = False
        self._observed: LeaseRecord | None = None
        self._observed_at = 0.0
        self._last_renew: float | None = None

    # -- one attempt (blocking) ------------------------------------------------------------------
    def attempt(self) -> Attempt:
        cfg = self.config
        now = self._clock()
        stamp = _now_micro(self._wall)
        try:
            raw: dict[str, Any] | None = self._api.get(LEASES, cfg.namespace, cfg.name)
        except NotFound:
            raw = None
        except KubeError as exc:
            log.warning("leader election: reading Lease %s/%s failed: %s", cfg.namespace, cfg.name, exc)
            return Attempt.FAILED
        mine = LeaseRecord(cfg.identity, int(cfg.duration), stamp, stamp, 0)
        if raw is None:
            body = {"apiVersion": "coordination.k8s.io/v1", "kind": "Lease",
                    "metadata": {"name": cfg.name, "namespace": cfg.namespace}, "spec": mine.to_spec()}
            try:
                self._api.create(LEASES, cfg.namespace, body)
            except AlreadyExists:
                return Attempt.OTHER
            except KubeError as exc:
                log.warning("leader election: creating Lease %s/%s failed: %s", cfg.namespace, cfg.name, exc)
                return Attempt.FAILED
            self._observe(mine, now)
            return Attempt.HELD
        record = LeaseRecord.from_raw(raw)
        if record != self._observed:
            self._observe(record, now)
        if record.holder and record.holder != cfg.identity:
            expires = self._observed_at + max(record.duration, 1)
            if now < expires:
                return Attempt.OTHER
            log.info("leader election: Lease %s/%s of %s expired; taking over", cfg.namespace, cfg.name, record.holder)
        ours = record.holder == cfg.identity
        new = LeaseRecord(cfg.identity, int(cfg.duration), record.acquire_time if ours and record.acquire_time
                          else stamp, stamp, record.transitions if ours else record.transitions + 1)
        body = {**raw, "spec": {**(raw.get("spec") or {}), **new.to_spec()}}
        try:
            self._api.replace(LEASES, cfg.namespace, cfg.name, body)
        except Conflict:
            return Attempt.OTHER  # someone else wrote it between our read and our write
        except KubeError as exc:
            log.warning("leader election: renewing Lease %s/%s failed: %s", cfg.namespace, cfg.name, exc)
            return Attempt.FAILED
        self._observe(new, now)
        return Attempt.HELD

    def _observe(self, record: LeaseRecord, now: float) -> None:
        self._observed = record
        self._observed_at = now

    def step(self) -> bool | None:
        """One attempt; returns the new leadership when it changed, else None."""
        outcome = self.attempt()
        now = self._clock()
        if outcome is Attempt.HELD:
            self._last_renew = now
            if not self.leading:
                self.leading = True
                log.info("leader election: %s leads (Lease %s/%s)", self.config.identity, self.config.namespace,
                         self.config.name)
                return True
            return None
        if self.leading:
            lost = outcome is Attempt.OTHER or self._last_renew is None or \
                now - self._last_renew > self.config.renew_deadline
            if lost:
                self.leading = False
                log.warning("leader election: %s stops leading (%s)", self.config.identity,
                            "the Lease was taken" if outcome is Attempt.OTHER else "could not renew in time")
                return False
        return None

    def release(self) -> bool:
        """Give the Lease up now (shutdown). Returns whether leadership changed."""
        if not self.leading:
            return False
        cfg = self.config
        self.leading = False
        try:
            raw = self._api.get(LEASES, cfg.namespace, cfg.name)
            if LeaseRecord.from_raw(raw).holder == cfg.identity:
                stamp = _now_micro(self._wall)
                spec = {**(raw.get("spec") or {}), "holderIdentity": None, "leaseDurationSeconds": 1,
                        "renewTime": stamp, "acquireTime": stamp}
                self._api.replace(LEASES, cfg.namespace, cfg.name, {**raw, "spec": spec})
                log.info("leader election: %s released Lease %s/%s", cfg.identity, cfg.namespace, cfg.name)
        except KubeError as exc:  # the Lease expires by itself; the others just wait a little longer
            log.warning("leader election: releasing Lease %s/%s failed: %s", cfg.namespace, cfg.name, exc)
        return True

    # -- the loop ----------------------------------------------------------------------------------
    async def run(self, on_change: Callable[[bool], None]) -> None:
        """Forever: an attempt every retry period (jittered for followers); `on_change` on the loop."""
        try:
            while True:
                changed = await asyncio.to_thread(self.step)
                if changed is not None:
                    on_change(changed)
                period = self.config.retry_period
                if not self.leading:
                    period *= 1.0 + 0.2 * self._rng.random()
                await asyncio.sleep(period)
        finally:
            if await asyncio.shield(asyncio.to_thread(self.release)):
                on_change(False)
