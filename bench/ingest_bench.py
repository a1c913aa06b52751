"""Ingest throughput: venue frames -> mapper -> book sync -> Kafka, next to a bare producer.

Measurements of perpflow's path and one baseline, all in the same run:
  * message path: the cascade scenario's frames for the streams the service subscribes to
    (depth@100ms, aggTrade, markPrice@1s, forceOrder), pre-generated, fed through the
    service's FeedHandler and SpillingSink into Kafka as fast as they go, records packed as the
    service packs them (``--pack-ms`` 20), and again one record a message (``--pack-ms 0``);
  * end to end: the simulator's websocket server in its own process at high speed, the
    IngestService reading it over real sockets for a fixed wall time (bounded by what the
    simulator can generate on the other core, so it shows whether the service keeps up);
  * baseline: a bare kafka-python producer sending the records the message path produced,
    already serialized, to the same topics.
"""

from __future__ import annotations

import asyncio
import subprocess
import sys
import time
from pathlib import Path

import orjson

from ingest import records
from ingest.feed import FeedHandler
from ingest.service import DEFAULT_PACK_MS, IngestConfig, IngestService
from ingest.simulator import ExchangeFeed, SimConfig
from ingest.spill import SpillingSink
from ingest.simulator.dialects import dialect_classes, offline_frames
from ingest.gc_policy import use_streaming_gc
from ingest.venues import venue as venue_for
from ingest.venues.binance_usdm import BinanceUsdm
from pipelines.broker import EmbeddedBroker, free_port, port_in_use
from ingest.kafka import RecordProducer, ensure_topics, new_producer
from pipelines.replay import replay

SUBSCRIBED = ("depth@100ms", "aggTrade", "markPrice@1s", "forceOrder")


def venue_frames(exchange: str, n: int, scenario: str) -> tuple[list[tuple[str, str, str | bytes]], float]:
    """Up to ``n`` (kind, source, body) items a service subscribed to the simulator's three markets
    would see from ``exchange`` (Binance's REST snapshots where its book sync asks for them), and
    the market seconds they span."""
    feed = ExchangeFeed(SimConfig(scenario=scenario, seed=7, hours=1.5))
    if exchange != "binance-usdm":
        dialect = dialect_classes()[exchange](type("OfflineServer", (), {"feed": feed})())
        natives = [dialect.native_symbol(s) for s in range(len(feed.symbols))]
        topics = [t for c in venue_for(exchange).ws_connections("ws://bench", natives) for t in c.streams]
        items = [("ws", "bench", frame) for frame in offline_frames(exchange, feed, topics, n)]
    else:
        items = _binance_frames(feed, n)
    seconds = (feed.now_ms - feed.start_ms) / 1000
    feed.close()
    return items, seconds


def _binance_frames(feed: ExchangeFeed, n: int) -> list[tuple[str, str, str]]:
    wanted = lambda stream: stream.split("@", 1)[1] in SUBSCRIBED  # noqa: E731
    venue = BinanceUsdm()
    dry_run = FeedHandler(venue, lambda record: None)
    items: list[tuple[str, str, str]] = []
    while len(items) < n and not feed.finished:
        for message in feed.step(wanted):
            if not isinstance(message.payload, dict):
                continue
            frame = orjson.dumps({"stream": message.stream, "data": message.payload}).decode()
            items.append(("ws", "bench", frame))
            for native in dry_run.on_ws(frame, 0):
                url = venue.book_snapshot_url("http://sim", native)
                body = orjson.dumps(feed.depth_snapshot(native, 1000)).decode()
                dry_run.on_rest(url, body, 0)
                items.append(("rest", url, body))
    return items[:n]


def _feed(handler: FeedHandler, frames: list[tuple[str, str, str]]) -> None:
    for kind, source, body in frames:
        if kind == "ws":
            handler.on_ws(body, time.time_ns(), source)
        else:
            handler.on_rest(source, body, time.time_ns())


