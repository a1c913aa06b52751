"""The loader's error paths, with real DuckDB files, real brokers and a real full disk (a tiny tmpfs)."""

from __future__ import annotations

import logging
import subprocess
from pathlib import Path

import duckdb
import orjson
import pytest

from conftest import PERPFLOW, free_bytes
from pipelines.broker import EmbeddedBroker, free_port
from ingest.kafka import end_offsets, ensure_topics, new_consumer, partitions_of
from test_exactly_once import produce_trades, trade
from warehouse.loader import LoadReport, _Batch, _commit, _seek_start, insert_records, load_once
from warehouse.store import Warehouse


def trades_and_offsets(db: Path) -> tuple[int, int, int]:
    con = duckdb.connect(str(db), read_only=True)
    try:
        return con.execute("SELECT (SELECT count(*) FROM raw.trades), (SELECT count(DISTINCT trade_id) FROM "
                           "raw.trades), (SELECT coalesce(sum(next_offset), 0) FROM meta.kafka_offsets)").fetchone()
    finally:
        con.close()


def test_a_full_disk_reports_the_write_error_and_a_rerun_loads_the_rest_exactly_once(tiny_disk, cli_env,
                                                                                      fresh_broker):
    disk = tiny_disk.path
    n = 60_000
    produce_trades(fresh_broker.bootstrap, n)
    env = {**cli_env, "PERPFLOW_HOME": str(disk / "home"), "COLUMNS": "300"}
    out = subprocess.run([*PERPFLOW, "load", "--batch-rows", "10000"], env=env, capture_output=True, text=True,
                         timeout=300)
    text = " ".join(out.stdout.split())
    assert out.returncode == 1, out.stdout + out.stderr
    assert "the load stopped:" in text and "No space left on device" in text, text
    assert "cannot rollback" not in out.stdout + out.stderr and "Traceback" not in out.stderr
    db = disk / "home" / "warehouse.duckdb"
    rows, distinct, offsets = trades_and_offsets(db)
    assert rows == distinct == offsets < n            # what committed is consistent; the rest was not kept

    tiny_disk.resize("64m")
    out = subprocess.run([*PERPFLOW, "load", "--batch-rows", "10000"], env=env, capture_output=True, text=True,
                         timeout=300)
    assert out.returncode == 0, out.stdout + out.stderr
    assert trades_and_offsets(db) == (n, n, n)
    assert not [p.name for p in (disk / "home").iterdir() if ".tmp" in p.name]


