"""One venue down for minutes during a cascade (OKX on 2025-10-10), end to end with real processes.

The simulator serves one market as Binance USD-M, Bybit and OKX; ``--outage okx-swap@...`` cuts
OKX's websockets, refuses its reconnects and fails its REST with 503, while the market makers
withdraw from every book. Three live ingest services (one per venue, the Tansu broker behind
them) run through it; the loader puts their topics into a DuckDB file and the daily assets are
materialized on it. Checked: the other venues keep flowing (every trade of the outage minutes,
no stall or disconnect of theirs), OKX's feed events cover the true outage and its books are
exact again after it, the stress index rises with the withdrawal (its depth component leaves
OKX's missing book out rather than reading it as depth withdrawn) and skips no minute of the
venues that were up (computed on OKX's markets alone, it skips the outage minutes rather than
calling them calm), and the cross-venue dislocation has OKX absent, not zero, while it was down.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import time
from collections import Counter
import warnings
from decimal import Decimal

import dagster as dg
import numpy as np
import pytest
from click.testing import CliRunner

from fault_harness import truth_trade_ids
from ingest.service import IngestConfig, IngestService
from ingest.simulator import ConfigError, FaultConfig, OutageSpec, SimConfig, SimulatorThread, load_truth
from ingest.simulator.cli import simulate
from ingest.simulator.config import parse_time_ms
from ingest.spill import SpillingSink
from ingest.venues import venue as venue_for
from test_ingest_service import RecordingSink
from test_venue_dialects import BOOK_DEPTH, NATIVE, truth_checkpoints
from transforms.basis import price_dislocation
from warehouse.analytics.depth import TWO_PCT
from warehouse.loader import load_once
from warehouse.store import Warehouse

warnings.filterwarnings("ignore", category=dg.BetaWarning)

from dagster_project.assets.microstructure import MICROSTRUCTURE_ASSETS  # noqa: E402
from dagster_project.assets.ohlcv import ohlcv_1m  # noqa: E402
from dagster_project.resources import WarehouseResource  # noqa: E402

SYMBOLS = ("BTCUSDT", "ETHUSDT")
DOWN = "okx-swap"
UP = ("binance-usdm", "bybit-linear")
START = "2025-10-10T20:30:00Z"
TRIGGER_S = 600                   # the cascade's news at 20:40 ...
OUTAGE = f"{DOWN}@20:43+4m"       # ... OKX down 20:43-20:47, while market makers pull their quotes
RUN_S = 22 * 60                   # to 20:52: recovery, resync and a few checkpoints after it
SPEED = 12.0
PATIENT_S = 30.0
# Simulator and services share this process: starved on a loaded machine, a pong can come late,
# and a keepalive timeout would cut the venues that are up (the outage cuts its venue by itself).
PATIENT_KEEPALIVE_S = 600.0
NATIVE_OF = {**NATIVE, "binance-usdm": {s: s for s in SYMBOLS}}
RAW = [dg.AssetSpec(["raw", t]) for t in ("trades", "book_snapshots", "open_interest", "funding", "liquidations")]


def test_outage_option_parses_and_rejects_what_it_cannot_run():
    spec = OutageSpec.parse("okx-swap@20:45+8m")
    start = int(dt.datetime(2025, 10, 10, 12, tzinfo=dt.UTC).timestamp() * 1000)
    assert spec.window_ms(start) == (start + int(8.75 * 3600e3), start + int(8.75 * 3600e3) + 480_000)
    assert OutageSpec.parse("bybit-linear@90s+1h").window_ms(start) == (start + 90_000, start + 90_000 + 3_600_000)
    for bad, words in (("okx-swap@20:45", "must look like VENUE@START"), ("kraken@20:45+8m", "not simulated"),
                       ("okx-swap@25:00+8m", "time of day"), ("okx-swap@20:45+8x", "not a length")):
        with pytest.raises(ConfigError, match=words):
            OutageSpec.parse(bad)
    result = CliRunner().invoke(simulate, ["--venues", "binance-usdm", "--outage", "okx-swap@20:45+8m"])
    assert result.exit_code == 2 and "add it to --venues" in result.output
    result = CliRunner().invoke(simulate, ["--outage", "okx-swap@soon+8m"])
    assert result.exit_code == 2 and "neither HH:MM nor a length" in result.output
    assert "--outage" in CliRunner().invoke(simulate, ["--help"]).output


def _wall_to_sim(samples: list[tuple[int, int]]):
    wall, sim = (np.array(x, dtype=np.float64) for x in zip(*samples))
    return lambda ns: float(np.interp(ns, wall, sim))


async def _run_services(services: dict, sim: SimulatorThread, samples: list) -> None:
    """Every service until the market has played RUN_S seconds and every service has read its trades
    up to a minute before that, sampling (wall ns, market ms) so the services' wall-clock feed events
    can be placed on the market's clock. On a loaded machine the services (in this process, with
    the simulator) read minutes behind the market: stopped as soon as the market is done, the
    frames still in their sockets would look like trades a venue that was up never delivered."""
    feed = sim.simulator.feed
    tasks = [asyncio.create_task(s.run()) for s in services.values()]
    started = time.monotonic()
    read_to_ms = feed.start_ms + (RUN_S - 60) * 1000

    def caught_up() -> bool:
        return all(s.handler.newest_trade_ms.get(native, 0) >= read_to_ms
                   for s in services.values() for native in s.config.symbols)

    while not all(t.done() for t in tasks):
        await asyncio.sleep(0.1)
        samples.append((time.time_ns(), feed.now_ms))
        played = feed.now_ms - feed.start_ms >= RUN_S * 1000
        if played and caught_up() or time.monotonic() - started > 1500:
            for s in services.values():
                s.request_stop()
    await asyncio.gather(*tasks)


def _drain_spill(bootstrap: str, path) -> None:
    sink = SpillingSink(bootstrap, path, delivery_timeout_ms=5000)
    try:
        deadline = time.monotonic() + 120
        while not sink.drain():
            assert time.monotonic() < deadline, f"{path} did not drain"
    finally:
        sink.close()


def _books_after(records, truth, exchange: str, after_ms: int) -> dict[str, int]:
    """Per symbol: truth checkpoints after ``after_ms`` the rebuilt book equals (OKX: by seqId)."""
    checkpoints = truth_checkpoints(truth, exchange)
    ts_of = {cp["last_update_id"]: cp["ts"] for cp in truth["book"]}
    books, matched = {}, {}
    for r in records:
        native = getattr(r, "symbol_native", None)
        if r.record_type == "book_snapshot" and r.reason != "periodic":
            books[native] = tuple({Decimal(p): Decimal(q) for p, q in side if Decimal(q)} for side in (r.bids, r.asks))
        elif r.record_type == "feed_event" and r.kind in ("gap", "disconnect", "stall"):
            lost = [n for n in books if r.symbol is None or venue_for(exchange).normalize_symbol(n) == r.symbol]
            for n in lost:
                books[n] = None
        elif r.record_type == "book_delta" and books.get(native) is not None:
            for side, levels in zip(books[native], (r.bids, r.asks)):
                for p, q in levels:
                    if Decimal(q):
                        side[Decimal(p)] = Decimal(q)
                    else:
                        side.pop(Decimal(p), None)
            cp = checkpoints[native].get(r.last_seq)
            if cp is not None and ts_of[r.last_seq] > after_ms:
                depth = BOOK_DEPTH[exchange]
                top = tuple(dict(sorted(side.items(), reverse=rev)[:depth])
                            for side, rev in ((books[native][0], True), (books[native][1], False)))
                assert top == cp, (native, r.last_seq)
                matched[native] = matched.get(native, 0) + 1
    return matched


def test_one_venue_down_during_the_cascade_the_others_flow_and_the_warehouse_tells_it(tmp_path, fresh_broker):
    faults = FaultConfig(outages=(OutageSpec.parse(OUTAGE),), outage_withdrawal=0.8)
    config = SimConfig(scenario="cascade", seed=5, hours=1.25, start_ms=parse_time_ms(START), symbols=SYMBOLS,
                       speed=SPEED, faults=faults, truth_path=str(tmp_path / "truth.jsonl"), checkpoint_every_s=20,
                       trigger_offset_s=TRIGGER_S, venues=(*UP, DOWN))
    samples: list[tuple[int, int]] = []
    with SimulatorThread(config) as sim:
        services, sinks = {}, {}
        for exchange in (*UP, DOWN):
            sinks[exchange] = RecordingSink(fresh_broker.bootstrap, tmp_path / f"spill-{exchange}.jsonl",
                                            delivery_timeout_ms=5000)
            venue = venue_for(exchange)
            # Silence limits are wall seconds: on a loaded 2-core machine the market loop may pause
            # for seconds, which is not what this test is about; a cut connection is seen at once.
            patient = {kind: None if limit is None else max(limit, PATIENT_S)
                       for kind, limit in venue.SILENCE_LIMIT_S.items()}
            services[exchange] = IngestService(venue, IngestConfig(
                symbols=list(NATIVE_OF[exchange][s] for s in SYMBOLS), ws_url=sim.ws_url, rest_url=sim.http_url,
                bootstrap=fresh_broker.bootstrap, run_dir=tmp_path / exchange, backoff_base_s=0.2,
                backoff_max_s=2.0, oi_interval_s=1.0, silence_limit_s=patient,
                keepalive_timeout_s=PATIENT_KEEPALIVE_S), sink=sinks[exchange])
        asyncio.run(_run_services(services, sim, samples))
    truth = load_truth(tmp_path / "truth.jsonl")
    [outage] = truth["outage"]
    down_from, down_to = outage["start_ms"], outage["end_ms"]
    assert (outage["venue"], down_to - down_from, outage["withdrawal"]) == (DOWN, 240_000, 0.8)
    to_sim = _wall_to_sim(samples)
    assert samples[-1][1] - truth["meta"][0]["start_ms"] >= RUN_S * 1000, "the market did not play the whole span"

    # (a) The venues that were up: every trade of the outage minutes, no disconnect or stall of theirs.
    for exchange in (*UP, DOWN):
        print(exchange, dict(Counter(r.kind for r in sinks[exchange].records if r.record_type == "feed_event")))
    outage_seconds = {(s["symbol"], s["ts"]) for s in truth["second"] if down_from < s["ts"] <= down_to}
    during = truth_trade_ids({"second": [s for s in truth["second"] if (s["symbol"], s["ts"]) in outage_seconds]})
    got = {(t.symbol_native, int(t.trade_id)) for t in sinks["binance-usdm"].records
           if t.record_type == "trade" and t.is_aggregated}
    assert len(during) > 1000 and during <= got, len(during - got)
    individual = {(s["symbol"], i) for s in truth["second"] if (s["symbol"], s["ts"]) in outage_seconds
                  and s["trade_first"] is not None for i in range(s["trade_first"], s["trade_last"] + 1)}
    bybit = {(t.symbol_native, int(t.trade_id.replace("-", ""), 16)) for t in sinks["bybit-linear"].records
             if t.record_type == "trade"}
    print(f"trades of the outage span: binance-usdm {len(during & got)} of {len(during)} aggTrades, "
          f"bybit-linear {len(individual & bybit)} of {len(individual)} fills")
    assert len(individual) > 1000 and individual <= bybit, len(individual - bybit)
    for exchange in UP:
        troubles = [r for r in sinks[exchange].records if r.record_type == "feed_event"
                    and r.kind in ("disconnect", "stall", "gap", "trade_gap")]
        assert troubles == [], (exchange, troubles[:3])

    # (b) OKX: cut at the outage's start, every refused reconnect a disconnect event, back once it ended.
    events = [r for r in sinks[DOWN].records if r.record_type == "feed_event"]
    lost = [r for r in events if r.kind == "disconnect"]
    back = [r for r in events if r.kind == "reconnect"]
    refused_ws = [f for f in truth["fault"] if f["fault"] == "outage_refused" and f["kind"] == "websocket"]
    [cut] = [f for f in truth["fault"] if f["fault"] == "outage"]
    assert cut["connections"] >= 1 and cut["ts"] - down_from < 1000
    # Every reconnect the simulator refused is a disconnect event naming its 503. A service that saw
    # the cut a market minute before the outage ended (5 wall seconds, retries every 2 s at most) was
    # refused at least once; on a loaded machine it can read minutes behind the market, see the cut
    # only after the outage ended and reconnect at once (none refused: what it did is still checked).
    assert sum("503" in r.detail for r in lost) == len(refused_ws)
    if to_sim(lost[0].ts_recv) < down_to - 60_000:
        assert len(refused_ws) >= 1
    # On the market's clock, the feed's silence (last streamed record before the first disconnect,
    # first one after the reconnect; REST backfills aside) covers the outage; the events' own wall
    # times, placed on the market's clock, are reported (a loaded machine delays them, so only
    # "not before" is asserted).
    records = sinks[DOWN].records
    cut_at, back_at = records.index(lost[0]), records.index(back[-1])
    streamed = ("book_delta", "book_snapshot", "funding")
    silent_from = max(r.ts_exchange for r in records[:cut_at] if r.record_type in streamed)
    silent_to = min(r.ts_exchange for r in records[back_at:] if r.record_type in streamed)
    assert silent_from <= down_from and silent_to >= down_to and silent_from > down_from - 5000
    first_lost, last_back = to_sim(lost[0].ts_recv), to_sim(back[-1].ts_recv)
    slack = 0.5 * SPEED * 1000                       # half a wall second of the sampled clock
    assert first_lost >= down_from - slack and last_back >= down_to - slack
    print(f"outage {down_from}..{down_to} ({(down_to - down_from) / 1000:.0f} s); OKX silent on the market clock "
          f"{silent_from - down_from:+d} ms .. {silent_to - down_to:+d} ms around it; events (wall clock mapped) "
          f"{first_lost - down_from:+.0f} ms .. {last_back - down_to:+.0f} ms; {len(lost)} disconnects "
          f"({len(refused_ws)} refused reconnects), {len(back)} reconnects")
    matched = _books_after(sinks[DOWN].records, truth, DOWN, down_to)
    assert set(matched) == {NATIVE[DOWN][s] for s in SYMBOLS} and min(matched.values()) >= 2, matched
    assert services[DOWN].handler.book_sync.counts["crossed"] == 0

    # (c) Warehouse: Kafka -> DuckDB by the loader, the daily assets materialized for the day. What a
    # service spilled while the loaded broker was slow goes to Kafka first, as a restarted service's would.
    for exchange in sinks:
        _drain_spill(fresh_broker.bootstrap, tmp_path / f"spill-{exchange}.jsonl")
    warehouse = Warehouse(tmp_path / "w.duckdb", tmp_path / "r.duckdb")
    load_once(warehouse, fresh_broker.bootstrap)
    resources = {"warehouse": WarehouseResource(database=str(warehouse.path), replica=str(warehouse.replica_path))}
    run_config = {"loggers": {"console": {"config": {"log_level": "ERROR"}}},
                  "ops": {"analytics__market_stress": {"config": {"min_baseline_minutes": 5}}}}
    result = dg.materialize([*RAW, ohlcv_1m.to_source_asset(), *MICROSTRUCTURE_ASSETS],
                            selection=MICROSTRUCTURE_ASSETS, resources=resources, partition_key="2025-10-10",
                            run_config=run_config)
    assert result.success
    with warehouse.writer() as con:
        depth = con.execute("SELECT exchange, split_part(symbol, '-', 1), epoch(minute)::BIGINT * 1000, mid_mean, "
                            f"depth_usd_{TWO_PCT}_mean FROM analytics.book_depth ORDER BY 3").fetchall()
        stress = dict(con.execute("SELECT epoch(minute)::BIGINT * 1000, stress_index FROM analytics.market_stress "
                                  "WHERE asset = 'BTC' ORDER BY 1").fetchall())
        depth_parts = {m: (c, n, names) for m, c, n, names in con.execute(
            "SELECT epoch(minute)::BIGINT * 1000, depth_component, depth_books, depth_book_names "
            "FROM analytics.market_stress WHERE asset = 'BTC' ORDER BY 1").fetchall()}
    down_minutes = range(down_from + 60_000, down_to, 60_000)        # minutes OKX was down throughout
    okx_minutes = {m for ex, _, m, _, _ in depth if ex == DOWN}
    assert okx_minutes and not okx_minutes & set(down_minutes)
    up_minutes = {m for ex, _, m, _, _ in depth if ex != DOWN}
    assert set(down_minutes) <= up_minutes and set(down_minutes) <= set(stress)
    before = [v for m, v in stress.items() if down_from - 5 * 60_000 <= m < down_from and v is not None]
    withdrawn = [v for m, v in stress.items() if outage["withdrawn_ms"] <= m < down_to and v is not None]
    print(f"BTC stress before {np.round(before, 1).tolist()}, withdrawn {np.round(withdrawn, 1).tolist()}")
    print("BTC depth component and its books by minute:",
          [(m, None if c is None else round(c, 3), n) for m, (c, n, _) in depth_parts.items()
           if down_from - 5 * 60_000 <= m < down_to + 120_000])
    assert before and withdrawn and min(withdrawn) > max(before)
    # While OKX is down its book is left out of the depth component, not read as depth withdrawn: the
    # component stands on the venues that stayed up, each against its own baseline.
    for m in down_minutes:
        component, n_books, names = depth_parts[m]
        assert component is not None and n_books == len(UP) and DOWN not in names, (m, depth_parts[m])
    # The venues that stayed up thinned out themselves: that is what the rise comes from.
    up_depth = {when: np.mean([d for ex, asset, m, _, d in depth if ex in UP and asset == "BTC" and lo <= m < hi])
                for when, (lo, hi) in {"before": (down_from - 5 * 60_000, down_from),
                                       "withdrawn": (outage["withdrawn_ms"], down_to)}.items()}
    print(f"BTC 2% depth of {', '.join(UP)} per venue-minute: before {up_depth['before']:,.0f} USD, "
          f"withdrawn {up_depth['withdrawn']:,.0f} USD")
    assert up_depth["withdrawn"] < 0.6 * up_depth["before"]

    btc = [(m, ex, mid) for ex, asset, m, mid, _ in depth if asset == "BTC"]
    minute, venue, mid = (np.array(x) for x in zip(*btc))
    dislocation = price_dislocation(minute, venue, mid.astype(float))
    for m in down_minutes:
        here = minute == m
        assert set(venue[here]) == set(UP) and (dislocation.n_venues[here] == 2).all()
        assert np.isfinite(dislocation.dislocation_bps[here]).all()
    print("BTC dislocation bps by venue and minute:",
          [(int(m), v, round(float(d), 2)) for m, v, d in zip(minute, venue, dislocation.dislocation_bps)
           if down_from - 120_000 <= m <= down_to + 120_000])
    run_end = truth["meta"][0]["start_ms"] + RUN_S * 1000
    # Whole minutes with OKX back; the run's last minute and OKX's own are left out: the services stop
    # as the market reaches RUN_S, each with its own frames still in flight, and OKX, resyncing after
    # the outage, may be further behind than the others on a loaded machine.
    okx_last = max(okx_minutes)
    back = (minute >= down_to + 60_000) & (minute + 120_000 <= run_end) & (minute < okx_last)
    assert back.any() and (dislocation.n_venues[back] == 3).all(), (minute[back], venue[back])

    # The index of OKX's markets alone: its outage minutes are skipped, not taken for calm ones.
    with warehouse.writer() as con:
        for table in ("book_depth", "liquidations_1m", "funding"):
            con.execute(f"DELETE FROM analytics.{table} WHERE exchange NOT IN ('{DOWN}', 'all')")
    assert dg.materialize([*RAW, ohlcv_1m.to_source_asset(), *MICROSTRUCTURE_ASSETS],
                          selection=[a for a in MICROSTRUCTURE_ASSETS if a.key.path == ["analytics", "market_stress"]],
                          resources=resources, partition_key="2025-10-10", run_config=run_config).success
    with warehouse.writer() as con:
        okx_stress = dict(con.execute("SELECT epoch(minute)::BIGINT * 1000, stress_index FROM analytics.market_stress "
                                      "WHERE asset = 'BTC'").fetchall())
    assert not set(okx_stress) & set(down_minutes)
    assert any(m < down_from for m in okx_stress) and any(m >= down_to for m in okx_stress)

