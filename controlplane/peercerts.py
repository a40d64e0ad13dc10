"""A peer's certificate directory without the `cryptography` package: its layout, peer names, and an
identity check done by OpenSSL itself (through `ssl`).

`controlplane.pki` creates certificates and validates them with `cryptography`; importing that costs
a process about 10 MB (bench memory section). The gateway's processes only need to know that the
files in `--certs` make a usable identity, and which, so they use `check_by_handshake`: the
certificate, its key and the CA file are loaded into a server and a client context, and the two
run one mutual TLS 1.3 handshake with each other in memory. That is the verification every peer
does on every tunnel, by the same OpenSSL: the key matches the certificate, the certificate chains
to a CA of ca.pem and is valid now (the CA too), and its extended key usage allows serverAuth (the
client's check) and clientAuth (the server's). The certificate the client received is then read
for the rest of the profile: exactly one subjectAltName, a DNS name that is a valid peer name,
equal to the CN and to the expected name. OpenSSL's own count of CA certificates in a store
(`cert_store_stats`) says that every certificate of ca.pem is a CA and that the peer certificate is
not one. What only `pki` checks: that the peer certificate is signed directly by a CA of ca.pem
(OpenSSL accepts a chain through intermediates).

`pem_certificates` and `not_after` read PEM and DER directly (enough of X.509 to find the validity;
`certmetrics` uses them for the expiry gauge). `pki` re-exports the names of this module.
"""

from __future__ import annotations

import base64
import binascii
import datetime
import re
import ssl
from dataclasses import dataclass
from pathlib import Path
from typing import NamedTuple

CERT_FILE = "cert.pem"
KEY_FILE = "key.pem"
CA_FILE = "ca.pem"
MAX_PEER_NAME_LENGTH = 253

_LABEL = re.compile(r"[a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?")
PEER_NAME_RULE = (
    "a peer name is a DNS name of lowercase RFC 1123 labels, as it becomes the certificate's SAN, "
    "the TLS server name and the Peer object's name"
)
_PEM_CERT = re.compile(rb"-----BEGIN CERTIFICATE-----\r?\n(.*?)-----END CERTIFICATE-----", re.S)
_HANDSHAKE_ROUNDS = 8


class PKIError(Exception):
    """A certificate, key or name that cannot be created, read or trusted; the message says why."""


@dataclass(frozen=True)
class PeerIdentity:
    """A validated peer certificate directory: who we are, where the files are, until when."""

    name: str
    cert_path: Path
    key_path: Path
    ca_path: Path
    not_after: datetime.datetime  # timezone-aware, UTC
    serial: int


class PeerFiles(NamedTuple):
    """The raw contents of a peer certificate directory."""

    cert: bytes
    key: bytes
    ca: bytes


# --- names -------------------------------------------------------------------------------------


def peer_name_problem(name: object) -> str | None:
    """Why `name` is not a valid peer name, or None when it is."""
    if not isinstance(name, str):
        return f"expected a string, got {type(name).__name__}"
    if not name:
        return "it is empty"
    if len(name) > MAX_PEER_NAME_LENGTH:
        return f"it is {len(name)} characters long (at most {MAX_PEER_NAME_LENGTH})"
    for label in name.split("."):
        if not label:
            return "it has an empty label (leading, trailing or doubled '.')"
        if len(label) > 63:
            return f"label {label[:20]!r}... is {len(label)} characters long (at most 63)"
        if not _LABEL.fullmatch(label):
            if label != label.lower():
                return f"label {label!r} has uppercase letters"
            if label.startswith("-") or label.endswith("-"):
                return f"label {label!r} starts or ends with '-'"
            return f"label {label!r} has characters other than a-z, 0-9 and '-'"
    return None


def validate_peer_name(name: str) -> str:
    """Return `name` if it is a valid peer name, else raise PKIError saying which rule it breaks."""
    problem = peer_name_problem(name)
    if problem is not None:
        raise PKIError(f"invalid peer name {name!r}: {problem}; {PEER_NAME_RULE}")
    return name


# --- files -------------------------------------------------------------------------------------


def read_file(path: Path, what: str) -> bytes:
    try:
        return path.read_bytes()
    except FileNotFoundError:
        raise PKIError(f"{what} {path} does not exist") from None
    except IsADirectoryError:
        raise PKIError(f"{what} {path} is a directory, not a file") from None
    except OSError as exc:
        raise PKIError(f"cannot read {what} {path}: {exc.strerror or exc}") from exc


def read_peer_dir(certs_dir: Path | str) -> PeerFiles:
    """Read `<certs_dir>/{cert,key,ca}.pem` as bytes (PKIError naming a missing/unreadable file)."""
    certs_dir = Path(certs_dir)
    if not certs_dir.is_dir():
        raise PKIError(
            f"peer certificate directory {certs_dir} does not exist: "
            "run `clusterlink create peer-cert --name <peer>` and pass <path>/<fabric>/<peer>"
        )
    return PeerFiles(
        read_file(certs_dir / CERT_FILE, "peer certificate"),
        read_file(certs_dir / KEY_FILE, "peer key"),
        read_file(certs_dir / CA_FILE, "fabric CA certificate"),
    )


