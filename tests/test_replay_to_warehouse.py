"""Recording -> replay -> Kafka -> loader -> DuckDB, reconciled per record type and by content."""

from __future__ import annotations

import subprocess
import time

import duckdb
import orjson

from conftest import PERPFLOW, binance_recording
from pipelines.broker import EmbeddedBroker
from ingest.kafka import RecordProducer, ensure_topics, new_consumer, partitions_of
from pipelines.replay import replay
from warehouse.loader import load_once


def test_replay_cli_then_load_reconciles_every_record_type(cli_env, tmp_path):
    out = subprocess.run([*PERPFLOW, "replay", "--exchange", "binance-usdm", *map(str, binance_recording())],
                         env=cli_env, capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stdout + out.stderr
    assert "every message accounted for; 0 gaps, 0 crossed books" in out.stdout
    out = subprocess.run([*PERPFLOW, "load"], env=cli_env, capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stdout + out.stderr

    expected = []
    report = replay("binance-usdm", binance_recording(), expected.append)
    by_table = {}
    for record in expected:
        by_table.setdefault(record.table, []).append(record)
    con = duckdb.connect(str(tmp_path / "home" / "warehouse_ro.duckdb"), read_only=True)
    for table in ("trades", "book_snapshots", "book_deltas", "funding", "open_interest", "liquidations",
                  "instruments", "feed_events", "dead_letters"):
        assert con.execute(f"SELECT count(*) FROM raw.{table}").fetchone()[0] == len(by_table.get(table, [])), table
    # The start-up exchangeInfo in the capture lists 122 contracts: each is an instrument record.
    assert report.stats.records == {"trade": 91, "book_delta": 752, "book_snapshot": 4 + 119, "instrument": 122}
    btc = con.execute("SELECT symbol, market_type, margin, qty_unit, contract_size, tick_size, lot_size, status "
                      "FROM raw.instruments WHERE symbol_native = 'BTCUSDT'").fetchall()
    assert btc == [("BTC-USDT-PERP", "perpetual", "linear", "base", None, 0.01, 0.001, "TRADING")]
    assert report.book["periodic_snapshots"] == 119

    trades = {t.trade_id: t for t in by_table["trades"]}
    rows = con.execute("SELECT trade_id, symbol, price, qty, side, epoch_ms(ts_exchange), first_trade_id "
                       "FROM raw.trades").fetchall()
    for trade_id, symbol, price, qty, side, ts, first in rows:
        t = trades[trade_id]
        assert (symbol, price, qty, side, ts, first) == (t.symbol, float(t.price), float(t.qty), t.side,
                                                         t.ts_exchange, t.first_trade_id)
    snaps = {s.symbol: s for s in by_table["book_snapshots"] if s.reason == "sync"}
    for symbol, seq, n_bids, top_bid in con.execute(
            "SELECT symbol, seq, len(bids), bids[1].price FROM raw.book_snapshots WHERE reason = 'sync'").fetchall():
        assert (seq, n_bids, top_bid) == (snaps[symbol].seq, len(snaps[symbol].bids), float(snaps[symbol].bids[0][0]))
    level_count = con.execute("SELECT sum(len(bids) + len(asks)) FROM raw.book_deltas").fetchone()[0]
    assert level_count == sum(len(d.bids) + len(d.asks) for d in by_table["book_deltas"])
    con.close()


def test_malformed_messages_land_in_dlq_with_reason_and_in_the_warehouse(fresh_broker, warehouse, tmp_path):
    good = {"stream": "btcusdt@aggTrade", "data": {"e": "aggTrade", "E": 1, "a": 7, "s": "BTCUSDT", "p": "100.5",
                                                   "q": "2", "f": 1, "l": 3, "T": 1700000000000, "m": True}}
    lines = [orjson.dumps(good), b'{"stream":"btcusdt@aggTrade","data":{"e":"aggTrade","s":"BTC',
             orjson.dumps({"stream": "btcusdt@aggTrade", "data": {**good["data"], "p": "NaN"}}),
             orjson.dumps({"stream": "btcusdt@depth", "data": {"e": "depthUpdate", "s": "BTCUSDT"}})]
    path = tmp_path / "frames.jsonl"
    path.write_bytes(b"\n".join(lines) + b"\n")
    producer = RecordProducer(fresh_broker.bootstrap)
    report = replay("binance-usdm", [path], producer.send)
    producer.flush()
    producer.close()
    assert report.stats.messages == 4 and report.stats.mapped == 1 and report.all_accounted
    assert report.stats.dead_letters == {"invalid JSON": 1, "aggTrade": 1, "depthUpdate": 1}

    consumer = new_consumer(fresh_broker.bootstrap)
    tps = partitions_of(consumer, ["md.dlq"])
    consumer.assign(tps)
    consumer.seek_to_beginning()
    letters = []
    deadline = time.monotonic() + 10
    while len(letters) < 3 and time.monotonic() < deadline:
        for messages in consumer.poll(500).values():
            letters += [orjson.loads(m.value) for m in messages]
    consumer.close()
    reasons = sorted(letter["reason"] for letter in letters)
    assert len(letters) == 3 and all(letter["type"] == "dead_letter" for letter in letters)
    assert reasons[0] == "aggTrade: field 'p' must be a positive decimal string, got 'NaN'"
    assert reasons[1] == "depthUpdate: missing field 'E'"
    assert reasons[2].startswith("invalid JSON")
    assert any(letter["raw"] == lines[1].decode() for letter in letters)   # kept verbatim

    load_once(warehouse, fresh_broker.bootstrap)
    with warehouse.writer() as con:
        assert con.execute("SELECT count(*) FROM raw.trades").fetchone()[0] == 1
        assert sorted(r for (r,) in con.execute("SELECT reason FROM raw.dead_letters").fetchall()) == reasons


def test_broker_that_lost_its_data_is_detected_and_reloaded(tmp_path, warehouse):
    from test_exactly_once import produce_trades
    from conftest import free_port

    port = free_port()
    with EmbeddedBroker(port=port) as first:
        ensure_topics(first.bootstrap, 3)
        produce_trades(first.bootstrap, 3000)
        assert load_once(warehouse, first.bootstrap).total == 3000
    # Same address, new memory-only broker: offsets restart, and it already holds more messages.
    with EmbeddedBroker(port=port) as second:
        ensure_topics(second.bootstrap, 3)
        produce_trades(second.bootstrap, 4000, start=10_000)
        report = load_once(warehouse, second.bootstrap)
    assert len(report.broker_resets) == 3 and report.rows["trades"] == 4000
    with warehouse.writer() as con:
        assert con.execute("SELECT count(*), count(DISTINCT trade_id) FROM raw.trades").fetchone() == (7000, 7000)
        events = con.execute("SELECT kind, detail FROM raw.feed_events").fetchall()
    assert [k for k, _ in events] == ["broker_reset"] * 3
    assert all("changed since it was loaded" in orjson.loads(d)["reason"] or ">" in orjson.loads(d)["reason"]
               for _, d in events)


def test_a_record_the_warehouse_cannot_parse_is_kept_and_the_rest_loads(fresh_broker, warehouse):
    from test_exactly_once import produce_trades

    produce_trades(fresh_broker.bootstrap, 50)
    producer = RecordProducer(fresh_broker.bootstrap)
    bad = b'{"type":"trade","v":1,"exchange":"x","symbol":"X-USDT-PERP","price":"oops"}'
    producer.producer.send("md.trades", value=bad, key=b"x|X-USDT-PERP", headers=[("type", b"trade")])
    producer.flush()
    producer.close()
    produce_trades(fresh_broker.bootstrap, 50, start=50)
    report = load_once(warehouse, fresh_broker.bootstrap)
    assert report.rows["trades"] == 100 and report.rejected == 1
    with warehouse.writer() as con:
        assert con.execute("SELECT count(DISTINCT trade_id) FROM raw.trades").fetchone()[0] == 100
        [(source, reason, raw)] = con.execute("SELECT source, reason, raw FROM raw.dead_letters").fetchall()
        assert source.startswith("md.trades:") and reason.startswith("load:") and raw == bad.decode()
        assert con.execute("SELECT sum(next_offset) FROM meta.kafka_offsets").fetchone()[0] == 101
    assert load_once(warehouse, fresh_broker.bootstrap).total == 0


def test_raw_tables_match_the_arrow_schemas_of_the_records(warehouse):
    from ingest import records

    with warehouse.writer() as con:
        for cls in records.RECORD_TYPES:
            schema = con.sql(f"SELECT * FROM raw.{cls.table} LIMIT 0").to_arrow_table().schema
            expected = records.table_schema(cls)
            assert schema.names == expected.names + ["kafka_partition", "kafka_offset"], cls
            assert [f.type for f in schema][:-2] == [f.type for f in expected], cls


def test_dydx_and_binance_adl_fills_load_into_adl_events(cli_env, tmp_path):
    """`perpflow replay --exchange dydx-v4` on the documented dYdX frames plus one constructed crossing
    update, and a Binance ADL trade, then `perpflow load`: ADL fills land in raw.adl_events next to
    their trades, dYdX liquidations are a census, and the uncrossed book is flagged."""
    from pathlib import Path

    fixture = Path(__file__).parent / "fixtures" / "dydx" / "documented.jsonl"
    crossing = {"type": "channel_data", "connection_id": "3f7c9a2e-5b1d-4e8f-9c6a-0d2b7e4f1a35", "message_id": 11,
                "id": "BTC-USD", "channel": "v4_orderbook", "version": "1.0.0",
                "contents": {"bids": [["43257.0", "0.3"]]}}     # above the ask at 43255.0 (id 10)
    dydx = tmp_path / "dydx.jsonl"
    dydx.write_bytes(fixture.read_bytes() + orjson.dumps({"recv_ns": 1724371263000000000, "msg": crossing}) + b"\n")
    binance = tmp_path / "binance.jsonl"
    binance.write_bytes(orjson.dumps({"stream": "btcusdt@trade", "data": {
        "e": "trade", "E": 1700000000123, "T": 1700000000120, "s": "BTCUSDT", "t": 5123456789, "p": "36912.40",
        "q": "0.750", "X": "ADL", "m": True}}) + b"\n")
    for exchange, path in (("dydx-v4", dydx), ("binance-usdm", binance)):
        out = subprocess.run([*PERPFLOW, "replay", "--exchange", exchange, str(path)], env=cli_env,
                             capture_output=True, text=True, timeout=120)
        assert out.returncode == 0, out.stdout + out.stderr
        assert "every message accounted for; 0 gaps, 0 crossed books" in " ".join(out.stdout.split())
    out = subprocess.run([*PERPFLOW, "load"], env=cli_env, capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stdout + out.stderr

    con = duckdb.connect(str(tmp_path / "home" / "warehouse_ro.duckdb"), read_only=True)
    rows = con.execute("""
        SELECT a.exchange, a.symbol, a.event, a.deleveraged_position, a.price, a.qty, a.qty_unit, a.trade_id,
               a.state, epoch_ms(a.ts_exchange), t.trade_type
        FROM raw.adl_events AS a JOIN raw.trades AS t USING (exchange, symbol, trade_id)
        ORDER BY a.exchange""").fetchall()
    assert rows == [
        ("binance-usdm", "BTC-USDT-PERP", "fill", None, 36912.4, 0.75, "base", "5123456789", None, 1700000000120,
         "ADL"),
        ("dydx-v4", "BTC-USDC-PERP", "fill", "short", 60365.0, 0.004, "base", "0165e61a0000000100000007", None,
         1724371260731, "DELEVERAGED")]
    details = [orjson.loads(d) for (d,) in
               con.execute("SELECT detail FROM raw.adl_events ORDER BY exchange").fetchall()]
    assert details == [{"X": "ADL", "m": True}, {"side": "SELL", "createdAtHeight": "23455258"}]
    assert con.execute("SELECT liquidated_position, qty, is_sampled FROM raw.liquidations").fetchall() == [
        ("long", 0.0123, False)]
    books = con.execute("SELECT reason, uncrossed FROM raw.book_snapshots ORDER BY ts_recv, reason").fetchall()
    assert books[0] == ("venue", 0) and books[-1] == ("periodic", 1) and [u for _, u in books[1:-1]] == [0, 0]
    con.close()
