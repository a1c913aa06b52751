"""Open interest and funding aggregated per base asset and venue and across venues (analytics.md §7, §9.3).

Inputs are column frames (a mapping of column name to a 1-D array, as ``fetch`` returns DuckDB
rows), one row per observation; outputs are column frames of the same kind, one row per
``(asset, venue, pool_counterparty, bucket_start)``, ready for ``arrow_rows``. Timestamps are
epoch seconds; buckets are ``[k * bucket_s, (k + 1) * bucket_s)`` labelled by their start
(``GRAINS``: 5 minutes and 1 hour).

Open interest (:func:`open_interest_by_venue`)
----------------------------------------------
* An observation is one market's (venue + symbol) OI already in coins and USD
  (``transforms.open_interest.open_interest_value``). It is one side everywhere (the warehouse
  halves two-sided reports), except on a pool venue (GMX), where the pool is every position's
  counterparty: its rows carry the short side too (``short_coin``/``short_usd``, from
  ``raw.open_interest.open_interest_short``; NaN elsewhere) and the row's own OI is the long side.
* A market's value in a bucket is its last observation there; a market without one carries its
  previous value forward for ``max_stale_buckets`` buckets (a dropped poll must not look like an
  OI crash), then drops out.
* Venue rows sum the venue's markets (a venue lists BTC as USDT, USDC and inverse USD markets).
  One-sided venues: ``oi_coin``/``oi_usd`` is the one side, ``oi_long_*``/``oi_short_*`` NaN.
  Pool venues: ``oi_long_*`` and ``oi_short_*`` are kept apart, ``oi_coin``/``oi_usd`` is their
  sum (LiquidVision's figure) and ``pool_counterparty`` is True.
* Cross-venue rows (venue ``ALL_VENUES``) sum the venue rows of one kind: the one-sided total
  never includes a pool venue's long + short, which is a different quantity (§9.3); pool venues
  have a total row of their own, flagged. ``n_venues``/``n_markets`` say what made each row.
* Changes against the previous bucket (``oi_{coin,usd}_change`` and ``_change_pct``, percent):
  NaN when the previous bucket has no row, or when the markets making the row differ between the
  two buckets (a venue joining a total is not an OI change). A zero base gives an absolute change
  and a NaN percentage.

Funding (:func:`funding_by_venue`)
----------------------------------
* Each rate is normalised to 8 h with *its own row's* interval (``transforms.funding.to_8h``), so a
  venue changing a market's interval (8 h -> 4 h -> 1 h) mid-day is normalised correctly on either
  side of the change; rows without a rate or interval (delivery futures) are skipped.
* A market's rate in a bucket is its last row there. Its weight is the market's OI in USD as of
  that row's time (the last OI observation at or before it, at most ``oi_tolerance_s``, 60 s,
  old; §9.3), else the market has no weight. For a pool venue pass the long side (the side a
  GMX rate is quoted for).
* Venue rows: the OI-weighted 8 h rate over the venue's weighted markets (``weighted`` True); a
  venue none of whose markets has a weight gets the plain mean of its markets' rates
  (``weighted`` False, ``oi_usd`` NaN).
* Cross-venue rows (``ALL_VENUES``): ``sum(f_8h_i * OI_i) / sum(OI_i)`` over the weighted venues
  (CoinGlass ``avg_funding_rate_by_oi``; NaN if none), ``n_venues`` the venues with a rate and
  ``n_weighted`` those that weighed in; ``spread_8h`` = highest minus lowest venue 8 h rate with
  ``spread_high_venue``/``spread_low_venue`` (NaN/None with fewer than two venues). Venue rows get
  ``vs_weighted_8h``, their rate minus the cross-venue weighted one.
* ``rate_annualized = rate_8h * 3 * 365`` (simple, fraction per year).
* Predicted (current) and realised rates are separate series (§9.3): pass one kind per call.
"""

from __future__ import annotations

from collections.abc import Mapping

import numpy as np
from numpy.typing import ArrayLike, NDArray

from transforms.funding import annualize_8h, to_8h
from transforms.open_interest import asof_values, open_interest_value

GRAINS: dict[str, int] = {"5m": 300, "1h": 3_600}
ALL_VENUES = "all"
OI_WEIGHT_TOLERANCE_S = 60.0

Frame = Mapping[str, ArrayLike]


def _column(frame: Frame, name: str, dtype=None) -> np.ndarray:
    if name not in frame:
        raise ValueError(f"input frame has no column {name!r} (columns: {sorted(frame)})")
    return np.asarray(frame[name], dtype=dtype)