# --- PEM and just enough DER -------------------------------------------------------------------


def pem_certificates(data: bytes, source: str) -> list[bytes]:
    """The DER of every certificate in a PEM blob; PKIError naming `source` if there is none."""
    out = []
    for body in _PEM_CERT.findall(data):
        try:
            out.append(base64.b64decode(b"".join(body.split()), validate=True))
        except (binascii.Error, ValueError) as exc:
            raise PKIError(f"{source} is not a valid PEM certificate file (bad base64)") from exc
    if not out:
        raise PKIError(f"{source} holds no certificate")
    return out


def _tlv(data: bytes, at: int) -> tuple[int, int, int]:
    """(tag, start of the value, end of the value) of the DER element at `at`."""
    if at + 2 > len(data):
        raise ValueError("truncated")
    tag, length = data[at], data[at + 1]
    at += 2
    if length & 0x80:
        count = length & 0x7F
        if count == 0 or count > 4 or at + count > len(data):
            raise ValueError("bad length")
        length = int.from_bytes(data[at:at + count], "big")
        at += count
    if at + length > len(data):
        raise ValueError("truncated")
    return tag, at, at + length


def _der_time(tag: int, value: bytes) -> datetime.datetime:
    text = value.decode("ascii")
    if tag == 0x17:  # UTCTime, YYMMDDHHMMSSZ (RFC 5280: 50-99 is 19xx)
        year = int(text[:2])
        text = f"{1900 + year if year >= 50 else 2000 + year}{text[2:]}"
    elif tag != 0x18:  # GeneralizedTime, YYYYMMDDHHMMSSZ
        raise ValueError("not a time")
    if not re.fullmatch(r"\d{14}Z", text):
        raise ValueError("not a UTC time")
    return datetime.datetime.strptime(text, "%Y%m%d%H%M%SZ").replace(tzinfo=datetime.timezone.utc)


def not_after(der: bytes) -> datetime.datetime:
    """notAfter of a DER certificate (ValueError when it is not one)."""
    _, cert, _ = _tlv(der, 0)  # Certificate
    tag, at, end = _tlv(der, cert)  # tbsCertificate
    if tag != 0x30:
        raise ValueError("not a certificate")
    tag, start, stop = _tlv(der, at)
    if tag == 0xA0:  # [0] version
        tag, start, stop = _tlv(der, stop)  # serialNumber
    for _field in ("signature", "issuer"):
        _, _, stop = _tlv(der, stop)
    tag, validity, _ = _tlv(der, stop)
    if tag != 0x30:
        raise ValueError("no validity")
    _, _, before_end = _tlv(der, validity)  # notBefore
    tag, start, stop = _tlv(der, before_end)  # notAfter
    return _der_time(tag, der[start:stop])


# --- the identity check ------------------------------------------------------------------------


def _contexts(cert_path: Path, key_path: Path, cadata: str) -> tuple[ssl.SSLContext, ssl.SSLContext]:
    server = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    client = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    client.check_hostname = False  # the name is compared below, with a clearer message
    for context in (server, client):
        context.minimum_version = ssl.TLSVersion.TLSv1_3
        context.verify_mode = ssl.CERT_REQUIRED
        try:
            context.load_verify_locations(cadata=cadata)
        except ssl.SSLError as exc:
            raise PKIError(f"the fabric CA file {cert_path.parent / CA_FILE} cannot be loaded: {exc.reason or exc}") from exc
        try:
            # A password callback that gives none: an encrypted key fails instead of prompting.
            context.load_cert_chain(cert_path, key_path, password=lambda: b"")
        except ssl.SSLError as exc:
            if exc.reason == "KEY_VALUES_MISMATCH":
                raise PKIError(f"{key_path} does not match the public key of {cert_path}") from exc
            raise PKIError(f"{cert_path} and {key_path} cannot be loaded: {exc.reason or exc}") from exc
    return server, client


def _step(call, untrusted: str, refused: str) -> bool:  # type: ignore[no-untyped-def]
    """One step of the in-memory handshake: True when done, False when it waits for the other side,
    PKIError for a certificate OpenSSL refuses (`untrusted`) or any other TLS failure (`refused`)."""
    try:
        call()
        return True
    except ssl.SSLWantReadError:
        return False
    except ssl.SSLCertVerificationError as exc:
        raise PKIError(f"{untrusted}: {exc.verify_message}") from exc
    except ssl.SSLError as exc:
        raise PKIError(f"{refused}: {exc.reason or exc}") from exc


def pem_text(data: bytes) -> str:
    """The certificate blocks of a PEM blob, anything around them dropped (what `cadata=` takes)."""
    return "\n".join(m.group(0).decode("ascii") for m in _PEM_CERT.finditer(data))


