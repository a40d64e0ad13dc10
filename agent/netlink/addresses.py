"""AddressManager: makes sure the node proxy's IPv4 address exists on an interface of the current
network namespace, and removes on stop only the addresses it added itself."""

from __future__ import annotations

import errno
import ipaddress
import logging

from pyroute2 import IPRoute
from pyroute2.netlink.exceptions import NetlinkError

from agent.netlink.errors import NetworkSetupError, translate

log = logging.getLogger(__name__)


class AddressManager:
    """Owns the IPv4 addresses it adds (not the ones it found already present)."""

    def __init__(self) -> None:
        self._added: list[tuple[str, str, int]] = []  # (ifname, address, prefixlen)

    @property
    def added(self) -> list[tuple[str, str, int]]:
        return list(self._added)

    def ensure(self, ifname: str, address: str, prefixlen: int = 32) -> bool:
        """Make address/prefixlen present on ifname; True if it was added now (and is ours to
        remove), False if it was there already (with any prefix length)."""
        ipaddress.IPv4Address(address)  # ValueError for a bad address
        if not 0 <= prefixlen <= 32:
            raise ValueError(f"prefix length {prefixlen} is not in 0..32")
        with IPRoute() as ipr:
            index = _index(ipr, ifname)
            present = {a.get_attr("IFA_LOCAL") for a in ipr.get_addr(index=index, family=2)}
            if address in present:
                return False
            try:
                ipr.addr("add", index=index, address=address, prefixlen=prefixlen)
            except NetlinkError as exc:
                if exc.code == errno.EEXIST:
                    return False  # added by someone else meanwhile: not ours
                raise translate(exc, f"adding {address}/{prefixlen} to {ifname}") from exc
        self._added.append((ifname, address, prefixlen))
        log.info("Added address %s/%d to %s.", address, prefixlen, ifname)
        return True

    def stop(self) -> None:
        """Remove the addresses this manager added (those already gone are fine). Idempotent."""
        failures: list[NetworkSetupError] = []
        while self._added:
            ifname, address, prefixlen = self._added.pop()
            try:
                with IPRoute() as ipr:
                    found = ipr.link_lookup(ifname=ifname)
                    if not found:
                        continue  # the interface is gone, and its addresses with it
                    ipr.addr("del", index=found[0], address=address, prefixlen=prefixlen)
                log.info("Removed address %s/%d from %s.", address, prefixlen, ifname)
            except NetlinkError as exc:
                if exc.code in (errno.EADDRNOTAVAIL, errno.ENODEV):
                    continue
                failures.append(translate(exc, f"removing {address}/{prefixlen} from {ifname}"))
        if failures:
            raise failures[0] if len(failures) == 1 else NetworkSetupError(
                failures[0].errno, "; ".join(str(f) for f in failures))


_SCOPE_UNIVERSE = 0
_IFA_F_TENTATIVE, _IFA_F_DEPRECATED, _IFA_F_DADFAILED = 0x40, 0x20, 0x08


def ipv6_beside(address: str) -> str | None:
    """The first usable global IPv6 address (not link-local, not tentative, deprecated or failed
    DAD) of the interface that holds the IPv4 `address`, in the current network namespace; None
    when that interface has none (or nothing holds `address`). For the agent's
    `--proxy-address6 auto`: on a dual-stack node, the node's IPv6 address beside its IPv4 one."""
    ipaddress.IPv4Address(address)  # ValueError for a bad address
    with IPRoute() as ipr:
        holders = [a["index"] for a in ipr.get_addr(family=2) if a.get_attr("IFA_LOCAL") == address]
        if not holders:
            return None
        for entry in ipr.get_addr(family=10, index=holders[0]):
            flags = entry.get_attr("IFA_FLAGS") or entry["flags"]
            if entry["scope"] != _SCOPE_UNIVERSE or flags & (_IFA_F_TENTATIVE | _IFA_F_DEPRECATED | _IFA_F_DADFAILED):
                continue
            found = entry.get_attr("IFA_ADDRESS")
            if found:
                return str(ipaddress.IPv6Address(found))
    return None


def _index(ipr: IPRoute, ifname: str) -> int:
    found = ipr.link_lookup(ifname=ifname)
    if not found:
        raise NetworkSetupError(errno.ENODEV, f"interface {ifname} does not exist")
    return found[0]
