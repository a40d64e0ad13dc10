"""Kubernetes Events (`events.k8s.io/v1`), written off the event loop, deduplicated and bounded.

`record()` only queues (it is called from the reconcile pass and the heartbeats, on the loop); a
thread writes. The same (object, reason, message) again is one Event whose `series.count` grows
(a patch at most every `repeat_interval` seconds per Event, the latest count written when the
interval has passed), as kubectl and client-go expect. Bounded: at most `queue_size` records
waiting (more are dropped and counted) and `max_series` Events remembered. A failed write is
logged at a limited rate and forgotten: Events are best effort, never a reason to stall or retry
forever. Non-leaders record nothing (the leader does; replicas would only repeat it).
"""

from __future__ import annotations

import datetime as _dt
import logging
import queue
import secrets
import socket
import threading
import time
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass

from controlplane.gateway.logthrottle import LogThrottle
from controlplane.model import schema as S
from controlplane.store.kube import KubeWriter
from controlplane.store.kubeapi import EVENTS, KubeError, NotFound

from .events import EventNote, ObjectRef

log = logging.getLogger(__name__)

CONTROLLER = "clusterlink.net/controlplane"
NOTE_LIMIT = 1024  # the API server refuses longer notes


@dataclass
class _Series:
    note: EventNote
    name: str
    namespace: str
    count: int
    written_count: int
    written_at: float


def _micro_time(ts: float) -> str:
    return _dt.datetime.fromtimestamp(ts, _dt.timezone.utc).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


class KubeEvents:
    def __init__(self, api: KubeWriter, *, fallback_namespace: str, leading: Callable[[], bool],
                 instance: str | None = None, repeat_interval: float = 60.0, queue_size: int = 256,
                 max_series: int = 1024, clock: Callable[[], float] = time.time) -> None:
        self._api = api
        self._fallback_namespace = fallback_namespace  # where Events about cluster-scoped objects go
        self._leading = leading
        self._instance = instance or socket.gethostname()
        self._repeat_interval = repeat_interval
        self._queue: queue.Queue[tuple[ObjectRef, EventNote, int]] = queue.Queue(maxsize=queue_size)
        self._series: OrderedDict[tuple[ObjectRef, str, str], _Series] = OrderedDict()
        self._max_series = max_series
        self._clock = clock
        self._throttle = LogThrottle(log, interval=60.0)
        self.dropped = 0
        self.written = 0
        self.failed = 0

    # -- producers (any thread) ---------------------------------------------------------------------
    def record(self, ref: ObjectRef, note: EventNote, count: int = 1) -> None:
        if not self._leading():
            return
        try:
            self._queue.put_nowait((ref, note, max(1, count)))
        except queue.Full:
            self.dropped += 1

    # -- the writer ---------------------------------------------------------------------------------
    def run(self, stop: threading.Event, *, poll: float = 1.0) -> None:
        """Write until `stop` is set (the thread's body)."""
        while not stop.is_set():
            try:
                ref, note, count = self._queue.get(timeout=poll)
            except queue.Empty:
                self.flush()
                continue
            self.write(ref, note, count)
        self.drain()

    def start(self, stop: threading.Event) -> threading.Thread:
        thread = threading.Thread(target=self.run, args=(stop,), name="kube-events", daemon=True)
        thread.start()
        return thread

    def drain(self) -> None:
        """Write everything queued now, then the counts due (tests; the end of `run`)."""
        while True:
            try:
                ref, note, count = self._queue.get_nowait()
            except queue.Empty:
                break
            self.write(ref, note, count)
        self.flush()

    def write(self, ref: ObjectRef, note: EventNote, count: int = 1) -> None:
        key = (ref, note.reason, note.message)
        now = self._clock()
        series = self._series.get(key)
        if series is None:
            self._create(key, ref, note, now, count)
            return
        self._series.move_to_end(key)
        series.count += count
        self._patch_if_due(key, series, now)

    def flush(self) -> None:
        """Write the counts of repeated Events whose interval has passed."""
        now = self._clock()
        for key, series in list(self._series.items()):
            if series.count != series.written_count:
                self._patch_if_due(key, series, now)

    def _create(self, key: tuple[ObjectRef, str, str], ref: ObjectRef, note: EventNote, now: float,
                count: int = 1) -> None:
        namespace = ref.namespace or self._fallback_namespace
        name = f"{ref.name}.{secrets.token_hex(8)}"
        regarding = {"apiVersion": f"{S.GROUP}/{S.VERSION}", "kind": ref.kind, "name": ref.name}
        if ref.namespace:
            regarding["namespace"] = ref.namespace
        if ref.uid:
            regarding["uid"] = ref.uid
        body = {
            "apiVersion": EVENTS.api_version, "kind": EVENTS.kind,
            "metadata": {"name": name, "namespace": namespace},
            "eventTime": _micro_time(now), "reportingController": CONTROLLER,
            "reportingInstance": self._instance[:128], "action": note.action, "reason": note.reason,
            "type": note.type, "note": note.message[:NOTE_LIMIT], "regarding": regarding,
        }
        if count > 1:  # several occurrences already (a gateway's report)
            body["series"] = {"count": count, "lastObservedTime": _micro_time(now)}
        try:
            self._api.create(EVENTS, namespace, body)
        except KubeError as exc:
            self._failed(f"recording Event {note.reason} on {ref.kind} {ref.namespace}/{ref.name}", exc)
            return
        self.written += 1
        self._series[key] = _Series(note, name, namespace, count, count, now)
        while len(self._series) > self._max_series:
            self._series.popitem(last=False)

    def _patch_if_due(self, key: tuple[ObjectRef, str, str], series: _Series, now: float) -> None:
        if now - series.written_at < self._repeat_interval:
            return
        patch = {"series": {"count": series.count, "lastObservedTime": _micro_time(now)}}
        try:
            self._api.patch(EVENTS, series.namespace, series.name, patch)
        except NotFound:  # expired (the API server keeps Events for an hour): a new one for what was not written
            del self._series[key]
            self._create(key, key[0], series.note, now, series.count - series.written_count)
            return
        except KubeError as exc:
            self._failed(f"counting Event {series.namespace}/{series.name}", exc)
            series.written_at = now  # try the count again an interval later, not in a loop
            return
        self.written += 1
        series.written_count = series.count
        series.written_at = now

    def _failed(self, what: str, exc: KubeError) -> None:
        self.failed += 1
        self._throttle.warning("write", "%s failed (Events are best effort; %d failed so far): %s", what,
                               self.failed, exc)

