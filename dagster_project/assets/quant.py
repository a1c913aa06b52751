"""Issue 5 assets: price history, quant metrics, support/resistance, trading signals and their record.

The price history (candles_1d, candles_1h) is rebuilt whole on each run. Everything downstream is
daily-partitioned by as-of UTC day (hourly tables hold that day's bars), rewrites its partitions
with delete+insert in one transaction, and backfills any range in one run. The computation lives
in ``warehouse/analytics/quant.py``; these declarations add the checks and the metadata.
"""

import dagster as dg

from dagster_project.tables import QUANT, Picture, TableRun, holds_for_every_row, no_duplicates, table_asset
from transforms import figures
from warehouse.analytics import quant
from warehouse.analytics.common import arrow_rows, rows_table

OHLCV_1M = dg.AssetKey(["analytics", "ohlcv_1m"])
CANDLES_1D = dg.AssetKey(["analytics", "candles_1d"])
CANDLES_1H = dg.AssetKey(["analytics", "candles_1h"])

raw_candles = dg.AssetSpec(
    ["raw", "candles"], group_name="raw", kinds={"duckdb"},
    description="raw.candles: historical exchange candles (1d, 1h) loaded by `perpflow import-candles`; re-importing "
                "a file replaces its bars.")


def unique_key(*columns: str):
    key = ", ".join(columns)
    return no_duplicates(key, name="unique_key", description=f"No duplicate ({key}).", counted_as="violating_rows",
                         show_key=False)


OHLC_CONSISTENT = holds_for_every_row(
    "ohlc_consistent", "low <= min(open, close) <= max(open, close) <= high, volume >= 0.",
    "low <= least(open, close) AND greatest(open, close) <= high AND volume >= 0")
SIGNAL_CHECKS = [
    unique_key("exchange", "symbol", "ts"),
    holds_for_every_row("signal_values", "trading_signal and token_trend in {-1, 0, 1}; a non-zero signal equals the "
                                         "new trend; confidence in [0, 1].",
                        "trading_signal IN (-1, 0, 1) AND token_trend IN (-1, 0, 1) "
                        "AND (trading_signal = 0 OR trading_signal = token_trend) AND confidence BETWEEN 0 AND 1"),
    holds_for_every_row("votes_complete", "Every vote is defined on a signal row (rows start after warm-up) and score "
                                          "= sum / 5.",
                        "abs(score * 5 - (vote_supertrend + vote_ema_cross + vote_sma_regime + vote_donchian "
                        "+ vote_macd)) < 1e-9"),
]
CANDLE_PREVIEW = ["exchange", "symbol", "ts", "open", "high", "low", "close", "volume", "source"]
SIGNAL_PREVIEW = ["exchange", "symbol", "ts", "close", "score", "token_trend", "trading_signal", "confidence",
                  "trading_signals_returns", "holding_returns"]


@table_asset(QUANT, "candles_1d", partition_column=None, deps=[OHLCV_1M, raw_candles.key],
             checks=[unique_key("exchange", "symbol", "ts"), OHLC_CONSISTENT],
             description="Daily OHLCV per exchange and symbol, the price history of the quant assets: imported "
                         "candles (raw.candles, preferred where both exist) plus complete days resampled from "
                         "analytics.ohlcv_1m. ts = bar open (UTC). Rebuilt whole on each run.")
def candles_1d(run: TableRun) -> dict:
    run.rewrite(quant.price_history_select(quant.DAILY))
    return {"preview": run.preview(CANDLE_PREVIEW, "ts DESC, exchange DESC, symbol DESC")}


@table_asset(QUANT, "candles_1h", partition_column=None, deps=[OHLCV_1M, raw_candles.key],
             checks=[unique_key("exchange", "symbol", "ts"), OHLC_CONSISTENT],
             description="Hourly OHLCV per exchange and symbol: imported candles (preferred) plus complete hours "
                         "resampled from analytics.ohlcv_1m. Rebuilt whole on each run.")
