"""dYdX v4 trades caught up from REST, live: the ingest service against the simulator's dYdX indexer
dialect through a cascade, with every connection dropped now and then, trade updates lost in
transit (``message_id`` holes) and a restart of the service. Every trade the venue published from
the first one perpflow received to the end is in Kafka and DuckDB exactly once (ids compared with
the simulator's truth), liquidations and ADL fills come with the caught-up trades, and the hourly
historicalFunding poll publishes each settlement once across the restart."""

from __future__ import annotations

import asyncio
import dataclasses
import datetime as dt
import time
from collections import Counter

import orjson

from fault_harness import truth_trade_ids
from ingest.kafka import ensure_topics
from ingest.service import IngestConfig, IngestService
from ingest.simulator import FaultConfig, SimConfig, SimulatorThread, load_truth
from ingest.simulator.config import parse_time_ms
from ingest.simulator.dialects.dydx_v4 import PREFIX, market_fill_of
from ingest.venues import dydx_v4
from ingest.venues import venue as venue_for
from test_ingest_service import RecordingSink
from test_venue_dialects import DYDX_TICKERS, SIM_SYMBOLS
from warehouse.loader import load_once
from warehouse.store import Warehouse

START = "2025-10-10T12:55:00Z"     # the 13:00 funding settlement comes 5 market minutes in
FIRST_RUN_S, RESTART_AT_S, FAULTS_OFF_S, END_S = 420, 500, 800, 960     # market seconds


def market_s(sim) -> float:
    feed = sim.simulator.feed
    return (feed.now_ms - feed.start_ms) / 1000


async def run_until(service: IngestService, sim, until_s: float, settle: bool = False, at_most_s: float = 300) -> None:
    """Run the service until the market reaches ``until_s`` (and, with ``settle``, until no trade
    catch-up is running or owed), then stop it as SIGTERM would."""
    task = asyncio.create_task(service.run())
    started = time.monotonic()
    while not task.done():
        await asyncio.sleep(0.2)
        busy = settle and (service._catch_up_running or service._catch_up_owed)
        if (market_s(sim) >= until_s and not busy) or time.monotonic() - started > at_most_s:
            service.request_stop()
    await task


