"""Hot reload of peer certificates under a listening asyncio server (files rewritten or swapped)."""

from __future__ import annotations

import asyncio
import logging
import os
import shutil
from pathlib import Path

import pytest

from controlplane import pki
from controlplane.tlsconfig import PeerTLS, TLSReloadError
from tests.integration.tls.tlspeers import REJECTED, IdentityServer, exchange

FILES = (pki.CERT_FILE, pki.KEY_FILE, pki.CA_FILE)


def secret_volume(target: Path, source: Path, generation: str) -> None:
    """Lay `source`'s files out the way the kubelet mounts a Secret, or swap to a new generation.

    `<target>/<file>` -> `..data/<file>`, `..data` -> `..<generation>`; an update writes a new
    generation directory and atomically renames a new `..data` symlink over the old one.
    """
    target.mkdir(exist_ok=True)
    shutil.copytree(source, target / f"..{generation}")
    os.symlink(f"..{generation}", target / "..data_tmp")
    os.replace(target / "..data_tmp", target / "..data")
    for name in FILES:
        if not (target / name).is_symlink():
            os.symlink(f"..data/{name}", target / name)


async def _serial_presented(server_tls: PeerTLS, client_tls: PeerTLS, port: int) -> int:
    _, saw, _ = await exchange(client_tls.client_context(), port, server_tls.name)
    return saw.serial


def test_rewritten_files_are_presented_to_the_next_connection(fabric):
    server_tls = PeerTLS(fabric.peer_dir("peer-a"))
    client_tls = PeerTLS(fabric.peer_dir("peer-b"))
    old_serial = server_tls.identity.serial

    async def scenario():
        async with IdentityServer(server_tls.server_context()) as server:
            before = await _serial_presented(server_tls, client_tls, server.port)
            fabric.add_peer("peer-a", force=True)  # `clusterlink create peer-cert --force`
            unchanged = await _serial_presented(server_tls, client_tls, server.port)
            assert server_tls.reload_if_changed() is True
            assert server_tls.reload_if_changed() is False  # nothing new since
            after = await _serial_presented(server_tls, client_tls, server.port)
            return before, unchanged, after, server.serving

    before, unchanged, after, serving = asyncio.run(scenario())
    new_serial = pki.load_peer_identity(fabric.peer_dir("peer-a")).serial
    assert before == unchanged == old_serial
    assert after == new_serial == server_tls.identity.serial != old_serial
    assert serving  # same listener throughout


def test_kubernetes_secret_symlink_swap_is_picked_up(fabric, tmp_path):
    mounted = tmp_path / "mounted"
    secret_volume(mounted, fabric.peer_dir("peer-a"), "gen1")
    server_tls = PeerTLS(mounted)
    client_tls = PeerTLS(fabric.peer_dir("peer-b"))

    async def scenario():
        async with IdentityServer(server_tls.server_context()) as server:
            before = await _serial_presented(server_tls, client_tls, server.port)
            fabric.add_peer("peer-a", force=True)
            secret_volume(mounted, fabric.peer_dir("peer-a"), "gen2")
            assert server_tls.reload_if_changed() is True
            after = await _serial_presented(server_tls, client_tls, server.port)
            return before, after

    before, after = asyncio.run(scenario())
    assert before != after == pki.load_peer_identity(fabric.peer_dir("peer-a")).serial


def test_client_reload_presents_the_new_client_certificate(fabric):
    server_tls = PeerTLS(fabric.peer_dir("peer-a"))
    client_tls = PeerTLS(fabric.peer_dir("peer-b"))

    async def scenario():
        async with IdentityServer(server_tls.server_context()) as server:
            await exchange(client_tls.client_context(), server.port, "peer-a")
            fabric.add_peer("peer-b", force=True)
            assert client_tls.reload_if_changed()
            await exchange(client_tls.client_context(), server.port, "peer-a")
            return [s.serial for s in server.seen]

    first, second = asyncio.run(scenario())
    assert first != second == client_tls.identity.serial


