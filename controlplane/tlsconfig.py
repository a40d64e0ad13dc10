"""TLS contexts of the peer mTLS link (stdlib `ssl`), reloaded when the certificate files change.

`PeerTLS(certs_dir)` reads a peer certificate directory (`cert.pem`, `key.pem`, `ca.pem`, as
written by `clusterlink create peer-cert`), validates it and builds:

- `server_context()`: TLS 1.3 only, our certificate, client certificates required and verified
  against `ca.pem`. The other side's identity is the DNS SAN of its certificate:
  `peer_name_from_peercert(writer.get_extra_info("peercert"))`.
- `client_context()`: TLS 1.3 only, our certificate, the server verified against `ca.pem` with
  `check_hostname`: connect with `server_hostname=<peer name>` (the `Peer` object's name), so the
  server's SAN must be that name. It is a `ResumingClientContext` (session resumption, below).

Hot reload. `reload_if_changed()` compares the files' stat signatures (device, inode, size, mtime,
ctime, following symlinks, so both rewriting a file in place and a Kubernetes Secret volume's
atomic `..data` symlink swap are seen) and, when they changed, validates and loads the new
material. A bad new state (garbage, key not matching, expired, other CA, another peer's name,
half-written) raises `TLSReloadError` once and the previous material stays in use; the same bad
state is not reported again, and the next change is tried afresh (a cert and key updated one after
the other load at the second step). The peer name is pinned by the first load: a process does not
change identity. `watch()` is the polling loop that logs both outcomes; run it in the process's
task group.

Reload reaches connections as follows:
- server: every server context we hand out has an `sni_callback` that switches the connection's
  `SSLObject.context` to the current one during the ClientHello, so an asyncio server created once
  with `ssl=tls.server_context()` presents the new certificate and trusts the new `ca.pem` on its
  next handshake. Session tickets stay those of the context the listener was created with, so TLS
  1.3 resumption keeps working across reloads; a resumed session keeps the identity verified by
  its full handshake (ticket lifetime: OpenSSL's default, 2 hours). Consequence: removing a CA
  from `ca.pem` refuses new full handshakes at once, but a client holding a ticket from before can
  still resume until the ticket expires, and established connections are not cut; restart the
  listener to revoke immediately (Python offers no way to rotate the ticket keys).
- client: call `client_context()` for every new connection; it returns the current context.

Session resumption (clients, asyncio). `asyncio.open_connection` has no `session=` argument, but
asyncio builds each connection with `context.wrap_bio(..., server_hostname=...)`; the
`ResumingClientContext` overrides `wrap_bio` (and `wrap_socket`) to pass the session it cached for
that server name. After a connection, call `tls.remember_session(server_name, ssl_object)`. In TLS
1.3 the server sends its session tickets after the handshake and the client only processes them
when it next reads, so call it after the first bytes from the server were read (the HTTP response
to `/healthz`, `/authz` or `CONNECT`), not right after `open_connection`; it returns False while
there is no ticket yet. A session belongs to the context that made it, so a reload starts an empty
cache. Check `ssl_object.session_reused` to see that it worked.

AES-128. Python 3.11 has no API for TLS 1.3 cipher suites, and OpenSSL prefers
TLS_AES_256_GCM_SHA384; TLS_AES_128_GCM_SHA256 moves about a third more data per CPU second
(notes/feasibility.md section 4). `write_openssl_conf(path)` writes an OpenSSL configuration that
puts it first; it takes effect only for a process started with `OPENSSL_CONF=<path>` in its
environment (OpenSSL reads the file once, when it initialises, i.e. at `import ssl`). Optional and
off by default: nothing here sets it.

Validation. `check=` says how a directory is validated: `full_check` (the default: every rule of
the certificate profile, with `cryptography`, in `controlplane.pki`) or `handshake_check` (OpenSSL
verifying a handshake of the certificate with itself, in `controlplane.peercerts`). The gateway's
processes use the second, so that none of them maps `cryptography` (about 10 MB each).
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
import os
import ssl
import time
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from controlplane import peercerts

logger = logging.getLogger(__name__)

DEFAULT_RELOAD_INTERVAL = 5.0
MAX_CACHED_SESSIONS = 1024


OPENSSL_CONF_AES128 = """\
# OpenSSL configuration written by clusterlink (controlplane.tlsconfig.write_openssl_conf).
# Start a process with OPENSSL_CONF=<this file> to make TLS 1.3 prefer AES-128-GCM, which costs
# less CPU per byte than the default AES-256-GCM; the other suites stay as fallbacks.
# It replaces the system openssl.cnf for that process; the two settings after Ciphersuites keep
# Debian's defaults for any TLS 1.2 connection the process makes.
openssl_conf = clusterlink_init

