"""The simulated fabric's topology: peers, nodes and pods built from netns, veth pairs, bridges and cgroup v2 dirs.

Declare with `add_peer` / `add_node` / `add_pod`, then `build()`; `destroy()` removes everything
(also what a crashed run with the same fabric id left). Every name starts with `cl<id>`.

Address plan (also in docs/internals.md, "Simulated fabric"); peer i, node j of that peer, pod k
of that node, all counted from 0 in the order they were added:

    WAN (netns cl<id>.wan, bridge only)      10.200.0.0/24        gateway of peer i: 10.200.0.(i+1)
                                             fdc1:200::/64        gateway of peer i: fdc1:200::(i+1)
    LAN of peer i (netns cl<id>.<peer>.lan)  10.(201+i).0.0/24    gateway .1, node j .(10+j)
    pods of node j                           10.(201+i).(j+1).0/24  node bridge .1, pod k .(k+2)
      and IPv6 (pod <-> node only)           fdc1:<201+i>:<j+1>::/64 (hex)  node bridge ::1, pod k ::(k+2)
    VIP range (never routed)                 10.96.0.0/12         `unreachable` in every netns
    IPv6 VIP range (never routed)            fdc1:96::/64         `unreachable` in every netns

Nothing has an uplink or a default route to the real network: gateways know the WAN and their LAN
(plus their nodes' pod subnets), nodes know their LAN and their peer's pod subnets, pods have a
default route via their node's bridge. Only nodes forward, and only within their peer: anything else
their pods send is rejected at once (ICMP host unreachable).
"""

from __future__ import annotations

import logging
import os
import re
import secrets
from pathlib import Path

from fabric import cgroups, netns
from fabric.leftovers import DEFAULT_RUNTIME_ROOT, find_leftovers
from fabric.places import (
    MAX_PEERS,
    VIP6_RANGE,
    VIP_RANGE,
    WAN_CIDR,
    NodeNet,
    PeerNet,
    Place,
    PodNet,
    check_name,
)
from fabric.process import ProcessGroup
from fabric.removal import Removal, write_owner

__all__ = ["FabricError", "FabricInUse", "NodeNet", "PeerNet", "Place", "PodNet", "Topology", "VIP_RANGE", "WAN_CIDR"]

log = logging.getLogger(__name__)

IFNAMSIZ = 15
_FABRIC_ID = re.compile(r"[0-9a-f]{4}\Z")


class FabricError(RuntimeError):
    """The fabric cannot be built as asked."""


class FabricInUse(FabricError):
    """Objects with this fabric id already exist (a live fabric, or leftovers: run `python -m fabric.cleanup`)."""


def new_fabric_id() -> str:
    return secrets.token_hex(2)


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
        check_name("peer", name)
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
        return ["link set lo up", f"route add unreachable {VIP_RANGE}", f"route add unreachable {VIP6_RANGE}"]

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
        # The WAN is dual-stack (the only IPv6 link of the fabric): no router advertisements, no
        # duplicate address detection (the addresses are ours and unique; DAD would delay them).
        netns.sysctl(peer.netns, {f"net.ipv6.conf.{peer.wan_interface}.disable_ipv6": 0,
                                  f"net.ipv6.conf.{peer.wan_interface}.accept_ra": 0})
        netns.ip_batch(self.wan_netns, [f"link set {wan_port} master {self.wan_bridge}", f"link set {wan_port} up"])
        netns.ip_batch(peer.lan_netns, [f"link set {lan_port} master {lan_bridge}", f"link set {lan_port} up"])
        netns.ip_batch(
            peer.netns,
            self._base_config()
            + [
                f"addr add {peer.wan_ip}/24 dev {peer.wan_interface}",
                f"addr add {peer.wan_ip6}/64 dev {peer.wan_interface} nodad",
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
        # Pods are dual-stack towards their node only (IPv6 VIPs reach the agent's proxy at the
        # bridge's IPv6 address; IPv6 is not forwarded: forwarding is off for it).
        netns.sysctl(node.netns, {f"net.ipv6.conf.{node.bridge}.disable_ipv6": 0,
                                  f"net.ipv6.conf.{node.bridge}.accept_ra": 0})
        netns.ip_batch(node.netns, [f"addr add {node.pod_gateway_ip6}/64 dev {node.bridge} nodad"])
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
        netns.sysctl(pod.netns, {f"net.ipv6.conf.{pod.interface}.disable_ipv6": 0,
                                 f"net.ipv6.conf.{pod.interface}.accept_ra": 0})
        netns.ip_batch(pod.netns, [f"addr add {pod.ip6}/64 dev {pod.interface} nodad",
                                   f"route add ::/0 via {node.pod_gateway_ip6}"])
        pod.built = True

