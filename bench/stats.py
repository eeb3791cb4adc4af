"""Small statistics helpers for the bench reports."""

from __future__ import annotations

import math
from typing import Sequence


def percentile(values: Sequence[float], q: float) -> float | None:
    """Nearest-rank percentile (q in 0..100); None for no values."""
    if not values:
        return None
    ordered = sorted(values)
    rank = max(1, math.ceil(q / 100 * len(ordered)))
    return ordered[min(rank, len(ordered)) - 1]


def summary(values: Sequence[float], digits: int = 4) -> dict:
    if not values:
        return {"count": 0}
    ordered = sorted(values)

    def r(x):
        return round(x, digits)

    return {
        "count": len(ordered),
        "min": r(ordered[0]),
        "p50": r(percentile(ordered, 50)),
        "p90": r(percentile(ordered, 90)),
        "p99": r(percentile(ordered, 99)),
        "max": r(ordered[-1]),
        "mean": r(sum(ordered) / len(ordered)),
    }


def segment_rates(completions: Sequence[float], started: float, segment: int) -> list[dict]:
    """Throughput per consecutive ``segment`` completions (does it slow as N grows?)."""
    ordered = sorted(completions)
    rates = []
    previous = started
    for end in range(segment, len(ordered) + 1, segment):
        t = ordered[end - 1]
        seconds = t - previous
        rates.append({"upto": end, "per_second": round(segment / seconds, 1) if seconds > 0 else None})
        previous = t
    return rates
