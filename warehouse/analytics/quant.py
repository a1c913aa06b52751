"""Issue 5 analytics as plain functions: read price history from DuckDB, compute with ``transforms``,
return the rows of the days [start, end). The assets in ``dagster_project/assets/quant.py``
declare the tables, their checks and metadata.

No look-ahead at the warehouse level: rows for the days [start, end) are computed from bars that
*open* before ``end`` and nothing later, and every transform used is causal, so materializing a
partition with later bars present yields exactly the rows it yields without them. A single-run
backfill over many days therefore equals running the days one by one.

The price history tables are rebuilt whole instead: every as-of day needs all earlier bars, and
a partitioned history would have to be backfilled to its first day before any metric is right.
"""

import datetime as dt
from collections.abc import Iterator
from dataclasses import dataclass, fields

import duckdb
import numpy as np

from transforms.candles import Candles
from transforms.levels import DAILY_LEVELS, HOURLY_LEVELS, LevelParams, pivot_points, support_resistance_levels
from transforms.quantmetrics import windowed_metrics
from transforms.signals import DAILY_HORIZONS, HOURLY_HORIZONS, Signals, compute_signals, evaluate_signals

SWING_METHOD = "swing_pivot_cluster"
PIVOT_METHOD = "pivot_classic"
# Levels see the lookback plus this many older bars, so Wilder's ATR14 has forgotten its seed
# ((13/14)^140 < 1e-4) and the result depends only on a fixed, bounded history.
ATR_WARMUP_BARS = 140


@dataclass(frozen=True)
class Timeframe:
    name: str
    candles: str
    signals: str
    step: np.timedelta64
    sql_step: str
    levels: LevelParams
    horizons: tuple[int, ...]
    periods_per_year: int

    def horizon_label(self, bars: int) -> str:
        return f"{bars}{self.name[-1]}"


DAILY = Timeframe("1d", "analytics.candles_1d", "analytics.trading_signals", np.timedelta64(1, "D"), "1 day",
                  DAILY_LEVELS, DAILY_HORIZONS, 365)
HOURLY = Timeframe("1h", "analytics.candles_1h", "analytics.hourly_trading_signals", np.timedelta64(1, "h"),
                   "1 hour", HOURLY_LEVELS, HOURLY_HORIZONS, 8760)
TIMEFRAMES = (DAILY, HOURLY)

Markets = dict[tuple[str, str], Candles]


def _concat(parts: list[dict[str, np.ndarray]]) -> dict[str, np.ndarray]:
    return {name: np.concatenate([part[name] for part in parts]) for name in parts[0]} if parts else {}


# --- price history ------------------------------------------------------------------------------

def price_history_select(tf: Timeframe) -> str:
    """Every bar of the timeframe: imported candles, plus bars resampled from analytics.ohlcv_1m.

    Where both exist for the same (exchange, symbol, ts) the imported candle wins: it is the venue's
    own complete bar, while a websocket reconnect can silently drop trades from ours. A bar built
    from trades is kept only when the market's one-minute history starts at or before its open and
    reaches its last minute; a recorder that started or stopped mid-bar would otherwise leave a bar
    with a wrong open, close or range. Appending later minutes never changes a kept bar.
    """
    return f"""
WITH imported AS (
    SELECT exchange, symbol, ts, open, high, low, close, volume, quote_volume
    FROM raw.candles WHERE interval = '{tf.name}'
),
span AS (
    SELECT exchange, symbol, min(minute) AS first_minute, max(minute) AS last_minute
    FROM analytics.ohlcv_1m GROUP BY ALL
),
built AS (
    SELECT exchange, symbol, time_bucket(INTERVAL '{tf.sql_step}', minute) AS ts,
           first(open ORDER BY minute) AS open, max(high) AS high, min(low) AS low,
           last(close ORDER BY minute) AS close, sum(volume) AS volume, sum(quote_volume) AS quote_volume,
           count(*) AS minutes
    FROM analytics.ohlcv_1m GROUP BY ALL
)
SELECT exchange, symbol, ts, open, high, low, close, volume, quote_volume, 'import' AS source,
       NULL::INTEGER AS minutes, CAST(ts AS DATE) AS day
FROM imported
UNION ALL
SELECT b.exchange, b.symbol, b.ts, b.open, b.high, b.low, b.close, b.volume, b.quote_volume, 'trades',
       b.minutes, CAST(b.ts AS DATE)
FROM built b JOIN span s ON s.exchange = b.exchange AND s.symbol = b.symbol
WHERE s.first_minute <= b.ts
  AND s.last_minute >= b.ts + INTERVAL '{tf.sql_step}' - INTERVAL '1 minute'
  AND NOT EXISTS (SELECT 1 FROM imported i WHERE i.exchange = b.exchange AND i.symbol = b.symbol AND i.ts = b.ts)
"""


