"""The server side of the HTTP framing (sans-IO): keep-alive requests, CONNECT, limits, garbage."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from controlplane.peerwire.server import CLOSED, NEED_DATA, BadRequest, Request, ServerConnection, connect_accepted


def feed(conn: ServerConnection, data: bytes) -> Request | object:
    conn.receive_data(data)
    return conn.next_request()


def test_keep_alive_requests_one_after_the_other() -> None:
    conn = ServerConnection()
    req = feed(conn, b"GET /healthz HTTP/1.1\r\nHost: west\r\n\r\n")
    assert isinstance(req, Request) and (req.method, req.target) == ("GET", "/healthz")
    out = conn.respond(200, headers=[("ClusterLinkPeerLabels", "e30=")])
    assert out.startswith(b"HTTP/1.1 200 OK\r\n") and b"ClusterLinkPeerLabels: e30=" in out
    assert conn.keep_alive
    req = feed(conn, b"POST /authz HTTP/1.1\r\nHost: west\r\nContent-Length: 2\r\n\r\n{}")
    assert isinstance(req, Request) and req.body == b"{}" and req.header("content-length") == "2"
    conn.respond(403, body=b"denied\n")
    assert feed(conn, b"") is CLOSED


def test_request_split_in_pieces() -> None:
    conn = ServerConnection()
    data = b"POST /authz HTTP/1.1\r\nHost: west\r\nContent-Length: 5\r\n\r\nhello"
    for i in range(len(data) - 1):
        assert feed(conn, data[i:i + 1]) is NEED_DATA
    req = feed(conn, data[-1:])
    assert isinstance(req, Request) and req.body == b"hello"


def test_connect_switches_and_keeps_early_bytes() -> None:
    conn = ServerConnection()
    req = feed(conn, b"CONNECT west:443 HTTP/1.1\r\nHost: west:443\r\nAuthorization: Bearer t\r\n\r\nEARLY")
    assert isinstance(req, Request) and req.method == "CONNECT" and req.header("Authorization") == "Bearer t"
    assert conn.accept_connect().startswith(b"HTTP/1.1 200 Connection established\r\n")
    assert conn.trailing_data == b"EARLY"
    assert not conn.keep_alive
    with pytest.raises(RuntimeError):
        conn.next_request()


@pytest.mark.parametrize("headers", [(), (("x-clusterlink-tunnel", "framed-2"),)])
def test_a_prepared_200_is_the_answer_accept_connect_makes(headers: tuple[tuple[str, str], ...]) -> None:
    made, prepared = ServerConnection(), ServerConnection()
    for conn in (made, prepared):
        feed(conn, b"CONNECT west:443 HTTP/1.1\r\nHost: west:443\r\n\r\nEARLY")
    answer = made.accept_connect(headers)
    prepared.switch_to_tunnel()
    assert connect_accepted(headers) == answer
    assert prepared.trailing_data == b"EARLY" and not prepared.keep_alive
    with pytest.raises(RuntimeError):
        prepared.next_request()
    with pytest.raises(RuntimeError):
        prepared.switch_to_tunnel()  # once


@pytest.mark.parametrize("data", [
    b"",  # no request yet
    b"CONNECT west:443 HTTP/1.1\r\nHost: west:443\r\n",  # not complete
    b"GET /healthz HTTP/1.1\r\nHost: west\r\n\r\n",
    b"GET / HTTP/1.1\r\nHost: west\r\nConnection: upgrade\r\nUpgrade: websocket\r\n\r\n",  # switch, not CONNECT
])
def test_only_a_complete_connect_switches(data: bytes) -> None:
    conn = ServerConnection()
    conn.receive_data(data)
    conn.next_request()
    with pytest.raises(RuntimeError):
        conn.switch_to_tunnel()


def test_refused_connect_closes() -> None:
    conn = ServerConnection()
    feed(conn, b"CONNECT west:443 HTTP/1.1\r\nHost: west:443\r\n\r\napplication bytes")
    out = conn.respond(401, body=b"no\n", close=True)
    assert b"Connection: close" in out and not conn.keep_alive


@pytest.mark.parametrize("data, status", [
    (b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03" + b"\x00" * 40 + b"\r\n\r\n", 400),  # a TLS ClientHello
    (b"GET / HTTP/1.1\r\n\r\n", 400),  # no Host
    (b"GET / HTTP/1.1\r\nHost: x\r\nContent-Length: nope\r\n\r\n", 400),
    (b"GET / HTTP/1.1\r\nHost: x\r\nX: " + b"a" * 20000 + b"\r\n\r\n", 431),  # whole block at once
    (b"POST /authz HTTP/1.1\r\nHost: x\r\nContent-Length: 70000\r\n\r\n", 413),
    (b"POST /authz HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n" + b"8000\r\n" + b"a" * 0x8000 + b"\r\n"
     + b"8001\r\n" + b"a" * 0x8001 + b"\r\n", 413),
])
def test_bad_requests(data: bytes, status: int) -> None:
    conn = ServerConnection()
    with pytest.raises(BadRequest) as err:
        feed(conn, data)
    assert err.value.status == status
    out = conn.respond(err.value.status, body=b"bad\n", close=True)
    assert out.startswith(f"HTTP/1.1 {status} ".encode())


def test_header_block_growing_slowly_is_431() -> None:
    conn = ServerConnection(max_header_bytes=1024)
    assert feed(conn, b"GET / HTTP/1.1\r\nHost: x\r\n") is NEED_DATA
    with pytest.raises(BadRequest) as err:
        for _ in range(100):
            feed(conn, b"X-Filler: " + b"a" * 50 + b"\r\n")
    assert err.value.status == 431


def test_client_vanishing_mid_request_is_400() -> None:
    conn = ServerConnection()
    assert feed(conn, b"POST /authz HTTP/1.1\r\nHost: x\r\nContent-Length: 10\r\n\r\nabc") is NEED_DATA
    with pytest.raises(BadRequest) as err:
        feed(conn, b"")
    assert err.value.status == 400


@settings(max_examples=300)
@given(st.lists(st.binary(max_size=200), max_size=8), st.booleans())
def test_garbage_never_escapes_the_parser(chunks: list[bytes], eof: bool) -> None:
    conn = ServerConnection(max_header_bytes=512, max_body_bytes=256)
    try:
        for chunk in chunks + ([b""] if eof else []):
            while True:
                result = feed(conn, chunk)
                chunk = b""
                if isinstance(result, Request):
                    if result.method == "CONNECT":
                        conn.accept_connect()
                        return
                    conn.respond(200)
                    continue
                assert result in (NEED_DATA, CLOSED)
                break
            if result is CLOSED:
                return
    except BadRequest as exc:
        assert exc.status in (400, 413, 431)


@given(st.sampled_from([b"GET /healthz", b"POST /authz", b"CONNECT west:443", b"PUT /x", b"GET *"]),
       st.binary(max_size=50))
def test_request_lines_with_garbage_headers(line: bytes, junk: bytes) -> None:
    conn = ServerConnection()
    try:
        result = feed(conn, line + b" HTTP/1.1\r\nHost: x\r\n" + junk + b"\r\n\r\n")
    except BadRequest as exc:
        assert exc.status in (400, 413, 431)
        return
    assert result is NEED_DATA or isinstance(result, Request)
