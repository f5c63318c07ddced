"""Medians of repetitions, their spread, and latency percentiles."""

from __future__ import annotations

import math
import statistics
from collections.abc import Sequence

__all__ = ["median", "percentile", "spread"]


def median(values: Sequence[float]) -> float | None:
    """The median of ``values``, or None when there are none."""
    return float(statistics.median(values)) if values else None


def percentile(values: Sequence[float], pct: float) -> float | None:
    """The ``pct`` percentile (0-100) by the nearest-rank method, or None when empty.

    Nearest rank keeps every reported latency an observed one (no interpolation).
    """
    if not values:
        return None
    ordered = sorted(values)
    return float(ordered[min(max(1, math.ceil(pct / 100.0 * len(ordered))), len(ordered)) - 1])


def spread(values: Sequence[float]) -> dict[str, float | int] | None:
    """``{"min", "max", "n"}`` of the repetitions behind a median, or None when empty."""
    return {"min": float(min(values)), "max": float(max(values)), "n": len(values)} if values else None
