"""Microstructure assets on temporary warehouses: spec toy vectors, a synthetic two-day market with
one cascade of known shape, checks, idempotent rewrites, the daily snapshot and the CLI backfill."""

from __future__ import annotations

import datetime as dt
import hashlib
import warnings

import dagster as dg
import duckdb
import numpy as np
import pytest
from click.testing import CliRunner

from ingest.records import BookSnapshot, Funding, Instrument, Liquidation, OpenInterest, Trade
from transforms.cascades import match_windows, thresholds_for
from warehouse.loader import insert_records
from warehouse.store import Warehouse

warnings.filterwarnings("ignore", category=dg.BetaWarning)

from dagster_project.assets.microstructure import MICROSTRUCTURE_ASSETS  # noqa: E402
from warehouse.analytics.liquidations import cascade_thresholds  # noqa: E402
from dagster_project.assets.ohlcv import ohlcv_1m  # noqa: E402
from dagster_project.definitions import defs  # noqa: E402
from dagster_project.resources import WarehouseResource  # noqa: E402
from dagster_project.snapshots import (DAILY_ASSETS, LakeResource, daily_snapshot_job,  # noqa: E402
                                       daily_snapshot_schedule, lake_export)

RAW = [dg.AssetSpec(["raw", t]) for t in ("trades", "book_snapshots", "open_interest", "funding", "liquidations")]
QUIET = {"loggers": {"console": {"config": {"log_level": "ERROR"}}}}
TABLES = ["book_depth", "liquidity_withdrawals", "open_interest", "funding", "liquidations_1m",
          "liquidation_cascades", "market_stress"]

CALM_DAY = dt.datetime(2025, 10, 9)
DAY = CALM_DAY + dt.timedelta(days=1)
WITHDRAWN = (DAY + dt.timedelta(hours=12, minutes=2), DAY + dt.timedelta(hours=12, minutes=30))
CASCADE = (DAY + dt.timedelta(hours=12, minutes=6), DAY + dt.timedelta(hours=12, minutes=26))
CRASH = (DAY + dt.timedelta(hours=12, minutes=5), DAY + dt.timedelta(hours=12, minutes=25))
FUNDING_SPIKE = DAY + dt.timedelta(hours=11, minutes=50)
LEFT = 0.05          # share of near-mid liquidity left while withdrawn: the true collapse ratio
TICK = 0.1
OFFSETS = np.unique(np.ceil(np.geomspace(1, 9_000, 32))).astype(int)   # ticks from mid, out to 9 %
USD_PER_LEVEL = 1e6


def _ms(t: dt.datetime) -> int:
    return int(t.replace(tzinfo=dt.UTC).timestamp() * 1000)


def _ramp(t: dt.datetime, window: tuple[dt.datetime, dt.datetime]) -> float:
    return min(max((t - window[0]) / (window[1] - window[0]), 0.0), 1.0)


def _mid(t: dt.datetime) -> float:
    return round(100_000 * (1 - 0.05 * _ramp(t, CRASH)) / TICK) * TICK


def _oi(t: dt.datetime) -> float:
    """Coins: slow growth from 10,000, then -12 % over the cascade."""
    return (10_000 + (t - CALM_DAY).total_seconds() / 600) * (1 - 0.12 * _ramp(t, CASCADE))


def _funding_rate(t: dt.datetime) -> float:
    return 1e-4 + 7e-4 * _ramp(t, (FUNDING_SPIKE, FUNDING_SPIKE + dt.timedelta(minutes=10)))


def _book(t: dt.datetime, exchange="binance-usdm", symbol="BTC-USDT-PERP") -> BookSnapshot:
    mid = _mid(t)
    withdrawn = WITHDRAWN[0] <= t < WITHDRAWN[1]
    sides = []
    for sign in (-1, 1):
        levels = []
        for k in OFFSETS:
            price = round(mid / TICK + sign * k) * TICK
            scale = LEFT if withdrawn and k * TICK / mid < 0.03 else 1.0
            levels.append([f"{price:.1f}", f"{USD_PER_LEVEL * scale / price:.8f}"])
        sides.append(levels)
    return BookSnapshot(exchange=exchange, symbol=symbol, symbol_native="BTCUSDT", ts_exchange=_ms(t),
                        ts_recv=_ms(t) * 1_000_000, bids=sides[0], asks=sides[1], seq=_ms(t), reason="periodic")


