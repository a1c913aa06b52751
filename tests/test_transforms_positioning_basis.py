"""Basis, premium, TWAP and cross-venue price dislocation (analytics.md §9.2)."""

import numpy as np
import pytest

from transforms.basis import (
    annualized_basis_rate,
    basis,
    premium,
    premium_annualized,
    premium_asof,
    price_dislocation,
    twap,
)

T0 = 1_760_054_400


def test_binance_basis_vector():
    b = basis(34414.10, 34400.15945055)
    assert float(b.basis) == pytest.approx(13.94054945, abs=1e-8)
    assert float(b.basis_rate) == pytest.approx(0.000405247, abs=5e-10)
    assert round(float(b.basis_rate), 4) == 0.0004   # what Binance shows


def test_premium_and_its_annualisation():
    assert premium([100.5, 99.0], [100.0, 100.0]) * 1e4 == pytest.approx([50.0, -100.0])
    assert np.isnan(premium(100.0, 0.0)) and np.isnan(premium(100.0, np.nan))
    assert premium_annualized(1e-4) == pytest.approx(0.876)


def test_dated_future_annualisation():
    expiry = T0 + 36.5 * 86_400
    assert annualized_basis_rate([0.01, 0.01, 0.01], [T0, expiry, expiry + 1], expiry)[0] == pytest.approx(0.1)
    assert np.isnan(annualized_basis_rate([0.01, 0.01], [expiry, expiry + 1], expiry)).all()


def test_premium_asof_pairs_separate_mark_and_index_streams():
    # OKX-style: index every second, marks in between; the last mark has a stale index.
    out = premium_asof([T0 + 0.5, T0 + 1.2, T0 + 9.0], [100.1, 100.3, 100.0],
                       [T0, T0 + 1.0, T0 + 2.0], [100.0, 100.1, 100.2], tolerance_s=2.0)
    assert out[:2] * 1e4 == pytest.approx([10.0, (100.3 / 100.1 - 1) * 1e4])
    assert np.isnan(out[2])


def test_twap_weights_by_time_and_reports_coverage():
    # Bucket 0: 1.0 for 30 s then 3.0 for 30 s -> 2.0, though the plain mean of samples is (1 + 3 + 3) / 3.
    r = twap([T0, T0 + 30, T0 + 45], [1.0, 3.0, 3.0], 60, max_hold_s=60, end_s=T0 + 60)
    assert r.bucket_start.tolist() == [T0]
    assert r.twap[0] == pytest.approx(2.0) and r.coverage[0] == pytest.approx(1.0)
    # Without an end the last sample stands for its series for max_hold_s, into the next minute.
    spill = twap([T0, T0 + 30, T0 + 45], [1.0, 3.0, 3.0], 60, max_hold_s=60)
    assert spill.bucket_start.tolist() == [T0, T0 + 60]
    assert spill.twap[1] == 3.0 and spill.coverage[1] == pytest.approx(45 / 60)


def test_twap_carries_into_the_next_bucket_up_to_max_hold():
    r = twap([T0 + 50, T0 + 70], [2.0, 4.0], 60, max_hold_s=20)
    # Bucket 0: 2.0 from 50 to 60. Bucket 1: 2.0 from 60 to 70, 4.0 from 70 to 90: half covered.
    assert r.bucket_start.tolist() == [T0, T0 + 60]
    assert r.twap.tolist() == pytest.approx([2.0, (2 * 10 + 4 * 20) / 30])
    assert r.coverage.tolist() == pytest.approx([10 / 60, 0.5])


def test_twap_leaves_out_buckets_no_sample_reaches_and_skips_nan():
    r = twap([T0, T0 + 1, T0 + 300], [1.0, np.nan, 5.0], 60, max_hold_s=5)
    assert r.bucket_start.tolist() == [T0, T0 + 300]
    assert r.twap.tolist() == [1.0, 5.0]
    assert r.coverage.tolist() == pytest.approx([5 / 60, 5 / 60])
    with pytest.raises(ValueError, match="sorted"):
        twap([2, 1], [1.0, 1.0], 60, max_hold_s=1)
    assert twap([], [], 60, max_hold_s=1).bucket_start.size == 0


def test_hourly_premium_twap_to_annualised():
    # A constant 1 bp premium sampled every second for an hour -> 0.876 per year.
    ts = T0 + np.arange(3600)
    r = twap(ts, np.full(3600, 1e-4), 3600, max_hold_s=5, end_s=T0 + 3600)
    assert r.coverage.tolist() == [1.0]
    assert premium_annualized(r.twap) == pytest.approx([0.876])


def test_dislocation_against_the_median_and_absent_venues():
    minute = [T0, T0, T0, T0 + 60, T0 + 60, T0 + 120, T0 + 180]
    venue = ["a", "b", "c", "a", "b", "a", "c"]
    price = [100.0, 101.0, 103.0, 100.0, 101.0, 100.0, np.nan]
    d = price_dislocation(minute, venue, price)
    assert d.median_price[:3].tolist() == [101.0] * 3
    assert d.dislocation_bps[:3] == pytest.approx([(100 / 101 - 1) * 1e4, 0.0, (103 / 101 - 1) * 1e4])
    # c is missing in the second minute: the median is of a and b alone, not of a zero.
    assert d.median_price[3] == 100.5 and d.n_venues[3] == 2
    assert d.dislocation_bps[3:5] == pytest.approx([(100 / 100.5 - 1) * 1e4, (101 / 100.5 - 1) * 1e4])
    # One venue in a minute has nothing to be dislocated from; a NaN price is no price.
    assert d.n_venues[5] == 1 and np.isnan(d.dislocation_bps[5])
    assert d.n_venues[6] == 0 and np.isnan(d.dislocation_bps[6])


def test_dislocation_refuses_two_prices_of_one_venue_in_a_minute():
    with pytest.raises(ValueError, match="more than one price"):
        price_dislocation([T0, T0], ["a", "a"], [1.0, 2.0])
