"""The one way to declare an analytics table asset.

An analytics table is declared with :func:`table_asset` beside its checks and metadata; its SQL
and row building live in ``warehouse/analytics/<area>.py`` (plain functions of a connection and a
window) and its pictures in ``transforms/figures.py`` (data in, PNG bytes out). The declaration
fixes what every table shares: the asset key ``analytics/<table>``, UTC-day partitions (or hourly, or
none: the table is rebuilt whole), the DuckDB writer pool, single-run backfills, the delete+insert rewrite
of the partition, the declared checks evaluated on the rows the run wrote, the row count, and the
replica publish. The decorated function is the table's body: it gets a :class:`TableRun`, writes
with ``run.rewrite(...)`` and returns the materialization metadata (pictures as :class:`Picture`)::

    @table_asset(MICROSTRUCTURE, "liquidations_1m", deps=[dg.AssetKey(["raw", "liquidations"])],
                 description="Liquidated notional per exchange, symbol and minute ...",
                 checks=[no_duplicates("exchange, symbol, minute"), units_convertible("liquidations")])
    def liquidations_1m(run: TableRun) -> dict:
        run.rewrite_each_day(lambda start, end: liquidations.LIQUIDATIONS_1M_SELECT)
        return {"largest_minutes": run.preview(["exchange", "minute", "long_usd"], "long_usd DESC")}

Register the asset in its family's list (``dagster_project/assets/<family>.py``), which
``dagster_project.definitions`` loads.
"""

import base64
import datetime as dt
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field

import dagster as dg
import duckdb

from dagster_project.partitions import daily_partitions
from dagster_project.resources import WarehouseResource
from warehouse.analytics.common import DAY, Rows, rewrite, window_filter
from warehouse.units import unconvertible_rows

# A backfill copies materialization metadata into every partition of its range; families that
# summarize backfills put pictures on one observation instead when the range is longer than this.
MAX_CHART_PARTITIONS = 7


@dataclass(frozen=True)
class Family:
    """What the tables of one Dagster group share.

    ``summarize_backfills``: a run of several partitions reports ``rows_in_run`` and
    ``partitions_in_run`` instead of ``dagster/row_count`` (which Dagster would copy to every
    partition), publishes the replica at once (its user queries right after), and past
    ``MAX_CHART_PARTITIONS`` puts its pictures on an observation of the last partition.
    """

    group: str
    summarize_backfills: bool = False


MICROSTRUCTURE = Family("microstructure")
QUANT = Family("quant", summarize_backfills=True)
ANALYTICS = Family("analytics")   # tables built straight from the raw feed (ohlcv_1m)


@dataclass(frozen=True)
class Picture:
    """A PNG for the materialization metadata (from ``transforms.figures``)."""

    title: str
    png: bytes

    def metadata(self) -> dg.MetadataValue:
        return dg.MetadataValue.md(f"![{self.title}](data:image/png;base64,{base64.b64encode(self.png).decode()})")


def table_preview(columns: list[str], rows: list[tuple]) -> dg.MetadataValue:
    """Markdown table (Dagster's table metadata rejects datetimes; strings are universal)."""
    def cell(v):
        return f"{v:.6g}" if isinstance(v, float) else str(v)

    lines = ["| " + " | ".join(columns) + " |", "|" + "---|" * len(columns)]
    lines += ["| " + " | ".join(cell(v) for v in row) + " |" for row in rows]
    return dg.MetadataValue.md("\n".join(lines))


