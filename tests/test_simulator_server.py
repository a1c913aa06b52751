"""The simulator as a network service: real aiohttp server on a free port, real websocket clients.

Covers Binance's URL routing, the JSON subscription protocol, book sync over the network against
ground truth, REST request weights / 429 / parameter errors, server pings and connection
lifetime, and every fault flag as a client observes it."""

from __future__ import annotations

import asyncio
import time
import urllib.request
from collections import Counter, defaultdict

import aiohttp
import orjson
import websockets

from ingest.simulator import FaultConfig, SimConfig, Simulator, SimulatorThread, StallSpec, load_truth

SYMBOLS = ("btcusdt", "ethusdt", "solusdt")


def run(coro):
    return asyncio.run(asyncio.wait_for(coro, timeout=40))


async def collect(url: str, seconds: float) -> list[dict]:
    """Frames received on one connection during ``seconds`` of wall time."""
    frames = []
    async with websockets.connect(url, max_size=None) as ws:
        deadline = time.monotonic() + seconds
        while (left := deadline - time.monotonic()) > 0:
            try:
                frames.append(orjson.loads(await asyncio.wait_for(ws.recv(), left)))
            except asyncio.TimeoutError:
                break
    return frames


def kinds(frames: list[dict]) -> dict[str, int]:
    counts = defaultdict(int)
    for frame in frames:
        counts[frame["stream"].split("@", 1)[1] if "stream" in frame else frame.get("e")] += 1
    return counts


def test_streams_only_flow_on_their_routed_path():
    async def scenario():
        async with Simulator(SimConfig(scenario="calm", seed=1, speed=20, hours=0.5), port=0) as sim:
            assert sim.port > 0 and sim.ws_url == f"ws://127.0.0.1:{sim.port}"
            mixed = "btcusdt@aggTrade/btcusdt@depth@100ms/btcusdt@markPrice@1s"
            public, market, legacy, raw = await asyncio.gather(
                collect(f"{sim.ws_url}/public/stream?streams={mixed}", 1.5),
                collect(f"{sim.ws_url}/market/stream?streams={mixed}", 1.5),
                collect(f"{sim.ws_url}/stream?streams={mixed}", 1.5),
                collect(f"{sim.ws_url}/market/ws/btcusdt@aggTrade", 1.5),
            )
            return kinds(public), kinds(market), kinds(legacy), raw

    public, market, legacy, raw = run(scenario())
    assert public["depth@100ms"] > 100 and public["aggTrade"] == 0 and public["markPrice@1s"] == 0
    assert market["aggTrade"] > 50 and market["markPrice@1s"] > 10 and market["depth@100ms"] == 0
    # Legacy URL: handshake works, public streams still flow, market streams are silent.
    assert legacy["depth@100ms"] > 100 and legacy["aggTrade"] == 0 and legacy["markPrice@1s"] == 0
    assert raw and all(f["e"] == "aggTrade" and "stream" not in f for f in raw)
    assert all(set(f) == {"e", "E", "a", "s", "p", "q", "nq", "f", "l", "T", "m"} for f in raw)


