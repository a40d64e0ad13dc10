"""Who is behind a cgroup, in Kubernetes: the pods of this node, by UID, kept current by a watch.

`PodIndex` maps pod UIDs (and static pods' config hashes) to `WorkloadAttributes` (namespace,
name, service account, labels); it is fed raw list results and watch events and is thread-safe.
`PodWatcher` lists and watches the pods with `fieldSelector=spec.nodeName=<node>` (resourceVersion
kept, 410 → list again, reconnect with capped backoff, periodic resync). `PodResolver` is what
the agent's main uses: `await start()`, `resolve(cgroup_path)`, `await stop()`.
"""

from __future__ import annotations

import asyncio
import logging
import threading
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, Protocol

from controlplane.api.attributes import client_attributes

from .cgroup import pod_uid_from_cgroup
from .podapi import Expired, PodAPI, PodAPIError, PodStream

log = logging.getLogger(__name__)

MIRROR_ANNOTATION = "kubernetes.io/config.mirror"


@dataclass(frozen=True)
class WorkloadAttributes:
    namespace: str
    name: str
    service_account: str
    labels: Mapping[str, str] = field(default_factory=dict)

    def attributes(self) -> dict[str, str]:
        """The client.clusterlink.net/* attributes policies select on."""
        return client_attributes(self.namespace, self.service_account, self.labels)


def workload_of(pod: Mapping[str, Any]) -> tuple[list[str], WorkloadAttributes]:
    """The keys a pod's cgroup may carry (UID; config hash of a static pod) and its attributes."""
    meta = pod.get("metadata") or {}
    spec = pod.get("spec") or {}
    keys = [str(meta.get("uid") or "").lower()]
    mirror = (meta.get("annotations") or {}).get(MIRROR_ANNOTATION)
    if mirror:
        keys.append(str(mirror).lower())
    attrs = WorkloadAttributes(namespace=str(meta.get("namespace") or ""), name=str(meta.get("name") or ""),
                               service_account=str(spec.get("serviceAccountName") or "default"),
                               labels=dict(meta.get("labels") or {}))
    return [k for k in keys if k], attrs


class PodIndex:
    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._by_key: dict[str, WorkloadAttributes] = {}
        self._keys_of: dict[tuple[str, str], list[str]] = {}  # (namespace, name) -> its keys
        self.synced = threading.Event()
        self.generation = 0  # changes with every list and event: what was resolved before may differ now

    def handle_list(self, items: list[dict[str, Any]]) -> None:
        by_key: dict[str, WorkloadAttributes] = {}
        keys_of: dict[tuple[str, str], list[str]] = {}
        for pod in items:
            keys, attrs = workload_of(pod)
            keys_of[(attrs.namespace, attrs.name)] = keys
            for key in keys:
                by_key[key] = attrs
        with self._lock:
            self._by_key, self._keys_of = by_key, keys_of
            self.generation += 1
        self.synced.set()

    def handle_event(self, etype: str, pod: dict[str, Any]) -> None:
        keys, attrs = workload_of(pod)
        name = (attrs.namespace, attrs.name)
        with self._lock:
            for key in self._keys_of.pop(name, []):
                self._by_key.pop(key, None)
            if etype != "DELETED":
                self._keys_of[name] = keys
                for key in keys:
                    self._by_key[key] = attrs
            self.generation += 1

    def get(self, uid: str) -> WorkloadAttributes | None:
        with self._lock:
            return self._by_key.get(uid.lower())

    def resolve(self, cgroup_path: str) -> WorkloadAttributes | None:
        uid = pod_uid_from_cgroup(cgroup_path)
        return None if uid is None else self.get(uid)

    def __len__(self) -> int:
        with self._lock:
            return len(self._keys_of)


class PodSource(Protocol):
    def list_pods(self, field_selector: str) -> tuple[list[dict[str, Any]], str]: ...

    def watch_pods(self, field_selector: str, resource_version: str, timeout_seconds: int) -> PodStream: ...


