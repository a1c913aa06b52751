"""Issue 5 assets on temporary warehouses: values equal the transforms, idempotent partitions, no
look-ahead through the warehouse, price history from trades, checks, charts, definitions."""

from __future__ import annotations

import datetime as dt
import math
import warnings
from pathlib import Path

import dagster as dg
import numpy as np
import pyarrow as pa
import pytest
from click.testing import CliRunner

from pipelines.quant_cli import import_candles
from transforms.candles import Candles, parse_candles_csv, resample_candles
from transforms.levels import DAILY_LEVELS, HOURLY_LEVELS, pivot_points, support_resistance_levels
from transforms.quantmetrics import METRIC_KEYS, windowed_metrics
from transforms.signals import HOURLY_HORIZONS, compute_signals, evaluate_signals

warnings.filterwarnings("ignore", category=dg.BetaWarning)

from warehouse.analytics import quant as qc  # noqa: E402
from dagster_project.assets.quant import QUANT_ASSETS, candles_1d, candles_1h  # noqa: E402
from dagster_project.definitions import defs  # noqa: E402
from dagster_project.jobs_quant import quant_hourly_schedule  # noqa: E402
from dagster_project.resources import WarehouseResource  # noqa: E402

BYBIT = Path(__file__).resolve().parents[1].parent / "shared" / "data" / "bybit-linear-ohlcv-zxckotee"
MATERIALIZABLE = [a for a in QUANT_ASSETS if isinstance(a, dg.AssetsDefinition)]
TABLES = {"analytics.candles_1d": "day", "analytics.candles_1h": "day", "analytics.quantmetrics": "as_of",
          "analytics.support_resistance_levels": "day", "analytics.trading_signals": "day",
          "analytics.hourly_trading_signals": "day", "analytics.signal_performance": "day"}


def bybit(name: str) -> Path:
    path = BYBIT / name
    if not path.exists():
        pytest.skip(f"shared data not available: {path}")
    return path


def import_file(home: Path, path: Path, symbol: str, interval: str) -> None:
    result = CliRunner().invoke(import_candles, [str(path), "--exchange", "bybit-linear", "--symbol", symbol,
                                                 "--interval", interval], env={"PERPFLOW_HOME": str(home)})
    assert result.exit_code == 0, result.output


def resources(home: Path) -> dict:
    return {"warehouse": WarehouseResource(database=str(home / "warehouse.duckdb"),
                                           replica=str(home / "warehouse_ro.duckdb"), replica_min_interval_s=0)}


def materialize(home: Path, first: str | None, last: str | None = None, assets=MATERIALIZABLE):
    """One run: a partition, a partition range (first..last), or no partition (first None)."""
    tags = {} if last is None else {"dagster/asset_partition_range_start": first,
                                    "dagster/asset_partition_range_end": last}
    result = dg.materialize(assets, resources=resources(home), partition_key=None if last else first, tags=tags)
    assert result.success
    failed = [c.check_name for c in result.get_asset_check_evaluations() if not c.passed]
    assert not failed, failed
    return result


def rows_of_day(home: Path, day: str) -> dict[str, list[tuple]]:
    with resources(home)["warehouse"].get().writer() as con:
        return {table: con.execute(f"SELECT * FROM {table} WHERE {column} = $day ORDER BY ALL",
                                   {"day": dt.date.fromisoformat(day)}).fetchall()
                for table, column in TABLES.items()}


def bars(path: Path) -> Candles:
    return parse_candles_csv(path.read_text(), source=path.name)


def index_of(candles: Candles, stamp: str) -> int:
    return int(np.flatnonzero(candles.ts == np.datetime64(stamp, "ms"))[0])


def close_or_nan(actual, expected) -> bool:
    if expected is None or (isinstance(expected, float) and math.isnan(expected)):
        return actual is None
    return actual == pytest.approx(expected, rel=1e-12, abs=1e-15)