def test_json_subscription_protocol():
    async def scenario():
        async with Simulator(SimConfig(scenario="calm", seed=1, speed=20, hours=0.5)) as sim:
            async with websockets.connect(f"{sim.ws_url}/market/ws") as ws:
                async def reply():
                    while True:
                        msg = orjson.loads(await asyncio.wait_for(ws.recv(), 5))
                        if "id" in msg:
                            return msg

                await ws.send(orjson.dumps({"method": "SUBSCRIBE", "id": 1,
                                            "params": ["ethusdt@markPrice@1s", "ethusdt@aggTrade"]}).decode())
                assert await reply() == {"result": None, "id": 1}
                await ws.send('{"method":"LIST_SUBSCRIPTIONS","id":2}')
                assert await reply() == {"result": ["ethusdt@markPrice@1s", "ethusdt@aggTrade"], "id": 2}
                marks = 0
                while marks < 5:
                    marks += orjson.loads(await asyncio.wait_for(ws.recv(), 5)).get("e") == "markPriceUpdate"
                await ws.send('{"method":"UNSUBSCRIBE","params":["ethusdt@markPrice@1s"],"id":3}')
                assert await reply() == {"result": None, "id": 3}
                after = [orjson.loads(m) for m in await _drain(ws, 1.0)]
                await ws.send('{"method":"PING","id":4}')
                unknown = await reply()
                await ws.send("not json")
                invalid = orjson.loads(await _next_error(ws))
            # The legacy URL acknowledges market subscriptions but never delivers them.
            async with websockets.connect(f"{sim.ws_url}/ws") as legacy:
                await legacy.send('{"method":"SUBSCRIBE","params":["btcusdt@aggTrade"],"id":7}')
                legacy_frames = [orjson.loads(m) for m in await _drain(legacy, 1.0)]
            return after, unknown, invalid, legacy_frames

    after, unknown, invalid, legacy_frames = run(scenario())
    assert after and all(f["e"] == "aggTrade" for f in after)
    assert unknown["id"] == 4 and unknown["error"]["code"] == 2
    assert invalid["error"]["code"] == 3
    assert legacy_frames == [{"result": None, "id": 7}]


async def _drain(ws, seconds: float) -> list:
    out = []
    deadline = time.monotonic() + seconds
    while (left := deadline - time.monotonic()) > 0:
        try:
            out.append(await asyncio.wait_for(ws.recv(), left))
        except asyncio.TimeoutError:
            break
    return out


async def _next_error(ws) -> str:
    while True:
        msg = await asyncio.wait_for(ws.recv(), 5)
        if '"error"' in msg:
            return msg


class Book:
    """Binance USD-M local book: snapshot + diffs with the official sequencing rules."""

    def __init__(self, snapshot: dict):
        self.last_update_id = snapshot["lastUpdateId"]
        self.bids = {float(p): [p, q] for p, q in snapshot["bids"]}
        self.asks = {float(p): [p, q] for p, q in snapshot["asks"]}
        self.prev_u = None

    def apply(self, e: dict) -> bool:
        if self.prev_u is None:
            if e["u"] < self.last_update_id:
                return False
            assert e["U"] <= self.last_update_id <= e["u"]
        else:
            assert e["pu"] == self.prev_u
        for side, levels in ((self.bids, e["b"]), (self.asks, e["a"])):
            for p, q in levels:
                if float(q) == 0:
                    side.pop(float(p), None)
                else:
                    side[float(p)] = [p, q]
        self.prev_u = e["u"]
        assert max(self.bids) < min(self.asks)
        return True

    def levels(self) -> tuple[list, list]:
        return [self.bids[p] for p in sorted(self.bids, reverse=True)], [self.asks[p] for p in sorted(self.asks)]


