"""Liquidation-level map ("heatmap") and its score (analytics.md §9.4, asset ``liq_levels``).

Every parameter is the spec's **[assumption]**: nobody publishes where positions really sit, so the
map is a model built from public inputs, and its score says how much better than chance it is.

Model, one asset, per minute m (inputs: one-sided OI summed over venues in base units, VWAP,
taker buy/sell USD, high, low):

1. ΔOI_m > 0: the new notional ``N = ΔOI_m × v_m`` is opened at ``v_m``, longs taking the taker-buy
   share ``s = buy/(buy+sell)``; tier ``L`` with weight ``π_L`` puts ``N·s·π_L`` on the long level
   ``v_m(1 − 1/L + mmr)`` and ``N(1 − s)π_L`` on the short level ``v_m(1 + 1/L − mmr)``.
2. ΔOI_m < 0: every outstanding level (both sides) is scaled by ``1 + ΔOI_m/OI_{m−1}`` (pro-rata
   closing). This happens before step 3, so a level consumed in the same minute counts its
   scaled size (the spec's vector: the 99 500 level is consumed at 294 000).
3. Levels created before minute m are consumed by its range: a long level when ``low <= price``, a
   short level when ``high >= price``; their USD is ``modeled_liquidated``. Levels opened in minute
   m are only exposed from m+1 on.

Minutes with a non-finite OI are skipped (the next change is measured from the last finite OI). A
positive ΔOI in a minute without a finite VWAP or without taker volume cannot be priced or split;
it is not placed and is counted in ``unplaced_usd`` (at the last VWAP, or the first one where none
came before), so a snapshot says how much of the OI growth it could not map.

Snapshots bin the outstanding levels at ``w = 0.1 %`` of the snapshot mid rounded down to
{1, 2, 5}×10^k; bins are ``[k·w, (k+1)·w)``.

Score (LiquidVision-style, exact per the spec): for each snapshot at t, B_t are the grid bins that
intersect ``[min low, max high]`` of the candles in ``(t, t + horizon]``, ranked by predicted USD
(long + short; ties: lower price first); Q_t the top ``⌈|B_t|/4⌉``. Realized liquidation USD in
``(t, t + horizon]`` goes to the bin of its fill price. ``score = Σ R(Q_t) / Σ R(B_t)`` pooled over
snapshots with ``R(B_t) > 0`` (baseline 0.25). Also the mean of per-snapshot ratios, a bootstrap 95 %
CI of the pooled score over snapshots and precision at the top 10 % (baseline 0.10), and
``ranked_share``: the share of the top-quartile bins, pooled, that the map ranked by predicted USD.
A map with levels in fewer bins than a quarter of the range has the rest of Q_t filled by the tie
rule (the lowest prices), so where ``ranked_share`` is low the score says where the price went more
than how good the map is.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass

import numpy as np
from numpy.typing import ArrayLike, NDArray
from scipy.stats import spearmanr

DEFAULT_TIERS: Mapping[float, float] = {5: 0.10, 10: 0.30, 25: 0.30, 50: 0.20, 100: 0.10}
MAINTENANCE_MARGIN_RATE = 0.005
BIN_SHARE_OF_MID = 0.001


def bin_width(mid: float) -> float:
    """0.1 % of ``mid`` rounded down to 1, 2 or 5 times a power of ten (BTC at 100 000 -> 100)."""
    if not (math.isfinite(mid) and mid > 0):
        raise ValueError(f"mid must be a positive finite price, got {mid!r}")
    raw = mid * BIN_SHARE_OF_MID
    power = 10.0 ** math.floor(math.log10(raw))
    for mantissa in (5.0, 2.0, 1.0):
        if mantissa * power <= raw * (1 + 1e-12):
            return mantissa * power
    return power


@dataclass(frozen=True)
class MinuteInputs:
    """One asset's minute: ``open_interest`` one-sided in base units summed over venues.

    ``open_interest_change``: ΔOI_m when the caller knows it better than the difference of two
    totals, i.e. the like-for-like change of a total whose venues changed (a venue's feed joining
    the sum is not positions opened: ``transforms.open_interest.CrossVenueTotal``); NaN: the
    difference. Pro-rata closing still scales by the previous total."""

    ts: float
    open_interest: float
    vwap: float
    taker_buy_usd: float
    taker_sell_usd: float
    high: float
    low: float
    open_interest_change: float = math.nan


@dataclass(frozen=True)
class MapSnapshot:
    """Outstanding levels binned at ``ts``. ``bin_lo`` ascending, every bin ``width`` wide;
    ``modeled_liquidated_usd`` and ``unplaced_usd`` are cumulative since the first minute."""

    ts: float
    mid: float
    width: float
    bin_lo: NDArray[np.float64]
    long_usd: NDArray[np.float64]
    short_usd: NDArray[np.float64]
    modeled_liquidated_usd: float
    unplaced_usd: float

    @property
    def total_usd(self) -> NDArray[np.float64]:
        return self.long_usd + self.short_usd

    def rows(self) -> list[dict]:
        """``{bin_lo, bin_hi, long_usd, short_usd}`` per bin, the spec's output shape."""
        return [{"bin_lo": float(lo), "bin_hi": float(lo + self.width), "long_usd": float(lg),
                 "short_usd": float(sh)}
                for lo, lg, sh in zip(self.bin_lo, self.long_usd, self.short_usd, strict=True)]


