"""Raw venue messages -> mapper -> book sync -> records, with every message accounted for.

Shared by ``perpflow replay`` and the live ingest service so recorded and live data take
exactly the same path. Each message ends as mapped, skipped (with the reason) or a dead
letter (with the reason, kept verbatim for ``md.dlq``); nothing raises out of here, so one
bad frame never stops a long-running stream.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field

import orjson

from ingest.book_sync import BookSync
from ingest.records import BookDelta, BookSnapshot, DeadLetter, FeedEvent, Trade
from ingest.venue import MalformedMessage, SkipMessage, TradesUncertain

MAX_DEAD_LETTER_BYTES = 1 << 20
# Enough of a refused frame to identify it, well under a broker's ~1 MiB message limit.
REJECTED_FRAME_KEEP_BYTES = 64 << 10

@dataclass
class FeedStats:
    messages: int = 0
    mapped: int = 0
    records: Counter = field(default_factory=Counter)       # per record type, as emitted
    skipped: Counter = field(default_factory=Counter)       # per reason
    dead_letters: Counter = field(default_factory=Counter)  # per reason

    @property
    def accounted(self) -> int:
        return self.mapped + sum(self.skipped.values()) + sum(self.dead_letters.values())

@dataclass
class TradeGap:
    """Trade ids a venue published but perpflow did not receive (venues with consecutive ids)."""

    symbol_native: str
    first_id: int
    last_id: int


UNSUBSCRIBED = "symbol not subscribed"
BEFORE_CATCH_UP = "older than the trade catch-up window (already received)"


class FeedHandler:
    """``symbols``: the native symbols subscribed to (None: all). Records of any other symbol are
    dropped before book sync and trade sequencing, whose per-symbol state would otherwise grow
    with whatever a venue (or a recording) sends; a message left with no record counts as
    skipped for that reason."""

    def __init__(self, venue, emit: Callable[[object], None], symbols: Iterable[str] | None = None):
        self.venue = venue
        self.emit = emit
        self.symbols = None if symbols is None else frozenset(s.upper() for s in symbols)
        self.book_sync = BookSync(venue.rules, venue.exchange)
        self.stats = FeedStats()
        self._last_trade_id: dict[str, int] = {}
        self._open_gaps: dict[str, list[list[int]]] = {}   # per symbol: [first, last] still missing
        self.lost_trades: Counter = Counter()              # per symbol: ids declared unrecoverable
        self.trade_gaps: Counter = Counter()               # per symbol: gaps seen in the live sequence
        self.new_trade_gaps: list[TradeGap] = []           # for the caller to backfill, then clear
        self.new_catch_ups: list[TradesUncertain] = []     # for the caller to catch up from REST, then clear
        self.newest_trade_ms: dict[str, int] = {}          # per native symbol: venue time of the newest trade

    def on_ws(self, raw: bytes | str, ts_recv: int, source: str = "ws") -> list[str]:
        """Handle one websocket frame; return native symbols whose book needs a REST snapshot."""
        return self._handle(raw, ts_recv, source, lambda msg: self.venue.map_ws(msg, ts_recv))

    def on_rest(self, url: str, raw: bytes | str, ts_recv: int) -> list[str]:
        return self._handle(raw, ts_recv, url, lambda body: self.venue.map_rest(url, body, ts_recv))

    def on_trade_page(self, url: str, raw: bytes | str, ts_recv: int, since_ms: int) -> list[str]:
        """A page of a trade catch-up: only its trades at or after ``since_ms`` are taken."""
        def mapper(body):
            records = self.venue.map_trade_page(url, body, ts_recv, since_ms)
            if not records:
                raise SkipMessage(BEFORE_CATCH_UP)
            return records
        return self._handle(raw, ts_recv, url, mapper)

    def on_rejected_frame(self, raw: bytes, ts_recv: int, source: str, reason: str) -> None:
        """A frame or REST body refused without mapping (not UTF-8, too large, a page the venue
        module cannot read): counted and dead-lettered."""
        self.stats.messages += 1
        self._dead_letter(raw[:REJECTED_FRAME_KEEP_BYTES], ts_recv, source, reason)

    def _handle(self, raw, ts_recv: int, source: str, mapper) -> list[str]:
        self.stats.messages += 1
        try:
            message = orjson.loads(raw)
        except orjson.JSONDecodeError as exc:
            self._dead_letter(raw, ts_recv, source, f"invalid JSON: {exc}")
            return []
        try:
            mapped = mapper(message)
        except SkipMessage as skip:
            self.stats.skipped[str(skip)] += 1
            return []
        except MalformedMessage as exc:
            self._dead_letter(raw, ts_recv, source, str(exc))
            return []
        if self.symbols is not None and mapped:
            # A feed event a mapper reports (e.g. a lost message on a connection) belongs to no symbol.
            mapped = [r for r in mapped if isinstance(r, FeedEvent) or r.symbol_native in self.symbols]
            if not mapped:
                self.stats.skipped[UNSUBSCRIBED] += 1
                return []
        self.stats.mapped += 1
        return self._route(mapped)

    def _route(self, mapped: list) -> list[str]:
        resync = []
        for record in mapped:
            if isinstance(record, TradesUncertain):
                self.new_catch_ups.append(record)
                continue
            if isinstance(record, Trade):
                if not self._trade_in_sequence(record):
                    continue
                if record.ts_exchange > self.newest_trade_ms.get(record.symbol_native, -1):
                    self.newest_trade_ms[record.symbol_native] = record.ts_exchange
            if isinstance(record, BookDelta):
                out = self.book_sync.on_delta(record)
            elif isinstance(record, BookSnapshot):
                out = self.book_sync.on_snapshot(record)
            else:
                self.emit_record(record)
                continue
            for produced in out.records:
                self.emit_record(produced)
            if out.need_snapshot:
                resync.append(record.symbol_native)
        return resync

    def _trade_in_sequence(self, trade: Trade) -> bool:
        """Track the venue's trade-id sequence: report gaps, accept backfills, drop repeats.

        A trade covers ids ``first..last`` (one id, or the fills an aggregated trade folds)."""
        ids = self.venue.trade_sequence(trade)
        if ids is None:
            return True
        first, trade_id = ids
        symbol = trade.symbol
        last = self._last_trade_id.get(symbol)
        if last is None or first == last + 1:
            self._last_trade_id[symbol] = trade_id
            return True
        if first > last + 1:
            self._last_trade_id[symbol] = trade_id
            self._open_gaps.setdefault(symbol, []).append([last + 1, first - 1])
            self.trade_gaps[symbol] += 1
            self.new_trade_gaps.append(TradeGap(trade.symbol_native, last + 1, first - 1))
            self.emit_record(FeedEvent(exchange=trade.exchange, symbol=symbol, kind="trade_gap",
                                       detail=orjson.dumps({"first_id": last + 1, "last_id": first - 1}).decode(),
                                       ts_recv=trade.ts_recv, ts_exchange=trade.ts_exchange))
            return True
        if trade_id > last:      # overlaps the end of the sequence: the new ids continue it
            self._take_from_gaps(symbol, first, last)
            self._last_trade_id[symbol] = trade_id
            return True
        if self._take_from_gaps(symbol, first, trade_id):
            return True
        self.stats.skipped["duplicate trade id (already received)"] += 1
        return False

    def _take_from_gaps(self, symbol: str, first: int, last: int) -> int:
        """Remove ids ``first..last`` from the symbol's open gaps; the count that was open."""
        kept, taken = [], 0
        for lo, hi in self._open_gaps.get(symbol, ()):
            if hi < first or lo > last:
                kept.append([lo, hi])
                continue
            taken += min(hi, last) - max(lo, first) + 1
            if lo < first:
                kept.append([lo, first - 1])
            if hi > last:
                kept.append([last + 1, hi])
        if symbol in self._open_gaps:
            self._open_gaps[symbol] = kept
        return taken

    def seed_trade_sequence(self, symbol_native: str, last_id: int, missing: list[tuple[int, int]]) -> list[TradeGap]:
        """Continue a previous run's sequence: ``last_id`` was published, ``missing`` ranges were not.

        The first live trade after ``last_id`` then opens a gap for the restart window; the
        returned gaps (the previous run's unfinished ones) are for the caller to backfill.
        """
        symbol = self.venue.normalize_symbol(symbol_native)
        self._last_trade_id[symbol] = last_id
        gaps = sorted([lo, hi] for lo, hi in missing if lo <= hi <= last_id)
        self._open_gaps[symbol] = gaps
        return [TradeGap(symbol_native, lo, hi) for lo, hi in gaps]

    def reopen_trades(self, symbol_native: str, first: int, last: int, reason: str, ts_recv: int,
                      *, report: bool = True) -> None:
        """Ids ``first..last`` were received but never stored (the sink dropped them): open them as a
        gap again, for a backfill to fetch; ``report``: also emit the ``trade_gap`` feed event."""
        symbol = self.venue.normalize_symbol(symbol_native)
        self._open_gaps[symbol] = sorted([*self._open_gaps.get(symbol, []), [first, last]])
        self.trade_gaps[symbol] += 1
        if report:
            self.emit_record(FeedEvent(exchange=self.venue.exchange, symbol=symbol, kind="trade_gap",
                                       detail=orjson.dumps({"first_id": first, "last_id": last,
                                                            "reason": reason}).decode(), ts_recv=ts_recv))

    def give_up_trades(self, symbol_native: str, first: int, last: int, reason: str, ts_recv: int) -> int:
        """Declare ids ``first..last`` unrecoverable: a ``trade_lost`` event with the count still open."""
        symbol = self.venue.normalize_symbol(symbol_native)
        count = self._take_from_gaps(symbol, first, last)
        if count:
            self.lost_trades[symbol] += count
            self.emit_record(FeedEvent(exchange=self.venue.exchange, symbol=symbol, kind="trade_lost",
                                       detail=orjson.dumps({"first_id": first, "last_id": last, "count": count,
                                                            "reason": reason}).decode(), ts_recv=ts_recv))
        return count

    def open_trade_gaps(self, symbol_native: str, first: int | None = None, last: int | None = None) -> list[list[int]]:
        """The symbol's still-missing ranges, optionally only those overlapping ``first..last``."""
        gaps = self._open_gaps.get(self.venue.normalize_symbol(symbol_native), ())
        return [list(g) for g in gaps if (first is None or g[1] >= first) and (last is None or g[0] <= last)]

    def trade_sequences(self) -> dict[str, dict]:
        """Per normalized symbol: the last trade id seen, open (missing) ranges and ids given up."""
        symbols = set(self._last_trade_id) | set(self.lost_trades)
        return {s: {"last_id": self._last_trade_id.get(s), "open": [list(g) for g in self._open_gaps.get(s, ())],
                    "missing": sum(hi - lo + 1 for lo, hi in self._open_gaps.get(s, ())),
                    "gaps": self.trade_gaps[s], "lost": self.lost_trades[s]} for s in sorted(symbols)}

    def missing_trades(self) -> int:
        """Trade ids reported missing and not (yet) backfilled."""
        return sum(g[1] - g[0] + 1 for gaps in self._open_gaps.values() for g in gaps)

    def emit_record(self, record) -> None:
        """Emit a record the caller made itself (e.g. a service's feed events), counted like the rest."""
        self.stats.records[record.record_type] += 1
        self.emit(record)

    def _dead_letter(self, raw, ts_recv: int, source: str, reason: str) -> None:
        # Truncated before decoding: a hostile frame may be tens of megabytes.
        raw = raw[:MAX_DEAD_LETTER_BYTES]
        text = raw.decode("utf-8", "replace") if isinstance(raw, (bytes, bytearray)) else str(raw)
        # Reason categories stay few (the detail after ':' varies per message).
        self.stats.dead_letters[reason.split(":")[0]] += 1
        self.emit_record(DeadLetter(exchange=self.venue.exchange, source=source, reason=reason,
                              raw=text, ts_recv=ts_recv))
