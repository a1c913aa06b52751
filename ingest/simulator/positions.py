"""Leveraged positions of one perpetual and the open interest they imply.

Open interest is not an input: it is the sum of positions. Levered longs and shorts are held as
explicit records (size, entry, leverage, liquidation and bankruptcy prices); the rest of the open
interest is held by unlevered accounts (market makers, basis traders) that are never liquidated.
With OI = levered longs + unlevered longs = levered shorts + unlevered shorts, a closing long
reduces OI only as far as unlevered shorts are there to buy back; the remainder passes to the
unlevered side as new longs. That single rule keeps both sides equal whatever mix of
liquidations, panic closes and new openings a scenario produces.

Isolated-margin linear-contract arithmetic: a long with leverage L has bankruptcy price
entry*(1-1/L) and is liquidated at entry*(1-1/L+mmr) (mirror for shorts). Funding payments are
not charged to margins, so liquidation prices stay fixed for a position's life.

The initial population is not uniform around the start price: positions whose liquidation price
sits close to the price are rare in a calm market because ordinary volatility has already taken
them out, and high-leverage positions are mostly small accounts. Without that, any 0.5% wiggle
would liquidate more than the book holds and even the calm scenario would cascade.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from .config import SymbolSpec

POSITION_SIZE_SIGMA = 1.1
ENTRY_DISPERSION = 0.03
SURVIVAL_MIN_DISTANCE = 0.005   # keep-probability 0 at this liquidation distance ...
SURVIVAL_FULL_DISTANCE = 0.04   # ... rising linearly to 1 here
LEVERAGE_SIZE_EXP = 0.7         # notional ~ leverage**-0.7
HIGH_LEVERAGE = 20              # panic openers pick uniformly among leverages from here up


@dataclass
class LiquidatedPositions:
    """Positions taken over by the liquidation engine in one step, most urgent first."""

    is_long: np.ndarray
    lots: np.ndarray
    entry: np.ndarray
    leverage: np.ndarray
    liquidation_price: np.ndarray
    bankruptcy_price: np.ndarray
    opened_ms: np.ndarray

    def __len__(self) -> int:
        return len(self.lots)


class PositionBook:
    _FIELDS = ("is_long", "entry", "leverage", "liq", "bankrupt", "lots", "opened_ms")

    def __init__(self, spec: SymbolSpec, price: float, rng: np.random.Generator, now_ms: int = 0):
        self.spec = spec
        self.now_ms = now_ms    # the owner advances it; new positions are stamped with it
        self._rng = rng
        weights = np.array([w for _, w in spec.leverage_weights], dtype=np.float64)
        self._leverages = np.array([lev for lev, _ in spec.leverage_weights], dtype=np.float64)
        self._leverage_p = weights / weights.sum()
        self._high_leverages = self._leverages[self._leverages >= HIGH_LEVERAGE]
        oi_lots = spec.open_interest / spec.step
        share_long, share_short = spec.levered_long_share, spec.levered_short_share
        self.base_long_share = share_long / (share_long + share_short)

        n = spec.positions
        is_long = rng.random(n) < self.base_long_share
        entry = price * np.exp(rng.normal(0.0, ENTRY_DISPERSION, n))
        leverage = rng.choice(self._leverages, size=n, p=self._leverage_p)
        liq, bankrupt = self._prices(is_long, entry, leverage)
        distance = np.where(is_long, price - liq, liq - price) / price
        survival = np.clip((distance - SURVIVAL_MIN_DISTANCE)
                           / (SURVIVAL_FULL_DISTANCE - SURVIVAL_MIN_DISTANCE), 0.0, 1.0)
        alive = rng.random(n) < survival
        is_long, entry, leverage = is_long[alive], entry[alive], leverage[alive]
        liq, bankrupt = liq[alive], bankrupt[alive]
        raw = rng.lognormal(0.0, POSITION_SIZE_SIGMA, len(entry)) * leverage ** -LEVERAGE_SIZE_EXP
        lots = np.zeros(len(entry), dtype=np.int64)
        for side, share in ((True, share_long), (False, share_short)):
            mask = is_long == side
            lots[mask] = np.maximum(1, np.round(raw[mask] * share * oi_lots / raw[mask].sum()))
        # New positions are drawn from the same size law as the initial ones.
        self._size_scale = float(lots.sum() / raw.sum())
        self.target_positions = len(lots)

        capacity = 2 * len(lots)
        self.is_long = np.zeros(capacity, dtype=bool)
        self.entry = np.zeros(capacity)
        self.leverage = np.ones(capacity)
        self.liq = np.zeros(capacity)
        self.bankrupt = np.zeros(capacity)
        self.lots = np.zeros(capacity, dtype=np.int64)
        self.opened_ms = np.zeros(capacity, dtype=np.int64)
        self.used = 0
        self._append(is_long, entry, leverage, liq, bankrupt, lots)
        self.long_lots = int(lots[is_long].sum())
        self.short_lots = int(lots[~is_long].sum())
        self._count = {True: int(is_long.sum()), False: int((~is_long).sum())}   # live positions per side
        self.oi_lots = int(round(oi_lots))
        self._reindex()

    def _prices(self, is_long: np.ndarray, entry: np.ndarray, leverage: np.ndarray):
        sign = np.where(is_long, -1.0, 1.0)
        bankrupt = entry * (1.0 + sign / leverage)
        liq = entry * (1.0 + sign * (1.0 / leverage - self.spec.maint_margin_rate))
        return liq, bankrupt

    def _reindex(self) -> None:
        """Sort live longs by liquidation price (highest first) and shorts (lowest first).

        The liquidation check then only looks at the head of each order; positions closed
        voluntarily stay in the order with zero size until the next reindex."""
        u = self.used
        live = self.lots[:u] > 0
        for side in (True, False):
            idx = np.flatnonzero(live & (self.is_long[:u] == side))
            key = -self.liq[idx] if side else self.liq[idx]
            order = idx[np.argsort(key, kind="stable")]
            if side:
                self._long_order, self._long_ptr = order, 0
            else:
                self._short_order, self._short_ptr = order, 0

    def _sample_live(self, side: bool, k: int) -> np.ndarray:
        """k distinct live positions of one side, uniformly, by rejection sampling over the used
        slots (cheaper than listing the live ones every time; k is small)."""
        chosen = np.empty(0, dtype=np.int64)
        while len(chosen) < k:
            draw = self._rng.integers(0, self.used, 4 * k + 16)
            hits = draw[(self.lots[draw] > 0) & (self.is_long[draw] == side)]
            chosen = np.unique(np.concatenate((chosen, hits)))
        return self._rng.permutation(chosen)[:k]

    def _close(self, is_long: bool, lots: int) -> None:
        self._count[is_long] -= 1
        if is_long:
            self.oi_lots -= min(lots, self.oi_lots - self.short_lots)
            self.long_lots -= lots
        else:
            self.oi_lots -= min(lots, self.oi_lots - self.long_lots)
            self.short_lots -= lots

    def liquidate(self, mark: float) -> LiquidatedPositions | None:
        """Take over every position whose liquidation price the mark price has crossed,
        most urgent (crossed by the widest margin) first."""
        crossed = []
        order, ptr = self._long_order, self._long_ptr
        if ptr < len(order) and self.liq[order[ptr]] >= mark:
            end = ptr + int(np.searchsorted(-self.liq[order[ptr:]], -mark, side="right"))
            crossed.append(order[ptr:end])
            self._long_ptr = end
        order, ptr = self._short_order, self._short_ptr
        if ptr < len(order) and self.liq[order[ptr]] <= mark:
            end = ptr + int(np.searchsorted(self.liq[order[ptr:]], mark, side="right"))
            crossed.append(order[ptr:end])
            self._short_ptr = end
        if not crossed:
            return None
        idx = np.concatenate(crossed)
        idx = idx[self.lots[idx] > 0]
        if len(idx) == 0:
            return None
        urgency = np.where(self.is_long[idx], self.liq[idx] - mark, mark - self.liq[idx])
        idx = idx[np.argsort(-urgency, kind="stable")]
        batch = LiquidatedPositions(
            is_long=self.is_long[idx].copy(), lots=self.lots[idx].copy(), entry=self.entry[idx].copy(),
            leverage=self.leverage[idx].copy(), liquidation_price=self.liq[idx].copy(),
            bankruptcy_price=self.bankrupt[idx].copy(), opened_ms=self.opened_ms[idx].copy(),
        )
        for side, size in zip(batch.is_long.tolist(), batch.lots.tolist()):
            self._close(side, size)
        self.lots[idx] = 0
        return batch

    def trade_flows(self, price: float, hazard: float, long_close_mult: float, open_mult: float,
                    long_tilt: float, high_leverage_share: float, dt: float) -> None:
        """One interval of voluntary closing and opening of levered positions."""
        rng = self._rng
        for side, mult in ((True, long_close_mult), (False, 1.0)):
            k = int(rng.binomial(self._count[side], min(1.0, hazard * mult * dt)))
            if k:
                chosen = self._sample_live(side, k)
                for size in self.lots[chosen].tolist():
                    self._close(side, size)
                self.lots[chosen] = 0
        n_open = int(rng.poisson(hazard * self.target_positions * open_mult * dt))
        if n_open:
            p_long = min(0.95, max(0.05, self.base_long_share + long_tilt))
            is_long = rng.random(n_open) < p_long
            entry = np.full(n_open, price)
            leverage = rng.choice(self._leverages, size=n_open, p=self._leverage_p)
            high = rng.random(n_open) < high_leverage_share
            if high.any():
                leverage[high] = rng.choice(self._high_leverages, size=int(high.sum()))
            liq, bankrupt = self._prices(is_long, entry, leverage)
            lots = np.maximum(1, np.round(rng.lognormal(0.0, POSITION_SIZE_SIGMA, n_open)
                                          * leverage ** -LEVERAGE_SIZE_EXP * self._size_scale)).astype(np.int64)
            self.long_lots += int(lots[is_long].sum())
            self.short_lots += int(lots[~is_long].sum())
            self.oi_lots += int(lots.sum())
            self._count[True] += int(is_long.sum())
            self._count[False] += n_open - int(is_long.sum())
            first = self._append(is_long, entry, leverage, liq, bankrupt, lots)
            if first is None:
                self._reindex()
            else:
                self._insert_into_order(np.arange(first, first + n_open))

    def liquidation_levels(self, width: float, lo: float, hi: float) -> dict:
        """Open levered positions' entry notional (USD) bucketed by liquidation price into bins
        ``[k·width, (k+1)·width)`` within ``[lo, hi)``, per side, plus what lies outside."""
        live = self.lots[:self.used] > 0
        is_long = self.is_long[:self.used][live]
        liq = self.liq[:self.used][live]
        usd = self.lots[:self.used][live] * self.spec.step * self.entry[:self.used][live]
        inside = (liq >= lo) & (liq < hi)
        k = np.floor(liq[inside] / width).astype(np.int64)
        keys, inverse = np.unique(k, return_inverse=True)
        sides = [np.bincount(inverse, weights=usd[inside] * (is_long[inside] == side), minlength=keys.size)
                 for side in (True, False)]
        return {"bin_lo": (keys * width).tolist(), "long_usd": sides[0].tolist(), "short_usd": sides[1].tolist(),
                "outside_long_usd": float(usd[~inside & is_long].sum()),
                "outside_short_usd": float(usd[~inside & ~is_long].sum())}

    def _insert_into_order(self, new: np.ndarray) -> None:
        """Merge freshly appended positions into the sorted liquidation orders (never ahead of
        the already-processed head, so they are always checked)."""
        for side in (True, False):
            idx = new[self.is_long[new] == side]
            if len(idx) == 0:
                continue
            order = self._long_order if side else self._short_order
            ptr = self._long_ptr if side else self._short_ptr
            sign = -1.0 if side else 1.0
            idx = idx[np.argsort(sign * self.liq[idx], kind="stable")]
            # Only the unprocessed tail is kept sorted (a position inserted at the head may be
            # more urgent than ones already processed), so search the tail alone: a search over
            # the whole order could place a position behind less urgent ones, where the
            # liquidation check, which looks at the head, would not reach it.
            pos = ptr + np.searchsorted(sign * self.liq[order[ptr:]], sign * self.liq[idx], side="right")
            order = np.insert(order, pos, idx)
            if side:
                self._long_order = order
            else:
                self._short_order = order

    def _append(self, is_long, entry, leverage, liq, bankrupt, lots) -> int | None:
        """Store new positions; returns their first slot, or None if storage was compacted
        (slots moved, so the liquidation orders must be rebuilt)."""
        k = len(lots)
        compacted = False
        if self.used + k > len(self.lots):
            keep = np.flatnonzero(self.lots[:self.used] > 0)
            capacity = max(len(self.lots), 2 * (len(keep) + k))
            for name in self._FIELDS:
                old = getattr(self, name)
                grown = np.zeros(capacity, dtype=old.dtype)
                grown[:len(keep)] = old[keep]
                setattr(self, name, grown)
            self.used = len(keep)
            compacted = True
        first = self.used
        sl = slice(first, first + k)
        self.is_long[sl], self.entry[sl], self.leverage[sl] = is_long, entry, leverage
        self.liq[sl], self.bankrupt[sl], self.lots[sl] = liq, bankrupt, lots
        self.opened_ms[sl] = self.now_ms
        self.used += k
        return None if compacted else first
