"""`clusterlink deploy peer`: what a peer needs to run in Kubernetes, from its certificate directory.

Writes, into `<path>/<fabric>/<peer>/`:
- `k8s-secrets.yaml`: the Namespace, the peer certificate Secret `cl-peer` (cert.pem, key.pem,
  ca.pem: the files of `clusterlink create peer-cert`) and the tokens Secret (join and admin
  tokens, random; kept from an earlier run so re-running never locks running components out);
- `clusterlink-values.yaml`: values for the Helm chart charts/clusterlink (peer name and labels,
  ingress, image, replicas, the two Secrets);
and with `--output FILE` every manifest fully rendered (Namespace, CRDs, Secrets, the chart's
objects) for `kubectl apply -f FILE`, rendered by the Helm engine of helm-python-sdk.

Flags follow the original ClusterLink's `deploy peer` where they overlap (--name, --fabric, --path,
--namespace, --ingress, --ingress-port, --ingress-annotations, --label, --container-registry,
--tag, --controlplane-replicas, --dataplane-replicas, --log-level).
"""

from __future__ import annotations

import argparse
import base64
import os
import re
import secrets
import sys
from pathlib import Path
from typing import Any

import yaml

from controlplane import pki
from controlplane.cli.errors import CommandError
from controlplane.model import crdgen
from controlplane.model import schema as S
from controlplane.model.objects import SYSTEM_NAMESPACE

CERTS_SECRET = "cl-peer"
TOKENS_SECRET = "clusterlink-tokens"
SECRETS_FILE = "k8s-secrets.yaml"
VALUES_FILE = "clusterlink-values.yaml"
DEFAULT_REGISTRY = "ghcr.io/clusterlink-py"
DEFAULT_NODE_PORT = 30443
NODE_PORTS = (30000, 32767)
INGRESS_TYPES = {"LoadBalancer": "LoadBalancer", "NodePort": "NodePort", "none": "ClusterIP"}


def _key_value(text: str) -> tuple[str, str]:
    key, sep, value = text.partition("=")
    if not sep or not key:
        raise argparse.ArgumentTypeError(f"{text!r} is not key=value")
    return key, value


_TAG = re.compile(r"[A-Za-z0-9_][A-Za-z0-9_.-]{0,127}")  # the OCI distribution spec's tag grammar
_REGISTRY = re.compile(r"[a-z0-9]([a-z0-9._-]*[a-z0-9])?(:[0-9]+)?(/[a-z0-9]([a-z0-9._-]*[a-z0-9])?)*/?")


def _tag(text: str) -> str:
    if text and not _TAG.fullmatch(text):  # "" (the default): the chart's appVersion
        raise argparse.ArgumentTypeError(f"{text!r} is not an image tag (1-128 of [A-Za-z0-9_.-], not starting "
                                         "with . or -)")
    return text


def _registry(text: str) -> str:
    if not _REGISTRY.fullmatch(text):
        raise argparse.ArgumentTypeError(f"{text!r} is not a registry/repository prefix (e.g. ghcr.io/org or "
                                         "registry.local:5000/team)")
    return text


def register(subparsers: argparse._SubParsersAction) -> None:
    """Add the `deploy` command group."""
    deploy = subparsers.add_parser("deploy", help="prepare a peer's deployment in Kubernetes",
                                   description="Prepare what a peer needs to run in Kubernetes.")
    commands = deploy.add_subparsers(title="objects", dest="object", metavar="OBJECT", required=True,
                                     help="what to deploy")
    peer = commands.add_parser(
        "peer", help="write a peer's Secrets manifest and Helm values (and, with --output, every manifest)",
        description="Write <path>/<fabric>/<name>/k8s-secrets.yaml (Namespace, certificate and token Secrets) and "
                    "clusterlink-values.yaml (values for charts/clusterlink); with --output, also every manifest "
                    "rendered. Install with: kubectl apply -f k8s-secrets.yaml; helm install clusterlink "
                    "charts/clusterlink -n <namespace> -f clusterlink-values.yaml.")
    peer.add_argument("--name", required=True, help="peer name (its certificate's DNS SAN)")
    peer.add_argument("--fabric", default=pki.DEFAULT_FABRIC, help="fabric name (default: %(default)s)")
    peer.add_argument("--path", type=Path, default=Path("."),
                      help="directory holding the fabric directory (default: current directory)")
    peer.add_argument("--namespace", default=SYSTEM_NAMESPACE, help="the ClusterLink namespace (default: %(default)s)")
    peer.add_argument("--ingress", choices=sorted(INGRESS_TYPES), default="LoadBalancer",
                      help="how other peers reach the gateway: LoadBalancer, NodePort or none (ClusterIP) "
                           "(default: %(default)s)")
    peer.add_argument("--ingress-port", type=int,
                      help=f"the gateway Service port (LoadBalancer, default 443) or node port (NodePort, "
                           f"{NODE_PORTS[0]}-{NODE_PORTS[1]}, default {DEFAULT_NODE_PORT})")
    peer.add_argument("--ingress-annotations", type=_key_value, action="append", default=[], metavar="K=V",
                      help="annotation of the gateway Service (repeatable)")
    peer.add_argument("--label", type=_key_value, action="append", default=[], metavar="K=V",
                      help="label of this peer (repeatable); policies select on peer.clusterlink.net/labels.<k>")
    peer.add_argument("--container-registry", type=_registry, default=DEFAULT_REGISTRY,
                      help="registry of the clusterlink image (default: %(default)s)")
    peer.add_argument("--tag", type=_tag, default="", help="image tag (default: the chart's appVersion)")
    peer.add_argument("--controlplane-replicas", type=int, default=1, help="control-plane replicas (default: 1)")
    peer.add_argument("--gateway-replicas", "--dataplane-replicas", dest="gateway_replicas", type=int, default=1,
                      help="gateway replicas (default: 1)")
    peer.add_argument("--log-level", choices=["debug", "info", "warning", "error"], default="info",
                      help="log level of every component (default: %(default)s)")
    peer.add_argument("--output", type=Path,
                      help="also write every manifest, rendered, to this file (for kubectl apply -f); an "
                           "existing directory gets clusterlink-<name>.yaml")
    chart_env = os.environ.get("CLUSTERLINK_CHART")
    peer.add_argument("--chart", type=Path, default=Path(chart_env) if chart_env else None,
                      help="the chart directory for --output (env CLUSTERLINK_CHART; default: charts/clusterlink "
                           "of this source tree, or the one installed with the package)")
    peer.set_defaults(handler=deploy_peer)


