"""`perpflow ui`: partitions start at the data, and Ctrl-C / SIGTERM leave no Dagster process behind."""

from __future__ import annotations

import datetime
import os
import re
import signal
import subprocess
import time
import urllib.request
from pathlib import Path

import pytest

from conftest import PERPFLOW, perpflow_env
from pipelines.broker import free_port
from pipelines.process_group import group_members
from warehouse.store import Warehouse


def _seed(home: Path) -> None:
    """A trade on 2025-10-10 and an imported candle on 2025-09-30, published to the replica."""
    warehouse = Warehouse(home / "warehouse.duckdb", home / "warehouse_ro.duckdb")
    with warehouse.writer() as con:
        con.execute("INSERT INTO raw.trades (exchange, symbol, symbol_native, ts_exchange, ts_recv, trade_id, price, "
                    "qty, qty_unit, side, is_aggregated) VALUES ('binance-usdm', 'BTC-USDT-PERP', 'BTCUSDT', "
                    "'2025-10-10 21:15:00', '2025-10-10 21:15:00.2', '1', 104000, 0.5, 'base', 'sell', false)")
        con.execute("INSERT INTO raw.candles VALUES ('bybit-linear', 'BTC-USDT-PERP', '1d', '2025-09-30 00:00:00', "
                    "114000, 114500, 112000, 113000, 1000, NULL, 'BTCUSDT_1d.csv', now())")
    warehouse.publish_replica()


def test_first_data_day_is_the_earliest_of_market_records_and_candles(tmp_path):
    warehouse = Warehouse(tmp_path / "warehouse.duckdb", tmp_path / "warehouse_ro.duckdb")
    assert warehouse.first_data_day() is None   # no replica yet
    with warehouse.writer():
        pass
    warehouse.publish_replica()
    assert warehouse.first_data_day() is None   # tables but no rows
    _seed(tmp_path)
    assert warehouse.first_data_day() == datetime.date(2025, 9, 30)


def _wait_for(condition, what: str, log: Path, timeout: float = 600.0):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = condition()
        if value:
            return value
        time.sleep(0.5)
    pytest.fail(f"{what} did not happen; perpflow ui printed:\n{log.read_text()[-3000:]}")


def _webserver_answers(port: int) -> bool:
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/server_info", timeout=5) as response:
            return response.status == 200
    except OSError:
        return False


@pytest.mark.parametrize("stop_signal", [signal.SIGINT, signal.SIGTERM], ids=["ctrl-c", "sigterm"])
def test_ui_stops_the_whole_dagster_tree(tmp_path, stop_signal):
    home = tmp_path / "home"
    _seed(home)
    port = free_port()
    log = tmp_path / "ui.log"
    env = perpflow_env(home, f"127.0.0.1:{free_port()}")   # no broker: the UI must still come up
    with log.open("w") as out:
        ui = subprocess.Popen([*PERPFLOW, "ui", "--port", str(port)], env=env, stdout=out, stderr=subprocess.STDOUT)
    try:
        group = _wait_for(lambda: re.search(r"process group (\d+)", log.read_text()), "dagster dev start", log)
        pgid = int(group.group(1))
        assert "daily partitions from 2025-09-30" in " ".join(log.read_text().split())   # rich wraps at 80
        _wait_for(lambda: _webserver_answers(port), "the webserver answering", log)
        # webserver, daemon and code server at least, all in dagster dev's group, none in perpflow's
        _wait_for(lambda: len(group_members(pgid)) >= 3, "dagster dev's children starting", log)
        assert os.getpgid(ui.pid) != pgid

        ui.send_signal(stop_signal)
        assert ui.wait(timeout=120) == 128 + stop_signal
        assert group_members(pgid) == [], f"left running: {group_members(pgid)}"
    finally:
        if ui.poll() is None:
            ui.kill()
