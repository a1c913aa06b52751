"""dYdX v4 perpetuals (indexer ``wss://indexer.dydx.trade/v4/ws``, REST ``https://indexer.dydx.trade/v4``):
raw messages -> records.

Source: ``shared/specs/exchanges.md`` §2.5 (and §0.5, §2.8, §2.9 where they mention dYdX),
``shared/specs/analytics.md`` §9.1-9.6. "Code reading" below is the spec's word for what it derived
from the indexer's source rather than its documentation. Every dYdX quirk lives here and nowhere else:
  * envelope: every server message is ``{"type", "connection_id", "message_id", ...}`` with ``type``
    one of ``connected`` (``message_id`` 0, on connect), ``subscribed`` (the initial state in
    ``contents``), ``unsubscribed``, ``channel_data`` (one update in ``contents``),
    ``channel_batch_data`` (only with ``"batched": true``: ``contents`` is a *list* of updates,
    applied in order), ``error`` and ``pong``; subscriptions are one request per channel and
    market, ``{"type": "subscribe", "channel": "v4_trades", "id": "BTC-USD", "batched": false}``
    (``v4_markets`` has no ``id``: one subscription covers every market);
  * ``message_id`` counts every message of the **connection** (all channels), not a per-book
    sequence: there is no per-market gap detection, only a hole in the connection's counter. The
    ``subscribed`` reply takes its id when the request is read but is sent after a REST fetch, so
    it may arrive *after* higher-numbered ``channel_data`` (code reading);
  * order books have no checksum and no sequence, and **cross in normal operation**: the book is
    one indexer node's view of the mempool ("There is no guarantee that prices do not cross"),
    "ordering is only guaranteed per-order, and not per price-level", and the indexer's
    ``uncross-orderbook`` task deletes stale crossing levels from its cache without telling
    websocket subscribers, so stale levels persist client-side (nautilus_trader #2075). The
    ``subscribed`` snapshot is REST ``/orderbooks/perpetualMarket/{ticker}`` (uncrossed, at most
    100 levels a side; deltas may touch levels beyond them: they are inserted) with levels as
    objects ``{"price", "size"}``; updates have levels as ``[price, size]`` pairs, either side may
    be absent, sizes are absolute and "0" deletes. Code reading: the snapshot is fetched *before*
    the subscription is registered, so updates during the fetch are lost for that subscriber;
  * ``v4_trades``: ``contents.trades`` = ``[{id, size, price, side, createdAt, type[, createdAtHeight]}]``;
    ``side`` is the taker's; ``type`` is ``LIMIT``, ``MARKET``, ``TWAP_SUBORDER``, ``LIQUIDATED``
    (the taker is the liquidated subaccount: ``SELL`` = a long liquidated) or ``DELEVERAGED`` (the
    taker is an underwater subaccount closed by deleveraging against an offsetting one). The feed
    is public and **complete**: every fill, every liquidation, every deleveraging. Trade ids are
    hex strings, unique but **not consecutive**. The ``subscribed`` backlog repeats recent trades;
  * ``v4_markets``: ``subscribed`` has ``contents.markets{ticker: {...}}`` with every field; updates
    are partial, ``contents.trading{ticker: {...}}`` (every 30 s: open interest, next funding rate,
    24 h statistics, status) and/or ``contents.oraclePrices{ticker: {oraclePrice, effectiveAt, ...}}``
    (each on-chain oracle update); ``openInterest`` is in base units and counts the **long side**
    only (one-sided, as §2.9 wants it); there is no mark or index price besides the oracle;
    ``nextFundingRate`` is the predicted **1-hour** rate of the running hour; funding settles hourly;
  * no timestamps on book or market-trading messages; times are ISO 8601 strings
    (``2024-08-23T00:00:57.627Z``);
  * numbers are decimal strings; the indexer formats them with big.js, which writes numbers below
    1e-7 in exponent notation (``1e-9``) [big.js default; unverified for the indexer's settings],
    so exponents are accepted (and range-checked), signs only on funding rates;
  * keepalive: the server sends protocol pings every 30 s (the websocket library answers); a JSON
    ``{"type": "ping"}`` is accepted without reply, so no application ping is sent;
  * limits (socks defaults; production may differ): 32 subscriptions per channel per connection,
    2 subscribe requests per second per (channel, id), otherwise an error and close 1008; REST
    100 requests per 10 s per IP, no header reporting the use;
  * REST error bodies are ``{"errors": [{"msg": ...}]}``.

Choices where the spec leaves one:
  * symbols: ``BTC-USD`` -> ``BTC-USDC-PERP``. The market is named for USD, but its quote and
    collateral asset is USDC (the protocol's asset 0), it is linear, and perpflow spells
    ``-USD-PERP`` for *inverse* contracts (Binance COIN-M ``BTCUSD_PERP``, OKX ``BTC-USD-SWAP``)
    and ``-USDC-PERP`` for USDC-margined linear ones (Bybit, Hyperliquid). Native symbols are the
    tickers themselves (``BASE-USD``);
  * connections: at most ``MARKETS_PER_CONNECTION`` markets a connection (book and trades each,
    well inside 32 per channel), ``v4_markets`` once, on the first; every subscription unbatched,
    as the spec's example (one ``message_id`` per update, so a lost message is narrowed to one);
    ``channel_batch_data`` is mapped anyway (recordings made with ``batched: true``);
  * ``message_id`` holes: per connection (``connection_id``) the mapper tracks the ids seen. An id
    skipped by a later one is *missing*, not yet lost: a ``subscribed`` reply may still bring it.
    It counts as lost once ``LATE_REPLY_S`` of receive time or ``LATE_REPLY_MESSAGES`` messages
    have passed without it, or at once when a new connection opens (the old one closed with its
    hole, so the ids can never come; a connection still open only gets an extra catch-up): then a
    ``message_gap`` feed event (symbol None) names the ids, and
    **every book on that connection** resyncs (the spec: a hole = resubscribe everything on the
    connection; the lost message may have been any book's) — each book's next update breaks its
    chain. Trades and markets cannot be resynced that way: the feed event marks the interval in
    which they may be incomplete. A ``channel_data`` whose id repeats or runs backwards is
    dead-lettered; a late reply (``subscribed``/``unsubscribed``/``error``) is taken whenever it comes;
  * book records: ``BookSnapshot`` from ``subscribed``, ``seq`` = its ``message_id``, reason
    "venue"; ``BookDelta.first_seq`` = ``last_seq`` = the update's ``message_id`` and
    ``prev_seq`` = perpflow's: the ``message_id`` of the previous message of the same book on the
    same connection while no message of that connection went missing in between, else None (a
    break). ``DydxSyncRules`` chains on it. ``ts_exchange`` is the receive time (no venue time). A
    book update that is dead-lettered breaks its book's chain the same way (the book lost it);
  * uncrossing: the state machine applies the dYdX documentation's rule (1) through the
    ``uncross`` hook (``DydxSyncRules.uncross``): while best bid >= best ask, the older of the two
    top levels (by the ``message_id`` that last set it) goes; equal ids net the sizes (the
    smaller side goes, the larger is reduced). A crossed update is therefore not a gap here; a
    crossed *snapshot* still is (the indexer uncrosses the REST book it is built from, and one
    snapshot's levels all have the same id). Each update that needed it is an ``uncross_events``
    count of the book sync (``uncrossed_levels_removed`` counts the levels), and every snapshot
    record carries in ``uncrossed`` how often its book was uncrossed since the previous one
    (0 for none) so depth analytics can leave those out. Raw deltas are stored as received;
  * the book is refreshed every ``BOOK_REFRESH_S`` (60 s [spec: assumption]) by resubscribing
    (``refresh_ms`` of the sync rules), so stale levels the venue never deletes do not pile up;
    the same resubscribe serves gaps. ``SUBSCRIBE_REQUESTS_PER_HOUR`` is None: dYdX limits the
    rate per (channel, id) per second, not per hour;
  * trades: one ``Trade`` per fill, ``is_aggregated`` False, ``qty_unit`` "base", ``trade_type`` =
    ``type`` verbatim (None if absent). A ``LIQUIDATED`` fill is also a ``Liquidation``
    (``order_side`` = the taker side, ``SELL`` -> long liquidated; ``price`` = ``avg_price`` = the
    fill price: no bankruptcy price is published; ``is_sampled`` **False**: the feed is complete;
    one record per fill). A ``DELEVERAGED`` fill is also an ``Adl`` fill: dYdX calls the
    *underwater* (taker) subaccount "deleveraged", perpflow's ``deleveraged_position`` is the
    profitable offsetting one, whose position ADL reduced: taker ``SELL`` (an underwater long
    closed) -> "short"; ``detail`` keeps ``side`` (and ``createdAtHeight``) verbatim;
  * trade de-duplication: the ``subscribed`` backlog and REST pages repeat trades already
    received, so the last ``TRADES_REMEMBERED`` (ticker, id) pairs are remembered (only once a
    whole message is valid) and repeats are dropped; a message of repeats only is skipped;
  * trade ids are not consecutive, so ``trade_sequence`` and ``trades_url`` keep the contract's
    None: a lost trade cannot be told from the ids. Trades are caught up by time instead
    (``trades_before_url``/``trade_page``): REST ``/trades/perpetualMarket/{ticker}`` lists every
    taker fill newest first by block height; ``createdBeforeOrAtHeight`` pages back (inclusive:
    the oldest block of a page comes again, its trades dropped as repeats) and ``page`` steps
    through a block that fills a whole page (comlink's trades controller; the spec's
    ``startingBeforeOrAtHeight`` is not a parameter the indexer reads). The service pages back to
    the newest trade received after a reconnect and at start, and, when a ``message_id`` hole is
    declared, to the newest trade of each market on that connection at the time the first missing
    id was noticed (a ``TradesUncertain`` per market the connection carried trades of); ``map_rest``
    maps the pages through the same ``trades`` as the stream (liquidations and ADL fills included,
    repeats dropped). ``known_records`` takes the trades (and settlements) a restart found durable. Pages are
    ``TRADES_PAGE_LIMIT`` trades (comlink's ``API_LIMIT_V4``, 1000 [code reading]);
  * markets: merged per ticker (only the fields perpflow uses, each validated before it is
    merged). A ``Funding`` record is emitted when the rate or the oracle price changes: ``rate``
    = ``nextFundingRate`` (the predicted hourly rate), ``interval_hours`` 1,
    ``next_funding_time`` None (funding ticks are on-chain epochs; their times are not in the
    feed), ``index_price`` = the oracle price and ``mark_price`` None. The spec says to store the
    oracle as mark *and* index (tardis maps it to mark); perpflow keeps mark None so that no
    mark/index premium of exactly 0 is ever computed for a venue that has no mark (analytics
    §9.2: dYdX publishes ``last/oracle - 1`` instead). ``OpenInterest`` is emitted when
    ``openInterest`` changes: one-sided base units, ``open_interest_usd`` = open interest x
    oracle (exact, in decimal; §2.5's OI_usd), since no mark is pushed. ``ts_exchange`` is the
    oracle update's ``effectiveAt``, else the receive time. Market status changes reach the
    ``Instrument`` records through the hourly reference re-read, not the stream;
  * REST: ``/perpetualMarkets`` gives the instruments (linear, USDC-settled, base units, ``tickSize``,
    ``stepSize``, funding every hour, status verbatim; ``ACTIVE`` ones are tradable; entries that
    are not usable are listed in ``rejected_instruments``); ``/historicalFunding/{ticker}`` gives
    settled rates (``is_realised`` True, ``index_price`` = the oracle at the tick,
    ``next_funding_time`` = ``ts_exchange`` = ``effectiveAt``: the settlement the rate was paid
    at), polled hourly per market (``polls``); a settlement is published once: rows at or before
    the newest one already mapped for the market are dropped (every poll's page repeats the last
    ``FUNDING_PAGE_LIMIT`` hours). They are separate rows from the stream's ``nextFundingRate``
    (``is_realised`` False), the prediction of the same hour: the stream never gives a settled
    rate, so nothing the stream gave is repeated; ``/orderbooks/perpetualMarket/{ticker}`` is skipped (it has no ``message_id`` and cannot
    bridge the websocket book: the ``subscribed`` snapshot is used instead);
  * ``perpflow ingest --redundancy N`` cannot merge dYdX replicas: each connection's frames carry
    their own ``connection_id`` and ``message_id``, so the byte-level merger never sees a
    duplicate. Trades would still be de-duplicated here, but two connections' deltas would break
    each other's book chains: run dYdX with one connection per route.
"""

