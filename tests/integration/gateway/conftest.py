"""Two real gateways (east, west; `clusterlink-gateway --workers 2` each), each fed by a static
control plane (a real grpc.aio server on a unix socket), certificates from controlplane.pki, and
named servers behind west's exports. Shared by the whole directory; tests change the snapshots
through `Fabric.publish_*` and put the baseline back when they are done (`Fabric.reset`).
"""

from __future__ import annotations

import datetime
import secrets
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from controlplane import pki
from controlplane.api import clusterlink_pb2 as pb

from .support import (
    ALLOW_ALL,
    ControlPlaneFixture,
    GatewayProcess,
    NamedServer,
    export_info,
    free_port,
    import_info,
    peer_info,
    policy,
    snapshot,
)

TEST_LIMITS = ["--handshake-timeout", "1", "--request-timeout", "2", "--connect-timeout", "1",
               "--response-timeout", "3", "--drain-timeout", "3", "--pool-keepalive", "2", "--idle-timeout", "10",
               "--tunnel-liveness-timeout", "5", "--pool-demand-window", "2"]

WEST_LABELS = {"cluster": "west", "region": "eu"}
EAST_LABELS = {"cluster": "east"}


@dataclass
class Certs:
    root: Path
    east: Path
    west: Path
    north: Path
    south: Path
    other_fabric_east: Path
    expired_east: Path


@dataclass
class Fabric:
    certs: Certs
    east_key: bytes
    west_key: bytes
    cp_east: ControlPlaneFixture
    cp_west: ControlPlaneFixture
    east: GatewayProcess
    west: GatewayProcess
    servers: dict[str, NamedServer]
    echo_port: int  # east's Import "echo" (from west/echo) listens here
    version: dict[str, int] = field(default_factory=lambda: {"east": 1, "west": 1})
    # Peers west serves besides east and north (a gateway serves only configured peers; north is
    # one that imports nothing); see test_compat.
    extra_west_peers: list[pb.PeerInfo] = field(default_factory=list)
    north_port: int = field(default_factory=free_port)  # nothing listens there

    # --- snapshots ---------------------------------------------------------------------------

    def west_exports(self) -> list[pb.ExportInfo]:
        return [export_info(name, server.port, labels={"app": name}) for name, server in self.servers.items()]

    def publish_west(self, *, exports: Iterable[pb.ExportInfo] | None = None,
                     policies: Iterable[pb.PolicyInfo] | None = None, wait: bool = True) -> int:
        self.version["west"] += 1
        v = self.version["west"]
        self.cp_west.publish(snapshot(v, "west", key=self.west_key, labels=WEST_LABELS,
                                      peers=[peer_info("east", self.east.peer_port, labels=EAST_LABELS),
                                             peer_info("north", self.north_port), *self.extra_west_peers],
                                      exports=self.west_exports() if exports is None else exports,
                                      policies=[policy("allow-all", ALLOW_ALL)] if policies is None else policies))
        if wait:
            self.west.wait_ready(v)
        return v

    def publish_east(self, *, imports: Iterable[pb.ImportInfo] = (), peers: Iterable[pb.PeerInfo] | None = None,
                     policies: Iterable[pb.PolicyInfo] | None = None, wait: bool = True) -> int:
        self.version["east"] += 1
        v = self.version["east"]
        base = [import_info("echo", self.echo_port, [("west", "echo")])]
        self.cp_east.publish(snapshot(
            v, "east", key=self.east_key, labels=EAST_LABELS,
            peers=[peer_info("west", self.west.peer_port, labels=WEST_LABELS)] if peers is None else peers,
            imports=base + list(imports),
            policies=[policy("allow-all", ALLOW_ALL)] if policies is None else policies))
        if wait:
            self.east.wait_ready(v)
        return v

    def reset(self) -> None:
        self.publish_west()
        self.publish_east()


def _certs(root: Path) -> Certs:
    pki.create_fabric(root)
    east = pki.create_peer_cert(root, "east")
    west = pki.create_peer_cert(root, "west")
    north = pki.create_peer_cert(root, "north")
    south = pki.create_peer_cert(root, "south")
    pki.create_fabric(root, "other_fabric")
    other = pki.create_peer_cert(root, "east", fabric="other_fabric")
    ca = pki.load_fabric(root)
    old = datetime.datetime.now(datetime.timezone.utc) - datetime.timedelta(days=30)
    expired = pki.write_peer_dir(root / "expired" / "east", pki.issue_peer_cert(ca, "east", days=1, now=old), ca.cert)
    return Certs(root, east, west, north, south, other, expired)


@pytest.fixture(scope="session")
def fabric(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Fabric]:
    root = tmp_path_factory.mktemp("gateway-fabric")
    certs = _certs(root / "pki")
    east_key, west_key = secrets.token_bytes(32), secrets.token_bytes(32)
    servers = {name: NamedServer(name) for name in ("echo", "a", "b", "c")}
    cp_east = ControlPlaneFixture(root / "cp-east.sock", snapshot(0, "east", key=east_key))
    cp_west = ControlPlaneFixture(root / "cp-west.sock", snapshot(0, "west", key=west_key))
    # The access log is on for both (test_accesslog reads it; every other test exercises it), and
    # denials are reported quickly (test_policy).
    extra = [*TEST_LIMITS, "--access-log", "on", "--denial-report-interval", "0.5"]
    east = GatewayProcess("east", certs.east, cp_east.socket_path, root, extra=extra)
    west = GatewayProcess("west", certs.west, cp_west.socket_path, root, extra=extra)
    fab = Fabric(certs, east_key, west_key, cp_east, cp_west, east, west, servers, echo_port=free_port())
    try:
        cp_east.start()
        cp_west.start()
        fab.publish_west(wait=False)
        fab.publish_east(wait=False)
        west.start()
        east.start()
        west.wait_ready(fab.version["west"])
        east.wait_ready(fab.version["east"])
        yield fab
    finally:
        for gateway in (east, west):
            gateway.stop()
        for cp in (cp_east, cp_west):
            cp.close()
        for server in servers.values():
            server.close()


@pytest.fixture
def net(fabric: Fabric) -> Iterator[Fabric]:
    """The fabric, put back to its baseline snapshots after the test."""
    yield fabric
    for gateway in (fabric.east, fabric.west):
        if gateway.proc is None or gateway.proc.poll() is not None:
            gateway.start()
    fabric.reset()
