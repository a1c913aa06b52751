"""The OKX venue (``okx-swap``) on a real 2022 recording, real instrument lists and the documented
2026 payloads (tests/fixtures/okx/README.md says where each comes from)."""

from __future__ import annotations

import json
import re
from collections import Counter
from decimal import Decimal
from pathlib import Path

import orjson
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from conftest import VENUE_RECORDINGS, venue_recording
from ingest.book_sync import BookSync
from ingest.records import BookDelta, BookSnapshot, Funding, Instrument, Liquidation, OpenInterest, Trade
from ingest.venue import BookResync, MalformedMessage, SkipMessage
from ingest.venues import okx
from ingest.venues.okx import OkxSwap, OkxSyncRules, book_checksum

FIXTURES = Path(__file__).parent / "fixtures" / "okx"
TS = 1_700_000_000_000_000_000

# cryptofeed's capture format: a connect line, then sent and received frames.
CONNECT = re.compile(rb"^(\S+) <-> (\d+(?:\.\d+)?)$")
SENT = re.compile(rb"^(\S+) <- (\d+(?:\.\d+)?): (.*)$")
RECEIVED = re.compile(rb"^(\d+(?:\.\d+)?): (.*)$")


def seconds_to_ns(text: bytes) -> int:
    whole, _, frac = text.decode().partition(".")
    return int(whole) * 1_000_000_000 + int((frac + "000000000")[:9])


def read_recording(path: Path) -> tuple[list, list, list]:
    """(connects, sent frames, received frames), each as (url or None, receive ns, payload)."""
    connects, sent, received = [], [], []
    for line in path.read_bytes().splitlines():
        if m := RECEIVED.match(line):
            received.append((None, seconds_to_ns(m[1]), orjson.loads(m[2])))
        elif m := SENT.match(line):
            sent.append((m[1].decode(), seconds_to_ns(m[2]), orjson.loads(m[3])))
        elif m := CONNECT.match(line):
            connects.append((m[1].decode(), seconds_to_ns(m[2]), None))
        else:
            raise AssertionError(f"unrecognised recording line: {line[:80]!r}")
    return connects, sent, received


def received_frames() -> list[tuple[int, dict]]:
    return [(ts, message) for _, ts, message in read_recording(venue_recording("okx", "OKX.ws.1.0"))[2]]


def channel_of(message: dict) -> str | None:
    """The channel of a data push (None for replies, which name the channel too)."""
    return None if "event" in message else message["arg"]["channel"]


def documented_frames() -> list[dict]:
    return [orjson.loads(line) for line in (FIXTURES / "documented_examples.jsonl").read_bytes().splitlines()]


def instrument_responses() -> list[dict]:
    return json.loads(venue_recording("okx", "instruments.json").read_text())


class StringBook:
    """A book that keeps the venue's strings (the checksum is over them), keyed by exact price."""

    def __init__(self, bids=(), asks=()):
        self.bids: dict[Decimal, list] = {}
        self.asks: dict[Decimal, list] = {}
        self.apply(bids, asks)

    def apply(self, bids, asks) -> None:
        for side, levels in ((self.bids, bids), (self.asks, asks)):
            for price, size, *_ in levels:
                if Decimal(size) == 0:
                    side.pop(Decimal(price), None)
                else:
                    side[Decimal(price)] = [price, size]

    def levels(self) -> tuple[list, list]:
        return ([self.bids[p] for p in sorted(self.bids, reverse=True)],
                [self.asks[p] for p in sorted(self.asks)])


def book_frame(inst_id: str, action: str, **item) -> dict:
    return {"arg": {"channel": "books", "instId": inst_id}, "action": action,
            "data": [{"asks": [], "bids": [], "ts": "1700000000000", **item}]}


def trade_frame(**fields) -> dict:
    item = {"instId": "BTC-USDT-SWAP", "tradeId": "500", "px": "42219.9", "sz": "12", "side": "sell",
            "ts": "1630048897897", **fields}
    return {"arg": {"channel": "trades", "instId": "BTC-USDT-SWAP"}, "data": [item]}


def liquidation_frame(*details, inst_id="BTC-USDT-SWAP", inst_type="SWAP") -> dict:
    return {"arg": {"channel": "liquidation-orders", "instType": inst_type},
            "data": [{"details": list(details), "instFamily": inst_id.rsplit("-", 1)[0], "instId": inst_id,
                      "instType": inst_type, "uly": inst_id.rsplit("-", 1)[0]}]}


def detail(side="sell", pos_side="long", sz="3", px="41000.5", ts="1692266434010") -> dict:
    return {"bkLoss": "0", "bkPx": px, "ccy": "", "posSide": pos_side, "side": side, "sz": sz, "ts": ts}


# --- symbols ---------------------------------------------------------------------------------

