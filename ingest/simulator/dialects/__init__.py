"""Other venues' wire formats on the simulator's one market: each dialect translates the market's
events into what that venue would push, on that venue's paths, with its own subscribe protocol,
keepalive, sequencing and sizes.

The market model and its Binance-shaped message stream (``ingest.simulator.feed``) are the single
source of events; a dialect subscribes its clients to the underlying Binance streams it needs and
re-encodes each message: trades per fill, book deltas computed from the venue's own book (its
``VenueMarket``: offset, share of size, per-level noise) as the venue's depth-limited view (so a
400- or 50-level book enters and drops levels the way the venue's does),
mark/funding/open-interest pushes at the venue's cadence, liquidations in the venue's side
convention. A sequence break injected into the underlying depth stream breaks the dialect's book
sequence too, so clients' resync paths are exercised. All dialects are served from the one port
(their paths do not collide) and share the same ground truth.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, field
from types import SimpleNamespace

import orjson
from aiohttp import web

from ..feed import ExchangeFeed
from ..venue_market import VenueMarket


def address(*parts) -> str:
    """A stable made-up 20-byte address (wallets, tokens, markets of the on-chain venues)."""
    return "0x" + hashlib.blake2b("|".join(map(str, parts)).encode(), digest_size=20).hexdigest()


@dataclass
class BookView:
    """A venue's depth-limited view of one symbol's book: what its clients were last told."""

    depth: int
    seq: int = 0                                        # the view's own sequence number
    bids: dict[int, int] = field(default_factory=dict)  # tick -> lots
    asks: dict[int, int] = field(default_factory=dict)
    last_binance_u: int | None = None                   # the underlying depth stream's last u

    def refresh(self, feed: ExchangeFeed, market: VenueMarket, s: int) -> tuple[list, list]:
        """Take the venue's current top ``depth`` levels; return the changed (tick, lots) per side,
        lots 0 for a level that left the view."""
        bid_ticks, bid_lots, ask_ticks, ask_lots = feed.model.book_levels(s)
        changes = []
        for side, ticks, lots in ((self.bids, bid_ticks, bid_lots), (self.asks, ask_ticks, ask_lots)):
            ticks, lots = ticks[:self.depth], lots[:self.depth]
            fresh = dict(zip(market.level_ticks(s, ticks).tolist(), market.level_lots(s, ticks, lots).tolist()))
            changed = [(t, q) for t, q in fresh.items() if side.get(t) != q]
            changed += [(t, 0) for t in side if t not in fresh]
            side.clear()
            side.update(fresh)
            changes.append(changed)
        return changes[0], changes[1]

    def levels(self) -> tuple[list, list]:
        """Best first: (bids, asks) as (tick, lots)."""
        return sorted(self.bids.items(), reverse=True), sorted(self.asks.items())


class Dialect:
    """One venue's wire format. Subclasses set ``name`` (the venue's registry id) and implement
    ``add_routes``, ``on_text`` (client frames) and ``encode`` (underlying message -> frames)."""

    name: str
    #: where the venue's own host is served on the simulator's one port ("" for the root):
    #: clients point ``--ws-url`` and ``--rest-url`` at ``http(s)://HOST:PORT`` + this.
    url_prefix: str = ""

    def __init__(self, server):
        self.server = server
        self._held: dict[str, list] = {}

    @property
    def feed(self) -> ExchangeFeed:
        return self.server.feed

    @property
    def market(self) -> VenueMarket:
        """This venue's own book, tape and basis on the shared market."""
        return self.feed.venue_market(self.name)

    def add_routes(self, app: web.Application) -> None:
        raise NotImplementedError

    def on_text(self, conn, text: str) -> None:
        raise NotImplementedError

    def encode(self, stream: str, payload: dict, topics: set[str]) -> dict[str, list[bytes]]:
        """Frames per topic for one underlying message; only ``topics`` (those with subscribers)."""
        raise NotImplementedError

    def streams_for(self, topic: str) -> list[str] | None:
        """The feed streams behind one of the venue's topics (None: the venue has no such topic)."""
        raise NotImplementedError

    def snapshot(self, topic: str) -> bytes | None:
        """The frame a new subscriber to ``topic`` gets first, if the venue sends one."""
        raise NotImplementedError

    def native_symbol(self, s: int) -> str:
        """The venue's name of the market's symbol ``s``."""
        raise NotImplementedError

    def on_close(self, conn) -> None:
        """A client connection went away."""

    def frame_for(self, conn, frame: bytes) -> bytes | None:
        """The bytes one connection gets for a frame the dialect built once for every subscriber
        (called per connection, in sending order; None: the frame is lost in transit, a fault).
        The default is the frame itself; a venue whose frames carry per-connection fields (dYdX's
        ``message_id`` counter) stamps them here."""
        return frame

    def on_step(self, topics: set[str]) -> dict[str, list[bytes]]:
        """Called once each market step's messages have been dispatched: the venue's clock-driven
        work (pushes on its own cadence, deferred subscriptions). Returns frames per topic, like
        ``encode``, for the connections subscribed to those topics (``topics``: those with
        subscribers). Only dialects that override it are called."""
        return {}

    # --- helpers for subclasses ------------------------------------------------------------

    def hold_for_step(self, topic: str, item) -> None:
        """An item the venue pushes together with the rest of its market step's (a matching
        batch's trades, as Bybit's ``publicTrade`` and Hyperliquid's ``trades`` do): one frame per
        topic, built by ``release_held`` from the dialect's ``on_step``."""
        self._held.setdefault(topic, []).append(item)

    def release_held(self, frame) -> dict[str, list[bytes]]:
        """The step's held items, one frame per topic: ``frame(topic, items)`` in arrival order."""
        if not self._held:
            return {}
        held, self._held = self._held, {}
        return {topic: [frame(topic, items)] for topic, items in held.items()}

    def send(self, conn, body) -> None:
        frame = self.frame_for(conn, body if isinstance(body, bytes) else orjson.dumps(body))
        if frame is not None:
            conn.outbox.append(frame)
            conn.wake.set()

    def rest(self, compute, path_args: bool = False):
        """An aiohttp handler answering ``compute(query)``'s JSON (``compute(query, **path
        parameters)`` with ``path_args``), with the feed's REST faults."""
        async def handler(request: web.Request) -> web.Response:
            failure = self.feed.faults.rest_failure()
            if failure is not None:
                status, body = failure
                self.feed.record_fault(self.feed.now_ms, "rest_error", path=request.path, status=status)
                return web.Response(status=status, body=orjson.dumps(body), content_type="application/json")
            status, body = compute(request.query, **request.match_info) if path_args else compute(request.query)
            return web.Response(status=status, body=orjson.dumps(body), content_type="application/json")
        return handler


