"""Bybit v5 linear (USDT and USDC perpetuals, USDT and USDC dated futures): raw messages -> records.

Every Bybit quirk lives here and nowhere else:
  * one websocket path, ``/v5/public/linear``, carries every topic; a frame is
    ``{"topic": "<kind>.<SYMBOL>", "type": "snapshot"|"delta", "ts": <ms>, "data": ..., ["cts": <ms>]}``.
    Key order varies by topic (level-1 books put ``ts`` before ``type``), so nothing relies on it
    except the fast path of ``stream_of``, which falls back to a search;
  * control replies carry ``op`` and no ``topic``: a subscribe ack
    ``{"success": true, "ret_msg": "", "op": "subscribe", ...}``; on linear the pong is
    ``{"success": true, "ret_msg": "pong", "op": "ping", ...}`` (``op`` repeats the request), other
    Bybit channels answer ``{"op": "pong", "args": [...]}``. A refused request has
    ``"success": false`` and the reason in ``ret_msg``, e.g. ``"error:handler not found,topic:
    liquidation.BTCUSDT"`` for the retired ``liquidation`` topic: it is dead-lettered, because a
    topic that is never delivered otherwise looks like a quiet market;
  * the application ping ``{"op": "ping"}`` is due every 20 s; the pong varies (``conn_id``),
    so it cannot be dropped as a fixed frame and ``map_ws`` skips it instead;
  * orderbook.{depth}: linear depths 1, 50, 200, 1000 live, 500 in Bybit's historical download
    files (JSONL of exactly these frames). A ``snapshot`` replaces the book; each later
    ``delta`` has ``data.u`` one above the previous message's; quantity 0 deletes a level.
    A message with ``u == 1`` is a snapshot after a restart of Bybit's service, whatever its
    ``type`` says. Level-1 books are snapshot-only and repeat the snapshot every 3 s with the
    same ``u``. Retail-price-improvement (RPI) orders are not in these books;
  * there is no REST bridge for these books: REST ``/v5/market/orderbook`` numbers its ``u`` on
    the 1000-level stream, not on ``orderbook.50``, so a lost delta is repaired by unsubscribing
    and subscribing again, after which Bybit pushes a fresh snapshot;
  * publicTrade: ``data`` is a list of up to 1024 trades (several messages may share one
    cross sequence ``seq``); ``S`` is the taker side; ``i`` is a UUID on linear (numeric on
    spot), so trades carry no sequence without holes: no gap detection and no REST backfill
    (``trade_sequence`` and ``trades_url`` keep the contract's None);
  * tickers: a ``snapshot`` then ``delta`` messages that carry only the fields that changed;
    ``""`` means "does not apply" (dated futures have no funding fields). ``openInterest`` and
    ``openInterestValue`` count both sides of every position (Bybit documents its open interest
    as "the sum of both sides"); since 2026-06 ``singleOpenInterest`` and
    ``singleOpenInterestValue`` give one side;
  * allLiquidation (the retired ``liquidation`` topic's successor): ``data`` is a list pushed
    every 500 ms; ``S`` is the side of the liquidated *position* (``Buy``: a long was
    liquidated), the opposite of Binance's order side; ``p`` is the bankruptcy price;
  * instruments-info gives ``fundingInterval`` in minutes and ``deliveryTime`` ``"0"`` for
    perpetuals; it pages at 500 entries by default, more than 500 linear symbols exist;
  * REST: 600 requests per 5 s per IP for every endpoint; ``X-Bapi-Limit-Status`` reports the
    *remaining* requests per account (UID) and endpoint, not IP weight used;
  * a subscription's topics may total at most 21,000 characters per connection (Bybit's
    public-channel limit); spot caps a request at 10 topics, linear has no cap "for now";
  * numbers are plain decimal strings without exponent; only funding rates carry a sign;
  * ``/v5/market/account-ratio`` (period spelled ``5min``) gives ``buyRatio``/``sellRatio``, the
    shares of users holding long and short positions, ``timestamp`` a digit string for the
    period's start, newest first; there is no ratio field (perpflow divides, exactly in decimal)
    and no public taker-volume endpoint.

Choices where the spec leaves one:
  * symbols: ``BTCUSDT`` -> ``BTC-USDT-PERP``; USDC perpetuals ``BTCPERP`` (legacy names) and
    ``ETHUSDC`` -> ``<base>-USDC-PERP``; USDT futures ``BTCUSDT-26SEP25`` -> ``BTC-USDT-250926``;
    USDC futures ``BTC-26DEC25`` -> ``BTC-USDC-251226`` (YYMMDD expiry, as Binance quarterlies).
    Inverse symbols (``BTCUSD``, ``BTCUSDU23``) are not linear and are dead-lettered;
  * book records: ``BookSnapshot.seq`` = ``u`` with reason "venue"; ``BookDelta.first_seq`` =
    ``last_seq`` = ``u`` (Bybit numbers messages, not ranges) and ``prev_seq`` None (continuity is
    ``u == previous u + 1``, see ``BybitSyncRules``). ``ts_exchange`` is ``cts`` (matching-engine
    time, the clock of trade ``T``) where present, else ``ts`` (older frames). The cross
    sequence ``data.seq`` has no field in the record and is not kept;
  * one book per symbol: the first orderbook depth seen for a symbol feeds its book and other
    depths of that symbol are skipped (each depth numbers its own ``u``, so mixing two would be
    a gap on every message; live collection subscribes ``orderbook.50`` only);
  * trades: each list element is one fill (``is_aggregated`` False); ``trade_type`` is "BLOCK"
    for ``BT`` block trades (kept: they are real volume, and analytics can filter them), "RPI"
    for fills against RPI orders (never visible in the book), else "MARKET";
  * tickers: state per symbol is merged from the snapshot and every delta (only the fields
    perpflow uses are kept, each validated before it is merged, so a bad value never enters
    the state). A delta before its symbol's snapshot is skipped. A ``Funding`` record is
    emitted when mark, index, rate, next funding time or interval differ from the merged state
    before the message; ``OpenInterest`` only when the one-sided open interest differs;
  * open interest is one-sided: ``singleOpenInterest`` where present, else ``openInterest / 2``
    (recordings from before the field existed), computed exactly in decimal.
    ``open_interest_usd`` is one-sided the same way (``singleOpenInterestValue``, else
    ``openInterestValue / 2``). The unit is base coin;
  * funding interval: the ticker's ``fundingIntervalHour``, else the instrument list's
    ``fundingInterval`` / 60 when that is whole hours, else None (Bybit has 1, 2, 4 and 8 h
    contracts, so there is no safe default);
  * liquidations: ``order_side`` is the side of the forced order (``Buy`` position -> "sell"),
    ``price`` the bankruptcy price, ``avg_price`` None (not published), ``is_sampled`` False:
    Bybit documents that ``allLiquidation`` pushes every liquidation (batched every 500 ms), and
    analytics.md §9.4 counts it among the complete feeds; there is no public history to reconcile
    it with, which ``COVERAGE`` says. Liquidations of the retired ``liquidation`` topic are
    ``is_sampled`` True: it pushed at most one order per symbol per second [unverified: Bybit's
    v5 page for the retired topic, not in the spec]. The retired ``liquidation`` topic (one
    object per message, same side convention) is mapped too, for older recordings;
  * REST ``/v5/market/orderbook`` is skipped (it cannot bridge ``orderbook.50``, see above);
  * ``tradable_symbols`` lists perpetuals with status ``Trading`` (as for Binance), while
    ``instruments`` describes dated futures too;
  * ``WEIGHT_HEADER`` is None: the contract reads the header as weight *used*, and Bybit's
    ``X-Bapi-Limit-Status`` is the *remaining* per-account count, which would invert the
    throttle; the IP budget is ``REST_WEIGHT_LIMIT`` requests per minute instead;
  * subscribe requests carry at most 10 topics (Bybit's spot cap, which tardis-node applies to
    linear as well), so a future linear cap does not refuse a whole connection's topics.
"""

