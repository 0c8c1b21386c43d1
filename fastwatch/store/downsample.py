"""Min/max bucket downsampling: a long series drawn with few points that keeps its spikes and its last point."""
from __future__ import annotations

import numpy as np


def summarise(lows: np.ndarray, low_steps: np.ndarray, highs: np.ndarray, high_steps: np.ndarray) -> np.ndarray:
    """Merge points into one summary per series: each argument has shape (points, series); a raw row is a point
    whose low and high are its value. Returns (series, 4): min, step of min, max, step of max. NaN is skipped."""
    lo = np.where(np.isnan(lows), np.inf, lows).argmin(axis=0)
    hi = np.where(np.isnan(highs), -np.inf, highs).argmax(axis=0)
    series = np.arange(lows.shape[1])
    out = np.stack([lows[lo, series], low_steps[lo, series], highs[hi, series], high_steps[hi, series]], axis=1)
    out[np.isnan(out[:, 0]) | np.isnan(out[:, 2])] = np.nan  # a series with no value in these points
    return out


def _first_of_each_group(groups: np.ndarray, keys: np.ndarray) -> np.ndarray:
    "Index of the smallest key within each group."
    order = np.lexsort((keys, groups))
    starts = np.r_[0, np.flatnonzero(np.diff(groups[order])) + 1]
    return order[starts]


def minmax_buckets(lo_steps, lo_values, hi_steps, hi_values, n: int) -> tuple[np.ndarray, np.ndarray]:
    """Steps and values of at most about `n` points: the min and max of each of `n // 2` equal step ranges.
    Each candidate has a low and a high point (the same point for raw rows, a block's min and max for summaries)."""
    # Missing values (None) become NaN and are left out, with their steps.
    lo_values, hi_values = np.array(lo_values, dtype=float), np.array(hi_values, dtype=float)
    ok = ~(np.isnan(lo_values) | np.isnan(hi_values))
    lo_steps = np.array(lo_steps, dtype=float)[ok].astype(np.int64)
    hi_steps = np.array(hi_steps, dtype=float)[ok].astype(np.int64)
    lo_values, hi_values = lo_values[ok], hi_values[ok]
    if not len(lo_steps): return np.zeros(0, np.int64), np.zeros(0)
    start = min(lo_steps.min(), hi_steps.min())
    span = max(lo_steps.max(), hi_steps.max()) - start + 1
    buckets = (np.minimum(lo_steps, hi_steps) - start) * max(1, n // 2) // span
    lows, highs = _first_of_each_group(buckets, lo_values), _first_of_each_group(buckets, -hi_values)
    steps = np.concatenate([lo_steps[lows], hi_steps[highs]])
    values = np.concatenate([lo_values[lows], hi_values[highs]])
    steps, first = np.unique(steps, return_index=True)
    return steps, values[first]