def bin_levels(prices: ArrayLike, usd: ArrayLike, width: float) -> tuple[NDArray, NDArray]:
    """Sum ``usd`` into bins ``[k·width, (k+1)·width)``: (bin lower edges ascending, sums)."""
    prices = np.asarray(prices, dtype=np.float64)
    usd = np.asarray(usd, dtype=np.float64)
    if prices.size == 0:
        return np.empty(0), np.empty(0)
    # The small epsilon keeps a level exactly on an edge (90 500 at width 100) in the bin it opens.
    k = np.floor(prices / width + 1e-9).astype(np.int64)
    keys, inverse = np.unique(k, return_inverse=True)
    return keys * width, np.bincount(inverse, weights=usd, minlength=keys.size)


class LiquidationLevels:
    """The outstanding modelled levels of one asset, advanced one minute at a time."""

    def __init__(self, tiers: Mapping[float, float] = DEFAULT_TIERS,
                 maintenance_margin_rate: float = MAINTENANCE_MARGIN_RATE):
        weights = np.array(list(tiers.values()), dtype=np.float64)
        leverages = np.array(list(tiers.keys()), dtype=np.float64)
        if np.any(leverages <= 1) or np.any(weights < 0) or not math.isclose(weights.sum(), 1.0, rel_tol=1e-9):
            raise ValueError(f"tiers must map leverages > 1 to weights >= 0 summing to 1, got {dict(tiers)}")
        self._weights = weights
        self._long_factor = 1.0 - 1.0 / leverages + maintenance_margin_rate
        self._short_factor = 1.0 + 1.0 / leverages - maintenance_margin_rate
        self.price = np.empty(0)
        self.usd = np.empty(0)
        self.is_long = np.empty(0, dtype=bool)
        self.open_interest: float | None = None
        self.last_vwap = math.nan
        self.modeled_liquidated_usd = 0.0
        self.unplaced_usd = 0.0
        self._unpriced_coin = 0.0

    def advance(self, minute: MinuteInputs) -> float:
        """Apply one minute (steps 2, 3, then 1); returns the USD it consumed."""
        if math.isfinite(minute.vwap):
            self.last_vwap = minute.vwap
            if self._unpriced_coin:
                self.unplaced_usd += self._unpriced_coin * minute.vwap
                self._unpriced_coin = 0.0
        if not math.isfinite(minute.open_interest):
            return self._consume(minute)
        previous, self.open_interest = self.open_interest, minute.open_interest
        if previous is None:
            delta = 0.0
        elif math.isfinite(minute.open_interest_change):
            delta = minute.open_interest_change
        else:
            delta = minute.open_interest - previous
        if delta < 0 and previous > 0:
            self.usd = self.usd * max(0.0, 1.0 + delta / previous)
        consumed = self._consume(minute)
        if delta > 0:
            self._open(delta, minute)
        return consumed

    def _consume(self, minute: MinuteInputs) -> float:
        hit = np.zeros(self.price.size, dtype=bool)
        if math.isfinite(minute.low):
            hit |= self.is_long & (minute.low <= self.price)
        if math.isfinite(minute.high):
            hit |= ~self.is_long & (minute.high >= self.price)
        consumed = float(self.usd[hit].sum())
        if hit.any():
            keep = ~hit
            self.price, self.usd, self.is_long = self.price[keep], self.usd[keep], self.is_long[keep]
        self.modeled_liquidated_usd += consumed
        return consumed

    def _open(self, delta: float, minute: MinuteInputs) -> None:
        flow = minute.taker_buy_usd + minute.taker_sell_usd
        if not (math.isfinite(minute.vwap) and minute.vwap > 0 and flow > 0):
            if math.isfinite(self.last_vwap):
                self.unplaced_usd += delta * self.last_vwap
            else:       # no trade seen yet: priced at the first VWAP (a history of OI without trades)
                self._unpriced_coin += delta
            return
        notional = delta * minute.vwap
        long_share = minute.taker_buy_usd / flow
        # Rounded to 12 significant digits so that a level lies exactly where the arithmetic puts it
        # (100 000·(1 + 1/100 − 0.005) is 100 500, not 100 500.00000000001, which a high of 100 500
        # would otherwise miss).
        prices = np.concatenate((minute.vwap * self._long_factor, minute.vwap * self._short_factor))
        digits = 11 - np.floor(np.log10(prices)).astype(np.int64)
        self.price = np.concatenate((self.price, [round(p, d) for p, d in zip(prices.tolist(), digits.tolist())]))
        self.usd = np.concatenate((self.usd, notional * long_share * self._weights,
                                   notional * (1.0 - long_share) * self._weights))
        n = self._weights.size
        self.is_long = np.concatenate((self.is_long, np.ones(n, dtype=bool), np.zeros(n, dtype=bool)))

    def levels(self, side_long: bool) -> dict[float, float]:
        """Outstanding USD per level price of one side (levels at the same price summed)."""
        mask = self.is_long == side_long
        out: dict[float, float] = {}
        for price, usd in zip(self.price[mask].tolist(), self.usd[mask].tolist(), strict=True):
            out[price] = out.get(price, 0.0) + usd
        return out

    def snapshot(self, ts: float, mid: float) -> MapSnapshot:
        width = bin_width(mid)
        lo_long, usd_long = bin_levels(self.price[self.is_long], self.usd[self.is_long], width)
        lo_short, usd_short = bin_levels(self.price[~self.is_long], self.usd[~self.is_long], width)
        edges = np.union1d(lo_long, lo_short)
        long_usd = np.zeros(edges.size)
        short_usd = np.zeros(edges.size)
        long_usd[np.searchsorted(edges, lo_long)] = usd_long
        short_usd[np.searchsorted(edges, lo_short)] = usd_short
        return MapSnapshot(ts, mid, width, edges, long_usd, short_usd,
                           self.modeled_liquidated_usd, self.unplaced_usd)


