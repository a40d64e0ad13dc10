"""controlplane.peercerts: the identity check without `cryptography` agrees with controlplane.pki on
good and bad peer directories; the DER reader finds notAfter; nothing imports cryptography."""

from __future__ import annotations

import datetime
import subprocess
import sys

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from cryptography.x509.oid import NameOID

from controlplane import peercerts, pki

from .test_pki import BAD_PROFILES, _custom_leaf, _write_cert

UTC = datetime.timezone.utc


@pytest.fixture
def root(tmp_path):
    pki.create_fabric(tmp_path)
    return tmp_path


@pytest.fixture
def peer_dir(root):
    return pki.create_peer_cert(root, "peer-a")


@pytest.fixture
def fabric_ca(root):
    return pki.load_fabric(root)


def light(directory, expected_name=None) -> peercerts.PeerIdentity:
    return peercerts.check_by_handshake(peercerts.read_peer_dir(directory), directory, expected_name=expected_name)


def both_refuse(directory) -> str:
    """Both checks refuse the directory; the handshake check's message."""
    with pytest.raises(pki.PKIError):
        pki.load_peer_identity(directory)
    with pytest.raises(peercerts.PKIError) as caught:
        light(directory)
    assert str(caught.value)
    return str(caught.value)


def test_a_good_directory_gives_the_same_identity(peer_dir):
    assert light(peer_dir, "peer-a") == pki.load_peer_identity(peer_dir, expected_name="peer-a")


def test_the_expected_name(peer_dir):
    with pytest.raises(peercerts.PKIError, match="is for peer 'peer-a', expected 'peer-b'"):
        light(peer_dir, "peer-b")


def test_expired_certificate(fabric_ca, tmp_path):
    past = datetime.datetime.now(UTC) - datetime.timedelta(days=10)
    directory = pki.write_peer_dir(tmp_path / "old", pki.issue_peer_cert(fabric_ca, "peer-a", days=1, now=past),
                                   fabric_ca.cert)
    assert "not trusted by the fabric CA: certificate has expired" in both_refuse(directory)


def test_other_ca(peer_dir, tmp_path):
    pki.create_fabric(tmp_path / "other")
    (peer_dir / "ca.pem").write_bytes((tmp_path / "other" / "default_fabric" / "cert.pem").read_bytes())
    assert "not trusted by the fabric CA" in both_refuse(peer_dir)


def test_a_ca_bundle_with_several_cas(peer_dir, tmp_path):
    pki.create_fabric(tmp_path / "other")
    other = (tmp_path / "other" / "default_fabric" / "cert.pem").read_bytes()
    (peer_dir / "ca.pem").write_bytes(other + (peer_dir / "ca.pem").read_bytes())
    assert light(peer_dir).name == "peer-a"


def test_a_ca_file_with_a_peer_certificate_in_it(peer_dir):
    (peer_dir / "ca.pem").write_bytes((peer_dir / "ca.pem").read_bytes() + (peer_dir / "cert.pem").read_bytes())
    assert "1 certificate(s) that are not a CA" in both_refuse(peer_dir)


def test_key_mismatch(root, peer_dir):
    other = pki.create_peer_cert(root, "peer-b")
    (peer_dir / "key.pem").write_bytes((other / "key.pem").read_bytes())
    assert "key.pem does not match the public key of" in both_refuse(peer_dir)


@pytest.mark.parametrize("filename", ["cert.pem", "key.pem", "ca.pem"])
def test_garbage_or_missing_file(peer_dir, filename):
    (peer_dir / filename).write_text("hello\n")
    assert filename in both_refuse(peer_dir)
    (peer_dir / filename).unlink()
    assert f"{filename} does not exist" in both_refuse(peer_dir)


def test_encrypted_key(peer_dir):
    key = serialization.load_pem_private_key((peer_dir / "key.pem").read_bytes(), None)
    (peer_dir / "key.pem").write_bytes(key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                                         serialization.BestAvailableEncryption(b"secret")))
    assert "encrypted private key" in both_refuse(peer_dir)


