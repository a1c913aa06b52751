"""Binance COIN-M: the real 2021 dstream recording (tests/fixtures/README.md) through the
shared Binance futures dialect, inverse units, and replaying it as the wrong venue."""

from __future__ import annotations

from collections import Counter
from pathlib import Path

import pytest

from conftest import binance_recording, venue_recording
from ingest.records import Instrument, Trade
from ingest.venues.binance_coinm import BinanceCoinm
from pipelines.replay import WrongVenue, check_replayable, replay
from test_cli import base_env, run



def coinm_recording() -> list[Path]:
    """The 2021 dstream capture (cryptofeed sample_data, bookTicker lines removed)."""
    return sorted(venue_recording("binance_coinm").glob("BINANCE_DELIVERY.*")) or venue_recording("binance_coinm", "x")


def test_the_coinm_recording_maps_every_message_and_every_book_bridges():
    records = []
    report = replay("binance-coinm", coinm_recording(), records.append)
    stats = report.stats
    assert stats.messages == 2142 and stats.accounted == stats.messages
    assert stats.mapped == 2109 and not stats.dead_letters
    assert stats.skipped == Counter({"kline: candles are built from trades in the warehouse": 33})
    # 10 REST snapshots, each bridged by the stream; every delta after them applied in sequence.
    assert report.book["snapshots"] == 10 and report.book["applied"] == 1788
    assert report.gaps == 0 and report.crossed == 0 and report.pending_deltas == 0
    trades = [r for r in records if isinstance(r, Trade)]
    assert len(trades) == 51 and {t.qty_unit for t in trades} == {"contracts"}
    assert {t.symbol for t in trades} <= {"LINK-USD-211231", "LINK-USD-PERP", "TRX-USD-PERP", "ETC-USD-PERP",
                                          "BTC-USD-211231", "XRP-USD-PERP", "EOS-USD-PERP", "BCH-USD-PERP",
                                          "BCH-USD-210924", "ETH-USD-210924"}
    assert report.by_symbol["book_snapshot", "BTC-USD-211231"] >= 1


def test_coinm_instruments_say_contracts_are_usd_and_quarterlies_expire():
    records = []
    replay("binance-coinm", coinm_recording()[:1], records.append)
    instruments = {r.symbol_native: r for r in records if isinstance(r, Instrument)}
    assert len(instruments) == 36
    btc = instruments["BTCUSD_PERP"]
    assert (btc.symbol, btc.market_type, btc.margin, btc.qty_unit, btc.contract_size, btc.contract_size_unit,
            btc.settle_asset, btc.tick_size, btc.lot_size, btc.funding_interval_hours, btc.expiry, btc.status) == (
        "BTC-USD-PERP", "perpetual", "inverse", "contracts", "100", "usd", "BTC", "0.1", "1", 8, None, "TRADING")
    eth_q = instruments["ETHUSD_210924"]
    assert (eth_q.symbol, eth_q.market_type, eth_q.contract_size, eth_q.expiry, eth_q.funding_interval_hours) == (
        "ETH-USD-210924", "future", "10", 1632470400000, None)


def test_coinm_symbols_need_their_suffix():
    venue = BinanceCoinm()
    assert venue.normalize_symbol("btcusd_perp") == "BTC-USD-PERP"
    assert venue.recognizes({"stream": "btcusd_perp@aggTrade", "data": {"e": "aggTrade", "s": "BTCUSD_PERP"}})
    assert not venue.recognizes({"stream": "btcusdt@aggTrade", "data": {"e": "aggTrade", "s": "BTCUSDT"}})
    assert not venue.recognizes({"stream": "btcbusd@aggTrade", "data": {"e": "aggTrade", "s": "BTCBUSD"}})


def test_replaying_coinm_traffic_as_usdm_is_an_error_naming_coinm(tmp_path):
    with pytest.raises(WrongVenue, match="500 look like binance-coinm's; run with --exchange binance-coinm"):
        check_replayable("binance-usdm", coinm_recording())
    out = run(["replay", "--exchange", "binance-usdm", *map(str, coinm_recording())], env=base_env(tmp_path))
    assert out.returncode == 1 and "--exchange binance-coinm" in out.stderr + out.stdout


def test_replaying_usdm_traffic_as_coinm_is_an_error_naming_usdm():
    with pytest.raises(WrongVenue, match="look like binance-usdm's; run with --exchange binance-usdm"):
        check_replayable("binance-coinm", binance_recording())
