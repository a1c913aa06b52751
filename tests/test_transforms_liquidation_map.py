"""Liquidation-level map and its score (analytics.md §9.4): the spec's vectors and edge cases."""

import math

import numpy as np
import pytest

from transforms.liquidation_map import (
    LiquidationLevels,
    MapSnapshot,
    MinuteInputs,
    bin_width,
    build_liquidation_map,
    compare_maps,
    score_liquidation_map,
    top_share,
)

SPEC_TIERS = {10: 0.5, 100: 0.5}


def _minute(ts, oi, vwap=100_000.0, buy=600.0, sell=400.0, high=100_050.0, low=99_950.0):
    return MinuteInputs(ts, oi, vwap, buy, sell, high, low)


def _approx_levels(levels: dict[float, float]) -> dict[float, float]:
    return {price: pytest.approx(usd) for price, usd in levels.items()}


def test_spec_vector_opening_then_pro_rata_close_and_consumption():
    levels = LiquidationLevels(SPEC_TIERS)
    levels.advance(_minute(0, 100.0))
    assert levels.advance(_minute(60, 110.0)) == 0.0
    assert levels.levels(True) == _approx_levels({90_500.0: 300_000.0, 99_500.0: 300_000.0})
    assert levels.levels(False) == _approx_levels({109_500.0: 200_000.0, 100_500.0: 200_000.0})

    consumed = levels.advance(_minute(120, 107.8, high=100_400.0, low=99_400.0))
    assert consumed == pytest.approx(294_000.0)
    assert levels.levels(True) == _approx_levels({90_500.0: 294_000.0})
    assert levels.levels(False) == _approx_levels({109_500.0: 196_000.0, 100_500.0: 196_000.0})
    assert levels.modeled_liquidated_usd == pytest.approx(294_000.0)


def test_levels_opened_in_a_minute_are_not_consumed_by_that_minutes_range():
    levels = LiquidationLevels(SPEC_TIERS)
    levels.advance(_minute(0, 100.0))
    # This minute's own low reaches the new 99 500 long level: it only counts from the next minute.
    assert levels.advance(_minute(60, 110.0, low=99_000.0)) == 0.0
    assert levels.advance(_minute(120, 110.0, low=99_000.0)) == pytest.approx(300_000.0)


def test_short_level_consumed_when_high_reaches_it():
    levels = LiquidationLevels(SPEC_TIERS)
    levels.advance(_minute(0, 100.0))
    levels.advance(_minute(60, 110.0))
    assert levels.advance(_minute(120, 110.0, high=100_500.0)) == pytest.approx(200_000.0)
    assert set(levels.levels(False)) == {109_500.0}


def test_a_given_like_for_like_change_replaces_the_difference_of_totals():
    levels = LiquidationLevels(SPEC_TIERS)
    levels.advance(_minute(0, 100.0))
    # A second venue's 200 joins the total while the first grows by 10: only the 10 is opened.
    levels.advance(MinuteInputs(60, 310.0, 100_000.0, 600.0, 400.0, 100_050.0, 99_950.0, open_interest_change=10.0))
    assert levels.levels(True) == _approx_levels({90_500.0: 300_000.0, 99_500.0: 300_000.0})
    assert levels.levels(False) == _approx_levels({109_500.0: 200_000.0, 100_500.0: 200_000.0})
    # The change may say "none" where the totals moved; pro-rata closing scales by the previous total.
    levels.advance(MinuteInputs(120, 280.0, 100_000.0, 0.0, 0.0, 100_050.0, 99_950.0, open_interest_change=-31.0))
    assert levels.levels(False) == _approx_levels({109_500.0: 180_000.0, 100_500.0: 180_000.0})


def test_growth_without_taker_volume_is_counted_as_unplaced():
    levels = LiquidationLevels(SPEC_TIERS)
    levels.advance(_minute(0, 100.0))
    levels.advance(_minute(60, 105.0, buy=0.0, sell=0.0))
    assert levels.price.size == 0
    assert levels.unplaced_usd == pytest.approx(5 * 100_000.0)


def test_growth_before_any_trade_is_counted_as_unplaced_at_the_first_vwap():
    levels = LiquidationLevels(SPEC_TIERS)
    nan = math.nan
    levels.advance(MinuteInputs(0, 100.0, nan, 0.0, 0.0, nan, nan))
    levels.advance(MinuteInputs(60, 104.0, nan, 0.0, 0.0, nan, nan))
    levels.advance(MinuteInputs(120, 103.0, nan, 0.0, 0.0, nan, nan))
    levels.advance(MinuteInputs(180, 105.0, nan, 0.0, 0.0, nan, nan))
    assert levels.unplaced_usd == 0.0            # not priced yet, not forgotten
    levels.advance(_minute(240, 105.0, vwap=50_000.0))
    assert levels.unplaced_usd == pytest.approx(6 * 50_000.0)
    assert levels.price.size == 0