def _liquidation(t: dt.datetime, usd: float, long: bool) -> Liquidation:
    price = _mid(t)
    return Liquidation(exchange="binance-usdm", symbol="BTC-USDT-PERP", symbol_native="BTCUSDT", ts_exchange=_ms(t),
                       ts_recv=_ms(t) * 1_000_000, order_side="sell" if long else "buy",
                       liquidated_position="long" if long else "short", price=f"{price:.1f}", avg_price=f"{price:.1f}",
                       qty=f"{usd / price:.8f}", qty_unit="base", order_status="FILLED", is_sampled=True)


def synthetic_market() -> list:
    """Two days of BTC on one venue: a calm day, then a day with a withdrawal from 12:02, a long
    cascade 12:06-12:26 (one $50k forced sell per second, price -5 %, OI -12 %) and a $1M short
    cluster at 16:00 that is too small to be a cascade."""
    items, common = [], {"exchange": "binance-usdm", "symbol": "BTC-USDT-PERP", "symbol_native": "BTCUSDT"}
    for second in range(0, 2 * 86_400, 10):
        t = CALM_DAY + dt.timedelta(seconds=second)
        ts = {"ts_exchange": _ms(t), "ts_recv": _ms(t) * 1_000_000}
        if second % 20 == 0:
            items.append(_book(t))
        items.append(Trade(**common, **ts, trade_id=str(second), price=f"{_mid(t):.1f}", qty="0.1", qty_unit="base",
                           side="buy" if second % 20 else "sell", is_aggregated=True, first_trade_id=second,
                           last_trade_id=second))
        items.append(Funding(**common, **ts, rate=f"{_funding_rate(t):.8f}", interval_hours=8, next_funding_time=None,
                             mark_price=f"{_mid(t):.1f}", index_price=f"{_mid(t):.1f}", is_realised=False))
        if second % 60 == 0:
            items.append(OpenInterest(**common, **ts, open_interest=f"{_oi(t):.3f}", qty_unit="base"))
        if second % 1800 == 0:
            items.append(_liquidation(t, 5_000, long=bool(second % 3600)))
    for second in range(int((CASCADE[1] - CASCADE[0]).total_seconds())):
        items.append(_liquidation(CASCADE[0] + dt.timedelta(seconds=second, milliseconds=500), 50_000, long=True))
    for second in range(10):
        items.append(_liquidation(DAY + dt.timedelta(hours=16, seconds=second), 100_000, long=False))
    return items


def _warehouse(tmp_path, items) -> dict:
    warehouse = Warehouse(tmp_path / "w.duckdb", tmp_path / "r.duckdb")
    with warehouse.writer() as con:
        con.execute("BEGIN")
        insert_records(con, items)
        con.execute("COMMIT")
    return {"warehouse": WarehouseResource(database=str(warehouse.path), replica=str(warehouse.replica_path))}


def _materialize(resources, assets=MICROSTRUCTURE_ASSETS, *, partition=None, first=None, last=None):
    tags = {"dagster/asset_partition_range_start": first, "dagster/asset_partition_range_end": last} if first else None
    result = dg.materialize([*RAW, ohlcv_1m.to_source_asset(), *MICROSTRUCTURE_ASSETS], selection=assets,
                            resources=resources, partition_key=partition, tags=tags, run_config=QUIET)
    assert result.success
    return result


def _query(resources, sql, params=None):
    with resources["warehouse"].get().writer() as con:
        return con.execute(sql, params or []).fetchall()


@pytest.fixture(scope="module")
def market(tmp_path_factory):
    """The synthetic market, all microstructure assets materialized for both days in one run."""
    resources = _warehouse(tmp_path_factory.mktemp("market"), synthetic_market())
    result = _materialize(resources, first=f"{CALM_DAY:%Y-%m-%d}", last=f"{DAY:%Y-%m-%d}")
    return resources, result


