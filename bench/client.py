"""The bounded request/response client, run inside a pod: `python -m bench.client {conn,pconn,ping} ...`.

  conn   sequential new connections: connect, send a message, read the echo, close. Time to first
         byte (TTFB) runs from the start of connect() to the first byte of the answer.
  pconn  the same exchange on --concurrency connections at once (default 32): one process, one
         epoll loop of non-blocking sockets, a new connection started as soon as one ends. The rate
         is over the window from the first timed connection's start to the last one's end
         (bench.stats.parallel_window); the JSON adds "concurrency", "window_s", "mean_in_flight",
         "max_in_flight" (the parallelism really driven), "loop_s", "cpu_s" and "core_fraction"
         (this process's CPU over its loop: 1.0 means the client saturates a core).
  ping   one connection, then sequential ping-pongs of a message: the round-trip time of each.

Every answer is checked byte for byte. The loop stops after --count (plus --warmup, not in the
figures) or after --max-seconds, whichever comes first, and prints one JSON object:
{"mode", "requested", "completed", "warmup", "elapsed_s", "per_s", "p50_us", "p99_us", "mean_us",
"max_us", "errors", "first_error", "truncated"}. TCP_NODELAY everywhere, as the proxies set it.
Exit status 0 when at least one timed exchange worked, 1 otherwise.
"""

from __future__ import annotations

import argparse
import errno
import json
import os
import select
import socket
import sys
import time

from bench.stats import Exchange, parallel_window, sample_summary, ttfb_us

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


class _Pending:
    """One connection of `run_pconn` in flight."""

    __slots__ = ("sock", "start_ns", "first_ns", "buf", "sent", "timed", "deadline")

    def __init__(self, sock: socket.socket, start_ns: int, timed: bool, deadline: float) -> None:
        self.sock = sock
        self.start_ns = start_ns
        self.first_ns = 0
        self.buf = bytearray()
        self.sent = 0
        self.timed = timed
        self.deadline = deadline