from __future__ import annotations

import datetime as dt
import re
from collections import OrderedDict
from decimal import Decimal
from functools import lru_cache
from typing import ClassVar
from urllib.parse import parse_qs, quote, urlsplit

import orjson

from ingest.records import (Adl, BookDelta, BookSnapshot, FeedEvent, Funding, Instrument, Liquidation, OpenInterest,
                            Trade)
from ingest.venue import (BookResync, Coverage, MalformedMessage, Poll, SkipMessage, TradePage, TradesUncertain, Venue,
                          WsConnection)
from ingest.venues.fields import DecimalSyntax, field, integer

NUMBERS = DecimalSyntax(exponent=True)   # big.js strings: exponents below 1e-7; signs only on rates

MESSAGE_TYPES = ("connected", "subscribed", "unsubscribed", "channel_data", "channel_batch_data", "error", "pong")
LATE_KINDS = ("subscribed", "unsubscribed", "error")   # replies that may come after higher ids
MARKETS_PER_CONNECTION = 20
FUNDING_INTERVAL_HOURS = 1
BOOK_REFRESH_S = 60
LATE_REPLY_S = 10.0                 # a missing message_id is lost after this much receive time...
LATE_REPLY_MESSAGES = 10_000        # ... or this many later messages
MISSING_TRACKED = 100_000           # a larger jump is lost at once, not tracked id by id
CONNECTIONS_REMEMBERED = 256
TRADES_REMEMBERED = 200_000
TRADES_PAGE_LIMIT = 1000            # the indexer's most rows per page (comlink API_LIMIT_V4)
FUNDING_POLL_S = 3600.0             # settlements are hourly
FUNDING_PAGE_LIMIT = 100            # a poll's page: the last 100 hourly settlements
SETTLE_ASSET = "USDC"               # the protocol's quote and collateral asset (asset 0)

