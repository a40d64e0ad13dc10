"""A snapshot turned into the gateway's state (pure)."""

from __future__ import annotations

import json

from controlplane.api import clusterlink_pb2 as pb
from controlplane.gateway.state import build_state
from controlplane.policy.engine import Tier

KEY = b"k" * 32
ALLOW_ALL = json.dumps({"action": "allow", "from": [{"workloadSelector": {}}], "to": [{"workloadSelector": {}}]})


def snap(version: int = 1, **kwargs) -> pb.Snapshot:  # type: ignore[no-untyped-def]
    base = dict(version=version, peer_name="east", peer_labels={"cluster": "east"}, token_key=KEY,
                peers=[pb.PeerInfo(name="west", gateways=[pb.Gateway(host="10.0.0.1", port=443)], reachable=True,
                                   labels={"region": "eu"})],
                exports=[pb.ExportInfo(namespace="ns", name="echo", target_host="echo.ns", port=8080, valid=True,
                                       labels={"app": "echo"}),
                         pb.ExportInfo(namespace="ns", name="broken", target_host="", port=8080, valid=True)],
                imports=[pb.ImportInfo(namespace="ns", name="rev", port=80, target_port=20001, lb_scheme="static",
                                       sources=[pb.ImportSource(peer="west", export_name="echo",
                                                                export_namespace="ns")],
                                       labels={"tier": "web"})],
                policies=[pb.PolicyInfo(privileged=False, namespace="ns", name="allow-all", spec_json=ALLOW_ALL)])
    base.update(kwargs)
    return pb.Snapshot(**base)


def test_tables() -> None:
    state = build_state(snap(), local_peer="east", token_lifetime=30)
    assert state.version == 1 and state.peer_name == "east" and dict(state.peer_labels) == {"cluster": "east"}
    west = state.peers["west"]
    assert west.gateways == (("10.0.0.1", 443),) and west.reachable and dict(west.labels) == {"region": "eu"}
    echo = state.exports[("ns", "echo")]
    assert (echo.host, echo.port, echo.valid, echo.ref) == ("echo.ns", 8080, True, "ns/echo")
    assert not state.exports[("ns", "broken")].valid  # no host: cannot be connected
    rev = state.imports[("ns", "rev")]
    assert state.imports_by_port[20001] is rev and rev.lb_scheme == "static"
    assert rev.sources[0].peer == "west" and dict(rev.labels) == {"tier": "web"}
    assert state.engine.decide({}, {}, "ns").tier is Tier.ALLOW
    assert state.authority is not None and state.authority.peer_name == "east"
    assert state.problems == ()


def test_the_state_is_read_only() -> None:
    state = build_state(snap(), local_peer="east", token_lifetime=30)
    try:
        state.peers["x"] = state.peers["west"]  # type: ignore[index]
    except TypeError:
        pass
    else:
        raise AssertionError("peers is writable")


def test_unusable_parts_are_left_out_and_reported() -> None:
    state = build_state(snap(
        peer_name="someone-else", token_key=b"short",
        imports=[pb.ImportInfo(namespace="ns", name="a", target_port=20001, lb_scheme="fastest",
                               sources=[pb.ImportSource(peer="west", export_name="e", export_namespace="ns")]),
                 pb.ImportInfo(namespace="ns", name="b", target_port=20001)],
        policies=[pb.PolicyInfo(namespace="ns", name="bad-json", spec_json="{"),
                  pb.PolicyInfo(namespace="ns", name="bad-spec", spec_json=json.dumps({"action": "maybe"})),
                  pb.PolicyInfo(namespace="ns", name="ok", spec_json=ALLOW_ALL)]),
        local_peer="east", token_lifetime=30)
    text = "\n".join(state.problems)
    assert "snapshot is for peer 'someone-else'" in text
    assert "unknown load-balancing scheme 'fastest'" in text and state.imports[("ns", "a")].lb_scheme == "round-robin"
    assert "both have target port 20001" in text and state.imports_by_port[20001].name == "a"
    assert "AccessPolicy ns/bad-json is left out: its spec is not JSON" in text
    assert "AccessPolicy ns/bad-spec is left out" in text
    assert len(state.engine) == 1
    assert state.authority is None and "token key has 5 bytes" in text


def test_engine_and_authority_are_reused_when_unchanged() -> None:
    first = build_state(snap(1), local_peer="east", token_lifetime=30)
    second = build_state(snap(2), local_peer="east", token_lifetime=30, previous=first)
    assert second.engine is first.engine and second.authority is first.authority
    changed = build_state(snap(3, policies=[], token_key=b"j" * 32), local_peer="east", token_lifetime=30,
                          previous=second)
    assert changed.engine is not second.engine and len(changed.engine) == 0
    assert changed.authority is not second.authority
    assert changed.engine.decide({}, {}, "ns").tier is Tier.DEFAULT_DENY
