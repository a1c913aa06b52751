"""What replay and the feed handler do with input that is not plain, wanted market data:
symbols nobody subscribed to, files without a single venue message, contracts without funding."""

from __future__ import annotations

from pathlib import Path

import duckdb
import orjson

from conftest import binance_recording
from ingest.feed import UNSUBSCRIBED, FeedHandler
from ingest.recordings import read_recordings
from ingest.venues.binance_usdm import BinanceUsdm
from ingest.kafka import RecordProducer
from pipelines.replay import replay
from test_cli import base_env, run
from warehouse.loader import load_once
from warehouse.schema import migrate, raw_table_ddl


def feed_recording(handler: FeedHandler) -> None:
    for message in read_recordings(binance_recording(), BinanceUsdm()):
        if message.kind == "ws":
            handler.on_ws(message.payload, message.ts_recv, message.source)
        elif message.kind == "rest":
            handler.on_rest(message.source, message.payload, message.ts_recv)


def test_unsubscribed_symbols_are_counted_and_never_reach_book_or_trade_state():
    everything, sushi_only = [], []
    full = FeedHandler(BinanceUsdm(), everything.append)
    feed_recording(full)
    subscribed = FeedHandler(BinanceUsdm(), sushi_only.append, symbols=["sushiusdt"])
    feed_recording(subscribed)

    assert set(full.book_sync.symbols) == {"SUSHI-USDT-PERP", "AKRO-USDT-PERP", "KEEP-USDT-PERP", "CTK-USDT-PERP"}
    assert set(subscribed.book_sync.symbols) == {"SUSHI-USDT-PERP"}
    assert set(subscribed._last_trade_id) <= {"SUSHI-USDT-PERP"} and subscribed._last_trade_id
    # Exactly the collected messages of the other three symbols were dropped.
    others = 0
    for message in read_recordings(binance_recording(), BinanceUsdm()):
        if message.kind == "rest":
            others += "/fapi/v1/depth" in message.source and "symbol=SUSHIUSDT" not in message.source
        elif message.kind == "ws":
            data = orjson.loads(message.payload)["data"]
            others += data["e"] in ("aggTrade", "depthUpdate") and data["s"] != "SUSHIUSDT"
    assert subscribed.stats.skipped[UNSUBSCRIBED] == others > 500
    assert subscribed.stats.accounted == subscribed.stats.messages == full.stats.messages
    assert {r.symbol_native for r in sushi_only if hasattr(r, "symbol_native")} == {"SUSHIUSDT"}
    assert [r for r in everything if getattr(r, "symbol_native", None) == "SUSHIUSDT"] == \
        [r for r in sushi_only if getattr(r, "symbol_native", None) == "SUSHIUSDT"]


def test_replay_keeps_only_the_symbols_asked_for():
    kept = []
    report = replay("binance-usdm", binance_recording(), kept.append, symbols=["CTKUSDT"])
    assert report.all_accounted and report.stats.skipped[UNSUBSCRIBED] > 0
    assert {r.symbol for r in kept if r.record_type != "feed_event"} == {"CTK-USDT-PERP"}
    kept_all = []
    assert replay("binance-usdm", binance_recording(), kept_all.append).stats.skipped[UNSUBSCRIBED] == 0


def test_replay_of_a_file_without_a_venue_message_is_an_error(tmp_path):
    empty = tmp_path / "empty.jsonl"
    empty.write_bytes(b"")
    blank = tmp_path / "blank.jsonl"
    blank.write_bytes(b"\n\n   \n")
    text = tmp_path / "notes.txt"
    text.write_text("this is not a recording\nnor is this\n")
    env = base_env(tmp_path)   # no broker at all: the check comes before Kafka is needed
    for path, found in ((empty, "(the files are empty)"), (blank, "(1 line(s) of capture metadata"),
                        (text, "(2 line(s) of capture metadata: feed configuration)")):
        out = run(["replay", "--exchange", "binance-usdm", str(path)], env=env)
        assert out.returncode == 1, out.stdout + out.stderr
        said = " ".join(out.stdout.split())   # rich wraps long lines
        assert said.startswith(f"error: no venue message to replay in {path} {found}"), said


def test_replay_rejects_a_bad_symbols_list(tmp_path):
    out = run(["replay", "--exchange", "binance-usdm", "--symbols", "BTC-USDT", *map(str, binance_recording())],
              env=base_env(tmp_path))
    assert out.returncode == 2 and "comma-separated venue symbols" in out.stderr


