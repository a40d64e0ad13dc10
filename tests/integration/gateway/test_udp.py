"""UDP flows through two real gateways: an agent-port connection whose preamble says udp carries
datagram capsules to a UDP export (west connects a UDP socket to the service), and what the
gateways do with a flow that breaks the rules."""

from __future__ import annotations

import socket
import threading
import time
from collections.abc import Iterator

import pytest

from controlplane.api import clusterlink_pb2 as pb
from controlplane.api.datagrams import MAX_CAPSULE, CapsuleDecoder, encode_datagram, encode_varint
from controlplane.api.preamble import Preamble, encode_preamble
from controlplane.tokens import TokenAuthority

from .conftest import Fabric
from .support import export_info, free_port, import_info, metric_value


UDP_TARGET_PORT = free_port()


class UdpEcho:
    """A UDP echo server on loopback (a thread), answering `<name>:` + the datagram."""

    def __init__(self, name: str) -> None:
        self.name = name.encode()
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        self.sock.bind(("127.0.0.1", 0))
        self.port = self.sock.getsockname()[1]
        self.sources: set[tuple[str, int]] = set()
        self._thread = threading.Thread(target=self._serve, daemon=True)
        self._thread.start()

    def _serve(self) -> None:
        while True:
            try:
                data, addr = self.sock.recvfrom(65535)
            except OSError:
                return
            self.sources.add(addr)
            self.sock.sendto(self.name + b":" + data, addr)

    def close(self) -> None:
        self.sock.close()


@pytest.fixture
def udp(net: Fabric) -> Iterator[tuple[Fabric, UdpEcho]]:
    echo = UdpEcho("uecho")
    udp_export = pb.ExportInfo(namespace="default", name="uecho", target_host="127.0.0.1", port=echo.port,
                               valid=True, protocol="UDP")
    both = export_info("tcponly", net.servers["a"].port)
    net.publish_west(exports=[*net.west_exports(), udp_export, both])
    uimport = import_info("uecho", UDP_TARGET_PORT, [("west", "uecho")])
    uimport.protocol = "UDP"
    mismatch = import_info("tcponly-as-udp", free_port(), [("west", "tcponly")])
    mismatch.protocol = "UDP"
    net.publish_east(imports=[uimport, mismatch])
    try:
        yield net, echo
    finally:
        echo.close()


def _flow(net: Fabric, name: str, *, udp: bool = True) -> socket.socket:
    credential = TokenAuthority(net.east_key, "east").mint_agent_credential("n1")
    sock = socket.create_connection(("127.0.0.1", net.east.agent_port), timeout=5)
    sock.sendall(encode_preamble(Preamble(import_namespace="default", import_name=name, destination="10.96.0.9:53",
                                          client={"client.clusterlink.net/namespace": "default"},
                                          credential=credential, node="n1", udp=udp)))
    return sock


def _datagrams(sock: socket.socket, n: int) -> list[bytes]:
    decoder = CapsuleDecoder()
    out: list[bytes] = []
    while len(out) < n:
        try:
            data = sock.recv(65536)
        except TimeoutError:
            raise AssertionError(f"no more datagrams after {[len(d) for d in out]} ({decoder.pending} bytes "
                                 "of a capsule pending)") from None
        if not data:
            raise ConnectionError(f"the flow ended after {out!r}")
        out += decoder.feed(data)
    return out


def test_datagrams_go_through_and_come_back_whole(udp) -> None:  # type: ignore[no-untyped-def]
    net, echo = udp
    sock = _flow(net, "uecho")
    payloads = [b"one", b"", bytes(range(256)) * 200]  # 51200 bytes: one datagram, not a stream
    sock.sendall(b"".join(encode_datagram(p) for p in payloads))
    assert _datagrams(sock, 3) == [b"uecho:" + p for p in payloads]
    # One flow is one UDP socket at the exporting gateway: one source address at the service.
    assert len(echo.sources) == 1
    sock.close()


