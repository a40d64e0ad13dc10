"""The gateway's cache of verified agent credentials (pure, fake clock): a credential seen before is
not verified again, yet expired, forged, malformed and replaced-key credentials are still refused."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from controlplane.gateway.agentcredentials import AgentCredentials
from controlplane.tokens import LEEWAY, TokenAuthority, TokenError

KEY = b"k" * 32


class Clock:
    def __init__(self, now: float = 1_000_000.0) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


class CountingAuthority(TokenAuthority):
    """A real authority that counts the verifications it performs."""

    def __init__(self, key: bytes, peer: str, clock: Clock) -> None:
        super().__init__(key, peer, clock=clock)
        self.verifications = 0

    def verify_agent_credential(self, token: str) -> str:
        self.verifications += 1
        return super().verify_agent_credential(token)


def setup(lifetime: float = 100.0) -> tuple[Clock, CountingAuthority, AgentCredentials, str]:
    clock = Clock()
    authority = CountingAuthority(KEY, "east", clock)
    return clock, authority, AgentCredentials(clock=clock), authority.mint_agent_credential("n1", lifetime)


def test_a_credential_seen_before_is_not_verified_again() -> None:
    clock, authority, cache, credential = setup()
    assert [cache.verify(authority, credential) for _ in range(5)] == ["n1"] * 5
    assert authority.verifications == 1


def test_an_expired_credential_is_refused_although_it_was_cached() -> None:
    clock, authority, cache, credential = setup(lifetime=100.0)
    assert cache.verify(authority, credential) == "n1"
    clock.now += 100.0 + LEEWAY  # the last instant the authority itself still accepts
    assert cache.verify(authority, credential) == "n1"
    clock.now += 0.01
    with pytest.raises(TokenError) as refused:
        cache.verify(authority, credential)
    assert refused.value.reason == "expired"
    assert len(cache) == 0


@pytest.mark.parametrize("forge", ["other-key", "other-issuer", "tampered", "garbage", "empty", "access-token"])
def test_forged_and_malformed_credentials_are_refused_every_time(forge: str) -> None:
    clock, authority, cache, credential = setup()
    cache.verify(authority, credential)  # a good one is cached: it must not help the others
    bad = {
        "other-key": TokenAuthority(b"x" * 32, "east", clock=clock).mint_agent_credential("n1"),
        "other-issuer": TokenAuthority(KEY, "west", clock=clock).mint_agent_credential("n1"),
        "tampered": credential[:-2] + ("AA" if not credential.endswith("AA") else "BB"),
        "garbage": "not.a.jwt",
        "empty": "",
        "access-token": authority.mint_access_token("west", "ns", "svc", {}),
    }[forge]
    for _ in range(3):
        with pytest.raises(TokenError):
            cache.verify(authority, bad)
    assert authority.verifications == 1 + 3  # refusals are never remembered
    assert len(cache) == 1


def test_a_new_authority_verifies_everything_again() -> None:
    clock, authority, cache, credential = setup()
    cache.verify(authority, credential)
    rotated = CountingAuthority(b"r" * 32, "east", clock)  # the gateway state got a new token key
    with pytest.raises(TokenError) as refused:
        cache.verify(rotated, credential)
    assert refused.value.reason == "bad-signature"
    same_key = CountingAuthority(KEY, "east", clock)  # a new authority object: verified again, accepted
    assert cache.verify(same_key, credential) == "n1"
    assert same_key.verifications == 1


def test_bounded_least_recently_used_first_out() -> None:
    clock = Clock()
    authority = CountingAuthority(KEY, "east", clock)
    cache = AgentCredentials(max_entries=2, clock=clock)
    a, b, c = (authority.mint_agent_credential(node) for node in ("a", "b", "c"))
    cache.verify(authority, a)
    cache.verify(authority, b)
    cache.verify(authority, a)  # a is the most recently used now
    cache.verify(authority, c)  # b goes
    assert len(cache) == 2
    before = authority.verifications
    assert cache.verify(authority, a) == "a" and authority.verifications == before
    assert cache.verify(authority, b) == "b" and authority.verifications == before + 1


def test_constructor_validates() -> None:
    with pytest.raises(ValueError):
        AgentCredentials(max_entries=0)


@settings(max_examples=200, deadline=None)
@given(st.lists(st.tuples(st.sampled_from(["n1", "n2", "n3"]), st.floats(0.0, 50.0),
                          st.floats(1.0, 30.0)), min_size=1, max_size=20))
def test_the_cache_always_answers_what_the_authority_answers(steps: list[tuple[str, float, float]]) -> None:
    clock = Clock()
    authority = CountingAuthority(KEY, "east", clock)
    cache = AgentCredentials(max_entries=2, clock=clock)
    minted: list[str] = []
    for node, advance, lifetime in steps:
        minted.append(authority.mint_agent_credential(node, lifetime))
        clock.now += advance
        for credential in minted:
            try:
                expected: str | None = authority.verify_agent_credential(credential)
            except TokenError:
                expected = None
            try:
                got: str | None = cache.verify(authority, credential)
            except TokenError:
                got = None
            assert got == expected
