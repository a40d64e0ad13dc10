"""Zero-copy relay between two connected TCP sockets: splice(2) through one pipe per direction.

`relay(a, b)` moves bytes both ways until both directions ended or one side failed, on the running
asyncio loop's thread (no thread per connection): each direction is a small state machine woken by
`loop.add_reader`/`add_writer` on non-blocking sockets and pipes. `Relay` is the same machine
driven by callbacks alone (`start()`, then `on_done(result)`), for callers that want no task per
connection. Pipes come from a `PipePool` (reused when empty) or are made per relay.

Per direction: splice what the source has into the pipe, then at once the pipe into the
destination, in the same wake-up; wait for the source to be readable only when the pipe is empty,
and for the destination to be writable only while the pipe holds bytes. A short read that was
delivered whole goes straight back to waiting for the source (the loop's polling is
level-triggered, so nothing is missed) instead of trying a splice that would fail: one message
costs one wake-up and two splices. The relay starts waiting on both sources without trying them
(bytes already queued make them readable at once).

Semantics, which the callers (the node proxy, the gateway's plain-TCP legs) rely on:
- Half-close: EOF from one side becomes shutdown(SHUT_WR) on the other side once every byte before
  it is delivered; the other direction keeps flowing until it ends too.
- Reset: when one side fails (ECONNRESET, EPIPE, a timeout, ...), the other side is armed with
  SO_LINGER(1, 0), so closing it sends an RST at once; the relay returns immediately.
- Idle timeout (optional): no byte in either direction for that long resets both sides.
- Process death: while the relay runs both sockets are armed to reset (SO_LINGER 0), so when
  this process is killed the kernel resets both peers instead of sending them a FIN; an orderly
  end disarms them again.
- Cancellation (or `Relay.abort()`) resets both sides (a cut transfer must never look like a clean
  end).
The relay never closes the sockets: the caller closes them when it returns (or is cancelled).
"""

from __future__ import annotations

import asyncio
import enum
import errno
import logging
import os
import socket
import struct
from collections.abc import Callable
from dataclasses import dataclass
from typing import Protocol

from agent.proxy.pipes import PIPE_SIZE, Pipe, PipePool, make_pipe

log = logging.getLogger(__name__)

__all__ = ["PIPE_SIZE", "FAIRNESS_BYTES", "ByteCounts", "Relay", "RelayCounters", "RelayOutcome", "RelayResult",
           "arm_reset", "disarm_reset", "relay", "reset"]

# Bytes one direction moves per wake-up before yielding to other connections on the loop.
FAIRNESS_BYTES = 4 << 20
# A read shorter than this, once delivered, ends the wake-up (the source was drained a moment ago).
# Longer reads (bulk transfers) keep reading until the source has nothing, as a read is then cheaper
# than going back to the loop.
SHORT_READ = 16 << 10
_SPLICE_FLAGS = os.SPLICE_F_MOVE | os.SPLICE_F_NONBLOCK
_LINGER_RESET = struct.pack("ii", 1, 0)
_LINGER_OFF = struct.pack("ii", 0, 0)
_EXPECTED_FAILURES = frozenset({errno.ECONNRESET, errno.EPIPE, errno.ETIMEDOUT, errno.EHOSTUNREACH,
                                errno.ENETUNREACH, errno.ECONNABORTED, errno.ENOTCONN})


class RelayOutcome(enum.Enum):
    CLOSED = "closed"              # both directions reached EOF and were half-closed in turn
    RESET = "reset"                # one side failed; the other side was armed to reset
    IDLE_TIMEOUT = "idle_timeout"  # nothing moved for idle_timeout; both sides armed to reset


@dataclass(frozen=True)
class RelayResult:
    a_to_b: int
    b_to_a: int
    outcome: RelayOutcome
    failed_side: str | None = None  # "a" or "b" when outcome is RESET
    error: OSError | None = None    # what that side reported


class RelayCounters(Protocol):
    """Told about bytes as they are moved (for live metrics)."""

    def add_a_to_b(self, n: int) -> None: ...

    def add_b_to_a(self, n: int) -> None: ...


@dataclass
class ByteCounts:
    """A plain RelayCounters."""

    a_to_b: int = 0
    b_to_a: int = 0

    def add_a_to_b(self, n: int) -> None:
        self.a_to_b += n

    def add_b_to_a(self, n: int) -> None:
        self.b_to_a += n


