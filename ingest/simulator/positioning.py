"""The positioning statistics venues publish per period, from the market model's ground truth.

Venues count who is long among their accounts and how much takers bought and sold in each
5-minute period (``ingest.records.LongShortRatio``, ``TakerVolume``). The model knows every
levered position (``PositionBook``), each held by an account of its own, so the truth is exact:

* the long share of all accounts: live levered positions that are long, by count;
* the top traders' long share, by count (accounts) and by size (positions), for each cut a venue
  uses (``TOP_CUTS``: the top fraction of accounts ranked by margin, notional / leverage, or by
  position value, notional);
* taker buy and sell lots per period: every aggregated fill by its taker side and its time.

The statistics of a period are taken when it closes (the positions as they stand at its end).
The open period is served too, as it stands, as venues do: clients must not take it as final.
Unlevered accounts (market makers, basis traders) are not in the counts: the model holds them
only as a total. Every venue's counts are the shared market's: a venue's share scales how many
positions it holds, not their mix; its taker volume is its share of the market's
(``VenueMarket.fill_lots`` of the period's total), or, for a venue that registers how it sizes a
fill (``track_venue_sizes``), the sum of its own trades' sizes, as a venue computes it from its tape.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np

from .positions import PositionBook

PERIOD_MS = 300_000
PERIODS_KEPT = 500                       # the largest page any venue serves
#: Top-trader cuts: (fraction of accounts, ranked by "margin" or "value").
TOP_CUTS: tuple[tuple[float, str], ...] = ((0.20, "margin"), (0.05, "value"))


@dataclass(frozen=True)
class PeriodPositioning:
    start_ms: int
    closed: bool
    long_accounts: float                 # share of all accounts that are long
    top: dict                            # cut -> (share of the top accounts long, share of their size long)
    taker_buy_lots: int                  # market lots bought by takers in the period
    taker_sell_lots: int
    venue_taker_lots: dict = field(default_factory=dict)   # venue -> (buy, sell) in its own lots

    def truth(self, symbol: str) -> dict:
        return {"type": "positioning", "ts": self.start_ms, "symbol": symbol, "long_accounts": self.long_accounts,
                "top": {f"{fraction}/{by}": list(shares) for (fraction, by), shares in self.top.items()},
                "taker_buy_lots": self.taker_buy_lots, "taker_sell_lots": self.taker_sell_lots,
                "venue_taker_lots": {venue: list(lots) for venue, lots in self.venue_taker_lots.items()}}


def long_shares(book: PositionBook) -> tuple[float, dict]:
    """(long share of all accounts, {cut: (long share of the top accounts, long share of their size)})."""
    live = book.lots[:book.used] > 0
    is_long = book.is_long[:book.used][live]
    lots = book.lots[:book.used][live].astype(np.float64)
    notional = lots * book.entry[:book.used][live]
    rank = {"margin": notional / book.leverage[:book.used][live], "value": notional}
    top = {}
    for fraction, by in TOP_CUTS:
        chosen = np.argsort(-rank[by], kind="stable")[:max(1, math.ceil(fraction * len(lots)))]
        top[(fraction, by)] = (float(is_long[chosen].mean()),
                               float(lots[chosen][is_long[chosen]].sum() / lots[chosen].sum()))
    return float(is_long.mean()), top


class PositioningStats:
    """Per symbol: the closed periods' statistics, newest last, and the open period's taker lots."""

    def __init__(self, books: list[PositionBook], start_ms: int):
        self._books = books
        self._start_ms = start_ms
        self.closed: list[list[PeriodPositioning]] = [[] for _ in books]
        self._taker: list[dict[int, list[int]]] = [{} for _ in books]   # period start -> [buy, sell] lots
        # venue -> (its size of a fill, per symbol: period start -> [buy, sell] in its lots)
        self._venue_taker: dict[str, tuple[Callable[[int, int], int], list[dict[int, list[int]]]]] = {}

    def track_venue_sizes(self, venue: str, size_of_fill: Callable[[int, int], int]) -> None:
        """Sum ``venue``'s taker lots per period as its tape has them: ``size_of_fill(lots, trades)`` is
        the venue's size of a market fill of ``lots`` split into ``trades`` trades (a venue rounds each
        trade to its own lots, and its published volume is the sum of those)."""
        self._venue_taker[venue] = (size_of_fill, [{} for _ in self._books])

    def add_fill(self, s: int, ts_ms: int, lots: int, taker_buys: bool, trades: int = 1) -> None:
        period, side = ts_ms - ts_ms % PERIOD_MS, 0 if taker_buys else 1
        self._taker[s].setdefault(period, [0, 0])[side] += lots
        for size_of, periods in self._venue_taker.values():
            periods[s].setdefault(period, [0, 0])[side] += size_of(lots, trades)

    def venue_taker_lots(self, venue: str, s: int, start_ms: int) -> tuple[int, int]:
        """(buy, sell) lots of ``venue``'s own trades in the period starting at ``start_ms``."""
        buy, sell = self._venue_taker[venue][1][s].get(start_ms, (0, 0))
        return buy, sell

    def close_period(self, end_ms: int) -> list[PeriodPositioning]:
        """At a period boundary: the period that just ended, per symbol (none for a period the
        market did not run from its start)."""
        start = end_ms - PERIOD_MS
        out = []
        for s, book in enumerate(self._books):
            buy, sell = self._taker[s].pop(start, (0, 0))
            for stale in [p for p in self._taker[s] if p < start]:
                del self._taker[s][stale]
            for _, periods in self._venue_taker.values():
                for stale in [p for p in periods[s] if p <= start - PERIODS_KEPT * PERIOD_MS]:
                    del periods[s][stale]
            if start < self._start_ms:
                out.append(None)
                continue
            period = PeriodPositioning(start, True, *long_shares(book), buy, sell,
                                       {venue: self.venue_taker_lots(venue, s, start) for venue in self._venue_taker})
            self.closed[s].append(period)
            del self.closed[s][:-PERIODS_KEPT]
            out.append(period)
        return out

    def periods(self, s: int, now_ms: int, limit: int) -> list[PeriodPositioning]:
        """The last ``limit`` periods, oldest first, the open one (as it stands) last."""
        start = now_ms - now_ms % PERIOD_MS
        periods = list(self.closed[s])
        if start >= self._start_ms:
            buy, sell = self._taker[s].get(start, (0, 0))
            periods.append(PeriodPositioning(start, False, *long_shares(self._books[s]), buy, sell))
        return periods[-limit:] if limit > 0 else []


def share(value: float) -> str:
    """A share or ratio as the venues print them: four decimals."""
    return f"{value:.4f}"


def ratio(long: float, short: float) -> str:
    """long / short; with no short at all "inf", which a client must refuse, as from a real venue."""
    return share(long / short if short > 0 else math.inf)
