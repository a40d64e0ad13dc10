"""Tunnel liveness: a remote gateway that is frozen (SIGSTOP) resets the connections it carried
within --tunnel-liveness-timeout (5 s here; they used to hang for as long as it stayed frozen),
while connections that are merely slow, because the client or the service does not read for
longer than that, are left alone."""

from __future__ import annotations

import hashlib
import os
import signal
import socket
import threading
import time
from collections.abc import Iterator

import pytest

from .conftest import Fabric
from .support import greeting, open_import, pattern, read_line

LIVENESS_TIMEOUT = 5.0  # TEST_LIMITS' --tunnel-liveness-timeout
DETECTED_WITHIN = LIVENESS_TIMEOUT + 3.0  # plus one check interval and scheduling


class _Client(threading.Thread):
    """One download (GEN) or upload through east's Import; records how and when it ended."""

    def __init__(self, port: int, upload: bool) -> None:
        super().__init__(daemon=True)
        self.sock = open_import(port, timeout=30)
        assert greeting(self.sock) == "echo"
        self.upload = upload
        self.moved = 0
        self.outcome = "running"
        self.ended_at = 0.0
        self.sock.sendall(b"HASH\n" if upload else b"GEN 100000000000\n")

    def run(self) -> None:
        chunk = b"u" * (256 << 10)
        deadline = time.monotonic() + 40
        try:
            while time.monotonic() < deadline:
                if self.upload:
                    self.sock.sendall(chunk)
                    self.moved += len(chunk)
                else:
                    data = self.sock.recv(1 << 20)
                    if not data:
                        self.outcome = "eof"
                        break
                    self.moved += len(data)
            else:
                self.outcome = "hang"
        except (ConnectionResetError, BrokenPipeError):
            self.outcome = "reset"
        except TimeoutError:
            self.outcome = "hang"
        except OSError as exc:
            self.outcome = repr(exc)
        self.ended_at = time.monotonic()


@pytest.fixture
def frozen_west(net: Fabric) -> Iterator[callable]:  # type: ignore[valid-type]
    """A function that SIGSTOPs every west process; they are continued after the test."""
    assert net.west.proc is not None
    pgid = net.west.proc.pid
    stopped = []

    def freeze() -> None:
        os.killpg(pgid, signal.SIGSTOP)
        stopped.append(pgid)

    yield freeze
    for group in stopped:
        os.killpg(group, signal.SIGCONT)


def test_a_frozen_remote_gateway_resets_its_connections(net: Fabric, frozen_west) -> None:  # type: ignore[no-untyped-def]
    clients = [_Client(net.echo_port, upload=i % 2 == 1) for i in range(10)]
    for client in clients:
        client.start()
    deadline = time.monotonic() + 10
    while any(c.moved < (1 << 20) for c in clients):
        assert time.monotonic() < deadline, [c.moved for c in clients]
        time.sleep(0.01)
    frozen_west()
    frozen_at = time.monotonic()
    for client in clients:
        client.join(timeout=DETECTED_WITHIN + 2)
    outcomes = [(c.outcome, round(c.ended_at - frozen_at, 1)) for c in clients]
    assert all(o == "reset" for o, _ in outcomes), outcomes
    assert all(t < DETECTED_WITHIN for _, t in outcomes), outcomes
    assert net.east.metric("clusterlink_gateway_tunnel_liveness_resets_total", direction="egress") >= 10
    for client in clients:
        client.sock.close()


def test_a_client_that_does_not_read_for_longer_than_the_timeout_is_not_reset(net: Fabric) -> None:
    size = 64 << 20
    sock = open_import(net.echo_port, timeout=30)
    assert greeting(sock) == "echo"
    sock.sendall(f"GEN {size}\n".encode())
    assert sock.recv(1 << 16)
    time.sleep(LIVENESS_TIMEOUT + 3)  # every buffer on the way fills; the tunnels fall silent one way
    received = 0
    sock.settimeout(20)
    while data := sock.recv(1 << 20):
        received += len(data)
    assert received > size - (1 << 16) - 64  # the whole download arrived (less what the first recv took)
    sock.close()


def test_a_service_that_does_not_read_for_longer_than_the_timeout_is_not_reset(net: Fabric) -> None:
    payload = pattern(32 << 20)
    sock = open_import(net.echo_port, timeout=30)
    assert greeting(sock) == "echo"
    sock.sendall(f"SLOWHASH {LIVENESS_TIMEOUT + 3}\n".encode())
    sock.sendall(payload)  # blocks until the service reads
    sock.shutdown(socket.SHUT_WR)
    sock.settimeout(30)
    assert read_line(sock).decode().split() == [hashlib.sha256(payload).hexdigest(), str(len(payload))]
    sock.close()
