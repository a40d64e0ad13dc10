"""The server side of the peer protocol's HTTP framing, sans-IO: bytes in, requests out,
responses out as bytes (h11 underneath, never exposed).

A `ServerConnection` serves keep-alive HTTP/1.1 requests one after the other. `next_request()`
returns a complete `Request` (headers and body), `NEED_DATA`, or `CLOSED` (the client closed the
connection between requests), and raises `BadRequest` when the client misbehaved: malformed HTTP
(400), a header block over the limit (431), a body over the limit (413), or a connection cut in
the middle of a request (400). After `BadRequest`, answer with `respond(..., close=True)` and
close. A `CONNECT` that is accepted with `accept_connect()` turns the connection into a raw byte
stream; the bytes the client sent after its request are in `trailing_data`. A refused CONNECT is
answered with `close=True`: the client may already have sent application bytes after it.

The 200 that accepts a CONNECT is the same bytes every time: a server that accepts many makes them
once (`connect_accepted(headers)`) and calls `switch_to_tunnel()`, which checks the state and
switches, instead of `accept_connect()`, which serializes the answer again.
"""

from __future__ import annotations

from dataclasses import dataclass
from http import HTTPStatus

import h11

from .codec import MAX_BODY_BYTES

DEFAULT_MAX_HEADER_BYTES = 16 * 1024


class _Sentinel:
    def __init__(self, name: str) -> None:
        self._name = name

    def __repr__(self) -> str:
        return self._name


NEED_DATA = _Sentinel("NEED_DATA")
CLOSED = _Sentinel("CLOSED")