def test_symbol_normalization():
    venue = OkxSwap()
    assert venue.normalize_symbol("BTC-USDT-SWAP") == "BTC-USDT-PERP"
    assert venue.normalize_symbol("BTC-USD-SWAP") == "BTC-USD-PERP"
    assert venue.normalize_symbol("BTC-USD-220527") == "BTC-USD-220527"
    assert venue.normalize_symbol("1000PEPE-USDC-SWAP") == "1000PEPE-USDC-PERP"
    for not_collected in ("BTC-USDT", "BTC-USD-220514-22000-C"):
        with pytest.raises(SkipMessage, match="not collected"):
            venue.normalize_symbol(not_collected)
    for garbage in ("btc-usdt-swap", "BTC-USDT-PERP", "BTCUSDT", "BTC-USD-2205"):
        with pytest.raises(MalformedMessage, match="not an OKX instrument id"):
            venue.normalize_symbol(garbage)


# --- the real 2022 recording -------------------------------------------------------------------

def test_recording_reader_sees_connect_subscribes_and_frames():
    connects, sent, received = read_recording(venue_recording("okx", "OKX.ws.1.0"))
    assert [url for url, _, _ in connects] == ["wss://ws.okx.com:8443/ws/v5/public"]
    assert [frame["op"] for _, _, frame in sent] == ["subscribe"] * 3
    assert len(sent[-1][2]["args"]) == 9    # tickers, trades, books for 3 instruments
    assert len(received) == 410


def test_every_received_frame_is_mapped_skipped_or_dead_lettered():
    venue = OkxSwap()
    outcomes, records = Counter(), Counter()
    for ts, message in received_frames():
        channel = channel_of(message) or "event"
        try:
            mapped = venue.map_ws(message, ts)
        except SkipMessage as skip:
            outcomes[(channel, f"skipped: {skip}")] += 1
        except MalformedMessage as exc:
            outcomes[(channel, f"dead letter: {exc}")] += 1
        else:
            outcomes[(channel, "mapped")] += 1
            records.update((channel, r.record_type, r.symbol_native) for r in mapped)
    spot = "skipped: spot, margin and option instruments are not collected"
    assert outcomes == {
        ("event", "skipped: subscription reply"): 18,
        ("tickers", "skipped: tickers: the touch is derived from the synced book, statistics from trades"): 28,
        ("books", "mapped"): 192, ("books", spot): 98,
        ("trades", "mapped"): 5, ("trades", spot): 69,
    }
    assert sum(outcomes.values()) == 410
    assert records == {
        ("books", "book_snapshot", "BTC-USD-220527"): 1, ("books", "book_delta", "BTC-USD-220527"): 98,
        ("books", "book_snapshot", "UNI-USD-SWAP"): 1, ("books", "book_delta", "UNI-USD-SWAP"): 92,
        ("trades", "trade", "BTC-USD-220527"): 4, ("trades", "trade", "UNI-USD-SWAP"): 1,
    }


def test_every_recorded_checksum_verifies_on_a_replayed_book():
    """All three books of the recording, spot included (the checksum rule is the same), rebuilt
    from the raw frames: the spec's 290/290."""
    books, verified, mismatches, with_checksum = {}, 0, 0, 0
    for _, message in received_frames():
        if channel_of(message) != "books":
            continue
        inst_id, [item] = message["arg"]["instId"], message["data"]
        if message["action"] == "snapshot":
            books[inst_id] = StringBook(item["bids"], item["asks"])
        else:
            books[inst_id].apply(item["bids"], item["asks"])
        if item.get("checksum"):
            with_checksum += 1
            if book_checksum(*books[inst_id].levels()) == item["checksum"]:
                verified += 1
            else:
                mismatches += 1
    assert (with_checksum, verified, mismatches) == (290, 290, 0)


def test_a_corrupted_level_changes_the_checksum():
    frames = [m for _, m in received_frames() if channel_of(m) == "books" and m["arg"]["instId"] == "UNI-USD-SWAP"]
    snapshot = frames[0]["data"][0]
    bids, asks = StringBook(snapshot["bids"], snapshot["asks"]).levels()
    assert book_checksum(bids, asks) == snapshot["checksum"]
    tenth_bid_price, tenth_bid_size = bids[9]
    corrupted = [*bids[:9], [tenth_bid_price, str(Decimal(tenth_bid_size) + 1)], *bids[10:]]
    assert book_checksum(corrupted, asks) != snapshot["checksum"]
    assert book_checksum(bids[:25] + [["0.001", "1"]], asks) == snapshot["checksum"]   # beyond the top 25


def test_mapped_books_keep_strings_and_checksums_and_sync_without_gaps():
    venue = OkxSwap()
    sync = BookSync(venue.rules, venue.exchange, periodic_ms=0)
    books, verified = {}, 0
    for ts, message in received_frames():
        try:
            mapped = venue.map_ws(message, ts)
        except SkipMessage:
            continue
        for record in mapped:
            if isinstance(record, BookSnapshot):
                books[record.symbol] = StringBook(record.bids, record.asks)
                out = sync.on_snapshot(record)
            elif isinstance(record, BookDelta):
                books[record.symbol].apply(record.bids, record.asks)
                out = sync.on_delta(record)
            else:
                continue
            assert not out.need_snapshot
            assert venue.rules.checksum(*books[record.symbol].levels()) == record.checksum
            verified += 1
    assert verified == 192
    # BookSync checks the same checksums itself through ``rules.checksum``.
    assert sync.counts == {"snapshots": 2, "applied": 190, "checksums_verified": 192}


