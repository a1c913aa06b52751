"""OKX v5 public websocket and REST on the simulated market (``okx-swap``).

* ``/ws/v5/public``: ``{"op":"subscribe","args":[{"channel":..,"instId":..}]}`` acknowledged per
  argument with ``{"event":"subscribe","arg":..,"connId":..}``; text ``ping`` answered ``pong``;
  an unknown channel or instrument is an ``{"event":"error","code":"60018"}``.
* Instruments are USDT-margined swaps ``BTC-USDT-SWAP``; sizes are contracts of ``CONTRACT_VALUE``
  coins (BTC 0.01, ETH 0.1, SOL 1 as on OKX), so a fill of 0.123 BTC is ``"12.3"`` contracts.
* ``books``: a 400-level snapshot on subscribe (``prevSeqId -1``), then updates of that 400-level
  view with ``seqId`` = the market's update id (it jumps, as OKX's does) and ``prevSeqId`` = the
  previous ``seqId``; a sequence break in the underlying depth stream appears as a ``prevSeqId``
  that does not match, and a resubscribe yields a fresh snapshot. ``checksum`` is 0 (deprecated
  since 2026-06); levels are ``[px, sz, "0", orders]``.
* ``trades``: one push per aggregated taker order (``tradeId`` = its last trade id, ``count``).
* ``funding-rate`` every 60 s and ``open-interest`` every 3 s (simulated), ``mark-price`` and
  ``index-tickers`` (``instId`` ``BTC-USDT``: the 24 h fields repeat ``idxPx``) each second,
  ``liquidation-orders`` per ``instType`` with the market's published (sampled) liquidations,
  bankruptcy price ``bkPx``.
* Prices, sizes, mark and index are OKX's own market (``ingest.simulator.venue_market``).
* REST ``/api/v5/public/instruments?instType=SWAP|FUTURES`` (no futures are simulated) and
  ``/api/v5/market/history-trades?instId=&type=1&after=<id>&limit=<n>``: the ``n`` individual trades
  below ``after``, newest first (an aggregated push's fills, its size split as the market split it).
* REST rubik statistics (``period=5m`` only), newest first, the open period included, from the
  market's positioning truth (``ingest.simulator.positioning``): ``contracts/long-short-account-
  ratio-contract`` (all accounts), ``...-contract-top-trader`` and ``long-short-position-ratio-
  contract-top-trader`` (the top 5% of accounts by position value), ``[ts, ratio]``; and
  ``taker-volume-contract`` ``[ts, sellVol, buyVol]`` in contracts (``unit=1``, the default) or
  coins (``unit=0``): the sum of OKX's own trades' sizes in the period.
"""

from __future__ import annotations

from collections import Counter
from decimal import Decimal

import orjson
from aiohttp import web

from ..config import ALL_LIQUIDATIONS_STREAM
from ..positioning import ratio
from . import BookView, Dialect

BOOK_DEPTH = 400
CONTRACT_VALUE = {"BTC": "0.01", "ETH": "0.1", "SOL": "1"}
FUNDING_EVERY_MS = 60_000
OPEN_INTEREST_EVERY_MS = 3_000
RUBIK = "/api/v5/rubik/stat"
TOP_TRADERS = (0.05, "value")      # OKX's top traders: the top 5% of accounts by open position value
CHANNELS = ("books", "trades", "funding-rate", "open-interest", "mark-price", "index-tickers")


