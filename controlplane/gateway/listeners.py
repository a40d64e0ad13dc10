"""The listening sockets of a worker and the admission of their connections.

Every worker binds every port itself with SO_REUSEPORT, so the kernel spreads new connections
over the workers (and their cores). `Listeners` opens the fixed ports (peer, agent) and keeps one
listener per Import target port in line with the snapshot (`reconcile_imports`; and a UDP socket
per target port of an Import that carries UDP, `reconcile_udp_imports`): new ports are
opened, removed ones closed; connections already accepted are not affected either way. A port
that cannot be bound is reported (log and metric) and retried at the next reconciliation.

`Admission` enforces the connection limit of the worker (what exceeds it is reset at once and
counted) and keeps every admitted stream, so that a drain that times out can reset them.
"""

from __future__ import annotations

import asyncio
import errno
import logging
from collections.abc import Awaitable, Callable
from typing import Protocol

from controlplane.peerwire.stream import Stream

from .logthrottle import LogThrottle
from .metrics import GatewayMetrics
from .udpimports import FlowHandler, UdpImportListener

log = logging.getLogger(__name__)

BACKLOG = 1024


class Admission:
    def __init__(self, max_connections: int, metrics: GatewayMetrics) -> None:
        self._max = max_connections
        self._metrics = metrics
        self.streams: set[Stream] = set()

    def admit(self, listener: str, stream: Stream) -> bool:
        if len(self.streams) >= self._max:
            self._metrics.refused.labels(listener=listener, reason="max-connections").inc()
            stream.abort()
            return False
        self.streams.add(stream)
        return True

    def release(self, stream: Stream) -> None:
        self.streams.discard(stream)

    def abort_all(self) -> int:
        streams = list(self.streams)
        for stream in streams:
            stream.abort()
        return len(streams)


StreamFactory = Callable[[], Stream]


class _Closable(Protocol):
    def close(self) -> None: ...


def bind_hosts(host: str) -> str | list[str]:
    """What a listener binds for `host`: "::" (given as [::]:port) means every IPv4 and IPv6
    address, two sockets (an IPv6 one with IPV6_V6ONLY, as asyncio makes it, and an IPv4 one);
    anything else is that one address."""
    return ["0.0.0.0", "::"] if host == "::" else host


async def open_listener(host: str, port: int, factory: StreamFactory) -> asyncio.Server:
    """A listening server on host:port with SO_REUSEPORT (shared with the other workers)."""
    loop = asyncio.get_running_loop()
    return await loop.create_server(factory, bind_hosts(host), port, reuse_port=True, backlog=BACKLOG)


class Listeners:
    def __init__(self, metrics: GatewayMetrics) -> None:
        self._metrics = metrics
        self._fixed: dict[str, asyncio.Server] = {}
        self._imports: dict[int, asyncio.Server] = {}
        self._udp_imports: dict[int, UdpImportListener] = {}
        self._throttle = LogThrottle(log, interval=60.0)

    async def open_fixed(self, name: str, host: str, port: int, factory: StreamFactory) -> None:
        """Open the `name` listener; an error here is fatal for the worker (it raises OSError)."""
        self._fixed[name] = await open_listener(host, port, factory)
        log.debug("Listening on %s:%d (%s)", host, port, name)

    async def reconcile_imports(self, host: str, ports: set[int], factory: Callable[[int], StreamFactory]) -> None:
        async def open_tcp(port: int) -> asyncio.Server:
            return await open_listener(host, port, factory(port))

        await self._reconcile(self._imports, ports, open_tcp, host=host, listener="import")

    async def reconcile_udp_imports(self, host: str, ports: set[int], on_flow: FlowHandler, *,
                                    idle_timeout: float) -> None:
        """The UDP side of `reconcile_imports`, for the Imports that carry UDP."""
        refused = self._metrics.refused

        async def open_udp(port: int) -> UdpImportListener:
            return UdpImportListener(host, port, on_flow, idle_timeout=idle_timeout,
                                     on_drop=lambda reason: refused.labels(listener="import-udp", reason=reason).inc())

        await self._reconcile(self._udp_imports, ports, open_udp, host=host, listener="import-udp")

    async def _reconcile(self, current: dict[int, _Closable], ports: set[int],
                         open_one: Callable[[int], Awaitable[_Closable]], *, host: str, listener: str) -> None:
        """Close what is no longer wanted, open what is missing; a port that cannot be bound is
        counted (listener_errors{listener}) and logged, and tried again at the next reconciliation."""
        what = "Import target port" + ("/udp" if listener == "import-udp" else "")
        for port in list(current):
            if port not in ports:
                current.pop(port).close()
                log.debug("Stopped serving %s %d", what, port)
        for port in sorted(ports - set(current)):
            try:
                current[port] = await open_one(port)
            except OSError as exc:
                self._metrics.listener_errors.labels(listener=listener).inc()
                why = "it is in use by another program" if exc.errno == errno.EADDRINUSE else exc.strerror
                self._throttle.log(logging.ERROR, f"bind:{listener}:{port}", "Cannot serve %s %s:%d: %s; "
                                   "retrying with the next snapshot", what, host, port, why)
                continue
            log.debug("Serving %s %s:%d", what, host, port)

    @property
    def import_ports(self) -> set[int]:
        return set(self._imports)

    @property
    def udp_import_ports(self) -> set[int]:
        return set(self._udp_imports)

    def close(self) -> None:
        """Stop accepting (established connections are not affected; UDP flows end)."""
        for server in [*self._fixed.values(), *self._imports.values()]:
            server.close()
        for listener in self._udp_imports.values():
            listener.close()
        self._fixed.clear()
        self._imports.clear()
        self._udp_imports.clear()
