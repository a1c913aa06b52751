"""The demo's quant half: real shipped price history in, quant assets materialized, provenance shown.

The simulated cascade gives a couple of hours of bars, far too few for metrics over years, levels or
trend signals, so the demo imports real Bybit candles shipped in ``pipelines/demo_data`` (BTC, ETH,
SOL; daily since 2023-01-27, hourly since 2025-09-11, both to 2025-10-22) through the
``perpflow import-candles`` code path and then materializes the quant assets over every day the
daily history covers, in one Dagster run.

How the two relate: the shipped bars are exchange ``bybit-linear``, the real 2025-10-10 crash
included; the simulated cascade (modelled on that evening) is ingested on four venues, Bybit among
them. ``analytics.candles_1d``/``candles_1h`` prefer an imported bar over one resampled from trades,
so every quant row of ``bybit-linear`` is real history, and only complete bars of the simulated
minutes (``source = 'trades'``) stand for the other venues. ``provenance`` says which is which.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path

from rich.console import Console
from rich.table import Table

from pipelines.quant_cli import import_candles_file, market_symbol

DEMO_DATA = Path(__file__).resolve().parent / "demo_data"
EXCHANGE = "bybit-linear"
BASES = ("BTC", "ETH", "SOL")
INTERVALS = ("1d", "1h")
QUANT_TABLES = ("candles_1d", "candles_1h", "quantmetrics", "support_resistance_levels", "trading_signals",
                "hourly_trading_signals", "signal_performance")


class QuantDemoError(RuntimeError):
    pass


@dataclass(frozen=True)
class QuantRun:
    bars_imported: int
    first_day: str     # the as-of days materialized
    last_day: str
    import_s: float
    materialize_s: float
    failed_checks: list[str]


def shipped_files() -> list[tuple[Path, str, str]]:
    """(path, market, interval) of every shipped candle file; a missing one is an error, not a skip."""
    files = []
    for base in BASES:
        for interval in INTERVALS:
            path = DEMO_DATA / f"{base}USDT_{interval}.csv"
            if not path.exists():
                raise QuantDemoError(f"{path} is missing from this installation; reinstall perpflow "
                                        "(the demo's price history ships inside the package)")
            files.append((path, market_symbol(f"{base}USDT"), interval))
    return files


def import_history(warehouse) -> tuple[int, str, str]:
    """Import every shipped file; return (bars, first day, last day) of the hourly history, the
    days on which every quant asset has bars of both timeframes."""
    bars, first, last = 0, None, None
    for path, symbol, interval in shipped_files():
        result = import_candles_file(warehouse, path, EXCHANGE, symbol, interval)
        bars += len(result.candles)
        if interval == "1h":
            days = [str(t.astype("datetime64[D]")) for t in (result.candles.ts[0], result.candles.ts[-1])]
            first = min(first or days[0], days[0])
            last = max(last or days[1], days[1])
    return bars, first, last


def materializable_quant_assets() -> list:
    import dagster as dg

    from dagster_project.assets.quant import QUANT_ASSETS

    return [a for a in QUANT_ASSETS if isinstance(a, dg.AssetsDefinition)]


def run_quant(dg, instance, resources, run_config, warehouse, console: Console,
              days: tuple[str, str] | None = None) -> QuantRun:
    """Import the shipped history, then materialize every quant asset over the hourly history's
    days (or ``days``, first and last) in one run (the quant assets backfill a range in one run)."""
    started = time.perf_counter()
    try:
        bars, first, last = import_history(warehouse)
        first, last = days or (first, last)
    except ValueError as exc:
        raise QuantDemoError(f"the shipped price history does not import: {exc}; reinstall perpflow") from None
    warehouse.publish_replica()
    imported = time.perf_counter()
    console.print(f"    quant: imported {bars:,} real {EXCHANGE} bars ({', '.join(BASES)}; 1d and 1h) shipped in "
                  f"{DEMO_DATA.name}/; materializing the quant assets for {first}..{last}", highlight=False)
    assets = materializable_quant_assets()
    result = dg.materialize(assets, resources=resources, instance=instance, run_config=run_config,
                            tags={"perpflow/demo": "true", "dagster/asset_partition_range_start": first,
                                  "dagster/asset_partition_range_end": last})
    if not result.success:
        raise QuantDemoError("the quant assets failed; see `make ui` for the run logs")
    warehouse.publish_replica()
    failed = sorted(c.check_name for c in result.get_asset_check_evaluations() if not c.passed)
    run = QuantRun(bars, first, last, imported - started, time.perf_counter() - imported, failed)
    console.print(f"    quant: {len(assets)} assets in {run.materialize_s:.1f}s (import {run.import_s:.1f}s); checks "
                  f"{'all passed' if not failed else 'FAILED: ' + ', '.join(failed)}", highlight=False)
    return run


def provenance(con) -> list[tuple[str, str, int, object, object]]:
    """Per quant table: (table, what its rows stand on, rows, first, last). Price-history rows
    carry their own source; the derived tables inherit it from the bars of their market."""
    rows = []
    for tf, candles in (("1d", "candles_1d"), ("1h", "candles_1h")):
        for source, n, first, last in con.execute(
                f"SELECT source, count(*), min(ts), max(ts) FROM analytics.{candles} GROUP BY source ORDER BY source"
        ).fetchall():
            rows.append((f"analytics.{candles}", _source_label(source, tf), n, first, last))
    # A market's derived rows stand on real history exactly when every bar it has was imported.
    markets = """SELECT exchange, symbol, bool_and(source = 'import') AS is_real
                 FROM (SELECT exchange, symbol, source FROM analytics.candles_1d
                       UNION ALL SELECT exchange, symbol, source FROM analytics.candles_1h) GROUP BY ALL"""
    for table, time_column in (("quantmetrics", "as_of"), ("support_resistance_levels", "day"),
                               ("trading_signals", "ts"), ("hourly_trading_signals", "ts"),
                               ("signal_performance", "day")):
        for is_real, n, first, last in con.execute(f"""
                SELECT coalesce(m.is_real, false), count(*), min(t.{time_column}), max(t.{time_column})
                FROM analytics.{table} t LEFT JOIN ({markets}) m USING (exchange, symbol)
                GROUP BY 1 ORDER BY 1 DESC""").fetchall():
            rows.append((f"analytics.{table}", "real imported history" if is_real else
                         "includes bars of the simulated cascade", n, first, last))
    return rows


def _source_label(source: str, tf: str) -> str:
    return (f"real: {EXCHANGE} {tf} candles shipped in {DEMO_DATA.name}/" if source == "import" else
            "simulated: complete bars of the simulated cascade's trades")


def quant_summary(con, run: QuantRun, console: Console) -> None:
    table = Table(title="quant tables: what is real and what is simulated")
    for column in ("table", "rows stand on", "rows", "from", "to"):
        table.add_column(column, justify="right" if column == "rows" else "left")
    for name, label, n, first, last in provenance(con):
        table.add_row(name, label, f"{n:,}", str(first), str(last))
    console.print(table)
    console.print(f"The real history ({run.bars_imported:,} Bybit bars) includes the real 2025-10-10 crash; the "
                  "simulated cascade is a model of that evening, not a replay, so its prices differ from the real "
                  "bars of the same hours; imported bars win where both exist. Quant rows were materialized for "
                  f"as-of days {run.first_day}..{run.last_day} (each from all history before it).", highlight=False)
    console.print("Token Metrics v2 JSON from these tables (read replica):", highlight=False)
    for endpoint in ("quantmetrics", "resistance-support", "trading-signals", "hourly-trading-signals"):
        console.print(f"  .venv/bin/perpflow export --format tm-v2 {endpoint} --symbol BTC --limit 3 --pretty",
                      highlight=False, soft_wrap=True)


def show(settings, run: QuantRun, console: Console, cascade_source: str) -> Path:
    """The quant tables' provenance, then the HTML report (its path printed last)."""
    from pipelines.report import write_report
    from warehouse.store import Warehouse

    warehouse = Warehouse.from_settings(settings)
    with warehouse.reader() as con:
        quant_summary(con, run, console)
    started = time.perf_counter()
    path = write_report(warehouse, settings.home / "report.html", notes=[
        f"Cascade figures (price, depth, liquidations, stress, open interest): {cascade_source}.",
        f"Levels and signal equity: real {EXCHANGE} candles (BTC, ETH, SOL; daily from 2023-01-27, hourly from "
        f"2025-09-11, to 2025-10-22) shipped in pipelines/{DEMO_DATA.name} (MIT, from zxckotee/trader), quant rows "
        f"as of {run.first_day}..{run.last_day}."])
    report_s = time.perf_counter() - started
    console.print(f"quant half of the demo: import {run.import_s:.1f}s, quant assets {run.materialize_s:.1f}s, "
                  f"report {report_s:.1f}s", highlight=False)
    console.print(f"[bold]report:[/] {path}", highlight=False, soft_wrap=True)
    return path
