"""Kafka -> DuckDB, exactly once, across crashes and broker restarts.

The offsets live in DuckDB, not in Kafka: each pass assigns every partition (no consumer-group
join), seeks to the stored next offset, reads up to the end offsets seen at start, and writes
the rows *and* the new offsets in one DuckDB transaction. A crash before COMMIT loses the
whole batch (it is read again next time); a crash after it has recorded the offsets with the
rows. The same offsets are then mirrored to the Kafka group for lag monitoring only.

A broker that lost its data (the memory-only development broker after a restart) is
detected two ways: a stored offset beyond the end offset, or the record just before the
stored offset no longer matching the fingerprint saved when it was loaded (the new broker
may already hold more messages than the old one had). Either way the pass says so loudly,
writes a ``broker_reset`` feed event and reloads that partition from its beginning. A stored
offset below the partition's beginning means the broker deleted records (retention) before
they were loaded: a ``retention_loss`` feed event with the number of records, then loading
goes on from the beginning. Both store the new start offset with the event, so each is
reported once, not on every pass.

A message may hold several records (``records.Pack``): they are loaded in the same transaction,
each row with the message's partition and offset.
"""

from __future__ import annotations

import hashlib
import logging
import time
from collections import Counter, defaultdict
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from functools import cache

import duckdb
import orjson
import pyarrow as pa
from kafka import TopicPartition
from kafka.errors import KafkaError
from kafka.structs import OffsetAndMetadata

from ingest import records
from ingest.records import split_value
from ingest.kafka import LOADER_GROUP, end_offsets, new_consumer, partitions_of
from warehouse.schema import raw_table_ddl
from warehouse.store import Warehouse
from warehouse.transaction import transaction

log = logging.getLogger(__name__)

DEFAULT_BATCH_ROWS = 50_000
# A pass gives up when no record came for this long while behind. It is well above kafka-python's
# request timeout (30.5 s by default): on a loaded machine a fetch the broker answers too late is
# failed and sent again after that timeout, which must not end the pass.
STALL_SECONDS = 120
MIRROR_TIMEOUT_MS = 10_000


@dataclass
class LoadReport:
    rows: Counter = field(default_factory=Counter)          # per raw table
    transactions: int = 0
    broker_resets: list[dict] = field(default_factory=list)
    retention_losses: list[dict] = field(default_factory=list)   # records the broker deleted before loading
    mirror_error: str | None = None                          # the lag-monitoring mirror to Kafka failed
    rejected: int = 0                                        # records sent to raw.dead_letters
    seconds: float = 0.0
    offsets: dict = field(default_factory=dict)             # (topic, partition) -> next offset

    @property
    def total(self) -> int:
        return sum(self.rows.values())


def fingerprint(message) -> str:
    digest = hashlib.blake2b(digest_size=8)
    digest.update(message.key or b"")
    digest.update(message.value or b"")
    return f"{message.timestamp}:{digest.hexdigest()}"


def record_type_of(message) -> str:
    for key, value in message.headers or ():
        if key == "type" and value != b"pack":     # a pack's lines name their own types
            return value.decode()
    return records.type_of(message.value or b"")


# --- the pass ---------------------------------------------------------------------------------

@cache
def insert_sql(cls) -> str:
    """INSERT that parses a batch of raw values inside DuckDB (3-4x faster than Arrow's JSON reader).

    The batch is an Arrow table (kafka_partition, kafka_offset, value); the JSON structure and
    the conversions to warehouse types are generated from the record class.
    """
    specs = records.field_specs(cls)
    structure = orjson.dumps({s.name: s.kind.wire_sql for s in specs}).decode()
    convert = {
        records.NUM: "r.{0}::DOUBLE",
        records.MS: "epoch_ms(r.{0})",
        records.NS: "make_timestamp(r.{0} // 1000)",
        records.LEVELS: "list_transform(r.{0}, lambda lvl: {{'price': lvl[1]::DOUBLE, 'qty': lvl[2]::DOUBLE}})",
    }
    columns = ", ".join(convert.get(s.kind, "r.{0}").format(s.name) + f" AS {s.name}" for s in specs)
    rows = (f"SELECT {columns}, kafka_partition, kafka_offset FROM "
            f"(SELECT kafka_partition, kafka_offset, json_transform_strict(value, '{structure}') AS r FROM batch_rows)")
    key = getattr(cls, "unique_key", None)
    if key is None:
        return f"INSERT INTO raw.{cls.table} BY NAME {rows}"
    # Republished rows (a re-poll of the same periods): keep the first of each key, in the batch
    # (lowest offset) and against what earlier batches stored.
    match = " AND ".join(f"stored.{k} = fresh.{k}" for k in key)
    return (f"INSERT INTO raw.{cls.table} BY NAME SELECT * FROM ({rows}) AS fresh "
            f"WHERE NOT EXISTS (SELECT 1 FROM raw.{cls.table} AS stored WHERE {match}) "
            f"QUALIFY row_number() OVER (PARTITION BY {', '.join(key)} "
            f"ORDER BY kafka_partition NULLS FIRST, kafka_offset NULLS FIRST) = 1")


