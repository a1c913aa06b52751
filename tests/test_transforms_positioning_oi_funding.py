"""Open interest and funding per asset and venue and across venues (analytics.md §7, §9.3)."""

import numpy as np
import pytest

from transforms.positioning import ALL_VENUES, GRAINS, funding_by_venue, oi_observations, open_interest_by_venue

T0 = 1_760_054_400  # 2025-10-10 00:00 UTC
B = GRAINS["5m"]


def _rows(out: dict, **match) -> list[dict]:
    n = out["bucket_start"].size
    rows = [{k: v[i] for k, v in out.items()} for i in range(n)]
    return [r for r in rows if all(r[k] == v for k, v in match.items())]


def _one(out: dict, **match) -> dict:
    rows = _rows(out, **match)
    assert len(rows) == 1, rows
    return rows[0]


def _funding(rows):
    """rows: (ts, venue, market, rate, interval_hours)."""
    return {"ts": [r[0] for r in rows], "asset": ["BTC"] * len(rows), "venue": [r[1] for r in rows],
            "market": [r[2] for r in rows], "rate": [r[3] for r in rows], "interval_hours": [r[4] for r in rows]}


def _oi(rows):
    """rows: (ts, venue, market, usd)."""
    return {"ts": [r[0] for r in rows], "venue": [r[1] for r in rows], "market": [r[2] for r in rows],
            "usd": [r[3] for r in rows]}


# --- funding --------------------------------------------------------------------------------------

def test_spec_vector_oi_weighted_funding_and_spread():
    venues = {"a": (10e9, 1e-4), "b": (5e9, 1.5e-4), "c": (3e9, -0.5e-4), "d": (2e9, 2e-4)}
    funding = _funding([(T0 + 10, v, "BTC-PERP", f, 8) for v, (_, f) in venues.items()])
    oi = _oi([(T0 + 5, v, "BTC-PERP", w) for v, (w, _) in venues.items()])
    out = funding_by_venue(funding, oi, bucket_s=B)
    total = _one(out, venue=ALL_VENUES)
    assert total["rate_8h"] == pytest.approx(1.0e-4)
    assert total["rate_annualized"] == pytest.approx(0.1095)
    assert total["oi_usd"] == pytest.approx(20e9)
    assert (total["n_venues"], total["n_weighted"]) == (4, 4)
    assert total["spread_8h"] == pytest.approx(2.5e-4)
    assert (total["spread_high_venue"], total["spread_low_venue"]) == ("d", "c")
    assert _one(out, venue="d")["vs_weighted_8h"] == pytest.approx(1e-4)
    assert _one(out, venue="c")["vs_weighted_8h"] == pytest.approx(-1.5e-4)


def test_intervals_differ_per_venue_and_change_within_a_day():
    funding = _funding([
        (T0 + 10, "hourly", "BTC-PERP", 0.125e-4, 1),       # 1e-4 per 8 h
        (T0 + 10, "eight", "BTC-PERP", 1e-4, 8),
        (T0 + B + 10, "eight", "BTC-PERP", 1e-4, 4),        # the venue moved the market to 4 h
        (T0 + B + 10, "hourly", "BTC-PERP", 0.125e-4, 1),
    ])
    oi = _oi([(T0, "hourly", "BTC-PERP", 1e9), (T0, "eight", "BTC-PERP", 1e9),
              (T0 + B, "hourly", "BTC-PERP", 1e9), (T0 + B, "eight", "BTC-PERP", 3e9)])
    out = funding_by_venue(funding, oi, bucket_s=B)
    assert _one(out, venue="hourly", bucket_start=T0)["rate_8h"] == pytest.approx(1e-4)
    assert _one(out, venue="eight", bucket_start=T0)["rate_8h"] == pytest.approx(1e-4)
    assert _one(out, venue="eight", bucket_start=T0 + B)["rate_8h"] == pytest.approx(2e-4)
    # (1e9 * 1e-4 + 3e9 * 2e-4) / 4e9
    assert _one(out, venue=ALL_VENUES, bucket_start=T0 + B)["rate_8h"] == pytest.approx(1.75e-4)
    assert _one(out, venue=ALL_VENUES, bucket_start=T0 + B)["rate_annualized"] == pytest.approx(1.75e-4 * 1095)