def test_book_sync_reports_a_corrupted_update_as_a_gap():
    venue = OkxSwap()
    sync = BookSync(venue.rules, venue.exchange, periodic_ms=0)
    frames = [(ts, m) for ts, m in received_frames()
              if channel_of(m) == "books" and m["arg"]["instId"] == "BTC-USD-220527"]
    (ts, snapshot), (ts_update, update) = frames[:2]
    sync.on_snapshot(*venue.map_ws(snapshot, ts))
    update["data"][0]["asks"][1][1] = "5"      # the venue said 4 contracts at 30261
    out = sync.on_delta(*venue.map_ws(update, ts_update))
    assert out.need_snapshot
    assert [(r.kind, orjson.loads(r.detail)["reason"]) for r in out.records if r.record_type == "feed_event"] == [
        ("gap", "checksum mismatch")]
    assert sync.counts["checksum_mismatches"] == 1


def test_first_real_update_fields():
    """The update quoted in the spec (exchanges.md 2.3), as a record."""
    venue = OkxSwap()
    for ts, message in received_frames():
        if message.get("action") == "update" and message["arg"]["instId"] == "BTC-USD-220527":
            [delta] = venue.map_ws(message, ts)
            break
    assert isinstance(delta, BookDelta)
    assert (delta.exchange, delta.symbol, delta.symbol_native) == ("okx-swap", "BTC-USD-220527", "BTC-USD-220527")
    assert delta.asks == [["30249.4", "0"], ["30261", "4"], ["30310.3", "19"]]
    assert delta.bids == [["30182.6", "452"]]
    assert (delta.ts_exchange, delta.ts_recv, delta.checksum) == (1652459225464, ts, -914047754)
    assert (delta.first_seq, delta.last_seq, delta.prev_seq) == (None, None, None)


def test_real_trades():
    venue = OkxSwap()
    trades = [t for ts, m in received_frames() if channel_of(m) == "trades" and m["arg"]["instId"] != "BTC-USDT"
              for t in venue.map_ws(m, ts)]
    assert [(t.symbol, t.trade_id, t.price, t.qty, t.side) for t in trades] == [
        ("BTC-USD-220527", "7849", "30218.8", "1", "buy"),
        ("UNI-USD-PERP", "12883020", "5.123", "100", "sell"),
        ("BTC-USD-220527", "7850", "30217.7", "2", "buy"),
        ("BTC-USD-220527", "7851", "30217.9", "2", "buy"),
        ("BTC-USD-220527", "7852", "30229.6", "30", "buy"),
    ]
    first = trades[0]
    assert isinstance(first, Trade)
    assert (first.ts_exchange, first.qty_unit, first.is_aggregated) == (1652459199958, "contracts", False)
    assert (first.first_trade_id, first.last_trade_id, first.trade_type) == (7849, 7849, None)
    assert all(venue.trade_sequence(t) == (int(t.trade_id), int(t.trade_id)) for t in trades)   # single fills
    assert venue.trades_url(venue.default_rest_url, "BTC-USD-220527", 7849) == (
        "https://www.okx.com/api/v5/market/history-trades?instId=BTC-USD-220527&type=1&after=7949&limit=100")


def test_an_aggregated_push_covers_its_range_and_history_trades_backfill_one_id_each():
    venue = OkxSwap()
    [push] = venue.map_ws({"arg": {"channel": "trades", "instId": "BTC-USDT-SWAP"}, "data": [{
        "instId": "BTC-USDT-SWAP", "tradeId": "130639474", "px": "42219.9", "sz": "12", "side": "buy",
        "ts": "1630048897897", "count": "3", "source": "0"}]}, TS)
    assert venue.trade_sequence(push) == (130639472, 130639474)
    body = {"code": "0", "msg": "", "data": [
        {"instId": "BTC-USDT-SWAP", "tradeId": str(i), "px": "42219.9", "sz": "4", "side": "buy", "ts": "1630048897897"}
        for i in (130639474, 130639473, 130639472)]}
    url = venue.trades_url("http://sim", "BTC-USDT-SWAP", 130639472, 3)
    assert url.endswith("after=130639475&limit=3")
    assert sorted(venue.trade_sequence(t) for t in venue.map_rest(url, body, TS)) == [
        (130639472, 130639472), (130639473, 130639473), (130639474, 130639474)]


# --- book rules --------------------------------------------------------------------------------

def delta(prev_seq, seq) -> BookDelta:
    return BookDelta(exchange="okx-swap", symbol="BTC-USDT-PERP", symbol_native="BTC-USDT-SWAP",
                     ts_exchange=0, ts_recv=0, bids=[], asks=[], first_seq=None, last_seq=seq, prev_seq=prev_seq)


