"""The venues' positioning statistics, live: the simulator serves each venue's endpoints from the
market's ground truth (every position known), the ingest service of each venue polls them, the
Tansu broker carries the records and the loader stores them in DuckDB. Every period stored equals
the truth of that period as it closed (not the open period's values a poll also saw), each once,
however many polls repeated it."""

from __future__ import annotations

import asyncio
import time
import urllib.error
import urllib.request
from decimal import Decimal

import orjson
import pytest

from ingest.service import IngestConfig, IngestService
from ingest.simulator import SimConfig, SimulatorThread, load_truth, server
from ingest.simulator.config import SYMBOL_SPECS
from ingest.simulator.dialects import url_prefix
from ingest.simulator.dialects.okx import CONTRACT_VALUE
from ingest.simulator.positioning import ratio, share
from ingest.venues import positioning
from ingest.venues import venue as venue_for
from test_ingest_service import RecordingSink
from warehouse.loader import load_once

NATIVE = {"binance-usdm": "BTCUSDT", "okx-swap": "BTC-USDT-SWAP", "bybit-linear": "BTCUSDT"}
TOP = {"binance-usdm": "0.2/margin", "okx-swap": "0.05/value"}     # each venue's top-trader cut
MARKET_MINUTES = 31
POLL_EVERY_S = 4.0              # instead of every minute: the market runs 60 s a second here


async def run_services(services: list[IngestService], sim: SimulatorThread, market_s: float,
                       at_most_s: float) -> int:
    """Run the services until the market has played ``market_s``; the market time they were told to
    stop at (the simulator plays on while a loaded machine winds the services down: no poll is made
    after the stop)."""
    feed = sim.simulator.feed
    tasks = [asyncio.create_task(service.run()) for service in services]
    started = time.monotonic()
    stopped_ms = None
    while not all(task.done() for task in tasks):
        await asyncio.sleep(0.5)
        if stopped_ms is None and (feed.now_ms - feed.start_ms >= market_s * 1000
                                   or time.monotonic() - started >= at_most_s):
            stopped_ms = feed.now_ms
            for service in services:
                service.request_stop()
    await asyncio.gather(*tasks)
    return stopped_ms if stopped_ms is not None else feed.now_ms


def test_each_venue_stores_every_closed_period_once_equal_to_the_truth(tmp_path, fresh_broker, warehouse,
                                                                         monkeypatch):
    monkeypatch.setattr(positioning, "POLL_EVERY_S", POLL_EVERY_S)
    config = SimConfig(scenario="calm", seed=5, hours=1, speed=60, symbols=("BTCUSDT",),
                       truth_path=str(tmp_path / "truth.jsonl"), venues=tuple(NATIVE))
    with SimulatorThread(config) as sim:
        services = []
        for exchange, native in NATIVE.items():
            prefix = url_prefix(exchange)
            service_config = IngestConfig(symbols=[native], ws_url=sim.ws_url + prefix, rest_url=sim.http_url + prefix,
                                          bootstrap=fresh_broker.bootstrap, run_dir=tmp_path / exchange,
                                          backoff_base_s=0.2, backoff_max_s=2.0)
            sink = RecordingSink(fresh_broker.bootstrap, tmp_path / f"spill-{exchange}.jsonl",
                                 delivery_timeout_ms=5000)
            services.append(IngestService(venue_for(exchange), service_config, sink=sink))
        stopped_ms = asyncio.run(run_services(services, sim, MARKET_MINUTES * 60, at_most_s=300))
    sent = sum(type(r).__name__ in ("LongShortRatio", "TakerVolume") for service in services
               for r in service.sink.records)
    for service in services:
        assert not service.handler.stats.dead_letters, (service.venue.exchange, service.handler.stats.dead_letters)
        assert not any(p["failed"] for p in service._polls.values()), service._polls
    truth = load_truth(tmp_path / "truth.jsonl")
    closed = {p["ts"]: p for p in truth["positioning"] if p["symbol"] == "BTCUSDT"}
    # A period is published by the first poll after it closed: all but the last one or two that closed
    # before the stop (a loaded machine answers polls late) must be stored.
    settled = sorted(t for t in closed if t + 300_000 <= stopped_ms)[:-2]
    assert len(settled) >= 4

    report = load_once(warehouse, fresh_broker.bootstrap)
    assert report.rejected == 0
    # Each poll repeats the periods before it: the loader kept one row of each.
    assert sent > 2 * (report.rows["long_short_ratios"] + report.rows["taker_volumes"])
    with warehouse.writer() as con:
        ratios = con.execute("""SELECT exchange, population, epoch_ms(ts_exchange), long_share, short_share,
                                       long_short_ratio, period FROM raw.long_short_ratios""").fetchall()
        volumes = con.execute("""SELECT exchange, epoch_ms(ts_exchange), buy_qty, sell_qty, qty_unit
                                 FROM raw.taker_volumes""").fetchall()
    polled = {service.venue.exchange: sum(p["ok"] for p in service._polls.values()) for service in services}
    print(f"polls answered {polled}; {sent} positioning records sent, {len(ratios)} ratio rows, {len(volumes)} taker-volume rows; "
          f"{len(settled)} periods closed before the last polls; loader stored {dict(report.rows)}")

    populations = {"binance-usdm": {"all_accounts", "top_accounts", "top_positions"},
                   "okx-swap": {"all_accounts", "top_accounts", "top_positions"}, "bybit-linear": {"all_accounts"}}
    for exchange, expected_populations in populations.items():
        rows = [r for r in ratios if r[0] == exchange]
        assert {r[1] for r in rows} == expected_populations, exchange
        for population in expected_populations:
            starts = sorted(r[2] for r in rows if r[1] == population)
            assert len(starts) == len(set(starts)), (exchange, population, "stored twice")
            # Every closed period, in order from the market's first, but the one that closed after
            # the last poll; never the open one.
            assert starts == sorted(closed)[:len(starts)] and len(starts) >= len(settled), (exchange, population)
        for _, population, start, long_share, short_share, long_short_ratio, period in rows:
            assert period == "5m"
            p = closed[start]
            true_long = {"all_accounts": p["long_accounts"], "top_accounts": p["top"].get(TOP.get(exchange), [0])[0],
                         "top_positions": p["top"].get(TOP.get(exchange), [0, 0])[-1]}[population]
            if exchange == "bybit-linear":      # Bybit publishes the two shares; perpflow divides them
                printed = Decimal(share(true_long))
                assert long_short_ratio == float(printed / (1 - printed)), (exchange, start)
            else:
                assert long_short_ratio == float(ratio(true_long, 1 - true_long)), (exchange, population, start)
            assert long_short_ratio == pytest.approx(true_long / (1 - true_long), rel=1e-3)
            if exchange == "okx-swap":
                assert long_share is None and short_share is None
            else:
                assert long_share == float(share(true_long)) and abs(long_share - true_long) <= 5e-5
                assert short_share == pytest.approx(1 - long_share, abs=1e-4)

    # Taker volume: Binance in base units (the market's lots); OKX in contracts, the sum of its own
    # trades' sizes (each rounded to OKX's lots, so not its share of the market's total); Bybit has none.
    step = Decimal(SYMBOL_SPECS["BTCUSDT"].step_size)
    expected = {"binance-usdm": lambda period: [float(period[k] * step) for k in ("taker_buy_lots", "taker_sell_lots")],
                "okx-swap": lambda period: [float(lots * step / Decimal(CONTRACT_VALUE["BTC"]))
                                            for lots in period["venue_taker_lots"]["okx-swap"]]}
    assert {r[0] for r in volumes} == set(expected)
    for exchange, to_venue in expected.items():
        rows = sorted(r[1:] for r in volumes if r[0] == exchange)
        assert [r[0] for r in rows] == sorted(closed)[:len(rows)] and len(rows) >= len(settled), exchange
        for start, buy, sell, unit in rows:
            assert unit == ("base" if exchange == "binance-usdm" else "contracts")
            assert [buy, sell] == to_venue(closed[start]), (exchange, start)
            assert buy > 0 and sell > 0