def run_pconn(args: argparse.Namespace) -> dict[str, object]:
    """--warmup + --count connections, --concurrency of them open at any time (bounded by --max-seconds)."""
    message = os.urandom(args.size)
    size = len(message)
    total = args.warmup + args.count
    exchanges: list[Exchange] = []
    errors, first_error = 0, ""
    pending: dict[int, _Pending] = {}  # fd -> connection, in start order (the first is the oldest)
    ep = select.epoll()
    rusage0 = os.times()
    loop_start = time.monotonic()
    deadline = loop_start + args.max_seconds
    started, stopped = 0, False
    out_events, in_events = select.EPOLLOUT, select.EPOLLIN
    perf_ns, monotonic = time.perf_counter_ns, time.monotonic

    def fail(conn: _Pending, exc: BaseException) -> None:
        nonlocal errors, first_error
        errors += 1
        first_error = first_error or f"{type(exc).__name__}: {exc}"
        finish(conn, None)

    def finish(conn: _Pending, first_ns: int | None) -> None:
        fd = conn.sock.fileno()
        pending.pop(fd, None)
        try:
            ep.unregister(fd)
        except OSError:
            pass  # never registered (connect failed at once)
        conn.sock.close()
        exchanges.append(Exchange(conn.start_ns, perf_ns(), first_ns, conn.timed))

    def send(conn: _Pending) -> None:
        conn.sent += conn.sock.send(message[conn.sent:] if conn.sent else message)
        if conn.sent == size:
            ep.modify(conn.sock.fileno(), in_events)

    try:
        while True:
            now = monotonic()
            if now > deadline or errors >= MAX_ERRORS:
                stopped = stopped or started < total or bool(pending)
                break
            while len(pending) < args.concurrency and started < total:
                sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM | socket.SOCK_NONBLOCK)
                sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
                conn = _Pending(sock, perf_ns(), started >= args.warmup, now + args.timeout)
                started += 1
                code = sock.connect_ex((args.host, args.port))
                if code not in (0, errno.EINPROGRESS):
                    fail(conn, OSError(code, os.strerror(code)))
                    continue
                pending[sock.fileno()] = conn
                ep.register(sock.fileno(), out_events)
            if not pending:
                if started >= total:
                    break
                continue
            oldest = next(iter(pending.values()))
            if oldest.deadline < now:
                fail(oldest, TimeoutError(f"no echo within {args.timeout:g} s"))
                continue
            for fd, event in ep.poll(min(oldest.deadline - now, deadline - now, 0.5)):
                conn = pending.get(fd)
                if conn is None:
                    continue
                try:
                    if conn.sent < size:  # connecting, or the request not all written yet
                        if not conn.sent:
                            code = conn.sock.getsockopt(socket.SOL_SOCKET, socket.SO_ERROR)
                            if code:
                                raise OSError(code, os.strerror(code))
                        send(conn)
                        continue
                    chunk = conn.sock.recv(size - len(conn.buf))
                    if not chunk:
                        raise ConnectionError(f"connection closed after {len(conn.buf)} of {size} bytes")
                    if not conn.first_ns:
                        conn.first_ns = perf_ns()
                    conn.buf += chunk
                    if len(conn.buf) == size:
                        if conn.buf != message:
                            raise Mismatch(f"echo differs from the request ({bytes(conn.buf[:16])!r}...)")
                        finish(conn, conn.first_ns)
                except BlockingIOError:
                    continue  # a spurious wake-up; wait for the next event
                except (OSError, Mismatch) as exc:
                    fail(conn, exc)
    finally:
        for conn in list(pending.values()):  # stopped by a bound: not failures, not in the figures
            pending.pop(conn.sock.fileno())
            conn.sock.close()
        ep.close()
    loop_s = monotonic() - loop_start
    rusage1 = os.times()
    cpu_s = (rusage1.user - rusage0.user) + (rusage1.system - rusage0.system)
    window = parallel_window(exchanges)
    samples = ttfb_us(exchanges)
    out = _result("pconn", args, samples, float(window["window_s"] or 0.0), errors, first_error,
                  attempted=len(exchanges), truncated=stopped)
    out.update({"per_s": round(float(window["per_s"] or 0.0), 1) if samples else 0.0,
                "concurrency": args.concurrency, "window_s": window["window_s"] and round(window["window_s"], 4),
                "in_window": window["in_window"],
                "mean_in_flight": window["mean_in_flight"] and round(window["mean_in_flight"], 2),
                "max_in_flight": window["max_in_flight"], "loop_s": round(loop_s, 4), "cpu_s": round(cpu_s, 3),
                "core_fraction": round(cpu_s / loop_s, 3) if loop_s > 0 else None})
    return out


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
    parser.add_argument("mode", choices=("conn", "pconn", "ping"))
    parser.add_argument("--host", required=True)
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--count", type=int, required=True)
    parser.add_argument("--warmup", type=int, default=0)
    parser.add_argument("--size", type=int, default=64)
    parser.add_argument("--timeout", type=float, default=5.0, help="per socket operation, seconds")
    parser.add_argument("--max-seconds", type=float, default=60.0, help="bound of the whole loop")
    parser.add_argument("--concurrency", type=int, default=32, help="pconn: connections open at once")
    return parser


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    if (not 1 <= args.count <= 1_000_000 or not 0 <= args.warmup <= 10_000 or not 1 <= args.size <= 65536
            or not 1 <= args.concurrency <= 1024):
        print("count must be in 1..1000000, warmup in 0..10000, size in 1..65536, concurrency in 1..1024",
              file=sys.stderr)
        return 2
    result = {"conn": run_conn, "pconn": run_pconn, "ping": run_ping}[args.mode](args)
    print(json.dumps(result), flush=True)
    return 0 if result["completed"] else 1


if __name__ == "__main__":
    sys.exit(main())
