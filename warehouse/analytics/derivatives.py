"""analytics.open_interest and analytics.funding: OI in coins and USD with CoinGlass-style change
percentages and cross-venue totals; funding normalised to 8 h, annualised and OI-weighted."""

import datetime as dt

import numpy as np
import pyarrow as pa

from transforms.depth import aggregate_buckets
from transforms.funding import annualize_8h, oi_weighted_funding_8h, to_8h
from transforms.open_interest import (
    asof_values,
    cross_venue_total,
    oi_change_columns,
    open_interest_value,
)
from warehouse.analytics.common import DAY, arrow_rows, asset_of, days_of, epoch, fetch, groups, timestamps
from warehouse.units import UNIT_JOIN

BUCKET_S = 300
MARK_TOLERANCE = dt.timedelta(minutes=5)
# How stale an OI weight may be when a funding minute is weighted (two 5-minute buckets).
WEIGHT_TOLERANCE_S = 600.0

# Open-interest observations in [$start, $end) whose size converts (warehouse.units), with what
# one unit of it is worth; the others are counted by the units check.
CONVERTIBLE_OI = f"""
SELECT r.exchange, r.symbol, r.ts_exchange, r.open_interest, r.open_interest_usd, r.open_interest_short,
       raw.qty_multiplier(r.qty_unit, unit.contract_size, unit.contract_size_unit) AS qty_multiplier,
       raw.qty_is_inverse(r.qty_unit, unit.contract_size_unit) AS inverse
FROM raw.open_interest AS r {UNIT_JOIN}
WHERE r.ts_exchange >= $start AND r.ts_exchange < $end
  AND raw.qty_multiplier(r.qty_unit, unit.contract_size, unit.contract_size_unit) IS NOT NULL
"""

# Open interest with the mark price as of each observation (at most MARK_TOLERANCE older). A venue
# that pushes no mark price beside its OI (OKX: funding-rate carries none) but publishes the OI's USD
# value gives the price that value implies for linear contracts.
OI_OBSERVATIONS = f"""
WITH oi AS ({CONVERTIBLE_OI}), mark AS (
    SELECT exchange, symbol, ts_exchange, mark_price FROM raw.funding
    WHERE mark_price IS NOT NULL AND ts_exchange >= $start - $tolerance AND ts_exchange < $end
)
SELECT oi.exchange, oi.symbol, epoch(oi.ts_exchange) AS ts, oi.open_interest, oi.open_interest_short,
       oi.qty_multiplier, oi.inverse,
       coalesce(CASE WHEN oi.ts_exchange - mark.ts_exchange <= $tolerance THEN mark.mark_price END,
                CASE WHEN NOT oi.inverse THEN oi.open_interest_usd / nullif(oi.open_interest * oi.qty_multiplier, 0) END)
           AS mark_price
FROM oi ASOF LEFT JOIN mark
  ON oi.exchange = mark.exchange AND oi.symbol = mark.symbol AND oi.ts_exchange >= mark.ts_exchange
ORDER BY oi.exchange, oi.symbol, ts
"""


