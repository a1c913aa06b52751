"""Hyperliquid perpetuals (``wss://api.hyperliquid.xyz/ws``, ``POST https://api.hyperliquid.xyz/info``):
raw messages -> records.

Sources: ``shared/specs/exchanges.md`` §0.5, §1.2, §2.4, §2.6, §2.8 and §2.9 (items 2-4), and, for
the tick rule only, Hyperliquid's "Tick and lot size" page
(hyperliquid.gitbook.io/hyperliquid-docs/for-developers/api/tick-and-lot-size), which the spec does
not cover. Every Hyperliquid quirk lives here and nowhere else:
  * one websocket path, ``/ws``; every subscription is its own request
    ``{"method": "subscribe", "subscription": {"type": "trades", "coin": "BTC"}}`` (no batching);
    pushes are ``{"channel": "<type>", "data": ...}``; an accepted subscription is acknowledged by
    ``{"channel": "subscriptionResponse", "data": <the request echoed>}`` (skipped); a refused one,
    or any other complaint, is ``{"channel": "error", "data": "<text>"}`` (e.g. "Already
    subscribed: ...", "Cannot subscribe to more than 1000 channels."): dead-lettered with the text,
    because a subscription that is never delivered otherwise looks like a quiet market;
  * keepalive: the server closes a connection that has *sent* nothing for 60 s; the application
    ping is ``{"method": "ping"}``, answered ``{"channel": "pong"}`` (JSON, so ``map_ws`` skips it
    rather than the service dropping it as a fixed non-JSON frame);
  * limits per IP (§2.6, gitbook rate-limits page): 1000 websocket subscriptions, 2000 client
    messages a minute, at most 10 simultaneous connections and 30 new ones a minute (the gitbook
    copy says 100 connections; the spec says design for 10). REST: 1200 weight a minute; ``l2Book``
    weighs 2, ``meta``/``metaAndAssetCtxs``/``predictedFundings`` 20. No header reports the weight;
  * the REST API is one endpoint, ``POST /info`` with a JSON body ``{"type": ..., ...}``;
  * coin names are case-sensitive and ``k``-prefixed coins are quoted per 1000 units (``kPEPE``);
  * trades (§2.4): ``data`` is a list of fills ``{coin, side, px, sz, time, hash, tid, users}``;
    ``side`` "B" = the taker bought, "A" = the taker sold; ``users`` = [buyer, seller]; ``tid`` is
    unique across assets but **not consecutive**, so a lost trade cannot be told from the ids:
    there is no gap detection and no REST backfill (``trade_sequence`` and ``trades_url`` keep the
    contract's None; ``perpflow ingest --redundancy 2`` is the remedy). The first push after a
    subscribe is a backlog of recent trades (tardis-node skips it as a whole);
  * l2Book (§2.4, §2.9.2): ``{"coin", "time", "levels": [bids, asks]}``, levels
    ``{"px", "sz", "n"}`` (n = order count), every push a **full snapshot without a sequence
    number**; a delisted coin has ``levels: [[], []]``. Since the 2026-07-25 upgrade a plain
    subscription pushes up to 20 levels per side at most every 5 s; ``"fast": true`` pushes 5
    levels every 0.5 s and marks its data ``"fast": true``; ``nSigFigs``/``mantissa`` aggregate
    prices into coarser levels. tardis-node's books since 2026-06-17 are the 5-level fast feed;
  * activeAssetCtx (§2.4): ``{"coin", "ctx": {...}}`` with every number a string **under ``ctx``**;
    ``funding`` is the *hourly* rate, ``openInterest`` is in coin and one-sided (§2.6), ``markPx``
    the mark (used for margin and liquidation), ``oraclePx`` the validator-published oracle (the
    index funding is computed against). Pushed about once a second even when idle. The push
    carries no timestamp;
  * liquidations: there is **no public liquidation stream** (§0.5, §2.4, §2.9.4). Liquidation
    fills are flagged only in per-user fills/events (``userFills``/``userEvents``, at most 10
    users per IP) and in node data; book ("market") liquidations are ordinary taker orders of the
    liquidated user and cannot be told apart in ``trades`` (§2.6.1).

Choices where the spec leaves one:
  * symbols: the native symbol is the coin upper-cased (the contract's native symbols are upper
    case, like the CLI's ``--symbols``): ``BTC`` -> ``BTC-USDC-PERP``, ``kPEPE`` -> ``KPEPE`` ->
    ``KPEPE-USDC-PERP``. Hyperliquid perps are margined and settled in USDC, so the quote is USDC,
    as for Bybit's USDC perpetuals (``BTC-USD-PERP`` is OKX's inverse swap). ``k`` coins are not
    renamed to ``1000...``. The venue remembers Hyperliquid's own spelling from the ``meta``
    universe and subscribes with it;
  * connections: all three channels (trades, l2Book, activeAssetCtx) of a coin on one connection,
    at most ``COINS_PER_CONNECTION`` coins a connection (a reconnect loses a few seconds of
    50 coins, not all of them), and ``ws_connections`` refuses more than
    ``SUBSCRIPTIONS_PER_IP`` subscriptions or ``CONNECTIONS_PER_IP`` connections. Those caps are
    per IP: ``--redundancy N`` opens every connection N times and so divides what fits by N;
  * the ping goes out every 30 s, half the server's 60 s (the SDK uses 50 s);
  * trades: the backlog is not dropped wholesale (it may hold trades missed during a reconnect);
    each coin keeps the last ``TIDS_REMEMBERED`` tids and a trade whose tid it has seen is skipped,
    never emitted twice; a push of repeats only is skipped with that reason. Tids are remembered
    only once the whole push is valid, so a dead-lettered push does not hide its trades when they
    come again. ``trade_id`` = tid, ``is_aggregated`` False (one fill per element), ``qty_unit``
    "base", ``trade_type`` None (a print of the public tape; see liquidations);
  * books: the plain ``l2Book`` feed (20 levels per side, full precision, no ``nSigFigs``): the
    fast feed's 5 levels are too shallow for depth. Each push is a ``BookSnapshot`` with reason
    "venue", ``seq`` None, ``ts_exchange`` = ``time``; the depth a push has is its number of
    levels, kept as sent. **A 20-level book cannot support wide depth bands**: it reaches only as
    far from mid as its 20th level (on a busy BTC book with its 1 USD tick that can be a few
    hundredths of a percent; the 2023 DYDX book in the SDK cassette reaches 1.9 % on the ask side),
    and nothing beyond is known. The book sync's once-a-second "periodic" snapshots (±10 % of mid,
    which ``analytics.book_depth`` reads) come only from deltas, so Hyperliquid books never feed
    those bands; use the "venue" snapshots with their own span. Fast-feed frames (``"fast":
    true``, e.g. in recordings) are mapped too, but one coin has one book: the first feed seen
    for a coin (plain or fast) feeds it, frames of the other are skipped;
  * book resync (``BookResync.RESUBSCRIBE``, ``HyperliquidSyncRules``): there are no deltas to
    sequence, so a book only goes out of sync when a snapshot is crossed or its connection drops.
    The service then unsubscribes and subscribes ``l2Book`` again; the venue's next push (on the
    subscribe, and in any case within 5 s) is a whole book and resyncs it;
  * funding and open interest from ``activeAssetCtx``: a ``Funding`` record (rate = ``funding``,
    ``interval_hours`` 1, ``mark_price`` = markPx, ``index_price`` = oraclePx,
    ``next_funding_time`` None: not in the push, ``is_realised`` False) when rate, mark or oracle
    changed since the coin's previous push, an ``OpenInterest`` record (``qty_unit`` "base",
    ``open_interest_usd`` None: not published) when open interest changed. The push has no time
    of its own, so ``ts_exchange`` is the venue's clock as last seen (``VenueClock``: the last
    trade or book time received plus the receive time elapsed since), the receive time before any; the
    same for info bodies;
  * REST (the contract names a REST request by a URL, and Hyperliquid's are POSTs): perpflow
    writes an info request as ``https://api.hyperliquid.xyz/info?type=<type>[&coin=<coin>]`` and
    ``rest_request`` turns it into ``POST /info`` with the body ``{"type": ..., "coin": ...}``.
    ``map_rest`` maps ``meta`` (Instrument records), ``metaAndAssetCtxs`` (Funding and
    OpenInterest for every listed coin, the same fields as activeAssetCtx), ``predictedFundings``
    (the ``HlPerp`` entry only, as Funding with ``is_realised`` False and its
    ``nextFundingTime``; the other venues' entries in that body are not Hyperliquid's data) and
    ``l2Book`` (a BookSnapshot, 20 levels). The live service fetches ``meta`` (reference data)
    and polls ``predictedFundings`` once a minute (``polls``; one body for every coin, weight
    20); open interest and funding arrive by websocket; recorded REST bodies of the other kinds
    replay through ``map_rest``. ``fundingHistory`` is not mapped;
  * instruments from ``meta`` (or the first element of ``metaAndAssetCtxs``): perpetual, linear,
    USDC quote and settlement, ``qty_unit`` "base", ``lot_size`` = 10^-szDecimals,
    ``funding_interval_hours`` 1, status "delisted" where ``isDelisted`` else "trading".
    ``tick_size`` is the *finest* tick the price rule allows: prices have at most 5 significant
    figures and at most 6 - szDecimals decimals (integers always allowed), so ``tick_size`` =
    10^-(6 - szDecimals) (1 when szDecimals >= 6) and the tick at price p is in fact
    max(tick_size, 10^(floor(log10 p) - 4)), at most 1 (BTC, szDecimals 5: 0.1 by the decimals
    rule, 1 at prices from 10,000 up). An entry that cannot be read is left out and listed in
    ``rejected_instruments`` with the reason;
  * liquidations, from public data (§2.6.1, "v1: method=backstop, is_complete=false"): a trade
    whose ``users`` include the HLP liquidator vault (``LIQUIDATOR_ADDRESSES``, compared in lower
    case) is also emitted as a ``Liquidation`` with ``is_sampled`` True: the vault buying means a
    long was liquidated (``order_side`` "sell"), the vault selling a short (``order_side`` "buy");
    ``price`` = ``avg_price`` = the fill's ``px`` (no bankruptcy price is public), ``qty`` =
    ``sz`` in base, ``order_status`` None. These are **backstop liquidations only**, and only
    those filled against the one address the spec names (trackers report rotating
    sub-accounts [unverified]); book liquidations are invisible; whether the vault's own later
    trades on the book would be counted too is not known. They are a lower bound and never a
    total. The trade itself is kept as a trade as well. ADL fills are not identifiable in public
    data;
  * numbers are plain decimal strings without exponent; only funding rates carry a sign.
"""