from __future__ import annotations

import re
from decimal import Decimal
from functools import lru_cache
from typing import ClassVar
from urllib.parse import parse_qsl, urlsplit

import orjson

from ingest.records import (
    BookDelta,
    BookSnapshot,
    Funding,
    Instrument,
    Liquidation,
    LongShortRatio,
    OpenInterest,
    Trade,
)
from ingest.venue import BookResync, Coverage, MalformedMessage, Poll, SkipMessage, Venue, WsConnection
from ingest.venues import positioning
from ingest.venues.fields import DecimalSyntax, field, integer

NUMBERS = DecimalSyntax()   # plain decimals, never an exponent; only funding rates carry a sign
ACCOUNT_RATIO_PERIOD = "5min"   # Bybit's spelling of positioning.PERIOD

MONTHS = {name: f"{number:02d}" for number, name in enumerate(
    ("JAN", "FEB", "MAR", "APR", "MAY", "JUN", "JUL", "AUG", "SEP", "OCT", "NOV", "DEC"), start=1)}
PERPETUAL_SUFFIXES = (("USDT", "USDT"), ("USDC", "USDC"), ("PERP", "USDC"))
DATED = re.compile(r"(?P<day>[0-9]{2})(?P<month>[A-Z]{3})(?P<year>[0-9]{2})")