def test_stale_or_zero_oi_leaves_the_venue_out_of_the_weighting():
    funding = _funding([(T0 + 100, "fresh", "BTC-PERP", 1e-4, 8), (T0 + 100, "stale", "BTC-PERP", 9e-4, 8),
                        (T0 + 100, "zero", "BTC-PERP", 5e-4, 8), (T0 + 100, "edge", "BTC-PERP", 3e-4, 8)])
    oi = _oi([(T0 + 90, "fresh", "BTC-PERP", 1e9), (T0 + 39, "stale", "BTC-PERP", 1e9),
              (T0 + 99, "zero", "BTC-PERP", 0.0), (T0 + 40, "edge", "BTC-PERP", 1e9)])
    out = funding_by_venue(funding, oi, bucket_s=B)
    stale = _one(out, venue="stale")
    assert not stale["weighted"] and np.isnan(stale["oi_usd"]) and stale["rate_8h"] == pytest.approx(9e-4)
    assert not _one(out, venue="zero")["weighted"]
    assert _one(out, venue="edge")["weighted"]   # exactly 60 s old still counts
    total = _one(out, venue=ALL_VENUES)
    assert total["rate_8h"] == pytest.approx(2e-4)   # fresh and edge, 1e9 each
    assert (total["n_venues"], total["n_weighted"]) == (4, 2)
    assert total["spread_8h"] == pytest.approx(8e-4)


def test_one_venue_only_and_no_weight_at_all():
    out = funding_by_venue(_funding([(T0 + 1, "solo", "BTC-PERP", 2e-4, 8)]), _oi([]), bucket_s=B)
    total = _one(out, venue=ALL_VENUES)
    assert np.isnan(total["rate_8h"]) and not total["weighted"] and total["n_weighted"] == 0
    assert np.isnan(total["spread_8h"]) and total["spread_high_venue"] is None
    assert _one(out, venue="solo")["rate_8h"] == pytest.approx(2e-4)
    weighted = funding_by_venue(_funding([(T0 + 1, "solo", "BTC-PERP", 2e-4, 8)]),
                                _oi([(T0, "solo", "BTC-PERP", 5e8)]), bucket_s=B)
    assert _one(weighted, venue=ALL_VENUES)["rate_8h"] == pytest.approx(2e-4)


def test_markets_of_one_venue_are_oi_weighted_and_last_rate_of_the_bucket_counts():
    funding = _funding([(T0 + 10, "v", "BTC-USDT-PERP", 5e-4, 8), (T0 + 200, "v", "BTC-USDT-PERP", 1e-4, 8),
                        (T0 + 20, "v", "BTC-USD-PERP", 3e-4, 8),
                        (T0 + 30, "v", "BTC-USDC-PERP", None, None)])   # delivery-style row: no rate
    oi = _oi([(T0 + 190, "v", "BTC-USDT-PERP", 3e9), (T0 + 15, "v", "BTC-USD-PERP", 1e9)])
    out = funding_by_venue(funding, oi, bucket_s=B)
    row = _one(out, venue="v")
    assert row["rate_8h"] == pytest.approx((3e9 * 1e-4 + 1e9 * 3e-4) / 4e9)
    assert row["n_markets"] == 2 and row["oi_usd"] == pytest.approx(4e9)


def test_missing_column_is_a_clear_error():
    with pytest.raises(ValueError, match="no column 'interval_hours'"):
        funding_by_venue({"ts": [], "asset": [], "venue": [], "market": [], "rate": []}, _oi([]), bucket_s=B)


# --- open interest --------------------------------------------------------------------------------

