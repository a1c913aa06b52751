"""analytics.liquidation_levels, liquidation_level_scores (analytics.md §9.4) and
cross_venue_cascades (§6.3 across venues; transforms.cross_venue).

The map is path-dependent (a level stays until the price trades through it or OI shrinks), so each
day's map runs the model from ``WARMUP_DAYS`` before the day and writes the day's hourly snapshots
only. Scores and episodes use data up to the end of their day only, so a closed day's rows never
change: a snapshot's horizon is ``(t, min(t + 24 h, day end)]``.
"""

from __future__ import annotations

import datetime as dt
import math
from dataclasses import dataclass

import numpy as np
import pyarrow as pa

from transforms.cascades import CascadeConfig
from transforms.cross_venue import cross_venue_cascades
from transforms.figures import Span, TimeSeries, VenueTimeline
from transforms.liquidation_map import MapSnapshot, MinuteInputs, build_liquidation_map, score_liquidation_map
from transforms.open_interest import asof_values, cross_venue_total
from warehouse.analytics.common import arrow_rows, days_of, epoch, fetch, naive, rows_table, timestamps
from warehouse.analytics.liquidations import cascade_thresholds
from warehouse.units import UNIT_JOIN

WARMUP_DAYS = 1
SNAPSHOT_EVERY_S = 3600.0
HORIZON_S = 86_400.0
BASELINE_SHARE = 0.25
COMPLETE_FEEDS = "complete_feeds"

# Per asset and minute across its markets: VWAP, range and taker flow in USD (each market's taker
# base volume at its own VWAP), from analytics.ohlcv_1m.
MINUTE_BARS = """
SELECT split_part(symbol, '-', 1) AS asset, epoch(minute) AS ts,
       sum(quote_volume ORDER BY exchange, symbol) / nullif(sum(volume ORDER BY exchange, symbol), 0) AS vwap,
       max(high) AS high, min(low) AS low,
       coalesce(sum(buy_volume * vwap ORDER BY exchange, symbol), 0) AS buy_usd,
       coalesce(sum(sell_volume * vwap ORDER BY exchange, symbol), 0) AS sell_usd
FROM analytics.ohlcv_1m WHERE minute >= $lo AND minute < $end GROUP BY ALL ORDER BY asset, ts
"""

# One-sided OI in base units per market and 5-minute bucket (the map sums them like for like).
OI_BUCKET_S = 300
OPEN_INTEREST = """
SELECT asset, exchange || '|' || symbol AS market, epoch(bucket_start) AS bucket_start, open_interest
FROM analytics.open_interest
WHERE exchange <> 'all' AND grain = '5m' AND bucket_start >= $lo AND bucket_start < $end
  AND open_interest IS NOT NULL
ORDER BY asset, bucket_start, market
"""

# Realized forced orders at their fill price with their venue's liquidation coverage; one order
# loaded twice is one order (as in liquidations_1m).
REALIZED = f"""
SELECT DISTINCT split_part(r.symbol, '-', 1) AS asset, r.exchange, epoch(r.ts_exchange) AS ts,
       r.liquidated_position AS side, coalesce(r.avg_price, r.price) AS price,
       raw.usd_notional(r.qty, coalesce(r.avg_price, r.price), r.qty_unit, unit.contract_size,
                        unit.contract_size_unit) AS usd,
       coalesce(cov.coverage, 'unavailable') AS coverage
FROM raw.liquidations AS r {UNIT_JOIN}
     LEFT JOIN meta.venue_coverage AS cov ON cov.exchange = r.exchange AND cov.data = 'liquidations'
WHERE r.ts_exchange >= $start AND r.ts_exchange < $end
  AND raw.qty_multiplier(r.qty_unit, unit.contract_size, unit.contract_size_unit) IS NOT NULL
ORDER BY asset, ts, exchange, price, usd
"""

# Last on-book trade price per venue and second (the cross-venue lead needs each venue's own price).
VENUE_PRICES = """
SELECT split_part(symbol, '-', 1) AS asset, exchange, floor(epoch(ts_exchange)) AS ts,
       arg_max(price, ts_exchange) AS price
FROM raw.trades WHERE ts_exchange >= $lo AND ts_exchange < $end AND coalesce(trade_type, 'MARKET') = 'MARKET'
GROUP BY ALL ORDER BY asset, exchange, ts
"""

