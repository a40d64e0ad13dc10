"""UDP over a peer tunnel: a transport that lets a `Stream` (and so the relay, pools and framing of
TCP connections) carry one UDP flow as datagram capsules (`controlplane.api.datagrams`, the
framing the agents use too).

One flow is one stream: the agent opens a connection to its gateway per (client address, service)
and the gateways tunnel it like any connection, policy, tokens and load balancing included; the
service's gateway turns it back into datagrams from one connected UDP socket. The end of a flow (an
idle timeout on either end) is the end of its stream.

`DatagramChannel` is the transport side of that: a `Stream` protocol is attached to it as to a TCP
transport. What the stream writes is decoded and each payload handed to `send` (a `sendto` on the
caller's UDP socket); `deliver(payload)` hands a received datagram to the stream as one capsule.
Buffering is bounded by dropping, as UDP does: a datagram arriving while the stream is paused (the
far side is not keeping up) is dropped and counted, never queued.
"""

from __future__ import annotations

import asyncio
import socket
import time
from collections.abc import Callable
from typing import Any

from controlplane.api.datagrams import (  # noqa: F401 - the codec, re-exported for peerwire's users
    DATAGRAM_CAPSULE, MAX_CAPSULE, MAX_DATAGRAM, CapsuleDecoder, CapsuleError, decode_varint, encode_datagram,
    encode_varint, receive_batch)

# The CONNECT request header that asks for a UDP flow (the original protocol has only TCP, so a
# tunnel without it is TCP; a gateway that does not know it connects TCP, which the far end of a
# UDP-only export refuses).
PROTOCOL_HEADER = "x-clusterlink-protocol"
UDP = "udp"

class DatagramChannel:
    """A stream transport for one UDP flow (see the module docstring). `send(payload)` sends one
    datagram (its OSError is counted as a drop, never raised: UDP is lossy); `on_close()` runs once
    when the channel closes, whoever closes it. `peername` is what `get_extra_info("peername")`
    answers (the client, or the service)."""

    def __init__(self, protocol: asyncio.BufferedProtocol, send: Callable[[bytes], None], *,
                 peername: tuple[str, int] | None = None, on_close: Callable[[], None] | None = None,
                 idle_timeout: float | None = None) -> None:
        self._protocol: asyncio.BufferedProtocol | None = protocol
        self._send = send
        self._peername = peername
        self._on_close = on_close
        self._decoder = CapsuleDecoder()
        self._loop = asyncio.get_running_loop()
        self._paused = False
        self._closing = False
        self._eof_received = False  # the stream will send no more (write_eof)
        self._ended = False  # we told the stream: no more datagrams (end)
        self.sent = 0  # datagrams sent / delivered / dropped, for the owner's metrics
        self.delivered = 0
        self.dropped = 0
        self.last_activity = time.monotonic()
        self._idle_timeout = idle_timeout
        self._idle_timer: asyncio.TimerHandle | None = None
        protocol.connection_made(self)  # type: ignore[arg-type]
        if idle_timeout is not None:
            self._idle_timer = self._loop.call_later(idle_timeout, self._check_idle)

    def _check_idle(self) -> None:
        self._idle_timer = None
        if self._closing or self._idle_timeout is None:
            return
        left = self._idle_timeout - self.idle_for()
        if left <= 0:
            self.end()
            if not self._closing:  # the stream still sends (half-closed): look again later
                self._idle_timer = self._loop.call_later(self._idle_timeout, self._check_idle)
        else:
            self._idle_timer = self._loop.call_later(left, self._check_idle)

    # --- what the owner calls ---------------------------------------------------------------

    def deliver(self, payload: bytes) -> bool:
        """A datagram for the stream (the far side); False when it was dropped (paused, closed, or
        after `end()`)."""
        protocol = self._protocol
        if protocol is None or self._closing or self._ended:
            return False
        if self._paused:
            self.dropped += 1
            return False
        self.last_activity = time.monotonic()
        data = encode_datagram(payload)
        view = memoryview(data)
        while view:
            buf = protocol.get_buffer(len(view))
            n = min(len(buf), len(view))
            buf[:n] = view[:n]
            protocol.buffer_updated(n)
            view = view[n:]
            if self._protocol is None:
                return False  # the stream failed and closed us while taking it
        self.delivered += 1
        return True

    def end(self) -> None:
        """The flow is over on our side (idle): the stream gets an EOF, as from a TCP peer's FIN,
        and the channel closes once the stream has finished too (or at once when it had)."""
        protocol = self._protocol
        if protocol is None or self._closing or self._ended:
            return
        self._ended = True
        keep_open = protocol.eof_received()
        if not keep_open or self._eof_received:
            self.close()

    def idle_for(self, now: float | None = None) -> float:
        return (time.monotonic() if now is None else now) - self.last_activity

    # --- the transport interface a Stream uses ------------------------------------------------

    def write(self, data: bytes | bytearray | memoryview) -> None:
        if self._closing:
            return
        try:
            payloads = self._decoder.feed(data)
        except CapsuleError as exc:
            self._lose(exc)
            return
        if payloads:
            self.last_activity = time.monotonic()
        for payload in payloads:
            try:
                self._send(payload)
                self.sent += 1
            except OSError:
                self.dropped += 1

    def writelines(self, chunks: Any) -> None:
        for chunk in chunks:
            self.write(chunk)

    def write_eof(self) -> None:
        self._eof_received = True
        if self._decoder.pending:
            self._lose(CapsuleError("the stream ended inside a capsule"))
            return
        self.close()

    def can_write_eof(self) -> bool:
        return True

    def get_write_buffer_size(self) -> int:
        return 0  # datagrams leave at once or are dropped

    def set_write_buffer_limits(self, high: int | None = None, low: int | None = None) -> None:
        pass

    def get_write_buffer_limits(self) -> tuple[int, int]:
        return (0, 0)

    def pause_reading(self) -> None:
        self._paused = True

    def resume_reading(self) -> None:
        self._paused = False

    def is_reading(self) -> bool:
        return not self._paused and not self._closing

    def is_closing(self) -> bool:
        return self._closing

    def get_extra_info(self, name: str, default: Any = None) -> Any:
        if name == "peername":
            return self._peername
        return default

    def close(self) -> None:
        self._lose(None)

    def abort(self) -> None:
        self._lose(None)

    def _lose(self, exc: BaseException | None) -> None:
        if self._closing:
            return
        self._closing = True
        if self._idle_timer is not None:
            self._idle_timer.cancel()
            self._idle_timer = None
        protocol, self._protocol = self._protocol, None
        if protocol is not None:
            self._loop.call_soon(protocol.connection_lost, exc)
        on_close, self._on_close = self._on_close, None
        if on_close is not None:
            on_close()


