"""Compact JWS (RFC 7515) with HMAC-SHA256 only: what our tokens need, in the standard library.

`tokens.py` builds the ClusterLink tokens on this. It replaced PyJWT at run time because PyJWT
imports `cryptography` (for its RSA and EC algorithms, which we never use), and that costs every
gateway worker about 10 MB of memory (bench memory section). The format is plain JWT: the tests
check that PyJWT reads what this writes and the other way round.

`sign(payload, key)` gives `b64url(header) "." b64url(payload) "." b64url(HMAC-SHA256)` with the
header `{"alg":"HS256","typ":"JWT"}`. `verify(token, key)` returns the payload bytes of a token
whose header is a JSON object with `alg` "HS256" and whose signature verifies (compared in constant
time); `unverified_payload(token)` returns them without checking anything but the shape. Every
failure is a `JWSError` with `.reason` "malformed" (not three base64url parts, a header that is not
a JSON object, ...) or "bad-signature" (another algorithm, `alg: none` included, or a signature
that does not verify). Base64url is strict: unpadded, and a character outside the alphabet is
malformed (the standard library's decoder would skip it silently).
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import json
import re

ALGORITHM = "HS256"
_HEADER = base64.urlsafe_b64encode(b'{"alg":"HS256","typ":"JWT"}').rstrip(b"=")
_SEGMENT = re.compile(rb"[A-Za-z0-9_-]*")


class JWSError(Exception):
    def __init__(self, reason: str, message: str) -> None:
        super().__init__(message)
        self.reason = reason


def _b64encode(data: bytes) -> bytes:
    return base64.urlsafe_b64encode(data).rstrip(b"=")


def _b64decode(segment: bytes, what: str) -> bytes:
    if not _SEGMENT.fullmatch(segment) or len(segment) % 4 == 1:
        raise JWSError("malformed", f"the token's {what} is not base64url")
    try:
        return base64.urlsafe_b64decode(segment + b"=" * (-len(segment) % 4))
    except (binascii.Error, ValueError) as exc:
        raise JWSError("malformed", f"the token's {what} is not base64url") from exc


def _mac(signing_input: bytes, key: bytes) -> bytes:
    return hmac.new(key, signing_input, hashlib.sha256).digest()


def sign(payload: bytes, key: bytes) -> str:
    """A compact HS256 JWS of `payload`."""
    signing_input = _HEADER + b"." + _b64encode(payload)
    return (signing_input + b"." + _b64encode(_mac(signing_input, key))).decode("ascii")


def _split(token: str) -> tuple[bytes, bytes, bytes]:
    try:
        raw = token.encode("ascii")
    except (UnicodeEncodeError, AttributeError) as exc:
        raise JWSError("malformed", "the token is not an ASCII string") from exc
    parts = raw.split(b".")
    if len(parts) != 3:
        raise JWSError("malformed", f"the token has {len(parts)} dot-separated parts, expected 3")
    return parts[0], parts[1], parts[2]


def _header(segment: bytes) -> dict:
    try:
        header = json.loads(_b64decode(segment, "header"))
    except (ValueError, UnicodeDecodeError) as exc:
        raise JWSError("malformed", "the token's header is not JSON") from exc
    if not isinstance(header, dict):
        raise JWSError("malformed", "the token's header is not a JSON object")
    return header


def verify(token: str, key: bytes) -> bytes:
    """The payload of an HS256 token signed with `key`; JWSError otherwise."""
    head, body, signature = _split(token)
    alg = _header(head).get("alg")
    if alg != ALGORITHM:
        raise JWSError("bad-signature", f"the token is signed with {alg!r}, not {ALGORITHM}")
    expected = _mac(head + b"." + body, key)
    if not hmac.compare_digest(_b64decode(signature, "signature"), expected):
        raise JWSError("bad-signature", "the token's signature does not verify")
    return _b64decode(body, "payload")


def unverified_payload(token: str) -> bytes:
    """The payload of a compact JWS, nothing verified (the header must still be a JSON object)."""
    head, body, _signature = _split(token)
    _header(head)
    return _b64decode(body, "payload")
