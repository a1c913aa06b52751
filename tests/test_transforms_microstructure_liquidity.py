import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from transforms.liquidity import depth_ratio, liquidity_withdrawals, trailing_median

T0 = 1_760_054_400  # 2025-10-10 00:00 UTC


@settings(max_examples=60, deadline=None)
@given(
    st.lists(st.integers(1, 5), min_size=1, max_size=60),
    st.lists(st.one_of(st.floats(-1e3, 1e3), st.just(float("nan"))), min_size=60, max_size=60),
    st.integers(1, 12),
    st.integers(1, 4),
)
def test_trailing_median_matches_brute_force(steps, values, window, min_periods):
    ts = np.cumsum(steps).astype(float)
    vals = np.asarray(values[: ts.size])
    got = trailing_median(ts, vals, window, min_periods=min_periods)
    for i, t in enumerate(ts):
        prior = vals[(ts >= t - window) & (ts < t)]
        prior = prior[np.isfinite(prior)]
        expected = np.median(prior) if prior.size >= min_periods else np.nan
        np.testing.assert_allclose(got[i], expected, rtol=0, atol=0)  # NaN == NaN, -0.0 == 0.0


def test_trailing_median_rejects_unsorted_ts():
    with pytest.raises(ValueError):
        trailing_median([0, 2, 1], [1, 2, 3], 10)


def _minutes(n):
    return T0 + 60.0 * np.arange(n)


def test_depth_ratio_warm_up_then_defined():
    ts = _minutes(1500)
    depth = np.full(1500, 4e6)
    baseline, ratio = depth_ratio(ts, depth)
    assert np.isnan(baseline[:720]).all()
    assert baseline[720] == 4e6 and ratio[720] == 1.0


def _calm_then_collapses(n=2 * 1440):
    rng = np.random.default_rng(3)
    ts = _minutes(n)
    depth = 1e7 * np.exp(rng.normal(0.0, 0.05, n))
    return ts, depth


def test_episodes_merge_across_short_recovery():
    ts, depth = _calm_then_collapses()
    first = 1800
    depth[first:first + 15] = 5e5              # 15 minutes at ~5 % of normal
    depth[first + 15:first + 18] = 3e6         # 3-minute partial recovery (30 %)
    depth[first + 18:first + 28] = 2e5         # 10 more minutes, deepest
    depth[first + 20] = np.nan                 # a missing minute inside does not split it

    (episode,) = liquidity_withdrawals(ts, depth)
    assert episode.start == ts[first]
    assert episode.end == ts[first + 27] + 60
    assert episode.minutes == 28
    assert episode.n_below == 24
    baseline, _ = depth_ratio(ts, depth)
    worst = int(np.searchsorted(ts, episode.worst_ts))
    assert first + 18 <= worst <= first + 27
    assert episode.worst_ratio == pytest.approx(2e5 / baseline[worst])
    assert episode.depth_at_worst == 2e5
    assert episode.baseline_depth == pytest.approx(1e7, rel=0.02)
    assert episode.depth_before == depth[first - 1]


def test_gap_longer_than_merge_gap_splits_episodes():
    ts, depth = _calm_then_collapses()
    depth[1800:1805] = 1e5
    depth[1811:1814] = 1e5  # gap = 6 minutes between end of first and start of second
    episodes = liquidity_withdrawals(ts, depth, merge_gap_s=300)
    assert [(e.start, e.end, e.n_below) for e in episodes] == [
        (ts[1800], ts[1804] + 60, 5), (ts[1811], ts[1813] + 60, 3)]
    assert len(liquidity_withdrawals(ts, depth, merge_gap_s=360)) == 1


def test_threshold_is_strict_and_configurable():
    ts = _minutes(1000)
    depth = np.full(1000, 1e6)
    depth[900] = 1e5  # exactly 0.1 of the baseline: not below
    depth[950] = 2e5
    assert liquidity_withdrawals(ts, depth) == []
    episodes = liquidity_withdrawals(ts, depth, threshold=0.25)
    assert [(e.start, e.worst_ratio) for e in episodes] == [(ts[900], 0.1), (ts[950], 0.2)]


def test_no_episode_during_warm_up_unless_min_periods_lowered():
    ts, depth = _calm_then_collapses()
    depth[100:110] = 1e5
    assert liquidity_withdrawals(ts, depth) == []
    (episode,) = liquidity_withdrawals(ts, depth, min_periods=60)
    assert episode.start == ts[100] and episode.n_below == 10


def test_missing_data_never_creates_episodes():
    ts, depth = _calm_then_collapses()
    depth[2000:2100] = np.nan
    assert liquidity_withdrawals(ts, depth) == []