from __future__ import annotations

import re
from collections import deque
from decimal import Decimal
from functools import lru_cache
from typing import ClassVar
from urllib.parse import parse_qs, urlencode, urlsplit, urlunsplit

import orjson

from ingest.records import BookSnapshot, Funding, Instrument, Liquidation, OpenInterest, Trade
from ingest.venue import BookResync, Coverage, MalformedMessage, Poll, SkipMessage, Venue, VenueClock, WsConnection
from ingest.venues.fields import DecimalSyntax, field, integer

NUMBERS = DecimalSyntax()   # plain decimals, never an exponent; only funding rates carry a sign

QUOTE = "USDC"
FUNDING_INTERVAL_HOURS = 1
PERP_MAX_DECIMALS = 6               # price decimals allowed = 6 - szDecimals (perps)
STREAM_KINDS = ("trades", "l2Book", "activeAssetCtx")
SUBSCRIPTIONS_PER_IP = 1000         # websocket subscriptions per IP (§2.6)
CONNECTIONS_PER_IP = 10             # simultaneous connections per IP, as the spec says to design for
COINS_PER_CONNECTION = 50           # 150 subscriptions a connection
TIDS_REMEMBERED = 10_000            # per coin, for the backlog de-duplication
PREDICTED_FUNDINGS_EVERY_S = 60.0   # the premium behind it is sampled every 5 s and paid hourly
#: The HLP liquidator vault (§2.6.1); trades against it are backstop liquidations.
LIQUIDATOR_ADDRESSES = frozenset({"0x2e3d94f0562703b25c83308a05046ddaf9a8dd14"})
INFO_PATH = "/info"

