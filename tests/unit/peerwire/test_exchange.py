"""The client side of the HTTP framing against the server side (both sans-IO), and the CONNECT
fast path against h11."""

from __future__ import annotations

import h11
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from controlplane.peerwire.codec import LABELS_HEADER, AuthzRequest, encode_labels, parse_authz_request
from controlplane.peerwire.exchange import ClientConnection, Response, ResponseError
from controlplane.peerwire.server import NEED_DATA, Request, ServerConnection, connect_accepted


def serve(server: ServerConnection, data: bytes) -> Request:
    server.receive_data(data)
    req = server.next_request()
    assert isinstance(req, Request)
    return req


def answer(client: ClientConnection, data: bytes) -> Response:
    client.receive_data(data)
    resp = client.next_response()
    assert isinstance(resp, Response)
    return resp


def test_healthz_authz_then_connect_on_one_connection() -> None:
    client, server = ClientConnection("west"), ServerConnection()
    req = serve(server, client.healthz())
    assert (req.method, req.target, req.header("host")) == ("GET", "/healthz", "west")
    resp = answer(client, server.respond(200, headers=[(LABELS_HEADER, encode_labels({"a": "b"}))]))
    assert resp.status == 200 and resp.header("clusterlinkpeerlabels") == encode_labels({"a": "b"})
    assert client.reusable

    req = serve(server, client.authz(AuthzRequest("echo", "ns", {"k": "v"})))
    assert parse_authz_request(req.body).src_attributes == {"k": "v"}
    resp = answer(client, server.respond(200, headers=[("x-access-token", "tok")]))
    assert resp.access_token == "tok"

    req = serve(server, client.connect("tok") + b"EARLY")
    assert (req.method, req.target, req.header("authorization")) == ("CONNECT", "west:443", "Bearer tok")
    resp = answer(client, server.accept_connect() + b"SERVER FIRST")
    assert resp.status == 200 and client.switched and not client.reusable
    assert client.trailing_data == b"SERVER FIRST" and server.trailing_data == b"EARLY"


def test_refused_connect_reads_the_whole_answer() -> None:
    client, server = ClientConnection("west"), ServerConnection()
    serve(server, client.connect("tok"))
    out = server.respond(403, body=b"denied by policy ns/p\n", close=True)
    assert answer(client, out[:20] + out[20:]).summary() == "403 Forbidden: denied by policy ns/p"
    assert not client.switched


def test_response_in_pieces() -> None:
    client, server = ClientConnection("west"), ServerConnection()
    serve(server, client.healthz())
    out = server.respond(200)
    for byte in out[:-1]:
        client.receive_data(bytes([byte]))
        assert client.next_response() is NEED_DATA
    assert answer(client, out[-1:]).status == 200


@pytest.mark.parametrize("data", [b"", b"HTTP/1.1 200 OK\r\nContent-Length: 10\r\n\r\nabc", b"SSH-2.0-OpenSSH\r\n\r\n"])
def test_bad_answers_raise(data: bytes) -> None:
    client = ClientConnection("west")
    client.healthz()
    with pytest.raises(ResponseError):
        client.receive_data(data)
        if client.next_response() is NEED_DATA:
            client.receive_data(b"")
            client.next_response()


def test_oversize_response_header_raises() -> None:
    client = ClientConnection("west", max_header_bytes=1024)
    client.healthz()
    with pytest.raises(ResponseError):
        answer(client, b"HTTP/1.1 200 OK\r\nX: " + b"a" * 5000 + b"\r\nContent-Length: 0\r\n\r\n")


def test_one_request_at_a_time() -> None:
    client = ClientConnection("west")
    client.healthz()
    with pytest.raises(RuntimeError):
        client.healthz()


# --- the CONNECT fast path (formatted request, directly parsed 2xx, h11 for anything else) -----

TOKEN = "eyJhbGciOiJIUzI1NiJ9.eyJleHAiOjF9.c2lnbmF0dXJl"


def h11_connect_request(token: str, framed: bool, udp: bool = False) -> bytes:
    """What the CONNECT looked like when h11 serialized it."""
    conn = h11.Connection(h11.CLIENT)
    headers = [("Host", "west:443"), ("User-Agent", "clusterlink-gateway"), ("Authorization", f"Bearer {token}")]
    if framed:
        headers.append(("x-clusterlink-tunnel", "framed-2"))
    if udp:
        headers.append(("x-clusterlink-protocol", "udp"))
    return conn.send(h11.Request(method="CONNECT", target="west:443", headers=headers)) + \
        conn.send(h11.EndOfMessage())


@pytest.mark.parametrize("framed", [False, True])
@pytest.mark.parametrize("udp", [False, True])
def test_fast_connect_request_is_what_h11_wrote(framed: bool, udp: bool) -> None:
    assert ClientConnection("west").connect(TOKEN, framed=framed, udp=udp) == h11_connect_request(TOKEN, framed, udp)