STRESS = """
SELECT epoch(minute) AS ts, stress_index FROM analytics.market_stress
WHERE asset = $asset AND minute >= $lo AND minute <= $hi AND stress_index IS NOT NULL
"""


def minute_inputs(con, asset: str, lo: dt.datetime, end: dt.datetime) -> list[MinuteInputs]:
    """Every minute of [lo, end) for ``asset`` (``ts`` = the minute's end, when it is known); a
    minute without trades has NaN price fields. OI is the latest 5-minute cross-venue total known by
    then (at its bucket's end); the minute a bucket becomes known carries its like-for-like change,
    so a venue whose feed joins the total opens no positions on the map."""
    bars = fetch(con, f"SELECT * FROM ({MINUTE_BARS}) WHERE asset = $asset", {"lo": lo, "end": end, "asset": asset})
    oi = fetch(con, f"SELECT * FROM ({OPEN_INTEREST}) WHERE asset = $asset",
               {"lo": lo - dt.timedelta(minutes=10), "end": end, "asset": asset})
    ends = np.arange(epoch(lo) + 60, epoch(end) + 1, 60.0)
    nan = math.nan
    oi_now, oi_change = np.full(ends.size, nan), np.full(ends.size, nan)
    if oi["bucket_start"].size:
        total = cross_venue_total(oi["bucket_start"].astype(np.float64), oi["market"],
                                  oi["open_interest"].astype(np.float64), bucket_s=OI_BUCKET_S)
        known = (total.bucket_start + OI_BUCKET_S).astype(np.float64)
        oi_now = asof_values(ends, known, total.total, tolerance_s=900.0)
        # No venue in both buckets (every feed out past the carry-forward): the change is unknown,
        # and a difference of two unrelated totals is not one.
        change = np.nan_to_num(total.like_for_like_change()[0], nan=0.0)
        at = {t: i for i, t in enumerate(known.tolist())}
        oi_change = np.array([change[at[t]] if t in at else 0.0 for t in ends.tolist()])
    index = {float(t) + 60: i for i, t in enumerate(bars["ts"])}
    out = []
    for t, open_interest, oi_delta in zip(ends.tolist(), oi_now.tolist(), oi_change.tolist(), strict=True):
        i = index.get(t)
        if i is None:
            out.append(MinuteInputs(t, open_interest, nan, 0.0, 0.0, nan, nan, oi_delta))
        else:
            out.append(MinuteInputs(t, open_interest, float(bars["vwap"][i]), float(bars["buy_usd"][i]),
                                    float(bars["sell_usd"][i]), float(bars["high"][i]), float(bars["low"][i]),
                                    oi_delta))
    return out


def _assets(con, start: dt.datetime, end: dt.datetime) -> list[str]:
    return [a for (a,) in con.execute("SELECT DISTINCT split_part(symbol, '-', 1) FROM analytics.ohlcv_1m "
                                      "WHERE minute >= $start AND minute < $end ORDER BY 1",
                                      {"start": start, "end": end}).fetchall()]


def day_snapshots(con, asset: str, start: dt.datetime, end: dt.datetime) -> list[MapSnapshot]:
    """The asset's hourly map snapshots taken in [start, end), the model warmed up from
    ``WARMUP_DAYS`` before."""
    minutes = minute_inputs(con, asset, start - dt.timedelta(days=WARMUP_DAYS), end)
    snapshots = build_liquidation_map(minutes, snapshot_every_s=SNAPSHOT_EVERY_S)
    return [s for s in snapshots if epoch(start) <= s.ts < epoch(end)]