def test_book_synced_over_the_network_equals_true_book(tmp_path):
    truth_path = tmp_path / "truth.jsonl"
    # 12 s of wall time: the client syncs while the market runs, so a loaded machine syncs later and
    # compares fewer checkpoints; at least 10 of each stream's 24 are compared.
    config = SimConfig(scenario="calm", seed=5, speed=10, hours=2 / 60, checkpoint_every_s=5,
                       truth_path=str(truth_path))
    streams = ["btcusdt@depth@100ms", "ethusdt@depth@500ms", "solusdt@depth"]

    async def scenario():
        async with Simulator(config) as sim:
            rebuilt = {}
            async with websockets.connect(f"{sim.ws_url}/public/stream?streams={'/'.join(streams)}",
                                          max_size=None) as ws:
                buffered = [orjson.loads(m) for m in await _drain(ws, 0.3)]
                books, weights = {}, []
                async with aiohttp.ClientSession() as http:
                    for stream in streams:
                        symbol = stream.split("@")[0].upper()
                        async with http.get(f"{sim.http_url}/fapi/v1/depth",
                                            params={"symbol": symbol, "limit": "1000"}) as resp:
                            assert resp.status == 200
                            weights.append(int(resp.headers["x-mbx-used-weight-1m"]))
                            books[stream] = Book(await resp.json())

                def apply(frame):
                    book = books[frame["stream"]]
                    if book.apply(frame["data"]):
                        rebuilt[(frame["stream"], frame["data"]["u"])] = book.levels()

                for frame in buffered:
                    apply(frame)
                done = asyncio.create_task(sim.finished())
                while not done.done():
                    try:
                        apply(orjson.loads(await asyncio.wait_for(ws.recv(), 0.5)))
                    except asyncio.TimeoutError:
                        continue
                for message in await _drain(ws, 0.5):
                    apply(orjson.loads(message))
            return rebuilt, weights

    rebuilt, weights = run(scenario())
    assert weights[1] - weights[0] == 20 or weights[1] == 20
    checkpoints = [c for c in load_truth(truth_path)["book"]]
    compared = Counter()
    for stream in streams:
        symbol = stream.split("@")[0].upper()
        synced_from = min(u for s, u in rebuilt if s == stream)
        for cp in checkpoints:
            if cp["symbol"] == symbol and cp["last_update_id"] >= synced_from:
                assert rebuilt.get((stream, cp["last_update_id"])) == (cp["bids"], cp["asks"]), (stream, cp["ts"])
                compared[stream] += 1
    assert len(compared) == 3 and min(compared.values()) >= 10, compared


def test_rest_endpoints_weights_and_errors():
    async def scenario():
        async with Simulator(SimConfig(scenario="calm", seed=1, speed=1, hours=0.5)) as sim:
            async with aiohttp.ClientSession(base_url=sim.http_url) as http:
                async def get(path, **params):
                    async with http.get(path, params=params) as resp:
                        return resp.status, dict(resp.headers), await resp.json()

                results = {
                    "ping": await get("/fapi/v1/ping"),
                    "time": await get("/fapi/v1/time"),
                    "info": await get("/fapi/v1/exchangeInfo"),
                    "premium": await get("/fapi/v1/premiumIndex", symbol="BTCUSDT"),
                    "premium_all": await get("/fapi/v1/premiumIndex"),
                    "funding": await get("/fapi/v1/fundingInfo"),
                    "oi": await get("/fapi/v1/openInterest", symbol="ETHUSDT"),
                    "bad_symbol": await get("/fapi/v1/depth", symbol="FOOUSDT"),
                    "no_symbol": await get("/fapi/v1/depth"),
                    "bad_limit": await get("/fapi/v1/depth", symbol="BTCUSDT", limit="7"),
                }
                depth = []
                for _ in range(300):
                    status, headers, body = await get("/fapi/v1/depth", symbol="BTCUSDT", limit="1000")
                    depth.append((status, headers, body))
                    if status == 429:
                        break
                return results, depth

    results, depth = run(scenario())
    assert results["ping"][0] == 200 and results["ping"][2] == {} and results["ping"][1]["x-mbx-used-weight-1m"]
    assert isinstance(results["time"][2]["serverTime"], int)
    symbols = {s["symbol"]: s for s in results["info"][2]["symbols"]}
    assert {f["filterType"]: f for f in symbols["SOLUSDT"]["filters"]}["PRICE_FILTER"]["tickSize"] == "0.0010"
    assert results["premium"][2]["symbol"] == "BTCUSDT" and len(results["premium_all"][2]) == 3
    assert {f["symbol"] for f in results["funding"][2]} == {"BTCUSDT", "ETHUSDT", "SOLUSDT"}
    assert set(results["oi"][2]) == {"openInterest", "symbol", "time"}
    assert results["bad_symbol"][0] == 400 and results["bad_symbol"][2] == {"code": -1121, "msg": "Invalid symbol."}
    assert results["no_symbol"][0] == 400 and results["no_symbol"][2]["code"] == -1102
    assert results["bad_limit"][0] == 400 and results["bad_limit"][2]["code"] == -1130

    statuses = [d[0] for d in depth]
    assert statuses[-1] == 429 and set(statuses[:-1]) == {200}
    used = [int(d[1]["x-mbx-used-weight-1m"]) for d in depth]
    assert all(b - a == 20 or b == 20 for a, b in zip(used, used[1:]))   # +20 per call, reset at a new minute
    assert used[-1] > 2400
    status, headers, body = depth[-1]
    assert body["code"] == -1003 and 1 <= int(headers["Retry-After"]) <= 61


