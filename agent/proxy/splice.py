"""Zero-copy relay between two connected TCP sockets: splice(2) through one pipe per direction.

`relay(a, b)` moves bytes both ways until both directions ended or one side failed, on the running
asyncio loop's thread (no thread per connection): each direction is a small state machine woken by
`loop.add_reader`/`add_writer` on non-blocking sockets and pipes (F_SETPIPE_SZ 1 MiB).

Per direction: splice what the source has into the pipe, splice the pipe into the destination;
wait for the source to be readable only when the pipe is empty, and for the destination to be
writable only while the pipe holds bytes, so no wake-up is ever spurious.

Semantics, which the callers (the node proxy, the gateway's plain-TCP legs) rely on:
- Half-close: EOF from one side becomes shutdown(SHUT_WR) on the other side once every byte before
  it is delivered; the other direction keeps flowing until it ends too.
- Reset: when one side fails (ECONNRESET, EPIPE, a timeout, ...), the other side is armed with
  SO_LINGER(1, 0), so closing it sends an RST at once; the relay returns immediately.
- Idle timeout (optional): no byte in either direction for that long resets both sides.
- Cancellation resets both sides (a cut transfer must never look like a clean end).
The relay never closes the sockets: the caller closes them when it returns (or is cancelled).
"""

from __future__ import annotations

import asyncio
import enum
import errno
import fcntl
import logging
import os
import socket
import struct
from collections.abc import Callable
from dataclasses import dataclass
from typing import Protocol

log = logging.getLogger(__name__)

PIPE_SIZE = 1 << 20
# Bytes one direction moves per wake-up before yielding to other connections on the loop.
FAIRNESS_BYTES = 4 << 20
_SPLICE_FLAGS = os.SPLICE_F_MOVE | os.SPLICE_F_NONBLOCK
_LINGER_RESET = struct.pack("ii", 1, 0)


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


def reset(sock: socket.socket) -> None:
    """Close with an RST."""
    if sock.fileno() >= 0:
        arm_reset(sock)
        sock.close()


def _make_pipe() -> tuple[int, int]:
    r, w = os.pipe2(os.O_NONBLOCK | os.O_CLOEXEC)
    try:
        fcntl.fcntl(w, fcntl.F_SETPIPE_SZ, PIPE_SIZE)
    except OSError as exc:
        # Unprivileged processes beyond fs.pipe-max-size / pipe-user-pages-soft: default size works.
        log.debug("Keeping the default pipe size (F_SETPIPE_SZ %d: %s).", PIPE_SIZE, exc)
    return r, w


class _Direction:
    def __init__(self, relay: _Relay, src: socket.socket, dst: socket.socket, src_name: str,
                 dst_name: str, count: Callable[[int], None]) -> None:
        self.relay = relay
        self.src, self.dst = src, dst
        self.src_fd, self.dst_fd = src.fileno(), dst.fileno()
        self.src_name, self.dst_name = src_name, dst_name
        self.count = count
        self.pipe_r, self.pipe_w = _make_pipe()
        self.capacity = fcntl.fcntl(self.pipe_w, fcntl.F_GETPIPE_SZ)
        self.pending = 0
        self.total = 0
        self.eof = False
        self.done = False
        self.reading = False
        self.writing = False

    def wait(self, *, read: bool = False, write: bool = False) -> None:
        loop = self.relay.loop
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
        if self.done or self.relay.finished:
            return
        moved = 0
        while moved < FAIRNESS_BYTES:
            while self.pending:
                try:
                    n = os.splice(self.pipe_r, self.dst_fd, self.pending, flags=_SPLICE_FLAGS)
                except BlockingIOError:
                    self.wait(write=True)
                    self._note(moved)
                    return
                except OSError as exc:
                    self._note(moved)
                    self.relay.fail(self.dst_name, exc)
                    return
                self.pending -= n
                self.total += n
                moved += n
                self.count(n)
            if self.eof:
                self._note(moved)
                self._finish()
                return
            try:
                n = os.splice(self.src_fd, self.pipe_w, self.capacity, flags=_SPLICE_FLAGS)
            except BlockingIOError:
                # The pipe is empty here, so it is the socket that has nothing for us.
                self.wait(read=True)
                self._note(moved)
                return
            except OSError as exc:
                self._note(moved)
                self.relay.fail(self.src_name, exc)
                return
            if n == 0:
                self.eof = True
            self.pending = n
        # Fair share used: come back after the other ready callbacks had their turn.
        self.wait()
        self._note(moved)
        self.relay.loop.call_soon(self.pump)

    def _note(self, moved: int) -> None:
        if moved:
            self.relay.last_activity = self.relay.loop.time()

    def _finish(self) -> None:
        self.wait()
        try:
            self.dst.shutdown(socket.SHUT_WR)
        except OSError as exc:
            self.relay.fail(self.dst_name, exc)
            return
        self.done = True
        self.relay.direction_done()

    def close(self) -> None:
        self.wait()
        os.close(self.pipe_r)
        os.close(self.pipe_w)


class _Relay:
    def __init__(self, a: socket.socket, b: socket.socket, counters: RelayCounters,
                 idle_timeout: float | None) -> None:
        self.loop = asyncio.get_running_loop()
        self.a, self.b = a, b
        self.finished = False
        self.future: asyncio.Future[RelayResult] = self.loop.create_future()
        self.last_activity = self.loop.time()
        self.idle_timeout = idle_timeout
        self.idle_handle: asyncio.TimerHandle | None = None
        self.forward = _Direction(self, a, b, "a", "b", counters.add_a_to_b)
        try:
            self.backward = _Direction(self, b, a, "b", "a", counters.add_b_to_a)
        except BaseException:
            self.forward.close()
            raise

    def start(self) -> None:
        if self.idle_timeout is not None:
            self.idle_handle = self.loop.call_later(self.idle_timeout, self.check_idle)
        self.forward.pump()
        if not self.finished:
            self.backward.pump()

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
        if exc.errno not in (errno.ECONNRESET, errno.EPIPE, errno.ETIMEDOUT, errno.EHOSTUNREACH,
                             errno.ENETUNREACH, errno.ECONNABORTED, errno.ENOTCONN):
            log.warning("Relay side %s failed with an unexpected error: %s", side, exc)
        self.end(RelayOutcome.RESET, side, exc)

    def end(self, outcome: RelayOutcome, side: str | None = None, exc: OSError | None = None) -> None:
        if self.finished:
            return
        self.finished = True
        self.release()
        self.future.set_result(RelayResult(self.forward.total, self.backward.total, outcome, side, exc))

    def release(self) -> None:
        if self.idle_handle is not None:
            self.idle_handle.cancel()
            self.idle_handle = None
        self.forward.close()
        self.backward.close()


async def relay(a: socket.socket, b: socket.socket, counters: RelayCounters | None = None, *,
                idle_timeout: float | None = None) -> RelayResult:
    """Relay between two connected TCP sockets until both directions end or one side fails.
    The sockets are made non-blocking and are not closed (see the module docstring)."""
    if idle_timeout is not None and idle_timeout <= 0:
        raise ValueError(f"idle_timeout must be positive, not {idle_timeout}")
    a.setblocking(False)
    b.setblocking(False)
    state = _Relay(a, b, counters if counters is not None else ByteCounts(), idle_timeout)
    try:
        state.start()
        return await state.future
    except BaseException:
        # Cancelled (or a bug): the transfer is cut, make both peers see a reset, not an EOF.
        if not state.finished:
            state.finished = True
            state.release()
            arm_reset(a)
            arm_reset(b)
        raise