def test_definitions_register_daily_assets_job_and_schedule():
    dg.Definitions.validate_loadable(defs)
    keys = {k.to_user_string() for k in defs.resolve_asset_graph().get_all_asset_keys()}
    assert {f"analytics/{t}" for t in TABLES} | {"lake/daily_export"} <= keys
    job = defs.resolve_job_def(daily_snapshot_job.name)
    assert {k.to_user_string() for k in job.asset_layer.selected_asset_keys} == \
        {"/".join(k) for k in DAILY_ASSETS} | {"lake/daily_export"}
    assert all(a.op.pool == "duckdb_writer" for a in [*MICROSTRUCTURE_ASSETS, lake_export])
    tick = dt.datetime(2026, 3, 2, 0, 15, tzinfo=dt.UTC)
    request = daily_snapshot_schedule(dg.build_schedule_context(scheduled_execution_time=tick))
    assert request.partition_key == "2026-03-01" and daily_snapshot_schedule.cron_schedule == "15 0 * * *"
    assert daily_snapshot_schedule.execution_timezone == "UTC"


# --- analytics.md toy vectors -------------------------------------------------------------------

TOY_DAY = dt.datetime(2025, 10, 1)
# §7: OI {10, 5, 3, 2} $bn with 8 h rates {1, 1.5, -0.5, 2} bp -> 1.0 bp per 8 h, 10.95 % a year.
# v4 settles hourly, so it quotes 2 bp / 8 and must be normalised first.
TOY_VENUES = {"v1": (10e9, "0.00010000", 8), "v2": (5e9, "0.00015000", 8), "v3": (3e9, "-0.00005000", 8),
              "v4": (2e9, "0.00002500", 1)}


def toy_records() -> list:
    t = TOY_DAY + dt.timedelta(hours=1)
    items = [BookSnapshot(exchange="v1", symbol="TOY-USDT-PERP", symbol_native="TOYUSDT", ts_exchange=_ms(t),
                          ts_recv=_ms(t) * 1_000_000,
                          bids=[["99.5", "2"], ["99.0", "3"], ["98.0", "5"], ["97.9", "10"]],
                          asks=[["100.5", "1"], ["101.0", "4"], ["102.0", "6"], ["102.1", "8"]], seq=1,
                          reason="periodic"),
             # A book carries no unit: its market's instrument says the levels are base units.
             Instrument(exchange="v1", symbol="TOY-USDT-PERP", symbol_native="TOYUSDT", ts_exchange=_ms(TOY_DAY),
                        ts_recv=_ms(TOY_DAY) * 1_000_000, market_type="perpetual", margin="linear", base_asset="TOY",
                        quote_asset="USDT", settle_asset="USDT", qty_unit="base", contract_size=None,
                        contract_size_unit=None, tick_size="0.1", lot_size="1", funding_interval_hours=8, expiry=None,
                        status="TRADING")]
    for exchange, (oi_usd, rate, interval) in TOY_VENUES.items():
        common = {"exchange": exchange, "symbol": "BTC-USDT-PERP", "symbol_native": "BTCUSDT"}
        for minute in range(0, 120):
            t = TOY_DAY + dt.timedelta(minutes=minute)
            ts = {"ts_exchange": _ms(t), "ts_recv": _ms(t) * 1_000_000}
            # Mark 100k, so OI coins = USD / 1e5; the hour 00:xx holds 1 % less than 01:xx.
            coins = oi_usd / 1e5 * (0.99 if minute < 60 else 1.0)
            items.append(Funding(**common, **ts, rate=rate, interval_hours=interval, next_funding_time=None,
                                 mark_price="100000", index_price="100000", is_realised=False))
            items.append(OpenInterest(**common, ts_exchange=_ms(t) + 1, ts_recv=ts["ts_recv"],
                                      open_interest=f"{coins:.3f}", qty_unit="base"))
    return items


