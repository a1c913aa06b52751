"""dYdX v4's indexer websocket and REST on the simulated market (``dydx-v4``).

Served under the prefix ``/dydx`` (the indexer's own host; point ``--ws-url`` and ``--rest-url``
at ``.../dydx``: the venue module appends ``/v4/ws`` and ``/v4/...``), in the shapes of
exchanges.md §2.5. Prices, sizes, open interest and the oracle are dYdX's own market
(``ingest.simulator.venue_market``); tickers are ``BASE-USD``; the market's tick and step sizes
are kept (``tickSize``/``stepSize`` say so).

* ``/dydx/v4/ws``: ``{"type":"connected","connection_id":..,"message_id":0}`` on connect, then
  ``{"type":"subscribe"|"unsubscribe","channel":..,"id":..}`` for ``v4_trades`` and
  ``v4_orderbook`` (``id`` a ticker) and ``v4_markets`` (no ``id``), answered ``subscribed`` with
  the initial contents or ``unsubscribed``; a request that cannot be read, an unknown type,
  channel or ticker and a second subscription to the same thing are ``error`` frames;
  ``{"type":"ping"}`` is accepted without a reply (as socks does). ``batched: true`` is accepted but
  updates still come one per ``channel_data`` (``channel_batch_data`` is not simulated).
* ``message_id`` counts every message of the **connection** (``Dialect.frame_for`` stamps each
  frame with its connection's counter as it is queued; a frame a fault corrupted still uses up
  an id, so its loss shows as a hole). A ``subscribed`` reply takes its id when the request is
  read and is sent after the snapshot "fetch" (see the fault below), so it may come after
  higher-numbered frames.
* ``v4_trades``: one ``channel_data`` per market fill (the market's aggregated fill: a taker
  order against one price level, which is one dYdX fill of a taker and a maker order), version
  2.1.0, ``side`` the taker's, ``type`` ``LIMIT`` or, for a fill of a liquidation order,
  ``LIQUIDATED`` (the taker is the liquidated subaccount: ``SELL`` = a long liquidated). What the
  book did not fill of a liquidation is closed by deleveraging against the opposite side at the
  bankruptcy price: a ``DELEVERAGED`` trade (taker = the underwater subaccount) once the
  liquidation's second is over (from the feed's list of every liquidation, whoever listens, so
  backlogs and REST pages after an outage have them too). Every liquidation and every
  deleveraging is public. Sizes are dYdX's share of the fill. Ids are the indexer's
  24 hex digits, block height (``createdAtHeight``: one block per second of market time) +
  transaction index + event index; the event index is the market's aggregated trade id
  scrambled (a bijection of 32 bits), so ids are unique but not consecutive
  (:func:`market_fill_of` recovers the fill for tests). ``subscribed`` carries the last
  ``BACKLOG_TRADES`` trades, newest first.
* ``v4_orderbook``: the venue's whole book (every level of the market's ladder, as dYdX's own
  market) as a ``BookView``; ``subscribed`` has the best ``SNAPSHOT_LEVELS`` levels a side as
  ``{"price","size"}`` objects, then one ``channel_data`` per market step in which dYdX's book
  changed, version 1.0.0, ``[price, size]`` pairs with absolute sizes, ``"0"`` deleting, either
  side absent when it did not change (levels beyond the snapshot's are sent when they change).
  No sequence number, no checksum, no time.
* ``v4_markets``: ``subscribed`` with every market (§2.5's fields: ``oraclePrice`` = dYdX's index,
  ``nextFundingRate`` = the market's rate per hour, ``openInterest`` = one side in base units at
  dYdX's share, ``tickSize``, ``stepSize``, ``status`` ACTIVE, ...). At the end of each market
  second, after that step's book and trade frames, one ``oraclePrices`` update with every
  market (``effectiveAt`` = that second), and every ``TRADING_EVERY_MS`` a ``trading`` update
  (open interest, next funding rate, 24 h volume, trades and price change). The oracle updates
  are the only frames with a market time after the step's book changes, which is what lets a
  test line a client's book up with the truth's checkpoints.
* REST under ``/dydx/v4``: ``/perpetualMarkets[?ticker=]``, ``/orderbooks/perpetualMarket/{ticker}``
  (the venue's book now, best ``SNAPSHOT_LEVELS`` a side, uncrossed), ``/trades/perpetualMarket/{ticker}
  ?limit=&createdBeforeOrAtHeight=&createdBeforeOrAt=&page=`` (comlink's paging: newest first, at most
  ``REST_LIMIT`` a page, deleveragings included; the history is the feed's recent fills, so pages
  end where the real indexer would go on) and
  ``/historicalFunding/{ticker}?limit=&effectiveBeforeOrAt=`` (the hourly settlements since the
  simulator started: rate = the market's rate per hour, price = the oracle), each with the feed's
  REST faults; a bad ticker or parameter is a 400 with ``{"errors": [...]}``. The REST rate limit
  (100 requests per 10 s) and socks' subscription limits are not simulated.

Integrity faults (``FaultConfig``; off by default):

* ``message_loss_every_s``: after each period the next ``v4_trades`` update (on any connection) is
  not sent, its ``message_id`` used up, so the client sees a hole on that connection and must
  recover the trade it held. Recorded as a ``message_loss`` fault (``connection_id``,
  ``message_id``, ``trade_ids``).

* ``fetch_loss_every_s`` / ``fetch_loss_steps``: socks fetches the snapshot *before* it registers
  the subscription, so updates during the fetch are lost for that subscriber. The first
  ``v4_orderbook`` subscription after each period gets its snapshot taken when the request is
  read and its updates only from ``fetch_loss_steps`` market steps later: the updates of those
  steps never reach it, so levels they changed stay stale and its book can cross. Recorded in
  the truth as a ``fetch_loss`` fault (``symbol``, ``ticker``, ``steps``, ``ts`` = when the
  snapshot was taken).
* ``stale_level_every_s``: after each period, the next book update that deletes a level beyond
  the new best price (a bid above the best bid, an ask below the best ask) does not send that
  deletion: the level stays in every subscriber's book until a fresh snapshot (the indexer's
  ``uncross-orderbook`` task deletes such levels without a websocket update). Recorded as a
  ``stale_level`` fault (``symbol``, ``ticker``, ``side``, ``price``).
"""

