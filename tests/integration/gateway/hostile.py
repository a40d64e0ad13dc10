"""The kinds of hostile connection a gateway must survive, as a table, and the machinery to run
them against a gateway while a legitimate client is measured (used by test_hostile.py, and at
volume by soak_mixed.py behind `make soak`).

Each kind opens one connection (or a few bytes of one), does one bad thing, and returns what it
observed as a short string; `expected` is the set of observations that mean the gateway held
(a refusal of the right kind, within the kind's bound). Nothing here may hang: every socket has
a timeout, every loop a count.
"""

from __future__ import annotations

import os
import socket
import ssl
import struct
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from controlplane.tokens import TokenAuthority

from .support import authz_request, client_context, connect_request, http_exchange, tls_connect

HEALTHZ = b"GET /healthz HTTP/1.1\r\nHost: west\r\n\r\n"


@dataclass(frozen=True)
class Target:
    """A west gateway under attack and what an attacker may hold."""

    peer_port: int
    agent_port: int
    valid: Path  # east's certificate: a configured peer
    unconfigured: Path  # "mallory": signed by the fabric CA, no Peer object
    other_fabric: Path  # "east", signed by another CA
    expired: Path  # "east", expired
    token_key: bytes  # west's: for tokens that are valid but for something else


def _ending(sock: socket.socket, timeout: float) -> str:
    """How the server ends the connection: "eof" or "reset" (or "open" after `timeout`)."""
    sock.settimeout(timeout)
    try:
        for _ in range(1000):
            if not sock.recv(65536):
                return "eof"
        return "chatty"
    except (ConnectionResetError, BrokenPipeError):
        return "reset"
    except ssl.SSLError:
        return "reset"  # an alert or a truncated TLS stream: the server ended it
    except (TimeoutError, socket.timeout):
        return "open"


def _status(t: Target, request: bytes, certs: Path | None = None) -> str:
    try:
        with tls_connect(t.peer_port, certs or t.valid, "west", timeout=10) as sock:
            status, _, _ = http_exchange(sock, request)
            return str(status)
    except (ssl.SSLError, ConnectionError) as exc:
        return f"refused:{type(exc).__name__}"


def _raw(t: Target, data: bytes, *, port: int | None = None, timeout: float = 6.0) -> str:
    with socket.create_connection(("127.0.0.1", port or t.peer_port), timeout=5) as sock:
        try:
            sock.sendall(data)
        except (ConnectionResetError, BrokenPipeError):
            return "reset"
        return _ending(sock, timeout)


def tls_garbage(t: Target) -> str:
    return _raw(t, os.urandom(512))


def tls_bad_hello(t: Target) -> str:
    return _raw(t, b"\x16\x03\x01\x00\x05hello" + b"\x00" * 64)


def plain_http(t: Target) -> str:
    return _raw(t, HEALTHZ)


def _handshake_refused(t: Target, certs: Path) -> str:
    try:
        with tls_connect(t.peer_port, certs, "west", timeout=10) as sock:
            # TLS 1.3: the refusal of the client certificate arrives on the first read
            http_exchange(sock, HEALTHZ)
            return "served"
    except (ssl.SSLError, ConnectionError):
        return "refused"


def wrong_ca(t: Target) -> str:
    return _handshake_refused(t, t.other_fabric)


def expired_cert(t: Target) -> str:
    return _handshake_refused(t, t.expired)


def no_client_cert(t: Target) -> str:
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    context.load_verify_locations(t.valid / "ca.pem")
    try:
        raw = socket.create_connection(("127.0.0.1", t.peer_port), timeout=10)
        with context.wrap_socket(raw, server_hostname="west") as sock:
            http_exchange(sock, HEALTHZ)
            return "served"
    except (ssl.SSLError, ConnectionError):
        return "refused"


def unconfigured_peer(t: Target) -> str:
    return _status(t, authz_request("echo"), t.unconfigured)


def forged_token(t: Target) -> str:
    return _status(t, connect_request(TokenAuthority(os.urandom(32), "west").mint_access_token(
        "east", "default", "echo", {})))


def expired_token(t: Target) -> str:
    token = TokenAuthority(t.token_key, "west", clock=lambda: time.time() - 120).mint_access_token(
        "east", "default", "echo", {})
    return _status(t, connect_request(token))


