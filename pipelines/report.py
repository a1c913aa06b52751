"""``perpflow report``: one self-contained HTML page of the warehouse's analytics.

Reads the read replica only (so it never blocks a load or an asset run), draws each figure with
``transforms.figures`` and embeds it as a base64 PNG: the page has no external resource, so it can
be mailed or opened offline. Figures: per asset, price with ±2 % depth and liquidations through the
cascade; the stress index with its threshold; open interest by venue; support/resistance levels on
price; signal equity against holding. A figure whose table is empty says why inside the picture.
"""

from __future__ import annotations

import base64
import datetime as dt
import html
import sys
from dataclasses import dataclass
from pathlib import Path

import click
import duckdb
import numpy as np

from transforms import figures
from transforms.figures import EquityCurve, LevelsChart, PriceLevel, Span, TimeSeries
from transforms.market_stress import StressConfig
from warehouse.analytics import liquidation_map

# The level at which the market_stress asset counts the index as "risen" when it measures how long
# before a cascade the index warned (transforms.market_stress.lead_time_minutes' default).
STRESS_THRESHOLDS = {"risen (lead-time threshold)": 50.0}
CASCADE_MARGIN = np.timedelta64(60, "m")   # shown before the first and after the last detected cascade
LEVEL_BARS = 180                            # daily closes drawn under the levels
# Tables a report can draw from; a replica where all are empty has nothing to report.
SOURCES = ("analytics.ohlcv_1m", "analytics.book_depth", "analytics.liquidations_1m", "analytics.market_stress",
           "analytics.open_interest", "analytics.support_resistance_levels", "analytics.trading_signals",
           "analytics.hourly_trading_signals")


class ReportError(RuntimeError):
    pass


@dataclass(frozen=True)
class Figure:
    id: str
    title: str
    caption: str
    png: bytes


def _series(con, sql: str, params=()) -> TimeSeries:
    """(time, value) rows as a series; NULL values become NaN (fetchnumpy masks them)."""
    data = con.execute(sql, params).fetchnumpy()
    ts, values = data.values()
    return TimeSeries(np.asarray(ts).astype("datetime64[ms]"),
                      np.ma.filled(np.ma.asarray(values, dtype=np.float64), np.nan))


def _rows(con, table: str) -> int:
    try:
        return con.execute(f"SELECT count(*) FROM {table}").fetchone()[0]
    except duckdb.CatalogException:
        return 0


def _cascades(con) -> list[tuple[str, Span]]:
    if not _rows(con, "analytics.liquidation_cascades"):
        return []
    return [(asset, Span(np.datetime64(start, "ms"), np.datetime64(end, "ms")))
            for asset, start, end in con.execute(
                "SELECT asset, cascade_start, cascade_end FROM analytics.liquidation_cascades "
                "ORDER BY cascade_start").fetchall()]


def _merged(spans: list[Span]) -> list[Span]:
    """Overlapping cascades (several assets, both sides) as one shaded span each."""
    merged: list[Span] = []
    for span in sorted(spans, key=lambda s: s.start):
        if merged and span.start <= merged[-1].end:
            merged[-1] = Span(merged[-1].start, max(merged[-1].end, span.end))
        else:
            merged.append(span)
    return merged


def _window(spans: list[Span]) -> tuple[np.datetime64, np.datetime64] | None:
    """Minutes drawn for the cascade figures: the detected cascades with an hour either side, or
    everything when none was detected."""
    if not spans:
        return None
    return min(s.start for s in spans) - CASCADE_MARGIN, max(s.end for s in spans) + CASCADE_MARGIN


def _in_window(column: str, window) -> tuple[str, list]:
    if window is None:
        return "TRUE", []
    return f"{column} BETWEEN ? AND ?", [window[0].astype(dt.datetime), window[1].astype(dt.datetime)]


