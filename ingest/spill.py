"""A Kafka sink that never loses a record without saying so: while Kafka is unreachable, records
go to an append-only spill file and are drained in order once it answers again.

kafka-python's ``send`` blocks for up to ``max_block_ms`` when it has no metadata, and fails
in-flight batches only after ``delivery_timeout_ms``; both are kept short so an outage turns
into spilling within seconds instead of stalling the websocket loop. Once spilling, every
new record goes to the file (behind the ones already there) until the drain has caught up,
so per-key order is kept except for batches that were in flight when the broker went away.
Records that failed in flight are re-sent from the spill. Their fate is unknown: a frozen
broker may still read a request the client gave up on and append it when it wakes up. So
before re-sending, the drain reads what the broker appended after the last acknowledged
offset of each partition of those topics and skips spilled records already there: every
record lands exactly once. The same holds for a drain interrupted mid-way, by a failure or by a
SIGKILL. That knowledge (which topics are in doubt, and from which offset) is kept beside the
spill in ``<spill>.unsure.json`` from the moment spilling starts until the drain catches up, so
a restarted process checks the same range; where it has no offset for a partition (no send was
acknowledged there, or the file is gone) it checks that partition's last records, as many as the
spill holds lines.

The sink starts without a broker (it spills from the first record; the drain connects, creates
the topics and starts a producer once Kafka answers). Spill lines are
``[topic, key, record_type, value_json_string]``, each written with one ``write`` system call,
so a SIGKILL loses no accepted record and tears at most the line being written.

With ``pack_ms`` the sink packs market records per (topic, partition) into ``records.Pack``
messages; a pack is the unit everywhere below: in flight, spilled (record type ``pack``), checked
against Kafka and re-sent whole, so the drain recognises a pack the broker took after all. A pack
Kafka refuses for good is sent again record by record.

Failures, and what the sink does about each:

recovered from, with an ``on_event(kind, detail)`` call (``on_event`` may be called from any
thread, never while the sink holds its lock) and a log line:
  - Kafka unreachable, at start or later: spill, drain when it answers (status ``kafka``,
    ``outages``). A frozen broker (acknowledgements stop while sends are pending) shows as
    unreachable after ``ACK_STALL_S`` even before any send fails.
  - Disk full (ENOSPC/EDQUOT) or the spill at its size cap: stop writing the spill, count what
    is dropped per record type with its exchange-time range, retry; event ``spill_full`` when
    dropping starts, ``spill_dropped`` (counts and ranges) when writing resumes or at shutdown.
    Each dropped record is also handed to ``on_drop(record)`` (called with the sink's lock held:
    keep it short), so the caller can fetch again what its venue still serves. Two kinds are held
    in memory instead (up to ``HELD_RECORDS``) and spilled once writing resumes: feed events (the
    events that explain a loss must not be lost with it) and records that failed in flight (the
    broker may hold them after all, so fetching them again could store them twice; spilled, the
    drain's check settles it).
  - A torn or unreadable spill line: moved aside to ``<spill>.quarantine``, counted, event
    ``spill_quarantined``; the rest drains.
  - A record Kafka refuses for good (too large, invalid): a ``DeadLetter`` on md.dlq with the
    reason and the value (truncated to ``DEAD_LETTER_RAW_BYTES``) instead of spilling forever;
    a dead letter refused in turn is dropped and counted (``dropped['dead_letter_rejected']``).

raised as ``SinkFailure`` (from ``send``/``drain``; a failure met on kafka-python's thread is
raised by the next ``send``/``drain``), for the service to exit non-zero with the message:
  - the spill cannot be written or read for any reason other than a full disk (I/O error,
    read-only file system, permissions);
  - Kafka refuses the writes as unauthorized (a configuration problem, not an outage).
"""

from __future__ import annotations

import errno
import itertools
import logging
import os
import threading
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import orjson
from kafka.errors import (AuthorizationError, BrokerResponseError, InvalidProducerEpochError,
                          KafkaConfigurationError, KafkaError,
                          KafkaTimeoutError, OutOfOrderSequenceNumberError, ProducerFencedError,
                          UnknownProducerIdError)

from ingest import records
from ingest.records import DeadLetter, MarketRecord, Pack, record_count, type_counts
from ingest.kafka import (BrokerUnavailable, end_offsets, ensure_topics, key_partition, new_consumer,
                          new_producer, partitions_of, wait_for_metadata)

log = logging.getLogger(__name__)

