"""What the node proxy reuses between connections, over real loopback TCP: pipes (never carrying a
byte of one connection into another) and pre-connected upstream connections (never used once the
upstream closed them, closed unused when too old, refilled only while clients keep coming). No
privileges needed."""

from __future__ import annotations

import asyncio
import contextlib
import os
import socket
import struct
import time
from collections.abc import AsyncIterator

import pytest

from agent.proxy import NodeProxy, PipePool, ProxyMetrics, Upstream, UpstreamPool
from agent.proxy.pipes import make_pipe
from tests.integration.agent import kit

PREAMBLE = b"PREAMBLE v1\n"

pytestmark = pytest.mark.usefixtures("both_event_loops")


async def connect(address: tuple[str, int]) -> socket.socket:
    sock = socket.socket()
    sock.setblocking(False)
    await asyncio.get_running_loop().sock_connect(sock, address)
    return sock


async def until(predicate, timeout: float = 5.0) -> None:  # type: ignore[no-untyped-def]
    deadline = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < deadline, "condition not reached in time"
        await asyncio.sleep(0.01)


async def exchange(address: tuple[str, int], payload: bytes) -> bytes:
    """Send payload, half-close, read everything back."""
    loop = asyncio.get_running_loop()
    client = await connect(address)
    with client:
        await loop.sock_sendall(client, payload)
        client.shutdown(socket.SHUT_WR)
        async with asyncio.timeout(10):
            return await kit.read_to_eof(client)


async def echo(conn: socket.socket) -> None:
    """Checks the preamble, then echoes everything after it once the client is done."""
    line, rest = await kit.read_line(conn)
    assert line + b"\n" == PREAMBLE
    data = await kit.read_to_eof(conn, rest)
    await asyncio.get_running_loop().sock_sendall(conn, data)


@contextlib.asynccontextmanager
async def proxy_to(upstream: tuple[str, int], **kwargs) -> AsyncIterator[NodeProxy]:  # type: ignore[no-untyped-def]
    def resolve(client: tuple[str, int]) -> Upstream:
        return Upstream(upstream, PREAMBLE)

    proxy = NodeProxy(("127.0.0.1", 0), resolve=resolve, **kwargs)
    await proxy.start()
    try:
        yield proxy
    finally:
        await proxy.stop()


# -- pipes -----------------------------------------------------------------------------------------

def test_a_pipe_that_still_holds_bytes_is_never_pooled() -> None:
    pool = PipePool(max_idle=4)
    pipe = pool.take()
    os.write(pipe.w, b"left over from connection 1")
    pool.give(pipe, empty=True)  # a caller that miscounted: the kernel's count wins
    assert pool.idle == 0 and pipe.r == -1  # closed, not pooled
    clean = pool.take()
    assert clean.buffered() == 0
    pool.give(clean, empty=True)
    assert pool.idle == 1 and pool.take() is clean and pool.reused == 1
    pool.give(clean, empty=False)
    assert pool.idle == 0 and pool.discarded == 1
    pool.close()


def test_pipes_are_reused_and_never_mix_bytes_between_connections() -> None:
    """Connections cut while their pipes hold bytes (upstream reset while the client pushes
    megabytes it does not read), interleaved with connections whose echo must match exactly."""

    async def stuck_then_reset(conn: socket.socket) -> None:
        conn.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
        await kit.read_line(conn)
        await asyncio.sleep(0.3)  # the proxy's pipe towards us fills up meanwhile
        conn.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        conn.close()

    async def scenario() -> tuple[list[bool], PipePool, ProxyMetrics]:
        loop = asyncio.get_running_loop()
        matches = []
        async with kit.tcp_server(echo) as good, kit.tcp_server(stuck_then_reset) as bad:
            target = {"address": good}

            def resolve(client: tuple[str, int]) -> Upstream:
                return Upstream(target["address"], PREAMBLE)

            proxy = NodeProxy(("127.0.0.1", 0), resolve=resolve, pipes_idle=4)
            await proxy.start()
            try:
                for i in range(4):
                    target["address"] = bad
                    client = await connect(proxy.address)
                    with client:
                        # More than every buffer on the way holds: the pipe is full when the reset comes.
                        with contextlib.suppress(ConnectionError):
                            async with asyncio.timeout(5):
                                await loop.sock_sendall(client, f"garbage {i} ".encode() * 2_400_000)
                        await until(lambda: proxy.metrics.connections_active == 0)
                    target["address"] = good
                    payload = f"connection {i}: ".encode() + os.urandom(50_000)
                    matches.append(await exchange(proxy.address, payload) == payload)
                await until(lambda: proxy.metrics.connections_active == 0)
            finally:
                await proxy.stop()
        return matches, proxy.pipes, proxy.metrics

    matches, pipes, metrics = asyncio.run(scenario())
    assert matches == [True] * 4
    assert pipes.discarded >= 4  # every cut connection left bytes in a pipe: closed, never reused
    assert pipes.reused >= 4      # and clean pipes did go round
    assert metrics.connections_reset == 4 and metrics.connections_completed == 4