def test_bin_width_rounds_down_to_one_two_five():
    assert bin_width(100_000.0) == 100.0
    assert bin_width(3_600.0) == 2.0
    assert bin_width(180.0) == pytest.approx(0.1)
    assert bin_width(70_000.0) == 50.0
    assert bin_width(0.25) == pytest.approx(0.0002)
    with pytest.raises(ValueError, match="positive finite"):
        bin_width(0.0)


def test_snapshot_bins_the_spec_vector():
    levels = LiquidationLevels(SPEC_TIERS)
    levels.advance(_minute(0, 100.0))
    levels.advance(_minute(60, 110.0))
    snap = levels.snapshot(60, 100_000.0)
    assert snap.width == 100.0
    assert snap.rows() == [
        {"bin_lo": 90_500.0, "bin_hi": 90_600.0, "long_usd": pytest.approx(300_000.0), "short_usd": 0.0},
        {"bin_lo": 99_500.0, "bin_hi": 99_600.0, "long_usd": pytest.approx(300_000.0), "short_usd": 0.0},
        {"bin_lo": 100_500.0, "bin_hi": 100_600.0, "long_usd": 0.0, "short_usd": pytest.approx(200_000.0)},
        {"bin_lo": 109_500.0, "bin_hi": 109_600.0, "long_usd": 0.0, "short_usd": pytest.approx(200_000.0)},
    ]


def test_build_map_snapshots_on_the_interval_and_rejects_unordered_minutes():
    minutes = [_minute(60 * i, 100.0 + i) for i in range(121)]
    snaps = build_liquidation_map(minutes, tiers=SPEC_TIERS)
    assert [s.ts for s in snaps] == [0, 3600, 7200]
    assert snaps[-1].total_usd.sum() > snaps[1].total_usd.sum() > 0
    with pytest.raises(ValueError, match="strictly increasing"):
        build_liquidation_map([_minute(60, 100.0), _minute(0, 101.0)])


def test_spec_score_vector():
    predicted = [5, 1, 0, 3, 9, 2, 0, 4]
    realized = [10, 0, 0, 20, 30, 0, 0, 40]
    q, b = top_share(predicted, realized)
    assert (q, b) == (40.0, 100.0)


def test_top_share_ties_go_to_the_lower_price():
    assert top_share([1, 1, 1, 1], [5, 7, 0, 0]) == (5.0, 12.0)
    assert top_share([0, 0, 0, 0, 0], [1, 2, 3, 4, 5], 0.25) == (3.0, 15.0)   # ceil(5/4) = 2 bins


def _snapshot(ts, edges, predicted, width=10.0):
    edges = np.asarray(edges, dtype=float)
    return MapSnapshot(ts, 100.0, width, edges, np.asarray(predicted, dtype=float), np.zeros(len(edges)), 0.0, 0.0)


def test_score_pools_over_snapshots_and_skips_those_without_liquidations():
    # Snapshot 0 is the spec vector on bins 0..70 (width 10); snapshot 1 predicts nothing
    # and sees its liquidations spread over four bins; snapshot 2 has no liquidation in its horizon.
    snaps = [
        _snapshot(0, [0, 10, 20, 30, 40, 50, 60, 70], [5, 1, 0, 3, 9, 2, 0, 4]),
        _snapshot(1000, [], []),
        _snapshot(5000, [0], [1]),
    ]
    liqs = ([100, 100, 100, 100, 1100, 1200, 1300, 1400],
            [5, 35, 45, 75, 1, 11, 21, 31],
            [10, 20, 30, 40, 10, 10, 10, 10])
    candles = ([500, 900, 1500, 2000, 5500], [79, 60, 39, 30, 9], [0, 10, 0, 5, 0])
    score = score_liquidation_map(snaps, liqs, candles, horizon_s=1000)
    # Snapshot 1: bins 0..30, top quarter = 1 bin, ties at 0 -> lowest (bin 0) holds 10 of 40.
    assert score.n_scored == 2 and score.n_skipped == 1
    assert score.score == pytest.approx((40 + 10) / (100 + 40))
    assert score.mean_ratio == pytest.approx((0.4 + 0.25) / 2)
    assert score.lift == pytest.approx(score.score / 0.25)
    assert score.precision_top10 == pytest.approx((30 + 10) / 140)
    assert score.ci_low <= score.score <= score.ci_high
    # Snapshot 0's top two bins are the map's own; snapshot 1's one bin is the tie rule's.
    assert score.ranked_share == pytest.approx(2 / 3)


def test_score_without_any_scorable_snapshot_is_nan():
    score = score_liquidation_map([_snapshot(0, [0], [1])], ([], [], []), ([10], [5], [1]))
    assert math.isnan(score.score) and score.n_scored == 0 and score.n_skipped == 1


