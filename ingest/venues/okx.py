"""OKX v5 perpetual swaps and dated futures (``/ws/v5/public``, ``/api/v5``): raw messages -> records.

Covers USDT/USDC-margined (linear) and coin-margined (inverse) perpetual swaps (``BTC-USDT-SWAP``,
``BTC-USD-SWAP``) and dated futures (``BTC-USD-220527``). Every OKX quirk lives here and nowhere else:
  * one envelope for every push, ``{"arg": {"channel", "instId" | "instType"}, "data": [...]}``
    (``books`` adds ``"action": "snapshot" | "update"``); subscribe/unsubscribe/error/notice replies
    are ``{"event": ...}``, one acknowledgement per subscribed ``arg``;
  * keepalive is the text frame ``ping`` answered by ``pong``, neither of them JSON: the service
    drops ``PONG_FRAME`` before parsing, so ``map_ws`` never sees it. OKX closes a connection after
    30 s without data, so the ping interval stays below that;
  * prices and sizes are decimal strings; timestamps (``ts``, ``fundingTime``...) are digit strings;
    ``seqId``/``prevSeqId``/``checksum`` are JSON integers;
  * SWAP/FUTURES sizes (trades, book levels, liquidations, ``oi``) are **contracts**; one contract
    is ``ctVal * ctMult`` of ``ctValCcy``: the base asset for linear contracts (BTC-USDT-SWAP 0.01
    BTC), USD for inverse ones (BTC-USD-SWAP 100 USD). The ``Instrument`` records carry this;
  * book levels are ``[price, size, "0", orderCount]`` (the third element is a deprecated field
    fixed to "0"); they are reduced to ``[price, size]`` with the venue's strings kept verbatim;
  * book sequencing: a snapshot has ``prevSeqId = -1``; each update's ``prevSeqId`` equals the
    previous message's ``seqId``; when a book is idle for ~60 s OKX sends an update with empty sides
    and ``seqId == prevSeqId`` (a heartbeat); after maintenance ``seqId`` may go *down* (an update
    with ``prevSeqId = 15, seqId = 3``), which continues the chain because ``prevSeqId`` matches.
    A break is repaired by unsubscribing and subscribing again: OKX then pushes a fresh snapshot;
  * ``checksum`` was deprecated between 2026-06-22 and 2026-06-23: it is still sent but fixed to
    0. Earlier data (e.g. the 2022 cryptofeed recording in the tests) carries a real CRC32 and no
    ``seqId`` at all: there the checksum is the only integrity check (``OkxSyncRules.checksum``);
  * ``trades`` aggregates since OKX added ``count``: one push per taker order, price and order
    ``source``, ``tradeId`` the *last* id of the ``count`` fills it folds (ids tradeId-count+1 ..
    tradeId). Older pushes (the 2022 recording) have no ``count`` and are single fills: two buys at
    one price in one millisecond arrive as two pushes with consecutive ids;
  * ``funding-rate`` (every 30-90 s): ``fundingRate`` is the predicted rate charged at
    ``fundingTime``, the *upcoming* settlement; ``nextFundingTime`` is the settlement after it, so
    the interval is their difference (OKX shortens it from 8 h to 6/4/2/1 h for volatile
    contracts); ``nextFundingRate`` is no longer published;
  * ``open-interest`` is pushed every 3 s only when it changed: ``oi`` contracts, ``oiCcy`` coins,
    ``oiUsd`` USD;
  * ``liquidation-orders`` is subscribed per ``instType`` and covers every instrument of that type;
    it is a sample ("doesn't represent the total number of liquidations"), arrives out of
    chronological order and repeats orders (a backlog right after subscribing); ``side`` is the
    liquidation order's side and ``posSide`` the position mode side: ``long``/``short`` in hedge
    mode, ``net`` in net mode, where only the order side tells (a buy closes a short);
  * instrument ids: ``BASE-QUOTE-SWAP``, ``BASE-QUOTE-YYMMDD``; spot/margin pairs ``BASE-QUOTE`` and
    options ``BASE-QUOTE-YYMMDD-STRIKE-C|P`` are valid ids perpflow does not collect;
  * a listing announced ahead of time appears in ``/public/instruments`` with ``state: preopen`` and
    its contract fields empty until at least 5 minutes before ``listTime``;
  * REST answers are ``{"code": "0", "msg": "", "data": [...]}``; a non-zero ``code`` is an error;
  * the rubik trading statistics (``/api/v5/rubik/stat/...``) answer arrays of string arrays, newest
    first: ``[ts, ratio]`` for the long/short ratios (OKX publishes no long or short share), and
    ``[ts, sellVol, buyVol]`` for ``taker-volume-contract``, **sell first**; ``ts`` is the
    period's start; ``unit=1`` asks for contracts. Limit 5 requests / 2 s (per IP and instrument
    for the ``*-contract*`` endpoints);
  * limits: 3 new connections per second per IP; 480 subscribe/unsubscribe requests per
    connection per hour (a request may carry many ``args``, up to 64 KB); OKX recommends fewer
    than 30 400-level book channels per connection; REST limits are per endpoint (20 requests /
    2 s for instruments, open interest and trade history, 10 / 2 s for funding rate) and OKX sends
    no header with the budget used.

Choices made where the spec leaves one:
  * ``BookDelta.first_seq`` is None: OKX publishes no first-update id and seqIds are not
    consecutive (10 -> 15), so none can be derived; ``last_seq`` = seqId, ``prev_seq`` = prevSeqId.
    Snapshots have ``seq`` = seqId and ``reason`` "venue". Both keep ``checksum`` verbatim (0 for
    current data, None where absent); heartbeats are emitted as empty deltas so the chain stays
    visible in the warehouse.
  * Legacy books without seqId: ``OkxSyncRules`` accepts every delta in order (nothing to check)
    and the CRC32 is the integrity check. A delta buffered before a pushed snapshot would then be
    applied on top of it, but that needs a resubscribe, which only happens live, on current data.
  * ``Trade.is_aggregated`` is True when the push carries ``count``; ``first_trade_id`` =
    tradeId - count + 1, ``last_trade_id`` = tradeId. ``trade_type`` is None for normal orders and
    "ELP" for Enhanced Liquidity Program orders (``source: "1"``), other sources verbatim.
  * trade ids are consecutive per instrument (the 2022 recording: 74 trades, no hole), so a jump
    is a trade the feed lost: ``trade_sequence`` is the range ``first_trade_id..last_trade_id`` a
    push covers, and gaps are backfilled from ``GET /api/v5/market/history-trades?instId=&type=1
    &after=<id>&limit=<n>`` (``after`` returns the ``n`` ids below it, newest first, at most 100:
    ``after = first wanted + n`` asks for exactly ``first..first+n-1``), one trade per id.
  * ``mark-price`` (per instrument) and ``index-tickers`` (per index, ``BTC-USDT``) are their own
    ``Funding`` records with a NULL rate: joining them to the 30-90 s funding push would restate a
    stale rate five times a second. A mark-price record carries ``mark_price`` only; an index
    record carries ``index_price`` only and is emitted for every subscribed instrument of that
    index (the swap and the dated futures of ``BTC-USDT`` share it; in a replay, where perpflow did
    not subscribe, for the family's swap). The 24 h fields of index-tickers are not kept.
    ``tickers`` is not subscribed (the touch is derived from the synced book).
  * Funding: the interval is (nextFundingTime - fundingTime) when both are present, else 8 h (the
    OKX default); ``settFundingRate`` (the settled or settling rate, restated every push) is not
    emitted: settled rates come from the funding history endpoint.
  * Liquidations: ``price`` = bankruptcy price ``bkPx``, ``avg_price`` None, ``qty`` = ``sz``
    contracts, ``is_sampled`` True. Repeats are dropped on (instId, ts, side, sz, bkPx) within
    the process (the last 100 000 keys); a push whose orders are all repeats is skipped. A hedge
    mode ``posSide`` contradicting ``side`` (a long closed by a buy) is dead-lettered.
  * ``Instrument`` records: base/quote from the instrument id (``baseCcy``/``quoteCcy`` are empty
    for contracts), ``contract_size`` = ctVal * ctMult, ``funding_interval_hours`` None (each
    Funding record carries the interval), ``expiry`` = expTime for futures, None for swaps. An
    entry that is not a usable contract is left out and listed in ``rejected_instruments`` with
    the reason, so one odd listing does not make the whole list unusable; ``preopen`` entries
    with empty fields are simply not listed yet. ``tradable_symbols`` are the ``live`` ones.
  * Liveness: trades and open interest are None in ``SILENCE_LIMIT_S`` (a dated future or small
    swap goes minutes without a trade or an OI change); the books heartbeat (<= 60 s) and
    funding-rate pushes (<= 90 s) on the same connection prove it is alive.
"""

