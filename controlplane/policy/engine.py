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
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from enum import Enum

from controlplane.policy.policy import CLIENT_ATTRIBUTE_PREFIX, Action, Policy
from controlplane.policy.selector import LabelSelector, Operator

__all__ = ["DEFAULT_DENY_POLICY", "Decision", "PolicyEngine", "Tier"]

DEFAULT_DENY_POLICY = "<default deny>"
DEFAULT_CACHE_SIZE = 8192
_SEPARATOR = "\x00"
_join = _SEPARATOR.join


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

# --- compiled checks -----------------------------------------------------------------------------
#
# What an index entry still has to check on one side, as (key, value, rest): the side matches
# when `key` is None or `labels.get(key) != value` is false (tested inline by the scan, no call),
# and `rest` is None or `rest(labels)` is true. Built once per policy and slot; calling one
# allocates nothing that outlives the call.
_Rest = Callable[[Mapping[str, str]], bool]
_Check = tuple["str | None", "str | None", "_Rest | None"]
_ALWAYS: _Check = (None, None, None)

# An index entry: (order, decision, src key, src value, src rest, dst key, dst value, dst rest).
# `order` is "0" + name for a deny and "1" + name for an allow, so that sorting by it puts every
# deny before every allow, each tier by name: the smallest matching entry of a scope is its
# decision. A policy has one entry per slot it is filed under (each knows what its slot implies).
_Entry = tuple
# Sorts after every order ("0..." and "1...").
_NO_ORDER = "2"

# A requirement of a selector, flattened: (operator, key, values); `matchLabels` entries are
# (None, key, value).
_Atom = tuple["Operator | None", str, object]


def _atoms(selector: LabelSelector) -> list[_Atom]:
    out: list[_Atom] = [(None, k, v) for k, v in selector.match_labels]
    out.extend((r.operator, r.key, r.values) for r in selector.match_expressions)
    return out


def _implied(atom: _Atom, facts: Mapping[str, str]) -> bool:
    """Whether labels known to hold `facts` (key -> value, from the slot) satisfy `atom`."""
    op, key, values = atom
    if key not in facts:
        return False
    if op is None:
        return facts[key] == values
    if op is Operator.IN:
        return facts[key] in values  # type: ignore[operator]
    return op is Operator.EXISTS


def _atom_rest(atom: _Atom) -> _Rest:
    op, key, values = atom
    if op is None:
        def equal(labels: Mapping[str, str], key=key, value=values) -> bool:
            return not labels.get(key) != value
        return equal
    if op is Operator.IN:
        def is_in(labels: Mapping[str, str], key=key, values=values) -> bool:
            value = labels.get(key)
            return value is not None and value in values
        return is_in
    if op is Operator.NOT_IN:
        def not_in(labels: Mapping[str, str], key=key, values=values) -> bool:
            value = labels.get(key)
            return value is None or value not in values
        return not_in
    if op is Operator.EXISTS:
        def exists(labels: Mapping[str, str], key=key) -> bool:
            return key in labels
        return exists

    def absent(labels: Mapping[str, str], key=key) -> bool:
        return key not in labels
    return absent


def _all_of(rests: tuple[_Rest, ...]) -> _Rest:
    if len(rests) == 1:
        return rests[0]

    def all_of(labels: Mapping[str, str], rests=rests) -> bool:
        for rest in rests:
            if not rest(labels):
                return False
        return True
    return all_of


def _selector_check(atoms: list[_Atom]) -> _Check:
    """All of `atoms` (ANDed): the first equality inline, the rest cheapest first."""
    if not atoms:
        return _ALWAYS
    key = value = None
    for i, (op, k, v) in enumerate(atoms):
        if op is None:
            key, value = k, v
            atoms = atoms[:i] + atoms[i + 1:]
            break
    # As LabelSelector.matches: Exists/DoesNotExist before the others.
    atoms = sorted(atoms, key=lambda a: a[0] is None or a[0] not in (Operator.EXISTS, Operator.DOES_NOT_EXIST))
    rest = _all_of(tuple(_atom_rest(a) for a in atoms)) if atoms else None
    return (key, value, rest)


