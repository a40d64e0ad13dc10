"""NodeProxy: accepts the connections the datapath redirected, asks `resolve` where each one goes,
sends the preamble there, and relays both ways with splice (agent/proxy/splice.py).

The common case costs no task and no wait: the listening socket's reader callback accepts, calls
`resolve` (a plain function; an `async` one is awaited in a task instead), takes a pre-connected
upstream connection from the `UpstreamPool` (when enabled), sends the preamble and whatever the
client already sent in one write, and starts a callback-driven `Relay` whose pipes come from a
`PipePool`. Anything that has to wait (an async resolve, an empty pool, a write that did not fit)
continues in a task named after the client, in a TaskGroup owned by the proxy. `stop()` resets every
connection in flight and returns when every task has ended and every socket and pipe is closed.

A connection that fails is counted (ProxyMetrics), logged at most once per interval per kind, and
reset; it never affects the listener or other connections.
"""

from __future__ import annotations

import asyncio
import errno
import ipaddress
import logging
import socket
from collections.abc import Awaitable, Callable, Coroutine
from dataclasses import dataclass
from typing import Any

from agent.proxy.metrics import ProxyMetrics
from agent.proxy.pipes import DEFAULT_MAX_IDLE, PipePool
from agent.proxy.ratelimit import RateLimitedLog
from agent.proxy.splice import Relay, RelayOutcome, RelayResult, relay, reset
from agent.proxy.upstreams import DEFAULT_MAX_AGE, UpstreamPool

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Upstream:
    """Where a redirected connection goes, and the bytes to send there before the client's."""

    address: tuple[str, int]
    preamble: bytes


ResolveResult = Upstream | None
Resolve = Callable[[tuple[str, int]], ResolveResult | Awaitable[ResolveResult]]

# accept() errors that mean "not now" (resource pressure), not "the listener is broken".
_ACCEPT_PRESSURE = {errno.EMFILE, errno.ENFILE, errno.ENOBUFS, errno.ENOMEM}
_ACCEPT_BACKOFF = 0.1
_ACCEPT_BATCH = 64
# What the client already sent is read (at most this much) and sent with the preamble in one write.
FIRST_READ = 16 << 10


class _Counters:
    """Byte counts that feed the proxy-wide metrics as they move (one per proxy)."""

    __slots__ = ("metrics",)

    def __init__(self, metrics: ProxyMetrics) -> None:
        self.metrics = metrics

    def add_a_to_b(self, n: int) -> None:
        self.metrics.bytes_client_to_upstream += n

    def add_b_to_a(self, n: int) -> None:
        self.metrics.bytes_upstream_to_client += n


def _family(host: str) -> socket.AddressFamily:
    return socket.AF_INET6 if ipaddress.ip_address(host).version == 6 else socket.AF_INET


class _ClientGone(Exception):
    """The client reset its connection before anything was sent upstream."""


def _first_bytes(client: socket.socket) -> bytes:
    """What the client has sent so far (b"" when nothing yet, or at EOF: the relay sees the EOF)."""
    try:
        return client.recv(FIRST_READ)
    except (BlockingIOError, InterruptedError):
        return b""
    except OSError as exc:
        raise _ClientGone(str(exc)) from exc