from __future__ import annotations

import re
import zlib
from collections import OrderedDict
from decimal import Decimal
from functools import lru_cache
from typing import ClassVar, NamedTuple
from urllib.parse import parse_qs, urlsplit

import orjson

from ingest.records import (BookDelta, BookSnapshot, Funding, Instrument, Liquidation, LongShortRatio, OpenInterest,
                            TakerVolume, Trade)
from ingest.venue import BookResync, Coverage, MalformedMessage, Poll, SkipMessage, Venue, WsConnection
from ingest.venues import positioning
from ingest.venues.fields import DecimalSyntax, field, integer

NUMBERS = DecimalSyntax()   # plain decimals, never an exponent; only funding rates carry a sign

DEFAULT_FUNDING_INTERVAL_HOURS = 8
CHECKSUM_DEPTH = 25                 # levels per side in the legacy CRC32
BOOKS_PER_CONNECTION = 20           # OKX: fewer than 30 400-level book channels per connection
LIQUIDATIONS_REMEMBERED = 100_000   # de-duplication keys kept; the oldest are forgotten first
CONTRACT_TYPES = ("SWAP", "FUTURES")
HISTORY_TRADES_PAGE = 100           # trades per history-trades request (OKX's maximum)

# The rubik statistics (ingest.records.LongShortRatio, TakerVolume), per instrument.
RUBIK = "/api/v5/rubik/stat"
RATIO_POPULATIONS = {"contracts/long-short-account-ratio-contract": "all_accounts",
                     "contracts/long-short-account-ratio-contract-top-trader": "top_accounts",
                     "contracts/long-short-position-ratio-contract-top-trader": "top_positions"}
