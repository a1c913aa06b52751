"""Taker buy and sell volume, volume delta and CVD per venue and across venues (analytics.md §9.1).

Per-minute sums (:data:`TAKER_FLOW_1M_COLUMNS`, :func:`taker_flow_sql`)
------------------------------------------------------------------------
DuckDB SQL over ``raw.trades`` for ``[$start, $end)``, one row per (exchange, symbol, minute) with
trades; minute m = [m, m + 60 s) on exchange trade time. Producer-side duplicates are removed on the
natural key first, as in ``transforms.ohlcv``. Sizes go through the warehouse's unit macros: ``*_base``
in coins, ``*_usd`` USD notional (inverse contracts: contracts x USD per contract exactly); trades
in contracts without an instrument cannot be converted and are left out (``warehouse.units``
counts them). Every trade counts, off-book prints included, and the forced fills among them are
summed apart too (``forced_*``): fills the venue forced, told by their ``trade_type`` per venue
(``ingest.venues.forced_trade_types()``: Binance ``@trade`` ``X`` INSURANCE_FUND/ADL, dYdX
LIQUIDATED/DELEVERAGED; venues whose public tape does not mark them contribute none, and neither
does Binance's ``aggTrade``, which has no ``X``: ``delta_ex_forced_usd`` is "without the forced
fills the tape identifies" and still holds those it does not mark). ``n_buy``/``n_sell``
count fills (an aggregated trade counts each fill it folds). Trades whose taker side is unknown are
in neither side and counted in ``n_unknown_side`` / ``unknown_side_usd``, so a gap between the
venue's volume and buy + sell is visible.

CVD and aggregation (numpy, column frames)
------------------------------------------
* ``delta_usd = taker_buy_usd - taker_sell_usd``; ``CVD_t = sum over anchor <= m <= t of delta``,
  anchored at the first row of the requested window (CoinGlass ``cum_vol_delta``): see
  :func:`cumulative_volume_delta`. A minute without trades has no row and adds nothing.
* :func:`resample_flow` sums minutes into wider buckets (5 minutes for reconciliation) per
  (exchange, symbol); :func:`aggregate_flow` sums venues per (asset, bucket): USD across every
  venue, coins only within one base asset, which the grouping guarantees. ``n_venues`` says how
  many venues traded in the bucket; a venue with no trade in a bucket is simply absent.
* :func:`reconcile_taker_volume` compares our bucket sums with a venue's own published 5-minute
  taker volumes (Binance ``takerlongshortRatio`` ``buyVol``/``sellVol``, OKX
  ``taker-volume-contract``), relative difference ``ours / venue - 1`` per side, flagged beyond
  the tolerance (0.5 % by default [assumption, §9.1]); a venue bucket we have no trades for is
  ours = 0, a relative difference of -1, flagged: missed trades.
"""

from __future__ import annotations

import re
from collections.abc import Collection, Mapping

import numpy as np
from numpy.typing import ArrayLike, NDArray

RECONCILE_TOLERANCE = 0.005

TAKER_FLOW_1M_COLUMNS = (
    "exchange", "symbol", "asset", "minute", "taker_buy_base", "taker_sell_base", "taker_buy_usd", "taker_sell_usd",
    "n_buy", "n_sell", "forced_buy_base", "forced_sell_base", "forced_buy_usd", "forced_sell_usd", "n_forced",
    "n_unknown_side", "unknown_side_usd", "delta_usd", "delta_ex_forced_usd",
)
# Columns that add up when minutes are summed into wider buckets or venues into a total.
SUMMED_COLUMNS = TAKER_FLOW_1M_COLUMNS[4:]

_EXCHANGE_ID = re.compile(r"[a-z0-9][a-z0-9-]*")
_TRADE_TYPE = re.compile(r"[A-Z][A-Z_]*")


def forced_fill_predicate(forced_trade_types: Mapping[str, Collection[str]]) -> str:
    """SQL boolean over ``raw.trades`` aliased ``r``: the row is a fill its venue forced."""
    terms = []
    for exchange, types in sorted(forced_trade_types.items()):
        words = sorted(types)
        if not _EXCHANGE_ID.fullmatch(exchange):
            raise ValueError(f"exchange id {exchange!r} is not a perpflow venue id (lower case, digits, '-')")
        bad = [w for w in words if not _TRADE_TYPE.fullmatch(w)]
        if bad:
            raise ValueError(f"{exchange}: forced trade types must be upper-case words, got {bad!r}")
        if words:
            listed = ", ".join(f"'{w}'" for w in words)
            terms.append(f"(r.exchange = '{exchange}' AND r.trade_type IN ({listed}))")
    return "(" + " OR ".join(terms) + ")" if terms else "FALSE"


