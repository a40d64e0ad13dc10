"""Pure statistics for the report: percentiles of samples, the summary of repeated runs (median and
spread), and ratios that tolerate a missing or zero denominator."""

from __future__ import annotations

import math
import statistics
from collections.abc import Sequence


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
