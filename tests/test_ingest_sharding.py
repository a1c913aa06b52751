"""One venue's ingest split across processes by symbol (`--shard i/n`, `--shards n`).

The end-to-end test runs real processes: the simulator's websocket/REST server, a Tansu broker,
`perpflow ingest --shards 2` (a supervisor and its two shard processes), one shard SIGKILLed for real.
What counts is what Kafka holds afterwards, against the simulator's truth.
"""

from __future__ import annotations

import asyncio
import json
import os
import signal
import subprocess
import sys
import threading
import zlib
from collections import defaultdict

import orjson
import pytest

from conftest import PERPFLOW
from ingest.records import decode
from ingest.continuity import STATE_VERSION
from ingest.sharding import Shard, combine_statuses, inherited_state, other_layout_files, parse_shard, split_symbols
from ingest.simulator import SimConfig, SimulatorThread, load_truth
from pipelines.shard_supervisor import ShardSupervisor
from test_ingest_continuity import assert_exact, compare_with_truth, kafka_values, sim_seconds, stop, wait_for
from test_ingest_service import check_books_against_truth

SYMBOLS = ["BTCUSDT", "ETHUSDT", "SOLUSDT"]


def test_every_symbol_belongs_to_exactly_one_shard_by_a_stable_hash():
    symbols = SYMBOLS + ["BNBUSDT", "XRPUSDT", "DOGEUSDT", "ADAUSDT"]
    for count in range(1, 6):
        owners = {s: [i for i in range(count) if Shard(i, count).owns(s)] for s in symbols}
        assert all(len(found) == 1 for found in owners.values()), (count, owners)
        assert all(owners[s] == [zlib.crc32(s.encode()) % count] for s in symbols)
    # The same answer in every process and on every machine (Python's hash() would differ per run).
    assert split_symbols(SYMBOLS, 2) == [["ETHUSDT", "SOLUSDT"], ["BTCUSDT"]]


@pytest.mark.parametrize("text", ["3/2", "2/2", "0/0", "x", "1/", "-1/2", "1/2/3", ""])
def test_a_shard_that_does_not_exist_is_refused_with_the_expected_form(text):
    with pytest.raises(ValueError, match=r"I/N"):
        parse_shard(text)


def test_more_shards_than_the_symbols_fill_say_how_many_work():
    with pytest.raises(ValueError, match=r"leave shard\(s\) 1 with none .* use at most 2 shards"):
        split_symbols(SYMBOLS, 3)


def test_bad_shard_options_exit_non_zero_and_say_how_to_fix(tmp_path):
    env = {k: v for k, v in os.environ.items() if not k.startswith("PERPFLOW_")}
    env.update(PERPFLOW_HOME=str(tmp_path / "home"), COLUMNS="200")

    def ingest(*args):
        return subprocess.run([*PERPFLOW, "ingest", "--exchange", "binance-usdm", "--symbols", ",".join(SYMBOLS),
                               *args], env=env, capture_output=True, text=True, timeout=120)

    for shard in ("3/2", "0/0", "x"):
        out = ingest("--shard", shard)
        assert out.returncode == 2 and "--shard" in out.stderr and "I/N" in out.stderr, (shard, out.stderr)
    out = ingest("--shards", "3")
    assert out.returncode == 2 and "use at most 2 shards" in out.stderr, out.stderr
    out = ingest("--shard", "0/2", "--shards", "2")
    assert out.returncode == 2 and "give one" in out.stderr, out.stderr
    assert not (tmp_path / "home" / "run").exists() or not list((tmp_path / "home" / "run").glob("ingest-*"))


