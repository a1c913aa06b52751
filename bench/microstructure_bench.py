"""Wall time of every daily microstructure asset on one simulated day, next to ohlcv_1m.

The day: BTC, ETH and SOL USD-M perpetuals with a 2025-10-10-like cascade at 20:50 UTC (2 % depth
withdrawn ~20x for half an hour, prices down 8-20 %, open interest down ~12 %, funding flipping,
a burst of forced orders), at realistic volume: >= 2M trades, one periodic book snapshot per
second per symbol with 150-300 levels a side within ±10 % of mid, mark price/funding every
second, open interest every 10 s, Binance-style sampled liquidations.

Trades, funding, open interest and liquidations go through ``warehouse.loader.insert_records``
(the loader's parsing SQL). The 260k book snapshots (~100M levels) are built as one Arrow table
per symbol in the raw table's own schema (``records.table_schema``): as Python record objects
they would take minutes and tens of GB before the measurement even starts.

Each asset is timed as one ``dagster.materialize`` of its partition (checks, metadata, charts
and replica publishing included), in dependency order, after ohlcv_1m on the same day: ohlcv_1m
over the same 2M trades is the baseline, so the ratios carry across machines.
"""

from __future__ import annotations

import datetime as dt
import time
import warnings
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pyarrow as pa

from ingest import records
from ingest.records import Funding, Liquidation, OpenInterest, Trade
from warehouse.loader import insert_records
from warehouse.store import Warehouse

DAY = dt.date(2025, 10, 10)
DAY_MS = 86_400_000
CASCADE_AT_S = 20 * 3600 + 50 * 60
INSERT_CHUNK = 250_000
QUIET = {"loggers": {"console": {"config": {"log_level": "WARNING"}}}}


@dataclass(frozen=True)
class Market:
    symbol: str
    price: float
    tick: float
    levels: int          # target levels per side within ±10 %
    depth2_usd: float    # bid + ask within 2 % in calm
    trade_share: float
    crash: float         # peak-to-trough move of the cascade
    oi_coins: float


MARKETS = (
    Market("BTC", 121_550.0, 0.1, 300, 45e6, 0.5, 0.08, 70_000.0),
    Market("ETH", 4_347.0, 0.01, 250, 18e6, 0.3, 0.12, 2_000_000.0),
    Market("SOL", 221.66, 0.001, 150, 5e6, 0.2, 0.20, 12_000_000.0),
)


def _crash_path(seconds: np.ndarray) -> np.ndarray:
    """0 before the trigger, 1 at the trough (trigger + 25 min), 0.4 after the partial recovery."""
    t = (seconds - CASCADE_AT_S) / 60.0
    down = np.clip((t - 2) / 23, 0, 1)
    up = np.clip((t - 30) / 45, 0, 1)
    return down * (1 - 0.6 * up)


def _withdrawal(seconds: np.ndarray) -> np.ndarray:
    """Share of near-mid liquidity left: 1 in calm, 5 % from trigger + 6 to + 34 minutes."""
    t = (seconds - CASCADE_AT_S) / 60.0
    gone = np.clip((t - 2) / 4, 0, 1) * (1 - np.clip((t - 34) / 16, 0, 1))
    return 1 - 0.95 * gone


def _mid_ticks(market: Market, rng: np.random.Generator) -> np.ndarray:
    seconds = np.arange(86_400)
    walk = np.cumsum(rng.normal(0, 0.6 / np.sqrt(365 * 86_400), seconds.size))
    price = market.price * np.exp(walk) * (1 - market.crash * _crash_path(seconds))
    return np.round(price / market.tick).astype(np.int64)