def test_a_full_disk_leaves_no_temporary_replica_and_keeps_the_old_one(tiny_disk):
    tiny_disk.resize("32m")
    disk = tiny_disk.path
    warehouse = Warehouse(disk / "warehouse.duckdb")
    with warehouse.writer() as con:
        insert_records(con, map(trade, range(1000)))
    warehouse.publish_replica()
    with warehouse.writer() as con:
        insert_records(con, map(trade, range(1000, 61_000)))
    filler = disk / "filler"
    filler.write_bytes(b"\0" * (free_bytes(disk) - warehouse.path.stat().st_size // 2))

    with pytest.raises(OSError) as caught:
        warehouse.publish_replica()
    assert caught.value.errno == 28                    # ENOSPC
    assert sorted(p.name for p in disk.iterdir()) == ["filler", "warehouse.duckdb", "warehouse.duckdb.lock",
                                                           "warehouse_ro.duckdb"]
    with warehouse.reader() as con:
        assert con.execute("SELECT count(*) FROM raw.trades").fetchone()[0] == 1000

    filler.unlink()
    warehouse.publish_replica()
    with warehouse.reader() as con:
        assert con.execute("SELECT count(*) FROM raw.trades").fetchone()[0] == 61_000


def test_a_failed_offset_mirror_is_a_warning_and_the_load_stands(fresh_broker, warehouse, caplog):
    produce_trades(fresh_broker.bootstrap, 1000)
    # The broker goes away right after the last DuckDB commit, before the offsets are mirrored to Kafka.
    with caplog.at_level(logging.WARNING, logger="warehouse.loader"):
        report = load_once(warehouse, fresh_broker.bootstrap, progress=lambda _: fresh_broker.stop())
    assert report.total == 1000 and report.mirror_error
    assert "could not mirror the loaded offsets to Kafka group perpflow-warehouse" in caplog.text
    assert trades_and_offsets(warehouse.path) == (1000, 1000, 1000)
    with warehouse.writer() as con:
        assert con.execute("SELECT rows_loaded FROM meta.loader_runs").fetchall() == [(1000,)]
    warehouse.publish_replica()
    with warehouse.reader() as con:
        assert con.execute("SELECT count(*) FROM raw.trades").fetchone()[0] == 1000


def feed_events(warehouse: Warehouse) -> list[tuple[str, dict]]:
    with warehouse.writer() as con:
        return [(kind, orjson.loads(detail)) for kind, detail in
                con.execute("SELECT kind, detail FROM raw.feed_events ORDER BY ts_recv").fetchall()]


def test_a_broker_reset_is_reported_once_not_on_every_pass(warehouse):
    port = free_port()
    with EmbeddedBroker(port=port) as first:
        ensure_topics(first.bootstrap, 3)
        produce_trades(first.bootstrap, 3000)
        assert load_once(warehouse, first.bootstrap).total == 3000
    # Same address, new memory-only broker, still empty.
    with EmbeddedBroker(port=port) as second:
        ensure_topics(second.bootstrap, 3)
        assert len(load_once(warehouse, second.bootstrap).broker_resets) == 3
        again = load_once(warehouse, second.bootstrap)
        assert again.broker_resets == [] and again.total == 0
        produce_trades(second.bootstrap, 500, start=10_000)
        later = load_once(warehouse, second.bootstrap)
        assert later.broker_resets == [] and later.rows["trades"] == 500
    events = feed_events(warehouse)
    assert [kind for kind, _ in events] == ["broker_reset"] * 3
    assert sorted(detail["partition"] for _, detail in events) == [0, 1, 2]
    assert trades_and_offsets(warehouse.path) == (3500, 3500, 500)


def test_offsets_deleted_by_retention_are_a_loud_event_and_loading_continues(fresh_broker, warehouse, caplog):
    # Tansu implements neither retention nor DeleteRecords, so the broker's beginning offset is
    # given to the loader's start-of-pass decision as retention would have moved it.
    produce_trades(fresh_broker.bootstrap, 600)
    consumer = new_consumer(fresh_broker.bootstrap)
    try:
        tp = partitions_of(consumer, ["md.trades"])[0]
        end = end_offsets(consumer, [tp])[tp]
        begin, stored = end // 2, 10
        batch, report = _Batch(), LoadReport()
        with caplog.at_level(logging.WARNING, logger="warehouse.loader"):
            assert _seek_start(consumer, tp, (stored, "fingerprint"), begin, end, batch, report) is None
        assert consumer.position(tp) == begin
    finally:
        consumer.close()
    lost = begin - stored
    assert report.retention_losses == [{"topic": "md.trades", "partition": 0, "first_lost": stored, "lost": lost}]
    assert (f"RECORDS LOST TO KAFKA RETENTION on md.trades[0]: offsets {stored}..{begin - 1} ({lost} records) "
            f"were deleted by the broker before they were loaded; loading continues from offset {begin}") in caplog.text
    with warehouse.writer() as con:
        _commit(con, batch, report)
        assert con.execute("SELECT next_offset, last_fingerprint FROM meta.kafka_offsets").fetchall() == [(begin, None)]
    [(kind, detail)] = feed_events(warehouse)
    assert kind == "retention_loss" and (detail["lost"], detail["first_lost"], detail["reload_from"]) == \
        (lost, stored, begin)

    # The next pass goes on from the new start and does not report the loss again.
    report = load_once(warehouse, fresh_broker.bootstrap)
    assert report.retention_losses == [] and report.broker_resets == []
    with warehouse.writer() as con:
        first, count = con.execute("SELECT min(kafka_offset), count(*) FROM raw.trades WHERE kafka_partition = 0"
                                   ).fetchone()
        total = con.execute("SELECT count(*) FROM raw.trades").fetchone()[0]
    assert (first, count) == (begin, end - begin) and total == 600 - begin
    assert len(feed_events(warehouse)) == 1