TICKER = re.compile(r"([A-Z0-9][A-Z0-9.]*)-USD")
_ISO = re.compile(r"([0-9]{4})-([0-9]{2})-([0-9]{2})T([0-9]{2}):([0-9]{2}):([0-9]{2})(?:\.([0-9]{1,9}))?Z")
_CHANNEL = re.compile(r'"channel"\s*:\s*"([^"]+)"')
_ID = re.compile(r'"id"\s*:\s*"([^"]+)"')
_EPOCH = dt.datetime(1970, 1, 1, tzinfo=dt.timezone.utc)

SKIPPED_CHANNELS = {
    "v4_candles": "v4_candles: candles are built from trades in the warehouse",
    "v4_subaccounts": "v4_subaccounts: private channel, not collected",
    "v4_parent_subaccounts": "v4_parent_subaccounts: private channel, not collected",
    "v4_block_height": "v4_block_height: not collected",
}


@lru_cache(maxsize=8192)
def normalize_symbol(native: str) -> str:
    """BTC-USD -> BTC-USDC-PERP (see the module docstring)."""
    match = TICKER.fullmatch(native)
    if match is None:
        raise MalformedMessage(f"{native!r} is not a dYdX perpetual market ticker like BTC-USD")
    return f"{match[1]}-{SETTLE_ASSET}-PERP"


@lru_cache(maxsize=65536)
def _millis_of(text: str) -> int | None:
    match = _ISO.fullmatch(text)
    if match is None:
        return None
    year, month, day, hour, minute, second = map(int, match.groups()[:6])
    try:
        moment = dt.datetime(year, month, day, hour, minute, second, tzinfo=dt.timezone.utc)
    except ValueError:
        return None
    whole = (moment - _EPOCH) // dt.timedelta(seconds=1)
    return whole * 1000 + int(((match[7] or "") + "000")[:3])


def _millis(obj, key: str, what: str) -> int:
    value = field(obj, key, what)
    millis = _millis_of(value) if type(value) is str else None
    if millis is None:
        raise MalformedMessage(f"{what}: field {key!r} must be an ISO 8601 UTC time like "
                               f"2024-08-23T00:00:57.627Z, got {value!r}")
    return millis


def _ticker(obj, key: str, what: str) -> tuple[str, str]:
    """(symbol, native) of a ticker field."""
    native = field(obj, key, what)
    if not isinstance(native, str):
        raise MalformedMessage(f"{what}: field {key!r} must be a market ticker, got {native!r}")
    return normalize_symbol(native), native


def _object(obj, key: str, what: str) -> dict:
    value = field(obj, key, what)
    if not isinstance(value, dict):
        raise MalformedMessage(f"{what}: field {key!r} must be an object, got {type(value).__name__}")
    return value


def _list(obj, key: str, what: str) -> list:
    value = field(obj, key, what)
    if not isinstance(value, list):
        raise MalformedMessage(f"{what}: field {key!r} must be a list, got {type(value).__name__}")
    return value


def _object_levels(obj, key: str, what: str) -> list:
    """Snapshot levels ``[{"price", "size"}, ...]`` -> ``[[price, size], ...]``, strings verbatim."""
    where = f"{what} {key!r} level"
    out = []
    for level in _list(obj, key, what) if key in obj else ():
        if not isinstance(level, dict):
            raise MalformedMessage(f"{what}: field {key!r} has a level that is not {{price, size}}: {level!r}")
        out.append([NUMBERS.price(level, "price", where), NUMBERS.amount(level, "size", where)])
    return out


def _ranges(ids: list[int]) -> list[list[int]]:
    out: list[list[int]] = []
    for i in sorted(ids):
        if out and out[-1][1] + 1 == i:
            out[-1][1] = i
        else:
            out.append([i, i])
    return out


class DydxSyncRules:
    """Books chain on perpflow's ``prev_seq`` (the book's previous ``message_id`` on an unbroken
    connection; None = a break); crossed books are uncrossed by the documentation's rule (1);
    books are refreshed every minute."""

    refresh_ms = BOOK_REFRESH_S * 1000

    def is_stale(self, delta: BookDelta, snapshot_seq: int | None) -> bool:
        # Sent before the (re)subscription the snapshot answers: contained in it or superseded.
        return snapshot_seq is not None and delta.last_seq is not None and delta.last_seq <= snapshot_seq

    def bridges(self, delta: BookDelta, snapshot_seq: int | None) -> bool:
        return delta.prev_seq is not None and delta.prev_seq == snapshot_seq

    def continues(self, delta: BookDelta, previous: BookDelta) -> bool:
        return delta.prev_seq is not None and delta.prev_seq == previous.last_seq

    @staticmethod
    def uncross(bid: tuple, ask: tuple) -> tuple[float, float]:
        """Rule (1): the older of the two crossing levels goes; equal ages net the sizes."""
        _, bid_qty, bid_seq = bid
        _, ask_qty, ask_seq = ask
        if bid_seq is not None and ask_seq is not None and bid_seq != ask_seq:
            return (0.0, ask_qty) if bid_seq < ask_seq else (bid_qty, 0.0)
        rest = float(Decimal(repr(bid_qty)) - Decimal(repr(ask_qty)))   # exact for the venue's decimals
        return (rest, 0.0) if rest > 0 else (0.0, -rest)