def _obs(rows):
    """rows: (ts, venue, market, coin, usd[, short_coin, short_usd])."""
    return {"ts": [r[0] for r in rows], "asset": ["BTC"] * len(rows), "venue": [r[1] for r in rows],
            "market": [r[2] for r in rows], "coin": [r[3] for r in rows], "usd": [r[4] for r in rows],
            "short_coin": [r[5] if len(r) > 5 else np.nan for r in rows],
            "short_usd": [r[6] if len(r) > 5 else np.nan for r in rows]}


def test_venue_sums_its_markets_and_totals_keep_pool_venues_apart():
    obs = _obs([
        (T0 + 10, "binance", "BTC-USDT-PERP", 100.0, 10e6), (T0 + 20, "binance", "BTC-USD-PERP", 50.0, 5e6),
        (T0 + 30, "okx", "BTC-USDT-PERP", 40.0, 4e6),
        (T0 + 40, "gmx", "BTC-USD-PERP", 20.0, 2e6, 30.0, 3e6),
        (T0 + 50, "gmx", "BTC-USD-PERP", 99.0, 9.9e6, np.nan, np.nan),   # no short side: not an observation
    ])
    out = open_interest_by_venue(obs, bucket_s=B)
    binance = _one(out, venue="binance")
    assert (binance["oi_coin"], binance["oi_usd"], binance["n_markets"]) == (150.0, 15e6, 2)
    assert not binance["pool_counterparty"] and np.isnan(binance["oi_short_usd"])
    gmx = _one(out, venue="gmx")
    assert gmx["pool_counterparty"]
    assert (gmx["oi_long_usd"], gmx["oi_short_usd"], gmx["oi_usd"], gmx["oi_coin"]) == (2e6, 3e6, 5e6, 50.0)
    one_sided = _one(out, venue=ALL_VENUES, pool_counterparty=False)
    assert (one_sided["oi_coin"], one_sided["oi_usd"], one_sided["n_venues"], one_sided["n_markets"]) == \
        (190.0, 19e6, 2, 3)
    pool_total = _one(out, venue=ALL_VENUES, pool_counterparty=True)
    assert (pool_total["oi_usd"], pool_total["n_venues"]) == (5e6, 1)


def test_changes_carry_forward_and_composition():
    obs = _obs([
        (T0 + 10, "a", "BTC-PERP", 100.0, 10e6), (T0 + 20, "b", "BTC-PERP", 50.0, 5e6),
        (T0 + B + 5, "a", "BTC-PERP", 90.0, 9.5e6), (T0 + B + 250, "a", "BTC-PERP", 110.0, 11e6),  # last counts
        # b misses bucket 1 (carried forward), bucket 2 as well (dropped out), is back in bucket 3.
        (T0 + 2 * B, "a", "BTC-PERP", 110.0, 11e6),
        (T0 + 3 * B, "a", "BTC-PERP", 121.0, 12.1e6), (T0 + 3 * B, "b", "BTC-PERP", 60.0, 6e6),
    ])
    out = open_interest_by_venue(obs, bucket_s=B, max_stale_buckets=1)
    totals = _rows(out, venue=ALL_VENUES)
    assert [r["bucket_start"] for r in totals] == [T0 + k * B for k in range(4)]
    assert [r["oi_coin"] for r in totals] == [150.0, 160.0, 110.0, 181.0]
    assert [r["n_venues"] for r in totals] == [2, 2, 1, 2]
    change = [r["oi_coin_change"] for r in totals]
    assert np.isnan(change[0]) and change[1] == 10.0
    # b dropping out and coming back changes the composition: no change is claimed.
    assert np.isnan(change[2]) and np.isnan(change[3])
    a = _rows(out, venue="a")
    assert [r["oi_usd_change"] for r in a][1:] == pytest.approx([1e6, 0.0, 1.1e6])
    assert [r["oi_usd_change_pct"] for r in a][1:] == pytest.approx([10.0, 0.0, 10.0])
    b = _rows(out, venue="b")
    assert [r["bucket_start"] for r in b] == [T0, T0 + B, T0 + 3 * B]
    assert np.isnan(b[2]["oi_coin_change"])   # no row in bucket 2