STREAM_KINDS = ("orderbook.50", "publicTrade", "tickers", "allLiquidation")
TOPICS_PER_REQUEST = 10
TOPIC_CHARS_PER_CONNECTION = 21_000
# A Bybit topic: a dotted kind, then the native symbol (letters, digits, '-' for dated futures).
TOPIC = re.compile(r"[A-Za-z]+(?:\.[A-Za-z0-9]+)*\.[A-Z0-9-]+")
TOPIC_IN_FRAME = re.compile(r'"topic"\s*:\s*"([^"]+)"')
CONTROL_OPS = ("subscribe", "unsubscribe", "ping", "pong")


@lru_cache(maxsize=8192)
def normalize_symbol(native: str) -> str:
    """BTCUSDT -> BTC-USDT-PERP, BTCPERP / ETHUSDC -> <base>-USDC-PERP,
    BTCUSDT-26SEP25 -> BTC-USDT-250926, BTC-26DEC25 (USDC future) -> BTC-USDC-251226."""
    symbol = native.upper()
    pair, dash, expiry = symbol.partition("-")
    if dash:
        date = DATED.fullmatch(expiry)
        if not pair or date is None or date["month"] not in MONTHS:
            raise MalformedMessage(f"symbol {native!r} is not a Bybit dated future like BTCUSDT-26SEP25")
        for quote in ("USDT", "USDC"):
            if pair.endswith(quote) and len(pair) > len(quote):
                pair = pair[:-len(quote)]
                break
        else:
            quote = "USDC"   # USDC futures are named by their base alone
        return f"{pair}-{quote}-{date['year']}{MONTHS[date['month']]}{date['day']}"
    for suffix, quote in PERPETUAL_SUFFIXES:
        if symbol.endswith(suffix) and len(symbol) > len(suffix):
            return f"{symbol[:-len(suffix)]}-{quote}-PERP"
    raise MalformedMessage(f"symbol {native!r} is not a Bybit linear symbol (USDT, USDC or PERP suffix)")


def _symbol(obj, key: str, what: str) -> tuple[str, str]:
    native = field(obj, key, what)
    if not isinstance(native, str) or not native:
        raise MalformedMessage(f"{what}: field {key!r} must be a symbol string, got {native!r}")
    return normalize_symbol(native), native.upper()


def _side(obj, key: str, what: str) -> str:
    side = field(obj, key, what)
    if side not in ("Buy", "Sell"):
        raise MalformedMessage(f"{what}: field {key!r} must be Buy or Sell, got {side!r}")
    return side


def _flag(obj, key: str, what: str) -> bool:
    value = obj.get(key, False)
    if not isinstance(value, bool):
        raise MalformedMessage(f"{what}: field {key!r} must be true/false, got {value!r}")
    return value


def _list(message, what: str) -> list:
    items = field(message, "data", what)
    if not isinstance(items, list) or not items:
        raise MalformedMessage(f"{what}: field 'data' must be a non-empty list, got {items!r}")
    return items


def _digits(obj, key: str, what: str) -> str:
    """A count Bybit writes as a string of digits: epoch milliseconds, hours."""
    value = field(obj, key, what)
    if not (type(value) is str and value.isascii() and value.isdigit()):
        raise MalformedMessage(f"{what}: field {key!r} must be a string of digits, got {value!r}")
    return value


def _hours(obj, key: str, what: str) -> str:
    value = _digits(obj, key, what)
    if int(value) == 0:
        raise MalformedMessage(f"{what}: field {key!r} must be a positive number of hours, got {value!r}")
    return value