MARK_PRICES = [
    # perpetual, current format
    {"e": "markPriceUpdate", "E": 1700000000000, "s": "BTCUSDT", "p": "37000.10", "i": "36990.00",
     "P": "37001.00", "r": "-0.00012000", "T": 1700006400000},
    # delivery contract: T 0 and an empty or placeholder rate
    {"e": "markPriceUpdate", "E": 1700000001000, "s": "BTCUSDT_240329", "p": "38000.50", "i": "36990.00",
     "P": "38001.00", "r": "", "T": 0},
    {"e": "markPriceUpdate", "E": 1700000002000, "s": "ETHUSDT_240329", "p": "2100.25", "i": "2050.00",
     "P": "2101.00", "r": "0.00000000", "T": 0},
    # 2019 format: no index price
    {"e": "markPriceUpdate", "E": 1562305380000, "s": "BTCUSDT", "p": "11794.15000000", "r": "0.00038167",
     "T": 1562306400000},
]


def test_funding_without_a_rate_and_without_an_index_loads_as_null(fresh_broker, warehouse, tmp_path):
    path = tmp_path / "mark.jsonl"
    oi = {"stream": "btcusdt@openInterest", "generated": True, "data": {"openInterest": "10659.509",
                                                                         "symbol": "BTCUSDT"}}
    path.write_bytes(b"\n".join(orjson.dumps({"stream": "x@markPrice", "data": m}) for m in MARK_PRICES)
                     + b"\n" + orjson.dumps(oi) + b"\n")
    producer = RecordProducer(fresh_broker.bootstrap)
    report = replay("binance-usdm", [path], producer.send)
    producer.flush()
    producer.close()
    assert report.stats.records == {"funding": 4, "open_interest": 1} and not report.stats.dead_letters
    load_once(warehouse, fresh_broker.bootstrap)
    with warehouse.writer() as con:
        rows = con.execute("SELECT symbol, rate, interval_hours, epoch_ms(next_funding_time), mark_price, index_price "
                           "FROM raw.funding ORDER BY epoch_ms(ts_exchange) DESC").fetchall()
        [(oi_ts, oi_value)] = con.execute("SELECT epoch_ms(ts_exchange), open_interest FROM raw.open_interest")\
            .fetchall()
    assert rows == [("ETH-USDT-240329", None, None, None, 2100.25, 2050.0),
                    ("BTC-USDT-240329", None, None, None, 38000.5, 36990.0),
                    ("BTC-USDT-PERP", -0.00012, 8, 1700006400000, 37000.1, 36990.0),
                    ("BTC-USDT-PERP", 0.00038167, 8, 1562306400000, 11794.15, None)]
    # A REST answer without its own time is stamped with its receive time (the preceding frame's E).
    assert (oi_ts, oi_value) == (1562305380000, 10659.509)


def test_funding_nullability_checksums_and_instruments_migrate_an_existing_warehouse(tmp_path):
    from ingest.records import BookDelta, BookSnapshot, Funding, OpenInterest
    from warehouse import ddl_microstructure

    con = duckdb.connect(str(tmp_path / "old.duckdb"))
    con.execute("CREATE SCHEMA raw")
    con.execute(raw_table_ddl(Funding).replace("rate DOUBLE", "rate DOUBLE NOT NULL")
                .replace("interval_hours BIGINT", "interval_hours BIGINT NOT NULL"))
    for cls in (BookSnapshot, BookDelta):     # as record schema 2 made them: no checksum column
        con.execute(raw_table_ddl(cls).replace(", checksum BIGINT", ""))
    con.execute(raw_table_ddl(OpenInterest).replace(", open_interest_short DOUBLE", ""))
    for statement in ddl_microstructure.STATEMENTS:   # migration 2's analytics tables, which later ones alter
        con.execute(statement)
    con.execute("CREATE SCHEMA meta")
    con.execute("CREATE TABLE meta.schema_migrations (version INTEGER PRIMARY KEY, applied_at TIMESTAMP NOT NULL)")
    con.execute("INSERT INTO meta.schema_migrations VALUES (1, now()), (2, now()), (3, now())")
    migrate(con)
    con.execute("INSERT INTO raw.funding (exchange, symbol, symbol_native, ts_exchange, ts_recv, is_realised) "
                "VALUES ('binance-usdm', 'BTC-USDT-240329', 'BTCUSDT_240329', now(), now(), false)")
    assert con.execute("SELECT rate, interval_hours FROM raw.funding").fetchall() == [(None, None)]
    for table in ("book_snapshots", "book_deltas"):
        assert "checksum" in [c[0] for c in con.execute(f"DESCRIBE raw.{table}").fetchall()]
    assert con.execute("SELECT count(*) FROM raw.instruments").fetchone() == (0,)
    # record schema 4 (migration 7): ADL events, and how often a snapshot's book was uncrossed
    assert "uncrossed" in [c[0] for c in con.execute("DESCRIBE raw.book_snapshots").fetchall()]
    assert con.execute("SELECT count(*) FROM raw.adl_events").fetchone() == (0,)
    # migration 8: analytics.adl_events; migration 9: the short side of open interest (GMX)
    assert con.execute("SELECT count(*) FROM analytics.adl_events").fetchone() == (0,)
    assert "open_interest_short" in [c[0] for c in con.execute("DESCRIBE raw.open_interest").fetchall()]


