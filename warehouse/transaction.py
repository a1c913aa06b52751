"""One DuckDB transaction whose failure reports its own error, never a rollback's."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

import duckdb


@contextmanager
def transaction(con: duckdb.DuckDBPyConnection) -> Iterator[duckdb.DuckDBPyConnection]:
    """BEGIN, the body, COMMIT; on an error in the body, ROLLBACK and re-raise that error.

    COMMIT stays outside the rollback handler: a COMMIT that fails (a full disk) has already
    ended the transaction, and a ROLLBACK after it would replace the real error with "cannot
    rollback - no transaction is active". A rollback that fails for any other reason (an
    invalidated database) is added to the original error as a note instead of hiding it.
    """
    con.execute("BEGIN")
    try:
        yield con
    except BaseException as exc:
        try:
            con.execute("ROLLBACK")
        except duckdb.Error as rollback_error:
            exc.add_note(f"the rollback after this error failed too: {rollback_error}")
        raise
    con.execute("COMMIT")