[clusterlink_init]
ssl_conf = clusterlink_ssl

[clusterlink_ssl]
system_default = clusterlink_tls

[clusterlink_tls]
Ciphersuites = TLS_AES_128_GCM_SHA256:TLS_AES_256_GCM_SHA384:TLS_CHACHA20_POLY1305_SHA256
MinProtocol = TLSv1.2
CipherString = DEFAULT@SECLEVEL=2
"""


class TLSConfigError(Exception):
    """Peer certificates that cannot be used for TLS; the message names the directory and why."""


class TLSReloadError(TLSConfigError):
    """New peer certificate files were refused; the previous ones are still in use."""


def peer_name_from_peercert(peercert: dict | None) -> str | None:
    """The first DNS subjectAltName of a certificate as `getpeercert()` returns it, else None."""
    if not peercert:
        return None
    for kind, value in peercert.get("subjectAltName", ()):
        if kind == "DNS":
            return value
    return None


def write_openssl_conf(path: Path | str) -> Path:
    """Write `OPENSSL_CONF_AES128` to `path` (see the module docstring for how to use it)."""
    path = Path(path)
    path.write_text(OPENSSL_CONF_AES128)
    return path


class ResumingClientContext(ssl.SSLContext):
    """A client context that offers the TLS session it cached for the server name it connects to."""

    def __init__(self, protocol: int = ssl.PROTOCOL_TLS_CLIENT) -> None:
        super().__init__()
        self._sessions: OrderedDict[str, ssl.SSLSession] = OrderedDict()

    def session_for(self, server_name: str) -> ssl.SSLSession | None:
        """The cached, not yet expired session for `server_name`, if any."""
        session = self._sessions.get(server_name)
        if session is not None and session.time + session.timeout <= time.time():
            del self._sessions[server_name]
            return None
        return session

    def remember_session(self, server_name: str, ssl_object: ssl.SSLObject | ssl.SSLSocket) -> bool:
        """Cache the session of a connection made with this context; True if it can be resumed."""
        session = ssl_object.session
        if ssl_object.context is not self or session is None or not session.has_ticket:
            return False
        self._sessions[server_name] = session
        self._sessions.move_to_end(server_name)
        while len(self._sessions) > MAX_CACHED_SESSIONS:
            self._sessions.popitem(last=False)
        return True

    def forget_session(self, server_name: str) -> None:
        """Drop the cached session for `server_name` (e.g. after a failed handshake)."""
        self._sessions.pop(server_name, None)

    def wrap_bio(
        self,
        incoming: ssl.MemoryBIO,
        outgoing: ssl.MemoryBIO,
        server_side: bool = False,
        server_hostname: str | None = None,
        session: ssl.SSLSession | None = None,
    ) -> ssl.SSLObject:
        if session is None and not server_side and server_hostname is not None:
            session = self.session_for(server_hostname)
        return super().wrap_bio(
            incoming, outgoing, server_side=server_side, server_hostname=server_hostname, session=session
        )

    def wrap_socket(
        self,
        sock,
        server_side: bool = False,
        do_handshake_on_connect: bool = True,
        suppress_ragged_eofs: bool = True,
        server_hostname: str | None = None,
        session: ssl.SSLSession | None = None,
    ) -> ssl.SSLSocket:
        if session is None and not server_side and server_hostname is not None:
            session = self.session_for(server_hostname)
        return super().wrap_socket(
            sock,
            server_side=server_side,
            do_handshake_on_connect=do_handshake_on_connect,
            suppress_ragged_eofs=suppress_ragged_eofs,
            server_hostname=server_hostname,
            session=session,
        )


# How a directory's files are validated: (files, directory, expected name) -> identity, or PKIError.
IdentityCheck = Callable[[peercerts.PeerFiles, Path, "str | None"], peercerts.PeerIdentity]


def full_check(files: peercerts.PeerFiles, certs_dir: Path, expected_name: str | None) -> peercerts.PeerIdentity:
    """Every rule of the certificate profile, with `cryptography` (`controlplane.pki`)."""
    from controlplane.pki import peer_identity_from_pem  # imported by the processes that use it only

    return peer_identity_from_pem(files.cert, files.key, files.ca, certs_dir=certs_dir, expected_name=expected_name)


def handshake_check(files: peercerts.PeerFiles, certs_dir: Path, expected_name: str | None) -> peercerts.PeerIdentity:
    """OpenSSL's verification of a handshake with itself, no `cryptography` (`controlplane.peercerts`):
    what the gateway's processes use."""
    return peercerts.check_by_handshake(files, certs_dir, expected_name=expected_name)


