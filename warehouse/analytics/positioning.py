"""analytics.aggregated_open_interest, aggregated_funding, taker_volume, basis and slippage
(issue 11; analytics.md §3, §7, §9.1-9.3, §9.5): the rows of each UTC day, computed by
``transforms.positioning``, ``taker_flow``, ``basis`` and ``slippage`` from the raw feed and
``analytics.book_depth``."""

from __future__ import annotations

import datetime as dt
from collections import deque
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import pyarrow as pa

from ingest.venues import forced_trade_types
from transforms.basis import premium, premium_annualized, price_dislocation, twap
from transforms.depth import aggregate_buckets
from transforms.open_interest import asof_values
from transforms.positioning import GRAINS, funding_by_venue, oi_observations, open_interest_by_venue
from transforms.slippage import ORDER_SIZES_USD, size_label, slippage_batch
from transforms.taker_flow import (
    aggregate_flow,
    cumulative_volume_delta,
    reconcile_taker_volume,
    resample_flow,
    taker_flow_sql,
)
from warehouse.analytics.common import arrow_rows, asset_of, days_of, epoch, fetch, groups, timestamps
from warehouse.analytics.depth import (
    QUOTE_USD_RATE,
    SNAPSHOTS,
    SNAPSHOTS_PER_BATCH,
    book_side,
    distinct_snapshots,
)
from warehouse.analytics.derivatives import MARK_TOLERANCE, OI_OBSERVATIONS
from warehouse.units import UNIT_JOIN

# The previous hourly bucket (the first hour's change) and one more carried forward.
OI_LOOKBACK = dt.timedelta(hours=2)


def _oi_observations(con, start: dt.datetime, end: dt.datetime) -> dict[str, np.ndarray] | None:
    data = fetch(con, OI_OBSERVATIONS, {"start": start - OI_LOOKBACK, "end": end, "tolerance": MARK_TOLERANCE})
    return oi_observations(data) if data["exchange"].size else None


def _in_window(columns: dict[str, np.ndarray], start: dt.datetime, end: dt.datetime, **fixed) -> pa.Table:
    """Rows whose ``bucket_start`` lies in [start, end), the bucket as a TIMESTAMP and its day."""
    bucket = columns["bucket_start"]
    keep = (bucket >= epoch(start)) & (bucket < epoch(end))
    n = int(keep.sum())
    out = {name: [value] * n for name, value in fixed.items()}
    out.update({name: values[keep] for name, values in columns.items() if name != "bucket_start"})
    out["bucket_start"] = timestamps(bucket[keep])
    out["day"] = days_of(bucket[keep])
    return arrow_rows(out)


def aggregated_open_interest_rows(con, start: dt.datetime, end: dt.datetime) -> list[pa.Table]:
    observations = _oi_observations(con, start, end)
    if observations is None:
        return []
    return [_in_window(open_interest_by_venue(observations, bucket_s=bucket_s), start, end, grain=grain)
            for grain, bucket_s in GRAINS.items()]


FUNDING_RATES = """
SELECT exchange AS venue, symbol AS market, epoch(ts_exchange) AS ts, rate, interval_hours,
       coalesce(is_realised, FALSE) AS is_realised
FROM raw.funding WHERE ts_exchange >= $start AND ts_exchange < $end AND rate IS NOT NULL
ORDER BY venue, market, ts
"""


def aggregated_funding_rows(con, start: dt.datetime, end: dt.datetime) -> list[pa.Table]:
    rates = fetch(con, FUNDING_RATES, {"start": start, "end": end})
    if not rates["venue"].size:
        return []
    rates["asset"] = np.array([asset_of(m) for m in rates["market"]], object)
    observations = _oi_observations(con, start, end)
    weights = ({"ts": np.empty(0), "venue": np.empty(0, object), "market": np.empty(0, object), "usd": np.empty(0)}
               if observations is None else
               {name: observations[name] for name in ("ts", "venue", "market", "usd")})
    parts = []
    for realised in (False, True):   # estimates and settled rates are separate series (§9.3)
        mine = rates["is_realised"].astype(bool) == realised
        if not mine.any():
            continue
        kind = {name: values[mine] for name, values in rates.items()}
        for grain, bucket_s in GRAINS.items():
            parts.append(_in_window(funding_by_venue(kind, weights, bucket_s=bucket_s), start, end,
                                    is_realised=realised, grain=grain))
    return parts


