"""Connectivity through two real gateways: the Import target port, the agent port with a
preamble, the raw peer protocol (healthz, authz), a large transfer, half-close, and the warm
path (pooled tunnels and cached tokens)."""

from __future__ import annotations

import base64
import hashlib
import json
import socket
import time

from controlplane.tokens import TokenAuthority

from .conftest import WEST_LABELS, Fabric
from .hostile import children
from .support import (
    authz_request,
    greeting,
    http_exchange,
    metric_value,
    open_agent,
    open_import,
    read_line,
    tls_connect,
)


def _echo_roundtrip(sock: socket.socket, payload: bytes = b"hello through the tunnel") -> bytes:
    sock.sendall(b"ECHO\n" + payload)
    sock.shutdown(socket.SHUT_WR)  # half-close: the answer still has to come back
    data = b""
    while chunk := sock.recv(65536):
        data += chunk
    sock.close()
    return data


def test_import_target_port_reaches_the_export(net: Fabric) -> None:
    sock = open_import(net.echo_port)
    assert greeting(sock) == "echo"
    assert _echo_roundtrip(sock) == b"hello through the tunnel"


def test_agent_port_with_a_valid_credential(net: Fabric) -> None:
    credential = TokenAuthority(net.east_key, "east").mint_agent_credential("n1")
    sock = open_agent(net.east.agent_port, "default", "echo", credential,
                      {"client.clusterlink.net/namespace": "default"})
    assert greeting(sock) == "echo"
    assert _echo_roundtrip(sock, b"via the agent port") == b"via the agent port"


def test_healthz_carries_the_peer_labels(net: Fabric) -> None:
    with tls_connect(net.west.peer_port, net.certs.east, "west") as sock:
        status, headers, _ = http_exchange(sock, b"GET /healthz HTTP/1.1\r\nHost: west\r\n\r\n")
        assert status == 200
        assert json.loads(base64.b64decode(headers["clusterlinkpeerlabels"])) == WEST_LABELS
        # keep-alive: a second request on the same connection
        status, _, _ = http_exchange(sock, b"GET /healthz HTTP/1.1\r\nHost: west\r\n\r\n")
        assert status == 200


def test_authz_answers_200_403_404(net: Fabric) -> None:
    with tls_connect(net.west.peer_port, net.certs.east, "west") as sock:
        status, headers, _ = http_exchange(sock, authz_request("echo"))
        assert status == 200 and headers["x-access-token"].count(".") == 2
        status, _, body = http_exchange(sock, authz_request("no-such-export"))
        assert status == 404, body
    net.publish_west(policies=[])  # default deny
    with tls_connect(net.west.peer_port, net.certs.east, "west") as sock:
        status, _, body = http_exchange(sock, authz_request("echo"))
        assert status == 403 and b"<default deny>" in body
        status, _, body = http_exchange(sock, b"POST /authz HTTP/1.1\r\nHost: west\r\nContent-Length: 5\r\n\r\n{bad:")
        assert status == 400 and b"not JSON" in body


def test_workers_run_on_uvloop_by_default(net: Fabric) -> None:
    # The transfers below run on uvloop, whose transports keep references to written buffers.
    for gateway in (net.east, net.west):
        assert gateway.log_path.read_text().count("Import ports (event loop: uvloop)") >= 2, gateway.log_tail()


def test_256_mib_arrive_intact(net: Fabric) -> None:
    size = 256 * 1024 * 1024
    block = hashlib.sha256(b"payload").digest() * 32768  # 1 MiB
    sock = open_import(net.echo_port, timeout=60)
    assert greeting(sock) == "echo"
    sock.sendall(b"HASH\n")
    digest = hashlib.sha256()
    view = memoryview(block)
    sent = 0
    while sent < size:
        sock.sendall(view)
        digest.update(view)
        sent += len(view)
    sock.shutdown(socket.SHUT_WR)
    answer = read_line(sock).decode().split()
    sock.close()
    assert answer == [digest.hexdigest(), str(size)]


