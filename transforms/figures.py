"""PNG charts of analytics tables: data in, PNG bytes out, no I/O (matplotlib's Agg backend).

Dagster keeps every picture in its event log (``dagster_project.tables`` embeds them in the
materialization metadata), so its figures are small: 7 x 2.6 inches at 80 dpi by default.

The report figures (``render_panels`` and below) are larger, several panels on one time axis, and
take plain arrays (timestamps as ``datetime64``), so the HTML report (``pipelines/report.py``) and
Dagster metadata can draw the same picture from the same rows. A report figure whose data is
missing still renders, with the reason written in the panel, so a reader sees what is absent and
why rather than an empty page.
"""

from __future__ import annotations

import datetime as dt
import io
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass

import numpy as np

SIZE = (7, 2.6)
DPI = 80
MAX_LINES = 8
CHART_BARS = 180

Series = list[tuple[str, dt.datetime, float | None]]
Spans = list[tuple[dt.datetime, dt.datetime]]


def _render(title: str, draw: Callable[[object], None], size=SIZE) -> bytes:
    import matplotlib

    # Agg renders without a display: assets run in daemons and containers.
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=size, dpi=DPI)
    try:
        draw(ax)
        ax.set_title(title, fontsize=9)
        ax.tick_params(labelsize=7)
        fig.tight_layout()
        png = io.BytesIO()
        fig.savefig(png, format="png")
        return png.getvalue()
    finally:
        plt.close(fig)


def _lines(ax, series: Series, log: bool = False) -> None:
    by_label: dict[str, tuple[list, list]] = {}
    for label, x, y in series:
        xs, ys = by_label.setdefault(label, ([], []))
        xs.append(x)
        ys.append(np.nan if y is None else y)
    for label, (xs, ys) in sorted(by_label.items())[:MAX_LINES]:
        ax.plot(xs, ys, label=label, linewidth=0.8)
    if log:
        ax.set_yscale("log")
    ax.legend(fontsize=6)


def _shade(ax, spans: Spans, color: str) -> None:
    for start, end in spans:
        ax.axvspan(start, end, color=color, alpha=0.25, linewidth=0)


def lines(series: Series, title: str, *, log: bool = False, spans: Spans = (),
          span_color: str = "tab:orange") -> bytes:
    """One line per label (the first eight labels in order) of (label, x, y) points; ``spans``
    shaded (episodes, cascades)."""
    def draw(ax):
        _lines(ax, series, log=log)
        _shade(ax, spans, span_color)
    return _render(title, draw)


def open_interest_and_price(series: list[tuple[str, dt.datetime, float | None, float | None]], title: str) -> bytes:
    """Per asset (the first four): USD open interest (solid) and price (dotted, right axis), each
    relative to its first value, from (asset, time, OI USD, price) points."""
    def draw(ax):
        by_asset: dict[str, list] = {}
        for asset, bucket, usd, price in series:
            by_asset.setdefault(asset, []).append((bucket, usd, price))
        twin = ax.twinx()
        for i, (asset, rows) in enumerate(sorted(by_asset.items())[:4]):
            xs = [r[0] for r in rows]
            first_usd = next((r[1] for r in rows if r[1]), None) or 1.0
            first_price = next((r[2] for r in rows if r[2]), None) or 1.0
            ax.plot(xs, [(r[1] or np.nan) / first_usd for r in rows], color=f"C{i}", linewidth=0.9,
                    label=f"{asset} OI")
            twin.plot(xs, [(r[2] or np.nan) / first_price for r in rows], color=f"C{i}", linewidth=0.7,
                      linestyle=":", label=f"{asset} price")
        ax.set_ylabel("OI / first", fontsize=7)
        twin.set_ylabel("price / first (dotted)", fontsize=7)
        twin.tick_params(labelsize=7)
        ax.legend(fontsize=6, loc="lower left")
    return _render(title, draw)


