"""analytics.liquidations_1m and analytics.liquidation_cascades (analytics.md §6.3)."""

import datetime as dt
from dataclasses import replace

import dagster as dg
import numpy as np
import pyarrow as pa

from dagster_project.assets.microstructure_common import (
    PartitionChecks,
    arrow_rows,
    daily_asset,
    days_of,
    epoch,
    fetch,
    groups,
    partition_days,
    preview,
    replace_day,
    shade,
    timestamps,
)
from dagster_project.assets.microstructure_depth import BOOK_DEPTH, snapshot_depths
from dagster_project.assets.microstructure_derivatives import FUNDING, OPEN_INTEREST
from dagster_project.charts import png_markdown, table_preview
from dagster_project.resources import WarehouseResource
from dagster_project.units_check import UNITS_CHECK, units_check_result
from transforms.cascades import (
    CascadeConfig,
    CascadeThresholds,
    detect_cascades,
    thresholds_for,
)
from transforms.depth import BANDS
from transforms.open_interest import asof_values
from warehouse.units import UNIT_JOIN, unconvertible_rows

LIQUIDATIONS_1M = ["analytics", "liquidations_1m"]
LIQUIDATION_CASCADES = ["analytics", "liquidation_cascades"]
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

LIQUIDATION_CHECKS = {
    "non_empty_where_feed_up": "Every exchange/symbol/minute with a convertible forced order has a row.",
    "values_in_range": "Notional and quantities >= 0, at least one order per row.",
    "no_duplicate_keys": "One row per (exchange, symbol, minute).",
    **UNITS_CHECK,
}


@daily_asset(
    LIQUIDATIONS_1M, LIQUIDATION_CHECKS,
    deps=[dg.AssetKey(["raw", "liquidations"]), dg.AssetKey(["raw", "instruments"])],
    description="Liquidated notional per exchange, symbol and minute, split by the liquidated side (a forced SELL "
                "closes a long). `*_qty` in base units, `*_usd` at the fill price coalesce(avg_price, price); sizes "
                "in contracts convert with the market's instrument (warehouse.units): linear qty × contract size, "
                "USD = base × price; inverse USD = qty × USD per contract exactly, base = USD / price. Orders that "
                "cannot be converted are left out and counted by the `units_convertible` check. Only "
                "minutes with at least one forced order have a row. `is_lower_bound` where the venue samples its "
                "stream (Binance forceOrder: the latest liquidation per symbol per second), so the totals are lower "
                "bounds.",
)
def liquidations_1m(context: dg.AssetExecutionContext, warehouse: WarehouseResource):
    days = partition_days(context)
    with warehouse.get().writer() as con:
        for start, end in days:
            rows = con.sql(LIQUIDATIONS_1M_SELECT, params={"start": start, "end": end}).to_arrow_table()
            replace_day(con, "liquidations_1m", start, [rows])
        checks = PartitionChecks(con, "liquidations_1m", days)
        results = [
            checks.covers_feed("SELECT DISTINCT exchange, symbol, time_bucket(INTERVAL 1 MINUTE, ts_exchange) "
                               f"AS minute FROM ({FORCED_ORDERS})",
                               "SELECT exchange, symbol, minute FROM analytics.liquidations_1m WHERE day BETWEEN "
                               "$first AND $last", "exchange, symbol, minute"),
            checks.violations("values_in_range", "long_usd < 0 OR short_usd < 0 OR long_qty < 0 OR short_qty < 0 "
                                                 "OR n_long + n_short < 1"),
            checks.no_duplicates("exchange, symbol, minute"),
            units_check_result(unconvertible_rows(con, "liquidations", days[0][0], days[-1][1])),
        ]
        rows = checks.rows()
        shown = preview(con, "liquidations_1m", days, ["exchange", "symbol", "minute", "long_usd", "short_usd",
                                                       "n_long", "n_short", "is_lower_bound"],
                        "long_usd + short_usd DESC")
    warehouse.publish_replica_if_due()
    yield dg.MaterializeResult(metadata={"dagster/row_count": rows, "largest_minutes": table_preview(*shown)})
    yield from results


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
    keys, depth = snapshot_depths(con, _naive(lo), _naive(hi) + dt.timedelta(milliseconds=1), asset=asset)
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


def _naive(seconds: float) -> dt.datetime:
    return dt.datetime.fromtimestamp(seconds, dt.UTC).replace(tzinfo=None)


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
    price = _series(con, "SELECT epoch(ts_exchange), price FROM raw.trades WHERE split_part(symbol, '-', 1) = $asset "
                         "AND ts_exchange >= $lo AND ts_exchange < $end AND coalesce(trade_type, 'MARKET') = 'MARKET' "
                         "ORDER BY 1", window)
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
                                           "hawkes_mu", "hawkes_beta", "hawkes_lambda_max")},
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


