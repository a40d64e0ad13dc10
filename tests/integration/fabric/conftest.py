"""A shared two-peer fabric for the read-only tests of this directory (each test starts its own servers)."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from fabric import Topology
from tests.integration.fabric.support import MISSING


@pytest.fixture(scope="module")
def fabric() -> Iterator[Topology]:
    """Peer a: node n1 (pods p1, p2), node n2 (pod p3). Peer b: node n1 (pod p1)."""
    if MISSING:
        pytest.skip(MISSING)
    with Topology() as topo:
        a, b = topo.add_peer("a"), topo.add_peer("b")
        a_n1, a_n2 = a.add_node("n1"), a.add_node("n2")
        a_n1.add_pod("p1")
        a_n1.add_pod("p2")
        a_n2.add_pod("p3")
        b.add_node("n1").add_pod("p1")
        topo.build()
        yield topo


@pytest.fixture(autouse=True)
def _stop_what_the_test_started(request: pytest.FixtureRequest) -> Iterator[None]:
    """Servers a test starts on the shared fabric are stopped when the test ends."""
    if "fabric" not in request.fixturenames:
        yield
        return
    topo: Topology = request.getfixturevalue("fabric")
    before = set(map(id, topo.processes.procs))
    yield
    started = [p for p in topo.processes.procs if id(p) not in before]
    for proc in reversed(started):
        topo.processes.procs.remove(proc)
        proc.stop()
