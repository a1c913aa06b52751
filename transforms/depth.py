"""Order-book depth bands (analytics.md §3, asset ``orderbook_depth_bands``).

Definitions
-----------
* Reference price: the mid ``(best_bid + best_ask) / 2`` by default (Coin Metrics / CoinGecko
  convention). ``reference="touch"`` measures each side from its own best price instead (Kaiko
  convention); the spec's toy vector shows the two differ materially, so the choice is explicit.
* A bid level belongs to band ``x`` iff ``price >= ref * (1 - x)``; an ask level iff
  ``price <= ref * (1 + x)``. Bounds are inclusive and bands are cumulative (the 2 % band contains
  the 1 % band).
* Units per side and band: ``base`` (coins), ``quote`` (sum of price * base, in the quote currency)
  and ``usd`` (quote * ``quote_usd_rate``; USDT/USDC are close to 1 but the rate is an input so the
  warehouse can store the one it used). Quantities may be contracts: linear contracts are worth
  ``contract_size`` base units each (base = contracts * contract_size, quote = base * price); inverse
  (coin-margined) contracts ``contract_size`` quote units each, so quote = contracts * contract_size
  exactly and base = quote / price. Base-unit books are ``contract_size`` 1, linear. The batch path
  takes the contract size and kind per snapshot (``warehouse.units`` supplies them).
* ``spread_bps = (best_ask - best_bid) / mid * 1e4``.
* ``imbalance = (bid - ask) / (bid + ask)`` per band, on quote notional (not base): notional is what
  a market order consumes, and it reproduces the spec vector (-0.0620690 at 2 %).
* A crossed (best_bid > best_ask) or locked (best_bid == best_ask) book, or a book with an empty
  side, is *invalid*: every number is NaN and ``valid`` is False. A mid computed from such a book is
  meaningless, and silently reporting depth around it would pollute per-minute aggregates.
* Levels with non-finite or non-positive price, or non-positive quantity, are ignored (a zero
  quantity is a deletion in L2 diff feeds, so it can appear in a book that was assembled naively).
* A band wider than the visible book is flagged, not passed off as measured: ``bid_exceeds_book``
  / ``ask_exceeds_book`` (per band) are True where the side's deepest visible level is nearer to
  the reference than the band's bound, so the book the venue sent (a 20-level Hyperliquid push, a
  500-level snapshot spanning +-2.6 %) ends inside the band and the depth is only a lower bound. The
  sums keep that lower bound. ``complete_within`` is how far from the reference the caller knows the
  book to be complete (perpflow's periodic snapshots carry every level within +-10 % of mid): bands
  up to it are never flagged, because an empty stretch there is real. Invalid books are not
  flagged (``valid`` already says they measure nothing).

Float robustness of the inclusive bounds
----------------------------------------
The spec asks for the comparison to survive float edge errors (e.g. mid 100, 1 % band, bid at
99.0). We use a relative epsilon instead of integer ticks so callers need no per-instrument tick
table: with ``d`` the level's relative distance from the reference, the level is in band ``x`` iff
``d - rel_tol <= x``. ``rel_tol = 1e-12`` is ~5000x the rounding error of computing ``d`` (a few
ulp, ~2e-16) yet smaller than the smallest *real* distance between an off-band tick-grid price and
a band bound, which is ``tick / (2e4 * price)`` for basis-point bands around a half-tick mid; that
stays above 1e-12 whenever ``tick / price >= 2e-8``, true for every listed perpetual (BTC at $100k
with a 0.1 tick is 1e-6).

Layouts
-------
``depth_bands`` takes one book as ``(k, 2)`` arrays / lists of ``(price, qty)`` and is written as a
plain per-band loop so it can serve as the reference implementation. ``depth_bands_batch`` takes
many books in the Arrow list layout (flat price/qty arrays plus ``offsets``, so snapshot ``i``'s
levels are ``[offsets[i], offsets[i+1])``); a DuckDB ``LIST`` column read through pyarrow yields
exactly that, and a long table sorted by snapshot gives it via :func:`offsets_from_sorted_ids`.
Each level's band is found with one ``searchsorted`` and summed with one ``bincount``, so the cost
is linear in the number of levels. :func:`depth_per_minute` then gives the 1-min mean/min/last.

Timestamps everywhere in ``transforms`` are epoch seconds (int or float).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import numpy as np
from numpy.typing import ArrayLike, NDArray

BANDS: tuple[float, ...] = (0.001, 0.0025, 0.005, 0.01, 0.02, 0.05, 0.10)
REL_TOL: float = 1e-12
# Bounds peak memory of the batch path (~15 temporaries of 8 bytes per level).
_BATCH_CHUNK_LEVELS = 4_000_000

Reference = Literal["mid", "touch"]

_SIDE_FIELDS = ("bid_base", "ask_base", "bid_quote", "ask_quote", "bid_usd", "ask_usd", "imbalance")
_SCALAR_FIELDS = ("best_bid", "best_ask", "mid", "spread_bps")


def band_label(band: float) -> str:
    """Column suffix for a band, Coin Metrics style: 0.001 -> "0_1", 0.02 -> "2", 0.1 -> "10"."""
    return f"{round(band * 100, 6):g}".replace(".", "_")


@dataclass(frozen=True, eq=False)
class DepthBands:
    """Depth bands for one book (``depth_bands``) or many (``depth_bands_batch``).

    Shapes: with ``S = ()`` for one book and ``S = (n,)`` for a batch, ``valid`` and the
    ``_SCALAR_FIELDS`` have shape ``S``; the per-band fields have shape ``S + (len(bands),)``.
    Invalid books carry NaN in every numeric field.
    """

    bands: tuple[float, ...]
    valid: NDArray[np.bool_]
    best_bid: NDArray[np.float64]
    best_ask: NDArray[np.float64]
    mid: NDArray[np.float64]
    spread_bps: NDArray[np.float64]
    bid_base: NDArray[np.float64]
    ask_base: NDArray[np.float64]
    bid_quote: NDArray[np.float64]
    ask_quote: NDArray[np.float64]
    bid_usd: NDArray[np.float64]
    ask_usd: NDArray[np.float64]
    imbalance: NDArray[np.float64]
    bid_exceeds_book: NDArray[np.bool_]
    ask_exceeds_book: NDArray[np.bool_]

    @property
    def band_exceeds_book(self) -> NDArray[np.bool_]:
        """Per band: either side's visible book ends inside it (its depth is a lower bound)."""
        return self.bid_exceeds_book | self.ask_exceeds_book

    def flag_columns(self) -> dict[str, NDArray[np.bool_]]:
        """``{bid,ask}_exceeds_book_<label>`` per band (kept out of :meth:`columns`, whose numeric
        columns :func:`depth_per_minute` averages)."""
        return {f"{side}_exceeds_book_{band_label(band)}": getattr(self, f"{side}_exceeds_book")[..., j]
                for side in ("bid", "ask") for j, band in enumerate(self.bands)}

    def columns(self) -> dict[str, NDArray]:
        """Flat columns for a table: ``valid``, ``best_bid``, ``best_ask``, ``mid``, ``spread_bps``
        and ``{bid,ask}_{base,quote,usd}_<label>`` / ``imbalance_<label>`` per band (labels from
        :func:`band_label`, e.g. ``bid_usd_2``, ``imbalance_0_25``)."""
        cols: dict[str, NDArray] = {"valid": self.valid}
        cols.update({name: getattr(self, name) for name in _SCALAR_FIELDS})
        for name in _SIDE_FIELDS:
            values = getattr(self, name)
            for j, band in enumerate(self.bands):
                cols[f"{name}_{band_label(band)}"] = values[..., j]
        return cols


