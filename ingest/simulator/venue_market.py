"""Each simulated venue's own market on the one shared price path.

The market model simulates one book, one tape, one set of positions per symbol. A venue is a
deterministic function of that market, so every venue moves with the same cascade while having
its own numbers and the ground truth of each stays exact:

* **book**: every level sits ``offset`` ticks from the shared level (a standing dislocation of
  ``offset_bp``) and holds ``share`` of its size, times a fixed per-level factor in
  ``1 ± LEVEL_NOISE`` (drawn from a hash of venue, symbol and tick, so a level keeps its factor and
  a delta changes exactly the levels the shared book changed). A resting level keeps at least one lot.
* **tape, liquidations and open interest**: ``share`` of the shared size (a fill keeps at least
  one lot), prices moved by the same offset.
* **basis**: the venue's mark is the shared mark moved by the offset plus per-second noise of
  ``premium_noise_bp`` (standard deviation); its index differs by ``index_bias_bp`` (another set
  of constituent exchanges), so mark/index premiums differ between venues.
* **lag**: price discovery happens on the reference venue; a venue with ``lag_ms`` follows it that
  long after. Its whole market (book, tape, mark, liquidation prices) is displaced by where the
  shared mid was ``lag_ms`` ago against where it is now (:class:`PriceLag`), so in a crash it
  crosses every threshold ``lag_ms`` later and stands dislocated meanwhile. The displacement moves
  in whole steps of ``LAG_QUANTUM_BP`` and only once the target is a step away, because every
  change shifts the venue's entire book: calm markets barely displace it, a cascade does.
  Its index is not lagged (other exchanges' prices).

Binance USD-M, the feed's own format, is the reference (identity, no lag). The parameters are written
into the ground truth's header (``venue_markets``) and the lagged venues' displacements into every
``second`` and ``book`` record (``venue_offsets``, ticks), so a :class:`VenueMarket` rebuilds a
venue's view of any true book for tests and scoring.
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from decimal import Decimal

import numpy as np

from .config import SymbolSpec
from .wire import SymbolFormat

LEVEL_NOISE = 0.3
LAG_QUANTUM_BP = 5.0


@dataclass(frozen=True)
class VenueMarketParams:
    share: float = 1.0            # of resting liquidity, traded size, liquidations and open interest
    offset_bp: float = 0.0        # where its book and trades sit against the shared market
    index_bias_bp: float = 0.0    # its index against the shared index
    premium_noise_bp: float = 0.0  # per-second noise on its mark (standard deviation)
    lag_ms: int = 0               # how long its prices trail the shared market's

    def as_dict(self) -> dict:
        return asdict(self)


# Shares are relative to Binance USD-M's order-book depth (order-of-magnitude 2025 figures). The lag is
# the scenario's, not a measurement of the real venue, and only Hyperliquid's: every displacement step
# rewrites a whole book view, which costs nothing on Hyperliquid (whole 20-level books every 5 s) but
# quadrupled the bytes of OKX's 400-level delta stream (62 to 252 MB for the demo's hour) and doubled
# Bybit's 50-level one when they lagged too.
VENUE_MARKETS: dict[str, VenueMarketParams] = {
    "binance-usdm": VenueMarketParams(),
    "binance-coinm": VenueMarketParams(share=0.25, offset_bp=-1.5, index_bias_bp=0.5, premium_noise_bp=0.4),
    "okx-swap": VenueMarketParams(share=0.55, offset_bp=2.0, index_bias_bp=-0.8, premium_noise_bp=0.6),
    "bybit-linear": VenueMarketParams(share=0.7, offset_bp=-1.0, index_bias_bp=0.3, premium_noise_bp=0.5),
    "hyperliquid": VenueMarketParams(share=0.35, offset_bp=3.0, index_bias_bp=-1.0, premium_noise_bp=1.5,
                                     lag_ms=4000),
    # GMX trades at its oracle: no book offset; its oracle is its own median of CEX prices
    "gmx-v2": VenueMarketParams(share=0.1, index_bias_bp=0.5),
    # dYdX has no mark and no index of its own: its oracle is the index; no premium noise
    "dydx-v4": VenueMarketParams(share=0.15, offset_bp=4.0),
}

_MASK = np.uint64(0xFFFFFFFFFFFFFFFF)


def _mix(x: np.ndarray) -> np.ndarray:
    """splitmix64's finalizer: a well-spread uint64 hash of each element."""
    with np.errstate(over="ignore"):
        x = (x ^ (x >> np.uint64(30))) * np.uint64(0xBF58476D1CE4E5B9)
        x = (x ^ (x >> np.uint64(27))) * np.uint64(0x94D049BB133111EB)
        return (x ^ (x >> np.uint64(31))) & _MASK


