"""analytics.liquidations_1m and analytics.liquidation_cascades (analytics.md §6.3)."""

import datetime as dt
from dataclasses import replace

import numpy as np
import pyarrow as pa

from transforms.cascades import (
    CascadeConfig,
    CascadeThresholds,
    detect_cascades,
    thresholds_for,
)
from transforms.depth import BANDS
from transforms.open_interest import asof_values
from warehouse.analytics.common import arrow_rows, days_of, epoch, fetch, groups, naive, timestamps
from warehouse.analytics.depth import snapshot_depths
from warehouse.analytics.ohlcv import MARKET_TRADES
from warehouse.units import UNIT_JOIN

BASELINE_DAYS = 30
SAMPLED_FLOOR_SHARE = 0.1

# A forced order loaded twice is one order: Binance's stream has no order id, so the whole
# event is the key (two distinct liquidations identical to the millisecond are not plausible).
# Sizes in base units and USD at the fill price (warehouse.units); orders whose size cannot be
# converted are left out here and counted by the units check.
FORCED_ORDERS = f"""
SELECT DISTINCT exchange, symbol, split_part(symbol, '-', 1) AS asset, r.ts_exchange, r.liquidated_position,
       raw.base_qty(r.qty, coalesce(r.avg_price, r.price), r.qty_unit, unit.contract_size,
                    unit.contract_size_unit) AS qty,
       raw.usd_notional(r.qty, coalesce(r.avg_price, r.price), r.qty_unit, unit.contract_size,
                        unit.contract_size_unit) AS usd,
       r.is_sampled
FROM raw.liquidations AS r {UNIT_JOIN}
WHERE r.ts_exchange >= $start AND r.ts_exchange < $end
  AND raw.qty_multiplier(r.qty_unit, unit.contract_size, unit.contract_size_unit) IS NOT NULL
"""

# Sums in a fixed order: a parallel float sum differs in the last bits from run to run, and a
# rewritten partition (and its Parquet export) should be identical to the bit.
LIQUIDATIONS_1M_SELECT = f"""
SELECT exchange, symbol, asset, time_bucket(INTERVAL 1 MINUTE, ts_exchange) AS minute,
       coalesce(sum(usd ORDER BY ts_exchange, usd) FILTER (WHERE liquidated_position = 'long'), 0) AS long_usd,
       coalesce(sum(usd ORDER BY ts_exchange, usd) FILTER (WHERE liquidated_position = 'short'), 0) AS short_usd,
       coalesce(sum(qty ORDER BY ts_exchange, qty) FILTER (WHERE liquidated_position = 'long'), 0) AS long_qty,
       coalesce(sum(qty ORDER BY ts_exchange, qty) FILTER (WHERE liquidated_position = 'short'), 0) AS short_qty,
       count(*) FILTER (WHERE liquidated_position = 'long') AS n_long,
       count(*) FILTER (WHERE liquidated_position = 'short') AS n_short,
       bool_or(is_sampled) AS is_lower_bound,
       CAST(time_bucket(INTERVAL 1 MINUTE, ts_exchange) AS DATE) AS day
FROM ({FORCED_ORDERS})
GROUP BY ALL
"""


# --- cascades -----------------------------------------------------------------------------------

def _series(con, sql: str, params: dict) -> tuple[np.ndarray, ...]:
    data = fetch(con, sql, params)
    return tuple(column.astype(np.float64) for column in data.values())


def cascade_rows(con, start: dt.datetime, end: dt.datetime) -> list[pa.Table]:
    """Cascades of every asset that start in [start, end), from data up to ``end`` only."""
    lo = start - dt.timedelta(days=BASELINE_DAYS)
    orders = fetch(con, f"SELECT asset, exchange, epoch(ts_exchange) AS ts, liquidated_position AS side, usd, "
                        f"is_sampled FROM ({FORCED_ORDERS}) ORDER BY ALL", {"start": lo, "end": end})
    day_start, day_end = epoch(start), epoch(end)
    active = sorted(set(orders["asset"][orders["ts"] >= day_start]))
    parts = []
    for asset in active:
        mine = orders["asset"] == asset
        ts, side, usd = orders["ts"][mine], orders["side"][mine], orders["usd"][mine]
        config = CascadeConfig(baseline_start=_feed_start(con, asset, lo, end))
        today = orders["ts"][mine] >= day_start
        thresholds = cascade_thresholds(asset, sampled=bool(np.all(orders["is_sampled"][mine][today])))
        cascades = [c for c in detect_cascades(ts, side, usd, config=config, thresholds=thresholds,
                                               **_cascade_inputs(con, asset, start, end))
                    if day_start <= c.start < day_end]
        if cascades:
            ratios = [depth_ratios(*_second_depth(con, asset, c.start - config.depth_baseline_s, c.end), c.start,
                                   c.end) for c in cascades]
            columns = ("depth_ratio_2pct", "depth_ratio_1pct", "depth_median_ratio_2pct")
            parts.append(_cascade_table(asset, cascades, dict(zip(columns, zip(*ratios, strict=True), strict=True)),
                                        ts, side, orders["exchange"][mine], orders["is_sampled"][mine], day_end))
    return parts