def _check_bands(bands: ArrayLike) -> NDArray[np.float64]:
    arr = np.asarray(bands, dtype=np.float64)
    if arr.ndim != 1 or arr.size == 0 or np.any(arr <= 0) or np.any(np.diff(arr) <= 0):
        raise ValueError("bands must be a non-empty, strictly increasing sequence of positive fractions")
    return arr


def _usable(price: NDArray, qty: NDArray) -> NDArray[np.bool_]:
    return np.isfinite(price) & (price > 0) & np.isfinite(qty) & (qty > 0)


def _distance(price: NDArray, ref: NDArray | float, is_bid: bool) -> NDArray:
    """Relative distance of levels from the reference, positive away from the book's centre.

    Shared by the scalar and batch paths so both classify a level from bit-identical floats."""
    return (ref - price) / ref if is_bid else (price - ref) / ref


def _base_quote(price: NDArray, qty: NDArray, contract_size: float, inverse: bool) -> tuple[NDArray, NDArray]:
    if inverse:
        quote = qty * contract_size
        return quote / price, quote
    base = qty * contract_size
    return base, base * price


def _references(best_bid: NDArray | float, best_ask: NDArray | float, reference: Reference):
    mid = (np.asarray(best_bid) + np.asarray(best_ask)) / 2.0
    if reference == "mid":
        return mid, mid, mid
    if reference == "touch":
        return mid, best_bid, best_ask
    raise ValueError(f"reference must be 'mid' or 'touch', got {reference!r}")


