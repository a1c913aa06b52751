"""Hyperliquid's public websocket and info API on the simulated market (``hyperliquid``).

Served under the prefix ``/hyperliquid`` (Hyperliquid's own host; point ``--ws-url`` and
``--rest-url`` at ``.../hyperliquid``):

* ``/hyperliquid/ws``: ``{"method":"subscribe","subscription":{"type":..,"coin":..}}`` answered
  ``{"channel":"subscriptionResponse","data":<the request>}``; subscribing twice, an unknown type
  or coin is ``{"channel":"error","data":"..."}``; ``{"method":"ping"}`` answered
  ``{"channel":"pong"}``.
* ``trades``: one push per coin and market step with that step's fills, as Hyperliquid pushes a
  block's trades together (``tid`` unique across coins, not consecutive: the
  market's trade id times 8 plus the coin's index), ``users`` [buyer, seller]; the first push
  after a subscribe is a backlog of the coin's last ``BACKLOG_TRADES`` trades. The part of a
  liquidation the book did not take is taken over by the HLP liquidator vault at the bankruptcy
  price: a trade against ``LIQUIDATOR`` (the backstop liquidation, the only kind public data
  shows), with a tid of its own.
* ``l2Book``: every push a whole book of ``BOOK_LEVELS`` levels per side (``{"px","sz","n"}``),
  one on subscribe and then every ``BOOK_EVERY_MS`` of market time, no sequence number. The
  market's price grid is kept (Hyperliquid's own 5-significant-figure grid would aggregate it).
* ``activeAssetCtx`` each second: hourly ``funding`` (the market's rate over its interval),
  one-sided ``openInterest`` in coin, ``markPx``, ``oraclePx`` (Hyperliquid's own market:
  ``ingest.simulator.venue_market``), ``midPx``, ``premium``.
* ``POST /hyperliquid/info`` with ``{"type": "meta" | "metaAndAssetCtxs" | "predictedFundings" |
  "l2Book"}``; anything
  else is a 422 as Hyperliquid answers a body it cannot read.
"""

from __future__ import annotations


import orjson
from aiohttp import web

from ..feed import LIQUIDATION_EVENTS_STREAM
from . import BookView, Dialect, address

PREFIX = "/hyperliquid"
BOOK_LEVELS = 20
BOOK_EVERY_MS = 5_000
BACKLOG_TRADES = 10
LIQUIDATOR = "0x2e3d94f0562703b25c83308a05046ddaf9a8dd14"
TYPES = ("trades", "l2Book", "activeAssetCtx")
BACKSTOP_TID_BASE = 1 << 50       # backstop trades: a tid range the market's trades never reach
MAX_LEVERAGE = {"BTC": 40, "ETH": 25}


