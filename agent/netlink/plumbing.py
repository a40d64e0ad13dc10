"""Plumbing: network namespaces, veth pairs, addresses and routes for tests and host setup.

Everything a Plumbing creates is registered when created and removed by `cleanup()` in reverse
order, even when some steps fail (the failures are raised together at the end). Deleting a
namespace removes what is inside it; deleting a veth removes its peer.
"""

from __future__ import annotations

import errno
import ipaddress
import logging
import os
from collections.abc import Callable

from pyroute2 import IPRoute, netns
from pyroute2.netlink.exceptions import NetlinkError

from agent.netlink.errors import NetworkSetupError, translate

log = logging.getLogger(__name__)

IFNAMSIZ = 15  # usable characters of a Linux interface name
NETNS_RUN_DIR = "/run/netns"


def _check_ifname(name: str) -> None:
    if not name or len(name) > IFNAMSIZ or "/" in name or " " in name:
        raise ValueError(f"interface name {name!r} must be 1..{IFNAMSIZ} characters, no '/' or space")


def _ipr(ns: str | None) -> IPRoute:
    if ns is None:
        return IPRoute()
    if not os.path.exists(os.path.join(NETNS_RUN_DIR, ns)):
        raise NetworkSetupError(errno.ENOENT, f"network namespace {ns} does not exist")
    return IPRoute(netns=ns, flags=0)  # flags=0: never create it by accident


def _where(ns: str | None) -> str:
    return f"netns {ns}" if ns else "the current netns"


def _index(ipr: IPRoute, ifname: str, ns: str | None) -> int:
    found = ipr.link_lookup(ifname=ifname)
    if not found:
        raise NetworkSetupError(errno.ENODEV, f"interface {ifname} does not exist in {_where(ns)}")
    return found[0]


def netns_path(name: str) -> str:
    """The bind-mount path of a named netns (for nsenter --net=...)."""
    return os.path.join(NETNS_RUN_DIR, name)