def _imbalance(bid_quote: NDArray, ask_quote: NDArray) -> NDArray:
    total = bid_quote + ask_quote
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(total > 0, (bid_quote - ask_quote) / total, np.nan)


def _levels(side: ArrayLike) -> tuple[NDArray, NDArray]:
    arr = np.asarray(side, dtype=np.float64).reshape(-1, 2)
    price, qty = arr[:, 0], arr[:, 1]
    keep = _usable(price, qty)
    return price[keep], qty[keep]


def depth_bands(
    bids: ArrayLike,
    asks: ArrayLike,
    *,
    bands: ArrayLike = BANDS,
    reference: Reference = "mid",
    quote_usd_rate: float = 1.0,
    contract_size: float = 1.0,
    inverse: bool = False,
    rel_tol: float = REL_TOL,
    complete_within: float = 0.0,
) -> DepthBands:
    """Depth bands of one L2 book given as ``(k, 2)`` ``(price, qty)`` arrays or lists, any order.

    ``complete_within``: the fraction from the reference up to which the book is known complete
    (see the module docstring: wider bands that reach past the deepest level are flagged)."""
    band_arr = _check_bands(bands)
    bid_p, bid_q = _levels(bids)
    ask_p, ask_q = _levels(asks)
    if bid_p.size == 0 or ask_p.size == 0 or bid_p.max() >= ask_p.min():
        return DepthBands(
            bands=tuple(band_arr.tolist()),
            valid=np.bool_(False),
            **{name: np.float64(np.nan) for name in _SCALAR_FIELDS},
            **{name: np.full(band_arr.size, np.nan) for name in _SIDE_FIELDS},
            bid_exceeds_book=np.zeros(band_arr.size, bool),
            ask_exceeds_book=np.zeros(band_arr.size, bool),
        )

    best_bid, best_ask = bid_p.max(), ask_p.min()
    mid, bid_ref, ask_ref = _references(best_bid, best_ask, reference)
    sums = {}
    for name, price, qty, ref, is_bid in (("bid", bid_p, bid_q, bid_ref, True), ("ask", ask_p, ask_q, ask_ref, False)):
        dist = _distance(price, ref, is_bid)
        base, quote = _base_quote(price, qty, contract_size, inverse)
        inside = [dist - rel_tol <= band for band in band_arr]
        sums[f"{name}_base"] = np.array([base[m].sum() for m in inside])
        sums[f"{name}_quote"] = np.array([quote[m].sum() for m in inside])
        sums[f"{name}_exceeds_book"] = _exceeds_book(band_arr, dist.max(), rel_tol, complete_within)
    return DepthBands(
        bands=tuple(band_arr.tolist()),
        valid=np.bool_(True),
        best_bid=np.float64(best_bid),
        best_ask=np.float64(best_ask),
        mid=np.float64(mid),
        spread_bps=np.float64((best_ask - best_bid) / mid * 1e4),
        bid_usd=sums["bid_quote"] * quote_usd_rate,
        ask_usd=sums["ask_quote"] * quote_usd_rate,
        imbalance=_imbalance(sums["bid_quote"], sums["ask_quote"]),
        **sums,
    )


