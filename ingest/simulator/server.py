"""Local Binance USD-M endpoint: websocket streams and REST, paced in simulated time.

One aiohttp application on one port serves what an ingestor talks to on fstream/fapi:

* ``/public/stream?streams=`` and ``/market/stream?streams=`` (combined envelope), ``/public/ws/<s>``
  and ``/market/ws/<s>`` (raw payloads), JSON SUBSCRIBE / UNSUBSCRIBE / LIST_SUBSCRIPTIONS.
  Routing is enforced like Binance after the 2026 URL split: a stream on the wrong path, and any
  market stream on the legacy ``/stream`` / ``/ws`` paths, is acknowledged but never delivered;
* server ping frames every ``ws_ping_interval_s`` wall seconds (pong required within
  ``ws_pong_timeout_s``) and a maximum connection lifetime counted in *simulated* seconds, so
  24 h rotation is exercised by a compressed day;
* ``/fapi/v1/*`` REST with per-IP request weight per wall-clock minute (``x-mbx-used-weight-1m``),
  HTTP 429 ``-1003`` plus ``Retry-After`` above the limit, Binance-style 400s for bad parameters;
* ``/futures/data/globalLongShortAccountRatio``, ``topLongShortAccountRatio``,
  ``topLongShortPositionRatio`` and ``takerlongshortRatio`` (period 5m only) from the market's
  positioning truth (``ingest.simulator.positioning``; top traders: the top 20% by margin), the
  open period last; weight 0, but 1000 requests per 5 wall minutes, as Binance limits them;
* fault injection: abrupt connection drops (all at once, or the longest-open one), hostile frames
  (text that is not UTF-8, frames of tens of megabytes) and REST 429/5xx (the feed injects the rest);
  venue outages: while one venue is down (``FaultConfig.outages``) its open connections are cut, its
  websocket upgrades and REST calls are answered 503, and the other venues are served as usual.

The market advances in model steps (100 ms unless ``SimConfig.step_ms`` says otherwise) paced at ``speed`` simulated seconds per wall second; a step's
messages go out once the wall clock reaches the step's end (no event is sent before it happened);
when the model cannot keep up it runs flat out. ``Simulator.clock`` maps market time to wall time. Payloads are built only for streams with subscribers.
"""

from __future__ import annotations

import asyncio
import threading
import time
from collections import deque
from dataclasses import dataclass

import orjson
from aiohttp import WSMsgType, web

from .config import ALL_LIQUIDATIONS_STREAM, MARKET_STREAM_KINDS, PUBLIC_STREAM_KINDS, SimConfig
from .dialects import Dialect, dialect_classes
from .feed import DEPTH_LIMITS, ExchangeFeed, Message, UnknownSymbol
from .faults import MalformedFrame, hostile_frame
from .positioning import ratio, share

MAX_STEPS_PER_TICK = 25          # yield to the event loop (writers, REST) at least this often
MAX_OUTBOX = 250_000             # frames queued for one connection before it is dropped as too slow
DEPTH_WEIGHT = {5: 2, 10: 2, 20: 2, 50: 2, 100: 5, 500: 10, 1000: 20}
CLOSE_GOING_AWAY = 1001
CLOSE_POLICY = 1008
CLOSE_TIMEOUT_S = 2.0
FUTURES_DATA = ("globalLongShortAccountRatio", "topLongShortAccountRatio", "topLongShortPositionRatio",
                "takerlongshortRatio")
FUTURES_DATA_LIMIT = (1000, 300.0)   # requests per wall seconds, per IP, apart from the request weight
TOP_TRADERS = (0.20, "margin")       # Binance's top traders: the top 20% of accounts by margin balance


class BinanceError(Exception):
    def __init__(self, status: int, code: int, msg: str):
        super().__init__(msg)
        self.status, self.code, self.msg = status, code, msg