def load_bars(con: duckdb.DuckDBPyConnection, tf: Timeframe, end: dt.datetime) -> Markets:
    """Every bar of the timeframe opening before ``end``, per (exchange, symbol), oldest first."""
    data = con.execute(f"""SELECT exchange, symbol, ts, open, high, low, close, volume,
                                  coalesce(quote_volume, 'NaN'::DOUBLE) AS turnover
                           FROM {tf.candles} WHERE ts < $end ORDER BY exchange, symbol, ts""",
                       {"end": end}).fetchnumpy()
    markets: Markets = {}
    if not len(data["ts"]):
        return markets
    exchange, symbol = np.asarray(data["exchange"], dtype=object), np.asarray(data["symbol"], dtype=object)
    starts = np.flatnonzero(np.r_[True, (exchange[1:] != exchange[:-1]) | (symbol[1:] != symbol[:-1])])
    for first, stop in zip(starts, np.r_[starts[1:], len(exchange)]):
        markets[(exchange[first], symbol[first])] = Candles(
            np.asarray(data["ts"][first:stop]).astype("datetime64[ms]"),
            *(np.asarray(data[name][first:stop], dtype=np.float64)
              for name in ("open", "high", "low", "close", "volume", "turnover")))
    return markets


def _ms(value: dt.datetime) -> np.datetime64:
    return np.datetime64(value, "ms")


def last_bar_of_each_day(ts: np.ndarray, start: dt.datetime, end: dt.datetime) -> np.ndarray:
    """Index of the newest bar of every UTC day in [start, end) that has bars."""
    inside = np.flatnonzero((ts >= _ms(start)) & (ts < _ms(end)))
    days = ts[inside].astype("datetime64[D]")
    return inside[np.r_[days[1:] != days[:-1], True]] if inside.size else inside


# --- quant metrics ------------------------------------------------------------------------------

def quantmetrics_columns(markets: Markets, start: dt.datetime, end: dt.datetime) -> dict[str, np.ndarray]:
    """analytics.quantmetrics rows for the as-of days [start, end): every window of
    :func:`transforms.quantmetrics.windowed_metrics` over each market's daily closes."""
    parts = []
    for (exchange, symbol), bars in markets.items():
        days = bars.ts.astype("datetime64[D]")
        as_of = days[(days >= _ms(start)) & (days < _ms(end))]
        if not as_of.size:
            continue
        columns = windowed_metrics(days, bars.close, as_of=as_of)
        columns["lookback"] = columns.pop("window")
        columns["lookback_days"] = columns.pop("window_days")
        size = columns["as_of"].size
        parts.append({"exchange": np.full(size, exchange, dtype=object),
                      "symbol": np.full(size, symbol, dtype=object), **columns})
    return _concat(parts)


# --- support and resistance ---------------------------------------------------------------------

@dataclass(frozen=True)
class LevelsResult:
    rows: list[dict]
    latest: dict[tuple[str, str], tuple[Candles, list[dict]]]   # newest as-of per daily market, for charts


