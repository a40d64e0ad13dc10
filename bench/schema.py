"""The documented keys of bench/results/latest.json (bench/README.md describes them) and a checker:
`problems(report)` lists every missing key and every insane value, so that a harness that rots (a key
renamed, a figure that stays empty) fails its smoke test. Pure.

Kinds: "figure" = {"median", "min", "max", "spread_pct", "runs"} with a number as median; "ratio" =
a number (None allowed only where a baseline is absent); "number", "text", "bool", "mapping".
"""

from __future__ import annotations

from typing import Any

from bench import paths
from bench.report import SCHEMA_VERSION, STREAM_KEYS
from bench.records import UDP_FIGURES
from bench.settings import FABRIC_SECTIONS
from fabric.faults import FAULTS

FIGURE_KEYS = ("median", "min", "max", "spread_pct", "runs")
MACHINE_KEYS = ("cores", "cpu_model", "kernel", "mem_total_gb", "python", "python_openssl", "haproxy", "iperf3",
                "project")
TARGET_IDS = ("throughput_one_stream", "throughput_eight_streams", "conns_per_s", "parallel_conns_per_s", "ttfb_p99",
              "added_latency_p50", "added_latency_p99", "cpu_per_gb", "agent_hop", "policy_p99", "failover_recovery",
              "failover_no_failures", "agent_idle_rss")
MEMORY_COMPONENTS = ("agent", "controlplane", "gateway_east", "gateway_west", "haproxy_a", "haproxy_b")
POLICY_KEYS = ("p50_us", "p99_us", "hit_p50_us", "hit_p99_us", "uncached_p50_us", "uncached_p99_us", "build_ms")


def _cpu_components(path: str) -> list[str]:
    names = list(paths.PROXIES[path]) + ["client", "server"]
    if paths.PROXIES[path]:
        names.append("proxies")
    return names


