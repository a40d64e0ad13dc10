"""One worker process of the gateway: one asyncio loop that serves every port.

Start-up: load the peer certificates (`tlsconfig.PeerTLS`; our name is their SAN), open the
shared round-robin counters, subscribe to the control plane's snapshots (`SnapshotFeed`, role
"gateway"). Nothing listens until the first snapshot arrived (readiness). Every snapshot becomes
a new immutable `GatewayState`; the Import target-port listeners and the tunnel pools are
reconciled with it. When the control plane goes away the worker keeps its last state and goes on
serving; connections are never cut by a snapshot change.

SIGTERM/SIGINT: stop accepting (close the listeners), let connections finish for up to
--drain-timeout, reset the rest, stop the background tasks, exit 0.
"""

from __future__ import annotations

import asyncio
import ctypes
import gc
import logging
import os
import resource
import signal
import sys

from controlplane.api import clusterlink_pb2 as pb
from controlplane.api import eventloop
from controlplane.api.client import APIError, Endpoint, SnapshotFeed, read_token
from controlplane.peerwire import framing
from controlplane.peerwire.stream import Stream, StreamError, TcpStream
from controlplane.peerwire.tlsstream import TlsStream
from controlplane.tlsconfig import PeerTLS, TLSConfigError, handshake_check

from .accesslog import AccessLog
from .authorizer import RemoteAuthorizer
from .config import EXIT_CONFIG, GatewayConfig
from .counters import COUNTERS_FILE, CountersError, SharedCounters
from .decisions import egress_check, egress_src
from .denials import DenialReports
from .egress import Egress
from .health import PeerHealth
from .ingress import Ingress
from .listeners import Admission, Listeners
from .metrics import GatewayMetrics
from .pool import TunnelPools
from .relay import RelayMeter
from .state import GatewayState, PeerView, build_state
from .tasks import TaskSet
from .tokencache import TokenCache

log = logging.getLogger(__name__)

UPKEEP_INTERVAL = 5.0


