"""analytics.adl_events: every public ADL fill and state, sized in base units and USD, labelled
with the venue's coverage of ADL; a repeated event is one row; a fill in contracts of a market
without an instrument keeps NULL sizes and is counted by the units check."""

from __future__ import annotations

import datetime as dt
import warnings

import dagster as dg
import pytest

from ingest.records import Adl, Instrument
from warehouse.loader import insert_records
from warehouse.store import Warehouse

warnings.filterwarnings("ignore", category=dg.BetaWarning)

from dagster_project.assets.microstructure_adl import adl_events  # noqa: E402
from dagster_project.resources import WarehouseResource  # noqa: E402

DAY = dt.datetime(2025, 10, 10)
QUIET = {"loggers": {"console": {"config": {"log_level": "ERROR"}}}}


def _ms(t: dt.datetime) -> int:
    return int(t.replace(tzinfo=dt.UTC).timestamp() * 1000)


def _at(exchange, symbol, native, seconds) -> dict:
    t = DAY + dt.timedelta(seconds=seconds)
    return {"exchange": exchange, "symbol": symbol, "symbol_native": native, "ts_exchange": _ms(t),
            "ts_recv": _ms(t) * 1_000_000}


def _fill(exchange, symbol, native, seconds, side, price, qty, unit, trade_id) -> Adl:
    return Adl(**_at(exchange, symbol, native, seconds), event="fill", deleveraged_position=side, price=price, qty=qty,
               qty_unit=unit, trade_id=trade_id, state=None, detail=None)


@pytest.fixture(scope="module")
def materialized(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("adl")
    warehouse = Warehouse(tmp / "w.duckdb", tmp / "r.duckdb")
    dydx_fill = _fill("dydx-v4", "BTC-USDC-PERP", "BTC-USD", 60, "short", "60000", "0.5", "base", "abc1")
    events = [
        dydx_fill, dydx_fill,     # delivered twice (a restart replays it): one event
        _fill("binance-usdm", "ETH-USDT-PERP", "ETHUSDT", 90, None, "3000", "2", "base", "77"),
        # 40 contracts of 0.01 BTC at 60,000: 0.4 BTC = $24,000
        _fill("okx-swap", "BTC-USDT-PERP", "BTC-USDT-SWAP", 120, "long", "60000", "40", "contracts", "9"),
        # contracts of a market without an instrument: kept, unsized, counted
        _fill("okx-swap", "ETH-USDT-PERP", "ETH-USDT-SWAP", 150, "long", "3000", "5", "contracts", "10"),
        Adl(**_at("okx-swap", "BTC-USDT-PERP", "BTC-USDT-SWAP", 180), event="state", deleveraged_position=None,
            price=None, qty=None, qty_unit=None, trade_id=None, state="warning", detail='{"instFamily":"BTC-USDT"}'),
        _fill("dydx-v4", "BTC-USDC-PERP", "BTC-USD", 86_400 + 5, "long", "59000", "1", "base", "next-day"),
    ]
    okx_btc = Instrument(**_at("okx-swap", "BTC-USDT-PERP", "BTC-USDT-SWAP", 0), market_type="perpetual",
                         margin="linear", base_asset="BTC", quote_asset="USDT", settle_asset="USDT",
                         qty_unit="contracts", contract_size="0.01", contract_size_unit="base", tick_size="0.1",
                         lot_size="1", funding_interval_hours=None, expiry=None, status="live")
    with warehouse.writer() as con:
        con.execute("BEGIN")
        insert_records(con, [okx_btc, *events])
        con.execute("COMMIT")
    resources = {"warehouse": WarehouseResource(database=str(warehouse.path), replica=str(warehouse.replica_path))}
    raw = [dg.AssetSpec(["raw", "adl_events"]), dg.AssetSpec(["raw", "instruments"])]
    result = dg.materialize([*raw, adl_events], selection=[adl_events], resources=resources,
                            partition_key=f"{DAY:%Y-%m-%d}", run_config=QUIET)
    assert result.success
    return warehouse, result


def test_each_event_once_in_base_units_and_usd_with_its_venue_coverage(materialized):
    warehouse, _ = materialized
    with warehouse.writer() as con:
        rows = con.execute("SELECT exchange, symbol, kind, side, qty, price, usd, state, trade_id, coverage "
                           "FROM analytics.adl_events ORDER BY ts").fetchall()
    assert rows == [
        ("dydx-v4", "BTC-USDC-PERP", "fill", "short", 0.5, 60000.0, 30000.0, None, "abc1", "complete"),
        ("binance-usdm", "ETH-USDT-PERP", "fill", None, 2.0, 3000.0, 6000.0, None, "77", "unavailable"),
        ("okx-swap", "BTC-USDT-PERP", "fill", "long", 0.4, 60000.0, 24000.0, None, "9", "unavailable"),
        ("okx-swap", "ETH-USDT-PERP", "fill", "long", None, 3000.0, None, None, "10", "unavailable"),
        ("okx-swap", "BTC-USDT-PERP", "state", None, None, None, None, "warning", None, "unavailable"),
    ]


def test_checks_count_what_cannot_be_sized(materialized):
    _, result = materialized
    checks = {c.check_name: c for c in result.get_asset_check_evaluations()}
    assert checks["every_event_kept"].passed and checks["every_event_kept"].metadata["rows"].value == 5
    assert checks["values_in_range"].passed
    units = checks["units_convertible"]
    assert not units.passed and units.metadata["unconvertible_rows"].value == 1
    assert "okx-swap ETH-USDT-PERP: 1" in units.metadata["unconvertible_markets"].value
