"""Policy documents: the ClusterLink samples parse, malformed documents are rejected by field."""

from __future__ import annotations

import textwrap
from pathlib import Path

import pytest
import yaml
from hypothesis import given
from hypothesis import strategies as st

from controlplane.policy.policy import Action, Policy, PolicyError, parse_policy, parse_policy_spec
from controlplane.policy.selector import LabelSelector

from tests.samples import SAMPLES as _ALL_SAMPLES

SAMPLES = _ALL_SAMPLES / "bookinfo"


def load(text: str) -> dict:
    return yaml.safe_load(textwrap.dedent(text))


def test_sample_privileged_deny_parses():
    policy = parse_policy(yaml.safe_load((SAMPLES / "deny-server1-policy.yaml").read_text()))
    assert policy.privileged
    assert policy.name == "deny-from-server1"
    assert policy.namespace == ""
    assert policy.ref == "deny-from-server1"
    assert policy.action is Action.DENY
    assert policy.from_ == (LabelSelector(),)
    assert policy.to == (LabelSelector({"peer.clusterlink.net/name": "server1"}),)
    assert not policy.depends_on_client_attributes


def test_sample_allow_parses():
    policy = parse_policy(yaml.safe_load((SAMPLES / "allow-policy.yaml").read_text()))
    assert not policy.privileged
    assert (policy.namespace, policy.name, policy.ref) == ("default", "allow-policy", "default/allow-policy")
    assert policy.action is Action.ALLOW
    assert policy.from_ == (LabelSelector(),) and policy.to == (LabelSelector(),)


def test_full_selector_document():
    policy = parse_policy(load("""
        apiVersion: clusterlink.net/v1alpha1
        kind: AccessPolicy
        metadata: {name: client-labels, namespace: team-a}
        spec:
          action: deny
          from:
            - workloadSelector:
                matchLabels: {peer.clusterlink.net/name: client}
                matchExpressions:
                  - {key: client.clusterlink.net/labels.app, operator: NotIn, values: [good]}
          to:
            - workloadSelector: {matchLabels: {export.clusterlink.net/name: reviews}}
            - workloadSelector:
                matchExpressions: [{key: export.clusterlink.net/labels.tier, operator: Exists}]
    """))
    assert policy.depends_on_client_attributes
    assert len(policy.to) == 2
    src = {"peer.clusterlink.net/name": "client", "client.clusterlink.net/labels.app": "bad"}
    assert policy.matches(src, {"export.clusterlink.net/labels.tier": "x"})
    assert policy.matches(src, {"export.clusterlink.net/name": "reviews"})
    assert not policy.matches(src, {"export.clusterlink.net/name": "other"})
    assert not policy.matches({**src, "client.clusterlink.net/labels.app": "good"}, {"export.clusterlink.net/name": "reviews"})
    assert parse_policy(policy.to_dict()) == policy


def test_privileged_namespace_is_cleared():
    policy = parse_policy(load("""
        kind: PrivilegedAccessPolicy
        metadata: {name: p, namespace: somewhere}
        spec: {action: allow, from: [{workloadSelector: {}}], to: [{workloadSelector: {}}]}
    """))
    assert policy.namespace == "" and policy.key == (True, "", "p")
    spec = {"action": "allow", "from": [{"workloadSelector": {}}], "to": [{"workloadSelector": {}}]}
    assert parse_policy_spec(spec, name="p", namespace="ns", privileged=True).namespace == ""


def test_privileged_argument():
    doc = load("""
        metadata: {name: p, namespace: ns}
        spec: {action: allow, from: [{workloadSelector: {}}], to: [{workloadSelector: {}}]}
    """)
    assert parse_policy(doc, privileged=True).privileged
    assert not parse_policy(doc, privileged=False).privileged
    with pytest.raises(PolicyError) as info:
        parse_policy({**doc, "kind": "AccessPolicy"}, privileged=True)
    assert info.value.field == "kind"


def test_client_dependence_is_about_from_only():
    spec = {
        "action": "allow",
        "from": [{"workloadSelector": {}}],
        "to": [{"workloadSelector": {"matchLabels": {"client.clusterlink.net/namespace": "x"}}}],
    }
    assert not parse_policy_spec(spec, name="p", namespace="n", privileged=False).depends_on_client_attributes
    spec["from"] = [{"workloadSelector": {}}, {"workloadSelector": {"matchExpressions": [
        {"key": "client.clusterlink.net/service-account", "operator": "DoesNotExist"}]}}]
    assert parse_policy_spec(spec, name="p", namespace="n", privileged=False).depends_on_client_attributes


VALID_HEAD = """
apiVersion: clusterlink.net/v1alpha1
kind: AccessPolicy
metadata: {name: p, namespace: ns}
"""