class Worker:
    """`serve_metrics`: this worker is the whole gateway (`--workers 1`, `single.py`) and serves
    /metrics, /healthz and /readyz itself, from its own registry."""

    def __init__(self, config: GatewayConfig, *, serve_metrics: bool = False) -> None:
        if config.worker_index is None or config.runtime_dir is None:
            raise ValueError("a worker needs --worker-index and --runtime-dir (set by the supervisor)")
        self.config = config
        self._serve_metrics = serve_metrics
        self.limits = config.limits
        self._state: GatewayState | None = None
        self._problems: frozenset[str] = frozenset()
        self._listening = False
        self._stopping = False
        self._pending_handshakes = 0

    # --- state -------------------------------------------------------------------------------

    def state(self) -> GatewayState:
        state = self._state
        if state is None:
            raise RuntimeError("no snapshot yet")  # listeners open only after the first snapshot
        return state

    async def _on_snapshot(self, snapshot: pb.Snapshot) -> None:
        state = build_state(snapshot, local_peer=self.tls.name, token_lifetime=self.config.token_lifetime,
                            previous=self._state)
        new_problems = frozenset(state.problems)
        for problem in sorted(new_problems - self._problems):
            log.error("Snapshot %d: %s", state.version, problem)
        self._problems = new_problems
        first = self._state is None
        self._state = state
        self.pools.reconcile(_peers_in_use(state))
        self._prefetch_tokens(state)
        if self._listening:
            await self._reconcile_imports()
            self.metrics.snapshot_version.set(state.version)  # (the first: once the listeners are open)
        if first:
            log.info("Worker %d received snapshot %d of peer %s: %d peers, %d exports, %d imports, %d policies",
                     self.config.worker_index, state.version, state.peer_name, len(state.peers), len(state.exports),
                     len(state.imports), len(state.policies_digest))
            self._ready.set()
        else:
            log.debug("Snapshot %d applied", state.version)

    def _on_connected(self, connected: bool) -> None:
        self.metrics.controlplane_connected.set(1 if connected else 0)
        if self._stopping:
            return
        if connected:
            log.info("Snapshot stream from the control plane at %s is up", self.config.controlplane)
        else:
            version = self._state.version if self._state is not None else 0
            log.warning("Lost the snapshot stream from the control plane at %s (%s); serving snapshot %d until it "
                        "is back", self.config.controlplane, self.feed.last_error or "closed", version)

    def _prefetch_tokens(self, state: GatewayState) -> None:
        """Keep a token ready for every allowed source of every Import, for clients without
        attributes (Import target ports), so that even their first connection asks nothing."""
        src = egress_src(state, {})
        for imp in state.imports.values():
            for source in imp.sources:
                peer = state.peers.get(source.peer)
                if peer is None or self.health.unreachable(peer):
                    continue
                if egress_check(state, imp, source, peer, src).decision.allowed:
                    self.authorizer.prefetch(peer, source, src)

    # --- connections -------------------------------------------------------------------------

    def _peer_stream(self) -> Stream:
        return TlsStream(self.tls.server_context(), server_side=True, handshake_timeout=self.limits.handshake_timeout,
                         liveness_timeout=self.limits.liveness_timeout, on_open=self._on_peer_open)

    def _on_peer_open(self, stream: Stream) -> None:
        if not self.admission.admit("peer", stream):
            return
        if self._pending_handshakes >= self.limits.max_pending_handshakes:
            self.metrics.refused.labels(listener="peer", reason="pending-handshakes").inc()
            self.admission.release(stream)
            stream.abort()
            return
        self._pending_handshakes += 1
        self.connections.spawn(self._serve_peer(stream), name=f"peer-connection {_name(stream)}", kind="connection")

    async def _serve_peer(self, stream: Stream) -> None:
        assert isinstance(stream, TlsStream)
        try:
            try:
                await stream.handshake()
            except StreamError:
                pass  # Ingress.serve awaits the handshake again, counts and logs its failure
            finally:
                self._pending_handshakes -= 1
            await self.ingress.serve(stream)
        finally:
            self._done(stream)

    def _agent_stream(self) -> Stream:
        return TcpStream(on_open=self._on_agent_open)

    def _on_agent_open(self, stream: Stream) -> None:
        if self.admission.admit("agent", stream):
            self.connections.spawn(self._serve(self.egress.serve_agent(stream), stream),
                                   name=f"agent-connection {_name(stream)}", kind="connection")

    def _import_factory(self, port: int):  # type: ignore[no-untyped-def]
        def on_open(stream: Stream) -> None:
            if self.admission.admit("import", stream):
                self.connections.spawn(self._serve(self.egress.serve_import(stream, port), stream),
                                       name=f"import-connection {port} {_name(stream)}", kind="connection")
        return lambda: TcpStream(on_open=on_open)

    async def _serve(self, coro, stream: Stream) -> None:  # type: ignore[no-untyped-def]
        try:
            await coro
        finally:
            self._done(stream)

    def _done(self, stream: Stream) -> None:
        self.admission.release(stream)
        if not stream.closing:
            stream.abort()  # every handler path closes its stream; this only guards against a bug

    def _on_udp_flow(self, port: int, stream: Stream) -> None:
        if self.admission.admit("import", stream):
            self.connections.spawn(self._serve(self.egress.serve_import(stream, port, udp=True), stream),
                                   name=f"import-flow {port}/udp {_name(stream)}", kind="connection")

    def _import_ports(self) -> tuple[set[int], set[int]]:
        """The target ports to listen on: (TCP, UDP)."""
        by_port = self.state().imports_by_port
        return ({p for p, imp in by_port.items() if "TCP" in imp.protocols},
                {p for p, imp in by_port.items() if "UDP" in imp.protocols})

    async def _reconcile_imports(self) -> None:
        tcp, udp = self._import_ports()
        await self.listeners.reconcile_imports(self.config.import_host, tcp, self._import_factory)
        await self.listeners.reconcile_udp_imports(self.config.import_host, udp, self._on_udp_flow,
                                                   idle_timeout=self.limits.udp_idle_timeout)

    def _certificates_changed(self) -> None:
        """New certificates: tunnels and peer connections made with the old ones are not reused
        (a peer moved to another fabric must not keep working through an old tunnel)."""
        closed = self.ingress.certificates_changed()  # both exist before the reload watch starts
        self.pools.certificates_changed()
        log.info("Worker %d: new peer certificates; pooled tunnels dropped, %d idle peer connections closed",
                 self.config.worker_index, closed)

    async def _open_listeners(self) -> None:
        host, port = self.config.peer_listen
        await self.listeners.open_fixed("peer", host, port, self._peer_stream)
        host, port = self.config.agent_listen
        await self.listeners.open_fixed("agent", host, port, self._agent_stream)
        self._listening = True
        await self._reconcile_imports()
        self.metrics.snapshot_version.set(self.state().version)
        self.metrics.serving.set(1)
        log.info("Worker %d serving as peer %s: peer port %s:%d, agent port %s:%d, %d Import ports (event loop: %s)",
                 self.config.worker_index, self.tls.name, *self.config.peer_listen, *self.config.agent_listen,
                 len(self.listeners.import_ports), eventloop.running_loop_name())

    async def _liveness(self) -> None:
        """Heartbeats on framed tunnels, and resets where the other gateway went silent
        (`Relay.check_liveness`), twice per heartbeat interval."""
        metrics, timeout = self.metrics, self.limits.liveness_timeout
        while True:
            await asyncio.sleep(framing.HEARTBEAT_INTERVAL / 2)
            reset = self.meter.check_liveness(timeout)
            for direction in reset:
                metrics.child(metrics.liveness_resets, direction).inc()
            if reset:
                log.warning("Reset %d connections: nothing from the other gateway on their tunnel for %g s",
                            len(reset), timeout)

    async def _report_denials(self) -> None:
        """Policy denials to the control plane every --denial-report-interval (it records Events)."""
        while True:
            await asyncio.sleep(self.config.denial_report_interval)
            batch = self.denials.take()
            if batch:
                await self.feed.report(batch)  # best effort: dropped when it fails

    async def _upkeep(self) -> None:
        while True:
            await asyncio.sleep(UPKEEP_INTERVAL)
            self.meter.flush()
            self.pools.refresh_ages()
            if self._state is not None:
                self._prefetch_tokens(self._state)
            if self._listening and self._state is not None and \
                    self._import_ports() != (self.listeners.import_ports, self.listeners.udp_import_ports):
                await self._reconcile_imports()

    # --- lifecycle ---------------------------------------------------------------------------

    async def run(self) -> int:
        config = self.config
        assert config.runtime_dir is not None
        try:
            self.tls = PeerTLS(config.certs, check=handshake_check)
            token = read_token(config.join_token_file)
            counters = SharedCounters(config.runtime_dir / COUNTERS_FILE)
        except (TLSConfigError, APIError, CountersError) as exc:
            log.error("Worker %s cannot start: %s", config.worker_index, exc)
            return EXIT_CONFIG

        loop = asyncio.get_running_loop()
        stop = asyncio.Event()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, stop.set)
        self._ready = asyncio.Event()
        self.metrics = metrics = GatewayMetrics()
        metrics.controlplane_connected.set(0)
        metrics.snapshot_version.set(0)
        endpoint = Endpoint(address=config.controlplane, token=token,
                            ca_file=config.controlplane_ca or self.tls.identity.ca_path, server_name=self.tls.name)
        self.admission = Admission(config.connections_per_worker, metrics)
        self.listeners = Listeners(metrics)
        self.meter = RelayMeter(lambda labels, flow, n: metrics.child(metrics.relayed_bytes, *labels, flow).inc(n))
        def on_reachability(peer: str, reachable: bool, reason: str) -> None:
            metrics.peer_reachable.labels(peer=peer).set(1 if reachable else 0)
            if not reachable:
                metrics.peer_down.labels(peer=peer, reason=reason).inc()

        self.health = health = PeerHealth(on_change=on_reachability)
        server = None
        try:
            if self._serve_metrics and config.metrics_listen is not None:
                server = self._start_metrics_server(metrics)
            async with asyncio.TaskGroup() as group:
                def on_error(kind: str) -> None:
                    metrics.internal_errors.labels(where=kind).inc()

                self.connections = TaskSet(group, on_error=on_error)
                background = TaskSet(group, on_error=on_error)
                self.pools = TunnelPools(tls=self.tls, size=config.pool_size, keepalive=config.pool_keepalive,
                                         limits=self.limits, metrics=metrics, health=health, tasks=background,
                                         framing=config.framed_tunnels, max_size=config.pool_max_size,
                                         demand_window=config.pool_demand_window)
                self.authorizer = authorizer = RemoteAuthorizer(self.pools, cache=TokenCache(), tasks=background,
                                                                metrics=metrics, limits=self.limits)
                access = AccessLog(config.access_log)
                self.denials = denials = DenialReports()
                self.ingress = Ingress(state=self.state, metrics=metrics, limits=self.limits, meter=self.meter,
                                       framing=config.framed_tunnels,
                                       serve_unconfigured_peers=config.serve_unconfigured_peers, access=access,
                                       denials=denials)
                self.egress = Egress(state=self.state, pools=self.pools, authorizer=authorizer, counters=counters,
                                     health=health, metrics=metrics, limits=self.limits, meter=self.meter,
                                     access=access, denials=denials)
                self.feed = SnapshotFeed(endpoint, role="gateway", on_snapshot=self._on_snapshot,
                                         on_connected=self._on_connected,
                                         name=f"gateway {self.tls.name} worker {config.worker_index} "
                                              f"pid {os.getpid()}")
                feed = group.create_task(self.feed.run(), name="snapshot-feed")
                watch = group.create_task(self.tls.watch(on_reload=self._certificates_changed), name="tls-reload")
                await _first(self._ready.wait(), stop.wait())
                upkeep = liveness = reports = None
                if self._ready.is_set() and not stop.is_set():
                    await self._open_listeners()
                    # What start-up made (modules, grpc, the first state: ~40,000 objects) lives as
                    # long as the worker: keep the garbage collector from walking it again and
                    # again (its full passes took ~10 ms, in the middle of connections).
                    gc.freeze()
                    upkeep = group.create_task(self._upkeep(), name="upkeep")
                    liveness = group.create_task(self._liveness(), name="liveness")
                    reports = group.create_task(self._report_denials(), name="denial-reports")
                    await stop.wait()
                self._stopping = True
                metrics.serving.set(0)
                log.info("Worker %d stopping: %d connections open, draining for up to %g s",
                         config.worker_index, len(self.admission.streams), self.limits.drain_timeout)
                self.listeners.close()
                self.ingress.close_idle()
                cancelled = await self.connections.drain(self.limits.drain_timeout)
                if cancelled:
                    log.warning("Worker %d reset %d connections still open after %g s", config.worker_index,
                                cancelled, self.limits.drain_timeout)
                self.admission.abort_all()
                for task in (feed, watch, upkeep, liveness, reports):
                    if task is not None:
                        task.cancel()
                background.cancel_all()
                self.pools.close()
                self.meter.flush()
        except OSError as exc:
            log.error("Worker %d cannot listen: %s", config.worker_index, exc.strerror or exc)
            return 1
        finally:
            if server is not None:
                server.stop()
            counters.close()
        return 0

    def _start_metrics_server(self, metrics: GatewayMetrics):  # type: ignore[no-untyped-def]
        """/metrics of the one-process gateway: this worker's registry (values in memory, not in
        multiprocess files), build info, certificate expiry and process figures (as worker-0, like
        a supervisor's worker), and the supervisor's two figures (1 worker, no restart)."""
        from controlplane.api import buildinfo
        from controlplane.api.metricsserver import start_metrics_server
        from controlplane.certmetrics import CertificateExpiry, peer_certificates

        from .metrics import SupervisorMetrics

        config = self.config
        registry = metrics.registry
        pid = os.getpid()
        buildinfo.register(registry, "gateway", event_loop=eventloop.resolve(config.event_loop),
                           processes=lambda: {f"worker-{config.worker_index}": pid})
        registry.register(CertificateExpiry("gateway", peer_certificates(config.certs)))
        SupervisorMetrics(registry).workers.set(1)
        assert config.metrics_listen is not None
        host, port = config.metrics_listen
        try:
            return start_metrics_server(registry, host, port, ready=self._not_ready)
        except OSError as exc:
            raise OSError(exc.errno, f"cannot serve metrics on {host}:{port}: {exc.strerror or exc}") from exc

    def _not_ready(self) -> str | None:
        """/readyz of the one-process gateway (from the metrics thread: reads only)."""
        if self._stopping:
            return "stopping"
        return None if self._listening else "waiting for the first snapshot from the control plane"


