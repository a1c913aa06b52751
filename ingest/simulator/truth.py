"""Ground truth: what really happened inside the simulated venue, for tests to compare against.

The published feed is deliberately lossy in the ways Binance's is (one forceOrder per symbol per
second, faults), so the truth file records the unsampled facts: every liquidation, true 2% depth,
open interest, mark price per second, full books at checkpoints with the update id they
correspond to, the trade id ranges, funding settlements and each injected fault.

Format: JSON Lines (one object per line, written with orjson), every record has ``type``:

* ``meta``: ``version, scenario, seed, start_ms, end_ms, step_ms, checkpoint_every_s,
  trigger_ms`` (cascade only), ``symbols`` (``symbol, tick_size, step_size, price_precision,
  quantity_precision``), ``faults`` (the fault configuration).
* ``cascade_window``: ``symbol, start_ms, end_ms`` as the scenario defines the cascade.
* ``second`` (one per symbol per simulated second, state at ``ts``; a run stopped between
  seconds ends with a partial one, ``ts`` not a multiple of 1000, covering what was published
  after the last whole second): ``ts, symbol, mark, index,
  mid, best_bid, best_ask, last_price, funding_rate, oi`` (base units), ``oi_usd`` (at mark),
  ``depth2_bid, depth2_bid_usd, depth2_ask, depth2_ask_usd`` (mid-based inclusive 2% bands,
  base and USD), ``update_id`` (last depth update id), ``agg_first, agg_last, trade_first,
  trade_last`` (aggTrade and trade ids generated during the second, contiguous; null if none),
  ``liq_long_usd, liq_short_usd`` (liquidation notional in the second), ``taker_buy_usd,
  taker_sell_usd, volume`` (taker flow in USD and base volume of the second's trades; their VWAP
  is ``(buy + sell) / volume``), ``high, low`` (trade prices; null without trades),
  ``liquidation_impact`` (``[down, up]``: log move of the market makers' centre due to earlier
  forced sells (<= 0) and forced buys (>= 0); ``mark * exp(-down)`` is the mark without the former).
* ``liquidation`` (every one): ``ts`` (last fill), ``symbol, side`` (order side, SELL = long
  liquidated), ``position`` (long|short), ``qty`` (position size), ``filled_qty``,
  ``insurance_fund_qty`` (not absorbed by the book), ``price`` (average fill, bankruptcy price if
  nothing filled), ``notional`` (qty*price), ``bankruptcy_price, liquidation_price, entry_price,
  leverage, mark_price, published`` (whether it was the forceOrder pushed for its second), ``id``
  (sequential over the run), ``parent_id`` (the earlier liquidation of the same symbol and side
  whose price impact triggered it, null if the mark without the impact of earlier liquidations
  pushing its way had already reached its liquidation price since the position was opened; see
  ``market.py``), ``opened_ms`` (when the position was opened; the run's start for the initial
  population).
* ``liq_levels`` (at every book checkpoint): ``ts, symbol, mark, width, bin_lo, long_usd,
  short_usd, outside_long_usd, outside_short_usd``: every open levered position's entry notional
  (USD) summed by true liquidation price into bins ``[bin_lo, bin_lo + width)`` (ascending) within
  +-30 % of the mark, per side, and what lies outside that range. ``width`` is 0.05 % of the
  symbol's calibration price rounded down to 1, 2 or 5 x 10^k (BTC 50, ETH 2, SOL 0.1).
* ``book`` (checkpoint every ``checkpoint_every_s``): ``ts, symbol, last_update_id, bids, asks``
  with the full book as ``[price, qty]`` decimal strings exactly as on the wire (bids descending,
  asks ascending); equal to any correctly synced local book after the event with ``u ==
  last_update_id``.
* ``funding``: ``ts, symbol, rate, mark`` at each funding settlement.
* ``positioning`` (one per symbol per closed 5-minute period, taken at its close; none for a period
  the market did not run from its start): ``ts`` (the period's start), ``symbol, long_accounts``
  (long share of all accounts: live levered positions, one account each), ``top`` (per cut
  ``"<fraction>/<margin|value>"``: ``[long share of those accounts, long share of their size]``),
  ``taker_buy_lots, taker_sell_lots`` (the market's, in lots of ``step_size``; a venue publishes
  its share). See ``ingest.simulator.positioning``.
* ``outage`` (one per ``--outage``, in the header): ``venue, start_ms, end_ms`` (the venue refuses
  everything in ``[start_ms, end_ms)``), ``withdrawal`` (the market makers' disruption level meanwhile),
  ``withdrawn_ms`` (fully withdrawn from then), ``returned_ms`` (back to the scenario's own level).
* ``fault``: ``fault`` (``sequence_gap | malformed | stall | drop | hostile | rest_error | outage |
  outage_refused``; ``outage``: ``venue, end_ts, connections`` cut; ``outage_refused``: ``venue, path,
  kind`` (``websocket | rest``), ``status``), ``ts`` and
  details (``stream, symbol, U, u, kind, end_ts, connections, path, status``; a drop also has
  ``mode`` and, in mode ``one``, ``route`` and ``siblings`` (other open connections with the same
  streams); a hostile frame has ``kind`` (``invalid_utf8 | oversized``), ``marker`` (an ASCII tag
  inside the frame), ``bytes`` and ``connections`` it was sent to).
"""

from __future__ import annotations

from collections import defaultdict
from pathlib import Path

import orjson

TRUTH_VERSION = 2


class TruthWriter:
    def __init__(self, path: str | Path):
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._fh = open(self.path, "wb", buffering=1 << 20)

    def write(self, record: dict) -> None:
        self._fh.write(orjson.dumps(record, option=orjson.OPT_SERIALIZE_NUMPY) + b"\n")

    def flush(self) -> None:
        self._fh.flush()

    def close(self) -> None:
        if not self._fh.closed:
            self._fh.close()


def load_truth(path: str | Path) -> dict[str, list[dict]]:
    """Read a truth file into lists of records keyed by ``type``."""
    out: dict[str, list[dict]] = defaultdict(list)
    with open(path, "rb") as fh:
        for line in fh:
            record = orjson.loads(line)
            out[record["type"]].append(record)
    return dict(out)
