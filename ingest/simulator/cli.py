"""``simulate``: run the local Binance USD-M simulator from the command line.

A click command (not a group) so the main ``perpflow`` CLI can mount it as ``perpflow simulate``;
``python -m ingest.simulator`` runs it standalone. Invalid values are rejected before anything
starts, with a message naming the option and how to fix it.
"""

from __future__ import annotations

import asyncio
import signal
import time

import click
from rich.console import Console
from rich.live import Live
from rich.table import Table

from .config import (DEFAULT_SYMBOLS, DROP_MODES, SCENARIOS, VENUES, ConfigError, FaultConfig, OutageSpec, SimConfig,
                     StallSpec, format_time_ms, parse_time_ms)
from ..gc_policy import use_streaming_gc
from .server import Simulator


class _StallType(click.ParamType):
    name = "STREAM:START_S:DURATION_S"

    def convert(self, value, param, ctx):
        if isinstance(value, StallSpec):
            return value
        try:
            return StallSpec.parse(value)
        except ConfigError as exc:
            self.fail(str(exc), param, ctx)


class _OutageType(click.ParamType):
    name = "VENUE@START+DURATION"

    def convert(self, value, param, ctx):
        if isinstance(value, OutageSpec):
            return value
        try:
            return OutageSpec.parse(value)
        except ConfigError as exc:
            self.fail(str(exc), param, ctx)


class _TimeType(click.ParamType):
    name = "TIME"

    def convert(self, value, param, ctx):
        try:
            return parse_time_ms(value)
        except ConfigError as exc:
            self.fail(str(exc), param, ctx)


class _SymbolsType(click.ParamType):
    name = "SYMBOLS"

    def convert(self, value, param, ctx):
        if isinstance(value, tuple):
            return value
        symbols = tuple(s.strip().upper() for s in value.split(",") if s.strip())
        try:
            SimConfig(symbols=symbols).validate()
        except ConfigError as exc:
            self.fail(str(exc), param, ctx)
        return symbols


_SECONDS = click.FloatRange(min=0.0)


def _venues(ctx, param, value: str) -> tuple[str, ...]:
    venues = tuple(v.strip() for v in value.split(",") if v.strip())
    unknown = [v for v in venues if v not in VENUES]
    if unknown or not venues:
        raise click.BadParameter(f"{', '.join(unknown) or 'nothing'}: expected a comma-separated list of "
                                 f"{', '.join(VENUES)}")
    return venues


@click.command("simulate")
@click.option("--scenario", type=click.Choice(SCENARIOS), default="calm", show_default=True,
              help="calm: ordinary trading; cascade: 2025-10-10-style liquidation cascade.")
@click.option("--seed", type=int, default=7, show_default=True, help="Seed; same seed, same stream.")
@click.option("--speed", type=click.FloatRange(min=0.0, min_open=True), default=1.0, show_default=True,
              help="Simulated seconds per wall second.")
@click.option("--hours", type=click.FloatRange(min=0.0, min_open=True), default=None,
              help="Simulated duration [default: calm 6, cascade 12].")
@click.option("--start", "start_ms", type=_TimeType(), default=None,
              help="Simulated start (ISO-8601 or epoch ms) [default: calm 2025-10-06T00:00:00Z, "
                   "cascade 2025-10-10T12:00:00Z].")
@click.option("--symbols", type=_SymbolsType(), default=",".join(DEFAULT_SYMBOLS), show_default=True,
              help="Comma-separated USD-M symbols.")
@click.option("--host", default="127.0.0.1", show_default=True)
@click.option("--port", type=click.IntRange(0, 65535), default=0, show_default=True, help="0 picks a free port.")
@click.option("--truth", "truth_path", type=click.Path(dir_okay=False, writable=True), default=None,
              help="Write the ground truth (JSON Lines) here.")
@click.option("--checkpoint-every", type=click.IntRange(min=1), default=60, show_default=True,
              help="Simulated seconds between full-book checkpoints in the ground truth.")
@click.option("--drop-every", type=_SECONDS, default=0.0, metavar="SECONDS",
              help="Abruptly drop websocket connections every SECONDS of simulated time.")
@click.option("--drop-mode", type=click.Choice(DROP_MODES), default="all", show_default=True,
              help="all: drop every connection at once; one: drop only the longest-open connection, "
                   "never a second one before the first is replaced.")
@click.option("--gap-every", type=_SECONDS, default=0.0, metavar="SECONDS",
              help="Skip one depthUpdate (breaking pu chaining) every SECONDS.")
@click.option("--malformed-every", type=_SECONDS, default=0.0, metavar="SECONDS",
              help="Send one malformed frame (bad JSON / missing field / wrong type) every SECONDS.")
