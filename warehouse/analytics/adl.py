"""analytics.adl_events: auto-deleveraging wherever a venue makes it public (analytics.md §9.6)."""

from __future__ import annotations

from warehouse.units import UNIT_JOIN

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

# The distinct raw events of [$start, $end): what the table must hold one row for.
RAW_EVENTS = """
SELECT count(*) FROM (SELECT DISTINCT * EXCLUDE (ts_recv, kafka_partition, kafka_offset) FROM raw.adl_events
                      WHERE ts_exchange >= $start AND ts_exchange < $end)
"""

# ADL fills whose size the units check accounts for (states carry none).
SIZED_FILLS = "r.event = 'fill' AND r.qty IS NOT NULL"