from __future__ import annotations

import itertools
import uuid
from collections import Counter, deque
from dataclasses import dataclass
from decimal import Decimal

import orjson
from aiohttp import web

from ..config import ConfigError, format_time_ms, parse_time_ms
from ..market import Liquidation
from . import BookView, Dialect

PREFIX = "/dydx"
API = "/v4"
CHANNELS = ("v4_trades", "v4_orderbook", "v4_markets")
BOOK_DEPTH = 1 << 20                # the whole book: every level of the market's ladder
SNAPSHOT_LEVELS = 100               # per side in a subscribed snapshot and the REST book (§2.5)
BACKLOG_TRADES = 100                # trades in a v4_trades subscribed reply [assumption: §2.5 gives no figure]
REST_LIMIT = 1000                   # the most rows a REST page returns (comlink API_LIMIT_V4) [code reading]
DELEVERAGED_KEPT = 10_000           # per market, for backlogs and REST
SETTLEMENTS_KEPT = 24 * 30          # hourly settlements kept for historicalFunding
TRADING_EVERY_MS = 30_000           # the roundtable market updater's cadence
HOUR_MS = 3_600_000
DAY_MS = 24 * HOUR_MS
FIRST_HEIGHT = 40_000_000           # the block height at the simulator's start
BLOCK_MS = 1000
MASK32 = 0xFFFFFFFF
SCRAMBLE = 0x9E3779B1               # odd: multiplying by it mod 2^32 is a bijection
UNSCRAMBLE = pow(SCRAMBLE, -1, 1 << 32)
DELEVERAGING_TX = 0x100             # transaction index of deleveragings (fills use the market index)
QUANTUM_CONVERSION_EXPONENT = -9
ATOMIC_RESOLUTION = {"BTC": -10, "ETH": -9, "SOL": -7}
MARGIN_FRACTIONS = {"BTC": ("0.02", "0.012"), "ETH": ("0.02", "0.012")}    # initial, maintenance
DEFAULT_MARGIN_FRACTIONS = ("0.05", "0.03")


def trade_id(height: int, tx: int, serial: int) -> str:
    """The indexer's trade id: block height, transaction index and (scrambled) event index, 8 hex
    digits each."""
    return f"{height & MASK32:08x}{tx & MASK32:08x}{(serial * SCRAMBLE) & MASK32:08x}"


