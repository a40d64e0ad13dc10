"""The simulated fabric's topology: peers, nodes and pods built from netns, veth pairs, bridges and cgroup v2 dirs.

Declare with `add_peer` / `add_node` / `add_pod`, then `build()`; `destroy()` removes everything
(also what a crashed run with the same fabric id left). Every name starts with `cl<id>`.

Address plan (also in docs/internals.md, "Simulated fabric"); peer i, node j of that peer, pod k
of that node, all counted from 0 in the order they were added:

    WAN (netns cl<id>.wan, bridge only)      10.200.0.0/24        gateway of peer i: 10.200.0.(i+1)
    LAN of peer i (netns cl<id>.<peer>.lan)  10.(201+i).0.0/24    gateway .1, node j .(10+j)
    pods of node j                           10.(201+i).(j+1).0/24  node bridge .1, pod k .(k+2)
    VIP range (never routed)                 10.96.0.0/12         `unreachable` in every netns

Nothing has an uplink or a default route to the real network: gateways know the WAN and their LAN
(plus their nodes' pod subnets), nodes know their LAN and their peer's pod subnets, pods have a
default route via their node's bridge. Only nodes forward.
"""

from __future__ import annotations

import logging
import os
import re
import secrets
import subprocess
from collections.abc import Mapping, Sequence
from pathlib import Path

from fabric import cgroups, netns
from fabric.leftovers import DEFAULT_RUNTIME_ROOT, find_leftovers
from fabric.process import Proc, ProcessGroup, run
from fabric.removal import Removal, write_owner

log = logging.getLogger(__name__)

VIP_RANGE = "10.96.0.0/12"
WAN_CIDR = "10.200.0.0/24"
MAX_PEERS = 55  # 10.201 .. 10.255
MAX_NODES = 200  # LAN .10 .. .209, pod subnets 10.x.1 .. 10.x.200
MAX_PODS = 250  # .2 .. .251
IFNAMSIZ = 15
RESERVED_NODE_NAMES = frozenset({"gw", "lan", "gateway"})  # would collide with the peer's own netns/cgroup names

_FABRIC_ID = re.compile(r"[0-9a-f]{4}\Z")
_NAME = re.compile(r"[a-z0-9]([a-z0-9-]{0,22}[a-z0-9])?\Z")


class FabricError(RuntimeError):
    """The fabric cannot be built as asked."""


class FabricInUse(FabricError):
    """Objects with this fabric id already exist (a live fabric, or leftovers: run `python -m fabric.cleanup`)."""


def new_fabric_id() -> str:
    return secrets.token_hex(2)


def _check_name(kind: str, name: str) -> None:
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
        _check_name("pod", name)
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
        _check_name("node", name)
        if name in RESERVED_NODE_NAMES:
            raise ValueError(f"node name {name!r} is reserved ({', '.join(sorted(RESERVED_NODE_NAMES))})")
        if name in self.nodes:
            raise ValueError(f"peer {self.name} already has a node {name!r}")
        if len(self.nodes) >= MAX_NODES:
            raise ValueError(f"at most {MAX_NODES} nodes per peer")
        node = NodeNet(self, name, len(self.nodes))
        self.nodes[name] = node
        return node


