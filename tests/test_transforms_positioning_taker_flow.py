"""Taker buy/sell volume, delta and CVD per venue and across venues (analytics.md §9.1), the
per-minute SQL run on a real DuckDB warehouse."""

import datetime as dt

import numpy as np
import pytest

from ingest.records import Instrument, Trade
from ingest.venues import forced_trade_types
from transforms.taker_flow import (
    TAKER_FLOW_1M_COLUMNS,
    aggregate_flow,
    cumulative_volume_delta,
    forced_fill_predicate,
    reconcile_taker_volume,
    resample_flow,
    taker_flow_sql,
)
from warehouse.loader import insert_records
from warehouse.store import Warehouse

DAY = dt.datetime(2025, 10, 10, tzinfo=dt.UTC)
T0 = int(DAY.timestamp())
USDM = ("binance-usdm", "BTC-USDT-PERP", "BTCUSDT")
COINM = ("binance-coinm", "BTC-USD-PERP", "BTCUSD_PERP")
DYDX = ("dydx-v4", "BTC-USD", "BTC-USD")
ORPHAN = ("okx-swap", "BTC-USDT-PERP", "BTC-USDT-SWAP")   # contracts without an instrument


def _trade(market, second, trade_id, qty, side, price="50000", *, unit="base", trade_type=None, fills=(None, None),
           aggregated=False):
    exchange, symbol, native = market
    ms = (T0 + second) * 1000
    return Trade(exchange=exchange, symbol=symbol, symbol_native=native, ts_exchange=ms, ts_recv=ms * 1_000_000,
                 trade_id=trade_id, price=price, qty=qty, qty_unit=unit, side=side, is_aggregated=aggregated,
                 first_trade_id=fills[0], last_trade_id=fills[1], trade_type=trade_type)


def _market():
    exchange, symbol, native = COINM
    ms = (T0 - 86_400) * 1000
    return [
        Instrument(exchange=exchange, symbol=symbol, symbol_native=native, ts_exchange=ms, ts_recv=ms * 1_000_000,
                   market_type="perpetual", margin="inverse", base_asset="BTC", quote_asset="USD", settle_asset="BTC",
                   qty_unit="contracts", contract_size="100", contract_size_unit="usd", tick_size="0.1",
                   lot_size="1", funding_interval_hours=8, expiry=None, status="TRADING"),
        _trade(USDM, 1, "3", "1.0", "buy", aggregated=True, fills=(1, 3)),
        _trade(USDM, 2, "4", "0.5", "sell", aggregated=True, fills=(4, 4)),
        _trade(USDM, 2, "4", "0.5", "sell", aggregated=True, fills=(4, 4)),       # delivered twice
        _trade(USDM, 3, "5", "0.2", "sell", "50010", trade_type="ADL"),
        _trade(USDM, 4, "6", "0.1", "buy", trade_type="INSURANCE_FUND"),
        _trade(USDM, 61, "7", "2.0", "sell", aggregated=True, fills=(7, 7)),
        _trade(COINM, 5, "1", "10", "buy", unit="contracts"),
        _trade(DYDX, 6, "a", "0.3", "buy", trade_type="LIMIT"),
        _trade(DYDX, 7, "b", "0.2", "sell", trade_type="LIQUIDATED"),
        _trade(DYDX, 8, "c", "0.1", "unknown", trade_type="LIMIT"),
        _trade(ORPHAN, 9, "1", "7", "buy", unit="contracts"),
    ]


