"""The simulated venue's public interface, without any network: Binance messages and REST bodies.

The websocket server and offline users (benchmarks, tests, the demo) share this one object, so a
message stream produced offline is byte-for-byte the stream the server would push for the same
configuration and seed. Each model step is turned into the messages Binance would publish in
that 100 ms: aggTrade/trade per fill, depthUpdate per interval stream with correct U/u/pu
chaining (every stream runs from the start, subscribers or not, so ``pu`` and the REST
snapshot's ``lastUpdateId`` share one id space), bookTicker on best-level changes, markPrice at
1 s/3 s and the sampled forceOrder (latest liquidation per symbol per second). Faults are
applied here too, so offline streams carry them exactly like the server's.

Payloads are only built for streams someone wants (``wanted``), but every stream's state
advances regardless, which keeps the stream identical whoever listens.
"""

from __future__ import annotations

import math
from collections import deque

from collections.abc import Callable, Iterable, Iterator
from pathlib import Path
from typing import NamedTuple

import numpy as np

from .config import ALL_LIQUIDATIONS_STREAM, SimConfig
from .faults import FaultSchedule, MalformedFrame, corrupt
from .market import Fill, Liquidation, MarketModel, StepResult
from .positioning import PERIOD_MS, PositioningStats
from .scenario import OUTAGE_RETURN_S, OUTAGE_WITHDRAW_S
from .truth import TRUTH_VERSION, TruthWriter
from .venue_market import VENUE_MARKETS, PriceLag, VenueMarket
from . import wire

DEPTH_STREAMS = (("depth@100ms", 100), ("depth", 250), ("depth@500ms", 500))
DEPTH_LATENCY_MS = 3
TRADE_LATENCY_MS = 3
AGG_TRADE_LATENCY_MS = 6
BOOK_TICKER_LATENCY_MS = 1
MARK_PRICE_LATENCY_MS = 1
FORCE_ORDER_LATENCY_MS = 2
# Every liquidation, not Binance's sample: an internal stream no Binance client can subscribe to
# (not a Binance stream name), for dialects of venues that publish more of them (dYdX, Hyperliquid).
LIQUIDATION_EVENTS_STREAM = "@liquidations"
# True liquidation-level snapshots: bins of 0.05 % of the symbol's calibration price rounded down to
# 1, 2 or 5 x 10^k (fine enough to sum into any modelled map's 0.1 %-of-mid bins of the same
# family), over liquidation prices within +-30 % of the mark.
LIQ_LEVEL_BIN_SHARE = 0.0005
LIQ_LEVEL_RANGE = 0.30
DEPTH_LIMITS = (5, 10, 20, 50, 100, 500, 1000)

Wanted = Callable[[str], bool] | None


RECENT_AGG_TRADES = 200_000
RECENT_LIQUIDATIONS = 200_000


class Message(NamedTuple):
    """One published message: exchange event time, stream name and the ``data`` payload.

    ``payload`` is a dict, or a MalformedFrame when a fault made the frame invalid JSON."""

    ts_ms: int
    stream: str
    payload: dict | MalformedFrame


class UnknownSymbol(KeyError):
    pass