def token_for_another_peer(t: Target) -> str:
    token = TokenAuthority(t.token_key, "west").mint_access_token("north", "default", "echo", {})
    return _status(t, connect_request(token))  # presented by east


def missing_token(t: Target) -> str:
    return _status(t, b"CONNECT west:443 HTTP/1.1\r\nHost: west:443\r\n\r\n")


def garbage_token(t: Target) -> str:
    return _status(t, connect_request("not.a.jwt" + "A" * 300))


def huge_header(t: Target) -> str:
    """3 MiB of header: more than the socket buffers hold, so the 431 is read only if the gateway
    keeps reading after answering (closing with unread bytes resets the connection first)."""
    return _status(t, b"GET /healthz HTTP/1.1\r\nHost: west\r\nX-Big: " + b"a" * (3 << 20) + b"\r\n\r\n")


def refused_and_still_sending(t: Target) -> str:
    """A 431, then more and more header bytes: the gateway reads and drops them for a moment after
    its answer (so that a client sees it), then cuts the connection, within seconds."""
    started = time.monotonic()
    try:
        with tls_connect(t.peer_port, t.valid, "west", timeout=10) as sock:
            sock.sendall(b"GET /healthz HTTP/1.1\r\nHost: west\r\nX-Big: " + b"a" * (64 << 10))
            for _ in range(2000):  # ~6 s of 64 KiB writes at most
                sock.sendall(b"a" * (64 << 10))
                if time.monotonic() - started > 8:
                    return "not cut"
                time.sleep(0.003)
    except (ssl.SSLError, ConnectionError, OSError):
        return "cut" if time.monotonic() - started < 5 else "cut late"
    return "not cut"


def huge_body(t: Target) -> str:
    return _status(t, b"POST /authz HTTP/1.1\r\nHost: west\r\nContent-Length: 100000000\r\n\r\n")


def bad_json_authz(t: Target) -> str:
    return _status(t, b"POST /authz HTTP/1.1\r\nHost: west\r\nContent-Length: 9\r\n\r\n{not json")


def unknown_export(t: Target) -> str:
    return _status(t, authz_request("no-such-export-" + os.urandom(4).hex()))


def http_garbage_in_tls(t: Target) -> str:
    return _status(t, os.urandom(64).replace(b"\r", b"").replace(b"\n", b"") + b"\r\n\r\n")


def slowloris(t: Target) -> str:
    """A request head one byte every 0.2 s: dropped after --request-timeout (2 s here)."""
    started = time.monotonic()
    try:
        with tls_connect(t.peer_port, t.valid, "west", timeout=10) as sock:
            for byte in HEALTHZ[:-4] * 10:
                sock.sendall(bytes([byte]))
                time.sleep(0.2)
                if time.monotonic() - started > 8:
                    return "not dropped"
    except (ssl.SSLError, ConnectionError, OSError):
        return "dropped" if time.monotonic() - started < 6 else "dropped late"
    return "not dropped"


def silent_tls(t: Target) -> str:
    try:
        with tls_connect(t.peer_port, t.valid, "west", timeout=10) as sock:
            return _ending(sock, 8)
    except (ssl.SSLError, ConnectionError):
        return "reset"


def silent_tcp(t: Target) -> str:
    with socket.create_connection(("127.0.0.1", t.peer_port), timeout=5) as sock:
        return _ending(sock, 8)


def vanish_mid_request(t: Target) -> str:
    """Half a POST, then an RST: the server must just forget it."""
    sock = tls_connect(t.peer_port, t.valid, "west", timeout=10)
    sock.sendall(b"POST /authz HTTP/1.1\r\nHost: west\r\nContent-Length: 500\r\n\r\n{\"Service")
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    sock.close()
    return "gone"


def vanish_mid_handshake(t: Target) -> str:
    raw = socket.create_connection(("127.0.0.1", t.peer_port), timeout=5)
    context = client_context(t.valid)
    incoming, outgoing = ssl.MemoryBIO(), ssl.MemoryBIO()
    obj = context.wrap_bio(incoming, outgoing, server_hostname="west")
    try:
        obj.do_handshake()
    except ssl.SSLWantReadError:
        pass
    raw.sendall(outgoing.read())  # the ClientHello, then nothing but an RST
    raw.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    raw.close()
    return "gone"


