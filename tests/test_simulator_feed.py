"""Offline tests of the simulator's message stream: determinism, Binance depth sequencing and book
sync against ground truth, trade id bookkeeping, wire formats and fault injection.

All of these run the same ExchangeFeed the websocket server uses, without a network."""

from __future__ import annotations

import itertools
from collections import defaultdict
from decimal import Decimal

import numpy as np
import orjson
import pytest

from ingest.simulator import (ExchangeFeed, FaultConfig, MalformedFrame, SimConfig, StallSpec, iter_messages,
                              load_truth)
from ingest.simulator.config import ConfigError

SYMBOLS = ("BTCUSDT", "ETHUSDT", "SOLUSDT")


def _run(config: SimConfig, streams=None, truth_path=None) -> list:
    return list(iter_messages(config=config, streams=streams, truth_path=truth_path))


def test_same_seed_gives_identical_messages_and_truth(tmp_path):
    config = SimConfig(scenario="calm", seed=11, hours=1 / 60)
    first = _run(config, truth_path=tmp_path / "a.jsonl")
    second = _run(config, truth_path=tmp_path / "b.jsonl")
    assert len(first) > 5_000
    assert [(m.ts_ms, m.stream, orjson.dumps(m.payload)) for m in first] == \
        [(m.ts_ms, m.stream, orjson.dumps(m.payload)) for m in second]
    assert (tmp_path / "a.jsonl").read_bytes() == (tmp_path / "b.jsonl").read_bytes()

    # Asking for fewer streams does not change what those streams carry.
    only = list(itertools.islice(iter_messages(config=config, streams=["ethusdt@depth@500ms"]), 40))
    assert [m.payload for m in only] == [m.payload for m in first if m.stream == "ethusdt@depth@500ms"][:40]

    other_seed = SimConfig(scenario="calm", seed=12, hours=1 / 60)
    other = list(itertools.islice(iter_messages(config=other_seed, streams=["btcusdt@aggTrade"]), 50))
    mine = [m for m in first if m.stream == "btcusdt@aggTrade"][:50]
    assert [m.payload["p"] for m in other] != [m.payload["p"] for m in mine]


class BinanceBook:
    """Local book maintained with Binance's official USD-M futures sync procedure."""

    def __init__(self, snapshot: dict):
        self.last_update_id = snapshot["lastUpdateId"]
        # float price -> [price, qty] exactly as received
        self.bids = {float(p): [p, q] for p, q in snapshot["bids"]}
        self.asks = {float(p): [p, q] for p, q in snapshot["asks"]}
        self.prev_u: int | None = None

    def apply(self, event: dict) -> bool:
        """Returns False if the event is dropped as older than the snapshot; raises on a gap."""
        if self.prev_u is None:
            if event["u"] < self.last_update_id:
                return False
            assert event["U"] <= self.last_update_id <= event["u"], "first event must straddle the snapshot"
        else:
            assert event["pu"] == self.prev_u, "pu must equal the previous event's u"
        for side, levels in ((self.bids, event["b"]), (self.asks, event["a"])):
            for price, qty in levels:
                if float(qty) == 0:
                    side.pop(float(price), None)
                else:
                    side[float(price)] = [price, qty]
        self.prev_u = event["u"]
        assert max(self.bids) < min(self.asks), "book crossed"
        return True

    def copy(self) -> tuple[dict, dict]:
        return dict(self.bids), dict(self.asks)


def _sorted_book(bids: dict, asks: dict) -> tuple[list, list]:
    return [bids[p] for p in sorted(bids, reverse=True)], [asks[p] for p in sorted(asks)]


def test_depth_streams_sync_with_snapshot_and_match_true_book(tmp_path):
    """Official sync (drop u < lastUpdateId, first U <= lastUpdateId <= u, then pu == previous u)
    on every depth interval; the rebuilt book equals the true book at every checkpoint."""
    truth_path = tmp_path / "truth.jsonl"
    feed = ExchangeFeed(SimConfig(scenario="calm", seed=3, hours=1.5 / 60, checkpoint_every_s=5), truth_path)
    streams = {f"{s.lower()}@{k}" for s in SYMBOLS for k in ("depth@100ms", "depth", "depth@500ms")}
    wanted = streams.__contains__
    buffered: list = []
    for _ in range(23):                      # subscribe first, buffer 2.3 s of events
        buffered.extend(feed.step(wanted))
    books: dict[str, BinanceBook] = {}
    for stream in sorted(streams):
        snapshot = feed.depth_snapshot(stream.split("@")[0].upper(), 1000)
        assert len(snapshot["bids"]) < 1000 and len(snapshot["asks"]) < 1000, "snapshot must hold the whole book"
        books[stream] = BinanceBook(snapshot)
    rebuilt: dict[tuple[str, str, int], tuple[dict, dict]] = {}
    applied = defaultdict(int)

    def apply(msg) -> None:
        book = books[msg.stream]
        if book.apply(msg.payload):
            applied[msg.stream] += 1
            rebuilt[(msg.stream, msg.payload["s"], msg.payload["u"])] = book.copy()

    for msg in buffered:
        apply(msg)
    while not feed.finished:
        for msg in feed.step(wanted):
            apply(msg)
    feed.close()

    assert min(applied.values()) > 100
    checkpoints = [b for b in load_truth(truth_path)["book"] if b["ts"] > feed.start_ms + 3000]
    assert len(checkpoints) == 3 * 18                # every 5 s from 5 s to 90 s
    for stream in streams:
        for cp in (c for c in checkpoints if c["symbol"] == stream.split("@")[0].upper()):
            bids, asks = _sorted_book(*rebuilt[(stream, cp["symbol"], cp["last_update_id"])])
            assert bids == cp["bids"] and asks == cp["asks"], f"{stream} book differs at {cp['ts']}"


