"""The generic book-sync state machine with Binance's rules, on the real recording and on edge cases."""

from __future__ import annotations

from collections import Counter

import orjson

from conftest import binance_recording
from ingest.book_sync import AWAITING_SNAPSHOT, SYNCED, BookSync
from ingest.feed import FeedHandler
from ingest.recordings import read_recordings
from ingest.records import BookDelta, BookSnapshot
from ingest.venues.binance import BinanceSyncRules
from ingest.venues.binance_usdm import BinanceUsdm
from transforms.order_book import OrderBook


def delta(U, u, pu, bids=(), asks=(), symbol="BTC-USDT-PERP"):
    return BookDelta(exchange="binance-usdm", symbol=symbol, symbol_native="BTCUSDT", ts_exchange=1, ts_recv=1,
                     bids=[list(b) for b in bids], asks=[list(a) for a in asks], first_seq=U, last_seq=u, prev_seq=pu)


def snapshot(seq, bids, asks, symbol="BTC-USDT-PERP"):
    return BookSnapshot(exchange="binance-usdm", symbol=symbol, symbol_native="BTCUSDT", ts_exchange=1, ts_recv=1,
                        bids=[list(b) for b in bids], asks=[list(a) for a in asks], seq=seq, reason="sync")


def replay_books(messages):
    """Run recorded messages through the feed handler; return (handler, emitted records)."""
    emitted = []
    handler = FeedHandler(BinanceUsdm(), emitted.append)
    for m in messages:
        if m.kind == "ws":
            handler.on_ws(m.payload, m.ts_recv)
        elif m.kind == "rest":
            handler.on_rest(m.source, m.payload, m.ts_recv)
    return handler, emitted


def brute_force_books(messages) -> dict[str, OrderBook]:
    """Independent reconstruction: each symbol's REST snapshot, then every diff with u >= lastUpdateId."""
    snaps, diffs = {}, []
    for m in messages:
        body = orjson.loads(m.payload) if m.kind != "meta" else None
        if m.kind == "rest" and "depth" in m.source:
            symbol = m.source.split("symbol=")[1].split("&")[0]
            snaps[symbol] = body
        elif m.kind == "ws" and body["data"].get("e") == "depthUpdate":
            diffs.append(body["data"])
    books = {}
    for symbol, snap in snaps.items():
        book = OrderBook.from_levels(snap["bids"], snap["asks"])
        for d in diffs:
            if d["s"] == symbol and d["u"] >= snap["lastUpdateId"]:
                book.apply(d["b"], d["a"])
        books[symbol] = book
    return books


def test_real_recording_syncs_without_gaps_and_matches_brute_force():
    messages = list(read_recordings(binance_recording(), BinanceUsdm()))
    handler, emitted = replay_books(messages)
    counts = handler.book_sync.counts
    assert counts["gaps"] == 0 and counts["crossed"] == 0
    assert counts["applied"] == 752 and counts["dropped_stale"] == 12 and counts["snapshots"] == 4
    assert handler.book_sync.pending() == 0
    expected = brute_force_books(messages)
    assert set(expected) == {"SUSHIUSDT", "AKROUSDT", "KEEPUSDT", "CTKUSDT"}
    for state in handler.book_sync.symbols.values():
        assert state.phase == SYNCED
        native = state.symbol.replace("-PERP", "").replace("-", "")
        assert state.book == expected[native]
        assert not state.book.is_crossed() and len(state.book.bids) > 100
    # Emitted order per symbol: its snapshot first, then its deltas chained by pu == previous u.
    by_symbol: dict[str, list] = {}
    for r in emitted:
        if r.record_type.startswith("book_"):
            by_symbol.setdefault(r.symbol, []).append(r)
    for records in by_symbol.values():
        assert isinstance(records[0], BookSnapshot) and records[0].reason == "sync"
        deltas = [r for r in records if r.record_type == "book_delta"]
        assert deltas[0].first_seq <= records[0].seq <= deltas[0].last_seq
        assert all(b.prev_seq == a.last_seq for a, b in zip(deltas, deltas[1:]))