# -- pure: documents ------------------------------------------------------------------------------


def _b64(data: bytes) -> str:
    return base64.b64encode(data).decode()


def _labels() -> dict[str, str]:
    return {"app.kubernetes.io/part-of": "clusterlink"}


def secrets_documents(namespace: str, files: pki.PeerFiles, tokens: dict[str, str]) -> list[dict[str, Any]]:
    """The Namespace and the two Secrets."""
    return [
        {"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": namespace, "labels": _labels()}},
        {"apiVersion": "v1", "kind": "Secret", "type": "Opaque",
         "metadata": {"name": CERTS_SECRET, "namespace": namespace, "labels": _labels()},
         "data": {pki.CERT_FILE: _b64(files.cert), pki.KEY_FILE: _b64(files.key), pki.CA_FILE: _b64(files.ca)}},
        {"apiVersion": "v1", "kind": "Secret", "type": "Opaque",
         "metadata": {"name": TOKENS_SECRET, "namespace": namespace, "labels": _labels()},
         "data": {name: _b64(value.encode()) for name, value in sorted(tokens.items())}},
    ]


def chart_values(args: argparse.Namespace) -> dict[str, Any]:
    """The Helm values of this peer."""
    service: dict[str, Any] = {"type": INGRESS_TYPES[args.ingress], "port": 443}
    port = args.ingress_port
    if args.ingress == "NodePort":
        port = DEFAULT_NODE_PORT if port is None else port
        if not NODE_PORTS[0] <= port <= NODE_PORTS[1]:
            raise CommandError(f"--ingress-port {port}: a node port must be in {NODE_PORTS[0]}-{NODE_PORTS[1]}")
        service["nodePort"] = port
    elif port is not None:
        if not 1 <= port <= 65535:
            raise CommandError(f"--ingress-port {port} is not a port")
        service["port"] = port
    if args.ingress_annotations:
        service["annotations"] = dict(args.ingress_annotations)
    for flag, value in (("--controlplane-replicas", args.controlplane_replicas),
                        ("--gateway-replicas", args.gateway_replicas)):
        if value < 1:
            raise CommandError(f"{flag} must be at least 1")
    image: dict[str, Any] = {"repository": f"{args.container_registry.rstrip('/')}/clusterlink"}
    if args.tag:
        image["tag"] = args.tag
    return {
        "peer": {"name": args.name, "labels": dict(args.label)},
        "certificates": {"secretName": CERTS_SECRET, "create": False},
        "tokens": {"secretName": TOKENS_SECRET, "create": False},
        "image": image,
        "logLevel": args.log_level,
        "controlplane": {"replicas": args.controlplane_replicas},
        "gateway": {"replicas": args.gateway_replicas, "service": service},
    }


def _dump(docs: list[dict[str, Any]], header: str) -> str:
    return header + yaml.safe_dump_all(docs, sort_keys=False, explicit_start=True)


# -- the shell -----------------------------------------------------------------------------------


