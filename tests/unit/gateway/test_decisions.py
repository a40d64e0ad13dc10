"""The attribute maps of the egress and ingress checks (pure)."""

from __future__ import annotations

import json

from controlplane.api import attributes as A
from controlplane.api import clusterlink_pb2 as pb
from controlplane.gateway.decisions import egress_check, egress_src, ingress_check
from controlplane.gateway.state import build_state
from controlplane.policy.engine import Tier


def _policy(name: str, action: str, namespace: str, *, from_=None, to=None) -> pb.PolicyInfo:  # type: ignore[no-untyped-def]
    spec = {"action": action, "from": [{"workloadSelector": {"matchLabels": from_ or {}}}],
            "to": [{"workloadSelector": {"matchLabels": to or {}}}]}
    return pb.PolicyInfo(namespace=namespace, name=name, spec_json=json.dumps(spec))


def _state(*policies: pb.PolicyInfo):  # type: ignore[no-untyped-def]
    return build_state(pb.Snapshot(
        version=1, peer_name="east", peer_labels={"cluster": "east"}, token_key=b"k" * 32,
        peers=[pb.PeerInfo(name="west", reachable=True, labels={"region": "eu"})],
        exports=[pb.ExportInfo(namespace="prod", name="db", target_host="db", port=5432, valid=True,
                               labels={"tier": "data"})],
        imports=[pb.ImportInfo(namespace="apps", name="db", target_port=1, labels={"via": "import"},
                               sources=[pb.ImportSource(peer="west", export_name="db", export_namespace="prod")])],
        policies=list(policies)), local_peer="east", token_lifetime=30)


def test_egress_attributes() -> None:
    state = _state(_policy("allow", "allow", "apps"))
    imp = state.imports[("apps", "db")]
    src = egress_src(state, {A.CLIENT_SERVICE_ACCOUNT: "sa", A.PEER_NAME: "forged", "other": "x"})
    assert src == {A.PEER_NAME: "east", A.PEER_LABELS + "cluster": "east", A.CLIENT_SERVICE_ACCOUNT: "sa"}
    check = egress_check(state, imp, imp.sources[0], state.peers["west"], src)
    assert check.dst == {A.PEER_NAME: "west", A.PEER_LABELS + "region": "eu", A.EXPORT_NAME: "db",
                         A.EXPORT_NAMESPACE: "prod", A.EXPORT_LABELS + "via": "import"}  # the Import's labels
    assert check.namespace == "apps" and check.decision.allowed


def test_egress_uses_the_import_namespace() -> None:
    state = _state(_policy("allow", "allow", "prod"))  # a policy of the export's namespace does not apply
    imp = state.imports[("apps", "db")]
    check = egress_check(state, imp, imp.sources[0], state.peers["west"], egress_src(state, {}))
    assert check.decision.tier is Tier.DEFAULT_DENY


def test_ingress_takes_the_peer_name_from_the_certificate() -> None:
    state = _state(_policy("allow", "allow", "prod"), _policy("no-north", "deny", "prod", from_={A.PEER_NAME: "north"}))
    export = state.exports[("prod", "db")]
    claimed = {A.PEER_NAME: "west", A.CLIENT_NAMESPACE: "apps"}
    check = ingress_check(state, export, claimed, presenting_peer="north")
    assert check.src[A.PEER_NAME] == "north" and check.src[A.CLIENT_NAMESPACE] == "apps"
    assert not check.decision.allowed and check.decision.policy == "prod/no-north"
    assert check.dst == {A.PEER_NAME: "east", A.PEER_LABELS + "cluster": "east", A.EXPORT_NAME: "db",
                         A.EXPORT_NAMESPACE: "prod", A.EXPORT_LABELS + "tier": "data"}  # the Export's labels
    assert ingress_check(state, export, claimed, presenting_peer="west").decision.allowed
    assert claimed[A.PEER_NAME] == "west"  # the caller's map is not modified
