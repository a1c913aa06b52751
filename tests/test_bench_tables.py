"""`make bench` tables fit an 80-column terminal: every row on one line, nothing cut."""

from __future__ import annotations

import io

from rich.console import Console

from bench import tables


def _render(table) -> list[str]:
    console = Console(width=tables.WIDTH, file=io.StringIO(), color_system=None)
    console.print(table)
    return console.file.getvalue().splitlines()


def _assert_rows_on_one_line(lines: list[str], cells: list[list[str]]) -> None:
    assert max(map(len, lines)) <= tables.WIDTH
    for row in cells:
        assert any(all(cell in line for cell in row) for line in lines), f"row wrapped or cut: {row}\n" + "\n".join(lines)


def test_loader_and_ingest_tables_fit_80_columns():
    loader = [{"label": "producer (pre-serialized)", "records": 3_000_000, "seconds": 123.45, "rate": 24_301.2},
              {"label": "bare consume loop", "records": 3_000_000, "seconds": 61.2, "rate": 49_019.6, "baseline": True},
              {"label": "perpflow loader", "records": 3_000_000, "seconds": 95.1, "rate": 31_545.7, "ratio": 0.6435}]
    lines = _render(tables.throughput(loader))
    _assert_rows_on_one_line(lines, [["producer (pre-serialized)", "3,000,000", "123.45", "24,301"],
                                     ["bare consume loop", "49,020", "base"], ["perpflow loader", "31,546", "0.64x"]])
    ingest = [{"label": "bare producer", "messages": 1_000_000, "records": 1_250_000, "seconds": 40.0,
               "rate": 31_250.0, "baseline": True},
              {"label": "ingest message path", "messages": 1_000_000, "records": 1_250_000, "seconds": 120.5,
               "rate": 10_373.4, "ratio": 0.332},
              {"label": "end to end (simulator)", "messages": 180_000, "records": 200_000, "seconds": 30.02,
               "rate": 6_662.2, "ratio": 0.213}]
    lines = _render(tables.ingest(ingest))
    _assert_rows_on_one_line(lines, [["bare producer", "1,250,000", "base"], ["ingest message path", "0.33x"],
                                     ["end to end (simulator)", "180,000", "6,662", "0.21x"]])


def test_venue_and_microstructure_tables_fit_80_columns():
    venues = [{"label": name, "messages": 100_000, "mapped": 99_876, "skipped": 124, "dead_letters": 1_203,
               "gaps": 12, "records": 1_234_567, "messages_per_s": 53_190.4, "ratio": ratio, "baseline": ratio == 1}
              for name, ratio in (("binance-usdm", 1), ("binance-coinm", 1.2), ("bybit-linear", 0.89),
                                  ("hyperliquid", 7.71))]
    lines = _render(tables.venues(venues))
    _assert_rows_on_one_line(lines, [["binance-usdm", "100,000", "99,876", "1,203", "53,190", "base"],
                                     ["hyperliquid", "1,203", "7.71x"]])
    micro = {"inputs": {"trades": 2_000_000, "book_snapshots": 86_400, "book_levels": 17_280_000},
             "baseline": {"asset": "analytics/ohlcv_1m", "rows": 4_320, "seconds": 1.5},
             "assets": [{"asset": "analytics/liquidation_cascades", "rows": 14, "seconds": 2.25, "ratio": 1.5},
                        {"asset": "analytics/depth_bands_1m", "rows": 12_960, "seconds": 18.2, "ratio": 12.13}],
             "total_seconds": 41.9}
    lines = _render(tables.microstructure(micro))
    _assert_rows_on_one_line(lines, [["ohlcv_1m (base)", "4,320", "1.50", "1.00x"],
                                     ["liquidation_cascades", "14", "2.25", "1.50x"],
                                     ["depth_bands_1m", "12,960", "18.20", "12.13x"], ["all assets", "41.90", "27.93x"]])


def _stage(p50: float, p99: float) -> dict:
    return {"n": 1_000, "p50_ms": p50, "p99_ms": p99, "max_ms": p99 * 1.5}


def test_latency_table_fits_80_columns():
    rows = [{"case": "calm", "scenario": "calm", "speed": 1.0, "simulator_max_lag_ms": 0, "ingest": _stage(17.8, 110.3),
             "kafka": _stage(70.6, 225.9), "duckdb": _stage(431.4, 1_919.4), "minute_row": _stage(33_005.9, 150_177.8),
             "minute_close": _stage(649.4, 12_649.4)},
            {"case": "burst", "scenario": "cascade", "speed": 5.0, "simulator_max_lag_ms": 7_420, "ingest": _stage(25.1, 3_410.2),
             "kafka": _stage(95.3, 4_012.7), "duckdb": _stage(1_250.5, 9_870.1), "minute_row": {"n": 0},
             "minute_close": {"n": 0}}]
    lines = _render(tables.latency(rows))
    _assert_rows_on_one_line(lines, [["from venue event to", "calm p50", "calm p99", "burst p50", "burst p99"],
                                     ["ingest read", "18", "110", "25", "3,410"],
                                     ["DuckDB row", "431", "1,919", "1,250", "9,870"],
                                     ["minute row (trades)", "33,006", "150,178", "-"],
                                     ["per row, from minute end", "649", "12,649"]])
    caption = " ".join(" ".join(lines).split())
    assert "calm = calm at 1x (simulator up to 0.0 s late) / burst = cascade at 5x (simulator up to 7.4 s late);" \
        in caption


def test_capture_table_fits_80_columns_and_says_what_each_venue_needs():
    venue = {"symbols": 300, "required_frames_per_s": 5_050.6, "capacity_frames_per_s": 491.1, "headroom": 0.0972,
             "frames_per_cpu_s": 2_310.5, "cores_needed": 2.186, "backlog_at_burst_end": 321_970, "drain_s": None}
    result = {"schedule": {"calm_s": 15, "burst_s": 10, "factor": 5, "drain_max_s": 30, "flat_s": 10},
              "loader_rows_per_s": 1_472.5,
              "venues": [{**venue, "exchange": "binance-usdm"},
                         {**venue, "exchange": "bybit-linear", "capacity_frames_per_s": 30_210.4, "headroom": 5.98,
                          "cores_needed": 0.41, "backlog_at_burst_end": 0, "drain_s": 0.25}]}
    lines = _render(tables.capture(result))
    _assert_rows_on_one_line(lines, [["venue", "need", "cap", "headroom", "/core", "cores", "backlog", "drain"],
                                     ["binance-usdm", "5,051", "491", "0.10x", "2,310", "2.2", "321,970", ">30"],
                                     ["bybit-linear", "30,210", "5.98x", "0.4", "0.2"]])
    verdicts = tables.capture_verdicts(result)
    assert "about 2.2 cores of ingest alone (3 processes with a core each" in verdicts[0]
    assert "kept up" in verdicts[1] and "6.0x headroom" in verdicts[1] and "about 0.4 cores" in verdicts[1]
