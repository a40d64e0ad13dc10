"""Failures around established connections: a peer gateway or a service vanishing mid-transfer
(the client is reset promptly), the control plane going away (established and new connections
keep working), snapshot changes (nothing established is cut), Import ports reconciled, a worker
crash (restarted), SIGTERM (drain)."""

from __future__ import annotations

import os
import signal
import socket
import time
from pathlib import Path

import pytest

from .conftest import Fabric
from .support import GatewayProcess, expect_reset, free_port, greeting, import_info, open_import


def _echo(sock: socket.socket, data: bytes) -> bytes:
    sock.sendall(data)
    got = b""
    while len(got) < len(data):
        chunk = sock.recv(65536)
        if not chunk:
            raise ConnectionError("closed")
        got += chunk
    return got


def _start_echo(port: int) -> socket.socket:
    sock = open_import(port, timeout=10)
    assert greeting(sock) == "echo"
    sock.sendall(b"ECHO\n")
    assert _echo(sock, b"ping") == b"ping"
    return sock


def _read_until_reset(sock: socket.socket, timeout: float) -> str:
    sock.settimeout(timeout)
    try:
        while sock.recv(1 << 20):
            pass
    except ConnectionResetError:
        return "reset"
    except TimeoutError:
        return "hang"
    return "eof"


def _download(net: Fabric) -> socket.socket:
    sock = open_import(net.echo_port, timeout=10)
    assert greeting(sock) == "echo"
    sock.sendall(b"GEN 100000000000\n")
    assert len(sock.recv(1 << 20)) > 0
    return sock


def test_peer_gateway_vanishing_resets_the_client(net: Fabric) -> None:
    sock = _download(net)
    net.west.kill()
    started = time.monotonic()
    assert _read_until_reset(sock, timeout=5) == "reset"
    assert time.monotonic() - started < 2
    sock.close()


def test_service_vanishing_resets_the_client(net: Fabric) -> None:
    sock = _download(net)
    net.servers["echo"].kill_connections()
    try:
        started = time.monotonic()
        assert _read_until_reset(sock, timeout=5) == "reset"
        assert time.monotonic() - started < 2
    finally:
        net.servers["echo"].revive()
        sock.close()


def test_client_vanishing_frees_the_service_side(net: Fabric) -> None:
    sock = _download(net)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, b"\x01\x00\x00\x00\x00\x00\x00\x00")
    sock.close()  # RST
    deadline = time.monotonic() + 5
    while net.west.metric("clusterlink_gateway_active_connections", direction="ingress") > 0:
        assert time.monotonic() < deadline, "west still relays for a client that is gone"
        time.sleep(0.05)


def test_control_plane_gone_keeps_serving(net: Fabric) -> None:
    established = _start_echo(net.echo_port)
    net.cp_east.stop()
    net.cp_west.stop()
    try:
        deadline = time.monotonic() + 5
        while net.east.metric("clusterlink_gateway_controlplane_connected") != 0:
            assert time.monotonic() < deadline
            time.sleep(0.05)
        assert _echo(established, b"still here") == b"still here"
        fresh = _start_echo(net.echo_port)
        assert _echo(fresh, b"new connection") == b"new connection"
        fresh.close()
    finally:
        net.cp_east.start()
        net.cp_west.start()
    # A Watch that resumes at the version the gateway has sends nothing until the next change
    # (SnapshotFeed reports "connected" on a message), so publish one.
    net.publish_east(wait=False)
    deadline = time.monotonic() + 15
    while net.east.metric("clusterlink_gateway_controlplane_connected") != 1:
        assert time.monotonic() < deadline, "east did not reconnect to its control plane"
        time.sleep(0.1)
    assert _echo(established, b"after the restart") == b"after the restart"
    established.close()


def test_snapshot_changes_do_not_cut_established_connections(net: Fabric) -> None:
    established = _start_echo(net.echo_port)
    net.publish_east(policies=[])  # even a default deny: it applies to new connections only
    net.publish_west(policies=[])
    assert _echo(established, b"unaffected") == b"unaffected"
    expect_reset(lambda: open_import(net.echo_port))
    established.close()


