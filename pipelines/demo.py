"""``perpflow demo``: the whole product on one machine, with nothing but Python installed.

Default: a 2025-10-10-style leverage cascade on three venues at once. The embedded broker, the
exchange simulator (``perpflow simulate``, speaking Binance USD-M, OKX and Bybit on one market) and
one live ingest service per venue (``perpflow ingest`` pointed at it) run as real processes; while
the simulated market streams, the loader runs as Dagster micro-batches; then the daily analytics
are materialized, the read replica published, the cascade summarized (price path, depth before and
during, liquidations by side, open interest) and the venues compared. A process of its own
publishes the sampled calm day before the cascade (``pipelines/demo_history.py``) while it streams,
so the trailing 24 h baselines are warm; the summary says how early each signal was.

``--recording`` replays recorded traffic instead (the real Binance capture in ../shared/data).
Everything the demo started is stopped again, also on Ctrl-C or SIGTERM. All runs land on the
local Dagster instance, so ``make ui`` shows them afterwards.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
import warnings
from pathlib import Path

from rich.console import Console
from rich.table import Table

from ingest import records
from pipelines import demo_quant
from pipelines.broker import EmbeddedBroker, free_port, port_in_use
from ingest.gc_policy import use_streaming_gc
from ingest.kafka import BrokerUnavailable, RecordProducer, ensure_topics, wait_for_metadata
from ingest.simulator.config import parse_time_ms
from ingest.simulator.dialects import NATIVE_VENUE, url_prefix
from pipelines.demo_history import HistoryFailed, start_history, warm_summary
from pipelines.replay import replay
from pipelines.report import ReportError
from warehouse.settings import Settings

REPO = Path(__file__).resolve().parents[1]
DEFAULT_RECORDING = REPO.parent / "shared" / "data" / "cryptofeed-captures"

# The demo window: 15 calm minutes (the day of history before them holds the baselines), the trigger
# at 20:50 UTC (as on 2025-10-10), the crash, the squeeze, the end of the cascade (21:24) and the
# recovery's first 11 minutes: the cascade scenario's shortest window. Every simulated minute costs
# CPU in the simulator, four ingest services, the broker and the loader, and on 2 cores the live part
# is bound by that, not by the 30x pace (an hour at 30x would take 2 minutes).
SIM_START = "2025-10-10T20:35:00Z"
SIM_HOURS = 1.0
SIM_SEED = 7
# The calm day before it (pipelines/demo_history.py), so the trailing 24 h baselines are warm.
HISTORY_HOURS = 24.0
LOAD_EVERY_S = 30
# The venues the demo ingests, each with its spelling of the simulated markets.
DEMO_VENUES = {"binance-usdm": "BTCUSDT,ETHUSDT,SOLUSDT", "okx-swap": "BTC-USDT-SWAP,ETH-USDT-SWAP,SOL-USDT-SWAP",
               "bybit-linear": "BTCUSDT,ETHUSDT,SOLUSDT", "hyperliquid": "BTC,ETH,SOL"}


def default_recordings() -> list[Path]:
    return sorted(DEFAULT_RECORDING.glob("BINANCE_FUTURES.*"))


def _raise_interrupt(signum, frame):
    raise KeyboardInterrupt


def run_demo(settings: Settings, recordings: list[Path], *, keep_broker: bool, console: Console,
             speed: float = 30.0) -> int:
    previous = signal.signal(signal.SIGTERM, _raise_interrupt)
    broker, children, history = None, [], None
    started = time.perf_counter()
    phases: dict[str, float] = {}
    try:
        settings.home.mkdir(parents=True, exist_ok=True)
        stale = [settings.warehouse_path, settings.replica_path, Path(f"{settings.warehouse_path}.wal")]
        for venue in DEMO_VENUES:     # a new market: new trade sequences
            stale += [settings.run_dir / f"ingest-{venue}.json", settings.run_dir / f"ingest-{venue}.state.json"]
        for path in stale:
            path.unlink(missing_ok=True)   # the demo starts from an empty warehouse
        if settings.uses_embedded_broker:
            broker = EmbeddedBroker(port=settings.broker_port, log_path=settings.run_dir / "demo-broker.log")
            console.print(f"[bold]1/5[/] starting the embedded Kafka broker (Tansu) on {broker.bootstrap}")
            broker.start()
        else:
            console.print(f"[bold]1/5[/] using Kafka at {settings.bootstrap}")
            wait_for_metadata(settings.bootstrap)
        ensure_topics(settings.bootstrap, settings.partitions)
        pipeline = _Pipeline(settings, console)
        use_streaming_gc()      # after Dagster's imports, so that they are frozen too
        if recordings:
            report = _replay_recordings(settings, recordings, console)
            pipeline.load()
            truth = None
        else:
            history = start_history(settings, console, parse_time_ms(SIM_START), HISTORY_HOURS, SIM_SEED + 1,
                                    DEMO_VENUES[NATIVE_VENUE].split(","))
            live = time.perf_counter()
            truth = _stream_cascade(settings, console, speed, pipeline, children)
            phases["live"] = time.perf_counter() - live
            phases["waiting for the history"] = history.finish()
            phases["history (in parallel)"] = history.generated_s
            loading = time.perf_counter()
            console.print(f"    history loaded: +{pipeline.load():,} rows")
            phases["final load"] = time.perf_counter() - loading
            report = None
        analytics = time.perf_counter()
        days = pipeline.daily_assets()
        phases["daily analytics"] = time.perf_counter() - analytics
        from warehouse.store import Warehouse

        quant_started = time.perf_counter()
        quant = demo_quant.run_quant(pipeline.dg, pipeline.instance, pipeline.resources, pipeline.quiet,
                                     Warehouse.from_settings(settings), console)
        phases["quant half"] = time.perf_counter() - quant_started
        console.print("[bold]5/5[/] summary")
        Warehouse.from_settings(settings).publish_replica()
        _summary(settings, report, truth, days, console, time.perf_counter() - started)
        console.print("phases: " + ", ".join(f"{name} {seconds:.0f}s" for name, seconds in phases.items()),
                      highlight=False)
        demo_quant.show(settings, quant, console, cascade_source=(
            f"replayed recordings ({len(recordings)} files)" if recordings else
            f"simulated by perpflow simulate (cascade scenario, seed {SIM_SEED}, {SIM_HOURS} h from {SIM_START}, "
            f"after {HISTORY_HOURS:g} h of simulated calm history), a model of 2025-10-10, not a replay"))
        return 0
    except KeyboardInterrupt:
        console.print("[yellow]interrupted; stopping what the demo started[/]")
        return 130
    except (BrokerUnavailable, DemoError, HistoryFailed, demo_quant.QuantDemoError, ReportError) as exc:
        console.print(f"[red]error:[/] {exc}")
        return 1
    finally:
        signal.signal(signal.SIGTERM, previous)
        if history is not None:
            history.stop()
        for child in children:
            if child.poll() is None:
                child.send_signal(signal.SIGTERM)
                try:
                    child.wait(30)
                except subprocess.TimeoutExpired:
                    child.kill()
        if broker is not None and not keep_broker:
            broker.stop()


class DemoError(RuntimeError):
    pass


def _replay_recordings(settings: Settings, recordings: list[Path], console: Console):
    console.print(f"[bold]2/5[/] replaying {len(recordings)} recording files into Kafka")
    producer = RecordProducer(settings.bootstrap)
    try:
        report = replay("binance-usdm", recordings, producer.send)
        producer.flush()
    finally:
        producer.close()
    return report


def _child_env(settings: Settings) -> dict:
    return {**os.environ, "PERPFLOW_HOME": str(settings.home), "PERPFLOW_KAFKA_BOOTSTRAP": settings.bootstrap,
            "PYTHONUNBUFFERED": "1"}


def _stream_cascade(settings: Settings, console: Console, speed: float, pipeline, children: list) -> Path:
    """Simulator -> live ingest service -> Kafka, with loader micro-batches while it streams."""
    port = free_port()
    truth = settings.home / "demo-truth.jsonl"
    logs = settings.run_dir
    logs.mkdir(parents=True, exist_ok=True)
    cli = [sys.executable, "-m", "pipelines.cli"]
    console.print(f"[bold]2/5[/] simulating {SIM_HOURS} h of one market from {SIM_START} in the wire formats of "
                  f"{', '.join(DEMO_VENUES)} (cascade scenario, seed {SIM_SEED}) at {speed:g}x on 127.0.0.1:{port}")
    with open(logs / "demo-simulator.log", "wb") as out:
        children.append(subprocess.Popen(
            [*cli, "simulate", "--scenario", "cascade", "--seed", str(SIM_SEED), "--speed", str(speed),
             "--hours", str(SIM_HOURS), "--start", SIM_START, "--port", str(port), "--truth", str(truth),
             "--venues", ",".join(DEMO_VENUES)],
            stdout=out, stderr=subprocess.STDOUT, env=_child_env(settings)))
    simulator = children[-1]
    deadline = time.monotonic() + 60
    while not port_in_use(port):
        if simulator.poll() is not None or time.monotonic() > deadline:
            raise DemoError(f"the simulator did not start; see {logs / 'demo-simulator.log'}")
        time.sleep(0.2)
    console.print(f"[bold]3/5[/] one live ingest service per venue (perpflow ingest) -> Kafka; Dagster loads "
                  f"micro-batches every {LOAD_EVERY_S}s")
    ingests = {}
    for venue, symbols in DEMO_VENUES.items():
        with open(logs / f"demo-ingest-{venue}.log", "wb") as out:
            children.append(subprocess.Popen(
                [*cli, "ingest", "--exchange", venue, "--symbols", symbols,
                 "--ws-url", f"ws://127.0.0.1:{port}{url_prefix(venue)}",
                 "--rest-url", f"http://127.0.0.1:{port}{url_prefix(venue)}", "--oi-interval", "1"],
                stdout=out, stderr=subprocess.STDOUT, env=_child_env(settings)))
        ingests[venue] = children[-1]
    next_load = time.monotonic() + LOAD_EVERY_S
    while simulator.poll() is None:
        for venue, ingest in ingests.items():
            if ingest.poll() is not None:
                raise DemoError(f"the {venue} ingest service stopped; see {logs / f'demo-ingest-{venue}.log'}")
        time.sleep(1)
        if time.monotonic() >= next_load:
            rows = pipeline.load()
            parts = []
            for venue in ingests:
                status_file = settings.run_dir / f"ingest-{venue}.json"
                st = json.loads(status_file.read_text()) if status_file.exists() else {}
                rec = st.get("records", {})
                parts.append(f"{venue} {st.get('messages_per_s', 0):,.0f} msg/s {rec.get('trade', 0):,} trades "
                             f"{rec.get('liquidation', 0):,} liq {st.get('resyncs', 0)} resyncs")
            console.print(f"    {'; '.join(parts)}; warehouse +{rows:,} rows", highlight=False)
            next_load = time.monotonic() + LOAD_EVERY_S
    if simulator.returncode != 0:
        raise DemoError(f"the simulator failed; see {logs / 'demo-simulator.log'}")
    for ingest in ingests.values():
        ingest.send_signal(signal.SIGTERM)      # flushes Kafka before it exits
    exits = {venue: ingest.wait(60) for venue, ingest in ingests.items()}
    console.print(f"    simulation over; ingest stopped (exit {', '.join(f'{v} {c}' for v, c in exits.items())}); "
                  f"final load +{pipeline.load():,} rows")
    return truth


class _Pipeline:
    """Dagster materializations on the local instance (visible in ``make ui`` afterwards)."""

    def __init__(self, settings: Settings, console: Console):
        from dagster_project.instance import prepare_dagster_home

        os.environ["DAGSTER_HOME"] = str(prepare_dagster_home(settings))
        import dagster as dg

        warnings.filterwarnings("ignore", category=dg.BetaWarning)
        from dagster_project.resources import default_resources

        self.dg, self.settings, self.console = dg, settings, console
        self.resources = default_resources()
        self.instance = dg.DagsterInstance.get()
        self.quiet = {"loggers": {"console": {"config": {"log_level": "WARNING"}}}}   # full logs stay in the instance

    def load(self) -> int:
        from dagster_project.assets.raw import raw_tables

        result = self.dg.materialize([raw_tables], resources=self.resources, instance=self.instance,
                                     tags={"perpflow/demo": "true"}, run_config=self.quiet)
        if not result.success:
            raise DemoError("a loader run failed; see `make ui` for its logs")
        return sum(m.metadata["rows_loaded_this_run"].value for m in
                   (e.event_specific_data.materialization for e in result.get_asset_materialization_events()))

    def daily_assets(self) -> list[str]:
        from dagster_project.assets.microstructure import MICROSTRUCTURE_ASSETS
        from dagster_project.assets.microstructure_liquidation_map import LIQUIDATION_MAP_ASSETS
        from dagster_project.assets.ohlcv import ohlcv_1m
        from dagster_project.assets.raw import raw_tables
        from warehouse.store import Warehouse

        with Warehouse.from_settings(self.settings).writer() as con:
            # Trades, or books alone (the warm-up history has no trades).
            days = [str(d) for (d,) in con.execute(
                "SELECT DISTINCT CAST(ts_exchange AS DATE) FROM raw.trades UNION "
                "SELECT DISTINCT CAST(ts_exchange AS DATE) FROM raw.book_snapshots ORDER BY 1").fetchall()]
        daily = [ohlcv_1m, *MICROSTRUCTURE_ASSETS, *LIQUIDATION_MAP_ASSETS]
        self.console.print(f"[bold]4/5[/] Dagster: {len(daily)} daily assets for {', '.join(days)}")
        for day in days:
            started = time.perf_counter()
            result = self.dg.materialize([*raw_tables.to_source_assets(), *daily], selection=daily, partition_key=day,
                                         resources=self.resources, instance=self.instance,
                                         tags={"perpflow/demo": "true"}, run_config=self.quiet)
            if not result.success:
                raise DemoError(f"daily assets for {day} failed; see `make ui` for the run logs")
            failed = [c.check_name for c in result.get_asset_check_evaluations() if not c.passed]
            self.console.print(f"    {day}: {len(daily)} assets in {time.perf_counter() - started:.1f}s; "
                               f"checks {'all passed' if not failed else 'FAILED: ' + ', '.join(failed)}")
        return days


def _summary(settings: Settings, report, truth: Path | None, days: list[str], console: Console,
             seconds: float) -> None:
    from warehouse.store import Warehouse

    with Warehouse.from_settings(settings).reader() as con:
        table = Table(title="warehouse (read replica)")
        for column in ("table", "rows", "from", "to"):
            table.add_column(column, justify="right" if column == "rows" else "left")
        for cls in records.RECORD_TYPES:
            time_col = "ts_recv" if cls.table in ("feed_events", "dead_letters") else "ts_exchange"
            rows, first, last = con.execute(
                f"SELECT count(*), min({time_col}), max({time_col}) FROM raw.{cls.table}").fetchone()
            table.add_row(f"raw.{cls.table}", f"{rows:,}", str(first or ""), str(last or ""))
        for name in con.execute("SELECT table_name FROM information_schema.tables WHERE table_schema = 'analytics' "
                                "ORDER BY 1").fetchall():
            rows = con.execute(f"SELECT count(*) FROM analytics.{name[0]}").fetchone()[0]
            if rows:
                table.add_row(f"analytics.{name[0]}", f"{rows:,}", "", "")
        console.print(table)
        if truth is not None:
            from ingest.simulator import load_truth

            true = load_truth(truth)
            _cascade_summary(con, true, console)
            _venue_summary(con, true, console)
            _cross_venue_summary(con, console, true)
            warm_summary(con, true, console)
        else:
            _bars_summary(con, console)
    if report is not None:
        console.print(f"replay: {report.stats.messages:,} messages, {report.stats.mapped:,} mapped, "
                      f"{sum(report.stats.skipped.values()):,} skipped with a reason, "
                      f"{sum(report.stats.dead_letters.values())} dead letters; {report.gaps} gaps, "
                      f"{report.crossed} crossed books")
    console.print(f"days: {', '.join(days)}; demo wall time {seconds:.0f}s")
    console.print("\nQuery it (read-only replica, never blocks the pipeline):")
    console.print('  .venv/bin/perpflow sql "select minute, symbol, depth_usd_2_mean, spread_bps_mean '
                  'from analytics.book_depth order by minute limit 20"', highlight=False)
    console.print('  .venv/bin/perpflow sql "select * from analytics.liquidation_cascades"', highlight=False)
    console.print("Open the Dagster UI (assets, runs, row counts, charts):\n  make ui", highlight=False)


def _bars_summary(con, console: Console) -> None:
    bars = con.execute("""SELECT symbol, count(*) AS minutes, sum(trade_count) AS trades,
                                 round(sum(quote_volume)) AS quote_volume, first(open ORDER BY minute) AS open,
                                 last(close ORDER BY minute) AS close
                          FROM analytics.ohlcv_1m GROUP BY symbol ORDER BY symbol""").fetchall()
    per_symbol = Table(title="ohlcv_1m by symbol")
    for column in ("symbol", "minutes", "trades", "quote volume", "open", "close"):
        per_symbol.add_column(column)
    for row in bars:
        per_symbol.add_row(*(str(v) for v in row))
    console.print(per_symbol)


def _cascade_summary(con, truth: dict, console: Console) -> None:
    trigger = truth["meta"][0]["trigger_ms"]
    window = {w["symbol"]: (w["start_ms"], w["end_ms"]) for w in truth["cascade_window"]}
    table = Table(title=f"the cascade on binance-usdm (trigger {_utc(trigger)})")
    for column in ("symbol", "open", "low", "drawdown", "close", "2% depth before", "2% depth worst",
                   "depth change", "OI change", "liquidated long (published)", "short", "long share"):
        table.add_column(column, justify="right")
    for symbol in sorted(window):
        norm = f"{symbol[:-4]}-USDT-PERP"
        start_ms, end_ms = window[symbol]
        price = con.execute("""SELECT first(open ORDER BY minute), min(low), last(close ORDER BY minute)
                               FROM analytics.ohlcv_1m WHERE symbol = ? AND exchange = 'binance-usdm'""",
                            [norm]).fetchone()
        depth = con.execute("""SELECT avg(depth_usd_2_mean) FILTER (WHERE minute >= epoch_ms(?) - INTERVAL 30 MINUTE
                                                                  AND minute < epoch_ms(?)),
                                      min(depth_usd_2_min) FILTER (WHERE minute >= epoch_ms(?) AND minute < epoch_ms(?))
                               FROM analytics.book_depth WHERE symbol = ? AND exchange = 'binance-usdm'""",
                            [trigger, trigger, start_ms, end_ms, norm]).fetchone()
        oi = con.execute("""SELECT arg_max(open_interest, ts_exchange) FILTER (WHERE ts_exchange < epoch_ms(?)),
                                   min(open_interest) FILTER (WHERE ts_exchange >= epoch_ms(?))
                            FROM raw.open_interest WHERE symbol = ? AND exchange = 'binance-usdm'""",
                         [trigger, trigger, norm]).fetchone()
        long_usd, short_usd = con.execute("""SELECT coalesce(sum(long_usd), 0), coalesce(sum(short_usd), 0)
                                             FROM analytics.liquidations_1m
                                             WHERE symbol = ? AND exchange = 'binance-usdm'""", [norm]).fetchone()
        if price[0] is None:
            continue
        share = long_usd / (long_usd + short_usd) if long_usd + short_usd else float("nan")
        table.add_row(symbol, f"{price[0]:,.2f}", f"{price[1]:,.2f}", f"{price[1] / price[0] - 1:+.1%}",
                      f"{price[2]:,.2f}", _usd(depth[0]), _usd(depth[1]),
                      f"{depth[1] / depth[0] - 1:+.0%}" if depth[0] and depth[1] is not None else "",
                      f"{oi[1] / oi[0] - 1:+.0%}" if oi[0] and oi[1] is not None else "",
                      _usd(long_usd), _usd(short_usd), f"{share:.0%}")
    console.print(table)
    true_long = sum(r["notional"] for r in truth.get("liquidation", []) if r["position"] == "long")
    true_all = sum(r["notional"] for r in truth.get("liquidation", []))
    published = con.execute("SELECT coalesce(sum(long_usd + short_usd), 0) FROM analytics.liquidations_1m "
                            "WHERE exchange = 'binance-usdm'").fetchone()[0]
    console.print(f"ground truth: {len(truth.get('liquidation', [])):,} liquidations worth {_usd(true_all)} "
                  f"({true_long / true_all:.0%} longs); the sampled feed (1 per symbol per second, as Binance) "
                  f"showed {_usd(published)} = {published / true_all:.0%}: published totals are lower bounds"
                  if true_all else "no liquidations in the ground truth")
    cascades = con.execute("""SELECT asset, side, cascade_start, cascade_end, n_orders, usd, price_move_bps,
                                     depth_ratio_2pct, oi_change_pct, hawkes_n
                              FROM analytics.liquidation_cascades ORDER BY cascade_start""").fetchall()
    found = Table(title="analytics.liquidation_cascades (detected from the published feed)")
    for column in ("asset", "side", "start", "end", "orders", "usd", "move bps", "depth ratio 2%", "OI chg",
                   "Hawkes n"):
        found.add_column(column)
    for asset, side, start, end, n, usd, move, depth_ratio, oi_change, hawkes in cascades:
        found.add_row(asset, side, f"{start:%H:%M:%S}", f"{end:%H:%M:%S}", str(n), _usd(usd), f"{move:,.0f}",
                      f"{depth_ratio:.2f}" if depth_ratio is not None else "",
                      f"{oi_change:+.1f}%" if oi_change is not None else "",
                      f"{hawkes:.2f}" if hawkes is not None else "")
    console.print(found)
    stress = con.execute("""SELECT asset, max(stress_index), arg_max(minute, stress_index) FROM analytics.market_stress
                            GROUP BY asset ORDER BY asset""").fetchall()
    peaks = [f"{asset} {peak:.0f} at {at:%H:%M}" for asset, peak, at in stress if peak is not None]
    console.print("market stress peak: " + ", ".join(peaks) if peaks else
                  "market stress: not computed here; its baselines (trailing 24 h depth and funding) need hours "
                  "of history before the cascade (see `make bench` detection figures)")


def _cross_venue_summary(con, console: Console, truth: dict | None = None) -> None:
    """Who moved first in each cross-venue episode (and, on the simulator, how far each venue's
    prices truly trail), and how the liquidation map scored."""
    episodes = con.execute(
        "SELECT asset, side, cascade_start, any_value(first_mover), any_value(lead_s), "
        "string_agg(exchange || ' ' || round(100 * venue_share, 1) || ' %', ', ' ORDER BY venue_share DESC), "
        "string_agg(exchange || ' +' || round(crossing_after_first_s)::INT || ' s', ', ' "
        "           ORDER BY crossing_after_first_s, exchange) FILTER (WHERE crossing_after_first_s IS NOT NULL), "
        "any_value(stress_max) FROM analytics.cross_venue_cascades GROUP BY ALL ORDER BY cascade_start").fetchall()
    for asset, side, start, first, lead, shares, crossings, stress in episodes:
        if first is None:
            moved = "no venue's price crossed the move threshold"
        elif lead is not None and lead >= 0.5:
            moved = f"{first} moved first ({lead:.0f} s ahead; crossings {crossings})"
        else:      # alone, or tied with the next venue to the second
            moved = f"threshold crossings {crossings}"
        stress_text = f"stress max {stress:.0f}" if stress is not None else "no stress index"
        console.print(f"  cross-venue {asset} {side} cascade at {start:%H:%M:%S}: {moved}; shares {shares}; "
                      f"{stress_text}")
    markets = (truth or {}).get("meta", [{}])[0].get("venue_markets", {})
    lagged = sorted((params.get("lag_ms", 0), venue) for venue, params in markets.items())
    if episodes and any(lag for lag, _ in lagged):
        console.print("  the simulator's truth: " + ", ".join(
            f"{venue} {lag / 1000:g} s" for lag, venue in lagged if lag) + " behind the other venues' prices")
    for asset, venue_set, score, low, high, ranked, sampled in con.execute(
            "SELECT asset, venue_set, score, ci_low, ci_high, ranked_share, is_sampled_feed "
            "FROM analytics.liquidation_level_scores WHERE score IS NOT NULL ORDER BY day, asset, venue_set").fetchall():
        label = " (on a sampled liquidation feed)" if sampled else ""
        venues = "all venues" if venue_set == "all" else "complete liquidation feeds only"
        ranked_text = (f"; the map ranked {ranked:.0%} of its top quartile, the tie rule (lowest prices) the rest"
                       if ranked is not None and ranked < 0.5 else "")
        console.print(f"  liquidation map {asset}, {venues}: top-quartile share {score:.2f} "
                      f"(95 % CI {low:.2f}-{high:.2f}, chance 0.25){label}{ranked_text}")


def _venue_summary(con, truth: dict, console: Console) -> None:
    """The same market seen through each venue's feed: what each publishes, in base units and USD,
    and how much of the venue's true liquidated notional its public feed revealed."""
    rows = con.execute("""
        WITH bars AS (SELECT exchange, sum(trade_count) AS trades, sum(quote_volume) AS volume
                      FROM analytics.ohlcv_1m GROUP BY exchange),
             depth AS (SELECT exchange, avg(depth_usd_2_mean) AS depth2, avg(spread_bps_mean) AS spread
                       FROM analytics.book_depth GROUP BY exchange),
             oi AS (SELECT exchange, sum(open_interest_usd) AS oi_usd FROM analytics.open_interest o
                    WHERE grain = '5m' AND exchange <> 'all' AND bucket_start = (
                        SELECT max(bucket_start) FROM analytics.open_interest
                        WHERE grain = '5m' AND exchange = o.exchange) GROUP BY exchange),
             liq AS (SELECT exchange, sum(long_usd + short_usd) AS liq_usd, sum(n_long + n_short) AS orders
                     FROM analytics.liquidations_1m GROUP BY exchange),
             gaps AS (SELECT exchange, count(*) FILTER (WHERE kind = 'gap') AS gaps,
                             count(*) FILTER (WHERE kind = 'resync') AS resyncs FROM raw.feed_events GROUP BY exchange),
             -- mark against the venue's own index (OKX pushes them on separate channels: as of)
             premium AS (SELECT m.exchange, avg((m.mark_price / i.index_price - 1) * 1e4) AS premium_bps
                         FROM (SELECT exchange, symbol, ts_exchange, mark_price FROM raw.funding
                               WHERE mark_price IS NOT NULL) m
                         ASOF JOIN (SELECT exchange, symbol, ts_exchange, index_price FROM raw.funding
                                    WHERE index_price IS NOT NULL) i
                           ON m.exchange = i.exchange AND m.symbol = i.symbol AND m.ts_exchange >= i.ts_exchange
                         GROUP BY m.exchange)
        SELECT exchange, trades, volume, depth2, spread, premium_bps, oi_usd, liq_usd, orders, gaps, resyncs
        FROM bars FULL JOIN depth USING (exchange) FULL JOIN oi USING (exchange) FULL JOIN liq USING (exchange)
             LEFT JOIN gaps USING (exchange) LEFT JOIN premium USING (exchange)
        ORDER BY exchange""").fetchall()
    table = Table(title="the venues compared (one simulated price path; each venue's own book, basis, "
                        "wire format and units)")
    for column in ("venue", "trades", "volume", "2% depth (mean)", "spread bps", "premium bps", "open interest",
                   "liquidations", "of true", "orders", "book gaps", "resyncs"):
        table.add_column(column, justify="left" if column == "venue" else "right")
    markets = truth["meta"][0].get("venue_markets", {})
    true_usd = sum(r["notional"] for r in truth.get("liquidation", []))
    for venue, trades, volume, depth2, spread, premium, oi_usd, liq_usd, orders, gaps, resyncs in rows:
        # Each venue's market holds its share of the positions, so of the liquidations too.
        venue_true = true_usd * markets[venue]["share"] if venue in markets else None
        table.add_row(venue, f"{trades or 0:,}", _usd(volume), _usd(depth2),
                      f"{spread:.2f}" if spread is not None else "", f"{premium:+.2f}" if premium is not None else "",
                      _usd(oi_usd), _usd(liq_usd), f"{(liq_usd or 0) / venue_true:.0%}" if venue_true else "",
                      f"{orders or 0:,}", str(gaps or 0), str(resyncs or 0))
    console.print(table)
    console.print("Books: Binance depth is the full synced book, OKX's a 400-level view, Bybit's 50 levels "
                  "(its 2% band can be wider than the visible book: analytics.book_depth flags it), Hyperliquid's a "
                  "whole 20-level book every 5 s (too shallow for depth bands). OKX sizes are contracts, converted "
                  "with raw.instrument_units.")
    from ingest.venues import REGISTRY
    console.print("Liquidation feeds: " + "; ".join(
        f"{venue} {REGISTRY[venue].COVERAGE['liquidations'][0].value}" for venue in DEMO_VENUES)
        + " (perpflow venues says why; meta.venue_coverage has it in SQL).")


def _usd(value) -> str:
    if value is None:
        return ""
    for unit, size in (("B", 1e9), ("M", 1e6), ("k", 1e3)):
        if abs(value) >= size:
            return f"${value / size:,.1f}{unit}"
    return f"${value:,.0f}"


def _utc(ms: int) -> str:
    return time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime(ms / 1000))