MALFORMED = [
    # (YAML text, field, words in the reason)
    ("- just a list", "", "must be an object"),
    (VALID_HEAD, "spec", "required"),
    (VALID_HEAD + "spec: []", "spec", "must be an object"),
    (VALID_HEAD + "spec: {from: [{workloadSelector: {}}], to: [{workloadSelector: {}}]}", "spec.action", "required"),
    (VALID_HEAD + "spec: {action: '', from: [{workloadSelector: {}}], to: [{workloadSelector: {}}]}", "spec.action", "must not be empty"),
    (VALID_HEAD + "spec: {action: permit, from: [{workloadSelector: {}}], to: [{workloadSelector: {}}]}", "spec.action", 'unknown action "permit"'),
    (VALID_HEAD + "spec: {action: Allow, from: [{workloadSelector: {}}], to: [{workloadSelector: {}}]}", "spec.action", 'unknown action "Allow"'),
    (VALID_HEAD + "spec: {action: 1, from: [{workloadSelector: {}}], to: [{workloadSelector: {}}]}", "spec.action", "must be a string"),
    (VALID_HEAD + "spec: {action: allow, to: [{workloadSelector: {}}]}", "spec.from", "required"),
    (VALID_HEAD + "spec: {action: allow, from: [], to: [{workloadSelector: {}}]}", "spec.from", "must not be empty"),
    (VALID_HEAD + "spec: {action: allow, from: {workloadSelector: {}}, to: [{workloadSelector: {}}]}", "spec.from", "must be a list"),
    (VALID_HEAD + "spec: {action: allow, from: [{workloadSelector: {}}]}", "spec.to", "required"),
    (VALID_HEAD + "spec: {action: allow, from: [{workloadSelector: {}}], to: []}", "spec.to", "must not be empty"),
    (VALID_HEAD + "spec: {action: allow, from: [{workloadSelector: {}}], to: [{workloadSelector: {}}], extra: 1}", "spec.extra", "unknown field"),
    (VALID_HEAD + "spec: {action: allow, from: [{}], to: [{workloadSelector: {}}]}", "spec.from[0]", "workloadSelector is required"),
    (VALID_HEAD + "spec: {action: allow, from: [{workloadSelector: null}], to: [{workloadSelector: {}}]}", "spec.from[0]", "workloadSelector is required"),
    (VALID_HEAD + "spec: {action: allow, from: [app], to: [{workloadSelector: {}}]}", "spec.from[0]", "must be an object"),
    (VALID_HEAD + "spec: {action: allow, from: [{workloadSelector: {}}], to: [{workloadSets: [a]}]}", "spec.to[0].workloadSets", "workloadSets is not supported yet"),
    (
        VALID_HEAD + "spec: {action: allow, from: [{workloadSelector: {}}], to: [{workloadSets: [a], workloadSelector: {}}]}",
        "spec.to[0]",
        "exactly one of workloadSelector or workloadSets",
    ),
    (VALID_HEAD + "spec: {action: allow, from: [{workloadSets: []}], to: [{workloadSelector: {}}]}", "spec.from[0]", "workloadSelector is required"),
    (VALID_HEAD + "spec: {action: allow, from: [{workloadSets: a}], to: [{workloadSelector: {}}]}", "spec.from[0].workloadSets", "must be a list"),
    (VALID_HEAD + "spec: {action: allow, from: [{workloadSelectors: {}}], to: [{workloadSelector: {}}]}", "spec.from[0].workloadSelectors", "unknown field"),
    (VALID_HEAD + "spec: {action: allow, from: [{workloadSelector: []}], to: [{workloadSelector: {}}]}", "spec.from[0].workloadSelector", "must be an object"),
    (
        VALID_HEAD + """spec:
  action: allow
  from: [{workloadSelector: {}}]
  to:
    - workloadSelector:
        matchExpressions:
          - {key: a, operator: Exists}
          - {key: b, operator: Foo}
""",
        "spec.to[0].workloadSelector.matchExpressions[1].operator",
        'unknown operator "Foo" (want In, NotIn, Exists, DoesNotExist)',
    ),
    (
        VALID_HEAD + "spec: {action: allow, from: [{workloadSelector: {matchExpressions: [{key: a, operator: In}]}}], to: [{workloadSelector: {}}]}",
        "spec.from[0].workloadSelector.matchExpressions[0].values",
        "non-empty for operator In",
    ),
    (
        VALID_HEAD + "spec: {action: allow, from: [{workloadSelector: {matchExpressions: [{key: a, operator: Exists, values: [x]}]}}], to: [{workloadSelector: {}}]}",
        "spec.from[0].workloadSelector.matchExpressions[0].values",
        "empty for operator Exists",
    ),
    (
        VALID_HEAD + "spec: {action: allow, from: [{workloadSelector: {matchLabels: {app: 3}}}], to: [{workloadSelector: {}}]}",
        "spec.from[0].workloadSelector.matchLabels.app",
        "must be a string, not a number",
    ),
    (
        VALID_HEAD + "spec: {action: allow, from: [{workloadSelector: {matchLabels: {app: yes}}}], to: [{workloadSelector: {}}]}",
        "spec.from[0].workloadSelector.matchLabels.app",
        "must be a string, not a boolean",
    ),
    (
        VALID_HEAD + "spec: {action: allow, from: [{workloadSelector: {matchLabels: {'bad key': x}}}], to: [{workloadSelector: {}}]}",
        "spec.from[0].workloadSelector.matchLabels",
        "invalid label key",
    ),
    (
        VALID_HEAD + "spec: {action: allow, from: [{workloadSelector: {matchLables: {a: b}}}], to: [{workloadSelector: {}}]}",
        "spec.from[0].workloadSelector.matchLables",
        "unknown field",
    ),
    (
        VALID_HEAD + "spec: {action: allow, from: [{workloadSelector: {}}], to: [{workloadSelector: {matchLabels: {a: 'has space'}}}]}",
        "spec.to[0].workloadSelector.matchLabels.a",
        "invalid label value",
    ),
    # metadata, kind, apiVersion
    ("kind: AccessPolicy\nspec: {}", "metadata", "required"),
    ("kind: AccessPolicy\nmetadata: []\nspec: {}", "metadata", "must be an object"),
    ("kind: AccessPolicy\nmetadata: {namespace: ns}\nspec: {}", "metadata.name", "required"),
    ("kind: AccessPolicy\nmetadata: {name: '', namespace: ns}\nspec: {}", "metadata.name", "required"),
    ("kind: AccessPolicy\nmetadata: {name: Bad_Name, namespace: ns}\nspec: {action: allow, from: [{workloadSelector: {}}], to: [{workloadSelector: {}}]}", "metadata.name", "DNS subdomain"),
    ("kind: AccessPolicy\nmetadata: {name: 7, namespace: ns}\nspec: {action: allow, from: [{workloadSelector: {}}], to: [{workloadSelector: {}}]}", "metadata.name", "must be a string"),
    ("kind: AccessPolicy\nmetadata: {name: p}\nspec: {action: allow, from: [{workloadSelector: {}}], to: [{workloadSelector: {}}]}", "metadata.namespace", "required for an AccessPolicy"),
    ("kind: AccessPolicy\nmetadata: {name: p, namespace: ''}\nspec: {}", "metadata.namespace", "required"),
    ("kind: AccessPolicy\nmetadata: {name: p, namespace: Not.A.Label}\nspec: {action: allow, from: [{workloadSelector: {}}], to: [{workloadSelector: {}}]}", "metadata.namespace", "DNS label"),
    ("metadata: {name: p, namespace: ns}\nspec: {}", "kind", "required"),
    ("kind: Export\nmetadata: {name: p, namespace: ns}\nspec: {}", "kind", "unknown kind"),
    ("apiVersion: clusterlink.net/v1\nkind: AccessPolicy\nmetadata: {name: p, namespace: ns}\nspec: {}", "apiVersion", "unsupported apiVersion"),
]