# Errors a bad record causes (as opposed to a bug or a full disk, which must surface).
_DATA_ERRORS = (duckdb.ConversionException, duckdb.InvalidInputException, duckdb.ConstraintException)

# Topics that carry one record type need no per-message type check.
_SINGLE_TYPE = {topic: [cls for cls in records.RECORD_TYPES if cls.topic == topic] for topic in records.TOPICS}
_SINGLE_TYPE = {topic: classes[0] for topic, classes in _SINGLE_TYPE.items() if len(classes) == 1}


class _Batch:
    """Records read but not yet committed, grouped by destination table."""

    def __init__(self):
        self.values: dict[type, list[bytes]] = defaultdict(list)
        self.partitions: dict[type, list[int]] = defaultdict(list)
        self.offsets: dict[type, list[int]] = defaultdict(list)
        self.rejects: list[tuple] = []       # (message-like, reason)
        self.last: dict[TopicPartition, object] = {}
        self.events: list = []               # loader feed events (broker resets, retention losses)
        self.restarts: dict[TopicPartition, int] = {}   # partitions moved to a new start offset
        self.size = 0

    def extend(self, tp: TopicPartition, messages: list) -> None:
        if not messages:
            return
        cls = _SINGLE_TYPE.get(tp.topic)
        if cls is not None:
            values = [m.value or b"" for m in messages]
            rows = b"\n".join(values).count(b"\n") + 1
            if rows == len(values):      # one record per message: no pack to split
                self.values[cls].extend(values)
                self.partitions[cls].extend(m.partition for m in messages)
                self.offsets[cls].extend(m.offset for m in messages)
            else:
                for m in messages:
                    self._add(cls, m)
            self.size += rows
        else:
            for m in messages:
                lines = split_value(m.value or b"")
                if len(lines) == 1:
                    self._route(m, record_type_of(m), m)
                else:       # a pack: each line names its type
                    for line in lines:
                        self._route(m, records.type_of(line), _Rejected(m.topic, m.partition, m.offset, line))
        self.last[tp] = messages[-1]

    def _add(self, cls, message) -> None:
        """A message's records (several where it is a ``records.Pack``: they share its offset)."""
        lines = split_value(message.value or b"")
        self.values[cls].extend(lines)
        self.partitions[cls].extend([message.partition] * len(lines))
        self.offsets[cls].extend([message.offset] * len(lines))

    def _route(self, message, record_type: str, item) -> None:
        """One record of a topic that carries several types (``item``: the message, or a pack's line)."""
        cls = records.BY_NAME.get(record_type)
        if cls is None or cls.topic != message.topic:
            self.rejects.append((item, f"unknown record type {record_type!r} on {message.topic}"))
            return
        self.values[cls].append(item.value)
        self.partitions[cls].append(message.partition)
        self.offsets[cls].append(message.offset)
        self.size += 1


@dataclass
class _Rejected:
    topic: str
    partition: int
    offset: int
    value: bytes


def _arrow_batch(values: list[bytes], partitions: list[int], offsets: list[int]) -> pa.Table:
    return pa.table({"kafka_partition": pa.array(partitions, pa.int32()),
                     "kafka_offset": pa.array(offsets, pa.int64()),
                     "value": pa.array(values, pa.string())})


def _insert(con, cls, table: pa.Table) -> int:
    """Rows inserted (fewer than the batch's where a ``unique_key`` table already had some)."""
    batch_rows = table  # noqa: F841 - read by DuckDB's replacement scan in insert_sql
    return con.execute(insert_sql(cls)).fetchone()[0]


