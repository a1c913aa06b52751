"""``make bench``: perpflow's throughput next to baselines measured in the same run, then the
latency per record (``latency_bench``) and the all-market capture (``capture_bench``).

Ratios, not absolute numbers, are what to compare across machines. The broker is pinned to
one core and the measured client to the other, so "one core" figures mean one core. Latency
and capture run on whatever the machine gives them; the JSON keeps its load average.
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

from bench import capture_bench, fault_matrix, ingest_bench, latency_bench, loader_bench, microstructure_bench, tables

RESULTS = Path(__file__).with_name("results")


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m bench")
    parser.add_argument("--trades", type=int, default=300_000, help="trade records for the loader benchmark")
    parser.add_argument("--frames", type=int, default=100_000, help="venue frames for the ingest benchmark")
    parser.add_argument("--only", choices=("loader", "ingest", "microstructure", "latency", "capture", "detection",
                                           "faults"),
                        help="run one benchmark; detection (cascades and stress on the simulator's ground truth, "
                             "minutes of simulation) and faults (the fault matrix, ~10 minutes) only run when "
                             "asked for")
    parser.add_argument("--faults", metavar="EXPR", help="with --only faults: the cases matching this pytest -k "
                                                         "expression")
    parser.add_argument("--detection-hours", type=float, default=19.0,
                        help="simulated hours before the end of the cascade scenario (>= 16 warms the 12 h baselines)")
    parser.add_argument("--full", action="store_true",
                        help="longer latency and all-market capture runs (~4x; the default takes a few minutes)")
    parser.add_argument("--day-trades", type=int, default=2_000_000,
                        help="trades in the simulated day of the microstructure benchmark")
    args = parser.parse_args()
    console = Console(width=min(Console().width, tables.WIDTH))
    cores = sorted(os.sched_getaffinity(0))
    load_at_start = os.getloadavg()
    console.print(f"perpflow bench on {platform.processor() or platform.machine()}, {len(cores)} cores available, "
                  f"load average {load_at_start[0]:.2f}")
    rows, ingest_rows, micro, latency, capture, detection, faults = [], None, None, None, None, None, None
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
        console.print(tables.throughput(rows))
    if args.only in (None, "ingest"):
        with tempfile.TemporaryDirectory() as tmp:
            ingest_rows = ingest_bench.run(Path(tmp), args.frames, console)
        console.print(tables.ingest(ingest_rows))
        venue_rows = ingest_bench.per_venue(args.frames, console)
        ingest_rows += venue_rows
        console.print(tables.venues(venue_rows))
    if args.only in (None, "microstructure"):
        with tempfile.TemporaryDirectory() as tmp:
            micro = microstructure_bench.run(Path(tmp), args.day_trades, console)
        console.print(tables.microstructure(micro))
    if args.only in (None, "latency"):
        with tempfile.TemporaryDirectory() as tmp:
            latency = latency_bench.run(Path(tmp), args.full, console)
        console.print(tables.latency(latency))
    if args.only in (None, "capture"):
        with tempfile.TemporaryDirectory() as tmp:
            capture = capture_bench.run(Path(tmp), args.full, console)
        console.print(tables.capture(capture))
        for line in tables.capture_verdicts(capture):
            console.print(line)
    RESULTS.mkdir(exist_ok=True)
    out = RESULTS / f"bench-{time.strftime('%Y%m%dT%H%M%S')}.json"
    machine = {"processor": platform.processor() or platform.machine(), "cores": len(cores),
               "load_average_at_start": load_at_start,
               "load_average_at_end": os.getloadavg(), "python": platform.python_version()}
    out.write_text(json.dumps({"machine": machine, "loader": rows, "ingest": ingest_rows, "microstructure": micro,
                               "latency": latency, "capture": capture, "detection": detection, "faults": faults},
                              indent=2))
    console.print(f"saved {out}")


if __name__ == "__main__":
    main()