def test_combined_status_sums_counters_and_keeps_every_shards_symbols():
    def shard_status(shard, symbol, messages, weight):
        return {"exchange": "binance-usdm", "shard": shard, "updated_at": 100.0 + messages, "started_at": 50.0 - messages,
                "messages_per_s": 10.0, "messages": messages, "missing_trades": 1, "gaps": 0, "resyncs": 1,
                "dead_letters": 0, "spill_bytes": 0, "spilling": False, "kafka": "reachable", "sink": {"dropped": {"disk_full": messages}},
                "trades": {symbol: {"last_id": 7, "missing": 1, "gaps": 1, "lost": 0}},
                "records": {"trade": messages}, "events": {"rest_429": 1},
                "counters_run": {"messages": messages}, "counters_total": {"messages": 2 * messages},
                "rest_weight_1m": weight, "backoffs": [], "task_errors": [{"task": "status", "reason": "x", "age_s": 1}]}

    combined = combine_statuses([shard_status("0/2", "ETH-USDT-PERP", 5, 40), shard_status("1/2", "BTC-USDT-PERP", 7, 42)])
    assert (combined["messages"], combined["missing_trades"], combined["resyncs"], combined["records"]) == \
        (12, 2, 2, {"trade": 12})
    assert (combined["counters_run"], combined["counters_total"], combined["events"]) == \
        ({"messages": 12}, {"messages": 24}, {"rest_429": 2})
    assert combined["sink"] == {"dropped": {"disk_full": 12}}
    assert list(combined["trades"]) == ["BTC-USDT-PERP", "ETH-USDT-PERP"]
    assert (combined["updated_at"], combined["started_at"], combined["rest_weight_1m"]) == (105.0, 43.0, 42)
    assert [e["task"] for e in combined["task_errors"]] == ["shard 0/2 status", "shard 1/2 status"]


def read_json(path) -> dict:
    try:
        return json.loads(path.read_text())
    except (FileNotFoundError, ValueError):
        return {}


def kafka_trades(bootstrap: str) -> tuple[dict[str, list[int]], dict[str, set[int]]]:
    """(every trade id in md.trades per native symbol, duplicates kept; ids declared lost in trade_lost events)."""
    ids, lost = defaultdict(list), defaultdict(set)
    for trade in map(decode, kafka_values(bootstrap, "md.trades")):
        ids[trade.symbol_native].append(int(trade.trade_id))
    for event in map(decode, kafka_values(bootstrap, "md.feed_events")):
        if event.kind == "trade_lost":
            detail = orjson.loads(event.detail)
            lost[event.symbol.replace("-PERP", "").replace("-", "")] |= set(range(detail["first_id"],
                                                                                 detail["last_id"] + 1))
    return ids, lost


