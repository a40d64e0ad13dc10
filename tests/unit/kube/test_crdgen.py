"""The CRDs: generated from the model, committed without drift, structural, ClusterLink-compatible;
the original ClusterLink's sample manifests validate against them unchanged."""

import copy
import shutil
from pathlib import Path

import jsonschema
import kubernetes_validate
import pytest
import yaml

from controlplane.model import crdgen
from controlplane.model import schema as S

ROOT = Path(__file__).resolve().parents[3]
CRD_DIR = ROOT / "charts" / "clusterlink" / "crds"
from tests.samples import SAMPLES  # noqa: E402 (after ROOT)


def committed() -> dict[str, dict]:
    return {yaml.safe_load(p.read_text())["spec"]["names"]["kind"]: yaml.safe_load(p.read_text())
            for p in sorted(CRD_DIR.glob("*.yaml"))}


def validator(kind: str) -> jsonschema.Draft202012Validator:
    schema = committed()[kind]["spec"]["versions"][0]["schema"]["openAPIV3Schema"]
    return jsonschema.Draft202012Validator(crdgen.strict_json_schema(schema))


def test_committed_crds_match_the_model():
    problems = crdgen.drift(CRD_DIR)
    assert problems == [], "CRDs drifted from controlplane/model/schema.py; run `make crds`:\n" + "\n".join(problems)


def test_drift_is_detected(tmp_path):
    shutil.copytree(CRD_DIR, tmp_path / "crds")
    assert crdgen.main(["--check", str(tmp_path / "crds")]) == 0
    path = tmp_path / "crds" / "clusterlink.net_imports.yaml"
    path.write_text(path.read_text().replace("round-robin", "random", 1))
    (tmp_path / "crds" / "clusterlink.net_gadgets.yaml").write_text("{}")
    problems = crdgen.drift(tmp_path / "crds")
    assert len(problems) == 2 and any("imports" in p for p in problems) and any("gadgets" in p for p in problems)
    assert crdgen.main(["--check", str(tmp_path / "crds")]) == 1
    crdgen.write(tmp_path / "crds")
    assert crdgen.drift(tmp_path / "crds") == []


def test_exactly_the_five_clusterlink_kinds():
    crds = committed()
    assert set(crds) == {"Peer", "Export", "Import", "AccessPolicy", "PrivilegedAccessPolicy"}
    for kind, crd in crds.items():
        spec = crd["spec"]
        assert crd["metadata"]["name"] == f"{spec['names']['plural']}.clusterlink.net"
        assert spec["group"] == "clusterlink.net" and [v["name"] for v in spec["versions"]] == ["v1alpha1"]
        assert spec["scope"] == ("Cluster" if kind == "PrivilegedAccessPolicy" else "Namespaced")
    with pytest.raises(ValueError):
        crdgen.crd(S.WORKLOAD)


@pytest.mark.parametrize("path", sorted(CRD_DIR.glob("*.yaml")), ids=lambda p: p.name)
def test_crds_are_valid_apiextensions_objects(path):
    kubernetes_validate.validate(yaml.safe_load(path.read_text()), "1.30", strict=True)


def _walk(node, path="root"):
    yield path, node
    for key in ("properties",):
        for name, child in (node.get(key) or {}).items():
            yield from _walk(child, f"{path}.{name}")
    if isinstance(node.get("items"), dict):
        yield from _walk(node["items"], f"{path}[]")
    if isinstance(node.get("additionalProperties"), dict):
        yield from _walk(node["additionalProperties"], f"{path}{{}}")


@pytest.mark.parametrize("kind", ["Peer", "Export", "Import", "AccessPolicy", "PrivilegedAccessPolicy"])
def test_schemas_are_structural(kind):
    """The API server's structural-schema rules: every node typed, no properties together with
    additionalProperties, defaults valid against their own schema."""
    schema = committed()[kind]["spec"]["versions"][0]["schema"]["openAPIV3Schema"]
    for path, node in _walk(schema):
        assert "type" in node, f"{path} has no type"
        assert not ("properties" in node and "additionalProperties" in node), path
        if "default" in node:
            jsonschema.validate(node["default"], {k: v for k, v in node.items() if k != "default"})


