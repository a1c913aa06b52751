"""The garbage-collector policy of perpflow's long-running streaming processes.

Streaming allocates millions of short-lived containers (parsed frames, records, book levels, wire
payloads) that die young and form no reference cycles. CPython's default policy runs a young
collection every 700 net allocations and a full one every 100 young ones, each full collection
walking every object imported at start-up (Dagster's alone are hundreds of thousands). On the
mappers' path that was 20-40 % of the CPU (60,000 Binance and OKX frames through ``FeedHandler``,
as ``bench``'s per-venue path does, with and without this policy). Cycles are still collected, in fewer and larger young batches, and start-up
objects are moved out of the collector's sight (they live as long as the process anyway).
"""

from __future__ import annotations

import gc

YOUNG_THRESHOLD = 50_000


def use_streaming_gc() -> None:
    """Freeze what is alive now (imports, configuration) and collect the young generation in
    larger batches. Call once the process has imported what it needs; calling again later (after
    a lazy import) freezes that too."""
    gc.collect()
    gc.freeze()
    gc.set_threshold(YOUNG_THRESHOLD, 20, 100)
