"""Positioning across venues (issue 11): analytics.aggregated_open_interest, aggregated_funding,
taker_volume, basis and slippage. Rows and SQL: ``warehouse/analytics/positioning.py``; the
computation: ``transforms/positioning.py``, ``taker_flow.py``, ``basis.py``, ``slippage.py``."""

import dagster as dg

from dagster_project.tables import (
    MICROSTRUCTURE,
    Check,
    Picture,
    TableRun,
    covers_feed,
    no_duplicates,
    no_violations,
    table_asset,
    units_convertible,
)
from transforms import figures
from warehouse.analytics import depth, positioning

RAW_OI, RAW_FUNDING, RAW_TRADES = (dg.AssetKey(["raw", t]) for t in ("open_interest", "funding", "trades"))
RAW_INSTRUMENTS, RAW_BOOKS = dg.AssetKey(["raw", "instruments"]), dg.AssetKey(["raw", "book_snapshots"])
AGGREGATED_OPEN_INTEREST = ["analytics", "aggregated_open_interest"]


def _totals_match(name: str, sql: str, what: str) -> Check:
    def evaluate(run: TableRun) -> dg.AssetCheckResult:
        bad = run.count(sql)
        return dg.AssetCheckResult(check_name=name, passed=bad == 0, metadata={"mismatched_rows": bad})
    return Check(name, what, evaluate)


@table_asset(
    MICROSTRUCTURE, "aggregated_open_interest",
    deps=[RAW_OI, RAW_INSTRUMENTS, RAW_FUNDING],
    checks=[
        no_duplicates("asset, venue, pool_counterparty, grain, bucket_start",
                      description="One row per (asset, venue, pool_counterparty, grain, bucket_start)."),
        no_violations("values_in_range", "OI >= 0; n_markets, n_venues >= 1; pool rows hold long + short = total, "
                                         "one-sided rows no long/short split.",
                      "oi_coin < 0 OR oi_usd < 0 OR n_markets < 1 OR n_venues < 1 "
                      "OR (pool_counterparty "
                      "AND abs(oi_long_usd + oi_short_usd - oi_usd) > 1e-9 * greatest(oi_usd, 1)) "
                      "OR (NOT pool_counterparty AND (oi_long_usd IS NOT NULL OR oi_short_usd IS NOT NULL))"),
        _totals_match("total_is_sum_of_venues", positioning.OI_TOTAL_MISMATCH,
                      "Every cross-venue row (venue 'all') equals the sum of its venue rows of the same kind "
                      "(one-sided or pool) in coins, USD and markets."),
        units_convertible("open_interest"),
    ],
    description="Open interest per base asset and venue and across venues at 5-minute and hourly grain "
                "(analytics.md §7, §9.3), in coins and USD (transforms.positioning.open_interest_by_venue over the "
                "open-interest observations valued as analytics.open_interest values them). A market's value in a "
                "bucket is its last observation, carried forward one bucket at most; a venue row sums its markets. "
                "One-sided OI everywhere except on pool venues (GMX), whose pool is every position's counterparty: "
                "their rows are `pool_counterparty` with the long and short sides apart and total = long + short, "
                "and they are never added to the one-sided cross-venue total (venue 'all', pool_counterparty "
                "false); pool venues have a total row of their own. `oi_*_change(_pct)` against the previous bucket, "
                "NULL where the markets making the two buckets differ. The previous 2 h are read for the changes.",
)
def aggregated_open_interest(run: TableRun) -> dict:
    run.rewrite_each_day(lambda start, end: positioning.aggregated_open_interest_rows(run.con, start, end))
    return {"preview": run.preview(["asset", "venue", "pool_counterparty", "grain", "bucket_start", "oi_coin",
                                    "oi_usd", "n_markets", "oi_usd_change_pct"],
                                   "grain DESC, asset, pool_counterparty, venue, bucket_start")}


