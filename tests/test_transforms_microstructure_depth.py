from decimal import Decimal
from fractions import Fraction

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from transforms.depth import (
    BANDS,
    aggregate_buckets,
    band_label,
    depth_bands,
    depth_bands_batch,
    depth_per_minute,
    offsets_from_sorted_ids,
)

SPEC_BIDS = [(99.5, 2), (99.0, 3), (98.0, 5), (97.9, 10)]
SPEC_ASKS = [(100.5, 1), (101.0, 4), (102.0, 6), (102.1, 8)]
I_1PCT, I_2PCT = BANDS.index(0.01), BANDS.index(0.02)


def test_spec_vector_mid_reference():
    r = depth_bands(SPEC_BIDS, SPEC_ASKS)
    assert r.valid and r.mid == 100.0
    assert r.spread_bps == pytest.approx(100.0)
    assert (r.bid_base[I_1PCT], r.bid_usd[I_1PCT], r.ask_base[I_1PCT], r.ask_usd[I_1PCT]) == pytest.approx(
        (5, 496.0, 5, 504.5))
    assert (r.bid_base[I_2PCT], r.bid_usd[I_2PCT], r.ask_base[I_2PCT], r.ask_usd[I_2PCT]) == pytest.approx(
        (10, 986.0, 11, 1116.5))
    assert r.imbalance[I_2PCT] == pytest.approx(-0.0620690, abs=5e-8)


def test_spec_vector_touch_reference():
    r = depth_bands(SPEC_BIDS, SPEC_ASKS, reference="touch")
    assert (r.bid_base[I_2PCT], r.bid_usd[I_2PCT], r.ask_base[I_2PCT], r.ask_usd[I_2PCT]) == pytest.approx(
        (20, 1965.0, 19, 1933.3))


def test_quote_rate_and_empty_band_imbalance():
    r = depth_bands(SPEC_BIDS, SPEC_ASKS, quote_usd_rate=0.998)
    assert r.bid_usd[I_2PCT] == pytest.approx(986.0 * 0.998)
    assert r.bid_quote[I_2PCT] == pytest.approx(986.0)
    # Nothing within 0.1 % of mid 100 on either side: imbalance is undefined, not 0.
    assert r.bid_base[0] == 0 and np.isnan(r.imbalance[0])


def test_inverse_contracts():
    # 100 USD per contract: 10 contracts at 99.5 are $1000 and 1000/99.5 coins.
    r = depth_bands([(99.5, 10)], [(100.5, 20)], contract_size=100.0, inverse=True)
    assert r.bid_quote[I_1PCT] == pytest.approx(1000.0)
    assert r.bid_base[I_1PCT] == pytest.approx(1000.0 / 99.5)
    assert r.ask_usd[I_1PCT] == pytest.approx(2000.0)


@pytest.mark.parametrize("bids, asks", [
    ([(101.0, 1)], [(100.0, 1)]),   # crossed
    ([(100.0, 1)], [(100.0, 1)]),   # locked
    ([], [(100.0, 1)]),             # empty side
    ([(99.0, 0)], [(100.0, 1)]),    # only a deleted level
])
def test_invalid_books_are_nan(bids, asks):
    r = depth_bands(bids, asks)
    assert not r.valid
    assert np.isnan(r.mid) and np.isnan(r.spread_bps)
    assert np.isnan(r.bid_usd).all() and np.isnan(r.imbalance).all()


def test_bound_is_inclusive_where_naive_float_comparison_fails():
    # mid 1.10; 10 % bid bound is exactly 0.99, but 1.1 * 0.9 == 0.9900000000000001 in floats.
    r = depth_bands([(1.09, 1), (0.99, 2), (0.98, 4)], [(1.11, 1)])
    assert r.bid_base[-1] == 3
    # mid 2.10; 10 % ask bound is exactly 2.31, but 2.1 * 1.1 == 2.3099999999999996.
    r = depth_bands([(2.09, 1)], [(2.11, 1), (2.31, 2), (2.32, 4)])
    assert r.ask_base[-1] == 3


def test_columns_are_named_by_band():
    cols = depth_bands(SPEC_BIDS, SPEC_ASKS).columns()
    assert [band_label(b) for b in BANDS] == ["0_1", "0_25", "0_5", "1", "2", "5", "10"]
    assert cols["bid_usd_2"] == pytest.approx(986.0)
    assert cols["imbalance_2"] == pytest.approx(-0.0620690, abs=5e-8)
    assert set(cols) >= {"valid", "mid", "spread_bps", "ask_base_0_25", "ask_quote_10"}


