"""Market model: an order book per symbol whose price comes from who trades against whom.

Why this shape: downstream analytics (2% depth, liquidation cascades, OI changes, book sync)
must be tested against a market whose statistics *emerge* from mechanics, not against noise.
So the model has the causal chain of a real perp venue, stepped every 100 ms:

* a spot **index** per symbol: correlated diffusion (alts have higher beta) plus scenario news;
* **market makers** quote a ladder around a centre = index * exp(premium). The ladder is dense
  at the touch and geometric further out, so +-13% of mid is covered by ~140 levels a side.
  Quotes standing above target are cancelled quickly, missing ones refilled slowly; targets
  shrink near mid (and quotes step back from mid) when realised volatility rises or the market
  makers' hedging venue is disrupted: 2% depth collapses while the 5-10% bands hold;
* **takers** send market orders that sweep the book; market makers re-centre on part of the
  sweep (the premium), arbitrage pulls premium and index back together, fast in calm and slowly
  when hedging is disrupted;
* **leveraged traders** (positions.PositionBook) are liquidated when the **mark price**
  (Binance's median of index+funding basis, index+EMA basis and last price) crosses their
  liquidation price. The liquidation engine sends an IOC order limited at the bankruptcy price
  into the same book; what the book cannot absorb goes to the insurance fund. Sweeps move the
  centre, the mark follows, more positions cross: the cascade.

**Causal truth of the cascade** (what endogeneity estimators are scored against): every
liquidation's fills move the mid, and the market makers keep ``IMPACT_RETENTION`` of the move in
their premium, which then relaxes (a share ``ARB_INDEX_SHARE`` of it passing into the index for
good). The model keeps each liquidation's log-price contribution through that relaxation, so at any
step the centre carries a known impact of earlier liquidations in each direction
(``liquidation_impact``: forced sells push it down, forced buys up). A long is *triggered by
earlier liquidations* when the mark crossed its liquidation price but the mark without the downward
impact (``mark · exp(−down)``) has not reached that price at any time so far in the run (its running
low since the position was opened; a short mirrors this with the upward impact and the running
high): but for the earlier liquidations pushing its way it would still be open. Its ``parent_id`` is the earlier liquidation
contributing most to the move in the crossing direction at that moment; None when not triggered.
This is a first-order counterfactual: it removes the impact from the price but not the other flows
the impact changed (takers leaning on the premium, the mark's EMA basis, positions opened at the
depressed price). A step's mid move is shared among the same-direction liquidation orders of that
step by filled lots over all filled lots in that direction (taker orders take their share, which is
not liquidation impact); a liquidation filled against the net move contributes nothing.

Book state lives in one dense integer array (lots) over absolute tick indices of every symbol
and side, so a price level keeps its identity while the ladder moves and every change is known
exactly: the depth stream's diffs and update ids are derived from it, never approximated.

Performance: the per-step work is a fixed handful of numpy operations on a (2*symbols, ~140)
ladder; random draws for market-maker decisions are made once per simulated second; sweeps,
which touch few levels, run in plain Python.
"""

from __future__ import annotations

import bisect
import math
from dataclasses import dataclass
from typing import NamedTuple

import numpy as np

from .config import SYMBOL_SPECS, SimConfig, SymbolSpec
from .positions import PositionBook
from .scenario import Drivers, build_scenario

SECONDS_PER_YEAR = 365.0 * 86400.0

TOUCH_LEVELS = 8
# Ladder tiers beyond the touch: (outer edge in bps, level spacing in bps).
LADDER_TIERS = ((2.0, 0.2), (10.0, 0.5), (50.0, 2.0), (200.0, 5.0), (1300.0, 20.0))
MIN_COVERAGE = 0.11
DEPTH2_SHAPE_INTEGRAL = 195.0   # integral over 0..200 bps of the density shape below

# Market-maker behaviour: probabilities per 100 ms, per tier (touch first); a coarser model step
# compounds them (``_per_step``).
CANCEL_PROB = 0.35
FILL_PROB = (0.15, 0.06, 0.04, 0.02, 0.01, 0.006)
CHURN_PROB = (0.04, 0.03, 0.02, 0.01, 0.004, 0.002)
QUOTE_NOISE = 0.35
RANDOM_TABLE_SIZE = 1 << 20
DISRUPTED_LIQUIDITY = 0.20      # share of near-mid liquidity left when the hedging venue is down
DISRUPTED_BACKOFF_BPS = 15.0    # quotes step back from mid by this much when disrupted
VOL_THINNING = 0.25             # liquidity ~ 1/(1 + k*(rv_ratio-2)) above twice calm volatility

# Price formation.
COMMON_FACTOR_VOL = 0.40        # annualised vol of the crypto-wide factor (BTC beta = 1)
IMPACT_RETENTION = 0.55         # share of a sweep's mid move kept by the market makers' centre
ARB_TAU_S = 15.0                # premium relaxation time under normal arbitrage
ARB_INDEX_SHARE = 0.35          # share of premium convergence done by the index moving
PREMIUM_MEAN = 0.00005
PREMIUM_NOISE_BPS = 0.8
MARK_BASIS_TAU_S = 10.0
RV_HALF_LIFE_S = 60.0
TAKER_SIZE_SIGMA = 1.4

