"""What a raw websocket frame must pass before it reaches a venue mapper.

**Hostile frames.** The service receives frames as bytes (websockets' ``recv(decode=False)``), so
the library never closes a connection over a text frame that is not UTF-8 (close code 1007), and
it sets the protocol's ``max_size`` far above perpflow's own limit, so an oversized frame is not a
1009 close either. ``check_frame`` decodes and size-checks here instead; a frame it refuses is
dead-lettered with the reason and the connection stays up (a reconnect would lose seconds of
data for one bad frame).

**Redundant connections.** With ``connections_per_stream > 1`` each route is opened several
times and every frame arrives once per replica; ``ReplicaMerger`` turns a route's replicas into
one stream in which each frame appears once and in order. The identity of a frame is a hash of
its raw bytes, kept for a bounded window:

* it is venue-generic: no venue field names, no parsing before de-duplication (a duplicate costs
  one BLAKE2b digest, well under a microsecond for a market-data frame), and it works for streams
  that carry no id at all (Binance's forceOrder);
* a venue serializes an event once and fans the same bytes out to every subscriber, and every
  market-data frame carries an event time, so two byte-identical frames within a short window are
  the same event: de-duplicating them never drops a distinct one;
* the window is bounded in time (a replica lagging its sibling by more than ``window_s`` is
  effectively dead; its late copies would then pass as new, and the trade-id check and the book
  sync still catch them) and in entries (memory stays capped whatever the message rate).

Among *live* replicas the first copy wins, which keeps order: frame *k+1* can only arrive first
on a replica that already delivered frame *k*. A replica that (re)connects while a sibling is
live may be *ahead* of it (its first frames are newer than what the sibling has delivered yet),
so it *joins*: its frames are held back until a live sibling delivers one of them (the two now
overlap: the held frames up to that one are the sibling's to deliver, the rest follow it), or
until ``join_timeout_s`` passes or no live sibling is left (then the held frames are released
in order and any real gap is caught downstream). Replicas must carry the same frames in the
same order, which holds for one venue's identical subscriptions.
"""

from __future__ import annotations

import hashlib
import time
from collections import OrderedDict, deque
from dataclasses import dataclass, field


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


@dataclass
class _Replica:
    live: bool
    joined_at: float
    held: deque = field(default_factory=deque)         # (digest, item) while joining
    held_digests: set = field(default_factory=set)


class ReplicaMerger:
    """One route's replicas merged into a single stream: each frame once, in order.

    ``on_frame`` takes a replica's raw frame and an opaque ``item`` to hand back, and returns the
    items to process now, in order (none for a duplicate or a frame held while joining)."""

    def __init__(self, window_s: float = 30.0, max_entries: int = 500_000, join_timeout_s: float = 5.0):
        self.window_s = window_s
        self.max_entries = max_entries
        self.join_timeout_s = join_timeout_s
        self._seen: OrderedDict[bytes, float] = OrderedDict()   # digest -> first arrival, oldest first
        self._replicas: dict[str, _Replica] = {}
        self.duplicates = 0
        # (replica, why) for each replica that went live without overlapping a live sibling: the
        # frames between what the sibling delivered and what this one holds may be lost.
        self.unverified_joins: list[tuple[str, str]] = []

    def is_live(self, replica: str) -> bool:
        state = self._replicas.get(replica)
        return state is not None and state.live

    def connected(self, replica: str, now: float | None = None) -> None:
        now = time.monotonic() if now is None else now
        live = not any(r.live for r in self._replicas.values())
        self._replicas[replica] = _Replica(live=live, joined_at=now)

    def disconnected(self, replica: str, now: float | None = None) -> list:
        """Items released because the replica that left was the last live one."""
        self._replicas.pop(replica, None)
        if any(r.live for r in self._replicas.values()):
            return []
        if not self._replicas:
            return []
        name = min(self._replicas, key=lambda r: self._replicas[r].joined_at)
        self.unverified_joins.append((name, f"{replica} left before {name} overlapped it"))
        return self._go_live(self._replicas[name], 0, time.monotonic() if now is None else now)

    def on_frame(self, replica: str, raw: bytes, item, now: float | None = None) -> list:
        now = time.monotonic() if now is None else now
        self._expire(now)
        state = self._replicas[replica]
        digest = hashlib.blake2b(raw, digest_size=16).digest()
        out: list = []
        if not state.live:
            if digest in self._seen:            # behind a live sibling: in step from here on
                self.duplicates += 1
                out = self._go_live(state, len(state.held), now)
            else:
                state.held.append((digest, item))
                state.held_digests.add(digest)
                if now - state.joined_at > self.join_timeout_s:
                    self.unverified_joins.append((replica, f"no overlap with a live sibling within "
                                                           f"{self.join_timeout_s:g} s"))
                    out = self._go_live(state, 0, now)
            return out
        if digest in self._seen:
            self.duplicates += 1
        else:
            self._seen[digest] = now
            out.append(item)
        for other in self._replicas.values():
            if not other.live and digest in other.held_digests:
                out += self._go_live(other, self._position(other, digest) + 1, now)
        return out

    def _go_live(self, state: _Replica, overlap: int, now: float) -> list:
        """Make a joining replica live: its first ``overlap`` held frames were delivered by a
        sibling; the rest are released in order (those not seen meanwhile)."""
        state.live = True
        out = []
        for i, (digest, item) in enumerate(state.held):
            if i < overlap or digest in self._seen:
                self.duplicates += 1
            else:
                self._seen[digest] = now
                out.append(item)
        state.held.clear()
        state.held_digests.clear()
        return out

    @staticmethod
    def _position(state: _Replica, digest: bytes) -> int:
        return next(i for i, (held, _) in enumerate(state.held) if held == digest)

    def _expire(self, now: float) -> None:
        seen = self._seen
        while seen:
            oldest, arrived = next(iter(seen.items()))
            if now - arrived <= self.window_s and len(seen) < self.max_entries:
                break
            del seen[oldest]
