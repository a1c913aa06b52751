"""Candle CSV parsing/validation and resampling, on hand-made text and real Bybit candles."""

from __future__ import annotations

import datetime as dt
from pathlib import Path

import numpy as np
import pytest

from transforms.candles import (
    Candles,
    as_utc_ms,
    infer_interval_ms,
    parse_candles_csv,
    parse_interval,
    resample_candles,
)

FIXTURES = Path(__file__).resolve().parent / "fixtures" / "quant"
SHARED_BYBIT = Path(__file__).resolve().parents[1].parent / "shared" / "data" / "bybit-linear-ohlcv-zxckotee"
HEADER = "timestamp,open,high,low,close,volume,turnover"


def shared_csv(name: str) -> str:
    path = SHARED_BYBIT / name
    if not path.is_file():
        pytest.skip(f"shared data not available: {path}")
    return path.read_text()


def test_parses_bybit_csv_with_iso_timestamps():
    candles = parse_candles_csv((FIXTURES / "BTCUSDT_1d_2025-08-01_2025-10-22.csv").read_text())
    assert len(candles) == 83
    assert candles.ts[0] == np.datetime64("2025-08-01T00:00", "ms")
    assert candles.ts.dtype == np.dtype("datetime64[ms]")
    crash = np.flatnonzero(candles.ts == np.datetime64("2025-10-10", "ms"))[0]
    assert (candles.open[crash], candles.high[crash], candles.low[crash], candles.close[crash]) == (
        121603.0,
        122490.0,
        101045.9,
        112732.5,
    )
    assert candles.turnover[crash] == pytest.approx(30823235619.7927)


def test_headerless_bybit_api_rows_newest_first_in_milliseconds():
    text = "\n".join(
        [
            "1760140800000,112732.5,113279.8,109453.4,110599.9,88160.921,9840234817.8",
            "1760054400000,121603.0,122490.0,101045.9,112732.5,269200.998,30823235619.7",
        ]
    )
    candles = parse_candles_csv(text)
    assert list(candles.ts) == [np.datetime64("2025-10-10", "ms"), np.datetime64("2025-10-11", "ms")]
    assert list(candles.close) == [112732.5, 110599.9]


def test_header_aliases_seconds_timestamps_and_optional_turnover():
    text = "startTime,Open,High,Low,Close,Vol\n1760054400,1,2,0.5,1.5,10\n1760058000,1.5,1.6,1.4,1.45,0\n"
    candles = parse_candles_csv(text)
    assert candles.ts[1] - candles.ts[0] == np.timedelta64(3600, "s")
    assert np.isnan(candles.turnover).all()
    assert candles.volume.tolist() == [10.0, 0.0]


def test_iso_offsets_are_converted_to_utc():
    text = f"{HEADER}\n2025-10-10T23:00:00-02:00,1,1,1,1,1,1\n2025-10-11T02:00:00Z,1,1,1,1,1,1\n"
    candles = parse_candles_csv(text)
    assert candles.ts.tolist() == [dt.datetime(2025, 10, 11, 1), dt.datetime(2025, 10, 11, 2)]


@pytest.mark.parametrize(
    ("row", "problem"),
    [
        ("2025-10-10,1,abc,1,1,1,1", "line 2: high 'abc' is not a number"),
        ("2025-10-10,1,0.9,0.8,1,1,1", "line 2: high 0.9 is below max(open, close) 1.0"),
        ("2025-10-10,1,2,1.2,1.1,1,1", "line 2: low 1.2 is above min(open, close) 1.0"),
        ("2025-10-10,0,1,0,1,1,1", "line 2: open 0.0 is not positive"),
        ("2025-10-10,1,1,1,1,-5,1", "line 2: volume -5.0 is negative"),
        ("2025-10-10,1,1,1,1,nan,1", "line 2: volume 'nan' is not finite"),
        ("2025-10-10,1,1,1,1,1", "line 2: 6 fields, expected 7"),
        ("10/10/2025,1,1,1,1,1,1", "line 2: timestamp '10/10/2025' is not ISO-8601"),
        ("1760054400000000,1,1,1,1,1,1", "line 2: timestamp '1760054400000000' decodes to year"),
    ],
)
def test_bad_rows_name_line_and_problem(row, problem):
    with pytest.raises(ValueError) as error:
        parse_candles_csv(f"{HEADER}\n{row}\n", source="btc.csv")
    assert f"btc.csv {problem}" in str(error.value)


def test_all_bad_rows_are_reported_at_once_up_to_the_limit():
    rows = "\n".join(f"2025-10-{day:02d},1,x,1,1,1,1" for day in range(1, 11))
    with pytest.raises(ValueError, match=r"3 invalid candle row\(s\) \(stopped early\)") as error:
        parse_candles_csv(f"{HEADER}\n{rows}\n", max_errors=3)
    assert "line 4:" in str(error.value) and "line 5:" not in str(error.value)


