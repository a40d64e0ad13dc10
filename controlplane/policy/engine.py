"""The policy decision point: which policy allows or denies a connection, fast, without locks.

Rules (ClusterLink's, see docs/internals.md): privileged deny > privileged allow > regular deny >
regular allow > default deny. Regular policies count only in the namespace given to `decide`
(the Import's on egress, the Export's on ingress); privileged ones always. A policy matches when
the source matches any of its `from` selectors and the destination any of its `to` selectors.
Before the tiers: if an applicable policy's `from` looks at client attributes and the source
carries none, the request is denied and that policy named. Within a tier, when several policies
match, the one with the smallest name decides (so that decisions are deterministic).

Performance. Policies are split into scopes: the privileged ones, and the regular ones of each
namespace (so a decision looks at two scopes at most). Inside a scope, each policy is filed
under the values that its `to` selectors require (`matchLabels` or `In`; the two most selective
single-valued keys together, e.g. export name and export namespace), or failing that its `from`
selectors; policies with a selector that pins no key go into a fallback list that is always
scanned. A decision probes each slot the request's attributes fill and checks only the policies
filed there, in (deny before allow, then name) order, stopping at the first that matches.
Decisions are also cached in a bounded LRU keyed by (namespace, src, dst).

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
DEFAULT_CACHE_SIZE = 8192


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

# An index entry: (order, policy, the decision it makes). `order` is "0" + name for a deny and
# "1" + name for an allow, so that sorting by it puts every deny before every allow, each tier by
# name: the smallest matching entry of a scope is its decision.
_Entry = tuple[str, Policy, Decision]
# An index: label keys (one or two, sorted) -> their values (the value itself for one key, a tuple
# for two) -> the entries of the policies whose selectors require those keys to have those values.
_Index = dict[tuple[str, ...], dict[object, tuple[_Entry, ...]]]
# Where to file a policy: (keys, value) slots.
_Plan = frozenset[tuple[tuple[str, ...], object]]


def _selector_plan(selectors: tuple[LabelSelector, ...]) -> _Plan | None:
    """The index slots for a policy side, or None if one of `selectors` pins no key.

    A label set can match one of `selectors` only if it fills one of the returned slots. A
    selector with single-valued requirements (`matchLabels`, `In` with one value) is filed under
    its two most selective ones together (e.g. export name and namespace); one with only
    multi-valued `In` requirements under each value of the smallest.
    """
    slots: set[tuple[tuple[str, ...], object]] = set()
    for sel in selectors:
        equalities = sel.equalities()
        if not equalities:
            return None
        singles: dict[str, str] = {}
        for key, values in equalities:
            if len(values) == 1 and key not in singles:
                singles[key] = next(iter(values))
        if singles:
            best = sorted(singles, key=lambda k: (_KEY_RANK.get(k, _OTHER_KEY_RANK), k))[:2]
            if len(best) == 1:
                slots.add(((best[0],), singles[best[0]]))
            else:
                keys = tuple(sorted(best))
                slots.add((keys, (singles[keys[0]], singles[keys[1]])))
        else:
            key, values = min(equalities, key=lambda kv: (len(kv[1]), _KEY_RANK.get(kv[0], _OTHER_KEY_RANK), kv[0]))
            slots.update(((key,), value) for value in values)
    return frozenset(slots)


def _placement(policy: Policy) -> tuple[str, _Plan]:
    """Where a policy lives in its scope's index: ("dst"|"src", slots) or ("fallback", empty)."""
    plan = _selector_plan(policy.to)
    if plan is not None:
        return "dst", plan
    plan = _selector_plan(policy.from_)
    if plan is not None:
        return "src", plan
    return "fallback", frozenset()


def _entry(policy: Policy) -> _Entry:
    deny = policy.action is Action.DENY
    if policy.privileged:
        tier = Tier.PRIVILEGED_DENY if deny else Tier.PRIVILEGED_ALLOW
    else:
        tier = Tier.DENY if deny else Tier.ALLOW
    return (("0" if deny else "1") + policy.name, policy, Decision(not deny, tier, policy.ref))


def _entry_order(entry: _Entry) -> str:
    return entry[0]


