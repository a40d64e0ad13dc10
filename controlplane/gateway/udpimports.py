"""UDP on an Import's target port: the way in for clients the agent does not cover (nodes without
it, or kube-proxy forwarding the Import Service's UDP port to the gateway), like the TCP target port.

One socket per port and worker (SO_REUSEPORT: the kernel hashes a client's datagrams to one worker);
one flow per client address. A flow is a `Stream` over a `DatagramChannel` whose datagrams go back
to the client from the listening socket, handed to the egress like an accepted connection (no
preamble: client attributes unknown, as on the TCP target port), so policies, load balancing and
the tunnel are those of any connection. A flow ends after --udp-idle-timeout without a datagram
either way, or when the egress ends it; at most `max_flows` per listener (the datagram of one more
client is dropped and counted).
"""

from __future__ import annotations

import asyncio
import logging
import socket
from collections.abc import Callable

from controlplane.api.datagrams import receive_batch
from controlplane.peerwire.datagrams import DatagramChannel
from controlplane.peerwire.stream import Stream, TcpStream

log = logging.getLogger(__name__)

DEFAULT_MAX_FLOWS = 4096

# (port, the flow's stream) -> start serving it (admission, then the egress)
FlowHandler = Callable[[int, Stream], None]


class UdpImportListener:
    def __init__(self, host: str, port: int, on_flow: FlowHandler, *, idle_timeout: float,
                 max_flows: int = DEFAULT_MAX_FLOWS, on_drop: Callable[[str], None] | None = None) -> None:
        self.port = port
        self._on_flow = on_flow
        self._idle_timeout = idle_timeout
        self._max_flows = max_flows
        self._on_drop = on_drop
        self._flows: dict[tuple[str, int], DatagramChannel] = {}
        self._loop = asyncio.get_running_loop()
        sock = socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET, socket.SOCK_DGRAM)
        try:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
            sock.setblocking(False)
            sock.bind((host, port))
        except OSError:
            sock.close()
            raise
        self._sock = sock
        self._loop.add_reader(sock.fileno(), self._readable)

    def __len__(self) -> int:
        return len(self._flows)

    def close(self) -> None:
        """Stop receiving; the flows end (their egress sees the end of the client's data)."""
        self._loop.remove_reader(self._sock.fileno())
        for channel in list(self._flows.values()):
            channel.end()
        self._sock.close()

    def _drop(self, reason: str) -> None:
        if self._on_drop is not None:
            self._on_drop(reason)

    def _readable(self) -> None:
        receive_batch(self._sock, self._received)  # an ICMP error for an earlier answer: ignored

    def _received(self, data: bytes, client: tuple[str, int]) -> None:
        channel = self._flows.get(client)
        if channel is None:
            if len(self._flows) >= self._max_flows:
                self._drop("max-flows")
                return
            channel = self._start(client)
        if not channel.deliver(data):
            self._drop("backpressure")

    def _start(self, client: tuple[str, int]) -> DatagramChannel:
        sock = self._sock
        flows = self._flows

        def send(payload: bytes) -> None:
            sock.sendto(payload, client)

        def closed() -> None:
            if flows.get(client) is channel:
                del flows[client]

        stream = TcpStream()
        channel = DatagramChannel(stream, send, peername=client, idle_timeout=self._idle_timeout, on_close=closed)
        flows[client] = channel
        self._on_flow(self.port, stream)
        return channel
