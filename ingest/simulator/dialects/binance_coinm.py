"""Binance COIN-M futures (``dstream`` / ``/dapi``) on the simulated market (``binance-coinm``).

The same envelopes, events and U/u/pu depth sequencing as USD-M, on inverse contracts:

* websockets under ``/coinm`` (the ``dstream`` host: point ``--ws-url`` at ``ws://HOST:PORT/coinm``),
  routed like USD-M (``/public/stream?streams=btcusd_perp@depth@100ms``, ``/market/stream?...``);
* symbols ``BTCUSD_PERP``; every size is an integer number of contracts worth ``CONTRACT_USD``
  dollars (BTC 100, others 10): ``round(base × price / contract_usd)``, at least 1 for a trade or a
  liquidation. A book level is that function of the market's level, so books in contracts are exact
  functions of the true book and the REST snapshot agrees with the stream;
* markPriceUpdate without an index price ``i`` (COIN-M sends none);
* prices, sizes and mark are COIN-M's own market (``ingest.simulator.venue_market``);
* REST ``/dapi/v1/exchangeInfo`` (``contractSize``, ``contractStatus``), ``/dapi/v1/depth``,
  ``/dapi/v1/aggTrades``, ``/dapi/v1/openInterest``.
"""

from __future__ import annotations

from decimal import ROUND_HALF_EVEN, Decimal

import orjson
from aiohttp import web

from ..config import MARKET_STREAM_KINDS, PUBLIC_STREAM_KINDS
from ..feed import DEPTH_LIMITS
from ..wire import decimal8
from . import Dialect

CONTRACT_USD = {"BTC": 100}
DEFAULT_CONTRACT_USD = 10
PREFIX = "/coinm"