def test_definitions_carry_the_quant_assets_job_and_schedule():
    dg.Definitions.validate_loadable(defs)
    keys = {k.to_user_string() for k in defs.resolve_asset_graph().get_all_asset_keys()}
    assert {"raw/candles", "analytics/candles_1d", "analytics/candles_1h", "analytics/quantmetrics",
            "analytics/support_resistance_levels", "analytics/trading_signals", "analytics/hourly_trading_signals",
            "analytics/signal_performance"} <= keys
    assert {a.op.pool for a in MATERIALIZABLE} == {"duckdb_writer"}
    assert defs.resolve_job_def("quant_job").partitions_def is not None
    at = dt.datetime(2025, 10, 23, 0, 5, tzinfo=dt.UTC)   # 00:05 finalizes the day that just ended
    request = quant_hourly_schedule(dg.build_schedule_context(scheduled_execution_time=at))
    assert request.partition_key == "2025-10-22"


def test_backfill_equals_the_transforms_on_real_btc(tmp_path):
    daily_csv, hourly_csv = bybit("BTCUSDT_1d.csv"), bybit("BTCUSDT_1h.csv")
    home = tmp_path / "home"
    import_file(home, daily_csv, "BTCUSDT", "1d")
    import_file(home, hourly_csv, "BTC-USDT-PERP", "1h")
    result = materialize(home, "2025-10-15", "2025-10-22")   # one run, eight partitions
    metadata = {e.event_specific_data.materialization.asset_key.to_user_string():
                e.event_specific_data.materialization.metadata for e in result.get_asset_materialization_events()}
    assert metadata["analytics/trading_signals"]["rows_in_run"].value == 8
    assert metadata["analytics/hourly_trading_signals"]["rows_in_run"].value == 8 * 24
    # Eight copies of a picture would bloat the event log: it goes on one observation of the last day.
    observations = {(e.asset_key.to_user_string(), e.partition): e.event_specific_data.asset_observation.metadata
                    for e in result.all_events if e.event_type_value == "ASSET_OBSERVATION"}
    assert set(observations) == {("analytics/support_resistance_levels", "2025-10-22"),
                                 ("analytics/trading_signals", "2025-10-22"),
                                 ("analytics/hourly_trading_signals", "2025-10-22")}
    assert "equity_vs_holding" not in metadata["analytics/trading_signals"]
    for key, chart in (("analytics/support_resistance_levels", "levels_bybit-linear_BTC-USDT-PERP"),
                       ("analytics/trading_signals", "equity_vs_holding")):
        picture = observations[(key, "2025-10-22")][chart].value
        assert picture.startswith("![") and "data:image/png;base64," in picture and len(picture) < 80_000

    daily, hourly = bars(daily_csv), bars(hourly_csv)
    day = "2025-10-17"
    i, h = index_of(daily, day), index_of(hourly, f"{day}T23:00")
    with resources(home)["warehouse"].get().writer() as con:
        def fetch(sql):
            cursor = con.execute(sql, {"day": dt.date.fromisoformat(day)} if "$day" in sql else {})
            names = [c[0] for c in cursor.description]
            return [dict(zip(names, row)) for row in cursor.fetchall()]

        quant = {r["lookback"]: r for r in fetch("SELECT * FROM analytics.quantmetrics WHERE as_of = $day")}
        levels = fetch("SELECT * FROM analytics.support_resistance_levels WHERE day = $day")
        signal_rows = fetch("SELECT * FROM analytics.trading_signals ORDER BY ts")
        hourly_rows = fetch("SELECT * FROM analytics.hourly_trading_signals ORDER BY ts")
        performance = fetch("SELECT * FROM analytics.signal_performance WHERE day = $day "
                            "ORDER BY timeframe, horizon_bars")

    expected = windowed_metrics(daily.ts, daily.close, as_of=[day])
    assert sorted(quant) == ["30d", "365d", "90d", "all"]
    for k, lookback in enumerate(expected["window"]):
        row = quant[lookback]
        assert row["n_returns"] == expected["n_returns"][k]
        assert row["cagr_short_window"] == bool(expected["cagr_short_window"][k])
        for key in (*METRIC_KEYS, "best_month", "worst_month"):
            assert close_or_nan(row[key], float(expected[key][k])), (lookback, key)
    assert quant["all"]["sharpe"] is not None and quant["30d"]["coverage"] == 1.0

    for timeframe, candles, last, params in (("1d", daily, i, DAILY_LEVELS), ("1h", hourly, h, HOURLY_LEVELS)):
        window = candles[max(0, last + 1 - params.lookback_bars - qc.ATR_WARMUP_BARS): last + 1]
        sr = support_resistance_levels(window.ts, window.high, window.low, window.close, window.volume, params)
        stored = {r["name"]: r for r in levels if r["timeframe"] == timeframe and r["method"] == qc.SWING_METHOD}
        want = {f"S{n}": lvl for n, lvl in enumerate(sr.supports, 1)} | {f"R{n}": lvl for n, lvl in
                                                                         enumerate(sr.resistances, 1)}
        assert stored.keys() == want.keys() and len(want) >= 4
        for name, level in want.items():
            row = stored[name]
            assert (row["price"], row["strength"], row["touches"], row["kind"]) == (
                level.price, level.strength, level.touches, level.kind)
            assert row["last_touch"] == level.last_touch.astype("datetime64[ms]").item()
    pivots = {r["name"]: r["price"] for r in levels if r["method"] == qc.PIVOT_METHOD}
    assert pivots == pivot_points(daily.high[i], daily.low[i], daily.close[i], "classic")

    signals = compute_signals(daily.high, daily.low, daily.close)
    first = index_of(daily, "2025-10-15")
    assert [r["ts"] for r in signal_rows] == [t.item() for t in daily.ts[first:]]
    for offset, row in enumerate(signal_rows):
        t = first + offset
        assert (row["trading_signal"], row["token_trend"], row["confidence"], row["score"]) == (
            signals.trading_signal[t], signals.token_trend[t], signals.confidence[t], signals.score[t])
        assert row["trading_signals_returns"] == signals.trading_signals_returns[t]
        assert row["bar_close"] == row["ts"] + dt.timedelta(days=1)
    hourly_signals = compute_signals(hourly.high, hourly.low, hourly.close)
    first_hour = index_of(hourly, "2025-10-15T00:00")
    assert [r["token_trend"] for r in hourly_rows] == hourly_signals.token_trend[first_hour:].tolist()
    assert [r["trading_signal"] for r in hourly_rows] == hourly_signals.trading_signal[first_hour:].tolist()

    daily_eval = evaluate_signals(daily.close[: i + 1], compute_signals(daily.high[: i + 1], daily.low[: i + 1],
                                                                          daily.close[: i + 1]))
    hourly_eval = evaluate_signals(hourly.close[: h + 1], compute_signals(hourly.high[: h + 1], hourly.low[: h + 1],
                                                                            hourly.close[: h + 1]),
                                   horizons=HOURLY_HORIZONS, periods_per_year=8760)
    assert [(r["timeframe"], r["horizon"]) for r in performance] == [("1d", "1d"), ("1d", "3d"), ("1d", "7d"),
                                                                      ("1h", "4h"), ("1h", "24h")]
    for row, rate, evaluation in zip(performance, [*daily_eval.hit_rates, *hourly_eval.hit_rates],
                                     [daily_eval] * 3 + [hourly_eval] * 2):
        assert (row["events"], row["hits"], row["n_signals"]) == (rate.n, rate.hits, evaluation.n_signals)
        assert close_or_nan(row["hit_rate"], rate.rate) and close_or_nan(row["hit_ci_low"], rate.ci_low)
        assert close_or_nan(row["win_rate"], evaluation.trades.win_rate)
        assert close_or_nan(row["profit_factor"], evaluation.trades.profit_factor)
        assert close_or_nan(row["strategy_total_return"], evaluation.strategy["total_return"])
        assert close_or_nan(row["holding_total_return"], evaluation.holding["total_return"])


