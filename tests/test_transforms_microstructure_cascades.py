import numpy as np
import pytest

from transforms.cascades import (
    DEFAULT_THRESHOLDS,
    FALLBACK_THRESHOLDS,
    CascadeConfig,
    CascadeThresholds,
    cluster_liquidations,
    detect_cascades,
    liquidated_long,
    match_windows,
    thresholds_for,
)

T = 1_760_130_000.0  # 2025-10-10 21:00:00 UTC
DAY = 86_400.0


def test_spec_toy_vector_clusters():
    offsets = [0, 20, 50, 180, 210, 600]  # 21:00:00, :00:20, :00:50, :03:00, :03:30, :10:00
    usd = [2e6, 5e6, 1e6, 3e6, 4e6, 0.5e6]
    clusters = cluster_liquidations(T + np.array(offsets, float), ["SELL"] * 6, usd, gap_s=60)
    assert [(c.n_orders, c.usd, c.start - T, c.end - T) for c in clusters] == [
        (3, 8e6, 0, 50), (2, 7e6, 180, 210), (1, 0.5e6, 600, 600)]
    assert all(c.side == "long" for c in clusters)
    assert clusters[0].indices.tolist() == [0, 1, 2]


def test_clusters_are_per_side_and_gap_is_inclusive():
    ts = T + np.array([0.0, 60.0, 30.0, 200.0])
    clusters = cluster_liquidations(ts, ["long", "long", "short", "long"], [1.0, 2.0, 4.0, 8.0], gap_s=60)
    assert [(c.side, c.start - T, c.usd) for c in clusters] == [
        ("long", 0, 3.0), ("short", 30, 4.0), ("long", 200, 8.0)]


def test_side_labels():
    assert liquidated_long(["SELL", "long", "Buy", "SHORT"]).tolist() == [True, True, False, False]
    with pytest.raises(ValueError):
        liquidated_long(["sideways"])


def test_thresholds_lookup():
    assert thresholds_for("btc") == DEFAULT_THRESHOLDS["BTC"]
    assert DEFAULT_THRESHOLDS["BTC"].min_usd == 10e6 and DEFAULT_THRESHOLDS["BTC"].min_move == 0.01
    assert thresholds_for("DOGE") == FALLBACK_THRESHOLDS


def _burst(start, n, step, usd_each, side):
    return T + start + step * np.arange(n), [side] * n, [usd_each] * n


def _minute_series(lo, hi, base, changes):
    """Per-minute series on [T + lo, T + hi) equal to ``base`` with step changes at offsets."""
    ts = T + np.arange(lo, hi, 60.0)
    values = np.full(ts.size, base, dtype=float)
    for offset, value in sorted(changes.items()):
        values[ts >= T + offset] = value
    return ts, values


def _scenario(background_usd=1e4, background_step=300.0, background_side="short"):
    n_background = int(30 * DAY / background_step)
    parts = [
        (T - 30 * DAY + background_step * np.arange(n_background) - 600, [background_side] * n_background,
         [background_usd] * n_background),
        _burst(0, 40, 4.0, 0.75e6, "long"),          # A: $30M longs, -3 %      -> cascade
        (np.array([T + 30.0]), ["short"], [1e6]),    # opposite side inside A
        _burst(7200, 20, 5.0, 0.75e6, "short"),      # B: $15M shorts, +1.5 %   -> cascade
        _burst(14400, 40, 4.0, 0.75e6, "long"),      # C: $30M longs, -0.5 %    -> too small a move
        _burst(21600, 10, 4.0, 0.8e6, "long"),       # D: $8M longs, -3 %       -> below U_min
    ]
    ts = np.concatenate([p[0] for p in parts])
    side = np.concatenate([p[1] for p in parts])
    usd = np.concatenate([p[2] for p in parts]).astype(float)
    price = _minute_series(-7200, 8 * 3600, 100_000.0, {
        60: 98_500.0, 120: 97_000.0, 180: 97_500.0, 240: 98_000.0,
        7260: 99_470.0, 7320: 99_000.0,
        14460: 98_505.0, 14520: 99_000.0,
        21660: 96_030.0, 21720: 99_000.0,
    })
    depth_2 = _minute_series(-7200, 8 * 3600, 1e7, {0: 2e6, 120: 1e6, 180: 3e6, 300: 1e7})
    depth_1 = (depth_2[0], depth_2[1] / 2)
    oi = _minute_series(-7200, 8 * 3600, 5e9, {60: 4.8e9, 180: 4.5e9})
    funding = _minute_series(-7200, 8 * 3600, 1e-4, {120: -2e-4})
    spread = _minute_series(-7200, 8 * 3600, 1.0, {60: 50.0, 120: 20.0, 240: 1.0})
    return ts, side, usd, dict(price=price, depth_2pct=depth_2, depth_1pct=depth_1, open_interest=oi,
                               funding=funding, spread_bps=spread)