def test_bad_new_files_keep_the_old_certificate_and_are_reported_once(fabric):
    directory = fabric.peer_dir("peer-a")
    server_tls = PeerTLS(directory)
    client_tls = PeerTLS(fabric.peer_dir("peer-b"))
    old_serial = server_tls.identity.serial

    async def scenario():
        async with IdentityServer(server_tls.server_context()) as server:
            (directory / pki.CERT_FILE).write_text("not a certificate\n")
            with pytest.raises(TLSReloadError, match=r"cert\.pem.*not a valid PEM.*still using the previous"):
                server_tls.reload_if_changed()
            assert server_tls.reload_if_changed() is False  # same bad state: not reported again
            assert server_tls.last_reload_error is not None
            still = await _serial_presented(server_tls, client_tls, server.port)
            fabric.add_peer("peer-a", force=True)
            assert server_tls.reload_if_changed() is True
            assert server_tls.last_reload_error is None
            fixed = await _serial_presented(server_tls, client_tls, server.port)
            return still, fixed

    still, fixed = asyncio.run(scenario())
    assert still == old_serial
    assert fixed == server_tls.identity.serial != old_serial


def test_certificate_and_key_updated_one_after_the_other(fabric, tmp_path):
    directory = fabric.peer_dir("peer-a")
    server_tls = PeerTLS(directory)
    old_serial = server_tls.identity.serial
    ca = pki.load_fabric(fabric.root, fabric.name)
    new = pki.write_peer_dir(tmp_path / "new", pki.issue_peer_cert(ca, "peer-a"), ca.cert)

    shutil.copy(new / pki.CERT_FILE, directory / pki.CERT_FILE)  # the new cert, the old key
    with pytest.raises(TLSReloadError, match="does not match"):
        server_tls.reload_if_changed()
    assert server_tls.identity.serial == old_serial
    shutil.copy(new / pki.KEY_FILE, directory / pki.KEY_FILE)
    assert server_tls.reload_if_changed() is True
    assert server_tls.identity.serial == pki.load_peer_identity(new).serial


def test_another_peers_certificate_is_refused(fabric):
    directory = fabric.peer_dir("peer-a")
    server_tls = PeerTLS(directory)
    for name in FILES:
        shutil.copy(fabric.peer_dir("peer-b") / name, directory / name)
    with pytest.raises(TLSReloadError, match="expected 'peer-a'"):
        server_tls.reload_if_changed()
    assert server_tls.name == "peer-a"


def test_deleted_files_keep_the_old_certificate(fabric):
    directory = fabric.peer_dir("peer-a")
    server_tls = PeerTLS(directory)
    (directory / pki.KEY_FILE).unlink()
    with pytest.raises(TLSReloadError, match="does not exist"):
        server_tls.reload_if_changed()
    assert server_tls.server_context() is not None


def test_ca_reload_changes_whom_the_listener_trusts(fabric, other_fabric):
    directory = fabric.peer_dir("peer-a")
    server_tls = PeerTLS(directory)
    old_client = PeerTLS(fabric.peer_dir("peer-b"))
    new_client = PeerTLS(other_fabric.peer_dir("peer-b"))

    async def scenario():
        async with IdentityServer(server_tls.server_context()) as server:
            await exchange(old_client.client_context(), server.port, "peer-a")
            for name in FILES:  # the peer moves to the other fabric (new CA, new certificate)
                shutil.copy(other_fabric.peer_dir("peer-a") / name, directory / name)
            assert server_tls.reload_if_changed()
            await exchange(new_client.client_context(), server.port, "peer-a")
            with pytest.raises(REJECTED):
                await exchange(old_client.client_context(), server.port, "peer-a")
            return [s.serial for s in server.seen]

    serials = asyncio.run(scenario())
    assert serials == [old_client.identity.serial, new_client.identity.serial]


def test_watch_reloads_and_logs(fabric, caplog):
    directory = fabric.peer_dir("peer-a")
    server_tls = PeerTLS(directory)
    old_serial = server_tls.identity.serial

    async def wait_for(predicate):
        async with asyncio.timeout(5):
            while not predicate():
                await asyncio.sleep(0.01)

    async def scenario():
        async with asyncio.TaskGroup() as group:
            watcher = group.create_task(server_tls.watch(interval=0.02), name="peer-cert-watch")
            (directory / pki.CERT_FILE).write_text("garbage\n")
            await wait_for(lambda: server_tls.last_reload_error is not None)
            fabric.add_peer("peer-a", force=True)
            await wait_for(lambda: server_tls.identity.serial != old_serial)
            watcher.cancel()

    with caplog.at_level(logging.INFO, logger="controlplane.tlsconfig"):
        asyncio.run(scenario())
    messages = [r.getMessage() for r in caplog.records]
    assert any("not reloaded" in m and "cert.pem" in m for m in messages)
    assert any("reloaded: peer 'peer-a'" in m for m in messages)
