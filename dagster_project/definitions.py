"""All of perpflow's Dagster definitions, loaded from this one place: each asset family's list
(``dagster_project/assets/``, tables declared with ``dagster_project.tables.table_asset``), jobs, schedules,
the lag sensor and the resources."""

import dagster as dg

from dagster_project.assets.microstructure import MICROSTRUCTURE_ASSETS
from dagster_project.assets.microstructure_liquidation_map import LIQUIDATION_MAP_ASSETS
from dagster_project.assets.ohlcv import ohlcv_1m
from dagster_project.assets.quant import QUANT_ASSETS
from dagster_project.assets.raw import raw_load_job, raw_tables
from dagster_project.jobs_quant import quant_hourly_schedule, quant_job
from dagster_project.maintenance import purge_runs_job, purge_runs_schedule
from dagster_project.resources import default_resources
from dagster_project.sensors import kafka_lag_sensor
from dagster_project.snapshots import daily_snapshot_job, daily_snapshot_schedule, lake_export, lake_resources

defs = dg.Definitions(
    assets=[raw_tables, ohlcv_1m, *QUANT_ASSETS, *MICROSTRUCTURE_ASSETS, *LIQUIDATION_MAP_ASSETS, lake_export],
    jobs=[raw_load_job, purge_runs_job, quant_job, daily_snapshot_job],
    schedules=[purge_runs_schedule, quant_hourly_schedule, daily_snapshot_schedule],
    sensors=[kafka_lag_sensor],
    resources={**default_resources(), **lake_resources()},
)