@pytest.fixture(scope="module")
def flow(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("taker_flow")
    warehouse = Warehouse(tmp / "w.duckdb", tmp / "r.duckdb")
    with warehouse.writer() as con:
        con.execute("BEGIN")
        insert_records(con, _market())
        con.execute("COMMIT")
        cur = con.execute(taker_flow_sql(forced_trade_types()),
                          {"start": DAY, "end": DAY + dt.timedelta(days=1)})
        names = [d[0] for d in cur.description]
        rows = [dict(zip(names, r, strict=True)) for r in cur.fetchall()]
    assert tuple(names) == TAKER_FLOW_1M_COLUMNS
    return rows


def _row(rows, market, minute):
    [row] = [r for r in rows if (r["exchange"], r["symbol"]) == market[:2] and r["minute"] == T0 + 60 * minute]
    return row


def test_forced_trade_types_come_from_the_venues():
    forced = forced_trade_types()
    assert forced["binance-usdm"] == forced["binance-coinm"] == {"ADL", "INSURANCE_FUND"}
    assert forced["dydx-v4"] == {"LIQUIDATED", "DELEVERAGED"}
    assert "okx-swap" not in forced and "bybit-linear" not in forced


def test_binance_minute_counts_forced_fills_apart_and_duplicates_once(flow):
    r = _row(flow, USDM, 0)
    assert r["asset"] == "BTC"
    assert (r["taker_buy_base"], r["taker_sell_base"]) == pytest.approx((1.1, 0.7))
    assert (r["taker_buy_usd"], r["taker_sell_usd"]) == pytest.approx((55_000.0, 35_002.0))
    assert (r["n_buy"], r["n_sell"], r["n_forced"]) == (4, 2, 2)
    assert (r["forced_buy_usd"], r["forced_sell_usd"]) == pytest.approx((5_000.0, 10_002.0))
    assert r["delta_usd"] == pytest.approx(19_998.0)
    assert r["delta_ex_forced_usd"] == pytest.approx(25_000.0)
    assert _row(flow, USDM, 1)["taker_sell_usd"] == pytest.approx(100_000.0)


def test_inverse_contracts_and_dydx_liquidations_and_unknown_sides(flow):
    coinm = _row(flow, COINM, 0)
    assert coinm["taker_buy_usd"] == pytest.approx(1_000.0) and coinm["taker_buy_base"] == pytest.approx(0.02)
    dydx = _row(flow, DYDX, 0)
    assert (dydx["taker_buy_usd"], dydx["taker_sell_usd"], dydx["forced_sell_usd"]) == pytest.approx(
        (15_000.0, 10_000.0, 10_000.0))
    assert dydx["delta_ex_forced_usd"] == pytest.approx(15_000.0)
    assert (dydx["n_unknown_side"], dydx["unknown_side_usd"]) == (1, pytest.approx(5_000.0))
    # Contracts without an instrument cannot be valued: no OKX row.
    assert not [r for r in flow if r["exchange"] == "okx-swap"]


def test_aggregate_and_resample_from_the_sql_rows(flow):
    frame = {name: np.array([r[name] for r in flow], dtype=object if name in ("exchange", "symbol", "asset")
                            else float) for name in TAKER_FLOW_1M_COLUMNS}
    frame["minute"] = frame["minute"].astype(np.int64)
    total = aggregate_flow(frame)
    assert total["minute"].tolist() == [T0, T0 + 60]
    assert total["n_venues"].tolist() == [3, 1]
    assert total["taker_buy_usd"][0] == pytest.approx(55_000 + 1_000 + 15_000)
    assert total["delta_usd"][0] == pytest.approx(19_998 + 1_000 + 5_000)
    five = resample_flow(frame, 300)
    usdm = five["exchange"] == "binance-usdm"
    assert five["bucket_start"][usdm].tolist() == [T0]
    assert five["taker_sell_usd"][usdm][0] == pytest.approx(135_002.0)
    assert aggregate_flow(five, time_column="bucket_start")["n_venues"].tolist() == [3]


def test_coinglass_cvd_vector():
    buy = [461937243.0899, 390296231.4588, 461378798.1884]
    sell = [415687343.2719, 469137635.9107, 450407935.7885]
    # The doc sample's times mix ms and s; normalized to seconds here.
    cvd = cumulative_volume_delta([T0, T0 + 60, T0 + 120], np.subtract(buy, sell))
    assert cvd == pytest.approx([46249899.818, -32591504.6339, -21620642.234], abs=1e-4)


def test_cvd_anchor_and_bad_input():
    cvd = cumulative_volume_delta([0, 60, 180], [5.0, -2.0, 1.0], anchor=60)
    assert np.isnan(cvd[0]) and cvd[1:].tolist() == [-2.0, -1.0]
    with pytest.raises(ValueError, match="strictly increasing"):
        cumulative_volume_delta([60, 0], [1.0, 1.0])
    with pytest.raises(ValueError, match="NaN"):
        cumulative_volume_delta([0, 60], [1.0, np.nan])


def test_one_venue_only_aggregates_to_itself():
    frame = {"exchange": np.array(["v"], object), "symbol": np.array(["ETH-USDT-PERP"], object),
             "asset": np.array(["ETH"], object), "minute": np.array([T0]),
             **{c: np.array([2.0]) for c in TAKER_FLOW_1M_COLUMNS[4:]}}
    total = aggregate_flow(frame)
    assert total["asset"].tolist() == ["ETH"] and total["n_venues"].tolist() == [1]
    assert total["delta_usd"].tolist() == [2.0]


def test_reconciliation_flags_beyond_tolerance_and_missing_buckets():
    out = reconcile_taker_volume(
        [T0 + 300, T0], [100.4, 200.0], [50.0, 0.0],                     # ours, not sorted
        [T0, T0 + 300, T0 + 600, T0 + 900], [200.0, 100.0, 10.0, 0.0], [0.0, 50.0, 10.0, 0.0])
    assert out["ours_buy"].tolist() == [200.0, 100.4, 0.0, 0.0]
    assert out["rel_diff_buy"][:3] == pytest.approx([0.0, 0.004, -1.0])
    assert out["rel_diff_sell"][0] == 0.0   # both zero
    assert out["flagged"].tolist() == [False, False, True, False]
    tight = reconcile_taker_volume([T0], [100.6], [50.0], [T0], [100.0], [50.0])
    assert tight["flagged"].tolist() == [True]
    only_ours = reconcile_taker_volume([T0], [1.0], [1.0], [T0], [0.0], [1.0])
    assert np.isinf(only_ours["rel_diff_buy"][0]) and only_ours["flagged"][0]
    empty = reconcile_taker_volume([], [], [], [T0], [1.0], [1.0])
    assert empty["flagged"].tolist() == [True]


def test_forced_predicate_refuses_what_is_not_a_venue_id_or_a_trade_type():
    assert forced_fill_predicate({}) == "FALSE"
    with pytest.raises(ValueError, match="upper-case"):
        forced_fill_predicate({"binance-usdm": {"ADL'); DROP TABLE raw.trades; --"}})
    with pytest.raises(ValueError, match="venue id"):
        forced_fill_predicate({"Binance": {"ADL"}})
