"""analytics.adl_events: auto-deleveraging wherever a venue makes it public (analytics.md §9.6).

One row per ADL fill (dYdX ``DELEVERAGED`` trades, GMX ``AUTO_DELEVERAGING`` position changes,
Binance trades marked ``ADL``) or published ADL state (Bybit adlAlert, OKX adl-warning, Binance
symbolAdlRisk), sized in base units and USD like every other table (``warehouse.units``), with
the venue's coverage of ADL (``meta.venue_coverage``) beside it, so a sum over venues says which
parts are complete. SQL: ``warehouse/analytics/adl.py``.
"""

import dagster as dg

from dagster_project.tables import (
    MICROSTRUCTURE,
    Check,
    TableRun,
    no_violations,
    table_asset,
    units_convertible,
)
from warehouse.analytics import adl


def _every_event_kept(run: TableRun) -> dg.AssetCheckResult:
    raw_events, rows = run.count(adl.RAW_EVENTS), run.rows()
    return dg.AssetCheckResult(check_name="every_event_kept", passed=rows == raw_events,
                               metadata={"raw_events": raw_events, "rows": rows})


@table_asset(
    MICROSTRUCTURE, "adl_events",
    deps=[dg.AssetKey(["raw", "adl_events"]), dg.AssetKey(["raw", "instruments"])],
    checks=[
        Check("every_event_kept", "Every raw ADL event of the day has a row (a fill whose size cannot be converted "
                                  "keeps NULL qty/usd and is counted by units_convertible).", _every_event_kept),
        no_violations("values_in_range", "kind is fill or state; fills have a positive price and size where sized; "
                                         "states have none.",
                      "kind NOT IN ('fill', 'state') OR (kind = 'fill' AND (price <= 0 OR qty <= 0 OR usd <= 0)) "
                      "OR (kind = 'state' AND (qty IS NOT NULL OR price IS NOT NULL))"),
        units_convertible("adl_events", where=adl.SIZED_FILLS),
    ],
    description="Auto-deleveraging events per venue (analytics.md §9.6): `kind` fill (a position closed against a "
                "bankrupt one outside the book: dYdX DELEVERAGED, GMX AUTO_DELEVERAGING, Binance trades marked ADL) "
                "or state (a venue's published ADL risk or alert). `side` is the position ADL reduced where the "
                "venue says; `qty` in base units and `usd` at the fill price (warehouse.units); `coverage` is the "
                "venue's coverage of ADL (meta.venue_coverage: complete, sampled, lower bound, unavailable), so a "
                "total over venues says which parts are complete.",
)
def adl_events(run: TableRun) -> dict:
    run.rewrite_each_day(lambda start, end: adl.ADL_EVENTS_SELECT)
    return {"first_events": run.preview(["ts", "exchange", "symbol", "kind", "side", "qty", "usd", "state",
                                         "coverage"], "ts")}
