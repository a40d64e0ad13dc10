"""grpcwire, the gateways' and agents' small gRPC client: calls against a real grpcio server (unary,
server streams, status codes and messages, deadlines, metadata, size limit, TLS with the control
plane's certificates), and hostile or broken servers (garbage, silence, no gRPC, a server that
vanishes mid-stream): every failure is an RPCError with the right code, and nothing hangs."""

from __future__ import annotations

import asyncio
import contextlib
import socket
import struct
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path

import grpc
import grpc.aio
import h2.config
import h2.connection
import h2.events
import pytest

from controlplane import pki
from controlplane.api import grpcwire
from controlplane.api.grpcwire import Channel, RPCError

pytestmark = pytest.mark.timeout(60)


def run(coro: Awaitable) -> object:
    return asyncio.run(asyncio.wait_for(coro, 30))


# --- a real grpcio server with generic handlers (bytes in, bytes out) --------------------------


class _Service:
    def __init__(self) -> None:
        self.metadata: list[tuple[str, str]] = []
        self.cancelled = asyncio.Event()

    async def echo(self, request: bytes, context: grpc.aio.ServicerContext) -> bytes:
        self.metadata = [(k, v) for k, v in context.invocation_metadata()]
        return b"echo:" + request

    async def fail(self, request: bytes, context: grpc.aio.ServicerContext) -> bytes:
        await context.abort(grpc.StatusCode.PERMISSION_DENIED, "denied: 100% sure, ünïcode")
        return b""

    async def slow(self, request: bytes, context: grpc.aio.ServicerContext) -> bytes:
        try:
            await asyncio.sleep(30)
        except asyncio.CancelledError:
            self.cancelled.set()
            raise
        return b""

    async def count(self, request: bytes, context: grpc.aio.ServicerContext) -> AsyncIterator[bytes]:
        for i in range(int(request)):
            yield str(i).encode() * (i + 1)

    async def big(self, request: bytes, context: grpc.aio.ServicerContext) -> AsyncIterator[bytes]:
        yield b"x" * int(request)

    async def forever(self, request: bytes, context: grpc.aio.ServicerContext) -> AsyncIterator[bytes]:
        yield b"first"
        await asyncio.Event().wait()


def _handlers(service: _Service) -> grpc.GenericRpcHandler:
    ident = {"request_deserializer": None, "response_serializer": None}
    return grpc.method_handlers_generic_handler("cltest.T", {
        "Echo": grpc.unary_unary_rpc_method_handler(service.echo, **ident),
        "Fail": grpc.unary_unary_rpc_method_handler(service.fail, **ident),
        "Slow": grpc.unary_unary_rpc_method_handler(service.slow, **ident),
        "Count": grpc.unary_stream_rpc_method_handler(service.count, **ident),
        "Big": grpc.unary_stream_rpc_method_handler(service.big, **ident),
        "Forever": grpc.unary_stream_rpc_method_handler(service.forever, **ident),
    })


@contextlib.asynccontextmanager
async def grpc_server(address: str, tls: tuple[bytes, bytes] | None = None) -> AsyncIterator[_Service]:
    service = _Service()
    server = grpc.aio.server()
    server.add_generic_rpc_handlers([_handlers(service)])
    if tls is None:
        server.add_insecure_port(address)
    else:
        assert server.add_secure_port(address, grpc.ssl_server_credentials([tls])) > 0
    await server.start()
    try:
        yield service
    finally:
        await server.stop(0)


@contextlib.asynccontextmanager
async def served(tmp_path: Path, **channel_options: object) -> AsyncIterator[tuple[_Service, Channel]]:
    """A grpcio server on a unix socket and a channel to it (closed after)."""
    address = f"unix:{tmp_path / 'g.sock'}"
    async with grpc_server(address) as service:
        channel = Channel(address, **channel_options)  # type: ignore[arg-type]
        try:
            yield service, channel
        finally:
            await channel.close()


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_unary_calls_carry_metadata_and_answers(tmp_path: Path) -> None:
    async def go() -> None:
        async with served(tmp_path) as (service, channel):
            assert await channel.unary("/cltest.T/Echo", b"hello", metadata=[("authorization", "Bearer t0k")],
                                       timeout=5) == b"echo:hello"
            assert ("authorization", "Bearer t0k") in service.metadata
            assert await channel.unary("/cltest.T/Echo", b"", timeout=5) == b"echo:"  # same connection
    run(go())


