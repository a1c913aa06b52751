"""The fault matrix: every fault perpflow ingest must survive, each against the simulator's truth.

Real processes only: the simulator (tests/fault_harness.py), `perpflow ingest`, a Tansu broker per
test, `perpflow load` into a DuckDB file. After each run every aggTrade id the venue published from
perpflow's first trade to the scenario's end must be in raw.trades or inside a range a feed event
reported; none may be loaded twice or invented; the books rebuilt from raw.book_* equal the true
books at every checkpoint their sequence chain reaches. `python -m bench --only faults` runs this
file and prints the per-fault figures.
"""

from __future__ import annotations

import signal
from contextlib import ExitStack, contextmanager

import pytest

from conftest import free_bytes, tiny_disk_at
from fault_harness import FaultCase, assert_nothing_lost_silently, load_truth_file, wait_for
from pipelines.broker import EmbeddedBroker, free_port
from ingest.kafka import ensure_topics

pytestmark = [pytest.mark.faults, pytest.mark.timeout(600)]

SYMBOLS = ["BTCUSDT", "ETHUSDT"]
# 20 simulated seconds per wall second: ~8 trades per wall second per symbol, an hour in 3 minutes.
FAST = ["--speed", "20", "--checkpoint-every", "20"]


@pytest.fixture
def cases():
    """Build cases through this; each is torn down (every process killed) however the test ends."""
    made: list[FaultCase] = []

    def make(*args, **kwargs) -> FaultCase:
        made.append(FaultCase(*args, **kwargs))
        return made[-1]

    yield make
    for case in made:
        case.close()


@contextmanager
def frozen(broker):
    """The broker process stopped dead: its sockets stay open and answer nothing (a network partition)."""
    broker.process.send_signal(signal.SIGSTOP)
    try:
        yield
    finally:
        broker.process.send_signal(signal.SIGCONT)


def spilling(case: FaultCase) -> bool:
    st = case.ingest.status()
    return bool(st.get("spilling")) and st.get("spill_bytes", 0) > 0


def drained(case: FaultCase) -> bool:
    st = case.ingest.status()
    return bool(st) and not st.get("spilling") and st.get("spill_bytes") == 0


def test_ingest_sigkill_and_restart(cases, tmp_path, fresh_broker):
    case = cases("ingest SIGKILL + restart", tmp_path, fresh_broker.bootstrap,
                 [*FAST, "--hours", "0.25", "--seed", "21"], SYMBOLS).start()
    case.ingest.wait_trades(more_than=200)
    case.ingest.kill()
    case.sim.wait_simulated(120)       # two simulated minutes of trades published while nobody listens
    case.ingest.start()
    acc = case.finish()
    assert acc.ingest_exit_codes == [-signal.SIGKILL, 0]
    assert_nothing_lost_silently(acc)
    assert acc.books_compared >= 10


def test_broker_frozen_two_minutes(cases, tmp_path, fresh_broker):
    case = cases("broker frozen 120 s", tmp_path, fresh_broker.bootstrap,
                 ["--speed", "10", "--checkpoint-every", "20", "--hours", "0.38", "--seed", "22"], SYMBOLS).start()
    case.ingest.wait_trades(more_than=100)
    with frozen(fresh_broker):
        wait_for(lambda: spilling(case), "ingest to spill while Kafka is frozen", 60)
        case.ingest.stay_up(120)      # the fault's length, by definition
    wait_for(lambda: drained(case), "the spill to drain once Kafka answers", 120)
    acc = case.finish()
    assert_nothing_lost_silently(acc)
    assert acc.books_compared >= 10


def test_kafka_down_at_start(cases, tmp_path):
    broker = EmbeddedBroker(port=free_port(), log_path=tmp_path / "broker.log")
    case = cases("Kafka down at start", tmp_path, broker.bootstrap, [*FAST, "--hours", "0.2", "--seed", "23"],
                 SYMBOLS)
    case.cleanups.append(broker.stop)
    case.start()
    wait_for(lambda: case.ingest.spill_path.exists() and case.ingest.spill_path.stat().st_size > 0,
             "ingest to spill from its first record", 60)
    case.sim.wait_simulated(60)
    assert case.ingest.running, case.ingest.log()
    broker.start()
    ensure_topics(broker.bootstrap, partitions=3)      # what `perpflow broker start` does
    acc = case.finish()
    assert_nothing_lost_silently(acc)
    assert acc.books_compared >= 5