def test_crc32_on_hand_computed_vectors():
    # "3366.1:7:3366.8:9:3368:8:3372:8": bids run out first, the asks continue alone.
    assert book_checksum([["3366.1", "7"]], [["3366.8", "9"], ["3368", "8"], ["3372", "8"]]) == 831078360
    # "3366.1:7:3366.8:9:3366:6:3368:8": CRC32 2413953002 as a signed 32-bit int.
    assert book_checksum([["3366.1", "7"], ["3366", "6"]], [["3366.8", "9"], ["3368", "8"]]) == -1881014294
    assert OkxSyncRules().checksum([["3366.1", "7"], ["3366", "6"]], [["3366.8", "9"], ["3368", "8"]]) == -1881014294


def test_sequence_rules():
    rules = OkxSyncRules()
    # Documented sequence: snapshot 10; update 10->15; heartbeat 15->15; reset 15->3; update 3->5.
    assert rules.bridges(delta(10, 15), 10)
    assert not rules.is_stale(delta(10, 15), 10)
    assert rules.continues(delta(15, 15), delta(10, 15))     # heartbeat
    assert rules.continues(delta(15, 3), delta(15, 15))      # seqId goes down after maintenance
    assert rules.continues(delta(3, 5), delta(15, 3))
    assert not rules.continues(delta(16, 20), delta(10, 15))  # a lost update
    assert not rules.bridges(delta(9, 12), 10)
    assert rules.is_stale(delta(8, 10), 10)                  # sent before the snapshot
    assert rules.bridges(delta(10, 10), 10) and not rules.is_stale(delta(10, 10), 10)   # heartbeat first
    assert rules.bridges(delta(10, 3), 10) and not rules.is_stale(delta(10, 3), 10)     # reset first
    # Legacy books (no seqId): nothing to check but the checksum.
    assert rules.bridges(delta(None, None), None) and rules.continues(delta(None, None), delta(None, None))
    assert not rules.is_stale(delta(None, None), None)
    assert not rules.continues(delta(None, None), delta(10, 15))  # seq fields vanished mid-chain


# --- documented 2026 payloads -------------------------------------------------------------------

def test_documented_books_chain_through_heartbeat_and_reset():
    venue = OkxSwap()
    sync = BookSync(venue.rules, venue.exchange, periodic_ms=0)
    records = [r for m in documented_frames() if channel_of(m) == "books" for r in venue.map_ws(m, TS)]
    snapshot, *deltas = records
    assert isinstance(snapshot, BookSnapshot)
    assert (snapshot.seq, snapshot.reason, snapshot.checksum) == (10, "venue", 0)
    assert snapshot.asks[0] == ["8476.98", "415"] and snapshot.bids[-1] == ["8446", "95"]
    assert [(d.prev_seq, d.last_seq, d.checksum) for d in deltas] == [(10, 15, 0), (15, 15, 0), (15, 3, 0), (3, 5, 0)]
    assert deltas[1].bids == deltas[1].asks == []
    for record in records:
        out = sync.on_snapshot(record) if record is snapshot else sync.on_delta(record)
        assert not out.need_snapshot
    assert sync.counts == {"snapshots": 1, "applied": 4}
    assert sync.on_delta(delta(4, 9)).need_snapshot          # 4 != 5: resubscribe
    assert venue.BOOK_RESYNC is BookResync.RESUBSCRIBE


def test_documented_messages_map_to_records():
    venue = OkxSwap()
    by_channel = {}
    for message in documented_frames():
        key = message.get("event") or message["arg"]["channel"]
        try:
            by_channel.setdefault(key, []).append(venue.map_ws(message, TS))
        except SkipMessage as skip:
            by_channel.setdefault(key, []).append(f"skipped: {skip}")
        except MalformedMessage as exc:
            by_channel.setdefault(key, []).append(f"dead letter: {exc}")
    assert by_channel["subscribe"] == ["skipped: subscription reply"]
    assert by_channel["notice"] == ["skipped: notice 64008"]
    [error] = by_channel["error"]
    assert error.startswith("dead letter: OKX error 60012: Invalid request")

    [[trade]] = by_channel["trades"]
    assert (trade.symbol, trade.trade_id, trade.side, trade.qty, trade.qty_unit) == (
        "BTC-USDT-PERP", "130639474", "buy", "12", "contracts")
    assert (trade.is_aggregated, trade.first_trade_id, trade.last_trade_id) == (True, 130639472, 130639474)

    [[funding]] = by_channel["funding-rate"]
    assert funding == Funding(exchange="okx-swap", symbol="BTC-USD-PERP", symbol_native="BTC-USD-SWAP",
                              ts_exchange=1700724675402, ts_recv=TS, rate="0.0001875391284828", interval_hours=8,
                              next_funding_time=1700726400000, mark_price=None, index_price=None, is_realised=False)

    [[oi]] = by_channel["open-interest"]
    assert oi == OpenInterest(exchange="okx-swap", symbol="BTC-USDT-PERP", symbol_native="BTC-USDT-SWAP",
                              ts_exchange=1743041250440, ts_recv=TS, open_interest="2216113.01000000309",
                              qty_unit="contracts", open_interest_usd="1939251795.54769270396321")

    [[liquidation], repeated] = by_channel["liquidation-orders"]
    assert liquidation == Liquidation(exchange="okx-swap", symbol="IOST-USDT-PERP", symbol_native="IOST-USDT-SWAP",
                                      ts_exchange=1692266434010, ts_recv=TS, order_side="buy",
                                      liquidated_position="short", price="0.007831", avg_price=None, qty="13",
                                      qty_unit="contracts", order_status=None, is_sampled=True)
    assert repeated == "skipped: liquidation-orders: repeated or uncollected orders only"

    # Mark and index on channels of their own: price-only Funding rows (no rate restated).
    [[mark]] = by_channel["mark-price"]
    assert mark == Funding(exchange="okx-swap", symbol="BTC-USDT-PERP", symbol_native="BTC-USDT-SWAP",
                           ts_exchange=1630049139746, ts_recv=TS, rate=None, interval_hours=None,
                           next_funding_time=None, mark_price="42310.6", index_price=None, is_realised=False)
    [[index]] = by_channel["index-tickers"]   # a replay: nothing subscribed, the family's swap
    assert (index.symbol_native, index.index_price, index.mark_price, index.rate) == (
        "BTC-USDT-SWAP", "42305.2", None, None)


