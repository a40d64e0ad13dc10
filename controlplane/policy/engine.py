"""The policy decision point: which policy allows or denies a connection, fast, without locks.

Rules (ClusterLink's, see docs/internals.md): privileged deny > privileged allow > regular deny >
regular allow > default deny. Regular policies count only in the namespace given to `decide`
(the Import's on egress, the Export's on ingress); privileged ones always. A policy matches when
the source matches any of its `from` selectors and the destination any of its `to` selectors.
Before the tiers: if an applicable policy's `from` looks at client attributes and the source
carries none, the request is denied and that policy named. Within a tier, when several policies
match, the one with the smallest name decides (so that decisions are deterministic).

Performance. Policies are grouped by (privileged, namespace) and, inside a group, by tier. Each
tier is indexed by one equality requirement (`matchLabels` or `In`) of every `to` selector (the
destination key: usually the export name), or failing that of every `from` selector; policies
with a selector that pins no key go into a small fallback list that is always scanned. Decisions
are also cached in a bounded LRU keyed by (namespace, src, dst).

Concurrency. The whole index is an immutable `_State`; a mutation builds a new one (copying only
the parts it changes) under a writers' lock and swaps the single `self._state` reference, so
`decide` reads one consistent state and takes no lock. The cache belongs to the state: a change
starts a new, empty cache (and a new generation number), so a stale decision can never be served.
"""

from __future__ import annotations

import threading
from bisect import insort
from collections import OrderedDict
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from enum import Enum

from controlplane.policy.policy import CLIENT_ATTRIBUTE_PREFIX, Action, Policy
from controlplane.policy.selector import LabelSelector

__all__ = ["DEFAULT_DENY_POLICY", "Decision", "PolicyEngine", "Tier"]

DEFAULT_DENY_POLICY = "<default deny>"
DEFAULT_CACHE_SIZE = 16384


class Tier(str, Enum):
    """What decided: a tier of policies, the client-attributes rule, or the default."""

    CLIENT_ATTRIBUTES_REQUIRED = "client-attributes-required"
    PRIVILEGED_DENY = "privileged-deny"
    PRIVILEGED_ALLOW = "privileged-allow"
    DENY = "deny"
    ALLOW = "allow"
    DEFAULT_DENY = "default-deny"


@dataclass(frozen=True, slots=True)
class Decision:
    """A verdict and who made it: `policy` is "ns/name", "name" (privileged) or "<default deny>"."""

    allowed: bool
    tier: Tier
    policy: str


_DEFAULT_DENY = Decision(False, Tier.DEFAULT_DENY, DEFAULT_DENY_POLICY)

# Which equality requirement of a selector to index on: the most selective kind of key first.
_KEY_RANK = {
    "export.clusterlink.net/name": 0,
    "client.clusterlink.net/service-account": 1,
    "peer.clusterlink.net/name": 2,
    "client.clusterlink.net/namespace": 3,
    "export.clusterlink.net/namespace": 4,
}
_OTHER_KEY_RANK = 5

# An index entry: (policy name, policy, the decision it makes in its tier). Sorted by name.
_Entry = tuple[str, Policy, Decision]
# label key -> label value -> entries whose selector requires key=value.
_Index = dict[str, dict[str, tuple[_Entry, ...]]]


def _selector_plan(selectors: tuple[LabelSelector, ...]) -> frozenset[tuple[str, str]] | None:
    """The (key, value) pairs under which to index a policy side, or None if a selector pins nothing.

    A label set can match one of `selectors` only if it carries one of the returned pairs.
    """
    pairs: set[tuple[str, str]] = set()
    for sel in selectors:
        equalities = sel.equalities()
        if not equalities:
            return None
        key, values = min(equalities, key=lambda kv: (len(kv[1]), _KEY_RANK.get(kv[0], _OTHER_KEY_RANK), kv[0]))
        pairs.update((key, value) for value in values)
    return frozenset(pairs)


def _placement(policy: Policy) -> tuple[str, frozenset[tuple[str, str]]]:
    """Where a policy lives in its tier index: ("dst"|"src", pairs) or ("fallback", empty)."""
    plan = _selector_plan(policy.to)
    if plan is not None:
        return "dst", plan
    plan = _selector_plan(policy.from_)
    if plan is not None:
        return "src", plan
    return "fallback", frozenset()


def _scan(entries: tuple[_Entry, ...], src: Mapping[str, str], dst: Mapping[str, str], best: _Entry | None) -> _Entry | None:
    for entry in entries:
        if best is not None and entry[0] >= best[0]:
            return best
        if entry[1].matches(src, dst):
            return entry
    return best


