"""The live ingest service in Binance COIN-M's, OKX's and Bybit's dialects against the simulator, with faults.

Real processes: the simulator speaking each venue's wire format (``ingest.simulator.dialects``) on
its one market, the Tansu broker, the ingest service with the venue module from the registry. What
the service emitted is compared with the simulator's ground truth: books (the venue's view, in the
venue's units) equal the true book at every checkpoint the service was synced for, never crossed,
every gap resynced (COIN-M by a REST snapshot, OKX and Bybit by resubscribing); trades are never
duplicated or invented, and where the venue's ids are consecutive, none is lost without a record.
dYdX v4 (whose books cross by design) is checked with and without its integrity faults: lost
updates during a snapshot fetch and stale levels the venue never deletes.
"""

from __future__ import annotations

import asyncio
import dataclasses
import time
from collections import Counter, defaultdict
from decimal import ROUND_HALF_EVEN, Decimal

import orjson
import pytest

from fault_harness import run_for_market_time, truth_trade_ids
from ingest.book_sync import SYNCED, BookSync
from ingest.kafka import ensure_topics
from ingest.service import IngestConfig, IngestService
from ingest.simulator import FaultConfig, SimConfig, SimulatorThread, load_truth
from ingest.simulator.dialects.binance_coinm import CONTRACT_USD, DEFAULT_CONTRACT_USD
from ingest.simulator.dialects.binance_coinm import PREFIX as COINM_PREFIX
from ingest.simulator.dialects.bybit import BybitLinearDialect
from ingest.simulator.dialects.dydx_v4 import PREFIX as DYDX_PREFIX
from ingest.simulator.dialects.dydx_v4 import market_fill_of
from ingest.simulator.dialects.gmx import PREFIX as GMX_PREFIX
from ingest.simulator.dialects.hyperliquid import PREFIX as HL_PREFIX
from ingest.simulator.dialects.okx import BOOK_DEPTH as OKX_DEPTH
from ingest.simulator.dialects.okx import CONTRACT_VALUE
from ingest.simulator.config import SYMBOL_SPECS
from ingest.simulator.venue_market import VENUE_MARKETS, VenueMarket
from ingest.simulator.wire import SymbolFormat
from ingest.venue import BookResync
from ingest.venues import venue as venue_for
from ingest.venues.dydx_v4 import DydxV4
from test_ingest_service import RecordingSink

SIM_SYMBOLS = ("BTCUSDT", "ETHUSDT", "SOLUSDT")
NATIVE = {"okx-swap": {s: f"{s[:-4]}-USDT-SWAP" for s in SIM_SYMBOLS}, "bybit-linear": {s: s for s in SIM_SYMBOLS},
          "binance-coinm": {s: f"{s[:-4]}USD_PERP" for s in SIM_SYMBOLS}}
BOOK_DEPTH = {"okx-swap": OKX_DEPTH, "bybit-linear": 50, "binance-coinm": 1000}
WS_PATH = {"binance-coinm": COINM_PREFIX}       # COIN-M's own host (dstream): a path prefix here


def venue_size(exchange: str, sim_symbol: str, price: str, qty: str) -> Decimal:
    """A true (base-unit) size as the venue states it."""
    base = sim_symbol[:-4]
    if exchange == "okx-swap":
        return Decimal(qty) / Decimal(CONTRACT_VALUE[base])
    if exchange == "binance-coinm":
        usd = Decimal(qty) * Decimal(price) / CONTRACT_USD.get(base, DEFAULT_CONTRACT_USD)
        return usd.quantize(Decimal(1), rounding=ROUND_HALF_EVEN)
    return Decimal(qty)


def venue_market(truth, exchange: str) -> VenueMarket:
    meta = truth["meta"][0]
    assert exchange in meta["venue_markets"]
    return VenueMarket(exchange, meta["seed"], [SYMBOL_SPECS[s["symbol"]] for s in meta["symbols"]])


def truth_checkpoints(truth, exchange: str) -> dict:
    """Per venue symbol: checkpoint key -> the venue's true top-N book {price: venue size} per side
    (the shared market's book as the venue's own: offset, share, per-level noise)."""
    depth = BOOK_DEPTH[exchange]
    market = venue_market(truth, exchange)
    symbols = [s["symbol"] for s in truth["meta"][0]["symbols"]]
    out = defaultdict(dict)
    for cp in truth["book"]:
        key = cp["ts"] if exchange == "bybit-linear" else cp["last_update_id"]
        s = symbols.index(cp["symbol"])
        market.displace(s, cp["venue_offsets"].get(exchange, 0))     # where its lag had it then
        book = []
        for side in ("bids", "asks"):
            own = market.book(s, cp[side][:depth])
            levels = {Decimal(p): venue_size(exchange, cp["symbol"], p, q) for p, q in own}
            book.append({p: q for p, q in levels.items() if q})
        out[NATIVE[exchange][cp["symbol"]]][key] = tuple(book)
    return out


def check_books(records, truth, exchange: str) -> int:
    """Rebuild each book from the records; compare with the truth at every checkpoint while synced.
    OKX's seqId and COIN-M's u are the market's update id; Bybit's delta carries the matching time."""
    checkpoints = truth_checkpoints(truth, exchange)
    books: dict[str, tuple[dict, dict] | None] = {}
    compared = 0
    for r in records:
        native = getattr(r, "symbol_native", None)
        if r.record_type == "book_snapshot" and r.reason != "periodic":
            books[native] = tuple({Decimal(p): Decimal(q) for p, q in side if Decimal(q)}
                                  for side in (r.bids, r.asks))
        elif r.record_type == "feed_event" and r.kind in ("gap", "disconnect", "stall") and r.symbol:
            for n in NATIVE[exchange].values():
                if venue_for(exchange).normalize_symbol(n) == r.symbol:
                    books[n] = None
        elif r.record_type == "book_delta" and books.get(native) is not None:
            for side, levels in zip(books[native], (r.bids, r.asks)):
                for p, q in levels:
                    if Decimal(q):
                        side[Decimal(p)] = Decimal(q)
                    else:
                        side.pop(Decimal(p), None)
            bids, asks = books[native]
            assert not bids or not asks or max(bids) < min(asks), (native, "crossed")
            key = r.ts_exchange if exchange == "bybit-linear" else r.last_seq
            cp = checkpoints[native].get(key)
            if cp is not None:
                depth = BOOK_DEPTH[exchange]
                top = tuple(dict(sorted(side.items(), reverse=reverse)[:depth])
                            for side, reverse in ((bids, True), (asks, False)))
                assert top == cp, (native, key)
                compared += 1
    return compared


