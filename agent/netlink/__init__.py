"""Node plumbing with pyroute2. The only place in the agent that imports pyroute2.

    AddressManager   the proxy's address on a node interface (removes only what it added)
    Plumbing         namespaces, veths, addresses, routes, all removed by cleanup()
"""

from agent.netlink.addresses import AddressManager
from agent.netlink.errors import NetworkSetupError
from agent.netlink.plumbing import Plumbing, netns_path

__all__ = ["AddressManager", "NetworkSetupError", "Plumbing", "netns_path"]
