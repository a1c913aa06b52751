"""Small PNG charts of analytics tables: data in, PNG bytes out, no I/O.

Dagster keeps every picture in its event log (``dagster_project.tables`` embeds them in the
materialization metadata), so figures are small: 7 x 2.6 inches at 80 dpi by default.
"""

from __future__ import annotations

import datetime as dt
import io
from collections.abc import Callable

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
