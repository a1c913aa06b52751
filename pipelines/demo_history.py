"""A calm day of the simulated market before the demo's cascade, through the real path, so the
trailing 24 h baselines (liquidity withdrawals, market stress, funding and liquidation norms) are
warm when the cascade comes.

The simulator's market model (``ingest.simulator``, calm scenario) runs in this process as fast as
it can; its wire frames go through the venue's own mapper and book sync (``ingest.feed.FeedHandler``,
as in ``perpflow replay`` and the live service) and the records to Kafka, from where the loader
takes them like any others. A day at the live cadence would be millions of frames, so the history
is a sampled feed, and says so in ``raw.feed_events`` (kind ``sampled_history``) and in the demo:

* the book: one diff-depth event a minute (the net changes of that minute, chained by U/u/pu), so
  one periodic book snapshot a minute instead of one a second;
* mark price, index and funding: one update a minute per symbol instead of one a second;
* open interest: the REST body polled once a minute;
* liquidations: every forced order the venue publishes;
* trades: none (nothing the warm baselines read; ``analytics.ohlcv_1m`` starts with the cascade);
* the model steps a second at a time (``SimConfig.step_ms``), not the live 100 ms: its per-second
  dynamics are the same (requote and fill probabilities compound per step; prices, premium and
  taker arrivals scale with the step), the books sampled once a minute are statistically the same
  (``tests/test_simulator_market.py`` compares depth and volatility), and a day costs a quarter of
  the CPU.

Only the simulator's own wire format (Binance USD-M) is generated here. The other venues' dialects
could be driven in-process too (``ingest.simulator.dialects.offline_frames`` does it for one topic
list), but their subscriptions and REST polls would have to be played as their live services do;
until then their depth joins the market-stress sum only when the live part starts, which the demo
summary states next to the stress figures.

``python -m pipelines.demo_history`` runs it as its own process (the demo does, on the second core,
while the live cascade streams), printing one JSON progress line per simulated quarter hour.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import threading
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import click
import numpy as np
import orjson
from rich.console import Console
from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table

from ingest.feed import FeedHandler
from ingest.records import FeedEvent
from ingest.simulator import ExchangeFeed, SimConfig
from ingest.simulator.dialects import NATIVE_VENUE
from ingest.venues import venue as venue_for
from transforms.market_stress import first_crossing_offset_minutes

BOOK_INTERVAL_MS = 60_000
MARK_EVERY_MS = 60_000
OPEN_INTEREST_EVERY_MS = 60_000
MODEL_STEP_MS = 1000
PROGRESS_EVERY_MS = 15 * 60_000
RECEIVE_LATENCY_MS = 5          # the simulated receive time of a frame, after its event time
REST_URL = "http://simulator"   # only the path of a REST URL matters to the mappers
SAMPLING = {"book": f"one diff-depth event every {BOOK_INTERVAL_MS // 1000} s, so one periodic snapshot a minute",
            "mark_price": f"one update every {MARK_EVERY_MS // 1000} s per symbol",
            "open_interest": f"REST polled every {OPEN_INTEREST_EVERY_MS // 1000} s",
            "liquidations": "every forced order the venue publishes", "trades": "none",
            "model_step_ms": MODEL_STEP_MS}


@dataclass
class HistoryReport:
    exchange: str
    start_ms: int
    end_ms: int
    messages: int = 0
    records: Counter = field(default_factory=Counter)
    skipped: Counter = field(default_factory=Counter)
    dead_letters: Counter = field(default_factory=Counter)
    seconds: float = 0.0


def publish_history(symbols: list[str], start_ms: int, hours: float, seed: int, emit: Callable[[object], None],
                    progress: Callable[[int, int], None] | None = None, *, scenario: str = "calm") -> HistoryReport:
    """Simulate ``hours`` of market from ``start_ms`` and hand every record the venue's mapping path
    makes of its sampled wire frames to ``emit``; ``progress(done_ms, total_ms)`` is called every
    simulated quarter hour. The demo's history is the calm scenario; tests also sample a cascade."""
    started = time.perf_counter()
    venue = venue_for(NATIVE_VENUE)
    config = SimConfig(scenario=scenario, seed=seed, start_ms=start_ms, hours=hours, symbols=tuple(symbols),
                       venues=(NATIVE_VENUE,), step_ms=MODEL_STEP_MS)
    feed = ExchangeFeed(config, book_interval_ms=BOOK_INTERVAL_MS)
    report = HistoryReport(NATIVE_VENUE, feed.start_ms, feed.end_ms)
    handler = FeedHandler(venue, emit, symbols)
    for name, body in (("instruments", feed.exchange_info()), ("funding_intervals", feed.funding_info())):
        venue.apply_reference(name, body)
    for instrument in venue.instruments(_ns(feed.start_ms)):
        emit(instrument)
    streams = [s for conn in venue.ws_connections("ws://simulator", symbols) for s in conn.streams]
    # The simulator speaks Binance's stream names: trades are left out, mark prices sampled.
    wanted = frozenset(s for s in streams if not s.endswith(("@aggTrade", "@trade"))).__contains__
    sampled = {s: -1 for s in streams if "@markPrice" in s}
    next_oi = next_progress = feed.start_ms
    while not feed.finished:
        for ts_ms, stream, payload in feed.step(wanted):
            if stream in sampled:
                if ts_ms // MARK_EVERY_MS == sampled[stream]:
                    continue
                sampled[stream] = ts_ms // MARK_EVERY_MS
            frame = b'{"stream":"' + stream.encode() + b'","data":' + orjson.dumps(payload) + b"}"
            ts_recv = _ns(ts_ms + RECEIVE_LATENCY_MS)
            for native in handler.on_ws(frame, ts_recv, stream):
                # The book sync asks for a REST snapshot: the venue's book as it stands now.
                handler.on_rest(venue.book_snapshot_url(REST_URL, native),
                                orjson.dumps(feed.depth_snapshot(native, 1000)), ts_recv)
        now = feed.now_ms
        if now >= next_oi:
            for native in symbols:
                handler.on_rest(venue.open_interest_url(REST_URL, native), orjson.dumps(feed.open_interest(native)),
                                _ns(now + RECEIVE_LATENCY_MS))
            next_oi = now + OPEN_INTEREST_EVERY_MS
        if progress is not None and now >= next_progress:
            progress(now - feed.start_ms, feed.end_ms - feed.start_ms)
            next_progress = now + PROGRESS_EVERY_MS
    feed.close()
    emit(FeedEvent(exchange=NATIVE_VENUE, symbol=None, kind="sampled_history", ts_recv=_ns(feed.end_ms),
                   ts_exchange=feed.end_ms,
                   detail=json.dumps({"from_ms": feed.start_ms, "to_ms": feed.end_ms, "scenario": scenario,
                                      "seed": seed, **SAMPLING})))
    stats = handler.stats
    report.messages, report.records = stats.messages, stats.records.copy()
    report.skipped, report.dead_letters = stats.skipped.copy(), stats.dead_letters.copy()
    report.seconds = time.perf_counter() - started
    if progress is not None:
        progress(feed.end_ms - feed.start_ms, feed.end_ms - feed.start_ms)
    return report


