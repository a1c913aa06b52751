"""Sizes in contracts reach the analytics in base units and USD (warehouse.units), on a warehouse
holding four kinds of market side by side: Binance USD-M in base units (no instrument row needed),
Binance COIN-M inverse contracts of 100 USD, OKX linear contracts of 0.01 BTC, and OKX contracts of
a market without an instrument, which cannot be converted and must be counted, not dropped."""

from __future__ import annotations

import datetime as dt
import warnings

import dagster as dg
import numpy as np
import pytest

from ingest.records import BookSnapshot, Funding, Instrument, Liquidation, OpenInterest, Trade
from transforms.depth import BANDS, depth_bands, depth_bands_batch
from transforms.open_interest import open_interest_value
from warehouse.loader import insert_records
from warehouse.store import Warehouse

warnings.filterwarnings("ignore", category=dg.BetaWarning)

from dagster_project.assets.microstructure import MICROSTRUCTURE_ASSETS  # noqa: E402
from dagster_project.assets.ohlcv import ohlcv_1m  # noqa: E402
from dagster_project.resources import WarehouseResource  # noqa: E402

RAW = [dg.AssetSpec(["raw", t]) for t in ("trades", "book_snapshots", "open_interest", "funding", "liquidations",
                                          "instruments")]
QUIET = {"loggers": {"console": {"config": {"log_level": "ERROR"}}}}
DAY = dt.datetime(2025, 10, 1)

USDM = ("binance-usdm", "BTC-USDT-PERP", "BTCUSDT")        # base units, no instrument row
COINM = ("binance-coinm", "BTC-USD-PERP", "BTCUSD_PERP")   # inverse, 100 USD per contract
OKX = ("okx-swap", "BTC-USDT-PERP", "BTC-USDT-SWAP")       # linear, 0.01 BTC per contract
ORPHAN = ("okx-swap", "ETH-USDT-PERP", "ETH-USDT-SWAP")    # contracts, no instrument: unconvertible
NO_MARK = ("okx-swap", "SOL-USDT-PERP", "SOL-USDT-SWAP")   # OI with the venue's USD value, no mark price pushed
# COIN-M's mark: 1,234 contracts × $100 = $123,400 exactly, while coins × mark comes back as
# 123,399.99999999999, so the test tells the two USD formulas apart.
COINM_MARK = 43_210.9
MARKS = {USDM: 50_000.0, COINM: COINM_MARK, OKX: 50_000.0, ORPHAN: 3_000.0}
QTY_UNIT = {USDM: "base", COINM: "contracts", OKX: "contracts", ORPHAN: "contracts"}


def _ms(t: dt.datetime) -> int:
    return int(t.replace(tzinfo=dt.UTC).timestamp() * 1000)


def _at(market, t: dt.datetime) -> dict:
    exchange, symbol, native = market
    return {"exchange": exchange, "symbol": symbol, "symbol_native": native, "ts_exchange": _ms(t),
            "ts_recv": _ms(t) * 1_000_000}


def _instrument(market, t: dt.datetime, *, margin: str, quote: str, size: str, size_unit: str) -> Instrument:
    return Instrument(**_at(market, t), market_type="perpetual", margin=margin, base_asset="BTC", quote_asset=quote,
                      settle_asset="BTC" if margin == "inverse" else quote, qty_unit="contracts", contract_size=size,
                      contract_size_unit=size_unit, tick_size="0.1", lot_size="1", funding_interval_hours=8,
                      expiry=None, status="TRADING")


def _trade(market, second: int, trade_id: str, qty: str, side: str, price: str = "50000") -> Trade:
    return Trade(**_at(market, DAY + dt.timedelta(minutes=1, seconds=second)), trade_id=trade_id, price=price,
                 qty=qty, qty_unit=QTY_UNIT[market], side=side, is_aggregated=False)