DEFAULT_MAX_BYTES = 2 << 30
ACK_STALL_S = 10.0              # sends pending this long without any acknowledgement: Kafka is not answering
DISK_FULL_RETRY_S = 1.0         # how often a full disk is tried again (not on every record)
DEAD_LETTER_RAW_BYTES = 64 * 1024   # the refused value may be what was too large; keep its start
HELD_RECORDS = 50_000           # feed events and in-flight failures kept in memory while the spill is full
PACK_MAX_RECORDS = 1000
PACK_MAX_BYTES = 512 * 1024     # a pack stays well under Apache Kafka's default 1 MiB message limit
_FULL_DISK = (errno.ENOSPC, errno.EDQUOT)
# Non-retriable broker errors about the producer session rather than the record: a new session fixes them.
_SESSION_ERRORS = (OutOfOrderSequenceNumberError, UnknownProducerIdError, InvalidProducerEpochError,
                   ProducerFencedError)


class SinkFailure(RuntimeError):
    """The sink cannot go on without losing records silently; the message says what happened."""


def _rejected_for_good(exc: Exception) -> bool:
    """Kafka refused this record itself (too large, invalid), not the connection or the session."""
    return (isinstance(exc, BrokerResponseError) and not exc.retriable
            and not isinstance(exc, (AuthorizationError, *_SESSION_ERRORS)))


def _abandon(producer) -> None:
    """Fail every record a dead-session producer still holds, so its error callbacks spill them.

    kafka-python 3.0.12's ``close(timeout=0)`` raises from its internal ``flush`` before it gets
    to its force-close path, which would leave those records in limbo; so force-close the
    sender directly (it aborts incomplete batches and closes the network client), wait for it,
    then close the producer for its metrics and exit hook.
    """
    sender = producer._sender
    if sender is not None:
        sender.force_close()
        sender.join(10)
    try:
        producer.close(timeout=0)
    except KafkaError as exc:
        log.debug("closing an abandoned producer: %s", exc)


def parse_spill_line(line: bytes) -> tuple[str, str, str, str]:
    """A spill line as (topic, key, record_type, value); ValueError says why it is unreadable."""
    if not line.endswith(b"\n"):
        raise ValueError("torn line (no line end)")
    try:
        item = orjson.loads(line)
    except orjson.JSONDecodeError as exc:
        raise ValueError(f"not JSON ({exc})") from None
    if not (isinstance(item, list) and len(item) == 4 and all(isinstance(part, str) for part in item)):
        raise ValueError("not [topic, key, record_type, value]")
    topic, _, record_type, _ = item
    if record_type == records.PACK:
        if topic not in records.TOPICS:
            raise ValueError(f"a pack on {topic!r}, which is no market-data topic")
        return tuple(item)
    cls = records.BY_NAME.get(record_type)
    if cls is None or cls.topic != topic:
        raise ValueError(f"record type {record_type!r} does not belong on topic {topic!r}")
    return tuple(item)


@dataclass(slots=True)
class _OpenPack:
    pack: Pack
    first: object           # its first record: a pack that got no other is sent as that record
    opened: float           # time.monotonic() of its first record
    size: int = 0           # bytes of its value so far

    def closed(self):
        return self.pack if len(self.pack.values) > 1 else self.first


def _dead_letter(topic: str, key: str, value: str, exc: Exception) -> DeadLetter:
    exchange, _, symbol = key.partition("|")
    reason = f"rejected by Kafka: {exc.__class__.__name__}: {exc}"
    if len(value) > DEAD_LETTER_RAW_BYTES:
        reason += f" (value of {len(value)} characters truncated to {DEAD_LETTER_RAW_BYTES})"
    return DeadLetter(exchange=exchange, source=f"kafka:{topic}", reason=reason, raw=value[:DEAD_LETTER_RAW_BYTES],
                      ts_recv=time.time_ns(), symbol=None if symbol in ("", "*") else symbol)


