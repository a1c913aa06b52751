"""What the venue modules polling the venues' own positioning statistics share (long/short ratios
and taker volume per period: ``ingest.records.LongShortRatio``, ``TakerVolume``).

Each venue's endpoints, fields and limits stay in its own module; this holds the choices that are
the same everywhere:

* the period is 5 minutes (every venue publishes it; longer ones are sums or samples of it);
* each poll asks for the last ``PERIODS_PER_POLL`` periods, so a restart or an outage shorter than
  that (2.5 hours) loses none, and runs every ``POLL_EVERY_S``. The loader stores each period
  once (``unique_key``), so the overlap of successive answers costs nothing in the warehouse;
* the newest period of an answer may still be open (a venue can restate it until it closes), so it
  is held back until a later period follows it: only closed periods are published. A venue that
  lists the open period has each closed one stored within a minute of its close; one that lists
  only closed periods [unverified which venues do] has the newest stored one period later.
"""

from __future__ import annotations

import re

from ingest.venue import MalformedMessage

PERIOD = "5m"
POLL_EVERY_S = 60.0
PERIODS_PER_POLL = 30

_EPOCH_MS = re.compile(r"[1-9][0-9]{0,15}")


def period_start(value, what: str) -> int:
    """A period's start as epoch ms: venues send it as a JSON integer or a digit string."""
    if isinstance(value, int) and not isinstance(value, bool) and value > 0:
        return value
    if isinstance(value, str) and _EPOCH_MS.fullmatch(value):
        return int(value)
    raise MalformedMessage(f"{what}: period start must be epoch milliseconds, got {value!r}")


def closed_periods(rows: list, start_of) -> list:
    """``rows`` in time order without the newest period (it may still be open); ``start_of(row)``
    gives a row's period start. Two rows for one period are a malformed answer."""
    ordered = sorted(rows, key=start_of)
    starts = [start_of(row) for row in ordered]
    if len(set(starts)) != len(starts):
        raise MalformedMessage("the answer lists a period twice")
    return ordered[:-1]
