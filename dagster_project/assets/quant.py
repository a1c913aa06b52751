"""Issue 5 assets: price history, quant metrics, support/resistance, trading signals and their record.

The price history (candles_1d, candles_1h) is rebuilt whole on each run. Everything downstream is
daily-partitioned by as-of UTC day (hourly tables hold that day's bars), rewrites its partitions
with delete+insert in one transaction, and backfills any range in one run. The computation lives
in ``quant_compute``; these functions only add Dagster metadata.
"""

import dagster as dg

from dagster_project.assets import quant_compute as qc
from dagster_project.charts import png_markdown, table_preview
from dagster_project.partitions import daily_partitions
from dagster_project.resources import WarehouseResource

OHLCV_1M = dg.AssetKey(["analytics", "ohlcv_1m"])
CANDLES_1D = dg.AssetKey(["analytics", "candles_1d"])
CANDLES_1H = dg.AssetKey(["analytics", "candles_1h"])
# A backfill copies materialization metadata into every partition of its range; pictures go on
# one observation instead when the range is longer than this.
MAX_CHART_PARTITIONS = 7

raw_candles = dg.AssetSpec(
    ["raw", "candles"], group_name="raw", kinds={"duckdb"},
    description="raw.candles: historical exchange candles (1d, 1h) loaded by `perpflow import-candles`; "
                "re-importing a file replaces its bars.")


def _asset(name: str, spec: qc.TableSpec, deps: list[dg.AssetKey], description: str):
    key = ["analytics", name]
    checks = [dg.AssetCheckSpec("unique_key", asset=key, description=f"No duplicate ({', '.join(spec.key)}).")]
    checks += [dg.AssetCheckSpec(check, asset=key, description=text) for check, (text, _) in spec.invariants.items()]
    # single_run on the unpartitioned price history too: `dagster asset materialize --partition-range`
    # refuses a selection where any asset lacks it.
    return dg.asset(key=key, deps=deps, pool="duckdb_writer", group_name="quant", kinds={"duckdb"},
                    check_specs=checks, description=description, backfill_policy=dg.BackfillPolicy.single_run(),
                    partitions_def=None if spec.time_column is None else daily_partitions)


def _rewrite(context: dg.AssetExecutionContext, warehouse: WarehouseResource, spec: qc.TableSpec, compute,
             charts=None):
    """Run ``compute(con, start, end)`` -> rows (start/end None for a whole-table rebuild), replace
    the table or partition range with them, yield the results."""
    start, end = (None, None) if spec.time_column is None else (
        t.replace(tzinfo=None) for t in context.partition_time_window)
    with warehouse.get().writer() as con:
        report = qc.replace_rows(con, spec, compute(con, start, end), start, end)
    partitions = 1 if spec.time_column is None else len(context.partition_keys)
    # A backfill is rare and its user queries right after; routine runs keep the publish rate limit.
    warehouse.publish_replica_if_due(force=partitions > 1)
    metadata = {"preview": table_preview(list(spec.preview), report.preview)}
    metadata.update({"dagster/row_count": report.rows} if partitions == 1 else
                    {"rows_in_run": report.rows, "partitions_in_run": partitions})
    pictures = {name: png_markdown(draw, title) for name, (title, draw) in (charts or {}).items()}
    if partitions <= MAX_CHART_PARTITIONS:
        metadata.update(pictures)
    elif pictures:
        context.log_event(dg.AssetObservation(asset_key=context.asset_key, partition=context.partition_keys[-1],
                                              metadata=pictures))
        metadata["charts"] = f"on the observation of partition {context.partition_keys[-1]}"
    yield dg.MaterializeResult(metadata=metadata)
    for check, violations in report.violations.items():
        yield dg.AssetCheckResult(check_name=check, passed=violations == 0, metadata={"violating_rows": violations})


@_asset("candles_1d", qc.CANDLES_1D, [OHLCV_1M, raw_candles.key],
        "Daily OHLCV per exchange and symbol, the price history of the quant assets: imported candles "
        "(raw.candles, preferred where both exist) plus complete days resampled from analytics.ohlcv_1m. "
        "ts = bar open (UTC). Rebuilt whole on each run.")
def candles_1d(context: dg.AssetExecutionContext, warehouse: WarehouseResource):
    yield from _rewrite(context, warehouse, qc.CANDLES_1D, lambda con, start, end: qc.price_history_select(qc.DAILY))


@_asset("candles_1h", qc.CANDLES_1H, [OHLCV_1M, raw_candles.key],
        "Hourly OHLCV per exchange and symbol: imported candles (preferred) plus complete hours resampled from "
        "analytics.ohlcv_1m. Rebuilt whole on each run.")
def candles_1h(context: dg.AssetExecutionContext, warehouse: WarehouseResource):
    yield from _rewrite(context, warehouse, qc.CANDLES_1H, lambda con, start, end: qc.price_history_select(qc.HOURLY))


