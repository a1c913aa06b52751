"""Readers for recorded venue traffic, yielding what a live connection would have delivered.

Formats:
  * cryptofeed raw captures (``<EX>.ws.N.0``, ``<EX>.http.N.0``, ``<EX>.0``):
      ``<recv_ts>: <json>``              a websocket message received
      ``<url> -> <recv_ts>: <json>``     a REST response
      ``<url> <- <ts>: <json>`` / ``<url> <-> <ts>``   sent frames / connects (not data)
  * JSONL, one message per line: a raw venue message (the venue's event time stands in for the
    receive time: ``Venue.message_time_ms``), ``{"recv_ns": ..., "msg": {...}}`` (perpflow's own
    recorder), or a REST response the venue's format embeds (``Venue.recorded_rest``, e.g.
    tardis-style generated depth snapshots).

Files are merged by receive time, so the REST snapshots fall between the websocket messages
exactly where they arrived, as the book-sync procedure expects.
"""

from __future__ import annotations

import heapq
import re
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import orjson

_RECEIVED = re.compile(rb"^(\d+(?:\.\d+)?): (.*)$", re.S)
_REST = re.compile(rb"^(\S+) -> (\d+(?:\.\d+)?): (.*)$", re.S)
_META = re.compile(rb"^\S+ (?:<-|<->) \d")


@dataclass(frozen=True, order=True)
class RecordedMessage:
    ts_recv: int          # epoch ns
    seq: int              # position in its file, keeps ties in file order
    kind: str             # "ws" | "rest" | "meta"
    source: str           # stream/URL, or the reason a meta line is not data
    payload: bytes


def _seconds_to_ns(text: bytes) -> int:
    whole, _, frac = text.decode().partition(".")
    return int(whole) * 1_000_000_000 + int((frac + "000000000")[:9])


def _cryptofeed_lines(path: Path) -> Iterator[RecordedMessage]:
    with path.open("rb") as fh:
        for seq, line in enumerate(fh):
            line = line.rstrip(b"\r\n")
            if not line:
                continue
            if m := _RECEIVED.match(line):
                yield RecordedMessage(_seconds_to_ns(m[1]), seq, "ws", path.name, m[2])
            elif m := _REST.match(line):
                yield RecordedMessage(_seconds_to_ns(m[2]), seq, "rest", m[1].decode(), m[3])
            elif _META.match(line):
                yield RecordedMessage(0, seq, "meta", "capture metadata: connect/subscribe frame", line)
            else:
                yield RecordedMessage(0, seq, "meta", "capture metadata: feed configuration", line)


def _jsonl_lines(path: Path, venue) -> Iterator[RecordedMessage]:
    last_ts = 0
    with path.open("rb") as fh:
        for seq, line in enumerate(fh):
            line = line.strip()
            if not line:
                continue
            try:
                obj = orjson.loads(line)
            except orjson.JSONDecodeError:
                yield RecordedMessage(last_ts, seq, "ws", path.name, line)   # the handler dead-letters it
                continue
            kind, source, payload = "ws", path.name, line
            if isinstance(obj, dict) and "recv_ns" in obj and "msg" in obj:
                last_ts = int(obj["recv_ns"])
                kind = obj.get("kind", "ws")
                source = obj.get("source", source)
                payload = orjson.dumps(obj["msg"])
            else:
                event_ms = venue.message_time_ms(obj)
                if isinstance(event_ms, int):
                    last_ts = event_ms * 1_000_000
                rest = venue.recorded_rest(obj)
                if rest is not None:
                    kind, source, payload = "rest", rest[0], orjson.dumps(rest[1])
            yield RecordedMessage(last_ts, seq, kind, source, payload)


def _is_cryptofeed(path: Path) -> bool:
    with path.open("rb") as fh:
        head = fh.readline()
    return not head.lstrip().startswith(b"{")


def read_recordings(paths: list[Path], venue) -> Iterator[RecordedMessage]:
    """All messages of all files, merged by receive time (``venue``: whose recordings they are)."""
    streams = []
    for path in paths:
        if not path.is_file():
            raise FileNotFoundError(f"recording {path} does not exist or is not a file")
        streams.append(_cryptofeed_lines(path) if _is_cryptofeed(path) else _jsonl_lines(path, venue))
    return heapq.merge(*streams, key=lambda m: (m.ts_recv, m.seq))