def liquidations(minutes: list[tuple[dt.datetime, float, float]], cascades: Spans, title: str) -> bytes:
    """Liquidated USD per minute from (minute, longs, shorts): longs down, shorts up, in $M; the
    cascades' minutes shaded."""
    def draw(ax):
        xs = [m[0] for m in minutes]
        width = 1 / 1440
        ax.bar(xs, [-m[1] / 1e6 for m in minutes], width=width, color="tab:red", label="longs liquidated")
        ax.bar(xs, [m[2] / 1e6 for m in minutes], width=width, color="tab:green", label="shorts liquidated")
        _shade(ax, [(s, e + dt.timedelta(minutes=1)) for s, e in cascades], "tab:orange")
        ax.set_ylabel("$M", fontsize=7)
        ax.legend(fontsize=6)
    return _render(title, draw)


def liquidation_heatmap(title: str, cells: tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray],
                        realized: tuple[np.ndarray, np.ndarray, np.ndarray], *, snapshot_s: float = 3600.0) -> bytes:
    """The modelled liquidation map as time x price, USD as colour (log scale), from cells
    ``(snapshot epoch s, bin_lo, bin width, usd)``; each snapshot is drawn until the next one. The
    realized forced orders ``(epoch s, fill price, usd)`` are overlaid, marker area by USD."""
    ts, lo, width, usd = (np.asarray(a, dtype=np.float64) for a in cells)
    r_ts, r_price, r_usd = (np.asarray(a, dtype=np.float64) for a in realized)

    def draw(ax):
        from matplotlib.colors import LogNorm
        from matplotlib.patches import Rectangle
        from matplotlib.collections import PatchCollection

        if usd.size == 0:
            ax.text(0.5, 0.5, "no modelled levels: no open-interest growth with trades in the window",
                    ha="center", va="center", fontsize=8, transform=ax.transAxes)
            return
        hours = (ts - ts.min()) / 3600.0
        patches = [Rectangle((h, p), snapshot_s / 3600.0, w) for h, p, w in zip(hours, lo, width, strict=True)]
        positive = usd[usd > 0]
        collection = PatchCollection(patches, cmap="viridis", norm=LogNorm(positive.min(), positive.max()))
        collection.set_array(np.maximum(usd, positive.min()))
        ax.add_collection(collection)
        colorbar = ax.figure.colorbar(collection, ax=ax)
        colorbar.set_label("modelled USD", fontsize=7)
        colorbar.ax.tick_params(labelsize=6)
        if r_ts.size:
            size = 4 + 60 * r_usd / max(float(r_usd.max()), 1e-9)
            ax.scatter((r_ts - ts.min()) / 3600.0, r_price, s=size, c="tab:red", alpha=0.6,
                       label="realized liquidations")
            ax.legend(fontsize=6, loc="upper right")
        right = hours.max() + snapshot_s / 3600.0
        if r_ts.size:
            right = max(right, float((r_ts.max() - ts.min()) / 3600.0) * 1.02)
        ax.set_xlim(0, right)
        prices = np.concatenate([lo, lo + width, r_price])
        ax.set_ylim(float(np.nanmin(prices)), float(np.nanmax(prices)))
        ax.set_xlabel(f"hours after {dt.datetime.fromtimestamp(ts.min(), dt.UTC):%Y-%m-%d %H:%M} UTC", fontsize=7)
        ax.set_ylabel("price", fontsize=7)
    return _render(title, draw)


def _date_axis(ax) -> None:
    from matplotlib.dates import AutoDateLocator, ConciseDateFormatter

    locator = AutoDateLocator(maxticks=7)
    ax.xaxis.set_major_locator(locator)
    ax.xaxis.set_major_formatter(ConciseDateFormatter(locator))


def levels(ts: np.ndarray, close: np.ndarray, rows: list[dict], title: str, *, swing_method: str) -> bytes:
    """The close of the last bars with the swing levels (``method == swing_method``; line width
    ~ strength) and the classic pivot point P."""
    def draw(ax):
        ax.plot(ts[-CHART_BARS:], close[-CHART_BARS:], color="black", linewidth=0.8)
        for row in rows:
            if row["method"] == swing_method:
                color = "tab:green" if row["kind"] == "support" else "tab:red"
                ax.axhline(row["price"], color=color, linewidth=0.4 + 2 * row["strength"] / 100, alpha=0.6)
                ax.annotate(f"{row['name']} {row['strength']:.0f}", (0.995, row["price"]),
                            xycoords=("axes fraction", "data"), fontsize=6, color=color, ha="right", va="bottom")
            elif row["name"] == "P":
                ax.axhline(row["price"], color="tab:blue", linewidth=0.6, linestyle="--")
        _date_axis(ax)
    return _render(title, draw)


