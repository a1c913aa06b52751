"""analytics.ohlcv_1m: one-minute bars per exchange and symbol, one partition per UTC day."""

import datetime as dt

import dagster as dg

from dagster_project.charts import png_markdown, table_preview
from dagster_project.partitions import daily_partitions
from dagster_project.resources import WarehouseResource
from dagster_project.units_check import UNITS_CHECK, units_check_result
from transforms.ohlcv import MARKET_TRADES, OHLCV_1M_SELECT
from warehouse.units import unconvertible_rows

CHECKS = [
    dg.AssetCheckSpec("one_row_per_minute", asset=["analytics", "ohlcv_1m"],
                      description="No duplicate (exchange, symbol, minute)."),
    dg.AssetCheckSpec("prices_consistent", asset=["analytics", "ohlcv_1m"],
                      description="low <= open, close <= high; buy + sell = volume; vwap within [low, high]."),
    *(dg.AssetCheckSpec(name, asset=["analytics", "ohlcv_1m"], description=description)
      for name, description in UNITS_CHECK.items()),
]


@dg.asset(
    key=["analytics", "ohlcv_1m"],
    deps=[dg.AssetKey(["raw", "trades"]), dg.AssetKey(["raw", "instruments"])],
    partitions_def=daily_partitions,
    pool="duckdb_writer",
    group_name="analytics",
    kinds={"duckdb"},
    check_specs=CHECKS,
    backfill_policy=dg.BackfillPolicy.single_run(),
    description="One-minute OHLCV per exchange and symbol: open/high/low/close, VWAP, volume in base units, quote "
                "volume in USD, taker buy and sell volume in base units, venue trade count. Sizes in contracts are "
                "converted with the market's instrument (warehouse.units: linear qty × contract size; inverse "
                "qty × USD per contract / price, USD exactly qty × USD per contract); trades that cannot be "
                "converted are left out and counted by the `units_convertible` check. Trades are de-duplicated on "
                "their natural key and off-book prints (insurance fund, ADL) excluded. Each UTC day is rewritten "
                "with delete+insert.",
)
def ohlcv_1m(context: dg.AssetExecutionContext, warehouse: WarehouseResource):
    start, end = context.partition_time_window
    start, end = start.replace(tzinfo=None), end.replace(tzinfo=None)
    with warehouse.get().writer() as con:
        con.execute("BEGIN")
        con.execute("DELETE FROM analytics.ohlcv_1m WHERE minute >= $start AND minute < $end",
                    {"start": start, "end": end})
        con.execute(f"INSERT INTO analytics.ohlcv_1m BY NAME {OHLCV_1M_SELECT}", {"start": start, "end": end})
        con.execute("COMMIT")
        window = {"start": start, "end": end}
        rows = con.execute("SELECT count(*) FROM analytics.ohlcv_1m WHERE minute >= $start AND minute < $end",
                           window).fetchone()[0]
        duplicates = con.execute("""SELECT count(*) FROM (SELECT exchange, symbol, minute FROM analytics.ohlcv_1m
                                    WHERE minute >= $start AND minute < $end GROUP BY ALL HAVING count(*) > 1)""",
                                 window).fetchone()[0]
        inconsistent = con.execute("""SELECT count(*) FROM analytics.ohlcv_1m WHERE minute >= $start AND minute < $end
                                      AND NOT (low <= least(open, close) AND greatest(open, close) <= high
                                               AND abs(buy_volume + sell_volume - volume) <= 1e-9 * volume
                                               AND vwap BETWEEN low * (1 - 1e-12) AND high * (1 + 1e-12))""",
                                   window).fetchone()[0]
        preview_cols = ["exchange", "symbol", "minute", "open", "high", "low", "close", "volume", "trade_count"]
        preview = con.execute(f"SELECT {', '.join(preview_cols)} FROM analytics.ohlcv_1m WHERE minute >= $start "
                              "AND minute < $end ORDER BY exchange, symbol, minute LIMIT 10", window).fetchall()
        series = con.execute("SELECT symbol, minute, close / first(close) OVER (PARTITION BY symbol ORDER BY minute) "
                             "FROM analytics.ohlcv_1m WHERE minute >= $start AND minute < $end ORDER BY symbol, minute",
                             window).fetchall()
        unconvertible = unconvertible_rows(con, "trades", start, end, where=MARKET_TRADES)
    warehouse.publish_replica_if_due()
    metadata = {"dagster/row_count": rows, "preview": table_preview(preview_cols, preview),
                "symbols": len({s for s, _, _ in series})}
    if series:
        metadata["close_vs_open_of_day"] = png_markdown(lambda ax: _plot_relative_close(ax, series),
                                                        f"close / first close, {start:%Y-%m-%d}")
    yield dg.MaterializeResult(metadata=metadata)
    yield dg.AssetCheckResult(check_name="one_row_per_minute", passed=duplicates == 0,
                              metadata={"duplicate_keys": duplicates})
    yield dg.AssetCheckResult(check_name="prices_consistent", passed=inconsistent == 0,
                              metadata={"inconsistent_rows": inconsistent})
    yield units_check_result(unconvertible)


def _plot_relative_close(ax, series: list[tuple[str, dt.datetime, float]]) -> None:
    by_symbol: dict[str, tuple[list, list]] = {}
    for symbol, minute, rel in series:
        xs, ys = by_symbol.setdefault(symbol, ([], []))
        xs.append(minute)
        ys.append(rel)
    for symbol, (xs, ys) in sorted(by_symbol.items())[:8]:
        ax.plot(xs, ys, label=symbol, linewidth=0.8)
    ax.legend(fontsize=6)
