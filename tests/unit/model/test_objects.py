"""Object model: parsing ClusterLink manifests, defaults, and clear errors for bad input."""

import re
from pathlib import Path

import pytest

from controlplane.model import schema as S
from controlplane.model.conditions import get_condition, set_condition
from controlplane.model.objects import ModelError, parse_documents

from tests.samples import SAMPLES
SAMPLE_FILES = sorted(SAMPLES.glob("*/*.yaml"))


def envsubst(text: str) -> str:
    return re.sub(r"\$\{(\w+)\}", "192.0.2.10", text)


@pytest.mark.parametrize("path", SAMPLE_FILES, ids=lambda p: f"{p.parent.name}/{p.name}")
def test_every_clusterlink_sample_is_accepted_unchanged(path):
    objects = parse_documents(envsubst(path.read_text()), source=str(path))
    assert objects and all(o.kind in S.BY_KIND for o in objects)


def test_import_defaults_and_fields():
    (imp,) = parse_documents("""
apiVersion: clusterlink.net/v1alpha1
kind: Import
metadata: {name: reviews, namespace: default, labels: {env: test}}
spec:
  port: 9080
  sources: [{exportName: reviews, exportNamespace: default, peer: server1}]
""")
    assert imp.spec["lbScheme"] == "round-robin"
    assert imp.labels == {"env": "test"}
    assert imp.key == ("Import", "default", "reviews")


def test_missing_namespace_defaults_and_privileged_policy_is_cluster_scoped():
    objs = parse_documents("""
apiVersion: clusterlink.net/v1alpha1
kind: Export
metadata: {name: a}
spec: {port: 80}
---
apiVersion: clusterlink.net/v1alpha1
kind: PrivilegedAccessPolicy
metadata: {name: p, namespace: ignored}
spec: {action: deny, from: [{workloadSelector: {}}], to: [{workloadSelector: {}}]}
""")
    assert objs[0].namespace == "default"
    assert objs[1].namespace == ""


BAD = [
    ("kind: Import\napiVersion: clusterlink.net/v1alpha1\nmetadata: {name: x}\nspec: {sources: [{peer: a, exportName: b, exportNamespace: c}]}",
     "spec.port: required field is missing"),
    ("kind: Import\napiVersion: clusterlink.net/v1alpha1\nmetadata: {name: x}\n"
     "spec: {port: 80, sources: [{peer: a, exportName: b}]}", "spec.sources[0].exportNamespace: required"),
    ("kind: Import\napiVersion: clusterlink.net/v1alpha1\nmetadata: {name: x}\n"
     "spec: {port: 80, lbScheme: fastest, sources: [{peer: a, exportName: b, exportNamespace: c}]}",
     "spec.lbScheme: unsupported value 'fastest'"),
    ("kind: Import\napiVersion: clusterlink.net/v1alpha1\nmetadata: {name: " + "a" * 64 + "}\n"
     "spec: {port: 80, sources: [{peer: a, exportName: b, exportNamespace: c}]}", "at most 63 characters"),
    ("kind: Export\napiVersion: clusterlink.net/v1alpha1\nmetadata: {name: x}\nspec: {port: 70000}",
     "spec.port: must be at most 65535"),
    ("kind: Export\napiVersion: clusterlink.net/v1alpha1\nmetadata: {name: x}\nspec: {port: '80'}",
     "spec.port: must be an integer"),
    ("kind: Export\napiVersion: clusterlink.net/v1alpha1\nmetadata: {name: x}\nspec: {port: 80, hots: a}",
     "spec.hots: unknown field"),
    ("kind: Export\napiVersion: clusterlink.net/v1\nmetadata: {name: x}\nspec: {port: 80}", "apiVersion: must be"),
    ("kind: Exprot\napiVersion: clusterlink.net/v1alpha1\nmetadata: {name: x}\nspec: {}", "unknown kind 'Exprot'"),
    ("kind: Export\napiVersion: clusterlink.net/v1alpha1\nmetadata: {name: Bad_Name}\nspec: {port: 1}",
     "metadata.name: 'Bad_Name' is not a valid name"),
    ("kind: Peer\napiVersion: clusterlink.net/v1alpha1\nmetadata: {name: p}\n"
     "spec: {gateways: [{host: '${SERVER_IP}', port: 30443}]}", "unsubstituted placeholder"),
    ("kind: Peer\napiVersion: clusterlink.net/v1alpha1\nmetadata: {name: p}\nspec: {gateways: []}",
     "spec.gateways: must not be empty"),
    ("kind: AccessPolicy\napiVersion: clusterlink.net/v1alpha1\nmetadata: {name: p}\n"
     "spec: {action: allow, from: [{workloadSets: [a]}], to: [{workloadSelector: {}}]}", "not supported"),
    ("kind: AccessPolicy\napiVersion: clusterlink.net/v1alpha1\nmetadata: {name: p}\n"
     "spec: {action: maybe, from: [{workloadSelector: {}}], to: [{workloadSelector: {}}]}", "spec.action"),
    ("kind: AccessPolicy\napiVersion: clusterlink.net/v1alpha1\nmetadata: {name: p}\n"
     "spec: {action: allow, from: [{workloadSelector: {matchExpressions: [{key: a, operator: Near}]}}], "
     "to: [{workloadSelector: {}}]}", "operator"),
    ("just a string", "a document must be a mapping"),
    ("kind: Export\n  bad: [indent", "not valid YAML (line"),
]


