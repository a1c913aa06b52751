"""Trade-sequence continuity across restarts: what was durably published, and what is still owed.

After a SIGKILL, records still in the producer's buffer are gone and a periodically written state
file may be behind or ahead of Kafka, so neither the service's memory nor its state file says
what was published. What is durable is what Kafka holds plus the spill file. On start the
service reads the tail of each symbol's ``md.trades`` partition (a bounded scan back) and the
spill, continues the sequence after the last id found there, and backfills the ranges still
missing: the previous run's unfinished backfills (from the state file) and holes in the tail.
Ids found durable are never fetched again, so a restart neither loses nor duplicates a trade.
The state file is only the fallback when Kafka does not answer.
"""

from __future__ import annotations

import logging
import os
import time
from bisect import bisect_left, bisect_right
from dataclasses import dataclass
from pathlib import Path

import orjson
from kafka import TopicPartition
from kafka.errors import KafkaError

from ingest import records
from ingest.records import Trade
from ingest.spill import parse_spill_line
from ingest.kafka import BrokerUnavailable, end_offsets, key_partition, new_consumer, wait_for_metadata

log = logging.getLogger(__name__)

STATE_VERSION = 1
TAIL_SCAN_RECORDS = 100_000     # per partition; a restart window longer than this is still backfilled
LOST_RANGES_KEPT = 1000         # per symbol, so holes already declared lost are not fetched again


def save_state(path: Path, state: dict) -> None:
    """Write atomically: a crash leaves the previous state or the new one, never a torn file."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    with open(tmp, "wb") as fh:
        fh.write(orjson.dumps(state))
        fh.flush()
        os.fsync(fh.fileno())
    os.replace(tmp, path)


def load_state(path: Path) -> dict:
    """The previous run's state, or {} (an unreadable file is moved aside with a warning)."""
    try:
        state = orjson.loads(path.read_bytes())
    except FileNotFoundError:
        return {}
    except (OSError, orjson.JSONDecodeError) as exc:
        aside = path.with_name(path.name + ".unreadable")
        log.error("ingest state %s is unreadable (%s); moved to %s, starting without it", path, exc, aside)
        os.replace(path, aside)
        return {}
    if not isinstance(state, dict) or state.get("version") != STATE_VERSION:
        log.error("ingest state %s has an unknown format; ignoring it", path)
        return {}
    return state


def _records(value: bytes, wanted: set[str], kind: type = Trade) -> list:
    """The records of ``kind`` of the ``wanted`` symbols in a Kafka value or spill line's value (one
    record or a pack); what does not decode is skipped."""
    found = []
    for line in records.split_value(value):
        try:
            record = records.decode(line)
        except (orjson.JSONDecodeError, KeyError, TypeError, ValueError):
            continue
        if isinstance(record, kind) and record.symbol in wanted:
            found.append(record)
    return found


def spill_records(spill_path: Path, symbols: set[str], kind: type = Trade) -> list:
    """Records of one type (trades by default) of the given normalized symbols waiting in the spill
    file (lines that do not parse are skipped)."""
    found: list = []
    try:
        fh = open(spill_path, "rb")  # noqa: SIM115 - closed below
    except FileNotFoundError:
        return found
    with fh:
        for line in fh:
            try:
                topic, _key, _type, value = parse_spill_line(line)
            except ValueError:
                continue
            if topic == kind.topic:
                found.extend(_records(value.encode(), symbols, kind))
    return found


def kafka_tail_records(venue, bootstrap: str, symbols: set[str], scan_back: int = TAIL_SCAN_RECORDS,
                 timeout: float = 30.0, kind: type = Trade) -> list:
    """The venue's records of one type (trades by default) of the given normalized symbols in the
    last ``scan_back`` records of their partitions of its topic. Raises BrokerUnavailable when
    Kafka does not answer."""
    topic = kind.topic
    wait_for_metadata(bootstrap, timeout=3)
    consumer = new_consumer(bootstrap, client_id="perpflow-ingest-resume")
    try:
        partitions = consumer.partitions_for_topic(topic)
        if not partitions:
            return []
        keys = {f"{venue.exchange}|{s}".encode() for s in symbols}
        tps = sorted({TopicPartition(topic, key_partition(k, partitions)) for k in keys})
        ends = end_offsets(consumer, tps, timeout=timeout)
        begins = consumer.beginning_offsets(tps)
        for tp in tps:
            consumer.seek(tp, max(begins[tp], ends[tp] - scan_back))
        found: list = []
        pending = {tp for tp in tps if consumer.position(tp) < ends[tp]}
        deadline = time.monotonic() + timeout
        while pending:
            if time.monotonic() > deadline:
                raise BrokerUnavailable(f"reading the tail of {topic} took over {timeout:.0f}s")
            for tp, messages in consumer.poll(timeout_ms=500).items():
                for message in messages:
                    # A pack is keyed by its first record: other symbols of the partition may be in it.
                    if message.value and (message.key in keys or b"\n" in message.value):
                        found.extend(_records(message.value, symbols, kind))
            pending = {tp for tp in pending if consumer.position(tp) < ends[tp]}
        return found
    except KafkaError as exc:
        raise BrokerUnavailable(f"reading the tail of {topic}: {exc}") from exc
    finally:
        consumer.close()