def level_rows(con, start: dt.datetime, end: dt.datetime) -> list[pa.Table]:
    parts = []
    for asset in _assets(con, start, end):
        columns: dict[str, list] = {k: [] for k in ("ts", "side", "bin_lo", "usd", "width", "mid", "liq", "unplaced")}
        for snap in day_snapshots(con, asset, start, end):
            for side, usd in (("long", snap.long_usd), ("short", snap.short_usd)):
                kept = usd > 0
                n = int(kept.sum())
                columns["ts"] += [snap.ts] * n
                columns["side"] += [side] * n
                columns["bin_lo"] += snap.bin_lo[kept].tolist()
                columns["usd"] += usd[kept].tolist()
                columns["width"] += [snap.width] * n
                columns["mid"] += [snap.mid] * n
                columns["liq"] += [snap.modeled_liquidated_usd] * n
                columns["unplaced"] += [snap.unplaced_usd] * n
        if not columns["ts"]:
            continue
        bin_lo = np.array(columns["bin_lo"])
        parts.append(arrow_rows({
            "asset": [asset] * bin_lo.size, "snapshot_ts": timestamps(columns["ts"]), "side": columns["side"],
            "bin_lo": bin_lo, "bin_hi": bin_lo + np.array(columns["width"]), "usd": np.array(columns["usd"]),
            "mid": np.array(columns["mid"]), "modeled_liquidated_usd": np.array(columns["liq"]),
            "unplaced_usd": np.array(columns["unplaced"]), "day": days_of(columns["ts"]),
        }))
    return parts


def score_rows(con, start: dt.datetime, end: dt.datetime) -> list[pa.Table]:
    """Per asset, the day's snapshots scored against the forced orders that followed them within
    the day, once over every venue ('all') and once over the venues whose liquidation feed is
    complete ('complete_feeds', where any has liquidations that day)."""
    realized = fetch(con, REALIZED, {"start": start, "end": end})
    rows = []
    for asset in _assets(con, start, end):
        snapshots = day_snapshots(con, asset, start, end)
        bars = fetch(con, f"SELECT ts, high, low FROM ({MINUTE_BARS}) WHERE asset = $asset",
                     {"lo": start, "end": end, "asset": asset})
        mine = realized["asset"] == asset
        complete = mine & (realized["coverage"] == "complete")
        for venue_set, chosen in (("all", mine), (COMPLETE_FEEDS, complete)):
            if venue_set == COMPLETE_FEEDS and not chosen.any():
                continue
            score = score_liquidation_map(snapshots, (realized["ts"][chosen], realized["price"][chosen],
                                                      realized["usd"][chosen]),
                                          (bars["ts"], bars["high"], bars["low"]), horizon_s=HORIZON_S)
            coverage = sorted(set(zip(realized["exchange"][chosen].tolist(), realized["coverage"][chosen].tolist())))
            rows.append({
                "asset": asset, "day": start.date(), "venue_set": venue_set, "score": score.score,
                "ci_low": score.ci_low, "ci_high": score.ci_high, "baseline": BASELINE_SHARE, "lift": score.lift,
                "mean_ratio": score.mean_ratio, "precision_top10": score.precision_top10,
                "ranked_share": score.ranked_share,
                "n_snapshots": len(snapshots), "n_scored": score.n_scored,
                "realized_usd": float(realized["usd"][chosen].sum()),
                "realized_venues": ",".join(sorted({e for e, _ in coverage})),
                "is_sampled_feed": any(c != "complete" for _, c in coverage),
                "coverage_note": "; ".join(f"{e}: {c}" for e, c in coverage) or "no liquidations",
            })
    return [rows_table(rows)] if rows else []


