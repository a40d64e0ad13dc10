"""The Kubernetes backend of the control plane, assembled: API, store, Import Services, watches, Lease.

`KubeBackend.start()` runs one reflector thread per watched resource (the five ClusterLink kinds,
Peers only in the ClusterLink namespace; every Service; ClusterLink's EndpointSlices; the gateway
pods; with `mcs`, every ServiceExport and ClusterLink's ServiceImports) feeding the store on the event loop through `LoopSink`, and returns once every cache has
been listed, so that nothing is planned from a partial picture. `run_leader_election()` keeps
the Lease and flips `store.leader` plus the hooks registered with `on_leadership`. `stop()` stops
the watches and releases the Lease.
"""

from __future__ import annotations

import asyncio
import logging
import socket
import threading
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

from .base import StoreError
from .kube import LABEL_MANAGED_BY, MANAGER, KubeStore
from .kube_mcs import MultiClusterServices
from .kube_lease import LeaderElector, LeaseConfig
from .kube_reflector import Reflector, start_thread
from .kube_services import LABEL_SLICE_MANAGED_BY, ImportServices
from .kubeapi import CLUSTERLINK, ENDPOINT_SLICES, PODS, SERVICE_EXPORTS, SERVICE_IMPORTS, SERVICES, KubeAPI, Resource

log = logging.getLogger(__name__)

DEFAULT_GATEWAY_SELECTOR = {"app.kubernetes.io/name": "clusterlink", "app.kubernetes.io/component": "gateway"}
DEFAULT_LEASE = "clusterlink-controlplane"


def selector_text(labels: Mapping[str, str]) -> str:
    return ",".join(f"{k}={v}" for k, v in sorted(labels.items()))


def parse_selector(text: str) -> dict[str, str]:
    """'k=v,k2=v2' → {k: v, k2: v2} (equality selectors only, as the Service selector needs)."""
    out: dict[str, str] = {}
    for item in filter(None, (x.strip() for x in text.split(","))):
        key, sep, value = item.partition("=")
        if not sep or not key.strip():
            raise ValueError(f"{item!r} is not key=value")
        out[key.strip()] = value.strip()
    if not out:
        raise ValueError("the selector names no label")
    return out


@dataclass(frozen=True)
class KubeSettings:
    namespace: str
    gateway_selector: Mapping[str, str] = field(default_factory=lambda: dict(DEFAULT_GATEWAY_SELECTOR))
    lease_name: str = DEFAULT_LEASE
    identity: str = field(default_factory=socket.gethostname)
    resync_period: float = 600.0
    sync_timeout: float = 120.0
    mcs: bool = False  # watch ServiceExports and ClusterLink's ServiceImports (kube_mcs)


class LoopSink:
    """Hands reflector output (from its thread) to the store on the event loop's thread."""

    def __init__(self, store: KubeStore, loop: asyncio.AbstractEventLoop) -> None:
        self._store = store
        self._loop = loop

    def handle_list(self, resource: Resource, items: list[dict[str, Any]]) -> None:
        self._loop.call_soon_threadsafe(self._store.handle_list, resource, items)

    def handle_event(self, resource: Resource, etype: str, obj: dict[str, Any]) -> None:
        self._loop.call_soon_threadsafe(self._store.handle_event, resource, etype, obj)


class KubeBackend:
    def __init__(self, api: KubeAPI, settings: KubeSettings) -> None:
        self.api = api
        self.settings = settings
        self.store = KubeStore(api, namespace=settings.namespace, mcs=settings.mcs)
        self.services = ImportServices(api, self.store, system_namespace=settings.namespace,
                                       gateway_selector=settings.gateway_selector)
        self.mcs = MultiClusterServices(api, self.store) if settings.mcs else None
        self.elector = LeaderElector(api, LeaseConfig(settings.namespace, settings.lease_name, settings.identity))
        self._stop = threading.Event()
        self._reflectors: list[Reflector] = []
        self._hooks: list[Callable[[bool], None]] = []

    @classmethod
    def from_environment(cls, settings: KubeSettings) -> KubeBackend:
        return cls(KubeAPI.from_environment(), settings)

    def reflectors(self, sink: Any) -> list[Reflector]:
        ns = self.settings.namespace
        period = self.settings.resync_period
        out = [Reflector(self.api, resource, sink, namespace=ns if kind == "Peer" else None, resync_period=period)
               for kind, resource in CLUSTERLINK.items()]
        out.append(Reflector(self.api, SERVICES, sink, resync_period=period))
        out.append(Reflector(self.api, ENDPOINT_SLICES, sink, label_selector=f"{LABEL_SLICE_MANAGED_BY}={MANAGER}",
                             resync_period=period))
        out.append(Reflector(self.api, PODS, sink, namespace=ns,
                             label_selector=selector_text(self.settings.gateway_selector), resync_period=period))
        if self.settings.mcs:
            out.append(Reflector(self.api, SERVICE_EXPORTS, sink, resync_period=period))
            out.append(Reflector(self.api, SERVICE_IMPORTS, sink, label_selector=f"{LABEL_MANAGED_BY}={MANAGER}",
                                 resync_period=period))
        return out

    async def start(self) -> None:
        """Start the watches; return once every resource has been listed (or raise StoreError)."""
        sink = LoopSink(self.store, asyncio.get_running_loop())
        self._reflectors = self.reflectors(sink)
        for reflector in self._reflectors:
            start_thread(reflector, self._stop)
        deadline = asyncio.get_running_loop().time() + self.settings.sync_timeout
        while not self.store.is_synced():
            if asyncio.get_running_loop().time() > deadline:
                missing = [r.name for r in self._reflectors if r.lists == 0]
                raise StoreError(f"Kubernetes caches not filled after {self.settings.sync_timeout:.0f} s: "
                                 f"{', '.join(missing) or 'unknown'} (are the CRDs installed and the RBAC right? "
                                 f"--mcs on also needs the MCS API's CRDs)")
            await asyncio.sleep(0.05)
        log.info("Kubernetes caches filled (namespace %s, %d resources watched)", self.settings.namespace,
                 len(self._reflectors))

    def on_leadership(self, hook: Callable[[bool], None]) -> None:
        self._hooks.append(hook)

    def _leadership(self, leading: bool) -> None:
        self.store.leader = leading
        for hook in list(self._hooks):
            hook(leading)

    async def run_leader_election(self) -> None:
        await self.elector.run(self._leadership)

    async def stop(self) -> None:
        self._stop.set()
        for reflector in self._reflectors:
            reflector.close()
        if self.elector.leading and await asyncio.to_thread(self.elector.release):
            self._leadership(False)
        self.store.close()
        self.api.close()

