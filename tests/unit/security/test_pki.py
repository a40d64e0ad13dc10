"""controlplane.pki: certificate profiles parsed back with cryptography, refusals, identity validation."""

from __future__ import annotations

import datetime
import ipaddress
import re
import stat

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID
from hypothesis import given
from hypothesis import strategies as st

from controlplane import pki

UTC = datetime.timezone.utc


def read_cert(path) -> x509.Certificate:
    return x509.load_pem_x509_certificate(path.read_bytes())


def ext(cert: x509.Certificate, kind):
    return cert.extensions.get_extension_for_class(kind)


@pytest.fixture
def root(tmp_path):
    pki.create_fabric(tmp_path)
    return tmp_path


# --- the fabric CA -------------------------------------------------------------------------------


def test_fabric_ca_profile(tmp_path):
    directory = pki.create_fabric(tmp_path, "my-fabric")
    assert directory == tmp_path / "my-fabric"
    cert = read_cert(directory / "cert.pem")
    assert cert.subject.get_attributes_for_oid(NameOID.COMMON_NAME)[0].value == "my-fabric"
    assert cert.issuer == cert.subject
    basic = ext(cert, x509.BasicConstraints)
    assert basic.critical and basic.value.ca
    usage = ext(cert, x509.KeyUsage)
    assert usage.critical and usage.value.key_cert_sign and usage.value.crl_sign
    assert not usage.value.digital_signature
    ext(cert, x509.SubjectKeyIdentifier)
    assert isinstance(cert.public_key(), ec.EllipticCurvePublicKey)
    assert cert.public_key().curve.name == "secp256r1"
    cert.verify_directly_issued_by(cert)  # self-signed
    key_mode = stat.S_IMODE((directory / "key.pem").stat().st_mode)
    assert key_mode == 0o600
    assert cert.not_valid_after_utc - cert.not_valid_before_utc >= datetime.timedelta(days=pki.CA_DAYS)


def test_fabric_files_are_not_overwritten_unless_forced(root):
    before = (root / "default_fabric" / "cert.pem").read_bytes()
    with pytest.raises(pki.PKIError, match=r"refusing to overwrite .*cert\.pem"):
        pki.create_fabric(root)
    assert (root / "default_fabric" / "cert.pem").read_bytes() == before
    pki.create_fabric(root, force=True)
    assert (root / "default_fabric" / "cert.pem").read_bytes() != before


@pytest.mark.parametrize("name", ["", ".", "..", "a/b", "../x", "-x", "x" * 64, "a b"])
def test_bad_fabric_names(tmp_path, name):
    with pytest.raises(pki.PKIError, match="invalid fabric name"):
        pki.create_fabric(tmp_path, name)


# --- peer certificates ---------------------------------------------------------------------------


def test_peer_certificate_profile(root):
    directory = pki.create_peer_cert(root, "peer-a")
    assert directory == root / "default_fabric" / "peer-a"
    ca = read_cert(root / "default_fabric" / "cert.pem")
    cert = read_cert(directory / "cert.pem")

    assert cert.subject.get_attributes_for_oid(NameOID.COMMON_NAME)[0].value == "peer-a"
    san = ext(cert, x509.SubjectAlternativeName).value
    assert list(san) == [x509.DNSName("peer-a")]
    eku = ext(cert, x509.ExtendedKeyUsage).value
    assert set(eku) == {ExtendedKeyUsageOID.SERVER_AUTH, ExtendedKeyUsageOID.CLIENT_AUTH}
    usage = ext(cert, x509.KeyUsage)
    assert usage.critical and usage.value.digital_signature and not usage.value.key_cert_sign
    assert ext(cert, x509.BasicConstraints).value.ca is False
    aki = ext(cert, x509.AuthorityKeyIdentifier).value
    assert aki.key_identifier == ext(ca, x509.SubjectKeyIdentifier).value.digest
    ext(cert, x509.SubjectKeyIdentifier)
    assert cert.public_key().curve.name == "secp256r1"
    assert isinstance(cert.signature_hash_algorithm, hashes.SHA256)
    cert.verify_directly_issued_by(ca)

    assert (directory / "ca.pem").read_bytes() == (root / "default_fabric" / "cert.pem").read_bytes()
    assert stat.S_IMODE((directory / "key.pem").stat().st_mode) == 0o600
    identity = pki.load_peer_identity(directory)
    assert identity.name == "peer-a"
    assert identity.serial == cert.serial_number
    assert identity.not_after == cert.not_valid_after_utc
    assert (identity.cert_path, identity.key_path, identity.ca_path) == (
        directory / "cert.pem", directory / "key.pem", directory / "ca.pem")