def test_an_index_serves_every_subscribed_instrument_of_its_family():
    venue = OkxSwap()
    [connection] = venue.ws_connections("wss://ws.okx.com:8443", ["BTC-USDT-SWAP", "BTC-USDT-250627", "ETH-USDT-SWAP"])
    subscribe = orjson.loads(connection.subscribe[0])["args"]
    assert {"channel": "index-tickers", "instId": "BTC-USDT"} in subscribe
    assert {"channel": "index-tickers", "instId": "ETH-USDT"} in subscribe
    assert {"channel": "mark-price", "instId": "BTC-USDT-250627"} in subscribe
    assert "mark-price:BTC-USDT-SWAP" in connection.streams and "index-tickers:BTC-USDT" in connection.streams
    frame = {"arg": {"channel": "index-tickers", "instId": "BTC-USDT"},
             "data": [{"instId": "BTC-USDT", "idxPx": "60000.5", "ts": "1700000000000"}]}
    assert [(r.symbol_native, r.index_price) for r in venue.map_ws(frame, TS)] == [
        ("BTC-USDT-SWAP", "60000.5"), ("BTC-USDT-250627", "60000.5")]
    for bad in ("BTC", "btc-usdt", 5):
        with pytest.raises(MalformedMessage, match="index"):
            venue.map_ws({**frame, "arg": {"channel": "index-tickers", "instId": bad},
                          "data": [{"idxPx": "1", "ts": "1700000000000"}]}, TS)
    with pytest.raises(MalformedMessage, match="idxPx"):
        venue.map_ws({**frame, "data": [{"instId": "BTC-USDT", "idxPx": "-1", "ts": "1700000000000"}]}, TS)


# --- funding, open interest, liquidations, trades ------------------------------------------------

def funding_frame(**fields) -> dict:
    item = {"fundingRate": "-0.0003", "fundingTime": "1700726400000", "instId": "DOGE-USDT-SWAP",
            "instType": "SWAP", "nextFundingTime": "1700740800000", "ts": "1700724675402", **fields}
    return {"arg": {"channel": "funding-rate", "instId": "DOGE-USDT-SWAP"}, "data": [item]}


def test_funding_interval_comes_from_the_two_settlement_times():
    venue = OkxSwap()
    [shortened] = venue.map_ws(funding_frame(), TS)
    assert (shortened.rate, shortened.interval_hours, shortened.next_funding_time) == ("-0.0003", 4, 1700726400000)
    [unknown] = venue.map_ws(funding_frame(nextFundingTime=""), TS)
    assert unknown.interval_hours == 8
    with pytest.raises(MalformedMessage, match="whole number of hours"):
        venue.map_ws(funding_frame(nextFundingTime="1700727000000"), TS)
    with pytest.raises(MalformedMessage, match="fundingRate"):
        venue.map_ws(funding_frame(fundingRate="+0.0003"), TS)


def test_liquidation_position_conventions():
    venue = OkxSwap()
    frame = liquidation_frame(detail("sell", "long", ts="1"), detail("buy", "short", ts="2"),
                              detail("sell", "net", ts="3"), detail("buy", "net", ts="4"))
    assert [(r.order_side, r.liquidated_position) for r in venue.map_ws(frame, TS)] == [
        ("sell", "long"), ("buy", "short"), ("sell", "long"), ("buy", "short")]
    with pytest.raises(MalformedMessage, match="a buy order cannot liquidate a long position"):
        venue.map_ws(liquidation_frame(detail("buy", "long")), TS)