def test_status_codes_and_messages_come_through(tmp_path: Path) -> None:
    async def go() -> None:
        async with served(tmp_path) as (_, channel):
            with pytest.raises(RPCError) as denied:
                await channel.unary("/cltest.T/Fail", b"", timeout=5)
            assert (denied.value.code, denied.value.details) == ("PERMISSION_DENIED",
                                                                 "denied: 100% sure, ünïcode")
            with pytest.raises(RPCError) as missing:
                await channel.unary("/cltest.T/NoSuchMethod", b"", timeout=5)
            assert missing.value.code == "UNIMPLEMENTED"
    run(go())


def test_a_deadline_fails_the_call_and_cancels_it_on_the_server(tmp_path: Path) -> None:
    async def go() -> None:
        async with served(tmp_path) as (service, channel):
            loop = asyncio.get_running_loop()
            start = loop.time()
            with pytest.raises(RPCError) as late:
                await channel.unary("/cltest.T/Slow", b"", timeout=0.3)
            assert late.value.code == "DEADLINE_EXCEEDED" and loop.time() - start < 3
            await asyncio.wait_for(service.cancelled.wait(), 5)
            assert await channel.unary("/cltest.T/Echo", b"after", timeout=5) == b"echo:after"
    run(go())


def test_a_server_stream_delivers_every_message_in_order(tmp_path: Path) -> None:
    async def go() -> None:
        async with served(tmp_path) as (_, channel):
            call = channel.stream("/cltest.T/Count", b"200")
            await call.accepted()
            got = [m async for m in call]
            assert got == [str(i).encode() * (i + 1) for i in range(200)]
            big = 3 * 1024 * 1024 + 7  # many DATA frames and window updates
            assert [len(m) async for m in channel.stream("/cltest.T/Big", str(big).encode())] == [big]
    run(go())


def test_a_message_over_the_limit_is_refused(tmp_path: Path) -> None:
    async def go() -> None:
        async with served(tmp_path, max_receive=1000) as (_, channel):
            with pytest.raises(RPCError) as big:
                [m async for m in channel.stream("/cltest.T/Big", b"1001")]
            assert big.value.code == "RESOURCE_EXHAUSTED" and "1001 bytes" in big.value.details
            assert [m async for m in channel.stream("/cltest.T/Big", b"1000")] == [b"x" * 1000]
    run(go())


def test_a_server_that_goes_away_mid_stream_ends_the_call(tmp_path: Path) -> None:
    async def go() -> None:
        address = f"unix:{tmp_path / 'g.sock'}"
        channel = Channel(address)
        try:
            async with grpc_server(address):
                call = channel.stream("/cltest.T/Forever", b"")
                stream = call.__aiter__()
                assert await stream.__anext__() == b"first"
            with pytest.raises(RPCError) as gone:  # the server stopped (cancelling the call)
                await stream.__anext__()
            assert gone.value.code in ("UNAVAILABLE", "CANCELLED"), gone.value
            with pytest.raises(RPCError) as down:
                await channel.unary("/cltest.T/Echo", b"", timeout=2)
            assert down.value.code == "UNAVAILABLE" and "cannot connect" in down.value.details
        finally:
            await channel.close()
    run(go())


def _certs(tmp_path: Path, name: str = "east") -> tuple[bytes, bytes, bytes]:
    ca = pki.new_fabric_ca()
    peer = pki.issue_peer_cert(ca, name)
    return pki.cert_pem(ca.cert), pki.cert_pem(peer.cert), pki.key_pem(peer.key)