#: The ticker fields perpflow keeps in its merged state, each with its validator.
TICKER_FIELDS = {
    "markPrice": NUMBERS.price, "indexPrice": NUMBERS.price, "fundingRate": NUMBERS.signed,
    "nextFundingTime": _digits, "fundingIntervalHour": _hours,
    "openInterest": NUMBERS.amount, "openInterestValue": NUMBERS.amount,
    "singleOpenInterest": NUMBERS.amount, "singleOpenInterestValue": NUMBERS.amount,
}
FUNDING_FIELDS = ("markPrice", "indexPrice", "fundingRate", "nextFundingTime", "fundingIntervalHour")


def _one_sided(state: dict, single: str, both: str) -> str | None:
    """Bybit's one-side figure, or half its two-sided one where the one-side field is missing."""
    if state.get(single):
        return state[single]
    if state.get(both):
        return format(Decimal(state[both]) / 2, "f")
    return None


class BybitSyncRules:
    """orderbook.{depth}: every message has its own ``u`` (``first_seq == last_seq``), one above the
    previous message's; a snapshot (including a ``u = 1`` restart) replaces the book."""

    def is_stale(self, delta: BookDelta, snapshot_seq: int) -> bool:
        return delta.last_seq <= snapshot_seq

    def bridges(self, delta: BookDelta, snapshot_seq: int) -> bool:
        return delta.first_seq == snapshot_seq + 1

    def continues(self, delta: BookDelta, previous: BookDelta) -> bool:
        return delta.first_seq == previous.last_seq + 1


