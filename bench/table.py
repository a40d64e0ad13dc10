"""The printed summary of a report: one table per section with median [min-max], ratios to direct and
to haproxy_path (UDP: to direct only, loss in percent), then the targets (met / not met, with the
numbers). Pure: returns text."""

from __future__ import annotations

from typing import Any

from bench import paths
from bench.report import STREAM_KEYS


def _num(value: Any, digits: int = 1) -> str:
    if value is None:
        return "-"
    if isinstance(value, float) and abs(value) < 10 and digits < 2:
        digits = 2
    return f"{value:.{digits}f}"


def _fig(figure: dict[str, Any] | None, digits: int = 1) -> str:
    if not figure or figure.get("median") is None:
        return "-"
    if figure["min"] == figure["max"]:
        return _num(figure["median"], digits)
    return f"{_num(figure['median'], digits)} [{_num(figure['min'], digits)}-{_num(figure['max'], digits)}]"


def _x(value: float | None) -> str:
    return "-" if value is None else f"{value:.2f}x"


def _table(header: list[str], rows: list[list[str]]) -> str:
    widths = [max(len(str(r[i])) for r in [header, *rows]) for i in range(len(header))]
    lines = ["  ".join(str(c).ljust(w) if i == 0 else str(c).rjust(w) for i, (c, w) in enumerate(zip(row, widths)))
             for row in [header, *rows]]
    lines.insert(1, "  ".join("-" * w for w in widths))
    return "\n".join(lines)


def _throughput(report: dict[str, Any]) -> str:
    rows = []
    for p in paths.THROUGHPUT_PATHS:
        row = [p]
        for streams in STREAM_KEYS.values():
            e = report["throughput"][streams][p]
            row += [_fig(e["gbit_per_s"], 2), _x(e["vs_direct"]), _x(e["vs_haproxy_path"])]
        rows.append(row)
    return ("THROUGHPUT, Gbit/s (iperf3 receiver), median [min-max]\n" +
            _table(["path", "1 stream", "/direct", "/haproxy", "8 streams", "/direct", "/haproxy"], rows))


def _udp(report: dict[str, Any]) -> str:
    rows = []
    for p in paths.UDP_PATHS:
        e = report["udp"][p]
        rows.append([p, _fig(e["mbit_per_s"], 1), _x(e["vs_direct"]), _fig(e["sent_mbit_per_s"], 1),
                     _fig(e["lost_percent"], 2), _num(e["added_lost_percent"], 2), _fig(e["jitter_ms"], 3)])
    s = report.get("settings", {})
    return (f"UDP (iperf3 -u, {s.get('udp_mbit_per_s', '?')} Mbit/s offered, {s.get('udp_datagram_bytes', '?')} B "
            f"datagrams), median [min-max]; no haproxy_path: HAProxy relays no UDP\n" +
            _table(["path", "received Mbit/s", "/direct", "sent Mbit/s", "loss %", "loss - direct", "jitter ms"],
                   rows))


def _connections(report: dict[str, Any]) -> str:
    rows = []
    for p in paths.REQUEST_PATHS:
        e = report["connections"][p]
        rows.append([p, _fig(e["conns_per_s"], 0), _x(e["vs_haproxy_path"]["conns_per_s"]),
                     _fig(e["ttfb_p50_us"], 0), _fig(e["ttfb_p99_us"], 0), _x(e["vs_haproxy_path"]["ttfb_p99_us"]),
                     str(e["failed_exchanges"])])
    return ("NEW CONNECTIONS (sequential connect, 64 B request, 64 B echo, close)\n" +
            _table(["path", "conn/s", "/haproxy", "TTFB p50 us", "TTFB p99 us", "p99/haproxy", "failed"], rows))


def _parallel_connections(report: dict[str, Any]) -> str:
    rows = []
    for p in paths.REQUEST_PATHS:
        e = report["parallel_connections"][p]
        rows.append([p, _fig(e["conns_per_s"], 0), _x(e["vs_haproxy_path"]["conns_per_s"]),
                     _fig(e["ttfb_p50_us"], 0), _fig(e["ttfb_p99_us"], 0), _x(e["vs_haproxy_path"]["ttfb_p99_us"]),
                     _fig(e["mean_in_flight"], 1), _fig(e["client_core_fraction"], 2), str(e["failed_exchanges"])])
    clients = report.get("settings", {}).get("parallel_clients", "?")
    return (f"NEW CONNECTIONS IN PARALLEL ({clients} clients: connect, 64 B request, 64 B echo, close)\n" +
            _table(["path", "conn/s", "/haproxy", "TTFB p50 us", "TTFB p99 us", "p99/haproxy", "in flight",
                    "client core", "failed"], rows))


def _latency(report: dict[str, Any]) -> str:
    rows = []
    for p in paths.REQUEST_PATHS:
        e = report["latency"][p]
        rows.append([p, _fig(e["rtt_p50_us"]), _fig(e["rtt_p99_us"]), _num(e["added_p50_us"]), _num(e["added_p99_us"]),
                     _x(e["vs_haproxy_path"]["rtt_p50_us"])])
    return ("LATENCY (64 B ping-pong on one established connection), us\n" +
            _table(["path", "RTT p50", "RTT p99", "added p50", "added p99", "p50/haproxy"], rows))