def test_toy_vectors_depth_open_interest_and_funding(tmp_path):
    resources = _warehouse(tmp_path, toy_records())
    book_depth, _, open_interest, funding = MICROSTRUCTURE_ASSETS[:4]
    result = _materialize(resources, [book_depth, open_interest, funding], partition=f"{TOY_DAY:%Y-%m-%d}")
    assert all(c.passed for c in result.get_asset_check_evaluations())

    [row] = _query(resources, "SELECT mid_last, spread_bps_last, bid_base_1_last, bid_usd_1_last, ask_base_1_last, "
                              "ask_usd_1_last, bid_base_2_last, bid_usd_2_last, ask_base_2_last, ask_usd_2_last, "
                              "imbalance_2_last, depth_usd_2_last, n_snapshots, n_valid FROM analytics.book_depth")
    assert row[:12] == pytest.approx((100.0, 100.0, 5, 496.0, 5, 504.5, 10, 986.0, 11, 1116.5, -0.0620690,
                                      986.0 + 1116.5), abs=5e-8)
    assert row[12:] == (1, 1)

    totals = dict(_query(resources, "SELECT bucket_start, open_interest_usd FROM analytics.open_interest "
                                    "WHERE exchange = 'all' AND grain = '1h'"))
    assert totals[TOY_DAY + dt.timedelta(hours=1)] == pytest.approx(20e9)
    [(coins, usd, mark, change_1h, usd_change_1h, change_5m, n_venues)] = _query(
        resources, "SELECT open_interest, open_interest_usd, mark_price, oi_change_pct_1h, oi_usd_change_pct_1h, "
                   "oi_change_pct_5m, n_venues FROM analytics.open_interest WHERE exchange = 'v1' AND grain = '5m' "
                   "AND bucket_start = ?", [TOY_DAY + dt.timedelta(hours=1)])
    assert (coins, usd, mark, n_venues) == pytest.approx((100_000, 10e9, 100_000, 1))
    assert change_1h == pytest.approx(100 / 99 * 100 - 100) and usd_change_1h == pytest.approx(change_1h)
    assert change_5m == pytest.approx(change_1h)   # the step happened in the last 5 minutes
    hourly = _query(resources, "SELECT bucket_start, oi_change_pct_5m, oi_change_pct_24h FROM analytics.open_interest "
                               "WHERE exchange = 'all' AND grain = '1h' ORDER BY 1")
    assert [h[0].hour for h in hourly] == [0, 1]
    assert hourly[1][1] == pytest.approx(0.0) and hourly[1][2] is None   # no bucket a day back

    [(rate_8h, annualized, weight, n)] = _query(
        resources, "SELECT rate_8h, rate_annualized, oi_usd, n_venues FROM analytics.funding "
                   "WHERE exchange = 'all' AND minute = ?", [TOY_DAY + dt.timedelta(minutes=90)])
    assert (rate_8h, annualized, weight, n) == pytest.approx((1.0e-4, 0.1095, 20e9, 4))
    [(v4_rate, v4_8h, v4_interval)] = _query(resources, "SELECT funding_rate, rate_8h, interval_hours FROM "
                                                        "analytics.funding WHERE exchange = 'v4' AND minute = ?",
                                             [TOY_DAY + dt.timedelta(minutes=90)])
    assert (v4_rate, v4_8h, v4_interval) == pytest.approx((2.5e-5, 2e-4, 1))


# --- the synthetic market -----------------------------------------------------------------------

def test_every_check_passes_and_rows_are_written(market):
    resources, result = market
    checks = result.get_asset_check_evaluations()
    declared = {(spec.asset_key, spec.name) for asset in MICROSTRUCTURE_ASSETS for spec in asset.check_specs}
    assert len(declared) >= 28
    assert {(c.asset_key, c.check_name) for c in checks} == declared
    assert all(c.passed for c in checks), [c.check_name for c in checks if not c.passed]
    counts = dict(_query(resources, " UNION ALL ".join(f"SELECT '{t}', count(*) FROM analytics.{t}" for t in TABLES)))
    assert counts["book_depth"] == 2 * 1440 and counts["market_stress"] == 2 * 1440
    # No cross-venue funding before the first OI bucket closes at 00:05 of the first day.
    assert counts["funding"] == 2 * 1440 + 2 * 1440 - 4 and counts["open_interest"] == 2 * 2 * (288 + 24)
    assert counts["liquidation_cascades"] == 1 and counts["liquidity_withdrawals"] == 1


# Materialization metadata keys users' dashboards and alerts read: pinned, so a refactor cannot drop one.
METADATA_KEYS = {
    "book_depth": {"dagster/row_count", "preview", "depth_2pct"},
    "liquidity_withdrawals": {"dagster/row_count", "preview", "threshold", "depth_2pct_with_withdrawals"},
    "open_interest": {"dagster/row_count", "preview", "open_interest_and_price"},
    "funding": {"dagster/row_count", "preview", "funding_annualized_pct"},
    "liquidations_1m": {"dagster/row_count", "largest_minutes"},
    "liquidation_cascades": {"dagster/row_count", "preview", "liquidations_with_cascades"},
    "market_stress": {"dagster/row_count", "most_stressed_minutes", "cascade_lead_minutes", "lead_threshold",
                      "stress_index"},
    "adl_events": {"dagster/row_count", "first_events"},
    "aggregated_open_interest": {"dagster/row_count", "preview"},
    "aggregated_funding": {"dagster/row_count", "preview", "open_interest_by_venue_and_funding"},
    "taker_volume": {"dagster/row_count", "preview"},
    "basis": {"dagster/row_count", "preview"},   # one venue: no dislocation, so no picture of it
    "slippage": {"dagster/row_count", "preview", "slippage_curves"},
}


