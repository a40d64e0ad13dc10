"""The benchmark's parts that need no fabric: statistics, the HAProxy configuration and its stats
parser, target evaluation, and the request client against the echo server (on 127.0.0.1)."""

from __future__ import annotations

import json
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

from bench import haproxy, stats, targets
from bench.haproxy import Identity, Route

ROOT = Path(__file__).resolve().parents[3]


# --- stats -----------------------------------------------------------------------------------------
@pytest.mark.parametrize(("samples", "q", "expected"), [
    ([5.0], 50, 5.0), ([5.0], 99, 5.0), ([1, 2, 3, 4], 50, 2.0), (list(range(1, 101)), 99, 99.0),
    (list(range(1, 3001)), 99, 2970.0), ([3, 1, 2], 100, 3.0), ([3, 1, 2], 0, 1.0)])
def test_percentile_is_nearest_rank(samples: list[float], q: float, expected: float) -> None:
    assert stats.percentile(samples, q) == expected


def test_percentile_refuses_no_samples() -> None:
    with pytest.raises(ValueError):
        stats.percentile([], 50)


def test_summary_of_repetitions_keeps_failed_runs_out_of_the_figures() -> None:
    figure = stats.summarize([4.0, None, 2.0, 3.0])
    assert figure == {"median": 3.0, "min": 2.0, "max": 4.0, "spread_pct": 66.7, "runs": [4.0, None, 2.0, 3.0]}
    assert stats.summarize([None])["median"] is None
    assert stats.summarize([7.0])["spread_pct"] == 0.0


def test_ratio_and_difference_tolerate_missing_values() -> None:
    assert stats.ratio(3.0, 2.0) == 1.5
    assert stats.ratio(3.0, 0.0) is None
    assert stats.ratio(None, 2.0) is None
    assert stats.difference(5.0, 2.0) == 3.0
    assert stats.difference(5.0, None) is None


# --- haproxy ---------------------------------------------------------------------------------------
ROUTE = Route(name="echo", a_listen=("10.201.0.1", 21001), b_listen=("10.200.0.2", 21444),
              server=("10.202.1.2", 7000))


def test_haproxy_a_speaks_tls13_with_a_client_certificate_and_verifies_the_peer() -> None:
    text = haproxy.render_a([ROUTE], Identity(Path("/c/east.pem"), Path("/c/ca.pem"), "west"), threads=1,
                            stats_socket=Path("/r/a.sock"))
    assert "nbthread 1" in text
    assert "bind 10.201.0.1:21001\n" in text
    assert ("server west 10.200.0.2:21444 ssl ssl-min-ver TLSv1.3 ssl-max-ver TLSv1.3 crt /c/east.pem "
            "ca-file /c/ca.pem verify required verifyhost west sni str(west)") in text
    assert "no-ssl-reuse" not in text  # session resumption stays on, HAProxy's default


def test_haproxy_b_requires_the_peers_client_certificate() -> None:
    text = haproxy.render_b([ROUTE], Identity(Path("/c/west.pem"), Path("/c/ca.pem"), "east"), threads=2,
                            stats_socket=Path("/r/b.sock"))
    assert "nbthread 2" in text
    assert ("bind 10.200.0.2:21444 ssl crt /c/west.pem ca-file /c/ca.pem verify required "
            "ssl-min-ver TLSv1.3 ssl-max-ver TLSv1.3") in text
    assert "tcp-request session reject unless { ssl_c_s_dn(CN) -m str east }" in text
    assert "server app 10.202.1.2:7000" in text


def test_haproxy_accepts_both_configurations_with_fabric_certificates(tmp_path: Path) -> None:
    if not Path(haproxy.HAPROXY).exists():
        pytest.skip("haproxy is not installed (make install)")
    from controlplane import pki

    pki.create_fabric(tmp_path, "fab")
    for name in ("east", "west"):
        pki.create_peer_cert(tmp_path, name, fabric="fab")
    for side, me, other, render in (("a", "east", "west", haproxy.render_a), ("b", "west", "east", haproxy.render_b)):
        certs = tmp_path / "fab" / me
        pem = haproxy.bundle(certs, tmp_path / f"{me}.pem")
        cfg = tmp_path / f"{side}.cfg"
        cfg.write_text(render([ROUTE], Identity(pem, certs / "ca.pem", other), threads=1,
                              stats_socket=tmp_path / f"{side}.sock"))
        out = subprocess.run([haproxy.HAPROXY, "-c", "-f", str(cfg)], capture_output=True, text=True, timeout=30)
        assert out.returncode == 0, out.stdout + out.stderr


def test_ssl_counters_are_read_by_column_name() -> None:
    csv = ("# pxname,svname,qcur,ssl_sess,ssl_reused_sess,ssl_failed_handshake,\n"
           "to_west_echo,west,0,1,300,0,\n"
           "to_west_echo,BACKEND,0,,,,\n"
           "to_west_iperf,west,0,1,9,0,\n")
    assert haproxy.parse_ssl_counters(csv, "west") == {"ssl_sess": 2, "ssl_reused_sess": 309,
                                                       "ssl_failed_handshake": 0}
    with pytest.raises(ValueError):
        haproxy.parse_ssl_counters(csv, "east")


# --- targets ---------------------------------------------------------------------------------------
def _fig(value: float) -> dict:
    return stats.summarize([value])