def _write_private(path: Path, text: str) -> None:
    """Atomically, mode 0600: these files hold the peer's private key and tokens. On any failure
    the temporary file is removed (nothing secret is left behind) and the error says what failed."""
    if path.is_dir():
        raise CommandError(f"{path} is a directory: name a file")
    if not path.parent.is_dir():
        raise CommandError(f"cannot write {path}: the directory {path.parent} does not exist")
    tmp = path.with_name(f".{path.name}.{secrets.token_hex(4)}.tmp")
    try:
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "w") as f:
            f.write(text)
        os.replace(tmp, path)
    except OSError as exc:
        raise CommandError(f"cannot write {path}: {exc.strerror or exc}") from None
    finally:
        tmp.unlink(missing_ok=True)


def _existing_tokens(path: Path) -> dict[str, str]:
    """Tokens of a Secrets manifest written by an earlier run (so they stay the same)."""
    if not path.exists():
        return {}
    try:
        for doc in yaml.safe_load_all(path.read_text()):
            if isinstance(doc, dict) and doc.get("kind") == "Secret" and \
                    (doc.get("metadata") or {}).get("name") == TOKENS_SECRET:
                return {k: base64.b64decode(v).decode() for k, v in (doc.get("data") or {}).items()}
    except (yaml.YAMLError, ValueError) as exc:
        raise CommandError(f"{path} exists but cannot be read ({exc}); move it away to make new tokens") from exc
    return {}


def _default_chart() -> Path:
    """charts/clusterlink of the source tree, or, for an installed wheel, its data files."""
    tree = Path(__file__).resolve().parents[2] / "charts" / "clusterlink"
    if (tree / "Chart.yaml").exists():
        return tree
    return Path(sys.prefix) / "share" / "clusterlink" / "charts" / "clusterlink"


def render_all(chart: Path, values: dict[str, Any], namespace: str) -> list[dict[str, Any]]:
    """The CRDs and every object of the chart, rendered with Helm's engine (no cluster needed)."""
    try:
        import helm_python as helm
    except ImportError as exc:
        raise CommandError("--output renders the chart with the helm-python-sdk package: "
                           "pip install helm-python-sdk") from exc
    if not (chart / "Chart.yaml").exists():
        raise CommandError(f"no Helm chart at {chart} (pass --chart or set CLUSTERLINK_CHART)")
    try:
        with helm.Chart.load(str(chart)) as loaded:
            loaded.validate_schema(loaded.merge_values(values))
            manifests = loaded.render(values, name="clusterlink", namespace=namespace, is_install=True)
    except helm.HelmError as exc:
        raise CommandError(f"rendering the chart {chart} failed: {exc}") from exc
    docs = [crdgen.crd(info) for info in S.CRD_KINDS]
    for name in sorted(manifests):
        if name.endswith(".yaml"):
            docs += [d for d in yaml.safe_load_all(manifests[name]) if d]
    return docs


def deploy_peer(args: argparse.Namespace) -> int:
    try:
        pki.validate_peer_name(args.name)
        directory = args.path / args.fabric / args.name
        identity = pki.load_peer_identity(directory, expected_name=args.name)
        files = pki.read_peer_dir(directory)
    except pki.PKIError as exc:
        raise CommandError(str(exc)) from exc
    values = chart_values(args)
    output = _output_path(args.output, args.name) if args.output else None
    secrets_path = directory / SECRETS_FILE
    tokens = _existing_tokens(secrets_path)
    for name in ("join.token", "admin.token"):
        tokens.setdefault(name, secrets.token_urlsafe(32))
    secret_docs = secrets_documents(args.namespace, files, tokens)
    # Render before writing anything: a chart problem must not leave half of the files written.
    rendered = render_all(args.chart or _default_chart(), values, args.namespace) if output else []
    header = (f"# ClusterLink peer {args.name} (fabric {args.fabric}): Namespace, certificate and token Secrets.\n"
              "# Holds a private key and tokens: keep it private. kubectl apply -f this file.\n")
    _write_private(secrets_path, _dump(secret_docs, header))
    values_path = directory / VALUES_FILE
    _write_private(values_path, f"# Helm values of ClusterLink peer {args.name}: helm install clusterlink "
                                f"charts/clusterlink -n {args.namespace} -f {VALUES_FILE}\n"
                   + yaml.safe_dump(values, sort_keys=False))
    print(f"Wrote {secrets_path} and {values_path} for peer {args.name!r} "
          f"(certificate valid until {identity.not_after:%Y-%m-%d}).")
    if output:
        docs = secret_docs + rendered
        _write_private(output, _dump(docs, f"# Every manifest of ClusterLink peer {args.name}: "
                                           f"kubectl apply -f {output.name}\n"))
        print(f"Wrote {output} ({len(docs)} objects).")
    return 0


def _output_path(path: Path, peer: str) -> Path:
    """--output: a file, or an existing directory to write `clusterlink-<peer>.yaml` into."""
    if path.is_dir():
        return path / f"clusterlink-{peer}.yaml"
    if not path.parent.is_dir():
        raise CommandError(f"--output {path}: the directory {path.parent} does not exist")
    return path
