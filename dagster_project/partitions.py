"""UTC daily partitions shared by every daily analytics asset."""

import os

import dagster as dg

# The real Binance recording in ../shared/data is from 2021-07-22; keep it addressable.
PARTITION_START = os.environ.get("PERPFLOW_PARTITION_START", "2021-01-01")

daily_partitions = dg.DailyPartitionsDefinition(start_date=PARTITION_START, timezone="UTC", end_offset=1)