def taker_flow_sql(forced_trade_types: Mapping[str, Collection[str]]) -> str:
    """The per-minute taker-flow query (parameters ``$start``, ``$end``; columns
    :data:`TAKER_FLOW_1M_COLUMNS`, ``minute`` in epoch seconds), forced fills per venue as given
    (``ingest.venues.forced_trade_types()``)."""
    forced = forced_fill_predicate(forced_trade_types)
    return f"""
WITH trades AS (
    SELECT r.exchange, r.symbol, r.ts_exchange, r.side,
           coalesce(r.last_trade_id - r.first_trade_id + 1, 1) AS fills,
           raw.base_qty(r.qty, r.price, r.qty_unit, unit.contract_size, unit.contract_size_unit) AS base,
           raw.usd_notional(r.qty, r.price, r.qty_unit, unit.contract_size, unit.contract_size_unit) AS usd,
           coalesce({forced}, FALSE) AS forced
    FROM raw.trades AS r LEFT JOIN raw.instrument_units AS unit USING (exchange, symbol)
    WHERE r.ts_exchange >= $start AND r.ts_exchange < $end
      AND raw.qty_multiplier(r.qty_unit, unit.contract_size, unit.contract_size_unit) IS NOT NULL
    QUALIFY row_number() OVER (PARTITION BY exchange, symbol, trade_id, is_aggregated
                               ORDER BY kafka_partition, kafka_offset) = 1
), minutes AS (
    SELECT exchange, symbol, split_part(symbol, '-', 1) AS asset,
           CAST(epoch(time_bucket(INTERVAL '1 minute', ts_exchange)) AS BIGINT) AS minute,
           coalesce(sum(base) FILTER (WHERE side = 'buy'), 0) AS taker_buy_base,
           coalesce(sum(base) FILTER (WHERE side = 'sell'), 0) AS taker_sell_base,
           coalesce(sum(usd) FILTER (WHERE side = 'buy'), 0) AS taker_buy_usd,
           coalesce(sum(usd) FILTER (WHERE side = 'sell'), 0) AS taker_sell_usd,
           coalesce(sum(fills) FILTER (WHERE side = 'buy'), 0) AS n_buy,
           coalesce(sum(fills) FILTER (WHERE side = 'sell'), 0) AS n_sell,
           coalesce(sum(base) FILTER (WHERE side = 'buy' AND forced), 0) AS forced_buy_base,
           coalesce(sum(base) FILTER (WHERE side = 'sell' AND forced), 0) AS forced_sell_base,
           coalesce(sum(usd) FILTER (WHERE side = 'buy' AND forced), 0) AS forced_buy_usd,
           coalesce(sum(usd) FILTER (WHERE side = 'sell' AND forced), 0) AS forced_sell_usd,
           coalesce(sum(fills) FILTER (WHERE forced), 0) AS n_forced,
           coalesce(sum(fills) FILTER (WHERE side NOT IN ('buy', 'sell')), 0) AS n_unknown_side,
           coalesce(sum(usd) FILTER (WHERE side NOT IN ('buy', 'sell')), 0) AS unknown_side_usd
    FROM trades GROUP BY ALL
)
SELECT *, taker_buy_usd - taker_sell_usd AS delta_usd,
       (taker_buy_usd - forced_buy_usd) - (taker_sell_usd - forced_sell_usd) AS delta_ex_forced_usd
FROM minutes ORDER BY exchange, symbol, minute
"""


def cumulative_volume_delta(bucket_start: ArrayLike, delta: ArrayLike, *,
                            anchor: float | None = None) -> NDArray[np.float64]:
    """Running sum of ``delta`` over one series' rows sorted by ``bucket_start``, from the first
    row at or after ``anchor`` (default: the first row); rows before the anchor are NaN. A NaN
    delta is an error, not a zero: the caller must decide what a hole means."""
    ts = np.asarray(bucket_start, dtype=np.float64)
    values = np.asarray(delta, dtype=np.float64)
    if ts.shape != values.shape or ts.ndim != 1:
        raise ValueError("bucket_start and delta must be 1-D and of one length")
    if np.any(np.diff(ts) <= 0):
        raise ValueError("bucket_start must be strictly increasing (one series, one row per bucket)")
    if np.isnan(values).any():
        raise ValueError("delta holds NaN: a bucket without trades has no row, not a NaN row")
    start = 0 if anchor is None else int(np.searchsorted(ts, anchor, side="left"))
    out = np.full(ts.shape, np.nan)
    out[start:] = np.cumsum(values[start:])
    return out


def _group_sum(keys: list[NDArray], frame: Mapping[str, ArrayLike], columns: tuple[str, ...]) -> tuple[list, dict]:
    """Sum ``columns`` of ``frame`` per distinct tuple of ``keys``; the groups sorted by key."""
    n = len(keys[0])
    if n == 0:
        return [np.empty(0, k.dtype) for k in keys], {c: np.empty(0) for c in columns}
    codes = []
    for key in keys:
        _, code = np.unique(key, return_inverse=True)
        codes.append(code)
    order = np.lexsort(codes[::-1])
    stacked = np.column_stack(codes)[order]
    first = np.r_[True, np.any(stacked[1:] != stacked[:-1], axis=1)]
    starts = np.flatnonzero(first)
    sums = {c: np.add.reduceat(np.asarray(frame[c], dtype=np.float64)[order], starts) for c in columns}
    return [k[order][starts] for k in keys], sums


