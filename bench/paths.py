"""The paths the benchmark compares (pure): names, topology, and which processes are each path's proxies.

Every path starts in the same client pod (peer east, node n1). Servers: `east/n2/server` (a pod on
another node of the same peer) for the single-peer paths, `west/n1/server` for the cross-peer paths.
The fabric isolates peers (a pod of east never reaches west except through the gateways), so the
direct baseline stays inside east; it crosses a node, the LAN and another node like the full path
crosses the LANs around the gateways.
"""

from __future__ import annotations

LOOPBACK = "loopback"
DIRECT = "direct"
AGENT_HOP = "agent_hop"
FULL_PATH = "full_path"
FULL_PATH_NO_AGENT = "full_path_no_agent"
HAPROXY_PATH = "haproxy_path"

THROUGHPUT_PATHS = (LOOPBACK, DIRECT, AGENT_HOP, FULL_PATH, FULL_PATH_NO_AGENT, HAPROXY_PATH)
REQUEST_PATHS = (DIRECT, FULL_PATH, FULL_PATH_NO_AGENT, HAPROXY_PATH)
# UDP (iperf3 -u through the TCPAndUDP Import `bench-iperf`): the paths that carry datagrams. HAProxy
# relays no UDP (no baseline pair), the splice relay of agent_hop is TCP only, and loopback measures
# the kernel alone.
UDP_PATHS = (DIRECT, FULL_PATH, FULL_PATH_NO_AGENT)

DESCRIPTIONS = {
    LOOPBACK: "reference only: iperf3 client and server in one pod (east/n2/server) over 127.0.0.1, no veth",
    DIRECT: "east/n1/client -> east/n2/server: pod veth, n1 bridge, east LAN, n2 bridge, pod veth; no proxy",
    AGENT_HOP: "east/n1/client -> n1 pod-bridge address:15101 -> the agent's splice relay (agent.proxy.NodeProxy "
               "in its own process in node n1, resolve = the server, no preamble) -> east/n2/server",
    FULL_PATH: "east/n1/client -> VIP (eBPF connect4 redirect) -> east agent splice proxy (n1) -> east gateway "
               "agent port (preamble) -> mTLS tunnel over the WAN -> west gateway -> west/n1/server",
    FULL_PATH_NO_AGENT: "east/n1/client -> east gateway LAN address:Import targetPort (no agent) -> mTLS tunnel over "
                        "the WAN -> west gateway -> west/n1/server",
    HAPROXY_PATH: "east/n1/client -> HAProxy A in east's gateway netns (LAN address, plain TCP) -> TLS 1.3 mTLS over "
                  "the WAN -> HAProxy B in west's gateway netns -> west/n1/server",
}

# The long-running processes whose CPU is sampled in every run (see world.Components).
COMPONENTS = ("agent", "splice_proxy", "gateway_east", "gateway_west", "controlplane_east", "controlplane_west",
              "haproxy_a", "haproxy_b")

PROXIES: dict[str, tuple[str, ...]] = {
    LOOPBACK: (),
    DIRECT: (),
    AGENT_HOP: ("splice_proxy",),
    FULL_PATH: ("agent", "gateway_east", "gateway_west"),
    FULL_PATH_NO_AGENT: ("gateway_east", "gateway_west"),
    HAPROXY_PATH: ("haproxy_a", "haproxy_b"),
}

# Which server pod a path ends in ("east" = east/n2/server, "west" = west/n1/server).
SERVER_SIDE = {LOOPBACK: "east", DIRECT: "east", AGENT_HOP: "east", FULL_PATH: "west", FULL_PATH_NO_AGENT: "west",
               HAPROXY_PATH: "west"}
