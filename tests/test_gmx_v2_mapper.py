"""The GMX v2 venue (``gmx-v2``): polled REST and GraphQL bodies written in the shapes
``shared/specs/exchanges.md`` §2.7 documents (tests/fixtures/gmx/README.md says which text each
follows), and the live service running on polls alone against a local HTTP server and a real broker."""

from __future__ import annotations

import asyncio
import json
import re
import time
from collections import Counter
from decimal import Decimal, getcontext
from pathlib import Path

import duckdb
import orjson
import pytest
from aiohttp import web

from ingest.feed import FeedHandler
from ingest.records import Adl, DeadLetter, FeedEvent, Funding, Instrument, Liquidation, OpenInterest
from ingest.service import IngestConfig, IngestService
from ingest.venue import MalformedMessage, Poll, SkipMessage
from ingest.venues import REGISTRY, likely_venues
from ingest.venues import gmx_v2
from ingest.venues.gmx_v2 import GmxV2, decimal_of, normalize_symbol
from pipelines.replay import check_replayable, replay
from test_ingest_service import RecordingSink, dlq_contents
from warehouse.schema import migrate, raw_table_ddl

FIXTURES = Path(__file__).parent / "fixtures" / "gmx"
REST = "https://arbitrum-api.gmxinfra.io"
GRAPHQL = gmx_v2.DEFAULT_GRAPHQL_URL
TS = 1_709_500_030_000_000_000          # receive time, ns (30 s after the fixtures' oracle time)
SINCE = 1_709_500_000                   # the event cursor's start, s: the fixtures' events are later

getcontext().prec = 80


def body(name: str):
    return orjson.loads((FIXTURES / name).read_bytes())


def url(name: str) -> str:
    return {"tokens.json": f"{REST}/tokens", "markets_info.json": f"{REST}/markets/info",
            "prices_tickers.json": f"{REST}/prices/tickers", "market_infos.json": f"{GRAPHQL}?query=marketInfos",
            "liquidations.json": f"{GRAPHQL}?query=liquidations", "adl.json": f"{GRAPHQL}?query=adl"}[name]


def referenced() -> GmxV2:
    """A venue that read its reference data as the service does at start."""
    venue = GmxV2(events_since=SINCE)
    venue.apply_reference("tokens", body("tokens.json"))
    venue.apply_reference("instruments", body("markets_info.json"))
    return venue


def by_native(records, cls) -> dict:
    return {r.symbol_native: r for r in records if isinstance(r, cls)}


# --- contract ----------------------------------------------------------------------------------

def test_registered_without_a_book_or_websocket_and_polls_within_documented_cadences():
    assert REGISTRY["gmx-v2"] is GmxV2 and GmxV2.HAS_ORDER_BOOK is False
    assert all(cls.HAS_ORDER_BOOK for name, cls in REGISTRY.items() if name != "gmx-v2")
    venue = GmxV2()
    assert venue.ws_connections("", ["ETH-USD-WETH-USDC"]) == []
    polls = {p.url: p for p in venue.polls(REST, ["ETH-USD-WETH-USDC"])}
    assert set(polls) == {f"{REST}/markets/info", f"{REST}/prices/tickers", f"{GRAPHQL}?query=marketInfos",
                          f"{GRAPHQL}?query=liquidations", f"{GRAPHQL}?query=adl"}
    # §2.7: values pulled every 5000 ms (1 s cache): no point polling faster than that.
    assert all(p.interval_s >= 5.0 for p in polls.values())
    per_minute = sum(60 / p.interval_s * p.weight for p in polls.values())
    assert per_minute <= IngestService.POLL_BUDGET_SHARE * GmxV2.REST_WEIGHT_LIMIT
    # Reference data (the markets list has a 60 s cache) is re-read hourly by default.
    assert IngestConfig(symbols=[], ws_url="", rest_url="", bootstrap="", run_dir=Path(".")).reference_interval_s >= 60
    assert list(venue.reference_urls(REST)) == ["tokens", "instruments", "clock"]


def test_graphql_requests_are_posted_with_the_cursor_and_rest_ones_are_gets():
    venue = GmxV2()
    assert venue.rest_request(f"{REST}/markets/info") == (f"{REST}/markets/info", None)
    target, payload = venue.rest_request(f"{GRAPHQL}?query=marketInfos")
    assert target == GRAPHQL and "isDisabled_eq: false" in orjson.loads(payload)["query"]
    target, payload = venue.rest_request(f"{GRAPHQL}?query=liquidations")
    request = orjson.loads(payload)
    assert target == GRAPHQL and "type_eq: LIQUIDATION" in request["query"]
    assert "timestamp_gte: $since" in request["query"] and "limit: 500" in request["query"]
    assert abs(request["variables"]["since"] - time.time()) < 60 and request["variables"]["offset"] == 0
    assert "type_eq: AUTO_DELEVERAGING" in orjson.loads(venue.rest_request(f"{GRAPHQL}?query=adl")[1])["query"]
    with pytest.raises(ValueError, match="unknown GMX query"):
        venue.rest_request(f"{GRAPHQL}?query=trades")


