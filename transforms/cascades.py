"""Liquidation cascades (analytics.md §6.3, asset ``liquidation_cascades``).

Input is one asset's normalised forced orders across venues (``ts``, liquidated side, ``usd``), plus
that asset's price, depth, OI, funding and spread series, all as plain arrays; call once per asset.

Detection
---------
1. Cluster per liquidated side: sort by time, start a new cluster when the gap to the previous order
   of that side exceeds ``gap_s`` (60 s; a gap of exactly ``gap_s`` stays in the cluster).
2. Size test: cluster USD >= ``max(min_usd, baseline_multiple * median_1m)``, where ``median_1m`` is
   the median of per-minute liquidated USD (both sides, calendar UTC minutes, minutes without
   liquidations counted as 0) over the ``baseline_window_s`` (30 d) before the cluster's start
   minute. Zero minutes count because "no liquidations" is the normal state for most assets; the
   grid starts at ``baseline_start`` (default: the first liquidation passed in), so pass 30 days of
   history and, where a venue feed was down, expect a lower baseline. With no prior minute at all
   the size test falls back to ``min_usd``.
3. Price test: the move from the start price (last price at or before ``start``, at most
   ``asof_tolerance_s`` old) to the extreme in the liquidation direction (minimum for long
   liquidations = forced sells, maximum for shorts) over price observations in
   ``[start, end + observation_pad_s]`` must reach ``min_move`` (inclusive). The pad lets a
   per-minute price series contribute the observation that closes the cluster's last minute.
   Without a start price the test fails: a size-only cascade could be a data artefact.

Thresholds: the spec fixes BTC (U_min $10M, k 20, p 1 %). ETH, SOL and the fallback are
**assumptions** scaled to typical ±1 % depth (CoinDesk: BTC ~$15-20M, ETH ~$6-8M, SOL and large
alts ~$1.3-2.5M) and to volatility (ETH ~1.5x, SOL ~2x, small alts ~3x BTC's).

Metrics (all point series are read as observed at their timestamp)
-------------------------------------------------------------------
* ``usd`` is the cluster's own-side notional; ``usd_long``/``usd_short`` are liquidations of each side
  with ``start <= ts <= end`` (so the opposite side shows up too), ``long_share`` their ratio.
* ``peak_1m_usd``: largest calendar-minute total (both sides) among the minutes touched by the
  cluster, the same series the size baseline uses, so ``peak_1m_usd / baseline_1m_usd`` is the
  "x normal" multiple.
* ``price_move_bps`` is signed (negative for a long cascade); ``impact_bps_per_musd`` is the move in
  the liquidation direction per $1M of cluster notional: ``|price_move_bps| / (usd / 1e6)``.
* ``depth_ratio_{2,1}pct``: min depth over ``[start, end + pad]`` / median depth over
  ``[start - depth_baseline_s, start)``. ``spread_peak_bps``: max spread over ``[start, end + pad]``.
* ``oi_change_pct = (OI_end / OI_start - 1) * 100``, OI as of ``start`` and ``end + pad``; funding
  before/after likewise.
* Hawkes: fit on the same-side liquidation times in ``[start - hawkes_lookback_s, end]`` (the
  cluster alone is usually too few events) with a piecewise-constant background
  (``transforms.hawkes.fit_hawkes_varying_baseline``): a cascade inside a calm hour fitted with one
  constant μ can only be explained by self-excitation and sits at n = 0.999, while a background
  that may rise during the burst lets the data say how much of it was exogenous.
  ``hawkes_mu`` is the fitted background averaged over ``[start, end]``, ``hawkes_lambda_max`` the
  peak fitted intensity (events per second) at or after ``start``, ``hawkes_endogenous_share`` the
  expected share of the window's orders triggered by an earlier one and ``hawkes_baseline_bin_s``
  the background's bin width chosen by AIC (NaN: one bin). Second-resolution timestamps tie often,
  which pushes β to its cap; n at its bound or β at its cap is ``hawkes_at_bound``.

Binance ``forceOrder`` streams at most one liquidation per symbol per second, so USD totals are
lower bounds wherever it is the source.
"""

from __future__ import annotations

import hashlib
from collections import OrderedDict
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import numpy as np
from numpy.typing import ArrayLike, NDArray