def test_duplicate_timestamps_name_both_lines():
    text = f"{HEADER}\n2025-10-10,1,1,1,1,1,1\n2025-10-11,1,1,1,1,1,1\n2025-10-10,1,1,1,1,1,1\n"
    with pytest.raises(ValueError, match=r"lines 2 and 4: duplicate timestamp 2025-10-10"):
        parse_candles_csv(text)


def test_mixed_epoch_units_are_rejected():
    text = "1760054400000,1,1,1,1,1,1\n1760058000,1,1,1,1,1,1\n"
    with pytest.raises(ValueError, match="line 2: epoch timestamp in s but line 1 used ms"):
        parse_candles_csv(text)


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("", "no candle rows"),
        (f"{HEADER}\n", "header but no candle rows"),
        ("time,open,high,close,volume\n", r"lacks column\(s\) low"),
        ("time,open,high,low,close,volume,close_price\n", "both look like 'close'"),
        ("1760054400000,1,1,1,1\n", "no header and 5 fields"),
    ],
)
def test_structural_errors(text, message):
    with pytest.raises(ValueError, match=message):
        parse_candles_csv(text)


def test_parse_interval_and_inference():
    assert parse_interval("1m") == 60_000
    assert parse_interval("4h") == 4 * 3_600_000
    assert parse_interval("1D") == 86_400_000
    assert parse_interval("1w") == 7 * 86_400_000
    assert parse_interval(5000) == 5000
    for bad in ("1M", "0h", "h", "1y", -1):
        with pytest.raises(ValueError):
            parse_interval(bad)
    hours = np.array(["2025-01-01T00", "2025-01-01T01", "2025-01-01T05", "2025-01-01T06"], dtype="datetime64[ms]")
    assert infer_interval_ms(hours) == 3_600_000


def hourly(start: str, closes: list[float]) -> Candles:
    closes_array = np.asarray(closes, dtype=np.float64)
    opens = np.r_[closes_array[0], closes_array[:-1]]
    return Candles(
        ts=np.datetime64(start, "ms") + np.arange(len(closes)) * np.timedelta64(1, "h"),
        open=opens,
        high=np.maximum(opens, closes_array) + 1,
        low=np.minimum(opens, closes_array) - 1,
        close=closes_array,
        volume=np.ones(len(closes)),
        turnover=closes_array.copy(),
    )


def test_resample_to_utc_days_drops_incomplete_buckets():
    candles = hourly("2025-01-01T00", list(range(100, 124)) + [200, 201, 202])
    daily = resample_candles(candles, "1d")
    assert daily.ts.tolist() == [dt.datetime(2025, 1, 1)]
    assert (daily.open[0], daily.high[0], daily.low[0], daily.close[0]) == (100, 124, 99, 123)
    assert daily.volume[0] == 24 and daily.turnover[0] == sum(range(100, 124))

    partial = resample_candles(candles, "1d", min_coverage=0.1)
    assert partial.ts.tolist() == [dt.datetime(2025, 1, 1), dt.datetime(2025, 1, 2)]
    assert (partial.open[1], partial.close[1], partial.volume[1]) == (123, 202, 3)


def test_resample_with_a_missing_source_bar_in_the_middle():
    candles = hourly("2025-01-01T00", list(range(48)))
    gappy = candles[np.r_[0:30, 31:48]]
    daily = resample_candles(gappy, "1d", source_interval="1h")
    assert daily.ts.tolist() == [dt.datetime(2025, 1, 1)]
    kept = resample_candles(gappy, "1d", source_interval="1h", min_coverage=0.9)
    assert kept.close.tolist() == [23, 47] and kept.volume.tolist() == [24, 23]


def test_weekly_buckets_start_on_monday():
    days = Candles(
        ts=np.arange("2025-10-06", "2025-10-20", dtype="datetime64[D]").astype("datetime64[ms]"),
        open=np.arange(14.0) + 1,
        high=np.arange(14.0) + 2,
        low=np.arange(14.0) + 0.5,
        close=np.arange(14.0) + 1.5,
        volume=np.ones(14),
        turnover=np.ones(14),
    )
    weekly = resample_candles(days, "1w")
    assert weekly.ts.astype("datetime64[D]").tolist() == [dt.date(2025, 10, 6), dt.date(2025, 10, 13)]
    assert weekly.open.tolist() == [1, 8] and weekly.close.tolist() == [7.5, 14.5] and weekly.volume.tolist() == [7, 7]


def test_resample_rejects_non_multiples():
    with pytest.raises(ValueError, match="not a multiple"):
        resample_candles(hourly("2025-01-01", [1, 2, 3]), 90 * 60_000)
    with pytest.raises(ValueError, match="min_coverage"):
        resample_candles(hourly("2025-01-01", [1, 2, 3]), "1d", min_coverage=0)