# OpenSSL words the missing clientAuth its own way (a serverAuth-only leaf is refused as a client)
_PROFILES = [(kw, "unsuitable certificate purpose" if "extended key usage" in why else why) for kw, why in BAD_PROFILES]


@pytest.mark.parametrize("kwargs, why", _PROFILES)
def test_bad_certificate_profiles(peer_dir, fabric_ca, kwargs, why):
    key = ec.generate_private_key(ec.SECP256R1())
    # no EKU at all (any use) unless the case is about it: OpenSSL checks usage before we see the names
    _write_cert(peer_dir, _custom_leaf(fabric_ca, key, **{"eku": False, **kwargs}))
    (peer_dir / "key.pem").write_bytes(pki.key_pem(key))
    assert why in both_refuse(peer_dir)


def test_more_than_one_certificate_in_cert_pem(peer_dir):
    (peer_dir / "cert.pem").write_bytes((peer_dir / "cert.pem").read_bytes() + (peer_dir / "ca.pem").read_bytes())
    assert "holds 2 certificates; expected exactly one" in both_refuse(peer_dir)


def test_rsa_certificates_of_the_original_clusterlink(tmp_path):
    now = datetime.datetime.now(UTC)
    ca_key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "default_fabric")])
    ca_cert = (x509.CertificateBuilder().subject_name(name).issuer_name(name).public_key(ca_key.public_key())
               .serial_number(1).not_valid_before(now - datetime.timedelta(hours=1))
               .not_valid_after(now + datetime.timedelta(days=3650))
               .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
               .sign(ca_key, hashes.SHA256()))
    leaf_key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    leaf = _custom_leaf(pki.CertKey(ca_cert, ca_key), leaf_key, sans=(x509.DNSName("peer-b"),), cn="peer-b", eku=False)
    directory = tmp_path / "theirs"
    directory.mkdir()
    _write_cert(directory, leaf)
    (directory / "key.pem").write_bytes(pki.key_pem(leaf_key))
    (directory / "ca.pem").write_bytes(pki.cert_pem(ca_cert))
    assert light(directory) == pki.load_peer_identity(directory)


@pytest.mark.parametrize("until", [datetime.datetime(2031, 5, 6, 7, 8, 9, tzinfo=UTC),  # UTCTime
                                   datetime.datetime(2061, 1, 2, 3, 4, 5, tzinfo=UTC)])  # GeneralizedTime
def test_not_after_reads_both_time_forms(until):
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "x")])
    cert = (x509.CertificateBuilder().subject_name(name).issuer_name(name).public_key(key.public_key())
            .serial_number(7).not_valid_before(until - datetime.timedelta(days=1)).not_valid_after(until)
            .sign(key, hashes.SHA256()))
    der = cert.public_bytes(serialization.Encoding.DER)
    assert peercerts.not_after(der) == until
    pem = cert.public_bytes(serialization.Encoding.PEM)
    assert peercerts.pem_certificates(pem + pem, "x") == [der, der]


@pytest.mark.parametrize("der", [b"", b"\x30", b"\x30\x84\xff\xff\xff\xff", b"\x30\x03\x02\x01\x01",
                                 b"\x30\x05\x30\x03\x02\x01\x01"])
def test_not_after_of_garbage_is_a_value_error(der):
    with pytest.raises(ValueError):
        peercerts.not_after(der)


def test_the_gateway_modules_do_not_import_cryptography():
    """What the change is for: the gateway's processes (supervisor, worker, cert metrics) without it."""
    code = ("import sys, controlplane.gateway.worker, controlplane.gateway.supervisor, controlplane.certmetrics; "
            "print(sorted(m for m in sys.modules if m.split('.')[0] in ('cryptography', 'jwt')))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60, check=True)
    assert out.stdout.strip() == "[]"
