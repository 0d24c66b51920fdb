"""The report's HTML building blocks: an embedded image, a figure, a table, a summary card and a
number, every user string escaped. The section renderers (`renderers`, `data_renderers`) draw
with them."""

from __future__ import annotations

import html
from typing import Sequence


def img(b64: str, alt: str) -> str:
    return f'<img src="data:image/png;base64,{html.escape(b64)}" alt="{html.escape(alt)}">'


def figure(b64: str | None, caption: str, alt: str) -> str:
    if b64 is None:
        return ""
    return f"<figure>{img(b64, alt)}<figcaption>{caption}</figcaption></figure>"


def table(header: Sequence[str], rows: Sequence[Sequence], left_cols: int = 1) -> str:
    def cell(v, tag, i):
        cls = ' class="l"' if i < left_cols else ""
        if isinstance(v, float):
            v = f"{v:.4f}"
        return f"<{tag}{cls}>{html.escape('—' if v is None else str(v))}</{tag}>"

    head = "".join(cell(h, "th", i) for i, h in enumerate(header))
    body = "".join(
        "<tr>" + "".join(cell(v, "td", i) for i, v in enumerate(r)) + "</tr>" for r in rows
    )
    return f"<table><tr>{head}</tr>{body}</table>"


def card(value: str, key: str) -> str:
    return f'<div class="card"><div class="v">{html.escape(value)}</div><div class="k">{html.escape(key)}</div></div>'


def fmt(v, spec=".3f"):
    return "—" if v is None else format(v, spec)


def sparkline(values: Sequence, title: str, width: int = 96, height: int = 24) -> str:
    """An inline SVG line of ``values`` (floats, None = unknown: a gap, never 0), left to right
    at equal steps, ``width`` x ``height`` CSS pixels; the vertical scale runs from
    ``min(0, lowest)`` (a grey baseline at 0) to the highest value. A value with no known
    neighbour is a dot. ``title`` (escaped) is its tooltip. Empty when no value is known.
    Nothing outside the page: no URL, no script."""
    known = [(i, float(v)) for i, v in enumerate(values) if v is not None]
    if not known:
        return ""
    lo = min(0.0, min(v for _, v in known))
    hi = max(v for _, v in known)
    span = hi - lo if hi > lo else 1.0
    pad = 2.0
    step = (width - 2 * pad) / max(len(values) - 1, 1)

    def xy(i, v):
        return pad + i * step, height - pad - (v - lo) / span * (height - 2 * pad)

    zero_y = xy(0, 0.0)[1]
    parts = [
        f"<line x1='0' y1='{zero_y:.1f}' x2='{width}' y2='{zero_y:.1f}' stroke='#ccc' "
        "stroke-width='1'/>"
    ]
    runs, run = [], []
    for i, v in known:
        if run and i != run[-1][0] + 1:
            runs.append(run)
            run = []
        run.append((i, v))
    runs.append(run)
    for run in runs:
        pts = [xy(i, v) for i, v in run]
        if len(pts) == 1:
            parts.append(
                f"<circle cx='{pts[0][0]:.1f}' cy='{pts[0][1]:.1f}' r='1.5' fill='#2b4a7a'/>"
            )
        else:
            points = " ".join(f"{x:.1f},{y:.1f}" for x, y in pts)
            parts.append(
                f"<polyline points='{points}' fill='none' stroke='#2b4a7a' stroke-width='1.5'/>"
            )
    return (
        f"<svg class='spark' width='{width}' height='{height}' viewBox='0 0 {width} {height}' "
        f"role='img' aria-label='{html.escape(title, quote=True)}'><title>{html.escape(title)}"
        f"</title>{''.join(parts)}</svg>"
    )
