"""GMX v2 on Arbitrum (oracle REST ``https://arbitrum-api.gmxinfra.io``, Subsquid GraphQL
``https://gmx.squids.live/gmx-synthetics-arbitrum:prod/api/graphql``): polled REST bodies -> records.

Sources: ``shared/specs/exchanges.md`` §2.7 (every endpoint, field and formula used here), §2.8 (long
vs short OI) and §0.5; ``shared/specs/analytics.md`` §9.3 (pool-counterparty OI) and §9.6 (ADL). §2.7
names Subsquid's ``positionChanges`` without listing its fields; those (``id type market isLong
sizeDeltaUsd sizeDeltaInTokens executionPrice timestamp block``) are from the introspected schema §2.7
cites (api-evangelist/gmx ``graphql/gmx-schema.graphql``, June 2026). Every GMX quirk lives here and
nowhere else:
  * **no order book, no websocket**: trades execute against GM pools at the oracle price ± a price
    impact computed from the long/short OI imbalance. ``ws_connections`` is empty and
    ``HAS_ORDER_BOOK`` False; everything is polled over public HTTP (``polls``), without a key;
  * fixed point: USD amounts (open interest, sizes) and rates are integers scaled by 10^30; a token
    price is per *smallest unit* of the token, scaled by 10^30, so the USD price of one token is
    ``int(price) / 10^(30 - decimals)`` with the token's ``decimals`` from ``GET /tokens``. The
    spec's ticker example (``minPrice`` 3456789 followed by 27 zeros) does not fit that formula for
    any token decimals (read with 18 it is 3.5e21 USD): the formula is followed, the example's
    digits are not. The 10^30 integers are decimal digit strings (the tickers example; Subsquid's
    ``BigInt``); orjson reads an integer JSON *number* beyond 64 bits as a float, which has lost
    digits, so such a number is refused (dead-lettered) rather than stored rounded;
  * ``GET /markets/info`` -> ``{"markets": [{marketToken, name, indexToken, longToken,
    shortToken, isListed, isDisabled, listingDate, openInterestLong, openInterestShort,
    availableLiquidity*, poolAmount*, fundingRate*, borrowingRate*, netRate*, ...}]}``: values
    are pulled every 5000 ms behind a 1 s cache; ``GET /markets`` (the same identities, 60 s
    cache) is not needed. Swap-only markets have the zero address as index token;
  * market names look like ``ETH/USD [WETH-USDC]``: index asset / USD, then the pool's long and
    short tokens. **Several pools share an index token** (BTC/USD [WBTC-USDC], [BTC-BTC], ...):
    each pool is a market of its own with its own OI, funding and liquidity; the market token
    address is the unique key;
  * ``GET /prices/tickers`` -> ``[{tokenSymbol, tokenAddress, minPrice, maxPrice, oracleDecimals,
    updatedAt}]``, per token (not per market); GMX's price of a token is (min + max) / 2.
    ``updatedAt`` is in seconds in the spec's example (a 13-digit value is read as milliseconds);
  * long and short open interest **differ**: the pool, not another trader, is every position's
    counterparty. Both are USD (``openInterestLong``/``openInterestShort``);
  * funding (Subsquid ``marketInfos``): only the larger side pays; the per-second factor
    ``fundingFactorPerSecond`` (10^30) is what it pays, ``longsPayShorts`` says which side that
    is; the other side receives about rate x payingOI / receivingOI [unverified]. The public API's
    ``fundingRateLong``/``fundingRateShort`` in ``/markets/info`` are rates of a period the spec
    does not confirm (eth_defi reads them as annualised [unverified]): not used. Borrowing fees
    (``borrowingRate*``) are paid by positions to the pool, not between traders;
  * liquidations and ADL are public and **complete** (on-chain events, indexed by Subsquid with
    some lag [unverified]): ``positionChanges`` of ``type`` LIQUIDATION and AUTO_DELEVERAGING.
    §2.7's ``tradeActions`` query (orderType 7 = Liquidation) names the market ``marketAddress``
    where the introspected schema calls it ``market``, and ADL orders are ordinary decrease
    orders there (orderType 4), so ``positionChanges`` serves both. At most 500 rows per page;
    ``timestamp`` is the block time in **seconds** and several Arbitrum blocks share a second;
    ``isLong`` is the side of the position the change closed;
  * the public endpoints document no rate limit; the oracle REST has fallback hosts
    (``arbitrum-api-fallback.gmxinfra.io``, ``...gmxinfra2.io``) perpflow does not switch to.

Choices where the spec leaves one:
  * symbols: the native symbol is the market name made CLI-safe, ``<index>-USD-<long>-<short>``
    upper case (``ETH/USD [WETH-USDC]`` -> ``ETH-USD-WETH-USDC``; ``USDC.e`` keeps its dot:
    ``USDC.E``), normalized ``ETH-USD-PERP-WETH-USDC``: perpflow's ``BASE-QUOTE-PERP`` with the
    pool as a suffix, so the base asset (``asset_of``) is still the first part and a by-index-token
    aggregate (§2.7) groups the pools. Two markets whose names would give one symbol both get
    ``-`` + the first six hex digits of their market token (``ETH-USD-WETH-USDC-70D955``). A name
    that does not read as ``<index>/USD [<long>-<short>]`` is left out and listed in
    ``rejected_instruments`` with the reason;
  * sizes: GMX sizes are USD notionals, so every size (open interest, liquidation, ADL) is
    ``qty_unit`` "contracts" of ``contract_size`` 1, ``contract_size_unit`` "usd": the warehouse's
    contract conversion (``warehouse.units``) then gives USD exactly (``qty * 1``) and base units
    as ``qty / price``, as for inverse contracts, although the market is ``margin`` "linear"
    (USD-quoted, collateral in the pool's tokens);
  * instruments (from ``/markets/info``, token decimals from ``/tokens``): perpetual, linear,
    quote USD, ``settle_asset`` the pool's tokens as the name gives them (``WETH-USDC``; one token
    where both are the same, ``BTC``): profits are paid out of the pool. ``tick_size`` =
    10^-(30 - index decimals), the step of the oracle's fixed-point price; ``lot_size`` = 10^-30
    (USD); ``funding_interval_hours`` 1 (funding accrues continuously; perpflow quotes it
    hourly); status "disabled" (``isDisabled``), else "listed" or "unlisted" (``isListed``).
    ``tradable_symbols`` are the listed markets that are not disabled. ``/tokens`` is reference
    data read before the markets (an instrument without its index token's decimals cannot be
    made), and the markets list is both reference data and a 5 s poll: a poll emits an
    ``Instrument`` only for a market whose instrument changed since it was last published;
  * open interest: one ``OpenInterest`` per market, ``open_interest`` = ``open_interest_usd`` =
    the **long** side, ``open_interest_short`` = the short side (both USD, the unit above). CEX
    venues' one-sided figure is every position's side at once; GMX's two sides are separate
    books against the pool, which is why the short side has its own column (analytics.md §9.3:
    store both; a sum is pool-counterparty OI, not comparable to a CEX's one-sided total
    [assumption]). The body has no time of its own: ``ts_exchange`` is the venue's clock
    (``VenueClock``: the oracle's newest ``updatedAt`` plus the receive time elapsed since; the
    oracle prices are read once at start, as reference "clock", so the clock is known early);
  * funding: one ``Funding`` per market from ``marketInfos`` (``where: {isDisabled_eq: false}``),
    the hourly rate in CEX sign (+ = longs pay) = fundingFactorPerSecond / 10^30 x 3600 x
    (longsPayShorts ? 1 : -1), computed exactly in decimal; ``interval_hours`` 1,
    ``next_funding_time`` None (continuous), ``mark_price`` None (GMX values positions at the
    oracle price; there is no mark of its own), ``index_price`` the index token's last oracle
    mid (None until ``/prices/tickers`` was read), ``is_realised`` False, ``ts_exchange`` the
    venue's clock, as above. A market is found by ``marketTokenAddress``, else ``id`` (the market token in
    §2.7's query);
  * oracle prices: a price-only ``Funding`` (``rate`` None, ``index_price`` = the mid) for every
    market of a token whose price moved, ``ts_exchange`` = ``updatedAt``, as OKX's index-tickers;
  * repeats: OI, funding and prices are emitted when they changed since the market's previous
    record, or when that record is ``REPEAT_S`` old (so an as-of join with a 60 s staleness bound
    always finds GMX in a quiet market);
  * borrowing rates are **not collected yet**: no record holds a per-side rate paid to a pool
    (``Funding.rate`` is trader-to-trader funding), and analytics.md does not use them;
  * liquidations: ``Liquidation`` with ``order_side`` "sell" for a long (the side that closes
    it), ``price`` = ``executionPrice`` in USD (index decimals), ``avg_price`` None, ``qty`` =
    ``sizeDeltaUsd`` USD (the unit above), ``order_status`` None, ``is_sampled`` False: GMX's
    list is complete. ADL: ``Adl`` ``event`` "fill", ``deleveraged_position`` = the side of the
    (profitable) position reduced, price and qty as for liquidations, ``trade_id`` None (perpflow
    collects no GMX trades), ``detail`` = ``{"id", "block", "sizeDeltaInTokens"}`` verbatim;
  * event cursor: one per query (liquidations, ADL), ``timestamp_gte`` the latest timestamp read,
    ordered ``[timestamp_ASC, id_ASC]``, 500 rows a page; rows at that timestamp come again on the
    next poll and are dropped by ``id`` (the last ``EVENTS_REMEMBERED`` ids are kept). A full page
    whose rows all share the cursor's second is continued with ``offset`` (a new row of an earlier
    id indexed into that second later would then be missed). A row whose market or index token is
    not known yet is left for the next poll (the cursor stays at its second). A row that cannot be
    read dead-letters its body once, with its id, and is skipped from then on, so one bad row
    cannot stall the list. The cursor starts at "now" by the venue's clock when the first query
    goes out: events while
    perpflow is stopped are not fetched on the next start (no resume point is kept yet;
    ``GmxV2(events_since=...)`` starts elsewhere);
  * polls (``polls``): ``/markets/info`` and ``/prices/tickers`` every ``VALUES_INTERVAL_S`` (the
    5 s value cadence), ``marketInfos`` every ``FUNDING_INTERVAL_S``, each event query every
    ``EVENTS_INTERVAL_S``: 42 requests a minute, inside ``REST_WEIGHT_LIMIT`` (perpflow's own
    budget of one request a second across both hosts, GMX publishing none);
  * REST naming: a GraphQL query is named ``<graphql url>?query=marketInfos|liquidations|adl`` and
    ``rest_request`` turns it into a POST of ``{"query", "variables"}`` with the cursor; the
    GraphQL URL is the constructor's, except that with a ``--rest-url`` other than GMX's own (a
    mirror, or perpflow's simulator) it is ``<rest-url>/graphql``;
  * recordings: bodies replay from perpflow's JSONL (``{"recv_ns", "kind": "rest", "source", "msg"}``)
    or as bare lines, whose endpoint ``recorded_rest`` tells from the body's shape; a GraphQL
    ``errors`` answer is dead-lettered with GMX's message.
"""