class SpillingSink:
    def __init__(self, bootstrap: str, spill_path: Path, *, delivery_timeout_ms: int = 10_000,
                 max_bytes: int = DEFAULT_MAX_BYTES, partitions: int | None = None,
                 on_event: Callable[[str, dict], None] | None = None,
                 on_drop: Callable[[object], None] | None = None, connect_timeout_s: float = 2.0,
                 producer_config: dict | None = None, pack_ms: float = 0):
        """``partitions``: create the market-data topics with that many partitions before the first
        producer session (at start, or once Kafka first answers). ``producer_config`` overrides
        kafka-python producer settings. ``pack_ms`` > 0: market records bound for one partition
        (types mixed, in order) are sent together as a ``Pack`` once the oldest has waited that long (or the
        pack is full); the owner calls ``flush_due`` at least that often. 0 sends each record
        as its own message."""
        self.bootstrap = bootstrap
        self.spill_path = spill_path
        self.quarantine_path = spill_path.with_name(spill_path.name + ".quarantine")
        self.unsure_path = spill_path.with_name(spill_path.name + ".unsure.json")
        self.spill_path.parent.mkdir(parents=True, exist_ok=True)
        self.max_bytes = max_bytes
        self.on_event = on_event
        self.on_drop = on_drop
        self._partitions = partitions
        self._producer_config = {"max_block_ms": 200, "request_timeout_ms": 3000,
                                 "delivery_timeout_ms": delivery_timeout_ms, "retry_backoff_ms": 100,
                                 # Packs already wait pack_ms to fill: the producer need not linger as long.
                                 **({"linger_ms": 5} if pack_ms else {}),
                                 **(producer_config or {})}
        self.producer = None
        self._stale_producer = False    # its idempotent session may be dead (e.g. broker restarted)
        self.lock = threading.Lock()
        self.sent: Counter = Counter()              # records per type handed to Kafka
        self.messages_sent = 0                      # the Kafka messages they took (packs: fewer)
        self.spilled_total = 0
        self.drained_total = 0
        self.outages = 0
        self.quarantined_lines = 0
        self.rejected_to_dlq = 0
        self.dropped: Counter = Counter()           # reason -> records lost, all time
        self._dropping: str | None = None           # why the spill is not written right now
        self._drop_episode: dict[str, dict] = {}    # record type -> count and exchange-time range
        self._retry_write_at = 0.0
        self._failure: SinkFailure | None = None
        self._events: list[tuple[str, dict]] = []   # queued under the lock, delivered outside it
        self._held: list = []                       # records that met a full spill, spilled once it takes them
        # token -> value sent, not yet acknowledged or failed. The encoded value, not the record: a
        # record and its book levels kept alive until Kafka answers are work for every pass of the
        # garbage collector (a fifth of the message path's CPU); the rare failure decodes it back.
        self._in_flight: dict[int, bytes] = {}
        self._tokens = itertools.count()
        self._pending_since = 0.0
        self._last_ok = float("-inf")               # broker acknowledged a send or answered a probe
        self._last_failure = float("-inf")
        self._acked: dict[tuple[str, int], int] = {}   # (topic, partition) -> last acknowledged offset
        self._unsure_topics: set[str] = set()           # sends failed in flight: maybe appended after all
        self._check_from: dict[tuple[str, int], int] = {}   # where a doubt begins, per (topic, partition)
        self._already_in_kafka: Counter = Counter()     # values the broker holds that the spill repeats
        self.duplicates_skipped = 0
        self._read_offset = 0       # bytes of the spill file already re-sent
        self._acked_offsets: set[int] = set()   # lines past _read_offset already delivered
        self.pack_ms = pack_ms
        self._pack_s = pack_ms / 1000
        self._pack_lock = threading.Lock()      # packs are filled by ``send``, which any thread may call
        self._packs: dict[tuple[str, int], _OpenPack] = {}   # (topic, partition) -> records not yet sent
        self._partition_of: dict[tuple[str, bytes], int] = {}   # (topic, key) -> partition, per producer session
        self._spill = open(self.spill_path, "ab", buffering=0)  # noqa: SIM115 - lives as long as the sink
        self._spill_size = os.fstat(self._spill.fileno()).st_size
        if self._spill_size and self._last_byte() != b"\n":
            # A kill tore the last line: end it, so the drain quarantines the fragment alone
            # instead of gluing it to the next record.
            self._write(b"\n")
        self.spilling = self._spill_size > 0   # a previous run left records behind
        self._load_unsure()
        if not self._connect(connect_timeout_s):
            self._start_spilling("no Kafka broker answered at start")
        self._dispatch()

    # --- producing ------------------------------------------------------------------------

    def send(self, record) -> None:
        self._raise_failure()
        if not (self._pack_s and isinstance(record, MarketRecord) and self._packed(record)):
            self._send_alone(record)
        if self._events or self._held:
            # Read without the lock (this runs for every record): whatever another thread queues
            # meanwhile goes out with the next call.
            self._dispatch()

    # --- packing ------------------------------------------------------------------------------

    def _packed(self, record) -> bool:
        """Pack the record; False if it must go alone, behind the records packed before it."""
        if not self.spilling and self._pack(record):
            return True
        self.flush_packs()
        return False

    def _pack(self, record) -> bool:
        """Add a market record to its partition's open pack; False if it must go alone (no producer
        session or partition count yet, or too large to share a message)."""
        value = records.encode(record)
        key = records.kafka_key(record)
        partition = self._partition_of.get((record.topic, key))
        if partition is None:
            partition = self._find_partition(record.topic, key)
            if partition is None:
                return False
        if len(value) >= PACK_MAX_BYTES:
            return False
        now = time.monotonic()
        ready = []
        with self._pack_lock:
            slot = (record.topic, partition)
            pack = self._packs.get(slot)
            if pack is not None and pack.size + len(value) > PACK_MAX_BYTES:
                ready.append(self._packs.pop(slot).closed())
                pack = None
            if pack is None:
                pack = self._packs[slot] = _OpenPack(Pack(topic=record.topic, key=key, values=[]), record, now)
            pack.pack.values.append(value)
            pack.size += len(value) + 1
            if len(pack.pack.values) >= PACK_MAX_RECORDS or now - pack.opened >= self._pack_s:
                ready.append(self._packs.pop(slot).closed())
        for full in ready:
            self._send_alone(full)
        return True

    def _find_partition(self, topic: str, key: bytes) -> int | None:
        producer = self.producer
        if producer is None or self._stale_producer:
            return None
        # The partitions the producer already knows, without waiting: ``partitions_for`` would block a
        # record for up to max_block_ms. The first records of a topic go alone and fetch them.
        partitions = producer._metadata.partitions_for_topic(topic)
        if not partitions:
            return None
        partition = self._partition_of[(topic, key)] = key_partition(key, partitions)
        return partition

    def flush_due(self) -> None:
        """Send the packs whose oldest record has waited ``pack_ms``."""
        if self._packs:
            deadline = time.monotonic() - self._pack_s
            self._send_packs(lambda pack: pack.opened <= deadline)

    def flush_packs(self) -> None:
        """Send every open pack now."""
        if self._packs:
            self._send_packs(lambda pack: True)

    def _send_packs(self, due: Callable[[_OpenPack], bool]) -> None:
        with self._pack_lock:
            ready = [slot for slot, pack in self._packs.items() if due(pack)]
            packs = [self._packs.pop(slot).closed() for slot in ready]
        for pack in packs:
            self._send_alone(pack)

    def _send_alone(self, record) -> None:
        """To Kafka as one message (a record, or a closed pack), or behind the spill's records."""
        with self.lock:
            spilling = self.spilling
            if spilling:
                self._append(record)
        if not spilling:
            self._produce(record)

    def _produce(self, record) -> None:
        value = records.encode(record)
        try:
            future = self.producer.send(record.topic, value=value, key=records.kafka_key(record),
                                        headers=records.headers(record))
        except KafkaError as exc:
            self._send_failed(record, exc)
            return
        token = next(self._tokens)
        with self.lock:
            self.sent.update(type_counts(record))
            self.messages_sent += 1
            if not self._in_flight:
                self._pending_since = time.monotonic()
            self._in_flight[token] = value
        future.add_callback(self._delivered, token)
        future.add_errback(self._failed_in_flight, token)

    def _delivered(self, token: int, metadata) -> None:
        with self.lock:
            if self._in_flight.pop(token, None) is None:
                return      # already spilled at close: the restart's check against Kafka decides
            self._last_ok = time.monotonic()
            self._note_acked(metadata)

    def _note_acked(self, metadata) -> None:
        key = (metadata.topic, metadata.partition)
        self._acked[key] = max(metadata.offset, self._acked.get(key, -1))

    def _failed_in_flight(self, token: int, exc) -> None:
        with self.lock:
            value = self._in_flight.pop(token, None)
            if value is None:
                return
            record = records.decode(value)
            self.sent.subtract(type_counts(record))
            self._mark_unsure({record.topic})
        self._send_failed(record, exc, in_flight=True)
        self._dispatch()

    def _send_failed(self, record, exc: Exception, in_flight: bool = False) -> None:
        if _rejected_for_good(exc):
            self._reject(record.topic, records.kafka_key(record).decode(), record.record_type,
                         records.encode(record).decode(), exc)
            return
        if isinstance(exc, AuthorizationError):
            self._fail(f"Kafka at {self.bootstrap} refuses writes to {record.topic}: {exc}")
        self._start_spilling(exc)
        with self.lock:
            self._append(record, hold=in_flight)

    def _reject(self, topic: str, key: str, record_type: str, value: str, exc: Exception) -> None:
        """A record Kafka will never take goes to the dead-letter topic with the reason; a pack it
        refuses (a broker with a smaller message limit) is sent again record by record, so only a
        record that is refused on its own is dead-lettered."""
        if "\n" in value:
            log.warning("Kafka refused a pack of %d records on %s (%s: %s); sending them one by one",
                        value.count("\n") + 1, topic, exc.__class__.__name__, exc)
            for line in records.split_value(value.encode()):
                self._send_alone(records.decode(line))
            return
        if record_type == DeadLetter.record_type:
            log.error("Kafka refused a dead letter (%s: %s); it is dropped", exc.__class__.__name__, exc)
            with self.lock:
                self.dropped["dead_letter_rejected"] += 1
            return
        log.error("Kafka refused a %s record for good (%s: %s); sending it to md.dlq",
                  record_type, exc.__class__.__name__, exc)
        with self.lock:
            self.rejected_to_dlq += 1
        self.send(_dead_letter(topic, key, value, exc))

    def _start_spilling(self, reason) -> None:
        with self.lock:
            self._stale_producer = True
            self._last_failure = time.monotonic()
            if not self.spilling:
                self.spilling = True
                self.outages += 1
                self._save_unsure()
                log.warning("Kafka unreachable (%s); spilling records to %s", reason, self.spill_path)

    def _fail(self, message: str) -> SinkFailure:
        with self.lock:
            if self._failure is None:
                self._failure = SinkFailure(message)
                log.error("ingest sink failed: %s", message)
            return self._failure

    def _raise_failure(self) -> None:
        if self._failure is not None:
            raise self._failure

    def _dispatch(self) -> None:
        with self.lock:
            events, self._events = self._events, []
            if self._held and self.spilling and not self._dropping:
                self._spill_held()
        for kind, detail in events:
            log.warning("sink event %s: %s", kind, detail)
            if self.on_event is not None:
                self.on_event(kind, detail)

    # --- the spill file (lock held) -----------------------------------------------------------

    def _last_byte(self) -> bytes:
        with open(self.spill_path, "rb") as fh:
            fh.seek(-1, os.SEEK_END)
            return fh.read(1)

    def _append(self, record, hold: bool = False) -> None:
        line = orjson.dumps([record.topic, records.kafka_key(record).decode(), record.record_type,
                             records.encode(record).decode()]) + b"\n"
        if self._dropping == "disk_full" and time.monotonic() < self._retry_write_at:
            self._drop(record, hold)
        elif self._spill_size + len(line) > self.max_bytes:
            self._start_dropping("spill_cap", f"the spill reached its cap of {self.max_bytes:,} bytes")
            self._drop(record, hold)
        elif self._write(line):
            self.spilled_total += record_count(record)
            if self._dropping:
                self._stop_dropping("resumed")
        else:
            self._drop(record, hold)

    def _write(self, data: bytes) -> bool:
        """Append whole or not at all; False when the disk is full."""
        try:
            written = self._spill.write(data)
        except OSError as exc:
            if exc.errno not in _FULL_DISK:
                self.dropped["spill_write_error"] += 1
                raise self._fail_locked(f"cannot write the spill {self.spill_path}: {exc}") from exc
            written, error = 0, exc
        else:
            error = OSError(errno.ENOSPC, "short write")
        if written == len(data):
            self._spill_size += written
            return True
        if written:     # the disk filled mid-line: take the fragment back
            self._spill.truncate(self._spill_size)
        self._retry_write_at = time.monotonic() + DISK_FULL_RETRY_S
        self._start_dropping("disk_full", f"cannot write the spill {self.spill_path}: {error}")
        return False

    def _fail_locked(self, message: str) -> SinkFailure:
        if self._failure is None:
            self._failure = SinkFailure(message)
            log.error("ingest sink failed: %s", message)
        return self._failure

    def _start_dropping(self, reason: str, message: str) -> None:
        if self._dropping:
            return
        self._dropping = reason
        self._drop_episode = {}
        log.error("%s: DROPPING records until the spill can be written again (Kafka is unreachable)", message)
        self._events.append(("spill_full", {"reason": reason, "message": message, "spill_bytes": self._spill_size,
                                            "spill_cap_bytes": self.max_bytes}))

    def _spill_held(self) -> bool:
        """Append the records held in memory; True when the spill took them all."""
        held, self._held = self._held, []
        for record in held:
            self._append(record, hold=True)
        return not self._held

    def _drop(self, record, hold: bool = False) -> None:
        if (hold or record.record_type == records.FeedEvent.record_type) and len(self._held) < HELD_RECORDS:
            self._held.append(record)
            return
        for one in record.records() if type(record) is Pack else (record,):
            if self.on_drop is not None:
                self.on_drop(one)
            self.dropped[self._dropping] += 1
            episode = self._drop_episode.setdefault(one.record_type, {"count": 0, "first_ts_exchange": None,
                                                                      "last_ts_exchange": None})
            episode["count"] += 1
            ts = getattr(one, "ts_exchange", None)
            if ts is not None:
                episode["first_ts_exchange"] = min(ts, episode["first_ts_exchange"] or ts)
                episode["last_ts_exchange"] = max(ts, episode["last_ts_exchange"] or ts)

    def _stop_dropping(self, how: str) -> None:
        detail = {"reason": self._dropping, "ended": how, "dropped": self._drop_episode,
                  "total": sum(v["count"] for v in self._drop_episode.values())}
        log.error("spill %s after dropping %d records (%s): %s", how, detail["total"], self._dropping,
                  self._drop_episode)
        self._events.append(("spill_dropped", detail))
        self._dropping, self._drop_episode = None, {}

    @property
    def spill_bytes(self) -> int:
        """Bytes of spilled records not yet re-sent."""
        with self.lock:
            return self._spill_size - self._read_offset

    # --- draining -------------------------------------------------------------------------

    def drain(self, probe_timeout: float = 2.0, chunk: int = 20_000) -> bool:
        """Re-send spilled records in order if Kafka answers; True when fully drained.

        Blocking: call it from a worker thread, not the event loop.
        """
        self._raise_failure()
        try:
            if not self.spilling:
                return True
            if not self._connect(probe_timeout) or not self._find_already_delivered():
                return False
            while True:
                with self.lock:
                    start = self._read_offset
                    try:
                        with open(self.spill_path, "rb") as fh:
                            fh.seek(start)
                            lines = fh.readlines(chunk * 400)
                    except OSError as exc:
                        raise self._fail_locked(f"cannot read the spill {self.spill_path}: {exc}") from exc
                    if not lines and self._held:
                        # All of the file is sent: free its space for what waited in memory.
                        self._spill.truncate(0)
                        self._spill_size = self._read_offset = 0
                        self._acked_offsets = set()
                        self._retry_write_at = 0.0
                        if not self._spill_held():
                            return False    # the disk is still full
                        continue
                    if not lines:
                        self._caught_up()
                        return True
                if not self._resend(start, lines):
                    return False
        finally:
            self._dispatch()

    def _connect(self, timeout: float) -> bool:
        """Probe Kafka; start a producer session if there is none or the last one may be dead."""
        try:
            wait_for_metadata(self.bootstrap, timeout=timeout)
            with self.lock:
                self._last_ok = time.monotonic()
            if self.producer is not None and not self._stale_producer:
                return True
            if self._partitions:
                ensure_topics(self.bootstrap, self._partitions, timeout=max(timeout, 5.0))
            fresh = new_producer(self.bootstrap, bootstrap_timeout_ms=int(max(timeout, 5.0) * 1000),
                                 **self._producer_config)
        except KafkaConfigurationError as exc:     # no outage: retrying can never help
            raise self._fail(f"invalid Kafka producer settings {self._producer_config}: {exc}") from exc
        except (BrokerUnavailable, KafkaError, OSError) as exc:
            log.info("Kafka not ready: %s", exc)
            with self.lock:
                self._last_failure = time.monotonic()
            return False
        self._partitions = None     # created once; the broker keeps them
        # A producer whose broker went away keeps retrying with sequence numbers the new broker
        # never saw. Start a new session; closing the old one at once fails what it still
        # holds, and its error callbacks append those records to the spill.
        stale, self.producer, self._stale_producer = self.producer, fresh, False
        self._partition_of = {}     # the topics may have been created anew with another partition count
        if stale is not None:
            _abandon(stale)
        return True

    def _find_already_delivered(self) -> bool:
        """Count what the broker holds of what may repeat the spill: the partitions' records since
        the doubt began (see the module docstring). Read afresh on every drain attempt."""
        with self.lock:
            topics, check_from = set(self._unsure_topics), dict(self._check_from)
        if not topics:
            return True
        try:
            consumer = new_consumer(self.bootstrap, client_id="perpflow-spill-check")
            try:
                tps = partitions_of(consumer, topics)
                ends = end_offsets(consumer, tps)
                starts = {tp: check_from.get((tp.topic, tp.partition)) for tp in tps}
                unknown = [tp for tp, start in starts.items() if start is None]
                if unknown:
                    window = self._spill_lines()
                    firsts = consumer.beginning_offsets(unknown)
                    starts.update({tp: max(firsts[tp], ends[tp] - window) for tp in unknown})
                tps = [tp for tp in tps if starts[tp] < ends[tp]]
                found: Counter = Counter()
                consumer.assign(tps)
                for tp in tps:
                    consumer.seek(tp, starts[tp])
                deadline = time.monotonic() + 60
                while any(consumer.position(tp) < ends[tp] for tp in tps):
                    if time.monotonic() > deadline:
                        raise KafkaTimeoutError("reading the partitions' tails took over 60 s")
                    for tp, messages in consumer.poll(200).items():
                        found.update(m.value for m in messages if m.offset < ends[tp])
            finally:
                consumer.close()
        except (BrokerUnavailable, KafkaError, OSError) as exc:
            log.warning("could not check what Kafka holds before draining (%s); will retry", exc)
            with self.lock:
                self._last_failure = time.monotonic()
            return False
        with self.lock:
            self._already_in_kafka = found
        return True

    def _spill_lines(self) -> int:
        with open(self.spill_path, "rb") as fh:
            return sum(block.count(b"\n") for block in iter(lambda: fh.read(1 << 20), b""))

    # --- what may already be in Kafka (lock held) ---------------------------------------------

    def _mark_unsure(self, topics: set[str]) -> None:
        """Records of ``topics`` may have reached Kafka without an acknowledgement."""
        new = topics - self._unsure_topics
        if not new:
            return
        self._unsure_topics |= new
        for (topic, partition), offset in self._acked.items():
            if topic in new:
                self._check_from.setdefault((topic, partition), offset + 1)
        self._save_unsure()

    def _save_unsure(self) -> None:
        state = {"topics": sorted(self._unsure_topics),
                 "check_from": [[t, p, o] for (t, p), o in sorted(self._check_from.items())]}
        tmp = self.unsure_path.with_name(self.unsure_path.name + ".tmp")
        try:
            tmp.write_bytes(orjson.dumps(state))
            os.replace(tmp, self.unsure_path)
        except OSError as exc:
            tmp.unlink(missing_ok=True)
            log.warning("cannot write %s (%s); after a restart the drain checks the partitions' last records "
                        "instead", self.unsure_path, exc)

    def _load_unsure(self) -> None:
        if not self.spilling:
            self.unsure_path.unlink(missing_ok=True)
            return
        try:
            state = orjson.loads(self.unsure_path.read_bytes())
            self._unsure_topics = set(state["topics"])
            self._check_from = {(t, p): o for t, p, o in state["check_from"]}
        except (OSError, ValueError, KeyError, TypeError) as exc:
            # Unknown history: whatever the spill holds may be in Kafka already.
            log.warning("no usable %s (%s); the drain checks every topic's last records for spilled ones "
                        "Kafka already holds", self.unsure_path, exc)
            self._unsure_topics = set(records.TOPICS)

    def _resend(self, start: int, lines: list[bytes]) -> bool:
        """Send one chunk of spill lines; advance past what is settled. False if Kafka failed."""
        settled: set[int] = set()       # offsets delivered, dead-lettered or quarantined
        in_flight = []
        rejected = []
        interrupted: Exception | None = None
        offset = start
        for line in lines:
            at, offset = offset, offset + len(line)
            if at in self._acked_offsets:
                settled.add(at)
                continue
            try:
                parts = parse_spill_line(line)
            except ValueError as exc:
                self._quarantine(at, line, str(exc))
                settled.add(at)
                continue
            topic, key, record_type, value = parts
            if topic not in self._unsure_topics:
                with self.lock:
                    self._mark_unsure({topic})      # a kill from here on leaves it in doubt
            if self._already_in_kafka[value.encode()] > 0:    # the broker took it after all
                self._already_in_kafka[value.encode()] -= 1
                self.duplicates_skipped += 1
                settled.add(at)
                continue
            try:
                future = self.producer.send(topic, value=value.encode(), key=key.encode(),
                                            headers=records.headers(record_type))
            except KafkaError as exc:
                if not _rejected_for_good(exc):
                    interrupted = exc
                    break
                rejected.append((at, parts, exc))
                continue
            in_flight.append((at, parts, future, value.count("\n") + 1))
        try:
            self.producer.flush(timeout=30)
        except KafkaError as exc:
            interrupted = interrupted or exc
        delivered = []
        delivered_records = 0
        for at, parts, future, count in in_flight:
            if future.succeeded():
                settled.add(at)
                delivered.append(future.value)
                delivered_records += count
            elif future.failed() and _rejected_for_good(future.exception):
                rejected.append((at, parts, future.exception))
            else:
                interrupted = interrupted or future.exception or KafkaTimeoutError("no acknowledgement")
        for at, (topic, key, record_type, value), exc in rejected:
            self._reject(topic, key, record_type, value, exc)   # appended to the spill, behind the rest
            settled.add(at)
        with self.lock:
            if delivered:
                self._last_ok = time.monotonic()
            for metadata in delivered:
                self._note_acked(metadata)
            self.drained_total += delivered_records
            offset = start
            for line in lines:
                if offset not in settled:
                    break
                offset += len(line)
            self._read_offset = offset
            self._acked_offsets = {at for at in settled | self._acked_offsets if at >= offset}
        if interrupted is not None:
            if isinstance(interrupted, AuthorizationError):
                raise self._fail(f"Kafka at {self.bootstrap} refuses the spilled writes: {interrupted}")
            log.warning("drain interrupted (%s); will retry", interrupted)
            self._start_spilling(interrupted)
            return False
        return True

    def _quarantine(self, offset: int, line: bytes, reason: str) -> None:
        try:
            with open(self.quarantine_path, "ab") as fh:
                fh.write(line if line.endswith(b"\n") else line + b"\n")
        except OSError as exc:
            log.error("unreadable spill line at byte %d (%s) could not be moved aside (%s); it is dropped",
                      offset, reason, exc)
            with self.lock:
                self.dropped["unreadable_line"] += 1
            return
        log.error("unreadable spill line at byte %d of %s (%s): moved aside to %s",
                  offset, self.spill_path, reason, self.quarantine_path)
        with self.lock:
            self.quarantined_lines += 1
            self._events.append(("spill_quarantined", {"offset": offset, "bytes": len(line), "reason": reason,
                                                       "path": str(self.quarantine_path)}))

    def _caught_up(self) -> None:
        """Everything was re-sent (lock held): later records go straight to Kafka again."""
        self._spill.truncate(0)
        self._spill_size = self._read_offset = 0
        self._acked_offsets = set()
        self._already_in_kafka = Counter()
        self._unsure_topics, self._check_from = set(), {}
        self.unsure_path.unlink(missing_ok=True)
        self.spilling = False
        if self._dropping:
            self._stop_dropping("resumed")
        log.warning("Kafka is back; spill drained (%d records re-sent so far)", self.drained_total)

    # --- health and shutdown ---------------------------------------------------------------

    def status(self) -> dict:
        with self.lock:
            now = time.monotonic()
            stalled = bool(self._in_flight) and now - max(self._last_ok, self._pending_since) > ACK_STALL_S
            reachable = self._last_ok >= self._last_failure and not stalled
            return {
                "kafka": "reachable" if reachable else "unreachable",
                "kafka_last_ok_age_s": round(now - self._last_ok, 1) if self._last_ok > float("-inf") else None,
                "spilling": self.spilling,
                "spill_bytes": self._spill_size - self._read_offset,
                "spill_cap_bytes": self.max_bytes,
                "spilled_total": self.spilled_total,
                "drained_total": self.drained_total,
                "dropped": dict(self.dropped),
                "disk_full": self._dropping == "disk_full",
                "quarantined_lines": self.quarantined_lines,
                "rejected_to_dlq": self.rejected_to_dlq,
                "outages": self.outages,
                "duplicates_skipped": self.duplicates_skipped,
                "pending_sends": len(self._in_flight),
                "failure": str(self._failure) if self._failure else None,
            }

    def close(self, timeout: float = 10.0) -> None:
        """Flush what Kafka will take; anything else stays in the spill file for the next run."""
        self.flush_packs()
        with self.lock:
            if self._dropping:
                self._stop_dropping("shutdown")
        self._dispatch()
        if not self.spilling and self.producer is not None:
            try:
                self.producer.flush(timeout)
            except KafkaError:
                pass
        deadline = time.monotonic() + timeout
        try:
            while self.spilling and time.monotonic() < deadline and not self.drain(probe_timeout=1.0):
                time.sleep(0.5)
        except SinkFailure:
            pass    # already logged; the caller reads it from status() or the next send()
        if self.producer is not None:
            try:
                self.producer.close(timeout=2)
            except KafkaError as exc:    # its flush timed out: some sends are still unanswered
                log.warning("producer close: %s", exc)
        with self.lock:
            # Sends a frozen broker never answered: their fate is unknown, so they are spilled and
            # their topics marked unsure; the next start skips those Kafka turns out to hold. Callbacks
            # that arrive later find their token gone and do nothing.
            unanswered = [records.decode(value) for value in self._in_flight.values()]
            self._in_flight = {}
            if unanswered:
                log.warning("%d sends unanswered at shutdown: spilled for the next run to check against Kafka",
                            len(unanswered))
                self._mark_unsure({record.topic for record in unanswered})
                for record in unanswered:
                    self.sent.subtract(type_counts(record))
                    self._append(record, hold=True)
            self._spill_held()
            lost, self._held = self._held, []
            lost = [one for record in lost for one in (record.records() if type(record) is Pack else (record,))]
            if lost:
                log.error("%d held records could not be spilled at shutdown (disk full); they are dropped",
                          len(lost))
                self.dropped["held_at_shutdown"] += len(lost)
                for record in lost:
                    if self.on_drop is not None:
                        self.on_drop(record)
            os.fsync(self._spill.fileno())
            self._spill.close()
            if self._read_offset or self._acked_offsets:
                self._keep_unsent()

    def _keep_unsent(self) -> None:
        """Rewrite the spill without what was already re-sent (lock held)."""
        kept = self.spill_path.with_name(self.spill_path.name + ".tmp")
        try:
            with open(self.spill_path, "rb") as src, open(kept, "wb") as dst:
                src.seek(self._read_offset)
                offset = self._read_offset
                for line in src:
                    if offset not in self._acked_offsets:
                        dst.write(line)
                    offset += len(line)
                dst.flush()
                os.fsync(dst.fileno())
            os.replace(kept, self.spill_path)
        except OSError as exc:
            kept.unlink(missing_ok=True)
            log.error("could not compact the spill %s (%s); records already sent will be sent again",
                      self.spill_path, exc)
