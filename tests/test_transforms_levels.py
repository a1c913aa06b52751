"""Support/resistance: spec test vectors, hand-built bars and real BTC levels around known prices."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import numpy as np
import pytest

from transforms.candles import Candles, parse_candles_csv
from transforms.levels import (
    DAILY_LEVELS,
    HOURLY_LEVELS,
    PIVOT_METHODS,
    LevelParams,
    SupportResistance,
    pivot_highs,
    pivot_lows,
    pivot_points,
    support_resistance_levels,
)
from transforms.tm_export import Token, envelope, resistance_support_row

FIXTURES = Path(__file__).resolve().parent / "fixtures" / "quant"
SHARED_BYBIT = Path(__file__).resolve().parents[1].parent / "shared" / "data" / "bybit-linear-ohlcv-zxckotee"
CRASH_LOW = 101045.9  # Bybit BTCUSDT perp, 2025-10-10 21:00 UTC hour


def test_swing_pivots_follow_the_tradingview_tie_rule():
    highs = [10, 11, 12, 11, 10, 12, 13, 12, 12, 11]
    lows = [9, 10, 11, 10, 9, 10, 12, 11, 10, 9]
    assert pivot_highs(highs, 2, 2).tolist() == [2, 6]
    assert pivot_lows(lows, 2, 2).tolist() == [4]
    # A flat top: the earliest of the equal bars is the pivot, the later one is vetoed.
    assert pivot_highs([1, 2, 5, 5, 2, 1], 2, 2).tolist() == [2]
    assert pivot_lows([5, 4, 1, 1, 4, 5], 2, 2).tolist() == [2]
    assert pivot_highs([1, 2, 3], 2, 2).size == 0
    with pytest.raises(ValueError):
        pivot_highs(highs, 0, 2)


def test_pivot_point_formulas_match_the_spec_vector():
    expected = {
        "classic": {"P": 100.666667, "R1": 106.333333, "S1": 96.333333, "R2": 110.666667, "S2": 90.666667,
                    "R3": 116.333333, "S3": 86.333333},
        "fibonacci": {"R1": 104.486667, "S1": 96.846667, "R2": 106.846667, "S2": 94.486667, "R3": 110.666667},
        "camarilla": {"R1": 102.916667, "R3": 104.75, "R4": 107.5, "S4": 96.5},
        "woodie": {"P": 101.0, "R1": 107.0, "S1": 97.0, "R2": 111.0, "S2": 91.0},
    }
    for method, levels in expected.items():
        computed = pivot_points(105, 95, 102, method)
        for name, value in levels.items():
            assert computed[name] == pytest.approx(value, abs=5e-7), (method, name)
        assert isinstance(computed["R1"], float)
    assert set(pivot_points(105, 95, 102, "camarilla")) == {"P", "R1", "R2", "R3", "R4", "S1", "S2", "S3", "S4"}
    assert set(PIVOT_METHODS) == set(expected)
    with pytest.raises(ValueError, match="unknown pivot method"):
        pivot_points(105, 95, 102, "demark")


def test_pivot_points_vectorize_over_periods():
    levels = pivot_points(np.array([105.0, 210.0]), np.array([95.0, 190.0]), np.array([102.0, 204.0]))
    np.testing.assert_allclose(levels["R1"], [106.333333333, 212.666666667])


def bars(closes: list[float], volumes: list[float] | None = None, wick: float = 0.5) -> Candles:
    close = np.asarray(closes, dtype=np.float64)
    return Candles(
        ts=np.datetime64("2025-01-01", "ms") + np.arange(close.size) * np.timedelta64(1, "D"),
        open=close,
        high=close + wick,
        low=close - wick,
        close=close,
        volume=np.ones(close.size) if volumes is None else np.asarray(volumes, dtype=np.float64),
        turnover=np.full(close.size, np.nan),
    )


def levels_of(candles: Candles, params: LevelParams = DAILY_LEVELS) -> SupportResistance:
    return support_resistance_levels(candles.ts, candles.high, candles.low, candles.close, candles.volume, params)


def zigzag(peaks: list[float], troughs: list[float], leg: int = 6) -> list[float]:
    path: list[float] = []
    for peak, trough in zip(peaks, troughs):
        path += list(np.linspace(trough, peak, leg, endpoint=False))
        path += list(np.linspace(peak, trough, leg, endpoint=False))
    return path + [troughs[-1]] + [95.0] * 6


def test_clustered_levels_from_a_range_bound_market():
    closes = zigzag(peaks=[100.0, 100.4, 100.0], troughs=[90.0, 90.0, 90.0])
    volumes = np.ones(len(closes))
    volumes[[18]] = 3.0  # the 100.4 peak traded three times the volume
    result = levels_of(bars(closes, volumes.tolist()))
    assert result.close == 95.0 and result.tolerance == pytest.approx(max(0.5 * result.atr, 0.475))

    (resistance,) = result.resistances
    assert resistance.kind == "resistance" and resistance.pivots == 3
    assert resistance.price == pytest.approx((100.5 + 3 * 100.9 + 100.5) / 5)  # volume-weighted highs
    assert (resistance.band_low, resistance.band_high) == (100.5, 100.9)
    assert resistance.distance_pct == pytest.approx((resistance.price / 95 - 1) * 100)
    assert resistance.last_pivot == np.datetime64("2025-01-31", "ms")

    support = result.nearest_support
    assert support.kind == "support" and support.price == pytest.approx(89.5) and support.pivots == 3
    assert result.supports[0] is support and len(result.supports) == 1


def test_rejections_count_as_touches_and_strength_follows_the_formula():
    # Price approaches 100 three more times without making a pivot: each bar's high reaches the
    # band but it closes back below, the side it came from.
    closes = zigzag(peaks=[100.0], troughs=[90.0]) + [99.5, 97.0, 99.6, 97.0, 99.55, 95.0]
    result = levels_of(bars(closes))
    resistance = result.nearest_resistance
    assert resistance.pivots == 1 and resistance.touches == 4
    assert resistance.last_touch == np.datetime64("2025-01-24", "ms")

    levels = result.supports + result.resistances
    for level in levels:
        age = (result.as_of - level.last_touch) / np.timedelta64(1, "D")
        shares = sorted(other.volume_share for other in levels)
        rank = (np.searchsorted(shares, level.volume_share, side="right")) / len(levels)
        expected = 100 * (
            0.4 * min(1.0, np.log1p(level.touches) / np.log1p(10)) + 0.3 * rank + 0.3 * np.exp(-np.log(2) * age / 90)
        )
        assert level.strength == pytest.approx(expected) and 0 <= level.strength <= 100


def test_at_most_five_levels_per_side_nearest_first():
    peaks = [110.0 + 6 * i for i in range(8)]
    troughs = [80.0 - 6 * i for i in range(8)]
    result = levels_of(bars(zigzag(peaks, troughs, leg=40)), dataclasses.replace(DAILY_LEVELS, lookback_bars=1000))
    assert len(result.resistances) == 5 and len(result.supports) == 5
    # The final flat stretch at 95 starts with a pivot high (equal newer highs do not veto it).
    assert [level.price for level in result.resistances] == [95.5, 110.5, 116.5, 122.5, 128.5]
    assert all(np.diff([abs(level.distance_pct) for level in result.supports]) > 0)


def test_no_pivots_means_no_levels_and_short_series_are_rejected():
    rising = bars(list(np.linspace(100, 130, 30)))
    result = levels_of(rising)
    assert result.supports == () and result.resistances == () and result.nearest_support is None
    with pytest.raises(ValueError, match="at least 14 bars"):
        levels_of(bars([100.0] * 5))


def test_fixture_daily_levels_contain_the_crash_low_and_the_all_time_high_zone():
    candles = parse_candles_csv((FIXTURES / "BTCUSDT_1d_2025-08-01_2025-10-22.csv").read_text())
    result = levels_of(candles)
    assert result.as_of == np.datetime64("2025-10-22", "ms") and result.close == 107357.2
    assert any(level.price == CRASH_LOW for level in result.supports)
    top = max(result.resistances, key=lambda level: level.price)
    assert top.band_high == 126150.0 and 124000 < top.price < 126150  # the 2025-10-06 all-time high

    body = envelope([resistance_support_row(Token(3375, "Bitcoin", "BTC"), result)])
    row = body["data"][0]
    assert row["DATE"] == "2025-10-22" and row["TOKEN_SYMBOL"] == "BTC"
    entries = row["HISTORICAL_RESISTANCE_SUPPORT_LEVELS"]
    assert [entry["level"] for entry in entries] == sorted(entry["level"] for entry in entries)
    crash = next(entry for entry in entries if entry["level"] == CRASH_LOW)
    assert crash["date"] == "2025-10-10" and crash["kind"] == "support" and crash["method"] == "swing_pivot_cluster"
    assert row["CURRENT_SUPPORT_LEVEL"] == result.nearest_support.price
    assert row["CURRENT_RESISTANCE_LEVEL"] == result.nearest_resistance.price
    json.dumps(body, allow_nan=False)


def test_fixture_hourly_levels_after_the_crash():
    candles = parse_candles_csv((FIXTURES / "BTCUSDT_1h_2025-10-09_2025-10-12.csv").read_text())
    result = levels_of(candles, HOURLY_LEVELS)
    assert [level.price for level in result.supports] == [109453.4, CRASH_LOW]
    assert result.nearest_resistance.price == 119574.0
    assert all(level.price > result.close for level in result.resistances)


def shared_candles(name: str) -> Candles:
    path = SHARED_BYBIT / name
    if not path.is_file():
        pytest.skip(f"shared data not available: {path}")
    return parse_candles_csv(path.read_text(), source=name)


def test_real_btc_daily_levels_around_known_prices():
    candles = shared_candles("BTCUSDT_1d.csv")
    result = levels_of(candles)
    supports, resistances = result.supports, result.resistances
    assert len(supports) == len(resistances) == 5
    assert all(level.price < result.close for level in supports)
    assert all(level.price >= result.close for level in resistances)
    for level in supports + resistances:
        assert level.band_high - level.band_low <= 2 * result.tolerance + 1e-9
    # The all-time-high zone (2025-10-06, ~126k) caps price; the 10-10 crash low sits in a support
    # band around the psychological 100k.
    assert any(123_000 < level.price < 126_200 for level in resistances)
    assert any(level.band_low <= CRASH_LOW <= level.band_high and level.price < 101_500 for level in supports)
    assert max(level.strength for level in supports + resistances) > 80


def test_real_btc_levels_are_as_of_their_date():
    candles = shared_candles("BTCUSDT_1d.csv")
    as_of = np.flatnonzero(candles.ts == np.datetime64("2025-10-09", "ms"))[0]
    before = levels_of(candles[: as_of + 1])
    # Before the crash nothing near 101k existed yet as a fresh pivot, and price sat near the top.
    assert before.close == 121603.0
    assert all(level.last_touch <= candles.ts[as_of] for level in before.supports + before.resistances)
    assert not any(level.price == CRASH_LOW for level in before.supports)
    assert before.nearest_resistance.price > 123_000


@pytest.mark.parametrize("symbol", ["BTCUSDT", "ETHUSDT", "SOLUSDT"])
def test_real_hourly_levels_keep_the_crash_wick(symbol):
    candles = shared_candles(f"{symbol}_1h.csv")
    crash_hour = np.flatnonzero(candles.ts == np.datetime64("2025-10-10T21:00", "ms"))[0]
    wick = candles.low[crash_hour]
    assert wick == candles.low[-720:].min()
    result = levels_of(candles, HOURLY_LEVELS)
    assert any(level.band_low <= wick <= level.band_high for level in result.supports)
    assert all(abs(level.distance_pct) < 25 for level in result.supports + result.resistances)
