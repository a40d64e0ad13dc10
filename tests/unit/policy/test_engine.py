"""The decision engine: tiers, namespace scoping, the client-attributes rule, mutations, cache."""

from __future__ import annotations

import threading

import pytest

from controlplane.policy.engine import DEFAULT_DENY_POLICY, Decision, PolicyEngine, Tier
from controlplane.policy.policy import Policy, parse_policy, parse_policy_spec
from tests.samples import SAMPLES as SAMPLES_DIR

PEER = "peer.clusterlink.net/name"
PEER_REGION = "peer.clusterlink.net/labels.region"
CLIENT_NS = "client.clusterlink.net/namespace"
CLIENT_SA = "client.clusterlink.net/service-account"
CLIENT_APP = "client.clusterlink.net/labels.app"
EXPORT = "export.clusterlink.net/name"
EXPORT_NS = "export.clusterlink.net/namespace"
EXPORT_APP = "export.clusterlink.net/labels.app"

ALL = {}


def pol(name: str, action: str, *, ns: str | None = None, frm=(ALL,), to=(ALL,)) -> Policy:
    """A policy; privileged when `ns` is None."""
    spec = {
        "action": action,
        "from": [{"workloadSelector": s} for s in frm],
        "to": [{"workloadSelector": s} for s in to],
    }
    return parse_policy_spec(spec, name=name, namespace=ns or "", privileged=ns is None)


def labels(**kv: str) -> dict:
    return {"matchLabels": kv}


def expr(key: str, op: str, *values: str) -> dict:
    e = {"key": key, "operator": op}
    if values:
        e["values"] = list(values)
    return {"matchExpressions": [e]}


def engine_with(*policies: Policy, cache_size: int | None = None) -> PolicyEngine:
    engine = PolicyEngine() if cache_size is None else PolicyEngine(cache_size=cache_size)
    for p in policies:
        engine.add(p)
    return engine


SRC = {PEER: "client", PEER_REGION: "eu", CLIENT_NS: "app", CLIENT_SA: "default", CLIENT_APP: "web"}
DST = {PEER: "server", EXPORT: "reviews", EXPORT_NS: "ns", EXPORT_APP: "reviews"}
SRC_UNKNOWN_CLIENT = {PEER: "client", PEER_REGION: "eu"}

DENY = (False,)
DEFAULT = (False, Tier.DEFAULT_DENY, DEFAULT_DENY_POLICY)

