"""Cross-venue cascades: one episode across venues, venue shares, first mover and lead/lag."""

from __future__ import annotations

import math
import numpy as np
import pytest

from transforms.cascades import CascadeConfig, CascadeThresholds
from transforms.cross_venue import (
    cross_venue_cascades,
    first_crossing,
    lagged_correlation,
)

T0 = 1_760_129_400.0   # 2025-10-10 21:00:00 UTC
THRESHOLDS = CascadeThresholds(min_usd=1e6, baseline_multiple=20.0, min_move=0.01)
# No history before the vector: the size test is U_min alone.
CONFIG = CascadeConfig(baseline_start=T0)


def _crash_path(delay_s: float, seed: int, n: int = 900, fall: float = 0.97,
                duration_s: float = 120.0) -> tuple[np.ndarray, np.ndarray]:
    """One price path per second from T0 - 300 s: noise, then a fall to ``fall`` over ``duration_s``
    from T0, seen ``delay_s`` late; the noise is the shared market's (same seed) so returns correlate."""
    rng = np.random.default_rng(seed)
    t = T0 - 300 + np.arange(n, dtype=float)
    shared = np.cumsum(rng.normal(0, 2e-4, n + 100))
    crash = np.clip((t - T0) / duration_s, 0.0, 1.0) * np.log(fall)
    lagged = np.interp(t - delay_s, t, shared[:n] + crash)
    return t, 100_000.0 * np.exp(lagged)


def test_spec_cascade_vector_across_two_venues():
    """§6.3's vector with its orders split between venues: the same three clusters, one episode each
    side of the 60 s gap, and each venue's share of the first cluster's $8M."""
    offsets = [0, 20, 50, 180, 210, 600]
    usd = [2e6, 5e6, 1e6, 3e6, 4e6, 0.5e6]
    venue = ["binance-usdm", "bybit-linear", "bybit-linear", "okx-swap", "binance-usdm", "okx-swap"]
    t, price = _crash_path(0.0, 1, fall=0.94, duration_s=300.0)
    prices = {v: (t, price) for v in ("binance-usdm", "bybit-linear", "okx-swap")}
    episodes = cross_venue_cascades([T0 + o for o in offsets], venue, ["SELL"] * 6, usd,
                                    prices=prices, thresholds=CascadeThresholds(min_usd=5e6),
                                    cascade_config=CONFIG)
    assert [(e.start - T0, e.end - T0, e.n_orders, e.usd) for e in episodes] == [(0, 50, 3, 8e6), (180, 210, 2, 7e6)]
    first = episodes[0]
    assert first.venue_usd == {"binance-usdm": 2e6, "bybit-linear": 6e6, "okx-swap": 0.0}
    assert first.venue_share == {"binance-usdm": 0.25, "bybit-linear": 0.75, "okx-swap": 0.0}
    assert first.venue_first_liquidation["bybit-linear"] == T0 + 20
    assert math.isnan(first.venue_first_liquidation["okx-swap"])
    # Identical prices: every venue crosses at the same second; the tie gives a zero lead.
    assert first.lead_s == 0.0


def test_the_venue_that_moves_first_leads_by_its_delay():
    venues = {"binance-usdm": 0.0, "okx-swap": 4.0, "hyperliquid": 9.0}
    prices = {v: _crash_path(d, 2) for v, d in venues.items()}
    ts = T0 + np.arange(0, 100, 5.0)
    episodes = cross_venue_cascades(
        np.concatenate([ts, ts + 1]), ["binance-usdm"] * ts.size + ["okx-swap"] * ts.size,
        ["long"] * (2 * ts.size), np.r_[np.full(ts.size, 3e5), np.full(ts.size, 2e5)],
        prices=prices, thresholds=THRESHOLDS, cascade_config=CONFIG)
    assert len(episodes) == 1
    e = episodes[0]
    assert e.reference_venue == "binance-usdm"          # the most liquidated notional
    assert e.venue_share["binance-usdm"] == pytest.approx(0.6)
    assert e.venue_share["okx-swap"] == pytest.approx(0.4)
    assert e.first_mover == "binance-usdm"
    assert e.lead_s == pytest.approx(4.0, abs=1.0)
    assert e.crossing_time["hyperliquid"] - e.crossing_time["binance-usdm"] == pytest.approx(9.0, abs=1.0)
    assert e.xcorr_lag_s == {"binance-usdm": 0.0, "okx-swap": 4.0, "hyperliquid": 9.0}
    assert e.xcorr_peak["binance-usdm"] == pytest.approx(1.0)
    assert all(e.venue_move_bps[v] < -250 for v in venues)


