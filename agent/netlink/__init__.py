"""Node plumbing with pyroute2. The only place in the agent that imports pyroute2.

    AddressManager   the proxy's address on a node interface (removes only what it added)
    ipv6_beside      the IPv6 address of the interface holding an IPv4 one (--proxy-address6 auto)
    Plumbing         namespaces, veths, addresses, routes, all removed by cleanup()
"""

from agent.netlink.addresses import AddressManager, ipv6_beside
from agent.netlink.errors import NetworkSetupError
from agent.netlink.plumbing import Plumbing, netns_path

__all__ = ["AddressManager", "NetworkSetupError", "Plumbing", "ipv6_beside", "netns_path"]
