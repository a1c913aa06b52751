"""Exactly-once Kafka -> DuckDB: kill the loader mid-load, run it again, count."""

from __future__ import annotations

import signal
import time

import duckdb

from fault_harness import run_loader
from ingest.records import Trade
from ingest.kafka import RecordProducer, end_offsets, new_consumer, partitions_of

N = 120_000


def trade(i: int) -> Trade:
    return Trade(exchange="binance-usdm", symbol=f"S{i % 7}-USDT-PERP", symbol_native=f"S{i % 7}USDT",
                 ts_exchange=1_700_000_000_000 + i, ts_recv=1_700_000_000_000_000_000 + i,
                 trade_id=str(i), price=f"{100 + i % 50}.5", qty="0.25", qty_unit="base",
                 side="buy" if i % 2 else "sell", is_aggregated=True, first_trade_id=i, last_trade_id=i)


def produce_trades(bootstrap: str, n: int, start: int = 0) -> None:
    producer = RecordProducer(bootstrap)
    for i in range(start, start + n):
        producer.send(trade(i))
    producer.flush()
    producer.close()


def kafka_ends(bootstrap: str) -> dict:
    consumer = new_consumer(bootstrap)
    try:
        tps = partitions_of(consumer, ["md.trades"])
        return {(tp.topic, tp.partition): offset for tp, offset in end_offsets(consumer, tps).items()}
    finally:
        consumer.close()


def test_sigkill_mid_load_then_rerun_loads_each_record_exactly_once(cli_env, fresh_broker, tmp_path):
    produce_trades(fresh_broker.bootstrap, N)
    code, output = run_loader(cli_env, kill_after_commits=3)
    assert code == -signal.SIGKILL, output
    db = tmp_path / "home" / "warehouse.duckdb"
    time.sleep(0.2)
    con = duckdb.connect(str(db))
    partial = con.execute("SELECT count(*) FROM raw.trades").fetchone()[0]
    stored = con.execute("SELECT sum(next_offset) FROM meta.kafka_offsets").fetchone()[0]
    con.close()
    # Whatever was committed is consistent: rows == offsets, and the kill left work undone.
    assert partial == stored and 30_000 <= partial < N

    code, output = run_loader(cli_env)
    assert code == 0, output
    code, output = run_loader(cli_env)
    assert code == 0 and "loaded 0 rows" in output

    con = duckdb.connect(str(db), read_only=True)
    rows, distinct_ids, distinct_offsets = con.execute(
        "SELECT count(*), count(DISTINCT trade_id), count(DISTINCT (kafka_partition, kafka_offset)) FROM raw.trades"
    ).fetchone()
    ids = con.execute("SELECT min(first_trade_id), max(first_trade_id), sum(first_trade_id) FROM raw.trades").fetchone()
    offsets = {(t, p): o for t, p, o in con.execute("SELECT topic, part, next_offset FROM meta.kafka_offsets").fetchall()}
    per_partition = dict(con.execute("SELECT kafka_partition, max(kafka_offset) + 1 FROM raw.trades GROUP BY 1").fetchall())
    con.close()
    assert rows == distinct_ids == distinct_offsets == N
    assert ids == (0, N - 1, N * (N - 1) // 2)
    assert offsets == kafka_ends(fresh_broker.bootstrap)
    assert {("md.trades", p): o for p, o in per_partition.items()} == offsets


def test_new_messages_after_a_load_are_loaded_once(cli_env, fresh_broker, tmp_path):
    produce_trades(fresh_broker.bootstrap, 1000)
    assert run_loader(cli_env)[0] == 0
    produce_trades(fresh_broker.bootstrap, 500, start=1000)
    code, output = run_loader(cli_env)
    assert code == 0 and "loaded 500 rows" in output, output
    con = duckdb.connect(str(tmp_path / "home" / "warehouse.duckdb"), read_only=True)
    assert con.execute("SELECT count(*), count(DISTINCT trade_id) FROM raw.trades").fetchone() == (1500, 1500)
    con.close()
