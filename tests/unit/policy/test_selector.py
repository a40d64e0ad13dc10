"""Label selectors: Kubernetes matching semantics, validation messages, round trips."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from controlplane.policy.selector import (
    LabelSelector,
    Operator,
    Requirement,
    SelectorError,
    check_label_key,
    check_label_value,
    parse_selector,
)

LABELS = {"app": "web", "tier": "frontend", "env": ""}

MATCH_CASES = [
    # (selector document, labels, expected)
    ({}, {}, True),
    ({}, LABELS, True),
    ({"matchLabels": {}}, LABELS, True),
    ({"matchExpressions": []}, LABELS, True),
    ({"matchLabels": {"app": "web"}}, LABELS, True),
    ({"matchLabels": {"app": "db"}}, LABELS, False),
    ({"matchLabels": {"missing": "x"}}, LABELS, False),
    ({"matchLabels": {"env": ""}}, LABELS, True),
    ({"matchLabels": {"missing": ""}}, LABELS, False),  # an empty value still requires the key
    ({"matchLabels": {"app": "web", "tier": "frontend"}}, LABELS, True),
    ({"matchLabels": {"app": "web", "tier": "backend"}}, LABELS, False),
    # In
    ({"matchExpressions": [{"key": "app", "operator": "In", "values": ["web", "api"]}]}, LABELS, True),
    ({"matchExpressions": [{"key": "app", "operator": "In", "values": ["db"]}]}, LABELS, False),
    ({"matchExpressions": [{"key": "missing", "operator": "In", "values": ["x"]}]}, LABELS, False),
    # NotIn: matches when the key is absent
    ({"matchExpressions": [{"key": "app", "operator": "NotIn", "values": ["db"]}]}, LABELS, True),
    ({"matchExpressions": [{"key": "app", "operator": "NotIn", "values": ["web"]}]}, LABELS, False),
    ({"matchExpressions": [{"key": "missing", "operator": "NotIn", "values": ["x"]}]}, LABELS, True),
    ({"matchExpressions": [{"key": "missing", "operator": "NotIn", "values": ["x"]}]}, {}, True),
    # Exists / DoesNotExist (also with an empty value)
    ({"matchExpressions": [{"key": "app", "operator": "Exists"}]}, LABELS, True),
    ({"matchExpressions": [{"key": "env", "operator": "Exists"}]}, LABELS, True),
    ({"matchExpressions": [{"key": "missing", "operator": "Exists"}]}, LABELS, False),
    ({"matchExpressions": [{"key": "missing", "operator": "DoesNotExist"}]}, LABELS, True),
    ({"matchExpressions": [{"key": "env", "operator": "DoesNotExist"}]}, LABELS, False),
    ({"matchExpressions": [{"key": "app", "operator": "Exists", "values": []}]}, LABELS, True),
    # matchLabels AND matchExpressions, and expressions ANDed together
    (
        {"matchLabels": {"app": "web"}, "matchExpressions": [{"key": "tier", "operator": "In", "values": ["frontend"]}]},
        LABELS,
        True,
    ),
    (
        {"matchLabels": {"app": "web"}, "matchExpressions": [{"key": "tier", "operator": "In", "values": ["backend"]}]},
        LABELS,
        False,
    ),
    (
        {"matchLabels": {"app": "db"}, "matchExpressions": [{"key": "tier", "operator": "Exists"}]},
        LABELS,
        False,
    ),
    (
        {"matchExpressions": [
            {"key": "app", "operator": "Exists"},
            {"key": "tier", "operator": "NotIn", "values": ["frontend"]},
        ]},
        LABELS,
        False,
    ),
    # the ClusterLink attribute keys
    (
        {"matchLabels": {"peer.clusterlink.net/labels.cluster": "east"}},
        {"peer.clusterlink.net/labels.cluster": "east", "peer.clusterlink.net/name": "p1"},
        True,
    ),
    (
        {"matchExpressions": [{"key": "client.clusterlink.net/labels.app", "operator": "NotIn", "values": ["evil"]}]},
        {"client.clusterlink.net/labels.app": "good"},
        True,
    ),
]


@pytest.mark.parametrize(("doc", "labels", "expected"), MATCH_CASES)
def test_matches(doc, labels, expected):
    assert parse_selector(doc).matches(labels) is expected


INVALID_CASES = [
    # (selector document, field of the error, words in the message)
    ([], "", "must be an object"),
    ("app=web", "", "must be an object"),
    ({"matchLabel": {"a": "b"}}, "matchLabel", "unknown field"),
    ({"matchLabels": ["a"]}, "matchLabels", "must be an object"),
    ({"matchLabels": {"a": 1}}, "matchLabels.a", "must be a string, not a number"),
    ({"matchLabels": {"a": True}}, "matchLabels.a", "must be a string, not a boolean"),
    ({"matchLabels": {"a": None}}, "matchLabels.a", "must be a string, not null"),
    ({"matchLabels": {"a": "b c"}}, "matchLabels.a", "invalid label value"),
    ({"matchLabels": {"a": "x" * 64}}, "matchLabels.a", "at most 63"),
    ({"matchLabels": {"bad key": "x"}}, "matchLabels", "invalid label key"),
    ({"matchLabels": {1: "x"}}, "matchLabels", "label key must be a string"),
    ({"matchExpressions": {"key": "a"}}, "matchExpressions", "must be a list"),
    ({"matchExpressions": ["a"]}, "matchExpressions[0]", "must be an object"),
    (
        {"matchExpressions": [{"key": "a", "operator": "Exists"}, {"key": "a", "operator": "Foo"}]},
        "matchExpressions[1].operator",
        'unknown operator "Foo" (want In, NotIn, Exists, DoesNotExist)',
    ),
    ({"matchExpressions": [{"key": "a", "operator": "in", "values": ["x"]}]}, "matchExpressions[0].operator", "unknown operator"),
    ({"matchExpressions": [{"key": "a", "operator": 3}]}, "matchExpressions[0].operator", "must be a string"),
    ({"matchExpressions": [{"key": "a"}]}, "matchExpressions[0].operator", "required"),
    ({"matchExpressions": [{"operator": "Exists"}]}, "matchExpressions[0].key", "required"),
    ({"matchExpressions": [{"key": "a/b/c", "operator": "Exists"}]}, "matchExpressions[0].key", "invalid label key"),
    ({"matchExpressions": [{"key": 5, "operator": "Exists"}]}, "matchExpressions[0].key", "must be a string"),
    ({"matchExpressions": [{"key": "a", "operator": "In"}]}, "matchExpressions[0].values", "non-empty for operator In"),
    ({"matchExpressions": [{"key": "a", "operator": "In", "values": []}]}, "matchExpressions[0].values", "non-empty"),
    ({"matchExpressions": [{"key": "a", "operator": "NotIn", "values": []}]}, "matchExpressions[0].values", "non-empty for operator NotIn"),
    ({"matchExpressions": [{"key": "a", "operator": "Exists", "values": ["x"]}]}, "matchExpressions[0].values", "empty for operator Exists"),
    (
        {"matchExpressions": [{"key": "a", "operator": "DoesNotExist", "values": ["x"]}]},
        "matchExpressions[0].values",
        "empty for operator DoesNotExist",
    ),
    ({"matchExpressions": [{"key": "a", "operator": "In", "values": "x"}]}, "matchExpressions[0].values", "must be a list"),
    ({"matchExpressions": [{"key": "a", "operator": "In", "values": ["x", 2]}]}, "matchExpressions[0].values[1]", "must be a string"),
    ({"matchExpressions": [{"key": "a", "operator": "In", "values": ["-x"]}]}, "matchExpressions[0].values[0]", "invalid label value"),
    (
        {"matchExpressions": [{"key": "a", "operator": "Exists", "value": ["x"]}]},
        "matchExpressions[0].value",
        "unknown field",
    ),
]


@pytest.mark.parametrize(("doc", "field", "words"), INVALID_CASES)
def test_invalid_selectors_name_the_field(doc, field, words):
    with pytest.raises(SelectorError) as info:
        parse_selector(doc)
    assert info.value.field == field
    assert words in info.value.reason


def test_error_path_prefix():
    with pytest.raises(SelectorError) as info:
        parse_selector({"matchExpressions": [{"key": "a", "operator": "Foo"}]}, "spec.to[0].workloadSelector")
    assert info.value.field == "spec.to[0].workloadSelector.matchExpressions[0].operator"
    assert str(info.value).startswith("spec.to[0].workloadSelector.matchExpressions[0].operator: unknown operator")


KEY_CASES = [
    ("app", True),
    ("a", True),
    ("app.kubernetes.io/name", True),
    ("peer.clusterlink.net/labels.cluster", True),
    ("client.clusterlink.net/labels.app", True),
    ("client.clusterlink.net/service-account", True),
    ("export.clusterlink.net/labels.my_label.v2", True),
    ("A-b_c.D", True),
    ("x" * 63, True),
    ("example.com/" + "x" * 63, True),
    ("", False),
    ("/a", False),
    ("a/", False),
    ("a/b/c", False),
    ("-a", False),
    ("a-", False),
    ("_a", False),
    ("a b", False),
    ("x" * 64, False),
    ("Example.com/a", False),  # the prefix is a lowercase DNS subdomain
    ("exa_mple.com/a", False),
    ("-example.com/a", False),
    ("example..com/a", False),
    (("a" * 63 + ".") * 4 + "/x", False),  # prefix longer than 253
    ("peer.clusterlink.net/labels.", False),
]


@pytest.mark.parametrize(("key", "valid"), KEY_CASES)
def test_label_key_validation(key, valid):
    assert (check_label_key(key) is None) is valid


VALUE_CASES = [
    ("", True),
    ("v1", True),
    ("a.b-c_d", True),
    ("x" * 63, True),
    ("x" * 64, False),
    ("-a", False),
    ("a.", False),
    ("a/b", False),
    ("a b", False),
    (1, False),
    (None, False),
]


@pytest.mark.parametrize(("value", "valid"), VALUE_CASES)
def test_label_value_validation(value, valid):
    assert (check_label_value(value) is None) is valid


def test_constructors_validate():
    with pytest.raises(SelectorError, match="non-empty"):
        Requirement("a", Operator.IN)
    with pytest.raises(SelectorError, match="empty for operator Exists"):
        Requirement("a", Operator.EXISTS, frozenset({"x"}))
    with pytest.raises(SelectorError, match="invalid label key"):
        Requirement("bad key", Operator.EXISTS)
    with pytest.raises(ValueError):
        Requirement("a", "Foo")
    with pytest.raises(SelectorError, match="invalid label value"):
        LabelSelector({"a": "b c"})
    assert LabelSelector({"b": "2", "a": "1"}) == LabelSelector((("a", "1"), ("b", "2")))
    assert Requirement("a", "In", ["x"]).operator is Operator.IN


def test_everything_and_str():
    assert LabelSelector.everything().is_empty
    assert LabelSelector.everything().matches({"anything": "x"})
    sel = parse_selector({
        "matchLabels": {"app": "web"},
        "matchExpressions": [
            {"key": "t", "operator": "NotIn", "values": ["b", "a"]},
            {"key": "e", "operator": "Exists"},
            {"key": "d", "operator": "DoesNotExist"},
        ],
    })
    assert str(sel) == "app=web,t notin (a,b),e,!d"
    assert sel.keys() == {"app", "t", "e", "d"}
    assert [r.operator for r in sel.requirements] == [Operator.IN, Operator.NOT_IN, Operator.EXISTS, Operator.DOES_NOT_EXIST]


# --- properties --------------------------------------------------------------------------------

_keys = st.sampled_from(["app", "tier", "peer.clusterlink.net/name", "client.clusterlink.net/labels.app"])
_values = st.sampled_from(["", "a", "b", "c-1"])


@st.composite
def selector_docs(draw):
    doc = {}
    if draw(st.booleans()):
        doc["matchLabels"] = draw(st.dictionaries(_keys, _values, max_size=3))
    if draw(st.booleans()):
        exprs = []
        for _ in range(draw(st.integers(0, 3))):
            op = draw(st.sampled_from(["In", "NotIn", "Exists", "DoesNotExist"]))
            expr = {"key": draw(_keys), "operator": op}
            if op in ("In", "NotIn"):
                expr["values"] = draw(st.lists(_values, min_size=1, max_size=3))
            exprs.append(expr)
        doc["matchExpressions"] = exprs
    return doc


def _reference_matches(doc, labels):
    for key, value in (doc.get("matchLabels") or {}).items():
        if key not in labels or labels[key] != value:
            return False
    for expr in doc.get("matchExpressions") or []:
        key, op, values = expr["key"], expr["operator"], expr.get("values") or []
        present = key in labels
        if op == "In" and not (present and labels[key] in values):
            return False
        if op == "NotIn" and present and labels[key] in values:
            return False
        if op == "Exists" and not present:
            return False
        if op == "DoesNotExist" and present:
            return False
    return True


@given(selector_docs(), st.dictionaries(_keys, _values, max_size=4))
def test_matching_agrees_with_the_kubernetes_definition(doc, labels):
    assert parse_selector(doc).matches(labels) == _reference_matches(doc, labels)


@given(selector_docs())
def test_to_dict_round_trips(doc):
    sel = parse_selector(doc)
    assert parse_selector(sel.to_dict()) == sel


_json = st.recursive(
    st.none() | st.booleans() | st.integers() | st.text(max_size=5) | st.sampled_from(["In", "NotIn", "Exists", "app"]),
    lambda children: st.lists(children, max_size=3)
    | st.dictionaries(st.sampled_from(["matchLabels", "matchExpressions", "key", "operator", "values", "app", "x"]), children, max_size=3),
    max_leaves=12,
)


@given(_json)
def test_garbage_raises_only_selector_error(doc):
    try:
        sel = parse_selector(doc)
    except SelectorError:
        return
    assert isinstance(sel, LabelSelector)
