"""Trade continuity of `perpflow ingest` across SIGKILL, SIGTERM and 429 storms, against the simulator's truth.

Real processes: the simulator's websocket/REST server, a Tansu broker per test, `perpflow ingest` as a
subprocess (killed for real), the loader into a DuckDB file. What counts is what the warehouse holds
after loading: every trade id the venue published while we ran, exactly once; any id missing must be
a `trade_lost` feed event.
"""

from __future__ import annotations

import asyncio
import dataclasses
import json
import signal
import subprocess
import time
from collections import defaultdict

import orjson
import pytest

from ingest.records import split_value
from ingest.simulator import SimConfig, SimulatorThread, load_truth
from conftest import PERPFLOW
from ingest.kafka import end_offsets, new_consumer, partitions_of
from warehouse.loader import load_once
from warehouse.store import Warehouse

SYMBOLS = "BTCUSDT,ETHUSDT,SOLUSDT"


def start_ingest(tmp_path, env, sim, name: str) -> subprocess.Popen:
    log = open(tmp_path / f"{name}.log", "w")  # noqa: SIM115 - the child owns it
    return subprocess.Popen([*PERPFLOW, "ingest", "--exchange", "binance-usdm", "--symbols", SYMBOLS,
                             "--ws-url", sim.ws_url, "--rest-url", sim.http_url, "--oi-interval", "5"],
                            env={**env, "PYTHONUNBUFFERED": "1"}, stdout=log, stderr=subprocess.STDOUT)


def read_status(env) -> dict:
    path = f"{env['PERPFLOW_HOME']}/run/ingest-binance-usdm.json"
    try:
        with open(path) as fh:
            return json.load(fh)
    except (FileNotFoundError, ValueError):
        return {}


def wait_for(condition, timeout: float, what: str, process: subprocess.Popen | None = None):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = condition()
        if value:
            return value
        assert process is None or process.poll() is None, f"ingest exited ({process.returncode}) before {what}"
        time.sleep(0.3)
    raise AssertionError(f"timed out after {timeout}s waiting for {what}")


def stop(process: subprocess.Popen) -> None:
    process.send_signal(signal.SIGTERM)
    assert process.wait(timeout=90) == 0


def set_faults(sim, **changes) -> None:
    """Change the running simulator's fault schedule (drops, REST error rate) from now on."""
    schedule = sim.simulator.feed.faults
    schedule.config = dataclasses.replace(schedule.config, **changes)


def sim_seconds(sim) -> float:
    return sim.simulator.feed.now_ms / 1000


def loaded_trades(tmp_path, bootstrap) -> tuple[dict[str, list[int]], dict[str, set[int]]]:
    """(trade ids per native symbol as loaded, ids declared lost in trade_lost events) from DuckDB."""
    warehouse = Warehouse(tmp_path / "w.duckdb")
    load_once(warehouse, bootstrap)
    with warehouse.writer() as con:
        rows = con.execute("SELECT symbol_native, trade_id FROM raw.trades").fetchall()
        lost_events = con.execute("SELECT symbol, detail FROM raw.feed_events WHERE kind = 'trade_lost'").fetchall()
    ids = defaultdict(list)
    for native, trade_id in rows:
        ids[native].append(int(trade_id))
    lost = defaultdict(set)
    for symbol, detail in lost_events:
        d = orjson.loads(detail)
        lost[symbol.replace("-PERP", "").replace("-", "")] |= set(range(d["first_id"], d["last_id"] + 1))
    return ids, lost


def kafka_values(bootstrap: str, topic: str) -> list[bytes]:
    consumer = new_consumer(bootstrap)
    try:
        tps = partitions_of(consumer, [topic])
        ends = end_offsets(consumer, tps)
        for tp in tps:
            consumer.seek(tp, 0)
        values, deadline = [], time.monotonic() + 30
        while any(consumer.position(tp) < ends[tp] for tp in tps) and time.monotonic() < deadline:
            for messages in consumer.poll(500).values():
                values += [line for m in messages for line in split_value(m.value)]   # packs: a record a line
        return values
    finally:
        consumer.close()


def compare_with_truth(ids: dict[str, list[int]], lost: dict[str, set[int]], truth) -> dict[str, dict]:
    """Per symbol: expected / received / lost with an event / lost silently / duplicated / invented.

    Expected: every id the venue published from the first to the last one we received (ingest
    starts after the venue and stops before it). The truth ends with the last whole simulated
    second; ids we received after it must still be contiguous.
    """
    truth_ids = defaultdict(set)
    for s in truth["second"]:
        if s["agg_first"] is not None:
            truth_ids[s["symbol"]] |= set(range(s["agg_first"], s["agg_last"] + 1))
    report = {}
    for symbol, got in ids.items():
        unique = set(got)
        last_truth = max(truth_ids[symbol])
        expected = {i for i in truth_ids[symbol] if min(unique) <= i <= max(unique)}
        missing = expected - unique
        after_truth = sorted(i for i in unique if i > last_truth)
        report[symbol] = {
            "expected": len(expected), "received": len(unique & expected),
            "lost_with_event": len(missing & lost[symbol]), "lost_silently": len(missing - lost[symbol]),
            "duplicated": len(got) - len(unique),
            "invented": len({i for i in unique if i <= last_truth} - expected)
                        + (len(after_truth) and after_truth != list(range(last_truth + 1, after_truth[-1] + 1)))}
    print(json.dumps(report, indent=1))
    return report