def _ns(ms: int) -> int:
    return ms * 1_000_000


class HistoryFailed(RuntimeError):
    pass


class HistoryRun:
    """The history as a child process of the demo (its own core: the model is CPU-bound), with a
    progress bar fed by the child's JSON lines. Start it, stream the live part, then ``finish``."""

    def __init__(self, bootstrap: str, symbols: list[str], start_ms: int, hours: float, seed: int,
                 env: dict, log_path: Path, console: Console):
        self.console, self.log_path = console, log_path
        self.report: dict | None = None
        self.started = time.perf_counter()
        self.generated_s: float | None = None     # wall seconds until the child published everything
        self.progress = Progress(TextColumn("    history {task.description}"), BarColumn(),
                                 TextColumn("{task.percentage:>3.0f}%"), TimeElapsedColumn(), console=console)
        self.task = self.progress.add_task(f"{hours:g} h calm from {_utc(start_ms)}", total=hours * 3_600_000)
        self._log = open(log_path, "wb")
        self.process = subprocess.Popen(
            [sys.executable, "-m", "pipelines.demo_history", "--bootstrap", bootstrap, "--symbols", ",".join(symbols),
             "--start-ms", str(start_ms), "--hours", str(hours), "--seed", str(seed)],
            stdout=subprocess.PIPE, stderr=self._log, env=env)
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()
        self.progress.start()

    def _read(self) -> None:
        for line in self.process.stdout:
            try:
                message = json.loads(line)
            except ValueError:
                continue
            if "report" in message:
                self.report = message["report"]
                self.generated_s = time.perf_counter() - self.started
            else:
                self.progress.update(self.task, completed=message["done_ms"])

    def finish(self) -> float:
        """Wait until everything is published; returns the seconds spent waiting here."""
        waited = time.perf_counter()
        try:
            code = self.process.wait()
            self._reader.join()
        finally:
            self.progress.stop()
            self._log.close()
        if code != 0 or self.report is None:
            raise HistoryFailed(f"the history generator failed (exit {code}); see {self.log_path}")
        records = self.report["sent"]
        self.console.print(f"    history published in {self.generated_s:.0f}s: {self.report['messages']:,} frames "
                           f"-> {sum(records.values()):,} records ("
                           + ", ".join(f"{n:,} {kind}" for kind, n in sorted(records.items())) + ")", highlight=False)
        return time.perf_counter() - waited

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(30)
            except subprocess.TimeoutExpired:
                self.process.kill()
        self.progress.stop()