def test_materializations_carry_their_metadata_for_every_partition(market):
    _, result = market
    found: dict[str, list] = {}
    for event in result.get_asset_materialization_events():
        materialization = event.event_specific_data.materialization
        found.setdefault(materialization.asset_key.path[-1], []).append(
            (materialization.partition, set(materialization.metadata)))
    days = [f"{CALM_DAY:%Y-%m-%d}", f"{DAY:%Y-%m-%d}"]
    assert found == {table: [(day, keys) for day in days] for table, keys in METADATA_KEYS.items()}


def test_book_depth_minutes(market):
    resources, _ = market
    rows = _query(resources, "SELECT minute, n_snapshots, n_valid, mid_last, bid_usd_2_mean, depth_usd_2_min, "
                             "depth_usd_10_mean, spread_bps_max FROM analytics.book_depth "
                             "WHERE minute IN (?, ?) ORDER BY minute", [DAY, WITHDRAWN[0]])
    in_2pct = int(sum(k * TICK / 100_000 <= 0.02 for k in OFFSETS))
    calm, withdrawn = rows
    assert calm[1:4] == (3, 3, 100_000.0)
    assert calm[4] == pytest.approx(in_2pct * USD_PER_LEVEL, rel=1e-6)
    assert calm[5] == pytest.approx(2 * in_2pct * USD_PER_LEVEL, rel=1e-6)
    assert calm[6] == pytest.approx(2 * len(OFFSETS) * USD_PER_LEVEL, rel=1e-6)
    assert calm[7] == pytest.approx(2 * TICK / 100_000 * 1e4)
    assert withdrawn[5] == pytest.approx(LEFT * calm[5], rel=1e-6)


def test_liquidations_per_minute(market):
    resources, _ = market
    rows = dict((r[0], r[1:]) for r in _query(
        resources, "SELECT minute, long_usd, short_usd, n_long, n_short, is_lower_bound FROM analytics.liquidations_1m "
                   "WHERE day = ?", [DAY.date()]))
    assert rows[CASCADE[0]] == pytest.approx((60 * 50_000, 0, 60, 0, True), rel=1e-6)
    # the $1M short cluster plus the calm day's half-hourly $5k short at 16:00:00
    assert rows[DAY + dt.timedelta(hours=16)] == pytest.approx((0, 1.005e6, 0, 11, True), rel=1e-6)
    assert sum(r[0] + r[1] for r in rows.values()) == pytest.approx(1200 * 50_000 + 1e6 + 48 * 5_000, rel=1e-6)


def test_withdrawal_episode_matches_the_collapse(market):
    resources, _ = market
    [(start, end, n_below, worst, baseline, open_at_end)] = _query(
        resources, "SELECT episode_start, episode_end, n_below, worst_ratio, baseline_depth_usd, open_at_day_end "
                   "FROM analytics.liquidity_withdrawals")
    assert (start, end, n_below, open_at_end) == (WITHDRAWN[0], WITHDRAWN[1], 28, False)
    assert worst == pytest.approx(LEFT, rel=0.1)


