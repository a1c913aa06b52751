"""Dagster wiring on a temporary warehouse and a real broker: loader, ohlcv_1m, checks, sensor, instance."""

from __future__ import annotations

import datetime as dt
import socket
import warnings

import dagster as dg
import pytest

from conftest import binance_recording
from ingest.kafka import RecordProducer
from pipelines.replay import replay
from warehouse.settings import Settings

warnings.filterwarnings("ignore", category=dg.BetaWarning)

from dagster_project.assets.ohlcv import ohlcv_1m  # noqa: E402
from dagster_project.assets.raw import raw_tables  # noqa: E402
from dagster_project.definitions import defs  # noqa: E402
from dagster_project.instance import prepare_dagster_home  # noqa: E402
from dagster_project.resources import KafkaResource, WarehouseResource  # noqa: E402
from dagster_project.sensors import kafka_lag_sensor  # noqa: E402


@pytest.fixture
def loaded(fresh_broker, tmp_path):
    trades = []
    producer = RecordProducer(fresh_broker.bootstrap)

    def emit(record):
        producer.send(record)
        if record.record_type == "trade":
            trades.append(record)

    replay("binance-usdm", binance_recording(), emit)
    producer.flush()
    producer.close()
    resources = {"warehouse": WarehouseResource(database=str(tmp_path / "w.duckdb"), replica=str(tmp_path / "r.duckdb")),
                 "kafka": KafkaResource(bootstrap=fresh_broker.bootstrap)}
    return resources, trades


def test_definitions_load():
    dg.Definitions.validate_loadable(defs)
    keys = {k.to_user_string() for k in defs.resolve_asset_graph().get_all_asset_keys()}
    assert {"raw/trades", "raw/book_deltas", "raw/dead_letters", "analytics/ohlcv_1m"} <= keys


def test_loader_and_ohlcv_materialize_with_exact_values(loaded):
    resources, trades = loaded
    result = dg.materialize([raw_tables], resources=resources)
    assert result.success
    counts = {m.asset_key.to_user_string(): m.metadata["dagster/row_count"].value
              for m in (e.event_specific_data.materialization for e in result.get_asset_materialization_events())}
    assert counts["raw/trades"] == 91 and counts["raw/book_deltas"] == 752 and counts["raw/book_snapshots"] == 123

    for _ in range(2):   # the partition rewrite is idempotent
        result = dg.materialize([raw_tables.to_source_assets()[0], ohlcv_1m], selection=[ohlcv_1m],
                                resources=resources, partition_key="2021-07-22")
        assert result.success
        assert all(c.passed for c in result.get_asset_check_evaluations())
        [event] = result.get_asset_materialization_events()
        metadata = event.event_specific_data.materialization.metadata
        assert set(metadata) == {"dagster/row_count", "preview", "symbols", "close_vs_open_of_day"}
        assert metadata["dagster/row_count"].value == 8
        assert {c.check_name for c in result.get_asset_check_evaluations()} == \
            {"one_row_per_minute", "prices_consistent", "units_convertible"}

    expected = {}
    for t in sorted(trades, key=lambda t: (t.ts_exchange, t.first_trade_id)):
        minute = dt.datetime.fromtimestamp(t.ts_exchange // 60_000 * 60, dt.UTC).replace(tzinfo=None)
        bar = expected.setdefault((t.symbol, minute), {"open": float(t.price), "high": 0.0, "low": 1e18,
                                                       "volume": 0.0, "buy": 0.0, "count": 0, "notional": 0.0})
        price, qty = float(t.price), float(t.qty)
        bar.update(high=max(bar["high"], price), low=min(bar["low"], price), close=price)
        bar["volume"] += qty
        bar["notional"] += price * qty
        bar["buy"] += qty if t.side == "buy" else 0
        bar["count"] += t.last_trade_id - t.first_trade_id + 1
    with resources["warehouse"].get().writer() as con:
        rows = con.execute("SELECT symbol, minute, open, high, low, close, volume, buy_volume, trade_count, vwap "
                           "FROM analytics.ohlcv_1m").fetchall()
    assert len(rows) == len(expected) == 8
    for symbol, minute, o, h, low, c, v, buy, count, vwap in rows:
        e = expected[(symbol, minute)]
        assert (o, h, low, c, count) == (e["open"], e["high"], e["low"], e["close"], e["count"])
        assert v == pytest.approx(e["volume"]) and buy == pytest.approx(e["buy"])
        assert vwap == pytest.approx(e["notional"] / e["volume"])


def test_lag_sensor_requests_a_run_only_when_kafka_has_unloaded_data(loaded):
    resources, _ = loaded
    with dg.DagsterInstance.ephemeral() as instance:
        context = dg.build_sensor_context(instance=instance, resources={"kafka": resources["kafka"]})
        request = kafka_lag_sensor(context)
        assert isinstance(request, dg.RunRequest) and int(request.tags["kafka_lag"]) == 91 + 752 + 123 + 122   # + instruments
        assert dg.materialize([raw_tables], resources=resources).success
        skip = kafka_lag_sensor(dg.build_sensor_context(instance=instance, resources={"kafka": resources["kafka"]}))
        assert isinstance(skip, dg.SkipReason) and "no new messages" in skip.skip_message


def test_lag_sensor_skips_with_the_reason_when_no_broker_answers():
    with socket.socket() as probe:               # a port nothing listens on once closed
        probe.bind(("127.0.0.1", 0))
        bootstrap = f"127.0.0.1:{probe.getsockname()[1]}"
    with dg.DagsterInstance.ephemeral() as instance:
        skip = kafka_lag_sensor(dg.build_sensor_context(instance=instance,
                                                        resources={"kafka": KafkaResource(bootstrap=bootstrap)}))
    assert isinstance(skip, dg.SkipReason)
    assert f"no Kafka broker answered at {bootstrap}" in skip.skip_message
    assert "perpflow broker start" in skip.skip_message


def test_instance_serializes_duckdb_writers(tmp_path):
    home = prepare_dagster_home(Settings(home=tmp_path, kafka_bootstrap=None))
    with dg.DagsterInstance.from_config(str(home)) as instance:
        config = instance.get_concurrency_config()
        assert config.pool_config.pool_granularity.value == "run"
        assert config.pool_config.default_pool_limit == 1
        assert instance.run_monitoring_enabled
    pools = {spec.pool for spec in [raw_tables, ohlcv_1m] for spec in [spec.op]}
    assert pools == {"duckdb_writer"}
