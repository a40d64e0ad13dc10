"""The agent's UDP relays over real loopback sockets: a gateway stand-in (a TCP server that reads
the preamble and answers each datagram capsule), clients sending to the relay sockets."""

from __future__ import annotations

import asyncio
import socket

import pytest

from agent.proxy.datagrams import UdpMetrics, UdpRelays
from agent.proxy.server import Upstream
from controlplane.api.datagrams import MAX_CAPSULE, CapsuleDecoder, encode_datagram, encode_varint
from controlplane.api.preamble import PreambleReader

SERVICE = ("10.96.0.53", 53)
OTHER = ("10.96.0.54", 53)


class Gateway:
    """Reads a preamble, then answers every datagram with `tag` + it; `garbage`: answers bytes that
    are no capsule."""

    def __init__(self, tag: bytes = b"gw:", garbage: bool = False) -> None:
        self.tag = tag
        self.garbage = garbage
        self.preambles: list = []
        self.server: asyncio.Server | None = None

    async def start(self) -> tuple[str, int]:
        self.server = await asyncio.start_server(self._serve, "127.0.0.1", 0)
        return self.server.sockets[0].getsockname()[:2]

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        preamble_reader, decoder = PreambleReader(), CapsuleDecoder()
        preamble = None
        try:
            while data := await reader.read(65536):
                if preamble is None:
                    preamble = preamble_reader.feed(data)
                    if preamble is None:
                        continue
                    self.preambles.append(preamble)
                    data = preamble_reader.rest
                for payload in decoder.feed(data):
                    writer.write(b"\x00" + encode_varint(MAX_CAPSULE + 1) if self.garbage else
                                 encode_datagram(self.tag + payload))
                await writer.drain()
        except ConnectionError:
            pass
        finally:
            writer.close()

    async def close(self) -> None:
        if self.server is not None:
            self.server.close()
            await self.server.wait_closed()


def _client() -> socket.socket:
    sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    sock.bind(("127.0.0.1", 0))
    sock.setblocking(False)
    return sock


async def _ask(sock: socket.socket, relay: tuple[str, int], payload: bytes, timeout: float = 5.0) -> bytes:
    loop = asyncio.get_running_loop()
    await loop.sock_sendto(sock, payload, relay)
    data, source = await asyncio.wait_for(loop.sock_recvfrom(sock, 65536), timeout)
    assert source == relay  # (the datapath's recvmsg4 makes it the VIP for redirected clients)
    return data


def test_flows_carry_datagrams_both_ways_one_gateway_connection_each() -> None:
    async def scenario() -> None:
        gateway = Gateway()
        address = await gateway.start()
        ended: list = []
        relays = UdpRelays("127.0.0.1", lambda service, client: Upstream(address, _preamble(service)),
                           on_flow_end=ended.append)
        table = relays.sync([SERVICE, OTHER])
        assert set(table) == {SERVICE, OTHER} and table[SERVICE] != table[OTHER]
        a, b = _client(), _client()
        try:
            assert await _ask(a, table[SERVICE], b"q1") == b"gw:q1"
            assert await _ask(a, table[SERVICE], b"q2") == b"gw:q2"  # same flow
            assert await _ask(b, table[SERVICE], b"") == b"gw:"  # an empty datagram is one too
            assert await _ask(a, table[OTHER], b"q3") == b"gw:q3"  # another service: another flow
            assert relays.flows() == 3 and relays.metrics.flows_started == 3
            assert [p.destination for p in gateway.preambles].count(f"{SERVICE[0]}:{SERVICE[1]}") == 2
            assert all(p.udp for p in gateway.preambles)
            # Removing a service closes its relay and its flows.
            assert set(relays.sync([SERVICE])) == {SERVICE}
            await asyncio.sleep(0.05)
            assert relays.flows() == 2 and len(ended) == 1
        finally:
            a.close()
            b.close()
            await relays.close()
            await gateway.close()
        assert relays.flows() == 0 and relays.metrics.active_flows == 0

    asyncio.run(scenario())