def _exceeds_book(band_arr: NDArray, deepest: NDArray | float, rel_tol: float, complete_within: float) -> NDArray:
    """Bands whose bound lies beyond the deepest visible level (``deepest``: its distance from the
    reference, one per book) and beyond ``complete_within``; mirror of the inclusion test, so a
    level exactly on a bound covers that band."""
    deepest = np.asarray(deepest, dtype=np.float64)[..., None]
    return (band_arr > deepest + rel_tol) & (band_arr > complete_within + rel_tol)


def offsets_from_sorted_ids(snapshot_ids: ArrayLike, n_snapshots: int) -> NDArray[np.int64]:
    """Arrow-style offsets for a long table whose rows are sorted by dense snapshot id ``0..n-1``.

    Snapshots without rows get an empty range (and come out invalid)."""
    ids = np.asarray(snapshot_ids)
    if ids.size and (np.any(np.diff(ids) < 0) or ids[0] < 0 or ids[-1] >= n_snapshots):
        raise ValueError("snapshot_ids must be sorted and within [0, n_snapshots)")
    return np.searchsorted(ids, np.arange(n_snapshots + 1), side="left").astype(np.int64)


def _best_per_snapshot(price: NDArray, usable: NDArray, offsets: NDArray, is_bid: bool) -> NDArray:
    fill = -np.inf if is_bid else np.inf
    masked = np.where(usable, price, fill)
    n = offsets.size - 1
    best = np.full(n, fill)
    nonempty = np.diff(offsets) > 0
    if masked.size:
        # reduceat over only the non-empty starts: each range then ends at the next non-empty
        # start, which is exactly the end of its own segment because the skipped ones are empty.
        reduce = np.maximum.reduceat if is_bid else np.minimum.reduceat
        best[nonempty] = reduce(masked, offsets[:-1][nonempty])
    return best


def _deepest_distance(price: NDArray, usable: NDArray, offsets: NDArray, ref: NDArray, is_bid: bool) -> NDArray:
    """Distance from the reference of each snapshot's deepest usable level (the lowest bid or the
    highest ask); -inf for an empty side."""
    deepest = _best_per_snapshot(price, usable, offsets, is_bid=not is_bid)
    with np.errstate(invalid="ignore"):
        return np.where(np.isfinite(deepest), _distance(deepest, ref, is_bid), -np.inf)


def _side_sums(
    price: NDArray,
    qty: NDArray,
    usable: NDArray,
    offsets: NDArray,
    ref: NDArray,
    is_bid: bool,
    band_arr: NDArray,
    rel_tol: float,
    contract_size: NDArray,
    inverse: NDArray,
) -> tuple[NDArray, NDArray]:
    n, n_bands = offsets.size - 1, band_arr.size
    snapshot = np.repeat(np.arange(n), np.diff(offsets))
    ref_per_level = ref[snapshot]
    with np.errstate(invalid="ignore"):
        dist = _distance(price, ref_per_level, is_bid)
    # First band whose bound reaches the level; identical to the scalar `dist - rel_tol <= band`.
    band_idx = np.searchsorted(band_arr, dist - rel_tol, side="left")
    keep = usable & np.isfinite(ref_per_level) & (band_idx < n_bands)
    kept_snapshot = snapshot[keep]
    price, qty = price[keep], qty[keep]
    # Per level in units of one contract (base units: contract_size 1); the contract size scales
    # each snapshot's sums afterwards, which spares two passes over every level.
    if inverse.any():
        is_inverse = inverse[kept_snapshot]
        base, quote = np.where(is_inverse, qty / price, qty), np.where(is_inverse, qty, qty * price)
    else:
        base, quote = qty, qty * price
    key = kept_snapshot * n_bands + band_idx[keep]
    per_band = [np.bincount(key, weights=w, minlength=n * n_bands).astype(np.float64, copy=False)
                .reshape(n, n_bands) * contract_size[:, None] for w in (base, quote)]
    return per_band[0].cumsum(axis=1), per_band[1].cumsum(axis=1)


