"""``perpflow backfill``: materialize the daily assets for a range of UTC days, one run per day,
on the local Dagster instance (the runs, logs and checks show up in ``perpflow ui``).

The Dagster UI can do the same as one backfill (every daily asset has a single-run backfill
policy); this command is for scripts, cron and machines without the UI running.
"""

from __future__ import annotations

import datetime as dt
import time
import warnings

import click
from rich.console import Console

from warehouse.settings import ConfigError, load_settings

console = Console()


def _daily_assets() -> dict[str, object]:
    """Daily asset definitions by table name (``book_depth``) and by key (``analytics/book_depth``)."""
    from dagster_project.assets.microstructure import MICROSTRUCTURE_ASSETS
    from dagster_project.assets.ohlcv import ohlcv_1m
    from dagster_project.snapshots import lake_export

    by_name = {}
    for asset in (ohlcv_1m, *MICROSTRUCTURE_ASSETS, lake_export):
        by_name[asset.key.path[-1]] = by_name[asset.key.to_user_string()] = asset
    return by_name


@click.command()
@click.option("--from", "first", required=True, type=click.DateTime(["%Y-%m-%d"]), help="First UTC day, YYYY-MM-DD.")
@click.option("--to", "last", required=True, type=click.DateTime(["%Y-%m-%d"]), help="Last UTC day (inclusive).")
@click.option("--assets", "names", default="",
              help="Comma-separated tables or asset keys (e.g. book_depth,analytics/funding); "
                   "default: every daily asset and the Parquet export.")
def backfill(first: dt.datetime, last: dt.datetime, names: str) -> None:
    """Materialize the daily assets for every UTC day from --from to --to."""
    if last < first:
        raise click.BadParameter(f"--to {last:%Y-%m-%d} is before --from {first:%Y-%m-%d}", param_hint="--to")
    try:
        settings = load_settings()
    except ConfigError as exc:
        raise click.UsageError(str(exc)) from None
    import dagster as dg

    warnings.filterwarnings("ignore", category=dg.BetaWarning)
    from dagster_project.instance import prepare_dagster_home
    from dagster_project.resources import default_resources
    from dagster_project.snapshots import lake_resources

    available = _daily_assets()
    wanted = [n.strip() for n in names.split(",") if n.strip()]
    unknown = [n for n in wanted if n not in available]
    if unknown:
        tables = sorted(k for k in available if "/" not in k)
        raise click.BadParameter(f"unknown asset(s) {', '.join(unknown)}; choose from {', '.join(tables)}",
                                 param_hint="--assets")
    everything = list(dict.fromkeys(available.values()))
    selected = list(dict.fromkeys(available[n] for n in wanted)) or everything
    upstream = [dg.AssetSpec(["raw", t]) for t in ("trades", "book_snapshots", "open_interest", "funding",
                                                   "liquidations")]
    days = [(first + dt.timedelta(days=i)).strftime("%Y-%m-%d") for i in range((last - first).days + 1)]
    resources = {**default_resources(), **lake_resources()}
    quiet = {"loggers": {"console": {"config": {"log_level": "WARNING"}}}}
    console.print(f"backfilling {len(selected)} assets for {len(days)} days ({days[0]} .. {days[-1]})")
    failed = []
    with dg.DagsterInstance.from_config(str(prepare_dagster_home(settings))) as instance:
        for i, day in enumerate(days, 1):
            started = time.perf_counter()
            result = dg.materialize([*upstream, *everything], selection=selected, partition_key=day,
                                    resources=resources, instance=instance, tags={"perpflow/backfill": "cli"},
                                    run_config=quiet, raise_on_error=False)
            checks = result.get_asset_check_evaluations()
            bad = [f"{c.asset_key.to_user_string()}:{c.check_name}" for c in checks if not c.passed]
            status = "ok" if result.success and not bad else "[red]FAILED[/]"
            console.print(f"  [{i}/{len(days)}] {day}: {status} in {time.perf_counter() - started:.1f}s, "
                          f"{len(checks) - len(bad)}/{len(checks)} checks passed"
                          + (f"; failed checks: {', '.join(bad)}" if bad else ""), highlight=False)
            if not result.success or bad:
                failed.append(day)
    if failed:
        raise click.ClickException(f"{len(failed)} of {len(days)} days failed: {', '.join(failed)} "
                                   "(see `perpflow ui` for the run logs)")
    console.print(f"done: {len(days)} days")