_COIN = re.compile(r"[A-Za-z0-9]+")
_CHANNEL_PREFIX = '{"channel":"'
_CHANNEL_IN_FRAME = re.compile(r'"channel"\s*:\s*"([^"]*)"')
_COIN_IN_FRAME = re.compile(r'"coin"\s*:\s*"([^"]*)"')
_CONTROL_CHANNELS = ("subscriptionResponse", "pong", "error")
_OTHER_CHANNELS = ("bbo", "allMids", "candle", "assetCtxs", "fastAssetCtxs", "post", "notification",
                   "webData2", "webData3", "userFills", "userEvents", "user", "orderUpdates", "userFundings")


@lru_cache(maxsize=8192)
def normalize_symbol(native: str) -> str:
    """BTC -> BTC-USDC-PERP; kPEPE (or KPEPE) -> KPEPE-USDC-PERP."""
    if not isinstance(native, str) or not _COIN.fullmatch(native):
        raise MalformedMessage(f"{native!r} is not a Hyperliquid perp coin name")
    return f"{native.upper()}-{QUOTE}-PERP"


def _coin(obj, key: str, what: str) -> tuple[str, str]:
    """(normalized symbol, native symbol) of a coin field."""
    coin = field(obj, key, what)
    if not isinstance(coin, str) or not coin:
        raise MalformedMessage(f"{what}: field {key!r} must be a coin name, got {coin!r}")
    return normalize_symbol(coin), coin.upper()


def _non_negative(obj, key: str, what: str) -> int:
    value = integer(obj, key, what)
    if value < 0:
        raise MalformedMessage(f"{what}: field {key!r} must be >= 0, got {value}")
    return value