def test_server_pings_and_closes_old_or_silent_connections():
    config = SimConfig(scenario="calm", seed=1, speed=10, hours=0.5, ws_ping_interval_s=0.2,
                       ws_pong_timeout_s=0.5, ws_max_lifetime_s=20)

    async def scenario():
        async with Simulator(config) as sim:
            async with aiohttp.ClientSession() as http:
                async def client(answer_pings: bool):
                    pings, started = 0, time.monotonic()
                    async with http.ws_connect(f"{sim.ws_url}/public/ws/btcusdt@bookTicker", autoping=False) as ws:
                        async for msg in ws:
                            if msg.type == aiohttp.WSMsgType.PING:
                                pings += 1
                                if answer_pings:
                                    await ws.pong(msg.data)
                        return pings, ws.close_code, time.monotonic() - started

                return await asyncio.gather(client(True), client(False))

    (pings_ok, code_ok, life_ok), (pings_silent, code_silent, life_silent) = run(scenario())
    assert pings_ok >= 5 and code_ok == 1001 and 1.5 <= life_ok <= 6      # 20 simulated s at 10x
    assert pings_silent >= 1 and code_silent == 1001 and life_silent < 1.5  # pong timeout


def test_every_fault_flag_is_observable(tmp_path):
    truth_path = tmp_path / "truth.jsonl"
    faults = FaultConfig(drop_every_s=40, gap_every_s=6, malformed_every_s=3,
                         stalls=(StallSpec("markPrice@1s", 30, 25),), rest_error_rate=0.3)
    config = SimConfig(scenario="calm", seed=2, speed=25, hours=2 / 60, faults=faults, truth_path=str(truth_path))
    public = [f"{s}@{k}" for s in SYMBOLS for k in ("depth@100ms", "bookTicker", "trade")]
    market = [f"{s}@{k}" for s in SYMBOLS for k in ("aggTrade", "markPrice@1s")]
    seen = defaultdict(int)
    mark_times: list[int] = []
    agg_times: list[int] = []

    def inspect(text: str, last_u: dict) -> None:
        try:
            frame = orjson.loads(text)
        except orjson.JSONDecodeError:
            seen["invalid_json"] += 1
            return
        data = frame["data"]
        required = {"aggTrade": "p", "trade": "t", "depthUpdate": "u", "markPriceUpdate": "p", "bookTicker": "b"}
        field = required[data["e"]]
        if field not in data:
            seen["missing_field"] += 1
            return
        if not isinstance(data[field], str if field in ("p", "b") else int):
            seen["wrong_type"] += 1
            return
        if data["e"] == "depthUpdate":
            stream = frame["stream"]
            if stream in last_u and data["pu"] != last_u[stream]:
                seen["sequence_gap"] += 1
            last_u[stream] = data["u"]
        elif data["e"] == "markPriceUpdate":
            mark_times.append(data["E"])
        elif data["e"] == "aggTrade":
            agg_times.append(data["E"])

    async def listen(sim, path, streams):
        while True:
            last_u: dict = {}          # a new connection starts a new chain
            try:
                async with websockets.connect(f"{sim.ws_url}{path}?streams={'/'.join(streams)}", max_size=None) as ws:
                    async for text in ws:
                        inspect(text, last_u)
            except websockets.ConnectionClosed as exc:
                seen["abnormal_close" if exc.rcvd is None else "closed"] += 1
            await asyncio.sleep(0.02)

    async def scenario():
        async with Simulator(config) as sim:
            listeners = [asyncio.create_task(listen(sim, "/public/stream", public)),
                         asyncio.create_task(listen(sim, "/market/stream", market))]
            rest = []
            async with aiohttp.ClientSession() as http:
                # Only answers given while the market ran: the truth records no fault after its end.
                while len(rest) < 30 and not sim.feed.finished:
                    async with http.get(f"{sim.http_url}/fapi/v1/time") as resp:
                        status = resp.status
                    if not sim.feed.finished:
                        rest.append(status)
                await sim.finished()
            await asyncio.sleep(0.3)
            for task in listeners:
                task.cancel()
            return sim.feed.start_ms, rest

    start, rest = run(scenario())
    truth = load_truth(truth_path)
    recorded = defaultdict(list)
    for fault in truth["fault"]:
        recorded[fault["fault"]].append(fault)

    assert seen["invalid_json"] >= 1 and seen["missing_field"] >= 1 and seen["wrong_type"] >= 1
    assert len(recorded["malformed"]) == 40
    assert seen["sequence_gap"] >= 5 and len(recorded["sequence_gap"]) == 3 * 20
    assert seen["abnormal_close"] >= 4 and len(recorded["drop"]) >= 2
    assert all(d["connections"] == 2 for d in recorded["drop"][:2])
    stalled = [t for t in mark_times if start + 30_000 <= t < start + 55_000]
    assert not stalled and any(t < start + 30_000 for t in mark_times) and any(t >= start + 55_000 for t in mark_times)
    assert any(start + 30_000 <= t < start + 55_000 for t in agg_times)
    assert recorded["stall"][0]["ts"] == start + 30_000 and recorded["stall"][0]["end_ts"] == start + 55_000
    failures = [s for s in rest if s != 200]
    assert rest and 1 <= len(failures) < len(rest) and set(failures) <= {429, 500, 503}, rest
    assert sorted(f["status"] for f in recorded["rest_error"]) == sorted(failures)


