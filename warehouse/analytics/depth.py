"""analytics.book_depth and analytics.liquidity_withdrawals: order-book depth bands per minute
from the periodic book snapshots, and the episodes where 2 % depth collapses against its own
trailing 24 h median."""

import datetime as dt
from collections import deque
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import pyarrow as pa

from transforms.depth import (
    BANDS,
    DepthBands,
    aggregate_buckets,
    band_label,
    depth_bands_batch,
    depth_per_minute,
)
from transforms.liquidity import DAY_S, liquidity_withdrawals
from warehouse.analytics.common import DAY, arrow_rows, days_of, epoch, fetch, groups, timestamps
from warehouse.ddl_microstructure import SIDE_FIELDS, STATS
from warehouse.units import BOOK_UNITS

# The periodic snapshots carry the levels within this distance of mid (ingest.book_sync's
# periodic_band): a book ending inside a narrower band ended there on the venue's side, but at this
# band the snapshot's own cut and the end of the venue's book cannot be told apart.
PERIODIC_BAND = 0.10
# USDT/USDC books are valued at par; stored per row so a later FX feed can replace it.
QUOTE_USD_RATE = 1.0
SNAPSHOTS_PER_BATCH = 16_384
TWO_PCT = band_label(0.02)
_ARRAYS = [name for name in DepthBands.__dataclass_fields__ if name != "bands"]

# Books a venue's feed left crossed and perpflow uncrossed locally (dYdX) are not measured.
PERIODIC = "r.reason = 'periodic' AND coalesce(r.uncrossed, 0) = 0"
# The periodic snapshots in [$start, $end) with what one unit of their levels is worth
# (warehouse.units.BOOK_UNITS); books whose unit is unknown are left out here and counted by the
# units check.
CONVERTIBLE_SNAPSHOTS = f"""
SELECT exchange, symbol, r.ts_exchange, r.seq, r.bids, r.asks,
       raw.qty_multiplier(unit.qty_unit, unit.contract_size, unit.contract_size_unit) AS qty_multiplier,
       raw.qty_is_inverse(unit.qty_unit, unit.contract_size_unit) AS inverse
FROM raw.book_snapshots AS r LEFT JOIN ({BOOK_UNITS}) AS unit USING (exchange, symbol)
WHERE {PERIODIC} AND r.ts_exchange >= $start AND r.ts_exchange < $end
  AND raw.qty_multiplier(unit.qty_unit, unit.contract_size, unit.contract_size_unit) IS NOT NULL
"""

SNAPSHOTS = f"""
SELECT exchange, symbol, epoch_ms(ts_exchange) AS ts_ms, coalesce(seq, -1) AS seq, bids, asks, qty_multiplier,
       inverse
FROM ({CONVERTIBLE_SNAPSHOTS})
WHERE $asset IS NULL OR split_part(symbol, '-', 1) = $asset
"""