def _scan_index(
    index: _Index, labels: Mapping[str, str], src: Mapping[str, str], dst: Mapping[str, str], best: _Entry | None
) -> _Entry | None:
    """The smallest entry matching (src, dst) among those filed under a slot `labels` fills."""
    get = labels.get
    for keys, by_value in index.items():
        if len(keys) == 1:
            entries = by_value.get(get(keys[0]))
        else:
            entries = by_value.get((get(keys[0]), get(keys[1])))
        if entries is not None:
            for entry in entries:
                if best is not None and entry[0] >= best[0]:
                    break
                if entry[1].matches(src, dst):
                    best = entry
                    break
    return best


def _index_with(index: _Index, slots: _Plan, entry: _Entry) -> _Index:
    out = dict(index)
    copied: set[tuple[str, ...]] = set()
    for keys, value in slots:
        if keys not in copied:
            out[keys] = dict(out.get(keys, {}))
            copied.add(keys)
        entries = list(out[keys].get(value, ()))
        insort(entries, entry, key=_entry_order)
        out[keys][value] = tuple(entries)
    return out


def _index_without(index: _Index, slots: _Plan, order: str) -> _Index:
    out = dict(index)
    copied: set[tuple[str, ...]] = set()
    for keys, value in slots:
        if keys not in out:
            continue
        if keys not in copied:
            out[keys] = dict(out[keys])
            copied.add(keys)
        remaining = tuple(e for e in out[keys].get(value, ()) if e[0] != order)
        if remaining:
            out[keys][value] = remaining
        else:
            out[keys].pop(value, None)
            if not out[keys]:
                del out[keys]
    return out


class _Scope:
    """The policies of one scope, indexed: all privileged ones, or the regular ones of a namespace.

    Immutable: `with_policy` and `without_policy` return a new scope sharing what did not change.
    """

    __slots__ = ("by_dst", "by_src", "fallback", "size", "client_dependent")

    def __init__(
        self,
        by_dst: _Index,
        by_src: _Index,
        fallback: tuple[_Entry, ...],
        size: int,
        client_dependent: tuple[tuple[str, Decision], ...],
    ) -> None:
        self.by_dst = by_dst
        self.by_src = by_src
        self.fallback = fallback
        self.size = size
        # (name, client-attributes decision) of the policies whose `from` reads client
        # attributes, by name.
        self.client_dependent = client_dependent

    @classmethod
    def build(cls, policies: Iterable[Policy]) -> _Scope | None:
        lists: dict[str, dict[tuple[str, ...], dict[object, list[_Entry]]]] = {"dst": {}, "src": {}}
        fallback: list[_Entry] = []
        dependent: list[tuple[str, Decision]] = []
        size = 0
        for policy in policies:
            size += 1
            entry = _entry(policy)
            if policy.depends_on_client_attributes:
                dependent.append(_client_dependent(policy))
            side, slots = _placement(policy)
            if side == "fallback":
                fallback.append(entry)
                continue
            for keys, value in slots:
                lists[side].setdefault(keys, {}).setdefault(value, []).append(entry)
        if not size:
            return None

        def freeze(index: dict[tuple[str, ...], dict[object, list[_Entry]]]) -> _Index:
            return {
                keys: {value: tuple(sorted(es, key=_entry_order)) for value, es in by_value.items()}
                for keys, by_value in index.items()
            }

        return cls(
            freeze(lists["dst"]),
            freeze(lists["src"]),
            tuple(sorted(fallback, key=_entry_order)),
            size,
            tuple(sorted(dependent)),
        )

    def with_policy(self, policy: Policy) -> _Scope:
        entry = _entry(policy)
        side, slots = _placement(policy)
        by_dst, by_src, fallback = self.by_dst, self.by_src, self.fallback
        if side == "dst":
            by_dst = _index_with(by_dst, slots, entry)
        elif side == "src":
            by_src = _index_with(by_src, slots, entry)
        else:
            entries = list(fallback)
            insort(entries, entry, key=_entry_order)
            fallback = tuple(entries)
        dependent = self.client_dependent
        if policy.depends_on_client_attributes:
            dependent = tuple(sorted(dependent + (_client_dependent(policy),)))
        return _Scope(by_dst, by_src, fallback, self.size + 1, dependent)

    def without_policy(self, policy: Policy) -> _Scope | None:
        if self.size <= 1:
            return None
        order = _entry(policy)[0]
        side, slots = _placement(policy)
        by_dst, by_src, fallback = self.by_dst, self.by_src, self.fallback
        if side == "dst":
            by_dst = _index_without(by_dst, slots, order)
        elif side == "src":
            by_src = _index_without(by_src, slots, order)
        else:
            fallback = tuple(e for e in fallback if e[0] != order)
        dependent = tuple(d for d in self.client_dependent if d[0] != policy.name)
        return _Scope(by_dst, by_src, fallback, self.size - 1, dependent)

    def first_match(self, src: Mapping[str, str], dst: Mapping[str, str]) -> Decision | None:
        """The decision of the deciding matching policy (denies first, then by name), or None."""
        best = None
        if self.by_dst:
            best = _scan_index(self.by_dst, dst, src, dst, best)
        if self.by_src:
            best = _scan_index(self.by_src, src, src, dst, best)
        for entry in self.fallback:
            if best is not None and entry[0] >= best[0]:
                break
            if entry[1].matches(src, dst):
                best = entry
                break
        return None if best is None else best[2]


