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
within the REST weight budget, and so are the venue's other periodic requests (``Venue.polls``),
each at its own interval; a venue with no websocket at all runs on those polls alone.
Records go through ``SpillingSink``: a Kafka outage spills to disk and drains in order. Records
the sink has to drop (the spill's disk full or at its cap) are recovered where the venue allows:
dropped trades are reopened as gaps and backfilled once the spill takes records again (or by the
next start, through the state file), and books that lost records are resynced from a snapshot.

Trade continuity (``ingest/continuity.py``): on start the service continues each symbol's trade
sequence after the last id that is durable (Kafka's tail, the spill; the state file if Kafka does
not answer), so the restart window becomes a gap that REST backfills; backfills retry through 429s
and failures until done, and ranges still owed at shutdown are saved and resumed by the next start.
Ranges that cannot be recovered are ``trade_lost`` feed events with their size. Venues whose trade
ids are no sequence but whose REST history pages back (``Venue.trades_before_url``) are caught up by
time instead: after a reconnect, when the mapper says trades may be missing (``TradesUncertain``)
and at start, from the newest trade durable; the mapper drops what it already has.

Every background task runs under a supervisor: a crash is a ``task_error`` feed event and a
restart with backoff; a sink failure or a task crashing over and over stops the whole service with
a non-zero exit, never leaving it half alive.

The service writes its status to ``<home>/run/ingest-<venue>.json`` every second, which
``perpflow status`` reads, and its state (trade sequences, unfinished backfills, cumulative
counters) to ``ingest-<venue>.state.json`` beside it. A shard of a venue (``ingest/sharding.py``)
ingests only its symbols and has files of its own (``ingest-<venue>.shard-<i>-of-<n>.json``, its
``.state.json`` and spill), and spends only its share of the venue's REST budget on polls.
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
import random
import signal
import threading
import time
from collections import Counter, deque
from dataclasses import asdict, dataclass, field
from pathlib import Path

import aiohttp
import orjson
import websockets
from websockets.exceptions import ConnectionClosed, InvalidHandshake

from ingest.continuity import (LOST_RANGES_KEPT, STATE_VERSION, TAIL_SCAN_RECORDS, kafka_tail_records, load_state,
                               plan_resume, save_state, sequence_ids, spill_records)
from ingest.book_sync import SYNCED
from ingest.feed import FeedHandler, TradeGap
from ingest.frames import RejectedFrame, ReplicaMerger, check_frame
from ingest.records import BookDelta, BookSnapshot, FeedEvent, Funding, Trade
from ingest.sharding import Shard, file_suffix, inherited_state, rest_weight_limit
from ingest.spill import SinkFailure, SpillingSink
from ingest.venue import BookResync, MalformedMessage, SkipMessage, Venue
from ingest.kafka import BrokerUnavailable

log = logging.getLogger(__name__)


class IngestError(RuntimeError):
    """A problem the service cannot work around (bad symbols, unreachable venue at start-up)."""


class IngestFailed(RuntimeError):
    """The running service hit a failure it cannot recover from and stopped."""

    exit_code = 2


TASK_CRASH_WINDOW_S = 300.0
# Records bound for one partition wait this long at most to share a Kafka message: kafka-python
# costs about as much per message as mapping a frame does, so at a cascade's rates a pack of tens
# of records halves the CPU per record; in calm markets a pack holds a record or two.
DEFAULT_PACK_MS = 20.0
RECENT_TASK_ERROR_S = 60.0


@dataclass
class IngestConfig:
    symbols: list[str]
    ws_url: str
    rest_url: str
    bootstrap: str
    run_dir: Path
    oi_interval_s: float = 5.0
    reference_interval_s: float = 3600.0             # instrument lists re-read; changes are published
    backoff_base_s: float = 1.0
    backoff_max_s: float = 30.0
    max_connection_age_s: float | None = None       # None: the venue's limit
    silence_limit_s: dict[str, float | None] = field(default_factory=dict)   # overrides per stream kind
    status_interval_s: float = 1.0
    duration_s: float | None = None                   # stop by itself after this long
    max_backfill_ids: int = 100_000                   # per gap; older ids beyond it are reported lost
    trade_tail_scan: int = TAIL_SCAN_RECORDS          # md.trades records read back per partition on start
    task_crash_limit: int = 5                         # crashes of one task within 5 min before giving up
    connections_per_stream: int = 1                   # >1: redundant replicas of each route, de-duplicated
    max_frame_bytes: int = 8 << 20                    # larger frames are dead-lettered
    keepalive_timeout_s: float = 20.0                 # a ping unanswered this long closes the connection
    max_catch_up_pages: int = 200                     # per trade catch-up; older trades are reported lost
    catch_up_lookback_ms: int = 60_000                # on start, caught up from this long before the newest durable trade
    shard: Shard | None = None                        # this process ingests only its shard of the symbols
    pack_ms: float = DEFAULT_PACK_MS                  # records packed per Kafka message this long at most; 0: one each


@dataclass
class ConnectionState:
    name: str
    route: str
    replica: int                                      # 1..connections_per_stream
    url: str
    streams: tuple[str, ...]
    subscribe: tuple[str, ...] = ()                   # frames sent once connected
    resubscribed: list[float] = field(default_factory=list)   # monotonic times of book resubscribes
    state: str = "starting"
    connected_at: float | None = None
    connects: int = 0
    last_seen: dict[str, float] = field(default_factory=dict)
    received: set[str] = field(default_factory=set)  # streams that delivered a frame since connecting

    @property
    def detail(self) -> dict:
        return {"connection": self.name, "route": self.route, "replica": self.replica}


def frames_unread(ws) -> int:
    """Frames the websocket library has received and this connection has not yet read.

    websockets (15-17) queues them in its ``Assembler``; that is not public API, so where it is not
    found the answer is 0 and silence is judged by the clock alone, as before."""
    queue = getattr(getattr(ws, "recv_messages", None), "frames", None)
    try:
        return len(queue) if queue is not None else 0
    except TypeError:
        return 0


class Stalled(Exception):
    def __init__(self, stream: str, silent_s: float):
        super().__init__(f"{stream} silent for {silent_s:.1f}s while the connection stayed up")
        self.stream, self.silent_s = stream, silent_s


class RotationDue(Exception):
    pass


class IngestService:
    RESUBSCRIBE_ATTEMPTS = 3    # the last one closes the connection instead
    RESUBSCRIBE_WAIT_S = 10.0   # for the snapshot a resubscribe should bring
    EMPTY_BACKFILL_PAGES = 5    # the venue answering "no trades from id N" this often means they are gone
    CATCH_UP_ATTEMPTS = 8       # per page of a trade catch-up (429s wait out Retry-After within them)
    TRADES_LIVE_WAIT_S = 30.0   # a catch-up waits this long at most for the trade stream to be live
    # The websockets library closes the connection (1009) above this; perpflow's own, much lower
    # limit (max_frame_bytes) dead-letters a large frame and keeps the connection.
    PROTOCOL_MAX_FRAME_BYTES = 1 << 28
    # The venue's periodic polls may spend this share of its REST budget in any POLL_WINDOW_S,
    # counted here (most venues report no weight); the rest is left to snapshots and backfills.
    POLL_BUDGET_SHARE = 0.8
    POLL_WINDOW_S = 60.0

    def __init__(self, venue, config: IngestConfig, sink: SpillingSink | None = None):
        self.venue = venue
        self.config = config
        self.sink = sink or SpillingSink(config.bootstrap, spill_file(config.run_dir, venue.exchange, config.shard),
                                         pack_ms=config.pack_ms)
        # Spill events (disk full, dropped records, quarantined lines) may come from kafka-python's
        # thread; emitting a record is thread-safe, so they go straight to the sink like the rest.
        self.sink.on_event = self._sink_event
        self.sink.on_drop = self._record_dropped
        self._dropped_lock = threading.Lock()
        self._dropped_trades: dict[str, list[list[int]]] = {}   # native symbol -> id ranges the sink dropped
        self._dropped_books: set[str] = set()
        self._loop: asyncio.AbstractEventLoop | None = None
        self.handler = FeedHandler(venue, self.sink.send, symbols=config.symbols)
        self.events: Counter = Counter()        # disconnects, reconnects, stalls, rotations, rest errors
        self.connections: dict[str, ConnectionState] = {}
        self.stop = asyncio.Event()
        self.started = time.time()
        self.rest_weight = 0
        self._snapshot_tasks: dict[str, asyncio.Task] = {}
        self._catch_ups: dict[str, asyncio.Task] = {}   # per native symbol: the REST call after a reconnect
        # Trade catch-ups by time (venues whose ids are no sequence), per native symbol: the one
        # running and the next one asked for, each (since_ms, reason); both survive a stop.
        self._catch_up_running: dict[str, tuple[int, str]] = {}
        self._catch_up_owed: dict[str, tuple[int, str]] = {}
        self._sockets: dict[str, object] = {}             # per connection name, while connected
        self._instruments: dict[str, dict] = {}           # per native symbol: the last published content
        self._pong = self.venue.PONG_FRAME.encode() if self.venue.PONG_FRAME else None
        self._uncovered_routes: set[str] = set()    # left with no live connection since their last catch-up
        self._tasks: set[asyncio.Task] = set()
        self._last_oi: dict[str, bytes] = {}
        self._poll_spent: deque = deque()                 # (monotonic time, weight) of recent polls
        self._polls: dict[str, dict] = {}                 # per poll URL: its interval, successes, failures
        self._session: aiohttp.ClientSession | None = None
        self._mergers: dict[str, ReplicaMerger] = {}   # per route, with redundant connections only
        self._rate = {"t": time.monotonic(), "messages": 0, "per_s": 0.0}
        stem = f"ingest-{venue.exchange}{file_suffix(config.shard)}"
        self.status_path = config.run_dir / f"{stem}.json"
        self.state_path = config.run_dir / f"{stem}.state.json"
        # Counted here, so split among the shards sharing the IP; the weight the venue reports back
        # (``rest_weight``) is the whole IP's and is compared with the whole limit.
        self.rest_weight_limit = rest_weight_limit(venue.REST_WEIGHT_LIMIT, config.shard)
        self._state = load_state(self.state_path) if self.state_path.exists() else inherited_state(
            config.run_dir, venue.exchange, config.shard, {venue.normalize_symbol(s) for s in config.symbols})
        self._totals_base = Counter(self._state.get("totals", {}))
        self._lost_ranges: dict[str, list[list[int]]] = {
            symbol: seq.get("lost", []) for symbol, seq in self._state.get("trades", {}).items()}
        self._waits: dict[int, dict] = {}        # REST calls sleeping before a retry: what, until, why
        self._task_errors: list[tuple[float, str, str]] = []   # (monotonic time, task, reason)
        self.failure: str | None = None
        self._status_error: str | None = None

    # --- lifecycle ---------------------------------------------------------------------------

    async def run(self) -> None:
        self._loop = asyncio.get_running_loop()
        self._session = aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=15))
        if self.config.duration_s:
            asyncio.get_running_loop().call_later(self.config.duration_s, self.request_stop)
        try:
            await self._check_symbols()
            await self._resume_trades()
            self._open_routes()
            tasks = [self._supervised(f"ws-{c.name}", lambda c=c: self._connection_loop(c),
                                      on_crash=lambda c=c: self._connection_crashed(c))
                     for c in self.connections.values()]
            if any(self.venue.open_interest_url(self.config.rest_url, s) for s in self.config.symbols):
                tasks.append(self._supervised("open-interest", self._poll_open_interest))
            tasks += [self._supervised(f"poll {p.url}", lambda p=p: self._poll(p))
                      for p in self.venue.polls(self.config.rest_url, self.config.symbols)]
            tasks += [self._supervised("drain", self._drain_spill), self._supervised("status", self._write_status),
                      self._supervised("reference", self._refresh_reference)]
            if self.sink.pack_ms:
                tasks.append(self._supervised("packs", self._send_due_packs))
            await self.stop.wait()
            background = tasks + list(self._snapshot_tasks.values()) + list(self._tasks)
            for task in background:
                task.cancel()
            await asyncio.gather(*background, return_exceptions=True)
        finally:
            await self._session.close()
            try:
                await asyncio.to_thread(self.sink.close)
            except Exception as exc:   # noqa: BLE001 - whatever it is, it is the reason we stop
                self.failure = self.failure or f"closing the Kafka sink failed: {exc.__class__.__name__}: {exc}"
            self._recover_dropped(report=False)     # into the state file: the next start backfills them
            self._status(final=True)
        if self.failure:
            raise IngestFailed(self.failure)

    def _open_routes(self) -> None:
        replicas = self.config.connections_per_stream
        if replicas < 1:
            raise IngestError(f"connections_per_stream must be >= 1, got {replicas}")
        for spec in self.venue.ws_connections(self.config.ws_url, self.config.symbols):
            if replicas > 1:
                self._mergers[spec.route] = ReplicaMerger()
            for replica in range(1, replicas + 1):
                name = spec.route if replicas == 1 else f"{spec.route}#{replica}"
                self.connections[name] = ConnectionState(name, spec.route, replica, spec.url, spec.streams,
                                                         spec.subscribe)

    def request_stop(self) -> None:
        self.stop.set()

    # --- supervision ---------------------------------------------------------------------------

    def _supervised(self, name: str, factory, on_crash=None) -> asyncio.Task:
        """Run ``factory()`` as a task that is restarted when it crashes, or fails the service."""
        return asyncio.create_task(self._supervise(name, factory, on_crash), name=name)

    async def _supervise(self, name: str, factory, on_crash) -> None:
        restarts = 0
        while not self.stop.is_set():
            try:
                await factory()
                return
            except asyncio.CancelledError:
                raise
            except Exception as exc:   # noqa: BLE001 - a supervisor's job is to see every failure
                reason = f"{exc.__class__.__name__}: {exc}"
                if isinstance(exc, SinkFailure):
                    self._fail(f"the Kafka sink failed in {name}: {reason}")
                    return
                now = time.monotonic()
                self._task_errors = [e for e in self._task_errors if now - e[0] < TASK_CRASH_WINDOW_S]
                self._task_errors.append((now, name, reason))
                self.events["task_errors"] += 1
                log.error("%s task %s crashed: %s", self.venue.exchange, name, reason, exc_info=exc)
                crashes = sum(1 for e in self._task_errors if e[1] == name)
                if crashes > self.config.task_crash_limit:
                    self._fail(f"task {name} crashed {crashes} times within {TASK_CRASH_WINDOW_S:.0f}s; "
                               f"last: {reason}")
                    return
                if on_crash is not None:
                    on_crash()
                self._feed_event_safely("task_error", None, {"task": name, "reason": reason[:500],
                                                             "crashes": crashes})
            restarts += 1
            delay = min(self.config.backoff_max_s, self.config.backoff_base_s * 2 ** min(restarts, 10))
            try:
                await asyncio.wait_for(self.stop.wait(), timeout=delay)
            except asyncio.TimeoutError:
                pass

    def _fail(self, message: str) -> None:
        """Stop everything: one dead part must not leave the rest running as if all were well."""
        if self.failure is None:
            self.failure = message
            log.critical("%s ingest stopping: %s", self.venue.exchange, message)
            self._feed_event_safely("service_failed", None, {"reason": message[:1000]})
        self.request_stop()

    def _feed_event_safely(self, kind: str, symbol: str | None, detail: dict) -> None:
        try:
            self._feed_event(kind, symbol, detail)
        except Exception as exc:   # noqa: BLE001 - reporting a failure must not raise another
            log.error("could not record the %s feed event: %s", kind, exc)

    # --- records the sink dropped -----------------------------------------------------------------

    def _sink_event(self, kind: str, detail: dict) -> None:
        """From any thread. ``spill_dropped`` means the spill takes records again."""
        self._feed_event_safely(kind, None, detail)
        if kind == "spill_dropped" and self._loop is not None and not self.stop.is_set():
            self._loop.call_soon_threadsafe(self._recover_dropped)

    def _record_dropped(self, record) -> None:
        """From any thread, with the sink's lock held: only note what to recover."""
        if isinstance(record, Trade):
            ids = self.venue.trade_sequence(record)
            if ids is None:
                return
            first, last = ids
            with self._dropped_lock:
                ranges = self._dropped_trades.setdefault(record.symbol_native, [])
                if ranges and ranges[-1][1] + 1 == first:
                    ranges[-1][1] = last
                else:
                    ranges.append([first, last])
        elif isinstance(record, BookDelta | BookSnapshot):
            with self._dropped_lock:
                self._dropped_books.add(record.symbol)

    def _recover_dropped(self, report: bool = True) -> None:
        """Reopen dropped trades as gaps (backfilled now, or by the next start) and resync the books."""
        with self._dropped_lock:
            trades, self._dropped_trades = self._dropped_trades, {}
            books, self._dropped_books = self._dropped_books, set()
        for symbol in sorted(books):
            self.handler.book_sync.reset(symbol)
        for native, ranges in trades.items():
            for first, last in ranges:
                self.handler.reopen_trades(native, first, last, "dropped: the spill could not be written",
                                           time.time_ns(), report=report)
                if report:
                    self._background(self._backfill_trades(TradeGap(native, first, last)))

    def _connection_crashed(self, conn: ConnectionState) -> None:
        conn.state = "restarting"
        self._reset_books(conn)

    async def _check_symbols(self) -> None:
        """Reference data first: which symbols exist, and the instrument records that give every
        later size its unit. Only the instrument list is required; the rest refines it."""
        for name, url in self.venue.reference_urls(self.config.rest_url).items():
            try:
                body = await self._get_json(url, weight_ok=True, attempts=5 if name == "instruments" else 3)
                self.venue.apply_reference(name, body)
            except (IngestError, MalformedMessage) as exc:
                if name == "instruments":
                    raise IngestError(f"{self.venue.exchange} instrument list unusable: {exc}") from None
                log.warning("%s reference data %s unavailable (%s); using defaults", self.venue.exchange, name, exc)
        known = self.venue.tradable_symbols()
        unknown = [s for s in self.config.symbols if s not in known]
        if unknown:
            raise IngestError(f"{', '.join(unknown)} not trading as perpetuals on {self.venue.exchange}; "
                              f"examples of valid symbols: {', '.join(sorted(known)[:8])}")
        self._publish_instruments()

    def _publish_instruments(self) -> None:
        """Instrument records for the subscribed symbols whose reference data is new or changed."""
        wanted = set(self.config.symbols)
        for instrument in self.venue.instruments(time.time_ns()):
            if instrument.symbol_native not in wanted:
                continue
            content = {k: v for k, v in asdict(instrument).items() if k not in ("ts_exchange", "ts_recv")}
            if self._instruments.get(instrument.symbol_native) != content:
                self._instruments[instrument.symbol_native] = content
                self.handler.emit_record(instrument)

    async def _refresh_reference(self) -> None:
        """Contract sizes, tick sizes and statuses change (listings, delistings, splits): re-read the
        venue's lists now and then and publish what changed."""
        while True:
            await asyncio.sleep(self.config.reference_interval_s)
            for name, url in self.venue.reference_urls(self.config.rest_url).items():
                try:
                    self.venue.apply_reference(name, await self._get_json(url, weight_ok=True, attempts=3))
                except (IngestError, MalformedMessage) as exc:
                    log.warning("%s reference data %s not refreshed: %s", self.venue.exchange, name, exc)
            self._publish_instruments()

    # --- websockets --------------------------------------------------------------------------

    async def _connection_loop(self, conn: ConnectionState) -> None:
        attempt = 0
        while not self.stop.is_set():
            reason = kind = None
            detail = conn.detail
            symbol = None
            try:
                async with websockets.connect(conn.url, ping_interval=20, ping_timeout=self.config.keepalive_timeout_s,
                                              open_timeout=10,
                                              close_timeout=2, max_size=self.PROTOCOL_MAX_FRAME_BYTES,
                                              max_queue=4096) as ws:
                    if conn.connects:
                        self._feed_event("reconnect", None, {**conn.detail, "attempt": attempt})
                        self.events["reconnects"] += 1
                        if conn.route in self._uncovered_routes:
                            self._uncovered_routes.discard(conn.route)
                            for native in sorted({self.venue.stream_symbol(s) for s in conn.streams
                                                  if self.venue.stream_kind(s) == self.venue.TRADE_STREAM}):
                                self._catch_up_trades(native)
                    conn.connects += 1
                    conn.state, conn.connected_at = "connected", time.monotonic()
                    conn.last_seen = {s: time.monotonic() for s in conn.streams}
                    conn.received = set()
                    if conn.route in self._mergers:
                        self._mergers[conn.route].connected(conn.name)
                    attempt = 0
                    for frame in conn.subscribe:
                        await ws.send(frame)
                    self._sockets[conn.name] = ws
                    try:
                        await self._read(ws, conn)
                    finally:
                        self._sockets.pop(conn.name, None)
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
            merger = self._mergers.get(conn.route)
            if merger is not None:
                released = merger.disconnected(conn.name)
                if merger.unverified_joins:
                    self._report_unverified_joins(conn.route, merger)
                for item in released:
                    self._handle_frame(*item)
            if merger is None or not any(merger.is_live(c.name) for c in self.connections.values()
                                         if c.route == conn.route and c is not conn):
                self._uncovered_routes.add(conn.route)
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
        max_age = self.config.max_connection_age_s or self.venue.MAX_CONNECTION_AGE_S or float("inf")
        # Replicas rotate at staggered ages so they are never all reconnecting at once.
        max_age *= 1 - 0.1 * (conn.replica - 1) / self.config.connections_per_stream
        limits = {**self.venue.SILENCE_LIMIT_S, **self.config.silence_limit_s}
        next_check = time.monotonic() + 1.0
        ping = self.venue.PING_FRAME
        next_ping = time.monotonic() + self.venue.PING_INTERVAL_S
        # Behind on this connection (a loaded machine, a burst), a silent stream's frames may be
        # queued unread, so a check that finds frames waiting is judged once they are read: every
        # frame that had arrived by then has been seen, and a stream none of whose frames was read
        # after (check time - limit) sent nothing in that span. (Read late is never silent, so a
        # backlog can hide a stall but never make one up.)
        frames_read = 0
        pending: deque[tuple[float, int]] = deque()   # (check time, frames to read)
        # Checked on every frame: Python 3.11's wait_for can swallow a cancellation that lands
        # just as recv() completes, and a busy stream would then never let the task go.
        while not self.stop.is_set():
            try:   # bytes: the library must not close the connection over a frame that is not UTF-8
                frame = await asyncio.wait_for(ws.recv(decode=False), timeout=1.0)
            except asyncio.TimeoutError:
                frame = None
            now = time.monotonic()
            if frame is not None:
                frames_read += 1
                if frame != self._pong:
                    self._on_frame(frame, conn, now)
            if ping is not None and now >= next_ping:
                next_ping = now + self.venue.PING_INTERVAL_S
                await ws.send(ping)
            while pending and frames_read >= pending[0][1]:
                self._judge_silence(conn, limits, pending.popleft()[0])
            if now >= next_check:
                next_check = now + 1.0
                unread = frames_unread(ws)
                if unread:
                    pending.append((now, frames_read + unread))
                else:
                    pending.clear()
                    self._judge_silence(conn, limits, now)
                if now - conn.connected_at > max_age:
                    raise RotationDue

    def _judge_silence(self, conn: ConnectionState, limits: dict, at: float) -> None:
        """Stalled if a stream's last frame was read more than its limit before ``at``, with every
        frame that had arrived by ``at`` read."""
        for stream, seen in conn.last_seen.items():
            limit = limits.get(self.venue.stream_kind(stream))
            if limit is not None and at - seen > limit:
                raise Stalled(stream, round(at - seen, 1))

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
        items = merger.on_frame(conn.name, raw, (conn.name, raw, frame), now)
        if merger.unverified_joins:
            self._report_unverified_joins(conn.route, merger)
        for item in items:
            self._handle_frame(*item)

    def _report_unverified_joins(self, route: str, merger: ReplicaMerger) -> None:
        """A replica that went live without overlapping its sibling may have left a hole (its sibling
        was behind when it dropped, say): recorded where it happened in the stream, never silent."""
        for replica, why in merger.unverified_joins:
            self.events["replica_gaps"] += 1
            self._feed_event("replica_gap", None, {"route": route, "replica": replica, "reason": why})
            log.warning("%s %s: %s; frames in between may be lost", self.venue.exchange, route, why)
        merger.unverified_joins.clear()

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
        if self.handler.new_catch_ups:
            for uncertain in self.handler.new_catch_ups:
                self._request_catch_up(uncertain.symbol_native, uncertain.since_ms, uncertain.reason)
            self.handler.new_catch_ups.clear()

    def _reset_books(self, conn: ConnectionState) -> None:
        """Forget the books a lost connection fed, except those a live replica still delivers
        (it carries on the same sequence, so the book stays exact)."""
        merger = self._mergers.get(conn.route)
        covered = set().union(*(c.received for c in self.connections.values()
                                if c.route == conn.route and c is not conn and merger is not None
                                and merger.is_live(c.name)))
        for native in sorted({self.venue.stream_symbol(s) for s in conn.streams
                              if self.venue.stream_kind(s) == self.venue.BOOK_STREAM and s not in covered}):
            self.handler.book_sync.reset(self.venue.normalize_symbol(native))

    # --- REST ----------------------------------------------------------------------------------

    def _background(self, coroutine) -> asyncio.Task:
        task = asyncio.create_task(coroutine)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)
        return task

    async def _resume_trades(self) -> None:
        """Continue each symbol's trades after what is durable: the id sequence and its unfinished
        backfills where the venue has one, else a catch-up by time from the newest durable trade."""
        if not self._state:
            # No earlier run from this run dir: whatever Kafka holds was published by someone else
            # (another home, another venue instance), so this run starts its own sequences. The
            # state is written at once, so even a run killed within a second is continued.
            self._status()
            return
        natives = {self.venue.normalize_symbol(s): s for s in self.config.symbols}
        spill_path = getattr(self.sink, "spill_path", None)
        # Venues whose mapper drops what was already published also get the durable funding
        # (polled settlements a restart must not publish again).
        kinds = (Trade, Funding) if type(self.venue).known_records is not Venue.known_records else (Trade,)
        spilled: dict[type, list] = {kind: [] for kind in kinds}
        in_kafka: dict[type, list] | None = {}
        for kind in kinds:
            if spill_path:
                spilled[kind] = await asyncio.to_thread(spill_records, spill_path, set(natives), kind)
            if in_kafka is None:
                continue
            try:
                in_kafka[kind] = await asyncio.to_thread(kafka_tail_records, self.venue, self.config.bootstrap,
                                                         set(natives), self.config.trade_tail_scan, 30.0, kind)
            except BrokerUnavailable as exc:
                log.warning("cannot read the tail of %s from Kafka (%s); continuing from the state file",
                            kind.topic, exc)
                in_kafka = None
        durable = [r for kind in kinds for r in spilled[kind] + (in_kafka or {}).get(kind, [])]
        self.venue.known_records(durable)
        self._resume_catch_ups(natives, [r for r in durable if isinstance(r, Trade)])
        spilled, in_kafka = spilled[Trade], None if in_kafka is None else in_kafka[Trade]
        kafka_ids = None if in_kafka is None else sequence_ids(self.venue, in_kafka)
        for plan in plan_resume(set(natives), self._state, sequence_ids(self.venue, spilled), kafka_ids):
            native = natives[plan.symbol]
            gaps = self.handler.seed_trade_sequence(native, plan.last_id, plan.missing)
            self._feed_event("trade_resume", native, {
                "last_id": plan.last_id, "source": plan.source, "missing": sum(hi - lo + 1 for lo, hi in plan.missing),
                "ranges": plan.missing[:100]})
            for gap in gaps:
                self._background(self._backfill_trades(gap))

    def _resume_catch_ups(self, natives: dict[str, str], durable: list[Trade]) -> None:
        """Venues caught up by time (the mapper already knows the durable trades: a backlog or REST
        page repeating them is dropped): the restart window is caught up from a little before the newest of them (records still in the killed producer's buffer
        may be older than it), or from the previous run's unfinished catch-up if that is older."""
        by_symbol: dict[str, list[Trade]] = {}
        for trade in durable:
            by_symbol.setdefault(trade.symbol, []).append(trade)
        saved = self._state.get("catch_up", {})
        for symbol, native in natives.items():
            if not self._catches_up_by_time(native):
                continue
            trades = by_symbol.get(symbol, [])
            entry = saved.get(symbol, {})
            newest = max((t.ts_exchange for t in trades), default=entry.get("newest_ms"))
            candidates = [] if newest is None else [newest - self.config.catch_up_lookback_ms]
            if entry.get("owed_since_ms") is not None:
                candidates.append(entry["owed_since_ms"])
            if not candidates:
                continue
            if newest is not None:
                self.handler.newest_trade_ms[native] = newest
            since = min(candidates)
            self._feed_event("trade_resume", native, {
                "newest_ms": newest, "since_ms": since, "durable_trades": len(trades),
                "source": "kafka" if trades else "state file", "owed_since_ms": entry.get("owed_since_ms")})
            self._request_catch_up(native, since, "restart")

    def _catches_up_by_time(self, native: str) -> bool:
        """The venue's trade ids are no sequence, but its REST trade history can be paged back."""
        return self.venue.trades_before_url(self.config.rest_url, native, None) is not None

    def _request_catch_up(self, native: str, since_ms: int, reason: str) -> None:
        """Catch up a market's trades since ``since_ms`` (venue time) from REST; a request made while
        one runs is run after it (the running one may have paged past its window already)."""
        if not self._catches_up_by_time(native):
            return
        since_ms -= self.venue.TRADE_TIME_SLACK_MS
        owed = self._catch_up_owed.get(native)
        self._catch_up_owed[native] = (since_ms, reason) if owed is None or since_ms < owed[0] else owed
        task = self._catch_ups.get(native)
        if task is None or task.done():
            self._catch_ups[native] = self._background(
                self._supervise(f"trade catch-up {native}", lambda: self._run_catch_ups(native), None))

    async def _run_catch_ups(self, native: str) -> None:
        while native in self._catch_up_running or native in self._catch_up_owed:
            if native not in self._catch_up_running:       # a crashed one is run again
                self._catch_up_running[native] = self._catch_up_owed.pop(native)
            since, reason = self._catch_up_running[native]
            await self._catch_up(native, since, reason)
            del self._catch_up_running[native]

    async def _catch_up(self, native: str, since: int, reason: str) -> None:
        """Page the venue's trade history back from now until it reaches ``since``; the trades the
        mapper does not have yet are published like live ones (liquidations and ADL fills with
        them). A page that cannot be fetched after ``CATCH_UP_ATTEMPTS``, a history that ends
        before ``since`` and a window over ``max_catch_up_pages`` are ``trade_lost`` events with the
        time range left uncovered."""
        await self._trades_live(native)
        cursor, pages, published, oldest, lost = None, 0, 0, None, None
        while True:
            url = self.venue.trades_before_url(self.config.rest_url, native, cursor)
            try:
                body, ts = await self._get(url, attempts=self.CATCH_UP_ATTEMPTS,
                                           what=f"trade catch-up {native} since {since} ms")
                page = self.venue.trade_page(url, orjson.loads(body))
            except (IngestError, orjson.JSONDecodeError, MalformedMessage) as exc:
                if not isinstance(exc, IngestError):     # a page that cannot be read: kept verbatim
                    self.handler.on_rejected_frame(body, ts, url, f"trade catch-up page: {exc}")
                lost = self._catch_up_lost(native, since, oldest, f"{exc.__class__.__name__}: {exc}")
                break
            before = self.handler.stats.records["trade"]
            self.handler.on_trade_page(url, body, ts, since)
            published += self.handler.stats.records["trade"] - before
            pages += 1
            if page.oldest_ms is not None:
                oldest = page.oldest_ms if oldest is None else min(oldest, page.oldest_ms)
            if oldest is None or oldest < since:
                break      # reached what was received before (or the market has no trade at all)
            if page.older is None:
                lost = self._catch_up_lost(native, since, oldest, "older than the venue's REST trade history")
                break
            if pages >= self.config.max_catch_up_pages:
                lost = self._catch_up_lost(native, since, oldest,
                                           f"more than {self.config.max_catch_up_pages} pages to catch up")
                break
            cursor = page.older
        self.events["trade_catch_ups"] += 1
        self.events["trades_caught_up"] += published
        self._feed_event("trade_catch_up", native, {"reason": reason, "since_ms": since, "pages": pages,
                                                    "trades": published, "lost_ms": lost})

    async def _trades_live(self, native: str) -> None:
        """Wait until a connection delivers the market's trades (its subscription answered): the
        first page, fetched after that, then reaches the stream's first trade, so nothing falls
        between the REST history and the stream (a reconnect, a start). Waits at most
        ``TRADES_LIVE_WAIT_S``; a connection that stays down is its own reconnect's catch-up."""
        def live(stream: str) -> bool:
            return self.venue.stream_kind(stream) == self.venue.TRADE_STREAM and \
                self.venue.stream_symbol(stream) == native
        deadline = time.monotonic() + self.TRADES_LIVE_WAIT_S
        while time.monotonic() < deadline and not self.stop.is_set():
            if any(c.state == "connected" and any(map(live, c.received)) for c in self.connections.values()):
                return
            await asyncio.sleep(0.05)

    def _catch_up_lost(self, native: str, since: int, until: int | None, reason: str) -> int | None:
        """Trades from ``since`` to ``until`` (venue ms; None: up to now) that a catch-up could not
        fetch: a ``trade_lost`` event with the range's length (their number is unknown)."""
        span = None if until is None else max(0, until - since)
        self.events["trade_catch_ups_incomplete"] += 1
        log.error("%s %s trades since %d ms not caught up: %s", self.venue.exchange, native, since, reason)
        self._feed_event("trade_lost", native, {"from_ms": since, "to_ms": until, "span_ms": span, "count": None,
                                                "reason": reason[:500]})
        return span

    def _catch_up_trades(self, native: str) -> None:
        """Trades published while a connection was down show as a gap only once a later trade arrives,
        which may be never (a quiet market, the end of a session); ask REST what follows the last id."""
        if self._catches_up_by_time(native):
            newest = self.handler.newest_trade_ms.get(native)
            if newest is not None:     # else the subscription's backlog is all there is to have
                self._request_catch_up(native, newest, "reconnect")
            return
        last = self.handler.trade_sequences().get(self.venue.normalize_symbol(native), {}).get("last_id")
        task = self._catch_ups.get(native)
        url = None if last is None else self.venue.trades_url(self.config.rest_url, native, last + 1)
        if url is None or (task is not None and not task.done()):
            return

        async def fetch() -> None:
            body, ts = await self._get(url, attempts=None, what=f"trade catch-up {native} from id {last + 1}")
            ids = self._trade_ids(url, body, ts)
            live_last = self.handler.trade_sequences().get(self.venue.normalize_symbol(native), {}).get("last_id")
            if last + 1 in ids and live_last == last:    # no live trade has shown the gap yet
                self.handler.trade_gaps[self.venue.normalize_symbol(native)] += 1
                self._feed_event("trade_gap", native, {"first_id": last + 1, "last_id": max(ids),
                                                       "found_by": "REST after a reconnect"})
            self.handler.on_rest(url, body, ts)

        self._catch_ups[native] = self._background(self._supervise(f"trade catch-up {native}", fetch, None))

    async def _backfill_trades(self, gap: TradeGap) -> None:
        await self._supervise(f"backfill {gap.symbol_native} {gap.first_id}-{gap.last_id}",
                              lambda: self._fill_gap(gap), None)

    async def _fill_gap(self, gap: TradeGap) -> None:
        """Fetch the ids a gap misses until none is missing or the rest is proven gone.

        429/418 wait out Retry-After, other failures back off; neither gives up. A stop leaves
        the unfinished range open, and the state file carries it to the next start. A restart
        after a crash picks up from what is still open.
        """
        native, first, last = gap.symbol_native, gap.first_id, gap.last_id
        cap, lost = self.config.max_backfill_ids, 0
        if last - first + 1 > cap:   # the oldest ids are the least likely to still be on the venue
            lost += self._give_up(native, first, last - cap, f"gap larger than the backfill cap of {cap} ids")
        empty_pages = 0
        while remaining := self.handler.open_trade_gaps(native, first, last):
            lo, hi = max(remaining[0][0], first), min(remaining[0][1], last)
            url = self.venue.trades_url(self.config.rest_url, native, lo, min(1000, hi - lo + 1))
            try:
                body, ts = await self._get(url, attempts=None, what=f"trade backfill {native} from id {lo}")
            except IngestError as exc:    # the venue refuses the request itself: retrying cannot help
                lost += self._give_up(native, lo, hi, str(exc))
                continue
            ids = self._trade_ids(url, body, ts)
            self.handler.on_rest(url, body, ts)
            if ids and ids[0] <= hi:
                empty_pages = 0
                if ids[0] > lo:
                    lost += self._give_up(native, lo, ids[0] - 1, "no longer in the venue's REST history")
                continue
            if ids:       # the venue's oldest id is past the whole range
                lost += self._give_up(native, lo, hi, "no longer in the venue's REST history")
                continue
            empty_pages += 1
            if empty_pages >= self.EMPTY_BACKFILL_PAGES:
                lost += self._give_up(native, lo, hi, f"the venue returned no trades from id {lo} {empty_pages} times")
                continue
            await asyncio.sleep(min(self.config.backoff_max_s, self.config.backoff_base_s * 2 ** empty_pages))
        self.events["trade_backfills"] += 1
        self.events["trades_backfilled"] += last - first + 1 - lost
        self._feed_event("trade_backfill", native, {"first_id": first, "last_id": last,
                                                    "filled": last - first + 1 - lost, "lost": lost})

    def _trade_ids(self, url: str, body: bytes, ts: int) -> list[int]:
        """Sorted sequence ids of the trades in a REST page (empty when it holds none or is unreadable)."""
        try:
            trades = self.venue.map_rest(url, orjson.loads(body), ts)
        except (orjson.JSONDecodeError, MalformedMessage, SkipMessage):
            return []
        ranges = [ids for ids in map(self.venue.trade_sequence, trades) if ids is not None]
        return sorted({i for first, last in ranges for i in range(first, last + 1)})

    def _give_up(self, native: str, first: int, last: int, reason: str) -> int:
        count = self.handler.give_up_trades(native, first, last, reason, time.time_ns())
        if count:
            log.error("%s %s trade ids %d-%d (%d) lost: %s", self.venue.exchange, native, first, last, count, reason)
            lost = self._lost_ranges.setdefault(self.venue.normalize_symbol(native), [])
            lost.append([first, last])
            del lost[:-LOST_RANGES_KEPT]
        return count

    def _want_snapshot(self, native: str) -> None:
        task = self._snapshot_tasks.get(native)
        if task is None or task.done():
            self._snapshot_tasks[native] = asyncio.create_task(
                self._supervise(f"depth snapshot {native}", lambda: self._fetch_snapshot(native), None))

    async def _fetch_snapshot(self, native: str) -> None:
        if self.venue.BOOK_RESYNC is BookResync.RESUBSCRIBE:
            await self._resubscribe_book(native)
            return
        url = self.venue.book_snapshot_url(self.config.rest_url, native)
        body, ts = await self._get(url, attempts=None, what=f"depth snapshot {native}")
        for again in self.handler.on_rest(url, body, ts):
            if again != native:
                self._want_snapshot(again)
            else:   # the snapshot did not bridge: ask again once this task is done
                asyncio.get_running_loop().call_soon(self._want_snapshot, native)

    async def _resubscribe_book(self, native: str) -> None:
        """Venues without a REST bridge push a fresh snapshot when the book stream is subscribed
        again; a connection that is down does so anyway when it reconnects. A snapshot that does not
        come is asked for again; after ``RESUBSCRIBE_ATTEMPTS``, or beyond a third of the venue's
        subscribe requests per hour and connection (a resubscribe costs two), the connection is
        closed, and its reconnect subscribes everything afresh."""
        symbol = self.venue.normalize_symbol(native)
        limit = self.venue.SUBSCRIBE_REQUESTS_PER_HOUR
        budget = float("inf") if limit is None else limit // 3
        for attempt in range(1, self.RESUBSCRIBE_ATTEMPTS + 1):
            for conn in self.connections.values():
                ws = self._sockets.get(conn.name)
                if ws is None:
                    continue
                for stream in conn.streams:
                    if self.venue.stream_kind(stream) != self.venue.BOOK_STREAM or self.venue.stream_symbol(stream) != native:
                        continue
                    now = time.monotonic()
                    recent = conn.resubscribed = [t for t in conn.resubscribed if now - t < 3600]
                    if attempt == self.RESUBSCRIBE_ATTEMPTS or len(recent) >= budget:
                        self._feed_event("resubscribe_failed", native, {**conn.detail, "attempts": attempt,
                                                                        "last_hour": len(recent)})
                        await ws.close(code=1000, reason="book snapshot never came: reconnecting")
                        return
                    try:
                        for frame in self.venue.resubscribe_frames(stream):
                            await ws.send(frame)
                    except ConnectionClosed:
                        # Going down already: its reconnect subscribes every stream afresh, and that
                        # brings the snapshot. Not a crash of this task (six of those stop the service).
                        return
                    recent.append(now)
                    self.events["resubscribes"] += 1
            deadline = time.monotonic() + self.RESUBSCRIBE_WAIT_S
            while time.monotonic() < deadline:
                if self.handler.book_sync.state(symbol).phase == SYNCED:
                    return
                await asyncio.sleep(0.1)

    async def _poll_open_interest(self) -> None:
        interval = self.config.oi_interval_s
        while True:
            for native in self.config.symbols:
                url = self.venue.open_interest_url(self.config.rest_url, native)
                if url is None:     # this venue pushes open interest
                    continue
                try:
                    body, ts = await self._get(url, attempts=3, what=f"open interest {native}")
                except IngestError as exc:
                    log.warning("open interest %s: %s", native, exc)
                    continue
                if body != self._last_oi.get(native):    # unchanged polls carry no information
                    self._last_oi[native] = body
                    self.handler.on_rest(url, body, ts)
            # Stay well inside the venue's weight budget: slow down when others use it up.
            busy = self.rest_weight > 0.8 * self.venue.REST_WEIGHT_LIMIT
            await asyncio.sleep(interval * (4 if busy else 1))

    async def _poll(self, poll) -> None:
        """One of the venue's periodic requests (``Venue.polls``), at most once per ``interval_s`` and
        within the polls' share of the REST budget. A request that fails is a ``poll_failed`` feed
        event and a body that cannot be mapped a dead letter; either way the poll goes on."""
        state = self._polls[poll.url] = {"interval_s": poll.interval_s, "ok": 0, "failed": 0, "dead_letters": 0,
                                         "failing": None}
        while True:
            started = time.monotonic()
            await self._spend_poll_weight(poll.weight)
            try:
                body, ts = await self._get(poll.url, attempts=2, what=f"poll {poll.url}")
            except IngestError as exc:
                state["failed"] += 1
                state["failing"] = str(exc)[:200]
                self.events["poll_errors"] += 1
                self._feed_event("poll_failed", None, {"url": poll.url, "reason": str(exc)[:500]})
            else:
                letters = sum(self.handler.stats.dead_letters.values())
                self.handler.on_rest(poll.url, body, ts)
                state["dead_letters"] += sum(self.handler.stats.dead_letters.values()) - letters
                state["ok"] += 1
                state["failing"] = None
            # Slow down when the venue reports its weight nearly used up by others.
            busy = self.rest_weight > 0.8 * self.venue.REST_WEIGHT_LIMIT
            await asyncio.sleep(max(0.0, poll.interval_s * (4 if busy else 1) - (time.monotonic() - started)))

    async def _spend_poll_weight(self, weight: int) -> None:
        """Wait until the polls' budget over the last ``POLL_WINDOW_S`` has room for ``weight``."""
        limit = self.POLL_BUDGET_SHARE * self.rest_weight_limit
        deferred = False
        while True:
            now = time.monotonic()
            while self._poll_spent and now - self._poll_spent[0][0] >= self.POLL_WINDOW_S:
                self._poll_spent.popleft()
            if not self._poll_spent or sum(w for _, w in self._poll_spent) + weight <= limit:
                self._poll_spent.append((now, weight))
                return
            if not deferred:
                deferred = True
                self.events["polls_deferred"] += 1
            await asyncio.sleep(self.POLL_WINDOW_S - (now - self._poll_spent[0][0]) + 0.01)

    async def _get_json(self, url: str, **kwargs):
        body, _ = await self._get(url, **kwargs)
        return orjson.loads(body)

    async def _get(self, url: str, attempts: int | None = 5, weight_ok: bool = False,
                   what: str | None = None) -> tuple[bytes, int]:
        """GET (or the POST ``venue.rest_request`` asks for) with backoff; honours Retry-After on
        429/418; raises IngestError after ``attempts``.

        While it waits before a retry, ``what`` (default: the URL) is listed in the status.
        """
        attempt = 0
        while True:
            attempt += 1
            try:
                target, payload = self.venue.rest_request(url)
                request = self._session.get(url) if payload is None else self._session.post(
                    target, data=payload, headers={"Content-Type": "application/json"})
                async with request as response:
                    body = await response.read()
                    ts = time.time_ns()
                    weight = response.headers.get(self.venue.WEIGHT_HEADER) if self.venue.WEIGHT_HEADER else None
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
            token = object()
            self._waits[id(token)] = {"what": what or url, "until": time.time() + delay, "reason": problem[:120]}
            try:
                await asyncio.sleep(delay)
            finally:
                del self._waits[id(token)]

    # --- Kafka outage handling and status --------------------------------------------------------

    async def _drain_spill(self) -> None:
        while True:
            if self.sink.spilling:
                await asyncio.to_thread(self.sink.drain)
            await asyncio.sleep(1.0)

    async def _send_due_packs(self) -> None:
        while True:
            await asyncio.sleep(self.sink.pack_ms / 2000)
            self.sink.flush_due()

    def _feed_event(self, kind: str, symbol: str | None, detail: dict) -> None:
        self.handler.emit_record(FeedEvent(exchange=self.venue.exchange,
                                     symbol=self.venue.normalize_symbol(symbol) if symbol else None,
                                     kind=kind, detail=orjson.dumps(detail).decode(), ts_recv=time.time_ns()))

    async def _write_status(self) -> None:
        while True:
            self._status()
            await asyncio.sleep(self.config.status_interval_s)

    def _sink_status(self) -> dict:
        return self.sink.status()

    def _run_counters(self) -> Counter:
        """This run's counters, flat, as added to the totals of earlier runs."""
        stats = self.handler.stats
        counters = Counter(self.events)
        counters.update(messages=stats.messages, dead_letters=sum(stats.dead_letters.values()),
                        book_gaps=self.handler.book_sync.counts["gaps"],
                        trades_lost=sum(self.handler.lost_trades.values()),
                        trade_gaps=sum(self.handler.trade_gaps.values()))
        counters.update({f"records_{kind}": n for kind, n in stats.records.items()})
        return counters

    def _health(self, sink: dict, trades: dict) -> str:
        """"running" only when nothing is wrong; otherwise "degraded: <what is wrong>"."""
        if self.failure:
            return "failed"
        problems = []
        if sink.get("kafka") != "reachable":
            problems.append(f"Kafka {sink.get('kafka')}")
        if sink.get("spilling"):
            problems.append("spilling to disk")
        problems += [f"{c.name} connection {c.state}" for c in self.connections.values() if c.state != "connected"]
        missing = sum(t["missing"] for t in trades.values())
        if missing:
            problems.append(f"{missing:,} trades missing")
        catching_up = set(self._catch_up_running) | set(self._catch_up_owed)
        if catching_up:
            problems.append(f"trades catching up from REST: {', '.join(sorted(catching_up))}")
        if self._waits:
            problems.append(f"{len(self._waits)} REST calls backing off")
        problems += [f"poll failing: {url}" for url, poll in self._polls.items() if poll["failing"]]
        now = time.monotonic()
        recent = {name for t, name, _ in self._task_errors if now - t < RECENT_TASK_ERROR_S}
        if recent:
            problems.append(f"task restarted: {', '.join(sorted(recent))}")
        if self._status_error:
            problems.append(f"state not saved: {self._status_error}")
        return "degraded: " + "; ".join(problems) if problems else "running"

    def status(self) -> dict:
        stats, now = self.handler.stats, time.monotonic()
        elapsed = now - self._rate["t"]
        if elapsed >= 1.0:
            self._rate.update(per_s=(stats.messages - self._rate["messages"]) / elapsed, t=now,
                              messages=stats.messages)
        sink = self._sink_status()
        trades = self.handler.trade_sequences()
        run = self._run_counters()
        return {
            "service": "ingest", "exchange": self.venue.exchange, "pid": os.getpid(), "symbols": self.config.symbols,
            "shard": str(self.config.shard) if self.config.shard else None, "rest_weight_limit": self.rest_weight_limit,
            "state": self._health(sink, trades), "started_at": self.started, "updated_at": time.time(),
            "messages": stats.messages,
            "messages_per_s": round(self._rate["per_s"], 1), "records": dict(stats.records),
            "skipped": sum(stats.skipped.values()), "dead_letters": sum(stats.dead_letters.values()),
            "gaps": self.handler.book_sync.counts["gaps"], "resyncs": self.handler.book_sync.counts["resyncs"],
            "missing_trades": self.handler.missing_trades(), "trades": trades,
            "events": dict(self.events), "rest_weight_1m": self.rest_weight,
            "backoffs": sorted(self._waits.values(), key=lambda w: w["until"]),
            "task_errors": [{"task": name, "reason": reason, "age_s": round(now - t)}
                            for t, name, reason in self._task_errors[-5:]],
            "kafka": sink.get("kafka"), "sink": sink,
            "spilling": sink.get("spilling", False), "spill_bytes": sink.get("spill_bytes", 0),
            "spilled_total": sink.get("spilled_total", 0), "kafka_outages": sink.get("outages", 0),
            "counters_run": dict(run), "counters_total": dict(self._totals_base + run),
            "polls": {url: dict(poll) for url, poll in self._polls.items()},
            "trade_catch_ups": {native: {"running_since_ms": (self._catch_up_running.get(native) or (None,))[0],
                                         "owed_since_ms": (self._catch_up_owed.get(native) or (None,))[0]}
                                for native in sorted(set(self._catch_up_running) | set(self._catch_up_owed))},
            "connections": {c.name: {"state": c.state, "connects": c.connects,
                                     "silent_s": {s: round(now - t, 1) for s, t in c.last_seen.items()}}
                            for c in self.connections.values()},
        }

    def _state_record(self) -> dict:
        trades = {}
        for symbol, seq in self.handler.trade_sequences().items():
            if seq["last_id"] is not None:
                trades[symbol] = {"last_id": seq["last_id"], "open": seq["open"],
                                  "lost": self._lost_ranges.get(symbol, [])}
        catch_up = {}
        for native, newest in self.handler.newest_trade_ms.items():
            if not self._catches_up_by_time(native):
                continue
            owed = [c[0] for c in (self._catch_up_running.get(native), self._catch_up_owed.get(native)) if c]
            catch_up[self.venue.normalize_symbol(native)] = {"newest_ms": newest,
                                                             "owed_since_ms": min(owed) if owed else None}
        return {"version": STATE_VERSION, "exchange": self.venue.exchange, "saved_at": time.time(),
                "trades": trades, "catch_up": catch_up, "totals": dict(self._totals_base + self._run_counters())}

    def _status(self, final: bool = False) -> None:
        """Write the state file and the status file; a full disk is reported, not fatal."""
        status = self.status()
        if final:
            status["state"] = "failed" if self.failure else "stopped"
            status["exit_code"] = IngestFailed.exit_code if self.failure else 0
        if self.failure:
            status["failure"] = self.failure
        try:
            self.config.run_dir.mkdir(parents=True, exist_ok=True)
            save_state(self.state_path, self._state_record())
            tmp = self.status_path.with_suffix(".tmp")
            tmp.write_text(json.dumps(status))
            os.replace(tmp, self.status_path)
        except OSError as exc:
            if self._status_error is None:
                log.error("cannot write %s: %s (pending backfills survive a restart only once it can)",
                          self.config.run_dir, exc)
            self._status_error = f"{exc.__class__.__name__}: {exc.strerror or exc}"
            self.events["state_write_errors"] += 1
        else:
            self._status_error = None


def spill_file(run_dir: Path, exchange: str, shard: Shard | None) -> Path:
    return run_dir / f"spill-{exchange}{file_suffix(shard)}.jsonl"


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