def test_depth_updates_chain_and_share_one_id_space():
    feed = ExchangeFeed(SimConfig(scenario="calm", seed=4, hours=1 / 60))
    last: dict[str, int] = {}
    event_times: dict[str, list[int]] = defaultdict(list)
    for msg in feed.messages(streams=[f"btcusdt@{k}" for k in ("depth@100ms", "depth", "depth@500ms")]):
        e = msg.payload
        assert e["e"] == "depthUpdate" and e["U"] <= e["u"]
        if msg.stream in last:
            assert e["pu"] == last[msg.stream]
        last[msg.stream] = e["u"]
        event_times[msg.stream].append(e["E"])
        for price, _ in e["b"] + e["a"]:
            assert (Decimal(price) / Decimal("0.10")) % 1 == 0, "prices sit on the tick grid"
    gaps = {name: {b - a for a, b in zip(times, times[1:])} for name, times in event_times.items()}
    assert gaps["btcusdt@depth@100ms"] <= {100, 200, 300}
    assert gaps["btcusdt@depth"] == {200, 300} and len(event_times["btcusdt@depth"]) == 240   # 250 ms on average
    assert gaps["btcusdt@depth@500ms"] == {500}
    # Every stream ends at the same update id: the 500 ms event covers the 100 ms events' ids.
    assert last["btcusdt@depth@100ms"] == last["btcusdt@depth@500ms"] == last["btcusdt@depth"]


def test_trade_ids_contiguous_and_recorded_in_truth(tmp_path):
    truth_path = tmp_path / "truth.jsonl"
    config = SimConfig(scenario="calm", seed=8, hours=1 / 60)
    agg: dict[str, list[dict]] = defaultdict(list)
    trades: dict[str, list[dict]] = defaultdict(list)
    for msg in iter_messages(config=config, truth_path=truth_path):
        if msg.stream.endswith("@aggTrade"):
            agg[msg.payload["s"]].append(msg.payload)
        elif msg.stream.endswith("@trade"):
            trades[msg.payload["s"]].append(msg.payload)
    truth = load_truth(truth_path)
    for symbol in SYMBOLS:
        a = agg[symbol]
        assert len(a) > 100
        assert [x["a"] for x in a] == list(range(a[0]["a"], a[0]["a"] + len(a)))
        assert all(x["f"] <= x["l"] for x in a)
        assert all(nxt["f"] == cur["l"] + 1 for cur, nxt in zip(a, a[1:]))
        assert [t["t"] for t in trades[symbol]] == list(range(a[0]["f"], a[-1]["l"] + 1))
        by_agg = {x["a"]: x for x in a}
        for t in trades[symbol][:200]:
            owner = next(x for x in a if x["f"] <= t["t"] <= x["l"])
            assert owner["p"] == t["p"] and owner["m"] == t["m"] and owner["T"] == t["T"]
        seconds = [r for r in truth["second"] if r["symbol"] == symbol and r["agg_first"] is not None]
        recorded = [i for r in seconds for i in range(r["agg_first"], r["agg_last"] + 1)]
        assert recorded == sorted(by_agg)


def published_agg_ids(messages) -> dict[str, list[int]]:
    ids = defaultdict(list)
    for msg in messages:
        if msg.stream.endswith("@aggTrade"):
            ids[msg.payload["s"]].append(msg.payload["a"])
    return ids


def truth_agg_ids(truth: dict) -> dict[str, list[int]]:
    ids = defaultdict(list)
    for r in truth["second"]:
        if r["agg_first"] is not None:
            ids[r["symbol"]] += range(r["agg_first"], r["agg_last"] + 1)
    return ids


