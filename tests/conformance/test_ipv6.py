"""IPv6 VIPs on a dual-stack fabric: a peer whose control plane leases IPv6 service addresses
(--vip-range in fdc1:96::/64), pods with an IPv6 address towards their node, and the agent's
connect6 redirect into the proxy's IPv6 address; the client's identity still comes from its
cgroup (a policy on its labels applies). The peers themselves talk over the dual-stack WAN."""

from __future__ import annotations

import ipaddress
import json
import os
import time

import pytest

from fabric.peer import ClusterLinkFabric
from fabric.places import VIP6_RANGE
from fabric.workloads import EXIT_OK

from .conftest import build_world
from .fabricutil import ECHO_PORT, Access, allow_all, doc, import_doc, policy

pytestmark = pytest.mark.skipif(os.geteuid() != 0, reason="the fabric needs root (netns, cgroups, BPF)")

VIP6_LEASES = str(ipaddress.ip_network(VIP6_RANGE).subnets(new_prefix=112).__next__())


@pytest.fixture(scope="module")
def dual():
    with ClusterLinkFabric() as fab:
        yield build_world(fab, ("cl0", "cl1"), vip_ranges={"cl1": VIP6_LEASES})


def test_an_ipv6_vip_reaches_the_export_and_the_client_sees_it(dual):
    cl0, cl1 = dual.peers["cl0"], dual.peers["cl1"]
    cl0.apply(allow_all())
    cl1.apply(allow_all() + "---\n" + import_doc("echo", [("cl0", "echo")]))
    vip = cl1.vip("echo")
    assert ipaddress.ip_address(vip) in ipaddress.ip_network(VIP6_RANGE), vip
    access = Access(dual.fab, cl1, dual.clients["cl1"], "echo")
    assert access.url() == f"http://[{vip}]:{ECHO_PORT}/"
    access.expect("cl0")
    out = dual.clients["cl1"].workload("getpeername", "--host", vip, "--port", str(ECHO_PORT))
    assert out.returncode == EXIT_OK, out.stdout + out.stderr
    report = json.loads(out.stdout)
    # The application sees the VIP6 as its peer, and its own IPv6 address (not v4-mapped).
    assert report["peer"] == f"[{vip}]:{ECHO_PORT}" or report["peer"].startswith(vip), report
    assert dual.clients["cl1"].ip6 in report["local"], report


def test_policies_see_the_ipv6_clients_identity(dual):
    cl0, cl1 = dual.peers["cl0"], dual.peers["cl1"]
    cl0.apply(allow_all())
    cl1.apply(allow_all() + "---\n" + import_doc("echo", [("cl0", "echo")]) + "---\n" +
              policy("deny-client", "deny", src={"client.clusterlink.net/labels.app": "echo-client"}))
    try:
        Access(dual.fab, cl1, dual.clients["cl1"], "echo").expect(None)
        # Another workload (other labels) on the same node still gets through: the identity is
        # the cgroup's, not the node's.
        Access(dual.fab, cl1, dual.others["cl1"], "echo").expect("cl0")
    finally:
        cl1.delete("AccessPolicy", "deny-client")


def test_dns_over_udp_to_an_ipv6_vip(dual):
    """UDP to a VIP6: an AF_INET6 stub resolver's queries go v4-mapped to the agent's relay and the
    answers come back from the VIP6 (recvmsg6), through the UDP tunnel to cl0's DNS server."""
    import sys

    cl0, cl1 = dual.peers["cl0"], dual.peers["cl1"]
    echo = cl0.pods["echo"]
    server = echo.spawn([sys.executable, "-m", "fabric.workloads", "dns-server", "--port", "53",
                         "--answer", "192.0.2.60"], name="dns-server-v6")
    try:
        server.wait_log("listening", timeout=15)
        cl0.apply(allow_all() + "---\n" + doc("LocalService", "dns6", {"host": echo.ip}) + "---\n" +
                  doc("Export", "dns6", {"port": 53, "protocol": "UDP"}))
        cl0.wait_condition("Export", "dns6", "ExportValid")
        imp = import_doc("dns6", [("cl0", "dns6")], port=53).replace("spec:\n", "spec:\n  protocol: UDP\n", 1)
        cl1.apply(allow_all() + "---\n" + imp)
        vip = cl1.vip("dns6")
        assert ":" in vip, vip
        client = dual.clients["cl1"]
        deadline = time.monotonic() + 20
        while True:
            out = client.workload("dns-query", "--host", vip, "--port", "53", "--name", "six.example.test",
                                  "--count", "3", "--timeout", "3")
            if out.returncode == EXIT_OK or time.monotonic() > deadline:
                break
            time.sleep(0.3)
        assert out.returncode == EXIT_OK, out.stdout + out.stderr + dual.fab.logs()
        report = json.loads(out.stdout)
        assert report["answers"] == ["192.0.2.60"] * 3
        assert set(report["sources"]) == {f"{vip}:53"}
    finally:
        server.stop()
        for kind, name, peer in (("Import", "dns6", cl1), ("Export", "dns6", cl0), ("LocalService", "dns6", cl0)):
            peer.delete(kind, name)