def build_liquidation_map(
    minutes: Iterable[MinuteInputs],
    *,
    snapshot_every_s: float = 3600.0,
    tiers: Mapping[float, float] = DEFAULT_TIERS,
    maintenance_margin_rate: float = MAINTENANCE_MARGIN_RATE,
) -> list[MapSnapshot]:
    """Run the model over time-ordered minutes; a snapshot after every minute whose ``ts`` is a
    multiple of ``snapshot_every_s``, at the last finite VWAP as mid (none before the first)."""
    levels = LiquidationLevels(tiers, maintenance_margin_rate)
    out = []
    last_ts = -math.inf
    for minute in minutes:
        if minute.ts <= last_ts:
            raise ValueError(f"minutes must be strictly increasing in ts (got {minute.ts} after {last_ts})")
        last_ts = minute.ts
        levels.advance(minute)
        if minute.ts % snapshot_every_s == 0 and math.isfinite(levels.last_vwap):
            out.append(levels.snapshot(minute.ts, levels.last_vwap))
    return out


def top_share(predicted: ArrayLike, realized: ArrayLike, share: float = 0.25) -> tuple[float, float]:
    """``(R(Q), R(B))`` for bins in ascending price order: realized USD in the top ``⌈|B|·share⌉``
    bins by predicted USD (ties: lower price first) and in all bins."""
    predicted = np.asarray(predicted, dtype=np.float64)
    realized = np.asarray(realized, dtype=np.float64)
    if predicted.shape != realized.shape:
        raise ValueError(f"predicted and realized differ in length ({predicted.size} vs {realized.size})")
    if predicted.size == 0:
        return 0.0, 0.0
    k = math.ceil(predicted.size * share)
    top = np.argsort(-predicted, kind="stable")[:k]
    return float(realized[top].sum()), float(realized.sum())


@dataclass(frozen=True)
class MapScore:
    """``score`` pooled top-quartile share (baseline 0.25), ``lift = score / 0.25``,
    ``precision_top10`` the pooled top-10 % share (baseline 0.10). NaN where no snapshot scored."""

    score: float
    lift: float
    mean_ratio: float
    ci_low: float
    ci_high: float
    precision_top10: float
    n_scored: int
    n_skipped: int
    realized_usd: float
    ranked_share: float = math.nan


def _snapshot_bins(snapshot: MapSnapshot, lo: float, hi: float) -> tuple[NDArray, NDArray]:
    """Grid bins of the snapshot's width intersecting [lo, hi] and their predicted USD."""
    w = snapshot.width
    first = math.floor(lo / w + 1e-9)
    last = math.floor(hi / w + 1e-9)
    edges = np.arange(first, last + 1, dtype=np.float64) * w
    predicted = np.zeros(edges.size)
    k = np.floor(snapshot.bin_lo / w + 1e-9).astype(np.int64) - first
    inside = (k >= 0) & (k < edges.size)
    predicted[k[inside]] = snapshot.total_usd[inside]
    return edges, predicted


