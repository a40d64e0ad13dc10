"""Failures around established connections: a peer gateway or a service vanishing mid-transfer
(the client is reset promptly), the control plane going away (established and new connections
keep working), snapshot changes (nothing established is cut), Import ports reconciled, a worker
crash (restarted), SIGTERM (drain)."""

from __future__ import annotations

import os
import signal
import socket
import threading
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
    while net.west.metric("clusterlink_gateway_connections_active", direction="ingress") > 0:
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


# -- a crash is not a clean end -------------------------------------------------------------------
# A process that dies has its sockets closed by the kernel: a FIN, unless the socket was set to
# reset. The gateways arm that on their plain TCP sockets while relaying, so that a crash on the
# path reaches the far ends as a reset, never as a normal end of truncated data.

class _Uploader(threading.Thread):
    """Sends to an open connection until it fails (bounded: 4 GB, 30 s); `outcome` says how."""

    def __init__(self, sock: socket.socket) -> None:
        super().__init__(daemon=True)
        self.sock, self.sent, self.outcome = sock, 0, "running"

    def run(self) -> None:
        chunk = b"u" * (1 << 20)
        deadline = time.monotonic() + 30
        try:
            while self.sent < 4 << 30 and time.monotonic() < deadline:
                self.sock.sendall(chunk)
                self.sent += len(chunk)
            self.outcome = "done"
        except (ConnectionResetError, BrokenPipeError):
            self.outcome = "reset"
        except OSError as exc:
            self.outcome = repr(exc)


@pytest.mark.parametrize("crashing", ["west", "east"])
def test_gateway_crash_mid_upload_resets_the_service(net: Fabric, crashing: str) -> None:
    """kill -9 of the serving gateway (west) or of the client's (east) during an upload: the
    service sees a reset (it used to see a normal end after some megabytes when west died, and
    took the truncated data as complete), and so does the client."""
    server = net.servers["echo"]
    before = len(server.uploads)
    sock = open_import(net.echo_port, timeout=10)
    assert greeting(sock) == "echo"
    sock.sendall(b"HASH\n")
    uploader = _Uploader(sock)
    uploader.start()
    deadline = time.monotonic() + 10
    while uploader.sent < 20 << 20 and uploader.outcome == "running":
        assert time.monotonic() < deadline, "the upload does not move"
        time.sleep(0.01)
    getattr(net, crashing).kill()
    deadline = time.monotonic() + 5
    while len(server.uploads) == before:
        assert time.monotonic() < deadline, "the service never saw the upload end"
        time.sleep(0.02)
    how, size = server.uploads[before]
    assert how == "reset", f"the service saw {how} after {size} bytes"
    uploader.join(timeout=5)
    assert uploader.outcome == "reset"
    sock.close()


def _download_until_end(sock: socket.socket, timeout: float) -> str:
    try:
        return _read_until_reset(sock, timeout)
    except OSError as exc:
        return repr(exc)


def test_local_gateway_crash_mid_download_resets_the_client(net: Fabric) -> None:
    """kill -9 of the client's own gateway during a download, on the Import port and on the agent
    port: the client sees a reset (it used to see a normal end of a truncated download)."""
    from controlplane.tokens import TokenAuthority

    from .support import open_agent

    credential = TokenAuthority(net.east_key, "east").mint_agent_credential("n1")
    via_import = _download(net)
    via_agent = open_agent(net.east.agent_port, "default", "echo", credential, timeout=10)
    assert greeting(via_agent) == "echo"
    via_agent.sendall(b"GEN 100000000000\n")
    assert len(via_agent.recv(1 << 20)) > 0
    net.east.kill()
    assert _download_until_end(via_import, timeout=5) == "reset"
    assert _download_until_end(via_agent, timeout=5) == "reset"
    via_import.close()
    via_agent.close()