def test_status_subresources_and_printer_columns():
    crds = committed()
    version = {k: c["spec"]["versions"][0] for k, c in crds.items()}
    assert {k for k, v in version.items() if "subresources" in v} == {"Peer", "Export", "Import"}
    columns = {k: {c["name"]: c["jsonPath"] for c in v.get("additionalPrinterColumns", [])} for k, v in version.items()}
    assert columns["Peer"]["Reachable"] == '.status.conditions[?(@.type=="PeerReachable")].status'
    assert columns["Export"]["Valid"] == '.status.conditions[?(@.type=="ExportValid")].status'
    assert columns["Import"]["Port"] == ".spec.port" and columns["Import"]["VIP"] == ".status.vip"
    assert "ImportServiceValid" in columns["Import"]["ServiceValid"]


def test_import_schema_is_clusterlinks():
    root = committed()["Import"]["spec"]["versions"][0]["schema"]["openAPIV3Schema"]
    spec = root["properties"]["spec"]
    assert sorted(spec["required"]) == ["port", "sources"]
    assert spec["properties"]["lbScheme"]["default"] == "round-robin"
    assert spec["properties"]["lbScheme"]["enum"] == ["round-robin", "random", "static"]
    assert sorted(spec["properties"]["sources"]["items"]["required"]) == ["exportName", "exportNamespace", "peer"]
    assert root["x-kubernetes-validations"] == [{"rule": "size(self.metadata.name) <= 63",
                                                 "message": "Import name must be at most 63 characters"}]
    policy = committed()["AccessPolicy"]["spec"]["versions"][0]["schema"]["openAPIV3Schema"]["properties"]["spec"]
    assert policy["properties"]["action"]["enum"] == ["allow", "deny"]


SAMPLE_FILES = sorted(SAMPLES.glob("*/*.yaml"))


@pytest.mark.parametrize("path", SAMPLE_FILES, ids=lambda p: f"{p.parent.name}/{p.name}")
def test_original_clusterlink_samples_validate_unchanged(path):
    for doc in yaml.safe_load_all(path.read_text()):
        if doc is None:
            continue
        errors = sorted(validator(doc["kind"]).iter_errors(doc), key=str)
        assert errors == [], f"{path}: {[e.message for e in errors]}"


def test_samples_are_all_there():
    assert len(SAMPLE_FILES) >= 14


IMPORT = {"apiVersion": "clusterlink.net/v1alpha1", "kind": "Import", "metadata": {"name": "x", "namespace": "d"},
          "spec": {"port": 80, "sources": [{"peer": "p", "exportName": "e", "exportNamespace": "n"}]}}


@pytest.mark.parametrize("change, field", [
    (lambda d: d["spec"].update(lbScheme="weighted"), "lbScheme"),
    (lambda d: d["spec"].pop("sources"), "sources"),
    (lambda d: d["spec"].update(port=70000), "port"),
    (lambda d: d["spec"].update(foo=1), "foo"),
    (lambda d: d["spec"]["sources"][0].pop("peer"), "peer"),
    (lambda d: d["spec"].update(sources=[]), "sources"),
])
def test_invalid_imports_are_rejected(change, field):
    doc = copy.deepcopy(IMPORT)
    change(doc)
    errors = list(validator("Import").iter_errors(doc))
    assert errors and any(field in (e.message + str(list(e.path))) for e in errors)


def test_valid_import_passes():
    assert list(validator("Import").iter_errors(IMPORT)) == []


def test_policy_action_enum():
    doc = {"apiVersion": "clusterlink.net/v1alpha1", "kind": "AccessPolicy", "metadata": {"name": "p"},
           "spec": {"action": "maybe", "from": [{"workloadSelector": {}}], "to": [{"workloadSelector": {}}]}}
    assert list(validator("AccessPolicy").iter_errors(doc))
