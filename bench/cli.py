"""`python -m bench` (`make bench`): run the benchmark, write bench/results/latest.json, print the table.

Exit status: 0 when the report has every documented key with sane values (bench.schema), 1 when it
does not (the report is written anyway, with "schema_problems"), 2 on bad usage or without root.
"""

from __future__ import annotations

import argparse
import dataclasses
import datetime
import json
import logging
import os
import signal
import sys
import time
from pathlib import Path
from types import FrameType

from bench import machine, report, schema, suite, table
from bench.settings import SECTIONS, Settings, preset

DEFAULT_OUTPUT = Path(__file__).resolve().parent / "results" / "latest.json"


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m bench", description="ClusterLink benchmark on the simulated fabric "
                                "(TCP and UDP throughput, connections, latency, CPU, memory, policy), with direct "
                                "paths and a HAProxy mTLS pair measured in the same run. See bench/README.md.")
    mode = p.add_mutually_exclusive_group()
    mode.add_argument("--quick", action="store_true", help="1 repetition, 2 s iperf3, 300 connections")
    mode.add_argument("--smoke", action="store_true", help="tiny counts, for the smoke test (under a minute)")
    p.add_argument("--only", help=f"comma-separated sections to run ({', '.join(SECTIONS)}); default all")
    p.add_argument("--repetitions", type=int, help="repetitions of every measurement (default 3)")
    p.add_argument("--iperf-seconds", type=int, help="duration of each iperf3 run, TCP and UDP (default 10)")
    p.add_argument("--udp-mbit-per-s", type=int, help="rate iperf3 -u offers in the udp section, Mbit/s "
                   "(default 200; quick 100, smoke 20)")
    p.add_argument("--udp-datagram-bytes", type=int, help="UDP payload per datagram (default 1200)")
    p.add_argument("--connections", type=int, help="connections per connection run (default 3000)")
    p.add_argument("--parallel-connections", type=int,
                   help="connections per parallel connection run (default 6000)")
    p.add_argument("--parallel-clients", type=int, help="connections open at once in a parallel run (default 32)")
    p.add_argument("--pings", type=int, help="ping-pongs per latency run (default 10000)")
    p.add_argument("--threads", type=int, help="gateway workers and HAProxy nbthread (default 1)")
    p.add_argument("--output", type=Path, default=DEFAULT_OUTPUT, help=f"report path (default {DEFAULT_OUTPUT})")
    p.add_argument("--keep-logs", type=Path, metavar="DIR", help="copy every process log of the fabric here")
    p.add_argument("--quiet", action="store_true", help="no progress lines")
    return p


def settings_from(args: argparse.Namespace) -> Settings:
    base = preset("smoke" if args.smoke else "quick" if args.quick else "full")
    overrides: dict[str, object] = {}
    for flag, field in (("repetitions", "repetitions"), ("iperf_seconds", "iperf_seconds"),
                        ("udp_mbit_per_s", "udp_mbit_per_s"), ("udp_datagram_bytes", "udp_datagram_bytes"),
                        ("connections", "connections"), ("parallel_connections", "parallel_connections"),
                        ("parallel_clients", "parallel_clients"), ("pings", "pings"), ("threads", "threads")):
        value = getattr(args, flag)
        if value is not None:
            overrides[field] = value
    if args.only:
        overrides["sections"] = tuple(s.strip() for s in args.only.split(",") if s.strip())
    return dataclasses.replace(base, **overrides)


def _now() -> str:
    return datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds")


def _on_sigterm(signum: int, frame: FrameType | None) -> None:
    raise KeyboardInterrupt(f"signal {signum}")  # unwinds through the fabric's clean-up like Ctrl-C


def write_report(data: dict, path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(path.suffix + ".tmp")
    tmp.write_text(json.dumps(data, indent=1, sort_keys=False) + "\n")
    os.replace(tmp, path)


def main(argv: list[str] | None = None) -> int:
    parser = _parser()
    args = parser.parse_args(argv)
    try:
        settings = settings_from(args)
    except ValueError as exc:
        parser.error(str(exc))
    if settings.needs_fabric and os.geteuid() != 0:
        print("the benchmark needs root for the simulated fabric (network namespaces, cgroups, BPF); "
              "run it as root, or with --only policy", file=sys.stderr)
        return 2
    logging.basicConfig(level=logging.WARNING, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    signal.signal(signal.SIGTERM, _on_sigterm)
    signal.signal(signal.SIGINT, signal.default_int_handler)  # also when started with SIGINT ignored

    def progress(text: str) -> None:
        if not args.quiet:
            print(text, file=sys.stderr, flush=True)

    started_at, t0 = _now(), time.monotonic()
    progress(f"bench: mode {settings.mode}, sections {', '.join(settings.sections)}, "
             f"{settings.repetitions} repetition(s); report -> {args.output}")
    try:
        raw = suite.run(settings, progress, keep_logs=args.keep_logs)
    except KeyboardInterrupt:
        print("bench: interrupted; the fabric was torn down", file=sys.stderr)
        return 130
    haproxy = raw.haproxy_version or None
    data = report.build(raw, settings, machine.describe(haproxy), started_at=started_at, finished_at=_now(),
                        duration_s=time.monotonic() - t0)
    found = schema.problems(data)
    data["schema_problems"] = found
    write_report(data, args.output)
    print(table.render(data))
    print(f"\nreport: {args.output}")
    if found:
        print("the report is incomplete:\n  " + "\n  ".join(found), file=sys.stderr)
        return 1
    return 0
