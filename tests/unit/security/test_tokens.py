"""controlplane.tokens: access tokens bound to the requesting peer, agent credentials, refusals, fuzzing."""

from __future__ import annotations

import base64
import json

import jwt
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from controlplane.tokens import (
    AGENT_AUDIENCE,
    LEEWAY,
    REASONS,
    AccessGrant,
    TokenAuthority,
    TokenError,
    decode_unverified_expiry,
)

KEY = b"k" * 32
OTHER_KEY = b"o" * 32
T0 = 1_700_000_000.0
SRC = {"peer.clusterlink.net/name": "peer-b", "client.clusterlink.net/namespace": "default"}


class Clock:
    def __init__(self, now: float = T0) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


@pytest.fixture
def clock() -> Clock:
    return Clock()


@pytest.fixture
def authority(clock) -> TokenAuthority:
    return TokenAuthority(KEY, "peer-a", clock=clock)


def reason(call) -> str:
    with pytest.raises(TokenError) as caught:
        call()
    assert caught.value.reason in REASONS
    assert str(caught.value)  # every refusal explains itself
    return caught.value.reason


def b64(data: dict | bytes) -> str:
    raw = data if isinstance(data, bytes) else json.dumps(data).encode()
    return base64.urlsafe_b64encode(raw).rstrip(b"=").decode()


def signed(claims: dict, key: bytes = KEY) -> str:
    """HS256 over exactly these claims (PyJWT's own claim checks bypassed)."""
    return jwt.api_jws.encode(json.dumps(claims).encode(), key, algorithm="HS256")


def claims_of(token: str) -> dict:
    return json.loads(jwt.api_jws.decode(token, KEY, algorithms=["HS256"]))


def access_claims(**overrides) -> dict:
    claims = {"iss": "peer-a", "aud": "peer-b", "export_name": "svc", "export_namespace": "ns",
              "src": {}, "iat": int(T0), "exp": int(T0) + 30, "kind": "access"}
    claims.update(overrides)
    return {k: v for k, v in claims.items() if v is not None}


# --- access tokens -------------------------------------------------------------------------------


def test_access_token_round_trip(authority):
    token = authority.mint_access_token("peer-b", "ns", "svc", SRC)
    grant = authority.verify_access_token(token, presenting_peer="peer-b")
    assert grant == AccessGrant(
        issuer="peer-a", audience="peer-b", export_name="svc", export_namespace="ns",
        src_attributes=SRC, expires_at=T0 + 30,
    )


def test_access_token_claims_use_clusterlink_names(authority):
    token = authority.mint_access_token("peer-b", "ns", "svc", SRC)
    assert claims_of(token) == {"iss": "peer-a", "aud": "peer-b", "export_name": "svc", "export_namespace": "ns",
                      "src": SRC, "iat": int(T0), "exp": int(T0) + 30, "kind": "access"}
    assert jwt.get_unverified_header(token)["alg"] == "HS256"


def test_access_lifetime_is_configurable(clock):
    authority = TokenAuthority(KEY, "peer-a", access_lifetime=5, clock=clock)
    token = authority.mint_access_token("peer-b", "ns", "svc", {})
    assert authority.verify_access_token(token, "peer-b").expires_at == T0 + 5


def test_expiry_with_leeway(authority, clock):
    token = authority.mint_access_token("peer-b", "ns", "svc", SRC)
    clock.now = T0 + 30 + LEEWAY  # last moment accepted
    authority.verify_access_token(token, "peer-b")
    clock.now = T0 + 30 + LEEWAY + 0.01
    assert reason(lambda: authority.verify_access_token(token, "peer-b")) == "expired"
    assert LEEWAY <= 1.0


def test_token_replayed_by_another_peer_is_refused(authority):
    token = authority.mint_access_token("peer-b", "ns", "svc", SRC)
    assert reason(lambda: authority.verify_access_token(token, "peer-c")) == "wrong-audience"


def test_forged_with_another_key(authority):
    forged = TokenAuthority(OTHER_KEY, "peer-a").mint_access_token("peer-b", "ns", "svc", SRC)
    assert reason(lambda: authority.verify_access_token(forged, "peer-b")) == "bad-signature"


def test_tampered_payload(authority):
    header, _, signature = authority.mint_access_token("peer-b", "ns", "svc", SRC).split(".")
    tampered = ".".join([header, b64(access_claims(export_name="database")), signature])
    assert reason(lambda: authority.verify_access_token(tampered, "peer-b")) == "bad-signature"


