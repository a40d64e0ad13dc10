"""The places of a fabric where processes run (peer gateways, nodes, pods): names, addresses and cgroups.

Everything here is derived from the address plan (see `fabric.topology` and docs/internals.md);
creating the kernel objects is `Topology.build()`'s job.
"""

from __future__ import annotations

import os
import re
import subprocess
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING

from fabric.process import Proc, run

if TYPE_CHECKING:
    from fabric.topology import Topology

VIP_RANGE = "10.96.0.0/12"
VIP6_RANGE = "fdc1:96::/64"  # IPv6 VIPs (a peer started with --vip-range in it); never routed either
WAN_CIDR = "10.200.0.0/24"
WAN6_CIDR = "fdc1:200::/64"  # the WAN is dual-stack: gateway of peer i also has fdc1:200::(i+1)
MAX_PEERS = 55  # 10.201 .. 10.255
MAX_NODES = 200  # LAN .10 .. .209, pod subnets 10.x.1 .. 10.x.200
MAX_PODS = 250  # .2 .. .251
RESERVED_NODE_NAMES = frozenset({"gw", "lan", "gateway"})  # would collide with the peer's own netns/cgroup names

_NAME = re.compile(r"[a-z0-9]([a-z0-9-]{0,22}[a-z0-9])?\Z")


def check_name(kind: str, name: str) -> None:
    if not _NAME.match(name):
        raise ValueError(f"{kind} name {name!r} must be 1-24 of [a-z0-9-], starting and ending alphanumeric")


class Place:
    """Somewhere in the fabric processes run: a netns and a cgroup (a pod, a node, a gateway)."""

    netns: str
    cgroup: Path
    topology: Topology

    def spawn(
        self,
        argv: Sequence[str | os.PathLike[str]],
        *,
        log_path: Path,
        env: Mapping[str, str] | None = None,
        cwd: str | Path | None = None,
    ) -> Proc:
        """Start a long-running process here, owned by the topology's process group."""
        return self.topology.processes.spawn(argv, netns=self.netns, cgroup=self.cgroup, env=env, log_path=log_path, cwd=cwd)

    def run(
        self,
        argv: Sequence[str | os.PathLike[str]],
        *,
        timeout: float = 30.0,
        check: bool = False,
        input: str | None = None,
        env: Mapping[str, str] | None = None,
    ) -> subprocess.CompletedProcess[str]:
        """Run a short command here (for example a client) and capture its output."""
        return run(argv, netns=self.netns, cgroup=self.cgroup, timeout=timeout, check=check, input=input, env=env)


class PodNet(Place):
    """A pod: a netns on its node's pod bridge and a cgroup under the node's `pods` cgroup."""

    def __init__(self, node: NodeNet, name: str, index: int) -> None:
        self.node = node
        self.name = name
        self.index = index
        self.built = False

    def __repr__(self) -> str:
        return f"<PodNet {self.peer.name}/{self.node.name}/{self.name} {self.ip}>"

    @property
    def topology(self) -> Topology:
        return self.node.peer.topology

    @property
    def peer(self) -> PeerNet:
        return self.node.peer

    @property
    def netns(self) -> str:
        return f"{self.node.netns}.{self.name}"

    @property
    def ip(self) -> str:
        return f"{self.node.pod_subnet_prefix}.{self.index + 2}"

    @property
    def ip6(self) -> str:
        """The pod's IPv6 address (pods are dual-stack towards their node: the agent's proxy)."""
        return f"{self.node.pod_subnet6_prefix}::{self.index + 2:x}"

    @property
    def cgroup(self) -> Path:
        return self.node.pods_cgroup / self.name

    @property
    def interface(self) -> str:
        """The pod's end of its veth (inside the pod netns)."""
        return self.topology.link_name("eth")

    @property
    def node_interface(self) -> str:
        """The node's end of the pod's veth (a port of the node's pod bridge)."""
        return self.topology.link_name(f"p{self.index}")


