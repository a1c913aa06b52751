"""Slippage of market orders (analytics.md §9.5, Kaiko) and depth bands wider than the visible book."""

from decimal import Decimal

import numpy as np
import orjson
import pytest

from conftest import SHARED_DATA
from transforms.depth import BANDS, depth_bands, depth_bands_batch
from transforms.slippage import ORDER_SIZES_USD, size_label, slippage, slippage_batch

SPEC_BIDS = [(99.5, 2), (99.0, 3), (98.0, 5), (97.9, 10)]
SPEC_ASKS = [(100.5, 1), (101.0, 4), (102.0, 6), (102.1, 8)]


def test_spec_vector_300_against_mid_and_best():
    mid = slippage(SPEC_BIDS, SPEC_ASKS, sizes_usd=[300])
    assert mid.valid[0] and mid.mid[0] == 100.0
    assert mid.ask_avg_price[0, 0] == pytest.approx(100.8319468, abs=5e-8)
    assert mid.bid_avg_price[0, 0] == pytest.approx(99.3311037, abs=5e-8)
    assert mid.ask_slippage[0, 0] * 1e4 == pytest.approx(83.19, abs=0.005)
    assert mid.bid_slippage[0, 0] * 1e4 == pytest.approx(66.89, abs=0.005)
    best = slippage(SPEC_BIDS, SPEC_ASKS, sizes_usd=[300], reference="best")
    assert best.ask_slippage[0, 0] * 1e4 == pytest.approx(33.03, abs=0.005)
    assert best.bid_slippage[0, 0] * 1e4 == pytest.approx(16.97, abs=0.005)
    assert not mid.ask_book_truncated[0, 0] and not mid.ask_too_shallow[0, 0]


def test_spec_vector_1000_and_2000():
    r = slippage(SPEC_BIDS, SPEC_ASKS, sizes_usd=[1000, 2000])
    assert r.ask_slippage[0, 0] * 1e4 == pytest.approx(144.21, abs=0.005)
    assert r.bid_slippage[0, 0] * 1e4 == pytest.approx(140.99, abs=0.005)
    # Asks hold $1933.3, bids $1965.0: $2000 cannot be filled on either side.
    assert np.isnan(r.ask_slippage[0, 1]) and np.isnan(r.bid_slippage[0, 1])
    assert r.ask_too_shallow[0, 1] and r.bid_too_shallow[0, 1]
    assert not r.ask_too_shallow[0, 0]


def test_order_of_exactly_the_visible_notional_fills_and_is_flagged_truncated():
    r = slippage(SPEC_BIDS, SPEC_ASKS, sizes_usd=[1933.3, 1965.0])
    assert not r.ask_too_shallow[0, 0] and r.ask_book_truncated[0, 0]
    # All 19 ask units bought for 1933.3: average 101.7526...
    assert r.ask_avg_price[0, 0] == pytest.approx(1933.3 / 19)
    assert r.bid_avg_price[0, 1] == pytest.approx(1965.0 / 20) and r.bid_book_truncated[0, 1]


def test_levels_in_any_order_and_deleted_levels_ignored():
    shuffled = slippage(SPEC_BIDS[::-1] + [(99.9, 0)], [SPEC_ASKS[2], SPEC_ASKS[0], SPEC_ASKS[3], SPEC_ASKS[1]],
                        sizes_usd=[300])
    assert shuffled.ask_avg_price[0, 0] == pytest.approx(100.8319468, abs=5e-8)
    assert shuffled.bid_avg_price[0, 0] == pytest.approx(99.3311037, abs=5e-8)


def test_default_sizes_on_a_deep_book_and_a_shallow_one():
    # 1000 levels of 1 coin each side, 1 tick apart around 100: each side holds ~$100k.
    bids = [(99.95 - 0.01 * i, 1.0) for i in range(1000)]
    asks = [(100.05 + 0.01 * i, 1.0) for i in range(1000)]
    r = slippage(bids, asks)
    assert r.sizes_usd == ORDER_SIZES_USD
    assert [size_label(s) for s in ORDER_SIZES_USD] == ["10k", "100k", "1m", "10m"]
    assert not r.ask_too_shallow[0, 0] and r.ask_slippage[0, 0] > 0
    assert r.ask_too_shallow[0, 2:].all() and np.isnan(r.ask_slippage[0, 2:]).all()
    cols = r.columns()
    assert cols["ask_too_shallow_1m"][0] and np.isnan(cols["ask_slippage_bps_1m"][0])
    # $10k buys 100 levels: average of 100.05..101.04 weighted by notional.
    prices = np.array([a[0] for a in asks])
    cum = np.cumsum(prices)
    k = int(np.searchsorted(cum, 10_000))
    base = k + (10_000 - cum[k - 1]) / prices[k]
    assert cols["ask_slippage_bps_10k"][0] == pytest.approx((10_000 / base / 100.0 - 1) * 1e4)