def test_trades_lost_to_drops_holes_and_a_restart_are_caught_up_from_rest_exactly_once(tmp_path, fresh_broker,
                                                                                      monkeypatch):
    # Market time runs 60x wall time here: a hole is declared after 0.3 s (18 market s) instead of
    # 10 s, and settled funding is polled every 3 s (3 market minutes) instead of hourly.
    monkeypatch.setattr(dydx_v4, "LATE_REPLY_S", 0.3)
    monkeypatch.setattr(dydx_v4, "FUNDING_POLL_S", 3.0)
    bootstrap = fresh_broker.bootstrap
    ensure_topics(bootstrap, 3)
    config = SimConfig(scenario="cascade", seed=5, hours=2, speed=60, start_ms=parse_time_ms(START),
                       trigger_offset_s=120, symbols=SIM_SYMBOLS, truth_path=str(tmp_path / "truth.jsonl"),
                       checkpoint_every_s=60, venues=("binance-usdm", "dydx-v4"),
                       faults=FaultConfig(drop_every_s=150, message_loss_every_s=40))
    tickers = list(DYDX_TICKERS.values())
    services, sinks = [], []

    def service(sim) -> IngestService:
        sink = RecordingSink(bootstrap, tmp_path / "spill.jsonl", delivery_timeout_ms=5000)
        sinks.append(sink)
        services.append(IngestService(venue_for("dydx-v4"), IngestConfig(
            symbols=tickers, ws_url=sim.ws_url + PREFIX, rest_url=sim.http_url + PREFIX, bootstrap=bootstrap,
            run_dir=tmp_path / "run", backoff_base_s=0.2, backoff_max_s=1.0), sink=sink))
        return services[-1]

    with SimulatorThread(config) as sim:
        asyncio.run(run_until(service(sim), sim, FIRST_RUN_S))
        while market_s(sim) < RESTART_AT_S:         # the service is down: the restart window
            time.sleep(0.1)
        second = service(sim)

        async def second_run():
            task = asyncio.create_task(run_until(second, sim, END_S, settle=True))
            while market_s(sim) < FAULTS_OFF_S and not task.done():
                await asyncio.sleep(0.2)
            # No more faults: what was lost last is caught up before the service stops.
            faults = sim.simulator.feed.faults
            faults.config = dataclasses.replace(faults.config, drop_every_s=0, message_loss_every_s=0)
            await task
        asyncio.run(second_run())
    truth = load_truth(tmp_path / "truth.jsonl")
    dialect = sim.simulator.dialects["dydx-v4"]
    # Everything Kafka holds, loaded into DuckDB (the loader keeps every record: a duplicate in
    # Kafka is a duplicate row).
    warehouse = Warehouse(tmp_path / "w.duckdb")
    load_once(warehouse, bootstrap)
    with warehouse.writer() as con:
        def rows(sql: str) -> list[tuple]:
            return con.execute(sql).fetchall()
        trades = rows("SELECT trade_id, trade_type, ts_exchange FROM raw.trades WHERE exchange = 'dydx-v4'")
        liquidations = rows("SELECT ts_exchange FROM raw.liquidations WHERE exchange = 'dydx-v4'")
        adl = rows("SELECT trade_id FROM raw.adl_events WHERE exchange = 'dydx-v4'")
        settled = rows("SELECT symbol_native, ts_exchange, rate, index_price FROM raw.funding "
                       "WHERE exchange = 'dydx-v4' AND is_realised ORDER BY symbol_native")
        events = rows("SELECT kind, detail FROM raw.feed_events WHERE exchange = 'dydx-v4'")

    ids = Counter(trade_id for trade_id, _, _ in trades)
    duplicated = sum(n - 1 for n in ids.values())
    sim_symbols = [s["symbol"] for s in truth["meta"][0]["symbols"]]
    got: dict[str, set[int]] = {s: set() for s in sim_symbols}
    for trade_id in ids:
        fill = market_fill_of(trade_id)
        if fill is not None:
            got[sim_symbols[fill[0]]].add(fill[1])
    true_ids = truth_trade_ids(truth)
    missing, invented = {}, {}
    for symbol, aggs in got.items():
        assert aggs, symbol
        true_of_symbol = {i for s, i in true_ids if s == symbol}
        missing[symbol] = sorted(i for i in true_of_symbol if min(aggs) <= i <= max(aggs) and i not in aggs)
        invented[symbol] = sorted(aggs - true_of_symbol)

    catch_ups = [orjson.loads(detail) for kind, detail in events if kind == "trade_catch_up"]
    by_reason = Counter()
    for c in catch_ups:
        by_reason[c["reason"].split(" on ")[0]] += c["trades"]
    recovered = sum(s.events["trades_caught_up"] for s in services)
    losses = [f for f in truth["fault"] if f["fault"] == "message_loss"]
    lost_in_transit = {i for f in losses for i in f["trade_ids"]}
    drops = sum(f["fault"] == "drop" for f in truth["fault"])
    print(f"dydx-v4 catch-up: {len(ids)} trades in Kafka and DuckDB, {duplicated} duplicated, "
          f"{sum(map(len, missing.values()))} of the true trades missing, {sum(map(len, invented.values()))} invented; "
          f"{recovered} published from REST pages ({dict(by_reason)}) in {len(catch_ups)} catch-ups; "
          f"{drops} drops, {len(losses)} trade updates ({len(lost_in_transit)} trades) lost in transit, 1 restart")
    assert duplicated == 0 and not any(invented.values()) and not any(missing.values()), {
        symbol: (len(ids_), ids_[:1], ids_[-1:]) for symbol, ids_ in {**missing, **invented}.items() if ids_}
    assert drops >= 3 and len(losses) >= 8, (drops, len(losses))
    assert lost_in_transit <= set(ids), sorted(lost_in_transit - set(ids))
    assert {"reconnect", "restart", "message_id hole"} <= set(by_reason), by_reason
    assert by_reason["restart"] > 0 and by_reason["message_id hole"] > 0, by_reason
    assert not [detail for kind, detail in events if kind == "trade_lost"]

    # Liquidations and ADL fills came with the trades, caught up or not: one per fill.
    assert Counter(ts for _, kind, ts in trades if kind == "LIQUIDATED") == Counter(ts for ts, in liquidations)
    deleveraged = sorted(trade_id for trade_id, kind, _ in trades if kind == "DELEVERAGED")
    assert liquidations and deleveraged and sorted(trade_id for trade_id, in adl) == deleveraged
    # ... and every deleveraging the venue published from the first trade received to a few seconds
    # before the last (a deleveraging is sent once its liquidation's second is over) is there.
    times = [ts for _, _, ts in trades]
    first, last = min(times), max(times) - dt.timedelta(seconds=5)
    in_window = {trade_id for trade_id, kind, ts in trades if kind == "DELEVERAGED" and first <= ts <= last}
    published = {t["id"] for deque in dialect._deleveraged for t in deque
                 if first <= dt.datetime.fromisoformat(t["createdAt"][:-1]) <= last}
    assert published and published == in_window, (sorted(published - in_window), sorted(in_window - published))

    # Settled funding: the 13:00 settlement of each market, once, though both runs polled it.
    settlement = dt.datetime(2025, 10, 10, 13)      # TIMESTAMP columns hold UTC without a zone
    assert [(native, ts) for native, ts, _, _ in settled] == [
        (t, settlement) for t in sorted(tickers)]
    assert all(rate is not None and price for _, _, rate, price in settled)
    assert sum(s._polls[p]["ok"] for s in services for p in s._polls) >= 10, [s._polls for s in services]


