"""The relay: application bytes both ways between a client-side and a service-side stream.

Each direction is a consumer attached to its source stream (`peerwire.stream`): every chunk read
is written to the other stream from the read callback itself, with no task, queue or copy in
between. Flow control: when the destination's write buffer goes over its high-water mark, the
source stops reading until it drains below the low-water mark.

End of data is carried per direction (half-close): EOF from one side becomes `write_eof()` on the
other (a TCP FIN, or a TLS close_notify; see `peerwire.stream`), and the other direction keeps
flowing. When both directions ended, both connections are closed. A failure on either side (a
reset, a TLS error, a TLS connection cut without close_notify) resets both at once, so that a peer
vanishing mid-transfer resets the client promptly instead of leaving it hanging.

Egress needs a direction to start before the remote gateway accepted the CONNECT (the client's
first bytes follow the request at once): `start_upstream(tap_limit=...)` keeps a copy of what it
forwards (up to the limit) and holds back the client's EOF; `commit()` releases both when the
remote said 200, `detach_upstream()` stops forwarding and returns the copy for the next source
(None when more than the limit was sent: it cannot be replayed).
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from dataclasses import dataclass

from controlplane.peerwire.stream import TRANSPORT_MAY_KEEP_BUFFERS, Stream, StreamError

UPSTREAM = "client_to_service"
DOWNSTREAM = "service_to_client"


@dataclass(frozen=True)
class RelayResult:
    client_to_service: int
    service_to_client: int
    outcome: str  # "closed" (both directions ended) or "reset"
    error: StreamError | None = None


class _Direction:
    """Forwards one stream's bytes to another (a `peerwire.stream.Consumer`)."""

    def __init__(self, relay: Relay, src: Stream, dst: Stream, *, tap: bytearray | None = None,
                 tap_limit: int = 0, hold_eof: bool = False) -> None:
        self.relay = relay
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
        if TRANSPORT_MAY_KEEP_BUFFERS and self.dst.write_buffer_size:
            self.src.renew_read_buffer()

    def eof(self) -> None:
        if not self.active or self.done:
            return
        if self.hold_eof:
            self.eof_pending = True
            return
        self.dst.write_eof()
        self.done = True
        self.relay._direction_done()

    def failed(self, error: StreamError) -> None:
        if self.active:
            self.relay._fail(error)

    def pause_source(self) -> None:
        self.src.pause_reading("backpressure")

    def resume_source(self) -> None:
        self.src.resume_reading("backpressure")


class Relay:
    """Bytes between `client` (the side that opened the connection) and `service`."""

    def __init__(self, client: Stream, service: Stream) -> None:
        self.client = client
        self.service = service
        self._up: _Direction | None = None
        self._down: _Direction | None = None
        self._result: asyncio.Future[RelayResult] = asyncio.get_running_loop().create_future()
        self._error: StreamError | None = None

    # --- wiring ------------------------------------------------------------------------------

    def _attach(self, direction: _Direction) -> None:
        direction.dst.set_write_pause_hooks(direction.pause_source, direction.resume_source)
        direction.src.set_consumer(direction)

    def start_upstream(self, *, tap: bytearray | None = None, tap_limit: int = 0) -> None:
        """Forward client → service. With `tap`, keep a copy (up to `tap_limit` bytes in all, what
        `tap` already holds included) and hold the client's EOF until `commit()`."""
        if self._up is not None:
            raise RuntimeError("upstream already started")
        self._up = _Direction(self, self.client, self.service, tap=tap, tap_limit=tap_limit, hold_eof=tap is not None)
        if tap is not None and len(tap) > tap_limit:
            self._up.tap = None
            self._up.overflowed = True
        self._attach(self._up)

    def start_downstream(self) -> None:
        """Forward service → client."""
        if self._down is not None:
            raise RuntimeError("downstream already started")
        self._down = _Direction(self, self.service, self.client)
        self._attach(self._down)

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
        if up is not None and down is not None and up.done and down.done:
            self.client.close()
            self.service.close()
            self._finish("closed")

    def _fail(self, error: StreamError) -> None:
        if self._result.done():
            return
        self._error = error
        self.client.abort()
        self.service.abort()
        self._finish("reset")

    def _finish(self, outcome: str) -> None:
        if not self._result.done():
            up, down = self._up, self._down
            self._result.set_result(RelayResult(up.bytes if up else 0, down.bytes if down else 0, outcome,
                                                self._error))

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
    periodically, so that long transfers show up while they run)."""

    def __init__(self, add: Callable[[str, str, int], None]) -> None:
        self._add = add
        self._live: dict[Relay, str] = {}

    def __len__(self) -> int:
        return len(self._live)

    def track(self, relay: Relay, direction: str) -> None:
        self._live[relay] = direction

    def untrack(self, relay: Relay) -> None:
        direction = self._live.pop(relay, None)
        if direction is not None:
            self._report(relay, direction)

    def flush(self) -> None:
        for relay, direction in list(self._live.items()):
            self._report(relay, direction)

    def _report(self, relay: Relay, direction: str) -> None:
        up, down = relay.take_counts()
        if up:
            self._add(direction, UPSTREAM, up)
        if down:
            self._add(direction, DOWNSTREAM, down)