# --- symbols, units, instruments ----------------------------------------------------------------

def test_fixed_point_decimals_are_exact():
    assert decimal_of(45678912345678901234567890123456789, 30) == "45678.912345678901234567890123456789"
    assert decimal_of(38 * 10 ** 33, 30) == "38000"
    assert decimal_of(1, 30) == "0." + "0" * 29 + "1"
    assert decimal_of(0, 30) == "0" and decimal_of(-36 * 10 ** 20, 30) == "-0.0000000036"
    assert decimal_of(5, 0) == "5"
    for n, scale in ((3170979198376458650 * 3600, 30), (971235 * 10 ** 21, 22), (7, 12)):
        assert Decimal(decimal_of(n, scale)) == Decimal(n) / Decimal(10) ** scale


def test_symbols_keep_the_pool_and_collisions_get_the_market_address():
    assert normalize_symbol("ETH-USD-WETH-USDC") == "ETH-USD-PERP-WETH-USDC"
    assert normalize_symbol("BTC-USD-BTC-BTC") == "BTC-USD-PERP-BTC-BTC"
    assert normalize_symbol("ETH-USD-WETH-USDC.E-70D955") == "ETH-USD-PERP-WETH-USDC.E-70D955"
    with pytest.raises(MalformedMessage):
        normalize_symbol("ETHUSD")
    twin = dict(body("markets_info.json")["markets"][0], marketToken="0x70d95587d40A2caf56bd97485aB3Eec10Bee6336")
    venue = GmxV2()
    venue.map_rest(url("tokens.json"), body("tokens.json"), TS)
    out = venue.map_rest(url("markets_info.json"), {"markets": [body("markets_info.json")["markets"][0], twin]}, TS)
    assert {r.symbol_native for r in out if isinstance(r, Instrument)} == {"ETH-USD-WETH-USDC-111111",
                                                                          "ETH-USD-WETH-USDC-70D955"}


def test_instruments_from_tokens_and_markets():
    venue = referenced()
    instruments = by_native(venue.instruments(TS), Instrument)
    # The swap-only market (index token 0x0) is not a perpetual; the disabled DOGE market is listed
    # with its status but not tradable.
    assert set(instruments) == {"ETH-USD-WETH-USDC", "ETH-USD-WETH-WETH", "BTC-USD-WBTC-USDC", "DOGE-USD-WETH-USDC"}
    assert venue.tradable_symbols() == {"ETH-USD-WETH-USDC", "ETH-USD-WETH-WETH", "BTC-USD-WBTC-USDC"}
    eth = instruments["ETH-USD-WETH-USDC"]
    assert (eth.symbol, eth.market_type, eth.margin, eth.base_asset, eth.quote_asset, eth.settle_asset) == \
        ("ETH-USD-PERP-WETH-USDC", "perpetual", "linear", "ETH", "USD", "WETH-USDC")
    # Sizes are USD: one contract is one USD, so USD notionals are exact and base = USD / price.
    assert (eth.qty_unit, eth.contract_size, eth.contract_size_unit) == ("contracts", "1", "usd")
    assert eth.tick_size == "0.000000000001" and eth.lot_size == decimal_of(1, 30)   # 10^-(30-18), 10^-30
    assert (eth.funding_interval_hours, eth.expiry, eth.status) == (1, None, "listed")
    assert instruments["ETH-USD-WETH-WETH"].settle_asset == "WETH"
    assert instruments["BTC-USD-WBTC-USDC"].tick_size == decimal_of(1, 22)       # BTC index: 8 decimals
    assert instruments["DOGE-USD-WETH-USDC"].status == "disabled"
    with pytest.raises(MalformedMessage, match="/tokens not read"):
        GmxV2().apply_reference("instruments", body("markets_info.json"))


def test_a_market_name_that_cannot_be_read_is_left_out_with_the_reason():
    venue = GmxV2()
    venue.apply_reference("tokens", body("tokens.json"))
    markets = body("markets_info.json")["markets"]
    venue.apply_reference("instruments", {"markets": [dict(markets[0], name="ETH perpetual"), markets[2]]})
    assert venue.tradable_symbols() == {"BTC-USD-WBTC-USDC"}
    assert "not '<index>/USD [<long>-<short>]'" in venue.rejected_instruments["ETH perpetual"]


