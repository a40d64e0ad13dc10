"""The optional OpenSSL configuration makes TLS 1.3 negotiate AES-128-GCM (and only when set)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

from controlplane.tlsconfig import write_openssl_conf

# Runs in a fresh interpreter: OpenSSL reads OPENSSL_CONF once, when `ssl` is first imported.
HANDSHAKE = """
import asyncio, sys
from controlplane.tlsconfig import PeerTLS
from tests.integration.tls.tlspeers import IdentityServer, exchange

async def main(server_dir, client_dir):
    server_tls, client_tls = PeerTLS(server_dir), PeerTLS(client_dir)
    async with IdentityServer(server_tls.server_context()) as server:
        _, saw, _ = await exchange(client_tls.client_context(), server.port, server_tls.name)
    print(saw.cipher, server.seen[0].cipher)

asyncio.run(main(sys.argv[1], sys.argv[2]))
"""

ROOT = Path(__file__).resolve().parents[3]


def _negotiated(fabric, openssl_conf: Path | None) -> list[str]:
    env = {k: v for k, v in os.environ.items() if k != "OPENSSL_CONF"}
    if openssl_conf is not None:
        env["OPENSSL_CONF"] = str(openssl_conf)
    result = subprocess.run(
        [sys.executable, "-c", HANDSHAKE, str(fabric.peer_dir("peer-a")), str(fabric.peer_dir("peer-b"))],
        cwd=ROOT, env=env, capture_output=True, text=True, timeout=60, check=True,
    )
    return result.stdout.split()


def test_aes128_conf_is_negotiated_by_both_sides(fabric, tmp_path):
    conf = write_openssl_conf(tmp_path / "aes128.cnf")
    assert _negotiated(fabric, conf) == ["TLS_AES_128_GCM_SHA256"] * 2


def test_default_is_off(fabric):
    assert _negotiated(fabric, None) == ["TLS_AES_256_GCM_SHA384"] * 2
