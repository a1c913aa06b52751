"""The dYdX v4 venue (``dydx-v4``) on frames written in the shapes exchanges.md §2.5 documents
(tests/fixtures/dydx/README.md says which); frames built here are marked "constructed"."""

from __future__ import annotations

from pathlib import Path

import orjson
import pytest

from ingest.book_sync import AWAITING_SNAPSHOT, SYNCED, BookSync
from ingest.feed import FeedHandler
from ingest.records import (Adl, BookDelta, BookSnapshot, FeedEvent, Funding, Instrument, Liquidation, OpenInterest,
                            Trade)
from ingest.venue import BookResync, MalformedMessage, SkipMessage, TradePage
from ingest.venues import REGISTRY, likely_venues
from ingest.venues.dydx_v4 import BOOK_REFRESH_S, LATE_REPLY_MESSAGES, DydxSyncRules, DydxV4
from pipelines.replay import replay

FIXTURES = Path(__file__).parent / "fixtures" / "dydx"
CONN = "3f7c9a2e-5b1d-4e8f-9c6a-0d2b7e4f1a35"
TS = 1_724_371_260_000_000_000    # 2024-08-23T00:01:00Z, in ns
SECOND = 1_000_000_000


def documented() -> list[dict]:
    return [orjson.loads(line) for line in (FIXTURES / "documented.jsonl").read_bytes().splitlines()]


def frame(kind: str, message_id: int, connection: str = CONN, **fields) -> dict:
    """A constructed frame in the §2.5 envelope."""
    return {"type": kind, "connection_id": connection, "message_id": message_id, **fields}


def book_snapshot(message_id: int, bids, asks, ticker="BTC-USD", connection=CONN) -> dict:
    return frame("subscribed", message_id, connection, channel="v4_orderbook", id=ticker,
                 contents={"bids": [{"price": p, "size": s} for p, s in bids],
                           "asks": [{"price": p, "size": s} for p, s in asks]})


def book_update(message_id: int, bids=None, asks=None, ticker="BTC-USD", connection=CONN) -> dict:
    contents = {**({"bids": bids} if bids is not None else {}), **({"asks": asks} if asks is not None else {})}
    return frame("channel_data", message_id, connection, id=ticker, channel="v4_orderbook", version="1.0.0",
                 contents=contents)


def trade(trade_id: str, side="BUY", size="0.5", price="60000", at="2024-08-23T00:01:00.000Z", type_="LIMIT") -> dict:
    return {"id": trade_id, "size": size, "price": price, "side": side, "createdAt": at, "type": type_}


def trades_update(message_id: int, *items, ticker="BTC-USD", connection=CONN) -> dict:
    return frame("channel_data", message_id, connection, id=ticker, channel="v4_trades", version="2.1.0",
                 contents={"trades": list(items)})


class Feed:
    """The venue behind the feed handler (mapper + book sync), frames fed one per second."""

    def __init__(self, symbols=None):
        self.venue = DydxV4()
        self.records: list = []
        self.handler = FeedHandler(self.venue, self.records.append, symbols=symbols)
        self.ts = TS
        self.asked: list[list[str]] = []

    def send(self, *messages, step: int = SECOND) -> list:
        start = len(self.records)
        for message in messages:
            self.ts += step
            self.asked.append(self.handler.on_ws(orjson.dumps(message), self.ts, "ws"))
        return self.records[start:]

    def of(self, cls) -> list:
        return [r for r in self.records if isinstance(r, cls)]


def map_one(message, venue=None, ts=TS) -> list:
    return (venue or DydxV4()).map_ws(message, ts)


def connect(venue, ts=TS) -> None:
    with pytest.raises(SkipMessage, match="connected"):
        venue.map_ws(frame("connected", 0), ts)


# --- symbols and connections ----------------------------------------------------------------------

def test_symbols_normalize_to_usdc_perpetuals():
    venue = DydxV4()
    assert venue.normalize_symbol("BTC-USD") == "BTC-USDC-PERP"
    assert venue.normalize_symbol("1000PEPE-USD") == "1000PEPE-USDC-PERP"
    for bad in ("BTC-USDT", "BTCUSD", "btc-usd", "BTC-USD-PERP", "-USD"):
        with pytest.raises(MalformedMessage, match="not a dYdX perpetual market ticker"):
            venue.normalize_symbol(bad)
    assert REGISTRY["dydx-v4"] is DydxV4 and DydxV4.BOOK_RESYNC is BookResync.RESUBSCRIBE


def test_connections_subscribe_each_market_unbatched_and_markets_once():
    venue = DydxV4()
    symbols = [f"C{i}-USD" for i in range(45)]
    connections = venue.ws_connections("wss://indexer.dydx.trade/", symbols)
    assert [c.url for c in connections] == ["wss://indexer.dydx.trade/v4/ws"] * 3
    assert [len(c.streams) for c in connections] == [41, 40, 10]      # 20 markets x (book, trades) + markets
    first = connections[0]
    assert first.streams[:2] == ("v4_orderbook:C0-USD", "v4_trades:C0-USD") and first.streams[-1] == "v4_markets"
    assert [orjson.loads(f) for f in first.subscribe[:2]] == [
        {"type": "subscribe", "channel": "v4_orderbook", "id": "C0-USD", "batched": False},
        {"type": "subscribe", "channel": "v4_trades", "id": "C0-USD", "batched": False}]
    assert orjson.loads(first.subscribe[-1]) == {"type": "subscribe", "channel": "v4_markets", "batched": False}
    assert not any("v4_markets" in s for c in connections[1:] for s in c.streams)
    assert [orjson.loads(f) for f in venue.resubscribe_frames("v4_orderbook:ETH-USD")] == [
        {"type": "unsubscribe", "channel": "v4_orderbook", "id": "ETH-USD"},
        {"type": "subscribe", "channel": "v4_orderbook", "id": "ETH-USD", "batched": False}]
    stream = "v4_trades:BTC-USD"
    assert (venue.stream_kind(stream), venue.stream_symbol(stream)) == ("v4_trades", "BTC-USD")
    assert venue.stream_symbol("v4_markets") == ""


