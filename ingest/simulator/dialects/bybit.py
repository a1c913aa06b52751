"""Bybit v5 public linear websocket and REST on the simulated market (``bybit-linear``).

* ``/v5/public/linear``: ``{"op":"subscribe","args":["orderbook.50.BTCUSDT",...]}`` answered
  ``{"success":true,"ret_msg":"","conn_id":..,"op":"subscribe"}`` (``success:false`` with
  ``error:handler not found,topic:..`` for a topic Bybit does not have, e.g. the retired
  ``liquidation.``); ``{"op":"ping"}`` answered with ``ret_msg "pong"``.
* ``orderbook.{1,50,200,1000}.SYM``: a snapshot of that depth on subscribe, then a delta per
  market step with ``u`` = previous ``u`` + 1 per topic (a sequence break in the underlying depth
  stream skips one ``u``), ``seq`` the market's update id, ``cts`` the matching time.
* ``publicTrade.SYM``: one push per market step with that step's fills (taker side ``S``, UUID
  ``i``), as Bybit pushes a matching batch's trades together; ``tickers.SYM`` snapshot on subscribe
  then a delta each second with mark, index, funding and open interest (``openInterest`` two-sided
  as Bybit documents it, ``singleOpenInterest`` one side); ``allLiquidation.SYM`` with every
  liquidation (not Binance's one-per-second sample: Bybit publishes them all), ``S`` the liquidated
  *position* side (``Buy`` = a long was liquidated), ``v`` its size and ``p`` the bankruptcy price.
* REST ``/v5/market/instruments-info?category=linear``, and ``/v5/market/account-ratio`` (period
  ``5min`` only): the long and short shares of all accounts per period, newest first, the open
  period included, from the market's positioning truth (``ingest.simulator.positioning``).
Sizes are base units, as on Bybit linear; prices, sizes, mark and index are Bybit's own market
(``ingest.simulator.venue_market``).
"""

from __future__ import annotations

import uuid
from collections import Counter
from decimal import Decimal

import orjson
from aiohttp import web

from ..feed import DEPTH_LATENCY_MS, LIQUIDATION_EVENTS_STREAM
from ..positioning import share
from . import BookView, Dialect

BOOK_DEPTHS = (1, 50, 200, 1000)
KINDS = ("orderbook", "publicTrade", "tickers", "allLiquidation")