class OkxSwapDialect(Dialect):
    name = "okx-swap"

    def __init__(self, server):
        super().__init__(server)
        self._views: dict[int, BookView] = {}
        self._subscribers: Counter = Counter()     # topic -> connections subscribed
        self._conn_ids = 0
        # OKX's taker volume is the sum of its own trades' sizes (each rounded to its lots).
        self.feed.positioning.track_venue_sizes(self.name, lambda lots, trades: self.market.fill_lots_of_trades(lots, trades))

    # --- instruments -----------------------------------------------------------------------

    def inst_id(self, s: int) -> str:
        spec = self.feed.model.specs[s]
        return f"{spec.base_asset}-{spec.quote_asset}-SWAP"

    def _index(self, inst_id: str) -> int | None:
        for s in range(self.feed.model.n):
            if self.inst_id(s) == inst_id:
                return s
        return None

    def contract_value(self, s: int) -> Decimal:
        spec = self.feed.model.specs[s]
        return Decimal(CONTRACT_VALUE.get(spec.base_asset, spec.step_size))

    def contracts(self, s: int, base_qty: str) -> str:
        return format((Decimal(base_qty) / self.contract_value(s)).normalize(), "f")

    def instruments(self, query) -> tuple[int, dict]:
        inst_type = query.get("instType")
        if inst_type not in ("SWAP", "FUTURES", "SPOT", "MARGIN", "OPTION"):
            return 400, {"code": "51000", "msg": "Parameter instType error", "data": []}
        data = []
        if inst_type == "SWAP":
            for s, spec in enumerate(self.feed.model.specs):
                data.append({
                    "instType": "SWAP", "instId": self.inst_id(s), "uly": f"{spec.base_asset}-{spec.quote_asset}",
                    "instFamily": f"{spec.base_asset}-{spec.quote_asset}", "baseCcy": "", "quoteCcy": "",
                    "settleCcy": spec.quote_asset, "ctVal": str(self.contract_value(s)), "ctMult": "1",
                    "ctValCcy": spec.base_asset, "ctType": "linear", "tickSz": spec.tick_size.rstrip("0").rstrip("."),
                    "lotSz": str((Decimal(spec.step_size) / self.contract_value(s)).normalize()),
                    "minSz": "0.01", "listTime": "1611916828000", "expTime": "", "lever": "100", "state": "live"})
        return 200, {"code": "0", "msg": "", "data": data}

    def history_trades(self, query) -> tuple[int, dict]:
        s = self._index(query.get("instId", ""))
        try:
            after = int(query["after"]) if "after" in query else None
            limit = min(int(query.get("limit", "100")), 100)
        except ValueError:
            return 400, {"code": "51000", "msg": "Parameter after or limit error", "data": []}
        if s is None or query.get("type", "1") != "1":
            return 400, {"code": "51001", "msg": "Instrument ID does not exist", "data": []}
        market, inst, data = self.market, self.inst_id(s), []
        for fill in reversed(self.feed.recent_fills(s)):
            if len(data) >= limit:
                break
            sizes = market.split_lots(fill.lots, fill.last_trade_id - fill.first_trade_id + 1)
            for i in reversed(range(len(sizes))):
                trade_id = fill.first_trade_id + i
                if (after is None or trade_id < after) and len(data) < limit:
                    data.append({"instId": inst, "tradeId": str(trade_id),
                                 "px": market.price_of_tick(s, market.level_ticks(s, fill.tick)),
                                 "sz": self.contracts(s, market.qty_of_lots(s, sizes[i])),
                                 "side": "sell" if fill.buyer_is_maker else "buy", "ts": str(fill.ts_ms),
                                 "source": "0"})
        return 200, {"code": "0", "msg": "", "data": data}

    def positioning(self, query, statistic: str) -> tuple[int, dict]:
        s = self._index(query.get("instId", ""))
        if s is None:
            return 400, {"code": "51001", "msg": "Instrument ID does not exist", "data": []}
        if query.get("period", "5m") != "5m":
            return 400, {"code": "51000", "msg": "Parameter period error (the simulator has 5m)", "data": []}
        try:
            limit = min(int(query.get("limit", "100")), 100)
        except ValueError:
            return 400, {"code": "51000", "msg": "Parameter limit error", "data": []}
        unit = query.get("unit", "1")
        if statistic == "taker" and unit not in ("0", "1"):
            return 400, {"code": "51000", "msg": "Parameter unit error (the simulator has 0 and 1)", "data": []}
        market, data = self.market, []
        for p in reversed(self.feed.positioning.periods(s, self.feed.now_ms, limit)):
            if statistic == "taker":
                buy_lots, sell_lots = self.feed.positioning.venue_taker_lots(self.name, s, p.start_ms)
                sell, buy = (market.qty_of_lots(s, lots) for lots in (sell_lots, buy_lots))
                data.append([str(p.start_ms), *((self.contracts(s, q) for q in (sell, buy)) if unit == "1"
                                                 else (sell, buy))])
                continue
            accounts, positions = p.top[TOP_TRADERS]
            long = {"all": p.long_accounts, "top_accounts": accounts, "top_positions": positions}[statistic]
            data.append([str(p.start_ms), ratio(long, 1 - long)])
        return 200, {"code": "0", "msg": "", "data": data}

    # --- websocket -------------------------------------------------------------------------

    def add_routes(self, app: web.Application) -> None:
        async def serve(request: web.Request) -> web.StreamResponse:
            return await self.server.serve_ws(request, "okx-public", False, [], self)
        app.router.add_get("/ws/v5/public", serve)
        app.router.add_get("/api/v5/public/instruments", self.rest(self.instruments))
        app.router.add_get("/api/v5/market/history-trades", self.rest(self.history_trades))
        for path, statistic in (("contracts/long-short-account-ratio-contract", "all"),
                                ("contracts/long-short-account-ratio-contract-top-trader", "top_accounts"),
                                ("contracts/long-short-position-ratio-contract-top-trader", "top_positions"),
                                ("taker-volume-contract", "taker")):
            app.router.add_get(f"{RUBIK}/{path}", self.rest(lambda query, statistic=statistic:
                                                            self.positioning(query, statistic)))

    def native_symbol(self, s: int) -> str:
        return self.inst_id(s)

    def streams_for(self, topic: str) -> list[str] | None:
        channel, _, key = topic.partition(":")
        arg = {"channel": channel, "instType" if channel == "liquidation-orders" else "instId": key}
        return self._topic(arg)[1] or None

    def snapshot(self, topic: str) -> bytes | None:
        channel, _, inst = topic.partition(":")
        return self._book_snapshot(self._index(inst)) if channel == "books" else None

    def on_text(self, conn, text: str) -> None:
        if text == "ping":
            self.send(conn, b"pong")
            return
        try:
            request = orjson.loads(text)
            op, args = request["op"], request["args"]
            if op not in ("subscribe", "unsubscribe") or not isinstance(args, list):
                raise ValueError(op)
        except (orjson.JSONDecodeError, KeyError, TypeError, ValueError):
            self.send(conn, {"event": "error", "code": "60012", "msg": f"Invalid request: {text[:200]}",
                             "connId": self._conn_id(conn)})
            return
        for arg in args:
            topic, streams = self._topic(arg)
            if topic is None:
                self.send(conn, {"event": "error", "code": "60018", "connId": self._conn_id(conn),
                                 "msg": f"Wrong URL or channel:{arg}, instId or instType doesn't exist."})
                continue
            if op == "subscribe":
                if topic not in conn.subscriptions:
                    self._subscribers[topic] += 1
                self.server.subscribe_topic(conn, topic, streams)
                self.send(conn, {"event": "subscribe", "arg": arg, "connId": self._conn_id(conn)})
                first = self.snapshot(topic)
                if first is not None:
                    self.send(conn, first)
            else:
                if topic in conn.subscriptions:
                    self._subscribers[topic] -= 1
                self.server.unsubscribe_topic(conn, topic)
                self.send(conn, {"event": "unsubscribe", "arg": arg, "connId": self._conn_id(conn)})

    def on_close(self, conn) -> None:
        for topic in conn.subscriptions:
            self._subscribers[topic] -= 1

    def _conn_id(self, conn) -> str:
        if not hasattr(conn, "okx_conn_id"):
            self._conn_ids += 1
            conn.okx_conn_id = f"{self._conn_ids:08x}"
        return conn.okx_conn_id

    def _topic(self, arg) -> tuple[str | None, list[str]]:
        if not isinstance(arg, dict):
            return None, []
        channel = arg.get("channel")
        if channel == "liquidation-orders" and arg.get("instType") in ("SWAP", "FUTURES"):
            return f"liquidation-orders:{arg['instType']}", [ALL_LIQUIDATIONS_STREAM]
        inst = arg.get("instId", "")
        s = self._index(f"{inst}-SWAP" if channel == "index-tickers" else inst)
        if channel not in CHANNELS or s is None:
            return None, []
        prefix = self.feed.formats[s].stream_prefix
        underlying = {"books": "depth@100ms", "trades": "aggTrade"}.get(channel, "markPrice@1s")
        return f"{channel}:{arg['instId']}", [f"{prefix}@{underlying}"]

    # --- books -----------------------------------------------------------------------------

    def _view(self, s: int) -> BookView:
        """The shared 400-level view; rebuilt from the market when nobody was following it."""
        topic = f"books:{self.inst_id(s)}"
        view = self._views.get(s)
        if view is None or self._subscribers[topic] <= 1:
            view = self._views[s] = BookView(BOOK_DEPTH, seq=self.feed.model.last_update_id[s])
            view.refresh(self.feed, self.market, s)
        return view

    def _levels(self, s: int, levels) -> list[list[str]]:
        fmt = self.feed.formats[s]
        return [[fmt.price(t), self.contracts(s, fmt.qty(q)), "0", "1" if q else "0"] for t, q in levels]

    def _book_snapshot(self, s: int) -> bytes:
        view = self._view(s)
        bids, asks = view.levels()
        return orjson.dumps({"arg": {"channel": "books", "instId": self.inst_id(s)}, "action": "snapshot",
                             "data": [{"asks": self._levels(s, asks), "bids": self._levels(s, bids),
                                       "ts": str(self.feed.now_ms), "checksum": 0, "prevSeqId": -1,
                                       "seqId": view.seq}]})

    def _book_update(self, s: int, payload: dict) -> bytes:
        view = self._views.get(s) or self._view(s)
        # A depth event the underlying stream lost shows as a prevSeqId that does not follow.
        continues = view.last_binance_u is None or payload["pu"] == view.last_binance_u
        prev = view.seq if continues else payload["pu"]
        bids, asks = view.refresh(self.feed, self.market, s)
        view.seq, view.last_binance_u = payload["u"], payload["u"]
        return orjson.dumps({"arg": {"channel": "books", "instId": self.inst_id(s)}, "action": "update",
                             "data": [{"asks": self._levels(s, sorted(asks)), "bids": self._levels(s, sorted(bids, reverse=True)),
                                       "ts": str(payload["E"]), "checksum": 0, "prevSeqId": prev,
                                       "seqId": payload["u"]}]})

    # --- encoding --------------------------------------------------------------------------

    def encode(self, stream: str, payload: dict, topics: set[str]) -> dict[str, list[bytes]]:
        out: dict[str, list[bytes]] = {}
        event = payload.get("e")
        if event == "forceOrder":
            order = payload["o"]
            s = self.feed.symbol_index(order["s"])
            topic = "liquidation-orders:SWAP"
            if topic in topics:
                long = order["S"] == "SELL"
                out[topic] = [orjson.dumps({"arg": {"channel": "liquidation-orders", "instType": "SWAP"}, "data": [{
                    "details": [{"bkLoss": "0", "bkPx": self.market.price(s, order["p"]), "ccy": "",
                                 "posSide": "long" if long else "short", "side": "sell" if long else "buy",
                                 "sz": self.contracts(s, self.market.qty(s, order["z"])),
                                 "ts": str(order["T"])}],
                    "instFamily": self.inst_id(s)[:-5], "instId": self.inst_id(s), "instType": "SWAP",
                    "uly": self.inst_id(s)[:-5]}]})]
            return out
        s = self.feed.symbol_index(payload["s"])
        inst = self.inst_id(s)
        if event == "depthUpdate" and f"books:{inst}" in topics:
            out[f"books:{inst}"] = [self._book_update(s, payload)]
        elif event == "aggTrade" and f"trades:{inst}" in topics:
            out[f"trades:{inst}"] = [orjson.dumps({"arg": {"channel": "trades", "instId": inst}, "data": [{
                "instId": inst, "tradeId": str(payload["l"]), "px": self.market.price(s, payload["p"]),
                "sz": self.contracts(s, self.market.qty(s, payload["q"], payload["l"] - payload["f"] + 1)),
                "side": "sell" if payload["m"] else "buy", "ts": str(payload["T"]),
                "count": str(payload["l"] - payload["f"] + 1), "source": "0"}]})]
        elif event == "markPriceUpdate":
            ts = payload["E"]
            if f"funding-rate:{inst}" in topics and ts // 1000 * 1000 % FUNDING_EVERY_MS == 0:
                out[f"funding-rate:{inst}"] = [orjson.dumps({"arg": {"channel": "funding-rate", "instId": inst}, "data": [{
                    "formulaType": "withRate", "fundingRate": payload["r"], "fundingTime": str(payload["T"]),
                    "impactValue": "", "instId": inst, "instType": "SWAP", "interestRate": "0.0001",
                    "method": "current_period", "maxFundingRate": "0.00375", "minFundingRate": "-0.00375",
                    "nextFundingRate": "", "premium": "0", "settFundingRate": payload["r"], "settState": "settled",
                    "nextFundingTime": str(payload["T"] + self._interval_ms(s)), "ts": str(ts)}]})]
            mark = self.market.mark(s, float(payload["p"]), ts)
            precision = self.feed.model.specs[s].price_precision
            if f"mark-price:{inst}" in topics:
                out[f"mark-price:{inst}"] = [orjson.dumps({"arg": {"channel": "mark-price", "instId": inst}, "data": [{
                    "instType": "SWAP", "instId": inst, "markPx": f"{mark:.{precision}f}", "ts": str(ts)}]})]
            family = inst[:-5]
            if f"index-tickers:{family}" in topics:
                index = f"{self.market.index(s, float(payload['i'])):.{precision + 1}f}"
                out[f"index-tickers:{family}"] = [orjson.dumps({"arg": {"channel": "index-tickers", "instId": family},
                                                                "data": [{"instId": family, "idxPx": index,
                                                                          "high24h": index, "low24h": index,
                                                                          "open24h": index, "sodUtc0": index,
                                                                          "sodUtc8": index, "ts": str(ts)}]})]
            if f"open-interest:{inst}" in topics and ts // 1000 * 1000 % OPEN_INTEREST_EVERY_MS == 0:
                base = self.market.qty(s, self.feed.open_interest(self.feed.symbols[s])["openInterest"])
                usd = format((Decimal(base) * Decimal(repr(mark))).quantize(Decimal("0.01")), "f")
                out[f"open-interest:{inst}"] = [orjson.dumps({"arg": {"channel": "open-interest", "instId": inst}, "data": [{
                    "instId": inst, "instType": "SWAP", "oi": self.contracts(s, base), "oiCcy": base, "oiUsd": usd,
                    "ts": str(ts)}]})]
        return out

    def _interval_ms(self, s: int) -> int:
        return self.feed.model.specs[s].funding_interval_hours * 3_600_000
