"""The Bybit v5 linear venue on recorded frames (a Bybit historical order-book file, tardis-node's
and hftbacktest's samples) and on documented payloads; provenance in tests/fixtures/bybit/README.md.
Frames built inside a test are marked as constructed."""

from __future__ import annotations

from collections import Counter
from pathlib import Path

import orjson
import pytest

from ingest.book_sync import AWAITING_SNAPSHOT, SYNCED, BookSync
from ingest.feed import FeedHandler
from ingest.recordings import read_recordings
from ingest.records import (
    BookDelta,
    BookSnapshot,
    Funding,
    Instrument,
    Liquidation,
    OpenInterest,
    Trade,
)
from conftest import venue_recording
from ingest.venue import BookResync, MalformedMessage, SkipMessage, Venue
from ingest.venues.bybit_linear import BybitLinear, BybitSyncRules, normalize_symbol

FIXTURES = Path(__file__).parent / "fixtures" / "bybit"
OB500 = "ob500-XRPUSDT-2024-12-01.jsonl"
RECORDED = (OB500, "tardis-node-v5.jsonl", "hftbacktest-linear.jsonl")   # real frames, not redistributed
TS = 1_700_000_000_000_000_000


def fixture(name: str) -> Path:
    return venue_recording("bybit", name) if name in RECORDED else FIXTURES / name


def lines(name: str) -> list[bytes]:
    return fixture(name).read_bytes().splitlines()


def frames(name: str) -> list[dict]:
    return [orjson.loads(line) for line in lines(name)]


def documented(topic: str) -> dict:
    return next(f for f in frames("documented.jsonl") if f.get("topic") == topic)


def outcomes(venue: BybitLinear, messages) -> tuple[Counter, Counter, Counter]:
    records, skipped, dead = Counter(), Counter(), Counter()
    for message in messages:
        try:
            for record in venue.map_ws(message, TS):
                records[record.record_type] += 1
        except SkipMessage as skip:
            skipped[str(skip)] += 1
        except MalformedMessage as exc:
            dead[str(exc)] += 1
    return records, skipped, dead


def ticker(kind: str, ts: int, **data) -> dict:
    return {"topic": f"tickers.{data['symbol']}", "type": kind, "data": data, "cs": 1, "ts": ts}


def trade_frame(*items) -> dict:
    return {"topic": "publicTrade.BTCUSDT", "type": "snapshot", "ts": 1672304486868, "data": list(items)}


def trade_item(**changes) -> dict:
    return {"T": 1672304486865, "s": "BTCUSDT", "S": "Buy", "v": "0.001", "p": "16578.50", "L": "PlusTick",
            "i": "20f43950-d8dd-5b31-9112-a178eb6023af", "BT": False, **changes}


def test_the_venue_implements_the_whole_contract():
    assert issubclass(BybitLinear, Venue) and not BybitLinear.__abstractmethods__
    venue = BybitLinear()
    assert venue.exchange == "bybit-linear" and venue.BOOK_RESYNC is BookResync.RESUBSCRIBE
    assert (venue.TRADE_STREAM, venue.BOOK_STREAM) == ("publicTrade", "orderbook.50")
    assert set(venue.SILENCE_LIMIT_S) == {"orderbook.50", "publicTrade", "tickers", "allLiquidation"}
    assert venue.SILENCE_LIMIT_S["allLiquidation"] is None
    assert venue.trade_sequence(venue.map_ws(documented("publicTrade.BTCUSDT"), TS)[0]) is None
    assert venue.trades_url(venue.default_rest_url, "BTCUSDT", 1) is None
    assert venue.open_interest_url(venue.default_rest_url, "BTCUSDT") is None


def test_symbol_normalization():
    assert normalize_symbol("BTCUSDT") == "BTC-USDT-PERP"
    assert normalize_symbol("1000PEPEUSDT") == "1000PEPE-USDT-PERP"
    assert normalize_symbol("BTCPERP") == "BTC-USDC-PERP"
    assert normalize_symbol("ETHUSDC") == "ETH-USDC-PERP"
    assert normalize_symbol("PERPUSDT") == "PERP-USDT-PERP"
    assert normalize_symbol("BTCUSDT-26SEP25") == "BTC-USDT-250926"
    assert normalize_symbol("BTC-26DEC25") == "BTC-USDC-251226"
    assert normalize_symbol("btcusdt") == "BTC-USDT-PERP"
    for inverse_or_bad in ("BTCUSD", "BTCUSDU23", "USDT", "BTC-30FOO25", "BTC-2025", "-26DEC25"):
        with pytest.raises(MalformedMessage):
            normalize_symbol(inverse_or_bad)


