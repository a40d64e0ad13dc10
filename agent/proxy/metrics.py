"""ProxyMetrics: the node proxy's counters and gauge, as plain integers.

The proxy only increments them; the agent exposes them (e.g. a Prometheus collector that reads
them at scrape time as clusterlink_agent_proxy_<name>), so this package needs no metrics library.
Byte counters move while a transfer runs, not only when it ends.
"""

from __future__ import annotations

from dataclasses import dataclass, fields


@dataclass
class ProxyMetrics:
    connections_accepted: int = 0     # accepted from clients
    connections_active: int = 0      # gauge: accepted and not yet closed
    connections_rejected: int = 0    # resolve() answered None: client reset
    connections_completed: int = 0   # relays that ended with both directions closed cleanly
    connections_reset: int = 0       # relays that ended because one side failed (other side reset)
    connections_idle_timeout: int = 0
    resolve_errors: int = 0          # resolve() raised: client reset
    upstream_connect_errors: int = 0  # connect/preamble to the upstream failed or timed out: client reset
    connection_errors: int = 0       # unexpected errors while handling a connection (logged)
    accept_errors: int = 0           # accept() failed (e.g. EMFILE); the listener keeps going
    bytes_client_to_upstream: int = 0
    bytes_upstream_to_client: int = 0
    upstream_pool_idle: int = 0       # gauge: pre-connected upstream connections waiting to be used
    upstream_pool_hits: int = 0       # connections that got a pre-connected upstream
    upstream_pool_misses: int = 0     # connections that found the pool empty and connected
    upstream_pool_stale: int = 0      # pooled upstreams found closed by the upstream (never used)
    upstream_pool_expired: int = 0    # pooled upstreams closed unused after their maximum age
    upstream_pool_connect_errors: int = 0  # background connects that failed

    def snapshot(self) -> dict[str, int]:
        return {f.name: getattr(self, f.name) for f in fields(self)}
