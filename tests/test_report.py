"""`perpflow report`: the figure functions (data in, PNG out), the HTML page built from a real
warehouse (the demo's shipped history through the quant assets, plus a cascade's analytics rows
written into the same file), its self-containedness, and the CLI's errors on missing/empty input."""

from __future__ import annotations

import base64
import datetime as dt
import io
import os
import re
import subprocess
import sys
import warnings
from pathlib import Path

import dagster as dg
import numpy as np
import pytest
from matplotlib import image
from rich.console import Console

from pipelines import demo_quant
from pipelines.report import STRESS_THRESHOLDS, write_report
from transforms import figures
from transforms.figures import EquityCurve, LevelsChart, PriceLevel, Span, TimeSeries
from warehouse.store import Warehouse

warnings.filterwarnings("ignore", category=dg.BetaWarning)

from dagster_project.resources import WarehouseResource  # noqa: E402

FIGURE_IDS = {"cascade-btc", "cascade-eth", "cross-venue-btc", "stress-index", "open-interest", "levels",
              "signal-equity"}
TRIGGER = dt.datetime(2025, 10, 10, 20, 50)


def decode_png(png: bytes) -> np.ndarray:
    assert png[:8] == b"\x89PNG\r\n\x1a\n"
    pixels = image.imread(io.BytesIO(png), format="png")
    assert pixels.ndim == 3 and pixels.shape[0] > 100 and pixels.shape[1] > 100
    return pixels


def minutes(n: int, start: dt.datetime = TRIGGER - dt.timedelta(minutes=30)) -> np.ndarray:
    return np.datetime64(start, "ms") + np.arange(n) * np.timedelta64(60_000, "ms")


def test_every_figure_renders_with_data_and_without():
    ts = minutes(90)
    price = TimeSeries(ts, 120_000 - np.r_[np.zeros(30), np.linspace(0, 15_000, 60)])
    depth = TimeSeries(ts, np.r_[np.full(30, 40e6), np.full(60, 4e6)])
    liquidated = TimeSeries(ts, np.r_[np.zeros(30), np.full(60, 2e6)])
    span = Span(ts[30], ts[60])
    with_data = figures.cascade_price_depth_liquidations("BTC", price, depth, liquidated, TimeSeries(ts, np.zeros(90)),
                                                         cascades=[span])
    without = figures.cascade_price_depth_liquidations("BTC", price, None, None, None)
    assert decode_png(with_data).shape[0] == decode_png(without).shape[0]   # three panels either way
    assert with_data != without
    stress = figures.stress_index("stress", {"BTC": TimeSeries(ts, np.linspace(0, 90, 90))}, STRESS_THRESHOLDS)
    null_stress = figures.stress_index("stress", {"BTC": TimeSeries(ts, np.full(90, np.nan))}, STRESS_THRESHOLDS,
                                       missing="baselines not warm")
    assert stress != null_stress
    oi = figures.open_interest_by_venue("OI", {"BTC": {"binance-usdm": TimeSeries(ts, np.full(90, 9e9)),
                                                       "okx-swap": TimeSeries(ts, np.full(90, 4e9))},
                                               "ETH": {"binance-usdm": TimeSeries(ts, np.full(90, 6e9))}})
    assert decode_png(oi).shape[0] > decode_png(figures.open_interest_by_venue("OI", {})).shape[0]   # 2 panels vs 1
    levels = figures.levels_on_price("levels", {"BTC": LevelsChart(price, [
        PriceLevel("S1", 100_000.0, "support", 80.0), PriceLevel("R1", 125_000.0, "resistance", 40.0),
        PriceLevel("P", 110_000.0, "support", None)], "2025-10-10")})
    equity = figures.signal_equity_vs_holding("equity", {"daily": {"BTC": EquityCurve(ts, np.linspace(1, 2, 90),
                                                                                      np.linspace(1, 0.5, 90))},
                                                         "hourly": {}})
    for png in (stress, null_stress, levels, equity):
        decode_png(png)


