"""The venue contract: all that perpflow's shared machinery knows about a venue.

The live service, the feed handler, the recording readers and the CLI talk to a venue only
through a ``Venue`` object; none of them names a venue, a field or a path. A venue is one module
in ``ingest/venues/`` holding a ``Venue`` subclass (its transport description and its pure
mapper, as tardis-node keeps ``realtimefeeds/<venue>.ts`` and ``mappers/<venue>.ts``), its test
fixtures, and one line in the registry ``ingest.venues.REGISTRY``.

What a venue describes:

* **Connections** (``ws_connections``): the websocket URLs to open, the streams each carries and
  the text frames to send after connecting (venues that subscribe by message; none for a venue
  that publishes only over HTTP, which then runs on its polls alone); an application
  ping frame and its interval where the venue wants one (``PING_FRAME``); how to tell a frame's
  stream without parsing it (``stream_of``); the longest normal silence per stream kind
  (``SILENCE_LIMIT_S``) and the maximum connection age.
* **Book resync** (``BOOK_RESYNC``): fetch a REST snapshot (``book_snapshot_url``), or wait for
  the venue to push one in-stream after resubscribing; the sequencing and checksum rules the one
  book-sync state machine applies (``rules``, see ``ingest.book_sync.SyncRules``).
* **Reference data**: the REST bodies to fetch at start (``reference_urls``), which symbols are
  tradable (``tradable_symbols``) and the ``Instrument`` records that say each one's units.
* **Mapping**: websocket frames and REST bodies to records (``map_ws``, ``map_rest``), pure and
  raising ``SkipMessage``/``MalformedMessage``; trade-id sequencing for gap detection and the
  REST request that backfills a gap (``trade_sequence``, ``trades_url``); for venues whose trade
  ids are no sequence, the REST pages that catch trades up since a time (``trades_before_url``,
  ``trade_page``, ``map_trade_page``, ``known_records``; a mapper returns ``TradesUncertain``
  where it knows trades may be missing); open-interest polls for venues that do not push it
  (``open_interest_url``); other REST requests repeated at an interval of their own, for data a
  venue publishes only over HTTP (``polls``).
* **Order book**: whether the venue has one at all (``HAS_ORDER_BOOK``; an oracle/pool venue
  has none, and depth analytics have nothing to read there).
* **REST limits**: the weight budget and the header that reports what is used; for venues whose
  REST API is POST-only, how a request URL is sent (``rest_request``).
* **Forced fills** (``FORCED_TRADE_TYPES``): the ``Trade.trade_type`` words that mark a fill the
  venue forced (liquidation, auto-deleveraging, insurance fund), so taker-flow analytics can
  leave them out; empty where the public tape does not tell them apart.
* **Coverage** (``COVERAGE``): for each kind of data, whether the venue's public feeds give all
  of it, a sample, a lower bound, a model or nothing, with the reason; users see it in
  ``perpflow venues`` and ``meta.venue_coverage``, analytics label their totals with it.
* **Recordings**: the event time that orders a recorded message (``message_time_ms``) and
  whether a message looks like this venue's at all (``recognizes``), so that replaying another
  venue's traffic is an error naming the likely venue rather than a silent zero.
"""

from __future__ import annotations

import enum
from abc import ABC, abstractmethod
from dataclasses import dataclass
from typing import ClassVar


class SkipMessage(Exception):
    """A well-formed message perpflow deliberately does not collect; the text is the reason."""


class MalformedMessage(ValueError):
    """A message that cannot be mapped; the text says what is wrong with it."""


class BookResync(enum.Enum):
    REST_SNAPSHOT = "rest_snapshot"    # buffer deltas, fetch ``book_snapshot_url``, bridge (Binance)
    RESUBSCRIBE = "resubscribe"        # the venue pushes a snapshot on (re)subscribe (Bybit, OKX)


