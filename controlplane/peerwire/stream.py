"""Byte streams over asyncio transports: the protocol of one TCP connection (`Stream`) and its
plain variant (`TcpStream`); the TLS variant is `tlsstream.TlsStream`.

A `Stream` is the asyncio protocol of one TCP connection. It has two modes:

- *control*: coroutines `read()` what arrived and `write()`/`drain()` (used while a connection
  speaks HTTP, or while the agent's preamble is read);
- *consumer*: `set_consumer(c)` hands every received chunk to `c.data(view)` synchronously,
  from the event loop's read callback, with no task or copy in between (used by the relay, which
  writes each chunk straight to the other stream). `set_consumer(None)` goes back to control.

Reads go into a buffer the stream owns (`asyncio.BufferedProtocol`): a consumer must use a chunk
before returning, or call `renew_read_buffer()` if something may keep a reference to it. The
buffer starts small (`SMALL_READ_SIZE`, 16 KiB: a new connection costs no large allocation, and an
idle one holds little) and becomes large (`READ_SIZE`, 256 KiB) after the first read that fills
it, i.e. when data streams in; `shrink_read_buffers()` makes it small again (a pooled tunnel back
from a bulk transfer).

When the connection is lost the stream drops its consumer, hooks and callbacks, so that a stream
and the relay attached to it never keep each other alive (they would otherwise wait, buffers
and all, for the garbage collector).

Failures are `StreamError` with a `reason` (`reset`, `tls`, `truncated`, `closed`, `timeout`),
delivered to the reader (raised by `read()`/`drain()`) or to the consumer's `failed()`. `abort()`
resets the connection (RST, SO_LINGER 0); `close()` ends it gracefully; `write_eof()` half-closes.
"""

from __future__ import annotations

import asyncio
import errno
import os
import socket
import ssl
import struct
import sys
import time
import typing
from collections.abc import Callable
from typing import Protocol

READ_SIZE = 256 * 1024
SMALL_READ_SIZE = 16 * 1024
INBOX_LIMIT = 256 * 1024
WRITE_HIGH_WATER = 512 * 1024
WRITE_LOW_WATER = 128 * 1024
_LINGER_RESET = struct.pack("ii", 1, 0)
_LINGER_OFF = struct.pack("ii", 0, 0)
# `buffer_little()`: the write high-water mark and the kernel's unsent bytes (TCP_NOTSENT_LOWAT;
# UNSENT_DEFAULT, 0, means the system's net.ipv4.tcp_notsent_lowat, unlimited unless changed).
SMALL_WRITE_HIGH_WATER = 64 * 1024
SMALL_UNSENT = 64 * 1024
UNSENT_DEFAULT = 0

# Until Python 3.12, a selector transport copies what it cannot send at once; later versions may
# keep a reference to the written buffer. Consumers use this to decide whether a read buffer that
# was written to a backed-up transport must be replaced.
TRANSPORT_MAY_KEEP_BUFFERS = sys.version_info >= (3, 12)


class StreamError(ConnectionError):
    """A connection failed; `reason` classifies how (for metrics and logs)."""

    def __init__(self, reason: str, message: str) -> None:
        super().__init__(message)
        self.reason = reason


class Consumer(Protocol):
    """Receives a stream's bytes in consumer mode (see the module docstring)."""

    def data(self, view: memoryview) -> None: ...

    def eof(self) -> None: ...

    def failed(self, error: StreamError) -> None: ...


def _classify(exc: BaseException) -> StreamError:
    if isinstance(exc, StreamError):
        return exc
    if isinstance(exc, (ConnectionResetError, BrokenPipeError, ConnectionAbortedError)):
        return StreamError("reset", f"connection reset ({exc.__class__.__name__})")
    if isinstance(exc, TimeoutError):
        return StreamError("timeout", "connection timed out")
    if isinstance(exc, ssl.SSLError):
        return StreamError("tls", f"TLS error: {tls_reason(exc)}")
    return StreamError("reset", f"connection lost: {exc}")