def _scan_index(
    index: _Index, labels: Mapping[str, str], src: Mapping[str, str], dst: Mapping[str, str], best: _Entry | None
) -> _Entry | None:
    if len(index) <= len(labels):
        for key, by_value in index.items():
            value = labels.get(key)
            if value is not None:
                entries = by_value.get(value)
                if entries is not None:
                    best = _scan(entries, src, dst, best)
    else:
        for key, value in labels.items():
            by_value = index.get(key)
            if by_value is not None:
                entries = by_value.get(value)
                if entries is not None:
                    best = _scan(entries, src, dst, best)
    return best


def _index_with(index: _Index, pairs: Iterable[tuple[str, str]], entry: _Entry) -> _Index:
    out = dict(index)
    copied: set[str] = set()
    for key, value in pairs:
        if key not in copied:
            out[key] = dict(out.get(key, {}))
            copied.add(key)
        entries = list(out[key].get(value, ()))
        insort(entries, entry, key=lambda e: e[0])
        out[key][value] = tuple(entries)
    return out


def _index_without(index: _Index, pairs: Iterable[tuple[str, str]], name: str) -> _Index:
    out = dict(index)
    copied: set[str] = set()
    for key, value in pairs:
        if key not in out:
            continue
        if key not in copied:
            out[key] = dict(out[key])
            copied.add(key)
        remaining = tuple(e for e in out[key].get(value, ()) if e[0] != name)
        if remaining:
            out[key][value] = remaining
        else:
            out[key].pop(value, None)
            if not out[key]:
                del out[key]
    return out


class _TierIndex:
    """The policies of one tier of one group, indexed. Immutable: mutators return a new index."""

    __slots__ = ("by_dst", "by_src", "fallback", "size")

    def __init__(self, by_dst: _Index, by_src: _Index, fallback: tuple[_Entry, ...], size: int) -> None:
        self.by_dst = by_dst
        self.by_src = by_src
        self.fallback = fallback
        self.size = size

    @classmethod
    def build(cls, entries: Iterable[_Entry]) -> _TierIndex | None:
        lists: dict[str, dict[str, dict[str, list[_Entry]]]] = {"dst": {}, "src": {}}
        fallback: list[_Entry] = []
        size = 0
        for entry in entries:
            size += 1
            side, pairs = _placement(entry[1])
            if side == "fallback":
                fallback.append(entry)
                continue
            for key, value in pairs:
                lists[side].setdefault(key, {}).setdefault(value, []).append(entry)
        if not size:
            return None

        def freeze(index: dict[str, dict[str, list[_Entry]]]) -> _Index:
            return {
                key: {value: tuple(sorted(es, key=lambda e: e[0])) for value, es in by_value.items()}
                for key, by_value in index.items()
            }

        return cls(freeze(lists["dst"]), freeze(lists["src"]), tuple(sorted(fallback, key=lambda e: e[0])), size)

    def with_entry(self, entry: _Entry) -> _TierIndex:
        side, pairs = _placement(entry[1])
        by_dst, by_src, fallback = self.by_dst, self.by_src, self.fallback
        if side == "dst":
            by_dst = _index_with(by_dst, pairs, entry)
        elif side == "src":
            by_src = _index_with(by_src, pairs, entry)
        else:
            entries = list(fallback)
            insort(entries, entry, key=lambda e: e[0])
            fallback = tuple(entries)
        return _TierIndex(by_dst, by_src, fallback, self.size + 1)

    def without_entry(self, policy: Policy) -> _TierIndex | None:
        if self.size == 1:
            return None
        side, pairs = _placement(policy)
        by_dst, by_src, fallback = self.by_dst, self.by_src, self.fallback
        if side == "dst":
            by_dst = _index_without(by_dst, pairs, policy.name)
        elif side == "src":
            by_src = _index_without(by_src, pairs, policy.name)
        else:
            fallback = tuple(e for e in fallback if e[0] != policy.name)
        return _TierIndex(by_dst, by_src, fallback, self.size - 1)

    def first_match(self, src: Mapping[str, str], dst: Mapping[str, str]) -> Decision | None:
        """The decision of the matching policy with the smallest name, or None."""
        best = None
        if self.by_dst:
            best = _scan_index(self.by_dst, dst, src, dst, best)
        if self.by_src:
            best = _scan_index(self.by_src, src, src, dst, best)
        if self.fallback:
            best = _scan(self.fallback, src, dst, best)
        return None if best is None else best[2]