def test_truth_ends_with_the_partial_second_of_a_stop(tmp_path):
    """A run stopped between two seconds (server close, SIGTERM) still has every published trade
    and liquidation in its truth: the last ``second`` record covers the partial second."""
    config = SimConfig(scenario="cascade", seed=3, hours=1.25, trigger_offset_s=30)
    feed = ExchangeFeed(config, tmp_path / "truth.jsonl")
    trigger = feed.start_ms + int(feed.model.scenario.trigger_s * 1000)
    messages = []
    while feed.now_ms < trigger or not any(feed._liq_window) or feed.now_ms % 1000 == 0:
        messages += feed.step()
    stopped_at, pending_liquidations = feed.now_ms, sum(map(len, feed._liq_window))
    feed.close()
    truth = load_truth(tmp_path / "truth.jsonl")
    assert truth["second"][-1]["ts"] == stopped_at and stopped_at % 1000 != 0
    assert {r["symbol"] for r in truth["second"] if r["ts"] == stopped_at} == set(SYMBOLS)
    assert truth_agg_ids(truth) == published_agg_ids(messages)
    assert pending_liquidations > 0 and len(truth["liquidation"]) == feed.liquidation_count
    assert sum(not r["published"] for r in truth["liquidation"] if r["ts"] > stopped_at // 1000 * 1000) \
        >= pending_liquidations


def test_payload_shapes_match_binance():
    seen = {}
    for msg in iter_messages(config=SimConfig(scenario="calm", seed=2, hours=1 / 60)):
        seen.setdefault(msg.stream.split("@", 1)[1], msg.payload)
    str_fields = {
        "aggTrade": ({"e", "E", "a", "s", "p", "q", "nq", "f", "l", "T", "m"}, ("p", "q", "nq")),
        "trade": ({"e", "E", "T", "s", "t", "p", "q", "X", "m"}, ("p", "q", "X")),
        "depth@100ms": ({"e", "E", "T", "s", "U", "u", "pu", "b", "a"}, ()),
        "bookTicker": ({"e", "u", "s", "b", "B", "a", "A", "T", "E"}, ("b", "B", "a", "A")),
        "markPrice@1s": ({"e", "E", "s", "p", "i", "P", "r", "T"}, ("p", "i", "P", "r")),
        "markPrice": ({"e", "E", "s", "p", "i", "P", "r", "T"}, ("p", "i", "P", "r")),
    }
    for kind, (keys, strings) in str_fields.items():
        payload = seen[kind]
        assert set(payload) == keys, kind
        assert all(isinstance(payload[k], str) for k in strings), kind
        assert isinstance(payload["E"], int) and payload["E"] > 1_700_000_000_000
    assert seen["aggTrade"]["e"] == "aggTrade" and isinstance(seen["aggTrade"]["m"], bool)
    assert seen["markPrice@1s"]["T"] % (8 * 3600 * 1000) == 0
    depth = seen["depth@100ms"]
    assert all(isinstance(p, str) and isinstance(q, str) for p, q in depth["b"] + depth["a"])
    assert len(seen["aggTrade"]["p"].split(".")[1]) == 2 and len(seen["aggTrade"]["q"].split(".")[1]) == 3


def test_rest_bodies_offline():
    feed = ExchangeFeed(SimConfig(scenario="calm", seed=1, hours=1 / 60))
    for _ in range(30):
        feed.step()
    snap = feed.depth_snapshot("ETHUSDT", 5)
    assert set(snap) == {"lastUpdateId", "E", "T", "bids", "asks"} and len(snap["bids"]) == 5
    assert Decimal(snap["bids"][0][0]) < Decimal(snap["asks"][0][0])
    oi = feed.open_interest("SOLUSDT")
    assert set(oi) == {"openInterest", "symbol", "time"} and float(oi["openInterest"]) > 1e6
    info = feed.exchange_info(2400)
    filters = {f["filterType"]: f for f in info["symbols"][0]["filters"]}
    assert filters["PRICE_FILTER"]["tickSize"] == "0.10" and filters["LOT_SIZE"]["stepSize"] == "0.001"
    premium = feed.premium_index("BTCUSDT")
    assert abs(float(premium["markPrice"]) / float(premium["indexPrice"]) - 1) < 0.002
    with pytest.raises(ValueError):
        feed.depth_snapshot("BTCUSDT", 7)


def test_faults_injected_offline_and_recorded(tmp_path):
    truth_path = tmp_path / "truth.jsonl"
    faults = FaultConfig(gap_every_s=7, malformed_every_s=2, stalls=(StallSpec("markPrice@1s", 20, 15),))
    config = SimConfig(scenario="calm", seed=9, hours=1 / 60, faults=faults)
    messages = _run(config, truth_path=truth_path)
    truth = load_truth(truth_path)
    kinds = defaultdict(int)
    for msg in messages:
        if isinstance(msg.payload, MalformedFrame):
            kinds["invalid_json"] += 1
            with pytest.raises(orjson.JSONDecodeError):
                orjson.loads(msg.payload.text)
    malformed = [f for f in truth["fault"] if f["fault"] == "malformed"]
    assert len(malformed) == 30                     # one every 2 s over 60 s
    assert {f["kind"] for f in malformed} == {"invalid_json", "missing_field", "wrong_type"}
    assert kinds["invalid_json"] == sum(f["kind"] == "invalid_json" for f in malformed)

    gaps = [f for f in truth["fault"] if f["fault"] == "sequence_gap"]
    assert len(gaps) == 3 * 8                       # 8 gaps, each on the three depth streams of a symbol
    by_stream = defaultdict(list)
    for msg in messages:
        if "@depth" in msg.stream and isinstance(msg.payload, dict) and "u" in msg.payload:
            by_stream[msg.stream].append(msg.payload)
    for gap in gaps:
        events = by_stream[gap["stream"]]
        assert all(e["u"] != gap["u"] for e in events), "the skipped event is not published"
        after = [e for e in events if e["U"] > gap["u"]]
        assert after and after[0]["pu"] == gap["u"], "the next event's pu points at the skipped u"

    start = config.resolved().start_ms
    mark_times = [m.ts_ms - start for m in messages if m.stream == "btcusdt@markPrice@1s"]
    assert not [t for t in mark_times if 20_000 <= t < 35_000]
    assert len([t for t in mark_times if t >= 35_000]) >= 20
    assert len([m for m in messages if m.stream == "btcusdt@aggTrade" and 20_000 <= m.ts_ms - start < 35_000]) > 20
    stall = [f for f in truth["fault"] if f["fault"] == "stall"]
    assert stall == [{"type": "fault", "fault": "stall", "ts": start + 20_000, "stream": "markPrice@1s",
                      "end_ts": start + 35_000}]


def test_invalid_configuration_is_rejected():
    with pytest.raises(ConfigError, match="unsupported symbol"):
        SimConfig(symbols=("BTCUSDT", "DOGEUSDX")).resolved()
    with pytest.raises(ConfigError, match="hours >= 1"):
        SimConfig(scenario="cascade", hours=0.9).resolved()
    with pytest.raises(ConfigError, match="STREAM:START_S:DURATION_S"):
        StallSpec.parse("markPrice@1s")
    with pytest.raises(ConfigError, match="not a simulated stream"):
        StallSpec.parse("btcusdt@kline_1m:10:5")
    with pytest.raises(ConfigError, match="rest-error-rate"):
        SimConfig(faults=FaultConfig(rest_error_rate=1.5)).resolved()
    with pytest.raises(ConfigError, match="step_ms must divide one second.*got 300"):
        SimConfig(step_ms=300).resolved()


def test_a_one_second_model_step_keeps_the_calm_markets_depth_volatility_and_open_interest():
    """The demo's history steps a second at a time: what its minutes show must be the market the
    live 100 ms model makes (same seed, same scenario)."""
    def sampled(step_ms: int) -> tuple[np.ndarray, np.ndarray, list[float]]:
        feed = ExchangeFeed(SimConfig(scenario="calm", seed=5, start_ms=1760054400000, hours=0.25, step_ms=step_ms))
        nothing = frozenset().__contains__
        depth, mids = [], []
        while not feed.finished:
            feed.step(nothing)
            if feed.now_ms % 60_000 == 0:
                depth.append(feed.model.depth_within(0.02)[:, [1, 3]].sum(axis=1))
            if feed.now_ms % 10_000 == 0:
                mids.append(feed.model.mid)
        feed.close()
        return np.array(depth), np.diff(np.log(np.array(mids)), axis=0), feed.model.open_interest()

    fine_depth, fine_returns, fine_oi = sampled(100)
    coarse_depth, coarse_returns, coarse_oi = sampled(1000)
    assert len(fine_depth) == len(coarse_depth) == 15 and len(fine_returns) == len(coarse_returns) == 89
    # 2% depth (USD, both sides) per symbol: the same book within 3% on average.
    assert np.allclose(coarse_depth.mean(axis=0), fine_depth.mean(axis=0), rtol=0.03), \
        (coarse_depth.mean(axis=0), fine_depth.mean(axis=0))
    # 10 s mid returns: the same volatility (89 samples a symbol: within 25%).
    ratio = coarse_returns.std(axis=0) / fine_returns.std(axis=0)
    assert ((ratio > 0.75) & (ratio < 1.25)).all(), ratio
    assert np.allclose(coarse_oi, fine_oi, rtol=0.02), (coarse_oi, fine_oi)