@pytest.mark.parametrize("alg_header", [{"alg": "none"}, {"alg": "RS256"}, {"alg": "HS256"}, {}])
def test_unsigned_or_other_algorithms_are_refused(authority, alg_header):
    token = ".".join([b64(alg_header), b64(access_claims()), ""])
    assert reason(lambda: authority.verify_access_token(token, "peer-b")) == "bad-signature"


@pytest.mark.filterwarnings("ignore::jwt.warnings.InsecureKeyLengthWarning")
def test_hs512_with_our_key_is_refused(authority):
    token = jwt.encode(access_claims(), KEY, algorithm="HS512")
    assert reason(lambda: authority.verify_access_token(token, "peer-b")) == "bad-signature"


def test_token_of_another_issuer_sharing_the_key(authority, clock):
    other = TokenAuthority(KEY, "peer-z", clock=clock)
    token = other.mint_access_token("peer-b", "ns", "svc", SRC)
    assert reason(lambda: authority.verify_access_token(token, "peer-b")) == "wrong-issuer"


def test_agent_credential_is_not_an_access_token(authority):
    credential = authority.mint_agent_credential("node-1")
    assert reason(lambda: authority.verify_access_token(credential, AGENT_AUDIENCE)) == "wrong-kind"


@pytest.mark.parametrize(
    "claims, expected",
    [
        (access_claims(kind=None), "wrong-kind"),
        (access_claims(kind="refresh"), "wrong-kind"),
        (access_claims(iss=None), "malformed"),
        (access_claims(iss=7), "malformed"),
        (access_claims(exp=None), "malformed"),
        (access_claims(exp="tomorrow"), "malformed"),
        (access_claims(exp=True), "malformed"),
        (access_claims(iat=None), "malformed"),
        (access_claims(aud=["peer-b"]), "malformed"),
        (access_claims(export_name=""), "malformed"),
        (access_claims(export_namespace=None), "malformed"),
        (access_claims(src=None), "malformed"),
        (access_claims(src={"a": 1}), "malformed"),
        (access_claims(src=["a"]), "malformed"),
        (access_claims(exp=int(T0) - 5), "expired"),
    ],
)
def test_correctly_signed_but_wrong_claims(authority, claims, expected):
    assert reason(lambda: authority.verify_access_token(signed(claims), "peer-b")) == expected


def test_correctly_signed_non_object_payloads(authority):
    for payload in (b"[]", b"42", b"not json", b"\xff\xfe"):
        token = jwt.api_jws.encode(payload, KEY, algorithm="HS256")
        assert reason(lambda: authority.verify_access_token(token, "peer-b")) == "malformed"


@pytest.mark.parametrize(
    "token",
    ["", "garbage", "a.b", "a.b.c", "a.b.c.d", "...", "eyJ.eyJ.sig", "x" * 10_000, None, 42, b"bytes.are.no"],
)
def test_garbage_is_malformed(authority, token):
    assert reason(lambda: authority.verify_access_token(token, "peer-b")) == "malformed"


# --- agent credentials ---------------------------------------------------------------------------


def test_agent_credential_round_trip(authority):
    credential = authority.mint_agent_credential("node-1")
    assert authority.verify_agent_credential(credential) == "node-1"
    claims = claims_of(credential)
    assert claims["aud"] == AGENT_AUDIENCE and claims["iss"] == "peer-a"
    assert claims["kind"] == "agent" and claims["node"] == "node-1"
    assert claims["exp"] - claims["iat"] == 86400


def test_agent_credential_expires(authority, clock):
    credential = authority.mint_agent_credential("node-1", lifetime=60)
    clock.now = T0 + 60 + LEEWAY + 0.5
    assert reason(lambda: authority.verify_agent_credential(credential)) == "expired"


def test_access_token_is_not_an_agent_credential(authority):
    token = authority.mint_access_token("peer-b", "ns", "svc", SRC)
    assert reason(lambda: authority.verify_agent_credential(token)) == "wrong-kind"


def test_agent_credential_wrong_audience_or_node(authority):
    base = {"iss": "peer-a", "iat": int(T0), "exp": int(T0) + 60, "kind": "agent"}
    assert reason(lambda: authority.verify_agent_credential(signed({**base, "aud": "peer-b", "node": "n"}))) == "wrong-audience"
    assert reason(lambda: authority.verify_agent_credential(signed({**base, "aud": AGENT_AUDIENCE}))) == "malformed"