def truth_individual_trade_ids(truth) -> set:
    return {(s["symbol"], i) for s in truth["second"] if s["trade_first"] is not None
            for i in range(s["trade_first"], s["trade_last"] + 1)}


@pytest.mark.parametrize("exchange", ["binance-coinm", "okx-swap", "bybit-linear"])
def test_the_live_service_in_each_dialect_keeps_books_exact_through_drops_and_gaps(exchange, tmp_path, broker):
    ensure_topics(broker.bootstrap, 3)
    faults = FaultConfig(drop_every_s=240, gap_every_s=150)
    config = SimConfig(scenario="calm", seed=11, hours=1, speed=30, faults=faults, symbols=SIM_SYMBOLS,
                       truth_path=str(tmp_path / "truth.jsonl"), checkpoint_every_s=20,
                       venues=("binance-usdm", exchange))
    venue = venue_for(exchange)
    with SimulatorThread(config) as sim:
        service_config = IngestConfig(symbols=list(NATIVE[exchange].values()),
                                      ws_url=sim.ws_url + WS_PATH.get(exchange, ""), rest_url=sim.http_url,
                                      bootstrap=broker.bootstrap, run_dir=tmp_path,
                                      backoff_base_s=0.2, backoff_max_s=2.0, oi_interval_s=1.0)
        sink = RecordingSink(broker.bootstrap, tmp_path / "spill.jsonl", delivery_timeout_ms=5000)
        service = IngestService(venue, service_config, sink=sink)
        asyncio.run(run_for_market_time(service, sim, 1200))
    truth = load_truth(tmp_path / "truth.jsonl")
    records = sink.records
    kinds = Counter(r.record_type for r in records)
    events = Counter(r.kind for r in records if r.record_type == "feed_event")
    injected = Counter(f["fault"] for f in truth["fault"])
    print(f"{exchange}: {dict(kinds)}; events {dict(events)}; injected {dict(injected)}; "
          f"resubscribes {service.events['resubscribes']}")
    assert injected["drop"] >= 2 and injected["sequence_gap"] >= 3

    # Reference data first: one Instrument per subscribed symbol, in the venue's units.
    instruments = {r.symbol_native: r for r in records if r.record_type == "instrument"}
    assert set(instruments) == set(NATIVE[exchange].values())
    btc = instruments[NATIVE[exchange]["BTCUSDT"]]
    assert (btc.qty_unit, btc.contract_size, btc.contract_size_unit) == {
        "okx-swap": ("contracts", "0.01", "base"), "binance-coinm": ("contracts", "100", "usd"),
        "bybit-linear": ("base", None, None)}[exchange]

    # Books: exact against the truth while synced, never crossed; every gap ends in a resync, from a
    # REST snapshot (COIN-M) or from resubscribing (OKX, Bybit push the snapshot; no REST bridge).
    assert check_books(records, truth, exchange) >= 10
    counts = service.handler.book_sync.counts
    assert counts["crossed"] == 0 and counts["gaps"] >= 1 and not service.handler.stats.dead_letters
    assert service.events["disconnects"] >= 2
    assert (service.events["resubscribes"] >= 1) == (venue.BOOK_RESYNC is BookResync.RESUBSCRIBE)
    for symbol in {r.symbol for r in records if r.record_type == "feed_event" and r.kind == "gap"}:
        sequence = [r.kind for r in records if r.record_type == "feed_event" and r.symbol == symbol
                    and r.kind in ("gap", "resync")]
        assert sequence[-1] == "resync" or sequence.count("resync") >= sequence.count("gap") - 1, (symbol, sequence)

    # Trades: each once, each one the market made; funding, open interest and liquidations flow.
    sim_symbol = {v: k for k, v in NATIVE[exchange].items()}
    trades = [r for r in records if r.record_type == "trade"]
    # Consecutive ids: OKX's per fill (a push covers first..last), COIN-M's per aggTrade.
    published = truth_trade_ids(truth) if exchange == "binance-coinm" else truth_individual_trade_ids(truth)
    if exchange != "bybit-linear":  # gaps found and backfilled
        ids = [(sim_symbol[t.symbol_native], i) for t in trades
               for first, last in [venue.trade_sequence(t)] for i in range(first, last + 1)]
        open_gaps = service.handler._open_gaps
        for native, symbol in sim_symbol.items():
            got = {i for sym, i in ids if sym == symbol}
            reported = {i for lo, hi in open_gaps.get(venue.normalize_symbol(native), ()) for i in range(lo, hi + 1)}
            expected = {i for sym, i in published if sym == symbol and min(got) <= i <= max(got)}
            assert expected - got - reported == set(), f"{native}: trade ids lost without a reported gap"
        assert events["trade_gap"] >= 1 and service.events["trades_backfilled"] >= 1
    else:                           # UUIDs: nothing to detect a loss with (redundant connections cover drops)
        ids = [(sim_symbol[t.symbol_native], int(t.trade_id.replace("-", ""), 16)) for t in trades]
    assert len(ids) == len(set(ids)) > 500 and set(ids) <= published
    assert kinds["funding"] >= 3 and kinds["open_interest"] >= 3

    # The venue's own market: its mark sits at its offset from the shared mark (plus noise).
    true_mark = {(s["symbol"], s["ts"] // 1000): s["mark"] for s in truth["second"]}
    premiums = sorted((float(r.mark_price) / true_mark[key] - 1) * 1e4 for r in records
                      if r.record_type == "funding" and r.mark_price is not None
                      and (key := (sim_symbol[r.symbol_native], r.ts_exchange // 1000)) in true_mark)
    assert len(premiums) >= 30
    assert abs(premiums[len(premiums) // 2] - VENUE_MARKETS[exchange].offset_bp) < 0.5, premiums[len(premiums) // 2]
    assert {r.qty_unit for r in records if r.record_type in ("trade", "open_interest")} == (
        {"base"} if exchange == "bybit-linear" else {"contracts"})


def test_bybit_refuses_a_topic_it_does_not_have():
    """The retired ``liquidation.`` topic gets Bybit's refusal, which the venue dead-letters."""
    sent = []

    class Conn:
        subscriptions: list = []
        outbox = sent
        wake = type("W", (), {"set": lambda self: None})()

    dialect = BybitLinearDialect.__new__(BybitLinearDialect)
    dialect._conn_ids = 0
    dialect.server = type("S", (), {"feed": type("F", (), {"symbols": ["BTCUSDT"]})()})()
    dialect.on_text(Conn(), orjson.dumps({"op": "subscribe", "args": ["liquidation.BTCUSDT"]}).decode())
    reply = orjson.loads(sent[0])
    assert reply["success"] is False and "handler not found,topic:liquidation.BTCUSDT" in reply["ret_msg"]


def test_instruments_are_published_at_start_and_again_only_when_they_change(tmp_path, broker):
    """Reference data is re-read every ``reference_interval_s``; an unchanged list publishes nothing,
    a changed tick size publishes that instrument again."""
    from pathlib import Path

    body = orjson.loads((Path(__file__).parent / "fixtures" / "bybit" / "instruments-info.json").read_bytes())
    venue = venue_for("bybit-linear")
    venue.apply_reference("instruments", body)
    sink = RecordingSink(broker.bootstrap, tmp_path / "spill.jsonl", delivery_timeout_ms=5000)
    service = IngestService(venue, IngestConfig(symbols=["BTCUSDT"], ws_url=venue.default_ws_url,
                                                rest_url=venue.default_rest_url, bootstrap=broker.bootstrap,
                                                run_dir=tmp_path),
                            sink=sink)
    try:
        service._publish_instruments()
        service._publish_instruments()
        first = [r for r in sink.records if r.record_type == "instrument"]
        assert [(r.symbol_native, r.tick_size) for r in first] == [("BTCUSDT", "0.10")]
        for entry in body["result"]["list"]:
            if entry["symbol"] == "BTCUSDT":
                entry["priceFilter"]["tickSize"] = "0.50"
        venue.apply_reference("instruments", body)
        service._publish_instruments()
        published = [(r.symbol_native, r.tick_size) for r in sink.records if r.record_type == "instrument"]
        assert published == [("BTCUSDT", "0.10"), ("BTCUSDT", "0.50")]
    finally:
        sink.close()


def test_a_resubscribe_the_venue_never_answers_ends_in_a_reconnect_and_a_synced_book(tmp_path, broker):
    """The venue swallows two snapshots of the first book resubscribed once all books are synced: the
    service asks again, then closes the connection; the reconnect's subscription brings the books back."""
    ensure_topics(broker.bootstrap, 3)
    config = SimConfig(scenario="calm", seed=12, hours=1, speed=30, symbols=SIM_SYMBOLS,
                       faults=FaultConfig(gap_every_s=60), venues=("binance-usdm", "okx-swap"))
    with SimulatorThread(config) as sim:
        dialect = sim.simulator.dialects["okx-swap"]
        real_snapshot, swallowed = dialect.snapshot, []

        def snapshot(topic):
            frame = real_snapshot(topic)
            if armed and frame is not None and len(swallowed) < 2 and topic in (swallowed or [topic]):
                swallowed.append(topic)      # the first book resubscribed after arming, twice
                return None
            return frame
        dialect.snapshot = snapshot
        armed = False
        service = IngestService(venue_for("okx-swap"), IngestConfig(
            symbols=list(NATIVE["okx-swap"].values()), ws_url=sim.ws_url, rest_url=sim.http_url,
            bootstrap=broker.bootstrap, run_dir=tmp_path, backoff_base_s=0.2, backoff_max_s=2.0),
            sink=RecordingSink(broker.bootstrap, tmp_path / "spill.jsonl", delivery_timeout_ms=5000))

        async def scenario():
            nonlocal armed
            task = asyncio.create_task(service.run())
            while service.handler.book_sync.counts["snapshots"] < 3:      # the first subscription's books
                await asyncio.sleep(0.1)
            armed = True
            deadline = time.monotonic() + 120
            while time.monotonic() < deadline and not (
                    len(swallowed) == 2 and service.events["reconnects"] >= 1
                    and all(st.phase == "synced" for st in service.handler.book_sync.symbols.values())):
                await asyncio.sleep(0.2)
            service.request_stop()
            await task
        asyncio.run(scenario())
    records = service.sink.records
    failed = [orjson.loads(r.detail) for r in records if r.record_type == "feed_event" and r.kind == "resubscribe_failed"]
    assert len(swallowed) == 2 and len(set(swallowed)) == 1 and len(failed) == 1 and failed[0]["attempts"] == IngestService.RESUBSCRIBE_ATTEMPTS
    assert service.events["reconnects"] >= 1 and service.events["resubscribes"] >= 2
    # After giving up, the reconnect's subscription brought that book back.
    after = records[next(i for i, r in enumerate(records) if r.record_type == "feed_event"
                         and r.kind == "resubscribe_failed"):]
    assert any(r.record_type == "book_snapshot" and r.symbol_native == swallowed[0].partition(":")[2] for r in after)


def test_hyperliquid_through_a_cascade_books_trades_and_the_backstop_liquidations_it_reveals(tmp_path, broker):
    """Hyperliquid's books are whole 20-level snapshots every 5 s, its trade ids unordered, and its
    only public liquidations the backstops against the liquidator vault: each book equals the
    venue's true book at every checkpoint, trades are unique and the market's, and the backstop
    liquidations are exactly what the book did not fill, a lower bound of the true total."""
    ensure_topics(broker.bootstrap, 3)
    config = SimConfig(scenario="cascade", seed=11, hours=2, speed=60, trigger_offset_s=60, symbols=SIM_SYMBOLS,
                       truth_path=str(tmp_path / "truth.jsonl"), checkpoint_every_s=20,
                       faults=FaultConfig(drop_every_s=300), venues=("binance-usdm", "hyperliquid"))
    venue = venue_for("hyperliquid")
    with SimulatorThread(config) as sim:
        service_config = IngestConfig(symbols=["BTC", "ETH", "SOL"], ws_url=sim.ws_url + HL_PREFIX,
                                      rest_url=sim.http_url + HL_PREFIX, bootstrap=broker.bootstrap, run_dir=tmp_path,
                                      backoff_base_s=0.2, backoff_max_s=2.0)
        sink = RecordingSink(broker.bootstrap, tmp_path / "spill.jsonl", delivery_timeout_ms=5000)
        service = IngestService(venue, service_config, sink=sink)
        asyncio.run(run_for_market_time(service, sim, 2400))
    truth = load_truth(tmp_path / "truth.jsonl")
    records = sink.records
    kinds = Counter(r.record_type for r in records)
    print(f"hyperliquid: {dict(kinds)}; drops {sum(f['fault'] == 'drop' for f in truth['fault'])}")
    assert not service.handler.stats.dead_letters and service.events["disconnects"] >= 1

    # Books: every snapshot taken at a checkpoint equals the venue's true top 20 levels.
    market = venue_market(truth, "hyperliquid")
    symbols = [s["symbol"] for s in truth["meta"][0]["symbols"]]
    coin_of = {s: s[:-4] for s in SIM_SYMBOLS}
    true_books = {}
    for cp in truth["book"]:
        s = symbols.index(cp["symbol"])
        market.displace(s, cp["venue_offsets"]["hyperliquid"])
        true_books[(coin_of[cp["symbol"]], cp["ts"])] = tuple(
            {Decimal(p): Decimal(q) for p, q in market.book(s, cp[side][:20])} for side in ("bids", "asks"))
    compared = 0
    for r in records:
        if r.record_type == "book_snapshot" and r.reason == "venue":
            assert len(r.bids) <= 20 and len(r.asks) <= 20
            key = (r.symbol_native, r.ts_exchange)
            if key in true_books:
                assert tuple({Decimal(p): Decimal(q) for p, q in side} for side in (r.bids, r.asks)) == true_books[key]
                compared += 1
    assert compared >= 10

    # Trades: unique, each one the market made (tid = trade id * 8 + coin); backstops aside.
    published = truth_individual_trade_ids(truth)
    trades = [r for r in records if r.record_type == "trade"]
    market_ids = [(symbols[int(t.trade_id) % 8], int(t.trade_id) // 8) for t in trades if int(t.trade_id) < 1 << 53]
    assert len(market_ids) == len(set(market_ids)) > 1000 and set(market_ids) <= published

    # Liquidations: only the backstops, each the part of a true liquidation the book did not fill.
    liquidations = [r for r in records if r.record_type == "liquidation"]
    true_backstops = Counter((l["symbol"], l["position"], l["ts"] // 1000) for l in truth["liquidation"]
                             if l["insurance_fund_qty"] > 0)
    assert liquidations and all(r.is_sampled for r in liquidations)
    for r in liquidations:
        sim_symbol = f"{r.symbol_native}USDT"
        assert true_backstops[(sim_symbol, r.liquidated_position, r.ts_exchange // 1000)] >= 1 or \
            true_backstops[(sim_symbol, r.liquidated_position, r.ts_exchange // 1000 - 1)] >= 1
    revealed = sum(float(r.qty) * float(r.price) for r in liquidations)
    window = (min(r.ts_exchange for r in records if r.record_type == "trade"), max(r.ts_exchange for r in liquidations))
    true_total = sum(l["notional"] for l in truth["liquidation"] if window[0] <= l["ts"] <= window[1]) * \
        VENUE_MARKETS["hyperliquid"].share
    print(f"hyperliquid reveals {revealed:,.0f} of {true_total:,.0f} USD liquidated ({revealed / true_total:.1%})")
    assert 0 < revealed < true_total


def test_bybit_publishes_every_liquidation_not_a_sample(tmp_path, broker):
    """Bybit's allLiquidation carries every liquidation (Binance's forceOrder only the latest per
    symbol per second): through a cascade, the liquidations perpflow stores are the truth's, one for
    one, each at the venue's share of the size."""
    ensure_topics(broker.bootstrap, 3)
    config = SimConfig(scenario="cascade", seed=11, hours=2, speed=60, trigger_offset_s=60, symbols=SIM_SYMBOLS,
                       truth_path=str(tmp_path / "truth.jsonl"), venues=("binance-usdm", "bybit-linear"))
    with SimulatorThread(config) as sim:
        # allLiquidation cannot be backfilled: a keepalive timeout while this process (simulator and
        # service share it) is starved on a loaded machine would lose liquidations that are not the
        # venue's doing, so the test waits for pongs as long as the run may take.
        service_config = IngestConfig(symbols=list(SIM_SYMBOLS), ws_url=sim.ws_url, rest_url=sim.http_url,
                                      bootstrap=broker.bootstrap, run_dir=tmp_path,
                                      backoff_base_s=0.2, backoff_max_s=2.0, keepalive_timeout_s=600)
        sink = RecordingSink(broker.bootstrap, tmp_path / "spill.jsonl", delivery_timeout_ms=5000)
        service = IngestService(venue_for("bybit-linear"), service_config, sink=sink)
        asyncio.run(run_for_market_time(service, sim, 1800))
    truth = load_truth(tmp_path / "truth.jsonl")
    stored = [r for r in sink.records if r.record_type == "liquidation"]
    assert len(stored) > 100 and not any(r.is_sampled for r in stored)
    first, last = min(r.ts_exchange for r in stored), max(r.ts_exchange for r in stored)
    market = venue_market(truth, "bybit-linear")
    symbols = [s["symbol"] for s in truth["meta"][0]["symbols"]]
    expected = Counter((l["symbol"], l["position"], l["ts"], Decimal(market.qty_of_lots(
        symbols.index(l["symbol"]), market.fill_lots(round(l["qty"] / float(SYMBOL_SPECS[l["symbol"]].step_size))))))
        for l in truth["liquidation"] if first <= l["ts"] <= last)
    got = Counter((r.symbol_native, r.liquidated_position, r.ts_exchange, Decimal(r.qty)) for r in stored)
    assert got == expected
    published = sum(1 for l in truth["liquidation"] if first <= l["ts"] <= last and l["published"])
    print(f"bybit-linear: {len(stored)} liquidations stored, all of the truth's; Binance's sample had {published}")
    assert published < len(stored)


def test_gmx_polled_through_a_cascade_lists_every_liquidation_and_the_adl_it_caused(tmp_path, broker):
    """GMX has no book and no websocket: perpflow polls its oracle API and Subsquid. Through a
    cascade its open interest (both sides), funding and oracle prices flow on the market's clock,
    and its liquidation and ADL lists are complete: every true liquidation at GMX's share, and an
    ADL fill for each one whose loss the book could not absorb."""
    ensure_topics(broker.bootstrap, 3)
    config = SimConfig(scenario="cascade", seed=11, hours=2, speed=60, trigger_offset_s=60, symbols=SIM_SYMBOLS,
                       truth_path=str(tmp_path / "truth.jsonl"), venues=("binance-usdm", "gmx-v2"))
    venue = venue_for("gmx-v2")
    natives = ["BTC-USD-WBTC-USDC", "ETH-USD-WETH-USDC", "SOL-USD-SOL-USDC"]
    with SimulatorThread(config) as sim:
        service_config = IngestConfig(symbols=natives, ws_url=sim.ws_url, rest_url=sim.http_url + GMX_PREFIX,
                                      bootstrap=broker.bootstrap, run_dir=tmp_path, backoff_base_s=0.2,
                                      backoff_max_s=2.0)
        sink = RecordingSink(broker.bootstrap, tmp_path / "spill.jsonl", delivery_timeout_ms=5000)
        service = IngestService(venue, service_config, sink=sink)
        asyncio.run(run_for_market_time(service, sim, 2400))
    truth = load_truth(tmp_path / "truth.jsonl")
    records = sink.records
    kinds = Counter(r.record_type for r in records)
    print(f"gmx-v2: {dict(kinds)}")
    assert not service.handler.stats.dead_letters
    assert {r.symbol_native for r in records if r.record_type == "instrument"} == set(natives)
    meta = truth["meta"][0]
    in_market = lambda ts: meta["start_ms"] <= ts <= meta["end_ms"]   # noqa: E731
    oi = [r for r in records if r.record_type == "open_interest"]
    assert oi and all(r.open_interest_short is not None and in_market(r.ts_exchange) for r in oi)
    funding = [r for r in records if r.record_type == "funding"]
    assert any(r.rate is not None for r in funding) and any(r.index_price is not None for r in funding)
    assert all(in_market(r.ts_exchange) for r in funding)

    # Liquidations: complete, at GMX's share; ADL for what the book could not take.
    share = VENUE_MARKETS["gmx-v2"].share
    liquidations = [r for r in records if r.record_type == "liquidation"]
    adl = [r for r in records if r.record_type == "adl"]
    assert len(liquidations) > 100 and not any(r.is_sampled for r in liquidations)
    # The last second may have been only partly listed when the service stopped: compare before it.
    first, last = min(r.ts_exchange for r in liquidations), max(r.ts_exchange for r in liquidations) - 1000
    liquidations = [r for r in liquidations if r.ts_exchange <= last]
    coin = {f"{s[:-4]}": s for s in SIM_SYMBOLS}
    got = Counter((coin[r.symbol_native.split("-")[0]], r.liquidated_position, r.ts_exchange // 1000)
                  for r in liquidations)
    expected = Counter((l["symbol"], l["position"], l["ts"] // 1000) for l in truth["liquidation"]
                       if first // 1000 <= l["ts"] // 1000 <= last // 1000)
    assert got == expected
    # ADL is its own query, with its own cursor: its own first and last second.
    adl_first, adl_last = min(r.ts_exchange for r in adl) // 1000, (max(r.ts_exchange for r in adl) - 1000) // 1000
    true_adl = Counter((l["symbol"], "short" if l["position"] == "long" else "long", l["ts"] // 1000)
                       for l in truth["liquidation"] if l["insurance_fund_qty"] > 0
                       and adl_first <= l["ts"] // 1000 <= adl_last)
    got_adl = Counter((coin[r.symbol_native.split("-")[0]], r.deleveraged_position, r.ts_exchange // 1000)
                      for r in adl if adl_first <= r.ts_exchange // 1000 <= adl_last)
    assert got_adl == true_adl and len(adl) > 0
    revealed = sum(float(r.qty) for r in liquidations)       # contracts of 1 USD
    true_usd = sum(l["notional"] for l in truth["liquidation"] if first <= l["ts"] <= last) * share
    print(f"gmx-v2: {len(liquidations)} liquidations ({revealed:,.0f} USD at the oracle; the truth at GMX's share "
          f"{true_usd:,.0f} USD at fill prices), {len(adl)} ADL fills")


# --- dYdX v4 ------------------------------------------------------------------------------------

DYDX_TICKERS = {s: f"{s[:-4]}-USD" for s in SIM_SYMBOLS}
DYDX_COMPARED_LEVELS = 50        # of the 100 a snapshot holds: deeper levels the client may not have yet
DYDX_REFRESH_MS = 3_000          # the venue's 60 s re-snapshot, shortened to fit a 40 s wall run (3 s wall = 3 min)


def run_dydx(tmp_path, broker, faults: FaultConfig):
    """perpflow's ingest service on the dYdX indexer dialect through a cascade (40 min of market
    time at speed 60: about 40 s wall); (service, records, truth, market seconds played)."""
    ensure_topics(broker.bootstrap, 3)
    config = SimConfig(scenario="cascade", seed=11, hours=2, speed=60, trigger_offset_s=60, symbols=SIM_SYMBOLS,
                       truth_path=str(tmp_path / "truth.jsonl"), checkpoint_every_s=20, faults=faults,
                       venues=("binance-usdm", "dydx-v4"))
    with SimulatorThread(config) as sim:
        service_config = IngestConfig(symbols=list(DYDX_TICKERS.values()), ws_url=sim.ws_url + DYDX_PREFIX,
                                      rest_url=sim.http_url + DYDX_PREFIX, bootstrap=broker.bootstrap,
                                      run_dir=tmp_path, backoff_base_s=0.2, backoff_max_s=2.0)
        sink = RecordingSink(broker.bootstrap, tmp_path / "spill.jsonl", delivery_timeout_ms=5000)
        service = IngestService(venue_for("dydx-v4"), service_config, sink=sink)
        asyncio.run(run_for_market_time(service, sim, 2400))
        played_s = (sim.simulator.feed.now_ms - sim.simulator.feed.start_ms) / 1000
    return service, sink.records, load_truth(tmp_path / "truth.jsonl"), played_s


def dydx_checkpoint_books(records, truth) -> list[tuple]:
    """The client's books (rebuilt from the records by dYdX's sync rules, uncrossing included) at
    every truth checkpoint, against the venue's true book. The book frames carry no time; the
    oracle update of a market second follows that step's book changes, so a funding record with
    ``ts_exchange`` = a checkpoint's time is where the client's book is the checkpoint's.
    Per comparison: (ticker, checkpoint ms, equal, market ms of the last oracle update before the
    book's latest snapshot)."""
    market = venue_market(truth, "dydx-v4")
    symbols = [s["symbol"] for s in truth["meta"][0]["symbols"]]
    truth_books = {}
    for cp in truth["book"]:
        s = symbols.index(cp["symbol"])
        truth_books[(DYDX_TICKERS[cp["symbol"]], cp["ts"])] = tuple(
            dict(sorted(((float(p), float(q)) for p, q in market.book(s, cp[side])),
                        reverse=side == "bids")[:DYDX_COMPARED_LEVELS]) for side in ("bids", "asks"))
    sync = BookSync(DydxV4.rules, "dydx-v4", periodic_ms=0)
    venue = venue_for("dydx-v4")
    snapshot_anchor: dict[str, int | None] = {}
    anchor, out = None, []
    for r in records:
        kind = r.record_type
        if kind == "book_snapshot" and r.reason == "venue":
            sync.on_snapshot(dataclasses.replace(r))
            snapshot_anchor[r.symbol_native] = anchor or 0
        elif kind == "book_delta":
            sync.on_delta(dataclasses.replace(r))
        elif kind == "feed_event" and r.kind in ("disconnect", "stall", "rotate", "message_gap"):
            for ticker in DYDX_TICKERS.values():
                sync.reset(venue.normalize_symbol(ticker))
        elif kind == "funding" and r.ts_exchange != anchor and (r.symbol_native, r.ts_exchange) in truth_books:
            anchor = r.ts_exchange
            for ticker in DYDX_TICKERS.values():
                st = sync.symbols.get(venue.normalize_symbol(ticker))
                if st is None or st.phase != SYNCED or snapshot_anchor.get(ticker) is None:
                    continue
                book = tuple(dict(sorted(side.items(), reverse=reverse)[:DYDX_COMPARED_LEVELS])
                             for side, reverse in ((st.book.bids, True), (st.book.asks, False)))
                out.append((ticker, anchor, book == truth_books[(ticker, anchor)], snapshot_anchor[ticker]))
    return out


def check_dydx_trades(records, truth) -> dict:
    """Trades are unique and the market's; LIQUIDATED fills are every liquidation the book filled
    and DELEVERAGED fills what it did not, one for one, in every second whose fills perpflow all
    received (a reconnect's backlog may not reach back over the whole outage)."""
    symbols = [s["symbol"] for s in truth["meta"][0]["symbols"]]
    sim_symbol = {t: s for s, t in DYDX_TICKERS.items()}
    market = venue_market(truth, "dydx-v4")
    trades = [r for r in records if r.record_type == "trade"]
    fills = [market_fill_of(t.trade_id) for t in trades if t.trade_type != "DELEVERAGED"]
    ids = [(symbols[s], agg) for s, agg in fills]
    assert len(ids) == len(set(ids)) > 1000 and set(ids) <= truth_trade_ids(truth)
    assert {t.trade_type for t in trades} == {"LIMIT", "LIQUIDATED", "DELEVERAGED"}

    # Seconds (keyed by their end, as the truth's second records) in which every fill arrived.
    got = set(ids)
    first, last = min(t.ts_exchange for t in trades), max(t.ts_exchange for t in trades)
    second_of = lambda ts: (ts // 1000 + 1) * 1000      # noqa: E731
    covered = {(s["symbol"], s["ts"]) for s in truth["second"] if second_of(first) < s["ts"] < second_of(last)
               and (s["agg_first"] is None or all((s["symbol"], i) in got
                                                  for i in range(s["agg_first"], s["agg_last"] + 1)))}
    liquidations = [r for r in records if r.record_type == "liquidation"]
    assert liquidations and not any(r.is_sampled for r in liquidations)
    seen = {(sim_symbol[r.symbol_native], r.liquidated_position, r.ts_exchange) for r in liquidations
            if (sim_symbol[r.symbol_native], second_of(r.ts_exchange)) in covered}
    true_filled = [l for l in truth["liquidation"] if l["filled_qty"] > 0
                   and (l["symbol"], second_of(l["ts"])) in covered]
    assert seen == {(l["symbol"], l["position"], l["ts"]) for l in true_filled}
    revealed = sum(float(r.qty) * float(r.price) for r in liquidations
                   if (sim_symbol[r.symbol_native], second_of(r.ts_exchange)) in covered)
    true_usd = sum(l["filled_qty"] * l["price"] for l in true_filled) * VENUE_MARKETS["dydx-v4"].share
    assert abs(revealed / true_usd - 1) < 0.03, (revealed, true_usd)

    # ADL: the unfilled part of each liquidation, at the bankruptcy price, the other side deleveraged.
    def venue_adl(l):
        s = symbols.index(l["symbol"])
        lots = market.fill_lots(round(l["insurance_fund_qty"] / float(SYMBOL_SPECS[l["symbol"]].step_size)))
        price = market.price(s, SymbolFormat(SYMBOL_SPECS[l["symbol"]]).price_float(l["bankruptcy_price"]))
        return (l["symbol"], "short" if l["position"] == "long" else "long", l["ts"],
                Decimal(market.qty_of_lots(s, lots)), Decimal(price))
    every_adl = Counter(venue_adl(l) for l in truth["liquidation"] if l["insurance_fund_qty"] > 0)
    adl = Counter((sim_symbol[r.symbol_native], r.deleveraged_position, r.ts_exchange, Decimal(r.qty),
                   Decimal(r.price)) for r in records if r.record_type == "adl")
    assert adl and not adl - every_adl
    settled = lambda key: all((key[0], second_of(key[2]) + k * 1000) in covered for k in (0, 1))   # noqa: E731
    assert +Counter({k: n for k, n in adl.items() if settled(k)}) == \
        +Counter({k: n for k, n in every_adl.items() if settled(k)})
    window = [l for l in truth["liquidation"] if first <= l["ts"] <= last]
    return {"liquidation_orders_seen": len(seen), "liquidation_orders_true": len(true_filled),
            "liquidations_in_window_true": len(window), "liquidated_usd": revealed, "liquidated_usd_true": true_usd,
            "adl_fills": sum(adl.values()), "adl_usd": sum(float(k[3] * k[4]) * n for k, n in adl.items()),
            "covered_seconds": len(covered)}


def test_dydx_through_a_cascade_books_exact_every_liquidation_and_adl_public(tmp_path, broker):
    """dYdX v4's indexer (message_id per connection, unsequenced book deltas, complete public
    trades) without its integrity faults: no dead letters, every checkpoint book equals the venue's
    true book, every trade is the market's, LIQUIDATED fills are every liquidation the book filled
    and DELEVERAGED fills (ADL) the rest, one for one."""
    service, records, truth, played_s = run_dydx(tmp_path, broker, FaultConfig(drop_every_s=300))
    kinds = Counter(r.record_type for r in records)
    counts = service.handler.book_sync.counts
    drops = sum(f["fault"] == "drop" for f in truth["fault"])
    print(f"dydx-v4: {dict(kinds)}; drops {drops}; book sync {dict(counts)}")
    events = Counter(r.kind for r in records if r.record_type == "feed_event")
    assert not service.handler.stats.dead_letters and not events["message_gap"]
    assert drops >= 2 and service.events["disconnects"] >= 2
    assert counts["uncross_events"] == 0 and counts["crossed"] == 0

    compared = dydx_checkpoint_books(records, truth)
    assert len(compared) >= 60 and all(equal for _, _, equal, _ in compared), \
        [c for c in compared if not c[2]][:5]

    figures = check_dydx_trades(records, truth)
    print(f"dydx-v4: {len(compared)} checkpoint books equal the truth; liquidations revealed "
          f"{figures['liquidated_usd']:,.0f} of {figures['liquidated_usd_true']:,.0f} USD true at dYdX's share "
          f"({figures['liquidation_orders_seen']} of {figures['liquidation_orders_true']} liquidation orders in "
          f"{figures['covered_seconds']} fully received seconds; {figures['liquidations_in_window_true']} in the "
          f"window), {figures['adl_fills']} ADL fills ({figures['adl_usd']:,.0f} USD)")
    assert kinds["funding"] >= 100 and kinds["open_interest"] >= 10 and kinds["instrument"] >= 3


def test_dydx_lost_fetch_updates_and_stale_levels_cross_books_that_resnapshots_repair(tmp_path, broker, monkeypatch):
    """dYdX's integrity faults: a subscription whose snapshot was fetched before it was registered
    misses updates, and the venue leaves stale levels it deleted; books then cross, perpflow
    uncrosses them (counted, and flagged on its snapshots), and after a clean re-snapshot (the
    venue module's periodic one, shortened for the run) the books equal the truth again."""
    monkeypatch.setattr(DydxV4.rules, "refresh_ms", DYDX_REFRESH_MS)
    faults = FaultConfig(drop_every_s=300, fetch_loss_every_s=120, fetch_loss_steps=20, stale_level_every_s=60)
    service, records, truth, played_s = run_dydx(tmp_path, broker, faults)
    kinds = Counter(r.record_type for r in records)
    counts = service.handler.book_sync.counts
    injected = Counter(f["fault"] for f in truth["fault"])
    print(f"dydx-v4 with faults: {dict(kinds)}; injected {dict(injected)}; book sync {dict(counts)}")
    events = Counter(r.kind for r in records if r.record_type == "feed_event")
    assert not service.handler.stats.dead_letters and not events["message_gap"]   # late replies fill their ids
    assert injected["fetch_loss"] >= 3 and injected["stale_level"] >= 3 and counts["refresh_requests"] >= 10

    # Crossed books are uncrossed, counted, and the snapshots that needed it are flagged.
    assert counts["uncross_events"] > 0
    flagged = [r for r in records if r.record_type == "book_snapshot" and r.uncrossed]
    assert flagged and all(r.reason == "periodic" for r in flagged)

    # Checkpoints: after a clean snapshot (no lost fetch, no stale level since) the book is the truth's.
    faulty = defaultdict(list)
    for f in truth["fault"]:
        if f["fault"] in ("fetch_loss", "stale_level"):
            faulty[f["ticker"]].append(f["ts"])
    compared = dydx_checkpoint_books(records, truth)
    clean, dirty = [], []
    for ticker, ts, equal, snapshot_anchor in compared:
        touched = any(snapshot_anchor - 3000 <= f <= ts for f in faulty[ticker])
        (dirty if touched else clean).append((ticker, ts, equal))
    assert len(clean) >= 30 and all(equal for _, _, equal in clean), [c for c in clean if not c[2]][:5]
    stale = [c for c in dirty if not c[2]]
    repaired = {t for t, ts, _ in stale if any(c[0] == t and c[1] > ts for c in clean)}
    assert stale and repaired
    hours = played_s / 3600
    print(f"dydx-v4 with faults: {counts['uncross_events']} uncross events ({counts['uncross_events'] / hours:,.0f} "
          f"per simulated hour, {counts['uncrossed_levels_removed']} levels removed), {len(flagged)} snapshots "
          f"flagged; checkpoints: {len(clean)} clean all equal, {len(dirty)} after a fault of which {len(stale)} "
          f"stale; books repaired by a later snapshot: {sorted(repaired)}")


def test_dydx_protocol_message_ids_per_connection_errors_late_replies_and_rest(tmp_path):
    """The dYdX dialect's envelope on a live simulator: each connection counts its own message_ids
    from 0 with no hole; bad requests are error frames; a subscription hit by the fetch-loss fault
    gets its subscribed reply (with the id taken when the request was read) after higher ids, and
    the truth records it; REST answers what the venue module reads."""
    import aiohttp
    import websockets

    config = SimConfig(scenario="calm", seed=3, hours=1, speed=20, symbols=SIM_SYMBOLS, venues=("dydx-v4",),
                       truth_path=str(tmp_path / "truth.jsonl"),
                       faults=FaultConfig(fetch_loss_every_s=1, fetch_loss_steps=30))
    venue = venue_for("dydx-v4")

    async def session(url: str, after_s: float = 0) -> list[dict]:
        await asyncio.sleep(after_s)    # > 1 s of market time: a fetch loss is due for each
        async with websockets.connect(url) as ws:
            for request in ({"type": "subscribe", "channel": "v4_trades", "id": "BTC-USD"},
                            {"type": "subscribe", "channel": "v4_trades", "id": "BTC-USD"},
                            {"type": "subscribe", "channel": "v4_candles", "id": "BTC-USD/1MIN"},
                            {"type": "subscribe", "channel": "v4_orderbook", "id": "DOGE-USD"},
                            {"type": "ping"}, "not json",
                            {"type": "subscribe", "channel": "v4_markets"},
                            {"type": "subscribe", "channel": "v4_orderbook", "id": "ETH-USD"}):
                await ws.send(request if isinstance(request, str) else orjson.dumps(request).decode())
            frames = []
            while len(frames) < 300:
                frames.append(orjson.loads(await ws.recv()))
            return frames

    async def rest(base: str) -> dict:
        async with aiohttp.ClientSession() as http:
            out = {}
            for name, path in (("markets", "/v4/perpetualMarkets"), ("book", "/v4/orderbooks/perpetualMarket/BTC-USD"),
                               ("trades", "/v4/trades/perpetualMarket/BTC-USD?limit=5"),
                               ("funding", "/v4/historicalFunding/BTC-USD"),
                               ("bad", "/v4/trades/perpetualMarket/DOGE-USD")):
                async with http.get(base + path) as response:
                    out[name] = (response.status, await response.json())
            return out

    async def both(sim):
        await asyncio.sleep(2)
        url = sim.ws_url + DYDX_PREFIX + venue.WS_PATH
        first, second = await asyncio.gather(session(url), session(url, 0.25))
        return first, second, await rest(sim.http_url + DYDX_PREFIX)

    with SimulatorThread(config) as sim:
        first, second, answers = asyncio.run(both(sim))
    for frames in (first, second):
        ids = [f["message_id"] for f in frames]
        assert frames[0]["type"] == "connected" and ids[0] == 0
        assert sorted(ids) == list(range(len(ids))) and len({f["connection_id"] for f in frames}) == 1
        errors = [f["message"] for f in frames if f["type"] == "error"]
        assert len(errors) == 4 and any("already subscribed" in e for e in errors) and \
            any("not a valid channel" in e for e in errors) and any("DOGE-USD" in e for e in errors)
        book = next(f for f in frames if f["type"] == "subscribed" and f["channel"] == "v4_orderbook")
        assert book["message_id"] < ids[frames.index(book) - 1]           # sent after the fetch: late
        assert 0 < len(book["contents"]["bids"]) <= 100 and set(book["contents"]["bids"][0]) == {"price", "size"}
        assert any(f["type"] == "channel_data" and f["channel"] == "v4_markets" for f in frames)
    assert first[0]["connection_id"] != second[0]["connection_id"]
    losses = [f for f in load_truth(tmp_path / "truth.jsonl")["fault"] if f["fault"] == "fetch_loss"]
    assert len(losses) == 2 and {f["ticker"] for f in losses} == {"ETH-USD"} and all(f["steps"] == 30 for f in losses)

    assert answers["bad"][0] == 400 and "errors" in answers["bad"][1]
    instruments = venue.map_rest(sim.http_url + DYDX_PREFIX + "/v4/perpetualMarkets", answers["markets"][1], 0)
    assert {i.symbol_native for i in instruments} == set(DYDX_TICKERS.values())
    assert venue.tradable_symbols() == set(DYDX_TICKERS.values())
    trades = venue.map_rest(sim.http_url + DYDX_PREFIX + "/v4/trades/perpetualMarket/BTC-USD?limit=5",
                            answers["trades"][1], 0)
    assert 0 < len(trades) <= 5
    assert answers["funding"] == (200, {"historicalFunding": []})    # no hour has settled yet
    bids, asks = answers["book"][1]["bids"], answers["book"][1]["asks"]
    assert len(bids) == len(asks) == 100 and float(bids[0]["price"]) < float(asks[0]["price"])
