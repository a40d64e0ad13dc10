"""UdpRelays: the agent's side of UDP imports. One relay socket per imported UDP VIP:port, on the
proxy address (the datapath sends that service's datagrams there, and makes the answers appear to
come from the VIP); one flow per client address and relay.

A flow starts with a client's first datagram: `resolve(service, client)` says where it goes (the
gateway's agent port and the preamble, built from the egress record of the client's cgroup); the
flow connects there, sends the preamble and from then on carries the client's datagrams as capsules
(controlplane.peerwire.datagrams) and sends what comes back to the client from the relay socket.
Datagrams that arrive while the flow connects wait (at most `PENDING_MAX` of them; beyond, and
whenever the gateway connection's write buffer is full, they are dropped, as UDP may). A flow ends after `idle_timeout` seconds without a datagram either way,
when the gateway ends it (refused, policy, service gone), or when its relay is removed; nothing a
client sends can end another flow or the relay.
"""

from __future__ import annotations

import asyncio
import logging
import socket
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field

from agent.proxy.ratelimit import RateLimitedLog
from agent.proxy.server import Upstream
from controlplane.api.datagrams import CapsuleDecoder, CapsuleError, encode_datagram, receive_batch

log = logging.getLogger(__name__)

DEFAULT_IDLE_TIMEOUT = 30.0
DEFAULT_MAX_FLOWS = 4096  # per relay; a datagram that would start one more is dropped
CONNECT_TIMEOUT = 5.0
PENDING_MAX = 64  # datagrams a flow keeps while its gateway connection is being opened
WRITE_HIGH_WATER = 256 * 1024  # the gateway connection's write buffer: beyond, datagrams are dropped


@dataclass
class UdpMetrics:
    """Plain counters, read at scrape time (agent.metrics)."""

    flows_started: int = 0
    flows_failed: int = 0  # no route, or the gateway connection failed
    datagrams_to_service: int = 0
    datagrams_to_client: int = 0
    datagrams_dropped: int = 0  # no flow could take them (limits, backpressure, a flow that failed)
    active_flows: int = 0

    def snapshot(self) -> dict[str, int]:
        return dict(self.__dict__)


# (service VIP:port, client address) -> where the flow goes and its preamble; None: drop it
Resolve = Callable[[tuple[str, int], tuple[str, int]], "Upstream | None"]


class _Flow(asyncio.Protocol):
    """One client's flow to one service: the protocol of its connection to the gateway."""

    def __init__(self, owner: UdpRelays, relay: _Relay, client: tuple[str, int], preamble: bytes) -> None:
        self.owner = owner
        self.relay = relay
        self.client = client
        self.preamble = preamble
        self.transport: asyncio.Transport | None = None
        self.pending: list[bytes] = []
        self.decoder = CapsuleDecoder()
        self.paused = False
        self.closed = False
        self.last_activity = time.monotonic()
        self.task: asyncio.Task[None] | None = None
        self.timer: asyncio.TimerHandle | None = None

    # client -> gateway
    def from_client(self, payload: bytes) -> bool:
        if self.closed:
            return False
        self.last_activity = time.monotonic()
        if self.transport is None:
            if len(self.pending) >= PENDING_MAX:
                return False
            self.pending.append(payload)
            return True
        if self.paused:
            return False
        self.transport.write(encode_datagram(payload))
        return True

    # the connection to the gateway
    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]
        self.transport.set_write_buffer_limits(high=WRITE_HIGH_WATER)
        self.transport.write(self.preamble + b"".join(encode_datagram(p) for p in self.pending))
        self.pending = []

    def data_received(self, data: bytes) -> None:
        try:
            payloads = self.decoder.feed(data)
        except CapsuleError as exc:
            self.owner.warning("capsule", "UDP flow from %s:%d: the gateway sent garbage (%s); flow reset",
                                     *self.client, exc)
            self.close(abort=True)
            return
        if payloads:
            self.last_activity = time.monotonic()
        metrics = self.owner.metrics
        for payload in payloads:
            try:
                self.relay.sock.sendto(payload, self.client)
                metrics.datagrams_to_client += 1
            except OSError:
                metrics.datagrams_dropped += 1

    def eof_received(self) -> bool:
        return False  # the gateway ended the flow (refused, policy, idle on its side): close

    def connection_lost(self, exc: BaseException | None) -> None:
        self.transport = None
        self.close()

    def pause_writing(self) -> None:
        self.paused = True

    def resume_writing(self) -> None:
        self.paused = False

    # lifecycle
    def check_idle(self) -> None:
        self.timer = None
        if self.closed:
            return
        left = self.owner.idle_timeout - (time.monotonic() - self.last_activity)
        if left <= 0:
            self.close()
        else:
            self.timer = asyncio.get_running_loop().call_later(left, self.check_idle)

    def close(self, *, abort: bool = False) -> None:
        if self.closed:
            return
        self.closed = True
        if self.timer is not None:
            self.timer.cancel()
        if self.task is not None and not self.task.done():
            self.task.cancel()
        if self.transport is not None:
            self.transport.abort() if abort else self.transport.close()
        self.owner._flow_closed(self)


@dataclass(eq=False)
class _Relay:
    service: tuple[str, int]
    sock: socket.socket
    flows: dict[tuple[str, int], _Flow] = field(default_factory=dict)

    @property
    def address(self) -> tuple[str, int]:
        return self.sock.getsockname()[:2]


