"""List+watch of one Kubernetes resource, kept going: the feed of the Kubernetes store's cache.

A `Reflector` lists the resource, hands the full list to its sink, then watches from the list's
resourceVersion and hands over every event. It keeps the last resourceVersion it saw (bookmarks
included) and:

- a watch the server ends (its timeout) is re-opened from that version;
- a temporary failure (API server down, 5xx, a dropped connection) is retried from that version
  after a capped exponential backoff (reconnect);
- an expired version (410 Gone) means events were missed: list again and carry on from there;
- a permanent failure (e.g. RBAC forbids the call) is logged as an error and retried at the
  backoff's maximum, so that fixing the RBAC heals the process without a restart;
- every `resync_period` it lists again even when nothing failed (resync), which repairs anything a
  bug or a lost event left behind; the sink only reports what actually changed.

It is blocking code meant for its own thread (the kubernetes client is synchronous); `stop` is a
`threading.Event`, and `close()` interrupts a watch blocked on the network.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from typing import Any, Protocol

from .kubeapi import Gone, KubeError, ObjectList, Resource, WatchStream

log = logging.getLogger(__name__)


class KubeReader(Protocol):
    """The part of `kubeapi.KubeAPI` a reflector uses."""

    def list(self, resource: Resource, *, namespace: str | None = None, label_selector: str | None = None,
             field_selector: str | None = None) -> ObjectList: ...

    def watch(self, resource: Resource, *, resource_version: str, namespace: str | None = None,
              label_selector: str | None = None, field_selector: str | None = None,
              timeout_seconds: int = 300) -> WatchStream: ...


class Sink(Protocol):
    def handle_list(self, resource: Resource, items: list[dict[str, Any]]) -> None:
        """The complete current set of objects (after a list)."""

    def handle_event(self, resource: Resource, etype: str, obj: dict[str, Any]) -> None:
        """One watch event: ADDED, MODIFIED or DELETED."""


class Reflector:
    def __init__(self, api: KubeReader, resource: Resource, sink: Sink, *, namespace: str | None = None,
                 label_selector: str | None = None, field_selector: str | None = None,
                 resync_period: float = 600.0, watch_timeout: int = 300, backoff_initial: float = 0.5,
                 backoff_max: float = 30.0, min_watch_duration: float = 1.0,
                 clock: Callable[[], float] = time.monotonic) -> None:
        if resync_period <= 0 or watch_timeout <= 0 or backoff_initial <= 0 or backoff_max < backoff_initial:
            raise ValueError("reflector periods must be positive (and backoff_max >= backoff_initial)")
        self.resource = resource
        self._api = api
        self._sink = sink
        self._namespace = namespace
        self._labels = label_selector
        self._fields = field_selector
        self._resync = resync_period
        self._watch_timeout = watch_timeout
        self._backoff_initial = backoff_initial
        self._backoff_max = backoff_max
        self._min_watch = min_watch_duration
        self._clock = clock
        self._lock = threading.Lock()
        self._stream: WatchStream | None = None
        self._closed = False
        self.resource_version = ""
        self.lists = 0
        self.watches = 0
        self.errors = 0

    @property
    def name(self) -> str:
        where = f" in {self._namespace}" if self._namespace else ""
        selector = f" ({self._labels or ''}{' ' if self._labels and self._fields else ''}{self._fields or ''})" \
            if self._labels or self._fields else ""
        return f"{self.resource.plural}{where}{selector}"

    def close(self) -> None:
        """Interrupt the current watch (from another thread); `run` returns once `stop` is set."""
        with self._lock:
            self._closed = True
            stream = self._stream
        if stream is not None:
            stream.close()

    def run(self, stop: threading.Event) -> None:
        delay = self._backoff_initial
        resync_at = 0.0
        while not stop.is_set():
            try:
                if not self.resource_version or self._clock() >= resync_at:
                    listed = self._api.list(self.resource, namespace=self._namespace, label_selector=self._labels,
                                            field_selector=self._fields)
                    self.lists += 1
                    self._sink.handle_list(self.resource, listed.items)
                    self.resource_version = listed.resource_version
                    resync_at = self._clock() + self._resync
                started = self._clock()
                events = self._watch_once(stop, resync_at)
                if events or self._clock() - started >= self._min_watch:
                    delay = self._backoff_initial
                else:  # the server keeps closing at once: do not spin
                    stop.wait(delay)
                    delay = min(delay * 2, self._backoff_max)
            except Gone as exc:
                log.info("watch of %s expired (%s); listing again", self.name, exc)
                self.resource_version = ""
            except KubeError as exc:
                self.errors += 1
                if exc.temporary:
                    log.warning("watching %s failed: %s; retrying in %.1f s", self.name, exc, delay)
                    stop.wait(delay)
                    delay = min(delay * 2, self._backoff_max)
                else:
                    log.error("watching %s failed: %s; retrying in %.1f s (check the RBAC and the CRDs)",
                              self.name, exc, self._backoff_max)
                    stop.wait(self._backoff_max)
            except Exception:  # a bug in a sink: keep the cache fed, with a traceback and a count
                self.errors += 1
                log.exception("watching %s: unexpected error; listing again in %.1f s", self.name, delay)
                self.resource_version = ""
                stop.wait(delay)
                delay = min(delay * 2, self._backoff_max)

    def _watch_once(self, stop: threading.Event, resync_at: float) -> int:
        timeout = max(1, int(min(self._watch_timeout, resync_at - self._clock())))
        stream = self._api.watch(self.resource, resource_version=self.resource_version, namespace=self._namespace,
                                 label_selector=self._labels, field_selector=self._fields, timeout_seconds=timeout)
        self.watches += 1
        with self._lock:
            self._stream = stream
            closed = self._closed
        if closed or stop.is_set():
            stream.close()
        count = 0
        try:
            for etype, obj in stream:
                version = (obj.get("metadata") or {}).get("resourceVersion")
                if version:
                    self.resource_version = str(version)
                if etype in ("ADDED", "MODIFIED", "DELETED"):
                    count += 1
                    self._sink.handle_event(self.resource, etype, obj)
                if stop.is_set():
                    break
        finally:
            with self._lock:
                self._stream = None
            stream.close()
        return count


def start_thread(reflector: Reflector, stop: threading.Event) -> threading.Thread:
    """Run a reflector in a daemon thread named after it (daemon: a blocked read never holds up exit)."""
    thread = threading.Thread(target=reflector.run, args=(stop,), name=f"watch:{reflector.name}", daemon=True)
    thread.start()
    return thread