def run(tmp: Path, n: int, console) -> list[dict]:
    console.print(f"generating {n:,} cascade-scenario frames ({', '.join(SUBSCRIBED)})")
    frames = venue_frames("binance-usdm", n, "cascade")[0]
    use_streaming_gc()      # the services' policy; the frames are frozen (a service never holds 100k of them)
    with EmbeddedBroker(port=free_port()) as broker:
        ensure_topics(broker.bootstrap, 3)
        console.print(f"perpflow message path: FeedHandler + SpillingSink -> Kafka, packed ({DEFAULT_PACK_MS:g} ms)")
        path_s, produced_count, packed_messages = _message_path(tmp, broker.bootstrap, frames, DEFAULT_PACK_MS)
        console.print("perpflow message path, one record a message")
        unpacked_s, _, _ = _message_path(tmp, broker.bootstrap, frames, 0)

        console.print("bare kafka-python producer, same records pre-serialized")
        # The records again, from a second pass outside the timing: keeping every record of the
        # timed pass alive would make the garbage collector walk ~100k records' book levels over
        # and over, a cost the service (which keeps a record only until Kafka acknowledges it)
        # never pays.
        produced: list = []
        _feed(FeedHandler(BinanceUsdm(), produced.append), frames)
        assert len(produced) == produced_count, (len(produced), produced_count)
        encoded = [(r.topic, records.kafka_key(r), records.encode(r), records.headers(r)) for r in produced]
        producer = new_producer(broker.bootstrap)
        started = time.perf_counter()
        for topic, key, value, headers in encoded:
            producer.send(topic, value=value, key=key, headers=headers)
        producer.flush()
        bare_s = time.perf_counter() - started
        producer.close()

        console.print("replay: the same frames as a recording file -> perpflow replay's path -> Kafka")
        replayed = _replay(tmp, broker.bootstrap, frames)

        console.print("end to end: simulator process (speed 100) -> websockets -> IngestService -> Kafka, 30 s")
        e2e = _end_to_end(tmp, broker.bootstrap, seconds=30)
    bare_rate = len(encoded) / bare_s
    return [
        {"name": "bare kafka-python producer, pre-serialized records (baseline)", "label": "bare producer",
         "baseline": True, "records": len(encoded),
         "messages": len(frames), "seconds": bare_s, "rate": bare_rate},
        {"name": f"ingest message path: frames -> records -> Kafka, packed ({DEFAULT_PACK_MS:g} ms)",
         "label": "ingest message path", "records": produced_count,
         "messages": len(frames), "seconds": path_s, "rate": produced_count / path_s,
         "messages_per_s": len(frames) / path_s, "ratio": (produced_count / path_s) / bare_rate,
         "kafka_messages": packed_messages},
        {"name": "ingest message path, one record a Kafka message (--pack-ms 0)", "label": "  unpacked",
         "records": produced_count, "messages": len(frames), "seconds": unpacked_s,
         "rate": produced_count / unpacked_s, "messages_per_s": len(frames) / unpacked_s,
         "ratio": (produced_count / unpacked_s) / bare_rate},
        {"name": "replay of a recording file (perpflow's JSONL) -> Kafka", "label": "replay (recording)",
         "records": replayed["records"], "messages": len(frames), "seconds": replayed["seconds"],
         "rate": replayed["records"] / replayed["seconds"], "messages_per_s": len(frames) / replayed["seconds"],
         "ratio": (replayed["records"] / replayed["seconds"]) / bare_rate},
        {"name": "end to end from the simulator over websockets (speed 100)",
         "label": "end to end (simulator)", "records": e2e["records"],
         "messages": e2e["messages"], "seconds": e2e["seconds"], "rate": e2e["records"] / e2e["seconds"],
         "messages_per_s": e2e["messages"] / e2e["seconds"], "ratio": (e2e["records"] / e2e["seconds"]) / bare_rate,
         "reconnects": e2e["reconnects"]},
    ]


