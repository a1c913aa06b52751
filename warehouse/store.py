"""The DuckDB warehouse file: one writer at a time, users on a read replica.

DuckDB 2.0 lets one process write a file and, while it does, nobody else may even read it
(a reader also blocks the writer). So every writer (Dagster runs, ``perpflow load``, tests)
takes the same cross-process file lock and keeps connections short, and users query
``warehouse_ro.duckdb``, a copy published atomically (copy to a temp file, ``os.replace``)
under that lock. Readers of the old replica keep their inode; new readers see the new one.
"""

from __future__ import annotations

import datetime
import os
import shutil
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import duckdb
from filelock import FileLock, Timeout

from ingest.records import RECORD_TYPES, MarketRecord
from warehouse.coverage import publish_venue_coverage
from warehouse.schema import migrate


class WarehouseBusy(RuntimeError):
    pass


class Warehouse:
    def __init__(self, path: Path | str, replica_path: Path | str | None = None, lock_timeout: float = 600.0):
        self.path = Path(path)
        self.replica_path = Path(replica_path) if replica_path else self.path.with_name(
            self.path.stem + "_ro" + self.path.suffix)
        self.lock = FileLock(str(self.path) + ".lock", timeout=lock_timeout)
        self._migrated = False

    @classmethod
    def from_settings(cls, settings) -> "Warehouse":
        return cls(settings.warehouse_path, settings.replica_path)

    @contextmanager
    def _locked(self) -> Iterator[None]:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        try:
            self.lock.acquire()
        except Timeout:
            raise WarehouseBusy(
                f"another writer has held {self.lock.lock_file} for over {self.lock.timeout:.0f}s; "
                "wait for the running load/asset to finish or stop it"
            ) from None
        try:
            yield
        finally:
            self.lock.release()

    @contextmanager
    def writer(self) -> Iterator[duckdb.DuckDBPyConnection]:
        """The only way to write the live file; holds the writer lock for the duration."""
        with self._locked():
            con = duckdb.connect(str(self.path))
            try:
                if not self._migrated:
                    migrate(con)
                    publish_venue_coverage(con)
                    self._migrated = True
                yield con
            finally:
                con.close()

    @contextmanager
    def reader(self, *, live: bool = False, file_access: bool = False) -> Iterator[duckdb.DuckDBPyConnection]:
        """A read-only connection for users' SQL: the replica, or with ``live`` the live file.

        The replica never blocks the writer. The live file is opened read-only under the writer
        lock, because in DuckDB 2.0 any connection to it, even a read-only one, blocks the
        writer: loads and assets wait until the connection closes. Queries cannot touch the
        file system (read_csv('/etc/passwd'), COPY TO, ATTACH) unless ``file_access`` is set.
        """
        config = {} if file_access else {"enable_external_access": False}
        if not live:
            if not self.replica_path.exists():
                raise FileNotFoundError(
                    f"no read replica at {self.replica_path} yet; run `perpflow load` or `perpflow demo` first")
            with duckdb.connect(str(self.replica_path), read_only=True, config=config) as con:
                yield con
            return
        with self._locked():
            if not self.path.exists():
                raise FileNotFoundError(f"no warehouse at {self.path} yet; run `perpflow load` or `perpflow demo` first")
            with duckdb.connect(str(self.path), read_only=True, config=config) as con:
                yield con

    def first_data_day(self) -> datetime.date | None:
        """The first UTC day any raw market table or imported candle has data for, read from the replica."""
        if not self.replica_path.exists():
            return None
        with self.reader() as con:
            tables = {name for (name,) in con.execute(
                "SELECT table_name FROM information_schema.tables WHERE table_schema = 'raw'").fetchall()}
            firsts = [f"SELECT min(ts_exchange) AS ts FROM raw.{cls.table}"
                      for cls in RECORD_TYPES if issubclass(cls, MarketRecord) and cls.table in tables]
            if "candles" in tables:
                firsts.append("SELECT min(ts) AS ts FROM raw.candles")
            if not firsts:
                return None
            first = con.execute(f"SELECT min(ts) FROM ({' UNION ALL '.join(firsts)})").fetchone()[0]
        return first.date() if first is not None else None

    def publish_replica(self) -> float:
        """Atomically replace the replica with a copy of the live file; returns seconds taken.

        The copy goes to a temporary file beside the replica first; if it fails (a full disk),
        the temporary file is removed and the old replica stays as it was.
        """
        started = time.perf_counter()
        with self.lock:
            if not self.path.exists():
                with self.writer():
                    pass
            wal = Path(str(self.path) + ".wal")
            if wal.exists():   # a crashed writer left a WAL: fold it in before copying
                with duckdb.connect(str(self.path)) as con:
                    con.execute("CHECKPOINT")
            tmp = self.replica_path.with_name(self.replica_path.name + f".tmp{os.getpid()}")
            try:
                shutil.copyfile(self.path, tmp)
                os.replace(tmp, self.replica_path)
            except BaseException:
                tmp.unlink(missing_ok=True)
                raise
        return time.perf_counter() - started
