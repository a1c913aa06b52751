"""Funding-rate normalisation and OI-weighted aggregation (analytics.md §7, CoinGlass conventions).

Venues settle funding on different intervals (Hyperliquid hourly, Binance mostly 8 h, some 4 h/1 h),
so rates are only comparable or averageable after scaling to a common 8 h period:
``f_8h = f * 8 / interval_h``; ``annualized = f_8h * 3 * 365`` (simple, not compounded, as CoinGlass
reports it; returned as a fraction, 0.1095 = 10.95 %).

OI-weighted funding ``sum(f_8h_i * OI_i) / sum(OI_i)`` follows CoinGlass ``avg_funding_rate_by_oi``;
passing volumes as weights gives the volume-weighted variant. A venue is skipped when its rate or
weight is NaN or its weight is not positive (a venue with no open interest has no say in what
positions pay); if none remain the result is NaN.
"""

from __future__ import annotations

import numpy as np
from numpy.typing import ArrayLike, NDArray

FUNDING_PERIOD_HOURS = 8.0
PERIODS_PER_YEAR = 3 * 365


def to_8h(rate: ArrayLike, interval_hours: ArrayLike) -> NDArray[np.float64]:
    """Scale a rate paid every ``interval_hours`` to its 8 h equivalent (broadcasts)."""
    return np.asarray(rate, dtype=np.float64) * FUNDING_PERIOD_HOURS / np.asarray(interval_hours, dtype=np.float64)


def annualize_8h(rate_8h: ArrayLike) -> NDArray[np.float64]:
    """Simple annualisation of an 8 h rate: ``f_8h * 3 * 365`` (fraction per year)."""
    return np.asarray(rate_8h, dtype=np.float64) * PERIODS_PER_YEAR


def oi_weighted_funding_8h(
    rates: ArrayLike, oi_usd: ArrayLike, interval_hours: ArrayLike = FUNDING_PERIOD_HOURS, *, axis: int = -1
) -> NDArray[np.float64]:
    """OI-weighted 8 h funding across venues along ``axis``.

    ``rates``, ``oi_usd`` and ``interval_hours`` broadcast together, e.g. ``(n_times, n_venues)``
    rates with ``(n_venues,)`` intervals gives ``(n_times,)``.
    """
    f_8h = to_8h(rates, interval_hours)
    weights = np.asarray(oi_usd, dtype=np.float64)
    f_8h, weights = np.broadcast_arrays(f_8h, weights)
    use = np.isfinite(f_8h) & np.isfinite(weights) & (weights > 0)
    weight_sum = np.where(use, weights, 0.0).sum(axis=axis)
    weighted = np.where(use, f_8h * weights, 0.0).sum(axis=axis)
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(weight_sum > 0, weighted / weight_sum, np.nan)