def test_tls_with_the_control_planes_certificate(tmp_path: Path) -> None:
    ca, cert, key = _certs(tmp_path)
    other_ca, _, _ = _certs(tmp_path)

    async def go() -> None:
        port = _free_port()
        async with grpc_server(f"127.0.0.1:{port}", tls=(key, cert)):
            good = Channel(f"127.0.0.1:{port}", ssl_context=grpcwire.tls_context(ca.decode()), server_name="east")
            try:
                assert await good.unary("/cltest.T/Echo", b"tls", timeout=5) == b"echo:tls"
            finally:
                await good.close()
            for ctx, name, why in ((grpcwire.tls_context(other_ca.decode()), "east", "certificate verify failed"),
                                   (grpcwire.tls_context(ca.decode()), "west", "certificate verify failed")):
                bad = Channel(f"127.0.0.1:{port}", ssl_context=ctx, server_name=name)
                with pytest.raises(RPCError) as refused:
                    await bad.unary("/cltest.T/Echo", b"", timeout=5)
                assert refused.value.code == "UNAVAILABLE" and "TLS" in refused.value.details, refused.value
                await bad.close()
    run(go())


def test_tls_context_refuses_text_without_a_certificate() -> None:
    with pytest.raises(ValueError, match="no PEM certificate"):
        grpcwire.tls_context("not a certificate\n")


def test_bad_addresses_are_clear() -> None:
    async def go() -> None:
        for target, words in (("nohostport", "bad control plane address"), ("127.0.0.1:1", "needs TLS")):
            with pytest.raises(RPCError) as bad:
                await Channel(target).unary("/x/y", b"", timeout=1)
            assert bad.value.code == "INVALID_ARGUMENT" and words in bad.value.details
    run(go())


# --- hostile servers on raw sockets -------------------------------------------------------------


@contextlib.asynccontextmanager
async def raw_server(path: Path, handler: Callable[[asyncio.StreamReader, asyncio.StreamWriter], Awaitable[None]]
                     ) -> AsyncIterator[str]:
    server = await asyncio.start_unix_server(handler, path=str(path))
    try:
        yield f"unix:{path}"
    finally:
        server.close()
        await server.wait_closed()


