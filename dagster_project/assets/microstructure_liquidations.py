"""analytics.liquidations_1m and analytics.liquidation_cascades (analytics.md §6.3). Rows and SQL:
``warehouse/analytics/liquidations.py``."""

import dagster as dg

from dagster_project.assets.microstructure_depth import BOOK_DEPTH
from dagster_project.assets.microstructure_derivatives import FUNDING, OPEN_INTEREST
from dagster_project.tables import (
    MICROSTRUCTURE,
    Picture,
    TableRun,
    covers_feed,
    no_duplicates,
    no_violations,
    table_asset,
    units_convertible,
)
from transforms import figures
from warehouse.analytics import liquidations

LIQUIDATIONS_1M = ["analytics", "liquidations_1m"]
LIQUIDATION_CASCADES = ["analytics", "liquidation_cascades"]


@table_asset(
    MICROSTRUCTURE, "liquidations_1m",
    deps=[dg.AssetKey(["raw", "liquidations"]), dg.AssetKey(["raw", "instruments"])],
    checks=[
        covers_feed("Every exchange/symbol/minute with a convertible forced order has a row.",
                    liquidations.FORCED_ORDER_MINUTES, "exchange, symbol, minute"),
        no_violations("values_in_range", "Notional and quantities >= 0, at least one order per row.",
                      "long_usd < 0 OR short_usd < 0 OR long_qty < 0 OR short_qty < 0 OR n_long + n_short < 1"),
        no_duplicates("exchange, symbol, minute", description="One row per (exchange, symbol, minute)."),
        units_convertible("liquidations"),
    ],
    description="Liquidated notional per exchange, symbol and minute, split by the liquidated side (a forced SELL "
                "closes a long). `*_qty` in base units, `*_usd` at the fill price coalesce(avg_price, price); sizes "
                "in contracts convert with the market's instrument (warehouse.units): linear qty × contract size, "
                "USD = base × price; inverse USD = qty × USD per contract exactly, base = USD / price. Orders that "
                "cannot be converted are left out and counted by the `units_convertible` check. Only "
                "minutes with at least one forced order have a row. `is_lower_bound` where the venue samples its "
                "stream (Binance forceOrder: the latest liquidation per symbol per second), so the totals are lower "
                "bounds.",
)
def liquidations_1m(run: TableRun) -> dict:
    run.rewrite_each_day(lambda start, end: liquidations.LIQUIDATIONS_1M_SELECT)
    return {"largest_minutes": run.preview(["exchange", "symbol", "minute", "long_usd", "short_usd", "n_long",
                                            "n_short", "is_lower_bound"], "long_usd + short_usd DESC")}


@table_asset(
    MICROSTRUCTURE, "liquidation_cascades",
    deps=[dg.AssetKey(["raw", "liquidations"]), dg.AssetKey(["raw", "instruments"]), dg.AssetKey(["raw", "trades"]),
          dg.AssetKey(BOOK_DEPTH), dg.AssetKey(OPEN_INTEREST), dg.AssetKey(FUNDING)],
    checks=[
        no_violations("values_in_range", "usd >= threshold, 0 <= long_share <= 1, start <= end, impact >= 0, the move "
                                         "is in the liquidation direction, depth ratios >= 0.",
                      "usd < threshold_usd OR long_share < 0 OR long_share > 1 OR cascade_start > cascade_end "
                      "OR impact_bps_per_musd < 0 OR depth_ratio_2pct < 0 OR depth_ratio_1pct < 0 "
                      "OR depth_median_ratio_2pct < 0 "
                      "OR (side = 'long' AND price_move_bps > 0) OR (side = 'short' AND price_move_bps < 0)"),
        no_duplicates("asset, side, cascade_start", description="One row per (asset, side, cascade_start)."),
        units_convertible("liquidations"),
    ],
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
def liquidation_cascades(run: TableRun) -> dict:
    run.rewrite_each_day(lambda start, end: liquidations.cascade_rows(run.con, start, end))
    metadata = {"preview": run.preview(["asset", "side", "cascade_start", "cascade_end", "usd", "price_move_bps",
                                        "impact_bps_per_musd", "depth_ratio_2pct", "oi_change_pct", "hawkes_n"],
                                       "cascade_start, asset")}
    minutes = run.query(liquidations.LIQUIDATED_PER_MINUTE)
    if minutes:
        title = f"liquidated USD per minute (longs down, shorts up), cascades shaded, {run.start:%Y-%m-%d}"
        metadata["liquidations_with_cascades"] = Picture(title, figures.liquidations(
            minutes, run.query(liquidations.CASCADE_SPANS), title))
    return metadata
