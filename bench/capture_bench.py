"""All-market capture: 300 symbols on each of Binance USD-M, OKX and Bybit at once, a calm period
then a 5x burst, one ingest process per venue and the loader, on this machine.

The simulator models three markets (BTC, ETH, SOL) and generates about 100 steps a second per
venue, far too slow for 300 symbols live. So each venue process pre-generates its three markets'
frames in the venue's wire format (``ingest_bench.venue_frames``, calm scenario) and makes 100
copies under other names (BTC042USDT, BTC042-USDT-SWAP, ...): 300 markets, each with its own
consistent sequence numbers and books. The required rate is the simulator's frames per market
second times 100 (one book update per 100 ms step per market on every venue, the simulator's
trade and mark-price cadence of majors).

Each venue process then feeds the frames to perpflow's ingest path, the service's FeedHandler
(mapper, book sync, periodic snapshots) and SpillingSink (Kafka producer, spill), paced by a
schedule: the required rate, 5x that for the burst, the required rate again until the backlog has
drained, then flat out for a fixed wall time. Websocket reading is not in it (the ingest
bench's end-to-end row puts a number on that). Backlog = frames due by the schedule minus frames
handled. Capacity = frames/s flat out while the other venues and the loader run; headroom =
capacity / required rate. On a shared machine capacity is what the process got; frames per CPU
second (the process's own CPU time, its Kafka sender thread included) say what a core of its own
would do, and cores needed = required rate / that. This process runs the loader pass after pass meanwhile.
"""

from __future__ import annotations

import json
import subprocess
import sys
import threading
import time
from dataclasses import asdict, dataclass
from pathlib import Path

from bench.ingest_bench import venue_frames
from ingest.feed import FeedHandler
from ingest.kafka import ensure_topics
from ingest.service import DEFAULT_PACK_MS
from ingest.spill import SpillingSink
from ingest.venues import venue as venue_for
from pipelines.broker import EmbeddedBroker, free_port
from warehouse.loader import load_once
from warehouse.store import Warehouse

VENUES = ("binance-usdm", "okx-swap", "bybit-linear")
COPIES = 100                     # x the simulator's 3 markets = 300 symbols per venue
BASES = (b"BTC", b"ETH", b"SOL")
SAMPLE_S = 0.25


@dataclass(frozen=True)
class Schedule:
    calm_s: float
    burst_s: float
    factor: float
    drain_max_s: float
    flat_s: float                # wall seconds flat out at the end
    flat_headroom: float = 3.0   # frames kept for the flat-out phase: this many times the required rate

    def due(self, rate: float, t: float) -> float:
        """Frames due ``t`` seconds after the start at ``rate`` frames/s (``factor`` x during the burst)."""
        burst = min(max(t - self.calm_s, 0.0), self.burst_s)
        return rate * (t + (self.factor - 1) * burst)

    @property
    def market_seconds(self) -> float:
        """Seconds of market the run consumes at most (frames needed / the required rate)."""
        return self.due(1.0, self.calm_s + self.burst_s + self.drain_max_s) + self.flat_s * self.flat_headroom


def schedule(full: bool) -> Schedule:
    return Schedule(60, 30, 5, 120, 20) if full else Schedule(15, 10, 5, 30, 10)


def _renamed(body: str | bytes, copy: int) -> bytes:
    """One market's frame as market ``copy`` of the same asset (btcusdt@depth -> btc042usdt@depth)."""
    frame = body.encode() if isinstance(body, str) else body
    tag = b"%03d" % copy
    for base in BASES:
        frame = frame.replace(base, base + tag).replace(base.lower() + b"usdt@", base.lower() + tag + b"usdt@")
    return frame


def all_market_frames(exchange: str, market_seconds: float) -> tuple[list[tuple[str, str, bytes]], float]:
    """``market_seconds`` of the calm market on 300 symbols, in time order, and the required frames/s."""
    probe, probe_s = venue_frames(exchange, 3000, "calm")
    base, base_s = venue_frames(exchange, int(len(probe) / probe_s * market_seconds * 1.02) + 100, "calm")
    frames = [(kind, _renamed(source, copy).decode(), _renamed(body, copy)) for kind, source, body in base
              for copy in range(COPIES)]
    return frames, len(base) / base_s * COPIES


# --- the venue process --------------------------------------------------------------------------