from __future__ import annotations

import re
import time
from collections import OrderedDict
from dataclasses import asdict
from typing import ClassVar, NamedTuple
from urllib.parse import parse_qs, urlsplit, urlunsplit

import orjson

from ingest.records import Adl, Funding, Instrument, Liquidation, OpenInterest
from ingest.venue import BookResync, Coverage, MalformedMessage, Poll, SkipMessage, Venue, VenueClock, WsConnection
from ingest.venues.fields import field

DEFAULT_REST_URL = "https://arbitrum-api.gmxinfra.io"
DEFAULT_GRAPHQL_URL = "https://gmx.squids.live/gmx-synthetics-arbitrum:prod/api/graphql"

USD_DECIMALS = 30                   # every USD amount and rate is an integer x 10^30
FUNDING_INTERVAL_HOURS = 1
SECONDS_PER_HOUR = 3600
VALUES_INTERVAL_S = 5.0             # /markets/info and /prices/tickers: values pulled every 5000 ms
FUNDING_INTERVAL_S = 10.0           # Subsquid marketInfos
EVENTS_INTERVAL_S = 10.0            # Subsquid positionChanges, per query
REPEAT_S = 30                       # an unchanged value is emitted again after this long
PAGE_ROWS = 500                     # Subsquid's page limit
EVENTS_REMEMBERED = 100_000         # event ids kept for de-duplication; the oldest are forgotten first
ZERO_ADDRESS = "0x" + "0" * 40      # the index token of swap-only markets

