"""``perpflow replay``: recorded venue traffic through the live mapping path into Kafka."""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path

from ingest.feed import FeedHandler, FeedStats
from ingest.recordings import read_recordings
from ingest.venues import venue as venue_for


@dataclass
class ReplayReport:
    exchange: str
    stats: FeedStats
    book: Counter                        # book-sync outcomes: applied, dropped_stale, gaps, crossed, ...
    pending_deltas: int                  # buffered deltas no snapshot ever bridged
    meta_lines: Counter = field(default_factory=Counter)

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


def check_replayable(paths: list[Path]) -> None:
    """Raise ``NothingToReplay`` unless some file holds a venue message (reads up to the first one)."""
    not_data: Counter = Counter()
    for message in read_recordings(paths):
        if message.kind != "meta":
            return
        not_data[message.source] += 1
    found = "; ".join(f"{n} line(s) of {what}" for what, n in not_data.items()) or "the files are empty"
    raise NothingToReplay(f"no venue message to replay in {', '.join(map(str, paths))} ({found})")


def replay(exchange: str, paths: list[Path], emit: Callable[[object], None],
           symbols: Iterable[str] | None = None) -> ReplayReport:
    """Map every recorded message with the venue's mapper and book sync; hand records to ``emit``.

    ``symbols`` keeps only those native symbols (default: everything in the recording)."""
    handler = FeedHandler(venue_for(exchange), emit, symbols)
    meta: Counter = Counter()
    for message in read_recordings(paths):
        if message.kind == "ws":
            handler.on_ws(message.payload, message.ts_recv, message.source)
        elif message.kind == "rest":
            handler.on_rest(message.source, message.payload, message.ts_recv)
        else:
            meta[message.source] += 1
    # Snapshot requests cannot be served from a recording: deltas still buffered at the end
    # were never bridged and are reported, not silently lost.
    return ReplayReport(exchange, handler.stats, handler.book_sync.counts.copy(),
                        handler.book_sync.pending(), meta)
