"""``perpflow replay``: recorded venue traffic through the live mapping path into Kafka."""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path

import orjson

from ingest.feed import FeedHandler, FeedStats
from ingest.recordings import read_recordings
from ingest.venues import likely_venues
from ingest.venues import venue as venue_for

PROBE_MESSAGES = 500    # how many messages decide whether a recording is the named venue's


@dataclass
class ReplayReport:
    exchange: str
    stats: FeedStats
    book: Counter                        # book-sync outcomes: applied, dropped_stale, gaps, crossed, ...
    pending_deltas: int                  # buffered deltas no snapshot ever bridged
    meta_lines: Counter = field(default_factory=Counter)
    by_symbol: Counter = field(default_factory=Counter)     # (record type, symbol) -> records

    @property
    def gaps(self) -> int:
        return self.book["gaps"]

    @property
    def crossed(self) -> int:
        return self.book["crossed"]

    @property
    def all_accounted(self) -> bool:
        return self.stats.accounted == self.stats.messages


class NothingToReplay(ValueError):
    """The files hold no venue message: empty, or nothing the recording reader recognises."""


class WrongVenue(ValueError):
    """The files hold another venue's traffic than the one named."""


def check_replayable(exchange: str, paths: list[Path]) -> None:
    """Raise ``NothingToReplay`` unless some file holds a venue message, and ``WrongVenue`` when the
    first messages are not ``exchange``'s (naming the venue they look like). A recording of REST
    bodies only (a venue polled over HTTP) is judged on its bodies, and refused only when another
    venue claims them: most venues recognise their websocket frames, not their REST bodies."""
    venue = venue_for(exchange)
    not_data: Counter = Counter()
    probe, rest_probe, data_seen = [], [], False
    for message in read_recordings(paths, venue):
        if message.kind == "meta":
            not_data[message.source] += 1
            continue
        data_seen = True
        sample = {"ws": probe, "rest": rest_probe}.get(message.kind)
        if sample is not None and len(sample) < PROBE_MESSAGES:
            try:
                sample.append(orjson.loads(message.payload))
            except orjson.JSONDecodeError:
                pass
        if len(probe) >= PROBE_MESSAGES:
            break
    if not data_seen:
        found = "; ".join(f"{n} line(s) of {what}" for what, n in not_data.items()) or "the files are empty"
        raise NothingToReplay(f"no venue message to replay in {', '.join(map(str, paths))} ({found})")
    if not probe and not any(venue.recognizes(m) for m in rest_probe):
        probe = rest_probe if any(name != exchange for name, _ in likely_venues(rest_probe)) else []
    ours = sum(1 for m in probe if venue.recognizes(m))
    if probe and not ours:
        others = [(name, n) for name, n in likely_venues(probe) if name != exchange]
        files = ", ".join(map(str, paths))
        if others:
            name, n = others[0]
            raise WrongVenue(f"{files} does not look like {exchange} traffic: 0 of the first {len(probe)} messages "
                             f"are {exchange}'s, {n} look like {name}'s; run with --exchange {name}")
        raise WrongVenue(f"{files} does not look like {exchange} traffic: none of the first {len(probe)} messages "
                         f"is recognised by any venue perpflow knows")


def replay(exchange: str, paths: list[Path], emit: Callable[[object], None],
           symbols: Iterable[str] | None = None) -> ReplayReport:
    """Map every recorded message with the venue's mapper and book sync; hand records to ``emit``.

    ``symbols`` keeps only those native symbols (default: everything in the recording)."""
    venue = venue_for(exchange)
    by_symbol: Counter = Counter()

    def count_and_emit(record) -> None:
        by_symbol[record.record_type, getattr(record, "symbol", None) or "*"] += 1
        emit(record)

    handler = FeedHandler(venue, count_and_emit, symbols)
    meta: Counter = Counter()
    for message in read_recordings(paths, venue):
        if message.kind == "ws":
            handler.on_ws(message.payload, message.ts_recv, message.source)
        elif message.kind == "rest":
            handler.on_rest(message.source, message.payload, message.ts_recv)
        else:
            meta[message.source] += 1
    # Snapshot requests cannot be served from a recording: deltas still buffered at the end
    # were never bridged and are reported, not silently lost.
    return ReplayReport(exchange, handler.stats, handler.book_sync.counts.copy(),
                        handler.book_sync.pending(), meta, by_symbol)