# --- taker volume -------------------------------------------------------------------------------

TAKER_BUCKET_S = 300


def _with_cvd(columns: dict[str, np.ndarray], series: list[np.ndarray]) -> dict[str, np.ndarray]:
    """CVD with and without the forced fills, anchored at each series' first bucket of the day."""
    cvd, cvd_ex = np.zeros(columns["bucket_start"].size), np.zeros(columns["bucket_start"].size)
    for _, rows in groups(*series):
        rows = rows[np.argsort(columns["bucket_start"][rows])]
        cvd[rows] = cumulative_volume_delta(columns["bucket_start"][rows], columns["delta_usd"][rows])
        cvd_ex[rows] = cumulative_volume_delta(columns["bucket_start"][rows], columns["delta_ex_forced_usd"][rows])
    return {**columns, "cvd_usd": cvd, "cvd_ex_forced_usd": cvd_ex}


def _counts(columns: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    return {**columns, **{name: np.asarray(columns[name]).astype(np.int64)
                          for name in ("n_buy", "n_sell", "n_forced", "n_unknown_side")}}


# A venue's own 5-minute taker volumes in base units (linear contracts convert without a price;
# inverse ones would need one and stay unreconciled), one row per period.
VENUE_TAKER_VOLUMES = f"""
SELECT r.exchange, r.symbol, CAST(epoch(r.ts_exchange) AS BIGINT) AS bucket_start,
       raw.base_qty(r.buy_qty, NULL, r.qty_unit, unit.contract_size, unit.contract_size_unit) AS buy_base,
       raw.base_qty(r.sell_qty, NULL, r.qty_unit, unit.contract_size, unit.contract_size_unit) AS sell_base
FROM raw.taker_volumes AS r {UNIT_JOIN}
WHERE r.period = '5m' AND r.ts_exchange >= $start AND r.ts_exchange < $end
QUALIFY row_number() OVER (PARTITION BY r.exchange, r.symbol, r.ts_exchange
                           ORDER BY r.kafka_partition, r.kafka_offset) = 1
"""


# Per market, the first and last trade of ours from one bucket before the window to one after: a
# venue period is comparable only if our feed ran across all of it (trades on both sides of it), so
# the period in which ingestion started or stopped is not read as trades lost.
OBSERVED_SPANS = f"""
SELECT exchange, symbol, CAST(epoch(min(ts_exchange)) AS DOUBLE) AS first_s,
       CAST(epoch(max(ts_exchange)) AS DOUBLE) AS last_s
FROM raw.trades
WHERE ts_exchange >= $start - INTERVAL {TAKER_BUCKET_S} SECOND AND ts_exchange < $end + INTERVAL {TAKER_BUCKET_S} SECOND
GROUP BY exchange, symbol
"""


# The venue periods we can compare with: convertible to base units, and inside what our feed observed.
COMPARABLE_VENUE_TAKER_VOLUMES = f"""
SELECT v.* FROM ({VENUE_TAKER_VOLUMES}) AS v
JOIN ({OBSERVED_SPANS}) AS span ON span.exchange = v.exchange AND span.symbol = v.symbol
     AND span.first_s <= v.bucket_start AND span.last_s >= v.bucket_start + {TAKER_BUCKET_S}
WHERE isfinite(v.buy_base) AND isfinite(v.sell_base)
"""


def _reconcile(con, start: dt.datetime, end: dt.datetime, per_market: dict[str, np.ndarray]) -> None:
    """Our per-market buckets against the venue's own taker volumes, where the venue publishes them
    (base units on both sides) and our feed observed the whole period; other rows stay
    ``reconciled`` False."""
    n = per_market["bucket_start"].size
    per_market["reconciled"] = np.zeros(n, bool)
    per_market["reconcile_flagged"] = np.full(n, None, object)
    for name in ("venue_buy_volume", "venue_sell_volume", "rel_diff_buy", "rel_diff_sell"):
        per_market[name] = np.full(n, np.nan)
    venue = fetch(con, COMPARABLE_VENUE_TAKER_VOLUMES, {"start": start, "end": end})
    ours_by_market = dict(groups(per_market["exchange"], per_market["symbol"]))
    for market, rows in groups(venue["exchange"], venue["symbol"]):
        mine = ours_by_market.get(market)
        if mine is None:
            continue
        found = reconcile_taker_volume(per_market["bucket_start"][mine], per_market["taker_buy_base"][mine],
                                       per_market["taker_sell_base"][mine], venue["bucket_start"][rows],
                                       venue["buy_base"][rows].astype(np.float64),
                                       venue["sell_base"][rows].astype(np.float64))
        at = dict(zip(per_market["bucket_start"][mine].tolist(), mine.tolist(), strict=True))
        for i, bucket in enumerate(found["bucket_start"].tolist()):
            if bucket not in at:   # a venue period without any trade of ours: counted by the asset's check
                continue
            row = at[bucket]
            per_market["reconciled"][row] = True
            per_market["reconcile_flagged"][row] = bool(found["flagged"][i])
            per_market["venue_buy_volume"][row], per_market["venue_sell_volume"][row] = \
                found["venue_buy"][i], found["venue_sell"][i]
            per_market["rel_diff_buy"][row], per_market["rel_diff_sell"][row] = \
                found["rel_diff_buy"][i], found["rel_diff_sell"][i]


def taker_volume_rows(con, start: dt.datetime, end: dt.datetime) -> list[pa.Table]:
    """5-minute taker flow per market, reconciled against the venue's own 5-minute taker volumes
    where ``raw.taker_volumes`` has them, and summed per asset across venues."""
    flow = fetch(con, taker_flow_sql(forced_trade_types()), {"start": start, "end": end})
    if not flow["exchange"].size:
        return []
    per_market = resample_flow(flow, TAKER_BUCKET_S)
    per_market = _with_cvd(_counts(per_market), [per_market["exchange"], per_market["symbol"]])
    per_market["n_venues"] = np.ones(per_market["bucket_start"].size, np.int32)
    per_asset = aggregate_flow(per_market, time_column="bucket_start")
    per_asset = _with_cvd(_counts(per_asset), [per_asset["asset"]])
    per_asset["n_venues"] = per_asset["n_venues"].astype(np.int32)
    per_asset["exchange"] = np.full(per_asset["asset"].size, "all", object)
    per_asset["symbol"] = per_asset["asset"]
    per_asset["reconciled"] = np.zeros(per_asset["asset"].size, bool)
    _reconcile(con, start, end, per_market)
    return [_in_window(columns, start, end) for columns in (per_market, per_asset)]


# Venue periods of the run in base units, inside what our feed observed, with no 5-minute row of
# ours: trades we never received.
UNMATCHED_VENUE_PERIODS = f"""
SELECT count(*) FROM ({COMPARABLE_VENUE_TAKER_VOLUMES}) AS v
WHERE (v.buy_base > 0 OR v.sell_base > 0) AND NOT EXISTS (
    SELECT 1 FROM analytics.taker_volume AS t
    WHERE t.exchange = v.exchange AND t.symbol = v.symbol AND epoch(t.bucket_start) = v.bucket_start)
"""


# --- basis --------------------------------------------------------------------------------------

# A premium sample stands for its market at most this long (mark streams push every 1-5 s).
PREMIUM_HOLD_S = 60.0
INDEX_TOLERANCE_S = 2.0

MARK_AND_INDEX = """
SELECT exchange, symbol, epoch(ts_exchange) AS ts, mark_price, index_price
FROM raw.funding WHERE ts_exchange >= $start AND ts_exchange < $end
  AND (mark_price IS NOT NULL OR index_price IS NOT NULL)
ORDER BY exchange, symbol, ts
"""

BOOK_MIDS = """
SELECT exchange, symbol, CAST(epoch(minute) AS BIGINT) AS minute, mid_last AS mid FROM analytics.book_depth
WHERE minute >= $start AND minute < $end AND mid_last IS NOT NULL
"""


def _premium_minutes(con, start: dt.datetime, end: dt.datetime) -> pa.Table | None:
    data = fetch(con, MARK_AND_INDEX, {"start": start, "end": end})
    parts = []
    for (exchange, symbol), rows in groups(data["exchange"], data["symbol"]):
        ts = data["ts"][rows].astype(np.float64)
        mark, index = data["mark_price"][rows].astype(np.float64), data["index_price"][rows].astype(np.float64)
        has_mark, has_index = np.isfinite(mark), np.isfinite(index)
        if not has_mark.any() or not has_index.any():
            continue   # a venue publishing no mark (dYdX) or no index has no premium
        mark_ts, mark = ts[has_mark], mark[has_mark]
        # Venues pushing mark and index in separate messages (OKX) pair each mark with the index as of it.
        index_at_mark = asof_values(mark_ts, ts[has_index], index[has_index], tolerance_s=INDEX_TOLERANCE_S)
        paired = premium(mark, index_at_mark)
        last = aggregate_buckets(mark_ts, np.column_stack([mark, index_at_mark, paired])).last
        minute = aggregate_buckets(mark_ts, mark).bucket_start
        mean = twap(mark_ts, paired, 60, max_hold_s=PREMIUM_HOLD_S, end_s=epoch(end))
        at = np.searchsorted(mean.bucket_start, minute)
        found = np.r_[mean.bucket_start, -1][at] == minute
        premium_twap = np.where(found, np.r_[mean.twap, np.nan][at], np.nan)
        parts.append(arrow_rows({
            "exchange": [exchange] * minute.size, "symbol": [symbol] * minute.size, "minute_s": minute,
            "mark_price": last[:, 0], "index_price": last[:, 1], "premium": last[:, 2], "premium_twap": premium_twap,
            "premium_coverage": np.where(found, np.r_[mean.coverage, np.nan][at], np.nan),
            "basis_annualized": premium_annualized(premium_twap),
        }))
    return pa.concat_tables(parts) if parts else None


def _dislocation_minutes(con, start: dt.datetime, end: dt.datetime) -> pa.Table | None:
    mids = fetch(con, BOOK_MIDS, {"start": start, "end": end})
    if not mids["exchange"].size:
        return None
    asset = np.array([asset_of(s) for s in mids["symbol"]], object)
    minute = mids["minute"].astype(np.int64)
    median, bps, count = np.full(minute.size, np.nan), np.full(minute.size, np.nan), np.zeros(minute.size, np.int64)
    for _, rows in groups(asset):
        # Each market is a participant: a venue listing BTC against USDT and USDC has two prices.
        market = np.char.add(np.char.add(mids["exchange"][rows].astype(str), "|"), mids["symbol"][rows].astype(str))
        d = price_dislocation(minute[rows], market, mids["mid"][rows].astype(np.float64))
        median[rows], bps[rows], count[rows] = d.median_price, d.dislocation_bps, d.n_venues
    return arrow_rows({"exchange": mids["exchange"], "symbol": mids["symbol"], "minute_s": minute,
                       "mid_price": mids["mid"].astype(np.float64), "median_mid": median, "dislocation_bps": bps,
                       "n_markets_priced": count.astype(np.int32)})


def basis_rows(con, start: dt.datetime, end: dt.datetime) -> list[pa.Table]:
    """Per market and minute: the venue's premium and annualized basis, and its mid against the
    median of the asset's markets (either half NULL where the market has no such data)."""
    premiums, dislocations = _premium_minutes(con, start, end), _dislocation_minutes(con, start, end)
    if premiums is None and dislocations is None:
        return []
    if premiums is None or dislocations is None:
        joined = premiums if dislocations is None else dislocations
    else:
        joined = premiums.join(dislocations, ["exchange", "symbol", "minute_s"], join_type="full outer")
    minute = joined.column("minute_s").to_numpy()
    symbols = joined.column("symbol").to_pylist()
    return [joined.drop_columns(["minute_s"]).append_column("minute", timestamps(minute))
            .append_column("asset", pa.array([asset_of(s) for s in symbols]))
            .append_column("day", days_of(minute))]


# --- slippage -----------------------------------------------------------------------------------

SIZE_LABELS = tuple(size_label(size) for size in ORDER_SIZES_USD)


def _batch_slippage(batch: pa.RecordBatch) -> tuple[dict[str, np.ndarray], dict[str, np.ndarray]]:
    keys = {name: batch.column(name).to_numpy(zero_copy_only=False) for name in ("exchange", "symbol", "ts_ms", "seq")}
    bids, asks = book_side(batch.column("bids")), book_side(batch.column("asks"))
    walked = slippage_batch(*bids, *asks, quote_usd_rate=QUOTE_USD_RATE,
                            contract_size=batch.column("qty_multiplier").to_numpy(zero_copy_only=False),
                            inverse=batch.column("inverse").to_numpy(zero_copy_only=False))
    return keys, walked.columns()


def _snapshot_slippage(con, start: dt.datetime, end: dt.datetime) -> tuple[dict[str, np.ndarray], dict] | None:
    reader = con.sql(SNAPSHOTS, params={"start": start, "end": end, "asset": None}).to_arrow_reader(
        SNAPSHOTS_PER_BATCH)
    done, pending = [], deque()
    with ThreadPoolExecutor(max_workers=1) as pool:   # DuckDB decodes the next batch meanwhile
        for batch in reader:
            pending.append(pool.submit(_batch_slippage, batch))
            if len(pending) > 2:   # bounds the decoded-but-unwalked batches held in memory
                done.append(pending.popleft().result())
        done += [future.result() for future in pending]
    if not done:
        return None
    keys = {name: np.concatenate([k[name] for k, _ in done]) for name in done[0][0]}
    columns = {name: np.concatenate([c[name] for _, c in done]) for name in done[0][1]}
    return keys, columns


def slippage_rows(con, start: dt.datetime, end: dt.datetime) -> list[pa.Table]:
    """Per market and minute, the mean slippage of each order size over the minute's valid books;
    NULL with ``*_too_shallow_*`` where any of them could not fill the order (the mean of the
    others would understate the cost), ``*_book_truncated_*`` where a walk reached the last level."""
    found = _snapshot_slippage(con, start, end)
    if found is None:
        return []
    keys, columns = found
    slip = [f"{side}_slippage_bps_{label}" for label in SIZE_LABELS for side in ("ask", "bid")]
    flags = [f"{side}_{flag}_{label}" for label in SIZE_LABELS for side in ("ask", "bid")
             for flag in ("too_shallow", "book_truncated")]
    parts = []
    for (exchange, symbol), rows in groups(keys["exchange"], keys["symbol"]):
        rows = distinct_snapshots(keys, rows)
        ts = keys["ts_ms"][rows] / 1000.0
        values = np.column_stack([columns["mid"][rows], *(columns[c][rows] for c in slip),
                                  *(columns[c][rows].astype(np.float64) for c in flags)])
        agg = aggregate_buckets(ts, values)
        n = agg.bucket_start.size
        out = {"exchange": [exchange] * n, "symbol": [symbol] * n, "asset": [asset_of(symbol)] * n,
               "minute": timestamps(agg.bucket_start), "n_snapshots": agg.n_rows.astype(np.int32),
               "n_valid": agg.n_valid[:, 0].astype(np.int32), "mid_mean": agg.mean[:, 0]}
        flagged = {c: agg.mean[:, 1 + len(slip) + j] > 0 for j, c in enumerate(flags)}
        for j, c in enumerate(slip):
            side, label = c.split("_", 1)[0], c.rsplit("_", 1)[-1]
            out[c] = np.where(flagged[f"{side}_too_shallow_{label}"], np.nan, agg.mean[:, 1 + j])
        out.update(flagged)
        out["day"] = days_of(agg.bucket_start)
        parts.append(arrow_rows(out))
    return parts


# The walk takes a book's sums as differences of running totals over a whole batch of books: a
# few 1e-5 bps of float noise, far below any real difference between two order sizes.
SLIPPAGE_TOLERANCE_BPS = 1e-3


def slippage_monotone_violation() -> str:
    """Rows where a larger order costs less than a smaller one on the same side (both measured)."""
    return " OR ".join(f"{side}_slippage_bps_{a} > {side}_slippage_bps_{b} + {SLIPPAGE_TOLERANCE_BPS}"
                       for side in ("ask", "bid") for a, b in zip(SIZE_LABELS, SIZE_LABELS[1:], strict=False))


def shallow_but_measured() -> str:
    """Rows that report a slippage for an order the book could not fill."""
    return " OR ".join(f"({side}_too_shallow_{label} AND {side}_slippage_bps_{label} IS NOT NULL)"
                       for side in ("ask", "bid") for label in SIZE_LABELS)


# Checks: cross-venue rows against the sum of their venue rows.
OI_TOTAL_MISMATCH = """
SELECT count(*) FROM analytics.aggregated_open_interest AS t
JOIN (SELECT asset, pool_counterparty, grain, bucket_start, sum(oi_usd) AS usd, sum(oi_coin) AS coin,
             sum(n_markets) AS markets
      FROM analytics.aggregated_open_interest WHERE venue <> 'all' AND day >= $start AND day < $end GROUP BY ALL) AS v
  USING (asset, pool_counterparty, grain, bucket_start)
WHERE t.venue = 'all' AND t.day >= $start AND t.day < $end
  AND (abs(t.oi_usd - v.usd) > 1e-9 * greatest(abs(v.usd), 1)
       OR abs(t.oi_coin - v.coin) > 1e-9 * greatest(abs(v.coin), 1)
       OR t.n_markets <> v.markets)
"""

TAKER_TOTAL_MISMATCH = """
SELECT count(*) FROM analytics.taker_volume AS t
JOIN (SELECT asset, bucket_start, sum(taker_buy_usd) AS buy, sum(taker_sell_usd) AS sell,
             sum(forced_buy_usd + forced_sell_usd) AS forced, count(DISTINCT exchange) AS venues
      FROM analytics.taker_volume WHERE exchange <> 'all' AND day >= $start AND day < $end GROUP BY ALL) AS v
  USING (asset, bucket_start)
WHERE t.exchange = 'all' AND t.day >= $start AND t.day < $end
  AND (abs(t.taker_buy_usd - v.buy) > 1e-9 * greatest(v.buy, 1)
       OR abs(t.taker_sell_usd - v.sell) > 1e-9 * greatest(v.sell, 1)
       OR abs(t.forced_buy_usd + t.forced_sell_usd - v.forced) > 1e-9 * greatest(v.forced, 1))
"""

# Feed keys: 5-minute buckets with a convertible trade, minutes with a mark price and an index.
TRADE_BUCKETS = """
SELECT DISTINCT r.exchange, r.symbol, time_bucket(INTERVAL 5 MINUTE, r.ts_exchange) AS bucket_start
FROM raw.trades AS r LEFT JOIN raw.instrument_units AS unit USING (exchange, symbol)
WHERE r.ts_exchange >= $start AND r.ts_exchange < $end
  AND raw.qty_multiplier(r.qty_unit, unit.contract_size, unit.contract_size_unit) IS NOT NULL
"""

# Pictures: the asset with the largest one-sided OI of the run, its OI by venue and its funding.
TOP_ASSET = """
SELECT asset FROM analytics.aggregated_open_interest
WHERE venue = 'all' AND NOT pool_counterparty AND grain = '5m' AND day >= $start AND day < $end
GROUP BY asset ORDER BY max(oi_usd) DESC LIMIT 1
"""
OI_BY_VENUE_SERIES = """
SELECT venue, bucket_start, oi_usd FROM analytics.aggregated_open_interest
WHERE asset = $asset AND venue <> 'all' AND NOT pool_counterparty AND grain = '5m' AND day >= $start AND day < $end
ORDER BY 1, 2
"""
FUNDING_SERIES = """
SELECT CASE WHEN venue = 'all' THEN 'OI-weighted' ELSE venue END, bucket_start, rate_annualized * 100
FROM analytics.aggregated_funding
WHERE asset = $asset AND NOT is_realised AND grain = '5m' AND day >= $start AND day < $end ORDER BY 1, 2
"""


def slippage_curve_sql() -> str:
    """Per market and side, the day's mean slippage of each order size (label, size USD, bps)."""
    arms = [f"SELECT exchange || ' ' || symbol || ' {'buy' if side == 'ask' else 'sell'}' AS label, "
            f"CAST({size!r} AS DOUBLE) AS size_usd, "
            f"avg({side}_slippage_bps_{label}) AS bps FROM analytics.slippage WHERE day >= $start AND day < $end "
            "GROUP BY ALL"
            for size, label in zip(ORDER_SIZES_USD, SIZE_LABELS, strict=True) for side in ("ask", "bid")]
    return " UNION ALL ".join(arms) + " ORDER BY label, size_usd"