POSITION_CLOSE_HAZARD = 1.0 / (8 * 3600.0)
POSITION_FLOW_EVERY_S = 5       # voluntary opens/closes are batched over this many seconds
INTEREST_RATE = 0.0001
LIQUIDATION_DELAY_MS = 5
SWEEP_WINDOW = 16               # ladder levels converted up front for a sweep
NO_LIMIT = None


@dataclass
class Liquidation:
    """One forced order: the taken-over position and how the book filled it."""

    ts_ms: int
    symbol_index: int
    is_long: bool
    lots: int
    bankruptcy_price: float
    liquidation_price: float
    entry_price: float
    leverage: float
    mark_price: float
    filled_lots: int = 0
    avg_price: float = 0.0
    last_fill_lots: int = 0
    last_fill_ms: int = 0
    liq_id: int = 0                 # sequential over the run, across symbols
    opened_ms: int = 0              # when the position was opened (the run's start for the initial ones)
    parent_id: int | None = None    # the earlier liquidation whose price impact triggered it


class Fill(NamedTuple):
    """One aggregated trade: a taker (or liquidation) order against one price level."""

    symbol_index: int
    ts_ms: int
    tick: int
    lots: int
    buyer_is_maker: bool
    agg_id: int
    first_trade_id: int
    last_trade_id: int
    liquidation: Liquidation | None


@dataclass
class StepResult:
    t0_ms: int
    t1_ms: int
    changed_rows: np.ndarray        # ladder row per changed level (row < n: bids of symbol row)
    changed_ticks: np.ndarray       # tick index per changed level
    update_ids: list[tuple[int, int] | None]
    best_changed: list[bool]
    fills: list[Fill]
    liquidations: list[Liquidation]
    fundings: list[tuple[int, float, float]]   # (symbol index, settled rate, mark)