class Coverage(enum.Enum):
    """How much of one kind of data a venue's public feeds give (``Venue.COVERAGE``)."""

    COMPLETE = "complete"          # every event; a loss is detected and recovered, or reported
    SAMPLED = "sampled"            # the venue publishes a subset (e.g. one liquidation per symbol per second)
    LOWER_BOUND = "lower bound"    # only some events can be identified in the public data
    MODELLED = "modelled"          # perpflow estimates it; the venue publishes nothing direct
    UNAVAILABLE = "unavailable"    # not public, or not collected


#: The kinds of data every venue states its coverage of, and what each means.
DATA_KINDS: dict[str, str] = {
    "trades": "public trades (raw.trades)",
    "book": "order book (raw.book_snapshots, raw.book_deltas)",
    "funding": "funding rates (raw.funding rate)",
    "mark_price": "mark price (raw.funding mark_price)",
    "index_price": "index or oracle price (raw.funding index_price)",
    "open_interest": "open interest (raw.open_interest)",
    "liquidations": "liquidations (raw.liquidations)",
    "adl": "auto-deleveraging fills and states (raw.adl_events)",
    "long_short_ratios": "the venue's own long/short ratios per period (raw.long_short_ratios)",
    "taker_volumes": "the venue's own taker buy/sell volume per period (raw.taker_volumes)",
}


@dataclass(frozen=True)
class Poll:
    """A REST request the live service repeats while it runs (``Venue.polls``)."""

    url: str                            # perpflow's name of the request, as ``map_rest`` receives it
    interval_s: float                   # at most one request per interval (the venue's update cadence)
    weight: int = 1                     # its cost in ``REST_WEIGHT_LIMIT`` units


@dataclass(frozen=True)
class TradesUncertain:
    """Not a record: a mapper returns it among its records (the feed handler hands it to the service,
    never to Kafka) when trades of a market received since ``since_ms`` (venue time) may be
    incomplete, e.g. a message lost on a connection whose trade ids tell nothing; the service then
    catches the market's trades up from REST (``Venue.trades_before_url``)."""

    symbol_native: str
    since_ms: int
    reason: str


@dataclass(frozen=True)
class TradePage:
    """What one page of a venue's newest-first REST trade history says about paging on."""

    oldest_ms: int | None               # venue time of the oldest trade on the page (None: no trade)
    older: object | None                # the venue's cursor for the next, older page (None: there is none)


@dataclass(frozen=True)
class WsConnection:
    """One websocket connection to open."""

    route: str                          # a name for the connection, unique per venue
    url: str
    streams: tuple[str, ...]            # the venue's names of the streams it carries
    subscribe: tuple[str, ...] = ()     # text frames sent once connected


class VenueClock:
    """The venue's time for messages that carry none (Hyperliquid's activeAssetCtx, GMX's market
    values): the time of the last timed message received plus what the receive clock has run since,
    the receive time itself before any. Keeps untimed records on the venue's time line when it
    differs from perpflow's clock (a skewed host, a replay, the simulator)."""

    def __init__(self):
        self._last: tuple[int, int] | None = None     # (venue ms, ts_recv ns)

    def tick(self, venue_ms: int, ts_recv: int) -> None:
        self._last = (venue_ms, ts_recv)

    def at(self, ts_recv: int) -> int:
        if self._last is None:
            return ts_recv // 1_000_000
        venue_ms, then = self._last
        return venue_ms + max(0, ts_recv - then) // 1_000_000