def test_two_supervised_shards_cover_every_symbol_once_and_a_killed_shard_loses_and_duplicates_nothing(
        tmp_path, cli_env, fresh_broker):
    run_dir = tmp_path / "home" / "run"
    shard_path = {i: run_dir / f"ingest-binance-usdm.shard-{i}-of-2.json" for i in range(2)}
    supervisor_path = run_dir / "supervisor-ingest-binance-usdm.json"
    config = SimConfig(scenario="calm", seed=31, hours=2, speed=20, checkpoint_every_s=10,
                       truth_path=str(tmp_path / "truth.jsonl"))
    with SimulatorThread(config) as sim, open(tmp_path / "supervisor.log", "w") as log:
        supervisor = subprocess.Popen(
            [*PERPFLOW, "ingest", "--exchange", "binance-usdm", "--symbols", ",".join(SYMBOLS), "--ws-url", sim.ws_url,
             "--rest-url", sim.http_url, "--shards", "2"],
            env={**cli_env, "PYTHONUNBUFFERED": "1"}, stdout=log, stderr=subprocess.STDOUT)
        try:
            first = wait_for(lambda: all(read_json(p).get("records", {}).get("trade", 0) > 300
                                         for p in shard_path.values()) and [read_json(p) for p in shard_path.values()],
                             120, "trades in both shards", supervisor)
            victim = first[1]["pid"]
            os.kill(victim, signal.SIGKILL)     # whatever its producer still buffered is gone
            killed_at = sim_seconds(sim)
            restarted = wait_for(lambda: (st := read_json(shard_path[1])).get("pid") not in (None, victim)
                                 and st["counters_run"].get("trade_backfills", 0) >= 1 and st["missing_trades"] == 0
                                 and st["records"].get("trade", 0) > 300 and sim_seconds(sim) > killed_at + 30
                                 and st, 120, "the killed shard restarted and its restart window backfilled",
                                 supervisor)
            supervised = read_json(supervisor_path)
            shown = subprocess.run([*PERPFLOW, "status"], env=cli_env, capture_output=True, text=True, timeout=60)
            untouched = read_json(shard_path[0])
        finally:
            supervisor.send_signal(signal.SIGTERM)
            exit_code = supervisor.wait(timeout=60)
    assert exit_code == 0, (tmp_path / "supervisor.log").read_text()
    final = [read_json(p) for p in shard_path.values()]
    assert [(st["state"], st["exit_code"]) for st in final] == [("stopped", 0), ("stopped", 0)]
    assert read_json(supervisor_path)["state"] == "stopped"

    # Each symbol in exactly one shard, the same one before and after the restart.
    assert (first[0]["symbols"], first[1]["symbols"], restarted["symbols"]) == \
        (["ETHUSDT", "SOLUSDT"], ["BTCUSDT"], ["BTCUSDT"])
    assert [s["restarts"] for s in supervised["shards"]] == [0, 1]
    assert supervised["shards"][1]["last_exit"] == -signal.SIGKILL
    assert untouched["pid"] == first[0]["pid"]              # the other shard ran on untouched
    assert restarted["counters_run"]["trades_backfilled"] > 0    # the kill left a real window to backfill
    assert restarted["counters_total"]["messages"] > restarted["counters_run"]["messages"]   # its own state resumed

    # One view over both shards, within 80 columns.
    assert "ingest binance-usdm  2 shards" in shown.stdout, shown.stdout
    assert "shard 0/2" in shown.stdout and "shard 1/2" in shown.stdout and "restarts 1" in shown.stdout
    assert all(symbol in shown.stdout for symbol in ("BTC-USDT-PERP", "ETH-USDT-PERP", "SOL-USDT-PERP"))
    assert max(map(len, shown.stdout.splitlines())) <= 80, shown.stdout

    # Every trade id the venue published exactly once in Kafka, books exact at every checkpoint.
    truth = load_truth(tmp_path / "truth.jsonl")
    ids, lost = kafka_trades(fresh_broker.bootstrap)
    assert sorted(ids) == sorted(SYMBOLS)
    assert_exact(compare_with_truth(ids, lost, truth), min_expected=300)
    books = defaultdict(list)
    for record in map(decode, kafka_values(fresh_broker.bootstrap, "md.book")):
        books[record.symbol_native].append(record)
    assert {symbol: check_books_against_truth(records, truth) >= 5 for symbol, records in books.items()} == \
        dict.fromkeys(SYMBOLS, True)
    # The restarted shard synced its book again from a snapshot and kept it exact.
    btc = books["BTCUSDT"]
    resynced = max(i for i, r in enumerate(btc) if r.record_type == "book_snapshot" and r.reason == "sync")
    assert resynced > 0 and check_books_against_truth(btc[resynced:], truth) >= 3


def child(code: str) -> list[str]:
    return [sys.executable, "-c", code]


def test_a_shard_failing_over_and_over_stops_the_supervisor_with_a_reason(tmp_path):
    events = []
    supervisor = ShardSupervisor("binance-usdm", [child("import time; time.sleep(600)"), child("raise SystemExit(3)")],
                                 tmp_path / "supervisor.json", backoff_base_s=0.01, max_failures_in_a_row=4,
                                 grace_s=5, on_event=events.append)
    assert supervisor.run() == 1
    status = json.loads((tmp_path / "supervisor.json").read_text())
    assert status["state"] == "stopped" and "shard 1/2 failed 4 times in a row" in status["failure"]
    assert [(s["restarts"], s["last_exit"]) for s in status["shards"]] == [(0, -signal.SIGTERM), (3, 3)]
    assert [e for e in events if "restarting" in e] == [f"shard 1/2 exited 3; restarting in {d}s" for d in
                                                        ("0.0", "0.0", "0.0")]


