"""`perpflow import-candles` and `perpflow export` as a user runs them: subprocesses on a temporary
PERPFLOW_HOME, exact exit codes and messages, and exported JSON equal to the transforms' own output."""

from __future__ import annotations

import datetime as dt
import math
import os
import subprocess
import sys
from pathlib import Path

import duckdb
import numpy as np
import orjson

from test_quant_assets import bybit, materialize
from transforms.candles import parse_candles_csv
from transforms.levels import DAILY_LEVELS, pivot_points, support_resistance_levels
from transforms.quantmetrics import windowed_metrics
from transforms.signals import compute_signals
from transforms.tm_export import (
    Token,
    hourly_trading_signal_rows,
    quantmetrics_rows,
    resistance_support_row,
    trading_signal_rows,
)

PERPFLOW = [sys.executable, "-m", "pipelines.cli"]
FIXTURES = Path(__file__).resolve().parent / "fixtures" / "quant"
DAILY_FIXTURE = FIXTURES / "BTCUSDT_1d_2025-08-01_2025-10-22.csv"
HOURLY_FIXTURE = FIXTURES / "BTCUSDT_1h_2025-10-09_2025-10-12.csv"
BTC = Token(3375, "Bitcoin", "BTC")
MARKET = {"EXCHANGE": "bybit-linear", "MARKET": "BTC-USDT-PERP"}


def perpflow(home: Path, *args: str) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if not k.startswith("PERPFLOW_")}
    env.update(PERPFLOW_HOME=str(home), COLUMNS="200")
    return subprocess.run([*PERPFLOW, *args], env=env, capture_output=True, text=True, timeout=120)


def import_args(path: Path, symbol: str = "BTCUSDT", interval: str = "1d", exchange: str = "bybit-linear"):
    return ["import-candles", str(path), "--exchange", exchange, "--symbol", symbol, "--interval", interval]


def stored_candles(home: Path) -> list[tuple]:
    path = home / "warehouse.duckdb"
    if not path.exists():
        return []
    with duckdb.connect(str(path), read_only=True) as con:
        return con.execute("SELECT exchange, symbol, interval, count(*), min(ts) FROM raw.candles "
                           "GROUP BY ALL").fetchall()


def assert_json_equal(actual, expected, where="data"):
    """Equal structure and values; floats to 1e-12 relative (they went through DuckDB and JSON)."""
    if isinstance(expected, dict):
        assert list(actual) == list(expected), where
        for key in expected:
            assert_json_equal(actual[key], expected[key], f"{where}.{key}")
    elif isinstance(expected, list):
        assert len(actual) == len(expected), where
        for index, (a, e) in enumerate(zip(actual, expected)):
            assert_json_equal(a, e, f"{where}[{index}]")
    elif isinstance(expected, float) and not isinstance(actual, bool):
        assert math.isclose(actual, expected, rel_tol=1e-12, abs_tol=1e-15), (where, actual, expected)
    else:
        assert actual == expected, (where, actual, expected)


def export(home: Path, *args: str) -> dict:
    out = perpflow(home, "export", "--format", "tm-v2", *args)
    assert out.returncode == 0, out.stderr
    response = orjson.loads(out.stdout)
    assert response["success"] is True and response["length"] == len(response["data"])
    return response


def test_bad_input_says_what_is_wrong_and_writes_nothing(tmp_path):
    home = tmp_path / "home"
    out = perpflow(home, *import_args(HOURLY_FIXTURE, interval="1d"))
    assert out.returncode == 1 and "do not open on a 1d boundary" in out.stdout and "Nothing was imported" in out.stdout
    broken = tmp_path / "broken.csv"
    lines = DAILY_FIXTURE.read_text().splitlines()
    lines[5] = lines[5].split(",")[0] + ",100,90,95,96,1,1"   # high below open
    broken.write_text("\n".join(lines))
    out = perpflow(home, *import_args(broken))
    assert out.returncode == 1 and "broken.csv line 6: high 90.0 is below max(open, close) 100.0" in out.stdout
    assert stored_candles(home) == []

    for args, problem in [(import_args(DAILY_FIXTURE, symbol="BTC"), "neither a venue symbol like BTCUSDT"),
                          (import_args(DAILY_FIXTURE, exchange="Bybit Linear"), "is not a venue slug"),
                          (import_args(DAILY_FIXTURE, interval="4h"), "'4h' is not one of '1d', '1h'"),
                          (import_args(tmp_path / "missing.csv"), "does not exist")]:
        out = perpflow(home, *args)
        assert out.returncode == 2 and problem in out.stderr, out.stderr

    out = perpflow(home, "export", "quantmetrics")
    assert out.returncode == 1 and out.stdout == ""
    assert "no read replica" in out.stderr and "perpflow import-candles" in out.stderr
    out = perpflow(home, "export", "quantmetrics", "--limit", "101")
    assert out.returncode == 2 and "101 is not in the range 1<=x<=100" in out.stderr


