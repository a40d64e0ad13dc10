"""The relay: application bytes both ways between a client-side and a service-side stream.

Each direction is a consumer attached to its source stream (`peerwire.stream`): every chunk read
is written to the other stream from the read callback itself, with no task, queue or copy in
between. Flow control: when the destination's write buffer goes over its high-water mark, the
source stops reading until it drains below the low-water mark.

End of data is carried per direction (half-close): EOF from one side becomes `write_eof()` on the
other (a TCP FIN, or a TLS close_notify; see `peerwire.stream`), and the other direction keeps
flowing. When both directions ended, both connections are closed. A failure on either side (a
reset, a TLS error, a TLS connection cut without close_notify) resets both at once, so that a peer
vanishing mid-transfer resets the client promptly instead of leaving it hanging. While a relay
runs, its plain connections are armed to reset should this process die (`Stream.reset_on_exit`):
a crashed gateway must not end a transfer with a FIN that the far end takes for a normal end.

Framed tunnels (`peerwire.framing`, negotiated between our gateways): the tunnel side carries
frames, so end of data is an EOF frame instead of close_notify and a reset is a RESET frame. When
both directions ended, the tunnel is left open, in control mode, with whatever followed the
last frame back in its buffer: `RelayResult.reusable` says it can carry the next connection.

When a relay finishes it detaches itself from both streams (consumers, flow-control hooks, its
directions' reference back to it): a finished connection's objects are then freed at once by
reference counting, with their buffers, instead of waiting as a reference cycle for the garbage
collector.

Egress needs a direction to start before the remote gateway accepted the CONNECT (the client's
first bytes follow the request at once): `start_upstream(tap_limit=...)` keeps a copy of what it
forwards (up to the limit) and holds back the client's EOF; `commit()` releases both when the
remote said 200, `detach_upstream()` stops forwarding and returns the copy for the next source
(None when more than the limit was sent: it cannot be replayed).
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from dataclasses import dataclass

from controlplane.peerwire import framing
from controlplane.peerwire.stream import Stream, StreamError
from controlplane.peerwire.tlsstream import TlsStream

UPSTREAM = "client_to_service"
DOWNSTREAM = "service_to_client"


@dataclass(frozen=True)
class RelayResult:
    client_to_service: int
    service_to_client: int
    outcome: str  # "closed" (both directions ended) or "reset"
    error: StreamError | None = None
    reusable: bool = False  # a framed tunnel that ended cleanly: it can carry another connection


class _Direction:
    """Forwards one stream's bytes to another (a `peerwire.stream.Consumer`)."""

    __slots__ = ("relay", "src", "dst", "bytes", "reported", "tap", "tap_limit", "overflowed", "hold_eof",
                 "eof_pending", "done", "active")

    def __init__(self, relay: Relay, src: Stream, dst: Stream, *, tap: bytearray | None = None,
                 tap_limit: int = 0, hold_eof: bool = False) -> None:
        self.relay: Relay | None = relay  # None once the relay finished (see `Relay._release`)
        self.src = src
        self.dst = dst
        self.bytes = 0
        self.reported = 0
        self.tap = tap
        self.tap_limit = tap_limit
        self.overflowed = False
        self.hold_eof = hold_eof
        self.eof_pending = False
        self.done = False
        self.active = True

    def data(self, view: memoryview) -> None:
        if not self.active:
            return
        self.dst.write(view)
        self.bytes += len(view)
        if self.tap is not None:
            if len(self.tap) + len(view) > self.tap_limit:
                self.tap = None
                self.overflowed = True
            else:
                self.tap += view
        if self.dst.keeps_write_buffers and self.dst.write_buffer_size:
            self.src.renew_read_buffer()

    def eof(self) -> None:
        if not self.active or self.done:
            return
        if self.hold_eof:
            self.eof_pending = True
            return
        self.dst.write_eof()
        self.done = True
        self._relay()._direction_done()

    def failed(self, error: StreamError) -> None:
        if self.active:
            relay = self._relay()
            relay._fail(error, from_tunnel=self.src is relay.tunnel)

    def _relay(self) -> Relay:
        relay = self.relay
        if relay is None:  # `active` is False once the relay let go: a caller did not check it
            raise RuntimeError("relay direction used after the relay finished")
        return relay

    def pause_source(self) -> None:
        self.src.pause_reading("backpressure")

    def resume_source(self) -> None:
        self.src.resume_reading("backpressure")


class _Encoder(_Direction):
    """Plain bytes in, frames out to a framed tunnel."""

    __slots__ = ()

    def data(self, view: memoryview) -> None:
        if not self.active:
            return
        dst = self.dst
        assert isinstance(dst, TlsStream)
        dst.write_frame(framing.data_header(len(view)), view)
        self.bytes += len(view)
        if self.tap is not None:
            if len(self.tap) + len(view) > self.tap_limit:
                self.tap = None
                self.overflowed = True
            else:
                self.tap += view

    def eof(self) -> None:
        if not self.active or self.done:
            return
        if self.hold_eof:
            self.eof_pending = True
            return
        self.dst.write(framing.EOF_FRAME)
        self.done = True
        self._relay()._direction_done()


