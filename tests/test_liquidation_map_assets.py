"""The liquidation-map assets on a real DuckDB file: analytics.liquidation_levels,
liquidation_level_scores and cross_venue_cascades, and the varying-baseline Hawkes fit of
liquidation_cascades, on two days of BTC on two venues (Bybit, complete liquidation feed, and
Binance, sampled) with one long cascade in which Bybit's price moves 20 s before Binance's."""

from __future__ import annotations

import base64
import datetime as dt
import math
import warnings

import dagster as dg
import numpy as np
import pytest

from ingest.records import Funding, Liquidation, OpenInterest, Trade
from transforms.liquidation_map import MapSnapshot, score_liquidation_map
from transforms.figures import Span
from warehouse.analytics.liquidation_map import CascadeTimeline, cascade_timelines, largest_timelines
from warehouse.loader import insert_records
from warehouse.store import Warehouse

warnings.filterwarnings("ignore", category=dg.BetaWarning)

from dagster_project.assets.microstructure import MICROSTRUCTURE_ASSETS  # noqa: E402
from dagster_project.assets.microstructure_liquidation_map import LIQUIDATION_MAP_ASSETS  # noqa: E402
from dagster_project.assets.ohlcv import ohlcv_1m  # noqa: E402
from dagster_project.resources import WarehouseResource  # noqa: E402

RAW = [dg.AssetSpec(["raw", t]) for t in ("trades", "book_snapshots", "open_interest", "funding", "liquidations",
                                           "instruments")]
QUIET = {"loggers": {"console": {"config": {"log_level": "ERROR"}}}}

CALM_DAY = dt.datetime(2025, 10, 9)
DAY = CALM_DAY + dt.timedelta(days=1)
CRASH = (DAY + dt.timedelta(hours=12, minutes=5), DAY + dt.timedelta(hours=12, minutes=25))
CASCADE = (DAY + dt.timedelta(hours=12, minutes=6), DAY + dt.timedelta(hours=12, minutes=26))
LAG_S = {"bybit-linear": 0, "binance-usdm": 20}      # Binance's price follows Bybit's by 20 s
ORDER_USD = {"bybit-linear": 150_000.0, "binance-usdm": 50_000.0}
SYMBOL = {"bybit-linear": ("BTC-USDT-PERP", "BTCUSDT"), "binance-usdm": ("BTC-USDT-PERP", "BTCUSDT")}


def _ms(t: dt.datetime) -> int:
    return int(t.replace(tzinfo=dt.UTC).timestamp() * 1000)


def _mid(t: dt.datetime, exchange: str) -> float:
    t = t - dt.timedelta(seconds=LAG_S[exchange])
    ramp = min(max((t - CRASH[0]) / (CRASH[1] - CRASH[0]), 0.0), 1.0)
    return round(100_000 * (1 - 0.05 * ramp), 1)


def _oi(t: dt.datetime) -> float:
    """Coins per venue: growth from 10,000 at 1 coin a minute, then -12 % over the cascade."""
    ramp = min(max((t - CASCADE[0]) / (CASCADE[1] - CASCADE[0]), 0.0), 1.0)
    return (10_000 + (t - CALM_DAY).total_seconds() / 60) * (1 - 0.12 * ramp)


def _liquidation(exchange: str, t: dt.datetime, usd: float) -> Liquidation:
    symbol, native = SYMBOL[exchange]
    price = _mid(t, exchange)
    return Liquidation(exchange=exchange, symbol=symbol, symbol_native=native, ts_exchange=_ms(t),
                       ts_recv=_ms(t) * 1_000_000, order_side="sell", liquidated_position="long",
                       price=f"{price:.1f}", avg_price=f"{price:.1f}", qty=f"{usd / price:.8f}", qty_unit="base",
                       order_status="FILLED", is_sampled=exchange == "binance-usdm")