def _any_of(checks: list[_Check]) -> _Check:
    """Any of `checks` (the selectors of a side are ORed)."""
    if not checks or any(c == _ALWAYS for c in checks):
        return _ALWAYS
    if len(checks) == 1:
        return checks[0]
    options = tuple(checks)

    def any_of(labels: Mapping[str, str], options=options) -> bool:
        get = labels.get
        for key, value, rest in options:
            if key is not None and get(key) != value:
                continue
            if rest is None or rest(labels):
                return True
        return False
    return (None, None, any_of)


def _side_check(selectors: Iterable[LabelSelector], facts: Mapping[str, str] | None = None) -> _Check:
    """The check of a side: any of `selectors`, less what `facts` (known labels) imply."""
    return _any_of([
        _selector_check([a for a in _atoms(sel) if not facts or not _implied(a, facts)]) for sel in selectors
    ])


# An index: label keys (one or two, sorted) -> a table: for one key, value -> entries; for two,
# first value -> second value -> entries (nested, so that a probe builds no tuple). Entries are
# the tuples of the policies whose selectors require those keys to have those values.
_Index = dict[tuple[str, ...], dict]
# Where to file a policy's side: slot (keys, value; a value pair for two keys) -> the selectors
# filed there.
_Slot = tuple[tuple[str, ...], object]
_Plan = dict[_Slot, list[LabelSelector]]


def _selector_plan(selectors: tuple[LabelSelector, ...]) -> _Plan | None:
    """The index slots for a policy side, or None if one of `selectors` pins no key.

    A label set can match one of `selectors` only if it fills one of that selector's slots. A
    selector with single-valued requirements (`matchLabels`, `In` with one value) is filed under
    its two most selective ones together (e.g. export name and namespace); one with only
    multi-valued `In` requirements under each value of the smallest.
    """
    slots: _Plan = {}
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
                slots.setdefault(((best[0],), singles[best[0]]), []).append(sel)
            else:
                keys = tuple(sorted(best))
                slots.setdefault((keys, (singles[keys[0]], singles[keys[1]])), []).append(sel)
        else:
            key, values = min(equalities, key=lambda kv: (len(kv[1]), _KEY_RANK.get(kv[0], _OTHER_KEY_RANK), kv[0]))
            for value in sorted(values):
                slots.setdefault(((key,), value), []).append(sel)
    return slots


def _slot_facts(slot: _Slot) -> dict[str, str]:
    keys, value = slot
    return {keys[0]: value} if len(keys) == 1 else dict(zip(keys, value))  # type: ignore[arg-type]


def _order(policy: Policy) -> str:
    return ("0" if policy.action is Action.DENY else "1") + policy.name


def _decision(policy: Policy) -> Decision:
    deny = policy.action is Action.DENY
    if policy.privileged:
        tier = Tier.PRIVILEGED_DENY if deny else Tier.PRIVILEGED_ALLOW
    else:
        tier = Tier.DENY if deny else Tier.ALLOW
    return Decision(not deny, tier, policy.ref)


def _placement(policy: Policy) -> tuple[str, dict[_Slot, _Entry]]:
    """Where a policy lives in its scope: ("dst"|"src", slot -> entry) or ("fallback", {None: entry})."""
    order, decision = _order(policy), _decision(policy)
    plan = _selector_plan(policy.to)
    if plan is not None:
        src = _side_check(policy.from_)
        return "dst", {
            slot: (order, decision, *src, *_side_check(sels, _slot_facts(slot))) for slot, sels in plan.items()
        }
    plan = _selector_plan(policy.from_)
    if plan is not None:
        dst = _side_check(policy.to)
        return "src", {
            slot: (order, decision, *_side_check(sels, _slot_facts(slot)), *dst) for slot, sels in plan.items()
        }
    return "fallback", {None: (order, decision, *_side_check(policy.from_), *_side_check(policy.to))}


def _entry_order(entry: _Entry) -> str:
    return entry[0]


