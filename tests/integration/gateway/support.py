"""Test kit for the gateway: a static control plane (a real grpc.aio server on a unix socket),
snapshot builders, named echo servers, gateway processes, and raw peer-protocol clients.

Every process started here is recorded and stopped by its PID (process group) in `close()`,
also when a test fails. Only 127.0.0.1 is used.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import os
import signal
import socket
import ssl
import subprocess
import sys
import threading
import time
import urllib.request
from collections.abc import Callable, Iterable, Mapping
from pathlib import Path

import grpc
import grpc.aio

from controlplane.api import clusterlink_pb2 as pb
from controlplane.api import clusterlink_pb2_grpc as pb_grpc
from controlplane.api.preamble import Preamble, encode_preamble
from controlplane.tokens import TokenAuthority

JOIN_TOKEN = "join-token-for-tests"
REPO = Path(__file__).resolve().parents[3]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


# --- control plane -----------------------------------------------------------------------------


class _ControlPlane(pb_grpc.ControlPlaneServicer):
    def __init__(self, fixture: ControlPlaneFixture) -> None:
        self.fixture = fixture

    async def Register(self, request, context):  # type: ignore[no-untyped-def]
        await self.fixture.check(context)
        authority = TokenAuthority(self.fixture.snapshot.token_key, self.fixture.snapshot.peer_name)
        return pb.RegisterResponse(credential=authority.mint_agent_credential(request.node or "n1"),
                                   expires_unix=int(time.time() + 3600))

    async def Report(self, request, context):  # type: ignore[no-untyped-def]
        await self.fixture.check(context)
        self.fixture.reports.append(request)
        return pb.ReportResponse()

    async def Watch(self, request, context):  # type: ignore[no-untyped-def]
        await self.fixture.check(context)
        sent = request.known_version
        while True:
            snap = self.fixture.snapshot
            if snap.version != sent:
                yield snap
                sent = snap.version
            async with self.fixture.changed:
                if self.fixture.snapshot.version == sent:
                    await self.fixture.changed.wait()


class ControlPlaneFixture:
    """A control plane that serves the snapshots a test publishes (Watch) and Register, and keeps
    the denial reports it receives (`reports`)."""

    def __init__(self, socket_path: Path, snapshot: pb.Snapshot) -> None:
        self.socket_path = socket_path
        self.snapshot = snapshot
        self.reports: list[pb.ReportRequest] = []
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, name=f"cp-{socket_path.name}", daemon=True)
        self._thread.start()
        self.changed: asyncio.Condition = self._call(self._make_condition())
        self._server: grpc.aio.Server | None = None

    @staticmethod
    async def _make_condition() -> asyncio.Condition:
        return asyncio.Condition()

    def _call(self, coro):  # type: ignore[no-untyped-def]
        return asyncio.run_coroutine_threadsafe(coro, self._loop).result(timeout=30)

    async def check(self, context) -> None:  # type: ignore[no-untyped-def]
        metadata = dict(context.invocation_metadata())
        if metadata.get("authorization") != f"Bearer {JOIN_TOKEN}":
            await context.abort(grpc.StatusCode.UNAUTHENTICATED, "bad join token")

    async def _start(self) -> None:
        server = grpc.aio.server()
        pb_grpc.add_ControlPlaneServicer_to_server(_ControlPlane(self), server)
        server.add_insecure_port(f"unix:{self.socket_path}")
        await server.start()
        self._server = server

    async def _stop(self) -> None:
        if self._server is not None:
            await self._server.stop(grace=None)
            self._server = None

    def start(self) -> None:
        self._call(self._start())

    def stop(self) -> None:
        self._call(self._stop())

    async def _publish(self, snapshot: pb.Snapshot) -> None:
        async with self.changed:
            self.snapshot = snapshot
            self.changed.notify_all()

    def publish(self, snapshot: pb.Snapshot) -> None:
        self._call(self._publish(snapshot))

    def close(self) -> None:
        try:
            self.stop()
        finally:
            self._loop.call_soon_threadsafe(self._loop.stop)
            self._thread.join(timeout=10)


# --- snapshots ---------------------------------------------------------------------------------

ALLOW_ALL = {"action": "allow", "from": [{"workloadSelector": {}}], "to": [{"workloadSelector": {}}]}


def policy(name: str, spec: Mapping, *, namespace: str = "default", privileged: bool = False) -> pb.PolicyInfo:
    return pb.PolicyInfo(privileged=privileged, namespace="" if privileged else namespace, name=name,
                         spec_json=json.dumps(spec))


def deny(name: str, to: Mapping[str, str] | None = None, from_: Mapping[str, str] | None = None,
         namespace: str = "default") -> pb.PolicyInfo:
    spec = {"action": "deny", "from": [{"workloadSelector": {"matchLabels": dict(from_ or {})}}],
            "to": [{"workloadSelector": {"matchLabels": dict(to or {})}}]}
    return policy(name, spec, namespace=namespace)


def peer_info(name: str, port: int, *, reachable: bool = True, labels: Mapping[str, str] | None = None,
              host: str = "127.0.0.1") -> pb.PeerInfo:
    return pb.PeerInfo(name=name, gateways=[pb.Gateway(host=host, port=port)], reachable=reachable,
                       labels=dict(labels or {}))


def export_info(name: str, port: int, *, namespace: str = "default", valid: bool = True,
                labels: Mapping[str, str] | None = None) -> pb.ExportInfo:
    return pb.ExportInfo(namespace=namespace, name=name, target_host="127.0.0.1", port=port, valid=valid,
                         labels=dict(labels or {}))


def import_info(name: str, target_port: int, sources: Iterable[tuple[str, str]], *, scheme: str = "round-robin",
                namespace: str = "default", labels: Mapping[str, str] | None = None) -> pb.ImportInfo:
    return pb.ImportInfo(namespace=namespace, name=name, port=80, target_port=target_port, lb_scheme=scheme,
                         sources=[pb.ImportSource(peer=p, export_name=e, export_namespace="default")
                                  for p, e in sources],
                         labels=dict(labels or {}))


def snapshot(version: int, peer: str, *, key: bytes, labels: Mapping[str, str] | None = None,
             peers: Iterable[pb.PeerInfo] = (), exports: Iterable[pb.ExportInfo] = (),
             imports: Iterable[pb.ImportInfo] = (), policies: Iterable[pb.PolicyInfo] = ()) -> pb.Snapshot:
    return pb.Snapshot(version=version, peer_name=peer, peer_labels=dict(labels or {}), peers=list(peers),
                       exports=list(exports), imports=list(imports), policies=list(policies), token_key=key,
                       generated_unix_ms=int(time.time() * 1000))


# --- servers behind exports ----------------------------------------------------------------------


class NamedServer:
    """A TCP server that greets each connection with `<name>\\n`, then serves one command line:
    `ECHO` (echo until EOF, then close), `HASH` (read until EOF, answer `<sha256> <size>`, close),
    `SLOWHASH <s>` (HASH after reading nothing for s seconds), `GEN <n>` (send n pattern bytes, then
    close). `uploads` records how each HASH upload ended."""

    def __init__(self, name: str) -> None:
        self.name = name
        self._sock = socket.socket()
        self._sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self._sock.bind(("127.0.0.1", 0))
        self._sock.listen(128)
        self.port = self._sock.getsockname()[1]
        self.connections = 0
        self.uploads: list[tuple[str, int]] = []  # how each HASH upload ended: ("eof"|"reset", bytes)
        self._closed = False
        self._clients: set[socket.socket] = set()
        self._lock = threading.Lock()
        self._kill = threading.Event()
        self._thread = threading.Thread(target=self._accept, name=f"server-{name}", daemon=True)
        self._thread.start()

    def _accept(self) -> None:
        while not self._closed:
            try:
                conn, _ = self._sock.accept()
            except OSError:
                return
            with self._lock:
                self.connections += 1
                self._clients.add(conn)
            threading.Thread(target=self._serve, args=(conn,), daemon=True).start()

    def _serve(self, conn: socket.socket) -> None:
        try:
            conn.sendall(f"{self.name}\n".encode())
            buf = b""
            while b"\n" not in buf:
                data = conn.recv(65536)
                if not data:
                    return
                buf += data
            line, rest = buf.split(b"\n", 1)
            cmd = line.decode().split()
            if cmd and cmd[0] == "ECHO":
                if rest:
                    conn.sendall(rest)
                while data := conn.recv(1 << 20):
                    conn.sendall(data)
            elif cmd and cmd[0] in ("HASH", "SLOWHASH"):
                if cmd[0] == "SLOWHASH":  # a slow service: reads nothing for that many seconds first
                    time.sleep(float(cmd[1]))
                digest = hashlib.sha256(rest)
                size = len(rest)
                buffer = bytearray(1 << 20)
                try:
                    while n := conn.recv_into(buffer):
                        digest.update(memoryview(buffer)[:n])
                        size += n
                except ConnectionResetError:
                    self.uploads.append(("reset", size))
                    raise
                self.uploads.append(("eof", size))
                conn.sendall(f"{digest.hexdigest()} {size}\n".encode())
            elif cmd and cmd[0] == "GEN":
                remaining = int(cmd[1])
                chunk = memoryview(pattern(1 << 20))
                conn.settimeout(0.05)
                while remaining > 0:
                    if self._kill.is_set():  # die the hard way: RST
                        conn.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, b"\x01\x00\x00\x00\x00\x00\x00\x00")
                        return
                    try:
                        remaining -= conn.send(chunk[:min(remaining, len(chunk))])
                    except TimeoutError:
                        continue
        except OSError:
            pass  # the test closed or reset its side: nothing to serve any more
        finally:
            with self._lock:
                self._clients.discard(conn)
            conn.close()

    def kill_connections(self) -> None:
        """Reset the connections that are sending (GEN) with an RST, as a crashing server would."""
        self._kill.set()

    def revive(self) -> None:
        self._kill.clear()

    def close(self) -> None:
        self._closed = True
        self._sock.close()


def pattern(size: int) -> bytes:
    block = hashlib.sha256(b"clusterlink").digest() * 2048  # 64 KiB
    return (block * (size // len(block) + 1))[:size]


# --- gateway processes ---------------------------------------------------------------------------


class GatewayProcess:
    """`clusterlink-gateway` as a subprocess (its own process group, stopped by PID)."""

    def __init__(self, name: str, certs: Path, socket_path: Path, workdir: Path, *, workers: int = 2,
                 extra: Iterable[str] = ()) -> None:
        self.name = name
        self.workers = workers
        self.peer_port = free_port()
        self.agent_port = free_port()
        self.metrics_port = free_port()
        self.workdir = workdir
        self.log_path = workdir / f"gateway-{name}.log"
        token_file = workdir / f"join-{name}.token"
        token_file.write_text(JOIN_TOKEN)
        self.argv = [sys.executable, "-m", "controlplane.gateway.main", "--certs", str(certs),
                     "--controlplane", f"unix:{socket_path}", "--join-token-file", str(token_file),
                     "--peer-listen", f"127.0.0.1:{self.peer_port}", "--agent-listen", f"127.0.0.1:{self.agent_port}",
                     "--import-host", "127.0.0.1", "--metrics-listen", f"127.0.0.1:{self.metrics_port}",
                     "--workers", str(workers), "--log-format", "text", "--log-level", "info", *extra]
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        log = open(self.log_path, "ab")
        env = {k: v for k, v in os.environ.items() if not k.startswith(("CLUSTERLINK_", "PROMETHEUS_"))}
        env["TMPDIR"] = str(self.workdir)  # the supervisor's runtime dir: removed with the test's tmp dir
        self.proc = subprocess.Popen(self.argv, stdout=log, stderr=subprocess.STDOUT, start_new_session=True,
                                     cwd=REPO, env=env)
        log.close()

    def metrics(self) -> str:
        with urllib.request.urlopen(f"http://127.0.0.1:{self.metrics_port}/metrics", timeout=5) as resp:
            return resp.read().decode()

    def metric(self, name: str, **labels: str) -> float:
        """Sum of the samples of `name` whose labels include `labels` (0 when none)."""
        return metric_value(self.metrics(), name, **labels)

    def wait_ready(self, version: int, timeout: float = 30.0) -> None:
        """Until every worker listens and serves snapshot `version` or later."""
        deadline = time.monotonic() + timeout
        last = ""
        while time.monotonic() < deadline:
            if self.proc is not None and self.proc.poll() is not None:
                raise AssertionError(f"gateway {self.name} exited with {self.proc.returncode}:\n{self.log_tail()}")
            try:
                text = self.metrics()
                serving = metric_value(text, "clusterlink_gateway_serving_workers")
                current = metric_value(text, "clusterlink_gateway_snapshot_version")
                if serving == self.workers and current >= version:
                    return
                last = f"snapshot_version={current} serving_workers={serving}"
            except OSError as exc:
                last = str(exc)
            time.sleep(0.05)
        raise AssertionError(f"gateway {self.name} not ready with snapshot {version}: {last}\n{self.log_tail()}")

    def log_tail(self, lines: int = 40) -> str:
        try:
            return "\n".join(self.log_path.read_text().splitlines()[-lines:])
        except OSError:
            return "(no log)"

    def stop(self, timeout: float = 20.0) -> int | None:
        proc = self.proc
        if proc is None:
            return None
        if proc.poll() is None:
            os.kill(proc.pid, signal.SIGTERM)
            try:
                proc.wait(timeout=timeout)
            except subprocess.TimeoutExpired:
                pass
        _kill_group(proc.pid)
        if proc.poll() is None:
            proc.wait(timeout=5)
        return proc.returncode

    def kill(self) -> None:
        """SIGKILL the whole gateway (supervisor and workers) at once."""
        if self.proc is not None:
            _kill_group(self.proc.pid)
            self.proc.wait(timeout=5)


def _kill_group(pgid: int) -> None:
    try:
        os.killpg(pgid, signal.SIGKILL)
    except ProcessLookupError:
        pass  # already gone


def metric_value(text: str, name: str, **labels: str) -> float:
    total = 0.0
    for line in text.splitlines():
        if not line.startswith(name) or line.startswith("#"):
            continue
        head, _, value = line.rpartition(" ")
        metric, _, label_text = head.partition("{")
        if metric != name:
            continue
        found = dict(_parse_labels(label_text.rstrip("}")))
        if all(found.get(k) == v for k, v in labels.items()):
            total += float(value)
    return total


def _parse_labels(text: str) -> list[tuple[str, str]]:
    out = []
    for part in text.split('",'):
        if "=" not in part:
            continue
        key, _, value = part.partition("=")
        out.append((key.strip(), value.strip().strip('"')))
    return out


# --- clients -------------------------------------------------------------------------------------


def client_context(certs: Path) -> ssl.SSLContext:
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    context.minimum_version = ssl.TLSVersion.TLSv1_3
    context.load_verify_locations(certs / "ca.pem")
    context.load_cert_chain(certs / "cert.pem", certs / "key.pem")
    return context


def tls_connect(port: int, certs: Path, server_name: str, *, timeout: float = 5.0) -> ssl.SSLSocket:
    raw = socket.create_connection(("127.0.0.1", port), timeout=timeout)
    return client_context(certs).wrap_socket(raw, server_hostname=server_name)


def http_exchange(sock: ssl.SSLSocket | socket.socket, request: bytes) -> tuple[int, dict[str, str], bytes]:
    """Send a raw request, read one response (status, lower-case headers, body)."""
    sock.sendall(request)
    data = b""
    while b"\r\n\r\n" not in data:
        chunk = sock.recv(65536)
        if not chunk:
            raise ConnectionError(f"closed before a response: {data!r}")
        data += chunk
    head, _, body = data.partition(b"\r\n\r\n")
    lines = head.decode("latin-1").split("\r\n")
    status = int(lines[0].split()[1])
    headers = {}
    for line in lines[1:]:
        k, _, v = line.partition(":")
        headers[k.strip().lower()] = v.strip()
    length = int(headers.get("content-length", "0"))
    while len(body) < length:
        chunk = sock.recv(65536)
        if not chunk:
            break
        body += chunk
    return status, headers, body


def authz_request(service: str, namespace: str = "default", attrs: Mapping[str, str] | None = None,
                  host: str = "west") -> bytes:
    body = json.dumps({"ServiceName": service, "ServiceNamespace": namespace,
                       "SrcAttributes": dict(attrs or {})}).encode()
    return (f"POST /authz HTTP/1.1\r\nHost: {host}\r\nContent-Type: application/json\r\n"
            f"Content-Length: {len(body)}\r\n\r\n").encode() + body


def connect_request(token: str, host: str = "west") -> bytes:
    return f"CONNECT {host}:443 HTTP/1.1\r\nHost: {host}:443\r\nAuthorization: Bearer {token}\r\n\r\n".encode()


def open_import(port: int, *, timeout: float = 5.0) -> socket.socket:
    return socket.create_connection(("127.0.0.1", port), timeout=timeout)


def open_agent(port: int, namespace: str, name: str, credential: str, client: Mapping[str, str] | None = None,
               *, timeout: float = 5.0) -> socket.socket:
    sock = socket.create_connection(("127.0.0.1", port), timeout=timeout)
    sock.sendall(encode_preamble(Preamble(import_namespace=namespace, import_name=name, destination="10.96.0.1:80",
                                          client=dict(client or {}), credential=credential, node="n1")))
    return sock


def read_line(sock: socket.socket) -> bytes:
    """One line (without the newline); raises ConnectionError on EOF/reset before it."""
    data = b""
    while not data.endswith(b"\n"):
        chunk = sock.recv(1)
        if not chunk:
            raise ConnectionError(f"connection closed after {data!r}")
        data += chunk
    return data[:-1]


def greeting(sock: socket.socket) -> str:
    """The name of the server at the other end (its greeting line)."""
    return read_line(sock).decode()


def expect_reset(sock: socket.socket | Callable[[], socket.socket], timeout: float = 5.0) -> None:
    """The connection must end (reset or closed) without any byte from a server.

    Pass a function that opens it when the reset may come so fast (loopback) that the connect
    call itself reports it."""
    if callable(sock):
        try:
            sock = sock()
        except (ConnectionResetError, BrokenPipeError):
            return
    sock.settimeout(timeout)
    try:
        data = sock.recv(65536)
    except ConnectionResetError:
        return
    finally:
        sock.close()
    assert data == b"", f"expected the connection to be refused, got {data[:80]!r}"
