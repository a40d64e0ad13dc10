"""A small gRPC client on HTTP/2 (the `h2` protocol library) and asyncio.

Gateways and agents make two kinds of calls to their control plane: one long server stream
(`Watch`) and a few small unary calls (`Register`, `Ack`, `Report`). grpcio's client cost each of
them about 12 MB of resident memory (its C core library, four event-engine threads and their heap)
for that. This module speaks gRPC's HTTP/2 mapping itself (grpc/doc/PROTOCOL-HTTP2.md): a POST per
call with `content-type: application/grpc`, `te: trailers` and `grpc-timeout`; messages framed as
a compressed flag, a 4-byte big-endian length and the bytes; the status in `grpc-status` and
`grpc-message` trailers (or a trailers-only response). The control plane's server is grpcio.

What it does not do, because these clients never need it: compression (none is offered, and a
compressed message is an error), client streaming, name resolution beyond one address, and
retries (callers reconnect with their own backoff).

Every failure is an `RPCError` with a gRPC status code name: a connection that cannot be made or
breaks is UNAVAILABLE, a deadline that passes is DEADLINE_EXCEEDED, a peer that does not speak
gRPC is UNKNOWN or INTERNAL, and a message over the size limit is RESOURCE_EXHAUSTED. Keepalive
pings find a peer that vanished without closing the connection.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import ssl
import struct
from collections.abc import AsyncIterator, Sequence
from urllib.parse import unquote

import h2.config
import h2.connection
import h2.errors
import h2.events
import h2.exceptions
import h2.settings

CODES = ("OK", "CANCELLED", "UNKNOWN", "INVALID_ARGUMENT", "DEADLINE_EXCEEDED", "NOT_FOUND", "ALREADY_EXISTS",
         "PERMISSION_DENIED", "RESOURCE_EXHAUSTED", "FAILED_PRECONDITION", "ABORTED", "OUT_OF_RANGE",
         "UNIMPLEMENTED", "INTERNAL", "UNAVAILABLE", "DATA_LOSS", "UNAUTHENTICATED")

# When a response has no grpc-status, its HTTP status says what happened (the gRPC spec's table).
_HTTP_CODES = {400: "INTERNAL", 401: "UNAUTHENTICATED", 403: "PERMISSION_DENIED", 404: "UNIMPLEMENTED",
               429: "UNAVAILABLE", 502: "UNAVAILABLE", 503: "UNAVAILABLE", 504: "UNAVAILABLE"}

# RST_STREAM error codes as gRPC statuses (the same spec).
_RESET_CODES = {h2.errors.ErrorCodes.NO_ERROR: "INTERNAL", h2.errors.ErrorCodes.REFUSED_STREAM: "UNAVAILABLE",
                h2.errors.ErrorCodes.CANCEL: "CANCELLED", h2.errors.ErrorCodes.ENHANCE_YOUR_CALM: "RESOURCE_EXHAUSTED",
                h2.errors.ErrorCodes.INADEQUATE_SECURITY: "PERMISSION_DENIED"}

DEFAULT_MAX_RECEIVE = 64 * 1024 * 1024
_WINDOW = 16 * 1024 * 1024  # what we let the server send ahead, per stream and per connection
_READ_SIZE = 256 * 1024
_HEADER = struct.Struct(">BI")

log = logging.getLogger(__name__)


class RPCError(Exception):
    """A call failed: `code` is the gRPC status code name, `details` the server's or our message."""

    def __init__(self, code: str, details: str) -> None:
        super().__init__(f"{code}: {details}")
        self.code = code
        self.details = details


def status_name(value: str | None) -> str:
    """The code name of a `grpc-status` value (UNKNOWN for anything that is not one)."""
    if value is not None and value.isdigit() and int(value) < len(CODES):
        return CODES[int(value)]
    return "UNKNOWN"


def frame(message: bytes) -> bytes:
    """One uncompressed gRPC length-prefixed message."""
    return _HEADER.pack(0, len(message)) + message


def timeout_header(seconds: float) -> str:
    """`grpc-timeout` for a deadline `seconds` from now: at most 8 digits, rounded up."""
    ms = max(1, int(seconds * 1000 + 0.999))
    return f"{ms}m" if ms < 100_000_000 else f"{min(99_999_999, int(seconds) + 1)}S"