def equity(curves: dict[tuple[str, str], tuple[np.ndarray, np.ndarray, np.ndarray]], title: str) -> bytes:
    """Growth of 1 for the signal strategy (solid) and buy-and-hold (dashed), per market (the
    first four), from (ts, strategy return, holding return) per (exchange, symbol)."""
    def draw(ax):
        for index, ((_, symbol), (ts, strategy, holding)) in enumerate(sorted(curves.items())[:4]):
            color = f"C{index}"
            ax.plot(ts, 1 + strategy, color=color, linewidth=0.9, label=f"{symbol} signals")
            ax.plot(ts, 1 + holding, color=color, linewidth=0.7, linestyle="--", label=f"{symbol} hold")
        ax.axhline(1.0, color="grey", linewidth=0.5)
        ax.legend(fontsize=6, ncol=2)
        _date_axis(ax)
    return _render(title, draw)


def stacked_with_lines(stacked: Series, lines_: Series, title: str, *, stacked_unit: str, line_unit: str) -> bytes:
    """(label, x, y) points of ``stacked`` as a stacked area (one band per label, missing points 0)
    and ``lines_`` as lines on the right axis: open interest by venue with funding."""
    def draw(ax):
        xs = sorted({x for _, x, _ in stacked})
        labels = sorted({label for label, _, _ in stacked})
        at = {x: i for i, x in enumerate(xs)}
        ys = np.zeros((len(labels), len(xs)))
        for label, x, y in stacked:
            ys[labels.index(label), at[x]] = 0.0 if y is None else y
        if xs:
            ax.stackplot(xs, ys, labels=labels, alpha=0.7)
        ax.set_ylabel(stacked_unit, fontsize=7)
        ax.legend(fontsize=6, loc="upper left")
        twin = ax.twinx()
        by_label: dict[str, tuple[list, list]] = {}
        for label, x, y in lines_:
            xs_, ys_ = by_label.setdefault(label, ([], []))
            xs_.append(x)
            ys_.append(np.nan if y is None else y)
        for i, (label, (xs_, ys_)) in enumerate(sorted(by_label.items())[:MAX_LINES]):
            emphasis = label == "OI-weighted"   # the cross-venue line; venues dashed in their area's colour
            twin.plot(xs_, ys_, linewidth=1.4 if emphasis else 0.9, color="k" if emphasis else f"C{labels.index(label)}"
                      if label in labels else f"C{i}", linestyle="-" if emphasis else "--", label=label)
        twin.margins(y=0.15)
        twin.set_ylabel(line_unit, fontsize=7)
        twin.tick_params(labelsize=7)
        twin.legend(fontsize=6, loc="upper right")
    return _render(title, draw)


def slippage_curves(points: list[tuple[str, float, float | None]], title: str) -> bytes:
    """Slippage (bps) against order size (USD, log axis), one curve per label (market and side);
    sizes a book could not fill are missing from their curve."""
    def draw(ax):
        by_label: dict[str, tuple[list, list]] = {}
        for label, size, bps in points:
            xs, ys = by_label.setdefault(label, ([], []))
            xs.append(size)
            ys.append(np.nan if bps is None else bps)
        for label, (xs, ys) in sorted(by_label.items())[:MAX_LINES]:
            ax.plot(xs, ys, marker="o", markersize=3, linewidth=0.8, label=label)
        ax.set_xscale("log")
        ax.set_xlabel("market order, USD", fontsize=7)
        ax.set_ylabel("slippage vs mid, bps", fontsize=7)
        ax.legend(fontsize=6)
    return _render(title, draw)


# --- report figures ----------------------------------------------------------------------------

REPORT_PANEL = (10.0, 2.8)   # inches per panel: wide enough for a day of minutes
REPORT_DPI = 90
LONG_COLOR, SHORT_COLOR, SPAN_COLOR = "tab:red", "tab:green", "tab:orange"


