"""ClusterLink's peer scenarios on a fabric of their own: peer status with the gateway down and back,
several gateways with a bad one first or last."""

from __future__ import annotations

import os

import pytest

from fabric.peer import ClusterLinkFabric

from .conftest import build_world
from .fabricutil import Access, allow_all, doc, import_doc

pytestmark = pytest.mark.skipif(os.geteuid() != 0, reason="the fabric needs root (netns, cgroups, BPF)")


@pytest.fixture(scope="module")
def pair():
    with ClusterLinkFabric() as fab:
        yield build_world(fab, ("cl0", "cl1"))


def test_peer_status_follows_the_gateway(pair):
    cl0, cl1 = pair.peers["cl0"], pair.peers["cl1"]
    cl1.wait_condition("Peer", "cl0", "PeerReachable", namespace="clusterlink-system")
    cl0.stop_gateway()
    try:
        cl1.wait_condition("Peer", "cl0", "PeerReachable", "False", namespace="clusterlink-system", timeout=20)
    finally:
        cl0.start_gateway()
    # back: probed every 10 s while unreachable, then 3 successes at 1 s
    cl1.wait_condition("Peer", "cl0", "PeerReachable", "True", namespace="clusterlink-system", timeout=30)


@pytest.mark.parametrize("order", ["bad-first", "bad-last"])
def test_multiple_gateways_with_a_bad_one(pair, order):
    cl0, cl1 = pair.peers["cl0"], pair.peers["cl1"]
    good = {"host": cl0.wan_ip, "port": 443}
    bad = {"host": "10.200.0.250", "port": 1234}  # on the WAN, nobody there
    gateways = [bad, good] if order == "bad-first" else [good, bad]
    cl1.apply(doc("Peer", "cl0", {"gateways": gateways}, namespace="clusterlink-system"))
    try:
        cl0.apply(allow_all())
        cl1.apply(allow_all() + "---\n" + import_doc("echo", [("cl0", "echo")]))
        cl1.wait_condition("Peer", "cl0", "PeerReachable", namespace="clusterlink-system", timeout=30)
        access = Access(pair.fab, cl1, pair.clients["cl1"], "echo")
        access.expect("cl0")
        assert set(access.servers(10)) == {"cl0"}
    finally:
        cl1.apply(doc("Peer", "cl0", {"gateways": [good]}, namespace="clusterlink-system"))
        cl1.delete("Import", "echo")


def test_only_a_bad_gateway_is_unreachable(pair):
    cl1 = pair.peers["cl1"]
    good = {"host": pair.peers["cl0"].wan_ip, "port": 443}
    cl1.apply(doc("Peer", "cl0", {"gateways": [{"host": "10.200.0.250", "port": 1234}]},
                  namespace="clusterlink-system"))
    try:
        cl1.wait_condition("Peer", "cl0", "PeerReachable", "False", namespace="clusterlink-system", timeout=30)
    finally:
        cl1.apply(doc("Peer", "cl0", {"gateways": [good]}, namespace="clusterlink-system"))
    cl1.wait_condition("Peer", "cl0", "PeerReachable", "True", namespace="clusterlink-system", timeout=30)


def test_a_peer_reachable_over_ipv6(pair):
    """The WAN is dual-stack and gateways listen on [::]:443: a Peer whose only gateway is an IPv6
    address is reachable (heartbeats), and connections to its exports go through tunnels over IPv6."""
    cl0, cl1 = pair.peers["cl0"], pair.peers["cl1"]
    v4 = {"host": cl0.wan_ip, "port": 443}
    cl1.apply(doc("Peer", "cl0", {"gateways": [{"host": cl0.wan_ip6, "port": 443}]}, namespace="clusterlink-system"))
    try:
        cl0.apply(allow_all())
        cl1.apply(allow_all() + "---\n" + import_doc("echo", [("cl0", "echo")]))
        cl1.wait_condition("Peer", "cl0", "PeerReachable", namespace="clusterlink-system", timeout=30)
        access = Access(pair.fab, cl1, pair.clients["cl1"], "echo")
        access.expect("cl0")
        # The tunnels really are IPv6: cl0's gateway has established connections from cl1's v6 address.
        out = cl0.net.run(["ss", "-Htn", "state", "established", "sport", "= :443"], timeout=10)
        assert f"[{cl1.wan_ip6}]" in out.stdout or cl1.wan_ip6 in out.stdout, out.stdout
    finally:
        cl1.apply(doc("Peer", "cl0", {"gateways": [v4]}, namespace="clusterlink-system"))
        cl1.delete("Import", "echo")
