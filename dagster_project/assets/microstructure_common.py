"""Plumbing shared by the microstructure assets: partition days, Arrow rows, rewrites, checks.

Times inside the computations are epoch seconds (the ``transforms`` convention); the warehouse
stores naive UTC TIMESTAMPs. Undefined numbers are NaN in numpy and NULL in DuckDB (DuckDB sorts
NaN above every number, so a NaN would fail every range check).
"""

import datetime as dt
from collections.abc import Iterator

import dagster as dg
import numpy as np
import pyarrow as pa

from dagster_project.partitions import daily_partitions

DAY = dt.timedelta(days=1)
GROUP = "microstructure"


def partition_days(context: dg.AssetExecutionContext) -> list[tuple[dt.datetime, dt.datetime]]:
    """The UTC days of the run: one for a partition, several for a single-run backfill."""
    start, end = (t.replace(tzinfo=None) for t in context.partition_time_window)
    days = []
    while start < end:
        days.append((start, start + DAY))
        start += DAY
    return days


def epoch(t: dt.datetime) -> float:
    return t.replace(tzinfo=dt.UTC).timestamp()


def timestamps(seconds) -> pa.Array:
    micros = np.round(np.asarray(seconds, dtype=np.float64) * 1e6).astype(np.int64)
    return pa.array(micros, pa.timestamp("us"))


def days_of(seconds) -> pa.Array:
    return pa.array(np.floor(np.asarray(seconds, dtype=np.float64) / 86_400).astype(np.int32), pa.date32())


def arrow_rows(columns: dict) -> pa.Table:
    """numpy/lists -> Arrow, NaN -> NULL; pass ``pa.Array``s (timestamps, days) through."""
    return pa.table({name: value if isinstance(value, pa.Array) else pa.array(value, from_pandas=True)
                     for name, value in columns.items()})


def replace_day(con, table: str, day: dt.datetime, parts: list[pa.Table]) -> int:
    """Delete the day's rows and insert the new ones in one transaction (idempotent rewrite)."""
    con.execute("BEGIN")
    try:
        con.execute(f"DELETE FROM analytics.{table} WHERE day = ?", [day.date()])
        for part in parts:
            if part.num_rows:
                con.register("partition_rows", part)
                con.execute(f"INSERT INTO analytics.{table} BY NAME SELECT * FROM partition_rows")
                con.unregister("partition_rows")
        con.execute("COMMIT")
    except Exception:
        con.execute("ROLLBACK")
        raise
    return sum(part.num_rows for part in parts)


def fetch(con, sql: str, params: dict | None = None) -> dict[str, np.ndarray]:
    """Query -> plain numpy columns: NULL becomes NaN in numeric columns and None in the others
    (DuckDB hands out masked arrays, whose masked slots hold arbitrary values)."""
    columns = {}
    for name, column in con.execute(sql, params or {}).fetchnumpy().items():
        if np.ma.isMaskedArray(column):
            column = (column.astype(np.float64).filled(np.nan) if column.dtype.kind in "fiu"
                      else column.astype(object).filled(None))
        columns[name] = column
    return columns


def groups(*keys: np.ndarray) -> Iterator[tuple[tuple, np.ndarray]]:
    """(key values, row indices) for each distinct combination of the key arrays, in key order."""
    if not keys or keys[0].size == 0:
        return
    combined = np.char.add(keys[0].astype(str), "")
    for key in keys[1:]:
        combined = np.char.add(np.char.add(combined, "\x1f"), key.astype(str))
    names, codes = np.unique(combined, return_inverse=True)
    order = np.argsort(codes, kind="stable")
    bounds = np.searchsorted(codes[order], np.arange(names.size + 1))
    for i, name in enumerate(names):
        yield tuple(name.split("\x1f")), order[bounds[i]:bounds[i + 1]]


def asset_of(symbol: str) -> str:
    """Base asset of a normalized symbol: BTC-USDT-PERP -> BTC."""
    return symbol.split("-", 1)[0]


# --- checks -----------------------------------------------------------------------------------

def check_specs(key: list[str], checks: dict[str, str]) -> list[dg.AssetCheckSpec]:
    return [dg.AssetCheckSpec(name, asset=key, description=description) for name, description in checks.items()]