def test_download_arrives_intact_and_ends_cleanly(net: Fabric) -> None:
    from .support import pattern

    size = 32 * 1024 * 1024
    sock = open_import(net.echo_port, timeout=30)
    assert greeting(sock) == "echo"
    sock.sendall(f"GEN {size}\n".encode())
    received = bytearray()
    while chunk := sock.recv(1 << 20):
        received += chunk
    sock.close()
    assert len(received) == size and hashlib.sha256(received).digest() == hashlib.sha256(pattern(size)).digest()


def test_warm_path_uses_pooled_tunnels_and_cached_tokens(net: Fabric) -> None:
    # Pools and tokens are warmed in the background after a snapshot; wait until both workers are.
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        idle = net.east.metric("clusterlink_gateway_tunnel_pool_connections", peer="west")
        tokens = net.east.metric("clusterlink_gateway_authz_requests_total", peer="west", result="allowed")
        if idle >= 2 * 4 and tokens >= 2:
            break
        time.sleep(0.1)
    misses = net.east.metric("clusterlink_gateway_tunnel_pool_acquires_total", peer="west", result="miss")
    authz = net.east.metric("clusterlink_gateway_authz_requests_total", peer="west")
    hits = net.east.metric("clusterlink_gateway_token_cache_lookups_total", result="hit")
    reuses = net.east.metric("clusterlink_gateway_tunnel_reuses_total", peer="west")
    for _ in range(2):
        sock = open_import(net.echo_port)
        assert greeting(sock) == "echo"
        assert _echo_roundtrip(sock) == b"hello through the tunnel"
    # no connection waited for a handshake (misses would be on-demand connects; refills in the
    # background are not on any connection's path)
    assert net.east.metric("clusterlink_gateway_tunnel_pool_acquires_total", peer="west", result="miss") == misses
    assert net.east.metric("clusterlink_gateway_authz_requests_total", peer="west") == authz
    assert net.east.metric("clusterlink_gateway_token_cache_lookups_total", result="hit") == hits + 2
    # framed tunnels (both gateways are ours): each went back to the pool for the next connection
    assert net.east.metric("clusterlink_gateway_tunnel_reuses_total", peer="west") == reuses + 2


def test_a_steady_flow_of_connections_needs_no_new_tunnel(net: Fabric) -> None:
    """Framed tunnels come back to the pool after each connection: sequential connections make no
    TLS handshake with the peer (no refill competing with them for the CPU)."""
    deadline = time.monotonic() + 10
    while net.east.metric("clusterlink_gateway_tunnel_pool_connections", peer="west") < 2 * 4:
        assert time.monotonic() < deadline, "the pools did not fill"
        time.sleep(0.1)
    handshakes = net.east.metric("clusterlink_gateway_tunnel_handshakes_total", peer="west")
    misses = net.east.metric("clusterlink_gateway_tunnel_pool_acquires_total", peer="west", result="miss")
    for _ in range(300):
        sock = open_import(net.echo_port)
        assert greeting(sock) == "echo"
        assert _echo_roundtrip(sock, b"x") == b"x"
    assert net.east.metric("clusterlink_gateway_tunnel_handshakes_total", peer="west") == handshakes
    assert net.east.metric("clusterlink_gateway_tunnel_pool_acquires_total", peer="west", result="miss") == misses
    assert net.east.metric("clusterlink_gateway_tunnel_pool_connections", peer="west") == 2 * 4