@click.option("--hostile-every", type=_SECONDS, default=0.0, metavar="SECONDS",
              help="Send every connection a hostile frame every SECONDS, alternating a text frame that is "
                   "not UTF-8 and an oversized one (see --hostile-size).")
@click.option("--hostile-size", type=click.IntRange(min=1024), default=50_000_000, show_default=True,
              metavar="BYTES", help="Size of the oversized hostile frames.")
@click.option("--stall", "stalls", type=_StallType(), multiple=True,
              help="Silence a stream for a while, e.g. markPrice@1s:600:120 (repeatable).")
@click.option("--rest-error-rate", type=click.FloatRange(0.0, 1.0, max_open=True), default=0.0,
              metavar="FRACTION", help="Fraction of REST calls answered with 429/503/500.")
@click.option("--fetch-loss-every", type=_SECONDS, default=0.0, metavar="SECONDS",
              help="dYdX: the first order-book subscription after every SECONDS gets a snapshot taken "
                   "--fetch-loss-steps market steps before its updates start (those updates are lost to it).")
@click.option("--fetch-loss-steps", type=click.IntRange(1, 600), default=5, show_default=True, metavar="STEPS",
              help="dYdX: market steps (100 ms) a lossy order-book subscription misses.")
@click.option("--stale-level-every", type=_SECONDS, default=0.0, metavar="SECONDS",
              help="dYdX: every SECONDS one deleted book level is never deleted for subscribers (a stale level).")
@click.option("--message-loss-every", type=_SECONDS, default=0.0, metavar="SECONDS",
              help="dYdX: every SECONDS one v4_trades update is lost in transit (its message_id used up).")
@click.option("--ping-interval", type=click.FloatRange(min=0.0, min_open=True), default=180.0, show_default=True,
              metavar="SECONDS", help="Wall seconds between server ping frames (Binance: 180).")
@click.option("--max-lifetime", type=click.FloatRange(min=0.0, min_open=True), default=86_400.0, show_default=True,
              metavar="SECONDS", help="Simulated seconds before the server closes a connection (Binance: 24 h).")
@click.option("--outage", "outages", type=_OutageType(), multiple=True,
              help="One venue's feeds fail: its websockets are cut and refused and its REST answers 503 from START "
                   "for DURATION, e.g. okx-swap@20:45+8m (START a UTC time of day, or simulated time after the "
                   "start such as 600s or 10m; repeatable). Market makers withdraw from the other venues meanwhile "
                   "(see --outage-withdrawal).")
@click.option("--outage-withdrawal", type=click.FloatRange(0.0, 1.0), default=0.6, show_default=True,
              metavar="FRACTION", help="How far market makers withdraw during an outage: the market's disruption "
                                       "(0 none, 1 as when their hedging venue is gone) ramped in over a minute "
                                       "and out over two after the venue is back.")
@click.option("--venues", default=",".join(VENUES), show_default=True, callback=_venues,
              help="Wire formats to serve on the one market (all on the same port).")
def simulate(scenario, seed, speed, hours, start_ms, symbols, host, port, truth_path, checkpoint_every,
             drop_every, drop_mode, gap_every, malformed_every, hostile_every, hostile_size, stalls, rest_error_rate,
             fetch_loss_every, fetch_loss_steps, stale_level_every, message_loss_every, ping_interval, max_lifetime, outages, outage_withdrawal,
             venues):
    """Serve a simulated futures market locally in each venue's wire format: Binance USD-M
    (websocket streams + /fapi REST), Binance COIN-M (/coinm + /dapi), OKX v5 (/ws/v5/public,
    /api/v5), Bybit v5 linear (/v5/public/linear, /v5/market) and, under their own prefixes,
    Hyperliquid (/hyperliquid) and the dYdX v4 indexer (/dydx/v4/ws, /dydx/v4)."""
    config = SimConfig(
        venues=venues,
        scenario=scenario, seed=seed, hours=hours, start_ms=start_ms, symbols=symbols, speed=speed,
        truth_path=truth_path, checkpoint_every_s=checkpoint_every,
        ws_ping_interval_s=ping_interval, ws_max_lifetime_s=max_lifetime,
        faults=FaultConfig(drop_every_s=drop_every, gap_every_s=gap_every, malformed_every_s=malformed_every,
                           stalls=tuple(stalls), rest_error_rate=rest_error_rate, drop_mode=drop_mode,
                           hostile_every_s=hostile_every, hostile_frame_bytes=hostile_size,
                           fetch_loss_every_s=fetch_loss_every, fetch_loss_steps=fetch_loss_steps,
                           stale_level_every_s=stale_level_every, message_loss_every_s=message_loss_every,
                           outages=tuple(outages), outage_withdrawal=outage_withdrawal),
    )
    try:
        config = config.resolved()
    except ConfigError as exc:
        raise click.UsageError(str(exc)) from None
    use_streaming_gc()
    try:
        asyncio.run(_serve(config, host, port, Console()))
    except OSError as exc:
        raise click.ClickException(f"cannot listen on {host}:{port}: {exc.strerror or exc}; "
                                   "pick another --port (0 = any free port)") from None