# -- pre-connected upstreams -----------------------------------------------------------------------

class Upstreams:
    """A test upstream that keeps its server-side sockets, so a test can close idle ones."""

    def __init__(self) -> None:
        self.accepted: list[socket.socket] = []
        self.first_bytes: dict[socket.socket, bytes] = {}
        self.tasks: dict[socket.socket, asyncio.Task] = {}

    async def handler(self, conn: socket.socket) -> None:
        self.accepted.append(conn)
        self.tasks[conn] = asyncio.current_task()  # type: ignore[assignment]
        loop = asyncio.get_running_loop()
        first = await loop.sock_recv(conn, 65536)
        self.first_bytes[conn] = first
        if not first:
            return  # closed unused
        rest = await kit.read_to_eof(conn, first)
        line, _, data = rest.partition(b"\n")
        await loop.sock_sendall(conn, b"echo:" + data)

    def unused(self) -> list[socket.socket]:
        return [c for c in self.accepted if c not in self.first_bytes]

    async def close_unused(self, *, reset: bool) -> None:
        """Close the connections nobody used, from the server side (FIN, or RST with `reset`). The
        handler's read is cancelled first: a socket must not be closed under a pending read (uvloop
        keeps watching the fd number, which the next accepted socket may reuse)."""
        for conn in self.unused():
            if reset:
                conn.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
            self.tasks[conn].cancel()  # its server task closes the socket as it ends
        await asyncio.sleep(0)


def test_pooled_upstreams_carry_connections_without_a_connect() -> None:
    ups = Upstreams()

    async def scenario() -> tuple[list[bytes], ProxyMetrics, int]:
        async with kit.tcp_server(ups.handler) as up, proxy_to(up, upstream_pool_size=2) as proxy:
            answers = [await exchange(proxy.address, b"first")]  # a miss: connects, then the pool fills
            await until(lambda: proxy.upstreams.idle() == 2)
            for i in range(5):
                answers.append(await exchange(proxy.address, f"request {i}".encode()))
                await until(lambda: proxy.upstreams.idle() == 2)
            return answers, proxy.metrics, len(ups.accepted)

    answers, metrics, accepted = asyncio.run(scenario())
    assert answers == [b"echo:first"] + [f"echo:request {i}".encode() for i in range(5)]
    assert metrics.upstream_pool_misses == 1 and metrics.upstream_pool_hits == 5
    assert accepted == 1 + 2 + 5  # the first connection, the pool, one refill per hit
    assert metrics.bytes_client_to_upstream == len(b"first") + sum(len(f"request {i}") for i in range(5))


@pytest.mark.parametrize("how", ["fin", "reset"])
def test_a_pooled_upstream_that_the_upstream_closed_is_not_used(how: str) -> None:
    ups = Upstreams()

    async def scenario() -> tuple[bytes, ProxyMetrics]:
        async with kit.tcp_server(ups.handler) as up, proxy_to(up, upstream_pool_size=2) as proxy:
            await exchange(proxy.address, b"warm up")
            await until(lambda: proxy.upstreams.idle() == 2 and len(ups.unused()) == 2)
            await ups.close_unused(reset=how == "reset")  # the gateway restarted, or gave up waiting
            await asyncio.sleep(0.05)
            answer = await exchange(proxy.address, b"after the close")
            return answer, proxy.metrics

    answer, metrics = asyncio.run(scenario())
    assert answer == b"echo:after the close"
    assert metrics.upstream_pool_stale == 2
    assert metrics.upstream_connect_errors == 0 and metrics.connections_reset == 0


