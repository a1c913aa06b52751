"""One book-sync state machine for every venue; the venues differ only in their ``SyncRules``.

Per symbol the machine is either *awaiting a snapshot* (deltas are buffered) or *synced*
(each delta must continue the previous one). A snapshot, whether fetched over REST (Binance)
or pushed in-stream (Bybit, Hyperliquid), replaces the book and is emitted at once; buffered
deltas older than it are dropped, the first newer one must bridge it. A delta that does not
continue the chain, or a book that ends up crossed, emits a ``gap`` feed event and sends only
that symbol back to *awaiting a snapshot*: one broken symbol never resets the others
(cryptofeed's feed-wide reset loses every book on one gap).

While synced, the machine also emits a ``periodic`` snapshot of each book once per second of
exchange time (levels within ±10% of mid, the widest depth band), so depth analytics read
one compact book per second instead of replaying every delta.

Two optional rules serve venues whose books have no integrity check strong enough to rely on
(dYdX v4): ``uncross`` resolves a crossed book locally instead of treating it as a gap (the
venue's own rule decides which of the two crossing levels go), counted per snapshot record in
``BookSnapshot.uncrossed``; ``refresh_ms`` asks for a fresh snapshot that often while synced.

Everything here is pure: the caller (replay, live ingest) performs the snapshot fetches the
machine asks for and produces the records it returns.
"""

from __future__ import annotations

from collections import Counter, deque
from dataclasses import dataclass, field
from typing import Protocol

import orjson

from ingest.records import BookDelta, BookSnapshot, FeedEvent
from transforms.order_book import OrderBook


class SyncRules(Protocol):
    """A venue's sequencing rules, in terms of the normalized record's seq fields."""

    def is_stale(self, delta: BookDelta, snapshot_seq: int) -> bool:
        """The delta is fully contained in the snapshot: drop it."""

    def bridges(self, delta: BookDelta, snapshot_seq: int) -> bool:
        """The first delta applied after a snapshot connects to it."""

    def continues(self, delta: BookDelta, previous: BookDelta) -> bool:
        """The delta directly follows the previously applied one."""

    # Optional, for venues that checksum their books (OKX before 2026-06):
    # def checksum(self, bids: list, asks: list) -> int
    #     the venue's checksum of a book given best-first [price, qty] levels as the venue's own
    #     strings; compared with a record's non-zero ``checksum``, a mismatch is a gap.
    #
    # Optional, for venues whose books cross in normal operation (dYdX v4):
    # def uncross(self, bid: tuple, ask: tuple) -> tuple[float, float]
    #     given the crossing best bid and best ask as (price, qty, seq), ``seq`` being the
    #     ``seq``/``last_seq`` of the record that last set the level, the quantities the two keep
    #     (0 removes the level; at least one must go). Applied after a delta until the book no
    #     longer crosses, so a crossed book is not a gap (a crossed *snapshot* still is); each
    #     delta that needed it is one ``uncross_events``, and snapshot records carry the count
    #     since the previous one (``uncrossed``).
    # refresh_ms: int
    #     while synced, ask for a fresh snapshot (``SyncOutput.need_snapshot``) once this much
    #     exchange time has passed since the last one, without leaving the synced phase.


AWAITING_SNAPSHOT = "awaiting_snapshot"
SYNCED = "synced"


@dataclass
class SymbolState:
    symbol: str
    phase: str = AWAITING_SNAPSHOT
    book: OrderBook = field(default_factory=OrderBook)
    buffer: deque = field(default_factory=deque)
    snapshot_seq: int | None = None
    previous: BookDelta | None = None   # last applied delta; None right after a snapshot
    snapshot_requested: bool = False
    snapshots: int = 0
    next_periodic_ms: int = 0
    # price -> [price, qty] as the venue wrote them, kept only while the venue sends checksums
    # (OKX data from before 2026-06; since then its checksum is always 0)
    checksummed: bool = False
    text_bids: dict = field(default_factory=dict)
    text_asks: dict = field(default_factory=dict)
    # price -> seq of the record that last set the level, kept only for venues with an uncross rule
    seq_bids: dict = field(default_factory=dict)
    seq_asks: dict = field(default_factory=dict)
    uncrossed: int = 0              # uncross events since the symbol's last snapshot record
    refresh_at_ms: int | None = None


@dataclass
class SyncOutput:
    records: list = field(default_factory=list)
    need_snapshot: bool = False     # the caller should fetch a snapshot for this symbol


