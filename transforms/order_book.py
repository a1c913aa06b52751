"""An L2 order book: price levels per side, kept sorted so the touch and bands are cheap.

Used by ingest (integrity: crossed-book detection while syncing) and by analytics and tests
(rebuilding books from snapshots and deltas). Prices are floats: every venue quotes at most
~15 significant digits, which a double represents exactly enough to key levels.
"""

from __future__ import annotations

from collections.abc import Iterable

from sortedcontainers import SortedDict


class OrderBook:
    __slots__ = ("bids", "asks")

    def __init__(self) -> None:
        self.bids: SortedDict = SortedDict()   # ascending; best bid is the last key
        self.asks: SortedDict = SortedDict()   # ascending; best ask is the first key

    @classmethod
    def from_levels(cls, bids: Iterable, asks: Iterable) -> "OrderBook":
        book = cls()
        book.replace(bids, asks)
        return book

    def replace(self, bids: Iterable, asks: Iterable) -> None:
        self.bids = SortedDict({float(p): float(q) for p, q in bids if float(q) > 0})
        self.asks = SortedDict({float(p): float(q) for p, q in asks if float(q) > 0})

    @staticmethod
    def _apply(side: SortedDict, levels: Iterable) -> None:
        for price, qty in levels:
            price, qty = float(price), float(qty)
            if qty > 0:
                side[price] = qty
            else:
                side.pop(price, None)   # deleting an unknown level is normal on every venue

    def apply(self, bids: Iterable, asks: Iterable) -> None:
        self._apply(self.bids, bids)
        self._apply(self.asks, asks)

    @property
    def best_bid(self) -> float | None:
        return self.bids.peekitem(-1)[0] if self.bids else None

    @property
    def best_ask(self) -> float | None:
        return self.asks.peekitem(0)[0] if self.asks else None

    @property
    def mid(self) -> float | None:
        bid, ask = self.best_bid, self.best_ask
        return None if bid is None or ask is None else (bid + ask) / 2

    def is_crossed(self) -> bool:
        bid, ask = self.best_bid, self.best_ask
        return bid is not None and ask is not None and bid >= ask

    def top(self, n: int) -> tuple[list[tuple[float, float]], list[tuple[float, float]]]:
        """Best n levels per side, best first."""
        bids = [(p, self.bids[p]) for p in self.bids.islice(max(0, len(self.bids) - n), reverse=True)]
        asks = [(p, self.asks[p]) for p in self.asks.islice(0, n)]
        return bids, asks

    def levels(self) -> tuple[list[tuple[float, float]], list[tuple[float, float]]]:
        return self.top(max(len(self.bids), len(self.asks)))

    def __eq__(self, other: object) -> bool:
        return isinstance(other, OrderBook) and self.bids == other.bids and self.asks == other.asks

    def __repr__(self) -> str:
        return f"OrderBook(bid={self.best_bid}, ask={self.best_ask}, levels={len(self.bids)}/{len(self.asks)})"