def test_stream_of_reads_the_envelope_not_the_trade_ids():
    venue = DydxV4()
    lines = (FIXTURES / "documented.jsonl").read_text().splitlines()
    assert [venue.stream_of(line) for line in lines] == [
        None, "v4_orderbook:BTC-USD", "v4_trades:BTC-USD", "v4_orderbook:BTC-USD", "v4_markets",
        "v4_trades:BTC-USD", "v4_trades:BTC-USD", "v4_trades:BTC-USD", "v4_markets", "v4_markets",
        "v4_orderbook:BTC-USD"]
    # constructed: a frame whose contents come before the envelope id
    odd = '{"type":"channel_data","contents":{"trades":[{"id":"0165"}]},"channel":"v4_trades","id":"ETH-USD"}'
    assert venue.stream_of(odd) == "v4_trades:ETH-USD"


# --- the documented frames -------------------------------------------------------------------------

def test_documented_frames_map_to_every_record_kind():
    feed = Feed()
    feed.send(*documented())
    stats = feed.handler.stats
    assert stats.accounted == stats.messages == 11 and not stats.dead_letters
    assert stats.skipped == {"connected": 1, "v4_trades: repeated trades only": 1}
    assert stats.records == {"trade": 4, "liquidation": 1, "adl": 1, "book_snapshot": 3, "book_delta": 2,
                             "funding": 4, "open_interest": 3}
    # The late markets reply (id 3 after 4) is not a lost message.
    assert not [e for e in feed.of(FeedEvent)] and feed.handler.book_sync.counts["gaps"] == 0


def test_trades_liquidations_and_adl_fills():
    feed = Feed()
    feed.send(*documented())
    trades = feed.of(Trade)
    # The backlog comes newest first: emitted oldest first; the live repeat of its newest is dropped.
    assert [(t.trade_id, t.side, t.price, t.qty, t.trade_type) for t in trades] == [
        ("0165e6110000000500000001", "sell", "60388", "0.25", "LIMIT"),
        ("0165e6170000000200000002", "buy", "60392", "0.0001", "LIMIT"),
        ("0165e6190000000300000004", "sell", "60371", "0.0123", "LIQUIDATED"),
        ("0165e61a0000000100000007", "sell", "60365", "0.004", "DELEVERAGED")]
    spec_example = trades[1]
    assert (spec_example.symbol, spec_example.symbol_native, spec_example.ts_exchange) == (
        "BTC-USDC-PERP", "BTC-USD", 1724371257627)
    assert all(t.qty_unit == "base" and not t.is_aggregated and t.first_trade_id is None for t in trades)
    [liquidation] = feed.of(Liquidation)
    assert (liquidation.order_side, liquidation.liquidated_position, liquidation.price, liquidation.avg_price,
            liquidation.qty, liquidation.qty_unit, liquidation.is_sampled) == (
        "sell", "long", "60371", "60371", "0.0123", "base", False)
    assert liquidation.ts_exchange == trades[2].ts_exchange
    [adl] = feed.of(Adl)
    # A SELL taker is an underwater long; the offsetting position ADL reduced was short.
    assert (adl.event, adl.deleveraged_position, adl.price, adl.qty, adl.qty_unit, adl.trade_id, adl.state) == (
        "fill", "short", "60365", "0.004", "base", "0165e61a0000000100000007", None)
    assert orjson.loads(adl.detail) == {"side": "SELL", "createdAtHeight": "23455258"}
    assert adl.ts_exchange == trades[3].ts_exchange and adl.symbol == "BTC-USDC-PERP"


def test_a_buy_deleveraging_reduced_a_long_and_a_buy_liquidation_a_short():
    records = map_one(trades_update(1, trade("a1", side="BUY", type_="DELEVERAGED"),
                                    trade("a2", side="BUY", type_="LIQUIDATED"), trade("a3", type_="TWAP_SUBORDER")))
    adl = [r for r in records if isinstance(r, Adl)][0]
    liq = [r for r in records if isinstance(r, Liquidation)][0]
    assert adl.deleveraged_position == "long" and orjson.loads(adl.detail) == {"side": "BUY"}
    assert (liq.order_side, liq.liquidated_position) == ("buy", "short")
    assert [r.trade_type for r in records if isinstance(r, Trade)] == ["DELEVERAGED", "LIQUIDATED", "TWAP_SUBORDER"]


def test_trades_are_deduplicated_across_backlog_stream_and_rest_only_once_valid():
    venue = DydxV4()
    connect(venue)
    [first] = map_one(trades_update(1, trade("t1")), venue)
    with pytest.raises(SkipMessage, match="repeated trades only"):
        map_one(trades_update(2, trade("t1")), venue)
    # A message with a bad trade is dead-lettered as a whole and its good trades are not remembered.
    with pytest.raises(MalformedMessage, match="'side' must be BUY or SELL"):
        map_one(trades_update(3, trade("t2"), trade("t3", side="buy")), venue)
    assert [t.trade_id for t in map_one(trades_update(4, trade("t2"), trade("t1")), venue)] == ["t2"]
    # The same id in another market is another trade.
    assert len(map_one(trades_update(5, trade("t1"), ticker="ETH-USD"), venue)) == 1
    page = {"trades": [{**trade("t4", at="2024-08-23T00:01:02.000Z"), "createdAtHeight": "23455262"},
                       trade("t2"), {**trade("t0", at="2024-08-23T00:00:59.000Z"), "createdAtHeight": "23455259"}]}
    rest = venue.map_rest("https://indexer.dydx.trade/v4/trades/perpetualMarket/BTC-USD?limit=100", page, TS)
    assert [t.trade_id for t in rest] == ["t0", "t4"]      # oldest first, t2 already received
    assert first.trade_id == "t1"