class _Stream:
    """One call's response side: headers, messages as they complete, and how it ended."""

    def __init__(self, max_receive: int) -> None:
        self.max_receive = max_receive
        self.headers: dict[str, str] | None = None
        self.accepted = asyncio.Event()  # response headers arrived, or the call ended
        self.messages: asyncio.Queue[bytes | None] = asyncio.Queue()  # None: the call ended
        self.error: RPCError | None = None
        self.ended = False
        self.received = 0  # complete messages so far
        self._buf = bytearray()

    def on_headers(self, headers: dict[str, str], ended: bool) -> None:
        self.headers = headers
        status = headers.get(":status", "")
        if status != "200":
            code = _HTTP_CODES.get(int(status) if status.isdigit() else 0, "UNKNOWN")
            self.fail(RPCError(code, f"the server answered HTTP {status or '(no status)'}, not gRPC"))
        elif not headers.get("content-type", "").startswith("application/grpc"):
            self.fail(RPCError("UNKNOWN", f"the server answered with content-type "
                                          f"{headers.get('content-type', '(none)')!r}, not gRPC"))
        elif ended or "grpc-status" in headers:  # trailers-only
            self.on_trailers(headers)
        self.accepted.set()

    def on_data(self, data: bytes) -> RPCError | None:
        """Take bytes of the body; an error when they cannot be a gRPC message stream."""
        if self.ended:
            return None
        buf = self._buf
        buf += data
        while len(buf) >= 5:
            flag, length = _HEADER.unpack_from(buf)
            if flag not in (0, 1):
                return self.fail(RPCError("INTERNAL", f"bad gRPC message prefix (flag {flag})"))
            if flag == 1:
                return self.fail(RPCError("INTERNAL", "the server sent a compressed message; none was offered"))
            if length > self.max_receive:
                return self.fail(RPCError("RESOURCE_EXHAUSTED", f"a message of {length} bytes is over the limit "
                                                                f"of {self.max_receive}"))
            if len(buf) < 5 + length:
                break
            self.messages.put_nowait(bytes(buf[5:5 + length]))
            self.received += 1
            del buf[:5 + length]
        return None

    def on_trailers(self, trailers: dict[str, str]) -> None:
        if self.ended:
            return
        code = status_name(trailers.get("grpc-status"))
        if "grpc-status" not in trailers:
            self.fail(RPCError("INTERNAL", "the server ended the call without a grpc-status"))
        elif code != "OK":
            self.fail(RPCError(code, unquote(trailers.get("grpc-message", "")) or f"call failed ({code})"))
        elif self._buf:
            self.fail(RPCError("INTERNAL", f"the call ended inside a message ({len(self._buf)} bytes left)"))
        else:
            self._end()

    def on_end(self) -> None:
        """The server's half of the stream ended; without trailers that is an error."""
        if not self.ended:
            self.fail(RPCError("INTERNAL", "the server ended the call without trailers"))

    def fail(self, error: RPCError) -> RPCError:
        if not self.ended:
            self.error = error
            self._end()
        return error

    def _end(self) -> None:
        self.ended = True
        self.accepted.set()
        self.messages.put_nowait(None)


