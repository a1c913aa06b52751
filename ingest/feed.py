"""Raw venue messages -> mapper -> book sync -> records, with every message accounted for.

Shared by ``perpflow replay`` and the live ingest service so recorded and live data take
exactly the same path. Each message ends as mapped, skipped (with the reason) or a dead
letter (with the reason, kept verbatim for ``md.dlq``); nothing raises out of here, so one
bad frame never stops a long-running stream.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field

import orjson

from ingest.book_sync import BookSync
from ingest.records import BookDelta, BookSnapshot, DeadLetter, FeedEvent, Trade
from ingest.venues import MalformedMessage, SkipMessage

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


class FeedHandler:
    def __init__(self, venue, emit: Callable[[object], None]):
        self.venue = venue
        self.emit = emit
        self.book_sync = BookSync(venue.rules, venue.exchange)
        self.stats = FeedStats()
        self._last_trade_id: dict[str, int] = {}
        self._open_gaps: dict[str, list[list[int]]] = {}   # per symbol: [first, last] still missing
        self.new_trade_gaps: list[TradeGap] = []           # for the caller to backfill, then clear

    def on_ws(self, raw: bytes | str, ts_recv: int, source: str = "ws") -> list[str]:
        """Handle one websocket frame; return native symbols whose book needs a REST snapshot."""
        return self._handle(raw, ts_recv, source, lambda msg: self.venue.map_ws(msg, ts_recv))

    def on_rest(self, url: str, raw: bytes | str, ts_recv: int) -> list[str]:
        return self._handle(raw, ts_recv, url, lambda body: self.venue.map_rest(url, body, ts_recv))

    def on_rejected_frame(self, raw: bytes, ts_recv: int, source: str, reason: str) -> None:
        """A frame refused before parsing (not UTF-8, too large): counted and dead-lettered."""
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
        self.stats.mapped += 1
        return self._route(mapped)

    def _route(self, mapped: list) -> list[str]:
        resync = []
        for record in mapped:
            if isinstance(record, Trade) and not self._trade_in_sequence(record):
                continue
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
        """Track the venue's trade-id sequence: report gaps, accept backfills, drop repeats."""
        trade_id = self.venue.trade_sequence(trade)
        if trade_id is None:
            return True
        symbol = trade.symbol
        last = self._last_trade_id.get(symbol)
        if last is None or trade_id == last + 1:
            self._last_trade_id[symbol] = trade_id
            return True
        if trade_id > last + 1:
            self._last_trade_id[symbol] = trade_id
            self._open_gaps.setdefault(symbol, []).append([last + 1, trade_id - 1])
            self.new_trade_gaps.append(TradeGap(trade.symbol_native, last + 1, trade_id - 1))
            self.emit_record(FeedEvent(exchange=trade.exchange, symbol=symbol, kind="trade_gap",
                                       detail=orjson.dumps({"first_id": last + 1, "last_id": trade_id - 1}).decode(),
                                       ts_recv=trade.ts_recv, ts_exchange=trade.ts_exchange))
            return True
        for gap in self._open_gaps.get(symbol, ()):
            if gap[0] <= trade_id <= gap[1]:
                if trade_id == gap[0]:   # backfills arrive in order; keep the range tight
                    gap[0] += 1
                if gap[0] > gap[1]:
                    self._open_gaps[symbol].remove(gap)
                return True
        self.stats.skipped["duplicate trade id (already received)"] += 1
        return False

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
