"""Open-interest units, resampling, change percentages and cross-venue totals (analytics.md §7).

Decisions
---------
* Units: linear (USDT/USDC-margined) contracts are ``contract_size`` coins each, so
  ``oi_coin = contracts * contract_size`` and ``oi_usd = oi_coin * mark``; inverse (coin-margined)
  contracts are ``contract_size`` USD each, so ``oi_usd = contracts * contract_size`` and
  ``oi_coin = oi_usd / mark``. Both units are kept because USD OI moves with price alone.
* Resampling keeps the last finite observation in each ``[k * bucket_s, (k + 1) * bucket_s)``
  bucket (CoinGlass OHLC "close"), labelled by bucket start.
* Change over ``w`` is an as-of lookback: the base is the last finite observation at or before
  ``t - w`` and at most ``tolerance_s`` older than it. The default tolerance 0 is meant for
  bucketed series, where "no value at t - w" (a missing bucket) must give NaN rather than silently
  reaching further back; pass a tolerance for raw, irregular observations. Base <= 0 gives NaN.
* Cross-venue total per bucket sums each venue's latest value. A venue without an observation in a
  bucket contributes its previous value for up to ``max_stale_buckets`` buckets: a single dropped
  poll would otherwise look like an aggregate OI crash. ``n_venues`` reports how many venues made
  up each total so consumers can discard incomplete buckets. Deduplicating venues that report the
  same book under two feeds is the caller's job.
* A cross-venue total's change is like for like: over the venues usable at both ends, their sum at
  t against their sum at t - w. A venue joining the total (its feed starting) or leaving it (an
  outage past the carry-forward) is not open interest opened or closed: counted naively, the demo's
  three venues joining Binance at 20:35 read as +80 % and +64 % in five minutes. NaN where no venue
  is usable at both ends.
* Timestamps are epoch seconds.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import NamedTuple

import numpy as np
from numpy.typing import ArrayLike, NDArray

from transforms.depth import aggregate_buckets

OI_CHANGE_WINDOWS: dict[str, int] = {"5m": 300, "1h": 3_600, "4h": 14_400, "24h": 86_400}


class OpenInterest(NamedTuple):
    coin: NDArray[np.float64]
    usd: NDArray[np.float64]


def open_interest_value(
    contracts: ArrayLike, mark_price: ArrayLike, *, contract_size: float | ArrayLike = 1.0,
    inverse: bool | ArrayLike = False,
) -> OpenInterest:
    """OI in coins and USD at the mark price (see module docstring for linear vs inverse);
    ``contract_size`` and ``inverse`` are scalars or one per observation (base units: 1, linear)."""
    size = np.asarray(contracts, dtype=np.float64) * np.asarray(contract_size, dtype=np.float64)
    mark = np.asarray(mark_price, dtype=np.float64)
    inverse_arr = np.asarray(inverse, dtype=bool)
    with np.errstate(invalid="ignore", divide="ignore"):
        inverse_coin = np.where(mark > 0, size / mark, np.nan)
    return OpenInterest(coin=np.where(inverse_arr, inverse_coin, size), usd=np.where(inverse_arr, size, size * mark))


def asof_values(
    query_ts: ArrayLike, ts: ArrayLike, values: ArrayLike, *, tolerance_s: float = np.inf
) -> NDArray[np.float64]:
    """For each query time, the last finite value observed at or before it, if at most
    ``tolerance_s`` old; NaN otherwise. ``ts`` must be sorted ascending."""
    ts_arr = np.asarray(ts, dtype=np.float64)
    vals = np.asarray(values, dtype=np.float64)
    query = np.asarray(query_ts, dtype=np.float64)
    if np.any(np.diff(ts_arr) < 0):
        raise ValueError("ts must be sorted ascending")
    finite = np.isfinite(vals)
    ts_arr, vals = ts_arr[finite], vals[finite]
    if ts_arr.size == 0:
        return np.full(query.shape, np.nan)
    idx = np.searchsorted(ts_arr, query, side="right") - 1
    safe = np.maximum(idx, 0)
    fresh = (idx >= 0) & (query - ts_arr[safe] <= tolerance_s)
    return np.where(fresh, vals[safe], np.nan)


def resample_last(ts: ArrayLike, values: ArrayLike, bucket_s: int) -> tuple[NDArray[np.int64], NDArray[np.float64]]:
    """``(bucket_start, last)`` for buckets containing at least one row (``last`` NaN if all NaN)."""
    agg = aggregate_buckets(ts, values, bucket_s)
    return agg.bucket_start, agg.last


def oi_change_pct(
    ts: ArrayLike, oi: ArrayLike, window_s: float, *, tolerance_s: float = 0.0
) -> NDArray[np.float64]:
    """``(OI_t - OI_{t-w}) / OI_{t-w} * 100`` with an as-of base (see module docstring)."""
    ts_arr = np.asarray(ts, dtype=np.float64)
    current = np.asarray(oi, dtype=np.float64)
    base = asof_values(ts_arr - window_s, ts_arr, current, tolerance_s=tolerance_s)
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(base > 0, (current - base) / base * 100.0, np.nan)


def oi_change_columns(
    ts: ArrayLike, oi: ArrayLike, *, windows: dict[str, int] = OI_CHANGE_WINDOWS, tolerance_s: float = 0.0
) -> dict[str, NDArray[np.float64]]:
    """``{"oi_change_pct_5m": ..., "oi_change_pct_1h": ..., ...}`` (CoinGlass field names)."""
    return {f"oi_change_pct_{name}": oi_change_pct(ts, oi, w, tolerance_s=tolerance_s) for name, w in windows.items()}


@dataclass(frozen=True, eq=False)
class CrossVenueTotal:
    """Regular grid from the first to the last bucket seen on any venue.

    ``bucket_start`` (m,) int64; ``total`` (m,) sum over contributing venues (NaN if none);
    ``n_venues`` (m,) number of contributing venues; ``by_venue`` (m, venues) what each venue
    contributed (NaN where it did not)."""

    bucket_start: NDArray[np.int64]
    total: NDArray[np.float64]
    n_venues: NDArray[np.int64]
    by_venue: NDArray[np.float64]

    def like_for_like_change(self, lag: int = 1) -> tuple[NDArray[np.float64], NDArray[np.float64]]:
        """``(change, base)`` per bucket against ``lag`` buckets before, over the venues that
        contributed to both (module docstring); NaN for the first ``lag`` buckets and where no
        venue contributed to both."""
        change = np.full(self.total.shape, np.nan)
        base = np.full(self.total.shape, np.nan)
        if lag < 1 or lag >= self.total.size:
            return change, base
        now, then = self.by_venue[lag:], self.by_venue[:-lag]
        both = np.isfinite(now) & np.isfinite(then)
        common = both.any(axis=1)
        then_sum = np.where(both, then, 0.0).sum(axis=1)
        change[lag:] = np.where(common, np.where(both, now, 0.0).sum(axis=1) - then_sum, np.nan)
        base[lag:] = np.where(common, then_sum, np.nan)
        return change, base

    def change_pct(self, window_s: int, bucket_s: int) -> NDArray[np.float64]:
        """Like-for-like percent change over ``window_s`` (a whole number of buckets); NaN where
        the common venues' base is not positive."""
        change, base = self.like_for_like_change(window_s // bucket_s)
        with np.errstate(invalid="ignore", divide="ignore"):
            return np.where(base > 0, change / base * 100.0, np.nan)

    def change_pct_columns(self, bucket_s: int, windows: dict[str, int] = OI_CHANGE_WINDOWS
                           ) -> dict[str, NDArray[np.float64]]:
        """:func:`oi_change_columns` for a cross-venue total, like for like."""
        return {f"oi_change_pct_{name}": self.change_pct(w, bucket_s) for name, w in windows.items()}


def cross_venue_total(
    ts: ArrayLike, venue: ArrayLike, values: ArrayLike, *, bucket_s: int, max_stale_buckets: int = 1
) -> CrossVenueTotal:
    """Sum of per-venue latest values per bucket, from long rows ``(ts, venue, value)``."""
    ts_arr = np.asarray(ts, dtype=np.float64)
    venue_arr = np.asarray(venue)
    vals = np.asarray(values, dtype=np.float64)
    if ts_arr.size == 0:
        return CrossVenueTotal(np.empty(0, np.int64), np.empty(0), np.empty(0, np.int64), np.empty((0, 0)))
    first = int(np.floor(ts_arr.min() / bucket_s))
    last = int(np.floor(ts_arr.max() / bucket_s))
    grid = np.arange(first, last + 1, dtype=np.int64) * bucket_s
    names, venue_code = np.unique(venue_arr, return_inverse=True)

    latest = np.full((grid.size, names.size), np.nan)
    for code in range(names.size):
        rows = venue_code == code
        starts, last_vals = resample_last(ts_arr[rows], vals[rows], bucket_s)
        latest[(starts - grid[0]) // bucket_s, code] = last_vals

    # Forward fill with a staleness limit: row index of the latest observation at or before each row.
    row = np.arange(grid.size)[:, None]
    seen_row = np.maximum.accumulate(np.where(np.isfinite(latest), row, -1), axis=0)
    usable = (seen_row >= 0) & (row - seen_row <= max_stale_buckets)
    filled = np.where(usable, np.take_along_axis(latest, np.maximum(seen_row, 0), axis=0), 0.0)
    n_venues = usable.sum(axis=1)
    return CrossVenueTotal(
        bucket_start=grid,
        total=np.where(n_venues > 0, filled.sum(axis=1), np.nan),
        n_venues=n_venues.astype(np.int64),
        by_venue=np.where(usable, filled, np.nan),
    )