from transforms.hawkes import fit_hawkes_varying_baseline, intensity_after_events
from transforms.liquidity import DAY_S
from transforms.open_interest import asof_values

LONG, SHORT = "long", "short"
_SIDE_ALIASES = {"long": True, "sell": True, "short": False, "buy": False}

Series = tuple[ArrayLike, ArrayLike]

# analytics.liquidation_cascades and analytics.cross_venue_cascades pool the same forced orders of an
# asset and fit the same windows in one run; the fit is deterministic and its EM the costliest step.
_HAWKES_MEMO: OrderedDict[tuple, dict] = OrderedDict()
_HAWKES_MEMO_SIZE = 256


@dataclass(frozen=True)
class CascadeThresholds:
    """``min_usd`` = U_min, ``baseline_multiple`` = k, ``min_move`` = p (fraction, 0.01 = 1 %)."""

    min_usd: float
    baseline_multiple: float = 20.0
    min_move: float = 0.01


DEFAULT_THRESHOLDS: dict[str, CascadeThresholds] = {
    "BTC": CascadeThresholds(min_usd=10e6, baseline_multiple=20.0, min_move=0.01),
    "ETH": CascadeThresholds(min_usd=5e6, baseline_multiple=20.0, min_move=0.015),
    "SOL": CascadeThresholds(min_usd=2e6, baseline_multiple=20.0, min_move=0.02),
}
FALLBACK_THRESHOLDS = CascadeThresholds(min_usd=1e6, baseline_multiple=20.0, min_move=0.03)


def thresholds_for(asset: str) -> CascadeThresholds:
    """Default thresholds for a base asset symbol ("BTC", "eth", ...), fallback for unknown ones."""
    return DEFAULT_THRESHOLDS.get(asset.upper(), FALLBACK_THRESHOLDS)


@dataclass(frozen=True)
class CascadeConfig:
    gap_s: float = 60.0
    baseline_window_s: float = 30 * DAY_S
    baseline_start: float | None = None
    observation_pad_s: float = 60.0
    asof_tolerance_s: float = 300.0
    depth_baseline_s: float = 3_600.0
    hawkes_lookback_s: float = 3_600.0
    hawkes_min_events: int = 20


def liquidated_long(side: ArrayLike) -> NDArray[np.bool_]:
    """True where a long was liquidated. Accepts "long"/"short" or the forced order's own side
    "SELL"/"BUY" (a forced SELL closes a long), case-insensitive."""
    labels = np.char.lower(np.asarray(side, dtype=str))
    unknown = ~np.isin(labels, list(_SIDE_ALIASES))
    if np.any(unknown):
        raise ValueError(f"unknown liquidation side(s): {sorted(set(labels[unknown].tolist()))}")
    return np.isin(labels, [k for k, is_long in _SIDE_ALIASES.items() if is_long])


@dataclass(frozen=True, eq=False)
class LiquidationCluster:
    """Same-side forced orders with gaps <= gap_s. ``indices``: input rows, in time order."""

    side: str
    start: float
    end: float
    n_orders: int
    usd: float
    indices: NDArray[np.intp] = field(repr=False)


def cluster_liquidations(
    ts: ArrayLike, side: ArrayLike, usd: ArrayLike, *, gap_s: float = 60.0
) -> list[LiquidationCluster]:
    """Gap-based clusters per liquidated side, ordered by start time (long first on ties)."""
    ts_arr = np.asarray(ts, dtype=np.float64)
    usd_arr = np.asarray(usd, dtype=np.float64)
    is_long = liquidated_long(side)
    clusters = []
    for side_name, rows in ((LONG, np.flatnonzero(is_long)), (SHORT, np.flatnonzero(~is_long))):
        rows = rows[np.argsort(ts_arr[rows], kind="stable")]
        if rows.size == 0:
            continue
        side_ts = ts_arr[rows]
        breaks = np.flatnonzero(np.diff(side_ts) > gap_s) + 1
        for members in np.split(rows, breaks):
            clusters.append(LiquidationCluster(
                side=side_name,
                start=float(ts_arr[members[0]]),
                end=float(ts_arr[members[-1]]),
                n_orders=int(members.size),
                usd=float(usd_arr[members].sum()),
                indices=members,
            ))
    clusters.sort(key=lambda c: (c.start, c.side != LONG))
    return clusters


