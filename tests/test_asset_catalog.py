"""The asset catalog, pinned: every asset key with its group and partitioning, and every asset check
by name and asset. Renaming a key, a group or a check breaks users' selections, schedules, alerts and
the run history, so a change here must be deliberate: edit CATALOG in the same commit. Also the
table declaration itself (dagster_project.tables) on a temporary warehouse."""

from __future__ import annotations

import datetime as dt
import warnings

import dagster as dg
import pyarrow as pa
import pytest

from ingest import records
from warehouse.store import Warehouse

warnings.filterwarnings("ignore", category=dg.BetaWarning)

from dagster_project.definitions import defs  # noqa: E402
from dagster_project.resources import WarehouseResource  # noqa: E402
from dagster_project.tables import (  # noqa: E402
    Family,
    Picture,
    TableRun,
    holds_for_every_row,
    no_duplicates,
    table_asset,
)

DAILY = "daily"
# key -> (group, partitioning, check names)
CATALOG = {
    "analytics/ohlcv_1m": ("analytics", DAILY, {"one_row_per_minute", "prices_consistent", "units_convertible"}),
    "analytics/book_depth": ("microstructure", DAILY, {
        "depth_non_decreasing_with_band", "no_crossed_books", "no_duplicate_keys", "non_empty_where_feed_up",
        "units_convertible", "values_in_range"}),
    "analytics/liquidity_withdrawals": ("microstructure", DAILY, {"no_duplicate_keys", "values_in_range"}),
    "analytics/open_interest": ("microstructure", DAILY, {
        "no_duplicate_keys", "non_empty_where_feed_up", "units_convertible", "values_in_range"}),
    "analytics/funding": ("microstructure", DAILY, {"no_duplicate_keys", "non_empty_where_feed_up",
                                                    "values_in_range"}),
    "analytics/liquidations_1m": ("microstructure", DAILY, {
        "no_duplicate_keys", "non_empty_where_feed_up", "units_convertible", "values_in_range"}),
    "analytics/liquidation_cascades": ("microstructure", DAILY, {"no_duplicate_keys", "units_convertible",
                                                                 "values_in_range"}),
    "analytics/market_stress": ("microstructure", DAILY, {"no_duplicate_keys", "non_empty_where_feed_up",
                                                          "values_in_range"}),
    "analytics/adl_events": ("microstructure", DAILY, {"every_event_kept", "units_convertible", "values_in_range"}),
    "analytics/aggregated_open_interest": ("microstructure", DAILY, {
        "no_duplicate_keys", "total_is_sum_of_venues", "units_convertible", "values_in_range"}),
    "analytics/aggregated_funding": ("microstructure", DAILY, {"no_duplicate_keys", "values_in_range"}),
    "analytics/taker_volume": ("microstructure", DAILY, {
        "no_duplicate_keys", "non_empty_where_feed_up", "reconciled_within_tolerance", "total_is_sum_of_venues",
        "units_convertible", "values_in_range"}),
    "analytics/basis": ("microstructure", DAILY, {"no_duplicate_keys", "values_in_range"}),
    "analytics/slippage": ("microstructure", DAILY, {
        "no_duplicate_keys", "non_empty_where_feed_up", "too_shallow_is_null", "units_convertible",
        "values_in_range"}),
    "analytics/liquidation_levels": ("microstructure", DAILY, {"no_duplicate_keys", "values_in_range"}),
    "analytics/liquidation_level_scores": ("microstructure", DAILY, {"no_duplicate_keys", "sampled_feed_labelled",
                                                                     "units_convertible", "values_in_range"}),
    "analytics/cross_venue_cascades": ("microstructure", DAILY, {"first_mover_is_earliest", "no_duplicate_keys",
                                                                 "shares_sum_to_one", "units_convertible",
                                                                 "values_in_range"}),
    "analytics/candles_1d": ("quant", None, {"ohlc_consistent", "unique_key"}),
    "analytics/candles_1h": ("quant", None, {"ohlc_consistent", "unique_key"}),
    "analytics/quantmetrics": ("quant", DAILY, {"null_iff_under_covered", "unique_key", "values_in_range"}),
    "analytics/support_resistance_levels": ("quant", DAILY, {"kind_matches_price", "strength_in_range",
                                                             "unique_key"}),
    "analytics/trading_signals": ("quant", DAILY, {"signal_values", "unique_key", "votes_complete"}),
    "analytics/hourly_trading_signals": ("quant", DAILY, {"signal_values", "unique_key", "votes_complete"}),
    "analytics/signal_performance": ("quant", DAILY, {"rates_in_range", "unique_key"}),
    "lake/daily_export": ("lake", DAILY, set()),
    "raw/candles": ("raw", None, set()),
    # One raw table per record type (ingest.records), loaded by raw_tables.
    **{f"raw/{cls.table}": ("raw", None, set()) for cls in records.RECORD_TYPES},
}


def test_asset_keys_groups_partitions_and_checks_are_pinned():
    graph = defs.resolve_asset_graph()
    checks: dict[str, set[str]] = {}
    for check in graph.asset_check_keys:
        checks.setdefault(check.asset_key.to_user_string(), set()).add(check.name)
    found = {}
    for key in graph.get_all_asset_keys():
        node = graph.get(key)
        partitioning = None if node.partitions_def is None else DAILY
        if partitioning:
            assert node.partitions_def == defs.resolve_job_def("daily_snapshot_job").partitions_def
        found[key.to_user_string()] = (node.group_name, partitioning, checks.get(key.to_user_string(), set()))
    assert found == CATALOG