@dataclass(frozen=True)
class Panel:
    """One axes of a figure: ``draw(ax)`` fills it, or ``missing`` says why there is nothing to draw."""

    title: str
    draw: Callable[[object], None] | None = None
    missing: str = ""


@dataclass(frozen=True)
class TimeSeries:
    ts: np.ndarray          # datetime64
    values: np.ndarray      # float, NaN where undefined


@dataclass(frozen=True)
class Span:
    start: np.datetime64
    end: np.datetime64


def render_panels(title: str, panels: Sequence[Panel], *, sharex: bool = True, panel_size=REPORT_PANEL,
                  dpi: int = REPORT_DPI) -> bytes:
    """Stack ``panels`` vertically in one PNG; panels without data show their ``missing`` text."""
    import matplotlib

    # Agg renders without a display: reports and assets run headless, in daemons and containers.
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(len(panels), 1, figsize=(panel_size[0], panel_size[1] * len(panels)), dpi=dpi,
                             sharex=sharex and all(p.draw for p in panels), squeeze=False)
    try:
        for ax, panel in zip(axes[:, 0], panels):
            ax.set_title(panel.title, fontsize=9, loc="left")
            ax.tick_params(labelsize=7)
            if panel.draw is None:
                ax.set_axis_off()
                ax.text(0.5, 0.5, panel.missing or "no data", ha="center", va="center", fontsize=9, wrap=True,
                        transform=ax.transAxes, color="dimgray")
            else:
                panel.draw(ax)
                _date_axis(ax)
        fig.suptitle(title, fontsize=11)
        fig.tight_layout()
        png = io.BytesIO()
        fig.savefig(png, format="png")
        return png.getvalue()
    finally:
        plt.close(fig)


def _shade_cascades(ax, spans: Sequence[Span]) -> None:
    _shade(ax, [(span.start, span.end) for span in spans], SPAN_COLOR)


def _has_values(series: TimeSeries | None) -> bool:
    return series is not None and len(series.ts) > 0 and bool(np.isfinite(series.values).any())


def cascade_price_depth_liquidations(title: str, price: TimeSeries | None, depth_2pct_usd: TimeSeries | None,
                                     liquidated_long_usd: TimeSeries | None, liquidated_short_usd: TimeSeries | None,
                                     *, cascades: Sequence[Span] = (), depth_note: str = "",
                                     liquidation_note: str = "") -> bytes:
    """Three panels on one time axis: price, ±2 % book depth in USD, liquidated USD per minute
    (longs down, shorts up); detected cascades shaded in each."""
    def price_panel(ax):
        ax.plot(price.ts, price.values, color="black", linewidth=0.9)
        _shade_cascades(ax, cascades)
        ax.set_ylabel("price", fontsize=8)

    def depth_panel(ax):
        ax.plot(depth_2pct_usd.ts, depth_2pct_usd.values / 1e6, color="tab:blue", linewidth=0.9)
        _shade_cascades(ax, cascades)
        ax.set_ylabel("$M within ±2%", fontsize=8)
        ax.set_ylim(bottom=0)

    def liquidation_panel(ax):
        width = 1 / 1440   # one minute, in days
        if _has_values(liquidated_long_usd):
            ax.bar(liquidated_long_usd.ts, -liquidated_long_usd.values / 1e6, width=width, color=LONG_COLOR,
                   label="longs liquidated")
        if _has_values(liquidated_short_usd):
            ax.bar(liquidated_short_usd.ts, liquidated_short_usd.values / 1e6, width=width, color=SHORT_COLOR,
                   label="shorts liquidated")
        _shade_cascades(ax, cascades)
        ax.axhline(0, color="grey", linewidth=0.5)
        ax.set_ylabel("$M per minute", fontsize=8)
        ax.legend(fontsize=7, loc="lower left")

    has_liquidations = _has_values(liquidated_long_usd) or _has_values(liquidated_short_usd)
    return render_panels(title, [
        Panel("price (1-minute close)", price_panel if _has_values(price) else None, "no one-minute bars"),
        Panel(f"book depth within ±2% of mid{depth_note}", depth_panel if _has_values(depth_2pct_usd) else None,
              "no book depth for this market"),
        Panel(f"liquidations{liquidation_note}", liquidation_panel if has_liquidations else None,
              "no liquidations published for this market"),
    ])