async def _close_at_once(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    writer.close()


async def _http1(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    await reader.read(100)
    writer.write(b"HTTP/1.1 400 Bad Request\r\nContent-Length: 0\r\n\r\n" * 3)
    await writer.drain()
    await asyncio.sleep(5)
    writer.close()


async def _silent(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    while await reader.read(65536):  # takes everything, never answers: a peer that froze
        pass
    writer.close()


@pytest.mark.parametrize("handler, words", [(_close_at_once, "connection"),
                                            (_http1, "does not speak HTTP/2 (it sent b'HTTP/1.1 ")], ids=["close", "http1"])
def test_a_server_that_is_not_http2_is_unavailable(tmp_path: Path, handler, words: str) -> None:  # type: ignore[no-untyped-def]
    async def go() -> None:
        async with raw_server(tmp_path / "r.sock", handler) as address:
            channel = Channel(address)
            with pytest.raises(RPCError) as bad:
                await channel.unary("/cltest.T/Echo", b"", timeout=5)
            assert bad.value.code == "UNAVAILABLE" and words in bad.value.details, bad.value
            await channel.close()
    run(go())


def test_a_silent_server_is_found_by_keepalive(tmp_path: Path) -> None:
    async def go() -> None:
        async with raw_server(tmp_path / "r.sock", _silent) as address:
            channel = Channel(address, keepalive=0.2, keepalive_timeout=0.3)
            call = channel.stream("/cltest.T/Forever", b"")
            start = asyncio.get_running_loop().time()
            with pytest.raises(RPCError) as dead:
                await call.accepted()
            assert dead.value.code == "UNAVAILABLE" and "keepalive" in dead.value.details
            assert asyncio.get_running_loop().time() - start < 5
            await channel.close()
    run(go())


def _h2_server(respond: Callable[[h2.connection.H2Connection, int], None]
               ) -> Callable[[asyncio.StreamReader, asyncio.StreamWriter], Awaitable[None]]:
    """An HTTP/2 server (h2) that answers every request with `respond(conn, stream_id)`."""

    async def handler(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        conn = h2.connection.H2Connection(h2.config.H2Configuration(client_side=False))
        conn.initiate_connection()
        writer.write(conn.data_to_send())
        while data := await reader.read(65536):
            for event in conn.receive_data(data):
                if isinstance(event, h2.events.StreamEnded):
                    respond(conn, event.stream_id)
            writer.write(conn.data_to_send())
            await writer.drain()
        writer.close()
    return handler


def _grpc_headers(conn: h2.connection.H2Connection, sid: int) -> None:
    conn.send_headers(sid, [(":status", "200"), ("content-type", "application/grpc")])


def _not_grpc(conn: h2.connection.H2Connection, sid: int) -> None:
    conn.send_headers(sid, [(":status", "200"), ("content-type", "text/html")])
    conn.send_data(sid, b"<html>", end_stream=True)


def _http_404(conn: h2.connection.H2Connection, sid: int) -> None:
    conn.send_headers(sid, [(":status", "404")], end_stream=True)


def _compressed(conn: h2.connection.H2Connection, sid: int) -> None:
    _grpc_headers(conn, sid)
    conn.send_data(sid, struct.pack(">BI", 1, 3) + b"abc")
    conn.send_headers(sid, [("grpc-status", "0")], end_stream=True)


def _truncated(conn: h2.connection.H2Connection, sid: int) -> None:
    _grpc_headers(conn, sid)
    conn.send_data(sid, struct.pack(">BI", 0, 10) + b"abc")
    conn.send_headers(sid, [("grpc-status", "0")], end_stream=True)


def _no_trailers(conn: h2.connection.H2Connection, sid: int) -> None:
    _grpc_headers(conn, sid)
    conn.send_data(sid, grpcwire.frame(b"abc"), end_stream=True)


def _no_status(conn: h2.connection.H2Connection, sid: int) -> None:
    _grpc_headers(conn, sid)
    conn.send_data(sid, grpcwire.frame(b"abc"))
    conn.send_headers(sid, [("x-other", "1")], end_stream=True)


def _two_answers(conn: h2.connection.H2Connection, sid: int) -> None:
    _grpc_headers(conn, sid)
    conn.send_data(sid, grpcwire.frame(b"one") + grpcwire.frame(b"two"))
    conn.send_headers(sid, [("grpc-status", "0")], end_stream=True)


def _reset(conn: h2.connection.H2Connection, sid: int) -> None:
    conn.reset_stream(sid, 8)  # CANCEL


def _odd_status(conn: h2.connection.H2Connection, sid: int) -> None:
    conn.send_headers(sid, [(":status", "200"), ("content-type", "application/grpc"), ("grpc-status", "99"),
                            ("grpc-message", "what%20is%20this")], end_stream=True)


@pytest.mark.parametrize("respond, code, words", [
    (_not_grpc, "UNKNOWN", "text/html"),
    (_http_404, "UNIMPLEMENTED", "HTTP 404"),
    (_compressed, "INTERNAL", "compressed"),
    (_truncated, "INTERNAL", "inside a message"),
    (_no_trailers, "INTERNAL", "without trailers"),
    (_no_status, "INTERNAL", "without a grpc-status"),
    (_two_answers, "INTERNAL", "more than one message"),
    (_reset, "CANCELLED", "reset the call"),
    (_odd_status, "UNKNOWN", "what is this"),
], ids=lambda v: getattr(v, "__name__", None))
def test_broken_grpc_answers_are_clear_errors(tmp_path: Path, respond, code: str, words: str) -> None:  # type: ignore[no-untyped-def]
    async def go() -> None:
        async with raw_server(tmp_path / "r.sock", _h2_server(respond)) as address:
            channel = Channel(address)
            try:
                for _ in range(2):  # the connection stays usable for the next call
                    with pytest.raises(RPCError) as bad:
                        await channel.unary("/cltest.T/Echo", b"", timeout=5)
                    assert bad.value.code == code and words in bad.value.details, bad.value
            finally:
                await channel.close()
    run(go())


def test_wire_helpers() -> None:
    assert grpcwire.frame(b"ab") == b"\x00\x00\x00\x00\x02ab"
    assert grpcwire.timeout_header(0.0001) == "1m" and grpcwire.timeout_header(5) == "5000m"
    assert grpcwire.timeout_header(10 ** 6) == "1000001S"
    assert len(grpcwire.timeout_header(10 ** 9)[:-1]) <= 8
    assert [grpcwire.status_name(v) for v in ("0", "14", "16", "17", "", "x", None)] == [
        "OK", "UNAVAILABLE", "UNAUTHENTICATED", "UNKNOWN", "UNKNOWN", "UNKNOWN", "UNKNOWN"]
