"""The audit report: one self-contained `report.html` (PNG figures inline, base64) and `audit.json`.

The page's layout (header, summary cards, contents, then one block per section) is here; each
section's body comes from its renderer (`l2rw_jax.audit.renderers`), its figures from
`l2rw_jax.audit.figures`. Both files are written atomically (tmp file + os.replace).
"""

from __future__ import annotations

import html
import json
import math
import os
from typing import Sequence

import numpy as np

from l2rw_jax import workdir
from l2rw_jax.audit import renderers


# ------------------------------------------------------------------------- files
def write_atomic(path: str, text: str) -> None:
    """Writes `text` to `path` atomically (`l2rw_jax.workdir.atomic_write`)."""
    workdir.atomic_write(path, lambda f: f.write(text))


def to_jsonable(obj):
    """numpy -> Python; non-finite floats -> None (JSON has no inf/NaN: null = undefined/not found)."""
    if isinstance(obj, dict):
        return {str(k): to_jsonable(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [to_jsonable(v) for v in obj]
    if isinstance(obj, np.ndarray):
        return to_jsonable(obj.tolist())
    if isinstance(obj, (np.bool_, bool)):
        return bool(obj)
    if isinstance(obj, (np.integer, int)):
        return int(obj)
    if isinstance(obj, (np.floating, float)):
        return float(obj) if math.isfinite(obj) else None
    return obj


def write_report(out_dir: str, results: dict, sections: Sequence) -> tuple[str, str]:
    """Writes `<out_dir>/audit.json` (`results`), `<out_dir>/report.html` (`render_html` of
    `results["meta"]` and `sections`) and each section's `files`; returns the first two paths."""
    os.makedirs(out_dir, exist_ok=True)
    for s in sections:
        for name, write in s.files.items():
            write(os.path.join(out_dir, name))
    json_path = os.path.join(out_dir, "audit.json")
    html_path = os.path.join(out_dir, "report.html")
    jsonable = to_jsonable(results)
    write_atomic(json_path, json.dumps(jsonable, indent=1, allow_nan=False))
    write_atomic(html_path, render_html(jsonable["meta"], sections))
    return json_path, html_path


# ------------------------------------------------------------------------- html
_CSS = """
body{font-family:-apple-system,'Segoe UI',Helvetica,Arial,sans-serif;max-width:1180px;margin:24px auto;
     padding:0 20px;color:#222;line-height:1.45;background:#fafafa}
h1{border-bottom:3px solid #4c72b0;padding-bottom:6px}
h2{margin-top:42px;border-bottom:1px solid #bbb;padding-bottom:4px;color:#2b4a7a}
h3{margin-top:24px;color:#333}
.caption{color:#555;font-size:0.92em;max-width:980px}
.cards{display:flex;flex-wrap:wrap;gap:12px;margin:16px 0}
.card{background:#fff;border:1px solid #ddd;border-radius:6px;padding:10px 16px;min-width:150px}
.card .v{font-size:1.5em;font-weight:600;color:#2b4a7a}.card .k{font-size:0.8em;color:#666}
table{border-collapse:collapse;margin:10px 0;background:#fff;font-size:0.9em}
th,td{border:1px solid #ccc;padding:4px 9px;text-align:right}th{background:#eef2f8}
td.l,th.l{text-align:left}
.row{display:flex;flex-wrap:wrap;gap:18px;align-items:flex-start}
figure{margin:8px 0;background:#fff;border:1px solid #e2e2e2;border-radius:4px;padding:6px}
figcaption{font-size:0.85em;color:#555;max-width:560px}
img{max-width:100%;display:block}
.notes{background:#fff8e1;border-left:4px solid #f0b400;padding:8px 14px;font-size:0.9em}
nav a{margin-right:14px}
.suspects{display:grid;grid-template-columns:repeat(auto-fill,minmax(270px,1fr));gap:12px;margin:12px 0}
.suspect{background:#fff;border:1px solid #ddd;border-radius:6px;padding:8px 10px;font-size:0.85em}
.suspect .sh{font-weight:600;color:#2b4a7a;margin-bottom:4px}.suspect .sx{float:left;width:96px;margin:0 8px 4px 0}.suspect .sx img{width:96px;height:96px;image-rendering:pixelated}
.suspect .sx img[alt=saliency]{width:48px;height:48px;margin-top:4px}
.suspect table{font-size:1em;margin:0;background:none}.suspect td{border:none;padding:1px 4px}
.suspect .sr{clear:both;color:#555;margin:4px 0}.suspect svg.spark{vertical-align:middle}.suspect .nn{display:flex;gap:6px}
.suspect .nn figure{margin:0;padding:2px}.suspect .nn img{width:48px;height:48px;image-rendering:pixelated}.suspect .nn figcaption{font-size:0.85em}
.truth{clear:both;font-weight:600;padding:2px 6px;border-radius:3px;margin-top:4px}.truth.noisy{background:#fde2e2;color:#a11}.truth.clean{background:#e3f4e3;color:#1a6b1a}
"""


def render_html(meta: dict, sections: Sequence) -> str:
    """The report page: a header with summary cards, then one block per section, in order.

    Args:
      meta: `audit.json["meta"]` (title, run, sizes, seconds, class_names).
      sections: `l2rw_jax.audit.sections.Section`s (name, title, results, figures, notes); each
        is drawn by `renderers.RENDERERS[name]`, or by `renderers.render_generic` (scalars and
        figures).
    """
    names = meta["class_names"]
    title = html.escape(meta["title"])
    out = [
        f"<!DOCTYPE html><html><head><meta charset='utf-8'><title>{title}</title>"
        f"<style>{_CSS}</style></head><body>",
        f"<h1>{title}</h1>",
        "<p class='caption'>A trained classifier looked at beyond its accuracy (Stock &amp; Cissé, "
        "ECCV 2018): its mistakes, its robustness to adversarial perturbation, the biases its "
        "prototypes and criticisms reveal, and the training labels it finds suspect. Written by "
        "<code>l2rw_jax.audit.run_audit</code>.</p>",
    ]
    run = meta.get("run") or {}
    if run:
        out.append(
            "<p class='caption'>"
            + " · ".join(
                f"<b>{html.escape(str(k))}</b>: {html.escape(str(v))}" for k, v in run.items()
            )
            + "</p>"
        )
    out.append(
        "<nav>"
        + "".join(
            f"<a href='#{s.name}'>{i}. {html.escape(s.title)}</a>"
            for i, s in enumerate(sections, 1)
        )
        + "</nav>"
    )
    cards, bodies = [], []
    for i, s in enumerate(sections, 1):
        render = renderers.RENDERERS.get(s.name, renderers.render_generic)
        c, body = render(to_jsonable(s.results), s.figures, names)
        cards += c
        bodies.append(f"<h2 id='{html.escape(s.name)}'>{i}. {html.escape(s.title)}</h2>")
        if s.notes:
            bodies.append(
                "<div class='notes'><b>Notes</b><ul>"
                + "".join(f"<li>{html.escape(n)}</li>" for n in s.notes)
                + "</ul></div>"
            )
        bodies += body
    out.append("<div class='cards'>" + "".join(cards) + "</div>")
    secs = meta["seconds"]
    parts = html.escape(
        ", ".join(f"{s.title.lower()} {secs.get(s.name, 0):.0f} s" for s in sections)
    )
    out.append(
        f"<p class='caption'>{int(meta['n_test'])} test and {int(meta['n_train'])} training "
        f"examples; "
        f"audit took {secs.get('total', 0):.0f} s ({parts}). Every number on this page is in "
        "<code>audit.json</code>.</p>"
    )
    out += bodies
    out.append("</body></html>")
    return "\n".join(out)