def assert_exact(report: dict[str, dict], min_expected: int) -> None:
    for symbol, r in report.items():
        assert r["expected"] >= min_expected, (symbol, r)
        assert (r["received"], r["lost_with_event"], r["lost_silently"], r["duplicated"], r["invented"]) == \
            (r["expected"], 0, 0, 0, 0), (symbol, r)


def test_sigkill_and_restart_lose_and_duplicate_no_trade(tmp_path, cli_env, fresh_broker):
    config = SimConfig(scenario="calm", seed=21, hours=2, speed=20, truth_path=str(tmp_path / "truth.jsonl"))
    with SimulatorThread(config) as sim:
        first = start_ingest(tmp_path, cli_env, sim, "run1")
        wait_for(lambda: read_status(cli_env).get("records", {}).get("trade", 0) > 1500, 120, "trades", first)
        first.kill()    # SIGKILL: whatever the producer still buffered is gone
        first.wait(10)
        killed_at = sim_seconds(sim)
        wait_for(lambda: sim_seconds(sim) > killed_at + 60, 60, "a minute of trading while ingest is down")
        second = start_ingest(tmp_path, cli_env, sim, "run2")
        status = wait_for(lambda: (st := read_status(cli_env)).get("pid") == second.pid
                          and st["counters_run"].get("trade_backfills", 0) >= 3 and st["missing_trades"] == 0
                          and st["records"].get("trade", 0) > 500 and st, 120, "the restart window backfilled", second)
        stop(second)
    assert status["counters_run"]["trades_backfilled"] > 300      # the restart window was real
    assert status["counters_total"]["messages"] > status["counters_run"]["messages"]   # totals survive restarts
    report = compare_with_truth(*loaded_trades(tmp_path, fresh_broker.bootstrap), load_truth(tmp_path / "truth.jsonl"))
    assert_exact(report, min_expected=300)


def test_a_429_storm_during_gaps_still_ends_with_every_id_backfilled(tmp_path, cli_env, fresh_broker):
    config = SimConfig(scenario="calm", seed=22, hours=2, speed=20, truth_path=str(tmp_path / "truth.jsonl"))
    with SimulatorThread(config) as sim:
        ingest = start_ingest(tmp_path, cli_env, sim, "run")
        wait_for(lambda: read_status(cli_env).get("records", {}).get("trade", 0) > 500, 120, "trades", ingest)
        # Every connection drops every 40 simulated seconds (2 s) while 90% of REST calls fail,
        # a third of them with 429 + Retry-After (up to the next wall-clock minute).
        set_faults(sim, rest_error_rate=0.9, drop_every_s=40)
        wait_for(lambda: read_status(cli_env)["counters_run"].get("trade_gaps", 0) >= 9, 60, "gaps", ingest)
        wait_for(lambda: read_status(cli_env)["counters_run"].get("rest_429", 0) >= 3, 60, "429s", ingest)
        set_faults(sim, rest_error_rate=0.0, drop_every_s=0.0)
        status = wait_for(lambda: (st := read_status(cli_env))["missing_trades"] == 0
                          and st["counters_run"].get("trade_backfills", 0) >= st["counters_run"]["trade_gaps"]
                          and st, 180, "every gap backfilled", ingest)
        stop(ingest)
    truth = load_truth(tmp_path / "truth.jsonl")
    refused = [f for f in truth["fault"] if f["fault"] == "rest_error" and f["path"] == "/fapi/v1/aggTrades"]
    assert sum(f["status"] == 429 for f in refused) >= 1 and len(refused) >= 3, refused
    assert status["counters_run"].get("trades_lost", 0) == 0
    assert_exact(compare_with_truth(*loaded_trades(tmp_path, fresh_broker.bootstrap), truth), min_expected=300)