CASES = [
    # id, policies, src, dst, namespace, expected (allowed, tier, policy)
    ("no policies", [], SRC, DST, "ns", DEFAULT),
    ("regular allow in its namespace", [pol("a", "allow", ns="ns")], SRC, DST, "ns", (True, Tier.ALLOW, "ns/a")),
    ("regular allow in another namespace", [pol("a", "allow", ns="other")], SRC, DST, "ns", DEFAULT),
    ("privileged allow everywhere", [pol("a", "allow")], SRC, DST, "anything", (True, Tier.PRIVILEGED_ALLOW, "a")),
    ("privileged deny everywhere", [pol("d", "deny"), pol("a", "allow", ns="ns")], SRC, DST, "ns", (False, Tier.PRIVILEGED_DENY, "d")),
    ("regular deny beats regular allow", [pol("a", "allow", ns="ns"), pol("d", "deny", ns="ns")], SRC, DST, "ns", (False, Tier.DENY, "ns/d")),
    ("privileged allow beats regular deny", [pol("a", "allow"), pol("d", "deny", ns="ns")], SRC, DST, "ns", (True, Tier.PRIVILEGED_ALLOW, "a")),
    ("privileged deny beats privileged allow", [pol("a", "allow"), pol("d", "deny")], SRC, DST, "ns", (False, Tier.PRIVILEGED_DENY, "d")),
    ("deny of another namespace does not count", [pol("a", "allow", ns="ns"), pol("d", "deny", ns="other")], SRC, DST, "ns", (True, Tier.ALLOW, "ns/a")),
    ("same name in two namespaces", [pol("p", "deny", ns="other"), pol("p", "allow", ns="ns")], SRC, DST, "ns", (True, Tier.ALLOW, "ns/p")),
    ("the smallest name decides within a tier", [pol("zz", "deny", ns="ns"), pol("bb", "deny", ns="ns"), pol("cc", "deny", ns="ns")], SRC, DST, "ns", (False, Tier.DENY, "ns/bb")),
    ("a non-matching deny is skipped", [pol("a", "allow", ns="ns"), pol("d", "deny", ns="ns", to=(labels(**{EXPORT: "ratings"}),))], SRC, DST, "ns", (True, Tier.ALLOW, "ns/a")),
    # from / to: any element
    ("from matches the second element", [pol("a", "allow", ns="ns", frm=(labels(**{PEER: "x"}), labels(**{PEER: "client"})))], SRC, DST, "ns", (True, Tier.ALLOW, "ns/a")),
    ("to matches the second element", [pol("a", "allow", ns="ns", to=(labels(**{EXPORT: "x"}), labels(**{EXPORT: "reviews"})))], SRC, DST, "ns", (True, Tier.ALLOW, "ns/a")),
    ("from matches but to does not", [pol("a", "allow", ns="ns", frm=(labels(**{PEER: "client"}),), to=(labels(**{EXPORT: "x"}),))], SRC, DST, "ns", DEFAULT),
    ("to matches but from does not", [pol("a", "allow", ns="ns", frm=(labels(**{PEER: "x"}),), to=(labels(**{EXPORT: "reviews"}),))], SRC, DST, "ns", DEFAULT),
    ("export name and namespace", [pol("a", "allow", ns="ns", to=(labels(**{EXPORT: "reviews", EXPORT_NS: "ns"}),))], SRC, DST, "ns", (True, Tier.ALLOW, "ns/a")),
    ("export name, wrong namespace", [pol("a", "allow", ns="ns", to=(labels(**{EXPORT: "reviews", EXPORT_NS: "x"}),))], SRC, DST, "ns", DEFAULT),
    ("peer name on the source only", [pol("a", "allow", ns="ns", frm=(labels(**{PEER: "client"}),))], SRC, DST, "ns", (True, Tier.ALLOW, "ns/a")),
    ("peer name is per side", [pol("a", "allow", ns="ns", frm=(labels(**{PEER: "server"}),))], SRC, DST, "ns", DEFAULT),
    # operators
    ("In, one of several values", [pol("a", "allow", ns="ns", to=(expr(EXPORT_APP, "In", "x", "reviews"),))], SRC, DST, "ns", (True, Tier.ALLOW, "ns/a")),
    ("In, no value matches", [pol("a", "allow", ns="ns", to=(expr(EXPORT_APP, "In", "x", "y"),))], SRC, DST, "ns", DEFAULT),
    ("NotIn, absent key matches", [pol("a", "allow", ns="ns", to=(expr("export.clusterlink.net/labels.zone", "NotIn", "x"),))], SRC, DST, "ns", (True, Tier.ALLOW, "ns/a")),
    ("NotIn, excluded value", [pol("a", "allow", ns="ns", frm=(expr(CLIENT_APP, "NotIn", "web"),))], SRC, DST, "ns", DEFAULT),
    ("NotIn deny spares other clients", [pol("a", "allow", ns="ns"), pol("d", "deny", ns="ns", frm=(expr(CLIENT_APP, "NotIn", "web"),))], SRC, DST, "ns", (True, Tier.ALLOW, "ns/a")),
    ("Exists", [pol("a", "allow", ns="ns", frm=(expr(PEER_REGION, "Exists"),))], SRC, DST, "ns", (True, Tier.ALLOW, "ns/a")),
    ("Exists, absent", [pol("a", "allow", ns="ns", to=(expr(PEER_REGION, "Exists"),))], SRC, DST, "ns", DEFAULT),
    ("DoesNotExist", [pol("a", "allow", ns="ns", to=(expr(PEER_REGION, "DoesNotExist"),))], SRC, DST, "ns", (True, Tier.ALLOW, "ns/a")),
    ("DoesNotExist, present", [pol("a", "allow", ns="ns", frm=(expr(PEER_REGION, "DoesNotExist"),))], SRC, DST, "ns", DEFAULT),
    ("empty selector matches empty attributes", [pol("a", "allow", ns="ns")], {}, {}, "ns", (True, Tier.ALLOW, "ns/a")),
    # the client-attributes rule
    (
        "client-dependent policy, unknown client",
        [pol("a", "allow", ns="ns", frm=(labels(**{CLIENT_NS: "app"}),))],
        SRC_UNKNOWN_CLIENT, DST, "ns", (False, Tier.CLIENT_ATTRIBUTES_REQUIRED, "ns/a"),
    ),
    (
        "client-dependent policy, known client",
        [pol("a", "allow", ns="ns", frm=(labels(**{CLIENT_NS: "app"}),))],
        SRC, DST, "ns", (True, Tier.ALLOW, "ns/a"),
    ),
    (
        "client-dependent policy, known client that does not match",
        [pol("a", "allow", ns="ns", frm=(labels(**{CLIENT_NS: "other"}),))],
        SRC, DST, "ns", DEFAULT,
    ),
    (
        "any client key counts as a known client",
        [pol("a", "allow", ns="ns", frm=(expr(CLIENT_SA, "DoesNotExist"),))],
        {PEER: "client", "client.clusterlink.net/labels.x": "y"}, DST, "ns", (True, Tier.ALLOW, "ns/a"),
    ),
    (
        "a key that only looks like a client key is not a client attribute",
        [pol("a", "allow", ns="ns", frm=(expr(CLIENT_SA, "DoesNotExist"),))],
        {PEER: "client", "client.example.com/namespace": "x"}, DST, "ns", (False, Tier.CLIENT_ATTRIBUTES_REQUIRED, "ns/a"),
    ),
    (
        "NotIn on a client label still needs a known client",
        [pol("a", "allow", ns="ns", frm=(expr(CLIENT_APP, "NotIn", "evil"),))],
        SRC_UNKNOWN_CLIENT, DST, "ns", (False, Tier.CLIENT_ATTRIBUTES_REQUIRED, "ns/a"),
    ),
    (
        "the rule checks every applicable policy, matching or not",
        [pol("all", "allow", ns="ns"), pol("sa", "deny", ns="ns", frm=(labels(**{CLIENT_SA: "x"}),), to=(labels(**{EXPORT: "other"}),))],
        SRC_UNKNOWN_CLIENT, DST, "ns", (False, Tier.CLIENT_ATTRIBUTES_REQUIRED, "ns/sa"),
    ),
    (
        "a client-dependent policy of another namespace does not apply",
        [pol("all", "allow", ns="ns"), pol("sa", "allow", ns="other", frm=(labels(**{CLIENT_SA: "x"}),))],
        SRC_UNKNOWN_CLIENT, DST, "ns", (True, Tier.ALLOW, "ns/all"),
    ),
    (
        "a privileged client-dependent policy applies everywhere, before the tiers",
        [pol("all", "allow"), pol("sa", "deny", frm=(labels(**{CLIENT_SA: "x"}),))],
        SRC_UNKNOWN_CLIENT, DST, "anywhere", (False, Tier.CLIENT_ATTRIBUTES_REQUIRED, "sa"),
    ),
    (
        "the rule overrides a privileged allow",
        [pol("all", "allow"), pol("sa", "allow", ns="ns", frm=(labels(**{CLIENT_SA: "x"}),))],
        SRC_UNKNOWN_CLIENT, DST, "ns", (False, Tier.CLIENT_ATTRIBUTES_REQUIRED, "ns/sa"),
    ),
    (
        "privileged policies are named first, then by name",
        [pol("b", "allow", ns="ns", frm=(labels(**{CLIENT_SA: "x"}),)), pol("z", "allow", frm=(labels(**{CLIENT_SA: "x"}),)), pol("y", "allow", frm=(labels(**{CLIENT_NS: "x"}),))],
        SRC_UNKNOWN_CLIENT, DST, "ns", (False, Tier.CLIENT_ATTRIBUTES_REQUIRED, "y"),
    ),
    (
        "client keys in `to` do not make a policy client-dependent",
        [pol("a", "allow", ns="ns", to=(expr(CLIENT_SA, "DoesNotExist"),))],
        SRC_UNKNOWN_CLIENT, DST, "ns", (True, Tier.ALLOW, "ns/a"),
    ),
    (
        "a peer-only policy needs no client",
        [pol("a", "allow", ns="ns", frm=(labels(**{PEER: "client"}),))],
        SRC_UNKNOWN_CLIENT, DST, "ns", (True, Tier.ALLOW, "ns/a"),
    ),
]


