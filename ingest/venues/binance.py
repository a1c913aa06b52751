"""Binance futures (USD-M ``fstream``/``/fapi``, COIN-M ``dstream``/``/dapi``): one dialect, two venues.

USD-M and COIN-M send the same envelopes, events and depth rules; they differ in hosts, REST
prefix, symbol spelling and units, which each venue module (``binance_usdm``, ``binance_coinm``)
states as class attributes. Every Binance quirk lives here and nowhere else:
  * combined-stream envelopes ``{"stream", "data"}`` and plain payloads both arrive;
  * aggTrade ``m`` is "buyer is maker", so ``m=true`` means the taker sold;
  * trade (not aggTrade: insurance-fund and ADL fills are not aggregated) ``X`` is MARKET,
    INSURANCE_FUND, ADL or NA; an ``ADL`` fill is also emitted as an ``Adl`` record (the side of
    the deleveraged position is not published);
  * forceOrder ``S=SELL`` is the liquidation order selling, i.e. a *long* was liquidated,
    and the stream is a sample (the latest order per symbol per second);
  * depth sync: drop ``u < lastUpdateId``; the first applied event has
    ``U <= lastUpdateId <= u`` (live streams may also continue with ``pu == lastUpdateId``);
    afterwards ``pu`` must equal the previous ``u``;
  * markPriceUpdate carries no funding interval: it comes from ``fundingInfo``
    (symbols absent there use 8 h);
  * delivery (quarterly) contracts send markPriceUpdate with ``T: 0`` and ``r`` of ``""`` or
    ``"0.00000000"``: they have no funding, so the record keeps mark and index price with rate,
    interval and next funding time NULL (a placeholder 0 would drag funding averages to zero);
  * older recordings lack markPriceUpdate ``i`` (index price NULL) and openInterest ``time``:
    the REST answer is current as of the response, so its receive time stands in, as it
    already does for a depth snapshot without ``T``/``E``;
  * since the 2026 URL split each routed path (``/public``, ``/market``) serves only its own
    streams; a market stream on the old unrouted URL is acknowledged and then never delivered;
  * numbers are plain decimal strings without exponent; only the funding rate has a sign;
  * a tardis-style JSONL recording line ``{"stream": "<sym>@depthSnapshot", "generated": true,
    "data": {...}}`` is a REST depth snapshot taken where it stands in the stream;
  * the positioning statistics (``/futures/data/globalLongShortAccountRatio``,
    ``topLongShortAccountRatio``, ``topLongShortPositionRatio``, ``takerlongshortRatio``) sit outside
    the API prefix, weigh 0 in the request-weight budget but have an IP limit of their own, 1000
    requests per 5 minutes; their ``timestamp`` is a digit string, the period's start. Long and
    short "Account" fields are shares of accounts, or of position size for the position ratio.
    USD-M serves them per symbol; COIN-M only per pair (all of a pair's contracts together), which
    perpflow does not collect.
"""

from __future__ import annotations

from functools import lru_cache
from urllib.parse import parse_qs, urlsplit

import orjson

from ingest.records import (Adl, BookDelta, BookSnapshot, Funding, Instrument, Liquidation, LongShortRatio,
                            OpenInterest, TakerVolume, Trade)
from ingest.venue import BookResync, Coverage, MalformedMessage, Poll, SkipMessage, Venue, WsConnection
from ingest.venues import positioning
from ingest.venues.fields import DecimalSyntax, field, integer

DEFAULT_FUNDING_INTERVAL_HOURS = 8

SKIPPED_EVENTS = {
    "bookTicker": "bookTicker: the touch is derived from the synced depth book",
    "kline": "kline: candles are built from trades in the warehouse",
    "continuous_kline": "continuous_kline: candles are built from trades in the warehouse",
    "24hrTicker": "24hrTicker: statistics are built from trades in the warehouse",
    "24hrMiniTicker": "24hrMiniTicker: statistics are built from trades in the warehouse",
}
EVENTS = ("aggTrade", "trade", "depthUpdate", "markPriceUpdate", "forceOrder", *SKIPPED_EVENTS)

NUMBERS = DecimalSyntax()   # plain decimals, never an exponent; only funding rates carry a sign

# /futures/data: the long/short statistics by population (ingest.records.LongShortRatio) and taker volume.
RATIO_POPULATIONS = {"globalLongShortAccountRatio": "all_accounts", "topLongShortAccountRatio": "top_accounts",
                     "topLongShortPositionRatio": "top_positions"}