def _power_of_ten(exponent: int) -> str:
    """10^exponent as a plain decimal string: -5 -> "0.00001", 0 -> "1"."""
    return format(Decimal(1).scaleb(exponent), "f")


def tick_size(sz_decimals: int) -> str:
    """The finest price step of a perp: at most 6 - szDecimals decimals (integers always allowed)."""
    return _power_of_ten(-max(PERP_MAX_DECIMALS - sz_decimals, 0))


def _levels(side, what: str) -> list:
    """``[{"px", "sz", "n"}, ...]`` -> ``[[px, sz], ...]``, the venue's strings verbatim."""
    if not isinstance(side, list):
        raise MalformedMessage(f"{what}: a side of 'levels' must be a list, got {side!r}")
    where = f"{what} level"
    return [[NUMBERS.price(level, "px", where), NUMBERS.amount(level, "sz", where)] for level in side]


def _book_sides(data, what: str) -> tuple[list, list]:
    levels = field(data, "levels", what)
    if not (isinstance(levels, list) and len(levels) == 2):
        raise MalformedMessage(f"{what}: field 'levels' must be [bids, asks], got {str(levels)[:200]}")
    return _levels(levels[0], what), _levels(levels[1], what)


class HyperliquidSyncRules:
    """Snapshots only: every l2Book push is a whole book and Hyperliquid sends no deltas. A delta
    (which this mapper never produces) could not be placed, so it would never bridge or continue
    anything: the book would wait for the next snapshot."""

    def is_stale(self, delta, snapshot_seq) -> bool:
        return False

    def bridges(self, delta, snapshot_seq) -> bool:
        return False

    def continues(self, delta, previous) -> bool:
        return False