def start_history(settings, console: Console, live_start_ms: int, hours: float, seed: int,
                  symbols: list[str]) -> HistoryRun:
    """The ``hours`` before the live part, from the same market model (calm), into Kafka."""
    start_ms = live_start_ms - int(hours * 3_600_000)
    console.print(f"[bold]history[/] (its own process, in parallel with the live part): {hours:g} simulated hours "
                  f"of calm market before it ({_utc(start_ms)} to {_utc(live_start_ms)}, {NATIVE_VENUE} {','.join(symbols)}), sampled: a book a minute, a mark "
                  "price a minute, open interest a minute, every published liquidation, no trades", highlight=False)
    env = {**os.environ, "PERPFLOW_HOME": str(settings.home), "PERPFLOW_KAFKA_BOOTSTRAP": settings.bootstrap}
    return HistoryRun(settings.bootstrap, symbols, start_ms, hours, seed, env,
                      settings.run_dir / "demo-history.log", console)


def warm_summary(con, truth: dict, console: Console, *, stress_threshold: float = 50.0) -> None:
    """Per asset: when the liquidity withdrawal and the stress index first crossed their thresholds,
    in minutes against the cascade's true start (the simulator's ground truth), and what the
    trailing baselines had behind them."""
    table = Table(title=f"warm baselines: first signal vs the cascade's true start (ground truth; "
                        f"stress >= {stress_threshold:g}, withdrawal = 2% depth < 0.1x its 24 h median)")
    for column in ("asset", "true start", f"withdrawal ({NATIVE_VENUE})", "stress index", "stress peak",
                   "depth minutes in the 24 h before", "stress NULL (warming up)"):
        table.add_column(column, justify="left" if column == "asset" else "right")
    for window in sorted(truth["cascade_window"], key=lambda w: w["symbol"]):
        asset = window["symbol"].removesuffix("USDT")
        start_s = window["start_ms"] / 1000
        episodes = con.execute("""SELECT epoch(episode_start) + 60, worst_ratio FROM analytics.liquidity_withdrawals
                                  WHERE exchange = ? AND split_part(symbol, '-', 1) = ? ORDER BY 1""",
                               [NATIVE_VENUE, asset]).fetchall()
        stress = con.execute("""SELECT epoch(minute) + 60, stress_index FROM analytics.market_stress
                                WHERE asset = ? ORDER BY 1""", [asset]).fetchall()
        history = con.execute("""SELECT count(*) FROM analytics.book_depth WHERE exchange = ?
                                 AND split_part(symbol, '-', 1) = ? AND minute < to_timestamp(?)
                                 AND minute >= to_timestamp(?) - INTERVAL 24 HOUR""",
                              [NATIVE_VENUE, asset, start_s, start_s]).fetchone()[0]
        withdrawal = first_crossing_offset_minutes([e[0] for e in episodes], [e[1] for e in episodes], start_s,
                                                   threshold=0.1, below=True)
        stress_values = np.array([np.nan if v is None else v for _, v in stress], dtype=np.float64)
        crossing = first_crossing_offset_minutes([t for t, _ in stress], stress_values, start_s,
                                                 threshold=stress_threshold)
        table.add_row(asset, _utc(window["start_ms"]), _offset(withdrawal), _offset(crossing),
                      f"{np.nanmax(stress_values):.0f}" if np.isfinite(stress_values).any() else "",
                      f"{history:,}", f"{int(np.isnan(stress_values).sum()):,} of {len(stress_values):,}")
    console.print(table)
    rows = con.execute("SELECT table_name FROM information_schema.tables WHERE table_schema = 'analytics' "
                       "ORDER BY 1").fetchall()
    console.print("analytics rows: " + ", ".join(
        f"{name} {con.execute(f'SELECT count(*) FROM analytics.{name}').fetchone()[0]:,}" for (name,) in rows),
        highlight=False)
    sampled = con.execute("SELECT count(*) FROM raw.feed_events WHERE kind = 'sampled_history'").fetchone()[0]
    console.print(f"The history before the live part is a sampled feed ({sampled} sampled_history event in "
                  f"raw.feed_events says how): {NATIVE_VENUE} only, so until the live part starts the stress "
                  "index's depth sum has one venue and OKX/Bybit join it then; withdrawals on the other venues "
                  "have no 24 h baseline.", highlight=False)