def test_a_shard_that_finishes_stays_finished_and_one_ignoring_sigterm_is_killed(tmp_path):
    supervisor = ShardSupervisor("binance-usdm", [child("pass")], tmp_path / "supervisor.json", backoff_base_s=0.01)
    assert supervisor.run() == 0
    assert json.loads((tmp_path / "supervisor.json").read_text())["shards"] == [
        {"shard": "0/1", "pid": supervisor.shards[0].process.pid, "restarts": 0, "last_exit": 0, "done": True,
         "restart_in_s": None}]

    ready = tmp_path / "ready"
    stubborn = child(f"import pathlib, signal, time; signal.signal(signal.SIGTERM, signal.SIG_IGN); "
                     f"pathlib.Path({str(ready)!r}).touch(); time.sleep(600)")
    supervisor = ShardSupervisor("binance-usdm", [stubborn], tmp_path / "supervisor.json", grace_s=1)
    threading.Thread(target=lambda: wait_for(ready.exists, 60, "the shard to ignore SIGTERM")
                     and os.kill(os.getpid(), signal.SIGTERM), daemon=True).start()
    assert supervisor.run() == 1       # stopped, but not cleanly: the shard had to be killed
    assert supervisor.shards[0].last_exit == -signal.SIGKILL


def test_a_new_split_inherits_its_symbols_sequences_and_refuses_to_strand_an_old_spill(tmp_path):
    run_dir = tmp_path / "home" / "run"
    run_dir.mkdir(parents=True)
    old = {"version": STATE_VERSION, "exchange": "binance-usdm", "saved_at": 1.0, "totals": {"messages": 9},
           "trades": {"BTC-USDT-PERP": {"last_id": 41, "open": [[30, 35]], "lost": []},
                      "ETH-USDT-PERP": {"last_id": 77, "open": [], "lost": []}}, "catch_up": {}}
    (run_dir / "ingest-binance-usdm.state.json").write_bytes(orjson.dumps(old))
    (run_dir / "ingest-binance-usdm.shard-0-of-2.state.json").write_bytes(orjson.dumps({**old, "trades": {}}))
    # Shard 1/2 of a new split: only BTC is its, and the 2-shard split's own files are not "before it".
    assert inherited_state(run_dir, "binance-usdm", Shard(1, 2), {"BTC-USDT-PERP"}) == {
        "version": STATE_VERSION, "exchange": "binance-usdm",
        "trades": {"BTC-USDT-PERP": {"last_id": 41, "open": [[30, 35]], "lost": []}}}
    assert inherited_state(run_dir, "binance-usdm", None, {"SOL-USDT-PERP"}) == {}
    assert other_layout_files(run_dir, "ingest-binance-usdm", ".state.json", 3) == sorted(
        run_dir.glob("ingest-binance-usdm*.state.json"))

    (run_dir / "spill-binance-usdm.jsonl").write_text('{"spilled": "record"}\n')
    env = {k: v for k, v in os.environ.items() if not k.startswith("PERPFLOW_")}
    env.update(PERPFLOW_HOME=str(tmp_path / "home"), COLUMNS="300")
    out = subprocess.run([*PERPFLOW, "ingest", "--exchange", "binance-usdm", "--symbols", ",".join(SYMBOLS),
                          "--shards", "2"], env=env, capture_output=True, text=True, timeout=120)
    assert out.returncode == 1 and "spill-binance-usdm.jsonl still hold records not yet in Kafka" in out.stdout, \
        out.stdout + out.stderr
    assert not (run_dir / "supervisor-ingest-binance-usdm.json").exists()


