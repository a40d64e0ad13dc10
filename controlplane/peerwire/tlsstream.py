"""TLS on a `Stream`, done here on memory BIOs (`ssl.SSLObject`) rather than with asyncio's
`ssl=` transport.

Why: asyncio's SSL transport cannot half-close (its `write_eof()` raises NotImplementedError)
and, when the other side sends close_notify, it shuts its own sending side down and drops what is
written afterwards. A tunnel must carry a half-close in each direction independently (a client
that sends a request, shuts down its sending side and then reads the answer). Here `write_eof()`
sends close_notify and keeps reading, and a received close_notify ends one direction only (TLS
1.3 allows both, and OpenSSL lets us write after receiving close_notify). A TCP FIN without
close_notify after the handshake is a *truncation*, reported as a failure, never as a clean end
of data. The handshake starts when the connection is made (`handshake()` waits for it, bounded by
`handshake_timeout`).
"""

from __future__ import annotations

import asyncio
import socket
import ssl
import time
from collections.abc import Callable

from .stream import READ_SIZE, SMALL_READ_SIZE, Stream, StreamError, tls_reason

_SMALL_FRAME = 16 * 1024


class TlsStream(Stream):
    """A TLS connection, client or server side (see the module docstring).

    The handshake starts when the connection is made; `await handshake()` waits for it (raises
    StreamError with reason `tls` or `timeout`).
    """

    def __init__(self, context: ssl.SSLContext, *, server_side: bool, server_hostname: str | None = None,
                 handshake_timeout: float = 10.0, liveness_timeout: float | None = None,
                 on_open: Callable[[Stream], None] | None = None) -> None:
        super().__init__(on_open=on_open)
        self._liveness_timeout = liveness_timeout
        self._context = context
        self._server_side = server_side
        self._server_hostname = server_hostname
        self._incoming = ssl.MemoryBIO()
        self._outgoing = ssl.MemoryBIO()
        self._ssl: ssl.SSLObject | None = None
        self._plain = bytearray(SMALL_READ_SIZE)  # decrypted bytes; grows like the read buffer
        self._pview = memoryview(self._plain)
        self._handshake_timeout = handshake_timeout
        self._handshake_timer: asyncio.TimerHandle | None = None
        self._handshake_done: asyncio.Future[None] | None = None
        self._handshaked = False
        self._raw_received = 0
        self._discard: int | None = None  # discarding what arrives: bytes still allowed (see `discard_input`)
        self._discard_done: asyncio.Future[None] | None = None
        self.handshake_seconds: float | None = None

    # --- handshake ---------------------------------------------------------------------------

    def _start(self) -> None:
        assert self._loop is not None
        if self._liveness_timeout is not None:
            self._set_liveness(self._liveness_timeout)
        self._handshake_done = self._loop.create_future()
        try:
            self._ssl = self._context.wrap_bio(self._incoming, self._outgoing, server_side=self._server_side,
                                               server_hostname=self._server_hostname)
        except (ssl.SSLError, ValueError) as exc:
            self._handshake_failed(StreamError("tls", f"cannot start TLS: {exc}"))
            return
        self._handshake_timer = self._loop.call_later(self._handshake_timeout, self._handshake_timed_out)
        if not self._server_side:
            self._do_handshake()

    def _set_liveness(self, timeout: float) -> None:
        """Kernel-side liveness of a tunnel to another gateway: an idle connection is probed
        after `timeout` (TCP keepalive, 3 probes 1 s apart), so a peer host that is gone or cut
        off is noticed on an idle tunnel (a plain one included). Not TCP_USER_TIMEOUT: this kernel
        aborts a connection whose peer keeps its window shut for that long (a slow service) even
        though it answers every probe. Framed tunnels also carry heartbeats (`framing`), which a
        frozen or cut-off gateway does not send."""
        assert self.transport is not None
        sock = self.transport.get_extra_info("socket")
        if sock is None:
            return
        try:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_KEEPALIVE, 1)
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_KEEPIDLE, max(1, int(timeout)))
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_KEEPINTVL, 1)
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_KEEPCNT, 3)
        except OSError:
            pass  # closed already: the connection fails on its own

    async def handshake(self) -> None:
        """Wait for the handshake; raises StreamError when it failed."""
        assert self._handshake_done is not None, "handshake() before the connection was made"
        await asyncio.shield(self._handshake_done)
        if not self._handshaked:
            raise self._error or StreamError("tls", "TLS handshake did not complete")

    def _do_handshake(self) -> None:
        assert self._ssl is not None
        try:
            self._ssl.do_handshake()
        except ssl.SSLWantReadError:
            self._flush()
            return
        except (ssl.SSLError, ssl.CertificateError) as exc:
            self._flush()
            self._handshake_failed(StreamError("tls", f"TLS handshake failed: {tls_reason(exc)}"))
            return
        self._handshaked = True
        self.handshake_seconds = time.monotonic() - self.opened_at
        self._cancel_handshake_timer()
        self._flush()
        if self._handshake_done is not None and not self._handshake_done.done():
            self._handshake_done.set_result(None)

    def _handshake_failed(self, error: StreamError) -> None:
        self._cancel_handshake_timer()
        self._fail(error)
        if self._handshake_done is not None and not self._handshake_done.done():
            self._handshake_done.set_result(None)
        if not self._closing and self.transport is not None:
            self._closing = True
            self.transport.close()  # graceful: our alert, if any, still goes out

    def _handshake_timed_out(self) -> None:
        self._handshake_timer = None
        if not self._handshaked:
            self._handshake_failed(StreamError("timeout", f"no TLS handshake within {self._handshake_timeout:g} s"))
            self.abort()

    def _cancel_handshake_timer(self) -> None:
        if self._handshake_timer is not None:
            self._handshake_timer.cancel()
            self._handshake_timer = None

    # --- reading -----------------------------------------------------------------------------

    def buffer_updated(self, nbytes: int) -> None:
        if self._discard is not None:  # neither decrypted nor kept
            self._raw_received += nbytes
            self._discard -= nbytes
            if self._discard <= 0:
                self._end_discard()
            return
        view = self._view
        if nbytes == len(view) and nbytes < READ_SIZE:
            self._grow_read_buffer()
        self._incoming.write(view[:nbytes])
        self._raw_received += nbytes
        if not self._handshaked:
            if self._error is not None:
                return
            self._do_handshake()
            if not self._handshaked:
                return
        self._decrypt()

    def _decrypt(self) -> None:
        assert self._ssl is not None
        read = self._ssl.read
        view = self._pview
        size = len(view)
        offset = 0
        eof = False
        error: ssl.SSLError | None = None
        while True:
            try:
                count = read(size - offset, view[offset:] if offset else view)
            except ssl.SSLWantReadError:
                break
            except ssl.SSLZeroReturnError:
                eof = True
                break
            except ssl.SSLError as exc:
                error = exc
                break
            if count == 0:
                eof = True
                break
            offset += count
            if offset == size:
                if size < READ_SIZE:  # the plaintext streams in: decrypt in large chunks from now on
                    self._plain = bytearray(READ_SIZE)
                    self._pview = memoryview(self._plain)
                self._deliver(view)
                if self._lost or self._closing:
                    return
                view = self._pview
                size = len(view)
                offset = 0
            elif not self._incoming.pending and not self._ssl.pending():
                # Nothing left to decrypt: spare the SSLWantReadError of one more read. (OpenSSL
                # takes records from the BIO one at a time, read_ahead being off: a close_notify
                # or a ticket behind the data is still in the BIO, and then we go on reading.)
                break
        if offset:
            self._deliver(view[:offset])
        self._flush()
        if error is not None:
            self._fail(StreamError("tls", f"TLS error: {tls_reason(error)}"))
            self.abort()
        elif eof:
            self._deliver_eof()

    def renew_read_buffer(self) -> None:
        self._plain = bytearray(len(self._plain))
        self._pview = memoryview(self._plain)

    @property
    def read_buffer_size(self) -> int:
        return super().read_buffer_size + len(self._plain)

    def shrink_read_buffers(self) -> None:
        super().shrink_read_buffers()
        if len(self._plain) > SMALL_READ_SIZE:
            self._plain = bytearray(SMALL_READ_SIZE)
            self._pview = memoryview(self._plain)

    def eof_received(self) -> bool:
        if self._discard is not None:
            self._end_discard()
            return True
        if not self._handshaked:
            if self._raw_received == 0:
                self._handshake_failed(StreamError("closed", "the other side closed the connection without a byte"))
            else:
                self._handshake_failed(StreamError("tls", "the other side closed the connection during the TLS "
                                                          "handshake"))
        elif not self._at_eof:
            self._fail(StreamError("truncated", "the connection ended without a TLS close_notify"))
            self.abort()
        return True

    # --- writing -----------------------------------------------------------------------------

    def _flush(self) -> None:
        if self._outgoing.pending and self.transport is not None and not self._lost:
            self.transport.write(self._outgoing.read())

    def write(self, data: bytes | bytearray | memoryview) -> None:
        if self._closing or self._lost or self._error is not None:
            return
        if not self._handshaked:
            raise RuntimeError("TlsStream.write before the handshake completed")
        if self._eof_sent:
            raise RuntimeError("write after write_eof")
        assert self._ssl is not None and self.transport is not None
        try:
            self._ssl.write(data)
        except ssl.SSLError as exc:
            self._fail(StreamError("tls", f"TLS error: {tls_reason(exc)}"))
            self.abort()
            return
        self.bytes_sent += len(data)
        self.transport.write(self._outgoing.read())

    def write_frame(self, header: bytes, payload: bytes | bytearray | memoryview) -> None:
        """Send `header` then `payload` in one write to the socket (a framed tunnel's data frame;
        small ones in a single TLS record)."""
        if self._closing or self._lost or self._error is not None:
            return
        if not self._handshaked or self._eof_sent:
            raise RuntimeError("TlsStream.write_frame outside an open connection")
        assert self._ssl is not None and self.transport is not None
        try:
            if len(payload) <= _SMALL_FRAME:
                self._ssl.write(header + payload)
            else:
                self._ssl.write(header)
                self._ssl.write(payload)
        except ssl.SSLError as exc:
            self._fail(StreamError("tls", f"TLS error: {tls_reason(exc)}"))
            self.abort()
            return
        self.bytes_sent += len(header) + len(payload)
        self.transport.write(self._outgoing.read())

    def write_eof(self) -> None:
        """Send close_notify; reading goes on until the other side sends its own."""
        if self._eof_sent or self._closing or self._lost or not self._handshaked:
            return
        self._eof_sent = True
        assert self._ssl is not None
        try:
            self._ssl.unwrap()
        except ssl.SSLWantReadError:
            pass  # expected: close_notify is out, the other side's is still to come
        except ssl.SSLError as exc:
            self._fail(StreamError("tls", f"TLS error while closing: {tls_reason(exc)}"))
            self.abort()
            return
        self._flush()

    def close(self) -> None:
        if self._closing or self.transport is None:
            return
        if self._handshaked and self._error is None:
            self.write_eof()
        super().close()

    async def discard_input(self, limit: int, timeout: float) -> bool:
        """After our last answer: drop whatever else arrives, undecrypted and unkept, until the
        other side ends the connection, `limit` bytes or `timeout` seconds (so that closing does not
        reset a connection whose client is still sending before it read the answer). True if the
        other side ended it in time."""
        if self._lost or self.transport is None:
            return True
        assert self._loop is not None
        self._discard = limit
        self._discard_done = self._loop.create_future()
        self._incoming = ssl.MemoryBIO()  # what was buffered but not decrypted: dropped as well
        try:
            await asyncio.wait_for(asyncio.shield(self._discard_done), timeout)
        except TimeoutError:
            return False
        return self._discard > 0

    def _end_discard(self) -> None:
        if self._discard_done is not None and not self._discard_done.done():
            self._discard_done.set_result(None)

    def connection_lost(self, exc: BaseException | None) -> None:
        self._end_discard()
        self._cancel_handshake_timer()
        super().connection_lost(exc)
        if self._handshake_done is not None and not self._handshake_done.done():
            self._handshake_done.set_result(None)

    # --- TLS details -------------------------------------------------------------------------

    @property
    def handshaked(self) -> bool:
        return self._handshaked

    @property
    def ssl_object(self) -> ssl.SSLObject | None:
        return self._ssl

    def peer_certificate(self) -> dict | None:
        return self._ssl.getpeercert() if self._ssl is not None and self._handshaked else None

    @property
    def session_reused(self) -> bool:
        return bool(self._ssl is not None and self._handshaked and self._ssl.session_reused)