def _offset(minutes: float) -> str:
    if np.isnan(minutes):
        return "not crossed"
    if minutes == 0:
        return "at the start"
    return f"{-minutes:.0f} min ahead" if minutes < 0 else f"{minutes:.0f} min after"


def _utc(ms: int) -> str:
    return time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime(ms / 1000))


@click.command()
@click.option("--bootstrap", required=True, help="Kafka bootstrap servers.")
@click.option("--symbols", required=True, help="Comma-separated native symbols of the simulator's venue.")
@click.option("--start-ms", type=int, required=True)
@click.option("--hours", type=click.FloatRange(min=0.0, min_open=True), required=True)
@click.option("--seed", type=int, default=7, show_default=True)
def main(bootstrap: str, symbols: str, start_ms: int, hours: float, seed: int) -> None:
    """Publish the sampled calm history to Kafka; JSON lines on stdout: progress, then the report."""
    from ingest.gc_policy import use_streaming_gc
    from ingest.kafka import RecordProducer

    def progress(done_ms: int, total_ms: int) -> None:
        print(json.dumps({"done_ms": done_ms, "total_ms": total_ms}), flush=True)

    producer = RecordProducer(bootstrap)
    use_streaming_gc()
    try:
        report = publish_history([s.strip() for s in symbols.split(",") if s.strip()], start_ms, hours, seed,
                                 producer.send, progress)
        producer.flush()
    finally:
        producer.close()
    print(json.dumps({"report": {"messages": report.messages, "records": dict(report.records),
                                 "skipped": dict(report.skipped), "dead_letters": dict(report.dead_letters),
                                 "seconds": round(report.seconds, 1), "sent": dict(producer.sent)}}), flush=True)


if __name__ == "__main__":
    sys.exit(main())