EVENT_TYPES = {"liquidations": "LIQUIDATION", "adl": "AUTO_DELEVERAGING"}
QUERIES = ("marketInfos", *EVENT_TYPES)

MARKET_INFOS_QUERY = ("{marketInfos(limit: 500, where: {isDisabled_eq: false}) "
                      "{id marketTokenAddress fundingFactorPerSecond longsPayShorts}}")
POSITION_CHANGES_QUERY = ("query($since: Int!, $offset: Int!) {positionChanges(where: {type_eq: %s, "
                          "timestamp_gte: $since}, orderBy: [timestamp_ASC, id_ASC], limit: 500, offset: $offset) "
                          "{id type market isLong sizeDeltaUsd sizeDeltaInTokens executionPrice timestamp block}}")

_ADDRESS = re.compile(r"0x[0-9a-fA-F]{40}")
_UNSIGNED = re.compile(r"0|[1-9][0-9]*")
_MARKET_NAME = re.compile(r"([A-Za-z0-9.]+)/USD \[([A-Za-z0-9.]+)-([A-Za-z0-9.]+)\]")
NATIVE_PATTERN = r"[A-Z0-9.]+-USD-[A-Z0-9.]+-[A-Z0-9.]+(?:-[0-9A-F]{6})?"
_NATIVE = re.compile(r"([A-Z0-9.]+)-USD-([A-Z0-9.]+-[A-Z0-9.]+(?:-[0-9A-F]{6})?)")


def decimal_of(value: int, scale: int) -> str:
    """``value / 10^scale`` as a plain decimal string, exactly: (15 x 10^32, 30) -> "1500"."""
    sign = "-" if value < 0 else ""
    digits = str(abs(value))
    if scale <= 0:
        return sign + digits + "0" * -scale if value else "0"
    digits = digits.rjust(scale + 1, "0")
    whole, fraction = digits[:-scale], digits[-scale:].rstrip("0")
    return sign + whole + ("." + fraction if fraction else "") if value else "0"


def normalize_symbol(native: str) -> str:
    """ETH-USD-WETH-USDC -> ETH-USD-PERP-WETH-USDC (the pool stays a suffix)."""
    match = _NATIVE.fullmatch(native)
    if match is None:
        raise MalformedMessage(f"{native!r} is not a GMX market symbol such as ETH-USD-WETH-USDC")
    return f"{match[1]}-USD-PERP-{match[2]}"


def _address(obj, key: str, what: str) -> str:
    """An address, lower case (the REST API writes them checksummed, Subsquid in lower case)."""
    value = field(obj, key, what)
    if type(value) is not str or not _ADDRESS.fullmatch(value):
        raise MalformedMessage(f"{what}: field {key!r} must be an address 0x + 40 hex digits, got {value!r}")
    return value.lower()


def _flag(obj, key: str, what: str) -> bool:
    value = field(obj, key, what)
    if type(value) is not bool:
        raise MalformedMessage(f"{what}: field {key!r} must be true or false, got {value!r}")
    return value