# --- order book ------------------------------------------------------------------------------------

def test_book_snapshot_then_absolute_deltas_with_zero_deletes():
    feed = Feed()
    feed.send(frame("connected", 0),
              book_snapshot(1, [("100.0", "1.5"), ("99.0", "2")], [("101.0", "1"), ("102.0", "3")]),
              book_update(2, bids=[["100.0", "2.5"]], asks=[["101.0", "0"]]),
              book_update(3, asks=[["150.0", "4"]]),     # beyond the snapshot's levels: inserted
              book_update(4, bids=[["99.0", "0.0"]]))
    snapshot = feed.of(BookSnapshot)[0]
    assert (snapshot.reason, snapshot.seq, snapshot.bids, snapshot.asks, snapshot.uncrossed) == (
        "venue", 1, [["100.0", "1.5"], ["99.0", "2"]], [["101.0", "1"], ["102.0", "3"]], 0)
    deltas = feed.of(BookDelta)
    assert [(d.first_seq, d.last_seq, d.prev_seq) for d in deltas] == [(2, 2, 1), (3, 3, 2), (4, 4, 3)]
    assert deltas[0].bids == [["100.0", "2.5"]] and deltas[1].bids == []
    st = feed.handler.book_sync.state("BTC-USDC-PERP")
    assert st.phase == SYNCED and st.book.bids == {100.0: 2.5} and st.book.asks == {102.0: 3.0, 150.0: 4.0}
    periodic = [s for s in feed.of(BookSnapshot) if s.reason == "periodic"]
    assert periodic and all(s.uncrossed == 0 for s in periodic)


def test_a_crossed_book_is_uncrossed_by_level_age_and_counted():
    """Rule (1): the older of the two crossing levels goes (constructed frames)."""
    feed = Feed()
    feed.send(frame("connected", 0),
              book_snapshot(1, [("100.0", "1")], [("101.0", "1"), ("103.0", "2")]),
              book_update(2, asks=[["102.0", "5"]]),
              # a new bid at 102.5 crosses the asks at 101 (id 1) and 102 (id 2): both are older
              book_update(3, bids=[["102.5", "0.4"]]))
    sync = feed.handler.book_sync
    st = sync.state("BTC-USDC-PERP")
    assert st.phase == SYNCED and sync.counts["gaps"] == 0 and sync.counts["crossed"] == 0
    assert st.book.bids == {102.5: 0.4, 100.0: 1.0} and st.book.asks == {103.0: 2.0}
    assert sync.counts["uncross_events"] == 1 and sync.counts["uncrossed_levels_removed"] == 2
    # The raw delta is stored as received; the next snapshot record says the book needed uncrossing.
    assert feed.of(BookDelta)[-1].bids == [["102.5", "0.4"]]
    flagged = [s for s in feed.of(BookSnapshot) if s.reason == "periodic"]
    assert [s.uncrossed for s in flagged] == [0, 1] and flagged[-1].asks == [["103.0", "2.0"]]
    # an older bid under a newer ask: the bid goes
    feed.send(book_update(4, asks=[["100.0", "0.5"]]))
    assert st.book.bids == {} and st.book.asks == {100.0: 0.5, 103.0: 2.0}   # 102.5 (id 3), then 100 (id 1)
    assert sync.counts["uncross_events"] == 2 and [s.uncrossed for s in feed.of(BookSnapshot)][-1] == 1


def test_levels_of_the_same_message_net_their_sizes():
    rules = DydxSyncRules()
    assert rules.uncross((101.0, 2.5, 7), (100.0, 1.2, 7)) == (1.3, 0.0)     # exact decimal difference
    assert rules.uncross((101.0, 1.0, 7), (100.0, 3.0, 7)) == (0.0, 2.0)
    assert rules.uncross((101.0, 1.0, 7), (100.0, 1.0, 7)) == (0.0, 0.0)
    assert rules.uncross((101.0, 1.0, 8), (100.0, 3.0, 7)) == (1.0, 0.0)     # the ask is older
    assert rules.uncross((101.0, 1.0, 6), (100.0, 3.0, 7)) == (0.0, 3.0)     # the bid is older
    sync = BookSync(rules, "dydx-v4", periodic_ms=0)
    snap = BookSnapshot(exchange="dydx-v4", symbol="X-USDC-PERP", symbol_native="X-USD", ts_exchange=1, ts_recv=1,
                        bids=[["99", "1"]], asks=[["101", "1"]], seq=10, reason="venue")
    sync.on_snapshot(snap)
    out = sync.on_delta(BookDelta(exchange="dydx-v4", symbol="X-USDC-PERP", symbol_native="X-USD", ts_exchange=2,
                                  ts_recv=2, bids=[["100.5", "3"]], asks=[["100.0", "1"]], first_seq=11, last_seq=11,
                                  prev_seq=10))
    book = sync.state("X-USDC-PERP").book
    assert not out.need_snapshot and book.bids == {100.5: 2.0, 99.0: 1.0} and book.asks == {101.0: 1.0}


def test_a_crossed_snapshot_is_still_a_gap():
    feed = Feed()
    feed.send(frame("connected", 0), book_snapshot(1, [("102.0", "1")], [("101.0", "1")]))
    assert feed.asked[-1] == ["BTC-USD"] and feed.handler.book_sync.counts["crossed"] == 1


