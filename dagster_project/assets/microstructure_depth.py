"""analytics.book_depth and analytics.liquidity_withdrawals: order-book depth bands per minute and
the episodes where 2 % depth collapses against its own trailing 24 h median. Rows and SQL:
``warehouse/analytics/depth.py``."""

import dagster as dg

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
from warehouse.analytics import depth
from warehouse.analytics.depth import TWO_PCT

BOOK_DEPTH = ["analytics", "book_depth"]
LIQUIDITY_WITHDRAWALS = ["analytics", "liquidity_withdrawals"]


@table_asset(
    MICROSTRUCTURE, "book_depth",
    deps=[dg.AssetKey(["raw", "book_snapshots"]), dg.AssetKey(["raw", "instruments"]), dg.AssetKey(["raw", "trades"])],
    checks=[
        covers_feed("Every exchange/symbol/minute with a periodic book snapshot has a row.", depth.SNAPSHOT_MINUTES,
                    "exchange, symbol, minute"),
        no_violations("depth_non_decreasing_with_band", "Base, quote and USD depth (mean, min, last) never shrink as "
                                                        "the band widens.", depth.monotone_violation()),
        no_violations("no_crossed_books", "best bid < best ask in every minute with a valid book (crossed/locked books "
                                          "are dropped).", "best_bid_last >= best_ask_last OR spread_bps_min <= 0"),
        no_violations("values_in_range", "Depth >= 0, |imbalance| <= 1, spread >= 0, mid > 0, n_valid <= n_snapshots.",
                      depth.range_violation()),
        no_duplicates("exchange, symbol, minute", description="One row per (exchange, symbol, minute)."),
        units_convertible("book_snapshots", where=depth.PERIODIC),
    ],
    description="Order-book depth per exchange, symbol and minute (analytics.md §3). Source: the once-per-second "
                "'periodic' snapshots the book sync publishes (levels within ±10 % of mid, so every band is exact). "
                "Reference = mid of the snapshot; bid depth(x) = Σ bids with price >= mid·(1−x), ask depth(x) = Σ "
                "asks with price <= mid·(1+x), inclusive, x in 0.1/0.25/0.5/1/2/5/10 %; base, quote and USD "
                "(USDT/USDC at par, `quote_usd_rate`). Level sizes are in the market's unit (warehouse.units: the "
                "instrument's, or for markets recorded before instruments the unit of their trades): linear "
                "contracts base = qty × contract size; inverse contracts quote = qty × USD per contract exactly, "
                "base = quote / price; books of unknown unit are left out and counted by the `units_convertible` "
                "check. Imbalance = (bid−ask)/(bid+ask) on quote notional; "
                "`depth_usd_*` = bid + ask USD per snapshot. Per minute: mean, min and last over the minute's "
                "snapshots (plus max spread). Crossed, locked or one-sided books count in n_snapshots but not n_valid "
                "and are left out of every statistic. Each UTC day is rewritten with delete+insert.",
)
def book_depth(run: TableRun) -> dict:
    run.rewrite_each_day(lambda start, end: depth.book_depth_rows(run.con, start, end))
    metadata = {"preview": run.preview(["exchange", "symbol", "minute", "n_valid", "mid_last", "spread_bps_mean",
                                        f"bid_usd_{TWO_PCT}_mean", f"ask_usd_{TWO_PCT}_mean",
                                        f"imbalance_{TWO_PCT}_mean"], "exchange, symbol, minute")}
    series = run.query(depth.DEPTH_2PCT_SERIES)
    if series:
        title = f"±2% depth, USD (minute mean), {run.start:%Y-%m-%d}"
        metadata["depth_2pct"] = Picture(title, figures.lines(series, title, log=True))
    return metadata


class WithdrawalConfig(dg.Config):
    threshold: float = 0.1            # a 10x collapse, as in the issue
    merge_gap_minutes: float = 5.0
    min_baseline_minutes: int = 720   # half a day of history before a ratio is trusted


@table_asset(
    MICROSTRUCTURE, "liquidity_withdrawals", config=WithdrawalConfig,
    deps=[dg.AssetKey(BOOK_DEPTH)],
    checks=[
        no_violations("values_in_range", "0 <= worst_ratio < threshold, start < end, n_below >= 1, depths >= 0.",
                      "NOT (worst_ratio >= 0 AND worst_ratio < threshold AND episode_start < episode_end "
                      "AND n_below >= 1 AND coalesce(depth_at_worst_usd, 0) >= 0)"),
        no_duplicates("exchange, symbol, episode_start", description="One row per (exchange, symbol, episode_start)."),
    ],
    description="Liquidity-withdrawal episodes per exchange and symbol: minutes where ±2 % depth (bid + ask USD, "
                "minute mean from book_depth) is below `threshold` (config, default 0.1 = the 10x collapse) times its "
                "trailing 24 h median (strictly earlier minutes; undefined until `min_baseline_minutes`, default "
                "720, of history). Below minutes separated by <= `merge_gap_minutes` (default 5) merge into one "
                "episode. An episode belongs to the UTC day it "
                "starts in and each day reads book_depth only up to its own end (reruns are reproducible), so an "
                "episode still running at midnight is cut there with `open_at_day_end`; the previous 24 h are read "
                "for the baseline.",
)
def liquidity_withdrawals(run: TableRun, config: WithdrawalConfig) -> dict:
    run.rewrite_each_day(lambda start, end: depth.withdrawal_rows(
        run.con, start, end, threshold=config.threshold, merge_gap_minutes=config.merge_gap_minutes,
        min_baseline_minutes=config.min_baseline_minutes))
    metadata = {"preview": run.preview(["exchange", "symbol", "episode_start", "episode_end", "minutes", "worst_ratio",
                                        "baseline_depth_usd"], "exchange, symbol, episode_start"),
                "threshold": config.threshold}
    series = run.query(depth.DEPTH_2PCT_SERIES)
    if series:
        title = f"±2% depth, USD, withdrawal episodes shaded, {run.start:%Y-%m-%d}"
        metadata["depth_2pct_with_withdrawals"] = Picture(title, figures.lines(
            series, title, log=True, spans=run.query(depth.WITHDRAWAL_EPISODES), span_color="tab:red"))
    return metadata
