"""analytics.market_stress: a per-minute 0-100 index per base asset, built to rise ahead of and
during liquidation cascades (transforms.market_stress)."""

import datetime as dt

import numpy as np
import pyarrow as pa

from transforms.market_stress import StressConfig, lead_time_minutes, market_stress_index
from transforms.open_interest import asof_values
from warehouse.analytics.common import DAY, arrow_rows, days_of, epoch, fetch, groups, timestamps
from warehouse.analytics.depth import TWO_PCT
from warehouse.analytics.derivatives import WEIGHT_TOLERANCE_S

# Per asset and minute, each input as the index consumes it (sums in a fixed order, so a rewrite
# reproduces every bit). "feed" marks the minutes the market stream was up: Binance sends forced
# orders on the connection that carries markPrice, so only then does "no liquidation" mean zero.
# Depth stays per book (venue and symbol): each book is compared with its own baseline, so a venue
# missing for some minutes is not read as depth withdrawn (transforms.market_stress).
INPUTS = {
    "depth": f"""SELECT split_part(symbol, '-', 1) AS asset, epoch(minute) AS ts, exchange || '/' || symbol AS book,
                       depth_usd_{TWO_PCT}_mean AS value
                FROM analytics.book_depth WHERE minute >= $lo AND minute < $end ORDER BY book, ts""",
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
        book_of_row = inputs["depth"]["book"][rows["depth"]]
        books = sorted(set(book_of_row))
        depth = np.empty((grid.size, 0))
        if books:
            depth = np.column_stack([_on_grid(grid, inputs["depth"], rows["depth"][book_of_row == book], np.nan)
                                     for book in books])
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
            "depth_2pct_usd": _sum_present(depth[today]), "depth_books": stress.depth_books[today].sum(axis=1),
            "depth_book_names": [",".join(b for b, used in zip(books, row, strict=True) if used)
                                 for row in stress.depth_books[today].tolist()],
            "liquidated_usd": liquidated[today], "oi_usd": oi[today],
            "funding_8h": funding[today], "day": days_of(grid[today]),
        }))
    return parts


def _sum_present(depth_by_book: np.ndarray) -> np.ndarray:
    """Depth of all books present in each minute; NaN where none is."""
    return np.where(np.isfinite(depth_by_book).any(axis=1), np.nansum(depth_by_book, axis=1), np.nan)


def _on_grid(grid: np.ndarray, data: dict, rows: np.ndarray, fill: float) -> np.ndarray:
    """The input's values at the grid minutes it has; ``fill`` elsewhere."""
    values = np.full(grid.size, fill)
    ts = data["ts"][rows]
    at = np.minimum(np.searchsorted(grid, ts), grid.size - 1)
    hit = grid[at] == ts
    values[at[hit]] = data["value"][rows][hit]
    return values


def stress_lead_times(con, start: dt.datetime, end: dt.datetime, threshold: float) -> list[dict]:
    """For each cascade of the days [start, end): minutes between the index first reaching ``threshold``
    (within 6 h before) and the cascade start; NaN if it never did. A minute's value is only known
    when the minute closes, so that is when it counts."""
    cascades = con.execute("SELECT asset, side, cascade_start FROM analytics.liquidation_cascades WHERE day >= ? "
                           "AND day < ? ORDER BY cascade_start", [start, end]).fetchall()
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


# Feed keys the index must cover: every asset and minute with 2 % depth.
DEPTH_MINUTES = (f"SELECT DISTINCT split_part(symbol, '-', 1) AS asset, minute FROM analytics.book_depth "
                 f"WHERE minute >= $start AND minute < $end AND depth_usd_{TWO_PCT}_mean IS NOT NULL")

# Pictures: the index per asset and the cascades' spans (to the end of their last minute).
STRESS_SERIES = """
SELECT asset, minute, stress_index FROM analytics.market_stress WHERE minute >= $start AND minute < $end ORDER BY 1, 2
"""
CASCADE_MINUTES = """
SELECT cascade_start, cascade_end + INTERVAL 1 MINUTE FROM analytics.liquidation_cascades
WHERE cascade_start >= $start AND cascade_start < $end
"""
