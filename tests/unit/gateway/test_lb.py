"""Load balancing order (pure): ClusterLink's round-robin/random/static, unreachable last."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from controlplane.gateway.lb import DEFAULT_SCHEME, first_index, normalize_scheme, source_order


@pytest.mark.parametrize("scheme, count, counter, rnd, unreachable, expected", [
    # round-robin: the counter after this connection's increment; the first connection gets 1
    ("round-robin", 3, 1, 0, (), [1, 2, 0]),
    ("round-robin", 3, 2, 0, (), [2, 0, 1]),
    ("round-robin", 3, 3, 0, (), [0, 1, 2]),
    ("round-robin", 3, 4, 0, (), [1, 2, 0]),
    ("round-robin", 1, 1, 0, (), [0]),
    ("round-robin", 2, 1, 0, (), [1, 0]),
    ("round-robin", 3, 1, 0, {1}, [2, 0, 1]),  # unreachable postponed, order otherwise kept
    ("round-robin", 3, 1, 0, {1, 2}, [0, 1, 2]),
    ("round-robin", 3, 1, 0, {0, 1, 2}, [1, 2, 0]),  # all unreachable: still tried, in order
    # static: always from index 0
    ("static", 3, 99, 7, (), [0, 1, 2]),
    ("static", 3, 0, 0, {0}, [1, 2, 0]),
    # random: a random start, then linear probing
    ("random", 3, 0, 5, (), [2, 0, 1]),
    ("random", 4, 0, 0, (), [0, 1, 2, 3]),
    ("random", 4, 0, 2, {3}, [2, 0, 1, 3]),
    ("", 3, 1, 0, (), [1, 2, 0]),  # no scheme: round-robin (the CRD default)
    ("round-robin", 0, 1, 0, (), []),
])
def test_order(scheme: str, count: int, counter: int, rnd: int, unreachable, expected: list[int]) -> None:  # type: ignore[no-untyped-def]
    assert source_order(scheme, count, counter=counter, random_value=rnd, unreachable=unreachable) == expected


def test_round_robin_sequence_matches_clusterlinks_e2e() -> None:
    # TestLoadBalancingRoundRobin: request i is served by cl[(i+1) % 3]
    firsts = [source_order("round-robin", 3, counter=i + 1)[0] for i in range(30)]
    assert firsts == [(i + 1) % 3 for i in range(30)]


def test_unknown_scheme() -> None:
    with pytest.raises(ValueError, match="unknown load-balancing scheme 'fastest'"):
        normalize_scheme("fastest")
    with pytest.raises(ValueError):
        first_index("round-robin", 0)
    assert normalize_scheme("") == DEFAULT_SCHEME


schemes = st.sampled_from(["round-robin", "random", "static"])


@given(schemes, st.integers(1, 12), st.integers(0, 2**64), st.integers(0, 2**32), st.data())
def test_every_order_is_a_permutation_with_unreachable_last(scheme, count, counter, rnd, data) -> None:  # type: ignore[no-untyped-def]
    unreachable = data.draw(st.sets(st.integers(0, count - 1)))
    order = source_order(scheme, count, counter=counter, random_value=rnd, unreachable=unreachable)
    assert sorted(order) == list(range(count))
    reachable_part = order[:count - len(unreachable)]
    assert not set(reachable_part) & unreachable
    # the relative order of the reachable ones is the unconstrained order's
    plain = source_order(scheme, count, counter=counter, random_value=rnd)
    assert reachable_part == [i for i in plain if i not in unreachable]
    assert order[len(reachable_part):] == [i for i in plain if i in unreachable]


@given(st.integers(1, 10), st.data())
def test_consecutive_round_robin_connections_visit_every_source(count: int, data) -> None:  # type: ignore[no-untyped-def]
    start = data.draw(st.integers(0, 1000))
    firsts = {source_order("round-robin", count, counter=start + i)[0] for i in range(count)}
    assert firsts == set(range(count))
