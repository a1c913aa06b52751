"""Binance COIN-M futures (``dstream`` / ``/dapi``): inverse contracts, coin-margined.

Every size (trades, book levels, liquidations, open interest) is a number of contracts worth a
fixed USD amount each (``contractSize`` in exchangeInfo: 100 USD for BTC, 10 USD for most
others), so the base amount depends on the price: ``contracts * contract_size / price``.
Symbols are ``BTCUSD_PERP`` for perpetuals and ``BTCUSD_250328`` for quarterlies. COIN-M's
markPriceUpdate has no index price ``i`` (NULL in the record). The dialect is shared with
USD-M: ``ingest.venues.binance``.
"""

from __future__ import annotations

from ingest.venue import Coverage
from ingest.venues.binance import BinanceFutures


class BinanceCoinm(BinanceFutures):
    exchange = "binance-coinm"
    default_ws_url = "wss://dstream.binance.com"
    default_rest_url = "https://dapi.binance.com"
    API = "/dapi/v1"
    QUOTE_ASSETS = ("USD",)
    SYMBOL_PATTERN = r"[A-Z0-9]+USD_(?:PERP|[0-9]{6})"
    SYMBOL_EXAMPLES = "BTCUSD_PERP,ETHUSD_PERP"
    SUFFIXED_SYMBOLS = True
    QTY_UNIT = "contracts"
    MARGIN = "inverse"
    POSITIONING_STATS = False
    COVERAGE = {**BinanceFutures.COVERAGE,
                "index_price": (Coverage.UNAVAILABLE, "COIN-M's markPriceUpdate has no index; <pair>@indexPrice "
                                                      "is not collected"),
                "long_short_ratios": (Coverage.UNAVAILABLE, "COIN-M's /futures/data ratios are per pair (a pair's "
                                                            "perpetual and quarterlies together), not per symbol: "
                                                            "not collected"),
                "taker_volumes": (Coverage.UNAVAILABLE, "COIN-M's /futures/data/takerBuySellVol (per pair and "
                                                        "contract type: PERPETUAL is the perpetual) is not "
                                                        "collected yet")}
