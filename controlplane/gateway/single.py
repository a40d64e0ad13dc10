"""`clusterlink-gateway --workers 1`: the one worker runs in the gateway's own process.

A supervisor exists to share ports between workers, to add their metrics up and to restart one
that dies. With one worker there is nothing to share or add, and a process of its own would cost
about 30 MB (an interpreter with asyncio, OpenSSL and prometheus_client) for a restart that the
orchestrator does anyway (Kubernetes restarts the container, systemd the unit). So the gateway
process is the worker: it makes the runtime directory (the round-robin counters file), serves
/metrics, /healthz and /readyz itself from in-memory metrics (multiprocess files cost about a
microsecond per update), and exits with the worker's status. /readyz answers 503 until the worker
listens (it has its first snapshot) and while it stops. The metric families are those of a
supervised gateway: its process figures are `process="worker-0"` and `clusterlink_gateway_workers`
is 1.
"""

from __future__ import annotations

import dataclasses
import logging
import shutil
import tempfile
from pathlib import Path

from controlplane.api import eventloop

from .config import EXIT_CONFIG, ConfigError, GatewayConfig
from .counters import COUNTERS_FILE, SharedCounters
from .ports import log_connect_limits
from .supervisor import check_token_file, report_removal_error

log = logging.getLogger(__name__)


def run_single(config: GatewayConfig) -> int:
    try:
        check_token_file(config.join_token_file)
    except ConfigError as exc:
        log.error("The gateway cannot start: %s", exc)
        return EXIT_CONFIG
    from .worker import Worker, raise_fd_limit

    runtime = Path(tempfile.mkdtemp(prefix="clusterlink-gateway-"))
    try:
        SharedCounters.create(runtime / COUNTERS_FILE)
        raise_fd_limit()
        log.info("Gateway starting as one process (--workers 1)")
        log_connect_limits(log)
        worker = Worker(dataclasses.replace(config, worker_index=0, runtime_dir=runtime), serve_metrics=True)
        return eventloop.run(worker.run(), config.event_loop)
    finally:
        shutil.rmtree(runtime, onerror=report_removal_error)