def _book_table(market: Market, symbol: str, mid_ticks: np.ndarray, t0_ms: int, rng) -> pa.Table:
    offsets = np.unique(np.ceil(np.geomspace(1, 0.099 * market.price / market.tick, market.levels)).astype(np.int64))
    n, width = mid_ticks.size, offsets.size
    rel = offsets * market.tick / market.price
    per_level_usd = market.depth2_usd / 2 / max(int((rel <= 0.02).sum()), 1)
    near = rel <= 0.03
    liquidity = np.where(near[None, :], _withdrawal(np.arange(n))[:, None], 1.0)
    tables = []
    for side, sign in (("bids", -1), ("asks", 1)):
        price = (mid_ticks[:, None] + sign * offsets[None, :]) * market.tick
        qty = per_level_usd / price * liquidity * rng.lognormal(0, 0.3, (n, width))
        values = pa.StructArray.from_arrays([pa.array(price.ravel()), pa.array(qty.ravel())], names=["price", "qty"])
        tables.append(pa.ListArray.from_arrays(pa.array(np.arange(n + 1, dtype=np.int32) * width), values,
                                               type=pa.list_(records.LEVEL)))
    ts = pa.array((t0_ms + np.arange(n, dtype=np.int64) * 1000) * 1000, pa.timestamp("us"))
    return pa.table({"exchange": ["binance-usdm"] * n, "symbol": [symbol] * n, "symbol_native": [symbol] * n,
                     "ts_exchange": ts, "ts_recv": ts, "bids": tables[0], "asks": tables[1],
                     "seq": np.arange(n, dtype=np.int64), "reason": ["periodic"] * n,
                     "checksum": pa.nulls(n, pa.int64()), "uncrossed": pa.nulls(n, pa.int64())},
                    schema=records.table_schema(records.BookSnapshot))


def _fmt(values: np.ndarray, decimals: int) -> list[str]:
    return np.char.mod(f"%.{decimals}f", values).tolist()


def _records(market: Market, symbol: str, mid_ticks: np.ndarray, t0_ms: int, n_trades: int, rng):
    native = symbol.replace("-PERP", "").replace("-", "")
    common = {"exchange": "binance-usdm", "symbol": symbol, "symbol_native": native}
    seconds = np.arange(86_400)
    decimals = max(0, int(round(-np.log10(market.tick))))
    mid = mid_ticks * market.tick
    # Trades: 5x the calm rate while the cascade runs, sell-heavy on the way down.
    rate = 1 + 4 * ((seconds >= CASCADE_AT_S) & (seconds < CASCADE_AT_S + 3600))
    trade_s = np.sort(rng.choice(seconds, n_trades, p=rate / rate.sum()))
    ts_ms = t0_ms + trade_s * 1000 + rng.integers(0, 1000, n_trades)
    ts_ms.sort()
    sell = rng.random(n_trades) < 0.5 + 0.2 * _crash_path(trade_s)
    price = mid[trade_s] + np.where(sell, -1, 1) * market.tick
    qty = np.maximum(np.round(rng.lognormal(np.log(4_000 / market.price), 1.4, n_trades), 3), 0.001)
    prices, qtys = _fmt(price, decimals), _fmt(qty, 3)
    for lo in range(0, n_trades, INSERT_CHUNK):
        yield [Trade(**common, ts_exchange=int(ts_ms[i]), ts_recv=int(ts_ms[i]) * 1_000_000 + 5_000_000,
                     trade_id=str(i), price=prices[i], qty=qtys[i], qty_unit="base",
                     side="sell" if sell[i] else "buy", is_aggregated=True, first_trade_id=i, last_trade_id=i)
               for i in range(lo, min(lo + INSERT_CHUNK, n_trades))]
    crash = _crash_path(seconds)
    funding_rate = 1e-4 + rng.normal(0, 5e-6, seconds.size) - 6e-4 * crash
    mark = _fmt(mid * (1 + 2e-4 * rng.standard_normal(seconds.size)), decimals)
    index = _fmt(mid, decimals)
    rates = _fmt(funding_rate, 8)
    yield [Funding(**common, ts_exchange=t0_ms + int(s) * 1000, ts_recv=(t0_ms + int(s) * 1000) * 1_000_000,
                   rate=rates[s], interval_hours=8, next_funding_time=None, mark_price=mark[s],
                   index_price=index[s], is_realised=False) for s in seconds]
    oi_s = seconds[::10]
    oi = _fmt(market.oi_coins * (1 + 0.01 * np.sin(oi_s / 7_000)) * (1 - 0.15 * crash[oi_s]), 3)
    yield [OpenInterest(**common, ts_exchange=t0_ms + int(s) * 1000 + 7, ts_recv=(t0_ms + int(s) * 1000) * 1_000_000,
                        open_interest=oi[i], qty_unit="base") for i, s in enumerate(oi_s)]
    # Forced orders, sampled like Binance's stream (at most one per second): a few per hour in
    # calm, most seconds of the crash, 90 % longs.
    hot = (crash > 0.02) & (seconds < CASCADE_AT_S + 40 * 60)
    liq_s = seconds[rng.random(seconds.size) < np.where(hot, 0.8, 0.01)]
    is_long = rng.random(liq_s.size) < np.where(hot[liq_s], 0.9, 0.5)
    usd = rng.lognormal(np.log(np.where(hot[liq_s], 100_000, 5_000) * market.depth2_usd / 45e6), 1.0)
    liq_qty = _fmt(np.maximum(usd / mid[liq_s], 10.0 ** -3), 3)
    liq_price = _fmt(mid[liq_s] * np.where(is_long, 0.995, 1.005), decimals)
    yield [Liquidation(**common, ts_exchange=t0_ms + int(s) * 1000 + 500, ts_recv=(t0_ms + int(s) * 1000) * 1_000_000,
                       order_side="sell" if is_long[i] else "buy",
                       liquidated_position="long" if is_long[i] else "short",
                       price=liq_price[i], avg_price=liq_price[i], qty=liq_qty[i], qty_unit="base",
                       order_status="FILLED", is_sampled=True) for i, s in enumerate(liq_s)]


