"""One-minute OHLCV bars from normalized trades, as DuckDB SQL over ``raw.trades``.

Producer-side duplicates (a replay after a broker reset, a websocket reconnect that resends)
are removed on the natural key (exchange, symbol, trade id, aggregation) before anything is
summed. Off-book prints (Binance insurance-fund and ADL trades) are not market volume and
are left out.
"""

OHLCV_1M_COLUMNS = ("exchange", "symbol", "minute", "open", "high", "low", "close", "vwap", "volume",
                    "quote_volume", "buy_volume", "sell_volume", "trade_count", "day")

OHLCV_1M_SELECT = """
WITH trades AS (
    SELECT * FROM raw.trades
    WHERE ts_exchange >= $start AND ts_exchange < $end
      AND coalesce(trade_type, 'MARKET') = 'MARKET'
    QUALIFY row_number() OVER (PARTITION BY exchange, symbol, trade_id, is_aggregated
                               ORDER BY kafka_partition, kafka_offset) = 1
)
SELECT exchange, symbol,
       time_bucket(INTERVAL '1 minute', ts_exchange) AS minute,
       first(price ORDER BY ts_exchange, first_trade_id, trade_id) AS open,
       max(price) AS high,
       min(price) AS low,
       last(price ORDER BY ts_exchange, first_trade_id, trade_id) AS close,
       sum(price * qty) / sum(qty) AS vwap,
       sum(qty) AS volume,
       sum(price * qty) AS quote_volume,
       coalesce(sum(qty) FILTER (WHERE side = 'buy'), 0) AS buy_volume,
       coalesce(sum(qty) FILTER (WHERE side = 'sell'), 0) AS sell_volume,
       sum(coalesce(last_trade_id - first_trade_id + 1, 1)) AS trade_count,
       CAST(time_bucket(INTERVAL '1 minute', ts_exchange) AS DATE) AS day
FROM trades
GROUP BY exchange, symbol, minute
"""
