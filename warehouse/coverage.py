"""What each venue's public data covers, as a table users and analytics can join.

``meta.venue_coverage`` is rewritten from the venue registry (``ingest.venues``, each venue's
``COVERAGE``) whenever a writer opens the warehouse, so it always says what the running code
collects: one row per venue and kind of data (``ingest.venue.DATA_KINDS``) with its coverage
(complete, sampled, lower bound, modelled, unavailable) and the reason.
"""

from __future__ import annotations

import duckdb

from ingest.venue import DATA_KINDS, Coverage
from ingest.venues import REGISTRY

COVERAGE_TABLE = "meta.venue_coverage"


def coverage_rows() -> list[tuple[str, str, str, str]]:
    """(exchange, data, coverage, note) for every registered venue and kind of data; a kind a venue
    does not declare is "unavailable" with that said."""
    rows = []
    for exchange in sorted(REGISTRY):
        declared = REGISTRY[exchange].COVERAGE
        for kind in DATA_KINDS:
            coverage, note = declared.get(kind, (Coverage.UNAVAILABLE, "not declared by the venue module"))
            rows.append((exchange, kind, coverage.value, note))
    return rows


def publish_venue_coverage(con: duckdb.DuckDBPyConnection) -> None:
    con.execute("CREATE SCHEMA IF NOT EXISTS meta")
    con.execute(f"CREATE OR REPLACE TABLE {COVERAGE_TABLE} (exchange VARCHAR NOT NULL, data VARCHAR NOT NULL, "
                "coverage VARCHAR NOT NULL, note VARCHAR NOT NULL, PRIMARY KEY (exchange, data))")
    con.executemany(f"INSERT INTO {COVERAGE_TABLE} VALUES (?, ?, ?, ?)", coverage_rows())
