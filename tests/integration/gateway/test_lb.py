"""Load balancing through real gateways: round-robin global to the gateway's workers and
starting at index 1, static failover, random coverage, unreachable peers postponed."""

from __future__ import annotations

import socket
import time
from collections import Counter

from controlplane.api import attributes as A

from .conftest import Fabric
from .support import ALLOW_ALL, deny, free_port, greeting, import_info, open_import, peer_info, policy
from .conftest import WEST_LABELS


def _who(port: int) -> str:
    sock = open_import(port)
    try:
        return greeting(sock)
    finally:
        sock.close()


def test_round_robin_is_global_and_starts_at_index_1(net: Fabric) -> None:
    port = free_port()
    net.publish_east(imports=[import_info("rr-global", port, [("west", "a"), ("west", "b"), ("west", "c")])])
    seen = [_who(port) for _ in range(12)]
    # ClusterLink's e2e: connection i goes to source (i+1) % n, whichever worker accepted it
    assert seen == ["b", "c", "a"] * 4


def test_static_fails_over_in_order(net: Fabric) -> None:
    port = free_port()
    net.publish_east(imports=[import_info("static", port, [("west", "a"), ("west", "b"), ("west", "c")],
                                          scheme="static")])
    assert {_who(port) for _ in range(4)} == {"a"}
    net.publish_west(exports=[e for e in net.west_exports() if e.name != "a"])  # 404 for the first
    assert {_who(port) for _ in range(4)} == {"b"}
    net.publish_west(exports=[e for e in net.west_exports() if e.name not in ("a",)],
                     policies=[policy("allow-all", ALLOW_ALL), deny("no-b", to={A.EXPORT_NAME: "b"})])  # 403
    assert {_who(port) for _ in range(4)} == {"c"}


def test_round_robin_skips_a_failed_source(net: Fabric) -> None:
    port = free_port()
    net.publish_east(imports=[import_info("rr-failover", port, [("west", "a"), ("west", "b"), ("west", "c")])])
    assert [_who(port) for _ in range(3)] == ["b", "c", "a"]
    net.publish_west(exports=[e for e in net.west_exports() if e.name != "a"])
    # the counter advances on the failover too: the two left alternate (ClusterLink's e2e)
    seen = [_who(port) for _ in range(6)]
    assert seen in (["b", "c"] * 3, ["c", "b"] * 3)


def test_random_reaches_every_source(net: Fabric) -> None:
    port = free_port()
    net.publish_east(imports=[import_info("random", port, [("west", "a"), ("west", "b"), ("west", "c")],
                                          scheme="random")])
    counts = Counter(_who(port) for _ in range(40))
    assert set(counts) == {"a", "b", "c"}


def test_unreachable_peer_is_postponed(net: Fabric) -> None:
    # "south" is down by the heartbeats, and its gateway accepts TCP but never answers TLS: trying
    # it first would cost the whole --connect-timeout (1 s here).
    hanging = socket.socket()
    hanging.bind(("127.0.0.1", 0))
    hanging.listen(16)
    try:
        port = free_port()
        net.publish_east(
            peers=[peer_info("west", net.west.peer_port, labels=WEST_LABELS),
                   peer_info("south", hanging.getsockname()[1], reachable=False)],
            imports=[import_info("postponed", port, [("south", "echo"), ("west", "echo")], scheme="static")])
        for _ in range(5):
            started = time.monotonic()
            assert _who(port) == "echo"
            assert time.monotonic() - started < 0.5
    finally:
        hanging.close()


def test_failed_connect_marks_the_peer_unreachable_at_once(net: Fabric) -> None:
    closed = free_port()  # nothing listens there: connections are refused
    port = free_port()
    net.publish_east(
        peers=[peer_info("west", net.west.peer_port, labels=WEST_LABELS), peer_info("south", closed)],
        imports=[import_info("local-health", port, [("south", "echo"), ("west", "echo")], scheme="static")])
    for _ in range(5):
        assert _who(port) == "echo"
    assert net.east.metric("clusterlink_gateway_peer_reachable", peer="south") == 0
    assert net.east.metric("clusterlink_gateway_tunnel_failures_total", peer="south", reason="connect") >= 1
