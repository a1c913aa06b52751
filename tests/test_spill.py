"""SpillingSink against real brokers that are absent, killed, frozen and restarted, real full disks
(a tiny tmpfs), torn spill files, and records Kafka refuses."""

from __future__ import annotations

import gc
import json
import logging
import os
import signal
import subprocess
import sys
import threading
import time

import orjson
import pytest

from conftest import tiny_disk_at

from ingest import records
from ingest.records import Trade
from ingest.simulator import SimConfig, SimulatorThread
from ingest.spill import DEAD_LETTER_RAW_BYTES, SpillingSink
from pipelines.broker import EmbeddedBroker, free_port
from ingest.kafka import BrokerUnavailable, end_offsets, new_consumer, partitions_of, wait_for_metadata
from warehouse.settings import ConfigError, load_settings

PERPFLOW = [sys.executable, "-m", "pipelines.cli"]


def trade(i: int, padding: int = 0) -> Trade:
    return Trade(exchange="binance-usdm", symbol="BTC-USDT-PERP", symbol_native="BTCUSDT",
                 ts_exchange=1_700_000_000_000 + i, ts_recv=1_700_000_000_000_000_000 + i, trade_id=str(i),
                 price="100.5", qty="0.1", qty_unit="base", side="buy", is_aggregated=True,
                 trade_type="X" * padding or None)


def topic_messages(bootstrap: str, topic: str) -> tuple[list, set[int]]:
    """Every message in the topic, partition by partition in offset order, and its partitions."""
    consumer = new_consumer(bootstrap)
    try:
        tps = partitions_of(consumer, [topic])
        ends = end_offsets(consumer, tps)
        for tp in tps:
            consumer.seek(tp, 0)
        found = {tp: [] for tp in tps}
        deadline = time.monotonic() + 60
        while any(consumer.position(tp) < ends[tp] for tp in tps):
            assert time.monotonic() < deadline, "could not read the topic to its end"
            for tp, messages in consumer.poll(500).items():
                found[tp] += [m for m in messages if m.offset < ends[tp]]
        return [m for tp in tps for m in found[tp]], {tp.partition for tp in tps}
    finally:
        consumer.close()


def topic_values(bootstrap: str, topic: str) -> list[dict]:
    """Every record in the topic (a pack's one by one), partition by partition in offset order."""
    return [orjson.loads(line) for m in topic_messages(bootstrap, topic)[0] for line in records.split_value(m.value)]


def trade_ids(bootstrap: str) -> list[int]:
    return [int(v["trade_id"]) for v in topic_values(bootstrap, "md.trades")]


def wait_until(condition, timeout: float, what: str, step=None):
    deadline = time.monotonic() + timeout
    while True:
        value = condition()
        if value:
            return value
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        (step or (lambda: time.sleep(0.1)))()


def resources() -> tuple[int, int]:
    # kafka-python leaves a failed connection's socket in a reference cycle (an exception's
    # traceback); it is closed by the cyclic collector, so count after a collection.
    gc.collect()
    return threading.active_count(), len(os.listdir("/proc/self/fd"))


class Events(list):
    def __call__(self, kind: str, detail: dict) -> None:
        self.append((kind, detail))

    def of(self, kind: str) -> list[dict]:
        return [detail for k, detail in self if k == kind]