def _small_int(obj, key: str, what: str, low: int = 0, high: int = 1 << 62) -> int:
    value = field(obj, key, what)
    if type(value) is not int or not low <= value <= high:
        raise MalformedMessage(f"{what}: field {key!r} must be an integer from {low} to {high}, got {value!r}")
    return value


def _fixed(obj, key: str, what: str, *, positive: bool = False) -> int:
    """A 10^30 fixed-point integer (or a price per token unit), >= 0 (> 0 with ``positive``)."""
    value = field(obj, key, what)
    if type(value) is float:
        raise MalformedMessage(f"{what}: field {key!r} is a JSON number read as {value!r}: fixed-point values "
                               "must be integer strings (a float has lost digits)")
    if type(value) is int:
        number = value
    elif type(value) is str and _UNSIGNED.fullmatch(value):
        number = int(value)
    else:
        raise MalformedMessage(f"{what}: field {key!r} must be an unsigned integer string, got {value!r}")
    if number < 0 or (positive and number == 0):
        raise MalformedMessage(f"{what}: field {key!r} must be {'> 0' if positive else '>= 0'}, got {value!r}")
    return number


def _seconds_to_ms(value: int) -> int:
    return value if value >= 10 ** 12 else value * 1000


class _Token(NamedTuple):
    symbol: str
    decimals: int


class _Market(NamedTuple):
    address: str          # market token, lower case: the unique key
    native: str
    base: str
    long: str             # pool tokens as the name spells them
    short: str
    index: str            # index token address, lower case
    listed: bool
    disabled: bool

    @property
    def status(self) -> str:
        return "disabled" if self.disabled else "listed" if self.listed else "unlisted"


def _rows(body, key: str, what: str) -> list[dict]:
    """``data.<key>`` of a GraphQL answer; an ``errors`` answer is the venue's refusal."""
    if not isinstance(body, dict):
        raise MalformedMessage(f"{what}: expected a JSON object, got {type(body).__name__}")
    errors = body.get("errors")
    if errors:
        first = errors[0] if isinstance(errors, list) and errors else errors
        message = first.get("message") if isinstance(first, dict) else first
        raise MalformedMessage(f"{what}: GraphQL error: {str(message)[:300]}")
    data = field(body, "data", what)
    rows = field(data, key, what)
    if not isinstance(rows, list) or not all(isinstance(row, dict) for row in rows):
        raise MalformedMessage(f"{what}: data.{key} must be a list of objects")
    return rows


