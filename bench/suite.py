"""The benchmark's sections, in one run: every repetition measures every path of a section in turn
(the order rotates between repetitions), so each figure and its baselines share the same moment of
a shared, noisy machine. The failover section then builds a fabric of its own (three peers:
`bench.failover`); policy decision time runs last, after the fabrics are gone.

Returns the raw material of the report (`Raw`); `bench.report` turns it into figures.
"""

from __future__ import annotations

import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from bench import paths
from bench.records import RunRecord
from bench.runs import Runner
from bench.sampling import rss_now_mb, wait_idle
from bench.settings import Settings
from bench.world import World

IDLE_RSS_SAMPLES = 3
STREAMS = (1, 8)

Progress = Callable[[str], None]


@dataclass
class Raw:
    runs: list[RunRecord] = field(default_factory=list)
    rss_idle: list[dict[str, float]] = field(default_factory=list)       # before any load
    rss_anon_idle: list[dict[str, float]] = field(default_factory=list)  # the same, anonymous memory only
    rss_after_load: dict[str, float] = field(default_factory=dict)       # at the end, quiescent
    policy: dict[int, list[dict]] = field(default_factory=dict)          # size -> measure_decision_time per rep
    failover: list[dict] = field(default_factory=list)                   # bench.failover.run_failover's records
    tls: dict[str, object] = field(default_factory=dict)
    haproxy_config: dict[str, str] = field(default_factory=dict)
    haproxy_ssl: dict[str, int] = field(default_factory=dict)            # during the benchmark (after - before)
    haproxy_version: dict[str, str] = field(default_factory=dict)
    setup_s: float = 0.0


def rotated(items: Sequence[str], rep: int) -> list[str]:
    k = rep % len(items)
    return list(items[k:]) + list(items[:k])


def _say(progress: Progress, record: RunRecord, total_reps: int) -> None:
    what = f"{record.section}{f' {record.streams} stream(s)' if record.streams else ''}"
    figures = ", ".join(f"{k}={v}" for k, v in record.figures.items())
    noise = (f"busy before {record.idle.busy_fraction:.0%}"
             + (f", foreign {record.cpu.foreign_cpu_fraction:.0%}" if record.cpu else ""))
    status = "" if record.ok else f"  FAILED: {record.error}"
    progress(f"[{record.repetition + 1}/{total_reps}] {what:<24} {record.path:<19} {figures} ({noise}){status}")


def run_fabric_sections(settings: Settings, raw: Raw, progress: Progress, keep_logs: Path | None) -> None:
    with World(threads=settings.threads, keep_logs=keep_logs) as world:
        start = time.monotonic()
        try:
            world.start()
        except Exception:
            print("set-up failed; process logs:\n" + world.logs(), file=sys.stderr)
            raise
        raw.setup_s = round(time.monotonic() - start, 1)
        assert world.haproxy is not None
        progress(f"fabric {world.fab.topology.prefix} ready in {raw.setup_s} s")
        raw.tls = world.tls_probe()
        raw.haproxy_config = {"a": world.haproxy.config_a, "b": world.haproxy.config_b}
        raw.haproxy_version = world.haproxy_version()
        runner = Runner(world, settings, world.fab.topology.cgroup)
        try:
            _measure(settings, world, runner, raw, progress)
        except Exception:
            print("the benchmark failed; process logs:\n" + world.logs(), file=sys.stderr)
            raise


def _measure(settings: Settings, world: World, runner: Runner, raw: Raw, progress: Progress) -> None:
    assert world.haproxy is not None
    wait_idle(settings.idle_busy_fraction, settings.idle_max_wait_s)
    for _ in range(IDLE_RSS_SAMPLES):
        raw.rss_idle.append(rss_now_mb(world.memory_components()))
        raw.rss_anon_idle.append(rss_now_mb(world.memory_components(), "RssAnon"))
        time.sleep(0.5)
    if "udp" in settings.sections:
        for path in paths.UDP_PATHS:
            runner.wait_udp(path)
    ssl_before = world.haproxy.ssl_counters()
    reps = settings.repetitions
    for rep in range(reps):
        if "throughput" in settings.sections:
            for streams in STREAMS:
                for path in rotated(paths.THROUGHPUT_PATHS, rep):
                    record = runner.throughput(path, streams, rep)
                    raw.runs.append(record)
                    _say(progress, record, reps)
        if "udp" in settings.sections:
            for path in rotated(paths.UDP_PATHS, rep):
                record = runner.udp(path, rep)
                raw.runs.append(record)
                _say(progress, record, reps)
        for section in ("connections", "parallel_connections", "latency"):
            if section in settings.sections:
                for path in rotated(paths.REQUEST_PATHS, rep):
                    record = runner.requests(section, path, rep)
                    raw.runs.append(record)
                    _say(progress, record, reps)
    ssl_after = world.haproxy.ssl_counters()
    raw.haproxy_ssl = {k: ssl_after[k] - ssl_before[k] for k in ssl_after}
    wait_idle(settings.idle_busy_fraction, settings.idle_max_wait_s)
    raw.rss_after_load = rss_now_mb(world.memory_components())


def run_policy(settings: Settings, raw: Raw, progress: Progress) -> None:
    from controlplane.policy.benchmark import measure_decision_time

    for rep in range(settings.repetitions):
        for size in settings.policy_sizes:
            wait_idle(settings.idle_busy_fraction, settings.idle_max_wait_s)
            result = measure_decision_time(size, decisions=settings.policy_decisions, seed=rep)
            raw.policy.setdefault(size, []).append(result)
            progress(f"[{rep + 1}/{settings.repetitions}] policy {size:>6} policies: p50 {result['p50_us']} us, "
                     f"p99 {result['p99_us']} us (cache miss); hit p99 {result['hit_p99_us']} us")


def run(settings: Settings, progress: Progress, *, keep_logs: Path | None = None) -> Raw:
    raw = Raw()
    if settings.needs_fabric:
        run_fabric_sections(settings, raw, progress, keep_logs)
    if "failover" in settings.sections:
        from bench.failover import run_failover  # noqa: PLC0415 - only this section needs the fault tools

        wait_idle(settings.idle_busy_fraction, settings.idle_max_wait_s)
        raw.failover = run_failover(settings, progress)
    if "policy" in settings.sections:
        run_policy(settings, raw, progress)
    return raw