TICKS = ["0.001", "0.01", "0.1", "0.5", "1"]


@st.composite
def tick_grid_books(draw):
    """Books on a decimal tick grid, with extra levels on and next to every band bound so the
    inclusive-edge case is exercised in most examples."""
    tick = Decimal(draw(st.sampled_from(TICKS)))
    best_bid = draw(st.integers(1, 2_000_000))
    best_ask = best_bid + draw(st.integers(1, 40))
    mid = Fraction(best_bid + best_ask, 2)
    bid_ticks, ask_ticks = {best_bid}, {best_ask}
    for band in BANDS:
        x = Fraction(Decimal(str(band)))
        for bound, levels in ((mid * (1 - x), bid_ticks), (mid * (1 + x), ask_ticks)):
            for k in (bound.__floor__() - 1, bound.__floor__(), bound.__ceil__(), bound.__ceil__() + 1):
                levels.add(k)
    bid_ticks = {k for k in bid_ticks if 0 < k <= best_bid}
    ask_ticks = {k for k in ask_ticks if k >= best_ask}
    bid_ticks |= set(draw(st.lists(st.integers(max(1, best_bid // 2), best_bid), max_size=10)))
    ask_ticks |= set(draw(st.lists(st.integers(best_ask, best_ask * 2), max_size=10)))

    def side(ticks):
        return [(k, draw(st.integers(1, 1000))) for k in sorted(ticks)]

    return tick, side(bid_ticks), side(ask_ticks)


def _to_float_book(tick, levels):
    return [(float(Decimal(k) * tick), float(q)) for k, q in levels]


@settings(max_examples=150, deadline=None)
@given(tick_grid_books())
def test_membership_matches_exact_rational_arithmetic(book):
    tick, bids, asks = book
    r = depth_bands(_to_float_book(tick, bids), _to_float_book(tick, asks))
    mid = Fraction(bids[-1][0] + asks[0][0], 2)
    for j, band in enumerate(BANDS):
        x = Fraction(Decimal(str(band)))
        expected_bid = sum(q for k, q in bids if k >= mid * (1 - x))
        expected_ask = sum(q for k, q in asks if k <= mid * (1 + x))
        assert r.bid_base[j] == expected_bid
        assert r.ask_base[j] == expected_ask


@settings(max_examples=150, deadline=None)
@given(tick_grid_books(), st.sampled_from(["mid", "touch"]))
def test_depth_non_decreasing_with_band_width(book, reference):
    tick, bids, asks = book
    r = depth_bands(_to_float_book(tick, bids), _to_float_book(tick, asks), reference=reference)
    for field in ("bid_base", "ask_base", "bid_usd", "ask_usd"):
        assert np.all(np.diff(getattr(r, field)) >= 0)


level = st.tuples(st.floats(0.5, 200.0), st.floats(0.0, 50.0))
book = st.tuples(st.lists(level, max_size=12), st.lists(level, max_size=12))


def _assert_same(batch, i, single):
    assert bool(batch.valid[i]) == bool(single.valid)
    for name in ("best_bid", "best_ask", "mid", "spread_bps", "bid_base", "ask_base", "bid_quote",
                 "ask_quote", "bid_usd", "ask_usd", "imbalance"):
        np.testing.assert_allclose(getattr(batch, name)[i], getattr(single, name), rtol=1e-12, atol=1e-12)


@settings(max_examples=100, deadline=None)
@given(st.lists(book, min_size=0, max_size=8), st.sampled_from(["mid", "touch"]))
def test_batch_equals_scalar(books, reference):
    rates = np.linspace(0.99, 1.01, len(books))

    def flat(side_index):
        sides = [np.asarray(b[side_index], dtype=float).reshape(-1, 2) for b in books]
        offsets = np.r_[0, np.cumsum([len(s) for s in sides])]
        levels = np.concatenate(sides) if sides else np.empty((0, 2))
        return levels[:, 0], levels[:, 1], offsets

    batch = depth_bands_batch(*flat(0), *flat(1), reference=reference, quote_usd_rate=rates)
    assert batch.valid.shape == (len(books),) and batch.bid_usd.shape == (len(books), len(BANDS))
    for i, (bids, asks) in enumerate(books):
        _assert_same(batch, i, depth_bands(bids, asks, reference=reference, quote_usd_rate=rates[i]))


def test_batch_spec_vector_in_long_layout_with_empty_snapshot():
    ids = np.array([0, 0, 0, 0, 2, 2])  # snapshot 1 has no rows
    bid_p = np.array([97.9, 99.5, 98.0, 99.0, 50.0, 49.0])  # unsorted levels are fine
    bid_q = np.array([10, 2, 5, 3, 1, 1.0])
    ask_ids = np.array([0, 0, 0, 0, 2])
    ask_p = np.array([102.1, 100.5, 101.0, 102.0, 51.0])
    ask_q = np.array([8, 1, 4, 6, 1.0])
    r = depth_bands_batch(bid_p, bid_q, offsets_from_sorted_ids(ids, 3),
                          ask_p, ask_q, offsets_from_sorted_ids(ask_ids, 3))
    assert r.valid.tolist() == [True, False, True]
    assert r.bid_usd[0, I_2PCT] == pytest.approx(986.0)
    assert r.ask_usd[0, I_2PCT] == pytest.approx(1116.5)
    assert np.isnan(r.bid_usd[1]).all()
    assert r.mid[2] == 50.5


def test_offsets_reject_unsorted_ids():
    with pytest.raises(ValueError):
        offsets_from_sorted_ids([1, 0], 2)


def test_aggregate_buckets_mean_min_last_ignore_invalid():
    ts = np.array([0.0, 10, 59.9, 60, 61, 125])
    values = np.array([[1.0, 10], [np.nan, np.nan], [3.0, 30], [5.0, np.nan], [np.nan, np.nan], [7.0, 70]])
    agg = aggregate_buckets(ts, values, 60)
    assert agg.bucket_start.tolist() == [0, 60, 120]
    assert agg.n_rows.tolist() == [3, 2, 1]
    assert agg.n_valid.tolist() == [[2, 2], [1, 0], [1, 1]]
    np.testing.assert_array_equal(agg.mean, [[2.0, 20], [5.0, np.nan], [7.0, 70]])
    np.testing.assert_array_equal(agg.min, [[1.0, 10], [5.0, np.nan], [7.0, 70]])
    np.testing.assert_array_equal(agg.last, [[3.0, 30], [5.0, np.nan], [7.0, 70]])


def test_aggregate_buckets_unsorted_1d():
    agg = aggregate_buckets([65.0, 5.0, 70.0, 1.0], [4.0, 2.0, 6.0, 9.0], 60)
    assert agg.bucket_start.tolist() == [0, 60]
    assert agg.last.tolist() == [2.0, 6.0]
    assert agg.min.tolist() == [2.0, 4.0]
    assert agg.mean.tolist() == [5.5, 5.0]


def test_depth_per_minute_skips_invalid_books():
    books = [
        (SPEC_BIDS, SPEC_ASKS),
        ([(99.0, 1)], [(98.0, 1)]),                          # crossed
        ([(p, 2 * q) for p, q in SPEC_BIDS], SPEC_ASKS),     # twice the bids
        (SPEC_BIDS, SPEC_ASKS),                              # next minute
    ]
    sides = [[np.asarray(b[i], float) for b in books] for i in (0, 1)]
    offsets = [np.r_[0, np.cumsum([len(x) for x in side])] for side in sides]
    flat = [np.concatenate(side) for side in sides]
    batch = depth_bands_batch(flat[0][:, 0], flat[0][:, 1], offsets[0], flat[1][:, 0], flat[1][:, 1], offsets[1])
    per_minute = depth_per_minute([0.0, 20.0, 40.0, 60.0], batch)
    assert per_minute["bucket_start"].tolist() == [0, 60]
    assert per_minute["n_snapshots"].tolist() == [3, 1]
    assert per_minute["n_valid"].tolist() == [2, 1]
    np.testing.assert_allclose(per_minute["bid_usd_2_mean"], [1.5 * 986.0, 986.0])
    np.testing.assert_allclose(per_minute["bid_usd_2_min"], [986.0, 986.0])
    np.testing.assert_allclose(per_minute["bid_usd_2_last"], [2 * 986.0, 986.0])
    np.testing.assert_allclose(per_minute["spread_bps_last"], [100.0, 100.0])
    assert "valid_mean" not in per_minute
