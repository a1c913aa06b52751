"""Hostile frames (text that is not UTF-8, a 50 MB frame) are dead-lettered and the connection stays up.

Real processes: the simulator sends the frames on the live connections (and records each in its
truth file with an ASCII marker), the ingest service reads them, md.dlq on the Tansu broker holds
the dead letters.
"""

from __future__ import annotations

import asyncio
from collections import Counter

from test_ingest_service import dlq_contents, run_service, trade_ids, truth_trade_ids

from ingest.feed import REJECTED_FRAME_KEEP_BYTES
from ingest.simulator import FaultConfig, SimConfig, SimulatorThread, load_truth
from ingest.kafka import ensure_topics

REASONS = {"invalid_utf8": "frame not valid UTF-8: invalid start byte", "oversized": "frame too large: "}


def test_hostile_frames_are_dead_lettered_without_losing_the_connection_or_a_trade(tmp_path, broker):
    ensure_topics(broker.bootstrap, 3)
    config = SimConfig(scenario="calm", seed=9, hours=1, speed=30, truth_path=str(tmp_path / "truth.jsonl"),
                       faults=FaultConfig(hostile_every_s=75, hostile_frame_bytes=50_000_000))
    with SimulatorThread(config) as sim:
        service = run_service(sim, broker.bootstrap, tmp_path, seconds=30)
        asyncio.run(service.run())
    truth = load_truth(tmp_path / "truth.jsonl")
    records = service.sink.records

    # A frame is read before every later frame of its connection: the hostile frames sent before
    # the last trade and depth update the service saw are the ones it must have dead-lettered.
    seen_until = min(max(r.ts_exchange for r in records if r.record_type == kind) for kind in ("trade", "book_delta"))
    sent = [f for f in truth["fault"] if f["fault"] == "hostile" and f["connections"] and f["ts"] < seen_until - 1000]
    assert Counter(f["kind"] for f in sent)["oversized"] >= 2 and Counter(f["kind"] for f in sent)["invalid_utf8"] >= 2
    assert all(f["bytes"] >= 50_000_000 for f in sent if f["kind"] == "oversized")

    letters = [r for r in records if r.record_type == "dead_letter"]
    by_marker = Counter()
    for letter in letters:
        marker = letter.raw.split('"marker":"', 1)[1].split('"', 1)[0]
        by_marker[marker] += 1
        kind = next(f["kind"] for f in truth["fault"] if f["fault"] == "hostile" and f["marker"] == marker)
        assert letter.reason.startswith(REASONS[kind]), (kind, letter.reason)
        assert letter.source in ("public", "market")
        assert len(letter.raw.encode()) <= 3 * REJECTED_FRAME_KEEP_BYTES   # a truncated copy, not 50 MB
    for fault in sent:   # each on every connection it was sent to (both routes)
        assert by_marker[fault["marker"]] == fault["connections"] == 2, fault
    assert service.handler.stats.dead_letters.total() == len(letters)
    assert {(r.reason, r.raw) for r in letters} <= dlq_contents(broker.bootstrap)

    # The connections stayed up: no disconnect, no reconnect, one connect each.
    assert service.events["disconnects"] == 0 and service.events["reconnects"] == 0
    assert all(c.connects == 1 for c in service.connections.values())

    # No trade lost: complete ids, nothing to backfill.
    events = Counter(r.kind for r in records if r.record_type == "feed_event")
    assert events["trade_gap"] == 0 and service.handler.missing_trades() == 0
    truth_ids = truth_trade_ids(truth)
    for symbol, got in trade_ids(records).items():
        assert len(got) == len(set(got)) > 500, symbol
        assert sorted(got) == list(range(min(got), max(got) + 1)), f"{symbol}: trade ids missing"
        assert {(symbol, i) for i in got} <= truth_ids
