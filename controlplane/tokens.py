"""JWTs of a peer: access tokens for remote peers and credentials for the node agents.

Both are HS256 with the peer's site key (a secret from the store; at least 32 bytes), so only the
peer that minted a token can verify it, which is all that is needed: a token always comes back to
its issuer.

Access token (the answer to `POST /authz`, presented back on `CONNECT`), claims:

    iss               the issuing peer (us)
    aud               the requesting peer: the DNS SAN of the mTLS client certificate that asked
    export_name       }  ClusterLink's claim names, so that the token reads the same as the
    export_namespace  }  original's
    src               the source attributes the authorization request carried
    iat, exp          issued at / expires at (NumericDate, whole seconds; lifetime 30 s by default)
    kind              "access"

On CONNECT the gateway calls `verify_access_token(token, presenting_peer=<SAN of the connection>)`:
the signature, `kind`, `iss` (us), `aud` (the presenting peer: a token leaked to or replayed by
another peer is refused with "wrong-audience") and `exp` must all hold. The original ClusterLink
does not bind its tokens to the peer; we do (DESIGN.md section 2).

Agent credential (`ControlPlane.Register`): `iss` = us, `aud` = "clusterlink-agent", `node`,
`iat`, `exp` (24 h by default), `kind` = "agent".

Expiry is checked against the injected clock with a leeway of `LEEWAY` (1 s) to absorb the
rounding of `exp` to whole seconds and small scheduling delays; the tokens are verified only by
the process family that minted them, so no cross-machine clock skew is involved. `iat` is required
but not compared with the clock (a clock stepping back must not reject fresh tokens).

Every failure is a `TokenError` whose `.reason` is one of `REASONS`; nothing else escapes
`verify_*` whatever the input.

`decode_unverified_expiry` reads `exp` from another peer's token (ours or an original ClusterLink
peer's) without verifying it: the egress side only uses it to know how long to cache the token.
"""

from __future__ import annotations

import json
import math
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

from controlplane import jws

ALGORITHM = jws.ALGORITHM
LEEWAY = 1.0
MIN_KEY_BYTES = 32
MAX_TOKEN_LENGTH = 8192
DEFAULT_ACCESS_LIFETIME = 30.0
DEFAULT_AGENT_LIFETIME = 86400.0
KIND_ACCESS = "access"
KIND_AGENT = "agent"
AGENT_AUDIENCE = "clusterlink-agent"

REASONS = frozenset(
    {"malformed", "bad-signature", "expired", "wrong-issuer", "wrong-audience", "wrong-kind"}
)


class TokenError(Exception):
    """A token that is refused; `.reason` classifies why (one of `REASONS`)."""

    def __init__(self, reason: str, message: str) -> None:
        if reason not in REASONS:
            raise ValueError(f"unknown token error reason {reason!r}")
        super().__init__(message)
        self.reason = reason


@dataclass(frozen=True)
class AccessGrant:
    """What a verified access token allows: this export, for this peer, until `expires_at`."""

    issuer: str
    audience: str
    export_name: str
    export_namespace: str
    src_attributes: dict[str, str]
    expires_at: float


def _is_number(value: object) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


def _require_str(claims: Mapping[str, Any], name: str) -> str:
    value = claims.get(name)
    if not isinstance(value, str) or not value:
        raise TokenError("malformed", f"token claim {name!r} is missing or not a non-empty string")
    return value


def _check_str_map(value: object, what: str) -> dict[str, str]:
    if not isinstance(value, Mapping) or not all(
        isinstance(k, str) and isinstance(v, str) for k, v in value.items()
    ):
        raise ValueError(f"{what} must map strings to strings")
    return dict(value)