def arm_reset(sock: socket.socket) -> None:
    """Make close() send an RST (SO_LINGER on, timeout 0)."""
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, _LINGER_RESET)
    except OSError as exc:
        # Only possible for a socket that is already closed or broken: nothing left to reset.
        log.debug("Could not arm a reset on fd %d: %s", sock.fileno(), exc)


def disarm_reset(sock: socket.socket) -> None:
    """Undo `arm_reset`: close() ends the connection gracefully again."""
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, _LINGER_OFF)
    except OSError as exc:
        log.debug("Could not disarm the reset on fd %d: %s", sock.fileno(), exc)


def reset(sock: socket.socket) -> None:
    """Close with an RST."""
    if sock.fileno() >= 0:
        arm_reset(sock)
        sock.close()


class _Direction:
    __slots__ = ("relay", "loop", "src", "dst", "src_fd", "dst_fd", "src_name", "dst_name", "count", "pipe",
                 "pipe_r", "pipe_w", "capacity", "pending", "last_read", "total", "eof", "done", "reading",
                 "writing")

    def __init__(self, relay: Relay, src: socket.socket, dst: socket.socket, src_name: str, dst_name: str,
                 count: Callable[[int], None], pipe: Pipe) -> None:
        self.relay: Relay | None = relay
        self.loop = relay.loop
        self.src, self.dst = src, dst
        self.src_fd, self.dst_fd = src.fileno(), dst.fileno()
        self.src_name, self.dst_name = src_name, dst_name
        self.count = count
        self.pipe = pipe
        self.pipe_r, self.pipe_w, self.capacity = pipe.r, pipe.w, pipe.capacity
        self.pending = 0     # bytes in the pipe, not yet delivered
        self.last_read = 0   # size of the last read from the source
        self.total = 0
        self.eof = False
        self.done = False
        self.reading = False
        self.writing = False

    def wait(self, *, read: bool = False, write: bool = False) -> None:
        loop = self.loop
        if read != self.reading:
            if read:
                loop.add_reader(self.src_fd, self.pump)
            else:
                loop.remove_reader(self.src_fd)
            self.reading = read
        if write != self.writing:
            if write:
                loop.add_writer(self.dst_fd, self.pump)
            else:
                loop.remove_writer(self.dst_fd)
            self.writing = write

    def pump(self) -> None:
        relay = self.relay
        if relay is None or self.done or relay.finished:
            return  # ended (a fairness call_soon can still come after the end)
        moved = 0
        while moved < FAIRNESS_BYTES:
            if self.pending:
                try:
                    n = os.splice(self.pipe_r, self.dst_fd, self.pending, flags=_SPLICE_FLAGS)
                except BlockingIOError:
                    self.wait(write=True)
                    break
                except OSError as exc:
                    relay.moved(moved)
                    relay.fail(self.dst_name, exc)
                    return
                self.pending -= n
                self.total += n
                moved += n
                self.count(n)
                if self.pending:
                    continue  # the destination took part of it: try the rest (or learn it is full)
                if not self.eof and self.last_read < SHORT_READ:
                    self.wait(read=True)
                    break
            if self.eof:
                relay.moved(moved)
                self._finish()
                return
            try:
                n = os.splice(self.src_fd, self.pipe_w, self.capacity, flags=_SPLICE_FLAGS)
            except BlockingIOError:
                # The pipe is empty here, so it is the socket that has nothing for us.
                self.wait(read=True)
                break
            except OSError as exc:
                relay.moved(moved)
                relay.fail(self.src_name, exc)
                return
            if n == 0:
                self.eof = True
            self.pending = self.last_read = n
        else:
            # Fair share used: come back after the other ready callbacks had their turn.
            self.wait()
            self.loop.call_soon(self.pump)
        relay.moved(moved)

    def _finish(self) -> None:
        relay = self.relay
        assert relay is not None
        self.wait()
        try:
            self.dst.shutdown(socket.SHUT_WR)
        except OSError as exc:
            relay.fail(self.dst_name, exc)
            return
        self.done = True
        relay.direction_done()

    def release(self, pipes: PipePool | None) -> None:
        self.wait()
        if pipes is None:
            self.pipe.close()
        else:
            pipes.give(self.pipe, empty=self.pending == 0)
        self.relay = None  # no reference cycle left: freed by reference counting, not by the GC


def _ended(result: RelayResult) -> None:
    """What an ended relay holds instead of its `on_done` (which may refer back to it)."""


