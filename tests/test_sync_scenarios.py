"""One table of book-sync scenarios, run against every venue's sequencing rules.

The state machine (``ingest.book_sync``) is shared; what differs per venue is how sequence numbers
chain (Binance U/u/pu, OKX seqId/prevSeqId with checksums, Bybit u + 1) and how a book is resynced
(REST snapshot, or a snapshot the venue pushes after a resubscribe). Each venue below says how its
n-th update after a snapshot numbered 100 carries its sequence fields; the scenarios are the same.
A venue that pushes whole books only (Hyperliquid) says ``SNAPSHOTS_ONLY``: the scenarios about
deltas do not apply to it, those about snapshots (replacing, crossed, resync) do.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import orjson
import pytest

from ingest.book_sync import AWAITING_SNAPSHOT, SYNCED, BookSync
from ingest.records import BookDelta, BookSnapshot
from ingest.venue import BookResync
from ingest.venues import REGISTRY

SNAPSHOT_SEQ = 100
BIDS = [["99.0", "1"], ["98.0", "2"]]
ASKS = [["101.0", "1"], ["102.0", "2"]]


@dataclass(frozen=True)
class SeqDialect:
    """Sequence fields (first_seq, last_seq, prev_seq) of the venue's n-th update after the snapshot."""

    update: Callable[[int], tuple]
    stale: tuple                     # an update the snapshot already contains


def _binance(n: int) -> tuple:
    return SNAPSHOT_SEQ + 10 * (n - 1) + 1 if n > 1 else SNAPSHOT_SEQ - 3, SNAPSHOT_SEQ + 10 * n, SNAPSHOT_SEQ + 10 * (n - 1)


SNAPSHOTS_ONLY = None   # the venue sends no deltas: every book message is a whole book

DIALECTS = {
    "binance-usdm": SeqDialect(_binance, stale=(90, 97, 89)),
    "binance-coinm": SeqDialect(_binance, stale=(90, 97, 89)),
    # OKX: seqIds jump (10 -> 15 in its docs), prevSeqId names the previous one.
    "okx-swap": SeqDialect(lambda n: (None, SNAPSHOT_SEQ + 5 * n, SNAPSHOT_SEQ + 5 * (n - 1)), stale=(None, 95, 90)),
    "bybit-linear": SeqDialect(lambda n: (SNAPSHOT_SEQ + n, SNAPSHOT_SEQ + n, None), stale=(99, 99, None)),
    # dYdX: message_ids count the whole connection (other channels in between); prev_seq is the
    # book's previous message_id on an unbroken connection (perpflow's, see ingest.venues.dydx_v4).
    "dydx-v4": SeqDialect(lambda n: (SNAPSHOT_SEQ + 3 * n, SNAPSHOT_SEQ + 3 * n, SNAPSHOT_SEQ + 3 * (n - 1)),
                          stale=(95, 95, 92)),
    # Hyperliquid: every l2Book push is a whole book without a sequence number.
    "hyperliquid": SNAPSHOTS_ONLY,
}
VENUES = [name for name in REGISTRY if name in DIALECTS]
DELTA_VENUES = [name for name in VENUES if DIALECTS[name] is not SNAPSHOTS_ONLY]


def test_every_registered_venue_is_in_the_table():
    with_books = {name for name, cls in REGISTRY.items() if cls.HAS_ORDER_BOOK}
    assert with_books <= set(DIALECTS), "add the new venue's sequence dialect to DIALECTS"
    # A venue without an order book (GMX trades against pools) has no book sync to test.
    assert not set(DIALECTS) & (set(REGISTRY) - with_books)


def _delta(venue, seqs: tuple, bids=(), asks=(), checksum=None) -> BookDelta:
    first, last, prev = seqs
    return BookDelta(exchange=venue.exchange, symbol="BTC-USDT-PERP", symbol_native="BTCUSDT", ts_exchange=1_000 + last,
                     ts_recv=0, bids=[list(b) for b in bids], asks=[list(a) for a in asks], first_seq=first,
                     last_seq=last, prev_seq=prev, checksum=checksum)


def _snapshot(venue, seq: int = SNAPSHOT_SEQ, bids=BIDS, asks=ASKS, checksum=None) -> BookSnapshot:
    pushed = venue.BOOK_RESYNC is BookResync.RESUBSCRIBE
    return BookSnapshot(exchange=venue.exchange, symbol="BTC-USDT-PERP", symbol_native="BTCUSDT", ts_exchange=1_000,
                        ts_recv=0, bids=[list(b) for b in bids], asks=[list(a) for a in asks], seq=seq,
                        reason="venue" if pushed else "sync", checksum=checksum)


