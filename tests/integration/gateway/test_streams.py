"""The I/O primitives in one process over real loopback sockets and real TLS: streams (TLS
half-close, truncation, handshake timeout), the relay (half-close, reset propagation, flow
control, replay copy) and the peer client (probe_healthz over several gateways)."""

from __future__ import annotations

import asyncio
import gc
import socket
import weakref
from collections.abc import Awaitable, Callable

import pytest

from controlplane import pki
from controlplane.gateway.relay import Relay
from controlplane.peerwire.client import PeerConnection, PeerUnreachable, probe_healthz
from controlplane.peerwire.codec import LABELS_HEADER, encode_labels
from controlplane.peerwire.server import CLOSED, NEED_DATA, ServerConnection
from controlplane.peerwire.stream import Stream, StreamError, TcpStream, connect_tcp
from controlplane.peerwire.tlsstream import TlsStream
from controlplane.tlsconfig import PeerTLS

pytestmark = pytest.mark.usefixtures("both_event_loops")


@pytest.fixture(scope="module")
def tls(tmp_path_factory: pytest.TempPathFactory) -> dict[str, PeerTLS]:
    root = tmp_path_factory.mktemp("streams-pki")
    pki.create_fabric(root)
    return {name: PeerTLS(pki.create_peer_cert(root, name)) for name in ("east", "west")}


Handler = Callable[[Stream], Awaitable[None]]


async def _server(factory: Callable[[Callable[[Stream], None]], Stream], handler: Handler):  # type: ignore[no-untyped-def]
    tasks: set[asyncio.Task[None]] = set()

    def on_open(stream: Stream) -> None:
        task = asyncio.create_task(handler(stream))
        tasks.add(task)
        task.add_done_callback(tasks.discard)

    server = await asyncio.get_running_loop().create_server(lambda: factory(on_open), "127.0.0.1", 0)
    return server, server.sockets[0].getsockname()[1], tasks


async def _read_all(stream: Stream) -> bytes:
    data = b""
    while chunk := await stream.read():
        data += chunk
    return data


def test_tls_half_close_both_ways(tls: dict[str, PeerTLS]) -> None:
    async def main() -> None:
        async def handler(stream: Stream) -> None:
            assert isinstance(stream, TlsStream)
            await stream.handshake()
            request = await _read_all(stream)  # until the client's close_notify
            stream.write(b"got " + request)  # we can still send after it
            stream.write_eof()
            stream.close()

        server, port, tasks = await _server(
            lambda on_open: TlsStream(tls["west"].server_context(), server_side=True, on_open=on_open), handler)
        conn = await PeerConnection.open(("127.0.0.1", port), peer_name="west",
                                         context=tls["east"].client_context())
        conn.stream.write(b"request")
        conn.stream.write_eof()
        assert await _read_all(conn.stream) == b"got request"
        conn.close()
        await asyncio.gather(*tasks)
        server.close()

    asyncio.run(main())


def test_tls_without_close_notify_is_truncation(tls: dict[str, PeerTLS]) -> None:
    async def main() -> None:
        async def handler(stream: Stream) -> None:
            assert isinstance(stream, TlsStream)
            await stream.handshake()
            stream.write(b"partial")
            assert stream.transport is not None
            stream.transport.close()  # TCP FIN, no close_notify

        server, port, tasks = await _server(
            lambda on_open: TlsStream(tls["west"].server_context(), server_side=True, on_open=on_open), handler)
        conn = await PeerConnection.open(("127.0.0.1", port), peer_name="west",
                                         context=tls["east"].client_context())
        assert await conn.stream.read() == b"partial"
        with pytest.raises(StreamError) as err:
            await conn.stream.read()
        assert err.value.reason == "truncated"
        await asyncio.gather(*tasks)
        server.close()

    asyncio.run(main())


