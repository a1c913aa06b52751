"""analytics.ohlcv_1m: one-minute bars per exchange and symbol, one partition per UTC day.
SQL: ``warehouse/analytics/ohlcv.py``."""

import dagster as dg

from dagster_project.tables import (
    ANALYTICS,
    Picture,
    TableRun,
    no_duplicates,
    no_violations,
    table_asset,
    units_convertible,
)
from transforms import figures
from warehouse.analytics import ohlcv


@table_asset(
    ANALYTICS, "ohlcv_1m", partition_column="minute",
    deps=[dg.AssetKey(["raw", "trades"]), dg.AssetKey(["raw", "instruments"])],
    checks=[
        no_duplicates("exchange, symbol, minute", name="one_row_per_minute",
                      description="No duplicate (exchange, symbol, minute).", show_key=False),
        no_violations("prices_consistent", "low <= open, close <= high; buy + sell = volume; vwap within [low, high].",
                      "NOT (low <= least(open, close) AND greatest(open, close) <= high "
                      "AND abs(buy_volume + sell_volume - volume) <= 1e-9 * volume "
                      "AND vwap BETWEEN low * (1 - 1e-12) AND high * (1 + 1e-12))", counted_as="inconsistent_rows"),
        units_convertible("trades", where=ohlcv.MARKET_TRADES),
    ],
    description="One-minute OHLCV per exchange and symbol: open/high/low/close, VWAP, volume in base units, quote "
                "volume in USD, taker buy and sell volume in base units, venue trade count. Sizes in contracts are "
                "converted with the market's instrument (warehouse.units: linear qty × contract size; inverse "
                "qty × USD per contract / price, USD exactly qty × USD per contract); trades that cannot be "
                "converted are left out and counted by the `units_convertible` check. Trades are de-duplicated on "
                "their natural key and the fills each venue marks as forced (Venue.FORCED_TRADE_TYPES: Binance "
                "insurance fund and ADL prints, dYdX liquidations and deleveraging) excluded; every other trade "
                "type (dYdX LIMIT fills, Bybit BLOCK/RPI, OKX ELP) counts. Each UTC day is rewritten "
                "with delete+insert.",
)
def ohlcv_1m(run: TableRun) -> dict:
    run.rewrite(ohlcv.OHLCV_1M_SELECT)
    series = run.query(ohlcv.RELATIVE_CLOSE)
    metadata = {"preview": run.preview(["exchange", "symbol", "minute", "open", "high", "low", "close", "volume",
                                        "trade_count"], "exchange, symbol, minute"),
                "symbols": len({symbol for symbol, _, _ in series})}
    if series:
        title = f"close / first close, {run.start:%Y-%m-%d}"
        metadata["close_vs_open_of_day"] = Picture(title, figures.lines(series, title))
    return metadata
