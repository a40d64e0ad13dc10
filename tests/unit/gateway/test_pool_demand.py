"""The tunnel pool's demand tracker: the recent peak of concurrent tunnels, over one to two windows."""

from __future__ import annotations

from controlplane.gateway.pool import Demand


def test_the_peak_is_kept_for_one_to_two_windows() -> None:
    demand = Demand(window=10.0)
    assert demand.peak(0.0) == 0
    demand.observe(3, 1.0)
    demand.observe(12, 2.0)
    demand.observe(5, 3.0)
    assert demand.peak(3.0) == 12
    # the next window still remembers the previous one's peak
    demand.observe(2, 11.5)
    assert demand.peak(15.0) == 12
    # a window later the old peak is gone, the quieter one remains
    assert demand.peak(22.0) == 2
    # two windows without any observation: nothing
    assert demand.peak(60.0) == 0


def test_a_new_peak_counts_at_once() -> None:
    demand = Demand(window=10.0)
    demand.observe(4, 0.0)
    demand.observe(40, 0.5)
    assert demand.peak(0.5) == 40