def test_simulator_thread_serves_synchronous_callers():
    with SimulatorThread(SimConfig(scenario="calm", seed=1, speed=60, hours=1 / 60)) as sim:
        with urllib.request.urlopen(f"{sim.http_url}/fapi/v1/openInterest?symbol=BTCUSDT") as resp:
            assert resp.status == 200 and resp.headers["x-mbx-used-weight-1m"] == "1"
            assert orjson.loads(resp.read())["symbol"] == "BTCUSDT"
        assert sim.wait(timeout=20)
        assert sim.simulator.feed.finished and sim.ws_url.startswith("ws://127.0.0.1:")


def test_no_message_is_sent_before_its_event_time():
    """A step's messages go out once its end is due: received at or after `Simulator.clock`'s
    wall time of their event time (the latency bench measures from there)."""
    async def scenario():
        async with Simulator(SimConfig(scenario="calm", seed=3, speed=5, hours=1 / 60)) as sim:
            received = []
            async with websockets.connect(f"{sim.ws_url}/public/stream?streams=btcusdt@depth@100ms") as ws:
                while len(received) < 30:
                    frame = orjson.loads(await ws.recv())
                    received.append((time.time_ns(), frame["data"]["E"]))
            return sim.clock, received

    clock, received = run(scenario())
    assert clock.speed == 5 and len(received) == 30
    early = [(at, event) for at, event in received if at < clock.wall_ns(event)]
    assert not early, f"{len(early)} depth updates arrived before their event time was due: {early[:3]}"
    # consecutive updates are one 100 ms step apart in market time, 20 ms of wall time at 5x
    assert {b - a for (_, a), (_, b) in zip(received, received[1:])} == {100}