def stress_index(title: str, index_by_asset: Mapping[str, TimeSeries], thresholds: Mapping[str, float], *,
                 cascades: Sequence[Span] = (), missing: str = "") -> bytes:
    """The 0-100 market stress index per asset with horizontal threshold lines (label -> level)."""
    def draw(ax):
        for asset, series in sorted(index_by_asset.items()):
            ax.plot(series.ts, series.values, linewidth=0.9, label=asset)
        for index, (label, level) in enumerate(sorted(thresholds.items(), key=lambda item: item[1])):
            ax.axhline(level, color="black", linestyle=("--", ":", "-.")[index % 3], linewidth=0.8,
                       label=f"{label} ({level:g})")
        _shade_cascades(ax, cascades)
        ax.set_ylim(0, 100)
        ax.set_ylabel("stress index", fontsize=8)
        ax.legend(fontsize=7, loc="upper left", ncol=2)

    has_data = any(_has_values(series) for series in index_by_asset.values())
    return render_panels(title, [Panel("stress index 0-100 (NULL minutes not drawn)", draw if has_data else None,
                                       missing or "the stress index is NULL at every minute")])


def open_interest_by_venue(title: str, usd_by_asset_venue: Mapping[str, Mapping[str, TimeSeries]], *,
                           cascades_by_asset: Mapping[str, Sequence[Span]] | None = None) -> bytes:
    """One panel per asset: open interest in USD of each venue, one line each; the asset's
    cascades shaded."""
    def panel(by_venue: Mapping[str, TimeSeries], cascades: Sequence[Span]):
        def draw(ax):
            for venue, series in sorted(by_venue.items()):
                ax.plot(series.ts, series.values / 1e9, linewidth=0.9, label=venue)
            _shade_cascades(ax, cascades)
            ax.set_ylabel("$B", fontsize=8)
            ax.legend(fontsize=7, loc="lower left", ncol=3)
        return draw

    panels = [Panel(f"{asset} open interest (USD, one side) by venue",
                    panel(by_venue, (cascades_by_asset or {}).get(asset, ()))
                    if any(_has_values(s) for s in by_venue.values()) else None,
                    f"no open interest for {asset}") for asset, by_venue in sorted(usd_by_asset_venue.items())]
    return render_panels(title, panels or [Panel("open interest", None, "no open interest in this warehouse")])


@dataclass(frozen=True)
class PriceLevel:
    name: str               # S1.. / R1.. (swing levels), P (classic pivot)
    price: float
    kind: str               # 'support' | 'resistance'
    strength: float | None  # 0-100; None for pivot points


@dataclass(frozen=True)
class LevelsChart:
    close: TimeSeries
    levels: Sequence[PriceLevel]
    as_of: str              # what the levels are as of, for the panel title


def levels_on_price(title: str, charts: Mapping[str, LevelsChart]) -> bytes:
    """One panel per market: the close with its support (green) and resistance (red) levels, line
    width by strength, and the classic pivot point P dashed."""
    def panel(chart: LevelsChart):
        def draw(ax):
            ax.plot(chart.close.ts, chart.close.values, color="black", linewidth=0.9)
            for level in chart.levels:
                if level.strength is None:
                    ax.axhline(level.price, color="tab:blue", linestyle="--", linewidth=0.7)
                    continue
                color = SHORT_COLOR if level.kind == "support" else LONG_COLOR
                ax.axhline(level.price, color=color, alpha=0.7, linewidth=0.5 + 2.5 * level.strength / 100)
                ax.annotate(f"{level.name} {level.price:,.6g} ({level.strength:.0f})", (1.0, level.price),
                            xycoords=("axes fraction", "data"), xytext=(2, 0), textcoords="offset points",
                            fontsize=6, color=color, va="center")
            ax.set_ylabel("close", fontsize=8)
        return draw

    panels = [Panel(f"{market}: levels as of {chart.as_of} (P dashed)",
                    panel(chart) if _has_values(chart.close) else None, f"no bars for {market}")
              for market, chart in sorted(charts.items())]
    return render_panels(title, panels or [Panel("levels", None, "no support/resistance levels in this warehouse")],
                         sharex=False)


