"""Launch a loader run whenever Kafka holds messages the warehouse has not loaded."""

import dagster as dg

from dagster_project.assets.raw import raw_load_job
from dagster_project.resources import KafkaResource
from ingest.kafka import BrokerUnavailable, group_lag

IN_FLIGHT = [dg.DagsterRunStatus.QUEUED, dg.DagsterRunStatus.NOT_STARTED, dg.DagsterRunStatus.STARTING,
             dg.DagsterRunStatus.STARTED]


@dg.sensor(job=raw_load_job, minimum_interval_seconds=30, default_status=dg.DefaultSensorStatus.RUNNING,
           description="Lag = Kafka end offsets minus the offsets the loader mirrored to its consumer group. "
                       "Never opens DuckDB (a reader would block the writer); skips while a load is in flight.")
def kafka_lag_sensor(context: dg.SensorEvaluationContext, kafka: KafkaResource):
    in_flight = context.instance.get_run_records(
        dg.RunsFilter(job_name=raw_load_job.name, statuses=IN_FLIGHT), limit=1)
    if in_flight:
        return dg.SkipReason(f"loader run {in_flight[0].dagster_run.run_id[:8]} still in flight")
    try:
        lag = group_lag(kafka.bootstrap)
    except BrokerUnavailable as exc:
        return dg.SkipReason(str(exc))
    total = sum(lag.values())
    if total == 0:
        return dg.SkipReason("no new messages in Kafka")
    return dg.RunRequest(tags={"kafka_lag": str(total)})