def tls_reason(exc: BaseException) -> str:
    """A short reason for a TLS failure: 'certificate has expired', 'TLSV1_ALERT_UNKNOWN_CA', ..."""
    if isinstance(exc, ssl.SSLCertVerificationError) and exc.verify_message:
        return exc.verify_message
    reason = getattr(exc, "reason", None)
    return str(reason) if reason else str(exc)


class Stream(asyncio.BufferedProtocol):
    """One TCP connection (see the module docstring). Subclasses: `TcpStream`, `TlsStream`."""

    def __init__(self, *, on_open: Callable[[Stream], None] | None = None) -> None:
        self.transport: asyncio.Transport | None = None
        self.keeps_write_buffers = TRANSPORT_MAY_KEEP_BUFFERS
        self._loop: asyncio.AbstractEventLoop | None = None
        self._buf = bytearray(SMALL_READ_SIZE)
        self._view = memoryview(self._buf)
        self._inbox = bytearray()
        self._read_waiter: asyncio.Future[None] | None = None
        self._at_eof = False  # the other side finished sending
        self._eof_sent = False  # we finished sending
        self._error: StreamError | None = None
        self._consumer: Consumer | None = None
        self._paused: set[str] = set()
        self._write_paused = False
        self._little = False  # see `buffer_little`
        self._reset_armed = False  # see `reset_on_exit`
        self._drain_waiter: asyncio.Future[None] | None = None
        self._write_pause_hooks: tuple[Callable[[], None], Callable[[], None]] | None = None
        self._closing = False  # we closed or aborted it
        self._lost = False
        self._closed: asyncio.Future[None] | None = None
        self._on_open = on_open
        self._watcher: Callable[[], None] | None = None
        self.bytes_received = 0
        self.bytes_sent = 0
        self.opened_at = 0.0

    # --- asyncio protocol callbacks ----------------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # A stream transport, but not necessarily an asyncio.Transport subclass (uvloop's are not).
        self.transport = typing.cast(asyncio.Transport, transport)
        # Whether a write that could not be sent at once keeps a reference to the caller's buffer
        # instead of a copy (Python >= 3.12's selector transports, and uvloop's): then a read
        # buffer whose bytes were written on must not be read into again (`renew_read_buffer`).
        self.keeps_write_buffers = TRANSPORT_MAY_KEEP_BUFFERS or type(transport).__module__.startswith("uvloop")
        self._loop = asyncio.get_running_loop()
        self._closed = self._loop.create_future()
        self.opened_at = time.monotonic()
        transport.set_write_buffer_limits(high=WRITE_HIGH_WATER, low=WRITE_LOW_WATER)
        self._start()
        if self._on_open is not None:
            self._on_open(self)

    def _start(self) -> None:
        """Subclass hook, called when the connection is made (before `on_open`)."""

    def get_buffer(self, sizehint: int) -> memoryview:
        return self._view

    def buffer_updated(self, nbytes: int) -> None:
        raise NotImplementedError

    def eof_received(self) -> bool:
        raise NotImplementedError

    def connection_lost(self, exc: BaseException | None) -> None:
        self._lost = True
        if exc is not None:
            self._fail(_classify(exc))
        elif not self._closing and self._error is None:
            self._fail(StreamError("closed", "connection closed"))
        self._wake_reader()
        self._wake_drain()
        if self._closed is not None and not self._closed.done():
            self._closed.set_result(None)
        # Nothing can arrive any more: let go of whoever was attached (see the module docstring).
        self._consumer = None
        self._write_pause_hooks = None
        self._watcher = None
        self._on_open = None

    def pause_writing(self) -> None:
        self._write_paused = True
        if self._write_pause_hooks is not None:
            self._write_pause_hooks[0]()

    def resume_writing(self) -> None:
        self._write_paused = False
        self._wake_drain()
        if self._write_pause_hooks is not None:
            self._write_pause_hooks[1]()

    # --- delivery ----------------------------------------------------------------------------

    def _deliver(self, view: memoryview) -> None:
        self.bytes_received += len(view)
        consumer = self._consumer
        if consumer is not None:
            consumer.data(view)
            return
        self._inbox += view
        self._wake_reader()
        if len(self._inbox) >= INBOX_LIMIT:
            self.pause_reading("inbox")

    def _deliver_eof(self) -> None:
        if self._at_eof:
            return
        self._at_eof = True
        consumer = self._consumer
        if consumer is not None:
            consumer.eof()
        else:
            self._wake_reader()
            self._notify_watcher()

    def _fail(self, error: StreamError) -> None:
        if self._error is not None:
            return
        self._error = error
        consumer = self._consumer
        if consumer is not None and not self._closing:
            consumer.failed(error)
        self._wake_reader()
        self._wake_drain()
        self._notify_watcher()

    def _notify_watcher(self) -> None:
        watcher = self._watcher
        if watcher is not None:
            self._watcher = None
            watcher()

    def set_watcher(self, callback: Callable[[], None] | None) -> None:
        """Call `callback` once if the stream ends or fails while idle in control mode (e.g. a
        pooled connection whose other side went away); None removes it."""
        self._watcher = callback
        if callback is not None and (self._error is not None or self._at_eof):
            self._notify_watcher()

    def _wake_reader(self) -> None:
        waiter = self._read_waiter
        if waiter is not None and not waiter.done():
            waiter.set_result(None)

    def _wake_drain(self) -> None:
        waiter = self._drain_waiter
        if waiter is not None and not waiter.done():
            waiter.set_result(None)

    # --- control mode ------------------------------------------------------------------------

    async def read(self) -> bytes:
        """What arrived (at least one byte), or b"" at the end of data; raises StreamError."""
        while not self._inbox:
            if self._error is not None:
                raise self._error
            if self._at_eof or self._lost:
                return b""
            if self._consumer is not None:
                raise RuntimeError("Stream.read while a consumer is attached")
            assert self._loop is not None
            self._read_waiter = self._loop.create_future()
            try:
                await self._read_waiter
            finally:
                self._read_waiter = None
        data = bytes(self._inbox)
        self._inbox.clear()
        self.resume_reading("inbox")
        return data

    def unread(self, data: bytes) -> None:
        """Put bytes back in front of what arrived (they will be read or consumed first)."""
        if data:
            self._inbox[:0] = data

    def take_buffered(self) -> bytes:
        """What arrived and was not read yet, without waiting."""
        data = bytes(self._inbox)
        self._inbox.clear()
        self.resume_reading("inbox")
        return data

    async def drain(self) -> None:
        """Wait until the write buffer is below its low-water mark; raises StreamError."""
        if self._error is not None:
            raise self._error
        while self._write_paused and not self._lost:
            assert self._loop is not None
            self._drain_waiter = self._loop.create_future()
            try:
                await self._drain_waiter
            finally:
                self._drain_waiter = None
            if self._error is not None:
                raise self._error

    # --- consumer mode -----------------------------------------------------------------------

    def set_consumer(self, consumer: Consumer | None) -> None:
        """Hand every received chunk to `consumer` (None: back to control mode).

        What arrived before is handed over at once, then the end of data or the failure, if any.
        """
        self._consumer = consumer
        if consumer is None:
            return
        if self._inbox:
            pending = bytes(self._inbox)
            self._inbox.clear()
            self.resume_reading("inbox")
            consumer.data(memoryview(pending))
        if self._consumer is not consumer:
            return
        if self._error is not None:
            if not self._closing:
                consumer.failed(self._error)
        elif self._at_eof:
            consumer.eof()

    def set_write_pause_hooks(self, pause: Callable[[], None], resume: Callable[[], None]) -> None:
        """Called when our write buffer goes above / back below its watermarks (flow control)."""
        self._write_pause_hooks = (pause, resume)
        if self._write_paused:
            pause()

    def clear_write_pause_hooks(self) -> None:
        self._write_pause_hooks = None

    def renew_read_buffer(self) -> None:
        """Read into a new buffer from now on (the current one may still be referenced)."""
        self._buf = bytearray(len(self._buf))
        self._view = memoryview(self._buf)

    def _grow_read_buffer(self) -> None:
        """A read filled the small buffer: data is streaming in, read large chunks from now on."""
        self._buf = bytearray(READ_SIZE)
        self._view = memoryview(self._buf)

    def shrink_read_buffers(self) -> None:
        """Go back to small read buffers (e.g. a tunnel that carried a bulk transfer goes idle)."""
        if len(self._buf) > SMALL_READ_SIZE:
            self._buf = bytearray(SMALL_READ_SIZE)
            self._view = memoryview(self._buf)

    @property
    def read_buffer_size(self) -> int:
        """Bytes of read buffers the stream holds (see the module docstring)."""
        return len(self._buf)

    @property
    def write_buffer_size(self) -> int:
        transport = self.transport
        return transport.get_write_buffer_size() if transport is not None and not self._lost else 0

    # --- flow control ------------------------------------------------------------------------

    def pause_reading(self, reason: str) -> None:
        if not self._paused and self.transport is not None and not self._lost:
            self.transport.pause_reading()
        self._paused.add(reason)

    def resume_reading(self, reason: str) -> None:
        if reason not in self._paused:
            return
        self._paused.discard(reason)
        if not self._paused and self.transport is not None and not self._lost:
            self.transport.resume_reading()

    # --- writing and closing -----------------------------------------------------------------

    def write(self, data: bytes | bytearray | memoryview) -> None:
        """Send bytes (buffered by the transport). Dropped when the stream is already dead."""
        raise NotImplementedError

    def write_eof(self) -> None:
        """Finish our sending side; the other direction keeps flowing."""
        raise NotImplementedError

    def close(self) -> None:
        """End the connection gracefully (what was written is still sent)."""
        if self._closing or self.transport is None:
            return
        self._closing = True
        if self._reset_armed:
            self._set_linger(_LINGER_OFF)
            self._reset_armed = False
        self.transport.close()

    def reset_on_exit(self) -> None:
        """Until `close()`: should this process die, the kernel resets the connection (SO_LINGER
        0) instead of ending it with a FIN, which the peer would take for a normal end of what
        was sent. Armed by the relay on the connections whose bytes it carries (a crash of the
        gateway mid-transfer must reach both ends as a reset); `close()`, the orderly end,
        disarms it first, and `write_eof()` (a half-close) is a FIN either way."""
        if self._reset_armed or self.transport is None or self._lost:
            return
        self._reset_armed = True
        self._set_linger(_LINGER_RESET)

    def _set_linger(self, value: bytes) -> None:
        sock = self.transport.get_extra_info("socket") if self.transport is not None else None
        if sock is not None:
            try:
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, value)
            except OSError:
                pass  # already closed by the kernel

    def abort(self) -> None:
        """Reset the connection now (RST): nothing buffered is sent."""
        if self.transport is None or self._lost:
            self._closing = True
            return
        self._closing = True
        if not self._reset_armed:
            self._set_linger(_LINGER_RESET)
        self.transport.abort()

    def buffer_little(self, little: bool = True) -> None:
        """Hold little of what is written but not yet read by the peer (`little`), or go back to
        the defaults. Little: the kernel keeps at most SMALL_UNSENT bytes not yet sent
        (TCP_NOTSENT_LOWAT), and the write high-water mark is SMALL_WRITE_HIGH_WATER; the
        defaults are the kernel's (no unsent limit, a send buffer autotuned to megabytes) and
        WRITE_HIGH_WATER. For a connection that answers requests: a client that does not read
        its answers is then noticed after a few hundred KiB (`write_paused`). A connection that
        carries bulk data wants the defaults. Costs nothing when the stream already is so; socket
        options the socket refuses are ignored."""
        transport = self.transport
        if transport is None or self._lost or little is self._little:
            return
        self._little = little
        if little:
            transport.set_write_buffer_limits(high=SMALL_WRITE_HIGH_WATER, low=SMALL_WRITE_HIGH_WATER // 4)
        else:
            transport.set_write_buffer_limits(high=WRITE_HIGH_WATER, low=WRITE_LOW_WATER)
        sock = transport.get_extra_info("socket")
        if sock is not None:
            try:
                sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NOTSENT_LOWAT, SMALL_UNSENT if little else UNSENT_DEFAULT)
            except OSError:
                pass

    @property
    def closing(self) -> bool:
        """We closed or aborted it (or it is gone)."""
        return self._closing or self._lost

    async def wait_closed(self) -> None:
        if self._closed is not None:
            await asyncio.shield(self._closed)

    # --- state -------------------------------------------------------------------------------

    @property
    def at_eof(self) -> bool:
        """The other side finished sending (and everything it sent was read or consumed)."""
        return self._at_eof and not self._inbox

    @property
    def alive(self) -> bool:
        """Neither failed, closed, nor ended by the other side."""
        return not (self._lost or self._closing or self._error is not None or self._at_eof)

    @property
    def write_paused(self) -> bool:
        """Whether the transport holds more than the write high-water mark (`drain()` would wait)."""
        return self._write_paused and not self._lost

    @property
    def reading_paused(self) -> bool:
        """Whether we hold back reading (backpressure, a full inbox): silence is then ours."""
        return bool(self._paused)

    @property
    def buffered(self) -> int:
        """How many received bytes wait to be read."""
        return len(self._inbox)

    @property
    def error(self) -> StreamError | None:
        return self._error

    @property
    def eof_sent(self) -> bool:
        return self._eof_sent

    @property
    def peername(self) -> tuple[str, int] | None:
        return self.transport.get_extra_info("peername") if self.transport is not None else None

    @property
    def sockname(self) -> tuple[str, int] | None:
        return self.transport.get_extra_info("sockname") if self.transport is not None else None


