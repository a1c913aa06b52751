"""Kafka plumbing shared by producers (replay, ingest), the loader and the Dagster sensor.

kafka-python 3 with ``crc32c`` installed. Two choices matter on the embedded Tansu broker:
consumers that join a group use ``session_timeout_ms=6000`` (the 45 s default makes the join
take ~23 s there), and the warehouse loader avoids group membership altogether (assign/seek).
"""

from __future__ import annotations

import logging
import threading
import time
from collections import Counter

from kafka import KafkaAdminClient, KafkaConsumer, KafkaProducer, TopicPartition
from kafka.admin import NewTopic
from kafka.errors import KafkaError, TopicAlreadyExistsError
from kafka.net.compat import KafkaNetClient
from kafka.partitioner.default import DefaultPartitioner, murmur2

from ingest import records

log = logging.getLogger(__name__)

LOADER_GROUP = "perpflow-warehouse"
GROUP_SESSION_TIMEOUT_MS = 6000
GROUP_HEARTBEAT_MS = 2000


class BrokerUnavailable(RuntimeError):
    """No Kafka broker answered; the message says where perpflow looked and what to do."""


def _unavailable(bootstrap: str, exc: Exception) -> BrokerUnavailable:
    return BrokerUnavailable(
        f"no Kafka broker answered at {bootstrap} ({exc.__class__.__name__}: {exc}). "
        "Start the embedded one with `perpflow broker start`, or set PERPFLOW_KAFKA_BOOTSTRAP "
        "to a running Kafka."
    )


def _construct(client_class, **config):
    """Build a kafka-python client (producer, consumer, admin) that leaks nothing when it fails.

    kafka-python 3.0.12 opens its network client (selector, wake-up socket pair, the bootstrap
    connection and, for the admin client, an IO thread) before it bootstraps, and a constructor
    that fails to bootstrap leaves all of it behind: a thread and ~4 file descriptors per failed
    probe, until the process runs out of descriptors. The network client is built through the
    documented ``kafka_client`` factory so it can be closed here when the constructor raises.
    """
    built: list[KafkaNetClient] = []

    def network_client(**kwargs) -> KafkaNetClient:
        built.append(KafkaNetClient(**kwargs))
        return built[-1]

    try:
        return client_class(kafka_client=network_client, **config)
    except BaseException:
        for client in built:
            client.close()      # also stops the IO thread, if one was started
        raise


def wait_for_metadata(bootstrap: str, timeout: float = 10.0) -> None:
    """Return once the broker answers a metadata request, else raise BrokerUnavailable."""
    deadline = time.monotonic() + timeout
    last: Exception | None = None
    while time.monotonic() < deadline:
        budget_ms = max(100, int((deadline - time.monotonic()) * 1000))
        try:
            admin = _construct(KafkaAdminClient, bootstrap_servers=bootstrap,
                               request_timeout_ms=min(2000, budget_ms),
                               bootstrap_timeout_ms=min(2000, budget_ms), client_id="perpflow-probe")
            try:
                admin.list_topics()
                return
            finally:
                admin.close()
        except (KafkaError, OSError, ValueError) as exc:
            last = exc
            time.sleep(0.1)
    raise _unavailable(bootstrap, last or TimeoutError("timed out"))


def ensure_topics(bootstrap: str, partitions: int, topics=records.TOPICS, timeout: float = 30.0) -> None:
    """Create the market-data topics if missing (idempotent)."""
    timeout_ms = int(timeout * 1000)
    admin = _construct(KafkaAdminClient, bootstrap_servers=bootstrap, client_id="perpflow-admin",
                       bootstrap_timeout_ms=timeout_ms, request_timeout_ms=timeout_ms)
    try:
        existing = set(admin.list_topics())
        missing = [NewTopic(t, num_partitions=partitions, replication_factor=1)
                   for t in topics if t not in existing]
        if missing:
            try:
                admin.create_topics(missing)
            except TopicAlreadyExistsError:
                pass
    finally:
        admin.close()


class KeyPartitioner(DefaultPartitioner):
    """kafka-python's default partitioner (murmur2, as the Java client) computed once per key.

    The pure-Python murmur2 and the metadata lookups cost ~25 us per record; market data has a
    handful of keys (exchange|symbol), so each key's partition is worked out once per topic
    layout and reused.
    """

    def __init__(self):
        self._cache: dict[tuple, int] = {}

    def partition(self, topic, key, serialized_key, value, serialized_value, cluster):
        if serialized_key is None:
            return super().partition(topic, key, serialized_key, value, serialized_value, cluster)
        partitions = cluster.partitions_for_topic(topic)
        cache_key = (topic, serialized_key, len(partitions) if partitions else 0)
        part = self._cache.get(cache_key)
        if part is None:
            part = self._cache[cache_key] = super().partition(topic, key, serialized_key, value,
                                                              serialized_value, cluster)
        return part


def new_producer(bootstrap: str, **overrides) -> KafkaProducer:
    config = dict(
        bootstrap_servers=bootstrap,
        client_id="perpflow-producer",
        acks="all",
        enable_idempotence=True,
        linger_ms=20,
        batch_size=512 * 1024,
        max_request_size=8 * 1024 * 1024,
        partitioner=KeyPartitioner(),
    )
    config.update(overrides)
    return _construct(KafkaProducer, **config)