def _last_per_bucket(ts: NDArray, bucket_s: int) -> tuple[NDArray, NDArray]:
    """Row index of the last row (in time, then input order) of each bucket, and the buckets."""
    order = np.argsort(ts, kind="stable")
    bucket = np.floor(ts[order] / bucket_s).astype(np.int64)
    last = np.r_[bucket[1:] != bucket[:-1], True] if bucket.size else np.empty(0, bool)
    return order[last], bucket[last]


def _grid_matrix(grid: NDArray, series_rows: list[tuple[NDArray, NDArray]], n_values: int,
                 max_stale_buckets: int) -> tuple[NDArray, NDArray]:
    """Values (grid x series x n_values) carried forward at most ``max_stale_buckets``, and usable (grid x series)."""
    values = np.full((grid.size, len(series_rows), n_values), np.nan)
    seen = np.zeros((grid.size, len(series_rows)), bool)
    for j, (buckets, vals) in enumerate(series_rows):
        values[buckets - grid[0], j] = vals
        seen[buckets - grid[0], j] = True
    row = np.arange(grid.size)[:, None]
    seen_row = np.maximum.accumulate(np.where(seen, row, -1), axis=0)
    usable = (seen_row >= 0) & (row - seen_row <= max_stale_buckets)
    filled = np.take_along_axis(values, np.maximum(seen_row, 0)[:, :, None], axis=0)
    return np.where(usable[:, :, None], filled, np.nan), usable


def _changes(total: NDArray, composition: NDArray, present: NDArray) -> tuple[NDArray, NDArray]:
    """Change and percent change against the previous grid bucket, where both have a row made of
    the same series (``composition``: grid x series booleans)."""
    change = np.full(total.shape, np.nan)
    pct = np.full(total.shape, np.nan)
    if total.shape[0] < 2:
        return change, pct
    same = present[1:] & present[:-1] & np.all(composition[1:] == composition[:-1], axis=1)
    diff = total[1:] - total[:-1]
    change[1:] = np.where(same, diff, np.nan)
    with np.errstate(invalid="ignore", divide="ignore"):
        pct[1:] = np.where(same & (total[:-1] > 0), diff / total[:-1] * 100.0, np.nan)
    return change, pct


_OI_VALUES = ("coin", "usd", "short_coin", "short_usd")


def oi_observations(rows: Frame) -> dict[str, NDArray]:
    """The input of :func:`open_interest_by_venue` from raw open-interest rows with their unit and
    mark (the columns of the ``open_interest`` asset's ``OI_OBSERVATIONS`` query plus
    ``open_interest_short``): ``exchange``, ``symbol``, ``ts``, ``open_interest``,
    ``open_interest_short`` (NULL/NaN except on pool venues), ``qty_multiplier``, ``inverse``,
    ``mark_price``. Both sides convert with ``transforms.open_interest.open_interest_value``; the
    asset is the symbol's base (``BTC-USDT-PERP`` -> ``BTC``)."""
    symbol = _column(rows, "symbol", object)
    mark = _column(rows, "mark_price", np.float64)
    size = _column(rows, "qty_multiplier", np.float64)
    inverse = _column(rows, "inverse", bool)
    one = open_interest_value(_column(rows, "open_interest", np.float64), mark, contract_size=size, inverse=inverse)
    short = open_interest_value(_column(rows, "open_interest_short", np.float64), mark, contract_size=size,
                                inverse=inverse)
    return {"ts": _column(rows, "ts", np.float64), "asset": np.array([s.split("-", 1)[0] for s in symbol], object),
            "venue": _column(rows, "exchange", object), "market": symbol, "coin": one.coin, "usd": one.usd,
            "short_coin": short.coin, "short_usd": short.usd}


