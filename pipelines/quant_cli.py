"""``perpflow import-candles`` (history in) and ``perpflow export`` (Token Metrics v2 JSON out).

Neither imports Dagster: both are quick, scriptable commands. ``import-candles`` writes the live
file through the writer lock; ``export`` reads the read replica only, so it never blocks a run.
Output conventions: progress and errors of ``import-candles`` go to stdout like the other
commands; ``export`` keeps stdout for the JSON document and reports errors on stderr.
"""

from __future__ import annotations

import datetime as dt
import re
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import click
import duckdb
import numpy as np
import orjson
import pyarrow as pa
from rich.console import Console
from rich.table import Table

from ingest.venue import MalformedMessage
from ingest.venues.binance_usdm import BinanceUsdm
from warehouse.settings import ConfigError, load_settings
from transforms.candles import MS_PER_UNIT, Candles, infer_interval_ms, parse_candles_csv, parse_interval
from transforms.levels import Level, SupportResistance
from transforms.quantmetrics import METRIC_KEYS
from transforms.signals import VOTE_NAMES, Signals
from transforms.tm_export import (
    Token,
    envelope,
    hourly_trading_signal_rows,
    quantmetrics_row,
    resistance_support_row,
    trading_signal_rows,
)

console = Console(width=None if sys.stdout.isatty() else 160)
errors = Console(stderr=True, width=None if sys.stderr.isatty() else 160)

EXCHANGE_SLUG = re.compile(r"[a-z0-9]+(?:[-_][a-z0-9]+)*")
MARKET = re.compile(r"[A-Z0-9]+-[A-Z0-9]+-(?:PERP|\d{6})")
# TM token ids: BTC from analytics.md §1; ETH as used with BTC in public TM v2 client code
# (token_id=3375,3306 for Bitcoin,Ethereum). Unknown ids stay null rather than guessed.
TOKENS = {"BTC": Token(3375, "Bitcoin", "BTC"), "ETH": Token(3306, "Ethereum", "ETH")}
SETUP_HINT = ("run `perpflow import-candles PATH --exchange X --symbol Y --interval 1d` (and 1h), then materialize "
              "the quant assets, e.g. `dagster asset materialize -m dagster_project.definitions --select group:quant "
              "--partition-range FIRST_DAY...LAST_DAY`, first")


def _settings():
    try:
        return load_settings()
    except ConfigError as exc:
        raise click.UsageError(str(exc)) from None


def _fail(message: str) -> None:
    console.print(f"[bold red]error:[/] {message}", highlight=False)
    sys.exit(1)


# --- import-candles -----------------------------------------------------------------------------

def _exchange_option(ctx, param, value: str) -> str:
    slug = value.strip().lower()
    if not EXCHANGE_SLUG.fullmatch(slug):
        raise click.BadParameter(f"{value!r} is not a venue slug; use letters, digits and dashes, "
                                 "e.g. --exchange bybit-linear")
    return slug


def market_symbol(value: str) -> str:
    """BTCUSDT or BTC-USDT-PERP (any case) -> BTC-USDT-PERP; ValueError otherwise."""
    text = value.strip().upper()
    if MARKET.fullmatch(text):
        return text
    try:
        return BinanceUsdm().normalize_symbol(text)   # the usual spelling of a pair: BTCUSDT
    except MalformedMessage:
        raise ValueError(f"{value!r} is neither a venue symbol like BTCUSDT nor a market like BTC-USDT-PERP") from None


def _symbol_option(ctx, param, value: str) -> str:
    try:
        return market_symbol(value)
    except ValueError as exc:
        raise click.BadParameter(str(exc)) from None


def _interval_name(ms: int) -> str:
    for unit in ("w", "d", "h", "m", "s"):
        if ms % MS_PER_UNIT[unit] == 0:
            return f"{ms // MS_PER_UNIT[unit]}{unit}"
    return f"{ms} ms"


