"""Trading signals: indicator arithmetic, state machine, evaluation, no look-ahead, real candles."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from transforms.candles import Candles, parse_candles_csv
from transforms.signals import (
    HOURLY_HORIZONS,
    VOTE_NAMES,
    SignalParams,
    Signals,
    atr_wilder,
    compute_signals,
    donchian_state,
    ema,
    evaluate_signals,
    macd_histogram,
    sma,
    supertrend,
    true_range,
    wilder_rma,
    wilson_interval,
)
from transforms.tm_export import Token, envelope, hourly_trading_signal_rows, trading_signal_rows

FIXTURES = Path(__file__).resolve().parent / "fixtures" / "quant"
SHARED_BYBIT = Path(__file__).resolve().parents[1].parent / "shared" / "data" / "bybit-linear-ohlcv-zxckotee"
# Short lookbacks so a few dozen bars are enough to warm up every vote.
FAST = SignalParams(
    supertrend_period=5, ema_fast=5, ema_slow=10, regime_sma=20, donchian_entry=10, donchian_exit=5,
    macd_fast=5, macd_slow=10, macd_signal=4,
)
BTC = Token(3375, "Bitcoin", "BTC")


def test_moving_averages_are_seeded_like_tradingview():
    np.testing.assert_allclose(sma([1, 2, 3, 4, 5], 3), [np.nan, np.nan, 2, 3, 4])
    np.testing.assert_allclose(ema([1, 2, 3, 4, 5, 6], 3), [np.nan, np.nan, 2, 3, 4, 5])
    np.testing.assert_allclose(wilder_rma([3, 3, 6, 0], 2), [np.nan, 3, 4.5, 2.25])
    # A leading NaN run (e.g. a MACD line) delays the seed instead of poisoning it.
    np.testing.assert_allclose(ema([np.nan, np.nan, 2, 4, 6], 2), [np.nan, np.nan, np.nan, 3, 5])
    with pytest.raises(ValueError, match="gap-free"):
        ema([1, np.nan, 3, 4], 2)
    assert np.isnan(sma([1, 2], 3)).all() and np.isnan(ema([1, 2], 3)).all()


def test_true_range_and_wilder_atr_by_hand():
    high, low, close = [10, 11, 12, 11, 13], [9, 9, 10, 10, 11], [9.5, 10.5, 11, 10.5, 12.5]
    np.testing.assert_allclose(true_range(high, low, close), [1, 2, 2, 1, 2.5])
    np.testing.assert_allclose(atr_wilder(high, low, close, 3), [np.nan, np.nan, 5 / 3, 13 / 9, 48.5 / 27])


def test_supertrend_follows_a_v_shaped_market():
    close = np.r_[np.linspace(200, 100, 60), np.linspace(100, 220, 60)]
    high, low = close + 1, close - 1
    line, direction = supertrend(high, low, close, 10, 3.0)
    assert np.isnan(direction[:9]).all() and direction[9] == 1
    assert direction[40] == -1 and direction[-1] == 1
    down = slice(20, 60)
    assert (direction[down] == -1).all() and (np.diff(line[down]) <= 0).all() and (line[down] > close[down]).all()
    up = slice(90, 120)
    assert (direction[up] == 1).all() and (np.diff(line[up]) >= 0).all() and (line[up] < close[up]).all()


def test_donchian_breakout_state():
    close = np.r_[np.full(25, 100.0), 102.0, 100.0, 100.0, 98.0, 100.0]
    state = donchian_state(close + 1, close - 1, close, entry_bars=20, exit_bars=10)
    assert np.isnan(state[:20]).all() and (state[20:25] == 0).all()
    assert state[25:28].tolist() == [1, 1, 1] and state[28:].tolist() == [-1, -1]
    with pytest.raises(ValueError, match="exit_bars <= entry_bars"):
        donchian_state(close + 1, close - 1, close, entry_bars=10, exit_bars=20)


def test_macd_histogram_warm_up_and_sign():
    close = 100 * 1.01 ** np.arange(60)  # steady exponential growth: MACD line rising
    histogram = macd_histogram(close)
    assert np.isnan(histogram[:33]).all() and (histogram[33:] > 0).all()


def trend_candles(closes: np.ndarray) -> Candles:
    return Candles(
        ts=np.datetime64("2024-01-01", "ms") + np.arange(closes.size) * np.timedelta64(1, "D"),
        open=np.r_[closes[0], closes[:-1]],
        high=closes * 1.01,
        low=closes * 0.99,
        close=closes,
        volume=np.ones(closes.size),
        turnover=closes,
    )


def test_state_machine_on_a_trend_reversal():
    closes = np.r_[100 * 1.01 ** np.arange(260), 100 * 1.01**259 * 0.98 ** np.arange(1, 141)]
    candles = trend_candles(closes)
    signals = compute_signals(candles.high, candles.low, candles.close)
    first = int(np.argmax(signals.warmed_up))
    assert first == 199 and not signals.warmed_up[:199].any() and signals.warmed_up[199:].all()
    assert (signals.token_trend[:199] == 0).all() and np.isnan(signals.score[:199]).all()
    events = np.flatnonzero(signals.trading_signal)
    assert signals.trading_signal[events].tolist() == [1, -1]
    assert events[0] == 199 and 260 < events[1] < 300
    assert signals.score[230] == 1.0 and signals.confidence[230] == 1.0
    # MACD's histogram fades to ~0 in a steady decline, so not every vote stays bearish.
    assert signals.token_trend[-1] == -1 and signals.score[-1] <= -0.6
    assert set(signals.votes) == set(VOTE_NAMES)
    columns = signals.as_columns()
    expected_columns = {f"vote_{name}" for name in VOTE_NAMES} | {"token_trend", "trading_signal", "holding_returns"}
    assert expected_columns <= set(columns)
    assert all(values.shape == closes.shape for values in columns.values())

    bar = np.r_[0.0, closes[1:] / closes[:-1] - 1]
    expected = np.cumprod(1 + np.where(np.arange(closes.size) > first, np.r_[0, signals.position[:-1]] * bar, 0)) - 1
    np.testing.assert_allclose(signals.trading_signals_returns, expected, rtol=1e-12)
    assert signals.holding_returns[-1] == pytest.approx(closes[-1] / closes[first] - 1, rel=1e-12)
    assert signals.trading_signals_returns[-1] > signals.holding_returns[-1]

    long_only = compute_signals(candles.high, candles.low, candles.close, long_only=True)
    assert set(long_only.position.tolist()) == {0, 1}
    np.testing.assert_array_equal(long_only.token_trend, signals.token_trend)
    flat_after = events[1] + 1
    assert (np.diff(long_only.trading_signals_returns[flat_after:]) == 0).all()


def test_hysteresis_needs_supertrend_and_a_majority():
    rng = np.random.default_rng(4)
    closes = 100 * np.exp(np.cumsum(rng.normal(0, 0.02, 400)))
    candles = trend_candles(closes)
    signals = compute_signals(candles.high, candles.low, candles.close, FAST)
    net = np.round(signals.score * 5)
    direction = signals.votes["supertrend"]
    for t in np.flatnonzero(signals.warmed_up)[1:]:
        if direction[t] > 0 and net[t] >= 1:
            assert signals.token_trend[t] == 1
        elif direction[t] < 0 and net[t] <= -1:
            assert signals.token_trend[t] == -1
        else:
            assert signals.token_trend[t] == signals.token_trend[t - 1]
    # token_trend is the last non-zero trading_signal, and events alternate.
    events = np.flatnonzero(signals.trading_signal)
    assert len(events) > 5 and (np.diff(signals.trading_signal[events]) != 0).all()
    carried = signals.trading_signal[events][np.searchsorted(events, np.arange(400), side="right") - 1]
    np.testing.assert_array_equal(signals.token_trend[events[0] :], carried[events[0] :])
    agreeing = np.sum(np.vstack([signals.votes[name] for name in VOTE_NAMES]) == signals.token_trend, axis=0) / 5
    np.testing.assert_allclose(signals.confidence[events[0] :], agreeing[events[0] :])


def test_wilson_interval():
    assert wilson_interval(7, 10) == pytest.approx((0.3968, 0.8922), abs=1e-4)
    low, high = wilson_interval(0, 10)
    assert low == pytest.approx(0.0, abs=1e-12) and high == pytest.approx(0.2775, abs=1e-4)
    assert wilson_interval(50, 100, confidence=0.99) == pytest.approx((0.3753, 0.6247), abs=1e-4)
    assert np.isnan(wilson_interval(0, 0)).all()


def hand_signals(trend: list[int]) -> Signals:
    token_trend = np.array(trend, dtype=np.int8)
    event = np.where(token_trend != np.r_[0, token_trend[:-1]], token_trend, 0).astype(np.int8)
    n = len(trend)
    unused = np.zeros(n)
    return Signals(
        votes={}, supertrend=unused, score=unused, warmed_up=np.ones(n, dtype=bool), token_trend=token_trend,
        trading_signal=event, confidence=unused, position=token_trend, trading_signals_returns=unused,
        holding_returns=unused,
    )


def test_evaluation_by_hand():
    close = np.array([100, 100, 110, 99, 89.1, 98.01])
    evaluation = evaluate_signals(close, hand_signals([0, 1, 1, -1, 1, 1]), horizons=(1, 3))
    assert evaluation.n_bars == 6 and evaluation.n_signals == 3
    one, three = evaluation.hit_rates
    assert (one.horizon, one.n, one.hits, one.rate) == (1, 3, 3, 1.0)
    assert (one.ci_low, one.ci_high) == pytest.approx(wilson_interval(3, 3))
    assert (three.n, three.hits, three.rate) == (1, 0, 0.0)  # long at 100, 89.1 three bars later

    trades = evaluation.trades
    assert (trades.n_closed, trades.wins, trades.win_rate) == (2, 1, 0.5)
    assert trades.profit_factor == pytest.approx(0.1 / 0.01) and trades.mean_return == pytest.approx(0.045)
    assert trades.open_return == pytest.approx(0.1)
    assert evaluation.strategy["total_return"] == pytest.approx(1.1 * 0.9 * 1.1 * 1.1 - 1)
    assert evaluation.holding["total_return"] == pytest.approx(98.01 / 100 - 1)
    assert evaluation.strategy["max_drawdown"] == pytest.approx(-0.1)

    never = evaluate_signals(close, hand_signals([0] * 6))
    assert never.n_signals == 0 and never.trades.n_closed == 0 and np.isnan(never.trades.win_rate)
    assert np.isnan(never.trades.open_return) and all(rate.n == 0 for rate in never.hit_rates)


def random_walk(seed: int, n: int, volatility: float) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    close = 100 * np.exp(np.cumsum(rng.normal(0, volatility, n)))
    opened = np.r_[100.0, close[:-1]]
    high = np.maximum(opened, close) * np.exp(np.abs(rng.normal(0, volatility / 2, n)))
    low = np.minimum(opened, close) * np.exp(-np.abs(rng.normal(0, volatility / 2, n)))
    return high, low, close


@settings(max_examples=40, deadline=None)
@given(
    seed=st.integers(0, 2**32 - 1),
    n=st.integers(60, 320),
    cut_fraction=st.floats(0.0, 1.0),
    volatility=st.sampled_from([0.005, 0.03, 0.08]),
    params=st.sampled_from([SignalParams(), FAST]),
    long_only=st.booleans(),
)
def test_changing_later_bars_never_changes_earlier_signals(seed, n, cut_fraction, volatility, params, long_only):
    high, low, close = random_walk(seed, n, volatility)
    cut = min(int(cut_fraction * n), n - 1)
    other_high, other_low, other_close = random_walk(seed + 1, n, volatility)
    scale = close[cut] / other_close[cut]
    pairs = ((high, other_high), (low, other_low), (close, other_close))
    altered = [np.r_[kept[: cut + 1], new[cut + 1 :] * scale] for kept, new in pairs]

    full = compute_signals(high, low, close, params, long_only=long_only).as_columns()
    changed = compute_signals(*altered, params, long_only=long_only).as_columns()
    head = slice(None, cut + 1)
    prefix = compute_signals(high[head], low[head], close[head], params, long_only=long_only).as_columns()
    for name, values in full.items():
        np.testing.assert_array_equal(values[: cut + 1], changed[name][: cut + 1], err_msg=name)
        np.testing.assert_array_equal(values[: cut + 1], prefix[name], err_msg=name)


def test_fixture_warm_up_and_crash_hour_with_short_lookbacks():
    candles = parse_candles_csv((FIXTURES / "BTCUSDT_1h_2025-10-09_2025-10-12.csv").read_text())
    default = compute_signals(candles.high, candles.low, candles.close)
    assert not default.warmed_up.any() and not default.trading_signal.any()
    assert hourly_trading_signal_rows(BTC, candles.ts, candles.close, default) == []

    fast = compute_signals(candles.high, candles.low, candles.close, FAST)
    crash = np.flatnonzero(candles.ts == np.datetime64("2025-10-10T21:00", "ms"))[0]
    assert fast.token_trend[crash] == -1 and fast.votes["supertrend"][crash] == -1

    rows = hourly_trading_signal_rows(BTC, candles.ts, candles.close, fast)
    assert len(rows) == int(fast.warmed_up.sum())
    row = next(row for row in rows if row["TIMESTAMP"] == "2025-10-10T21:00:00.000Z")
    assert row == {
        "TIMESTAMP": "2025-10-10T21:00:00.000Z", "TOKEN_ID": 3375, "TOKEN_NAME": "Bitcoin", "TOKEN_SYMBOL": "BTC",
        "CLOSE": 113182.2, "SIGNAL": "0", "POSITION": "-1",
    }
    assert {row["SIGNAL"] for row in rows} <= {"1", "-1", "0"}
    json.dumps(envelope(rows), allow_nan=False)


def shared_candles(name: str) -> Candles:
    path = SHARED_BYBIT / name
    if not path.is_file():
        pytest.skip(f"shared data not available: {path}")
    return parse_candles_csv(path.read_text(), source=name)


@pytest.mark.parametrize("symbol", ["BTCUSDT", "ETHUSDT", "SOLUSDT"])
def test_real_daily_signals_are_sane(symbol):
    candles = shared_candles(f"{symbol}_1d.csv")
    signals = compute_signals(candles.high, candles.low, candles.close)
    events = np.flatnonzero(signals.trading_signal)
    # ~800 live days: a trend follower should flip a couple of times a quarter, not weekly.
    assert 8 <= events.size <= 40
    assert events[0] == 199 and (np.diff(signals.trading_signal[events]) != 0).all()
    after_crash = np.flatnonzero(candles.ts == np.datetime64("2025-10-17", "ms"))[0]
    assert signals.token_trend[after_crash] == -1

    evaluation = evaluate_signals(candles.close, signals)
    assert [rate.horizon for rate in evaluation.hit_rates] == [1, 3, 7]
    for rate in evaluation.hit_rates:
        assert rate.n in (events.size, events.size - 1) and rate.ci_low <= rate.rate <= rate.ci_high
    assert evaluation.trades.n_closed == events.size - 1
    first_live = np.flatnonzero(signals.warmed_up)[0]
    assert evaluation.holding["total_return"] == pytest.approx(candles.close[-1] / candles.close[first_live] - 1)
    assert evaluation.strategy["total_return"] == pytest.approx(signals.trading_signals_returns[-1])

    rows = trading_signal_rows(BTC, candles.ts, signals)
    assert len(rows) == candles.ts.size - 199 and rows[0]["DATE"] == str(candles.ts[199].astype("datetime64[D]"))
    assert rows[0]["TRADING_SIGNAL"] == rows[0]["TOKEN_TREND"] != 0
    assert rows[-1]["HOLDING_RETURNS"] == pytest.approx(signals.holding_returns[-1])
    assert set(rows[0]) >= {
        "TOKEN_ID", "TOKEN_NAME", "TOKEN_SYMBOL", "DATE", "TRADING_SIGNAL", "TOKEN_TREND",
        "TRADING_SIGNALS_RETURNS", "HOLDING_RETURNS", "TM_TRADER_GRADE", "TM_INVESTOR_GRADE", "TM_LINK",
    }
    json.dumps(envelope(rows, limit=100), allow_nan=False)


@pytest.mark.parametrize("symbol", ["BTCUSDT", "ETHUSDT", "SOLUSDT"])
def test_real_hourly_signals_are_short_into_the_crash(symbol):
    candles = shared_candles(f"{symbol}_1h.csv")
    signals = compute_signals(candles.high, candles.low, candles.close)
    crash = np.flatnonzero(candles.ts == np.datetime64("2025-10-10T21:00", "ms"))[0]
    assert (signals.token_trend[crash - 3 : crash + 3] == -1).all()
    events = np.flatnonzero(signals.trading_signal)
    assert 5 <= events.size <= 60  # 800 live hours
    evaluation = evaluate_signals(candles.close, signals, horizons=HOURLY_HORIZONS, periods_per_year=8760)
    assert [rate.horizon for rate in evaluation.hit_rates] == [4, 24]
    assert evaluation.hit_rates[1].n <= evaluation.hit_rates[0].n <= events.size
    assert np.isfinite(evaluation.strategy["sharpe"]) and evaluation.holding["max_drawdown"] < -0.05
