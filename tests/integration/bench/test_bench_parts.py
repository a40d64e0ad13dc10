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


# --- udp (iperf3 -u) -------------------------------------------------------------------------------
def _udp_result(sent_packets: int, lost: int, blksize: int = 1200, seconds: float = 2.0) -> str:
    """The parts of an `iperf3 -u -J` client result (3.12) the benchmark reads."""
    received = (sent_packets - lost) * blksize
    sum_received = {"start": 0, "end": seconds, "seconds": seconds, "bytes": received,
                    "bits_per_second": received * 8 / seconds, "jitter_ms": 0.25, "lost_packets": lost,
                    "packets": sent_packets, "lost_percent": 100.0 * lost / sent_packets if sent_packets else 0,
                    "sender": False}
    sent = {**sum_received, "bytes": sent_packets * blksize, "bits_per_second": sent_packets * blksize * 8 / seconds,
            "jitter_ms": 0, "lost_packets": 0, "lost_percent": 0, "sender": True}
    return json.dumps({"start": {"test_start": {"protocol": "UDP", "blksize": blksize, "duration": int(seconds),
                                                "target_bitrate": 200_000_000}},
                       "end": {"sum": {**sum_received, "bytes": sent["bytes"], "sender": True},
                               "sum_sent": sent, "sum_received": sum_received,
                               "cpu_utilization_percent": {"host_total": 12.5, "remote_total": 3.0}}})


def test_an_iperf3_udp_result_gives_received_rate_loss_and_jitter() -> None:
    from bench.runs import parse_iperf_udp

    error, figures, received, client = parse_iperf_udp(_udp_result(40_000, 1_000), 0)
    assert error == ""
    assert received == 39_000 * 1200
    assert figures == {"mbit_per_s": 187.2, "sent_mbit_per_s": 192.0, "lost_percent": 2.5, "jitter_ms": 0.25}
    assert client["packets"] == 40_000 and client["lost_packets"] == 1_000
    assert client["offered_bit_per_s"] == 200_000_000 and client["datagram_bytes"] == 1200


def test_an_old_iperf3_udp_result_without_sum_received_counts_the_datagrams() -> None:
    from bench.runs import parse_iperf_udp

    data = json.loads(_udp_result(1_000, 100, blksize=1000, seconds=1.0))
    del data["end"]["sum_sent"], data["end"]["sum_received"]
    data["end"]["sum"].update(lost_packets=100, lost_percent=10.0, jitter_ms=0.5)
    error, figures, received, _ = parse_iperf_udp(json.dumps(data), 0)
    assert error == "" and received == 900_000
    assert figures["mbit_per_s"] == 7.2 and figures["lost_percent"] == 10.0 and figures["jitter_ms"] == 0.5


@pytest.mark.parametrize(("stdout", "returncode", "expected"), [
    (json.dumps({"start": {}, "end": {}, "error": "unable to connect to server: Connection refused"}), 1,
     "unable to connect to server"),
    ("iperf3: error - the server is busy running a test", 1, "iperf3 exit 1"),
    (json.dumps({"start": {}, "end": {}}), 0, "no UDP summary"),
    (_udp_result(5_000, 5_000), 0, "no datagram arrived"),
])
def test_a_failed_iperf3_udp_run_is_an_error_without_figures(stdout: str, returncode: int, expected: str) -> None:
    from bench.runs import parse_iperf_udp

    error, figures, _, _ = parse_iperf_udp(stdout, returncode)
    assert expected in error
    assert set(figures.values()) == {None}


def test_the_udp_client_line_offers_the_settings_rate_and_size() -> None:
    from bench.runs import udp_argv
    from bench.settings import Settings, preset

    assert udp_argv("10.0.0.1", 5201, Settings()) == [
        "iperf3", "-u", "-c", "10.0.0.1", "-p", "5201", "-b", "200M", "-l", "1200", "-t", "10", "-J",
        "--connect-timeout", "5000"]
    assert preset("quick").udp_mbit_per_s < Settings().udp_mbit_per_s
    assert preset("smoke").udp_mbit_per_s < preset("quick").udp_mbit_per_s
    with pytest.raises(ValueError):
        Settings(udp_mbit_per_s=20_000)
    with pytest.raises(ValueError):
        Settings(udp_datagram_bytes=70_000)


