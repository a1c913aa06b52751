import math

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from transforms.market_stress import StressConfig, lead_time_minutes, market_stress_index

T0 = 1_760_054_400.0
DAY_MIN = 1440


def _calm(n, seed=0):
    rng = np.random.default_rng(seed)
    ts = T0 + 60.0 * np.arange(n)
    depth = 1e7 * np.exp(rng.normal(0.0, 0.1, n))
    liq = rng.exponential(2e4, n) * (rng.random(n) < 0.3)
    oi = 5e9 * (1.0 + np.cumsum(rng.normal(0.0, 2e-4, n)))
    funding = 1e-4 + rng.normal(0.0, 5e-6, n)
    return ts, depth, liq, oi, funding


def _flat(n):
    ts = T0 + 60.0 * np.arange(n)
    return ts, np.full(n, 1e7), np.full(n, 1e5), np.full(n, 5e9), np.full(n, 1e-4)


def test_component_mappings_hit_documented_anchor_points():
    n = DAY_MIN + 1
    ts, depth, liq, oi, funding = _flat(n)
    depth[-1] = 1e7 / math.sqrt(10)                 # half-way (log scale) to a 10x collapse
    keep = math.exp(-60 / 300)
    liq[-1] = (10 * 1e5 - keep * 1e5) / (1 - keep)  # lifts the 5-min decayed average to 10x the mean
    oi[-1] = 5e9 * 0.95                              # 5 % below the 4 h max
    funding[:-1] = 1e-4 + 2e-5 * np.where(np.arange(n - 1) % 2, 1, -1)
    funding[-1] = 1e-4 + 2.5 * 2e-5                  # z = 2.5 against the prior day
    s = market_stress_index(ts, depth, liq, oi, funding)
    assert s.depth[-1] == pytest.approx(0.5)
    assert s.liquidation[-1] == pytest.approx(0.5)
    assert s.open_interest[-1] == pytest.approx(0.5)
    assert s.funding[-1] == pytest.approx(0.5)
    assert s.index[-1] == pytest.approx(50.0, abs=0.1)
    assert s.coverage[-1] == 1.0
    # The minute before: flat depth/OI and steady liquidations score 0; alternating funding has
    # z ~= 1 (not exactly: its prior window holds an odd number of alternating values).
    assert (s.depth[-2], s.liquidation[-2], s.open_interest[-2]) == (0.0, 0.0, 0.0)
    assert s.funding[-2] == pytest.approx(0.0, abs=1e-3)


def test_components_saturate():
    n = DAY_MIN + 1
    ts, depth, liq, oi, funding = _flat(n)
    depth[-1], liq[-1], oi[-1], funding[-1] = 0.0, 1e12, 4e9, 1.0
    s = market_stress_index(ts, depth, liq, oi, funding)
    assert (s.depth[-1], s.liquidation[-1], s.open_interest[-1], s.funding[-1], s.index[-1]) == (1, 1, 1, 1, 100)


def test_oi_drawdown_forgets_peaks_older_than_the_window():
    n = 600
    ts, depth, liq, oi, funding = _flat(n)
    oi[0] = 6e9  # 4 h + 1 min before the last minute
    oi[1:] = 5e9
    s = market_stress_index(ts, depth, liq, oi, funding)
    assert s.open_interest[240] == pytest.approx(1.0)  # 6e9 still in [t - 4h, t]
    assert s.open_interest[241] == 0.0


def test_warm_up_keeps_index_undefined_until_enough_weight():
    ts, depth, liq, oi, funding = _calm(DAY_MIN)
    s = market_stress_index(ts, depth, liq, oi, funding)
    # Only the OI component (weight 0.15) is defined before 720 prior minutes exist.
    assert np.all(s.coverage[:720] == pytest.approx(0.15))
    assert np.isnan(s.index[:720]).all()
    assert np.all(s.coverage[720:] == 1.0) and np.isfinite(s.index[720:]).all()
    assert np.nanmin(s.index) >= 0 and np.nanmax(s.index) <= 100


def _calm_then_cascade():
    n = 3 * DAY_MIN
    ts, depth, liq, oi, funding = _calm(n, seed=7)
    start = n - 600
    ramp = np.arange(start - 45, start)
    depth[ramp] *= np.linspace(1.0, 0.08, ramp.size)         # books thin out ahead of the cascade
    funding[ramp] += np.linspace(0.0, 1.5e-4, ramp.size)      # crowded longs pay up
    liq[ramp] += np.linspace(0.0, 5e5, ramp.size)             # first forced sells
    hot = slice(start, start + 40)
    depth[hot] *= 0.03
    liq[hot] += np.random.default_rng(1).uniform(5e6, 5e7, 40)
    oi[start:] *= np.r_[np.linspace(1.0, 0.85, 40), np.full(n - start - 40, 0.85)]
    funding[hot] -= 3e-4
    return ts, depth, liq, oi, funding, start


