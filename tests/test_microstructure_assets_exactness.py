"""Book depth proven exact against brute force from full books (the real Binance recording and the
simulator's ground truth), and cascade detection scored against the simulator's cascade windows."""

from __future__ import annotations

import bisect
import datetime as dt
import math
import warnings
from collections import defaultdict
from fractions import Fraction

import dagster as dg
import numpy as np
import orjson
import pytest

from conftest import binance_recording
from ingest.feed import FeedHandler
from ingest.venues.binance_usdm import BinanceUsdm
from pipelines.replay import replay
from transforms.cascades import match_windows
from transforms.depth import BANDS, band_label
from transforms.order_book import OrderBook
from warehouse.loader import insert_records
from warehouse.store import Warehouse

warnings.filterwarnings("ignore", category=dg.BetaWarning)

from dagster_project.assets.microstructure import MICROSTRUCTURE_ASSETS  # noqa: E402
from warehouse.analytics.depth import snapshot_depths  # noqa: E402
from dagster_project.resources import WarehouseResource  # noqa: E402

RAW = [dg.AssetSpec(["raw", t]) for t in ("trades", "book_snapshots", "open_interest", "funding", "liquidations")]
QUIET = {"loggers": {"console": {"config": {"log_level": "ERROR"}}}}
I_2PCT = BANDS.index(0.02)


def _materialize(warehouse: Warehouse, assets, partition: str) -> None:
    resources = {"warehouse": WarehouseResource(database=str(warehouse.path), replica=str(warehouse.replica_path))}
    result = dg.materialize([*RAW, *MICROSTRUCTURE_ASSETS], selection=assets, resources=resources,
                            partition_key=partition, run_config=QUIET)
    assert result.success and all(c.passed for c in result.get_asset_check_evaluations())


def brute_force_bands(bids, asks) -> dict[str, float]:
    """Depth bands of a full book straight from the definition: band membership decided in exact
    rational arithmetic (prices as given, decimal strings or doubles), sums correctly rounded."""
    # Best first, so each band is a prefix of its side: (distance key, price, qty).
    bid = sorted((-Fraction(p), float(p), float(q)) for p, q in bids)
    ask = sorted((Fraction(p), float(p), float(q)) for p, q in asks)
    mid = (-bid[0][0] + ask[0][0]) / 2
    out = {"mid": float(mid)}
    for band in BANDS:
        x, label = Fraction(str(band)), band_label(band)
        for name, levels, bound in (("bid", bid, -mid * (1 - x)), ("ask", ask, mid * (1 + x))):
            inside = levels[:bisect.bisect_right(levels, bound, key=lambda level: level[0])]
            out[f"{name}_base_{label}"] = math.fsum(q for _, _, q in inside)
            out[f"{name}_usd_{label}"] = math.fsum(p * q for _, p, q in inside)
        total = out[f"bid_usd_{label}"] + out[f"ask_usd_{label}"]
        out[f"imbalance_{label}"] = (out[f"bid_usd_{label}"] - out[f"ask_usd_{label}"]) / total if total else None
    return out


