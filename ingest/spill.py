"""A Kafka sink that never loses a record: while Kafka is unreachable, records go to an
append-only spill file and are drained in order once it answers again.

kafka-python's ``send`` blocks for up to ``max_block_ms`` when it has no metadata, and fails
in-flight batches only after ``delivery_timeout_ms``; both are kept short so an outage turns
into spilling within seconds instead of stalling the websocket loop. Once spilling, every
new record goes to the file (behind the ones already there) until the drain has caught up,
so per-key order is kept except for batches that were in flight when the broker went away.
Records that failed in flight are re-sent from the spill; the warehouse's natural-key
de-duplication absorbs the rare double delivery that can cause.
"""

from __future__ import annotations

import logging
import os
import threading
import time
from collections import Counter
from pathlib import Path

import orjson
from kafka.errors import KafkaError

from ingest import records
from pipelines.kafka import BrokerUnavailable, new_producer, wait_for_metadata

log = logging.getLogger(__name__)


def _abandon(producer) -> None:
    """Fail every record a dead-session producer still holds, so its error callbacks spill them.

    kafka-python 3.0.12's ``close(timeout=0)`` raises from its internal ``flush`` before it gets
    to its force-close path, which would leave those records in limbo; so force-close the
    sender directly (it aborts incomplete batches) and wait for it to finish.
    """
    sender = producer._sender
    if sender is not None:
        sender.force_close()
        sender.join(10)


class SpillingSink:
    def __init__(self, bootstrap: str, spill_path: Path, *, delivery_timeout_ms: int = 10_000):
        self.bootstrap = bootstrap
        self.spill_path = spill_path
        self.spill_path.parent.mkdir(parents=True, exist_ok=True)
        self._producer_config = dict(max_block_ms=200, request_timeout_ms=3000,
                                     delivery_timeout_ms=delivery_timeout_ms, retry_backoff_ms=100)
        self.producer = new_producer(bootstrap, **self._producer_config)
        self._stale_producer = False    # its idempotent session may be dead (e.g. broker restarted)
        self.lock = threading.Lock()
        self.sent: Counter = Counter()
        self.spilled_total = 0
        self.drained_total = 0
        self.outages = 0
        self._read_offset = 0       # bytes of the spill file already re-sent
        self._spill = open(self.spill_path, "ab")  # noqa: SIM115 - lives as long as the sink
        self.spilling = self.spill_path.stat().st_size > 0   # a previous run left records behind

    # --- producing ------------------------------------------------------------------------

    def send(self, record) -> None:
        with self.lock:
            if self.spilling:
                self._append(record)
                return
        try:
            future = self.producer.send(record.topic, value=records.encode(record), key=records.kafka_key(record),
                                        headers=records.headers(record))
        except KafkaError as exc:
            self._start_spilling(exc)
            with self.lock:
                self._append(record)
            return
        self.sent[record.record_type] += 1
        future.add_errback(self._failed_in_flight, record)

    def _failed_in_flight(self, record, exc) -> None:
        self._start_spilling(exc)
        with self.lock:
            self.sent[record.record_type] -= 1
            self._append(record)

    def _start_spilling(self, exc) -> None:
        with self.lock:
            self._stale_producer = True
            if not self.spilling:
                self.spilling = True
                self.outages += 1
                log.warning("Kafka unreachable (%s); spilling records to %s", exc, self.spill_path)

    def _append(self, record) -> None:
        line = [record.topic, records.kafka_key(record).decode(), record.record_type, records.encode(record).decode()]
        self._spill.write(orjson.dumps(line) + b"\n")
        self.spilled_total += 1

    @property
    def spill_bytes(self) -> int:
        with self.lock:
            if not self._spill.closed:
                self._spill.flush()
            return self.spill_path.stat().st_size - (0 if self._spill.closed else self._read_offset)

    # --- draining -------------------------------------------------------------------------

    def drain(self, probe_timeout: float = 2.0, chunk: int = 20_000) -> bool:
        """Re-send spilled records in order if Kafka answers; True when fully drained.

        Blocking: call it from a worker thread, not the event loop.
        """
        if not self.spilling:
            return True
        try:
            wait_for_metadata(self.bootstrap, timeout=probe_timeout)
        except BrokerUnavailable:
            return False
        if self._stale_producer:
            # A producer whose broker went away keeps retrying with sequence numbers the new broker
            # never saw. Start a new session; closing the old one at once fails what it still
            # holds, and its error callbacks append those records to the spill.
            self._stale_producer = False
            stale, self.producer = self.producer, new_producer(self.bootstrap, **self._producer_config)
            _abandon(stale)
        while True:
            with self.lock:
                self._spill.flush()
                with open(self.spill_path, "rb") as fh:
                    fh.seek(self._read_offset)
                    lines = fh.readlines(chunk * 400)
                if not lines:
                    # Caught up: later records go straight to Kafka again.
                    self._spill.truncate(0)
                    self._spill.seek(0)
                    self._read_offset = 0
                    self.spilling = False
                    log.warning("Kafka is back; spill drained (%d records re-sent so far)", self.drained_total)
                    return True
            futures = []
            try:
                for line in lines:
                    topic, key, record_type, value = orjson.loads(line)
                    futures.append(self.producer.send(topic, value=value.encode(), key=key.encode(),
                                                      headers=records.headers(record_type)))
                self.producer.flush(timeout=30)
                for future in futures:
                    future.get(timeout=0)
            except KafkaError as exc:
                log.warning("drain interrupted (%s); will retry", exc)
                self._stale_producer = True
                return False
            with self.lock:
                self._read_offset += sum(len(line) for line in lines)
                self.drained_total += len(lines)

    def close(self, timeout: float = 10.0) -> None:
        """Flush what Kafka will take; anything else stays in the spill file for the next run."""
        if not self.spilling:
            try:
                self.producer.flush(timeout)
            except KafkaError:
                pass
        deadline = time.monotonic() + timeout
        while self.spilling and time.monotonic() < deadline and not self.drain(probe_timeout=1.0):
            time.sleep(0.5)
        try:
            self.producer.close(timeout=2)
        except KafkaError as exc:    # undelivered records were spilled by their error callbacks
            log.warning("producer close: %s", exc)
        with self.lock:
            self._spill.flush()
            os.fsync(self._spill.fileno())
            self._spill.close()
            if self._read_offset:   # keep only what was not re-sent
                remaining = self.spill_path.read_bytes()[self._read_offset:]
                self.spill_path.write_bytes(remaining)