def test_liquidations_are_deduplicated_with_bounded_memory(monkeypatch):
    venue = OkxSwap()
    first = venue.map_ws(liquidation_frame(detail(ts="1"), detail(ts="1"), detail(ts="2")), TS)
    assert [r.ts_exchange for r in first] == [1, 2]            # a repeat inside one push, too
    with pytest.raises(SkipMessage, match="repeated"):
        venue.map_ws(liquidation_frame(detail(ts="2"), detail(ts="1")), TS)
    [other_size] = venue.map_ws(liquidation_frame(detail(ts="1", sz="4")), TS)
    assert other_size.qty == "4"
    # A dead-lettered push leaves nothing remembered: its valid orders still map when resent.
    with pytest.raises(MalformedMessage):
        venue.map_ws(liquidation_frame(detail(ts="7"), detail(sz="-1", ts="8")), TS)
    assert len(venue.map_ws(liquidation_frame(detail(ts="7")), TS)) == 1
    monkeypatch.setattr(okx, "LIQUIDATIONS_REMEMBERED", 3)
    venue.map_ws(liquidation_frame(detail(ts="10"), detail(ts="11"), detail(ts="12")), TS)
    assert len(venue._liquidations_seen) == 3
    assert len(venue.map_ws(liquidation_frame(detail(ts="1")), TS)) == 1   # forgotten, so kept again


def test_liquidations_of_uncollected_instruments_are_left_out():
    venue = OkxSwap()
    margin = liquidation_frame(detail(), inst_id="BTC-USDT", inst_type="MARGIN")
    with pytest.raises(SkipMessage, match="repeated or uncollected"):
        venue.map_ws(margin, TS)
    mixed = liquidation_frame(detail(), inst_id="BTC-USD-220527", inst_type="FUTURES")
    mixed["data"] += margin["data"]
    assert [r.symbol for r in venue.map_ws(mixed, TS)] == ["BTC-USD-220527"]


def test_trade_fields_and_sources():
    venue = OkxSwap()
    [single] = venue.map_ws(trade_frame(count="1", source="1"), TS)
    assert (single.side, single.qty_unit, single.is_aggregated, single.trade_type) == ("sell", "contracts", True, "ELP")
    assert (single.first_trade_id, single.last_trade_id) == (500, 500)
    [unknown_source] = venue.map_ws(trade_frame(count="2", source="7"), TS)
    assert (unknown_source.trade_type, unknown_source.first_trade_id) == ("7", 499)
    for bad in ({"side": "BUY"}, {"count": "0"}, {"tradeId": 500}, {"ts": "16300488978970000000"}):
        with pytest.raises(MalformedMessage):
            venue.map_ws(trade_frame(**bad), TS)


@pytest.mark.parametrize("field_name, value", [
    ("sz", "-1"), ("sz", "1_000"), ("sz", " 7 "), ("sz", "0"), ("sz", "1e3"),
    ("px", "0"), ("px", "-42219.9"), ("px", "nan"),
])
def test_hostile_trade_numbers_are_dead_lettered(field_name, value):
    with pytest.raises(MalformedMessage, match=field_name):
        OkxSwap().map_ws(trade_frame(**{field_name: value}), TS)


@pytest.mark.parametrize("level, problem", [
    (["42000", "-1", "0", "1"], "quantity"), (["42000", "1_000", "0", "1"], "quantity"),
    (["42000", " 7 ", "0", "1"], "quantity"), (["0", "5", "0", "1"], "price"),
    (["42000", "5"], "not \\[price, size"), ("42000", "not \\[price, size"),
])
def test_hostile_book_levels_are_dead_lettered(level, problem):
    with pytest.raises(MalformedMessage, match=problem):
        OkxSwap().map_ws(book_frame("BTC-USDT-SWAP", "update", bids=[level], seqId=2, prevSeqId=1), TS)


def test_malformed_envelopes():
    venue = OkxSwap()
    with pytest.raises(MalformedMessage, match="action"):
        venue.map_ws({**book_frame("BTC-USDT-SWAP", "update"), "action": "partial"}, TS)
    with pytest.raises(MalformedMessage, match="non-empty list of objects"):
        venue.map_ws({"arg": {"channel": "trades", "instId": "BTC-USDT-SWAP"}, "data": []}, TS)
    with pytest.raises(MalformedMessage, match="channel"):
        venue.map_ws({"arg": "books", "data": []}, TS)
    with pytest.raises(MalformedMessage, match="JSON object"):
        venue.map_ws([], TS)
    with pytest.raises(MalformedMessage, match="mark-price: field 'data'"):
        venue.map_ws({"arg": {"channel": "mark-price", "instId": "BTC-USDT-SWAP"}, "data": []}, TS)
    with pytest.raises(SkipMessage, match="tickers: the touch"):
        venue.map_ws({"arg": {"channel": "tickers", "instId": "BTC-USDT-SWAP"}, "data": []}, TS)
    with pytest.raises(SkipMessage, match="candle1m: channel not collected"):
        venue.map_ws({"arg": {"channel": "candle1m", "instId": "BTC-USDT-SWAP"}, "data": []}, TS)


JSON_VALUES = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(max_size=8),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner, max_size=4),
    max_leaves=12)
# Real frames where the recording is on this machine, the documented ones everywhere.
TEMPLATES = ([m for _, m in received_frames()[17:60]] if (VENUE_RECORDINGS / "okx" / "OKX.ws.1.0").exists() else []) \
    + documented_frames()


