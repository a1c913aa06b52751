"""The demo's warm-up history on a shorter scale: sampled simulator frames through the venue's mapper,
a real broker and the exactly-once loader, then the daily analytics with warm trailing baselines;
and the lead/lag arithmetic of the demo summary on known cases."""

from __future__ import annotations

import datetime as dt
import math
import warnings

import dagster as dg
import numpy as np

from ingest.kafka import RecordProducer
from pipelines.demo_history import publish_history
from transforms.market_stress import first_crossing_offset_minutes
from warehouse.loader import load_once
from warehouse.store import Warehouse

warnings.filterwarnings("ignore", category=dg.BetaWarning)

from dagster_project.assets.microstructure import MICROSTRUCTURE_ASSETS  # noqa: E402
from dagster_project.assets.ohlcv import ohlcv_1m  # noqa: E402
from dagster_project.resources import WarehouseResource  # noqa: E402

SYMBOLS = ["BTCUSDT", "ETHUSDT", "SOLUSDT"]
CALM_START = dt.datetime(2025, 10, 10, 17, 0, tzinfo=dt.UTC)
CALM_HOURS = 2.0
CASCADE_HOURS = 1.25            # the cascade scenario puts its trigger 15 minutes in
TRIGGER = CALM_START + dt.timedelta(hours=CALM_HOURS, minutes=15)
# The shorter scale: baselines need an hour of prior minutes here instead of the assets' 12 hours.
BASELINE_MINUTES = 60
RAW = [dg.AssetSpec(["raw", t]) for t in ("trades", "book_snapshots", "open_interest", "funding", "liquidations")]


def _ms(t: dt.datetime) -> int:
    return int(t.timestamp() * 1000)


def test_first_crossing_offset_leads_lags_and_misses():
    minutes = 60.0 * np.arange(12)
    stress = np.array([0, 10, 20, 55, np.nan, 70, 40, 80, 90, 20, 10, 0], dtype=float)
    event = minutes[6]
    # First value >= 50 is minute 3: three minutes before the event.
    assert first_crossing_offset_minutes(minutes, stress, event, threshold=50) == -3.0
    # A late signal is a positive offset; the NaN minute never counts.
    assert first_crossing_offset_minutes(minutes, stress, event, threshold=75) == 1.0
    # A look-back shorter than the lead leaves the earlier crossing out: the first one in the window counts.
    assert first_crossing_offset_minutes(minutes, stress, event, threshold=50, lookback_s=60) == -1.0
    ratio = np.array([1.0, 0.9, 0.5, 0.2, 0.12, 0.1, 0.09, 0.05, 0.3, 0.8, 1.0, 1.0])
    # "below" is strict: 0.1 is not below 0.1, 0.09 (minute 6) is, at the event itself.
    assert first_crossing_offset_minutes(minutes, ratio, event, threshold=0.1, below=True) == 0.0
    assert math.isnan(first_crossing_offset_minutes(minutes, stress, event, threshold=95))
    assert math.isnan(first_crossing_offset_minutes(minutes, stress, event, threshold=50, lookahead_s=0,
                                                    lookback_s=0))


def test_sampled_history_through_broker_and_loader_warms_the_baselines(fresh_broker, tmp_path):
    producer = RecordProducer(fresh_broker.bootstrap)
    try:
        calm = publish_history(SYMBOLS, _ms(CALM_START), CALM_HOURS, 8, producer.send)
        cascade = publish_history(SYMBOLS, _ms(CALM_START) + int(CALM_HOURS * 3_600_000), CASCADE_HOURS, 7,
                                  producer.send, scenario="cascade")
        producer.flush()
    finally:
        producer.close()
    for report in (calm, cascade):
        assert not report.dead_letters and not report.skipped
        assert "trade" not in report.records
    # One diff a minute per symbol, each past the sync a periodic snapshot: a book a minute.
    minutes = int(CALM_HOURS * 60)
    assert abs(calm.records["book_delta"] - minutes * len(SYMBOLS)) <= len(SYMBOLS)

    warehouse = Warehouse(tmp_path / "w.duckdb", tmp_path / "r.duckdb")
    load_once(warehouse, fresh_broker.bootstrap)
    with warehouse.writer() as con:
        periodic = dict(con.execute("SELECT symbol, count(*) FROM raw.book_snapshots WHERE reason = 'periodic' "
                                    "AND ts_exchange < ? GROUP BY ALL", [CALM_START + dt.timedelta(hours=CALM_HOURS)])
                        .fetchall())
        assert set(periodic) == {"BTC-USDT-PERP", "ETH-USDT-PERP", "SOL-USDT-PERP"}
        assert all(abs(n - minutes) <= 1 for n in periodic.values()), periodic
        assert con.execute("SELECT count(*) FROM raw.trades").fetchone()[0] == 0
        assert con.execute("SELECT count(*) FROM raw.feed_events WHERE kind = 'sampled_history'").fetchone()[0] == 2

    config = {"loggers": {"console": {"config": {"log_level": "ERROR"}}}, "ops": {
        "analytics__liquidity_withdrawals": {"config": {"min_baseline_minutes": BASELINE_MINUTES}},
        "analytics__market_stress": {"config": {"min_baseline_minutes": BASELINE_MINUTES}}}}
    resources = {"warehouse": WarehouseResource(database=str(warehouse.path), replica=str(warehouse.replica_path))}
    result = dg.materialize([*RAW, ohlcv_1m.to_source_asset(), *MICROSTRUCTURE_ASSETS], selection=MICROSTRUCTURE_ASSETS,
                            resources=resources, partition_key=f"{CALM_START:%Y-%m-%d}", run_config=config)
    assert result.success

    warm_from = CALM_START + dt.timedelta(minutes=BASELINE_MINUTES + 2)
    with warehouse.writer() as con:
        withdrawals = con.execute("""SELECT split_part(symbol, '-', 1), min(episode_start), min(worst_ratio)
                                     FROM analytics.liquidity_withdrawals WHERE exchange = 'binance-usdm'
                                     GROUP BY ALL ORDER BY 1""").fetchall()
        stress = con.execute("""SELECT asset, count(*) FILTER (WHERE stress_index IS NULL AND minute >= ?),
                                       count(*) FILTER (WHERE stress_index IS NULL AND minute < ?),
                                       max(stress_index) FILTER (WHERE minute < ?),
                                       max(stress_index) FILTER (WHERE minute >= ?)
                                FROM analytics.market_stress GROUP BY ALL ORDER BY 1""",
                             [warm_from, CALM_START + dt.timedelta(minutes=30), TRIGGER, TRIGGER]).fetchall()
    # The calm market alone never withdraws: every episode is the cascade's, after its trigger.
    assert [asset for asset, *_ in withdrawals] == ["BTC", "ETH", "SOL"]
    for asset, first, worst in withdrawals:
        assert TRIGGER.replace(tzinfo=None) < first < (TRIGGER + dt.timedelta(minutes=30)).replace(tzinfo=None), asset
        assert worst < 0.1
    assert [row[0] for row in stress] == ["BTC", "ETH", "SOL"]
    for asset, null_when_warm, null_when_cold, calm_peak, cascade_peak in stress:
        assert null_when_warm == 0, asset           # warm: defined at every minute once the history is long enough
        assert null_when_cold >= 25, asset          # cold: the history's first half hour has no baseline yet
        assert calm_peak < 50 <= cascade_peak, asset
