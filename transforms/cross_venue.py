"""Cross-venue liquidation cascades: one episode across venues, who liquidated what, who moved first.

Input is one asset's forced orders from every venue (``ts``, ``venue``, liquidated side, ``usd``) and
each venue's price series. Episodes are the §6.3 cascades (transforms/cascades.py) detected on the
pooled orders, so a cascade that no single venue's feed shows in full is still one episode; the size
baseline is the pooled one and the price test uses the reference venue's price (default: the venue
with the most liquidated notional in the input).

Per episode:

* ``venue_usd`` / ``venue_share``: same-side liquidated USD per venue over ``[start, end]`` and its
  share of the total. Sampled feeds (Binance, OKX) are lower bounds, so a share is the share *of
  what was published*; callers label it with the venues' coverage.
* Lead by threshold crossing: each venue's first time in ``[start - lookback_s, end + pad_s]``
  at which its price has moved ``move_bps`` (default: the asset's cascade threshold p) in the
  liquidation direction from its own price at ``start - lookback_s``. ``first_mover`` is the
  earliest crosser, ``lead_s`` its time ahead of the next venue to cross (NaN when fewer than two
  cross). A venue that never crosses has a NaN crossing time.
* Lead by cross-correlation: prices are sampled on a ``step_s`` grid (last observation carried
  forward, at most ``asof_tolerance_s`` old) over the same window, log returns taken, and for each
  venue the Pearson correlation of ``r_ref(t)`` with ``r_venue(t + lag)`` is computed for lags
  ``−max_lag_s … +max_lag_s`` (1 s to 1 min by default). ``xcorr_lag_s[venue]`` is the lag of the
  peak: positive means the venue follows the reference by that long, negative that it leads.
  Needs at least ``min_returns`` overlapping non-zero returns; otherwise NaN.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass

import numpy as np
from numpy.typing import ArrayLike, NDArray

from transforms.cascades import LONG, CascadeConfig, CascadeThresholds, Series, detect_cascades, liquidated_long
from transforms.open_interest import asof_values


@dataclass(frozen=True)
class CrossVenueConfig:
    lookback_s: float = 300.0
    pad_s: float = 60.0
    move_bps: float | None = None      # None: the asset's cascade price threshold p
    step_s: float = 1.0
    max_lag_s: float = 60.0
    asof_tolerance_s: float = 300.0
    min_returns: int = 30


@dataclass(frozen=True)
class CrossVenueCascade:
    """One episode across venues; times in the input's unit (seconds), moves in bps (signed)."""

    side: str
    start: float
    end: float
    n_orders: int
    usd: float
    reference_venue: str
    venue_usd: dict[str, float]
    venue_share: dict[str, float]
    venue_first_liquidation: dict[str, float]
    venue_move_bps: dict[str, float]
    crossing_time: dict[str, float]
    first_mover: str | None
    lead_s: float
    xcorr_lag_s: dict[str, float]
    xcorr_peak: dict[str, float]


def first_crossing(ts: ArrayLike, price: ArrayLike, *, since: float, until: float, down: bool,
                   move_bps: float, tolerance_s: float = 300.0) -> float:
    """First time in ``[since, until]`` the price has moved ``move_bps`` from its value at ``since``
    (as of, at most ``tolerance_s`` old), downward if ``down``; NaN if it never does."""
    ts = np.asarray(ts, dtype=np.float64)
    price = np.asarray(price, dtype=np.float64)
    order = np.argsort(ts, kind="stable")
    ts, price = ts[order], price[order]
    ref = float(asof_values([since], ts, price, tolerance_s=tolerance_s)[0])
    if not math.isfinite(ref):
        return math.nan
    inside = (ts >= since) & (ts <= until)
    moved = (price[inside] / ref - 1.0) * 1e4
    hit = np.flatnonzero((-moved if down else moved) >= move_bps - 1e-9)
    return float(ts[inside][hit[0]]) if hit.size else math.nan


def grid_returns(ts: ArrayLike, price: ArrayLike, grid: NDArray[np.float64], tolerance_s: float) -> NDArray:
    """Log returns between consecutive grid points of the as-of price (NaN where unknown)."""
    ts = np.asarray(ts, dtype=np.float64)
    price = np.asarray(price, dtype=np.float64)
    order = np.argsort(ts, kind="stable")
    sampled = asof_values(grid, ts[order], price[order], tolerance_s=tolerance_s)
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.diff(np.log(sampled))


def lagged_correlation(reference: NDArray, other: NDArray, max_lag: int, min_returns: int) -> tuple[int, float]:
    """Lag (in grid steps) maximising ``corr(reference[t], other[t + lag])`` over ``|lag| <= max_lag``
    and that correlation; ``(0, nan)`` without enough overlapping moving returns at any lag.
    Ties go to the smallest ``|lag|`` (then the negative one)."""
    best_lag, best = 0, -math.inf
    for lag in sorted(range(-max_lag, max_lag + 1), key=lambda k: (abs(k), k)):
        a = reference[max(0, -lag): reference.size - max(0, lag)]
        b = other[max(0, lag): other.size - max(0, -lag)]
        ok = np.isfinite(a) & np.isfinite(b)
        a, b = a[ok], b[ok]
        if a.size < min_returns or np.count_nonzero(a) < 2 or np.count_nonzero(b) < 2 or a.std() == 0 or b.std() == 0:
            continue
        corr = float(np.corrcoef(a, b)[0, 1])
        if corr > best + 1e-12:
            best_lag, best = lag, corr
    return (best_lag, best) if math.isfinite(best) else (0, math.nan)


