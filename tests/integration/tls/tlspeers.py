"""Test helpers: a real asyncio TLS server on 127.0.0.1 and a client exchange, both reporting what they saw."""

from __future__ import annotations

import asyncio
import datetime
import ssl
from dataclasses import dataclass, field
from pathlib import Path

from controlplane import pki
from controlplane.tlsconfig import peer_name_from_peercert

TIMEOUT = 10.0

# What a client may see when the server refuses its certificate (TLS 1.3: after the client's
# handshake has completed, on its first read) or when it refuses the server's.
REJECTED = (ssl.SSLError, ConnectionError, asyncio.IncompleteReadError)


@dataclass(frozen=True)
class Seen:
    """One connection as one side saw it."""

    peer: str | None  # the other side's DNS SAN
    serial: int  # the other side's certificate serial
    resumed: bool
    cipher: str


def _seen(ssl_object: ssl.SSLObject) -> Seen:
    cert = ssl_object.getpeercert()
    return Seen(
        peer=peer_name_from_peercert(cert),
        serial=int(cert["serialNumber"], 16),
        resumed=ssl_object.session_reused,
        cipher=ssl_object.cipher()[0],
    )


@dataclass
class IdentityServer:
    """Answers each connection's 4-byte request with the client's peer name and a newline."""

    context: ssl.SSLContext
    seen: list[Seen] = field(default_factory=list)
    port: int = 0

    async def __aenter__(self) -> IdentityServer:
        self._server = await asyncio.start_server(self._handle, "127.0.0.1", 0, ssl=self.context)
        self.port = self._server.sockets[0].getsockname()[1]
        return self

    async def __aexit__(self, *exc_info) -> None:
        self._server.close()
        await self._server.wait_closed()

    @property
    def serving(self) -> bool:
        return self._server.is_serving()

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        seen = _seen(writer.get_extra_info("ssl_object"))
        self.seen.append(seen)
        try:
            await reader.readexactly(4)
            writer.write(f"{seen.peer}\n".encode())
            await writer.drain()
        finally:
            writer.close()
            await writer.wait_closed()


async def exchange(
    context: ssl.SSLContext, port: int, server_hostname: str, *, remember=None
) -> tuple[bytes, Seen, bool]:
    """Connect, send a request, read the reply; (reply, what the client saw, session remembered).

    `remember` is a callable(server_name, ssl_object) -> bool called after the reply was read
    (when the TLS 1.3 session tickets have arrived), e.g. `PeerTLS.remember_session`.
    """
    reader, writer = await asyncio.wait_for(
        asyncio.open_connection("127.0.0.1", port, ssl=context, server_hostname=server_hostname), TIMEOUT
    )
    try:
        writer.write(b"ping")
        await writer.drain()
        reply = await asyncio.wait_for(reader.readuntil(b"\n"), TIMEOUT)
    except BaseException:
        writer.close()  # the connection is broken; the exception says why, no need to wait
        raise
    ssl_object = writer.get_extra_info("ssl_object")
    remembered = remember(server_hostname, ssl_object) if remember else False
    seen = _seen(ssl_object)
    writer.close()
    await writer.wait_closed()
    return reply, seen, remembered


def raw_context(side: int, cert_dir: Path, *, check_hostname: bool = True) -> ssl.SSLContext:
    """A plain TLS 1.3 mTLS context from files, bypassing PeerTLS's validation (for bad certs)."""
    context = ssl.SSLContext(side)
    context.minimum_version = ssl.TLSVersion.TLSv1_3
    context.verify_mode = ssl.CERT_REQUIRED
    if side == ssl.PROTOCOL_TLS_CLIENT:
        context.check_hostname = check_hostname
    context.load_verify_locations(cert_dir / pki.CA_FILE)
    context.load_cert_chain(cert_dir / pki.CERT_FILE, cert_dir / pki.KEY_FILE)
    return context


def write_expired_peer(fabric_root: Path, fabric: str, name: str, directory: Path) -> Path:
    """A peer directory whose certificate (signed by the real fabric CA) expired a day ago."""
    ca = pki.load_fabric(fabric_root, fabric)
    past = datetime.datetime.now(datetime.timezone.utc) - datetime.timedelta(days=3)
    peer = pki.issue_peer_cert(ca, name, days=2, now=past)
    return pki.write_peer_dir(directory, peer, ca.cert)