class Plumbing:
    """An owner of network objects; `cleanup()` removes all of them."""

    def __init__(self) -> None:
        self._undo: list[tuple[str, Callable[[], None]]] = []

    def _register(self, what: str, undo: Callable[[], None]) -> None:
        self._undo.append((what, undo))

    # -- namespaces ------------------------------------------------------------------------------

    def add_netns(self, name: str) -> str:
        """Create a named network namespace with its loopback up; returns its path."""
        if os.path.exists(netns_path(name)):
            raise NetworkSetupError(errno.EEXIST, f"network namespace {name} already exists")
        try:
            netns.create(name)
        except OSError as exc:
            raise NetworkSetupError(exc.errno or errno.EIO, f"creating netns {name}: {exc}") from exc
        self._register(f"netns {name}", lambda: self._remove_netns(name))
        self.set_up("lo", netns=name)
        log.debug("Created netns %s.", name)
        return netns_path(name)

    @staticmethod
    def _remove_netns(name: str) -> None:
        if os.path.exists(netns_path(name)):
            netns.remove(name)

    # -- links -----------------------------------------------------------------------------------

    def add_veth(self, name: str, peer: str, *, netns: str | None = None, peer_netns: str | None = None) -> None:
        """A veth pair: `name` in `netns` (None: current), `peer` moved into `peer_netns`."""
        _check_ifname(name)
        _check_ifname(peer)
        peer_spec: dict[str, object] = {"ifname": peer}
        if peer_netns is not None:
            if not os.path.exists(netns_path(peer_netns)):
                raise NetworkSetupError(errno.ENOENT, f"network namespace {peer_netns} does not exist")
            peer_spec["net_ns_fd"] = peer_netns
        with _ipr(netns) as ipr:
            try:
                ipr.link("add", ifname=name, kind="veth", peer=peer_spec)
            except NetlinkError as exc:
                raise translate(exc, f"creating veth {name}/{peer} in {_where(netns)}") from exc
        self._register(f"veth {name} in {_where(netns)}", lambda: self._delete_link(name, netns))

    @staticmethod
    def _delete_link(name: str, ns: str | None) -> None:
        if ns is not None and not os.path.exists(netns_path(ns)):
            return
        with _ipr(ns) as ipr:
            found = ipr.link_lookup(ifname=name)
            if found:
                try:
                    ipr.link("del", index=found[0])
                except NetlinkError as exc:
                    if exc.code != errno.ENODEV:
                        raise

    def move_link(self, ifname: str, to_netns: str, *, netns: str | None = None) -> None:
        """Move an interface into another namespace (it goes away with that namespace or its pair)."""
        with _ipr(netns) as ipr:
            index = _index(ipr, ifname, netns)
            try:
                ipr.link("set", index=index, net_ns_fd=to_netns)
            except NetlinkError as exc:
                raise translate(exc, f"moving {ifname} into netns {to_netns}") from exc

    def set_up(self, ifname: str, *, netns: str | None = None) -> None:
        with _ipr(netns) as ipr:
            index = _index(ipr, ifname, netns)
            try:
                ipr.link("set", index=index, state="up")
            except NetlinkError as exc:
                raise translate(exc, f"setting {ifname} up in {_where(netns)}") from exc

    # -- addresses and routes --------------------------------------------------------------------

    def add_address(self, ifname: str, cidr: str, *, netns: str | None = None) -> None:
        """Add an IPv4 address ("10.1.2.3/24") to ifname; removed again by cleanup()."""
        iface = ipaddress.IPv4Interface(cidr)
        address, prefixlen = str(iface.ip), iface.network.prefixlen
        with _ipr(netns) as ipr:
            index = _index(ipr, ifname, netns)
            try:
                ipr.addr("add", index=index, address=address, prefixlen=prefixlen)
            except NetlinkError as exc:
                raise translate(exc, f"adding {cidr} to {ifname} in {_where(netns)}") from exc

        def undo() -> None:
            if netns is not None and not os.path.exists(netns_path(netns)):
                return
            with _ipr(netns) as ipr:
                found = ipr.link_lookup(ifname=ifname)
                if not found:
                    return
                try:
                    ipr.addr("del", index=found[0], address=address, prefixlen=prefixlen)
                except NetlinkError as exc:
                    if exc.code != errno.EADDRNOTAVAIL:
                        raise

        self._register(f"address {cidr} on {ifname} in {_where(netns)}", undo)

    def add_route(self, dst: str, *, gateway: str | None = None, device: str | None = None,
                  unreachable: bool = False, netns: str | None = None) -> None:
        """Add an IPv4 route: via gateway/device, or `unreachable` (a guard: packets to dst are
        refused locally and never leave)."""
        network = ipaddress.IPv4Network(dst)
        spec: dict[str, object] = {"dst": str(network.network_address), "dst_len": network.prefixlen}
        if unreachable:
            spec["type"] = "unreachable"
        if gateway is not None:
            spec["gateway"] = gateway
        with _ipr(netns) as ipr:
            if device is not None:
                spec["oif"] = _index(ipr, device, netns)
            try:
                ipr.route("add", **spec)
            except NetlinkError as exc:
                raise translate(exc, f"adding route {dst} in {_where(netns)}") from exc

        def undo() -> None:
            if netns is not None and not os.path.exists(netns_path(netns)):
                return
            with _ipr(netns) as ipr:
                try:
                    ipr.route("del", **spec)
                except NetlinkError as exc:
                    if exc.code not in (errno.ESRCH, errno.ENOENT):
                        raise

        self._register(f"route {dst} in {_where(netns)}", undo)

    # -- teardown --------------------------------------------------------------------------------

    def cleanup(self) -> None:
        """Remove everything registered, newest first; every step runs; failures are raised
        together at the end. Idempotent."""
        failures: list[str] = []
        while self._undo:
            what, undo = self._undo.pop()
            try:
                undo()
            except (OSError, NetlinkError) as exc:
                log.error("Could not remove %s: %s", what, exc)
                failures.append(f"{what}: {exc}")
        if failures:
            raise NetworkSetupError(errno.EIO, "cleanup left: " + "; ".join(failures))