def _message_path(tmp: Path, bootstrap: str, frames, pack_ms: float) -> tuple[float, int, int]:
    """Seconds to feed the frames through the service's handler and sink into Kafka, records, and
    the Kafka messages they took."""
    sink = SpillingSink(bootstrap, tmp / f"spill-{pack_ms:g}.jsonl", pack_ms=pack_ms)
    handler = FeedHandler(BinanceUsdm(), sink.send)
    started = time.perf_counter()
    _feed(handler, frames)
    sink.flush_packs()
    sink.producer.flush()
    seconds = time.perf_counter() - started
    sink.close()
    return seconds, sum(handler.stats.records.values()), sink.messages_sent


def per_venue(n: int, console) -> list[dict]:
    """Each venue's mapper and book sync on the same simulated market in its own wire format:
    frames/s through the FeedHandler (no Kafka), and what became of every frame. The ratio is
    against Binance USD-M measured in the same run."""
    rows = []
    for exchange in ("binance-usdm", *dialect_classes()):
        frames = venue_frames(exchange, n, "cascade")[0]
        use_streaming_gc()
        console.print(f"{exchange}: {len(frames):,} frames through the mapper and book sync")
        handler = FeedHandler(venue_for(exchange), lambda record: None)
        started = time.perf_counter()
        for kind, source, body in frames:
            if kind == "ws":
                handler.on_ws(body, 0, source)
            else:      # Binance's REST snapshots, where its book sync asked for them
                handler.on_rest(source, body, 0)
        seconds = time.perf_counter() - started
        stats = handler.stats
        rows.append({"name": f"{exchange}: frames -> records (mapper + book sync)", "label": exchange, "messages": len(frames),
                     "records": sum(stats.records.values()), "seconds": seconds, "rate": sum(stats.records.values()) / seconds,
                     "messages_per_s": len(frames) / seconds, "mapped": stats.mapped,
                     "skipped": sum(stats.skipped.values()), "dead_letters": sum(stats.dead_letters.values()),
                     "gaps": handler.book_sync.counts["gaps"]})
    for row in rows:
        row["ratio"] = row["messages_per_s"] / rows[0]["messages_per_s"]
    rows[0]["baseline"] = True
    return rows


def _replay(tmp: Path, bootstrap: str, frames: list[tuple[str, str, str]]) -> dict:
    """Frames written as perpflow's recorder JSONL, read back and published exactly as `perpflow replay` does."""
    recording = tmp / "bench-recording.jsonl"
    with recording.open("wb") as out:
        for seq, (kind, source, body) in enumerate(frames):
            out.write(orjson.dumps({"recv_ns": seq, "kind": kind, "source": source, "msg": orjson.loads(body)}) + b"\n")
    producer = RecordProducer(bootstrap)
    started = time.perf_counter()
    report = replay("binance-usdm", [recording], producer.send)
    producer.flush()
    seconds = time.perf_counter() - started
    producer.close()
    return {"records": sum(report.stats.records.values()), "seconds": seconds}


def _end_to_end(tmp: Path, bootstrap: str, seconds: float) -> dict:
    """The simulator in its own process (as in production the venue is elsewhere), the service here."""
    port = free_port()
    simulator = subprocess.Popen([sys.executable, "-m", "ingest.simulator", "--scenario", "cascade", "--seed", "7",
                                  "--hours", "2", "--speed", "100", "--port", str(port)],
                                 stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + 60
        while not port_in_use(port) and time.monotonic() < deadline:
            time.sleep(0.2)
        service = IngestService(BinanceUsdm(), IngestConfig(
            symbols=["BTCUSDT", "ETHUSDT", "SOLUSDT"], ws_url=f"ws://127.0.0.1:{port}",
            rest_url=f"http://127.0.0.1:{port}", bootstrap=bootstrap, run_dir=tmp / "e2e", duration_s=seconds))
        started = time.perf_counter()
        asyncio.run(service.run())
        elapsed = time.perf_counter() - started
    finally:
        simulator.terminate()
        simulator.wait(30)
    return {"messages": service.handler.stats.messages, "records": sum(service.handler.stats.records.values()),
            "seconds": elapsed, "reconnects": service.events["reconnects"]}
