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

from bench import loader_bench

RESULTS = Path(__file__).with_name("results")


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m bench")
    parser.add_argument("--trades", type=int, default=300_000, help="trade records for the loader benchmark")
    args = parser.parse_args()
    console = Console()
    cores = sorted(os.sched_getaffinity(0))
    console.print(f"perpflow bench on {platform.processor() or platform.machine()}, {len(cores)} cores available")
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        rows += loader_bench.run(Path(tmp), args.trades, console)
    table = Table(title="throughput (same run, same topic)")
    for column in ("measurement", "records", "seconds", "records/s", "vs baseline"):
        table.add_column(column, justify="left" if column == "measurement" else "right")
    for row in rows:
        table.add_row(row["name"], f"{row['records']:,}", f"{row['seconds']:.2f}", f"{row['rate']:,.0f}",
                      f"{row['ratio']:.2f}x" if row.get("ratio") else "baseline")
    console.print(table)
    RESULTS.mkdir(exist_ok=True)
    out = RESULTS / f"bench-{time.strftime('%Y%m%dT%H%M%S')}.json"
    out.write_text(json.dumps(rows, indent=2))
    console.print(f"saved {out}")


if __name__ == "__main__":
    main()
