"""The node proxy: accepts redirected connections and relays them to the gateway with splice.

    NodeProxy(listen, *, resolve, metrics=None, idle_timeout=None, upstream_pool_size=0, ...)
                                                                      start() / stop() / address
    Upstream(address, preamble)                                       what resolve() answers
    ProxyMetrics                                                      counters the agent exports
    relay(a, b, counters=None, *, idle_timeout=None, pipes=None) -> RelayResult   the splice relay
    Relay(a, b, counters, *, on_done, ...)                            the same, driven by callbacks
    PipePool, UpstreamPool                                            reused pipes, pre-connected upstreams
"""

from agent.proxy.metrics import ProxyMetrics
from agent.proxy.pipes import PipePool
from agent.proxy.server import NodeProxy, Upstream
from agent.proxy.splice import ByteCounts, Relay, RelayCounters, RelayOutcome, RelayResult, relay
from agent.proxy.upstreams import UpstreamPool

__all__ = ["ByteCounts", "NodeProxy", "PipePool", "ProxyMetrics", "Relay", "RelayCounters", "RelayOutcome",
           "RelayResult", "Upstream", "UpstreamPool", "relay"]