def resample_flow(flow: Mapping[str, ArrayLike], bucket_s: int) -> dict[str, NDArray]:
    """Per-minute rows (:data:`TAKER_FLOW_1M_COLUMNS`) summed into ``bucket_s`` buckets per
    (exchange, symbol); the bucket column is ``bucket_start`` (epoch seconds)."""
    bucket = (np.asarray(flow["minute"], dtype=np.int64) // bucket_s) * bucket_s
    keys, sums = _group_sum([np.asarray(flow["exchange"], dtype=object), np.asarray(flow["symbol"], dtype=object),
                             np.asarray(flow["asset"], dtype=object), bucket], flow, SUMMED_COLUMNS)
    return {"exchange": keys[0], "symbol": keys[1], "asset": keys[2], "bucket_start": keys[3], **sums}


def aggregate_flow(flow: Mapping[str, ArrayLike], *, time_column: str = "minute") -> dict[str, NDArray]:
    """Cross-venue sums per (asset, bucket) of per-venue rows (per minute, or resampled with
    ``time_column="bucket_start"``), with ``n_venues`` the venues that traded in the bucket."""
    asset = np.asarray(flow["asset"], dtype=object)
    when = np.asarray(flow[time_column], dtype=np.int64)
    keys, sums = _group_sum([asset, when], flow, SUMMED_COLUMNS)
    pairs = sorted(set(zip(asset.tolist(), when.tolist(), np.asarray(flow["exchange"]).tolist(), strict=True)))
    venues: dict[tuple, int] = {}
    for a, t, _ in pairs:
        venues[(a, t)] = venues.get((a, t), 0) + 1
    n_venues = np.array([venues[(a, t)] for a, t in zip(keys[0].tolist(), keys[1].tolist(), strict=True)],
                        dtype=np.int64)
    return {"asset": keys[0], time_column: keys[1], "n_venues": n_venues, **sums}


def reconcile_taker_volume(ours_bucket: ArrayLike, ours_buy: ArrayLike, ours_sell: ArrayLike,
                           venue_bucket: ArrayLike, venue_buy: ArrayLike, venue_sell: ArrayLike, *,
                           tolerance: float = RECONCILE_TOLERANCE) -> dict[str, NDArray]:
    """Our bucket sums against a venue's published ones, for one market, in the same unit.

    One output row per venue bucket (the venue's figure is the reference): ``bucket_start``,
    ``venue_buy``, ``venue_sell``, ``ours_buy``, ``ours_sell`` (0 where we have no row),
    ``rel_diff_buy``/``rel_diff_sell`` = ours / venue - 1 (0 where both are 0, inf where only the
    venue's is 0) and ``flagged`` where either side's |difference| exceeds ``tolerance``. Binance
    ``buyVol``/``sellVol`` are in the base coin; OKX ``taker-volume-contract`` with ``unit=0`` in
    contracts, so compare it with contracts or convert it first."""
    ours_t = np.asarray(ours_bucket, dtype=np.int64)
    venue_t = np.asarray(venue_bucket, dtype=np.int64)
    if np.unique(ours_t).size != ours_t.size or np.unique(venue_t).size != venue_t.size:
        raise ValueError("one row per bucket expected on each side (resample per market first)")
    order = np.argsort(ours_t)
    ours_t = ours_t[order]
    ours = [np.asarray(a, dtype=np.float64)[order] for a in (ours_buy, ours_sell)]
    pos = np.searchsorted(ours_t, venue_t)
    # A sentinel past the end, so a venue bucket after our last one finds "no row".
    found = np.r_[ours_t, np.iinfo(np.int64).min][pos] == venue_t
    out: dict[str, NDArray] = {"bucket_start": venue_t}
    flagged = np.zeros(venue_t.size, bool)
    for side, ours_side, venue_side in (("buy", ours[0], venue_buy), ("sell", ours[1], venue_sell)):
        theirs = np.asarray(venue_side, dtype=np.float64)
        mine = np.where(found, np.r_[ours_side, 0.0][pos], 0.0)
        with np.errstate(invalid="ignore", divide="ignore"):
            rel = np.where(theirs != 0, mine / theirs - 1.0, np.where(mine == 0, 0.0, np.inf))
        out[f"venue_{side}"], out[f"ours_{side}"], out[f"rel_diff_{side}"] = theirs, mine, rel
        flagged |= ~(np.abs(rel) <= tolerance)
    out["flagged"] = flagged
    return out