class _ServiceSocket:
    """The connected UDP socket of one flow to a service, read by the event loop: what arrives goes
    to the channel. (Not an asyncio datagram transport: before Python 3.12 it silently drops
    zero-length datagrams, which are valid UDP.)"""

    def __init__(self, sock: socket.socket, loop: asyncio.AbstractEventLoop) -> None:
        self.sock = sock
        self.loop = loop
        self.channel: DatagramChannel | None = None
        self.errors = 0
        loop.add_reader(sock.fileno(), self._readable)

    def _readable(self) -> None:
        receive_batch(self.sock, self._received, on_error=self._error)

    def _received(self, data: bytes, source: Any) -> None:
        if self.channel is not None:
            self.channel.deliver(data)

    def _error(self, exc: OSError) -> None:
        self.errors += 1  # ICMP port/host unreachable for an earlier datagram: the flow goes on

    def send(self, payload: bytes) -> None:
        self.sock.send(payload)  # OSError (EAGAIN: the socket buffer is full, ECONNREFUSED): a drop

    def close(self) -> None:
        self.loop.remove_reader(self.sock.fileno())
        self.sock.close()


async def connect_udp(host: str, port: int, *, idle_timeout: float | None = None) -> tuple[Any, DatagramChannel]:
    """A `TcpStream` carrying one UDP flow to host:port from a new connected UDP socket (its
    OSError, e.g. a name that does not resolve, propagates), and its channel."""
    from .stream import TcpStream  # stream.py does not import this module; keep it that way

    loop = asyncio.get_running_loop()
    infos = await loop.getaddrinfo(host, port, type=socket.SOCK_DGRAM)
    if not infos:
        raise OSError(f"{host}:{port} does not resolve")
    family, kind, proto, _, address = infos[0]
    sock = socket.socket(family, kind, proto)
    try:
        sock.setblocking(False)
        sock.connect(address)  # UDP: no packet is sent, the kernel only fixes the peer
    except OSError:
        sock.close()
        raise
    service = _ServiceSocket(sock, loop)
    stream = TcpStream()
    channel = DatagramChannel(stream, service.send, peername=(host, port), on_close=service.close,
                              idle_timeout=idle_timeout)
    service.channel = channel
    return stream, channel
