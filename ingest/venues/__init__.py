"""The venue registry: the one list of venues perpflow speaks (CLI choices come from it).

Each venue is one module here implementing ``ingest.venue.Venue``; adding a venue is its module,
its test fixtures and one line below.
"""

from __future__ import annotations

from ingest.venue import Venue
from ingest.venues.binance_coinm import BinanceCoinm
from ingest.venues.binance_usdm import BinanceUsdm
from ingest.venues.bybit_linear import BybitLinear
from ingest.venues.dydx_v4 import DydxV4
from ingest.venues.gmx_v2 import GmxV2
from ingest.venues.hyperliquid import Hyperliquid
from ingest.venues.okx import OkxSwap

REGISTRY: dict[str, type[Venue]] = {cls.exchange: cls for cls in (
    BinanceUsdm,
    BinanceCoinm,
    OkxSwap,
    BybitLinear,
    DydxV4,
    GmxV2,
    Hyperliquid,
)}


def venue_names() -> list[str]:
    return sorted(REGISTRY)


def venue(name: str) -> Venue:
    """A fresh venue object (venues keep per-run state: instruments, merged tickers)."""
    try:
        return REGISTRY[name]()
    except KeyError:
        raise ValueError(f"unknown exchange {name!r}; supported: {', '.join(venue_names())}") from None


def forced_trade_types() -> dict[str, frozenset[str]]:
    """Per venue, the ``trade_type`` words of forced fills (``Venue.FORCED_TRADE_TYPES``), for
    ``transforms.taker_flow.taker_flow_sql``."""
    return {name: cls.FORCED_TRADE_TYPES for name, cls in REGISTRY.items() if cls.FORCED_TRADE_TYPES}


def likely_venues(messages: list) -> list[tuple[str, int]]:
    """Venues that recognize some of the parsed ``messages``, most first, with their counts."""
    counts = []
    for name, cls in REGISTRY.items():
        probe = cls()
        hits = sum(1 for m in messages if probe.recognizes(m))
        if hits:
            counts.append((name, hits))
    return sorted(counts, key=lambda item: -item[1])
