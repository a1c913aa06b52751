"""Deterministic fault injection: what goes wrong, when, and on which stream.

Ingestors must survive the failures real venues produce (dropped sockets, depth sequence gaps,
garbage frames, a single stream going silent on a healthy connection, REST throttling and 5xx).
Faults are scheduled in simulated time from the configuration and seed alone, so a failing
ingestor test can be replayed exactly; each injected fault is written to the ground truth with
its time so tests can check the ingestor noticed it.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import orjson

from .config import FaultConfig

MALFORMED_KINDS = ("invalid_json", "missing_field", "wrong_type")
# Streams that carry a message at least every second in every scenario, so a scheduled corruption
# is delivered promptly; rotated over symbols.
MALFORMED_STREAM_KINDS = ("aggTrade", "depth@100ms", "markPrice@1s", "bookTicker", "trade")
# The field each corruption removes or retypes, per event type (all are required by parsers).
REQUIRED_FIELD = {"aggTrade": "p", "trade": "t", "depthUpdate": "u", "markPriceUpdate": "p",
                  "bookTicker": "b", "forceOrder": "o"}

HOSTILE_KINDS = ("invalid_utf8", "oversized")

REST_FAILURES = (
    (429, {"code": -1003, "msg": "Too many requests; current limit of IP(127.0.0.1) is 2400 requests per minute. "
                                 "Please use the websocket for live updates to avoid polling the API."}),
    (503, {"code": -1008, "msg": "Server is currently overloaded with other requests. "
                                 "Please try again in a few minutes."}),
    (500, {"code": -1001, "msg": "Internal error; unable to process your request. Please try again."}),
)


@dataclass(frozen=True)
class MalformedFrame:
    """A frame that is not valid JSON; ``text`` is what the wire carries for a raw stream.

    A combined-stream connection gets the same truncation applied to its envelope."""

    kind: str
    text: str

    @staticmethod
    def truncate(frame: bytes) -> bytes:
        return frame[: max(1, len(frame) * 3 // 5)]


def hostile_frame(kind: str, marker: str, size: int) -> bytes:
    """A frame a client must survive: ``invalid_utf8`` is a small text frame with bytes that are
    not UTF-8; ``oversized`` is valid JSON of ``size`` bytes. Both carry ``marker`` in ASCII so a
    dead letter can be matched to the fault."""
    head = b'{"stream":"hostile","data":{"marker":"' + marker.encode() + b'",'
    if kind == "invalid_utf8":
        return head + b'"text":"\xff\xfe\xc3\x28"}}'
    open_pad, close = b'"pad":"', b'"}}'
    return head + open_pad + b"x" * max(0, size - len(head) - len(open_pad) - len(close)) + close


def corrupt(payload: dict, kind: str) -> dict | MalformedFrame:
    """Apply one corruption kind to a payload (the input is not modified)."""
    if kind == "invalid_json":
        return MalformedFrame(kind, MalformedFrame.truncate(orjson.dumps(payload)).decode("utf-8", "replace"))
    field = REQUIRED_FIELD[payload["e"]]
    broken = dict(payload)
    if kind == "missing_field":
        del broken[field]
    else:
        value = broken[field]
        broken[field] = float(value) if isinstance(value, str) else str(value)
    return broken


class FaultSchedule:
    """Which faults are due at a simulated time; state advances monotonically with time."""

    def __init__(self, faults: FaultConfig, seed: int, start_ms: int, symbols: list[str]):
        self.config = faults
        self._start = start_ms
        self._streams = [f"{sym.lower()}@{kind}" for kind in MALFORMED_STREAM_KINDS for sym in symbols]
        self._symbols = symbols
        self._gap_k = 0
        self._malformed_k = 0
        self._drop_k = 0
        self._hostile_k = 0
        self._fetch_loss_k = 0
        self._stale_level_k = 0
        self._message_loss_k = 0
        self._rest_rng = np.random.Generator(np.random.PCG64([seed, 0xFA17]))
        self.stalls = [(s, start_ms + int(round(s.start_s * 1000)),
                        start_ms + int(round((s.start_s + s.duration_s) * 1000)))
                       for s in faults.stalls]

    @staticmethod
    def _due(every_s: float, start: int, k: int, now_ms: int) -> bool:
        return every_s > 0 and now_ms >= start + int(round((k + 1) * every_s * 1000))

    def gap_due(self, now_ms: int) -> str | None:
        """Symbol whose depth streams skip their next event, if a gap is due."""
        if not self._due(self.config.gap_every_s, self._start, self._gap_k, now_ms):
            return None
        symbol = self._symbols[self._gap_k % len(self._symbols)]
        self._gap_k += 1
        return symbol

    def malformed_due(self, now_ms: int) -> tuple[str, str] | None:
        """(stream, corruption kind) whose next message is corrupted, if one is due."""
        if not self._due(self.config.malformed_every_s, self._start, self._malformed_k, now_ms):
            return None
        k = self._malformed_k
        self._malformed_k += 1
        return self._streams[(k // len(MALFORMED_KINDS)) % len(self._streams)], MALFORMED_KINDS[k % len(MALFORMED_KINDS)]

    def drop_due(self, now_ms: int) -> bool:
        if not self._due(self.config.drop_every_s, self._start, self._drop_k, now_ms):
            return False
        self._drop_k += 1
        return True

    def hostile_due(self, now_ms: int) -> str | None:
        """Kind of hostile frame to send to every connection, if one is due."""
        if not self._due(self.config.hostile_every_s, self._start, self._hostile_k, now_ms):
            return None
        kind = HOSTILE_KINDS[self._hostile_k % len(HOSTILE_KINDS)]
        self._hostile_k += 1
        return kind

    def fetch_loss_due(self, now_ms: int) -> bool:
        """Whether an order-book subscription made now loses the updates of its snapshot fetch
        (dYdX): once per elapsed period, however many periods passed without a subscription."""
        due = False
        while self._due(self.config.fetch_loss_every_s, self._start, self._fetch_loss_k, now_ms):
            self._fetch_loss_k += 1
            due = True
        return due

    def stale_level_due(self, now_ms: int) -> bool:
        """Whether a level deletion is due to be withheld from book subscribers (dYdX)."""
        if not self._due(self.config.stale_level_every_s, self._start, self._stale_level_k, now_ms):
            return False
        self._stale_level_k += 1
        return True

    def message_loss_due(self, now_ms: int) -> bool:
        """Whether a trade update is due to be lost in transit (dYdX), once per elapsed period."""
        due = False
        while self._due(self.config.message_loss_every_s, self._start, self._message_loss_k, now_ms):
            self._message_loss_k += 1
            due = True
        return due

    def stalled(self, stream: str, ts_ms: int) -> bool:
        for spec, start, end in self.stalls:
            if start <= ts_ms < end and spec.matches(stream):
                return True
        return False

    def rest_failure(self) -> tuple[int, dict] | None:
        """Draws whether this REST call fails (one draw per call keeps replays identical)."""
        if self.config.rest_error_rate <= 0:
            return None
        u, pick = self._rest_rng.random(2).tolist()
        if u >= self.config.rest_error_rate:
            return None
        return REST_FAILURES[int(pick * len(REST_FAILURES))]