def generate(warehouse: Warehouse, n_trades: int, seed: int = 10) -> dict[str, int]:
    rng = np.random.default_rng(seed)
    t0_ms = int(dt.datetime.combine(DAY, dt.time(), dt.UTC).timestamp() * 1000)
    counts: dict[str, int] = {}
    with warehouse.writer() as con:
        for market in MARKETS:
            symbol = f"{market.symbol}-USDT-PERP"
            mid_ticks = _mid_ticks(market, rng)
            book = _book_table(market, symbol, mid_ticks, t0_ms, rng)
            con.execute("INSERT INTO raw.book_snapshots BY NAME SELECT * FROM book")
            counts["book_snapshots"] = counts.get("book_snapshots", 0) + book.num_rows
            counts["book_levels"] = counts.get("book_levels", 0) + sum(
                len(book.column(side).combine_chunks().flatten()) for side in ("bids", "asks"))
            del book
            for batch in _records(market, symbol, mid_ticks, t0_ms, int(n_trades * market.trade_share), rng):
                con.execute("BEGIN")
                for table, n in insert_records(con, batch).items():
                    counts[table] = counts.get(table, 0) + n
                con.execute("COMMIT")
    return counts


def _materialize(asset, deps, resources, partition: str) -> tuple[float, int]:
    import dagster as dg

    started = time.perf_counter()
    result = dg.materialize([*deps, asset], selection=[asset], resources=resources, partition_key=partition,
                            run_config=QUIET)
    seconds = time.perf_counter() - started
    failed = [c.check_name for c in result.get_asset_check_evaluations() if not c.passed]
    if failed:
        raise RuntimeError(f"{asset.key.to_user_string()}: checks failed: {failed}")
    [event] = result.get_asset_materialization_events()
    return seconds, event.event_specific_data.materialization.metadata["dagster/row_count"].value