@settings(max_examples=400, deadline=None)
@given(st.sampled_from(TEMPLATES), st.data())
def test_any_mangled_frame_maps_skips_or_is_dead_lettered(template, data):
    """Replace one value anywhere in a real or documented frame: nothing but SkipMessage or
    MalformedMessage may come out (the feed handler catches only those)."""
    message = orjson.loads(orjson.dumps(template))
    path, node = [], message
    while isinstance(node, (dict, list)) and node and data.draw(st.booleans()):
        key = data.draw(st.sampled_from(sorted(node) if isinstance(node, dict) else range(len(node))))
        path.append(key)
        node = node[key]
    replacement = data.draw(JSON_VALUES)
    if not path:
        message = replacement
    else:
        parent = message
        for key in path[:-1]:
            parent = parent[key]
        parent[path[-1]] = replacement
    try:
        OkxSwap().map_ws(message, TS)
    except (SkipMessage, MalformedMessage):
        pass


# --- instruments and REST ------------------------------------------------------------------------

def test_instruments_from_the_recorded_lists():
    venue = OkxSwap()
    records = {}
    for response in instrument_responses():
        for record in venue.map_rest(response["url"], response["body"], seconds_to_ns(response["ts_recv"].encode())):
            records[record.symbol_native] = record
    assert sorted(records) == ["BTC-USD-220527", "BTC-USD-SWAP", "BTC-USDT-220527", "BTC-USDT-SWAP", "UNI-USD-SWAP"]
    linear = records["BTC-USDT-SWAP"]
    assert isinstance(linear, Instrument)
    assert (linear.symbol, linear.market_type, linear.margin, linear.qty_unit) == (
        "BTC-USDT-PERP", "perpetual", "linear", "contracts")
    assert (linear.contract_size, linear.contract_size_unit, linear.settle_asset) == ("0.01", "base", "USDT")
    assert (linear.base_asset, linear.quote_asset, linear.tick_size, linear.lot_size) == ("BTC", "USDT", "0.1", "1")
    assert (linear.expiry, linear.funding_interval_hours, linear.status) == (None, None, "live")
    inverse = records["BTC-USD-SWAP"]
    assert (inverse.symbol, inverse.margin, inverse.contract_size, inverse.contract_size_unit, inverse.settle_asset) == (
        "BTC-USD-PERP", "inverse", "100", "usd", "BTC")
    future = records["BTC-USD-220527"]
    assert (future.symbol, future.market_type, future.margin, future.expiry) == (
        "BTC-USD-220527", "future", "inverse", 1653638400000)
    assert future.ts_exchange == 1652459223860 and future.ts_recv == 1652459223860024700
    assert records["UNI-USD-SWAP"].contract_size == "10"


def test_reference_data_and_tradable_symbols():
    venue = OkxSwap()
    urls = venue.reference_urls("https://www.okx.com/")
    assert urls == {"instruments": "https://www.okx.com/api/v5/public/instruments?instType=SWAP",
                    "instruments_futures": "https://www.okx.com/api/v5/public/instruments?instType=FUTURES"}
    swaps, futures = (r["body"] for r in instrument_responses())
    venue.apply_reference("instruments", swaps)
    venue.apply_reference("instruments_futures", futures)
    assert venue.tradable_symbols() == {"BTC-USD-SWAP", "UNI-USD-SWAP", "BTC-USDT-SWAP",
                                        "BTC-USD-220527", "BTC-USDT-220527"}
    assert len(venue.instruments(TS)) == 5
    # A new list replaces the old one; an odd entry is left out with the reason, a pre-announced
    # listing without contract fields is not listed yet, ctMult multiplies ctVal.
    odd = {**swaps["data"][0], "instId": "ODD-USD-SWAP", "ctValCcy": "EUR"}
    announced = {**swaps["data"][0], "instId": "NEW-USDT-SWAP", "state": "preopen", "ctVal": ""}
    multiplied = {**swaps["data"][2], "instId": "SATS-USDT-SWAP", "ctValCcy": "SATS", "ctVal": "100", "ctMult": "0.1"}
    venue.apply_reference("instruments", {**swaps, "data": [swaps["data"][2], odd, announced, multiplied]})
    assert venue.tradable_symbols() == {"BTC-USDT-SWAP", "SATS-USDT-SWAP", "BTC-USD-220527", "BTC-USDT-220527"}
    assert venue.rejected_instruments == {
        "ODD-USD-SWAP": "instrument ODD-USD-SWAP: a inverse contract valued in 'EUR' has no known unit"}
    assert {r.symbol_native: r.contract_size for r in venue.instruments(TS)}["SATS-USDT-SWAP"] == "10"
    with pytest.raises(MalformedMessage, match="OKX error 50011: Too Many Requests"):
        venue.apply_reference("instruments", {"code": "50011", "msg": "Too Many Requests", "data": []})
    with pytest.raises(MalformedMessage, match="not a SWAP instrument"):
        venue.apply_reference("instruments", futures)