def _change_columns(coin: dict[str, np.ndarray], usd: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """The coin changes as named, the USD ones as ``oi_usd_change_pct_*``."""
    return {**coin, **{name.replace("oi_", "oi_usd_", 1): values for name, values in usd.items()}}


def _grain_rows(keys: dict, bucket: np.ndarray, values: dict[str, np.ndarray], start: float,
                end: float) -> list[pa.Table]:
    """The 5-minute rows in [start, end) and the hourly ones: each hour is its last 5-minute row
    (CoinGlass 'close'), so an hourly row's change columns equal that 5-minute row's."""
    hour = bucket // 3600
    last_of_hour = np.r_[hour[1:] != hour[:-1], True]
    parts = []
    for grain, rows, label in (("5m", np.ones(bucket.size, bool), bucket), ("1h", last_of_hour, hour * 3600)):
        keep = rows & (label >= start) & (label < end)
        n = int(keep.sum())
        if n:
            parts.append(arrow_rows({**{k: [v] * n for k, v in keys.items()}, "grain": [grain] * n,
                                     "bucket_start": timestamps(label[keep]),
                                     **{k: v[keep] for k, v in values.items()}, "day": days_of(label[keep])}))
    return parts


def open_interest_rows(con, start: dt.datetime, end: dt.datetime) -> list[pa.Table]:
    # 24 h change needs the bucket a day back; the cross-venue carry-forward one more bucket.
    lo = start - DAY - dt.timedelta(seconds=2 * BUCKET_S)
    data = fetch(con, OI_OBSERVATIONS, {"start": lo, "end": end, "tolerance": MARK_TOLERANCE})
    day_start, day_end = epoch(start), epoch(end)
    parts, venues = [], []
    for (exchange, symbol), rows in groups(data["exchange"], data["symbol"]):
        mark = data["mark_price"][rows].astype(np.float64)
        oi = open_interest_value(data["open_interest"][rows].astype(np.float64), mark,
                                 contract_size=data["qty_multiplier"][rows].astype(np.float64),
                                 inverse=data["inverse"][rows].astype(bool))
        agg = aggregate_buckets(data["ts"][rows], np.column_stack([oi.coin, oi.usd, mark]), BUCKET_S)
        bucket = agg.bucket_start
        coin, usd, last_mark = agg.last.T
        venues.append((asset_of(symbol), exchange, symbol, bucket, coin, usd))
        parts += _grain_rows({"exchange": exchange, "symbol": symbol, "asset": asset_of(symbol)}, bucket,
                             {"open_interest": coin, "open_interest_usd": usd, "mark_price": last_mark,
                              "n_venues": np.ones(bucket.size, np.int32),
                              **_change_columns(oi_change_columns(bucket, coin), oi_change_columns(bucket, usd))},
                             day_start, day_end)
    for asset in sorted({v[0] for v in venues}):
        mine = [v for v in venues if v[0] == asset]
        ts = np.concatenate([v[3] for v in mine])
        market = np.concatenate([np.full(v[3].size, f"{v[1]}|{v[2]}") for v in mine])
        coin = cross_venue_total(ts, market, np.concatenate([v[4] for v in mine]), bucket_s=BUCKET_S)
        usd = cross_venue_total(ts, market, np.concatenate([v[5] for v in mine]), bucket_s=BUCKET_S)
        values = {"open_interest": coin.total, "open_interest_usd": usd.total,
                  "mark_price": np.full(coin.total.size, np.nan), "n_venues": coin.n_venues.astype(np.int32),
                  **_change_columns(coin.change_pct_columns(BUCKET_S), usd.change_pct_columns(BUCKET_S))}
        # Changes are taken on the full grid; buckets no market reported (a feed outage) get no row.
        present = coin.n_venues > 0
        parts += _grain_rows({"exchange": "all", "symbol": asset, "asset": asset}, coin.bucket_start[present],
                             {name: column[present] for name, column in values.items()}, day_start, day_end)
    return parts


# --- funding ------------------------------------------------------------------------------------

FUNDING_MINUTES = """
SELECT exchange, symbol, epoch(time_bucket(INTERVAL 1 MINUTE, ts_exchange)) AS minute,
       arg_max(rate, ts_exchange) AS rate, arg_max(interval_hours, ts_exchange) AS interval_hours,
       arg_max(mark_price, ts_exchange) AS mark_price, arg_max(index_price, ts_exchange) AS index_price,
       arg_max(is_realised, ts_exchange) AS is_realised
FROM raw.funding WHERE ts_exchange >= $start AND ts_exchange < $end
  AND rate IS NOT NULL   -- delivery contracts: mark price only, no funding to average
GROUP BY ALL ORDER BY exchange, symbol, minute
"""

# OI weights: a 5-minute bucket's last value is known at the bucket's end.
OI_WEIGHTS = """
SELECT exchange, symbol, epoch(bucket_start) + 300 AS known_at, open_interest_usd
FROM analytics.open_interest
WHERE grain = '5m' AND exchange <> 'all' AND bucket_start >= $lo AND bucket_start < $end
ORDER BY exchange, symbol, known_at
"""


def funding_rows(con, start: dt.datetime, end: dt.datetime) -> list[pa.Table]:
    data = fetch(con, FUNDING_MINUTES, {"start": start, "end": end})
    weights = fetch(con, OI_WEIGHTS, {"lo": start - dt.timedelta(minutes=15), "end": end})
    weight_rows = dict(groups(weights["exchange"], weights["symbol"]))
    parts, markets = [], []
    for (exchange, symbol), rows in groups(data["exchange"], data["symbol"]):
        minute = data["minute"][rows]
        rate, interval = data["rate"][rows].astype(np.float64), data["interval_hours"][rows].astype(np.float64)
        w = weight_rows.get((exchange, symbol), np.empty(0, np.int64))
        # The weight of a minute is the OI known when the minute closes.
        oi_usd = asof_values(minute + 60, weights["known_at"][w], weights["open_interest_usd"][w].astype(np.float64),
                             tolerance_s=WEIGHT_TOLERANCE_S)
        rate_8h = to_8h(rate, interval)
        markets.append((asset_of(symbol), minute, rate, interval, oi_usd))
        parts.append(arrow_rows({
            "exchange": [exchange] * minute.size, "symbol": [symbol] * minute.size,
            "asset": [asset_of(symbol)] * minute.size, "minute": timestamps(minute), "funding_rate": rate,
            "interval_hours": interval, "rate_8h": rate_8h, "rate_annualized": annualize_8h(rate_8h),
            "mark_price": data["mark_price"][rows].astype(np.float64),
            "index_price": data["index_price"][rows].astype(np.float64),
            "is_realised": data["is_realised"][rows].astype(bool), "oi_usd": oi_usd,
            "n_venues": np.ones(minute.size, np.int32), "day": days_of(minute),
        }))
    for asset in sorted({m[0] for m in markets}):
        mine = [m for m in markets if m[0] == asset]
        grid = np.unique(np.concatenate([m[1] for m in mine]))
        shape = (grid.size, len(mine))
        rate, interval, oi_usd = np.full(shape, np.nan), np.full(shape, 8.0), np.full(shape, np.nan)
        for j, (_, minute, r, i, w) in enumerate(mine):
            at = np.searchsorted(grid, minute)
            rate[at, j], interval[at, j], oi_usd[at, j] = r, i, w
        used = np.isfinite(rate) & np.isfinite(oi_usd) & (oi_usd > 0)
        weighted = oi_weighted_funding_8h(rate, oi_usd, interval)
        # Minutes without any OI weight (the OI feed was down) get no cross-venue row.
        keep = used.any(axis=1)
        n = int(keep.sum())
        parts.append(arrow_rows({
            "exchange": ["all"] * n, "symbol": [asset] * n, "asset": [asset] * n, "minute": timestamps(grid[keep]),
            "funding_rate": np.full(n, np.nan), "interval_hours": np.full(n, 8.0), "rate_8h": weighted[keep],
            "rate_annualized": annualize_8h(weighted[keep]), "oi_usd": np.where(used, oi_usd, 0.0).sum(axis=1)[keep],
            "n_venues": used.sum(axis=1)[keep].astype(np.int32), "day": days_of(grid[keep]),
        }))
    return parts


# Feed keys the tables must cover: 5-minute buckets with a convertible OI observation, minutes
# with a published funding rate.
OI_BUCKETS = ("SELECT DISTINCT exchange, symbol, time_bucket(INTERVAL 5 MINUTE, ts_exchange) AS bucket_start "
              f"FROM ({CONVERTIBLE_OI})")
FUNDING_RATE_MINUTES = ("SELECT DISTINCT exchange, symbol, time_bucket(INTERVAL 1 MINUTE, ts_exchange) AS minute "
                        "FROM raw.funding WHERE ts_exchange >= $start AND ts_exchange < $end AND rate IS NOT NULL")

# Pictures: cross-venue USD open interest with the price it implies, annualized funding in %.
OI_AND_PRICE_SERIES = """
SELECT symbol, bucket_start, open_interest_usd, open_interest_usd / open_interest AS price
FROM analytics.open_interest WHERE exchange = 'all' AND grain = '5m' AND day >= $start AND day < $end ORDER BY 1, 2
"""
FUNDING_ANNUALIZED_PCT_SERIES = """
SELECT exchange || ' ' || symbol, minute, rate_annualized * 100 FROM analytics.funding
WHERE day >= $start AND day < $end ORDER BY 1, 2
"""