class BybitLinearDialect(Dialect):
    name = "bybit-linear"

    def __init__(self, server):
        super().__init__(server)
        self._views: dict[tuple[int, int], BookView] = {}
        self._subscribers: Counter = Counter()
        self._conn_ids = 0

    # --- REST ------------------------------------------------------------------------------

    def instruments(self, query) -> tuple[int, dict]:
        if query.get("category") != "linear":
            return 200, {"retCode": 10001, "retMsg": "params error: category", "result": {}, "time": self.feed.now_ms}
        entries = [{
            "symbol": spec.symbol, "contractType": "LinearPerpetual", "status": "Trading",
            "baseCoin": spec.base_asset, "quoteCoin": spec.quote_asset, "settleCoin": spec.quote_asset,
            "launchTime": "1585526400000", "deliveryTime": "0", "deliveryFeeRate": "", "priceScale": str(spec.price_precision),
            "leverageFilter": {"minLeverage": "1", "maxLeverage": "100.00", "leverageStep": "0.01"},
            "priceFilter": {"minPrice": spec.tick_size, "maxPrice": "1999999.80", "tickSize": spec.tick_size},
            "lotSizeFilter": {"maxOrderQty": "1190.000", "minOrderQty": spec.step_size, "qtyStep": spec.step_size,
                              "postOnlyMaxOrderQty": "1190.000", "maxMktOrderQty": "500.000", "minNotionalValue": "5"},
            "unifiedMarginTrade": True, "fundingInterval": spec.funding_interval_hours * 60, "settleCoinType": "",
            "copyTrading": "both", "upperFundingRate": "0.005", "lowerFundingRate": "-0.005", "isPreListing": False}
            for spec in self.feed.model.specs]
        return 200, {"retCode": 0, "retMsg": "OK", "result": {"category": "linear", "list": entries,
                                                              "nextPageCursor": ""}, "retExtInfo": {},
                     "time": self.feed.now_ms}

    def account_ratio(self, query) -> tuple[int, dict]:
        symbols = [spec.symbol for spec in self.feed.model.specs]
        if query.get("category") != "linear" or query.get("symbol") not in symbols:
            return 200, {"retCode": 10001, "retMsg": "params error: category or symbol", "result": {},
                         "time": self.feed.now_ms}
        if query.get("period") != "5min":
            return 200, {"retCode": 10001, "retMsg": "params error: period (the simulator has 5min)", "result": {},
                         "time": self.feed.now_ms}
        try:
            limit = int(query.get("limit", "50"))
        except ValueError:
            limit = 0
        if not 1 <= limit <= 500:
            return 200, {"retCode": 10001, "retMsg": "params error: limit", "result": {}, "time": self.feed.now_ms}
        s = symbols.index(query["symbol"])
        rows = []
        for p in reversed(self.feed.positioning.periods(s, self.feed.now_ms, limit)):
            long = share(p.long_accounts)                # Bybit's two shares add up to 1 exactly
            rows.append({"symbol": query["symbol"], "buyRatio": long,
                         "sellRatio": format(Decimal(1) - Decimal(long), "f"), "timestamp": str(p.start_ms)})
        return 200, {"retCode": 0, "retMsg": "OK", "result": {"list": rows, "nextPageCursor": ""}, "retExtInfo": {},
                     "time": self.feed.now_ms}

    # --- websocket -------------------------------------------------------------------------

    def add_routes(self, app: web.Application) -> None:
        async def serve(request: web.Request) -> web.StreamResponse:
            return await self.server.serve_ws(request, "bybit-linear", False, [], self)
        app.router.add_get("/v5/public/linear", serve)
        app.router.add_get("/v5/market/instruments-info", self.rest(self.instruments))
        app.router.add_get("/v5/market/account-ratio", self.rest(self.account_ratio))

    def _conn_id(self, conn) -> str:
        if not hasattr(conn, "bybit_conn_id"):
            self._conn_ids += 1
            conn.bybit_conn_id = str(uuid.UUID(int=self._conn_ids))
        return conn.bybit_conn_id

    def on_text(self, conn, text: str) -> None:
        try:
            request = orjson.loads(text)
            op = request["op"]
        except (orjson.JSONDecodeError, KeyError, TypeError):
            self.send(conn, {"success": False, "ret_msg": f"error:invalid request {text[:100]}",
                             "conn_id": self._conn_id(conn), "op": ""})
            return
        reply = {"success": True, "ret_msg": "", "conn_id": self._conn_id(conn), "req_id": request.get("req_id", ""),
                 "op": op}
        if op == "ping":
            self.send(conn, {**reply, "ret_msg": "pong"})
            return
        args = request.get("args")
        if op not in ("subscribe", "unsubscribe") or not isinstance(args, list):
            self.send(conn, {**reply, "success": False, "ret_msg": f"error:unknown op {op}"})
            return
        resolved = [(topic, self.streams_for(topic)) for topic in args]
        refused = [topic for topic, streams in resolved if streams is None]
        if refused:     # Bybit refuses the whole request
            self.send(conn, {**reply, "success": False, "ret_msg": f"error:handler not found,topic:{refused[0]}"})
            return
        snapshots = []
        for topic, streams in resolved:
            if op == "subscribe":
                if topic not in conn.subscriptions:
                    self._subscribers[topic] += 1
                self.server.subscribe_topic(conn, topic, streams)
                snapshots.append(topic)
            else:
                if topic in conn.subscriptions:
                    self._subscribers[topic] -= 1
                self.server.unsubscribe_topic(conn, topic)
        self.send(conn, reply)
        for topic in snapshots:
            frame = self.snapshot(topic)
            if frame is not None:
                self.send(conn, frame)

    def on_close(self, conn) -> None:
        for topic in conn.subscriptions:
            self._subscribers[topic] -= 1

    def native_symbol(self, s: int) -> str:
        return self.feed.symbols[s]

    def streams_for(self, topic) -> list[str] | None:
        """The feed streams behind a topic; None for a topic Bybit does not have."""
        if not isinstance(topic, str):
            return None
        kind, _, symbol = topic.rpartition(".")
        depth = None
        if kind.startswith("orderbook."):
            kind, _, depth = kind.partition(".")
            if not depth.isdigit() or int(depth) not in BOOK_DEPTHS:
                return None
        if kind not in KINDS or symbol not in self.feed.symbols:
            return None
        prefix = self.feed.formats[self.feed.symbol_index(symbol)].stream_prefix
        if kind == "allLiquidation":
            return [LIQUIDATION_EVENTS_STREAM]
        return [f"{prefix}@" + {"orderbook": "depth@100ms", "publicTrade": "trade", "tickers": "markPrice@1s"}[kind]]

    # --- snapshots -------------------------------------------------------------------------

    def _view(self, s: int, depth: int) -> BookView:
        """The shared view of one depth; rebuilt from the market when nobody was following it
        (``u`` carries on: Bybit restarts it only after a service restart)."""
        view = self._views.get((s, depth))
        if view is None or self._subscribers[f"orderbook.{depth}.{self.feed.symbols[s]}"] <= 1:
            seq = view.seq + 1 if view is not None else 1_000_000
            view = self._views[(s, depth)] = BookView(depth, seq=seq)
            view.refresh(self.feed, self.market, s)
        return view

    def snapshot(self, topic: str) -> bytes | None:
        kind, _, symbol = topic.rpartition(".")
        s = self.feed.symbol_index(symbol)
        if kind.startswith("orderbook."):
            view = self._view(s, int(kind.partition(".")[2]))
            bids, asks = view.levels()
            return self._book_frame(topic, "snapshot", s, bids, asks, view.seq, self.feed.model.last_update_id[s],
                                    self.feed.now_ms + DEPTH_LATENCY_MS)
        if kind == "tickers":
            return orjson.dumps({"topic": topic, "type": "snapshot", "data": self._ticker_fields(s, self.feed.now_ms),
                                 "cs": self.feed.model.last_update_id[s], "ts": self.feed.now_ms})
        return None

    def _book_frame(self, topic: str, kind: str, s: int, bids, asks, u: int, seq: int, push_ms: int) -> bytes:
        """``cts`` is the matching engine's time of the book state (the market step), ``ts`` the push."""
        fmt = self.feed.formats[s]
        return orjson.dumps({"topic": topic, "type": kind, "ts": push_ms, "data": {
            "s": self.feed.symbols[s], "b": [[fmt.price(t), fmt.qty(q)] for t, q in bids],
            "a": [[fmt.price(t), fmt.qty(q)] for t, q in asks], "u": u, "seq": seq},
            "cts": push_ms - DEPTH_LATENCY_MS})

    def _ticker_fields(self, s: int, ts_ms: int) -> dict:
        m = self.feed.model
        symbol = self.feed.symbols[s]
        single = self.market.qty(s, self.feed.open_interest(symbol)["openInterest"])
        precision = m.specs[s].price_precision
        mark = f"{self.market.mark(s, m.mark[s], ts_ms):.{precision}f}"
        both = format(Decimal(single) * 2, "f")
        return {"symbol": symbol, "markPrice": mark,
                "indexPrice": f"{self.market.index(s, m.index[s]):.{precision}f}",
                "fundingRate": f"{m.funding_rate[s]:.6f}", "nextFundingTime": str(m.next_funding_ms[s]),
                "fundingIntervalHour": str(self.feed.model.specs[s].funding_interval_hours),
                "openInterest": both, "singleOpenInterest": single,
                "openInterestValue": format((Decimal(both) * Decimal(mark)).quantize(Decimal("0.01")), "f"),
                "singleOpenInterestValue": format((Decimal(single) * Decimal(mark)).quantize(Decimal("0.01")), "f")}

    # --- encoding --------------------------------------------------------------------------

    def encode(self, stream: str, payload: dict, topics: set[str]) -> dict[str, list[bytes]]:
        event = payload.get("e")
        out: dict[str, list[bytes]] = {}
        if event == "liquidation":       # every liquidation, not Binance's sample
            topic = f"allLiquidation.{payload['s']}"
            s = self.feed.symbol_index(payload["s"])
            if topic in topics:
                fmt = self.feed.formats[s]
                out[topic] = [orjson.dumps({"topic": topic, "type": "snapshot", "ts": payload["E"], "data": [{
                    "T": payload["last_fill_ms"] or payload["ts"], "s": payload["s"],
                    "S": "Buy" if payload["long"] else "Sell",
                    "v": self.market.qty_of_lots(s, self.market.fill_lots(payload["lots"])),
                    "p": self.market.price(s, fmt.price_float(payload["bankruptcy_price"]))}]})]
            return out
        symbol = payload["s"]
        s = self.feed.symbol_index(symbol)
        if event == "depthUpdate":
            for topic in topics:
                depth = int(topic.split(".")[1])
                view = self._views.get((s, depth)) or self._view(s, depth)
                # A depth event the underlying stream lost is a u Bybit's clients never see.
                lost = view.last_binance_u is not None and payload["pu"] != view.last_binance_u
                view.last_binance_u = payload["u"]
                bids, asks = view.refresh(self.feed, self.market, s)
                if not bids and not asks:
                    continue
                view.seq += 2 if lost else 1
                out[topic] = [self._book_frame(topic, "delta", s, sorted(bids, reverse=True), sorted(asks), view.seq,
                                               payload["u"], payload["E"])]
        elif event == "trade":
            topic = f"publicTrade.{symbol}"
            if topic in topics:
                self.hold_for_step(topic, (payload["E"], {
                    "T": payload["T"], "s": symbol, "S": "Sell" if payload["m"] else "Buy",
                    "v": self.market.qty(s, payload["q"]), "p": self.market.price(s, payload["p"]), "L": "PlusTick",
                    "i": str(uuid.UUID(int=payload["t"])), "BT": False, "RPI": False, "seq": payload["t"]}))
        elif event == "markPriceUpdate":
            topic = f"tickers.{symbol}"
            out[topic] = [orjson.dumps({"topic": topic, "type": "delta", "data": self._ticker_fields(s, payload["E"]),
                                        "cs": self.feed.model.last_update_id[s], "ts": payload["E"]})]
        return out

    def on_step(self, topics: set[str]) -> dict[str, list[bytes]]:
        return self.release_held(lambda topic, trades: orjson.dumps(
            {"topic": topic, "type": "snapshot", "ts": trades[-1][0], "data": [trade for _, trade in trades]}))