class GmxV2(Venue):
    exchange = "gmx-v2"
    default_ws_url = ""                      # no websocket: everything is polled
    default_rest_url = DEFAULT_REST_URL
    BOOK_RESYNC = BookResync.RESUBSCRIBE     # unused: there is no book
    HAS_ORDER_BOOK = False
    SYMBOL_PATTERN = NATIVE_PATTERN
    SYMBOL_EXAMPLES = "ETH-USD-WETH-USDC,BTC-USD-WBTC-USDC"
    SILENCE_LIMIT_S: ClassVar[dict[str, float | None]] = {}
    TRADE_STREAM = ""
    BOOK_STREAM = ""
    REST_WEIGHT_LIMIT = 60                   # per minute, one per request: perpflow's own budget
    WEIGHT_HEADER = None
    rules = None
    COVERAGE = {
        "trades": (Coverage.UNAVAILABLE, "not collected: GMX trades are position changes against the pool "
                                         "(Subsquid tradeActions), not a public tape"),
        "book": (Coverage.UNAVAILABLE, "no order book: trades execute against GM pools at the oracle price "
                                       "± a price impact from the long/short imbalance"),
        "funding": (Coverage.SAMPLED, "Subsquid marketInfos fundingFactorPerSecond every 10 s, as an hourly rate "
                                      "(funding accrues continuously; only the larger side pays)"),
        "mark_price": (Coverage.UNAVAILABLE, "no mark price apart from the oracle: positions are valued at the "
                                             "oracle price, kept as index_price"),
        "index_price": (Coverage.SAMPLED, "oracle prices (/prices/tickers, (min + max) / 2) every 5 s"),
        "open_interest": (Coverage.SAMPLED, "/markets/info every 5 s: long side in open_interest, short side in "
                                            "open_interest_short (USD; the pool is the counterparty)"),
        "liquidations": (Coverage.COMPLETE, "every liquidation (on-chain; Subsquid positionChanges LIQUIDATION, "
                                            "polled every 10 s); events while perpflow is stopped are not fetched"),
        "adl": (Coverage.COMPLETE, "every ADL fill (Subsquid positionChanges AUTO_DELEVERAGING, polled every 10 s); "
                                   "events while perpflow is stopped are not fetched"),
        "long_short_ratios": (Coverage.UNAVAILABLE, "no account statistic; the natural long/short ratio is the pool's "
                                                    "long vs short open interest in USD, raw.open_interest "
                                                    "open_interest / open_interest_short"),
        "taker_volumes": (Coverage.UNAVAILABLE, "no taker-volume statistic; every trade is against the pool"),
    }

    normalize_symbol = staticmethod(normalize_symbol)

    def __init__(self, graphql_url: str = DEFAULT_GRAPHQL_URL, events_since: int | None = None):
        """``events_since``: the first block second to ask liquidations and ADL fills from (default:
        now by the venue's clock, when the first query goes out)."""
        self.graphql_url = graphql_url.rstrip("/")
        self._tokens: dict[str, _Token] = {}            # token address -> symbol, decimals
        self._markets: dict[str, _Market] = {}          # market token address -> market
        self.rejected_instruments: dict[str, str] = {}  # market name or address -> why it is left out
        self._published: dict[str, dict] = {}           # native -> the last instrument content emitted
        self._mids: dict[str, tuple[str, int]] = {}     # token address -> (oracle mid, ts_exchange ms)
        self._last: dict[tuple, tuple] = {}             # (kind, key) -> (values, ts_recv) last emitted
        self._seen: OrderedDict = OrderedDict()         # event ids read (or dead-lettered)
        self.clock = VenueClock()                       # from oracle updatedAt and event timestamps
        # None: "now" by the venue's clock when the first query goes out
        self._cursor: dict[str, dict] = {kind: {"since": events_since, "offset": 0} for kind in EVENT_TYPES}

    # --- streams: none -------------------------------------------------------------------------

    def ws_connections(self, ws_url: str, symbols: list[str]) -> list[WsConnection]:
        return []

    def stream_kind(self, stream: str) -> str:
        return stream

    def stream_symbol(self, stream: str) -> str:
        return stream

    def stream_of(self, frame: str) -> str | None:
        return None

    def map_ws(self, message, ts_recv: int) -> list:
        """GMX has no websocket; a bare JSONL line holding a GMX REST body is mapped as that body."""
        rest = self.recorded_rest(message)
        if rest is None:
            raise MalformedMessage("GMX has no websocket and this is not one of its REST bodies")
        return self.map_rest(rest[0], rest[1], ts_recv)

    # --- polls and requests --------------------------------------------------------------------

    def graphql_request(self, query: str) -> str:
        """perpflow's name of a Subsquid query (see ``rest_request``)."""
        return f"{self.graphql_url}?query={query}"

    def polls(self, rest_url: str, symbols: list[str]) -> list[Poll]:
        base = rest_url.rstrip("/")
        if self.graphql_url == DEFAULT_GRAPHQL_URL and base != DEFAULT_REST_URL:
            self.graphql_url = f"{base}/graphql"    # a mirror (or the simulator) serves both
        return [Poll(f"{base}/markets/info", VALUES_INTERVAL_S), Poll(f"{base}/prices/tickers", VALUES_INTERVAL_S),
                Poll(self.graphql_request("marketInfos"), FUNDING_INTERVAL_S),
                *(Poll(self.graphql_request(kind), EVENTS_INTERVAL_S) for kind in EVENT_TYPES)]

    def rest_request(self, url: str) -> tuple[str, bytes | None]:
        """``<graphql>?query=liquidations`` -> POST ``<graphql>`` with the query and the cursor."""
        parts = urlsplit(url)
        if not parts.path.endswith("/graphql"):
            return url, None
        query = self._query_of(url)
        target = urlunsplit((parts.scheme, parts.netloc, parts.path, "", ""))
        if query == "marketInfos":
            return target, orjson.dumps({"query": MARKET_INFOS_QUERY})
        if query not in EVENT_TYPES:
            raise ValueError(f"{url}: unknown GMX query {query!r}; one of {', '.join(QUERIES)}")
        cursor = self._cursor[query]
        if cursor["since"] is None:
            cursor["since"] = self.clock.at(time.time_ns()) // 1000
        return target, orjson.dumps({"query": POSITION_CHANGES_QUERY % EVENT_TYPES[query],
                                     "variables": {"since": cursor["since"], "offset": cursor["offset"]}})

    @staticmethod
    def _query_of(url: str) -> str | None:
        return parse_qs(urlsplit(url).query).get("query", [None])[0]

    # --- reference data ----------------------------------------------------------------------

    def reference_urls(self, rest_url: str) -> dict[str, str]:
        base = rest_url.rstrip("/")
        # tokens first; the oracle prices set the venue's clock before the first event query
        return {"tokens": f"{base}/tokens", "instruments": f"{base}/markets/info", "clock": f"{base}/prices/tickers"}

    def apply_reference(self, name: str, body) -> None:
        if name == "tokens":
            self._take_tokens(body)
        elif name == "instruments":
            if not self._tokens:
                raise MalformedMessage("token decimals unknown (/tokens not read): no instrument can be made")
            self._take_markets(body)
            for instrument in self._instruments(0):
                self._published[instrument.symbol_native] = self._content(instrument)
        elif name == "clock":
            self._tick_prices(body, time.time_ns())
        else:
            raise MalformedMessage(f"unknown reference {name!r}")

    def _take_tokens(self, body) -> None:
        what = "tokens"
        tokens = field(body, "tokens", what)
        if not isinstance(tokens, list):
            raise MalformedMessage(f"{what}: field 'tokens' must be a list")
        taken = {}
        for entry in tokens:
            address = _address(entry, "address", what)
            symbol = field(entry, "symbol", what)
            if type(symbol) is not str or not symbol:
                raise MalformedMessage(f"{what} {address}: field 'symbol' must be a name, got {symbol!r}")
            taken[address] = _Token(symbol, _small_int(entry, "decimals", f"{what} {symbol}", 0, USD_DECIMALS))
        self._tokens.update(taken)

    def _take_markets(self, body) -> list[tuple[_Market, dict]]:
        """Replace the market table from a ``/markets/info`` (or ``/markets``) body; the perpetual
        markets with their entries. Markets that disappear from the list are no longer known."""
        what = "markets/info"
        entries = field(body, "markets", what)
        if not isinstance(entries, list):
            raise MalformedMessage(f"{what}: field 'markets' must be a list")
        found = []
        for entry in entries:
            address = _address(entry, "marketToken", what)
            index = _address(entry, "indexToken", f"{what} {address}")
            if index == ZERO_ADDRESS:
                continue   # a swap-only market
            name = field(entry, "name", f"{what} {address}")
            match = _MARKET_NAME.fullmatch(name) if type(name) is str else None
            if match is None:
                self.rejected_instruments[str(name)] = (f"market {address}: name {name!r} is not "
                                                        "'<index>/USD [<long>-<short>]'")
                continue
            where = f"{what} {name}"
            base, long, short = (part.upper() for part in match.groups())
            for pool_token in ("longToken", "shortToken"):   # checked; the name spells the pool's tokens
                _address(entry, pool_token, where)
            market = _Market(address, f"{base}-USD-{long}-{short}", base, long, short, index,
                             _flag(entry, "isListed", where), _flag(entry, "isDisabled", where))
            found.append((market, entry))
        natives: dict[str, int] = {}
        for market, _ in found:
            natives[market.native] = natives.get(market.native, 0) + 1
        markets = []
        for market, entry in found:
            if natives[market.native] > 1:   # one name, several pools: the address tells them apart
                market = market._replace(native=f"{market.native}-{market.address[2:8].upper()}")
            self.rejected_instruments.pop(market.native, None)
            markets.append((market, entry))
        self._markets = {market.address: market for market, _ in markets}
        return markets

    def _instrument(self, market: _Market, ts_recv: int) -> Instrument:
        token = self._tokens.get(market.index)
        if token is None:
            raise MalformedMessage(f"market {market.native}: index token {market.index} is not in /tokens")
        return Instrument(
            exchange=self.exchange, symbol=normalize_symbol(market.native), symbol_native=market.native,
            ts_exchange=ts_recv // 1_000_000, ts_recv=ts_recv, market_type="perpetual", margin="linear",
            base_asset=market.base, quote_asset="USD",
            settle_asset=market.long if market.long == market.short else f"{market.long}-{market.short}",
            qty_unit="contracts", contract_size="1", contract_size_unit="usd",
            tick_size=decimal_of(1, USD_DECIMALS - token.decimals), lot_size=decimal_of(1, USD_DECIMALS),
            funding_interval_hours=FUNDING_INTERVAL_HOURS, expiry=None, status=market.status)

    def _instruments(self, ts_recv: int) -> list[Instrument]:
        out = []
        for market in self._markets.values():
            try:
                out.append(self._instrument(market, ts_recv))
            except MalformedMessage as exc:
                self.rejected_instruments[market.native] = str(exc)
            else:
                self.rejected_instruments.pop(market.native, None)
        return out

    @staticmethod
    def _content(instrument: Instrument) -> dict:
        return {k: v for k, v in asdict(instrument).items() if k not in ("ts_exchange", "ts_recv")}

    def tradable_symbols(self) -> set[str]:
        made = {instrument.symbol_native for instrument in self._instruments(0)}
        return {m.native for m in self._markets.values() if m.listed and not m.disabled and m.native in made}

    def instruments(self, ts_recv: int) -> list[Instrument]:
        return self._instruments(ts_recv)

    # --- mapping -------------------------------------------------------------------------------

    def map_rest(self, url: str, body, ts_recv: int) -> list:
        path = urlsplit(url).path
        if path.endswith("/markets/info"):
            return self._markets_info(body, ts_recv)
        if path.endswith("/prices/tickers"):
            return self._tickers(body, ts_recv)
        if path.endswith("/tokens"):
            self._take_tokens(body)
            return []
        if path.endswith("/graphql"):
            query = self._query_of(url)
            if query == "marketInfos" or (query is None and isinstance(body, dict)
                                          and isinstance(body.get("data"), dict) and "marketInfos" in body["data"]):
                return self._market_infos(body, ts_recv)
            if query in EVENT_TYPES or query is None:
                return self._position_changes(query, body, ts_recv)
            raise SkipMessage(f"GraphQL query {query!r} not collected")
        raise SkipMessage(f"{path}: REST endpoint not collected")

    def _due(self, kind: str, key: str, values: tuple, ts_recv: int) -> bool:
        """Emit when ``values`` changed since the key's last record or that record is REPEAT_S old."""
        last = self._last.get((kind, key))
        return last is None or last[0] != values or ts_recv - last[1] >= REPEAT_S * 1_000_000_000

    def _emitted(self, kind: str, key: str, values: tuple, ts_recv: int) -> None:
        self._last[(kind, key)] = (values, ts_recv)

    def _markets_info(self, body, ts_recv: int) -> list:
        what = "markets/info"
        if not isinstance(body, dict):
            raise MalformedMessage(f"{what}: expected a JSON object, got {type(body).__name__}")
        rows = []
        for market, entry in self._take_markets(body):
            where = f"{what} {market.native}"
            rows.append((market, decimal_of(_fixed(entry, "openInterestLong", where), USD_DECIMALS),
                         decimal_of(_fixed(entry, "openInterestShort", where), USD_DECIMALS)))
        out, emitted = [], []
        for instrument in self._instruments(ts_recv):
            content = self._content(instrument)
            if self._published.get(instrument.symbol_native) != content:
                out.append(instrument)
                emitted.append((instrument.symbol_native, content))
        ts = self.clock.at(ts_recv)
        due = []
        for market, long, short in rows:
            if self._due("oi", market.native, (long, short), ts_recv):
                out.append(OpenInterest(exchange=self.exchange, symbol=normalize_symbol(market.native),
                                        symbol_native=market.native, ts_exchange=ts, ts_recv=ts_recv,
                                        open_interest=long, qty_unit="contracts", open_interest_usd=long,
                                        open_interest_short=short))
                due.append((market.native, (long, short)))
        # Remembered only once the whole body is valid.
        self._published.update(emitted)
        for native, values in due:
            self._emitted("oi", native, values, ts_recv)
        if not out:
            raise SkipMessage(f"{what}: open interest unchanged")
        return out

    def _tick_prices(self, body, ts_recv: int) -> None:
        """The oracle's newest ``updatedAt`` is the venue's clock (the values bodies have no time)."""
        what = "prices/tickers"
        if not isinstance(body, list):
            raise MalformedMessage(f"{what}: expected a list of token prices, got {type(body).__name__}")
        stamps = [_seconds_to_ms(_small_int(entry, "updatedAt", what, 1)) for entry in body]
        if stamps:
            self.clock.tick(max(stamps), ts_recv)

    def _tickers(self, body, ts_recv: int) -> list:
        what = "prices/tickers"
        self._tick_prices(body, ts_recv)
        by_index: dict[str, list[_Market]] = {}
        for market in self._markets.values():
            by_index.setdefault(market.index, []).append(market)
        out, mids, due = [], {}, []
        for entry in body:
            address = _address(entry, "tokenAddress", what)
            where = f"{what} {address}"
            low, high = _fixed(entry, "minPrice", where, positive=True), _fixed(entry, "maxPrice", where, positive=True)
            if low > high:
                raise MalformedMessage(f"{where}: minPrice {low} is above maxPrice {high}")
            ts = _seconds_to_ms(_small_int(entry, "updatedAt", where, 1))
            token = self._tokens.get(address)
            if token is None:
                continue   # not a token perpflow knows the decimals of: no market of ours is priced in it
            mid = decimal_of((low + high) * 5, USD_DECIMALS - token.decimals + 1)
            mids[address] = (mid, ts)
            if not self._due("price", address, (mid,), ts_recv):
                continue
            due.append((address, (mid,)))
            for market in by_index.get(address, ()):
                out.append(Funding(exchange=self.exchange, symbol=normalize_symbol(market.native),
                                   symbol_native=market.native, ts_exchange=ts, ts_recv=ts_recv, rate=None,
                                   interval_hours=None, next_funding_time=None, mark_price=None, index_price=mid,
                                   is_realised=False))
        self._mids.update(mids)
        for address, values in due:
            self._emitted("price", address, values, ts_recv)
        if not out:
            raise SkipMessage(f"{what}: index prices unchanged")
        return out

    def _market_infos(self, body, ts_recv: int) -> list:
        what = "marketInfos"
        rows = _rows(body, "marketInfos", what)
        if not self._markets:
            raise SkipMessage(f"{what}: no markets known yet (/markets/info not read): cannot name them")
        out, due = [], []
        ts = self.clock.at(ts_recv)
        for row in rows:
            key = "marketTokenAddress" if row.get("marketTokenAddress") is not None else "id"
            market = self._markets.get(_address(row, key, what))
            if market is None:
                continue   # disabled or not yet in /markets/info
            where = f"{what} {market.native}"
            factor = _fixed(row, "fundingFactorPerSecond", where)
            sign = 1 if _flag(row, "longsPayShorts", where) else -1
            rate = decimal_of(sign * factor * SECONDS_PER_HOUR, USD_DECIMALS)
            index = self._mids.get(market.index, (None, 0))[0]
            if not self._due("funding", market.native, (rate, index), ts_recv):
                continue
            due.append((market.native, (rate, index)))
            out.append(Funding(exchange=self.exchange, symbol=normalize_symbol(market.native),
                               symbol_native=market.native, ts_exchange=ts, ts_recv=ts_recv, rate=rate,
                               interval_hours=FUNDING_INTERVAL_HOURS, next_funding_time=None, mark_price=None,
                               index_price=index, is_realised=False))
        for native, values in due:
            self._emitted("funding", native, values, ts_recv)
        if not out:
            raise SkipMessage(f"{what}: funding unchanged")
        return out

    # --- liquidations and ADL -------------------------------------------------------------------

    def _position_changes(self, query: str | None, body, ts_recv: int) -> list:
        what = f"positionChanges {query}" if query else "positionChanges"
        rows = _rows(body, "positionChanges", what)
        wanted = (EVENT_TYPES[query],) if query else tuple(EVENT_TYPES.values())
        out, new_ids, pending, times = [], {}, [], []
        for row in rows:
            event_id = row.get("id")
            key = event_id if type(event_id) is str and event_id else "row:" + orjson.dumps(row).decode()
            stamp = row.get("timestamp")
            if type(stamp) is int:
                times.append(stamp)
            if key in self._seen or key in new_ids:
                continue
            try:
                record = self._event(row, key, wanted, what, ts_recv)
            except MalformedMessage as exc:
                # Dead-lettered once, then skipped: one bad row must not stall every later event.
                self._remember({key: None})
                raise MalformedMessage(f"{what} row {key[:80]}: {exc} (the row is skipped from now on)") from None
            if record is None:
                pending.append(stamp)
                continue
            new_ids[key] = None
            out.append(record)
        self._remember(new_ids)
        kinds = [query] if query else [k for k, t in EVENT_TYPES.items() if any(r.get("type") == t for r in rows)]
        for kind in kinds:
            self._advance(self._cursor[kind], times, pending, len(rows))
        if not out:
            raise SkipMessage(f"{what}: no new events" if not pending else f"{what}: events of markets not known yet")
        return out

    def _event(self, row: dict, key: str, wanted: tuple, what: str, ts_recv: int):
        """A Liquidation or Adl record; None while the row's market or index token is unknown."""
        kind = field(row, "type", what)
        if kind not in wanted:
            raise MalformedMessage(f"{what}: field 'type' must be {' or '.join(wanted)}, got {kind!r}")
        stamp = _small_int(row, "timestamp", what, 1, 1 << 40)
        market = self._markets.get(_address(row, "market", what))
        token = self._tokens.get(market.index) if market is not None else None
        if token is None:
            return None
        is_long = _flag(row, "isLong", what)
        price = decimal_of(_fixed(row, "executionPrice", what, positive=True), USD_DECIMALS - token.decimals)
        qty = decimal_of(_fixed(row, "sizeDeltaUsd", what, positive=True), USD_DECIMALS)
        side = "long" if is_long else "short"
        common = {"exchange": self.exchange, "symbol": normalize_symbol(market.native), "symbol_native": market.native,
                  "ts_exchange": stamp * 1000, "ts_recv": ts_recv, "price": price, "qty": qty, "qty_unit": "contracts"}
        if kind == "LIQUIDATION":
            return Liquidation(**common, order_side="sell" if is_long else "buy", liquidated_position=side,
                               avg_price=None, order_status=None, is_sampled=False)
        detail = {"id": key, "block": row.get("block"), "sizeDeltaInTokens": row.get("sizeDeltaInTokens")}
        return Adl(**common, event="fill", deleveraged_position=side, trade_id=None, state=None,
                   detail=orjson.dumps(detail).decode())

    def _remember(self, keys: dict) -> None:
        self._seen.update(keys)
        while len(self._seen) > EVENTS_REMEMBERED:
            self._seen.popitem(last=False)

    @staticmethod
    def _advance(cursor: dict, times: list[int], pending: list, rows: int) -> None:
        """Move a query's cursor past what a page held (see the module docstring)."""
        if pending:
            cursor.update(since=min(pending), offset=0)
        elif rows >= PAGE_ROWS and times and min(times) == max(times) == cursor["since"]:
            cursor["offset"] += rows    # a full page within one second: page on within it
        elif times:
            cursor.update(since=max(cursor["since"] or 0, max(times)), offset=0)

    # --- recordings ------------------------------------------------------------------------------

    def _endpoint(self, message) -> str | None:
        """The REST path a GMX body answers, from its shape (None: not a GMX body)."""
        if isinstance(message, list):
            first = message[0] if message else None
            if isinstance(first, dict) and {"tokenAddress", "minPrice", "maxPrice"} <= first.keys():
                return "/prices/tickers"
            return None
        if not isinstance(message, dict):
            return None
        markets = message.get("markets")
        if isinstance(markets, list) and markets and isinstance(markets[0], dict) \
                and {"marketToken", "indexToken"} <= markets[0].keys():
            return "/markets/info" if "openInterestLong" in markets[0] else "/markets"
        tokens = message.get("tokens")
        if isinstance(tokens, list) and tokens and isinstance(tokens[0], dict) \
                and {"address", "decimals", "symbol"} <= tokens[0].keys():
            return "/tokens"
        data = message.get("data")
        if isinstance(data, dict) and len(data) == 1 \
                and isinstance(data.get("positionChanges", data.get("marketInfos")), list):
            return "/api/graphql"
        return None

    def recorded_rest(self, message) -> tuple[str, object] | None:
        endpoint = self._endpoint(message)
        return None if endpoint is None else (endpoint, message)

    def recognizes(self, message) -> bool:
        return self._endpoint(message) is not None

    def message_time_ms(self, message) -> int | None:
        endpoint = self._endpoint(message)
        if endpoint == "/prices/tickers":
            stamps = [e.get("updatedAt") for e in message if isinstance(e, dict)]
            stamps = [s for s in stamps if type(s) is int and s > 0]
            return _seconds_to_ms(max(stamps)) if stamps else None
        if endpoint == "/api/graphql":
            rows = message["data"].get("positionChanges") or []
            stamp = rows[0].get("timestamp") if rows and isinstance(rows[0], dict) else None
            return stamp * 1000 if type(stamp) is int and stamp > 0 else None
        return None
