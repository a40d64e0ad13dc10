"""Fabric CA and peer certificates: creation, files on disk, validation of a peer's identity.

The fabric is a self-signed CA; every peer holds one certificate signed by it whose CN and only
DNS SAN are the peer name (which is also the TLS server name and the `Peer` object's name on the
other sides), with extended key usage serverAuth + clientAuth, because the same certificate serves
the gateway's listener and its outgoing tunnels. This is the layout and profile of the original
ClusterLink (`clusterlink create fabric` / `create peer-cert`), so directories and certificates are
interchangeable, with one addition: a peer directory also holds `ca.pem`, a copy of the fabric
certificate, so that `<path>/<fabric>/<peer>/` is self-contained and is exactly what the control
plane and the gateway take as `--certs` (and what the Kubernetes Secret holds).

Keys are ECDSA P-256 (the original uses RSA-4096). Reasons: the server signs once per full TLS 1.3
handshake, and a P-256 signature costs tens of microseconds where an RSA-4096 signature costs
milliseconds, which bounds new tunnels per second per core; certificates and handshakes are a few
hundred bytes smaller; key generation is instant instead of seconds; security is comparable
(~128-bit) and every TLS stack the fabric meets (OpenSSL, Go crypto/tls, Envoy/BoringSSL) supports
it. Certificates made by the original (RSA) still load and validate here: nothing below depends on
the key algorithm except what we generate.

Validity: the CA lasts `CA_DAYS` (10 years), peer certificates `PEER_DAYS` (1 year, the kubeadm
convention; `days=` / `--days` changes it). Peer certificate files are hot-reloaded by
`controlplane.tlsconfig`, so renewing one is `create peer-cert --force` and updating the Secret.
`not_before` is backdated by `CLOCK_SKEW` so that a peer whose clock lags slightly accepts a
certificate issued a moment ago.

Layout: pure functions (`new_fabric_ca`, `issue_peer_cert`, `peer_identity_from_pem`) work on
objects and bytes; `create_fabric`, `create_peer_cert`, `write_peer_dir`, `load_fabric` and
`load_peer_identity` are the thin file shell around them. Every problem is a `PKIError` whose
message names the file or the name at fault. Files are written atomically (temporary file, then
rename), private keys with mode 0600.
"""

from __future__ import annotations

import datetime
import os
import re
import secrets
from pathlib import Path
from typing import NamedTuple

from cryptography import x509
from cryptography.exceptions import InvalidSignature, UnsupportedAlgorithm
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed448, ed25519, rsa
from cryptography.hazmat.primitives.asymmetric.types import CertificateIssuerPrivateKeyTypes
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from controlplane.peercerts import (  # noqa: F401  (the layout and names live there; re-exported)
    CA_FILE,
    CERT_FILE,
    KEY_FILE,
    MAX_PEER_NAME_LENGTH,
    PEER_NAME_RULE,
    PeerFiles,
    PeerIdentity,
    PKIError,
    peer_name_problem,
    read_file,
    read_peer_dir,
    validate_peer_name,
)

DEFAULT_FABRIC = "default_fabric"

CA_DAYS = 3650
PEER_DAYS = 365
CLOCK_SKEW = datetime.timedelta(minutes=5)

# Keys a fabric CA may have: ours are P-256, the original ClusterLink's are RSA-4096.
_SIGNING_KEYS = (ec.EllipticCurvePrivateKey, rsa.RSAPrivateKey, ed25519.Ed25519PrivateKey, ed448.Ed448PrivateKey)

_FABRIC_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,62}")


class CertKey(NamedTuple):
    """A certificate and its private key."""

    cert: x509.Certificate
    key: CertificateIssuerPrivateKeyTypes


# --- names -------------------------------------------------------------------------------------


def validate_fabric_name(name: str) -> str:
    """Return `name` if usable as a fabric name (CA common name and directory name)."""
    if not isinstance(name, str) or not _FABRIC_NAME.fullmatch(name) or name in {".", ".."}:
        raise PKIError(
            f"invalid fabric name {name!r}: use 1 to 63 letters, digits, '.', '_' or '-', "
            "starting with a letter or digit (it becomes the CA's common name and a directory name)"
        )
    return name