class TokenAuthority:
    """Mints and verifies the tokens of one peer (`peer_name`) with its site key.

    `clock` returns the current time in seconds since the epoch (inject a fake one in tests).
    """

    def __init__(
        self,
        key: bytes,
        peer_name: str,
        *,
        access_lifetime: float = DEFAULT_ACCESS_LIFETIME,
        clock: Callable[[], float] = time.time,
    ) -> None:
        if not isinstance(key, bytes) or len(key) < MIN_KEY_BYTES:
            raise ValueError(f"the token key must be at least {MIN_KEY_BYTES} bytes")
        if not isinstance(peer_name, str) or not peer_name:
            raise ValueError("peer_name must be a non-empty string")
        if not _is_number(access_lifetime) or access_lifetime <= 0:
            raise ValueError(f"access_lifetime must be a positive number, got {access_lifetime!r}")
        self._key = key
        self._peer_name = peer_name
        self._access_lifetime = float(access_lifetime)
        self._clock = clock

    @property
    def peer_name(self) -> str:
        return self._peer_name

    # --- minting ---------------------------------------------------------------------------

    def _mint(self, claims: dict[str, Any], lifetime: float) -> str:
        now = self._clock()
        claims.update(iss=self._peer_name, iat=int(now), exp=int(now + lifetime))
        return jws.sign(json.dumps(claims, separators=(",", ":")).encode(), self._key)

    def mint_access_token(
        self,
        requesting_peer: str,
        export_namespace: str,
        export_name: str,
        src_attributes: Mapping[str, str],
    ) -> str:
        """An access token for `requesting_peer` (the SAN of its mTLS certificate) to one export."""
        for what, value in (
            ("requesting_peer", requesting_peer),
            ("export_namespace", export_namespace),
            ("export_name", export_name),
        ):
            if not isinstance(value, str) or not value:
                raise ValueError(f"{what} must be a non-empty string")
        claims = {
            "aud": requesting_peer,
            "export_name": export_name,
            "export_namespace": export_namespace,
            "src": _check_str_map(src_attributes, "src_attributes"),
            "kind": KIND_ACCESS,
        }
        return self._mint(claims, self._access_lifetime)

    def mint_agent_credential(self, node: str, lifetime: float = DEFAULT_AGENT_LIFETIME) -> str:
        """A credential for the node agent of `node`."""
        if not isinstance(node, str) or not node:
            raise ValueError("node must be a non-empty string")
        if not _is_number(lifetime) or lifetime <= 0:
            raise ValueError(f"lifetime must be a positive number, got {lifetime!r}")
        return self._mint({"aud": AGENT_AUDIENCE, "node": node, "kind": KIND_AGENT}, lifetime)

    # --- verifying -------------------------------------------------------------------------

    def _verified_claims(self, token: object, kind: str) -> dict[str, Any]:
        """Signature, shape, kind, issuer and expiry; the audience is the caller's."""
        if not isinstance(token, str) or not token:
            raise TokenError("malformed", "the token is missing or not a string")
        if len(token) > MAX_TOKEN_LENGTH:
            raise TokenError("malformed", f"the token is longer than {MAX_TOKEN_LENGTH} characters")
        try:
            payload = jws.verify(token, self._key)
        except jws.JWSError as exc:
            if exc.reason == "bad-signature":
                raise TokenError("bad-signature", str(exc)) from exc
            raise TokenError("malformed", f"the token is not a well-formed JWT ({exc})") from exc
        try:
            claims = json.loads(payload)
        except (ValueError, UnicodeDecodeError) as exc:
            raise TokenError("malformed", "the token's payload is not JSON") from exc
        if not isinstance(claims, dict):
            raise TokenError("malformed", "the token's payload is not a JSON object")

        issuer = _require_str(claims, "iss")
        for name in ("iat", "exp"):
            if not _is_number(claims.get(name)):
                raise TokenError("malformed", f"token claim {name!r} is missing or not a number")
        if claims.get("kind") != kind:
            raise TokenError(
                "wrong-kind", f"the token is of kind {claims.get('kind')!r}, expected {kind!r}"
            )
        if issuer != self._peer_name:
            raise TokenError(
                "wrong-issuer", f"the token was issued by {issuer!r}, not by {self._peer_name!r}"
            )
        now = self._clock()
        if now > claims["exp"] + LEEWAY:
            raise TokenError("expired", f"the token expired {now - claims['exp']:.1f} s ago")
        return claims

    def verify_access_token(self, token: str, presenting_peer: str) -> AccessGrant:
        """The grant of an access token we issued, presented on a connection from `presenting_peer`."""
        claims = self._verified_claims(token, KIND_ACCESS)
        audience = _require_str(claims, "aud")
        export_name = _require_str(claims, "export_name")
        export_namespace = _require_str(claims, "export_namespace")
        src = claims.get("src")
        try:
            src_attributes = _check_str_map(src, "src")
        except ValueError as exc:
            raise TokenError("malformed", "token claim 'src' is not a map of strings") from exc
        if audience != presenting_peer:
            raise TokenError(
                "wrong-audience",
                f"the token was issued to peer {audience!r} but presented by {presenting_peer!r}",
            )
        return AccessGrant(
            issuer=claims["iss"],
            audience=audience,
            export_name=export_name,
            export_namespace=export_namespace,
            src_attributes=src_attributes,
            expires_at=float(claims["exp"]),
        )

    def verify_agent_credential(self, token: str) -> str:
        """The node name of a valid agent credential we issued."""
        claims = self._verified_claims(token, KIND_AGENT)
        audience = _require_str(claims, "aud")
        if audience != AGENT_AUDIENCE:
            raise TokenError(
                "wrong-audience", f"the credential is for {audience!r}, not {AGENT_AUDIENCE!r}"
            )
        return _require_str(claims, "node")


def decode_unverified_expiry(token: str) -> float | None:
    """The `exp` of a JWT without verifying it, or None when the token has no readable `exp`.

    For the egress token cache only (tokens minted by other peers, including original ClusterLink
    peers whose tokens carry `exp` and nothing of ours). Never use the result to trust a token.
    """
    if not isinstance(token, str) or not token or len(token) > MAX_TOKEN_LENGTH:
        return None
    try:
        claims = json.loads(jws.unverified_payload(token))
    except (jws.JWSError, ValueError, UnicodeDecodeError):
        return None  # not a JWT: no expiry to cache by; the caller treats it as uncacheable
    if not isinstance(claims, dict) or not _is_number(claims.get("exp")):
        return None
    return float(claims["exp"])