def _table_path(slot: _Slot) -> tuple[str, tuple]:
    keys, value = slot
    return keys, ((value,) if len(keys) == 1 else value)  # type: ignore[return-value]


def _index_with(index: _Index, entries: dict[_Slot, _Entry]) -> _Index:
    """A copy of `index` with `entries` filed (copying only the tables on their paths)."""
    out = dict(index)
    copied: set[int] = set()
    for slot, entry in entries.items():
        keys, path = _table_path(slot)
        table = out.get(keys)
        table = {} if table is None else (table if id(table) in copied else dict(table))
        copied.add(id(table))
        out[keys] = table
        for value in path[:-1]:
            inner = table.get(value)
            inner = {} if inner is None else (inner if id(inner) in copied else dict(inner))
            copied.add(id(inner))
            table[value] = inner
            table = inner
        found = list(table.get(path[-1], ()))
        insort(found, entry, key=_entry_order)
        table[path[-1]] = tuple(found)
    return out


def _index_without(index: _Index, slots: Iterable[_Slot], order: str) -> _Index:
    """A copy of `index` without the entries of `order` under `slots` (empty tables dropped)."""
    out = dict(index)
    for slot in slots:
        keys, path = _table_path(slot)
        if keys not in out:
            continue
        tables = [dict(out[keys])]  # the tables on the path, copied (each is small)
        for value in path[:-1]:
            inner = tables[-1].get(value)
            if inner is None:
                break
            tables.append(dict(inner))
        else:
            remaining = tuple(e for e in tables[-1].get(path[-1], ()) if e[0] != order)
            if remaining:
                tables[-1][path[-1]] = remaining
            else:
                tables[-1].pop(path[-1], None)
            for depth in range(len(tables) - 1, 0, -1):
                if tables[depth]:
                    tables[depth - 1][path[depth - 1]] = tables[depth]
                else:
                    tables[depth - 1].pop(path[depth - 1], None)
            if tables[0]:
                out[keys] = tables[0]
            else:
                del out[keys]
    return out


def _freeze(lists: dict[tuple[str, ...], dict]) -> _Index:
    def sort(table: dict, depth: int) -> dict:
        if depth == 1:
            return {value: tuple(sorted(es, key=_entry_order)) for value, es in table.items()}
        return {value: sort(inner, depth - 1) for value, inner in table.items()}

    return {keys: sort(table, len(keys)) for keys, table in lists.items()}