def test_a_backfill_pending_at_sigterm_is_resumed_by_the_next_start(tmp_path, cli_env, fresh_broker):
    config = SimConfig(scenario="calm", seed=23, hours=2, speed=20, truth_path=str(tmp_path / "truth.jsonl"))
    state_path = tmp_path / "home" / "run" / "ingest-binance-usdm.state.json"
    with SimulatorThread(config) as sim:
        first = start_ingest(tmp_path, cli_env, sim, "run1")
        wait_for(lambda: read_status(cli_env).get("records", {}).get("trade", 0) > 500, 120, "trades", first)
        set_faults(sim, rest_error_rate=0.999, drop_every_s=40)     # gaps that REST will not fill
        wait_for(lambda: read_status(cli_env).get("missing_trades", 0) > 50, 60, "a pending backfill", first)
        set_faults(sim, drop_every_s=0.0)
        stop(first)
        pending = {s: seq["open"] for s, seq in orjson.loads(state_path.read_bytes())["trades"].items() if seq["open"]}
        assert pending, "the stop should have saved the unfinished backfills"
        set_faults(sim, rest_error_rate=0.0)
        second = start_ingest(tmp_path, cli_env, sim, "run2")
        status = wait_for(lambda: (st := read_status(cli_env)).get("pid") == second.pid and st["missing_trades"] == 0
                          and st["counters_run"].get("trade_backfills", 0) >= len(pending) + 3
                          and st["records"].get("trade", 0) > 500 and st, 120, "resumed backfills done", second)
        stop(second)
    assert status["counters_run"].get("trades_lost", 0) == 0
    report = compare_with_truth(*loaded_trades(tmp_path, fresh_broker.bootstrap), load_truth(tmp_path / "truth.jsonl"))
    assert_exact(report, min_expected=300)
    for symbol, ranges in pending.items():      # the ids owed at the stop are in the warehouse now
        native = symbol.replace("-PERP", "").replace("-", "")
        assert report[native]["expected"] > sum(hi - lo + 1 for lo, hi in ranges)


def test_perpflow_status_is_truthful_and_fits_80_columns(tmp_path, cli_env, fresh_broker):
    with SimulatorThread(SimConfig(scenario="calm", seed=24, hours=1, speed=10)) as sim:
        ingest = start_ingest(tmp_path, cli_env, sim, "run")
        wait_for(lambda: read_status(cli_env).get("state") == "running", 120, "a healthy service", ingest)
        healthy = subprocess.run([*PERPFLOW, "status"], env=cli_env, capture_output=True, text=True, timeout=60)
        fresh_broker.process.send_signal(signal.SIGSTOP)     # a frozen broker is not "running"
        try:
            frozen = wait_for(lambda: (st := read_status(cli_env))["state"].startswith("degraded") and st, 60,
                              "the frozen broker to show", ingest)
            shown = subprocess.run([*PERPFLOW, "status"], env=cli_env, capture_output=True, text=True, timeout=60)
        finally:
            fresh_broker.process.send_signal(signal.SIGCONT)
        wait_for(lambda: read_status(cli_env)["state"] == "running", 120, "recovery", ingest)
        stop(ingest)
    assert frozen["kafka"] == "unreachable" and "Kafka unreachable" in frozen["state"]
    assert "ingest binance-usdm" in healthy.stdout and " running" in healthy.stdout
    assert "degraded: Kafka unreachable" in shown.stdout and "kafka unreachable" in shown.stdout
    for out in (healthy.stdout, shown.stdout):
        assert max(map(len, out.splitlines())) <= 80, out
        assert "BTC-USDT-PERP" in out and "REST 429" in out
    stopped = subprocess.run([*PERPFLOW, "status"], env=cli_env, capture_output=True, text=True, timeout=60)
    assert "stopped (exit 0)" in stopped.stdout


def test_a_task_that_keeps_crashing_stops_the_whole_service_with_a_reason(tmp_path, fresh_broker):
    """A crash is a task_error and a restart; past the limit the service stops, failed, never half alive."""
    from ingest.service import IngestConfig, IngestFailed, IngestService
    from ingest.venues.binance_usdm import BinanceUsdm

    with SimulatorThread(SimConfig(scenario="calm", seed=25, hours=1, speed=10)) as sim:
        config = IngestConfig(symbols=SYMBOLS.split(","), ws_url=sim.ws_url, rest_url=sim.http_url,
                              bootstrap=fresh_broker.bootstrap, run_dir=tmp_path, backoff_base_s=0.1,
                              backoff_max_s=0.5, task_crash_limit=3)
        service = IngestService(BinanceUsdm(), config)
        crashes = []

        async def crashing():
            crashes.append(time.monotonic())
            raise RuntimeError(f"crash number {len(crashes)}")

        async def scenario():
            run = asyncio.create_task(service.run())
            while not service.connections or any(c.state != "connected" for c in service.connections.values()):
                assert not run.done()
                await asyncio.sleep(0.2)
            service._supervised("probe", crashing)
            await run

        with pytest.raises(IngestFailed, match="task probe crashed 4 times.*crash number 4"):
            asyncio.run(scenario())
    status = json.loads((tmp_path / "ingest-binance-usdm.json").read_text())
    assert (status["state"], status["exit_code"], status["events"]["task_errors"]) == ("failed", 2, 4)
    assert "task probe crashed 4 times" in status["failure"]
    events = [orjson.loads(v) for v in kafka_values(fresh_broker.bootstrap, "md.feed_events")]
    kinds = [e["kind"] for e in events]
    assert kinds.count("task_error") == 3 and kinds.count("service_failed") == 1