@pytest.mark.parametrize("name, records, skipped, dead", [
    (OB500, {"book_snapshot": 1, "book_delta": 49}, {}, {}),
    ("tardis-node-v5.jsonl",
     {"trade": 1, "book_snapshot": 2, "book_delta": 3, "funding": 1, "open_interest": 1, "liquidation": 2}, {},
     {"symbol 'BTCUSD' is not a Bybit linear symbol (USDT, USDC or PERP suffix)": 3,
      "symbol 'BTCUSDU23' is not a Bybit linear symbol (USDT, USDC or PERP suffix)": 2,
      "symbol 'XRPUSD' is not a Bybit linear symbol (USDT, USDC or PERP suffix)": 1}),
    ("hftbacktest-linear.jsonl", {"book_snapshot": 1, "trade": 1},
     {"orderbook depth other than the one feeding the symbol's book": 1}, {}),
    ("documented.jsonl", {"trade": 1, "book_snapshot": 1, "funding": 1, "open_interest": 1, "liquidation": 2},
     {"subscribe reply": 1, "pong": 2},
     {"subscribe refused: 'error:handler not found,topic:liquidation.BTCUSDT'": 1}),
])
def test_every_fixture_frame_is_mapped_skipped_or_dead_lettered(name, records, skipped, dead):
    messages = frames(name)
    mapped, skips, dead_letters = outcomes(BybitLinear(), messages)
    assert (dict(mapped), dict(skips), dict(dead_letters)) == (records, skipped, dead)


@pytest.mark.parametrize("name, mapped, skipped, dead", [
    (OB500, 50, 0, 0), ("tardis-node-v5.jsonl", 9, 0, 6), ("hftbacktest-linear.jsonl", 2, 1, 0),
    ("documented.jsonl", 5, 3, 1),
])
def test_feed_handler_accounts_for_every_fixture_message(name, mapped, skipped, dead):
    emitted = []
    handler = FeedHandler(BybitLinear(), emitted.append)
    for line in lines(name):
        handler.on_ws(line, TS)
    stats = handler.stats
    assert stats.messages == stats.accounted == len(lines(name)) == mapped + skipped + dead
    assert (stats.mapped, sum(stats.skipped.values()), sum(stats.dead_letters.values())) == (mapped, skipped, dead)
    assert sum(1 for r in emitted if r.record_type == "dead_letter") == dead


def test_book_frames_keep_u_as_the_sequence_and_cts_as_the_time():
    venue = BybitLinear()
    first, second = frames(OB500)[:2]
    [snapshot] = venue.map_ws(first, TS)
    assert isinstance(snapshot, BookSnapshot)
    assert (snapshot.symbol, snapshot.symbol_native) == ("XRP-USDT-PERP", "XRPUSDT")
    assert (snapshot.seq, snapshot.reason, snapshot.ts_exchange) == (20254869, "venue", 1733011200589)
    assert (len(snapshot.bids), len(snapshot.asks)) == (500, 500)
    assert snapshot.bids[0] == ["1.9531", "6203"] and snapshot.asks[0] == first["data"]["a"][0]
    [delta] = venue.map_ws(second, TS)
    assert isinstance(delta, BookDelta)
    assert (delta.first_seq, delta.last_seq, delta.prev_seq, delta.ts_exchange) == (20254870, 20254870, None,
                                                                                   1733011200691)
    assert (len(delta.bids), len(delta.asks)) == (13, 22)
    # Older frames have no cts: the gateway time stands in.
    [old] = venue.map_ws(frames("tardis-node-v5.jsonl")[2], TS)
    assert (old.seq, old.ts_exchange) == (7003305, 1680673820717)


def test_recorded_ob500_file_syncs_to_the_expected_top_of_book():
    emitted = []
    handler = FeedHandler(BybitLinear(), emitted.append)
    for line in lines(OB500):
        assert handler.on_ws(line, TS) == []          # never asks for a resync
    sync = handler.book_sync
    assert sync.counts["applied"] == 49 and sync.counts["gaps"] == 0 and sync.pending() == 0
    state = sync.symbols["XRP-USDT-PERP"]
    assert state.phase == SYNCED and state.previous.last_seq == 20254918
    book = state.book
    assert (book.best_bid, book.bids[book.best_bid]) == (1.9537, 10605.0)
    assert (book.best_ask, book.asks[book.best_ask]) == (1.9538, 6702.0)
    assert (len(book.bids), len(book.asks)) == (500, 500)   # Bybit deletes what falls out of 500 levels
    assert not any(r.record_type == "feed_event" for r in emitted)


def test_historical_download_file_replays_as_a_recording():
    venue = BybitLinear()
    messages = list(read_recordings([fixture(OB500)], venue))
    assert [m.kind for m in messages] == ["ws"] * 50
    assert messages[0].ts_recv == 1733011200691 * 1_000_000 and messages[-1].ts_recv == 1733011205490 * 1_000_000
    handler = FeedHandler(venue, [].append)
    for m in messages:
        handler.on_ws(m.payload, m.ts_recv)
    assert handler.stats.records["book_delta"] == 49 and handler.book_sync.counts["gaps"] == 0


