"""The live ingest service against the exchange simulator, with every fault the simulator injects.

Real processes throughout: the simulator's websocket/REST server on a local port, the Tansu broker,
the ingest service's asyncio loop, the loader into a DuckDB file.
"""

from __future__ import annotations

import asyncio
import signal
import threading
import time
from collections import Counter, defaultdict

import orjson
import websockets

from ingest.service import IngestConfig, IngestService, frames_unread
from ingest.simulator import FaultConfig, SimConfig, SimulatorThread, StallSpec, load_truth
from ingest.spill import SpillingSink
from ingest.venues.binance_usdm import BinanceUsdm
from fault_harness import run_for_market_time, truth_trade_ids
from ingest.kafka import end_offsets, ensure_topics, new_consumer, partitions_of
from transforms.order_book import OrderBook
from warehouse.loader import load_once
from warehouse.store import Warehouse

SYMBOLS = ["BTCUSDT", "ETHUSDT", "SOLUSDT"]


class RecordingSink(SpillingSink):
    """The real sink, also keeping what it was given so the test can compare with the truth."""

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.records = []

    def send(self, record) -> None:
        self.records.append(record)
        super().send(record)


def run_service(sim, bootstrap, run_dir, seconds, **overrides) -> IngestService:
    config = IngestConfig(symbols=SYMBOLS, ws_url=sim.ws_url, rest_url=sim.http_url, bootstrap=bootstrap,
                          run_dir=run_dir, duration_s=seconds, backoff_base_s=0.2, backoff_max_s=2.0,
                          oi_interval_s=1.0, **overrides)
    sink = RecordingSink(bootstrap, run_dir / "spill.jsonl", delivery_timeout_ms=5000)
    service = IngestService(BinanceUsdm(), config, sink=sink)
    return service


def check_books_against_truth(records, truth) -> int:
    """Rebuild books from the emitted records; compare at every truth checkpoint we were synced for."""
    checkpoints = defaultdict(dict)
    for cp in truth["book"]:
        checkpoints[cp["symbol"]][cp["last_update_id"]] = cp
    books: dict[str, OrderBook | None] = {}
    compared = 0
    for r in records:
        native = getattr(r, "symbol_native", None)
        if r.record_type == "book_snapshot" and r.reason in ("sync", "resync"):
            books[native] = OrderBook.from_levels(r.bids, r.asks)
        elif r.record_type == "feed_event" and r.kind in ("gap", "disconnect", "stall") and r.symbol:
            books[r.symbol.replace("-PERP", "").replace("-", "")] = None
        elif r.record_type == "book_delta" and books.get(native) is not None:
            books[native].apply(r.bids, r.asks)
            assert not books[native].is_crossed()
            cp = checkpoints[native].get(r.last_seq)
            if cp is not None:
                assert books[native] == OrderBook.from_levels(cp["bids"], cp["asks"]), (native, r.last_seq)
                compared += 1
    return compared


