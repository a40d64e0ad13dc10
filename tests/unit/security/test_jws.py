"""controlplane.jws: standard compact HS256 JWS (PyJWT reads ours, we read PyJWT's), strict parsing."""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import subprocess
import sys

import jwt
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from controlplane import jws

KEY = b"k" * 32


def b64(raw: bytes) -> str:
    return base64.urlsafe_b64encode(raw).rstrip(b"=").decode()


def failure(call) -> str:
    with pytest.raises(jws.JWSError) as caught:
        call()
    assert str(caught.value)
    return caught.value.reason


def test_pyjwt_reads_what_we_sign() -> None:
    token = jws.sign(b'{"a":1,"s":"\xc3\xa9"}', KEY)
    assert jwt.get_unverified_header(token) == {"alg": "HS256", "typ": "JWT"}
    assert jwt.api_jws.decode(token, KEY, algorithms=["HS256"]) == b'{"a":1,"s":"\xc3\xa9"}'
    with pytest.raises(jwt.InvalidSignatureError):
        jwt.api_jws.decode(token, b"o" * 32, algorithms=["HS256"])


@pytest.mark.parametrize("payload", [b"", b"x", b"xy", b"xyz", b'{"exp": 1800000000}', bytes(range(256))])
def test_we_read_what_pyjwt_signs(payload: bytes) -> None:
    token = jwt.api_jws.encode(payload, KEY, algorithm="HS256", headers={"kid": "site"})
    assert jws.verify(token, KEY) == payload
    assert jws.unverified_payload(token) == payload


def test_a_wrong_key_or_a_changed_part_is_a_bad_signature() -> None:
    token = jws.sign(b'{"aud":"peer-b"}', KEY)
    head, body, sig = token.split(".")
    assert failure(lambda: jws.verify(token, b"o" * 32)) == "bad-signature"
    other = b64(b'{"aud":"peer-c"}')
    assert failure(lambda: jws.verify(f"{head}.{other}.{sig}", KEY)) == "bad-signature"
    assert failure(lambda: jws.verify(f"{head}.{body}.", KEY)) == "bad-signature"
    assert failure(lambda: jws.verify(f"{head}.{body}.{sig[:-1]}", KEY)) == "bad-signature"


@pytest.mark.parametrize("header", [{"alg": "none"}, {"alg": "HS512"}, {"alg": "RS256"}, {"typ": "JWT"}])
def test_another_algorithm_is_refused_whatever_the_signature(header: dict) -> None:
    head = b64(json.dumps(header).encode())
    body = b64(b"{}")
    # even a valid HMAC-SHA256 over the input does not help: the header says another algorithm
    mac = b64(hmac.new(KEY, f"{head}.{body}".encode(), hashlib.sha256).digest())
    for sig in ("", mac):
        assert failure(lambda: jws.verify(f"{head}.{body}.{sig}", KEY)) == "bad-signature"


@pytest.mark.parametrize("token", [
    "", "a", "a.b", "a.b.c.d", "a.b.c.d.e",  # not three parts (JWE has five)
    "not.a.jwt",  # header not base64url JSON
    f"{b64(b'[1,2]')}.{b64(b'{}')}.x",  # header not an object
    f"{b64(b'{')}.{b64(b'{}')}.x",  # header not JSON
    f"{b64(json.dumps({'alg': 'HS256'}).encode())}.e30*.x",  # a character outside base64url
    f"{b64(json.dumps({'alg': 'HS256'}).encode())}.e30=.x",  # padding
    f"{b64(json.dumps({'alg': 'HS256'}).encode())}.e30AA.x",  # a length base64 cannot have
    "é.b.c",  # not ASCII
])
def test_malformed_tokens(token: str) -> None:
    assert failure(lambda: jws.verify(token, KEY)) == "malformed"
    assert failure(lambda: jws.unverified_payload(token)) == "malformed"


@settings(max_examples=300, deadline=None)
@given(st.text(max_size=200) | st.builds(lambda a, b, c: f"{a}.{b}.{c}", st.text(max_size=40),
                                          st.text(max_size=40), st.text(max_size=40)))
def test_any_string_gives_a_payload_or_a_jws_error(token: str) -> None:
    for call in (lambda: jws.verify(token, KEY), lambda: jws.unverified_payload(token)):
        try:
            call()
        except jws.JWSError as exc:
            assert exc.reason in ("malformed", "bad-signature")


def test_tokens_do_not_import_cryptography() -> None:
    """The point of this module: a gateway worker verifying tokens maps no cryptography library."""
    code = ("import sys, controlplane.tokens as t; a = t.TokenAuthority(b'k' * 32, 'p'); "
            "a.verify_agent_credential(a.mint_agent_credential('n1')); "
            "print(sorted(m for m in sys.modules if m.split('.')[0] in ('cryptography', 'jwt')))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60, check=True)
    assert out.stdout.strip() == "[]"