def levels_rows(markets_by_tf: dict[str, Markets], start: dt.datetime, end: dt.datetime) -> LevelsResult:
    """Swing-pivot levels (both timeframes) and classic pivot points (daily) as of the newest bar of
    every day in [start, end). Pivot points use that day's high/low/close, i.e. they are the floor
    levels for trading the following day."""
    rows: list[dict] = []
    latest = {}
    for tf in TIMEFRAMES:
        for (exchange, symbol), bars in markets_by_tf.get(tf.name, {}).items():
            for i in last_bar_of_each_day(bars.ts, start, end):
                if i + 1 < tf.levels.atr_period:
                    continue
                history = bars[max(0, i + 1 - tf.levels.lookback_bars - ATR_WARMUP_BARS): i + 1]
                sr = support_resistance_levels(history.ts, history.high, history.low, history.close,
                                               history.volume, tf.levels)
                base = {"exchange": exchange, "symbol": symbol, "timeframe": tf.name,
                        "day": _date(bars.ts[i]), "as_of": _datetime(bars.ts[i]), "close": sr.close,
                        "atr": _number(sr.atr), "tolerance": _number(sr.tolerance)}
                day_rows = [_swing_row(base, f"{side}{rank}", level)
                            for side, levels in (("S", sr.supports), ("R", sr.resistances))
                            for rank, level in enumerate(levels, start=1)]
                if tf is DAILY:
                    day_rows += [_pivot_row(base, name, price) for name, price in
                                 pivot_points(bars.high[i], bars.low[i], bars.close[i], "classic").items()]
                    latest[(exchange, symbol)] = (history, day_rows)
                rows += day_rows
    return LevelsResult(rows, latest)


def _swing_row(base: dict, name: str, level) -> dict:
    return {**base, "method": SWING_METHOD, "name": name, "price": level.price, "kind": level.kind,
            "distance_pct": level.distance_pct, "strength": level.strength, "touches": level.touches,
            "pivots": level.pivots, "volume_share": level.volume_share, "band_low": level.band_low,
            "band_high": level.band_high, "last_pivot": _datetime(level.last_pivot),
            "last_touch": _datetime(level.last_touch)}


def _pivot_row(base: dict, name: str, price: float) -> dict:
    close = base["close"]
    return {**base, "method": PIVOT_METHOD, "name": name, "price": price,
            "kind": "support" if price < close else "resistance", "distance_pct": (price / close - 1) * 100}


def _date(value: np.datetime64) -> dt.date:
    return value.astype("datetime64[D]").item()


def _datetime(value: np.datetime64) -> dt.datetime:
    return value.astype("datetime64[ms]").item()


def _number(value: float) -> float | None:
    return float(value) if np.isfinite(value) else None


# --- trading signals ----------------------------------------------------------------------------

def signal_segments(bars: Candles, tf: Timeframe, start: dt.datetime) -> Iterator[tuple[int, int, Signals]]:
    """(first, stop, signals) for every gap-free run of bars that reaches ``start``.

    The recursive indicators assume consecutive bars; across a missing bar they would silently
    treat two distant bars as neighbours, so after a gap the indicators warm up again and the
    cumulative returns restart (``history_start`` in the tables).
    """
    breaks = np.flatnonzero(np.diff(bars.ts) != tf.step) + 1
    bounds = np.r_[0, breaks, len(bars)]
    for first, stop in zip(bounds[:-1], bounds[1:]):
        if bars.ts[stop - 1] >= _ms(start):
            yield int(first), int(stop), compute_signals(bars.high[first:stop], bars.low[first:stop],
                                                         bars.close[first:stop])


@dataclass(frozen=True)
class SignalsResult:
    columns: dict[str, np.ndarray]
    curves: dict[tuple[str, str], tuple[np.ndarray, np.ndarray, np.ndarray]]   # ts, strategy, holding


