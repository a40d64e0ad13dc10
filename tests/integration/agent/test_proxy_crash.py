"""A node proxy that dies mid-transfer (kill -9) must look like a failure to both peers, never
like a complete transfer: the kernel resets both of its sockets. An orderly end stays a FIN.
The proxy runs in a child process (real sockets on loopback; no privileges needed)."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import threading
import time

import pytest

PROXY = """
import asyncio, sys
from agent.proxy import NodeProxy, Upstream
from controlplane.api import eventloop
async def main():
    up = ("127.0.0.1", int(sys.argv[1]))
    proxy = NodeProxy(("127.0.0.1", 0), resolve=lambda client: Upstream(up, b""))
    await proxy.start()
    print(proxy.address[1], flush=True)
    await asyncio.sleep(3600)
eventloop.run(main(), sys.argv[2])
"""


class Server:
    """Accepts one connection and reads it to the end: records what the end was."""

    def __init__(self) -> None:
        self.sock = socket.socket()
        self.sock.bind(("127.0.0.1", 0))
        self.sock.listen(1)
        self.received = 0
        self.end: str | None = None
        self.started = threading.Event()
        self.thread = threading.Thread(target=self._serve, daemon=True)
        self.thread.start()

    @property
    def port(self) -> int:
        return self.sock.getsockname()[1]

    def _serve(self) -> None:
        conn, _ = self.sock.accept()
        conn.settimeout(20)
        with conn:
            try:
                while True:
                    data = conn.recv(1 << 16)
                    if not data:
                        self.end = "eof"
                        conn.sendall(b"done")
                        return
                    self.received += len(data)
                    self.started.set()
            except ConnectionResetError:
                self.end = "reset"
            except OSError as exc:
                self.end = f"error {exc}"


@pytest.fixture
def proxy_process(request: pytest.FixtureRequest):  # type: ignore[no-untyped-def]
    started: list[subprocess.Popen[str]] = []

    def start(upstream_port: int, loop: str) -> tuple[subprocess.Popen[str], int]:
        proc = subprocess.Popen([sys.executable, "-c", PROXY, str(upstream_port), loop], stdout=subprocess.PIPE,
                                text=True, cwd=os.path.dirname(os.path.dirname(os.path.dirname(
                                    os.path.dirname(os.path.abspath(__file__))))))
        started.append(proc)
        assert proc.stdout is not None
        return proc, int(proc.stdout.readline())

    yield start
    for proc in started:
        if proc.poll() is None:
            proc.kill()
        proc.wait()


@pytest.mark.parametrize("loop", ["asyncio", "uvloop"])
def test_a_killed_proxy_resets_both_peers(proxy_process, loop: str) -> None:  # type: ignore[no-untyped-def]
    server = Server()
    proc, port = proxy_process(server.port, loop)
    client = socket.create_connection(("127.0.0.1", port))
    client.settimeout(20)
    chunk = os.urandom(1 << 16)
    sent = 0
    deadline = time.monotonic() + 10
    while not server.started.is_set() or sent < (8 << 20):
        client.sendall(chunk)
        sent += len(chunk)
        assert time.monotonic() < deadline
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    server.thread.join(20)
    assert server.end == "reset", f"the server saw {server.end} after {server.received} bytes"
    with pytest.raises((ConnectionResetError, BrokenPipeError)):
        for _ in range(1000):  # the reset reaches the client on its next writes or its read
            client.sendall(chunk)
        client.recv(1)
    client.close()


@pytest.mark.parametrize("loop", ["asyncio", "uvloop"])
def test_an_orderly_end_is_still_a_fin(proxy_process, loop: str) -> None:  # type: ignore[no-untyped-def]
    server = Server()
    _, port = proxy_process(server.port, loop)
    with socket.create_connection(("127.0.0.1", port)) as client:
        client.settimeout(20)
        client.sendall(b"x" * 100_000)
        client.shutdown(socket.SHUT_WR)
        answer = b""
        while True:
            data = client.recv(100)
            if not data:
                break
            answer += data
    server.thread.join(20)
    assert (server.end, server.received, answer) == ("eof", 100_000, b"done")
