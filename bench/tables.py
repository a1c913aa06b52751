"""The benchmark's tables, narrow enough for an 80-column terminal.

Rows keep their long descriptive ``name`` in the JSON results; tables show a short ``label``
and say the rest once, in the caption.
"""

from __future__ import annotations

import math

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


LATENCY_STAGES = (("ingest", "ingest read"), ("kafka", "in Kafka"), ("duckdb", "DuckDB row"),
                  ("minute_row", "minute row (trades)"), ("minute_close", "  per row, from minute end"))


def _ms(stage: dict, key: str) -> str:
    return f"{stage[key]:,.0f}" if stage.get("n") else "-"


def latency(rows: list[dict]) -> Table:
    cases = " / ".join(f"{row['case']} = {row['scenario']} at {row['speed']:g}x"
                       + (f" (simulator up to {row['simulator_max_lag_ms'] / 1000:,.1f} s late)"
                          if row.get("simulator_max_lag_ms") is not None else " (simulator lateness unknown)")
                       for row in rows)
    columns = ["from venue event to"]
    for row in rows:
        columns += [f"{row['case']} p50", f"{row['case']} p99"]
    table = _table("latency per record, ms (same run)",
                   f"{cases}; minute row = the trade's ohlcv_1m minute readable in the replica, refreshed after "
                   "each loader pass that closed a minute (perpflow schedules analytics daily)", columns)
    for stage, label in LATENCY_STAGES:
        cells = [label]
        for row in rows:
            cells += [_ms(row[stage], "p50_ms"), _ms(row[stage], "p99_ms")]
        table.add_row(*cells)
    return table


def capture(result: dict) -> Table:
    plan = result["schedule"]
    table = _table(f"all-market capture: {result['venues'][0]['symbols']} symbols per venue, venues at once",
                   f"frames/s; need = the simulator's cadence x 300 symbols; cap = flat out beside the other "
                   f"venues and the loader; /core = frames per CPU second of the ingest process, cores = need / "
                   f"/core; backlog "
                   f"after {plan['burst_s']:g} s at {plan['factor']:g}x, drain in s; loader "
                   f"{result['loader_rows_per_s'] or 0:,.0f} rows/s",
                   ["venue", "need", "cap", "headroom", "/core", "cores", "backlog", "drain"])
    for venue in result["venues"]:
        drain = venue["drain_s"]
        table.add_row(venue["exchange"], _n(venue["required_frames_per_s"]), _n(venue["capacity_frames_per_s"]),
                      f"{venue['headroom']:.2f}x", _n(venue["frames_per_cpu_s"]), f"{venue['cores_needed']:.1f}",
                      _n(venue["backlog_at_burst_end"] or 0),
                      f"{drain:.1f}" if drain is not None else f">{plan['drain_max_s']:g}")
    return table


def capture_verdicts(result: dict) -> list[str]:
    """One plain sentence per venue: what capturing its whole market takes."""
    lines = []
    for venue in result["venues"]:
        need, symbols = venue["required_frames_per_s"], venue["symbols"]
        cores = f"{venue['cores_needed']:.1f} cores"
        if venue["headroom"] >= 1:
            lines.append(f"{venue['exchange']}: one ingest process kept up with {symbols} symbols ({need:,.0f} "
                         f"frames/s) with {venue['headroom']:.1f}x headroom here; it uses about {cores}.")
        else:
            lines.append(f"{venue['exchange']}: {symbols} symbols need {need:,.0f} frames/s, about {cores} of "
                         f"ingest alone ({math.ceil(venue['cores_needed'])} processes with a core each, symbols "
                         f"split between them); here it got {venue['capacity_frames_per_s']:,.0f}/s.")
    return lines