def test_peer_certificates_get_distinct_serials_and_keys(root):
    a = read_cert(pki.create_peer_cert(root, "peer-a") / "cert.pem")
    b = read_cert(pki.create_peer_cert(root, "peer-a", force=True) / "cert.pem")
    assert a.serial_number != b.serial_number
    assert a.public_key() != b.public_key()


def test_peer_validity_never_exceeds_the_ca(tmp_path):
    pki.create_fabric(tmp_path, days=10)
    identity = pki.load_peer_identity(pki.create_peer_cert(tmp_path, "peer-a", days=365))
    ca = read_cert(tmp_path / "default_fabric" / "cert.pem")
    assert identity.not_after <= ca.not_valid_after_utc


def test_existing_peer_files_are_refused(root):
    pki.create_peer_cert(root, "peer-a")
    with pytest.raises(pki.PKIError, match="refusing to overwrite .*use --force"):
        pki.create_peer_cert(root, "peer-a")


def test_missing_fabric_is_reported_with_the_command_to_run(tmp_path):
    with pytest.raises(pki.PKIError) as caught:
        pki.create_peer_cert(tmp_path, "peer-a", fabric="x")
    message = str(caught.value)
    assert f"fabric 'x' not found at {tmp_path / 'x'}" in message
    assert "run `clusterlink create fabric --name x --path" in message
    assert not (tmp_path / "x").exists()


def test_garbage_fabric_files(root):
    fabric = root / "default_fabric"
    (fabric / "cert.pem").write_text("-----BEGIN CERTIFICATE-----\nnope\n-----END CERTIFICATE-----\n")
    with pytest.raises(pki.PKIError, match=r"cert\.pem is not a valid PEM certificate"):
        pki.create_peer_cert(root, "peer-a")
    pki.create_fabric(root, force=True)
    (fabric / "key.pem").write_bytes(b"\x00\x01 binary")
    with pytest.raises(pki.PKIError, match=r"key\.pem is not a valid PEM private key"):
        pki.create_peer_cert(root, "peer-a")


def test_fabric_key_must_match_its_certificate(root, tmp_path):
    pki.create_fabric(tmp_path / "elsewhere")
    (root / "default_fabric" / "key.pem").write_bytes((tmp_path / "elsewhere" / "default_fabric" / "key.pem").read_bytes())
    with pytest.raises(pki.PKIError, match="does not match the fabric CA certificate"):
        pki.create_peer_cert(root, "peer-a")


def test_fabric_certificate_must_be_a_ca(root):
    pki.create_peer_cert(root, "peer-a")
    fabric = root / "default_fabric"
    for name in ("cert.pem", "key.pem"):
        (fabric / name).write_bytes((fabric / "peer-a" / name).read_bytes())
    with pytest.raises(pki.PKIError, match="not a CA certificate"):
        pki.create_peer_cert(root, "peer-b")


# --- peer names ----------------------------------------------------------------------------------

GOOD_NAMES = ["a", "peer-a", "peer1", "0", "eu-west.example.com", "a" * 63, ".".join(["a" * 63] * 3) + "." + "b" * 61]
BAD_NAMES = [
    ("", "empty"),
    ("Peer", "uppercase"),
    ("peer_a", "characters other than"),
    ("-peer", "starts or ends with '-'"),
    ("peer-", "starts or ends with '-'"),
    ("a..b", "empty label"),
    (".a", "empty label"),
    ("a.", "empty label"),
    ("a" * 64, "at most 63"),
    (".".join(["a" * 63] * 4), "at most 253"),
    ("pèer", "characters other than"),
    ("peer a", "characters other than"),
    ("*.peer", "characters other than"),
]


@pytest.mark.parametrize("name", GOOD_NAMES)
def test_good_peer_names(name):
    assert len(name) <= 253
    assert pki.validate_peer_name(name) == name


@pytest.mark.parametrize("name, why", BAD_NAMES)
def test_bad_peer_names_say_which_rule(root, name, why):
    with pytest.raises(pki.PKIError, match=re.escape(why)) as caught:
        pki.create_peer_cert(root, name)
    assert str(caught.value).startswith(f"invalid peer name {name!r}")