def test_the_pool_grows_to_a_burst_and_shrinks_after_it(net: Fabric) -> None:
    """After N concurrent connections the pools keep N tunnels (not --pool-size: a second burst
    would otherwise pay N - size handshakes), and give the extra back once the demand window
    (--pool-demand-window 2 here) passed without such a burst."""
    deadline = time.monotonic() + 10
    while net.east.metric("clusterlink_gateway_tunnel_pool_connections", peer="west") < 2 * 4:
        assert time.monotonic() < deadline, "the pools did not fill"
        time.sleep(0.1)
    burst = 20
    socks = [open_import(net.echo_port) for _ in range(burst)]
    for sock in socks:  # every connection is carried: each holds a tunnel now
        assert greeting(sock) == "echo"
    for sock in socks:
        assert _echo_roundtrip(sock, b"x") == b"x"
    deadline = time.monotonic() + 5
    while net.east.metric("clusterlink_gateway_tunnel_pool_connections", peer="west") < burst:
        assert time.monotonic() < deadline, "the pools gave the burst's tunnels up"
        time.sleep(0.05)
    # Each worker kept what it had in use; a second burst of the same size is served from the pool.
    assert net.east.metric("clusterlink_gateway_tunnel_pool_connections", peer="west") <= burst + 2 * 4
    deadline = time.monotonic() + 15  # two windows without the burst, then the upkeep trims
    while net.east.metric("clusterlink_gateway_tunnel_pool_connections", peer="west") != 2 * 4:
        assert time.monotonic() < deadline, "the pools kept the burst's tunnels after the demand fell"
        time.sleep(0.1)


def test_idle_pooled_tunnels_are_kept(net: Fabric) -> None:
    """Tunnels waiting in the pool are neither dropped by the peer as silent clients nor fail
    their keepalives (here --request-timeout 2, --pool-keepalive 2, --idle-timeout 10)."""
    timeouts = net.west.metric("clusterlink_gateway_bad_requests_total", listener="peer", reason="timeout")
    failures = net.east.metric("clusterlink_gateway_tunnel_failures_total", peer="west")
    time.sleep(6)
    assert net.west.metric("clusterlink_gateway_bad_requests_total", listener="peer", reason="timeout") == timeouts
    assert net.east.metric("clusterlink_gateway_tunnel_failures_total", peer="west") == failures
    assert net.east.metric("clusterlink_gateway_tunnel_pool_connections", peer="west") == 2 * 4


def test_the_gateway_reports_its_build_certificates_and_processes(net: Fabric) -> None:
    from cryptography import x509

    text = net.east.metrics()
    assert metric_value(text, "clusterlink_build_info", component="gateway") == 1
    cert = x509.load_pem_x509_certificate((net.certs.east / "cert.pem").read_bytes())
    assert metric_value(text, "clusterlink_certificate_expiry_timestamp_seconds", component="gateway",
                        certificate="peer") == cert.not_valid_after_utc.timestamp()
    assert metric_value(text, "clusterlink_certificate_expiry_timestamp_seconds", certificate="ca") > time.time()
    # one set of figures per process: the supervisor and each of its workers
    for process in ["supervisor"] + [f"worker-{i}" for i in range(net.east.workers)]:
        assert metric_value(text, "clusterlink_process_resident_memory_bytes", process=process) > 2**20, process
        assert metric_value(text, "clusterlink_process_open_fds", process=process) > 3, process


def test_no_gateway_process_maps_cryptography_or_grpcio(net: Fabric) -> None:
    """The gateway checks its certificates with OpenSSL and its tokens with the standard library,
    and talks gRPC to its control plane through grpcwire: neither the supervisor nor a worker loads
    `cryptography` or grpcio's C core (about 10 MB each, bench memory section). The other
    components still may: the test reads the live processes' memory maps."""
    pids = [net.east.proc.pid, *children(net.east.proc.pid)]
    assert len(pids) == 1 + net.east.workers
    for pid in pids:
        with open(f"/proc/{pid}/maps") as maps:
            mapped = {line.split()[-1] for line in maps if "/" in line}
        assert any("_ssl" in path for path in mapped), pid  # the reading works: OpenSSL is there
        assert not [path for path in mapped if "/cryptography/" in path or "_cffi_backend" in path], pid
        assert not [path for path in mapped if "/grpc/" in path], pid
