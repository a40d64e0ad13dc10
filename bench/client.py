"""The bounded request/response client, run inside a pod: `python -m bench.client {conn,ping} ...`.

  conn  sequential new connections: connect, send a message, read the echo, close. Time to first
        byte (TTFB) runs from the start of connect() to the first byte of the answer.
  ping  one connection, then sequential ping-pongs of a message: the round-trip time of each.

Every answer is checked byte for byte. The loop stops after --count (plus --warmup, not in the
figures) or after --max-seconds, whichever comes first, and prints one JSON object:
{"mode", "requested", "completed", "warmup", "elapsed_s", "per_s", "p50_us", "p99_us", "mean_us",
"max_us", "errors", "first_error", "truncated"}. TCP_NODELAY everywhere, as the proxies set it.
Exit status 0 when at least one timed exchange worked, 1 otherwise.
"""

from __future__ import annotations

import argparse
import json
import os
import socket
import sys
import time

from bench.stats import sample_summary

MAX_ERRORS = 50  # a path that keeps failing is reported, not hammered


class Mismatch(Exception):
    """The answer was not the echo of the request."""


def _recv_exact(sock: socket.socket, n: int) -> tuple[bytes, int]:
    """n bytes, and the perf_counter_ns when the first one arrived."""
    first = 0
    buf = bytearray()
    while len(buf) < n:
        chunk = sock.recv(n - len(buf))
        if not chunk:
            raise ConnectionError(f"connection closed after {len(buf)} of {n} bytes")
        if not first:
            first = time.perf_counter_ns()
        buf += chunk
    return bytes(buf), first


def _one_connection(host: str, port: int, message: bytes, timeout: float) -> float:
    """One connect/request/echo/close; TTFB in microseconds."""
    start = time.perf_counter_ns()
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    try:
        sock.settimeout(timeout)
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        sock.connect((host, port))
        sock.sendall(message)
        answer, first = _recv_exact(sock, len(message))
    finally:
        sock.close()
    if answer != message:
        raise Mismatch(f"echo differs from the request ({answer[:16]!r}...)")
    return (first - start) / 1000.0


def run_conn(args: argparse.Namespace) -> dict[str, object]:
    message = os.urandom(args.size)
    samples: list[float] = []
    errors, first_error = 0, ""
    deadline = time.monotonic() + args.max_seconds
    total = args.warmup + args.count
    timed_start = time.perf_counter()
    done, stopped = 0, False
    for i in range(total):
        if time.monotonic() > deadline or errors >= MAX_ERRORS:
            stopped = True
            break
        if i == args.warmup:
            timed_start = time.perf_counter()
        try:
            ttfb = _one_connection(args.host, args.port, message, args.timeout)
        except (OSError, Mismatch) as exc:
            errors += 1
            first_error = first_error or f"{type(exc).__name__}: {exc}"
            continue
        finally:
            done += 1
        if i >= args.warmup:
            samples.append(ttfb)
    elapsed = time.perf_counter() - timed_start
    return _result("conn", args, samples, elapsed, errors, first_error, attempted=done, truncated=stopped)


def run_ping(args: argparse.Namespace) -> dict[str, object]:
    message = os.urandom(args.size)
    samples: list[float] = []
    errors, first_error = 0, ""
    deadline = time.monotonic() + args.max_seconds
    elapsed, stopped = 0.0, False
    try:
        sock = socket.create_connection((args.host, args.port), timeout=args.timeout)
    except OSError as exc:
        return _result("ping", args, [], 0.0, 1, f"{type(exc).__name__}: {exc}", attempted=0, truncated=True)
    with sock:
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        timed_start = time.perf_counter()
        try:
            for i in range(args.warmup + args.count):
                if time.monotonic() > deadline:
                    stopped = True
                    break
                if i == args.warmup:
                    timed_start = time.perf_counter()
                start = time.perf_counter_ns()
                sock.sendall(message)
                answer, _ = _recv_exact(sock, len(message))
                end = time.perf_counter_ns()
                if answer != message:
                    raise Mismatch(f"echo differs from the request ({answer[:16]!r}...)")
                if i >= args.warmup:
                    samples.append((end - start) / 1000.0)
        except (OSError, Mismatch) as exc:  # the connection is gone: report what was measured
            errors, first_error, stopped = 1, f"{type(exc).__name__}: {exc}", True
        elapsed = time.perf_counter() - timed_start
    return _result("ping", args, samples, elapsed, errors, first_error, attempted=args.warmup + len(samples),
                   truncated=stopped)


def _result(mode: str, args: argparse.Namespace, samples: list[float], elapsed: float, errors: int,
            first_error: str, *, attempted: int, truncated: bool) -> dict[str, object]:
    out: dict[str, object] = {"mode": mode, "requested": args.count, "completed": len(samples),
                              "warmup": args.warmup, "attempted": attempted, "elapsed_s": round(elapsed, 4),
                              "per_s": round(len(samples) / elapsed, 1) if elapsed > 0 and samples else 0.0,
                              "errors": errors, "first_error": first_error,
                              "truncated": truncated}
    if samples:
        out.update({f"{k}_us": round(v, 1) for k, v in sample_summary(samples).items()})
    else:
        out.update({"p50_us": None, "p99_us": None, "mean_us": None, "max_us": None})
    return out


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m bench.client", description=__doc__.splitlines()[0])
    parser.add_argument("mode", choices=("conn", "ping"))
    parser.add_argument("--host", required=True)
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--count", type=int, required=True)
    parser.add_argument("--warmup", type=int, default=0)
    parser.add_argument("--size", type=int, default=64)
    parser.add_argument("--timeout", type=float, default=5.0, help="per socket operation, seconds")
    parser.add_argument("--max-seconds", type=float, default=60.0, help="bound of the whole loop")
    return parser


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    if not 1 <= args.count <= 1_000_000 or not 0 <= args.warmup <= 10_000 or not 1 <= args.size <= 65536:
        print("count must be in 1..1000000, warmup in 0..10000, size in 1..65536", file=sys.stderr)
        return 2
    result = run_conn(args) if args.mode == "conn" else run_ping(args)
    print(json.dumps(result), flush=True)
    return 0 if result["completed"] else 1


if __name__ == "__main__":
    sys.exit(main())
