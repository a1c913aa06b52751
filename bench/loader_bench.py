"""Loader (Kafka -> Arrow -> DuckDB, offsets in the same transaction) vs a bare consume loop."""

from __future__ import annotations

import os
import time
from pathlib import Path

from ingest import records
from ingest.records import Trade
from pipelines.broker import EmbeddedBroker, free_port
from ingest.kafka import ensure_topics, new_consumer, new_producer, partitions_of
from warehouse.loader import load_once
from warehouse.store import Warehouse


def _trade_values(n: int) -> list[bytes]:
    return [records.encode(Trade(exchange="binance-usdm", symbol=f"S{i % 3}-USDT-PERP", symbol_native=f"S{i % 3}USDT",
                                 ts_exchange=1_760_000_000_000 + i, ts_recv=1_760_000_000_000_000_000 + i * 1000,
                                 trade_id=str(i), price=f"{60000 + (i % 997) * 0.1:.1f}", qty="0.012",
                                 qty_unit="base", side="buy" if i % 2 else "sell", is_aggregated=True,
                                 first_trade_id=i * 2, last_trade_id=i * 2 + 1))
            for i in range(n)]


def _pin(pid: int, cores: set[int]) -> None:
    if hasattr(os, "sched_setaffinity") and len(os.sched_getaffinity(0)) > 1:
        os.sched_setaffinity(pid, cores)


def produce(bootstrap: str, values: list[bytes]) -> float:
    producer = new_producer(bootstrap)
    started = time.perf_counter()
    header = records.headers("trade")
    for i, value in enumerate(values):
        producer.send("md.trades", value=value, key=b"binance-usdm|S%d" % (i % 3), headers=header)
    producer.flush()
    seconds = time.perf_counter() - started
    producer.close()
    return seconds


def bare_consume(bootstrap: str, n: int) -> float:
    consumer = new_consumer(bootstrap)
    tps = partitions_of(consumer, ["md.trades"])
    consumer.assign(tps)
    consumer.seek_to_beginning()
    seen = 0
    started = time.perf_counter()
    while seen < n:
        for messages in consumer.poll(timeout_ms=1000, max_records=50_000).values():
            seen += len(messages)
    seconds = time.perf_counter() - started
    consumer.close()
    return seconds


def run(tmp: Path, n: int, console) -> list[dict]:
    original = os.sched_getaffinity(0) if hasattr(os, "sched_getaffinity") else None
    with EmbeddedBroker(port=free_port()) as broker:
        _pin(broker.process.pid, {0})
        _pin(0, {1})
        try:
            ensure_topics(broker.bootstrap, 3, topics=["md.trades"])
            values = _trade_values(n)
            console.print(f"producing {n:,} trade records ({sum(map(len, values)) / n:.0f} bytes each)")
            produce_s = produce(broker.bootstrap, values)
            console.print("bare kafka-python consume loop")
            bare_s = min(bare_consume(broker.bootstrap, n) for _ in range(2))
            console.print("perpflow loader pass (parse, Arrow, DuckDB insert + offsets, one transaction per 50k, committed while the next is read)")
            warehouse = Warehouse(tmp / "bench.duckdb")
            with warehouse.writer():
                pass   # schema creation is not part of the measurement
            report = load_once(warehouse, broker.bootstrap)
            assert report.rows["trades"] == n, report.rows
        finally:
            if original:
                os.sched_setaffinity(0, original)
    bare = n / bare_s
    return [
        {"name": "kafka-python producer, pre-serialized (idempotent, acks=all)", "label": "producer (pre-serialized)", "records": n, "seconds": produce_s,
         "rate": n / produce_s},
        {"name": "bare kafka-python consume loop (baseline)", "label": "bare consume loop", "baseline": True, "records": n, "seconds": bare_s, "rate": bare},
        {"name": "perpflow loader: Kafka -> DuckDB exactly-once", "label": "perpflow loader", "records": report.total, "seconds": report.seconds,
         "rate": report.total / report.seconds, "ratio": (report.total / report.seconds) / bare},
    ]