class TcpStream(Stream):
    """A plain TCP connection."""

    def buffer_updated(self, nbytes: int) -> None:
        view = self._view
        if nbytes == len(view) and nbytes < READ_SIZE:
            self._grow_read_buffer()  # `view` still holds this read
        self._deliver(view[:nbytes])

    def eof_received(self) -> bool:
        self._deliver_eof()
        return True  # keep our sending side open (half-close)

    def write(self, data: bytes | bytearray | memoryview) -> None:
        if self._closing or self._lost:
            return
        if self._eof_sent:
            raise RuntimeError("write after write_eof")
        assert self.transport is not None
        self.transport.write(data)
        self.bytes_sent += len(data)

    def write_eof(self) -> None:
        if self._eof_sent or self._closing or self._lost:
            return
        self._eof_sent = True
        assert self.transport is not None
        self.transport.write_eof()


async def connect_tcp(host: str, port: int) -> TcpStream:
    """A `TcpStream` connected to host:port; raises OSError (e.g. ConnectionRefusedError).

    An IP address is connected here rather than by `loop.create_connection`: a connection to a
    local destination (loopback, a veth to a pod on this node) is usually established when the
    non-blocking connect() returns, and then no loop iteration (nor writer registration) waits for
    it. A name goes through `create_connection` and its resolver.
    """
    loop = asyncio.get_running_loop()
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    try:
        socket.inet_pton(family, host)
    except OSError:
        _, stream = await loop.create_connection(TcpStream, host, port)
        assert isinstance(stream, TcpStream)
        return stream
    sock = socket.socket(family, socket.SOCK_STREAM)
    try:
        sock.setblocking(False)
        error = sock.connect_ex((host, port))
        if error == errno.EINPROGRESS:
            if not _established(sock):
                await _writable(loop, sock)
            error = sock.getsockopt(socket.SOL_SOCKET, socket.SO_ERROR)
        if error:
            raise OSError(error, os.strerror(error))
        _, stream = await loop.create_connection(TcpStream, sock=sock)
    except BaseException:
        sock.close()
        raise
    assert isinstance(stream, TcpStream)
    return stream


def _established(sock: socket.socket) -> bool:
    try:
        sock.getpeername()
    except OSError:  # ENOTCONN: the handshake is still in progress (or failed: SO_ERROR says)
        return False
    return True


async def _writable(loop: asyncio.AbstractEventLoop, sock: socket.socket) -> None:
    """Until a connecting socket is writable (connected or failed)."""
    done = loop.create_future()

    def ready() -> None:
        if not done.done():
            done.set_result(None)

    fd = sock.fileno()
    loop.add_writer(fd, ready)
    try:
        await done
    finally:
        loop.remove_writer(fd)