def market() -> tuple[list, list[Liquidation]]:
    """Trades every 10 s (every second around the crash, so each venue's crossing is exact to the
    second), OI and funding every minute, and the cascade's forced sells: Bybit $150k every second,
    Binance $50k every other second at the same instants (ties: the Hawkes fit's β goes to its cap)."""
    items, liquidations = [], []
    dense = (CRASH[0] - dt.timedelta(minutes=10), CRASH[1] + dt.timedelta(minutes=5))
    for exchange in LAG_S:
        symbol, native = SYMBOL[exchange]
        common = {"exchange": exchange, "symbol": symbol, "symbol_native": native}
        second = 0
        while second < 2 * 86_400:
            t = CALM_DAY + dt.timedelta(seconds=second)
            ts = {"ts_exchange": _ms(t), "ts_recv": _ms(t) * 1_000_000}
            price = _mid(t, exchange)
            items.append(Trade(**common, **ts, trade_id=str(second), price=f"{price:.1f}", qty="0.5",
                               qty_unit="base", side="buy" if second % 20 else "sell", is_aggregated=True,
                               first_trade_id=second, last_trade_id=second))
            if second % 60 == 0:
                items.append(OpenInterest(**common, **ts, open_interest=f"{_oi(t):.3f}", qty_unit="base"))
                items.append(Funding(**common, **ts, rate="0.00010000", interval_hours=8, next_funding_time=None,
                                     mark_price=f"{price:.1f}", index_price=f"{price:.1f}", is_realised=False))
            second += 1 if dense[0] <= t < dense[1] else 10
    for second in range(int((CASCADE[1] - CASCADE[0]).total_seconds())):
        t = CASCADE[0] + dt.timedelta(seconds=second, milliseconds=500)
        liquidations.append(_liquidation("bybit-linear", t, ORDER_USD["bybit-linear"]))
        if second % 2 == 0:
            liquidations.append(_liquidation("binance-usdm", t, ORDER_USD["binance-usdm"]))
    return items + liquidations, liquidations