def test_index_is_low_when_calm_and_rises_before_and_during_a_cascade():
    ts, depth, liq, oi, funding, start = _calm_then_cascade()
    s = market_stress_index(ts, depth, liq, oi, funding)
    calm = s.index[DAY_MIN:start - 45]
    assert np.nanpercentile(calm, 99) < 15 and np.nanmax(calm) < 25
    assert np.all(s.index[start:start + 40] > 80)
    lead = lead_time_minutes(ts, s.index, ts[start], threshold=50)
    assert 5 <= lead <= 45
    assert np.all(s.index[start - int(lead):start] >= 40)


@settings(max_examples=25, deadline=None)
@given(st.integers(200, 1190), st.integers(0, 2**32 - 1))
def test_changing_the_future_never_changes_the_past(cut, seed):
    config = StressConfig(baseline_window_s=6 * 3600, min_periods=120, oi_window_s=3600)
    ts, depth, liq, oi, funding = _calm(1200, seed=3)
    before = market_stress_index(ts, depth, liq, oi, funding, config=config)
    rng = np.random.default_rng(seed)
    future = slice(cut, None)
    k = 1200 - cut
    depth[future] *= rng.uniform(0.0, 3.0, k)
    liq[future] = rng.uniform(0.0, 1e9, k)
    oi[future] *= rng.uniform(0.5, 1.5, k)
    funding[future] = np.where(rng.random(k) < 0.2, np.nan, rng.normal(0.0, 1e-3, k))
    after = market_stress_index(ts, depth, liq, oi, funding, config=config)
    for name in ("index", "depth", "liquidation", "open_interest", "funding", "coverage"):
        np.testing.assert_array_equal(getattr(after, name)[:cut], getattr(before, name)[:cut])


def test_lead_time_minutes():
    ts = T0 + 60.0 * np.arange(20)
    index = np.array([10.0] * 8 + [55, 40, 60, 70] + [np.nan] * 2 + [90] * 6)
    assert lead_time_minutes(ts, index, ts[15]) == 7.0          # first crossing at minute 8
    assert lead_time_minutes(ts, index, ts[15], lookback_s=300) == 5.0  # window starts at 10: censored
    assert math.isnan(lead_time_minutes(ts, index, ts[7]))
    assert lead_time_minutes(ts, index, ts[15], threshold=80) == 1.0


def test_rejects_misaligned_inputs():
    ts, depth, liq, oi, funding = _flat(10)
    with pytest.raises(ValueError):
        market_stress_index(ts, depth[:-1], liq, oi, funding)


def _three_books_one_missing_for_ten_minutes():
    """Three venues' books with steady depth (3:2:1) for two days; the largest is missing for 10
    minutes near the end while the other two keep their depth."""
    n = 2 * DAY_MIN
    ts, _, liq, oi, funding = _calm(n, seed=11)
    rng = np.random.default_rng(5)
    books = np.column_stack([scale * 1e7 * np.exp(rng.normal(0.0, 0.05, n)) for scale in (3.0, 2.0, 1.0)])
    gap = slice(n - 30, n - 20)
    books[gap, 0] = np.nan
    return ts, books, liq, oi, funding, gap


def test_a_missing_venue_does_not_move_the_depth_component():
    ts, books, liq, oi, funding, gap = _three_books_one_missing_for_ten_minutes()
    s = market_stress_index(ts, books, liq, oi, funding)
    before = slice(gap.start - 60, gap.start)
    assert np.nanmax(s.depth[gap]) <= np.nanmax(s.depth[before])
    assert np.nanmax(s.depth[gap]) < 0.1
    assert s.depth_books[gap].sum(axis=1).tolist() == [2] * 10
    assert s.depth_books[gap.stop:].all() and s.depth_books[before].all()
    # The same books summed into one series read the gap as half the market's depth withdrawn.
    summed = market_stress_index(ts, np.nansum(books, axis=1), liq, oi, funding)
    assert np.all(summed.depth[gap] > 0.25)


def test_depth_component_of_several_books_is_their_depth_against_their_baselines():
    ts, books, liq, oi, funding, gap = _three_books_one_missing_for_ten_minutes()
    books[-1] = [1.5e7, 2e7, 1e7]          # the first book halves, the others stay at their baselines
    s = market_stress_index(ts, books, liq, oi, funding)
    baselines = np.nanmedian(books[-1 - DAY_MIN:-1], axis=0)
    ratio = books[-1].sum() / baselines.sum()
    assert s.depth[-1] == pytest.approx(-math.log10(ratio), rel=1e-9)
    assert 0.05 < s.depth[-1] < 0.15


def test_a_book_without_a_warm_baseline_does_not_count_yet():
    n = DAY_MIN + 1
    ts, depth, liq, oi, funding = _flat(n)
    late = np.full(n, np.nan)
    late[-100:] = 1e5                      # joins 100 minutes before the end: far below its own 720 minutes
    s = market_stress_index(ts, np.column_stack([depth, late]), liq, oi, funding)
    assert s.depth_books[:, 1].sum() == 0 and s.depth_books[:, 0].sum() == n - 720
    assert s.depth[-1] == 0.0


def test_rejects_depth_of_the_wrong_shape():
    ts, depth, liq, oi, funding = _flat(10)
    with pytest.raises(ValueError, match="depth must have shape"):
        market_stress_index(ts, depth.reshape(2, 5), liq, oi, funding)