@pytest.mark.parametrize(("text", "field", "words"), MALFORMED)
def test_malformed_documents_are_rejected_by_field(text, field, words):
    with pytest.raises(PolicyError) as info:
        parse_policy(yaml.safe_load(text))
    assert info.value.field == field, str(info.value)
    assert words in info.value.reason, str(info.value)
    if field:
        assert str(info.value).startswith(f"{field}: ")


def test_policy_constructor_validates():
    sel = (LabelSelector(),)
    with pytest.raises(PolicyError, match="cluster-scoped"):
        Policy("p", "ns", True, Action.ALLOW, sel, sel)
    with pytest.raises(PolicyError, match="required for an AccessPolicy"):
        Policy("p", "", False, Action.ALLOW, sel, sel)
    with pytest.raises(PolicyError, match="spec.from: must not be empty"):
        Policy("p", "ns", False, Action.ALLOW, (), sel)
    with pytest.raises(PolicyError, match=r"spec.to\[0\]: must be a LabelSelector"):
        Policy("p", "ns", False, Action.ALLOW, sel, ({},))
    with pytest.raises(ValueError):
        Policy("p", "ns", False, "maybe", sel, sel)
    policy = Policy("p", "ns", False, "deny", sel, sel)
    assert policy.action is Action.DENY and str(policy) == "AccessPolicy ns/p"


_json = st.recursive(
    st.none() | st.booleans() | st.integers() | st.sampled_from(["allow", "deny", "p", "ns", "In", "Exists", "a", ""]),
    lambda children: st.lists(children, max_size=3)
    | st.dictionaries(
        st.sampled_from([
            "apiVersion", "kind", "metadata", "name", "namespace", "spec", "action", "from", "to",
            "workloadSelector", "workloadSets", "matchLabels", "matchExpressions", "key", "operator", "values", "a",
        ]),
        children,
        max_size=4,
    ),
    max_leaves=20,
)


@given(_json, st.sampled_from([None, True, False]))
def test_garbage_raises_only_policy_error(doc, privileged):
    try:
        policy = parse_policy(doc, privileged=privileged)
    except PolicyError:
        return
    assert isinstance(policy, Policy)
