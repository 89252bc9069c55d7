"""Small statistics helpers: percentiles and summaries of latency samples."""

from __future__ import annotations

import math
from collections.abc import Sequence


def percentile(samples: Sequence[float], q: float) -> float | None:
    """The ``q``-th percentile (0..100) by the nearest-rank method; None without samples."""
    if not samples:
        return None
    ordered = sorted(samples)
    rank = max(1, math.ceil(q / 100 * len(ordered)))
    return ordered[min(rank, len(ordered)) - 1]


def summary_ms(samples_s: Sequence[float]) -> dict[str, float | int | None]:
    """p50/p90/p99/max of samples given in seconds, reported in milliseconds."""

    def ms(value: float | None) -> float | None:
        return None if value is None else round(value * 1000, 3)

    return {
        "count": len(samples_s),
        "p50_ms": ms(percentile(samples_s, 50)),
        "p90_ms": ms(percentile(samples_s, 90)),
        "p99_ms": ms(percentile(samples_s, 99)),
        "max_ms": ms(max(samples_s) if samples_s else None),
    }