def test_the_book_is_refreshed_every_minute_while_synced():
    feed = Feed()
    feed.send(frame("connected", 0), book_snapshot(1, [("100.0", "1")], [("101.0", "1")]))
    for message_id in range(2, 2 + BOOK_REFRESH_S + 1):
        feed.send(book_update(message_id, bids=[["99.0", str(message_id)]]))
    assert [i for i, asked in enumerate(feed.asked) if asked] == [BOOK_REFRESH_S + 1]   # 60 s after the snapshot
    sync = feed.handler.book_sync
    assert sync.counts["refresh_requests"] == 1 and sync.state("BTC-USDC-PERP").phase == SYNCED
    # The resubscribe's reply replaces the book; the next update chains onto it.
    feed.send(frame("unsubscribed", 63, channel="v4_orderbook", id="BTC-USD"),
              book_snapshot(64, [("98.0", "1")], [("99.5", "1")]), book_update(65, bids=[["98.5", "1"]]))
    st = sync.state("BTC-USDC-PERP")
    assert st.phase == SYNCED and st.book.bids == {98.5: 1.0, 98.0: 1.0} and sync.counts["gaps"] == 0


# --- message ids -----------------------------------------------------------------------------------

def two_books(feed: Feed) -> None:
    feed.send(frame("connected", 0),
              book_snapshot(1, [("100.0", "1")], [("101.0", "1")]),
              book_snapshot(2, [("10.0", "1")], [("11.0", "1")], ticker="ETH-USD"),
              book_update(3, bids=[["99.0", "1"]]), book_update(4, bids=[["9.0", "1"]], ticker="ETH-USD"))


def test_a_message_id_hole_resyncs_every_book_on_the_connection():
    feed = Feed()
    two_books(feed)
    # id 5 never comes (constructed). While it could still be a late reply, nothing breaks...
    feed.send(book_update(6, bids=[["98.0", "1"]]))
    assert not feed.of(FeedEvent) and feed.handler.book_sync.counts["applied"] == 3
    # ...until it is 10 s late: a message_gap event, and each book's next update breaks its chain.
    feed.send(trades_update(7, trade("x1")), step=11 * SECOND)
    [gap] = [e for e in feed.of(FeedEvent) if e.kind == "message_gap"]
    assert gap.symbol is None and orjson.loads(gap.detail)["missing"] == [[5, 5]]
    assert orjson.loads(gap.detail)["connection_id"] == CONN
    feed.send(book_update(8, bids=[["97.0", "1"]]), book_update(9, bids=[["8.0", "1"]], ticker="ETH-USD"))
    assert feed.asked[-2:] == [["BTC-USD"], ["ETH-USD"]]
    sync = feed.handler.book_sync
    assert sync.counts["gaps"] == 2
    assert {s: sync.state(s).phase for s in ("BTC-USDC-PERP", "ETH-USDC-PERP")} == {
        "BTC-USDC-PERP": AWAITING_SNAPSHOT, "ETH-USDC-PERP": AWAITING_SNAPSHOT}
    # The resubscribe's snapshot resyncs the book and says so; its next update bridges it.
    feed.send(frame("unsubscribed", 10, channel="v4_orderbook", id="BTC-USD"),
              book_snapshot(11, [("95.0", "1")], [("96.0", "1")]), book_update(12, asks=[["96.5", "1"]]))
    assert sync.state("BTC-USDC-PERP").phase == SYNCED and "resync" in [e.kind for e in feed.of(FeedEvent)]
    assert sync.state("BTC-USDC-PERP").book.asks == {96.0: 1.0, 96.5: 1.0}


def test_a_late_subscribed_reply_fills_its_id_and_other_connections_are_independent():
    feed = Feed()
    other = "0b6d2f4e-9a1c-4d3e-8f7a-5c2b1e0d9f86"
    feed.send(frame("connected", 0), frame("connected", 0, other),
              book_snapshot(1, [("100.0", "1")], [("101.0", "1")]),
              book_update(3, bids=[["99.0", "1"]]),                        # id 2 is still outstanding
              book_snapshot(1, [("10.0", "1")], [("11.0", "1")], ticker="ETH-USD", connection=other),
              frame("subscribed", 2, channel="v4_trades", id="BTC-USD", contents={"trades": [trade("b1")]}),
              book_update(2, bids=[["9.0", "1"]], ticker="ETH-USD", connection=other),
              book_update(4, bids=[["98.0", "1"]]))
    feed.send(book_update(5, bids=[["97.0", "1"]]), step=30 * SECOND)
    assert not [e for e in feed.of(FeedEvent) if e.kind == "message_gap"]
    assert feed.handler.book_sync.counts["gaps"] == 0 and feed.handler.book_sync.counts["applied"] == 4


def test_a_hole_is_declared_after_many_later_messages_even_without_receive_times():
    venue = DydxV4()
    connect(venue, ts=0)
    map_one(book_snapshot(1, [("100.0", "1")], [("101.0", "1")]), venue, ts=0)
    map_one(trades_update(3, trade("y0")), venue, ts=0)
    records = []
    for message_id in range(4, 4 + LATE_REPLY_MESSAGES):
        try:
            records += map_one(trades_update(message_id, trade(f"y{message_id}")), venue, ts=0)
        except SkipMessage:
            pass
    assert [orjson.loads(r.detail)["missing"] for r in records if isinstance(r, FeedEvent)] == [[[2, 2]]]
    [delta] = map_one(book_update(5 + LATE_REPLY_MESSAGES, bids=[["99.0", "1"]]), venue, ts=0)
    assert delta.prev_seq is None


def test_repeated_message_ids_are_dead_lettered_and_a_bad_book_update_breaks_only_its_book():
    feed = Feed()
    two_books(feed)
    feed.send(book_update(4, bids=[["9.5", "1"]], ticker="ETH-USD"))
    assert list(feed.handler.stats.dead_letters) == ["channel_data"]
    letter = [r for r in feed.records if r.record_type == "dead_letter"][-1]
    assert "message_id 4 repeats or runs backwards" in letter.reason
    feed.send(book_update(5, bids=[["99.5", "oops"]]))       # BTC lost this update
    feed.send(book_update(6, bids=[["9.5", "1"]], ticker="ETH-USD"), book_update(7, bids=[["99.6", "1"]]))
    sync = feed.handler.book_sync
    assert sync.state("ETH-USDC-PERP").phase == SYNCED and sync.state("BTC-USDC-PERP").phase == AWAITING_SNAPSHOT
    assert feed.asked[-2:] == [[], ["BTC-USD"]]


