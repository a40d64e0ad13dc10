"""The native-proxy baseline: a HAProxy pair that carries the same traffic over TLS 1.3 with client
certificates, configured as a user would (the configuration of shared/notes/haproxy-baseline.md, with
the fabric's peer certificates and addresses; session resumption on, which is HAProxy's default).

`render_a` / `render_b` build the two configuration files (pure). `HAProxyPair` writes them with the
certificate bundles, checks them (`haproxy -c`), starts both in the foreground (`-db`) where the
caller says (A in the client peer's gateway netns, B in the server peer's), owned by the fabric's
process group (stopped by PID on close), and reads A's TLS session counters from its stats socket.
"""

from __future__ import annotations

import csv
import io
import re
import socket
import subprocess
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from fabric.places import Place
from fabric.process import Proc

HAPROXY = "/usr/sbin/haproxy"
MAXCONN = 5000  # the machine's hard nofile limit is 20000 (haproxy-baseline.md)


@dataclass(frozen=True)
class Route:
    """One tunnelled service: A's plain listener -> (mTLS) B's TLS listener -> the server."""

    name: str
    a_listen: tuple[str, int]
    b_listen: tuple[str, int]
    server: tuple[str, int]


@dataclass(frozen=True)
class Identity:
    """The certificate bundle (cert + key in one PEM) a side presents, and the name it expects of the other."""

    pem: Path
    ca: Path
    peer_name: str


def _global(threads: int, stats_socket: Path) -> str:
    return (f"global\n"
            f"    nbthread {threads}\n"
            f"    maxconn {MAXCONN}\n"
            f"    stats socket {stats_socket} mode 600 level admin\n"
            f"\n"
            f"defaults\n"
            f"    mode tcp\n"
            f"    timeout connect 5s\n"
            f"    timeout client  60s\n"
            f"    timeout server  60s\n")


def _addr(address: tuple[str, int]) -> str:
    return f"{address[0]}:{address[1]}"


def render_a(routes: Sequence[Route], me: Identity, *, threads: int, stats_socket: Path) -> str:
    """The client side: plain TCP in, TLS 1.3 out with our client certificate, the server's name verified."""
    out = [_global(threads, stats_socket)]
    for r in routes:
        out.append(f"\nfrontend plain_{r.name}\n"
                   f"    bind {_addr(r.a_listen)}\n"
                   f"    default_backend to_{me.peer_name}_{r.name}\n"
                   f"\nbackend to_{me.peer_name}_{r.name}\n"
                   f"    # TLS 1.3 only, present our client certificate, verify the peer's server certificate\n"
                   f"    server {me.peer_name} {_addr(r.b_listen)} ssl ssl-min-ver TLSv1.3 ssl-max-ver TLSv1.3 "
                   f"crt {me.pem} ca-file {me.ca} verify required verifyhost {me.peer_name} "
                   f"sni str({me.peer_name})\n")
    return "".join(out)


def render_b(routes: Sequence[Route], me: Identity, *, threads: int, stats_socket: Path) -> str:
    """The server side: TLS 1.3 in, a client certificate of the fabric CA required and it must be the peer's."""
    out = [_global(threads, stats_socket)]
    for r in routes:
        out.append(f"\nfrontend tls_{r.name}\n"
                   f"    # TLS 1.3 only, require a client certificate signed by the fabric CA, and require the peer\n"
                   f"    bind {_addr(r.b_listen)} ssl crt {me.pem} ca-file {me.ca} verify required "
                   f"ssl-min-ver TLSv1.3 ssl-max-ver TLSv1.3\n"
                   f"    tcp-request session reject unless {{ ssl_c_s_dn(CN) -m str {me.peer_name} }}\n"
                   f"    default_backend to_server_{r.name}\n"
                   f"\nbackend to_server_{r.name}\n"
                   f"    server app {_addr(r.server)}\n")
    return "".join(out)


def bundle(cert_dir: Path, out: Path) -> Path:
    """HAProxy wants certificate and key in one PEM: cert.pem + key.pem of a peer's certificate directory."""
    out.write_text((cert_dir / "cert.pem").read_text() + (cert_dir / "key.pem").read_text())
    out.chmod(0o600)
    return out