@pytest.mark.parametrize(("policies", "src", "dst", "namespace", "expected"), [c[1:] for c in CASES], ids=[c[0] for c in CASES])
@pytest.mark.parametrize("cache_size", [0, 16])
def test_decisions(policies, src, dst, namespace, expected, cache_size):
    engine = engine_with(*policies, cache_size=cache_size)
    decision = engine.decide(src, dst, namespace)
    assert (decision.allowed, decision.tier, decision.policy) == expected
    assert engine.decide(src, dst, namespace) == decision  # again, from the cache if any
    # the same through one atomic replacement
    engine2 = PolicyEngine(cache_size=cache_size)
    engine2.replace_all(policies)
    assert engine2.decide(src, dst, namespace) == decision


def test_deleting_tiers_from_the_top():
    engine = engine_with(
        pol("ra", "allow", ns="ns"), pol("rd", "deny", ns="ns"), pol("pa", "allow"), pol("pd", "deny"),
    )
    seen = [engine.decide(SRC, DST, "ns")]
    for privileged, name in [(True, "pd"), (True, "pa"), (False, "rd"), (False, "ra")]:
        assert engine.delete(privileged, "ns", name) is True
        seen.append(engine.decide(SRC, DST, "ns"))
    assert seen == [
        Decision(False, Tier.PRIVILEGED_DENY, "pd"),
        Decision(True, Tier.PRIVILEGED_ALLOW, "pa"),
        Decision(False, Tier.DENY, "ns/rd"),
        Decision(True, Tier.ALLOW, "ns/ra"),
        Decision(False, Tier.DEFAULT_DENY, "<default deny>"),
    ]
    assert len(engine) == 0