class Relay:
    """One relay driven by loop callbacks: `start()`, then `on_done(result)` is called once when it
    ends by itself; `abort()` ends it at once with both sides armed to reset (and no `on_done`).
    The sockets must be non-blocking; they are never closed here."""

    def __init__(self, a: socket.socket, b: socket.socket, counters: RelayCounters, *,
                 on_done: Callable[[RelayResult], None], idle_timeout: float | None = None,
                 pipes: PipePool | None = None) -> None:
        if idle_timeout is not None and idle_timeout <= 0:
            raise ValueError(f"idle_timeout must be positive, not {idle_timeout}")
        self.loop = asyncio.get_running_loop()
        self.a, self.b = a, b
        self.finished = False
        self.on_done = on_done
        self.idle_timeout = idle_timeout
        self.idle_handle: asyncio.TimerHandle | None = None
        self.last_activity = self.loop.time()
        self.pipes = pipes
        take = pipes.take if pipes is not None else make_pipe
        first = take()
        try:
            second = take()
        except BaseException:
            first.close()
            raise
        self.forward = _Direction(self, a, b, "a", "b", counters.add_a_to_b, first)
        self.backward = _Direction(self, b, a, "b", "a", counters.add_b_to_a, second)

    def start(self) -> None:
        # While bytes are in flight, a close for any reason but an orderly end is abortive: if
        # this process dies (kill -9, OOM), the kernel closes both sockets with an RST, and
        # neither peer mistakes a cut transfer for a complete one. `end(CLOSED)` disarms it.
        arm_reset(self.a)
        arm_reset(self.b)
        if self.idle_timeout is not None:
            self.idle_handle = self.loop.call_later(self.idle_timeout, self.check_idle)
        self.forward.wait(read=True)
        self.backward.wait(read=True)

    def moved(self, n: int) -> None:
        if n and self.idle_timeout is not None:
            self.last_activity = self.loop.time()

    def check_idle(self) -> None:
        if self.finished:
            return
        assert self.idle_timeout is not None
        quiet = self.loop.time() - self.last_activity
        if quiet >= self.idle_timeout:
            arm_reset(self.a)
            arm_reset(self.b)
            self.end(RelayOutcome.IDLE_TIMEOUT)
        else:
            self.idle_handle = self.loop.call_later(self.idle_timeout - quiet, self.check_idle)

    def direction_done(self) -> None:
        if self.forward.done and self.backward.done:
            self.end(RelayOutcome.CLOSED)

    def fail(self, side: str, exc: OSError) -> None:
        # The failed side is dead already; the other one must learn it promptly: RST on close.
        arm_reset(self.b if side == "a" else self.a)
        if exc.errno not in _EXPECTED_FAILURES:
            log.warning("Relay side %s failed with an unexpected error: %s", side, exc)
        self.end(RelayOutcome.RESET, side, exc)

    def end(self, outcome: RelayOutcome, side: str | None = None, exc: OSError | None = None) -> None:
        if self.finished:
            return
        self.finished = True
        self.release()
        if outcome is RelayOutcome.CLOSED:
            disarm_reset(self.a)
            disarm_reset(self.b)
        on_done, self.on_done = self.on_done, _ended
        on_done(RelayResult(self.forward.total, self.backward.total, outcome, side, exc))

    def abort(self) -> None:
        """Cut the transfer: both sides armed to reset, pipes released. Idempotent."""
        if self.finished:
            return
        self.finished = True
        self.release()
        self.on_done = _ended
        arm_reset(self.a)
        arm_reset(self.b)

    def release(self) -> None:
        if self.idle_handle is not None:
            self.idle_handle.cancel()
            self.idle_handle = None
        self.forward.release(self.pipes)
        self.backward.release(self.pipes)


async def relay(a: socket.socket, b: socket.socket, counters: RelayCounters | None = None, *,
                idle_timeout: float | None = None, pipes: PipePool | None = None) -> RelayResult:
    """Relay between two connected TCP sockets until both directions end or one side fails.
    The sockets are made non-blocking and are not closed (see the module docstring)."""
    if idle_timeout is not None and idle_timeout <= 0:
        raise ValueError(f"idle_timeout must be positive, not {idle_timeout}")
    a.setblocking(False)
    b.setblocking(False)
    future: asyncio.Future[RelayResult] = asyncio.get_running_loop().create_future()

    def done(result: RelayResult) -> None:
        if not future.done():  # a cancelled caller aborts the relay; this only guards the window before
            future.set_result(result)

    state = Relay(a, b, counters if counters is not None else ByteCounts(), on_done=done,
                  idle_timeout=idle_timeout, pipes=pipes)
    try:
        state.start()
        return await future
    except BaseException:
        # Cancelled (or a bug): the transfer is cut, make both peers see a reset, not an EOF.
        state.abort()
        raise
