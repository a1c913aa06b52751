"""One-minute OHLCV bars from normalized trades, as DuckDB SQL over ``raw.trades``.

Producer-side duplicates (a replay after a broker reset, a websocket reconnect that resends)
are removed on the natural key (exchange, symbol, trade id, aggregation) before anything is
summed. Fills a venue forced (``Venue.FORCED_TRADE_TYPES``: Binance insurance-fund and ADL
prints, dYdX liquidation and deleveraging fills) are not market volume and are left out; every
other trade type is a market trade (dYdX's ordinary fills are LIMIT, Bybit has BLOCK/RPI, OKX ELP).

Sizes go through the warehouse's unit macros (``warehouse.units``): volumes are base units and
``quote_volume`` is USD notional (inverse contracts: contracts x USD per contract, exactly).
Trades in contracts of a market without an instrument cannot be converted and are left out; the
table's `units_convertible` check counts them (``warehouse.units.unconvertible_rows`` with ``MARKET_TRADES``).
"""

from ingest.venues import forced_trade_types
from transforms.taker_flow import forced_fill_predicate

# The trades a bar is made of (raw.trades aliased ``r``): every trade but the forced fills (a NULL
# trade_type is an ordinary trade, hence the coalesce).
MARKET_TRADES = f"NOT coalesce({forced_fill_predicate(forced_trade_types())}, FALSE)"

OHLCV_1M_COLUMNS = ("exchange", "symbol", "minute", "open", "high", "low", "close", "vwap", "volume",
                    "quote_volume", "buy_volume", "sell_volume", "trade_count", "day")

OHLCV_1M_SELECT = f"""
WITH trades AS (
    SELECT r.*,
           raw.base_qty(r.qty, r.price, r.qty_unit, unit.contract_size, unit.contract_size_unit) AS base,
           raw.usd_notional(r.qty, r.price, r.qty_unit, unit.contract_size, unit.contract_size_unit) AS usd
    FROM raw.trades AS r LEFT JOIN raw.instrument_units AS unit USING (exchange, symbol)
    WHERE r.ts_exchange >= $start AND r.ts_exchange < $end AND {MARKET_TRADES}
      AND raw.qty_multiplier(r.qty_unit, unit.contract_size, unit.contract_size_unit) IS NOT NULL
    QUALIFY row_number() OVER (PARTITION BY exchange, symbol, trade_id, is_aggregated
                               ORDER BY kafka_partition, kafka_offset) = 1
)
SELECT exchange, symbol,
       time_bucket(INTERVAL '1 minute', ts_exchange) AS minute,
       first(price ORDER BY ts_exchange, first_trade_id, trade_id) AS open,
       max(price) AS high,
       min(price) AS low,
       last(price ORDER BY ts_exchange, first_trade_id, trade_id) AS close,
       sum(usd) / sum(base) AS vwap,
       sum(base) AS volume,
       sum(usd) AS quote_volume,
       coalesce(sum(base) FILTER (WHERE side = 'buy'), 0) AS buy_volume,
       coalesce(sum(base) FILTER (WHERE side = 'sell'), 0) AS sell_volume,
       sum(coalesce(last_trade_id - first_trade_id + 1, 1)) AS trade_count,
       CAST(time_bucket(INTERVAL '1 minute', ts_exchange) AS DATE) AS day
FROM trades
GROUP BY exchange, symbol, minute
"""

# Each symbol's close relative to its first close of the window, for the day's picture.
RELATIVE_CLOSE = """
SELECT symbol, minute, close / first(close) OVER (PARTITION BY symbol ORDER BY minute)
FROM analytics.ohlcv_1m WHERE minute >= $start AND minute < $end ORDER BY symbol, minute
"""