class MarketModel:
    def __init__(self, config: SimConfig):
        cfg = config.resolved()
        self.config = cfg
        self.specs: list[SymbolSpec] = [SYMBOL_SPECS[s] for s in cfg.symbols]
        specs = self.specs
        n = len(specs)
        self.n = n
        seeds = np.random.SeedSequence(cfg.seed).spawn(4 + n)
        self._rng_price, self._rng_mm, self._rng_taker = (np.random.Generator(np.random.PCG64(s)) for s in seeds[:3])
        self.scenario = build_scenario(cfg, specs)
        self.start_ms = int(cfg.start_ms)
        self.end_ms = cfg.end_ms
        self.step_ms = cfg.step_ms
        self._dt = cfg.step_ms / 1000.0
        self._steps_per_second = 1000 // cfg.step_ms
        self.now_ms = self.start_ms

        self.tick = np.array([s.tick for s in specs])
        self.step = np.array([s.step for s in specs])
        self.tick_list = self.tick.tolist()
        p0 = np.array([s.price for s in specs])
        # Per-symbol scalar state is kept in plain lists: with a handful of symbols, Python float
        # arithmetic is several times faster than numpy operations on 3-element arrays.
        self.index = p0.tolist()
        self.premium = [PREMIUM_MEAN] * n
        self.basis_ema = [PREMIUM_MEAN] * n
        self._index_ema = p0.tolist()

        sigma_total = [s.annual_vol / math.sqrt(SECONDS_PER_YEAR) for s in specs]
        self._sigma_common = [s.beta * COMMON_FACTOR_VOL / math.sqrt(SECONDS_PER_YEAR) for s in specs]
        self._sigma_idio = [math.sqrt(max(t ** 2 - c ** 2, (0.1 * t) ** 2))
                            for t, c in zip(sigma_total, self._sigma_common)]
        self._sigma_calm_1s = np.array(sigma_total)
        self._rv_var = self._sigma_calm_1s ** 2
        self._arb_strength = 1.0

        self.positions = [PositionBook(spec, price, np.random.Generator(np.random.PCG64(seed)), self.start_ms)
                          for spec, price, seed in zip(specs, p0.tolist(), seeds[4:], strict=True)]
        self._maker_lots = [s.maker_order_usd / (s.price * s.step) for s in specs]
        self._taker_median_lots = np.array([s.taker_median_usd for s in specs]) / (p0 * self.step)
        self._taker_rate = np.array([s.taker_rate for s in specs])
        self.next_agg_id = [1_000_000_000 * (3 - i % 3) for i in range(n)]
        self.next_trade_id = [3 * a for a in self.next_agg_id]
        self._update_id = 7_300_000_000_000
        self.last_update_id = [0] * n
        self.last_change_ms = [self.start_ms] * n

        self._funding_interval_ms = [s.funding_interval_hours * 3_600_000 for s in specs]
        self.next_funding_ms = [(self.start_ms // iv + 1) * iv for iv in self._funding_interval_ms]
        self._funding_caps = [s.funding_cap for s in specs]
        self._premium_sum = [0.0] * n
        self._premium_count = 0
        self.funding_rate = [INTEREST_RATE] * n
        self.liquidity = np.ones(n)
        self.backoff_bps = np.zeros(n)
        self.next_liquidation_id = 1
        # Causal bookkeeping (module docstring): per symbol and direction (index 0 down, 1 up) the
        # impact of earlier liquidations still in the premium and already passed into the index
        # (log), the mark without the downward (upward) impact as a running extreme since any time
        # (RunningExtreme), and per contribution the liquidation id, its log impact when made and
        # the premium's cumulative log-decay at that time (to rank contributors when needed).
        self._impact_premium = [[0.0, 0.0] for _ in range(n)]
        self._impact_index = [[0.0, 0.0] for _ in range(n)]
        self._counterfactual_low = [RunningExtreme(lowest=True) for _ in range(n)]
        self._counterfactual_high = [RunningExtreme(lowest=False) for _ in range(n)]
        self._log_premium_decay = 0.0
        self._impact_ids: list[list[int]] = [[] for _ in range(n)]
        self._impact_log: list[list[float]] = [[] for _ in range(n)]
        self._impact_decay_at: list[list[float]] = [[] for _ in range(n)]

        self._build_ladder(p0)
        self._noise_table = np.exp(QUOTE_NOISE * self._rng_mm.standard_normal(RANDOM_TABLE_SIZE))
        self._uniform_table = self._rng_mm.random(RANDOM_TABLE_SIZE)
        self._refresh_targets()
        self._drivers = self.scenario.drivers(0.0)
        self._draw_second_block(self._drivers)
        self._place_initial_book()

    # ------------------------------------------------------------------ ladder geometry
    def _build_ladder(self, p0: np.ndarray) -> None:
        n = self.n
        counts = [TOUCH_LEVELS]
        spacing_bps: list[float | None] = [None]
        inner = 0.0
        for outer, spacing in LADDER_TIERS:
            counts.append(int(math.ceil((outer - inner) / spacing)))
            spacing_bps.append(spacing)
            inner = outer
        tier = np.repeat(np.arange(len(counts)), counts)
        kin = np.concatenate([np.arange(c) for c in counts]).astype(np.float64)
        start = np.zeros((n, len(counts)))
        spacing = np.ones((n, len(counts)))
        for s in range(n):
            ticks_per_bp = p0[s] / 1e4 / self.tick[s]
            a = 0.5
            for t, count in enumerate(counts):
                sp = 1 if spacing_bps[t] is None else max(1, int(round(spacing_bps[t] * ticks_per_bp)))
                start[s, t] = a
                spacing[s, t] = sp
                a += count * sp
            coverage = (a - 0.5) * self.tick[s] / p0[s]
            if coverage < MIN_COVERAGE:
                raise ValueError(f"{self.specs[s].symbol}: ladder covers only {coverage:.1%} of price")
        self._k = len(kin)
        self._tier = tier
        self._kin = np.vstack([kin] * (2 * n))
        A = np.vstack([start[:, tier], start[:, tier]])            # (2n, k): bid rows then ask rows
        SP = np.vstack([spacing[:, tier], spacing[:, tier]])
        sign = np.concatenate((np.ones(n), -np.ones(n)))[:, None]
        self._A, self._SP = A, SP
        # Bids: floor((c - a)/sp) - k; asks: ceil((c + a)/sp) + k, written as one expression.
        self._signed_A = sign * A
        self._signed_inv_SP = sign / SP
        self._signed_SP = sign * SP
        churn = np.array(CHURN_PROB)[tier]
        self._p_churn = self._per_step(churn)
        self._p_over = self._per_step(np.maximum(churn, CANCEL_PROB))
        self._p_under = self._per_step(np.array(FILL_PROB)[tier] + churn)

        lo = np.floor(p0 * 0.25 / self.tick).astype(np.int64)
        hi = np.ceil(p0 * 2.5 / self.tick).astype(np.int64)
        self._lo, self._hi = lo, hi
        sizes = np.concatenate((hi - lo, hi - lo))
        offsets = np.concatenate(([0], np.cumsum(sizes)))
        self._row_offset = offsets[:-1]
        self._row_ids = np.arange(2 * n)
        self._global_shift = self._row_offset - np.concatenate((lo, lo))   # global index = tick + shift[row]
        self.qty = np.zeros(int(offsets[-1]), dtype=np.int64)
        self._stamp = np.zeros(int(offsets[-1]), dtype=np.int32)

    def _centre(self) -> list[float]:
        return [i * math.exp(z) for i, z in zip(self.index, self.premium)]

    def _per_step(self, per_100ms: np.ndarray) -> np.ndarray:
        """A per-100 ms probability as the probability of at least one event in one model step."""
        return 1.0 - (1.0 - per_100ms) ** (self.step_ms / 100)

    def _check_range(self) -> None:
        cx = np.array(self._centre()) / self.tick
        if (cx < self._lo * 1.15).any() or (cx > self._hi / 1.15).any():
            raise RuntimeError("simulated price left the modelled range (0.29x..2.2x of the start price)")

    def _ladder(self) -> tuple[np.ndarray, np.ndarray]:
        cx = [c / t for c, t in zip(self._centre(), self.tick_list)]
        rows = np.array(cx + cx)[:, None]
        ticks = ((np.floor((rows - self._signed_A) * self._signed_inv_SP) - self._kin) * self._signed_SP).astype(np.int64)
        return ticks, ticks + self._global_shift[:, None]

    def _refresh_targets(self) -> None:
        """Per-slot target quantity (lots) for the current centre, liquidity and quote back-off."""
        centre = np.array(self._centre())
        rows_price = np.concatenate((centre, centre))[:, None]
        tick = np.concatenate((self.tick, self.tick))[:, None]
        dist_bps = (self._A + (self._kin + 0.5) * self._SP) * tick / rows_price * 1e4
        width_bps = self._SP * tick / rows_price * 1e4
        depth2 = np.array([s.depth2_usd for s in self.specs])
        density = np.where(dist_bps < 200.0, 0.5 + 0.5 * np.minimum(1.0, dist_bps / 20.0), 0.8)
        usd = np.concatenate((depth2, depth2))[:, None] / DEPTH2_SHAPE_INTEGRAL * density * width_bps
        touch = np.array([s.touch_usd for s in self.specs])
        usd = np.where(self._tier == 0, usd + np.concatenate((touch, touch))[:, None] * (1.0 - 0.07 * self._kin), usd)
        liquidity = np.concatenate((self.liquidity, self.liquidity))[:, None]
        near_weight = 1.0 - 0.65 * np.clip((dist_bps - 300.0) / 500.0, 0.0, 1.0)
        usd = usd * (1.0 - (1.0 - liquidity) * near_weight)
        backoff = np.concatenate((self.backoff_bps, self.backoff_bps))[:, None]
        usd = np.where(dist_bps < backoff, 0.0, usd)
        step = np.concatenate((self.step, self.step))[:, None]
        self._target = usd / (rows_price * step)
        # Integer thresholds: for integer lots, q > x <=> q > floor(x) and q < x <=> q < ceil(x).
        self._upper = np.floor(self._target * 1.3).astype(np.int64)
        self._lower = np.ceil(self._target * 0.7).astype(np.int64)

    def _draw_second_block(self, drv: Drivers) -> None:
        """Random draws for the next simulated second (market-maker quotes, taker orders), in a
        few calls rather than several per step. Market-maker draws are windows at random offsets
        into pre-drawn tables: tens of thousands of fresh variates per second would cost more
        than the rest of the model."""
        size = self._steps_per_second * self._target.size
        shape = (self._steps_per_second,) + self._target.shape
        a, b = self._rng_mm.integers(0, RANDOM_TABLE_SIZE - size, 2).tolist()
        noise = self._noise_table[a:a + size].reshape(shape)
        self._quote_block = np.round(self._target * noise).astype(np.int64)
        self._u_block = self._uniform_table[b:b + size].reshape(shape)

        rng = self._rng_taker
        counts = rng.poisson(self._taker_rate * drv.taker_mult * self._dt, size=(self._steps_per_second, self.n))
        total = int(counts.sum())
        symbol_of_order = np.repeat(np.tile(np.arange(self.n), self._steps_per_second), counts.ravel())
        sizes = np.maximum(1, np.round(self._taker_median_lots[symbol_of_order]
                                       * rng.lognormal(0.0, TAKER_SIZE_SIGMA, total))).astype(np.int64)
        self._taker_counts = counts.tolist()
        self._taker_offsets = rng.integers(0, self.step_ms, total).tolist()
        self._taker_sizes = sizes.tolist()
        self._taker_uniform = rng.random(total).tolist()
        self._taker_cursor = 0

    def _place_initial_book(self) -> None:
        ticks, G = self._ladder()
        lots = self._quote_block[0].copy()
        self.qty[G.ravel()] = lots.ravel()
        self._stamp[G.ravel()] = 1
        self.step_index = 1
        self._ticks, self._G, self.ladder_qty = ticks, G, lots
        for s in range(self.n):
            self._update_id += int(np.count_nonzero(lots[s]) + np.count_nonzero(lots[self.n + s]))
            self.last_update_id[s] = self._update_id
        row_best = self._row_best()
        self.best = [row_best[s] + row_best[self.n + s] for s in range(self.n)]
        self.mid = self._mids(row_best)
        self.last_price = list(self.mid)
        self.mark = list(self.mid)
        self._rv_last_mid = np.array(self.mid)

    # ------------------------------------------------------------------ book queries
    def book_levels(self, symbol_index: int) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
        """Current book of one symbol: (bid ticks desc, bid lots, ask ticks asc, ask lots)."""
        b, a = symbol_index, self.n + symbol_index
        bq, aq = self.ladder_qty[b], self.ladder_qty[a]
        bm, am = bq > 0, aq > 0
        return self._ticks[b][bm], bq[bm], self._ticks[a][am], aq[am]

    def lots_at(self, symbol_index: int, ticks: np.ndarray, ask: bool) -> np.ndarray:
        """Current quantity (lots) at the given price ticks of one side."""
        row = self.n + symbol_index if ask else symbol_index
        return self.qty[ticks + self._global_shift[row]]

    def depth_within(self, fraction: float) -> np.ndarray:
        """Mid-based inclusive depth band, exact in integer ticks.

        Returns (n, 4): bid base, bid USD, ask base, ask USD."""
        out = np.zeros((self.n, 4))
        num = int(round(fraction * 1e6))
        for s in range(self.n):
            bid_ticks, bid_lots, ask_ticks, ask_lots = self.book_levels(s)
            if len(bid_ticks) == 0 or len(ask_ticks) == 0:
                continue
            twice_mid = int(bid_ticks[0]) + int(ask_ticks[0])
            # p >= mid*(1-x)  <=>  2e6*p >= (best_bid+best_ask)*(1e6-x*1e6), all integers
            bm = bid_ticks * 2_000_000 >= twice_mid * (1_000_000 - num)
            am = ask_ticks * 2_000_000 <= twice_mid * (1_000_000 + num)
            step, tick = self.step[s], self.tick[s]
            out[s, 0] = bid_lots[bm].sum() * step
            out[s, 1] = float((bid_lots[bm] * bid_ticks[bm]).sum()) * step * tick
            out[s, 2] = ask_lots[am].sum() * step
            out[s, 3] = float((ask_lots[am] * ask_ticks[am]).sum()) * step * tick
        return out

    def open_interest(self) -> list[float]:
        return [p.oi_lots * step for p, step in zip(self.positions, self.step.tolist())]

    @property
    def estimated_settle_price(self) -> list[float]:
        return self._index_ema

    @property
    def finished(self) -> bool:
        return self.now_ms >= self.end_ms

    # ------------------------------------------------------------------ simulation step
    def step_once(self) -> StepResult:
        t0 = self.now_ms
        t1 = t0 + self.step_ms
        drv = self._drivers
        sub_step = (t0 - self.start_ms) // self.step_ms % self._steps_per_second
        self._move_prices(drv)
        before, gone = self._requote(sub_step)
        row_best = self._row_best()
        mid_before = self._mids(row_best)
        liquidations: list[Liquidation] = []
        orders = self._taker_orders(drv, sub_step)
        self._add_liquidation_orders(orders, liquidations, t0)
        fills = self._execute(orders, row_best, t0)
        n = self.n
        best = [row_best[s] + row_best[n + s] for s in range(n)]
        best_changed = [new != old for new, old in zip(best, self.best)]
        self.best = best
        self.mid = self._mids(row_best)
        for s, (buys, sells) in enumerate(orders):
            if buys or sells:
                retained = IMPACT_RETENTION * math.log(self.mid[s] / mid_before[s])
                self.premium[s] += retained
                if liquidations and retained:
                    self._record_impact(s, retained, fills, liquidations)
        for fill in fills:
            self.last_price[fill.symbol_index] = fill.tick * self.tick_list[fill.symbol_index]
        self._update_mark(t1)
        rows, ticks, update_ids = self._commit(before, gone, t1)
        self.now_ms = t1
        self.step_index += 1
        fundings = self._settle_funding(t1)
        if t1 % 1000 == 0:
            self._per_second()
        return StepResult(t0, t1, rows, ticks, update_ids, best_changed, fills, liquidations, fundings)

    def _row_best(self) -> list[tuple[int, int]]:
        """(tick, lots) of the best level of every ladder row; (0, 0) for an empty side."""
        lq = self.ladder_qty
        present = lq > 0
        slot = present.argmax(axis=1)
        rows = self._row_ids
        ticks = np.where(present[rows, slot], self._ticks[rows, slot], 0).tolist()
        lots = lq[rows, slot].tolist()
        return list(zip(ticks, lots))

    def _mids(self, row_best: list[tuple[int, int]]) -> list[float]:
        """Book mid per symbol; the market makers' centre stands in while a side is empty."""
        n = self.n
        return [(row_best[s][0] + row_best[n + s][0]) / 2.0 * self.tick_list[s]
                if row_best[s][0] and row_best[n + s][0] else self.index[s] * math.exp(self.premium[s])
                for s in range(n)]

    def _move_prices(self, drv: Drivers) -> None:
        shocks = self._rng_price.standard_normal(2 * self.n + 1).tolist()
        dt = self._dt
        sq = math.sqrt(dt) * drv.vol_mult
        self._arb_strength = arb = max(0.05, 1.0 - 0.85 * drv.disruption)
        decay = 1.0 - math.exp(-dt * arb / ARB_TAU_S)
        noise = PREMIUM_NOISE_BPS * 1e-4 * math.sqrt(2 * dt / ARB_TAU_S)
        for s in range(self.n):
            dlog = (self._sigma_common[s] * shocks[0] + self._sigma_idio[s] * shocks[1 + s]) * sq + drv.drift[s] * dt
            converge = (self.premium[s] - PREMIUM_MEAN) * decay
            self.index[s] *= math.exp(dlog + ARB_INDEX_SHARE * converge)
            self.premium[s] += noise * shocks[1 + self.n + s] - converge
            for d in (0, 1):
                relaxed = self._impact_premium[s][d] * decay
                self._impact_premium[s][d] -= relaxed
                self._impact_index[s][d] += ARB_INDEX_SHARE * relaxed
        self._log_premium_decay += math.log1p(-decay)

    def _requote(self, sub_step: int) -> tuple[np.ndarray, np.ndarray]:
        """Market makers move their ladder to the new centre and work quotes toward target.

        Returns the pre-step quantities at the new ladder points and the global indices of
        levels that left the ladder (already zeroed)."""
        ticks, G = self._ladder()
        step = self.step_index
        flat = G.ravel()
        cur = self.qty[flat].reshape(G.shape)
        fresh = (self._stamp[flat] != step).reshape(G.shape)
        self._stamp[flat] = step + 1
        prev = self._G.ravel()
        gone = prev[self._stamp[prev] != step + 1]
        gone = gone[self.qty[gone] > 0]
        self.qty[gone] = 0
        p = np.where(cur > self._upper, self._p_over, np.where(cur < self._lower, self._p_under, self._p_churn))
        reset = fresh | (self._u_block[sub_step] < p)
        self.ladder_qty = np.where(reset, self._quote_block[sub_step], cur)
        self._ticks, self._G = ticks, G
        return cur, gone

    def _taker_orders(self, drv: Drivers, sub_step: int) -> list[tuple[list, list]]:
        """Per symbol, (buy orders, sell orders) as time-ordered [ms offset, lots, limit tick, liquidation].

        Takers lean against the premium (arbitrage), less so when hedging is disrupted."""
        orders: list[tuple[list, list]] = [([], []) for _ in range(self.n)]
        i = self._taker_cursor
        for s, count in enumerate(self._taker_counts[sub_step]):
            if not count:
                continue
            tilt = min(0.25, max(-0.25, -(self.premium[s] - PREMIUM_MEAN) / 0.002 * 0.25 * self._arb_strength))
            p_buy = min(0.95, max(0.05, 0.5 + drv.buy_tilt + tilt))
            buys, sells = orders[s]
            for j in range(i, i + count):
                (buys if self._taker_uniform[j] < p_buy else sells).append(
                    [self._taker_offsets[j], self._taker_sizes[j], NO_LIMIT, None])
            i += count
            buys.sort(key=lambda o: o[0])
            sells.sort(key=lambda o: o[0])
        self._taker_cursor = i
        return orders

    def _add_liquidation_orders(self, orders: list[tuple[list, list]], liquidations: list[Liquidation],
                                t0: int) -> None:
        """Positions crossed by the mark become IOC orders limited at their bankruptcy price."""
        for s, book in enumerate(self.positions):
            down, up = self.liquidation_impact(s)
            self._counterfactual_low[s].add(t0, self.mark[s] * math.exp(-down))
            self._counterfactual_high[s].add(t0, self.mark[s] * math.exp(-up))
            batch = book.liquidate(self.mark[s])
            if batch is None:
                continue
            n = len(batch)
            mark = self.mark[s]
            tick = self.tick_list[s]
            parents = self._largest_contributors(s)
            low, high = self._counterfactual_low[s], self._counterfactual_high[s]
            for i, (is_long, lots, entry, lev, liq_px, bkr, opened) in enumerate(zip(
                    batch.is_long.tolist(), batch.lots.tolist(), batch.entry.tolist(), batch.leverage.tolist(),
                    batch.liquidation_price.tolist(), batch.bankruptcy_price.tolist(), batch.opened_ms.tolist())):
                offset = LIQUIDATION_DELAY_MS + (i * (self.step_ms - 2 * LIQUIDATION_DELAY_MS)) // n
                triggered = liq_px < low.since(opened) if is_long else liq_px > high.since(opened)
                liq = Liquidation(t0 + offset, s, is_long, lots, bkr, liq_px, entry, lev, mark,
                                  liq_id=self.next_liquidation_id, opened_ms=opened,
                                  parent_id=parents[is_long] if triggered else None)
                self.next_liquidation_id += 1
                liquidations.append(liq)
                if is_long:
                    orders[s][1].append([offset, lots, math.ceil(bkr / tick - 1e-9), liq])
                else:
                    orders[s][0].append([offset, lots, math.floor(bkr / tick + 1e-9), liq])
            orders[s][0].sort(key=lambda o: o[0])
            orders[s][1].sort(key=lambda o: o[0])

    def liquidation_impact(self, s: int) -> tuple[float, float]:
        """The log move of symbol ``s``'s centre due to earlier forced sells (<= 0) and buys (>= 0)."""
        premium, index = self._impact_premium[s], self._impact_index[s]
        return premium[0] + index[0], premium[1] + index[1]

    def _largest_contributors(self, s: int) -> dict[bool, int | None]:
        """Per side liquidated (long: a downward move) the id of the earlier liquidation of symbol
        ``s`` whose impact now pushes that way most, or None."""
        if not self._impact_ids[s]:
            return {True: None, False: None}
        made = np.array(self._impact_log[s])
        left_in_premium = np.exp(self._log_premium_decay - np.array(self._impact_decay_at[s]))
        now = made * (ARB_INDEX_SHARE + (1.0 - ARB_INDEX_SHARE) * left_in_premium)
        parents: dict[bool, int | None] = {}
        for is_long, pick in ((True, np.argmin), (False, np.argmax)):
            i = int(pick(now))
            parents[is_long] = self._impact_ids[s][i] if (now[i] < 0 if is_long else now[i] > 0) else None
        return parents

    def _record_impact(self, s: int, retained: float, fills: list[Fill], liquidations: list[Liquidation]) -> None:
        """Share the step's retained log move of symbol ``s`` among its liquidations that pushed the
        same way, by their filled lots over all filled lots in that direction."""
        pushing_down = retained < 0
        ours = [liq for liq in liquidations
                if liq.symbol_index == s and liq.is_long == pushing_down and liq.filled_lots]
        if not ours:
            return
        # A forced sell (long liquidated) is a sell aggressor: the buyer is the maker.
        total = sum(f.lots for f in fills if f.symbol_index == s and f.buyer_is_maker == pushing_down)
        for liq in ours:
            impact = retained * liq.filled_lots / total
            self._impact_premium[s][0 if pushing_down else 1] += impact
            self._impact_ids[s].append(liq.liq_id)
            self._impact_log[s].append(impact)
            self._impact_decay_at[s].append(self._log_premium_decay)

    def _execute(self, orders: list[tuple[list, list]], row_best: list[tuple[int, int]], t0: int) -> list[Fill]:
        """Sweep each side with its orders in time order; updates row_best; assigns trade ids."""
        fills: list[Fill] = []
        for s in range(self.n):
            raw: list[tuple[int, int, int, bool, Liquidation | None]] = []
            for side, row, buyer_is_maker in ((0, self.n + s, False), (1, s, True)):
                if orders[s][side]:
                    row_best[row] = self._sweep(row, orders[s][side], not buyer_is_maker, buyer_is_maker, raw)
            if not raw:
                continue
            raw.sort(key=lambda f: f[0])
            maker_lots = self._maker_lots[s]
            agg, trade = self.next_agg_id[s], self.next_trade_id[s]
            for offset, tick, lots, buyer_is_maker, liq in raw:
                n_trades = min(4, lots, max(1, math.ceil(lots / maker_lots)))
                fills.append(Fill(s, t0 + offset, tick, lots, buyer_is_maker, agg, trade, trade + n_trades - 1, liq))
                agg += 1
                trade += n_trades
                if liq is not None:
                    price = tick * self.tick_list[s]
                    liq.avg_price = (liq.avg_price * liq.filled_lots + price * lots) / (liq.filled_lots + lots)
                    liq.filled_lots += lots
                    liq.last_fill_lots = lots
                    liq.last_fill_ms = t0 + offset
            self.next_agg_id[s], self.next_trade_id[s] = agg, trade
        return fills

    def _sweep(self, row: int, side_orders: list, is_buy: bool, buyer_is_maker: bool,
               out: list) -> tuple[int, int]:
        """Fill orders in sequence against one side, none beyond its limit price.

        Appends (ms offset, tick, lots, buyer is maker, liquidation) per fill to ``out`` and
        returns the side's new best (tick, lots). Only the levels reached are converted to
        Python lists: most sweeps touch the first few."""
        k = self._k
        seen = SWEEP_WINDOW
        q = self.ladder_qty[row, :seen].tolist()
        ticks = self._ticks[row, :seen].tolist()
        level = 0
        for offset, lots, limit, liq in side_orders:
            remaining = lots
            while remaining and level < k:
                if level >= seen:
                    q += self.ladder_qty[row, seen:].tolist()
                    ticks += self._ticks[row, seen:].tolist()
                    seen = k
                avail = q[level]
                if avail <= 0:
                    level += 1
                    continue
                tick = ticks[level]
                if limit is not None and (tick > limit if is_buy else tick < limit):
                    break
                take = avail if avail < remaining else remaining
                out.append((offset, tick, take, buyer_is_maker, liq))
                q[level] = avail - take
                remaining -= take
                if take == avail:
                    level += 1
        while level < k:
            if level >= seen:
                q += self.ladder_qty[row, seen:].tolist()
                ticks += self._ticks[row, seen:].tolist()
                seen = k
            if q[level] > 0:
                break
            level += 1
        self.ladder_qty[row, :seen] = q
        return (ticks[level], q[level]) if level < k else (0, 0)

    def _commit(self, before: np.ndarray, gone: np.ndarray, t1: int):
        """Write the step's ladder into the dense book; assign depth update ids per symbol."""
        lots = self.ladder_qty.ravel()
        changed = np.flatnonzero(lots != before.ravel())
        self.qty[self._G.ravel()[changed]] = lots[changed]
        ticks = self._ticks.ravel()[changed]
        rows = changed // self._k
        if len(gone):
            gone_rows = np.searchsorted(self._row_offset, gone, side="right") - 1
            rows = np.concatenate((rows, gone_rows))
            ticks = np.concatenate((ticks, gone - self._global_shift[gone_rows]))
        counts = np.bincount(rows % self.n, minlength=self.n).tolist()
        update_ids: list[tuple[int, int] | None] = []
        for s, count in enumerate(counts):
            if count == 0:
                update_ids.append(None)
                continue
            first = self._update_id + 1
            self._update_id += count
            update_ids.append((first, self._update_id))
            self.last_update_id[s] = self._update_id
            self.last_change_ms[s] = t1 - 1
        return rows, ticks, update_ids

    def _update_mark(self, t1: int) -> None:
        """Binance mark price: median(index*(1+funding*time-left), index*(1+EMA basis), last price)."""
        alpha = self._dt / MARK_BASIS_TAU_S
        for s in range(self.n):
            index = self.index[s]
            basis = self.mid[s] / index - 1.0
            self.basis_ema[s] += alpha * (basis - self.basis_ema[s])
            to_funding = (self.next_funding_ms[s] - t1) / self._funding_interval_ms[s]
            p1 = index * (1.0 + self.funding_rate[s] * to_funding)
            p2 = index * (1.0 + self.basis_ema[s])
            self.mark[s] = sorted((p1, p2, self.last_price[s]))[1]
            self._premium_sum[s] += basis
            self._index_ema[s] += (self._dt / 60.0) * (index - self._index_ema[s])
        self._premium_count += 1

    def _funding_estimate(self) -> list[float]:
        """Binance funding: average premium + clamp(interest - premium, +-0.05%), capped."""
        if self._premium_count == 0:
            return list(self.funding_rate)
        out = []
        for total, cap in zip(self._premium_sum, self._funding_caps):
            avg = total / self._premium_count
            rate = avg + min(0.0005, max(-0.0005, INTEREST_RATE - avg))
            out.append(min(cap, max(-cap, rate)))
        return out

    def _settle_funding(self, t1: int) -> list[tuple[int, float, float]]:
        due = [s for s in range(self.n) if t1 >= self.next_funding_ms[s]]
        if not due:
            return []
        rates = self._funding_estimate()
        out = []
        for s in due:
            out.append((s, rates[s], self.mark[s]))
            self.next_funding_ms[s] += self._funding_interval_ms[s]
            self._premium_sum[s] = 0.0
        if len(due) == self.n:
            self._premium_count = 0
        return out

    def _per_second(self) -> None:
        """Slow state, refreshed once per simulated second: scenario forces (smooth at this scale),
        realised volatility, liquidity targets, funding estimate, position flows, random blocks."""
        self._drivers = drv = self.scenario.drivers((self.now_ms - self.start_ms) / 1000.0)
        self._check_range()
        mid = np.array(self.mid)
        lam = math.exp(-math.log(2) / RV_HALF_LIFE_S)
        self._rv_var = lam * self._rv_var + (1 - lam) * np.log(mid / self._rv_last_mid) ** 2
        self._rv_last_mid = mid
        rv_ratio = np.sqrt(self._rv_var) / self._sigma_calm_1s
        vol_liquidity = np.clip(1.0 / (1.0 + VOL_THINNING * np.maximum(0.0, rv_ratio - 2.0)), 0.6, 1.0)
        self.liquidity = vol_liquidity * (1.0 - (1.0 - DISRUPTED_LIQUIDITY) * drv.disruption)
        self.backoff_bps = np.full(self.n, DISRUPTED_BACKOFF_BPS * drv.disruption)
        self.funding_rate = self._funding_estimate()
        self._refresh_targets()
        self._draw_second_block(drv)
        if (self.now_ms - self.start_ms) // 1000 % POSITION_FLOW_EVERY_S == 0:
            for s, book in enumerate(self.positions):
                book.now_ms = self.now_ms
                book.trade_flows(self.mid[s], POSITION_CLOSE_HAZARD, drv.long_close_mult, drv.open_mult,
                                 drv.long_tilt, drv.high_leverage_share, float(POSITION_FLOW_EVERY_S))


class RunningExtreme:
    """Lowest (or highest) value added at or after any given time, as a monotonic stack: adding is
    amortised O(1), a query is a binary search. Times must not decrease."""

    def __init__(self, lowest: bool):
        self._sign = 1.0 if lowest else -1.0
        self._times: list[int] = []
        self._keys: list[float] = []      # sign * value, increasing with time

    def add(self, t: int, value: float) -> None:
        key = self._sign * value
        while self._keys and self._keys[-1] >= key:
            self._keys.pop()
            self._times.pop()
        self._times.append(t)
        self._keys.append(key)

    def since(self, t: int) -> float:
        """The extreme of the values added at or after ``t`` (+inf lowest / -inf highest if none)."""
        i = bisect.bisect_left(self._times, t)
        return self._sign * self._keys[i] if i < len(self._keys) else self._sign * math.inf
