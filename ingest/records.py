"""Normalized market-data records: the one contract between venues, Kafka and the warehouse.

Every venue mapper emits these types and nothing else; every consumer reads only these.
Each class is declared once here; its Kafka topic, its wire form (orjson, decimal strings
kept verbatim; a Kafka message holds one record or a ``Pack`` of them, one per line), its Arrow schema and its DuckDB table are all derived from the field
annotations below, so the four cannot drift apart.

Field kinds (annotations):
  Text / Int / Flag   VARCHAR / BIGINT / BOOLEAN
  Num                 exchange decimal string on the wire (lossless), DOUBLE in the warehouse
  Ms                  epoch milliseconds on the wire, TIMESTAMP (UTC) in the warehouse
  Ns                  epoch nanoseconds on the wire, TIMESTAMP (UTC, microseconds) in the warehouse
  Levels              [[price, qty], ...] strings on the wire, STRUCT(price, qty)[] in the warehouse
``X | None`` marks a nullable field.

A class whose rows a venue publishes again and again (statistics per period, polled) names the
fields that identify a row in ``unique_key``: the loader stores each such row once, the first
time it arrives, however often a re-poll repeats it.

Bump ``SCHEMA_VERSION`` and add a migration in ``warehouse.schema`` when a field changes.
"""

from __future__ import annotations

import types
import typing
from collections import Counter
from dataclasses import dataclass, fields
from functools import cache
from typing import Annotated, ClassVar

import orjson
import pyarrow as pa

SCHEMA_VERSION = 6   # 2: Funding.rate and interval_hours nullable (delivery contracts)
                     # 3: book checksums; instruments
                     # 4: ADL events; book snapshots count local uncrossing
                     # 5: open interest's short side where it differs from the long (pool venues)
                     # 6: the venues' own long/short ratios and taker volumes per period


class _Kind:
    """How one field kind looks in the warehouse (Arrow and DuckDB types) and on the wire (JSON type)."""

    def __init__(self, name: str, table: pa.DataType, sql: str, wire_sql: str):
        self.name, self.table, self.sql, self.wire_sql = name, table, sql, wire_sql

    def __repr__(self) -> str:
        return f"<{self.name}>"


LEVEL = pa.struct([("price", pa.float64()), ("qty", pa.float64())])

TEXT = _Kind("text", pa.string(), "VARCHAR", "VARCHAR")
INT = _Kind("int", pa.int64(), "BIGINT", "BIGINT")
FLAG = _Kind("flag", pa.bool_(), "BOOLEAN", "BOOLEAN")
NUM = _Kind("num", pa.float64(), "DOUBLE", "VARCHAR")
MS = _Kind("ms", pa.timestamp("us"), "TIMESTAMP", "BIGINT")
NS = _Kind("ns", pa.timestamp("us"), "TIMESTAMP", "BIGINT")
LEVELS = _Kind("levels", pa.list_(LEVEL), "STRUCT(price DOUBLE, qty DOUBLE)[]", "VARCHAR[][]")

Text = Annotated[str, TEXT]
Int = Annotated[int, INT]
Flag = Annotated[bool, FLAG]
Num = Annotated[str, NUM]
Ms = Annotated[int, MS]
Ns = Annotated[int, NS]
Levels = Annotated[list, LEVELS]


@dataclass(slots=True, kw_only=True)
class MarketRecord:
    """Fields every instrument-level record carries."""

    exchange: Text            # perpflow venue id, e.g. "binance-usdm"
    symbol: Text              # normalized, e.g. "BTC-USDT-PERP"
    symbol_native: Text       # as the venue spells it, e.g. "BTCUSDT"
    ts_exchange: Ms           # the venue's event/trade time
    ts_recv: Ns               # when perpflow received the message