def cascade_figures(con, cascades: list[tuple[str, Span]]) -> list[Figure]:
    """Per asset, the market with the most book-depth minutes, then the deepest book (its collapse
    is the market's), else the most one-minute bars."""
    window = _window([span for _, span in cascades])
    where, params = _in_window("minute", window)
    markets = con.execute(f"""
        WITH bars AS (SELECT exchange, symbol, count(*) AS minutes FROM analytics.ohlcv_1m WHERE {where} GROUP BY ALL),
             depth AS (SELECT exchange, symbol, count(*) AS minutes, median(depth_usd_2_mean) AS usd
                       FROM analytics.book_depth WHERE {where} AND depth_usd_2_mean IS NOT NULL GROUP BY ALL)
        SELECT split_part(symbol, '-', 1) AS asset,
               arg_max(exchange, (coalesce(d.minutes, 0), coalesce(d.usd, 0), b.minutes, exchange)),
               arg_max(symbol, (coalesce(d.minutes, 0), coalesce(d.usd, 0), b.minutes, exchange))
        FROM bars b LEFT JOIN depth d USING (exchange, symbol) GROUP BY asset ORDER BY asset""",
                          params * 2).fetchall() if _rows(con, "analytics.ohlcv_1m") else []
    has_depth = _rows(con, "analytics.book_depth") > 0
    has_liquidations = _rows(con, "analytics.liquidations_1m") > 0
    result = []
    for asset, exchange, symbol in markets:
        market = [exchange, symbol]
        price = _series(con, f"SELECT minute, close FROM analytics.ohlcv_1m WHERE exchange = ? AND symbol = ? "
                             f"AND {where} ORDER BY minute", market + params)
        depth = _series(con, f"SELECT minute, depth_usd_2_mean FROM analytics.book_depth WHERE exchange = ? "
                             f"AND symbol = ? AND {where} ORDER BY minute", market + params) if has_depth else None
        long_usd = short_usd = None
        lower_bound, venues = False, ""
        if has_liquidations:
            liq = con.execute(f"""SELECT minute, sum(long_usd), sum(short_usd), bool_or(is_lower_bound),
                                         string_agg(DISTINCT exchange, ', ' ORDER BY exchange)
                                  FROM analytics.liquidations_1m WHERE asset = ? AND {where}
                                  GROUP BY minute ORDER BY minute""", [asset] + params).fetchall()
            if liq:
                ts = np.array([row[0] for row in liq], dtype="datetime64[ms]")
                long_usd = TimeSeries(ts, np.array([row[1] for row in liq], dtype=np.float64))
                short_usd = TimeSeries(ts, np.array([row[2] for row in liq], dtype=np.float64))
                lower_bound = any(row[3] for row in liq)
                venues = ", ".join(sorted({venue for row in liq for venue in row[4].split(", ")}))
        liquidation_note = f" published by {venues}, all venues summed" if venues else ""
        if lower_bound:
            liquidation_note += " (some feeds are sampled: a lower bound)"
        spans = _merged([span for a, span in cascades if a == asset])
        png = figures.cascade_price_depth_liquidations(
            f"{asset}: {exchange} {symbol} through the cascade", price, depth, long_usd, short_usd, cascades=spans,
            depth_note=f", {exchange} {symbol}, USD (mean of the minute)", liquidation_note=liquidation_note)
        result.append(Figure(f"cascade-{asset.lower()}", f"{asset}: price, depth collapse and liquidations",
                             f"{exchange} {symbol} one-minute close and ±2% book depth; liquidated USD per minute "
                             f"of every venue's {asset} markets (longs below zero, shorts above); detected "
                             f"cascades shaded.", png))
    if not result:
        result.append(Figure("cascade", "Price, depth collapse and liquidations", "analytics.ohlcv_1m is empty.",
                             figures.cascade_price_depth_liquidations("no one-minute bars", None, None, None, None)))
    return result


def stress_figure(con, cascades: list[tuple[str, Span]]) -> Figure:
    spans = _merged([span for _, span in cascades])
    where, params = _in_window("minute", _window(spans))
    by_asset = {}
    if _rows(con, "analytics.market_stress"):
        for (asset,) in con.execute("SELECT DISTINCT asset FROM analytics.market_stress ORDER BY 1").fetchall():
            by_asset[asset] = _series(con, f"SELECT minute, stress_index FROM analytics.market_stress "
                                           f"WHERE asset = ? AND {where} ORDER BY minute", [asset] + params)
        warm_up = StressConfig().min_periods
        missing = (f"analytics.market_stress is NULL at every minute shown: its baselines need {warm_up} prior "
                   f"minutes ({warm_up / 60:g} h) of depth and funding history before the cascade")
    else:
        missing = "analytics.market_stress is empty"
    thresholds = ", ".join(f"{label} {level:g}" for label, level in STRESS_THRESHOLDS.items())
    return Figure("stress-index", "Market stress index", f"0-100 per asset (depth collapse, liquidations, OI "
                  f"drawdown, funding); threshold: {thresholds}; detected cascades of any asset shaded.",
                  figures.stress_index("Market stress index", by_asset, STRESS_THRESHOLDS, cascades=spans,
                                       missing=missing))


