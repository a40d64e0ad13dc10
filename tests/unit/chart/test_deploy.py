"""`clusterlink deploy peer`: the Secrets manifest, the chart values, and the fully rendered manifests."""

import base64
import stat

import kubernetes_validate
import pytest
import yaml

from controlplane import pki
from controlplane.cli.main import main
from tests.unit.chart.test_chart import CHART


@pytest.fixture
def workdir(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("CLUSTERLINK_CHART", raising=False)
    assert main(["create", "fabric"]) == 0
    assert main(["create", "peer-cert", "--name", "peer1"]) == 0
    return tmp_path


def peer_dir(workdir):
    return workdir / pki.DEFAULT_FABRIC / "peer1"


def load(path):
    return [d for d in yaml.safe_load_all(path.read_text()) if d]


def test_writes_secrets_and_values(workdir):
    assert main(["deploy", "peer", "--name", "peer1", "--label", "cluster=east", "--label", "ip=10.0.0.1",
                 "--ingress-annotations", "a=b", "--tag", "v1", "--controlplane-replicas", "2"]) == 0
    d = peer_dir(workdir)
    ns, certs, tokens = load(d / "k8s-secrets.yaml")
    assert ns == {"apiVersion": "v1", "kind": "Namespace",
                  "metadata": {"name": "clusterlink-system", "labels": {"app.kubernetes.io/part-of": "clusterlink"}}}
    for doc in (ns, certs, tokens):
        kubernetes_validate.validate(doc, "1.30", strict=True)
    assert certs["metadata"] == {"name": "cl-peer", "namespace": "clusterlink-system",
                                 "labels": {"app.kubernetes.io/part-of": "clusterlink"}}
    for key in ("cert.pem", "key.pem", "ca.pem"):
        assert base64.b64decode(certs["data"][key]) == (d / key).read_bytes()
    assert set(tokens["data"]) == {"join.token", "admin.token"}
    assert len({base64.b64decode(v) for v in tokens["data"].values()}) == 2
    for name in ("k8s-secrets.yaml", "clusterlink-values.yaml"):
        assert stat.S_IMODE((d / name).stat().st_mode) == 0o600
    values = yaml.safe_load((d / "clusterlink-values.yaml").read_text())
    assert values["peer"] == {"name": "peer1", "labels": {"cluster": "east", "ip": "10.0.0.1"}}
    assert values["tokens"] == {"secretName": "clusterlink-tokens", "create": False}
    assert values["certificates"]["secretName"] == "cl-peer"
    assert values["gateway"]["service"] == {"type": "LoadBalancer", "port": 443, "annotations": {"a": "b"}}
    assert values["image"]["tag"] == "v1" and values["controlplane"]["replicas"] == 2


def test_values_are_accepted_by_the_chart(workdir):
    import helm_python as helm

    assert main(["deploy", "peer", "--name", "peer1", "--ingress", "NodePort"]) == 0
    values = yaml.safe_load((peer_dir(workdir) / "clusterlink-values.yaml").read_text())
    assert values["gateway"]["service"] == {"type": "NodePort", "port": 443, "nodePort": 30443}
    with helm.Chart.load(str(CHART)) as chart:
        chart.validate_schema(chart.merge_values(values))
    report = helm.lint(str(CHART), values, strict=True)
    assert report["errors"] == [] and [m for m in report["messages"] if m["severity"] >= 2] == []


def test_rerunning_keeps_the_tokens(workdir):
    main(["deploy", "peer", "--name", "peer1"])
    first = load(peer_dir(workdir) / "k8s-secrets.yaml")[2]["data"]
    main(["deploy", "peer", "--name", "peer1", "--ingress", "none"])
    assert load(peer_dir(workdir) / "k8s-secrets.yaml")[2]["data"] == first
    values = yaml.safe_load((peer_dir(workdir) / "clusterlink-values.yaml").read_text())
    assert values["gateway"]["service"]["type"] == "ClusterIP"


def test_output_renders_every_manifest(workdir):
    out = workdir / "k8s.yaml"
    assert main(["deploy", "peer", "--name", "peer1", "--namespace", "cl-east", "--ingress", "NodePort",
                 "--ingress-port", "31443", "--output", str(out)]) == 0
    docs = load(out)
    kinds = [d["kind"] for d in docs]
    assert kinds[:3] == ["Namespace", "Secret", "Secret"]
    assert kinds.count("CustomResourceDefinition") == 5
    assert {"Deployment", "DaemonSet", "Service", "ClusterRole", "Role", "ConfigMap"} <= set(kinds)
    assert not [d for d in docs[3:] if d["kind"] == "Secret"]  # the tokens come from deploy, not the chart
    for doc in docs:
        kubernetes_validate.validate(doc, "1.30", strict=True)
        if doc["kind"] not in ("Namespace", "CustomResourceDefinition", "ClusterRole", "ClusterRoleBinding"):
            assert doc["metadata"]["namespace"] == "cl-east"
    gw = next(d for d in docs if d["kind"] == "Service" and d["metadata"]["name"] == "clusterlink-gateway")
    assert gw["spec"]["type"] == "NodePort" and gw["spec"]["ports"][0]["nodePort"] == 31443
    assert stat.S_IMODE(out.stat().st_mode) == 0o600


@pytest.mark.parametrize("argv, message", [
    (["--name", "peer2"], "does not exist"),
    (["--name", "Bad_Name"], "invalid peer name"),
    (["--name", "peer1", "--ingress", "NodePort", "--ingress-port", "443"], "30000-32767"),
    (["--name", "peer1", "--gateway-replicas", "0"], "at least 1"),
    (["--name", "peer1", "--output", "x.yaml", "--chart", "/nonexistent"], "no Helm chart"),
    (["--name", "peer1", "--output", "/missing/dir/x.yaml"], "the directory /missing/dir does not exist"),
])
def test_clear_errors(workdir, capsys, argv, message):
    assert main(["deploy", "peer", *argv]) == 1
    assert message in capsys.readouterr().err


def test_dataplane_replicas_alias(workdir):
    assert main(["deploy", "peer", "--name", "peer1", "--dataplane-replicas", "3"]) == 0
    assert yaml.safe_load((peer_dir(workdir) / "clusterlink-values.yaml").read_text())["gateway"]["replicas"] == 3


def _leftovers(root):
    return sorted(str(p.relative_to(root)) for p in root.rglob(".*.tmp"))


def test_output_into_a_directory_writes_a_named_file(workdir):
    """--output <dir> used to crash with IsADirectoryError, leaving a temporary file with the
    private key and tokens behind."""
    out = workdir / "manifests"
    out.mkdir()
    assert main(["deploy", "peer", "--name", "peer1", "--output", str(out)]) == 0
    written = out / "clusterlink-peer1.yaml"
    assert load(written)[0]["kind"] == "Namespace" and stat.S_IMODE(written.stat().st_mode) == 0o600
    assert _leftovers(workdir) == []


def test_a_failed_output_writes_nothing_and_leaves_no_secret_behind(workdir, capsys):
    """A chart that cannot render: no Secrets manifest is written half-way, no temporary file stays."""
    assert main(["deploy", "peer", "--name", "peer1", "--output", str(workdir / "x.yaml"),
                 "--chart", str(workdir)]) == 1
    assert "no Helm chart" in capsys.readouterr().err
    assert not (peer_dir(workdir) / "k8s-secrets.yaml").exists()
    assert _leftovers(workdir) == [] and not (workdir / "x.yaml").exists()


@pytest.mark.parametrize("argv", [["--tag", "x y"], ["--tag=-dash"], ["--tag", "a" * 129],
                                  ["--container-registry", "Bad Registry"], ["--container-registry", "x//y"]])
def test_image_flags_are_validated(workdir, capsys, argv):
    assert main(["deploy", "peer", "--name", "peer1", *argv]) == 2
    err = capsys.readouterr().err
    assert "is not an image tag" in err or "is not a registry" in err
    assert "Traceback" not in err