def test_usd_contracts_convert_exactly_in_the_warehouse_and_the_short_side_migrates(tmp_path):
    con = duckdb.connect(str(tmp_path / "w.duckdb"))
    migrate(con)
    usd, base = con.execute("SELECT raw.usd_notional(25000.0, 3456.78, 'contracts', 1.0, 'usd'), "
                            "raw.base_qty(25000.0, 3456.78, 'contracts', 1.0, 'usd')").fetchone()
    assert usd == 25000.0 and base == 25000.0 / 3456.78
    assert "open_interest_short" in [c[0] for c in con.execute("DESCRIBE raw.open_interest").fetchall()]
    # An existing warehouse from before the column (record schema 4) gets it from its migration.
    old = duckdb.connect(str(tmp_path / "old.duckdb"))
    migrate(old)
    old.execute("ALTER TABLE raw.open_interest DROP COLUMN open_interest_short")
    old.execute("DELETE FROM meta.schema_migrations WHERE version >= 9")   # 9 added the column
    migrate(old)
    assert "open_interest_short" in [c[0] for c in old.execute("DESCRIBE raw.open_interest").fetchall()]
    assert "open_interest_short DOUBLE" in raw_table_ddl(OpenInterest)


# --- open interest, prices, funding ------------------------------------------------------------