def candles_1h(run: TableRun) -> dict:
    run.rewrite(quant.price_history_select(quant.HOURLY))
    return {"preview": run.preview(CANDLE_PREVIEW, "ts DESC, exchange DESC, symbol DESC")}


@table_asset(
    QUANT, "quantmetrics", partition_column="as_of", deps=[CANDLES_1D],
    checks=[
        unique_key("exchange", "symbol", "as_of", "lookback"),
        holds_for_every_row("null_iff_under_covered", "Metrics are NULL exactly where the window is under 90% covered.",
                            # the transform's rule: at least ceil(90 % of the window) returns
                            "CASE WHEN lookback_days > 0 AND n_returns >= ceil(0.9 * lookback_days - 1e-9) "
                            "THEN total_return IS NOT NULL AND max_drawdown IS NOT NULL AND best_month IS NOT NULL "
                            "AND (n_returns < 2 OR volatility IS NOT NULL) "
                            "ELSE sharpe IS NULL AND volatility IS NULL AND total_return IS NULL END"),
        holds_for_every_row("values_in_range", "max_drawdown in [-1, 0], volatility >= 0, coverage in [0, 1], worst <= "
                                               "best, cvar_95 <= var_95.",
                            "coverage BETWEEN 0 AND 1 AND coalesce(max_drawdown BETWEEN -1 AND 0, true) "
                            "AND coalesce(volatility >= 0, true) AND coalesce(worst <= best, true) "
                            "AND coalesce(cvar_95 <= var_95 + 1e-12, true)"),
    ],
    description="Risk/return metrics of daily returns (analytics.md §2.3, A = 365) per symbol, as-of day and trailing "
                "window (30d, 90d, 365d, all): Sharpe, Sortino, volatility, max drawdown, CAGR (flagged under a "
                "year), Calmar, omega/profit factor, historical VaR/CVaR 95%, skew, kurtosis, best/worst day and "
                "month, tail ratio. NULL where under 90% of the window's returns exist.",
)
def quantmetrics(run: TableRun) -> dict:
    run.rewrite(arrow_rows(quant.quantmetrics_columns(quant.load_bars(run.con, quant.DAILY, run.end), run.start,
                                                      run.end)))
    return {"preview": run.preview(["exchange", "symbol", "as_of", "lookback", "coverage", "sharpe", "volatility",
                                    "max_drawdown", "cagr", "best_month", "worst_month"],
                                   "as_of DESC, exchange DESC, symbol DESC, lookback DESC")}


@table_asset(
    QUANT, "support_resistance_levels", deps=[CANDLES_1D, CANDLES_1H],
    checks=[
        unique_key("exchange", "symbol", "timeframe", "day", "method", "name"),
        holds_for_every_row("strength_in_range", "Swing levels have strength in [0, 100] and touches >= pivots >= 1.",
                            f"method <> '{quant.SWING_METHOD}' OR (strength BETWEEN 0 AND 100 AND pivots >= 1 "
                            "AND touches >= pivots)"),
        holds_for_every_row("kind_matches_price", "kind is support below the last close and resistance otherwise.",
                            "kind = CASE WHEN price < close THEN 'support' ELSE 'resistance' END "
                            "AND abs(distance_pct - (price / close - 1) * 100) < 1e-9"),
    ],
    description="Support/resistance as of each day's last bar, daily and hourly timeframes (analytics.md §4): swing "
                "pivots clustered into at most 5 levels per side with strength 0-100 (touches, volume, recency), "
                "touches, last touch, kind vs the last close and distance; plus classic pivot points (P, R1-R3, "
                "S1-S3) from the day's high/low/close as method pivot_classic.",
)
def support_resistance_levels(run: TableRun) -> dict:
    result = quant.levels_rows({tf.name: quant.load_bars(run.con, tf, run.end) for tf in quant.TIMEFRAMES},
                               run.start, run.end)
    run.rewrite(rows_table(result.rows))
    metadata = {"preview": run.preview(["exchange", "symbol", "timeframe", "day", "method", "name", "price", "kind",
                                        "strength", "touches", "distance_pct"],
                                       "day DESC, exchange DESC, symbol DESC, timeframe DESC, method DESC, name DESC")}
    for (exchange, symbol), (history, rows) in sorted(result.latest.items())[:4]:
        title = f"{symbol} {exchange} daily close and levels as of {rows[0]['day']}"
        metadata[f"levels_{exchange}_{symbol}"] = Picture(title, figures.levels(
            history.ts, history.close, rows, title, swing_method=quant.SWING_METHOD))
    return metadata


