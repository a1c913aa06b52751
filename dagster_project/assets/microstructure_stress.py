"""analytics.market_stress: a per-minute 0-100 index per base asset, built to rise ahead of and
during liquidation cascades (transforms.market_stress)."""

import datetime as dt

import dagster as dg
import numpy as np
import pyarrow as pa

from dagster_project.assets.microstructure_common import (
    DAY,
    PartitionChecks,
    arrow_rows,
    daily_asset,
    days_of,
    epoch,
    fetch,
    groups,
    partition_days,
    plot_lines,
    preview,
    replace_day,
    shade,
    timestamps,
)
from dagster_project.assets.microstructure_depth import BOOK_DEPTH, TWO_PCT
from dagster_project.assets.microstructure_derivatives import (
    FUNDING,
    OPEN_INTEREST,
    WEIGHT_TOLERANCE_S,
)
from dagster_project.assets.microstructure_liquidations import (
    LIQUIDATION_CASCADES,
    LIQUIDATIONS_1M,
)
from dagster_project.charts import png_markdown, table_preview
from dagster_project.resources import WarehouseResource
from transforms.market_stress import StressConfig, lead_time_minutes, market_stress_index
from transforms.open_interest import asof_values

MARKET_STRESS = ["analytics", "market_stress"]

# Per asset and minute, each input as the index consumes it (sums in a fixed order, so a rewrite
# reproduces every bit). "feed" marks the minutes the market stream was up: Binance sends forced
# orders on the connection that carries markPrice, so only then does "no liquidation" mean zero.
INPUTS = {
    "depth": f"""SELECT split_part(symbol, '-', 1) AS asset, epoch(minute) AS ts,
                       sum(depth_usd_{TWO_PCT}_mean ORDER BY exchange, symbol) AS value
                FROM analytics.book_depth WHERE minute >= $lo AND minute < $end GROUP BY ALL""",
    "liquidated": """SELECT asset, epoch(minute) AS ts, sum(long_usd + short_usd ORDER BY exchange, symbol) AS value
                     FROM analytics.liquidations_1m WHERE minute >= $lo AND minute < $end GROUP BY ALL""",
    "feed": """SELECT asset, epoch(minute) AS ts, count(*) AS value FROM analytics.funding
               WHERE exchange <> 'all' AND minute >= $lo AND minute < $end GROUP BY ALL""",
    "oi": """SELECT symbol AS asset, epoch(bucket_start) + 300 AS ts, open_interest_usd AS value
             FROM analytics.open_interest
             WHERE exchange = 'all' AND grain = '5m' AND bucket_start >= $lo - INTERVAL 10 MINUTE
               AND bucket_start < $end""",
    "funding": """SELECT symbol AS asset, epoch(minute) AS ts, rate_8h AS value FROM analytics.funding
                  WHERE exchange = 'all' AND minute >= $lo AND minute < $end""",
}


def stress_rows(con, start: dt.datetime, end: dt.datetime, config: StressConfig = StressConfig()) -> list[pa.Table]:
    """The minutes of [start, end) in which an asset had depth, a market stream or a forced order.
    The previous 24 h are read so the trailing baselines are warm (the index only looks back); the
    grid skips minutes without data, so a feed outage neither fakes calm nor counts as history."""
    lo = start - DAY
    inputs = {name: fetch(con, sql, {"lo": lo, "end": end}) for name, sql in INPUTS.items()}
    day_start = epoch(start)
    series = {name: dict(groups(data["asset"])) for name, data in inputs.items()}
    parts = []
    for (asset,) in sorted({k for name in ("depth", "feed", "liquidated") for k in series[name]}):
        rows = {name: by_asset.get((asset,), np.empty(0, np.int64)) for name, by_asset in series.items()}
        grid = np.unique(np.concatenate([inputs[n]["ts"][rows[n]] for n in ("depth", "feed", "liquidated")]))
        today = grid >= day_start
        if not today.any():
            continue
        depth = _on_grid(grid, inputs["depth"], rows["depth"], np.nan)
        liquidated = _on_grid(grid, inputs["liquidated"], rows["liquidated"], 0.0)
        funding = _on_grid(grid, inputs["funding"], rows["funding"], np.nan)
        oi_ts, oi_usd = inputs["oi"]["ts"][rows["oi"]], inputs["oi"]["value"][rows["oi"]]
        order = np.argsort(oi_ts)
        # OI of a minute = the latest 5-minute total known when the minute closes.
        oi = asof_values(grid + 60, oi_ts[order], oi_usd[order], tolerance_s=WEIGHT_TOLERANCE_S)
        stress = market_stress_index(grid, depth, liquidated, oi, funding, config=config)
        parts.append(arrow_rows({
            "asset": [asset] * int(today.sum()), "minute": timestamps(grid[today]),
            "stress_index": stress.index[today], "depth_component": stress.depth[today],
            "liquidation_component": stress.liquidation[today], "oi_component": stress.open_interest[today],
            "funding_component": stress.funding[today], "coverage": stress.coverage[today],
            "depth_2pct_usd": depth[today], "liquidated_usd": liquidated[today], "oi_usd": oi[today],
            "funding_8h": funding[today], "day": days_of(grid[today]),
        }))
    return parts


def _on_grid(grid: np.ndarray, data: dict, rows: np.ndarray, fill: float) -> np.ndarray:
    """The input's values at the grid minutes it has; ``fill`` elsewhere."""
    values = np.full(grid.size, fill)
    ts = data["ts"][rows]
    at = np.minimum(np.searchsorted(grid, ts), grid.size - 1)
    hit = grid[at] == ts
    values[at[hit]] = data["value"][rows][hit]
    return values