def test_as_utc_ms_accepts_the_usual_timestamp_types():
    expected = np.datetime64("2025-10-10T21:00", "ms")
    assert as_utc_ms([1760130000000])[0] == expected
    assert as_utc_ms(["2025-10-10T23:00+02:00"])[0] == expected
    assert as_utc_ms([dt.datetime(2025, 10, 10, 21, tzinfo=dt.timezone.utc)])[0] == expected
    assert as_utc_ms([dt.date(2025, 10, 10)])[0] == np.datetime64("2025-10-10", "ms")
    assert as_utc_ms(np.array(["2025-10-10T21"], dtype="datetime64[h]"))[0] == expected


def test_crash_day_fixture_rebuilt_from_hourly_fixture():
    hourly_bars = parse_candles_csv((FIXTURES / "BTCUSDT_1h_2025-10-09_2025-10-12.csv").read_text())
    daily_bars = parse_candles_csv((FIXTURES / "BTCUSDT_1d_2025-08-01_2025-10-22.csv").read_text())
    rebuilt = resample_candles(hourly_bars, "1d")
    assert len(rebuilt) == 4
    same_days = np.searchsorted(daily_bars.ts, rebuilt.ts)
    for column in ("open", "high", "low", "close"):
        np.testing.assert_array_equal(getattr(rebuilt, column), getattr(daily_bars, column)[same_days])
    crash = np.flatnonzero(rebuilt.ts == np.datetime64("2025-10-10", "ms"))[0]
    assert rebuilt.low[crash] / rebuilt.open[crash] - 1 == pytest.approx(-0.1690, abs=1e-4)


@pytest.mark.parametrize("symbol", ["BTCUSDT", "ETHUSDT", "SOLUSDT"])
def test_real_hourly_candles_resample_to_the_exchange_daily_candles(symbol):
    hourly_bars = parse_candles_csv(shared_csv(f"{symbol}_1h.csv"), source=f"{symbol}_1h.csv")
    daily_bars = parse_candles_csv(shared_csv(f"{symbol}_1d.csv"), source=f"{symbol}_1d.csv")
    assert len(hourly_bars) == len(daily_bars) == 1000
    rebuilt = resample_candles(hourly_bars, "1d")
    # 2025-09-12 .. 2025-10-22: the first day is partial; the last (still forming when the files
    # were collected) is complete in hours but its daily close was captured a moment apart.
    assert rebuilt.ts[0] == np.datetime64("2025-09-12", "ms") and len(rebuilt) == 41
    same_days = np.searchsorted(daily_bars.ts, rebuilt.ts)
    closed = slice(None, -1)
    for column in ("open", "high", "low", "close"):
        np.testing.assert_array_equal(getattr(rebuilt, column)[closed], getattr(daily_bars, column)[same_days][closed])
    np.testing.assert_allclose(rebuilt.volume[closed], daily_bars.volume[same_days][closed], rtol=1e-7)


def test_real_btc_crash_day_and_sub_hour_resampling():
    daily_bars = parse_candles_csv(shared_csv("BTCUSDT_1d.csv"))
    crash = np.flatnonzero(daily_bars.ts == np.datetime64("2025-10-10", "ms"))[0]
    assert daily_bars.close[crash] / daily_bars.open[crash] - 1 == pytest.approx(-0.0729, abs=1e-4)
    daily_range = (daily_bars.high - daily_bars.low) / daily_bars.open
    since_2024 = daily_bars.ts >= np.datetime64("2024-01-01", "ms")
    assert daily_bars.low[crash] == 101045.9 and daily_range[crash] == pytest.approx(0.1763, abs=1e-4)
    assert daily_range[crash] == daily_range[since_2024].max()

    hourly_bars = parse_candles_csv(shared_csv("BTCUSDT_1h.csv"))
    busiest = np.argmax(hourly_bars.turnover)
    assert hourly_bars.ts[busiest] == np.datetime64("2025-10-10T21:00", "ms")
    assert hourly_bars.turnover[busiest] > 3 * np.sort(hourly_bars.turnover)[-2]
    for name in ("BTCUSDT_30m.csv", "BTCUSDT_5m.csv"):
        fine = parse_candles_csv(shared_csv(name))
        rebuilt = resample_candles(fine, "1h")[:-1]  # drop the hour that was forming at collection
        same_hours = np.searchsorted(hourly_bars.ts, rebuilt.ts)
        assert np.all(hourly_bars.ts[same_hours] == rebuilt.ts) and len(rebuilt) > 40
        for column in ("open", "high", "low", "close"):
            np.testing.assert_array_equal(getattr(rebuilt, column), getattr(hourly_bars, column)[same_hours])