class Connection:
    """One websocket client: what it subscribed to and the frames waiting to be written."""

    def __init__(self, ws: web.WebSocketResponse, request: web.Request, route: str, combined: bool,
                 opened_sim_ms: int, serial: int, dialect=None):
        self.ws = ws
        self.dialect = dialect          # None: Binance, the feed's own format
        self.underlying: dict[str, set[str]] = {}   # a dialect client's feed streams -> its topics
        self.serial = serial            # opening order: the longest-open connection has the lowest
        self.request = request
        self.route = route
        self.combined = combined
        self.subscriptions: list[str] = []
        self.outbox: deque[bytes] = deque()
        self.wake = asyncio.Event()
        self.opened_sim_ms = opened_sim_ms
        self.last_pong = time.monotonic()
        self.closing = False

    def close_soon(self, code: int, reason: bytes) -> None:
        """Close from synchronous code (the market loop) exactly once."""
        if not self.closing and not self.ws.closed:
            self.closing = True
            asyncio.create_task(self.ws.close(code=code, message=reason))


class _VenueRoutes:
    """The application as one venue's routes see it: every handler it adds answers 503 while that
    venue is in an outage (websocket upgrades included, so connecting fails like a venue's load
    balancer refusing it)."""

    def __init__(self, app: web.Application, server: "Simulator", venue: str):
        self._app, self._server, self._venue = app, server, venue
        self.router = self

    def add_get(self, path: str, handler):
        return self._app.router.add_get(path, self._server.outage_gate(self._venue, handler))

    def add_post(self, path: str, handler):
        return self._app.router.add_post(path, self._server.outage_gate(self._venue, handler))


@dataclass(frozen=True)
class MarketClock:
    """When the server's market clock started, to convert market (event) time to wall time:
    event time ``market_ms`` was published at epoch ``epoch_ns``, and the market runs ``speed``
    simulated seconds per wall second from there (while the model keeps up; ``lag_ms`` says
    when it does not)."""

    epoch_ns: int
    market_ms: int
    speed: float

    def wall_ns(self, ts_ms):
        """Epoch nanoseconds at which market time ``ts_ms`` (a number or a numpy array) was due."""
        return self.epoch_ns + (ts_ms - self.market_ms) * (1e6 / self.speed)


