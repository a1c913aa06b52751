"""Per-minute 0-100 market-stress index built to rise ahead of and during liquidation cascades.

Every input is one asset's per-minute series on a shared, strictly increasing timestamp grid
(epoch seconds; gaps allowed). Every statistic looks only at the current and earlier minutes, so a
value, once published, never changes when later data arrives (tested).

Components (each mapped to 0..1)
--------------------------------
* ``depth`` - collapse of ±2 % depth against its trailing median (prior ``baseline_window_s``,
  default 24 h, as in ``liquidity.py``): ``clip(-log10(ratio) / -log10(depth_saturation_ratio))``.
  Log scale because depth collapses are multiplicative; 1.0 at a 10x collapse (the liquidity-
  withdrawal threshold), 0 at or above the baseline. With several books (venues) each book has its
  own baseline, and a minute's ratio is ``Σ depth / Σ baseline`` over the books that have both a
  depth that minute and a warm baseline (the baseline-weighted mean of their own ratios). A book
  that is missing for some minutes (an outage, a venue that joins later) therefore neither lowers
  the ratio nor enters it, where a sum of depths over whichever books happen to be there would read
  the gap as a liquidity withdrawal. ``depth_books`` says which books each minute's ratio stands on.
* ``liquidation`` - an exponentially decayed (Hawkes-like, ``liq_decay_s`` = 5 min) average of
  liquidated USD per minute, relative to the plain mean over the prior 24 h:
  ``clip(log10(ratio) / log10(liq_saturation_multiple))`` -> 0.5 at 10x normal, 1.0 at 100x
  (Amberdata measured 10.9x for the whole 40-minute 10/10 cascade, far more at its peak minute).
  The mean, not the median, is the baseline because most minutes of most assets have no
  liquidations; ``liq_baseline_floor_usd`` stops a quiet day turning one small order into 100x.
  Missing liquidation minutes count as zero liquidations.
* ``open_interest`` - drawdown from the trailing max over ``oi_window_s`` (4 h, current minute
  included): ``clip(drawdown / oi_saturation_drawdown)`` with 10 % -> 1.0. Forced closes destroy
  OI; a 10 % drop in 4 h is already extreme for BTC.
* ``funding`` - ``z = |f - mean| / max(std, funding_std_floor)`` against the prior 24 h, mapped
  ``clip((z - funding_z_floor) / (funding_z_saturation - funding_z_floor))`` so ordinary noise
  (z <= 1) scores 0 and z >= 4 scores 1. The std floor matters because many venues publish a
  funding rate that is flat for hours, where any tick would otherwise be an infinite z.

Index = ``100 * Σ w_c x_c / Σ w_c`` over the components that are defined at that minute. Default
weights favour the two fast signals (depth 0.35, liquidation 0.35) over the confirming (OI 0.15)
and slow (funding 0.15) ones. Components are undefined while their baselines warm up
(``min_periods`` finite prior observations, default 720 = 12 h of minutes) or when the input is
NaN; if the defined weight is below ``min_weight_coverage`` (0.5) the index is NaN rather than
letting one weak component speak for all four. ``coverage`` reports the defined weight fraction.
"""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass

import numpy as np
from numpy.typing import ArrayLike, NDArray

from transforms.liquidity import DAY_S, depth_ratio


@dataclass(frozen=True)
class StressConfig:
    baseline_window_s: float = DAY_S
    min_periods: int = 720
    depth_saturation_ratio: float = 0.1
    liq_decay_s: float = 300.0
    liq_baseline_floor_usd: float = 1e4
    liq_saturation_multiple: float = 100.0
    oi_window_s: float = 4 * 3_600
    oi_saturation_drawdown: float = 0.10
    funding_std_floor: float = 1e-5
    funding_z_floor: float = 1.0
    funding_z_saturation: float = 4.0
    weights: tuple[float, float, float, float] = (0.35, 0.35, 0.15, 0.15)
    min_weight_coverage: float = 0.5


@dataclass(frozen=True, eq=False)
class StressIndex:
    """All fields but ``depth_books`` have shape (n,): ``index`` in 0..100 (NaN if coverage is too
    low), the four components in 0..1 (NaN when undefined) and ``coverage`` in 0..1.
    ``depth_books`` (n, books) is True where a book contributed to that minute's depth component."""

    ts: NDArray[np.float64]
    index: NDArray[np.float64]
    depth: NDArray[np.float64]
    liquidation: NDArray[np.float64]
    open_interest: NDArray[np.float64]
    funding: NDArray[np.float64]
    coverage: NDArray[np.float64]
    depth_books: NDArray[np.bool_]


def _unit(x: NDArray) -> NDArray:
    return np.clip(x, 0.0, 1.0)