def test_failed_probes_and_outage_cycles_leak_no_thread_and_no_fd(tmp_path, caplog):
    # pytest keeps every log record, and kafka-python's carry the connection errors (and through
    # their tracebacks, the failed sockets): silence it so the test counts the sink's resources.
    caplog.set_level(logging.CRITICAL, logger="kafka")
    closed = f"127.0.0.1:{free_port()}"
    with pytest.raises(BrokerUnavailable):     # warm up: imports, logging, first client
        wait_for_metadata(closed, timeout=0.2)
    threads, fds = resources()
    for _ in range(50):
        with pytest.raises(BrokerUnavailable):
            wait_for_metadata(closed, timeout=0.2)
    after = resources()
    print(f"50 failed probes: threads {threads} -> {after[0]}, fds {fds} -> {after[1]}")
    assert after[0] == threads and after[1] <= fds + 2, (threads, fds, after)

    # 100 outages of the sink: the broker is killed, a send fails into the spill, a probe fails,
    # the broker comes back on the same port, the drain starts a new producer session.
    port = free_port()
    broker = EmbeddedBroker(port=port, log_path=tmp_path / "broker.log").start()
    sink = SpillingSink(broker.bootstrap, tmp_path / "spill.jsonl", partitions=1, delivery_timeout_ms=250,
                        producer_config={"request_timeout_ms": 200})
    try:
        sink.send(trade(0))
        sink.producer.flush(10)
        before = None
        for cycle in range(1, 101):
            broker.process.kill()       # Tansu takes seconds to stop on SIGTERM
            broker.process.wait()
            sink.send(trade(cycle))
            wait_until(lambda: sink.spilling, 30, "the failed send to spill")
            assert not sink.drain(probe_timeout=0.2)
            broker = EmbeddedBroker(port=port, log_path=tmp_path / "broker.log").start()
            wait_until(lambda: sink.drain(probe_timeout=2.0), 30, "the drain")
            if cycle == 5:      # after the first sessions have settled
                before = resources()
        after = resources()
        print(f"outage cycles 5 -> 100: threads {before[0]} -> {after[0]}, fds {before[1]} -> {after[1]}")
        assert after[0] == before[0] and after[1] <= before[1] + 2, (before, after)
        assert sink.outages == 100 and sink.spilled_total == sink.drained_total >= 100
    finally:
        sink.close()
        broker.stop()


def test_a_sink_started_without_kafka_spills_then_drains_in_order_when_a_broker_appears(tmp_path):
    port = free_port()
    events = Events()
    sink = SpillingSink(f"127.0.0.1:{port}", tmp_path / "spill.jsonl", partitions=3, connect_timeout_s=0.5,
                        on_event=events)
    broker = None
    try:
        assert sink.spilling and sink.producer is None and sink.status()["kafka"] == "unreachable"
        for i in range(500):
            sink.send(trade(i))
        assert sink.spilled_total == 500 and not sink.drain(probe_timeout=0.3)
        broker = EmbeddedBroker(port=port, log_path=tmp_path / "broker.log").start()
        wait_until(lambda: sink.drain(), 60, "the drain")
        status = sink.status()
        assert status["kafka"] == "reachable" and not status["spilling"] and status["spill_bytes"] == 0
        assert status["drained_total"] == 500 and status["outages"] == 1
        for i in range(500, 1000):
            sink.send(trade(i))
        sink.close()
        assert trade_ids(broker.bootstrap) == list(range(1000))   # one key: one partition, in order
        consumer = new_consumer(broker.bootstrap)
        try:
            assert len(consumer.partitions_for_topic("md.book")) == 3   # created by the sink, as configured
        finally:
            consumer.close()
        assert events == []
    finally:
        if broker:
            broker.stop()