@dataclass(frozen=True)
class Cascade:
    """One detected cascade; see the module docstring for definitions. Times are epoch seconds,
    USD amounts in USD, ``hawkes_mu``/``hawkes_beta``/``hawkes_lambda_max`` per second."""

    side: str
    start: float
    end: float
    duration_s: float
    n_orders: int
    usd: float
    usd_long: float
    usd_short: float
    long_share: float
    peak_1m_usd: float
    baseline_1m_usd: float
    threshold_usd: float
    start_price: float
    extreme_price: float
    price_move_bps: float
    impact_bps_per_musd: float
    depth_ratio_2pct: float
    depth_ratio_1pct: float
    spread_peak_bps: float
    oi_start: float
    oi_end: float
    oi_change_pct: float
    funding_before: float
    funding_after: float
    hawkes_n: float
    hawkes_mu: float
    hawkes_beta: float
    hawkes_lambda_max: float
    hawkes_at_bound: bool
    hawkes_reason: str | None
    hawkes_endogenous_share: float
    hawkes_baseline_bin_s: float


class _PointSeries:
    """A time-sorted series with the window reads the cascade metrics need."""

    def __init__(self, series: Series | None):
        ts, values = (np.empty(0), np.empty(0)) if series is None else series
        ts_arr = np.asarray(ts, dtype=np.float64)
        vals = np.asarray(values, dtype=np.float64)
        if ts_arr.shape != vals.shape:
            raise ValueError("series timestamps and values must have the same shape")
        order = np.argsort(ts_arr, kind="stable")
        self.ts, self.values = ts_arr[order], vals[order]

    def window(self, lo: float, hi: float, *, include_hi: bool = True) -> NDArray[np.float64]:
        i0 = np.searchsorted(self.ts, lo, side="left")
        i1 = np.searchsorted(self.ts, hi, side="right" if include_hi else "left")
        chunk = self.values[i0:i1]
        return chunk[np.isfinite(chunk)]

    def asof(self, t: float, tolerance_s: float) -> float:
        return float(asof_values([t], self.ts, self.values, tolerance_s=tolerance_s)[0])


def _safe_ratio(num: float, den: float) -> float:
    return num / den if np.isfinite(num) and np.isfinite(den) and den > 0 else float("nan")


def _reduce(values: NDArray, how: Callable[[NDArray], float]) -> float:
    return float(how(values)) if values.size else float("nan")


