"""Basis, premium and cross-venue price dislocation (analytics.md §9.2).

Definitions
-----------
* ``premium = mark / index - 1`` per venue from the venue's own pair (Binance ``p``/``i``, Bybit
  ``markPrice``/``indexPrice``, OKX ``mark-price``/``idxPx``, Hyperliquid ``markPx``/``oraclePx``),
  a fraction (bps = x 1e4). dYdX publishes only an oracle price: its ``trade_premium`` is the same
  formula on last trade / oracle. Where mark and index arrive as separate messages (OKX),
  :func:`premium_asof` pairs each mark with the index as of its time, at most ``tolerance_s`` older.
* Binance-parity basis: ``basis = futures_price - index``, ``basis_rate = basis / index``
  (``/futures/data/basis``); dated futures annualise ``basis_rate * 365 / days_to_expiry`` with
  ``days = (expiry - t) / 86400``. Perpetuals have no expiry: ``premium_ann = premium_twap_1h * 8760``
  (an hourly-persisting premium expressed per year [assumption in the spec]); funding is annualised
  separately (``transforms.funding``).
* TWAP (:func:`twap`): the samples as a step function, each sample holding until the next one but
  for at most ``max_hold_s`` (a feed that stops does not stretch its last value over the hour)
  and never past the end of the window read (``end_s``);
  a bucket's TWAP is the time-weighted mean over the part of it the samples cover, and
  ``coverage`` (0..1) says how much that is, so a half-covered hour is visible as such. 1-minute
  TWAP of 1-s samples, hourly TWAP for annualisation.
* Dislocation (:func:`price_dislocation`): each venue's price (mid) against the median of the
  venues' prices in the same minute, ``(price / median - 1) * 1e4`` bps. A venue without a price in
  a minute is absent from that minute (not zero, not carried); with fewer than two venues in the
  minute there is nothing to be dislocated from, so the dislocation is NaN and ``n_venues`` says why.

Timestamps are epoch seconds.
"""

from __future__ import annotations

from typing import NamedTuple

import numpy as np
from numpy.typing import ArrayLike, NDArray

from transforms.open_interest import asof_values

DAY_S = 86_400
HOURS_PER_YEAR = 8_760
DAYS_PER_YEAR = 365


def premium(mark: ArrayLike, index: ArrayLike) -> NDArray[np.float64]:
    """``mark / index - 1`` (fraction); NaN where the index is not a positive finite price."""
    mark_arr = np.asarray(mark, dtype=np.float64)
    index_arr = np.asarray(index, dtype=np.float64)
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(np.isfinite(index_arr) & (index_arr > 0), mark_arr / index_arr - 1.0, np.nan)


def premium_asof(mark_ts: ArrayLike, mark: ArrayLike, index_ts: ArrayLike, index: ArrayLike, *,
                 tolerance_s: float = 2.0) -> NDArray[np.float64]:
    """Premium of each mark against the index as of the mark's time (at most ``tolerance_s`` older;
    NaN otherwise). ``index_ts`` sorted ascending."""
    paired = asof_values(mark_ts, index_ts, index, tolerance_s=tolerance_s)
    return premium(mark, paired)


class Basis(NamedTuple):
    basis: NDArray[np.float64]
    basis_rate: NDArray[np.float64]


def basis(futures_price: ArrayLike, index: ArrayLike) -> Basis:
    """Binance's ``basis = futures - index`` and ``basis_rate = basis / index``."""
    futures_arr = np.asarray(futures_price, dtype=np.float64)
    index_arr = np.asarray(index, dtype=np.float64)
    diff = futures_arr - index_arr
    with np.errstate(invalid="ignore", divide="ignore"):
        return Basis(basis=diff, basis_rate=np.where(index_arr > 0, diff / index_arr, np.nan))


def annualized_basis_rate(basis_rate: ArrayLike, ts: ArrayLike, expiry_ts: ArrayLike) -> NDArray[np.float64]:
    """Dated futures: ``basis_rate * 365 / days_to_expiry``; NaN at or after expiry."""
    days = (np.asarray(expiry_ts, dtype=np.float64) - np.asarray(ts, dtype=np.float64)) / DAY_S
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(days > 0, np.asarray(basis_rate, dtype=np.float64) * DAYS_PER_YEAR / days, np.nan)


def premium_annualized(premium_twap_1h: ArrayLike) -> NDArray[np.float64]:
    """Perpetuals: an hourly TWAP premium expressed per year, ``x 8760``."""
    return np.asarray(premium_twap_1h, dtype=np.float64) * HOURS_PER_YEAR


class Twap(NamedTuple):
    bucket_start: NDArray[np.int64]
    twap: NDArray[np.float64]
    coverage: NDArray[np.float64]