def _trailing_mean_std(ts: NDArray, x: NDArray, window_s: float, min_periods: int) -> tuple[NDArray, NDArray]:
    """Mean and population std of finite ``x`` in ``[t - window_s, t)`` from prefix sums.

    Values are centred on the first finite observation (itself past data for every defined output)
    so the sum-of-squares difference does not cancel catastrophically."""
    finite = np.isfinite(x)
    centre = x[finite][0] if finite.any() else 0.0
    dev = np.where(finite, x - centre, 0.0)
    prefix = [np.r_[0.0, np.cumsum(v)] for v in (finite.astype(np.float64), dev, dev * dev)]
    lo = np.searchsorted(ts, ts - window_s, side="left")
    hi = np.arange(ts.size)
    count, total, total_sq = (p[hi] - p[lo] for p in prefix)
    with np.errstate(invalid="ignore", divide="ignore"):
        mean_dev = total / count
        var = np.maximum(total_sq / count - mean_dev**2, 0.0)
    defined = count >= max(min_periods, 1)
    return np.where(defined, mean_dev + centre, np.nan), np.where(defined, np.sqrt(var), np.nan)


def _decayed_average(ts: NDArray, x: NDArray, decay_s: float) -> NDArray:
    """Exponentially weighted average with time-aware decay exp(-Δt / decay_s); its steady state
    for a constant input is that input, so it is directly comparable with a plain mean."""
    keep = np.exp(-np.diff(ts, prepend=ts[0]) / decay_s)
    out = np.empty_like(x)
    level = 0.0
    for i, (k, v) in enumerate(zip(keep.tolist(), x.tolist(), strict=True)):
        level = k * level + (1.0 - k) * v if i else v
        out[i] = level
    return out


def _trailing_max(ts: NDArray, x: NDArray, window_s: float) -> NDArray:
    """Max of finite ``x`` over ``[t - window_s, t]`` (current included), monotone deque, O(n)."""
    out = np.full(x.size, np.nan)
    candidates: deque[int] = deque()
    for i in range(x.size):
        if np.isfinite(x[i]):
            while candidates and x[candidates[-1]] <= x[i]:
                candidates.pop()
            candidates.append(i)
        while candidates and ts[candidates[0]] < ts[i] - window_s:
            candidates.popleft()
        if candidates:
            out[i] = x[candidates[0]]
    return out


def combined_depth_ratio(
    ts: NDArray, depth_by_book: NDArray, *, window_s: float, min_periods: int
) -> tuple[NDArray[np.float64], NDArray[np.bool_]]:
    """``(ratio, contributing)`` for depth of shape (n, books), NaN where a book has no depth that
    minute: ``Σ depth / Σ trailing-median baseline`` over the books with a finite depth and a
    positive baseline in that minute (NaN where there is none), and which books those were."""
    baselines = np.column_stack([
        depth_ratio(ts, column, window_s=window_s, min_periods=min_periods)[0] for column in depth_by_book.T
    ]) if depth_by_book.shape[1] else np.empty(depth_by_book.shape)
    contributing = np.isfinite(depth_by_book) & (np.nan_to_num(baselines, nan=0.0) > 0)
    depth_sum = np.where(contributing, depth_by_book, 0.0).sum(axis=1)
    baseline_sum = np.where(contributing, baselines, 0.0).sum(axis=1)
    with np.errstate(invalid="ignore", divide="ignore"):
        ratio = np.where(contributing.any(axis=1), depth_sum / baseline_sum, np.nan)
    return ratio, contributing


def _depth_component(ratio: NDArray, cfg: StressConfig) -> NDArray:
    with np.errstate(divide="ignore", invalid="ignore"):
        score = -np.log10(ratio) / -np.log10(cfg.depth_saturation_ratio)
    return np.where(np.isfinite(ratio), _unit(np.nan_to_num(score, posinf=1.0)), np.nan)


def _liquidation_component(ts: NDArray, liq_usd: NDArray, cfg: StressConfig) -> NDArray:
    flow = np.nan_to_num(liq_usd, nan=0.0)
    baseline, _ = _trailing_mean_std(ts, flow, cfg.baseline_window_s, cfg.min_periods)
    ratio = _decayed_average(ts, flow, cfg.liq_decay_s) / np.maximum(baseline, cfg.liq_baseline_floor_usd)
    with np.errstate(divide="ignore", invalid="ignore"):
        score = np.log10(ratio) / np.log10(cfg.liq_saturation_multiple)
    return np.where(np.isfinite(baseline), _unit(np.nan_to_num(score, neginf=0.0)), np.nan)


def _oi_component(ts: NDArray, oi: NDArray, cfg: StressConfig) -> NDArray:
    peak = _trailing_max(ts, oi, cfg.oi_window_s)
    with np.errstate(divide="ignore", invalid="ignore"):
        drawdown = np.where(peak > 0, 1.0 - oi / peak, np.nan)
    return _unit(drawdown / cfg.oi_saturation_drawdown)


def _funding_component(ts: NDArray, funding: NDArray, cfg: StressConfig) -> NDArray:
    mean, std = _trailing_mean_std(ts, funding, cfg.baseline_window_s, cfg.min_periods)
    z = np.abs(funding - mean) / np.maximum(std, cfg.funding_std_floor)
    return _unit((z - cfg.funding_z_floor) / (cfg.funding_z_saturation - cfg.funding_z_floor))