def expected_keys(sections: list[str] | tuple[str, ...]) -> list[tuple[tuple[str, ...], str]]:
    """(key path, kind) of every documented key a report of these sections holds."""
    out: list[tuple[tuple[str, ...], str]] = [
        (("schema_version",), "number"), (("mode",), "text"), (("started_at",), "text"), (("finished_at",), "text"),
        (("duration_s",), "number"), (("settings",), "mapping"), (("targets",), "list"),
    ]
    out += [(("machine", k), "any") for k in MACHINE_KEYS]
    fabric = any(s in sections for s in FABRIC_SECTIONS)
    if "throughput" in sections:
        for streams in STREAM_KEYS.values():
            for p in paths.THROUGHPUT_PATHS:
                out += [(("throughput", streams, p, "gbit_per_s"), "figure"),
                        (("throughput", streams, p, "vs_direct"), "ratio"),
                        (("throughput", streams, p, "vs_haproxy_path"), "ratio")]
                out += [(("cpu", "cpu_s_per_gb", streams, p, c), "figure") for c in _cpu_components(p)]
    if "udp" in sections:
        for p in paths.UDP_PATHS:
            out += [(("udp", p, k), "figure") for k in UDP_FIGURES]
            out += [(("udp", p, "vs_direct"), "ratio"), (("udp", p, "added_lost_percent"), "number")]
            out += [(("cpu", "cpu_s_per_gb_udp", p, c), "figure") for c in _cpu_components(p)]
    if "connections" in sections:
        for p in paths.REQUEST_PATHS:
            for k in ("conns_per_s", "ttfb_p50_us", "ttfb_p99_us"):
                out += [(("connections", p, k), "figure"), (("connections", p, "vs_direct", k), "ratio"),
                        (("connections", p, "vs_haproxy_path", k), "ratio")]
            out.append((("connections", p, "failed_exchanges"), "number"))
            out += [(("cpu", "cpu_s_per_1000_conns", p, c), "figure") for c in _cpu_components(p)]
    if "parallel_connections" in sections:
        for p in paths.REQUEST_PATHS:
            for k in ("conns_per_s", "ttfb_p50_us", "ttfb_p99_us"):
                out += [(("parallel_connections", p, k), "figure"),
                        (("parallel_connections", p, "vs_direct", k), "ratio"),
                        (("parallel_connections", p, "vs_haproxy_path", k), "ratio")]
            out += [(("parallel_connections", p, "failed_exchanges"), "number"),
                    (("parallel_connections", p, "mean_in_flight"), "figure"),
                    (("parallel_connections", p, "client_core_fraction"), "figure")]
            out += [(("cpu", "cpu_s_per_1000_parallel_conns", p, c), "figure") for c in _cpu_components(p)]
    if "latency" in sections:
        for p in paths.REQUEST_PATHS:
            for k in ("rtt_p50_us", "rtt_p99_us"):
                out += [(("latency", p, k), "figure"), (("latency", p, "vs_direct", k), "ratio"),
                        (("latency", p, "vs_haproxy_path", k), "ratio")]
            out += [(("latency", p, "added_p50_us"), "number"), (("latency", p, "added_p99_us"), "number")]
            out += [(("cpu", "cpu_us_per_request", p, c), "figure") for c in _cpu_components(p)]
    if fabric:
        for c in MEMORY_COMPONENTS:
            out += [(("memory", "rss_mb", c, "idle"), "figure"), (("memory", "rss_mb", c, "load"), "figure"),
                    (("memory", "rss_mb", c, "idle_anon"), "figure")]
        out += [(("haproxy", "version", "version"), "text"), (("haproxy", "config", "a"), "text"),
                (("haproxy", "config", "b"), "text"), (("haproxy", "tls_sessions", "full_handshakes"), "number"),
                (("haproxy", "tls_sessions", "resumed"), "number"), (("tls", "gateway", "cipher"), "text"),
                (("tls", "haproxy", "cipher"), "text"), (("noise", "foreign_cpu_fraction"), "figure"),
                (("noise", "idle_wait_timeouts"), "number"), (("topology",), "mapping"), (("failures",), "list"),
                (("runs",), "list"), (("haproxy_reference",), "mapping")]
    if "failover" in sections:
        for fault in FAULTS:
            out += [(("failover", fault, "recovery_ms"), "figure"), (("failover", fault, "recovery_p50_ms"), "number"),
                    (("failover", fault, "recovery_p99_ms"), "number"),
                    (("failover", fault, "failed_connections"), "number"),
                    (("failover", fault, "failed_after_fault"), "number"), (("failover", fault, "runs"), "list")]
    if "policy" in sections:
        for size in ("10", "1000", "10000"):
            out += [(("policy", size, k), "figure") for k in POLICY_KEYS]
    return out


def _lookup(report: Any, keys: tuple[str, ...]) -> tuple[bool, Any]:
    node = report
    for key in keys:
        if not isinstance(node, dict) or key not in node:
            return False, None
        node = node[key]
    return True, node


def _is_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def _kind_problem(value: Any, kind: str) -> str:
    if kind == "figure":
        if not isinstance(value, dict) or any(k not in value for k in FIGURE_KEYS):
            return f"is not a figure {{{', '.join(FIGURE_KEYS)}}}"
        if not _is_number(value["median"]):
            return f"has no median (runs {value['runs']})"
        if not value["min"] <= value["median"] <= value["max"]:
            return f"is not ordered: min {value['min']} median {value['median']} max {value['max']}"
        return ""
    if kind in ("ratio", "number"):
        return "" if _is_number(value) else f"is not a number ({value!r})"
    if kind == "text":
        return "" if isinstance(value, str) and value else f"is not a non-empty text ({value!r})"
    if kind == "mapping":
        return "" if isinstance(value, dict) else "is not a mapping"
    if kind == "list":
        return "" if isinstance(value, list) else "is not a list"
    return ""


def _median(report: dict[str, Any], *keys: str) -> float | None:
    found, node = _lookup(report, keys)
    return node.get("median") if found and isinstance(node, dict) else None


