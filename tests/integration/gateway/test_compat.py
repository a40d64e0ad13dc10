"""Interoperation with a gateway that does not frame tunnels (like the original ClusterLink):
a third gateway, south, runs with --framed-tunnels off; it exports a service to east and imports
one from west. Plain CONNECT tunnels are used both ways, half-close and resets included."""

from __future__ import annotations

import hashlib
import secrets
import socket
from collections.abc import Iterator
from dataclasses import dataclass

import pytest

from .conftest import TEST_LIMITS, WEST_LABELS, Fabric
from .support import (
    ALLOW_ALL,
    ControlPlaneFixture,
    GatewayProcess,
    NamedServer,
    export_info,
    free_port,
    greeting,
    import_info,
    open_import,
    peer_info,
    policy,
    read_line,
    snapshot,
)


@dataclass
class South:
    gateway: GatewayProcess
    server: NamedServer
    import_port: int  # south's Import of west/echo
    east_port: int  # east's Import of south/plain


@pytest.fixture(scope="module")
def south(fabric: Fabric, tmp_path_factory: pytest.TempPathFactory) -> Iterator[South]:
    root = tmp_path_factory.mktemp("south")
    key = secrets.token_bytes(32)
    server = NamedServer("plain")
    import_port, east_port = free_port(), free_port()
    cp = ControlPlaneFixture(root / "cp-south.sock", snapshot(0, "south", key=key))
    gateway = GatewayProcess("south", fabric.certs.south, cp.socket_path, root,
                             extra=[*TEST_LIMITS, "--framed-tunnels", "off"])
    try:
        cp.start()
        cp.publish(snapshot(1, "south", key=key, peers=[peer_info("west", fabric.west.peer_port, labels=WEST_LABELS),
                                                        peer_info("east", fabric.east.peer_port)],
                            exports=[export_info("plain", server.port)],
                            imports=[import_info("from-west", import_port, [("west", "echo")])],
                            policies=[policy("allow-all", ALLOW_ALL)]))
        gateway.start()
        gateway.wait_ready(1)
        fabric.extra_west_peers.append(peer_info("south", gateway.peer_port))  # west serves south
        fabric.publish_west()
        yield South(gateway, server, import_port, east_port)
    finally:
        fabric.extra_west_peers.clear()
        fabric.publish_west()
        gateway.stop()
        cp.close()
        server.close()


def _hash_roundtrip(port: int, name: str, size: int = 8 << 20) -> None:
    sock = open_import(port, timeout=30)
    assert greeting(sock) == name
    payload = hashlib.sha256(b"compat").digest() * (size // 32)
    sock.sendall(b"HASH\n" + payload)
    sock.shutdown(socket.SHUT_WR)  # carried as TLS close_notify on a plain tunnel
    assert read_line(sock).decode().split() == [hashlib.sha256(payload).hexdigest(), str(len(payload))]
    sock.close()


def test_framing_peer_to_plain_peer(net: Fabric, south: South) -> None:
    net.publish_east(peers=[peer_info("west", net.west.peer_port, labels=WEST_LABELS),
                            peer_info("south", south.gateway.peer_port)],
                     imports=[import_info("from-south", south.east_port, [("south", "plain")])])
    reuses = net.east.metric("clusterlink_gateway_tunnel_reuses_total", peer="south")
    for _ in range(3):
        _hash_roundtrip(south.east_port, "plain")
    assert net.east.metric("clusterlink_gateway_tunnel_reuses_total", peer="south") == reuses


def test_plain_peer_to_framing_peer(net: Fabric, south: South) -> None:
    for _ in range(3):
        _hash_roundtrip(south.import_port, "echo")
    assert south.gateway.metric("clusterlink_gateway_tunnel_reuses_total") == 0
