"""The positioning transforms on the real Binance USD-M recording (../shared/data/cryptofeed-captures),
read from a DuckDB warehouse the way an asset reads a day: taker flow against a brute-force sum of
the recorded trades, and slippage from the stored ±10 % periodic snapshots against the spec's walk
in Decimal through the full books rebuilt from snapshot and deltas."""

from __future__ import annotations

import datetime as dt
from collections import defaultdict
from decimal import Decimal

import numpy as np
import pyarrow as pa
import pytest

from conftest import binance_recording
from ingest.records import Trade
from ingest.venues import forced_trade_types
from pipelines.replay import replay
from transforms.order_book import OrderBook
from transforms.slippage import slippage_batch
from transforms.taker_flow import aggregate_flow, cumulative_volume_delta, taker_flow_sql
from warehouse.loader import insert_records
from warehouse.store import Warehouse
from test_transforms_positioning_slippage import _decimal_walk

SIZES = (10_000.0, 100_000.0, 1_000_000.0)


@pytest.fixture(scope="module")
def recorded(tmp_path_factory):
    items = []
    replay("binance-usdm", binance_recording(), items.append)
    warehouse = Warehouse(tmp_path_factory.mktemp("recording") / "w.duckdb")
    with warehouse.writer() as con:
        con.execute("BEGIN")
        insert_records(con, items)
        con.execute("COMMIT")
    return warehouse, items


def test_taker_flow_equals_a_brute_force_sum_of_the_recorded_trades(recorded):
    warehouse, items = recorded
    expected: dict[tuple, list[float]] = defaultdict(lambda: [0.0] * 6)
    seen = set()
    for t in items:
        if not isinstance(t, Trade) or (t.symbol, t.trade_id, t.is_aggregated) in seen:
            continue
        seen.add((t.symbol, t.trade_id, t.is_aggregated))
        row = expected[(t.symbol, t.ts_exchange // 60_000 * 60)]
        buy = t.side == "buy"
        row[0 if buy else 1] += float(t.qty)
        row[2 if buy else 3] += float(t.qty) * float(t.price)
        row[4 if buy else 5] += t.last_trade_id - t.first_trade_id + 1
    assert len(seen) == 91   # aggregated trades in the recording
    with warehouse.writer() as con:
        cur = con.execute(taker_flow_sql(forced_trade_types()), {"start": dt.datetime(2000, 1, 1),
                                                                 "end": dt.datetime(2100, 1, 1)})
        names = [d[0] for d in cur.description]
        rows = [dict(zip(names, r, strict=True)) for r in cur.fetchall()]
    assert {(r["symbol"], r["minute"]) for r in rows} == set(expected)
    for r in rows:
        want = expected[(r["symbol"], r["minute"])]
        got = [r["taker_buy_base"], r["taker_sell_base"], r["taker_buy_usd"], r["taker_sell_usd"], r["n_buy"],
               r["n_sell"]]
        assert got == pytest.approx(want, rel=1e-12), (r["symbol"], r["minute"])
        assert r["n_forced"] == 0 and r["delta_ex_forced_usd"] == pytest.approx(r["delta_usd"])

    frame = {name: np.array([r[name] for r in rows], dtype=object if name in ("exchange", "symbol", "asset")
                            else float) for name in names}
    frame["minute"] = frame["minute"].astype(np.int64)
    total = aggregate_flow(frame)
    for asset, minute, delta in zip(total["asset"], total["minute"], total["delta_usd"], strict=True):
        assert delta == pytest.approx(sum(e[2] - e[3] for (s, m), e in expected.items()
                                          if m == minute and s.startswith(f"{asset}-")))
    for asset in set(total["asset"].tolist()):
        mine = total["asset"] == asset
        cvd = cumulative_volume_delta(total["minute"][mine], total["delta_usd"][mine])
        assert cvd[-1] == pytest.approx(total["delta_usd"][mine].sum())


def _side(column: pa.ChunkedArray):
    levels = column.combine_chunks()
    flat = levels.flatten()
    offsets = np.asarray(levels.offsets, dtype=np.int64)
    return (flat.field("price").to_numpy(zero_copy_only=False), flat.field("qty").to_numpy(zero_copy_only=False),
            offsets - offsets[0])


def test_slippage_of_stored_periodic_snapshots_equals_the_walk_through_full_books(recorded):
    warehouse, _ = recorded
    with warehouse.writer() as con:
        periodic = con.sql("SELECT symbol, seq, bids, asks FROM raw.book_snapshots WHERE reason = 'periodic' "
                           "ORDER BY symbol, seq").arrow()
        if isinstance(periodic, pa.RecordBatchReader):
            periodic = periodic.read_all()
        events = con.execute("""
            SELECT symbol, reason, seq, bids, asks FROM (
                SELECT symbol, reason, seq, bids, asks, 0 AS kind FROM raw.book_snapshots WHERE reason <> 'periodic'
                UNION ALL
                SELECT symbol, 'delta', last_seq, bids, asks, 1 FROM raw.book_deltas
                UNION ALL
                SELECT symbol, reason, seq, bids, asks, 2 FROM raw.book_snapshots WHERE reason = 'periodic')
            ORDER BY symbol, seq, kind""").fetchall()
    result = slippage_batch(*_side(periodic.column("bids")), *_side(periodic.column("asks")), sizes_usd=SIZES)
    row_of = {(s, q): i for i, (s, q) in enumerate(zip(periodic.column("symbol").to_pylist(),
                                                       periodic.column("seq").to_pylist(), strict=True))}

    books: dict[str, OrderBook] = {}
    checked = filled = 0
    for symbol, reason, seq, bids, asks in events:
        levels = ([(b["price"], b["qty"]) for b in bids], [(a["price"], a["qty"]) for a in asks])
        if reason == "sync":
            books[symbol] = OrderBook.from_levels(*levels)
        elif reason == "delta":
            books[symbol].apply(*levels)
        elif reason == "periodic":
            i = row_of[(symbol, seq)]
            full_bids, full_asks = books[symbol].levels()
            dec_bids = [(Decimal(repr(p)), Decimal(repr(q))) for p, q in full_bids]
            dec_asks = [(Decimal(repr(p)), Decimal(repr(q))) for p, q in full_asks]
            mid = (dec_bids[0][0] + dec_asks[0][0]) / 2
            assert result.mid[i] == pytest.approx(float(mid), rel=1e-15)
            for j, x in enumerate(SIZES):
                buy, sell = _decimal_walk(dec_asks, Decimal(x)), _decimal_walk(dec_bids, Decimal(x))
                for got, shallow, truncated, want in (
                        (result.ask_slippage[i, j], result.ask_too_shallow[i, j], result.ask_book_truncated[i, j],
                         None if buy is None else float(buy / mid - 1)),
                        (result.bid_slippage[i, j], result.bid_too_shallow[i, j], result.bid_book_truncated[i, j],
                         None if sell is None else float(1 - sell / mid))):
                    checked += 1
                    if shallow or truncated:
                        # The ±10 % copy ran out: only then may the full book say more.
                        continue
                    filled += 1
                    # Float against Decimal: the fraction agrees to 1e-10 (a millionth of a basis point).
                    assert want is not None and got == pytest.approx(want, abs=1e-10), (symbol, seq, x)
    assert checked == 119 * len(SIZES) * 2
    # The rest are orders the thin altcoin books cannot fill within ±10 % (flagged, not guessed).
    assert filled == 538