TAKER_VOLUME = "taker-volume-contract"
TAKER_VOLUME_UNIT = "1"             # contracts, like every other OKX size
RUBIK_WEIGHT = 2                    # 5 requests / 2 s = 150 a minute, of REST_WEIGHT_LIMIT's 300

_CONTRACT_ID = re.compile(r"([A-Z0-9]+)-([A-Z0-9]+)-(SWAP|[0-9]{6})")
_OTHER_ID = re.compile(r"[A-Z0-9]+-[A-Z0-9]+(?:-[0-9]{6}-[0-9.]+-[CP])?")   # spot/margin pair, option
_POSITIVE_INTEGER = re.compile(r"[1-9][0-9]{0,17}")   # OKX's digit strings: times, trade ids, counts
_INDEX_ID = re.compile(r"[A-Z0-9]+-[A-Z0-9]+")
_ARG_CHANNEL = re.compile(r'"channel":"([^"]+)"')
_ARG_TARGET = re.compile(r'"inst(?:Id|Type)":"([^"]+)"')

NOT_COLLECTED = "spot, margin and option instruments are not collected"
SKIPPED_CHANNELS = {
    "tickers": "tickers: the touch is derived from the synced book, statistics from trades",
    "books5": "books5: the 400-level books channel is collected instead",
    "bbo-tbt": "bbo-tbt: the 400-level books channel is collected instead",
}
ORDER_SOURCES = {"0": None, "1": "ELP"}   # trades ``source``: normal order, Enhanced Liquidity Program


@lru_cache(maxsize=8192)
def split_instrument(native: str) -> tuple[str, str, str]:
    """BTC-USDT-SWAP -> (BTC, USDT, PERP); BTC-USD-220527 -> (BTC, USD, 220527).

    Spot, margin and option ids raise SkipMessage; anything else MalformedMessage."""
    match = _CONTRACT_ID.fullmatch(native)
    if match:
        base, quote, kind = match.groups()
        return base, quote, "PERP" if kind == "SWAP" else kind
    if _OTHER_ID.fullmatch(native):
        raise SkipMessage(NOT_COLLECTED)
    raise MalformedMessage(f"{native!r} is not an OKX instrument id")


def contract_type(native: str) -> str:
    """SWAP or FUTURES, the ``instType`` of a collected instrument id."""
    return "SWAP" if split_instrument(native)[2] == "PERP" else "FUTURES"


def index_of(native: str) -> str:
    """The index an instrument is priced against: BTC-USDT-SWAP and BTC-USDT-250627 -> BTC-USDT."""
    return native.rsplit("-", 1)[0]


def book_checksum(bids: list, asks: list) -> int:
    """OKX's legacy book checksum: the top 25 levels of each side interleaved as
    ``bidPx:bidSz:askPx:askSz:...`` (the longer side continues alone), CRC32 as a signed 32-bit int.

    Levels are ``[price, size]`` best first, in the venue's original strings."""
    bids, asks = bids[:CHECKSUM_DEPTH], asks[:CHECKSUM_DEPTH]
    parts = []
    for i in range(max(len(bids), len(asks))):
        if i < len(bids):
            parts += bids[i][:2]
        if i < len(asks):
            parts += asks[i][:2]
    crc = zlib.crc32(":".join(parts).encode())
    return crc - (1 << 32) if crc >= 1 << 31 else crc


class OkxSyncRules:
    """seqId/prevSeqId chaining; legacy books without seqId are accepted in order (see above)."""

    def is_stale(self, delta: BookDelta, snapshot_seq: int | None) -> bool:
        if snapshot_seq is None or delta.last_seq is None:
            return False
        # After a sequence reset a delta that continues the snapshot can have a lower seqId.
        return delta.prev_seq != snapshot_seq and delta.last_seq <= snapshot_seq

    def bridges(self, delta: BookDelta, snapshot_seq: int | None) -> bool:
        # Both None: legacy data, nothing to check.
        return delta.prev_seq == snapshot_seq

    def continues(self, delta: BookDelta, previous: BookDelta) -> bool:
        # Both None: legacy data; one None: the sequence fields vanished mid-chain, a break.
        return delta.prev_seq == previous.last_seq

    def checksum(self, bids: list, asks: list) -> int:
        return book_checksum(bids, asks)


def _digits(obj, key: str, what: str) -> str:
    """A positive integer OKX sends as a digit string: "1597026383085", a trade id, a count."""
    value = field(obj, key, what)
    if type(value) is str and _POSITIVE_INTEGER.fullmatch(value):
        return value
    raise MalformedMessage(f"{what}: field {key!r} must be a positive integer string, got {value!r}")


def _millis(obj, key: str, what: str) -> int:
    return int(_digits(obj, key, what))


def _optional_millis(obj: dict, key: str, what: str) -> int | None:
    return None if obj.get(key, "") == "" else _millis(obj, key, what)


def _choice(obj, key: str, what: str, allowed: tuple[str, ...]) -> str:
    value = field(obj, key, what)
    if value not in allowed:
        raise MalformedMessage(f"{what}: field {key!r} must be one of {', '.join(allowed)}, got {value!r}")
    return value