class BadRequest(Exception):
    """The client sent something that is not an acceptable HTTP request; `status` is the answer."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status


@dataclass(frozen=True)
class Request:
    """A complete request. Header names are lower-case; `body` is empty for GET and CONNECT."""

    method: str
    target: str
    headers: tuple[tuple[str, str], ...]
    body: bytes = b""

    def header(self, name: str) -> str | None:
        """The first value of header `name` (case-insensitive), or None."""
        name = name.lower()
        for key, value in self.headers:
            if key == name:
                return value
        return None


def header_size(first: bytes, headers) -> int:  # type: ignore[no-untyped-def]
    """About the size of a header block on the wire: the start line and `name: value` lines."""
    return len(first) + 16 + sum(len(name) + len(value) + 4 for name, value in headers)


CONNECT_REASON = "Connection established"


def connect_accepted(headers: tuple[tuple[str, str], ...] = ()) -> bytes:
    """The bytes of the 200 that accepts a CONNECT, with `headers` (serialized by h11)."""
    server = h11.Connection(h11.SERVER)
    server.receive_data(b"CONNECT peer:443 HTTP/1.1\r\nHost: peer:443\r\n\r\n")
    while not isinstance(server.next_event(), h11.EndOfMessage):
        pass
    return server.send(h11.Response(status_code=200, headers=list(headers), reason=CONNECT_REASON))


def reason_phrase(status: int) -> str:
    try:
        return HTTPStatus(status).phrase
    except ValueError:
        return ""


class ServerConnection:
    """One client connection's HTTP state (see the module docstring)."""

    def __init__(self, *, max_header_bytes: int = DEFAULT_MAX_HEADER_BYTES,
                 max_body_bytes: int = MAX_BODY_BYTES) -> None:
        self._h11 = h11.Connection(h11.SERVER, max_incomplete_event_size=max_header_bytes)
        self._max_header = max_header_bytes
        self._max_body = max_body_bytes
        self._request: h11.Request | None = None
        self._headers: list[tuple[bytes, bytes]] = []
        self._body = bytearray()
        self._switched = False
        self._connect_pending = False  # the last complete request was a CONNECT (not answered yet)

    # --- input -------------------------------------------------------------------------------

    def receive_data(self, data: bytes) -> None:
        """Feed bytes from the client; b"" means the client closed its side."""
        try:
            self._h11.receive_data(data)
        except RuntimeError as exc:  # h11 refuses data after EOF was fed: the caller's bug
            raise RuntimeError(f"ServerConnection.receive_data after end of input: {exc}") from None

    @property
    def has_pending_bytes(self) -> bool:
        """Whether part of a next request has arrived (some bytes are buffered)."""
        return bool(self._h11.trailing_data[0]) or self._request is not None

    def next_request(self) -> Request | _Sentinel:
        """The next complete request, NEED_DATA or CLOSED; raises BadRequest."""
        if self._switched:
            raise RuntimeError("next_request on a connection switched to a CONNECT tunnel")
        if self._h11.our_state is h11.DONE and self._h11.their_state is h11.DONE:
            self._h11.start_next_cycle()
        try:
            while True:
                event = self._h11.next_event()
                if event is h11.NEED_DATA:
                    return NEED_DATA
                if isinstance(event, h11.Request):
                    self._start(event)
                elif isinstance(event, h11.Data):
                    self._body += event.data
                    if len(self._body) > self._max_body:
                        raise BadRequest(413, f"request body exceeds {self._max_body} bytes")
                elif isinstance(event, h11.EndOfMessage):
                    return self._finish()
                elif isinstance(event, h11.ConnectionClosed):
                    return CLOSED
                elif event is h11.PAUSED:
                    raise RuntimeError("next_request called before the previous request was answered")
        except h11.RemoteProtocolError as exc:
            raise BadRequest(exc.error_status_hint, str(exc)) from None

    def _start(self, event: h11.Request) -> None:
        # One pass over the headers (h11's `Headers` is slow to iterate as a Sequence).
        headers = [(name.lower(), value) for name, value in event.headers.raw_items()]
        # h11 bounds a header block that arrives in pieces; one that arrives whole is checked here.
        if header_size(event.target, headers) > self._max_header:
            raise BadRequest(431, f"request header block exceeds {self._max_header} bytes")
        length = None
        for name, value in headers:
            if name == b"content-length":
                length = int(value)  # h11 validated it
        if length is not None and length > self._max_body:
            raise BadRequest(413, f"request body of {length} bytes exceeds {self._max_body}")
        self._request = event
        self._headers = headers
        self._body = bytearray()

    def _finish(self) -> Request:
        event = self._request
        assert event is not None
        self._request = None
        self._connect_pending = event.method == b"CONNECT"
        headers = tuple([(k.decode("latin-1"), v.decode("latin-1")) for k, v in self._headers])
        return Request(method=event.method.decode("ascii", "replace"),
                       target=event.target.decode("latin-1"), headers=headers,
                       body=bytes(self._body) if self._body else b"")

    # --- output ------------------------------------------------------------------------------

    def respond(self, status: int, *, headers: tuple[tuple[str, str], ...] | list[tuple[str, str]] = (),
                body: bytes = b"", close: bool = False) -> bytes:
        """The bytes of a complete response. `close` announces that the connection ends after it."""
        self._connect_pending = False
        out = [("Content-Length", str(len(body))), *headers]
        if close:
            out.append(("Connection", "close"))
        response = h11.Response(status_code=status, headers=out, reason=reason_phrase(status))
        data = self._h11.send(response)
        if body:
            data += self._h11.send(h11.Data(data=body))
        data += self._h11.send(h11.EndOfMessage())
        return data

    def accept_connect(self, headers: tuple[tuple[str, str], ...] = ()) -> bytes:
        """The 200 that accepts a CONNECT; the connection carries raw bytes from here on."""
        self.switch_to_tunnel()
        return connect_accepted(headers)

    def switch_to_tunnel(self) -> None:
        """Accept the current CONNECT request without serializing the answer: the caller sends
        bytes it made with `connect_accepted()`. The connection carries raw bytes from here on."""
        if self._switched or not self._connect_pending or self._h11.our_state is not h11.SEND_RESPONSE or \
                self._h11.their_state is not h11.MIGHT_SWITCH_PROTOCOL:
            raise RuntimeError("switch_to_tunnel: the current request is not a complete CONNECT")
        self._switched = True

    @property
    def trailing_data(self) -> bytes:
        """Bytes received after the accepted CONNECT request (the client's first application bytes)."""
        return bytes(self._h11.trailing_data[0])

    @property
    def keep_alive(self) -> bool:
        """Whether another request may follow on this connection."""
        return not self._switched and self._h11.our_state is h11.DONE and self._h11.their_state is h11.DONE