@pytest.mark.parametrize("bids, asks", [([], SPEC_ASKS), (SPEC_BIDS, []), ([(101.0, 1)], [(100.0, 1)])])
def test_empty_side_or_crossed_book_is_invalid_without_flags(bids, asks):
    r = slippage(bids, asks, sizes_usd=[100])
    assert not r.valid[0]
    assert np.isnan(r.ask_slippage).all() and np.isnan(r.bid_slippage).all()
    assert not r.ask_too_shallow.any() and not r.bid_too_shallow.any()


def test_inverse_and_linear_contracts():
    # Inverse: 100 USD per contract; 3 contracts at 100.5 hold exactly $300.
    inv = slippage([(99.5, 3)], [(100.5, 3), (101.0, 10)], sizes_usd=[300], contract_size=100.0, inverse=True)
    assert inv.ask_avg_price[0, 0] == pytest.approx(100.5) and not inv.ask_book_truncated[0, 0]
    # Linear: 0.01 coin per contract, the spec book scaled by 100 contracts per coin.
    lin = slippage([(p, q * 100) for p, q in SPEC_BIDS], [(p, q * 100) for p, q in SPEC_ASKS],
                   sizes_usd=[300], contract_size=0.01)
    assert lin.ask_avg_price[0, 0] == pytest.approx(100.8319468, abs=5e-8)


def test_batch_equals_single_books():
    books = [(SPEC_BIDS, SPEC_ASKS), ([], SPEC_ASKS), ([(99.0, 50)], [(101.0, 0.5), (102.0, 80)])]
    bid_p, bid_q, ask_p, ask_q, bid_off, ask_off = [], [], [], [], [0], [0]
    for bids, asks in books:
        bid_p += [p for p, _ in bids]
        bid_q += [q for _, q in bids]
        ask_p += [p for p, _ in asks]
        ask_q += [q for _, q in asks]
        bid_off.append(len(bid_p))
        ask_off.append(len(ask_p))
    batch = slippage_batch(bid_p, bid_q, bid_off, ask_p, ask_q, ask_off, sizes_usd=[300, 1000, 5000])
    for i, (bids, asks) in enumerate(books):
        one = slippage(bids, asks, sizes_usd=[300, 1000, 5000])
        for name in ("valid", "mid", "ask_slippage", "bid_slippage", "ask_too_shallow", "bid_book_truncated"):
            np.testing.assert_array_equal(getattr(batch, name)[i], getattr(one, name)[0])


def test_empty_batch_and_chunked_batch():
    empty = slippage_batch([], [], [0], [], [], [0], sizes_usd=[100])
    assert empty.valid.shape == (0,) and empty.ask_slippage.shape == (0, 1)
    # More levels than one chunk holds: the chunks' results line up with the books.
    n, k = 1_200, 2_000
    steps = np.tile(np.arange(1, k + 1) * 0.01, n)
    off = np.arange(n + 1) * k
    r = slippage_batch(100 - steps, np.ones(n * k), off, 100 + steps, np.ones(n * k), off, sizes_usd=[250])
    # Each ask book: 1 coin at 100.01, 100.02, 100.03 -> $250 fills 2 levels and 49.97 / 100.03.
    expected = 250 / (2 + (250 - 200.03) / 100.03) / 100 - 1
    assert r.valid.all() and np.allclose(r.ask_slippage[:, 0], expected, rtol=1e-9)


def test_bad_sizes_are_refused():
    with pytest.raises(ValueError, match="sizes_usd"):
        slippage(SPEC_BIDS, SPEC_ASKS, sizes_usd=[0])


# --- depth bands wider than the visible book ----------------------------------------------------

def _wide_book(levels: int = 500, step: float = 0.0052 / 100):
    """A 500-level book spanning about +-2.6 % of mid 100 (the case that used to report 'valid' 5 % and 10 %)."""
    bids = [(100.0 * (1 - 0.0001 - step * i), 1.0) for i in range(levels)]
    asks = [(100.0 * (1 + 0.0001 + step * i), 1.0) for i in range(levels)]
    return bids, asks


def test_bands_beyond_the_visible_book_are_flagged():
    bids, asks = _wide_book()
    r = depth_bands(bids, asks)
    assert r.valid
    flagged = dict(zip(BANDS, r.band_exceeds_book, strict=True))
    assert flagged == {0.001: False, 0.0025: False, 0.005: False, 0.01: False, 0.02: False, 0.05: True, 0.10: True}
    # The depth stays the lower bound it is: the whole book.
    assert r.bid_base[-1] == r.bid_base[-2] == 500
    cols = r.flag_columns()
    assert cols["bid_exceeds_book_5"] and cols["ask_exceeds_book_10"] and not cols["ask_exceeds_book_2"]


def test_spec_book_flags_each_side_separately():
    r = depth_bands(SPEC_BIDS, SPEC_ASKS)
    # Bids reach 2.1 % below mid, asks 2.1 % above; the 5 % and 10 % bands exceed both.
    assert r.bid_exceeds_book.tolist() == [False] * 5 + [True, True]
    assert r.ask_exceeds_book.tolist() == [False] * 5 + [True, True]
    one_sided = depth_bands([(99.5, 1), (90.0, 1)], [(100.5, 1)])
    assert one_sided.ask_exceeds_book[BANDS.index(0.01)] and not one_sided.bid_exceeds_book[-1]


