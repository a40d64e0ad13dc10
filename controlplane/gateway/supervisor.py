"""The gateway's supervisor: the process `clusterlink-gateway` starts as.

It checks the configuration, makes a private runtime directory (the Prometheus multiprocess
files and the shared round-robin counters), starts --workers worker processes by running this
program again with an internal `--worker-index` (a fresh interpreter, not a fork: the workers
use grpc, which must not be forked after import), serves /metrics aggregated over the workers,
and restarts a worker that dies, with exponential backoff. A worker that exits with EXIT_CONFIG
cannot work with this configuration: the supervisor then stops everything and exits with it.

SIGTERM/SIGINT: forwarded to every worker, which stops accepting and drains its connections
(--drain-timeout); workers still alive a few seconds after that are killed. The runtime
directory is removed on the way out.
"""

from __future__ import annotations

import asyncio
import logging
import os
import shutil
import signal
import sys
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path

from controlplane.tlsconfig import PeerTLS, TLSConfigError, handshake_check

from .config import EXIT_CONFIG, ConfigError, GatewayConfig
from .counters import COUNTERS_FILE, SharedCounters
from .ports import log_connect_limits

log = logging.getLogger(__name__)

RESTART_MIN = 0.5
RESTART_MAX = 30.0
STABLE_AFTER = 60.0
KILL_GRACE = 5.0


class Supervisor:
    def __init__(self, config: GatewayConfig, argv: Sequence[str]) -> None:
        self.config = config
        self.argv = list(argv)
        self._procs: dict[int, asyncio.subprocess.Process] = {}
        self._stopping = False
        self._exit_code = 0

    def run(self) -> int:
        try:
            tls = PeerTLS(self.config.certs, check=handshake_check)
            check_token_file(self.config.join_token_file)
        except (TLSConfigError, ConfigError) as exc:
            log.error("The gateway cannot start: %s", exc)
            return EXIT_CONFIG
        runtime = Path(tempfile.mkdtemp(prefix="clusterlink-gateway-"))
        try:
            metrics_dir = runtime / "metrics"
            metrics_dir.mkdir()
            # Before prometheus_client is imported anywhere in this process: it reads the variable once.
            os.environ["PROMETHEUS_MULTIPROC_DIR"] = str(metrics_dir)
            SharedCounters.create(runtime / COUNTERS_FILE)
            log.info("Gateway of peer %s starting %d workers", tls.name, self.config.workers)
            log_connect_limits(log)
            return asyncio.run(self._run(runtime))
        finally:
            shutil.rmtree(runtime, onerror=report_removal_error)

    async def _run(self, runtime: Path) -> int:
        from prometheus_client import CollectorRegistry, multiprocess

        from controlplane.api.metricsserver import start_metrics_server

        from .metrics import SupervisorMetrics

        metrics = SupervisorMetrics()
        server = None
        if self.config.metrics_listen is not None:
            registry = CollectorRegistry()
            multiprocess.MultiProcessCollector(registry)
            from controlplane.api import buildinfo, eventloop
            from controlplane.certmetrics import CertificateExpiry, peer_certificates

            buildinfo.register(registry, "gateway", event_loop=eventloop.resolve(self.config.event_loop),
                               processes=self._pids)
            registry.register(CertificateExpiry("gateway", peer_certificates(self.config.certs)))
            host, port = self.config.metrics_listen
            try:
                server = start_metrics_server(registry, host, port, ready=self._not_ready)
            except OSError as exc:
                log.error("Cannot serve metrics on %s:%d: %s", host, port, exc.strerror or exc)
                return 1
        loop = asyncio.get_running_loop()
        stop = asyncio.Event()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, stop.set)
        try:
            async with asyncio.TaskGroup() as group:
                keepers = [group.create_task(self._keep(i, runtime, stop, metrics, multiprocess), name=f"worker-{i}")
                           for i in range(self.config.workers)]
                await stop.wait()
                self._stopping = True
                await self._stop_workers()
                for keeper in keepers:
                    keeper.cancel()
        finally:
            if server is not None:
                server.stop()
        log.info("Gateway stopped")
        return self._exit_code

    def _pids(self) -> dict[str, int]:
        """The processes of this gateway (from the metrics thread: reads only)."""
        pids = {"supervisor": os.getpid()}
        for index, proc in list(self._procs.items()):
            if proc.returncode is None:
                pids[f"worker-{index}"] = proc.pid
        return pids

    def _not_ready(self) -> str | None:
        """/readyz (from the metrics thread: reads only): every worker process is running."""
        running = sum(1 for p in list(self._procs.values()) if p.returncode is None)
        if self._stopping:
            return "stopping"
        return None if running == self.config.workers else f"{running} of {self.config.workers} workers running"

    async def _keep(self, index: int, runtime: Path, stop: asyncio.Event,  # type: ignore[no-untyped-def]
                    metrics, multiprocess) -> None:
        """Run worker `index`, and again whenever it dies, until the gateway stops."""
        backoff = RESTART_MIN
        cmd = [sys.executable, "-m", "controlplane.gateway.main", *self.argv, "--worker-index", str(index),
               "--runtime-dir", str(runtime), "--supervisor-pid", str(os.getpid())]
        while not self._stopping:
            started = time.monotonic()
            proc = await asyncio.create_subprocess_exec(*cmd)
            self._procs[index] = proc
            metrics.workers.inc()
            try:
                code = await proc.wait()
            finally:
                metrics.workers.dec()
                multiprocess.mark_process_dead(proc.pid)
                self._procs.pop(index, None)
            if self._stopping:
                return
            if code == EXIT_CONFIG:
                log.error("Worker %d cannot run with this configuration; stopping the gateway", index)
                self._exit_code = EXIT_CONFIG
                stop.set()
                return
            if time.monotonic() - started > STABLE_AFTER:
                backoff = RESTART_MIN
            how = f"was killed by signal {-code}" if code < 0 else f"exited with status {code}"
            log.error("Worker %d (pid %d) %s; restarting it in %.1f s", index, proc.pid, how, backoff)
            metrics.worker_restarts.inc()
            try:
                async with asyncio.timeout(backoff):
                    await stop.wait()
                return
            except TimeoutError:
                backoff = min(backoff * 2, RESTART_MAX)

    async def _stop_workers(self) -> None:
        procs = list(self._procs.values())
        for proc in procs:
            if proc.returncode is None:
                proc.send_signal(signal.SIGTERM)
        waits = [asyncio.ensure_future(p.wait()) for p in procs]
        if not waits:
            return
        _, pending = await asyncio.wait(waits, timeout=self.config.limits.drain_timeout + KILL_GRACE)
        for proc in procs:
            if proc.returncode is None:
                log.warning("Worker pid %d did not stop in time; killing it", proc.pid)
                proc.kill()
        if pending:
            await asyncio.wait(pending)


def check_token_file(path: Path) -> None:
    """The join token file must be readable and not empty (the workers read it themselves)."""
    try:
        text = path.read_text().strip()
    except OSError as exc:
        raise ConfigError(f"cannot read the join token file {path}: {exc.strerror or exc}") from None
    if not text:
        raise ConfigError(f"the join token file {path} is empty")


def report_removal_error(function, path, exc_info) -> None:  # type: ignore[no-untyped-def]
    log.warning("Cannot remove %s from the gateway's runtime directory: %s", path, exc_info[1])
