"""Quant metrics against the reference libraries' golden vectors (analytics.md §2.1/§2.2).

Golden values are hard-coded; where a value is not printed in analytics.md it was computed with
quantstats 0.0.86 / empyrical-reloaded 0.7.1 / pandas 3.1.1 (quantstats `_prepare_returns` path,
empyrical `value_at_risk`/`conditional_value_at_risk`/`tail_ratio`, pandas `skew`/`kurt`).
"""

from __future__ import annotations

import csv
import datetime as dt
import json
import time
from pathlib import Path

import numpy as np
import pytest

from transforms.candles import parse_candles_csv
from transforms.quantmetrics import (
    METRIC_KEYS,
    best_worst_month,
    metrics_from_returns,
    omega_ratio,
    windowed_metrics,
)
from transforms.tm_export import QUANTMETRICS_FIELDS, Token, envelope, quantmetrics_row, quantmetrics_rows

SHARED = Path(__file__).resolve().parents[1].parent / "shared" / "data"
RTOL = 1e-9

BACON_MONTHLY = [0.003, 0.026, 0.011, -0.01, 0.015, 0.025, 0.016, 0.067, -0.014, 0.04, -0.005, 0.081,
                 0.04, -0.037, -0.061, 0.017, -0.049, -0.022, 0.07, 0.058, -0.065, 0.024, -0.005, -0.009]
MIXED_RETURNS = [np.nan, 0.01, 0.10, -0.04, 0.02, 0.03, 0.02, 0.01, -0.10]
CRYPTO10 = [0.02, -0.01, 0.035, -0.04, 0.015, 0.0, -0.025, 0.05, -0.005, 0.01]


def assert_golden(actual: dict, expected: dict) -> None:
    for key, value in expected.items():
        assert actual[key] == pytest.approx(value, rel=RTOL, abs=0), key


def test_bacon_monthly_matches_quantstats_r_oracle():
    metrics = metrics_from_returns(BACON_MONTHLY, periods_per_year=12)
    # quantstats tests/data/reference_values.json (oracle: R PerformanceAnalytics 2.1.0).
    assert_golden(
        metrics,
        {
            "volatility": 0.13700015867969229,
            "cagr": 0.10367828972980941,
            "sharpe": 0.7883202548144859,
            "sortino": 1.3592165786838633,
            "max_drawdown": -0.144672955739218,
            "calmar": 0.7166390511623746,
            "omega": 1.7797833935018055,
            "skew": -0.08817174934967567,
            "kurtosis": -0.4076603211860866,
        },
    )
    # Historical VaR/CVaR (empyrical), tail ratio, extremes: cross-checked in the libraries.
    assert_golden(
        metrics,
        {
            "var_95": -0.0592,
            "cvar_95": -0.063,
            "tail_ratio": 1.1748310810810811,
            "total_return": 0.218105767220917,
            "best": 0.081,
            "worst": -0.065,
            "mean_return": 0.009,
            "std_return": 0.0395485392463709,
            "risk_reward_ratio": 0.22756845566238887,
        },
    )
    assert metrics["n"] == 24


def test_empyrical_mixed_returns_drop_the_leading_nan():
    metrics = metrics_from_returns(MIXED_RETURNS, periods_per_year=252)
    # empyrical-reloaded tests/test_stats.py values for mixed_returns.
    assert_golden(
        metrics,
        {"sharpe": 1.7238613961706866, "sortino": 2.605531251673693, "volatility": 0.9136465399704637},
    )
    assert metrics["max_drawdown"] == pytest.approx(-0.1, rel=RTOL)
    # N = 8 valid returns (quantstats); empyrical counts the NaN and gets 1.9135925373194231.
    assert metrics["n"] == 8
    assert metrics["cagr"] == pytest.approx(2.330292797300439, rel=RTOL)
    assert metrics["calmar"] == pytest.approx(23.30292797300439, rel=RTOL)
    assert metrics["cvar_95"] == pytest.approx(-0.1, rel=RTOL)
    assert metrics["var_95"] == pytest.approx(-0.079, rel=RTOL)
    assert metrics["tail_ratio"] == pytest.approx(0.9556962025316452, rel=RTOL)
    assert metrics["skew"] == pytest.approx(-0.45530640907197406, rel=RTOL)
    assert metrics["kurtosis"] == pytest.approx(1.6510229364796825, rel=RTOL)
    assert omega_ratio(MIXED_RETURNS, required_return=10.0, periods_per_year=252) == pytest.approx(
        0.83354263497557934, rel=RTOL
    )
    assert metrics_from_returns(MIXED_RETURNS, 365)["sharpe"] == pytest.approx(2.0746675114386086, rel=RTOL)