def _split_bad(cls, batch: _Batch, topic: str) -> tuple[pa.Table | None, list[tuple]]:
    """Find the records of a failed insert that do not load; the good ones still do.

    Each record is tried alone with the very same INSERT against an empty in-memory copy of the
    table, so the verdict matches the real insert without aborting its transaction.
    """
    keep, rejects = [], []
    probe = duckdb.connect()
    probe.execute("CREATE SCHEMA raw")
    probe.execute(raw_table_ddl(cls))
    for i, value in enumerate(batch.values[cls]):
        try:
            _insert(probe, cls, _arrow_batch([value], [0], [0]))
            keep.append(i)
        except _DATA_ERRORS as exc:
            rejects.append((_Rejected(topic, batch.partitions[cls][i], batch.offsets[cls][i], value), f"load: {exc}"))
    probe.close()
    if not keep:
        return None, rejects
    pick = lambda column: [column[i] for i in keep]  # noqa: E731
    return _arrow_batch(pick(batch.values[cls]), pick(batch.partitions[cls]), pick(batch.offsets[cls])), rejects


def _dead_letter_rows(rejects: list[tuple]) -> pa.Table:
    now = time.time_ns()
    values = [records.encode(records.DeadLetter(
        exchange="perpflow-loader", source=f"{m.topic}:{m.partition}:{m.offset}", reason=reason,
        raw=(m.value or b"").decode("utf-8", "replace"), ts_recv=now)) for m, reason in rejects]
    return _arrow_batch(values, [None] * len(values), [None] * len(values))


def _commit(con, batch: _Batch, report: LoadReport) -> None:
    rejects = list(batch.rejects)
    tables = {cls: _arrow_batch(values, batch.partitions[cls], batch.offsets[cls])
              for cls, values in batch.values.items()}
    split: set[type] = set()
    while True:
        failed = None
        try:
            inserted = {}
            with transaction(con):
                for cls, table in tables.items():
                    failed = cls
                    inserted[cls] = _insert(con, cls, table)
                failed = None
                _write_bookkeeping(con, rejects, batch)
        except _DATA_ERRORS:
            if failed is None or failed in split:
                raise
            # A record that does not parse aborts the transaction: set it aside and start over.
            split.add(failed)
            good, bad = _split_bad(failed, batch, failed.topic)
            rejects += bad
            if good is None:
                del tables[failed]
            else:
                tables[failed] = good
            continue
        _account(report, inserted, rejects, batch)
        return


def _write_bookkeeping(con, rejects, batch: _Batch) -> None:
    """Dead letters, loader events and offsets, in the batch's open transaction."""
    if rejects:
        log.error("loader: %d records could not be loaded; kept in raw.dead_letters", len(rejects))
        _insert(con, records.DeadLetter, _dead_letter_rows(rejects))
    if batch.events:
        values = [records.encode(e) for e in batch.events]
        _insert(con, records.FeedEvent, _arrow_batch(values, [None] * len(values), [None] * len(values)))
    for tp, offset in batch.restarts.items():
        if tp not in batch.last:     # nothing loaded yet from the new start: remember the start itself
            con.execute("INSERT OR REPLACE INTO meta.kafka_offsets VALUES (?, ?, ?, NULL, now())",
                        [tp.topic, tp.partition, offset])
    for tp, message in batch.last.items():
        con.execute("INSERT OR REPLACE INTO meta.kafka_offsets VALUES (?, ?, ?, ?, now())",
                    [tp.topic, tp.partition, message.offset + 1, fingerprint(message)])


def _account(report: LoadReport, inserted: dict, rejects, batch: _Batch) -> None:
    for cls, rows in inserted.items():
        report.rows[cls.table] += rows
    report.rows["feed_events"] += len(batch.events)
    if rejects:
        report.rows["dead_letters"] += len(rejects)
        report.rejected += len(rejects)
    for tp, offset in batch.restarts.items():
        report.offsets[(tp.topic, tp.partition)] = offset
    for tp, message in batch.last.items():
        report.offsets[(tp.topic, tp.partition)] = message.offset + 1
    report.transactions += 1


