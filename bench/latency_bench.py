"""Latency per record: venue event time -> ingest -> Kafka -> DuckDB row -> the minute's row in the replica.

Real processes, as in production: the simulator (its own process, paced in wall time), `perpflow
ingest --exchange binance-usdm` (its own process), an embedded broker, and in this process a tail
consumer, the exactly-once loader run pass after pass, and a minute refresh of `analytics.ohlcv_1m`
followed by publishing the read replica.

Clock: event times are the simulator's market time. The simulator records when its market clock
started (``Simulator.clock``) and sends each 100 ms step once the step's end is due, so an event at
market time t was due at wall time ``clock.wall_ns(t)``; every latency is a wall-clock difference from
there, on one machine, so there is no clock skew. At speed 5 a market minute lasts 12 wall seconds.

Stages, per record:
  * ingest: ``ts_recv``, when the service read the frame;
  * Kafka: when a consumer tailing the topics saw the record (the producer's timestamp, taken at
    ``send``, is in the JSON as ``kafka_create``);
  * DuckDB: when the loader transaction holding it committed (the loader's progress hook);
  * minute row (trades only): when the trade's minute of `analytics.ohlcv_1m` was first readable in
    `warehouse_ro.duckdb`. A minute is computed once its end has passed at the start of a loader pass,
    so this includes waiting for the minute to close; ``minute_close``: per minute row (exchange,
    symbol, minute), from the minute's end to the row being readable.

perpflow itself computes analytics with Dagster's daily schedule (00:15 UTC) and loads when the lag
sensor fires (every 30 s at most); the loop here is the fastest the same code can go: loader passes
back to back, the minute's bars rewritten and the replica published after every pass that closed a
minute.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import json
import os
import signal
import subprocess
import sys
import threading
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ingest import records
from ingest.kafka import ensure_topics, new_consumer, partitions_of
from ingest.simulator import SimConfig, SimulatorThread
from ingest.simulator.server import MarketClock
from pipelines.broker import EmbeddedBroker, free_port, port_in_use
from warehouse.analytics.common import rewrite
from warehouse.analytics.ohlcv import OHLCV_1M_SELECT
from warehouse.loader import load_once
from warehouse.store import Warehouse

SYMBOLS = ("BTCUSDT", "ETHUSDT", "SOLUSDT")
WARMUP_S = 10          # records due in the first seconds (connects, REST snapshots, book sync) are left out
MINUTE_MS = 60_000
STAGES = ("ingest", "kafka", "duckdb", "minute_row")
# Records whose ts_exchange is an event time (instruments, long/short ratios and taker volumes carry
# the start of a period or of a listing instead).
TIMED_RECORDS = (records.Trade, records.BookDelta, records.BookSnapshot, records.Funding, records.OpenInterest,
                 records.Liquidation)


@dataclass(frozen=True)
class Case:
    name: str
    scenario: str
    speed: float
    seconds: float                   # wall seconds of ingest
    trigger_offset_s: float | None   # cascade: the crash starts this long after the start

    def sim_config(self) -> SimConfig:
        hours = 1.25 if self.scenario == "cascade" else max(0.5, self.seconds * self.speed / 3600 + 0.1)
        return SimConfig(scenario=self.scenario, seed=7, hours=hours, speed=self.speed, venues=("binance-usdm",),
                         trigger_offset_s=self.trigger_offset_s)


def cases(full: bool) -> list[Case]:
    """Calm at real time, then the cascade from its trigger at 5x: liquidations, trade bursts and
    five times the frames per wall second."""
    scale = 4 if full else 1
    return [Case("calm", "calm", 1.0, 120 * scale, None),
            Case("burst", "cascade", 5.0, 60 * scale, 30.0)]


def run(tmp: Path, full: bool, console) -> list[dict]:
    rows = []
    for case in cases(full):
        console.print(f"latency, {case.name}: {case.scenario} scenario at speed {case.speed:g}, {case.seconds:g} s "
                      "of ingest (simulator, ingest, broker as processes; loader + minute refresh here)")
        rows.append(_run_case(tmp / case.name, case))
    return rows


# --- the simulator process ----------------------------------------------------------------------

def serve(config: SimConfig, port: int, clock_path: Path) -> None:
    """Run the simulator until SIGTERM; write its market clock to ``clock_path`` once it runs and,
    at the end, the most it fell behind that clock (its model could not keep up), in wall
    milliseconds, beside it."""
    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    max_lag_ms = 0
    with SimulatorThread(config, port=port) as sim:
        while sim.simulator.clock is None:
            time.sleep(0.01)
        clock = sim.simulator.clock
        tmp = clock_path.with_suffix(".tmp")
        tmp.write_text(json.dumps({"epoch_ns": clock.epoch_ns, "market_ms": clock.market_ms, "speed": clock.speed}))
        os.replace(tmp, clock_path)
        while not stop.wait(0.1):
            max_lag_ms = max(max_lag_ms, sim.simulator.lag_ms)
    clock_path.with_suffix(".lag").write_text(str(round(max_lag_ms / config.speed)))   # wall ms


def _start_simulator(case: Case, port: int, clock_path: Path) -> tuple[subprocess.Popen, MarketClock]:
    process = subprocess.Popen([sys.executable, "-m", "bench.latency_bench", json.dumps(
        {"case": dataclasses.asdict(case), "port": port, "clock": str(clock_path)})],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 120
    while not (clock_path.exists() and port_in_use(port)):
        if process.poll() is not None or time.monotonic() > deadline:
            process.kill()
            raise RuntimeError(f"the simulator did not start (exit {process.poll()})")
        time.sleep(0.05)
    return process, MarketClock(**json.loads(clock_path.read_text()))


# --- what this process watches ------------------------------------------------------------------

class KafkaTail(threading.Thread):
    """Wall time at which a consumer first saw each record: (topic, partition, offset) -> ns."""

    def __init__(self, bootstrap: str):
        super().__init__(name="latency-kafka-tail", daemon=True)
        self.consumer = new_consumer(bootstrap, client_id="perpflow-latency-tail")
        self.consumer.assign(partitions_of(self.consumer, records.TOPICS))
        self.consumer.seek_to_beginning()
        self.seen: dict[tuple[str, int, int], tuple[int, int]] = {}   # -> (seen ns, producer timestamp ms)
        self.stop = threading.Event()

    def run(self) -> None:
        """Until stopped and a poll comes back empty (so everything loaded has been seen)."""
        while True:
            polled = self.consumer.poll(timeout_ms=100, max_records=10_000)
            if not polled and self.stop.is_set():
                break
            for tp, messages in polled.items():
                now = time.time_ns()
                for m in messages:
                    self.seen[(tp.topic, tp.partition, m.offset)] = (now, m.timestamp)
        self.consumer.close()


class LoaderLoop(threading.Thread):
    """Loader passes back to back; after a pass that closed a market minute, rewrite the closed
    minutes of ohlcv_1m, publish the replica and note when each minute's rows became readable."""

    def __init__(self, warehouse: Warehouse, bootstrap: str, clock: MarketClock):
        super().__init__(name="latency-loader", daemon=True)
        self.warehouse, self.bootstrap, self.clock = warehouse, bootstrap, clock
        self.commits: list[tuple[int, dict]] = []            # (ns, {(topic, partition): next offset})
        self.minute_seen: dict[tuple[str, str, int], int] = {}  # (exchange, symbol, minute ms) -> ns
        self.closed_ms = clock.market_ms - clock.market_ms % MINUTE_MS
        self.stop = threading.Event()
        self.error: BaseException | None = None
        self.passes = 0

    def market_now_ms(self) -> float:
        return self.clock.market_ms + (time.time_ns() - self.clock.epoch_ns) * self.clock.speed / 1e6

    def run(self) -> None:
        try:
            while not self.stop.is_set():
                self.load_pass()
        except BaseException as exc:   # noqa: BLE001 - re-raised by the caller
            self.error = exc

    def load_pass(self) -> None:
        closed = int(self.market_now_ms()) // MINUTE_MS * MINUTE_MS
        load_once(self.warehouse, self.bootstrap,
                  progress=lambda report: self.commits.append((time.time_ns(), dict(report.offsets))))
        self.passes += 1
        if closed > self.closed_ms:
            self.closed_ms = closed
            self.refresh_minutes()

    def refresh_minutes(self) -> None:
        start = dt.datetime.fromtimestamp(self.clock.market_ms // 86_400_000 * 86_400, dt.UTC).replace(tzinfo=None)
        end = dt.datetime.fromtimestamp(self.closed_ms / 1000, dt.UTC).replace(tzinfo=None)
        with self.warehouse.writer() as con:
            rewrite(con, "analytics.ohlcv_1m", "minute", start, end, OHLCV_1M_SELECT)
        self.warehouse.publish_replica()
        with self.warehouse.reader() as con:
            rows = con.execute("SELECT exchange, symbol, epoch_ms(minute) FROM analytics.ohlcv_1m").fetchall()
        now = time.time_ns()
        for key in rows:
            self.minute_seen.setdefault(tuple(key), now)


# --- one case ---------------------------------------------------------------------------------

def _run_case(tmp: Path, case: Case) -> dict:
    tmp.mkdir(parents=True)
    with EmbeddedBroker(port=free_port()) as broker:
        ensure_topics(broker.bootstrap, 3)
        port = free_port()
        simulator, clock = _start_simulator(case, port, tmp / "clock.json")
        warehouse = Warehouse(tmp / "warehouse.duckdb")
        with warehouse.writer():
            pass   # schema first, so the first pass measures loading
        tail = KafkaTail(broker.bootstrap)
        loader = LoaderLoop(warehouse, broker.bootstrap, clock)
        try:
            tail.start()
            loader.start()
            env = {**os.environ, "PERPFLOW_KAFKA_BOOTSTRAP": broker.bootstrap, "PERPFLOW_HOME": str(tmp / "home")}
            ingest = subprocess.run(
                [sys.executable, "-m", "pipelines.cli", "ingest", "--exchange", "binance-usdm",
                 "--symbols", ",".join(SYMBOLS), "--ws-url", f"ws://127.0.0.1:{port}",
                 "--rest-url", f"http://127.0.0.1:{port}", "--duration", str(case.seconds)],
                env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, timeout=case.seconds + 120)
            if ingest.returncode != 0:
                raise RuntimeError(f"perpflow ingest exited {ingest.returncode}: {ingest.stderr.decode()[-2000:]}")
            # Everything ingest sent is in Kafka now: one more minute closes, then stop after a pass.
            deadline = clock.wall_ns(int(loader.market_now_ms()) // MINUTE_MS * MINUTE_MS + MINUTE_MS)
            while time.time_ns() < deadline and loader.is_alive():
                time.sleep(0.2)
            passes = loader.passes
            while loader.passes < passes + 2 and loader.is_alive():
                time.sleep(0.05)
        finally:
            loader.stop.set()
            loader.join()
            tail.stop.set()
            tail.join()
            simulator.terminate()
            simulator.wait(30)
        if loader.error is not None:
            raise loader.error
    lag_path = (tmp / "clock.json").with_suffix(".lag")
    simulator_lag_ms = int(lag_path.read_text()) if lag_path.exists() else None
    with warehouse.writer() as con:
        latencies = _latencies(con, clock, tail, loader)
    return {"case": case.name, "scenario": case.scenario, "speed": case.speed, "wall_seconds": case.seconds,
            "simulator_max_lag_ms": simulator_lag_ms, "loader_passes": loader.passes,
            "minutes_published": len({m for _, _, m in loader.minute_seen}), **latencies}


def _commit_times(commits: list[tuple[int, dict]]) -> dict[tuple[str, int], tuple[np.ndarray, np.ndarray]]:
    """Per partition: commit times and the next offset each commit made durable (both ascending)."""
    by_tp: dict[tuple[str, int], list[tuple[int, int]]] = {}
    for ns, offsets in commits:
        for tp, next_offset in offsets.items():
            points = by_tp.setdefault(tp, [])
            if not points or next_offset > points[-1][1]:
                points.append((ns, next_offset))
    return {tp: (np.array([p[0] for p in points]), np.array([p[1] for p in points])) for tp, points in by_tp.items()}


def _latencies(con, clock: MarketClock, tail: KafkaTail, loader: LoaderLoop) -> dict:
    """Percentiles of each stage over the records due after the warm-up, in milliseconds."""
    commits = _commit_times(loader.commits)
    stage_ms: dict[str, list[np.ndarray]] = {stage: [] for stage in (*STAGES, "kafka_create", "minute_close")}
    by_table = {}
    since = clock.market_ms + WARMUP_S * 1000 * clock.speed
    for cls in TIMED_RECORDS:
        rows = con.execute(f"""SELECT kafka_partition, kafka_offset, epoch_ms(ts_exchange), epoch_ns(ts_recv),
                                      exchange, symbol FROM raw.{cls.table}
                               WHERE kafka_offset IS NOT NULL AND epoch_ms(ts_exchange) >= ?""", [since]).fetchall()
        if not rows:
            continue
        partition = np.array([r[0] for r in rows])
        offset = np.array([r[1] for r in rows])
        event_ns = clock.wall_ns(np.array([r[2] for r in rows], dtype=np.float64))
        stage_ms["ingest"].append((np.array([r[3] for r in rows], dtype=np.float64) - event_ns) / 1e6)
        seen = [tail.seen.get((cls.topic, p, o)) for p, o in zip(partition.tolist(), offset.tolist())]
        if any(s is None for s in seen):
            raise RuntimeError(f"the Kafka tail missed {sum(s is None for s in seen)} of {cls.topic}'s loaded records")
        stage_ms["kafka"].append((np.array([s[0] for s in seen], dtype=np.float64) - event_ns) / 1e6)
        stage_ms["kafka_create"].append((np.array([s[1] for s in seen], dtype=np.float64) * 1e6 - event_ns) / 1e6)
        committed = np.empty(len(rows))
        for p in np.unique(partition):
            times, next_offsets = commits[(cls.topic, int(p))]
            mine = partition == p
            committed[mine] = times[np.searchsorted(next_offsets, offset[mine], side="right")]
        stage_ms["duckdb"].append((committed - event_ns) / 1e6)
        by_table[cls.table] = {"records": len(rows), **{stage: _percentiles(stage_ms[stage][-1])
                                                        for stage in ("ingest", "kafka", "duckdb")}}
        if cls is records.Trade:
            minute = np.array([r[2] for r in rows]) // MINUTE_MS * MINUTE_MS
            keys = [(r[4], r[5], int(m)) for r, m in zip(rows, minute)]
            visible = np.array([loader.minute_seen.get(k, np.nan) for k in keys], dtype=np.float64)
            published = ~np.isnan(visible)     # the last, still open minute is never computed
            stage_ms["minute_row"].append((visible[published] - event_ns[published]) / 1e6)
            traded = set(keys)
            rows_seen = {key: seen for key, seen in loader.minute_seen.items() if key in traded}
            minute_end = clock.wall_ns(np.array([m for _, _, m in rows_seen], dtype=np.float64) + MINUTE_MS)
            stage_ms["minute_close"].append((np.array(list(rows_seen.values()), dtype=np.float64) - minute_end) / 1e6)
    return {"by_table": by_table, **{stage: _percentiles(np.concatenate(parts) if parts else np.array([]))
                                     for stage, parts in stage_ms.items()}}


def _percentiles(values: np.ndarray) -> dict:
    if not values.size:
        return {"n": 0}
    return {"n": int(values.size), "p50_ms": float(np.percentile(values, 50)),
            "p99_ms": float(np.percentile(values, 99)), "max_ms": float(values.max())}


if __name__ == "__main__":    # the simulator process of a case
    spec = json.loads(sys.argv[1])
    serve(Case(**spec["case"]).sim_config(), spec["port"], Path(spec["clock"]))
