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