def test_partitions_are_idempotent_and_never_look_ahead(tmp_path):
    daily_csv, hourly_csv = bybit("BTCUSDT_1d.csv"), bybit("BTCUSDT_1h.csv")
    real, changed = tmp_path / "real", tmp_path / "changed"
    for home in (real, changed):
        import_file(home, daily_csv, "BTCUSDT", "1d")
        import_file(home, hourly_csv, "BTCUSDT", "1h")
    with resources(changed)["warehouse"].get().writer() as con:   # halve every price after the day, drop a bar
        con.execute("UPDATE raw.candles SET open = open / 2, high = high / 2, low = low / 2, close = close / 2 "
                    "WHERE ts >= TIMESTAMP '2025-10-11'")
        con.execute("DELETE FROM raw.candles WHERE ts = TIMESTAMP '2025-10-12'")
    day = "2025-10-10"   # the crash day: a look at later bars would move levels, signals and metrics
    result = materialize(real, day)
    first = rows_of_day(real, day)
    assert all(first[table] for table in TABLES), {t: len(r) for t, r in first.items()}
    metadata_keys = {e.asset_key.path[-1]: set(e.event_specific_data.materialization.metadata)
                     for e in result.get_asset_materialization_events()}
    assert metadata_keys == {
        "candles_1d": {"dagster/row_count", "preview"}, "candles_1h": {"dagster/row_count", "preview"},
        "quantmetrics": {"dagster/row_count", "preview"}, "signal_performance": {"dagster/row_count", "preview"},
        "support_resistance_levels": {"dagster/row_count", "preview", "levels_bybit-linear_BTC-USDT-PERP"},
        "trading_signals": {"dagster/row_count", "preview", "equity_vs_holding"},
        "hourly_trading_signals": {"dagster/row_count", "preview", "equity_vs_holding"}}
    materialize(real, day)
    assert rows_of_day(real, day) == first
    materialize(changed, day)
    changed_rows = rows_of_day(changed, day)
    assert changed_rows == first


