"""An L2 order book: price levels per side, with the touch always at hand.

Used by ingest (integrity: crossed-book detection after every delta while syncing) and by
analytics and tests (rebuilding books from snapshots and deltas). Levels live in plain dicts
(a delta touches each level in well under a microsecond); the best bid and ask come from
heaps whose stale entries are dropped lazily when they reach the top, so a fast-moving market
never pays for keeping a whole ladder sorted. A sorted ladder is built only when asked for
(``levels``, ``top``, ``within``), e.g. once a second for a periodic snapshot.

Prices are floats: every venue quotes at most ~15 significant digits, which a double keys
exactly.
"""

from __future__ import annotations

import heapq
from collections.abc import Iterable


class _Side:
    __slots__ = ("levels", "heap", "sign")

    def __init__(self, sign: float):
        self.levels: dict[float, float] = {}
        self.heap: list[float] = []      # sign * price; stale entries removed when they surface
        self.sign = sign                 # -1 for bids (max-heap via negation), +1 for asks

    def best(self) -> float | None:
        heap, levels = self.heap, self.levels
        while heap and self.sign * heap[0] not in levels:
            heapq.heappop(heap)
        if len(heap) > 4 * len(levels) + 64:   # churn left mostly stale entries: rebuild
            self.heap = [self.sign * p for p in levels]
            heapq.heapify(self.heap)
        return self.sign * self.heap[0] if self.heap else None

    def replace(self, levels: Iterable) -> None:
        self.levels = {float(p): float(q) for p, q in levels if float(q) > 0}
        self.heap = [self.sign * p for p in self.levels]
        heapq.heapify(self.heap)

    def sorted_best_first(self) -> list[tuple[float, float]]:
        prices = sorted(self.levels, reverse=self.sign < 0)
        return [(p, self.levels[p]) for p in prices]


class OrderBook:
    __slots__ = ("_bids", "_asks")

    def __init__(self) -> None:
        self._bids = _Side(-1.0)
        self._asks = _Side(1.0)

    @classmethod
    def from_levels(cls, bids: Iterable, asks: Iterable) -> "OrderBook":
        book = cls()
        book.replace(bids, asks)
        return book

    @property
    def bids(self) -> dict[float, float]:
        return self._bids.levels

    @property
    def asks(self) -> dict[float, float]:
        return self._asks.levels

    def replace(self, bids: Iterable, asks: Iterable) -> None:
        self._bids.replace(bids)
        self._asks.replace(asks)

    def apply(self, bids: Iterable, asks: Iterable) -> None:
        # _Side.set inlined: a delta of ~35 levels is the ingest path's most frequent work, and a
        # method call per level cost more than the level update itself.
        push = heapq.heappush
        for side, levels in ((self._bids, bids), (self._asks, asks)):
            book, heap, sign = side.levels, side.heap, side.sign
            for price, qty in levels:
                price, qty = float(price), float(qty)
                if qty > 0:
                    if price not in book:
                        push(heap, sign * price)
                    book[price] = qty
                else:
                    book.pop(price, None)   # deleting an unknown level is normal on every venue

    @property
    def best_bid(self) -> float | None:
        return self._bids.best()

    @property
    def best_ask(self) -> float | None:
        return self._asks.best()

    @property
    def mid(self) -> float | None:
        bid, ask = self.best_bid, self.best_ask
        return None if bid is None or ask is None else (bid + ask) / 2

    def is_crossed(self) -> bool:
        bid, ask = self.best_bid, self.best_ask
        return bid is not None and ask is not None and bid >= ask

    def levels(self) -> tuple[list[tuple[float, float]], list[tuple[float, float]]]:
        """All levels per side, best first."""
        return self._bids.sorted_best_first(), self._asks.sorted_best_first()

    def top(self, n: int) -> tuple[list[tuple[float, float]], list[tuple[float, float]]]:
        """Best n levels per side, best first."""
        bids, asks = self.levels()
        return bids[:n], asks[:n]

    def within(self, band: float) -> tuple[list[tuple[float, float]], list[tuple[float, float]]]:
        """Levels within ``band`` (0.10 = 10 %) of mid per side, best first, bounds inclusive.

        A hair wider than the band, so levels exactly on the edge survive float rounding;
        consumers apply the exact inclusive bound themselves.
        """
        mid = self.mid
        if mid is None:
            return [], []
        low, high = mid * (1 - band - 1e-9), mid * (1 + band + 1e-9)
        bids = sorted((p for p in self._bids.levels if p >= low), reverse=True)
        asks = sorted(p for p in self._asks.levels if p <= high)
        return [(p, self.bids[p]) for p in bids], [(p, self.asks[p]) for p in asks]

    def __eq__(self, other: object) -> bool:
        return isinstance(other, OrderBook) and self.bids == other.bids and self.asks == other.asks

    def __repr__(self) -> str:
        return f"OrderBook(bid={self.best_bid}, ask={self.best_ask}, levels={len(self.bids)}/{len(self.asks)})"