def version() -> dict[str, str]:
    """{"version", "built_with_openssl", "running_on_openssl"} from `haproxy -vv`."""
    text = subprocess.run([HAPROXY, "-vv"], capture_output=True, text=True, timeout=10, check=True).stdout

    def find(pattern: str) -> str:
        match = re.search(pattern, text, re.MULTILINE)
        return match.group(1).strip() if match else ""

    return {"version": find(r"^HA-?Proxy version (\S+)"),
            "built_with_openssl": find(r"^Built with OpenSSL version : (.+)$"),
            "running_on_openssl": find(r"^Running on OpenSSL version : (.+)$")}


def parse_ssl_counters(show_stat: str, server: str) -> dict[str, int]:
    """Sum of ssl_sess / ssl_reused_sess / ssl_failed_handshake over the rows of `server` in a
    `show stat` CSV (HAProxy's SSL stats module columns)."""
    text = show_stat.lstrip("# ")
    totals = {"ssl_sess": 0, "ssl_reused_sess": 0, "ssl_failed_handshake": 0}
    found = False
    for row in csv.DictReader(io.StringIO(text)):
        if row.get("svname") != server:
            continue
        for key in totals:
            value = row.get(key)
            if value:
                totals[key] += int(value)
                found = True
    if not found:
        raise ValueError(f"no SSL counters for server {server!r} in `show stat`")
    return totals


def stats_command(sock_path: Path, command: str, timeout: float = 5.0) -> str:
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
        sock.settimeout(timeout)
        sock.connect(str(sock_path))
        sock.sendall(command.encode() + b"\n")
        chunks = []
        while chunk := sock.recv(65536):
            chunks.append(chunk)
    return b"".join(chunks).decode(errors="replace")


class HAProxyPair:
    """HAProxy A (client side) and B (server side) with the routes; start() / stop()."""

    def __init__(self, workdir: Path, *, a_place: Place, b_place: Place, a_cert_dir: Path, b_cert_dir: Path,
                 a_name: str, b_name: str, routes: Sequence[Route], threads: int) -> None:
        self.dir = workdir
        self.a_place, self.b_place = a_place, b_place
        self.a_cert_dir, self.b_cert_dir = a_cert_dir, b_cert_dir
        self.a_name, self.b_name = a_name, b_name
        self.routes = list(routes)
        self.threads = threads
        self.a: Proc | None = None
        self.b: Proc | None = None
        self.config_a = ""
        self.config_b = ""

    @property
    def a_socket(self) -> Path:
        return self.dir / "a.sock"

    def start(self) -> None:
        self.dir.mkdir(parents=True, exist_ok=True)
        a_pem = bundle(self.a_cert_dir, self.dir / f"{self.a_name}.pem")
        b_pem = bundle(self.b_cert_dir, self.dir / f"{self.b_name}.pem")
        self.config_a = render_a(self.routes, Identity(a_pem, self.a_cert_dir / "ca.pem", self.b_name),
                                 threads=self.threads, stats_socket=self.a_socket)
        self.config_b = render_b(self.routes, Identity(b_pem, self.b_cert_dir / "ca.pem", self.a_name),
                                 threads=self.threads, stats_socket=self.dir / "b.sock")
        cfg_a, cfg_b = self.dir / "haproxy-a.cfg", self.dir / "haproxy-b.cfg"
        cfg_a.write_text(self.config_a)
        cfg_b.write_text(self.config_b)
        for cfg in (cfg_a, cfg_b):
            check = subprocess.run([HAPROXY, "-c", "-q", "-f", str(cfg)], capture_output=True, text=True, timeout=30)
            if check.returncode != 0:
                raise RuntimeError(f"haproxy rejects {cfg}: {check.stdout}{check.stderr}")
        self.b = self.b_place.spawn([HAPROXY, "-db", "-f", str(cfg_b)], log_path=self.dir / "haproxy-b.log")
        for r in self.routes:
            self.b.wait_tcp(self.b_place.netns, *r.b_listen, timeout=10)
        self.a = self.a_place.spawn([HAPROXY, "-db", "-f", str(cfg_a)], log_path=self.dir / "haproxy-a.log")
        for r in self.routes:
            self.a.wait_tcp(self.a_place.netns, *r.a_listen, timeout=10)

    def ssl_counters(self) -> dict[str, int]:
        """A's TLS sessions towards B: new (full handshakes), reused (resumed) and failed handshakes."""
        return parse_ssl_counters(stats_command(self.a_socket, "show stat"), self.b_name)

    def stop(self) -> None:
        for proc in (self.a, self.b):
            if proc is not None:
                proc.stop()
        self.a = self.b = None