class Simulator:
    """The simulated exchange as an async context manager::

        async with Simulator(SimConfig(scenario="cascade", speed=120)) as sim:
            print(sim.ws_url, sim.http_url)
            await sim.finished()
    """

    def __init__(self, config: SimConfig, host: str = "127.0.0.1", port: int = 0):
        self.config = config.resolved()
        self.host = host
        self._requested_port = port
        self.port: int | None = None
        self.feed: ExchangeFeed | None = None
        self._subscribers: dict[str, set[Connection]] = {}
        self._connections: set[Connection] = set()
        self._weights: dict[str, tuple[int, int]] = {}
        self._futures_data_calls: deque = deque()       # wall times of /futures/data requests
        self._done = asyncio.Event()
        self._runner: web.AppRunner | None = None
        self.dialects: dict = {}
        self._stepping: list = []       # dialects with work of their own after each market step
        self._tasks: list[asyncio.Task] = []
        self._error: Exception | None = None
        self.frames_sent = 0
        self.lag_ms = 0
        self.clock: MarketClock | None = None           # set when the market starts
        self._opened = 0
        self._awaiting_replacement: set[tuple] = set()    # drop mode one: streams of a dropped connection
        self._hostile_sent = 0
        self._outages: list[tuple[str, int, int]] = []     # (venue, start ms, end ms)
        self._venues_down: set[str] = set()

    # ------------------------------------------------------------------ lifecycle
    async def __aenter__(self) -> "Simulator":
        await self.start()
        return self

    async def __aexit__(self, *exc) -> None:
        await self.stop()

    @property
    def ws_url(self) -> str:
        return f"ws://{self.host}:{self.port}"

    @property
    def http_url(self) -> str:
        return f"http://{self.host}:{self.port}"

    @property
    def connection_count(self) -> int:
        return len(self._connections)

    async def start(self) -> None:
        self.feed = ExchangeFeed(self.config)
        self._outages = [(o.venue, *o.window_ms(self.feed.start_ms)) for o in self.config.faults.outages]
        root = web.Application()
        app = _VenueRoutes(root, self, "binance-usdm")
        for prefix, route in (("/public", "public"), ("/market", "market"), ("", "legacy")):
            app.router.add_get(f"{prefix}/stream", self._combined_handler(route))
            app.router.add_get(f"{prefix}/ws", self._raw_handler(route))
            app.router.add_get(f"{prefix}/ws/{{streams:.+}}", self._raw_handler(route))
        rest = {
            "depth": self._rest_depth, "openInterest": self._rest_open_interest,
            "exchangeInfo": self._rest_exchange_info, "premiumIndex": self._rest_premium_index,
            "fundingInfo": self._rest_funding_info, "time": self._rest_time, "ping": self._rest_ping,
            "aggTrades": self._rest_agg_trades,
        }
        for name, handler in rest.items():
            app.router.add_get(f"/fapi/v1/{name}", self._rest_handler(handler))
        for name in FUTURES_DATA:
            app.router.add_get(f"/futures/data/{name}",
                               self._rest_handler(lambda params, name=name: self._rest_positioning(name, params)))
        self.dialects = {name: cls(self) for name, cls in dialect_classes().items() if name in self.config.venues}
        for dialect in self.dialects.values():
            dialect.add_routes(_VenueRoutes(root, self, dialect.name))
        self._stepping = [d for d in self.dialects.values() if type(d).on_step is not Dialect.on_step]
        self._runner = web.AppRunner(root, handle_signals=False, access_log=None)
        await self._runner.setup()
        site = web.TCPSite(self._runner, self.host, self._requested_port)
        await site.start()
        self.port = self._runner.addresses[0][1]
        self._tasks.append(asyncio.create_task(self._run_market(), name="simulator-market"))

    async def finished(self) -> None:
        """Wait until the scenario has been fully simulated and published; re-raises a failure
        of the market loop instead of hiding it behind an early finish."""
        await self._done.wait()
        if self._error is not None:
            raise self._error

    async def stop(self) -> None:
        for task in self._tasks:
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        self._tasks.clear()
        for conn in list(self._connections):
            await conn.ws.close(code=CLOSE_GOING_AWAY, message=b"server shutting down")
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None
        if self.feed is not None:
            self.feed.close()

    # ------------------------------------------------------------------ market pacing
    async def _run_market(self) -> None:
        loop = asyncio.get_running_loop()
        feed = self.feed
        epoch_ns = time.time_ns()    # read first, so the clock never says a message was due after it was sent
        wall0 = loop.time()
        sim0 = feed.now_ms
        speed = self.config.speed
        step_ms = feed.model.step_ms
        self.clock = MarketClock(epoch_ns=epoch_ns, market_ms=sim0, speed=speed)
        wanted = self._subscribers.__contains__
        try:
            while not feed.finished:
                target = sim0 + (loop.time() - wall0) * speed * 1000.0
                steps = 0
                # A step covers (now_ms, now_ms + step_ms]: it is sent once its end is due.
                while feed.now_ms + step_ms <= target and not feed.finished and steps < MAX_STEPS_PER_TICK:
                    self._dispatch(feed.step(wanted))
                    for dialect in self._stepping:
                        self._dispatch_step(dialect)
                    if feed.pending_drops:
                        self._drop_connections()
                    if feed.pending_hostile:
                        self._send_hostile_frames()
                    if self._outages:
                        self._enforce_outages()
                    steps += 1
                self.lag_ms = max(0, int(target - feed.now_ms - step_ms))
                self._expire_connections()
                next_wall = wall0 + (feed.now_ms + step_ms - sim0) / (speed * 1000.0)
                await asyncio.sleep(max(0.0, min(next_wall - loop.time(), 0.05)))
        except Exception as exc:
            self._error = exc
        finally:
            feed.close()
            self._done.set()

    def _dispatch(self, messages: list[Message]) -> None:
        touched: set[Connection] = set()
        for _, stream, payload in messages:
            conns = self._subscribers.get(stream)
            if not conns:
                continue
            native = [c for c in conns if c.dialect is None]
            if len(native) < len(conns):
                self._dispatch_dialects(stream, payload, [c for c in conns if c.dialect is not None], touched)
                if not native:
                    continue
                conns = native
            if isinstance(payload, MalformedFrame):
                raw = payload.text.encode()
                combined = b'{"stream":"' + stream.encode() + b'","data":' + raw
            else:
                raw = orjson.dumps(payload)
                combined = b'{"stream":"' + stream.encode() + b'","data":' + raw + b"}"
            for conn in conns:
                conn.outbox.append(combined if conn.combined else raw)
                touched.add(conn)
            self.frames_sent += len(conns)
        for conn in touched:
            if len(conn.outbox) > MAX_OUTBOX:
                conn.outbox.clear()
                conn.close_soon(CLOSE_POLICY, b"too slow: outbound queue overflow")
            conn.wake.set()

    def _dispatch_dialects(self, stream: str, payload, conns: list[Connection], touched: set[Connection]) -> None:
        by_dialect: dict = {}
        for conn in conns:
            by_dialect.setdefault(conn.dialect, []).append(conn)
        for dialect, members in by_dialect.items():
            if isinstance(payload, MalformedFrame):     # the fault reaches every dialect's clients as is
                frames = {topic: [payload.text.encode()] for c in members for topic in c.underlying[stream]}
            else:
                frames = dialect.encode(stream, payload, set().union(*(c.underlying[stream] for c in members)))
            stamp = dialect.frame_for if type(dialect).frame_for is not Dialect.frame_for else None
            for conn in members:
                for topic in conn.underlying[stream]:
                    for frame in frames.get(topic, ()):
                        frame = frame if stamp is None else stamp(conn, frame)
                        if frame is None:      # lost in transit (a dialect's fault)
                            continue
                        conn.outbox.append(frame)
                        touched.add(conn)
                        self.frames_sent += 1

    def _dispatch_step(self, dialect) -> None:
        """A dialect's own work after a market step (``Dialect.on_step``): its frames go to the
        connections subscribed to their topics, each through ``frame_for``."""
        members = [c for c in self._connections if c.dialect is dialect]
        frames = dialect.on_step({t for c in members for t in c.subscriptions})
        if not frames:
            return
        for conn in members:
            for topic in conn.subscriptions:
                for frame in frames.get(topic, ()):
                    frame = dialect.frame_for(conn, frame)
                    if frame is None:          # lost in transit (a dialect's fault)
                        continue
                    conn.outbox.append(frame)
                    self.frames_sent += 1
            if len(conn.outbox) > MAX_OUTBOX:
                conn.outbox.clear()
                conn.close_soon(CLOSE_POLICY, b"too slow: outbound queue overflow")
            conn.wake.set()

    def subscribe_topic(self, conn: Connection, topic: str, streams: list[str]) -> None:
        """A dialect client's ``topic``, fed by the feed's ``streams``."""
        if topic not in conn.subscriptions:
            conn.subscriptions.append(topic)
        for stream in streams:
            conn.underlying.setdefault(stream, set()).add(topic)
            self._subscribers.setdefault(stream, set()).add(conn)

    def unsubscribe_topic(self, conn: Connection, topic: str) -> None:
        if topic in conn.subscriptions:
            conn.subscriptions.remove(topic)
        for stream, topics in list(conn.underlying.items()):
            topics.discard(topic)
            if not topics:
                del conn.underlying[stream]
                self._forget_subscriber(stream, conn)

    def _forget_subscriber(self, stream: str, conn: Connection) -> None:
        conns = self._subscribers.get(stream)
        if conns is not None:
            conns.discard(conn)
            if not conns:
                del self._subscribers[stream]

    def _drop_connections(self) -> None:
        feed = self.feed
        if feed.config.faults.drop_mode == "all":
            victims = list(self._connections)
            while feed.pending_drops:
                feed.pending_drops -= 1
                feed.record_fault(feed.now_ms, "drop", mode="all", connections=len(victims))
        else:
            # One connection down at a time: a drop falls due only once the client has replaced the
            # previous victim (under load the market loop catches up in bursts, and back-to-back
            # drops would take down every replica of a stream at once: an outage, not a single drop).
            if self._awaiting_replacement or not self._connections:
                return
            feed.pending_drops -= 1
            conn = min(self._connections, key=lambda c: c.serial)
            victims = [conn]
            # Siblings: other open connections serving the same streams (a client's replicas).
            key = self._streams_key(conn)
            siblings = sum(1 for c in self._connections if c is not conn and self._streams_key(c) == key)
            feed.record_fault(feed.now_ms, "drop", mode="one", connections=1, route=conn.route, siblings=siblings)
            self._awaiting_replacement.add(key)
        for conn in victims:
            self._connections.discard(conn)    # its handler's cleanup may run later; never drop it twice
            transport = conn.request.transport
            if transport is not None:
                transport.abort()

    def venue_down(self, venue: str) -> bool:
        now = self.feed.now_ms
        return any(v == venue and start <= now < end for v, start, end in self._outages)

    def outage_gate(self, venue: str, handler):
        """``handler`` answering 503 while ``venue`` is down (each refusal is a truth fault)."""
        async def gated(request: web.Request) -> web.StreamResponse:
            if not self.venue_down(venue):
                return await handler(request)
            upgrade = request.headers.get("Upgrade", "").lower() == "websocket"
            self.feed.record_fault(self.feed.now_ms, "outage_refused", venue=venue, path=request.path,
                                   kind="websocket" if upgrade else "rest", status=503)
            return web.Response(status=503, text=f"{venue} is unavailable (simulated outage)")
        return gated

    def _enforce_outages(self) -> None:
        """Cut every open connection of a venue as its outage begins."""
        down = {v for v, _, _ in self._outages if self.venue_down(v)}
        for venue in down - self._venues_down:
            victims = [c for c in self._connections if (c.dialect.name if c.dialect else "binance-usdm") == venue]
            end = max(e for v, s, e in self._outages if v == venue and s <= self.feed.now_ms < e)
            self.feed.record_fault(self.feed.now_ms, "outage", venue=venue, end_ts=end, connections=len(victims))
            for conn in victims:
                self._connections.discard(conn)
                transport = conn.request.transport
                if transport is not None:
                    transport.abort()
        self._venues_down = down

    @staticmethod
    def _streams_key(conn: Connection) -> tuple:
        return conn.route, conn.combined, frozenset(conn.subscriptions)

    def _send_hostile_frames(self) -> None:
        feed = self.feed
        for kind in feed.pending_hostile:
            marker = f"hostile-{self._hostile_sent}"
            self._hostile_sent += 1
            frame = hostile_frame(kind, marker, feed.config.faults.hostile_frame_bytes)
            for conn in self._connections:
                conn.outbox.append(frame)
                conn.wake.set()
            feed.record_fault(feed.now_ms, "hostile", kind=kind, marker=marker, bytes=len(frame),
                              connections=len(self._connections))
        feed.pending_hostile.clear()

    def _expire_connections(self) -> None:
        limit_ms = self.config.ws_max_lifetime_s * 1000
        now = self.feed.now_ms
        for conn in list(self._connections):
            if now - conn.opened_sim_ms >= limit_ms:
                conn.close_soon(CLOSE_GOING_AWAY, b"connection lifetime exceeded")

    # ------------------------------------------------------------------ websocket
    def _combined_handler(self, route: str):
        async def handler(request: web.Request) -> web.StreamResponse:
            streams = [s for s in request.query.get("streams", "").split("/") if s]
            return await self.serve_ws(request, route, True, streams)
        return handler

    def _raw_handler(self, route: str):
        async def handler(request: web.Request) -> web.StreamResponse:
            streams = [s for s in request.match_info.get("streams", "").split("/") if s]
            return await self.serve_ws(request, route, False, streams)
        return handler

    def _deliverable(self, route: str, stream: str) -> bool:
        """Whether Binance would push this stream on this path (post-2026 routing)."""
        if stream == ALL_LIQUIDATIONS_STREAM:
            kind = "forceOrder"
        else:
            prefix, _, kind = stream.partition("@")
            if prefix.upper() not in self.feed.symbols or prefix != prefix.lower():
                return False
        if kind in PUBLIC_STREAM_KINDS:
            return route in ("public", "legacy")
        if kind in MARKET_STREAM_KINDS:
            return route == "market"
        return False

    def _subscribe(self, conn: Connection, streams: list[str]) -> None:
        for stream in streams:
            if stream in conn.subscriptions:
                continue
            conn.subscriptions.append(stream)
            if self._deliverable(conn.route, stream):
                self._subscribers.setdefault(stream, set()).add(conn)

    def _unsubscribe(self, conn: Connection, streams: list[str]) -> None:
        for stream in streams:
            if stream in conn.subscriptions:
                conn.subscriptions.remove(stream)
            conns = self._subscribers.get(stream)
            if conns is not None:
                conns.discard(conn)
                if not conns:
                    del self._subscribers[stream]

    async def serve_ws(self, request: web.Request, route: str, combined: bool, streams: list[str], dialect=None,
                       on_open=None):
        """One websocket client until it leaves; ``on_open(conn)`` subscribes a dialect client to what
        its URL names."""
        ws = web.WebSocketResponse(autoping=False, compress=False, max_msg_size=1 << 16, timeout=CLOSE_TIMEOUT_S)
        await ws.prepare(request)
        self._opened += 1
        conn = Connection(ws, request, route, combined, self.feed.now_ms, self._opened, dialect)
        self._connections.add(conn)
        self._subscribe(conn, streams)
        if on_open is not None:
            on_open(conn)
        self._awaiting_replacement.discard(self._streams_key(conn))
        writer = asyncio.create_task(self._write_loop(conn))
        pinger = asyncio.create_task(self._ping_loop(conn))
        try:
            async for msg in ws:
                if msg.type == WSMsgType.TEXT:
                    (dialect.on_text if dialect else self._handle_command)(conn, msg.data)
                elif msg.type == WSMsgType.PING:
                    await ws.pong(msg.data)
                elif msg.type == WSMsgType.PONG:
                    conn.last_pong = time.monotonic()
        finally:
            self._connections.discard(conn)
            if dialect is None:
                self._unsubscribe(conn, list(conn.subscriptions))
            else:
                dialect.on_close(conn)
                for topic in list(conn.subscriptions):
                    self.unsubscribe_topic(conn, topic)
            writer.cancel()
            pinger.cancel()
        return ws

    async def _write_loop(self, conn: Connection) -> None:
        ws = conn.ws
        try:
            while not ws.closed:
                await conn.wake.wait()
                conn.wake.clear()
                while conn.outbox and not ws.closed:
                    await ws.send_frame(conn.outbox.popleft(), WSMsgType.TEXT)
        except (ConnectionError, RuntimeError):
            return

    async def _ping_loop(self, conn: Connection) -> None:
        interval = self.config.ws_ping_interval_s
        timeout = self.config.ws_pong_timeout_s
        try:
            while not conn.ws.closed:
                await asyncio.sleep(interval)
                if time.monotonic() - conn.last_pong > timeout + interval:
                    await conn.ws.close(code=CLOSE_GOING_AWAY, message=b"pong timeout")
                    return
                await conn.ws.ping(b"")
        except (ConnectionError, RuntimeError):
            return

    def _reply(self, conn: Connection, body: dict) -> None:
        conn.outbox.append(orjson.dumps(body))
        conn.wake.set()

    def _handle_command(self, conn: Connection, text: str) -> None:
        """Binance JSON control messages on a market-data connection."""
        try:
            request = orjson.loads(text)
        except orjson.JSONDecodeError as exc:
            self._reply(conn, {"error": {"code": 3, "msg": f"Invalid JSON: {exc}"}, "id": None})
            return
        if not isinstance(request, dict):
            self._reply(conn, {"error": {"code": 2, "msg": "Invalid request: expected an object"}, "id": None})
            return
        req_id = request.get("id")
        if not isinstance(req_id, int) or isinstance(req_id, bool) or req_id < 0:
            self._reply(conn, {"error": {"code": 2, "msg": "Invalid request: request ID must be an unsigned integer"},
                               "id": None})
            return
        method = request.get("method")
        params = request.get("params", [])
        if method in ("SUBSCRIBE", "UNSUBSCRIBE"):
            if not isinstance(params, list) or not all(isinstance(p, str) for p in params):
                self._reply(conn, {"error": {"code": 1, "msg": "Invalid value type: expected a list of stream names"},
                                   "id": req_id})
                return
            (self._subscribe if method == "SUBSCRIBE" else self._unsubscribe)(conn, params)
            self._reply(conn, {"result": None, "id": req_id})
        elif method == "LIST_SUBSCRIPTIONS":
            self._reply(conn, {"result": list(conn.subscriptions), "id": req_id})
        else:
            self._reply(conn, {"error": {"code": 2, "msg": f"Invalid request: unknown variant `{method}`, expected one "
                                         "of `SUBSCRIBE`, `UNSUBSCRIBE`, `LIST_SUBSCRIPTIONS`"}, "id": req_id})

    # ------------------------------------------------------------------ REST
    def _use_weight(self, ip: str, weight: int) -> tuple[int, int]:
        """Add request weight for this IP in the current wall-clock minute; (used, seconds left)."""
        now = time.time()
        minute = int(now // 60)
        window, used = self._weights.get(ip, (minute, 0))
        if window != minute:
            used = 0
        used += weight
        self._weights[ip] = (minute, used)
        return used, max(1, int(60 - now % 60) + 1)

    def _rest_handler(self, handler):
        async def wrapped(request: web.Request) -> web.Response:
            params = request.query
            try:
                weight, compute = handler(params)
            except BinanceError as exc:
                weight, compute = 1, exc
            used, retry_after = self._use_weight(request.remote or "?", weight)
            headers = {"x-mbx-used-weight-1m": str(used), "x-mbx-used-weight": str(used)}
            limit = self.config.rest_weight_limit
            if used > limit:
                headers["Retry-After"] = str(retry_after)
                return self._json(429, {"code": -1003, "msg": f"Too much request weight used; current limit is {limit} "
                                        "request weight per 1 MINUTE. Please use WebSocket Streams for live "
                                        "updates to avoid polling the API."}, headers)
            failure = self.feed.faults.rest_failure()
            if failure is not None:
                status, body = failure
                self.feed.record_fault(self.feed.now_ms, "rest_error", path=request.path, status=status)
                if status == 429:
                    headers["Retry-After"] = str(retry_after)
                return self._json(status, body, headers)
            if isinstance(compute, BinanceError):
                return self._json(compute.status, {"code": compute.code, "msg": compute.msg}, headers)
            try:
                return self._json(200, compute(), headers)
            except BinanceError as exc:
                return self._json(exc.status, {"code": exc.code, "msg": exc.msg}, headers)
        return wrapped

    @staticmethod
    def _json(status: int, body, headers: dict) -> web.Response:
        return web.Response(status=status, body=orjson.dumps(body), content_type="application/json", headers=headers)

    def _symbol(self, params, required: bool = True) -> str | None:
        symbol = params.get("symbol")
        if not symbol:
            if required:
                raise BinanceError(400, -1102, "Mandatory parameter 'symbol' was not sent, was empty/null, or malformed.")
            return None
        try:
            self.feed.symbol_index(symbol)
        except UnknownSymbol:
            raise BinanceError(400, -1121, "Invalid symbol.") from None
        return symbol

    def _rest_depth(self, params):
        symbol = self._symbol(params)
        raw_limit = params.get("limit", "500")
        try:
            limit = int(raw_limit)
        except ValueError:
            raise BinanceError(400, -1100, "Illegal characters found in parameter 'limit'; legal range is '^[0-9]{1,20}$'.") from None
        if limit not in DEPTH_LIMITS:
            raise BinanceError(400, -1130, "Data sent for parameter 'limit' is not valid.")
        return DEPTH_WEIGHT[limit], lambda: self.feed.depth_snapshot(symbol, limit)

    def _rest_agg_trades(self, params):
        symbol = self._symbol(params)
        try:
            limit = int(params.get("limit", "500"))
            from_id = int(params["fromId"]) if "fromId" in params else None
        except ValueError:
            raise BinanceError(400, -1100, "Illegal characters found in a parameter.") from None
        if not 1 <= limit <= 1000:
            raise BinanceError(400, -1130, "Data sent for parameter 'limit' is not valid.")
        return 20, lambda: self.feed.agg_trades(symbol, from_id, limit)

    def _rest_open_interest(self, params):
        symbol = self._symbol(params)
        return 1, lambda: self.feed.open_interest(symbol)

    def _rest_premium_index(self, params):
        symbol = self._symbol(params, required=False)
        return (1 if symbol else 10), lambda: self.feed.premium_index(symbol)

    def _rest_positioning(self, name: str, params):
        symbol = self._symbol(params)
        now = time.monotonic()
        count, window = FUTURES_DATA_LIMIT
        while self._futures_data_calls and now - self._futures_data_calls[0] >= window:
            self._futures_data_calls.popleft()
        if len(self._futures_data_calls) >= count:
            raise BinanceError(429, -1003, "Too many requests; IP rate limit 1000 requests/5min")
        self._futures_data_calls.append(now)
        if params.get("period") != "5m":
            raise BinanceError(400, -1130, "Data sent for parameter 'period' is not valid (the simulator has 5m).")
        try:
            limit = int(params.get("limit", "30"))
        except ValueError:
            raise BinanceError(400, -1100, "Illegal characters found in parameter 'limit'.") from None
        if not 1 <= limit <= 500:
            raise BinanceError(400, -1130, "Data sent for parameter 'limit' is not valid.")
        s = self.feed.symbol_index(symbol)
        fmt = self.feed.formats[s]

        def rows():
            out = []
            for p in self.feed.positioning.periods(s, self.feed.now_ms, limit):
                if name == "takerlongshortRatio":
                    out.append({"buySellRatio": ratio(p.taker_buy_lots, p.taker_sell_lots),
                                "buyVol": fmt.qty(p.taker_buy_lots), "sellVol": fmt.qty(p.taker_sell_lots),
                                "timestamp": str(p.start_ms)})
                    continue
                accounts, positions = p.top[TOP_TRADERS]
                long = {"globalLongShortAccountRatio": p.long_accounts, "topLongShortAccountRatio": accounts,
                        "topLongShortPositionRatio": positions}[name]
                out.append({"symbol": symbol, "longShortRatio": ratio(long, 1 - long), "longAccount": share(long),
                            "shortAccount": share(1 - long), "timestamp": str(p.start_ms)})
            return out
        return 0, rows

    def _rest_exchange_info(self, params):
        return 1, lambda: self.feed.exchange_info(self.config.rest_weight_limit)

    def _rest_funding_info(self, params):
        return 1, self.feed.funding_info

    def _rest_time(self, params):
        return 1, self.feed.server_time

    def _rest_ping(self, params):
        return 1, dict


class SimulatorThread:
    """Runs a Simulator on its own event loop in a background thread (for synchronous callers)::

        with SimulatorThread(SimConfig(speed=60, hours=0.5)) as sim:
            connect_to(sim.ws_url, sim.http_url)
            sim.wait()
    """

    def __init__(self, config: SimConfig, host: str = "127.0.0.1", port: int = 0):
        self._sim = Simulator(config, host, port)
        self._loop = asyncio.new_event_loop()
        self._ready = threading.Event()
        self._stop: asyncio.Event | None = None
        self._error: BaseException | None = None
        self._thread = threading.Thread(target=self._main, name="perpflow-simulator", daemon=True)

    @property
    def simulator(self) -> Simulator:
        return self._sim

    @property
    def ws_url(self) -> str:
        return self._sim.ws_url

    @property
    def http_url(self) -> str:
        return self._sim.http_url

    def __enter__(self) -> "SimulatorThread":
        self.start()
        return self

    def __exit__(self, *exc) -> None:
        self.stop()

    def start(self) -> None:
        self._thread.start()
        self._ready.wait()
        if self._error is not None:
            raise self._error

    def _main(self) -> None:
        asyncio.set_event_loop(self._loop)
        self._loop.run_until_complete(self._serve())
        self._loop.close()

    async def _serve(self) -> None:
        self._stop = asyncio.Event()
        try:
            await self._sim.start()
        except BaseException as exc:   # surfaced to the starting thread
            self._error = exc
            self._ready.set()
            return
        self._ready.set()
        try:
            await self._stop.wait()
        finally:
            await self._sim.stop()

    def wait(self, timeout: float | None = None) -> bool:
        """Block until the scenario is finished; False on timeout."""
        future = asyncio.run_coroutine_threadsafe(self._sim.finished(), self._loop)
        try:
            future.result(timeout)
            return True
        except TimeoutError:
            future.cancel()
            return False

    def stop(self) -> None:
        if self._thread.is_alive() and self._stop is not None:
            self._loop.call_soon_threadsafe(self._stop.set)
            self._thread.join()