def missing_bars(candles: Candles, interval: str, source: str) -> int:
    """Check that the file holds ``interval`` bars on UTC boundaries; return how many bars are
    missing inside its range (gaps are allowed: the metrics treat them as missing data)."""
    step = parse_interval(interval)
    stamps = candles.ts.astype(np.int64)
    misaligned = np.flatnonzero(stamps % step)
    if misaligned.size:
        raise ValueError(f"{source}: {misaligned.size} bar(s) do not open on a {interval} boundary (first: "
                         f"{candles.ts[misaligned[0]]}); is --interval {interval} right for this file?")
    if len(candles) > 1 and (found := infer_interval_ms(candles.ts)) != step:
        raise ValueError(f"{source}: bars are {_interval_name(found)} apart, not {interval}; pass the file's own "
                         f"interval or import the {interval} file (only 1d and 1h are used)")
    return int((np.diff(stamps) // step - 1).sum())


@dataclass(frozen=True)
class CandleImport:
    """What one file added to raw.candles."""

    candles: Candles
    missing: int       # bars missing inside the file's range
    replaced: int      # bars that were already imported
    total: int         # this market's bars of this interval in raw.candles afterwards


def import_candles_file(warehouse, path: Path, exchange: str, symbol: str, interval: str) -> CandleImport:
    """Parse ``path`` and replace its bars in raw.candles in one transaction (the replica is not
    published: callers importing several files publish once).

    Raises ValueError for a bad file (nothing imported) and WarehouseBusy if the writer lock is held.
    """
    try:
        candles = parse_candles_csv(path.read_text(encoding="utf-8-sig"), source=path.name)
    except UnicodeDecodeError:
        raise ValueError(f"{path} is not UTF-8 text; export the candles as CSV") from None
    missing = missing_bars(candles, interval, path.name)
    incoming = pa.table({
        "ts": pa.array(candles.ts),
        **{name: pa.array(getattr(candles, name)) for name in ("open", "high", "low", "close", "volume")},
        "quote_volume": pa.array(candles.turnover, from_pandas=True),
    })
    key = {"exchange": exchange, "symbol": symbol, "interval": interval}
    with warehouse.writer() as con:
        con.register("incoming", incoming)
        con.execute("BEGIN")
        try:
            replaced = con.execute("""DELETE FROM raw.candles WHERE exchange = $exchange AND symbol = $symbol
                                      AND interval = $interval AND ts IN (SELECT ts FROM incoming)""",
                                   key).fetchone()[0]
            con.execute("""INSERT INTO raw.candles BY NAME
                           SELECT $exchange AS exchange, $symbol AS symbol, $interval AS interval, *,
                                  $source AS source, $imported_at AS imported_at FROM incoming""",
                        {**key, "source": path.name, "imported_at": dt.datetime.now(dt.UTC).replace(tzinfo=None)})
            con.execute("COMMIT")
        except BaseException:
            con.execute("ROLLBACK")
            raise
        total = con.execute("SELECT count(*) FROM raw.candles WHERE exchange = $exchange AND symbol = $symbol "
                            "AND interval = $interval", key).fetchone()[0]
    return CandleImport(candles, missing, replaced, total)


@click.command("import-candles")
@click.argument("path", type=click.Path(exists=True, dir_okay=False, path_type=Path))
@click.option("--exchange", required=True, callback=_exchange_option,
              help="Venue the candles are from, as a slug, e.g. bybit-linear.")
@click.option("--symbol", required=True, callback=_symbol_option,
              help="BTCUSDT or BTC-USDT-PERP; stored normalized as BTC-USDT-PERP.")
@click.option("--interval", required=True, type=click.Choice(["1d", "1h"]), help="Bar length of the file.")
def import_candles(path: Path, exchange: str, symbol: str, interval: str) -> None:
    """Load historical candles (Bybit kline CSV and similar) into raw.candles.

    Re-importing replaces the bars the file contains; a file with any bad row is rejected whole.
    """
    from warehouse.store import Warehouse, WarehouseBusy

    settings = _settings()
    started = time.perf_counter()
    console.print(f"reading {path}; writing {exchange} {symbol} {interval} to {settings.warehouse_path}")
    warehouse = Warehouse.from_settings(settings)
    try:
        result = import_candles_file(warehouse, path, exchange, symbol, interval)
    except ValueError as exc:
        _fail(f"{exc}\nNothing was imported; fix the file and run the command again.")
    except WarehouseBusy as exc:
        _fail(f"{exc}. Nothing was imported.")
    warehouse.publish_replica()

    candles = result.candles
    first, last = (str(t.astype("datetime64[D]")) for t in (candles.ts[0], candles.ts[-1]))
    table = Table(title=f"import-candles: {exchange} {symbol} {interval}", show_header=False)
    for label, value in [
        ("file", str(path)), ("bars in file", f"{len(candles):,}"),
        ("first bar (open, UTC)", str(candles.ts[0])), ("last bar (open, UTC)", str(candles.ts[-1])),
        ("missing bars inside the range", f"{result.missing:,}"), ("replaced (already imported)", f"{result.replaced:,}"),
        ("new", f"{len(candles) - result.replaced:,}"), (f"{symbol} {interval} bars in raw.candles", f"{result.total:,}"),
        ("seconds", f"{time.perf_counter() - started:.2f}"),
    ]:
        table.add_row(label, value)
    console.print(table)
    console.print("next, materialize the quant assets for these days (or use `perpflow ui`):")
    console.print(f"  dagster asset materialize -m dagster_project.definitions --select group:quant "
                  f"--partition-range {first}...{last}", soft_wrap=True, highlight=False)
    console.print(f"then: perpflow export --format tm-v2 quantmetrics --symbol {symbol.split('-')[0]}",
                  soft_wrap=True, highlight=False)


# --- export -------------------------------------------------------------------------------------

@dataclass(frozen=True)
class Query:
    """Filters shared by every endpoint, as SQL over a table with exchange/symbol columns."""

    where: str
    params: dict
    limit: int
    offset: int


def token_of(market: str) -> Token:
    base = market.split("-")[0]
    return TOKENS.get(base, Token(None, base, base))


def _extensions(row: dict, exchange: str, symbol: str) -> dict:
    """Several venues list the same token, so rows name the market they describe."""
    return {**row, "EXCHANGE": exchange, "MARKET": symbol}


def _quantmetrics(con, query: Query, window: str) -> list[dict]:
    columns = ["exchange", "symbol", "as_of", "cagr_short_window", "n_returns", *METRIC_KEYS, "best_month",
               "worst_month"]
    cursor = con.execute(f"""SELECT {', '.join(columns)} FROM analytics.quantmetrics
                             WHERE lookback = $window AND {query.where}
                             ORDER BY as_of DESC, exchange, symbol LIMIT {query.limit} OFFSET {query.offset}""",
                         {**query.params, "window": window})
    rows = []
    for values in cursor.fetchall():
        record = dict(zip(columns, values))
        row = quantmetrics_row(token_of(record["symbol"]), record["as_of"], record, window=window,
                               cagr_short_window=record["cagr_short_window"], n_returns=record["n_returns"])
        rows.append(_extensions(row, record["exchange"], record["symbol"]))
    return rows


def _signal_rows(con, query: Query, table: str) -> list[tuple[dict, Signals]]:
    columns = ["exchange", "symbol", "ts", "close", *(f"vote_{name}" for name in VOTE_NAMES), "supertrend", "score",
               "token_trend", "trading_signal", "confidence", "position", "trading_signals_returns",
               "holding_returns"]
    cursor = con.execute(f"""SELECT {', '.join(columns)} FROM {table} WHERE {query.where}
                             ORDER BY ts DESC, exchange, symbol LIMIT {query.limit} OFFSET {query.offset}""",
                         query.params)
    return [(record, _one_bar_signals(record)) for record in (dict(zip(columns, v)) for v in cursor.fetchall())]


def _one_bar_signals(record: dict) -> Signals:
    """One stored row as the transform's Signals, so the TM fields come from the same formatter."""
    def number(value):
        return np.array([np.nan if value is None else value], dtype=np.float64)

    def state(value):
        return np.array([value], dtype=np.int8)

    return Signals(votes={name: number(record[f"vote_{name}"]) for name in VOTE_NAMES},
                   supertrend=number(record["supertrend"]), score=number(record["score"]),
                   warmed_up=np.array([True]), token_trend=state(record["token_trend"]),
                   trading_signal=state(record["trading_signal"]), confidence=number(record["confidence"]),
                   position=state(record["position"]),
                   trading_signals_returns=number(record["trading_signals_returns"]),
                   holding_returns=number(record["holding_returns"]))


def _trading_signals(con, query: Query) -> list[dict]:
    return [_extensions(trading_signal_rows(token_of(r["symbol"]), [r["ts"]], signals)[0], r["exchange"], r["symbol"])
            for r, signals in _signal_rows(con, query, "analytics.trading_signals")]


def _hourly_trading_signals(con, query: Query) -> list[dict]:
    return [_extensions(hourly_trading_signal_rows(token_of(r["symbol"]), [r["ts"]], [r["close"]], signals)[0],
                        r["exchange"], r["symbol"])
            for r, signals in _signal_rows(con, query, "analytics.hourly_trading_signals")]


def _resistance_support(con, query: Query, timeframe: str) -> list[dict]:
    params = {**query.params, "timeframe": timeframe}
    cursor = con.execute(f"""
        WITH page AS (
            SELECT DISTINCT exchange, symbol, day FROM analytics.support_resistance_levels
            WHERE timeframe = $timeframe AND {query.where}
            ORDER BY day DESC, exchange, symbol LIMIT {query.limit} OFFSET {query.offset})
        SELECT l.* FROM analytics.support_resistance_levels l JOIN page USING (exchange, symbol, day)
        WHERE l.timeframe = $timeframe ORDER BY l.day DESC, l.exchange, l.symbol""", params)
    columns = [c[0] for c in cursor.description]
    groups: dict[tuple, list[dict]] = {}
    for values in cursor.fetchall():
        record = dict(zip(columns, values))
        groups.setdefault((record["exchange"], record["symbol"], record["day"]), []).append(record)
    rows = []
    for (exchange, symbol, _), records in groups.items():
        swing = sorted((r for r in records if r["method"] == "swing_pivot_cluster"), key=lambda r: int(r["name"][1:]))
        first = records[0]
        levels = SupportResistance(
            as_of=np.datetime64(first["as_of"], "ms"), close=first["close"], atr=first["atr"],
            tolerance=first["tolerance"],
            supports=tuple(_level(r) for r in swing if r["kind"] == "support"),
            resistances=tuple(_level(r) for r in swing if r["kind"] == "resistance"))
        row = resistance_support_row(token_of(symbol), levels)
        pivots = {r["name"]: r["price"] for r in records if r["method"] == "pivot_classic"}
        if pivots:
            row["PIVOT_POINTS_CLASSIC"] = pivots
        row["TIMEFRAME"] = timeframe
        rows.append(_extensions(row, exchange, symbol))
    return rows


def _level(record: dict) -> Level:
    return Level(price=record["price"], band_low=record["band_low"], band_high=record["band_high"],
                 kind=record["kind"], strength=record["strength"], touches=record["touches"],
                 pivots=record["pivots"], volume_share=record["volume_share"], distance_pct=record["distance_pct"],
                 last_pivot=np.datetime64(record["last_pivot"], "ms"),
                 last_touch=np.datetime64(record["last_touch"], "ms"))


ENDPOINTS = {  # endpoint -> (table, column holding the row's UTC day)
    "quantmetrics": ("analytics.quantmetrics", "as_of"),
    "resistance-support": ("analytics.support_resistance_levels", "day"),
    "trading-signals": ("analytics.trading_signals", "day"),
    "hourly-trading-signals": ("analytics.hourly_trading_signals", "day"),
}


def symbol_filter(symbols: str | None) -> tuple[str, dict]:
    """TM's comma-separated ``symbol`` filter: a base asset (BTC) matches every market of it,
    a market (BTC-USDT-PERP or BTCUSDT) matches exactly."""
    if not symbols:
        return "true", {}
    clauses, params = [], {}
    for index, item in enumerate(filter(None, (s.strip() for s in symbols.split(",")))):
        name = f"symbol{index}"
        try:
            params[name] = market_symbol(item)
            clauses.append(f"symbol = ${name}")
        except ValueError:
            params[name] = item.upper()
            clauses.append(f"split_part(symbol, '-', 1) = ${name}")
    if not clauses:
        raise click.BadParameter("give at least one symbol, e.g. --symbol BTC or --symbol BTC,ETH",
                                 param_hint="--symbol")
    return f"({' OR '.join(clauses)})", params


@click.command("export")
@click.argument("endpoint", type=click.Choice(list(ENDPOINTS)), metavar="ENDPOINT")
@click.option("--format", "fmt", type=click.Choice(["tm-v2"]), default="tm-v2", show_default=True,
              help="Response shape: Token Metrics API v2 ({success, message, length, data}, UPPER_SNAKE fields).")
@click.option("--symbol", "symbols", help="Base asset(s) like TM's filter (BTC or BTC,ETH), or a market "
                                          "(BTC-USDT-PERP, BTCUSDT).")
@click.option("--exchange", help="Only this venue, e.g. bybit-linear.")
@click.option("--window", type=click.Choice(["30d", "90d", "365d", "all"]), default="all", show_default=True,
              help="quantmetrics: trailing window (TM's own metrics are since inception).")
@click.option("--timeframe", type=click.Choice(["1d", "1h"]), default="1d", show_default=True,
              help="resistance-support: levels of daily or hourly bars.")
@click.option("--start-date", type=click.DateTime(["%Y-%m-%d"]), help="First UTC day (TM startDate).")
@click.option("--end-date", type=click.DateTime(["%Y-%m-%d"]), help="Last UTC day (TM endDate).")
@click.option("--limit", type=click.IntRange(1, 100), default=50, show_default=True, help="Rows per page (TM max 100).")
@click.option("--page", type=click.IntRange(min=1), default=1, show_default=True, help="1 = newest rows.")
@click.option("--pretty", is_flag=True, help="Indent the JSON.")
def export(endpoint: str, fmt: str, symbols: str | None, exchange: str | None, window: str, timeframe: str,
           start_date: dt.datetime | None, end_date: dt.datetime | None, limit: int, page: int, pretty: bool) -> None:
    """Print analytics from the read replica as Token Metrics v2 JSON, newest first.

    ENDPOINT is one of quantmetrics, resistance-support, trading-signals, hourly-trading-signals.
    Rows carry TM's fields plus named extensions (EXCHANGE, MARKET, CONFIDENCE, WINDOW, ...).
    """
    from warehouse.store import Warehouse

    table, day_column = ENDPOINTS[endpoint]
    where, params = symbol_filter(symbols)
    clauses = [where]
    if exchange:
        clauses.append("exchange = $exchange")
        params["exchange"] = exchange.strip().lower()
    if start_date:
        clauses.append(f"{day_column} >= $start_date")
        params["start_date"] = start_date.date()
    if end_date:
        clauses.append(f"{day_column} <= $end_date")
        params["end_date"] = end_date.date()
    query = Query(" AND ".join(clauses), params, limit, (page - 1) * limit)

    warehouse = Warehouse.from_settings(_settings())
    if not warehouse.replica_path.exists():
        _export_fail(f"no read replica at {warehouse.replica_path}; {SETUP_HINT}")
    with warehouse.reader() as con:
        try:
            if not con.execute(f"SELECT count(*) FROM {table}").fetchone()[0]:
                _export_fail(f"{table} is empty in the read replica; {SETUP_HINT}")
        except duckdb.CatalogException:
            _export_fail(f"{table} does not exist in the read replica {warehouse.replica_path}; {SETUP_HINT}")
        rows = {
            "quantmetrics": lambda: _quantmetrics(con, query, window),
            "resistance-support": lambda: _resistance_support(con, query, timeframe),
            "trading-signals": lambda: _trading_signals(con, query),
            "hourly-trading-signals": lambda: _hourly_trading_signals(con, query),
        }[endpoint]()
    response = envelope(rows) if rows else envelope(rows, message="No data found for the given filters")
    sys.stdout.buffer.write(orjson.dumps(response, option=orjson.OPT_INDENT_2 if pretty else 0) + b"\n")


def _export_fail(message: str) -> None:
    errors.print(f"[bold red]error:[/] {message}", highlight=False)
    sys.exit(1)