def test_crypto10_at_365_matches_all_three_libraries():
    metrics = metrics_from_returns(CRYPTO10)
    assert_golden(
        metrics,
        {
            "sharpe": 3.5409275534711666,
            "sortino": 6.2313551683436055,
            "volatility": 0.5154016772274697,
            "max_drawdown": -0.04996,
            "total_return": 0.04773477999660458,
            "cagr": 4.4849751830899125,
            "calmar": 89.77132071837,
            "omega": 1.625,
            "var_95": -0.03325,
            "cvar_95": -0.04,
            "best": 0.05,
            "worst": -0.04,
            "tail_ratio": 1.300751879699248,
            "kurtosis": -0.24182531820490083,
        },
    )
    # The vector is symmetric around its mean: skew is zero up to rounding.
    assert metrics["skew"] == pytest.approx(0.0, abs=1e-12)
    assert omega_ratio(CRYPTO10) == metrics["omega"]


def test_nans_are_dropped_before_counting():
    with_gaps = [np.nan, 0.02, np.nan, -0.01, 0.035, -0.04, np.nan, 0.015, 0.0, -0.025, 0.05, -0.005, 0.01]
    gapped, clean = metrics_from_returns(with_gaps), metrics_from_returns(CRYPTO10)
    assert gapped["n"] == clean["n"] == 10
    for key in METRIC_KEYS:
        assert gapped[key] == pytest.approx(clean[key], rel=1e-12, abs=1e-15), key


def test_degenerate_inputs_give_nan_not_infinity():
    empty = metrics_from_returns([])
    assert empty["n"] == 0 and all(np.isnan(empty[key]) for key in METRIC_KEYS)

    single = metrics_from_returns([0.01])
    assert single["total_return"] == pytest.approx(0.01)
    assert np.isnan(single["sharpe"]) and np.isnan(single["volatility"])

    constant = metrics_from_returns([0.01] * 10)
    assert np.isnan(constant["sharpe"]) and constant["volatility"] == 0.0
    assert constant["skew"] == 0.0 and constant["kurtosis"] == 0.0  # pandas convention
    assert np.isnan(constant["sortino"]) and np.isnan(constant["omega"])  # no losses
    assert constant["max_drawdown"] == 0.0 and np.isnan(constant["calmar"])

    wipeout = metrics_from_returns([0.1, -1.0, 0.0])
    assert wipeout["max_drawdown"] == -1.0 and wipeout["cagr"] == -1.0 and wipeout["total_return"] == -1.0


def test_best_worst_month_compounds_utc_calendar_months():
    month_ends = np.arange("2000-01", "2002-01", dtype="datetime64[M]") + np.timedelta64(1, "M")
    dates = month_ends.astype("datetime64[D]") - np.timedelta64(1, "D")
    assert best_worst_month(dates, BACON_MONTHLY) == pytest.approx((0.081, -0.065), rel=1e-12)

    # 2025-01-31 23:00 at UTC-5 is already February in UTC.
    est = dt.timezone(dt.timedelta(hours=-5))
    stamps = [
        dt.datetime(2025, 1, 30, 12, tzinfo=est),
        dt.datetime(2025, 1, 31, 23, tzinfo=est),
        dt.datetime(2025, 2, 2, tzinfo=dt.timezone.utc),
        dt.datetime(2025, 3, 1, tzinfo=dt.timezone.utc),
    ]
    best, worst = best_worst_month(stamps, [0.10, 0.10, -0.20, np.nan])
    assert best == pytest.approx(0.10) and worst == pytest.approx(1.10 * 0.80 - 1)
    assert np.isnan(best_worst_month(stamps[:1], [np.nan])).all()