@dataclass(frozen=True)
class EquityCurve:
    ts: np.ndarray
    strategy: np.ndarray    # growth of 1 following the signals
    holding: np.ndarray     # growth of 1 holding


def signal_equity_vs_holding(title: str, curves_by_timeframe: Mapping[str, Mapping[str, EquityCurve]]) -> bytes:
    """One panel per timeframe: growth of 1 following the signals (solid) against holding (dashed),
    one colour per market."""
    def panel(curves: Mapping[str, EquityCurve]):
        def draw(ax):
            for index, (market, curve) in enumerate(sorted(curves.items())):
                ax.plot(curve.ts, curve.strategy, color=f"C{index}", linewidth=1.0, label=f"{market} signals")
                ax.plot(curve.ts, curve.holding, color=f"C{index}", linewidth=0.8, linestyle="--",
                        label=f"{market} holding")
            ax.axhline(1.0, color="grey", linewidth=0.5)
            ax.set_ylabel("growth of 1", fontsize=8)
            ax.legend(fontsize=7, loc="upper left", ncol=3)
        return draw

    panels = [Panel(f"{timeframe} signals vs holding", panel(curves) if curves else None,
                    f"no {timeframe} signals (fewer bars than the indicators' warm-up)")
              for timeframe, curves in curves_by_timeframe.items()]
    return render_panels(title, panels or [Panel("signals", None, "no trading signals in this warehouse")],
                         sharex=False)


@dataclass(frozen=True)
class VenueTimeline:
    """One venue in a cross-venue cascade: liquidated USD per bar (``bar_s`` long, ts = bar start),
    its trade price, and when its price first moved the cascade threshold (NaT if never)."""

    liquidated_usd: TimeSeries
    price: TimeSeries
    threshold_crossing: np.datetime64


def cross_venue_cascade_timeline(title: str, venues: Mapping[str, VenueTimeline], first_mover: str | None,
                                 span: Span, *, bar_s: float = 60.0) -> bytes:
    """One row per venue on one time axis: its liquidated USD per bar and, on a second axis, its
    price; the episode shaded, each venue's threshold crossing a dashed line and the first mover's
    row and line in red, so who moved first and whose liquidations followed reads at a glance."""
    def row(venue: str, timeline: VenueTimeline):
        def draw(ax):
            mover = venue == first_mover
            if _has_values(timeline.liquidated_usd):
                ax.bar(timeline.liquidated_usd.ts, timeline.liquidated_usd.values / 1e6, width=bar_s / 86_400,
                       align="edge", color="tab:purple", alpha=0.7, label="liquidated $M")
            ax.set_ylabel("$M liquidated", fontsize=8)
            ax.set_ylim(bottom=0)
            _shade_cascades(ax, [span])
            if not np.isnat(timeline.threshold_crossing):
                ax.axvline(timeline.threshold_crossing, color="tab:red" if mover else "black", linestyle="--",
                           linewidth=1.2 if mover else 0.8, label="moved the threshold")
            price_ax = ax.twinx()
            if _has_values(timeline.price):
                price_ax.plot(timeline.price.ts, timeline.price.values, color="tab:red" if mover else "black",
                              linewidth=0.9)
            price_ax.set_ylabel("price", fontsize=8)
            price_ax.tick_params(labelsize=7)
            ax.legend(fontsize=7, loc="upper left")
        return draw

    panels = [Panel(f"{venue}{' - first mover' if venue == first_mover else ''}", row(venue, timeline)
                    if _has_values(timeline.price) or _has_values(timeline.liquidated_usd) else None,
                    f"no trades or liquidations from {venue} in this window")
              for venue, timeline in sorted(venues.items())]
    return render_panels(title, panels or [Panel("venues", None, "no venue took part in this cascade")],
                         panel_size=(REPORT_PANEL[0], 2.2), dpi=DPI)