def _items(obj, key: str, what: str) -> list[dict]:
    value = field(obj, key, what)
    if not isinstance(value, list) or not value or not all(isinstance(item, dict) for item in value):
        raise MalformedMessage(f"{what}: field {key!r} must be a non-empty list of objects")
    return value


def _levels(obj, key: str, what: str) -> list:
    """``[[price, size, "0", orderCount], ...]`` -> ``[[price, size], ...]``, strings verbatim."""
    levels = field(obj, key, what)
    if not isinstance(levels, list):
        raise MalformedMessage(f"{what}: field {key!r} must be a list of levels")
    where = f"{what} {key!r} level"
    out = []
    for level in levels:
        if not (isinstance(level, list) and len(level) == 4):
            raise MalformedMessage(f"{what}: field {key!r} has a level that is not [price, size, '0', orders]: "
                                   f"{level!r}")
        out.append([NUMBERS.price(level, 0, where), NUMBERS.amount(level, 1, where)])
    return out


def _reply_outcome(message: dict, event) -> Exception:
    """What a reply (``{"event": ...}``) amounts to: skipped, or an error to dead-letter."""
    if event in ("subscribe", "unsubscribe"):
        return SkipMessage("subscription reply")
    if event == "error":
        return MalformedMessage(f"OKX error {message.get('code')}: {message.get('msg')}")
    if event == "notice":   # 64008: the connection closes in 60 s for a service upgrade
        return SkipMessage(f"notice {message.get('code')}")
    return SkipMessage(f"{event} event")


class _Contract(NamedTuple):
    """An instrument entry, validated; becomes an ``Instrument`` record once a time is known."""

    symbol: str
    symbol_native: str
    market_type: str
    margin: str
    base_asset: str
    quote_asset: str
    settle_asset: str
    contract_size: str
    contract_size_unit: str
    tick_size: str
    lot_size: str
    expiry: int | None
    status: str