def market_fill_of(dydx_trade_id: str) -> tuple[int, int] | None:
    """(symbol index, the market's aggregated trade id) of a trade the market made; None for a
    deleveraging (tests use it to check trades against the truth)."""
    tx, event = int(dydx_trade_id[8:16], 16), int(dydx_trade_id[16:24], 16)
    if tx >= DELEVERAGING_TX:
        return None
    return tx, (event * UNSCRAMBLE) & MASK32


def _plain(number: str) -> str:
    """Decimal strings as the indexer writes them (big.js): no trailing zeros ("60392", "0.5")."""
    if "." not in number:
        return number
    stripped = number.rstrip("0").rstrip(".")
    return "0" if stripped in ("", "-", "-0") else stripped


def _decimal(value: float, places: int) -> str:
    return _plain(f"{value:.{places}f}")


class _Session:
    """One websocket connection as socks sees it: its id and its message counter."""

    __slots__ = ("connection_id", "head", "next_id")

    def __init__(self, connection_id: str):
        self.connection_id = connection_id
        self.head = b'"connection_id":"' + connection_id.encode() + b'","message_id":'
        self.next_id = 0


@dataclass
class _Pending:
    """A book subscription whose snapshot was taken and whose updates start at ``due_ms``."""

    conn: object
    topic: str
    s: int
    due_ms: int
    frame: bytes
    message_id: int


