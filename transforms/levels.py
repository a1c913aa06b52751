"""Support/resistance levels (analytics.md §4): clustered swing pivots, plus classic pivot points.

Swing-pivot levels, as of the last bar:
  1. swing highs/lows with ``left = right = k`` bars and TradingView's tie rule (an equal older bar
     vetoes a pivot, an equal newer one does not, so a flat top yields its earliest bar), inside
     the lookback; a pivot is only known k bars after it, so the newest k bars can never be pivots;
  2. highs and lows are pooled (a broken resistance becomes support) and single-linkage clustered:
     sorted prices merge while the gap is ≤ τ = max(0.5·ATR14, 0.5%·close), so the tolerance
     widens in volatile regimes but never below half a percent. Deviation from the spec: a
     cluster is also cut when it would grow wider than 2τ. Pure single linkage chains a dense
     trading range into one band; on BTC after 2025-10-10 (ATR ≈ 4.2k) it merged every pivot
     from 88.5k to 112k into a "level" at 98.7k with the price inside it;
  3. level = volume-weighted mean pivot price; touches = pivots + rejection bars (bars whose range
     reaches level ± τ/2 yet close on the same side of the level as the previous close); a
     cluster's own pivot bars are not counted twice;
  4. strength 0–100 = 40·touch score (log-saturating at 10 touches) + 30·percentile rank (share of
     levels with at most this volume) of the volume traded on the level's touch bars + 30·recency
     of the last touch (half-life 90 days daily, 7 days hourly). The volume
     and recency terms are the analytics.md proposal; the weights are not from any published source.
  5. kind is relative to the last close; at most 5 levels per side, nearest first.

Pivot points (classic/floor, Fibonacci, Camarilla, Woodie) are the separate, formula-only method
for intraday levels from the previous period's high, low and close.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from transforms.candles import as_utc_ms
from transforms.signals import atr_wilder

PIVOT_METHODS = ("classic", "fibonacci", "camarilla", "woodie")
_DAY = np.timedelta64(1, "D")


@dataclass(frozen=True)
class LevelParams:
    """pivot_bars: k bars on each side of a swing pivot; lookback_bars: bars searched for pivots
    and touches; tolerance τ = max(tolerance_atr·ATR, tolerance_min_fraction·close); a level's
    band is at most max_band_tolerances·τ wide; touch_saturation: touches that max the touch score."""

    pivot_bars: int
    lookback_bars: int
    recency_half_life_days: float
    atr_period: int = 14
    tolerance_atr: float = 0.5
    tolerance_min_fraction: float = 0.005
    max_per_side: int = 5
    max_band_tolerances: float = 2.0
    touch_saturation: int = 10


DAILY_LEVELS = LevelParams(pivot_bars=5, lookback_bars=365, recency_half_life_days=90.0)
# The hourly half-life is scaled with the lookback (365 d -> 30 d, so 90 d -> ~7 d); with 90 days
# every level in a 30-day window would look equally fresh.
HOURLY_LEVELS = LevelParams(pivot_bars=12, lookback_bars=30 * 24, recency_half_life_days=7.0)


@dataclass(frozen=True)
class Level:
    """One clustered level. ``distance_pct`` = (price / close − 1)·100, negative for supports.

    ``band_low``/``band_high``: lowest/highest pivot price in the cluster; single linkage can chain
    pivots of a long range into one wide cluster, and the band makes that visible.

    ``volume_share``: volume on the level's touch bars / all volume in the lookback.
    ``last_pivot``: newest pivot bar of the cluster (the TM ``date``); ``last_touch``: newest pivot
    or rejection bar (drives recency).
    """

    price: float
    band_low: float
    band_high: float
    kind: str
    strength: float
    touches: int
    pivots: int
    volume_share: float
    distance_pct: float
    last_pivot: np.datetime64
    last_touch: np.datetime64


@dataclass(frozen=True)
class SupportResistance:
    """Levels as of ``as_of`` (the last bar's open time), supports and resistances nearest first."""

    as_of: np.datetime64
    close: float
    atr: float
    tolerance: float
    supports: tuple[Level, ...]
    resistances: tuple[Level, ...]

    @property
    def nearest_support(self) -> Level | None:
        return self.supports[0] if self.supports else None

    @property
    def nearest_resistance(self) -> Level | None:
        return self.resistances[0] if self.resistances else None


def pivot_highs(high: np.ndarray, left: int, right: int) -> np.ndarray:
    """Indices i where high_i > every one of the ``left`` older highs and ≥ every one of the
    ``right`` newer highs (TradingView "Pivot Points High Low" tie rule)."""
    return _pivots(np.asarray(high, dtype=np.float64), left, right)


def pivot_lows(low: np.ndarray, left: int, right: int) -> np.ndarray:
    """Indices i where low_i < every one of the ``left`` older lows and ≤ the ``right`` newer lows."""
    return _pivots(-np.asarray(low, dtype=np.float64), left, right)


def _pivots(values: np.ndarray, left: int, right: int) -> np.ndarray:
    if left < 1 or right < 1:
        raise ValueError("pivot windows need at least one bar on each side")
    n = values.size
    if n < left + right + 1:
        return np.empty(0, dtype=np.int64)
    candidates = np.arange(left, n - right)
    older = np.lib.stride_tricks.sliding_window_view(values, left).max(axis=1)[candidates - left]
    newer = np.lib.stride_tricks.sliding_window_view(values, right).max(axis=1)[candidates + 1]
    return candidates[(values[candidates] > older) & (values[candidates] >= newer)]


def support_resistance_levels(
    ts: np.ndarray,
    high: np.ndarray,
    low: np.ndarray,
    close: np.ndarray,
    volume: np.ndarray,
    params: LevelParams = DAILY_LEVELS,
) -> SupportResistance:
    """Swing-pivot support/resistance as of the last bar (oldest bar first in every array).

    Pass at least ``params.atr_period`` bars; pass more than the lookback so the ATR is warmed up.
    Use :data:`DAILY_LEVELS` for daily bars and :data:`HOURLY_LEVELS` for hourly bars.
    """
    stamps = as_utc_ms(ts)
    high, low, close, volume = (np.asarray(a, dtype=np.float64) for a in (high, low, close, volume))
    n = close.size
    if n < params.atr_period:
        raise ValueError(f"need at least {params.atr_period} bars for ATR{params.atr_period}, got {n}")
    close_now = float(close[-1])
    atr_now = float(atr_wilder(high, low, close, params.atr_period)[-1])
    tolerance = max(params.tolerance_atr * atr_now, params.tolerance_min_fraction * close_now)
    start = max(n - params.lookback_bars, 0)
    k = params.pivot_bars

    highs, lows = pivot_highs(high, k, k), pivot_lows(low, k, k)
    pivot_index = np.r_[highs, lows]
    pivot_price = np.r_[high[highs], low[lows]]
    inside = pivot_index >= start
    pivot_index, pivot_price = pivot_index[inside], pivot_price[inside]
    if pivot_index.size == 0:
        return SupportResistance(stamps[-1], close_now, atr_now, tolerance, (), ())

    order = np.argsort(pivot_price, kind="stable")
    pivot_index, pivot_price = pivot_index[order], pivot_price[order]
    cluster = _cluster_sorted(pivot_price, tolerance, params.max_band_tolerances * tolerance)
    n_clusters = int(cluster[-1]) + 1
    # Prices are sorted, so each cluster's first/last member is its lowest/highest pivot.
    boundaries = np.r_[0, np.flatnonzero(np.diff(cluster)) + 1]
    band_low = pivot_price[boundaries]
    band_high = pivot_price[np.r_[boundaries[1:], pivot_price.size] - 1]
    # Weighted mean as an offset from the band floor, so a one-pivot level is exactly its pivot
    # price; zero-volume clusters fall back to equal weights.
    weight = volume[pivot_index]
    weight_sum = np.bincount(cluster, weights=weight, minlength=n_clusters)
    weight = np.where(weight_sum[cluster] > 0, weight, 1.0)
    offset = pivot_price - band_low[cluster]
    price = band_low + np.bincount(cluster, weights=weight * offset) / np.bincount(cluster, weights=weight)

    is_pivot_bar = np.zeros((n_clusters, n - start), dtype=bool)
    is_pivot_bar[cluster, pivot_index - start] = True
    previous_close = np.r_[np.nan, close[:-1]][start:]
    rejection = _rejections(high[start:], low[start:], close[start:], previous_close, price, tolerance)
    rejection &= ~is_pivot_bar
    touch_bar = rejection | is_pivot_bar
    pivots = is_pivot_bar.sum(axis=1)
    touches = pivots + rejection.sum(axis=1)

    window_volume = volume[start:]
    level_volume = (touch_bar * window_volume).sum(axis=1)
    volume_share = level_volume / window_volume.sum() if window_volume.sum() > 0 else np.zeros(n_clusters)
    volume_rank = (volume_share[None, :] <= volume_share[:, None]).sum(axis=1) / n_clusters
    bar_stamps = stamps[start:]
    last_touch = bar_stamps[n - start - 1 - np.argmax(touch_bar[:, ::-1], axis=1)]
    last_pivot = bar_stamps[n - start - 1 - np.argmax(is_pivot_bar[:, ::-1], axis=1)]
    age_days = (stamps[-1] - last_touch) / _DAY
    touch_score = np.minimum(1.0, np.log1p(touches) / np.log1p(params.touch_saturation))
    recency = np.exp(-np.log(2) * age_days / params.recency_half_life_days)
    strength = 100 * (0.4 * touch_score + 0.3 * volume_rank + 0.3 * recency)

    levels = [
        Level(
            price=float(price[c]),
            band_low=float(band_low[c]),
            band_high=float(band_high[c]),
            kind="support" if price[c] < close_now else "resistance",
            strength=float(strength[c]),
            touches=int(touches[c]),
            pivots=int(pivots[c]),
            volume_share=float(volume_share[c]),
            distance_pct=float((price[c] / close_now - 1) * 100),
            last_pivot=last_pivot[c],
            last_touch=last_touch[c],
        )
        for c in range(n_clusters)
    ]
    by_distance = sorted(levels, key=lambda level: abs(level.distance_pct))
    return SupportResistance(
        as_of=stamps[-1],
        close=close_now,
        atr=atr_now,
        tolerance=tolerance,
        supports=tuple(level for level in by_distance if level.kind == "support")[: params.max_per_side],
        resistances=tuple(level for level in by_distance if level.kind == "resistance")[: params.max_per_side],
    )


def _cluster_sorted(prices: np.ndarray, gap: float, max_width: float) -> np.ndarray:
    """Cluster ids for ascending prices: single linkage (split where consecutive prices are more
    than ``gap`` apart), plus a new cluster whenever the current one would grow wider than
    ``max_width``, so a dense trading range cannot chain into one band spanning the whole range."""
    cluster = np.zeros(prices.size, dtype=np.int64)
    first = prices[0]
    for i in range(1, prices.size):
        split = prices[i] - prices[i - 1] > gap or prices[i] - first > max_width
        cluster[i] = cluster[i - 1] + split
        if split:
            first = prices[i]
    return cluster


def _rejections(
    high: np.ndarray,
    low: np.ndarray,
    close: np.ndarray,
    previous_close: np.ndarray,
    levels: np.ndarray,
    tolerance: float,
) -> np.ndarray:
    """(levels × bars) mask of bars that reached the band level ± τ/2 yet closed on the side the
    previous close was on (a bar without a previous close never counts)."""
    reached = (low[None, :] <= levels[:, None] + tolerance / 2) & (high[None, :] >= levels[:, None] - tolerance / 2)
    side_before = np.sign(previous_close[None, :] - levels[:, None])
    side_after = np.sign(close[None, :] - levels[:, None])
    return reached & (side_before == side_after) & (side_after != 0)


def pivot_points(
    high: float | np.ndarray, low: float | np.ndarray, close: float | np.ndarray, method: str = "classic"
) -> dict[str, float | np.ndarray]:
    """Pivot levels from the previous period's high, low and close (scalars or arrays alike).

    classic: P, R1–R3, S1–S3; fibonacci: P, R1–R3, S1–S3 at 0.382/0.618/1.0 of the range;
    camarilla: P (classic) and R1–R4, S1–S4 = C ± 1.1·range/(12, 6, 4, 2);
    woodie: P = (H+L+2C)/4, R1, R2, S1, S2.
    """
    high, low, close = (np.asarray(a, dtype=np.float64) for a in (high, low, close))
    span = high - low
    typical = (high + low + close) / 3
    if method == "classic":
        levels = {
            "P": typical,
            "R1": 2 * typical - low,
            "S1": 2 * typical - high,
            "R2": typical + span,
            "S2": typical - span,
            "R3": high + 2 * (typical - low),
            "S3": low - 2 * (high - typical),
        }
    elif method == "fibonacci":
        levels = {"P": typical}
        for rank, ratio in enumerate((0.382, 0.618, 1.0), start=1):
            levels[f"R{rank}"] = typical + ratio * span
            levels[f"S{rank}"] = typical - ratio * span
    elif method == "camarilla":
        levels = {"P": typical}
        for rank, divisor in enumerate((12, 6, 4, 2), start=1):
            levels[f"R{rank}"] = close + span * 1.1 / divisor
            levels[f"S{rank}"] = close - span * 1.1 / divisor
    elif method == "woodie":
        pivot = (high + low + 2 * close) / 4
        levels = {"P": pivot, "R1": 2 * pivot - low, "S1": 2 * pivot - high, "R2": pivot + span, "S2": pivot - span}
    else:
        raise ValueError(f"unknown pivot method {method!r}; expected one of {', '.join(PIVOT_METHODS)}")
    return {name: value.item() if value.ndim == 0 else value for name, value in levels.items()}