def _batch_chunk(
    bid_price: NDArray,
    bid_qty: NDArray,
    bid_offsets: NDArray,
    ask_price: NDArray,
    ask_qty: NDArray,
    ask_offsets: NDArray,
    band_arr: NDArray,
    reference: Reference,
    rate: NDArray,
    contract_size: NDArray,
    inverse: NDArray,
    rel_tol: float,
    complete_within: float,
) -> dict[str, NDArray]:
    bid_ok, ask_ok = _usable(bid_price, bid_qty), _usable(ask_price, ask_qty)
    best_bid = _best_per_snapshot(bid_price, bid_ok, bid_offsets, is_bid=True)
    best_ask = _best_per_snapshot(ask_price, ask_ok, ask_offsets, is_bid=False)
    valid = np.isfinite(best_bid) & np.isfinite(best_ask) & (best_bid < best_ask)
    best_bid, best_ask = np.where(valid, best_bid, np.nan), np.where(valid, best_ask, np.nan)
    mid, bid_ref, ask_ref = _references(best_bid, best_ask, reference)
    common = (band_arr, rel_tol, contract_size, inverse)
    bid_base, bid_quote = _side_sums(bid_price, bid_qty, bid_ok, bid_offsets, bid_ref, True, *common)
    ask_base, ask_quote = _side_sums(ask_price, ask_qty, ask_ok, ask_offsets, ask_ref, False, *common)
    out = {
        "valid": valid,
        "best_bid": best_bid,
        "best_ask": best_ask,
        "mid": mid,
        "spread_bps": (best_ask - best_bid) / mid * 1e4,
        "bid_base": bid_base,
        "ask_base": ask_base,
        "bid_quote": bid_quote,
        "ask_quote": ask_quote,
        "bid_usd": bid_quote * rate[:, None],
        "ask_usd": ask_quote * rate[:, None],
        "imbalance": _imbalance(bid_quote, ask_quote),
    }
    for name in _SIDE_FIELDS:
        out[name][~valid] = np.nan
    for name, price, ok, offsets, ref, is_bid in (("bid", bid_price, bid_ok, bid_offsets, bid_ref, True),
                                                  ("ask", ask_price, ask_ok, ask_offsets, ask_ref, False)):
        deepest = _deepest_distance(price, ok, offsets, ref, is_bid)
        out[f"{name}_exceeds_book"] = _exceeds_book(band_arr, deepest, rel_tol, complete_within) & valid[:, None]
    return out


def level_chunks(bid_offsets: NDArray, ask_offsets: NDArray) -> list[tuple[int, int]]:
    """Snapshot ranges ``[lo, hi)`` of about ``_BATCH_CHUNK_LEVELS`` levels (both sides) each, at
    least one snapshot per range, so batch paths bound their memory."""
    levels = bid_offsets + ask_offsets
    bounds, start, n = [], 0, bid_offsets.size - 1
    if n == 0:
        return [(0, 0)]
    while start < n:
        stop = int(np.searchsorted(levels, levels[start] + _BATCH_CHUNK_LEVELS, side="right")) - 1
        stop = min(max(stop, start + 1), n)
        bounds.append((start, stop))
        start = stop
    return bounds