def test_first_crossing_and_lagged_correlation_edges():
    ts = [0, 1, 2, 3]
    assert first_crossing(ts, [100, 99.5, 98.9, 98], since=0, until=3, down=True, move_bps=100) == 2.0
    assert math.isnan(first_crossing(ts, [100, 101, 102, 103], since=0, until=3, down=True, move_bps=100))
    assert first_crossing(ts, [100, 101, 102, 103], since=0, until=3, down=False, move_bps=100) == 1.0
    flat = np.zeros(100)
    assert lagged_correlation(flat, flat, 5, 30)[0] == 0 and math.isnan(lagged_correlation(flat, flat, 5, 30)[1])
    rng = np.random.default_rng(0)
    x = rng.normal(size=200)
    assert lagged_correlation(x[3:], x[:-3], 10, 30)[0] == 3   # the second series repeats the first 3 steps later


def test_mismatched_inputs_and_unknown_reference_are_errors():
    with pytest.raises(ValueError, match="same length"):
        cross_venue_cascades([1.0, 2.0], ["a"], ["long", "long"], [1.0, 1.0], prices={"a": ([0], [1])},
                             thresholds=THRESHOLDS)
    with pytest.raises(ValueError, match="no price series"):
        cross_venue_cascades([1.0], ["a"], ["long"], [1.0], prices={"a": ([0], [1])}, thresholds=THRESHOLDS,
                             reference_venue="b")


def test_simulated_cascade_across_venues(cascade_truth):
    """Every simulated venue is a share of the one shared market (ingest/simulator/venue_market.py):
    each venue's share of liquidated notional is its configured share, and each venue's prices
    trail the reference's by its configured lag (Hyperliquid's 4 s; the others move together):
    every venue's threshold crossing after the first and its cross-correlation lag say so."""
    from ingest.simulator.config import SYMBOL_SPECS
    from ingest.simulator.venue_market import VenueMarket

    meta = cascade_truth["meta"][0]
    specs = [s["symbol"] for s in meta["symbols"]]
    sym_specs = [SYMBOL_SPECS[s] for s in specs]
    venues = {v: VenueMarket(v, meta["seed"], sym_specs) for v in ("binance-usdm", "bybit-linear", "okx-swap",
                                                                   "hyperliquid")}
    s = specs.index("BTCUSDT")
    liqs = [r for r in cascade_truth["liquidation"] if r["symbol"] == "BTCUSDT"]
    step = float(sym_specs[s].step_size)
    ts, venue, side, usd = [], [], [], []
    for r in liqs:
        lots = round(r["qty"] / step)
        for name, market in venues.items():
            ts.append(r["ts"] / 1000)
            venue.append(name)
            side.append(r["side"])
            usd.append(market.fill_lots(lots) * step * r["price"])
    seconds = [r for r in cascade_truth["second"] if r["symbol"] == "BTCUSDT" and r["ts"] % 1000 == 0]

    # Each venue's mid: the shared mid moved by the venue's offset as its lag had it that second. (Not
    # its trades: every venue's tape is a share of the one shared tape, so their bid-ask bounce is
    # the same at lag 0, which no two real venues' tapes are.)
    def venue_mid(market, r) -> float:
        market.displace(s, r["venue_offsets"].get(market.venue, 0))
        return r["mid"] + market.offset[s] * float(sym_specs[s].tick_size)

    prices = {name: (np.array([r["ts"] / 1000 for r in seconds]), np.array([venue_mid(market, r) for r in seconds]))
              for name, market in venues.items()}
    episodes = cross_venue_cascades(ts, venue, side, usd, prices=prices,
                                    thresholds=CascadeThresholds(min_usd=10e6),
                                    cascade_config=CascadeConfig(baseline_start=meta["start_ms"] / 1000))
    longs = [e for e in episodes if e.side == "long"]
    assert longs, "the simulated crash is a long cascade across venues"
    main = max(longs, key=lambda e: e.usd)
    shares = {name: m.params.share for name, m in venues.items()}
    for name in venues:
        assert main.venue_share[name] == pytest.approx(shares[name] / sum(shares.values()), abs=0.01)
    lags = {name: m.params.lag_ms / 1000 for name, m in venues.items()}
    assert main.reference_venue == "binance-usdm" and lags["hyperliquid"] == 4.0
    first = min(main.crossing_time.values())
    assert {v: t - first for v, t in main.crossing_time.items()} == pytest.approx(lags, abs=1.0)
    assert main.first_mover != "hyperliquid" and main.lead_s == pytest.approx(0.0, abs=1.0)
    assert main.xcorr_lag_s == pytest.approx(lags, abs=1.0)
    print(f"BTC episode ${main.usd / 1e6:.0f}M over {main.end - main.start:.0f} s; first mover "
          f"{main.first_mover} by {main.lead_s} s; xcorr lags {main.xcorr_lag_s}; moves {main.venue_move_bps}")
