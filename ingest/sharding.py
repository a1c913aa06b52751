"""Splitting one venue's ingest across processes by symbol.

Shard ``i/n`` takes the native symbols whose CRC-32 modulo ``n`` is ``i``: a stable hash (Python's
``hash()`` is salted per process), so every shard process, every restart and every machine agrees on
who owns a symbol, and each symbol is ingested by exactly one shard. Per-symbol ordering is Kafka's
as before: records are keyed ``exchange|symbol`` and one key always lands on one partition, whichever
process produced it. Each shard keeps its own status, state and spill files (``file_suffix``), so a
restarted shard resumes its own trade sequences and catch-ups and nobody else's. The first start of
a new split takes its symbols' sequences from the previous split's state files (``inherited_state``);
a previous split's spill that still holds records must drain first (``other_layout_files``).

A venue's REST budget is per IP, and the shards of one venue share the IP: each shard gets
``1/n`` of it (``rest_weight_limit``).
"""

from __future__ import annotations

import re
import zlib
from dataclasses import dataclass
from pathlib import Path

from ingest.continuity import load_state

SHARD_PATTERN = re.compile(r"(\d+)/(\d+)")


@dataclass(frozen=True)
class Shard:
    index: int   # 0-based
    count: int

    def __post_init__(self):
        if self.count < 1 or not 0 <= self.index < self.count:
            raise ValueError(f"shard {self.index}/{self.count} does not exist: use I/N with N >= 1 and "
                             f"0 <= I < N, e.g. 0/{max(self.count, 2)} and 1/{max(self.count, 2)}")

    def __str__(self) -> str:
        return f"{self.index}/{self.count}"

    def owns(self, native_symbol: str) -> bool:
        return zlib.crc32(native_symbol.encode()) % self.count == self.index

    def symbols(self, native_symbols: list[str]) -> list[str]:
        return [s for s in native_symbols if self.owns(s)]


def parse_shard(text: str) -> Shard:
    """``"i/n"`` as a Shard; anything else is a ValueError saying what is expected."""
    match = SHARD_PATTERN.fullmatch(text.strip())
    if not match:
        raise ValueError(f"expected a shard as I/N (0-based index I of N shards, e.g. 0/2 and 1/2), got {text!r}")
    return Shard(int(match.group(1)), int(match.group(2)))


def split_symbols(native_symbols: list[str], count: int) -> list[list[str]]:
    """Each shard's symbols; a shard left with none is an error naming a count that works."""
    shards = [Shard(i, count).symbols(native_symbols) for i in range(count)]
    empty = [str(i) for i, symbols in enumerate(shards) if not symbols]
    if empty:
        workable = max(n for n in range(1, len(native_symbols) + 1)
                       if all(Shard(i, n).symbols(native_symbols) for i in range(n)))
        raise ValueError(f"{count} shards over {len(native_symbols)} symbols leave shard(s) {', '.join(empty)} "
                         f"with none (symbols go to shards by a hash, not round robin); use at most "
                         f"{workable} shards for these symbols")
    return shards


def other_layout_files(run_dir: Path, name: str, extension: str, shard_count: int | None) -> list[Path]:
    """``<name>[.shard-<i>-of-<n>]<extension>`` files in ``run_dir`` written by another split of the venue
    than ``shard_count`` shards (None: unsharded), e.g. ``ingest-<venue>`` and ``.state.json``."""
    found = []
    for path in run_dir.glob(f"{name}*{extension}"):
        middle = path.name[len(name):len(path.name) - len(extension)]
        match = re.fullmatch(r"\.shard-\d+-of-(\d+)", middle)
        if (match or middle == "") and (int(match.group(1)) if match else None) != shard_count:
            found.append(path)
    return sorted(found)


def inherited_state(run_dir: Path, exchange: str, shard: Shard | None, symbols: set[str]) -> dict:
    """On the first start of a new split (say 2 shards after one process), the trade sequences and
    catch-ups of ``symbols`` (normalized) from the state files of the split before it, so the window
    between the two is backfilled like any restart's. Counters are not carried over: the old files
    keep theirs."""
    inherited: dict = {}
    for path in other_layout_files(run_dir, f"ingest-{exchange}", ".state.json", shard and shard.count):
        state = load_state(path)
        for section in ("trades", "catch_up"):
            owned = {s: entry for s, entry in state.get(section, {}).items() if s in symbols}
            if owned:
                inherited.setdefault(section, {}).update(owned)
                inherited.update(version=state["version"], exchange=exchange)
    return inherited


def file_suffix(shard: Shard | None) -> str:
    """``""`` or ``".shard-<i>-of-<n>"``, after the venue in the status, state and spill files' names."""
    return "" if shard is None else f".shard-{shard.index}-of-{shard.count}"


def rest_weight_limit(venue_limit: int, shard: Shard | None) -> float:
    """The share of the venue's per-IP REST budget one process may spend."""
    return venue_limit if shard is None else venue_limit / shard.count


def combine_statuses(statuses: list[dict]) -> dict:
    """One venue's view over its shards' status files: counters summed, trade sequences side by side,
    the oldest update and start; each shard's own state stays in its file."""
    def total(key):
        return sum(st.get(key, 0) for st in statuses)

    def summed(key):
        return summed_dicts([st.get(key, {}) for st in statuses])

    kafka = [st.get("kafka") for st in statuses]
    return {
        "service": "ingest", "exchange": statuses[0]["exchange"], "shards": [st.get("shard") for st in statuses],
        "updated_at": min(st["updated_at"] for st in statuses), "started_at": min(st["started_at"] for st in statuses),
        "messages_per_s": total("messages_per_s"), "messages": total("messages"),
        "missing_trades": total("missing_trades"), "gaps": total("gaps"), "resyncs": total("resyncs"),
        "dead_letters": total("dead_letters"), "spill_bytes": total("spill_bytes"),
        "spilling": any(st.get("spilling") for st in statuses),
        "kafka": next((k for k in kafka if k != "reachable"), "reachable"),
        "sink": {"dropped": summed_dicts([st.get("sink", {}).get("dropped", {}) for st in statuses])},
        "trades": dict(sorted((s, seq) for st in statuses for s, seq in st.get("trades", {}).items())),
        "records": summed("records"), "events": summed("events"),
        "counters_run": summed("counters_run"), "counters_total": summed("counters_total"),
        "rest_weight_1m": max(st.get("rest_weight_1m", 0) for st in statuses),   # the venue's figure for the IP
        "backoffs": sorted((w for st in statuses for w in st.get("backoffs", [])), key=lambda w: w["until"]),
        "task_errors": [{**e, "task": f"shard {st.get('shard')} {e['task']}"}
                        for st in statuses for e in st.get("task_errors", [])],
    }


def summed_dicts(counts: list[dict[str, int]]) -> dict[str, int]:
    out: dict[str, int] = {}
    for count in counts:
        for name, n in count.items():
            out[name] = out.get(name, 0) + n
    return out