def test_handshake_timeout(tls: dict[str, PeerTLS]) -> None:
    async def main() -> None:
        results = []

        async def handler(stream: Stream) -> None:
            assert isinstance(stream, TlsStream)
            try:
                await stream.handshake()
            except StreamError as exc:
                results.append(exc.reason)

        server, port, tasks = await _server(
            lambda on_open: TlsStream(tls["west"].server_context(), server_side=True, handshake_timeout=0.2,
                                      on_open=on_open), handler)
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        try:
            assert await asyncio.wait_for(reader.read(), 5) == b""  # dropped without a word...
        except ConnectionResetError:
            pass  # ...or reset
        writer.close()
        await asyncio.gather(*tasks)
        assert results == ["timeout"]
        server.close()

    asyncio.run(main())


async def _relay_pair(tls: dict[str, PeerTLS]):  # type: ignore[no-untyped-def]
    """client --TCP--> [relay A: TCP in, TLS out] --TLS--> [relay B: TLS in, TCP out] --TCP--> service."""
    loop = asyncio.get_running_loop()
    service_side: asyncio.Queue[Stream] = asyncio.Queue()
    service_server, service_port, _ = await _server(lambda on_open: TcpStream(on_open=on_open),
                                                    lambda s: service_side.put(s))
    relays: list[Relay] = []

    async def tls_in(stream: Stream) -> None:
        assert isinstance(stream, TlsStream)
        await stream.handshake()
        _, upstream = await loop.create_connection(TcpStream, "127.0.0.1", service_port)
        relay = Relay(stream, upstream)
        relays.append(relay)
        relay.start_upstream()
        relay.start_downstream()

    b_server, b_port, _ = await _server(
        lambda on_open: TlsStream(tls["west"].server_context(), server_side=True, on_open=on_open), tls_in)

    async def tcp_in(stream: Stream) -> None:
        conn = await PeerConnection.open(("127.0.0.1", b_port), peer_name="west",
                                         context=tls["east"].client_context())
        relay = Relay(stream, conn.stream)
        relays.append(relay)
        relay.start_upstream()
        relay.start_downstream()

    a_server, a_port, _ = await _server(lambda on_open: TcpStream(on_open=on_open), tcp_in)
    reader, writer = await asyncio.open_connection("127.0.0.1", a_port)
    service = await asyncio.wait_for(service_side.get(), 5)
    return reader, writer, service, relays, (service_server, b_server, a_server)


def test_relay_carries_half_close_each_way(tls: dict[str, PeerTLS]) -> None:
    async def main() -> None:
        reader, writer, service, relays, servers = await _relay_pair(tls)
        writer.write(b"question")
        writer.write_eof()  # client done sending...
        assert await _read_all(service) == b"question"  # ...the service sees EOF (via close_notify)
        service.write(b"answer after the client's EOF")
        service.write_eof()
        assert await reader.read() == b"answer after the client's EOF"
        results = [await r.wait() for r in relays]
        assert [r.outcome for r in results] == ["closed", "closed"]
        assert (results[0].client_to_service, results[0].service_to_client) == (8, 29)
        writer.close()
        for s in servers:
            s.close()

    asyncio.run(main())


def test_relay_propagates_a_reset(tls: dict[str, PeerTLS]) -> None:
    async def main() -> None:
        reader, writer, service, relays, servers = await _relay_pair(tls)
        writer.write(b"x")
        assert await service.read() == b"x"
        service.abort()  # the service dies (RST)
        with pytest.raises(ConnectionResetError):
            await asyncio.wait_for(reader.read(), 5)
        assert [(await r.wait()).outcome for r in relays] == ["reset", "reset"]
        writer.close()
        for s in servers:
            s.close()

    asyncio.run(main())


def test_relay_flow_control_bounds_buffering(tls: dict[str, PeerTLS]) -> None:
    async def main() -> None:
        reader, writer, service, relays, servers = await _relay_pair(tls)
        sock = writer.get_extra_info("socket")
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 1 << 20)
        chunk = b"z" * (1 << 20)
        sent = 0

        async def push() -> None:
            nonlocal sent
            while True:
                writer.write(chunk)
                await writer.drain()
                sent += len(chunk)

        pusher = asyncio.create_task(push())
        await asyncio.sleep(1.0)  # the service reads nothing: everything upstream must pause
        stalled_at = sent
        await asyncio.sleep(0.5)
        assert sent == stalled_at and sent < 64 * (1 << 20), f"{sent} bytes accepted with nobody reading"
        pusher.cancel()
        written = sent + len(chunk)  # the write whose drain was waiting is in the transport's buffer
        writer.write_eof()
        assert len(await _read_all(service)) == written  # nothing lost while paused
        writer.close()
        for s in servers:
            s.close()

    asyncio.run(main())