def _example_streams(config: SimConfig, kinds: tuple[str, ...]) -> str:
    return "/".join(f"{s.lower()}@{k}" for s in config.symbols for k in kinds)


def _status(sim: Simulator, config: SimConfig, wall0: float, frames0: int, dt: float) -> Table:
    feed = sim.feed
    done = (feed.now_ms - feed.start_ms) / max(1, feed.end_ms - feed.start_ms)
    table = Table.grid(padding=(0, 2))
    table.add_column(style="bold")
    table.add_column()
    table.add_row("simulated time", f"{format_time_ms(feed.now_ms)}  ({done:.1%})")
    table.add_row("effective speed", f"{(feed.now_ms - feed.start_ms) / 1000 / max(1e-9, time.monotonic() - wall0):.1f}x"
                  f" (target {config.speed:g}x, lag {sim.lag_ms / 1000:.1f} s simulated)")
    table.add_row("messages/s", f"{(sim.frames_sent - frames0) / max(dt, 1e-9):,.0f}  ({sim.frames_sent:,} frames total)")
    table.add_row("liquidations", f"{feed.liquidation_count:,} ({feed.published_liquidations:,} published)")
    table.add_row("connections", str(sim.connection_count))
    return table


async def _serve(config: SimConfig, host: str, port: int, console: Console) -> None:
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    async with Simulator(config, host, port) as sim:
        console.print(f"[bold]perpflow simulator[/] scenario={config.scenario} seed={config.seed} "
                      f"speed={config.speed:g}x {config.hours:g} h from {format_time_ms(config.start_ms)}",
                      soft_wrap=True)
        # URLs are printed unwrapped so they can be copied (and parsed) whole.
        console.print(f"  base      : {sim.ws_url}  {sim.http_url}", soft_wrap=True, highlight=False)
        console.print(f"  public ws : {sim.ws_url}/public/stream?streams="
                      f"{_example_streams(config, ('depth@100ms', 'bookTicker'))}", soft_wrap=True, highlight=False)
        console.print(f"  market ws : {sim.ws_url}/market/stream?streams="
                      f"{_example_streams(config, ('aggTrade', 'markPrice@1s'))}/!forceOrder@arr",
                      soft_wrap=True, highlight=False)
        console.print(f"  REST      : {sim.http_url}/fapi/v1/depth?symbol={config.symbols[0]}&limit=1000",
                      soft_wrap=True, highlight=False)
        if "binance-coinm" in config.venues:
            console.print(f"  COIN-M    : {sim.ws_url}/coinm (as --ws-url)  {sim.http_url}/dapi/v1/exchangeInfo",
                          soft_wrap=True, highlight=False)
        if "okx-swap" in config.venues:
            console.print(f"  OKX       : {sim.ws_url}/ws/v5/public  {sim.http_url}/api/v5/public/instruments?instType=SWAP",
                          soft_wrap=True, highlight=False)
        if "bybit-linear" in config.venues:
            console.print(f"  Bybit     : {sim.ws_url}/v5/public/linear  "
                          f"{sim.http_url}/v5/market/instruments-info?category=linear", soft_wrap=True, highlight=False)
        if "dydx-v4" in config.venues:
            console.print(f"  dYdX v4   : {sim.ws_url}/dydx (as --ws-url)  {sim.http_url}/dydx/v4/perpetualMarkets",
                          soft_wrap=True, highlight=False)
        if config.truth_path:
            console.print(f"  truth     : {config.truth_path}", soft_wrap=True, highlight=False)
        finished = asyncio.create_task(sim.finished())
        stopping = asyncio.create_task(stop.wait())
        wall0 = time.monotonic()
        with Live(console=console, refresh_per_second=4, transient=False) as live:
            frames, last = sim.frames_sent, time.monotonic()
            while not finished.done() and not stopping.done():
                await asyncio.wait({finished, stopping}, timeout=1.0)
                now = time.monotonic()
                live.update(_status(sim, config, wall0, frames, now - last))
                frames, last = sim.frames_sent, now
        stopping.cancel()
        if finished.done() and finished.exception() is not None:
            raise click.ClickException(f"simulation failed: {finished.exception()!r}")
        finished.cancel()
        if not console.is_terminal:
            console.line()      # Live leaves its last frame unterminated when not on a terminal
        outcome = "finished" if not stop.is_set() else "stopped"
        console.print(f"{outcome} at {format_time_ms(sim.feed.now_ms)}: {sim.frames_sent:,} frames, "
                      f"{sim.feed.liquidation_count:,} liquidations")
