"""The raw tables, loaded from Kafka in micro-batches (one loader pass per run)."""

import dagster as dg

from dagster_project.resources import KafkaResource, WarehouseResource
from ingest import records
from warehouse.loader import load_once

RAW_KEYS = {cls.table: dg.AssetKey(["raw", cls.table]) for cls in records.RECORD_TYPES}


@dg.multi_asset(
    specs=[dg.AssetSpec(key, group_name="raw", kinds={"duckdb", "kafka"},
                        description=f"raw.{table}: normalized {table.replace('_', ' ')} exactly as ingested, "
                                    "with the Kafka partition and offset of each row.")
           for table, key in RAW_KEYS.items()],
    pool="duckdb_writer",
    can_subset=False,
)
def raw_tables(context: dg.AssetExecutionContext, warehouse: WarehouseResource, kafka: KafkaResource):
    """One exactly-once loader pass: everything in Kafka when the run started."""
    report = load_once(warehouse.get(), kafka.bootstrap,
                       progress=lambda r: context.log.info(f"committed transaction {r.transactions}: {r.total:,} rows"))
    for reset in report.broker_resets:
        context.log.error(f"BROKER DATA LOSS {reset['topic']}[{reset['partition']}]: {reset['reason']}")
    with warehouse.get().writer() as con:
        totals = {table: con.execute(f"SELECT count(*) FROM raw.{table}").fetchone()[0] for table in RAW_KEYS}
    published = warehouse.publish_replica_if_due()
    for table, key in RAW_KEYS.items():
        yield dg.MaterializeResult(asset_key=key, metadata={
            "dagster/row_count": totals[table],
            "rows_loaded_this_run": report.rows.get(table, 0),
            "broker_resets": len(report.broker_resets),
            "load_seconds": round(report.seconds, 3),
            "replica_published_s": round(published, 3) if published is not None else "skipped (recent)",
        })


raw_load_job = dg.define_asset_job("raw_load_job", selection=dg.AssetSelection.assets(*RAW_KEYS.values()),
                                   executor_def=dg.in_process_executor,
                                   description="One Kafka -> DuckDB loader pass (launched by kafka_lag_sensor).")