async def _framed_pair(tls: dict[str, PeerTLS]):  # type: ignore[no-untyped-def]
    """A client-side TCP stream, the two ends of one TLS connection, and the service-side
    streams, so that relays with a framed tunnel can be set up again and again on the TLS pair."""
    loop = asyncio.get_running_loop()
    accepted: asyncio.Queue[Stream] = asyncio.Queue()
    plain_server, plain_port, _ = await _server(lambda on_open: TcpStream(on_open=on_open), lambda s: accepted.put(s))
    tls_accepted: asyncio.Queue[Stream] = asyncio.Queue()

    async def on_tls(stream: Stream) -> None:
        assert isinstance(stream, TlsStream)
        await stream.handshake()
        await tls_accepted.put(stream)

    tls_server, tls_port, _ = await _server(
        lambda on_open: TlsStream(tls["west"].server_context(), server_side=True, on_open=on_open), on_tls)
    conn = await PeerConnection.open(("127.0.0.1", tls_port), peer_name="west", context=tls["east"].client_context())
    tunnel_b = await tls_accepted.get()

    async def plain_pair() -> tuple[Stream, Stream]:
        _, outer = await loop.create_connection(TcpStream, "127.0.0.1", plain_port)
        return outer, await accepted.get()

    return conn.stream, tunnel_b, plain_pair, (plain_server, tls_server)


def test_framed_tunnel_carries_connection_after_connection(tls: dict[str, PeerTLS]) -> None:
    async def main() -> None:
        tunnel_a, tunnel_b, plain_pair, servers = await _framed_pair(tls)
        for round_ in range(3):
            client, a_in = await plain_pair()  # client --TCP--> relay A
            b_out, service = await plain_pair()  # relay B --TCP--> service
            relay_a = Relay(a_in, tunnel_a, framed="service")
            relay_b = Relay(tunnel_b, b_out, framed="client")
            for relay in (relay_a, relay_b):
                relay.start_upstream()
                relay.start_downstream()
            client.write(b"request %d" % round_)
            client.write_eof()
            assert await _read_all(service) == b"request %d" % round_  # EOF frame -> FIN
            service.write(b"x" * 300_000)  # more than one read, and after the client's EOF
            service.write_eof()
            assert await _read_all(client) == b"x" * 300_000
            results = [await relay_a.wait(), await relay_b.wait()]
            assert [(r.outcome, r.reusable) for r in results] == [("closed", True), ("closed", True)]
            assert tunnel_a.alive and tunnel_b.alive
        for s in servers:
            s.close()

    asyncio.run(main())


def test_framed_tunnel_carries_a_reset_and_is_not_reused(tls: dict[str, PeerTLS]) -> None:
    async def main() -> None:
        tunnel_a, tunnel_b, plain_pair, servers = await _framed_pair(tls)
        client, a_in = await plain_pair()
        b_out, service = await plain_pair()
        relay_a = Relay(a_in, tunnel_a, framed="service")
        relay_b = Relay(tunnel_b, b_out, framed="client")
        for relay in (relay_a, relay_b):
            relay.start_upstream()
            relay.start_downstream()
        client.write(b"hello")
        assert await service.read() == b"hello"
        service.abort()  # the service resets: B sends a RESET frame, A resets the client
        with pytest.raises(StreamError) as err:
            await asyncio.wait_for(_read_all(client), 5)
        assert err.value.reason == "reset"
        results = [await relay_a.wait(), await relay_b.wait()]
        assert [(r.outcome, r.reusable) for r in results] == [("reset", False), ("reset", False)]
        for s in servers:
            s.close()

    asyncio.run(main())