@pytest.fixture(scope="module")
def materialized(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("liqmap")
    warehouse = Warehouse(tmp / "w.duckdb", tmp / "r.duckdb")
    items, liquidations = market()
    with warehouse.writer() as con:
        con.execute("BEGIN")
        insert_records(con, items)
        con.execute("COMMIT")
    resources = {"warehouse": WarehouseResource(database=str(warehouse.path), replica=str(warehouse.replica_path))}
    everything = [ohlcv_1m, *MICROSTRUCTURE_ASSETS, *LIQUIDATION_MAP_ASSETS]
    result = dg.materialize([*RAW, *everything], selection=everything, resources=resources,
                            partition_key=f"{DAY:%Y-%m-%d}", run_config=QUIET)
    assert result.success
    return warehouse, result, liquidations


def _query(warehouse, sql, params=None):
    with warehouse.writer() as con:
        return con.execute(sql, params or []).fetchall()


def test_every_check_passes(materialized):
    _, result, _ = materialized
    checks = {(c.asset_key.to_user_string(), c.check_name): c.passed for c in result.get_asset_check_evaluations()}
    for asset in ("liquidation_levels", "liquidation_level_scores", "cross_venue_cascades", "liquidation_cascades"):
        assert any(key[0] == f"analytics/{asset}" for key in checks), asset
    assert all(checks.values()), [k for k, ok in checks.items() if not ok]


def test_map_places_the_open_interest_growth_on_the_leverage_tiers(materialized):
    warehouse, result, _ = materialized
    snapshot = DAY + dt.timedelta(hours=11)
    levels = _query(warehouse, "SELECT side, bin_lo, bin_hi, usd, mid, unplaced_usd FROM analytics.liquidation_levels "
                               "WHERE snapshot_ts = ? ORDER BY side, bin_lo", [snapshot])
    assert {mid for *_, mid, _ in levels} == {100_000.0}
    assert all(hi - lo == pytest.approx(100.0) for _, lo, hi, *_ in levels)
    # Flat price before the crash: every level sits on one of the tiers' prices, 100 000 (1 ∓ 1/L ± 0.5 %).
    long_bins = {lo for side, lo, *_ in levels if side == "long"}
    short_bins = {lo for side, lo, *_ in levels if side == "short"}
    assert long_bins == {80_500.0, 90_500.0, 96_500.0, 98_500.0, 99_500.0}
    assert short_bins == {119_500.0, 109_500.0, 103_500.0, 101_500.0, 100_500.0}
    # What is outstanding is the OI growth since the model's start (a day before the partition),
    # 2 venues x 1 coin a minute, at 100 000 (5-minute OI buckets: within two buckets' growth).
    [(first_oi, last_oi)] = _query(warehouse, "SELECT arg_min(open_interest, bucket_start), "
                                              "arg_max(open_interest, bucket_start) FROM analytics.open_interest "
                                              "WHERE exchange = 'all' AND grain = '5m' AND bucket_start <= ?",
                                   [snapshot - dt.timedelta(minutes=5)])
    placed = sum(usd for *_, usd, _, _ in levels)
    unplaced = levels[0][-1]
    assert placed + unplaced == pytest.approx((last_oi - first_oi) * 100_000, rel=0.01)
    # Taker flow is 1 sell in 2 every 20 s: a quarter buys... the long share is the buy share.
    long_usd = sum(usd for side, _, _, usd, *_ in levels if side == "long")
    buys = _query(warehouse, "SELECT sum(buy_volume) / sum(volume) FROM analytics.ohlcv_1m "
                             "WHERE minute < ?", [snapshot])[0][0]
    assert long_usd / placed == pytest.approx(buys, abs=0.02)
    materialization = next(m for m in result.get_asset_materialization_events()
                           if m.asset_key.to_user_string() == "analytics/liquidation_levels")
    picture = materialization.materialization.metadata["heatmap_BTC"]
    assert "data:image/png;base64," in picture.value


def _stored_snapshots(warehouse) -> list[MapSnapshot]:
    rows = _query(warehouse, "SELECT epoch(snapshot_ts), mid, bin_lo, bin_hi - bin_lo, side, usd, "
                             "modeled_liquidated_usd, unplaced_usd FROM analytics.liquidation_levels "
                             "ORDER BY 1, 3")
    out = []
    for ts in sorted({r[0] for r in rows}):
        mine = [r for r in rows if r[0] == ts]
        edges = np.array(sorted({r[2] for r in mine}))
        long_usd, short_usd = np.zeros(edges.size), np.zeros(edges.size)
        for r in mine:
            (long_usd if r[4] == "long" else short_usd)[np.searchsorted(edges, r[2])] += r[5]
        out.append(MapSnapshot(ts, mine[0][1], mine[0][3], edges, long_usd, short_usd, mine[0][6], mine[0][7]))
    return out


def test_score_equals_a_direct_computation_and_is_labelled_sampled(materialized):
    warehouse, _, liquidations = materialized
    scores = {r[0]: r[1:] for r in _query(
        warehouse, "SELECT venue_set, score, ci_low, ci_high, baseline, n_scored, realized_usd, is_sampled_feed, "
                   "realized_venues, coverage_note FROM analytics.liquidation_level_scores")}
    assert set(scores) == {"all", "complete_feeds"}
    candles = np.array(_query(warehouse, "SELECT epoch(minute), max(high), min(low) FROM analytics.ohlcv_1m "
                                         "WHERE minute >= ? GROUP BY 1 ORDER BY 1", [DAY])).T
    snapshots = _stored_snapshots(warehouse)
    for venue_set, venues in (("all", set(LAG_S)), ("complete_feeds", {"bybit-linear"})):
        chosen = [liq for liq in liquidations if liq.exchange in venues]
        direct = score_liquidation_map(
            snapshots, (np.array([liq.ts_exchange / 1000 for liq in chosen]),
                        np.array([float(liq.avg_price) for liq in chosen]),
                        np.array([float(liq.qty) * float(liq.avg_price) for liq in chosen])),
            (candles[0], candles[1], candles[2]))
        score, low, high, baseline, n_scored, realized, sampled, realized_venues, note = scores[venue_set]
        assert 0 <= low <= score <= high <= 1
        assert (score, low, high, n_scored) == pytest.approx((direct.score, direct.ci_low, direct.ci_high,
                                                              direct.n_scored))
        assert realized == pytest.approx(sum(float(liq.qty) * float(liq.avg_price) for liq in chosen), rel=1e-9)
        assert baseline == 0.25 and n_scored == 12     # snapshots 00:00 ... 11:00 see the 12:06 cascade
        assert sampled == (venue_set == "all") and set(realized_venues.split(",")) == venues
        assert ("binance-usdm: sampled" in note) == (venue_set == "all")


def test_cross_venue_episode_shares_first_mover_and_stress(materialized):
    warehouse, _, liquidations = materialized
    rows = _query(warehouse, "SELECT exchange, venue_usd, venue_share, is_first_mover, first_mover, lead_s, "
                             "epoch(threshold_crossing), crossing_after_first_s, liquidation_coverage, stress_max, "
                             "epoch(cascade_start), epoch(cascade_end), move_bps FROM analytics.cross_venue_cascades "
                             "ORDER BY exchange")
    assert [r[0] for r in rows] == ["binance-usdm", "bybit-linear"]
    venue_usd = {e: sum(float(liq.qty) * float(liq.avg_price) for liq in liquidations if liq.exchange == e)
                 for e in LAG_S}
    total = sum(venue_usd.values())
    for exchange, usd, share, *_ in rows:
        assert usd == pytest.approx(venue_usd[exchange]) and share == pytest.approx(venue_usd[exchange] / total)
    assert sum(r[2] for r in rows) == pytest.approx(1.0)
    binance, bybit = rows
    # The first mover is the venue whose price crosses the 1 % threshold first: Bybit, 20 s ahead.
    assert bybit[3] and not binance[3] and bybit[4] == binance[4] == "bybit-linear"
    assert bybit[6] < binance[6] and binance[7] == pytest.approx(binance[6] - bybit[6]) == pytest.approx(20.0)
    assert bybit[5] == pytest.approx(20.0) and bybit[7] == 0.0
    assert (binance[8], bybit[8]) == ("sampled", "complete")
    assert binance[12] == pytest.approx(-500.0, abs=1) and bybit[12] == pytest.approx(-500.0, abs=1)
    [(stress_max,)] = _query(warehouse, "SELECT max(stress_index) FROM analytics.market_stress WHERE asset = 'BTC' "
                                        "AND epoch(minute) BETWEEN ? AND ?", [bybit[10] - 60, bybit[11]])
    assert bybit[9] == stress_max and (stress_max is None or 0 <= stress_max <= 100)


def test_cross_venue_cascade_timeline_is_the_assets_picture(materialized):
    warehouse, result, _ = materialized
    materialization = next(m for m in result.get_asset_materialization_events()
                           if m.asset_key.to_user_string() == "analytics/cross_venue_cascades")
    metadata = materialization.materialization.metadata
    [(start, side)] = _query(warehouse, "SELECT DISTINCT cascade_start, side FROM analytics.cross_venue_cascades")
    picture = metadata[f"timeline_BTC_{side}_{start:%Y%m%dT%H%M}"].value
    png = base64.b64decode(picture.split("data:image/png;base64,")[1].rstrip(")"))
    assert png[:8] == b"\x89PNG\r\n\x1a\n" and len(png) > 10_000
    with warehouse.writer() as con:
        [timeline] = cascade_timelines(con, DAY, DAY + dt.timedelta(days=1))
    assert sorted(timeline.venues) == ["binance-usdm", "bybit-linear"] and timeline.first_mover == "bybit-linear"
    # Per minute of the cascade, each venue's bars hold its own forced sells; prices are 10 s trade prices.
    bybit = timeline.venues["bybit-linear"]
    assert bybit.liquidated_usd.values.sum() == pytest.approx(
        _query(warehouse, "SELECT sum(long_usd) FROM analytics.liquidations_1m WHERE exchange = 'bybit-linear'")[0][0])
    assert np.all(np.diff(bybit.price.ts).astype(int) >= 10) and bybit.price.values.min() < 96_000
    crossing = _query(warehouse, "SELECT threshold_crossing FROM analytics.cross_venue_cascades "
                                 "WHERE exchange = 'bybit-linear'")[0][0]
    assert bybit.threshold_crossing == np.datetime64(crossing, "s")


def test_the_asset_draws_the_largest_long_and_short_episode_of_each_asset():
    def episode(asset, side, minute, usd):
        start = np.datetime64("2025-10-10T21:00", "s") + np.timedelta64(minute, "m")
        return CascadeTimeline(f"{asset}{side}{minute}", asset, side, usd, "", {}, None, Span(start, start))

    episodes = [episode("BTC", "long", 0, 5e6), episode("BTC", "long", 9, 7e6), episode("BTC", "short", 3, 1e6),
                episode("ETH", "long", 1, 2e6), episode("ETH", "long", 4, 2e6), episode("BTC", "long", 20, 6e6)]
    assert [t.key for t in largest_timelines(episodes)] == ["ETHlong1", "BTCshort3", "BTClong9"]
    assert largest_timelines([]) == []


def test_cascade_endogeneity_is_the_varying_baseline_fit_and_flags_its_bound(materialized):
    warehouse, _, _ = materialized
    [(n, endogenous, at_bound, reason, beta, bin_s)] = _query(
        warehouse, "SELECT hawkes_n, hawkes_endogenous_share, hawkes_at_bound, hawkes_reason, hawkes_beta, "
                   "hawkes_baseline_bin_s FROM analytics.liquidation_cascades")
    assert reason is None and 0 <= n <= 0.999 and 0 <= endogenous <= 1
    # Every Binance order ties a Bybit order to the millisecond: an infinitely fast kernel fits the
    # ties best, so β sits at its cap and the row says so.
    assert at_bound is True and beta > 100
    assert bin_s is None or bin_s in (60.0, 120.0, 300.0, 600.0, 1800.0)
    assert not math.isnan(n)


def test_demo_summary_names_the_first_mover_and_the_score(materialized):
    from rich.console import Console

    from pipelines.demo import _cross_venue_summary

    warehouse, _, _ = materialized
    console = Console(record=True, width=200)
    with warehouse.writer() as con:
        _cross_venue_summary(con, console)
    text = console.export_text()
    assert ("cross-venue BTC long cascade at 12:06:00: bybit-linear moved first (20 s ahead; crossings "
            "bybit-linear +0 s, binance-usdm +20 s)") in text
    assert "binance-usdm 14.3 %" in text and "bybit-linear 85.7 %" in text
    assert "liquidation map BTC, all venues: top-quartile share" in text
    assert "(on a sampled liquidation feed)" in text.split("all venues")[1].splitlines()[0]
    assert "liquidation map BTC, complete liquidation feeds only: top-quartile share" in text