def test_delete_missing_is_fine():
    engine = engine_with(pol("a", "allow", ns="ns"), pol("p", "deny"))
    generation = engine.generation
    assert engine.delete(False, "ns", "missing") is False
    assert engine.delete(False, "other", "a") is False  # wrong namespace
    assert engine.delete(True, "", "a") is False  # regular, not privileged
    assert engine.generation == generation
    assert engine.delete(True, "whatever", "p") is True  # the namespace of a privileged key is ignored
    assert engine.delete(True, "", "p") is False
    assert engine.decide(SRC, DST, "ns") == Decision(True, Tier.ALLOW, "ns/a")


def test_the_client_rule_follows_deletions_and_replacements():
    engine = engine_with(pol("all", "allow", ns="ns"), pol("sa", "deny", ns="ns", frm=(labels(**{CLIENT_SA: "x"}),)), pol("psa", "deny", frm=(labels(**{CLIENT_SA: "x"}),)))
    assert engine.decide(SRC_UNKNOWN_CLIENT, DST, "ns") == Decision(False, Tier.CLIENT_ATTRIBUTES_REQUIRED, "psa")
    engine.delete(True, "", "psa")
    assert engine.decide(SRC_UNKNOWN_CLIENT, DST, "ns") == Decision(False, Tier.CLIENT_ATTRIBUTES_REQUIRED, "ns/sa")
    engine.add(pol("sa", "deny", ns="ns", frm=(labels(**{PEER: "x"}),)))  # no longer reads client attributes
    assert engine.decide(SRC_UNKNOWN_CLIENT, DST, "ns") == Decision(True, Tier.ALLOW, "ns/all")
    engine.add(pol("sa", "deny", ns="ns", frm=(labels(**{CLIENT_SA: "x"}),)))
    engine.delete(False, "ns", "sa")
    assert engine.decide(SRC_UNKNOWN_CLIENT, DST, "ns") == Decision(True, Tier.ALLOW, "ns/all")