def test_book_depth_equals_brute_force_on_full_books_of_the_real_recording(tmp_path):
    """Rebuild every full book from the sync snapshot and all deltas in the warehouse, and at each
    periodic snapshot's sequence number compute the bands exactly; book_depth's per-minute
    mean/min/last must equal the same statistics of those brute-force values."""
    items = []
    replay("binance-usdm", binance_recording(), items.append)
    warehouse = Warehouse(tmp_path / "w.duckdb")
    with warehouse.writer() as con:
        con.execute("BEGIN")
        insert_records(con, items)
        con.execute("COMMIT")
        events = con.execute("""
            SELECT symbol, reason, seq, epoch_ms(ts_exchange), bids, asks FROM (
                SELECT symbol, reason, seq, ts_exchange, bids, asks, 0 AS kind FROM raw.book_snapshots
                WHERE reason <> 'periodic'
                UNION ALL
                SELECT symbol, 'delta', last_seq, ts_exchange, bids, asks, 1 FROM raw.book_deltas
                UNION ALL   -- a periodic copy is taken right after the delta carrying its sequence number
                SELECT symbol, reason, seq, ts_exchange, bids, asks, 2 FROM raw.book_snapshots
                WHERE reason = 'periodic')
            ORDER BY symbol, seq, kind""").fetchall()
    _materialize(warehouse, [MICROSTRUCTURE_ASSETS[0]], "2021-07-22")

    books: dict[str, OrderBook] = {}
    per_minute: dict[tuple, list[dict]] = defaultdict(list)
    for symbol, reason, seq, ts_ms, bids, asks in events:
        levels = ([(b["price"], b["qty"]) for b in bids], [(a["price"], a["qty"]) for a in asks])
        if reason == "sync":
            books[symbol] = OrderBook.from_levels(*levels)
        elif reason == "delta":
            books[symbol].apply(*levels)
        elif reason == "periodic":
            full_bids, full_asks = books[symbol].levels()
            assert len(full_bids) + len(full_asks) > len(bids) + len(asks)   # the periodic copy is the ±10 % part
            per_minute[(symbol, ts_ms // 60_000)].append(brute_force_bands(full_bids, full_asks))
    assert sum(map(len, per_minute.values())) == 119 and len(per_minute) == 8

    columns = ["mid"] + [f"{n}_{band_label(b)}" for b in BANDS for n in ("bid_base", "ask_base", "bid_usd", "ask_usd",
                                                                          "imbalance")]
    with warehouse.writer() as con:
        stats = ", ".join(f"{c}_{s}" for c in columns for s in ("mean", "min", "last"))
        rows = con.execute(f"SELECT symbol, epoch(minute) // 60, n_snapshots, {stats} FROM analytics.book_depth"
                           ).fetchall()
    assert len(rows) == len(per_minute)
    for symbol, minute, n_snapshots, *values in rows:
        expected = per_minute[(symbol, minute)]
        assert n_snapshots == len(expected)
        for i, column in enumerate(columns):
            series = [e[column] for e in expected if e[column] is not None]
            want = (sum(series) / len(series), min(series), series[-1]) if series else (None, None, None)
            assert values[3 * i:3 * i + 3] == pytest.approx(want, rel=1e-9, abs=1e-12), (symbol, minute, column)


# --- the simulator ------------------------------------------------------------------------------

SIM_SYMBOL = "BTCUSDT"


@pytest.fixture(scope="module")
def simulated_cascade(tmp_path_factory):
    """The simulator's cascade scenario (1.5 h, BTC; its shortest) through the Binance mapper and
    book sync into a warehouse, with the ground-truth file next to it."""
    from ingest.simulator import ExchangeFeed, SimConfig, load_truth

    tmp = tmp_path_factory.mktemp("sim")
    feed = ExchangeFeed(SimConfig(scenario="cascade", seed=7, hours=1.5, symbols=(SIM_SYMBOL,)), tmp / "truth.jsonl")
    items = []
    handler = FeedHandler(BinanceUsdm(), items.append)
    handler.on_rest("/fapi/v1/fundingInfo", orjson.dumps(feed.funding_info()), feed.start_ms * 1_000_000)
    prefix = SIM_SYMBOL.lower()
    streams = [f"{prefix}@depth@500ms", f"{prefix}@aggTrade", f"{prefix}@markPrice@1s", f"{prefix}@forceOrder"]
    next_poll = feed.start_ms
    for message in feed.messages(streams):
        ts = message.ts_ms * 1_000_000
        frame = orjson.dumps({"stream": message.stream, "data": message.payload})
        for native in handler.on_ws(frame, ts):
            body = orjson.dumps(feed.depth_snapshot(native, limit=1000))
            handler.on_rest(f"/fapi/v1/depth?symbol={native}&limit=1000", body, ts)
        if message.ts_ms >= next_poll:     # the ingest service polls open interest over REST
            body = orjson.dumps(feed.open_interest(SIM_SYMBOL))
            handler.on_rest(f"/fapi/v1/openInterest?symbol={SIM_SYMBOL}", body, ts)
            next_poll += 10_000
    feed.close()
    assert handler.stats.accounted == handler.stats.messages and not handler.stats.dead_letters
    warehouse = Warehouse(tmp / "w.duckdb")
    with warehouse.writer() as con:
        con.execute("BEGIN")
        insert_records(con, items)
        con.execute("COMMIT")
    _materialize(warehouse, MICROSTRUCTURE_ASSETS, "2025-10-10")
    return warehouse, load_truth(tmp / "truth.jsonl")


def test_book_depth_matches_the_simulators_true_depth(simulated_cascade):
    """Exact where the truth has the full book: each checkpoint book plus the one delta that follows
    it is the book of the next periodic snapshot, band by band. And per minute, against the true
    per-second 2 % depth (sampled half a second apart from the periodic snapshots)."""
    warehouse, truth = simulated_cascade
    day = dt.datetime(2025, 10, 10)
    with warehouse.writer() as con:
        keys, depth = snapshot_depths(con, day, day + dt.timedelta(days=1))
        deltas = {first: (last, bids, asks) for first, last, bids, asks in con.execute(
            "SELECT first_seq, last_seq, bids, asks FROM raw.book_deltas").fetchall()}
        minutes = con.execute("SELECT epoch(minute), depth_usd_2_mean FROM analytics.book_depth").fetchall()
    snapshot_at = {seq: i for i, seq in enumerate(keys["seq"])}
    checked = 0
    for checkpoint in truth["book"]:
        if checkpoint["last_update_id"] + 1 not in deltas:
            continue   # the first checkpoint predates the REST snapshot the feed synced from
        last, bids, asks = deltas[checkpoint["last_update_id"] + 1]
        book = OrderBook.from_levels(checkpoint["bids"], checkpoint["asks"])
        book.apply([(b["price"], b["qty"]) for b in bids], [(a["price"], a["qty"]) for a in asks])
        exact = brute_force_bands(*book.levels())
        i = snapshot_at[last]
        assert depth.mid[i] == exact["mid"]
        for j, band in enumerate(BANDS):
            label = band_label(band)
            assert (depth.bid_base[i, j], depth.ask_base[i, j], depth.bid_usd[i, j], depth.ask_usd[i, j]) == \
                pytest.approx(tuple(exact[f"{n}_{label}"] for n in ("bid_base", "ask_base", "bid_usd", "ask_usd")),
                              rel=1e-9)
        checked += 1
    assert checked >= len(truth["book"]) - 1

    ts = np.array([s["ts"] / 1000 for s in truth["second"]])
    true_depth = np.array([s["depth2_bid_usd"] + s["depth2_ask_usd"] for s in truth["second"]])
    errors = [mean / true_depth[(ts > minute) & (ts <= minute + 60)].mean() - 1 for minute, mean in minutes
              if ((ts > minute) & (ts <= minute + 60)).sum() == 60]
    assert len(errors) >= 88 and max(map(abs, errors)) < 0.02 and np.median(np.abs(errors)) < 0.005


def test_cascade_windows_and_depth_collapse_match_the_ground_truth(simulated_cascade):
    warehouse, truth = simulated_cascade
    with warehouse.writer() as con:
        detected = con.execute("SELECT epoch(cascade_start), epoch(cascade_end), depth_median_ratio_2pct, "
                               "depth_ratio_2pct FROM analytics.liquidation_cascades ORDER BY 1").fetchall()
    windows = [(w["start_ms"] / 1000, w["end_ms"] / 1000) for w in truth["cascade_window"]]
    match = match_windows([d[:2] for d in detected], windows)
    assert match.recall >= 0.9 and match.precision >= 0.9, (detected, windows)

    # The same ratios from the simulator's true per-second 2 % depth over the detected cascade and
    # the hour before it. The minimum is a single instant, and the truth samples each second at a
    # different instant than the feed's once-a-second book copy, so it only agrees loosely.
    ts = np.array([s["ts"] / 1000 for s in truth["second"]])
    true_depth = np.array([s["depth2_bid_usd"] + s["depth2_ask_usd"] for s in truth["second"]])
    for start, end, median_ratio, min_ratio in detected:
        during = true_depth[(ts >= start) & (ts <= end)]
        before = np.median(true_depth[(ts >= start - 3600) & (ts < start)])
        assert median_ratio == pytest.approx(np.median(during) / before, rel=0.1)
        assert min_ratio == pytest.approx(during.min() / before, rel=0.2)