def test_disk_full_during_a_spill(cases, tmp_path, fresh_broker):
    case = cases("disk full during a spill", tmp_path, fresh_broker.bootstrap,
                 [*FAST, "--hours", "0.25", "--seed", "24"], SYMBOLS)
    run_dir = case.home / "run"
    mounted = ExitStack()
    mounted.enter_context(tiny_disk_at(run_dir, "1m"))
    case.cleanups.append(mounted.close)
    case.start()
    case.ingest.wait_trades(more_than=100)
    with frozen(fresh_broker):
        wait_for(lambda: free_bytes(run_dir) < 64 * 1024, "the spill to fill the disk", 120)
        case.sim.wait_simulated(60)        # a simulated minute with nowhere to put records
        assert case.ingest.running, case.ingest.log()
    wait_for(lambda: drained(case), "the spill to drain once Kafka answers and space returns", 120)
    case.ingest.wait_trades(more_than=case.ingest.trades_seen())     # still ingesting: no silent death
    acc = case.finish()
    assert acc.feed_events.get("spill_full", 0) >= 1 and acc.feed_events.get("spill_dropped", 0) >= 1, acc
    # Records dropped while the disk was full cannot come back; each must be counted in an event.
    assert_nothing_lost_silently(acc, recoverable=False)



def test_torn_spill_line(cases, tmp_path, fresh_broker):
    case = cases("torn spill line", tmp_path, fresh_broker.bootstrap, [*FAST, "--hours", "0.25", "--seed", "25"],
                 SYMBOLS).start()
    case.ingest.wait_trades(more_than=100)
    with frozen(fresh_broker):
        wait_for(lambda: case.ingest.status().get("spill_bytes", 0) > 100_000, "100 kB of spill", 90)
        assert case.ingest.stop() == 0, case.ingest.log()     # Kafka still frozen: the spill stays on disk
    spill = case.ingest.spill_path
    last_line = spill.read_bytes().splitlines(keepends=True)[-1]
    torn = last_line[: len(last_line) // 2]                   # a kill in the middle of a write
    with open(spill, "ab") as fh:
        fh.write(torn)
    case.ingest.start()
    wait_for(lambda: drained(case), "the spill to drain past the torn line", 120)
    acc = case.finish()
    assert_nothing_lost_silently(acc)
    assert not spill.exists() or spill.stat().st_size == 0
    kept = [p for p in case.ingest.run_dir.iterdir() if p != spill and torn in p.read_bytes()]
    assert kept, "the torn line was not moved aside"


def test_rest_429_storm(cases, tmp_path, fresh_broker):
    case = cases("429 storm (half of REST fails)", tmp_path, fresh_broker.bootstrap,
                 [*FAST, "--hours", "0.25", "--seed", "26", "--rest-error-rate", "0.5", "--drop-every", "120"],
                 SYMBOLS).start()
    acc = case.finish(catch_up_timeout=240)
    faults = load_truth_file(case.sim.truth_path)["fault"]
    assert sum(1 for f in faults if f["fault"] == "rest_error" and f["status"] == 429) >= 5
    assert acc.feed_events.get("trade_gap", 0) >= 3
    assert_nothing_lost_silently(acc)


def test_100_connection_drops(cases, tmp_path, fresh_broker):
    # A drop every 25 simulated seconds (1.25 wall seconds), the last one 15 s before the end.
    case = cases("100 connection drops", tmp_path, fresh_broker.bootstrap,
                 [*FAST, "--hours", str(2515 / 3600), "--seed", "27", "--drop-every", "25"], ["BTCUSDT"]).start()
    acc = case.finish(catch_up_timeout=180)
    drops = [f for f in load_truth_file(case.sim.truth_path)["fault"] if f["fault"] == "drop"]
    assert len(drops) >= 100
    assert acc.feed_events.get("disconnect", 0) >= 30 and acc.feed_events.get("trade_gap", 0) >= 30, acc
    assert_nothing_lost_silently(acc)
    assert acc.books_compared >= 10


def test_hostile_frames(cases, tmp_path, fresh_broker):
    case = cases("hostile + malformed frames", tmp_path, fresh_broker.bootstrap,
                 [*FAST, "--hours", "0.2", "--seed", "28", "--hostile-every", "20", "--malformed-every", "20"],
                 SYMBOLS).start()
    acc = case.finish()
    faults = load_truth_file(case.sim.truth_path)["fault"]
    # Frames sent once both connections were surely up (5 s after the first trade perpflow got).
    bad = [f for f in faults if (f["fault"] == "malformed" or "hostile" in f["fault"])
           and f["ts"] >= acc.first_trade_ms + 5000]
    assert sum(1 for f in bad if "hostile" in f["fault"]) >= 5
    assert acc.dead_letters >= len(bad), (acc.dead_letters, len(bad))
    assert acc.feed_events.get("disconnect", 0) == 0, "a hostile frame closed the connection"
    assert_nothing_lost_silently(acc)
    assert acc.books_compared >= 5
