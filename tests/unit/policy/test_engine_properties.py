"""Properties of the engine, checked against a plain linear evaluation of the raw documents.

`reference_decide` below restates the rules directly on the policy *documents* (not on the parsed
objects), one policy after another, with no index and no cache: obviously correct and slow.
"""

from __future__ import annotations

from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, initialize, invariant, rule

from controlplane.policy.engine import Decision, PolicyEngine, Tier
from controlplane.policy.policy import parse_policy

# Small universes, so that random selectors and random requests meet often.
KEYS = [
    "peer.clusterlink.net/name",
    "client.clusterlink.net/labels.app",
    "export.clusterlink.net/name",
    "export.clusterlink.net/namespace",
    "export.clusterlink.net/labels.app",
]
VALUES = ["a", "b"]
NAMESPACES = ["ns1", "ns2"]
NAMES = ["p1", "p2", "p3", "p4"]


# --- the reference ------------------------------------------------------------------------------


def ref_selector(doc: dict, labels: dict) -> bool:
    for key, value in (doc.get("matchLabels") or {}).items():
        if key not in labels or labels[key] != value:
            return False
    for e in doc.get("matchExpressions") or []:
        key, op, values = e["key"], e["operator"], e.get("values") or []
        if op == "In" and not (key in labels and labels[key] in values):
            return False
        if op == "NotIn" and key in labels and labels[key] in values:
            return False
        if op == "Exists" and key not in labels:
            return False
        if op == "DoesNotExist" and key in labels:
            return False
    return True


def ref_key(doc: dict) -> tuple[bool, str, str]:
    privileged = doc["kind"] == "PrivilegedAccessPolicy"
    return (privileged, "" if privileged else doc["metadata"]["namespace"], doc["metadata"]["name"])


def ref_ref(doc: dict) -> str:
    privileged, namespace, name = ref_key(doc)
    return name if privileged else f"{namespace}/{name}"


def ref_decide(docs: dict, src: dict, dst: dict, namespace: str) -> tuple[bool, Tier, str]:
    """`docs`: key -> document. Returns (allowed, tier, policy)."""
    applicable = [d for k, d in docs.items() if k[0] or k[1] == namespace]

    def reads_client(doc: dict) -> bool:
        for element in doc["spec"]["from"]:
            sel = element["workloadSelector"]
            keys = list((sel.get("matchLabels") or {}).keys()) + [e["key"] for e in sel.get("matchExpressions") or []]
            if any(k.startswith("client.clusterlink.net/") for k in keys):
                return True
        return False

    dependent = sorted((not ref_key(d)[0], ref_key(d)[2], ref_ref(d)) for d in applicable if reads_client(d))
    if dependent and not any(k.startswith("client.clusterlink.net/") for k in src):
        return (False, Tier.CLIENT_ATTRIBUTES_REQUIRED, dependent[0][2])

    def matches(doc: dict) -> bool:
        spec = doc["spec"]
        return any(ref_selector(e["workloadSelector"], src) for e in spec["from"]) and any(
            ref_selector(e["workloadSelector"], dst) for e in spec["to"]
        )

    for privileged, action, tier in [
        (True, "deny", Tier.PRIVILEGED_DENY),
        (True, "allow", Tier.PRIVILEGED_ALLOW),
        (False, "deny", Tier.DENY),
        (False, "allow", Tier.ALLOW),
    ]:
        names = sorted(
            ref_key(d)[2] for d in applicable if ref_key(d)[0] == privileged and d["spec"]["action"] == action and matches(d)
        )
        if names:
            name = names[0]
            return (action == "allow", tier, name if privileged else f"{namespace}/{name}")
    return (False, Tier.DEFAULT_DENY, "<default deny>")


def as_tuple(decision: Decision) -> tuple[bool, Tier, str]:
    return (decision.allowed, decision.tier, decision.policy)


# --- strategies --------------------------------------------------------------------------------

attributes = st.dictionaries(st.sampled_from(KEYS), st.sampled_from(VALUES), max_size=len(KEYS))


