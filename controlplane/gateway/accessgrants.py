"""Access tokens already verified on CONNECT, so that a connection whose token was seen before does
not pay a JWT verification again (PyJWT: about 50-100 us, a large part of a connection's CPU).

A remote gateway presents the same access token on many connections (its own token cache reuses
it until about half its life), so the ingress side remembers the tokens that verified: token
string -> `AccessGrant`. A remembered grant stands in for a verification only

- for the same `TokenAuthority` object that verified it: a gateway state with a new token key
  comes with a new authority (controlplane/gateway/state.py), and then everything is verified
  again, so a token signed with a replaced key stops working at once;
- until its `exp` plus `tokens.LEEWAY` by the clock (the rule `TokenAuthority` applies), checked
  on every use ("expired" otherwise);
- for the peer it was issued to: the audience is compared with the SAN of *this* connection on
  every use, exactly as `TokenAuthority.verify_access_token` does ("wrong-audience" otherwise),
  so a token replayed by another peer is refused whether or not it is remembered.

Only successes are remembered: a forged, malformed or expired token is verified (and refused,
with its reason) every time, as without the cache. The key is the whole token string, signature
included, so no other string can hit an entry. Bounded (least recently used first out; expired
entries at the old end are dropped as new ones come in).
"""

from __future__ import annotations

import time
from collections import OrderedDict
from collections.abc import Callable

from controlplane.tokens import LEEWAY, AccessGrant, TokenAuthority, TokenError

DEFAULT_MAX_ENTRIES = 4096


class VerifiedGrants:
    def __init__(self, *, max_entries: int = DEFAULT_MAX_ENTRIES, clock: Callable[[], float] = time.time) -> None:
        if max_entries < 1:
            raise ValueError("max_entries must be at least 1")
        self._max_entries = max_entries
        self._clock = clock
        self._authority: TokenAuthority | None = None
        self._grants: OrderedDict[str, AccessGrant] = OrderedDict()

    def __len__(self) -> int:
        return len(self._grants)

    def verify(self, authority: TokenAuthority, token: str, presenting_peer: str) -> AccessGrant:
        """The grant of an access token presented on a connection from `presenting_peer`; raises
        `TokenError` like `authority.verify_access_token` does for a token it refuses."""
        if authority is not self._authority:
            self._grants.clear()
            self._authority = authority
        grant = self._grants.get(token)
        if grant is None:
            grant = authority.verify_access_token(token, presenting_peer)  # raises TokenError
            self._remember(token, grant)
            return grant
        now = self._clock()
        if now > grant.expires_at + LEEWAY:
            del self._grants[token]
            raise TokenError("expired", f"the token expired {now - grant.expires_at:.1f} s ago")
        if grant.audience != presenting_peer:
            raise TokenError("wrong-audience", f"the token was issued to peer {grant.audience!r} but presented by "
                                               f"{presenting_peer!r}")
        self._grants.move_to_end(token)
        return grant

    def _remember(self, token: str, grant: AccessGrant) -> None:
        grants = self._grants
        grants[token] = grant
        if len(grants) > self._max_entries:
            grants.popitem(last=False)
        # Tokens are replaced every few seconds: drop the expired ones at the old end now and then
        # rather than keeping them until the bound pushes them out.
        limit = self._clock() - LEEWAY
        for _ in range(2):
            oldest = next(iter(grants.values()))
            if oldest.expires_at >= limit or len(grants) == 1:
                break
            grants.popitem(last=False)