def cross_venue_rows(con, start: dt.datetime, end: dt.datetime) -> list[pa.Table]:
    """Episodes starting in [start, end) per asset across venues, one row per venue, from the
    forced orders of the 30 days before (the size baseline) and each venue's trade prices."""
    lo = start - dt.timedelta(days=30)
    orders = fetch(con, REALIZED, {"start": lo, "end": end})
    prices = fetch(con, VENUE_PRICES, {"lo": start - dt.timedelta(hours=2), "end": end})
    parts = []
    for asset in sorted(set(orders["asset"][orders["ts"] >= epoch(start)].tolist())):
        mine = orders["asset"] == asset
        today = mine & (orders["ts"] >= epoch(start))
        series = {}
        for exchange in sorted(set(prices["exchange"][prices["asset"] == asset].tolist())):
            rows = (prices["asset"] == asset) & (prices["exchange"] == exchange)
            series[exchange] = (prices["ts"][rows].astype(np.float64), prices["price"][rows].astype(np.float64))
        if not series:
            continue
        coverage = dict(zip(orders["exchange"][mine].tolist(), orders["coverage"][mine].tolist(), strict=True))
        thresholds = cascade_thresholds(asset, sampled=all(coverage[e] != "complete"
                                                           for e in set(orders["exchange"][today].tolist())))
        episodes = [e for e in cross_venue_cascades(
            orders["ts"][mine], orders["exchange"][mine], orders["side"][mine], orders["usd"][mine],
            prices=series, thresholds=thresholds, cascade_config=CascadeConfig(baseline_start=epoch(lo)))
            if epoch(start) <= e.start < epoch(end)]
        for episode in episodes:
            parts.append(_episode_table(con, asset, episode, coverage))
    return parts


def _episode_table(con, asset: str, episode, coverage: dict[str, str]) -> pa.Table:
    stress = fetch(con, STRESS, {"asset": asset, "lo": naive(episode.start - 60), "hi": naive(episode.end)})
    values = stress["stress_index"].astype(np.float64)
    venues = sorted(episode.venue_usd)
    first = episode.crossing_time.get(episode.first_mover, math.nan) if episode.first_mover else math.nan
    crossing = np.array([episode.crossing_time.get(v, math.nan) for v in venues])
    first_liq = np.array([episode.venue_first_liquidation.get(v, math.nan) for v in venues])
    n = len(venues)
    return arrow_rows({
        "asset": [asset] * n, "side": [episode.side] * n,
        "cascade_start": timestamps([episode.start] * n), "cascade_end": timestamps([episode.end] * n),
        "episode_usd": [episode.usd] * n, "episode_orders": pa.array([episode.n_orders] * n, pa.int32()),
        "reference_venue": [episode.reference_venue] * n, "exchange": venues,
        "venue_usd": [episode.venue_usd[v] for v in venues],
        "venue_share": np.array([episode.venue_share[v] for v in venues], dtype=np.float64),
        "liquidation_coverage": [coverage.get(v, "no liquidations") for v in venues],
        "first_liquidation": _optional_timestamps(first_liq),
        "move_bps": np.array([episode.venue_move_bps.get(v, math.nan) for v in venues], dtype=np.float64),
        "threshold_crossing": _optional_timestamps(crossing),
        "crossing_after_first_s": crossing - first,
        "is_first_mover": [v == episode.first_mover for v in venues],
        "first_mover": [episode.first_mover] * n, "lead_s": np.full(n, episode.lead_s),
        "xcorr_lag_s": np.array([episode.xcorr_lag_s.get(v, math.nan) for v in venues], dtype=np.float64),
        "xcorr_peak": np.array([episode.xcorr_peak.get(v, math.nan) for v in venues], dtype=np.float64),
        "stress_max": np.full(n, float(values.max()) if values.size else math.nan),
        "stress_mean": np.full(n, float(values.mean()) if values.size else math.nan),
        "day": days_of([episode.start] * n),
    })


def _optional_timestamps(seconds: np.ndarray) -> pa.Array:
    micros = [None if not math.isfinite(s) else round(s * 1e6) for s in seconds.tolist()]
    return pa.array(micros, pa.timestamp("us"))


# Pictures: the day's map (time x price, USD as colour) and the realized forced orders over it.
MAP_CELLS = """
SELECT asset, epoch(snapshot_ts) AS ts, bin_lo, bin_hi - bin_lo AS width, sum(usd) AS usd
FROM analytics.liquidation_levels WHERE day >= $start AND day < $end GROUP BY ALL ORDER BY ALL
"""


