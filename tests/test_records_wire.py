"""The wire form of every record type: ``decode`` is the exact inverse of ``encode``.

SpillingSink keeps only the encoded value of a send in flight and decodes it back when the send
fails, so a record that did not survive the round trip would be spilled changed."""

from __future__ import annotations

import orjson
import pytest

from ingest import records

SAMPLE = {records.TEXT: "a|b é", records.INT: -7, records.FLAG: True, records.NUM: "0.000123",
          records.MS: 1_760_000_000_123, records.NS: 1_760_000_000_123_456_789,
          records.LEVELS: [["60000.1", "0.5"], ["59999.9", "0"]]}


def sample(cls, *, nulls: bool):
    return cls(**{s.name: None if nulls and s.nullable else SAMPLE[s.kind] for s in records.field_specs(cls)})


@pytest.mark.parametrize("cls", records.RECORD_TYPES, ids=lambda cls: cls.record_type)
@pytest.mark.parametrize("nulls", [False, True], ids=["values", "nulls"])
def test_every_record_type_decodes_back_to_the_record_it_encoded(cls, nulls):
    record = sample(cls, nulls=nulls)
    value = records.encode(record)
    assert records.decode(value) == record
    wire = orjson.loads(value)
    assert list(wire)[:2] == ["type", "v"] and wire["type"] == cls.record_type
    assert wire["v"] == records.SCHEMA_VERSION
    assert records.headers(record) == [("type", cls.record_type.encode()), ("v", str(records.SCHEMA_VERSION).encode())]
    assert records.headers(cls.record_type) == records.headers(record)


def test_a_pack_is_its_records_one_per_line_and_decodes_back_to_them():
    book = [sample(records.BookDelta, nulls=False), sample(records.BookSnapshot, nulls=True),
            sample(records.BookDelta, nulls=True)]
    book[1].reason = "line\nbreak"         # a line break inside a value is escaped, never raw
    book[2].symbol_native = "ÉTH\r\n"
    values = [records.encode(r) for r in book]
    assert all(b"\n" not in v for v in values)
    pack = records.Pack(topic="md.book", key=records.kafka_key(book[0]), values=values)
    value = records.encode(pack)
    assert records.split_value(value) == values and value.count(b"\n") == 2
    decoded = records.decode(value)
    assert decoded == pack and decoded.records() == book     # types mixed, in order
    assert [records.type_of(v) for v in values] == ["book_delta", "book_snapshot", "book_delta"]
    assert records.type_counts(pack) == {"book_delta": 2, "book_snapshot": 1}
    assert records.record_count(decoded) == 3 and records.record_count(book[0]) == 1
    assert records.kafka_key(pack) == records.kafka_key(book[0])
    assert records.headers(pack) == [("type", b"pack"), ("v", str(records.SCHEMA_VERSION).encode())]
    assert records.split_value(records.encode(book[0])) == [values[0]]
