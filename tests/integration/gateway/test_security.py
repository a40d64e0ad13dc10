"""The peer port under attack: tokens that are expired, forged or replayed by another peer,
certificates of another fabric or expired, garbage, oversize headers and silent clients. Each is
refused, and the listener keeps serving."""

from __future__ import annotations

import secrets
import socket
import ssl
import time
from pathlib import Path

import pytest

from controlplane import pki
from controlplane.tokens import LEEWAY, TokenAuthority, decode_unverified_expiry

from .conftest import WEST_LABELS, Fabric
from .support import (
    ALLOW_ALL,
    authz_request,
    connect_request,
    http_exchange,
    peer_info,
    policy,
    read_line,
    snapshot,
    tls_connect,
)


def _healthy(net: Fabric) -> None:
    """The listener still serves a well-behaved peer."""
    with tls_connect(net.west.peer_port, net.certs.east, "west") as sock:
        status, _, _ = http_exchange(sock, b"GET /healthz HTTP/1.1\r\nHost: west\r\n\r\n")
        assert status == 200


def _token(net: Fabric, certs) -> str:  # type: ignore[no-untyped-def]
    with tls_connect(net.west.peer_port, certs, "west") as sock:
        status, headers, body = http_exchange(sock, authz_request("echo"))
        assert status == 200, body
        return headers["x-access-token"]


def _connect_status(net: Fabric, certs, token: str) -> tuple[int, bytes]:  # type: ignore[no-untyped-def]
    with tls_connect(net.west.peer_port, certs, "west") as sock:
        status, _, body = http_exchange(sock, connect_request(token))
        return status, body


def test_a_valid_token_connects(net: Fabric) -> None:
    token = _token(net, net.certs.east)
    with tls_connect(net.west.peer_port, net.certs.east, "west") as sock:
        status, _, _ = http_exchange(sock, connect_request(token) + b"ECHO\n")
        assert status == 200
        assert read_line(sock) == b"echo"


def test_expired_token_is_refused(net: Fabric) -> None:
    token = TokenAuthority(net.west_key, "west", clock=lambda: time.time() - 120).mint_access_token(
        "east", "default", "echo", {})
    status, body = _connect_status(net, net.certs.east, token)
    assert status == 401 and b"expired" in body
    _healthy(net)


def test_token_forged_with_another_key_is_refused(net: Fabric) -> None:
    token = TokenAuthority(b"x" * 32, "west").mint_access_token("east", "default", "echo", {})
    status, body = _connect_status(net, net.certs.east, token)
    assert status == 401 and b"bad-signature" in body


def test_token_replayed_by_another_peer_is_refused(net: Fabric) -> None:
    token = _token(net, net.certs.east)  # issued to east
    status, body = _connect_status(net, net.certs.north, token)  # presented by north
    assert status == 401 and b"wrong-audience" in body
    status, _ = _connect_status(net, net.certs.east, token)
    assert status == 200


def test_a_remembered_token_is_still_refused_for_another_peer(net: Fabric) -> None:
    """West remembers the tokens it verified; one used by east is still refused when north
    presents it (each worker verified it already: several connections reach both)."""
    token = _token(net, net.certs.east)
    for _ in range(6):
        assert _connect_status(net, net.certs.east, token)[0] == 200
    for _ in range(6):
        status, body = _connect_status(net, net.certs.north, token)
        assert status == 401 and b"wrong-audience" in body
    assert _connect_status(net, net.certs.east, token)[0] == 200


def test_a_remembered_token_is_refused_once_expired(net: Fabric) -> None:
    token = TokenAuthority(net.west_key, "west", clock=lambda: time.time() - 29.0).mint_access_token(
        "east", "default", "echo", {})  # expires within a second or two
    expires = decode_unverified_expiry(token)
    assert expires is not None
    for _ in range(6):
        assert _connect_status(net, net.certs.east, token)[0] == 200
    time.sleep(max(0.0, expires + LEEWAY + 0.2 - time.time()))
    for _ in range(6):
        status, body = _connect_status(net, net.certs.east, token)
        assert status == 401 and b"expired" in body


def test_remembered_tokens_die_with_their_key(net: Fabric) -> None:
    token = _token(net, net.certs.east)
    for _ in range(6):
        assert _connect_status(net, net.certs.east, token)[0] == 200
    old_key, net.west_key = net.west_key, secrets.token_bytes(32)
    try:
        net.publish_west()
        for _ in range(6):
            status, body = _connect_status(net, net.certs.east, token)
            assert status == 401 and b"bad-signature" in body
    finally:
        net.west_key = old_key
        net.publish_west()


def test_missing_token_is_refused(net: Fabric) -> None:
    with tls_connect(net.west.peer_port, net.certs.east, "west") as sock:
        status, _, _ = http_exchange(sock, b"CONNECT west:443 HTTP/1.1\r\nHost: west:443\r\n\r\n")
        assert status == 401