def test_replacing_a_policy_moves_it():
    engine = engine_with(pol("p", "allow", ns="ns", to=(labels(**{EXPORT: "reviews"}),)))
    assert engine.decide(SRC, DST, "ns").allowed
    engine.add(pol("p", "allow", ns="ns", to=(labels(**{EXPORT: "ratings"}),)))  # same key, new selector
    assert engine.decide(SRC, DST, "ns") == Decision(False, Tier.DEFAULT_DENY, DEFAULT_DENY_POLICY)
    assert engine.decide(SRC, {**DST, EXPORT: "ratings"}, "ns").allowed
    engine.add(pol("p", "deny", ns="ns", to=(labels(**{EXPORT: "ratings"}),)))  # same key, new action
    assert engine.decide(SRC, {**DST, EXPORT: "ratings"}, "ns") == Decision(False, Tier.DENY, "ns/p")
    assert len(engine) == 1


def test_replace_all_swaps_the_set():
    engine = engine_with(pol("old", "allow", ns="ns"))
    engine.replace_all([pol("new", "deny", ns="ns"), pol("x", "allow", ns="ns"), pol("x", "allow", ns="ns", frm=(labels(**{PEER: "nobody"}),))])
    assert engine.get(False, "ns", "old") is None
    assert engine.decide(SRC, DST, "ns") == Decision(False, Tier.DENY, "ns/new")
    assert [p.ref for p in engine.policies()] == ["ns/new", "ns/x"]
    assert engine.get(False, "ns", "x").from_[0].match_labels == ((PEER, "nobody"),)  # the later duplicate wins
    engine.replace_all([])
    assert len(engine) == 0
    assert engine.decide(SRC, DST, "ns").tier is Tier.DEFAULT_DENY


def test_only_parsed_policies_are_accepted():
    engine = PolicyEngine()
    doc = {"kind": "AccessPolicy", "metadata": {"name": "a", "namespace": "ns"}, "spec": {"action": "allow"}}
    with pytest.raises(TypeError, match="parse_policy"):
        engine.add(doc)
    with pytest.raises(TypeError):
        engine.replace_all([pol("a", "allow", ns="ns"), doc])
    assert len(engine) == 0 and engine.generation == 0
    with pytest.raises(ValueError):
        PolicyEngine(cache_size=-1)


def test_generation_and_cache_invalidation():
    engine = PolicyEngine(cache_size=4)
    assert engine.generation == 0
    assert not engine.decide(SRC, DST, "ns").allowed
    assert engine.cached_decisions == 1
    engine.add(pol("a", "allow", ns="ns"))
    assert engine.generation == 1 and engine.cached_decisions == 0
    assert engine.decide(SRC, DST, "ns").allowed
    engine.add(pol("a", "allow", ns="ns"))  # identical: no change, the cache survives
    assert engine.generation == 1 and engine.cached_decisions == 1
    engine.add(pol("d", "deny"))
    assert engine.decide(SRC, DST, "ns") == Decision(False, Tier.PRIVILEGED_DENY, "d")
    engine.delete(True, "", "d")
    assert engine.decide(SRC, DST, "ns").allowed
    engine.replace_all([])
    assert not engine.decide(SRC, DST, "ns").allowed
    assert engine.generation == 4


def test_cache_is_bounded_and_order_insensitive():
    engine = engine_with(pol("a", "allow", ns="ns", frm=(labels(**{CLIENT_APP: "web"}),)), cache_size=3)
    for i in range(10):
        engine.decide({**SRC, "client.clusterlink.net/labels.pod": f"p{i}"}, DST, "ns")
    assert engine.cached_decisions == 3
    reordered = dict(reversed(list(SRC.items())))
    assert engine.decide(reordered, DST, "ns") == engine.decide(SRC, DST, "ns") == Decision(True, Tier.ALLOW, "ns/a")
    assert engine.decide({**SRC, CLIENT_APP: "db"}, DST, "ns").tier is Tier.DEFAULT_DENY


def test_cache_keys_do_not_collide():
    """Keys and values are laid out flat: shifting a boundary must not give the same key."""
    engine = engine_with(pol("a", "allow", ns="ns", frm=(labels(x="1"),)))
    assert engine.decide({"x": "1"}, {"y": "2"}, "ns").allowed
    assert not engine.decide({}, {"x": "1", "y": "2"}, "ns").allowed
    assert not engine.decide({"x": "1", "y": "2"}, {}, "other").allowed
    assert engine.decide({"x": "1", "y": "2"}, {}, "ns").allowed


