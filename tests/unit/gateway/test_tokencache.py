"""The egress token cache (pure, fake clock): reuse, margin before expiry, refresh-ahead, bounds."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from controlplane.gateway.tokencache import TokenCache, token_key

KEY = token_key("west", "ns", "echo", {"peer.clusterlink.net/name": "east"})


def test_reuse_until_shortly_before_expiry() -> None:
    cache = TokenCache(margin=1.0, refresh_fraction=0.5)
    entry = cache.put(KEY, "t1", now=100.0, expires_at=130.0)
    assert entry is not None and entry.refresh_at == 115.0
    assert cache.get(KEY, 100.0).token == "t1"
    assert not cache.get(KEY, 114.9).stale(114.9)
    assert cache.get(KEY, 115.0).stale(115.0)  # refresh in the background from here on
    assert cache.get(KEY, 128.9) is not None
    assert cache.get(KEY, 129.0) is None  # within the margin: treated as expired, and dropped
    assert len(cache) == 0


def test_short_lived_tokens_get_a_proportional_margin() -> None:
    cache = TokenCache(margin=1.0)
    entry = cache.put(KEY, "t", now=0.0, expires_at=2.0)  # 2 s: margin 0.4 s, not 1 s
    assert entry is not None and entry.usable(1.5) and not entry.usable(1.6)


@pytest.mark.parametrize("expires_at", [None, 99.0, 100.0])
def test_tokens_that_cannot_be_reused_are_not_cached(expires_at: float | None) -> None:
    cache = TokenCache()
    cache.put(KEY, "old", now=0.0, expires_at=1000.0)
    assert cache.put(KEY, "t", now=100.0, expires_at=expires_at) is None
    assert cache.get(KEY, 100.0) is None  # and the older one is gone too


def test_lifetime_is_capped() -> None:
    cache = TokenCache(max_lifetime=60.0)
    entry = cache.put(KEY, "t", now=0.0, expires_at=10_000.0)
    assert entry is not None and entry.expires_at == 60.0


def test_keys_separate_source_attributes_and_exports() -> None:
    cache = TokenCache()
    other_client = token_key("west", "ns", "echo", {"client.clusterlink.net/service-account": "x"})
    other_export = token_key("west", "ns", "other", {"peer.clusterlink.net/name": "east"})
    cache.put(KEY, "t", 0.0, 100.0)
    assert cache.get(other_client, 1.0) is None and cache.get(other_export, 1.0) is None
    assert token_key("w", "n", "e", {"a": "1", "b": "2"}) == token_key("w", "n", "e", {"b": "2", "a": "1"})


def test_invalidate_only_the_refused_token() -> None:
    cache = TokenCache()
    cache.put(KEY, "new", 0.0, 100.0)
    assert not cache.invalidate(KEY, "old")  # a refresh already replaced it
    assert cache.get(KEY, 1.0).token == "new"
    assert cache.invalidate(KEY, "new") and cache.get(KEY, 1.0) is None
    cache.put(KEY, "t", 0.0, 100.0)
    assert cache.invalidate_peer("west") == 1


def test_bounded_least_recently_used_first_out() -> None:
    cache = TokenCache(max_entries=2)
    keys = [token_key("west", "ns", f"e{i}", {}) for i in range(3)]
    cache.put(keys[0], "0", 0.0, 100.0)
    cache.put(keys[1], "1", 0.0, 100.0)
    cache.get(keys[0], 1.0)  # used: stays
    cache.put(keys[2], "2", 0.0, 100.0)
    assert cache.get(keys[1], 1.0) is None and cache.get(keys[0], 1.0) and cache.get(keys[2], 1.0)


@given(st.floats(0, 1e6), st.floats(0.001, 1e4), st.floats(0, 2e4))
def test_a_cached_token_is_never_handed_out_after_its_expiry(now: float, lifetime: float, later: float) -> None:
    cache = TokenCache()
    entry = cache.put(KEY, "t", now, now + lifetime)
    got = cache.get(KEY, now + later)
    if got is not None:
        assert now + later < now + lifetime
        assert entry is not None and got.stale(now + later) == (now + later >= entry.refresh_at)