def test_zero_oi_has_an_absolute_change_but_no_percentage():
    obs = _obs([(T0, "a", "BTC-PERP", 0.0, 0.0), (T0 + B, "a", "BTC-PERP", 5.0, 5e5)])
    rows = _rows(open_interest_by_venue(obs, bucket_s=B), venue="a")
    assert rows[1]["oi_coin_change"] == 5.0 and np.isnan(rows[1]["oi_coin_change_pct"])


def test_hourly_grain_takes_the_hours_last_value_and_rows_without_a_price_are_ignored():
    obs = _obs([(T0 + 100, "a", "BTC-PERP", 10.0, 1e6), (T0 + 3500, "a", "BTC-PERP", 12.0, 1.2e6),
                (T0 + 3550, "a", "BTC-PERP", 13.0, np.nan),
                (T0 + 3600 + 100, "a", "BTC-PERP", 15.0, 1.5e6)])
    rows = _rows(open_interest_by_venue(obs, bucket_s=GRAINS["1h"]), venue="a")
    assert [(r["bucket_start"], r["oi_coin"]) for r in rows] == [(T0, 12.0), (T0 + 3600, 15.0)]
    assert rows[1]["oi_coin_change_pct"] == pytest.approx(25.0)


def test_assets_are_aggregated_separately():
    obs = _obs([(T0, "a", "BTC-PERP", 1.0, 1e5)])
    obs["asset"] = ["BTC"]
    eth = _obs([(T0, "a", "ETH-PERP", 10.0, 4e4)])
    eth["asset"] = ["ETH"]
    both = {k: list(obs[k]) + list(eth[k]) for k in obs}
    out = open_interest_by_venue(both, bucket_s=B)
    assert _one(out, venue=ALL_VENUES, asset="ETH")["oi_usd"] == 4e4
    assert _one(out, venue=ALL_VENUES, asset="BTC")["oi_coin"] == 1.0


def test_raw_rows_of_linear_inverse_coin_and_pool_markets_convert_and_aggregate():
    # OKX linear 0.01 BTC contracts, Binance COIN-M 100 USD contracts, Hyperliquid coins, GMX USD sizes
    # (pool venue: long and short), all at mark 50,000.
    rows = {
        "exchange": ["okx-swap", "binance-coinm", "hyperliquid", "gmx-v2"],
        "symbol": ["BTC-USDT-PERP", "BTC-USD-PERP", "BTC-USD-PERP", "BTC-USD-PERP"],
        "ts": [T0 + 1, T0 + 2, T0 + 3, T0 + 4],
        "open_interest": [300.0, 1_000.0, 2.5, 4e6],
        "open_interest_short": [np.nan, np.nan, np.nan, 1e6],
        "qty_multiplier": [0.01, 100.0, 1.0, 1.0],
        "inverse": [False, True, False, True],
        "mark_price": [50_000.0] * 4,
    }
    obs = oi_observations(rows)
    assert obs["asset"].tolist() == ["BTC"] * 4
    assert obs["coin"].tolist() == pytest.approx([3.0, 2.0, 2.5, 80.0])
    assert obs["usd"].tolist() == pytest.approx([150_000.0, 100_000.0, 125_000.0, 4e6])
    out = open_interest_by_venue(obs, bucket_s=B)
    one_sided = _one(out, venue=ALL_VENUES, pool_counterparty=False)
    assert one_sided["oi_coin"] == pytest.approx(7.5) and one_sided["oi_usd"] == pytest.approx(375_000.0)
    gmx = _one(out, venue="gmx-v2")
    assert (gmx["oi_long_usd"], gmx["oi_short_usd"], gmx["oi_usd"]) == pytest.approx((4e6, 1e6, 5e6))
    assert gmx["oi_short_coin"] == pytest.approx(20.0)
