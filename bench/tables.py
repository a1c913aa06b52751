"""The benchmark's tables, narrow enough for an 80-column terminal.

Rows keep their long descriptive ``name`` in the JSON results; tables show a short ``label``
and say the rest once, in the caption.
"""

from __future__ import annotations

from rich import box
from rich.table import Table

WIDTH = 80


def _table(title: str, caption: str, columns: list[str]) -> Table:
    table = Table(title=title, caption=caption, box=box.SIMPLE_HEAD, pad_edge=False, caption_justify="left",
                  title_justify="left")
    for i, column in enumerate(columns):
        table.add_column(column, justify="left" if i == 0 else "right", no_wrap=True)
    return table


def _ratio(row: dict) -> str:
    if row.get("baseline"):
        return "base"
    return f"{row['ratio']:.2f}x" if row.get("ratio") else ""


def _n(value) -> str:
    return f"{value:,.0f}"


def throughput(rows: list[dict]) -> Table:
    table = _table("loader: Kafka -> DuckDB (same run, same topic)",
                   "base = bare kafka-python consume loop; loader = exactly-once pass with offsets in the "
                   "same DuckDB transaction", ["measurement", "records", "s", "records/s", "ratio"])
    for row in rows:
        table.add_row(row["label"], _n(row["records"]), f"{row['seconds']:.2f}", _n(row["rate"]), _ratio(row))
    return table


def ingest(rows: list[dict]) -> Table:
    table = _table("ingest: venue frames -> records -> Kafka (same run)",
                   "base = bare kafka-python producer sending the same records pre-serialized; ratio on records/s",
                   ["measurement", "frames", "records", "s", "records/s", "ratio"])
    for row in rows:
        table.add_row(row["label"], _n(row.get("messages", 0)), _n(row["records"]), f"{row['seconds']:.2f}",
                      _n(row["rate"]), _ratio(row))
    return table


def venues(rows: list[dict]) -> Table:
    table = _table("per venue: mapper + book sync on one market (same run)",
                   "frames/s through the feed handler, no Kafka (records per venue in the JSON); ratio against "
                   "binance-usdm",
                   ["venue", "frames", "mapped", "skip", "dlq", "gaps", "frames/s", "ratio"])
    for row in rows:
        table.add_row(row["label"], _n(row["messages"]), _n(row["mapped"]), _n(row["skipped"]),
                      _n(row["dead_letters"]), _n(row["gaps"]), _n(row["messages_per_s"]),
                      _ratio(row))
    return table


def microstructure(micro: dict) -> Table:
    inputs = micro["inputs"]
    baseline = micro["baseline"]
    table = _table("daily assets on one simulated day",
                   f"{inputs['trades']:,} trades, {inputs['book_snapshots']:,} book snapshots, "
                   f"{inputs['book_levels']:,} levels; ratio = seconds / ohlcv_1m's on the same trades; "
                   "target for all: < 60 s on 2 cores", ["asset", "rows", "s", "ratio"])
    table.add_row(f"{baseline['asset'].removeprefix('analytics/')} (base)", _n(baseline["rows"]),
                  f"{baseline['seconds']:.2f}", "1.00x")
    for row in micro["assets"]:
        table.add_row(row["asset"].removeprefix("analytics/"), _n(row["rows"]), f"{row['seconds']:.2f}",
                      _ratio(row))
    total = micro["total_seconds"]
    table.add_row("all assets", "", f"{total:.2f}", f"{total / baseline['seconds']:.2f}x")
    return table
