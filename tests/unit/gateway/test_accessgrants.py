"""The ingress cache of verified access tokens (pure, fake clock): a token seen before is not
verified again, yet it is still refused for another peer's connection, after its expiry, and once
the token key changed; refused tokens are never remembered."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from controlplane.gateway.accessgrants import VerifiedGrants
from controlplane.tokens import LEEWAY, AccessGrant, TokenAuthority, TokenError

KEY = b"k" * 32


class Clock:
    def __init__(self, now: float = 1_000_000.0) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


class CountingAuthority(TokenAuthority):
    """A real authority (west) that counts the verifications it performs."""

    def __init__(self, clock: Clock, key: bytes = KEY) -> None:
        super().__init__(key, "west", clock=clock, access_lifetime=30.0)
        self.verifications = 0

    def verify_access_token(self, token: str, presenting_peer: str) -> AccessGrant:
        self.verifications += 1
        return super().verify_access_token(token, presenting_peer)


def setup() -> tuple[Clock, CountingAuthority, VerifiedGrants, str]:
    clock = Clock()
    authority = CountingAuthority(clock)
    token = authority.mint_access_token("east", "default", "echo", {"app": "client"})
    return clock, authority, VerifiedGrants(clock=clock), token


def refused(cache: VerifiedGrants, authority: TokenAuthority, token: str, peer: str) -> str:
    with pytest.raises(TokenError) as info:
        cache.verify(authority, token, peer)
    return info.value.reason


def test_a_token_seen_before_is_not_verified_again() -> None:
    clock, authority, cache, token = setup()
    grants = [cache.verify(authority, token, "east") for _ in range(5)]
    assert authority.verifications == 1
    assert all(g == grants[0] for g in grants)
    assert (grants[0].export_namespace, grants[0].export_name, grants[0].src_attributes) == \
        ("default", "echo", {"app": "client"})


def test_a_cached_token_is_refused_for_another_peers_connection() -> None:
    clock, authority, cache, token = setup()
    cache.verify(authority, token, "east")
    assert refused(cache, authority, token, "north") == "wrong-audience"
    assert authority.verifications == 1  # refused from the cache, as the authority would have
    assert cache.verify(authority, token, "east").audience == "east"  # still good for its own peer


def test_a_cached_token_is_refused_after_its_expiry() -> None:
    clock, authority, cache, token = setup()
    cache.verify(authority, token, "east")
    clock.now += 30.0 + LEEWAY  # the last instant the authority itself still accepts
    cache.verify(authority, token, "east")
    clock.now += 0.01
    assert refused(cache, authority, token, "east") == "expired"
    assert len(cache) == 0
    assert refused(cache, authority, token, "east") == "expired"  # verified again: same answer


def test_expiry_comes_before_audience_as_in_the_authority() -> None:
    clock, authority, cache, token = setup()
    cache.verify(authority, token, "east")
    clock.now += 60.0
    assert refused(cache, authority, token, "north") == "expired"
    assert refused(VerifiedGrants(clock=clock), authority, token, "north") == "expired"


def test_a_new_authority_verifies_everything_again() -> None:
    clock, authority, cache, token = setup()
    cache.verify(authority, token, "east")
    replaced = CountingAuthority(clock, key=b"n" * 32)  # the snapshot brought another key
    assert refused(cache, replaced, token, "east") == "bad-signature"
    assert len(cache) == 0


@pytest.mark.parametrize("forge", ["other-key", "tampered", "garbage", "empty", "agent-credential"])
def test_refused_tokens_are_never_remembered(forge: str) -> None:
    clock, authority, cache, token = setup()
    bad = {
        "other-key": TokenAuthority(b"x" * 32, "west", clock=clock).mint_access_token("east", "default", "echo", {}),
        "tampered": token[:-2] + ("AA" if not token.endswith("AA") else "BB"),
        "garbage": "not.a.jwt",
        "empty": "",
        "agent-credential": authority.mint_agent_credential("n1"),
    }[forge]
    for _ in range(3):
        refused(cache, authority, bad, "east")
    assert authority.verifications == 3 and len(cache) == 0


def test_bounded_least_recently_used_first_out() -> None:
    clock = Clock()
    authority = CountingAuthority(clock)
    cache = VerifiedGrants(max_entries=3, clock=clock)
    tokens = [authority.mint_access_token("east", "default", f"svc{i}", {}) for i in range(4)]
    for token in tokens[:3]:
        cache.verify(authority, token, "east")
    cache.verify(authority, tokens[0], "east")  # used again: now the most recent
    cache.verify(authority, tokens[3], "east")  # pushes out tokens[1]
    assert len(cache) == 3
    authority.verifications = 0
    for token in (tokens[0], tokens[2], tokens[3]):
        cache.verify(authority, token, "east")
    assert authority.verifications == 0
    cache.verify(authority, tokens[1], "east")
    assert authority.verifications == 1


def test_expired_entries_go_as_new_ones_come() -> None:
    clock = Clock()
    authority = CountingAuthority(clock)
    cache = VerifiedGrants(clock=clock)
    for i in range(3):
        cache.verify(authority, authority.mint_access_token("east", "default", f"old{i}", {}), "east")
    clock.now += 100.0
    cache.verify(authority, authority.mint_access_token("east", "default", "new", {}), "east")
    assert len(cache) <= 2  # a new entry drops up to two expired ones at the old end
    cache.verify(authority, authority.mint_access_token("east", "default", "newer", {}), "east")
    assert len(cache) == 2


def test_max_entries_must_be_positive() -> None:
    with pytest.raises(ValueError):
        VerifiedGrants(max_entries=0)


@settings(max_examples=60, deadline=None)
@given(steps=st.lists(st.tuples(st.sampled_from(["east", "north"]), st.floats(min_value=0.0, max_value=20.0)),
                      min_size=1, max_size=12))
def test_same_answers_as_the_authority(steps: list[tuple[str, float]]) -> None:
    """Whatever the sequence of presenting peers and clock steps, the cache answers what a fresh
    verification would (the grant, or the same refusal reason)."""
    clock, authority, cache, token = setup()
    for peer, step in steps:
        clock.now += step
        try:
            expected: object = authority.verify_access_token(token, peer)
        except TokenError as exc:
            expected = exc.reason
        try:
            got: object = cache.verify(authority, token, peer)
        except TokenError as exc:
            got = exc.reason
        assert got == expected