@dataclass(frozen=True)
class _Material:
    identity: peercerts.PeerIdentity
    digest: bytes
    server_context: ssl.SSLContext
    client_context: ResumingClientContext


_Signature = tuple[tuple[int, int, int, int, int] | None, ...]


class PeerTLS:
    """Server and client TLS contexts of one peer, from a certificate directory, hot-reloaded."""

    def __init__(self, certs_dir: Path | str, *, expected_name: str | None = None,
                 check: IdentityCheck | None = None) -> None:
        self._dir = Path(certs_dir)
        self._check = check or full_check
        signature = self._signature()
        self._material = self._load(expected_name)
        self._name = self._material.identity.name
        self._loaded_signature = signature
        self._failed_signature: _Signature | None = None
        self.last_reload_error: TLSReloadError | None = None

    @property
    def name(self) -> str:
        """Our peer name (the DNS SAN of our certificate)."""
        return self._name

    @property
    def identity(self) -> peercerts.PeerIdentity:
        """The certificate in use (name, files, serial, expiry)."""
        return self._material.identity

    @property
    def certs_dir(self) -> Path:
        return self._dir

    def server_context(self) -> ssl.SSLContext:
        """The server context to listen with; it follows reloads by itself (see module docstring)."""
        return self._material.server_context

    def client_context(self) -> ResumingClientContext:
        """The current client context: fetch it for every new connection."""
        return self._material.client_context

    def remember_session(self, server_name: str, ssl_object: ssl.SSLObject | ssl.SSLSocket) -> bool:
        """Cache a client connection's session for resumption (call after reading from it)."""
        context = ssl_object.context
        if not isinstance(context, ResumingClientContext):
            return False
        return context.remember_session(server_name, ssl_object)

    def forget_session(self, server_name: str) -> None:
        """Drop the cached session for `server_name` from the current client context."""
        self._material.client_context.forget_session(server_name)

    # --- reload ----------------------------------------------------------------------------

    def reload_if_changed(self) -> bool:
        """Load the files again if they changed; True when new material is now in use.

        Raises TLSReloadError (once per bad state) when the new files cannot be used; the previous
        material stays in use.
        """
        signature = self._signature()
        if signature == self._loaded_signature:
            self._failed_signature = None
            self.last_reload_error = None
            return False
        if signature == self._failed_signature:
            return False
        try:
            material = self._load(self._name)
        except TLSConfigError as exc:
            self._failed_signature = signature
            old = self._material.identity
            error = TLSReloadError(
                f"{exc}; still using the previous certificate of peer {old.name!r} "
                f"(serial {old.serial:x}, valid until {old.not_after:%Y-%m-%d %H:%M:%S} UTC)"
            )
            self.last_reload_error = error
            raise error from exc
        self._loaded_signature = signature
        self._failed_signature = None
        self.last_reload_error = None
        if material.digest == self._material.digest:
            return False
        self._material = material
        return True

    async def watch(self, interval: float = DEFAULT_RELOAD_INTERVAL,
                    on_reload: Callable[[], None] | None = None) -> None:
        """Poll for changed certificate files every `interval` seconds, forever; log each outcome.
        `on_reload` runs after each successful reload (e.g. to drop connections made with the old
        certificates)."""
        while True:
            await asyncio.sleep(interval)
            try:
                reloaded = self.reload_if_changed()
            except TLSReloadError as exc:
                logger.error("Peer certificates in %s not reloaded: %s", self._dir, exc)
                continue
            if reloaded:
                identity = self._material.identity
                logger.info(
                    "Peer certificates in %s reloaded: peer %r, serial %x, valid until %s",
                    self._dir,
                    identity.name,
                    identity.serial,
                    identity.not_after.isoformat(),
                )
                if on_reload is not None:
                    on_reload()

    # --- loading ---------------------------------------------------------------------------

    def _signature(self) -> _Signature:
        entries = []
        for filename in (peercerts.CERT_FILE, peercerts.KEY_FILE, peercerts.CA_FILE):
            try:
                st = os.stat(self._dir / filename)
            except FileNotFoundError:
                entries.append(None)
                continue
            except OSError:
                entries.append((-1, -1, -1, -1, -1))  # unreadable: _load reports why
                continue
            entries.append((st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns, st.st_ctime_ns))
        return tuple(entries)

    def _read(self) -> tuple[peercerts.PeerFiles, bytes]:
        try:
            files = peercerts.read_peer_dir(self._dir)
        except peercerts.PKIError as exc:
            raise TLSConfigError(str(exc)) from exc
        return files, hashlib.sha256(b"\0".join(files)).digest()

    def _load(self, expected_name: str | None) -> _Material:
        # The files are read once for validation and once more by OpenSSL (load_cert_chain only
        # takes paths). If they changed in between, start over so that what runs was validated.
        for _attempt in range(3):
            files, digest = self._read()
            try:
                identity = self._check(files, self._dir, expected_name)
            except peercerts.PKIError as exc:
                raise TLSConfigError(str(exc)) from exc
            cadata = peercerts.pem_text(files.ca)
            server = self._build(ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER), identity, cadata)
            server.sni_callback = self._select_current
            client = self._build(ResumingClientContext(ssl.PROTOCOL_TLS_CLIENT), identity, cadata)
            client.check_hostname = True
            if self._read()[1] == digest:
                return _Material(identity, digest, server, client)
        raise TLSConfigError(f"the peer certificate files in {self._dir} kept changing while being loaded")

    def _build(self, context: ssl.SSLContext, identity: peercerts.PeerIdentity, cadata: str) -> ssl.SSLContext:
        context.minimum_version = ssl.TLSVersion.TLSv1_3
        context.verify_mode = ssl.CERT_REQUIRED
        try:
            context.load_verify_locations(cadata=cadata)
            context.load_cert_chain(identity.cert_path, identity.key_path)
        except (ssl.SSLError, OSError) as exc:
            raise TLSConfigError(f"cannot load the peer certificate from {self._dir}: {exc}") from exc
        return context

    def _select_current(self, ssl_object: ssl.SSLObject, server_name: str | None, context: ssl.SSLContext) -> None:
        # sni_callback: runs in every server handshake, while the ClientHello is processed.
        current = self._material.server_context
        if context is not current:
            ssl_object.context = current