def get_json(url: str) -> tuple[int, object]:
    try:
        with urllib.request.urlopen(url, timeout=10) as response:
            return response.status, orjson.loads(response.read())
    except urllib.error.HTTPError as exc:
        return exc.code, orjson.loads(exc.read())


def test_the_simulator_serves_closed_periods_then_the_open_one_within_binances_separate_limit(monkeypatch):
    monkeypatch.setattr(server, "FUTURES_DATA_LIMIT", (6, 300.0))
    # 18 minutes of market, then it stands still (the server keeps answering): three closed periods
    # and the open one, 3 minutes into it.
    config = SimConfig(scenario="calm", seed=5, hours=0.3, speed=600, symbols=("BTCUSDT",), venues=tuple(NATIVE))
    with SimulatorThread(config) as sim:
        feed = sim.simulator.feed
        deadline = time.monotonic() + 120
        while not feed.finished and time.monotonic() < deadline:
            time.sleep(0.2)
        base = f"{sim.http_url}/futures/data"
        status, rows = get_json(f"{base}/topLongShortPositionRatio?symbol=BTCUSDT&period=5m&limit=30")
        assert status == 200 and len(rows) == 4          # three closed periods, then the open one
        starts = [int(r["timestamp"]) for r in rows]
        assert starts == sorted(starts) and all(b - a == 300_000 for a, b in zip(starts, starts[1:]))
        closed = feed.positioning.closed[0]
        assert [p.start_ms for p in closed[-3:]] == starts[:3]
        assert [r["longAccount"] for r in rows[:3]] == [share(p.top[(0.2, "margin")][1]) for p in closed[-3:]]
        status, rows = get_json(f"{base}/takerlongshortRatio?symbol=BTCUSDT&period=5m&limit=2")
        assert status == 200 and len(rows) == 2 and float(rows[0]["buyVol"]) > float(rows[1]["buyVol"]) > 0
        assert get_json(f"{base}/globalLongShortAccountRatio?symbol=BTCUSDT&period=1h")[0] == 400
        assert get_json(f"{base}/globalLongShortAccountRatio?symbol=NOPE&period=5m")[0] == 400
        # Three requests counted so far (the unknown symbol is refused before): three more pass.
        answers = [get_json(f"{base}/globalLongShortAccountRatio?symbol=BTCUSDT&period=5m") for _ in range(5)]
        assert [status for status, _ in answers] == [200, 200, 200, 429, 429]
        assert "1000 requests/5min" in answers[-1][1]["msg"]
        okx = f"{sim.http_url}{url_prefix('okx-swap')}/api/v5/rubik/stat"
        status, body = get_json(f"{okx}/taker-volume-contract?instId=BTC-USDT-SWAP&period=5m&limit=2")
        assert status == 200 and [int(row[0]) for row in body["data"]] == sorted(starts[-2:], reverse=True)
        status, body = get_json(f"{sim.http_url}{url_prefix('bybit-linear')}/v5/market/account-ratio"
                                f"?category=linear&symbol=BTCUSDT&period=5min&limit=3")
        assert status == 200 and body["retCode"] == 0
        assert all(Decimal(r["buyRatio"]) + Decimal(r["sellRatio"]) == 1 for r in body["result"]["list"])
