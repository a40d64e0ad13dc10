"""The node proxy: accepts redirected connections and relays them to the gateway with splice.

    NodeProxy(listen, *, resolve, metrics=None, idle_timeout=None)   start() / stop() / address
    Upstream(address, preamble)                                       what resolve() answers
    ProxyMetrics                                                      counters the agent exports
    relay(a, b, counters=None, *, idle_timeout=None) -> RelayResult   the splice relay, reusable
"""

from agent.proxy.metrics import ProxyMetrics
from agent.proxy.server import NodeProxy, Upstream
from agent.proxy.splice import ByteCounts, RelayCounters, RelayOutcome, RelayResult, relay

__all__ = ["ByteCounts", "NodeProxy", "ProxyMetrics", "RelayCounters", "RelayOutcome", "RelayResult",
           "Upstream", "relay"]