def twap(ts: ArrayLike, values: ArrayLike, bucket_s: int, *, max_hold_s: float, end_s: float = np.inf) -> Twap:
    """Time-weighted average per bucket of one series of samples (see the module docstring).

    ``ts`` sorted ascending; non-finite values are dropped (the previous sample holds across them,
    up to ``max_hold_s``). No sample holds past ``end_s``: pass the end of the window the samples
    were read for, so the last one does not spill into a bucket after it. Buckets the samples do
    not reach at all are left out."""
    t = np.asarray(ts, dtype=np.float64)
    v = np.asarray(values, dtype=np.float64)
    if t.shape != v.shape or t.ndim != 1:
        raise ValueError("ts and values must be 1-D and of one length")
    if np.any(np.diff(t) < 0):
        raise ValueError("ts must be sorted ascending")
    if not max_hold_s > 0:
        raise ValueError("max_hold_s must be positive: how long one sample stands for its series")
    keep = np.isfinite(t) & np.isfinite(v)
    t, v = t[keep], v[keep]
    if t.size == 0:
        return Twap(np.empty(0, np.int64), np.empty(0), np.empty(0))
    keep = t < end_s
    t, v = t[keep], v[keep]
    if t.size == 0:
        return Twap(np.empty(0, np.int64), np.empty(0), np.empty(0))
    end = np.minimum(np.minimum(np.r_[t[1:], np.inf], t + max_hold_s), end_s)
    first = int(np.floor(t[0] / bucket_s))
    last = int(np.floor(end.max() / bucket_s))
    edges = np.arange(first, last + 2, dtype=np.float64) * bucket_s

    # Integral of the step function and of its support up to each bucket edge.
    held = end - t
    before_area, before_time = np.r_[0.0, np.cumsum(v * held)], np.r_[0.0, np.cumsum(held)]
    i = np.searchsorted(t, edges, side="right") - 1
    inside = np.clip(edges - t[np.maximum(i, 0)], 0.0, held[np.maximum(i, 0)])
    area = np.where(i >= 0, before_area[np.maximum(i, 0)] + v[np.maximum(i, 0)] * inside, 0.0)
    covered = np.where(i >= 0, before_time[np.maximum(i, 0)] + inside, 0.0)
    bucket_area, bucket_time = np.diff(area), np.diff(covered)
    present = bucket_time > 0
    with np.errstate(invalid="ignore", divide="ignore"):
        mean = bucket_area / bucket_time
    return Twap(bucket_start=(edges[:-1][present]).astype(np.int64), twap=mean[present],
                coverage=bucket_time[present] / bucket_s)


class Dislocation(NamedTuple):
    median_price: NDArray[np.float64]
    dislocation_bps: NDArray[np.float64]
    n_venues: NDArray[np.int64]


def price_dislocation(minute: ArrayLike, venue: ArrayLike, price: ArrayLike) -> Dislocation:
    """Per input row (one venue's price in one minute): the median of the venues' prices in that
    minute, the row's dislocation from it in bps and how many venues the minute has. Rows with a
    non-finite or non-positive price are not prices: NaN, and not counted. A venue twice in one
    minute is an error (reduce each venue to one price per minute first)."""
    minute_arr = np.asarray(minute, dtype=np.int64)
    venue_arr = np.asarray(venue, dtype=object)
    price_arr = np.asarray(price, dtype=np.float64)
    ok = np.isfinite(price_arr) & (price_arr > 0)
    pairs = list(zip(minute_arr[ok].tolist(), venue_arr[ok].tolist(), strict=True))
    if len(set(pairs)) != len(pairs):
        raise ValueError("a venue has more than one price in a minute; pass one (e.g. the minute's last mid)")
    n = price_arr.size
    median, count = np.full(n, np.nan), np.zeros(n, np.int64)
    rows = np.flatnonzero(ok)
    if rows.size:
        order = rows[np.lexsort((price_arr[rows], minute_arr[rows]))]
        sorted_minutes, sorted_prices = minute_arr[order], price_arr[order]
        starts = np.flatnonzero(np.r_[True, sorted_minutes[1:] != sorted_minutes[:-1]])
        counts = np.diff(np.r_[starts, order.size])
        medians = (sorted_prices[starts + (counts - 1) // 2] + sorted_prices[starts + counts // 2]) / 2.0
        group = np.repeat(np.arange(starts.size), counts)
        median[order], count[order] = medians[group], counts[group]
    with np.errstate(invalid="ignore", divide="ignore"):
        bps = np.where(count >= 2, (price_arr / median - 1.0) * 1e4, np.nan)
    return Dislocation(median_price=np.where(count >= 2, median, np.nan), dislocation_bps=bps, n_venues=count)
