"""TLS 1.3 session resumption on asyncio clients through PeerTLS's ResumingClientContext."""

from __future__ import annotations

import asyncio

from controlplane.tlsconfig import PeerTLS
from tests.integration.tls.tlspeers import IdentityServer, exchange


def test_second_connection_resumes_and_keeps_both_identities(fabric):
    server_tls = PeerTLS(fabric.peer_dir("peer-a"))
    client_tls = PeerTLS(fabric.peer_dir("peer-b"))

    async def scenario():
        async with IdentityServer(server_tls.server_context()) as server:
            results = []
            for _ in range(3):
                results.append(
                    await exchange(client_tls.client_context(), server.port, "peer-a",
                                   remember=client_tls.remember_session)
                )
            return results, server.seen

    results, server_seen = asyncio.run(scenario())
    assert [saw.resumed for _, saw, _ in results] == [False, True, True]
    assert all(remembered for _, _, remembered in results)  # a ticket had arrived after the reply
    # Resumption keeps the identities verified by the full handshake, on both sides.
    assert [reply for reply, _, _ in results] == [b"peer-b\n"] * 3
    assert [saw.peer for _, saw, _ in results] == ["peer-a"] * 3
    assert [s.resumed for s in server_seen] == [False, True, True]
    assert [s.peer for s in server_seen] == ["peer-b"] * 3


def test_without_remember_session_there_is_no_resumption(fabric):
    server_tls = PeerTLS(fabric.peer_dir("peer-a"))
    client_tls = PeerTLS(fabric.peer_dir("peer-b"))

    async def scenario():
        async with IdentityServer(server_tls.server_context()) as server:
            first = await exchange(client_tls.client_context(), server.port, "peer-a")
            second = await exchange(client_tls.client_context(), server.port, "peer-a")
            return first[1].resumed, second[1].resumed

    assert asyncio.run(scenario()) == (False, False)


def test_sessions_are_kept_per_server_name(fabric):
    fabric.add_peer("peer-c")
    server_a = PeerTLS(fabric.peer_dir("peer-a"))
    server_c = PeerTLS(fabric.peer_dir("peer-c"))
    client_tls = PeerTLS(fabric.peer_dir("peer-b"))

    async def scenario():
        async with IdentityServer(server_a.server_context()) as a, IdentityServer(server_c.server_context()) as c:
            await exchange(client_tls.client_context(), a.port, "peer-a", remember=client_tls.remember_session)
            to_c = await exchange(client_tls.client_context(), c.port, "peer-c")
            to_a = await exchange(client_tls.client_context(), a.port, "peer-a")
            return to_c[1].resumed, to_a[1].resumed

    assert asyncio.run(scenario()) == (False, True)


def test_forget_session_forces_a_full_handshake(fabric):
    server_tls = PeerTLS(fabric.peer_dir("peer-a"))
    client_tls = PeerTLS(fabric.peer_dir("peer-b"))

    async def scenario():
        async with IdentityServer(server_tls.server_context()) as server:
            await exchange(client_tls.client_context(), server.port, "peer-a", remember=client_tls.remember_session)
            client_tls.forget_session("peer-a")
            _, saw, _ = await exchange(client_tls.client_context(), server.port, "peer-a")
            return saw.resumed

    assert asyncio.run(scenario()) is False


def test_resumption_survives_a_server_certificate_reload(fabric):
    server_tls = PeerTLS(fabric.peer_dir("peer-a"))
    client_tls = PeerTLS(fabric.peer_dir("peer-b"))

    async def scenario():
        async with IdentityServer(server_tls.server_context()) as server:
            await exchange(client_tls.client_context(), server.port, "peer-a", remember=client_tls.remember_session)
            fabric.add_peer("peer-a", force=True)
            assert server_tls.reload_if_changed()
            _, saw, _ = await exchange(client_tls.client_context(), server.port, "peer-a")
            return saw.resumed

    # Tickets are sealed by the listener's original context, which the reload does not replace.
    assert asyncio.run(scenario()) is True


def test_a_client_reload_starts_with_an_empty_session_cache(fabric):
    server_tls = PeerTLS(fabric.peer_dir("peer-a"))
    client_tls = PeerTLS(fabric.peer_dir("peer-b"))

    async def scenario():
        async with IdentityServer(server_tls.server_context()) as server:
            await exchange(client_tls.client_context(), server.port, "peer-a", remember=client_tls.remember_session)
            fabric.add_peer("peer-b", force=True)
            assert client_tls.reload_if_changed()
            reply, saw, _ = await exchange(client_tls.client_context(), server.port, "peer-a")
            return saw.resumed, server.seen[-1].serial

    resumed, serial_seen = asyncio.run(scenario())
    assert resumed is False  # a new identity needs a full handshake to be presented
    assert serial_seen == client_tls.identity.serial