def test_rest_funding_and_open_interest():
    venue = OkxSwap()
    base = "https://www.okx.com/api/v5/public"
    [funding] = venue.map_rest(f"{base}/funding-rate?instId=DOGE-USDT-SWAP",
                               {"code": "0", "msg": "", "data": funding_frame()["data"]}, TS)
    assert (funding.symbol, funding.interval_hours) == ("DOGE-USDT-PERP", 4)
    oi_body = {"code": "0", "msg": "", "data": [{"instType": "SWAP", "instId": "BTC-USDT-SWAP", "oi": "5000",
                                                 "oiCcy": "555.55", "oiUsd": "50000", "ts": "1597026383085"}]}
    [oi] = venue.map_rest(f"{base}/open-interest?instType=SWAP&instId=BTC-USDT-SWAP", oi_body, TS)
    assert (oi.open_interest, oi.open_interest_usd, oi.ts_exchange) == ("5000", "50000", 1597026383085)
    with pytest.raises(SkipMessage, match="SPOT instType is not collected"):
        venue.map_rest(f"{base}/instruments?instType=SPOT", {"code": "0", "data": []}, TS)
    with pytest.raises(SkipMessage, match="REST endpoint not collected"):
        venue.map_rest("https://www.okx.com/api/v5/market/tickers?instType=SWAP", {}, TS)
    assert venue.open_interest_url(venue.default_rest_url, "BTC-USDT-SWAP") is None   # pushed in-stream


# --- transport and recordings --------------------------------------------------------------------

def test_connections_and_streams():
    venue = OkxSwap()
    swaps = [f"C{i}-USDT-SWAP" for i in range(30)]
    futures = [f"C{i}-USD-250627" for i in range(15)]
    connections = venue.ws_connections("wss://ws.okx.com:8443/", swaps + futures)
    assert [c.route for c in connections] == ["public-1", "public-2", "public-3"]
    assert {c.url for c in connections} == {"wss://ws.okx.com:8443/ws/v5/public"}
    assert [sum(s.startswith("books:") for s in c.streams) for c in connections] == [20, 20, 5]
    assert [sum(s.startswith("funding-rate:") for s in c.streams) for c in connections] == [20, 10, 0]
    assert [s for c in connections for s in c.streams if s.startswith("liquidation-orders")] == [
        "liquidation-orders:SWAP", "liquidation-orders:FUTURES"]
    for connection in connections:
        [frame] = connection.subscribe
        request = orjson.loads(frame)
        assert request["op"] == "subscribe"
        assert [f"{a['channel']}:{a.get('instId') or a['instType']}" for a in request["args"]] == list(connection.streams)
    assert "liquidation-orders" not in connections[1].subscribe[0]
    assert set(venue.SILENCE_LIMIT_S) == {venue.stream_kind(s) for c in connections for s in c.streams}
    assert venue.PING_FRAME == "ping" and venue.PONG_FRAME == "pong" and venue.PING_INTERVAL_S < 30


def test_stream_names_from_raw_frames():
    venue = OkxSwap()
    for _, _, message in read_recording(venue_recording("okx", "OKX.ws.1.0"))[2][17:40]:
        raw = orjson.dumps(message).decode()
        stream = venue.stream_of(raw)
        if "event" in message:
            assert stream is None
        else:
            assert stream == f"{message['arg']['channel']}:{message['arg']['instId']}"
    stream = venue.stream_of('{"arg":{"channel":"liquidation-orders","instType":"SWAP"},"data":[]}')
    assert stream == "liquidation-orders:SWAP"
    assert venue.stream_of('{"arg":{"channel":"books","instId":"BTC-USDT-SWAP"},"action":"update"}') == "books:BTC-USDT-SWAP"
    assert (venue.stream_kind("books:BTC-USDT-SWAP"), venue.stream_symbol("books:BTC-USDT-SWAP")) == (
        "books", "BTC-USDT-SWAP")
    assert venue.stream_of('{"arg":') is None and venue.stream_of("pong") is None
    assert [orjson.loads(f) for f in venue.resubscribe_frames("books:BTC-USDT-SWAP")] == [
        {"op": "unsubscribe", "args": [{"channel": "books", "instId": "BTC-USDT-SWAP"}]},
        {"op": "subscribe", "args": [{"channel": "books", "instId": "BTC-USDT-SWAP"}]}]


def test_recognizes_and_message_time():
    venue = OkxSwap()
    documented = documented_frames()
    assert all(venue.recognizes(m) for m in documented)
    assert all(venue.recognizes(m) for _, m in received_frames())
    binance = {"stream": "btcusdt@aggTrade", "data": {"e": "aggTrade", "E": 1, "s": "BTCUSDT", "a": 5, "p": "1",
                                                      "q": "1", "f": 1, "l": 1, "T": 1, "m": True}}
    assert not venue.recognizes(binance)
    assert not venue.recognizes({"result": None, "id": 1}) and not venue.recognizes([])
    times = [venue.message_time_ms(m) for m in documented]
    assert times[1] == 1597026383085 and times[6] == 1630048897897   # books, trades
    assert times[9] == 1692266434010                                   # liquidation: the order's ts
    assert times[0] is None and times[11] is None and times[12] is None   # replies
    assert times[13] == times[14] == 1630049139746                     # mark, index
    assert venue.message_time_ms(binance) is None