class UdpRelays:
    def __init__(self, host: str, resolve: Resolve, *, idle_timeout: float = DEFAULT_IDLE_TIMEOUT,
                 max_flows: int = DEFAULT_MAX_FLOWS, metrics: UdpMetrics | None = None,
                 on_flow_end: Callable[[tuple[str, int]], None] | None = None, host6: str = "") -> None:
        """`host`: where relays are bound (an IPv4 address); `host6`: where the relays of IPv6 VIPs
        are bound ("": on `host` too, reached v4-mapped, which only connected client sockets can)."""
        if not idle_timeout > 0:
            raise ValueError(f"idle_timeout must be a positive number of seconds, not {idle_timeout!r}")
        self.host = host
        self.host6 = host6
        self._resolve = resolve
        self.idle_timeout = idle_timeout
        self.max_flows = max_flows
        self.metrics = metrics or UdpMetrics()
        self._on_flow_end = on_flow_end
        self._relays: dict[tuple[str, int], _Relay] = {}
        self._loop: asyncio.AbstractEventLoop | None = None
        self._logs: dict[str, RateLimitedLog] = {}

    def warning(self, kind: str, msg: str, *args: object) -> None:
        """Log at most once per 10 s per kind (one misbehaving client can trigger these at line rate)."""
        self._logs.setdefault(kind, RateLimitedLog(log)).log(logging.WARNING, msg, *args)

    # --- the set of relays -------------------------------------------------------------------

    def sync(self, services: Iterable[tuple[str, int]]) -> dict[tuple[str, int], tuple[str, int]]:
        """Have a relay for exactly these UDP VIP:ports (new ones bound to a free port of `host`,
        removed ones closed with their flows); returns VIP:port -> relay address, for the datapath.
        OSError when a socket cannot be bound (nothing is changed then)."""
        self._loop = asyncio.get_running_loop()
        wanted = set(services)
        new: dict[tuple[str, int], _Relay] = {}
        try:
            for service in wanted - self._relays.keys():
                host = self.host6 if self.host6 and ":" in service[0] else self.host
                sock = socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET, socket.SOCK_DGRAM)
                try:
                    sock.setblocking(False)
                    sock.bind((host, 0))
                except OSError:
                    sock.close()
                    raise
                new[service] = _Relay(service, sock)
        except OSError:
            for relay in new.values():
                relay.sock.close()
            raise
        for service in list(self._relays.keys() - wanted):
            self._close_relay(self._relays.pop(service))
        for service, relay in new.items():
            self._relays[service] = relay
            self._loop.add_reader(relay.sock.fileno(), self._readable, relay)
        return self.addresses()

    def addresses(self) -> dict[tuple[str, int], tuple[str, int]]:
        return {service: relay.address for service, relay in self._relays.items()}

    def flows(self) -> int:
        return sum(len(r.flows) for r in self._relays.values())

    async def close(self) -> None:
        """Close every relay and flow."""
        for relay in list(self._relays.values()):
            self._close_relay(relay)
        self._relays.clear()
        await asyncio.sleep(0)  # let the cancelled connects finish

    def _close_relay(self, relay: _Relay) -> None:
        if self._loop is not None:
            self._loop.remove_reader(relay.sock.fileno())
        for flow in list(relay.flows.values()):
            flow.close(abort=True)
        relay.sock.close()

    # --- datagrams from clients --------------------------------------------------------------

    def _readable(self, relay: _Relay) -> None:
        receive_batch(relay.sock, lambda data, client: self._received(relay, data, client),
                      on_error=lambda exc: self.warning("recv", "UDP relay for %s:%d: receive error: %s",
                                                        *relay.service, exc))

    def _received(self, relay: _Relay, data: bytes, client: tuple[str, int]) -> None:
        flow = relay.flows.get(client)
        if flow is None:
            flow = self._start_flow(relay, client)
        if flow is not None and flow.from_client(data):
            self.metrics.datagrams_to_service += 1
        else:
            self.metrics.datagrams_dropped += 1

    def _start_flow(self, relay: _Relay, client: tuple[str, int]) -> _Flow | None:
        if len(relay.flows) >= self.max_flows:
            self.warning("max-flows", "UDP relay for %s:%d: %d flows already; dropping a datagram from a new "
                               "client", *relay.service, self.max_flows)
            return None
        upstream = self._resolve(relay.service, client)
        if upstream is None:
            self.metrics.flows_failed += 1
            return None
        flow = _Flow(self, relay, client, upstream.preamble)
        relay.flows[client] = flow
        self.metrics.flows_started += 1
        self.metrics.active_flows += 1
        loop = asyncio.get_running_loop()
        flow.task = loop.create_task(self._connect(flow, upstream.address), name=f"udp-flow {client[0]}:{client[1]}")
        flow.timer = loop.call_later(self.idle_timeout, flow.check_idle)
        return flow

    async def _connect(self, flow: _Flow, address: tuple[str, int]) -> None:
        loop = asyncio.get_running_loop()
        try:
            async with asyncio.timeout(CONNECT_TIMEOUT):
                await loop.create_connection(lambda: flow, *address)
        except (OSError, TimeoutError) as exc:
            self.metrics.flows_failed += 1
            self.warning("gateway", "UDP flow from %s:%d to %s:%d: no connection to the gateway %s:%d: %s",
                               *flow.client, *flow.relay.service, *address, exc or "timeout")
            flow.task = None
            flow.close()

    def _flow_closed(self, flow: _Flow) -> None:
        if flow.relay.flows.get(flow.client) is flow:
            del flow.relay.flows[flow.client]
            self.metrics.active_flows -= 1
            if self._on_flow_end is not None:
                self._on_flow_end(flow.client)