def _handshake(server: ssl.SSLContext, client: ssl.SSLContext, what: str) -> dict:
    """One mutual handshake between the two contexts in memory: the certificate the client saw."""
    to_server, to_client = ssl.MemoryBIO(), ssl.MemoryBIO()
    from_server, from_client = ssl.MemoryBIO(), ssl.MemoryBIO()
    c = client.wrap_bio(to_client, from_client, server_hostname=None)
    s = server.wrap_bio(to_server, from_server, server_side=True)
    done = {"client": False, "server": False}
    for _round in range(_HANDSHAKE_ROUNDS):
        for side, obj in (("client", c), ("server", s)):
            if not done[side]:
                done[side] = _step(obj.do_handshake, f"{what} is not trusted by the fabric CA",
                                   f"{what} cannot make a TLS handshake")
        to_server.write(from_client.read())
        to_client.write(from_server.read())
        if all(done.values()):
            # The server verifies the client's certificate in the client's last flight.
            _step(lambda: s.read(1), f"{what} is not trusted as a client", f"{what} is refused as a client")
            peercert = c.getpeercert()
            if not peercert:
                raise PKIError(f"{what} was not presented in the handshake")
            return peercert
    raise PKIError(f"{what}: the TLS handshake with itself did not complete")


def _ca_count(pem: str) -> tuple[int, int]:
    """(certificates, of them CAs) of a PEM blob, as OpenSSL's store counts them."""
    store = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    try:
        store.load_verify_locations(cadata=pem)
    except ssl.SSLError as exc:
        raise PKIError(f"not a valid PEM certificate ({exc.reason or exc})") from exc
    stats = store.cert_store_stats()
    return stats["x509"], stats["x509_ca"]


def _check_ca_flags(cert_pem: bytes, cadata: str, what: str, ca_path: Path) -> None:
    leaf = pem_text(cert_pem)
    try:
        _, leaf_cas = _ca_count(leaf)
        total, cas = _ca_count(cadata)
    except PKIError as exc:
        raise PKIError(f"{what} or {ca_path}: {exc}") from exc
    if leaf_cas:
        raise PKIError(f"{what} is a CA certificate; a peer certificate is needed")
    if cas < total:
        raise PKIError(f"{ca_path} holds {total - cas} certificate(s) that are not a CA")


def _profile_name(peercert: dict, what: str) -> str:
    sans = list(peercert.get("subjectAltName", ()))
    if not sans:
        raise PKIError(f"{what} has no subjectAltName; the peer name must be its DNS SAN")
    if len(sans) != 1 or sans[0][0] != "DNS":
        shown = ", ".join(str(value) for _kind, value in sans)
        raise PKIError(f"{what} must have exactly one subjectAltName, a DNS name; it has: {shown}")
    name = sans[0][1]
    problem = peer_name_problem(name)
    if problem is not None:
        raise PKIError(f"{what} has DNS SAN {name!r}, not a valid peer name: {problem}")
    common = [value for rdn in peercert.get("subject", ()) for key, value in rdn if key == "commonName"]
    if common and common != [name]:
        raise PKIError(f"{what} has CN {common[0]!r} but DNS SAN {name!r}; both must be the peer name")
    return name


def check_by_handshake(files: PeerFiles, certs_dir: Path, *, expected_name: str | None = None) -> PeerIdentity:
    """The identity in a peer directory (already read as `files`), checked by OpenSSL (see the
    module docstring). Raises PKIError naming the file and the problem."""
    cert_path, key_path, ca_path = certs_dir / CERT_FILE, certs_dir / KEY_FILE, certs_dir / CA_FILE
    what = f"peer certificate {cert_path}"
    leaves = pem_certificates(files.cert, str(cert_path))
    if len(leaves) != 1:
        raise PKIError(f"{cert_path} holds {len(leaves)} certificates; expected exactly one (the peer's)")
    pem_certificates(files.ca, str(ca_path))
    if b"ENCRYPTED" in files.key:
        raise PKIError(f"{key_path} is an encrypted private key; an unencrypted key is needed")
    cadata = pem_text(files.ca)
    _check_ca_flags(files.cert, cadata, what, ca_path)
    server, client = _contexts(cert_path, key_path, cadata)
    peercert = _handshake(server, client, what)
    name = _profile_name(peercert, what)
    if expected_name is not None and name != expected_name:
        raise PKIError(f"{what} is for peer {name!r}, expected {expected_name!r}")
    try:
        expiry = not_after(leaves[0])
    except ValueError as exc:
        raise PKIError(f"{what} is not a valid certificate ({exc})") from exc
    return PeerIdentity(name=name, cert_path=cert_path, key_path=key_path, ca_path=ca_path,
                        not_after=expiry, serial=int(peercert.get("serialNumber", "0"), 16))