def test_sync_rule_vectors():
    rules = BybitSyncRules()

    def delta(u):
        return BookDelta(exchange="bybit-linear", symbol="BTC-USDT-PERP", symbol_native="BTCUSDT", ts_exchange=1,
                         ts_recv=1, bids=[], asks=[], first_seq=u, last_seq=u, prev_seq=None)

    assert rules.is_stale(delta(99), 100) and rules.is_stale(delta(100), 100)
    assert not rules.is_stale(delta(101), 100)
    assert rules.bridges(delta(101), 100)
    assert not rules.bridges(delta(100), 100) and not rules.bridges(delta(102), 100)
    assert rules.continues(delta(8), delta(7))
    assert not rules.continues(delta(9), delta(7)) and not rules.continues(delta(7), delta(7))
    assert rules.bridges(delta(2), 1)          # the first delta after a u = 1 restart snapshot


def test_a_lost_delta_is_a_gap_and_the_resubscribe_snapshot_supersedes_the_buffer():
    emitted = []
    handler = FeedHandler(BybitLinear(), emitted.append)
    recorded = lines(OB500)
    asked = [handler.on_ws(line, TS) for i, line in enumerate(recorded) if i != 10]   # u = 20254879 lost
    assert asked.count(["XRPUSDT"]) == 1 and asked.index(["XRPUSDT"]) == 10          # at u = 20254880
    gaps = [orjson.loads(r.detail) for r in emitted if r.record_type == "feed_event" and r.kind == "gap"]
    assert len(gaps) == 1 and (gaps[0]["previous_last_seq"], gaps[0]["first_seq"]) == (20254878, 20254880)
    sync = handler.book_sync
    assert sync.symbols["XRP-USDT-PERP"].phase == AWAITING_SNAPSHOT and sync.pending() == 39
    # Constructed: the snapshot Bybit pushes after the resubscribe, at the last buffered u.
    resubscribed = orjson.loads(recorded[0])
    resubscribed["data"]["u"] = 20254918
    assert handler.on_ws(orjson.dumps(resubscribed), TS) == []
    assert sync.counts["dropped_stale"] == 39 and sync.pending() == 0
    assert sync.symbols["XRP-USDT-PERP"].phase == SYNCED
    follow_on = {"topic": "orderbook.500.XRPUSDT", "type": "delta", "ts": 1733011205590,
                 "data": {"s": "XRPUSDT", "b": [["1.9530", "1"]], "a": [], "u": 20254919, "seq": 1}}
    applied = sync.counts["applied"]
    handler.on_ws(orjson.dumps(follow_on), TS)
    assert sync.counts["applied"] == applied + 1 and sync.counts["gaps"] == 1


def test_a_u1_message_is_a_restart_snapshot_that_replaces_the_book():
    venue = BybitLinear()
    sync = BookSync(venue.rules, venue.exchange)
    for message in frames(OB500):
        for record in venue.map_ws(message, TS):
            (sync.on_snapshot if isinstance(record, BookSnapshot) else sync.on_delta)(record)
    # Constructed: after a service restart Bybit numbers from 1 again, even on a "delta".
    restart = {"topic": "orderbook.500.XRPUSDT", "type": "delta", "ts": 1733011300000, "cts": 1733011299999,
               "data": {"s": "XRPUSDT", "b": [["1.9000", "5"]], "a": [["1.9100", "7"]], "u": 1, "seq": 2}}
    [snapshot] = venue.map_ws(restart, TS)
    assert isinstance(snapshot, BookSnapshot) and (snapshot.seq, snapshot.reason) == (1, "venue")
    sync.on_snapshot(snapshot)
    after = dict(restart, data={"s": "XRPUSDT", "b": [["1.9050", "2"]], "a": [], "u": 2, "seq": 3})
    [delta] = venue.map_ws(after, TS)
    out = sync.on_delta(delta)
    assert delta in out.records and not out.need_snapshot
    book = sync.symbols["XRP-USDT-PERP"].book
    assert (book.best_bid, book.best_ask, len(book.bids), len(book.asks)) == (1.905, 1.91, 2, 1)


