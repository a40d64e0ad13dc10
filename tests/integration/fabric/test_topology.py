"""The topology as a user of the fabric sees it: names, addresses, who reaches whom, and what nobody reaches."""

from __future__ import annotations

import json
import time

import pytest

from fabric import Topology, netns
from fabric.workloads import EXIT_OK, EXIT_UNREACHABLE
from tests.integration.fabric.support import WORKLOADS, http_echo, http_get, privileged

pytestmark = privileged


def all_netns(topo: Topology) -> list[str]:
    names = [topo.wan_netns]
    for peer in topo.peers.values():
        names += [peer.lan_netns, peer.netns]
        for node in peer.nodes.values():
            names.append(node.netns)
            names += [pod.netns for pod in node.pods.values()]
    return names


def getpeername(client, host: str, port: int, timeout: float = 3.0):
    return client.run(
        WORKLOADS + ["getpeername", "--host", host, "--port", str(port), "--timeout", str(timeout)], timeout=timeout + 10
    )


def test_names_and_addresses_follow_the_plan(fabric: Topology) -> None:
    a, b = fabric.peers["a"], fabric.peers["b"]
    n1, n2 = a.nodes["n1"], a.nodes["n2"]
    p = fabric.prefix
    assert (a.netns, a.lan_netns, fabric.wan_netns) == (f"{p}.a.gw", f"{p}.a.lan", f"{p}.wan")
    assert (a.wan_ip, b.wan_ip, a.lan_ip, b.lan_ip) == ("10.200.0.1", "10.200.0.2", "10.201.0.1", "10.202.0.1")
    assert (n1.lan_ip, n2.lan_ip, n1.pod_gateway_ip, n2.pod_gateway_ip) == (
        "10.201.0.10", "10.201.0.11", "10.201.1.1", "10.201.2.1",
    )
    assert [pod.ip for pod in fabric.pods()] == ["10.201.1.2", "10.201.1.3", "10.201.2.2", "10.202.1.2"]
    assert n1.pods["p1"].netns == f"{p}.a.n1.p1"
    root = fabric.cgroup_root
    assert n1.pods["p1"].cgroup == root / p / "a/n1/pods/p1"
    assert n1.pods_cgroup == root / p / "a/n1/pods"
    assert (n1.cgroup, a.cgroup) == (root / p / "a/n1/system", root / p / "a/gateway")
    for pod in fabric.pods():
        assert pod.cgroup.is_dir()


def test_every_object_carries_the_fabric_prefix(fabric: Topology) -> None:
    expected = set(all_netns(fabric))
    assert set(netns.names(fabric.prefix)) == expected
    for name in expected:
        links = [link for link in netns.links(name) if link != "lo"]
        assert links and all(link.startswith(fabric.prefix) for link in links), (name, links)
    assert netns.links(None, fabric.prefix) == []  # nothing of ours in the root namespace


def test_loopback_up_and_vip_range_unreachable_everywhere(fabric: Topology) -> None:
    for name in all_netns(fabric):
        lo = json.loads(fabric.peers["a"].run(["ip", "-n", name, "-j", "link", "show", "lo"], check=True).stdout)[0]
        assert "UP" in lo["flags"], name
        routes = json.loads(fabric.peers["a"].run(["ip", "-n", name, "-j", "route", "show", "10.96.0.0/12"], check=True).stdout)
        assert [(r["type"], r["dst"]) for r in routes] == [("unreachable", "10.96.0.0/12")], name


def test_no_namespace_has_a_way_out(fabric: Topology) -> None:
    """Only pods have a default route (to their node); nodes and gateways have nowhere to send 1.1.1.1."""
    a = fabric.peers["a"]
    for name in [a.netns, a.nodes["n1"].netns, fabric.peers["b"].netns]:
        result = a.run(["ip", "-n", name, "route", "get", "1.1.1.1"])
        assert result.returncode != 0 and "unreachable" in result.stderr.lower(), (name, result)
    pod = a.nodes["n1"].pods["p1"]
    started = time.monotonic()
    result = getpeername(pod, "1.1.1.1", 80)
    assert result.returncode == EXIT_UNREACHABLE, result  # the node answers "unreachable"
    assert time.monotonic() - started < 2


def test_forwarding_only_on_nodes(fabric: Topology) -> None:
    a = fabric.peers["a"]
    for place, expected in [(a, "0"), (a.nodes["n1"], "1"), (a.nodes["n1"].pods["p1"], "0")]:
        assert place.run(["sysctl", "-n", "net.ipv4.ip_forward"], check=True).stdout.strip() == expected