def run(tmp: Path, n_trades: int, console) -> dict:
    import dagster as dg

    warnings.filterwarnings("ignore", category=dg.BetaWarning)
    from dagster_project.assets.microstructure import MICROSTRUCTURE_ASSETS
    from dagster_project.assets.microstructure_liquidation_map import LIQUIDATION_MAP_ASSETS
    from dagster_project.assets.ohlcv import ohlcv_1m
    from dagster_project.resources import WarehouseResource

    warehouse = Warehouse(tmp / "micro.duckdb")
    console.print(f"simulating {DAY}: 3 symbols, {n_trades:,} trades, one book snapshot per second per symbol")
    started = time.perf_counter()
    counts = generate(warehouse, n_trades)
    console.print(f"  generated in {time.perf_counter() - started:.1f}s: "
                  + ", ".join(f"{k}={v:,}" for k, v in sorted(counts.items())))
    resources = {"warehouse": WarehouseResource(database=str(warehouse.path), replica=str(tmp / "micro_ro.duckdb"))}
    upstream = [dg.AssetSpec(["raw", t]) for t in ("trades", "book_snapshots", "open_interest", "funding",
                                                   "liquidations")]
    partition = DAY.isoformat()
    baseline_s, baseline_rows = _materialize(ohlcv_1m, upstream, resources, partition)
    console.print(f"  ohlcv_1m (baseline): {baseline_s:.2f}s, {baseline_rows:,} rows")
    rows, done = [], [ohlcv_1m]
    for asset in [*MICROSTRUCTURE_ASSETS, *LIQUIDATION_MAP_ASSETS]:
        seconds, written = _materialize(asset, [*upstream, *(a.to_source_asset() for a in done)], resources, partition)
        done.append(asset)
        name = asset.key.to_user_string()
        console.print(f"  {name}: {seconds:.2f}s, {written:,} rows")
        rows.append({"asset": name, "rows": written, "seconds": seconds, "ratio": seconds / baseline_s})
    with warehouse.writer() as con:
        cascades = con.execute("SELECT asset, side, cascade_start, usd, price_move_bps, depth_ratio_2pct "
                               "FROM analytics.liquidation_cascades ORDER BY cascade_start").fetchall()
        withdrawals = con.execute("SELECT symbol, episode_start, episode_end, worst_ratio "
                                  "FROM analytics.liquidity_withdrawals ORDER BY 1, 2").fetchall()
    return {"inputs": counts, "baseline": {"asset": "analytics/ohlcv_1m", "rows": baseline_rows,
                                           "seconds": baseline_s},
            "assets": rows, "total_seconds": sum(r["seconds"] for r in rows),
            "cascades": [[str(v) for v in c] for c in cascades],
            "withdrawals": [[str(v) for v in w] for w in withdrawals]}


# --- detection on the simulator's ground truth ---------------------------------------------------

SCENARIO_END = dt.datetime(2025, 10, 11, tzinfo=dt.UTC)   # 190 minutes after the 20:50 UTC trigger


def simulate_into(warehouse: Warehouse, hours: float, symbols: tuple[str, ...], truth_path: Path) -> int:
    """The simulator's cascade scenario ending at midnight UTC (from 4.2 h on, its trigger is the
    2025-10-10 one, 20:50) through the Binance mapper and book sync (REST depth snapshots on
    request, OI polled every 10 s) into the raw tables."""
    import orjson

    from ingest.feed import FeedHandler
    from ingest.simulator import ExchangeFeed, SimConfig
    from ingest.venues.binance_usdm import BinanceUsdm

    start = SCENARIO_END - dt.timedelta(hours=hours)
    feed = ExchangeFeed(SimConfig(scenario="cascade", seed=7, hours=hours, symbols=symbols,
                                  start_ms=int(start.timestamp() * 1000)), truth_path)
    batch: list = []
    handler = FeedHandler(BinanceUsdm(), batch.append)
    handler.on_rest("/fapi/v1/fundingInfo", orjson.dumps(feed.funding_info()), feed.start_ms * 1_000_000)
    streams = [f"{s.lower()}@{kind}" for s in symbols for kind in ("depth@500ms", "aggTrade", "markPrice@1s",
                                                                     "forceOrder")]
    next_poll, total = feed.start_ms, 0
    with warehouse.writer() as con:
        for message in feed.messages(streams):
            ts = message.ts_ms * 1_000_000
            for native in handler.on_ws(orjson.dumps({"stream": message.stream, "data": message.payload}), ts):
                body = orjson.dumps(feed.depth_snapshot(native, limit=1000))
                handler.on_rest(f"/fapi/v1/depth?symbol={native}&limit=1000", body, ts)
            if message.ts_ms >= next_poll:
                for symbol in symbols:
                    handler.on_rest(f"/fapi/v1/openInterest?symbol={symbol}", orjson.dumps(feed.open_interest(symbol)),
                                    ts)
                next_poll += 10_000
            if len(batch) >= INSERT_CHUNK:
                total += _flush(con, batch)
        total += _flush(con, batch)
    feed.close()
    return total


