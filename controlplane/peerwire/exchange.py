"""The client side of the peer protocol's HTTP framing, sans-IO: requests out as bytes, bytes in,
responses out (h11 underneath, never exposed).

A `ClientConnection` sends one request at a time on a keep-alive HTTP/1.1 connection to a remote
gateway: `healthz()`, `authz(...)` and finally `connect(token)`, each returning the bytes to
write. `next_response()` returns a complete `Response` or `NEED_DATA`, and raises
`ResponseError` when the server misbehaved or closed the connection before a complete response.
The response to an accepted CONNECT (2xx) is returned as soon as its header arrives; from then on
the connection carries raw bytes, the first of which (sent by the server right after its
response) are in `trailing_data`.

CONNECT, sent for every application connection, has a fast path: its request (a fixed shape; the
token is checked to be a plain header value) is formatted directly, and an answer whose head is a
plain `HTTP/1.1 2xx` with simple `name: value` lines is parsed directly too. Any other answer (an
error status with its body, an informational response, anything unusual or malformed) is handed
to h11, brought first into the state it would have after sending the same request, so that h11
decides everything but the common case, exactly as before.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

import h11

from .codec import (
    ACCESS_TOKEN_HEADER,
    AUTHORIZATION_HEADER,
    AUTHZ_PATH,
    HEALTHZ_PATH,
    MAX_BODY_BYTES,
    AuthzRequest,
    connect_authority,
    encode_authz_request,
)
from .framing import FRAMED, TUNNEL_HEADER
from .datagrams import PROTOCOL_HEADER, UDP
from .server import NEED_DATA, _Sentinel, header_size

DEFAULT_MAX_HEADER_BYTES = 16 * 1024
USER_AGENT = "clusterlink-gateway"

# The fast path of CONNECT (see the module docstring): what it formats and parses itself.
_PLAIN_VALUE = re.compile(r"[!-~]+")  # a token or peer name that is safe in a header as it is
_HEAD_END = re.compile(rb"\n\r?\n")  # where h11 sees the end of a head (it also takes bare LFs)
_SUCCESS_START = b"HTTP/1.1 2"
_SUCCESS_LINE = re.compile(rb"HTTP/1\.1 (2[0-9][0-9])(?: ([ -~]*))?")
_H11_CHECKS = (b"content-length", b"transfer-encoding")  # h11 validates these even on a 2xx to CONNECT
_HEADER_LINE = re.compile(rb"([!#$%&'*+\-.^_`|~0-9A-Za-z]+):[ \t]*((?:[!-~](?:[ \t!-~]*[!-~])?)?)[ \t]*")


class ResponseError(Exception):
    """The server's answer is not a usable HTTP response (or there was none)."""


@dataclass(frozen=True)
class Response:
    status: int
    reason: str
    headers: tuple[tuple[str, str], ...]
    body: bytes = b""

    def header(self, name: str) -> str | None:
        name = name.lower()
        for key, value in self.headers:
            if key == name:
                return value
        return None

    @property
    def access_token(self) -> str | None:
        return self.header(ACCESS_TOKEN_HEADER)

    @property
    def framing(self) -> bool:
        """The server supports framed tunnels (on a CONNECT answer: this tunnel is framed)."""
        return self.header(TUNNEL_HEADER) == FRAMED

    def summary(self) -> str:
        """Status and (shortened) body, for messages: `403 Forbidden: denied by policy ns/p`."""
        text = self.body[:200].decode("utf-8", "replace").strip()
        head = f"{self.status} {self.reason}".strip()
        return f"{head}: {text}" if text else head


