"""Small PNG charts embedded in Dagster metadata (the event log keeps them, so keep them small)."""

from __future__ import annotations

import base64
import io

import dagster as dg


def png_markdown(draw, title: str, size=(7, 2.6)) -> dg.MetadataValue:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=size, dpi=80)
    draw(ax)
    ax.set_title(title, fontsize=9)
    ax.tick_params(labelsize=7)
    fig.tight_layout()
    buf = io.BytesIO()
    fig.savefig(buf, format="png")
    plt.close(fig)
    return dg.MetadataValue.md(f"![{title}](data:image/png;base64,{base64.b64encode(buf.getvalue()).decode()})")


def table_preview(columns: list[str], rows: list[tuple]) -> dg.MetadataValue:
    """Markdown table (Dagster's table metadata rejects datetimes; strings are universal)."""
    def cell(v):
        return f"{v:.6g}" if isinstance(v, float) else str(v)

    lines = ["| " + " | ".join(columns) + " |", "|" + "---|" * len(columns)]
    lines += ["| " + " | ".join(cell(v) for v in row) + " |" for row in rows]
    return dg.MetadataValue.md("\n".join(lines))
