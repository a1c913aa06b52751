"""analytics.market_stress: a per-minute 0-100 index per base asset, built to rise ahead of and
during liquidation cascades (transforms.market_stress). Rows and SQL: ``warehouse/analytics/stress.py``."""

import dagster as dg

from dagster_project.assets.microstructure_depth import BOOK_DEPTH
from dagster_project.assets.microstructure_derivatives import FUNDING, OPEN_INTEREST
from dagster_project.assets.microstructure_liquidations import LIQUIDATION_CASCADES, LIQUIDATIONS_1M
from dagster_project.tables import (
    MICROSTRUCTURE,
    Picture,
    TableRun,
    covers_feed,
    no_duplicates,
    no_violations,
    table_asset,
)
from transforms import figures
from transforms.market_stress import StressConfig
from warehouse.analytics import stress

MARKET_STRESS = ["analytics", "market_stress"]


class MarketStressConfig(dg.Config):
    lead_threshold: float = 50.0   # index level that counts as "risen" for the lead-time metadata
    # Finite prior minutes a trailing baseline needs before its component counts (transforms.market_stress).
    min_baseline_minutes: int = StressConfig.min_periods


@table_asset(
    MICROSTRUCTURE, "market_stress", config=MarketStressConfig,
    deps=[dg.AssetKey(BOOK_DEPTH), dg.AssetKey(LIQUIDATIONS_1M), dg.AssetKey(OPEN_INTEREST), dg.AssetKey(FUNDING),
          dg.AssetKey(LIQUIDATION_CASCADES)],
    checks=[
        covers_feed("Every asset with 2 % depth in a minute has a stress row for it.", stress.DEPTH_MINUTES,
                    "asset, minute"),
        no_violations("values_in_range", "Index and components within 0-100 / 0-1, coverage within 0-1, index NULL "
                                         "only below half coverage.",
                      "stress_index < 0 OR stress_index > 100 OR coverage < 0 OR coverage > 1 "
                      "OR (stress_index IS NULL AND coverage >= 0.5) "
                      "OR greatest(depth_component, liquidation_component, oi_component, funding_component) > 1 "
                      "OR least(depth_component, liquidation_component, oi_component, funding_component) < 0"),
        no_duplicates("asset, minute", description="One row per (asset, minute)."),
    ],
    description="Market-stress index per base asset and minute, 0-100 (transforms.market_stress): depth collapse "
                "(±2 % USD depth of the books present in the minute vs the sum of those books' own trailing 24 h "
                "medians, log scale, 10x = full; a book missing in a minute does not count, `depth_books` and "
                "`depth_book_names` say which did), liquidation intensity "
                "(5-min decayed liquidated USD vs the trailing 24 h mean, 10x = half, 100x = full), open-interest "
                "drawdown from the 4 h high (10 % = full) and funding dislocation (|z| of the OI-weighted 8 h rate vs "
                "24 h, 1..4). Weights 0.35/0.35/0.15/0.15 over the defined components; NULL below half coverage "
                "(warm-up needs 12 h of history, so the previous 24 h are read). Rows for the minutes with depth, a "
                "market stream (per-venue funding rows) or a forced order; liquidations count as zero only in those "
                "minutes. Every value only uses data up to its minute's close. Metadata gives, per cascade of the "
                "day, how many minutes before its start the index first reached `lead_threshold`.",
)
def market_stress(run: TableRun, config: MarketStressConfig) -> dict:
    stress_config = StressConfig(min_periods=config.min_baseline_minutes)
    run.rewrite_each_day(lambda start, end: stress.stress_rows(run.con, start, end, stress_config))
    metadata = {"most_stressed_minutes": run.preview(["asset", "minute", "stress_index", "depth_component",
                                                      "depth_books", "liquidation_component", "oi_component",
                                                      "funding_component"],
                                                     "stress_index DESC NULLS LAST"),
                "cascade_lead_minutes": dg.MetadataValue.json(
                    stress.stress_lead_times(run.con, run.start, run.end, config.lead_threshold)),
                "lead_threshold": config.lead_threshold}
    series = run.query(stress.STRESS_SERIES)
    if series:
        title = f"market stress 0-100, cascades shaded, {run.start:%Y-%m-%d}"
        metadata["stress_index"] = Picture(title, figures.lines(series, title,
                                                                spans=run.query(stress.CASCADE_MINUTES)))
    return metadata