def stress_lead_times(con, days, threshold: float) -> list[dict]:
    """For each cascade of the run's days: minutes between the index first reaching ``threshold``
    (within 6 h before) and the cascade start; NaN if it never did. A minute's value is only known
    when the minute closes, so that is when it counts."""
    cascades = con.execute("SELECT asset, side, cascade_start FROM analytics.liquidation_cascades WHERE day BETWEEN ? "
                           "AND ? ORDER BY cascade_start", [days[0][0].date(), days[-1][0].date()]).fetchall()
    leads = []
    for asset, side, cascade_start in cascades:
        data = fetch(con, "SELECT epoch(minute) + 60 AS ts, stress_index FROM analytics.market_stress "
                          "WHERE asset = $asset AND minute BETWEEN $start - INTERVAL 361 MINUTE AND $start "
                          "ORDER BY minute",
                     {"asset": asset, "start": cascade_start})
        lead = lead_time_minutes(data["ts"], data["stress_index"], epoch(cascade_start), threshold=threshold)
        leads.append({"asset": asset, "side": side, "cascade_start": str(cascade_start),
                      "lead_minutes": None if np.isnan(lead) else lead})
    return leads


class MarketStressConfig(dg.Config):
    lead_threshold: float = 50.0   # index level that counts as "risen" for the lead-time metadata
    # Finite prior minutes a trailing baseline needs before its component counts (transforms.market_stress).
    min_baseline_minutes: int = StressConfig.min_periods


STRESS_CHECKS = {
    "non_empty_where_feed_up": "Every asset with 2 % depth in a minute has a stress row for it.",
    "values_in_range": "Index and components within 0-100 / 0-1, coverage within 0-1, index NULL only below "
                       "half coverage.",
    "no_duplicate_keys": "One row per (asset, minute).",
}


@daily_asset(
    MARKET_STRESS, STRESS_CHECKS,
    deps=[dg.AssetKey(BOOK_DEPTH), dg.AssetKey(LIQUIDATIONS_1M), dg.AssetKey(OPEN_INTEREST), dg.AssetKey(FUNDING),
          dg.AssetKey(LIQUIDATION_CASCADES)],
    description="Market-stress index per base asset and minute, 0-100 (transforms.market_stress): depth collapse "
                "(Σ-venue ±2 % USD depth vs its trailing 24 h median, log scale, 10x = full), liquidation intensity "
                "(5-min decayed liquidated USD vs the trailing 24 h mean, 10x = half, 100x = full), open-interest "
                "drawdown from the 4 h high (10 % = full) and funding dislocation (|z| of the OI-weighted 8 h rate vs "
                "24 h, 1..4). Weights 0.35/0.35/0.15/0.15 over the defined components; NULL below half coverage "
                "(warm-up needs 12 h of history, so the previous 24 h are read). Rows for the minutes with depth, a "
                "market stream (per-venue funding rows) or a forced order; liquidations count as zero only in those "
                "minutes. Every value only uses data up to its minute's close. Metadata gives, per cascade of the "
                "day, how many minutes before its start the index first reached `lead_threshold`.",
)
def market_stress(context: dg.AssetExecutionContext, config: MarketStressConfig, warehouse: WarehouseResource):
    days = partition_days(context)
    with warehouse.get().writer() as con:
        for start, end in days:
            replace_day(con, "market_stress", start,
                        stress_rows(con, start, end, StressConfig(min_periods=config.min_baseline_minutes)))
        checks = PartitionChecks(con, "market_stress", days)
        results = [
            checks.covers_feed(f"SELECT DISTINCT split_part(symbol, '-', 1) AS asset, minute FROM analytics.book_depth "
                               f"WHERE minute >= $start AND minute < $end AND depth_usd_{TWO_PCT}_mean IS NOT NULL",
                               "SELECT asset, minute FROM analytics.market_stress WHERE day BETWEEN $first AND $last",
                               "asset, minute"),
            checks.violations("values_in_range", "stress_index < 0 OR stress_index > 100 OR coverage < 0 "
                              "OR coverage > 1 OR (stress_index IS NULL AND coverage >= 0.5) "
                              "OR greatest(depth_component, liquidation_component, oi_component, "
                              "funding_component) > 1 OR least(depth_component, liquidation_component, "
                              "oi_component, funding_component) < 0"),
            checks.no_duplicates("asset, minute"),
        ]
        rows = checks.rows()
        leads = stress_lead_times(con, days, config.lead_threshold)
        shown = preview(con, "market_stress", days, ["asset", "minute", "stress_index", "depth_component",
                                                     "liquidation_component", "oi_component", "funding_component"],
                        "stress_index DESC NULLS LAST")
        window = [days[0][0], days[-1][1]]
        series = con.execute("SELECT asset, minute, stress_index FROM analytics.market_stress WHERE minute >= ? "
                             "AND minute < ? ORDER BY 1, 2", window).fetchall()
        spans = con.execute("SELECT cascade_start, cascade_end + INTERVAL 1 MINUTE FROM analytics.liquidation_cascades "
                            "WHERE cascade_start >= ? AND cascade_start < ?", window).fetchall()
    metadata = {"dagster/row_count": rows, "most_stressed_minutes": table_preview(*shown),
                "cascade_lead_minutes": dg.MetadataValue.json(leads), "lead_threshold": config.lead_threshold}
    if series:
        metadata["stress_index"] = png_markdown(lambda ax: (plot_lines(ax, series), shade(ax, spans, "tab:orange")),
                                                f"market stress 0-100, cascades shaded, {days[0][0]:%Y-%m-%d}")
    warehouse.publish_replica_if_due()
    yield dg.MaterializeResult(metadata=metadata)
    yield from results
