"""Payloads and headers of the peer protocol, pure: the /authz request body, the labels header,
the bearer token. Compatible with the original ClusterLink (Go's default JSON field names).

Parsing is strict: anything a remote peer sends that does not fit raises `WireError`, whose
message says what is wrong and whose `status` is the HTTP status to answer (400 here). Unknown
JSON fields are ignored, so that newer peers may add some.
"""

from __future__ import annotations

import base64
import binascii
import json
from collections.abc import Mapping
from dataclasses import dataclass, field

HEALTHZ_PATH = "/healthz"
AUTHZ_PATH = "/authz"
LABELS_HEADER = "ClusterLinkPeerLabels"
ACCESS_TOKEN_HEADER = "x-access-token"
AUTHORIZATION_HEADER = "Authorization"
PEER_PORT = 443  # the port named in CONNECT's authority, as the original does

MAX_BODY_BYTES = 64 * 1024
MAX_LABELS_HEADER = 8 * 1024


class WireError(ValueError):
    """A remote peer sent something the protocol does not allow; `status` is the HTTP answer."""

    def __init__(self, message: str, status: int = 400) -> None:
        super().__init__(message)
        self.status = status


@dataclass(frozen=True)
class AuthzRequest:
    """The body of `POST /authz`: which export, and the source attributes of the connection."""

    service_name: str
    service_namespace: str
    src_attributes: Mapping[str, str] = field(default_factory=dict)


def encode_authz_request(request: AuthzRequest) -> bytes:
    """The JSON body of an authorization request (the original's field names)."""
    return json.dumps(
        {
            "ServiceName": request.service_name,
            "ServiceNamespace": request.service_namespace,
            "SrcAttributes": dict(request.src_attributes),
        },
        separators=(",", ":"),
        sort_keys=True,
    ).encode()


def _required_string(doc: Mapping[str, object], key: str) -> str:
    if key not in doc:
        raise WireError(f"authz request: field {key!r} is missing")
    value = doc[key]
    if not isinstance(value, str):
        raise WireError(f"authz request: field {key!r} must be a string, not {_json_type(value)}")
    if not value:
        raise WireError(f"authz request: field {key!r} must not be empty")
    return value


def _json_type(value: object) -> str:
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "a boolean"
    if isinstance(value, (int, float)):
        return "a number"
    if isinstance(value, str):
        return "a string"
    if isinstance(value, list):
        return "an array"
    return "an object"


def parse_authz_request(body: bytes) -> AuthzRequest:
    """Parse and check the body of `POST /authz`; raises WireError (400) saying what is wrong.

    `ServiceName` and `ServiceNamespace` are required non-empty strings. `SrcAttributes` maps
    strings to strings; absent or null (a nil Go map) means none.
    """
    if len(body) > MAX_BODY_BYTES:
        raise WireError(f"authz request: body of {len(body)} bytes exceeds {MAX_BODY_BYTES}", status=413)
    try:
        text = body.decode("utf-8")
    except UnicodeDecodeError:
        raise WireError("authz request: body is not UTF-8") from None
    try:
        doc = json.loads(text)
    except json.JSONDecodeError as exc:
        where = f"line {exc.lineno} column {exc.colno}"
        raise WireError(f"authz request: body is not JSON ({exc.msg} at {where})") from None
    except RecursionError:
        raise WireError("authz request: body is nested too deeply") from None
    if not isinstance(doc, dict):
        raise WireError(f"authz request: body must be a JSON object, not {_json_type(doc)}")
    name = _required_string(doc, "ServiceName")
    namespace = _required_string(doc, "ServiceNamespace")
    attrs = doc.get("SrcAttributes")
    if attrs is None:
        attrs = {}
    if not isinstance(attrs, dict):
        raise WireError(f"authz request: field 'SrcAttributes' must be an object, not {_json_type(attrs)}")
    for key, value in attrs.items():
        if not isinstance(value, str):
            raise WireError(f"authz request: SrcAttributes[{key!r}] must be a string, not {_json_type(value)}")
    return AuthzRequest(service_name=name, service_namespace=namespace, src_attributes=attrs)


def encode_labels(labels: Mapping[str, str]) -> str:
    """The `ClusterLinkPeerLabels` header value: base64 (standard alphabet) of the labels' JSON."""
    raw = json.dumps(dict(labels), separators=(",", ":"), sort_keys=True).encode()
    return base64.b64encode(raw).decode("ascii")


def decode_labels(value: str | bytes | None) -> dict[str, str]:
    """The labels in a `ClusterLinkPeerLabels` header; absent or empty means none.

    Raises WireError when the value is not base64 of a JSON object of strings.
    """
    if value is None:
        return {}
    if isinstance(value, str):
        try:
            value = value.encode("ascii")
        except UnicodeEncodeError:
            raise WireError(f"{LABELS_HEADER} header is not ASCII") from None
    value = value.strip()
    if not value:
        return {}
    if len(value) > MAX_LABELS_HEADER:
        raise WireError(f"{LABELS_HEADER} header of {len(value)} bytes exceeds {MAX_LABELS_HEADER}")
    try:
        raw = base64.b64decode(value, validate=True)
    except (binascii.Error, ValueError):
        raise WireError(f"{LABELS_HEADER} header is not base64") from None
    try:
        doc = json.loads(raw.decode("utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError, RecursionError):
        raise WireError(f"{LABELS_HEADER} header does not hold JSON") from None
    if doc is None:
        return {}
    if not isinstance(doc, dict) or not all(isinstance(v, str) for v in doc.values()):
        raise WireError(f"{LABELS_HEADER} header must hold a JSON object of strings")
    return doc


def bearer_token(authorization: str | None) -> str | None:
    """The token of an `Authorization: Bearer <token>` header value, or None."""
    if not authorization:
        return None
    scheme, _, token = authorization.strip().partition(" ")
    if scheme.lower() != "bearer":
        return None
    token = token.strip()
    return token or None


def connect_authority(peer_name: str) -> str:
    """The request target (and Host) of a CONNECT to `peer_name`'s gateway: `<peer>:443`."""
    return f"{peer_name}:{PEER_PORT}"
