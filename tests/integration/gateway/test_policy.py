"""Policies on both sides, through real gateways: default deny, egress and ingress denies, a
missing export, client attributes from the agent, agent credentials, and a policy change that
applies to the next connection although its token is cached."""

from __future__ import annotations

import time

from controlplane.api import attributes as A
from controlplane.tokens import TokenAuthority

from .conftest import Fabric
from .support import ALLOW_ALL, deny, expect_reset, export_info, greeting, open_agent, open_import, policy


def test_default_deny_on_egress_resets_the_client(net: Fabric) -> None:
    net.publish_east(policies=[])
    expect_reset(lambda: open_import(net.echo_port))


def test_default_deny_on_ingress_resets_the_client(net: Fabric) -> None:
    net.publish_west(policies=[])
    expect_reset(lambda: open_import(net.echo_port))


def test_egress_deny_on_the_export_name(net: Fabric) -> None:
    net.publish_east(policies=[policy("allow-all", ALLOW_ALL), deny("no-echo", to={A.EXPORT_NAME: "echo"})])
    expect_reset(lambda: open_import(net.echo_port))
    assert net.east.metric("clusterlink_gateway_authz_decisions_total", direction="egress", verdict="deny",
                           tier="deny") >= 1


def test_ingress_deny_on_the_requesting_peer(net: Fabric) -> None:
    net.publish_west(policies=[policy("allow-all", ALLOW_ALL), deny("not-east", from_={A.PEER_NAME: "east"})])
    expect_reset(lambda: open_import(net.echo_port))


def test_export_missing_is_404_then_reset(net: Fabric) -> None:
    net.publish_west(exports=[e for e in net.west_exports() if e.name != "echo"])
    before = net.east.metric("clusterlink_gateway_authz_requests_total", peer="west", result="not-found")
    expect_reset(lambda: open_import(net.echo_port))
    deadline = time.monotonic() + 5
    while net.east.metric("clusterlink_gateway_authz_requests_total", peer="west", result="not-found") <= before:
        assert time.monotonic() < deadline, "no 404 from west's /authz"
        time.sleep(0.1)


def test_invalid_export_is_refused(net: Fabric) -> None:
    exports = [export_info(e.name, e.port, valid=e.name != "echo") for e in net.west_exports()]
    net.publish_west(exports=exports)
    expect_reset(lambda: open_import(net.echo_port))


def test_agent_credential_forged_or_absent_is_reset(net: Fabric) -> None:
    forged = TokenAuthority(b"k" * 32, "east").mint_agent_credential("n1")
    before = net.east.metric("clusterlink_gateway_agent_credential_failures_total")
    for credential in (forged, "", "not-a-jwt"):
        expect_reset(lambda: open_agent(net.east.agent_port, "default", "echo", credential))
    assert net.east.metric("clusterlink_gateway_agent_credential_failures_total") == before + 3
    # an access token of the right key is not an agent credential either
    access = TokenAuthority(net.east_key, "east").mint_access_token("east", "default", "echo", {})
    expect_reset(lambda: open_agent(net.east.agent_port, "default", "echo", access))


def test_unknown_import_on_the_agent_port_is_reset(net: Fabric) -> None:
    credential = TokenAuthority(net.east_key, "east").mint_agent_credential("n1")
    expect_reset(lambda: open_agent(net.east.agent_port, "default", "no-such-import", credential))


def test_client_attributes_reach_both_policies(net: Fabric) -> None:
    credential = TokenAuthority(net.east_key, "east").mint_agent_credential("n1")
    good = {A.CLIENT_SERVICE_ACCOUNT: "good", A.CLIENT_NAMESPACE: "default"}
    bad = {A.CLIENT_SERVICE_ACCOUNT: "bad", A.CLIENT_NAMESPACE: "default"}
    # egress: east denies the service account "bad"
    net.publish_east(policies=[policy("allow-all", ALLOW_ALL), deny("sa", from_={A.CLIENT_SERVICE_ACCOUNT: "bad"})])
    expect_reset(lambda: open_agent(net.east.agent_port, "default", "echo", credential, bad))
    sock = open_agent(net.east.agent_port, "default", "echo", credential, good)
    assert greeting(sock) == "echo"
    sock.close()
    # ingress: west denies it, from the attributes east sent
    net.publish_east()
    net.publish_west(policies=[policy("allow-all", ALLOW_ALL), deny("sa", from_={A.CLIENT_SERVICE_ACCOUNT: "bad"})])
    expect_reset(lambda: open_agent(net.east.agent_port, "default", "echo", credential, bad))
    sock = open_agent(net.east.agent_port, "default", "echo", credential, good)
    assert greeting(sock) == "echo"
    sock.close()
    # a policy on client attributes denies a client whose attributes are unknown (Import port)
    net.publish_west(policies=[policy("allow-all", ALLOW_ALL),
                               deny("sa", from_={A.CLIENT_SERVICE_ACCOUNT: "bad"})])
    expect_reset(lambda: open_import(net.echo_port))