def test_faults_reconnects_and_gaps_keep_books_exact_and_trades_complete(tmp_path, broker):
    ensure_topics(broker.bootstrap, 3)
    faults = FaultConfig(drop_every_s=240, gap_every_s=150, malformed_every_s=90, rest_error_rate=0.2,
                         stalls=(StallSpec(stream="btcusdt@markPrice@1s", start_s=300, duration_s=240),))
    config = SimConfig(scenario="calm", seed=11, hours=1, speed=30, faults=faults,
                       truth_path=str(tmp_path / "truth.jsonl"), checkpoint_every_s=20)
    with SimulatorThread(config) as sim:
        # 50 minutes of market (100 s at 30x), however long a loaded machine takes to play them: an
        # injected 429 carries Binance's Retry-After (up to the next wall-clock minute, 61 s), during
        # which no snapshot can be fetched, and the books must still sync and reach 20 checkpoints.
        service = run_service(sim, broker.bootstrap, tmp_path, seconds=None,
                              silence_limit_s={"markPrice@1s": 3.0})
        asyncio.run(run_for_market_time(service, sim, 3000))
    truth = load_truth(tmp_path / "truth.jsonl")
    records = service.sink.records
    events = Counter(r.kind for r in records if r.record_type == "feed_event")
    injected = Counter(f["fault"] for f in truth["fault"])
    assert injected["drop"] >= 3 and injected["sequence_gap"] >= 3 and injected["malformed"] >= 3

    # Books: exact at every checkpoint while synced, never crossed, and every gap resynced.
    assert check_books_against_truth(records, truth) >= 20
    assert service.handler.book_sync.counts["crossed"] == 0
    assert events["gap"] >= 1 and service.events["disconnects"] >= 3 and service.events["reconnects"] >= 3
    for symbol in {r.symbol for r in records if r.record_type == "feed_event" and r.kind == "gap"}:
        kinds = [r.kind for r in records if r.record_type == "feed_event" and r.symbol == symbol
                 and r.kind in ("gap", "resync")]
        assert kinds[-1] == "resync" or kinds.count("resync") >= kinds.count("gap") - 1, (symbol, kinds)

    # Stall: markPrice went silent while the connection stayed up -> detected, reconnected.
    stalls = [orjson.loads(r.detail) for r in records if r.record_type == "feed_event" and r.kind == "stall"]
    assert stalls and all(s["stream"] == "btcusdt@markPrice@1s" for s in stalls)

    # Malformed frames: in md.dlq with the reason and the frame verbatim; nothing crashed.
    letters = [r for r in records if r.record_type == "dead_letter"]
    assert letters and all(r.reason for r in letters)
    assert {(r.reason, r.raw) for r in letters} <= dlq_contents(broker.bootstrap)

    # Trades: never silently lost, never invented. A backfill that met an injected 429 (Retry-After
    # up to a minute) may still be pending at shutdown; its ids are then inside a reported, still-open
    # gap. Between the first and last id received, the truth is exactly what arrived plus those gaps.
    ids = trade_ids(records)
    open_gaps = service.handler._open_gaps
    published = truth_trade_ids(truth)
    for symbol, got in ids.items():
        assert len(got) == len(set(got)), f"{symbol}: duplicated trade ids"
        reported = {i for first, last in open_gaps.get(BinanceUsdm().normalize_symbol(symbol), ()) for i in
                    range(first, last + 1)}
        in_range = {i for sym, i in published if sym == symbol and min(got) <= i <= max(got)}
        assert set(got) - in_range == set(), f"{symbol}: ids received that the venue never published"
        assert in_range - set(got) - reported == set(), f"{symbol}: ids lost without a reported gap"
        assert reported <= in_range, f"{symbol}: a reported gap covers ids the venue never published"
    assert events["trade_gap"] >= 5 and events["trade_backfill"] >= events["trade_gap"] // 2


def dlq_contents(bootstrap: str) -> set[tuple[str, str]]:
    consumer = new_consumer(bootstrap)
    try:
        tps = partitions_of(consumer, ["md.dlq"])
        ends = end_offsets(consumer, tps)
        for tp in tps:
            consumer.seek(tp, 0)
        found, deadline = set(), time.monotonic() + 20
        while any(consumer.position(tp) < ends[tp] for tp in tps) and time.monotonic() < deadline:
            for messages in consumer.poll(500).values():
                found |= {(v["reason"], v["raw"]) for v in map(orjson.loads, (m.value for m in messages))}
        return found
    finally:
        consumer.close()


def trade_ids(records) -> dict[str, list[int]]:
    ids = defaultdict(list)
    for r in records:
        if r.record_type == "trade":
            ids[r.symbol_native].append(int(r.trade_id))
    return ids


async def run_until_backfilled(service: IngestService, at_least_s: float, at_most_s: float) -> None:
    """Run the service for ``at_least_s``, then until no trade gap is open (backfills are REST round
    trips that a loaded machine makes slower), but no longer than ``at_most_s``."""
    task = asyncio.create_task(service.run())
    started = time.monotonic()
    while not task.done():
        await asyncio.sleep(0.5)
        elapsed = time.monotonic() - started
        if elapsed >= at_most_s or (elapsed >= at_least_s and service.handler.missing_trades() == 0):
            service.request_stop()
    await task


def test_dropped_connections_and_malformed_trades_lose_no_trade(tmp_path, broker):
    """Every aggTrade the venue published while we ran arrives exactly once, via the stream or a backfill."""
    ensure_topics(broker.bootstrap, 3)
    config = SimConfig(scenario="calm", seed=4, hours=1, speed=30, truth_path=str(tmp_path / "truth.jsonl"),
                       faults=FaultConfig(drop_every_s=120, malformed_every_s=60))
    with SimulatorThread(config) as sim:
        service = run_service(sim, broker.bootstrap, tmp_path, seconds=None)
        asyncio.run(run_until_backfilled(service, at_least_s=30, at_most_s=100))
    ids = trade_ids(service.sink.records)
    truth_ids = truth_trade_ids(load_truth(tmp_path / "truth.jsonl"))
    assert service.events["disconnects"] >= 3 and service.events["trade_backfills"] >= 3
    assert service.handler.missing_trades() == 0
    for symbol, got in ids.items():
        assert len(got) == len(set(got)) > 500, symbol
        assert sorted(got) == list(range(min(got), max(got) + 1)), f"{symbol}: trade ids missing"
        assert {(symbol, i) for i in got} <= truth_ids