@st.composite
def selectors(draw) -> dict:
    doc: dict = {}
    # Mostly equality requirements (indexed), sometimes only expressions or nothing (fallback).
    if draw(st.integers(0, 3)) > 0:
        doc["matchLabels"] = draw(st.dictionaries(st.sampled_from(KEYS), st.sampled_from(VALUES), max_size=2))
    if draw(st.integers(0, 2)) == 0:
        exprs = []
        for _ in range(draw(st.integers(1, 2))):
            op = draw(st.sampled_from(["In", "NotIn", "Exists", "DoesNotExist"]))
            e = {"key": draw(st.sampled_from(KEYS)), "operator": op}
            if op in ("In", "NotIn"):
                e["values"] = draw(st.lists(st.sampled_from(VALUES), min_size=1, max_size=3))
            exprs.append(e)
        doc["matchExpressions"] = exprs
    return doc


@st.composite
def policy_docs(draw, names=st.sampled_from(NAMES), actions=st.sampled_from(["allow", "deny"])) -> dict:
    privileged = draw(st.integers(0, 3)) == 0
    metadata = {"name": draw(names)}
    if not privileged:
        metadata["namespace"] = draw(st.sampled_from(NAMESPACES))
    return {
        "apiVersion": "clusterlink.net/v1alpha1",
        "kind": "PrivilegedAccessPolicy" if privileged else "AccessPolicy",
        "metadata": metadata,
        "spec": {
            "action": draw(actions),
            "from": [{"workloadSelector": s} for s in draw(st.lists(selectors(), min_size=1, max_size=2))],
            "to": [{"workloadSelector": s} for s in draw(st.lists(selectors(), min_size=1, max_size=2))],
        },
    }


requests = st.tuples(attributes, attributes, st.sampled_from(NAMESPACES + ["ns3"]))
cache_sizes = st.sampled_from([0, 2, 1024])


def load(docs: list[dict], cache_size: int) -> tuple[PolicyEngine, dict]:
    engine = PolicyEngine(cache_size=cache_size)
    by_key: dict = {}
    for doc in docs:
        engine.add(parse_policy(doc))
        by_key[ref_key(doc)] = doc
    return engine, by_key


# --- properties --------------------------------------------------------------------------------


@given(attributes, attributes, st.text(max_size=8))
def test_default_deny_without_policies(src, dst, namespace):
    assert as_tuple(PolicyEngine().decide(src, dst, namespace)) == (False, Tier.DEFAULT_DENY, "<default deny>")


def satisfy(draw, labels: dict, selector: dict) -> None:
    """Add to `labels` what `selector` asks for (it may still not match: a later one can undo it)."""
    labels.update(selector.get("matchLabels") or {})
    for e in selector.get("matchExpressions") or []:
        if e["operator"] == "In":
            labels[e["key"]] = draw(st.sampled_from(e["values"]))
        elif e["operator"] == "Exists":
            labels[e["key"]] = draw(st.sampled_from(VALUES))
        elif e["operator"] == "DoesNotExist":
            labels.pop(e["key"], None)


@st.composite
def aimed_requests(draw, docs: list[dict]) -> tuple[dict, dict, str]:
    """A request built to match several of `docs` at once (so that they compete)."""
    src, dst = draw(attributes), draw(attributes)
    namespaces = NAMESPACES
    if docs:
        chosen = draw(st.lists(st.sampled_from(docs), min_size=1, max_size=3))
        for doc in chosen:
            satisfy(draw, src, draw(st.sampled_from(doc["spec"]["from"]))["workloadSelector"])
            satisfy(draw, dst, draw(st.sampled_from(doc["spec"]["to"]))["workloadSelector"])
        namespaces = [d["metadata"]["namespace"] for d in chosen if "namespace" in d["metadata"]] or NAMESPACES
    return src, dst, draw(st.sampled_from(namespaces))


@settings(max_examples=300)
@given(st.lists(policy_docs(), max_size=8), st.lists(requests, min_size=1, max_size=3), cache_sizes, st.data())
def test_engine_agrees_with_the_reference(docs, reqs, cache_size, data):
    engine, by_key = load(docs, cache_size)
    reqs = reqs + data.draw(st.lists(aimed_requests(docs), min_size=1, max_size=4))
    for _ in range(2):  # the second round comes from the cache
        for src, dst, namespace in reqs:
            assert as_tuple(engine.decide(src, dst, namespace)) == ref_decide(by_key, src, dst, namespace)


@given(st.lists(policy_docs(), max_size=8), requests, cache_sizes)
def test_replace_all_agrees_with_adding_one_by_one(docs, request, cache_size):
    engine, _ = load(docs, cache_size)
    swapped = PolicyEngine(cache_size=cache_size)
    swapped.replace_all(parse_policy(d) for d in docs)
    assert swapped.decide(*request) == engine.decide(*request)
    assert swapped.policies() == engine.policies()