def open_interest_figure(con, cascades: list[tuple[str, Span]]) -> Figure:
    where, params = _in_window("bucket_start", _window([span for _, span in cascades]))
    by_asset: dict[str, dict[str, TimeSeries]] = {}
    if _rows(con, "analytics.open_interest"):
        for asset, exchange in con.execute("SELECT DISTINCT asset, exchange FROM analytics.open_interest "
                                           "WHERE grain = '5m' AND exchange <> 'all' ORDER BY 1, 2").fetchall():
            by_asset.setdefault(asset, {})[exchange] = _series(
                con, f"""SELECT bucket_start, sum(open_interest_usd) FROM analytics.open_interest
                         WHERE grain = '5m' AND asset = ? AND exchange = ? AND {where}
                         GROUP BY bucket_start ORDER BY bucket_start""", [asset, exchange] + params)
    spans = {asset: _merged([span for a, span in cascades if a == asset]) for asset in by_asset}
    return Figure("open-interest", "Open interest by venue", "analytics.open_interest, 5-minute buckets, USD "
                  "(one side; contracts converted with raw.instrument_units); the asset's detected cascades shaded.",
                  figures.open_interest_by_venue("Open interest by venue", by_asset, cascades_by_asset=spans))


def levels_figure(con) -> Figure:
    charts = {}
    if _rows(con, "analytics.support_resistance_levels"):
        latest = con.execute("""SELECT exchange, symbol, max(day) FROM analytics.support_resistance_levels
                                WHERE timeframe = '1d' GROUP BY ALL ORDER BY 1, 2""").fetchall()
        for exchange, symbol, day in latest:
            rows = con.execute("""SELECT name, price, kind, strength, method, as_of
                                  FROM analytics.support_resistance_levels
                                  WHERE exchange = ? AND symbol = ? AND timeframe = '1d' AND day = ?
                                    AND (method = 'swing_pivot_cluster' OR name = 'P')
                                  ORDER BY method, name""", [exchange, symbol, day]).fetchall()
            as_of = rows[0][5]
            close = _series(con, """SELECT ts, close FROM (SELECT ts, close FROM analytics.candles_1d
                                    WHERE exchange = ? AND symbol = ? AND ts <= ? ORDER BY ts DESC LIMIT ?)
                                    ORDER BY ts""", [exchange, symbol, as_of, LEVEL_BARS])
            charts[f"{exchange} {symbol}"] = LevelsChart(close, [
                PriceLevel(name, price, kind, strength if method == "swing_pivot_cluster" else None)
                for name, price, kind, strength, method, _ in rows], str(day))
    return Figure("levels", "Support and resistance on price", f"analytics.support_resistance_levels (daily bars) "
                  f"of each market's latest day over its last {LEVEL_BARS} daily closes; line width = strength "
                  "0-100; P = classic pivot point.", figures.levels_on_price("Support and resistance levels", charts))


def equity_figure(con) -> Figure:
    curves_by_timeframe = {}
    for label, table in (("daily", "analytics.trading_signals"), ("hourly", "analytics.hourly_trading_signals")):
        curves = {}
        if _rows(con, table):
            for exchange, symbol in con.execute(f"SELECT DISTINCT exchange, symbol FROM {table} ORDER BY 1, 2").fetchall():
                data = con.execute(f"""SELECT ts, trading_signals_returns, holding_returns FROM {table}
                                       WHERE exchange = ? AND symbol = ? ORDER BY ts""", [exchange, symbol]).fetchnumpy()
                strategy = 1 + np.asarray(data["trading_signals_returns"], dtype=np.float64)
                holding = 1 + np.asarray(data["holding_returns"], dtype=np.float64)
                # The stored returns run since warm-up; rebased so both curves start at 1 on the first row shown.
                curves[f"{exchange} {symbol}"] = EquityCurve(np.asarray(data["ts"]).astype("datetime64[ms]"),
                                                             strategy / strategy[0], holding / holding[0])
        curves_by_timeframe[label] = curves
    return Figure("signal-equity", "Signal equity vs holding", "Growth of 1 from the first stored signal row: "
                  "following analytics.trading_signals / hourly_trading_signals (position taken at the bar close, "
                  "earning the next bar) against holding the market over the same bars.",
                  figures.signal_equity_vs_holding("Signal equity vs holding", curves_by_timeframe))