class ExchangeFeed:
    """``book_interval_ms`` replaces every depth stream's own interval (100/250/500 ms) with a
    coarser one: each event then carries the net changes since the previous one, chained by
    U/u/pu like any diff-depth event. Binance offers no such stream; it is for long stretches of
    calm history whose consumers want a book a minute, not ten a second (the demo's warm-up day)."""

    def __init__(self, config: SimConfig, truth_path: str | Path | None = None, *,
                 book_interval_ms: int | None = None):
        self.config = config.resolved()
        self._depth_intervals = [(name, book_interval_ms or interval) for name, interval in DEPTH_STREAMS]
        self.model = MarketModel(self.config)
        m = self.model
        self.symbols = [s.symbol for s in m.specs]
        self.formats = [wire.SymbolFormat(s) for s in m.specs]
        self._prefix = [f.stream_prefix for f in self.formats]
        self._agg_streams = [f"{p}@aggTrade" for p in self._prefix]
        self._trade_streams = [f"{p}@trade" for p in self._prefix]
        self._index_of = {sym: i for i, sym in enumerate(self.symbols)}
        self.faults = FaultSchedule(self.config.faults, self.config.seed, m.start_ms, self.symbols)
        path = truth_path or self.config.truth_path
        self.truth = TruthWriter(path) if path else None

        n = m.n
        # Per depth stream: the steps' changes since its last event and, per symbol, (first U, last u).
        self._depth_steps: dict[str, list] = {name: [] for name, _ in DEPTH_STREAMS}
        self._depth_ids: dict[str, list] = {name: [None] * n for name, _ in DEPTH_STREAMS}
        self._depth_last_u = {name: list(m.last_update_id) for name, _ in DEPTH_STREAMS}
        self._gap_pending: set[str] = set()
        self._malformed_pending: dict[str, str] = {}
        self._stalls_recorded: set[int] = set()
        self._liq_window: list[list[Liquidation]] = [[] for _ in range(n)]
        self._second_liq = [[0.0, 0.0] for _ in range(n)]
        # Per symbol in the current second: taker buy USD, taker sell USD, base volume, high, low.
        self._second_flow = [[0.0, 0.0, 0.0, None, None] for _ in range(n)]
        self._liq_level_width = [_one_two_five(spec.price * LIQ_LEVEL_BIN_SHARE) for spec in m.specs]
        self._second_agg = list(m.next_agg_id)
        self._second_trade = list(m.next_trade_id)
        # Recent aggTrades per symbol for REST /fapi/v1/aggTrades (what clients backfill gaps from).
        self._recent_agg: list[deque] = [deque(maxlen=RECENT_AGG_TRADES) for _ in range(n)]
        # Every liquidation once its second is over, newest last (venues that list them all over REST).
        self.recent_liquidations: deque[Liquidation] = deque(maxlen=RECENT_LIQUIDATIONS)
        # The venues' positioning statistics per 5-minute period (ingest.simulator.positioning).
        self.positioning = PositioningStats(m.positions, m.start_ms)
        self.pending_drops = 0
        self.pending_hostile: list[str] = []    # kinds of hostile frames the server sends next
        self.liquidation_count = 0
        self.published_liquidations = 0
        # Every lagged venue's displacement runs from the first step, listened to or not, so it is
        # the same whoever connects when (and the truth can state it).
        self.price_lags = {venue: PriceLag(params.lag_ms, m.step_ms, m.specs)
                           for venue, params in VENUE_MARKETS.items() if params.lag_ms}
        self._mids: deque[list[float]] = deque([list(m.mid)], maxlen=1 + max(
            (lag.back for lag in self.price_lags.values()), default=0))
        self._venue_markets: dict[str, VenueMarket] = {}
        self._write_header()

    # ------------------------------------------------------------------ time
    @property
    def now_ms(self) -> int:
        return self.model.now_ms

    @property
    def start_ms(self) -> int:
        return self.model.start_ms

    @property
    def end_ms(self) -> int:
        return self.model.end_ms

    @property
    def finished(self) -> bool:
        return self.model.finished

    # ------------------------------------------------------------------ stepping
    def messages(self, streams: Iterable[str] | None = None) -> Iterator[Message]:
        """Run to the end of the scenario, yielding messages (all streams, or only ``streams``)."""
        wanted = None if streams is None else frozenset(streams).__contains__
        while not self.finished:
            yield from self.step(wanted)

    def step(self, wanted: Wanted = None) -> list[Message]:
        """Advance one model step (``SimConfig.step_ms``); return its messages in event-time order."""
        r = self.model.step_once()
        t1 = r.t1_ms
        out: list[Message] = []
        self._move_lagged_venues()
        self._schedule_faults(t1)
        for f in r.fills:
            self.positioning.add_fill(f.symbol_index, f.ts_ms, f.lots, taker_buys=not f.buyer_is_maker,
                                      trades=f.last_trade_id - f.first_trade_id + 1)
        if t1 % PERIOD_MS == 0:
            for s, period in enumerate(self.positioning.close_period(t1)):
                if period is not None and self.truth:
                    self.truth.write(period.truth(self.symbols[s]))
        if r.fills:
            self._emit_trades(r.fills, out, wanted)
            if self.truth:
                self._add_flow(r.fills)
        self._emit_depth(r, out, wanted)
        self._emit_book_tickers(r, out, wanted)
        for liq in r.liquidations:
            self._liq_window[liq.symbol_index].append(liq)
        if t1 % 1000 == 0:
            self._emit_force_orders(t1, out, wanted)
            self._emit_mark_prices(t1, out, wanted)
            if self.truth:
                self._write_second(t1)
        if self.truth:
            for s, rate, mark in r.fundings:
                self.truth.write({"type": "funding", "ts": t1, "symbol": self.symbols[s], "rate": rate, "mark": mark})
            if (t1 - self.start_ms) % (self.config.checkpoint_every_s * 1000) == 0:
                self._write_books(t1)
                self._write_liquidation_levels(t1)
        out.sort(key=lambda msg: msg.ts_ms)
        return out

    def venue_market(self, venue: str) -> VenueMarket:
        """A venue's own market on this feed's shared one (``ingest.simulator.venue_market``),
        displaced as its lag has it at the current step."""
        market = self._venue_markets.get(venue)
        if market is None:
            market = self._venue_markets[venue] = VenueMarket(venue, self.config.seed, self.model.specs)
            lag = self.price_lags.get(venue)
            for s, ticks in enumerate(lag.ticks if lag else ()):
                market.displace(s, ticks)
        return market

    def _move_lagged_venues(self) -> None:
        self._mids.append(list(self.model.mid))
        for venue, lag in self.price_lags.items():
            changed = lag.update(self._mids)
            market = self._venue_markets.get(venue)
            if market is not None:
                for s in changed:
                    market.displace(s, lag.ticks[s])

    def _venue_offsets(self, s: int) -> dict[str, int]:
        return {venue: lag.ticks[s] for venue, lag in self.price_lags.items()}

    def run_truth_only(self) -> None:
        """Run the whole scenario building no payloads: the fastest way to a ground-truth file."""
        nothing = frozenset().__contains__
        while not self.finished:
            self.step(nothing)
        self.close()

    def close(self) -> None:
        """Finish the ground-truth file; later faults (e.g. REST errors after the end) are not recorded.

        Every shutdown (scenario end, server stop, SIGTERM) comes here, so a run stopped inside a
        second still ends its truth with that partial second: whatever was published is in it."""
        if self.truth:
            if self.now_ms % 1000:
                self._write_partial_second()
            self.truth.close()
            self.truth = None

    def _write_partial_second(self) -> None:
        """The last ``second`` record at ``now_ms``; the window's liquidations happened but no
        forceOrder was pushed for them (that happens on the second), so they are unpublished."""
        for s, window in enumerate(self._liq_window):
            self._liq_window[s] = []
            self.liquidation_count += len(window)
            self._record_liquidations(s, window, published=None)
        self._write_second(self.now_ms)

    def record_fault(self, ts_ms: int, fault: str, **details) -> None:
        if self.truth:
            self.truth.write({"type": "fault", "fault": fault, "ts": ts_ms, **details})

    # ------------------------------------------------------------------ emission helpers
    def _gate(self, ts: int, stream: str, wanted: Wanted) -> str | None:
        """Decide a message's fate before paying for its payload.

        None: not published (stalled, or nobody wants it); "": publish as is; otherwise the
        corruption kind a scheduled malformed-frame fault applies to it. A corruption is spent
        (and recorded) on its target stream's next message whether or not anyone listens."""
        if self.faults.stalls and self.faults.stalled(stream, ts):
            return None
        wants = wanted is None or wanted(stream)
        if self._malformed_pending:
            kind = self._malformed_pending.pop(stream, None)
            if kind is not None:
                if wants:
                    return kind
                self.record_fault(ts, "malformed", stream=stream, kind=kind)
        return "" if wants else None

    def _push(self, out: list[Message], ts: int, stream: str, payload: dict, gate: str) -> None:
        if gate:
            out.append(Message(ts, stream, corrupt(payload, gate)))
            self.record_fault(ts, "malformed", stream=stream, kind=gate)
        else:
            out.append(Message(ts, stream, payload))

    def _schedule_faults(self, t1: int) -> None:
        while (symbol := self.faults.gap_due(t1)) is not None:
            prefix = symbol.lower()
            self._gap_pending.update(f"{prefix}@{name}" for name, _ in DEPTH_STREAMS)
        while (due := self.faults.malformed_due(t1)) is not None:
            stream, kind = due
            self._malformed_pending[stream] = kind
        while self.faults.drop_due(t1):
            self.pending_drops += 1
        while (kind := self.faults.hostile_due(t1)) is not None:
            self.pending_hostile.append(kind)
        for i, (spec, start, end) in enumerate(self.faults.stalls):
            if i not in self._stalls_recorded and t1 >= start:
                self._stalls_recorded.add(i)
                self.record_fault(start, "stall", stream=spec.stream, end_ts=end)

    def _may_publish(self, stream: str, wanted: Wanted) -> bool:
        """Cheap pre-check: could any message of this stream be published (or corrupted) now?"""
        return bool(self.faults.stalls) or stream in self._malformed_pending or wanted is None or wanted(stream)

    def _emit_trades(self, fills: list[Fill], out: list[Message], wanted: Wanted) -> None:
        for f in fills:
            s = f.symbol_index
            fmt = self.formats[s]
            self._recent_agg[s].append(f)
            stream = self._agg_streams[s]
            if self._may_publish(stream, wanted):
                ts = f.ts_ms + AGG_TRADE_LATENCY_MS
                gate = self._gate(ts, stream, wanted)
                if gate is not None:
                    self._push(out, ts, stream, wire.agg_trade(fmt, ts, f.agg_id, f.tick, f.lots, f.first_trade_id,
                                                               f.last_trade_id, f.ts_ms, f.buyer_is_maker), gate)
            stream = self._trade_streams[s]
            if not self._may_publish(stream, wanted):
                continue
            ts = f.ts_ms + TRADE_LATENCY_MS
            count = f.last_trade_id - f.first_trade_id + 1
            base, extra = divmod(f.lots, count)
            for i in range(count):
                gate = self._gate(ts, stream, wanted)
                if gate is not None:
                    self._push(out, ts, stream, wire.trade(fmt, ts, f.ts_ms, f.first_trade_id + i, f.tick,
                                                           base + (1 if i < extra else 0), f.buyer_is_maker), gate)

    def _emit_depth(self, r: StepResult, out: list[Message], wanted: Wanted) -> None:
        """depthUpdate per interval stream: the net changes since that stream's previous event.

        Update ids advance for every stream on every step; which levels changed is only worked
        out per symbol when an event is actually built."""
        m = self.model
        if len(r.changed_rows):
            for name, _ in DEPTH_STREAMS:
                self._depth_steps[name].append((r.changed_rows, r.changed_ticks))
                ids = self._depth_ids[name]
                for s, step_ids in enumerate(r.update_ids):
                    if step_ids is not None:
                        ids[s] = (ids[s][0] if ids[s] else step_ids[0], step_ids[1])
        t1 = r.t1_ms
        event_ms = t1 + DEPTH_LATENCY_MS
        for name, interval in self._depth_intervals:
            if t1 // interval == r.t0_ms // interval:
                continue            # no interval boundary in this step (250 ms falls mid-step)
            ids = self._depth_ids[name]
            steps = self._depth_steps[name]
            for s in range(m.n):
                if ids[s] is None:
                    continue
                first_id, final_id = ids[s]
                ids[s] = None
                previous = self._depth_last_u[name][s]
                self._depth_last_u[name][s] = final_id
                stream = f"{self._prefix[s]}@{name}"
                if stream in self._gap_pending:
                    self._gap_pending.discard(stream)
                    self.record_fault(event_ms, "sequence_gap", stream=stream, symbol=self.symbols[s],
                                      U=first_id, u=final_id)
                    continue
                gate = self._gate(event_ms, stream, wanted)
                if gate is None:
                    continue
                bids, asks = self._changed_levels(s, steps)
                self._push(out, event_ms, stream, wire.depth_update(
                    self.formats[s], event_ms, m.last_change_ms[s], first_id, final_id, previous, bids, asks), gate)
            steps.clear()

    def _changed_levels(self, s: int, steps: list[tuple[np.ndarray, np.ndarray]]):
        """Current [price, qty] of every level of symbol s changed in the given steps, by price."""
        n = self.model.n
        rows = np.concatenate([r for r, _ in steps]) if len(steps) > 1 else steps[0][0]
        ticks = np.concatenate([t for _, t in steps]) if len(steps) > 1 else steps[0][1]
        out = []
        for row, ask in ((s, False), (n + s, True)):
            side_ticks = np.unique(ticks[rows == row])
            out.append(self.formats[s].levels(side_ticks.tolist(), self.model.lots_at(s, side_ticks, ask).tolist()))
        return out

    def _emit_book_tickers(self, r: StepResult, out: list[Message], wanted: Wanted) -> None:
        m = self.model
        event_ms = r.t1_ms + BOOK_TICKER_LATENCY_MS
        for s, changed in enumerate(r.best_changed):
            bid, bid_lots, ask, ask_lots = m.best[s]
            if not changed or not bid or not ask:
                continue
            stream = f"{self._prefix[s]}@bookTicker"
            gate = self._gate(event_ms, stream, wanted)
            if gate is not None:
                self._push(out, event_ms, stream, wire.book_ticker(
                    self.formats[s], event_ms, r.t1_ms - 1, m.last_update_id[s], bid, bid_lots, ask, ask_lots), gate)

    def _emit_force_orders(self, t1: int, out: list[Message], wanted: Wanted) -> None:
        """Binance pushes only the latest liquidation per symbol within each 1000 ms."""
        for s, window in enumerate(self._liq_window):
            if not window:
                continue
            self._liq_window[s] = []
            filled = [liq for liq in window if liq.filled_lots > 0]
            published = max(reversed(filled), key=lambda liq: liq.last_fill_ms) if filled else None  # ties: last
            if published is not None:
                self.published_liquidations += 1
                event_ms = t1 + FORCE_ORDER_LATENCY_MS
                liq = published
                for stream in (f"{self._prefix[s]}@forceOrder", ALL_LIQUIDATIONS_STREAM):
                    gate = self._gate(event_ms, stream, wanted)
                    if gate is not None:
                        self._push(out, event_ms, stream, wire.force_order(
                            self.formats[s], event_ms, "SELL" if liq.is_long else "BUY", liq.lots,
                            liq.bankruptcy_price, liq.avg_price,
                            "FILLED" if liq.filled_lots == liq.lots else "EXPIRED",
                            liq.last_fill_lots, liq.filled_lots, liq.last_fill_ms), gate)
            self.liquidation_count += len(window)
            self._record_liquidations(s, window, published)
            self.recent_liquidations.extend(window)
            if wanted is None or wanted(LIQUIDATION_EVENTS_STREAM):
                for liq in window:
                    out.append(Message(t1 + FORCE_ORDER_LATENCY_MS, LIQUIDATION_EVENTS_STREAM,
                                       self._liquidation_event(liq, t1)))

    def _liquidation_event(self, liq: Liquidation, t1: int) -> dict:
        """One liquidation in full (``LIQUIDATION_EVENTS_STREAM``): sizes in lots, prices as floats;
        ``lots - filled_lots`` is what the book did not take (Binance's insurance fund)."""
        return {"e": "liquidation", "E": t1, "s": self.symbols[liq.symbol_index], "ts": liq.ts_ms,
                "last_fill_ms": liq.last_fill_ms, "long": liq.is_long, "lots": liq.lots,
                "filled_lots": liq.filled_lots, "avg_price": liq.avg_price,
                "bankruptcy_price": liq.bankruptcy_price, "mark_price": liq.mark_price}

    def fill_of(self, s: int, agg_id: int) -> Fill | None:
        """The recent fill of symbol ``s`` with aggregated id ``agg_id`` (None if it is too old)."""
        fills = self._recent_agg[s]
        for i in range(len(fills) - 1, max(-1, len(fills) - 10_000), -1):
            fill = fills[i]
            if fill.agg_id == agg_id:
                return fill
            if fill.agg_id < agg_id:
                return None
        return None

    def _record_liquidations(self, s: int, window: list[Liquidation], published: Liquidation | None) -> None:
        for liq in window:
            notional = self._liquidation_notional(liq)
            self._second_liq[s][0 if liq.is_long else 1] += notional
            if self.truth:
                self._write_liquidation(liq, notional, liq is published)

    def _liquidation_notional(self, liq: Liquidation) -> float:
        step = self.model.step[liq.symbol_index]
        unfilled = liq.lots - liq.filled_lots
        return float((liq.filled_lots * liq.avg_price + unfilled * liq.bankruptcy_price) * step)

    def _emit_mark_prices(self, t1: int, out: list[Message], wanted: Wanted) -> None:
        m = self.model
        event_ms = t1 + MARK_PRICE_LATENCY_MS
        streams = ("markPrice@1s", "markPrice") if t1 % 3000 == 0 else ("markPrice@1s",)
        for s in range(m.n):
            for name in streams:
                stream = f"{self._prefix[s]}@{name}"
                gate = self._gate(event_ms, stream, wanted)
                if gate is not None:
                    self._push(out, event_ms, stream, wire.mark_price_update(
                        self.symbols[s], event_ms, m.mark[s], m.index[s], m.estimated_settle_price[s],
                        m.funding_rate[s], m.next_funding_ms[s]), gate)

    # ------------------------------------------------------------------ ground truth
    def _write_header(self) -> None:
        if not self.truth:
            return
        cfg = self.config
        trigger = self.model.scenario.trigger_s
        self.truth.write({
            "type": "meta", "version": TRUTH_VERSION, "scenario": cfg.scenario, "seed": cfg.seed,
            "start_ms": self.start_ms, "end_ms": self.end_ms, "step_ms": self.model.step_ms,
            "checkpoint_every_s": cfg.checkpoint_every_s,
            "trigger_ms": None if trigger is None else self.start_ms + int(trigger * 1000),
            "symbols": [{"symbol": s.symbol, "tick_size": s.tick_size, "step_size": s.step_size,
                         "price_precision": s.price_precision, "quantity_precision": s.quantity_precision}
                        for s in self.model.specs],
            "faults": cfg.faults.as_dict(),
            "venue_markets": {venue: VENUE_MARKETS[venue].as_dict() for venue in cfg.venues},
        })
        for outage in cfg.faults.outages:
            begin, end = outage.window_ms(self.start_ms)
            self.truth.write({"type": "outage", "venue": outage.venue, "start_ms": begin, "end_ms": end,
                              "withdrawal": cfg.faults.outage_withdrawal,
                              "withdrawn_ms": begin + int(OUTAGE_WITHDRAW_S * 1000),
                              "returned_ms": end + int(OUTAGE_RETURN_S * 1000)})
        for symbol, start_s, end_s in self.model.scenario.cascade_windows():
            self.truth.write({"type": "cascade_window", "symbol": symbol,
                              "start_ms": self.start_ms + int(start_s * 1000),
                              "end_ms": self.start_ms + int(end_s * 1000)})
        self._write_books(self.start_ms)
        self._write_liquidation_levels(self.start_ms)

    def _add_flow(self, fills: list[Fill]) -> None:
        tick, step = self.model.tick_list, self.model.step
        for f in fills:
            price = f.tick * tick[f.symbol_index]
            base = f.lots * float(step[f.symbol_index])
            flow = self._second_flow[f.symbol_index]
            flow[1 if f.buyer_is_maker else 0] += price * base
            flow[2] += base
            flow[3] = price if flow[3] is None else max(flow[3], price)
            flow[4] = price if flow[4] is None else min(flow[4], price)

    def _write_liquidation_levels(self, ts: int) -> None:
        m = self.model
        for s, symbol in enumerate(self.symbols):
            mark = m.mark[s]
            self.truth.write({"type": "liq_levels", "ts": ts, "symbol": symbol, "mark": mark,
                              "width": self._liq_level_width[s],
                              **m.positions[s].liquidation_levels(self._liq_level_width[s],
                                                                  mark * (1 - LIQ_LEVEL_RANGE),
                                                                  mark * (1 + LIQ_LEVEL_RANGE))})

    def _write_liquidation(self, liq: Liquidation, notional: float, published: bool) -> None:
        step = float(self.model.step[liq.symbol_index])
        price = liq.avg_price if liq.filled_lots else liq.bankruptcy_price
        self.truth.write({
            "type": "liquidation", "ts": liq.last_fill_ms or liq.ts_ms, "symbol": self.symbols[liq.symbol_index],
            "side": "SELL" if liq.is_long else "BUY", "position": "long" if liq.is_long else "short",
            "qty": liq.lots * step, "filled_qty": liq.filled_lots * step,
            "insurance_fund_qty": (liq.lots - liq.filled_lots) * step, "price": price, "notional": notional,
            "bankruptcy_price": liq.bankruptcy_price, "liquidation_price": liq.liquidation_price,
            "entry_price": liq.entry_price, "leverage": liq.leverage, "mark_price": liq.mark_price,
            "published": published, "id": liq.liq_id, "parent_id": liq.parent_id,
            "opened_ms": liq.opened_ms,
        })

    def _write_second(self, t1: int) -> None:
        m = self.model
        depth = m.depth_within(0.02).tolist()
        oi = m.open_interest()
        for s in range(m.n):
            bid, _, ask, _ = m.best[s]
            tick = m.tick_list[s]
            agg0, agg1 = self._second_agg[s], m.next_agg_id[s]
            tr0, tr1 = self._second_trade[s], m.next_trade_id[s]
            self.truth.write({
                "type": "second", "ts": t1, "symbol": self.symbols[s], "mark": m.mark[s], "index": m.index[s],
                "mid": m.mid[s], "best_bid": bid * tick if bid else None, "best_ask": ask * tick if ask else None,
                "last_price": m.last_price[s], "funding_rate": m.funding_rate[s],
                "oi": oi[s], "oi_usd": oi[s] * m.mark[s],
                "depth2_bid": depth[s][0], "depth2_bid_usd": depth[s][1],
                "depth2_ask": depth[s][2], "depth2_ask_usd": depth[s][3],
                "update_id": m.last_update_id[s],
                "agg_first": agg0 if agg1 > agg0 else None, "agg_last": agg1 - 1 if agg1 > agg0 else None,
                "trade_first": tr0 if tr1 > tr0 else None, "trade_last": tr1 - 1 if tr1 > tr0 else None,
                "liq_long_usd": self._second_liq[s][0], "liq_short_usd": self._second_liq[s][1],
                "taker_buy_usd": self._second_flow[s][0], "taker_sell_usd": self._second_flow[s][1],
                "volume": self._second_flow[s][2], "high": self._second_flow[s][3], "low": self._second_flow[s][4],
                "liquidation_impact": list(m.liquidation_impact(s)),
                "venue_offsets": self._venue_offsets(s),
            })
            self._second_flow[s] = [0.0, 0.0, 0.0, None, None]
            self._second_agg[s], self._second_trade[s] = agg1, tr1
            self._second_liq[s] = [0.0, 0.0]

    def _write_books(self, ts: int) -> None:
        for s, symbol in enumerate(self.symbols):
            snap = self._snapshot_levels(s, None)
            self.truth.write({"type": "book", "ts": ts, "symbol": symbol,
                              "last_update_id": self.model.last_update_id[s],
                              "venue_offsets": self._venue_offsets(s), **snap})

    # ------------------------------------------------------------------ REST bodies
    def symbol_index(self, symbol: str) -> int:
        try:
            return self._index_of[symbol]
        except KeyError:
            raise UnknownSymbol(symbol) from None

    def _snapshot_levels(self, s: int, limit: int | None) -> dict:
        bid_ticks, bid_lots, ask_ticks, ask_lots = self.model.book_levels(s)
        fmt = self.formats[s]
        return {"bids": fmt.levels(bid_ticks[:limit].tolist(), bid_lots[:limit].tolist()),
                "asks": fmt.levels(ask_ticks[:limit].tolist(), ask_lots[:limit].tolist())}

    def depth_snapshot(self, symbol: str, limit: int = 500) -> dict:
        """``GET /fapi/v1/depth``: the book now; ``lastUpdateId`` is the depth streams' last ``u``."""
        if limit not in DEPTH_LIMITS:
            raise ValueError(f"limit must be one of {DEPTH_LIMITS}")
        s = self.symbol_index(symbol)
        snap = self._snapshot_levels(s, limit)
        return wire.depth_snapshot(self.formats[s], self.model.last_update_id[s], self.now_ms,
                                   self.model.last_change_ms[s], snap["bids"], snap["asks"])

    def agg_trades(self, symbol: str, from_id: int | None = None, limit: int = 500) -> list[dict]:
        """``GET /fapi/v1/aggTrades``: up to ``limit`` aggTrades from ``from_id`` (else the latest)."""
        s = self.symbol_index(symbol)
        fills = list(self._recent_agg[s])
        if from_id is not None:
            fills = [f for f in fills if f.agg_id >= from_id][:limit]
        else:
            fills = fills[-limit:]
        fmt = self.formats[s]
        return [{"a": f.agg_id, "p": fmt.price(f.tick), "q": fmt.qty(f.lots), "f": f.first_trade_id,
                 "l": f.last_trade_id, "T": f.ts_ms, "m": f.buyer_is_maker} for f in fills]

    def recent_fills(self, s: int) -> deque:
        """The last ``RECENT_AGG_TRADES`` aggregated fills of symbol ``s``, oldest first (REST history)."""
        return self._recent_agg[s]

    def open_interest(self, symbol: str) -> dict:
        s = self.symbol_index(symbol)
        lots = self.model.positions[s].oi_lots
        return {"openInterest": self.formats[s].qty(lots), "symbol": symbol, "time": self.now_ms}

    def premium_index(self, symbol: str | None = None) -> dict | list[dict]:
        m = self.model
        if symbol is not None:
            s = self.symbol_index(symbol)
            return self._premium_entry(s)
        return [self._premium_entry(s) for s in range(m.n)]

    def _premium_entry(self, s: int) -> dict:
        m = self.model
        return {"symbol": self.symbols[s], "markPrice": wire.decimal8(m.mark[s]),
                "indexPrice": wire.decimal8(m.index[s]),
                "estimatedSettlePrice": wire.decimal8(m.estimated_settle_price[s]),
                "lastFundingRate": wire.decimal8(m.funding_rate[s]), "interestRate": "0.00010000",
                "nextFundingTime": m.next_funding_ms[s], "time": self.now_ms}

    def funding_info(self) -> list[dict]:
        return [{"symbol": s.symbol, "adjustedFundingRateCap": wire.decimal8(s.funding_cap),
                 "adjustedFundingRateFloor": wire.decimal8(-s.funding_cap),
                 "fundingIntervalHours": s.funding_interval_hours, "disclaimer": False}
                for s in self.model.specs]

    def exchange_info(self, weight_limit: int = 2400) -> dict:
        return {
            "timezone": "UTC", "serverTime": self.now_ms, "futuresType": "U_MARGINED",
            "rateLimits": [
                {"rateLimitType": "REQUEST_WEIGHT", "interval": "MINUTE", "intervalNum": 1, "limit": weight_limit},
                {"rateLimitType": "ORDERS", "interval": "MINUTE", "intervalNum": 1, "limit": 1200},
                {"rateLimitType": "ORDERS", "interval": "SECOND", "intervalNum": 10, "limit": 300},
            ],
            "exchangeFilters": [],
            "assets": [{"asset": "USDT", "marginAvailable": True, "autoAssetExchange": "-10000"}],
            "symbols": [wire.exchange_symbol(s) for s in self.model.specs],
        }

    def server_time(self) -> dict:
        return {"serverTime": self.now_ms}


def iter_messages(scenario: str = "calm", seed: int = 7, *, hours: float | None = None,
                  symbols: Iterable[str] | None = None, streams: Iterable[str] | None = None,
                  truth_path: str | Path | None = None, config: SimConfig | None = None) -> Iterator[Message]:
    """Deterministic offline message stream: ``(ts_ms, stream, payload)`` for a scenario and seed.

    ``config`` overrides the other arguments (use it for faults, start time, ...); ``streams``
    restricts output to those stream names (``btcusdt@depth@100ms``, ``!forceOrder@arr``, ...)."""
    if config is None:
        config = SimConfig(scenario=scenario, seed=seed, hours=hours,
                           symbols=tuple(symbols) if symbols is not None else SimConfig().symbols)
    feed = ExchangeFeed(config, truth_path)
    try:
        yield from feed.messages(streams)
    finally:
        feed.close()


def _one_two_five(x: float) -> float:
    """The largest 1, 2 or 5 x 10^k not above ``x``."""
    power = 10.0 ** math.floor(math.log10(x))
    return next(m * power for m in (5.0, 2.0, 1.0) if m * power <= x * (1 + 1e-12))