def insert_records(con, items) -> Counter:
    """Insert records straight into the raw tables (no Kafka; partition and offset stay NULL).

    For benchmarks, fixtures and backfills of generated data: the same parsing SQL as the
    loader, without its exactly-once bookkeeping. The caller owns the transaction.
    """
    grouped: dict[type, list[bytes]] = defaultdict(list)
    for record in items:
        grouped[type(record)].append(records.encode(record))
    counts: Counter = Counter()
    for cls, values in grouped.items():
        counts[cls.table] += _insert(con, cls, _arrow_batch(values, [None] * len(values), [None] * len(values)))
    return counts


class _Committer:
    """Commits batches on a second thread, one at a time and in order, while the next one is read.

    DuckDB parses and writes without the GIL, so decoding Kafka records (pure Python in
    kafka-python) overlaps with the previous batch's transaction. A batch is only handed over
    whole, with its offsets, so each transaction still holds rows and offsets together; a
    failed commit is raised in the reading thread at its next check.
    """

    def __init__(self, con, report: LoadReport, progress: Callable[[LoadReport], None] | None):
        self.con, self.report, self.progress = con, report, progress
        self.pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="perpflow-loader-commit")
        self.in_flight: Future | None = None

    def check(self) -> None:
        if self.in_flight is not None and self.in_flight.done():
            self.wait()

    def wait(self) -> None:
        if self.in_flight is not None:
            in_flight, self.in_flight = self.in_flight, None
            in_flight.result()
            if self.progress:
                self.progress(self.report)

    def submit(self, batch: _Batch) -> None:
        self.wait()
        self.in_flight = self.pool.submit(_commit, self.con, batch, self.report)

    def close(self) -> None:
        self.pool.shutdown(wait=True)


def load_once(warehouse: Warehouse, bootstrap: str, *, batch_rows: int = DEFAULT_BATCH_ROWS,
              topics=records.TOPICS, progress: Callable[[LoadReport], None] | None = None) -> LoadReport:
    """One bounded pass: everything that was in Kafka when it started, then return."""
    started = time.time()
    report = LoadReport()
    committer = None
    consumer = new_consumer(bootstrap, group_id=LOADER_GROUP, client_id="perpflow-loader")
    try:
        with warehouse.writer() as con:
            tps = partitions_of(consumer, topics)
            if not tps:
                return report
            begins = consumer.beginning_offsets(tps)
            ends = end_offsets(consumer, tps)
            stored = {(t, p): (n, f) for t, p, n, f in con.execute(
                "SELECT topic, part, next_offset, last_fingerprint FROM meta.kafka_offsets").fetchall()}
            batch = _Batch()
            verify: dict[TopicPartition, tuple[int, str]] = {}
            for tp in tps:
                check = _seek_start(consumer, tp, stored.get((tp.topic, tp.partition), (None, None)),
                                    begins[tp], ends[tp], batch, report)
                if check:
                    verify[tp] = check
            remaining = {tp for tp in tps if consumer.position(tp) < ends[tp] or tp in verify}
            last_progress = time.monotonic()
            committer = _Committer(con, report, progress)
            while remaining:
                polled = consumer.poll(timeout_ms=1000, max_records=50_000)
                if polled:
                    last_progress = time.monotonic()
                elif time.monotonic() - last_progress > STALL_SECONDS:
                    stuck = ", ".join(f"{tp.topic}[{tp.partition}]@{consumer.position(tp)}/{ends[tp]}" for tp in remaining)
                    raise RuntimeError(f"loader got no records for {STALL_SECONDS}s while behind on {stuck}; "
                                       "nothing was committed for the unfinished batch")
                for tp, messages in polled.items():
                    if tp not in remaining or not messages:
                        continue
                    if tp in verify:
                        expected_offset, expected_fp = verify.pop(tp)
                        first = messages[0]
                        if first.offset != expected_offset - 1 or fingerprint(first) != expected_fp:
                            _broker_reset(consumer, tp, begins[tp], batch, report,
                                          f"record at offset {expected_offset - 1} changed since it was loaded")
                            continue
                        messages = messages[1:]
                    if messages and messages[-1].offset >= ends[tp]:
                        messages = [m for m in messages if m.offset < ends[tp]]
                    batch.extend(tp, messages)
                    if tp not in verify and consumer.position(tp) >= ends[tp]:
                        remaining.discard(tp)
                committer.check()
                if batch.size >= batch_rows or (not remaining and (batch.size or batch.events)):
                    committer.submit(batch)
                    batch = _Batch()
            committer.wait()
            if batch.events:
                _commit(con, batch, report)
            con.execute("INSERT INTO meta.loader_runs VALUES (to_timestamp(?), now(), ?, ?, ?, ?, ?)",
                        [started, report.total, report.transactions, orjson.dumps(dict(report.rows)).decode(),
                         len(report.broker_resets), bootstrap])
        _mirror_offsets(consumer, report)
    finally:
        if committer is not None:
            committer.close()
        consumer.close()
        report.seconds = time.time() - started
    return report