def _client_dependent(policy: Policy) -> tuple[str, Decision]:
    return (policy.name, Decision(False, Tier.CLIENT_ATTRIBUTES_REQUIRED, policy.ref))


class _State:
    """One immutable version of the engine's policies, their index and its decision cache."""

    __slots__ = ("generation", "policies", "privileged", "regular", "cache")

    def __init__(
        self,
        generation: int,
        policies: dict[tuple[bool, str, str], Policy],
        privileged: _Scope | None,
        regular: dict[str, _Scope],
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
                if isinstance(key, str) and key.startswith(CLIENT_ATTRIBUTE_PREFIX):
                    break
            else:
                return dependent

        if privileged is not None:
            decision = privileged.first_match(src, dst)
            if decision is not None:
                return decision
        if regular is not None:
            decision = regular.first_match(src, dst)
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

    @property
    def cached_decisions(self) -> int:
        """How many decisions the cache holds now (at most `cache_size`)."""
        cache = self._state.cache
        return 0 if cache is None else len(cache)

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
        # One flat tuple: every key then every value of src, of dst, and len(src) to mark the
        # boundary, so that two different requests never share a key. A single allocation that
        # the garbage collector untracks at once (tuple-of-tuples keys made every miss trigger
        # young collections). Attribute order matters: the same set in another insertion order
        # is another key (a miss, never a wrong answer).
        key = (namespace, *src.keys(), *src.values(), *dst.keys(), *dst.values(), len(src))
        try:
            decision = cache.get(key)
        except TypeError:  # an unhashable attribute value: decide without the cache
            return state.evaluate(src, dst, namespace)
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
            scope = _scope_of(state, policy)
            if old is not None and scope is not None:
                scope = scope.without_policy(old)
            scope = scope.with_policy(policy) if scope is not None else _Scope.build([policy])
            self._state = _replace_scope(state, policies, policy, scope, self._cache_size)

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
            scope = _scope_of(state, old)
            scope = scope.without_policy(old) if scope is not None else None
            self._state = _replace_scope(state, policies, old, scope, self._cache_size)
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
        privileged = _Scope.build(scopes.pop((True, ""), []))
        regular = {}
        for (_, namespace), members in scopes.items():
            scope = _Scope.build(members)
            if scope is not None:
                regular[namespace] = scope
        with self._write_lock:
            generation = self._state.generation + 1
            self._state = _State(generation, by_key, privileged, regular, self._cache_size)


def _key(privileged: bool, namespace: str, name: str) -> tuple[bool, str, str]:
    privileged = bool(privileged)
    return (privileged, "" if privileged else namespace, name)


def _scope_of(state: _State, policy: Policy) -> _Scope | None:
    return state.privileged if policy.privileged else state.regular.get(policy.namespace)


def _replace_scope(
    state: _State,
    policies: dict[tuple[bool, str, str], Policy],
    policy: Policy,
    scope: _Scope | None,
    cache_size: int,
) -> _State:
    privileged, regular = state.privileged, state.regular
    if policy.privileged:
        privileged = scope
    else:
        regular = dict(regular)
        if scope is None:
            regular.pop(policy.namespace, None)
        else:
            regular[policy.namespace] = scope
    return _State(state.generation + 1, policies, privileged, regular, cache_size)