class _MinuteTotals:
    """Per-minute liquidated USD (both sides) on a dense grid, zeros included."""

    def __init__(self, ts: NDArray, usd: NDArray, grid_start_s: float | None):
        minute = np.floor(ts / 60.0).astype(np.int64)
        self.first = int(np.floor(grid_start_s / 60.0)) if grid_start_s is not None else int(minute.min())
        inside = minute >= self.first
        self.totals = np.bincount(minute[inside] - self.first, weights=usd[inside])

    def _slice(self, lo_minute: int, hi_minute: int) -> NDArray:
        lo = max(lo_minute - self.first, 0)
        hi = max(min(hi_minute - self.first, self.totals.size), 0)
        return self.totals[lo:hi] if hi > lo else np.empty(0)

    def median_before(self, t: float, window_s: float) -> float:
        start_minute = int(np.floor(t / 60.0))
        return _reduce(self._slice(start_minute - int(window_s // 60), start_minute), np.median)

    def peak_between(self, lo: float, hi: float) -> float:
        return _reduce(self._slice(int(np.floor(lo / 60.0)), int(np.floor(hi / 60.0)) + 1), np.max)


def _hawkes_metrics(
    side_ts: NDArray, start: float, end: float, config: CascadeConfig
) -> dict[str, float | bool | str | None]:
    window_start = start - config.hawkes_lookback_s
    events = np.sort(side_ts[(side_ts >= window_start) & (side_ts <= end)])
    key = (hashlib.blake2b(events.tobytes(), digest_size=16).digest(), window_start, start, end,
           config.hawkes_min_events)
    if key in _HAWKES_MEMO:
        _HAWKES_MEMO.move_to_end(key)
        return dict(_HAWKES_MEMO[key])
    metrics = _fit_hawkes_metrics(events, window_start, start, end, config)
    _HAWKES_MEMO[key] = metrics
    if len(_HAWKES_MEMO) > _HAWKES_MEMO_SIZE:
        _HAWKES_MEMO.popitem(last=False)
    return dict(metrics)


def _fit_hawkes_metrics(events: NDArray, window_start: float, start: float, end: float,
                        config: CascadeConfig) -> dict[str, float | bool | str | None]:
    fit = fit_hawkes_varying_baseline(events, start=window_start, end=end, min_events=config.hawkes_min_events)
    nan = float("nan")
    mu = lam_max = nan
    if fit.reason is None:
        edges, baseline = fit.bin_edges, fit.baseline
        bin_of = np.clip(np.searchsorted(edges, events, side="right") - 1, 0, baseline.size - 1)
        lam = intensity_after_events(events, 0.0, fit.branching_ratio * fit.beta, fit.beta) + baseline[bin_of]
        lam_max = float(lam[events >= start].max())
        overlap = np.clip(np.minimum(edges[1:], end) - np.maximum(edges[:-1], start), 0.0, None)
        mu = (float((baseline * overlap).sum() / overlap.sum()) if overlap.sum() > 0
              else float(baseline[bin_of[events >= start][0]]))
    return {
        "hawkes_n": fit.branching_ratio,
        "hawkes_mu": mu,
        "hawkes_beta": fit.beta,
        "hawkes_lambda_max": lam_max,
        "hawkes_at_bound": fit.at_bound,
        "hawkes_reason": fit.reason,
        "hawkes_endogenous_share": fit.endogenous_share,
        "hawkes_baseline_bin_s": nan if fit.bin_s is None else float(fit.bin_s),
    }


def detect_cascades(
    liq_ts: ArrayLike,
    liq_side: ArrayLike,
    liq_usd: ArrayLike,
    *,
    price: Series,
    thresholds: CascadeThresholds,
    depth_2pct: Series | None = None,
    depth_1pct: Series | None = None,
    open_interest: Series | None = None,
    funding: Series | None = None,
    spread_bps: Series | None = None,
    config: CascadeConfig = CascadeConfig(),
) -> list[Cascade]:
    """Detect cascades for one asset; every series is ``(ts, values)``. Missing optional series give
    NaN metrics. Returns cascades ordered by start."""
    ts_arr = np.asarray(liq_ts, dtype=np.float64)
    usd_arr = np.asarray(liq_usd, dtype=np.float64)
    if ts_arr.size == 0:
        return []
    is_long = liquidated_long(liq_side)
    order = np.argsort(ts_arr, kind="stable")
    sorted_ts, sorted_usd, sorted_long = ts_arr[order], usd_arr[order], is_long[order]
    side_ts = {LONG: sorted_ts[sorted_long], SHORT: sorted_ts[~sorted_long]}
    side_cum = {
        LONG: np.r_[0.0, np.cumsum(sorted_usd[sorted_long])],
        SHORT: np.r_[0.0, np.cumsum(sorted_usd[~sorted_long])],
    }
    minutes = _MinuteTotals(ts_arr, usd_arr, config.baseline_start)
    prices, depth2, depth1 = _PointSeries(price), _PointSeries(depth_2pct), _PointSeries(depth_1pct)
    oi, fund, spread = _PointSeries(open_interest), _PointSeries(funding), _PointSeries(spread_bps)
    pad, tol = config.observation_pad_s, config.asof_tolerance_s

    cascades = []
    for cluster in cluster_liquidations(ts_arr, np.where(is_long, LONG, SHORT), usd_arr, gap_s=config.gap_s):
        if cluster.usd < thresholds.min_usd:
            continue
        baseline = minutes.median_before(cluster.start, config.baseline_window_s)
        threshold_usd = max(thresholds.min_usd, thresholds.baseline_multiple * baseline) \
            if np.isfinite(baseline) else thresholds.min_usd
        if cluster.usd < threshold_usd:
            continue

        start_price = prices.asof(cluster.start, tol)
        during = prices.window(cluster.start, cluster.end + pad)
        is_long_side = cluster.side == LONG
        extreme = float(min(start_price, during.min(initial=np.inf)) if is_long_side
                        else max(start_price, during.max(initial=-np.inf)))
        move_bps = (extreme / start_price - 1.0) * 1e4
        directional_bps = -move_bps if is_long_side else move_bps
        # Inclusive test; the epsilon absorbs the rounding of (extreme / start - 1) * 1e4.
        if not directional_bps >= thresholds.min_move * 1e4 - 1e-9:
            continue

        usd_by_side = {
            name: float(cum[np.searchsorted(side_ts[name], cluster.end, side="right")]
                        - cum[np.searchsorted(side_ts[name], cluster.start, side="left")])
            for name, cum in side_cum.items()
        }
        depth_ratios = {
            key: _safe_ratio(
                _reduce(series.window(cluster.start, cluster.end + pad), np.min),
                _reduce(series.window(cluster.start - config.depth_baseline_s, cluster.start, include_hi=False),
                        np.median),
            )
            for key, series in (("depth_ratio_2pct", depth2), ("depth_ratio_1pct", depth1))
        }
        oi_start, oi_end = oi.asof(cluster.start, tol), oi.asof(cluster.end + pad, tol)
        cascades.append(Cascade(
            side=cluster.side,
            start=cluster.start,
            end=cluster.end,
            duration_s=cluster.end - cluster.start,
            n_orders=cluster.n_orders,
            usd=cluster.usd,
            usd_long=usd_by_side[LONG],
            usd_short=usd_by_side[SHORT],
            long_share=_safe_ratio(usd_by_side[LONG], usd_by_side[LONG] + usd_by_side[SHORT]),
            peak_1m_usd=minutes.peak_between(cluster.start, cluster.end),
            baseline_1m_usd=baseline,
            threshold_usd=threshold_usd,
            start_price=start_price,
            extreme_price=extreme,
            price_move_bps=move_bps,
            impact_bps_per_musd=abs(move_bps) / (cluster.usd / 1e6),
            spread_peak_bps=_reduce(spread.window(cluster.start, cluster.end + pad), np.max),
            oi_start=oi_start,
            oi_end=oi_end,
            oi_change_pct=(_safe_ratio(oi_end, oi_start) - 1.0) * 100.0,
            funding_before=fund.asof(cluster.start, tol),
            funding_after=fund.asof(cluster.end + pad, tol),
            **depth_ratios,
            **_hawkes_metrics(side_ts[cluster.side], cluster.start, cluster.end, config),
        ))
    return cascades


@dataclass(frozen=True, eq=False)
class WindowMatch:
    """``recall`` = matched truth / truth, ``precision`` = matched detections / detections (NaN when
    the denominator is 0); ``truth_matched``/``detected_matched`` are per-window booleans."""

    recall: float
    precision: float
    truth_matched: NDArray[np.bool_]
    detected_matched: NDArray[np.bool_]


def match_windows(
    detected: Sequence[tuple[float, float]],
    truth: Sequence[tuple[float, float]],
    *,
    tolerance_s: float = 0.0,
    min_overlap_s: float = 0.0,
) -> WindowMatch:
    """Overlap matching of detected vs ground-truth ``(start, end)`` windows (closed intervals).

    A pair matches when ``min(ends) - max(starts) >= min_overlap_s`` after widening each truth
    window by ``tolerance_s`` on both sides (ground-truth times are rarely better than a minute).
    The default ``min_overlap_s = 0`` lets a point-like detection (a one-order cluster has
    start == end) match a window that contains it. Many-to-many: one long truth window may be
    covered by several detections, and each of them counts as a true positive.
    """
    det = np.asarray(detected, dtype=np.float64).reshape(-1, 2)
    tru = np.asarray(truth, dtype=np.float64).reshape(-1, 2)
    overlap = (np.minimum(det[:, None, 1], tru[None, :, 1] + tolerance_s)
               - np.maximum(det[:, None, 0], tru[None, :, 0] - tolerance_s))
    hits = overlap >= min_overlap_s
    truth_matched, detected_matched = hits.any(axis=0), hits.any(axis=1)
    return WindowMatch(
        recall=float(truth_matched.mean()) if tru.shape[0] else float("nan"),
        precision=float(detected_matched.mean()) if det.shape[0] else float("nan"),
        truth_matched=truth_matched,
        detected_matched=detected_matched,
    )
