"""Binance USD-M wire encoding: exact payload shapes and decimal-string formatting.

Consumers parse these messages with code written for the real venue, so every detail that such
code depends on is reproduced: prices and quantities are decimal strings at the symbol's
precision (``"121550.10"``, ``"0.025"``), timestamps are integer milliseconds, keys and value
types are Binance's, depth levels are ``[price, qty]`` string pairs sorted by price.
Prices are formatted from integer tick indices with integer arithmetic, so a price string is
exactly the tick grid value, never a float artefact.
"""

from __future__ import annotations

from .config import SymbolSpec


class SymbolFormat:
    """Decimal-string formatting for one symbol."""

    def __init__(self, spec: SymbolSpec):
        self.spec = spec
        self.stream_prefix = spec.symbol.lower()
        self._pp = spec.price_precision
        self._qp = spec.quantity_precision
        self._tick_units = int(round(float(spec.tick_size) * 10 ** self._pp))
        self._step_units = int(round(float(spec.step_size) * 10 ** self._qp))
        self._pdiv = 10 ** self._pp
        self._qdiv = 10 ** self._qp

    def price(self, tick: int) -> str:
        value = tick * self._tick_units
        if not self._pp:
            return str(value)
        return f"{value // self._pdiv}.{value % self._pdiv:0{self._pp}d}"

    def qty(self, lots: int) -> str:
        value = lots * self._step_units
        if not self._qp:
            return str(value)
        return f"{value // self._qdiv}.{value % self._qdiv:0{self._qp}d}"

    def levels(self, ticks: list[int], lots: list[int]) -> list[list[str]]:
        return [[self.price(t), self.qty(q)] for t, q in zip(ticks, lots)]

    def price_float(self, value: float) -> str:
        """A computed (off-grid) price such as a bankruptcy or average fill price."""
        return f"{value:.{self._pp}f}"


def decimal8(value: float) -> str:
    """Mark/index/funding fields, which Binance sends with 8 decimals."""
    return f"{value:.8f}"


def agg_trade(fmt: SymbolFormat, event_ms: int, agg_id: int, tick: int, lots: int, first_id: int,
              last_id: int, trade_ms: int, buyer_is_maker: bool) -> dict:
    qty = fmt.qty(lots)
    return {"e": "aggTrade", "E": event_ms, "a": agg_id, "s": fmt.spec.symbol, "p": fmt.price(tick),
            "q": qty, "nq": qty, "f": first_id, "l": last_id, "T": trade_ms, "m": buyer_is_maker}


def trade(fmt: SymbolFormat, event_ms: int, trade_ms: int, trade_id: int, tick: int, lots: int,
          buyer_is_maker: bool) -> dict:
    return {"e": "trade", "E": event_ms, "T": trade_ms, "s": fmt.spec.symbol, "t": trade_id,
            "p": fmt.price(tick), "q": fmt.qty(lots), "X": "MARKET", "m": buyer_is_maker}


def depth_update(fmt: SymbolFormat, event_ms: int, transaction_ms: int, first_id: int, final_id: int,
                 previous_final_id: int, bids: list[list[str]], asks: list[list[str]]) -> dict:
    return {"e": "depthUpdate", "E": event_ms, "T": transaction_ms, "s": fmt.spec.symbol,
            "U": first_id, "u": final_id, "pu": previous_final_id, "b": bids, "a": asks}


def book_ticker(fmt: SymbolFormat, event_ms: int, transaction_ms: int, update_id: int,
                bid_tick: int, bid_lots: int, ask_tick: int, ask_lots: int) -> dict:
    return {"e": "bookTicker", "u": update_id, "s": fmt.spec.symbol,
            "b": fmt.price(bid_tick), "B": fmt.qty(bid_lots), "a": fmt.price(ask_tick), "A": fmt.qty(ask_lots),
            "T": transaction_ms, "E": event_ms}


def mark_price_update(symbol: str, event_ms: int, mark: float, index: float, settle: float,
                      funding_rate: float, next_funding_ms: int) -> dict:
    return {"e": "markPriceUpdate", "E": event_ms, "s": symbol, "p": decimal8(mark), "i": decimal8(index),
            "P": decimal8(settle), "r": decimal8(funding_rate), "T": next_funding_ms}


def force_order(fmt: SymbolFormat, event_ms: int, side: str, lots: int, bankruptcy_price: float,
                avg_price: float, status: str, last_lots: int, filled_lots: int, trade_ms: int) -> dict:
    return {"e": "forceOrder", "E": event_ms, "o": {
        "s": fmt.spec.symbol, "S": side, "o": "LIMIT", "f": "IOC", "q": fmt.qty(lots),
        "p": fmt.price_float(bankruptcy_price), "ap": fmt.price_float(avg_price), "X": status,
        "l": fmt.qty(last_lots), "z": fmt.qty(filled_lots), "T": trade_ms}}


def depth_snapshot(fmt: SymbolFormat, last_update_id: int, event_ms: int, transaction_ms: int,
                   bids: list[list[str]], asks: list[list[str]]) -> dict:
    return {"lastUpdateId": last_update_id, "E": event_ms, "T": transaction_ms, "bids": bids, "asks": asks}


def exchange_symbol(spec: SymbolSpec) -> dict:
    """One entry of ``/fapi/v1/exchangeInfo`` ``symbols``."""
    max_price = f"{spec.price * 20:.{spec.price_precision}f}"
    return {
        "symbol": spec.symbol, "pair": spec.symbol, "contractType": "PERPETUAL",
        "deliveryDate": 4133404800000, "onboardDate": 1569398400000, "status": "TRADING",
        "maintMarginPercent": "2.5000", "requiredMarginPercent": "5.0000",
        "baseAsset": spec.base_asset, "quoteAsset": spec.quote_asset, "marginAsset": spec.quote_asset,
        "pricePrecision": spec.price_precision, "quantityPrecision": spec.quantity_precision,
        "baseAssetPrecision": 8, "quotePrecision": 8, "underlyingType": "COIN", "underlyingSubType": [],
        "triggerProtect": "0.0500", "liquidationFee": "0.012500", "marketTakeBound": "0.05",
        "filters": [
            {"filterType": "PRICE_FILTER", "minPrice": spec.tick_size, "maxPrice": max_price,
             "tickSize": spec.tick_size},
            {"filterType": "LOT_SIZE", "minQty": spec.step_size, "maxQty": "1000000", "stepSize": spec.step_size},
            {"filterType": "MARKET_LOT_SIZE", "minQty": spec.step_size, "maxQty": "100000",
             "stepSize": spec.step_size},
            {"filterType": "MAX_NUM_ORDERS", "limit": 200},
            {"filterType": "MIN_NOTIONAL", "notional": "100"},
            {"filterType": "PERCENT_PRICE", "multiplierUp": "1.0500", "multiplierDown": "0.9500",
             "multiplierDecimal": "4"},
        ],
        "orderTypes": ["LIMIT", "MARKET", "STOP", "STOP_MARKET", "TAKE_PROFIT", "TAKE_PROFIT_MARKET",
                       "TRAILING_STOP_MARKET"],
        "timeInForce": ["GTC", "IOC", "FOK", "GTX", "GTD"],
    }
