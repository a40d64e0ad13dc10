"""Remote authorization for egress: an access token for (peer, export, source attributes), from
the token cache while it is valid, else from `POST /authz` to the peer over a pooled tunnel.

A cached token past half its life is refreshed in the background (the connection at hand still
uses it), so that a steady flow of connections never waits for an authorization round trip.
Concurrent misses for the same key share one request. The peer still evaluates its own policy on
every CONNECT; a token it refuses is dropped from the cache by the caller (`invalidate`).

Errors: `AuthzRefused` (the peer answered, not 200: 403 denied, 404 no such export, ...) and
`peerwire.client.PeerError` (the peer could not be reached or broke the exchange).
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass

from controlplane.peerwire.client import ExchangeFailed, PeerError
from controlplane.peerwire.codec import AuthzRequest
from controlplane.tokens import decode_unverified_expiry

from .config import Limits
from .metrics import GatewayMetrics
from .pool import TunnelPools
from .state import PeerView, SourceView
from .tasks import TaskSet
from .tokencache import TokenCache, TokenKey, token_key

log = logging.getLogger(__name__)


class AuthzRefused(Exception):
    """The remote peer answered the authorization request with `status` (not 200)."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status


@dataclass(frozen=True)
class Grant:
    token: str
    cached: bool
    key: TokenKey


_RESULTS = {403: "denied", 404: "not-found"}


class RemoteAuthorizer:
    def __init__(self, pools: TunnelPools, *, cache: TokenCache, tasks: TaskSet, metrics: GatewayMetrics,
                 limits: Limits, clock: Callable[[], float] = time.time) -> None:
        self._pools = pools
        self._cache = cache
        self._tasks = tasks
        self._metrics = metrics
        self._limits = limits
        self._clock = clock
        self._inflight: dict[TokenKey, asyncio.Future[str]] = {}
        self._refreshing: set[TokenKey] = set()

    async def grant(self, peer: PeerView, source: SourceView, src: Mapping[str, str]) -> Grant:
        """A token for a connection to `source` on `peer` with source attributes `src`."""
        key = token_key(peer.name, source.export_namespace, source.export_name, src)
        now = self._clock()
        entry = self._cache.get(key, now)
        if entry is not None:
            self._metrics.child(self._metrics.token_cache, "hit").inc()
            if entry.stale(now) and key not in self._refreshing and key not in self._inflight:
                self._refreshing.add(key)
                self._tasks.spawn(self._refresh(key, peer, source, dict(src)),
                                  name=f"token-refresh-{peer.name}-{source.export_namespace}/{source.export_name}",
                                  kind="token-refresh")
            return Grant(entry.token, True, key)
        self._metrics.child(self._metrics.token_cache, "miss").inc()
        token = await self._shared_fetch(key, peer, source, src)
        return Grant(token, False, key)

    def prefetch(self, peer: PeerView, source: SourceView, src: Mapping[str, str]) -> None:
        """Make sure a token for this key is cached or on its way (background; failures are only
        logged at debug level: the next connection asks again)."""
        key = token_key(peer.name, source.export_namespace, source.export_name, src)
        now = self._clock()
        entry = self._cache.get(key, now)
        if (entry is not None and not entry.stale(now)) or key in self._inflight or key in self._refreshing:
            return
        self._refreshing.add(key)
        self._tasks.spawn(self._refresh(key, peer, source, dict(src), counted=False),
                          name=f"token-prefetch-{peer.name}-{source.export_namespace}/{source.export_name}",
                          kind="token-refresh")

    def invalidate(self, grant: Grant) -> None:
        """The peer refused this token: do not use it again."""
        self._cache.invalidate(grant.key, grant.token)

    async def _refresh(self, key: TokenKey, peer: PeerView, source: SourceView, src: Mapping[str, str], *,
                       counted: bool = True) -> None:
        self._metrics.child(self._metrics.token_cache, "refresh" if counted else "prefetch").inc()
        try:
            await self._shared_fetch(key, peer, source, src)
        except (AuthzRefused, PeerError) as exc:
            self._cache.invalidate(key)
            log.debug("Refreshing the access token for %s/%s on peer %s failed: %s", source.export_namespace,
                      source.export_name, peer.name, exc)
        finally:
            self._refreshing.discard(key)

    async def _shared_fetch(self, key: TokenKey, peer: PeerView, source: SourceView, src: Mapping[str, str]) -> str:
        pending = self._inflight.get(key)
        if pending is not None:
            return await asyncio.shield(pending)
        future: asyncio.Future[str] = asyncio.get_running_loop().create_future()
        future.add_done_callback(_consume_exception)
        self._inflight[key] = future
        try:
            token = await self._fetch(key, peer, source, src)
        except (AuthzRefused, PeerError) as exc:
            future.set_exception(exc)
            raise
        except BaseException:
            future.cancel()
            raise
        finally:
            del self._inflight[key]
        future.set_result(token)
        return token

    async def _fetch(self, key: TokenKey, peer: PeerView, source: SourceView, src: Mapping[str, str]) -> str:
        pool = self._pools.get(peer)
        request = AuthzRequest(service_name=source.export_name, service_namespace=source.export_namespace,
                               src_attributes=dict(src))
        for first_try in (True, False):
            try:
                conn, pooled = await pool.acquire()
            except PeerError:
                self._metrics.child(self._metrics.authz_requests, peer.name, "unreachable").inc()
                raise
            try:
                response = await conn.authz(request, timeout=self._limits.response_timeout)
            except ExchangeFailed:
                if pooled and first_try:
                    pool.report_stale()
                    continue
                self._metrics.child(self._metrics.authz_requests, peer.name, "error").inc()
                raise
            pool.release(conn)
            break
        if response.status == 200:
            token = response.access_token
            if not token:
                self._metrics.child(self._metrics.authz_requests, peer.name, "error").inc()
                raise AuthzRefused(502, f"peer {peer.name!r} allowed without an access token")
            self._metrics.child(self._metrics.authz_requests, peer.name, "allowed").inc()
            self._cache.put(key, token, self._clock(), decode_unverified_expiry(token))
            return token
        self._metrics.child(self._metrics.authz_requests, peer.name, _RESULTS.get(response.status, "error")).inc()
        raise AuthzRefused(response.status, f"peer {peer.name!r} refused access to {source.export_namespace}/"
                                            f"{source.export_name}: {response.summary()}")


def _consume_exception(future: asyncio.Future[str]) -> None:
    # The failure is raised to every waiter; this only stops asyncio from reporting it as lost
    # when nobody else was waiting.
    if not future.cancelled():
        future.exception()