async def _first(*aws) -> None:  # type: ignore[no-untyped-def]
    """Wait until the first of `aws` finishes; cancel the others."""
    tasks = [asyncio.ensure_future(a) for a in aws]
    try:
        await asyncio.wait(tasks, return_when=asyncio.FIRST_COMPLETED)
    finally:
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)


def _peers_in_use(state: GatewayState) -> list[PeerView]:
    names = {source.peer for imp in state.imports.values() for source in imp.sources}
    return [state.peers[name] for name in sorted(names) if name in state.peers]


def _name(stream: Stream) -> str:
    peer = stream.peername
    return f"{peer[0]}:{peer[1]}" if peer else "?"


def _die_with_parent() -> None:
    """Ask Linux to send us SIGTERM if the supervisor dies (so that no worker outlives it)."""
    if not sys.platform.startswith("linux"):
        return
    libc = ctypes.CDLL(None, use_errno=True)
    PR_SET_PDEATHSIG = 1
    if libc.prctl(PR_SET_PDEATHSIG, signal.SIGTERM, 0, 0, 0) != 0:
        log.warning("Cannot ask to be stopped with the supervisor: %s", os.strerror(ctypes.get_errno()))


def raise_fd_limit() -> None:
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft < hard:
        resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))


def run_worker(config: GatewayConfig) -> int:
    """The worker's entry point (a process started by the supervisor)."""
    _die_with_parent()
    if config.supervisor_pid is not None and os.getppid() != config.supervisor_pid:
        log.error("Worker %s: the supervisor (pid %d) is already gone", config.worker_index, config.supervisor_pid)
        return 1
    raise_fd_limit()
    return eventloop.run(Worker(config).run(), config.event_loop)