def daily_asset(key: list[str], checks: dict[str, str], *, deps: list, description: str):
    """What every microstructure asset shares: a UTC-day partition rewritten in the DuckDB writer pool,
    its checks in the same step, and backfills of many days as one run (writes are serialized anyway)."""
    return dg.asset(key=key, deps=deps, partitions_def=daily_partitions, pool="duckdb_writer", group_name=GROUP,
                    kinds={"duckdb"}, check_specs=check_specs(key, checks),
                    backfill_policy=dg.BackfillPolicy.single_run(), description=description)


class PartitionChecks:
    """Asset-check queries over the rows a run wrote (days [first, last])."""

    def __init__(self, con, table: str, days: list[tuple[dt.datetime, dt.datetime]]):
        self.con, self.table = con, f"analytics.{table}"
        self.window = {"first": days[0][0].date(), "last": days[-1][0].date()}

    def count(self, sql: str) -> int:
        return self.con.execute(sql, self.window).fetchone()[0]

    def rows(self) -> int:
        return self.count(f"SELECT count(*) FROM {self.table} WHERE day BETWEEN $first AND $last")

    def no_duplicates(self, keys: str) -> dg.AssetCheckResult:
        duplicates = self.count(f"SELECT count(*) FROM (SELECT {keys} FROM {self.table} WHERE day BETWEEN $first "
                                f"AND $last GROUP BY ALL HAVING count(*) > 1)")
        return dg.AssetCheckResult(check_name="no_duplicate_keys", passed=duplicates == 0,
                                   metadata={"duplicate_keys": duplicates, "key": keys})

    def violations(self, name: str, bad_rows: str) -> dg.AssetCheckResult:
        """``bad_rows`` is a predicate true for rows that break the rule."""
        bad = self.count(f"SELECT count(*) FROM {self.table} WHERE day BETWEEN $first AND $last AND ({bad_rows})")
        return dg.AssetCheckResult(check_name=name, passed=bad == 0, metadata={"violating_rows": bad})

    def covers_feed(self, feed_keys_sql: str, table_keys_sql: str, keys: str) -> dg.AssetCheckResult:
        """Every key the raw feed has data for (``feed_keys_sql``, over [$start, $end)) has a row."""
        window = {"start": dt.datetime.combine(self.window["first"], dt.time()),
                  "end": dt.datetime.combine(self.window["last"], dt.time()) + DAY, **self.window}
        feed, missing = self.con.execute(
            f"WITH feed AS ({feed_keys_sql}), written AS ({table_keys_sql}) "
            f"SELECT (SELECT count(*) FROM feed), (SELECT count(*) FROM feed ANTI JOIN written USING ({keys}))",
            window).fetchone()
        return dg.AssetCheckResult(check_name="non_empty_where_feed_up", passed=missing == 0,
                                   metadata={"feed_keys": feed, "missing_keys": missing})


def preview(con, table: str, days, columns: list[str], order: str, limit: int = 10) -> tuple[list[str], list[tuple]]:
    rows = con.execute(f"SELECT {', '.join(columns)} FROM analytics.{table} WHERE day BETWEEN ? AND ? "
                       f"ORDER BY {order} LIMIT {limit}", [days[0][0].date(), days[-1][0].date()]).fetchall()
    return columns, rows


# --- charts -----------------------------------------------------------------------------------

def plot_lines(ax, series: list[tuple[str, dt.datetime, float]], log: bool = False) -> None:
    lines: dict[str, tuple[list, list]] = {}
    for label, x, y in series:
        xs, ys = lines.setdefault(label, ([], []))
        xs.append(x)
        ys.append(np.nan if y is None else y)
    for label, (xs, ys) in sorted(lines.items())[:8]:
        ax.plot(xs, ys, label=label, linewidth=0.8)
    if log:
        ax.set_yscale("log")
    ax.legend(fontsize=6)


def shade(ax, windows: list[tuple[dt.datetime, dt.datetime]], color: str) -> None:
    for start, end in windows:
        ax.axvspan(start, end, color=color, alpha=0.25, linewidth=0)