CASCADE_CHECKS = {
    "values_in_range": "usd >= threshold, 0 <= long_share <= 1, start <= end, impact >= 0, the move is in the "
                       "liquidation direction, depth ratios >= 0.",
    "no_duplicate_keys": "One row per (asset, side, cascade_start).",
    **UNITS_CHECK,
}


@daily_asset(
    LIQUIDATION_CASCADES, CASCADE_CHECKS,
    deps=[dg.AssetKey(["raw", "liquidations"]), dg.AssetKey(["raw", "instruments"]), dg.AssetKey(["raw", "trades"]),
          dg.AssetKey(BOOK_DEPTH), dg.AssetKey(OPEN_INTEREST), dg.AssetKey(FUNDING)],
    description="Liquidation cascades per base asset across venues (analytics.md §6.3; transforms.cascades): forced "
                "orders of one liquidated side (USD as in liquidations_1m, contracts converted; orders that cannot "
                "be converted are counted by `units_convertible`) clustered with gaps <= 60 s; a cluster is a "
                "cascade when its notional "
                ">= max(U_min, 20 × median liquidated USD per minute over the previous 30 days, zero minutes included "
                "from when the feed was up) and the price moved >= p in the liquidation direction (BTC $10M / 1 %, "
                "ETH $5M / 1.5 %, SOL $2M / 2 %, others $1M / 3 %; U_min is a tenth on days when all of the asset's "
                "forced orders come from sampled feeds such as Binance's, which showed 1-10 % of the true notional "
                "in the simulator's cascades). Price = trade prints of all venues (off-book "
                "prints excluded); start price = last print at or before the start. depth_ratio_{2,1}pct = lowest "
                "2 %/1 % depth during the cascade / median over the hour before, from the once-a-second periodic "
                "books (Σ markets of the asset); depth_median_ratio_2pct takes the median during instead of the "
                "minimum, which does not depend on the instant each second was sampled. OI change from "
                "the cross-venue total in coins (USD OI also moves with the price); funding = OI-weighted 8 h rate "
                "before and after; Hawkes branching ratio fitted on the side's orders over the hour before and "
                "during. A cascade belongs to the day it starts in and uses data up to the day's end only "
                "(`open_at_day_end` if it could have continued). Totals from sampled feeds are lower bounds.",
)
def liquidation_cascades(context: dg.AssetExecutionContext, warehouse: WarehouseResource):
    days = partition_days(context)
    with warehouse.get().writer() as con:
        for start, end in days:
            replace_day(con, "liquidation_cascades", start, cascade_rows(con, start, end))
        checks = PartitionChecks(con, "liquidation_cascades", days)
        results = [
            checks.violations("values_in_range", "usd < threshold_usd OR long_share < 0 OR long_share > 1 "
                              "OR cascade_start > cascade_end OR impact_bps_per_musd < 0 OR depth_ratio_2pct < 0 "
                              "OR depth_ratio_1pct < 0 OR depth_median_ratio_2pct < 0 "
                              "OR (side = 'long' AND price_move_bps > 0) OR (side = 'short' AND price_move_bps < 0)"),
            checks.no_duplicates("asset, side, cascade_start"),
            units_check_result(unconvertible_rows(con, "liquidations", days[0][0], days[-1][1])),
        ]
        rows = checks.rows()
        shown = preview(con, "liquidation_cascades", days, ["asset", "side", "cascade_start", "cascade_end", "usd",
                                                            "price_move_bps", "impact_bps_per_musd", "depth_ratio_2pct",
                                                            "oi_change_pct", "hawkes_n"], "cascade_start, asset")
        window = [days[0][0], days[-1][1]]
        minutes = con.execute("SELECT minute, sum(long_usd), sum(short_usd) FROM analytics.liquidations_1m "
                              "WHERE minute >= ? AND minute < ? GROUP BY minute ORDER BY minute", window).fetchall()
        spans = con.execute("SELECT cascade_start, cascade_end FROM analytics.liquidation_cascades "
                            "WHERE cascade_start >= ? AND cascade_start < ?", window).fetchall()
    metadata = {"dagster/row_count": rows, "preview": table_preview(*shown)}
    if minutes:
        metadata["liquidations_with_cascades"] = png_markdown(
            lambda ax: _plot_liquidations(ax, minutes, spans),
            f"liquidated USD per minute (longs down, shorts up), cascades shaded, {days[0][0]:%Y-%m-%d}")
    warehouse.publish_replica_if_due()
    yield dg.MaterializeResult(metadata=metadata)
    yield from results


def _plot_liquidations(ax, minutes, spans) -> None:
    xs = [m[0] for m in minutes]
    width = 1 / 1440
    ax.bar(xs, [-m[1] / 1e6 for m in minutes], width=width, color="tab:red", label="longs liquidated")
    ax.bar(xs, [m[2] / 1e6 for m in minutes], width=width, color="tab:green", label="shorts liquidated")
    shade(ax, [(s, e + dt.timedelta(minutes=1)) for s, e in spans], "tab:orange")
    ax.set_ylabel("$M", fontsize=7)
    ax.legend(fontsize=6)