def sequence_ids(venue, trades: list[Trade]) -> dict[str, set[int]]:
    """Trade ids per normalized symbol, for venues whose ids are a sequence (``Venue.trade_sequence``)."""
    found: dict[str, set[int]] = {}
    for trade in trades:
        ids = venue.trade_sequence(trade)
        if ids is not None:
            found.setdefault(trade.symbol, set()).update(range(ids[0], ids[1] + 1))
    return found


def spill_trade_ids(venue, spill_path: Path, symbols: set[str]) -> dict[str, set[int]]:
    """Trade ids per normalized symbol waiting in the spill file."""
    return sequence_ids(venue, spill_records(spill_path, symbols))


def kafka_trade_ids(venue, bootstrap: str, symbols: set[str], scan_back: int = TAIL_SCAN_RECORDS,
                    timeout: float = 30.0) -> dict[str, set[int]]:
    """Trade ids per normalized symbol in the last ``scan_back`` records of their md.trades partitions.

    Raises BrokerUnavailable when Kafka does not answer.
    """
    return sequence_ids(venue, kafka_tail_records(venue, bootstrap, symbols, scan_back, timeout))


def _holes(ids: set[int]) -> list[list[int]]:
    ordered = sorted(ids)
    return [[a + 1, b - 1] for a, b in zip(ordered, ordered[1:]) if b > a + 1]


def _subtract(ranges: list[list[int]], ids: set[int], removed: list[list[int]]) -> list[list[int]]:
    """``ranges`` without the ids in ``ids`` nor the ranges in ``removed``, merged and sorted."""
    present = sorted(ids)
    out: list[list[int]] = []
    for lo, hi in ranges:
        pieces = [[lo, hi]]
        for rlo, rhi in removed:
            pieces = [p for a, b in pieces for p in ([a, min(b, rlo - 1)], [max(a, rhi + 1), b]) if p[0] <= p[1]]
        for a, b in pieces:
            start = a
            for i in present[bisect_left(present, a):bisect_right(present, b)]:
                if start < i:
                    out.append([start, i - 1])
                start = i + 1
            if start <= b:
                out.append([start, b])
    merged: list[list[int]] = []
    for lo, hi in sorted(out):
        if merged and lo <= merged[-1][1] + 1:
            merged[-1][1] = max(merged[-1][1], hi)
        else:
            merged.append([lo, hi])
    return merged


@dataclass
class TradeResume:
    """Where one symbol's trade sequence continues, and the ranges still to backfill."""

    symbol: str
    last_id: int
    missing: list[list[int]]
    source: str          # where ``last_id`` came from: "kafka", "spill" or "state file"


def plan_resume(symbols: set[str], state: dict, spilled: dict[str, set[int]],
                in_kafka: dict[str, set[int]] | None) -> list[TradeResume]:
    """Combine what is durable (``in_kafka`` is None when Kafka did not answer) with the state file."""
    plans = []
    for symbol in sorted(symbols):
        saved = state.get("trades", {}).get(symbol, {})
        spill_ids = spilled.get(symbol, set())
        kafka_ids = (in_kafka or {}).get(symbol, set())
        durable = kafka_ids | spill_ids
        if kafka_ids:
            last, source, holes = max(durable), "kafka", _holes(durable)
        elif saved.get("last_id") is not None:
            # Kafka unreachable (or its data is gone): the state file is the best record left.
            last = max([saved["last_id"], *spill_ids])
            source, holes = ("spill" if spill_ids and max(spill_ids) == last else "state file"), []
        elif spill_ids:
            last, source, holes = max(spill_ids), "spill", _holes(spill_ids)
        else:
            continue
        owed = [r for r in saved.get("open", []) + holes if r[0] <= last]
        owed = [[lo, min(hi, last)] for lo, hi in owed]
        plans.append(TradeResume(symbol, last, _subtract(owed, durable, saved.get("lost", [])), source))
    return plans
