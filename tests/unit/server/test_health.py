"""Peer health: ClusterLink's thresholds and intervals."""

from controlplane.server.health import HEALTHY_INTERVAL, UNHEALTHY_INTERVAL, PeerHealth


def test_first_result_decides():
    h = PeerHealth()
    assert h.record(True) and h.reachable
    h = PeerHealth()
    assert h.record(False) and h.reachable is False


def test_five_failures_to_become_unreachable():
    h = PeerHealth()
    h.record(True)
    for _ in range(4):
        assert not h.record(False) and h.reachable
        assert h.interval() == HEALTHY_INTERVAL
    assert h.record(False) and h.reachable is False
    assert h.interval() == UNHEALTHY_INTERVAL


def test_three_successes_to_become_reachable_and_back_to_fast_probing():
    h = PeerHealth()
    h.record(False)
    assert not h.record(True) and h.interval() == HEALTHY_INTERVAL
    assert not h.record(True)
    assert h.record(True) and h.reachable


def test_a_failure_resets_the_success_streak():
    h = PeerHealth()
    h.record(False)
    h.record(True), h.record(True), h.record(False), h.record(True), h.record(True)
    assert h.reachable is False
    assert h.record(True) and h.reachable