@pytest.fixture(params=DELTA_VENUES)
def venue(request):
    """A venue whose books come as deltas (the delta scenarios)."""
    return REGISTRY[request.param]()


@pytest.fixture(params=VENUES)
def any_venue(request):
    """Every venue, snapshot-only ones included (the snapshot scenarios)."""
    return REGISTRY[request.param]()


def _run(venue, records) -> tuple[BookSync, list, list[bool]]:
    sync = BookSync(venue.rules, venue.exchange, periodic_ms=0)
    out, asked = [], []
    for record in records:
        result = sync.on_snapshot(record) if isinstance(record, BookSnapshot) else sync.on_delta(record)
        out += result.records
        asked.append(result.need_snapshot)
    return sync, out, asked


def _kinds(out) -> list[str]:
    return [getattr(r, "kind", r.record_type) for r in out]


def test_bridge_then_continue(venue):
    d = DIALECTS[venue.exchange]
    sync, out, _ = _run(venue, [_snapshot(venue), _delta(venue, d.update(1), bids=[["99.5", "3"]]),
                                _delta(venue, d.update(2), asks=[["101.0", "0"]])])
    st = sync.state("BTC-USDT-PERP")
    assert st.phase == SYNCED and sync.counts["applied"] == 2 and sync.counts["gaps"] == 0
    assert st.book.best_bid == 99.5 and st.book.best_ask == 102.0


def test_stale_update_buffered_before_the_snapshot_is_dropped(venue):
    d = DIALECTS[venue.exchange]
    sync, out, asked = _run(venue, [_delta(venue, d.stale, bids=[["50.0", "9"]]), _snapshot(venue),
                                    _delta(venue, d.update(1))])
    assert asked[0] is True                            # the first delta asks for a snapshot
    assert sync.counts["dropped_stale"] == 1 and sync.counts["applied"] == 1 and sync.counts["gaps"] == 0
    assert 50.0 not in sync.state("BTC-USDT-PERP").book.bids


def test_a_missing_update_is_a_gap_for_that_symbol_only(venue):
    d = DIALECTS[venue.exchange]
    other = _delta(venue, d.update(1))
    other.symbol = "ETH-USDT-PERP"
    eth_snapshot = _snapshot(venue)
    eth_snapshot.symbol = "ETH-USDT-PERP"
    sync, out, asked = _run(venue, [_snapshot(venue), eth_snapshot, other, _delta(venue, d.update(1)),
                                    _delta(venue, d.update(3))])
    assert asked[-1] is True and sync.counts["gaps"] == 1
    gap = [r for r in out if getattr(r, "kind", None) == "gap"][0]
    assert orjson.loads(gap.detail)["reason"] == "sequence break" and gap.symbol == "BTC-USDT-PERP"
    assert sync.state("BTC-USDT-PERP").phase == AWAITING_SNAPSHOT
    assert sync.state("ETH-USDT-PERP").phase == SYNCED


def test_a_crossed_book_is_a_gap_unless_the_venue_uncrosses_it(venue):
    """A crossed book is a gap, except on venues whose books cross in normal operation (dYdX): their
    ``uncross`` rule resolves it and the book stays synced (here the ask, older than the bid, goes)."""
    d = DIALECTS[venue.exchange]
    sync, out, asked = _run(venue, [_snapshot(venue), _delta(venue, d.update(1), bids=[["101.5", "1"]])])
    st = sync.state("BTC-USDT-PERP")
    if not hasattr(venue.rules, "uncross"):
        assert asked[-1] is True and sync.counts["crossed"] == 1
        assert st.phase == AWAITING_SNAPSHOT
        return
    assert asked[-1] is False and sync.counts["crossed"] == 0 and sync.counts["gaps"] == 0
    assert sync.counts["uncross_events"] == 1 and st.phase == SYNCED
    assert (st.book.best_bid, st.book.best_ask) == (101.5, 102.0)


def test_the_next_snapshot_resyncs_and_says_so(venue):
    """After a gap: Binance fetches a REST snapshot, OKX and Bybit resubscribe and the venue pushes
    one; either way the state machine takes the snapshot and continues from it."""
    d = DIALECTS[venue.exchange]
    sync, out, _ = _run(venue, [_snapshot(venue), _delta(venue, d.update(1)), _delta(venue, d.update(3)),
                                _snapshot(venue, seq=500, bids=[["90.0", "1"]], asks=[["91.0", "1"]]),
                                _delta(venue, tuple(None if f is None else f + 400 for f in d.update(1)))])
    assert _kinds(out).count("resync") == 1 and sync.counts["applied"] == 2
    st = sync.state("BTC-USDT-PERP")
    assert st.phase == SYNCED and st.book.best_bid == 90.0


