"""GMX v2's public oracle REST API and its Subsquid GraphQL on the simulated market (``gmx-v2``).

GMX has no order book and no websocket: traders open and close against liquidity pools at the
oracle price, so every liquidation executes in full against the pool. Served under ``/gmx`` (point
``--rest-url`` at ``http://HOST:PORT/gmx``; the venue then asks ``/gmx/graphql`` for Subsquid):

* ``GET /gmx/tokens``: index, long and short tokens with their decimals (BTC 8, ETH 18, SOL 9,
  USDC 6), made-up but stable addresses;
* ``GET /gmx/markets/info``: one market per symbol, ``"BTC/USD [WBTC-USDC]"``, its long and short
  open interest in USD as 10^30 fixed-point strings: GMX's own market (``venue_market``) holds its
  share of the market's open interest, split between the sides as the market's levered longs and
  shorts are;
* ``GET /gmx/prices/tickers``: min/max oracle prices per token (10^(30 - decimals) fixed point,
  a spread of 1 bp around GMX's index), ``updatedAt`` the market's second;
* ``POST /gmx/graphql``: ``marketInfos`` (``fundingFactorPerSecond`` = the market's funding rate
  per second, ``longsPayShorts`` its sign) and ``positionChanges`` of ``type`` LIQUIDATION (every
  liquidation of the market at GMX's share of its size, executed at the oracle price) or
  AUTO_DELEVERAGING (for each liquidation whose loss the market's book could not absorb, the
  opposite side's profitable positions are reduced by that part), honouring ``timestamp_gte``
  (``$since``), ``offset`` and the 500-row limit; anything else is a GraphQL error.
"""

from __future__ import annotations

import re
from decimal import Decimal

import orjson
from aiohttp import web

from . import Dialect, address

PREFIX = "/gmx"
DECIMALS = {"BTC": 8, "ETH": 18, "SOL": 9, "USDC": 6}
LONG_TOKEN = {"BTC": "WBTC", "ETH": "WETH"}
PAGE_ROWS = 500
ORACLE_SPREAD = 1e-4
USD = Decimal(10) ** 30
_TYPE = re.compile(r"type_eq:\s*([A-Z_]+)")