def test_policy_change_applies_to_the_next_connection_with_a_cached_token(net: Fabric) -> None:
    # Both east workers hold a token for west/echo (prefetched for Import-port clients).
    deadline = time.monotonic() + 10
    while net.east.metric("clusterlink_gateway_authz_requests_total", peer="west", result="allowed") < 2:
        assert time.monotonic() < deadline, "tokens were not prefetched"
        time.sleep(0.1)
    sock = open_import(net.echo_port)
    assert greeting(sock) == "echo"
    sock.close()
    authz = net.east.metric("clusterlink_gateway_authz_requests_total", peer="west")
    hits = net.east.metric("clusterlink_gateway_token_cache_lookups_total", result="hit")
    denied = net.west.metric("clusterlink_gateway_connections_total", direction="ingress", result="denied")

    net.publish_west(policies=[policy("allow-all", ALLOW_ALL), deny("no-echo", to={A.EXPORT_NAME: "echo"})])
    expect_reset(lambda: open_import(net.echo_port))

    # the refusal came from west's check at CONNECT, on a token east had cached: no new /authz
    assert net.east.metric("clusterlink_gateway_token_cache_lookups_total", result="hit") == hits + 1
    assert net.east.metric("clusterlink_gateway_authz_requests_total", peer="west") == authz
    assert net.west.metric("clusterlink_gateway_connections_total", direction="ingress", result="denied") == denied + 1
    net.publish_west()
    sock = open_import(net.echo_port)
    assert greeting(sock) == "echo"
    sock.close()


def _denials(gateway, policy_name: str) -> list[str]:  # type: ignore[no-untyped-def]
    return [line for line in gateway.log_path.read_text().splitlines()
            if "denied by policy" in line and policy_name in line]


def test_denials_are_logged_at_info_but_rate_limited(net: Fabric) -> None:
    """A user must see why a connection was refused without a debug log, and a client retrying in a
    loop must not flood it: one line per (Import or Export, peer, policy) per 10 s and worker."""
    net.publish_east(policies=[policy("allow-all", ALLOW_ALL), deny("no-echo-out", to={A.EXPORT_NAME: "echo"})])
    for _ in range(10):
        expect_reset(lambda: open_import(net.echo_port))
    lines = _denials(net.east, "no-echo-out")
    assert 1 <= len(lines) <= 2, lines  # two workers, each with its own limit
    assert " INFO " in lines[0] and "Import" in lines[0] and "peer west" in lines[0], lines
    net.publish_east()
    net.publish_west(policies=[policy("allow-all", ALLOW_ALL), deny("not-east-in", from_={A.PEER_NAME: "east"})])
    for _ in range(10):
        expect_reset(lambda: open_import(net.echo_port))
    lines = _denials(net.west, "not-east-in")
    assert 1 <= len(lines) <= 2, lines
    assert " INFO " in lines[0] and "from peer east to Export" in lines[0], lines


def _reported(cp, direction: str, policy_name: str, want: int, timeout: float = 5.0) -> int:  # type: ignore[no-untyped-def]
    """Denials of `policy_name` the gateway reported to its control plane (each worker reports its
    own: waits until `want` arrived, then a little longer for any extra)."""
    deadline = time.monotonic() + timeout

    def total() -> int:
        return sum(d.count for r in list(cp.reports) for d in r.denials
                   if d.direction == direction and d.policy.endswith(policy_name))

    while total() < want and time.monotonic() < deadline:
        time.sleep(0.1)
    time.sleep(1.0)  # two report intervals: a count too high would show now
    return total()


def test_denials_are_reported_to_the_control_plane_per_import_export_and_peer(net: Fabric) -> None:
    """The control plane turns these reports into Events on the Import or Export (Kubernetes)."""
    net.publish_east(policies=[policy("allow-all", ALLOW_ALL), deny("no-echo-rep", to={A.EXPORT_NAME: "echo"})])
    for _ in range(4):
        expect_reset(lambda: open_import(net.echo_port))
    assert _reported(net.cp_east, "egress", "no-echo-rep", 4) == 4
    (denial,) = {(d.namespace, d.name, d.peer) for r in net.cp_east.reports for d in r.denials
                 if d.policy.endswith("no-echo-rep")}
    assert denial == ("default", "echo", "west")
    net.publish_east()
    net.publish_west(policies=[policy("allow-all", ALLOW_ALL), deny("not-east-rep", from_={A.PEER_NAME: "east"})])
    for _ in range(3):
        expect_reset(lambda: open_import(net.echo_port))
    assert _reported(net.cp_west, "ingress", "not-east-rep", 1) >= 1  # east caches no token for a refusal
    (denial,) = {(d.namespace, d.name, d.peer) for r in net.cp_west.reports for d in r.denials
                 if d.policy.endswith("not-east-rep")}
    assert denial == ("default", "echo", "east")