class NodeNet(Place):
    """A node: a netns on its peer's LAN with a pod bridge, forwarding on. Processes here (the agent) run in
    `cgroup` (`.../<node>/system`); pods are below `pods_cgroup` (`.../<node>/pods`)."""

    def __init__(self, peer: PeerNet, name: str, index: int) -> None:
        self.peer = peer
        self.name = name
        self.index = index
        self.pods: dict[str, PodNet] = {}
        self.built = False

    def __repr__(self) -> str:
        return f"<NodeNet {self.peer.name}/{self.name} {self.lan_ip}>"

    @property
    def topology(self) -> Topology:
        return self.peer.topology

    @property
    def netns(self) -> str:
        return f"{self.topology.prefix}.{self.peer.name}.{self.name}"

    @property
    def lan_ip(self) -> str:
        return f"{self.peer.lan_prefix}.{10 + self.index}"

    @property
    def pod_subnet_prefix(self) -> str:
        return f"10.{self.peer.octet}.{self.index + 1}"

    @property
    def pod_cidr(self) -> str:
        return f"{self.pod_subnet_prefix}.0/24"

    @property
    def pod_gateway_ip(self) -> str:
        """The node's pod-bridge address: pods' default gateway, reachable from every pod of the node."""
        return f"{self.pod_subnet_prefix}.1"

    @property
    def pod_subnet6_prefix(self) -> str:
        return f"fdc1:{self.peer.octet:x}:{self.index + 1:x}"

    @property
    def pod_gateway_ip6(self) -> str:
        """The node's pod-bridge IPv6 address (the agent's proxy listens there too)."""
        return f"{self.pod_subnet6_prefix}::1"

    @property
    def cgroup_dir(self) -> Path:
        return self.peer.cgroup_dir / self.name

    @property
    def cgroup(self) -> Path:
        return self.cgroup_dir / "system"

    @property
    def pods_cgroup(self) -> Path:
        """Parent cgroup of this node's pods (where the agent attaches its BPF programs)."""
        return self.cgroup_dir / "pods"

    @property
    def lan_interface(self) -> str:
        return self.topology.link_name("lan")

    @property
    def bridge(self) -> str:
        return self.topology.link_name("pods")

    def add_pod(self, name: str) -> PodNet:
        check_name("pod", name)
        if name in self.pods:
            raise ValueError(f"node {self.peer.name}/{self.name} already has a pod {name!r}")
        if len(self.pods) >= MAX_PODS:
            raise ValueError(f"at most {MAX_PODS} pods per node")
        pod = PodNet(self, name, len(self.pods))
        self.pods[name] = pod
        return pod


class PeerNet(Place):
    """A peer (cluster): a gateway netns on the WAN and on the peer's LAN (a bridge in its own netns).
    Gateway processes run in `cgroup` (`cl<id>/<peer>/gateway`)."""

    def __init__(self, topology: Topology, name: str, index: int) -> None:
        self.topology = topology
        self.name = name
        self.index = index
        self.nodes: dict[str, NodeNet] = {}
        self.built = False

    def __repr__(self) -> str:
        return f"<PeerNet {self.name} wan {self.wan_ip} lan {self.lan_ip}>"

    @property
    def octet(self) -> int:
        return 201 + self.index

    @property
    def lan_prefix(self) -> str:
        return f"10.{self.octet}.0"

    @property
    def netns(self) -> str:
        """The gateway's netns (also `gateway_netns`)."""
        return f"{self.topology.prefix}.{self.name}.gw"

    @property
    def gateway_netns(self) -> str:
        return self.netns

    @property
    def lan_netns(self) -> str:
        """The netns holding the LAN bridge (a switch: no addresses, no processes)."""
        return f"{self.topology.prefix}.{self.name}.lan"

    @property
    def wan_ip(self) -> str:
        return f"10.200.0.{self.index + 1}"

    @property
    def wan_ip6(self) -> str:
        return f"fdc1:200::{self.index + 1:x}"

    @property
    def lan_ip(self) -> str:
        return f"{self.lan_prefix}.1"

    @property
    def lan_cidr(self) -> str:
        return f"{self.lan_prefix}.0/24"

    @property
    def cidr(self) -> str:
        """Every address of the peer: its LAN and its nodes' pod subnets."""
        return f"10.{self.octet}.0.0/16"

    @property
    def cgroup_dir(self) -> Path:
        return self.topology.cgroup / self.name

    @property
    def cgroup(self) -> Path:
        return self.cgroup_dir / "gateway"

    @property
    def wan_interface(self) -> str:
        return self.topology.link_name("wan")

    @property
    def lan_interface(self) -> str:
        return self.topology.link_name("lan")

    def add_node(self, name: str) -> NodeNet:
        check_name("node", name)
        if name in RESERVED_NODE_NAMES:
            raise ValueError(f"node name {name!r} is reserved ({', '.join(sorted(RESERVED_NODE_NAMES))})")
        if name in self.nodes:
            raise ValueError(f"peer {self.name} already has a node {name!r}")
        if len(self.nodes) >= MAX_NODES:
            raise ValueError(f"at most {MAX_NODES} nodes per peer")
        node = NodeNet(self, name, len(self.nodes))
        self.nodes[name] = node
        return node