class _Group:
    """The policies of one scope: all privileged ones, or the regular ones of one namespace."""

    __slots__ = ("privileged", "deny", "allow", "client_dependent")

    def __init__(
        self,
        privileged: bool,
        deny: _TierIndex | None,
        allow: _TierIndex | None,
        client_dependent: tuple[tuple[str, Decision], ...],
    ) -> None:
        self.privileged = privileged
        self.deny = deny
        self.allow = allow
        # (name, client-attributes decision) of the policies whose `from` reads client attributes.
        self.client_dependent = client_dependent

    @classmethod
    def build(cls, privileged: bool, policies: Iterable[Policy]) -> _Group | None:
        deny: list[_Entry] = []
        allow: list[_Entry] = []
        dependent: list[tuple[str, Decision]] = []
        for policy in policies:
            entry = _entry(policy)
            (deny if policy.action is Action.DENY else allow).append(entry)
            if policy.depends_on_client_attributes:
                dependent.append(_client_dependent(policy))
        if not deny and not allow:
            return None
        return cls(privileged, _TierIndex.build(deny), _TierIndex.build(allow), tuple(sorted(dependent)))

    def with_policy(self, policy: Policy) -> _Group:
        entry = _entry(policy)
        deny, allow = self.deny, self.allow
        if policy.action is Action.DENY:
            deny = deny.with_entry(entry) if deny is not None else _TierIndex.build([entry])
        else:
            allow = allow.with_entry(entry) if allow is not None else _TierIndex.build([entry])
        dependent = self.client_dependent
        if policy.depends_on_client_attributes:
            dependent = tuple(sorted(dependent + (_client_dependent(policy),)))
        return _Group(self.privileged, deny, allow, dependent)

    def without_policy(self, policy: Policy) -> _Group | None:
        deny, allow = self.deny, self.allow
        if policy.action is Action.DENY:
            deny = deny.without_entry(policy) if deny is not None else None
        else:
            allow = allow.without_entry(policy) if allow is not None else None
        if deny is None and allow is None:
            return None
        dependent = tuple(d for d in self.client_dependent if d[0] != policy.name)
        return _Group(self.privileged, deny, allow, dependent)


def _entry(policy: Policy) -> _Entry:
    if policy.privileged:
        tier = Tier.PRIVILEGED_DENY if policy.action is Action.DENY else Tier.PRIVILEGED_ALLOW
    else:
        tier = Tier.DENY if policy.action is Action.DENY else Tier.ALLOW
    return (policy.name, policy, Decision(policy.action is Action.ALLOW, tier, policy.ref))


def _client_dependent(policy: Policy) -> tuple[str, Decision]:
    return (policy.name, Decision(False, Tier.CLIENT_ATTRIBUTES_REQUIRED, policy.ref))


class _State:
    """One immutable version of the engine's policies, their index and its decision cache."""

    __slots__ = ("generation", "policies", "privileged", "regular", "cache")

    def __init__(
        self,
        generation: int,
        policies: dict[tuple[bool, str, str], Policy],
        privileged: _Group | None,
        regular: dict[str, _Group],
        cache_size: int,
    ) -> None:
        self.generation = generation
        self.policies = policies
        self.privileged = privileged
        self.regular = regular
        self.cache: OrderedDict[tuple, Decision] | None = OrderedDict() if cache_size > 0 else None

    def evaluate(self, src: Mapping[str, str], dst: Mapping[str, str], namespace: str) -> Decision:
        privileged = self.privileged
        regular = self.regular.get(namespace)

        dependent = None
        if privileged is not None and privileged.client_dependent:
            dependent = privileged.client_dependent[0][1]
        elif regular is not None and regular.client_dependent:
            dependent = regular.client_dependent[0][1]
        if dependent is not None:
            for key in src:
                if key.startswith(CLIENT_ATTRIBUTE_PREFIX):
                    break
            else:
                return dependent

        for group in (privileged, regular):
            if group is None:
                continue
            if group.deny is not None:
                decision = group.deny.first_match(src, dst)
                if decision is not None:
                    return decision
            if group.allow is not None:
                decision = group.allow.first_match(src, dst)
                if decision is not None:
                    return decision
        return _DEFAULT_DENY