def agent_port_garbage(t: Target) -> str:
    return _raw(t, b"GET / HTTP/1.1\r\n\r\n", port=t.agent_port)


def agent_port_oversize_preamble(t: Target) -> str:
    return _raw(t, b"CLP1\xff\xff\xff\xff", port=t.agent_port)


def agent_port_bad_json(t: Target) -> str:
    return _raw(t, b"CLP1\x00\x00\x00\x05{bad}", port=t.agent_port)


def agent_port_forged_credential(t: Target) -> str:
    from controlplane.api.preamble import Preamble, encode_preamble

    forged = TokenAuthority(os.urandom(32), "west").mint_agent_credential("n1", lifetime=60)
    return _raw(t, encode_preamble(Preamble("default", "echo", "10.96.0.1:80", {}, forged, "n1")) + b"ECHO\n",
                port=t.agent_port)


def agent_port_silent(t: Target) -> str:
    return _raw(t, b"CLP1", port=t.agent_port, timeout=8)


REFUSED_CONN = {"eof", "reset"}


@dataclass(frozen=True)
class Kind:
    name: str
    run: Callable[[Target], str]
    expected: frozenset[str]


KINDS: tuple[Kind, ...] = tuple(Kind(fn.__name__.replace("_", "-"), fn, frozenset(expected)) for fn, expected in [
    (tls_garbage, REFUSED_CONN),
    (tls_bad_hello, REFUSED_CONN),
    (plain_http, REFUSED_CONN),
    (wrong_ca, {"refused"}),
    (expired_cert, {"refused"}),
    (no_client_cert, {"refused"}),
    (unconfigured_peer, {"403"}),
    (forged_token, {"401"}),
    (expired_token, {"401"}),
    (token_for_another_peer, {"401"}),
    (missing_token, {"401"}),
    (garbage_token, {"401"}),
    (huge_header, {"431"}),
    (refused_and_still_sending, {"cut"}),
    (huge_body, {"413"}),
    (bad_json_authz, {"400"}),
    (unknown_export, {"404"}),
    (http_garbage_in_tls, {"400"}),
    (slowloris, {"dropped"}),
    (silent_tls, REFUSED_CONN),
    (silent_tcp, REFUSED_CONN),
    (vanish_mid_request, {"gone"}),
    (vanish_mid_handshake, {"gone"}),
    (agent_port_garbage, REFUSED_CONN),
    (agent_port_oversize_preamble, REFUSED_CONN),
    (agent_port_bad_json, REFUSED_CONN),
    (agent_port_forged_credential, REFUSED_CONN),
    (agent_port_silent, REFUSED_CONN),
])
SLOW_KINDS = {"slowloris", "silent-tls", "silent-tcp", "agent-port-silent", "refused-and-still-sending"}  # seconds each, by design


# -- the process and the legitimate client ---------------------------------------------------------

def proc_fds(pid: int) -> int:
    return len(os.listdir(f"/proc/{pid}/fd"))


def proc_rss_mb(pid: int) -> float:
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    raise AssertionError(f"no VmRSS for {pid}")


class Probe:
    """A legitimate client in a thread: a new connection and one GET /healthz, over and over,
    until stopped (at most `limit` times); records each exchange's latency and failures."""

    def __init__(self, port: int, certs: Path, *, pause: float = 0.02, limit: int = 100_000) -> None:
        self.port, self.certs, self.pause, self.limit = port, certs, pause, limit
        self.latencies: list[float] = []
        self.failures: list[str] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def __enter__(self) -> Probe:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(timeout=30)

    def _run(self) -> None:
        for _ in range(self.limit):
            if self._stop.is_set():
                return
            started = time.monotonic()
            try:
                with tls_connect(self.port, self.certs, "west", timeout=10) as sock:
                    status, _, _ = http_exchange(sock, HEALTHZ)
                if status != 200:
                    self.failures.append(f"status {status}")
            except (OSError, ConnectionError) as exc:
                self.failures.append(repr(exc))
            self.latencies.append(time.monotonic() - started)
            self._stop.wait(self.pause)

    def p99(self) -> float:
        ordered = sorted(self.latencies)
        return ordered[min(len(ordered) - 1, int(len(ordered) * 0.99))] if ordered else float("nan")