def test_perpflow_ingest_starts_with_kafka_down_and_delivers_everything_once_it_is_up(tmp_path):
    port = free_port()
    env = {k: v for k, v in os.environ.items() if not k.startswith("PERPFLOW_")}
    env.update(PERPFLOW_HOME=str(tmp_path), PERPFLOW_KAFKA_BOOTSTRAP=f"127.0.0.1:{port}", PYTHONUNBUFFERED="1",
               COLUMNS="250")
    status_file = tmp_path / "run" / "ingest-binance-usdm.json"

    def status():
        return json.loads(status_file.read_text()) if status_file.exists() else {}

    broker = None
    with SimulatorThread(SimConfig(scenario="calm", seed=3, hours=1, speed=10)) as sim:
        service = subprocess.Popen([*PERPFLOW, "ingest", "--exchange", "binance-usdm", "--symbols", "BTCUSDT",
                                    "--ws-url", sim.ws_url, "--rest-url", sim.http_url], env=env,
                                   stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
        try:
            wait_until(lambda: status().get("spilled_total", 0) > 100, 60, "records spilled while Kafka is down")
            broker = EmbeddedBroker(port=port, log_path=tmp_path / "broker.log").start()
            spilled = status()["spilled_total"]
            wait_until(lambda: not status()["spilling"] and status()["records"]["trade"] > spilled, 60,
                       "the spill to drain and live sending to resume")
        finally:
            service.send_signal(signal.SIGTERM)
            output, _ = service.communicate(timeout=60)
    try:
        assert service.returncode == 0, output
        assert "records will spill to disk" in output
        final = status()
        assert final["state"] == "stopped" and final["spill_bytes"] == 0
        ids = trade_ids(broker.bootstrap)
        assert len(ids) == len(set(ids)) == final["records"]["trade"] > 0
    finally:
        broker.stop()


@pytest.fixture
def small_disk(tmp_path):
    """A real 512 KiB file system that fills up."""
    with tiny_disk_at(tmp_path / "tiny", "512k") as disk:
        yield disk.path


def test_a_full_disk_drops_and_counts_then_spilling_resumes_when_space_returns(tmp_path, small_disk):
    filler = small_disk / "filler"
    filler.write_bytes(b"\0" * (384 * 1024))
    port = free_port()
    events = Events()
    sink = SpillingSink(f"127.0.0.1:{port}", small_disk / "spill.jsonl", connect_timeout_s=0.3, on_event=events)
    broker = None
    try:
        sent = 0
        while not sink.status()["disk_full"]:
            sink.send(trade(sent, padding=300))
            sent += 1
            assert sent < 10_000, "the disk never filled"
        assert [e["reason"] for e in events.of("spill_full")] == ["disk_full"]
        first_dropped = sent - 1
        for i in range(sent, sent + 50):
            sink.send(trade(i, padding=300))
        sent += 50
        status = sink.status()
        assert status["dropped"] == {"disk_full": 51} and status["spilled_total"] == sent - 51
        filler.unlink()

        def send_one():
            nonlocal sent
            sink.send(trade(sent, padding=300))
            sent += 1
            time.sleep(0.05)

        wait_until(lambda: events.of("spill_dropped"), 30, "spilling to resume", step=send_one)
        resumed = events.of("spill_dropped")[0]
        dropped = resumed["dropped"]["trade"]
        assert resumed["reason"] == "disk_full" and resumed["ended"] == "resumed"
        assert dropped["first_ts_exchange"] == trade(first_dropped).ts_exchange
        assert dropped["count"] == sink.status()["dropped"]["disk_full"] == sent - sink.spilled_total
        assert dropped["last_ts_exchange"] == trade(first_dropped + dropped["count"] - 1).ts_exchange
        assert not sink.status()["disk_full"]
        for line in (small_disk / "spill.jsonl").read_bytes().splitlines(keepends=True):
            assert line.endswith(b"\n") and len(orjson.loads(line)) == 4    # no torn line left behind

        broker = EmbeddedBroker(port=port, log_path=tmp_path / "broker.log").start()
        wait_until(lambda: sink.drain(), 60, "the drain")
        sink.close()
        kept = list(range(first_dropped)) + list(range(first_dropped + dropped["count"], sent))
        assert trade_ids(broker.bootstrap) == kept
    finally:
        if broker:
            broker.stop()


def test_the_spill_cap_drops_and_counts_until_the_spill_has_drained(tmp_path):
    port = free_port()
    events = Events()
    sink = SpillingSink(f"127.0.0.1:{port}", tmp_path / "spill.jsonl", max_bytes=50_000, connect_timeout_s=0.3,
                        on_event=events)
    broker = None
    try:
        for i in range(300):
            sink.send(trade(i))
        status = sink.status()
        kept = status["spilled_total"]
        assert 0 < kept < 300 and status["dropped"] == {"spill_cap": 300 - kept}
        assert status["spill_bytes"] <= 50_000 < status["spill_bytes"] + 400 and not status["disk_full"]
        assert events == [("spill_full", {"reason": "spill_cap", "spill_bytes": status["spill_bytes"],
                                          "spill_cap_bytes": 50_000,
                                          "message": "the spill reached its cap of 50,000 bytes"})]
        broker = EmbeddedBroker(port=port, log_path=tmp_path / "broker.log").start()
        wait_until(lambda: sink.drain(), 60, "the drain")
        assert events.of("spill_dropped") == [{"reason": "spill_cap", "ended": "resumed", "total": 300 - kept,
                                               "dropped": {"trade": {"count": 300 - kept,
                                                                     "first_ts_exchange": trade(kept).ts_exchange,
                                                                     "last_ts_exchange": trade(299).ts_exchange}}}]
        for i in range(300, 310):
            sink.send(trade(i))
        sink.close()
        assert trade_ids(broker.bootstrap) == list(range(kept)) + list(range(300, 310))
    finally:
        if broker:
            broker.stop()


def spill_line(record) -> bytes:
    return orjson.dumps([record.topic, records.kafka_key(record).decode(), record.record_type,
                         records.encode(record).decode()]) + b"\n"


def test_torn_and_unreadable_spill_lines_are_moved_aside_and_the_rest_drains(tmp_path, fresh_broker):
    spill = tmp_path / "spill.jsonl"
    garbage = [b"\x00\xff not json at all\n", b'["md.trades", "binance-usdm|BTC-USDT-PERP", "trade"]\n',
               b'["md.book", "k", "trade", "{}"]\n']
    torn = spill_line(trade(5))[:40]    # a kill in the middle of writing the last line
    spill.write_bytes(spill_line(trade(0)) + garbage[0] + spill_line(trade(1)) + garbage[1] + spill_line(trade(2))
                      + garbage[2] + spill_line(trade(3)) + spill_line(trade(4)) + torn)
    events = Events()
    sink = SpillingSink(fresh_broker.bootstrap, spill, on_event=events)
    assert sink.spilling                # a previous run's records come first
    sink.send(trade(6))
    assert sink.drain()
    sink.send(trade(7))
    sink.close()
    assert trade_ids(fresh_broker.bootstrap) == [0, 1, 2, 3, 4, 6, 7]
    assert sink.quarantine_path.read_bytes() == b"".join(garbage) + torn + b"\n"
    assert sink.status()["quarantined_lines"] == 4 and sink.status()["dropped"] == {}
    assert [e["reason"].split(" (")[0] for e in events.of("spill_quarantined")] == [
        "not JSON", "not [topic, key, record_type, value]",
        "record type 'trade' does not belong on topic 'md.book'", "not JSON"]
    assert spill.read_bytes() == b""


def test_records_kafka_refuses_go_to_the_dead_letter_topic_live_and_from_the_spill(tmp_path, fresh_broker):
    huge = trade(1, padding=200_000)
    spill = tmp_path / "spill.jsonl"
    spill.write_bytes(spill_line(trade(0)) + spill_line(huge) + spill_line(trade(2)))
    sink = SpillingSink(fresh_broker.bootstrap, spill, producer_config={"max_request_size": 100_000})
    assert sink.drain()
    sink.send(trade(3, padding=150_000))     # the live path: refused, not a reason to spill
    status = sink.status()
    assert not status["spilling"] and status["outages"] == 0 and status["kafka"] == "reachable"
    sink.send(trade(4))
    sink.close()
    assert sink.status()["rejected_to_dlq"] == 2 and sink.status()["dropped"] == {}
    assert trade_ids(fresh_broker.bootstrap) == [0, 2, 4]
    letters = topic_values(fresh_broker.bootstrap, "md.dlq")
    assert len(letters) == 2
    for letter, record in zip(letters, [huge, trade(3, padding=150_000)]):
        value = records.encode(record).decode()
        assert letter["reason"].startswith("rejected by Kafka: MessageSizeTooLargeError")
        assert letter["source"] == "kafka:md.trades" and letter["exchange"] == "binance-usdm"
        assert letter["raw"] == value[:DEAD_LETTER_RAW_BYTES] and letter["symbol"] == "BTC-USDT-PERP"


def test_a_pack_kafka_refuses_as_too_large_is_sent_again_record_by_record(tmp_path, fresh_broker):
    """A broker (or client) with a message limit under the pack's size: each record goes alone, and
    only one refused on its own is dead-lettered."""
    sink = SpillingSink(fresh_broker.bootstrap, tmp_path / "spill.jsonl", pack_ms=1000,
                        producer_config={"max_request_size": 100_000})
    wait_until(lambda: sink.drain(), 60, "the sink to reach the broker")
    for i in range(600):        # a pack of ~350 KB
        sink.send(trade(i, padding=150_000) if i == 150 else trade(i))
    sink.close()
    status = sink.status()
    assert status["rejected_to_dlq"] == 1 and status["spilled_total"] == 0 and status["dropped"] == {}
    assert trade_ids(fresh_broker.bootstrap) == [i for i in range(600) if i != 150]
    (letter,) = topic_values(fresh_broker.bootstrap, "md.dlq")
    assert letter["raw"] == records.encode(trade(150, padding=150_000)).decode()[:DEAD_LETTER_RAW_BYTES]


def test_a_frozen_broker_shows_unreachable_and_every_record_arrives_exactly_once(tmp_path, fresh_broker):
    sink = SpillingSink(fresh_broker.bootstrap, tmp_path / "spill.jsonl")
    stop = threading.Event()
    produced = []

    def produce():      # the websocket loop: a steady stream of records
        while not stop.is_set():
            sink.send(trade(len(produced)))
            produced.append(len(produced))
            time.sleep(0.005)

    def drain():        # the service's drain task
        while not stop.is_set():
            if sink.spilling:
                sink.drain()
            time.sleep(0.5)

    workers = [threading.Thread(target=produce), threading.Thread(target=drain)]
    for worker in workers:
        worker.start()
    try:
        wait_until(lambda: sink.status()["kafka_last_ok_age_s"] is not None and len(produced) > 200, 30,
                   "records acknowledged")
        fresh_broker.process.send_signal(signal.SIGSTOP)
        frozen_at = time.monotonic()
        try:
            wait_until(lambda: sink.status()["kafka"] == "unreachable", 60, "the frozen broker to show")
            flipped_after = time.monotonic() - frozen_at
            wait_until(lambda: sink.status()["spilling"] and sink.status()["spill_bytes"] > 0, 60, "spilling")
        finally:
            fresh_broker.process.send_signal(signal.SIGCONT)
        wait_until(lambda: sink.status()["kafka"] == "reachable" and not sink.status()["spilling"], 90,
                   "the drain after the freeze")
    finally:
        stop.set()
        for worker in workers:
            worker.join(60)
    sink.close()
    status = sink.status()
    print(f"frozen broker: unreachable after {flipped_after:.1f}s; {status}")
    assert flipped_after < 30 and status["outages"] >= 1 and status["drained_total"] > 0
    ids = trade_ids(fresh_broker.bootstrap)
    assert sorted(ids) == produced and len(ids) == len(set(ids))


def test_the_spill_cap_setting_is_validated(tmp_path, monkeypatch):
    monkeypatch.delenv("PERPFLOW_SPILL_MAX_BYTES", raising=False)
    config = tmp_path / "perpflow.toml"
    config.write_text("[ingest]\nspill_max_bytes = 5000000\n")
    monkeypatch.setenv("PERPFLOW_CONFIG", str(config))
    assert load_settings().spill_max_bytes == 5_000_000
    monkeypatch.setenv("PERPFLOW_SPILL_MAX_BYTES", "3000000")
    assert load_settings().spill_max_bytes == 3_000_000
    for bad in ("2GiB", "100", "-5"):
        monkeypatch.setenv("PERPFLOW_SPILL_MAX_BYTES", bad)
        with pytest.raises(ConfigError, match="PERPFLOW_SPILL_MAX_BYTES"):
            load_settings()
    monkeypatch.delenv("PERPFLOW_SPILL_MAX_BYTES")
    config.write_text('[ingest]\nspill_max_bytes = "lots"\n')
    with pytest.raises(ConfigError, match=r"\[ingest\] spill_max_bytes"):
        load_settings()
    config.write_text("")
    assert load_settings().spill_max_bytes == 2 << 30


@pytest.mark.parametrize("pack_ms", [0, 20], ids=["one record a message", "packed"])
@pytest.mark.parametrize("closed", ["after the sends failed", "while they are unanswered"])
def test_a_restart_after_a_frozen_broker_took_in_flight_records_stores_each_once(closed, pack_ms, tmp_path,
                                                                                  fresh_broker):
    """The first sink gives up on sends a frozen broker appends later (or closes, SIGTERM-like, while
    they are still unanswered); the next sink must neither repeat nor lose them. Packed, a pack in
    doubt is spilled whole and checked against Kafka whole."""
    spill = tmp_path / "spill.jsonl"
    sink = SpillingSink(fresh_broker.bootstrap, spill, delivery_timeout_ms=4_000, pack_ms=pack_ms)
    wait_until(lambda: sink.drain(), 60, "the sink to reach the broker")
    for sent in range(200):
        sink.send(trade(sent))
    sent += 1
    sink.flush_packs()
    wait_until(lambda: not sink.status()["pending_sends"] and not sink.spilling, 60, "200 acknowledged sends")
    fresh_broker.process.send_signal(signal.SIGSTOP)
    try:
        for _ in range(300):        # in flight to a broker that reads nothing: their fate is unknown
            sink.send(trade(sent))
            sent += 1
            if sent % 50 == 0:
                sink.flush_packs()
        if closed == "after the sends failed":
            wait_until(lambda: sink.status()["spilling"], 60, "a send to fail")
            # kafka-python fails the rest by its own timers, which a loaded machine can hold up for
            # minutes; whatever is still unanswered at close is spilled as in doubt, like the failed ones.
            deadline = time.monotonic() + 30
            while sink.status()["pending_sends"] and time.monotonic() < deadline:
                time.sleep(0.1)
        else:
            assert sink.status()["pending_sends"] > 0
        sink.close(timeout=1.0)
    finally:
        fresh_broker.process.send_signal(signal.SIGCONT)
    doubt = orjson.loads(sink.unsure_path.read_bytes())
    assert doubt["topics"] == ["md.trades"] and doubt["check_from"], doubt

    again = SpillingSink(fresh_broker.bootstrap, spill)
    try:
        wait_until(lambda: again.drain(), 60, "the drain after the restart")
    finally:
        again.close()
    ids = trade_ids(fresh_broker.bootstrap)
    print(f"restart after a freeze: {again.status()['duplicates_skipped']} spilled records were already in Kafka")
    assert sorted(ids) == list(range(sent)) and len(ids) == sent
    assert not again.unsure_path.exists()


def test_packed_records_keep_each_symbols_order_and_load_once(tmp_path, fresh_broker):
    """Trades and book records of several symbols sharing partitions, packed: every message's
    records belong to the partition its key picks, each symbol's records arrive in the order they
    were sent (a book's snapshots among its deltas too), and the loader stores each record once
    (a pack's records share its offset)."""
    from ingest.kafka import ensure_topics, key_partition
    from ingest.records import BookDelta, BookSnapshot
    from warehouse.loader import load_once
    from warehouse.store import Warehouse

    ensure_topics(fresh_broker.bootstrap, 3)
    sink = SpillingSink(fresh_broker.bootstrap, tmp_path / "spill.jsonl", pack_ms=50)
    wait_until(lambda: sink.drain(), 60, "the sink to reach the broker")
    symbols = [f"S{i}" for i in range(7)]
    for i in range(3500):
        symbol = symbols[i % 7]
        common = dict(exchange="binance-usdm", symbol=f"{symbol}-USDT-PERP", symbol_native=f"{symbol}USDT",
                      ts_exchange=1_700_000_000_000 + i, ts_recv=1_700_000_000_000_000_000 + i)
        sink.send(Trade(**common, trade_id=str(i), price="100.5", qty="0.1", qty_unit="base", side="buy",
                        is_aggregated=True))
        levels = [["100.5", "1"]]
        sink.send(BookSnapshot(**common, bids=levels, asks=[], seq=i, reason="periodic") if i % 70 < 7 else
                  BookDelta(**common, bids=levels, asks=[], first_seq=i, last_seq=i, prev_seq=i - 7))
    sink.close()
    assert sink.status()["spilled_total"] == 0
    assert sink.sent == {"trade": 3500, "book_delta": 3150, "book_snapshot": 350}

    sent_messages = 0
    for topic, id_field in (("md.trades", "trade_id"), ("md.book", "ts_exchange")):
        messages, partitions = topic_messages(fresh_broker.bootstrap, topic)
        sent_messages += len(messages)
        by_symbol: dict[str, list] = {}
        for message in messages:
            for line in records.split_value(message.value):
                value = orjson.loads(line)
                key = f"binance-usdm|{value['symbol']}".encode()
                assert key_partition(key, partitions) == message.partition, (value["symbol"], message.partition)
                by_symbol.setdefault(value["symbol"], []).append((int(value[id_field]), value["type"]))
        print(f"3,500 records of 7 symbols on {topic} in {len(messages)} messages")
        assert len(messages) < 3500 / 5
        assert sum(map(len, by_symbol.values())) == 3500
        for symbol, items in by_symbol.items():
            assert items == sorted(items) and len(items) == 500, symbol
            if topic == "md.book":
                assert [t for _, t in items] == ["book_snapshot" if (ts - 1_700_000_000_000) % 70 < 7 else "book_delta"
                                                 for ts, _ in items]
    assert sink.messages_sent == sent_messages

    warehouse = Warehouse(tmp_path / "w.duckdb")
    report = load_once(warehouse, fresh_broker.bootstrap)
    assert (report.rows["trades"], report.rows["book_deltas"], report.rows["book_snapshots"]) == (3500, 3150, 350)
    assert report.rejected == 0
    with warehouse.reader(live=True) as con:
        stored, distinct = con.execute("SELECT count(*), count(DISTINCT trade_id) FROM raw.trades").fetchone()
        deltas = con.execute("SELECT count(DISTINCT last_seq) FROM raw.book_deltas").fetchone()[0]
    assert (stored, distinct, deltas) == (3500, 3500, 3150)
    assert load_once(warehouse, fresh_broker.bootstrap).total == 0