def signal_columns(markets: Markets, tf: Timeframe, start: dt.datetime, end: dt.datetime) -> SignalsResult:
    """Warmed-up signal rows for bars opening in [start, end), plus each market's equity curves of
    its newest gap-free history (for the chart)."""
    parts, curves = [], {}
    for (exchange, symbol), bars in markets.items():
        for first, stop, signals in signal_segments(bars, tf, start):
            ts = bars.ts[first:stop]
            take = signals.warmed_up & (ts >= _ms(start)) & (ts < _ms(end))
            if stop == len(bars) and signals.warmed_up.any():
                live = signals.warmed_up
                curves[(exchange, symbol)] = (ts[live], signals.trading_signals_returns[live],
                                              signals.holding_returns[live])
            if not take.any():
                continue
            n = int(take.sum())
            columns = {name: values[take] for name, values in signals.as_columns().items()
                       if name != "warmed_up"}
            parts.append({
                "exchange": np.full(n, exchange, dtype=object), "symbol": np.full(n, symbol, dtype=object),
                "ts": ts[take], "bar_close": ts[take] + tf.step, "day": ts[take].astype("datetime64[D]"),
                "close": bars.close[first:stop][take], "history_start": np.full(n, ts[0]), **columns})
    return SignalsResult(_concat(parts), curves)


def head(signals: Signals, stop: int) -> Signals:
    """The signals of the first ``stop`` bars; equal to recomputing them on those bars, because
    every indicator is causal."""
    return Signals(**{f.name: {name: vote[:stop] for name, vote in signals.votes.items()} if f.name == "votes"
                      else getattr(signals, f.name)[:stop] for f in fields(signals)})


def performance_rows(markets_by_tf: dict[str, Markets], start: dt.datetime, end: dt.datetime) -> list[dict]:
    """analytics.signal_performance: for each timeframe, market and day in [start, end), the
    evaluation of the signals of the gap-free history up to that day's newest bar, per horizon."""
    rows = []
    for tf in TIMEFRAMES:
        for (exchange, symbol), bars in markets_by_tf.get(tf.name, {}).items():
            as_of_bars = last_bar_of_each_day(bars.ts, start, end)
            for first, stop, signals in signal_segments(bars, tf, start):
                for i in as_of_bars[(as_of_bars >= first) & (as_of_bars < stop)]:
                    upto = int(i) + 1 - first
                    if not signals.warmed_up[:upto].any():
                        continue
                    evaluation = evaluate_signals(bars.close[first: i + 1], head(signals, upto),
                                                  horizons=tf.horizons, periods_per_year=tf.periods_per_year)
                    base = {"exchange": exchange, "symbol": symbol, "timeframe": tf.name,
                            "day": _date(bars.ts[i]), "as_of": _datetime(bars.ts[i]),
                            "history_start": _datetime(bars.ts[first])}
                    rows += [{**base, **_evaluation_fields(tf, evaluation, rate)} for rate in evaluation.hit_rates]
    return rows


def _evaluation_fields(tf: Timeframe, evaluation, rate) -> dict:
    trades = evaluation.trades
    row = {"horizon": tf.horizon_label(rate.horizon), "horizon_bars": rate.horizon, "n_bars": evaluation.n_bars,
           "n_signals": evaluation.n_signals, "events": rate.n, "hits": rate.hits, "hit_rate": rate.rate,
           "hit_ci_low": rate.ci_low, "hit_ci_high": rate.ci_high, "trades_closed": trades.n_closed,
           "trade_wins": trades.wins, "win_rate": trades.win_rate, "win_ci_low": trades.ci_low,
           "win_ci_high": trades.ci_high, "profit_factor": trades.profit_factor,
           "mean_trade_return": trades.mean_return, "open_trade_return": trades.open_return}
    for side in ("strategy", "holding"):
        for key, value in getattr(evaluation, side).items():
            row[f"{side}_{key}"] = value
    return {name: _number(value) if isinstance(value, float) else value for name, value in row.items()}