@dataclass(slots=True, kw_only=True)
class Trade(MarketRecord):
    record_type: ClassVar[str] = "trade"
    topic: ClassVar[str] = "md.trades"
    table: ClassVar[str] = "trades"

    trade_id: Text            # venue id verbatim (Binance aggTrade `a` / trade `t`)
    price: Num
    qty: Num
    qty_unit: Text            # "base" or "contracts"
    side: Text                # taker side: "buy" | "sell" | "unknown"
    is_aggregated: Flag       # Binance aggTrade folds fills of one taker order at one price
    first_trade_id: Int | None = None
    last_trade_id: Int | None = None
    trade_type: Text | None = None   # Binance `X`: MARKET, INSURANCE_FUND, ADL, NA


@dataclass(slots=True, kw_only=True)
class BookSnapshot(MarketRecord):
    record_type: ClassVar[str] = "book_snapshot"
    topic: ClassVar[str] = "md.book"
    table: ClassVar[str] = "book_snapshots"

    bids: Levels              # best first
    asks: Levels
    seq: Int | None           # Binance lastUpdateId, Bybit u, OKX seqId
    reason: Text              # "sync" (first), "resync" (after a gap), "venue" (pushed by the venue),
                              # "periodic" (perpflow's once-a-second copy of the synced book, +-10% of mid)
    checksum: Int | None = None   # the venue's checksum of the book after this message (OKX CRC32)
    uncrossed: Int | None = None  # venues whose books cross in normal operation (dYdX): how often the
                                  # book was uncrossed locally (ingest.book_sync) since the symbol's
                                  # previous snapshot record, 0 = never; depth analytics skip > 0.
                                  # None: the venue's books never cross (a crossed book is a gap)


@dataclass(slots=True, kw_only=True)
class BookDelta(MarketRecord):
    record_type: ClassVar[str] = "book_delta"
    topic: ClassVar[str] = "md.book"
    table: ClassVar[str] = "book_deltas"

    bids: Levels              # absolute quantities; qty 0 deletes the level
    asks: Levels
    first_seq: Int | None     # Binance U
    last_seq: Int | None      # Binance u
    prev_seq: Int | None      # Binance pu
    checksum: Int | None = None


@dataclass(slots=True, kw_only=True)
class Funding(MarketRecord):
    record_type: ClassVar[str] = "funding"
    topic: ClassVar[str] = "md.funding"
    table: ClassVar[str] = "funding"

    rate: Num | None          # per funding interval, as the venue quotes it; None: the record carries
                              # mark and/or index prices only (delivery futures have no funding; OKX
                              # pushes mark and index on channels of their own)
    interval_hours: Int | None
    next_funding_time: Ms | None
    mark_price: Num | None
    index_price: Num | None
    is_realised: Flag         # False = current estimate, True = settled rate


@dataclass(slots=True, kw_only=True)
class OpenInterest(MarketRecord):
    record_type: ClassVar[str] = "open_interest"
    topic: ClassVar[str] = "md.open_interest"
    table: ClassVar[str] = "open_interest"

    open_interest: Num        # one side: every long has a short, except on pool venues (below)
    qty_unit: Text
    open_interest_usd: Num | None = None   # only where the venue publishes it
    open_interest_short: Num | None = None # venues whose pool is every position's counterparty (GMX), where
                              # long and short OI differ: the short side, in qty_unit; open_interest is
                              # then the long side. Non-NULL marks pool-counterparty OI (analytics.md
                              # §9.3): long + short is not comparable to a CEX's one-sided figure


@dataclass(slots=True, kw_only=True)
class Liquidation(MarketRecord):
    record_type: ClassVar[str] = "liquidation"
    topic: ClassVar[str] = "md.liquidations"
    table: ClassVar[str] = "liquidations"

    order_side: Text          # side of the forced order: "sell" closes a long
    liquidated_position: Text # "long" | "short"
    price: Num                # order (bankruptcy) price
    avg_price: Num | None     # average fill price where published
    qty: Num                  # filled quantity
    qty_unit: Text
    order_status: Text | None
    is_sampled: Flag          # True where the venue publishes a sample (Binance: 1/s/symbol)


