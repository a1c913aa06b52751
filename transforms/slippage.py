"""Slippage of a market order of X USD walked through an L2 book (analytics.md §9.5, Kaiko's definition).

Definition
----------
* A buy of X (quote currency) walks the asks from the best upward, taking ``q_i = min(size_i,
  remaining / p_i)`` until nothing remains; the average price is ``p_avg = X / sum(q_i)`` and
  ``ask_slippage = p_avg / ref - 1``. A sell walks the bids from the best downward likewise and
  ``bid_slippage = 1 - p_avg / ref``. Both are fractions (bps = x 1e4), positive for a cost.
* ``ref`` is the mid (Kaiko's default ``slippage_ref=mid_price``) or, with ``reference="best"``, the
  best ask for buys and the best bid for sells.
* Sizes in contracts: linear contracts hold ``contract_size`` base units each; inverse contracts
  are worth ``contract_size`` USD each, so a level's notional is exactly ``qty * contract_size``
  and its base is that over the price (the same rules as ``transforms.depth``).
* Honest nulls: where the visible side holds less notional than X the slippage and average price
  are NaN and ``too_shallow`` is True (Kaiko returns null). Where the walk reaches the last visible
  level, ``book_truncated`` is True: the venue may have had more levels than it showed (a 20-level
  Hyperliquid book), so the figure rests on the edge of what was seen. A crossed, locked or
  one-sided book is invalid (``valid`` False, everything NaN, no flags): its mid means nothing.
* Levels with non-finite or non-positive price or quantity are ignored. Books perpflow had to
  uncross locally (dYdX, ``uncrossed`` > 0) are the caller's to leave out, as the depth asset does.
* Kaiko's aggregation is the mean of the snapshots in an interval: ``transforms.depth.aggregate_buckets``
  over the numeric :meth:`Slippage.columns` gives the 1-minute mean (NaN snapshots drop out, so
  pair it with the count of ``too_shallow`` ones).

Layout
------
``slippage_batch`` takes many books in the Arrow list layout of ``transforms.depth.depth_bands_batch``
(flat price/qty arrays with ``offsets``), so an asset can hand it a day of ``raw.book_snapshots``
rows read through pyarrow. Levels of a snapshot may come in any order. The walk is vectorised:
levels are sorted per snapshot, cumulative notional is a segmented cumulative sum, and the level
that completes an order of X is the first whose cumulative notional reaches X, so a batch costs a
few passes over its levels per order size. ``slippage`` wraps it for one book.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import numpy as np
from numpy.typing import ArrayLike, NDArray

from transforms.depth import level_chunks

ORDER_SIZES_USD: tuple[float, ...] = (10_000.0, 100_000.0, 1_000_000.0, 10_000_000.0)

SlippageReference = Literal["mid", "best"]


def size_label(size_usd: float) -> str:
    """Column suffix for an order size: 10_000 -> "10k", 1_000_000 -> "1m"."""
    for divisor, unit in ((1e9, "b"), (1e6, "m"), (1e3, "k")):
        if size_usd >= divisor:
            return f"{size_usd / divisor:g}{unit}"
    return f"{size_usd:g}"


@dataclass(frozen=True, eq=False)
class Slippage:
    """Slippage of market orders for ``n`` books and ``k`` order sizes.

    ``valid``, ``best_bid``, ``best_ask``, ``mid`` have shape ``(n,)``; every other field
    ``(n, k)``: ``{ask,bid}_slippage`` (fraction, NaN where the book cannot fill or is invalid),
    ``{ask,bid}_avg_price``, ``{ask,bid}_too_shallow`` and ``{ask,bid}_book_truncated``."""

    sizes_usd: tuple[float, ...]
    reference: SlippageReference
    valid: NDArray[np.bool_]
    best_bid: NDArray[np.float64]
    best_ask: NDArray[np.float64]
    mid: NDArray[np.float64]
    ask_slippage: NDArray[np.float64]
    bid_slippage: NDArray[np.float64]
    ask_avg_price: NDArray[np.float64]
    bid_avg_price: NDArray[np.float64]
    ask_too_shallow: NDArray[np.bool_]
    bid_too_shallow: NDArray[np.bool_]
    ask_book_truncated: NDArray[np.bool_]
    bid_book_truncated: NDArray[np.bool_]

    def columns(self) -> dict[str, NDArray]:
        """Flat columns: ``valid``, ``best_bid``, ``best_ask``, ``mid`` and per size
        ``{ask,bid}_slippage_bps_<label>``, ``{ask,bid}_too_shallow_<label>``,
        ``{ask,bid}_book_truncated_<label>`` (labels from :func:`size_label`, e.g. ``ask_slippage_bps_100k``)."""
        cols: dict[str, NDArray] = {name: getattr(self, name) for name in ("valid", "best_bid", "best_ask", "mid")}
        for j, size in enumerate(self.sizes_usd):
            label = size_label(size)
            for side in ("ask", "bid"):
                cols[f"{side}_slippage_bps_{label}"] = getattr(self, f"{side}_slippage")[:, j] * 1e4
                cols[f"{side}_too_shallow_{label}"] = getattr(self, f"{side}_too_shallow")[:, j]
                cols[f"{side}_book_truncated_{label}"] = getattr(self, f"{side}_book_truncated")[:, j]
        return cols


def _check_sizes(sizes_usd: ArrayLike) -> NDArray[np.float64]:
    sizes = np.asarray(sizes_usd, dtype=np.float64)
    if sizes.ndim != 1 or sizes.size == 0 or not np.all(np.isfinite(sizes) & (sizes > 0)):
        raise ValueError("sizes_usd must be a non-empty sequence of positive, finite USD amounts")
    return sizes


def _walk(price: NDArray, qty: NDArray, offsets: NDArray, is_bid: bool, sizes: NDArray, quote_usd_rate: NDArray,
          contract_size: NDArray, inverse: NDArray) -> tuple[NDArray, NDArray, NDArray, NDArray]:
    """Average fill price, too-shallow and truncated flags, and best price per snapshot of one side."""
    n, k = offsets.size - 1, sizes.size
    snapshot = np.repeat(np.arange(n), np.diff(offsets))
    keep = np.isfinite(price) & (price > 0) & np.isfinite(qty) & (qty > 0)
    if not keep.all():
        snapshot, price, qty = snapshot[keep], price[keep], qty[keep]
    # Best level first within each snapshot: bids descending, asks ascending. Stored books are
    # already in that order (records keep them best first), so the sort is usually skipped;
    # otherwise two stable argsorts, several times faster than np.lexsort on millions of levels.
    key = -price if is_bid else price
    if np.any((snapshot[1:] == snapshot[:-1]) & (key[1:] < key[:-1])):
        by_price = np.argsort(key, kind="stable")
        order = by_price[np.argsort(snapshot[by_price], kind="stable")]
        snapshot, price, qty = snapshot[order], price[order], qty[order]
    # Per level, notional and base in units of one contract; each book's contract size and quote
    # rate scale its sums afterwards (linear: notional = qty * price; inverse: notional = qty).
    if inverse.any():
        level_inverse = inverse[snapshot]
        notional, base = np.where(level_inverse, qty, qty * price), np.where(level_inverse, qty / price, qty)
    else:
        notional, base = qty * price, qty
    usd_per_unit = contract_size * quote_usd_rate

    counts = np.bincount(snapshot, minlength=n)
    starts = np.cumsum(counts) - counts
    ends = starts + counts
    nonempty = counts > 0
    best = np.full(n, np.nan)
    best[nonempty] = price[starts[nonempty]]
    # Running totals over every book of the batch; a book's sums are differences of them.
    running_notional, running_base = np.r_[0.0, np.cumsum(notional)], np.r_[0.0, np.cumsum(base)]
    total_usd = (running_notional[ends] - running_notional[starts]) * usd_per_unit

    avg = np.full((n, k), np.nan)
    shallow = np.zeros((n, k), bool)
    truncated = np.zeros((n, k), bool)
    for j, x in enumerate(sizes):
        fillable = total_usd >= x
        shallow[:, j] = ~fillable
        if not fillable.any():
            continue
        rows = np.flatnonzero(fillable)
        first, scale = starts[rows], usd_per_unit[rows]
        want = x / scale   # the order in the book's own units
        # The level completing the order: the first whose cumulative notional reaches it, found in
        # the running total (non-decreasing), kept inside the book against rounding.
        last = np.searchsorted(running_notional[1:], running_notional[first] + want, side="left")
        last = np.clip(last, first, ends[rows] - 1)
        prior_notional = running_notional[last] - running_notional[first]
        prior_base = running_base[last] - running_base[first]
        # What remains of the order is bought at the completing level: notional / price in base
        # units for linear books; for inverse books notional is quote, also / price.
        filled_base = (prior_base + (want - prior_notional) / price[last]) * contract_size[rows]
        avg[rows, j] = x / quote_usd_rate[rows] / filled_base
        truncated[rows, j] = last == ends[rows] - 1
    return avg, shallow, truncated, best


def slippage_batch(
    bid_price: ArrayLike,
    bid_qty: ArrayLike,
    bid_offsets: ArrayLike,
    ask_price: ArrayLike,
    ask_qty: ArrayLike,
    ask_offsets: ArrayLike,
    *,
    sizes_usd: ArrayLike = ORDER_SIZES_USD,
    reference: SlippageReference = "mid",
    quote_usd_rate: float | ArrayLike = 1.0,
    contract_size: float | ArrayLike = 1.0,
    inverse: bool | ArrayLike = False,
) -> Slippage:
    """Slippage of a market buy and sell of each of ``sizes_usd`` (USD) for ``n = len(bid_offsets) - 1``
    books in Arrow list layout (see the module docstring). ``quote_usd_rate``, ``contract_size``
    and ``inverse`` are scalars or one per snapshot. Order sizes are USD; a quote currency other
    than USD is converted with ``quote_usd_rate`` (USD per unit of quote)."""
    sizes = _check_sizes(sizes_usd)
    if reference not in ("mid", "best"):
        raise ValueError(f"reference must be 'mid' or 'best', got {reference!r}")
    bid_offsets = np.asarray(bid_offsets, dtype=np.int64)
    ask_offsets = np.asarray(ask_offsets, dtype=np.int64)
    if bid_offsets.shape != ask_offsets.shape or bid_offsets.ndim != 1 or bid_offsets.size == 0:
        raise ValueError("bid_offsets and ask_offsets must be 1-D with the same length n + 1")
    if any(off[0] != 0 or np.any(np.diff(off) < 0) for off in (bid_offsets, ask_offsets)):
        raise ValueError("offsets must start at 0 and be non-decreasing (re-base a sliced Arrow array)")
    arrays = [np.asarray(a, dtype=np.float64) for a in (bid_price, bid_qty, ask_price, ask_qty)]
    if arrays[0].size != bid_offsets[-1] or arrays[1].size != bid_offsets[-1] \
            or arrays[2].size != ask_offsets[-1] or arrays[3].size != ask_offsets[-1]:
        raise ValueError("the last offset must equal the number of levels on that side")
    n = bid_offsets.size - 1
    rate = np.broadcast_to(np.asarray(quote_usd_rate, dtype=np.float64), (n,))
    size = np.broadcast_to(np.asarray(contract_size, dtype=np.float64), (n,))
    inv = np.broadcast_to(np.asarray(inverse, dtype=bool), (n,))

    parts = {"ask": [], "bid": []}
    # Chunks bound memory and keep the running totals the walk subtracts small (float precision).
    for lo, hi in level_chunks(bid_offsets, ask_offsets):
        for side, price, qty, offsets, is_bid in (("ask", arrays[2], arrays[3], ask_offsets, False),
                                                  ("bid", arrays[0], arrays[1], bid_offsets, True)):
            a, b = offsets[lo], offsets[hi]
            parts[side].append(_walk(price[a:b], qty[a:b], offsets[lo:hi + 1] - a, is_bid, sizes,
                                     rate[lo:hi], size[lo:hi], inv[lo:hi]))
    ask_avg, ask_shallow, ask_trunc, best_ask = (np.concatenate(p) for p in zip(*parts["ask"], strict=True))
    bid_avg, bid_shallow, bid_trunc, best_bid = (np.concatenate(p) for p in zip(*parts["bid"], strict=True))
    valid = np.isfinite(best_bid) & np.isfinite(best_ask) & (best_bid < best_ask)
    mid = np.where(valid, (best_bid + best_ask) / 2.0, np.nan)
    ask_ref = mid if reference == "mid" else np.where(valid, best_ask, np.nan)
    bid_ref = mid if reference == "mid" else np.where(valid, best_bid, np.nan)
    invalid = ~valid[:, None]
    return Slippage(
        sizes_usd=tuple(sizes.tolist()),
        reference=reference,
        valid=valid,
        best_bid=np.where(valid, best_bid, np.nan),
        best_ask=np.where(valid, best_ask, np.nan),
        mid=mid,
        ask_slippage=np.where(invalid, np.nan, ask_avg / ask_ref[:, None] - 1.0),
        bid_slippage=np.where(invalid, np.nan, 1.0 - bid_avg / bid_ref[:, None]),
        ask_avg_price=np.where(invalid, np.nan, ask_avg),
        bid_avg_price=np.where(invalid, np.nan, bid_avg),
        ask_too_shallow=ask_shallow & ~invalid,
        bid_too_shallow=bid_shallow & ~invalid,
        ask_book_truncated=ask_trunc & ~invalid,
        bid_book_truncated=bid_trunc & ~invalid,
    )


def slippage(
    bids: ArrayLike,
    asks: ArrayLike,
    *,
    sizes_usd: ArrayLike = ORDER_SIZES_USD,
    reference: SlippageReference = "mid",
    quote_usd_rate: float = 1.0,
    contract_size: float = 1.0,
    inverse: bool = False,
) -> Slippage:
    """Slippage for one book given as ``(k, 2)`` ``(price, qty)`` arrays or lists (a batch of one)."""
    bid_arr = np.asarray(bids, dtype=np.float64).reshape(-1, 2)
    ask_arr = np.asarray(asks, dtype=np.float64).reshape(-1, 2)
    return slippage_batch(bid_arr[:, 0], bid_arr[:, 1], [0, len(bid_arr)], ask_arr[:, 0], ask_arr[:, 1],
                          [0, len(ask_arr)], sizes_usd=sizes_usd, reference=reference,
                          quote_usd_rate=quote_usd_rate, contract_size=contract_size, inverse=inverse)