@dataclass
class KindReport:
    kind: str
    runs: int = 0
    unexpected: list[str] = field(default_factory=list)
    seconds: float = 0.0


def run_kind(kind: Kind, target: Target, rounds: int, *, parallel: int = 4) -> KindReport:
    """`rounds` attacks of one kind, `parallel` at a time; what each observed that it should not have."""
    report = KindReport(kind.name)
    lock = threading.Lock()
    counter = iter(range(rounds))

    def worker() -> None:
        for _ in counter:
            try:
                seen = kind.run(target)
            except Exception as exc:  # noqa: BLE001 - an attacker's surprise is a finding, not a crash
                seen = f"raised {type(exc).__name__}: {exc}"
            with lock:
                report.runs += 1
                if seen not in kind.expected:
                    report.unexpected.append(seen)

    started = time.monotonic()
    threads = [threading.Thread(target=worker, daemon=True) for _ in range(parallel)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=120)
    report.seconds = time.monotonic() - started
    return report


# -- the mixed soak --------------------------------------------------------------------------------

def children(pid: int) -> list[int]:
    found = []
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                with open(f"/proc/{entry}/stat") as f:
                    if int(f.read().rsplit(")", 1)[1].split()[1]) == pid:
                        found.append(int(entry))
            except (FileNotFoundError, ProcessLookupError):
                continue
    return sorted(found)


@dataclass
class SoakLoad:
    """Where the soak's legitimate traffic goes: an Import port of the importing gateway (east)
    that reaches an ECHO/HASH server behind the exporting one (west)."""

    import_port: int
    open_import: Callable[[int], socket.socket]


def _round_trip(load: SoakLoad, *parts: bytes, timeout: float) -> bytes:
    """One connection through the Import: send `parts`, half-close, read the answer to its end."""
    with load.open_import(load.import_port) as sock:
        sock.settimeout(timeout)
        for part in parts:
            sock.sendall(part)
        sock.shutdown(socket.SHUT_WR)
        data = bytearray()
        for _ in range(100_000):
            chunk = sock.recv(65536)
            if not chunk:
                break
            data += chunk
        return bytes(data)


def _percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(len(ordered) * q))] if ordered else float("nan")