def _preamble(service: tuple[str, int]) -> bytes:
    from controlplane.api.preamble import Preamble, encode_preamble

    return encode_preamble(Preamble(import_namespace="default", import_name="dns",
                                    destination=f"{service[0]}:{service[1]}", udp=True))


def test_an_idle_flow_ends_and_the_next_datagram_starts_a_new_one() -> None:
    async def scenario() -> None:
        gateway = Gateway()
        address = await gateway.start()
        ended: list = []
        relays = UdpRelays("127.0.0.1", lambda service, client: Upstream(address, _preamble(service)),
                           idle_timeout=0.2, on_flow_end=ended.append)
        table = relays.sync([SERVICE])
        a = _client()
        try:
            assert await _ask(a, table[SERVICE], b"one") == b"gw:one"
            await asyncio.sleep(0.5)
            assert relays.flows() == 0 and ended == [a.getsockname()]
            assert await _ask(a, table[SERVICE], b"two") == b"gw:two"
            assert relays.metrics.flows_started == 2 and len(gateway.preambles) == 2
        finally:
            a.close()
            await relays.close()
            await gateway.close()

    asyncio.run(scenario())


def test_failures_drop_datagrams_and_never_stop_the_relay() -> None:
    async def scenario() -> None:
        broken = Gateway(garbage=True)
        broken_address = await broken.start()
        good = Gateway()
        good_address = await good.start()
        dead = socket.socket()
        dead.bind(("127.0.0.1", 0))
        dead_address = dead.getsockname()  # bound, never listening: connections are refused
        routes = {"none": None, "dead": Upstream(dead_address, _preamble(SERVICE)),
                  "garbage": Upstream(broken_address, _preamble(SERVICE)),
                  "good": Upstream(good_address, _preamble(SERVICE))}
        choice = ["none"]
        metrics = UdpMetrics()
        relays = UdpRelays("127.0.0.1", lambda service, client: routes[choice[0]], metrics=metrics, max_flows=3)
        relay = relays.sync([SERVICE])[SERVICE]
        loop = asyncio.get_running_loop()
        clients = [_client() for _ in range(5)]
        try:
            # No route (no sender record, unknown Import): dropped, no flow.
            await loop.sock_sendto(clients[0], b"x", relay)
            await asyncio.sleep(0.1)
            assert metrics.flows_failed == 1 and metrics.datagrams_dropped == 1 and relays.flows() == 0
            # The gateway refuses the connection: the flow fails and goes away.
            choice[0] = "dead"
            await loop.sock_sendto(clients[1], b"x", relay)
            for _ in range(50):
                await asyncio.sleep(0.05)
                if relays.flows() == 0 and metrics.flows_failed == 2:
                    break
            assert relays.flows() == 0 and metrics.flows_failed == 2
            # The gateway answers garbage: that flow is reset, nothing reaches the client.
            choice[0] = "garbage"
            await loop.sock_sendto(clients[2], b"x", relay)
            for _ in range(50):
                await asyncio.sleep(0.05)
                if relays.flows() == 0 and metrics.flows_started == 2:
                    break
            assert relays.flows() == 0
            # The flow limit: a new client beyond it is dropped; existing flows go on.
            choice[0] = "good"
            for sock in clients[2:]:
                assert await _ask(sock, relay, b"y") == b"gw:y"
            await loop.sock_sendto(clients[0], b"over the limit", relay)
            await asyncio.sleep(0.1)
            assert relays.flows() == 3 and metrics.datagrams_dropped >= 2
            assert await _ask(clients[2], relay, b"still") == b"gw:still"
        finally:
            for sock in clients:
                sock.close()
            dead.close()
            await relays.close()
            await broken.close()
            await good.close()

    asyncio.run(scenario())


def test_a_bad_idle_timeout_is_refused() -> None:
    with pytest.raises(ValueError, match="idle_timeout"):
        UdpRelays("127.0.0.1", lambda s, c: None, idle_timeout=0)