def test_claimed_peer_name_is_overwritten_by_the_certificate(net: Fabric) -> None:
    from controlplane.api import attributes as A

    from .support import ALLOW_ALL, deny, policy

    net.publish_west(policies=[policy("allow-all", ALLOW_ALL), deny("no-north", from_={A.PEER_NAME: "north"})])
    with tls_connect(net.west.peer_port, net.certs.north, "west") as sock:
        status, _, _ = http_exchange(sock, authz_request("echo", attrs={A.PEER_NAME: "east"}))
        assert status == 403


@pytest.mark.parametrize("which", ["other_fabric_east", "expired_east"])
def test_bad_client_certificate_fails_the_handshake(net: Fabric, which: str) -> None:
    certs = getattr(net.certs, which)
    before = net.west.metric("clusterlink_gateway_bad_requests_total", listener="peer", reason="tls-handshake")
    with pytest.raises((ssl.SSLError, ConnectionError)):
        with tls_connect(net.west.peer_port, certs, "west") as sock:
            # TLS 1.3: the server checks the client certificate after the client finished; the
            # refusal arrives as an alert on the first read.
            http_exchange(sock, b"GET /healthz HTTP/1.1\r\nHost: west\r\n\r\n")
    _healthy(net)
    deadline = time.monotonic() + 5
    while net.west.metric("clusterlink_gateway_bad_requests_total", listener="peer", reason="tls-handshake") <= before:
        assert time.monotonic() < deadline
        time.sleep(0.05)


def test_wrong_server_name_is_refused_by_the_client(net: Fabric) -> None:
    with pytest.raises(ssl.SSLCertVerificationError):
        tls_connect(net.west.peer_port, net.certs.east, "north")


def test_garbage_bytes_do_not_hurt_the_listener(net: Fabric) -> None:
    for garbage in (b"GET / HTTP/1.1\r\nHost: x\r\n\r\n", b"\x00" * 1000, b"\x16\x03\x01\x00\x05hello"):
        with socket.create_connection(("127.0.0.1", net.west.peer_port), timeout=5) as sock:
            sock.sendall(garbage)
            sock.settimeout(5)
            try:
                while sock.recv(4096):
                    pass
            except ConnectionResetError:
                pass
    _healthy(net)


def test_oversize_header_gets_431(net: Fabric) -> None:
    with tls_connect(net.west.peer_port, net.certs.east, "west") as sock:
        huge = b"GET /healthz HTTP/1.1\r\nHost: west\r\nX-Big: " + b"a" * 40000 + b"\r\n\r\n"
        status, _, _ = http_exchange(sock, huge)
        assert status == 431
    _healthy(net)


def test_oversize_body_gets_413(net: Fabric) -> None:
    with tls_connect(net.west.peer_port, net.certs.east, "west") as sock:
        status, _, _ = http_exchange(sock, b"POST /authz HTTP/1.1\r\nHost: west\r\nContent-Length: 100000\r\n\r\n")
        assert status == 413


def test_unknown_paths_and_methods(net: Fabric) -> None:
    with tls_connect(net.west.peer_port, net.certs.east, "west") as sock:
        assert http_exchange(sock, b"GET /nope HTTP/1.1\r\nHost: west\r\n\r\n")[0] == 404
        assert http_exchange(sock, b"GET /authz HTTP/1.1\r\nHost: west\r\n\r\n")[0] == 405
        assert http_exchange(sock, b"DELETE /healthz HTTP/1.1\r\nHost: west\r\n\r\n")[0] == 405


@pytest.mark.parametrize("garbage", [b"GET / HTTP/1.1\r\n\r\n", b"CLP1\xff\xff\xff\xff", b"CLP1\x00\x00\x00\x05{bad}"])
def test_agent_port_refuses_garbage(net: Fabric, garbage: bytes) -> None:
    before = net.east.metric("clusterlink_gateway_bad_requests_total", listener="agent", reason="preamble")
    with socket.create_connection(("127.0.0.1", net.east.agent_port), timeout=5) as sock:
        sock.sendall(garbage)
        try:
            assert sock.recv(4096) == b""
        except ConnectionResetError:
            pass
    assert net.east.metric("clusterlink_gateway_bad_requests_total", listener="agent", reason="preamble") == before + 1


def test_agent_port_drops_a_silent_client(net: Fabric) -> None:
    started = time.monotonic()
    with socket.create_connection(("127.0.0.1", net.east.agent_port), timeout=10) as sock:
        sock.sendall(b"CLP1")  # a preamble that never completes
        try:
            assert sock.recv(4096) == b""
        except ConnectionResetError:
            pass
    assert time.monotonic() - started < 5  # --request-timeout 2