def test_import_ports_follow_the_snapshots(net: Fabric) -> None:
    port = free_port()
    net.publish_east(imports=[import_info("added", port, [("west", "a")])])
    sock = open_import(port)
    assert greeting(sock) == "a"
    sock.sendall(b"ECHO\n")
    net.publish_east()  # the Import is gone: its port closes, its connection goes on
    with pytest.raises(ConnectionRefusedError):
        socket.create_connection(("127.0.0.1", port), timeout=2)
    assert _echo(sock, b"alive") == b"alive"
    sock.close()


def _workers(pid: int) -> list[int]:
    children = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                stat = (entry / "stat").read_text()
            except OSError:
                continue
            if int(stat.rsplit(")", 1)[1].split()[1]) == pid:
                children.append(int(entry.name))
    return children


def test_a_crashed_worker_is_restarted(net: Fabric) -> None:
    assert net.east.proc is not None
    before = net.east.metric("clusterlink_gateway_worker_restarts_total")
    workers = _workers(net.east.proc.pid)
    assert len(workers) == 2
    os.kill(workers[0], signal.SIGKILL)
    deadline = time.monotonic() + 15
    while net.east.metric("clusterlink_gateway_worker_restarts_total") <= before or \
            len(_workers(net.east.proc.pid)) < 2:
        assert time.monotonic() < deadline, "the worker was not restarted"
        time.sleep(0.1)
    net.east.wait_ready(net.version["east"])
    for _ in range(4):
        sock = open_import(net.echo_port)
        assert greeting(sock) == "echo"
        sock.close()


def _runtime_dir(supervisor: int) -> Path:
    worker = _workers(supervisor)[0]
    argv = Path(f"/proc/{worker}/cmdline").read_bytes().split(b"\0")
    return Path(argv[argv.index(b"--runtime-dir") + 1].decode())


def test_sigterm_drains_connections(net: Fabric) -> None:
    established = _start_echo(net.echo_port)
    assert net.east.proc is not None
    runtime = _runtime_dir(net.east.proc.pid)
    assert (runtime / "rr-counters").exists()
    os.kill(net.east.proc.pid, signal.SIGTERM)
    deadline = time.monotonic() + 5
    while True:  # the listeners close at once...
        try:
            socket.create_connection(("127.0.0.1", net.echo_port), timeout=1).close()
        except ConnectionRefusedError:
            break
        assert time.monotonic() < deadline, "east still accepts after SIGTERM"
        time.sleep(0.05)
    assert _echo(established, b"draining") == b"draining"  # ...established connections go on
    established.close()
    assert net.east.proc.wait(timeout=10) == 0
    assert not runtime.exists()  # the supervisor removed its metrics files and counters


def test_a_configuration_that_cannot_work_exits_78(fabric: Fabric, tmp_path: Path) -> None:
    gateway = GatewayProcess("broken", tmp_path / "no-such-certs", fabric.cp_east.socket_path, tmp_path)
    gateway.start()
    try:
        assert gateway.proc is not None and gateway.proc.wait(timeout=20) == 78
        assert "cannot start" in gateway.log_tail()
    finally:
        gateway.stop()


def test_sigterm_does_not_wait_for_idle_tunnels(net: Fabric) -> None:
    # east's pools keep idle tunnels to west; a stopping west closes them at once instead of
    # waiting --drain-timeout (3 s here) for connections that would never end on their own.
    deadline = time.monotonic() + 10
    while net.east.metric("clusterlink_gateway_tunnel_pool_connections", peer="west") < 8:
        assert time.monotonic() < deadline
        time.sleep(0.1)
    assert net.west.proc is not None
    started = time.monotonic()
    os.kill(net.west.proc.pid, signal.SIGTERM)
    assert net.west.proc.wait(timeout=10) == 0
    assert time.monotonic() - started < 2.5