def test_a_udp_connect_through_h11_carries_the_protocol_header() -> None:
    req = serve(ServerConnection(), ClientConnection("west").connect("tok en", udp=True))
    assert req.header("x-clusterlink-protocol") == "udp"


def test_a_token_that_is_not_a_plain_value_goes_through_h11() -> None:
    with pytest.raises(h11.LocalProtocolError):
        ClientConnection("west").connect("tok\r\nX-Injected: 1")  # h11 refuses it, as before
    req = serve(ServerConnection(), ClientConnection("west").connect("tok en"))
    assert req.header("authorization") == "Bearer tok en"


def test_fast_connect_after_an_exchange_on_the_same_connection() -> None:
    client, server = ClientConnection("west"), ServerConnection()
    serve(server, client.healthz())
    answer(client, server.respond(200))
    req = serve(server, client.connect(TOKEN, framed=True) + b"EARLY")
    assert req.header("x-clusterlink-tunnel") == "framed-2"
    assert not client.reusable  # a CONNECT is outstanding
    with pytest.raises(RuntimeError):
        client.healthz()
    resp = answer(client, connect_accepted((("x-clusterlink-tunnel", "framed-2"),)) + b"DATA")
    assert (resp.status, resp.reason, resp.framing) == (200, "Connection established", True)
    assert client.switched and client.trailing_data == b"DATA"


@pytest.mark.parametrize("data", [
    b"HTTP/1.1 403 Forbidden\r\nContent-Length: 7\r\n\r\ndenied\n",  # an error with its body
    b"HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 200 OK\r\n\r\nX",  # informational first
    b"HTTP/1.0 200 OK\r\n\r\nX",  # another version
    b"HTTP/1.1 200 OK\r\nX-Folded: a\r\n b\r\n\r\nX",  # obsolete line folding
    b"HTTP/1.1 200 \xe9t\xe9\r\n\r\nX",  # not ASCII
    b"HTTP/1.1 401 Unauthorized\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nnope\n\r\n0\r\n\r\n",
])
def test_other_answers_get_the_same_result_as_through_h11(data: bytes) -> None:
    fast, slow = ClientConnection("west"), ClientConnection("west")
    fast.connect(TOKEN)
    slow.connect("tok en")  # not a plain value: the whole exchange goes through h11
    assert parse(fast, [data]) == parse(slow, [data])


def parse(client: ClientConnection, chunks: list[bytes], eof: bool = False) -> object:
    """What the client makes of the chunks: the response and trailing bytes, or an error."""
    try:
        for chunk in chunks:
            client.receive_data(chunk)
            result = client.next_response()
            if result is not NEED_DATA:
                return result, client.switched, client.trailing_data if client.switched else b""
        if eof:
            client.receive_data(b"")
            result = client.next_response()
            return result, client.switched, client.trailing_data if client.switched else b""
        return NEED_DATA
    except ResponseError:
        return "error"  # (h11's message depends on how the bytes were split)


_header = st.tuples(st.sampled_from(["x-clusterlink-tunnel", "Content-Length", "X-A", "Server", "Bad Name"]),
                    st.sampled_from(["framed-2", "framed-1", "0", "3", "", " padded ", "a\tb", "x" * 40]))


@settings(max_examples=300, deadline=None)
@given(status=st.sampled_from([100, 101, 200, 201, 204, 299, 302, 401, 403, 404, 502, 503]),
       reason=st.sampled_from(["", "OK", "Connection established", "no"]),
       headers=st.lists(_header, max_size=4), tail=st.binary(max_size=12), cut=st.integers(min_value=0, max_value=200),
       eof=st.booleans(), junk=st.sampled_from([b"", b" ", b"\r\n", b"HTTP/1.1"]))
def test_fast_path_parses_like_h11(status: int, reason: str, headers: list[tuple[str, str]], tail: bytes, cut: int,
                                   eof: bool, junk: bytes) -> None:
    head = f"HTTP/1.1 {status}{' ' + reason if reason else ''}\r\n" + "".join(f"{k}: {v}\r\n" for k, v in headers)
    data = junk + head.encode() + b"\r\n" + tail
    fast, slow = ClientConnection("west"), ClientConnection("west")
    fast.connect(TOKEN)
    slow.connect("tok en")
    chunks = [data[:cut], data[cut:]]
    assert parse(fast, chunks, eof) == parse(slow, chunks, eof)


def test_a_peer_announcing_framed_1_gets_raw_tunnels() -> None:
    """framed-1 (an earlier version of ours, without heartbeats) is not framed-2: a client that
    sees it answers as to a peer that does not frame."""
    client, server = ClientConnection("west"), ServerConnection()
    serve(server, client.healthz())
    resp = answer(client, server.respond(200, headers=[("x-clusterlink-tunnel", "framed-1")]))
    assert resp.status == 200 and resp.framing is False