@pytest.mark.parametrize("speak_tls", [False, True])
def test_silent_client_is_dropped_in_bounded_time(net: Fabric, speak_tls: bool) -> None:
    started = time.monotonic()
    if speak_tls:
        sock = tls_connect(net.west.peer_port, net.certs.east, "west", timeout=10)
    else:
        sock = socket.create_connection(("127.0.0.1", net.west.peer_port), timeout=10)
    with sock:
        try:
            assert sock.recv(4096) == b""
        except (ConnectionResetError, ssl.SSLError):
            pass
    # --handshake-timeout 1 / --request-timeout 2 in these tests
    assert time.monotonic() - started < 5
    _healthy(net)


# -- who is served: configured peers only ----------------------------------------------------------

HEALTHZ = b"GET /healthz HTTP/1.1\r\nHost: west\r\n\r\n"


@pytest.fixture(scope="module")
def mallory(fabric: Fabric) -> Path:
    """A certificate signed by the fabric CA for a peer that no Peer object names."""
    return pki.create_peer_cert(fabric.certs.root, "mallory")


def test_a_peer_without_a_peer_object_is_refused(net: Fabric, mallory: Path) -> None:
    """A fabric certificate for 'mallory', with no Peer object on west, used to get a token and
    reach the service: now every request gets 403, and nothing is counted under its name."""
    for request in (HEALTHZ, authz_request("echo"), connect_request("x.y.z")):
        with tls_connect(net.west.peer_port, mallory, "west") as sock:
            status, headers, body = http_exchange(sock, request)
            assert status == 403 and b"not configured" in body, (status, body)
            assert headers.get("connection") == "close"
    assert net.west.metric("clusterlink_gateway_bad_requests_total", listener="peer",
                           reason="unconfigured-peer") >= 3
    assert 'peer="mallory"' not in net.west.metrics()
    _healthy(net)


def test_removing_a_peer_object_applies_to_the_next_request(net: Fabric) -> None:
    """An open keep-alive connection of north is refused from the request after its Peer
    object went away."""
    with tls_connect(net.west.peer_port, net.certs.north, "west") as sock:
        assert http_exchange(sock, HEALTHZ)[0] == 200
        try:
            v = net.version["west"] + 1
            net.version["west"] = v
            net.cp_west.publish(snapshot(v, "west", key=net.west_key, labels=WEST_LABELS,
                                         peers=[peer_info("east", net.east.peer_port)],
                                         exports=net.west_exports(), policies=[policy("allow-all", ALLOW_ALL)]))
            net.west.wait_ready(v)
            status, _, body = http_exchange(sock, HEALTHZ)
            assert status == 403 and b"north" in body
        finally:
            net.publish_west()


def test_unknown_exports_are_counted_under_one_label(net: Fabric) -> None:
    """/authz for exports that do not exist (a remote peer chooses the names) adds no series:
    they are all counted under service="unknown"."""
    names = [f"nosuch-{secrets.token_hex(4)}" for _ in range(20)]
    before = net.west.metric("clusterlink_gateway_connections_total", direction="ingress", service="unknown",
                             peer="east", result="not-found")
    with tls_connect(net.west.peer_port, net.certs.east, "west") as sock:
        for name in names:
            assert http_exchange(sock, authz_request(name))[0] == 404
    text = net.west.metrics()
    assert not any(name in text for name in names)
    after = net.west.metric("clusterlink_gateway_connections_total", direction="ingress", service="unknown",
                            peer="east", result="not-found")
    assert after - before == len(names)


def test_unconfigured_peers_are_served_when_the_flag_says_so(fabric: Fabric, mallory: Path,
                                                             tmp_path: Path) -> None:
    """--unconfigured-peers serve: mallory is served (the policy still decides; allow-all here),
    and counted as peer="unconfigured", not under the name it chose."""
    from .conftest import TEST_LIMITS
    from .support import GatewayProcess

    gateway = GatewayProcess("west-open", fabric.certs.west, fabric.cp_west.socket_path, tmp_path, workers=1,
                             extra=[*TEST_LIMITS, "--unconfigured-peers", "serve"])
    gateway.start()
    try:
        gateway.wait_ready(fabric.version["west"])
        with tls_connect(gateway.peer_port, mallory, "west") as sock:
            assert http_exchange(sock, HEALTHZ)[0] == 200
            status, headers, _ = http_exchange(sock, authz_request("echo"))
            assert status == 200 and headers.get("x-access-token")
            assert http_exchange(sock, authz_request("nosuch"))[0] == 404
        text = gateway.metrics()
        assert 'peer="mallory"' not in text
        assert gateway.metric("clusterlink_gateway_connections_total", direction="ingress", service="unknown",
                              peer="unconfigured", result="not-found") == 1
    finally:
        gateway.stop()
