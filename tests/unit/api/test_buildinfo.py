"""clusterlink_build_info, the certificate expiry collector (controlplane.certmetrics) and the per-process figures."""

from __future__ import annotations

import datetime
import logging
import os
import platform
import subprocess
import sys
from pathlib import Path

from prometheus_client import CollectorRegistry

from controlplane import pki
from controlplane.api import buildinfo
from controlplane.certmetrics import CertificateExpiry

NOW = datetime.datetime(2026, 6, 1, tzinfo=datetime.timezone.utc)


def _write_cert(path: Path, days: int) -> float:
    ca = pki.new_fabric_ca(now=NOW)
    peer = pki.issue_peer_cert(ca, "east", days=days, now=NOW)
    path.write_bytes(pki.cert_pem(peer.cert))
    return peer.cert.not_valid_after_utc.timestamp()


def test_build_info_names_the_component_and_its_versions() -> None:
    registry = CollectorRegistry()
    buildinfo.register(registry, "agent", event_loop="uvloop")
    labels = {"component": "agent", "version": buildinfo.version(), "python": platform.python_version(),
              "event_loop": "uvloop"}
    assert registry.get_sample_value("clusterlink_build_info", labels) == 1


def test_certificate_expiry_follows_the_file(tmp_path: Path) -> None:
    cert = tmp_path / "cert.pem"
    first = _write_cert(cert, days=30)
    registry = CollectorRegistry()
    registry.register(CertificateExpiry("gateway", {"peer": cert}))
    labels = {"component": "gateway", "certificate": "peer"}
    assert registry.get_sample_value("clusterlink_certificate_expiry_timestamp_seconds", labels) == first
    # renewed on disk (another size or mtime): the next scrape shows the new date, no restart
    second = _write_cert(cert, days=90)
    os.utime(cert, ns=(0, 10**9))
    assert second > first
    assert registry.get_sample_value("clusterlink_certificate_expiry_timestamp_seconds", labels) == second


def test_an_unreadable_certificate_has_no_sample_and_is_logged_once(tmp_path: Path, caplog) -> None:  # type: ignore[no-untyped-def]
    good, garbage, missing = tmp_path / "good.pem", tmp_path / "garbage.pem", tmp_path / "missing.pem"
    expiry = _write_cert(good, days=10)
    garbage.write_bytes(b"-----BEGIN CERTIFICATE-----\nnot base64\n-----END CERTIFICATE-----\n")
    registry = CollectorRegistry()
    registry.register(CertificateExpiry("controlplane", {"peer": good, "ca": garbage, "api": missing}))
    name = "clusterlink_certificate_expiry_timestamp_seconds"
    with caplog.at_level(logging.WARNING, logger="controlplane.certmetrics"):
        for _ in range(3):
            assert registry.get_sample_value(name, {"component": "controlplane", "certificate": "peer"}) == expiry
            assert registry.get_sample_value(name, {"component": "controlplane", "certificate": "ca"}) is None
            assert registry.get_sample_value(name, {"component": "controlplane", "certificate": "api"}) is None
    warnings = [r.getMessage() for r in caplog.records]
    assert len(warnings) == 2, warnings
    assert any("garbage.pem" in w and "not a valid PEM certificate" in w for w in warnings)
    assert any("missing.pem" in w and "No such file" in w for w in warnings)
    # the missing file appears: its expiry shows at the next scrape
    expiry_api = _write_cert(missing, days=5)
    assert registry.get_sample_value(name, {"component": "controlplane", "certificate": "api"}) == expiry_api


def test_stat_fields_are_counted_from_the_last_parenthesis() -> None:
    rest = " ".join(str(n) for n in range(3, 53))  # fields 3..52 hold their own numbers
    for comm in ("python3", "a b", "x) 7 8 (y", ")"):
        # utime is field 14, stime 15, starttime 22
        assert buildinfo.parse_stat(f"4242 ({comm}) S {rest[2:]}") == (14 + 15, 22), comm


def test_process_figures_per_process_and_none_for_a_gone_one() -> None:
    child = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(30)"])
    try:
        pids = {"supervisor": os.getpid(), "worker-0": child.pid}
        registry = CollectorRegistry()
        registry.register(buildinfo.Processes("gateway", lambda: pids))
        me = {"component": "gateway", "process": "supervisor"}
        worker = {"component": "gateway", "process": "worker-0"}
        rss = registry.get_sample_value("clusterlink_process_resident_memory_bytes", me)
        assert rss is not None and rss > 5 * 2**20
        assert registry.get_sample_value("clusterlink_process_open_fds", me) >= 3
        assert registry.get_sample_value("clusterlink_process_cpu_seconds_total", me) > 0
        started = registry.get_sample_value("clusterlink_process_start_time_seconds", worker)
        assert started is not None and abs(started - datetime.datetime.now().timestamp()) < 60
    finally:
        child.kill()
        child.wait()
    assert registry.get_sample_value("clusterlink_process_resident_memory_bytes", worker) is None
    assert registry.get_sample_value("clusterlink_process_resident_memory_bytes", me) is not None


def test_the_control_plane_registry_carries_them(tmp_path: Path) -> None:
    from controlplane.server.metrics import ControlPlaneMetrics

    expiry = _write_cert(tmp_path / pki.CERT_FILE, days=20)
    _write_cert(tmp_path / pki.CA_FILE, days=200)
    registry = ControlPlaneMetrics(certs=tmp_path).registry
    assert registry.get_sample_value("clusterlink_build_info", {
        "component": "controlplane", "version": buildinfo.version(), "python": platform.python_version(),
        "event_loop": ""}) == 1
    assert registry.get_sample_value("clusterlink_certificate_expiry_timestamp_seconds",
                                     {"component": "controlplane", "certificate": "peer"}) == expiry
    main = {"component": "controlplane", "process": "main"}
    assert registry.get_sample_value("clusterlink_process_resident_memory_bytes", main) > 2**20
    assert registry.get_sample_value("clusterlink_process_open_fds", main) >= 3
    # one name scheme for every component: prometheus_client's per-component names are gone
    assert registry.get_sample_value("clusterlink_controlplane_process_resident_memory_bytes") is None