def test_a_broker_outage_spills_to_disk_and_loses_nothing(tmp_path, fresh_broker):
    """30 s with the broker frozen (its connections hang, as in a network partition): nothing lost."""
    warehouse = Warehouse(tmp_path / "w.duckdb")
    config = SimConfig(scenario="calm", seed=5, hours=1, speed=20)
    with SimulatorThread(config) as sim:
        service = run_service(sim, fresh_broker.bootstrap, tmp_path, seconds=55)
        thread = threading.Thread(target=asyncio.run, args=(service.run(),))
        thread.start()
        time.sleep(8)
        assert load_once(warehouse, fresh_broker.bootstrap).rows["trades"] > 0
        fresh_broker.process.send_signal(signal.SIGSTOP)
        try:
            time.sleep(30)
            assert service.sink.spilling and service.sink.spill_bytes > 0
            peak = service.sink.spilled_total
        finally:
            fresh_broker.process.send_signal(signal.SIGCONT)
        deadline = time.monotonic() + 30
        while service.sink.spilling and time.monotonic() < deadline:
            time.sleep(0.5)
        assert not service.sink.spilling and service.sink.spill_bytes == 0
        thread.join(60)
    assert load_once(warehouse, fresh_broker.bootstrap).broker_resets == []
    sent = {(r.symbol, r.trade_id) for r in service.sink.records if r.record_type == "trade"}
    with warehouse.writer() as con:
        loaded = set(con.execute("SELECT symbol, trade_id FROM raw.trades").fetchall())
    assert loaded == sent and len(sent) > 1000
    assert peak > 1000 and service.sink.drained_total >= peak


def test_ingest_cli_reports_status_and_stops_cleanly_on_sigterm(tmp_path, fresh_broker):
    import json
    import os
    import subprocess
    import sys

    env = {k: v for k, v in os.environ.items() if not k.startswith("PERPFLOW_")}
    env.update(PERPFLOW_HOME=str(tmp_path), PERPFLOW_KAFKA_BOOTSTRAP=fresh_broker.bootstrap, PYTHONUNBUFFERED="1",
               COLUMNS="250")
    cli = [sys.executable, "-m", "pipelines.cli"]
    with SimulatorThread(SimConfig(scenario="calm", seed=2, hours=1, speed=10)) as sim:
        bad = subprocess.run([*cli, "ingest", "--exchange", "binance-usdm", "--symbols", "DOGEUSDT",
                              "--ws-url", sim.ws_url, "--rest-url", sim.http_url], env=env, capture_output=True,
                             text=True, timeout=60)
        assert bad.returncode == 1 and "DOGEUSDT not trading as perpetuals" in bad.stdout
        service = subprocess.Popen([*cli, "ingest", "--exchange", "binance-usdm", "--ws-url", sim.ws_url,
                                    "--rest-url", sim.http_url], env=env, stdout=subprocess.PIPE,
                                   stderr=subprocess.STDOUT, text=True)
        status_file = tmp_path / "run" / "ingest-binance-usdm.json"
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            if status_file.exists() and json.loads(status_file.read_text())["records"].get("trade", 0) > 0:
                break
            time.sleep(0.5)
        status = subprocess.run([*cli, "status"], env=env, capture_output=True, text=True, timeout=30)
        assert "ingest binance-usdm" in status.stdout and "running" in status.stdout, status.stdout
        service.send_signal(signal.SIGTERM)
        output, _ = service.communicate(timeout=60)
    assert service.returncode == 0, output
    assert "stopped; binance-usdm:" in output
    final = json.loads(status_file.read_text())
    assert final["state"] == "stopped" and final["spill_bytes"] == 0 and final["records"]["trade"] > 0
    status = subprocess.run([*cli, "status"], env=env, capture_output=True, text=True, timeout=30)
    assert "stopped" in status.stdout


def test_frames_unread_sees_what_the_websocket_library_holds_unread():
    """Stall verdicts wait while frames are queued unread; that needs the library's queue to be seen."""
    async def scenario():
        async def send_three(ws):
            for i in range(3):
                await ws.send(str(i))
            await ws.wait_closed()

        async with websockets.serve(send_three, "127.0.0.1", 0) as server:
            port = server.sockets[0].getsockname()[1]
            async with websockets.connect(f"ws://127.0.0.1:{port}") as ws:
                await asyncio.wait_for(_until(lambda: frames_unread(ws) == 3), timeout=60)
                assert await ws.recv() == "0"
                assert frames_unread(ws) == 2

    async def _until(condition):
        while not condition():
            await asyncio.sleep(0.01)

    asyncio.run(scenario())
