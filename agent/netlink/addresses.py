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


def _index(ipr: IPRoute, ifname: str) -> int:
    found = ipr.link_lookup(ifname=ifname)
    if not found:
        raise NetworkSetupError(errno.ENODEV, f"interface {ifname} does not exist")
    return found[0]