def market_stress_index(
    ts: ArrayLike,
    depth_2pct_usd: ArrayLike,
    liq_usd: ArrayLike,
    oi_usd: ArrayLike,
    funding_8h: ArrayLike,
    *,
    config: StressConfig = StressConfig(),
) -> StressIndex:
    """Stress index on the ``ts`` grid; ``depth_2pct_usd`` is ±2 % USD depth of one book, shape
    (n,), or of several books (venues), shape (n, books) with NaN where a book has no depth that
    minute; ``liq_usd`` is liquidated USD (both sides) per minute, ``funding_8h`` the 8h-normalised
    funding rate (e.g. OI-weighted across venues)."""
    ts_arr = np.asarray(ts, dtype=np.float64)
    if ts_arr.ndim != 1 or np.any(np.diff(ts_arr) <= 0):
        raise ValueError("ts must be strictly increasing")
    depth = np.asarray(depth_2pct_usd, dtype=np.float64)
    depth_by_book = depth.reshape(-1, 1) if depth.ndim == 1 else depth
    if depth_by_book.ndim != 2 or depth_by_book.shape[0] != ts_arr.size:
        raise ValueError(f"depth must have shape (n,) or (n, books) with n = {ts_arr.size}, got {depth.shape}")
    inputs = [np.asarray(v, dtype=np.float64) for v in (liq_usd, oi_usd, funding_8h)]
    if any(v.shape != ts_arr.shape for v in inputs):
        raise ValueError("every input series must match ts")
    if ts_arr.size == 0:
        empty = np.empty(0)
        return StressIndex(ts_arr, *(empty,) * 6, np.zeros(depth_by_book.shape, dtype=bool))
    depth_ratio_all, depth_books = combined_depth_ratio(
        ts_arr, depth_by_book, window_s=config.baseline_window_s, min_periods=config.min_periods)
    parts = np.column_stack([
        _depth_component(depth_ratio_all, config),
        _liquidation_component(ts_arr, inputs[0], config),
        _oi_component(ts_arr, inputs[1], config),
        _funding_component(ts_arr, inputs[2], config),
    ])
    weights = np.asarray(config.weights, dtype=np.float64)
    defined = np.isfinite(parts)
    coverage = (defined * weights).sum(axis=1) / weights.sum()
    weighted = (np.where(defined, parts, 0.0) * weights).sum(axis=1)
    with np.errstate(invalid="ignore", divide="ignore"):
        index = 100.0 * weighted / (coverage * weights.sum())
    index = np.where(coverage >= config.min_weight_coverage, index, np.nan)
    return StressIndex(ts_arr, index, *parts.T, coverage, depth_books)


def lead_time_minutes(
    ts: ArrayLike, index: ArrayLike, event_start: float, *, threshold: float = 50.0, lookback_s: float = 6 * 3_600
) -> float:
    """Minutes from the first index value >= ``threshold`` in ``[event_start - lookback_s,
    event_start]`` to ``event_start``; NaN if the index never reaches it in that window.

    If the index is already above the threshold at the window's first minute, the result is the
    distance to that minute (about ``lookback_s``) and is left-censored: stress started earlier.
    """
    ts_arr = np.asarray(ts, dtype=np.float64)
    idx = np.asarray(index, dtype=np.float64)
    in_window = (ts_arr >= event_start - lookback_s) & (ts_arr <= event_start)
    hits = np.flatnonzero(in_window & (idx >= threshold))
    if hits.size == 0:
        return float("nan")
    return float((event_start - ts_arr[hits[0]]) / 60.0)


def first_crossing_offset_minutes(
    ts: ArrayLike, values: ArrayLike, event_start: float, *, threshold: float, below: bool = False,
    lookback_s: float = 6 * 3_600, lookahead_s: float = 3_600,
) -> float:
    """Signed minutes from ``event_start`` to the first ``ts`` in ``[event_start - lookback_s,
    event_start + lookahead_s]`` whose value reaches ``threshold`` (``>=``, or ``<`` with ``below``):
    negative = the signal led the event, positive = it lagged. NaN if it never did in that window.

    Unlike ``lead_time_minutes`` a late signal counts too: a demo asks how early or how late each
    signal was against the ground truth. Timestamps are when a value became known (e.g. a
    minute's close), in epoch seconds; NaN values never cross."""
    ts_arr = np.asarray(ts, dtype=np.float64)
    vals = np.asarray(values, dtype=np.float64)
    if ts_arr.shape != vals.shape:
        raise ValueError("values must match ts")
    crossed = vals < threshold if below else vals >= threshold
    in_window = (ts_arr >= event_start - lookback_s) & (ts_arr <= event_start + lookahead_s)
    hits = np.flatnonzero(in_window & crossed)
    if hits.size == 0:
        return float("nan")
    return float((ts_arr[hits].min() - event_start) / 60.0)
