"""A peer with two gateways (west and west2: two real gateway processes with west's certificate
and control plane), one of them frozen (SIGSTOP) under a steady stream of new connections: the
other carries every connection, only the frozen gateway is marked down (not the peer: no
failover to other sources, no PeerHealth flap), and it is marked up again once it thaws."""

from __future__ import annotations

import os
import signal
import time
from collections.abc import Iterator
from dataclasses import dataclass

import pytest

from controlplane.api import clusterlink_pb2 as pb

from .conftest import TEST_LIMITS, WEST_LABELS, Fabric
from .support import GatewayProcess, greeting, open_import

REACHABLE = "clusterlink_gateway_peer_gateway_reachable"


@dataclass
class TwoGateways:
    net: Fabric
    west2: GatewayProcess

    def gateway_label(self, gateway: GatewayProcess) -> str:
        return f"127.0.0.1:{gateway.peer_port}"


@pytest.fixture
def two(net: Fabric, tmp_path) -> Iterator[TwoGateways]:  # type: ignore[no-untyped-def]
    west2 = GatewayProcess("west2", net.certs.west, net.cp_west.socket_path, tmp_path, extra=TEST_LIMITS)
    try:
        west2.start()
        west2.wait_ready(net.version["west"])
        net.publish_east(peers=[pb.PeerInfo(name="west", reachable=True, labels=WEST_LABELS, gateways=[
            pb.Gateway(host="127.0.0.1", port=net.west.peer_port),
            pb.Gateway(host="127.0.0.1", port=west2.peer_port)])])
        yield TwoGateways(net, west2)
    finally:
        if west2.proc is not None and west2.proc.poll() is None:
            os.killpg(west2.proc.pid, signal.SIGCONT)
        west2.stop()
        net.publish_east()


def _connections(port: int, seconds: float) -> list[tuple[float, float, str]]:
    """New connections one after another for `seconds`: (start, duration, result) each."""
    out = []
    end = time.monotonic() + seconds
    while time.monotonic() < end:
        start = time.monotonic()
        try:
            sock = open_import(port, timeout=5.0)
            try:
                result = greeting(sock)
            finally:
                sock.close()
        except OSError as exc:
            result = f"failed: {exc}"
        out.append((start, time.monotonic() - start, result))
    return out


def _wait_metric(proc: GatewayProcess, name: str, value: float, timeout: float, port: int,
                 **labels: str) -> None:
    """Keep connections flowing (probes run while the pool is in use) until the metric has `value`."""
    deadline = time.monotonic() + timeout
    while proc.metric(name, **labels) != value:
        assert time.monotonic() < deadline, f"{name}{labels} never became {value}:\n{proc.log_tail()}"
        _connections(port, 0.1)


def test_one_frozen_gateway_of_two_is_marked_down_not_the_peer(two: TwoGateways) -> None:
    net, west2 = two.net, two.west2
    port = net.echo_port
    both = [two.gateway_label(net.west), two.gateway_label(west2)]
    for label in both:  # each worker probed both gateways
        _wait_metric(net.east, REACHABLE, 1, 10.0, port, peer="west", gateway=label)
    downs = net.east.metric("clusterlink_gateway_peer_down_total", peer="west")

    assert west2.proc is not None
    os.killpg(west2.proc.pid, signal.SIGSTOP)
    frozen_at = time.monotonic()
    runs = _connections(port, 2.5)
    assert all(result == "echo" for _, _, result in runs), [r for r in runs if r[2] != "echo"]
    late = [duration for start, duration, _ in runs if start > frozen_at + 1.5]
    assert late and max(late) < 0.5, late  # once it was marked down, connections do not wait for it
    assert net.east.metric(REACHABLE, peer="west", gateway=two.gateway_label(west2)) == 0
    assert net.east.metric(REACHABLE, peer="west", gateway=two.gateway_label(net.west)) == 1
    # the peer itself was never marked down: its other gateway answered every probe
    assert net.east.metric("clusterlink_gateway_peer_down_total", peer="west") == downs
    assert net.east.metric("clusterlink_gateway_peer_reachable", peer="west") == 1

    os.killpg(west2.proc.pid, signal.SIGCONT)
    _wait_metric(net.east, REACHABLE, 1, 10.0, port, peer="west", gateway=two.gateway_label(west2))
    assert "Gateway 127.0.0.1:%d of peer west answers probes again" % west2.peer_port in net.east.log_path.read_text()