# --- pure: building certificates ---------------------------------------------------------------


def _utcnow(now: datetime.datetime | None) -> datetime.datetime:
    if now is None:
        return datetime.datetime.now(datetime.timezone.utc)
    if now.tzinfo is None:
        raise ValueError("now must be timezone-aware")
    return now


def _check_days(days: int) -> None:
    if not isinstance(days, int) or isinstance(days, bool) or days < 1:
        raise PKIError(f"invalid validity {days!r}: days must be a positive whole number")


def new_fabric_ca(
    name: str = DEFAULT_FABRIC, *, days: int = CA_DAYS, now: datetime.datetime | None = None
) -> CertKey:
    """A new self-signed fabric CA (P-256): CN=name, CA:TRUE pathlen 0, keyCertSign + cRLSign."""
    validate_fabric_name(name)
    _check_days(days)
    start = _utcnow(now)
    key = ec.generate_private_key(ec.SECP256R1())
    subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, name)])
    cert = (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(start - CLOCK_SKEW)
        .not_valid_after(start + datetime.timedelta(days=days))
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(
            x509.KeyUsage(
                digital_signature=False,
                content_commitment=False,
                key_encipherment=False,
                data_encipherment=False,
                key_agreement=False,
                key_cert_sign=True,
                crl_sign=True,
                encipher_only=False,
                decipher_only=False,
            ),
            critical=True,
        )
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
        .sign(key, hashes.SHA256())
    )
    return CertKey(cert, key)


def _signature_hash(key: CertificateIssuerPrivateKeyTypes) -> hashes.SHA256 | None:
    # Ed25519/Ed448 sign without a separate digest; EC and RSA use SHA-256.
    return None if isinstance(key, (ed25519.Ed25519PrivateKey, ed448.Ed448PrivateKey)) else hashes.SHA256()


def issue_peer_cert(
    ca: CertKey, name: str, *, days: int = PEER_DAYS, now: datetime.datetime | None = None
) -> CertKey:
    """A new peer certificate (P-256) signed by `ca`: CN and the only DNS SAN = name.

    `now` sets the start of validity (minus `CLOCK_SKEW`); the certificate is valid for `days`
    days from it. Tests use a past `now` to make an expired certificate.
    """
    validate_peer_name(name)
    _check_days(days)
    start = _utcnow(now)
    key = ec.generate_private_key(ec.SECP256R1())
    try:
        ca_ski = ca.cert.extensions.get_extension_for_class(x509.SubjectKeyIdentifier).value
        aki = x509.AuthorityKeyIdentifier.from_issuer_subject_key_identifier(ca_ski)
    except x509.ExtensionNotFound:
        aki = x509.AuthorityKeyIdentifier.from_issuer_public_key(ca.key.public_key())
    cert = (
        x509.CertificateBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, name)]))
        .issuer_name(ca.cert.subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(start - CLOCK_SKEW)
        .not_valid_after(start + datetime.timedelta(days=days))
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(
            x509.KeyUsage(
                digital_signature=True,
                content_commitment=False,
                key_encipherment=False,
                data_encipherment=False,
                key_agreement=False,
                key_cert_sign=False,
                crl_sign=False,
                encipher_only=False,
                decipher_only=False,
            ),
            critical=True,
        )
        .add_extension(
            x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH, ExtendedKeyUsageOID.CLIENT_AUTH]),
            critical=False,
        )
        .add_extension(x509.SubjectAlternativeName([x509.DNSName(name)]), critical=False)
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
        .add_extension(aki, critical=False)
        .sign(ca.key, _signature_hash(ca.key))
    )
    return CertKey(cert, key)


def cert_pem(cert: x509.Certificate) -> bytes:
    """PEM encoding of a certificate."""
    return cert.public_bytes(serialization.Encoding.PEM)


def key_pem(key: CertificateIssuerPrivateKeyTypes) -> bytes:
    """Unencrypted PKCS#8 PEM encoding of a private key (what OpenSSL, Go and Envoy all read)."""
    return key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )


# --- pure: parsing and validating --------------------------------------------------------------


def parse_certificates(data: bytes, source: str) -> list[x509.Certificate]:
    """All certificates in a PEM blob; PKIError naming `source` if there is none or it is garbage."""
    try:
        certs = x509.load_pem_x509_certificates(data)
    except ValueError as exc:
        raise PKIError(f"{source} is not a valid PEM certificate file ({exc})") from exc
    if not certs:
        raise PKIError(f"{source} holds no certificate")
    return certs


def parse_private_key(data: bytes, source: str):
    """The private key in a PEM blob; PKIError naming `source` if unreadable or encrypted."""
    try:
        return serialization.load_pem_private_key(data, password=None)
    except TypeError as exc:
        raise PKIError(f"{source} is an encrypted private key; an unencrypted key is needed") from exc
    except (ValueError, UnsupportedAlgorithm) as exc:
        raise PKIError(f"{source} is not a valid PEM private key ({exc})") from exc


def _public_der(public_key) -> bytes:
    return public_key.public_bytes(
        serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
    )


def _key_matches(key, cert: x509.Certificate) -> bool:
    return _public_der(key.public_key()) == _public_der(cert.public_key())


def _is_ca(cert: x509.Certificate) -> bool:
    try:
        return cert.extensions.get_extension_for_class(x509.BasicConstraints).value.ca
    except x509.ExtensionNotFound:
        return False


def _common_names(cert: x509.Certificate) -> list[str]:
    return [str(a.value) for a in cert.subject.get_attributes_for_oid(NameOID.COMMON_NAME)]


def _fmt_time(moment: datetime.datetime) -> str:
    return moment.strftime("%Y-%m-%d %H:%M:%S UTC")


def _check_validity(cert: x509.Certificate, what: str, now: datetime.datetime) -> None:
    if now < cert.not_valid_before_utc:
        raise PKIError(f"{what} is not valid before {_fmt_time(cert.not_valid_before_utc)}")
    if now > cert.not_valid_after_utc:
        raise PKIError(f"{what} expired on {_fmt_time(cert.not_valid_after_utc)}")


def _peer_san(cert: x509.Certificate, what: str) -> str:
    try:
        san = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    except x509.ExtensionNotFound:
        raise PKIError(f"{what} has no subjectAltName; the peer name must be its DNS SAN") from None
    names = list(san)
    if len(names) != 1 or not isinstance(names[0], x509.DNSName):
        shown = ", ".join(str(n.value) for n in names)
        raise PKIError(f"{what} must have exactly one subjectAltName, a DNS name; it has: {shown}")
    name = names[0].value
    problem = peer_name_problem(name)
    if problem is not None:
        raise PKIError(f"{what} has DNS SAN {name!r}, not a valid peer name: {problem}")
    common = _common_names(cert)
    if common and common != [name]:
        raise PKIError(f"{what} has CN {common[0]!r} but DNS SAN {name!r}; both must be the peer name")
    return name


def _check_usage(cert: x509.Certificate, what: str) -> None:
    if _is_ca(cert):
        raise PKIError(f"{what} is a CA certificate; a peer certificate is needed")
    try:
        eku = cert.extensions.get_extension_for_class(x509.ExtendedKeyUsage).value
    except x509.ExtensionNotFound:
        return
    missing = [
        label
        for oid, label in (
            (ExtendedKeyUsageOID.SERVER_AUTH, "serverAuth"),
            (ExtendedKeyUsageOID.CLIENT_AUTH, "clientAuth"),
        )
        if oid not in eku
    ]
    if missing:
        raise PKIError(f"{what} lacks extended key usage {' and '.join(missing)}")


def _find_issuer(leaf: x509.Certificate, cas: list[x509.Certificate]) -> x509.Certificate | None:
    for ca in cas:
        if ca.subject != leaf.issuer:
            continue
        try:
            leaf.verify_directly_issued_by(ca)
        except (ValueError, TypeError, InvalidSignature):
            continue
        return ca
    return None