class NodeProxy:
    """`upstream_pool_size` > 0 keeps that many pre-connected upstream connections per upstream
    address while connections keep coming (see agent/proxy/upstreams.py), each discarded unused
    after `upstream_max_age` seconds (keep it below the gateway's preamble timeout). `pipes_idle`
    pipes are kept for reuse between connections."""

    def __init__(self, listen: tuple[str, int], *, resolve: Resolve, metrics: ProxyMetrics | None = None,
                 idle_timeout: float | None = None, connect_timeout: float = 5.0, backlog: int = 1024,
                 upstream_pool_size: int = 0, upstream_max_age: float = DEFAULT_MAX_AGE,
                 pipes_idle: int = DEFAULT_MAX_IDLE) -> None:
        host, port = listen
        ipaddress.ip_address(host)  # ValueError for a bad listen address
        if not 0 <= port <= 65535:
            raise ValueError(f"listen port {port} is not in 0..65535")
        if idle_timeout is not None and idle_timeout <= 0:
            raise ValueError(f"idle_timeout must be positive, not {idle_timeout}")
        if connect_timeout <= 0:
            raise ValueError(f"connect_timeout must be positive, not {connect_timeout}")
        if upstream_pool_size < 0:
            raise ValueError(f"upstream_pool_size must be 0 (off) or more, not {upstream_pool_size}")
        self._listen = (host, port)
        self._resolve = resolve
        self.metrics = metrics if metrics is not None else ProxyMetrics()
        self._counters = _Counters(self.metrics)
        self._idle_timeout = idle_timeout
        self._connect_timeout = connect_timeout
        self._backlog = backlog
        self.pipes = PipePool(max_idle=pipes_idle)
        self.upstreams = UpstreamPool(size=upstream_pool_size, max_age=upstream_max_age,
                                      connect_timeout=connect_timeout, metrics=self.metrics) \
            if upstream_pool_size else None
        self._sock: socket.socket | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._serve_task: asyncio.Task[None] | None = None
        self._group: asyncio.TaskGroup | None = None
        self._links: set[_Link] = set()
        self._accepting = False
        self._log_accept = RateLimitedLog(log)
        self._log_resolve = RateLimitedLog(log)
        self._log_upstream = RateLimitedLog(log)
        self._log_error = RateLimitedLog(log)

    @property
    def address(self) -> tuple[str, int]:
        """The bound address (the actual port when listening on port 0)."""
        if self._sock is None:
            raise RuntimeError("NodeProxy is not started")
        host, port = self._sock.getsockname()[:2]
        return host, port

    async def start(self) -> None:
        if self._sock is not None:
            raise RuntimeError("NodeProxy.start() called twice")
        sock = socket.socket(_family(self._listen[0]), socket.SOCK_STREAM)
        try:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            # Accepted connections inherit it (Linux copies the listener's TCP options): no
            # setsockopt per connection, and small answers are never held back by Nagle.
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            sock.bind(self._listen)
            sock.listen(self._backlog)
            sock.setblocking(False)
        except BaseException:
            sock.close()
            raise
        self._sock = sock
        self._loop = asyncio.get_running_loop()
        host, port = self.address
        started: asyncio.Future[None] = self._loop.create_future()
        task = self._serve_task = asyncio.create_task(self._serve(started), name=f"node-proxy {host}:{port}")
        await asyncio.wait((started, task), return_when=asyncio.FIRST_COMPLETED)
        if not started.done():  # the task ended before it served: raise what it raised
            self._serve_task = None
            self._sock = None
            sock.close()
            task.result()
            raise RuntimeError("the node proxy's task ended before it started serving")
        log.info("Node proxy listening on %s:%d.", host, port)

    async def stop(self) -> None:
        """Stop accepting, reset the connections in flight, and wait until every task, socket and
        pipe is released. Idempotent."""
        self._pause_accepting()
        links, self._links = self._links, set()
        for link in links:
            link.abort()
            link.relay = None
            self.metrics.connections_active -= 1
        task, self._serve_task = self._serve_task, None
        if task is not None:
            task.cancel()
            try:
                await task
            except asyncio.CancelledError:
                current = asyncio.current_task()
                if current is not None and current.cancelling():
                    raise  # we are being cancelled ourselves
        if self._sock is not None:
            self._sock.close()
            self._sock = None
            self.pipes.close()
            log.info("Node proxy stopped.")

    async def _serve(self, started: asyncio.Future[None]) -> None:
        """Owns the task group of the connections that wait; accepting and the upstream pool run
        while it does."""
        try:
            async with asyncio.TaskGroup() as group:
                self._group = group
                if self.upstreams is not None:
                    self.upstreams.start()
                self._resume_accepting()
                started.set_result(None)
                await asyncio.get_running_loop().create_future()  # until cancelled by stop()
        finally:
            self._group = None
            self._pause_accepting()
            if self.upstreams is not None:
                self.upstreams.close()

    # -- accepting ---------------------------------------------------------------------------------

    def _resume_accepting(self) -> None:
        if not self._accepting and self._sock is not None and self._loop is not None and self._group is not None:
            self._loop.add_reader(self._sock.fileno(), self._accept_ready)
            self._accepting = True

    def _pause_accepting(self) -> None:
        if self._accepting and self._sock is not None and self._loop is not None:
            self._loop.remove_reader(self._sock.fileno())
        self._accepting = False

    def _accept_ready(self) -> None:
        sock = self._sock
        assert sock is not None and self._loop is not None
        for _ in range(_ACCEPT_BATCH):
            try:
                conn, addr = sock.accept()
            except (BlockingIOError, InterruptedError):
                return
            except ConnectionAbortedError:
                continue  # the client gave up while in the backlog
            except OSError as exc:
                if exc.errno in _ACCEPT_PRESSURE:
                    self.metrics.accept_errors += 1
                    self._log_accept.log(logging.ERROR, "Node proxy cannot accept (%s); retrying.", exc)
                    self._pause_accepting()
                    self._loop.call_later(_ACCEPT_BACKOFF, self._resume_accepting)
                    return
                self._pause_accepting()
                log.error("Node proxy listener on %s:%d failed; it no longer accepts connections.",
                          *self._listen, exc_info=exc)
                return
            self._open(conn, addr[:2])

    # -- one connection ----------------------------------------------------------------------------

    def _open(self, client: socket.socket, client_addr: tuple[str, int]) -> None:
        """The synchronous part of a new connection: as far as it goes without waiting."""
        m = self.metrics
        m.connections_accepted += 1
        m.connections_active += 1
        upstream: socket.socket | None = None
        try:
            client.setblocking(False)
            try:
                target = self._resolve(client_addr)
            except Exception:
                self._resolve_failed(client, client_addr)
                return
            if target is not None and not isinstance(target, Upstream):
                self._spawn(client, client_addr, self._slow(client, client_addr, resolving=target))
                return
            if target is None:
                self._rejected(client)
                return
            upstream = self.upstreams.take(target.address) if self.upstreams is not None else None
            if upstream is None:
                self._spawn(client, client_addr, self._slow(client, client_addr, target=target))
                return
            try:
                first = _first_bytes(client)
            except _ClientGone:
                upstream.close()  # never used: the gateway sees a connection that ended without a byte
                upstream = None
                self._client_gone(client)
                return
            payload = target.preamble + first
            try:
                sent = upstream.send(payload)
            except (BlockingIOError, InterruptedError):
                sent = 0
            except OSError:
                # The gateway closed this pooled connection just now; nothing of the client's is lost.
                m.upstream_pool_stale += 1
                upstream.close()
                upstream = None
                self._spawn(client, client_addr, self._slow(client, client_addr, target=target, first=first))
                return
            if sent < len(payload):
                spawned, upstream = upstream, None
                self._spawn(client, client_addr, self._slow(client, client_addr, target=target, upstream=spawned,
                                                            unsent=payload[sent:], first=first))
                return
            m.bytes_client_to_upstream += len(first)
            link = _Link(self, client, upstream)
            link.relay = Relay(client, upstream, self._counters, on_done=link.done, idle_timeout=self._idle_timeout,
                               pipes=self.pipes)
        except Exception:
            self._failed(client, upstream, client_addr)
            return
        self._links.add(link)
        link.relay.start()

    def _link_done(self, link: _Link, result: RelayResult) -> None:
        self._links.discard(link)
        link.relay = None
        self._count_outcome(result)
        link.client.close()
        link.upstream.close()
        self.metrics.connections_active -= 1

    def _count_outcome(self, result: RelayResult) -> None:
        m = self.metrics
        if result.outcome is RelayOutcome.CLOSED:
            m.connections_completed += 1
        elif result.outcome is RelayOutcome.RESET:
            m.connections_reset += 1
        else:
            m.connections_idle_timeout += 1

    def _spawn(self, client: socket.socket, client_addr: tuple[str, int],
               coro: Coroutine[Any, Any, None]) -> None:
        group = self._group
        if group is None:  # stopping: nothing new starts
            coro.close()
            reset(client)
            self.metrics.connections_active -= 1
            return
        group.create_task(coro, name=f"node-proxy conn {client_addr[0]}:{client_addr[1]}")

    def _resolve_failed(self, client: socket.socket, client_addr: tuple[str, int]) -> None:
        """Called from an `except` block: logs the traceback (at most once per interval)."""
        self.metrics.resolve_errors += 1
        self._log_resolve.log(logging.ERROR, "Resolving the redirected connection from %s:%d failed; "
                              "resetting it.", *client_addr, exc_info=True)
        reset(client)
        self.metrics.connections_active -= 1

    def _rejected(self, client: socket.socket) -> None:
        self.metrics.connections_rejected += 1
        reset(client)
        self.metrics.connections_active -= 1

    def _client_gone(self, client: socket.socket) -> None:
        self.metrics.connections_reset += 1
        reset(client)
        self.metrics.connections_active -= 1

    def _failed(self, client: socket.socket, upstream: socket.socket | None, client_addr: tuple[str, int]) -> None:
        """Called from an `except` block: an unexpected error; logs the traceback (rate-limited)."""
        self.metrics.connection_errors += 1
        self._log_error.log(logging.ERROR, "Node proxy connection from %s:%d failed; resetting it.",
                            *client_addr, exc_info=True)
        reset(client)
        if upstream is not None:
            reset(upstream)
        self.metrics.connections_active -= 1

    async def _slow(self, client: socket.socket, client_addr: tuple[str, int], *,
                    resolving: Awaitable[ResolveResult] | None = None, target: Upstream | None = None,
                    upstream: socket.socket | None = None, first: bytes | None = None,
                    unsent: bytes | None = None) -> None:
        """The rest of a connection that has to wait for something: an async resolve, a connect to
        the upstream, a write that did not fit at once. Ends like `_open`: relayed, or reset."""
        m = self.metrics
        loop = asyncio.get_running_loop()
        try:
            if resolving is not None:
                try:
                    target = await resolving
                except Exception:
                    m.resolve_errors += 1
                    self._log_resolve.log(logging.ERROR, "Resolving the redirected connection from %s:%d failed; "
                                          "resetting it.", *client_addr, exc_info=True)
                    reset(client)
                    return
                if target is None:
                    m.connections_rejected += 1
                    reset(client)
                    return
            assert target is not None
            try:
                async with asyncio.timeout(self._connect_timeout):
                    if upstream is None:
                        upstream = socket.socket(_family(target.address[0]), socket.SOCK_STREAM)
                        upstream.setblocking(False)
                        upstream.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
                        await loop.sock_connect(upstream, target.address)
                    if unsent is None:
                        if first is None:
                            try:
                                first = _first_bytes(client)
                            except _ClientGone:
                                m.connections_reset += 1
                                reset(client)
                                return
                        unsent = target.preamble + first
                    await loop.sock_sendall(upstream, unsent)
            except (OSError, TimeoutError) as exc:
                m.upstream_connect_errors += 1
                reason = exc if str(exc) else f"timed out after {self._connect_timeout:g} s"
                self._log_upstream.log(logging.WARNING, "Cannot reach upstream %s:%d for %s:%d (%s); "
                                       "resetting the client.", *target.address, *client_addr, reason)
                reset(client)
                return
            m.bytes_client_to_upstream += len(first or b"")
            result = await relay(client, upstream, self._counters, idle_timeout=self._idle_timeout,
                                 pipes=self.pipes)
            self._count_outcome(result)
        except asyncio.CancelledError:
            reset(client)
            if upstream is not None:
                reset(upstream)
            raise
        except Exception:
            m.connection_errors += 1
            self._log_error.log(logging.ERROR, "Node proxy connection from %s:%d failed; resetting it.",
                                *client_addr, exc_info=True)
            reset(client)
            if upstream is not None:
                reset(upstream)
        finally:
            client.close()
            if upstream is not None:
                upstream.close()
            m.connections_active -= 1


class _Link:
    """A connection relayed by callbacks alone (no task): its sockets and its relay."""

    __slots__ = ("proxy", "client", "upstream", "relay")

    def __init__(self, proxy: NodeProxy, client: socket.socket, upstream: socket.socket) -> None:
        self.proxy = proxy
        self.client = client
        self.upstream = upstream
        self.relay: Relay | None = None

    def done(self, result: RelayResult) -> None:
        self.proxy._link_done(self, result)

    def abort(self) -> None:
        """Reset both sides at once (the proxy is stopping)."""
        if self.relay is not None:
            self.relay.abort()
        reset(self.client)
        reset(self.upstream)
