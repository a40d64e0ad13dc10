"""The access log, the per-Import/peer metrics and the tunnel pool age, through real gateways (both run with
--access-log on): one line per connection at its end on each side, with its bytes, setup time
and result, also for a connection refused by policy; relayed bytes and setup time labelled with
the Import or Export and the peer."""

from __future__ import annotations

import shlex
import time

from controlplane.api import attributes as A
from controlplane.tokens import TokenAuthority

from .conftest import Fabric
from .support import ALLOW_ALL, deny, expect_reset, greeting, open_agent, open_import, policy, read_line


def _access_lines(gateway) -> list[dict[str, str]]:  # type: ignore[no-untyped-def]
    """The access-log lines of a gateway's (text) log, as their key=value fields."""
    out = []
    for line in gateway.log_path.read_text(errors="replace").splitlines():
        if " clusterlink.access: connection " not in line:
            continue
        tail = line.split(" clusterlink.access: connection ", 1)[1]
        words = shlex.split(tail)
        out.append(dict(w.split("=", 1) for w in words[1:]))
    return out


def _wait_line(gateway, match, timeout: float = 5.0) -> dict[str, str]:  # type: ignore[no-untyped-def]
    deadline = time.monotonic() + timeout
    while True:
        found = [f for f in _access_lines(gateway) if match(f)]
        if found:
            return found[-1]
        assert time.monotonic() < deadline, f"no access-log line on {gateway.name}:\n{gateway.log_tail()}"
        time.sleep(0.05)


def test_a_connection_gets_one_line_on_each_side_with_its_bytes(net: Fabric) -> None:
    credential = TokenAuthority(net.east_key, "east").mint_agent_credential("n1")
    who = {A.CLIENT_SERVICE_ACCOUNT: "access-log-sa", A.CLIENT_NAMESPACE: "default"}
    payload = b"x" * 10_000
    before_bytes = net.east.metric("clusterlink_gateway_relayed_bytes_total", direction="egress",
                                   service="default/echo", peer="west", flow="client_to_service")
    before_setup = net.west.metric("clusterlink_gateway_connection_setup_seconds_count", direction="ingress",
                                   service="default/echo", peer="east")
    sock = open_agent(net.east.agent_port, "default", "echo", credential, who)
    assert greeting(sock) == "echo"
    sock.sendall(b"ECHO\n" + payload)
    got = b""
    while len(got) < len(payload):
        got += sock.recv(65536)
    sock.shutdown(1)
    assert sock.recv(10) == b""
    sock.close()

    east = _wait_line(net.east, lambda f: "access-log-sa" in f.get("client", ""))
    assert east["direction"] == "egress" and east["import"] == "default/echo" and east["peer"] == "west"
    assert east["result"] == "ok", east
    assert int(east["bytes_to_service"]) == len(b"ECHO\n" + payload)
    assert int(east["bytes_to_client"]) == len(b"echo\n" + payload)
    assert float(east["duration_ms"]) >= float(east["setup_ms"]) > 0
    assert east["conn"]
    # west's line: the same bytes, the client's attributes as east sent them, the peer from its certificate
    west = _wait_line(net.west, lambda f: "access-log-sa" in f.get("client", "") and f.get("result") == "ok")
    assert west["direction"] == "ingress" and west["export"] == "default/echo" and west["peer"] == "east"
    assert int(west["bytes_to_service"]) == int(east["bytes_to_service"])
    assert int(west["bytes_to_client"]) == int(east["bytes_to_client"])
    # the metrics have the Import/Export and the peer
    deadline = time.monotonic() + 5
    while net.east.metric("clusterlink_gateway_relayed_bytes_total", direction="egress", service="default/echo",
                          peer="west", flow="client_to_service") < before_bytes + len(payload):
        assert time.monotonic() < deadline, "relayed bytes not counted per Import and peer"
        time.sleep(0.1)
    assert net.west.metric("clusterlink_gateway_connection_setup_seconds_count", direction="ingress",
                           service="default/echo", peer="east") == before_setup + 1


def test_a_refused_connection_gets_a_line_with_its_result(net: Fabric) -> None:
    net.publish_east(policies=[policy("allow-all", ALLOW_ALL), deny("no-echo-log", to={A.EXPORT_NAME: "echo"})])
    count = len(_access_lines(net.east))
    expect_reset(lambda: open_import(net.echo_port))
    line = _wait_line(net.east, lambda f: f.get("result") == "denied" and f.get("import") == "default/echo"
                      and len(_access_lines(net.east)) > count)
    assert line["peer"] == "west" and line["setup_ms"] == "-" and line["bytes_to_service"] == "0", line
    assert line["client"] == "none known"  # the import port: no preamble, nothing known of the client
    net.publish_east()
    # ingress refusals are logged on the refusing side
    net.publish_west(policies=[policy("allow-all", ALLOW_ALL), deny("not-east-log", from_={A.PEER_NAME: "east"})])
    count = len(_access_lines(net.west))
    expect_reset(lambda: open_import(net.echo_port))
    _wait_line(net.west, lambda f: f.get("result") == "denied" and f.get("export") == "default/echo"
               and f.get("peer") == "east" and len(_access_lines(net.west)) > count)
    net.publish_west()
    sock = open_import(net.echo_port)
    assert read_line(sock) == b"echo"
    sock.close()


def test_the_age_of_the_oldest_idle_tunnel_is_published(net: Fabric) -> None:
    sock = open_import(net.echo_port)  # east's pool to west is in use, so kept filled
    assert read_line(sock) == b"echo"
    sock.close()
    deadline = time.monotonic() + 12  # refreshed every 5 s
    while net.east.metric("clusterlink_gateway_tunnel_pool_oldest_seconds", peer="west") <= 0:
        assert time.monotonic() < deadline, "no tunnel pool age for west"
        time.sleep(0.2)


def test_a_service_vanishing_mid_transfer_is_logged_as_reset_with_the_bytes_so_far(net: Fabric) -> None:
    sock = open_import(net.echo_port, timeout=10)
    assert read_line(sock) == b"echo"
    sock.sendall(b"GEN 100000000000\n")
    received = len(sock.recv(1 << 20))
    assert received > 0
    count = len(_access_lines(net.east))
    net.servers["echo"].kill_connections()  # the service resets its connection mid-transfer
    try:
        sock.settimeout(5)
        try:
            while chunk := sock.recv(1 << 20):
                received += len(chunk)
        except ConnectionResetError:
            pass
        line = _wait_line(net.east, lambda f: f.get("result") == "reset" and len(_access_lines(net.east)) > count)
        west = _wait_line(net.west, lambda f: f.get("result") == "reset" and f.get("export") == "default/echo")
    finally:
        net.servers["echo"].revive()
        sock.close()
    assert line["import"] == "default/echo" and line["peer"] == "west"
    # what reached the client is what east relayed (the bytes counted are those written to it)
    assert 0 < received <= int(line["bytes_to_client"]) <= int(west["bytes_to_client"])
    assert line["setup_ms"] != "-"