class BinanceCoinmDialect(Dialect):
    name = "binance-coinm"
    url_prefix = PREFIX

    # --- symbols and units -----------------------------------------------------------------

    def native_symbol(self, s: int) -> str:
        spec = self.feed.model.specs[s]
        return f"{spec.base_asset}USD_PERP"

    def _index(self, native: str) -> int | None:
        for s in range(self.feed.model.n):
            if self.native_symbol(s) == native.upper():
                return s
        return None

    def contract_usd(self, s: int) -> int:
        return CONTRACT_USD.get(self.feed.model.specs[s].base_asset, DEFAULT_CONTRACT_USD)

    def contracts(self, s: int, base_qty: str, price: str, at_least: int = 0) -> str:
        usd = Decimal(base_qty) * Decimal(price) / self.contract_usd(s)
        return str(max(at_least, int(usd.quantize(Decimal(1), rounding=ROUND_HALF_EVEN))))

    def _levels(self, s: int, levels: list) -> list[list[str]]:
        """Shared-market levels as COIN-M's own book, in contracts."""
        return [[price, self.contracts(s, qty, price)] for price, qty in self.market.book(s, levels)]

    def _trade(self, s: int, trade: dict) -> dict:
        """An aggregated trade (``p``, ``q``, ``f``, ``l``) as COIN-M's own."""
        price = self.market.price(s, trade["p"])
        qty = self.market.qty(s, trade["q"], trade["l"] - trade["f"] + 1)
        return {**trade, "p": price, "q": self.contracts(s, qty, price, at_least=1)}

    def streams_for(self, topic: str) -> list[str] | None:
        prefix, _, kind = topic.partition("@")
        s = self._index(prefix.upper())
        if s is None or prefix != prefix.lower() or kind not in PUBLIC_STREAM_KINDS + MARKET_STREAM_KINDS:
            return None
        return [f"{self.feed.formats[s].stream_prefix}@{kind}"]

    def snapshot(self, topic: str) -> bytes | None:
        return None          # depth snapshots come over REST, as on Binance

    # --- routes ----------------------------------------------------------------------------

    def add_routes(self, app: web.Application) -> None:
        for route in ("public", "market"):
            app.router.add_get(f"{PREFIX}/{route}/stream", self._combined(route))
        for path, handler in (("exchangeInfo", self.exchange_info), ("depth", self.depth),
                              ("aggTrades", self.agg_trades), ("openInterest", self.open_interest)):
            app.router.add_get(f"/dapi/v1/{path}", self.rest(handler))

    def _combined(self, route: str):
        async def serve(request: web.Request) -> web.StreamResponse:
            streams = [s for s in request.query.get("streams", "").split("/") if s]
            return await self.server.serve_ws(request, f"coinm-{route}", True, [], self, on_open=self._opened(
                route, streams))
        return serve

    def _opened(self, route: str, streams: list[str]):
        def subscribe(conn) -> None:
            for topic in streams:
                underlying = self.streams_for(topic)
                kind = topic.partition("@")[2]
                # Routed like USD-M since the 2026 split: a stream on the wrong path is never delivered.
                if underlying and (kind in PUBLIC_STREAM_KINDS) == (route == "public"):
                    self.server.subscribe_topic(conn, topic, underlying)
        return subscribe

    def on_text(self, conn, text: str) -> None:
        self.send(conn, {"error": {"code": 2, "msg": "perpflow's COIN-M dialect takes streams in the URL"},
                         "id": None})

    # --- REST ------------------------------------------------------------------------------

    def _symbol(self, query) -> int | None:
        return self._index(query.get("symbol", ""))

    def exchange_info(self, query) -> tuple[int, dict]:
        symbols = []
        for s, spec in enumerate(self.feed.model.specs):
            symbols.append({
                "symbol": self.native_symbol(s), "pair": f"{spec.base_asset}USD", "contractType": "PERPETUAL",
                "deliveryDate": 4133404800000, "onboardDate": 1597042800000, "contractStatus": "TRADING",
                "contractSize": self.contract_usd(s), "marginAsset": spec.base_asset, "baseAsset": spec.base_asset,
                "quoteAsset": "USD", "pricePrecision": spec.price_precision, "quantityPrecision": 0,
                "filters": [{"filterType": "PRICE_FILTER", "minPrice": spec.tick_size, "maxPrice": "1000000",
                             "tickSize": spec.tick_size},
                            {"filterType": "LOT_SIZE", "stepSize": "1", "maxQty": "1000000", "minQty": "1"}]})
        return 200, {"timezone": "UTC", "serverTime": self.feed.now_ms, "symbols": symbols,
                     "rateLimits": [{"rateLimitType": "REQUEST_WEIGHT", "interval": "MINUTE", "intervalNum": 1,
                                     "limit": 2400}]}

    def depth(self, query) -> tuple[int, dict]:
        s = self._symbol(query)
        limit = int(query.get("limit", "500")) if query.get("limit", "500").isdigit() else 0
        if s is None or limit not in DEPTH_LIMITS:
            return 400, {"code": -1121, "msg": "Invalid symbol or limit."}
        body = self.feed.depth_snapshot(self.feed.symbols[s], limit)
        return 200, {**body, "symbol": self.native_symbol(s), "pair": self.native_symbol(s)[:-5],
                     "bids": self._levels(s, body["bids"]), "asks": self._levels(s, body["asks"])}

    def agg_trades(self, query) -> tuple[int, list | dict]:
        s = self._symbol(query)
        if s is None:
            return 400, {"code": -1121, "msg": "Invalid symbol."}
        from_id = int(query["fromId"]) if query.get("fromId", "").isdigit() else None
        limit = min(int(query.get("limit", "500")), 1000) if query.get("limit", "500").isdigit() else 500
        return 200, [self._trade(s, t) for t in self.feed.agg_trades(self.feed.symbols[s], from_id, limit)]

    def open_interest(self, query) -> tuple[int, dict]:
        s = self._symbol(query)
        if s is None:
            return 400, {"code": -1121, "msg": "Invalid symbol."}
        base = self.feed.open_interest(self.feed.symbols[s])
        mark = f"{self.market.mark(s, self.feed.model.mark[s], self.feed.now_ms):.8f}"
        return 200, {"symbol": self.native_symbol(s), "pair": self.native_symbol(s)[:-5],
                     "openInterest": self.contracts(s, self.market.qty(s, base["openInterest"]), mark),
                     "contractType": "PERPETUAL",
                     "time": base["time"]}

    # --- encoding --------------------------------------------------------------------------

    def encode(self, stream: str, payload: dict, topics: set[str]) -> dict[str, list[bytes]]:
        event = payload.get("e")
        order = payload.get("o")
        s = self.feed.symbol_index(order["s"] if event == "forceOrder" else payload["s"])
        native = self.native_symbol(s)
        if event == "depthUpdate":
            data = {**payload, "s": native, "ps": native[:-5], "b": self._levels(s, payload["b"]),
                    "a": self._levels(s, payload["a"])}
        elif event == "aggTrade":
            data = {**self._trade(s, payload), "s": native}
            data.pop("nq", None)
        elif event == "markPriceUpdate":
            data = {key: value for key, value in payload.items() if key != "i"}
            data["s"] = native
            data["p"] = decimal8(self.market.mark(s, float(payload["p"]), payload["E"]))
        elif event == "forceOrder":
            price = self.market.price(s, order["ap"])
            data = {**payload, "o": {**order, "s": native, "ps": native[:-5], "p": self.market.price(s, order["p"]),
                                     "ap": price, **{k: self.contracts(s, self.market.qty(s, order[k]), price, at_least=1)
                                                     for k in ("q", "l", "z")}}}
        else:
            return {}
        out = {}
        for topic in topics:
            out[topic] = [b'{"stream":"' + topic.encode() + b'","data":' + orjson.dumps(data) + b"}"]
        return out
