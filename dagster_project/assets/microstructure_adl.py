"""analytics.adl_events: auto-deleveraging wherever a venue makes it public (analytics.md §9.6).

One row per ADL fill (dYdX ``DELEVERAGED`` trades, GMX ``AUTO_DELEVERAGING`` position changes,
Binance trades marked ``ADL``) or published ADL state (Bybit adlAlert, OKX adl-warning, Binance
symbolAdlRisk), sized in base units and USD like every other table (``warehouse.units``), with
the venue's coverage of ADL (``meta.venue_coverage``) beside it, so a sum over venues says which
parts are complete.
"""

import dagster as dg

from dagster_project.assets.microstructure_common import (
    PartitionChecks,
    daily_asset,
    partition_days,
    preview,
    replace_day,
)
from dagster_project.charts import table_preview
from dagster_project.resources import WarehouseResource
from dagster_project.units_check import UNITS_CHECK, units_check_result
from warehouse.units import UNIT_JOIN, unconvertible_rows

ADL_EVENTS = ["analytics", "adl_events"]

# A fill without a size (a venue that publishes ADL without one) keeps NULL qty and usd; a state
# has none. One event loaded twice is one event: the whole row is the key.
ADL_EVENTS_SELECT = f"""
SELECT DISTINCT r.ts_exchange AS ts, exchange, symbol, split_part(symbol, '-', 1) AS asset, r.event AS kind,
       r.deleveraged_position AS side,
       raw.base_qty(r.qty, r.price, r.qty_unit, unit.contract_size, unit.contract_size_unit) AS qty,
       r.price,
       raw.usd_notional(r.qty, r.price, r.qty_unit, unit.contract_size, unit.contract_size_unit) AS usd,
       r.state, r.trade_id, r.detail,
       coalesce(cov.coverage, 'unavailable') AS coverage,
       CAST(r.ts_exchange AS DATE) AS day
FROM raw.adl_events AS r {UNIT_JOIN}
     LEFT JOIN meta.venue_coverage AS cov ON cov.exchange = r.exchange AND cov.data = 'adl'
WHERE r.ts_exchange >= $start AND r.ts_exchange < $end
"""

ADL_CHECKS = {
    "every_event_kept": "Every raw ADL event of the day has a row (a fill whose size cannot be converted keeps "
                        "NULL qty/usd and is counted by units_convertible).",
    "values_in_range": "kind is fill or state; fills have a positive price and size where sized; states have none.",
    **UNITS_CHECK,
}


@daily_asset(
    ADL_EVENTS, ADL_CHECKS,
    deps=[dg.AssetKey(["raw", "adl_events"]), dg.AssetKey(["raw", "instruments"])],
    description="Auto-deleveraging events per venue (analytics.md §9.6): `kind` fill (a position closed against a "
                "bankrupt one outside the book: dYdX DELEVERAGED, GMX AUTO_DELEVERAGING, Binance trades marked ADL) "
                "or state (a venue's published ADL risk or alert). `side` is the position ADL reduced where the "
                "venue says; `qty` in base units and `usd` at the fill price (warehouse.units); `coverage` is the "
                "venue's coverage of ADL (meta.venue_coverage: complete, sampled, lower bound, unavailable), so a "
                "total over venues says which parts are complete.",
)
def adl_events(context: dg.AssetExecutionContext, warehouse: WarehouseResource):
    days = partition_days(context)
    with warehouse.get().writer() as con:
        for start, end in days:
            rows = con.sql(ADL_EVENTS_SELECT, params={"start": start, "end": end}).to_arrow_table()
            replace_day(con, "adl_events", start, [rows])
        checks = PartitionChecks(con, "adl_events", days)
        window = {"start": days[0][0], "end": days[-1][1]}
        raw_events = con.execute("SELECT count(*) FROM (SELECT DISTINCT * EXCLUDE (ts_recv, "
                                 "kafka_partition, kafka_offset) FROM raw.adl_events WHERE ts_exchange >= $start "
                                 "AND ts_exchange < $end)", window).fetchone()[0]
        rows = checks.rows()
        results = [
            dg.AssetCheckResult(check_name="every_event_kept", passed=rows == raw_events,
                                metadata={"raw_events": raw_events, "rows": rows}),
            checks.violations("values_in_range", "kind NOT IN ('fill', 'state') "
                                                 "OR (kind = 'fill' AND (price <= 0 OR qty <= 0 OR usd <= 0)) "
                                                 "OR (kind = 'state' AND (qty IS NOT NULL OR price IS NOT NULL))"),
            units_check_result(unconvertible_rows(con, "adl_events", days[0][0], days[-1][1],
                                                  where="r.event = 'fill' AND r.qty IS NOT NULL")),
        ]
        shown = preview(con, "adl_events", days, ["ts", "exchange", "symbol", "kind", "side", "qty", "usd",
                                                  "state", "coverage"], "ts")
    warehouse.publish_replica_if_due()
    yield dg.MaterializeResult(metadata={"dagster/row_count": rows, "first_events": table_preview(*shown)})
    yield from results
