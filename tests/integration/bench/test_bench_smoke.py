"""The benchmark cannot rot: its smoke run (every section, UDP included, every path, tiny counts) must produce a report
with every documented key and sane values, and bench/README.md must document every key the schema
checks."""

from __future__ import annotations

import copy
import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from bench import paths, schema
from bench.report import STREAM_KEYS
from bench.settings import SECTIONS
from fabric.faults import FAULTS

ROOT = Path(__file__).resolve().parents[3]
README = ROOT / "bench" / "README.md"
SMOKE_TIMEOUT_S = 360  # the smoke run takes about 100 s on an idle 2-vCPU machine (40 s without failover)

_COMPONENTS = set(paths.COMPONENTS) | set(schema.MEMORY_COMPONENTS) | {"client", "server", "proxies"}


def _documented_form(keys: tuple[str, ...]) -> str:
    """A key path with its variable parts written as bench/README.md writes them."""
    out = []
    for i, key in enumerate(keys):
        parent = keys[i - 1] if i else ""
        if key in STREAM_KEYS.values():
            out.append("<streams>")
        elif key in paths.THROUGHPUT_PATHS and keys[0] in ("throughput", "udp", "connections", "parallel_connections",
                                                                     "latency", "cpu"):
            out.append("<path>")
        elif parent in ("vs_direct", "vs_haproxy_path"):
            out.append("<figure>")
        elif keys[0] == "policy" and i == 1:
            out.append("<size>")
        elif keys[0] == "failover" and i == 1:
            out.append("<fault>")
        elif key in _COMPONENTS and (keys[0] == "cpu" and i == len(keys) - 1 or keys[:2] == ("memory", "rss_mb") and i == 2):
            out.append("<component>")
        else:
            out.append(key)
    return ".".join(out)


def test_the_readme_documents_every_key_of_the_schema() -> None:
    text = README.read_text()
    documented = set(re.findall(r"`([a-z_<>.0-9]+)`", text))
    missing = sorted({_documented_form(keys) for keys, _ in schema.expected_keys(SECTIONS)} - documented)
    assert not missing, f"bench/README.md does not document: {missing}"


def test_the_schema_checker_reports_what_is_missing() -> None:
    problems = schema.problems({"schema_version": 1, "settings": {"sections": ["policy"]}, "targets": []})
    assert "policy.10000.p99_us: missing" in problems
    assert "machine.cores: missing" in problems
    udp = schema.problems({"schema_version": 1, "settings": {"sections": ["udp"]}, "targets": []})
    for path in paths.UDP_PATHS:
        assert f"udp.{path}.mbit_per_s: missing" in udp
        assert f"udp.{path}.lost_percent: missing" in udp
        assert f"cpu.cpu_s_per_gb_udp.{path}.client: missing" in udp
    assert not any(p.startswith("udp.haproxy_path") for p in udp)  # HAProxy has no UDP: no baseline there


@pytest.mark.privileged
@pytest.mark.skipif(os.geteuid() != 0, reason="the benchmark's fabric needs root (network namespaces, cgroups, BPF)")
def test_the_smoke_run_writes_every_documented_key(tmp_path: Path) -> None:
    out = tmp_path / "latest.json"
    logs = tmp_path / "logs"
    proc = subprocess.run([sys.executable, "-m", "bench", "--smoke", "--quiet", "--output", str(out),
                           "--keep-logs", str(logs)], cwd=ROOT, capture_output=True, text=True,
                          timeout=SMOKE_TIMEOUT_S)
    assert proc.returncode == 0, f"exit {proc.returncode}\n{proc.stdout[-4000:]}\n{proc.stderr[-6000:]}"
    report = json.loads(out.read_text())
    assert report["schema_problems"] == []
    assert schema.problems(report) == []
    assert report["failures"] == [], report["failures"]
    assert report["mode"] == "smoke"
    # the baseline is what it claims: TLS 1.3 with the same suite as ours, sessions resumed
    assert report["tls"]["gateway"]["cipher"] == report["tls"]["haproxy"]["cipher"]
    assert report["haproxy"]["tls_sessions"]["resumed"] > 0
    assert report["haproxy"]["tls_sessions"]["failed"] == 0
    assert "ssl-min-ver TLSv1.3" in report["haproxy"]["config"]["a"]
    # every path carried traffic in every section
    for streams in STREAM_KEYS.values():
        for path in paths.THROUGHPUT_PATHS:
            assert report["throughput"][streams][path]["gbit_per_s"]["median"] > 0
    # UDP through the TCPAndUDP Import: datagrams arrived on every UDP path, at about the offered rate
    offered = report["settings"]["udp_mbit_per_s"]
    for path in paths.UDP_PATHS:
        entry = report["udp"][path]
        assert 0 < entry["mbit_per_s"]["median"] <= entry["sent_mbit_per_s"]["median"] * 1.05 <= offered * 1.1
        assert 0 <= entry["lost_percent"]["median"] < 50, entry
        assert entry["vs_direct"] > 0
    assert report["udp"]["direct"]["vs_direct"] == 1.0
    assert "haproxy_path" not in report["udp"]
    assert "UDP (iperf3 -u" in proc.stdout
    for path in paths.REQUEST_PATHS:
        assert report["connections"][path]["failed_exchanges"] == 0
        assert report["parallel_connections"][path]["failed_exchanges"] == 0
        # the parallel client really kept several connections in flight on every path
        assert report["parallel_connections"][path]["mean_in_flight"]["median"] > 4
    # the failover section measured every fault, and connections went on to south after it
    for fault in FAULTS:
        (run,) = report["failover"][fault]["runs"]
        assert run["connections_before_fault"] > 10 and run["connections_after_fault"] > 10, run
        assert set(run["servers_after_recovery"]) == {"south"}, run
    assert "FAILOVER" in proc.stdout
    # the table names every target
    assert "TARGETS" in proc.stdout
    for target in report["targets"]:
        assert target["text"] in proc.stdout
    # and the checker is not vacuous on a real report
    broken = copy.deepcopy(report)
    del broken["latency"]["full_path"]["rtt_p99_us"]
    assert "latency.full_path.rtt_p99_us: missing" in schema.problems(broken)