def test_a_level1_snapshot_repeated_with_the_same_u_keeps_the_book_synced():
    venue = BybitLinear()
    sync = BookSync(venue.rules, venue.exchange)
    snapshot_frame, delta_frame = frames("tardis-node-v5.jsonl")[2:4]      # orderbook.1 u 7003305, 7003306
    for _ in range(2):   # the 3-second repeat of an unchanged level-1 book
        [snapshot] = venue.map_ws(snapshot_frame, TS)
        sync.on_snapshot(snapshot)
    [delta] = venue.map_ws(delta_frame, TS)
    out = sync.on_delta(delta)
    assert delta in out.records and sync.counts["gaps"] == 0 and sync.counts["snapshots"] == 2
    book = sync.symbols["BTC-USDT-PERP"].book
    assert (book.best_bid, book.bids[book.best_bid], book.best_ask) == (28552.0, 0.012, 28552.1)


def test_tickers_snapshot_and_deltas_merge_per_symbol():
    venue = BybitLinear()
    funding, oi = venue.map_ws(documented("tickers.BTCUSDT"), TS)
    assert isinstance(funding, Funding) and isinstance(oi, OpenInterest)
    assert (funding.symbol, funding.ts_exchange, funding.is_realised) == ("BTC-USDT-PERP", 1673272861686, False)
    assert (funding.rate, funding.interval_hours, funding.next_funding_time) == ("-0.000212", 8, 1673280000000)
    assert (funding.mark_price, funding.index_price) == ("17217.33", "17227.36")
    # openInterest 68744.761 counts both sides: one side is exactly half.
    assert (oi.open_interest, oi.open_interest_usd, oi.qty_unit) == ("34372.3805", "591800617.955", "base")

    # Constructed deltas, as Bybit sends them: only what changed.
    [rate_only] = venue.map_ws(ticker("delta", 1673272861786, symbol="BTCUSDT", fundingRate="0.0001"), TS)
    assert isinstance(rate_only, Funding)
    assert (rate_only.rate, rate_only.mark_price, rate_only.index_price) == ("0.0001", "17217.33", "17227.36")
    assert (rate_only.interval_hours, rate_only.next_funding_time, rate_only.ts_exchange) == (8, 1673280000000,
                                                                                             1673272861786)
    assert venue.map_ws(ticker("delta", 1673272861886, symbol="BTCUSDT", bid1Price="17215.00"), TS) == []
    assert venue.map_ws(ticker("delta", 1673272861896, symbol="BTCUSDT", fundingRate="0.0001"), TS) == []
    [more_oi] = venue.map_ws(ticker("delta", 1673272861986, symbol="BTCUSDT", openInterest="68744.763"), TS)
    assert isinstance(more_oi, OpenInterest)
    assert (more_oi.open_interest, more_oi.open_interest_usd) == ("34372.3815", "591800617.955")
    # A new snapshot (a resubscribe) replaces the state: what it lacks is gone.
    [snap_funding] = venue.map_ws(ticker("snapshot", 1673272862000, symbol="BTCUSDT", markPrice="17218.00"), TS)
    assert (snap_funding.rate, snap_funding.mark_price, snap_funding.index_price) == (None, "17218.00", None)


def test_tickers_delta_before_its_snapshot_is_skipped():
    venue = BybitLinear()
    with pytest.raises(SkipMessage, match="before the symbol's snapshot"):
        venue.map_ws(ticker("delta", 1, symbol="ETHUSDT", fundingRate="0.0001"), TS)
    venue.map_ws(documented("tickers.BTCUSDT"), TS)   # another symbol's snapshot does not count
    with pytest.raises(SkipMessage, match="before the symbol's snapshot"):
        venue.map_ws(ticker("delta", 2, symbol="ETHUSDT", fundingRate="0.0001"), TS)


def test_single_open_interest_is_preferred_over_halving():
    # Constructed: a ticker carrying both figures, one side deliberately not exactly half of the total.
    venue = BybitLinear()
    records = venue.map_ws(ticker("snapshot", 1, symbol="BTCUSDT", markPrice="63560.80",
                                  openInterest="59972.256", openInterestValue="3811884569.16",
                                  singleOpenInterest="29986.100", singleOpenInterestValue="1905940000.00"), TS)
    [oi] = [r for r in records if isinstance(r, OpenInterest)]
    assert (oi.open_interest, oi.open_interest_usd) == ("29986.100", "1905940000.00")
    # A delta of the two-sided total alone leaves the one side, hence no record.
    assert venue.map_ws(ticker("delta", 2, symbol="BTCUSDT", openInterest="59972.300"), TS) == []
    [changed] = venue.map_ws(ticker("delta", 3, symbol="BTCUSDT", singleOpenInterest="29986.150"), TS)
    assert changed.open_interest == "29986.150"


def test_dated_future_ticker_carries_mark_and_index_without_funding():
    # Constructed: a USDT future's ticker, whose funding fields are "" (does not apply).
    [funding, oi] = BybitLinear().map_ws(ticker(
        "snapshot", 5, symbol="BTCUSDT-26SEP25", markPrice="110500.50", indexPrice="109378.90", fundingRate="",
        nextFundingTime="", openInterest="120.5", openInterestValue="13315335.25"), TS)
    assert funding.symbol == "BTC-USDT-250926"
    assert (funding.rate, funding.interval_hours, funding.next_funding_time) == (None, None, None)
    assert (funding.mark_price, funding.index_price) == ("110500.50", "109378.90")
    assert (oi.open_interest, oi.open_interest_usd) == ("60.25", "6657667.625")


