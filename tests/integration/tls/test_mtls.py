"""Mutual TLS between two peers over a real asyncio server on 127.0.0.1, with certificates from pki."""

from __future__ import annotations

import asyncio
import ssl

import pytest

from controlplane import pki
from controlplane.tlsconfig import PeerTLS, TLSConfigError
from tests.integration.tls.tlspeers import REJECTED, IdentityServer, exchange, raw_context, write_expired_peer


def test_mutual_auth_and_both_sides_see_the_other_san(fabric):
    server_tls = PeerTLS(fabric.peer_dir("peer-a"))
    client_tls = PeerTLS(fabric.peer_dir("peer-b"))

    async def scenario():
        async with IdentityServer(server_tls.server_context()) as server:
            reply, client_saw, _ = await exchange(client_tls.client_context(), server.port, "peer-a")
            return reply, client_saw, server.seen

    reply, client_saw, server_seen = asyncio.run(scenario())
    assert reply == b"peer-b\n"  # the server identified the client by its certificate's SAN
    assert client_saw.peer == "peer-a"
    assert client_saw.serial == server_tls.identity.serial
    assert [s.peer for s in server_seen] == ["peer-b"]
    assert server_seen[0].serial == client_tls.identity.serial
    assert server_tls.name == "peer-a" and client_tls.name == "peer-b"


def test_tls_1_3_only(fabric):
    server_tls = PeerTLS(fabric.peer_dir("peer-a"))
    client_tls = PeerTLS(fabric.peer_dir("peer-b"))
    tls12 = raw_context(ssl.PROTOCOL_TLS_CLIENT, fabric.peer_dir("peer-b"))
    tls12.minimum_version = tls12.maximum_version = ssl.TLSVersion.TLSv1_2

    async def scenario():
        async with IdentityServer(server_tls.server_context()) as server:
            with pytest.raises(REJECTED):
                await exchange(tls12, server.port, "peer-a")
            await exchange(client_tls.client_context(), server.port, "peer-a")
            return server.seen

    assert [s.peer for s in asyncio.run(scenario())] == ["peer-b"]  # only the TLS 1.3 one got in


def test_client_certificate_of_another_fabric_is_rejected(fabric, other_fabric):
    server_tls = PeerTLS(fabric.peer_dir("peer-a"))
    # Trusts our fabric's CA (so it would accept the server) but presents a certificate of
    # another fabric, with a plausible name.
    intruder = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    intruder.minimum_version = ssl.TLSVersion.TLSv1_3
    intruder.load_verify_locations(fabric.peer_dir("peer-a") / pki.CA_FILE)
    other = other_fabric.peer_dir("peer-b")
    intruder.load_cert_chain(other / pki.CERT_FILE, other / pki.KEY_FILE)

    async def scenario():
        async with IdentityServer(server_tls.server_context()) as server:
            with pytest.raises(REJECTED):
                await exchange(intruder, server.port, "peer-a")
            return server.seen

    assert asyncio.run(scenario()) == []  # the application never saw the connection


def test_client_without_certificate_is_rejected(fabric):
    server_tls = PeerTLS(fabric.peer_dir("peer-a"))
    anonymous = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    anonymous.load_verify_locations(fabric.peer_dir("peer-a") / pki.CA_FILE)

    async def scenario():
        async with IdentityServer(server_tls.server_context()) as server:
            with pytest.raises(REJECTED):
                await exchange(anonymous, server.port, "peer-a")
            return server.seen

    assert asyncio.run(scenario()) == []


def test_server_of_another_fabric_is_rejected_by_the_client(fabric, other_fabric):
    server_tls = PeerTLS(other_fabric.peer_dir("peer-a"))
    client_tls = PeerTLS(fabric.peer_dir("peer-b"))

    async def scenario():
        async with IdentityServer(server_tls.server_context()) as server:
            with pytest.raises(ssl.SSLCertVerificationError):
                await exchange(client_tls.client_context(), server.port, "peer-a")

    asyncio.run(scenario())


def test_expired_client_certificate_is_rejected(fabric, tmp_path):
    expired = write_expired_peer(fabric.root, fabric.name, "peer-b", tmp_path / "expired")
    server_tls = PeerTLS(fabric.peer_dir("peer-a"))

    async def scenario():
        async with IdentityServer(server_tls.server_context()) as server:
            with pytest.raises(REJECTED):
                await exchange(raw_context(ssl.PROTOCOL_TLS_CLIENT, expired), server.port, "peer-a")
            return server.seen

    assert asyncio.run(scenario()) == []


def test_expired_server_certificate_is_rejected(fabric, tmp_path):
    expired = write_expired_peer(fabric.root, fabric.name, "peer-a", tmp_path / "expired")
    client_tls = PeerTLS(fabric.peer_dir("peer-b"))

    async def scenario():
        async with IdentityServer(raw_context(ssl.PROTOCOL_TLS_SERVER, expired)) as server:
            with pytest.raises(ssl.SSLCertVerificationError, match="expired"):
                await exchange(client_tls.client_context(), server.port, "peer-a")

    asyncio.run(scenario())


def test_expired_certificate_is_refused_at_load(fabric, tmp_path):
    expired = write_expired_peer(fabric.root, fabric.name, "peer-a", tmp_path / "expired")
    with pytest.raises(TLSConfigError, match="expired"):
        PeerTLS(expired)


def test_server_san_mismatch_is_rejected_by_the_client(fabric):
    server_tls = PeerTLS(fabric.peer_dir("peer-a"))
    client_tls = PeerTLS(fabric.peer_dir("peer-b"))

    async def scenario():
        async with IdentityServer(server_tls.server_context()) as server:
            # A Peer object named peer-c whose gateway address actually answers as peer-a.
            with pytest.raises(ssl.SSLCertVerificationError, match="peer-c"):
                await exchange(client_tls.client_context(), server.port, "peer-c")
            return server.seen

    assert asyncio.run(scenario()) == []


def test_a_failed_handshake_does_not_take_the_listener_down(fabric, other_fabric):
    server_tls = PeerTLS(fabric.peer_dir("peer-a"))
    client_tls = PeerTLS(fabric.peer_dir("peer-b"))
    intruder = PeerTLS(other_fabric.peer_dir("peer-b"))

    async def scenario():
        async with IdentityServer(server_tls.server_context()) as server:
            for _ in range(3):
                with pytest.raises(ssl.SSLCertVerificationError):
                    await exchange(intruder.client_context(), server.port, "peer-a")
            reply, _, _ = await exchange(client_tls.client_context(), server.port, "peer-a")
            return reply, server.serving

    assert asyncio.run(scenario()) == (b"peer-b\n", True)
