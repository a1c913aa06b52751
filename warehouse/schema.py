"""The warehouse schema, created and migrated by code.

Schemas: ``raw`` (one append-only table per record type, each row with the Kafka partition
and offset it came from), ``meta`` (loader offsets, runs, applied migrations) and
``analytics`` (tables written by Dagster assets).

Raw tables carry no primary key: DuckDB bulk-loads 2-3x faster without one, and the loader's
offsets-in-the-same-transaction design already prevents broker-side duplicates. Record types a
venue republishes on every poll (``unique_key`` in ``ingest.records``) are de-duplicated by the
loader's INSERT on that key instead. Migrations
after version 1 must be idempotent statements (``ADD COLUMN IF NOT EXISTS``), because
version 1 is generated from the current record classes.
"""

from __future__ import annotations

import duckdb

from ingest import records
from warehouse import ddl_microstructure
from warehouse import ddl_quant
from warehouse import units
from warehouse.transaction import transaction

KAFKA_COLUMNS = "kafka_partition INTEGER, kafka_offset BIGINT"


def raw_table_ddl(cls) -> str:
    columns = [f"{s.name} {s.kind.sql}{'' if s.nullable else ' NOT NULL'}" for s in records.field_specs(cls)]
    return f"CREATE TABLE IF NOT EXISTS raw.{cls.table} ({', '.join(columns)}, {KAFKA_COLUMNS})"


OHLCV_1M_DDL = """
CREATE TABLE IF NOT EXISTS analytics.ohlcv_1m (
    exchange VARCHAR NOT NULL,
    symbol VARCHAR NOT NULL,
    minute TIMESTAMP NOT NULL,
    open DOUBLE, high DOUBLE, low DOUBLE, close DOUBLE,
    vwap DOUBLE,
    volume DOUBLE,            -- base units
    quote_volume DOUBLE,
    buy_volume DOUBLE,        -- taker buys, base units
    sell_volume DOUBLE,
    trade_count BIGINT,       -- venue trades (aggTrade first..last ids), not messages
    day DATE NOT NULL
)"""


def _v1() -> list[str]:
    return [
        "CREATE SCHEMA IF NOT EXISTS raw",
        "CREATE SCHEMA IF NOT EXISTS meta",
        "CREATE SCHEMA IF NOT EXISTS analytics",
        *(raw_table_ddl(cls) for cls in records.RECORD_TYPES),
        """CREATE TABLE IF NOT EXISTS meta.kafka_offsets (
               topic VARCHAR NOT NULL, part INTEGER NOT NULL,
               next_offset BIGINT NOT NULL,          -- next to read (last loaded + 1)
               last_fingerprint VARCHAR,             -- hash of the record at next_offset - 1
               updated_at TIMESTAMP NOT NULL,
               PRIMARY KEY (topic, part))""",
        """CREATE TABLE IF NOT EXISTS meta.loader_runs (
               started_at TIMESTAMP NOT NULL, finished_at TIMESTAMP NOT NULL,
               rows_loaded BIGINT NOT NULL, transactions INTEGER NOT NULL,
               rows_by_table JSON, broker_resets INTEGER NOT NULL, bootstrap VARCHAR)""",
        OHLCV_1M_DDL,
    ]


# Delivery contracts publish mark prices without funding (ingest.records.Funding).
FUNDING_RATE_NULLABLE = ["ALTER TABLE raw.funding ALTER COLUMN rate DROP NOT NULL",
                         "ALTER TABLE raw.funding ALTER COLUMN interval_hours DROP NOT NULL"]

# Record schema 3: venue book checksums (OKX) and instrument reference data.
BOOK_CHECKSUMS_AND_INSTRUMENTS = ["ALTER TABLE raw.book_snapshots ADD COLUMN IF NOT EXISTS checksum BIGINT",
                                  "ALTER TABLE raw.book_deltas ADD COLUMN IF NOT EXISTS checksum BIGINT",
                                  raw_table_ddl(records.Instrument)]

# Record schema 4: ADL fills and states (dYdX DELEVERAGED trades, Binance ADL trades, ...) and the
# count of local uncrossings on book snapshots (venues whose books cross in normal operation: dYdX).
ADL_AND_UNCROSSED = ["ALTER TABLE raw.book_snapshots ADD COLUMN IF NOT EXISTS uncrossed BIGINT",
                     raw_table_ddl(records.Adl)]

# Record schema 5: the short side of open interest on venues where it differs from the long (GMX:
# the pool is every position's counterparty).
OPEN_INTEREST_SHORT = ["ALTER TABLE raw.open_interest ADD COLUMN IF NOT EXISTS open_interest_short DOUBLE"]

# Record schema 6: the venues' own positioning statistics per period (long/short ratios by population,
# taker buy/sell volume), polled.
POSITIONING = [raw_table_ddl(records.LongShortRatio), raw_table_ddl(records.TakerVolume)]

MIGRATIONS: list[tuple[int, list[str]]] = [(1, _v1()), (2, ddl_microstructure.STATEMENTS), (3, ddl_quant.STATEMENTS),
                                           (4, FUNDING_RATE_NULLABLE), (5, BOOK_CHECKSUMS_AND_INSTRUMENTS),
                                           (6, units.STATEMENTS), (7, ADL_AND_UNCROSSED),
                                           (8, ["CREATE SCHEMA IF NOT EXISTS analytics", ddl_microstructure.ADL_EVENTS]),
                                           (9, OPEN_INTEREST_SHORT), (10, POSITIONING),
                                           (11, ddl_microstructure.POSITIONING_STATEMENTS),
                                           (12, ddl_microstructure.LIQUIDATION_MAP_STATEMENTS),
                                           (13, ddl_microstructure.MARKET_STRESS_DEPTH_BOOKS),
                                           (14, ddl_microstructure.LIQUIDATION_SCORE_RANKED_SHARE)]
LATEST = MIGRATIONS[-1][0]


def migrate(con: duckdb.DuckDBPyConnection) -> int:
    """Apply pending migrations, each in its own transaction; return the schema version."""
    con.execute("CREATE SCHEMA IF NOT EXISTS meta")
    con.execute("CREATE TABLE IF NOT EXISTS meta.schema_migrations "
                "(version INTEGER PRIMARY KEY, applied_at TIMESTAMP NOT NULL)")
    applied = {row[0] for row in con.execute("SELECT version FROM meta.schema_migrations").fetchall()}
    for version, statements in MIGRATIONS:
        if version in applied:
            continue
        with transaction(con):
            for statement in statements:
                con.execute(statement)
            con.execute("INSERT INTO meta.schema_migrations VALUES (?, now())", [version])
    return LATEST