def test_funding_interval_falls_back_to_the_instrument_list():
    recorded = frames("tardis-node-v5.jsonl")[10]    # 2023 tickers.BTCUSDT: no fundingIntervalHour yet
    assert "fundingIntervalHour" not in recorded["data"]
    [funding, oi] = BybitLinear().map_ws(recorded, TS)
    assert (funding.rate, funding.interval_hours, funding.next_funding_time) == ("0.0001", None, 1680681600000)
    assert (oi.open_interest, oi.open_interest_usd) == ("26387.264", "753430535.41")
    venue = BybitLinear()
    venue.apply_reference("instruments", orjson.loads((FIXTURES / "instruments-info.json").read_bytes()))
    [funding, _] = venue.map_ws(recorded, TS)
    assert funding.interval_hours == 8


@pytest.mark.parametrize("key, value", [
    ("markPrice", "nan"), ("markPrice", "0"), ("fundingRate", "1e-4"), ("openInterest", "-5"),
    ("nextFundingTime", "soon"), ("fundingIntervalHour", "0"), ("indexPrice", 17227.36),
])
def test_a_hostile_ticker_value_is_dead_lettered_and_leaves_the_state(key, value):
    venue = BybitLinear()
    venue.map_ws(documented("tickers.BTCUSDT"), TS)
    with pytest.raises(MalformedMessage, match=key):
        venue.map_ws(ticker("delta", 2, symbol="BTCUSDT", **{key: value}), TS)
    [funding] = venue.map_ws(ticker("delta", 3, symbol="BTCUSDT", fundingRate="0.0002"), TS)
    assert (funding.mark_price, funding.index_price, funding.next_funding_time) == ("17217.33", "17227.36",
                                                                                   1673280000000)


def test_liquidation_side_is_the_position_side():
    venue = BybitLinear()
    [long_liquidated] = venue.map_ws(documented("allLiquidation.KAITOUSDT"), TS)    # S = Buy
    assert isinstance(long_liquidated, Liquidation)
    assert (long_liquidated.order_side, long_liquidated.liquidated_position) == ("sell", "long")
    assert (long_liquidated.price, long_liquidated.qty, long_liquidated.qty_unit) == ("1.7531", "43", "base")
    assert (long_liquidated.avg_price, long_liquidated.order_status, long_liquidated.is_sampled) == (None, None, False)
    assert (long_liquidated.symbol, long_liquidated.ts_exchange) == ("KAITO-USDT-PERP", 1740480189987)
    [short_liquidated] = venue.map_ws(frames("tardis-node-v5.jsonl")[14], TS)       # recorded, S = Sell
    assert (short_liquidated.order_side, short_liquidated.liquidated_position) == ("buy", "short")
    assert (short_liquidated.symbol, short_liquidated.price, short_liquidated.qty) == ("PIPPIN-USDT-PERP",
                                                                                      "0.02456", "2846")
    [retired_topic] = venue.map_ws(frames("tardis-node-v5.jsonl")[11], TS)         # liquidation.GALAUSDT, Buy
    assert (retired_topic.order_side, retired_topic.liquidated_position) == ("sell", "long")
    assert (retired_topic.ts_exchange, retired_topic.price, retired_topic.qty) == (1673251091822, "0.03803", "1637")
    assert retired_topic.is_sampled     # the retired topic pushed one order per symbol per second


def test_all_liquidation_list_maps_every_entry():
    # Constructed: two liquidations in one 500 ms push, opposite sides.
    message = {"topic": "allLiquidation.BTCUSDT", "type": "snapshot", "ts": 1741450605553, "data": [
        {"T": 1741450605236, "s": "BTCUSDT", "S": "Buy", "v": "0.001", "p": "85823.60"},
        {"T": 1741450605301, "s": "BTCUSDT", "S": "Sell", "v": "0.250", "p": "85901.10"}]}
    liquidations = BybitLinear().map_ws(message, TS)
    assert [(x.liquidated_position, x.order_side, x.qty) for x in liquidations] == [
        ("long", "sell", "0.001"), ("short", "buy", "0.250")]


