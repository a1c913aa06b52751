"""Plumbing shared by the analytics readers: the partition rewrite, query -> numpy, numpy -> Arrow.

Times inside the computations are epoch seconds (the ``transforms`` convention); the warehouse
stores naive UTC TIMESTAMPs. Undefined numbers are NaN in numpy and NULL in DuckDB (DuckDB sorts
NaN above every number, so a NaN would fail every range check).
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Iterator

import duckdb
import numpy as np
import pyarrow as pa

from warehouse.transaction import transaction

DAY = dt.timedelta(days=1)

Rows = pa.Table | list[pa.Table] | str
"""What a reader returns for a window: Arrow tables, or a SELECT over ``$start``/``$end``."""


def window_filter(column: str | None) -> str:
    """The rows of the window [$start, $end) by ``column``; every row when the table has no
    partition column (it is rebuilt whole)."""
    return "TRUE" if column is None else f"{column} >= $start AND {column} < $end"


def rewrite(con: duckdb.DuckDBPyConnection, table: str, column: str | None, start: dt.datetime | None,
            end: dt.datetime | None, rows: Rows) -> int:
    """Replace the rows of ``table`` whose ``column`` lies in [start, end) (all of them when
    ``column`` is None) with ``rows``, in one transaction (an idempotent rewrite); the rows written."""
    window = {} if column is None else {"start": start, "end": end}
    parts = [rows] if isinstance(rows, (str, pa.Table)) else rows
    written = 0
    with transaction(con):
        con.execute(f"DELETE FROM {table} WHERE {window_filter(column)}", window)
        for part in parts:
            if isinstance(part, str):
                written += con.execute(f"INSERT INTO {table} BY NAME {part}", window).fetchone()[0]
            elif part.num_rows:
                con.register("incoming_rows", part)
                con.execute(f"INSERT INTO {table} BY NAME SELECT * FROM incoming_rows")
                con.unregister("incoming_rows")
                written += part.num_rows
    return written


def fetch(con: duckdb.DuckDBPyConnection, sql: str, params: dict | None = None) -> dict[str, np.ndarray]:
    """Query -> plain numpy columns: NULL becomes NaN in numeric columns and None in the others
    (DuckDB hands out masked arrays, whose masked slots hold arbitrary values)."""
    columns = {}
    for name, column in con.execute(sql, params or {}).fetchnumpy().items():
        if np.ma.isMaskedArray(column):
            column = (column.astype(np.float64).filled(np.nan) if column.dtype.kind in "fiu"
                      else column.astype(object).filled(None))
        columns[name] = column
    return columns


def epoch(t: dt.datetime) -> float:
    return t.replace(tzinfo=dt.UTC).timestamp()


def naive(seconds: float) -> dt.datetime:
    return dt.datetime.fromtimestamp(seconds, dt.UTC).replace(tzinfo=None)


def timestamps(seconds) -> pa.Array:
    micros = np.round(np.asarray(seconds, dtype=np.float64) * 1e6).astype(np.int64)
    return pa.array(micros, pa.timestamp("us"))


def days_of(seconds) -> pa.Array:
    return pa.array(np.floor(np.asarray(seconds, dtype=np.float64) / 86_400).astype(np.int32), pa.date32())


def arrow_rows(columns: dict) -> pa.Table:
    """numpy/lists -> Arrow, NaN -> NULL; pass ``pa.Array``s (timestamps, days) through."""
    return pa.table({name: value if isinstance(value, pa.Array) else pa.array(value, from_pandas=True)
                     for name, value in columns.items()})


def rows_table(rows: list[dict]) -> pa.Table:
    """Row dicts -> Arrow over the union of their keys (a missing key is NULL), NaN becoming NULL."""
    names = list(dict.fromkeys(name for row in rows for name in row))
    return pa.table({name: pa.array([row.get(name) for row in rows], from_pandas=True) for name in names})


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