@table_asset(
    MICROSTRUCTURE, "aggregated_funding",
    deps=[RAW_FUNDING, RAW_OI, RAW_INSTRUMENTS, dg.AssetKey(AGGREGATED_OPEN_INTEREST)],
    checks=[
        no_duplicates("asset, venue, is_realised, grain, bucket_start",
                      description="One row per (asset, venue, is_realised, grain, bucket_start)."),
        no_violations("values_in_range", "|8 h rate| <= 5 %, annualized = 8 h rate × 1095, OI weight >= 0, "
                                         "n_weighted <= n_venues, spread >= 0 and only on cross-venue rows.",
                      "abs(rate_8h) > 0.05 OR abs(rate_annualized - rate_8h * 1095) > 1e-12 OR oi_usd < 0 "
                      "OR n_weighted > n_venues OR spread_8h < 0 OR (venue <> 'all' AND spread_8h IS NOT NULL)"),
    ],
    description="Funding per base asset and venue and across venues at 5-minute and hourly grain (analytics.md "
                "§7, §9.3; transforms.positioning.funding_by_venue). Each rate is normalised to 8 h with its own "
                "row's interval (rate_8h = rate × 8 / interval_hours), annualized × 3 × 365 (simple, a fraction). A "
                "market's rate in a bucket is its last; its weight is its USD open interest as of the rate (at most "
                "60 s older; the long side on pool venues). Venue rows: OI-weighted over the venue's markets "
                "(`weighted` false: no weight, plain mean). Cross-venue rows (venue 'all'): Σ rate_8h·OI / Σ OI "
                "over weighted venues, `spread_8h` = highest − lowest venue rate with the venues named; venue rows "
                "carry `vs_weighted_8h`. Running estimates and settled rates (`is_realised`) are separate series. "
                "Picture: the largest asset's open interest by venue, stacked, with funding.",
)
def aggregated_funding(run: TableRun) -> dict:
    run.rewrite_each_day(lambda start, end: positioning.aggregated_funding_rows(run.con, start, end))
    metadata = {"preview": run.preview(["asset", "venue", "is_realised", "grain", "bucket_start", "rate_8h",
                                        "rate_annualized", "oi_usd", "spread_8h"],
                                       "grain DESC, asset, venue, bucket_start")}
    top = run.query(positioning.TOP_ASSET)
    if top:
        params = {**run.window, "asset": top[0][0]}
        oi = run.con.execute(positioning.OI_BY_VENUE_SERIES, params).fetchall()
        rates = run.con.execute(positioning.FUNDING_SERIES, params).fetchall()
        title = f"{top[0][0]} open interest by venue (USD) and funding (annualized %), {run.start:%Y-%m-%d}"
        metadata["open_interest_by_venue_and_funding"] = Picture(title, figures.stacked_with_lines(
            oi, rates, title, stacked_unit="OI, USD", line_unit="funding, annualized %"))
    return metadata


def _reconciled_within_tolerance(run: TableRun) -> dg.AssetCheckResult:
    reconciled = run.count(f"SELECT count(*) FROM {run.table} WHERE {run.where} AND reconciled")
    flagged = run.count(f"SELECT count(*) FROM {run.table} WHERE {run.where} AND reconcile_flagged")
    unmatched = run.count(positioning.UNMATCHED_VENUE_PERIODS)
    return dg.AssetCheckResult(check_name="reconciled_within_tolerance", passed=flagged == 0 and unmatched == 0,
                               severity=dg.AssetCheckSeverity.WARN,
                               metadata={"reconciled_rows": reconciled, "flagged_rows": flagged,
                                         "venue_periods_without_our_trades": unmatched})