@dataclass(slots=True, kw_only=True)
class Instrument(MarketRecord):
    """Reference data that says what a symbol's numbers mean, published at start and on change.

    A quantity ``q`` in ``qty_unit`` is, in base units: ``q`` ("base"); ``q * contract_size``
    ("contracts" with ``contract_size_unit`` "base"); ``q * contract_size / price`` ("contracts"
    with ``contract_size_unit`` "usd", inverse contracts). Book levels are in ``qty_unit`` too."""

    record_type: ClassVar[str] = "instrument"
    topic: ClassVar[str] = "md.instruments"
    table: ClassVar[str] = "instruments"

    market_type: Text         # "perpetual" | "future"
    margin: Text              # "linear" (quote/USD-margined) | "inverse" (coin-margined)
    base_asset: Text
    quote_asset: Text
    settle_asset: Text
    qty_unit: Text            # unit of trade, book, liquidation and open-interest sizes
    contract_size: Num | None # per contract, in contract_size_unit; None for qty_unit "base"
    contract_size_unit: Text | None   # "base" | "usd"
    tick_size: Num
    lot_size: Num
    funding_interval_hours: Int | None
    expiry: Ms | None
    status: Text              # the venue's word, e.g. TRADING, live, PENDING_TRADING


@dataclass(slots=True, kw_only=True)
class Adl(MarketRecord):
    """Auto-deleveraging (ADL): a position the venue closed against a bankrupt one outside the order
    book (``event`` "fill"), or the ADL risk state a venue publishes per symbol (``event`` "state").

    Fills: dYdX ``DELEVERAGED`` trades, Binance trades with ``X: "ADL"``, GMX ``AUTO_DELEVERAGING``
    position changes; a fill that is also a trade keeps that trade's id in ``trade_id`` (join on
    ``raw.trades``). States: Bybit ``adlAlert``, OKX ``adl-warning``, Binance ``symbolAdlRisk``; price,
    qty and side are then None, the venue's own word is in ``state`` and its fields in ``detail``.
    Sizes convert to base units and USD like any other (``warehouse.units``)."""

    record_type: ClassVar[str] = "adl"
    topic: ClassVar[str] = "md.adl"
    table: ClassVar[str] = "adl_events"

    event: Text               # "fill" | "state"
    deleveraged_position: Text | None   # "long" | "short": the position ADL reduced, i.e. the profitable
                              # counterparty the bankrupt position was closed against (dYdX names the
                              # *bankrupt* side "deleveraged": its mapper converts); None where the
                              # venue does not tell (Binance) and for states
    price: Num | None         # fill price
    qty: Num | None           # filled size, in qty_unit
    qty_unit: Text | None     # "base" | "contracts", as Trade; None for states
    trade_id: Text | None     # the fill's Trade record id, where the fill is also a public trade
    state: Text | None        # the venue's state word (OKX normal|warning|adl, Binance low|medium|high)
    detail: Text | None       # JSON object: the venue's fields the columns do not carry, verbatim


@dataclass(slots=True, kw_only=True)
class LongShortRatio(MarketRecord):
    """A venue's own statistic of who is long and who is short, for one period (polled REST).

    ``ts_exchange`` is the start of the period, as the venue stamps the row. ``population`` says
    what was counted, named after what the venue measures:

      all_accounts    every account holding a position, each counted once (Binance
                      globalLongShortAccountRatio; Bybit account-ratio, its "users holding long
                      positions"; OKX long-short-account-ratio-contract)
      top_accounts    the venue's top traders, each account counted once (Binance
                      topLongShortAccountRatio: the top 20% by margin balance; OKX
                      long-short-account-ratio-contract-top-trader: the top 5% by open position
                      value). Binance's and OKX's cut differ: compare venues on all_accounts
      top_positions   the same top traders, weighted by position size: the share of their
                      positions' size that is long (Binance topLongShortPositionRatio, OKX
                      long-short-position-ratio-contract-top-trader)

    A row is stored once per (exchange, symbol, period, population, period start)."""

    record_type: ClassVar[str] = "long_short_ratio"
    topic: ClassVar[str] = "md.long_short_ratios"
    table: ClassVar[str] = "long_short_ratios"
    unique_key: ClassVar[tuple[str, ...]] = ("exchange", "symbol", "period", "population", "ts_exchange")

    period: Text              # the statistic's period, perpflow's spelling: "5m"
    population: Text          # all_accounts | top_accounts | top_positions (above)
    long_share: Num | None    # share long, 0..1; None where the venue publishes only the ratio (OKX)
    short_share: Num | None
    long_short_ratio: Num     # long_share / short_share as the venue states it