def test_recorded_public_trade_fields():
    [trade] = BybitLinear().map_ws(frames("hftbacktest-linear.jsonl")[1], TS)
    assert isinstance(trade, Trade)
    assert (trade.symbol, trade.trade_id, trade.price, trade.qty) == (
        "BTC-USDT-PERP", "2a74ac78-691c-5b54-9dbe-5aafe8364627", "109378.90", "0.020")
    assert (trade.side, trade.qty_unit, trade.is_aggregated, trade.trade_type) == ("buy", "base", False, "MARKET")
    assert (trade.ts_exchange, trade.ts_recv, trade.first_trade_id) == (1758841135823, TS, None)


def test_public_trade_list_of_several_trades():
    # Constructed from the documented trade: one message, three fills, one block trade and one RPI fill.
    message = trade_frame(trade_item(),
                          trade_item(S="Sell", v="0.250", i="8c931d9a-b703-5c34-9aeb-860867cf1f66", BT=True),
                          trade_item(p="16578.00", i="307fb58f-09dc-5121-b24f-eb2f81873445", RPI=True))
    trades = BybitLinear().map_ws(message, TS)
    assert [(t.side, t.qty, t.price, t.trade_type) for t in trades] == [
        ("buy", "0.001", "16578.50", "MARKET"), ("sell", "0.250", "16578.50", "BLOCK"),
        ("buy", "0.001", "16578.00", "RPI")]
    assert len({t.trade_id for t in trades}) == 3


@pytest.mark.parametrize("changes, complaint", [
    ({"v": "-0.001"}, "'v'"), ({"p": "1_000"}, "'p'"), ({"v": " 7 "}, "'v'"), ({"p": "0"}, "'p'"),
    ({"v": "0"}, "'v'"), ({"p": "1e3"}, "'p'"), ({"p": 16578.5}, "'p'"), ({"S": "BUY"}, "'S'"),
    ({"i": 12345}, "'i'"), ({"T": "1672304486865"}, "'T'"), ({"BT": "false"}, "'BT'"),
])
def test_hostile_trade_numbers_are_malformed(changes, complaint):
    with pytest.raises(MalformedMessage, match=complaint):
        BybitLinear().map_ws(trade_frame(trade_item(), trade_item(**changes)), TS)


@pytest.mark.parametrize("data, complaint", [
    ({"s": "BTCUSDT", "b": [["1_000", "1"]], "a": [], "u": 5}, "price"),
    ({"s": "BTCUSDT", "b": [["100", "-1"]], "a": [], "u": 5}, "quantity"),
    ({"s": "BTCUSDT", "b": [], "a": [[" 7 ", "1"]], "u": 5}, "price"),
    ({"s": "BTCUSDT", "b": [], "a": [], "u": 0}, "'u'"),
    ({"s": "BTCUSDT", "b": [], "a": [], "u": "5"}, "'u'"),
    ({"s": "BTCUSDT", "b": [], "u": 5}, "'a'"),
])
def test_hostile_book_frames_are_malformed(data, complaint):
    with pytest.raises(MalformedMessage, match=complaint):
        BybitLinear().map_ws({"topic": "orderbook.50.BTCUSDT", "type": "delta", "ts": 1, "data": data}, TS)


def test_hostile_liquidation_is_malformed():
    message = {"topic": "allLiquidation.BTCUSDT", "type": "snapshot", "ts": 1,
               "data": [{"T": 1, "s": "BTCUSDT", "S": "Buy", "v": "-2", "p": "85000"}]}
    with pytest.raises(MalformedMessage, match="'v'"):
        BybitLinear().map_ws(message, TS)
    with pytest.raises(MalformedMessage, match="non-empty list"):
        BybitLinear().map_ws(dict(message, data=[]), TS)


def test_control_frames():
    venue = BybitLinear()
    ack, pong, other_pong, refused = frames("documented.jsonl")[:4]
    with pytest.raises(SkipMessage, match="^subscribe reply$"):
        venue.map_ws(ack, TS)
    for reply in (pong, other_pong):
        with pytest.raises(SkipMessage, match="^pong$"):
            venue.map_ws(reply, TS)
    with pytest.raises(SkipMessage, match="^unsubscribe reply$"):
        venue.map_ws({"success": True, "ret_msg": "", "conn_id": "x", "req_id": "", "op": "unsubscribe"}, TS)
    with pytest.raises(MalformedMessage, match="subscribe refused: .*handler not found"):
        venue.map_ws(refused, TS)
    with pytest.raises(SkipMessage, match="^kline.1: topic not collected$"):
        venue.map_ws({"topic": "kline.1.BTCUSDT", "type": "snapshot", "ts": 1, "data": []}, TS)
    with pytest.raises(SkipMessage, match="^orderbook.rpi: topic not collected$"):
        venue.map_ws({"topic": "orderbook.rpi.BTCUSDT", "type": "snapshot", "ts": 1, "data": {}}, TS)
    with pytest.raises(MalformedMessage, match="neither"):
        venue.map_ws({"ret_msg": "?"}, TS)
    with pytest.raises(MalformedMessage, match="topic"):
        venue.map_ws({"topic": 7, "data": {}}, TS)
    with pytest.raises(MalformedMessage, match="JSON object"):
        venue.map_ws([1, 2], TS)