def test_agent_credential_forged(authority):
    forged = TokenAuthority(OTHER_KEY, "peer-a").mint_agent_credential("node-1")
    assert reason(lambda: authority.verify_agent_credential(forged)) == "bad-signature"


# --- construction and minting misuse ------------------------------------------------------------


@pytest.mark.parametrize("key", [b"", b"short", "k" * 32])
def test_weak_or_non_bytes_keys_are_refused(key):
    with pytest.raises(ValueError, match="at least 32 bytes"):
        TokenAuthority(key, "peer-a")


def test_minting_validates_its_inputs(authority):
    with pytest.raises(ValueError):
        authority.mint_access_token("", "ns", "svc", {})
    with pytest.raises(ValueError):
        authority.mint_access_token("peer-b", "ns", "svc", {"a": 1})
    with pytest.raises(ValueError):
        authority.mint_agent_credential("")
    with pytest.raises(ValueError):
        authority.mint_agent_credential("n", lifetime=0)


def test_token_error_reasons_are_closed():
    with pytest.raises(ValueError):
        TokenError("nope", "message")
    assert TokenError("expired", "m").reason == "expired"


# --- unverified expiry (egress cache) ------------------------------------------------------------


def test_unverified_expiry_of_our_and_original_clusterlink_tokens(authority):
    assert decode_unverified_expiry(authority.mint_access_token("peer-b", "ns", "svc", SRC)) == T0 + 30
    # The original ClusterLink's tokens: HS256 with a key we do not know, `exp` and nothing of ours.
    theirs = jwt.encode({"exp": 1_800_000_000}, b"their-secret-key-of-32-bytes!!!!", algorithm="HS256")
    assert decode_unverified_expiry(theirs) == 1_800_000_000.0


@pytest.mark.parametrize(
    "token",
    ["", "garbage", "a.b.c", None, 5, signed({"iss": "x"}), signed({"exp": "soon"}), signed({"exp": None}),
     "x" * 10_000, ".".join([b64({"alg": "HS256"}), b64(b"[1]"), "sig"])],
)
def test_unverified_expiry_unknown(token):
    assert decode_unverified_expiry(token) is None


# --- fuzzing: nothing but TokenError escapes -----------------------------------------------------

json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=True) | st.text(max_size=20),
    lambda children: st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=10), children, max_size=4),
    max_leaves=12,
)
claim_maps = st.dictionaries(
    st.sampled_from(["iss", "aud", "exp", "iat", "kind", "export_name", "export_namespace", "src", "node"])
    | st.text(max_size=8),
    json_values | st.sampled_from(["peer-a", "peer-b", "access", "agent", AGENT_AUDIENCE, int(T0) + 10]),
    max_size=9,
)
segments = st.text(alphabet="ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_=.+/", max_size=60)


def _verify_everything(authority: TokenAuthority, token) -> None:
    for call in (
        lambda: authority.verify_access_token(token, "peer-b"),
        lambda: authority.verify_agent_credential(token),
    ):
        try:
            call()
        except TokenError as exc:
            assert exc.reason in REASONS
    expiry = decode_unverified_expiry(token)
    assert expiry is None or isinstance(expiry, float)


@settings(max_examples=300)
@given(st.text(max_size=300) | segments | st.binary(max_size=50))
def test_fuzz_random_strings(token):
    _verify_everything(TokenAuthority(KEY, "peer-a", clock=Clock()), token)


@settings(max_examples=300)
@given(st.lists(segments, min_size=3, max_size=3).map(".".join))
def test_fuzz_three_segments(token):
    _verify_everything(TokenAuthority(KEY, "peer-a", clock=Clock()), token)


@settings(max_examples=300)
@given(claim_maps, st.sampled_from([KEY, OTHER_KEY]))
def test_fuzz_signed_claim_sets(claims, key):
    try:
        token = jwt.encode(claims, key, algorithm="HS256")
    except (TypeError, ValueError):
        return  # not encodable as JSON (e.g. NaN is, but some floats/keys may not be): nothing to verify
    _verify_everything(TokenAuthority(KEY, "peer-a", clock=Clock()), token)


@settings(max_examples=200)
@given(json_values)
def test_fuzz_signed_arbitrary_json(payload):
    token = jwt.api_jws.encode(json.dumps(payload).encode(), KEY, algorithm="HS256")
    _verify_everything(TokenAuthority(KEY, "peer-a", clock=Clock()), token)
