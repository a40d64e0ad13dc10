"""The agent port and the connections node agents open ahead of need: one that is closed before its
first byte (the agent's pool discarding it unused) is not a bad request; one that stops in the
middle of a preamble still is."""

from __future__ import annotations

import socket
import time

from .conftest import Fabric

BAD = "clusterlink_gateway_bad_requests_total"


def test_a_connection_closed_before_its_first_byte_is_not_a_bad_request(net: Fabric) -> None:
    before = net.east.metric(BAD, listener="agent")
    for _ in range(5):
        with socket.create_connection(("127.0.0.1", net.east.agent_port), timeout=5):
            pass  # opened, never used, closed with a FIN
    with socket.create_connection(("127.0.0.1", net.east.agent_port), timeout=5) as sock:
        sock.sendall(b"CLP1")  # the start of a preamble, then the end
    deadline = time.monotonic() + 5
    while net.east.metric(BAD, listener="agent") < before + 1 and time.monotonic() < deadline:
        time.sleep(0.05)
    time.sleep(0.3)  # the five silent ones had the same time to be (wrongly) counted
    assert net.east.metric(BAD, listener="agent") == before + 1
    assert net.east.metric(BAD, listener="agent", reason="preamble") >= 1