class PodWatcher:
    """List+watch of one node's pods into a `PodIndex` (blocking; run it in a thread)."""

    def __init__(self, api: PodSource, node: str, index: PodIndex, *, resync_period: float = 300.0,
                 watch_timeout: int = 240, backoff_initial: float = 0.5, backoff_max: float = 30.0) -> None:
        if not node:
            raise ValueError("the pod watcher needs the node name (spec.nodeName)")
        self._api = api
        self.selector = f"spec.nodeName={node}"
        self._index = index
        self._resync = resync_period
        self._watch_timeout = watch_timeout
        self._backoff = (backoff_initial, backoff_max)
        self._lock = threading.Lock()
        self._stream: PodStream | None = None
        self.resource_version = ""
        self.lists = 0
        self.errors = 0

    def close(self) -> None:
        with self._lock:
            stream = self._stream
        if stream is not None:
            stream.close()

    def run(self, stop: threading.Event) -> None:
        delay, resync_at = self._backoff[0], 0.0
        while not stop.is_set():
            try:
                if not self.resource_version or time.monotonic() >= resync_at:
                    items, self.resource_version = self._api.list_pods(self.selector)
                    self.lists += 1
                    self._index.handle_list(items)
                    resync_at = time.monotonic() + self._resync
                timeout = max(1, int(min(self._watch_timeout, resync_at - time.monotonic())))
                stream = self._api.watch_pods(self.selector, self.resource_version, timeout)
                with self._lock:
                    self._stream = stream
                if stop.is_set():
                    stream.close()
                started, events = time.monotonic(), 0
                for etype, pod in stream:
                    version = (pod.get("metadata") or {}).get("resourceVersion")
                    if version:
                        self.resource_version = str(version)
                    if etype in ("ADDED", "MODIFIED", "DELETED"):
                        events += 1
                        self._index.handle_event(etype, pod)
                if events or time.monotonic() - started >= 1.0:
                    delay = self._backoff[0]
                else:  # the server keeps closing at once: do not spin
                    stop.wait(delay)
                    delay = min(delay * 2, self._backoff[1])
            except Expired as exc:
                log.info("pod watch expired (%s); listing again", exc)
                self.resource_version = ""
            except PodAPIError as exc:
                self.errors += 1
                wait = delay if exc.temporary else self._backoff[1]
                log.log(logging.WARNING if exc.temporary else logging.ERROR,
                        "watching the pods of this node failed: %s; retrying in %.1f s", exc, wait)
                stop.wait(wait)
                delay = min(delay * 2, self._backoff[1])
            except Exception:  # a bug: keep the index fed, with a traceback and a count
                self.errors += 1
                log.exception("watching the pods of this node: unexpected error; listing again in %.1f s", delay)
                self.resource_version = ""
                stop.wait(delay)
                delay = min(delay * 2, self._backoff[1])
            finally:
                with self._lock:
                    self._stream = None


class PodResolver:
    """cgroup path → the pod's attributes, for the agent in Kubernetes (`--workloads kubernetes`)."""

    def __init__(self, node: str, *, api: PodSource | None = None, sync_timeout: float = 30.0,
                 resync_period: float = 300.0) -> None:
        if not node:
            raise ValueError("PodResolver needs the node name")
        self.node = node
        self.index = PodIndex()
        self._api = api
        self._sync_timeout = sync_timeout
        self._resync = resync_period
        self._stop = threading.Event()
        self._watcher: PodWatcher | None = None
        self._thread: threading.Thread | None = None

    async def start(self) -> None:
        """Start watching; wait (at most `sync_timeout`) for the first list of the node's pods."""
        if self._api is None:
            self._api = await asyncio.to_thread(PodAPI.from_environment)
        self._watcher = PodWatcher(self._api, self.node, self.index, resync_period=self._resync)
        self._thread = threading.Thread(target=self._watcher.run, args=(self._stop,), name="watch:pods",
                                        daemon=True)
        self._thread.start()
        if await asyncio.to_thread(self.index.synced.wait, self._sync_timeout):
            log.info("watching the %d pods of node %s", len(self.index), self.node)
        else:
            log.warning("the pods of node %s are not listed yet after %.0f s; clients stay anonymous until they "
                        "are", self.node, self._sync_timeout)

    def resolve(self, cgroup_path: str) -> WorkloadAttributes | None:
        return self.index.resolve(cgroup_path)

    @property
    def generation(self) -> int:
        """Changes whenever the pods known may resolve differently (the agent's route cache key)."""
        return self.index.generation

    async def stop(self) -> None:
        self._stop.set()
        if self._watcher is not None:
            self._watcher.close()
        if self._thread is not None:
            await asyncio.to_thread(self._thread.join, 5.0)
        close = getattr(self._api, "close", None)
        if close is not None:
            close()