def depth_bands_batch(
    bid_price: ArrayLike,
    bid_qty: ArrayLike,
    bid_offsets: ArrayLike,
    ask_price: ArrayLike,
    ask_qty: ArrayLike,
    ask_offsets: ArrayLike,
    *,
    bands: ArrayLike = BANDS,
    reference: Reference = "mid",
    quote_usd_rate: float | ArrayLike = 1.0,
    contract_size: float | ArrayLike = 1.0,
    inverse: bool | ArrayLike = False,
    rel_tol: float = REL_TOL,
    complete_within: float = 0.0,
) -> DepthBands:
    """Depth bands for ``n = len(bid_offsets) - 1`` books in Arrow list layout.

    ``bid_offsets``/``ask_offsets`` have length ``n + 1``; levels of a snapshot may be in any
    order. ``quote_usd_rate``, ``contract_size`` and ``inverse`` are scalars or one value per
    snapshot (markets of different units in one batch). Results equal ``depth_bands``
    applied per snapshot up to rounding: sums run in another order, and a snapshot's sums are scaled
    by its contract size instead of each level. For a pyarrow ``ListArray`` of
    ``struct<price, qty>``: ``levels = arr.flatten()``, then ``levels.field("price")``,
    ``levels.field("qty")`` and ``arr.offsets`` minus ``arr.offsets[0]`` (non-zero for a slice).
    Snapshots are processed in chunks of ~4M levels to bound memory.
    """
    band_arr = _check_bands(bands)
    bid_offsets = np.asarray(bid_offsets, dtype=np.int64)
    ask_offsets = np.asarray(ask_offsets, dtype=np.int64)
    if bid_offsets.shape != ask_offsets.shape or bid_offsets.ndim != 1 or bid_offsets.size == 0:
        raise ValueError("bid_offsets and ask_offsets must be 1-D with the same length n + 1")
    if any(off[0] != 0 or np.any(np.diff(off) < 0) for off in (bid_offsets, ask_offsets)):
        raise ValueError("offsets must start at 0 and be non-decreasing (re-base a sliced Arrow array)")
    n = bid_offsets.size - 1
    arrays = [np.asarray(a, dtype=np.float64) for a in (bid_price, bid_qty, ask_price, ask_qty)]
    if arrays[0].size != bid_offsets[-1] or arrays[1].size != bid_offsets[-1] \
            or arrays[2].size != ask_offsets[-1] or arrays[3].size != ask_offsets[-1]:
        raise ValueError("the last offset must equal the number of levels on that side")
    rate = np.broadcast_to(np.asarray(quote_usd_rate, dtype=np.float64), (n,))
    size = np.broadcast_to(np.asarray(contract_size, dtype=np.float64), (n,))
    inverse_arr = np.broadcast_to(np.asarray(inverse, dtype=bool), (n,))

    parts = []
    for lo, hi in level_chunks(bid_offsets, ask_offsets):
        b0, b1, a0, a1 = bid_offsets[lo], bid_offsets[hi], ask_offsets[lo], ask_offsets[hi]
        parts.append(_batch_chunk(
            arrays[0][b0:b1], arrays[1][b0:b1], bid_offsets[lo:hi + 1] - b0,
            arrays[2][a0:a1], arrays[3][a0:a1], ask_offsets[lo:hi + 1] - a0,
            band_arr, reference, rate[lo:hi], size[lo:hi], inverse_arr[lo:hi], rel_tol, complete_within,
        ))
    merged = {key: np.concatenate([p[key] for p in parts]) for key in parts[0]}
    return DepthBands(bands=tuple(band_arr.tolist()), **merged)


@dataclass(frozen=True, eq=False)
class BucketAggregate:
    """Per-bucket statistics; only buckets containing at least one row are present.

    ``bucket_start`` (m,) int64 epoch seconds; ``n_rows`` (m,) rows in the bucket; ``mean``, ``min``,
    ``last`` and ``n_valid`` have shape ``(m,) + values.shape[1:]`` and ignore NaN (``last`` is the
    last non-NaN value; all-NaN buckets give NaN and ``n_valid == 0``)."""

    bucket_start: NDArray[np.int64]
    n_rows: NDArray[np.int64]
    n_valid: NDArray[np.int64]
    mean: NDArray[np.float64]
    min: NDArray[np.float64]
    last: NDArray[np.float64]