class _Connection:
    """What the mapper knows of one websocket connection (by ``connection_id``)."""

    __slots__ = ("last_id", "missing", "epoch", "books", "trade_markets", "trade_marks")

    def __init__(self):
        self.last_id: int | None = None    # highest message_id received
        self.missing: dict[int, int] = {}  # skipped message_id -> receive time (ns) it was noticed
        self.epoch = 0                     # holes so far: a book's chain holds within one epoch
        self.books: dict[str, tuple[int, int]] = {}   # ticker -> (its last book message_id, epoch)
        self.trade_markets: set[str] = set()          # tickers whose trades came on this connection
        # ticker -> venue time of its newest trade when the oldest missing id was noticed: a lost
        # message held no trade older than that
        self.trade_marks: dict[str, int | None] = {}


class DydxV4(Venue):
    exchange = "dydx-v4"
    default_ws_url = "wss://indexer.dydx.trade"
    default_rest_url = "https://indexer.dydx.trade"
    WS_PATH = "/v4/ws"
    API = "/v4"
    BOOK_RESYNC = BookResync.RESUBSCRIBE
    SYMBOL_PATTERN = r"[A-Z0-9][A-Z0-9.]*-USD"
    SYMBOL_EXAMPLES = "BTC-USD,ETH-USD,SOL-USD"
    TRADE_STREAM = "v4_trades"
    BOOK_STREAM = "v4_orderbook"
    FORCED_TRADE_TYPES = frozenset({"LIQUIDATED", "DELEVERAGED"})
    #: Short-term orders live at most 20 blocks, so market makers requote every book within
    #: seconds; oracle prices change every block or two and trading updates come every 30 s.
    SILENCE_LIMIT_S: ClassVar[dict[str, float | None]] = {
        "v4_orderbook": 60.0, "v4_markets": 90.0, "v4_trades": None}
    COVERAGE = {
        "trades": (Coverage.COMPLETE, "v4_trades publishes every fill; ids are not consecutive, so trades missed "
                                      "(a reconnect, a message_id hole, a restart) are caught up by time from REST "
                                      "trades/perpetualMarket, paged back to the last trade received; a range "
                                      "REST cannot give is a trade_lost feed event"),
        "book": (Coverage.COMPLETE, "full depth as one indexer node sees it (deltas beyond the 100-level snapshot "
                                    "are inserted); crosses in normal operation: uncrossed locally and flagged "
                                    "(book_snapshots.uncrossed); resynced by resubscribing, every 60 s and on a "
                                    "message_id hole"),
        "funding": (Coverage.COMPLETE, "v4_markets nextFundingRate, the predicted 1-hour rate, every 30 s; settled "
                                       "hourly rates from REST historicalFunding, polled hourly (is_realised)"),
        "mark_price": (Coverage.UNAVAILABLE, "dYdX has no mark price: the oracle price is used for margin and "
                                             "liquidation (kept as index_price)"),
        "index_price": (Coverage.COMPLETE, "oracle price, v4_markets oraclePrices on every on-chain update"),
        "open_interest": (Coverage.SAMPLED, "v4_markets trading updates every 30 s; long side only (one-sided), "
                                            "base units"),
        "liquidations": (Coverage.COMPLETE, "every liquidation fill is a public v4_trades trade of type LIQUIDATED"),
        "adl": (Coverage.COMPLETE, "every deleveraging fill is a public v4_trades trade of type DELEVERAGED"),
        "long_short_ratios": (Coverage.UNAVAILABLE, "the indexer publishes no long/short statistic"),
        "taker_volumes": (Coverage.UNAVAILABLE, "the indexer publishes no taker-volume statistic; sum raw.trades by "
                                                "side"),
    }
    #: Fills carry their block's time and a block's fills are sent once it is indexed: one block
    #: (about a second) of slack before the newest trade received.
    TRADE_TIME_SLACK_MS = 1000
    REST_WEIGHT_LIMIT = 600      # 100 requests per 10 s per IP, one unit each, per minute
    WEIGHT_HEADER = None
    rules = DydxSyncRules()

    normalize_symbol = staticmethod(normalize_symbol)

    def __init__(self):
        self._markets_ref: dict[str, dict] = {}               # /perpetualMarkets entries, by ticker
        self.rejected_instruments: dict[str, str] = {}        # ticker -> why it is not usable
        self._markets: dict[str, dict] = {}                   # ticker -> merged v4_markets fields
        self._connections: OrderedDict[str, _Connection] = OrderedDict()
        self._trades_seen: OrderedDict = OrderedDict()
        self._newest_trade_ms: dict[str, int] = {}            # ticker -> createdAt of its newest trade mapped
        self._settled_newest: dict[str, int] = {}             # ticker -> effectiveAt of its newest settlement mapped
        self._events: list[FeedEvent] = []                    # message gaps not yet handed out

    # --- streams ---------------------------------------------------------------------------

    def ws_connections(self, ws_url: str, symbols: list[str]) -> list[WsConnection]:
        url = ws_url.rstrip("/") + self.WS_PATH
        connections = []
        groups = [symbols[i:i + MARKETS_PER_CONNECTION] for i in range(0, len(symbols), MARKETS_PER_CONNECTION)]
        for number, group in enumerate(groups or [[]], start=1):
            streams = [f"{channel}:{native}" for native in group for channel in (self.BOOK_STREAM, self.TRADE_STREAM)]
            if number == 1:
                streams.append("v4_markets")
            connections.append(WsConnection(f"indexer-{number}", url, tuple(streams),
                                            tuple(self._request("subscribe", s) for s in streams)))
        return connections

    def _request(self, kind: str, stream: str) -> str:
        channel, _, native = stream.partition(":")
        request = {"type": kind, "channel": channel}
        if native:
            request["id"] = native
        if kind == "subscribe":
            request["batched"] = False
        return orjson.dumps(request).decode()

    def stream_kind(self, stream: str) -> str:
        return stream.partition(":")[0]

    def stream_symbol(self, stream: str) -> str:
        """v4_orderbook:BTC-USD -> BTC-USD (v4_markets: "", it covers every market)."""
        return stream.partition(":")[2]

    def stream_of(self, frame: str) -> str | None:
        """``channel:id`` from the envelope: searched in the text before ``contents`` (whose trades
        have ids too), where the indexer writes it; parsed from the JSON if it is not there."""
        end = frame.find('"contents"')
        head = frame if end < 0 else frame[:end]
        channel = _CHANNEL.search(head)
        market = _ID.search(head)
        if channel is not None and (channel[1] == "v4_markets" or market is not None):
            return "v4_markets" if channel[1] == "v4_markets" else f"{channel[1]}:{market[1]}"
        if end < 0:
            return None     # a control frame (connected, pong, ...)
        try:
            message = orjson.loads(frame)
        except orjson.JSONDecodeError:
            return None
        channel, market = message.get("channel"), message.get("id")
        if channel == "v4_markets":
            return channel
        return f"{channel}:{market}" if isinstance(channel, str) and isinstance(market, str) else None

    def resubscribe_frames(self, stream: str) -> tuple[str, ...]:
        """Unsubscribe and subscribe again: the ``subscribed`` reply carries a fresh snapshot (two
        requests, within dYdX's 2 per second per channel and market)."""
        return self._request("unsubscribe", stream), self._request("subscribe", stream)

    # --- websocket -------------------------------------------------------------------------

    def map_ws(self, message, ts_recv: int) -> list:
        if not isinstance(message, dict):
            raise MalformedMessage(f"expected a JSON object, got {type(message).__name__}")
        kind = message.get("type")
        if kind not in MESSAGE_TYPES:
            raise MalformedMessage(f"field 'type' must be one of {', '.join(MESSAGE_TYPES)}, got {kind!r}")
        connection_id = message.get("connection_id")
        if not isinstance(connection_id, str) or not connection_id:
            raise MalformedMessage(f"{kind}: field 'connection_id' must be a non-empty string, got {connection_id!r}")
        message_id = integer(message, "message_id", kind)
        if message_id < 0:
            raise MalformedMessage(f"{kind}: field 'message_id' must be >= 0, got {message_id}")
        conn = self._track(connection_id, message_id, kind, ts_recv)
        try:
            records = self._dispatch(conn, kind, message, message_id, ts_recv)
        except SkipMessage:
            if not self._events:
                raise
            records = []
        events, self._events = self._events, []
        return events + records

    def _dispatch(self, conn: _Connection, kind: str, message: dict, message_id: int, ts_recv: int) -> list:
        if kind == "connected":
            raise SkipMessage("connected")
        if kind == "pong":
            raise SkipMessage("pong")
        if kind == "error":
            where = " ".join(str(message[k]) for k in ("channel", "id") if k in message)
            raise MalformedMessage(f"dYdX error{' (' + where + ')' if where else ''}: {message.get('message')!r}")
        channel = message.get("channel")
        if not isinstance(channel, str):
            raise MalformedMessage(f"{kind}: field 'channel' must be a string, got {channel!r}")
        if kind == "unsubscribed":
            if channel == self.BOOK_STREAM and isinstance(message.get("id"), str):
                conn.books.pop(message["id"], None)
            raise SkipMessage("unsubscribed")
        handler = self._handlers.get(channel)
        if handler is None:
            raise SkipMessage(SKIPPED_CHANNELS.get(channel, f"{channel}: channel not collected"))
        return handler(self, conn, kind, message, message_id, ts_recv)

    def _track(self, connection_id: str, message_id: int, kind: str, ts_recv: int) -> _Connection:
        """Account for one ``message_id`` of a connection; declare missing ids lost once they are
        too late to be a ``subscribed`` reply (a ``message_gap`` event; the connection's books resync)."""
        conn = self._connections.get(connection_id)
        if conn is None or kind == "connected":
            # A reconnect's catch-up starts at the newest trade received, which may be newer than
            # what the old connection's hole lost: its holes are declared now, from their marks.
            for other_id, other in self._connections.items():
                if other_id != connection_id and other.missing:
                    self._declare_lost(other_id, other, _ranges(sorted(other.missing)), ts_recv)
                    other.missing.clear()
            conn = self._connections[connection_id] = _Connection()
            while len(self._connections) > CONNECTIONS_REMEMBERED:
                self._connections.popitem(last=False)
        else:
            self._connections.move_to_end(connection_id)
        lost: list[int] = []
        if not conn.missing and conn.last_id is not None and message_id > conn.last_id + 1:
            conn.trade_marks = {n: self._newest_trade_ms.get(n) for n in conn.trade_markets}
        if conn.last_id is None:
            conn.last_id = message_id     # a connection first seen mid-stream (a recording's start)
        elif message_id > conn.last_id:
            skipped = message_id - conn.last_id - 1
            if skipped > MISSING_TRACKED:
                lost = [conn.last_id + 1, message_id - 1]
            else:
                for missing in range(conn.last_id + 1, message_id):
                    conn.missing[missing] = ts_recv
            conn.last_id = message_id
        elif message_id in conn.missing:
            del conn.missing[message_id]   # a late reply, as the venue sends them
        elif kind not in LATE_KINDS:
            raise MalformedMessage(f"{kind}: message_id {message_id} repeats or runs backwards on connection "
                                   f"{connection_id} (highest so far {conn.last_id})")
        expired = [i for i, noticed in conn.missing.items()
                   if ts_recv - noticed > LATE_REPLY_S * 1e9 or conn.last_id - i > LATE_REPLY_MESSAGES]
        for i in expired:
            del conn.missing[i]
        ranges = _ranges(expired) + ([lost] if lost else [])
        if ranges:
            self._declare_lost(connection_id, conn, ranges, ts_recv)
        return conn

    def _declare_lost(self, connection_id: str, conn: _Connection, ranges: list, ts_recv: int) -> None:
        """A ``message_gap`` event for lost ids; the connection's books resync and its markets'
        trades are caught up from the newest trade before the hole."""
        conn.epoch += 1
        count = sum(hi - lo + 1 for lo, hi in ranges)
        self._events.append(FeedEvent(
            exchange=self.exchange, symbol=None, kind="message_gap", ts_recv=ts_recv,
            detail=orjson.dumps({"connection_id": connection_id, "missing": ranges, "count": count,
                                 "effect": "every book on the connection resyncs; its trades are caught "
                                           "up from REST; markets received on it may be incomplete"}).decode()))
        for native in sorted(conn.trade_markets):
            since = conn.trade_marks.get(native, self._newest_trade_ms.get(native))
            if since is not None:      # no trade yet: the subscription's backlog is all there is
                self._events.append(TradesUncertain(native, since, f"message_id hole on {connection_id}"))

    # --- order book ------------------------------------------------------------------------

    def _orderbook(self, conn: _Connection, kind: str, message: dict, message_id: int, ts_recv: int) -> list:
        what = "v4_orderbook"
        try:
            symbol, native = _ticker(message, "id", what)
        except MalformedMessage:
            conn.epoch += 1    # some book lost this update, which one is unknown: all of them resync
            raise
        try:
            common = {"exchange": self.exchange, "symbol": symbol, "symbol_native": native,
                      "ts_exchange": ts_recv // 1_000_000, "ts_recv": ts_recv}
            if kind == "subscribed":
                contents = _object(message, "contents", what)
                snapshot = BookSnapshot(**common, bids=_object_levels(contents, "bids", what),
                                        asks=_object_levels(contents, "asks", what), seq=message_id, reason="venue")
                conn.books[native] = (message_id, conn.epoch)
                return [snapshot]
            updates = self._updates(kind, message, what)
            sides = [(NUMBERS.levels(update, "bids", what) if "bids" in update else [],
                      NUMBERS.levels(update, "asks", what) if "asks" in update else []) for update in updates]
        except MalformedMessage:
            conn.books.pop(native, None)   # this book lost an update: its next one breaks the chain
            raise
        last = conn.books.get(native)
        prev_seq = last[0] if last is not None and last[1] == conn.epoch else None
        out = []
        for bids, asks in sides:
            out.append(BookDelta(**common, bids=bids, asks=asks, first_seq=message_id, last_seq=message_id,
                                 prev_seq=prev_seq))
            prev_seq = message_id
        conn.books[native] = (message_id, conn.epoch)
        return out

    @staticmethod
    def _updates(kind: str, message: dict, what: str) -> list[dict]:
        """The update objects of a ``channel_data`` (one) or ``channel_batch_data`` (in order)."""
        if kind == "channel_data":
            return [_object(message, "contents", what)]
        updates = _list(message, "contents", what)
        if not updates or not all(isinstance(u, dict) for u in updates):
            raise MalformedMessage(f"{what}: batch 'contents' must be a non-empty list of objects")
        return updates

    # --- trades ----------------------------------------------------------------------------

    def _trades_channel(self, conn: _Connection, kind: str, message: dict, message_id: int, ts_recv: int) -> list:
        what = "v4_trades"
        symbol, native = _ticker(message, "id", what)
        conn.trade_markets.add(native)
        updates = [_object(message, "contents", what)] if kind == "subscribed" else self._updates(kind, message, what)
        items = [item for update in updates for item in _list(update, "trades", what)]
        return self.trades(native, items, ts_recv, what)

    def trades(self, native: str, items: list, ts_recv: int, what: str = "trades") -> list:
        """Trades (and the liquidations and ADL fills among them) of one market, oldest first,
        without those already received."""
        symbol = normalize_symbol(native)
        parsed = []
        for item in items:
            trade_id = field(item, "id", what)
            if not isinstance(trade_id, str) or not trade_id:
                raise MalformedMessage(f"{what}: field 'id' must be a trade id string, got {trade_id!r}")
            side = field(item, "side", what)
            if side not in ("BUY", "SELL"):
                raise MalformedMessage(f"{what}: field 'side' must be BUY or SELL, got {side!r}")
            trade_type = item.get("type")
            if trade_type is not None and not (isinstance(trade_type, str) and trade_type.isupper()):
                raise MalformedMessage(f"{what}: field 'type' must be an upper-case word, got {trade_type!r}")
            height = item.get("createdAtHeight")
            if height is not None and not (type(height) is str and height.isascii() and height.isdigit()):
                raise MalformedMessage(f"{what}: field 'createdAtHeight' must be a string of digits, got {height!r}")
            parsed.append((item, trade_id, side, trade_type, height))
        seen, keys, out = self._trades_seen, {}, []
        for item, trade_id, side, trade_type, height in sorted(parsed, key=lambda p: _millis(p[0], "createdAt", what)):
            key = (native, trade_id)
            if key in seen or key in keys:
                continue
            keys[key] = None
            trade = Trade(exchange=self.exchange, symbol=symbol, symbol_native=native,
                          ts_exchange=_millis(item, "createdAt", what), ts_recv=ts_recv, trade_id=trade_id,
                          price=NUMBERS.price(item, "price", what), qty=NUMBERS.quantity(item, "size", what),
                          qty_unit="base", side=side.lower(), is_aggregated=False, trade_type=trade_type)
            out.append(trade)
            common = {"exchange": self.exchange, "symbol": symbol, "symbol_native": native,
                      "ts_exchange": trade.ts_exchange, "ts_recv": ts_recv}
            if trade_type == "LIQUIDATED":
                out.append(Liquidation(**common, order_side=trade.side,
                                       liquidated_position="long" if side == "SELL" else "short",
                                       price=trade.price, avg_price=trade.price, qty=trade.qty, qty_unit="base",
                                       order_status=None, is_sampled=False))
            elif trade_type == "DELEVERAGED":
                detail = {"side": side, **({"createdAtHeight": height} if height is not None else {})}
                out.append(Adl(**common, event="fill", deleveraged_position="short" if side == "SELL" else "long",
                               price=trade.price, qty=trade.qty, qty_unit="base", trade_id=trade_id, state=None,
                               detail=orjson.dumps(detail).decode()))
        # Remembered only once the whole message is valid: a dead-lettered one must not hide its
        # trades when they come again (in a backlog or a REST page).
        seen.update(keys)
        while len(seen) > TRADES_REMEMBERED:
            seen.popitem(last=False)
        newest = max((r.ts_exchange for r in out if isinstance(r, Trade)), default=None)
        if newest is not None and newest > self._newest_trade_ms.get(native, -1):
            self._newest_trade_ms[native] = newest
        if not out:
            raise SkipMessage(f"{what}: repeated trades only" if parsed else f"{what}: no trades")
        return out

    # --- markets ---------------------------------------------------------------------------

    #: The market fields perpflow keeps in its merged state, each with its validator.
    MARKET_FIELDS: ClassVar[dict] = {"oraclePrice": NUMBERS.price, "nextFundingRate": NUMBERS.signed,
                                     "openInterest": NUMBERS.amount}

    def _markets_channel(self, conn: _Connection, kind: str, message: dict, message_id: int, ts_recv: int) -> list:
        what = "v4_markets"
        if kind == "subscribed":
            updates = [{"trading": _object(_object(message, "contents", what), "markets", what)}]
        else:
            updates = self._updates(kind, message, what)
        changes: list[tuple[str, dict, int]] = []     # (ticker, validated fields, ts_exchange)
        for update in updates:
            for part in ("trading", "oraclePrices"):
                if part not in update:
                    continue
                for native, values in _object(update, part, what).items():
                    where = f"{what} {part} {native}"
                    normalize_symbol(native)
                    if not isinstance(values, dict):
                        raise MalformedMessage(f"{where}: expected an object, got {type(values).__name__}")
                    taken = {key: check(values, key, where) for key, check in self.MARKET_FIELDS.items()
                             if values.get(key) is not None}
                    ts = _millis(values, "effectiveAt", where) if part == "oraclePrices" else ts_recv // 1_000_000
                    changes.append((native, taken, ts))
        out = []
        for native, taken, ts in changes:
            before = self._markets.get(native, {})
            state = self._markets[native] = {**before, **taken}
            out += self._market_records(native, before, state, ts, ts_recv)
        if not out:
            raise SkipMessage(f"{what}: nothing perpflow keeps changed")
        return out

    def _market_records(self, native: str, before: dict, state: dict, ts: int, ts_recv: int) -> list:
        common = {"exchange": self.exchange, "symbol": normalize_symbol(native), "symbol_native": native,
                  "ts_exchange": ts, "ts_recv": ts_recv}
        out = []
        oracle, rate = state.get("oraclePrice"), state.get("nextFundingRate")
        if (oracle or rate) and (oracle, rate) != (before.get("oraclePrice"), before.get("nextFundingRate")):
            out.append(Funding(**common, rate=rate, interval_hours=FUNDING_INTERVAL_HOURS if rate else None,
                               next_funding_time=None, mark_price=None, index_price=oracle, is_realised=False))
        open_interest = state.get("openInterest")
        if open_interest is not None and open_interest != before.get("openInterest"):
            usd = format(Decimal(open_interest) * Decimal(oracle), "f") if oracle else None
            out.append(OpenInterest(**common, open_interest=open_interest, qty_unit="base", open_interest_usd=usd))
        return out

    _handlers: ClassVar[dict] = {"v4_orderbook": _orderbook, "v4_trades": _trades_channel,
                                 "v4_markets": _markets_channel}

    # --- REST ------------------------------------------------------------------------------

    def map_rest(self, url: str, body, ts_recv: int) -> list:
        path = urlsplit(url).path.rstrip("/")
        if path.endswith(f"{self.API}/perpetualMarkets"):
            self.apply_reference("instruments", body)
            return self.instruments(ts_recv)
        head, _, native = path.rpartition("/")
        if head.endswith(f"{self.API}/trades/perpetualMarket"):
            return self.trades(native, _list(self._ok(body, "trades"), "trades", "trades"), ts_recv)
        if head.endswith(f"{self.API}/historicalFunding"):
            return self._settlements(native, body, ts_recv)
        if head.endswith(f"{self.API}/orderbooks/perpetualMarket"):
            raise SkipMessage("orderbooks: no message_id to bridge the websocket book "
                              "(the subscribed snapshot is used)")
        raise SkipMessage(f"{path}: REST endpoint not collected")

    @staticmethod
    def _ok(body, what: str) -> dict:
        if not isinstance(body, dict):
            raise MalformedMessage(f"{what}: expected a JSON object, got {type(body).__name__}")
        if "errors" in body:
            raise MalformedMessage(f"{what}: dYdX error {body['errors']!r}")
        return body

    def _settlements(self, native: str, body, ts_recv: int) -> list[Funding]:
        """Settled hourly rates, oldest first, without those an earlier page already gave."""
        what = "historicalFunding"
        items = _list(self._ok(body, what), what, what)
        settled = sorted((self._settled_funding(item, ts_recv) for item in items), key=lambda f: f.ts_exchange)
        if any(f.symbol_native != native for f in settled):
            raise MalformedMessage(f"{what}: rows of another market than {native}")
        last = self._settled_newest.get(native)
        new = [f for f in settled if last is None or f.ts_exchange > last]
        if not new:
            raise SkipMessage(f"{what}: no settlement since the last page" if settled else f"{what}: no settlement")
        self._settled_newest[native] = new[-1].ts_exchange
        return new

    def _settled_funding(self, item, ts_recv: int) -> Funding:
        what = "historicalFunding"
        symbol, native = _ticker(item, "ticker", what)
        ts = _millis(item, "effectiveAt", what)
        return Funding(exchange=self.exchange, symbol=symbol, symbol_native=native, ts_exchange=ts, ts_recv=ts_recv,
                       rate=NUMBERS.signed(item, "rate", what), interval_hours=FUNDING_INTERVAL_HOURS,
                       next_funding_time=ts, mark_price=None, index_price=NUMBERS.price(item, "price", what),
                       is_realised=True)

    def trades_before_url(self, rest_url: str, native: str, cursor: tuple[int, int] | None) -> str:
        """Trades of a market, newest first (fills by block height, then event): the newest page, or
        at or below the block height of ``cursor`` = (height, page number): the indexer's
        ``createdBeforeOrAtHeight`` and ``page``."""
        url = f"{rest_url.rstrip('/')}{self.API}/trades/perpetualMarket/{quote(native)}?limit={TRADES_PAGE_LIMIT}"
        if cursor is None:
            return url
        height, page = cursor
        return f"{url}&createdBeforeOrAtHeight={height}" + (f"&page={page}" if page > 1 else "")

    def trade_page(self, url: str, body) -> TradePage:
        """The next page goes on from the oldest block on this one (its trades come again and are
        dropped as repeats); a page all in one block at the cursor's height goes on with the next
        page number of that height. A page shorter than its limit is the end of the history."""
        what = "trades"
        items = _list(self._ok(body, what), what, what)
        query = parse_qs(urlsplit(url).query)
        heights, times = [], []
        for item in items:
            height = field(item, "createdAtHeight", what)
            if not (type(height) is str and height.isascii() and height.isdigit()):
                raise MalformedMessage(f"{what}: field 'createdAtHeight' must be a string of digits, got {height!r}")
            heights.append(int(height))
            times.append(_millis(item, "createdAt", what))
        if not items:
            return TradePage(oldest_ms=None, older=None)
        limit = int(query.get("limit", [TRADES_PAGE_LIMIT])[0])
        if len(items) < limit:
            return TradePage(oldest_ms=min(times), older=None)
        lowest = min(heights)
        if lowest == max(heights):      # one block fills the page: the block's next page
            at = int(query.get("createdBeforeOrAtHeight", [-1])[0])
            page = int(query.get("page", [1])[0]) if at == lowest else 1
            return TradePage(oldest_ms=min(times), older=(lowest, page + 1))
        return TradePage(oldest_ms=min(times), older=(lowest, 1))

    def map_trade_page(self, url: str, body, ts_recv: int, since_ms: int) -> list:
        """The page's trades at or after ``since_ms`` only, so older ones (received already, or
        to be caught up by another window) are not remembered as received."""
        native = urlsplit(url).path.rstrip("/").rpartition("/")[2]
        items = _list(self._ok(body, "trades"), "trades", "trades")
        newer = [item for item in items if _millis(item, "createdAt", "trades") >= since_ms]
        return self.trades(native, newer, ts_recv) if newer else []

    def known_records(self, records) -> None:
        """Trades by id; settlements by time (a poll publishes only later ones)."""
        seen = self._trades_seen
        for record in records:
            if isinstance(record, Trade):
                seen[(record.symbol_native, record.trade_id)] = None
            elif isinstance(record, Funding) and record.is_realised:
                if record.ts_exchange > self._settled_newest.get(record.symbol_native, -1):
                    self._settled_newest[record.symbol_native] = record.ts_exchange
        while len(seen) > TRADES_REMEMBERED:
            seen.popitem(last=False)

    def historical_funding_url(self, rest_url: str, native: str, before: str | None = None,
                               limit: int = FUNDING_PAGE_LIMIT) -> str:
        """Settled hourly rates, newest first, at or before an ISO time (page backwards)."""
        url = f"{rest_url.rstrip('/')}{self.API}/historicalFunding/{quote(native)}?limit={limit}"
        return url if before is None else f"{url}&effectiveBeforeOrAt={quote(before)}"

    def polls(self, rest_url: str, symbols: list[str]) -> list[Poll]:
        """Each market's settled funding, hourly (the stream only predicts the running hour's rate)."""
        return [Poll(self.historical_funding_url(rest_url, native), FUNDING_POLL_S) for native in symbols]

    # --- reference data --------------------------------------------------------------------

    def reference_urls(self, rest_url: str) -> dict[str, str]:
        return {"instruments": f"{rest_url.rstrip('/')}{self.API}/perpetualMarkets"}

    def apply_reference(self, name: str, body) -> None:
        if name != "instruments":
            raise MalformedMessage(f"unknown reference {name!r}")
        markets = _object(self._ok(body, "perpetualMarkets"), "markets", "perpetualMarkets")
        taken, rejected = {}, {}
        for native, entry in markets.items():
            try:
                taken[native] = self._instrument_fields(native, entry)
            except MalformedMessage as exc:
                rejected[native] = str(exc)
        self._markets_ref, self.rejected_instruments = taken, rejected   # the list replaces the last one

    @staticmethod
    def _instrument_fields(native: str, entry) -> dict:
        what = f"perpetualMarkets {native}"
        symbol = normalize_symbol(native)
        if not isinstance(entry, dict):
            raise MalformedMessage(f"{what}: expected an object, got {type(entry).__name__}")
        if entry.get("ticker", native) != native:
            raise MalformedMessage(f"{what}: entry names another ticker, {entry.get('ticker')!r}")
        status = field(entry, "status", what)
        if not isinstance(status, str) or not status:
            raise MalformedMessage(f"{what}: field 'status' must be a word, got {status!r}")
        return {"symbol": symbol, "symbol_native": native, "base_asset": TICKER.fullmatch(native)[1],
                "tick_size": NUMBERS.price(entry, "tickSize", what), "lot_size": NUMBERS.price(entry, "stepSize", what),
                "status": status}

    def tradable_symbols(self) -> set[str]:
        return {native for native, entry in self._markets_ref.items() if entry["status"] == "ACTIVE"}

    def instruments(self, ts_recv: int) -> list[Instrument]:
        return [Instrument(exchange=self.exchange, ts_exchange=ts_recv // 1_000_000, ts_recv=ts_recv,
                           market_type="perpetual", margin="linear", quote_asset=SETTLE_ASSET,
                           settle_asset=SETTLE_ASSET, qty_unit="base", contract_size=None, contract_size_unit=None,
                           funding_interval_hours=FUNDING_INTERVAL_HOURS, expiry=None, **entry)
                for entry in self._markets_ref.values()]

    # --- recordings ------------------------------------------------------------------------

    def message_time_ms(self, message) -> int | None:
        """The newest trade or oracle time a message carries (books and trading updates have none)."""
        if not isinstance(message, dict):
            return None
        contents = message.get("contents")
        updates = contents if isinstance(contents, list) else [contents]
        times = []
        for update in updates:
            if not isinstance(update, dict):
                continue
            for trade in update.get("trades") or ():
                if isinstance(trade, dict) and isinstance(trade.get("createdAt"), str):
                    times.append(_millis_of(trade["createdAt"]))
            prices = update.get("oraclePrices")
            for values in prices.values() if isinstance(prices, dict) else ():
                if isinstance(values, dict) and isinstance(values.get("effectiveAt"), str):
                    times.append(_millis_of(values["effectiveAt"]))
        times = [t for t in times if t is not None]
        return max(times) if times else None

    def recognizes(self, message) -> bool:
        return (isinstance(message, dict) and message.get("type") in MESSAGE_TYPES
                and isinstance(message.get("connection_id"), str)
                and type(message.get("message_id")) is int)
