"""``make bench``: perpflow's throughput next to baselines measured in the same run.

Ratios, not absolute numbers, are what to compare across machines. The broker is pinned to
one core and the measured client to the other, so "one core" figures mean one core.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import tempfile
import time
from pathlib import Path

from rich.console import Console
from rich.table import Table

from bench import fault_matrix, ingest_bench, loader_bench, microstructure_bench

RESULTS = Path(__file__).with_name("results")


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m bench")
    parser.add_argument("--trades", type=int, default=300_000, help="trade records for the loader benchmark")
    parser.add_argument("--frames", type=int, default=100_000, help="venue frames for the ingest benchmark")
    parser.add_argument("--only", choices=("loader", "ingest", "microstructure", "detection", "faults"),
                        help="run one benchmark; detection (cascades and stress on the simulator's ground truth, "
                             "minutes of simulation) and faults (the fault matrix, ~10 minutes) only run when "
                             "asked for")
    parser.add_argument("--faults", metavar="EXPR", help="with --only faults: the cases matching this pytest -k "
                                                         "expression")
    parser.add_argument("--detection-hours", type=float, default=19.0,
                        help="simulated hours before the end of the cascade scenario (>= 16 warms the 12 h baselines)")
    parser.add_argument("--day-trades", type=int, default=2_000_000,
                        help="trades in the simulated day of the microstructure benchmark")
    args = parser.parse_args()
    console = Console()
    cores = sorted(os.sched_getaffinity(0))
    console.print(f"perpflow bench on {platform.processor() or platform.machine()}, {len(cores)} cores available")
    rows, ingest_rows, micro, detection, faults = [], None, None, None, None
    if args.only == "faults":
        with tempfile.TemporaryDirectory() as tmp:
            faults = fault_matrix.run(Path(tmp), console, args.faults)
        console.print(fault_matrix.table(faults))
    if args.only == "detection":
        with tempfile.TemporaryDirectory() as tmp:
            detection = microstructure_bench.detection(Path(tmp), args.detection_hours, console)
        console.print_json(data=detection)
    if args.only in (None, "loader"):
        with tempfile.TemporaryDirectory() as tmp:
            rows += loader_bench.run(Path(tmp), args.trades, console)
        table = Table(title="throughput (same run, same topic)")
        for column in ("measurement", "records", "seconds", "records/s", "vs baseline"):
            table.add_column(column, justify="left" if column == "measurement" else "right")
        for row in rows:
            table.add_row(row["name"], f"{row['records']:,}", f"{row['seconds']:.2f}", f"{row['rate']:,.0f}",
                          f"{row['ratio']:.2f}x" if row.get("ratio") else "baseline")
        console.print(table)
    if args.only in (None, "ingest"):
        with tempfile.TemporaryDirectory() as tmp:
            ingest_rows = ingest_bench.run(Path(tmp), args.frames, console)
        table = Table(title="ingest: venue frames -> normalized records -> Kafka (same run)")
        for column in ("measurement", "frames", "records", "seconds", "frames/s", "records/s", "vs baseline"):
            table.add_column(column, justify="left" if column == "measurement" else "right")
        for row in ingest_rows:
            table.add_row(row["name"], f"{row['messages']:,}", f"{row['records']:,}", f"{row['seconds']:.2f}",
                          f"{row.get('messages_per_s', 0):,.0f}", f"{row['rate']:,.0f}",
                          f"{row['ratio']:.2f}x" if row.get("ratio") else "baseline")
        console.print(table)
        venue_rows = ingest_bench.per_venue(args.frames, console)
        ingest_rows += venue_rows
        table = Table(title="per venue: the same market in each venue's wire format, mapper + book sync (same run)")
        for column in ("venue", "frames", "mapped", "skipped", "dead letters", "book gaps", "records", "frames/s",
                       "vs binance-usdm"):
            table.add_column(column, justify="left" if column == "venue" else "right")
        for row in venue_rows:
            table.add_row(row["name"].split(":")[0], f"{row['messages']:,}", f"{row['mapped']:,}",
                          f"{row['skipped']:,}", f"{row['dead_letters']:,}", f"{row['gaps']:,}",
                          f"{row['records']:,}", f"{row['messages_per_s']:,.0f}",
                          f"{row['ratio']:.2f}x" if row.get("ratio") else "baseline")
        console.print(table)
    if args.only in (None, "microstructure"):
        with tempfile.TemporaryDirectory() as tmp:
            micro = microstructure_bench.run(Path(tmp), args.day_trades, console)
        console.print(microstructure_table(micro))
    RESULTS.mkdir(exist_ok=True)
    out = RESULTS / f"bench-{time.strftime('%Y%m%dT%H%M%S')}.json"
    out.write_text(json.dumps({"loader": rows, "ingest": ingest_rows, "microstructure": micro,
                               "detection": detection, "faults": faults}, indent=2))
    console.print(f"saved {out}")


def microstructure_table(micro: dict) -> Table:
    baseline = micro["baseline"]
    table = Table(title=f"daily assets on one simulated day ({micro['inputs']['trades']:,} trades, "
                        f"{micro['inputs']['book_snapshots']:,} book snapshots, {micro['inputs']['book_levels']:,} "
                        "levels); baseline = ohlcv_1m on the same trades")
    for column in ("asset", "rows written", "seconds", "vs ohlcv_1m"):
        table.add_column(column, justify="left" if column == "asset" else "right")
    table.add_row(f"{baseline['asset']} (baseline)", f"{baseline['rows']:,}", f"{baseline['seconds']:.2f}", "1.00x")
    for row in micro["assets"]:
        table.add_row(row["asset"], f"{row['rows']:,}", f"{row['seconds']:.2f}", f"{row['ratio']:.2f}x")
    total = micro["total_seconds"]
    table.add_row("all microstructure assets (target < 60 s on 2 cores)", "", f"{total:.2f}",
                  f"{total / baseline['seconds']:.2f}x")
    return table


if __name__ == "__main__":
    main()