def test_a_catch_up_rest_cannot_give_is_a_trade_lost_event_with_its_time_range(tmp_path, broker):
    """A window older than the venue's REST history, and REST refusing the request, are each a
    ``trade_lost`` feed event with the time range left uncovered; the service goes on."""
    config = SimConfig(scenario="calm", seed=3, hours=1, speed=20, symbols=SIM_SYMBOLS, venues=("dydx-v4",),
                       truth_path=str(tmp_path / "truth.jsonl"))
    sink = RecordingSink(broker.bootstrap, tmp_path / "spill.jsonl", delivery_timeout_ms=5000)

    def lost_events() -> list[dict]:
        return [orjson.loads(r.detail) for r in sink.records if r.record_type == "feed_event" and r.kind == "trade_lost"]

    async def scenario(sim, service: IngestService) -> tuple[list[dict], int]:
        task = asyncio.create_task(service.run())
        while "BTC-USD" not in service.handler.newest_trade_ms:
            await asyncio.sleep(0.1)
        start = sim.simulator.feed.start_ms
        service._request_catch_up("BTC-USD", start - 3_600_000, "before the simulator's history")
        while len(lost_events()) < 1:
            await asyncio.sleep(0.1)
        service.config.rest_url = sim.http_url + "/nowhere"      # every REST request now a 404
        newest = service.handler.newest_trade_ms["BTC-USD"]
        service._request_catch_up("BTC-USD", newest, "REST refusing")
        while len(lost_events()) < 2:
            await asyncio.sleep(0.1)
        service.request_stop()
        await task
        return lost_events(), start

    with SimulatorThread(config) as sim:
        service = IngestService(venue_for("dydx-v4"), IngestConfig(
            symbols=["BTC-USD"], ws_url=sim.ws_url + PREFIX, rest_url=sim.http_url + PREFIX,
            bootstrap=broker.bootstrap, run_dir=tmp_path / "run", backoff_base_s=0.2, backoff_max_s=1.0), sink=sink)
        (history, refused), start = asyncio.run(scenario(sim, service))
    # From the time asked for, less the venue's slack (a block's fills share its time).
    assert history["from_ms"] == start - 3_600_000 - dydx_v4.DydxV4.TRADE_TIME_SLACK_MS
    assert start <= history["to_ms"] < start + 600_000
    assert history["span_ms"] == history["to_ms"] - history["from_ms"] and history["count"] is None
    assert history["reason"] == "older than the venue's REST trade history"
    assert refused["to_ms"] is None and refused["span_ms"] is None and "HTTP 404" in refused["reason"]
    catch_ups = [orjson.loads(r.detail) for r in sink.records if r.record_type == "feed_event"
                 and r.kind == "trade_catch_up"]
    assert [c["lost_ms"] for c in catch_ups if c["reason"] != "reconnect"] == [history["span_ms"], None]
    assert service.events["trade_catch_ups_incomplete"] == 2 and service.failure is None