def score_liquidation_map(
    snapshots: Sequence[MapSnapshot],
    liquidations: tuple[ArrayLike, ArrayLike, ArrayLike],
    candles: tuple[ArrayLike, ArrayLike, ArrayLike],
    *,
    horizon_s: float = 86_400.0,
    bootstrap: int = 2000,
    seed: int = 0,
) -> MapScore:
    """Score snapshots against realized liquidations ``(ts, fill price, usd)`` using the candles
    ``(ts, high, low)`` for the traded range; both in the snapshots' time unit (seconds)."""
    liq_ts, liq_price, liq_usd = (np.asarray(a, dtype=np.float64) for a in liquidations)
    c_ts, c_high, c_low = (np.asarray(a, dtype=np.float64) for a in candles)
    quarter, tenth, total, ranked, top_total = [], [], [], [], []
    skipped = 0
    for snap in snapshots:
        in_candles = (c_ts > snap.ts) & (c_ts <= snap.ts + horizon_s)
        in_liqs = (liq_ts > snap.ts) & (liq_ts <= snap.ts + horizon_s)
        if not in_candles.any():
            skipped += 1
            continue
        edges, predicted = _snapshot_bins(snap, float(np.nanmin(c_low[in_candles])),
                                          float(np.nanmax(c_high[in_candles])))
        k = np.floor(liq_price[in_liqs] / snap.width + 1e-9) - round(edges[0] / snap.width)
        inside = (k >= 0) & (k < edges.size)
        realized = np.bincount(k[inside].astype(np.int64), weights=liq_usd[in_liqs][inside], minlength=edges.size)
        q, b = top_share(predicted, realized, 0.25)
        if b <= 0:
            skipped += 1
            continue
        quarter.append(q)
        tenth.append(top_share(predicted, realized, 0.10)[0])
        total.append(b)
        top_bins = math.ceil(predicted.size * 0.25)
        ranked.append(min(top_bins, int(np.count_nonzero(predicted > 0))))
        top_total.append(top_bins)
    if not total:
        nan = math.nan
        return MapScore(nan, nan, nan, nan, nan, nan, 0, skipped, 0.0)
    q, t, b = np.array(quarter), np.array(tenth), np.array(total)
    score = float(q.sum() / b.sum())
    rng = np.random.default_rng(seed)
    draws = rng.integers(0, b.size, size=(bootstrap, b.size))
    boot = q[draws].sum(axis=1) / b[draws].sum(axis=1)
    return MapScore(score, score / 0.25, float(np.mean(q / b)), float(np.quantile(boot, 0.025)),
                    float(np.quantile(boot, 0.975)), float(t.sum() / b.sum()), int(b.size), skipped,
                    float(b.sum()), sum(ranked) / sum(top_total))


@dataclass(frozen=True)
class MapComparison:
    """A modelled map against a true one on a common grid: Spearman rank correlation of bin USD and
    the share of the true map's top-quartile bins that are also in the model's (chance: 0.25)."""

    rank_correlation: float
    top_quartile_overlap: float
    n_bins: int
    width: float


def compare_maps(
    model: tuple[ArrayLike, ArrayLike, float],
    truth: tuple[ArrayLike, ArrayLike, float],
    lo: float,
    hi: float,
) -> MapComparison:
    """Compare two binned maps ``(bin_lo, usd, width)`` over the price range ``[lo, hi]``.

    Both are re-binned onto the coarser width (each bin goes whole to the coarse bin holding its
    lower edge, exact when one width divides the other); empty grid bins count as 0 USD."""
    width = max(model[2], truth[2])
    first = math.floor(lo / width + 1e-9)
    n = math.floor(hi / width + 1e-9) - first + 1
    grids = []
    for edges, usd, _ in (model, truth):
        k = np.floor(np.asarray(edges, dtype=np.float64) / width + 1e-9).astype(np.int64) - first
        inside = (k >= 0) & (k < n)
        grids.append(np.bincount(k[inside], weights=np.asarray(usd, dtype=np.float64)[inside], minlength=n))
    est, true = grids
    if n < 2 or np.ptp(est) == 0 or np.ptp(true) == 0:
        return MapComparison(math.nan, math.nan, n, width)
    k = math.ceil(n / 4)
    top_est = set(np.argsort(-est, kind="stable")[:k].tolist())
    top_true = set(np.argsort(-true, kind="stable")[:k].tolist())
    rho = float(spearmanr(est, true).statistic)
    return MapComparison(rho, len(top_est & top_true) / k, n, width)