def test_cascade_is_found_with_its_metrics(market):
    resources, _ = market
    rows = _query(resources, "SELECT epoch(cascade_start), epoch(cascade_end), side, n_orders, usd, long_share, "
                             "price_move_bps, impact_bps_per_musd, depth_ratio_2pct, depth_ratio_1pct, oi_start, "
                             "oi_end, "
                             "funding_before_8h, funding_after_8h, hawkes_n, venues, is_lower_bound, threshold_usd "
                             "FROM analytics.liquidation_cascades")
    truth = [(CASCADE[0].replace(tzinfo=dt.UTC).timestamp(), CASCADE[1].replace(tzinfo=dt.UTC).timestamp())]
    match = match_windows([r[:2] for r in rows], truth)
    assert match.recall == 1.0 and match.precision == 1.0
    [(start, end, side, n, usd, long_share, move, impact, depth2, depth1, oi_start, oi_end, f_before, f_after,
      hawkes_n, venues, lower_bound, threshold)] = rows
    # Binance samples its forced orders, so the BTC floor is a tenth of the spec's $10M.
    assert (side, n, venues, lower_bound, threshold) == ("long", 1200, "binance-usdm", True, 1e6)
    assert usd == pytest.approx(60e6) and long_share == 1.0
    expected_move = (95_000 / _mid(CASCADE[0]) - 1) * 1e4     # from the last print at or before the start
    assert move == pytest.approx(expected_move) and impact == pytest.approx(-expected_move / 60)
    assert depth2 == pytest.approx(LEFT, rel=0.1) and depth1 == pytest.approx(LEFT, rel=0.1)
    # OI totals are known at the end of their 5-minute bucket: 12:00-12:05 before, 12:20-12:25 after.
    assert (oi_start, oi_end) == pytest.approx((_oi(CASCADE[0] - dt.timedelta(minutes=2)),
                                                _oi(CASCADE[1] - dt.timedelta(minutes=2))), abs=1e-3)
    assert (f_before, f_after) == pytest.approx((8e-4, 8e-4))
    assert 0 <= hawkes_n <= 1


def test_cascade_floor_is_lowered_only_for_sampled_feeds():
    assert cascade_thresholds("BTC", sampled=False) == thresholds_for("BTC")
    assert cascade_thresholds("BTC", sampled=True).min_usd == 1e6
    assert cascade_thresholds("eth", sampled=True).min_move == thresholds_for("ETH").min_move


def test_open_interest_changes_follow_the_definition(market):
    resources, _ = market
    bucket = DAY + dt.timedelta(hours=9, minutes=30)
    [(coins, usd, change_1h, change_24h)] = _query(
        resources, "SELECT open_interest, open_interest_usd, oi_change_pct_1h, oi_change_pct_24h FROM "
                   "analytics.open_interest WHERE exchange = 'binance-usdm' AND grain = '5m' AND bucket_start = ?",
        [bucket])
    last = bucket + dt.timedelta(minutes=4)      # the bucket's last observation
    assert coins == pytest.approx(_oi(last), abs=1e-3) and usd == pytest.approx(_oi(last) * 100_000, rel=1e-6)
    for change, window in ((change_1h, dt.timedelta(hours=1)), (change_24h, dt.timedelta(days=1))):
        assert change == pytest.approx((_oi(last) / _oi(last - window) - 1) * 100, abs=1e-5)
    [(hourly_coins, hourly_change)] = _query(
        resources, "SELECT open_interest, oi_change_pct_1h FROM analytics.open_interest WHERE exchange = 'all' "
                   "AND grain = '1h' AND bucket_start = ?", [DAY + dt.timedelta(hours=9)])
    assert hourly_coins == pytest.approx(_oi(DAY + dt.timedelta(hours=9, minutes=59)), abs=1e-3)
    assert hourly_change == pytest.approx((_oi(DAY + dt.timedelta(hours=9, minutes=59))
                                           / _oi(DAY + dt.timedelta(hours=8, minutes=59)) - 1) * 100, abs=1e-5)


def test_stress_rises_before_and_during_the_cascade(market):
    resources, result = market
    rows = dict(_query(resources, "SELECT minute, stress_index FROM analytics.market_stress WHERE day = ?",
                       [DAY.date()]))
    calm = [v for m, v in rows.items() if m < FUNDING_SPIKE and v is not None]
    assert len(calm) == 11 * 60 + 50 and max(calm) < 10
    # One book, so the depth component stands on it wherever it is defined, and says so.
    books = _query(resources, "SELECT DISTINCT depth_books, depth_book_names FROM analytics.market_stress "
                              "WHERE day = ? AND depth_component IS NOT NULL", [DAY.date()])
    assert books == [(1, "binance-usdm/BTC-USDT-PERP")]
    assert all(rows[CASCADE[0] + dt.timedelta(minutes=m)] > 80 for m in range(20))
    *_, event = [e.event_specific_data.materialization for e in result.get_asset_materialization_events()
                 if e.asset_key.to_user_string() == "analytics/market_stress"]
    [lead] = event.metadata["cascade_lead_minutes"].value
    # Depth withdrawn at 12:02 plus crowded funding put the index at 50 when that minute closed,
    # three minutes before the first forced order.
    assert lead["lead_minutes"] == pytest.approx(3.0, abs=0.02)