def venue_process(exchange: str, bootstrap: str, plan: Schedule, spill: Path) -> dict:
    """Generate the frames, say ``ready``, wait for ``go`` on stdin, then feed the schedule."""
    frames, rate = all_market_frames(exchange, plan.market_seconds)
    sink = SpillingSink(bootstrap, spill, pack_ms=DEFAULT_PACK_MS)     # as the service sends
    handler = FeedHandler(venue_for(exchange), sink.send)

    def handle(item) -> None:
        kind, source, body = item
        if kind == "ws":
            handler.on_ws(body, time.time_ns(), source)
        else:      # Binance's REST snapshots, where its book sync asked for them
            handler.on_rest(source, body, time.time_ns())

    print("ready", flush=True)
    sys.stdin.readline()
    samples: list[tuple[float, int, int]] = []      # (s since start, frames due, frames handled)
    paced_end = plan.calm_s + plan.burst_s + plan.drain_max_s
    burst_end = plan.calm_s + plan.burst_s
    done = 0
    drained_at = None
    started = time.monotonic()
    next_sample = 0.0
    while True:
        t = time.monotonic() - started
        due = min(len(frames), int(plan.due(rate, t)))
        if t >= next_sample:
            samples.append((round(t, 3), due, done))
            next_sample += SAMPLE_S
            if t > burst_end and due - done <= rate * SAMPLE_S and drained_at is None:
                drained_at = t
        if t >= paced_end or drained_at is not None and t > drained_at + 1:
            break
        sink.flush_due()        # the service's packs task
        if done >= due:
            time.sleep(0.002)
            continue
        for item in frames[done:min(due, done + 200)]:
            handle(item)
        done = min(due, done + 200)
    flat_started = time.monotonic()
    flat_cpu = time.process_time()     # this process's CPU, its Kafka sender thread included
    flat_end = flat_started + plan.flat_s
    flat = 0
    while done + flat < len(frames) and time.monotonic() < flat_end:
        for item in frames[done + flat:done + flat + 200]:
            handle(item)
        flat = min(len(frames) - done, flat + 200)
        sink.flush_due()
    sink.flush_packs()
    sink.producer.flush()
    flat_s = time.monotonic() - flat_started
    flat_cpu = time.process_time() - flat_cpu
    sink.close()
    backlog = [(t, due - handled) for t, due, handled in samples]
    in_burst = [b for t, b in backlog if plan.calm_s <= t <= burst_end]
    calm = [b for t, b in backlog if t < plan.calm_s]
    stats = handler.stats
    return {"exchange": exchange, "symbols": 3 * COPIES, "required_frames_per_s": rate,
            "frames": done + flat, "records": sum(stats.records.values()),
            "skipped": sum(stats.skipped.values()), "dead_letters": sum(stats.dead_letters.values()),
            "gaps": handler.book_sync.counts["gaps"],
            "max_backlog_calm": max(calm, default=0), "max_backlog_burst": max(in_burst, default=0),
            "backlog_at_burst_end": next((b for t, b in backlog if t >= burst_end), None),
            "drain_s": None if drained_at is None else drained_at - burst_end,
            "capacity_frames_per_s": flat / flat_s, "headroom": flat / flat_s / rate,
            "frames_per_cpu_s": flat / flat_cpu, "cores_needed": rate / (flat / flat_cpu),
            "backlog_samples": backlog}


# --- the run ------------------------------------------------------------------------------------

class LoaderLoop(threading.Thread):
    """Loader passes back to back until stopped and a pass found nothing new."""

    def __init__(self, warehouse: Warehouse, bootstrap: str):
        super().__init__(name="capture-loader", daemon=True)
        self.warehouse, self.bootstrap = warehouse, bootstrap
        self.rows = 0
        self.busy_s = 0.0
        self.stop = threading.Event()
        self.error: BaseException | None = None

    def run(self) -> None:
        try:
            while True:
                report = load_once(self.warehouse, self.bootstrap)
                self.rows += report.total
                self.busy_s += report.seconds
                if self.stop.is_set() and not report.total:
                    return
        except BaseException as exc:   # noqa: BLE001 - re-raised by the caller
            self.error = exc


def run(tmp: Path, full: bool, console) -> dict:
    plan = schedule(full)
    console.print(f"all-market capture: {3 * COPIES} symbols x {len(VENUES)} venues, {plan.calm_s:g} s calm, "
                  f"{plan.burst_s:g} s at {plan.factor:g}x, up to {plan.drain_max_s:g} s to drain, then flat out; "
                  "one ingest process per venue + the loader")
    with EmbeddedBroker(port=free_port()) as broker:
        ensure_topics(broker.bootstrap, 3)
        warehouse = Warehouse(tmp / "capture.duckdb")
        with warehouse.writer():
            pass
        processes = {exchange: subprocess.Popen(
            [sys.executable, "-m", "bench.capture_bench", json.dumps(
                {"exchange": exchange, "bootstrap": broker.bootstrap, "plan": asdict(plan),
                 "spill": str(tmp / f"spill-{exchange}.jsonl"), "out": str(tmp / f"{exchange}.json")})],
            stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True) for exchange in VENUES}
        try:
            for exchange, process in processes.items():
                if process.stdout.readline().strip() != "ready":
                    raise RuntimeError(f"the {exchange} capture process failed before it was ready "
                                       f"(exit {process.wait()})")
            console.print("frames generated; feeding")
            loader = LoaderLoop(warehouse, broker.bootstrap)
            loader.start()
            started = time.monotonic()
            for process in processes.values():
                process.stdin.write("go\n")
                process.stdin.flush()
            for exchange, process in processes.items():
                if process.wait() != 0:
                    raise RuntimeError(f"the {exchange} capture process exited {process.returncode}")
            producers_done = time.monotonic()
            loader.stop.set()
            loader.join()
            if loader.error is not None:
                raise loader.error
        finally:
            for process in processes.values():
                if process.poll() is None:
                    process.kill()
    venues = [json.loads((tmp / f"{exchange}.json").read_text()) for exchange in VENUES]
    return {"schedule": asdict(plan), "venues": venues, "loader_rows": loader.rows,
            "loader_rows_per_s": loader.rows / loader.busy_s if loader.busy_s else None,
            "loader_catch_up_s": time.monotonic() - producers_done, "wall_s": time.monotonic() - started}


if __name__ == "__main__":    # one venue's ingest process
    spec = json.loads(sys.argv[1])
    result = venue_process(spec["exchange"], spec["bootstrap"], Schedule(**spec["plan"]), Path(spec["spill"]))
    Path(spec["out"]).write_text(json.dumps(result))
