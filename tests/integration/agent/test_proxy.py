"""The node proxy and its splice relay over real loopback TCP: half-close in both directions, reset
propagation both ways, idle timeout, stop with connections in flight, and misbehaving clients and
upstreams that must never take the listener down. No privileges needed."""

from __future__ import annotations

import asyncio
import contextlib
import errno
import socket
import struct
import time
from collections.abc import AsyncIterator

import pytest

from agent.proxy import ByteCounts, NodeProxy, ProxyMetrics, RelayOutcome, Upstream, relay
from tests.integration.agent import kit

PREAMBLE = b"PREAMBLE v1\n"

pytestmark = pytest.mark.usefixtures("both_event_loops")


@contextlib.asynccontextmanager
async def proxy_to(upstream: tuple[str, int] | None, **kwargs) -> AsyncIterator[NodeProxy]:
    async def resolve(client: tuple[str, int]) -> Upstream | None:
        return Upstream(upstream, PREAMBLE) if upstream else None

    proxy = NodeProxy(("127.0.0.1", 0), resolve=kwargs.pop("resolve", resolve), **kwargs)
    await proxy.start()
    try:
        yield proxy
    finally:
        await proxy.stop()


async def connect(address: tuple[str, int]) -> socket.socket:
    sock = socket.socket()
    sock.setblocking(False)
    await asyncio.get_running_loop().sock_connect(sock, address)
    return sock


async def recv_until_eof_or_error(sock: socket.socket, timeout: float = 5.0) -> tuple[bytes, str | None, float]:
    """(bytes received, errno name or None for a clean EOF, monotonic time it ended)."""
    loop = asyncio.get_running_loop()
    data = b""
    async with asyncio.timeout(timeout):
        while True:
            try:
                chunk = await loop.sock_recv(sock, 65536)
            except OSError as exc:
                return data, errno.errorcode[exc.errno], time.monotonic()
            if not chunk:
                return data, None, time.monotonic()
            data += chunk


def hard_reset(sock: socket.socket) -> float:
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    sock.close()
    return time.monotonic()


async def until(predicate, timeout: float = 5.0) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < deadline, "condition not reached in time"
        await asyncio.sleep(0.01)


def test_client_half_close_then_response_flows_back() -> None:
    got: list[bytes] = []

    async def upstream(conn: socket.socket) -> None:
        loop = asyncio.get_running_loop()
        line, rest = await kit.read_line(conn)
        request = await kit.read_to_eof(conn, rest)  # the client's FIN arrived through the proxy
        got.append(line + b"\n" + request)
        await asyncio.sleep(0.1)  # still answering after the client's half-close
        await loop.sock_sendall(conn, b"response after your EOF")
        conn.shutdown(socket.SHUT_WR)

    async def scenario() -> tuple[bytes, str | None, ProxyMetrics]:
        async with kit.tcp_server(upstream) as up, proxy_to(up) as proxy:
            client = await connect(proxy.address)
            with client:
                await asyncio.get_running_loop().sock_sendall(client, b"request")
                client.shutdown(socket.SHUT_WR)
                data, err, _ = await recv_until_eof_or_error(client)
            await until(lambda: proxy.metrics.connections_active == 0)
            return data, err, proxy.metrics

    data, err, metrics = asyncio.run(scenario())
    assert got == [PREAMBLE + b"request"]
    assert (data, err) == (b"response after your EOF", None)
    assert metrics.connections_completed == 1 and metrics.connections_reset == 0
    assert metrics.bytes_client_to_upstream == len(b"request")
    assert metrics.bytes_upstream_to_client == len(b"response after your EOF")


def test_upstream_half_close_then_client_keeps_sending() -> None:
    got: list[bytes] = []

    async def upstream(conn: socket.socket) -> None:
        line, rest = await kit.read_line(conn)
        await asyncio.get_running_loop().sock_sendall(conn, b"banner")
        conn.shutdown(socket.SHUT_WR)  # nothing more from us, but keep listening
        got.append(await kit.read_to_eof(conn, rest))

    async def scenario() -> tuple[bytes, str | None, ProxyMetrics]:
        loop = asyncio.get_running_loop()
        async with kit.tcp_server(upstream) as up, proxy_to(up) as proxy:
            client = await connect(proxy.address)
            with client:
                data, err, _ = await recv_until_eof_or_error(client)  # banner, then EOF
                await loop.sock_sendall(client, b"late data 1, ")
                await asyncio.sleep(0.05)
                await loop.sock_sendall(client, b"late data 2")
                client.shutdown(socket.SHUT_WR)
                await until(lambda: got)
            await until(lambda: proxy.metrics.connections_active == 0)
            return data, err, proxy.metrics

    data, err, metrics = asyncio.run(scenario())
    assert (data, err) == (b"banner", None)
    assert got == [b"late data 1, late data 2"]
    assert metrics.connections_completed == 1