def test_a_gap_resyncs_only_that_symbol():
    messages = list(read_recordings(binance_recording(), BinanceUsdm()))
    # Drop one SUSHI diff well after its book synced.
    sushi = [i for i, m in enumerate(messages) if m.kind == "ws" and b'"SUSHIUSDT","U"' in m.payload]
    dropped = sushi[len(sushi) // 2]
    handler, emitted = replay_books(messages[:dropped] + messages[dropped + 1:])
    gaps = [r for r in emitted if r.record_type == "feed_event"]
    assert [g.symbol for g in gaps] == ["SUSHI-USDT-PERP"]
    detail = orjson.loads(gaps[0].detail)
    assert detail["reason"] == "sequence break" and detail["prev_seq"] != detail["previous_last_seq"]
    states = handler.book_sync.symbols
    assert states["SUSHI-USDT-PERP"].phase == AWAITING_SNAPSHOT
    assert all(s.phase == SYNCED for sym, s in states.items() if sym != "SUSHI-USDT-PERP")
    # The other symbols applied exactly what they apply without the gap.
    _, baseline = replay_books(messages)
    applied = Counter(r.symbol for r in emitted if r.record_type == "book_delta")
    base_applied = Counter(r.symbol for r in baseline if r.record_type == "book_delta")
    for symbol in ("AKRO-USDT-PERP", "KEEP-USDT-PERP", "CTK-USDT-PERP"):
        assert applied[symbol] == base_applied[symbol]


def test_resync_after_gap_needs_a_bridging_snapshot():
    sync = BookSync(BinanceSyncRules(), "binance-usdm", periodic_ms=0)
    out = sync.on_delta(delta(5, 10, 4, bids=[("99", "1")]))
    assert out.need_snapshot and out.records == []          # buffered until a snapshot arrives
    assert not sync.on_delta(delta(11, 12, 10)).need_snapshot  # asked once only
    out = sync.on_snapshot(snapshot(9, bids=[("99", "2"), ("98", "1")], asks=[("101", "1")]))
    assert [type(r).__name__ for r in out.records] == ["BookSnapshot", "BookDelta", "BookDelta"]
    assert out.records[0].reason == "sync"
    assert sync.state("BTC-USDT-PERP").book.bids == {98.0: 1.0, 99.0: 1.0}
    out = sync.on_delta(delta(14, 15, 13))                   # 13..13 missing
    assert out.need_snapshot and [r.kind for r in out.records] == ["gap"]
    out = sync.on_delta(delta(16, 17, 15))
    assert out.records == [] and not out.need_snapshot
    out = sync.on_snapshot(snapshot(16, bids=[("99", "3")], asks=[("100", "1")]))
    assert [type(r).__name__ for r in out.records] == ["BookSnapshot", "FeedEvent", "BookDelta"]
    assert out.records[0].reason == "resync" and out.records[1].kind == "resync"
    assert sync.counts["dropped_stale"] == 1                 # 14..15 was older than snapshot 16


def test_stale_and_pu_bridging_rules():
    rules = BinanceSyncRules()
    assert rules.is_stale(delta(1, 9, 0), 10) and not rules.is_stale(delta(1, 10, 0), 10)
    assert rules.bridges(delta(8, 10, 7), 10)                # u == lastUpdateId must be applied on futures
    assert rules.bridges(delta(11, 12, 10), 10)              # live streams may continue with pu == lastUpdateId
    assert not rules.bridges(delta(12, 13, 11), 10)
    assert rules.continues(delta(5, 6, 4), delta(3, 4, 2)) and not rules.continues(delta(6, 7, 5), delta(3, 4, 2))


def test_crossed_book_is_a_gap():
    sync = BookSync(BinanceSyncRules(), "binance-usdm", periodic_ms=0)
    sync.on_snapshot(snapshot(10, bids=[("99", "1")], asks=[("101", "1")]))
    out = sync.on_delta(delta(10, 11, 9, bids=[("102", "1")]))
    assert [r.record_type for r in out.records] == ["book_delta", "feed_event"]
    assert orjson.loads(out.records[1].detail)["reason"] == "crossed book"
    assert out.need_snapshot and sync.counts["crossed"] == 1


def test_periodic_snapshots_equal_the_rebuilt_book_within_ten_percent():
    _, emitted = replay_books(read_recordings(binance_recording(), BinanceUsdm()))
    books: dict[str, OrderBook] = {}
    checked = 0
    last_second: dict[str, int] = {}
    for record in emitted:
        if record.record_type == "book_snapshot" and record.reason in ("sync", "resync"):
            books[record.symbol] = OrderBook.from_levels(record.bids, record.asks)
        elif record.record_type == "book_delta":
            books[record.symbol].apply(record.bids, record.asks)
        elif record.record_type == "book_snapshot" and record.reason == "periodic":
            book = books[record.symbol]
            mid = book.mid
            bids, asks = book.levels()
            expected_bids = [(p, q) for p, q in bids if p >= mid * 0.9 - 1e-9]
            expected_asks = [(p, q) for p, q in asks if p <= mid * 1.1 + 1e-9]
            assert [(float(p), float(q)) for p, q in record.bids] == expected_bids
            assert [(float(p), float(q)) for p, q in record.asks] == expected_asks
            second = record.ts_exchange // 1000
            assert last_second.get(record.symbol, -1) < second     # at most one per second
            last_second[record.symbol] = second
            checked += 1
    assert checked == 119
