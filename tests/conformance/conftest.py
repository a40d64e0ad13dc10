"""The shared fabric of the conformance scenarios: three peers (cl0, cl1, cl2), each with a node
agent, an HTTP echo service exported as `echo` (answering with the peer's name, Export label
env=test), and client pods. Scenarios that break things (stop a gateway, swap certificates) build
their own fabric.

Each test leaves the fabric as it found it: objects it created are deleted afterwards.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

import pytest

from fabric.peer import ClusterLinkFabric, Peer, Pod

from .fabricutil import ECHO_PORT, doc

PEERS = ("cl0", "cl1", "cl2")

requires_root = pytest.mark.skipif(os.geteuid() != 0, reason="the fabric needs root (netns, cgroups, BPF)")


@dataclass
class World:
    fab: ClusterLinkFabric
    peers: dict[str, Peer]
    clients: dict[str, Pod]  # per peer: app=echo-client, service account default
    others: dict[str, Pod]  # per peer: app=other-client, service account non-default


def build_world(fab: ClusterLinkFabric, names=PEERS, *, agents: bool = True,  # type: ignore[no-untyped-def]
                vip_ranges: dict[str, str] | None = None) -> World:
    """`vip_ranges`: a peer's --vip-range, by name (IPv6 VIPs: fabric.places.VIP6_RANGE)."""
    peers, clients, others, echos = {}, {}, {}, {}
    for name in names:
        peer = fab.add_peer(name, labels={"cluster": name}, vip_range=(vip_ranges or {}).get(name, ""))
        peers[name] = peer
        echos[name] = peer.add_pod("echo", labels={"app": "echo"})
        clients[name] = peer.add_pod("client", labels={"app": "echo-client"})
        others[name] = peer.add_pod("other", labels={"app": "other-client"}, service_account="non-default")
    fab.start(agents=agents)
    for name, peer in peers.items():
        peer.apply(peer.peer_manifest())  # a peer may import its own exports (ClusterLink's LB scenarios)
        echos[name].serve_http_echo(ECHO_PORT, name=name)
        peer.apply(doc("LocalService", "echo", {"host": echos[name].ip}) + "---\n" +
                   doc("Export", "echo", {"port": ECHO_PORT}, labels={"env": "test"}))
    fab.wait_reachable(timeout=30)
    for peer in peers.values():
        peer.wait_condition("Export", "echo", "ExportValid")
    return World(fab, peers, clients, others)


@pytest.fixture(scope="session")
def world():
    if os.geteuid() != 0:
        pytest.skip("the fabric needs root (netns, cgroups, BPF)")
    with ClusterLinkFabric() as fab:
        yield build_world(fab)


KINDS = ("Import", "AccessPolicy", "PrivilegedAccessPolicy", "Export", "LocalService")


@pytest.fixture
def clean(world):
    """Delete, after the test, every object it added (and restore the baseline exports)."""
    before = {name: {k: {(o["metadata"].get("namespace", ""), o["metadata"]["name"]) for o in peer.get(k)}
                     for k in KINDS} for name, peer in world.peers.items()}
    yield world
    for name, peer in world.peers.items():
        for kind in KINDS:
            for obj in peer.get(kind):
                key = (obj["metadata"].get("namespace", ""), obj["metadata"]["name"])
                if key not in before[name][kind]:
                    peer.delete(kind, key[1], key[0])
        missing = before[name]["Export"] - {(o["metadata"]["namespace"], o["metadata"]["name"])
                                             for o in peer.get("Export")}
        for ns, export in missing:
            peer.apply(doc("Export", export, {"port": ECHO_PORT}, namespace=ns, labels={"env": "test"}))