def open_interest_by_venue(observations: Frame, *, bucket_s: int, max_stale_buckets: int = 1) -> dict[str, NDArray]:
    """OI per (asset, venue) and across venues per bucket (see the module docstring).

    ``observations`` columns: ``ts``, ``asset``, ``venue``, ``market`` (the symbol), ``coin``,
    ``usd`` (one side; the long side on pool venues) and optionally ``short_coin``, ``short_usd``
    (the short side on pool venues, NaN elsewhere). Rows whose ``coin`` or ``usd`` is not finite are
    ignored, and so are a pool market's rows without a finite short side. Output columns: ``asset``, ``venue``, ``pool_counterparty``, ``bucket_start``,
    ``oi_coin``, ``oi_usd``, ``oi_long_coin``, ``oi_long_usd``, ``oi_short_coin``,
    ``oi_short_usd``, ``n_markets``, ``n_venues``, ``oi_coin_change``, ``oi_usd_change``,
    ``oi_coin_change_pct``, ``oi_usd_change_pct``; only buckets with at least one market."""
    ts = _column(observations, "ts", np.float64)
    asset, venue, market = (_column(observations, name) for name in ("asset", "venue", "market"))
    coin, usd = _column(observations, "coin", np.float64), _column(observations, "usd", np.float64)
    short = [np.asarray(observations[name], np.float64) if name in observations else np.full(ts.size, np.nan)
             for name in ("short_coin", "short_usd")]
    keep = np.isfinite(ts) & np.isfinite(coin) & np.isfinite(usd)
    values = np.column_stack([coin, usd, *short])[keep]
    ts, asset, venue, market = ts[keep], asset[keep], venue[keep], market[keep]

    out: dict[str, list] = {name: [] for name in (
        "asset", "venue", "pool_counterparty", "bucket_start", "oi_coin", "oi_usd", "oi_long_coin", "oi_long_usd",
        "oi_short_coin", "oi_short_usd", "n_markets", "n_venues", "oi_coin_change", "oi_usd_change",
        "oi_coin_change_pct", "oi_usd_change_pct")}
    for a in sorted(set(asset.tolist())):
        mine = asset == a
        grid = np.arange(int(np.floor(ts[mine].min() / bucket_s)), int(np.floor(ts[mine].max() / bucket_s)) + 1)
        keys = sorted(set(zip(venue[mine].tolist(), market[mine].tolist(), strict=True)))
        series, pool = [], []
        for v, m in keys:
            rows = np.flatnonzero(mine & (venue == v) & (market == m))
            is_pool = bool(np.isfinite(values[rows, 2]).any())
            if is_pool:   # a pool market's observation without its short side is half an observation
                rows = rows[np.isfinite(values[rows, 2:]).all(axis=1)]
            last, buckets = _last_per_bucket(ts[rows], bucket_s)
            series.append((buckets, values[rows[last]]))
            pool.append(is_pool)
        matrix, usable = _grid_matrix(grid, series, len(_OI_VALUES), max_stale_buckets)
        pool_arr, venue_of = np.array(pool), np.array([v for v, _ in keys])
        groups = [(v, p, (venue_of == v) & (pool_arr == p)) for v, p in sorted(set(zip(venue_of.tolist(), pool)))]
        for is_pool in sorted(set(pool)):
            groups.append((ALL_VENUES, is_pool, pool_arr == is_pool))
        for name, is_pool, cols in groups:
            sums = np.where(usable[:, cols, None], matrix[:, cols], 0.0).sum(axis=1)
            n_markets = usable[:, cols].sum(axis=1)
            n_venues = np.array([len(set(venue_of[cols][u].tolist())) for u in usable[:, cols]])
            present = n_markets > 0
            if is_pool:
                long_coin, long_usd, short_coin, short_usd = sums.T
                total_coin, total_usd = long_coin + short_coin, long_usd + short_usd
            else:
                total_coin, total_usd = sums[:, 0], sums[:, 1]
                long_coin = long_usd = short_coin = short_usd = np.full(grid.size, np.nan)
            coin_change, coin_pct = _changes(total_coin, usable[:, cols], present)
            usd_change, usd_pct = _changes(total_usd, usable[:, cols], present)
            n = int(present.sum())
            out["asset"] += [a] * n
            out["venue"] += [name] * n
            out["pool_counterparty"] += [is_pool] * n
            for key, column in (("bucket_start", grid * bucket_s), ("oi_coin", total_coin), ("oi_usd", total_usd),
                                ("oi_long_coin", long_coin), ("oi_long_usd", long_usd),
                                ("oi_short_coin", short_coin), ("oi_short_usd", short_usd),
                                ("n_markets", n_markets), ("n_venues", n_venues),
                                ("oi_coin_change", coin_change), ("oi_usd_change", usd_change),
                                ("oi_coin_change_pct", coin_pct), ("oi_usd_change_pct", usd_pct)):
                out[key] += column[present].tolist()
    return _as_arrays(out, ints=("bucket_start", "n_markets", "n_venues"), bools=("pool_counterparty",))


def _as_arrays(columns: dict[str, list], *, ints: tuple[str, ...] = (),
               bools: tuple[str, ...] = ()) -> dict[str, NDArray]:
    """Lists -> arrays: names (``asset``, ``venue``, ``*_venue``) as objects, the rest as given or float."""
    def dtype(name: str):
        if name in ints:
            return np.int64
        if name in bools:
            return bool
        return object if name in ("asset", "venue") or name.endswith("_venue") else np.float64
    return {name: np.asarray(values, dtype=dtype(name)) for name, values in columns.items()}