@dataclass
class TableRun:
    """One run of a table asset: the writer connection and the run's window of UTC days."""

    context: dg.AssetExecutionContext
    con: duckdb.DuckDBPyConnection
    table: str                                  # analytics.<name>
    partition_column: str | None
    days: list[tuple[dt.datetime, dt.datetime]]  # empty for a table rebuilt whole
    written: bool = field(default=False, init=False)

    @property
    def start(self) -> dt.datetime | None:
        return self.days[0][0] if self.days else None

    @property
    def end(self) -> dt.datetime | None:
        return self.days[-1][1] if self.days else None

    @property
    def window(self) -> dict:
        """``$start``/``$end`` of the run, for queries over its rows."""
        return {} if not self.days else {"start": self.start, "end": self.end}

    @property
    def where(self) -> str:
        """The run's rows of the table (use with ``self.window``)."""
        return window_filter(self.partition_column)

    def rewrite(self, rows: Rows) -> int:
        """Replace the run's whole window (or the whole table) with ``rows``."""
        self.written = True
        return rewrite(self.con, self.table, self.partition_column, self.start, self.end, rows)

    def rewrite_each_day(self, rows_of_day: Callable[[dt.datetime, dt.datetime], Rows]) -> None:
        """Compute and replace one day at a time (a long backfill never holds more than a day)."""
        if self.partition_column is None:
            raise TypeError(f"{self.table} is rebuilt whole (no partition column): use run.rewrite(rows)")
        for start, end in self.days:
            written = rewrite(self.con, self.table, self.partition_column, start, end, rows_of_day(start, end))
            self.context.log.info(f"{self.table} {start:%Y-%m-%d}: {written} rows")
        self.written = True

    def count(self, sql: str, params: dict | None = None) -> int:
        return self.con.execute(sql, {**self.window, **(params or {})}).fetchone()[0]

    def rows(self) -> int:
        return self.count(f"SELECT count(*) FROM {self.table} WHERE {self.where}")

    def query(self, sql: str) -> list[tuple]:
        """``sql`` over ``$start``/``$end`` of the run."""
        return self.con.execute(sql, self.window).fetchall()

    def preview(self, columns: list[str], order: str, limit: int = 10) -> dg.MetadataValue:
        return table_preview(columns, self.query(f"SELECT {', '.join(columns)} FROM {self.table} WHERE {self.where} "
                                                 f"ORDER BY {order} LIMIT {limit}"))


# --- checks -------------------------------------------------------------------------------------

@dataclass(frozen=True)
class Check:
    """An asset check evaluated on the rows the run wrote, right after the rewrite."""

    name: str
    description: str
    evaluate: Callable[[TableRun], dg.AssetCheckResult]


def no_violations(name: str, description: str, bad_rows: str, *, counted_as: str = "violating_rows") -> Check:
    """``bad_rows`` is a predicate true for rows of the run that break the rule."""
    def evaluate(run: TableRun) -> dg.AssetCheckResult:
        bad = run.count(f"SELECT count(*) FROM {run.table} WHERE {run.where} AND ({bad_rows})")
        return dg.AssetCheckResult(check_name=name, passed=bad == 0, metadata={counted_as: bad})
    return Check(name, description, evaluate)


def holds_for_every_row(name: str, description: str, predicate: str) -> Check:
    """``predicate`` must be true (not false, not NULL) on every row of the run."""
    return no_violations(name, description, f"NOT coalesce(({predicate}), false)")


def no_duplicates(key: str, *, name: str = "no_duplicate_keys", description: str | None = None,
                  counted_as: str = "duplicate_keys", show_key: bool = True) -> Check:
    """At most one row of the run per ``key`` (a comma-separated column list)."""
    def evaluate(run: TableRun) -> dg.AssetCheckResult:
        duplicates = run.count(f"SELECT count(*) FROM (SELECT {key} FROM {run.table} WHERE {run.where} "
                               "GROUP BY ALL HAVING count(*) > 1)")
        metadata = {counted_as: duplicates, **({"key": key} if show_key else {})}
        return dg.AssetCheckResult(check_name=name, passed=duplicates == 0, metadata=metadata)
    return Check(name, description or f"One row per ({key}).", evaluate)


def covers_feed(description: str, feed_keys_sql: str, key: str, *, table_filter: str = "TRUE") -> Check:
    """Every key the raw feed has data for in the run (``feed_keys_sql`` over ``$start``/``$end``)
    has a row (among those matching ``table_filter``)."""
    def evaluate(run: TableRun) -> dg.AssetCheckResult:
        feed, missing = run.con.execute(
            f"WITH feed AS ({feed_keys_sql}), written AS (SELECT {key} FROM {run.table} WHERE {run.where} "
            f"AND ({table_filter})) SELECT (SELECT count(*) FROM feed), "
            f"(SELECT count(*) FROM feed ANTI JOIN written USING ({key}))", run.window).fetchone()
        return dg.AssetCheckResult(check_name="non_empty_where_feed_up", passed=missing == 0,
                                   metadata={"feed_keys": feed, "missing_keys": missing})
    return Check("non_empty_where_feed_up", description, evaluate)


def units_convertible(raw_table: str, where: str = "TRUE") -> Check:
    """Rows whose size cannot be converted to base units and USD (contracts of a market without an
    instrument row or contract size) are left out of the sums (``warehouse.units``); this check
    counts the run's rows of ``raw.<raw_table>`` matching ``where`` (alias ``r``) that were, and
    names their markets. It warns rather than fails: the rest of the table is right."""
    def evaluate(run: TableRun) -> dg.AssetCheckResult:
        found = unconvertible_rows(run.con, raw_table, run.start, run.end, where=where)
        return dg.AssetCheckResult(check_name="units_convertible", passed=found.rows == 0,
                                   severity=dg.AssetCheckSeverity.WARN,
                                   metadata={"unconvertible_rows": found.rows,
                                             "unconvertible_markets": ", ".join(found.markets) or "none"})
    return Check("units_convertible",
                 "Every sized raw row read converts to base units and USD (warehouse.units). Rows in contracts whose "
                 "market has no instrument (or a NULL/0 contract size) are left out of the sums; this check counts "
                 "them (`unconvertible_rows`) and names the markets (warns).", evaluate)


