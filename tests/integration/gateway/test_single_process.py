"""`clusterlink-gateway --workers 1`: one process, no supervisor. It serves its own /metrics (the
families of a supervised gateway), /readyz only once it listens, exits with the worker's status
and removes its runtime directory."""

from __future__ import annotations

import signal
import socket
import time
from pathlib import Path

from controlplane.gateway.counters import COUNTERS_FILE

from .conftest import Fabric
from .hostile import children
from .support import GatewayProcess, metric_value
from .test_readiness import probe


def _runtime_dirs(workdir: Path) -> list[Path]:
    return sorted(workdir.glob("clusterlink-gateway-*"))


def test_one_worker_is_one_process_that_serves_its_own_metrics(fabric: Fabric, tmp_path: Path) -> None:
    gateway = GatewayProcess("west-one", fabric.certs.west, fabric.cp_west.socket_path, tmp_path, workers=1)
    gateway.start()
    try:
        gateway.wait_ready(fabric.version["west"])
        assert gateway.proc is not None
        assert children(gateway.proc.pid) == []
        text = gateway.metrics()
        assert metric_value(text, "clusterlink_build_info", component="gateway") == 1
        assert metric_value(text, "clusterlink_certificate_expiry_timestamp_seconds", component="gateway",
                            certificate="peer") > time.time()
        assert metric_value(text, "clusterlink_process_resident_memory_bytes", component="gateway",
                            process="worker-0") > 2**20
        assert "process=\"supervisor\"" not in text
        assert metric_value(text, "clusterlink_gateway_workers") == 1
        assert metric_value(text, "clusterlink_gateway_serving_workers") == 1
        assert probe(gateway.metrics_port, "/readyz") == (200, "ready\n")
        (runtime,) = _runtime_dirs(tmp_path)
        assert (runtime / COUNTERS_FILE).is_file()  # the round-robin counters
        assert not (runtime / "metrics").exists()  # values in memory, no multiprocess files
        gateway.proc.send_signal(signal.SIGTERM)
        assert gateway.proc.wait(timeout=20) == 0
        assert _runtime_dirs(tmp_path) == []
    finally:
        gateway.stop()


def test_readyz_waits_for_the_first_snapshot(fabric: Fabric, tmp_path: Path) -> None:
    gateway = GatewayProcess("west-alone", fabric.certs.west, tmp_path / "no-control-plane.sock", tmp_path, workers=1)
    gateway.start()
    try:
        deadline = time.monotonic() + 20
        seen = (0, "")
        while time.monotonic() < deadline:
            seen = probe(gateway.metrics_port, "/readyz") if _listening(gateway.metrics_port) else (0, "")
            if seen[0] == 503:
                break
            time.sleep(0.05)
        assert seen == (503, "not ready: waiting for the first snapshot from the control plane\n"), seen
        assert probe(gateway.metrics_port, "/healthz")[0] == 200
        assert gateway.stop() == 0
    finally:
        gateway.stop()


def test_a_configuration_that_cannot_work_exits_78(fabric: Fabric, tmp_path: Path) -> None:
    gateway = GatewayProcess("broken-one", tmp_path / "no-such-certs", fabric.cp_east.socket_path, tmp_path, workers=1)
    gateway.start()
    try:
        assert gateway.proc is not None and gateway.proc.wait(timeout=20) == 78
        assert "cannot start" in gateway.log_tail() and "no-such-certs" in gateway.log_tail()
        assert _runtime_dirs(tmp_path) == []
    finally:
        gateway.stop()


def test_a_metrics_port_in_use_is_a_clear_error(fabric: Fabric, tmp_path: Path) -> None:
    gateway = GatewayProcess("west-busy", fabric.certs.west, fabric.cp_west.socket_path, tmp_path, workers=1)
    with socket.socket() as taken:
        taken.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        taken.bind(("127.0.0.1", gateway.metrics_port))
        taken.listen()
        gateway.start()
        try:
            assert gateway.proc is not None and gateway.proc.wait(timeout=20) == 1
            assert f"cannot serve metrics on 127.0.0.1:{gateway.metrics_port}" in gateway.log_tail()
        finally:
            gateway.stop()


def _listening(port: int) -> bool:
    try:
        socket.create_connection(("127.0.0.1", port), timeout=1).close()
        return True
    except OSError:
        return False