TAKER_VOLUME = "takerlongshortRatio"
# Their own IP limit, 1000 requests per 5 minutes (200 a minute), stated in request-weight units
# (REST_WEIGHT_LIMIT 2400 a minute / 200 = 12 per request) so the service's budget for polls (80%
# of it) holds them to 160 requests a minute: 4 per symbol a minute, 40 symbols before any waits.
FUTURES_DATA_WEIGHT = 12


@lru_cache(maxsize=8192)
def split_symbol(native: str, quotes: tuple[str, ...], suffixed: bool) -> tuple[str, str, str]:
    """BTCUSDT -> (BTC, USDT, PERP); BTCUSD_PERP -> (BTC, USD, PERP); BTCUSD_250328 -> (BTC, USD, 250328)."""
    pair, _, expiry = native.upper().partition("_")
    if suffixed and not expiry:
        raise MalformedMessage(f"symbol {native!r} lacks the _PERP or _<expiry> suffix of this venue's contracts")
    for quote in quotes:
        if pair.endswith(quote) and len(pair) > len(quote):
            return pair[:-len(quote)], quote, expiry or "PERP"
    raise MalformedMessage(f"symbol {native!r} has no known quote asset ({', '.join(quotes)})")


def _taker_side(d: dict, what: str) -> str:
    """``m`` is "buyer is maker": true means the taker sold."""
    maker = field(d, "m", what)
    if not isinstance(maker, bool):
        raise MalformedMessage(f"{what}: field 'm' must be true/false, got {maker!r}")
    return "sell" if maker else "buy"


class BinanceSyncRules:
    """Futures depth-diff rules (differ from spot: there the bridge is lastUpdateId + 1)."""

    def is_stale(self, delta: BookDelta, snapshot_seq: int) -> bool:
        return delta.last_seq < snapshot_seq

    def bridges(self, delta: BookDelta, snapshot_seq: int) -> bool:
        return delta.first_seq <= snapshot_seq <= delta.last_seq or delta.prev_seq == snapshot_seq

    def continues(self, delta: BookDelta, previous: BookDelta) -> bool:
        return delta.prev_seq == previous.last_seq