def test_cache_keys_with_nul_characters_are_not_cached():
    """The cache key joins attributes with NULs: two requests that only differ in where a NUL
    falls build the same string, so such requests are decided without the cache."""
    engine = engine_with(pol("a", "allow", ns="ns", frm=(expr("a", "Exists"),)))
    assert engine.decide({"a": "b\x00c"}, {}, "x\x00ns").allowed is False  # regular policy, other ns
    assert engine.decide({"a": "b\x00c"}, {}, "ns").allowed
    assert engine.cached_decisions == 0
    assert not engine.decide({"a\x00b": "c"}, {}, "ns").allowed  # the same joined string
    assert engine.decide({"a": "b"}, {"c": "d"}, "ns").allowed
    assert engine.cached_decisions == 1
    assert not engine.decide({"x": "a"}, {"b": "c", "d": "e"}, "ns").allowed  # shifted boundaries
    assert not engine.decide({"x": "a\x00b"}, {"c": "d"}, "ns").allowed


def test_a_cache_miss_leaves_nothing_for_the_garbage_collector():
    """A miss stores a string key and a shared Decision: no object the collector tracks, so
    misses neither count towards a collection nor lengthen one, however many there are."""
    import gc

    engine = engine_with(
        pol("a", "allow", ns="ns", frm=(labels(**{PEER: "client"}), expr(CLIENT_APP, "In", "web", "db"))),
        pol("b", "deny", ns="ns", to=(labels(**{EXPORT: "x", EXPORT_NS: "ns"}),)),
        pol("c", "deny", frm=(expr(PEER_REGION, "NotIn", "eu"),)),
        cache_size=300,
    )
    requests = [({**SRC, "client.clusterlink.net/labels.pod": f"p{i}"}, {**DST, EXPORT: f"e{i % 7}"}) for i in range(1000)]
    first, rest = requests[0], requests[1:]
    engine.decide(*first, "ns")
    gc.collect()
    gc.disable()
    try:
        tracked, allocations = len(gc.get_objects()), gc.get_count()[0]
        for src, dst in rest:  # fills the cache, then evicts
            engine.decide(src, dst, "ns")
        tracked, allocations = len(gc.get_objects()) - tracked, gc.get_count()[0] - allocations
        assert engine.cached_decisions == 300
        assert tracked <= 5 and allocations <= 10, (tracked, allocations)  # tuple keys: ~300 each
    finally:
        gc.enable()


def test_non_string_attributes_do_not_break_decide():
    engine = engine_with(pol("a", "allow", ns="ns", frm=(labels(**{PEER: "client"}),)))
    assert engine.decide({PEER: "client", "odd": ["unhashable"]}, DST, "ns").allowed
    assert not engine.decide({PEER: 7}, DST, "ns").allowed
    dependent = engine_with(pol("a", "allow", ns="ns", frm=(labels(**{CLIENT_NS: "app"}),)))
    assert dependent.decide({1: "x", CLIENT_NS: "app"}, DST, "ns").allowed
    assert dependent.decide({1: "x"}, DST, "ns").tier is Tier.CLIENT_ATTRIBUTES_REQUIRED


def test_bookinfo_samples():
    import yaml
    from pathlib import Path

    samples = SAMPLES_DIR / "bookinfo"
    engine = PolicyEngine()
    for name in ("deny-server1-policy.yaml", "allow-policy.yaml"):
        engine.add(parse_policy(yaml.safe_load((samples / name).read_text())))
    egress_src = {PEER: "client"}
    assert engine.decide(egress_src, {PEER: "server1", EXPORT: "reviews", EXPORT_NS: "default"}, "default") == Decision(
        False, Tier.PRIVILEGED_DENY, "deny-from-server1"
    )
    assert engine.decide(egress_src, {PEER: "server2", EXPORT: "reviews", EXPORT_NS: "default"}, "default") == Decision(
        True, Tier.ALLOW, "default/allow-policy"
    )
    assert engine.decide(egress_src, {PEER: "server2"}, "other").tier is Tier.DEFAULT_DENY