def book_side(levels: pa.ListArray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """One side of a batch of books in the Arrow list layout ``transforms`` takes: prices, sizes, offsets."""
    flat = levels.flatten()
    offsets = np.asarray(levels.offsets, dtype=np.int64)
    return (flat.field("price").to_numpy(zero_copy_only=False), flat.field("qty").to_numpy(zero_copy_only=False),
            offsets - offsets[0])


def _batch_depth(batch: pa.RecordBatch) -> tuple[dict[str, np.ndarray], DepthBands]:
    keys = {name: batch.column(name).to_numpy(zero_copy_only=False) for name in ("exchange", "symbol", "ts_ms", "seq")}
    bids, asks = book_side(batch.column("bids")), book_side(batch.column("asks"))
    return keys, depth_bands_batch(*bids, *asks, quote_usd_rate=QUOTE_USD_RATE,
                                   contract_size=batch.column("qty_multiplier").to_numpy(zero_copy_only=False),
                                   inverse=batch.column("inverse").to_numpy(zero_copy_only=False))


def snapshot_depths(con, start: dt.datetime, end: dt.datetime,
                    asset: str | None = None) -> tuple[dict[str, np.ndarray], DepthBands | None]:
    """Depth bands of every periodic snapshot in [start, end) (of one base asset's markets if
    given), with their exchange, symbol, ts_ms and seq; DuckDB decodes the next batch while numpy
    works on this one (both release the GIL), which nearly halves the wall time on 2 cores."""
    params = {"start": start, "end": end, "asset": asset}
    reader = con.sql(SNAPSHOTS, params=params).to_arrow_reader(SNAPSHOTS_PER_BATCH)
    done, pending = [], deque()
    with ThreadPoolExecutor(max_workers=1) as pool:
        for batch in reader:
            pending.append(pool.submit(_batch_depth, batch))
            if len(pending) > 2:   # bounds the decoded-but-unprocessed batches held in memory
                done.append(pending.popleft().result())
        done += [future.result() for future in pending]
    if not done:
        return {}, None
    keys = {name: np.concatenate([k[name] for k, _ in done]) for name in done[0][0]}
    depth = DepthBands(bands=BANDS, **{f: np.concatenate([getattr(d, f) for _, d in done]) for f in _ARRAYS})
    return keys, depth


def distinct_snapshots(keys: dict[str, np.ndarray], rows: np.ndarray) -> np.ndarray:
    """One market's snapshot rows sorted by time; a snapshot loaded twice (same time and sequence) counts once."""
    rows = rows[np.lexsort((keys["seq"][rows], keys["ts_ms"][rows]))]
    ts_ms, seq = keys["ts_ms"][rows], keys["seq"][rows]
    return rows[np.r_[True, (np.diff(ts_ms) != 0) | (np.diff(seq) != 0)]]


def _take(depth: DepthBands, rows: np.ndarray) -> DepthBands:
    return DepthBands(bands=depth.bands, **{f: getattr(depth, f)[rows] for f in _ARRAYS})


def book_depth_rows(con, start: dt.datetime, end: dt.datetime) -> list[pa.Table]:
    """One row per exchange, symbol and minute of [start, end), from the periodic snapshots."""
    keys, depth = snapshot_depths(con, start, end)
    if depth is None:
        return []
    parts = []
    for (exchange, symbol), rows in groups(keys["exchange"], keys["symbol"]):
        rows = distinct_snapshots(keys, rows)
        ts = keys["ts_ms"][rows] / 1000.0
        book = _take(depth, rows)
        minute = depth_per_minute(ts, book)
        extra = aggregate_buckets(ts, np.column_stack([book.bid_usd + book.ask_usd, -book.spread_bps]))
        n = extra.n_rows.size
        columns = {"exchange": [exchange] * n, "symbol": [symbol] * n, "minute": timestamps(minute.pop("bucket_start")),
                   "n_snapshots": minute.pop("n_snapshots"), "n_valid": minute.pop("n_valid"),
                   "quote_usd_rate": np.full(n, QUOTE_USD_RATE)}
        columns.update(minute)
        for j, band in enumerate(BANDS):
            for stat in STATS:
                columns[f"depth_usd_{band_label(band)}_{stat}"] = getattr(extra, stat)[:, j]
        columns["spread_bps_max"] = -extra.min[:, -1]
        columns.update(_exceeds_book_per_minute(ts, book))
        columns["day"] = days_of(extra.bucket_start)
        parts.append(arrow_rows(columns))
    return parts


def _exceeds_book_per_minute(ts: np.ndarray, book: DepthBands) -> dict[str, pa.Array]:
    """Per band and side: True where a valid book of the minute ended inside the band (its depth
    there is a lower bound); NULL for bands the periodic snapshot itself cuts (see PERIODIC_BAND)."""
    out = {}
    for side in ("bid", "ask"):
        flagged = getattr(book, f"{side}_exceeds_book").astype(np.float64)
        any_flagged = aggregate_buckets(ts, flagged).mean > 0
        for j, band in enumerate(BANDS):
            out[f"{side}_exceeds_book_{band_label(band)}"] = pa.array(
                any_flagged[:, j], mask=np.full(any_flagged.shape[0], band >= PERIODIC_BAND - 1e-12))
    return out


def monotone_violation() -> str:
    """Rows where some depth column shrinks from one band to the next wider one."""
    terms = []
    for name in SIDE_FIELDS:
        if name == "imbalance":
            continue
        for stat in STATS:
            cols = [f"{name}_{band_label(band)}_{stat}" for band in BANDS]
            terms += [f"{a} > {b}" for a, b in zip(cols, cols[1:], strict=False)]
    return " OR ".join(terms)


def range_violation() -> str:
    labels = [band_label(band) for band in BANDS]
    negative = [f"{name}_{label}_{stat} < 0" for name in SIDE_FIELDS if name != "imbalance"
                for label in labels for stat in STATS]
    imbalance = [f"abs(imbalance_{label}_{stat}) > 1" for label in labels for stat in STATS]
    return " OR ".join(["n_valid > n_snapshots", "n_valid < 0", "spread_bps_min < 0", "mid_min <= 0",
                        *negative, *imbalance])


# --- liquidity withdrawals ----------------------------------------------------------------------

def withdrawal_rows(con, start: dt.datetime, end: dt.datetime, *, threshold: float, merge_gap_minutes: float,
                    min_baseline_minutes: int) -> list[pa.Table]:
    """Episodes that start in [start, end), on per-minute ±2 % USD depth (bid + ask, minute mean)."""
    data = fetch(con, f"SELECT exchange, symbol, epoch(minute) AS ts, depth_usd_{TWO_PCT}_mean AS depth "
                      "FROM analytics.book_depth WHERE minute >= $lo AND minute < $end ORDER BY ALL",
                 {"lo": start - DAY, "end": end})
    day_start, day_end = epoch(start), epoch(end)
    parts = []
    for (exchange, symbol), rows in groups(data["exchange"], data["symbol"]):
        episodes = [e for e in liquidity_withdrawals(
            data["ts"][rows], data["depth"][rows].astype(np.float64), threshold=threshold, window_s=DAY_S,
            min_periods=min_baseline_minutes, merge_gap_s=merge_gap_minutes * 60, bar_s=60.0,
        ) if day_start <= e.start < day_end]
        if not episodes:
            continue
        column = lambda name: np.array([getattr(e, name) for e in episodes], dtype=np.float64)  # noqa: E731
        parts.append(arrow_rows({
            "exchange": [exchange] * len(episodes), "symbol": [symbol] * len(episodes),
            "episode_start": timestamps(column("start")), "episode_end": timestamps(column("end")),
            "minutes": column("minutes"), "n_below": column("n_below").astype(np.int32),
            "worst_ratio": column("worst_ratio"), "worst_at": timestamps(column("worst_ts")),
            "depth_at_worst_usd": column("depth_at_worst"), "baseline_depth_usd": column("baseline_depth"),
            "depth_before_usd": column("depth_before"), "threshold": np.full(len(episodes), threshold),
            "open_at_day_end": column("end") >= day_end, "day": days_of(column("start")),
        }))
    return parts


# Feed keys the book_depth rows must cover: every minute with a convertible periodic snapshot.
SNAPSHOT_MINUTES = ("SELECT DISTINCT exchange, symbol, time_bucket(INTERVAL 1 MINUTE, ts_exchange) AS minute "
                    f"FROM ({CONVERTIBLE_SNAPSHOTS})")

# Per market and minute, ±2 % USD depth (bid + ask, minute mean) in [$start, $end), for pictures.
DEPTH_2PCT_SERIES = (f"SELECT exchange || ' ' || symbol, minute, depth_usd_{TWO_PCT}_mean FROM analytics.book_depth "
                     "WHERE minute >= $start AND minute < $end ORDER BY 1, 2")

WITHDRAWAL_EPISODES = ("SELECT episode_start, episode_end FROM analytics.liquidity_withdrawals "
                       "WHERE episode_start >= $start AND episode_start < $end")
