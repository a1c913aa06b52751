"""All of perpflow's Dagster definitions, loaded from this one place."""

import dagster as dg

from dagster_project.assets.ohlcv import ohlcv_1m
from dagster_project.assets.raw import raw_load_job, raw_tables
from dagster_project.maintenance import purge_runs_job, purge_runs_schedule
from dagster_project.resources import default_resources
from dagster_project.sensors import kafka_lag_sensor

defs = dg.Definitions(
    assets=[raw_tables, ohlcv_1m],
    jobs=[raw_load_job, purge_runs_job],
    schedules=[purge_runs_schedule],
    sensors=[kafka_lag_sensor],
    resources=default_resources(),
)