# --- the declaration ----------------------------------------------------------------------------

def partition_days(context: dg.AssetExecutionContext) -> list[tuple[dt.datetime, dt.datetime]]:
    """The UTC days of the run: one for a daily partition, several for a single-run backfill; an
    hourly partition's window is one (short) day."""
    start, end = (t.replace(tzinfo=None) for t in context.partition_time_window)
    days = []
    while start < end:
        days.append((start, min(start + DAY, end)))
        start += DAY
    return days


def table_asset(family: Family, table: str, *, deps: list, description: str, checks: list[Check],
                partition_column: str | None = "day",
                partitions: dg.TimeWindowPartitionsDefinition = daily_partitions,
                config: type[dg.Config] | None = None):
    """Declare ``analytics.<table>`` as the asset ``analytics/<table>`` of ``family``.

    ``partition_column`` places each row in its partition of ``partitions`` (UTC days unless, say,
    a ``dg.HourlyPartitionsDefinition`` is given; None: unpartitioned, the table is rebuilt whole). ``config``: a ``dg.Config`` class passed to the body as its second
    argument. The body ``(run[, config]) -> metadata`` must write with ``run.rewrite``/
    ``run.rewrite_each_day``; values that are :class:`Picture` become embedded PNGs.
    """
    key = ["analytics", table]
    for check in checks:
        if not check.description:
            raise ValueError(f"analytics.{table}: check {check.name!r} needs a description")

    config_class = config

    def decorate(body: Callable[..., dict]) -> dg.AssetsDefinition:
        if config_class is None:
            def compute(context: dg.AssetExecutionContext, warehouse: WarehouseResource):
                yield from _run(context, warehouse, body)
        else:
            def compute(context: dg.AssetExecutionContext, warehouse: WarehouseResource, config):
                yield from _run(context, warehouse, lambda run: body(run, config))
            # Dagster reads the run config's schema from the annotation of the ``config`` parameter.
            compute.__annotations__["config"] = config_class
        compute.__name__ = body.__name__
        compute.__doc__ = body.__doc__

        # single_run on unpartitioned tables too: `dagster asset materialize --partition-range`
        # refuses a selection where any asset lacks it.
        return dg.asset(key=key, deps=deps, group_name=family.group, pool="duckdb_writer", kinds={"duckdb"},
                        partitions_def=None if partition_column is None else partitions,
                        check_specs=[dg.AssetCheckSpec(c.name, asset=key, description=c.description)
                                     for c in checks],
                        backfill_policy=dg.BackfillPolicy.single_run(), description=description)(compute)

    def _run(context, warehouse: WarehouseResource, body: Callable[[TableRun], dict]) -> Iterator:
        days = [] if partition_column is None else partition_days(context)
        partitions = len(context.partition_keys) if days else 1
        with warehouse.get().writer() as con:
            run = TableRun(context, con, f"analytics.{table}", partition_column, days)
            metadata = body(run)
            if not isinstance(metadata, dict):
                raise TypeError(f"analytics.{table}: the asset body must return its metadata as a dict, "
                                f"not {type(metadata).__name__}")
            if not run.written:
                raise RuntimeError(f"analytics.{table}: the asset body returned without run.rewrite(...)")
            results = [check.evaluate(run) for check in checks]
            rows = run.rows()
        warehouse.publish_replica_if_due(force=family.summarize_backfills and partitions > 1)
        pictures = {name: value.metadata() for name, value in metadata.items() if isinstance(value, Picture)}
        metadata = {name: value for name, value in metadata.items() if not isinstance(value, Picture)}
        if family.summarize_backfills and partitions > 1:
            metadata.update({"rows_in_run": rows, "partitions_in_run": partitions})
        else:
            metadata["dagster/row_count"] = rows
        if not family.summarize_backfills or partitions <= MAX_CHART_PARTITIONS:
            metadata.update(pictures)
        elif pictures:
            context.log_event(dg.AssetObservation(asset_key=context.asset_key, partition=context.partition_keys[-1],
                                                  metadata=pictures))
            metadata["charts"] = f"on the observation of partition {context.partition_keys[-1]}"
        yield dg.MaterializeResult(metadata=metadata)
        yield from results

    return decorate