def _liquidation(market, position: str, qty: str, price: str, avg_price: str | None) -> Liquidation:
    return Liquidation(**_at(market, DAY + dt.timedelta(minutes=2)), order_side="sell" if position == "long" else "buy",
                       liquidated_position=position, price=price, avg_price=avg_price, qty=qty,
                       qty_unit=QTY_UNIT[market], order_status="FILLED", is_sampled=False)


def _book(market, bid_qty: str, ask_qty: str) -> BookSnapshot:
    return BookSnapshot(**_at(market, DAY + dt.timedelta(seconds=10)), bids=[["49990", bid_qty]],
                        asks=[["50010", ask_qty]], seq=1, reason="periodic")


def contract_market() -> list:
    before = DAY - dt.timedelta(days=3)
    items = [
        _instrument(COINM, before, margin="inverse", quote="USD", size="100", size_unit="usd"),
        # OKX changed the contract size since: the latest instrument row is the one that counts.
        _instrument(OKX, before, margin="linear", quote="USDT", size="0.1", size_unit="base"),
        _instrument(OKX, before + dt.timedelta(days=1), margin="linear", quote="USDT", size="0.01", size_unit="base"),
        _trade(USDM, 1, "1", "0.5", "buy"), _trade(USDM, 2, "2", "0.25", "sell"),
        _trade(COINM, 1, "1", "5", "buy"), _trade(COINM, 2, "2", "3", "sell"),
        _trade(OKX, 1, "1", "300", "buy"),
        _trade(ORPHAN, 1, "1", "7", "buy", price="3000"),
        _liquidation(USDM, "long", "0.2", "49900", "50000"),
        _liquidation(COINM, "long", "999", "46000", "47000.1"),
        _liquidation(COINM, "short", "5", "50000", None),
        _liquidation(OKX, "short", "300", "49000", "50000"),
        _liquidation(ORPHAN, "long", "7", "3000", "3000"),
        _book(USDM, "1", "2"), _book(COINM, "10", "20"), _book(OKX, "100", "200"), _book(ORPHAN, "100", "200"),
    ]
    items.append(_instrument(NO_MARK, before, margin="linear", quote="USDT", size="1", size_unit="base"))
    items.append(OpenInterest(**_at(NO_MARK, DAY + dt.timedelta(seconds=30)), open_interest="40",
                              qty_unit="contracts", open_interest_usd="8000"))
    for market, oi in ((USDM, "10"), (COINM, "1234"), (OKX, "300"), (ORPHAN, "50")):
        items.append(Funding(**_at(market, DAY), rate="0.0001", interval_hours=8, next_funding_time=None,
                             mark_price=str(MARKS[market]), index_price=str(MARKS[market]), is_realised=False))
        items.append(OpenInterest(**_at(market, DAY + dt.timedelta(seconds=30)), open_interest=oi,
                                  qty_unit=QTY_UNIT[market]))
    return items


