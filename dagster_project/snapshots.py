"""The daily snapshot: at 00:15 UTC materialize the closed day for every daily asset, export the
day's rows of every daily table to Parquet and refresh the read replica.

Parquet layout: ``<lake>/<table>/date=YYYY-MM-DD/part-0.parquet`` (Hive partitioning, readable by
any engine without touching DuckDB's lock). A day's directory is replaced as a whole, so a rerun
or a backfill rewrites it instead of adding files.
"""

import datetime as dt
import shutil
from pathlib import Path

import dagster as dg

from dagster_project.tables import partition_days
from dagster_project.assets.microstructure_depth import BOOK_DEPTH, LIQUIDITY_WITHDRAWALS
from dagster_project.assets.microstructure_derivatives import FUNDING, OPEN_INTEREST
from dagster_project.assets.microstructure_liquidation_map import (
    CROSS_VENUE_CASCADES,
    LIQUIDATION_LEVEL_SCORES,
    LIQUIDATION_LEVELS,
)
from dagster_project.assets.microstructure_liquidations import LIQUIDATION_CASCADES, LIQUIDATIONS_1M
from dagster_project.assets.microstructure_positioning import POSITIONING_ASSETS
from dagster_project.assets.microstructure_stress import MARKET_STRESS
from dagster_project.partitions import daily_partitions
from dagster_project.resources import WarehouseResource
from warehouse.settings import load_settings

OHLCV_1M = ["analytics", "ohlcv_1m"]
DAILY_ASSETS = [OHLCV_1M, BOOK_DEPTH, LIQUIDITY_WITHDRAWALS, OPEN_INTEREST, FUNDING, LIQUIDATIONS_1M,
                LIQUIDATION_CASCADES, MARKET_STRESS, LIQUIDATION_LEVELS, LIQUIDATION_LEVEL_SCORES, CROSS_VENUE_CASCADES,
                *(list(asset.key.path) for asset in POSITIONING_ASSETS)]
LAKE_EXPORT = ["lake", "daily_export"]


class LakeResource(dg.ConfigurableResource):
    """Where closed days are exported as Parquet (``settings.lake_path``, ``data/lake`` by default)."""

    path: str

    def day_dir(self, table: str, day: dt.date) -> Path:
        return Path(self.path) / table / f"date={day:%Y-%m-%d}"


def lake_resources() -> dict:
    return {"lake": LakeResource(path=str(load_settings().lake_path))}


def export_day(con, lake: LakeResource, table: str, day: dt.date) -> int:
    """Replace the day's Parquet directory of ``analytics.<table>``; returns the rows written."""
    target = lake.day_dir(table, day)
    staging = target.with_name(target.name + ".tmp")
    shutil.rmtree(staging, ignore_errors=True)
    staging.mkdir(parents=True)
    # COPY takes no bound parameters: the date is formatted from a date object, the path quoted.
    path = str(staging / "part-0.parquet").replace("'", "''")
    con.execute(f"COPY (SELECT * FROM analytics.{table} WHERE day = DATE '{day:%Y-%m-%d}') TO '{path}' "
                "(FORMAT parquet)")
    shutil.rmtree(target, ignore_errors=True)
    staging.rename(target)
    return con.execute(f"SELECT count(*) FROM analytics.{table} WHERE day = ?", [day]).fetchone()[0]


@dg.asset(
    key=LAKE_EXPORT,
    deps=[dg.AssetKey(key) for key in DAILY_ASSETS],
    partitions_def=daily_partitions,
    pool="duckdb_writer",
    group_name="lake",
    kinds={"parquet"},
    backfill_policy=dg.BackfillPolicy.single_run(),
    description="Parquet export of the day's rows of every daily analytics table to "
                "<lake>/<table>/date=YYYY-MM-DD/part-0.parquet (the directory is replaced), then a fresh read replica.",
)
def lake_export(context: dg.AssetExecutionContext, warehouse: WarehouseResource, lake: LakeResource):
    days = partition_days(context)
    written = {}
    with warehouse.get().writer() as con:
        for start, _ in days:
            for key in DAILY_ASSETS:
                table = key[-1]
                written[f"{table}/date={start:%Y-%m-%d}"] = export_day(con, lake, table, start.date())
    replica_s = warehouse.publish_replica_if_due(force=True)
    return dg.MaterializeResult(metadata={
        "dagster/row_count": sum(written.values()), "rows_per_file": dg.MetadataValue.json(written),
        "lake": dg.MetadataValue.path(lake.path), "replica_published_s": round(replica_s, 3),
    })


daily_snapshot_job = dg.define_asset_job(
    "daily_snapshot_job",
    selection=dg.AssetSelection.assets(*DAILY_ASSETS, LAKE_EXPORT),
    executor_def=dg.in_process_executor,
    description="Every daily analytics asset for one UTC day, then the Parquet export and the replica refresh.",
)


@dg.schedule(job=daily_snapshot_job, cron_schedule="15 0 * * *", execution_timezone="UTC",
             default_status=dg.DefaultScheduleStatus.RUNNING,
             description="00:15 UTC: the day that just closed. (The daily partitions end one day late so the "
                         "current day can be materialized by hand; a schedule built from the partitioned job "
                         "would target that unfinished day.)")
def daily_snapshot_schedule(context: dg.ScheduleEvaluationContext):
    closed = (context.scheduled_execution_time - dt.timedelta(days=1)).strftime("%Y-%m-%d")
    return dg.RunRequest(run_key=closed, partition_key=closed)