class Hyperliquid(Venue):
    exchange = "hyperliquid"
    default_ws_url = "wss://api.hyperliquid.xyz"
    default_rest_url = "https://api.hyperliquid.xyz"
    WS_PATH = "/ws"
    SYMBOL_PATTERN = r"[A-Z0-9]+"
    SYMBOL_EXAMPLES = "BTC,ETH,SOL"
    BOOK_RESYNC = BookResync.RESUBSCRIBE
    #: activeAssetCtx is pushed about once a second even when idle; l2Book at most every 5 s when
    #: the book changes (whether an unchanged book is re-sent is not documented: 120 s allows 24
    #: missed pushes); trades are silent in a calm market.
    SILENCE_LIMIT_S: ClassVar[dict[str, float | None]] = {
        "activeAssetCtx": 30.0, "l2Book": 120.0, "trades": None}
    TRADE_STREAM = "trades"
    BOOK_STREAM = "l2Book"
    PING_FRAME = '{"method":"ping"}'
    PING_INTERVAL_S = 30.0       # the server closes a connection silent (from the client) for 60 s
    REST_WEIGHT_LIMIT = 1200     # per minute per IP; l2Book weighs 2, meta and the other info 20
    WEIGHT_HEADER = None         # Hyperliquid sends no header with the weight used
    rules = HyperliquidSyncRules()
    COVERAGE = {
        "trades": (Coverage.COMPLETE, "every fill is pushed, but tids are not consecutive: a loss during a drop "
                                      "cannot be detected (the subscribe backlog refills some; run --redundancy 2)"),
        "book": (Coverage.SAMPLED, "l2Book: a whole book of at most 20 levels per side, at most every 5 s; "
                                   "changes between pushes and levels beyond the 20th are not seen"),
        "funding": (Coverage.COMPLETE, "activeAssetCtx funding, the hourly rate"),
        "mark_price": (Coverage.COMPLETE, "activeAssetCtx markPx"),
        "index_price": (Coverage.COMPLETE, "activeAssetCtx oraclePx, the oracle funding is computed against"),
        "open_interest": (Coverage.SAMPLED, "activeAssetCtx openInterest, one side, in coin, about once a second"),
        "liquidations": (Coverage.LOWER_BOUND, "no public stream: only fills against the HLP liquidator vault "
                                               "(backstop liquidations) are identified; book liquidations are not"),
        "adl": (Coverage.UNAVAILABLE, "ADL fills are flagged only in per-user fills, not in public data"),
        "long_short_ratios": (Coverage.UNAVAILABLE, "no long/short statistic endpoint (positions are public per "
                                                    "address, which perpflow does not crawl)"),
        "taker_volumes": (Coverage.UNAVAILABLE, "no taker-volume statistic; sum raw.trades by side"),
    }

    normalize_symbol = staticmethod(normalize_symbol)

    def __init__(self, liquidator_addresses=LIQUIDATOR_ADDRESSES):
        self.liquidators = frozenset(address.lower() for address in liquidator_addresses)
        self._universe: dict[str, dict] = {}          # native (upper) -> meta universe entry
        self._coins: dict[str, str] = {}              # native (upper) -> Hyperliquid's spelling
        self.rejected_instruments: dict[str, str] = {}
        self._tids: dict[str, tuple[deque, set]] = {}   # native -> (recent tids in order, the same as a set)
        self._ctx: dict[str, dict] = {}               # native -> last activeAssetCtx fields used
        self._book_feed: dict[str, str] = {}          # native -> "l2Book" or "l2Book fast"
        self.clock = VenueClock()                     # for the untimed pushes

    # --- streams -----------------------------------------------------------------------------

    def coin(self, native: str) -> str:
        """Hyperliquid's spelling of a native (upper-case) symbol: kPEPE for KPEPE."""
        return self._coins.get(native.upper(), native)

    def _subscribe(self, method: str, kind: str, native: str) -> str:
        return orjson.dumps({"method": method, "subscription": {"type": kind, "coin": self.coin(native)}}).decode()

    def ws_connections(self, ws_url: str, symbols: list[str]) -> list[WsConnection]:
        natives = list(dict.fromkeys(s.upper() for s in symbols))
        subscriptions = len(natives) * len(STREAM_KINDS)
        groups = [natives[i:i + COINS_PER_CONNECTION] for i in range(0, len(natives), COINS_PER_CONNECTION)]
        if subscriptions > SUBSCRIPTIONS_PER_IP or len(groups) > CONNECTIONS_PER_IP:
            raise ValueError(f"{len(natives)} coins need {subscriptions} subscriptions on {len(groups)} connections; "
                             f"Hyperliquid allows {SUBSCRIPTIONS_PER_IP} subscriptions and "
                             f"{CONNECTIONS_PER_IP} connections per IP")
        url = ws_url.rstrip("/") + self.WS_PATH
        connections = []
        for number, group in enumerate(groups, start=1):
            pairs = [(kind, native) for native in group for kind in STREAM_KINDS]
            connections.append(WsConnection(
                f"ws-{number}", url, tuple(f"{kind}:{native}" for kind, native in pairs),
                tuple(self._subscribe("subscribe", kind, native) for kind, native in pairs)))
        return connections

    def stream_kind(self, stream: str) -> str:
        """l2Book:BTC -> l2Book"""
        return stream.partition(":")[0]

    def stream_symbol(self, stream: str) -> str:
        """l2Book:BTC -> BTC"""
        return stream.partition(":")[2].upper()

    def stream_of(self, frame: str) -> str | None:
        """``<channel>:<COIN>`` of a data push without parsing it (the channel is the first key on
        the fast path, else searched for); control frames are None."""
        if frame.startswith(_CHANNEL_PREFIX):
            end = frame.find('"', len(_CHANNEL_PREFIX))
            channel = frame[len(_CHANNEL_PREFIX):end] if end > 0 else None
        else:
            found = _CHANNEL_IN_FRAME.search(frame)
            channel = found[1] if found else None
        if channel not in STREAM_KINDS:
            return None
        coin = _COIN_IN_FRAME.search(frame)
        return f"{channel}:{coin[1].upper()}" if coin else None

    def resubscribe_frames(self, stream: str) -> tuple[str, ...]:
        """Unsubscribe and subscribe again (subscribing twice is refused: "Already subscribed");
        the next push is a whole book either way."""
        kind, native = self.stream_kind(stream), self.stream_symbol(stream)
        return tuple(self._subscribe(method, kind, native) for method in ("unsubscribe", "subscribe"))

    # --- REST requests ---------------------------------------------------------------------------

    def info_url(self, rest_url: str, kind: str, **fields: str) -> str:
        """perpflow's name for an info request: ``<rest>/info?type=<kind>&...`` (see rest_request)."""
        return f"{rest_url.rstrip('/')}{INFO_PATH}?{urlencode({'type': kind, **fields})}"

    def rest_request(self, url: str) -> tuple[str, bytes | None]:
        """``.../info?type=l2Book&coin=BTC`` -> POST ``.../info`` with ``{"type":"l2Book","coin":"BTC"}``."""
        parts = urlsplit(url)
        if not parts.path.endswith(INFO_PATH):
            return url, None
        body = {key: values[0] for key, values in parse_qs(parts.query, keep_blank_values=True).items()}
        return urlunsplit((parts.scheme, parts.netloc, parts.path, "", "")), orjson.dumps(body)

    @staticmethod
    def _info_type(url: str) -> tuple[str, dict]:
        parts = urlsplit(url)
        if not parts.path.endswith(INFO_PATH):
            raise SkipMessage(f"{parts.path}: REST endpoint not collected")
        query = {key: values[0] for key, values in parse_qs(parts.query).items()}
        return query.get("type", ""), query

    # --- reference data ----------------------------------------------------------------------

    def reference_urls(self, rest_url: str) -> dict[str, str]:
        return {"instruments": self.info_url(rest_url, "meta")}

    def polls(self, rest_url: str, symbols: list[str]) -> list[Poll]:
        """The predicted next funding of every coin, once a minute (one body for all coins, weight 20)."""
        return [Poll(self.info_url(rest_url, "predictedFundings"), PREDICTED_FUNDINGS_EVERY_S, weight=20)]

    def apply_reference(self, name: str, body) -> None:
        if name != "instruments":
            raise MalformedMessage(f"unknown reference {name!r}")
        self._take_universe(self._universe_of(body, "meta"))

    @staticmethod
    def _universe_of(body, what: str) -> list:
        """The universe list of a ``meta`` body or of ``metaAndAssetCtxs``' first element."""
        meta = body[0] if isinstance(body, list) and len(body) == 2 else body
        universe = field(meta, "universe", what)
        if not isinstance(universe, list):
            raise MalformedMessage(f"{what}: field 'universe' must be a list")
        return universe

    def _take_universe(self, universe: list) -> None:
        """Replace the instrument list (coins that disappear from it are no longer listed)."""
        entries, coins = {}, {}
        for entry in universe:
            name = entry.get("name") if isinstance(entry, dict) else None
            if not isinstance(name, str):
                raise MalformedMessage(f"meta: universe entry without a name: {str(entry)[:200]}")
            try:
                normalize_symbol(name)
                decimals = _non_negative(entry, "szDecimals", f"meta {name}")
                delisted = entry.get("isDelisted", False)
                if not isinstance(delisted, bool):
                    raise MalformedMessage(f"meta {name}: field 'isDelisted' must be true/false, got {delisted!r}")
            except MalformedMessage as exc:
                self.rejected_instruments[name] = str(exc)
                continue
            self.rejected_instruments.pop(name, None)
            entries[name.upper()] = {"name": name, "szDecimals": decimals, "isDelisted": delisted}
            coins[name.upper()] = name
        self._universe, self._coins = entries, coins

    def tradable_symbols(self) -> set[str]:
        return {native for native, entry in self._universe.items() if not entry["isDelisted"]}

    def instruments(self, ts_recv: int) -> list[Instrument]:
        out = []
        for native, entry in self._universe.items():
            decimals = entry["szDecimals"]
            out.append(Instrument(
                exchange=self.exchange, symbol=normalize_symbol(native), symbol_native=native,
                ts_exchange=ts_recv // 1_000_000, ts_recv=ts_recv, market_type="perpetual", margin="linear",
                base_asset=native, quote_asset=QUOTE, settle_asset=QUOTE, qty_unit="base",
                contract_size=None, contract_size_unit=None, tick_size=tick_size(decimals),
                lot_size=_power_of_ten(-decimals), funding_interval_hours=FUNDING_INTERVAL_HOURS, expiry=None,
                status="delisted" if entry["isDelisted"] else "trading"))
        return out

    # --- recordings --------------------------------------------------------------------------

    def message_time_ms(self, message) -> int | None:
        data = message.get("data") if isinstance(message, dict) else None
        if isinstance(data, list):    # trades: the first fill's time
            data = data[0] if data else None
        ts = data.get("time") if isinstance(data, dict) else None
        return ts if isinstance(ts, int) and not isinstance(ts, bool) else None

    def recognizes(self, message) -> bool:
        """``{"channel": <a Hyperliquid channel>, ...}`` without another venue's envelope keys
        (dYdX's indexer also names a ``channel``, next to a ``type``)."""
        if not isinstance(message, dict) or "type" in message:
            return False
        channel = message.get("channel")
        if channel == "pong":
            return True
        return (channel in STREAM_KINDS or channel in _OTHER_CHANNELS or channel in _CONTROL_CHANNELS) \
            and "data" in message

    # --- websocket ---------------------------------------------------------------------------

    def map_ws(self, message, ts_recv: int) -> list:
        if not isinstance(message, dict):
            raise MalformedMessage(f"expected a JSON object, got {type(message).__name__}")
        channel = message.get("channel")
        if not isinstance(channel, str):
            raise MalformedMessage(f"field 'channel' must be a channel name, got {channel!r}")
        if channel == "pong":
            raise SkipMessage("pong")
        if channel == "subscriptionResponse":
            raise SkipMessage("subscription reply")
        if channel == "error":
            raise MalformedMessage(f"Hyperliquid error: {message.get('data')!r}")
        handler = self._handlers.get(channel)
        if handler is None:
            raise SkipMessage(f"{channel}: channel not collected")
        return handler(self, field(message, "data", channel), ts_recv)

    def _trades(self, data, ts_recv: int) -> list:
        what = "trades"
        if not isinstance(data, list) or not all(isinstance(item, dict) for item in data):
            raise MalformedMessage(f"{what}: field 'data' must be a list of trades")
        if not data:
            raise SkipMessage("trades: empty push")
        out, new_tids = [], []
        for item in data:
            symbol, native = _coin(item, "coin", what)
            tid = _non_negative(item, "tid", what)
            side = field(item, "side", what)
            if side not in ("B", "A"):
                raise MalformedMessage(f"{what}: field 'side' must be B or A, got {side!r}")
            price, qty = NUMBERS.price(item, "px", what), NUMBERS.quantity(item, "sz", what)
            ts = integer(item, "time", what)
            self.clock.tick(ts, ts_recv)
            users = item.get("users")
            if users is not None and not (isinstance(users, list) and len(users) == 2
                                          and all(isinstance(u, str) for u in users)):
                raise MalformedMessage(f"{what}: field 'users' must be [buyer, seller], got {users!r}")
            if self._seen(native, tid) or (native, tid) in new_tids:
                continue
            new_tids.append((native, tid))
            common = {"exchange": self.exchange, "symbol": symbol, "symbol_native": native, "ts_exchange": ts,
                      "ts_recv": ts_recv}
            out.append(Trade(**common, trade_id=str(tid), price=price, qty=qty, qty_unit="base",
                             side="buy" if side == "B" else "sell", is_aggregated=False))
            liquidation = self._backstop(users, common, price, qty)
            if liquidation is not None:
                out.append(liquidation)
        for native, tid in new_tids:   # only once the whole push is valid
            self._remember(native, tid)
        if not out:
            raise SkipMessage("trades: repeated trades only (tids already received)")
        return out

    def _seen(self, native: str, tid: int) -> bool:
        recent = self._tids.get(native)
        return recent is not None and tid in recent[1]

    def _remember(self, native: str, tid: int) -> None:
        order, members = self._tids.setdefault(native, (deque(), set()))
        order.append(tid)
        members.add(tid)
        if len(order) > TIDS_REMEMBERED:
            members.discard(order.popleft())

    def _backstop(self, users, common: dict, price: str, qty: str) -> Liquidation | None:
        """A fill against the liquidator vault: the vault buying takes over a liquidated long."""
        if not users:
            buyer = seller = False
        else:
            buyer, seller = (u.lower() in self.liquidators for u in users)
        if buyer == seller:    # neither (or, impossibly, both)
            return None
        return Liquidation(**common, order_side="sell" if buyer else "buy",
                           liquidated_position="long" if buyer else "short", price=price, avg_price=price,
                           qty=qty, qty_unit="base", order_status=None, is_sampled=True)

    def _book(self, data, ts_recv: int) -> list:
        return [self._book_snapshot(data, ts_recv, "l2Book")]

    def _book_snapshot(self, data, ts_recv: int, what: str) -> BookSnapshot:
        symbol, native = _coin(data, "coin", what)
        ts = integer(data, "time", what)
        self.clock.tick(ts, ts_recv)
        bids, asks = _book_sides(data, what)
        fast = data.get("fast", False)
        if not isinstance(fast, bool):
            raise MalformedMessage(f"{what}: field 'fast' must be true/false, got {fast!r}")
        feed = "l2Book fast" if fast else "l2Book"
        if self._book_feed.setdefault(native, feed) != feed:
            raise SkipMessage("l2Book feed (plain or fast) other than the one feeding the coin's book")
        return BookSnapshot(exchange=self.exchange, symbol=symbol, symbol_native=native, ts_exchange=ts,
                            ts_recv=ts_recv, bids=bids, asks=asks, seq=None, reason="venue")

    def _asset_ctx(self, data, ts_recv: int) -> list:
        what = "activeAssetCtx"
        symbol, native = _coin(data, "coin", what)
        values = self._ctx_values(field(data, "ctx", what), what)
        before = self._ctx.get(native, {})
        self._ctx[native] = values
        ts = self.clock.at(ts_recv)
        out = []
        if any(values[key] != before.get(key) for key in ("funding", "markPx", "oraclePx")):
            out.append(self._funding(values, symbol, native, ts, ts_recv))
        if values["openInterest"] != before.get("openInterest"):
            out.append(self._open_interest(values, symbol, native, ts, ts_recv))
        if not out:
            raise SkipMessage("activeAssetCtx: funding, prices and open interest unchanged")
        return out

    @staticmethod
    def _ctx_values(ctx, what: str) -> dict:
        return {"funding": NUMBERS.signed(ctx, "funding", what), "markPx": NUMBERS.price(ctx, "markPx", what),
                "oraclePx": NUMBERS.price(ctx, "oraclePx", what),
                "openInterest": NUMBERS.amount(ctx, "openInterest", what)}

    def _funding(self, values: dict, symbol: str, native: str, ts: int, ts_recv: int) -> Funding:
        return Funding(exchange=self.exchange, symbol=symbol, symbol_native=native, ts_exchange=ts, ts_recv=ts_recv,
                       rate=values["funding"], interval_hours=FUNDING_INTERVAL_HOURS, next_funding_time=None,
                       mark_price=values["markPx"], index_price=values["oraclePx"], is_realised=False)

    def _open_interest(self, values: dict, symbol: str, native: str, ts: int, ts_recv: int) -> OpenInterest:
        return OpenInterest(exchange=self.exchange, symbol=symbol, symbol_native=native, ts_exchange=ts,
                            ts_recv=ts_recv, open_interest=values["openInterest"], qty_unit="base")

    _handlers: ClassVar[dict] = {"trades": _trades, "l2Book": _book, "activeAssetCtx": _asset_ctx}

    # --- REST --------------------------------------------------------------------------------

    def map_rest(self, url: str, body, ts_recv: int) -> list:
        kind, query = self._info_type(url)
        if kind == "meta":
            self._take_universe(self._universe_of(body, kind))
            return self.instruments(ts_recv)
        if kind == "metaAndAssetCtxs":
            return self._all_contexts(body, ts_recv)
        if kind == "predictedFundings":
            return self._predicted_fundings(body, ts_recv)
        if kind == "l2Book":
            return [self._book_snapshot(body, ts_recv, "l2Book (REST)")]
        raise SkipMessage(f"info {kind or 'without a type'}: not collected")

    def _all_contexts(self, body, ts_recv: int) -> list:
        what = "metaAndAssetCtxs"
        if not (isinstance(body, list) and len(body) == 2 and isinstance(body[1], list)):
            raise MalformedMessage(f"{what}: expected [meta, [asset contexts]]")
        universe, contexts = self._universe_of(body, what), body[1]
        if len(universe) != len(contexts):
            raise MalformedMessage(f"{what}: {len(universe)} coins but {len(contexts)} asset contexts")
        ts, out = self.clock.at(ts_recv), []
        for entry, ctx in zip(universe, contexts):   # ctxs[i] belongs to universe[i]
            symbol, native = _coin(entry, "name", what)
            if entry.get("isDelisted") is True:
                continue
            values = self._ctx_values(ctx, f"{what} {native}")
            out += [self._funding(values, symbol, native, ts, ts_recv),
                    self._open_interest(values, symbol, native, ts, ts_recv)]
        return out

    def _predicted_fundings(self, body, ts_recv: int) -> list:
        what = "predictedFundings"
        if not isinstance(body, list):
            raise MalformedMessage(f"{what}: expected a list of [coin, [[venue, prediction], ...]]")
        out = []
        for entry in body:
            if not (isinstance(entry, list) and len(entry) == 2 and isinstance(entry[1], list)):
                raise MalformedMessage(f"{what}: entry is not [coin, [[venue, prediction], ...]]: {str(entry)[:200]}")
            symbol, native = _coin(entry, 0, what)
            for pair in entry[1]:
                if not (isinstance(pair, list) and len(pair) == 2):
                    raise MalformedMessage(f"{what} {native}: venue entry is not [venue, prediction]: {pair!r}")
                if pair[0] != "HlPerp" or pair[1] is None:
                    continue    # another venue's funding, or no Hyperliquid prediction for the coin
                prediction = pair[1]
                hours = prediction.get("fundingIntervalHours", FUNDING_INTERVAL_HOURS) \
                    if isinstance(prediction, dict) else None
                if isinstance(hours, bool) or not isinstance(hours, int) or hours <= 0:
                    raise MalformedMessage(f"{what} {native}: fundingIntervalHours must be a positive integer, "
                                           f"got {hours!r}")
                out.append(Funding(exchange=self.exchange, symbol=symbol, symbol_native=native,
                                   ts_exchange=self.clock.at(ts_recv), ts_recv=ts_recv,
                                   rate=NUMBERS.signed(prediction, "fundingRate", what), interval_hours=hours,
                                   next_funding_time=integer(prediction, "nextFundingTime", what),
                                   mark_price=None, index_price=None, is_realised=False))
        if not out:
            raise SkipMessage("predictedFundings: no Hyperliquid prediction")
        return out
