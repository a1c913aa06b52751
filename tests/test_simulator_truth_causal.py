"""Simulator ground truth for the liquidation map and endogeneity: true liquidation levels of open
positions, per-second taker flow, and each liquidation's causal parent (ingest/simulator/market.py)."""

from __future__ import annotations

import math
from collections import defaultdict

import numpy as np
import pytest

from ingest.simulator.config import SYMBOL_SPECS
from ingest.simulator.positions import PositionBook

SYMBOLS = ("BTCUSDT", "ETHUSDT", "SOLUSDT")


def test_liquidation_levels_bucket_every_open_position_once():
    spec = SYMBOL_SPECS["ETHUSDT"]
    book = PositionBook(spec, spec.price, np.random.default_rng(3))
    book.liquidate(spec.price * 0.97)           # some positions gone: they must not be counted
    levels = book.liquidation_levels(2.0, spec.price * 0.8, spec.price * 1.2)
    live = book.lots[:book.used] > 0
    usd = book.lots[:book.used] * spec.step * book.entry[:book.used]
    liq = book.liq[:book.used]
    is_long = book.is_long[:book.used]
    for side, key in ((True, "long_usd"), (False, "short_usd")):
        mine = live & (is_long == side)
        assert sum(levels[key]) + levels[f"outside_{key}"] == pytest.approx(usd[mine].sum())
        inside = mine & (liq >= spec.price * 0.8) & (liq < spec.price * 1.2)
        # One bin checked by brute force: the one holding the most notional.
        top = int(np.argmax(levels[key]))
        lo = levels["bin_lo"][top]
        assert levels[key][top] == pytest.approx(usd[inside & (liq >= lo) & (liq < lo + 2.0)].sum())
    assert levels["bin_lo"] == sorted(levels["bin_lo"]) and all(lo % 2.0 == 0 for lo in levels["bin_lo"])
    assert sum(levels["long_usd"]) > 0 and sum(levels["short_usd"]) > 0


def test_true_levels_sit_on_the_right_side_of_the_mark(cascade_truth):
    snapshots = cascade_truth["liq_levels"]
    assert {s["symbol"] for s in snapshots} == set(SYMBOLS)
    assert len(snapshots) == 3 * 16                  # start plus every 5 minutes of 75
    for snap in snapshots:
        w = snap["width"]
        assert w in (0.1, 2.0, 50.0)
        longs = np.array(snap["long_usd"])
        shorts = np.array(snap["short_usd"])
        lo = np.array(snap["bin_lo"])
        # The liquidation engine checks the mark at the start of each 100 ms step, so positions the
        # step's own move crossed are still open in the snapshot taken at its end: a sliver only.
        assert longs[lo > snap["mark"]].sum() <= 0.01 * longs.sum(), (snap["symbol"], snap["ts"])
        assert shorts[lo + w < snap["mark"]].sum() <= 0.01 * shorts.sum(), (snap["symbol"], snap["ts"])
        assert longs.sum() > 0 and shorts.sum() > 0


def test_the_crash_consumes_the_true_long_levels_it_passes(cascade_truth):
    meta = cascade_truth["meta"][0]
    snaps = {(s["symbol"], s["ts"]): s for s in cascade_truth["liq_levels"]}
    trigger = meta["trigger_ms"]
    for symbol in SYMBOLS:
        seconds = [r for r in cascade_truth["second"] if r["symbol"] == symbol]
        low = min(r["mark"] for r in seconds)
        before = snaps[(symbol, trigger)]
        after = snaps[(symbol, meta["end_ms"])]
        def between(snap):
            return sum(usd for lo, usd in zip(snap["bin_lo"], snap["long_usd"]) if low * 1.01 <= lo < before["mark"] * 0.99)
        # Before the trigger there are longs to liquidate there; after the low almost none are left.
        assert between(before) > 0
        assert between(after) < 0.15 * between(before), symbol


def test_seconds_carry_taker_flow(cascade_truth):
    for r in cascade_truth["second"][:3000]:
        if r["volume"]:
            vwap = (r["taker_buy_usd"] + r["taker_sell_usd"]) / r["volume"]
            assert r["low"] <= vwap * (1 + 1e-9) and vwap <= r["high"] * (1 + 1e-9)
        else:
            assert r["high"] is None and r["low"] is None and r["taker_buy_usd"] == 0


def test_liquidation_ids_and_causal_parents(cascade_truth):
    liqs = cascade_truth["liquidation"]
    by_id = {liq["id"]: liq for liq in liqs}
    assert len(by_id) == len(liqs) and sorted(by_id) == list(range(1, len(liqs) + 1))
    children = [liq for liq in liqs if liq["parent_id"] is not None]
    assert children
    for child in children:
        parent = by_id[child["parent_id"]]
        assert parent["id"] < child["id"] and parent["ts"] <= child["ts"]
        assert parent["symbol"] == child["symbol"] and parent["position"] == child["position"]
    first = {}
    for liq in sorted(liqs, key=lambda r: r["id"]):
        first.setdefault(liq["symbol"], liq)
    assert all(liq["parent_id"] is None for liq in first.values())


def test_the_cascade_is_endogenous_by_both_counterfactuals(cascade_truth):
    """Share of liquidations with a causal parent (liquidated *then* because of earlier ones), and the
    stricter share whose price the mark without earlier liquidations pushing that way never reached
    between the position's opening and the end of the run (from the seconds' ``liquidation_impact``)."""
    liqs = cascade_truth["liquidation"]
    seconds = defaultdict(list)
    for r in cascade_truth["second"]:
        seconds[r["symbol"]].append(r)
    for symbol in SYMBOLS:
        ts = np.array([r["ts"] for r in seconds[symbol]])
        without = {"long": np.array([r["mark"] * math.exp(-r["liquidation_impact"][0]) for r in seconds[symbol]]),
                   "short": np.array([r["mark"] * math.exp(-r["liquidation_impact"][1]) for r in seconds[symbol]])}
        assert without["long"].min() > min(r["mark"] for r in seconds[symbol]) * 1.02
        for position in ("long", "short"):
            mine = [liq for liq in liqs if liq["symbol"] == symbol and liq["position"] == position]
            triggered = np.mean([liq["parent_id"] is not None for liq in mine])
            reach = [without[position][ts >= liq["opened_ms"]] for liq in mine]
            never = np.mean([liq["liquidation_price"] < r.min() if position == "long" else liq["liquidation_price"] > r.max()
                             for liq, r in zip(mine, reach, strict=True)])
            assert triggered > 0.95, (symbol, position, triggered)
            assert 0.2 < never < 0.8, (symbol, position, never)


def test_no_crossed_position_survives_a_liquidation_check():
    """Positions opened at a price below (shorts) or above (longs) ones already liquidated go to the
    head of the liquidation order; a later batch must not be placed behind less urgent ones (it once
    was, and ETH shorts 6 % under the mark stayed open through the relief rally)."""
    spec = SYMBOL_SPECS["ETHUSDT"]
    for seed in range(3):
        book = PositionBook(spec, spec.price, np.random.default_rng(seed))
        rng = np.random.default_rng(seed)
        price = spec.price
        for _ in range(30):
            price *= float(np.exp(rng.normal(0.0, 0.02)))
            book.trade_flows(price, 2e-4, 1.0, 1.0, -0.2, 0.5, 5.0)
            book.liquidate(price)
            live = book.lots[:book.used] > 0
            is_long, liq = book.is_long[:book.used], book.liq[:book.used]
            assert not np.any(live & ~is_long & (liq <= price)), seed
            assert not np.any(live & is_long & (liq >= price)), seed