class DydxV4Dialect(Dialect):
    name = "dydx-v4"
    url_prefix = PREFIX

    def __init__(self, server):
        super().__init__(server)
        n = self.feed.model.n
        self._views: dict[int, BookView] = {}
        self._book_subscribers: Counter = Counter()      # symbol index -> registered subscriptions
        self._pending: list[_Pending] = []
        self._connections = 0
        self._deleveragings = 0
        self._deleveraged = [deque(maxlen=DELEVERAGED_KEPT) for _ in range(n)]
        self._last_liquidation: Liquidation | None = None    # the newest one turned into trades
        self._stale_pending = False
        self._settlements = [deque(maxlen=SETTLEMENTS_KEPT) for _ in range(n)]
        self._tally_cursor: list[int | None] = [None] * n    # last aggregated id counted into 24 h stats
        self._tallies = [deque() for _ in range(n)]          # (ms, trades, usd) per trading update
        self._first_oracle: list[float | None] = [None] * n

    # --- markets ---------------------------------------------------------------------------

    def ticker(self, s: int) -> str:
        return f"{self.feed.model.specs[s].base_asset}-USD"

    def native_symbol(self, s: int) -> str:
        return self.ticker(s)

    def _index(self, ticker) -> int | None:
        for s in range(self.feed.model.n):
            if self.ticker(s) == ticker:
                return s
        return None

    def _height(self, ms: int) -> int:
        return FIRST_HEIGHT + (ms - self.feed.start_ms) // BLOCK_MS

    def _price(self, s: int, tick: int) -> str:
        return _plain(self.market.price_of_tick(s, tick))

    def _size(self, s: int, lots: int) -> str:
        return _plain(self.market.qty_of_lots(s, lots))

    def _oracle(self, s: int) -> float:
        return self.market.index(s, self.feed.model.index[s])

    def _oracle_text(self, s: int) -> str:
        return _decimal(self._oracle(s), self.feed.model.specs[s].price_precision + 3)

    def _next_funding_rate(self, s: int) -> str:
        spec = self.feed.model.specs[s]
        return _decimal(self.feed.model.funding_rate[s] / spec.funding_interval_hours, 12)

    def _open_interest(self, s: int) -> str:
        return _plain(self.market.qty(s, self.feed.open_interest(self.feed.symbols[s])["openInterest"]))

    def _stats(self, s: int, now_ms: int) -> dict:
        """24 h volume (USD at dYdX's prices and sizes), trades and oracle change; the fills since
        the last call are counted from the feed's recent fills."""
        fills = self.feed.recent_fills(s)
        cursor = self._tally_cursor[s]
        count, usd = 0, 0.0
        tick, step, offset = self.feed.model.tick_list[s], float(self.feed.model.specs[s].step), self.market.offset[s]
        for fill in reversed(fills):
            if cursor is not None and fill.agg_id <= cursor:
                break
            count += 1
            usd += (fill.tick + offset) * tick * self.market.fill_lots(fill.lots) * step
        if fills:
            self._tally_cursor[s] = fills[-1].agg_id
        tallies = self._tallies[s]
        if count:
            tallies.append((now_ms, count, usd))
        while tallies and tallies[0][0] <= now_ms - DAY_MS:
            tallies.popleft()
        oracle = self._oracle(s)
        if self._first_oracle[s] is None:
            self._first_oracle[s] = oracle
        precision = self.feed.model.specs[s].price_precision
        return {"volume24H": _decimal(sum(t[2] for t in tallies), 4), "trades24H": sum(t[1] for t in tallies),
                "priceChange24H": _decimal(oracle - self._first_oracle[s], precision + 3)}

    def _market_entry(self, s: int, now_ms: int) -> dict:
        spec = self.feed.model.specs[s]
        atomic = ATOMIC_RESOLUTION.get(spec.base_asset, -9)
        tick, step = Decimal(spec.tick_size), Decimal(spec.step_size)
        imf, mmf = MARGIN_FRACTIONS.get(spec.base_asset, DEFAULT_MARGIN_FRACTIONS)
        open_interest = self._open_interest(s)
        return {"clobPairId": str(s), "ticker": self.ticker(s), "status": "ACTIVE",
                "oraclePrice": self._oracle_text(s), **self._stats(s, now_ms),
                "nextFundingRate": self._next_funding_rate(s), "initialMarginFraction": imf,
                "maintenanceMarginFraction": mmf, "openInterest": open_interest, "atomicResolution": atomic,
                "quantumConversionExponent": QUANTUM_CONVERSION_EXPONENT, "tickSize": _plain(spec.tick_size),
                "stepSize": _plain(spec.step_size), "stepBaseQuantums": int(step / Decimal(10) ** atomic),
                "subticksPerTick": int(tick / Decimal(10) ** (QUANTUM_CONVERSION_EXPONENT - atomic - 6)),
                "marketType": "CROSS", "openInterestLowerCap": "0", "openInterestUpperCap": "0",
                "baseOpenInterest": open_interest, "defaultFundingRate1H": "0"}

    def _market_entries(self, now_ms: int, only: int | None = None) -> dict:
        return {self.ticker(s): self._market_entry(s, now_ms) for s in range(self.feed.model.n) if only in (None, s)}

    # --- routes ----------------------------------------------------------------------------

    def add_routes(self, app: web.Application) -> None:
        async def serve(request: web.Request) -> web.StreamResponse:
            return await self.server.serve_ws(request, "dydx-indexer", False, [], self, on_open=self._connected)
        base = PREFIX + API
        app.router.add_get(f"{base}/ws", serve)
        app.router.add_get(f"{base}/perpetualMarkets", self.rest(self.perpetual_markets))
        app.router.add_get(f"{base}/orderbooks/perpetualMarket/{{ticker}}", self.rest(self.orderbook, path_args=True))
        app.router.add_get(f"{base}/trades/perpetualMarket/{{ticker}}", self.rest(self.trades, path_args=True))
        app.router.add_get(f"{base}/historicalFunding/{{ticker}}", self.rest(self.historical_funding, path_args=True))

    @staticmethod
    def _invalid(param: str, value, msg: str) -> tuple[int, dict]:
        return 400, {"errors": [{"value": value, "msg": msg, "param": param, "location": "query"}]}

    def _ticker_error(self, ticker) -> tuple[int, dict]:
        valid = ", ".join(self.ticker(s) for s in range(self.feed.model.n))
        return 400, {"errors": [{"value": ticker, "msg": f"ticker must be a valid ticker ({valid})",
                                 "param": "ticker", "location": "params"}]}

    def _limit(self, query) -> int | None:
        text = query.get("limit", str(REST_LIMIT))
        if not text.isdigit() or not 1 <= int(text) <= REST_LIMIT:
            return None
        return int(text)

    def perpetual_markets(self, query) -> tuple[int, dict]:
        ticker = query.get("ticker")
        s = None if ticker is None else self._index(ticker)
        if ticker is not None and s is None:
            return self._ticker_error(ticker)
        return 200, {"markets": self._market_entries(self.feed.now_ms, s)}

    def orderbook(self, query, ticker: str) -> tuple[int, dict]:
        s = self._index(ticker)
        if s is None:
            return self._ticker_error(ticker)
        view = BookView(BOOK_DEPTH)
        view.refresh(self.feed, self.market, s)
        return 200, self._book_contents(s, view)

    def trades(self, query, ticker: str) -> tuple[int, dict]:
        """Comlink's trades controller: the market's taker fills newest first, at or below
        ``createdBeforeOrAtHeight`` and at or before ``createdBeforeOrAt`` when given; ``page``
        (from 1) skips ``(page - 1) * limit`` of them and adds ``pageSize`` and ``offset``."""
        s, limit = self._index(ticker), self._limit(query)
        if s is None:
            return self._ticker_error(ticker)
        if limit is None:
            return self._invalid("limit", query.get("limit"), f"limit must be an integer from 1 to {REST_LIMIT}")
        height, page = query.get("createdBeforeOrAtHeight"), query.get("page")
        if height is not None and not height.isdigit():
            return self._invalid("createdBeforeOrAtHeight", height,
                                 "createdBeforeOrAtHeight must be a non-negative integer")
        if page is not None and not (page.isdigit() and int(page) >= 1):
            return self._invalid("page", page, "page must be a positive integer")
        before = query.get("createdBeforeOrAt")
        try:
            before_ms = None if before is None else parse_time_ms(before)
        except ConfigError:
            return self._invalid("createdBeforeOrAt", before, "Invalid value")
        offset = (int(page) - 1) * limit if page is not None else 0
        trades = self._recent_trades(s, limit, None if height is None else int(height), before_ms, offset)
        return 200, {"trades": trades, **({"pageSize": limit, "offset": offset} if page is not None else {})}

    def historical_funding(self, query, ticker: str) -> tuple[int, dict]:
        s, limit = self._index(ticker), self._limit(query)
        if s is None:
            return self._ticker_error(ticker)
        if limit is None:
            return self._invalid("limit", query.get("limit"), f"limit must be an integer from 1 to {REST_LIMIT}")
        before = query.get("effectiveBeforeOrAt")
        try:
            before_ms = None if before is None else parse_time_ms(before)
        except ConfigError:
            return self._invalid("effectiveBeforeOrAt", before, "effectiveBeforeOrAt must be an ISO 8601 time")
        rows = [row for ms, row in reversed(self._settlements[s]) if before_ms is None or ms <= before_ms]
        return 200, {"historicalFunding": rows[:limit]}

    # --- websocket -------------------------------------------------------------------------

    def _session(self, conn) -> _Session:
        session = getattr(conn, "dydx_session", None)
        if session is None:
            self._connections += 1
            spread = (self._connections * 0x9E3779B97F4A7C15F39CC0605CEDC835) & ((1 << 128) - 1)
            session = conn.dydx_session = _Session(str(uuid.UUID(int=spread, version=4)))
        return session

    @staticmethod
    def _stamp(session: _Session, frame: bytes, message_id: int) -> bytes:
        """``{"type":"x",...}`` -> ``{"type":"x","connection_id":..,"message_id":N,...}``; a frame
        that is not one of ours (a fault's corrupted text) goes out as it is."""
        if not frame.startswith(b'{"type":"'):
            return frame
        end = frame.index(b'"', 9) + 1
        return frame[:end] + b"," + session.head + str(message_id).encode() + frame[end:]

    def frame_for(self, conn, frame: bytes) -> bytes | None:
        """The frame stamped with the connection's next ``message_id``; None when the message-loss
        fault takes it (the id is used up all the same, so the client sees a hole)."""
        session = self._session(conn)
        message_id = session.next_id
        session.next_id += 1
        faults = self.feed.faults
        if (faults.config.message_loss_every_s and frame.startswith(b'{"type":"channel_data","id":"')
                and b'"channel":"v4_trades"' in frame[:120] and faults.message_loss_due(self.feed.now_ms)):
            self.feed.record_fault(self.feed.now_ms, "message_loss", venue=self.name,
                                   connection_id=session.connection_id, message_id=message_id,
                                   trade_ids=[t["id"] for t in orjson.loads(frame)["contents"]["trades"]])
            return None
        return self._stamp(session, frame, message_id)

    def _deliver(self, conn, frame: bytes, message_id: int) -> None:
        """A frame whose ``message_id`` was taken earlier (a late ``subscribed``)."""
        conn.outbox.append(self._stamp(self._session(conn), frame, message_id))
        conn.wake.set()

    def _connected(self, conn) -> None:
        self.send(conn, b'{"type":"connected"}')

    def _error(self, conn, message: str, channel=None, market=None) -> None:
        body = {"type": "error", "message": message}
        if channel is not None:
            body["channel"] = channel
        if market is not None:
            body["id"] = market
        self.send(conn, body)

    def on_text(self, conn, text: str) -> None:
        try:
            request = orjson.loads(text)
        except orjson.JSONDecodeError:
            self._error(conn, f"Invalid message: could not parse: {text[:200]}")
            return
        if not isinstance(request, dict):
            self._error(conn, f"Invalid message: {text[:200]}")
            return
        kind, channel, market = request.get("type"), request.get("channel"), request.get("id")
        if kind == "ping":
            return                      # accepted, no JSON pong (socks answers protocol pings only)
        if kind not in ("subscribe", "unsubscribe"):
            self._error(conn, f"Invalid message type: {kind}")
            return
        if channel not in CHANNELS:
            self._error(conn, f"Invalid {kind} message: channel is not a valid channel", channel)
            return
        if channel == "v4_markets":
            topic, s = channel, None
        else:
            s = self._index(market)
            if s is None:
                self._error(conn, f"Invalid subscription id for channel: ({channel}-{market})", channel, market)
                return
            topic = f"{channel}:{market}"
        reply = {"channel": channel, **({"id": market} if s is not None else {})}
        pending = next((p for p in self._pending if p.conn is conn and p.topic == topic), None)
        if kind == "unsubscribe":
            if pending is not None:     # its snapshot was fetched: socks sends it before the unsubscribe
                self._pending.remove(pending)
                self._deliver(conn, pending.frame, pending.message_id)
            elif topic in conn.subscriptions:
                if channel == "v4_orderbook":
                    self._book_subscribers[s] -= 1
                self.server.unsubscribe_topic(conn, topic)
            self.send(conn, {"type": "unsubscribed", **reply})
            return
        if pending is not None or topic in conn.subscriptions:
            self._error(conn, f"Invalid subscribe message: already subscribed ({channel}"
                        f"{'-' + market if s is not None else ''})", channel, market if s is not None else None)
            return
        if channel != "v4_orderbook":
            self.server.subscribe_topic(conn, topic, self.streams_for(topic))
            self.send(conn, self.snapshot(topic))
            return
        session = self._session(conn)
        frame = self.snapshot(topic)            # fetched now; its message_id is taken now
        message_id = session.next_id
        session.next_id += 1
        now, faults = self.feed.now_ms, self.feed.faults
        if faults.config.fetch_loss_every_s and faults.fetch_loss_due(now):
            steps = faults.config.fetch_loss_steps
            self._pending.append(_Pending(conn, topic, s, now + steps * self.feed.model.step_ms, frame, message_id))
            self.feed.record_fault(now, "fetch_loss", venue=self.name, symbol=self.feed.symbols[s], ticker=market,
                                   steps=steps, connection_id=session.connection_id)
        else:
            self._register_book(conn, topic, s)
            self._deliver(conn, frame, message_id)

    def _register_book(self, conn, topic: str, s: int) -> None:
        view = self._views.get(s)
        if view is not None and not self._book_subscribers[s]:
            view.refresh(self.feed, self.market, s)     # nobody followed it: what changed meanwhile is lost
        self._book_subscribers[s] += 1
        self.server.subscribe_topic(conn, topic, self.streams_for(topic))

    def on_close(self, conn) -> None:
        for topic in conn.subscriptions:
            channel, _, market = topic.partition(":")
            if channel == "v4_orderbook":
                self._book_subscribers[self._index(market)] -= 1
        self._pending = [p for p in self._pending if p.conn is not conn]

    def streams_for(self, topic: str) -> list[str] | None:
        channel, _, market = topic.partition(":")
        if channel == "v4_markets" and not market:
            return []                   # pushed on the market's clock (on_step)
        s = self._index(market)
        if channel not in CHANNELS or s is None:
            return None
        prefix = self.feed.formats[s].stream_prefix
        if channel == "v4_trades":
            return [f"{prefix}@aggTrade"]        # deleveragings come from on_step
        return [f"{prefix}@depth@100ms"]

    def snapshot(self, topic: str) -> bytes | None:
        """The ``subscribed`` reply (without its envelope's connection fields)."""
        channel, _, market = topic.partition(":")
        if channel == "v4_markets":
            contents = {"markets": self._market_entries(self.feed.now_ms)}
            return orjson.dumps({"type": "subscribed", "channel": channel, "contents": contents})
        s = self._index(market)
        if channel == "v4_orderbook":
            contents = self._book_contents(s, self._view(s))
        else:
            contents = {"trades": self._recent_trades(s, BACKLOG_TRADES)}
        return orjson.dumps({"type": "subscribed", "channel": channel, "id": market, "contents": contents})

    # --- books -----------------------------------------------------------------------------

    def _view(self, s: int) -> BookView:
        """The book subscribers follow; rebuilt from the market when nobody was following it."""
        view = self._views.get(s)
        if view is None or not self._book_subscribers[s]:
            view = self._views[s] = BookView(BOOK_DEPTH)
            view.refresh(self.feed, self.market, s)
        return view

    def _book_contents(self, s: int, view: BookView) -> dict:
        bids, asks = view.levels()
        return {side: [{"price": self._price(s, t), "size": self._size(s, q)} for t, q in levels[:SNAPSHOT_LEVELS]]
                for side, levels in (("bids", bids), ("asks", asks))}

    def _book_update(self, s: int) -> bytes | None:
        view = self._views.get(s) or self._view(s)
        bids, asks = view.refresh(self.feed, self.market, s)
        if self._stale_pending:
            self._withhold_a_deletion(s, view, bids, asks)
        if not bids and not asks:
            return None
        contents = {}
        if bids:
            contents["bids"] = [[self._price(s, t), self._size(s, q)] for t, q in sorted(bids, reverse=True)]
        if asks:
            contents["asks"] = [[self._price(s, t), self._size(s, q)] for t, q in sorted(asks)]
        return orjson.dumps({"type": "channel_data", "id": self.ticker(s), "channel": "v4_orderbook",
                             "version": "1.0.0", "contents": contents})

    def _withhold_a_deletion(self, s: int, view: BookView, bids: list, asks: list) -> None:
        """The stale-level fault: a deleted level beyond the new best price is never deleted for
        subscribers (it stays until their next snapshot)."""
        for side, changes, levels in (("bid", bids, view.bids), ("ask", asks, view.asks)):
            deleted = [t for t, q in changes if q == 0]
            if not deleted or not levels:
                continue
            tick = max(deleted) if side == "bid" else min(deleted)
            if (tick > max(levels)) if side == "bid" else (tick < min(levels)):
                changes.remove((tick, 0))
                self._stale_pending = False
                self.feed.record_fault(self.feed.now_ms, "stale_level", venue=self.name, symbol=self.feed.symbols[s],
                                       ticker=self.ticker(s), side=side, price=self._price(s, tick))
                return

    # --- trades ----------------------------------------------------------------------------

    def _fill_trade(self, s: int, fill) -> dict:
        height = self._height(fill.ts_ms)
        return {"id": trade_id(height, s, fill.agg_id), "size": self._size(s, self.market.fill_lots(fill.lots)),
                "price": self._price(s, self.market.level_ticks(s, fill.tick)),
                "side": "SELL" if fill.buyer_is_maker else "BUY", "createdAt": format_time_ms(fill.ts_ms),
                "type": "LIMIT" if fill.liquidation is None else "LIQUIDATED", "createdAtHeight": str(height)}

    def _deleveraging(self, liq: Liquidation) -> dict | None:
        """What the book did not fill of a liquidation, closed against the other side at the
        bankruptcy price; kept for backlogs and REST."""
        unfilled = liq.lots - liq.filled_lots
        if unfilled <= 0:
            return None
        s, ts = liq.symbol_index, liq.last_fill_ms or liq.ts_ms
        height = self._height(ts)
        self._deleveragings += 1
        price = self.feed.formats[s].price_float(liq.bankruptcy_price)
        trade = {"id": trade_id(height, DELEVERAGING_TX + s, self._deleveragings),
                 "size": self._size(s, self.market.fill_lots(unfilled)), "price": _plain(self.market.price(s, price)),
                 "side": "SELL" if liq.is_long else "BUY", "createdAt": format_time_ms(ts), "type": "DELEVERAGED",
                 "createdAtHeight": str(height)}
        self._deleveraged[s].append(trade)
        return trade

    def _new_deleveragings(self) -> list[tuple[int, dict]]:
        """(symbol index, deleveraging trade) of the liquidations the feed listed since the last
        call, oldest first."""
        listed = self.feed.recent_liquidations
        new = []
        for liq in reversed(listed):
            if liq is self._last_liquidation:
                break
            new.append(liq)
        if listed:
            self._last_liquidation = listed[-1]
        trades = [(liq.symbol_index, self._deleveraging(liq)) for liq in reversed(new)]
        return [(s, trade) for s, trade in trades if trade is not None]

    def _recent_trades(self, s: int, limit: int, max_height: int | None = None, before_ms: int | None = None,
                       offset: int = 0) -> list[dict]:
        """Newest first, at or below a block height and at or before a time, ``offset`` skipped. The
        history is the feed's last ``RECENT_AGG_TRADES`` fills of the market (the real indexer keeps
        every fill; older pages here end, which is what a client must handle when REST does not
        reach back far enough)."""
        end_ms = None if max_height is None else self.feed.start_ms + (max_height - FIRST_HEIGHT + 1) * BLOCK_MS
        wanted = offset + limit
        fills = (f for f in reversed(self.feed.recent_fills(s))
                 if (end_ms is None or f.ts_ms < end_ms) and (before_ms is None or f.ts_ms <= before_ms))
        trades = [self._fill_trade(s, f) for f in itertools.islice(fills, wanted)]
        deleveraged = (t for t in reversed(self._deleveraged[s])
                       if (max_height is None or int(t["createdAtHeight"]) <= max_height)
                       and (before_ms is None or parse_time_ms(t["createdAt"]) <= before_ms))
        trades += list(itertools.islice(deleveraged, wanted))
        trades.sort(key=lambda t: (t["createdAt"], t["id"]), reverse=True)
        return trades[offset:wanted]

    def _trades_frame(self, s: int, trades: list[dict]) -> bytes:
        return orjson.dumps({"type": "channel_data", "id": self.ticker(s), "channel": "v4_trades", "version": "2.1.0",
                             "contents": {"trades": trades}})

    # --- encoding --------------------------------------------------------------------------

    def encode(self, stream: str, payload: dict, topics: set[str]) -> dict[str, list[bytes]]:
        event = payload.get("e")
        s = self.feed.symbol_index(payload["s"])
        if event == "aggTrade":
            topic = f"v4_trades:{self.ticker(s)}"
            fill = self.feed.fill_of(s, payload["a"])
            if fill is None or topic not in topics:
                return {}
            return {topic: [self._trades_frame(s, [self._fill_trade(s, fill)])]}
        if event == "depthUpdate":
            topic = f"v4_orderbook:{self.ticker(s)}"
            frame = self._book_update(s) if topic in topics else None
            return {topic: [frame]} if frame is not None else {}
        return {}

    def on_step(self, topics: set[str]) -> dict[str, list[bytes]]:
        now = self.feed.now_ms
        if self._pending:
            due = [p for p in self._pending if p.due_ms <= now]
            self._pending = [p for p in self._pending if p.due_ms > now]
            for p in due:
                self._register_book(p.conn, p.topic, p.s)
                self._deliver(p.conn, p.frame, p.message_id)
        faults = self.feed.faults
        if faults.config.stale_level_every_s and faults.stale_level_due(now):
            self._stale_pending = True
        if now % BLOCK_MS:
            return {}
        n = self.feed.model.n
        out: dict[str, list[bytes]] = {}
        for s, trade in self._new_deleveragings():      # listed as each second ends
            topic = f"v4_trades:{self.ticker(s)}"
            if topic in topics:
                out.setdefault(topic, []).append(self._trades_frame(s, [trade]))
        if now % HOUR_MS == 0:          # funding settles hourly on dYdX
            for s in range(n):
                self._settlements[s].append((now, {"ticker": self.ticker(s), "rate": self._next_funding_rate(s),
                                                   "price": self._oracle_text(s), "effectiveAt": format_time_ms(now),
                                                   "effectiveAtHeight": str(self._height(now))}))
        if "v4_markets" not in topics:
            return out
        at, height = format_time_ms(now), str(self._height(now))
        frames = [orjson.dumps({"type": "channel_data", "channel": "v4_markets", "version": "1.0.0", "contents": {
            "oraclePrices": {self.ticker(s): {"oraclePrice": self._oracle_text(s), "effectiveAt": at,
                                              "effectiveAtHeight": height, "marketId": s} for s in range(n)}}})]
        if now % TRADING_EVERY_MS == 0:
            trading = {}
            for s in range(n):
                trading[self.ticker(s)] = {"ticker": self.ticker(s), "status": "ACTIVE",
                                           "openInterest": self._open_interest(s),
                                           "nextFundingRate": self._next_funding_rate(s), **self._stats(s, now)}
            frames.append(orjson.dumps({"type": "channel_data", "channel": "v4_markets", "version": "1.0.0",
                                        "contents": {"trading": trading}}))
        out["v4_markets"] = frames
        return out