def test_the_simulated_indexer_pages_trades_like_comlink(tmp_path):
    """REST trades on the simulator: newest first, ``createdBeforeOrAtHeight`` and
    ``createdBeforeOrAt`` inclusive, ``page`` an offset of whole pages, limits checked."""
    import aiohttp

    config = SimConfig(scenario="calm", seed=3, hours=1, speed=20, symbols=SIM_SYMBOLS, venues=("dydx-v4",),
                       truth_path=str(tmp_path / "truth.jsonl"))

    async def pages(base: str) -> dict:
        async with aiohttp.ClientSession() as http:
            async def get(query: str):
                async with http.get(f"{base}/v4/trades/perpetualMarket/BTC-USD?{query}") as response:
                    return response.status, await response.json()
            while True:      # until ten trades lie in blocks two or more behind the newest (complete)
                _, newest = await get("limit=1000")
                height = int(newest["trades"][0]["createdAtHeight"]) - 2 if newest["trades"] else 0
                done = [t for t in newest["trades"] if int(t["createdAtHeight"]) <= height]
                if len(done) >= 10:
                    break
                await asyncio.sleep(0.2)
            at = done[3]["createdAt"]
            return {"newest": newest, "height": height, "at": at,
                    "six": await get(f"limit=6&createdBeforeOrAtHeight={height}"),
                    "second_page": await get(f"limit=3&createdBeforeOrAtHeight={height}&page=2"),
                    "before_time": await get(f"limit=10&createdBeforeOrAt={at}"),
                    "bad_page": await get("limit=3&page=0"), "bad_limit": await get("limit=1001"),
                    "bad_height": await get("createdBeforeOrAtHeight=-5")}

    with SimulatorThread(config) as sim:
        got = asyncio.run(pages(sim.http_url + PREFIX))
    newest = got["newest"]["trades"]
    assert [t["createdAt"] for t in newest] == sorted((t["createdAt"] for t in newest), reverse=True)
    assert all(int(t["id"][:8], 16) == int(t["createdAtHeight"]) for t in newest)   # the id leads with the height
    status, six = got["six"]
    assert status == 200 and len(six["trades"]) == 6 and "page" not in six
    assert all(int(t["createdAtHeight"]) <= got["height"] for t in six["trades"])
    status, second = got["second_page"]
    assert status == 200 and second["trades"] == six["trades"][3:] and (second["pageSize"], second["offset"]) == (3, 3)
    assert all(t["createdAt"] <= got["at"] for t in got["before_time"][1]["trades"])
    assert got["before_time"][1]["trades"][0]["createdAt"] == got["at"]
    for name in ("bad_page", "bad_limit", "bad_height"):
        status, body = got[name]
        assert status == 400 and body["errors"][0]["param"] in ("page", "limit", "createdBeforeOrAtHeight"), name