def test_a_finished_relay_is_freed_without_the_garbage_collector(tls: dict[str, PeerTLS]) -> None:
    """Streams, relays and their buffers go as soon as a connection ends (reference counting), not
    at the collector's next pass: no reference cycle is left behind."""
    async def main() -> None:
        tunnel_a, tunnel_b, plain_pair, servers = await _framed_pair(tls)
        client, a_in = await plain_pair()
        b_out, service = await plain_pair()
        relay_a = Relay(a_in, tunnel_a, framed="service")
        relay_b = Relay(tunnel_b, b_out, framed="client")
        for relay in (relay_a, relay_b):
            relay.start_upstream()
            relay.start_downstream()
        client.write(b"x" * 100_000)
        client.write_eof()
        assert len(await _read_all(service)) == 100_000
        service.write_eof()
        assert await _read_all(client) == b""
        assert [(await r.wait()).reusable for r in (relay_a, relay_b)] == [True, True]
        for stream in (a_in, b_out, client, service):
            stream.close()
            await stream.wait_closed()
        await asyncio.sleep(0)
        refs = [weakref.ref(o) for o in (a_in, b_out, relay_a, relay_b)]
        del a_in, b_out, relay_a, relay_b, relay, stream
        assert [ref() for ref in refs] == [None] * 4
        assert tunnel_a.alive and tunnel_b.alive  # the tunnel itself stays, for the next connection
        for s in servers:
            s.close()

    gc.disable()
    try:
        asyncio.run(main())
    finally:
        gc.enable()


def test_read_buffers_grow_for_bulk_and_shrink_when_idle(tls: dict[str, PeerTLS]) -> None:
    async def main() -> None:
        tunnel_a, tunnel_b, plain_pair, servers = await _framed_pair(tls)
        client, service = await plain_pair()
        small_tcp, small_tls = client.read_buffer_size, tunnel_b.read_buffer_size
        assert small_tcp <= 16 * 1024 and small_tls <= 32 * 1024  # a new connection holds little
        client.write(b"ping")
        assert await service.read() == b"ping"
        assert service.read_buffer_size == small_tcp  # small messages: still small
        tunnel_a.write(b"y" * 1_000_000)
        received = 0
        while received < 1_000_000:
            received += len(await tunnel_b.read())
        assert tunnel_b.read_buffer_size > 256 * 1024  # a bulk transfer reads in large chunks
        tunnel_b.shrink_read_buffers()
        assert tunnel_b.read_buffer_size == small_tls
        tunnel_a.write(b"z" * 10)
        assert await tunnel_b.read() == b"z" * 10
        for s in servers:
            s.close()

    asyncio.run(main())


def test_connect_tcp_by_address_or_name_and_refused() -> None:
    async def main() -> None:
        accepted: asyncio.Queue[Stream] = asyncio.Queue()
        server, port, _ = await _server(lambda on_open: TcpStream(on_open=on_open), lambda s: accepted.put(s))
        for host in ("127.0.0.1", "localhost"):
            stream = await connect_tcp(host, port)
            peer = await asyncio.wait_for(accepted.get(), 5)
            stream.write(b"hello " + host.encode())
            stream.write_eof()
            assert await _read_all(peer) == b"hello " + host.encode()
            peer.close()
            stream.close()
        server.close()
        await server.wait_closed()
        with pytest.raises(ConnectionRefusedError):
            await connect_tcp("127.0.0.1", port)  # nobody listens any more

    asyncio.run(main())


def test_replay_copy_and_its_bound() -> None:
    async def main() -> None:
        accepted: asyncio.Queue[Stream] = asyncio.Queue()
        server, port, _ = await _server(lambda on_open: TcpStream(on_open=on_open), lambda s: accepted.put(s))
        loop = asyncio.get_running_loop()
        _, client = await loop.create_connection(TcpStream, "127.0.0.1", port)
        peer_of_client = await accepted.get()
        _, tunnel = await loop.create_connection(TcpStream, "127.0.0.1", port)
        await accepted.get()
        relay = Relay(peer_of_client, tunnel)
        relay.start_upstream(tap=bytearray(b"early:"), tap_limit=16)
        client.write(b"0123456789")
        await asyncio.sleep(0.1)
        assert relay.detach_upstream() == bytearray(b"early:0123456789")
        relay = Relay(peer_of_client, tunnel)
        relay.start_upstream(tap=bytearray(), tap_limit=4)
        client.write(b"more than four")
        await asyncio.sleep(0.1)
        assert relay.detach_upstream() is None  # too much went out: it cannot be replayed
        server.close()

    asyncio.run(main())


