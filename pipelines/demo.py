"""``perpflow demo``: the whole spine on one machine, with nothing but Python installed.

Starts the embedded broker, replays the real Binance USD-M recording through the mapper and
book sync into Kafka, runs the loader and ``ohlcv_1m`` as Dagster materializations on the
local instance (so ``make ui`` shows them), publishes the read replica and prints what landed.
Everything it started is stopped again, also on Ctrl-C or SIGTERM.
"""

from __future__ import annotations

import os
import signal
import warnings
import time
from pathlib import Path

from rich.console import Console
from rich.table import Table

from ingest import records
from pipelines.broker import EmbeddedBroker
from pipelines.kafka import BrokerUnavailable, RecordProducer, ensure_topics, wait_for_metadata
from pipelines.replay import replay
from pipelines.settings import Settings

REPO = Path(__file__).resolve().parents[1]
DEFAULT_RECORDING = REPO.parent / "shared" / "data" / "cryptofeed-captures"


def default_recordings() -> list[Path]:
    return sorted(DEFAULT_RECORDING.glob("BINANCE_FUTURES.*"))


def _raise_interrupt(signum, frame):
    raise KeyboardInterrupt


def run_demo(settings: Settings, recordings: list[Path], *, keep_broker: bool, console: Console) -> int:
    recordings = recordings or default_recordings()
    if not recordings:
        console.print(f"[red]error:[/] no recording found in {DEFAULT_RECORDING}; pass one with --recording PATH")
        return 2
    previous = signal.signal(signal.SIGTERM, _raise_interrupt)
    broker = None
    started = time.perf_counter()
    try:
        settings.home.mkdir(parents=True, exist_ok=True)
        for stale in (settings.warehouse_path, settings.replica_path, Path(f"{settings.warehouse_path}.wal")):
            stale.unlink(missing_ok=True)   # the demo starts from an empty warehouse
        if settings.uses_embedded_broker:
            broker = EmbeddedBroker(port=settings.broker_port, log_path=settings.run_dir / "demo-broker.log")
            console.print(f"[bold]1/5[/] starting the embedded Kafka broker (Tansu) on {broker.bootstrap}")
            broker.start()
        else:
            console.print(f"[bold]1/5[/] using Kafka at {settings.bootstrap}")
            wait_for_metadata(settings.bootstrap)
        ensure_topics(settings.bootstrap, settings.partitions)

        console.print(f"[bold]2/5[/] replaying {len(recordings)} recording files into Kafka")
        producer = RecordProducer(settings.bootstrap)
        try:
            report = replay("binance-usdm", recordings, producer.send)
            producer.flush()
        finally:
            producer.close()

        console.print("[bold]3/5[/] Dagster: loading Kafka into DuckDB, then analytics.ohlcv_1m per day")
        days = _materialize(settings, console)

        console.print("[bold]4/5[/] publishing the read replica")
        from warehouse.store import Warehouse

        Warehouse.from_settings(settings).publish_replica()

        console.print("[bold]5/5[/] summary")
        _summary(settings, report, days, console, time.perf_counter() - started)
        return 0
    except KeyboardInterrupt:
        console.print("[yellow]interrupted; stopping what the demo started[/]")
        return 130
    except BrokerUnavailable as exc:
        console.print(f"[red]error:[/] {exc}")
        return 1
    finally:
        signal.signal(signal.SIGTERM, previous)
        if broker is not None and not keep_broker:
            broker.stop()


def _materialize(settings: Settings, console: Console) -> list[str]:
    from dagster_project.instance import prepare_dagster_home

    os.environ["DAGSTER_HOME"] = str(prepare_dagster_home(settings))
    import dagster as dg

    warnings.filterwarnings("ignore", category=dg.BetaWarning)
    from dagster_project.assets.ohlcv import ohlcv_1m
    from dagster_project.assets.raw import raw_tables
    from dagster_project.resources import default_resources
    from warehouse.store import Warehouse

    resources = default_resources()
    quiet = {"loggers": {"console": {"config": {"log_level": "WARNING"}}}}   # full logs stay in the instance
    with dg.DagsterInstance.get() as instance:
        result = dg.materialize([raw_tables], resources=resources, instance=instance, tags={"perpflow/demo": "true"},
                            run_config=quiet)
        if not result.success:
            raise RuntimeError("the loader run failed; see `make ui` for its logs")
        with Warehouse.from_settings(settings).writer() as con:
            days = [str(d) for (d,) in con.execute(
                "SELECT DISTINCT CAST(ts_exchange AS DATE) FROM raw.trades ORDER BY 1").fetchall()]
        for day in days:
            result = dg.materialize([raw_tables.to_source_assets()[0], ohlcv_1m], selection=[ohlcv_1m],
                                    partition_key=day, resources=resources, instance=instance,
                                    tags={"perpflow/demo": "true"}, run_config=quiet)
            if not result.success:
                raise RuntimeError(f"ohlcv_1m for {day} failed; see `make ui` for its logs")
            console.print(f"    ohlcv_1m {day}: done")
    return days


def _summary(settings: Settings, report, days: list[str], console: Console, seconds: float) -> None:
    from warehouse.store import Warehouse

    tables = [cls.table for cls in records.RECORD_TYPES]
    with Warehouse.from_settings(settings).reader() as con:
        table = Table(title="warehouse (read replica)")
        for column in ("table", "rows", "from", "to"):
            table.add_column(column, justify="right" if column == "rows" else "left")
        for name in tables:
            time_col = "ts_recv" if name in ("feed_events", "dead_letters") else "ts_exchange"
            rows, first, last = con.execute(f"SELECT count(*), min({time_col}), max({time_col}) FROM raw.{name}").fetchone()
            table.add_row(f"raw.{name}", f"{rows:,}", str(first or ""), str(last or ""))
        rows, first, last = con.execute("SELECT count(*), min(minute), max(minute) FROM analytics.ohlcv_1m").fetchone()
        table.add_row("analytics.ohlcv_1m", f"{rows:,}", str(first or ""), str(last or ""))
        console.print(table)
        bars = con.execute("""SELECT symbol, count(*) AS minutes, sum(trade_count) AS trades,
                                     round(sum(quote_volume)) AS quote_volume, first(open ORDER BY minute) AS open,
                                     last(close ORDER BY minute) AS close
                              FROM analytics.ohlcv_1m GROUP BY symbol ORDER BY symbol""").fetchall()
    per_symbol = Table(title="ohlcv_1m by symbol")
    for column in ("symbol", "minutes", "trades", "quote volume", "open", "close"):
        per_symbol.add_column(column)
    for row in bars:
        per_symbol.add_row(*(str(v) for v in row))
    console.print(per_symbol)
    console.print(f"replay: {report.stats.messages:,} messages, {report.stats.mapped:,} mapped, "
                  f"{sum(report.stats.skipped.values()):,} skipped with a reason, "
                  f"{sum(report.stats.dead_letters.values())} dead letters; {report.gaps} gaps, "
                  f"{report.crossed} crossed books; days: {', '.join(days)}; {seconds:.1f}s")
    console.print("\nQuery it (read-only replica, never blocks the pipeline):")
    console.print('  .venv/bin/perpflow sql "select symbol, minute, open, high, low, close, volume '
                  'from analytics.ohlcv_1m order by symbol, minute limit 20"', highlight=False)
    console.print("Open the Dagster UI (assets, runs, row counts, charts):\n  make ui", highlight=False)