def run_soak(target: Target, load: SoakLoad, processes: dict[str, int], *, seconds: float,
             churn: Callable[[], None], report_path: Path | None = None) -> dict:
    """For `seconds`: short echo connections and 8 MiB uploads through the Import port, a
    healthz prober on the peer port, every hostile kind in turn on two threads, a snapshot
    change every 2 s (`churn`); the descriptors and memory of every process in `processes`
    (name -> pid, their worker children included) sampled every second. Returns the report
    (and writes it as JSON to `report_path`)."""
    import hashlib
    import json

    from .support import pattern

    stop = threading.Event()
    deadline = time.monotonic() + seconds
    lock = threading.Lock()
    echo = {"ok": 0, "failures": [], "latencies": []}
    bulk = {"ok": 0, "failures": [], "bytes": 0}
    hostile: dict[str, dict] = {k.name: {"runs": 0, "unexpected": []} for k in KINDS}
    samples: list[dict] = []
    watched = {name: [pid, *children(pid)] for name, pid in processes.items()}

    def echo_loop() -> None:
        for i in range(10_000_000):
            if stop.is_set():
                return
            payload = f"soak {i} ".encode() * 20
            started = time.monotonic()
            try:
                data = _round_trip(load, b"ECHO\n" + payload, timeout=10)
                ok = data.split(b"\n", 1)[-1] == payload
                with lock:
                    if ok:
                        echo["ok"] += 1
                        echo["latencies"].append(time.monotonic() - started)
                    else:
                        echo["failures"].append(f"echo {i}: got {data[:60]!r}")
            except OSError as exc:
                with lock:
                    echo["failures"].append(f"echo {i}: {exc!r}")
            stop.wait(0.01)

    def bulk_loop() -> None:
        size = 8 << 20
        body = pattern(size)
        want = f"{hashlib.sha256(body).hexdigest()} {size}".encode()
        for i in range(1_000_000):
            if stop.is_set():
                return
            try:
                data = _round_trip(load, b"HASH\n", body, timeout=30)
                with lock:
                    if want in data:
                        bulk["ok"] += 1
                        bulk["bytes"] += size
                    else:
                        bulk["failures"].append(f"upload {i}: got {data[-100:]!r}")
            except OSError as exc:
                with lock:
                    bulk["failures"].append(f"upload {i}: {exc!r}")

    def hostile_loop(offset: int) -> None:
        for i in range(offset, 10_000_000, 2):
            if stop.is_set():
                return
            kind = KINDS[i % len(KINDS)]
            try:
                seen = kind.run(target)
            except Exception as exc:  # noqa: BLE001 - a finding, reported
                seen = f"raised {type(exc).__name__}: {exc}"
            with lock:
                hostile[kind.name]["runs"] += 1
                if seen not in kind.expected:
                    hostile[kind.name]["unexpected"].append(seen)

    def sample() -> dict:
        row: dict = {"t": round(seconds - (deadline - time.monotonic()), 1)}
        for name, pids in watched.items():
            for pid in pids:
                try:
                    row[f"{name}:{pid}"] = {"fds": proc_fds(pid), "rss_mb": round(proc_rss_mb(pid), 1)}
                except (FileNotFoundError, ProcessLookupError):
                    row[f"{name}:{pid}"] = None  # gone: a crash
        return row

    threads = [threading.Thread(target=f, args=a, daemon=True) for f, a in
               [(echo_loop, ()), (echo_loop, ()), (bulk_loop, ()), (hostile_loop, (0,)), (hostile_loop, (1,))]]
    samples.append(sample())
    with Probe(target.peer_port, target.valid, pause=0.05) as probe:
        for t in threads:
            t.start()
        next_churn = time.monotonic() + 2
        while time.monotonic() < deadline:
            time.sleep(max(0.0, min(1.0, deadline - time.monotonic())))
            samples.append(sample())
            if time.monotonic() >= next_churn:
                churn()
                next_churn += 2
        stop.set()
        for t in threads:
            t.join(timeout=60)
    time.sleep(3)  # connections the load left behind close (request and idle timeouts)
    samples.append(sample())

    def series(key: str, field_: str) -> list[float]:
        return [row[key][field_] for row in samples if row.get(key)]

    processes_report = {}
    for key in samples[0]:
        if key == "t":
            continue
        fds, rss = series(key, "fds"), series(key, "rss_mb")
        half = rss[len(rss) // 2:]
        slope = (half[-1] - half[0]) / max(1e-9, (len(half) - 1) / 60) if len(half) > 1 else 0.0
        processes_report[key] = {"alive_at_end": samples[-1].get(key) is not None,
                                 "fds_start": fds[0], "fds_end": fds[-1], "fds_max": max(fds),
                                 "rss_start_mb": rss[0], "rss_end_mb": rss[-1], "rss_max_mb": max(rss),
                                 "rss_slope_second_half_mb_per_min": round(slope, 2)}
    report = {
        "seconds": seconds,
        "echo": {"ok": echo["ok"], "failures": echo["failures"][:20], "failed": len(echo["failures"]),
                 "p50_ms": round(_percentile(echo["latencies"], 0.5) * 1000, 1),
                 "p99_ms": round(_percentile(echo["latencies"], 0.99) * 1000, 1)},
        "uploads": {"ok": bulk["ok"], "bytes": bulk["bytes"], "failed": len(bulk["failures"]),
                    "failures": bulk["failures"][:20]},
        "prober": {"ok": len(probe.latencies) - len(probe.failures), "failed": len(probe.failures),
                   "failures": probe.failures[:20], "p99_ms": round(probe.p99() * 1000, 1)},
        "hostile": {name: {"runs": h["runs"], "unexpected": h["unexpected"][:10]} for name, h in hostile.items()},
        "hostile_connections": sum(h["runs"] for h in hostile.values()),
        "processes": processes_report,
        "samples": samples,
    }
    if report_path is not None:
        report_path.write_text(json.dumps(report, indent=1))
    return report