def test_recognizes_bybit_envelopes_only():
    venue = BybitLinear()
    for name in (OB500, "tardis-node-v5.jsonl", "hftbacktest-linear.jsonl", "documented.jsonl"):
        assert all(venue.recognizes(m) for m in frames(name)), name
    binance = {"stream": "ctkusdt@aggTrade", "data": {"e": "aggTrade", "E": 1626992741575, "a": 16599292,
                                                      "s": "CTKUSDT", "p": "1.01100", "q": "10", "T": 1626992741421}}
    okx = {"arg": {"channel": "books", "instId": "BTC-USDT-SWAP"},
           "data": [{"asks": [["8476.98", "415", "0", "13"]], "bids": [], "ts": "1597026383085", "seqId": 1}]}
    okx_ack = {"event": "subscribe", "arg": {"channel": "books", "instId": "BTC-USDT-SWAP"}, "connId": "a4d3ae55"}
    kucoin = {"type": "message", "topic": "/contractMarket/level2:XBTUSDM", "subject": "level2", "data": {}}
    hyperliquid = {"channel": "l2Book", "data": {"coin": "BTC", "levels": [[], []], "time": 1}}
    for other in (binance, okx, okx_ack, kucoin, hyperliquid, [1], "pong", {"op": "order", "data": []}):
        assert not venue.recognizes(other), other


def test_stream_helpers():
    venue = BybitLinear()
    assert venue.stream_kind("orderbook.50.BTCUSDT") == "orderbook.50"
    assert venue.stream_symbol("orderbook.50.BTCUSDT") == "BTCUSDT"
    assert (venue.stream_kind("publicTrade.BTCUSDT-26SEP25"), venue.stream_symbol("publicTrade.BTCUSDT-26SEP25")) \
        == ("publicTrade", "BTCUSDT-26SEP25")
    assert venue.stream_of(lines(OB500)[1].decode()) == "orderbook.500.XRPUSDT"
    # The recorded liquidation.GALAUSDT line has its topic after the data.
    assert venue.stream_of(lines("tardis-node-v5.jsonl")[11].decode()) == "liquidation.GALAUSDT"
    assert venue.stream_of('{"type": "delta", "topic": "tickers.BTCUSDT", "data": {}}') == "tickers.BTCUSDT"
    assert venue.stream_of(lines("documented.jsonl")[0].decode()) is None
    assert venue.message_time_ms(frames(OB500)[0]) == 1733011200691
    assert venue.message_time_ms(frames("documented.jsonl")[1]) is None   # a pong
    assert venue.message_time_ms({"ts": "1733011200691"}) is None


def test_one_connection_carries_a_symbols_four_topics():
    [connection] = BybitLinear().ws_connections("wss://stream.bybit.com/", ["BTCUSDT"])
    assert connection.url == "wss://stream.bybit.com/v5/public/linear"
    assert connection.streams == ("orderbook.50.BTCUSDT", "publicTrade.BTCUSDT", "tickers.BTCUSDT",
                                  "allLiquidation.BTCUSDT")
    expected = ('{"op":"subscribe","args":["orderbook.50.BTCUSDT","publicTrade.BTCUSDT",'
                '"tickers.BTCUSDT","allLiquidation.BTCUSDT"]}')
    assert connection.subscribe == (expected,)