@table_asset(
    MICROSTRUCTURE, "taker_volume",
    deps=[RAW_TRADES, RAW_INSTRUMENTS, dg.AssetKey(["raw", "taker_volumes"])],
    checks=[
        covers_feed("Every exchange/symbol/5-minute bucket with a convertible trade has a row.",
                    positioning.TRADE_BUCKETS, "exchange, symbol, bucket_start", table_filter="exchange <> 'all'"),
        no_violations("values_in_range", "Volumes >= 0, forced fills within their side, delta = buy − sell "
                                         "(with and without forced fills).",
                      "taker_buy_usd < 0 OR taker_sell_usd < 0 OR forced_buy_usd > taker_buy_usd * (1 + 1e-12) "
                      "OR forced_sell_usd > taker_sell_usd * (1 + 1e-12) "
                      "OR abs(delta_usd - (taker_buy_usd - taker_sell_usd)) > 1e-6 "
                      "OR abs(delta_ex_forced_usd - (delta_usd - forced_buy_usd + forced_sell_usd)) > 1e-6"),
        no_duplicates("exchange, symbol, bucket_start", description="One row per (exchange, symbol, bucket_start)."),
        _totals_match("total_is_sum_of_venues", positioning.TAKER_TOTAL_MISMATCH,
                      "Every cross-venue row (exchange 'all') equals the sum of the asset's market rows in the bucket "
                      "(taker buy, taker sell and forced USD)."),
        units_convertible("trades"),
        Check("reconciled_within_tolerance",
              "Where the venue publishes its own 5-minute taker volume, our sums agree within 0.5 % on both sides "
              "and every venue period with volume has a row of ours (warns: a difference means trades lost or a "
              "venue's own rounding).", _reconciled_within_tolerance),
    ],
    description="Taker buy and sell volume per market and 5 minutes, and summed per base asset across venues "
                "(exchange 'all'), in coins and USD (analytics.md §9.1; transforms.taker_flow). Every trade counts; "
                "the fills each venue marks as forced (Venue.FORCED_TRADE_TYPES: Binance insurance-fund/ADL prints, "
                "dYdX liquidations and deleveraging) are also summed apart (`forced_*`), so `delta_ex_forced_usd` "
                "and `cvd_ex_forced_usd` leave out what the tape identifies as forced (Binance aggTrade carries no "
                "marker: forced fills there stay in). `cvd_*` runs from the day's first bucket of each series. "
                "Trades of unknown side are counted in `n_unknown_side`/`unknown_side_usd`. Where the venue "
                "publishes its own 5-minute taker volume (raw.taker_volumes: Binance USD-M takerlongshortRatio, "
                "OKX taker-volume-contract) a market row is `reconciled`: `venue_{buy,sell}_volume` in base units, "
                "`rel_diff_{buy,sell}` = ours / venue − 1 on base units and `reconcile_flagged` beyond 0.5 %; "
                "other rows (venues without the statistic, inverse contracts, cross-venue rows) are not.",
)
def taker_volume(run: TableRun) -> dict:
    run.rewrite_each_day(lambda start, end: positioning.taker_volume_rows(run.con, start, end))
    return {"preview": run.preview(["exchange", "symbol", "bucket_start", "taker_buy_usd", "taker_sell_usd",
                                    "forced_buy_usd", "forced_sell_usd", "cvd_usd", "cvd_ex_forced_usd"],
                                   "exchange, symbol, bucket_start")}


