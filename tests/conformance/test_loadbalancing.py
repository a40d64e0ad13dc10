"""ClusterLink's load-balancing scenarios: round-robin (first pick index 1), static, random, with
exports removed one by one (failover to the next source)."""

from __future__ import annotations

from .fabricutil import Access, allow_all, import_doc

SOURCES = [("cl0", "echo"), ("cl1", "echo"), ("cl2", "echo")]


def setup(w, lb):  # type: ignore[no-untyped-def]
    for peer in w.peers.values():
        peer.apply(allow_all())
    cl0 = w.peers["cl0"]
    cl0.apply(import_doc("echo", SOURCES, lb=lb))
    return cl0, Access(w.fab, cl0, w.clients["cl0"], "echo")


def wait_serving(access, servers) -> None:  # type: ignore[no-untyped-def]
    for s in servers:
        access.expect(s)


def test_round_robin(clean):
    w = clean
    cl0, access = setup(w, "round-robin")
    wait_serving(access, ["cl0", "cl1", "cl2"])
    seq = access.servers(9)
    names = ["cl0", "cl1", "cl2"]
    start = names.index(seq[0])
    assert seq == [names[(start + i) % 3] for i in range(9)], seq
    w.peers["cl0"].delete("Export", "echo")
    access.expect("cl1")
    seq = access.servers(6)
    assert set(seq) == {"cl1", "cl2"} and all(a != b for a, b in zip(seq, seq[1:])), seq
    w.peers["cl1"].delete("Export", "echo")
    access.expect("cl2")
    assert set(access.servers(4)) == {"cl2"}


def test_static_failover(clean):
    w = clean
    cl0, access = setup(w, "static")
    access.expect("cl0")
    assert set(access.servers(5)) == {"cl0"}
    w.peers["cl0"].delete("Export", "echo")
    access.expect("cl1")
    assert set(access.servers(5)) == {"cl1"}
    w.peers["cl1"].delete("Export", "echo")
    access.expect("cl2")
    assert set(access.servers(5)) == {"cl2"}


def test_random(clean):
    w = clean
    cl0, access = setup(w, "random")
    wait_serving(access, ["cl0", "cl1", "cl2"])
    assert set(access.servers(40)) == {"cl0", "cl1", "cl2"}
    w.peers["cl0"].delete("Export", "echo")
    access.expect("cl1")
    access.expect("cl2")
    assert set(access.servers(20)) == {"cl1", "cl2"}
    w.peers["cl1"].delete("Export", "echo")
    access.expect("cl2")
    assert set(access.servers(5)) == {"cl2"}
