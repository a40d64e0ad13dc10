"""`clusterlink-controlplane`: the per-peer control plane process.

Wires the store, the reconciler, the heartbeats, the gRPC API and the metrics endpoint, and runs
them until SIGTERM/SIGINT. Configuration comes from flags (or `CLUSTERLINK_*` variables), loaded
once into a frozen `Config`.
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import os
import secrets
import signal
import sys
import threading
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

from controlplane.api import flags
from controlplane.api.logsetup import setup_logging
from controlplane.model import schema as S
from controlplane.model.objects import SYSTEM_NAMESPACE

log = logging.getLogger(__name__)

DEFAULT_STORE = "sqlite:///var/lib/clusterlink/state.db"
DEFAULT_API = "unix:/run/clusterlink/controlplane.sock"


@dataclass(frozen=True)
class Config:
    certs: Path
    name: str | None
    store: str
    api_listen: str
    admin_token_file: Path
    join_token_file: Path
    tokens_from_store: bool
    namespace: str
    peer_labels: Mapping[str, str]
    vip_range: str | None
    gateway_agent_address: str
    reserved_ports: Mapping[int, str]
    metrics_listen: tuple[str, int] | None
    credential_lifetime: float
    probe_timeout: float
    log_level: str
    log_format: str
    gateway_selector: str = "app.kubernetes.io/name=clusterlink,app.kubernetes.io/component=gateway"
    lease_name: str = "clusterlink-controlplane"
    cluster_domain: str = "cluster.local"
    mcs: bool = False
    dns_listen: tuple[str, int] | None = None
    dns_zone: str = "clusterset.local"

    @property
    def kubernetes(self) -> bool:
        return self.store == "kubernetes"


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="clusterlink-controlplane",
                                description="The ClusterLink control plane of one peer: desired state, policies, "
                                            "peer heartbeats, and the API that feeds gateways and agents.")
    flags.add(p, "--certs", required=False, type=Path,
              help="Directory with this peer's cert.pem, key.pem and the fabric's ca.pem "
                   "(from `clusterlink create peer-cert`)")
    flags.add(p, "--name", help="Peer name; must equal the certificate's DNS SAN (default: taken from it)")
    flags.add(p, "--store", default=DEFAULT_STORE,
              help="Where desired state lives: sqlite:///<file> (standalone) or kubernetes")
    flags.add(p, "--api-listen", default=DEFAULT_API,
              help="gRPC API address for gateways, agents and the CLI: unix:/<path> or host:port (TLS with the "
                   "peer certificate)")
    flags.add(p, "--tokens", choices=("files", "store"), default="files",
              help="Where the admin and join tokens are: files (--admin-token-file, --join-token-file; created "
                   "if missing) or store (created at the first start; in Kubernetes the Secrets "
                   "clusterlink-admin-token and clusterlink-join-token, key `token`, which gateways and agents "
                   "mount: the chart does this, so that its manifests hold no token and render the same every "
                   "time)")
    flags.add(p, "--admin-token-file", type=Path,
              help="Bearer token of the management API (the CLI); created with a random token if missing "
                   "(default: admin.token next to the sqlite store)")
    flags.add(p, "--join-token-file", type=Path,
              help="Bearer token gateways and agents present; created with a random token if missing "
                   "(default: join.token next to the sqlite store)")
    flags.add(p, "--namespace", default=SYSTEM_NAMESPACE, help="The ClusterLink namespace (where Peers are read)")
    flags.add(p, "--peer-label", action="append", type=flags.label, default=[],
              help="A label of this peer, key=value (repeatable); remote peers see it in heartbeats and "
                   "policies select on it as peer.clusterlink.net/labels.<key>")
    flags.add(p, "--vip-range", default="10.96.0.0/16",
              help="Standalone mode: CIDR from which Imports get their service address (VIP); 'none' disables")
    flags.add(p, "--gateway-agent-address", default="",
              help="host:port of the gateway's agent port, told to agents (where redirected connections go)")
    flags.add(p, "--reserved-ports", default="443:peer listener,4443:agent listener,9090:metrics",
              help="Ports the gateway itself uses, never leased to Imports: port:what,...")
    flags.add(p, "--metrics-listen", default="127.0.0.1:9091",
              help="host:port of the Prometheus /metrics endpoint (loopback by default: name the local "
                   "network's address to be scraped from it); 'none' disables it")
    flags.add(p, "--credential-lifetime", type=float, default=86400.0,
              help="Seconds an agent credential is valid (agents renew at half-life)")
    flags.add(p, "--probe-timeout", type=float, default=3.0, help="Heartbeat probe timeout, seconds")
    flags.add(p, "--gateway-selector", default="app.kubernetes.io/name=clusterlink,app.kubernetes.io/component=gateway",
              help="Kubernetes: labels of the gateway pods (k=v,...), the backends of every Import's Service")
    flags.add(p, "--lease-name", default="clusterlink-controlplane",
              help="Kubernetes: the Lease (in --namespace) whose holder is the replica that writes")
    flags.add(p, "--cluster-domain", default="cluster.local",
              help="Kubernetes: the cluster's DNS domain (an Export without spec.host targets "
                   "<name>.<namespace>.svc.<domain>)")
    flags.add(p, "--mcs", choices=("off", "on"), default="off",
              help="Kubernetes: serve the Multi-Cluster Services API (multicluster.x-k8s.io/v1alpha1; its "
                   "CRDs must be installed): a ServiceExport makes the Export of its Service, every Import "
                   "with a service address gets a ServiceImport (for <name>.<namespace>.svc.clusterset.local)")
    flags.add(p, "--dns-listen", default="none",
              help="host:port (UDP) of a DNS responder answering <import>.<namespace>.svc.<--dns-zone> with "
                   "the Import's VIP (A records, TTL 5 s), for a cluster DNS to forward the zone to; 'none' "
                   "(the default) disables it")
    flags.add(p, "--dns-zone", default="clusterset.local",
              help="The zone of --dns-listen (the MCS API's clusterset.local)")
    flags.add(p, "--log-level", default="info", help="debug, info, warning or error")
    flags.add(p, "--log-format", default="auto", help="text, json, or auto (text on a terminal)")
    return p


def _reserved(text: str) -> dict[int, str]:
    out: dict[int, str] = {}
    for item in filter(None, (x.strip() for x in text.split(","))):
        port, _, what = item.partition(":")
        if not port.isdigit():
            raise ValueError(f"--reserved-ports: {item!r} is not port:what")
        out[int(port)] = what or "listener"
    return out


def load_config(argv: Sequence[str] | None = None) -> Config:
    parser = build_parser()
    a = parser.parse_args(argv)
    if not a.certs:
        parser.error("--certs is required (the directory of `clusterlink create peer-cert`)")
    state_dir = Path(a.store[len("sqlite://"):]).parent if a.store.startswith("sqlite://") else Path(
        "/var/lib/clusterlink")
    try:
        reserved = _reserved(a.reserved_ports)
    except ValueError as exc:
        parser.error(str(exc))
    metrics = None if a.metrics_listen in ("", "none") else flags.host_port(a.metrics_listen)
    try:
        dns = None if a.dns_listen in ("", "none") else flags.host_port(a.dns_listen)
    except argparse.ArgumentTypeError as exc:
        parser.error(f"--dns-listen: {exc}")
    if a.mcs == "on" and a.store != "kubernetes":
        parser.error("--mcs on needs --store kubernetes (the MCS API's objects live in the Kubernetes API)")
    return Config(
        certs=a.certs, name=a.name, store=a.store, api_listen=a.api_listen,
        admin_token_file=a.admin_token_file or state_dir / "admin.token",
        join_token_file=a.join_token_file or state_dir / "join.token",
        tokens_from_store=a.tokens == "store",
        namespace=a.namespace, peer_labels=dict(a.peer_label),
        vip_range=None if a.vip_range in ("", "none") or a.store == "kubernetes" else a.vip_range,
        gateway_agent_address=a.gateway_agent_address, reserved_ports=reserved, metrics_listen=metrics,
        credential_lifetime=a.credential_lifetime, probe_timeout=a.probe_timeout,
        log_level=a.log_level, log_format=a.log_format,
        gateway_selector=a.gateway_selector, lease_name=a.lease_name,
        cluster_domain=a.cluster_domain, mcs=a.mcs == "on", dns_listen=dns, dns_zone=a.dns_zone,
    )


def ensure_token(path: Path) -> str:
    """Read a token file, or create it (mode 0600) with a random token."""
    if path.exists():
        token = path.read_text().strip()
        if not token:
            raise ValueError(f"token file {path} is empty")
        return token
    path.parent.mkdir(parents=True, exist_ok=True)
    token = secrets.token_urlsafe(32)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "w") as f:
        f.write(token + "\n")
    return token


def open_store(url: str):  # type: ignore[no-untyped-def]
    if url.startswith("sqlite://"):
        from controlplane.store.sqlite import SQLiteStore, parse_url

        return SQLiteStore(parse_url(url))
    raise ValueError(f"unsupported store {url!r} (sqlite:///<file> or kubernetes)")


async def run(config: Config) -> None:
    from controlplane.api.metricsserver import start_metrics_server
    from controlplane.peerwire.client import probe_healthz
    from controlplane.tlsconfig import PeerTLS
    from controlplane.tokens import TokenAuthority

    from .grpcapi import ControlPlaneService, Credentials, ManagementService, start_server, stop_server
    from .events import Events, NoEvents, ObjectRef, rejected_note
    from .heartbeats import Heartbeats
    from .metrics import ControlPlaneMetrics
    from .reconciler import Reconciler, ReconcilerConfig

    tls = PeerTLS(config.certs, expected_name=config.name)
    peer_name = tls.name
    kube = None
    if config.kubernetes:  # watches + caches, Import Services, Lease; in-cluster config or $KUBECONFIG
        from controlplane.store.kube_backend import KubeBackend, KubeSettings, parse_selector

        kube = KubeBackend.from_environment(KubeSettings(namespace=config.namespace, lease_name=config.lease_name,
                                                         gateway_selector=parse_selector(config.gateway_selector),
                                                         mcs=config.mcs))
        await kube.start()
        store = kube.store
    else:
        store = open_store(config.store)
    metrics = ControlPlaneMetrics(certs=config.certs)
    if config.tokens_from_store:
        credentials = Credentials(admin_token=store.token("admin-token"), join_token=store.token("join-token"))
    else:
        credentials = Credentials(admin_token=ensure_token(config.admin_token_file),
                                  join_token=ensure_token(config.join_token_file))
    token_key = store.secret("token-key")
    authority = TokenAuthority(token_key, peer_name)

    async def probe(name: str, gateways: Sequence[tuple[str, int]]) -> Mapping[str, str]:
        result = await probe_healthz(gateways, peer_name=name, context_factory=tls.client_context,
                                     timeout=config.probe_timeout)
        return result.labels

    def on_heartbeat(name: str, ok: bool) -> None:
        metrics.heartbeats.labels(peer=name, result="success" if ok else "failure").inc()

    events: Events = NoEvents()
    if kube is not None:
        from .kube_events import KubeEvents

        kube_events = KubeEvents(kube.api, fallback_namespace=config.namespace, leading=lambda: reconciler.leader)
        events = kube_events
        events_stop = threading.Event()
        events_thread = kube_events.start(events_stop)

        def on_invalid(kind: str, namespace: str, name: str, uid: str, why: str) -> None:
            kube_events.record(ObjectRef(kind, namespace, name, uid), rejected_note(why))

        kube.store.on_invalid = on_invalid
    heartbeats = Heartbeats(store, namespace=config.namespace, probe=probe, on_result=on_heartbeat,
                            timeout=config.probe_timeout, events=events)
    reconciler = Reconciler(
        ReconcilerConfig(peer_name=peer_name, peer_labels=config.peer_labels, system_namespace=config.namespace,
                         reserved_ports=config.reserved_ports, vip_range=config.vip_range,
                         gateway_agent_address=config.gateway_agent_address, kubernetes=kube is not None,
                         cluster_domain=config.cluster_domain),
        store, token_key=token_key, reachable=heartbeats.reachable, on_peers_changed=heartbeats.sync,
        services=kube.services if kube is not None else None, events=events,
        front_door=kube.mcs if kube is not None else None)
    reconciler.reconcile_seconds = metrics.reconcile.observe

    def on_request(method: str, code: str) -> None:
        metrics.api_requests.labels(method=method, code=code).inc()

    def on_watcher(role: str, delta: int) -> None:
        metrics.watchers.labels(role=role).inc(delta)

    control = ControlPlaneService(reconciler, credentials, authority, credential_lifetime=config.credential_lifetime,
                                  on_watcher=on_watcher, on_request=on_request, events=events)
    def status() -> dict:
        from .status import build_status

        pub = reconciler.publication
        gateway = pub.gateway
        return build_status(
            peer=peer_name, labels=config.peer_labels, certificate_not_after=tls.identity.not_after,
            store_kind="kubernetes" if kube is not None else "sqlite", leader=reconciler.leader,
            gateway_version=gateway.version if gateway is not None else 0,
            generated_unix_ms=gateway.generated_unix_ms if gateway is not None else 0,
            watchers=control.rollouts.watchers(), silent_watchers=control.rollouts.silent,
            agent_versions={node: snap.version for node, snap in pub.agents.items()},
            peers=store.list(S.PEER.kind), exports=store.list(S.EXPORT.kind), imports=store.list(S.IMPORT.kind),
            policies=store.list(S.ACCESS_POLICY.kind) + store.list(S.PRIVILEGED_ACCESS_POLICY.kind))

    management = ManagementService(store, credentials, system_namespace=config.namespace, standalone=kube is None,
                                   rollout=control.rollout, status=status, on_request=on_request)
    tls_pair = None
    if not config.api_listen.startswith("unix:"):
        ident = tls.identity
        tls_pair = (Path(ident.key_path).read_bytes(), Path(ident.cert_path).read_bytes())
    server = await start_server(config.api_listen, control=control, management=management, tls=tls_pair)
    metrics_server = None
    if config.metrics_listen:
        host, port = config.metrics_listen
        metrics_server = start_metrics_server(
            metrics.registry, host, port,
            ready=lambda: None if reconciler.publication.gateway is not None
            else "no snapshot yet: the first reconcile has not finished")
        log.info("metrics on http://%s:%d/metrics", host, port)
    dns_transport = None
    if config.dns_listen:
        from .dns import Responder, serve_dns

        def import_vip(namespace: str, name: str) -> str | None:
            imp = store.get(S.IMPORT.kind, namespace, name)
            return None if imp is None else str(imp.status.get("vip") or "")

        def on_dns(result: str) -> None:
            metrics.dns_queries.labels(result=result).inc()

        dns_transport = await serve_dns(Responder(import_vip, zone=config.dns_zone, on_answer=on_dns),
                                        *config.dns_listen)
    if kube is None:
        metrics.leader.set(1)
    else:  # every replica serves snapshots; only the Lease holder writes
        reconciler.leader = False

        def on_leadership(leading: bool) -> None:
            reconciler.leader = leading
            metrics.leader.set(1 if leading else 0)
            reconciler.mark_dirty()
            if leading:  # what was rejected before we led (the first list, typically): say it now
                kube.store.replay_invalid()

        kube.on_leadership(on_leadership)
        kube.store.on_cluster_change(reconciler.mark_dirty)

    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)

    async def observe() -> None:
        while True:
            for info in S.ALL_KINDS:
                metrics.objects.labels(kind=info.kind).set(len(store.list(info.kind)))
            for name, ok in heartbeats.reachable().items():
                metrics.peer_reachable.labels(peer=name).set(1 if ok else 0)
            if reconciler.publication.gateway is not None:
                metrics.snapshot_version.set(reconciler.publication.gateway.version)
            try:
                tls.reload_if_changed()
            except Exception:
                log.exception("reloading the peer certificates from %s failed; keeping the old ones", config.certs)
            await asyncio.sleep(2.0)

    log.info("control plane of peer %s started (store %s, API %s)", peer_name, config.store, config.api_listen)
    try:
        async with asyncio.TaskGroup() as tg:
            tasks = [tg.create_task(reconciler.run(), name="reconciler"),
                     tg.create_task(observe(), name="observer")]
            if kube is not None:
                tasks.append(tg.create_task(kube.run_leader_election(), name="leader-election"))
            heartbeats.sync()
            await stop.wait()
            log.info("stopping the control plane of peer %s", peer_name)
            for task in tasks:
                task.cancel()
    finally:
        await heartbeats.stop()
        await stop_server(server)
        if dns_transport is not None:
            dns_transport.close()
        if metrics_server is not None:
            metrics_server.stop()
        if kube is not None:
            events_stop.set()
            await asyncio.to_thread(events_thread.join, 5.0)
            await kube.stop()
        else:
            store.close()
        log.info("control plane of peer %s stopped", peer_name)


def main(argv: Sequence[str] | None = None) -> int:
    config = load_config(argv)
    try:
        setup_logging(config.log_level, config.log_format, component="controlplane")
    except ValueError as exc:
        print(f"clusterlink-controlplane: {exc}", file=sys.stderr)
        return 2
    try:
        asyncio.run(run(config))
    except Exception as exc:  # start-up errors: one clear line, the traceback in the log
        log.error("control plane failed: %s", exc, exc_info=exc)
        print(f"clusterlink-controlplane: {exc}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
