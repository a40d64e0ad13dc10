"""Access tokens held for reuse by the egress side, pure (the clock is passed in).

A token a remote peer issued (answer to `POST /authz`) is valid for one export, for us, until
its `exp`; while it is, connections with the same source attributes reuse it instead of asking
again. The remote peer still evaluates its policy on every CONNECT, so reuse never outlives a
policy change there.

The key is (peer, export namespace, export name, source attributes). An entry is *usable* until
`margin` before its expiry (so that it does not expire on its way to the peer), and *stale*
from `refresh_fraction` of its lifetime on: the caller refreshes a stale entry in the background
while still using it. The remote `exp` is read from the token, unverified (it is the remote's
business); the lifetime we assume is capped by `max_lifetime`, and a token already (nearly)
expired by our clock is not cached at all. The cache is bounded (least recently used first out).
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Mapping
from dataclasses import dataclass

TokenKey = tuple[str, str, str, frozenset[tuple[str, str]]]

DEFAULT_MAX_ENTRIES = 4096
DEFAULT_MAX_LIFETIME = 300.0
DEFAULT_MARGIN = 1.0
DEFAULT_REFRESH_FRACTION = 0.5


def token_key(peer: str, export_namespace: str, export_name: str, src_attributes: Mapping[str, str]) -> TokenKey:
    return (peer, export_namespace, export_name, frozenset(src_attributes.items()))


@dataclass(frozen=True)
class CachedToken:
    token: str
    fetched_at: float
    expires_at: float
    margin: float
    refresh_at: float

    def usable(self, now: float) -> bool:
        return now < self.expires_at - self.margin

    def stale(self, now: float) -> bool:
        return now >= self.refresh_at


class TokenCache:
    """Tokens by key (see the module docstring)."""

    def __init__(self, *, max_entries: int = DEFAULT_MAX_ENTRIES, max_lifetime: float = DEFAULT_MAX_LIFETIME,
                 margin: float = DEFAULT_MARGIN, refresh_fraction: float = DEFAULT_REFRESH_FRACTION) -> None:
        if max_entries < 1:
            raise ValueError("max_entries must be at least 1")
        if not 0.0 < refresh_fraction <= 1.0:
            raise ValueError("refresh_fraction must be in (0, 1]")
        self._entries: OrderedDict[TokenKey, CachedToken] = OrderedDict()
        self._max_entries = max_entries
        self._max_lifetime = max_lifetime
        self._margin = margin
        self._refresh_fraction = refresh_fraction

    def __len__(self) -> int:
        return len(self._entries)

    def get(self, key: TokenKey, now: float) -> CachedToken | None:
        """The usable entry for `key`, or None (an entry that is no longer usable is dropped)."""
        entry = self._entries.get(key)
        if entry is None:
            return None
        if not entry.usable(now):
            del self._entries[key]
            return None
        self._entries.move_to_end(key)
        return entry

    def put(self, key: TokenKey, token: str, now: float, expires_at: float | None) -> CachedToken | None:
        """Cache a freshly fetched token; None (and nothing cached) when it cannot be reused."""
        if expires_at is None:
            self._entries.pop(key, None)
            return None
        expires_at = min(expires_at, now + self._max_lifetime)
        lifetime = expires_at - now
        margin = min(self._margin, 0.2 * lifetime) if lifetime > 0 else 0.0
        if lifetime <= 0 or lifetime <= margin:
            self._entries.pop(key, None)
            return None
        entry = CachedToken(token=token, fetched_at=now, expires_at=expires_at, margin=margin,
                            refresh_at=now + self._refresh_fraction * lifetime)
        self._entries[key] = entry
        self._entries.move_to_end(key)
        while len(self._entries) > self._max_entries:
            self._entries.popitem(last=False)
        return entry

    def invalidate(self, key: TokenKey, token: str | None = None) -> bool:
        """Drop the entry for `key` (only if it still holds `token`, when given)."""
        entry = self._entries.get(key)
        if entry is None or (token is not None and entry.token != token):
            return False
        del self._entries[key]
        return True

    def invalidate_peer(self, peer: str) -> int:
        """Drop every token of `peer` (e.g. the peer's key changed); returns how many."""
        keys = [k for k in self._entries if k[0] == peer]
        for key in keys:
            del self._entries[key]
        return len(keys)