class Venue(ABC):
    exchange: ClassVar[str]             # the registry id, e.g. "binance-usdm"
    default_ws_url: ClassVar[str]
    default_rest_url: ClassVar[str]
    BOOK_RESYNC: ClassVar[BookResync]
    SYMBOL_PATTERN: ClassVar[str]       # a native symbol, upper case (checks CLI arguments)
    SYMBOL_EXAMPLES: ClassVar[str]      # e.g. "BTCUSDT,ETHUSDT", for error messages
    #: Longest normal silence per stream kind before a connection counts as stalled (None: may be
    #: silent for hours, e.g. liquidations in a calm market). Keys are ``stream_kind`` values.
    SILENCE_LIMIT_S: ClassVar[dict[str, float | None]]
    TRADE_STREAM: ClassVar[str]         # the stream kind carrying trades
    BOOK_STREAM: ClassVar[str]          # the stream kind carrying the order book
    MAX_CONNECTION_AGE_S: ClassVar[float | None] = None   # the venue closes older connections
    PING_FRAME: ClassVar[str | None] = None               # application-level keepalive, if any
    PING_INTERVAL_S: ClassVar[float] = 20.0
    PONG_FRAME: ClassVar[str | None] = None               # a keepalive reply that is not JSON: dropped
    SUBSCRIBE_REQUESTS_PER_HOUR: ClassVar[int | None] = None  # per connection, where the venue caps them
    REST_WEIGHT_LIMIT: ClassVar[int]    # per minute, in the venue's weight units
    WEIGHT_HEADER: ClassVar[str | None] = None            # response header with the weight used
    HAS_ORDER_BOOK: ClassVar[bool] = True                 # False: no book at all (trades against a pool)
    #: How much older than the newest trade received a trade may still arrive (trades stamped with a
    #: block's time, sent together): catch-ups by time (``trades_before_url``) reach back this much more.
    TRADE_TIME_SLACK_MS: ClassVar[int] = 0

    rules: object                       # ``ingest.book_sync.SyncRules`` for this venue's books
    #: Per ``DATA_KINDS`` key: how complete the venue's public data is, and why (``perpflow venues``,
    #: ``meta.venue_coverage``).
    COVERAGE: ClassVar[dict[str, tuple[Coverage, str]]] = {}
    #: ``Trade.trade_type`` values of forced fills (see the module docstring).
    FORCED_TRADE_TYPES: ClassVar[frozenset[str]] = frozenset()

    # --- symbols and streams ---------------------------------------------------------------

    @abstractmethod
    def normalize_symbol(self, native: str) -> str:
        """The venue's symbol -> perpflow's ``BASE-QUOTE-PERP`` / ``BASE-QUOTE-<expiry>``."""

    @abstractmethod
    def ws_connections(self, ws_url: str, symbols: list[str]) -> list[WsConnection]:
        """The connections that carry every collected stream of the given native symbols."""

    @abstractmethod
    def stream_kind(self, stream: str) -> str:
        """A stream name without its symbol, e.g. ``btcusdt@depth@100ms`` -> ``depth@100ms``."""

    @abstractmethod
    def stream_symbol(self, stream: str) -> str:
        """The native symbol a stream is about."""

    @abstractmethod
    def stream_of(self, frame: str) -> str | None:
        """The stream a raw frame belongs to, cheaply (None: a control frame or unknown)."""

    # --- mapping ---------------------------------------------------------------------------

    @abstractmethod
    def map_ws(self, message, ts_recv: int) -> list:
        """One parsed websocket message -> records; raises SkipMessage / MalformedMessage."""

    @abstractmethod
    def map_rest(self, url: str, body, ts_recv: int) -> list:
        """One parsed REST body (from ``url``) -> records; raises SkipMessage / MalformedMessage."""

    def trade_sequence(self, trade) -> tuple[int, int] | None:
        """The first and last ids the trade covers in a per-symbol id sequence without holes, where
        the venue has one (an aggregated trade can cover several consecutive ids)."""
        return None

    # --- REST ------------------------------------------------------------------------------

    def trades_url(self, rest_url: str, native: str, from_id: int, limit: int = 1000) -> str | None:
        """The request for (at most ``limit``) trades from sequence id ``from_id`` on; the answer may
        hold fewer, or also older ones (None: gaps cannot be backfilled)."""
        return None

    def trades_before_url(self, rest_url: str, native: str, cursor: object | None) -> str | None:
        """A page of the venue's trade history, newest first: the newest trades (``cursor`` None) or the
        page ``trade_page`` named as the next older one. How venues whose trade ids are no sequence
        catch up trades missed (a reconnect, a lost message, a restart): pages back from now until
        one reaches the time of the last trade received; the mapper drops trades it already has.
        None: the venue has no such history."""
        return None

    def trade_page(self, url: str, body) -> TradePage:
        """The oldest trade time on one ``trades_before_url`` page and the cursor of the next older
        page; pure (``map_rest`` maps the same body); raises MalformedMessage."""
        raise NotImplementedError(f"{self.exchange} has no paged trade history")

    def map_trade_page(self, url: str, body, ts_recv: int, since_ms: int) -> list:
        """A ``trades_before_url`` page -> the records of its trades at or after ``since_ms``, mapped
        as the stream's (those before it were received already; a mapper that remembers trades must
        not remember them either). The default maps the page and drops the older records."""
        return [r for r in self.map_rest(url, body, ts_recv)
                if getattr(r, "ts_exchange", None) is None or r.ts_exchange >= since_ms]

    def known_records(self, records) -> None:
        """Records already published (found durable in Kafka and the spill on a restart: trades and
        funding): the mapper drops them when a backlog, a REST page or a poll repeats them. Venues
        whose trade ids are a sequence and whose polls repeat nothing need nothing."""

    def rest_request(self, url: str) -> tuple[str, bytes | None]:
        """How to fetch one of the venue's REST ``url``: the address to send to and a JSON body to
        POST (None: GET ``url`` itself). Venues whose REST API takes POSTed JSON name each request
        by a URL of their own and translate it here; ``map_rest`` receives that URL."""
        return url, None

    def book_snapshot_url(self, rest_url: str, native: str) -> str | None:
        """The REST book snapshot request, for ``BookResync.REST_SNAPSHOT`` venues."""
        return None

    def resubscribe_frames(self, stream: str) -> tuple[str, ...]:
        """The frames that make the venue push a fresh snapshot of one stream
        (``BookResync.RESUBSCRIBE`` venues)."""
        return ()

    def open_interest_url(self, rest_url: str, native: str) -> str | None:
        """The open-interest poll for venues that do not push it (None: it arrives in-stream)."""
        return None

    def polls(self, rest_url: str, symbols: list[str]) -> list[Poll]:
        """REST requests to repeat, each at its own interval, while the service runs (data the venue
        publishes only over HTTP); the service keeps them within ``REST_WEIGHT_LIMIT`` and hands
        each answer to ``map_rest``. Open interest per symbol stays ``open_interest_url``."""
        return []

    @abstractmethod
    def reference_urls(self, rest_url: str) -> dict[str, str]:
        """Reference bodies fetched at start, by name; ``"instruments"`` is required."""

    @abstractmethod
    def apply_reference(self, name: str, body) -> None:
        """Take in one reference body (instrument list, funding intervals, ...)."""

    @abstractmethod
    def tradable_symbols(self) -> set[str]:
        """Native symbols the venue trades, after ``apply_reference``."""

    @abstractmethod
    def instruments(self, ts_recv: int) -> list:
        """``Instrument`` records for what ``apply_reference`` took in."""

    # --- recordings ------------------------------------------------------------------------

    @abstractmethod
    def message_time_ms(self, message) -> int | None:
        """The venue's event time of a raw message (orders JSONL recordings without receive times)."""

    @abstractmethod
    def recognizes(self, message) -> bool:
        """Whether a parsed message has this venue's envelope and field names."""

    def recorded_rest(self, message) -> tuple[str, object] | None:
        """A REST response kept inside a JSONL recording line (e.g. tardis-style generated
        snapshots): the URL path and query it answers and its body; None for a websocket message."""
        return None