def offline_frames(exchange: str, feed: ExchangeFeed, topics: list[str], limit: int) -> list[bytes]:
    """Up to ``limit`` frames a subscriber to ``topics`` would receive, without a server: the
    snapshots first, then the feed stepped forward (benchmarks, offline tests)."""
    holder = type("OfflineServer", (), {"feed": feed})()
    dialect = dialect_classes()[exchange](holder)
    conn = SimpleNamespace()            # the one subscriber, for per-connection fields
    by_stream: dict[str, set[str]] = {}
    for topic in topics:
        for stream in dialect.streams_for(topic) or ():
            by_stream.setdefault(stream, set()).add(topic)
    stepping = type(dialect).on_step is not Dialect.on_step
    frames = [frame for frame in map(dialect.snapshot, topics) if frame is not None]
    while len(frames) < limit and not feed.finished:
        for message in feed.step(by_stream.__contains__):
            if isinstance(message.payload, dict):
                for produced in dialect.encode(message.stream, message.payload, by_stream[message.stream]).values():
                    frames += produced
        if stepping:
            for produced in dialect.on_step(set(topics)).values():
                frames += produced
    return [f for f in (dialect.frame_for(conn, frame) for frame in frames[:limit]) if f is not None]


def dialect_classes() -> dict[str, type[Dialect]]:
    from .binance_coinm import BinanceCoinmDialect
    from .bybit import BybitLinearDialect
    from .dydx_v4 import DydxV4Dialect
    from .gmx import GmxDialect
    from .hyperliquid import HyperliquidDialect
    from .okx import OkxSwapDialect

    return {cls.name: cls for cls in (BinanceCoinmDialect, OkxSwapDialect, BybitLinearDialect, HyperliquidDialect,
                                      GmxDialect, DydxV4Dialect)}


def url_prefix(exchange: str) -> str:
    """The path a venue's websocket and REST URLs start with on the simulator."""
    cls = dialect_classes().get(exchange)
    return cls.url_prefix if cls is not None else ""


NATIVE_VENUE = "binance-usdm"   # the feed's own format, served by ``ingest.simulator.server``