def test_cross_venue_cascade_timeline_renders_one_row_per_venue():
    ts = minutes(30)
    seconds = np.datetime64(ts[0], "s") + np.arange(180) * np.timedelta64(10, "s")
    price = 120_000 - np.r_[np.zeros(60), np.linspace(0, 6_000, 120)]
    venues = {"bybit-linear": figures.VenueTimeline(TimeSeries(ts, np.r_[np.zeros(10), np.full(20, 3e6)]),
                                                    TimeSeries(seconds, price), np.datetime64(seconds[70])),
              "binance-usdm": figures.VenueTimeline(TimeSeries(ts, np.r_[np.zeros(12), np.full(18, 1e6)]),
                                                    TimeSeries(seconds, np.roll(price, 2)), np.datetime64(seconds[72]))}
    span = Span(ts[10], ts[29])
    two = figures.cross_venue_cascade_timeline("BTC longs", venues, "bybit-linear", span)
    one = figures.cross_venue_cascade_timeline("BTC longs", {"bybit-linear": venues["bybit-linear"]},
                                               "bybit-linear", span)
    assert decode_png(two).shape[0] > decode_png(one).shape[0]        # a row per venue
    assert figures.cross_venue_cascade_timeline("BTC longs", venues, "binance-usdm", span) != two  # first mover marked
    empty = figures.VenueTimeline(TimeSeries(ts[:0], np.empty(0)), TimeSeries(ts[:0], np.empty(0)),
                                  np.datetime64("NaT", "s"))
    decode_png(figures.cross_venue_cascade_timeline("BTC longs", {"okx-swap": empty}, None, span))


@pytest.fixture(scope="module")
def warehouse(tmp_path_factory) -> Warehouse:
    """The demo's quant state, plus a small cascade written into the microstructure tables."""
    home = tmp_path_factory.mktemp("report")
    warehouse = Warehouse(home / "warehouse.duckdb", home / "warehouse_ro.duckdb")
    resources = {"warehouse": WarehouseResource(database=str(warehouse.path), replica=str(warehouse.replica_path),
                                                replica_min_interval_s=0)}
    demo_quant.run_quant(dg, None, resources, None, warehouse, Console(file=open(os.devnull, "w")),
                         days=("2025-10-21", "2025-10-22"))
    start = TRIGGER - dt.timedelta(minutes=30)
    with warehouse.writer() as con:
        for exchange, symbol, depth_minutes in (("binance-usdm", "BTC-USDT-PERP", 90), ("okx-swap", "BTC-USDT-SWAP", 20),
                                                ("binance-usdm", "ETH-USDT-PERP", 90)):
            con.execute("""INSERT INTO analytics.ohlcv_1m (exchange, symbol, minute, open, high, low, close, day)
                           SELECT ?, ?, ? + to_minutes(i), 100 - i * 0.1, 100, 90, 100 - i * 0.1, DATE '2025-10-10'
                           FROM range(90) t(i)""", [exchange, symbol, start])
            con.execute("""INSERT INTO analytics.book_depth (exchange, symbol, minute, n_snapshots, n_valid,
                                                             quote_usd_rate, depth_usd_2_mean, day)
                           SELECT ?, ?, ? + to_minutes(i), 60, 60, 1, CASE WHEN i < 30 THEN 4e7 ELSE 4e6 END,
                                  DATE '2025-10-10' FROM range(?) t(i)""", [exchange, symbol, start, depth_minutes])
        con.execute("""INSERT INTO analytics.liquidations_1m VALUES
                       ('binance-usdm', 'BTC-USDT-PERP', 'BTC', ?, 5e6, 1e5, 50, 1, 40, 2, true, DATE '2025-10-10'),
                       ('bybit-linear', 'BTC-USDT-PERP', 'BTC', ?, 7e6, 0, 70, 0, 60, 0, false, DATE '2025-10-10')""",
                    [TRIGGER, TRIGGER + dt.timedelta(minutes=1)])
        con.execute("""INSERT INTO analytics.liquidation_cascades (asset, side, cascade_start, cascade_end, duration_s,
                           n_orders, usd, usd_long, usd_short, threshold_usd, venues, is_lower_bound, open_at_day_end,
                           day)
                       VALUES ('BTC', 'long', ?, ?, 300, 100, 1.2e7, 1.2e7, 0, 1e6, 'binance-usdm,bybit-linear', true,
                               false, DATE '2025-10-10')""", [TRIGGER, TRIGGER + dt.timedelta(minutes=5)])
        con.execute("""INSERT INTO analytics.cross_venue_cascades (asset, side, cascade_start, cascade_end, episode_usd,
                           episode_orders, reference_venue, exchange, venue_usd, liquidation_coverage,
                           threshold_crossing, is_first_mover, first_mover, day)
                       SELECT 'BTC', 'long', ?, ?, 1.2e7, 100, 'binance-usdm', v, usd, cov, ? + to_seconds(lag), first,
                              'bybit-linear', DATE '2025-10-10'
                       FROM (VALUES ('binance-usdm', 5e6, 'sampled', 20, false),
                                    ('bybit-linear', 7e6, 'complete', 0, true)) x(v, usd, cov, lag, first)""",
                    [TRIGGER, TRIGGER + dt.timedelta(minutes=5), TRIGGER])
        con.execute("""INSERT INTO analytics.market_stress (asset, minute, stress_index, coverage, liquidated_usd, day)
                       SELECT 'BTC', ? + to_minutes(i), CASE WHEN i < 30 THEN 10 ELSE 70 END, 1, 0, DATE '2025-10-10'
                       FROM range(90) t(i)""", [start])
        con.execute("""INSERT INTO analytics.open_interest (exchange, symbol, asset, grain, bucket_start, open_interest,
                                                            open_interest_usd, n_venues, day)
                       SELECT v, 'BTC-USDT-PERP', 'BTC', '5m', ? + to_minutes(5 * i), 1e5, 1e10 - i * 1e8, 1,
                              DATE '2025-10-10' FROM range(18) t(i), (VALUES ('binance-usdm'), ('okx-swap')) x(v)""",
                    [start])
    warehouse.publish_replica()
    return warehouse


