"""The demo's quant half on a temporary warehouse: the shipped real candles import through the
`perpflow import-candles` code path, the quant assets give rows for BTC, ETH and SOL, every row is
labelled real, and `perpflow export --format tm-v2` answers all four endpoints from that state."""

from __future__ import annotations

import csv
import hashlib
import os
import subprocess
import sys
import warnings
from pathlib import Path

import dagster as dg
import orjson
import pytest
from rich.console import Console

from pipelines import demo_quant
from warehouse.store import Warehouse

warnings.filterwarnings("ignore", category=dg.BetaWarning)

from dagster_project.resources import WarehouseResource  # noqa: E402

MARKETS = {f"{base}-USDT-PERP" for base in ("BTC", "ETH", "SOL")}
ENDPOINTS = ("quantmetrics", "resistance-support", "trading-signals", "hourly-trading-signals")


@pytest.fixture(scope="module")
def demo_home(tmp_path_factory) -> Path:
    home = tmp_path_factory.mktemp("quant-demo")
    warehouse = Warehouse(home / "warehouse.duckdb", home / "warehouse_ro.duckdb")
    resources = {"warehouse": WarehouseResource(database=str(warehouse.path), replica=str(warehouse.replica_path),
                                                replica_min_interval_s=0)}
    run = demo_quant.run_quant(dg, None, resources, None, warehouse, Console(file=open(os.devnull, "w")))
    assert run.failed_checks == []
    assert (run.bars_imported, run.first_day, run.last_day) == (6000, "2025-09-11", "2025-10-22")
    return home


def rows_by_market(home: Path, sql: str) -> dict[str, int]:
    import duckdb

    with duckdb.connect(str(home / "warehouse_ro.duckdb"), read_only=True) as con:
        return dict(con.execute(sql).fetchall())


def test_shipped_files_are_the_attributed_bybit_candles():
    readme = (demo_quant.DEMO_DATA / "README.md").read_text()
    assert "MIT" in readme and "zxckotee/trader" in readme
    for path, market, interval in demo_quant.shipped_files():
        assert hashlib.sha256(path.read_bytes()).hexdigest() in readme, path.name
        with path.open() as f:
            rows = list(csv.reader(f))
        assert rows[0] == ["timestamp", "open", "high", "low", "close", "volume", "turnover"]
        assert len(rows) == 1001 and market in MARKETS and interval in ("1d", "1h")
    lows = {}
    for path, market, interval in demo_quant.shipped_files():
        if interval == "1h":
            with path.open() as f:
                lows[market] = next(float(r["low"]) for r in csv.DictReader(f) if r["timestamp"] == "2025-10-10 21:00:00")
    assert lows == {"BTC-USDT-PERP": 101045.9, "ETH-USDT-PERP": 3311.76, "SOL-USDT-PERP": 146.57}


def test_quant_assets_have_rows_for_every_shipped_market(demo_home):
    candles = rows_by_market(demo_home, "SELECT symbol || ' ' || interval, count(*) FROM raw.candles "
                                        "WHERE exchange = 'bybit-linear' GROUP BY ALL")
    assert candles == {f"{m} {i}": 1000 for m in MARKETS for i in ("1d", "1h")}
    for table in ("quantmetrics", "support_resistance_levels", "trading_signals", "hourly_trading_signals",
                  "signal_performance"):
        counts = rows_by_market(demo_home, f"SELECT symbol, count(*) FROM analytics.{table} GROUP BY ALL")
        assert set(counts) == MARKETS and min(counts.values()) > 0, (table, counts)
    # 42 as-of days x 4 windows per market; Sharpe over all history exists on the last day
    assert rows_by_market(demo_home, "SELECT symbol, count(*) FROM analytics.quantmetrics GROUP BY ALL") == \
        {m: 42 * 4 for m in MARKETS}
    sharpe = rows_by_market(demo_home, "SELECT symbol, sharpe FROM analytics.quantmetrics "
                                       "WHERE as_of = DATE '2025-10-22' AND lookback = 'all'")
    assert all(value is not None and -5 < value < 5 for value in sharpe.values()), sharpe


def test_provenance_labels_every_row_real_when_only_history_is_loaded(demo_home):
    with Warehouse(demo_home / "warehouse.duckdb", demo_home / "warehouse_ro.duckdb").reader() as con:
        rows = demo_quant.provenance(con)
        totals = {f"analytics.{t}": con.execute(f"SELECT count(*) FROM analytics.{t}").fetchone()[0]
                  for t in demo_quant.QUANT_TABLES}
    assert {table for table, *_ in rows} == set(totals)
    assert all(label.startswith("real") for _, label, *_ in rows), rows
    assert {table: n for table, _, n, *_ in rows} == totals


def export(home: Path, endpoint: str) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if not k.startswith("PERPFLOW_")}
    env["PERPFLOW_HOME"] = str(home)
    return subprocess.run([sys.executable, "-m", "pipelines.cli", "export", "--format", "tm-v2", endpoint,
                           "--symbol", "BTC,ETH,SOL", "--limit", "100"],
                          env=env, capture_output=True, text=True, timeout=120)


@pytest.mark.parametrize("endpoint", ENDPOINTS)
def test_export_answers_every_tm_v2_endpoint(demo_home, endpoint):
    out = export(demo_home, endpoint)
    assert out.returncode == 0, out.stderr
    response = orjson.loads(out.stdout)
    assert response["success"] is True and response["length"] == len(response["data"]) > 0
    assert {row["MARKET"] for row in response["data"]} == MARKETS
    assert {row["EXCHANGE"] for row in response["data"]} == {"bybit-linear"}
    assert {row["TOKEN_SYMBOL"] for row in response["data"]} == {"BTC", "ETH", "SOL"}