def test_detects_cascades_with_metrics():
    ts, side, usd, series = _scenario()
    cascades = detect_cascades(ts, side, usd, thresholds=thresholds_for("BTC"), **series)
    assert [(c.side, c.start - T) for c in cascades] == [("long", 0.0), ("short", 7200.0)]

    a = cascades[0]
    assert (a.end - T, a.duration_s, a.n_orders) == (156.0, 156.0, 40)
    assert a.usd == pytest.approx(30e6)
    assert (a.usd_long, a.usd_short) == pytest.approx((30e6, 1e6))
    assert a.long_share == pytest.approx(30 / 31)
    # minute 21:00 holds 15 long orders ($11.25M) plus the $1M short.
    assert a.peak_1m_usd == pytest.approx(12.25e6)
    assert a.baseline_1m_usd == 0.0 and a.threshold_usd == 10e6
    assert (a.start_price, a.extreme_price) == (100_000.0, 97_000.0)
    assert a.price_move_bps == pytest.approx(-300.0)
    assert a.impact_bps_per_musd == pytest.approx(10.0)
    assert a.depth_ratio_2pct == pytest.approx(0.1)
    assert a.depth_ratio_1pct == pytest.approx(0.1)
    assert a.spread_peak_bps == 50.0
    assert (a.oi_start, a.oi_end) == (5e9, 4.5e9)
    assert a.oi_change_pct == pytest.approx(-10.0)
    assert (a.funding_before, a.funding_after) == (1e-4, -2e-4)
    assert a.hawkes_reason is None
    assert 0.0 <= a.hawkes_n <= 0.999
    assert a.hawkes_lambda_max > a.hawkes_mu > 0

    b = cascades[1]
    assert b.usd == pytest.approx(15e6) and (b.usd_long, b.usd_short) == pytest.approx((0.0, 15e6))
    assert b.long_share == 0.0
    assert (b.start_price, b.extreme_price) == (98_000.0, 99_470.0)
    assert b.price_move_bps == pytest.approx(150.0)
    assert b.impact_bps_per_musd == pytest.approx(10.0)
    assert b.hawkes_reason is None and np.isfinite(b.hawkes_n)


def test_hawkes_metrics_are_nan_with_reason_when_too_few_events():
    ts, side, usd, series = _scenario()
    config = CascadeConfig(hawkes_min_events=25)
    (a, b) = detect_cascades(ts, side, usd, thresholds=thresholds_for("BTC"), config=config, **series)
    assert a.hawkes_reason is None
    assert b.hawkes_reason == "too few events (20 < 25)"
    assert np.isnan(b.hawkes_n) and np.isnan(b.hawkes_lambda_max)


def test_missing_optional_series_give_nan_metrics():
    ts, side, usd, series = _scenario()
    (a, _) = detect_cascades(ts, side, usd, price=series["price"], thresholds=thresholds_for("BTC"))
    assert np.isnan(a.depth_ratio_2pct) and np.isnan(a.oi_change_pct) and np.isnan(a.funding_after)
    assert a.price_move_bps == pytest.approx(-300.0)


def test_no_price_data_means_no_cascade():
    ts, side, usd, _ = _scenario()
    assert detect_cascades(ts, side, usd, price=(np.empty(0), np.empty(0)), thresholds=thresholds_for("BTC")) == []


def test_size_threshold_scales_with_trailing_median_minute():
    # $1M of short liquidations every minute for 30 days: median minute $1M -> threshold 20 x $1M.
    ts, side, usd, series = _scenario(background_usd=1e6, background_step=60.0)
    cascades = [c for c in detect_cascades(ts, side, usd, thresholds=thresholds_for("BTC"), **series)
                if c.side == "long"]
    assert [c.start - T for c in cascades] == [0.0]  # A ($30M) passes, C/D fail the price or size test
    assert cascades[0].baseline_1m_usd == 1e6 and cascades[0].threshold_usd == 20e6
    # B ($15M shorts) is now below 20 x median; the short background itself is flat-priced.
    shorts = [c for c in detect_cascades(ts, side, usd, thresholds=thresholds_for("BTC"), **series)
              if c.side == "short"]
    assert shorts == []


def test_price_move_threshold_is_configurable():
    ts, side, usd, series = _scenario()
    loose = CascadeThresholds(min_usd=10e6, baseline_multiple=20.0, min_move=0.002)
    starts = [c.start - T for c in detect_cascades(ts, side, usd, thresholds=loose, **series)]
    assert starts == [0.0, 7200.0, 14400.0]


def test_match_windows_recall_precision():
    detected = [(0, 10), (20, 30), (100, 110)]
    truth = [(5, 8), (50, 60), (105, 200)]
    m = match_windows(detected, truth)
    assert m.truth_matched.tolist() == [True, False, True]
    assert m.detected_matched.tolist() == [True, False, True]
    assert (m.recall, m.precision) == pytest.approx((2 / 3, 2 / 3))
    widened = match_windows(detected, truth, tolerance_s=25)
    assert (widened.recall, widened.precision) == (1.0, 1.0)
    strict = match_windows(detected, truth, min_overlap_s=5)
    assert strict.truth_matched.tolist() == [False, False, True]


def test_match_windows_point_detection_and_empty_sets():
    assert match_windows([(7, 7)], [(5, 8)]).recall == 1.0
    empty = match_windows([], [(5, 8)])
    assert empty.recall == 0.0 and np.isnan(empty.precision)
    assert np.isnan(match_windows([(1, 2)], []).recall)


def test_a_repeated_fit_comes_from_the_memo_keyed_by_its_whole_input():
    # liquidation_cascades and cross_venue_cascades fit the same windows in one run: the second
    # fit is the first one's result, and a different window is a different fit.
    ts, side, usd, series = _scenario()
    hawkes = lambda cascades: [(c.hawkes_n, c.hawkes_beta, c.hawkes_mu, c.hawkes_lambda_max) for c in cascades]  # noqa: E731
    first = detect_cascades(ts, side, usd, thresholds=thresholds_for("BTC"), **series)
    again = detect_cascades(ts, side, usd, thresholds=thresholds_for("BTC"), **series)
    assert hawkes(again) == hawkes(first) and np.isfinite(hawkes(first)[0][0])
    shorter = detect_cascades(ts, side, usd, thresholds=thresholds_for("BTC"),
                              config=CascadeConfig(hawkes_lookback_s=600.0), **series)
    assert hawkes(shorter)[0] != hawkes(first)[0]