class BinanceFutures(Venue):
    """The Binance futures dialect; a venue subclass names its hosts, REST prefix and units."""

    API: str                 # REST prefix, e.g. "/fapi/v1"
    QUOTE_ASSETS: tuple[str, ...]
    QTY_UNIT: str            # unit of every size the venue sends: "base" or "contracts"
    SUFFIXED_SYMBOLS: bool   # every symbol ends in _PERP or _<expiry> (COIN-M), or only quarterlies do
    MARGIN: str              # "linear" | "inverse"
    POSITIONING_STATS: bool  # /futures/data long/short ratios and taker volume per symbol
    ROUTES = {"public": ("depth@100ms",), "market": ("aggTrade", "markPrice@1s", "forceOrder")}
    SILENCE_LIMIT_S = {"depth@100ms": 30.0, "aggTrade": 120.0, "markPrice@1s": 5.0, "forceOrder": None}
    TRADE_STREAM = "aggTrade"
    BOOK_STREAM = "depth@100ms"
    # `@trade`'s X: liquidations the insurance fund took over and ADL fills (aggTrade carries no X:
    # its forced fills are indistinguishable MARKET prints).
    FORCED_TRADE_TYPES = frozenset({"INSURANCE_FUND", "ADL"})
    COVERAGE = {
        "trades": (Coverage.COMPLETE, "aggTrade ids are consecutive: a lost id is a gap, backfilled from REST aggTrades"),
        "book": (Coverage.COMPLETE, "diff depth every 100 ms bridged to REST snapshots (U/u/pu)"),
        "funding": (Coverage.COMPLETE, "markPriceUpdate every second"),
        "mark_price": (Coverage.COMPLETE, "markPriceUpdate every second"),
        "index_price": (Coverage.COMPLETE, "markPriceUpdate i, every second"),
        "open_interest": (Coverage.SAMPLED, "REST openInterest polled (--oi-interval)"),
        "liquidations": (Coverage.SAMPLED, "forceOrder: only the latest liquidation per symbol per 1000 ms"),
        "adl": (Coverage.UNAVAILABLE, "ADL fills appear only in the individual trade stream (X: ADL), which "
                                     "live ingest does not subscribe; replays of recorded trade streams map them"),
        "long_short_ratios": (Coverage.COMPLETE, "/futures/data long/short ratios of all accounts, of the top 20% "
                                                 "by margin (accounts and positions), every closed 5 m period"),
        "taker_volumes": (Coverage.COMPLETE, "/futures/data/takerlongshortRatio, every closed 5 m period, base units"),
    }
    BOOK_RESYNC = BookResync.REST_SNAPSHOT
    MAX_CONNECTION_AGE_S = 24 * 3600 - 300   # Binance closes connections at 24 h; rotate before
    REST_WEIGHT_LIMIT = 2400
    WEIGHT_HEADER = "x-mbx-used-weight-1m"
    rules = BinanceSyncRules()

    def __init__(self, funding_intervals: dict[str, int] | None = None):
        self.funding_intervals = dict(funding_intervals or {})
        self._symbols: list[dict] = []       # exchangeInfo entries

    def normalize_symbol(self, native: str) -> str:
        return "-".join(split_symbol(native, self.QUOTE_ASSETS, self.SUFFIXED_SYMBOLS))

    def _symbol(self, obj: dict, key: str, what: str) -> tuple[str, str]:
        native = field(obj, key, what)
        if not isinstance(native, str) or not native:
            raise MalformedMessage(f"{what}: field {key!r} must be a symbol string, got {native!r}")
        return self.normalize_symbol(native), native.upper()

    def ws_connections(self, ws_url: str, symbols: list[str]) -> list[WsConnection]:
        out = []
        for route, kinds in self.ROUTES.items():
            streams = tuple(f"{s.lower()}@{kind}" for s in symbols for kind in kinds)
            out.append(WsConnection(route, f"{ws_url.rstrip('/')}/{route}/stream?streams={'/'.join(streams)}", streams))
        return out

    def stream_kind(self, stream: str) -> str:
        return stream.split("@", 1)[1] if "@" in stream else stream

    def stream_symbol(self, stream: str) -> str:
        """btcusdt@depth@100ms -> BTCUSDT"""
        return stream.split("@", 1)[0].upper()

    def stream_of(self, frame: str) -> str | None:
        """The stream name of a combined-stream frame without parsing the JSON."""
        if frame.startswith('{"stream":"'):
            end = frame.find('"', 11)
            return frame[11:end] if end > 0 else None
        return None

    def trade_sequence(self, trade: Trade) -> tuple[int, int] | None:
        """aggTrade ids are consecutive per symbol, so a jump is a trade the feed lost."""
        if not trade.is_aggregated:
            return None
        agg_id = int(trade.trade_id)
        return agg_id, agg_id

    def trades_url(self, rest_url: str, native: str, from_id: int, limit: int = 1000) -> str:
        return f"{rest_url.rstrip('/')}{self.API}/aggTrades?symbol={native}&fromId={from_id}&limit={limit}"

    def book_snapshot_url(self, rest_url: str, native: str) -> str:
        return f"{rest_url.rstrip('/')}{self.API}/depth?symbol={native}&limit=1000"

    def open_interest_url(self, rest_url: str, native: str) -> str:
        return f"{rest_url.rstrip('/')}{self.API}/openInterest?symbol={native}"

    def polls(self, rest_url: str, symbols: list[str]) -> list[Poll]:
        """The positioning statistics of each perpetual, four requests per symbol a minute (the docs
        show them for perpetuals only; a quarterly ``BTCUSDT_250328`` is not polled)."""
        if not self.POSITIONING_STATS:
            return []
        base = f"{rest_url.rstrip('/')}/futures/data"
        query = f"period={positioning.PERIOD}&limit={positioning.PERIODS_PER_POLL}"
        return [Poll(f"{base}/{endpoint}?symbol={native}&{query}", positioning.POLL_EVERY_S, FUTURES_DATA_WEIGHT)
                for native in symbols if "_" not in native for endpoint in (*RATIO_POPULATIONS, TAKER_VOLUME)]

    def reference_urls(self, rest_url: str) -> dict[str, str]:
        base = rest_url.rstrip("/") + self.API
        return {"instruments": f"{base}/exchangeInfo", "funding_intervals": f"{base}/fundingInfo"}

    def apply_reference(self, name: str, body) -> None:
        if name == "instruments":
            symbols = body.get("symbols") if isinstance(body, dict) else None
            if not isinstance(symbols, list):
                raise MalformedMessage("exchangeInfo: expected an object with a 'symbols' list")
            self._symbols = [s for s in symbols if isinstance(s, dict) and isinstance(s.get("symbol"), str)]
        elif name == "funding_intervals":
            if not isinstance(body, list):
                raise MalformedMessage("fundingInfo: expected a list")
            for item in body:
                hours = item.get("fundingIntervalHours") if isinstance(item, dict) else None
                if isinstance(hours, int) and hours > 0:
                    self.funding_intervals[item["symbol"].upper()] = hours

    @staticmethod
    def _status(entry: dict) -> str:
        return entry.get("status") or entry.get("contractStatus") or "TRADING"

    def tradable_symbols(self) -> set[str]:
        return {s["symbol"] for s in self._symbols
                if s.get("contractType") == "PERPETUAL" and self._status(s) == "TRADING"}

    def instruments(self, ts_recv: int) -> list[Instrument]:
        out = []
        for entry in self._symbols:
            what = f"exchangeInfo {entry['symbol']}"
            filters = {f.get("filterType"): f for f in entry.get("filters", []) if isinstance(f, dict)}
            perpetual = entry.get("contractType") == "PERPETUAL"
            try:
                symbol, native = self._symbol(entry, "symbol", what)
            except MalformedMessage:
                continue   # spot-like or unknown quote: not a contract perpflow collects
            size = entry.get("contractSize")
            out.append(Instrument(
                exchange=self.exchange, symbol=symbol, symbol_native=native, ts_exchange=ts_recv // 1_000_000,
                ts_recv=ts_recv, market_type="perpetual" if perpetual else "future", margin=self.MARGIN,
                base_asset=str(entry.get("baseAsset", "")), quote_asset=str(entry.get("quoteAsset", "")),
                settle_asset=str(entry.get("marginAsset", "")), qty_unit=self.QTY_UNIT,
                contract_size=None if self.QTY_UNIT == "base" else str(size),
                contract_size_unit=None if self.QTY_UNIT == "base" else "usd",
                tick_size=NUMBERS.price(filters.get("PRICE_FILTER", {}), "tickSize", what),
                lot_size=NUMBERS.price(filters.get("LOT_SIZE", {}), "stepSize", what),
                funding_interval_hours=self.funding_intervals.get(native, DEFAULT_FUNDING_INTERVAL_HOURS)
                if perpetual else None,
                expiry=None if perpetual else entry.get("deliveryDate"), status=self._status(entry)))
        return out

    def message_time_ms(self, message) -> int | None:
        data = message.get("data", message) if isinstance(message, dict) else None
        if isinstance(data, dict):
            ts = data.get("E") or data.get("T")
            return ts if isinstance(ts, int) else None
        return None

    def recognizes(self, message) -> bool:
        if not isinstance(message, dict):
            return False
        data = message.get("data", message)
        if not isinstance(data, dict) or data.get("e") not in EVENTS:
            return False
        order = data.get("o")
        native = order.get("s") if isinstance(order, dict) else data.get("s")
        try:
            self.normalize_symbol(native)
        except (MalformedMessage, AttributeError):
            return False
        return True

    def recorded_rest(self, message) -> tuple[str, object] | None:
        if isinstance(message, dict) and message.get("generated"):
            name, _, suffix = str(message.get("stream", "")).partition("@")
            path = {"depthSnapshot": "depth", "openInterest": "openInterest"}.get(suffix)
            if path:
                return f"{self.API}/{path}?symbol={name.upper()}", message.get("data")
        return None

    # --- websocket -------------------------------------------------------------------------

    def map_ws(self, message, ts_recv: int) -> list:
        if not isinstance(message, dict):
            raise MalformedMessage(f"expected a JSON object, got {type(message).__name__}")
        if "result" in message and "id" in message:
            raise SkipMessage("subscription reply")
        data = message["data"] if "stream" in message and "data" in message else message
        if not isinstance(data, dict):
            raise MalformedMessage(f"stream data is {type(data).__name__}, expected an object")
        event = data.get("e")
        handler = self._handlers.get(event)
        if handler is not None:
            return handler(self, data, ts_recv)
        if event in SKIPPED_EVENTS:
            raise SkipMessage(SKIPPED_EVENTS[event])
        if event is None:
            raise MalformedMessage("no event type field 'e'")
        raise SkipMessage(f"{event}: event type not collected")

    def _agg_trade(self, d: dict, ts_recv: int) -> list:
        what = "aggTrade"
        symbol, native = self._symbol(d, "s", what)
        return [Trade(exchange=self.exchange, symbol=symbol, symbol_native=native, ts_exchange=integer(d, "T", what),
                      ts_recv=ts_recv, trade_id=str(integer(d, "a", what)), price=NUMBERS.price(d, "p", what),
                      qty=NUMBERS.quantity(d, "q", what), qty_unit=self.QTY_UNIT, side=_taker_side(d, what),
                      is_aggregated=True, first_trade_id=integer(d, "f", what), last_trade_id=integer(d, "l", what))]

    def _trade(self, d: dict, ts_recv: int) -> list:
        what = "trade"
        symbol, native = self._symbol(d, "s", what)
        trade_id = integer(d, "t", what)
        trade = Trade(exchange=self.exchange, symbol=symbol, symbol_native=native, ts_exchange=integer(d, "T", what),
                      ts_recv=ts_recv, trade_id=str(trade_id), price=NUMBERS.price(d, "p", what),
                      qty=NUMBERS.quantity(d, "q", what), qty_unit=self.QTY_UNIT, side=_taker_side(d, what),
                      is_aggregated=False,
                      first_trade_id=trade_id, last_trade_id=trade_id, trade_type=d.get("X", "MARKET"))
        if trade.trade_type != "ADL":
            return [trade]
        # An ADL fill is also an Adl record. Binance does not document which party of an ADL trade
        # is the maker, so the deleveraged position stays unknown; ``m`` is kept verbatim.
        return [trade, Adl(exchange=self.exchange, symbol=symbol, symbol_native=native, ts_exchange=trade.ts_exchange,
                           ts_recv=ts_recv, event="fill", deleveraged_position=None, price=trade.price, qty=trade.qty,
                           qty_unit=self.QTY_UNIT, trade_id=trade.trade_id, state=None,
                           detail=orjson.dumps({"X": "ADL", "m": d["m"]}).decode())]

    def _depth_update(self, d: dict, ts_recv: int) -> list:
        what = "depthUpdate"
        symbol, native = self._symbol(d, "s", what)
        return [BookDelta(exchange=self.exchange, symbol=symbol, symbol_native=native,
                          ts_exchange=integer(d, "T", what) if "T" in d else integer(d, "E", what), ts_recv=ts_recv,
                          bids=NUMBERS.levels(d, "b", what), asks=NUMBERS.levels(d, "a", what),
                          first_seq=integer(d, "U", what), last_seq=integer(d, "u", what),
                          prev_seq=integer(d, "pu", what))]

    def _mark_price(self, d: dict, ts_recv: int) -> list:
        what = "markPriceUpdate"
        symbol, native = self._symbol(d, "s", what)
        next_time = integer(d, "T", what)
        if next_time and d.get("r") != "":
            rate = NUMBERS.signed(d, "r", what)
            interval = self.funding_intervals.get(native, DEFAULT_FUNDING_INTERVAL_HOURS)
        else:   # a delivery contract: no funding (see the module docstring)
            rate = interval = next_time = None
        return [Funding(exchange=self.exchange, symbol=symbol, symbol_native=native, ts_exchange=integer(d, "E", what),
                        ts_recv=ts_recv, rate=rate, interval_hours=interval, next_funding_time=next_time,
                        mark_price=NUMBERS.price(d, "p", what),
                        index_price=NUMBERS.price(d, "i", what) if "i" in d else None, is_realised=False)]

    def _force_order(self, d: dict, ts_recv: int) -> list:
        what = "forceOrder"
        order = field(d, "o", what)
        symbol, native = self._symbol(order, "s", what)
        side = field(order, "S", what)
        if side not in ("BUY", "SELL"):
            raise MalformedMessage(f"{what}: field 'S' must be BUY or SELL, got {side!r}")
        filled = NUMBERS.quantity(order, "z" if "z" in order else "q", what)
        return [Liquidation(exchange=self.exchange, symbol=symbol, symbol_native=native,
                            ts_exchange=integer(order, "T", what), ts_recv=ts_recv, order_side=side.lower(),
                            liquidated_position="long" if side == "SELL" else "short", price=NUMBERS.price(order, "p", what),
                            avg_price=NUMBERS.price(order, "ap", what) if "ap" in order else None, qty=filled,
                            qty_unit=self.QTY_UNIT, order_status=order.get("X"), is_sampled=True)]

    _handlers = {"aggTrade": _agg_trade, "trade": _trade, "depthUpdate": _depth_update,
                 "markPriceUpdate": _mark_price, "forceOrder": _force_order}

    # --- REST ------------------------------------------------------------------------------

    def map_rest(self, url: str, body, ts_recv: int) -> list:
        parts = urlsplit(url)
        query = {k: v[0] for k, v in parse_qs(parts.query).items()}
        path = parts.path
        if path.endswith(f"{self.API}/depth"):
            return [self.depth_snapshot(query.get("symbol", ""), body, ts_recv)]
        if path.endswith(f"{self.API}/openInterest"):
            return [self.open_interest(body, ts_recv)]
        if path.endswith(f"{self.API}/aggTrades"):
            return self.agg_trades(query.get("symbol", ""), body, ts_recv)
        if path.endswith(f"{self.API}/fundingInfo"):
            self.apply_reference("funding_intervals", body)
            raise SkipMessage("fundingInfo: reference data (funding intervals updated)")
        if path.endswith(f"{self.API}/exchangeInfo"):
            self.apply_reference("instruments", body)
            return self.instruments(ts_recv)
        if "/futures/data/" in path and self.POSITIONING_STATS:
            return self.positioning(path.rsplit("/", 1)[1], query, body, ts_recv)
        if path.endswith((f"{self.API}/time", f"{self.API}/ping")):
            raise SkipMessage(f"{path}: reference data")
        raise SkipMessage(f"{path}: REST endpoint not collected")

    def depth_snapshot(self, native: str, body, ts_recv: int) -> BookSnapshot:
        what = "depth snapshot"
        symbol = self.normalize_symbol(native)
        ts = body.get("T") or body.get("E") if isinstance(body, dict) else None
        return BookSnapshot(exchange=self.exchange, symbol=symbol, symbol_native=native.upper(),
                            ts_exchange=ts or ts_recv // 1_000_000, ts_recv=ts_recv,
                            bids=NUMBERS.levels(body, "bids", what), asks=NUMBERS.levels(body, "asks", what),
                            seq=integer(body, "lastUpdateId", what), reason="sync")

    def agg_trades(self, native: str, body, ts_recv: int) -> list[Trade]:
        """REST aggTrades (backfill after a gap): the stream's fields without ``e``/``s``/``E``."""
        if not isinstance(body, list):
            raise MalformedMessage("aggTrades: expected a list")
        trades = []
        for item in body:
            trades += self._agg_trade({**item, "s": native} if isinstance(item, dict) else item, ts_recv)
        return trades

    def open_interest(self, body, ts_recv: int) -> OpenInterest:
        what = "openInterest"
        symbol, native = self._symbol(body, "symbol", what)
        return OpenInterest(exchange=self.exchange, symbol=symbol, symbol_native=native,
                            ts_exchange=integer(body, "time", what) if "time" in body else ts_recv // 1_000_000,
                            ts_recv=ts_recv, open_interest=NUMBERS.amount(body, "openInterest", what),
                            qty_unit=self.QTY_UNIT)

    def positioning(self, endpoint: str, query: dict, body, ts_recv: int) -> list:
        """A /futures/data answer: a list of periods, oldest first; the newest is held back
        (``ingest.venues.positioning``)."""
        what = endpoint
        if endpoint not in RATIO_POPULATIONS and endpoint != TAKER_VOLUME:
            raise SkipMessage(f"/futures/data/{endpoint}: not collected")
        symbol, native = self._symbol(query, "symbol", what)
        period = query.get("period")
        if period != positioning.PERIOD:
            raise SkipMessage(f"{what}: period {period!r} is not collected")
        if not isinstance(body, list):
            raise MalformedMessage(f"{what}: expected a list of periods, got {type(body).__name__}")
        rows = positioning.closed_periods(body, lambda row: positioning.period_start(field(row, "timestamp", what), what))
        common = dict(exchange=self.exchange, symbol=symbol, symbol_native=native, ts_recv=ts_recv, period=period)
        if endpoint == TAKER_VOLUME:
            return [TakerVolume(**common, ts_exchange=positioning.period_start(row["timestamp"], what),
                                buy_qty=NUMBERS.amount(row, "buyVol", what), sell_qty=NUMBERS.amount(row, "sellVol", what),
                                qty_unit=self.QTY_UNIT) for row in rows]
        out = []
        for row in rows:
            if "symbol" in row and row["symbol"] != native:
                raise MalformedMessage(f"{what}: a row of {row['symbol']!r} in the answer for {native}")
            out.append(LongShortRatio(**common, ts_exchange=positioning.period_start(row["timestamp"], what),
                                      population=RATIO_POPULATIONS[endpoint],
                                      long_share=NUMBERS.amount(row, "longAccount", what),
                                      short_share=NUMBERS.amount(row, "shortAccount", what),
                                      long_short_ratio=NUMBERS.amount(row, "longShortRatio", what)))
        return out