@pytest.mark.parametrize(
    ("client", "server"),
    [
        (("a", "n1", "p1"), ("a", "n1", "p2")),  # same node, through the node's pod bridge
        (("a", "n1", "p1"), ("a", "n2", "p3")),  # across nodes of one peer, routed by the nodes
        (("a", "n2", "p3"), ("a", "n1", "p1")),
    ],
)
def test_pod_to_pod_within_a_peer(fabric: Topology, tmp_path, client, server) -> None:
    src = fabric.peers[client[0]].nodes[client[1]].pods[client[2]]
    dst = fabric.peers[server[0]].nodes[server[1]].pods[server[2]]
    http_echo(dst, dst.name, 8080, tmp_path)
    result = http_get(src, f"http://{dst.ip}:8080/hello")
    assert result.returncode == EXIT_OK, result.stderr
    answer = json.loads(result.stdout)
    assert (answer["server"], answer["path"]) == (dst.name, "/hello")
    assert answer["client"].split(":")[0] == src.ip  # no NAT anywhere


def test_pods_reach_their_gateway_on_its_lan_address(fabric: Topology, tmp_path) -> None:
    a = fabric.peers["a"]
    http_echo(a, "gateway-a", 4443, tmp_path, host=a.lan_ip)
    for pod in a.nodes["n1"].pods["p1"], a.nodes["n2"].pods["p3"]:
        result = http_get(pod, f"http://{a.lan_ip}:4443/")
        assert result.returncode == EXIT_OK, result.stderr
        assert json.loads(result.stdout)["client"].split(":")[0] == pod.ip


def test_pods_reach_their_nodes_pod_gateway_ip(fabric: Topology, tmp_path) -> None:
    """Where the agent proxy listens: the node's pod-bridge address, from the node's pods."""
    node = fabric.peers["a"].nodes["n1"]
    http_echo(node, "agent-n1", 15001, tmp_path, host=node.pod_gateway_ip)
    for pod in node.pods.values():
        result = http_get(pod, f"http://{node.pod_gateway_ip}:15001/")
        assert result.returncode == EXIT_OK, result.stderr


def test_gateways_reach_each_other_over_the_wan(fabric: Topology, tmp_path) -> None:
    a, b = fabric.peers["a"], fabric.peers["b"]
    http_echo(b, "gateway-b", 443, tmp_path)
    result = http_get(a, f"http://{b.wan_ip}:443/peer")
    assert result.returncode == EXIT_OK, result.stderr
    assert json.loads(result.stdout)["client"].split(":")[0] == a.wan_ip


def test_only_gateways_talk_across_peers(fabric: Topology, tmp_path) -> None:
    a, b = fabric.peers["a"], fabric.peers["b"]
    b_pod = b.nodes["n1"].pods["p1"]
    http_echo(b_pod, "b-p1", 8080, tmp_path)
    http_echo(b, "gateway-b", 443, tmp_path)
    assert http_get(b.nodes["n1"], f"http://{b_pod.ip}:8080/").returncode == EXIT_OK  # the server is up
    a_pod = a.nodes["n1"].pods["p1"]
    for client, target in [
        (a_pod, f"{b_pod.ip}:8080"),  # a pod of peer a to a pod of peer b
        (a_pod, f"{b.wan_ip}:443"),  # a pod of peer a to the WAN
        (a_pod, f"{b.lan_ip}:443"),  # a pod of peer a to peer b's LAN
        (a, f"{b_pod.ip}:8080"),  # a's gateway to b's pods: the WAN carries gateway traffic only
        (a.nodes["n1"], f"{b.wan_ip}:443"),  # a node to the WAN
    ]:
        result = http_get(client, f"http://{target}/", timeout=2)
        assert result.returncode == EXIT_UNREACHABLE, (client, target, result.stderr)


def test_vip_connect_fails_fast_and_sends_nothing(fabric: Topology) -> None:
    pod = fabric.peers["a"].nodes["n1"].pods["p1"]

    def tx_packets() -> int:
        out = pod.run(["ip", "-s", "-j", "link", "show", pod.interface], check=True).stdout
        return int(json.loads(out)[0]["stats64"]["tx"]["packets"])

    before = tx_packets()
    started = time.monotonic()
    result = getpeername(pod, "10.96.0.5", 80, timeout=5)
    elapsed = time.monotonic() - started
    assert result.returncode == EXIT_UNREACHABLE, result.stderr
    assert elapsed < 2, elapsed
    assert tx_packets() == before  # the route said no before any packet was made
    for place in fabric.peers["a"], fabric.peers["a"].nodes["n1"]:
        assert getpeername(place, "10.96.0.5", 80).returncode == EXIT_UNREACHABLE