@_asset("quantmetrics", qc.QUANTMETRICS, [CANDLES_1D],
        "Risk/return metrics of daily returns (analytics.md §2.3, A = 365) per symbol, as-of day and trailing window "
        "(30d, 90d, 365d, all): Sharpe, Sortino, volatility, max drawdown, CAGR (flagged under a year), Calmar, "
        "omega/profit factor, historical VaR/CVaR 95%, skew, kurtosis, best/worst day and month, tail ratio. "
        "NULL where under 90% of the window's returns exist.")
def quantmetrics(context: dg.AssetExecutionContext, warehouse: WarehouseResource):
    def compute(con, start, end):
        return qc.arrow_table(qc.quantmetrics_columns(qc.load_bars(con, qc.DAILY, end), start, end))

    yield from _rewrite(context, warehouse, qc.QUANTMETRICS, compute)


@_asset("support_resistance_levels", qc.LEVELS, [CANDLES_1D, CANDLES_1H],
        "Support/resistance as of each day's last bar, daily and hourly timeframes (analytics.md §4): swing pivots "
        "clustered into at most 5 levels per side with strength 0-100 (touches, volume, recency), touches, last "
        "touch, kind vs the last close and distance; plus classic pivot points (P, R1-R3, S1-S3) from the day's "
        "high/low/close as method pivot_classic.")
def support_resistance_levels(context: dg.AssetExecutionContext, warehouse: WarehouseResource):
    charts = {}

    def compute(con, start, end):
        result = qc.levels_rows({tf.name: qc.load_bars(con, tf, end) for tf in qc.TIMEFRAMES}, start, end)
        for (exchange, symbol), (history, rows) in sorted(result.latest.items())[:4]:
            charts[f"levels_{exchange}_{symbol}"] = (
                f"{symbol} {exchange} daily close and levels as of {rows[0]['day']}",
                lambda ax, history=history, rows=rows: qc.plot_levels(ax, history, rows))
        return qc.rows_table(result.rows)

    yield from _rewrite(context, warehouse, qc.LEVELS, compute, charts)


def _signals_asset(context, warehouse: WarehouseResource, tf: qc.Timeframe, spec: qc.TableSpec):
    charts = {}

    def compute(con, start, end):
        result = qc.signal_columns(qc.load_bars(con, tf, end), tf, start, end)
        if result.curves:
            charts["equity_vs_holding"] = (f"{tf.name} signals vs holding, growth of 1 since warm-up",
                                           lambda ax: qc.plot_equity(ax, result.curves))
        return qc.arrow_table(result.columns)

    yield from _rewrite(context, warehouse, spec, compute, charts)


@_asset("trading_signals", qc.TRADING_SIGNALS, [CANDLES_1D],
        "Daily trend signals (analytics.md §5): five votes (SuperTrend 10/3, EMA20>EMA50, close>SMA200, Donchian "
        "20/10, MACD histogram), a hysteresis state token_trend, the flip event trading_signal (1, -1, 0), "
        "confidence, and cumulative strategy vs holding returns. Computed at bar close, acted on at the next bar; "
        "rows start after warm-up.")
def trading_signals(context: dg.AssetExecutionContext, warehouse: WarehouseResource):
    yield from _signals_asset(context, warehouse, qc.DAILY, qc.TRADING_SIGNALS)


@_asset("hourly_trading_signals", qc.HOURLY_TRADING_SIGNALS, [CANDLES_1H],
        "The daily signal model on hourly bars (SMA200 = 200 hours); a day's partition holds its hours.")
def hourly_trading_signals(context: dg.AssetExecutionContext, warehouse: WarehouseResource):
    yield from _signals_asset(context, warehouse, qc.HOURLY, qc.HOURLY_TRADING_SIGNALS)


@_asset("signal_performance", qc.SIGNAL_PERFORMANCE, [CANDLES_1D, CANDLES_1H],
        "Track record of trading_signals (1d) and hourly_trading_signals (1h) as of each day: hit rates of flip "
        "events over 1/3/7 days or 4/24 hours with Wilson 95% intervals, flip-to-flip trade win rate and profit "
        "factor, strategy vs holding return, Sharpe and drawdown. Recomputes the signals from the candles with "
        "the same code, so it never depends on which signal partitions exist.")
def signal_performance(context: dg.AssetExecutionContext, warehouse: WarehouseResource):
    def compute(con, start, end):
        rows = qc.performance_rows({tf.name: qc.load_bars(con, tf, end) for tf in qc.TIMEFRAMES}, start, end)
        return qc.rows_table(rows)

    yield from _rewrite(context, warehouse, qc.SIGNAL_PERFORMANCE, compute)


QUANT_ASSETS = [raw_candles, candles_1d, candles_1h, quantmetrics, support_resistance_levels, trading_signals,
                hourly_trading_signals, signal_performance]