def test_decide_while_mutating_from_threads():
    """Readers see either the old or the new set, never an error or a mixture."""
    allow_all = [pol("all", "allow", ns="ns")]
    deny_all = [pol("all", "allow", ns="ns"), pol("stop", "deny")]
    allowed = Decision(True, Tier.ALLOW, "ns/all")
    denied = Decision(False, Tier.PRIVILEGED_DENY, "stop")
    engine = PolicyEngine(cache_size=8)
    engine.replace_all(allow_all)
    errors: list[BaseException] = []
    bad: list[Decision] = []
    stop = threading.Event()

    def reader(k: int) -> None:
        try:
            for i in range(20000):
                if stop.is_set():
                    break
                d = engine.decide({**SRC, "client.clusterlink.net/labels.n": str((i + k) % 20)}, DST, "ns")
                if d != allowed and d != denied:
                    bad.append(d)
        except BaseException as exc:  # noqa: BLE001 - reported below
            errors.append(exc)

    readers = [threading.Thread(target=reader, args=(k,)) for k in range(4)]
    for t in readers:
        t.start()
    try:
        for i in range(300):
            engine.replace_all(deny_all if i % 2 else allow_all)
            engine.add(pol("stop", "deny"))
            engine.delete(True, "", "stop")
    finally:
        stop.set()
        for t in readers:
            t.join(timeout=60)
    assert not errors and not bad
    assert engine.decide(SRC, DST, "ns") == allowed


# --- index layouts: policies filed by destination keys, by source keys, or in the fallback -------

INDEX_CASES = [
    # id, policies, src, dst, expected (allowed, tier, policy) in namespace "ns"
    *[
        (f"multi-valued In on to, value {v}", [pol("a", "allow", ns="ns", to=(expr(EXPORT, "In", "x", "y", "z"),))],
         SRC, {EXPORT: v}, (True, Tier.ALLOW, "ns/a") if v != "w" else DEFAULT)
        for v in ("x", "y", "z", "w")
    ],
    *[
        (f"multi-valued In on from, value {v}", [pol("a", "allow", ns="ns", frm=(expr(PEER, "In", "x", "y", "z"),))],
         {PEER: v}, DST, (True, Tier.ALLOW, "ns/a") if v != "w" else DEFAULT)
        for v in ("x", "y", "z", "w")
    ],
    ("two keys together", [pol("a", "allow", ns="ns", to=(labels(**{EXPORT: "r", EXPORT_NS: "n"}),))], SRC, {EXPORT_NS: "n", EXPORT: "r"}, (True, Tier.ALLOW, "ns/a")),
    ("two keys, one differs", [pol("a", "allow", ns="ns", to=(labels(**{EXPORT: "r", EXPORT_NS: "n"}),))], SRC, {EXPORT_NS: "m", EXPORT: "r"}, DEFAULT),
    ("two keys, one missing", [pol("a", "allow", ns="ns", to=(labels(**{EXPORT: "r", EXPORT_NS: "n"}),))], SRC, {EXPORT: "r"}, DEFAULT),
    ("three keys, the unindexed one differs", [pol("a", "allow", ns="ns", to=(labels(**{EXPORT: "r", EXPORT_NS: "n", EXPORT_APP: "x"}),))], SRC, {EXPORT: "r", EXPORT_NS: "n", EXPORT_APP: "y"}, DEFAULT),
    ("matchLabels and In disagree: never", [pol("a", "allow", ns="ns", to=({"matchLabels": {EXPORT: "a"}, "matchExpressions": [{"key": EXPORT, "operator": "In", "values": ["b"]}]},))], SRC, {EXPORT: "a"}, DEFAULT),
    ("single-valued In is like matchLabels", [pol("a", "allow", ns="ns", to=({"matchExpressions": [{"key": EXPORT, "operator": "In", "values": ["r"]}, {"key": EXPORT_APP, "operator": "In", "values": ["x", "y"]}]},))], SRC, {EXPORT: "r", EXPORT_APP: "y"}, (True, Tier.ALLOW, "ns/a")),
    ("an unindexable to element sends the policy to the source index", [pol("a", "allow", ns="ns", frm=(labels(**{PEER: "client"}),), to=(labels(**{EXPORT: "x"}), expr(EXPORT_APP, "Exists")))], SRC, DST, (True, Tier.ALLOW, "ns/a")),
    ("unindexable on both sides: fallback", [pol("a", "allow", ns="ns", frm=(labels(**{PEER: "x"}), expr(PEER_REGION, "Exists")), to=(expr(EXPORT_APP, "NotIn", "z"),))], SRC, DST, (True, Tier.ALLOW, "ns/a")),
    # Competing matches filed in different places: the smallest name still decides, both ways round.
    ("by-dst b vs by-src a", [pol("b", "deny", ns="ns", to=(labels(**{EXPORT: "reviews"}),)), pol("a", "deny", ns="ns", frm=(labels(**{PEER: "client"}),))], SRC, DST, (False, Tier.DENY, "ns/a")),
    ("by-dst a vs by-src b", [pol("a", "deny", ns="ns", to=(labels(**{EXPORT: "reviews"}),)), pol("b", "deny", ns="ns", frm=(labels(**{PEER: "client"}),))], SRC, DST, (False, Tier.DENY, "ns/a")),
    ("by-src b vs fallback a", [pol("b", "allow", ns="ns", frm=(labels(**{PEER: "client"}),)), pol("a", "allow", ns="ns")], SRC, DST, (True, Tier.ALLOW, "ns/a")),
    ("fallback b vs by-src a", [pol("b", "allow", ns="ns"), pol("a", "allow", ns="ns", frm=(labels(**{PEER: "client"}),))], SRC, DST, (True, Tier.ALLOW, "ns/a")),
    ("two dst slots, c vs a vs b", [pol("c", "deny", ns="ns", to=(labels(**{EXPORT: "reviews"}),)), pol("a", "deny", ns="ns", to=(labels(**{EXPORT: "reviews", EXPORT_NS: "ns"}),)), pol("b", "deny", ns="ns", to=(expr(EXPORT_APP, "In", "reviews", "x"),))], SRC, DST, (False, Tier.DENY, "ns/a")),
    ("a matching allow filed first loses to a deny filed later", [pol("a", "allow", ns="ns", to=(labels(**{EXPORT: "reviews"}),)), pol("z", "deny", ns="ns", frm=(labels(**{PEER: "client"}),))], SRC, DST, (False, Tier.DENY, "ns/z")),
    ("a deny that does not match does not hide a smaller allow", [pol("a", "allow", ns="ns", frm=(labels(**{PEER: "client"}),)), pol("b", "deny", ns="ns", to=(labels(**{EXPORT: "reviews"}),), frm=(labels(**{PEER: "x"}),))], SRC, DST, (True, Tier.ALLOW, "ns/a")),
]