def test_switching_from_one_process_to_two_shards_backfills_the_switch_and_loses_nothing(tmp_path, cli_env, fresh_broker):
    run_dir = tmp_path / "home" / "run"
    shard_path = {i: run_dir / f"ingest-binance-usdm.shard-{i}-of-2.json" for i in range(2)}
    config = SimConfig(scenario="calm", seed=32, hours=2, speed=20, truth_path=str(tmp_path / "truth.jsonl"))
    with SimulatorThread(config) as sim, open(tmp_path / "ingest.log", "w") as log:
        command = [*PERPFLOW, "ingest", "--exchange", "binance-usdm", "--symbols", ",".join(SYMBOLS),
                   "--ws-url", sim.ws_url, "--rest-url", sim.http_url]
        env = {**cli_env, "PYTHONUNBUFFERED": "1"}
        single = subprocess.Popen(command, env=env, stdout=log, stderr=subprocess.STDOUT)
        wait_for(lambda: read_json(run_dir / "ingest-binance-usdm.json").get("records", {}).get("trade", 0) > 500,
                 120, "trades in the single process", single)
        stop(single)
        stopped_at = sim_seconds(sim)
        wait_for(lambda: sim_seconds(sim) > stopped_at + 30, 60, "trading while nothing ingests")
        supervisor = subprocess.Popen([*command, "--shards", "2"], env=env, stdout=log, stderr=subprocess.STDOUT)
        try:
            shards = wait_for(lambda: all((st := read_json(p)).get("records", {}).get("trade", 0) > 300
                                          and st["counters_run"].get("trade_backfills", 0) >= 1
                                          and st["missing_trades"] == 0 for p in shard_path.values())
                              and [read_json(p) for p in shard_path.values()], 120,
                              "both shards to backfill the switch", supervisor)
        finally:
            supervisor.send_signal(signal.SIGINT)       # Ctrl-C: every shard stops cleanly
            assert supervisor.wait(timeout=60) == 0
    assert [read_json(p)["exit_code"] for p in shard_path.values()] == [0, 0]
    assert all(st["counters_run"]["trades_backfilled"] > 0 for st in shards)
    ids, lost = kafka_trades(fresh_broker.bootstrap)
    assert sorted(ids) == sorted(SYMBOLS)
    assert_exact(compare_with_truth(ids, lost, load_truth(tmp_path / "truth.jsonl")), min_expected=300)


def test_a_shard_paces_its_polls_within_its_share_of_the_venues_rest_budget(tmp_path, broker):
    from ingest.service import IngestConfig, IngestService
    from ingest.venues.binance_usdm import BinanceUsdm

    def service(shard):
        config = IngestConfig(symbols=["BTCUSDT"], ws_url="ws://unused", rest_url="http://unused",
                              bootstrap=broker.bootstrap, run_dir=tmp_path / str(shard), shard=shard)
        return IngestService(BinanceUsdm(), config)

    async def spend(svc, weight) -> int:
        """Polls deferred when ``weight`` is spent at once and one more unit is asked for."""
        await svc._spend_poll_weight(weight)
        extra = asyncio.create_task(svc._spend_poll_weight(1))
        await asyncio.sleep(0)          # let it run up to its first wait
        extra.cancel()
        return svc.events["polls_deferred"]

    whole, half = service(None), service(Shard(1, 2))
    try:
        assert (whole.rest_weight_limit, half.rest_weight_limit) == (2400, 1200)
        assert (half.status_path.name, half.state_path.name, half.sink.spill_path.name) == (
            "ingest-binance-usdm.shard-1-of-2.json", "ingest-binance-usdm.shard-1-of-2.state.json",
            "spill-binance-usdm.shard-1-of-2.jsonl")
        # 80% of the budget is the polls': 960 of a half's 1200 leaves no room, 960 of 2400 plenty.
        assert asyncio.run(spend(half, 960)) == 1
        assert asyncio.run(spend(whole, 960)) == 0
    finally:
        whole.sink.close()
        half.sink.close()
