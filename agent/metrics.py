"""Prometheus metrics of the node agent (one registry per process, passed explicitly).

The proxy keeps plain integer counters (agent.proxy.metrics.ProxyMetrics); a collector reads them at
scrape time as clusterlink_agent_proxy_*. The agent's own process (resident memory, CPU, open fds,
start time) is clusterlink_process_*{component="agent", process="main"} (`buildinfo`, as for every
component), e.g. clusterlink_process_resident_memory_bytes, read from /proc at scrape time.
"""

from __future__ import annotations

import math
from collections.abc import Callable

from prometheus_client import CollectorRegistry, Counter, Gauge
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily

from agent.proxy.datagrams import UdpMetrics
from agent.proxy.metrics import ProxyMetrics
from controlplane.api import buildinfo
from controlplane.api.metricsserver import MetricsServer, start_metrics_server

_GAUGES = {"connections_active", "upstream_pool_idle"}


class _ProxyCollector:
    def __init__(self, proxy: ProxyMetrics) -> None:
        self.proxy = proxy

    def collect(self):  # type: ignore[no-untyped-def]
        for name, value in self.proxy.snapshot().items():
            full = f"clusterlink_agent_proxy_{name}"
            if name in _GAUGES:
                yield GaugeMetricFamily(full, f"Node proxy: {name.replace('_', ' ')}", value=value)
            else:
                yield CounterMetricFamily(full, f"Node proxy: {name.replace('_', ' ')}", value=value)


_UDP_HELP = {
    "flows_started": "UDP flows started (a client's first datagram to a UDP Import's relay)",
    "flows_failed": "UDP flows that could not start or reach the gateway (no sender record, unknown Import, "
                    "no gateway, connection failed)",
    "datagrams_to_service": "Datagrams from clients relayed towards the gateway",
    "datagrams_to_client": "Datagrams from the gateway sent to clients",
    "datagrams_dropped": "Datagrams from clients dropped (flow limit, a flow that could not start, backpressure)",
    "active_flows": "UDP flows open now",
}


class _UdpCollector:
    def __init__(self, udp: UdpMetrics) -> None:
        self.udp = udp

    def collect(self):  # type: ignore[no-untyped-def]
        for name, value in self.udp.snapshot().items():
            full = f"clusterlink_agent_udp_{name}"
            family = GaugeMetricFamily if name == "active_flows" else CounterMetricFamily
            yield family(full, _UDP_HELP[name], value=value)


class AgentMetrics:
    def __init__(self, registry: CollectorRegistry | None = None, *, event_loop: str = "") -> None:
        self.registry = registry or CollectorRegistry()
        r = self.registry
        buildinfo.register(r, "agent", event_loop=event_loop)
        self.proxy = ProxyMetrics()
        r.register(_ProxyCollector(self.proxy))
        self.udp = UdpMetrics()
        r.register(_UdpCollector(self.udp))
        self.redirected = Counter("clusterlink_agent_redirected_connections_total",
                                  "Connections redirected by the kernel and sent to the gateway, by Import "
                                  "(namespace/name, as the gateways' `service` label)",
                                  ["import"], registry=r)
        self.lookup_failures = Counter("clusterlink_agent_lookup_failures_total",
                                       "Accepted connections that could not be matched to an import (reset)",
                                       ["reason"], registry=r)
        self.identity_failures = Counter("clusterlink_agent_identity_lookup_failures_total",
                                         "Redirected connections whose client workload is unknown (sent without "
                                         "client attributes)", ["reason"], registry=r)
        self.snapshot_version = Gauge("clusterlink_agent_snapshot_version", "Version of the applied snapshot",
                                      registry=r)
        self.imports = Gauge("clusterlink_agent_imports", "Imported VIP:ports redirected on this node", registry=r)
        self.attached = Gauge("clusterlink_agent_attached_programs", "BPF programs attached by this agent",
                              registry=r)
        self.datapath_ready = Gauge("clusterlink_agent_datapath_ready",
                                    "1 once the BPF programs are attached; 0 while the datapath cannot start "
                                    "(--on-datapath-failure retry: Imports still work through the gateway)",
                                    registry=r)
        self.datapath_failures = Counter("clusterlink_agent_datapath_start_failures_total",
                                         "Failed starts of the datapath, by reason (kernel-headers, bcc, cgroup, "
                                         "privileges, other)", ["reason"], registry=r)
        self.controlplane_connected = Gauge("clusterlink_agent_controlplane_connected",
                                            "1 while the snapshot stream is connected", registry=r)
        self.registered = Gauge("clusterlink_agent_registered", "1 while the agent holds a credential", registry=r)
        self._age: Callable[[], float] = lambda: math.nan
        self.snapshot_age = Gauge("clusterlink_agent_snapshot_age_seconds",
                                  "Seconds since the applied snapshot arrived", registry=r)
        self.snapshot_age.set_function(lambda: self._age())

    def serve(self, listen: tuple[str, int], *, table_age: Callable[[], float],
              ready: Callable[[], str | None] | None = None) -> MetricsServer:
        """Serve /metrics (and /healthz, /readyz: `ready` says why not) on `listen` from a daemon
        thread (controlplane.api.metricsserver) until the returned server is stopped or the process
        ends; OSError if the address cannot be bound."""
        self._age = table_age
        host, port = listen
        return start_metrics_server(self.registry, host, port, ready=ready)