def test_import_is_idempotent_and_normalizes_the_symbol(tmp_path):
    home = tmp_path / "home"
    out = perpflow(home, *import_args(DAILY_FIXTURE, symbol="btcusdt"))
    assert out.returncode == 0, out.stdout + out.stderr
    assert "bars in file" in out.stdout and "83" in out.stdout
    assert "--select group:quant --partition-range 2025-08-01...2025-10-22" in out.stdout
    out = perpflow(home, *import_args(DAILY_FIXTURE, symbol="BTC-USDT-PERP"))
    assert out.returncode == 0
    summary = {line.split("│")[1].strip(): line.split("│")[2].strip() for line in out.stdout.splitlines()
               if line.count("│") == 3}
    assert summary["replaced (already imported)"] == "83" and summary["new"] == "0"
    assert stored_candles(home) == [("bybit-linear", "BTC-USDT-PERP", "1d", 83, dt.datetime(2025, 8, 1))]

    out = perpflow(home, "export", "trading-signals")   # the replica exists, the analytics do not yet
    assert out.returncode == 1 and "analytics.trading_signals is empty" in out.stderr


def test_export_prints_the_transforms_output_in_tm_v2_shape(tmp_path):
    btc_daily, btc_hourly, eth_daily = bybit("BTCUSDT_1d.csv"), bybit("BTCUSDT_1h.csv"), bybit("ETHUSDT_1d.csv")
    home = tmp_path / "home"
    for args in (import_args(btc_daily), import_args(btc_hourly, interval="1h"), import_args(eth_daily, "ETHUSDT")):
        assert perpflow(home, *args).returncode == 0
    day = "2025-10-17"
    materialize(home, day)
    daily = parse_candles_csv(btc_daily.read_text())
    hourly = parse_candles_csv(btc_hourly.read_text())
    i = int(np.flatnonzero(daily.ts == np.datetime64(day, "ms"))[0])

    response = export(home, "quantmetrics", "--symbol", "BTC")
    expected = quantmetrics_rows(BTC, windowed_metrics(daily.ts, daily.close, as_of=[day]))
    assert_json_equal(response["data"], [{**row, **MARKET} for row in expected])
    assert response["data"][0]["DATE"] == day and response["data"][0]["N_RETURNS"] == i
    thirty = export(home, "quantmetrics", "--symbol", "BTC-USDT-PERP", "--window", "30d")["data"]
    assert thirty[0]["WINDOW"] == "30d" and thirty[0]["CAGR_SHORT_WINDOW"] is True

    history = daily[max(0, i + 1 - DAILY_LEVELS.lookback_bars - 140): i + 1]
    levels = support_resistance_levels(history.ts, history.high, history.low, history.close, history.volume)
    expected = {**resistance_support_row(BTC, levels),
                "PIVOT_POINTS_CLASSIC": pivot_points(daily.high[i], daily.low[i], daily.close[i], "classic"),
                "TIMEFRAME": "1d", **MARKET}
    assert_json_equal(export(home, "resistance-support", "--symbol", "BTCUSDT")["data"], [expected])

    both = export(home, "trading-signals", "--symbol", "ETH,BTC", "--start-date", day, "--end-date", day)["data"]
    assert [(row["TOKEN_SYMBOL"], row["TOKEN_ID"], row["MARKET"]) for row in both] == [
        ("BTC", 3375, "BTC-USDT-PERP"), ("ETH", 3306, "ETH-USDT-PERP")]
    signals = compute_signals(daily.high, daily.low, daily.close)
    expected = [row for row in trading_signal_rows(BTC, daily.ts, signals) if row["DATE"] == day]
    assert_json_equal(both[:1], [{**row, **MARKET} for row in expected])

    hourly_signals = compute_signals(hourly.high, hourly.low, hourly.close)
    expected = [{**row, **MARKET} for row in hourly_trading_signal_rows(BTC, hourly.ts, hourly.close, hourly_signals)
                if row["TIMESTAMP"].startswith(day)][::-1]   # newest first
    assert len(expected) == 24
    assert_json_equal(export(home, "hourly-trading-signals", "--symbol", "BTC", "--limit", "100")["data"], expected)
    page = export(home, "hourly-trading-signals", "--symbol", "BTC", "--limit", "5", "--page", "2")
    assert_json_equal(page["data"], expected[5:10])
    nothing = export(home, "hourly-trading-signals", "--symbol", "DOGE")
    assert nothing["data"] == [] and nothing["message"] == "No data found for the given filters"