def test_a_pooled_upstream_that_fails_at_the_first_write_is_replaced() -> None:
    """The upstream's close can race with the take: the first write then fails, and the proxy
    connects anew with the same bytes; the client never notices."""
    ups = Upstreams()

    async def scenario() -> tuple[bytes, ProxyMetrics]:
        async with kit.tcp_server(ups.handler) as up, proxy_to(up, upstream_pool_size=1) as proxy:
            await exchange(proxy.address, b"warm up")
            await until(lambda: proxy.upstreams.idle() == 1)
            for slot in proxy.upstreams._slots.values():  # looks open, but every write fails (EPIPE)
                for pooled in slot.idle:
                    pooled.sock.shutdown(socket.SHUT_WR)
            answer = await exchange(proxy.address, b"still delivered")
            return answer, proxy.metrics

    answer, metrics = asyncio.run(scenario())
    assert answer == b"echo:still delivered"
    assert metrics.upstream_pool_stale == 1 and metrics.connections_completed == 2


def test_pooled_upstreams_expire_unused_and_are_not_replaced_without_clients() -> None:
    ups = Upstreams()

    async def scenario() -> tuple[list[bytes], ProxyMetrics, int, int]:
        async with kit.tcp_server(ups.handler) as up, \
                proxy_to(up, upstream_pool_size=3, upstream_max_age=0.3) as proxy:
            await exchange(proxy.address, b"one client")
            await until(lambda: proxy.upstreams.idle() == 3)
            await until(lambda: proxy.upstreams.idle() == 0, timeout=2)
            await until(lambda: all(c in ups.first_bytes for c in ups.accepted))
            accepted = len(ups.accepted)
            await asyncio.sleep(0.6)  # two more max ages without a client: nothing new is opened
            return [ups.first_bytes[c] for c in ups.accepted], proxy.metrics, accepted, len(ups.accepted)

    first_bytes, metrics, accepted, accepted_later = asyncio.run(scenario())
    assert accepted == accepted_later == 4
    assert sorted(first_bytes) == [b"", b"", b"", PREAMBLE + b"one client"]  # closed without a byte
    assert metrics.upstream_pool_expired == 3 and metrics.upstream_pool_idle == 0


def test_stop_closes_pooled_upstreams_and_releases_every_fd() -> None:
    ups = Upstreams()

    async def scenario() -> tuple[int, list[bytes]]:
        baseline = kit.open_fds()
        async with kit.tcp_server(ups.handler) as up:
            async with proxy_to(up, upstream_pool_size=4) as proxy:
                await exchange(proxy.address, b"x")
                await until(lambda: proxy.upstreams.idle() == 4)
            await until(lambda: all(c in ups.first_bytes for c in ups.accepted))
            first_bytes = [ups.first_bytes[c] for c in ups.accepted]
        return kit.open_fds() - baseline, first_bytes

    fd_delta, first_bytes = asyncio.run(scenario())
    assert fd_delta == 0
    assert first_bytes.count(b"") == 4


def test_connect_failures_back_off() -> None:
    async def scenario() -> ProxyMetrics:
        closed = socket.socket()
        closed.bind(("127.0.0.1", 0))  # bound, never listening: refused
        metrics = ProxyMetrics()
        pool = UpstreamPool(size=2, max_age=5.0, metrics=metrics)
        pool.start()
        try:
            for _ in range(20):
                assert pool.take(closed.getsockname()) is None
                await asyncio.sleep(0.01)
        finally:
            pool.close()
            closed.close()
        return metrics

    metrics = asyncio.run(scenario())
    assert 1 <= metrics.upstream_pool_connect_errors <= 2  # not one per take: retried after a pause
    assert metrics.upstream_pool_misses == 20


def test_pool_constructors_validate() -> None:
    with pytest.raises(ValueError):
        UpstreamPool(size=0)
    with pytest.raises(ValueError):
        UpstreamPool(max_age=0)
    with pytest.raises(ValueError):
        PipePool(max_idle=-1)
    with pytest.raises(ValueError):
        NodeProxy(("127.0.0.1", 0), resolve=lambda c: None, upstream_pool_size=-1)
    make_pipe().close()