def test_garbage_capsules_end_that_flow_only(udp) -> None:  # type: ignore[no-untyped-def]
    net, _ = udp
    bad = _flow(net, "uecho")
    bad.sendall(b"\x00" + encode_varint(MAX_CAPSULE + 1) + b"junk")
    bad.settimeout(10)
    try:
        assert bad.recv(65536) == b""
    except ConnectionResetError:
        pass  # reset or closed: either way the flow is over
    bad.close()
    good = _flow(net, "uecho")
    good.sendall(encode_datagram(b"still here"))
    assert _datagrams(good, 1) == [b"uecho:still here"]
    good.close()


def _reset_or_closed(sock: socket.socket) -> bool:
    sock.settimeout(10)
    try:
        return sock.recv(65536) == b""
    except ConnectionResetError:
        return True


def test_protocol_mismatches_are_refused_and_counted(udp) -> None:  # type: ignore[no-untyped-def]
    net, _ = udp
    # A TCP connection for a UDP-only Import: east resets it.
    before = metric_value(net.east.metrics(), "clusterlink_gateway_connections_total", direction="egress",
                          service="default/uecho", peer="", result="wrong-protocol")
    tcp = _flow(net, "uecho", udp=False)
    assert _reset_or_closed(tcp)
    tcp.close()
    deadline = time.monotonic() + 5
    while metric_value(net.east.metrics(), "clusterlink_gateway_connections_total", direction="egress",
                       service="default/uecho", peer="", result="wrong-protocol") != before + 1:
        assert time.monotonic() < deadline
        time.sleep(0.1)
    # A UDP flow to an export that carries TCP only: west refuses the tunnel (400), east resets.
    flow = _flow(net, "tcponly-as-udp")
    flow.sendall(encode_datagram(b"x"))
    assert _reset_or_closed(flow)
    flow.close()
    deadline = time.monotonic() + 5
    while metric_value(net.west.metrics(), "clusterlink_gateway_connections_total", direction="ingress",
                       service="default/tcponly", peer="east", result="wrong-protocol") < 1:
        assert time.monotonic() < deadline, net.west.log_tail()
        time.sleep(0.1)


def test_the_target_port_takes_udp_from_clients_without_an_agent(udp) -> None:  # type: ignore[no-untyped-def]
    net, _ = udp
    clients = [socket.socket(socket.AF_INET, socket.SOCK_DGRAM) for _ in range(2)]
    try:
        for i, sock in enumerate(clients):
            sock.settimeout(2)
            deadline = time.monotonic() + 10
            while True:  # the listener opens with the snapshot: retry until it answers
                sock.sendto(b"q%d" % i, ("127.0.0.1", UDP_TARGET_PORT))
                try:
                    data, source = sock.recvfrom(65536)
                    break
                except (TimeoutError, ConnectionRefusedError):
                    assert time.monotonic() < deadline, net.east.log_tail()
            assert data == b"uecho:q%d" % i and source == ("127.0.0.1", UDP_TARGET_PORT)
            sock.sendto(b"again", ("127.0.0.1", UDP_TARGET_PORT))  # the same flow
            assert sock.recvfrom(65536)[0] == b"uecho:again"
    finally:
        for sock in clients:
            sock.close()


def test_a_flow_ends_when_the_exporting_gateway_dies_and_a_new_one_works_after_its_restart(udp) -> None:  # type: ignore[no-untyped-def]
    net, _ = udp
    flow = _flow(net, "uecho")
    flow.sendall(encode_datagram(b"before"))
    assert _datagrams(flow, 1) == [b"uecho:before"]
    net.west.kill()
    started = time.monotonic()
    assert _reset_or_closed(flow)  # the agent side learns at once: its flow ends (no hang)
    assert time.monotonic() - started < 5
    flow.close()
    net.west.start()
    net.west.wait_ready(net.version["west"])
    deadline = time.monotonic() + 20
    while True:  # east's pool notices the restarted peer; a client retries as a UDP client does
        again = _flow(net, "uecho")
        again.sendall(encode_datagram(b"after"))
        try:
            assert _datagrams(again, 1) == [b"uecho:after"]
            break
        except (AssertionError, ConnectionError, OSError):
            assert time.monotonic() < deadline, net.east.log_tail()
            time.sleep(0.3)
        finally:
            again.close()