_REFERENCE = re.compile(r"[a-z0-9]([a-z0-9-]*[a-z0-9])?(\.[a-z0-9]([a-z0-9-]*[a-z0-9])?)*")


def _reference_valid(name: str) -> bool:
    return (
        len(name) <= 253
        and _REFERENCE.fullmatch(name) is not None
        and all(len(label) <= 63 for label in name.split("."))
    )


@given(st.text(alphabet="abcXYZ019-._ é", max_size=80) | st.from_regex(_REFERENCE, fullmatch=True))
def test_peer_name_validation_matches_rfc1123(name):
    problem = pki.peer_name_problem(name)
    assert (problem is None) == _reference_valid(name), (name, problem)


# --- load_peer_identity --------------------------------------------------------------------------


def _write_cert(directory, cert):
    (directory / "cert.pem").write_bytes(pki.cert_pem(cert))


def _custom_leaf(ca: pki.CertKey, key, *, cn="peer-a", sans=(x509.DNSName("peer-a"),), eku=True, is_ca=False):
    now = datetime.datetime.now(UTC)
    builder = (
        x509.CertificateBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, cn)]))
        .issuer_name(ca.cert.subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(hours=1))
        .not_valid_after(now + datetime.timedelta(days=1))
        .add_extension(x509.BasicConstraints(ca=is_ca, path_length=None), critical=True)
    )
    if sans:
        builder = builder.add_extension(x509.SubjectAlternativeName(list(sans)), critical=False)
    if eku:
        builder = builder.add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]), critical=False)
    return builder.sign(ca.key, hashes.SHA256())


@pytest.fixture
def peer_dir(root):
    return pki.create_peer_cert(root, "peer-a")


@pytest.fixture
def fabric_ca(root):
    return pki.load_fabric(root)


def test_identity_expected_name(peer_dir):
    assert pki.load_peer_identity(peer_dir, expected_name="peer-a").name == "peer-a"
    with pytest.raises(pki.PKIError, match="is for peer 'peer-a', expected 'peer-b'"):
        pki.load_peer_identity(peer_dir, expected_name="peer-b")


def test_identity_expired_and_not_yet_valid(peer_dir):
    later = datetime.datetime.now(UTC) + datetime.timedelta(days=pki.PEER_DAYS + 1)
    with pytest.raises(pki.PKIError, match="expired on"):
        pki.load_peer_identity(peer_dir, now=later)
    earlier = datetime.datetime.now(UTC) - datetime.timedelta(days=1)
    with pytest.raises(pki.PKIError, match="not valid before"):
        pki.load_peer_identity(peer_dir, now=earlier)


def test_identity_expired_certificate_from_a_past_issue(fabric_ca, tmp_path):
    past = datetime.datetime.now(UTC) - datetime.timedelta(days=10)
    directory = pki.write_peer_dir(tmp_path / "old", pki.issue_peer_cert(fabric_ca, "peer-a", days=1, now=past), fabric_ca.cert)
    with pytest.raises(pki.PKIError, match=r"peer certificate .*cert\.pem expired on"):
        pki.load_peer_identity(directory)


def test_identity_other_ca(peer_dir, tmp_path):
    pki.create_fabric(tmp_path / "other")
    (peer_dir / "ca.pem").write_bytes((tmp_path / "other" / "default_fabric" / "cert.pem").read_bytes())
    with pytest.raises(pki.PKIError, match=r"is not signed by the fabric CA in .*ca\.pem"):
        pki.load_peer_identity(peer_dir)


def test_identity_ca_bundle_with_several_cas(peer_dir, tmp_path):
    pki.create_fabric(tmp_path / "other")
    other = (tmp_path / "other" / "default_fabric" / "cert.pem").read_bytes()
    (peer_dir / "ca.pem").write_bytes(other + (peer_dir / "ca.pem").read_bytes())  # CA rotation bundle
    assert pki.load_peer_identity(peer_dir).name == "peer-a"


def test_identity_key_mismatch(root, peer_dir):
    other = pki.create_peer_cert(root, "peer-b")
    (peer_dir / "key.pem").write_bytes((other / "key.pem").read_bytes())
    with pytest.raises(pki.PKIError, match=r"key\.pem does not match the public key of .*cert\.pem"):
        pki.load_peer_identity(peer_dir)