def cross_venue_timeline_figures(con) -> list[Figure]:
    """The largest cross-venue episode of each asset as a timeline (the asset's metadata has its largest long
    and short ones)."""
    if not _rows(con, "analytics.cross_venue_cascades"):
        return []
    first, last = con.execute("SELECT min(cascade_start), max(cascade_start) + INTERVAL 1 MINUTE "
                              "FROM analytics.cross_venue_cascades").fetchone()
    largest: dict[str, liquidation_map.CascadeTimeline] = {}
    for timeline in liquidation_map.cascade_timelines(con, first, last):
        if timeline.asset not in largest or timeline.episode_usd > largest[timeline.asset].episode_usd:
            largest[timeline.asset] = timeline
    return [Figure(f"cross-venue-{asset.lower()}", f"{asset}: the largest cascade across venues",
                   "analytics.cross_venue_cascades: per venue its liquidated USD of the cascade's side per minute "
                   "(bars) and its trade price per 10 s (line); dashed: when its price first moved the cascade "
                   "threshold; the first mover in red; the episode shaded.",
                   figures.cross_venue_cascade_timeline(timeline.title, timeline.venues, timeline.first_mover,
                                                        timeline.span))
            for asset, timeline in sorted(largest.items())]


def build_figures(con) -> list[Figure]:
    empty = [table for table in SOURCES if not _rows(con, table)]
    if len(empty) == len(SOURCES):
        raise ReportError(f"nothing to report: {', '.join(SOURCES)} are all empty or missing")
    cascades = _cascades(con)
    return [*cascade_figures(con, cascades), *cross_venue_timeline_figures(con), stress_figure(con, cascades),
            open_interest_figure(con, cascades), levels_figure(con), equity_figure(con)]


def render_html(figures_: list[Figure], *, source: str, notes: list[str]) -> str:
    esc = html.escape
    parts = ["<!DOCTYPE html>", '<html lang="en"><head><meta charset="utf-8">',
             "<title>perpflow report</title>",
             "<style>body{font-family:sans-serif;max-width:1000px;margin:1em auto;color:#222}"
             "figure{margin:2em 0}img{max-width:100%}figcaption{font-size:0.9em;color:#555}</style>",
             "</head><body>", "<h1>perpflow report</h1>",
             f"<p>From {esc(source)}, generated {esc(dt.datetime.now(dt.UTC).strftime('%Y-%m-%d %H:%M UTC'))}.</p>"]
    if notes:
        parts.append("<ul>" + "".join(f"<li>{esc(note)}</li>" for note in notes) + "</ul>")
    parts.append("<ul>" + "".join(f'<li><a href="#{esc(f.id)}">{esc(f.title)}</a></li>' for f in figures_) + "</ul>")
    for figure in figures_:
        data = base64.b64encode(figure.png).decode("ascii")
        parts.append(f'<figure id="{esc(figure.id)}"><h2>{esc(figure.title)}</h2>'
                     f'<img alt="{esc(figure.title)}" src="data:image/png;base64,{data}">'
                     f"<figcaption>{esc(figure.caption)}</figcaption></figure>")
    parts.append("</body></html>")
    return "\n".join(parts) + "\n"


def write_report(warehouse, out: Path, notes: list[str] = ()) -> Path:
    """Build the page from ``warehouse``'s read replica and write it to ``out`` (atomically).

    Raises ReportError when there is no replica or nothing in it to draw."""
    if not warehouse.replica_path.exists():
        raise ReportError(f"no warehouse replica at {warehouse.replica_path}; run `perpflow demo`, or load data "
                          "(`perpflow load`) and materialize the analytics, first")
    try:
        with warehouse.reader() as con:
            page = render_html(build_figures(con), source=str(warehouse.replica_path), notes=list(notes))
    except duckdb.Error as exc:
        raise ReportError(f"{warehouse.replica_path} is not a readable perpflow warehouse: {exc}") from None
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_name(out.name + ".tmp")
    tmp.write_text(page, encoding="utf-8")
    tmp.replace(out)
    return out


@click.command("report")
@click.option("--out", type=click.Path(dir_okay=False, path_type=Path),
              help="HTML file to write; default <PERPFLOW_HOME>/report.html.")
def report_command(out: Path | None) -> None:
    """Write one self-contained HTML page (figures embedded) from the warehouse's read replica."""
    from warehouse.settings import ConfigError, load_settings
    from warehouse.store import Warehouse

    try:
        settings = load_settings()
    except ConfigError as exc:
        raise click.UsageError(str(exc)) from None
    try:
        path = write_report(Warehouse.from_settings(settings), out or settings.home / "report.html")
    except ReportError as exc:
        click.echo(f"error: {exc}", err=True)
        sys.exit(1)
    click.echo(f"report: {path}")