class BookSync:
    def __init__(self, rules: SyncRules, exchange: str, max_buffer: int = 10_000,
                 periodic_ms: int = 1000, periodic_band: float = 0.10):
        self.rules = rules
        self.exchange = exchange
        self.max_buffer = max_buffer
        self.periodic_ms = periodic_ms          # 0 disables periodic snapshots
        self.periodic_band = periodic_band
        self.symbols: dict[str, SymbolState] = {}
        self._checksum = getattr(rules, "checksum", None)
        self._uncross = getattr(rules, "uncross", None)
        self._refresh_ms = getattr(rules, "refresh_ms", 0) or 0
        # Every delta ends up applied, dropped (with a reason) or still buffered, so callers
        # can account for each message.
        self.counts: Counter = Counter()

    def state(self, symbol: str) -> SymbolState:
        st = self.symbols.get(symbol)
        if st is None:
            st = self.symbols[symbol] = SymbolState(symbol)
        return st

    def on_delta(self, delta: BookDelta) -> SyncOutput:
        st = self.state(delta.symbol)
        out = SyncOutput()
        if st.phase == AWAITING_SNAPSHOT:
            self._buffer(st, delta)
            self._request_snapshot(st, out)
        elif st.previous is None and self.rules.is_stale(delta, st.snapshot_seq):
            self.counts["dropped_stale"] += 1   # still in flight when the snapshot was taken
        elif self._follows(st, delta):
            self._apply(st, delta, out)
        else:
            self._gap(st, delta, out, "sequence break")
        return out

    def on_snapshot(self, snapshot: BookSnapshot) -> SyncOutput:
        st = self.state(snapshot.symbol)
        out = SyncOutput()
        st.snapshots += 1
        st.snapshot_requested = False
        # A pushed snapshot keeps its "venue" reason, but one that ends a gap is a resync all the same.
        resync = st.snapshots > 1 and (snapshot.reason != "venue" or st.phase == AWAITING_SNAPSHOT)
        if snapshot.reason != "venue":
            snapshot.reason = "sync" if st.snapshots == 1 else "resync"
        st.book.replace(snapshot.bids, snapshot.asks)
        st.checksummed = self._checksum is not None and bool(snapshot.checksum)
        st.text_bids, st.text_asks = {}, {}
        if st.checksummed:
            self._apply_text(st, snapshot.bids, snapshot.asks)
        st.snapshot_seq = snapshot.seq
        st.previous = None
        st.phase = SYNCED
        if self._refresh_ms:
            st.refresh_at_ms = snapshot.ts_exchange + self._refresh_ms
        if self._uncross is not None:
            # A snapshot is uncrossed by the venue (or else it is a gap like anywhere else): only
            # deltas are uncrossed here, by the age of their levels, which one snapshot cannot tell.
            st.seq_bids = {float(p): snapshot.seq for p, _ in snapshot.bids}
            st.seq_asks = {float(p): snapshot.seq for p, _ in snapshot.asks}
            snapshot.uncrossed = st.uncrossed = 0
        out.records.append(snapshot)
        self.counts["snapshots"] += 1
        if resync:
            out.records.append(FeedEvent(exchange=self.exchange, symbol=st.symbol, kind="resync",
                                         detail=orjson.dumps({"snapshot_seq": snapshot.seq}).decode(),
                                         ts_recv=snapshot.ts_recv, ts_exchange=snapshot.ts_exchange))
            self.counts["resyncs"] += 1
        if st.book.is_crossed():
            self._gap(st, None, out, "crossed snapshot", anchor=snapshot)
            return out
        if not self._checksum_matches(st, snapshot):
            self._gap(st, None, out, "checksum mismatch", anchor=snapshot)
            return out
        while st.buffer and self.rules.is_stale(st.buffer[0], st.snapshot_seq):
            st.buffer.popleft()
            self.counts["dropped_stale"] += 1
        while st.buffer and st.phase == SYNCED:
            delta = st.buffer.popleft()
            if self._follows(st, delta):
                self._apply(st, delta, out)
            else:
                self._gap(st, delta, out, "snapshot does not bridge" if st.previous is None else "sequence break")
        return out

    def reset(self, symbol: str) -> None:
        """Forget a symbol's book (its connection dropped): the next delta asks for a snapshot."""
        st = self.state(symbol)
        self.counts["dropped_on_reset"] += len(st.buffer)
        self.symbols[symbol] = SymbolState(symbol, snapshots=st.snapshots)

    def pending(self) -> int:
        """Deltas still buffered (never bridged by a snapshot)."""
        return sum(len(s.buffer) for s in self.symbols.values())

    def _follows(self, st: SymbolState, delta: BookDelta) -> bool:
        if st.previous is None:
            return self.rules.bridges(delta, st.snapshot_seq)
        return self.rules.continues(delta, st.previous)

    def _request_snapshot(self, st: SymbolState, out: SyncOutput) -> None:
        if not st.snapshot_requested:
            st.snapshot_requested = True
            out.need_snapshot = True

    def _buffer(self, st: SymbolState, delta: BookDelta) -> None:
        st.buffer.append(delta)
        if len(st.buffer) > self.max_buffer:
            st.buffer.popleft()
            self.counts["dropped_buffer_overflow"] += 1

    def _apply(self, st: SymbolState, delta: BookDelta, out: SyncOutput) -> None:
        st.book.apply(delta.bids, delta.asks)
        if st.checksummed:
            self._apply_text(st, delta.bids, delta.asks)
        if self._uncross is not None:
            self._apply_seq(st, delta)
        st.previous = delta
        out.records.append(delta)
        self.counts["applied"] += 1
        if st.book.is_crossed() and (self._uncross is None or not self._uncross_book(st)):
            self._gap(st, None, out, "crossed book")
        elif not self._checksum_matches(st, delta):
            self._gap(st, None, out, "checksum mismatch")
        elif self.periodic_ms and delta.ts_exchange >= st.next_periodic_ms:
            st.next_periodic_ms = (delta.ts_exchange // self.periodic_ms + 1) * self.periodic_ms
            out.records.append(self._periodic(st, delta))
            self.counts["periodic_snapshots"] += 1
        if st.phase == SYNCED and st.refresh_at_ms is not None and delta.ts_exchange >= st.refresh_at_ms:
            # Not ``snapshot_requested``: a gap meanwhile must still ask for its own snapshot.
            st.refresh_at_ms = delta.ts_exchange + self._refresh_ms
            out.need_snapshot = True
            self.counts["refresh_requests"] += 1

    @staticmethod
    def _apply_seq(st: SymbolState, delta: BookDelta) -> None:
        for side, levels in ((st.seq_bids, delta.bids), (st.seq_asks, delta.asks)):
            for price, qty in levels:
                if float(qty) > 0:
                    side[float(price)] = delta.last_seq
                else:
                    side.pop(float(price), None)

    def _uncross_book(self, st: SymbolState) -> bool:
        """Apply the venue's uncross rule to a crossed book until it no longer crosses; False (the
        book left crossed, for the caller to treat as a gap) if a step removes no level."""
        book, removed = st.book, 0
        while book.is_crossed():
            bid, ask = book.best_bid, book.best_ask
            bid_qty, ask_qty = book.bids[bid], book.asks[ask]
            keep_bid, keep_ask = self._uncross((bid, bid_qty, st.seq_bids.get(bid)),
                                               (ask, ask_qty, st.seq_asks.get(ask)))
            if keep_bid > 0 and keep_ask > 0:
                return False
            book.apply([(bid, keep_bid)], [(ask, keep_ask)])
            for side, price, qty in ((st.seq_bids, bid, keep_bid), (st.seq_asks, ask, keep_ask)):
                if qty <= 0:
                    side.pop(price, None)
                    removed += 1
        self.counts["uncross_events"] += 1
        self.counts["uncrossed_levels_removed"] += removed
        st.uncrossed += 1
        return True

    @staticmethod
    def _apply_text(st: SymbolState, bids: list, asks: list) -> None:
        for side, levels in ((st.text_bids, bids), (st.text_asks, asks)):
            for price, qty in levels:
                if float(qty) > 0:
                    side[float(price)] = [price, qty]
                else:
                    side.pop(float(price), None)

    def _checksum_matches(self, st: SymbolState, record) -> bool:
        """True unless the venue sent a checksum (0 means none: OKX deprecated it) that differs."""
        if not st.checksummed or not record.checksum:
            return True
        bids = [st.text_bids[p] for p in sorted(st.text_bids, reverse=True)]
        asks = [st.text_asks[p] for p in sorted(st.text_asks)]
        if self._checksum(bids, asks) == record.checksum:
            self.counts["checksums_verified"] += 1
            return True
        self.counts["checksum_mismatches"] += 1
        return False

    def _periodic(self, st: SymbolState, delta: BookDelta) -> BookSnapshot:
        bid_levels, ask_levels = st.book.within(self.periodic_band)
        bids = [[repr(p), repr(q)] for p, q in bid_levels]
        asks = [[repr(p), repr(q)] for p, q in ask_levels]
        uncrossed = None
        if self._uncross is not None:
            uncrossed, st.uncrossed = st.uncrossed, 0
        return BookSnapshot(exchange=delta.exchange, symbol=delta.symbol, symbol_native=delta.symbol_native,
                            ts_exchange=delta.ts_exchange, ts_recv=delta.ts_recv, bids=bids, asks=asks,
                            seq=delta.last_seq, reason="periodic", uncrossed=uncrossed)

    def _gap(self, st: SymbolState, delta: BookDelta | None, out: SyncOutput, reason: str,
             anchor=None) -> None:
        detail = {"reason": reason, "snapshot_seq": st.snapshot_seq,
                  "best_bid": st.book.best_bid, "best_ask": st.book.best_ask,
                  "previous_last_seq": st.previous.last_seq if st.previous else None}
        if delta is not None:
            detail.update(first_seq=delta.first_seq, last_seq=delta.last_seq, prev_seq=delta.prev_seq)
        anchor = anchor or delta or st.previous
        out.records.append(FeedEvent(exchange=self.exchange, symbol=st.symbol, kind="gap",
                                     detail=orjson.dumps(detail).decode(),
                                     ts_recv=anchor.ts_recv if anchor else 0,
                                     ts_exchange=anchor.ts_exchange if anchor else None))
        self.counts["gaps"] += 1
        if "crossed" in reason:
            self.counts["crossed"] += 1
        st.phase = AWAITING_SNAPSHOT
        st.snapshot_seq = None
        st.previous = None
        st.book = OrderBook()
        if delta is not None:
            self._buffer(st, delta)
        self._request_snapshot(st, out)