class Topology:
    """N peers on this machine. Use as a context manager: `with Topology() as topo: ...; topo.build()`."""

    def __init__(
        self,
        fabric_id: str | None = None,
        *,
        runtime_root: Path = DEFAULT_RUNTIME_ROOT,
        cgroup_root: Path = cgroups.DEFAULT_ROOT,
    ) -> None:
        if fabric_id is not None and not _FABRIC_ID.match(fabric_id):
            raise ValueError(f"fabric id {fabric_id!r} must be 4 lowercase hex digits")
        self._explicit_id = fabric_id is not None
        self.fabric_id = fabric_id or new_fabric_id()
        self.runtime_root = Path(runtime_root)
        self.cgroup_root = Path(cgroup_root)
        self.peers: dict[str, PeerNet] = {}
        self.processes = ProcessGroup(self.pid_file)
        self._netns: list[str] = []  # owner registry, in creation order, recorded before each creation
        self._cgroups: list[Path] = []
        self._claimed = False
        self._wan_built = False

    def __repr__(self) -> str:
        return f"<Topology {self.prefix} peers={list(self.peers)}>"

    # names ------------------------------------------------------------------------------------
    @property
    def prefix(self) -> str:
        return f"cl{self.fabric_id}"

    @property
    def wan_netns(self) -> str:
        return f"{self.prefix}.wan"

    @property
    def wan_bridge(self) -> str:
        return self.link_name("wan")

    @property
    def cgroup(self) -> Path:
        return self.cgroup_root / self.prefix

    @property
    def runtime_dir(self) -> Path:
        """Holds `owner` (who built it) and `pids` (every process spawned through `processes`)."""
        return self.runtime_root / self.prefix

    @property
    def pid_file(self) -> Path:
        return self.runtime_dir / "pids"

    def link_name(self, suffix: str) -> str:
        name = self.prefix + suffix
        if len(name) > IFNAMSIZ:
            raise ValueError(f"link name {name!r} is longer than {IFNAMSIZ} characters")
        return name

    def pods(self) -> list[PodNet]:
        return [pod for peer in self.peers.values() for node in peer.nodes.values() for pod in node.pods.values()]

    # declaration ------------------------------------------------------------------------------
    def add_peer(self, name: str) -> PeerNet:
        _check_name("peer", name)
        if name in self.peers:
            raise ValueError(f"fabric already has a peer {name!r}")
        if len(self.peers) >= MAX_PEERS:
            raise ValueError(f"at most {MAX_PEERS} peers")
        peer = PeerNet(self, name, len(self.peers))
        self.peers[name] = peer
        return peer

    # life cycle -------------------------------------------------------------------------------
    def __enter__(self) -> Topology:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.destroy()

    def build(self) -> Topology:
        """Create everything declared and not yet built. On failure, destroy everything and re-raise."""
        if not self._claimed:
            self._claim()  # outside the clean-up below: a refused claim must not destroy the fabric that holds the id
        try:
            if not self._wan_built:
                self._build_wan()
            for peer in self.peers.values():
                if not peer.built:
                    self._build_peer(peer)
                new_nodes = [n for n in peer.nodes.values() if not n.built]
                for node in new_nodes:
                    self._build_node(node)
                if new_nodes:
                    self._route_pod_subnets(peer)
                for node in peer.nodes.values():
                    for pod in node.pods.values():
                        if not pod.built:
                            self._build_pod(pod)
        except BaseException as exc:
            log.error("building fabric %s failed, destroying what was built: %r", self.prefix, exc)
            try:
                self.destroy()
            except Exception as cleanup_exc:  # noqa: BLE001 - attached to the original error, which is raised
                exc.add_note(f"destroying the half-built fabric {self.prefix} failed too: {cleanup_exc!r}")
            raise
        return self

    def destroy(self) -> None:
        """Stop processes and remove every object of this fabric id. Idempotent; raises an ExceptionGroup of
        whatever could not be removed (after trying everything)."""
        errors: list[Exception] = []
        try:
            self.processes.stop_all()
        except ExceptionGroup as group:
            errors.extend(group.exceptions)
        if self._claimed or self._explicit_id:
            # Registry first (reverse creation order), then anything else with our prefix (a crashed run of the
            # same id, or objects another process made with it).
            removal = Removal(report=log.debug)
            removal.run(
                pid_files=[self.pid_file],
                cgroup_paths=reversed(self._cgroups),
                netns_names=reversed(self._netns),
                paths=[self.runtime_dir] if self._claimed else [],
            )
            errors.extend(removal.errors)
            sweep = Removal(report=log.warning)
            sweep.run(**find_leftovers(self.prefix, self.runtime_root, self.cgroup_root).removal_args())
            errors.extend(sweep.errors)
            log.info("fabric %s destroyed (%d objects removed)", self.prefix, len(removal.removed) + len(sweep.removed))
        self._netns.clear()
        self._cgroups.clear()
        self._claimed = self._wan_built = False
        for peer in self.peers.values():
            peer.built = False
            for node in peer.nodes.values():
                node.built = False
                for pod in node.pods.values():
                    pod.built = False
        if errors:
            raise ExceptionGroup(f"destroying fabric {self.prefix} left something behind", errors)

    # building ---------------------------------------------------------------------------------
    def _claim(self) -> None:
        """Take the fabric id: atomically create the runtime dir and check that nothing else uses the id."""
        if not cgroups.is_cgroup2_mount(self.cgroup_root):
            raise FabricError(f"{self.cgroup_root} is not a cgroup v2 mount")
        self.runtime_root.mkdir(parents=True, exist_ok=True)
        for _attempt in range(100):
            try:
                self.runtime_dir.mkdir()
            except FileExistsError:
                busy = f"its runtime dir {self.runtime_dir} exists"
            else:
                busy = self._in_use()
                if busy:
                    self.runtime_dir.rmdir()
            if not busy:
                break
            if self._explicit_id:
                raise FabricInUse(f"fabric id {self.fabric_id} is in use: {busy}; leftovers? `python -m fabric.cleanup --id {self.fabric_id}`")
            self.fabric_id = new_fabric_id()
            self.processes.pid_file = self.pid_file
        else:
            raise FabricInUse("no free fabric id found in 100 attempts")
        write_owner(self.runtime_dir)
        self.pid_file.touch()
        self._claimed = True
        log.info("fabric %s claimed by pid %d", self.prefix, os.getpid())

    def _in_use(self) -> str:
        if netns.names(self.prefix):
            return f"network namespaces {netns.names(self.prefix)} exist"
        if self.cgroup.exists():
            return f"cgroup {self.cgroup} exists"
        return ""

    def _mkcgroup(self, path: Path) -> None:
        self._cgroups.append(path)
        path.mkdir()

    def _new_netns(self, name: str, *, forwarding: bool = False) -> None:
        self._netns.append(name)
        netns.add(name)
        netns.sysctl(
            name,
            {
                "net.ipv4.ip_forward": int(forwarding),  # new namespaces inherit the root's value: always set it
                "net.ipv6.conf.default.disable_ipv6": 1,  # no IPv6 on our links (lo keeps ::1)
                **({"net.ipv4.icmp_ratemask": 0} if forwarding else {}),
            },
        )

    @staticmethod
    def _base_config() -> list[str]:
        return ["link set lo up", f"route add unreachable {VIP_RANGE}"]

    def _build_wan(self) -> None:
        self._mkcgroup(self.cgroup)
        self._new_netns(self.wan_netns)
        netns.ip_batch(
            self.wan_netns,
            self._base_config() + [f"link add {self.wan_bridge} type bridge", f"link set {self.wan_bridge} up"],
        )
        self._wan_built = True

    def _build_peer(self, peer: PeerNet) -> None:
        self._mkcgroup(peer.cgroup_dir)
        self._mkcgroup(peer.cgroup)
        lan_bridge = self.link_name("lan")
        self._new_netns(peer.lan_netns)
        netns.ip_batch(peer.lan_netns, self._base_config() + [f"link add {lan_bridge} type bridge", f"link set {lan_bridge} up"])
        self._new_netns(peer.netns)
        wan_port, lan_port = self.link_name(f"w{peer.index}"), self.link_name("gw")
        netns.add_veth(wan_port, self.wan_netns, peer.wan_interface, peer.netns)
        netns.add_veth(lan_port, peer.lan_netns, peer.lan_interface, peer.netns)
        netns.ip_batch(self.wan_netns, [f"link set {wan_port} master {self.wan_bridge}", f"link set {wan_port} up"])
        netns.ip_batch(peer.lan_netns, [f"link set {lan_port} master {lan_bridge}", f"link set {lan_port} up"])
        netns.ip_batch(
            peer.netns,
            self._base_config()
            + [
                f"addr add {peer.wan_ip}/24 dev {peer.wan_interface}",
                f"link set {peer.wan_interface} up",
                f"addr add {peer.lan_ip}/24 dev {peer.lan_interface}",
                f"link set {peer.lan_interface} up",
            ],
        )
        peer.built = True

    def _build_node(self, node: NodeNet) -> None:
        peer = node.peer
        self._mkcgroup(node.cgroup_dir)
        self._mkcgroup(node.cgroup)
        self._mkcgroup(node.pods_cgroup)
        self._new_netns(node.netns, forwarding=True)
        lan_port = self.link_name(f"n{node.index}")
        netns.add_veth(lan_port, peer.lan_netns, node.lan_interface, node.netns)
        netns.ip_batch(peer.lan_netns, [f"link set {lan_port} master {self.link_name('lan')}", f"link set {lan_port} up"])
        netns.ip_batch(
            node.netns,
            self._base_config()
            + [
                f"addr add {node.lan_ip}/24 dev {node.lan_interface}",
                f"link set {node.lan_interface} up",
                f"link add {node.bridge} type bridge",
                f"addr add {node.pod_gateway_ip}/24 dev {node.bridge}",
                f"link set {node.bridge} up",
            ],
        )
        # A forwarded packet with no route is answered by the kernel's ip_error, rate limited machine-wide
        # (5 then 1/s per source): pods would see timeouts instead of "unreachable". So the node refuses, at
        # once and without rate limit (icmp_ratemask 0, set with forwarding), whatever its pods send outside
        # their peer.
        netns.nft(
            node.netns,
            f"table ip {self.prefix} {{\n"
            "  chain prerouting {\n"
            "    type filter hook prerouting priority filter; policy accept;\n"
            f'    iifname "{node.bridge}" ip daddr != {peer.cidr} reject with icmp type host-unreachable\n'
            "  }\n"
            "}\n",
        )
        node.built = True

    def _route_pod_subnets(self, peer: PeerNet) -> None:
        """The gateway and every node of `peer` route each node's pod subnet via that node's LAN address."""
        nodes = [n for n in peer.nodes.values() if n.built]
        netns.ip_batch(peer.netns, [f"route replace {n.pod_cidr} via {n.lan_ip}" for n in nodes])
        for node in nodes:
            routes = [f"route replace {n.pod_cidr} via {n.lan_ip}" for n in nodes if n is not node]
            if routes:
                netns.ip_batch(node.netns, routes)

    def _build_pod(self, pod: PodNet) -> None:
        node = pod.node
        self._mkcgroup(pod.cgroup)
        self._new_netns(pod.netns)
        netns.add_veth(pod.node_interface, node.netns, pod.interface, pod.netns)
        netns.ip_batch(node.netns, [f"link set {pod.node_interface} master {node.bridge}", f"link set {pod.node_interface} up"])
        netns.ip_batch(
            pod.netns,
            self._base_config()
            + [
                f"addr add {pod.ip}/24 dev {pod.interface}",
                f"link set {pod.interface} up",
                f"route add default via {node.pod_gateway_ip}",
            ],
        )
        pod.built = True

