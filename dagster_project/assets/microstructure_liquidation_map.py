"""analytics.liquidation_levels, liquidation_level_scores (analytics.md §9.4) and
cross_venue_cascades (§6.3 across venues). Rows and SQL: ``warehouse/analytics/liquidation_map.py``."""

import dagster as dg

from dagster_project.assets.microstructure_derivatives import OPEN_INTEREST
from dagster_project.assets.microstructure_stress import MARKET_STRESS
from dagster_project.tables import (
    MICROSTRUCTURE,
    Check,
    Picture,
    TableRun,
    no_duplicates,
    no_violations,
    table_asset,
    units_convertible,
)
from transforms import figures
from warehouse.analytics import liquidation_map
from warehouse.analytics.common import fetch

OHLCV_1M = ["analytics", "ohlcv_1m"]
LIQUIDATION_LEVELS = ["analytics", "liquidation_levels"]
LIQUIDATION_LEVEL_SCORES = ["analytics", "liquidation_level_scores"]
CROSS_VENUE_CASCADES = ["analytics", "cross_venue_cascades"]
RAW_LIQUIDATIONS = [dg.AssetKey(["raw", "liquidations"]), dg.AssetKey(["raw", "instruments"])]


@table_asset(
    MICROSTRUCTURE, "liquidation_levels",
    deps=[dg.AssetKey(OHLCV_1M), dg.AssetKey(OPEN_INTEREST)],
    checks=[
        no_duplicates("asset, snapshot_ts, side, bin_lo"),
        no_violations("values_in_range", "side is long or short; usd > 0; bin_hi > bin_lo; mid > 0; cumulative "
                                         "modelled and unplaced USD >= 0.",
                      "side NOT IN ('long', 'short') OR usd <= 0 OR bin_hi <= bin_lo OR mid <= 0 "
                      "OR modeled_liquidated_usd < 0 OR unplaced_usd < 0"),
    ],
    description="Modelled liquidation-level map per base asset (analytics.md §9.4, transforms.liquidation_map; every "
                "parameter is the spec's assumption, nobody publishes where positions sit): each minute's growth of "
                "cross-venue open interest (analytics.open_interest, 5-minute totals in coins) is opened at the "
                "minute's VWAP (analytics.ohlcv_1m over the asset's markets), split long/short by the taker buy/sell "
                "USD, spread over leverage tiers {5x 10 %, 10x 30 %, 25x 30 %, 50x 20 %, 100x 10 %} at "
                "price × (1 ∓ 1/L ± 0.5 %); OI shrinking scales every level pro rata; a level the price trades "
                "through is consumed. Hourly snapshots, `usd` per side in buckets [bin_lo, bin_hi) of 0.1 % of "
                "`mid`. The model runs from one day before the partition (levels are path-dependent) and writes "
                "the partition's snapshots; `unplaced_usd` is OI growth it could not place (no trades that "
                "minute), cumulative like `modeled_liquidated_usd`. The picture overlays the realized forced orders.",
)
def liquidation_levels(run: TableRun) -> dict:
    run.rewrite_each_day(lambda start, end: liquidation_map.level_rows(run.con, start, end))
    metadata = {"largest_levels": run.preview(["asset", "snapshot_ts", "side", "bin_lo", "bin_hi", "usd"],
                                              "usd DESC")}
    cells = fetch(run.con, liquidation_map.MAP_CELLS, run.window)
    realized = fetch(run.con, liquidation_map.REALIZED, run.window)
    for asset in sorted(set(cells["asset"].tolist())):
        mine, hits = cells["asset"] == asset, realized["asset"] == asset
        title = f"{asset} modelled liquidation levels (USD) and realized liquidations, {run.start:%Y-%m-%d}"
        metadata[f"heatmap_{asset}"] = Picture(title, figures.liquidation_heatmap(
            title, (cells["ts"][mine], cells["bin_lo"][mine], cells["width"][mine], cells["usd"][mine]),
            (realized["ts"][hits], realized["price"][hits], realized["usd"][hits]),
            snapshot_s=liquidation_map.SNAPSHOT_EVERY_S))
    return metadata


def _sampled_feeds_labelled() -> Check:
    return no_violations(
        "sampled_feed_labelled", "A score computed on liquidations of any venue whose liquidation feed is not complete "
                                 "(meta.venue_coverage: Binance forceOrder is one per symbol per second) says so "
                                 "(`is_sampled_feed`).",
        "NOT is_sampled_feed AND EXISTS (SELECT 1 FROM meta.venue_coverage AS c WHERE c.data = 'liquidations' "
        "AND c.coverage <> 'complete' AND list_contains(string_split(realized_venues, ','), c.exchange))",
        counted_as="unlabelled_scores")