class VenueMarket:
    """One venue's view of the shared market (see the module docstring)."""

    def __init__(self, venue: str, seed: int, specs: list[SymbolSpec],
                 params: VenueMarketParams | None = None):
        self.venue = venue
        self.params = params if params is not None else VENUE_MARKETS.get(venue, VenueMarketParams())
        self.identity = self.params == VenueMarketParams()
        self._formats = [SymbolFormat(spec) for spec in specs]
        self._ticks = [Decimal(spec.tick_size) for spec in specs]
        self._steps = [Decimal(spec.step_size) for spec in specs]
        self.static_offset = [int(round(self.params.offset_bp * 1e-4 * spec.price / float(spec.tick_size)))
                              for spec in specs]
        self.offset = list(self.static_offset)    # in ticks: the standing offset plus the lag's displacement
        digest = hashlib.blake2b(f"{venue}|{seed}".encode(), digest_size=8).digest()
        self._salt = int.from_bytes(digest, "little")

    def displace(self, s: int, ticks: int) -> None:
        """Set the lag's displacement of symbol ``s`` (ticks; see :class:`PriceLag`)."""
        self.offset[s] = self.static_offset[s] + ticks

    # --- book ------------------------------------------------------------------------------

    def level_lots(self, s: int, ticks: np.ndarray, lots: np.ndarray) -> np.ndarray:
        """The venue's size (lots) of the shared levels at ``ticks`` holding ``lots``."""
        lots = np.asarray(lots, dtype=np.int64)
        if self.identity:
            return lots
        keys = np.asarray(ticks, dtype=np.int64).astype(np.uint64) ^ np.uint64((self._salt + s) & 0xFFFFFFFFFFFFFFFF)
        uniform = (_mix(keys) >> np.uint64(11)).astype(np.float64) / float(1 << 53)
        scaled = np.floor(lots * self.params.share * (1.0 + LEVEL_NOISE * (2.0 * uniform - 1.0)) + 0.5)
        return np.where(lots > 0, np.maximum(scaled, 1), 0).astype(np.int64)

    def level_ticks(self, s: int, ticks):
        return ticks + self.offset[s]

    def book(self, s: int, levels: list[list[str]]) -> list[list[str]]:
        """A true book side ``[[price, qty], ...]`` (shared market, base units) as the venue's."""
        if self.identity or not levels:
            return levels
        tick, step = self._ticks[s], self._steps[s]
        ticks = np.array([int(Decimal(p) / tick) for p, _ in levels], dtype=np.int64)
        lots = np.array([int(Decimal(q) / step) for _, q in levels], dtype=np.int64)
        venue_lots = self.level_lots(s, ticks, lots)
        return [[self.price_of_tick(s, int(t) + self.offset[s]), self.qty_of_lots(s, int(q))]
                for t, q in zip(ticks, venue_lots)]

    # --- tape and positions ----------------------------------------------------------------

    def fill_lots(self, lots: int) -> int:
        """One trade's (or liquidation's, or open interest's) size in the venue's lots."""
        if self.identity or lots <= 0:
            return lots
        return max(1, int(lots * self.params.share + 0.5))

    def split_lots(self, lots: int, count: int) -> list[int]:
        """The venue's sizes of the ``count`` trades a fill of ``lots`` was split into (the
        market's split: the first ``lots % count`` trades one lot larger)."""
        base, extra = divmod(lots, count)
        return [self.fill_lots(base + (1 if i < extra else 0)) for i in range(count)]

    def fill_lots_of_trades(self, lots: int, count: int) -> int:
        """A fill's size in the venue's lots as its tape has it: the sum of its ``count`` trades."""
        return sum(self.split_lots(lots, count)) if count > 1 else self.fill_lots(lots)

    def qty(self, s: int, qty: str, count: int = 1) -> str:
        """A size (base units, decimal string) as the venue's: one trade's, a liquidation's or the
        open interest (``count`` 1), or an aggregated fill's of ``count`` trades (their sum)."""
        if self.identity:
            return qty
        lots = int(Decimal(qty) / self._steps[s])
        return self.qty_of_lots(s, self.fill_lots_of_trades(lots, count))

    def price(self, s: int, price: str) -> str:
        """A shared price (decimal string, on or off the tick grid) moved by the venue's offset."""
        if self.identity or not self.offset[s]:
            return price
        return format(Decimal(price) + self.offset[s] * self._ticks[s], "f")

    def price_of_tick(self, s: int, tick: int) -> str:
        return self._formats[s].price(tick)

    def qty_of_lots(self, s: int, lots: int) -> str:
        return self._formats[s].qty(lots)

    # --- basis -----------------------------------------------------------------------------

    def mark(self, s: int, mark: float, ts_ms: int) -> float:
        if self.identity:
            return mark
        second = ts_ms // 1000
        key = np.array([(second * 1_000_003 + s) & 0x7FFFFFFFFFFFFFFF], dtype=np.uint64) ^ np.uint64(self._salt)
        u1, u2 = ((_mix(key + np.uint64(k)) >> np.uint64(11)).astype(np.float64)[0] / float(1 << 53) for k in (1, 2))
        normal = float(np.sqrt(-2.0 * np.log(max(u1, 1e-300))) * np.cos(2.0 * np.pi * u2))   # Box-Muller
        return mark + self.offset[s] * float(self._ticks[s]) + mark * self.params.premium_noise_bp * 1e-4 * normal

    def index(self, s: int, index: float) -> float:
        return index * (1.0 + self.params.index_bias_bp * 1e-4)