def test_targets_are_judged_on_the_medians_of_the_same_run() -> None:
    report = {
        "throughput": {s: {"full_path": {"gbit_per_s": _fig(6.0)}, "haproxy_path": {"gbit_per_s": _fig(5.0)},
                           "agent_hop": {"gbit_per_s": _fig(5.0)}, "direct": {"gbit_per_s": _fig(10.0)}}
                       for s in ("one_stream", "eight_streams")},
        "connections": {"full_path": {"conns_per_s": _fig(1000.0), "ttfb_p99_us": _fig(1200.0)},
                        "haproxy_path": {"conns_per_s": _fig(600.0), "ttfb_p99_us": _fig(2000.0)}},
        "parallel_connections": {"full_path": {"conns_per_s": _fig(1800.0)},
                                 "haproxy_path": {"conns_per_s": _fig(600.0)}},
        "latency": {"full_path": {"added_p50_us": 60.0, "added_p99_us": 200.0},
                    "haproxy_path": {"added_p50_us": 70.0, "added_p99_us": 100.0}},
    }
    by_id = {t["id"]: t for t in targets.evaluate(report)}
    assert by_id["throughput_one_stream"]["met"] is True and by_id["throughput_one_stream"]["value"] == 1.2
    assert by_id["conns_per_s"]["met"] is False and by_id["conns_per_s"]["value"] == 1.667
    assert by_id["parallel_conns_per_s"]["met"] is True and by_id["parallel_conns_per_s"]["value"] == 3.0
    assert by_id["ttfb_p99"]["met"] is False and by_id["ttfb_p99"]["value"] == 0.6
    assert by_id["added_latency_p50"]["met"] is True
    assert by_id["added_latency_p99"]["met"] is False
    assert by_id["agent_hop"]["met"] is False and by_id["agent_hop"]["value"] == 0.5
    assert by_id["policy_p99"]["met"] is None  # not measured: neither met nor missed
    assert by_id["cpu_per_gb"]["met"] is None


# --- client and echo server ------------------------------------------------------------------------
def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@pytest.fixture
def echo_port(tmp_path: Path):  # type: ignore[no-untyped-def]
    port = _free_port()
    log = open(tmp_path / "echo.log", "wb")
    proc = subprocess.Popen([sys.executable, "-m", "bench.echo", "--host", "127.0.0.1", "--port", str(port)],
                            cwd=ROOT, stdout=log, stderr=subprocess.STDOUT)
    try:
        deadline = time.monotonic() + 10
        while True:
            try:
                socket.create_connection(("127.0.0.1", port), timeout=1).close()
                break
            except OSError:
                if time.monotonic() > deadline or proc.poll() is not None:
                    raise
                time.sleep(0.05)
        yield port
    finally:
        proc.terminate()
        proc.wait(10)
        log.close()


@pytest.mark.parametrize("mode", ["conn", "pconn", "ping"])
def test_the_client_measures_against_the_echo_server(echo_port: int, mode: str) -> None:
    out = subprocess.run([sys.executable, "-m", "bench.client", mode, "--host", "127.0.0.1", "--port", str(echo_port),
                          "--count", "50", "--warmup", "5", "--max-seconds", "20"], cwd=ROOT, capture_output=True,
                         text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    result = json.loads(out.stdout)
    assert result["completed"] == 50 and result["errors"] == 0 and not result["truncated"]
    assert result["attempted"] == 55
    assert 0 < result["p50_us"] <= result["p99_us"] <= result["max_us"]
    assert result["per_s"] > 0


def test_the_parallel_client_keeps_its_connections_in_flight(echo_port: int) -> None:
    out = subprocess.run([sys.executable, "-m", "bench.client", "pconn", "--host", "127.0.0.1", "--port",
                          str(echo_port), "--count", "400", "--warmup", "40", "--concurrency", "16",
                          "--max-seconds", "30"], cwd=ROOT, capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    result = json.loads(out.stdout)
    assert result["completed"] == 400 and result["errors"] == 0 and not result["truncated"]
    assert result["concurrency"] == 16 and 1 < result["mean_in_flight"] <= result["max_in_flight"] <= 16
    assert 0 < result["core_fraction"] <= 1.5 and result["window_s"] > 0


def test_parallel_window_counts_overlap_and_rate() -> None:
    ms = 1_000_000
    ex = [stats.Exchange(0, 10 * ms, 5 * ms, False),            # warm-up, ends inside the window
          stats.Exchange(2 * ms, 12 * ms, 4 * ms, True),
          stats.Exchange(4 * ms, 14 * ms, 8 * ms, True),
          stats.Exchange(6 * ms, 7 * ms, None, True)]            # failed: not counted, not a TTFB
    w = stats.parallel_window(ex)
    assert w["window_s"] == 0.012 and w["in_window"] == 3
    assert w["per_s"] == 3 / 0.012
    assert w["max_in_flight"] == 4
    assert w["mean_in_flight"] == (8 + 10 + 10 + 1) / 12
    assert stats.ttfb_us(ex) == [2000.0, 4000.0]
    assert stats.parallel_window([])["per_s"] == 0.0


@pytest.mark.parametrize("mode", ["conn", "pconn"])
def test_the_client_reports_a_refused_path_as_errors(mode: str) -> None:
    port = _free_port()  # nothing listens there
    out = subprocess.run([sys.executable, "-m", "bench.client", mode, "--host", "127.0.0.1", "--port", str(port),
                          "--count", "10", "--max-seconds", "20"], cwd=ROOT, capture_output=True, text=True,
                         timeout=60)
    assert out.returncode == 1
    result = json.loads(out.stdout)
    assert result["completed"] == 0 and result["errors"] == 10
    assert "ConnectionRefusedError" in result["first_error"]
    assert result["p50_us"] is None