# Pictures: per cross-venue episode of the window, each venue's liquidated USD of the episode's side
# per minute and its last trade price per 10 s, from 5 minutes before the episode to 5 after it.
TIMELINE_MARGIN = dt.timedelta(minutes=5)
TIMELINE_PRICE_BAR_S = 10
EPISODES = """
SELECT asset, side, cascade_start, cascade_end, episode_usd, first_mover, list(exchange ORDER BY exchange) AS venues,
       list(threshold_crossing ORDER BY exchange) AS crossings
FROM analytics.cross_venue_cascades WHERE cascade_start >= $start AND cascade_start < $end
GROUP BY ALL ORDER BY cascade_start, asset, side
"""
TIMELINE_LIQUIDATIONS = """
SELECT exchange, epoch(minute) AS ts, sum(CASE WHEN $side = 'long' THEN long_usd ELSE short_usd END) AS usd
FROM analytics.liquidations_1m WHERE asset = $asset AND minute >= $lo AND minute < $hi
GROUP BY ALL ORDER BY exchange, ts
"""
TIMELINE_PRICES = f"""
SELECT exchange, floor(epoch(ts_exchange) / {TIMELINE_PRICE_BAR_S}) * {TIMELINE_PRICE_BAR_S} AS ts,
       arg_max(price, ts_exchange) AS price
FROM raw.trades WHERE split_part(symbol, '-', 1) = $asset AND ts_exchange >= $lo AND ts_exchange < $hi
  AND coalesce(trade_type, 'MARKET') = 'MARKET'
GROUP BY ALL ORDER BY exchange, ts
"""


@dataclass(frozen=True)
class CascadeTimeline:
    """What ``transforms.figures.cross_venue_cascade_timeline`` draws for one episode; ``key`` names
    its picture (asset, side, start); ``episode_usd`` is its liquidated USD on all venues."""

    key: str
    asset: str
    side: str
    episode_usd: float
    title: str
    venues: dict[str, VenueTimeline]
    first_mover: str | None
    span: Span


def cascade_timelines(con, start: dt.datetime, end: dt.datetime) -> list[CascadeTimeline]:
    """One timeline per analytics.cross_venue_cascades episode starting in [start, end)."""
    timelines = []
    for asset, side, cascade_start, cascade_end, episode_usd, first_mover, venues, crossings in con.execute(
            EPISODES, {"start": start, "end": end}).fetchall():
        window = {"asset": asset, "lo": cascade_start - TIMELINE_MARGIN,
                  "hi": cascade_end + dt.timedelta(minutes=1) + TIMELINE_MARGIN}
        liquidated = fetch(con, TIMELINE_LIQUIDATIONS, {**window, "side": side})
        prices = fetch(con, TIMELINE_PRICES, window)

        def series(data: dict, column: str, venue: str) -> TimeSeries:
            rows = data["exchange"] == venue
            return TimeSeries(_datetimes(data["ts"][rows]), data[column][rows].astype(np.float64))

        timelines.append(CascadeTimeline(
            f"timeline_{asset}_{side}_{cascade_start:%Y%m%dT%H%M}", asset, side, episode_usd,
            f"{asset} {side}s liquidated {cascade_start:%Y-%m-%d %H:%M}-{cascade_end:%H:%M} UTC across venues",
            {venue: VenueTimeline(series(liquidated, "usd", venue), series(prices, "price", venue),
                                  np.datetime64(crossing, "s") if crossing else np.datetime64("NaT", "s"))
             for venue, crossing in zip(venues, crossings, strict=True)},
            first_mover, Span(np.datetime64(cascade_start, "s"),
                              np.datetime64(cascade_end + dt.timedelta(minutes=1), "s"))))
    return timelines


def largest_timelines(timelines: list[CascadeTimeline]) -> list[CascadeTimeline]:
    """The largest episode (liquidated USD on all venues) of each asset and side, by start."""
    largest: dict[tuple[str, str], CascadeTimeline] = {}
    for timeline in timelines:
        key = (timeline.asset, timeline.side)
        if key not in largest or timeline.episode_usd > largest[key].episode_usd:
            largest[key] = timeline
    return sorted(largest.values(), key=lambda t: t.span.start)


def _datetimes(seconds: np.ndarray) -> np.ndarray:
    return np.asarray(seconds, dtype=np.float64).astype(np.int64).astype("datetime64[s]")
