"""Run-history housekeeping: OSS Dagster never purges runs, and the loader makes ~1,440 a day."""

import datetime as dt

import dagster as dg

from dagster_project.assets.raw import raw_load_job


class PurgeConfig(dg.Config):
    keep_days: float = 7.0
    job_name: str = raw_load_job.name


def purge_old_runs(instance: dg.DagsterInstance, job_name: str, keep_days: float) -> int:
    """Delete finished runs of ``job_name`` older than ``keep_days``; return how many."""
    cutoff = dt.datetime.now(dt.UTC) - dt.timedelta(days=keep_days)
    finished = [dg.DagsterRunStatus.SUCCESS, dg.DagsterRunStatus.FAILURE, dg.DagsterRunStatus.CANCELED]
    records = instance.get_run_records(dg.RunsFilter(job_name=job_name, statuses=finished, created_before=cutoff))
    for record in records:
        instance.delete_run(record.dagster_run.run_id)
    return len(records)


@dg.op
def purge_old_loader_runs(context: dg.OpExecutionContext, config: PurgeConfig) -> int:
    deleted = purge_old_runs(context.instance, config.job_name, config.keep_days)
    context.log.info(f"deleted {deleted} runs of {config.job_name} older than {config.keep_days} days")
    return deleted


@dg.job(description="Delete finished loader micro-batch runs older than a week.")
def purge_runs_job():
    purge_old_loader_runs()


purge_runs_schedule = dg.ScheduleDefinition(job=purge_runs_job, cron_schedule="30 3 * * *",
                                            execution_timezone="UTC",
                                            default_status=dg.DefaultScheduleStatus.RUNNING)