def _signals(run: TableRun, tf: quant.Timeframe) -> dict:
    result = quant.signal_columns(quant.load_bars(run.con, tf, run.end), tf, run.start, run.end)
    run.rewrite(arrow_rows(result.columns))
    metadata = {"preview": run.preview(SIGNAL_PREVIEW, "day DESC, exchange DESC, symbol DESC, ts DESC")}
    if result.curves:
        title = f"{tf.name} signals vs holding, growth of 1 since warm-up"
        metadata["equity_vs_holding"] = Picture(title, figures.equity(result.curves, title))
    return metadata


@table_asset(QUANT, "trading_signals", deps=[CANDLES_1D], checks=SIGNAL_CHECKS,
             description="Daily trend signals (analytics.md §5): five votes (SuperTrend 10/3, EMA20>EMA50, "
                         "close>SMA200, Donchian 20/10, MACD histogram), a hysteresis state token_trend, the flip "
                         "event trading_signal (1, -1, 0), confidence, and cumulative strategy vs holding returns. "
                         "Computed at bar close, acted on at the next bar; rows start after warm-up.")
def trading_signals(run: TableRun) -> dict:
    return _signals(run, quant.DAILY)


@table_asset(QUANT, "hourly_trading_signals", deps=[CANDLES_1H], checks=SIGNAL_CHECKS,
             description="The daily signal model on hourly bars (SMA200 = 200 hours); a day's partition holds its "
                         "hours.")
def hourly_trading_signals(run: TableRun) -> dict:
    return _signals(run, quant.HOURLY)


@table_asset(
    QUANT, "signal_performance", deps=[CANDLES_1D, CANDLES_1H],
    checks=[
        unique_key("exchange", "symbol", "timeframe", "day", "horizon"),
        holds_for_every_row("rates_in_range", "Hit and win rates lie in [0, 1] inside their Wilson intervals; hits <= "
                                              "events.",
                            # 1e-12: at a rate of 0 or 1 the Wilson bound equals the rate up to rounding
                            "hits <= events AND events <= n_signals AND coalesce(hit_ci_low <= hit_rate + 1e-12 AND "
                            "hit_rate <= hit_ci_high + 1e-12 AND hit_ci_low >= 0 AND hit_ci_high <= 1, events = 0) "
                            "AND coalesce(win_ci_low <= win_rate + 1e-12 AND win_rate <= win_ci_high + 1e-12, "
                            "trades_closed = 0)"),
    ],
    description="Track record of trading_signals (1d) and hourly_trading_signals (1h) as of each day: hit rates of "
                "flip events over 1/3/7 days or 4/24 hours with Wilson 95% intervals, flip-to-flip trade win rate and "
                "profit factor, strategy vs holding return, Sharpe and drawdown. Recomputes the signals from the "
                "candles with the same code, so it never depends on which signal partitions exist.",
)
def signal_performance(run: TableRun) -> dict:
    rows = quant.performance_rows({tf.name: quant.load_bars(run.con, tf, run.end) for tf in quant.TIMEFRAMES},
                                  run.start, run.end)
    run.rewrite(rows_table(rows))
    return {"preview": run.preview(["exchange", "symbol", "timeframe", "day", "horizon", "n_signals", "events",
                                    "hit_rate", "win_rate", "profit_factor", "strategy_total_return",
                                    "holding_total_return"], "day DESC, exchange DESC, symbol DESC, timeframe DESC, "
                                                             "horizon DESC")}


QUANT_ASSETS = [raw_candles, candles_1d, candles_1h, quantmetrics, support_resistance_levels, trading_signals,
                hourly_trading_signals, signal_performance]