class _Scope:
    """The policies of one scope, indexed: all privileged ones, or the regular ones of a namespace.

    Immutable: `with_policy` and `without_policy` return a new scope sharing what did not change.
    `probes` is what `first_match` walks: (on dst, first key, second key or None, table) per index
    key set, then (None, None, None, fallback entries).
    """

    __slots__ = ("by_dst", "by_src", "fallback", "size", "client_dependent", "probes")

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
        probes: list[tuple] = []
        for on_dst, index in ((True, by_dst), (False, by_src)):
            for keys, table in index.items():
                probes.append((on_dst, keys[0], keys[1] if len(keys) > 1 else None, table))
        if fallback:
            probes.append((None, None, None, fallback))
        self.probes = tuple(probes)

    @classmethod
    def build(cls, policies: Iterable[Policy]) -> _Scope | None:
        lists: dict[str, dict[tuple[str, ...], dict]] = {"dst": {}, "src": {}}
        fallback: list[_Entry] = []
        dependent: list[tuple[str, Decision]] = []
        size = 0
        for policy in policies:
            size += 1
            if policy.depends_on_client_attributes:
                dependent.append(_client_dependent(policy))
            side, entries = _placement(policy)
            if side == "fallback":
                fallback.extend(entries.values())
                continue
            for slot, entry in entries.items():
                keys, path = _table_path(slot)
                table = lists[side].setdefault(keys, {})
                for value in path[:-1]:
                    table = table.setdefault(value, {})
                table.setdefault(path[-1], []).append(entry)
        if not size:
            return None
        return cls(
            _freeze(lists["dst"]),
            _freeze(lists["src"]),
            tuple(sorted(fallback, key=_entry_order)),
            size,
            tuple(sorted(dependent)),
        )

    def with_policy(self, policy: Policy) -> _Scope:
        side, entries = _placement(policy)
        by_dst, by_src, fallback = self.by_dst, self.by_src, self.fallback
        if side == "dst":
            by_dst = _index_with(by_dst, entries)
        elif side == "src":
            by_src = _index_with(by_src, entries)
        else:
            found = list(fallback)
            insort(found, entries[None], key=_entry_order)
            fallback = tuple(found)
        dependent = self.client_dependent
        if policy.depends_on_client_attributes:
            dependent = tuple(sorted(dependent + (_client_dependent(policy),)))
        return _Scope(by_dst, by_src, fallback, self.size + 1, dependent)

    def without_policy(self, policy: Policy) -> _Scope | None:
        if self.size <= 1:
            return None
        order = _order(policy)
        side, entries = _placement(policy)
        by_dst, by_src, fallback = self.by_dst, self.by_src, self.fallback
        if side == "dst":
            by_dst = _index_without(by_dst, entries, order)
        elif side == "src":
            by_src = _index_without(by_src, entries, order)
        else:
            fallback = tuple(e for e in fallback if e[0] != order)
        dependent = tuple(d for d in self.client_dependent if d[0] != policy.name)
        return _Scope(by_dst, by_src, fallback, self.size - 1, dependent)

    def first_match(self, src: Mapping[str, str], dst: Mapping[str, str]) -> Decision | None:
        """The decision of the deciding matching policy (denies first, then by name), or None.

        Every slot the request fills is probed; in each, entries are tried in order until one
        matches or one sorts after the best match so far. Allocates nothing that outlives the call.
        """
        best_order = _NO_ORDER
        best = None
        for on_dst, first, second, table in self.probes:
            if first is None:
                entries = table
            else:
                entries = table.get((dst if on_dst else src).get(first))
                if entries is None:
                    continue
                if second is not None:
                    entries = entries.get((dst if on_dst else src).get(second))
                    if entries is None:
                        continue
            for order, decision, src_key, src_value, src_rest, dst_key, dst_value, dst_rest in entries:
                if order >= best_order:
                    break
                if src_key is not None and src.get(src_key) != src_value:
                    continue
                if dst_key is not None and dst.get(dst_key) != dst_value:
                    continue
                if src_rest is not None and not src_rest(src):
                    continue
                if dst_rest is not None and not dst_rest(dst):
                    continue
                best_order = order
                best = decision
                break
        return best


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
        self.cache: OrderedDict[str, Decision] | None = OrderedDict() if cache_size > 0 else None

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
        # The key is one string: a character counting src's attributes, one counting dst's, the
        # namespace, then every key and every value of src and of dst, joined by NUL characters.
        # Only keys whose parts hold no NUL are stored (counted on a miss). Such a key names one
        # request: a request that builds the same string starts with the same two counts, so has
        # as many parts, and the same number of NULs, all of them separators. A request with a
        # NUL in an attribute, or a non-string attribute, is decided without the cache.
        # A string is not tracked by the garbage collector: a miss leaves nothing behind for it
        # to walk, and an evicted key is one object to free (a tuple key stayed in the youngest
        # generation until a collection, and held every attribute string of its request).
        # Attribute order matters: the same set in another insertion order is another key (a
        # miss, never a wrong answer).
        try:
            key = _join((chr(len(src) + 1), chr(len(dst) + 1), namespace,
                         *src.keys(), *src.values(), *dst.keys(), *dst.values()))
        except (TypeError, ValueError):
            return state.evaluate(src, dst, namespace)
        decision = cache.get(key)
        if decision is not None:
            try:
                cache.move_to_end(key)
            except KeyError:  # evicted by another thread in between: still the right answer
                pass
            return decision
        if key.count(_SEPARATOR) != 2 * (len(src) + len(dst)) + 2:  # a NUL in a part: not cached
            return state.evaluate(src, dst, namespace)
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