def test_probe_healthz_first_gateway_that_answers(tls: dict[str, PeerTLS]) -> None:
    async def main() -> None:
        async def handler(stream: Stream) -> None:
            assert isinstance(stream, TlsStream)
            await stream.handshake()
            http = ServerConnection()
            while True:
                request = http.next_request()
                if request is NEED_DATA:
                    http.receive_data(await stream.read())
                    continue
                if request is CLOSED:
                    stream.close()
                    return
                stream.write(http.respond(200, headers=[(LABELS_HEADER, encode_labels({"cluster": "west"}))]))

        server, port, _ = await _server(
            lambda on_open: TlsStream(tls["west"].server_context(), server_side=True, on_open=on_open), handler)
        dead = socket.socket()
        dead.bind(("127.0.0.1", 0))
        bad = ("127.0.0.1", dead.getsockname()[1])  # bound, not listening: refused
        good = ("127.0.0.1", port)
        for gateways in ([bad, good], [good, bad]):
            result = await probe_healthz(gateways, peer_name="west", context_factory=tls["east"].client_context)
            assert result.labels == {"cluster": "west"} and result.gateway == good
        with pytest.raises(PeerUnreachable) as err:
            await probe_healthz([bad], peer_name="west", context_factory=tls["east"].client_context)
        assert "peer 'west' is unreachable" in str(err.value) and f"{bad[1]}" in str(err.value)
        with pytest.raises(PeerUnreachable) as err:  # the server's certificate is not for "east"
            await probe_healthz([good], peer_name="east", context_factory=tls["east"].client_context)
        assert "Hostname mismatch" in str(err.value) or "certificate" in str(err.value)
        dead.close()
        server.close()

    asyncio.run(main())


def test_buffer_little_bounds_unsent_bytes_and_goes_back() -> None:
    """`buffer_little()` sets a small TCP_NOTSENT_LOWAT and write high-water mark (a client that
    does not read its answers pauses writing after a few hundred KiB, not megabytes), and
    `buffer_little(False)` puts the kernel's defaults back."""
    import struct

    from controlplane.peerwire import stream as streams

    def lowat(sock: socket.socket) -> int:
        return struct.unpack("I", sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_NOTSENT_LOWAT, 4))[0]

    async def main() -> None:
        accepted: asyncio.Queue[Stream] = asyncio.Queue()
        server, port, _ = await _server(lambda on_open: TcpStream(on_open=on_open), lambda s: accepted.put(s))
        raw = socket.create_connection(("127.0.0.1", port))
        raw.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 64 * 1024)
        peer = await asyncio.wait_for(accepted.get(), 5)
        sock = peer.transport.get_extra_info("socket")
        assert lowat(sock) == streams.UNSENT_DEFAULT
        peer.buffer_little()
        assert lowat(sock) == streams.SMALL_UNSENT
        assert peer.transport.get_write_buffer_limits()[1] == streams.SMALL_WRITE_HIGH_WATER
        written = 0
        while not peer.write_paused and written < 64 * 1024 * 1024:  # the client reads nothing
            peer.write(b"a" * 16384)
            written += 16384
            await asyncio.sleep(0)
        assert peer.write_paused and written < 2 * 1024 * 1024, f"{written} bytes written before a pause"
        peer.buffer_little(False)
        assert lowat(sock) == streams.UNSENT_DEFAULT
        assert peer.transport.get_write_buffer_limits()[1] == streams.WRITE_HIGH_WATER
        raw.close()
        peer.abort()
        server.close()

    asyncio.run(main())  # on both loops (the module's both_event_loops)
