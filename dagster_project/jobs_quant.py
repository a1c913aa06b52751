"""Hourly refresh of the quant analytics: one-minute bars, price history, metrics, levels, signals."""

import datetime as dt

import dagster as dg

from dagster_project.assets.quant import OHLCV_1M

quant_job = dg.define_asset_job(
    "quant_job", selection=dg.AssetSelection.assets(OHLCV_1M) | dg.AssetSelection.groups("quant"),
    executor_def=dg.in_process_executor,
    description="analytics.ohlcv_1m and every quant asset for one UTC day.")


@dg.schedule(job=quant_job, cron_schedule="5 * * * *", execution_timezone="UTC",
             default_status=dg.DefaultScheduleStatus.STOPPED,
             description="Five minutes past each hour, rewrite the day of the hour that just closed, so hourly "
                         "signals follow bar closes and the 00:05 run finalizes the previous day.")
def quant_hourly_schedule(context: dg.ScheduleEvaluationContext):
    closed_hour = context.scheduled_execution_time.astimezone(dt.UTC) - dt.timedelta(hours=1)
    return dg.RunRequest(partition_key=closed_hour.strftime("%Y-%m-%d"))