def random_walk_closes(days: int, seed: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    return 100 * np.exp(np.cumsum(rng.normal(0.0005, 0.03, days)))


def row_of(columns: dict, as_of: str, window: str) -> dict:
    index = np.flatnonzero((columns["as_of"] == np.datetime64(as_of)) & (columns["window"] == window))
    assert index.size == 1
    return {key: values[index[0]] for key, values in columns.items()}


def test_windowed_rows_equal_metrics_of_the_trailing_returns():
    dates = np.arange("2024-01-01", "2025-06-01", dtype="datetime64[D]")
    closes = random_walk_closes(dates.size, seed=7)
    returns = closes[1:] / closes[:-1] - 1
    columns = windowed_metrics(dates, closes)
    assert len(columns["as_of"]) == 4 * dates.size
    for as_of_index in (30, 200, 365, dates.size - 1):
        for window, size in (("30d", 30), ("90d", 90), ("365d", 365), ("all", as_of_index)):
            row = row_of(columns, str(dates[as_of_index]), window)
            if size > as_of_index:
                assert np.isnan(row["sharpe"]) and row["n_returns"] == as_of_index
                continue
            trailing = returns[as_of_index - size : as_of_index]
            expected = metrics_from_returns(trailing)
            assert row["n_returns"] == size and row["window_days"] == size and row["coverage"] == 1.0
            assert row["cagr_short_window"] == (size < 365)
            for key in METRIC_KEYS:
                assert row[key] == pytest.approx(expected[key], rel=1e-12, abs=1e-15), (window, key)
            best, worst = best_worst_month(dates[as_of_index - size + 1 : as_of_index + 1], trailing)
            assert (row["best_month"], row["worst_month"]) == pytest.approx((best, worst), rel=1e-12)


def test_windows_under_90_percent_coverage_are_null_and_gaps_are_not_bridged():
    dates = np.arange("2025-01-01", "2025-03-01", dtype="datetime64[D]")
    closes = random_walk_closes(dates.size, seed=3)
    # Drop the closes of Feb 10 and Feb 20: each missing close removes two daily returns.
    keep = ~np.isin(dates, np.array(["2025-02-10", "2025-02-20"], dtype="datetime64[D]"))
    columns = windowed_metrics(dates[keep], closes[keep], windows=(30,))
    covered = row_of(columns, "2025-02-28", "30d")
    assert covered["n_returns"] == 26 and covered["coverage"] == pytest.approx(26 / 30)
    assert np.isnan(covered["sharpe"]) and np.isnan(covered["best_month"])

    one_gap = ~np.isin(dates, np.array(["2025-02-10"], dtype="datetime64[D]"))
    columns = windowed_metrics(dates[one_gap], closes[one_gap], windows=(30,))
    row = row_of(columns, "2025-02-28", "30d")
    assert row["n_returns"] == 28 and not np.isnan(row["sharpe"])
    returns = closes[1:] / closes[:-1] - 1
    valid_days = dates[1:][-30:]
    valid = ~np.isin(valid_days, np.array(["2025-02-10", "2025-02-11"], dtype="datetime64[D]"))
    assert row["total_return"] == pytest.approx(np.prod(1 + returns[-30:][valid]) - 1, rel=1e-12)


def test_as_of_selection_and_validation():
    dates = np.arange("2025-01-01", "2025-05-01", dtype="datetime64[D]")
    closes = random_walk_closes(dates.size, seed=11)
    full = windowed_metrics(dates, closes)
    one_day = windowed_metrics(dates, closes, as_of=["2025-04-30"])
    assert one_day["window"].tolist() == ["30d", "90d", "365d", "all"]
    for window in ("30d", "90d", "all"):
        expected, actual = row_of(full, "2025-04-30", window), row_of(one_day, "2025-04-30", window)
        for key in METRIC_KEYS:
            np.testing.assert_equal(actual[key], expected[key])
    assert row_of(one_day, "2025-04-30", "all")["window_days"] == 119
    assert np.isnan(row_of(one_day, "2025-04-30", "365d")["sharpe"])

    with pytest.raises(ValueError, match="strictly increasing"):
        windowed_metrics(dates[::-1], closes)
    with pytest.raises(ValueError, match="positive"):
        windowed_metrics(dates, -closes)
    with pytest.raises(ValueError, match="as_of"):
        windowed_metrics(dates, closes, as_of=["2026-01-01"])


def test_windowed_metrics_never_look_ahead():
    dates = np.arange("2024-01-01", "2025-03-01", dtype="datetime64[D]")
    closes = random_walk_closes(dates.size, seed=5)
    cut = 300
    altered = closes.copy()
    altered[cut + 1 :] *= np.exp(np.random.default_rng(1).normal(0, 0.2, dates.size - cut - 1))
    original, changed = windowed_metrics(dates, closes), windowed_metrics(dates, altered)
    earlier = original["as_of"] <= dates[cut]
    for key in (*METRIC_KEYS, "best_month", "worst_month", "n_returns"):
        np.testing.assert_array_equal(original[key][earlier], changed[key][earlier])


def test_windowed_metrics_is_fast_enough_for_three_symbols():
    dates = np.arange("2023-01-01", "2025-09-28", dtype="datetime64[D]")
    assert dates.size == 1001
    started = time.perf_counter()
    for seed in range(3):
        windowed_metrics(dates, random_walk_closes(dates.size, seed))
    assert time.perf_counter() - started < 3.0


def test_tm_quantmetrics_rows_use_v2_field_names():
    token = Token(3375, "Bitcoin", "BTC")
    row = quantmetrics_row(token, "2025-01-10", metrics_from_returns(CRYPTO10), n_returns=10)
    assert list(row)[:4] == ["TOKEN_ID", "TOKEN_NAME", "TOKEN_SYMBOL", "DATE"]
    assert row["DATE"] == "2025-01-10" and row["TOKEN_ID"] == 3375
    assert row["SHARPE"] == pytest.approx(3.5409275534711666, rel=RTOL)
    assert row["ALL_TIME_RETURN"] == pytest.approx(0.04773477999660458, rel=RTOL)
    assert row["PROFIT_FACTOR"] == row["OMEGA"] == pytest.approx(1.625)
    assert row["DAILY_VALUE_AT_RISK"] == pytest.approx(-0.03325)
    assert row["EXPECTED_SHORTFALL_CVAR"] == pytest.approx(-0.04)
    assert row["BEST_MONTH"] is None and row["WINDOW"] == "all" and row["N_RETURNS"] == 10
    assert set(QUANTMETRICS_FIELDS) <= set(row)

    dates = np.arange("2025-01-01", "2025-03-01", dtype="datetime64[D]")
    rows = quantmetrics_rows(token, windowed_metrics(dates, random_walk_closes(dates.size, 2)), window="30d")
    assert [r["DATE"] for r in rows][:2] == ["2025-01-01", "2025-01-02"] and len(rows) == dates.size
    assert rows[0]["SHARPE"] is None and rows[-1]["SHARPE"] is not None and rows[-1]["CAGR_SHORT_WINDOW"] is True
    body = envelope(rows, limit=50, page=2)
    assert body["success"] is True and body["length"] == 9 and body["data"][0]["DATE"] == "2025-02-20"
    json.dumps(body, allow_nan=False)
    with pytest.raises(ValueError, match="limit"):
        envelope(rows, limit=101)


def shared_path(*parts: str) -> Path:
    path = SHARED.joinpath(*parts)
    if not path.is_file():
        pytest.skip(f"shared data not available: {path}")
    return path


def test_real_bybit_windows_see_the_october_crash():
    closes = {}
    for symbol in ("BTCUSDT", "ETHUSDT", "SOLUSDT"):
        candles = parse_candles_csv(shared_path("bybit-linear-ohlcv-zxckotee", f"{symbol}_1d.csv").read_text())
        closes[symbol] = (candles.ts, candles.close)
    btc = windowed_metrics(*closes["BTCUSDT"], as_of=["2025-10-09", "2025-10-12", "2025-10-22"])
    before, after = row_of(btc, "2025-10-09", "30d"), row_of(btc, "2025-10-12", "30d")
    assert after["worst"] == pytest.approx(112732.5 / 121603.0 - 1, rel=1e-12)
    assert before["worst"] > -0.04 and after["cvar_95"] < before["cvar_95"]
    assert after["volatility"] > before["volatility"]
    since_start = row_of(btc, "2025-10-22", "all")
    assert since_start["n_returns"] == 999 and not since_start["cagr_short_window"]
    assert since_start["total_return"] == pytest.approx(107357.2 / 23066.0 - 1, rel=1e-12)
    for symbol in ("ETHUSDT", "SOLUSDT"):
        row = row_of(windowed_metrics(*closes[symbol], as_of=["2025-10-12"]), "2025-10-12", "30d")
        assert row["worst"] < -0.08  # alts fell harder than BTC's −7.3% close-to-close


def test_real_btc_history_since_2015_drawdowns():
    with shared_path("btc-daily-funding-lukmol", "btc_price_volume.csv").open() as handle:
        rows = list(csv.DictReader(handle))
    dates = np.array([row["date"] for row in rows], dtype="datetime64[D]")
    prices = np.array([float(row["price"]) for row in rows])
    columns = windowed_metrics(dates, prices, windows=(365, None), as_of=["2018-12-31", "2022-12-31"])
    # The two bear markets: 2018 and 2022 each took BTC down by two thirds or more in a year.
    assert row_of(columns, "2018-12-31", "365d")["max_drawdown"] == pytest.approx(-0.815, abs=0.005)
    assert row_of(columns, "2022-12-31", "365d")["max_drawdown"] == pytest.approx(-0.669, abs=0.005)
    assert row_of(columns, "2022-12-31", "all")["max_drawdown"] == pytest.approx(-0.834, abs=0.005)
    assert row_of(columns, "2022-12-31", "365d")["total_return"] < -0.6


def test_exactly_ninety_percent_coverage_counts_as_covered():
    import numpy as np

    from transforms.quantmetrics import windowed_metrics

    days = np.array([np.datetime64("2025-01-01") + i for i in range(40)])
    closes = 100 * np.cumprod(1 + np.where(np.arange(40) % 2, 0.01, -0.005))
    keep = np.ones(40, bool)
    keep[[33, 34]] = False              # two missing closes remove three returns: 27 of the last 30
    table = windowed_metrics(days[keep], closes[keep], windows=(30,), as_of=[days[-1]])
    assert int(table["n_returns"][0]) == 27
    assert not np.isnan(table["sharpe"][0])
    keep[32] = False                    # one more: 26 of 30, under 90 %
    table = windowed_metrics(days[keep], closes[keep], windows=(30,), as_of=[days[-1]])
    assert int(table["n_returns"][0]) == 26 and np.isnan(table["sharpe"][0])
