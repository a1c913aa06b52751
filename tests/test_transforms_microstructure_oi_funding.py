import numpy as np
import pytest

from transforms.funding import annualize_8h, oi_weighted_funding_8h, to_8h
from transforms.open_interest import (
    OI_CHANGE_WINDOWS,
    asof_values,
    cross_venue_total,
    oi_change_columns,
    oi_change_pct,
    open_interest_value,
    resample_last,
)

T0 = 1_760_054_400


def test_linear_open_interest_in_coins_and_usd():
    oi = open_interest_value([1000.0, 2000.0], [100_000.0, 110_000.0], contract_size=0.001)
    np.testing.assert_allclose(oi.coin, [1.0, 2.0])
    np.testing.assert_allclose(oi.usd, [100_000.0, 220_000.0])


def test_inverse_open_interest_in_coins_and_usd():
    oi = open_interest_value([500.0], [125_000.0], contract_size=100.0, inverse=True)
    assert oi.usd[0] == 50_000.0
    assert oi.coin[0] == pytest.approx(0.4)


def test_asof_respects_tolerance_and_skips_nan():
    ts = [0.0, 10.0, 20.0]
    vals = [1.0, np.nan, 3.0]
    got = asof_values([-1.0, 5.0, 15.0, 25.0], ts, vals)
    np.testing.assert_array_equal(got, [np.nan, 1.0, 1.0, 3.0])
    np.testing.assert_array_equal(asof_values([15.0, 25.0], ts, vals, tolerance_s=5.0), [np.nan, 3.0])


def test_resample_last_keeps_last_finite_value_per_bucket():
    ts = T0 + np.array([0, 100, 290, 310, 599, 900])
    vals = np.array([1.0, 2.0, np.nan, 4.0, 5.0, np.nan])
    start, last = resample_last(ts, vals, 300)
    assert (start - T0).tolist() == [0, 300, 900]
    np.testing.assert_array_equal(last, [2.0, 5.0, np.nan])


def test_change_pct_on_five_minute_grid_with_missing_bucket():
    ts = T0 + 300.0 * np.array([0, 1, 2, 4, 5])  # bucket 3 is missing
    oi = np.array([100.0, 110.0, 99.0, 120.0, 90.0])
    got = oi_change_pct(ts, oi, 300)
    np.testing.assert_allclose(got, [np.nan, 10.0, -10.0, np.nan, -25.0])
    # With a tolerance the missing bucket falls back to the previous one.
    np.testing.assert_allclose(oi_change_pct(ts, oi, 300, tolerance_s=300)[3], 120 / 99 * 100 - 100)


def test_change_columns_on_hourly_grid():
    ts = T0 + 3600.0 * np.arange(30)
    oi = 1e9 * (1 + 0.01 * np.arange(30))
    cols = oi_change_columns(ts, oi)
    assert list(cols) == [f"oi_change_pct_{k}" for k in OI_CHANGE_WINDOWS]
    assert np.isnan(cols["oi_change_pct_5m"]).all()  # no value 5 minutes back on an hourly grid
    assert cols["oi_change_pct_1h"][1] == pytest.approx(1.0)
    assert cols["oi_change_pct_4h"][4] == pytest.approx(4.0)
    assert np.isnan(cols["oi_change_pct_24h"][23])
    assert cols["oi_change_pct_24h"][29] == pytest.approx((1.29 / 1.05 - 1) * 100)


def test_cross_venue_total_sums_latest_per_venue_with_bounded_carry_forward():
    ts = T0 + np.array([10, 250, 30, 320, 40, 340, 1000, 1250])
    venue = np.array(["binance", "binance", "bybit", "bybit", "okx", "okx", "binance", "binance"])
    oi = np.array([100.0, 101.0, 50.0, 52.0, 30.0, 31.0, 105.0, 106.0])
    total = cross_venue_total(ts, venue, oi, bucket_s=300, max_stale_buckets=1)
    assert (total.bucket_start - T0).tolist() == [0, 300, 600, 900, 1200]
    # bucket 0: 101 + 50 + 30; bucket 300: binance carried (101) + 52 + 31; bucket 600: binance two
    # buckets stale and dropped, bybit/okx carried once; buckets 900/1200: binance only.
    np.testing.assert_allclose(total.total, [181.0, 184.0, 83.0, 105.0, 106.0])
    assert total.n_venues.tolist() == [3, 3, 2, 1, 1]
    strict = cross_venue_total(ts, venue, oi, bucket_s=300, max_stale_buckets=0)
    np.testing.assert_allclose(strict.total, [181.0, 83.0, np.nan, 105.0, 106.0])
    assert strict.n_venues.tolist() == [3, 2, 0, 1, 1]