FIXTURES = Path(__file__).parent / "fixtures"


def test_replaying_another_venues_frames_is_an_error_naming_that_venue(tmp_path):
    okx = FIXTURES / "okx" / "documented_examples.jsonl"
    out = run(["replay", "--exchange", "binance-usdm", str(okx)], env=base_env(tmp_path))
    assert out.returncode == 1 and "run with --exchange okx-swap" in out.stdout + out.stderr
    bybit = FIXTURES / "bybit" / "documented.jsonl"
    out = run(["replay", "--exchange", "okx-swap", str(bybit)], env=base_env(tmp_path))
    assert out.returncode == 1 and "run with --exchange bybit-linear" in out.stdout + out.stderr
    hyperliquid = FIXTURES / "hyperliquid" / "documented.jsonl"
    out = run(["replay", "--exchange", "bybit-linear", str(hyperliquid)], env=base_env(tmp_path))
    assert out.returncode == 1 and "run with --exchange hyperliquid" in out.stdout + out.stderr
    out = run(["replay", "--exchange", "hyperliquid", str(okx)], env=base_env(tmp_path))
    assert out.returncode == 1 and "run with --exchange okx-swap" in out.stdout + out.stderr


def test_replaying_dydx_frames_as_another_venue_or_others_as_dydx_is_an_error(tmp_path):
    dydx = FIXTURES / "dydx" / "documented.jsonl"
    out = run(["replay", "--exchange", "okx-swap", str(dydx)], env=base_env(tmp_path))
    assert out.returncode == 1 and "run with --exchange dydx-v4" in out.stdout + out.stderr
    bybit = FIXTURES / "bybit" / "documented.jsonl"
    out = run(["replay", "--exchange", "dydx-v4", str(bybit)], env=base_env(tmp_path))
    assert out.returncode == 1 and "run with --exchange bybit-linear" in out.stdout + out.stderr
    out = run(["replay", "--exchange", "dydx-v4", "--symbols", "BTC-USDC-PERP", str(dydx)], env=base_env(tmp_path))
    assert out.returncode == 2 and "BTC-USD,ETH-USD" in out.stderr and "dydx-v4" in out.stderr


def test_replaying_gmx_bodies_as_another_venue_or_others_as_gmx_is_an_error(tmp_path):
    gmx = tmp_path / "gmx.jsonl"   # REST bodies only, as perpflow records a polled venue
    rows = [("tokens.json", "/tokens"), ("markets_info.json", "/markets/info"),
            ("prices_tickers.json", "/prices/tickers")]
    gmx.write_bytes(b"".join(orjson.dumps({"recv_ns": 1_709_500_000_000_000_000 + i, "kind": "rest",
                                           "source": f"https://arbitrum-api.gmxinfra.io{path}",
                                           "msg": orjson.loads((FIXTURES / "gmx" / name).read_bytes())}) + b"\n"
                            for i, (name, path) in enumerate(rows)))
    out = run(["replay", "--exchange", "okx-swap", str(gmx)], env=base_env(tmp_path))
    assert out.returncode == 1 and "run with --exchange gmx-v2" in out.stdout + out.stderr
    okx = FIXTURES / "okx" / "documented_examples.jsonl"
    out = run(["replay", "--exchange", "gmx-v2", str(okx)], env=base_env(tmp_path))
    assert out.returncode == 1 and "run with --exchange okx-swap" in out.stdout + out.stderr


def test_symbols_are_checked_against_the_venues_spelling(tmp_path):
    okx = FIXTURES / "okx" / "documented_examples.jsonl"
    out = run(["replay", "--exchange", "okx-swap", "--symbols", "BTCUSDT", str(okx)], env=base_env(tmp_path))
    assert out.returncode == 2 and "BTC-USDT-SWAP" in out.stderr and "okx-swap" in out.stderr
