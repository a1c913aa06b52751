"""The Binance USD-M mapper on real recorded messages and documented payloads."""

from __future__ import annotations

import csv

import orjson
import pytest

from conftest import CAPTURES, SHARED_DATA, binance_recording
from ingest.records import Adl, BookDelta, Funding, Liquidation, Trade
from ingest.venue import MalformedMessage, SkipMessage
from ingest.venues.binance_usdm import BinanceUsdm

normalize_symbol = BinanceUsdm().normalize_symbol

TS = 1_700_000_000_000_000_000


def ws_messages():
    binance_recording()
    for line in (CAPTURES / "BINANCE_FUTURES.ws.1.0").read_bytes().splitlines()[1:]:
        ts, _, payload = line.partition(b": ")
        yield int(float(ts) * 1e9), orjson.loads(payload)


def test_symbol_normalization():
    assert normalize_symbol("BTCUSDT") == "BTC-USDT-PERP"
    assert normalize_symbol("1000PEPEUSDC") == "1000PEPE-USDC-PERP"
    assert normalize_symbol("ethusdt_250328") == "ETH-USDT-250328"
    with pytest.raises(MalformedMessage, match="quote asset"):
        normalize_symbol("BTCEUR")


def test_real_recording_maps_every_message_type():
    mapper = BinanceUsdm()
    kinds, skipped = {}, {}
    for ts, message in ws_messages():
        try:
            for record in mapper.map_ws(message, ts):
                kinds[record.record_type] = kinds.get(record.record_type, 0) + 1
        except SkipMessage as skip:
            skipped[str(skip).split(":")[0]] = skipped.get(str(skip).split(":")[0], 0) + 1
    assert kinds == {"trade": 91, "book_delta": 764}
    assert skipped == {"bookTicker": 613, "kline": 67}


def test_first_real_agg_trade_fields():
    mapper = BinanceUsdm()
    for ts, message in ws_messages():
        if message["data"]["e"] == "aggTrade":
            [trade] = mapper.map_ws(message, ts)
            break
    raw = message["data"]
    assert isinstance(trade, Trade)
    assert trade.exchange == "binance-usdm"
    assert trade.symbol_native == raw["s"] and trade.symbol == normalize_symbol(raw["s"])
    assert (trade.trade_id, trade.price, trade.qty) == (str(raw["a"]), raw["p"], raw["q"])
    assert (trade.first_trade_id, trade.last_trade_id, trade.ts_exchange) == (raw["f"], raw["l"], raw["T"])
    assert trade.side == ("sell" if raw["m"] else "buy")
    assert trade.ts_recv == ts and trade.is_aggregated


def test_depth_update_keeps_sequence_ids_verbatim():
    raw = {"stream": "sushiusdt@depth@100ms", "data": {
        "e": "depthUpdate", "E": 1626992741037, "T": 1626992741024, "s": "SUSHIUSDT", "U": 600859599090,
        "u": 600859600917, "pu": 600859598061, "b": [["7.5040", "813"], ["7.6090", "0"]], "a": [["7.6150", "1563"]]}}
    [delta] = BinanceUsdm().map_ws(raw, TS)
    assert isinstance(delta, BookDelta)
    assert (delta.first_seq, delta.last_seq, delta.prev_seq) == (600859599090, 600859600917, 600859598061)
    assert delta.bids == [["7.5040", "813"], ["7.6090", "0"]] and delta.asks == [["7.6150", "1563"]]
    assert delta.ts_exchange == 1626992741024


def test_force_order_sell_means_long_liquidated():
    # Real capture quoted in exchanges.md (bbgo PR #1232).
    raw = {"e": "forceOrder", "E": 1695714031883, "o": {"s": "BTCUSDT", "S": "SELL", "o": "LIMIT", "f": "IOC",
           "q": "0.115", "p": "26142.12", "ap": "26245.10", "X": "FILLED", "l": "0.115", "z": "0.115",
           "T": 1695714031881}}
    [liq] = BinanceUsdm().map_ws({"stream": "btcusdt@forceOrder", "data": raw}, TS)
    assert isinstance(liq, Liquidation)
    assert (liq.order_side, liq.liquidated_position) == ("sell", "long")
    assert (liq.price, liq.avg_price, liq.qty, liq.is_sampled) == ("26142.12", "26245.10", "0.115", True)
    raw["o"]["S"] = "BUY"
    [liq] = BinanceUsdm().map_ws(raw, TS)
    assert liq.liquidated_position == "short"