def test_a_venue_joining_or_leaving_the_cross_venue_total_is_not_an_oi_change():
    # Binance alone, growing 1 % a bucket; OKX joins at 600 with 50 and leaves after 900.
    ts = T0 + np.array([0, 300, 600, 600, 900, 900, 1200, 1500])
    venue = np.array(["binance", "binance", "binance", "okx", "binance", "okx", "binance", "binance"])
    oi = np.array([100.0, 101.0, 102.01, 50.0, 103.0301, 50.5, 104.060401, 105.10100501])
    total = cross_venue_total(ts, venue, oi, bucket_s=300, max_stale_buckets=0)
    np.testing.assert_allclose(total.total, [100.0, 101.0, 152.01, 153.5301, 104.060401, 105.10100501])
    change, base = total.like_for_like_change()
    np.testing.assert_allclose(change, [np.nan, 1.0, 1.01, 1.0201 + 0.5, 1.030301, 1.04060401])
    np.testing.assert_allclose(base, [np.nan, 100.0, 101.0, 152.01, 103.0301, 104.060401])
    pct = total.change_pct(300, 300)
    np.testing.assert_allclose(pct, [np.nan, 1.0, 1.0, 1.5201 / 152.01 * 100, 1.0, 1.0])
    # Over 15 minutes only Binance is in both ends: +3 %, where the totals alone say +53.5 %.
    assert total.change_pct(900, 300)[3] == pytest.approx(3.0301)
    assert oi_change_pct(total.bucket_start, total.total, 900)[3] == pytest.approx(53.5301)
    columns = total.change_pct_columns(300)
    np.testing.assert_allclose(columns["oi_change_pct_5m"], pct)
    assert np.isnan(columns["oi_change_pct_24h"]).all()
    # Nothing in common: no change rather than a made-up one.
    apart = cross_venue_total(T0 + np.array([0, 300]), np.array(["binance", "okx"]), np.array([100.0, 50.0]),
                              bucket_s=300, max_stale_buckets=0)
    assert np.isnan(apart.like_for_like_change()[0]).all()


def test_funding_spec_vector():
    oi = np.array([10e9, 5e9, 3e9, 2e9])
    rates = np.array([1e-4, 1.5e-4, -0.5e-4, 2e-4])
    f8 = oi_weighted_funding_8h(rates, oi)
    assert f8 == pytest.approx(1.0e-4)
    assert annualize_8h(f8) == pytest.approx(0.1095)


def test_funding_normalisation_mixes_intervals():
    # Hyperliquid pays hourly: 0.125e-4 per hour is 1e-4 per 8 h.
    assert to_8h(0.125e-4, 1) == pytest.approx(1e-4)
    assert to_8h(0.5e-4, 4) == pytest.approx(1e-4)
    got = oi_weighted_funding_8h([1e-4, 0.125e-4], [3e9, 1e9], interval_hours=[8, 1])
    assert got == pytest.approx(1e-4)


def test_oi_weighted_funding_over_time_skips_missing_venues():
    rates = np.array([[1e-4, 3e-4], [np.nan, 3e-4], [np.nan, np.nan], [2e-4, 4e-4]])
    oi = np.array([[1e9, 1e9], [1e9, 1e9], [1e9, 1e9], [3e9, 0.0]])
    np.testing.assert_allclose(oi_weighted_funding_8h(rates, oi), [2e-4, 3e-4, np.nan, 2e-4])