def test_a_venue_snapshot_mid_stream_replaces_the_book(venue):
    """Bybit re-sends snapshots (level 1 every 3 s; after a service restart with u=1); OKX pushes
    one on every subscribe. The book is replaced, nothing of the old one survives."""
    d = DIALECTS[venue.exchange]
    sync, out, _ = _run(venue, [_snapshot(venue), _delta(venue, d.update(1), bids=[["97.0", "4"]]),
                                _snapshot(venue, seq=1, bids=[["95.0", "1"]], asks=[["96.0", "1"]])])
    book = sync.state("BTC-USDT-PERP").book
    assert set(book.bids) == {95.0} and set(book.asks) == {96.0} and sync.counts["gaps"] == 0


def test_pushed_snapshots_each_replace_the_whole_book(any_venue):
    """Hyperliquid pushes a whole book every few seconds; any venue's snapshot replaces the book."""
    sync, out, asked = _run(any_venue, [_snapshot(any_venue),
                                        _snapshot(any_venue, seq=101, bids=[["98.5", "2"]], asks=[["100.5", "3"]]),
                                        _snapshot(any_venue, seq=102, bids=[["97.0", "1"], ["96.0", "4"]],
                                                  asks=[["99.0", "1"]])])
    st = sync.state("BTC-USDT-PERP")
    assert st.phase == SYNCED and sync.counts["snapshots"] == 3 and sync.counts["gaps"] == 0 and not any(asked)
    assert st.book.bids == {97.0: 1.0, 96.0: 4.0} and st.book.asks == {99.0: 1.0}
    assert [r.record_type for r in out if r.record_type == "book_snapshot"] == ["book_snapshot"] * 3


def test_a_crossed_snapshot_is_a_gap_and_the_next_snapshot_resyncs(any_venue):
    """The only way a snapshot-only book goes wrong; for every venue the next snapshot (REST, or
    pushed after a resubscribe) ends the gap."""
    sync, out, asked = _run(any_venue, [_snapshot(any_venue),
                                        _snapshot(any_venue, seq=101, bids=[["102.0", "1"]], asks=[["101.0", "1"]]),
                                        _snapshot(any_venue, seq=102)])
    assert asked == [False, True, False] and sync.counts["crossed"] == 1 and sync.counts["gaps"] == 1
    assert _kinds(out)[-2:] == ["book_snapshot", "resync"]   # the snapshot after the gap says so
    gap = [r for r in out if getattr(r, "kind", None) == "gap"][0]
    assert orjson.loads(gap.detail)["reason"] == "crossed snapshot"
    st = sync.state("BTC-USDT-PERP")
    assert st.phase == SYNCED and (st.book.best_bid, st.book.best_ask) == (99.0, 101.0)


@pytest.mark.parametrize("name", [n for n in VENUES if hasattr(REGISTRY[n].rules, "checksum")])
def test_a_checksum_mismatch_is_a_gap_and_a_match_is_counted(name):
    venue = REGISTRY[name]()
    d = DIALECTS[name]
    good = venue.rules.checksum([["99.5", "3"], *BIDS], ASKS)
    sync, out, asked = _run(venue, [_snapshot(venue, checksum=venue.rules.checksum(BIDS, ASKS)),
                                    _delta(venue, d.update(1), bids=[["99.5", "3"]], checksum=good),
                                    _delta(venue, d.update(2), bids=[["99.6", "1"]], checksum=good)])
    assert sync.counts["checksums_verified"] == 2 and sync.counts["checksum_mismatches"] == 1
    assert asked[-1] is True
    assert orjson.loads([r for r in out if getattr(r, "kind", None) == "gap"][0].detail)["reason"] == "checksum mismatch"


def test_a_zero_checksum_is_not_checked():
    """OKX fixed ``checksum`` to 0 in 2026-06 (deprecated): 0 is no checksum, not a wrong one."""
    venue = REGISTRY["okx-swap"]()
    d = DIALECTS["okx-swap"]
    sync, _, _ = _run(venue, [_snapshot(venue, checksum=0), _delta(venue, d.update(1), bids=[["99.5", "3"]], checksum=0)])
    assert sync.counts["checksums_verified"] == 0 and sync.counts["checksum_mismatches"] == 0
    assert sync.counts["applied"] == 1