def test_level_on_the_bound_covers_the_band_and_complete_within_lifts_the_flag():
    # mid 100: the last bid at exactly 98.0 (2 %) covers the 2 % band.
    r = depth_bands([(99.9, 1), (98.0, 1)], [(100.1, 1), (102.0, 1)])
    assert not r.bid_exceeds_book[BANDS.index(0.02)] and r.bid_exceeds_book[BANDS.index(0.05)]
    # A periodic snapshot carries every level within 10 %: nothing beyond 2 % means there is nothing.
    complete = depth_bands([(99.9, 1), (98.0, 1)], [(100.1, 1), (102.0, 1)], complete_within=0.10)
    assert not complete.band_exceeds_book.any()


def test_batch_flags_equal_single_book_flags_and_invalid_books_are_unflagged():
    bids, asks = _wide_book()
    books = [(bids, asks), (SPEC_BIDS, SPEC_ASKS), ([], SPEC_ASKS)]
    bid_p = [p for b, _ in books for p, _ in b]
    bid_q = [q for b, _ in books for _, q in b]
    ask_p = [p for _, a in books for p, _ in a]
    ask_q = [q for _, a in books for _, q in a]
    bid_off = np.cumsum([0] + [len(b) for b, _ in books])
    ask_off = np.cumsum([0] + [len(a) for _, a in books])
    batch = depth_bands_batch(bid_p, bid_q, bid_off, ask_p, ask_q, ask_off)
    for i, (b, a) in enumerate(books):
        one = depth_bands(b, a)
        np.testing.assert_array_equal(batch.bid_exceeds_book[i], one.bid_exceeds_book)
        np.testing.assert_array_equal(batch.ask_exceeds_book[i], one.ask_exceeds_book)
    assert not batch.band_exceeds_book[2].any() and not batch.valid[2]
    assert not depth_bands_batch(bid_p, bid_q, bid_off, ask_p, ask_q, ask_off,
                                 complete_within=0.1).band_exceeds_book.any()


# --- a real book: Hyperliquid's 20-level DYDX l2Book of 2023-07-17 (SDK cassette) ----------------

def _real_l2_book():
    yaml = pytest.importorskip("yaml")
    path = SHARED_DATA / "hyperliquid-sdk-cassettes" / "test_get_l2_snapshot.yaml"
    if not path.exists():
        pytest.skip("../shared/data/hyperliquid-sdk-cassettes is not available")
    for interaction in yaml.safe_load(path.read_text())["interactions"]:
        if orjson.loads(interaction["request"]["body"]).get("type") == "l2Book":
            bids, asks = orjson.loads(interaction["response"]["body"]["string"])["levels"]
            return [(lvl["px"], lvl["sz"]) for lvl in bids], [(lvl["px"], lvl["sz"]) for lvl in asks]
    raise LookupError("no l2Book response in the cassette")


def _decimal_walk(levels, x: Decimal) -> Decimal | None:
    """The spec's walk in Decimal arithmetic, as written: q_i = min(size_i, remaining / p_i)."""
    remaining, bought = x, Decimal(0)
    for price, size in levels:
        q = min(size, remaining / price)
        bought += q
        remaining -= q * price
        if remaining <= 0:
            return x / bought
    return None


def test_real_twenty_level_book_matches_the_decimal_walk_and_says_what_it_cannot_measure():
    bids, asks = _real_l2_book()
    assert len(bids) == len(asks) == 20
    float_book = [[(float(p), float(q)) for p, q in side] for side in (bids, asks)]
    r = slippage(*float_book, sizes_usd=[1_000, 10_000, 100_000])
    dec_bids = sorted(((Decimal(p), Decimal(q)) for p, q in bids), reverse=True)
    dec_asks = sorted((Decimal(p), Decimal(q)) for p, q in asks)
    mid = (dec_bids[0][0] + dec_asks[0][0]) / 2
    for j, x in enumerate((1_000, 10_000, 100_000)):
        buy, sell = _decimal_walk(dec_asks, Decimal(x)), _decimal_walk(dec_bids, Decimal(x))
        for side, expected, got, flag in (("ask", buy, r.ask_slippage[0, j], r.ask_too_shallow[0, j]),
                                          ("bid", sell, r.bid_slippage[0, j], r.bid_too_shallow[0, j])):
            if expected is None:
                assert np.isnan(got) and flag, (side, x)
            else:
                want = float(expected / mid - 1) if side == "ask" else float(1 - expected / mid)
                assert got == pytest.approx(want, rel=1e-9, abs=1e-12) and not flag, (side, x)
    # The asks hold about $75k: $100k cannot be bought; $10k is filled at the 4th level, far from the edge.
    assert r.ask_too_shallow[0, 2] and not r.ask_book_truncated[0, 1]
    # The 20 asks end 1.9 % above mid: the 2 % band and wider ones are lower bounds, and flagged;
    # a lone bid at 1.81 (-14 %) makes every bid band measurable.
    depth = depth_bands(*float_book)
    assert depth.ask_exceeds_book.tolist() == [False, False, False, False, True, True, True]
    assert not depth.bid_exceeds_book.any()