class PriceLag:
    """The displacement (ticks per symbol) of a venue whose prices trail the shared market by
    ``lag_ms`` (see the module docstring): each step, the target is the shared mid ``lag_ms`` ago
    minus the mid now; the displacement jumps to the target rounded to whole ``LAG_QUANTUM_BP``
    steps once the target is a full step away from it, and stays put otherwise."""

    def __init__(self, lag_ms: int, step_ms: int, specs: Sequence[SymbolSpec]):
        self.back = max(1, round(lag_ms / step_ms))         # steps
        self.quantum = [max(1, round(LAG_QUANTUM_BP * 1e-4 * spec.price / float(spec.tick_size))) for spec in specs]
        self._per_tick = [1.0 / float(spec.tick_size) for spec in specs]
        self.ticks = [0] * len(specs)

    def update(self, mids: Sequence[Sequence[float]]) -> list[int]:
        """Advance one step given the shared mids of the latest steps (oldest first, the current
        one last); return the symbols whose displacement changed."""
        if len(mids) <= self.back:
            return []
        then, now = mids[-1 - self.back], mids[-1]
        changed = []
        for s, q in enumerate(self.quantum):
            target = (then[s] - now[s]) * self._per_tick[s]
            if abs(target - self.ticks[s]) >= q:
                self.ticks[s] = int(round(target / q)) * q
                changed.append(s)
        return changed
