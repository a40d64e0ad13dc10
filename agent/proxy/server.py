"""NodeProxy: accepts the connections the datapath redirected, asks `resolve` where each one goes,
connects there, sends the preamble, and relays both ways with splice (agent/proxy/splice.py).

One asyncio loop, one task per connection (named after the client), all inside a TaskGroup owned
by the accept task; `stop()` cancels it and returns when every task has ended and every socket and
pipe is closed. A connection that fails is counted (ProxyMetrics), logged at most once per
interval per kind, and reset; it never affects the listener or other connections.
"""

from __future__ import annotations

import asyncio
import errno
import ipaddress
import logging
import socket
from collections.abc import Awaitable, Callable
from dataclasses import dataclass

from agent.proxy.metrics import ProxyMetrics
from agent.proxy.ratelimit import RateLimitedLog
from agent.proxy.splice import RelayOutcome, relay, reset

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Upstream:
    """Where a redirected connection goes, and the bytes to send there before the client's."""

    address: tuple[str, int]
    preamble: bytes


Resolve = Callable[[tuple[str, int]], Awaitable[Upstream | None]]

# accept() errors that mean "not now" (resource pressure), not "the listener is broken".
_ACCEPT_PRESSURE = {errno.EMFILE, errno.ENFILE, errno.ENOBUFS, errno.ENOMEM}
_ACCEPT_BACKOFF = 0.1


class _Counters:
    """Per-connection byte counts that also feed the proxy-wide metrics as they move."""

    __slots__ = ("metrics",)

    def __init__(self, metrics: ProxyMetrics) -> None:
        self.metrics = metrics

    def add_a_to_b(self, n: int) -> None:
        self.metrics.bytes_client_to_upstream += n

    def add_b_to_a(self, n: int) -> None:
        self.metrics.bytes_upstream_to_client += n


def _family(host: str) -> socket.AddressFamily:
    return socket.AF_INET6 if ipaddress.ip_address(host).version == 6 else socket.AF_INET


class NodeProxy:
    def __init__(self, listen: tuple[str, int], *, resolve: Resolve, metrics: ProxyMetrics | None = None,
                 idle_timeout: float | None = None, connect_timeout: float = 5.0, backlog: int = 1024) -> None:
        host, port = listen
        ipaddress.ip_address(host)  # ValueError for a bad listen address
        if not 0 <= port <= 65535:
            raise ValueError(f"listen port {port} is not in 0..65535")
        if idle_timeout is not None and idle_timeout <= 0:
            raise ValueError(f"idle_timeout must be positive, not {idle_timeout}")
        if connect_timeout <= 0:
            raise ValueError(f"connect_timeout must be positive, not {connect_timeout}")
        self._listen = (host, port)
        self._resolve = resolve
        self.metrics = metrics if metrics is not None else ProxyMetrics()
        self._idle_timeout = idle_timeout
        self._connect_timeout = connect_timeout
        self._backlog = backlog
        self._sock: socket.socket | None = None
        self._serve_task: asyncio.Task[None] | None = None
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
            sock.bind(self._listen)
            sock.listen(self._backlog)
            sock.setblocking(False)
        except BaseException:
            sock.close()
            raise
        self._sock = sock
        host, port = self.address
        self._serve_task = asyncio.create_task(self._serve(sock), name=f"node-proxy accept {host}:{port}")
        log.info("Node proxy listening on %s:%d.", host, port)

    async def stop(self) -> None:
        """Stop accepting, reset the connections in flight, and wait until every task, socket and
        pipe is released. Idempotent."""
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
            log.info("Node proxy stopped.")

    async def _serve(self, sock: socket.socket) -> None:
        try:
            await self._accept_loop(sock)
        except Exception:
            log.exception("Node proxy listener on %s:%d failed; it no longer accepts connections.",
                          *self._listen)
            raise

    async def _accept_loop(self, sock: socket.socket) -> None:
        loop = asyncio.get_running_loop()
        async with asyncio.TaskGroup() as group:
            while True:
                try:
                    conn, addr = await loop.sock_accept(sock)
                except ConnectionAbortedError:
                    continue  # the client gave up while in the backlog
                except OSError as exc:
                    if exc.errno not in _ACCEPT_PRESSURE:
                        raise
                    self.metrics.accept_errors += 1
                    self._log_accept.log(logging.ERROR, "Node proxy cannot accept (%s); retrying.", exc)
                    await asyncio.sleep(_ACCEPT_BACKOFF)
                    continue
                group.create_task(self._handle(conn, addr[:2]), name=f"node-proxy conn {addr[0]}:{addr[1]}")

    async def _handle(self, client: socket.socket, client_addr: tuple[str, int]) -> None:
        m = self.metrics
        m.connections_accepted += 1
        m.connections_active += 1
        upstream: socket.socket | None = None
        try:
            client.setblocking(False)
            client.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            try:
                target = await self._resolve(client_addr)
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
            upstream = socket.socket(_family(target.address[0]), socket.SOCK_STREAM)
            upstream.setblocking(False)
            upstream.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            loop = asyncio.get_running_loop()
            try:
                async with asyncio.timeout(self._connect_timeout):
                    await loop.sock_connect(upstream, target.address)
                    if target.preamble:
                        await loop.sock_sendall(upstream, target.preamble)
            except (OSError, TimeoutError) as exc:
                m.upstream_connect_errors += 1
                reason = exc if str(exc) else f"timed out after {self._connect_timeout:g} s"
                self._log_upstream.log(logging.WARNING, "Cannot reach upstream %s:%d for %s:%d (%s); "
                                       "resetting the client.", *target.address, *client_addr, reason)
                reset(client)
                return
            result = await relay(client, upstream, _Counters(m), idle_timeout=self._idle_timeout)
            if result.outcome is RelayOutcome.CLOSED:
                m.connections_completed += 1
            elif result.outcome is RelayOutcome.RESET:
                m.connections_reset += 1
            else:
                m.connections_idle_timeout += 1
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
