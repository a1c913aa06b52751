"""``perpflow ingest``: the live ingestion service for one venue.

One asyncio process per venue. Each routed websocket connection runs its own loop: connect,
read frames into the shared ``FeedHandler`` (mapper + book sync, exactly as replay does),
and on any failure record a feed event and reconnect with exponential backoff and jitter.
Faults that leave the TCP connection up are caught by a per-stream liveness watchdog (since
Binance's 2026 URL split, a misrouted stream is acknowledged and then silent forever), and
connections are rotated before the venue's 24-hour limit. Optionally each route is opened
``connections_per_stream`` times and merged into one de-duplicated stream (``ingest/frames.py``),
so one dropped connection loses nothing, not even streams that cannot be backfilled; frames that
are not UTF-8 or exceed ``max_frame_bytes`` are dead-lettered without dropping the connection.
REST depth snapshots are fetched whenever the book sync asks for one; open interest is polled
within the REST weight budget.
Records go through ``SpillingSink``: a Kafka outage spills to disk and drains in order.

The service writes its counters to ``<home>/run/ingest-<venue>.json`` every second, which
``perpflow status`` reads.
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
import random
import signal
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

import aiohttp
import orjson
import websockets
from websockets.exceptions import ConnectionClosed, InvalidHandshake

from ingest.feed import FeedHandler
from ingest.frames import RejectedFrame, ReplicaMerger, check_frame
from ingest.records import FeedEvent
from ingest.spill import SpillingSink

log = logging.getLogger(__name__)


class IngestError(RuntimeError):
    """A problem the service cannot work around (bad symbols, unreachable venue at start-up)."""


@dataclass
class IngestConfig:
    symbols: list[str]
    ws_url: str
    rest_url: str
    bootstrap: str
    run_dir: Path
    oi_interval_s: float = 5.0
    backoff_base_s: float = 1.0
    backoff_max_s: float = 30.0
    max_connection_age_s: float | None = None       # None: the venue's limit
    silence_limit_s: dict[str, float | None] = field(default_factory=dict)   # overrides per stream kind
    status_interval_s: float = 1.0
    duration_s: float | None = None                   # stop by itself after this long
    connections_per_stream: int = 1                   # >1: redundant replicas of each route, de-duplicated
    max_frame_bytes: int = 8 << 20                    # larger frames are dead-lettered


@dataclass
class ConnectionState:
    name: str
    route: str
    replica: int                                      # 1..connections_per_stream
    url: str
    streams: list[str]
    state: str = "starting"
    connected_at: float | None = None
    connects: int = 0
    last_seen: dict[str, float] = field(default_factory=dict)
    received: set[str] = field(default_factory=set)  # streams that delivered a frame since connecting

    @property
    def detail(self) -> dict:
        return {"connection": self.name, "route": self.route, "replica": self.replica}


class Stalled(Exception):
    def __init__(self, stream: str, silent_s: float):
        super().__init__(f"{stream} silent for {silent_s:.1f}s while the connection stayed up")
        self.stream, self.silent_s = stream, silent_s


class RotationDue(Exception):
    pass


class IngestService:
    MAX_BACKFILL_CALLS = 50     # 50k trades; a longer outage is reported as a gap, not hammered
    # The websockets library closes the connection (1009) above this; perpflow's own, much lower
    # limit (max_frame_bytes) dead-letters a large frame and keeps the connection.
    PROTOCOL_MAX_FRAME_BYTES = 1 << 28

    def __init__(self, venue, config: IngestConfig, sink: SpillingSink | None = None):
        self.venue = venue
        self.config = config
        self.sink = sink or SpillingSink(config.bootstrap, config.run_dir / f"spill-{venue.exchange}.jsonl")
        self.handler = FeedHandler(venue, self.sink.send)
        self.events: Counter = Counter()        # disconnects, reconnects, stalls, rotations, rest errors
        self.connections: dict[str, ConnectionState] = {}
        self.stop = asyncio.Event()
        self.started = time.time()
        self.rest_weight = 0
        self._snapshot_tasks: dict[str, asyncio.Task] = {}
        self._tasks: set[asyncio.Task] = set()
        self._last_oi: dict[str, bytes] = {}
        self._session: aiohttp.ClientSession | None = None
        self._mergers: dict[str, ReplicaMerger] = {}   # per route, with redundant connections only
        self._rate = {"t": time.monotonic(), "messages": 0, "per_s": 0.0}
        self.status_path = config.run_dir / f"ingest-{venue.exchange}.json"

    # --- lifecycle ---------------------------------------------------------------------------

    async def run(self) -> None:
        self._session = aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=15))
        if self.config.duration_s:
            asyncio.get_running_loop().call_later(self.config.duration_s, self.request_stop)
        try:
            await self._check_symbols()
            self._open_routes()
            tasks = [asyncio.create_task(self._connection_loop(c), name=f"ws-{c.name}")
                     for c in self.connections.values()]
            tasks += [asyncio.create_task(self._poll_open_interest(), name="open-interest"),
                      asyncio.create_task(self._drain_spill(), name="drain"),
                      asyncio.create_task(self._write_status(), name="status")]
            await self.stop.wait()
            background = tasks + list(self._snapshot_tasks.values()) + list(self._tasks)
            for task in background:
                task.cancel()
            await asyncio.gather(*background, return_exceptions=True)
        finally:
            await self._session.close()
            await asyncio.to_thread(self.sink.close)
            self._status(final=True)

    def _open_routes(self) -> None:
        replicas = self.config.connections_per_stream
        if replicas < 1:
            raise IngestError(f"connections_per_stream must be >= 1, got {replicas}")
        routes = self.venue.ws_connections(self.config.ws_url, self.config.symbols)
        for route, (url, streams) in routes.items():
            if replicas > 1:
                self._mergers[route] = ReplicaMerger()
            for replica in range(1, replicas + 1):
                name = route if replicas == 1 else f"{route}#{replica}"
                self.connections[name] = ConnectionState(name, route, replica, url, streams)

    def request_stop(self) -> None:
        self.stop.set()

    async def _check_symbols(self) -> None:
        urls = self.venue.reference_urls(self.config.rest_url)
        info = await self._get_json(urls["exchange_info"], weight_ok=True, attempts=5)
        known = self.venue.perpetual_symbols(info)
        unknown = [s for s in self.config.symbols if s not in known]
        if unknown:
            raise IngestError(f"{', '.join(unknown)} not trading as perpetuals on {self.venue.exchange}; "
                              f"examples of valid symbols: {', '.join(sorted(known)[:8])}")
        try:
            funding_info = await self._get_json(urls["funding_info"], weight_ok=True, attempts=3)
            self.venue.apply_funding_info(funding_info)
        except IngestError as exc:
            log.warning("funding intervals unavailable (%s); assuming 8 h", exc)

    # --- websockets --------------------------------------------------------------------------

    async def _connection_loop(self, conn: ConnectionState) -> None:
        attempt = 0
        while not self.stop.is_set():
            reason = kind = None
            detail = conn.detail
            symbol = None
            try:
                async with websockets.connect(conn.url, ping_interval=20, ping_timeout=20, open_timeout=10,
                                              close_timeout=2, max_size=self.PROTOCOL_MAX_FRAME_BYTES,
                                              max_queue=4096) as ws:
                    if conn.connects:
                        self._feed_event("reconnect", None, {**conn.detail, "attempt": attempt})
                        self.events["reconnects"] += 1
                    conn.connects += 1
                    conn.state, conn.connected_at = "connected", time.monotonic()
                    conn.last_seen = {s: time.monotonic() for s in conn.streams}
                    conn.received = set()
                    if conn.route in self._mergers:
                        self._mergers[conn.route].connected(conn.name)
                    attempt = 0
                    await self._read(ws, conn)
            except asyncio.CancelledError:
                raise
            except Stalled as exc:
                reason, kind = str(exc), "stall"
                detail.update(stream=exc.stream, silent_s=exc.silent_s)
                symbol = self.venue.stream_symbol(exc.stream)
            except RotationDue:
                reason, kind = "connection rotated before the venue's 24 h limit", "rotate"
            except (ConnectionClosed, InvalidHandshake, OSError, asyncio.TimeoutError) as exc:
                reason, kind = f"{exc.__class__.__name__}: {exc}", "disconnect"
            conn.state = "reconnecting"
            if conn.route in self._mergers:
                for item in self._mergers[conn.route].disconnected(conn.name):
                    self._handle_frame(*item)
            self._reset_books(conn)
            if reason is not None and not self.stop.is_set():
                self.events[kind + "s"] += 1
                self._feed_event(kind, symbol, {**detail, "reason": reason})
                log.warning("%s connection %s: %s", self.venue.exchange, conn.name, reason)
            if kind == "rotate":
                continue
            delay = min(self.config.backoff_max_s, self.config.backoff_base_s * 2 ** attempt)
            attempt += 1
            try:   # full jitter keeps many clients from reconnecting in lockstep
                await asyncio.wait_for(self.stop.wait(), timeout=delay * random.uniform(0.5, 1.0))
            except asyncio.TimeoutError:
                pass

    async def _read(self, ws, conn: ConnectionState) -> None:
        max_age = self.config.max_connection_age_s or self.venue.MAX_CONNECTION_AGE_S
        # Replicas rotate at staggered ages so they are never all reconnecting at once.
        max_age *= 1 - 0.1 * (conn.replica - 1) / self.config.connections_per_stream
        limits = {**self.venue.SILENCE_LIMIT_S, **self.config.silence_limit_s}
        next_check = time.monotonic() + 1.0
        # Checked on every frame: Python 3.11's wait_for can swallow a cancellation that lands
        # just as recv() completes, and a busy stream would then never let the task go.
        while not self.stop.is_set():
            try:   # bytes: the library must not close the connection over a frame that is not UTF-8
                frame = await asyncio.wait_for(ws.recv(decode=False), timeout=1.0)
            except asyncio.TimeoutError:
                frame = None
            now = time.monotonic()
            if frame is not None:
                self._on_frame(frame, conn, now)
            if now >= next_check:
                next_check = now + 1.0
                for stream, seen in conn.last_seen.items():
                    limit = limits.get(self.venue.stream_kind(stream))
                    if limit is not None and now - seen > limit:
                        raise Stalled(stream, round(now - seen, 1))
                if now - conn.connected_at > max_age:
                    raise RotationDue

    def _on_frame(self, raw: bytes, conn: ConnectionState, now: float) -> None:
        frame = check_frame(raw, self.config.max_frame_bytes)
        if isinstance(frame, str):
            stream = self.venue.stream_of(frame)
            if stream is not None:    # every replica's liveness counts, duplicate or not
                conn.last_seen[stream] = now
                conn.received.add(stream)
        merger = self._mergers.get(conn.route)
        if merger is None:
            self._handle_frame(conn.name, raw, frame)
            return
        for item in merger.on_frame(conn.name, raw, (conn.name, raw, frame), now):
            self._handle_frame(*item)

    def _handle_frame(self, source: str, raw: bytes, frame: str | RejectedFrame) -> None:
        if isinstance(frame, RejectedFrame):
            self.events["rejected_frames"] += 1
            self.handler.on_rejected_frame(raw, time.time_ns(), source, frame.reason)
            return
        for native in self.handler.on_ws(frame, time.time_ns(), source):
            self._want_snapshot(native)
        if self.handler.new_trade_gaps:
            for gap in self.handler.new_trade_gaps:
                self._background(self._backfill_trades(gap))
            self.handler.new_trade_gaps.clear()

    def _reset_books(self, conn: ConnectionState) -> None:
        """Forget the books a lost connection fed, except those a live replica still delivers
        (it carries on the same sequence, so the book stays exact)."""
        merger = self._mergers.get(conn.route)
        covered = set().union(*(c.received for c in self.connections.values()
                                if c.route == conn.route and c is not conn and merger is not None
                                and merger.is_live(c.name)))
        for native in sorted({self.venue.stream_symbol(s) for s in conn.streams
                              if "depth" in s and s not in covered}):
            self.handler.book_sync.reset(self.venue.normalize_symbol(native))

    # --- REST ----------------------------------------------------------------------------------

    def _background(self, coroutine) -> None:
        task = asyncio.create_task(coroutine)
        self._tasks.add(task)
        task.add_done_callback(self._background_done)

    def _background_done(self, task: asyncio.Task) -> None:
        self._tasks.discard(task)
        if not task.cancelled() and task.exception() is not None:
            self.events["task_errors"] += 1
            log.error("background task failed", exc_info=task.exception())

    async def _backfill_trades(self, gap) -> None:
        """Fetch the trades a dropped connection missed, so none is lost (weight 20 per call)."""
        next_id, calls = gap.first_id, 0
        while next_id <= gap.last_id and calls < self.MAX_BACKFILL_CALLS:
            calls += 1
            url = self.venue.agg_trades_url(self.config.rest_url, gap.symbol_native, next_id,
                                            min(1000, gap.last_id - next_id + 1))
            try:
                body, ts = await self._get(url, attempts=5)
            except IngestError as exc:
                log.warning("trade backfill %s from %d failed: %s", gap.symbol_native, next_id, exc)
                return
            ids = [item.get("a") for item in orjson.loads(body) if isinstance(item, dict)]
            self.handler.on_rest(url, body, ts)
            if not ids:
                break
            next_id = max(ids) + 1
        self.events["trade_backfills"] += 1
        self._feed_event("trade_backfill", gap.symbol_native,
                         {"first_id": gap.first_id, "last_id": gap.last_id, "filled_to": next_id - 1})

    def _want_snapshot(self, native: str) -> None:
        task = self._snapshot_tasks.get(native)
        if task is None or task.done():
            self._snapshot_tasks[native] = asyncio.create_task(self._fetch_snapshot(native))

    async def _fetch_snapshot(self, native: str) -> None:
        url = self.venue.depth_url(self.config.rest_url, native)
        body, ts = await self._get(url, attempts=None)
        for again in self.handler.on_rest(url, body, ts):
            if again != native:
                self._want_snapshot(again)
            else:   # the snapshot did not bridge: ask again once this task is done
                asyncio.get_running_loop().call_soon(self._want_snapshot, native)

    async def _poll_open_interest(self) -> None:
        interval = self.config.oi_interval_s
        while True:
            for native in self.config.symbols:
                url = self.venue.open_interest_url(self.config.rest_url, native)
                try:
                    body, ts = await self._get(url, attempts=3)
                except IngestError as exc:
                    log.warning("open interest %s: %s", native, exc)
                    continue
                if body != self._last_oi.get(native):    # unchanged polls carry no information
                    self._last_oi[native] = body
                    self.handler.on_rest(url, body, ts)
            # Stay well inside the venue's weight budget: slow down when others use it up.
            busy = self.rest_weight > 0.8 * self.venue.REST_WEIGHT_LIMIT
            await asyncio.sleep(interval * (4 if busy else 1))

    async def _get_json(self, url: str, **kwargs):
        body, _ = await self._get(url, **kwargs)
        return orjson.loads(body)

    async def _get(self, url: str, attempts: int | None = 5, weight_ok: bool = False) -> tuple[bytes, int]:
        """GET with backoff; honours Retry-After on 429/418; raises IngestError after ``attempts``."""
        attempt = 0
        while True:
            attempt += 1
            try:
                async with self._session.get(url) as response:
                    body = await response.read()
                    ts = time.time_ns()
                    weight = response.headers.get(self.venue.WEIGHT_HEADER)
                    if weight and weight.isdigit():
                        self.rest_weight = int(weight)
                    if response.status == 200:
                        return body, ts
                    self.events[f"rest_{response.status}"] += 1
                    retry_after = response.headers.get("Retry-After", "")
                    delay = float(retry_after) if retry_after.replace(".", "", 1).isdigit() else None
                    if response.status == 418:
                        delay = max(delay or 0, 120.0)   # an IP ban: back off for minutes
                    problem = f"HTTP {response.status}: {body[:200].decode('utf-8', 'replace')}"
                    if response.status < 500 and response.status not in (418, 429):
                        raise IngestError(f"{url}: {problem}")
            except (aiohttp.ClientError, asyncio.TimeoutError) as exc:
                self.events["rest_errors"] += 1
                problem, delay = f"{exc.__class__.__name__}: {exc}", None
            if attempts is not None and attempt >= attempts:
                raise IngestError(f"{url}: {problem} (after {attempt} attempts)")
            delay = delay if delay is not None else min(30.0, 0.5 * 2 ** attempt) * random.uniform(0.5, 1.0)
            await asyncio.sleep(delay)

    # --- Kafka outage handling and status --------------------------------------------------------

    async def _drain_spill(self) -> None:
        while True:
            if self.sink.spilling:
                await asyncio.to_thread(self.sink.drain)
            await asyncio.sleep(1.0)

    def _feed_event(self, kind: str, symbol: str | None, detail: dict) -> None:
        self.handler.emit_record(FeedEvent(exchange=self.venue.exchange,
                                     symbol=self.venue.normalize_symbol(symbol) if symbol else None,
                                     kind=kind, detail=orjson.dumps(detail).decode(), ts_recv=time.time_ns()))

    async def _write_status(self) -> None:
        while True:
            self._status()
            await asyncio.sleep(self.config.status_interval_s)

    def status(self) -> dict:
        stats, now = self.handler.stats, time.monotonic()
        elapsed = now - self._rate["t"]
        if elapsed >= 1.0:
            self._rate.update(per_s=(stats.messages - self._rate["messages"]) / elapsed, t=now,
                              messages=stats.messages)
        return {
            "service": "ingest", "exchange": self.venue.exchange, "pid": os.getpid(), "symbols": self.config.symbols,
            "started_at": self.started, "updated_at": time.time(), "messages": stats.messages,
            "messages_per_s": round(self._rate["per_s"], 1), "records": dict(stats.records),
            "skipped": sum(stats.skipped.values()), "dead_letters": sum(stats.dead_letters.values()),
            "gaps": self.handler.book_sync.counts["gaps"], "resyncs": self.handler.book_sync.counts["resyncs"],
            "missing_trades": self.handler.missing_trades(),
            "events": dict(self.events), "rest_weight_1m": self.rest_weight,
            "spilling": self.sink.spilling, "spill_bytes": self.sink.spill_bytes,
            "spilled_total": self.sink.spilled_total, "kafka_outages": self.sink.outages,
            "connections": {c.name: {"state": c.state, "connects": c.connects,
                                     "silent_s": {s: round(now - t, 1) for s, t in c.last_seen.items()}}
                            for c in self.connections.values()},
        }

    def _status(self, final: bool = False) -> None:
        status = self.status()
        status["state"] = "stopped" if final else "running"
        self.config.run_dir.mkdir(parents=True, exist_ok=True)
        tmp = self.status_path.with_suffix(".tmp")
        tmp.write_text(json.dumps(status))
        os.replace(tmp, self.status_path)


def run_service(service: IngestService, report=None, report_every_s: float = 10.0) -> None:
    """Run until SIGTERM/SIGINT, then shut down with everything flushed.

    ``report(status)`` is called every ``report_every_s`` seconds so long runs show progress.
    """
    async def progress():
        while True:
            await asyncio.sleep(report_every_s)
            report(service.status())

    async def main():
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, service.request_stop)
        reporter = asyncio.create_task(progress()) if report else None
        try:
            await service.run()
        finally:
            if reporter:
                reporter.cancel()

    asyncio.run(main())