@pytest.mark.parametrize("text, message", BAD, ids=[m for _, m in BAD])
def test_bad_documents_name_the_field(text, message):
    with pytest.raises(ModelError) as err:
        parse_documents(text, source="f.yaml")
    assert message in str(err.value)
    assert str(err.value).startswith("f.yaml")


def test_every_bad_document_is_reported_not_only_the_first():
    text = ("kind: Export\napiVersion: clusterlink.net/v1alpha1\nmetadata: {name: x}\nspec: {}\n---\n"
            "kind: Export\napiVersion: clusterlink.net/v1alpha1\nmetadata: {name: y}\nspec: {port: 0}\n")
    with pytest.raises(ModelError) as err:
        parse_documents(text)
    assert len(err.value.errors) == 2
    assert "document 1 (Export x)" in err.value.errors[0]
    assert "document 2 (Export y)" in err.value.errors[1]


def test_duplicates_are_rejected():
    doc = "kind: Export\napiVersion: clusterlink.net/v1alpha1\nmetadata: {name: x}\nspec: {port: 1}\n"
    with pytest.raises(ModelError, match="appears 2 times"):
        parse_documents(doc + "---\n" + doc)


def test_condition_transition_time_is_kept_when_status_does_not_flip():
    s1 = set_condition({}, "ExportValid", True, "Verified", "ok", now="2024-01-01T00:00:00Z")
    s2 = set_condition(s1, "ExportValid", True, "Verified", "ok", now="2025-01-01T00:00:00Z")
    assert s1 == s2
    s3 = set_condition(s2, "ExportValid", False, "Error", "gone", now="2025-01-01T00:00:00Z")
    assert get_condition(s3, "ExportValid")["lastTransitionTime"] == "2025-01-01T00:00:00Z"


def test_kind_names_resolve_like_kubectl():
    assert S.resolve_kind("imports").kind == "Import"
    assert S.resolve_kind("Import").kind == "Import"
    assert S.resolve_kind("imports.clusterlink.net").kind == "Import"
    assert S.resolve_kind("clpap").kind == "PrivilegedAccessPolicy"
    assert S.resolve_kind("pods") is None


def test_every_problem_of_one_document_is_reported():
    """Not only the first: metadata, labels and several spec fields, each with its path."""
    text = """
apiVersion: clusterlink.net/v1alpha1
kind: Import
metadata: {name: Bad_Name, labels: {"-x": y}, colour: red}
spec:
  port: 0
  targetPort: "x"
  lbScheme: sideways
  sources: [{peer: west, exportName: reviews, exportNamespace: default, extra: 1}]
  bogus: true
"""
    with pytest.raises(ModelError) as err:
        parse_documents(text, source="f.yaml")
    found = err.value.errors
    for path in ("metadata.colour", "metadata.name", "metadata.labels['-x']", "spec.port", "spec.targetPort",
                 "spec.lbScheme", "spec.sources[0].extra", "spec.bogus"):
        assert any(f": {path}: " in e for e in found), (path, found)
    assert all(e.startswith("f.yaml: document 1 (Import Bad_Name): ") for e in found), found
    assert len(found) == 8, found