def test_every_table_asset_writes_in_the_writer_pool_and_backfills_in_one_run():
    tables = [a for a in defs.assets if isinstance(a, dg.AssetsDefinition) and len(a.keys) == 1
              and a.key.path[0] == "analytics"]
    assert len(tables) == sum(key.startswith("analytics/") for key in CATALOG)
    for asset in tables:
        assert asset.op.pool == "duckdb_writer", asset.key
        assert asset.backfill_policy == dg.BackfillPolicy.single_run(), asset.key
        assert all(spec.description for spec in asset.check_specs), asset.key


# --- the declaration on a temporary table -------------------------------------------------------

TOY = Family("toy_group")
DAY = dt.datetime(2025, 3, 1)


def _toy_table(rows_of_day, *, write=True):
    @table_asset(TOY, "toy_prices", deps=[], description="A table for the declaration's own tests.",
                 checks=[no_duplicates("symbol, minute"),
                         holds_for_every_row("positive_price", "price > 0.", "price > 0")])
    def toy_prices(run: TableRun) -> dict:
        if write:
            run.rewrite_each_day(rows_of_day)
        return {"symbols": run.count(f"SELECT count(DISTINCT symbol) FROM {run.table} WHERE {run.where}"),
                "picture": Picture("toy", b"\x89PNG")}
    return toy_prices


@pytest.fixture
def toy_warehouse(tmp_path):
    warehouse = Warehouse(tmp_path / "w.duckdb", tmp_path / "r.duckdb")
    with warehouse.writer() as con:
        con.execute("CREATE TABLE analytics.toy_prices (symbol VARCHAR, minute TIMESTAMP, price DOUBLE, day DATE)")
        # A row of the day before, which a rewrite of the later day must keep.
        con.execute("INSERT INTO analytics.toy_prices VALUES ('BTC', ?, 1.0, ?)",
                    [DAY - dt.timedelta(hours=1), (DAY - dt.timedelta(days=1)).date()])
    return warehouse, {"warehouse": WarehouseResource(database=str(warehouse.path),
                                                      replica=str(warehouse.replica_path))}


def _rows(prices: list[float]):
    def rows_of_day(start, end):
        minutes = [start + dt.timedelta(minutes=i) for i in range(len(prices))]
        return pa.table({"symbol": ["BTC"] * len(prices), "minute": minutes, "price": prices,
                         "day": [start.date()] * len(prices)})
    return rows_of_day


def test_a_declared_table_rewrites_its_day_and_reports_rows_checks_and_pictures(toy_warehouse):
    warehouse, resources = toy_warehouse
    for prices in ([5.0, 6.0, 7.0], [5.0, -1.0]):   # the second run replaces the first run's day
        result = dg.materialize([_toy_table(_rows(prices))], resources=resources, partition_key=f"{DAY:%Y-%m-%d}")
        assert result.success
    [materialization] = [e.materialization for e in result.get_asset_materialization_events()]
    assert materialization.metadata["dagster/row_count"].value == 2
    assert materialization.metadata["symbols"].value == 1
    assert materialization.metadata["picture"].value.startswith("![toy](data:image/png;base64,")
    checks = {c.check_name: c for c in result.get_asset_check_evaluations()}
    assert checks["no_duplicate_keys"].passed
    assert not checks["positive_price"].passed and checks["positive_price"].metadata["violating_rows"].value == 1
    with warehouse.writer() as con:
        assert con.execute("SELECT price FROM analytics.toy_prices ORDER BY minute").fetchall() == \
            [(1.0,), (5.0,), (-1.0,)]


def test_a_body_that_never_rewrites_fails_naming_the_table(toy_warehouse):
    _, resources = toy_warehouse
    with pytest.raises(RuntimeError, match=r"analytics.toy_prices: the asset body returned without run.rewrite"):
        dg.materialize([_toy_table(None, write=False)], resources=resources, partition_key=f"{DAY:%Y-%m-%d}")


def test_an_hourly_table_rewrites_only_its_hour(toy_warehouse):
    warehouse, resources = toy_warehouse
    hours = dg.HourlyPartitionsDefinition(start_date="2025-03-01-00:00", timezone="UTC")

    @table_asset(TOY, "toy_prices", partition_column="minute", partitions=hours, deps=[], checks=[],
                 description="Hourly rows of the toy table.")
    def toy_prices(run: TableRun) -> dict:
        run.rewrite_each_day(_rows([float(run.start.hour)] * 3))
        return {}

    for hour in ("05", "06", "05"):
        result = dg.materialize([toy_prices], resources=resources, partition_key=f"2025-03-01-{hour}:00")
        assert result.success
        [event] = result.get_asset_materialization_events()
        assert event.event_specific_data.materialization.metadata["dagster/row_count"].value == 3
    with warehouse.writer() as con:
        assert con.execute("SELECT hour(minute), count(*), min(price) FROM analytics.toy_prices "
                           "GROUP BY ALL ORDER BY 1").fetchall() == [(5, 3, 5.0), (6, 3, 6.0), (23, 1, 1.0)]
