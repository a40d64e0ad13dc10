"""Agent credentials already verified, so that a connection on the agent port does not pay a JWT
verification (PyJWT: about 50-100 us) when its agent's credential was seen before.

Every connection from a node agent carries the same credential (a JWT the control plane gave the
agent, valid for hours), so the gateway remembers the ones that verified: credential string ->
(node, expiry). A remembered credential is accepted again without verification only

- until its `exp` plus `tokens.LEEWAY` by the clock (the rule `TokenAuthority` applies), and
- for the same `TokenAuthority` object that verified it: a gateway state with a new token key
  comes with a new authority (controlplane/gateway/state.py), and then everything is verified
  again, so a credential signed with a replaced key stops working at once.

Only successes are remembered: a forged, malformed or expired credential is verified (and refused,
with its reason) every time, exactly as without the cache. The key is the whole credential string,
signature included, so no other string can hit an entry. Bounded (least recently used first out).
"""

from __future__ import annotations

import time
from collections import OrderedDict
from collections.abc import Callable

from controlplane.tokens import LEEWAY, TokenAuthority, TokenError, decode_unverified_expiry

DEFAULT_MAX_ENTRIES = 1024


class AgentCredentials:
    def __init__(self, *, max_entries: int = DEFAULT_MAX_ENTRIES, clock: Callable[[], float] = time.time) -> None:
        if max_entries < 1:
            raise ValueError("max_entries must be at least 1")
        self._max_entries = max_entries
        self._clock = clock
        self._authority: TokenAuthority | None = None
        self._verified: OrderedDict[str, tuple[str, float]] = OrderedDict()  # credential -> (node, exp)

    def __len__(self) -> int:
        return len(self._verified)

    def verify(self, authority: TokenAuthority, credential: str) -> str:
        """The node name of a valid agent credential; raises `TokenError` like
        `authority.verify_agent_credential` does for an invalid one."""
        if authority is not self._authority:
            self._verified.clear()
            self._authority = authority
        entry = self._verified.get(credential)
        if entry is not None:
            node, expires = entry
            if self._clock() <= expires + LEEWAY:
                self._verified.move_to_end(credential)
                return node
            del self._verified[credential]
        node = authority.verify_agent_credential(credential)  # raises TokenError
        expires = decode_unverified_expiry(credential)  # verified just above: its exp can be trusted
        if expires is None:
            raise TokenError("malformed", "the credential has no readable expiry")
        self._verified[credential] = (node, expires)
        if len(self._verified) > self._max_entries:
            self._verified.popitem(last=False)
        return node