def cascade_thresholds(asset: str, *, sampled: bool) -> CascadeThresholds:
    """analytics.md §6.3 thresholds; on a day when every forced order of the asset came from a
    sampled feed the notional floor U_min is a tenth. Binance publishes one order per symbol per
    second, only its filled part: in the simulator's cascades that showed 1-10 % of the true
    notional, so a $60M BTC cascade arrived as $6M and the spec's $10M floor would never see it.
    The relative test (20 × the baseline minute) needs no change: the baseline is sampled too."""
    spec = thresholds_for(asset)
    return replace(spec, min_usd=spec.min_usd * SAMPLED_FLOOR_SHARE) if sampled else spec


def _second_depth(con, asset: str, lo: float, hi: float) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(ts, 2 % USD depth, 1 % USD depth) at every periodic snapshot of the asset in [lo, hi],
    summed over its markets: each market's latest valid book at most 2 s old, NaN if one has none."""
    keys, depth = snapshot_depths(con, naive(lo), naive(hi) + dt.timedelta(milliseconds=1), asset=asset)
    if depth is None:
        return np.empty(0), np.empty(0), np.empty(0)
    ts = keys["ts_ms"] / 1000.0
    grid = np.unique(ts)
    totals = np.zeros((grid.size, 2))
    for _, rows in groups(keys["exchange"], keys["symbol"]):
        rows = rows[np.argsort(ts[rows], kind="stable")]
        for k, band in enumerate((BANDS.index(0.02), BANDS.index(0.01))):
            usd = depth.bid_usd[rows, band] + depth.ask_usd[rows, band]
            totals[:, k] += asof_values(grid, ts[rows], usd, tolerance_s=2.0)
    return grid, totals[:, 0], totals[:, 1]


def depth_ratios(ts: np.ndarray, depth_2: np.ndarray, depth_1: np.ndarray, start: float,
                 end: float) -> tuple[float, float, float]:
    """analytics.md §6.3 on the once-a-second books: lowest 2 % and 1 % depth during [start, end]
    over the median of the hour before, and the median 2 % depth during over the same median. The
    minimum is one instant, so it depends on when each second happens to be sampled (on the
    simulator up to ~15 % off a truth sampled half a second apart); the median does not."""
    during, before = (ts >= start) & (ts <= end), ts < start
    out = []
    for depth, typical in ((depth_2, False), (depth_1, False), (depth_2, True)):
        now, then = depth[during & np.isfinite(depth)], depth[before & np.isfinite(depth)]
        if not now.size or not then.size or np.median(then) <= 0:
            out.append(float("nan"))
        else:
            out.append(float((np.median(now) if typical else now.min()) / np.median(then)))
    return out[0], out[1], out[2]


def _feed_start(con, asset: str, lo: dt.datetime, end: dt.datetime) -> float:
    """When the asset's liquidation feed was first up in the baseline window. Binance sends
    forceOrder on the same market connection as markPrice@1s, so the first mark-price update marks
    it; minutes after it without a liquidation then count as zeros in the baseline median."""
    first = con.execute("SELECT min(ts_exchange) FROM raw.funding WHERE split_part(symbol, '-', 1) = $asset "
                        "AND ts_exchange >= $lo AND ts_exchange < $end", {"asset": asset, "lo": lo, "end": end}
                        ).fetchone()[0]
    return epoch(max(first or lo, lo))