class Connection:
    """One HTTP/2 connection to the server. Made by `Channel`; not shared across event loops."""

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter, *, authority: str, scheme: str,
                 max_receive: int, keepalive: float, keepalive_timeout: float) -> None:
        self._reader = reader
        self._writer = writer
        self.authority = authority
        self.scheme = scheme
        self._max_receive = max_receive
        self._h2 = h2.connection.H2Connection(h2.config.H2Configuration(client_side=True, header_encoding="utf-8"))
        self._streams: dict[int, _Stream] = {}
        self._window_open = asyncio.Event()
        self.closed: RPCError | None = None  # why no new call can start here
        self._pong = asyncio.Event()
        self._h2.local_settings = h2.settings.Settings(client=True, initial_values={
            h2.settings.SettingCodes.INITIAL_WINDOW_SIZE: _WINDOW,
            h2.settings.SettingCodes.ENABLE_PUSH: 0,
            h2.settings.SettingCodes.MAX_HEADER_LIST_SIZE: 64 * 1024})
        self._h2.initiate_connection()
        self._h2.increment_flow_control_window(_WINDOW - 65_535)
        self._flush()
        self._tasks = [asyncio.ensure_future(self._read_loop())]
        if keepalive > 0:
            self._tasks.append(asyncio.ensure_future(self._keepalive(keepalive, keepalive_timeout)))

    def _flush(self) -> None:
        data = self._h2.data_to_send()
        if data and not self._writer.is_closing():
            self._writer.write(data)

    async def _read_loop(self) -> None:
        try:
            first = b""  # the server's preface must be a SETTINGS frame (RFC 9113 3.4): type 4 in byte 3
            while len(first) < 4 and (chunk := await self._reader.read(_READ_SIZE)):
                first += chunk
            if first and (len(first) < 4 or first[3] != 0x4):
                self._shut(RPCError("UNAVAILABLE", f"the server does not speak HTTP/2 (it sent {first!r})"))
                return
            data = first
            while True:
                if not data:
                    self._shut(RPCError("UNAVAILABLE", "the control plane closed the connection"))
                    return
                try:
                    events = self._h2.receive_data(data)
                except h2.exceptions.ProtocolError as exc:
                    self._flush()  # h2 queued a GOAWAY
                    self._shut(RPCError("UNAVAILABLE", f"the server broke the HTTP/2 protocol: {exc}"))
                    return
                for event in events:
                    self._handle(event)
                self._flush()
                data = await self._reader.read(_READ_SIZE)
        except (OSError, ssl.SSLError) as exc:
            self._shut(RPCError("UNAVAILABLE", f"the connection to the control plane broke: {exc}"))
        except Exception as exc:  # a bug of ours or h2's: end every call now instead of leaving them waiting
            log.exception("gRPC connection to %s failed", self.authority)
            self._shut(RPCError("INTERNAL", f"the client failed reading the connection: {exc!r}"))

    def _handle(self, event: h2.events.Event) -> None:
        if isinstance(event, h2.events.DataReceived):
            self._h2.acknowledge_received_data(event.flow_controlled_length, event.stream_id)
            stream = self._streams.get(event.stream_id)
            if stream is not None and stream.on_data(event.data) is not None:
                self._cancel(event.stream_id)
        elif isinstance(event, (h2.events.ResponseReceived, h2.events.TrailersReceived)):
            stream = self._streams.get(event.stream_id)
            if stream is not None:
                headers = dict(event.headers)  # type: ignore[arg-type]
                if isinstance(event, h2.events.ResponseReceived):
                    stream.on_headers(headers, event.stream_ended is not None)
                else:
                    stream.on_trailers(headers)
        elif isinstance(event, h2.events.StreamEnded):
            stream = self._streams.pop(event.stream_id, None)
            if stream is not None:
                stream.on_end()
        elif isinstance(event, h2.events.StreamReset):
            stream = self._streams.pop(event.stream_id, None)
            if stream is not None:
                code = _RESET_CODES.get(event.error_code, "INTERNAL")  # type: ignore[call-overload]
                stream.fail(RPCError(code, f"the server reset the call ({event.error_code!r})"))
        elif isinstance(event, h2.events.ConnectionTerminated):
            why = RPCError("UNAVAILABLE", f"the server closed the connection (GOAWAY {event.error_code!r})")
            self.closed = self.closed or why
            last = event.last_stream_id or 0
            for sid in [s for s in self._streams if s > last]:
                self._streams.pop(sid).fail(why)
            if not self._streams:
                self._shut(why)
        elif isinstance(event, h2.events.PingAckReceived):
            self._pong.set()
        elif isinstance(event, (h2.events.WindowUpdated, h2.events.RemoteSettingsChanged)):
            self._window_open.set()

    async def _keepalive(self, interval: float, timeout: float) -> None:
        while self.closed is None:
            await asyncio.sleep(interval)
            self._pong.clear()
            try:
                self._h2.ping(b"clkeepal")
                self._flush()
            except h2.exceptions.ProtocolError:
                return
            try:
                await asyncio.wait_for(self._pong.wait(), timeout)
            except asyncio.TimeoutError:
                self._shut(RPCError("UNAVAILABLE", f"the control plane did not answer a keepalive ping in "
                                                   f"{timeout:g} s"))
                return

    def _shut(self, why: RPCError) -> None:
        self.closed = self.closed or why
        for stream in self._streams.values():
            stream.fail(why)
        self._streams.clear()
        self._window_open.set()
        self._writer.close()

    def _cancel(self, stream_id: int) -> None:
        self._streams.pop(stream_id, None)
        with contextlib.suppress(h2.exceptions.H2Error):
            self._h2.reset_stream(stream_id, h2.errors.ErrorCodes.CANCEL)
            self._flush()

    async def start(self, path: str, request: bytes, metadata: Sequence[tuple[str, str]],
                    timeout: float | None) -> tuple[int, _Stream]:
        """Send one call's headers and its one request message; the stream id and response side."""
        if self.closed is not None:
            raise self.closed
        sid = self._h2.get_next_available_stream_id()
        headers = [(":method", "POST"), (":scheme", self.scheme), (":path", path), (":authority", self.authority),
                   ("te", "trailers"), ("content-type", "application/grpc"), ("user-agent", "clusterlink-grpcwire")]
        if timeout is not None:
            headers.append(("grpc-timeout", timeout_header(timeout)))
        headers += [(k.lower(), v) for k, v in metadata]
        stream = _Stream(self._max_receive)
        self._streams[sid] = stream
        try:
            await self._send(sid, headers, request)
        except (h2.exceptions.H2Error, OSError, ssl.SSLError) as exc:  # the connection broke or is closing
            self._streams.pop(sid, None)
            raise self.closed or RPCError("UNAVAILABLE", f"cannot send the call {path}: {exc}") from None
        return sid, stream

    async def _send(self, sid: int, headers: list[tuple[str, str]], request: bytes) -> None:
        self._h2.send_headers(sid, headers)
        body = memoryview(frame(request))
        while body:
            if self.closed is not None:
                raise self.closed
            size = min(len(body), self._h2.local_flow_control_window(sid), self._h2.max_outbound_frame_size)
            if size <= 0:
                self._window_open.clear()
                self._flush()
                await self._window_open.wait()
                continue
            self._h2.send_data(sid, body[:size].tobytes())
            body = body[size:]
        self._h2.end_stream(sid)
        self._flush()
        await self._writer.drain()

    def abandon(self, stream_id: int, stream: _Stream) -> None:
        """The caller gave up on a call (cancelled, deadline): reset it if it is still open."""
        if not stream.ended:
            self._cancel(stream_id)

    async def close(self) -> None:
        if self.closed is None:
            with contextlib.suppress(h2.exceptions.H2Error):
                self._h2.close_connection()
                self._flush()
        self._shut(RPCError("CANCELLED", "the channel was closed"))
        for task in self._tasks:
            task.cancel()
        for task in self._tasks:
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await task
        try:  # a TLS peer may never answer our close_notify: do not wait for it long
            await asyncio.wait_for(self._writer.wait_closed(), 1.0)
        except (OSError, ssl.SSLError, asyncio.TimeoutError):
            self._writer.transport.abort()