class PolicyEngine:
    """The set of access policies of one peer, and decisions against it.

    `decide` may be called from any number of threads while others add, delete or replace
    policies; it takes no lock (mutations are copy-on-write, serialised by a writers' lock).
    `cache_size` bounds the decision cache (0 disables it).
    """

    def __init__(self, *, cache_size: int = DEFAULT_CACHE_SIZE) -> None:
        if cache_size < 0:
            raise ValueError(f"cache_size must be >= 0, got {cache_size}")
        self._cache_size = cache_size
        self._write_lock = threading.Lock()
        self._state = _State(0, {}, None, {}, cache_size)

    # --- reading ---------------------------------------------------------------------------------

    @property
    def generation(self) -> int:
        """Incremented by every change of the policy set (each one also empties the cache)."""
        return self._state.generation

    def __len__(self) -> int:
        return len(self._state.policies)

    def get(self, privileged: bool, namespace: str, name: str) -> Policy | None:
        return self._state.policies.get(_key(privileged, namespace, name))

    def policies(self) -> list[Policy]:
        """Every policy, privileged first, then by namespace and name."""
        return sorted(self._state.policies.values(), key=lambda p: (not p.privileged, p.namespace, p.name))

    def decide(self, src: Mapping[str, str], dst: Mapping[str, str], namespace: str) -> Decision:
        """Decide a connection from `src` to `dst` (attribute maps); `namespace` scopes regular policies."""
        state = self._state
        cache = state.cache
        if cache is None:
            return state.evaluate(src, dst, namespace)
        key = (namespace, frozenset(src.items()), frozenset(dst.items()))
        decision = cache.get(key)
        if decision is not None:
            try:
                cache.move_to_end(key)
            except KeyError:  # evicted by another thread in between: still the right answer
                pass
            return decision
        decision = state.evaluate(src, dst, namespace)
        cache[key] = decision
        if len(cache) > self._cache_size:
            try:
                cache.popitem(last=False)
            except KeyError:  # emptied by other threads evicting at the same time
                pass
        return decision

    def decide_uncached(self, src: Mapping[str, str], dst: Mapping[str, str], namespace: str) -> Decision:
        """`decide` without the cache (for measurements and debugging)."""
        return self._state.evaluate(src, dst, namespace)

    # --- writing ---------------------------------------------------------------------------------

    def add(self, policy: Policy) -> None:
        """Insert `policy`, or replace the one with the same (privileged, namespace, name)."""
        if not isinstance(policy, Policy):
            raise TypeError(f"PolicyEngine.add takes a parsed Policy (see parse_policy), not {type(policy).__name__}")
        with self._write_lock:
            state = self._state
            old = state.policies.get(policy.key)
            if old == policy:
                return
            policies = dict(state.policies)
            policies[policy.key] = policy
            group = _group_of(state, policy)
            if old is not None and group is not None:
                group = group.without_policy(old)
            group = group.with_policy(policy) if group is not None else _Group.build(policy.privileged, [policy])
            self._state = _replace_group(state, policies, policy, group, self._cache_size)

    def delete(self, privileged: bool, namespace: str, name: str) -> bool:
        """Remove a policy; False when there was none (not an error)."""
        key = _key(privileged, namespace, name)
        with self._write_lock:
            state = self._state
            old = state.policies.get(key)
            if old is None:
                return False
            policies = dict(state.policies)
            del policies[key]
            group = _group_of(state, old)
            group = group.without_policy(old) if group is not None else None
            self._state = _replace_group(state, policies, old, group, self._cache_size)
            return True

    def replace_all(self, policies: Iterable[Policy]) -> None:
        """Atomically replace the whole set (a new snapshot). A later duplicate key wins."""
        by_key: dict[tuple[bool, str, str], Policy] = {}
        for policy in policies:
            if not isinstance(policy, Policy):
                raise TypeError(f"PolicyEngine.replace_all takes parsed Policy objects, not {type(policy).__name__}")
            by_key[policy.key] = policy
        scopes: dict[tuple[bool, str], list[Policy]] = {}
        for policy in by_key.values():
            scopes.setdefault((policy.privileged, policy.namespace), []).append(policy)
        privileged = _Group.build(True, scopes.pop((True, ""), []))
        regular = {}
        for (_, namespace), members in scopes.items():
            group = _Group.build(False, members)
            if group is not None:
                regular[namespace] = group
        with self._write_lock:
            generation = self._state.generation + 1
            self._state = _State(generation, by_key, privileged, regular, self._cache_size)


def _key(privileged: bool, namespace: str, name: str) -> tuple[bool, str, str]:
    privileged = bool(privileged)
    return (privileged, "" if privileged else namespace, name)


def _group_of(state: _State, policy: Policy) -> _Group | None:
    return state.privileged if policy.privileged else state.regular.get(policy.namespace)


def _replace_group(
    state: _State,
    policies: dict[tuple[bool, str, str], Policy],
    policy: Policy,
    group: _Group | None,
    cache_size: int,
) -> _State:
    privileged, regular = state.privileged, state.regular
    if policy.privileged:
        privileged = group
    else:
        regular = dict(regular)
        if group is None:
            regular.pop(policy.namespace, None)
        else:
            regular[policy.namespace] = group
    return _State(state.generation + 1, policies, privileged, regular, cache_size)
