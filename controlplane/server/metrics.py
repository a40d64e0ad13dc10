"""Prometheus metrics of the control plane (one registry per process, passed explicitly)."""

from __future__ import annotations

from pathlib import Path

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

from controlplane.api import buildinfo
from controlplane.certmetrics import CertificateExpiry, peer_certificates


class ControlPlaneMetrics:
    def __init__(self, registry: CollectorRegistry | None = None, *, certs: Path | None = None) -> None:
        self.registry = registry or CollectorRegistry()
        r = self.registry
        buildinfo.register(r, "controlplane")  # with clusterlink_process_*{component="controlplane"}
        if certs is not None:
            r.register(CertificateExpiry("controlplane", peer_certificates(certs)))
        self.objects = Gauge("clusterlink_controlplane_objects", "Objects in the store, by kind", ["kind"],
                             registry=r)
        self.heartbeats = Counter("clusterlink_controlplane_heartbeats_total",
                                  "Heartbeat probes to remote peers, by peer and result", ["peer", "result"],
                                  registry=r)
        self.peer_reachable = Gauge("clusterlink_controlplane_peer_reachable",
                                    "1 when the peer is reachable (PeerReachable=True)", ["peer"], registry=r)
        self.snapshot_version = Gauge("clusterlink_controlplane_snapshot_version",
                                      "Version of the latest gateway snapshot", registry=r)
        self.watchers = Gauge("clusterlink_controlplane_watchers", "Open snapshot streams, by role", ["role"],
                              registry=r)
        self.api_requests = Counter("clusterlink_controlplane_api_requests_total",
                                    "API calls, by method and gRPC code", ["method", "code"], registry=r)
        self.reconcile = Histogram("clusterlink_controlplane_reconcile_seconds", "Time of one reconcile pass",
                                   registry=r, buckets=(0.001, 0.005, 0.01, 0.05, 0.1, 0.5, 1, 5))
        self.dns_queries = Counter("clusterlink_controlplane_dns_queries_total",
                                   "Queries to the DNS responder (--dns-listen), by result: answer, nodata, "
                                   "nxdomain, refused, formerr, notimp, servfail, ignored", ["result"], registry=r)
        self.leader = Gauge("clusterlink_controlplane_leader", "1 while this replica writes status", registry=r)
