"""Pure statistics for the report: percentiles of samples, the summary of repeated runs (median and
spread), ratios that tolerate a missing or zero denominator, and the window of a parallel connection
run (rate, time to first byte and concurrency of overlapping connections)."""

from __future__ import annotations

import math
import statistics
from collections.abc import Iterable, Sequence
from dataclasses import dataclass


def percentile(samples: Sequence[float], q: float) -> float:
    """The q-th percentile (0..100) by the nearest-rank method on sorted data (as in haproxy-baseline.md:
    p99 of 3000 samples is the 2970th smallest). Raises ValueError on no samples."""
    if not samples:
        raise ValueError("percentile of no samples")
    if not 0 <= q <= 100:
        raise ValueError(f"percentile {q} is not in 0..100")
    ordered = sorted(samples)
    rank = max(1, math.ceil(q / 100.0 * len(ordered)))
    return float(ordered[rank - 1])


def sample_summary(samples: Sequence[float]) -> dict[str, float]:
    """p50, p99, mean and max of one run's samples."""
    return {"p50": percentile(samples, 50), "p99": percentile(samples, 99),
            "mean": float(statistics.fmean(samples)), "max": float(max(samples))}


def summarize(runs: Sequence[float], digits: int = 3) -> dict[str, object]:
    """The figure of repeated runs: {"median", "min", "max", "spread_pct", "runs"}.

    spread_pct is (max - min) / median in percent (0 for one run); None values (a failed run) are
    left out of the figures but kept in "runs". With no valid run every figure is None.
    """
    valid = [float(r) for r in runs if r is not None]
    if not valid:
        return {"median": None, "min": None, "max": None, "spread_pct": None, "runs": list(runs)}
    med = statistics.median(valid)
    spread = (max(valid) - min(valid)) / med * 100.0 if med else 0.0
    return {"median": round(med, digits), "min": round(min(valid), digits), "max": round(max(valid), digits),
            "spread_pct": round(spread, 1), "runs": [None if r is None else round(float(r), digits) for r in runs]}


def median_of(figure: dict[str, object] | None) -> float | None:
    """The median of a `summarize` figure (None when absent)."""
    if not figure:
        return None
    value = figure.get("median")
    return None if value is None else float(value)  # type: ignore[arg-type]


def ratio(numerator: float | None, denominator: float | None, digits: int = 3) -> float | None:
    """numerator / denominator, None when either is missing or the denominator is 0."""
    if numerator is None or denominator is None or denominator == 0:
        return None
    return round(numerator / denominator, digits)


def difference(a: float | None, b: float | None, digits: int = 1) -> float | None:
    if a is None or b is None:
        return None
    return round(a - b, digits)


@dataclass(frozen=True)
class Exchange:
    """One connection of a parallel run (times from time.perf_counter_ns, one clock for every process).

    `first_byte_ns` is None for a failed connection; `timed` is False for a warm-up connection."""

    start_ns: int
    end_ns: int
    first_byte_ns: int | None
    timed: bool

    @property
    def ok(self) -> bool:
        return self.first_byte_ns is not None


def parallel_window(exchanges: Iterable[Exchange]) -> dict[str, float | int | None]:
    """The rate and time to first byte of connections that overlap in time.

    The window runs from the start of the first timed connection (the warm-up connections still in
    flight then are part of the steady load) to the end of the last connection. `per_s` counts every
    successful connection that ended inside the window, warm-ups included (their work is in it);
    `ttfb` is over the timed successful ones only. `mean_in_flight` is the connections open on
    average over the window (the concurrency the client really drove: Little's law),
    `max_in_flight` the most at any moment. With no timed connection every figure is None or 0.
    """
    items = list(exchanges)
    timed = [e for e in items if e.timed]
    empty: dict[str, float | int | None] = {"window_s": None, "in_window": 0, "per_s": 0.0, "ttfb_samples": 0,
                                            "mean_in_flight": None, "max_in_flight": _max_in_flight(items)}
    if not timed:
        return empty
    begin = min(e.start_ns for e in timed)
    end = max(e.end_ns for e in items)
    span = end - begin
    if span <= 0:
        return empty
    in_window = sum(1 for e in items if e.ok and e.end_ns >= begin)
    open_ns = sum(max(0, min(e.end_ns, end) - max(e.start_ns, begin)) for e in items)
    return {"window_s": span / 1e9, "in_window": in_window, "per_s": in_window / (span / 1e9),
            "ttfb_samples": sum(1 for e in timed if e.ok), "mean_in_flight": open_ns / span,
            "max_in_flight": _max_in_flight(items)}


def ttfb_us(exchanges: Iterable[Exchange]) -> list[float]:
    """Time to first byte, microseconds, of the timed successful connections."""
    return [(e.first_byte_ns - e.start_ns) / 1000.0 for e in exchanges if e.timed and e.first_byte_ns is not None]


def _max_in_flight(items: Sequence[Exchange]) -> int:
    # an end and a start at the same instant do not overlap: ends sort first
    events = sorted([(e.start_ns, 1) for e in items] + [(e.end_ns, -1) for e in items], key=lambda x: (x[0], x[1]))
    current = best = 0
    for _, delta in events:
        current += delta
        best = max(best, current)
    return best