def _sanity(report: dict[str, Any], sections: list[str]) -> list[str]:
    out = []

    def positive(*keys: str) -> None:
        value = _median(report, *keys)
        if value is not None and value <= 0:
            out.append(f"{'.'.join(keys)}: median {value} is not positive")

    def ordered(low: tuple[str, ...], high: tuple[str, ...]) -> None:
        a, b = _median(report, *low), _median(report, *high)
        if a is not None and b is not None and a > b:
            out.append(f"{'.'.join(low)} ({a}) is above {'.'.join(high)} ({b})")

    if "throughput" in sections:
        for streams in STREAM_KEYS.values():
            for p in paths.THROUGHPUT_PATHS:
                positive("throughput", streams, p, "gbit_per_s")
            for p in paths.THROUGHPUT_PATHS:
                if paths.PROXIES[p]:
                    positive("cpu", "cpu_s_per_gb", streams, p, "proxies")
    if "udp" in sections:
        for p in paths.UDP_PATHS:
            positive("udp", p, "mbit_per_s")
            positive("udp", p, "sent_mbit_per_s")
            if paths.PROXIES[p]:
                positive("cpu", "cpu_s_per_gb_udp", p, "proxies")
            for key in ("lost_percent", "jitter_ms"):
                value = _median(report, "udp", p, key)
                if value is not None and not 0 <= value <= (100 if key == "lost_percent" else 10_000):
                    out.append(f"udp.{p}.{key}: median {value} is out of range")
    if "connections" in sections:
        for p in paths.REQUEST_PATHS:
            positive("connections", p, "conns_per_s")
            positive("connections", p, "ttfb_p50_us")
            ordered(("connections", p, "ttfb_p50_us"), ("connections", p, "ttfb_p99_us"))
    if "parallel_connections" in sections:
        for p in paths.REQUEST_PATHS:
            positive("parallel_connections", p, "conns_per_s")
            positive("parallel_connections", p, "ttfb_p50_us")
            positive("parallel_connections", p, "mean_in_flight")
            ordered(("parallel_connections", p, "ttfb_p50_us"), ("parallel_connections", p, "ttfb_p99_us"))
    if "latency" in sections:
        for p in paths.REQUEST_PATHS:
            positive("latency", p, "rtt_p50_us")
            ordered(("latency", p, "rtt_p50_us"), ("latency", p, "rtt_p99_us"))
    if "policy" in sections:
        for size in ("10", "1000", "10000"):
            positive("policy", size, "p50_us")
            ordered(("policy", size, "p50_us"), ("policy", size, "p99_us"))
    if any(s in sections for s in FABRIC_SECTIONS):
        for c in MEMORY_COMPONENTS:
            positive("memory", "rss_mb", c, "idle")
        tls = report.get("tls", {})
        if tls.get("gateway", {}).get("version") != "TLSv1.3" or tls.get("haproxy", {}).get("version") != "TLSv1.3":
            out.append(f"tls: both pairs must negotiate TLSv1.3, got {tls}")
    return out


def problems(report: dict[str, Any]) -> list[str]:
    """Every missing key, wrong kind and insane value of a report; empty when it is as documented."""
    if report.get("schema_version") != SCHEMA_VERSION:
        return [f"schema_version is {report.get('schema_version')!r}, expected {SCHEMA_VERSION}"]
    sections = list(report.get("settings", {}).get("sections", []))
    out = []
    for keys, kind in expected_keys(sections):
        found, value = _lookup(report, keys)
        if not found:
            out.append(f"{'.'.join(keys)}: missing")
            continue
        problem = _kind_problem(value, kind)
        if problem:
            out.append(f"{'.'.join(keys)} {problem}")
    ids = [t.get("id") for t in report.get("targets", [])]
    if ids != list(TARGET_IDS):
        out.append(f"targets are {ids}, expected {list(TARGET_IDS)}")
    return out + _sanity(report, sections)