def test_iperf3_udp_on_loopback_parses(tmp_path: Path) -> None:
    """The parser against the installed iperf3 itself: 1 s at 10 Mbit/s on 127.0.0.1."""
    import shutil

    from bench.runs import parse_iperf_udp, udp_argv
    from bench.settings import Settings

    if shutil.which("iperf3") is None:
        pytest.skip("iperf3 is not installed (make install)")
    port = _free_port()
    log_path = tmp_path / "iperf3.log"
    log = open(log_path, "wb")
    # no connection probe: iperf3 -s counts a bare connect as a (failed) test
    server = subprocess.Popen(["iperf3", "-s", "-1", "--forceflush", "-p", str(port), "-B", "127.0.0.1"],
                              stdout=log, stderr=subprocess.STDOUT)
    try:
        deadline = time.monotonic() + 10
        while b"listening" not in log_path.read_bytes():
            assert time.monotonic() < deadline and server.poll() is None, log_path.read_text()
            time.sleep(0.05)
        out = subprocess.run(udp_argv("127.0.0.1", port, Settings(udp_mbit_per_s=10, iperf_seconds=1)),
                             capture_output=True, text=True, timeout=30)
    finally:
        server.terminate()
        server.wait(10)
        log.close()
    error, figures, received, client = parse_iperf_udp(out.stdout, out.returncode, out.stderr)
    assert error == "", out.stdout[-2000:] + out.stderr
    assert 5 < figures["mbit_per_s"] <= 11 and figures["sent_mbit_per_s"] <= 11
    assert 0 <= figures["lost_percent"] < 50 and figures["jitter_ms"] >= 0
    assert received > 0 and client["datagram_bytes"] == 1200


def _udp_record(path: str, rep: int, mbit: float | None, lost: float | None,  # type: ignore[no-untyped-def]
                ok: bool = True):
    from bench.records import CpuResult, IdleWait, RunRecord

    figures = {"mbit_per_s": mbit, "sent_mbit_per_s": None if mbit is None else 200.0, "lost_percent": lost,
               "jitter_ms": None if mbit is None else 0.1}
    received = (mbit or 0) * 1e6 / 8 * 10
    cpu = CpuResult(wall_s=10.0, components={"agent": 0.5, "gateway_east": 1.0, "gateway_west": 1.0, "server": 0.2},
                    client_cpu_s=0.4, machine_busy_fraction=0.5, foreign_cpu_fraction=0.0)
    return RunRecord("udp", path, rep, None, ok, "" if ok else "no datagram arrived", figures, received, cpu,
                     IdleWait(0.05, 0.0, False))


def test_the_udp_report_gives_ratios_to_direct_and_absolute_loss() -> None:
    from bench import report, table

    runs = [_udp_record("direct", 0, 200.0, 0.0), _udp_record("direct", 1, 198.0, 0.5),
            _udp_record("full_path", 0, 150.0, 25.0), _udp_record("full_path", 1, None, None, ok=False),
            _udp_record("full_path_no_agent", 0, 180.0, 10.0), _udp_record("full_path_no_agent", 1, 190.0, 5.0)]
    section = report.udp(runs)
    assert set(section) == {"direct", "full_path", "full_path_no_agent"}
    assert section["direct"]["mbit_per_s"]["median"] == 199.0 and section["direct"]["vs_direct"] == 1.0
    assert section["full_path"]["mbit_per_s"]["runs"] == [150.0, None]  # the failed run is kept out
    assert section["full_path"]["vs_direct"] == round(150.0 / 199.0, 3)
    assert section["full_path_no_agent"]["lost_percent"]["median"] == 7.5
    assert section["full_path_no_agent"]["added_lost_percent"] == 7.25  # percentage points over direct's 0.25
    cpu = report.cpu(runs, ["udp"])["cpu_s_per_gb_udp"]
    assert set(cpu["full_path"]) == {"agent", "gateway_east", "gateway_west", "controlplane_east",
                                     "controlplane_west", "client", "server", "proxies"}
    assert cpu["full_path"]["proxies"]["median"] == round(2.5 / (150e6 / 8 * 10 / 1e9), 3)
    text = table._udp({"udp": section, "settings": {"udp_mbit_per_s": 200, "udp_datagram_bytes": 1200}})
    assert "200 Mbit/s offered, 1200 B datagrams" in text and "HAProxy relays no UDP" in text
    row = next(line for line in text.splitlines() if line.startswith("full_path_no_agent"))
    assert "185.0 [180.0-190.0]" in row and "7.25" in row and "7.50 [5.00-10.00]" in row


def test_an_unexpected_iperf3_udp_result_is_an_error_not_a_crash() -> None:
    from bench.runs import parse_iperf_udp

    data = json.loads(_udp_result(100, 0))
    del data["end"]["sum_received"]["lost_packets"]
    error, figures, received, _ = parse_iperf_udp(json.dumps(data), 0)
    assert "unexpected JSON" in error and received == 0.0 and set(figures.values()) == {None}
    assert parse_iperf_udp("[1, 2]", 0)[0] == "iperf3 exit 0: [1, 2]"