class GmxDialect(Dialect):
    name = "gmx-v2"
    url_prefix = PREFIX

    # --- markets ---------------------------------------------------------------------------

    def native_symbol(self, s: int) -> str:
        base = self.feed.model.specs[s].base_asset
        return f"{base}-USD-{LONG_TOKEN.get(base, base)}-USDC"

    def _market_token(self, s: int) -> str:
        return address("gmx market", self.feed.model.specs[s].base_asset)

    def _token(self, symbol: str) -> str:
        return address("gmx token", symbol)

    def _tokens(self) -> list[tuple[str, int]]:
        bases = [spec.base_asset for spec in self.feed.model.specs]
        symbols = dict.fromkeys([*bases, *(LONG_TOKEN.get(b, b) for b in bases), "USDC"])
        return [(symbol, DECIMALS.get(symbol.removeprefix("W"), 18)) for symbol in symbols]

    def _fixed_price(self, usd: float, decimals: int) -> int:
        return int(Decimal(repr(usd)) * Decimal(10) ** (30 - decimals))

    # --- routes ----------------------------------------------------------------------------

    def add_routes(self, app: web.Application) -> None:
        app.router.add_get(f"{PREFIX}/tokens", self.rest(self.tokens))
        app.router.add_get(f"{PREFIX}/markets/info", self.rest(self.markets_info))
        app.router.add_get(f"{PREFIX}/prices/tickers", self.rest(self.prices))
        app.router.add_post(f"{PREFIX}/graphql", self._graphql)

    def tokens(self, query) -> tuple[int, dict]:
        return 200, {"tokens": [{"symbol": symbol, "address": self._token(symbol), "decimals": decimals,
                                 "isSynthetic": symbol in ("BTC", "SOL")} for symbol, decimals in self._tokens()]}

    def markets_info(self, query) -> tuple[int, dict]:
        m = self.feed.model
        markets = []
        for s, spec in enumerate(m.specs):
            base = spec.base_asset
            oi_usd = Decimal(self.market.qty(s, self.feed.open_interest(spec.symbol)["openInterest"])) * \
                Decimal(repr(self.market.index(s, m.index[s])))
            long_share = spec.levered_long_share / (spec.levered_long_share + spec.levered_short_share)
            long_usd, short_usd = oi_usd * Decimal(repr(2 * long_share)), oi_usd * Decimal(repr(2 * (1 - long_share)))
            pool = oi_usd * 3
            markets.append({
                "marketToken": self._market_token(s), "name": f"{base}/USD [{LONG_TOKEN.get(base, base)}-USDC]",
                "indexToken": self._token(base), "longToken": self._token(LONG_TOKEN.get(base, base)),
                "shortToken": self._token("USDC"), "isListed": True, "isDisabled": False,
                "listingDate": "2023-08-01T00:00:00.000Z",
                **{key: str(int(value * USD)) for key, value in (
                    ("openInterestLong", long_usd), ("openInterestShort", short_usd),
                    ("availableLiquidityLong", pool - long_usd), ("availableLiquidityShort", pool - short_usd),
                    ("poolAmountLong", pool), ("poolAmountShort", pool))},
                **{key: "0" for key in ("fundingRateLong", "fundingRateShort", "borrowingRateLong",
                                        "borrowingRateShort", "netRateLong", "netRateShort")}})
        return 200, {"markets": markets}

    def prices(self, query) -> tuple[int, list]:
        m = self.feed.model
        usd = {"USDC": 1.0}
        for s, spec in enumerate(m.specs):
            usd[spec.base_asset] = usd[LONG_TOKEN.get(spec.base_asset, spec.base_asset)] = \
                self.market.index(s, m.index[s])
        updated = self.feed.now_ms // 1000
        return 200, [{"tokenSymbol": symbol, "tokenAddress": self._token(symbol),
                      "minPrice": str(self._fixed_price(usd[symbol] * (1 - ORACLE_SPREAD / 2), decimals)),
                      "maxPrice": str(self._fixed_price(usd[symbol] * (1 + ORACLE_SPREAD / 2), decimals)),
                      "oracleDecimals": 8, "updatedAt": updated} for symbol, decimals in self._tokens()]

    # --- GraphQL ---------------------------------------------------------------------------

    async def _graphql(self, request: web.Request) -> web.Response:
        failure = self.feed.faults.rest_failure()
        if failure is not None:
            status, body = failure
            self.feed.record_fault(self.feed.now_ms, "rest_error", path=request.path, status=status)
            return web.json_response(body, status=status)
        try:
            body = orjson.loads(await request.read())
            query, variables = body["query"], body.get("variables") or {}
        except (orjson.JSONDecodeError, KeyError, TypeError):
            return web.json_response({"errors": [{"message": "Must provide query string."}]}, status=400)
        if "marketInfos" in query:
            return web.json_response({"data": {"marketInfos": self._market_infos()}})
        kind = _TYPE.search(query)
        if "positionChanges" in query and kind and kind[1] in ("LIQUIDATION", "AUTO_DELEVERAGING"):
            since, offset = int(variables.get("since", 0)), int(variables.get("offset", 0))
            rows = [row for row in self._position_changes(kind[1]) if row["timestamp"] >= since]
            return web.json_response({"data": {"positionChanges": rows[offset:offset + PAGE_ROWS]}})
        return web.json_response({"errors": [{"message": f"unsupported query: {query[:120]}"}]}, status=400)

    def _market_infos(self) -> list[dict]:
        m = self.feed.model
        rows = []
        for s, spec in enumerate(m.specs):
            per_second = Decimal(repr(m.funding_rate[s])) / (spec.funding_interval_hours * 3600)
            rows.append({"id": self._market_token(s), "marketTokenAddress": self._market_token(s),
                         "fundingFactorPerSecond": str(int(abs(per_second) * USD)), "longsPayShorts": per_second >= 0})
        return rows

    def _position_changes(self, kind: str) -> list[dict]:
        """Every recent liquidation (LIQUIDATION) or the ADL it caused (AUTO_DELEVERAGING), oldest first."""
        rows = []
        for liq in self.feed.recent_liquidations:
            s = liq.symbol_index
            lots = liq.lots if kind == "LIQUIDATION" else liq.lots - liq.filled_lots
            lots = self.market.fill_lots(lots)
            if lots <= 0:
                continue
            base = self.feed.model.specs[s].base_asset
            price = self.market.index(s, liq.mark_price)
            size = Decimal(self.market.qty_of_lots(s, lots))
            stamp = (liq.last_fill_ms or liq.ts_ms) // 1000
            is_long = liq.is_long if kind == "LIQUIDATION" else not liq.is_long
            rows.append({"id": address("gmx", kind, liq.ts_ms, s, liq.lots, liq.is_long, liq.entry_price,
                                       liq.liquidation_price, liq.leverage)[2:26],
                         "type": kind, "market": self._market_token(s), "isLong": is_long,
                         "sizeDeltaUsd": str(int(size * Decimal(repr(price)) * USD)),
                         "sizeDeltaInTokens": str(int(size * Decimal(10) ** DECIMALS.get(base, 18))),
                         "executionPrice": str(self._fixed_price(price, DECIMALS.get(base, 18))),
                         "timestamp": stamp, "block": 200_000_000 + stamp})
        rows.sort(key=lambda row: (row["timestamp"], row["id"]))
        return rows

    # --- no websocket ----------------------------------------------------------------------

    def on_text(self, conn, text: str) -> None:
        raise NotImplementedError("GMX has no websocket")

    def streams_for(self, topic: str) -> list[str] | None:
        return None

    def snapshot(self, topic: str) -> bytes | None:
        return None

    def encode(self, stream: str, payload: dict, topics: set[str]) -> dict[str, list[bytes]]:
        return {}