class StreamCall:
    """A server-streaming call: `await accepted()`, then `async for message in call`."""

    def __init__(self, channel: Channel, path: str, request: bytes, metadata: Sequence[tuple[str, str]]) -> None:
        self._channel = channel
        self._args = (path, request, metadata)
        self._started: tuple[Connection, int, _Stream] | None = None

    async def _start(self) -> tuple[Connection, int, _Stream]:
        if self._started is None:
            conn = await self._channel.connection()
            sid, stream = await conn.start(*self._args, None)
            self._started = (conn, sid, stream)
        return self._started

    async def accepted(self) -> None:
        """Return once the server accepted the call (sent its headers); RPCError if it refused it."""
        _, _, stream = await self._start()
        await stream.accepted.wait()
        if stream.error is not None and not stream.received:  # refused (or broken) before any message
            raise stream.error

    async def __aiter__(self) -> AsyncIterator[bytes]:
        conn, sid, stream = await self._start()
        try:
            while True:
                message = await stream.messages.get()
                if message is None:
                    if stream.error is not None:
                        raise stream.error
                    return
                yield message
        finally:
            conn.abandon(sid, stream)


class Channel:
    """Calls to one server address, on one HTTP/2 connection made when first needed and made again
    after it broke. `target` is `unix:/path` (plaintext HTTP/2) or `host:port` with `ssl_context`
    (TLS with ALPN h2; `server_name` is the name checked in its certificate, default the host)."""

    def __init__(self, target: str, *, ssl_context: ssl.SSLContext | None = None, server_name: str = "",
                 max_receive: int = DEFAULT_MAX_RECEIVE, keepalive: float = 10.0, keepalive_timeout: float = 5.0,
                 connect_timeout: float = 10.0) -> None:
        self.target = target
        self._ssl = ssl_context
        self._server_name = server_name
        self._max_receive = max_receive
        self._keepalive = (keepalive, keepalive_timeout)
        self._connect_timeout = connect_timeout
        self._conn: Connection | None = None
        self._lock = asyncio.Lock()

    async def connection(self) -> Connection:
        async with self._lock:
            if self._conn is None or self._conn.closed is not None:
                if self._conn is not None:
                    await self._conn.close()
                self._conn = await self._connect()
            return self._conn

    async def _connect(self) -> Connection:
        target = self.target
        try:
            if target.startswith("unix:"):
                path = target[len("unix:"):].removeprefix("//")
                opened = asyncio.open_unix_connection(path)
                authority, scheme = "localhost", "http"
            else:
                host, sep, port = target.rpartition(":")
                if not sep or not port.isdigit():
                    raise RPCError("INVALID_ARGUMENT", f"bad control plane address {target!r}: want host:port or "
                                                       "unix:/path")
                host = host.strip("[]")
                if self._ssl is None:
                    raise RPCError("INVALID_ARGUMENT", f"a TCP address ({target}) needs TLS")
                opened = asyncio.open_connection(host, int(port), ssl=self._ssl,
                                                 server_hostname=self._server_name or host)
                authority, scheme = target, "https"
            reader, writer = await asyncio.wait_for(opened, self._connect_timeout)
        except asyncio.TimeoutError:
            raise RPCError("UNAVAILABLE", f"connecting to {target} timed out after {self._connect_timeout:g} s") \
                from None
        except ssl.SSLError as exc:
            raise RPCError("UNAVAILABLE", f"TLS with {target} failed: {exc.reason or exc}") from None
        except OSError as exc:
            raise RPCError("UNAVAILABLE", f"cannot connect to {target}: {exc.strerror or exc}") from None
        if self._ssl is not None:
            alpn = writer.get_extra_info("ssl_object").selected_alpn_protocol()
            if alpn != "h2":
                writer.close()
                raise RPCError("UNAVAILABLE", f"{target} did not agree to HTTP/2 over TLS (ALPN {alpn!r})")
        return Connection(reader, writer, authority=authority, scheme=scheme, max_receive=self._max_receive,
                          keepalive=self._keepalive[0], keepalive_timeout=self._keepalive[1])

    async def unary(self, path: str, request: bytes, *, metadata: Sequence[tuple[str, str]] = (),
                    timeout: float | None = None) -> bytes:
        """One request, one response message; RPCError on any failure."""
        try:
            return await asyncio.wait_for(self._unary(path, request, metadata, timeout), timeout)
        except asyncio.TimeoutError:
            raise RPCError("DEADLINE_EXCEEDED", f"no answer to {path} in {timeout:g} s") from None

    async def _unary(self, path: str, request: bytes, metadata: Sequence[tuple[str, str]],
                     timeout: float | None) -> bytes:
        conn = await self.connection()
        sid, stream = await conn.start(path, request, metadata, timeout)
        try:
            first = await stream.messages.get()
            if first is None:
                raise stream.error or RPCError("INTERNAL", f"{path} answered no message")
            end = await stream.messages.get()
            if end is not None:
                raise RPCError("INTERNAL", f"{path} answered more than one message")
            if stream.error is not None:
                raise stream.error
            return first
        finally:
            conn.abandon(sid, stream)

    def stream(self, path: str, request: bytes, *, metadata: Sequence[tuple[str, str]] = ()) -> StreamCall:
        return StreamCall(self, path, request, metadata)

    async def close(self) -> None:
        async with self._lock:
            if self._conn is not None:
                await self._conn.close()
                self._conn = None


def tls_context(ca_pem: str | None) -> ssl.SSLContext:
    """A client context that offers HTTP/2 and trusts the CAs in `ca_pem` (None: the system's);
    ValueError when the text holds no usable certificate."""
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    ctx.minimum_version = ssl.TLSVersion.TLSv1_2
    if ca_pem is None:
        ctx.load_default_certs()
    else:
        try:
            ctx.load_verify_locations(cadata=ca_pem)
        except (ssl.SSLError, ValueError) as exc:
            raise ValueError(f"no PEM certificate ({getattr(exc, 'reason', None) or exc})") from None
    ctx.set_alpn_protocols(["h2"])
    return ctx