@pytest.mark.parametrize("filename", ["cert.pem", "key.pem", "ca.pem"])
def test_identity_garbage_or_missing_file(peer_dir, filename):
    (peer_dir / filename).write_text("hello\n")
    with pytest.raises(pki.PKIError, match=re.escape(filename) + " is not a valid PEM"):
        pki.load_peer_identity(peer_dir)
    (peer_dir / filename).unlink()
    with pytest.raises(pki.PKIError, match=re.escape(filename) + " does not exist"):
        pki.load_peer_identity(peer_dir)


def test_identity_missing_directory(tmp_path):
    with pytest.raises(pki.PKIError, match="does not exist: run `clusterlink create peer-cert"):
        pki.load_peer_identity(tmp_path / "nowhere")


def test_identity_encrypted_key(peer_dir):
    key = serialization.load_pem_private_key((peer_dir / "key.pem").read_bytes(), None)
    encrypted = key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                  serialization.BestAvailableEncryption(b"secret"))
    (peer_dir / "key.pem").write_bytes(encrypted)
    with pytest.raises(pki.PKIError, match="encrypted private key"):
        pki.load_peer_identity(peer_dir)


BAD_PROFILES = [  # (the leaf's _custom_leaf arguments, what the refusal says); test_peercerts too
    ({"sans": (x509.DNSName("peer-a"), x509.DNSName("peer-b"))}, "exactly one subjectAltName"),
    ({"sans": (x509.IPAddress(ipaddress.ip_address("10.0.0.1")),)}, "exactly one subjectAltName"),
    ({"sans": (x509.UniformResourceIdentifier("spiffe://x/peer-a"),)}, "exactly one subjectAltName"),
    ({"sans": ()}, "no subjectAltName"),
    ({"cn": "peer-b"}, "CN 'peer-b' but DNS SAN 'peer-a'"),
    ({"sans": (x509.DNSName("Peer_A"),), "cn": "Peer_A"}, "not a valid peer name"),
    ({"eku": True}, "lacks extended key usage clientAuth"),
    ({"is_ca": True}, "is a CA certificate"),
]


@pytest.mark.parametrize("kwargs, why", BAD_PROFILES)
def test_identity_refuses_bad_certificate_profiles(peer_dir, fabric_ca, kwargs, why):
    key = ec.generate_private_key(ec.SECP256R1())
    _write_cert(peer_dir, _custom_leaf(fabric_ca, key, **kwargs))
    (peer_dir / "key.pem").write_bytes(pki.key_pem(key))
    with pytest.raises(pki.PKIError, match=re.escape(why)):
        pki.load_peer_identity(peer_dir)


def test_identity_more_than_one_certificate_in_cert_pem(peer_dir):
    (peer_dir / "cert.pem").write_bytes((peer_dir / "cert.pem").read_bytes() + (peer_dir / "ca.pem").read_bytes())
    with pytest.raises(pki.PKIError, match="holds 2 certificates; expected exactly one"):
        pki.load_peer_identity(peer_dir)


def test_rsa_certificates_of_the_original_clusterlink_are_accepted(tmp_path):
    """The original generates RSA-4096 (2048 here, for speed) keys; the identity checks do not care."""
    now = datetime.datetime.now(UTC)
    ca_key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "default_fabric")])
    ca_cert = (
        x509.CertificateBuilder().subject_name(name).issuer_name(name).public_key(ca_key.public_key())
        .serial_number(1).not_valid_before(now - datetime.timedelta(hours=1))
        .not_valid_after(now + datetime.timedelta(days=3650))
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .sign(ca_key, hashes.SHA256())
    )
    directory = tmp_path / "default_fabric"
    directory.mkdir()
    (directory / "cert.pem").write_bytes(pki.cert_pem(ca_cert))
    (directory / "key.pem").write_bytes(pki.key_pem(ca_key))
    # Our tooling signs peer certificates with their CA ...
    peer = pki.load_peer_identity(pki.create_peer_cert(tmp_path, "peer-a"))
    assert peer.name == "peer-a"
    # ... and an RSA peer certificate of theirs validates as an identity.
    leaf_key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    leaf = _custom_leaf(pki.CertKey(ca_cert, ca_key), leaf_key, sans=(x509.DNSName("peer-b"),), cn="peer-b", eku=False)
    theirs = tmp_path / "theirs"
    theirs.mkdir()
    _write_cert(theirs, leaf)
    (theirs / "key.pem").write_bytes(pki.key_pem(leaf_key))
    (theirs / "ca.pem").write_bytes(pki.cert_pem(ca_cert))
    assert pki.load_peer_identity(theirs).name == "peer-b"