def cross_venue_cascades(
    liq_ts: ArrayLike,
    liq_venue: ArrayLike,
    liq_side: ArrayLike,
    liq_usd: ArrayLike,
    *,
    prices: Mapping[str, Series],
    thresholds: CascadeThresholds,
    reference_venue: str | None = None,
    cascade_config: CascadeConfig = CascadeConfig(),
    config: CrossVenueConfig = CrossVenueConfig(),
) -> list[CrossVenueCascade]:
    """Episodes across venues for one asset (see the module docstring), ordered by start."""
    ts = np.asarray(liq_ts, dtype=np.float64)
    venue = np.asarray(liq_venue, dtype=str)
    usd = np.asarray(liq_usd, dtype=np.float64)
    is_long = liquidated_long(liq_side)
    if not (ts.shape == venue.shape == usd.shape == is_long.shape):
        raise ValueError("liquidation ts, venue, side and usd must have the same length")
    if ts.size == 0:
        return []
    venues = sorted(set(venue.tolist()) | set(prices))
    if reference_venue is None:
        totals = {v: float(usd[venue == v].sum()) for v in prices}
        reference_venue = max(sorted(totals), key=lambda v: totals[v]) if totals else None
    if reference_venue not in prices:
        raise ValueError(f"reference venue {reference_venue!r} has no price series; pass one of {sorted(prices)}")
    move_bps = thresholds.min_move * 1e4 if config.move_bps is None else config.move_bps
    episodes = detect_cascades(ts, np.where(is_long, "long", "short"), usd, price=prices[reference_venue],
                               thresholds=thresholds, config=cascade_config)
    out = []
    for cascade in episodes:
        side_long = cascade.side == LONG
        members = (ts >= cascade.start) & (ts <= cascade.end) & (is_long == side_long)
        venue_usd = {v: float(usd[members & (venue == v)].sum()) for v in venues}
        total = sum(venue_usd.values())
        first_liq = {v: float(ts[members & (venue == v)].min()) if np.any(members & (venue == v)) else math.nan
                     for v in venues}
        since, until = cascade.start - config.lookback_s, cascade.end + config.pad_s
        crossing, moves = {}, {}
        for v, (p_ts, p_val) in prices.items():
            crossing[v] = first_crossing(p_ts, p_val, since=since, until=until, down=side_long,
                                         move_bps=move_bps, tolerance_s=config.asof_tolerance_s)
            moves[v] = _extreme_move_bps(p_ts, p_val, since, until, side_long, config.asof_tolerance_s)
        crossed = sorted((t, v) for v, t in crossing.items() if math.isfinite(t))
        grid = np.arange(since, until + config.step_s / 2, config.step_s)
        returns = {v: grid_returns(p_ts, p_val, grid, config.asof_tolerance_s) for v, (p_ts, p_val) in prices.items()}
        max_lag = int(round(config.max_lag_s / config.step_s))
        lags, peaks = {}, {}
        for v in prices:
            lag, peak = lagged_correlation(returns[reference_venue], returns[v], max_lag, config.min_returns)
            lags[v] = lag * config.step_s if math.isfinite(peak) else math.nan
            peaks[v] = peak
        out.append(CrossVenueCascade(
            side=cascade.side, start=cascade.start, end=cascade.end, n_orders=cascade.n_orders, usd=cascade.usd,
            reference_venue=reference_venue, venue_usd=venue_usd,
            venue_share={v: (u / total if total > 0 else math.nan) for v, u in venue_usd.items()},
            venue_first_liquidation=first_liq, venue_move_bps=moves, crossing_time=crossing,
            first_mover=crossed[0][1] if crossed else None,
            lead_s=crossed[1][0] - crossed[0][0] if len(crossed) >= 2 else math.nan,
            xcorr_lag_s=lags, xcorr_peak=peaks,
        ))
    return out


def _extreme_move_bps(ts: ArrayLike, price: ArrayLike, since: float, until: float, down: bool,
                      tolerance_s: float) -> float:
    """Signed move from the as-of price at ``since`` to the extreme in the liquidation direction."""
    ts = np.asarray(ts, dtype=np.float64)
    price = np.asarray(price, dtype=np.float64)
    order = np.argsort(ts, kind="stable")
    ts, price = ts[order], price[order]
    ref = float(asof_values([since], ts, price, tolerance_s=tolerance_s)[0])
    during = price[(ts >= since) & (ts <= until)]
    if not math.isfinite(ref) or during.size == 0:
        return math.nan
    extreme = min(ref, float(during.min())) if down else max(ref, float(during.max()))
    return (extreme / ref - 1.0) * 1e4