@table_asset(
    MICROSTRUCTURE, "liquidation_level_scores",
    deps=[dg.AssetKey(LIQUIDATION_LEVELS), dg.AssetKey(OHLCV_1M), *RAW_LIQUIDATIONS],
    checks=[
        no_duplicates("asset, day, venue_set"),
        no_violations("values_in_range", "score, CIs, precision and ranked_share in [0, 1], ci_low <= score <= ci_high, baseline "
                                         "0.25, scored snapshots <= snapshots, realized USD >= 0.",
                      "score < 0 OR score > 1 OR ci_low > score OR ci_high < score OR ci_low < 0 OR ci_high > 1 "
                      "OR precision_top10 < 0 OR precision_top10 > 1 OR baseline <> 0.25 OR n_scored > n_snapshots "
                      "OR realized_usd < 0 OR (n_scored > 0 AND score IS NULL) OR ranked_share < 0 OR ranked_share > 1"),
        _sampled_feeds_labelled(),
        units_convertible("liquidations"),
    ],
    description="How well the liquidation-level map placed the liquidations that followed (analytics.md §9.4, "
                "LiquidVision-style): for each hourly snapshot the buckets inside the traded range of the rest of the "
                "day (at most 24 h) are ranked by modelled USD; `score` = realized forced-order USD in the top "
                "quarter / in all of them, pooled over the day's snapshots (chance: `baseline` 0.25; `lift` = "
                "score / 0.25), `ci_low`/`ci_high` a bootstrap 95 % over snapshots, `precision_top10` the top-10 % "
                "share (chance 0.10). `ranked_share`: the share of those top-quarter buckets the map ranked itself (with "
                "modelled USD > 0); the rest are filled by the tie rule (lowest prices first), so where it is low the score "
                "says where the price went more than how good the map is. `venue_set` 'all' scores every venue's liquidations, 'complete_feeds' only "
                "venues that publish every one. `is_sampled_feed` where a scored venue's feed is sampled or a lower "
                "bound (meta.venue_coverage; Binance forceOrder: one per symbol per second), so the score is "
                "computed on a sample. Only data up to the day's end is used: a closed day's score never changes.",
)
def liquidation_level_scores(run: TableRun) -> dict:
    run.rewrite_each_day(lambda start, end: liquidation_map.score_rows(run.con, start, end))
    return {"scores": run.preview(["asset", "day", "venue_set", "score", "ci_low", "ci_high", "ranked_share",
                                   "n_scored", "realized_usd", "is_sampled_feed"], "asset, venue_set")}


def _shares_sum_to_one(run: TableRun) -> dg.AssetCheckResult:
    bad = run.count(f"SELECT count(*) FROM (SELECT asset, side, cascade_start FROM {run.table} WHERE {run.where} "
                    "GROUP BY ALL HAVING max(episode_usd) > 0 AND abs(sum(venue_share) - 1) > 1e-9)")
    return dg.AssetCheckResult(check_name="shares_sum_to_one", passed=bad == 0, metadata={"episodes_off": bad})


def _first_mover_consistent(run: TableRun) -> dg.AssetCheckResult:
    bad = run.count(f"SELECT count(*) FROM (SELECT asset, side, cascade_start FROM {run.table} WHERE {run.where} "
                    "GROUP BY ALL HAVING count(*) FILTER (WHERE is_first_mover) <> (max(first_mover) IS NOT NULL)::INT "
                    "OR min(crossing_after_first_s) < 0)")
    return dg.AssetCheckResult(check_name="first_mover_is_earliest", passed=bad == 0, metadata={"episodes_off": bad})


@table_asset(
    MICROSTRUCTURE, "cross_venue_cascades",
    deps=[dg.AssetKey(MARKET_STRESS), dg.AssetKey(["raw", "trades"]), *RAW_LIQUIDATIONS],
    checks=[
        no_duplicates("asset, side, cascade_start, exchange"),
        Check("shares_sum_to_one", "Each episode's venue shares of the published liquidated USD sum to 1.",
              _shares_sum_to_one),
        Check("first_mover_is_earliest", "An episode with a first mover has exactly one row marked so, and no venue "
                                         "crossed the threshold before it.", _first_mover_consistent),
        no_violations("values_in_range", "0 <= venue_share <= 1, venue USD >= 0, stress in [0, 100], the episode's "
                                         "end not before its start.",
                      "venue_share < 0 OR venue_share > 1 OR venue_usd < 0 OR stress_max < 0 OR stress_max > 100 "
                      "OR cascade_end < cascade_start"),
        units_convertible("liquidations"),
    ],
    description="Liquidation cascades across venues, one row per episode and venue (analytics.md §6.3 on the pooled "
                "forced orders of every venue, transforms.cross_venue): each venue's liquidated USD and share of "
                "what was published (`liquidation_coverage` from meta.venue_coverage: a sampled venue's share is a "
                "lower bound), its signed extreme move, when its own trade price first moved the asset's cascade "
                "threshold p from where it stood 5 min before the episode (`threshold_crossing`); the earliest is "
                "`first_mover`, `lead_s` its lead over the next venue, `crossing_after_first_s` each venue's lag. "
                "`xcorr_lag_s`: lag of the peak cross-correlation of 1 s trade-price returns against the "
                "reference venue (> 0: follows; on the simulator it reads 0 s even for its lagged venue, because "
                "every venue's tape is a share of one tape and their bid-ask bounce coincides; the crossings "
                "find the lag). `stress_max`/`stress_mean`: analytics.market_stress over the episode. Pictures: the "
                "largest long and short episode of each asset (each a second of matplotlib; a cascade day has "
                "dozens of episodes), each venue's liquidated USD per minute and its price, the first mover in red.",
)
def cross_venue_cascades(run: TableRun) -> dict:
    run.rewrite_each_day(lambda start, end: liquidation_map.cross_venue_rows(run.con, start, end))
    metadata = {"episodes": run.preview(["asset", "side", "cascade_start", "exchange", "venue_share", "move_bps",
                                         "crossing_after_first_s", "is_first_mover", "stress_max"],
                                        "cascade_start, asset, exchange", limit=20)}
    for timeline in liquidation_map.largest_timelines(liquidation_map.cascade_timelines(run.con, run.start, run.end)):
        metadata[timeline.key] = Picture(timeline.title, figures.cross_venue_cascade_timeline(
            timeline.title, timeline.venues, timeline.first_mover, timeline.span))
    return metadata


LIQUIDATION_MAP_ASSETS = [liquidation_levels, liquidation_level_scores, cross_venue_cascades]