def test_real_liquidation_captures_map_side_to_position():
    path = SHARED_DATA / "binance-liquidation-captures-moondev-style" / "bandsthobaby_2024-08_binance_liqs.csv"
    if not path.exists():
        pytest.skip("../shared/data liquidation captures not available")
    mapper = BinanceUsdm()
    positions = {"long": 0, "short": 0}
    sides = {"SELL": 0, "BUY": 0}
    with path.open() as fh:
        for symbol, side, otype, tif, q, p, ap, status, last, filled, t, _usd in csv.reader(fh):
            message = {"e": "forceOrder", "E": int(t), "o": {"s": symbol + "USDT", "S": side, "o": otype, "f": tif,
                       "q": q, "p": p, "ap": ap, "X": status, "l": last, "z": filled, "T": int(t)}}
            [liq] = mapper.map_ws(message, TS)
            positions[liq.liquidated_position] += 1
            sides[side] += 1
            assert liq.qty == filled and liq.price == p
    assert positions["long"] == sides["SELL"] and positions["short"] == sides["BUY"]
    assert sum(positions.values()) == 456


def test_mark_price_is_funding_with_interval():
    raw = {"e": "markPriceUpdate", "E": 1562305380000, "s": "BTCUSDT", "p": "11794.15000000",
           "i": "11784.62659091", "P": "11784.25641265", "r": "0.00038167", "T": 1562306400000}
    mapper = BinanceUsdm()
    with pytest.raises(SkipMessage, match="funding intervals updated"):
        mapper.map_rest("https://fapi.binance.com/fapi/v1/fundingInfo",
                        [{"symbol": "ETHUSDT", "fundingIntervalHours": 4}], TS)
    [funding] = mapper.map_ws(raw, TS)
    assert isinstance(funding, Funding)
    assert (funding.rate, funding.interval_hours, funding.next_funding_time) == ("0.00038167", 8, 1562306400000)
    assert (funding.mark_price, funding.index_price, funding.is_realised) == ("11794.15000000", "11784.62659091", False)
    [eth] = mapper.map_ws({**raw, "s": "ETHUSDT"}, TS)
    assert eth.interval_hours == 4


@pytest.mark.parametrize("rate", ["", "0.00000000"])
def test_delivery_contract_mark_price_has_no_funding(rate):
    raw = {"e": "markPriceUpdate", "E": 1700000001000, "s": "BTCUSDT_240329", "p": "38000.50", "i": "36990.00",
           "P": "38001.00", "r": rate, "T": 0}
    [mark] = BinanceUsdm().map_ws({"stream": "btcusdt_240329@markPrice", "data": raw}, TS)
    assert (mark.symbol, mark.rate, mark.interval_hours, mark.next_funding_time) == ("BTC-USDT-240329", None, None,
                                                                                     None)
    assert (mark.mark_price, mark.index_price, mark.ts_exchange) == ("38000.50", "36990.00", 1700000001000)


def test_perpetual_rate_of_zero_is_a_rate():
    raw = {"e": "markPriceUpdate", "E": 1, "s": "BTCUSDT", "p": "1.5", "i": "1.5", "r": "0.00000000", "T": 28800000}
    [funding] = BinanceUsdm().map_ws(raw, TS)
    assert (funding.rate, funding.interval_hours, funding.next_funding_time) == ("0.00000000", 8, 28800000)


