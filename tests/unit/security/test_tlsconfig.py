"""controlplane.tlsconfig without sockets: context settings, identity helpers, load errors, the OpenSSL conf."""

from __future__ import annotations

import os
import ssl

import pytest

from controlplane import pki
from controlplane.tlsconfig import (
    OPENSSL_CONF_AES128,
    PeerTLS,
    ResumingClientContext,
    TLSConfigError,
    peer_name_from_peercert,
    write_openssl_conf,
)


@pytest.fixture
def peer_dir(tmp_path):
    pki.create_fabric(tmp_path)
    return pki.create_peer_cert(tmp_path, "peer-a")


@pytest.mark.parametrize(
    "peercert, expected",
    [
        ({"subjectAltName": (("DNS", "peer-a"),)}, "peer-a"),
        ({"subjectAltName": (("IP Address", "10.0.0.1"), ("DNS", "peer-b"), ("DNS", "x"))}, "peer-b"),
        ({"subjectAltName": (("URI", "spiffe://x"),)}, None),
        ({"subject": ((("commonName", "peer-a"),),)}, None),  # the CN is not an identity
        ({}, None),
        (None, None),
    ],
)
def test_peer_name_from_peercert(peercert, expected):
    assert peer_name_from_peercert(peercert) == expected


def test_context_settings(peer_dir):
    tls = PeerTLS(peer_dir)
    assert tls.name == "peer-a"
    assert tls.identity.serial == pki.load_peer_identity(peer_dir).serial
    server, client = tls.server_context(), tls.client_context()
    for context in (server, client):
        assert context.minimum_version == ssl.TLSVersion.TLSv1_3
        assert context.verify_mode == ssl.CERT_REQUIRED
        assert context.get_ca_certs()[0]["subject"] == ((("commonName", "default_fabric"),),)
    assert server.sni_callback is not None  # the hook that makes reload reach a running listener
    assert isinstance(client, ResumingClientContext)
    assert client.check_hostname is True
    assert tls.server_context() is server and tls.client_context() is client  # until a reload


def test_unchanged_content_is_not_a_reload(peer_dir):
    tls = PeerTLS(peer_dir)
    server = tls.server_context()
    cert = peer_dir / pki.CERT_FILE
    cert.write_bytes(cert.read_bytes())  # rewritten, same bytes (e.g. a resync of the Secret)
    assert tls.reload_if_changed() is False
    assert tls.server_context() is server


def test_expected_name(peer_dir):
    assert PeerTLS(peer_dir, expected_name="peer-a").name == "peer-a"
    with pytest.raises(TLSConfigError, match="expected 'peer-b'"):
        PeerTLS(peer_dir, expected_name="peer-b")


@pytest.mark.parametrize(
    "damage, message",
    [
        (lambda d: (d / pki.KEY_FILE).unlink(), "does not exist"),
        (lambda d: (d / pki.CA_FILE).write_text("x"), "ca.pem is not a valid PEM"),
        (lambda d: os.rename(d, d.with_name("gone")), "does not exist: run `clusterlink create peer-cert"),
    ],
)
def test_unusable_directory_is_a_clear_error(peer_dir, damage, message):
    damage(peer_dir)
    with pytest.raises(TLSConfigError, match=message):
        PeerTLS(peer_dir)


def test_remember_session_needs_a_ticket_and_its_own_context(peer_dir):
    tls = PeerTLS(peer_dir)
    client = tls.client_context()
    unstarted = client.wrap_bio(ssl.MemoryBIO(), ssl.MemoryBIO(), server_hostname="peer-b")
    assert tls.remember_session("peer-b", unstarted) is False  # no handshake, no session
    foreign = ssl.create_default_context().wrap_bio(ssl.MemoryBIO(), ssl.MemoryBIO(), server_hostname="x")
    assert tls.remember_session("x", foreign) is False
    assert client.session_for("peer-b") is None


def test_openssl_conf(tmp_path):
    path = write_openssl_conf(tmp_path / "aes128.cnf")
    text = path.read_text()
    assert text == OPENSSL_CONF_AES128
    suites = next(line for line in text.splitlines() if line.startswith("Ciphersuites"))
    assert suites.split("=", 1)[1].strip().split(":")[0] == "TLS_AES_128_GCM_SHA256"
    assert "openssl_conf = " in text