@given(
    st.lists(policy_docs(), max_size=8),
    policy_docs(names=st.just("new-deny"), actions=st.just("deny")),
    st.lists(requests, min_size=1, max_size=4),
)
def test_adding_a_deny_never_turns_a_deny_into_an_allow(docs, deny, reqs):
    engine, _ = load(docs, 16)
    before = [engine.decide(*r) for r in reqs]
    engine.add(parse_policy(deny))
    for r, b in zip(reqs, before):
        after = engine.decide(*r)
        if not b.allowed:
            assert not after.allowed
        if after.allowed:
            assert after == b


@given(st.lists(policy_docs(), max_size=8), st.lists(requests, min_size=1, max_size=4))
def test_a_privileged_verdict_is_never_overridden_by_a_regular_policy(docs, reqs):
    everything, _ = load(docs, 16)
    privileged_only, _ = load([d for d in docs if d["kind"] == "PrivilegedAccessPolicy"], 16)
    for r in reqs:
        alone = privileged_only.decide(*r)
        combined = everything.decide(*r)
        if alone.tier in (Tier.PRIVILEGED_DENY, Tier.PRIVILEGED_ALLOW):
            # Regular policies can only add the client-attributes rule, which comes before tiers.
            assert combined == alone or combined.tier is Tier.CLIENT_ATTRIBUTES_REQUIRED
        if combined.tier in (Tier.DENY, Tier.ALLOW):
            assert alone.tier in (Tier.DEFAULT_DENY, Tier.CLIENT_ATTRIBUTES_REQUIRED) or alone == combined


# --- interleaved mutations (cache invalidation) -------------------------------------------------

# A fixed pool of requests, so that the same ones recur across mutations and hit the cache.
_POOL_SRC = [
    {},
    {"peer.clusterlink.net/name": "a"},
    {"peer.clusterlink.net/name": "b"},
    {"peer.clusterlink.net/name": "a", "client.clusterlink.net/labels.app": "a"},
    {"peer.clusterlink.net/name": "b", "client.clusterlink.net/labels.app": "b"},
]
_POOL_DST = [
    {},
    {"export.clusterlink.net/name": "a", "export.clusterlink.net/namespace": "a"},
    {"export.clusterlink.net/name": "a", "export.clusterlink.net/namespace": "b", "export.clusterlink.net/labels.app": "a"},
    {"export.clusterlink.net/name": "b", "export.clusterlink.net/labels.app": "b", "peer.clusterlink.net/name": "a"},
]
POOL = [(s, d, ns) for s in _POOL_SRC for d in _POOL_DST for ns in NAMESPACES]


class EngineMachine(RuleBasedStateMachine):
    @initialize(cache_size=cache_sizes)
    def start(self, cache_size):
        self.engine = PolicyEngine(cache_size=cache_size)
        self.docs: dict = {}

    @rule(doc=policy_docs())
    def add(self, doc):
        self.engine.add(parse_policy(doc))
        self.docs[ref_key(doc)] = doc

    @rule(privileged=st.booleans(), namespace=st.sampled_from(NAMESPACES), name=st.sampled_from(NAMES))
    def delete(self, privileged, namespace, name):
        key = (privileged, "" if privileged else namespace, name)
        assert self.engine.delete(privileged, namespace, name) is (key in self.docs)
        self.docs.pop(key, None)

    @rule(docs=st.lists(policy_docs(), max_size=5))
    def replace_all(self, docs):
        self.engine.replace_all(parse_policy(d) for d in docs)
        self.docs = {ref_key(d): d for d in docs}

    @rule(request=st.sampled_from(POOL))
    def decide_known(self, request):
        assert as_tuple(self.engine.decide(*request)) == ref_decide(self.docs, *request)

    @rule(request=requests)
    def decide_any(self, request):
        assert as_tuple(self.engine.decide(*request)) == ref_decide(self.docs, *request)

    @invariant()
    def same_policy_set(self):
        if hasattr(self, "engine"):
            assert {p.key for p in self.engine.policies()} == set(self.docs)


EngineMachine.TestCase.settings = settings(max_examples=75, stateful_step_count=30, deadline=None)
test_engine_with_interleaved_mutations = EngineMachine.TestCase