def test_batched_updates_apply_in_order():
    feed = Feed()
    feed.send(frame("connected", 0), book_snapshot(1, [("100.0", "1")], [("101.0", "1")]),
              frame("channel_batch_data", 2, id="BTC-USD", channel="v4_orderbook", version="1.0.0",
                    contents=[{"bids": [["99.0", "1"]]}, {"bids": [["99.0", "0"]], "asks": [["102.0", "2"]]}]),
              frame("channel_batch_data", 3, id="BTC-USD", channel="v4_trades", version="2.1.0",
                    contents=[{"trades": [trade("c1")]}, {"trades": [trade("c2"), trade("c3")]}]))
    deltas = feed.of(BookDelta)
    assert [(d.last_seq, d.prev_seq) for d in deltas] == [(2, 1), (2, 2)]
    assert feed.handler.book_sync.state("BTC-USDC-PERP").book.bids == {100.0: 1.0}
    assert [t.trade_id for t in feed.of(Trade)] == ["c1", "c2", "c3"]


# --- markets ---------------------------------------------------------------------------------------

def test_markets_merge_per_ticker_into_funding_and_one_sided_open_interest():
    feed = Feed()
    feed.send(*documented())
    funding = feed.of(Funding)
    assert [(f.symbol, f.rate, f.index_price, f.mark_price, f.interval_hours, f.next_funding_time, f.is_realised)
            for f in funding] == [
        ("BTC-USDC-PERP", "0.0000125", "60390.12", None, 1, None, False),
        ("ETH-USDC-PERP", "-0.0000031", "2641.55", None, 1, None, False),
        ("BTC-USDC-PERP", "0.0000131", "60390.12", None, 1, None, False),     # trading update: new rate
        ("BTC-USDC-PERP", "0.0000131", "60380.5", None, 1, None, False)]      # oracle update: new index
    assert funding[-1].ts_exchange == 1724371261204      # the oracle's effectiveAt
    oi = feed.of(OpenInterest)
    assert [(o.symbol, o.open_interest, o.qty_unit, o.open_interest_usd) for o in oi] == [
        ("BTC-USDC-PERP", "512.3456", "base", "30940612.265472"),
        ("ETH-USDC-PERP", "20931.118", "base", "55290594.75290"),
        ("BTC-USDC-PERP", "513.0001", "base", "30980137.599012")]            # x the oracle then known


def test_a_markets_update_that_changes_nothing_kept_is_skipped_and_bad_values_never_merge():
    venue = DydxV4()
    markets = documented()[4]
    map_one(markets, venue)
    same = frame("channel_data", 4, channel="v4_markets", version="1.0.0",
                 contents={"trading": {"BTC-USD": {"volume24H": "1", "openInterest": "512.3456"}}})
    with pytest.raises(SkipMessage, match="nothing perpflow keeps changed"):
        map_one(same, venue)
    bad = frame("channel_data", 5, channel="v4_markets", version="1.0.0",
                contents={"trading": {"ETH-USD": {"openInterest": "7"}, "BTC-USD": {"openInterest": "-3"}}})
    with pytest.raises(MalformedMessage, match=r"'openInterest' must be a decimal string >= 0, got '-3'"):
        map_one(bad, venue)
    [oi] = map_one(frame("channel_data", 6, channel="v4_markets", version="1.0.0",
                         contents={"trading": {"ETH-USD": {"openInterest": "7"}}}), venue)
    assert oi.open_interest == "7" and oi.symbol == "ETH-USDC-PERP"


def test_only_subscribed_markets_pass_the_feed_handler():
    feed = Feed(symbols=["ETH-USD"])
    feed.send(*documented())
    assert {r.symbol_native for r in feed.records} == {"ETH-USD"}
    assert feed.handler.stats.accounted == feed.handler.stats.messages


# --- REST and instruments --------------------------------------------------------------------------

def perpetual_markets() -> dict:
    return orjson.loads((FIXTURES / "perpetualMarkets.json").read_bytes())