class _Decoder(_Direction):
    """Frames in from a framed tunnel, plain bytes out."""

    __slots__ = ("deframer",)

    def __init__(self, relay: Relay, src: Stream, dst: Stream) -> None:
        super().__init__(relay, src, dst)
        self.deframer = framing.Deframer()

    def data(self, view: memoryview) -> None:
        if not self.active or self.done:
            return
        try:
            events = self.deframer.feed(view)
        except framing.FramingError as exc:
            self._relay()._fail(StreamError("framing", f"framed tunnel: {exc}"), from_tunnel=True)
            return
        dst = self.dst
        for kind, payload in events:
            if kind is framing.DATA:
                assert payload is not None
                dst.write(payload)
                self.bytes += len(payload)
            elif kind is framing.EOF:
                self.done = True
                self.src.set_consumer(None)  # what follows is the connection's next HTTP exchange
                self.src.unread(self.deframer.rest)
                dst.write_eof()
                self._relay()._direction_done()
            else:
                self._relay()._fail(StreamError("reset", "the other gateway reset the connection"),
                                    from_tunnel=True)
                return
        if dst.keeps_write_buffers and dst.write_buffer_size:
            self.src.renew_read_buffer()

    def eof(self) -> None:
        if self.active and not self.done:  # close_notify where an EOF frame was due
            self._relay()._fail(StreamError("truncated", "framed tunnel closed without an EOF frame"),
                                from_tunnel=True)