@pytest.fixture(scope="module")
def materialized(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("units")
    warehouse = Warehouse(tmp / "w.duckdb", tmp / "r.duckdb")
    with warehouse.writer() as con:
        con.execute("BEGIN")
        insert_records(con, contract_market())
        con.execute("COMMIT")
    resources = {"warehouse": WarehouseResource(database=str(warehouse.path), replica=str(warehouse.replica_path))}
    result = dg.materialize([*RAW, ohlcv_1m, *MICROSTRUCTURE_ASSETS], selection=[ohlcv_1m, *MICROSTRUCTURE_ASSETS],
                            resources=resources, partition_key=f"{DAY:%Y-%m-%d}", run_config=QUIET)
    assert result.success
    return warehouse, result


def _rows(warehouse: Warehouse, sql: str, params=None) -> dict:
    """First two columns (exchange, symbol) -> the rest."""
    with warehouse.writer() as con:
        return {(r[0], r[1]): r[2:] for r in con.execute(sql, params or []).fetchall()}


def test_candles_count_contracts_in_base_units_and_usd(materialized):
    warehouse, _ = materialized
    bars = _rows(warehouse, "SELECT exchange, symbol, volume, quote_volume, buy_volume, sell_volume, vwap, "
                            "trade_count FROM analytics.ohlcv_1m")
    assert bars.keys() == {USDM[:2], COINM[:2], OKX[:2]}
    assert bars[USDM[:2]] == (0.75, 37_500.0, 0.5, 0.25, 50_000.0, 2)
    # 5 and 3 contracts of $100 at 50,000: $500 = 0.01 BTC and $300 = 0.006 BTC.
    volume, usd, buy, sell, vwap, count = bars[COINM[:2]]
    assert (buy, sell, usd, count) == (0.01, 0.006, 800.0, 2)
    assert volume == pytest.approx(0.016, rel=1e-15) and vwap == pytest.approx(50_000, rel=1e-15)
    # 300 contracts of 0.01 BTC at 50,000: 3 BTC = $150,000.
    assert bars[OKX[:2]] == (3.0, 150_000.0, 3.0, 0.0, 50_000.0, 1)


def test_open_interest_converts_linear_and_inverse_contracts(materialized):
    warehouse, _ = materialized
    oi = _rows(warehouse, "SELECT exchange, symbol, open_interest, open_interest_usd, mark_price "
                          "FROM analytics.open_interest WHERE grain = '5m' AND bucket_start = ?", [DAY])
    assert oi[USDM[:2]] == (10.0, 500_000.0, 50_000.0)
    # Inverse: USD is contracts × $100, exact and price-free; coins = USD / mark.
    assert oi[COINM[:2]] == (123_400.0 / COINM_MARK, 123_400.0, COINM_MARK)
    assert oi[OKX[:2]] == (3.0, 150_000.0, 50_000.0)
    # No mark price pushed (OKX's funding-rate carries none): the price its own USD figure implies.
    assert oi[NO_MARK[:2]] == (40.0, 8_000.0, 200.0)
    assert ("all", "BTC") in oi and ("all", "ETH") not in oi and ORPHAN[:2] not in oi
    coins, usd, _ = oi[("all", "BTC")]
    assert coins == pytest.approx(13.0 + 123_400.0 / COINM_MARK, rel=1e-15)
    assert usd == pytest.approx(773_400.0, rel=1e-15)


def test_liquidations_convert_at_the_fill_price(materialized):
    warehouse, _ = materialized
    liquidated = _rows(warehouse, "SELECT exchange, symbol, long_qty, long_usd, short_qty, short_usd, n_long, n_short "
                                  "FROM analytics.liquidations_1m")
    assert liquidated.keys() == {USDM[:2], COINM[:2], OKX[:2]}
    assert liquidated[USDM[:2]] == (0.2, 10_000.0, 0.0, 0.0, 1, 0)
    # 999 contracts of $100 filled at 47,000.1: $99,900 exactly; 5 at the order price 50,000: $500.
    assert liquidated[COINM[:2]] == (99_900.0 / 47_000.1, 99_900.0, 0.01, 500.0, 1, 1)
    assert liquidated[OKX[:2]] == (0.0, 0.0, 3.0, 150_000.0, 0, 1)


def test_book_depth_converts_levels(materialized):
    warehouse, _ = materialized
    depth = _rows(warehouse, "SELECT exchange, symbol, bid_base_0_1_last, bid_usd_0_1_last, ask_base_0_1_last, "
                             "ask_usd_0_1_last, n_valid FROM analytics.book_depth")
    assert depth.keys() == {USDM[:2], COINM[:2], OKX[:2]}
    # USD-M has no instrument row: its book is in the unit of its trades.
    assert depth[USDM[:2]] == (1.0, 49_990.0, 2.0, 100_020.0, 1)
    assert depth[COINM[:2]] == (1_000.0 / 49_990, 1_000.0, 2_000.0 / 50_010, 2_000.0, 1)
    assert depth[OKX[:2]] == (1.0, 49_990.0, 2.0, 100_020.0, 1)


def test_unconvertible_rows_are_counted_by_each_asset_that_reads_them(materialized):
    _, result = materialized
    checks = result.get_asset_check_evaluations()
    failed = {(c.asset_key.to_user_string(), c.check_name) for c in checks if not c.passed}
    readers = {"analytics/ohlcv_1m", "analytics/book_depth", "analytics/open_interest", "analytics/liquidations_1m",
               "analytics/liquidation_cascades", "analytics/aggregated_open_interest", "analytics/taker_volume",
               "analytics/slippage"}
    assert failed == {(key, "units_convertible") for key in readers}
    for check in checks:
        if check.check_name == "units_convertible" and check.asset_key.to_user_string() in readers:
            assert check.severity == dg.AssetCheckSeverity.WARN
            metadata = {name: value.value for name, value in check.metadata.items()}
            assert metadata == {"unconvertible_rows": 1, "unconvertible_markets": "okx-swap ETH-USDT-PERP: 1"}, \
                check.asset_key


def test_latest_instrument_row_defines_the_unit(materialized):
    warehouse, _ = materialized
    with warehouse.writer() as con:
        units = con.execute("SELECT exchange, symbol, margin, qty_unit, contract_size, contract_size_unit "
                            "FROM raw.instrument_units ORDER BY ALL").fetchall()
        converted = con.execute("SELECT raw.base_qty(5, 50000, 'contracts', 100, 'usd'), "
                                "raw.usd_notional(5, NULL, 'contracts', 100, 'usd'), "
                                "raw.base_qty(2, NULL, 'base', NULL, NULL), "
                                "raw.qty_multiplier('contracts', 0, 'base')").fetchone()
    assert units == [("binance-coinm", "BTC-USD-PERP", "inverse", "contracts", 100.0, "usd"),
                     ("okx-swap", "BTC-USDT-PERP", "linear", "contracts", 0.01, "base"),
                     ("okx-swap", "SOL-USDT-PERP", "linear", "contracts", 1.0, "base")]
    assert converted == (0.01, 500.0, 2.0, None)


# --- the numpy paths, on their own -----------------------------------------------------------------

def test_depth_batch_takes_each_snapshots_unit():
    """One batch of three markets (base units, 0.01-BTC linear contracts, $100 inverse contracts)
    equals the one-book reference with each market's contract size."""
    bids, asks = [(99.5, 2), (99.0, 3), (98.0, 5), (97.9, 10)], [(100.5, 1), (101.0, 4), (102.0, 6), (102.1, 8)]
    units = [(1.0, False), (0.01, False), (100.0, True)]
    flat = [np.array([level for _ in units for level in side], dtype=np.float64) for side in (bids, asks)]
    offsets = np.arange(len(units) + 1) * 4
    batch = depth_bands_batch(flat[0][:, 0], flat[0][:, 1], offsets, flat[1][:, 0], flat[1][:, 1], offsets,
                              contract_size=[size for size, _ in units], inverse=[inverse for _, inverse in units])
    for i, (size, inverse) in enumerate(units):
        one = depth_bands(bids, asks, contract_size=size, inverse=inverse)
        for name in ("bid_base", "ask_base", "bid_quote", "ask_quote", "bid_usd", "ask_usd", "imbalance"):
            assert getattr(batch, name)[i] == pytest.approx(getattr(one, name), rel=1e-15, nan_ok=True), (i, name)
    # Inverse quote notional is contracts × $100: 2 % band bids 2 + 3 + 5 contracts = $1,000.
    assert batch.bid_quote[2, BANDS.index(0.02)] == 1_000.0


def test_open_interest_value_takes_each_observations_unit():
    oi = open_interest_value([10.0, 300.0, 1_234.0], [50_000.0, 50_000.0, COINM_MARK],
                             contract_size=[1.0, 0.01, 100.0], inverse=[False, False, True])
    assert oi.coin.tolist() == [10.0, 3.0, 123_400.0 / COINM_MARK]
    assert oi.usd.tolist() == [500_000.0, 150_000.0, 123_400.0]
