"""The cascade scenario reproduces the shape of 2025-10-10 (analytics spec section 6), and the
published liquidation feed is sampled like Binance's while the ground truth keeps everything.

One compressed cascade (15 calm minutes, trigger, 60 minutes of crash and recovery) is simulated
once for the module, publishing only the liquidation streams."""

from __future__ import annotations

import statistics
from collections import defaultdict

import pytest

from ingest.simulator import ExchangeFeed, SimConfig, load_truth

SYMBOLS = ("BTCUSDT", "ETHUSDT", "SOLUSDT")
LIQUIDATION_STREAMS = [f"{s.lower()}@forceOrder" for s in SYMBOLS] + ["!forceOrder@arr"]


@pytest.fixture(scope="module")
def cascade(tmp_path_factory):
    truth_path = tmp_path_factory.mktemp("cascade") / "truth.jsonl"
    feed = ExchangeFeed(SimConfig(scenario="cascade", seed=7, hours=1.25, checkpoint_every_s=900), truth_path)
    messages = list(feed.messages(streams=LIQUIDATION_STREAMS))
    feed.close()
    truth = load_truth(truth_path)
    seconds = defaultdict(list)
    for record in truth["second"]:
        seconds[record["symbol"]].append(record)
    return {"truth": truth, "messages": messages, "seconds": seconds,
            "trigger": truth["meta"][0]["trigger_ms"], "end": truth["meta"][0]["end_ms"]}


def _at(records: list[dict], ts: int) -> dict:
    return next(r for r in records if r["ts"] >= ts)


def _drawdowns(cascade) -> dict[str, float]:
    out = {}
    for symbol, records in cascade["seconds"].items():
        before = _at(records, cascade["trigger"])["mark"]
        out[symbol] = min(r["mark"] for r in records if r["ts"] >= cascade["trigger"]) / before - 1
    return out


def test_btc_falls_10_to_15_percent_and_alts_fall_further(cascade):
    drop = _drawdowns(cascade)
    assert -0.15 <= drop["BTCUSDT"] <= -0.10
    assert -0.24 <= drop["ETHUSDT"] <= -0.13 and drop["ETHUSDT"] < drop["BTCUSDT"]
    assert -0.38 <= drop["SOLUSDT"] <= -0.24 and drop["SOLUSDT"] < drop["ETHUSDT"]


def test_partial_recovery_after_the_low(cascade):
    for symbol, records in cascade["seconds"].items():
        before = _at(records, cascade["trigger"])["mark"]
        low = min(r["mark"] for r in records)
        end = records[-1]["mark"]
        recovered = (end - low) / (before - low)
        assert 0.15 <= recovered <= 0.85, (symbol, recovered)


def test_two_percent_depth_collapses_about_90_percent_then_returns(cascade):
    windows = {w["symbol"]: w for w in cascade["truth"]["cascade_window"]}
    assert set(windows) == set(SYMBOLS)
    for symbol, records in cascade["seconds"].items():
        depth = [(r["ts"], r["depth2_bid_usd"] + r["depth2_ask_usd"]) for r in records]
        prior = statistics.median(d for ts, d in depth if ts < cascade["trigger"])
        window = windows[symbol]
        during = statistics.median(d for ts, d in depth if window["start_ms"] <= ts <= window["end_ms"])
        late = statistics.median(d for ts, d in depth if ts > cascade["end"] - 10 * 60_000)
        assert 0.05 <= during / prior <= 0.20, (symbol, during / prior)
        assert late / prior >= 0.5, (symbol, late / prior)
    btc_prior = statistics.median(r["depth2_bid_usd"] for r in cascade["seconds"]["BTCUSDT"]
                                  if r["ts"] < cascade["trigger"])
    assert 10e6 <= btc_prior <= 100e6, "BTC 2% bid depth is tens of $M in calm"


def test_open_interest_falls_30_to_45_percent(cascade):
    for symbol, records in cascade["seconds"].items():
        before = _at(records, cascade["trigger"])["oi"]
        low = min(r["oi"] for r in records if r["ts"] >= cascade["trigger"])
        assert -0.45 <= low / before - 1 <= -0.30, (symbol, low / before - 1)


def test_liquidations_are_about_85_percent_longs(cascade):
    liquidations = cascade["truth"]["liquidation"]
    longs = sum(r["notional"] for r in liquidations if r["position"] == "long")
    shorts = sum(r["notional"] for r in liquidations if r["position"] == "short")
    assert 0.78 <= longs / (longs + shorts) <= 0.92
    assert all((r["side"] == "SELL") == (r["position"] == "long") for r in liquidations)
    calm = [r for r in liquidations if r["ts"] < cascade["trigger"]]
    assert sum(r["notional"] for r in calm) < 0.01 * (longs + shorts)
    per_second = defaultdict(float)
    for record in cascade["truth"]["second"]:
        per_second[record["symbol"]] += record["liq_long_usd"] + record["liq_short_usd"]
    for symbol in SYMBOLS:
        total = sum(r["notional"] for r in liquidations if r["symbol"] == symbol)
        assert per_second[symbol] == pytest.approx(total, rel=1e-9)


def test_force_order_feed_is_sampled_at_most_once_per_second_per_symbol(cascade):
    liquidations = cascade["truth"]["liquidation"]
    messages = cascade["messages"]
    by_symbol = [m for m in messages if m.stream != "!forceOrder@arr"]
    all_market = [m for m in messages if m.stream == "!forceOrder@arr"]
    assert [m.payload for m in all_market] == [m.payload for m in by_symbol]
    seconds = defaultdict(int)
    for m in by_symbol:
        seconds[(m.payload["o"]["s"], m.payload["E"] // 1000)] += 1
    assert max(seconds.values()) == 1
    assert len(liquidations) > 3 * len(by_symbol) > 3000

    published = {(r["symbol"], r["ts"], r["side"]): r for r in liquidations if r["published"]}
    assert len(published) == len(by_symbol)
    latest_fill = defaultdict(int)
    for r in liquidations:
        if r["filled_qty"] > 0:
            key = (r["symbol"], r["ts"] // 1000)
            latest_fill[key] = max(latest_fill[key], r["ts"])
    for m in by_symbol:
        o = m.payload["o"]
        assert set(o) == {"s", "S", "o", "f", "q", "p", "ap", "X", "l", "z", "T"}
        assert (o["o"], o["f"]) == ("LIMIT", "IOC")
        record = published[(o["s"], o["T"], o["S"])]
        assert float(o["q"]) == pytest.approx(record["qty"])
        assert float(o["z"]) == pytest.approx(record["filled_qty"])
        # The pushed order is the latest liquidation of its symbol in its second.
        assert o["T"] == latest_fill[(o["s"], o["T"] // 1000)]
        if o["S"] == "SELL":
            assert float(o["ap"]) >= float(o["p"]), "a long's forced sell fills at or above its bankruptcy price"
        else:
            assert float(o["ap"]) <= float(o["p"])
