"""Liquidity-withdrawal episodes: stretches where ±2 % depth collapses against its own recent norm.

Kaiko and FTI describe 2025-10-10 as books "appearing empty" with >90 % depth collapse; an absolute
depth threshold cannot express that across assets or years, so depth is compared with its trailing
median.

Decisions
---------
* Baseline = median of the finite depth observations in ``[t - window_s, t)`` (default 24 h),
  strictly before ``t``: the current minute must not dilute the baseline it is judged against, and
  the median keeps a past collapse from dragging the baseline down for long.
* Warm-up: the baseline (and so the ratio) is NaN until the window holds ``min_periods`` finite
  observations (default 720 = half a day of minutes). A median of a few minutes describes the very
  regime it should be a reference for; half a window trades that off against losing a whole day
  at every history start. Assets should load the preceding 24 h so the evaluated range is warm.
* An observation is "below" when ``depth / baseline < threshold`` (strict; default 0.1 = a 10x
  collapse). NaN depth or NaN baseline is never below, so missing data cannot create an episode.
* Each below observation covers ``[ts, ts + bar_s)``. Intervals whose gap (next start minus
  previous end) is ``<= merge_gap_s`` join one episode, so contiguous minutes merge with a gap of 0
  and a brief partial recovery (default up to 5 minutes) does not split one withdrawal in two.
* Timestamps are epoch seconds, strictly increasing.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from numpy.typing import ArrayLike, NDArray
from sortedcontainers import SortedList

DAY_S = 86_400


def _increasing_ts(ts: ArrayLike) -> NDArray[np.float64]:
    arr = np.asarray(ts, dtype=np.float64)
    if arr.ndim != 1 or np.any(np.diff(arr) <= 0):
        raise ValueError("timestamps must be a strictly increasing 1-D array")
    return arr


def trailing_median(
    ts: ArrayLike, values: ArrayLike, window_s: float, *, min_periods: int = 1
) -> NDArray[np.float64]:
    """Median of the finite ``values`` with timestamps in ``[t - window_s, t)`` for every ``t``.

    Strictly past data only, time-based (gaps in the series shrink the window's population rather
    than stretching it). NaN where fewer than ``min_periods`` finite values are in the window.
    O(n log w) with a sorted window.
    """
    ts_arr = _increasing_ts(ts)
    vals = np.asarray(values, dtype=np.float64)
    if vals.shape != ts_arr.shape:
        raise ValueError("values must match ts")
    finite = np.isfinite(vals)
    window_lo = np.searchsorted(ts_arr, ts_arr - window_s, side="left")
    out = np.full(ts_arr.size, np.nan)
    window = SortedList()
    lo = 0
    for i in range(ts_arr.size):
        if i > 0 and finite[i - 1]:
            window.add(vals[i - 1])
        while lo < window_lo[i]:
            if finite[lo]:
                window.remove(vals[lo])
            lo += 1
        m = len(window)
        if m >= max(min_periods, 1):
            out[i] = 0.5 * (window[(m - 1) // 2] + window[m // 2])
    return out


def depth_ratio(
    ts: ArrayLike, depth: ArrayLike, *, window_s: float = DAY_S, min_periods: int = 720
) -> tuple[NDArray[np.float64], NDArray[np.float64]]:
    """``(baseline, ratio)``: trailing median baseline and ``depth / baseline`` (NaN if baseline <= 0)."""
    vals = np.asarray(depth, dtype=np.float64)
    baseline = trailing_median(ts, vals, window_s, min_periods=min_periods)
    with np.errstate(invalid="ignore", divide="ignore"):
        ratio = np.where(baseline > 0, vals / baseline, np.nan)
    return baseline, ratio


@dataclass(frozen=True)
class WithdrawalEpisode:
    """One liquidity-withdrawal episode.

    ``start``: ts of the first below-threshold observation; ``end``: ts of the last one + ``bar_s``
    (exclusive); ``minutes = (end - start) / 60`` (includes merged gaps); ``n_below``: below
    observations inside; ``worst_ratio``, ``worst_ts`` and ``depth_at_worst`` at the lowest ratio;
    ``baseline_depth``: trailing median at ``start``; ``depth_before``: last finite depth observed
    before ``start`` (NaN if none).
    """

    start: float
    end: float
    minutes: float
    n_below: int
    worst_ratio: float
    worst_ts: float
    depth_at_worst: float
    baseline_depth: float
    depth_before: float


def liquidity_withdrawals(
    ts: ArrayLike,
    depth: ArrayLike,
    *,
    threshold: float = 0.1,
    window_s: float = DAY_S,
    min_periods: int = 720,
    merge_gap_s: float = 300.0,
    bar_s: float = 60.0,
) -> list[WithdrawalEpisode]:
    """Episodes where ``depth`` (e.g. per-minute ±2 % USD depth) is below ``threshold`` x its
    trailing median, in time order."""
    ts_arr = _increasing_ts(ts)
    vals = np.asarray(depth, dtype=np.float64)
    baseline, ratio = depth_ratio(ts_arr, vals, window_s=window_s, min_periods=min_periods)
    below = np.flatnonzero(ratio < threshold)
    if below.size == 0:
        return []
    below_ts = ts_arr[below]
    new_episode = np.r_[True, below_ts[1:] - (below_ts[:-1] + bar_s) > merge_gap_s]
    group_starts = np.flatnonzero(new_episode)
    group_ends = np.r_[group_starts[1:], below.size]

    finite_idx = np.flatnonzero(np.isfinite(vals))
    episodes = []
    for g0, g1 in zip(group_starts, group_ends, strict=True):
        members = below[g0:g1]
        worst = members[np.argmin(ratio[members])]
        first = members[0]
        prior = np.searchsorted(finite_idx, first, side="left") - 1
        episodes.append(WithdrawalEpisode(
            start=float(ts_arr[first]),
            end=float(ts_arr[members[-1]] + bar_s),
            minutes=float((ts_arr[members[-1]] + bar_s - ts_arr[first]) / 60.0),
            n_below=int(members.size),
            worst_ratio=float(ratio[worst]),
            worst_ts=float(ts_arr[worst]),
            depth_at_worst=float(vals[worst]),
            baseline_depth=float(baseline[first]),
            depth_before=float(vals[finite_idx[prior]]) if prior >= 0 else float("nan"),
        ))
    return episodes