def peer_identity_from_pem(
    cert_data: bytes,
    key_data: bytes,
    ca_data: bytes,
    *,
    certs_dir: Path,
    expected_name: str | None = None,
    now: datetime.datetime | None = None,
) -> PeerIdentity:
    """Validate the contents of a peer directory (already read) and describe it.

    Checks: one certificate in cert.pem; CA certificates in ca.pem; the key parses and matches
    the certificate; exactly one SAN, a DNS name that is a valid peer name (and equals the CN and
    `expected_name` when given); serverAuth + clientAuth; currently valid; signed directly by a
    currently valid CA of ca.pem. Raises PKIError naming the file and the problem.
    """
    certs_dir = Path(certs_dir)
    cert_path, key_path, ca_path = certs_dir / CERT_FILE, certs_dir / KEY_FILE, certs_dir / CA_FILE
    moment = _utcnow(now)
    what = f"peer certificate {cert_path}"

    leaves = parse_certificates(cert_data, str(cert_path))
    if len(leaves) != 1:
        raise PKIError(f"{cert_path} holds {len(leaves)} certificates; expected exactly one (the peer's)")
    leaf = leaves[0]
    cas = parse_certificates(ca_data, str(ca_path))
    for ca in cas:
        if not _is_ca(ca):
            raise PKIError(f"{ca_path} holds a certificate that is not a CA (CN {_common_names(ca)})")
    key = parse_private_key(key_data, str(key_path))
    if not _key_matches(key, leaf):
        raise PKIError(f"{key_path} does not match the public key of {cert_path}")

    name = _peer_san(leaf, what)
    if expected_name is not None and name != expected_name:
        raise PKIError(f"{what} is for peer {name!r}, expected {expected_name!r}")
    _check_usage(leaf, what)
    _check_validity(leaf, what, moment)
    issuer = _find_issuer(leaf, cas)
    if issuer is None:
        issuer_cn = ", ".join(str(a.value) for a in leaf.issuer) or "?"
        raise PKIError(
            f"{what} (issuer {issuer_cn!r}) is not signed by the fabric CA in {ca_path}"
        )
    _check_validity(issuer, f"fabric CA in {ca_path}", moment)
    return PeerIdentity(
        name=name,
        cert_path=cert_path,
        key_path=key_path,
        ca_path=ca_path,
        not_after=leaf.not_valid_after_utc,
        serial=leaf.serial_number,
    )


# --- file shell --------------------------------------------------------------------------------


def _refuse_existing(paths: list[Path]) -> None:
    for path in paths:
        if path.exists() or path.is_symlink():
            raise PKIError(f"refusing to overwrite {path}: it already exists (use --force to replace it)")


def _make_dir(directory: Path) -> None:
    try:
        directory.mkdir(parents=True, exist_ok=True)
    except FileExistsError:
        raise PKIError(f"cannot create directory {directory}: a file of that name exists") from None
    except OSError as exc:
        raise PKIError(f"cannot create directory {directory}: {exc.strerror or exc}") from exc


def _write_atomic(path: Path, data: bytes, mode: int) -> None:
    """Write `data` to a temporary file beside `path`, then rename it over `path`."""
    tmp = path.with_name(f".{path.name}.{secrets.token_hex(4)}.tmp")
    try:
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, mode)
        try:
            os.write(fd, data)
            os.fsync(fd)
        finally:
            os.close(fd)
        os.replace(tmp, path)
    except OSError as exc:
        tmp.unlink(missing_ok=True)
        raise PKIError(f"cannot write {path}: {exc.strerror or exc}") from exc


def create_fabric(
    path: Path | str, name: str = DEFAULT_FABRIC, *, force: bool = False, days: int = CA_DAYS
) -> Path:
    """Create the fabric CA as `<path>/<name>/cert.pem` and `key.pem`; return that directory."""
    validate_fabric_name(name)
    _check_days(days)
    directory = Path(path) / name
    cert_path, key_path = directory / CERT_FILE, directory / KEY_FILE
    if not force:
        _refuse_existing([cert_path, key_path])
    ca = new_fabric_ca(name, days=days)
    _make_dir(directory)
    _write_atomic(key_path, key_pem(ca.key), 0o600)
    _write_atomic(cert_path, cert_pem(ca.cert), 0o644)
    return directory