@dataclass(slots=True, kw_only=True)
class TakerVolume(MarketRecord):
    """A venue's own published taker buy and sell volume for one period (polled REST), in the unit
    the venue gives it (Binance USD-M: base; OKX: contracts, converted through the instrument like
    every size, ``warehouse.units``). ``ts_exchange`` is the start of the period. Perpflow's own
    sums of ``raw.trades`` can be reconciled against it. Stored once per (exchange, symbol, period,
    period start)."""

    record_type: ClassVar[str] = "taker_volume"
    topic: ClassVar[str] = "md.taker_volumes"
    table: ClassVar[str] = "taker_volumes"
    unique_key: ClassVar[tuple[str, ...]] = ("exchange", "symbol", "period", "ts_exchange")

    period: Text              # "5m"
    buy_qty: Num              # bought by takers in the period, in qty_unit
    sell_qty: Num             # sold by takers
    qty_unit: Text            # "base" | "contracts"


@dataclass(slots=True, kw_only=True)
class FeedEvent:
    """Something happened to the feed rather than the market: gaps, resyncs, outages."""

    record_type: ClassVar[str] = "feed_event"
    topic: ClassVar[str] = "md.feed_events"
    table: ClassVar[str] = "feed_events"

    exchange: Text
    symbol: Text | None       # None = the whole feed
    kind: Text                # gap | resync | disconnect | reconnect | stall | broker_reset | ...
    detail: Text              # JSON object with the specifics
    ts_recv: Ns
    ts_exchange: Ms | None = None


@dataclass(slots=True, kw_only=True)
class DeadLetter:
    """A message that could not be mapped, kept verbatim with the reason."""

    record_type: ClassVar[str] = "dead_letter"
    topic: ClassVar[str] = "md.dlq"
    table: ClassVar[str] = "dead_letters"

    exchange: Text
    source: Text              # stream name or REST path
    reason: Text
    raw: Text                 # the message as received (decoded leniently)
    ts_recv: Ns
    symbol: Text | None = None


RECORD_TYPES: tuple[type, ...] = (Trade, BookSnapshot, BookDelta, Funding, OpenInterest,
                                  Liquidation, Instrument, Adl, LongShortRatio, TakerVolume, FeedEvent, DeadLetter)
BY_NAME: dict[str, type] = {cls.record_type: cls for cls in RECORD_TYPES}
TOPICS: tuple[str, ...] = tuple(dict.fromkeys(cls.topic for cls in RECORD_TYPES))
Record = (Trade | BookSnapshot | BookDelta | Funding | OpenInterest | Liquidation | Instrument | Adl
          | LongShortRatio | TakerVolume | FeedEvent | DeadLetter)


@dataclass(frozen=True)
class FieldSpec:
    name: str
    kind: _Kind
    nullable: bool


@cache
def field_specs(cls: type) -> tuple[FieldSpec, ...]:
    hints = typing.get_type_hints(cls, include_extras=True)
    specs = []
    for f in fields(cls):
        hint = hints[f.name]
        nullable = False
        if isinstance(hint, types.UnionType) or typing.get_origin(hint) is typing.Union:
            args = [a for a in typing.get_args(hint) if a is not type(None)]
            nullable, hint = True, args[0]
        kind = typing.get_args(hint)[1]
        specs.append(FieldSpec(f.name, kind, nullable))
    return tuple(specs)


