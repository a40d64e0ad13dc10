"""The agent's pure pieces: the node table made from a snapshot (which VIP:ports go where, by
protocol and family) and the byte layouts of the BPF map keys and values."""

from __future__ import annotations

import ctypes
import socket

import pytest
from hypothesis import given
from hypothesis import strategies as st

from agent.datapath import layout
from agent.sync.table import NodeTable
from controlplane.api import clusterlink_pb2 as pb


def _snapshot() -> pb.Snapshot:
    def imp(name: str, vip: str, port: int, protocol: str = "") -> pb.ImportInfo:
        return pb.ImportInfo(namespace="default", name=name, port=port, vip=vip, protocol=protocol)

    return pb.Snapshot(version=7, peer_name="east", gateway_agent_address="10.0.0.1:4443", imports=[
        imp("web", "10.96.0.1", 80), imp("dns", "10.96.0.2", 53, "UDP"), imp("both", "10.96.0.3", 5201, "TCPAndUDP"),
        imp("web6", "fdc1:96::1", 80), imp("dns6", "fdc1:96::2", 53, "UDP"),
        imp("future", "10.96.0.4", 9, "SCTP"),  # a protocol this agent does not know: not redirected
        imp("novip", "", 81),
    ], workloads=[pb.WorkloadInfo(cgroup="/pods/a", namespace="default", name="a", labels={"app": "x"})])


def test_services_by_protocol_and_family() -> None:
    table = NodeTable.from_snapshot(_snapshot())
    proxy, proxy6 = ("10.0.0.9", 15001), ("fdc1::9", 15001)
    assert table.services(proxy) == {("10.96.0.1", 80): proxy, ("10.96.0.3", 5201): proxy}
    assert table.services6(proxy6) == {("fdc1:96::1", 80): proxy6}
    assert sorted(table.udp_services()) == [("10.96.0.2", 53), ("10.96.0.3", 5201), ("fdc1:96::2", 53)]
    assert ("10.96.0.4", 9) not in table.imports and len(table.imports) == 5
    assert table.imports[("10.96.0.3", 5201)].protocols == frozenset({"TCP", "UDP"})
    assert table.gateway == ("10.0.0.1", 4443) and table.version == 7


def test_a_workload_is_found_from_a_nested_cgroup() -> None:
    table = NodeTable.from_snapshot(_snapshot())
    found = table.workload_for("/pods/a/container-1")
    assert found is not None and found.name == "a" and found.service_account == "default"
    assert table.workload_for("/pods/b") is None


def test_address_layouts_hold_network_byte_order() -> None:
    addr = layout.make_addr("10.1.2.3", 443, layout.IPPROTO_UDP)
    assert bytes(addr) == socket.inet_aton("10.1.2.3") + (443).to_bytes(2, "big") + bytes([17, 0])
    assert layout.addr_triple(addr) == ("10.1.2.3", 443, 17)
    six = layout.make_addr6("fdc1:96::5", 53)
    assert bytes(six) == socket.inet_pton(socket.AF_INET6, "fdc1:96::5") + (53).to_bytes(2, "big") + bytes([6, 0])
    mapped = layout.make_addr6("10.1.2.3", 80)
    assert bytes(mapped)[:16] == b"\0" * 10 + b"\xff\xff" + socket.inet_aton("10.1.2.3")
    assert layout.addr6_triple(mapped) == ("10.1.2.3", 80, 6)  # v4-mapped comes back as IPv4
    assert ctypes.sizeof(layout.Addr) == 8 and ctypes.sizeof(layout.Addr6) == 20
    assert ctypes.sizeof(layout.Orig) == 16 and ctypes.sizeof(layout.Orig6) == 32


@given(st.ip_addresses(v=6), st.integers(1, 65535))
def test_ipv6_endpoints_round_trip(ip, port) -> None:  # type: ignore[no-untyped-def]
    text = str(ip)
    expected = str(ip.ipv4_mapped) if ip.ipv4_mapped is not None else text
    assert layout.addr6_triple(layout.make_addr6(text, port, layout.IPPROTO_UDP)) == (expected, port, 17)


@pytest.mark.parametrize("bad", ["300.1.1.1", "not an address"])  # the Datapath validates strictly first
def test_bad_addresses_are_refused(bad: str) -> None:
    with pytest.raises(OSError):
        layout.make_addr(bad, 80)
