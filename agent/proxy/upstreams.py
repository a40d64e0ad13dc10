"""UpstreamPool: TCP connections to the upstream (the gateway's agent port) opened before they are
needed, so that a redirected connection does not wait for a TCP handshake to the gateway.

Each pooled connection is used at most once (it carries one client connection, preamble first) and
never kept longer than `max_age` seconds: the gateway gives a connection a limited time to send its
preamble (its --request-timeout, 10 s by default), so `max_age` must stay below that. An expired
connection is closed with a FIN before any byte was sent on it.

The pool refills on demand: a `take()` (hit or miss) starts connects in the background until
`size` connections are open or opening for that address, and connects continue only while
connections keep being taken (a take in the last `max_age` seconds). An agent whose clients are
idle holds no pooled connection at all after `max_age`.

`take()` hands out the oldest connection that is still young enough and still open: a connection
the gateway closed (restart, its own timeout) is readable at EOF or reset, which a non-blocking
MSG_PEEK sees in one syscall; such a connection is closed and counted as stale, never handed out.
(A close that races with the take can still reach the caller as an error of its first send; the
node proxy falls back to a new connection then.)

Everything runs on loop callbacks (a connect is a non-blocking connect() and a writer callback, an
expiry is a timer per address): no task, and per connection only a few syscalls. `close()` cancels
the timers and callbacks and closes every connection, idle or still connecting. Not thread-safe:
one pool per event loop.
"""

from __future__ import annotations

import asyncio
import errno
import ipaddress
import logging
import math
import os
import socket
import time
from collections import deque
from collections.abc import Callable

from agent.proxy.metrics import ProxyMetrics
from agent.proxy.ratelimit import RateLimitedLog

log = logging.getLogger(__name__)

DEFAULT_SIZE = 4
DEFAULT_MAX_AGE = 5.0
_RETRY_MIN = 0.5
_RETRY_MAX = 10.0


class _Pooled:
    __slots__ = ("sock", "born")

    def __init__(self, sock: socket.socket, born: float) -> None:
        self.sock = sock
        self.born = born


class _Connecting:
    __slots__ = ("sock", "timer")

    def __init__(self, sock: socket.socket) -> None:
        self.sock = sock
        self.timer: asyncio.TimerHandle | None = None


class _Slot:
    """The pool of one upstream address."""

    __slots__ = ("address", "family", "idle", "connecting", "last_take", "retry_at", "backoff", "expiry")

    def __init__(self, address: tuple[str, int]) -> None:
        self.address = address
        self.family = socket.AF_INET6 if ipaddress.ip_address(address[0]).version == 6 else socket.AF_INET
        self.idle: deque[_Pooled] = deque()
        self.connecting: dict[int, _Connecting] = {}  # fd -> connect in progress
        self.last_take = -math.inf
        self.retry_at = -math.inf
        self.backoff = _RETRY_MIN
        self.expiry: asyncio.TimerHandle | None = None


def _connected_now(sock: socket.socket) -> bool:
    """Whether a connect still in progress has completed already. To a local gateway (veth, loopback)
    the kernel usually finishes the handshake before connect() returns; then no writer callback,
    timer or wake-up is needed."""
    try:
        sock.getpeername()
    except OSError:
        return False  # ENOTCONN: still in progress (or failed: the writer callback will tell)
    return True


def still_open(sock: socket.socket) -> bool:
    """True when a non-blocking connected socket that its peer never writes to is still open (no
    EOF, no reset, nothing unexpected to read)."""
    try:
        sock.recv(1, socket.MSG_PEEK)
    except (BlockingIOError, InterruptedError):
        return True
    except OSError:
        return False  # reset
    # EOF (closed by the gateway), or bytes, which a gateway never sends before the preamble.
    return False