@cache
def table_schema(cls: type) -> pa.Schema:
    """The Arrow form of the warehouse table, without the Kafka bookkeeping columns."""
    return pa.schema([pa.field(s.name, s.kind.table, nullable=s.nullable) for s in field_specs(cls)])


def kafka_key(record) -> bytes:
    if type(record) is Pack:
        return record.key
    return f"{record.exchange}|{record.symbol or '*'}".encode()


PACK = "pack"      # the ``type`` header of a message holding a Pack


@dataclass(slots=True)
class Pack:
    """Several records bound for one Kafka partition of one topic, sent as one message.

    kafka-python spends about as long on each message as perpflow spends mapping a frame, whatever
    the message's size, so at high rates the ingest service packs records (``SpillingSink(pack_ms=
    ...)``). The value is the records' own encodings, one per line (orjson never writes a raw line
    break), in the order they were emitted, types mixed (a book's deltas and snapshots stay in
    order); a value without a line break is a single record, so every reader handles both with
    ``split_value`` and reads each line's own ``type``. The ``type`` header of a pack is ``pack``.
    The message key is the first record's: it picks the partition every record of the pack
    belongs to (``ingest.kafka.KeyPartitioner``), so each symbol's records stay in order."""

    topic: str
    key: bytes
    values: list[bytes]
    record_type: ClassVar[str] = PACK

    def records(self) -> list:
        return [decode(value) for value in self.values]

    def type_counts(self) -> Counter:
        return Counter(type_of(value) for value in self.values)


def type_of(value: bytes) -> str:
    """The record type an encoded record names first (``encode`` writes it first), without parsing it."""
    if not value.startswith(_TYPE_KEY):
        return ""
    end = value.find(b'"', len(_TYPE_KEY))
    return value[len(_TYPE_KEY):end].decode(errors="replace") if end > 0 else ""


def record_count(record_or_pack) -> int:
    """Records in what a sink was handed: a pack's size, else 1."""
    return len(record_or_pack.values) if type(record_or_pack) is Pack else 1


def type_counts(record_or_pack) -> Counter:
    """Records per type in what a sink was handed (a record, or a pack)."""
    if type(record_or_pack) is Pack:
        return record_or_pack.type_counts()
    return Counter({record_or_pack.record_type: 1})


def split_value(value: bytes) -> list[bytes]:
    """The records' encodings in a Kafka message value (one, or a ``Pack``'s)."""
    return value.split(b"\n")


# Built once per record type: encode and headers run for every record sent.
_TYPE_KEY = b'{"type":"'
_VALUE_PREFIX = {name: _TYPE_KEY + b'%s","v":%d,' % (name.encode(), SCHEMA_VERSION) for name in BY_NAME}
_HEADERS = {name: [("type", name.encode()), ("v", str(SCHEMA_VERSION).encode())] for name in (*BY_NAME, PACK)}


def encode(record) -> bytes:
    """orjson value with the record type and schema version first, for readers without headers
    (a ``Pack``: its records' values, one per line)."""
    if type(record) is Pack:
        return b"\n".join(record.values)
    return _VALUE_PREFIX[record.record_type] + orjson.dumps(record)[1:]


def headers(record_or_type) -> list[tuple[str, bytes]]:
    """Kafka headers for a record (or a record type name, for values already encoded). The list is
    shared by every record of the type: pass it on, do not change it."""
    return _HEADERS[record_or_type if isinstance(record_or_type, str) else record_or_type.record_type]


def decode(value: bytes):
    """Inverse of ``encode`` (for tests and tools; the loader parses whole batches inside DuckDB).
    A value of several lines is a ``Pack`` of them."""
    if b"\n" in value:
        lines = split_value(value)
        first = decode(lines[0])
        return Pack(topic=first.topic, key=kafka_key(first), values=lines)
    data = orjson.loads(value)
    cls = BY_NAME[data.pop("type")]
    data.pop("v")
    return cls(**data)