class HyperliquidDialect(Dialect):
    name = "hyperliquid"
    url_prefix = PREFIX

    def __init__(self, server):
        super().__init__(server)
        self._backstops = 0

    # --- coins -----------------------------------------------------------------------------

    def coin(self, s: int) -> str:
        return self.feed.model.specs[s].base_asset

    def native_symbol(self, s: int) -> str:
        return self.coin(s)

    def _index(self, coin) -> int | None:
        for s in range(self.feed.model.n):
            if self.coin(s) == coin:
                return s
        return None

    def _size(self, s: int, lots: int) -> str:
        return _plain(self.market.qty_of_lots(s, lots))

    # --- routes ----------------------------------------------------------------------------

    def add_routes(self, app: web.Application) -> None:
        async def serve(request: web.Request) -> web.StreamResponse:
            return await self.server.serve_ws(request, "hyperliquid", False, [], self)
        app.router.add_get(f"{PREFIX}/ws", serve)
        app.router.add_post(f"{PREFIX}/info", self._info)

    async def _info(self, request: web.Request) -> web.Response:
        failure = self.feed.faults.rest_failure()
        if failure is not None:
            status, body = failure
            self.feed.record_fault(self.feed.now_ms, "rest_error", path=request.path, status=status)
            return web.json_response(body, status=status)
        try:
            query = orjson.loads(await request.read())
            kind = query["type"]
        except (orjson.JSONDecodeError, KeyError, TypeError):
            return web.Response(status=422, text="Failed to deserialize the JSON body into the target type")
        if kind == "meta":
            return web.json_response(self._meta())
        if kind == "metaAndAssetCtxs":
            return web.json_response([self._meta(), [self._ctx(s, self.feed.now_ms)
                                                     for s in range(self.feed.model.n)]])
        if kind == "predictedFundings":
            return web.json_response(self._predicted_fundings())
        if kind == "l2Book" and self._index(query.get("coin")) is not None:
            return web.json_response(self._book(self._index(query["coin"]), self.feed.now_ms))
        return web.Response(status=422, text="Failed to deserialize the JSON body into the target type")

    def _predicted_fundings(self) -> list:
        """Hyperliquid's next hourly rate per coin (``HlPerp``); the other venues' entries are theirs."""
        m = self.feed.model
        next_hour = (self.feed.now_ms // 3_600_000 + 1) * 3_600_000
        return [[self.coin(s), [["HlPerp", {"fundingRate": f"{m.funding_rate[s] / spec.funding_interval_hours:.10f}",
                                            "nextFundingTime": next_hour, "fundingIntervalHours": 1}]]]
                for s, spec in enumerate(m.specs)]

    def _meta(self) -> dict:
        return {"universe": [{"name": self.coin(s), "szDecimals": spec.quantity_precision,
                              "maxLeverage": MAX_LEVERAGE.get(self.coin(s), 20), "marginTableId": 1}
                             for s, spec in enumerate(self.feed.model.specs)]}

    # --- websocket -------------------------------------------------------------------------

    def on_text(self, conn, text: str) -> None:
        try:
            request = orjson.loads(text)
            method = request["method"]
        except (orjson.JSONDecodeError, KeyError, TypeError):
            self.send(conn, {"channel": "error", "data": f"Error parsing JSON into valid websocket request: {text}"})
            return
        if method == "ping":
            self.send(conn, {"channel": "pong"})
            return
        subscription = request.get("subscription")
        topic = self._topic(subscription)
        if method not in ("subscribe", "unsubscribe") or topic is None:
            self.send(conn, {"channel": "error", "data": f"Invalid subscription {orjson.dumps(subscription).decode()}"})
            return
        if method == "subscribe":
            if topic in conn.subscriptions:
                self.send(conn, {"channel": "error", "data": f"Already subscribed: {orjson.dumps(subscription).decode()}"})
                return
            self.server.subscribe_topic(conn, topic, self.streams_for(topic))
            self.send(conn, {"channel": "subscriptionResponse", "data": request})
            first = self.snapshot(topic)
            if first is not None:
                self.send(conn, first)
        else:
            if topic not in conn.subscriptions:
                self.send(conn, {"channel": "error", "data": f"Already unsubscribed: {orjson.dumps(subscription).decode()}"})
                return
            self.server.unsubscribe_topic(conn, topic)
            self.send(conn, {"channel": "subscriptionResponse", "data": request})

    def _topic(self, subscription) -> str | None:
        if not isinstance(subscription, dict) or subscription.get("type") not in TYPES:
            return None
        if self._index(subscription.get("coin")) is None or subscription.get("fast"):
            return None
        return f"{subscription['type']}:{subscription['coin']}"

    def streams_for(self, topic: str) -> list[str] | None:
        kind, _, coin = topic.partition(":")
        s = self._index(coin)
        if kind not in TYPES or s is None:
            return None
        prefix = self.feed.formats[s].stream_prefix
        if kind == "trades":
            return [f"{prefix}@trade", LIQUIDATION_EVENTS_STREAM]
        return [f"{prefix}@markPrice@1s"]

    def snapshot(self, topic: str) -> bytes | None:
        kind, _, coin = topic.partition(":")
        s = self._index(coin)
        if kind == "l2Book":
            return orjson.dumps({"channel": "l2Book", "data": self._book(s, self.feed.now_ms)})
        if kind == "trades":
            backlog = []
            for fill in list(self.feed.recent_fills(s))[-BACKLOG_TRADES:]:
                backlog += self._fill_trades(s, fill)
            return orjson.dumps({"channel": "trades", "data": backlog[-BACKLOG_TRADES:]}) if backlog else None
        return None

    # --- encoding --------------------------------------------------------------------------

    def encode(self, stream: str, payload: dict, topics: set[str]) -> dict[str, list[bytes]]:
        event = payload.get("e")
        if event == "liquidation":
            s = self.feed.symbol_index(payload["s"])
            topic = f"trades:{self.coin(s)}"
            backstop = self._backstop(s, payload)      # numbered whether or not anyone listens
            if backstop and topic in topics:
                self.hold_for_step(topic, backstop)
            return {}
        s = self.feed.symbol_index(payload["s"])
        coin = self.coin(s)
        out: dict[str, list[bytes]] = {}
        if event == "trade":
            if f"trades:{coin}" in topics:
                self.hold_for_step(f"trades:{coin}", self._trade(s, payload["t"], payload["T"], payload["p"],
                                                                 payload["q"], payload["m"]))
        elif event == "markPriceUpdate":
            now = payload["E"] - 1
            if f"activeAssetCtx:{coin}" in topics:
                out[f"activeAssetCtx:{coin}"] = [orjson.dumps({"channel": "activeAssetCtx", "data": {
                    "coin": coin, "ctx": self._ctx(s, now)}})]
            if f"l2Book:{coin}" in topics and now % BOOK_EVERY_MS == 0:
                out[f"l2Book:{coin}"] = [orjson.dumps({"channel": "l2Book", "data": self._book(s, now)})]
        return out

    def on_step(self, topics: set[str]) -> dict[str, list[bytes]]:
        return self.release_held(lambda topic, trades: orjson.dumps({"channel": "trades", "data": trades}))

    def _trade(self, s: int, trade_id: int, ts: int, price: str, qty: str, buyer_is_maker: bool) -> dict:
        buyer, seller = address("user", trade_id, "b"), address("user", trade_id, "s")
        return {"coin": self.coin(s), "side": "A" if buyer_is_maker else "B", "px": _plain(self.market.price(s, price)),
                "sz": _plain(self.market.qty(s, qty)), "time": ts, "hash": "0x" + "0" * 64,
                "tid": trade_id * 8 + s, "users": [buyer, seller]}

    def _fill_trades(self, s: int, fill) -> list[dict]:
        count = fill.last_trade_id - fill.first_trade_id + 1
        base, extra = divmod(fill.lots, count)
        fmt = self.feed.formats[s]
        return [self._trade(s, fill.first_trade_id + i, fill.ts_ms, fmt.price(fill.tick),
                            fmt.qty(base + (1 if i < extra else 0)), fill.buyer_is_maker) for i in range(count)]

    def _backstop(self, s: int, event: dict) -> dict | None:
        """The liquidator vault takes over what the book did not fill, at the bankruptcy price."""
        lots = self.market.fill_lots(event["lots"] - event["filled_lots"])
        if lots <= 0:
            return None
        self._backstops += 1
        user = address("liquidated", event["s"], event["ts"], event["lots"])
        long = event["long"]
        fmt = self.feed.formats[s]
        return {"coin": self.coin(s), "side": "A" if long else "B",
                "px": _plain(self.market.price(s, fmt.price_float(event["bankruptcy_price"]))),
                "sz": self._size(s, lots), "time": event["E"], "hash": "0x" + "0" * 64,
                "tid": (BACKSTOP_TID_BASE + self._backstops) * 8 + s,
                "users": [LIQUIDATOR, user] if long else [user, LIQUIDATOR]}

    def _book(self, s: int, now_ms: int) -> dict:
        view = BookView(BOOK_LEVELS)
        view.refresh(self.feed, self.market, s)
        bids, asks = view.levels()
        fmt = self.feed.formats[s]
        side = [[{"px": _plain(fmt.price(t)), "sz": self._size(s, q), "n": max(1, q // 50)} for t, q in levels]
                for levels in (bids, asks)]
        return {"coin": self.coin(s), "time": now_ms, "levels": side}

    def _ctx(self, s: int, now_ms: int) -> dict:
        m = self.feed.model
        spec = m.specs[s]
        mark = self.market.mark(s, m.mark[s], now_ms)
        oracle = self.market.index(s, m.index[s])
        bid, _, ask, _ = m.best[s]
        tick, offset = m.tick_list[s], self.market.offset[s]
        bid, ask = (bid + offset, ask + offset) if bid and ask else (None, None)
        mid = (bid + ask) / 2 * tick if bid else mark
        oi = self.market.qty(s, self.feed.open_interest(self.feed.symbols[s])["openInterest"])
        precision = spec.price_precision
        return {"funding": f"{m.funding_rate[s] / spec.funding_interval_hours:.10f}".rstrip("0").rstrip("."),
                "openInterest": _plain(oi), "prevDayPx": f"{spec.price:.{precision}f}", "dayNtlVlm": "0.0",
                "premium": f"{mark / oracle - 1:.10f}", "oraclePx": f"{oracle:.{precision}f}",
                "markPx": f"{mark:.{precision}f}", "midPx": f"{mid:.{precision + 1}f}",
                "impactPxs": [f"{(bid or 0) * tick:.{precision}f}", f"{(ask or 0) * tick:.{precision}f}"],
                "dayBaseVlm": "0.0"}


def _plain(number: str) -> str:
    """Hyperliquid writes no trailing zeros ("0.00017", "64400.0")."""
    if "." not in number:
        return number
    stripped = number.rstrip("0")
    return stripped + "0" if stripped.endswith(".") else stripped