def _cascade_inputs(con, asset: str, start: dt.datetime, end: dt.datetime) -> dict:
    """Price, spread, OI and funding series for ``detect_cascades``, each timestamped when it was
    known: trades at their time, per-minute and per-bucket aggregates at the end of their interval."""
    window = {"asset": asset, "lo": start - dt.timedelta(hours=2), "end": end}
    price = _series(con, "SELECT epoch(ts_exchange), price FROM raw.trades AS r WHERE split_part(symbol, '-', 1) = "
                         f"$asset AND ts_exchange >= $lo AND ts_exchange < $end AND {MARKET_TRADES} ORDER BY 1", window)
    spread = _series(con, "SELECT epoch(minute) + 60, max(spread_bps_max) FROM analytics.book_depth "
                          "WHERE split_part(symbol, '-', 1) = $asset AND minute >= $lo AND minute < $end "
                          "GROUP BY minute ORDER BY 1", window)
    oi = _series(con, "SELECT epoch(bucket_start) + 300, open_interest FROM analytics.open_interest "
                      "WHERE exchange = 'all' AND symbol = $asset AND grain = '5m' AND bucket_start >= $lo "
                      "AND bucket_start < $end ORDER BY 1", window)
    funding = _series(con, "SELECT epoch(minute) + 60, rate_8h FROM analytics.funding WHERE exchange = 'all' "
                           "AND symbol = $asset AND minute >= $lo AND minute < $end ORDER BY 1", window)
    return {"price": price, "spread_bps": spread, "open_interest": oi, "funding": funding}


def _cascade_table(asset: str, cascades, ratios: dict, ts, side, exchange, is_sampled,
                   day_end: float) -> pa.Table:
    venues, lower_bound = [], []
    for c in cascades:
        inside = (ts >= c.start) & (ts <= c.end) & (side == c.side)
        venues.append(",".join(sorted(set(exchange[inside]))))
        lower_bound.append(bool(np.any(is_sampled[inside].astype(bool))))
    column = lambda name: np.array([getattr(c, name) for c in cascades], dtype=np.float64)  # noqa: E731
    n = len(cascades)
    starts, ends = column("start"), column("end")
    return arrow_rows({
        "asset": [asset] * n, "side": [c.side for c in cascades],
        "cascade_start": timestamps(starts), "cascade_end": timestamps(ends),
        **{name: column(name) for name in ("duration_s", "usd", "usd_long", "usd_short", "long_share", "peak_1m_usd",
                                           "baseline_1m_usd", "threshold_usd", "start_price", "extreme_price",
                                           "price_move_bps", "impact_bps_per_musd", "spread_peak_bps",
                                           "oi_change_pct", "hawkes_n",
                                           "hawkes_mu", "hawkes_beta", "hawkes_lambda_max",
                                           "hawkes_endogenous_share", "hawkes_baseline_bin_s")},
        **{name: np.array(values, dtype=np.float64) for name, values in ratios.items()},
        "n_orders": column("n_orders").astype(np.int32),
        "oi_start": column("oi_start"), "oi_end": column("oi_end"),
        "funding_before_8h": column("funding_before"), "funding_after_8h": column("funding_after"),
        "hawkes_at_bound": [c.hawkes_at_bound for c in cascades], "hawkes_reason": [c.hawkes_reason for c in cascades],
        "venues": venues, "is_lower_bound": lower_bound,
        # Another order within the clustering gap after midnight would have extended the cluster.
        "open_at_day_end": ends + CascadeConfig().gap_s >= day_end,
        "day": days_of(starts),
    })


# Feed keys liquidations_1m must cover: every minute with a convertible forced order.
FORCED_ORDER_MINUTES = ("SELECT DISTINCT exchange, symbol, time_bucket(INTERVAL 1 MINUTE, ts_exchange) AS minute "
                        f"FROM ({FORCED_ORDERS})")

# Pictures: liquidated USD per minute by side, and the cascades that start in [$start, $end).
LIQUIDATED_PER_MINUTE = """
SELECT minute, sum(long_usd), sum(short_usd) FROM analytics.liquidations_1m
WHERE minute >= $start AND minute < $end GROUP BY minute ORDER BY minute
"""
CASCADE_SPANS = """
SELECT cascade_start, cascade_end FROM analytics.liquidation_cascades
WHERE cascade_start >= $start AND cascade_start < $end
"""