class BybitLinear(Venue):
    exchange = "bybit-linear"
    default_ws_url = "wss://stream.bybit.com"
    default_rest_url = "https://api.bybit.com"
    WS_PATH = "/v5/public/linear"
    SYMBOL_PATTERN = r"[A-Z0-9]+(?:-[0-9]{2}[A-Z]{3}[0-9]{2})?"
    SYMBOL_EXAMPLES = "BTCUSDT,ETHUSDT,SOLUSDT"
    BOOK_RESYNC = BookResync.RESUBSCRIBE
    #: tickers push every 100 ms and the 50-level book every 20 ms, but only what changed, so a
    #: calm contract can be quiet for seconds. Trades and liquidations share the connection, so a
    #: dead connection shows in the other two; on their own they cannot tell a stall from a calm
    #: market.
    SILENCE_LIMIT_S: ClassVar[dict[str, float | None]] = {
        "orderbook.50": 30.0, "tickers": 30.0, "publicTrade": None, "allLiquidation": None}
    TRADE_STREAM = "publicTrade"
    BOOK_STREAM = "orderbook.50"
    COVERAGE = {
        "trades": (Coverage.COMPLETE, "every trade is pushed, but ids are UUIDs: a loss during a drop cannot be "
                                      "detected (run --redundancy 2)"),
        "book": (Coverage.COMPLETE, "top 50 levels per side (orderbook.50), resynced by resubscribing"),
        "funding": (Coverage.COMPLETE, "tickers"),
        "mark_price": (Coverage.COMPLETE, "tickers"),
        "index_price": (Coverage.COMPLETE, "tickers"),
        "open_interest": (Coverage.SAMPLED, "tickers, one side (singleOpenInterest where published)"),
        "liquidations": (Coverage.COMPLETE, "allLiquidation pushes every liquidation, batched every 500 ms (as "
                                            "Bybit documents it; no public history to reconcile against)"),
        "adl": (Coverage.UNAVAILABLE, "adlAlert is not collected yet"),
        "long_short_ratios": (Coverage.COMPLETE, "account-ratio: shares of all accounts holding long and short "
                                                 "positions, every closed 5 m period (no top-trader statistics)"),
        "taker_volumes": (Coverage.UNAVAILABLE, "Bybit publishes no taker-volume statistic; sum raw.trades by side"),
    }
    PING_FRAME = '{"op":"ping"}'
    PING_INTERVAL_S = 20.0       # Bybit recommends a ping every 20 s; silence cuts the link at 10 min
    REST_WEIGHT_LIMIT = 7200     # 600 requests per 5 s per IP, every request weighing 1, per minute
    WEIGHT_HEADER = None         # see the module docstring: Bybit reports what remains, per account
    rules = BybitSyncRules()

    normalize_symbol = staticmethod(normalize_symbol)

    def __init__(self):
        self._instruments: list[dict] = []           # instruments-info entries
        self._reference_ms: int | None = None        # instruments-info server time
        self._funding_hours: dict[str, int] = {}     # native symbol -> hours, from instruments-info
        self._tickers: dict[str, dict] = {}          # native symbol -> merged ticker fields
        self._book_depth: dict[str, str] = {}        # native symbol -> the orderbook kind feeding its book

    # --- streams -----------------------------------------------------------------------------

    def ws_connections(self, ws_url: str, symbols: list[str]) -> list[WsConnection]:
        """All of a symbol's topics on one connection; a new connection where the next symbol's
        topics would pass Bybit's 21,000 characters per connection."""
        groups: list[list[str]] = [[]]
        used = 0
        for native in symbols:
            topics = [f"{kind}.{native.upper()}" for kind in STREAM_KINDS]
            size = len(orjson.dumps(topics))
            if groups[-1] and used + size > TOPIC_CHARS_PER_CONNECTION:
                groups.append([])
                used = 0
            groups[-1] += topics
            used += size
        url = ws_url.rstrip("/") + self.WS_PATH
        return [WsConnection(f"linear-{number}", url, tuple(topics), tuple(
            orjson.dumps({"op": "subscribe", "args": topics[i:i + TOPICS_PER_REQUEST]}).decode()
            for i in range(0, len(topics), TOPICS_PER_REQUEST)))
            for number, topics in enumerate(groups, start=1) if topics]

    def stream_kind(self, stream: str) -> str:
        """orderbook.50.BTCUSDT -> orderbook.50"""
        kind, dot, _ = stream.rpartition(".")
        return kind if dot else stream

    def stream_symbol(self, stream: str) -> str:
        """orderbook.50.BTCUSDT -> BTCUSDT"""
        return stream.rpartition(".")[2].upper()

    def stream_of(self, frame: str) -> str | None:
        """The topic of a frame without parsing the JSON: first key on the fast path, else found."""
        if frame.startswith('{"topic":"'):
            end = frame.find('"', 10)
            return frame[10:end] if end > 0 else None
        found = TOPIC_IN_FRAME.search(frame)
        return found.group(1) if found else None

    def resubscribe_frames(self, stream: str) -> tuple[str, ...]:
        """Bybit pushes a fresh snapshot when a topic is subscribed again; it refuses a topic that
        is already subscribed, hence the unsubscribe first."""
        return tuple(orjson.dumps({"op": op, "args": [stream]}).decode() for op in ("unsubscribe", "subscribe"))

    # --- reference data ----------------------------------------------------------------------

    def reference_urls(self, rest_url: str) -> dict[str, str]:
        # 1000 is the page maximum: one page holds today's linear list (500, the default, does not);
        # past 1000 symbols the rest would be on pages behind ``nextPageCursor``, not fetched here.
        return {"instruments": f"{rest_url.rstrip('/')}/v5/market/instruments-info?category=linear&limit=1000"}

    def apply_reference(self, name: str, body) -> None:
        if name != "instruments":
            return
        what = "instruments-info"
        result = field(self._ok(body, what), "result", what)
        entries = field(result, "list", what)
        if not isinstance(entries, list):
            raise MalformedMessage(f"{what}: 'result.list' must be a list")
        self._instruments = [e for e in entries if isinstance(e, dict) and isinstance(e.get("symbol"), str)]
        self._reference_ms = body["time"] if isinstance(body.get("time"), int) else None
        self._funding_hours = {}
        for entry in self._instruments:
            minutes = entry.get("fundingInterval")
            # Minutes to hours; an interval that is not whole hours stays unknown rather than rounded.
            if (entry.get("contractType") == "LinearPerpetual" and type(minutes) is int and minutes > 0
                    and minutes % 60 == 0):
                self._funding_hours[entry["symbol"].upper()] = minutes // 60

    def tradable_symbols(self) -> set[str]:
        return {e["symbol"] for e in self._instruments
                if e.get("contractType") == "LinearPerpetual" and e.get("status") == "Trading"}

    def instruments(self, ts_recv: int) -> list[Instrument]:
        out = []
        for entry in self._instruments:
            what = f"instruments-info {entry['symbol']}"
            contract = entry.get("contractType")
            if contract not in ("LinearPerpetual", "LinearFutures"):
                continue
            try:
                symbol, native = _symbol(entry, "symbol", what)
            except MalformedMessage:
                continue   # a naming scheme perpflow does not know: not a contract it can collect
            perpetual = contract == "LinearPerpetual"
            if not perpetual and int(_digits(entry, "deliveryTime", what)) == 0:
                raise MalformedMessage(f"{what}: a dated future without a deliveryTime")
            out.append(Instrument(
                exchange=self.exchange, symbol=symbol, symbol_native=native,
                ts_exchange=self._reference_ms or ts_recv // 1_000_000, ts_recv=ts_recv,
                market_type="perpetual" if perpetual else "future", margin="linear",
                base_asset=str(field(entry, "baseCoin", what)), quote_asset=str(field(entry, "quoteCoin", what)),
                settle_asset=str(field(entry, "settleCoin", what)), qty_unit="base",
                contract_size=None, contract_size_unit=None,
                tick_size=NUMBERS.price(field(entry, "priceFilter", what), "tickSize", what),
                lot_size=NUMBERS.price(field(entry, "lotSizeFilter", what), "qtyStep", what),
                funding_interval_hours=self._funding_hours.get(native) if perpetual else None,
                expiry=None if perpetual else int(entry["deliveryTime"]), status=str(field(entry, "status", what))))
        return out

    def account_ratio(self, query: dict, body, ts_recv: int) -> list[LongShortRatio]:
        """Shares of accounts long and short per period, newest first; the newest period is held
        back (``ingest.venues.positioning``)."""
        what = "account-ratio"
        if query.get("period") != ACCOUNT_RATIO_PERIOD:
            raise SkipMessage(f"{what}: period {query.get('period')!r} is not collected")
        native = query.get("symbol", "")
        symbol = normalize_symbol(native)
        rows = field(field(self._ok(body, what), "result", what), "list", what)
        if not isinstance(rows, list):
            raise MalformedMessage(f"{what}: field 'list' must be a list of periods")
        out = []
        for row in positioning.closed_periods(rows, lambda row: positioning.period_start(field(row, "timestamp", what),
                                                                                         what)):
            if field(row, "symbol", what) != native:
                raise MalformedMessage(f"{what}: a row of {row['symbol']!r} in the answer for {native}")
            long_share, short_share = NUMBERS.amount(row, "buyRatio", what), NUMBERS.amount(row, "sellRatio", what)
            if Decimal(short_share) == 0:
                raise MalformedMessage(f"{what}: sellRatio 0 leaves the long/short ratio undefined")
            out.append(LongShortRatio(exchange=self.exchange, symbol=symbol, symbol_native=native,
                                      ts_exchange=int(row["timestamp"]), ts_recv=ts_recv, period=positioning.PERIOD,
                                      population="all_accounts", long_share=long_share, short_share=short_share,
                                      long_short_ratio=format((Decimal(long_share) / Decimal(short_share)).normalize(),
                                                              "f")))
        return out

    @staticmethod
    def _ok(body, what: str) -> dict:
        if not isinstance(body, dict):
            raise MalformedMessage(f"{what}: expected a JSON object, got {type(body).__name__}")
        if body.get("retCode") != 0:
            raise MalformedMessage(f"{what}: retCode {body.get('retCode')!r}: {body.get('retMsg')!r}")
        return body

    # --- recordings --------------------------------------------------------------------------

    def message_time_ms(self, message) -> int | None:
        ts = message.get("ts") if isinstance(message, dict) else None
        return ts if isinstance(ts, int) and not isinstance(ts, bool) else None

    def recognizes(self, message) -> bool:
        if not isinstance(message, dict):
            return False
        topic = message.get("topic")
        if isinstance(topic, str):
            return bool(TOPIC.fullmatch(topic)) and ("type" in message or "data" in message)
        return message.get("op") in CONTROL_OPS and ("success" in message or "conn_id" in message
                                                    or message.get("op") == "pong")

    # --- websocket ---------------------------------------------------------------------------

    def map_ws(self, message, ts_recv: int) -> list:
        if not isinstance(message, dict):
            raise MalformedMessage(f"expected a JSON object, got {type(message).__name__}")
        topic = message.get("topic")
        if topic is None:
            return self._control(message)
        if not isinstance(topic, str) or "." not in topic:
            raise MalformedMessage(f"field 'topic' must be '<kind>.<symbol>', got {topic!r}")
        kind = self.stream_kind(topic)
        if kind.startswith("orderbook."):
            if not kind[len("orderbook."):].isdigit():
                raise SkipMessage(f"{kind}: topic not collected")
            return self._book(message, kind, ts_recv)
        handler = self._handlers.get(kind)
        if handler is None:
            raise SkipMessage(f"{kind}: topic not collected")
        return handler(self, message, ts_recv)

    @staticmethod
    def _control(message: dict) -> list:
        op = message.get("op")
        if message.get("success") is False:
            raise MalformedMessage(f"{op} refused: {message.get('ret_msg')!r}")
        if op == "pong" or message.get("ret_msg") == "pong":
            raise SkipMessage("pong")
        if op in CONTROL_OPS:
            raise SkipMessage(f"{op} reply")
        raise MalformedMessage("neither a 'topic' nor an 'op' reply")

    def _book(self, message: dict, kind: str, ts_recv: int) -> list:
        what = kind
        data = field(message, "data", what)
        symbol, native = _symbol(data, "s", what)
        update_id = integer(data, "u", what)
        if update_id < 1:
            raise MalformedMessage(f"{what}: field 'u' must be a positive update id, got {update_id}")
        kind_of_data = field(message, "type", what)
        if kind_of_data not in ("snapshot", "delta"):
            raise MalformedMessage(f"{what}: field 'type' must be snapshot or delta, got {kind_of_data!r}")
        ts = integer(message, "cts", what) if "cts" in message else integer(message, "ts", what)
        bids, asks = NUMBERS.levels(data, "b", what), NUMBERS.levels(data, "a", what)
        if self._book_depth.setdefault(native, kind) != kind:
            raise SkipMessage("orderbook depth other than the one feeding the symbol's book")
        if kind_of_data == "snapshot" or update_id == 1:
            return [BookSnapshot(exchange=self.exchange, symbol=symbol, symbol_native=native, ts_exchange=ts,
                                 ts_recv=ts_recv, bids=bids, asks=asks, seq=update_id, reason="venue")]
        return [BookDelta(exchange=self.exchange, symbol=symbol, symbol_native=native, ts_exchange=ts,
                          ts_recv=ts_recv, bids=bids, asks=asks, first_seq=update_id, last_seq=update_id,
                          prev_seq=None)]

    def _public_trade(self, message: dict, ts_recv: int) -> list:
        what = "publicTrade"
        trades = []
        for item in _list(message, what):
            symbol, native = _symbol(item, "s", what)
            trade_id = field(item, "i", what)
            if not isinstance(trade_id, str) or not trade_id:
                raise MalformedMessage(f"{what}: field 'i' must be a trade id string, got {trade_id!r}")
            block, rpi = _flag(item, "BT", what), _flag(item, "RPI", what)
            trades.append(Trade(
                exchange=self.exchange, symbol=symbol, symbol_native=native, ts_exchange=integer(item, "T", what),
                ts_recv=ts_recv, trade_id=trade_id, price=NUMBERS.price(item, "p", what),
                qty=NUMBERS.quantity(item, "v", what), qty_unit="base", side=_side(item, "S", what).lower(),
                is_aggregated=False, trade_type="BLOCK" if block else "RPI" if rpi else "MARKET"))
        return trades

    def _ticker(self, message: dict, ts_recv: int) -> list:
        what = "tickers"
        data = field(message, "data", what)
        symbol, native = _symbol(data, "symbol", what)
        ts = integer(message, "ts", what)
        update = {key: data[key] if data[key] == "" else check(data, key, what)
                  for key, check in TICKER_FIELDS.items() if key in data}
        previous = self._tickers.get(native)
        kind_of_data = field(message, "type", what)
        if kind_of_data == "snapshot":
            state = update
        elif kind_of_data == "delta":
            if previous is None:
                raise SkipMessage("tickers delta before the symbol's snapshot")
            state = {**previous, **update}
        else:
            raise MalformedMessage(f"{what}: field 'type' must be snapshot or delta, got {kind_of_data!r}")
        self._tickers[native] = state
        before = previous or {}
        records = []
        if any(key in state for key in FUNDING_FIELDS) and any(state.get(k) != before.get(k) for k in FUNDING_FIELDS):
            records.append(self._funding(state, symbol, native, ts, ts_recv))
        open_interest = _one_sided(state, "singleOpenInterest", "openInterest")
        if open_interest is not None and open_interest != _one_sided(before, "singleOpenInterest", "openInterest"):
            records.append(OpenInterest(
                exchange=self.exchange, symbol=symbol, symbol_native=native, ts_exchange=ts, ts_recv=ts_recv,
                open_interest=open_interest, qty_unit="base",
                open_interest_usd=_one_sided(state, "singleOpenInterestValue", "openInterestValue")))
        return records

    def _funding(self, state: dict, symbol: str, native: str, ts: int, ts_recv: int) -> Funding:
        rate = state.get("fundingRate") or None   # "" on dated futures: no funding at all
        interval = next_time = None
        if rate is not None:
            hours = state.get("fundingIntervalHour")
            interval = int(hours) if hours else self._funding_hours.get(native)
            next_time = int(state["nextFundingTime"]) if state.get("nextFundingTime") else None
        return Funding(exchange=self.exchange, symbol=symbol, symbol_native=native, ts_exchange=ts, ts_recv=ts_recv,
                       rate=rate, interval_hours=interval, next_funding_time=next_time,
                       mark_price=state.get("markPrice") or None, index_price=state.get("indexPrice") or None,
                       is_realised=False)

    def _liquidation(self, item, what: str, ts_recv: int, keys: tuple[str, str, str, str, str]) -> Liquidation:
        """One liquidation; ``keys`` name its time, symbol, position side, size and price fields."""
        time_key, symbol_key, side_key, size_key, price_key = keys
        symbol, native = _symbol(item, symbol_key, what)
        long_liquidated = _side(item, side_key, what) == "Buy"
        return Liquidation(exchange=self.exchange, symbol=symbol, symbol_native=native,
                           ts_exchange=integer(item, time_key, what), ts_recv=ts_recv,
                           order_side="sell" if long_liquidated else "buy",
                           liquidated_position="long" if long_liquidated else "short",
                           price=NUMBERS.price(item, price_key, what), avg_price=None,
                           qty=NUMBERS.quantity(item, size_key, what), qty_unit="base", order_status=None,
                           is_sampled=what == "liquidation")

    def _all_liquidation(self, message: dict, ts_recv: int) -> list:
        what = "allLiquidation"
        return [self._liquidation(item, what, ts_recv, ("T", "s", "S", "v", "p")) for item in _list(message, what)]

    def _retired_liquidation(self, message: dict, ts_recv: int) -> list:
        what = "liquidation"
        item = field(message, "data", what)
        return [self._liquidation(item, what, ts_recv, ("updatedTime", "symbol", "side", "size", "price"))]

    _handlers: ClassVar[dict] = {"publicTrade": _public_trade, "tickers": _ticker,
                                 "allLiquidation": _all_liquidation, "liquidation": _retired_liquidation}

    # --- REST --------------------------------------------------------------------------------

    def polls(self, rest_url: str, symbols: list[str]) -> list[Poll]:
        """The long/short account ratio of each symbol, once a minute."""
        return [Poll(f"{rest_url.rstrip('/')}/v5/market/account-ratio?category=linear&symbol={native}"
                     f"&period={ACCOUNT_RATIO_PERIOD}&limit={positioning.PERIODS_PER_POLL}", positioning.POLL_EVERY_S)
                for native in symbols]

    def map_rest(self, url: str, body, ts_recv: int) -> list:
        path = urlsplit(url).path
        if path.endswith("/v5/market/account-ratio"):
            return self.account_ratio(dict(parse_qsl(urlsplit(url).query)), body, ts_recv)
        if path.endswith("/v5/market/instruments-info"):
            self.apply_reference("instruments", body)
            return self.instruments(ts_recv)
        if path.endswith("/v5/market/orderbook"):
            raise SkipMessage("/v5/market/orderbook: its u numbers the 1000-level stream, not orderbook.50")
        raise SkipMessage(f"{path}: REST endpoint not collected")
