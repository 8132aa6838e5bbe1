"""Statistics over seeds: how far apart two models' seed means are, and how sure that is."""

from __future__ import annotations

import math
import statistics
from collections.abc import Sequence


def mean_difference(base: Sequence[float], other: Sequence[float]) -> tuple[float, float | None]:
    """mean(other) - mean(base) and the standard error of that difference for two independent samples of
    seeds (None when either sample has a single value, which has no spread to estimate)."""
    diff = statistics.fmean(other) - statistics.fmean(base)
    if min(len(base), len(other)) < 2:
        return diff, None
    return diff, math.sqrt(sum(statistics.variance(x) / len(x) for x in (base, other)))
