"""The client side of the HTTP framing against the server side (both sans-IO)."""

from __future__ import annotations

import pytest

from controlplane.peerwire.codec import LABELS_HEADER, AuthzRequest, encode_labels, parse_authz_request
from controlplane.peerwire.exchange import ClientConnection, Response, ResponseError
from controlplane.peerwire.server import NEED_DATA, Request, ServerConnection


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