def minute_bars(start: str, minutes: int, seed: int = 1) -> Candles:
    rng = np.random.default_rng(seed)
    close = 100 * np.exp(np.cumsum(rng.normal(0, 1e-3, minutes)))
    open_ = np.r_[100.0, close[:-1]]
    spread = np.abs(rng.normal(0, 5e-4, minutes)) * close
    return Candles(np.datetime64(start, "ms") + np.arange(minutes) * np.timedelta64(1, "m"), open_,
                   np.maximum(open_, close) + spread, np.minimum(open_, close) - spread, close,
                   rng.uniform(1, 3, minutes), np.full(minutes, np.nan))


def test_price_history_from_trades_keeps_complete_bars_and_prefers_imports(tmp_path):
    minutes = minute_bars("2024-03-01T00:00", 2 * 1440 + 12 * 60)   # data ends 2024-03-03 11:59
    home = tmp_path / "home"
    with resources(home)["warehouse"].get().writer() as con:
        one_minute = pa.table({"minute": minutes.ts, "open": minutes.open, "high": minutes.high, "low": minutes.low,
                               "close": minutes.close, "volume": minutes.volume})
        con.register("one_minute", one_minute)
        con.execute("""INSERT INTO analytics.ohlcv_1m BY NAME
                       SELECT 'binance-usdm' AS exchange, 'BTC-USDT-PERP' AS symbol, *, close AS vwap,
                              close * volume AS quote_volume, volume AS buy_volume, 0.0 AS sell_volume,
                              1 AS trade_count, CAST(minute AS DATE) AS day FROM one_minute""")
        con.execute("""INSERT INTO raw.candles VALUES ('binance-usdm', 'BTC-USDT-PERP', '1d', '2024-03-02', 1, 2, 0.5,
                       1.5, 10, NULL, 'venue.csv', now()::TIMESTAMP)""")
    materialize(home, None, assets=[candles_1d, candles_1h])

    with resources(home)["warehouse"].get().writer() as con:
        days = con.execute("SELECT ts, open, high, low, close, volume, source, minutes FROM analytics.candles_1d "
                           "ORDER BY ts").fetchall()
        hours = con.execute("SELECT ts, open, high, low, close, volume FROM analytics.candles_1h "
                            "ORDER BY ts").fetchall()
    quotes = minutes.close * minutes.volume
    minutes = Candles(minutes.ts, minutes.open, minutes.high, minutes.low, minutes.close, minutes.volume, quotes)
    want_day = resample_candles(minutes, "1d", source_interval="1m")
    assert [row[0] for row in days] == [dt.datetime(2024, 3, 1), dt.datetime(2024, 3, 2)]   # 03-03 is incomplete
    assert days[0][1:6] == pytest.approx((want_day.open[0], want_day.high[0], want_day.low[0], want_day.close[0],
                                          want_day.volume[0]), rel=1e-12)
    assert days[0][6:] == ("trades", 1440) and days[1][1:] == (1, 2, 0.5, 1.5, 10, "import", None)
    want_hours = resample_candles(minutes, "1h", source_interval="1m")
    assert len(hours) == len(want_hours) == 60
    assert [row[0] for row in hours] == [t.item() for t in want_hours.ts]
    np.testing.assert_allclose(np.array([row[1:] for row in hours]),
                               np.c_[want_hours.open, want_hours.high, want_hours.low, want_hours.close,
                                     want_hours.volume], rtol=1e-12)