def _cpu(report: dict[str, Any]) -> str:
    cpu = report["cpu"]
    rows = []
    for p in paths.THROUGHPUT_PATHS:
        names = [*paths.PROXIES[p], "client", "server"] + (["proxies"] if paths.PROXIES[p] else [])
        for n in names:
            row = [f"{p} / {n}"]
            for streams in STREAM_KEYS.values():
                row.append(_fig(cpu.get("cpu_s_per_gb", {}).get(streams, {}).get(p, {}).get(n), 2))
            row.append(_fig(cpu.get("cpu_s_per_gb_udp", {}).get(p, {}).get(n), 2))
            row.append(_fig(cpu.get("cpu_s_per_1000_conns", {}).get(p, {}).get(n), 2))
            row.append(_fig(cpu.get("cpu_s_per_1000_parallel_conns", {}).get(p, {}).get(n), 2))
            row.append(_fig(cpu.get("cpu_us_per_request", {}).get(p, {}).get(n), 0))
            rows.append(row)
    return ("CPU per component (utime+stime of the process tree)\n" +
            _table(["path / component", "s/GB 1 stream", "s/GB 8 streams", "s/GB UDP", "s/1000 conns",
                    "s/1000 parallel", "us/request"], rows))


def _memory(report: dict[str, Any]) -> str:
    rows = [[c, _fig(e["idle"]), _fig(e["load"]), _num(e.get("after_load")), _fig(e.get("idle_anon"))]
            for c, e in report["memory"]["rss_mb"].items()]
    return ("MEMORY, VmRSS MB (process tree)\n" +
            _table(["component", "idle", "under load (peak)", "after load", "idle, anonymous only"], rows))


def _policy(report: dict[str, Any]) -> str:
    rows = [[size, _fig(e["p50_us"], 2), _fig(e["p99_us"], 2), _fig(e["hit_p99_us"], 2), _fig(e["uncached_p99_us"], 2),
             _fig(e["build_ms"], 0)] for size, e in report["policy"].items()]
    return ("POLICY decision time, us (cache miss; hit and uncached p99 for reference)\n" +
            _table(["policies", "p50", "p99", "hit p99", "uncached p99", "build ms"], rows))


def _failover(report: dict[str, Any]) -> str:
    rows = [[fault, _fig(e["recovery_ms"], 0), _num(e["recovery_p50_ms"], 0), _num(e["recovery_p99_ms"], 0),
             str(e["failed_connections"]), str(e["failed_after_fault"]), str(len(e["runs"]))]
            for fault, e in report["failover"].items()]
    return ("FAILOVER: new connections through the VIP while one of two exporting peers' gateway fails; recovery = "
            "fault until every new connection succeeds again at its usual speed\n" +
            _table(["fault", "recovery ms", "p50", "p99", "failed", "failed (started after)", "runs"], rows))


def _targets(report: dict[str, Any]) -> str:
    lines = ["TARGETS"]
    for t in report["targets"]:
        mark = {True: "MET    ", False: "NOT MET", None: "n/a    "}[t["met"]]
        detail = f"  ({t['detail']})" if t.get("detail") and t["met"] is not None else ""
        lines.append(f"  {mark} {t['text']}: {_num(t['value'], 2)} {t['comparison']} {_num(t['limit'], 2)} "
                     f"{t['unit']}{detail}")
    return "\n".join(lines)


def _reference(report: dict[str, Any]) -> str:
    rows = [[k, _num(v["note"], 2), _num(v["measured"], 2), _x(v["ratio"])] for k, v in report["haproxy_reference"].items()]
    return ("HAPROXY PAIR: this run vs shared/notes/haproxy-baseline.md (loopback there, fabric veths here)\n" +
            _table(["figure", "note", "measured", "ratio"], rows))


def render(report: dict[str, Any]) -> str:
    m = report["machine"]
    head = (f"clusterlink bench ({report['mode']}), {report['started_at']}, {report['duration_s']} s; "
            f"{m['cores']} cores {m['cpu_model']}, kernel {m['kernel']}, Python {m['python']}, "
            f"HAProxy {m.get('haproxy', {}).get('version', '-')}, project {m['project'].get('git_describe')}"
            f"{' (dirty)' if m['project'].get('git_dirty') else ''}")
    parts = [head]
    for key, fn in (("throughput", _throughput), ("udp", _udp), ("connections", _connections),
                     ("parallel_connections", _parallel_connections), ("latency", _latency),
                    ("cpu", _cpu), ("memory", _memory), ("failover", _failover), ("policy", _policy)):
        if key in report:
            parts.append(fn(report))
    if report.get("haproxy_reference"):
        parts.append(_reference(report))
    if "noise" in report:
        n = report["noise"]
        parts.append(f"NOISE: foreign CPU during runs {_fig(n['foreign_cpu_fraction'], 3)} of the machine; "
                     f"{n['idle_wait_timeouts']} run(s) started before the machine was idle; "
                     f"{len(report.get('failures', []))} failed run(s)")
    parts.append(_targets(report))
    return "\n\n".join(parts)