def _seek_start(consumer, tp: TopicPartition, stored: tuple, begin: int, end: int, batch: _Batch,
                report: LoadReport) -> tuple[int, str] | None:
    """Seek ``tp`` to where this pass starts reading it.

    ``stored`` is (next offset, fingerprint) from meta.kafka_offsets, or (None, None). Returns
    them when the record before the stored offset must be re-read and compared first.
    """
    next_offset, fp = stored
    if next_offset is None:
        consumer.seek(tp, begin)
    elif next_offset > end:
        _broker_reset(consumer, tp, begin, batch, report, f"stored offset {next_offset} > end offset {end}")
    elif next_offset < begin:
        _retention_loss(consumer, tp, next_offset, begin, batch, report)
    elif next_offset > begin and fp:
        consumer.seek(tp, next_offset - 1)
        return next_offset, fp
    else:
        consumer.seek(tp, next_offset)
    return None


def _mirror_offsets(consumer, report: LoadReport) -> None:
    """Copy the committed offsets to the Kafka group for lag tools and the Dagster sensor.

    DuckDB is the source of truth and already holds rows and offsets, so a failed mirror is a
    warning: the pass and the replica go on, and the next pass mirrors again.
    """
    if not report.offsets:
        return
    try:
        consumer.commit({TopicPartition(t, p): OffsetAndMetadata(o, "", -1) for (t, p), o in report.offsets.items()},
                        timeout_ms=MIRROR_TIMEOUT_MS)
    except (KafkaError, OSError) as exc:
        report.mirror_error = f"{exc.__class__.__name__}: {exc}"
        log.warning("loader: could not mirror the loaded offsets to Kafka group %s (%s); the rows and offsets are "
                    "committed in DuckDB, only Kafka-side lag monitoring is stale until the next pass",
                    LOADER_GROUP, report.mirror_error)


def _restart_partition(consumer, tp: TopicPartition, begin: int, batch: _Batch, kind: str, detail: dict) -> None:
    """Read ``tp`` from ``begin`` and record why with this batch, with ``begin`` as its stored offset."""
    consumer.seek(tp, begin)
    batch.restarts[tp] = begin
    batch.events.append(records.FeedEvent(
        exchange="perpflow-loader", symbol=None, kind=kind, ts_recv=time.time_ns(),
        detail=orjson.dumps({"topic": tp.topic, "partition": tp.partition, **detail, "reload_from": begin}).decode()))


def _broker_reset(consumer, tp: TopicPartition, begin: int, batch: _Batch, report: LoadReport, why: str) -> None:
    log.warning(f"BROKER DATA LOSS on {tp.topic}[{tp.partition}]: {why}. The broker restarted without its data "
                f"(the embedded broker is memory-only); reloading this partition from offset {begin}.")
    report.broker_resets.append({"topic": tp.topic, "partition": tp.partition, "reason": why})
    _restart_partition(consumer, tp, begin, batch, "broker_reset", {"reason": why})


def _retention_loss(consumer, tp: TopicPartition, stored: int, begin: int, batch: _Batch, report: LoadReport) -> None:
    lost = begin - stored
    log.warning(f"RECORDS LOST TO KAFKA RETENTION on {tp.topic}[{tp.partition}]: offsets {stored}..{begin - 1} "
                f"({lost} records) were deleted by the broker before they were loaded; loading continues from "
                f"offset {begin}. Load more often or raise the topic's retention.ms.")
    loss = {"topic": tp.topic, "partition": tp.partition, "first_lost": stored, "lost": lost}
    report.retention_losses.append(loss)
    _restart_partition(consumer, tp, begin, batch, "retention_loss", {"first_lost": stored, "lost": lost})
