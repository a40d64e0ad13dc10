"""The product's performance targets (issue #5) evaluated on a report (pure), and the comparison of our
HAProxy pair with the one measured in shared/notes/haproxy-baseline.md (is the method reproduced?).

A target whose figures are missing (section not run, failed runs) has "met": None.
"""

from __future__ import annotations

import operator
from collections.abc import Callable
from typing import Any

from bench.stats import median_of, ratio

_OPS: dict[str, Callable[[float, float], bool]] = {">=": operator.ge, "<=": operator.le, "<": operator.lt}

# haproxy-baseline.md, HAProxy pair with nbthread 1 (the main column), medians.
HAPROXY_NOTE = {
    "throughput_one_stream_gbit_per_s": 5.53,
    "throughput_eight_streams_gbit_per_s": 5.73,
    "conns_per_s": 614.0,
    "ttfb_p50_us": 1581.0,
    "ttfb_p99_us": 2027.0,
    "added_rtt_p50_us": 72.0,
    "cpu_s_per_gb_one_stream": 1.91,
    "cpu_s_per_1000_conns": 1.61,
}


def _get(report: dict[str, Any], *keys: str) -> Any:
    node: Any = report
    for key in keys:
        if not isinstance(node, dict) or key not in node:
            return None
        node = node[key]
    return node


def _m(report: dict[str, Any], *keys: str) -> float | None:
    return median_of(_get(report, *keys))


def _target(id_: str, text: str, value: float | None, op: str, limit: float | None, unit: str,
            detail: str = "") -> dict[str, Any]:
    met = None if value is None or limit is None else _OPS[op](value, limit)
    return {"id": id_, "text": text, "value": value, "comparison": op, "limit": limit, "unit": unit, "met": met,
            "detail": detail}


def evaluate(report: dict[str, Any]) -> list[dict[str, Any]]:
    out = []
    for streams in ("one_stream", "eight_streams"):
        full = _m(report, "throughput", streams, "full_path", "gbit_per_s")
        hap = _m(report, "throughput", streams, "haproxy_path", "gbit_per_s")
        out.append(_target(f"throughput_{streams}", f"full_path bulk throughput ({streams.replace('_', ' ')}) at or "
                           f"above haproxy_path", ratio(full, hap), ">=", 1.0, "x haproxy_path",
                           f"full_path {full} vs haproxy_path {hap} Gbit/s"))
    full = _m(report, "connections", "full_path", "conns_per_s")
    hap = _m(report, "connections", "haproxy_path", "conns_per_s")
    out.append(_target("conns_per_s", "full_path new connections/s at least twice haproxy_path", ratio(full, hap),
                       ">=", 2.0, "x haproxy_path", f"full_path {full} vs haproxy_path {hap} conn/s"))
    full = _m(report, "parallel_connections", "full_path", "conns_per_s")
    hap = _m(report, "parallel_connections", "haproxy_path", "conns_per_s")
    out.append(_target("parallel_conns_per_s", "full_path new connections/s in parallel at least 3x haproxy_path",
                       ratio(full, hap), ">=", 3.0, "x haproxy_path", f"full_path {full} vs haproxy_path {hap} conn/s"))
    full = _m(report, "connections", "full_path", "ttfb_p99_us")
    hap = _m(report, "connections", "haproxy_path", "ttfb_p99_us")
    out.append(_target("ttfb_p99", "full_path time to first byte p99 at most half of haproxy_path's",
                       ratio(full, hap), "<=", 0.5, "x haproxy_path", f"full_path {full} vs haproxy_path {hap} us"))
    for q in ("p50", "p99"):
        full = _get(report, "latency", "full_path", f"added_{q}_us")
        hap = _get(report, "latency", "haproxy_path", f"added_{q}_us")
        out.append(_target(f"added_latency_{q}", f"full_path added request latency ({q}, over direct) no worse than "
                           f"haproxy_path's", full, "<=", hap, "us", f"full_path +{full} vs haproxy_path +{hap} us"))
    full = _m(report, "cpu", "cpu_s_per_gb", "one_stream", "full_path", "proxies")
    hap = _m(report, "cpu", "cpu_s_per_gb", "one_stream", "haproxy_path", "proxies")
    out.append(_target("cpu_per_gb", "full_path proxies' CPU per GB (one stream) no worse than the HAProxy pair's",
                       full, "<=", hap, "cpu_s_per_gb", f"agent + both gateways {full} vs HAProxy A + B {hap}"))
    hop = _m(report, "throughput", "one_stream", "agent_hop", "gbit_per_s")
    direct = _m(report, "throughput", "one_stream", "direct", "gbit_per_s")
    out.append(_target("agent_hop", "agent_hop throughput (one stream) at least 0.6 of direct", ratio(hop, direct),
                       ">=", 0.6, "x direct", f"agent_hop {hop} vs direct {direct} Gbit/s"))
    p99 = _m(report, "policy", "10000", "p99_us")
    out.append(_target("policy_p99", "policy decision p99 under 20 us at 10,000 policies (cache miss)", p99, "<",
                       20.0, "us"))
    worst = [_get(report, "failover", f, "recovery_p99_ms") for f in ("kill", "freeze", "partition")]
    known = [w for w in worst if w is not None]
    value = max(known) if len(known) == 3 else None
    out.append(_target("failover_recovery", "failover: every new connection succeeds again within 1 s of a peer "
                       "gateway's kill, freeze or partition (p99 over repetitions, worst fault)", value, "<", 1000.0,
                       "ms", ", ".join(f"{f} p99 {w} ms" for f, w in zip(("kill", "freeze", "partition"), worst))))
    failed = [_get(report, "failover", f, "failed_after_fault") for f in ("kill", "freeze", "partition")]
    total = sum(failed) if all(f is not None for f in failed) else None
    out.append(_target("failover_no_failures", "failover: no connection that started after the fault fails",
                       total, "<=", 0, "connections", ", ".join(f"{f} {n}" for f, n in zip(
                           ("kill", "freeze", "partition"), failed))))
    rss = _m(report, "memory", "rss_mb", "agent", "idle")
    out.append(_target("agent_idle_rss", "agent idle RSS under 40 MB", rss, "<", 40.0, "MB"))
    return out


def haproxy_reference(report: dict[str, Any]) -> dict[str, Any]:
    """Our haproxy_path next to the note's HAProxy pair (measured on loopback; ours crosses veths)."""
    measured = {
        "throughput_one_stream_gbit_per_s": _m(report, "throughput", "one_stream", "haproxy_path", "gbit_per_s"),
        "throughput_eight_streams_gbit_per_s": _m(report, "throughput", "eight_streams", "haproxy_path", "gbit_per_s"),
        "conns_per_s": _m(report, "connections", "haproxy_path", "conns_per_s"),
        "ttfb_p50_us": _m(report, "connections", "haproxy_path", "ttfb_p50_us"),
        "ttfb_p99_us": _m(report, "connections", "haproxy_path", "ttfb_p99_us"),
        "added_rtt_p50_us": _get(report, "latency", "haproxy_path", "added_p50_us"),
        "cpu_s_per_gb_one_stream": _m(report, "cpu", "cpu_s_per_gb", "one_stream", "haproxy_path", "proxies"),
        "cpu_s_per_1000_conns": _m(report, "cpu", "cpu_s_per_1000_conns", "haproxy_path", "proxies"),
    }
    return {k: {"note": HAPROXY_NOTE[k], "measured": v, "ratio": ratio(v, HAPROXY_NOTE[k])} for k, v in measured.items()}