def test_upstream_reset_reaches_the_client_promptly() -> None:
    reset_at: list[float] = []

    async def upstream(conn: socket.socket) -> None:
        loop = asyncio.get_running_loop()
        await kit.read_line(conn)
        await loop.sock_sendall(conn, b"partial answer")
        await asyncio.sleep(0.2)
        reset_at.append(hard_reset(conn))

    async def scenario() -> tuple[bytes, str | None, float, ProxyMetrics]:
        async with kit.tcp_server(upstream) as up, proxy_to(up) as proxy:
            client = await connect(proxy.address)
            with client:
                await asyncio.get_running_loop().sock_sendall(client, b"ping")
                data, err, ended = await recv_until_eof_or_error(client)
            await until(lambda: proxy.metrics.connections_active == 0)
            return data, err, ended, proxy.metrics

    data, err, ended, metrics = asyncio.run(scenario())
    assert data == b"partial answer"
    assert err == "ECONNRESET"  # a reset, not a clean EOF
    assert ended - reset_at[0] < 0.5
    assert metrics.connections_reset == 1 and metrics.connections_completed == 0


def test_client_reset_reaches_the_upstream_promptly() -> None:
    seen: list[tuple[bytes, str | None, float]] = []

    async def upstream(conn: socket.socket) -> None:
        seen.append(await recv_until_eof_or_error(conn))

    async def scenario() -> tuple[float, ProxyMetrics]:
        async with kit.tcp_server(upstream) as up, proxy_to(up) as proxy:
            client = await connect(proxy.address)
            await asyncio.get_running_loop().sock_sendall(client, b"x")
            await asyncio.sleep(0.2)
            reset_at = hard_reset(client)
            await until(lambda: seen)
            await until(lambda: proxy.metrics.connections_active == 0)
            return reset_at, proxy.metrics

    reset_at, metrics = asyncio.run(scenario())
    (data, err, ended), = seen
    assert data == PREAMBLE + b"x"
    assert err == "ECONNRESET"
    assert ended - reset_at < 0.5
    assert metrics.connections_reset == 1


def test_idle_connections_are_reset_after_the_idle_timeout() -> None:
    upstream_saw: list[str | None] = []

    async def upstream(conn: socket.socket) -> None:
        upstream_saw.append((await recv_until_eof_or_error(conn))[1])

    async def scenario() -> tuple[str | None, float, ProxyMetrics]:
        async with kit.tcp_server(upstream) as up, proxy_to(up, idle_timeout=0.3) as proxy:
            client = await connect(proxy.address)
            with client:
                start = time.monotonic()
                _, err, ended = await recv_until_eof_or_error(client)
            await until(lambda: upstream_saw)
            return err, ended - start, proxy.metrics

    err, waited, metrics = asyncio.run(scenario())
    assert err == "ECONNRESET" and upstream_saw == ["ECONNRESET"]
    assert 0.25 <= waited < 1.5
    assert metrics.connections_idle_timeout == 1


def test_stop_resets_connections_in_flight_and_releases_every_fd() -> None:
    async def upstream(conn: socket.socket) -> None:
        await recv_until_eof_or_error(conn, timeout=30)

    async def scenario() -> tuple[list, int, int, ProxyMetrics]:
        baseline = kit.open_fds()
        async with kit.tcp_server(upstream) as up:
            proxy = NodeProxy(("127.0.0.1", 0), resolve=lambda c: _const(Upstream(up, b"")))
            await proxy.start()
            clients = [await connect(proxy.address) for _ in range(5)]
            await until(lambda: proxy.metrics.connections_active == 5)
            started = time.monotonic()
            await proxy.stop()
            stop_took = time.monotonic() - started
            results = [await recv_until_eof_or_error(c) for c in clients]
            for c in clients:
                c.close()
            await proxy.stop()  # idempotent
        return [r[1] for r in results], stop_took, kit.open_fds() - baseline, proxy.metrics

    errors, stop_took, fd_delta, metrics = asyncio.run(scenario())
    assert errors == ["ECONNRESET"] * 5
    assert stop_took < 1.0
    assert fd_delta == 0
    assert metrics.connections_active == 0


async def _const(value):
    return value


