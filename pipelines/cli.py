"""The ``perpflow`` command line."""

from __future__ import annotations

import datetime
import logging
import os
import re
import sys
import time
from pathlib import Path

import click
from rich.console import Console
from rich.table import Table

from ingest.venues import venue_names
from warehouse.settings import ConfigError, load_settings
from warehouse.loader import DEFAULT_BATCH_ROWS

console = Console(width=None if sys.stdout.isatty() else 160)


def _settings():
    try:
        settings = load_settings()
    except ConfigError as exc:
        raise click.UsageError(str(exc)) from None
    for warning in settings.warnings:
        click.echo(f"warning: {warning}", err=True)
    return settings


def _fail(message: str) -> None:
    console.print(f"[bold red]error:[/] {message}")
    sys.exit(1)


def _bootstrap(settings) -> str:
    from ingest.kafka import BrokerUnavailable, wait_for_metadata

    try:
        wait_for_metadata(settings.bootstrap, timeout=5)
    except BrokerUnavailable as exc:
        _fail(str(exc))
    return settings.bootstrap


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.option("-v", "--verbose", is_flag=True, help="Log debug details.")
def main(verbose: bool) -> None:
    """perpflow: perpetual-futures market data -> Kafka -> DuckDB -> Dagster analytics."""
    logging.basicConfig(level=logging.DEBUG if verbose else logging.WARNING,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    if not verbose:
        # kafka-python logs every refused connection while a broker starts; our errors say it once.
        logging.getLogger("kafka").setLevel(logging.CRITICAL)


# --- broker ------------------------------------------------------------------------------------

@main.group()
def broker() -> None:
    """The embedded development broker (Tansu, memory-only)."""


@broker.command("start")
@click.option("--port", type=click.IntRange(1, 65535), help="Port on 127.0.0.1 (default: PERPFLOW_BROKER_PORT or 19092).")
def broker_start(port: int | None) -> None:
    """Start the broker in the background and wait until it answers."""
    from pipelines.broker import start_detached
    from ingest.kafka import BrokerUnavailable, ensure_topics

    settings = _settings()
    if not settings.uses_embedded_broker:
        _fail(f"PERPFLOW_KAFKA_BOOTSTRAP={settings.kafka_bootstrap} points at an external Kafka; "
              "unset it to use the embedded broker.")
    try:
        state = start_detached(settings.run_dir, port or settings.broker_port)
        ensure_topics(state["bootstrap"], settings.partitions)
    except BrokerUnavailable as exc:
        _fail(str(exc))
    verb = "already running" if state.get("already_running") else "started"
    console.print(f"broker {verb}: pid {state['pid']} on {state['bootstrap']} (memory-only; log {state['log']})")


@broker.command("stop")
def broker_stop() -> None:
    """Stop the background broker (its data is discarded)."""
    from pipelines.broker import stop_detached

    state = stop_detached(_settings().run_dir)
    console.print(f"broker stopped (pid {state['pid']})" if state else "broker was not running")


@broker.command("status")
def broker_status() -> None:
    """Say whether the broker runs and answers metadata requests."""
    from pipelines.broker import read_state
    from ingest.kafka import BrokerUnavailable, wait_for_metadata

    settings = _settings()
    state = read_state(settings.run_dir) if settings.uses_embedded_broker else None
    target = state["bootstrap"] if state else settings.bootstrap
    try:
        wait_for_metadata(target, timeout=2)
        answering = True
    except BrokerUnavailable:
        answering = False
    who = f"embedded broker pid {state['pid']}" if state else ("external Kafka" if not settings.uses_embedded_broker
                                                               else "no embedded broker started by perpflow")
    console.print(f"{who} at {target}: {'answering' if answering else 'NOT answering'}")
    sys.exit(0 if answering else 3)


# --- data in -----------------------------------------------------------------------------------

def _symbols(ctx, param, value: str | None) -> list[str] | None:
    """Native symbols as the venue spells them (``--exchange`` is eager, so it is known here)."""
    from ingest.venues import REGISTRY

    if value is None:
        return None
    venue = REGISTRY[ctx.params["exchange"]]
    symbols = [s.strip().upper() for s in value.split(",") if s.strip()]
    bad = [s for s in symbols if not re.fullmatch(venue.SYMBOL_PATTERN, s)]
    if not symbols or bad:
        raise click.BadParameter(f"expected comma-separated venue symbols like {venue.SYMBOL_EXAMPLES} "
                                 f"for {venue.exchange}; got {value!r}")
    return symbols


@main.command()
@click.option("--exchange", required=True, type=click.Choice(venue_names()), is_eager=True, help="Venue the recording is from.")
@click.option("--symbols", default=None, callback=_symbols,
              help="Comma-separated native symbols to keep (default: every symbol in the recording).")
@click.argument("paths", nargs=-1, required=True, type=click.Path(exists=True, dir_okay=False, path_type=Path))
def replay(exchange: str, symbols: list[str] | None, paths: tuple[Path, ...]) -> None:
    """Replay recorded venue traffic (cryptofeed captures or JSONL) into Kafka."""
    from ingest.gc_policy import use_streaming_gc
    from ingest.kafka import RecordProducer, ensure_topics
    from pipelines.replay import NothingToReplay, WrongVenue, check_replayable
    from pipelines.replay import replay as run_replay

    try:
        check_replayable(exchange, list(paths))
    except (NothingToReplay, WrongVenue) as exc:
        _fail(str(exc))
    settings = _settings()
    bootstrap = _bootstrap(settings)
    ensure_topics(bootstrap, settings.partitions)
    producer = RecordProducer(bootstrap)
    use_streaming_gc()
    try:
        report = run_replay(exchange, list(paths), producer.send, symbols)
        producer.flush()
    finally:
        producer.close()
    print_replay_report(report)
    if not report.all_accounted:
        _fail("some messages were neither mapped, skipped nor dead-lettered")


def print_replay_report(report) -> None:
    stats = report.stats
    table = Table(title=f"replay: {report.exchange}", show_header=True)
    table.add_column("what")
    table.add_column("count", justify="right")
    table.add_row("messages read", str(stats.messages))
    table.add_row("  mapped", str(stats.mapped))
    for reason, n in sorted(stats.skipped.items()):
        table.add_row(f"  skipped: {reason}", str(n))
    for reason, n in sorted(stats.dead_letters.items()):
        table.add_row(f"  dead letter: {reason}", f"[red]{n}[/]")
    for record_type, n in sorted(stats.records.items()):
        table.add_row(f"records {record_type}", str(n))
        for (kind, symbol), m in sorted(report.by_symbol.items()):
            if kind == record_type and symbol != "*":
                table.add_row(f"  {symbol}", str(m))
    table.add_row("book deltas applied", str(report.book["applied"]))
    table.add_row("book deltas dropped (older than snapshot)", str(report.book["dropped_stale"]))
    table.add_row("book deltas never bridged by a snapshot", str(report.pending_deltas))
    table.add_row("gaps (resync needed)", str(report.gaps))
    table.add_row("crossed books", str(report.crossed))
    for reason, n in report.meta_lines.items():
        table.add_row(f"not data: {reason}", str(n))
    console.print(table)
    status = "every message accounted for" if report.all_accounted else "[red]messages unaccounted for[/]"
    console.print(f"{status}; {report.gaps} gaps, {report.crossed} crossed books")


@main.command()
@click.option("--batch-rows", type=click.IntRange(1000, 10_000_000), default=DEFAULT_BATCH_ROWS, show_default=True,
              help="Rows per DuckDB transaction.")
def load(batch_rows: int) -> None:
    """One loader pass, Kafka -> DuckDB, exactly once (same code and lock as Dagster)."""
    import duckdb
    from kafka.errors import KafkaError

    from ingest.gc_policy import use_streaming_gc
    from warehouse.loader import load_once
    from warehouse.store import Warehouse

    settings = _settings()
    bootstrap = _bootstrap(settings)
    warehouse = Warehouse.from_settings(settings)
    use_streaming_gc()

    def progress(report):
        console.print(f"  committed transaction {report.transactions}: {report.total:,} rows so far", highlight=False)

    try:
        report = load_once(warehouse, bootstrap, batch_rows=batch_rows, progress=progress)
    except (duckdb.Error, KafkaError, OSError, RuntimeError) as exc:
        notes = "".join(f"; {note}" for note in getattr(exc, "__notes__", ()))
        _fail(f"the load stopped: {exc.__class__.__name__}: {exc}{notes}. Transactions committed before it are "
              "kept; the next `perpflow load` reads the rest again.")
    for reset in report.broker_resets:
        console.print(f"[bold red]BROKER DATA LOSS[/] {reset['topic']}[{reset['partition']}]: {reset['reason']}; "
                      "reloaded from the beginning and recorded a broker_reset feed event")
    for loss in report.retention_losses:
        console.print(f"[bold red]RECORDS LOST TO KAFKA RETENTION[/] {loss['topic']}[{loss['partition']}]: "
                      f"{loss['lost']:,} records from offset {loss['first_lost']} were deleted before they were "
                      "loaded; recorded a retention_loss feed event and continued from the partition's beginning")
    rate = report.total / report.seconds if report.seconds else 0
    console.print(f"loaded {report.total:,} rows in {report.transactions} transactions, {report.seconds:.2f}s "
                  f"({rate:,.0f} rows/s): " + ", ".join(f"{t}={n}" for t, n in sorted(report.rows.items())))
    if report.rejected:
        console.print(f"[yellow]{report.rejected} records could not be loaded; see raw.dead_letters[/]")
    if report.mirror_error:
        console.print(f"[yellow]warning: offsets not mirrored to the Kafka group ({report.mirror_error}); the load "
                      "is committed, only Kafka-side lag monitoring is stale until the next pass[/]")
    try:
        warehouse.publish_replica()
    except OSError as exc:
        _fail(f"the load is committed, but publishing the read replica {warehouse.replica_path} failed ({exc}); "
              "the previous replica is unchanged")


def _silence_limits(ctx, param, values: tuple[str, ...]) -> dict[str, float | None]:
    limits = {}
    for item in values:
        kind, sep, seconds = item.partition("=")
        try:
            limits[kind] = None if seconds == "off" else float(seconds)
        except ValueError:
            sep = ""
        if not sep or not kind:
            raise click.BadParameter(f"expected STREAM_KIND=SECONDS or STREAM_KIND=off (e.g. markPrice@1s=10), got {item!r}")
    return limits


def _shard(ctx, param, value: str | None):
    from ingest.sharding import parse_shard

    if value is None:
        return None
    try:
        return parse_shard(value)
    except ValueError as exc:
        raise click.BadParameter(str(exc)) from None


@main.command()
@click.option("--exchange", required=True, type=click.Choice(venue_names()), is_eager=True, help="Venue to ingest.")
@click.option("--symbols", default=None, callback=_symbols,
              help="Comma-separated native symbols (default: the venue's examples, e.g. BTCUSDT,ETHUSDT,SOLUSDT).")
@click.option("--ws-url", help="Websocket base URL (default: the venue's). Point it at `perpflow simulate` offline.")
@click.option("--rest-url", help="REST base URL (default: the venue's).")
@click.option("--oi-interval", type=click.FloatRange(1, 3600), default=5.0, show_default=True,
              help="Seconds between open-interest polls per symbol.")
@click.option("--silence-limit", multiple=True, callback=_silence_limits,
              help="Override a stream's liveness limit, e.g. markPrice@1s=10 (repeatable).")
@click.option("--max-connection-age", type=click.FloatRange(10, 86400), help="Rotate connections after N seconds.")
@click.option("--duration", type=click.FloatRange(1), help="Stop after N seconds (default: run until SIGTERM/Ctrl-C).")
@click.option("--redundancy", type=click.IntRange(1, 8), default=1, show_default=True,
              help="Connections per stream, de-duplicated: with 2+, one dropped connection loses nothing "
                   "(not even liquidations, which cannot be backfilled).")
@click.option("--max-frame-mib", type=click.FloatRange(0.01, 200), default=8.0, show_default=True,
              help="Frames larger than this are dead-lettered (the connection stays up).")
@click.option("--pack-ms", type=click.FloatRange(0, 1000), default=20.0, show_default=True,
              help="Records bound for one Kafka partition wait up to this many milliseconds to be "
                   "sent together as one message (one record per line); 0 sends each record as its own message.")
@click.option("--shard", callback=_shard, metavar="I/N",
              help="Ingest only shard I (0-based) of N: the symbols whose CRC-32 mod N is I, with status, state "
                   "and spill files of its own and 1/N of the venue's REST budget.")
@click.option("--shards", type=click.IntRange(2, 64),
              help="Run N shard processes of this venue (--shard 0/N .. N-1/N) under a supervisor that restarts "
                   "any that dies and stops them all on Ctrl-C or SIGTERM.")
@click.pass_context
def ingest(ctx, exchange, symbols, ws_url, rest_url, oi_interval, silence_limit, max_connection_age, duration,
           redundancy, max_frame_mib, pack_ms, shard, shards) -> None:
    """Live ingestion service: venue websockets + REST -> normalized records -> Kafka."""
    from ingest.service import IngestConfig, IngestError, IngestFailed, IngestService, run_service, spill_file
    from ingest.sharding import other_layout_files, split_symbols
    from ingest.spill import SinkFailure, SpillingSink
    from ingest.gc_policy import use_streaming_gc
    from ingest.venues import venue as venue_for

    settings = _settings()
    venue = venue_for(exchange)
    symbols = symbols or venue.SYMBOL_EXAMPLES.split(",")
    if shard and shards:
        raise click.UsageError("--shard I/N runs one shard, --shards N supervises all of them: give one")
    split = shards or (shard.count if shard else None)      # shards of the venue; None: not sharded
    try:
        by_shard = split_symbols(symbols, split or 1)
    except ValueError as exc:
        raise click.BadParameter(str(exc), param_hint="--shards" if shards else "--shard") from None
    undrained = [p for p in other_layout_files(settings.run_dir, f"spill-{venue.exchange}", ".jsonl", split)
                 if p.stat().st_size]
    if undrained:
        _fail(f"{', '.join(map(str, undrained))} still hold records not yet in Kafka, spilled by {venue.exchange}'s "
              "ingest split another way (without --shard/--shards, or another shard count); run that split until "
              "`perpflow status` shows its spill at 0 B, then start this one")
    if shards:
        sys.exit(_supervise_shards(ctx, settings, exchange, symbols, shards))
    if shard:
        symbols = by_shard[shard.index]
    # The sink creates the topics once Kafka answers; an outage at start is survivable: it spills.
    try:
        sink = SpillingSink(settings.bootstrap, spill_file(settings.run_dir, venue.exchange, shard),
                            max_bytes=settings.spill_max_bytes, partitions=settings.partitions, pack_ms=pack_ms)
    except SinkFailure as exc:
        _fail(str(exc))
    if sink.status()["kafka"] == "unreachable":
        console.print(f"[yellow]Kafka at {settings.bootstrap} not reachable; records will spill to disk "
                      "until it is[/]")
    config = IngestConfig(symbols=symbols, ws_url=ws_url or venue.default_ws_url,
                          rest_url=rest_url or venue.default_rest_url, bootstrap=settings.bootstrap,
                          run_dir=settings.run_dir, oi_interval_s=oi_interval, silence_limit_s=silence_limit,
                          max_connection_age_s=max_connection_age, duration_s=duration,
                          connections_per_stream=redundancy, max_frame_bytes=int(max_frame_mib * (1 << 20)),
                          shard=shard, pack_ms=pack_ms)
    use_streaming_gc()
    service = IngestService(venue, config, sink=sink)
    console.print(f"ingesting {exchange}{f' shard {shard}' if shard else ''} {','.join(symbols)} from "
                  f"{config.ws_url or config.rest_url} into Kafka at {settings.bootstrap}")
    try:
        run_service(service, report=lambda st: console.print(f"{_status_line(st)} [{st['state']}]", highlight=False,
                                                             markup=False))
    except IngestError as exc:
        _fail(str(exc))
    except IngestFailed as exc:
        Console(stderr=True).print(f"[bold red]perpflow ingest failed:[/] {exc}", highlight=False)
        console.print("failed; " + _status_line(service.status()), highlight=False)
        sys.exit(exc.exit_code)
    final = service.status()
    console.print("stopped; " + _status_line(final), highlight=False)
    if final["missing_trades"]:
        console.print(f"{final['missing_trades']:,} trade ids still to backfill; saved in {service.state_path}, "
                      "the next start fetches them", highlight=False)


def _supervise_shards(ctx, settings, exchange: str, symbols: list[str], count: int) -> int:
    """Run this command once per shard (``--shard i/N`` for ``--shards N``) under the shard supervisor."""
    from pipelines.shard_supervisor import ShardSupervisor, supervisor_status_path

    base = [sys.executable, "-m", "pipelines.cli", *(["--verbose"] if ctx.parent.params.get("verbose") else []),
            "ingest"]
    for param in ctx.command.params:
        value = symbols if param.name == "symbols" else ctx.params.get(param.name)
        flag = param.opts[0]
        if param.name in ("shard", "shards") or value is None:
            continue
        if param.name == "silence_limit":
            base += [a for kind, limit in value.items() for a in (flag, f"{kind}={'off' if limit is None else limit}")]
        else:
            base += [flag, ",".join(value) if isinstance(value, list) else str(value)]
    supervisor = ShardSupervisor(exchange, [[*base, "--shard", f"{i}/{count}"] for i in range(count)],
                                 supervisor_status_path(settings.run_dir, exchange),
                                 on_event=lambda text: console.print(f"supervisor {exchange}: {text}",
                                                                     highlight=False, markup=False))
    console.print(f"supervising {count} shards of {exchange} ({len(symbols)} symbols); Ctrl-C or SIGTERM stops all")
    return supervisor.run()


def _status_line(st: dict) -> str:
    ev = st.get("events", {})
    records = st.get("records", {})
    shard = f" shard {st['shard']}" if st.get("shard") else ""
    return (f"{st['exchange']}{shard}: {st['messages_per_s']:,.0f} msg/s, {st['messages']:,} messages, "
            f"{records.get('trade', 0):,} trades, {records.get('book_delta', 0):,} book deltas, "
            f"{records.get('liquidation', 0):,} liquidations; reconnects {ev.get('reconnects', 0)}, "
            f"stalls {ev.get('stalls', 0)}, gaps {st['gaps']}, resyncs {st['resyncs']}, "
            f"missing trades {st['missing_trades']:,}, dead letters {st['dead_letters']}, "
            f"spill {st['spill_bytes']:,} B" + (" [SPILLING: Kafka unreachable]" if st.get("spilling") else ""))


def _ago(seconds: float) -> str:
    seconds = max(0, int(seconds))
    if seconds < 120:
        return f"{seconds}s"
    return f"{seconds // 60}m" if seconds < 7200 else f"{seconds // 3600}h{seconds % 3600 // 60:02d}m"


def _ingest_status_lines(st: dict, pid_alive: bool, now: float) -> list[str]:
    """One ingest service's status as lines of at most 80 characters."""
    lines = [f"ingest {st['exchange']}  pid {st['pid']}  {_shown_state(st, pid_alive, now)}"[:80]]
    if st.get("failure"):
        lines += [f"  failure: {chunk}" for chunk in _wrap(st["failure"], 69)]
    return lines + _ingest_detail_lines(st, now)


def _shown_state(st: dict, pid_alive: bool, now: float) -> str:
    state = st.get("state", "?")
    if state not in ("stopped", "failed") and not pid_alive:
        state = "dead: killed without a clean stop"
    elif state not in ("stopped", "failed") and now - st["updated_at"] > 10:
        state = f"not responding: status {_ago(now - st['updated_at'])} old"
    if "exit_code" in st:
        state += f" (exit {st['exit_code']})"
    return state


def _sharded_ingest_status_lines(shards: list[dict], supervisor: dict | None, pid_alive, now: float) -> list[str]:
    """One venue's shards as one view: each shard's state (and restarts), then their counters summed."""
    from ingest.sharding import combine_statuses

    combined = combine_statuses(shards)
    restarts = {s["shard"]: s for s in (supervisor or {}).get("shards", [])}
    head = f"ingest {combined['exchange']}  {len(shards)} shards"
    if supervisor:
        alive = pid_alive(supervisor["pid"]) and supervisor["state"] == "running"
        head += f"  supervisor pid {supervisor['pid']} {'running' if alive else 'not running'}"
    lines = [head[:80]]
    for st in shards:
        line = f"  shard {st['shard']}  pid {st['pid']}  {_shown_state(st, pid_alive(st['pid']), now)}"
        sup = restarts.get(st["shard"])
        if sup and sup["restarts"]:
            line += f"  restarts {sup['restarts']}"
        lines.append(line[:80])
        if st.get("failure"):
            lines += [f"    failure: {chunk}" for chunk in _wrap(st["failure"], 67)]
    return lines + _ingest_detail_lines(combined, now)


def _ingest_detail_lines(st: dict, now: float) -> list[str]:
    """Everything below the state line: Kafka, spill, trade sequences, REST, counters."""
    lines = [f"  updated {_ago(now - st['updated_at'])} ago, up {_ago(st['updated_at'] - st['started_at'])}, "
                 f"{st['messages_per_s']:,.0f} msg/s"]
    sink = st.get("sink", {})
    kafka = st.get("kafka") or ("unreachable" if st.get("spilling") else "reachable")
    lines.append(f"  kafka {kafka}; spill {st.get('spill_bytes', 0):,} B"
                 + (" (SPILLING)" if st.get("spilling") else "")
                 + (f"; dropped {sum(sink['dropped'].values()):,}" if sink.get("dropped") else ""))
    lines.append(f"  {'trades':<20} {'last id':>14} {'missing':>8} {'gaps':>5} {'lost':>5}")
    for symbol, seq in st.get("trades", {}).items():
        last = "-" if seq.get("last_id") is None else str(seq["last_id"])
        lines.append(f"  {symbol[:20]:<20} {last:>14} {seq['missing']:>8,} {seq['gaps']:>5,} {seq['lost']:>5,}")
    ev = st.get("events", {})
    rest = ", ".join(f"{k[5:]}: {v:,}" for k, v in sorted(ev.items()) if k.startswith("rest_")) or "no errors"
    lines.append(f"  REST {rest}; weight {st.get('rest_weight_1m', 0):,}/min"[:80])
    for wait in st.get("backoffs", [])[:8]:
        until = time.strftime("%H:%M:%S", time.localtime(wait["until"]))
        lines.append(f"    waiting until {until}: {wait['what']}"[:80])
        lines.append(f"      after {wait['reason']}"[:80])
    if len(st.get("backoffs", [])) > 8:
        lines.append(f"    ... and {len(st['backoffs']) - 8} more")
    for err in st.get("task_errors", []):
        lines.append(f"  task error {_ago(err['age_s'])} ago in {err['task']}: {err['reason']}"[:80])
    run, total = st.get("counters_run", {}), st.get("counters_total", {})
    lines.append(f"  {'counters':<26} {'this run':>16} {'all runs':>16}")
    for label, key in (("messages", "messages"), ("trades", "records_trade"), ("liquidations", "records_liquidation"),
                       ("trade gaps", "trade_gaps"), ("trades backfilled", "trades_backfilled"),
                       ("trades lost (with event)", "trades_lost"), ("disconnects", "disconnects"),
                       ("stalls", "stalls"), ("book gaps", "book_gaps"), ("REST 429", "rest_429"),
                       ("polls failed (with event)", "poll_errors"), ("task errors", "task_errors"),
                       ("dead letters", "dead_letters")):
        lines.append(f"  {label:<26} {run.get(key, 0):>16,} {total.get(key, 0):>16,}")
    return lines


def _wrap(text: str, width: int) -> list[str]:
    import textwrap

    return textwrap.wrap(text, width) or [""]


@main.command()
def status() -> None:
    """Show perpflow services: health, Kafka, spill, trade gaps, REST backoffs, counters."""
    import json

    from pipelines.broker import _pid_alive, read_state
    from pipelines.shard_supervisor import supervisor_status_path

    settings = _settings()
    now = time.time()
    out = Console(width=80, highlight=False)
    lines = []
    broker = read_state(settings.run_dir)
    if broker:
        alive = "running" if _pid_alive(broker["pid"]) else "not running (stale state)"
        lines.append(f"broker  pid {broker['pid']}  {broker['bootstrap']}  {alive}")
    sharded: dict[tuple[str, int], list[dict]] = {}     # per venue and split: a split run before shows apart
    for path in sorted(settings.run_dir.glob("ingest-*.json")):
        if path.name.endswith(".state.json"):
            continue
        try:
            st = json.loads(path.read_text())
            if st.get("shard"):
                sharded.setdefault((st["exchange"], int(st["shard"].split("/")[1])), []).append(st)
            else:
                lines += _ingest_status_lines(st, _pid_alive(st["pid"]), now)
        except (OSError, ValueError, KeyError, TypeError) as exc:
            lines.append(f"{path.name}: unreadable status ({exc.__class__.__name__}: {exc})"[:80])
    for (exchange, count), shards in sorted(sharded.items()):
        supervisor_path = supervisor_status_path(settings.run_dir, exchange)
        try:
            supervisor = json.loads(supervisor_path.read_text()) if supervisor_path.exists() else None
            if supervisor and len(supervisor["shards"]) != count:
                supervisor = None       # it supervised another split
            lines += _sharded_ingest_status_lines(shards, supervisor, _pid_alive, now)
        except (OSError, ValueError, KeyError, TypeError) as exc:
            lines.append(f"{exchange} shards: unreadable status ({exc.__class__.__name__}: {exc})"[:80])
    if not lines:
        out.print(f"no perpflow services have run with PERPFLOW_HOME={settings.home}")
        return
    out.print(f"perpflow services ({settings.run_dir})"[:80], markup=False)
    for line in lines:
        out.print(line, markup=False, soft_wrap=True)


@main.command()
@click.option("--exchange", type=click.Choice(venue_names()), default=None,
              help="Only this venue (default: every venue perpflow speaks).")
@click.option("--data", "kinds", multiple=True, metavar="KIND",
              help="Only these kinds of data (trades, book, funding, mark_price, index_price, open_interest, "
                   "liquidations, adl); repeatable.")
def venues(exchange: str | None, kinds: tuple[str, ...]) -> None:
    """What each venue's public data covers: complete, sampled, lower bound, modelled or unavailable.

    The same rows are in the warehouse as meta.venue_coverage."""
    from ingest.venue import DATA_KINDS
    from warehouse.coverage import coverage_rows

    unknown = [k for k in kinds if k not in DATA_KINDS]
    if unknown:
        raise click.BadParameter(f"unknown kind(s) {', '.join(unknown)}; choose from {', '.join(DATA_KINDS)}",
                                 param_hint="--data")
    rows = [r for r in coverage_rows() if (exchange is None or r[0] == exchange) and (not kinds or r[1] in kinds)]
    styles = {"complete": "green", "sampled": "yellow", "lower bound": "yellow", "modelled": "cyan",
              "unavailable": "red"}
    table = Table(title="what each venue's public data covers (meta.venue_coverage)", show_lines=False)
    for column in ("venue", "data", "coverage", "why"):
        table.add_column(column, overflow="fold")
    previous = None
    for venue, kind, coverage, note in rows:
        table.add_row(venue if venue != previous else "", kind, f"[{styles[coverage]}]{coverage}[/]", note)
        previous = venue
    console.print(table)


# --- data out ----------------------------------------------------------------------------------

@main.command()
@click.argument("query")
@click.option("--live", is_flag=True,
              help="Query the live warehouse instead of the replica, read-only. Holds the writer lock while the "
                   "query runs: loads and Dagster runs wait for it.")
@click.option("--allow-file-access", is_flag=True,
              help="Let the query read and write files (read_csv, read_parquet, COPY ... TO, ATTACH); off by default.")
@click.option("--csv", "as_csv", is_flag=True, help="Print CSV instead of a table.")
def sql(query: str, live: bool, allow_file_access: bool, as_csv: bool) -> None:
    """Run read-only SQL on the replica (data/warehouse_ro.duckdb), without file access unless allowed."""
    import duckdb

    from warehouse.store import Warehouse, WarehouseBusy

    warehouse = Warehouse.from_settings(_settings())
    try:
        with warehouse.reader(live=live, file_access=allow_file_access) as con:
            result = con.sql(query)
            if result is None:
                return
            columns, rows = result.columns, result.fetchall()
    except (FileNotFoundError, WarehouseBusy) as exc:
        _fail(str(exc))
    except duckdb.PermissionException as exc:
        _fail(f"{exc}\nperpflow sql runs without file access; add --allow-file-access to let this query "
              "read or write files.")
    except duckdb.Error as exc:
        _fail(f"{exc}")
    if as_csv:
        import csv

        writer = csv.writer(sys.stdout)
        writer.writerow(columns)
        writer.writerows(rows)
        return
    table = Table(show_header=True)
    for column in columns:
        table.add_column(column)
    for row in rows:
        table.add_row(*("" if v is None else str(v) for v in row))
    console.print(table)
    console.print(f"{len(rows)} rows")


@main.command()
@click.option("--recording", "recordings", multiple=True, type=click.Path(exists=True, dir_okay=False, path_type=Path),
              help="Replay these recording files instead of simulating (e.g. ../shared/data/cryptofeed-captures/"
                   "BINANCE_FUTURES.*).")
@click.option("--speed", type=click.FloatRange(5, 200), default=30.0, show_default=True,
              help="Simulated seconds per wall second.")
@click.option("--keep-broker", is_flag=True, help="Leave the embedded broker running afterwards.")
def demo(recordings: tuple[Path, ...], speed: float, keep_broker: bool) -> None:
    """A 2025-10-10-style cascade: simulator -> live ingest -> Kafka -> DuckDB -> Dagster analytics -> summary."""
    from pipelines.demo import run_demo

    sys.exit(run_demo(_settings(), list(recordings), keep_broker=keep_broker, console=console, speed=speed))


@main.command()
@click.option("--port", type=click.IntRange(1, 65535), default=3000, show_default=True)
def ui(port: int) -> None:
    """Open the Dagster UI (webserver + daemon) on this project; Ctrl-C or SIGTERM stops all of it."""
    from dagster_project.instance import prepare_dagster_home
    from pipelines.process_group import run_process_group
    from warehouse.store import Warehouse

    settings = _settings()
    home = prepare_dagster_home(settings)
    os.environ["DAGSTER_HOME"] = str(home)
    os.environ["PERPFLOW_HOME"] = str(settings.home)
    if "PERPFLOW_PARTITION_START" not in os.environ:
        # Partitions from the first day of data, not from 2021: thousands of empty days hide the real ones.
        first_day = Warehouse.from_settings(settings).first_data_day() or datetime.datetime.now(datetime.UTC).date()
        os.environ["PERPFLOW_PARTITION_START"] = first_day.isoformat()
    console.print(f"Dagster UI on http://127.0.0.1:{port} (DAGSTER_HOME={home}); daily partitions from "
                  f"{os.environ['PERPFLOW_PARTITION_START']}; Ctrl-C stops it")
    # The interpreter running perpflow, so an un-activated venv works too.
    sys.exit(run_process_group(
        [sys.executable, "-m", "dagster", "dev", "-m", "dagster_project.definitions", "-h", "127.0.0.1",
         "-p", str(port)],
        on_start=lambda pgid: console.print(f"dagster dev runs as process group {pgid}")))


# Commands that live beside the code they drive.
from ingest.simulator.cli import simulate  # noqa: E402
from pipelines.backfill_cli import backfill  # noqa: E402
from pipelines.quant_cli import export, import_candles  # noqa: E402
from pipelines.report import report_command  # noqa: E402

for command in (simulate, backfill, import_candles, export, report_command):
    main.add_command(command)

if __name__ == "__main__":
    main()
