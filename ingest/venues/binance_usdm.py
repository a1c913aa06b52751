"""Binance USD-M futures (``fstream`` / ``/fapi``): sizes in base units, quoted and settled in
stablecoins. The dialect is shared with COIN-M: ``ingest.venues.binance``."""

from __future__ import annotations

from ingest.venues.binance import BinanceFutures


class BinanceUsdm(BinanceFutures):
    exchange = "binance-usdm"
    default_ws_url = "wss://fstream.binance.com"
    default_rest_url = "https://fapi.binance.com"
    API = "/fapi/v1"
    QUOTE_ASSETS = ("USDT", "USDC", "BUSD", "FDUSD")
    SYMBOL_PATTERN = r"[A-Z0-9]+(?:_[0-9]{6})?"
    SYMBOL_EXAMPLES = "BTCUSDT,ETHUSDT,SOLUSDT"
    SUFFIXED_SYMBOLS = False
    QTY_UNIT = "base"
    MARGIN = "linear"
    POSITIONING_STATS = True