def test_misbehaving_clients_and_upstreams_never_kill_the_listener(caplog: pytest.LogCaptureFixture) -> None:
    behaviour = {"mode": "ok"}

    async def echo(conn: socket.socket) -> None:
        loop = asyncio.get_running_loop()
        line, rest = await kit.read_line(conn)
        data = await kit.read_to_eof(conn, rest)
        await loop.sock_sendall(conn, b"echo:" + data)

    # An upstream that never completes a handshake: its accept queue is full, so SYNs are dropped.
    full = socket.socket()
    full.bind(("127.0.0.1", 0))
    full.listen(0)
    fillers = []
    for _ in range(2):
        f = socket.socket()
        f.setblocking(False)
        with contextlib.suppress(BlockingIOError):
            f.connect(full.getsockname())
        fillers.append(f)
    closed_port = socket.socket()
    closed_port.bind(("127.0.0.1", 0))  # bound, never listening: connection refused
    refused = closed_port.getsockname()

    async def scenario() -> tuple[dict, list, int]:
        loop = asyncio.get_running_loop()
        baseline = kit.open_fds()
        async with kit.tcp_server(echo) as up:
            async def resolve(client: tuple[str, int]) -> Upstream | None:
                mode = behaviour["mode"]
                if mode == "raise":
                    raise RuntimeError("resolver bug")
                if mode == "none":
                    return None
                if mode == "refused":
                    return Upstream(refused, b"")
                if mode == "blackhole":
                    return Upstream(full.getsockname(), b"")
                return Upstream(up, PREAMBLE)

            proxy = NodeProxy(("127.0.0.1", 0), resolve=resolve, connect_timeout=0.3)
            await proxy.start()
            outcomes = []
            try:
                async def roundtrip(payload: bytes = b"hi") -> tuple[bytes, str | None, float]:
                    c = await connect(proxy.address)
                    with c:
                        # The proxy may reset the connection before the request is even written: the
                        # write then reports the reset, and the read afterwards only sees the end.
                        try:
                            await loop.sock_sendall(c, payload)
                            c.shutdown(socket.SHUT_WR)
                        except (ConnectionResetError, BrokenPipeError):
                            data, err, ended = await recv_until_eof_or_error(c)
                            return data, err or "ECONNRESET", ended
                        return await recv_until_eof_or_error(c)

                # Clients that connect and vanish, or reset, or send garbage and reset.
                for _ in range(20):
                    (await connect(proxy.address)).close()
                for _ in range(20):
                    hard_reset(await connect(proxy.address))
                for _ in range(20):
                    c = await connect(proxy.address)
                    await loop.sock_sendall(c, bytes(range(256)) * 16)
                    hard_reset(c)
                await until(lambda: proxy.metrics.connections_accepted == 60
                            and proxy.metrics.connections_active == 0)
                for mode in ("raise", "none", "refused", "blackhole"):
                    behaviour["mode"] = mode
                    outcomes.append((mode, await roundtrip()))
                behaviour["mode"] = "ok"
                await until(lambda: proxy.metrics.connections_active == 0)
                outcomes.append(("ok", await roundtrip(b"still alive")))
                await until(lambda: proxy.metrics.connections_active == 0)
            finally:
                await proxy.stop()
        return proxy.metrics.snapshot(), outcomes, kit.open_fds() - baseline

    try:
        metrics, outcomes, fd_delta = asyncio.run(scenario())
    finally:
        for s in (full, closed_port, *fillers):
            s.close()
    results = {mode: (data, err) for mode, (data, err, _) in outcomes}
    assert results["raise"] == (b"", "ECONNRESET")
    assert results["none"] == (b"", "ECONNRESET")
    assert results["refused"] == (b"", "ECONNRESET")
    assert results["blackhole"] == (b"", "ECONNRESET")
    assert results["ok"] == (b"echo:still alive", None)
    assert metrics["resolve_errors"] == 1
    assert metrics["connections_rejected"] == 1
    assert metrics["upstream_connect_errors"] == 2
    assert metrics["connections_accepted"] == 65
    assert metrics["connections_active"] == 0
    assert metrics["connection_errors"] == 0
    assert fd_delta == 0
    # The resolver's exception was logged once with its traceback.
    tracebacks = [r for r in caplog.records if r.exc_info and "resolver bug" in str(r.exc_info[1])]
    assert len(tracebacks) == 1


def test_relay_is_reusable_on_its_own() -> None:
    async def scenario():
        loop = asyncio.get_running_loop()
        ls = socket.socket()
        ls.bind(("127.0.0.1", 0))
        ls.listen(4)
        ls.setblocking(False)

        async def pair() -> tuple[socket.socket, socket.socket]:
            c = socket.socket()
            c.setblocking(False)
            connecting = asyncio.ensure_future(loop.sock_connect(c, ls.getsockname()))
            s, _ = await loop.sock_accept(ls)
            await connecting
            return c, s

        (left, a), (b, right) = await pair(), await pair()
        counts = ByteCounts()
        task = asyncio.create_task(relay(a, b, counts))
        await loop.sock_sendall(left, b"x" * 100_000)
        left.shutdown(socket.SHUT_WR)
        assert await kit.read_to_eof(right) == b"x" * 100_000
        await loop.sock_sendall(right, b"y" * 10)
        right.shutdown(socket.SHUT_WR)
        assert await kit.read_to_eof(left) == b"y" * 10
        result = await task
        for s in (left, a, b, right, ls):
            s.close()
        return result, counts

    result, counts = asyncio.run(scenario())
    assert result.outcome is RelayOutcome.CLOSED
    assert (result.a_to_b, result.b_to_a) == (100_000, 10) == (counts.a_to_b, counts.b_to_a)
    assert result.failed_side is None


def test_constructor_validates() -> None:
    async def resolve(client):
        return None

    with pytest.raises(ValueError):
        NodeProxy(("not-an-ip", 0), resolve=resolve)
    with pytest.raises(ValueError):
        NodeProxy(("127.0.0.1", 0), resolve=resolve, idle_timeout=0)
    with pytest.raises(RuntimeError, match="not started"):
        NodeProxy(("127.0.0.1", 0), resolve=resolve).address