class OkxSwap(Venue):
    exchange = "okx-swap"
    default_ws_url = "wss://ws.okx.com:8443"
    default_rest_url = "https://www.okx.com"
    BOOK_RESYNC = BookResync.RESUBSCRIBE
    SYMBOL_PATTERN = r"[A-Z0-9]+-[A-Z0-9]+-(?:SWAP|[0-9]{6})"
    SYMBOL_EXAMPLES = "BTC-USDT-SWAP,ETH-USDT-SWAP,BTC-USD-SWAP"
    TRADE_STREAM = "trades"
    BOOK_STREAM = "books"
    COVERAGE = {
        "trades": (Coverage.COMPLETE, "trade ids are consecutive: a lost id is a gap, backfilled from history-trades"),
        "book": (Coverage.COMPLETE, "top 400 levels per side (books), seqId/prevSeqId, resynced by resubscribing"),
        "funding": (Coverage.COMPLETE, "funding-rate, every 30-90 s"),
        "mark_price": (Coverage.COMPLETE, "mark-price"),
        "index_price": (Coverage.COMPLETE, "index-tickers"),
        "open_interest": (Coverage.SAMPLED, "open-interest, pushed every few seconds"),
        "liquidations": (Coverage.SAMPLED, "liquidation-orders: OKX says it does not represent all liquidations"),
        "adl": (Coverage.UNAVAILABLE, "adl-warning is not collected yet"),
        "long_short_ratios": (Coverage.COMPLETE, "rubik long/short account ratio of all accounts and of OKX's top "
                                                 "traders (accounts, positions), every closed 5 m period; ratio only, "
                                                 "no long or short share"),
        "taker_volumes": (Coverage.COMPLETE, "rubik taker-volume-contract, every closed 5 m period, in contracts"),
    }
    SILENCE_LIMIT_S: ClassVar[dict[str, float | None]] = {
        "books": 75.0,            # heartbeat every ~60 s on an idle book
        "funding-rate": 120.0,    # pushed every 30-90 s
        "mark-price": 30.0,       # on change, and every 10 s when it does not change
        "index-tickers": None,
        "trades": None, "open-interest": None, "liquidation-orders": None}
    SUBSCRIBE_REQUESTS_PER_HOUR = 480   # subscribe/unsubscribe/login requests per connection
    PING_FRAME = "ping"
    PONG_FRAME = "pong"
    PING_INTERVAL_S = 20.0   # OKX drops a connection after 30 s without traffic
    # Per minute, one unit per request. OKX limits each endpoint separately (IP + instrument or
    # instrument type); the strictest one perpflow calls, funding-rate at 10 requests / 2 s, is
    # 300 a minute, so a shared budget of 300 keeps every endpoint inside its own limit.
    REST_WEIGHT_LIMIT = 300
    WEIGHT_HEADER = None
    rules = OkxSyncRules()

    def __init__(self):
        self._contracts: dict[str, dict[str, _Contract]] = {}   # instType -> instId -> contract
        self.rejected_instruments: dict[str, str] = {}          # instId -> why it is not usable
        self._liquidations_seen: OrderedDict = OrderedDict()
        self._index_members: dict[str, tuple[str, ...]] = {}   # BTC-USDT -> subscribed instruments

    # --- symbols and streams ---------------------------------------------------------------

    def normalize_symbol(self, native: str) -> str:
        return "-".join(split_instrument(native))

    def ws_connections(self, ws_url: str, symbols: list[str]) -> list[WsConnection]:
        url = f"{ws_url.rstrip('/')}/ws/v5/public"
        groups = [symbols[i:i + BOOKS_PER_CONNECTION] for i in range(0, len(symbols), BOOKS_PER_CONNECTION)]
        members: dict[str, list[str]] = {}
        for native in symbols:
            members.setdefault(index_of(native), []).append(native)
        self._index_members = {index: tuple(natives) for index, natives in members.items()}
        connections = []
        for number, group in enumerate(groups, 1):
            args = []
            for native in group:
                channels = ["books", "trades", "open-interest", "mark-price"]
                if contract_type(native) == "SWAP":
                    channels.append("funding-rate")
                args += [{"channel": channel, "instId": native} for channel in channels]
            if number == 1:   # one subscription per type (or index) serves every instrument
                types = {contract_type(native) for native in symbols}
                args += [{"channel": "liquidation-orders", "instType": t} for t in CONTRACT_TYPES if t in types]
                args += [{"channel": "index-tickers", "instId": index} for index in members]
            streams = tuple(f"{arg['channel']}:{arg.get('instId') or arg['instType']}" for arg in args)
            # One request for all of them: subscribe requests are limited to 480 an hour.
            subscribe = orjson.dumps({"op": "subscribe", "args": args}).decode()
            connections.append(WsConnection(f"public-{number}", url, streams, (subscribe,)))
        return connections

    def stream_kind(self, stream: str) -> str:
        return stream.partition(":")[0]

    def stream_symbol(self, stream: str) -> str:
        """books:BTC-USDT-SWAP -> BTC-USDT-SWAP (liquidation-orders:SWAP -> SWAP, an instType)."""
        return stream.partition(":")[2]

    def stream_of(self, frame: str) -> str | None:
        """``channel:instId`` (or ``channel:instType``) from the leading ``arg`` object; replies
        (``{"event": ...}``) are control frames."""
        end = frame.find("}", 8) if frame.startswith('{"arg":{') else -1
        if end < 0:
            return None
        arg = frame[8:end]
        channel, target = _ARG_CHANNEL.search(arg), _ARG_TARGET.search(arg)
        return f"{channel[1]}:{target[1]}" if channel and target else None

    def resubscribe_frames(self, stream: str) -> tuple[str, ...]:
        """Unsubscribe and subscribe again: OKX then pushes a fresh snapshot. Each frame counts
        against the 480 requests per connection per hour."""
        arg = {"channel": self.stream_kind(stream), "instId": self.stream_symbol(stream)}
        return tuple(orjson.dumps({"op": op, "args": [arg]}).decode() for op in ("unsubscribe", "subscribe"))

    # --- websocket -------------------------------------------------------------------------

    def map_ws(self, message, ts_recv: int) -> list:
        if not isinstance(message, dict):
            raise MalformedMessage(f"expected a JSON object, got {type(message).__name__}")
        event = message.get("event")
        if event is not None:
            raise _reply_outcome(message, event)
        arg = field(message, "arg", "okx push")
        channel = arg.get("channel") if isinstance(arg, dict) else None
        if not isinstance(channel, str):
            raise MalformedMessage(f"okx push: 'arg' must be an object with a channel, got {arg!r}")
        handler = self._handlers.get(channel)
        if handler is None:
            raise SkipMessage(SKIPPED_CHANNELS.get(channel, f"{channel}: channel not collected"))
        return handler(self, arg, _items(message, "data", channel), message, ts_recv)

    def _instrument(self, item: dict, arg: dict, what: str) -> tuple[str, str]:
        native = item["instId"] if "instId" in item else field(arg, "instId", what)
        if not isinstance(native, str):
            raise MalformedMessage(f"{what}: instId must be a string, got {native!r}")
        return self.normalize_symbol(native), native

    def _books(self, arg: dict, data: list, message: dict, ts_recv: int) -> list:
        what = "books"
        action = _choice(message, "action", what, ("snapshot", "update"))
        symbol, native = self._instrument({}, arg, what)
        out = []
        for item in data:
            common = {"exchange": self.exchange, "symbol": symbol, "symbol_native": native,
                      "ts_exchange": _millis(item, "ts", what), "ts_recv": ts_recv,
                      "bids": _levels(item, "bids", what), "asks": _levels(item, "asks", what),
                      "checksum": integer(item, "checksum", what) if "checksum" in item else None}
            seq = integer(item, "seqId", what) if "seqId" in item else None
            if action == "snapshot":
                out.append(BookSnapshot(**common, seq=seq, reason="venue"))
            else:
                prev_seq = integer(item, "prevSeqId", what) if "prevSeqId" in item else None
                out.append(BookDelta(**common, first_seq=None, last_seq=seq, prev_seq=prev_seq))
        return out

    def _trades(self, arg: dict, data: list, message: dict, ts_recv: int) -> list:
        what = "trades"
        out = []
        for item in data:
            symbol, native = self._instrument(item, arg, what)
            trade_id = _digits(item, "tradeId", what)
            count = int(_digits(item, "count", what)) if "count" in item else None
            last_id = int(trade_id)
            source = item.get("source", "0")
            if not isinstance(source, str):
                raise MalformedMessage(f"{what}: field 'source' must be a string, got {source!r}")
            out.append(Trade(exchange=self.exchange, symbol=symbol, symbol_native=native,
                             ts_exchange=_millis(item, "ts", what), ts_recv=ts_recv, trade_id=trade_id,
                             price=NUMBERS.price(item, "px", what), qty=NUMBERS.quantity(item, "sz", what),
                             qty_unit="contracts", side=_choice(item, "side", what, ("buy", "sell")),
                             is_aggregated=count is not None,
                             first_trade_id=last_id - count + 1 if count else last_id, last_trade_id=last_id,
                             trade_type=ORDER_SOURCES.get(source, source)))
        return out

    def _funding(self, arg: dict, data: list, message: dict, ts_recv: int) -> list:
        return [self.funding(item, arg, ts_recv) for item in data]

    def funding(self, item: dict, arg: dict, ts_recv: int) -> Funding:
        what = "funding-rate"
        symbol, native = self._instrument(item, arg, what)
        funding_time = _millis(item, "fundingTime", what)
        after = _optional_millis(item, "nextFundingTime", what)
        interval = DEFAULT_FUNDING_INTERVAL_HOURS
        if after is not None:
            hours, rest = divmod(after - funding_time, 3_600_000)
            if rest or hours <= 0:
                raise MalformedMessage(f"{what}: nextFundingTime - fundingTime = {after - funding_time} ms "
                                       "is not a whole number of hours")
            interval = hours
        return Funding(exchange=self.exchange, symbol=symbol, symbol_native=native,
                       ts_exchange=_millis(item, "ts", what), ts_recv=ts_recv,
                       rate=NUMBERS.signed(item, "fundingRate", what), interval_hours=interval,
                       next_funding_time=funding_time, mark_price=None, index_price=None, is_realised=False)

    def _mark_price(self, arg: dict, data: list, message: dict, ts_recv: int) -> list:
        what = "mark-price"
        out = []
        for item in data:
            symbol, native = self._instrument(item, arg, what)
            out.append(self._prices(symbol, native, _millis(item, "ts", what), ts_recv,
                                    mark=NUMBERS.price(item, "markPx", what)))
        return out

    def _index_tickers(self, arg: dict, data: list, message: dict, ts_recv: int) -> list:
        what = "index-tickers"
        out = []
        for item in data:
            index = item["instId"] if "instId" in item else field(arg, "instId", what)
            if not isinstance(index, str) or not _INDEX_ID.fullmatch(index):
                raise MalformedMessage(f"{what}: instId must be an index such as BTC-USDT, got {index!r}")
            ts, price = _millis(item, "ts", what), NUMBERS.price(item, "idxPx", what)
            for native in self._index_members.get(index, (f"{index}-SWAP",)):
                out.append(self._prices(self.normalize_symbol(native), native, ts, ts_recv, index=price))
        return out

    def _prices(self, symbol: str, native: str, ts: int, ts_recv: int, mark: str | None = None,
                index: str | None = None) -> Funding:
        return Funding(exchange=self.exchange, symbol=symbol, symbol_native=native, ts_exchange=ts,
                       ts_recv=ts_recv, rate=None, interval_hours=None, next_funding_time=None,
                       mark_price=mark, index_price=index, is_realised=False)

    def _open_interest(self, arg: dict, data: list, message: dict, ts_recv: int) -> list:
        return [self.open_interest(item, arg, ts_recv) for item in data]

    def open_interest(self, item: dict, arg: dict, ts_recv: int) -> OpenInterest:
        what = "open-interest"
        symbol, native = self._instrument(item, arg, what)
        return OpenInterest(exchange=self.exchange, symbol=symbol, symbol_native=native,
                            ts_exchange=_millis(item, "ts", what), ts_recv=ts_recv,
                            open_interest=NUMBERS.amount(item, "oi", what), qty_unit="contracts",
                            open_interest_usd=NUMBERS.amount(item, "oiUsd", what) if item.get("oiUsd") else None)

    def _liquidations(self, arg: dict, data: list, message: dict, ts_recv: int) -> list:
        what = "liquidation-orders"
        out, keys = [], {}
        for item in data:
            try:
                symbol, native = self._instrument(item, arg, what)
            except SkipMessage:   # a margin pair, on an instType perpflow does not subscribe
                continue
            for detail in _items(item, "details", what):
                side = _choice(detail, "side", what, ("buy", "sell"))
                position = _choice(detail, "posSide", what, ("long", "short", "net"))
                closes = "short" if side == "buy" else "long"
                if position != "net" and position != closes:
                    raise MalformedMessage(f"{what}: a {side} order cannot liquidate a {position} position")
                price, qty = NUMBERS.price(detail, "bkPx", what), NUMBERS.quantity(detail, "sz", what)
                ts = _millis(detail, "ts", what)
                key = (native, ts, side, qty, price)
                if key in self._liquidations_seen or key in keys:
                    continue
                keys[key] = None
                out.append(Liquidation(exchange=self.exchange, symbol=symbol, symbol_native=native,
                                       ts_exchange=ts, ts_recv=ts_recv, order_side=side, liquidated_position=closes,
                                       price=price, avg_price=None, qty=qty, qty_unit="contracts",
                                       order_status=None, is_sampled=True))
        # Remembered only once the whole push is valid: a dead-lettered push must not hide its
        # orders when OKX sends them again.
        self._liquidations_seen.update(keys)
        while len(self._liquidations_seen) > LIQUIDATIONS_REMEMBERED:
            self._liquidations_seen.popitem(last=False)
        if not out:
            raise SkipMessage("liquidation-orders: repeated or uncollected orders only")
        return out

    def trade_sequence(self, trade: Trade) -> tuple[int, int] | None:
        return trade.first_trade_id, trade.last_trade_id

    def trades_url(self, rest_url: str, native: str, from_id: int, limit: int = 1000) -> str:
        page = min(limit, HISTORY_TRADES_PAGE)
        return (f"{rest_url.rstrip('/')}/api/v5/market/history-trades?instId={native}&type=1"
                f"&after={from_id + page}&limit={page}")

    _handlers: ClassVar[dict] = {"books": _books, "trades": _trades, "funding-rate": _funding,
                                 "open-interest": _open_interest, "liquidation-orders": _liquidations,
                                 "mark-price": _mark_price, "index-tickers": _index_tickers}

    # --- REST ------------------------------------------------------------------------------

    def polls(self, rest_url: str, symbols: list[str]) -> list[Poll]:
        """The rubik positioning statistics of each instrument, four requests per instrument a minute."""
        base = f"{rest_url.rstrip('/')}{RUBIK}"
        query = f"period={positioning.PERIOD}&limit={positioning.PERIODS_PER_POLL}"
        out = []
        for native in symbols:
            out += [Poll(f"{base}/{endpoint}?instId={native}&{query}", positioning.POLL_EVERY_S, RUBIK_WEIGHT)
                    for endpoint in RATIO_POPULATIONS]
            out.append(Poll(f"{base}/{TAKER_VOLUME}?instId={native}&{query}&unit={TAKER_VOLUME_UNIT}",
                            positioning.POLL_EVERY_S, RUBIK_WEIGHT))
        return out

    def map_rest(self, url: str, body, ts_recv: int) -> list:
        path = urlsplit(url).path
        if RUBIK in path:
            query = {k: v[0] for k, v in parse_qs(urlsplit(url).query).items()}
            return self.positioning(path.split(RUBIK, 1)[1].strip("/"), query, body, ts_recv)
        if path.endswith("/api/v5/public/instruments"):
            inst_type = parse_qs(urlsplit(url).query).get("instType", [""])[0]
            if inst_type not in CONTRACT_TYPES:
                raise SkipMessage(f"instruments: {inst_type or 'no'} instType is not collected")
            self._take_instruments(inst_type, body)
            return self._records(self._contracts[inst_type].values(), ts_recv)
        if path.endswith("/api/v5/market/history-trades"):    # newest first: put back in sequence order
            trades = self._trades({}, self._rest_data(body, "history-trades"), {}, ts_recv)
            return sorted(trades, key=lambda trade: trade.last_trade_id)
        if path.endswith("/api/v5/public/funding-rate"):
            return [self.funding(item, {}, ts_recv) for item in self._rest_data(body, "funding-rate")]
        if path.endswith("/api/v5/public/open-interest"):
            return [self.open_interest(item, {}, ts_recv) for item in self._rest_data(body, "open-interest")]
        raise SkipMessage(f"{path}: REST endpoint not collected")

    def positioning(self, endpoint: str, query: dict, body, ts_recv: int) -> list:
        """A rubik answer: ``[ts, ratio]`` or ``[ts, sellVol, buyVol]`` rows, newest first; the newest
        period is held back (``ingest.venues.positioning``)."""
        what = endpoint.rsplit("/", 1)[-1]
        if endpoint not in RATIO_POPULATIONS and endpoint != TAKER_VOLUME:
            raise SkipMessage(f"{RUBIK}/{endpoint}: not collected")
        native = query.get("instId", "")
        symbol = self.normalize_symbol(native)
        period = query.get("period")
        if period != positioning.PERIOD:
            raise SkipMessage(f"{what}: period {period!r} is not collected")
        if endpoint == TAKER_VOLUME and query.get("unit") != TAKER_VOLUME_UNIT:
            raise SkipMessage(f"{what}: unit {query.get('unit')!r} is not collected (contracts: unit=1)")
        names = ("ts", "sellVol", "buyVol") if endpoint == TAKER_VOLUME else ("ts", "ratio")
        named = []
        for row in self._rest_data(body, what):
            if not (isinstance(row, list) and len(row) == len(names)):
                raise MalformedMessage(f"{what}: rows must be [{', '.join(names)}], got {str(row)[:100]}")
            named.append(dict(zip(names, row)))
        rows = positioning.closed_periods(named, lambda row: positioning.period_start(row["ts"], what))
        common = dict(exchange=self.exchange, symbol=symbol, symbol_native=native, ts_recv=ts_recv, period=period)
        if endpoint == TAKER_VOLUME:
            return [TakerVolume(**common, ts_exchange=int(row["ts"]), sell_qty=NUMBERS.amount(row, "sellVol", what),
                                buy_qty=NUMBERS.amount(row, "buyVol", what), qty_unit="contracts") for row in rows]
        return [LongShortRatio(**common, ts_exchange=int(row["ts"]), population=RATIO_POPULATIONS[endpoint],
                               long_share=None, short_share=None, long_short_ratio=NUMBERS.amount(row, "ratio", what))
                for row in rows]

    @staticmethod
    def _rest_data(body, what: str) -> list:
        if not isinstance(body, dict):
            raise MalformedMessage(f"{what}: expected a JSON object, got {type(body).__name__}")
        if body.get("code") != "0":
            raise MalformedMessage(f"OKX error {body.get('code')}: {body.get('msg')}")
        data = field(body, "data", what)
        if not isinstance(data, list):
            raise MalformedMessage(f"{what}: field 'data' must be a list")
        return data

    def reference_urls(self, rest_url: str) -> dict[str, str]:
        base = f"{rest_url.rstrip('/')}/api/v5/public/instruments"
        return {"instruments": f"{base}?instType=SWAP", "instruments_futures": f"{base}?instType=FUTURES"}

    def apply_reference(self, name: str, body) -> None:
        inst_type = {"instruments": "SWAP", "instruments_futures": "FUTURES"}.get(name)
        if inst_type is None:
            raise MalformedMessage(f"unknown reference {name!r}")
        self._take_instruments(inst_type, body)

    def _take_instruments(self, inst_type: str, body) -> None:
        """Replace the instruments of one type (delisted ones disappear with the new list)."""
        contracts = {}
        for entry in self._rest_data(body, f"instruments {inst_type}"):
            native = entry.get("instId") if isinstance(entry, dict) else None
            if not isinstance(native, str) or entry.get("instType") != inst_type:
                raise MalformedMessage(f"instruments {inst_type}: entry is not a {inst_type} instrument: {entry!r}")
            if entry.get("state") == "preopen" and entry.get("ctVal") == "":
                continue   # announced; the contract fields follow before listTime
            try:
                contracts[native] = self._contract(entry, native)
            except (MalformedMessage, SkipMessage) as exc:
                self.rejected_instruments[native] = str(exc)
            else:
                self.rejected_instruments.pop(native, None)
        self._contracts[inst_type] = contracts

    def _contract(self, entry: dict, native: str) -> _Contract:
        what = f"instrument {native}"
        base, quote, expiry = split_instrument(native)
        margin = _choice(entry, "ctType", what, ("linear", "inverse"))
        unit_ccy = field(entry, "ctValCcy", what)
        if margin == "linear" and unit_ccy == base:
            unit = "base"
        elif margin == "inverse" and unit_ccy == "USD":
            unit = "usd"
        else:
            raise MalformedMessage(f"{what}: a {margin} contract valued in {unit_ccy!r} has no known unit")
        size, multiplier = NUMBERS.price(entry, "ctVal", what), NUMBERS.price(entry, "ctMult", what)
        if multiplier != "1":
            size = format((Decimal(size) * Decimal(multiplier)).normalize(), "f")
        settle = field(entry, "settleCcy", what)
        if not isinstance(settle, str) or not settle:
            raise MalformedMessage(f"{what}: field 'settleCcy' must name an asset, got {settle!r}")
        status = field(entry, "state", what)
        if not isinstance(status, str) or not status:
            raise MalformedMessage(f"{what}: field 'state' must be a word, got {status!r}")
        perpetual = expiry == "PERP"
        return _Contract(symbol=f"{base}-{quote}-{expiry}", symbol_native=native,
                         market_type="perpetual" if perpetual else "future", margin=margin, base_asset=base,
                         quote_asset=quote, settle_asset=settle, contract_size=size, contract_size_unit=unit,
                         tick_size=NUMBERS.price(entry, "tickSz", what), lot_size=NUMBERS.price(entry, "lotSz", what),
                         expiry=None if perpetual else _millis(entry, "expTime", what), status=status)

    def _records(self, contracts, ts_recv: int) -> list[Instrument]:
        return [Instrument(exchange=self.exchange, ts_exchange=ts_recv // 1_000_000, ts_recv=ts_recv,
                           qty_unit="contracts", funding_interval_hours=None, **c._asdict()) for c in contracts]

    def tradable_symbols(self) -> set[str]:
        return {native for contracts in self._contracts.values()
                for native, contract in contracts.items() if contract.status == "live"}

    def instruments(self, ts_recv: int) -> list[Instrument]:
        return self._records([c for contracts in self._contracts.values() for c in contracts.values()], ts_recv)

    # --- recordings ------------------------------------------------------------------------

    def message_time_ms(self, message) -> int | None:
        data = message.get("data") if isinstance(message, dict) else None
        item = data[0] if isinstance(data, list) and data and isinstance(data[0], dict) else None
        if item is not None and "ts" not in item:   # liquidation-orders: the time is per order
            details = item.get("details")
            item = details[0] if isinstance(details, list) and details and isinstance(details[0], dict) else None
        ts = item.get("ts") if item is not None else None
        return int(ts) if isinstance(ts, str) and _POSITIVE_INTEGER.fullmatch(ts) else None

    def recognizes(self, message) -> bool:
        if not isinstance(message, dict):
            return False
        arg = message.get("arg")
        if isinstance(arg, dict) and isinstance(arg.get("channel"), str):
            return isinstance(message.get("data"), list) or isinstance(message.get("event"), str)
        return isinstance(message.get("event"), str) and ("connId" in message or "code" in message)