@table_asset(
    MICROSTRUCTURE, "basis",
    deps=[RAW_FUNDING, dg.AssetKey(["analytics", "book_depth"])],
    checks=[
        no_duplicates("exchange, symbol, minute", description="One row per (exchange, symbol, minute)."),
        no_violations("values_in_range", "Prices > 0, |premium| < 50 %, coverage in (0, 1], dislocation only with "
                                         "at least two markets priced.",
                      "mark_price <= 0 OR index_price <= 0 OR abs(premium) >= 0.5 OR premium_coverage <= 0 "
                      "OR premium_coverage > 1 + 1e-9 OR (dislocation_bps IS NOT NULL AND n_markets_priced < 2) "
                      "OR (dislocation_bps IS NULL AND n_markets_priced >= 2)"),
    ],
    description="Basis per market and minute (analytics.md §9.2; transforms.basis): `premium` = mark / index − 1 "
                "of the minute's last mark (the index as of it, at most 2 s older, so venues pushing mark and index "
                "apart pair correctly), `premium_twap` the time-weighted premium over the minute (a sample holds "
                "60 s at most; `premium_coverage` the share of the minute covered), `basis_annualized` = "
                "premium_twap × 8760 (a premium persisting each hour, per year [assumption, §9.2]). Venues without "
                "a mark or index (dYdX publishes only an oracle price) have no premium. Cross-venue dislocation: each "
                "market's last book mid (analytics.book_depth) against the median of the asset's markets' mids in "
                "the same minute, in bps; NULL with fewer than two markets priced (`n_markets_priced`). Venues "
                "without a book (GMX) have no mid.",
)
def basis(run: TableRun) -> dict:
    run.rewrite_each_day(lambda start, end: positioning.basis_rows(run.con, start, end))
    metadata = {"preview": run.preview(["exchange", "symbol", "minute", "premium", "premium_twap", "basis_annualized",
                                        "dislocation_bps", "n_markets_priced"], "exchange, symbol, minute")}
    series = run.query("SELECT exchange || ' ' || symbol, minute, dislocation_bps FROM analytics.basis "
                       "WHERE day >= $start AND day < $end AND dislocation_bps IS NOT NULL ORDER BY 1, 2")
    if series:
        title = f"mid vs median of venues, bps, {run.start:%Y-%m-%d}"
        metadata["dislocation_bps"] = Picture(title, figures.lines(series, title))
    return metadata


@table_asset(
    MICROSTRUCTURE, "slippage",
    deps=[RAW_BOOKS, RAW_INSTRUMENTS, RAW_TRADES],
    checks=[
        covers_feed("Every exchange/symbol/minute with a periodic book snapshot has a row.", depth.SNAPSHOT_MINUTES,
                    "exchange, symbol, minute"),
        no_violations("too_shallow_is_null", "A size some book of the minute could not fill has no slippage.",
                      positioning.shallow_but_measured()),
        no_violations("values_in_range", "A larger order never costs less than a smaller one on the same side (to "
                                         "0.001 bps of float noise); n_valid <= n_snapshots.",
                      f"n_valid > n_snapshots OR {positioning.slippage_monotone_violation()}"),
        no_duplicates("exchange, symbol, minute", description="One row per (exchange, symbol, minute)."),
        units_convertible("book_snapshots", where=depth.PERIODIC),
    ],
    description="Slippage of $10k, $100k, $1M and $10M market buys (`ask_*`) and sells (`bid_*`) per market and "
                "minute (analytics.md §9.5, Kaiko's definition; transforms.slippage): the order walks the book of "
                "each periodic snapshot (the ones book_depth reads: levels within ±10 % of mid, books perpflow had "
                "to uncross left out), slippage = average fill price against the mid, in bps, positive for a cost; "
                "the minute's value is the mean over its valid books. Where any book of the minute could not fill "
                "the order, the value is NULL and `*_too_shallow_*` true (the mean of the others would understate "
                "the cost); `*_book_truncated_*` where a walk reached the last level the snapshot shows (the venue "
                "may hold more beyond it). Sizes convert with the market's instrument (warehouse.units). Picture: "
                "the day's mean slippage curve per market and side.",
)
def slippage(run: TableRun) -> dict:
    run.rewrite_each_day(lambda start, end: positioning.slippage_rows(run.con, start, end))
    metadata = {"preview": run.preview(["exchange", "symbol", "minute", "n_valid", "ask_slippage_bps_100k",
                                        "bid_slippage_bps_100k", "ask_too_shallow_10m"], "exchange, symbol, minute")}
    points = run.query(positioning.slippage_curve_sql())
    if points:
        title = f"slippage vs order size (day mean), {run.start:%Y-%m-%d}"
        metadata["slippage_curves"] = Picture(title, figures.slippage_curves(points, title))
    return metadata


POSITIONING_ASSETS = [aggregated_open_interest, aggregated_funding, taker_volume, basis, slippage]
