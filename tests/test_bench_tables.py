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
