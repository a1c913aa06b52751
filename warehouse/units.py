"""Sizes in base units and USD: the one definition of the contract conversion.

Venues quote sizes either in base units (Binance USD-M, Bybit linear) or in contracts (Binance
COIN-M, OKX); the ``Instrument`` records in ``raw.instruments`` say what a contract is worth
(``ingest.records.Instrument``). Migration 6 creates these objects in the warehouse, so every
reader, users' SQL on the replica included, converts the same way:

* ``raw.instrument_units``: the latest instrument row of each (exchange, symbol). Latest rather
  than as of each row, so a rewritten past partition uses the current contract size.
* ``raw.qty_multiplier(qty_unit, contract_size, contract_size_unit)``: what one unit of size is
  worth: 1 base unit (``base``), ``contract_size`` base units (linear contracts) or
  ``contract_size`` USD (inverse contracts). NULL when that cannot be known: contracts of a
  market without an instrument row, or with a NULL or zero contract size. Such rows are
  *unconvertible*: readers leave them out of every sum and report them
  (``unconvertible_rows``), never drop them silently.
* ``raw.qty_is_inverse(qty_unit, contract_size_unit)``: the size is USD per contract.
* ``raw.base_qty(qty, price, ...)``: ``qty * multiplier``, divided by ``price`` for inverse
  contracts.
* ``raw.usd_notional(qty, price, ...)``: ``qty * multiplier * price`` (quote notional, USDT and
  USDC at par); for inverse contracts exactly ``qty * multiplier``, no price involved.

The numpy readers (book depth, open interest) take ``qty_multiplier`` and ``qty_is_inverse`` per
row from SQL and apply the same formulas in ``transforms`` (``transforms.open_interest``;
``transforms.depth`` sums each book's levels and then scales the sums by the multiplier).

Book snapshots carry no unit of their own: their levels are in the market's unit, the
instrument's, or for a market recorded before instruments were published, the unit all of its
trades in the window carry (``BOOK_UNITS``).
"""

from __future__ import annotations

from dataclasses import dataclass

INSTRUMENT_UNITS_VIEW = """
CREATE OR REPLACE VIEW raw.instrument_units AS
SELECT exchange, symbol, margin, qty_unit, contract_size, contract_size_unit, ts_recv AS published_at
FROM raw.instruments
QUALIFY row_number() OVER (PARTITION BY exchange, symbol
                           ORDER BY ts_recv DESC, kafka_partition DESC NULLS LAST, kafka_offset DESC NULLS LAST) = 1
"""

MACROS = [
    """CREATE OR REPLACE MACRO raw.qty_multiplier(qty_unit, contract_size, contract_size_unit) AS
       CASE WHEN qty_unit = 'base' THEN 1.0::DOUBLE
            WHEN qty_unit = 'contracts' AND contract_size > 0 AND contract_size_unit IN ('base', 'usd')
            THEN contract_size END""",
    """CREATE OR REPLACE MACRO raw.qty_is_inverse(qty_unit, contract_size_unit) AS
       coalesce(qty_unit = 'contracts' AND contract_size_unit = 'usd', false)""",
    """CREATE OR REPLACE MACRO raw.base_qty(qty, price, qty_unit, contract_size, contract_size_unit) AS
       CASE WHEN raw.qty_is_inverse(qty_unit, contract_size_unit)
            THEN qty * raw.qty_multiplier(qty_unit, contract_size, contract_size_unit) / nullif(price, 0)
            ELSE qty * raw.qty_multiplier(qty_unit, contract_size, contract_size_unit) END""",
    """CREATE OR REPLACE MACRO raw.usd_notional(qty, price, qty_unit, contract_size, contract_size_unit) AS
       CASE WHEN raw.qty_is_inverse(qty_unit, contract_size_unit)
            THEN qty * raw.qty_multiplier(qty_unit, contract_size, contract_size_unit)
            ELSE qty * raw.qty_multiplier(qty_unit, contract_size, contract_size_unit) * price END""",
]

STATEMENTS: list[str] = [INSTRUMENT_UNITS_VIEW, *MACROS]

# The unit columns of a row's market (``unit.contract_size``, ...), joined onto a raw table aliased ``r``.
UNIT_JOIN = "LEFT JOIN raw.instrument_units AS unit USING (exchange, symbol)"

# The unit of each market's book levels over [$start, $end): the instrument's, else the one unit
# its trades in the window carry (markets recorded before instruments existed), else unknown.
BOOK_UNITS = """
SELECT exchange, symbol, qty_unit, contract_size, contract_size_unit FROM raw.instrument_units
UNION ALL BY NAME
SELECT exchange, symbol, any_value(qty_unit) AS qty_unit
FROM raw.trades ANTI JOIN raw.instrument_units USING (exchange, symbol)
WHERE ts_exchange >= $start AND ts_exchange < $end
GROUP BY ALL HAVING count(DISTINCT qty_unit) = 1
"""

MARKETS_SHOWN = 5


@dataclass(frozen=True)
class UnconvertibleRows:
    """Rows a reader left out because their size has no known value."""

    rows: int
    markets: tuple[str, ...]      # "exchange symbol: rows", most rows first, at most MARKETS_SHOWN


def unconvertible_rows(con, table: str, start, end, *, where: str = "TRUE") -> UnconvertibleRows:
    """Rows of ``raw.<table>`` with ``ts_exchange`` in [start, end) matching ``where`` (alias ``r``)
    whose size cannot be converted, the same rows the readers leave out."""
    if table == "book_snapshots":
        source, qty_unit = f"({BOOK_UNITS})", "unit.qty_unit"
    else:
        source, qty_unit = "raw.instrument_units", "r.qty_unit"
    found = con.execute(f"""
        SELECT exchange, symbol, count(*) AS n
        FROM raw.{table} AS r LEFT JOIN {source} AS unit USING (exchange, symbol)
        WHERE r.ts_exchange >= $start AND r.ts_exchange < $end AND ({where})
          AND raw.qty_multiplier({qty_unit}, unit.contract_size, unit.contract_size_unit) IS NULL
        GROUP BY ALL ORDER BY n DESC, exchange, symbol""", {"start": start, "end": end}).fetchall()
    shown = tuple(f"{exchange} {symbol}: {n}" for exchange, symbol, n in found[:MARKETS_SHOWN])
    return UnconvertibleRows(rows=sum(n for _, _, n in found), markets=shown)