def funding_by_venue(funding: Frame, open_interest: Frame, *, bucket_s: int,
                     oi_tolerance_s: float = OI_WEIGHT_TOLERANCE_S) -> dict[str, NDArray]:
    """OI-weighted 8 h and annualised funding per (asset, venue) and across venues per bucket.

    ``funding`` columns: ``ts``, ``asset``, ``venue``, ``market``, ``rate`` (per interval, as
    quoted), ``interval_hours``. ``open_interest`` columns: ``ts``, ``venue``, ``market``,
    ``usd`` (the weight). Output columns: ``asset``, ``venue``, ``bucket_start``, ``rate_8h``,
    ``rate_annualized``, ``oi_usd``, ``weighted``, ``n_markets``, ``n_venues``, ``n_weighted``,
    ``vs_weighted_8h``, ``spread_8h``, ``spread_high_venue``, ``spread_low_venue`` (the last two
    and ``spread_8h`` on cross-venue rows only, ``vs_weighted_8h`` on venue rows only)."""
    ts = _column(funding, "ts", np.float64)
    asset, venue, market = (_column(funding, name) for name in ("asset", "venue", "market"))
    rate = _column(funding, "rate", np.float64)
    interval = _column(funding, "interval_hours", np.float64)
    keep = np.isfinite(ts) & np.isfinite(rate) & np.isfinite(interval) & (interval > 0)
    ts, asset, venue, market, rate_8h = ts[keep], asset[keep], venue[keep], market[keep], to_8h(rate, interval)[keep]

    oi_ts = _column(open_interest, "ts", np.float64)
    oi_venue, oi_market = _column(open_interest, "venue"), _column(open_interest, "market")
    oi_usd = _column(open_interest, "usd", np.float64)
    oi_order = np.argsort(oi_ts, kind="stable")
    oi_ts, oi_venue, oi_market, oi_usd = oi_ts[oi_order], oi_venue[oi_order], oi_market[oi_order], oi_usd[oi_order]

    # One row per market and bucket: its last rate and the OI weight as of that rate's time.
    per_market: dict[tuple, list] = {}
    for v, m in sorted(set(zip(venue.tolist(), market.tolist(), strict=True))):
        rows = np.flatnonzero((venue == v) & (market == m))
        last, buckets = _last_per_bucket(ts[rows], bucket_s)
        rows = rows[last]
        mine = (oi_venue == v) & (oi_market == m)
        weight = asof_values(ts[rows], oi_ts[mine], oi_usd[mine], tolerance_s=oi_tolerance_s)
        for r, b, w in zip(rows, buckets, weight, strict=True):
            per_market.setdefault((asset[r], int(b)), []).append((v, rate_8h[r], w))

    out: dict[str, list] = {name: [] for name in (
        "asset", "venue", "bucket_start", "rate_8h", "rate_annualized", "oi_usd", "weighted", "n_markets",
        "n_venues", "n_weighted", "vs_weighted_8h", "spread_8h", "spread_high_venue", "spread_low_venue")}

    def emit(a, name, bucket, rate, oi, weighted, n_markets, n_venues, n_weighted, vs, spread, high, low):
        for key, value in zip(out, (a, name, bucket * bucket_s, rate, float(annualize_8h(rate)), oi, weighted,
                                    n_markets, n_venues, n_weighted, vs, spread, high, low), strict=True):
            out[key].append(value)

    for (a, bucket) in sorted(per_market):
        markets = per_market[(a, bucket)]
        venues = {}
        for v in sorted({m[0] for m in markets}):
            rates = np.array([m[1] for m in markets if m[0] == v])
            weights = np.array([m[2] for m in markets if m[0] == v])
            use = np.isfinite(weights) & (weights > 0)
            if use.any():
                venues[v] = (float(np.sum(rates[use] * weights[use]) / weights[use].sum()),
                             float(weights[use].sum()), True, rates.size)
            else:
                venues[v] = (float(rates.mean()), np.nan, False, rates.size)
        weighted = {v: r for v, r in venues.items() if r[2]}
        total_oi = sum(r[1] for r in weighted.values())
        all_rate = sum(r[0] * r[1] for r in weighted.values()) / total_oi if weighted else np.nan
        for v, (r, oi, is_weighted, n_markets) in venues.items():
            emit(a, v, bucket, r, oi, is_weighted, n_markets, 1, int(is_weighted), r - all_rate, np.nan, None, None)
        if len(venues) >= 2:
            high = max(venues, key=lambda v: venues[v][0])
            low = min(venues, key=lambda v: venues[v][0])
            spread = venues[high][0] - venues[low][0]
        else:
            high = low = None
            spread = np.nan
        emit(a, ALL_VENUES, bucket, all_rate, total_oi if weighted else np.nan, bool(weighted),
             sum(r[3] for r in venues.values()), len(venues), len(weighted), np.nan, spread, high, low)
    return _as_arrays(out, ints=("bucket_start", "n_markets", "n_venues", "n_weighted"), bools=("weighted",))
