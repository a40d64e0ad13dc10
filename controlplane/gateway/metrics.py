"""The gateway's Prometheus metrics (`clusterlink_gateway_<name>_<unit>`).

Workers write them in prometheus_client's multiprocess mode (the supervisor sets
PROMETHEUS_MULTIPROC_DIR to a private directory before any worker starts), and the supervisor
serves the aggregate on --metrics-listen. Each process makes one `GatewayMetrics` on a registry
of its own: there is no module-level metric. Gauges say how workers combine: summed (live
workers) for counts of things, the minimum for "every worker has it" values.
"""

from __future__ import annotations

from typing import Any

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

# Label values that stand for anything not configured: every label value is either one of a bounded
# set (directions, results, reasons) or names a configured object (Import, Export, Peer); what a
# remote peer or an agent asks for that does not exist is counted under these, never under its
# name, so that nobody outside can grow the series (and the memory behind them) at will.
UNKNOWN_LABEL = "unknown"  # an Import or Export that does not exist
UNCONFIGURED_PEER_LABEL = "unconfigured"  # a peer with a fabric certificate but no Peer object

_SETUP_BUCKETS = (0.0005, 0.001, 0.002, 0.005, 0.01, 0.02, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)


class GatewayMetrics:
    """Every metric of a gateway process."""

    def __init__(self, registry: CollectorRegistry | None = None) -> None:
        r = registry if registry is not None else CollectorRegistry(auto_describe=True)
        self.registry = r
        self._children: dict[tuple[int, tuple[str, ...]], Any] = {}
        p = "clusterlink_gateway_"
        self.connections = Counter(
            p + "connections_total",
            "Client connections handled, by direction (egress: from local clients, ingress: from remote peers), "
            "Import or Export (namespace/name), remote peer and result",
            ["direction", "service", "peer", "result"], registry=r)
        self.relayed_bytes = Counter(
            p + "relayed_bytes_total",
            "Application bytes relayed, by direction, Import or Export (namespace/name), remote peer and flow "
            "(to or from the service); counted while connections run (every few seconds) and at their end",
            ["direction", "service", "peer", "flow"], registry=r)
        self.active = Gauge(
            p + "connections_active", "Connections being served, by direction",
            ["direction"], multiprocess_mode="livesum", registry=r)
        self.setup_seconds = Histogram(
            p + "connection_setup_seconds",
            "Connection setup time, by direction, Import or Export (namespace/name) and remote peer: egress from "
            "accept to the remote's CONNECT 200; ingress from the CONNECT request to the connected service",
            ["direction", "service", "peer"], buckets=_SETUP_BUCKETS, registry=r)
        self.authz_decisions = Counter(
            p + "authz_decisions_total", "Local policy decisions, by direction, verdict and deciding tier",
            ["direction", "verdict", "tier"], registry=r)
        self.token_cache = Counter(
            p + "token_cache_lookups_total",
            "Egress access-token lookups: hit (cached token used), miss (asked the peer), refresh (background)",
            ["result"], registry=r)
        self.authz_requests = Counter(
            p + "authz_requests_total", "POST /authz sent to remote peers, by peer and result",
            ["peer", "result"], registry=r)
        self.pool_idle = Gauge(
            p + "tunnel_pool_connections", "Established, idle tunnels ready per remote peer",
            ["peer"], multiprocess_mode="livesum", registry=r)
        self.pool_oldest = Gauge(
            p + "tunnel_pool_oldest_seconds",
            "Age of the oldest idle tunnel per remote peer, since its handshake (0: none idle); refreshed every "
            "5 s", ["peer"], multiprocess_mode="livemax", registry=r)
        self.pool_acquires = Counter(
            p + "tunnel_pool_acquires_total",
            "Tunnels taken for an exchange or a connection: hit (from the pool) or miss (connected on demand)",
            ["peer", "result"], registry=r)
        self.tunnel_handshakes = Counter(
            p + "tunnel_handshakes_total", "TLS handshakes to remote gateways, full or resumed",
            ["peer", "kind"], registry=r)
        self.tunnel_reuses = Counter(
            p + "tunnel_reuses_total",
            "Framed tunnels that carried a connection and went back to the pool for the next one",
            ["peer"], registry=r)
        self.tunnel_failures = Counter(
            p + "tunnel_failures_total",
            "Failures of tunnels to remote gateways: connect (no gateway reachable), keepalive (pooled tunnel "
            "failed its health check), probe (a probe went unanswered), stale (pooled tunnel broke when used)",
            ["peer", "reason"], registry=r)
        self.liveness_resets = Counter(
            p + "tunnel_liveness_resets_total",
            "Connections reset because nothing arrived from the other gateway on their framed tunnel for "
            "--tunnel-liveness-timeout (it is frozen, gone or cut off), by direction",
            ["direction"], registry=r)
        self.peer_reachable = Gauge(
            p + "peer_reachable", "Whether this gateway could connect to the peer (1) or not (0), last it tried",
            ["peer"], multiprocess_mode="livemin", registry=r)
        self.gateway_reachable = Gauge(
            p + "peer_gateway_reachable",
            "Whether this gateway's probes reach each gateway of a remote peer (1) or not (0), last probed (a "
            "peer with several gateways stays up while one answers)",
            ["peer", "gateway"], multiprocess_mode="livemin", registry=r)
        self.peer_down = Counter(
            p + "peer_down_total",
            "Times a worker marked a remote peer down for new connections (failover), by reason: connect (no "
            "gateway of it could be reached), probe (a probe went unanswered for --peer-probe-timeout)",
            ["peer", "reason"], registry=r)
        self.failovers = Counter(
            p + "failovers_total",
            "Egress connections that were waiting for a peer's answer when it was marked down and moved to "
            "the Import's next source (their bytes replayed there), by the peer given up",
            ["peer"], registry=r)
        self.bad_requests = Counter(
            p + "bad_requests_total",
            "Connections or requests refused for misbehaviour, by listener and reason",
            ["listener", "reason"], registry=r)
        self.refused = Counter(
            p + "refused_connections_total", "Connections refused by a limit, by listener and limit",
            ["listener", "reason"], registry=r)
        self.agent_credential_failures = Counter(
            p + "agent_credential_failures_total",
            "Agent-port connections reset because the agent credential was missing or invalid, by reason",
            ["reason"], registry=r)
        self.snapshot_version = Gauge(
            p + "snapshot_version", "Version of the control-plane snapshot in use (lowest over workers)",
            multiprocess_mode="livemin", registry=r)
        self.serving = Gauge(
            p + "serving_workers", "Workers with their listeners open (they got a first snapshot)",
            multiprocess_mode="livesum", registry=r)
        self.controlplane_connected = Gauge(
            p + "controlplane_connected", "Whether the snapshot stream from the control plane is up (all workers)",
            multiprocess_mode="livemin", registry=r)
        self.listener_errors = Counter(
            p + "listener_errors_total", "Listeners that could not be opened, by listener",
            ["listener"], registry=r)
        self.internal_errors = Counter(
            p + "internal_errors_total", "Unexpected exceptions caught by a supervisor loop, by place",
            ["where"], registry=r)


    def child(self, metric: Any, *values: str) -> Any:
        """`metric.labels(*values)`, memoized: the per-connection paths call this a dozen times per
        connection, and prometheus_client validates the labels again on every `labels()` call."""
        key = (id(metric), values)
        child = self._children.get(key)
        if child is None:
            child = self._children[key] = metric.labels(*values)
        return child


class SupervisorMetrics:
    """The supervisor's own metrics (it must not create the workers' gauges: a supervisor value
    would take part in their min/sum)."""

    def __init__(self, registry: CollectorRegistry | None = None) -> None:
        r = registry if registry is not None else CollectorRegistry(auto_describe=True)
        self.worker_restarts = Counter(
            "clusterlink_gateway_worker_restarts_total", "Worker processes restarted after they exited unexpectedly",
            registry=r)
        self.workers = Gauge("clusterlink_gateway_workers", "Worker processes running", multiprocess_mode="livemax",
                             registry=r)
