"""What each venue's public data covers: declared once per venue, shown by `perpflow venues`,
kept in the warehouse as meta.venue_coverage."""

from __future__ import annotations

from ingest.venue import DATA_KINDS, Coverage
from ingest.venues import REGISTRY
from test_cli import base_env, run


def test_every_venue_states_the_coverage_of_every_kind_of_data_with_a_reason():
    for exchange, cls in REGISTRY.items():
        assert set(cls.COVERAGE) == set(DATA_KINDS), (exchange, set(DATA_KINDS) ^ set(cls.COVERAGE))
        for kind, (coverage, note) in cls.COVERAGE.items():
            assert isinstance(coverage, Coverage) and len(note) > 5, (exchange, kind)
    assert REGISTRY["binance-usdm"].COVERAGE["liquidations"][0] is Coverage.SAMPLED
    assert REGISTRY["bybit-linear"].COVERAGE["liquidations"][0] is Coverage.COMPLETE
    assert REGISTRY["binance-coinm"].COVERAGE["index_price"][0] is Coverage.UNAVAILABLE


def test_the_warehouse_keeps_the_coverage_of_the_running_code(warehouse):
    with warehouse.writer() as con:
        rows = con.execute("SELECT exchange, data, coverage, note FROM meta.venue_coverage").fetchall()
    assert len(rows) == len(REGISTRY) * len(DATA_KINDS)
    by_key = {(e, d): (c, n) for e, d, c, n in rows}
    assert by_key[("binance-usdm", "liquidations")][0] == "sampled"
    assert "1000 ms" in by_key[("binance-usdm", "liquidations")][1]
    assert by_key[("okx-swap", "index_price")] == ("complete", "index-tickers")


def test_perpflow_venues_prints_the_table_and_refuses_an_unknown_kind(tmp_path):
    out = run(["venues", "--exchange", "bybit-linear", "--data", "liquidations", "--data", "trades"],
              env=base_env(tmp_path))
    assert out.returncode == 0, out.stderr
    assert "allLiquidation" in out.stdout and "UUIDs" in out.stdout and "okx-swap" not in out.stdout
    assert "funding" not in out.stdout.split("meta.venue_coverage", 1)[1]
    bad = run(["venues", "--data", "depth"], env=base_env(tmp_path))
    assert bad.returncode == 2 and "unknown kind(s) depth" in bad.stderr