class UpstreamPool:
    def __init__(self, *, size: int = DEFAULT_SIZE, max_age: float = DEFAULT_MAX_AGE, connect_timeout: float = 5.0,
                 metrics: ProxyMetrics | None = None, clock: Callable[[], float] = time.monotonic) -> None:
        if size < 1:
            raise ValueError(f"size must be at least 1, not {size}")
        if not max_age > 0:
            raise ValueError(f"max_age must be positive, not {max_age}")
        if not connect_timeout > 0:
            raise ValueError(f"connect_timeout must be positive, not {connect_timeout}")
        self._size = size
        self._max_age = max_age
        self._connect_timeout = connect_timeout
        self.metrics = metrics if metrics is not None else ProxyMetrics()
        self._clock = clock
        self._slots: dict[tuple[str, int], _Slot] = {}
        self._loop: asyncio.AbstractEventLoop | None = None
        self._log_connect = RateLimitedLog(log, interval=60.0)

    def start(self) -> None:
        """Bind to the running loop; `take()` refills from now on."""
        self._loop = asyncio.get_running_loop()

    def idle(self, address: tuple[str, int] | None = None) -> int:
        """Connections waiting (for one address, or for all)."""
        if address is not None:
            slot = self._slots.get(address)
            return len(slot.idle) if slot else 0
        return sum(len(s.idle) for s in self._slots.values())

    def take(self, address: tuple[str, int]) -> socket.socket | None:
        """A connected, unused, non-blocking socket to `address`, or None (connect one yourself).
        Either way the pool refills for `address` in the background (after this callback)."""
        slot = self._slots.get(address)
        if slot is None:
            slot = self._slots[address] = _Slot(address)
        now = self._clock()
        slot.last_take = now
        m = self.metrics
        idle = slot.idle
        found = None
        while idle:
            pooled = idle.popleft()
            m.upstream_pool_idle -= 1
            if now - pooled.born >= self._max_age:
                m.upstream_pool_expired += 1
                pooled.sock.close()
            elif not still_open(pooled.sock):
                m.upstream_pool_stale += 1
                pooled.sock.close()
            else:
                found = pooled.sock
                break
        if found is None:
            m.upstream_pool_misses += 1
        else:
            m.upstream_pool_hits += 1
        if self._loop is not None and len(idle) + len(slot.connecting) < self._size:
            self._loop.call_soon(self._refill, slot)
        return found

    def close(self) -> None:
        """Close every connection, idle or opening, and cancel every timer. The pool refills no more
        (until `start()` again)."""
        loop, self._loop = self._loop, None
        for slot in self._slots.values():
            self._close_slot(slot, loop)
        self._slots.clear()

    def _close_slot(self, slot: _Slot, loop: asyncio.AbstractEventLoop | None) -> None:
        if slot.expiry is not None:
            slot.expiry.cancel()
            slot.expiry = None
        while slot.idle:
            slot.idle.popleft().sock.close()
            self.metrics.upstream_pool_idle -= 1
        for fd, pending in list(slot.connecting.items()):
            if loop is not None:
                loop.remove_writer(fd)
            if pending.timer is not None:
                pending.timer.cancel()
            pending.sock.close()
        slot.connecting.clear()

    # -- refilling ---------------------------------------------------------------------------------

    def _refill(self, slot: _Slot) -> None:
        loop = self._loop
        if loop is None or self._slots.get(slot.address) is not slot:
            return
        now = self._clock()
        while (len(slot.idle) + len(slot.connecting) < self._size and now - slot.last_take < self._max_age
               and now >= slot.retry_at):
            sock = socket.socket(slot.family, socket.SOCK_STREAM)
            try:
                sock.setblocking(False)
                sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
                err = sock.connect_ex(slot.address)
            except OSError as exc:
                sock.close()
                self._connect_failed(slot, exc)
                return
            if err == 0 or (err == errno.EINPROGRESS and _connected_now(sock)):
                slot.backoff = _RETRY_MIN
                self._add_idle(slot, sock)
            elif err in (errno.EINPROGRESS, errno.EAGAIN):
                pending = _Connecting(sock)
                fd = sock.fileno()
                slot.connecting[fd] = pending
                loop.add_writer(fd, self._connected, slot, fd)
                pending.timer = loop.call_later(self._connect_timeout, self._connect_timed_out, slot, fd)
            else:
                sock.close()
                self._connect_failed(slot, OSError(err, os.strerror(err)))
                return

    def _connected(self, slot: _Slot, fd: int) -> None:
        pending = self._finish_connect(slot, fd)
        if pending is None:
            return
        err = pending.sock.getsockopt(socket.SOL_SOCKET, socket.SO_ERROR)
        if err:
            pending.sock.close()
            self._connect_failed(slot, OSError(err, os.strerror(err)))
            return
        slot.backoff = _RETRY_MIN
        self._add_idle(slot, pending.sock)
        self._refill(slot)

    def _connect_timed_out(self, slot: _Slot, fd: int) -> None:
        pending = self._finish_connect(slot, fd)
        if pending is not None:
            pending.sock.close()
            self._connect_failed(slot, TimeoutError(f"timed out after {self._connect_timeout:g} s"))

    def _finish_connect(self, slot: _Slot, fd: int) -> _Connecting | None:
        pending = slot.connecting.pop(fd, None)
        if pending is None:
            return None
        if self._loop is not None:
            self._loop.remove_writer(fd)
        if pending.timer is not None:
            pending.timer.cancel()
        return pending

    def _connect_failed(self, slot: _Slot, exc: OSError) -> None:
        self.metrics.upstream_pool_connect_errors += 1
        slot.retry_at = self._clock() + slot.backoff
        self._log_connect.log(logging.WARNING, "Cannot open a pooled connection to upstream %s:%d (%s); "
                              "retrying in %g s.", *slot.address, exc, slot.backoff)
        slot.backoff = min(slot.backoff * 2, _RETRY_MAX)

    # -- expiry ------------------------------------------------------------------------------------

    def _add_idle(self, slot: _Slot, sock: socket.socket) -> None:
        if self._slots.get(slot.address) is not slot or self._loop is None:
            sock.close()  # closed or dropped meanwhile
            return
        slot.idle.append(_Pooled(sock, self._clock()))
        self.metrics.upstream_pool_idle += 1
        if slot.expiry is None:
            slot.expiry = self._loop.call_later(self._max_age, self._expire, slot)

    def _expire(self, slot: _Slot) -> None:
        slot.expiry = None
        now = self._clock()
        idle = slot.idle
        while idle and now - idle[0].born >= self._max_age:
            idle.popleft().sock.close()
            self.metrics.upstream_pool_idle -= 1
            self.metrics.upstream_pool_expired += 1
        if idle and self._loop is not None:
            slot.expiry = self._loop.call_later(idle[0].born + self._max_age - now, self._expire, slot)
        elif not slot.connecting and now - slot.last_take >= self._max_age:
            if self._slots.get(slot.address) is slot:
                del self._slots[slot.address]