def test_instruments_from_perpetual_markets():
    venue = DydxV4()
    urls = venue.reference_urls("https://indexer.dydx.trade/")
    assert urls == {"instruments": "https://indexer.dydx.trade/v4/perpetualMarkets"}
    body = perpetual_markets()
    body["markets"]["BAD-USD"] = {**body["markets"]["BTC-USD"], "ticker": "BAD-USD", "tickSize": "0"}
    body["markets"]["WEIRD"] = body["markets"]["BTC-USD"]
    venue.apply_reference("instruments", body)
    assert venue.tradable_symbols() == {"BTC-USD", "ETH-USD", "PEPE-USD"}
    assert set(venue.rejected_instruments) == {"BAD-USD", "WEIRD"}
    assert "tickSize" in venue.rejected_instruments["BAD-USD"]
    by_native = {i.symbol_native: i for i in venue.instruments(TS)}
    assert set(by_native) == {"BTC-USD", "ETH-USD", "PEPE-USD", "LUNA-USD"}
    btc = by_native["BTC-USD"]
    assert (btc.symbol, btc.market_type, btc.margin, btc.base_asset, btc.quote_asset, btc.settle_asset, btc.qty_unit,
            btc.contract_size, btc.contract_size_unit, btc.tick_size, btc.lot_size, btc.funding_interval_hours,
            btc.expiry, btc.status, btc.ts_exchange) == (
        "BTC-USDC-PERP", "perpetual", "linear", "BTC", "USDC", "USDC", "base", None, None, "1", "0.0001", 1, None,
        "ACTIVE", TS // 1_000_000)
    assert by_native["PEPE-USD"].tick_size == "1e-10" and by_native["LUNA-USD"].status == "FINAL_SETTLEMENT"
    rest = venue.map_rest(urls["instruments"], perpetual_markets(), TS)
    assert all(isinstance(r, Instrument) for r in rest) and len(rest) == 4 and not venue.rejected_instruments
    with pytest.raises(MalformedMessage, match="dYdX error"):
        venue.apply_reference("instruments", {"errors": [{"msg": "Too many requests"}]})


def test_rest_historical_funding_is_realised_hourly_and_the_rest_book_is_skipped():
    venue = DydxV4()
    body = {"historicalFunding": [
        {"ticker": "BTC-USD", "rate": "-0.0000042", "price": "60311.2", "effectiveAt": "2024-08-23T01:00:00.311Z",
         "effectiveAtHeight": "23457512"},
        {"ticker": "BTC-USD", "rate": "0.0000125", "price": "60392.7", "effectiveAt": "2024-08-23T00:00:00.402Z",
         "effectiveAtHeight": "23455190"}]}
    url = venue.historical_funding_url("https://indexer.dydx.trade", "BTC-USD", before="2024-08-23T02:00:00.000Z")
    assert url == ("https://indexer.dydx.trade/v4/historicalFunding/BTC-USD?limit=100"
                   "&effectiveBeforeOrAt=2024-08-23T02%3A00%3A00.000Z")
    settled = venue.map_rest(url, body, TS)
    assert [(f.rate, f.index_price, f.mark_price, f.interval_hours, f.is_realised, f.ts_exchange, f.next_funding_time)
            for f in settled] == [("0.0000125", "60392.7", None, 1, True, 1724371200402, 1724371200402),
                                  ("-0.0000042", "60311.2", None, 1, True, 1724374800311, 1724374800311)]
    with pytest.raises(SkipMessage, match="no message_id"):
        venue.map_rest("https://indexer.dydx.trade/v4/orderbooks/perpetualMarket/BTC-USD", {"bids": [], "asks": []}, TS)
    with pytest.raises(SkipMessage, match="not collected"):
        venue.map_rest("https://indexer.dydx.trade/v4/candles/perpetualMarkets/BTC-USD", {"candles": []}, TS)
    # Trade ids are not consecutive: no sequence, no automatic backfill.
    assert venue.trade_sequence(map_one(trades_update(1, trade("z")))[0]) is None
    assert venue.trades_url("https://indexer.dydx.trade", "BTC-USD", 1) is None


# --- malformed and skipped frames ------------------------------------------------------------------

MALFORMED = [
    ([], "expected a JSON object"),
    ({"type": "channel_datum", "connection_id": CONN, "message_id": 1}, "field 'type' must be one of"),
    ({"type": "channel_data", "message_id": 1, "channel": "v4_trades"}, "'connection_id' must be a non-empty string"),
    ({"type": "channel_data", "connection_id": CONN, "message_id": "1"}, "'message_id' must be an integer"),
    ({"type": "channel_data", "connection_id": CONN, "message_id": -1}, "'message_id' must be >= 0"),
    (frame("error", 1, message="Invalid subscribe message: channel is not a valid channel", channel="v4_tradez"),
     "dYdX error (v4_tradez): 'Invalid subscribe message"),
    (frame("channel_data", 1, id="BTC-USD", version="1.0.0", contents={}), "'channel' must be a string"),
    (trades_update(1, {**trade("m1"), "price": "1_000"}), "'price' must be a positive decimal string, got '1_000'"),
    (trades_update(1, {**trade("m1"), "size": "0"}), "'size' must be a positive decimal string, got '0'"),
    (trades_update(1, trade("m1", at="2024-08-23 00:00:57")), "'createdAt' must be an ISO 8601 UTC time"),
    (trades_update(1, trade("m1", at="2024-02-30T00:00:00.000Z")), "'createdAt' must be an ISO 8601 UTC time"),
    (trades_update(1, {**trade("m1"), "id": 7}), "'id' must be a trade id string"),
    (trades_update(1, trade("m1", type_="limit")), "'type' must be an upper-case word"),
    (trades_update(1, trade("m1"), ticker="BTC-PERP"), "not a dYdX perpetual market ticker"),
    (frame("channel_data", 1, id="BTC-USD", channel="v4_trades", contents={"fills": []}), "missing field 'trades'"),
    (book_update(1, bids=[["100.0", "1", "x"]]), "has a level that is not [price, qty]"),
    (book_update(1, asks=[["-100.0", "1"]]), "price must be a positive decimal string"),
    (book_snapshot(1, [("100.0", "-1")], []), "'size' must be a decimal string >= 0"),
    (frame("subscribed", 1, channel="v4_orderbook", id="BTC-USD", contents={"bids": [["100.0", "1"]]}),
     "has a level that is not {price, size}"),
    (frame("channel_batch_data", 1, id="BTC-USD", channel="v4_orderbook", contents=[]), "non-empty list of objects"),
    (frame("channel_data", 1, channel="v4_markets", contents={"oraclePrices": {"BTC-USD": {"oraclePrice": "1"}}}),
     "missing field 'effectiveAt'"),
]


@pytest.mark.parametrize("message, reason", MALFORMED)
def test_malformed_frames_are_dead_lettered_with_the_reason(message, reason):
    feed = Feed()
    feed.send(message)
    [letter] = [r for r in feed.records if r.record_type == "dead_letter"]
    assert reason in letter.reason, letter.reason
    assert feed.handler.stats.accounted == feed.handler.stats.messages == 1


@pytest.mark.parametrize("message, reason", [
    (frame("connected", 0), "connected"),
    (frame("pong", 3), "pong"),
    (frame("unsubscribed", 3, channel="v4_trades", id="BTC-USD"), "unsubscribed"),
    (frame("channel_data", 3, id="BTC-USD/1MIN", channel="v4_candles", contents={}), "v4_candles: candles are built"),
    (frame("subscribed", 3, channel="v4_trades", id="BTC-USD", contents={"trades": []}), "v4_trades: no trades"),
])
def test_control_and_uncollected_frames_are_skipped_with_the_reason(message, reason):
    with pytest.raises(SkipMessage, match=reason):
        map_one(message)


# --- recordings ------------------------------------------------------------------------------------

def test_recognizes_dydx_frames_and_no_other_venue_claims_them():
    frames = documented()
    assert all(DydxV4().recognizes(f) for f in frames)
    assert likely_venues(frames) == [("dydx-v4", 11)]
    others = [{"stream": "btcusdt@aggTrade", "data": {"e": "aggTrade", "s": "BTCUSDT"}},
              {"arg": {"channel": "trades", "instId": "BTC-USDT-SWAP"}, "data": []},
              {"topic": "publicTrade.BTCUSDT", "type": "snapshot", "data": []},
              {"channel": "trades", "data": [{"coin": "BTC"}]},
              {"type": "channel_data", "message_id": 1}]
    assert not any(DydxV4().recognizes(m) for m in others)


def test_message_time_is_the_newest_trade_or_oracle_time():
    venue = DydxV4()
    times = [venue.message_time_ms(f) for f in documented()]
    assert times == [None, None, 1724371257627, None, None, 1724371257627, 1724371259912, 1724371260731, None,
                     1724371261204, None]


def test_replay_of_the_documented_frames_accounts_for_every_message():
    kept = []
    report = replay("dydx-v4", [FIXTURES / "documented.jsonl"], kept.append)
    assert report.all_accounted and report.stats.messages == 11 and not report.stats.dead_letters
    assert report.stats.records["adl"] == 1 and report.stats.records["liquidation"] == 1
    assert report.gaps == 0 and report.pending_deltas == 0


def test_coverage_says_liquidations_and_adl_are_a_census_and_there_is_no_mark():
    from ingest.venue import DATA_KINDS, Coverage

    coverage = {kind: c for kind, (c, _) in DydxV4.COVERAGE.items()}
    assert set(coverage) == set(DATA_KINDS)
    assert coverage["liquidations"] is coverage["adl"] is coverage["trades"] is Coverage.COMPLETE
    assert coverage["mark_price"] is Coverage.UNAVAILABLE and coverage["index_price"] is Coverage.COMPLETE


# --- REST catch-up of trades and settled funding ---------------------------------------------------

REST = "https://indexer.dydx.trade"


def rest_trade(trade_id: str, height: int, at: str, side="BUY", type_="LIMIT", size="0.5", price="60000") -> dict:
    """A constructed REST trade row in the shape of tests/fixtures/dydx/trades_rest.json."""
    return {"id": trade_id, "side": side, "size": size, "price": price, "type": type_, "createdAt": at,
            "createdAtHeight": str(height)}


def test_a_real_rest_trades_page_maps_like_the_stream_and_ends_the_history():
    venue = DydxV4()
    body = orjson.loads((FIXTURES / "trades_rest.json").read_bytes())
    url = venue.trades_before_url(REST, "BTC-USD", None)
    assert url == f"{REST}/v4/trades/perpetualMarket/BTC-USD?limit=1000"
    [trade_] = venue.map_rest(url, body, TS)
    assert (trade_.trade_id, trade_.side, trade_.qty, trade_.price, trade_.trade_type, trade_.ts_exchange,
            trade_.symbol) == ("02ac5b1f0000000200000002", "buy", "0.0501", "115732", "LIMIT", 1753420269800,
                               "BTC-USDC-PERP")
    # One trade on a page of 1000: the history ends there.
    assert venue.trade_page(url, body) == TradePage(oldest_ms=1753420269800, older=None)
    assert venue.trade_page(url, {"trades": []}) == TradePage(oldest_ms=None, older=None)


def test_trade_pages_go_back_by_block_height_and_page_through_a_block_that_fills_a_page():
    venue = DydxV4()
    first = f"{REST}/v4/trades/perpetualMarket/BTC-USD?limit=3"
    spans = {"trades": [rest_trade("c", 102, "2024-08-23T00:01:02.000Z"), rest_trade("b", 101, "2024-08-23T00:01:01.000Z"),
                        rest_trade("a", 100, "2024-08-23T00:01:00.000Z")]}
    assert venue.trade_page(first, spans) == TradePage(oldest_ms=1724371260000, older=(100, 1))
    assert venue.trades_before_url(REST, "BTC-USD", (100, 1)) == (
        f"{REST}/v4/trades/perpetualMarket/BTC-USD?limit=1000&createdBeforeOrAtHeight=100")
    one_block = {"trades": [rest_trade(i, 100, "2024-08-23T00:01:00.000Z") for i in "xyz"]}
    # All at the cursor's height: the same height's next page; a first page in one block: page 2.
    at_100 = f"{first}&createdBeforeOrAtHeight=100"
    assert venue.trade_page(at_100, one_block).older == (100, 2)
    assert venue.trade_page(f"{at_100}&page=2", one_block).older == (100, 3)
    assert venue.trade_page(first, one_block).older == (100, 2)
    assert venue.trades_before_url(REST, "BTC-USD", (100, 3)).endswith("&createdBeforeOrAtHeight=100&page=3")
    with pytest.raises(MalformedMessage, match="createdAtHeight"):
        venue.trade_page(first, {"trades": [{**rest_trade("d", 1, "2024-08-23T00:01:00.000Z"), "createdAtHeight": 7}]})
    with pytest.raises(MalformedMessage, match="dYdX error"):
        venue.trade_page(first, {"errors": [{"msg": "Too many requests"}]})


def test_rest_pages_give_liquidations_and_adl_fills_once_and_durable_ids_are_dropped():
    venue = DydxV4()
    url = venue.trades_before_url(REST, "BTC-USD", None)
    page = {"trades": [rest_trade("l1", 101, "2024-08-23T00:01:01.000Z", side="SELL", type_="LIQUIDATED"),
                       rest_trade("d1", 101, "2024-08-23T00:01:01.000Z", side="SELL", type_="DELEVERAGED"),
                       rest_trade("k1", 100, "2024-08-23T00:01:00.000Z")]}
    # k1 was found durable in Kafka by a restart (the record another run published).
    [durable] = DydxV4().map_rest(url, {"trades": [page["trades"][2]]}, TS)
    venue.known_records([durable])
    records = venue.map_rest(url, page, TS)
    assert [type(r).__name__ for r in records] == ["Trade", "Liquidation", "Trade", "Adl"]
    liquidation = records[1]
    assert (liquidation.liquidated_position, liquidation.is_sampled) == ("long", False)
    assert (records[3].deleveraged_position, records[3].trade_id) == ("short", "d1")
    with pytest.raises(SkipMessage, match="repeated trades only"):
        venue.map_rest(url, page, TS)


def test_the_catch_up_window_drops_what_is_older_than_the_last_trade_received():
    feed = Feed()
    url = feed.venue.trades_before_url(REST, "BTC-USD", None)
    page = {"trades": [rest_trade("n2", 102, "2024-08-23T00:01:02.000Z"), rest_trade("n1", 101, "2024-08-23T00:01:01.000Z"),
                       rest_trade("o1", 100, "2024-08-23T00:01:00.000Z", type_="LIQUIDATED")]}
    feed.handler.on_trade_page(url, orjson.dumps(page), TS, 1724371261000)
    assert [t.trade_id for t in feed.of(Trade)] == ["n1", "n2"] and not feed.of(Liquidation)
    assert feed.handler.newest_trade_ms == {"BTC-USD": 1724371262000}
    # The older trade was left out, not remembered: a window reaching back further takes it.
    feed.handler.on_trade_page(url, orjson.dumps(page), TS, 1724371260000)
    assert [t.trade_id for t in feed.of(Trade)] == ["n1", "n2", "o1"] and len(feed.of(Liquidation)) == 1
    feed.handler.on_trade_page(url, orjson.dumps(page), TS, 1724371260000)
    assert feed.handler.stats.skipped["trades: repeated trades only"] == 1


def test_a_message_id_hole_asks_to_catch_up_the_trades_of_the_connection_since_the_hole():
    feed = Feed()
    feed.send(frame("connected", 0), trades_update(1, trade("t1", at="2024-08-23T00:01:00.000Z")),
              trades_update(2, trade("e1", at="2024-08-23T00:00:58.000Z"), ticker="ETH-USD"))
    # id 3 is lost (constructed); later trades move the newest time on before the hole is declared.
    feed.send(trades_update(4, trade("t2", at="2024-08-23T00:01:05.000Z")))
    assert not feed.handler.new_catch_ups
    feed.send(trades_update(5, trade("t3", at="2024-08-23T00:01:20.000Z")), step=11 * SECOND)
    assert [(c.symbol_native, c.since_ms) for c in feed.handler.new_catch_ups] == [
        ("BTC-USD", 1724371260000), ("ETH-USD", 1724371258000)]
    assert all("message_id hole" in c.reason for c in feed.handler.new_catch_ups)
    assert not [r for r in feed.records if type(r).__name__ == "TradesUncertain"]    # never published



def test_a_hole_still_pending_when_its_connection_closes_is_declared_by_the_next_connection():
    feed = Feed()
    feed.send(frame("connected", 0), trades_update(1, trade("t1", at="2024-08-23T00:01:00.000Z")))
    # id 2 is lost; id 3 moves the newest trade on; then the connection drops before the hole is
    # declared (a reconnect's catch-up, from the newest trade, would not reach back to id 2's).
    feed.send(trades_update(3, trade("t2", at="2024-08-23T00:01:05.000Z")))
    assert not feed.handler.new_catch_ups
    feed.send(frame("connected", 0, connection="conn-2"))
    assert [(c.symbol_native, c.since_ms) for c in feed.handler.new_catch_ups] == [("BTC-USD", 1724371260000)]
    [gap] = [r for r in feed.records if getattr(r, "kind", None) == "message_gap"]
    assert orjson.loads(gap.detail)["missing"] == [[2, 2]]
    # The new connection counts its own ids: its updates declare nothing more.
    feed.handler.new_catch_ups.clear()
    feed.send(trades_update(4, trade("t3", at="2024-08-23T00:01:09.000Z"), connection="conn-2"))
    assert not feed.handler.new_catch_ups

def test_settled_funding_from_a_real_body_is_polled_hourly_and_published_once():
    venue = DydxV4()
    [poll] = venue.polls(REST, ["BTC-USD"])
    assert (poll.url, poll.interval_s) == (f"{REST}/v4/historicalFunding/BTC-USD?limit=100", 3600.0)
    body = orjson.loads((FIXTURES / "historicalFunding_rest.json").read_bytes())
    [settled] = venue.map_rest(poll.url, body, TS)
    assert (settled.rate, settled.index_price, settled.is_realised, settled.interval_hours, settled.ts_exchange,
            settled.next_funding_time) == ("0", "116302.62419", True, 1, 1753441200013, 1753441200013)
    with pytest.raises(SkipMessage, match="no settlement since the last page"):
        venue.map_rest(poll.url, body, TS)
    restarted = DydxV4()         # a restart found the settlement durable: the next poll repeats nothing
    restarted.known_records([settled])
    with pytest.raises(SkipMessage, match="no settlement since the last page"):
        restarted.map_rest(poll.url, body, TS)
    later = {"historicalFunding": [
        {**body["historicalFunding"][0], "rate": "0.0000031", "effectiveAt": "2025-07-25T12:00:00.009Z",
         "effectiveAtHeight": "44868790"}, *body["historicalFunding"]]}
    assert [f.rate for f in venue.map_rest(poll.url, later, TS)] == ["0.0000031"]
    with pytest.raises(MalformedMessage, match="another market"):
        venue.map_rest(f"{REST}/v4/historicalFunding/ETH-USD?limit=100", later, TS)