class Relay:
    """Bytes between `client` (the side that opened the connection) and `service`.

    `framed`: which side is a framed tunnel ("client" on ingress, "service" on egress), if any.
    """

    def __init__(self, client: Stream, service: Stream, *, framed: str | None = None) -> None:
        if framed not in (None, "client", "service"):
            raise ValueError(f"framed must be None, 'client' or 'service', not {framed!r}")
        self.client = client
        self.service = service
        self.framed = framed
        self.tunnel: Stream | None = client if framed == "client" else service if framed == "service" else None
        self._up: _Direction | None = None
        self._down: _Direction | None = None
        self._result: asyncio.Future[RelayResult] = asyncio.get_running_loop().create_future()
        self._error: StreamError | None = None
        # Liveness of a framed tunnel (`check_liveness`): what the tunnel had sent and received at
        # the previous check, and when it last showed life.
        self._sent_mark = -1
        self._received_mark = -1
        self._alive_at = 0.0

    # --- wiring ------------------------------------------------------------------------------

    def _attach(self, direction: _Direction) -> None:
        direction.dst.set_write_pause_hooks(direction.pause_source, direction.resume_source)
        direction.src.set_consumer(direction)
        # A crash of this process while bytes flow must reach the other ends as resets. A framed
        # tunnel needs nothing: an end without an EOF frame is a reset for the other gateway.
        for stream in (direction.src, direction.dst):
            if stream is not self.tunnel:
                stream.reset_on_exit()

    def start_upstream(self, *, tap: bytearray | None = None, tap_limit: int = 0) -> None:
        """Forward client → service. With `tap`, keep a copy (up to `tap_limit` bytes in all, what
        `tap` already holds included) and hold the client's EOF until `commit()`."""
        if self._up is not None:
            raise RuntimeError("upstream already started")
        if self.framed == "client":
            if tap is not None:
                raise ValueError("the replay copy is kept on the egress side only")
            self._up = _Decoder(self, self.client, self.service)
        else:
            cls = _Encoder if self.framed == "service" else _Direction
            self._up = cls(self, self.client, self.service, tap=tap, tap_limit=tap_limit, hold_eof=tap is not None)
        if tap is not None and len(tap) > tap_limit:
            self._up.tap = None
            self._up.overflowed = True
        self._attach(self._up)

    def start_downstream(self) -> None:
        """Forward service → client."""
        if self._down is not None:
            raise RuntimeError("downstream already started")
        if self.framed == "service":
            self._down = _Decoder(self, self.service, self.client)
        elif self.framed == "client":
            self._down = _Encoder(self, self.service, self.client)
        else:
            self._down = _Direction(self, self.service, self.client)
        self._attach(self._down)

    @property
    def upstream_started(self) -> bool:
        return self._up is not None

    def commit(self) -> None:
        """The service side accepted: stop keeping a copy, let a held EOF through."""
        up = self._up
        if up is None:
            return
        up.tap = None
        up.hold_eof = False
        if up.eof_pending and not up.done:
            up.eof_pending = False
            up.eof()

    def detach_upstream(self) -> bytearray | None:
        """Stop forwarding client → service; the copy of what was sent, or None if it overflowed.

        The client stream goes back to control mode (what it receives now is buffered in it).
        """
        up = self._up
        if up is None:
            return bytearray()
        up.active = False
        self._up = None
        self.client.set_consumer(None)
        self.service.clear_write_pause_hooks()
        self.client.resume_reading("backpressure")
        return None if up.overflowed else (up.tap if up.tap is not None else bytearray())

    # --- completion --------------------------------------------------------------------------

    def _direction_done(self) -> None:
        up, down = self._up, self._down
        if up is None or down is None or not (up.done and down.done):
            return
        tunnel = self.tunnel
        for stream in (self.client, self.service):
            if stream is tunnel:
                # Left open for the next connection: detached, readable, no hooks to the other side.
                stream.set_consumer(None)
                stream.clear_write_pause_hooks()
                stream.resume_reading("backpressure")
            else:
                stream.close()
        self._finish("closed", reusable=tunnel is not None and tunnel.alive)

    def _fail(self, error: StreamError, *, from_tunnel: bool = False) -> None:
        if self._result.done():
            return
        self._error = error
        tunnel = self.tunnel
        for stream in (self.client, self.service):
            if stream is tunnel and not from_tunnel and stream.alive:
                stream.set_consumer(None)
                stream.write(framing.RESET_FRAME)  # tell the other gateway; this tunnel is not reused
                stream.close()
            else:
                stream.abort()
        self._finish("reset")

    def _finish(self, outcome: str, *, reusable: bool = False) -> None:
        if not self._result.done():
            up, down = self._up, self._down
            self._result.set_result(RelayResult(up.bytes if up else 0, down.bytes if down else 0, outcome,
                                                self._error, reusable))
        self._release()

    def _release(self) -> None:
        """Let go of the streams (their consumer and hooks are ours) and of our directions' way
        back to us: the objects of a finished connection form no reference cycle."""
        for direction in (self._up, self._down):
            if direction is None:
                continue
            direction.active = False
            direction.relay = None
            direction.src.set_consumer(None)
            direction.dst.clear_write_pause_hooks()

    def check_liveness(self, timeout: float, now: float | None = None) -> bool:
        """Called every HEARTBEAT_INTERVAL / 2 or so, on a relay over a framed tunnel: send a
        heartbeat if we sent nothing since the previous call (while our direction is open), and
        reset both sides if nothing at all arrived from the other gateway for `timeout` while its
        direction is open and we are reading (our own backpressure is not its silence). True when
        the relay was reset. A relay without a framed tunnel, or not started, is left alone."""
        tunnel = self.tunnel
        up, down = self._up, self._down
        if tunnel is None or up is None or down is None or self._result.done():
            return False
        outgoing, incoming = (down, up) if self.framed == "client" else (up, down)
        if outgoing.hold_eof:  # egress before the remote's 200: the attempt has its own timeout
            return False
        now = time.monotonic() if now is None else now
        if outgoing.active and not outgoing.done:
            if tunnel.bytes_sent == self._sent_mark:
                tunnel.write(framing.HEARTBEAT_FRAME)
            self._sent_mark = tunnel.bytes_sent
        if not incoming.active or incoming.done:
            return False
        if tunnel.bytes_received != self._received_mark or tunnel.reading_paused or self._received_mark < 0:
            self._received_mark = tunnel.bytes_received
            self._alive_at = now
            return False
        if now - self._alive_at < timeout:
            return False
        self._fail(StreamError("timeout", f"nothing from the other gateway for {now - self._alive_at:.1f} s"),
                   from_tunnel=True)
        return True

    def abort(self) -> None:
        """Reset both connections now."""
        self._fail(StreamError("reset", "relay aborted"))

    @property
    def finished(self) -> asyncio.Future[RelayResult]:
        return self._result

    async def wait(self) -> RelayResult:
        return await asyncio.shield(self._result)

    def take_counts(self) -> tuple[int, int]:
        """Bytes relayed (client → service, service → client) since the previous call."""
        counts = []
        for direction in (self._up, self._down):
            if direction is None:
                counts.append(0)
                continue
            counts.append(direction.bytes - direction.reported)
            direction.reported = direction.bytes
        return counts[0], counts[1]


class RelayMeter:
    """Reports the bytes of live relays to a counter: at the end of each, and on `flush()` (called
    periodically, so that long transfers show up while they run). A relay is tracked with its
    labels (direction first: direction, Import or Export, peer); `add(labels, flow, n)` counts."""

    def __init__(self, add: Callable[[tuple[str, ...], str, int], None]) -> None:
        self._add = add
        self._live: dict[Relay, tuple[str, ...]] = {}

    def __len__(self) -> int:
        return len(self._live)

    def track(self, relay: Relay, labels: tuple[str, ...]) -> None:
        self._live[relay] = labels

    def untrack(self, relay: Relay) -> None:
        labels = self._live.pop(relay, None)
        if labels is not None:
            self._report(relay, labels)

    def flush(self) -> None:
        for relay, labels in list(self._live.items()):
            self._report(relay, labels)

    def check_liveness(self, timeout: float) -> list[str]:
        """`Relay.check_liveness` on every live relay; the directions of those that were reset."""
        now = time.monotonic()
        return [labels[0] for relay, labels in list(self._live.items()) if relay.check_liveness(timeout, now)]

    def _report(self, relay: Relay, labels: tuple[str, ...]) -> None:
        up, down = relay.take_counts()
        if up:
            self._add(labels, UPSTREAM, up)
        if down:
            self._add(labels, DOWNSTREAM, down)
