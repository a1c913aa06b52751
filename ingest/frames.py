"""What a raw websocket frame must pass before it reaches a venue mapper.

**Hostile frames.** The service receives frames as bytes (websockets' ``recv(decode=False)``), so
the library never closes a connection over a text frame that is not UTF-8 (close code 1007), and
it sets the protocol's ``max_size`` far above perpflow's own limit, so an oversized frame is not a
1009 close either. ``check_frame`` decodes and size-checks here instead; a frame it refuses is
dead-lettered with the reason and the connection stays up (a reconnect would lose seconds of
data for one bad frame).

**Redundant connections.** With ``connections_per_stream > 1`` each route is opened several
times and every frame arrives once per replica; ``FrameDeduplicator`` lets only the first copy
through. The identity of a frame is a hash of its raw bytes, kept for a bounded window:

* it is venue-generic: no venue field names, no parsing before de-duplication (a duplicate costs
  one BLAKE2b digest, well under a microsecond for a market-data frame), and it works for streams
  that carry no id at all (Binance's forceOrder);
* a venue serializes an event once and fans the same bytes out to every subscriber, and every
  market-data frame carries an event time, so two byte-identical frames within a short window are
  the same event: de-duplicating them never drops a distinct one;
* the window is bounded in time (a replica lagging its sibling by more than ``window_s`` is
  effectively dead; its late copies would then pass as new, and the trade-id check and the book
  sync still catch them) and in entries (memory stays capped whatever the message rate).

First copy wins, so the merged stream keeps each replica's order: frame *k+1* can only arrive
first on a replica that already delivered frame *k*. A drop of one replica loses nothing while
another replica of the route stays connected.
"""

from __future__ import annotations

import hashlib
import time
from collections import OrderedDict
from dataclasses import dataclass


@dataclass(frozen=True)
class RejectedFrame:
    reason: str


def check_frame(raw: bytes, max_frame_bytes: int) -> str | RejectedFrame:
    """The frame as text, or why it cannot be handled (too large, not UTF-8)."""
    if len(raw) > max_frame_bytes:
        return RejectedFrame(f"frame too large: {len(raw)} bytes exceeds the limit of {max_frame_bytes}")
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        return RejectedFrame(f"frame not valid UTF-8: {exc.reason} at byte {exc.start}")


class FrameDeduplicator:
    """Byte-identical frames seen within ``window_s`` (at most ``max_entries``) pass only once."""

    def __init__(self, window_s: float = 30.0, max_entries: int = 500_000):
        self.window_s = window_s
        self.max_entries = max_entries
        self._seen: OrderedDict[bytes, float] = OrderedDict()   # digest -> first arrival, oldest first
        self.duplicates = 0

    def first_copy(self, raw: bytes, now: float | None = None) -> bool:
        now = time.monotonic() if now is None else now
        seen = self._seen
        while seen:
            oldest, arrived = next(iter(seen.items()))
            if now - arrived <= self.window_s and len(seen) < self.max_entries:
                break
            del seen[oldest]
        digest = hashlib.blake2b(raw, digest_size=16).digest()
        if digest in seen:
            self.duplicates += 1
            return False
        seen[digest] = now
        return True