def test_open_interest_keeps_both_sides_in_usd():
    venue = referenced()
    out = venue.map_rest(url("markets_info.json"), body("markets_info.json"), TS)
    assert not [r for r in out if isinstance(r, Instrument)]     # published at start, unchanged since
    oi = by_native(out, OpenInterest)
    assert set(oi) == {"ETH-USD-WETH-USDC", "ETH-USD-WETH-WETH", "BTC-USD-WBTC-USDC", "DOGE-USD-WETH-USDC"}
    eth = oi["ETH-USD-WETH-USDC"]
    assert (eth.open_interest, eth.open_interest_usd, eth.open_interest_short, eth.qty_unit) == \
        ("45678.912345678901234567890123456789", "45678.912345678901234567890123456789", "38000", "contracts")
    assert (eth.symbol, eth.ts_exchange, eth.ts_recv) == ("ETH-USD-PERP-WETH-USDC", TS // 1_000_000, TS)
    assert (oi["ETH-USD-WETH-WETH"].open_interest, oi["ETH-USD-WETH-WETH"].open_interest_short) == ("1000.5", "0")
    assert (oi["BTC-USD-WBTC-USDC"].open_interest, oi["BTC-USD-WBTC-USDC"].open_interest_short) == ("71250", "80125.5")
    # An unchanged poll is skipped; after REPEAT_S it is restated; a change is emitted at once.
    with pytest.raises(SkipMessage, match="unchanged"):
        venue.map_rest(url("markets_info.json"), body("markets_info.json"), TS + 5 * 10 ** 9)
    again = venue.map_rest(url("markets_info.json"), body("markets_info.json"), TS + gmx_v2.REPEAT_S * 10 ** 9)
    assert len(by_native(again, OpenInterest)) == 4
    changed = body("markets_info.json")
    changed["markets"][0]["openInterestShort"] = "38000000000000000000000000000000001"
    [record] = venue.map_rest(url("markets_info.json"), changed, TS + (gmx_v2.REPEAT_S + 5) * 10 ** 9)
    assert record.open_interest_short == "38000.000000000000000000000000000001"


def test_a_markets_poll_publishes_an_instrument_only_when_it_changed():
    venue = referenced()
    changed = body("markets_info.json")
    changed["markets"][1]["isDisabled"] = True
    out = venue.map_rest(url("markets_info.json"), changed, TS)
    [instrument] = [r for r in out if isinstance(r, Instrument)]
    assert (instrument.symbol_native, instrument.status) == ("ETH-USD-WETH-WETH", "disabled")
    assert "ETH-USD-WETH-WETH" not in venue.tradable_symbols()


def test_oracle_prices_are_the_index_price_of_every_pool_of_the_token():
    venue = referenced()
    out = venue.map_rest(url("prices_tickers.json"), body("prices_tickers.json"), TS)
    prices = {r.symbol_native: (r.index_price, r.mark_price, r.rate, r.ts_exchange) for r in out}
    # mid = (min + max) / 2 / 10^(30 - decimals): ETH 18 decimals, BTC 8; USDC indexes no market, PEPE
    # is not in /tokens, DOGE has no price in the body.
    assert prices == {"ETH-USD-WETH-USDC": ("3456.79", None, None, 1709500000000),
                      "ETH-USD-WETH-WETH": ("3456.79", None, None, 1709500000000),
                      "BTC-USD-WBTC-USDC": ("97123.5", None, None, 1709500001000)}
    assert all(isinstance(r, Funding) and r.interval_hours is None and not r.is_realised for r in out)
    with pytest.raises(SkipMessage, match="unchanged"):
        venue.map_rest(url("prices_tickers.json"), body("prices_tickers.json"), TS + 10 ** 9)


def test_funding_is_the_hourly_rate_in_cex_sign():
    venue = referenced()
    before = by_native(venue.map_rest(url("market_infos.json"), body("market_infos.json"), TS), Funding)
    assert before["ETH-USD-WETH-USDC"].index_price is None        # no oracle price read yet
    venue = referenced()
    venue.map_rest(url("prices_tickers.json"), body("prices_tickers.json"), TS)
    funding = by_native(venue.map_rest(url("market_infos.json"), body("market_infos.json"), TS), Funding)
    hourly = Decimal(3170979198376458650000) * 3600 / Decimal(10) ** 30
    eth = funding["ETH-USD-WETH-USDC"]
    # longsPayShorts: + (longs pay, as on a CEX); the WETH-WETH pool's shorts pay: -.
    assert eth.rate == "0.00001141552511415525114" and Decimal(eth.rate) == hourly
    assert funding["ETH-USD-WETH-WETH"].rate == "-0.0000000036"
    assert funding["BTC-USD-WBTC-USDC"].rate == "0"                 # found by id (no marketTokenAddress)
    assert (eth.interval_hours, eth.next_funding_time, eth.mark_price, eth.index_price, eth.is_realised) == \
        (1, None, None, "3456.79", False)
    assert "DOGE-USD-WETH-USDC" not in funding                      # disabled: not in marketInfos
    with pytest.raises(SkipMessage, match="no markets known"):
        GmxV2().map_rest(url("market_infos.json"), body("market_infos.json"), TS)


# --- liquidations and ADL ------------------------------------------------------------------------

def test_liquidations_are_complete_and_each_is_emitted_once_across_polls():
    venue = referenced()
    out = venue.map_rest(url("liquidations.json"), body("liquidations.json"), TS)
    assert [type(r) for r in out] == [Liquidation, Liquidation]
    eth, btc = out
    assert (eth.symbol_native, eth.order_side, eth.liquidated_position, eth.price, eth.avg_price, eth.qty,
            eth.qty_unit, eth.order_status, eth.is_sampled, eth.ts_exchange) == \
        ("ETH-USD-WETH-USDC", "sell", "long", "3456.78", None, "25000", "contracts", None, False, 1709500010000)
    assert (btc.symbol_native, btc.order_side, btc.liquidated_position, btc.price, btc.qty) == \
        ("BTC-USD-WBTC-USDC", "buy", "short", "97124", "1234.567890123456789012345678901234")
    # The next poll asks from the last second read (timestamp_gte): the same rows come back and are dropped.
    assert orjson.loads(venue.rest_request(url("liquidations.json"))[1])["variables"] == {"since": 1709500012,
                                                                                         "offset": 0}
    with pytest.raises(SkipMessage, match="no new events"):
        venue.map_rest(url("liquidations.json"), body("liquidations.json"), TS + 10 ** 10)
    later = body("liquidations.json")
    rows = later["data"]["positionChanges"]
    rows.append(dict(rows[0], id="0xd4-9", timestamp=1709500012, isLong=False, sizeDeltaUsd="1" + "0" * 33))
    [new] = venue.map_rest(url("liquidations.json"), later, TS + 2 * 10 ** 10)
    assert (new.liquidated_position, new.qty, new.ts_exchange) == ("short", "1000", 1709500012000)


def test_adl_fills_and_their_cursor_are_separate_from_liquidations():
    venue = referenced()
    [fill] = venue.map_rest(url("adl.json"), body("adl.json"), TS)
    assert isinstance(fill, Adl)
    assert (fill.event, fill.deleveraged_position, fill.price, fill.qty, fill.qty_unit, fill.trade_id, fill.state,
            fill.ts_exchange) == ("fill", "short", "3456.79", "5000.5", "contracts", None, None, 1709500020000)
    assert orjson.loads(fill.detail) == {"id": "0xc3d4e5f60718293a4b5c6d7e8f90a1b2c3d4e5f60718293a4b5c6d7e8f90a1b2-5",
                                         "block": 187000040, "sizeDeltaInTokens": "1446581000000000000"}
    assert orjson.loads(venue.rest_request(url("adl.json"))[1])["variables"]["since"] == 1709500020
    assert orjson.loads(venue.rest_request(url("liquidations.json"))[1])["variables"]["since"] != 1709500020
    with pytest.raises(SkipMessage):
        venue.map_rest(url("adl.json"), body("adl.json"), TS)
    # A liquidation row on the ADL query is not what was asked for.
    wrong = {"data": {"positionChanges": [dict(body("liquidations.json")["data"]["positionChanges"][0], id="x-1")]}}
    with pytest.raises(MalformedMessage, match="must be AUTO_DELEVERAGING"):
        venue.map_rest(url("adl.json"), wrong, TS)


def test_events_of_a_market_not_known_yet_wait_for_the_next_poll():
    venue = GmxV2(events_since=SINCE)
    venue.map_rest(url("tokens.json"), body("tokens.json"), TS)
    with pytest.raises(SkipMessage, match="markets not known yet"):
        venue.map_rest(url("liquidations.json"), body("liquidations.json"), TS)
    assert orjson.loads(venue.rest_request(url("liquidations.json"))[1])["variables"]["since"] == 1709500010
    venue.map_rest(url("markets_info.json"), body("markets_info.json"), TS)
    assert len(venue.map_rest(url("liquidations.json"), body("liquidations.json"), TS)) == 2


def test_a_full_page_within_one_second_pages_on_with_an_offset():
    venue = referenced()
    row = body("liquidations.json")["data"]["positionChanges"][0]
    venue._cursor["liquidations"]["since"] = row["timestamp"]
    page = {"data": {"positionChanges": [dict(row, id=f"p-{i}") for i in range(gmx_v2.PAGE_ROWS)]}}
    assert len(venue.map_rest(url("liquidations.json"), page, TS)) == gmx_v2.PAGE_ROWS
    assert orjson.loads(venue.rest_request(url("liquidations.json"))[1])["variables"] == \
        {"since": row["timestamp"], "offset": gmx_v2.PAGE_ROWS}
    rest = {"data": {"positionChanges": [dict(row, id="p-last", timestamp=row["timestamp"] + 1)]}}
    assert len(venue.map_rest(url("liquidations.json"), rest, TS)) == 1
    assert orjson.loads(venue.rest_request(url("liquidations.json"))[1])["variables"] == \
        {"since": row["timestamp"] + 1, "offset": 0}


# --- malformed bodies ----------------------------------------------------------------------------

def test_malformed_bodies_are_dead_lettered_with_their_reasons():
    venue, out = referenced(), []
    handler = FeedHandler(venue, out.append)
    markets = (FIXTURES / "markets_info.json").read_bytes()
    liquidations = body("liquidations.json")
    bad_row = dict(liquidations["data"]["positionChanges"][0], id="0xbad-1", executionPrice="0")
    with_bad_row = {"data": {"positionChanges": [bad_row, *liquidations["data"]["positionChanges"]]}}
    cases = [
        (url("markets_info.json"), b'{"markets": [', "invalid JSON"),
        # A 10^30 integer sent as a JSON number: orjson reads it as a float that has lost digits.
        (url("markets_info.json"), markets.replace(b'"45678912345678901234567890123456789"',
                                                   b"45678912345678901234567890123456789"), "is a JSON number"),
        (url("markets_info.json"), markets.replace(b'"38000000000000000000000000000000000"', b'"-38"'),
         "must be an unsigned integer string"),
        (url("markets_info.json"), b'{"markets": [{"name": "ETH/USD [WETH-USDC]"}]}', "missing field 'marketToken'"),
        (url("prices_tickers.json"), orjson.dumps([dict(body("prices_tickers.json")[0], minPrice="3456900000000000")]),
         "is above maxPrice"),
        (url("prices_tickers.json"), b'{"error": "not found"}', "expected a list of token prices"),
        (url("market_infos.json"), b'{"errors": [{"message": "Cannot query field \\"fundingFactor\\""}], "data": null}',
         "GraphQL error: Cannot query field"),
        (url("liquidations.json"), orjson.dumps(with_bad_row), "row 0xbad-1: positionChanges liquidations: field "
                                                               "'executionPrice' must be > 0"),
    ]
    for source, raw, _ in cases:
        handler.on_rest(source, raw, TS)
    letters = [r for r in out if isinstance(r, DeadLetter)]
    assert len(letters) == len(cases) == handler.stats.messages
    for letter, (source, raw, reason) in zip(letters, cases):
        assert reason in letter.reason and letter.source == source and letter.raw == raw.decode(), letter.reason
    assert "skipped from now on" in letters[-1].reason
    # The bad row was dead-lettered once: the same page polled again yields the good rows.
    handler.on_rest(url("liquidations.json"), orjson.dumps(with_bad_row), TS + 10 ** 10)
    assert [r.qty for r in out if isinstance(r, Liquidation)] == ["25000", "1234.567890123456789012345678901234"]
    assert handler.stats.accounted == handler.stats.messages


# --- recordings ------------------------------------------------------------------------------------

ORDER = ["tokens.json", "markets_info.json", "prices_tickers.json", "market_infos.json", "liquidations.json",
         "adl.json"]


def write_recording(path: Path, bare: bool = False) -> Path:
    lines = [orjson.dumps(body(name)) if bare else
             orjson.dumps({"recv_ns": TS + i * 10 ** 9, "kind": "rest", "source": url(name), "msg": body(name)})
             for i, name in enumerate(ORDER)]
    path.write_bytes(b"\n".join(lines) + b"\n")
    return path


def test_recognizes_gmx_bodies_and_no_other_venue_claims_them():
    bodies = [body(name) for name in ORDER]
    venue = GmxV2()
    assert all(venue.recognizes(b) for b in bodies)
    assert likely_venues(bodies) == [("gmx-v2", len(bodies))]
    others = [orjson.loads(line) for name in ("okx/documented_examples.jsonl", "bybit/documented.jsonl",
                                              "hyperliquid/documented.jsonl", "dydx/documented.jsonl")
              for line in (FIXTURES.parent / name).read_bytes().splitlines() if line.strip()]
    assert others and not any(venue.recognizes(m) for m in others)
    assert not venue.recognizes({"markets": []}) and not venue.recognizes([]) and not venue.recognizes({"data": {}})
    assert venue.message_time_ms(body("prices_tickers.json")) == 1709500001000
    assert venue.message_time_ms(body("liquidations.json")) == 1709500010000


@pytest.mark.parametrize("bare", [False, True], ids=["perpflow-jsonl", "bare-bodies"])
def test_a_recording_of_polled_bodies_replays(tmp_path, bare):
    path = write_recording(tmp_path / "gmx.jsonl", bare)
    check_replayable("gmx-v2", [path])
    out = []
    report = replay("gmx-v2", [path], out.append)
    assert report.all_accounted and not report.stats.dead_letters, report.stats
    counts = Counter(r.record_type for r in out)
    # 4 instruments and 4 OI records; 3 oracle prices + 3 funding rates; 2 liquidations; 1 ADL fill.
    assert counts == {"instrument": 4, "open_interest": 4, "funding": 6, "liquidation": 2, "adl": 1}, counts
    kept = []
    replay("gmx-v2", [path], kept.append, symbols=["BTC-USD-WBTC-USDC"])
    assert {r.symbol for r in kept} == {"BTC-USD-PERP-WBTC-USDC"}


def test_replaying_another_venues_traffic_as_gmx_names_that_venue(tmp_path):
    from pipelines.replay import WrongVenue
    with pytest.raises(WrongVenue, match="run with --exchange okx-swap"):
        check_replayable("gmx-v2", [FIXTURES.parent / "okx" / "documented_examples.jsonl"])


# --- the live service on polls alone -------------------------------------------------------------

class GmxServer:
    """A local HTTP server answering like GMX's oracle REST API and Subsquid, from the fixtures.

    With ``faults``, ``/markets/info`` answers its third request with a body whose open interest is
    a JSON number and ``/prices/tickers`` its second and third with 503. positionChanges honours
    the cursor (``since``, ``offset``) over ``events``, to which a test adds while the service runs."""

    def __init__(self, faults: bool = True):
        self.faults = faults
        self.requests: Counter = Counter()
        self.times: list[tuple[float, str]] = []
        self.events: list[dict] = []
        self.since_asked: list[int] = []
        self.kinds_asked: set[str] = set()
        app = web.Application()
        app.router.add_get("/tokens", self.fixed("tokens.json"))
        app.router.add_get("/markets/info", self.markets)
        app.router.add_get("/prices/tickers", self.prices)
        app.router.add_post("/api/graphql", self.graphql)
        self.runner = web.AppRunner(app)

    async def start(self) -> str:
        await self.runner.setup()
        site = web.TCPSite(self.runner, "127.0.0.1", 0)
        await site.start()
        port = site._server.sockets[0].getsockname()[1]
        return f"http://127.0.0.1:{port}"

    def count(self, request) -> int:
        self.requests[request.path] += 1
        self.times.append((time.monotonic(), request.path))
        return self.requests[request.path]

    def fixed(self, name):
        async def handler(request):
            self.count(request)
            return web.Response(body=(FIXTURES / name).read_bytes(), content_type="application/json")
        return handler

    async def markets(self, request):
        n = self.count(request)
        raw = (FIXTURES / "markets_info.json").read_bytes()
        if n == 3 and self.faults:
            raw = raw.replace(b'"45678912345678901234567890123456789"', b"45678912345678901234567890123456789")
        else:   # open interest grows by one USD per request, so every poll is news
            raw = raw.replace(b'"38000000000000000000000000000000000"', f'"{38000 + n}{"0" * 30}"'.encode())
        return web.Response(body=raw, content_type="application/json")

    async def prices(self, request):
        n = self.count(request)
        if n in (2, 3) and self.faults:
            return web.Response(status=503, text="upstream timeout")
        # a live oracle: its prices were updated just now (the venue's clock follows updatedAt)
        raw = re.sub(rb'"updatedAt": [0-9]+', f'"updatedAt": {int(time.time())}'.encode(),
                     (FIXTURES / "prices_tickers.json").read_bytes())
        return web.Response(body=raw, content_type="application/json")

    async def graphql(self, request):
        self.count(request)
        query = await request.json()
        if "marketInfos" in query["query"]:
            return web.json_response(body("market_infos.json"))
        kind = "LIQUIDATION" if "type_eq: LIQUIDATION" in query["query"] else "AUTO_DELEVERAGING"
        since, offset = query["variables"]["since"], query["variables"]["offset"]
        self.since_asked.append(since)
        self.kinds_asked.add(kind)
        rows = sorted((e for e in self.events if e["type"] == kind and e["timestamp"] >= since),
                      key=lambda e: (e["timestamp"], e["id"]))
        return web.json_response({"data": {"positionChanges": rows[offset:offset + 500]}})


class QuickGmx(GmxV2):
    """GMX with the polls, and so the budget, 20x larger, so a test sees many rounds in seconds."""

    REST_WEIGHT_LIMIT = GmxV2.REST_WEIGHT_LIMIT * 20

    def polls(self, rest_url: str, symbols: list[str]) -> list[Poll]:
        return [Poll(p.url, p.interval_s / 20, p.weight) for p in super().polls(rest_url, symbols)]


def gmx_service(venue, server_url: str, bootstrap: str, run_dir: Path, seconds: float | None) -> IngestService:
    config = IngestConfig(symbols=["ETH-USD-WETH-USDC", "BTC-USD-WBTC-USDC"], ws_url="", rest_url=server_url,
                          bootstrap=bootstrap, run_dir=run_dir, duration_s=seconds, backoff_base_s=0.2,
                          backoff_max_s=1.0)
    sink = RecordingSink(bootstrap, run_dir / "spill.jsonl", delivery_timeout_ms=5000)
    return IngestService(venue, config, sink=sink)


def test_the_service_runs_on_polls_alone_and_survives_http_errors_and_bad_bodies(tmp_path, broker):
    server = GmxServer()
    event = body("liquidations.json")["data"]["positionChanges"][0]
    adl = body("adl.json")["data"]["positionChanges"][0]

    async def until(condition, what: str, timeout: float = 120.0) -> None:
        deadline = time.monotonic() + timeout
        while not condition():
            assert time.monotonic() < deadline, f"gave up waiting for {what}"
            await asyncio.sleep(0.05)

    def status_file() -> dict:
        try:
            return json.loads((tmp_path / "ingest-gmx-v2.json").read_text())
        except (FileNotFoundError, json.JSONDecodeError):
            return {}

    async def main() -> IngestService:
        base = await server.start()
        try:
            venue = QuickGmx(graphql_url=f"{base}/api/graphql")
            server.start_s = int(time.time())
            service = gmx_service(venue, base, broker.bootstrap, tmp_path, seconds=None)
            task = asyncio.create_task(service.run())
            # Events are read from the service's first query on: new ones appear after it asked.
            await until(lambda: len(server.kinds_asked) == 2, "the first liquidation and ADL queries")
            now = int(time.time())
            server.events += [dict(event, id="live-1", timestamp=now), dict(adl, id="live-adl", timestamp=now)]
            await until(lambda: len(status_file().get("polls", {})) == 5, "the status file with its polls")
            status = status_file()
            assert status["connections"] == {}
            server.events.append(dict(event, id="live-2", timestamp=int(time.time()), isLong=False))

            def seen_everything() -> bool:
                records = service.sink.records
                polls = service.status()["polls"]
                prices = next((p for url, p in polls.items() if url.endswith("/prices/tickers")), {})
                return (sum(isinstance(r, Liquidation) for r in records) >= 2
                        and any(r.record_type == "adl" for r in records)
                        and any(isinstance(r, DeadLetter) for r in records)
                        and prices.get("ok", 0) >= 5 and prices.get("failed", 0) >= 1
                        and server.requests["/markets/info"] >= 10 and server.requests["/api/graphql"] >= 20
                        and len(server.since_asked) >= 10)
            await until(seen_everything, "every event, the failed and good polls and the dead letter")
            service.request_stop()
            await task
            return service
        finally:
            await server.runner.cleanup()

    service = asyncio.run(main())
    records = service.sink.records
    kinds = Counter(r.record_type for r in records)
    assert server.requests["/markets/info"] >= 10 and server.requests["/api/graphql"] >= 20, server.requests

    instruments = {r.symbol_native for r in records if isinstance(r, Instrument)}
    assert instruments == {"ETH-USD-WETH-USDC", "BTC-USD-WBTC-USDC"}           # the subscribed ones only
    oi = [r for r in records if isinstance(r, OpenInterest)]
    assert len(oi) >= 10 and all(r.open_interest_short is not None for r in oi)
    assert {r.symbol_native for r in oi} == instruments
    funding = [r for r in records if isinstance(r, Funding)]
    assert any(r.rate == "0.00001141552511415525114" for r in funding)
    assert any(r.rate is None and r.index_price == "97123.5" for r in funding)
    # Each event exactly once, though every poll asked from the last second read again.
    liquidations = [r for r in records if isinstance(r, Liquidation)]
    assert sorted(r.liquidated_position for r in liquidations) == ["long", "short"] and kinds["adl"] == 1
    assert all(not r.is_sampled for r in liquidations)
    # The cursor started at the service's start and only moved on from there.
    assert len(server.since_asked) >= 10 and min(server.since_asked) >= server.start_s - 1

    # The HTTP errors: a feed event each time both attempts failed, and the poll went on.
    failed = [orjson.loads(r.detail) for r in records if isinstance(r, FeedEvent) and r.kind == "poll_failed"]
    assert failed and all(f["url"].endswith("/prices/tickers") and "HTTP 503" in f["reason"] for f in failed)
    polls = service.status()["polls"]
    prices = polls[next(u for u in polls if u.endswith("/prices/tickers"))]
    assert prices["failed"] >= 1 and prices["ok"] >= 5 and prices["failing"] is None
    # The malformed body: a dead letter with the reason, in md.dlq too; the poll went on.
    [letter] = [r for r in records if isinstance(r, DeadLetter)]
    assert letter.source.endswith("/markets/info") and "is a JSON number" in letter.reason
    assert (letter.reason, letter.raw) in dlq_contents(broker.bootstrap)
    assert service.events["task_errors"] == 0 and service.failure is None
    final = json.loads((tmp_path / "ingest-gmx-v2.json").read_text())
    assert final["state"] == "stopped" and final["exit_code"] == 0 and final["connections"] == {}


def test_polls_stay_within_the_venues_rest_budget(tmp_path, broker):
    server = GmxServer(faults=False)

    class Greedy(GmxV2):
        REST_WEIGHT_LIMIT = 5      # the polls may spend 4 per window

        def polls(self, rest_url, symbols):
            return [Poll(f"{rest_url}/prices/tickers", 0.05), Poll(self.graphql_request("liquidations"), 0.05)]

    async def main() -> IngestService:
        base = await server.start()
        try:
            service = gmx_service(Greedy(graphql_url=f"{base}/api/graphql"), base, broker.bootstrap, tmp_path,
                                  seconds=6.5)
            service.POLL_WINDOW_S = 2.0
            await service.run()
            return service
        finally:
            await server.runner.cleanup()

    service = asyncio.run(main())
    # the first /prices/tickers is the reference read at start (the venue's clock), not a poll
    reference = next(t for t, path in server.times if path == "/prices/tickers")
    polled = [t for t, path in server.times if path in ("/prices/tickers", "/api/graphql") and t != reference]
    assert len(polled) >= 8, polled                      # every window spent its share, the polls went on
    limit = service.POLL_BUDGET_SHARE * Greedy.REST_WEIGHT_LIMIT
    for i, t in enumerate(polled):   # arrival times: a little jitter allowed at the window's edge
        in_window = [u for u in polled[i:] if u - t < service.POLL_WINDOW_S - 0.1]
        assert len(in_window) <= limit, (len(in_window), polled)
    assert service.events["polls_deferred"] >= 3