def aggregate_buckets(ts: ArrayLike, values: ArrayLike, bucket_s: int = 60) -> BucketAggregate:
    """Mean / min / last of ``values`` (shape ``(n,)`` or ``(n, k)``) per ``bucket_s`` bucket.

    Buckets are ``[k * bucket_s, (k + 1) * bucket_s)`` in epoch seconds, labelled by their start.
    Invalid depth snapshots are NaN rows, so they drop out of mean/min/last but still count in
    ``n_rows``, which lets the caller see how much of a minute was unusable. Rows need not be
    sorted; ties keep input order for ``last``.
    """
    ts_arr = np.asarray(ts, dtype=np.float64)
    vals = np.asarray(values, dtype=np.float64)
    if vals.shape[:1] != ts_arr.shape or ts_arr.ndim != 1:
        raise ValueError("values must have one row per timestamp")
    order = np.argsort(ts_arr, kind="stable")
    ts_arr, vals = ts_arr[order], vals[order]
    flat = vals.reshape(vals.shape[0], -1)
    bucket = np.floor(ts_arr / bucket_s).astype(np.int64)
    if bucket.size == 0:
        empty = np.empty((0, *vals.shape[1:]))
        return BucketAggregate(np.empty(0, np.int64), np.empty(0, np.int64), empty.astype(np.int64),
                               empty, empty.copy(), empty.copy())
    starts = np.flatnonzero(np.r_[True, bucket[1:] != bucket[:-1]])
    valid = ~np.isnan(flat)
    n_valid = np.add.reduceat(valid.astype(np.int64), starts, axis=0)
    total = np.add.reduceat(np.where(valid, flat, 0.0), starts, axis=0)
    with np.errstate(invalid="ignore", divide="ignore"):
        mean = np.where(n_valid > 0, total / n_valid, np.nan)
    minimum = np.fmin.reduceat(flat, starts, axis=0)
    row = np.where(valid, np.arange(flat.shape[0])[:, None], -1)
    last_row = np.maximum.reduceat(row, starts, axis=0)
    last = np.where(last_row >= 0, np.take_along_axis(flat, np.maximum(last_row, 0), axis=0), np.nan)
    shape = (starts.size, *vals.shape[1:])
    return BucketAggregate(
        bucket_start=bucket[starts] * bucket_s,
        n_rows=np.diff(np.r_[starts, bucket.size]).astype(np.int64),
        n_valid=n_valid.reshape(shape),
        mean=mean.reshape(shape),
        min=minimum.reshape(shape),
        last=last.reshape(shape),
    )


def depth_per_minute(ts: ArrayLike, depth: DepthBands, bucket_s: int = 60) -> dict[str, NDArray]:
    """Per-minute mean / min / last of every numeric column of a ``depth_bands_batch`` result.

    ``ts`` holds one timestamp per snapshot. Keys: ``bucket_start`` (int64 epoch s),
    ``n_snapshots``, ``n_valid`` (valid books in the minute) and ``<column>_{mean,min,last}`` for
    every column of :meth:`DepthBands.columns` except ``valid`` (e.g. ``bid_usd_2_mean``,
    ``spread_bps_last``). Invalid books are NaN rows and so are skipped by every statistic.
    """
    cols = depth.columns()
    del cols["valid"]
    names = list(cols)
    agg = aggregate_buckets(ts, np.column_stack([cols[name] for name in names]), bucket_s)
    out: dict[str, NDArray] = {
        "bucket_start": agg.bucket_start,
        "n_snapshots": agg.n_rows,
        "n_valid": agg.n_valid[:, names.index("mid")],
    }
    for stat in ("mean", "min", "last"):
        values = getattr(agg, stat)
        out.update({f"{name}_{stat}": values[:, j] for j, name in enumerate(names)})
    return out