def test_older_formats_map_what_they_carry():
    # 2019 markPriceUpdate: no index price ``i``.
    raw = {"e": "markPriceUpdate", "E": 1562305380000, "s": "BTCUSDT", "p": "11794.15000000", "r": "0.00038167",
           "T": 1562306400000}
    [funding] = BinanceUsdm().map_ws(raw, TS)
    assert (funding.rate, funding.mark_price, funding.index_price) == ("0.00038167", "11794.15000000", None)
    # openInterest without ``time``: stamped with the receive time in ms.
    [oi] = BinanceUsdm().map_rest("https://fapi.binance.com/fapi/v1/openInterest?symbol=BTCUSDT",
                                  {"openInterest": "0", "symbol": "BTCUSDT"}, TS + 999_999)
    assert (oi.ts_exchange, oi.open_interest) == (TS // 1_000_000, "0")


def test_every_real_recorded_number_passes_and_real_frames_with_bad_numbers_do_not():
    mapper = BinanceUsdm()
    frames = {}
    for ts, message in ws_messages():
        if message["data"]["e"] in ("aggTrade", "depthUpdate"):
            mapper.map_ws(message, ts)   # raises if any real value were refused
            frames.setdefault(message["data"]["e"], message)
    snapshots = [line for line in (CAPTURES / "BINANCE_FUTURES.http.0.0").read_bytes().splitlines()
                 if b"/fapi/v1/depth" in line]
    for line in snapshots:
        url, _, rest = line.decode().partition(" -> ")
        [snap] = mapper.map_rest(url, orjson.loads(rest.partition(": ")[2]), TS)
        assert len(snap.bids) > 100 and len(snap.asks) > 100
    assert len(snapshots) == 4

    trade = frames["aggTrade"]
    for key, value, kind in (("p", "0", "positive"), ("p", "-7.6", "positive"), ("q", "-1", "positive"),
                             ("q", "1_000", "positive"), ("q", " 7 ", "positive"), ("p", "7.6e1", "positive"),
                             ("q", "0", "positive"), ("p", 7.6, "positive")):
        bad = {**trade, "data": {**trade["data"], key: value}}
        with pytest.raises(MalformedMessage) as err:
            mapper.map_ws(bad, TS)
        assert str(err.value) == f"aggTrade: field {key!r} must be a {kind} decimal string, got {value!r}"
    depth = frames["depthUpdate"]
    side = "b" if depth["data"]["b"] else "a"
    levels = depth["data"][side]
    for level, reason in (([levels[0][0], "-5"], "quantity must be a decimal string >= 0, got '-5'"),
                          (["0.0000", levels[0][1]], "price must be a positive decimal string, got '0.0000'")):
        bad = {**depth, "data": {**depth["data"], side: [*levels, level]}}
        with pytest.raises(MalformedMessage, match=f"depthUpdate {side!r} level: {reason}"):
            mapper.map_ws(bad, TS)
    deleted = {**depth, "data": {**depth["data"], side: [[levels[0][0], "0"]]}}
    assert getattr(mapper.map_ws(deleted, TS)[0], "bids" if side == "b" else "asks") == [[levels[0][0], "0"]]


def test_signs_only_where_the_field_is_signed():
    raw = {"e": "markPriceUpdate", "E": 1, "s": "BTCUSDT", "p": "1.5", "i": "1.4", "r": "-0.00010000", "T": 2}
    assert BinanceUsdm().map_ws(raw, TS)[0].rate == "-0.00010000"
    for key, value in (("p", "-1.5"), ("i", "-1.4"), ("r", "+0.0001"), ("r", "1e-4")):
        with pytest.raises(MalformedMessage, match=f"markPriceUpdate: field {key!r} must be"):
            BinanceUsdm().map_ws({**raw, key: value}, TS)
    with pytest.raises(MalformedMessage, match="openInterest: field 'openInterest' must be a decimal string >= 0"):
        BinanceUsdm().map_rest("/fapi/v1/openInterest?symbol=BTCUSDT",
                               {"openInterest": "-3", "symbol": "BTCUSDT", "time": 1}, TS)


def test_an_adl_trade_is_also_an_adl_fill_and_other_trades_are_not():
    # The documented `trade` payload (exchanges.md 2.1) with X = ADL; values constructed.
    raw = {"e": "trade", "E": 1700000000123, "T": 1700000000120, "s": "BTCUSDT", "t": 5123456789, "p": "36912.40",
           "q": "0.750", "X": "ADL", "m": True}
    trade, adl = BinanceUsdm().map_ws({"stream": "btcusdt@trade", "data": raw}, TS)
    assert isinstance(trade, Trade) and isinstance(adl, Adl)
    assert (trade.trade_id, trade.trade_type, trade.side, trade.is_aggregated) == ("5123456789", "ADL", "sell", False)
    assert (adl.exchange, adl.symbol, adl.symbol_native, adl.ts_exchange, adl.ts_recv) == (
        "binance-usdm", "BTC-USDT-PERP", "BTCUSDT", 1700000000120, TS)
    # Binance does not say which side was deleveraged; the fill joins its trade by id.
    assert (adl.event, adl.deleveraged_position, adl.price, adl.qty, adl.qty_unit, adl.trade_id, adl.state) == (
        "fill", None, "36912.40", "0.750", "base", "5123456789", None)
    assert orjson.loads(adl.detail) == {"X": "ADL", "m": True}
    for kind in ("MARKET", "INSURANCE_FUND", "NA"):
        [only] = BinanceUsdm().map_ws({**raw, "X": kind}, TS)
        assert isinstance(only, Trade) and only.trade_type == kind


def test_rest_open_interest_and_depth_snapshot():
    mapper = BinanceUsdm()
    [oi] = mapper.map_rest("https://fapi.binance.com/fapi/v1/openInterest?symbol=BTCUSDT",
                           {"openInterest": "10659.509", "symbol": "BTCUSDT", "time": 1589437530011}, TS)
    assert (oi.symbol, oi.open_interest, oi.qty_unit, oi.ts_exchange) == ("BTC-USDT-PERP", "10659.509", "base",
                                                                          1589437530011)
    [snap] = mapper.map_rest("/fapi/v1/depth?symbol=BTCUSDT&limit=1000",
                             {"lastUpdateId": 42, "E": 5, "T": 4, "bids": [["1", "2"]], "asks": [["3", "4"]]}, TS)
    assert (snap.seq, snap.bids, snap.asks, snap.ts_exchange) == (42, [["1", "2"]], [["3", "4"]], 4)


@pytest.mark.parametrize("message, reason", [
    ({"e": "aggTrade", "s": "BTCUSDT", "a": 1, "p": "1", "q": "1", "f": 1, "l": 1, "T": 1}, "missing field 'm'"),
    ({"e": "aggTrade", "s": "BTCUSDT", "a": 1, "p": "abc", "q": "1", "f": 1, "l": 1, "T": 1, "m": True}, "positive decimal string, got .abc."),
    ({"e": "aggTrade", "s": "BTCUSDT", "a": "1", "p": "1", "q": "1", "f": 1, "l": 1, "T": 1, "m": True}, "integer"),
    ({"e": "depthUpdate", "s": "BTCUSDT", "U": 1, "u": 2, "pu": 0, "T": 1, "b": [["1"]], "a": []}, "not \\[price, qty\\]"),
    ({"e": "forceOrder", "E": 1, "o": {"s": "BTCUSDT", "S": "HOLD", "p": "1", "q": "1", "T": 1}}, "BUY or SELL"),
    ({"e": "forceOrder", "E": 1, "o": "oops"}, "expected an object"),
    ({"stream": "x", "data": [1, 2]}, "expected an object"),
    ({"s": "BTCUSDT"}, "no event type"),
    ([1, 2, 3], "expected a JSON object"),
])
def test_malformed_messages_say_what_is_wrong(message, reason):
    with pytest.raises(MalformedMessage, match=reason):
        BinanceUsdm().map_ws(message, TS)


def test_subscription_replies_and_unknown_events_are_skipped_with_reason():
    with pytest.raises(SkipMessage, match="subscription reply"):
        BinanceUsdm().map_ws({"result": None, "id": 1}, TS)
    with pytest.raises(SkipMessage, match="ORDER_TRADE_UPDATE: event type not collected"):
        BinanceUsdm().map_ws({"e": "ORDER_TRADE_UPDATE"}, TS)
