"""The round-robin counters shared by worker processes (a memory-mapped file)."""

from __future__ import annotations

import multiprocessing
from pathlib import Path

import pytest

from controlplane.gateway.counters import CountersError, SharedCounters


def test_counters_are_shared_between_openers(tmp_path: Path) -> None:
    path = SharedCounters.create(tmp_path / "rr")
    a, b = SharedCounters(path), SharedCounters(path)
    try:
        assert [a.increment("ns/imp"), b.increment("ns/imp"), a.increment("ns/imp")] == [1, 2, 3]
        assert b.increment("ns/other") == 1
    finally:
        a.close()
        b.close()


def _hammer(path: str, n: int) -> list[int]:
    counters = SharedCounters(path)
    try:
        return [counters.increment("ns/imp") for _ in range(n)]
    finally:
        counters.close()


def test_increments_from_processes_are_never_lost(tmp_path: Path) -> None:
    path = SharedCounters.create(tmp_path / "rr")
    ctx = multiprocessing.get_context("spawn")
    with ctx.Pool(3) as pool:
        results = pool.starmap(_hammer, [(str(path), 500)] * 3)
    values = sorted(v for r in results for v in r)
    assert values == list(range(1, 1501))


def test_a_full_table_shares_slots(tmp_path: Path) -> None:
    counters = SharedCounters(SharedCounters.create(tmp_path / "rr", slots=2))
    try:
        for i in range(5):
            assert counters.increment(f"ns/imp{i}") >= 1
    finally:
        counters.close()


@pytest.mark.parametrize("content", [b"", b"CLRX" + bytes(12), b"CLRR\x01\x00\x00\x00\x05\x00\x00\x00" + bytes(4)])
def test_not_a_counters_file(tmp_path: Path, content: bytes) -> None:
    path = tmp_path / "bad"
    path.write_bytes(content)
    with pytest.raises(CountersError):
        SharedCounters(path)


def test_missing_file(tmp_path: Path) -> None:
    with pytest.raises(CountersError, match="cannot open"):
        SharedCounters(tmp_path / "nope")