def figures_in(page: str) -> dict[str, tuple[str, bytes]]:
    found = re.findall(r'<figure id="([^"]+)"><h2>[^<]*</h2><img alt="[^"]*" src="data:image/png;base64,([^"]+)">'
                       r"<figcaption>([^<]*)</figcaption></figure>", page)
    return {fid: (caption, base64.b64decode(data, validate=True)) for fid, data, caption in found}


def test_report_is_self_contained_with_every_named_figure(warehouse, tmp_path):
    out = write_report(warehouse, tmp_path / "out" / "report.html", notes=["cascade rows: synthetic test data"])
    page = out.read_text(encoding="utf-8")
    text = re.sub(r"data:image/png;base64,[A-Za-z0-9+/=]+", "", page)
    assert not re.search(r"https?:|//", text, re.IGNORECASE)
    assert all(src.startswith("data:image/png;base64,") for src in re.findall(r'src="([^"]*)"', page))
    assert "<link" not in page and "<script" not in page and "url(" not in page
    found = figures_in(page)
    assert set(found) == FIGURE_IDS
    assert page.count("<img ") == len(FIGURE_IDS)
    for caption, png in found.values():
        decode_png(png)
    # BTC is drawn from the market with the most depth minutes; liquidations of every venue summed
    assert "binance-usdm BTC-USDT-PERP" in found["cascade-btc"][0]
    assert "binance-usdm ETH-USDT-PERP" in found["cascade-eth"][0]
    assert "cascade rows: synthetic test data" in page
    assert f"{next(iter(STRESS_THRESHOLDS))} 50" in found["stress-index"][0]


def perpflow_report(home: Path) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if not k.startswith("PERPFLOW_")}
    env["PERPFLOW_HOME"] = str(home)
    return subprocess.run([sys.executable, "-m", "pipelines.cli", "report"], env=env, capture_output=True,
                          text=True, timeout=120)


def test_cli_writes_the_report_of_any_warehouse(warehouse):
    out = perpflow_report(warehouse.path.parent)
    assert out.returncode == 0, out.stderr
    path = warehouse.path.parent / "report.html"
    assert out.stdout.strip() == f"report: {path}"
    assert set(figures_in(path.read_text(encoding="utf-8"))) == FIGURE_IDS


def test_cli_refuses_a_missing_warehouse(tmp_path):
    out = perpflow_report(tmp_path / "nothing-here")
    assert out.returncode == 1
    assert f"no warehouse replica at {tmp_path / 'nothing-here' / 'warehouse_ro.duckdb'}" in out.stderr
    assert "perpflow demo" in out.stderr
    assert not (tmp_path / "nothing-here" / "report.html").exists()


def test_cli_refuses_an_empty_warehouse(tmp_path):
    empty = Warehouse(tmp_path / "warehouse.duckdb", tmp_path / "warehouse_ro.duckdb")
    empty.publish_replica()   # migrated schema, no rows
    out = perpflow_report(tmp_path)
    assert out.returncode == 1
    assert "nothing to report" in out.stderr and "analytics.ohlcv_1m" in out.stderr
    assert not (tmp_path / "report.html").exists()


def test_null_values_are_nan_and_overlapping_cascades_merge():
    import duckdb

    from pipelines.report import _merged, _series

    with duckdb.connect() as con:
        series = _series(con, "SELECT TIMESTAMP '2025-10-10 20:50:00' + to_minutes(i) AS ts, "
                              "CASE WHEN i = 1 THEN NULL ELSE i * 10.0 END AS v FROM range(3) t(i) ORDER BY ts")
    assert series.ts.dtype == np.dtype("datetime64[ms]") and len(series.ts) == 3
    assert series.values[0] == 0.0 and np.isnan(series.values[1]) and series.values[2] == 20.0
    t = [np.datetime64(f"2025-10-10T21:{m:02d}", "ms") for m in (0, 5, 3, 9, 12, 14)]
    spans = _merged([Span(t[0], t[1]), Span(t[4], t[5]), Span(t[2], t[3])])
    assert [(s.start, s.end) for s in spans] == [(t[0], t[3]), (t[4], t[5])]