def test_compare_maps_rank_correlation_and_overlap():
    edges = np.arange(0, 80, 10.0)
    true = np.array([0, 1, 2, 3, 4, 5, 6, 7.0])
    same = compare_maps((edges, true * 3, 10.0), (edges, true, 10.0), 0, 79)
    assert same.rank_correlation == pytest.approx(1.0) and same.top_quartile_overlap == 1.0
    reverse = compare_maps((edges, true[::-1], 10.0), (edges, true, 10.0), 0, 79)
    assert reverse.rank_correlation == pytest.approx(-1.0) and reverse.top_quartile_overlap == 0.0
    # A finer model map is summed into the truth's 20-wide bins before comparing.
    coarse = compare_maps((edges, true, 10.0), (np.arange(0, 80, 20.0), [1, 5, 9, 13], 20.0), 0, 79)
    assert coarse.width == 20.0 and coarse.n_bins == 4 and coarse.rank_correlation == pytest.approx(1.0)


def _minutes_from_truth(seconds: list[dict]) -> list[MinuteInputs]:
    """The simulator's per-second truth as the map's per-minute inputs (OI at the minute's end)."""
    by_minute: dict[int, list[dict]] = {}
    for r in seconds:
        if r["ts"] % 1000 == 0:
            by_minute.setdefault((r["ts"] - 1) // 60_000, []).append(r)
    out = []
    for minute, rows in sorted(by_minute.items()):
        volume = sum(r["volume"] for r in rows)
        buy = sum(r["taker_buy_usd"] for r in rows)
        sell = sum(r["taker_sell_usd"] for r in rows)
        highs = [r["high"] for r in rows if r["high"] is not None]
        lows = [r["low"] for r in rows if r["low"] is not None]
        out.append(MinuteInputs((minute + 1) * 60.0, rows[-1]["oi"], (buy + sell) / volume if volume else math.nan,
                                buy, sell, max(highs, default=math.nan), min(lows, default=math.nan)))
    return out


def test_simulated_cascade_map_against_the_true_map(cascade_truth):
    """Score the modelled map and the simulator's true map (open positions by true liquidation
    price) every 5 minutes against every true liquidation in the next 30 minutes, and compare the
    two maps. The true map must beat chance; the modelled one is reported: in a 75-minute run it
    only sees 75 minutes of OI changes (about a tenth of the true positions' notional)."""
    for symbol in ("BTCUSDT", "ETHUSDT", "SOLUSDT"):
        minutes = _minutes_from_truth([r for r in cascade_truth["second"] if r["symbol"] == symbol])
        model = build_liquidation_map(minutes, snapshot_every_s=300)
        true = [MapSnapshot(s["ts"] / 1000, s["mark"], s["width"], np.array(s["bin_lo"]), np.array(s["long_usd"]),
                            np.array(s["short_usd"]), 0.0, 0.0)
                for s in cascade_truth["liq_levels"] if s["symbol"] == symbol]
        liqs = [r for r in cascade_truth["liquidation"] if r["symbol"] == symbol]
        realized = (np.array([r["ts"] for r in liqs]) / 1000, np.array([r["price"] for r in liqs]),
                    np.array([r["notional"] for r in liqs]))
        candles = (np.array([m.ts for m in minutes]), np.array([m.high for m in minutes]),
                   np.array([m.low for m in minutes]))
        model_score = score_liquidation_map(model, realized, candles, horizon_s=1800)
        true_score = score_liquidation_map(true, realized, candles, horizon_s=1800)
        true_by_ts = {s.ts: s for s in true}
        comparisons = [compare_maps((m.bin_lo, m.total_usd, m.width),
                                    (true_by_ts[m.ts].bin_lo, true_by_ts[m.ts].total_usd, true_by_ts[m.ts].width),
                                    m.mid * 0.85, m.mid * 1.15)
                       for m in model if m.ts in true_by_ts]
        print(f"{symbol}: model score {model_score.score:.3f} [{model_score.ci_low:.3f}, {model_score.ci_high:.3f}] "
              f"p@10% {model_score.precision_top10:.3f}; true map {true_score.score:.3f} "
              f"[{true_score.ci_low:.3f}, {true_score.ci_high:.3f}]; map vs true: Spearman "
              f"{np.nanmedian([c.rank_correlation for c in comparisons]):.3f}, top-quartile overlap "
              f"{np.nanmedian([c.top_quartile_overlap for c in comparisons]):.3f}; modelled liquidated "
              f"${model[-1].modeled_liquidated_usd / 1e6:.0f}M")
        assert model_score.n_scored >= 10 and true_score.n_scored >= 10
        assert true_score.ci_low > 0.25, (symbol, true_score)
        assert math.isfinite(model_score.score) and len(comparisons) >= 10
        assert model[-1].modeled_liquidated_usd > 0