def load_fabric(path: Path | str, name: str = DEFAULT_FABRIC) -> CertKey:
    """Read the fabric CA certificate and key written by `create_fabric`."""
    validate_fabric_name(name)
    path = Path(path)
    directory = path / name
    cert_path, key_path = directory / CERT_FILE, directory / KEY_FILE
    if not cert_path.is_file() or not key_path.is_file():
        hint = "" if path == Path(".") else f" --path {path}"
        missing = " and ".join(p.name for p in (cert_path, key_path) if not p.is_file())
        raise PKIError(
            f"fabric {name!r} not found at {directory} (missing {missing}): "
            f"run `clusterlink create fabric --name {name}{hint}` first"
        )
    certs = parse_certificates(read_file(cert_path, "fabric CA certificate"), str(cert_path))
    cert = certs[0]
    key = parse_private_key(read_file(key_path, "fabric CA key"), str(key_path))
    if not isinstance(key, _SIGNING_KEYS):
        raise PKIError(f"{key_path} holds a {type(key).__name__}, which cannot sign certificates")
    if not _key_matches(key, cert):
        raise PKIError(f"{key_path} does not match the fabric CA certificate {cert_path}")
    if not _is_ca(cert):
        raise PKIError(f"{cert_path} is not a CA certificate (basicConstraints CA:TRUE missing)")
    return CertKey(cert, key)


def write_peer_dir(directory: Path | str, peer: CertKey, ca_cert: x509.Certificate, *, force: bool = False) -> Path:
    """Write a peer's cert.pem, key.pem (0600) and ca.pem into `directory`; return it."""
    directory = Path(directory)
    targets = [directory / CERT_FILE, directory / KEY_FILE, directory / CA_FILE]
    if directory.exists() and not directory.is_dir():
        raise PKIError(f"cannot create directory {directory}: a file of that name exists")
    if not force:
        _refuse_existing(targets)
    _make_dir(directory)
    _write_atomic(directory / CA_FILE, cert_pem(ca_cert), 0o644)
    _write_atomic(directory / KEY_FILE, key_pem(peer.key), 0o600)
    _write_atomic(directory / CERT_FILE, cert_pem(peer.cert), 0o644)
    return directory


def create_peer_cert(
    path: Path | str,
    name: str,
    *,
    fabric: str = DEFAULT_FABRIC,
    force: bool = False,
    days: int = PEER_DAYS,
) -> Path:
    """Create `<path>/<fabric>/<name>/{cert,key,ca}.pem` signed by the fabric CA; return the directory.

    The certificate never outlives the fabric CA: `days` is shortened to the CA's remaining
    validity when it would (the returned directory's `load_peer_identity().not_after` tells).
    """
    validate_peer_name(name)
    validate_fabric_name(fabric)
    _check_days(days)
    directory = Path(path) / fabric / name
    if not force:
        _refuse_existing([directory / CERT_FILE, directory / KEY_FILE, directory / CA_FILE])
    ca = load_fabric(path, fabric)
    now = _utcnow(None)
    _check_validity(ca.cert, f"fabric CA {Path(path) / fabric / CERT_FILE}", now)
    if ca.cert.not_valid_after_utc < now + datetime.timedelta(days=days):
        days = max(1, (ca.cert.not_valid_after_utc - now).days)
    peer = issue_peer_cert(ca, name, days=days, now=now)
    return write_peer_dir(directory, peer, ca.cert, force=force)


def load_peer_identity(
    certs_dir: Path | str,
    *,
    expected_name: str | None = None,
    now: datetime.datetime | None = None,
) -> PeerIdentity:
    """Read and validate `<certs_dir>/{cert,key,ca}.pem` (see `peer_identity_from_pem`)."""
    files = read_peer_dir(certs_dir)
    return peer_identity_from_pem(
        files.cert, files.key, files.ca, certs_dir=Path(certs_dir), expected_name=expected_name, now=now
    )