def new_consumer(bootstrap: str, group_id: str | None = None, **overrides) -> KafkaConsumer:
    """A consumer tuned for bulk reads; never auto-commits (offsets live in DuckDB)."""
    config = dict(
        bootstrap_servers=bootstrap,
        client_id="perpflow-consumer",
        group_id=group_id,
        enable_auto_commit=False,
        auto_offset_reset="earliest",
        session_timeout_ms=GROUP_SESSION_TIMEOUT_MS,
        heartbeat_interval_ms=GROUP_HEARTBEAT_MS,
        max_poll_records=50_000,
        fetch_max_bytes=64 * 1024 * 1024,
        max_partition_fetch_bytes=16 * 1024 * 1024,
        check_crcs=True,
        fetch_max_wait_ms=100,
    )
    config.update(overrides)
    return _construct(KafkaConsumer, **config)


def partitions_of(consumer: KafkaConsumer, topics) -> list[TopicPartition]:
    """The partitions of those ``topics`` that exist, from one metadata request.

    Asking per topic costs a metadata round trip for each topic the broker does not have yet.
    """
    existing = consumer.topics()
    tps = []
    for topic in topics:
        if topic not in existing:
            continue
        parts = consumer.partitions_for_topic(topic) or set()
        tps.extend(TopicPartition(topic, p) for p in sorted(parts))
    return tps


def key_partition(key: bytes, partitions) -> int:
    """The partition kafka-python's default partitioner (and so ``KeyPartitioner``) picks for ``key``."""
    ordered = sorted(partitions)
    return ordered[(murmur2(key) & 0x7FFFFFFF) % len(ordered)]


def end_offsets(consumer: KafkaConsumer, tps: list[TopicPartition], timeout: float = 10.0) -> dict:
    """The offset the next produced message will get, per partition (the high watermark).

    ListOffsets(latest) is not enough: the embedded Tansu broker answers it with the base
    offset of the last record batch, so a batch of 60 records at offset 190 reports 190, not
    250. The high watermark in a fetch response is right, so read the tail once and take the
    larger of the two. Leaves the consumer assigned to ``tps``; callers seek afterwards.
    """
    listed = consumer.end_offsets(tps)
    consumer.assign(tps)
    for tp in tps:
        consumer.seek(tp, listed[tp])
    deadline = time.monotonic() + timeout
    while any(consumer.highwater(tp) is None for tp in tps):
        if time.monotonic() > deadline:
            missing = [f"{tp.topic}[{tp.partition}]" for tp in tps if consumer.highwater(tp) is None]
            raise BrokerUnavailable(f"no fetch response for {', '.join(missing)} within {timeout:.0f}s")
        consumer.poll(timeout_ms=100)
    return {tp: max(listed[tp], consumer.highwater(tp)) for tp in tps}


def group_lag(bootstrap: str, topics=records.TOPICS, group_id: str = LOADER_GROUP) -> dict[str, int]:
    """Messages per topic not yet mirrored as loaded by the warehouse loader (Kafka-only view);
    BrokerUnavailable when no broker answers (the sensor then skips with that reason)."""
    try:
        consumer = new_consumer(bootstrap, group_id=group_id, client_id="perpflow-lag")
    except (KafkaError, OSError) as exc:
        raise _unavailable(bootstrap, exc) from exc
    try:
        tps = partitions_of(consumer, topics)
        if not tps:
            return {}
        ends = end_offsets(consumer, tps)
        lag: Counter = Counter()
        for tp in tps:
            committed = consumer.committed(tp) or 0
            # A broker restart resets end offsets below the mirrored ones; that is new data too.
            lag[tp.topic] += ends[tp] - committed if ends[tp] >= committed else ends[tp]
        return dict(lag)
    finally:
        consumer.close()


class RecordProducer:
    """Sends normalized records to their topics, keyed by exchange|symbol.

    Delivery is tracked per record type; a failed send is counted and remembered so callers
    can decide (replay raises, the live ingest service spills to disk).
    """

    def __init__(self, bootstrap: str, **overrides):
        self.producer = new_producer(bootstrap, **overrides)
        self.sent: Counter = Counter()
        self.failed: Counter = Counter()
        self.errors: list[str] = []
        self._lock = threading.Lock()

    def send(self, record) -> None:
        future = self.producer.send(record.topic, value=records.encode(record),
                                    key=records.kafka_key(record), headers=records.headers(record))
        self.sent[record.record_type] += 1
        future.add_errback(self._on_error, record.record_type)

    def _on_error(self, record_type: str, exc: Exception) -> None:
        with self._lock:
            self.failed[record_type] += 1
            if len(self.errors) < 20:
                self.errors.append(f"{record_type}: {exc!r}")

    def flush(self, timeout: float | None = 60.0) -> None:
        self.producer.flush(timeout)
        if self.failed:
            raise BrokerUnavailable(f"{sum(self.failed.values())} records were not delivered: "
                                    + "; ".join(self.errors[:5]))

    def close(self) -> None:
        self.producer.close(timeout=10)