def _flush(con, batch: list) -> int:
    con.execute("BEGIN")
    insert_records(con, batch)
    con.execute("COMMIT")
    n = len(batch)
    batch.clear()
    return n


def detection(tmp: Path, hours: float, console) -> dict:
    """Cascade windows found (recall, precision), depth-collapse ratios against the true per-second
    2 % depth, and how many minutes before each true cascade window the stress index rose."""
    import dagster as dg

    warnings.filterwarnings("ignore", category=dg.BetaWarning)
    from dagster_project.assets.microstructure import MICROSTRUCTURE_ASSETS
    from dagster_project.resources import WarehouseResource
    from ingest.simulator import load_truth
    from transforms.cascades import detect_cascades, match_windows, thresholds_for
    from transforms.market_stress import lead_time_minutes

    symbols = ("BTCUSDT", "ETHUSDT", "SOLUSDT")
    warehouse = Warehouse(tmp / "sim.duckdb")
    console.print(f"simulating the cascade scenario: {hours:g} h of {', '.join(symbols)} to midnight UTC")
    started = time.perf_counter()
    n = simulate_into(warehouse, hours, symbols, tmp / "truth.jsonl")
    console.print(f"  {n:,} records in {time.perf_counter() - started:.0f}s")
    truth = load_truth(tmp / "truth.jsonl")
    first = dt.datetime.fromtimestamp(truth["meta"][0]["start_ms"] / 1000, dt.UTC)
    resources = {"warehouse": WarehouseResource(database=str(warehouse.path), replica=str(tmp / "sim_ro.duckdb"))}
    upstream = [dg.AssetSpec(["raw", t]) for t in ("trades", "book_snapshots", "open_interest", "funding",
                                                   "liquidations")]
    tags = {"dagster/asset_partition_range_start": f"{first:%Y-%m-%d}",
            "dagster/asset_partition_range_end": f"{SCENARIO_END - dt.timedelta(days=1):%Y-%m-%d}"}
    dg.materialize([*upstream, *MICROSTRUCTURE_ASSETS], resources=resources, tags=tags, run_config=QUIET)

    with warehouse.writer() as con:
        detected = con.execute("SELECT asset, epoch(cascade_start), epoch(cascade_end), depth_ratio_2pct, "
                               "depth_median_ratio_2pct FROM analytics.liquidation_cascades ORDER BY 2").fetchall()
        # A minute's index is known when the minute closes.
        stress = {a: con.execute("SELECT epoch(minute) + 60, stress_index FROM analytics.market_stress "
                                 "WHERE asset = ? ORDER BY 1", [a]).fetchall() for a in ("BTC", "ETH", "SOL")}
        withdrawals = con.execute("SELECT symbol, episode_start, episode_end, worst_ratio "
                                  "FROM analytics.liquidity_withdrawals ORDER BY 1, 2").fetchall()
    report = {"hours": hours, "cascades": [], "stress": []}
    windows = {w["symbol"][:-4]: (w["start_ms"] / 1000, w["end_ms"] / 1000) for w in truth["cascade_window"]}
    seconds = {}
    for s in truth["second"]:
        seconds.setdefault(s["symbol"][:-4], []).append((s["ts"] / 1000, s["depth2_bid_usd"] + s["depth2_ask_usd"]))
    matches = [match_windows([d[1:3] for d in detected if d[0] == asset], [window])
               for asset, window in windows.items()]
    report["recall"] = float(np.mean([m.recall for m in matches]))
    report["precision"] = float(np.mean(np.concatenate([m.detected_matched for m in matches])))
    # A second yardstick: §6.3 applied to every liquidation the venue really had (the feed only
    # shows one per symbol per second) with the true mid, so what sampling costs is measured too.
    unsampled = []
    for asset in windows:
        liqs = [x for x in truth["liquidation"] if x["symbol"][:-4] == asset]
        ts, mid = zip(*[(s["ts"] / 1000, s["mid"]) for s in truth["second"] if s["symbol"][:-4] == asset], strict=True)
        found = detect_cascades([x["ts"] / 1000 for x in liqs], [x["position"] for x in liqs],
                                [x["notional"] for x in liqs], price=(ts, mid), thresholds=thresholds_for(asset))
        mine = [d[1:3] for d in detected if d[0] == asset]
        unsampled.append(match_windows(mine, [(c.start, c.end) for c in found]))
        report.setdefault("unsampled_cascades", []).extend(
            {"asset": asset, "side": c.side, "start": str(dt.datetime.fromtimestamp(c.start, dt.UTC)),
             "minutes": c.duration_s / 60, "usd": c.usd} for c in found)
    report["recall_vs_unsampled"] = float(np.mean(np.concatenate([m.truth_matched for m in unsampled])))
    report["precision_vs_unsampled"] = float(np.mean(np.concatenate([m.detected_matched for m in unsampled])))
    for asset, start, end, min_ratio, median_ratio in detected:
        ts, depth = (np.array(v) for v in zip(*seconds[asset], strict=True))
        during, before = depth[(ts >= start) & (ts <= end)], np.median(depth[(ts >= start - 3600) & (ts < start)])
        report["cascades"].append({
            "asset": asset, "start": str(dt.datetime.fromtimestamp(start, dt.UTC)), "minutes": (end - start) / 60,
            "depth_ratio_2pct": min_ratio, "true_min_ratio": float(during.min() / before),
            "depth_median_ratio_2pct": median_ratio, "true_median_ratio": float(np.median(during) / before)})
    trigger = truth["meta"][0]["trigger_ms"] / 1000
    for asset, (start, end) in windows.items():
        ts, index = (np.array(v, dtype=np.float64) for v in zip(*stress[asset], strict=True))
        first_detected = min((d[1] for d in detected if d[0] == asset), default=float("nan"))
        calm = index[(ts < trigger - 3600) & np.isfinite(index)]
        path = (ts >= trigger - 600) & (ts <= start + 900)
        report["stress"].append({
            "asset": asset, "truth_start": str(dt.datetime.fromtimestamp(start, dt.UTC)),
            **{f"lead_minutes_at_{level}": lead_time_minutes(ts, index, start, threshold=level) for level in (25, 50)},
            **{f"lead_vs_first_detected_at_{level}": lead_time_minutes(ts, index, first_detected, threshold=level)
               for level in (25, 50)},
            "calm_p99": float(np.percentile(calm, 99)) if calm.size else None,
            "max_in_window": float(np.nanmax(index[(ts >= start) & (ts <= end)])),
            # (minutes after the trigger the value was known, index)
            "path": [[round((t - trigger) / 60), None if np.isnan(v) else round(v, 1)]
                     for t, v in zip(ts[path], index[path], strict=True)],
        })
    report["withdrawals"] = [[str(v) for v in w] for w in withdrawals]
    return report