def test_many_symbols_split_by_bybit_subscription_limits():
    symbols = [f"COIN{i:04d}USDT" for i in range(600)]
    connections = BybitLinear().ws_connections("wss://stream.bybit.com", symbols)
    # Each symbol's four topics take 109 characters of args: 192 symbols fit in 21,000.
    assert [len(c.streams) // 4 for c in connections] == [192, 192, 192, 24]
    assert [c.route for c in connections] == ["linear-1", "linear-2", "linear-3", "linear-4"]
    topics = [t for c in connections for t in c.streams]
    assert len(topics) == len(set(topics)) == 2400
    for connection in connections:
        assert len(orjson.dumps(list(connection.streams))) <= 21_000
        requests = [orjson.loads(frame) for frame in connection.subscribe]
        assert all(r["op"] == "subscribe" and 1 <= len(r["args"]) <= 10 for r in requests)
        assert tuple(t for r in requests for t in r["args"]) == connection.streams
        by_symbol = Counter(t.rpartition(".")[2] for t in connection.streams)
        assert set(by_symbol.values()) == {4}                           # no symbol split across connections


def test_resubscribe_frames_unsubscribe_first():
    assert BybitLinear().resubscribe_frames("orderbook.50.BTCUSDT") == (
        '{"op":"unsubscribe","args":["orderbook.50.BTCUSDT"]}', '{"op":"subscribe","args":["orderbook.50.BTCUSDT"]}')


def instruments_body() -> dict:
    """The documented instruments-info example plus constructed entries (see the fixture README)."""
    body = orjson.loads((FIXTURES / "instruments-info.json").read_bytes())
    btc = body["result"]["list"][0]
    body["result"]["list"] += [
        {**btc, "symbol": "BTCPERP", "quoteCoin": "USDC", "settleCoin": "USDC",
         "priceFilter": {"tickSize": "0.50"}, "fundingInterval": 240},
        {**btc, "symbol": "BTCUSDT-26SEP25", "contractType": "LinearFutures", "deliveryTime": "1758873600000",
         "fundingInterval": 0},
        {**btc, "symbol": "BTC-26DEC25", "contractType": "LinearFutures", "quoteCoin": "USDC", "settleCoin": "USDC",
         "deliveryTime": "1766736000000", "fundingInterval": 0},
        {**btc, "symbol": "BTCUSD", "contractType": "InversePerpetual"},
        {**btc, "symbol": "ETHUSDT", "status": "Closed", "baseCoin": "ETH"},
    ]
    return body


def test_instruments_from_instruments_info():
    venue = BybitLinear()
    url = venue.reference_urls("https://api.bybit.com/")["instruments"]
    assert url == "https://api.bybit.com/v5/market/instruments-info?category=linear&limit=1000"
    venue.apply_reference("instruments", instruments_body())
    assert venue.tradable_symbols() == {"BTCUSDT", "BTCPERP"}
    by_symbol = {i.symbol_native: i for i in venue.instruments(TS)}
    assert sorted(by_symbol) == ["BIOUSDT", "BTC-26DEC25", "BTCPERP", "BTCUSDT", "BTCUSDT-26SEP25", "ETHUSDT"]
    btc = by_symbol["BTCUSDT"]
    assert isinstance(btc, Instrument)
    assert (btc.symbol, btc.market_type, btc.margin, btc.status) == ("BTC-USDT-PERP", "perpetual", "linear", "Trading")
    assert (btc.base_asset, btc.quote_asset, btc.settle_asset) == ("BTC", "USDT", "USDT")
    assert (btc.qty_unit, btc.contract_size, btc.contract_size_unit) == ("base", None, None)
    assert (btc.tick_size, btc.lot_size, btc.funding_interval_hours, btc.expiry) == ("0.10", "0.001", 8, None)
    assert (btc.ts_exchange, btc.ts_recv) == (1735809771618, TS)
    assert by_symbol["BIOUSDT"].status == "PreLaunch" and by_symbol["BIOUSDT"].lot_size == "1"
    usdc = by_symbol["BTCPERP"]
    assert (usdc.symbol, usdc.settle_asset, usdc.tick_size, usdc.funding_interval_hours) == (
        "BTC-USDC-PERP", "USDC", "0.50", 4)
    future = by_symbol["BTCUSDT-26SEP25"]
    assert (future.symbol, future.market_type, future.expiry, future.funding_interval_hours) == (
        "BTC-USDT-250926", "future", 1758873600000, None)
    assert by_symbol["BTC-26DEC25"].symbol == "BTC-USDC-251226"
    assert [r.symbol_native for r in venue.map_rest(url, instruments_body(), TS)] == list(by_symbol)
    odd = instruments_body()
    odd["result"]["list"][0]["fundingInterval"] = 45    # not whole hours: unknown, never rounded
    venue.apply_reference("instruments", odd)
    assert venue.instruments(TS)[0].funding_interval_hours is None


@pytest.mark.parametrize("change, complaint", [
    (lambda body: body.update(retCode=10001, retMsg="params error"), "retCode 10001"),
    (lambda body: body["result"].update(list={}), "list"),
    (lambda body: body["result"]["list"][0]["priceFilter"].update(tickSize="0"), "tickSize"),
    (lambda body: body["result"]["list"][3].update(deliveryTime="0"), "deliveryTime"),
])
def test_a_broken_instrument_list_is_malformed(change, complaint):
    body = instruments_body()
    change(body)
    venue = BybitLinear()
    with pytest.raises(MalformedMessage, match=complaint):
        venue.map_rest("https://api.bybit.com/v5/market/instruments-info?category=linear", body, TS)


def test_other_rest_bodies_are_skipped():
    venue = BybitLinear()
    with pytest.raises(SkipMessage, match="1000-level"):
        venue.map_rest("https://api.bybit.com/v5/market/orderbook?category=linear&symbol=BTCUSDT", {}, TS)
    with pytest.raises(SkipMessage, match="not collected"):
        venue.map_rest("https://api.bybit.com/v5/market/time", {}, TS)
