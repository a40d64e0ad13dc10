"""The JSON report (schema in bench/README.md, checked by bench.schema) from the raw runs (pure).

Every figure is {"median", "min", "max", "spread_pct", "runs"} over the repetitions (bench.stats),
its unit in its key name. Ratios are ratios of medians of the same run.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any

from bench import paths
from bench.records import UDP_FIGURES, RunRecord
from bench.stats import difference, median_of, percentile, ratio, summarize
from bench.targets import evaluate, haproxy_reference

SCHEMA_VERSION = 1
STREAM_KEYS = {1: "one_stream", 8: "eight_streams"}
EXTRA_COMPONENTS = {paths.FULL_PATH: ("controlplane_east", "controlplane_west"),
                    paths.FULL_PATH_NO_AGENT: ("controlplane_east", "controlplane_west")}


def _select(runs: Iterable[RunRecord], section: str, path: str, streams: int | None = None) -> list[RunRecord]:
    return sorted((r for r in runs if r.section == section and r.path == path and r.streams == streams),
                  key=lambda r: r.repetition)


def _figure(records: list[RunRecord], key: str, digits: int = 3) -> dict[str, Any]:
    return summarize([r.figures.get(key) for r in records], digits)


def _vs(figures: Mapping[str, Any], base: Mapping[str, Any] | None, keys: Iterable[str]) -> dict[str, float | None]:
    return {k: ratio(median_of(figures.get(k)), median_of(base.get(k)) if base else None) for k in keys}


def throughput(runs: list[RunRecord]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for streams, name in STREAM_KEYS.items():
        section = {p: {"gbit_per_s": _figure(_select(runs, "throughput", p, streams), "gbit_per_s")}
                   for p in paths.THROUGHPUT_PATHS}
        for p, entry in section.items():
            entry["vs_direct"] = ratio(median_of(entry["gbit_per_s"]), median_of(section[paths.DIRECT]["gbit_per_s"]))
            entry["vs_haproxy_path"] = ratio(median_of(entry["gbit_per_s"]),
                                             median_of(section[paths.HAPROXY_PATH]["gbit_per_s"]))
        out[name] = section
    return out


UDP_DIGITS = {"mbit_per_s": 2, "sent_mbit_per_s": 2, "lost_percent": 3, "jitter_ms": 4}


def udp(runs: list[RunRecord]) -> dict[str, Any]:
    """iperf3 -u per UDP path: received and sent Mbit/s, loss (percent of the datagrams sent) and
    jitter; throughput / direct's, and the loss above direct's in percentage points (absolute)."""
    section = {p: {k: _figure(_select(runs, "udp", p), k, UDP_DIGITS[k]) for k in UDP_FIGURES} for p in paths.UDP_PATHS}
    direct = section[paths.DIRECT]
    for entry in section.values():
        entry["vs_direct"] = ratio(median_of(entry["mbit_per_s"]), median_of(direct["mbit_per_s"]))
        entry["added_lost_percent"] = difference(median_of(entry["lost_percent"]), median_of(direct["lost_percent"]),
                                                 3)
    return section


def connections(runs: list[RunRecord], name: str = "connections") -> dict[str, Any]:
    """The `connections` section, or with `name` the `parallel_connections` one (the same keys, plus
    what the parallel client really drove: `mean_in_flight` and `client_core_fraction`)."""
    keys = ("conns_per_s", "ttfb_p50_us", "ttfb_p99_us")
    section = {}
    for p in paths.REQUEST_PATHS:
        records = _select(runs, name, p)
        section[p] = {"conns_per_s": _figure(records, "conns_per_s", 1), "ttfb_p50_us": _figure(records, "ttfb_p50_us", 1),
                      "ttfb_p99_us": _figure(records, "ttfb_p99_us", 1),
                      "failed_exchanges": sum(int(r.client.get("errors", 0) or 0) for r in records)}
        if name == "parallel_connections":
            section[p]["mean_in_flight"] = summarize([r.client.get("mean_in_flight") for r in records], 2)
            section[p]["client_core_fraction"] = summarize([r.client.get("core_fraction") for r in records], 3)
    for p, entry in section.items():
        entry["vs_direct"] = _vs(entry, section[paths.DIRECT], keys)
        entry["vs_haproxy_path"] = _vs(entry, section[paths.HAPROXY_PATH], keys)
    return section


def latency(runs: list[RunRecord]) -> dict[str, Any]:
    keys = ("rtt_p50_us", "rtt_p99_us")
    section = {}
    for p in paths.REQUEST_PATHS:
        records = _select(runs, "latency", p)
        section[p] = {"rtt_p50_us": _figure(records, "rtt_p50_us", 1), "rtt_p99_us": _figure(records, "rtt_p99_us", 1)}
    direct = section[paths.DIRECT]
    for p, entry in section.items():
        entry["added_p50_us"] = difference(median_of(entry["rtt_p50_us"]), median_of(direct["rtt_p50_us"]))
        entry["added_p99_us"] = difference(median_of(entry["rtt_p99_us"]), median_of(direct["rtt_p99_us"]))
        entry["vs_direct"] = _vs(entry, direct, keys)
        entry["vs_haproxy_path"] = _vs(entry, section[paths.HAPROXY_PATH], keys)
    return section


def _cpu_per_unit(records: list[RunRecord], path: str, scale: float) -> dict[str, Any]:
    """CPU seconds of each of the path's components per (units / scale): per GB with scale 1e9 (units are
    bytes), per 1000 connections with scale 1000, microseconds per request with scale 1e6."""
    names = list(paths.PROXIES[path]) + list(EXTRA_COMPONENTS.get(path, ()))
    per: dict[str, list[float | None]] = {n: [] for n in (*names, "client", "server")}
    if paths.PROXIES[path]:
        per["proxies"] = []
    for r in records:
        if r.cpu is None or r.units <= 0:
            for values in per.values():
                values.append(None)
            continue
        units = r.units / scale
        for n in names:
            per[n].append(r.cpu.components.get(n, 0.0) / units)
        per["client"].append(r.cpu.client_cpu_s / units)
        per["server"].append(r.cpu.components.get("server", 0.0) / units)
        if "proxies" in per:
            per["proxies"].append(sum(r.cpu.components.get(n, 0.0) for n in paths.PROXIES[path]) / units)
    return {n: summarize(v, 3) for n, v in per.items()}


def cpu(runs: list[RunRecord], sections: Iterable[str]) -> dict[str, Any]:
    sections = set(sections)
    out: dict[str, Any] = {}
    if "throughput" in sections:
        out["cpu_s_per_gb"] = {name: {p: _cpu_per_unit(_select(runs, "throughput", p, streams), p, 1e9)
                                      for p in paths.THROUGHPUT_PATHS} for streams, name in STREAM_KEYS.items()}
    if "udp" in sections:
        out["cpu_s_per_gb_udp"] = {p: _cpu_per_unit(_select(runs, "udp", p), p, 1e9) for p in paths.UDP_PATHS}
    if "connections" in sections:
        out["cpu_s_per_1000_conns"] = {p: _cpu_per_unit(_select(runs, "connections", p), p, 1000.0)
                                       for p in paths.REQUEST_PATHS}
    if "parallel_connections" in sections:
        out["cpu_s_per_1000_parallel_conns"] = {p: _cpu_per_unit(_select(runs, "parallel_connections", p), p, 1000.0)
                                                for p in paths.REQUEST_PATHS}
    if "latency" in sections:
        out["cpu_us_per_request"] = {p: _cpu_per_unit(_select(runs, "latency", p), p, 1e6)
                                     for p in paths.REQUEST_PATHS}
    return out


def memory(runs: list[RunRecord], idle: list[dict[str, float]], idle_anon: list[dict[str, float]],
           after_load: Mapping[str, float]) -> dict[str, Any]:
    components = sorted({k for sample in idle for k in sample})
    reps = sorted({r.repetition for r in runs})
    rss: dict[str, Any] = {}
    for c in components:
        peaks = [max((r.peak_rss_mb.get(c, 0.0) for r in runs if r.repetition == rep), default=None) for rep in reps]
        rss[c] = {"idle": summarize([s.get(c) for s in idle], 1), "load": summarize(peaks, 1),
                  "after_load": after_load.get(c), "idle_anon": summarize([s.get(c) for s in idle_anon], 1)}
    return {"rss_mb": rss}


def policy(results: Mapping[int, list[dict[str, Any]]]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for size, reps in sorted(results.items()):
        entry: dict[str, Any] = {k: summarize([r[k] for r in reps], 3) for k in (
            "p50_us", "p99_us", "hit_p50_us", "hit_p99_us", "uncached_p50_us", "uncached_p99_us")}
        entry["build_ms"] = summarize([r["build_ms"] for r in reps], 1)
        entry["decisions"] = reps[0]["decisions"]
        entry["allowed_fraction"] = reps[0]["allowed_fraction"]
        out[str(size)] = entry
    return out


def failover(records: list[dict[str, Any]]) -> dict[str, Any]:
    """Per fault: recovery time over the repetitions (median/min/max, and p50/p99 of the runs) and
    the connections that failed, in all and among those that started after the fault."""
    out: dict[str, Any] = {}
    for fault in dict.fromkeys(r["fault"] for r in records):
        runs = [r for r in records if r["fault"] == fault]
        times = [r["recovery_ms"] for r in runs]
        out[fault] = {"recovery_ms": summarize(times, 1), "recovery_p50_ms": percentile(times, 50),
                      "recovery_p99_ms": percentile(times, 99), "failed_connections": sum(r["failed"] for r in runs),
                      "failed_after_fault": sum(r["failed_after_fault"] for r in runs), "runs": runs}
    return out


def noise(runs: list[RunRecord]) -> dict[str, Any]:
    return {"foreign_cpu_fraction": summarize([r.cpu.foreign_cpu_fraction if r.cpu else None for r in runs], 3),
            "busy_before_run_fraction": summarize([r.idle.busy_fraction for r in runs], 3),
            "idle_wait_timeouts": sum(1 for r in runs if r.idle.timed_out),
            "runs": [{"section": r.section, "path": r.path, "repetition": r.repetition, "streams": r.streams,
                      "busy_before": r.idle.busy_fraction, "idle_wait_s": r.idle.waited_s,
                      "idle_wait_timed_out": r.idle.timed_out,
                      "foreign_cpu_fraction": r.cpu.foreign_cpu_fraction if r.cpu else None,
                      "machine_busy_fraction": r.cpu.machine_busy_fraction if r.cpu else None} for r in runs]}


def raw_runs(runs: list[RunRecord]) -> list[dict[str, Any]]:
    return [{"section": r.section, "path": r.path, "repetition": r.repetition, "streams": r.streams, "ok": r.ok,
             "error": r.error, "figures": r.figures, "units": r.units,
             "wall_s": r.cpu.wall_s if r.cpu else None,
             "cpu_s": {**(r.cpu.components if r.cpu else {}), "client": r.cpu.client_cpu_s if r.cpu else None},
             "client": r.client} for r in runs]


def build(raw: Any, settings: Any, machine: Mapping[str, Any], *, started_at: str, finished_at: str,
          duration_s: float) -> dict[str, Any]:
    """The report. `raw` is a bench.suite.Raw, `settings` a bench.settings.Settings."""
    sections = set(settings.sections)
    runs: list[RunRecord] = raw.runs
    report: dict[str, Any] = {
        "schema_version": SCHEMA_VERSION, "mode": settings.mode, "started_at": started_at,
        "finished_at": finished_at, "duration_s": round(duration_s, 1), "setup_s": raw.setup_s,
        "settings": settings.as_dict(), "machine": dict(machine),
        "topology": dict(paths.DESCRIPTIONS) if settings.needs_fabric else {},
    }
    if "throughput" in sections:
        report["throughput"] = throughput(runs)
    if "udp" in sections:
        report["udp"] = udp(runs)
    if "connections" in sections:
        report["connections"] = connections(runs)
    if "parallel_connections" in sections:
        report["parallel_connections"] = connections(runs, "parallel_connections")
    if "latency" in sections:
        report["latency"] = latency(runs)
    if settings.needs_fabric:
        report["cpu"] = cpu(runs, sections)
        report["memory"] = memory(runs, raw.rss_idle, raw.rss_anon_idle, raw.rss_after_load)
        report["haproxy"] = {"version": raw.haproxy_version, "config": raw.haproxy_config,
                             "tls_sessions": {"full_handshakes": raw.haproxy_ssl.get("ssl_sess"),
                                              "resumed": raw.haproxy_ssl.get("ssl_reused_sess"),
                                              "failed": raw.haproxy_ssl.get("ssl_failed_handshake")}}
        report["tls"] = raw.tls
        report["noise"] = noise(runs)
        report["failures"] = [{"section": r.section, "path": r.path, "repetition": r.repetition,
                               "streams": r.streams, "error": r.error} for r in runs if not r.ok]
        report["runs"] = raw_runs(runs)
    if "failover" in sections:
        report["failover"] = failover(raw.failover)
    if "policy" in sections:
        report["policy"] = policy(raw.policy)
    report["targets"] = evaluate(report)
    report["haproxy_reference"] = haproxy_reference(report) if settings.needs_fabric else {}
    return report
