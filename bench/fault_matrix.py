"""The fault matrix's figures: per fault, trades expected / in DuckDB / lost with an event / lost
silently / duplicated, from the same runs the test suite makes (tests/test_fault_matrix.py).

The tests are the only definition of each fault; this runs them under pytest with
``PERPFLOW_FAULT_FIGURES`` set, and each case appends its account (tests/fault_harness.py) to that file
whether its assertions pass or not, so the table also shows how far off a failing case is.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

from rich import box
from rich.console import Console
from rich.table import Table

REPO = Path(__file__).resolve().parents[1]
COLUMNS = (("fault", "fault"), ("expected", "expected"), ("in DuckDB", "in_duckdb"),
           ("lost+event", "lost_with_event"), ("silently", "lost_silently"), ("dup", "duplicated"),
           ("test", "outcome"))


def run(workdir: Path, console: Console, select: str | None = None) -> list[dict]:
    """Run the matrix (or the cases matching ``select``, a pytest -k expression); one row per test."""
    figures = workdir / "fault-figures.jsonl"
    command = [sys.executable, "-m", "pytest", "-q", "-ra", "-p", "no:cacheprovider", "-m", "faults",
               str(REPO / "tests" / "test_fault_matrix.py"), *(["-k", select] if select else [])]
    console.print(f"running the fault matrix: {' '.join(command[1:])}", highlight=False)
    result = subprocess.run(command, cwd=REPO, env={**os.environ, "PERPFLOW_FAULT_FIGURES": str(figures)},
                            capture_output=True, text=True)
    rows = [json.loads(line) for line in figures.read_text().splitlines()] if figures.exists() else []
    outcomes = pytest_outcomes(result.stdout)
    for row in rows:
        row["outcome"] = outcomes.pop(row["test"], "passed")
    # A test that failed or was skipped before its account has a row without figures.
    rows += [{"fault": test, "test": test, "outcome": outcome} for test, outcome in outcomes.items()]
    summary = result.stdout.strip().splitlines()[-1] if result.stdout.strip() else result.stderr[-500:]
    console.print(f"pytest: {summary}", highlight=False)
    return rows


def pytest_outcomes(pytest_output: str) -> dict[str, str]:
    """Test function -> "failed"/"skipped"/"error" from pytest's -ra summary; absent means passed."""
    outcomes = {}
    for line in pytest_output.splitlines():
        word, _, rest = line.partition(" ")
        if word in ("FAILED", "SKIPPED", "ERROR"):
            test = rest.split(" ", 1)[0].rsplit("::", 1)[-1] if "::" in rest else rest.split(":")[0]
            outcomes[test] = word.lower()
    return outcomes


def table(rows: list[dict]) -> Table:
    grid = Table(title="fault matrix: trades against the simulator's truth", width=80, box=box.SIMPLE_HEAD)
    for header, _ in COLUMNS:
        if header == "fault":
            grid.add_column(header, overflow="fold")
        else:
            grid.add_column(header, justify="left" if header == "test" else "right", no_wrap=True)
    for row in rows:
        grid.add_row(*(f"{row[key]:,}" if isinstance(row.get(key), int) else str(row.get(key, "-"))
                       for _, key in COLUMNS))
    return grid