def _table_digest(resources, table: str) -> str:
    rows = _query(resources, f"SELECT * FROM analytics.{table} ORDER BY ALL")
    return hashlib.sha256(repr(rows).encode()).hexdigest()


def test_partition_rewrite_is_idempotent(market):
    resources, _ = market
    before = {t: _table_digest(resources, t) for t in TABLES}
    _materialize(resources, partition=f"{DAY:%Y-%m-%d}")
    assert {t: _table_digest(resources, t) for t in TABLES} == before


def test_lake_export_writes_one_parquet_file_per_table_and_day(market, tmp_path):
    resources, _ = market
    lake = LakeResource(path=str(tmp_path / "lake"))
    assets = [*RAW, *(dg.AssetSpec(k) for k in DAILY_ASSETS), lake_export]
    for _ in range(2):   # a rerun replaces the day's directory
        result = dg.materialize(assets, selection=[lake_export], resources={**resources, "lake": lake},
                                partition_key=f"{DAY:%Y-%m-%d}", run_config=QUIET)
        assert result.success
    for key in DAILY_ASSETS:
        files = list((tmp_path / "lake" / key[-1]).rglob("*"))
        assert [f.relative_to(tmp_path / "lake" / key[-1]).as_posix() for f in files if f.is_file()] == \
            [f"date={DAY:%Y-%m-%d}/part-0.parquet"]
    in_lake = duckdb.connect().execute(f"SELECT count(*) FROM '{tmp_path}/lake/book_depth/*/*.parquet'").fetchone()[0]
    assert in_lake == 1440
    with resources["warehouse"].get().reader() as con:
        assert con.execute("SELECT count(*) FROM analytics.liquidation_cascades").fetchone()[0] == 1


def test_backfill_command_materializes_each_day(market, tmp_path, monkeypatch):
    resources, _ = market
    home = tmp_path / "home"
    home.mkdir()
    with resources["warehouse"].get().writer() as con:
        con.execute(f"ATTACH '{home / 'warehouse.duckdb'}' AS copy")
        con.execute("COPY FROM DATABASE w TO copy")
        con.execute("DETACH copy")
    monkeypatch.setenv("PERPFLOW_HOME", str(home))
    from pipelines.backfill_cli import backfill

    result = CliRunner().invoke(backfill, ["--from", f"{CALM_DAY:%Y-%m-%d}", "--to", f"{DAY:%Y-%m-%d}",
                                           "--assets", "liquidations_1m"])
    assert result.exit_code == 0, result.output
    assert f"{CALM_DAY:%Y-%m-%d}" in result.output and f"{DAY:%Y-%m-%d}" in result.output
    counts = duckdb.connect(str(home / "warehouse.duckdb"), read_only=True).execute(
        "SELECT day, count(*) FROM analytics.liquidations_1m GROUP BY day ORDER BY day").fetchall()
    assert counts == _query(resources, "SELECT day, count(*) FROM analytics.liquidations_1m GROUP BY day ORDER BY day")
    assert [c[0] for c in counts] == [CALM_DAY.date(), DAY.date()]


def test_withdrawal_threshold_is_configurable(market):
    resources, _ = market
    withdrawals = MICROSTRUCTURE_ASSETS[1]
    for threshold, episodes in ((LEFT * 0.8, 0), (0.1, 1)):   # 5 % of depth left is not below 4 %
        config = {**QUIET, "ops": {"analytics__liquidity_withdrawals": {"config": {"threshold": threshold}}}}
        result = dg.materialize([*RAW, ohlcv_1m.to_source_asset(), *MICROSTRUCTURE_ASSETS], selection=[withdrawals],
                                resources=resources, partition_key=f"{DAY:%Y-%m-%d}", run_config=config)
        [event] = result.get_asset_materialization_events()
        assert event.event_specific_data.materialization.metadata["threshold"].value == threshold
        assert _query(resources, "SELECT count(*), max(threshold) FROM analytics.liquidity_withdrawals "
                                 "WHERE day = ?", [DAY.date()]) == [(episodes, threshold if episodes else None)]