@pytest.mark.parametrize(("policies", "src", "dst", "expected"), [c[1:] for c in INDEX_CASES], ids=[c[0] for c in INDEX_CASES])
def test_index_layouts(policies, src, dst, expected):
    for engine in (engine_with(*policies, cache_size=0), engine_with(*reversed(policies), cache_size=0)):
        decision = engine.decide(src, dst, "ns")
        assert (decision.allowed, decision.tier, decision.policy) == expected
    engine = PolicyEngine(cache_size=0)
    engine.replace_all(policies)
    assert engine.decide(src, dst, "ns") == decision


@pytest.mark.parametrize(
    "policy",
    [
        pol("p", "allow", ns="ns", to=(labels(**{EXPORT: "reviews"}),)),
        pol("p", "allow", ns="ns", to=(expr(EXPORT_APP, "In", "x", "reviews"),)),
        pol("p", "allow", ns="ns", frm=(labels(**{PEER: "client"}),)),
        pol("p", "allow", ns="ns", frm=(expr(PEER_REGION, "Exists"),)),
        pol("p", "allow", to=(labels(**{EXPORT: "reviews", EXPORT_NS: "ns"}),)),
    ],
    ids=["by-dst", "by-dst-multi", "by-src", "fallback", "privileged-two-keys"],
)
def test_deleted_policies_are_gone_from_the_index(policy):
    other = pol("other", "allow", ns="ns", to=(labels(**{EXPORT: "reviews"}),), frm=(labels(**{PEER: "nobody"}),))
    engine = engine_with(other, policy, cache_size=0)
    assert engine.decide(SRC, DST, "ns").policy == policy.ref
    assert engine.delete(policy.privileged, policy.namespace, policy.name)
    assert engine.decide(SRC, DST, "ns").tier is Tier.DEFAULT_DENY
    engine.add(policy)
    assert engine.decide(SRC, DST, "ns").policy == policy.ref
