"""Min/max bucket downsampling: a long series drawn with few points that keeps its spikes and its last point."""
from __future__ import annotations

import numpy as np


def summarise(points: np.ndarray) -> np.ndarray:
    """Merge summaries: `points` has shape (k, series, 4) with (min, step of min, max, step of max) per series
    (a raw row is a point whose min and max are its value); returns shape (series, 4). NaN values are skipped."""
    lo = np.where(np.isnan(points[:, :, 0]), np.inf, points[:, :, 0]).argmin(axis=0)
    hi = np.where(np.isnan(points[:, :, 2]), -np.inf, points[:, :, 2]).argmax(axis=0)
    series = np.arange(points.shape[1])
    out = np.stack([points[lo, series, 0], points[lo, series, 1], points[hi, series, 2], points[hi, series, 3]], 1)
    out[np.isnan(out[:, 0]) | np.isnan(out[:, 2])] = np.nan  # a series with no value in this block
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
    lo_steps, hi_steps = np.array(lo_steps, dtype=float)[ok].astype(np.int64), np.array(hi_steps, dtype=float)[ok].astype(np.int64)
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