class ClientConnection:
    """One connection's HTTP state, client side (see the module docstring)."""

    def __init__(self, peer_name: str, *, max_header_bytes: int = DEFAULT_MAX_HEADER_BYTES,
                 max_body_bytes: int = MAX_BODY_BYTES) -> None:
        self.peer_name = peer_name
        self._h11 = h11.Connection(h11.CLIENT, max_incomplete_event_size=max_header_bytes)
        self._max_header = max_header_bytes
        self._max_body = max_body_bytes
        self._response: h11.Response | None = None
        self._body = bytearray()
        self._connecting = False
        self._switched = False
        self._closed = False
        # A CONNECT sent on the fast path: its (token, framed), and the answer's bytes so far.
        self._fast: tuple[str, bool, bool] | None = None
        self._fast_in = bytearray()
        self._fast_trailing = b""

    # --- requests ----------------------------------------------------------------------------

    def _ready_for_request(self) -> None:
        if self._switched:
            raise RuntimeError("request on a connection switched to a CONNECT tunnel")
        if self._fast is not None:
            raise RuntimeError("request while the previous exchange is unfinished (CONNECT)")
        if self._h11.our_state is h11.DONE and self._h11.their_state is h11.DONE:
            self._h11.start_next_cycle()
        if self._h11.our_state is not h11.IDLE:
            raise RuntimeError(f"request while the previous exchange is unfinished ({self._h11.our_state})")

    def _request(self, method: str, target: str, headers: list[tuple[str, str]], body: bytes = b"") -> bytes:
        self._ready_for_request()
        host = target if method == "CONNECT" else self.peer_name
        all_headers = [("Host", host), ("User-Agent", USER_AGENT), *headers]
        if method != "CONNECT":
            all_headers.append(("Content-Length", str(len(body))))
        data = self._h11.send(h11.Request(method=method, target=target, headers=all_headers))
        if body:
            data += self._h11.send(h11.Data(data=body))
        return data + self._h11.send(h11.EndOfMessage())

    def healthz(self) -> bytes:
        return self._request("GET", HEALTHZ_PATH, [])

    def authz(self, request: AuthzRequest) -> bytes:
        return self._request("POST", AUTHZ_PATH, [("Content-Type", "application/json")],
                             encode_authz_request(request))

    def connect(self, token: str, *, framed: bool = False, udp: bool = False) -> bytes:
        """CONNECT with the token; `framed` asks for a framed tunnel (see `framing`); `udp`: the
        tunnel carries one UDP flow as datagram capsules (see `datagrams`)."""
        if not (_PLAIN_VALUE.fullmatch(token) and _PLAIN_VALUE.fullmatch(self.peer_name)):
            self._connecting = True
            return self._request("CONNECT", *self._connect_request(token, framed, udp))
        self._ready_for_request()
        self._connecting = True
        self._fast = (token, framed, udp)
        authority = connect_authority(self.peer_name)
        extra = f"{TUNNEL_HEADER}: {FRAMED}\r\n" if framed else ""
        if udp:
            extra += f"{PROTOCOL_HEADER}: {UDP}\r\n"
        return (f"CONNECT {authority} HTTP/1.1\r\nHost: {authority}\r\nUser-Agent: {USER_AGENT}\r\n"
                f"{AUTHORIZATION_HEADER}: Bearer {token}\r\n{extra}\r\n").encode("ascii")

    def _connect_request(self, token: str, framed: bool, udp: bool = False) -> tuple[str, list[tuple[str, str]]]:
        headers = [(AUTHORIZATION_HEADER, f"Bearer {token}")]
        if framed:
            headers.append((TUNNEL_HEADER, FRAMED))
        if udp:
            headers.append((PROTOCOL_HEADER, UDP))
        return connect_authority(self.peer_name), headers

    def _fast_response(self) -> Response | _Sentinel:
        """The answer to a CONNECT sent on the fast path (see the module docstring)."""
        data = self._fast_in
        found = _HEAD_END.search(data, 0, self._max_header + 4)
        if found is None:
            start = min(len(data), len(_SUCCESS_START))
            if len(data) <= self._max_header and not self._closed and data[:start] == _SUCCESS_START[:start]:
                return NEED_DATA
            return self._to_h11()  # h11 may know already that this is not a 2xx (or is malformed)
        end = found.start() - 1  # where "\r\n\r\n" starts, if that is how the head ends
        if found.end() - found.start() != 3 or end < 0 or data[end] != 0x0D:
            return self._to_h11()  # a head ended by bare LFs: h11 decides
        lines = bytes(data[:end]).split(b"\r\n")
        status = _SUCCESS_LINE.fullmatch(lines[0])
        if status is None:
            return self._to_h11()
        headers = []
        for line in lines[1:]:
            header = _HEADER_LINE.fullmatch(line)
            if header is None:
                return self._to_h11()
            name = header[1].lower()
            if name in _H11_CHECKS:
                return self._to_h11()
            headers.append((name.decode("ascii"), header[2].decode("ascii")))
        self._fast_trailing = bytes(data[end + 4:])
        self._fast = None
        self._fast_in = bytearray()
        self._switched = True
        return Response(status=int(status[1]), reason=(status[2] or b"").decode("ascii"), headers=tuple(headers))

    def _to_h11(self) -> Response | _Sentinel:
        """Hand the answer of a fast-path CONNECT to h11, in the state the same request sent
        through h11 would have left it."""
        assert self._fast is not None
        token, framed, udp = self._fast
        self._fast = None
        self._request("CONNECT", *self._connect_request(token, framed, udp))
        data, self._fast_in = bytes(self._fast_in), bytearray()
        if data:
            self._h11.receive_data(data)
        if self._closed:
            self._h11.receive_data(b"")
        return self.next_response()

    # --- responses ---------------------------------------------------------------------------

    def receive_data(self, data: bytes) -> None:
        """Feed bytes from the server; b"" means the server closed its side."""
        if not data:
            self._closed = True
        if self._fast is not None:
            self._fast_in += data
            return
        self._h11.receive_data(data)

    def next_response(self) -> Response | _Sentinel:
        """A complete response or NEED_DATA; raises ResponseError."""
        if self._fast is not None:
            return self._fast_response()
        try:
            while True:
                event = self._h11.next_event()
                if event is h11.NEED_DATA:
                    return NEED_DATA
                if isinstance(event, h11.InformationalResponse):
                    continue
                if isinstance(event, h11.Response):
                    if header_size(event.reason, event.headers) > self._max_header:
                        raise ResponseError(f"response header block exceeds {self._max_header} bytes")
                    if self._connecting and 200 <= event.status_code < 300:
                        self._switched = True
                        return _response(event, b"")
                    self._start(event)
                elif isinstance(event, h11.Data):
                    self._body += event.data
                    if len(self._body) > self._max_body:
                        raise ResponseError(f"response body exceeds {self._max_body} bytes")
                elif isinstance(event, h11.EndOfMessage):
                    response = self._response
                    if response is None:
                        raise ResponseError("end of a response that never started")
                    self._response = None
                    self._connecting = False
                    return _response(response, bytes(self._body))
                elif isinstance(event, h11.ConnectionClosed):
                    raise ResponseError("the server closed the connection without answering")
                elif event is h11.PAUSED:
                    raise ResponseError("the server's answer could not be framed")
        except h11.RemoteProtocolError as exc:
            if self._closed:
                raise ResponseError("the server closed the connection before a complete answer") from None
            raise ResponseError(f"malformed response: {exc}") from None

    def _start(self, event: h11.Response) -> None:
        for name, value in event.headers:
            if name == b"content-length" and int(value) > self._max_body:
                raise ResponseError(f"response body of {int(value)} bytes exceeds {self._max_body}")
        self._response = event
        self._body = bytearray()

    @property
    def switched(self) -> bool:
        """Whether a CONNECT was accepted (the connection now carries raw bytes)."""
        return self._switched

    @property
    def trailing_data(self) -> bytes:
        if self._fast_trailing:
            return self._fast_trailing
        return bytes(self._h11.trailing_data[0])

    @property
    def reusable(self) -> bool:
        """Whether another request may be sent on this connection."""
        if self._switched or self._fast is not None:
            return False
        state = (self._h11.our_state, self._h11.their_state)
        return state == (h11.DONE, h11.DONE) or state == (h11.IDLE, h11.IDLE)


def _response(event: h11.Response, body: bytes) -> Response:
    headers = tuple((k.decode("latin-1"), v.decode("latin-1")) for k, v in event.headers)
    return Response(status=event.status_code, reason=event.reason.decode("latin-1", "replace"),
                    headers=headers, body=body)
