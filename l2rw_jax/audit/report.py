"""The audit report: one self-contained `report.html` (PNG figures inline, base64) and `audit.json`.

Figures are drawn with matplotlib's object API (`matplotlib.figure.Figure`, Agg), never pyplot,
so no global figure state is touched. Both files are written atomically (tmp file + os.replace).
"""

from __future__ import annotations

import base64
import html
import io
import json
import math
import os
from typing import Sequence

import numpy as np

from l2rw_jax import workdir

_DPI = 80


def Figure(**kwargs):  # noqa: N802 -- stands for matplotlib.figure.Figure at every call site.
    """``matplotlib.figure.Figure(**kwargs)``, imported on first use: matplotlib takes 0.4 s to
    import, and `import l2rw_jax` stays cheap (the report is the only user)."""
    from matplotlib.figure import Figure as MplFigure

    return MplFigure(**kwargs)


# How the robustness section names what the attacks ascend (attacks.py explains the choice). A
# result without the key predates the option and used the cross-entropy.
_OBJECTIVE_TEXT = {
    "margin": (
        "The steps ascend the logit margin max<sub>j≠y</sub> z<sub>j</sub> − z<sub>y</sub> "
        "(Carlini &amp; Wagner 2017), whose gradient does not saturate on confident predictions "
        "and whose sign, hence every result, does not change when the logits are multiplied by a "
        "positive constant. "
    ),
    "cross_entropy": (
        "The steps ascend the cross-entropy, whose float32 gradient loses its true-class part past "
        "a logit margin of about 17 and vanishes past about 88: confident predictions can look "
        "robust because the attack stalls, so these numbers may overstate robustness. "
    ),
}


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


# ------------------------------------------------------------------------- figures
def _png(fig: Figure) -> str:
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=_DPI, bbox_inches="tight")
    return base64.b64encode(buf.getvalue()).decode("ascii")


def _show(ax, img_HxWxC, title=None, fontsize=8, color="black"):
    if img_HxWxC.shape[-1] == 1:
        ax.imshow(img_HxWxC[..., 0], cmap="gray", vmin=0.0, vmax=1.0, interpolation="nearest")
    else:
        ax.imshow(np.clip(img_HxWxC, 0, 1), interpolation="nearest")
    ax.set_xticks([])
    ax.set_yticks([])
    if title:
        ax.set_title(title, fontsize=fontsize, color=color)


def fig_confusion(cm_KxK: np.ndarray, class_names: Sequence[str]) -> str:
    k = cm_KxK.shape[0]
    size = min(max(3.6, 0.32 * k + 1.2), 9.0)
    fig = Figure(figsize=(size + 0.8, size))
    ax = fig.add_subplot()
    row_sum = np.maximum(cm_KxK.sum(axis=1, keepdims=True), 1)
    im = ax.imshow(cm_KxK / row_sum, cmap="Blues", vmin=0, vmax=1)
    if k <= 15:
        for i in range(k):
            for j in range(k):
                if cm_KxK[i, j]:
                    ax.text(
                        j,
                        i,
                        str(cm_KxK[i, j]),
                        ha="center",
                        va="center",
                        fontsize=7,
                        color="white" if cm_KxK[i, j] / row_sum[i, 0] > 0.5 else "black",
                    )
    ticks = range(k) if k <= 30 else range(0, k, max(1, k // 20))
    ax.set_xticks(
        list(ticks), [class_names[t] for t in ticks], fontsize=7, rotation=90 if k > 10 else 0
    )
    ax.set_yticks(list(ticks), [class_names[t] for t in ticks], fontsize=7)
    ax.set_xlabel("predicted class")
    ax.set_ylabel("true class")
    fig.colorbar(im, ax=ax, fraction=0.046, label="fraction of the true class")
    return _png(fig)


def fig_reliability(ece: dict) -> str:
    m = ece["num_bins"]
    edges = np.asarray(ece["edges"])
    centers = 0.5 * (edges[:-1] + edges[1:])
    acc = np.array([np.nan if a is None else a for a in ece["accuracy"]])
    conf = np.array([np.nan if c is None else c for c in ece["confidence"]])
    fig = Figure(figsize=(4.6, 5.2))
    ax, ax2 = fig.subplots(2, 1, gridspec_kw={"height_ratios": [3, 1]}, sharex=True)
    ax.bar(
        centers, np.nan_to_num(acc), width=1.0 / m, edgecolor="k", color="#4c72b0", label="accuracy"
    )
    lo, hi = np.fmin(acc, conf), np.fmax(acc, conf)
    ax.bar(
        centers,
        np.nan_to_num(hi - lo),
        bottom=np.nan_to_num(lo),
        width=1.0 / m,
        fill=False,
        edgecolor="#c44e52",
        hatch="///",
        lw=0.8,
        label="gap |accuracy - confidence|",
    )
    ax.plot([0, 1], [0, 1], "k--", lw=1, label="perfect calibration")
    ax.set_ylabel("accuracy in bin")
    ax.set_ylim(0, 1)
    ax.legend(fontsize=7, loc="upper left")
    ax.set_title(f"ECE = {ece['ece']:.4f} ({m} equal-width bins)", fontsize=9)
    ax2.bar(centers, ece["count"], width=1.0 / m, color="gray", edgecolor="k")
    ax2.set_yscale("log")
    ax2.set_xlabel("confidence (max softmax probability)")
    ax2.set_ylabel("count")
    ax2.set_xlim(0, 1)
    return _png(fig)


def fig_per_class(acc: dict, class_names: Sequence[str]) -> str:
    ks = sorted(acc)
    fig = Figure(figsize=(max(4.0, 0.35 * len(ks) + 1.5), 2.8))
    ax = fig.add_subplot()
    vals = [acc[k] for k in ks]
    worst = min(ks, key=lambda k: acc[k])
    ax.bar(range(len(ks)), vals, color=["#c44e52" if k == worst else "#4c72b0" for k in ks])
    ax.axhline(np.mean(vals), color="k", ls="--", lw=1, label=f"mean {np.mean(vals):.3f}")
    ax.set_xticks(
        range(len(ks)), [class_names[k] for k in ks], fontsize=7, rotation=90 if len(ks) > 10 else 0
    )
    lo = min(vals)
    ax.set_ylim(max(0.0, lo - 0.1 * (1 - lo) - 0.02), 1.0)
    ax.set_ylabel("accuracy")
    ax.legend(fontsize=7, loc="lower right")
    return _png(fig)


def fig_mistake(img, attr, cam, neighbors, entry: dict, class_names) -> str:
    k = len(neighbors)
    ncol = 2 + (cam is not None) + k
    fig = Figure(figsize=(1.3 * ncol, 2.1))
    axes = fig.subplots(1, ncol)
    _show(axes[0], img, f"true: {class_names[entry['label']]}", fontsize=8)
    axes[0].set_xlabel(
        "\n".join(f"{class_names[t['class']]}: {t['prob']:.3f}" for t in entry["top3"]),
        fontsize=7,
        color="#c44e52",
    )
    a = attr.sum(axis=-1)
    lim = float(np.max(np.abs(a))) or 1.0
    axes[1].imshow(a, cmap="bwr", vmin=-lim, vmax=lim)
    axes[1].set_xticks([])
    axes[1].set_yticks([])
    axes[1].set_title("integrated grad.", fontsize=7)
    axes[1].set_xlabel(
        f"rel. compl. err\n{entry['ig_relative_completeness_error']:.1e}", fontsize=7
    )
    col = 2
    if cam is not None:
        gray = img.mean(axis=-1)
        axes[col].imshow(gray, cmap="gray", vmin=0, vmax=1)
        axes[col].imshow(cam / (cam.max() or 1.0), cmap="jet", alpha=0.5, vmin=0, vmax=1)
        axes[col].set_xticks([])
        axes[col].set_yticks([])
        axes[col].set_title("Grad-CAM", fontsize=7)
        col += 1
    for j, nb in enumerate(entry["neighbors"]):
        _show(axes[col + j], neighbors[j], f"neighbour {j + 1}", fontsize=7)
        axes[col + j].set_xlabel(
            f"label {class_names[nb['label']]}\nd = {nb['distance']:.2f}", fontsize=7
        )
    return _png(fig)


def fig_curve(curve: dict) -> str:
    fig = Figure(figsize=(4.6, 3.2))
    ax = fig.add_subplot()
    ax.plot(curve["epsilons"], curve["fgsm_accuracy"], "o-", label="FGSM")
    ax.plot(curve["epsilons"], curve["pgd_accuracy"], "s-", label="PGD")
    ax.axhline(curve["clean_accuracy"], color="gray", ls=":", lw=1, label="clean")
    ax.set_xlabel("epsilon (L-inf, raw pixel units)")
    ax.set_ylabel("accuracy under attack")
    ax.set_ylim(0, 1.02)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    return _png(fig)


def fig_min_eps(min_eps: np.ndarray, eps_max: float) -> str:
    fig = Figure(figsize=(4.6, 3.0))
    ax = fig.add_subplot()
    finite = min_eps[np.isfinite(min_eps)]
    ax.hist(finite, bins=np.linspace(0, eps_max, 26), color="#4c72b0", edgecolor="k")
    n_inf = int((~np.isfinite(min_eps)).sum())
    ax.set_title(f"{len(finite)} examples; {n_inf} not fooled at eps_max = {eps_max:g}", fontsize=8)
    ax.set_xlabel("minimal adversarial epsilon")
    ax.set_ylabel("examples")
    return _png(fig)


def fig_class_bars(values: dict, class_names, ylabel: str) -> str:
    ks = sorted(values, key=int)
    fig = Figure(figsize=(min(max(4.0, 0.3 * len(ks) + 1.5), 11.0), 2.6))
    ax = fig.add_subplot()
    vals = [np.nan if values[k] is None or not np.isfinite(values[k]) else values[k] for k in ks]
    ax.bar(range(len(ks)), vals, color="#4c72b0")  # undefined/infinite medians left blank
    if len(ks) <= 30:
        ax.set_xticks(
            range(len(ks)),
            [class_names[int(k)] for k in ks],
            fontsize=7,
            rotation=90 if len(ks) > 10 else 0,
        )
    ax.set_xlabel("true class")
    ax.set_ylabel(ylabel)
    return _png(fig)


def fig_adversarial(x_raw, x_adv_raw, pred, pred_adv, eps, class_names) -> str:
    n = len(x_raw)
    fig = Figure(figsize=(1.3 * n, 4.2))
    axes = fig.subplots(3, n, squeeze=False)
    for j in range(n):
        _show(axes[0, j], x_raw[j], f"pred {class_names[pred[j]]}", fontsize=7)
        _show(
            axes[1, j],
            x_adv_raw[j],
            f"-> {class_names[pred_adv[j]]}  eps={eps[j]:.3f}",
            fontsize=7,
            color="#c44e52",
        )
        d = (x_adv_raw[j] - x_raw[j]).mean(axis=-1)
        lim = float(np.max(np.abs(d))) or 1.0
        axes[2, j].imshow(d, cmap="bwr", vmin=-lim, vmax=lim)
        axes[2, j].set_xticks([])
        axes[2, j].set_yticks([])
    axes[0, 0].set_ylabel("original", fontsize=8)
    axes[1, 0].set_ylabel("adversarial", fontsize=8)
    axes[2, 0].set_ylabel("perturbation", fontsize=8)
    return _png(fig)


_SIDE_LABELS = {
    "robust_prototypes": "robust:\nprototypes",
    "robust_criticisms": "robust:\ncriticisms",
    "mmd_prototypes": "MMD:\nprototypes",
    "mmd_criticisms": "MMD:\ncriticisms",
}


def fig_prototypes(sides: dict, class_name: str) -> str:
    n = max(len(v) for v in sides.values())
    fig = Figure(figsize=(0.9 * (n + 1) + 0.6, 0.95 * len(sides) + 0.3))
    axes = fig.subplots(len(sides), n + 1, squeeze=False)
    for i, (side, imgs) in enumerate(sides.items()):
        for j in range(n + 1):
            ax = axes[i, j]
            if j < len(imgs):
                _show(ax, imgs[j])
            elif j == n and len(imgs):
                _show(ax, imgs.mean(axis=0), "mean" if i == 0 else None)
                for s in ax.spines.values():
                    s.set_color("#c44e52")
                    s.set_linewidth(2)
            else:
                ax.axis("off")
        axes[i, 0].set_ylabel(
            _SIDE_LABELS.get(side, side), fontsize=7, rotation=0, ha="right", va="center"
        )
    fig.suptitle(f"class {class_name}", fontsize=9, y=1.0)
    return _png(fig)


def fig_suspects(imgs, entries: list, class_names) -> str:
    n = len(imgs)
    ncol = min(8, max(n, 1))
    nrow = max(1, math.ceil(n / ncol))
    first = entries[0] if entries else {}
    lines = 1 + sum(first.get(k) is not None for k in ("mean_weight", "mean_meta_grad"))
    fig = Figure(figsize=(1.45 * ncol, (1.45 + 0.15 * lines) * nrow))
    axes = fig.subplots(nrow, ncol, squeeze=False)
    for ax in axes.ravel():
        ax.axis("off")
    for j, e in enumerate(entries):
        ax = axes[j // ncol, j % ncol]
        ax.axis("on")
        w = "" if e["mean_weight"] is None else f"\nw={e['mean_weight']:.2e}"
        if e.get("mean_meta_grad") is not None:
            w += f"\ng={e['mean_meta_grad']:+.2f}"
        color = {True: "#c44e52", False: "#2a7f2a", None: "black"}[e["is_noisy"]]
        _show(
            ax,
            imgs[j],
            f"given {class_names[e['given_label']]}, pred {class_names[e['predicted_label']]}{w}",
            fontsize=8,
            color=color,
        )
    return _png(fig)


def fig_weight_hist(
    mean_w: np.ndarray, is_noisy: np.ndarray, xlabel: str = "mean L2RW weight over training"
) -> str:
    """Histograms of a per-example score (by default the mean weight) for clean and noisy."""
    fig = Figure(figsize=(4.6, 3.0))
    ax = fig.add_subplot()
    lo = min(float(np.min(mean_w)), 0.0)
    bins = np.linspace(lo, max(float(np.max(mean_w)), lo + 1e-12), 41)
    ax.hist(
        mean_w[~is_noisy],
        bins=bins,
        alpha=0.6,
        label=f"clean ({int((~is_noisy).sum())})",
        color="#4c72b0",
    )
    ax.hist(
        mean_w[is_noisy],
        bins=bins,
        alpha=0.6,
        label=f"noisy ({int(is_noisy.sum())})",
        color="#c44e52",
    )
    ax.set_xlabel(xlabel)
    ax.set_ylabel("training examples")
    ax.legend(fontsize=8)
    return _png(fig)


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
"""


def _img(b64: str, alt: str) -> str:
    return f'<img src="data:image/png;base64,{html.escape(b64)}" alt="{html.escape(alt)}">'


def _figure(b64: str | None, caption: str, alt: str) -> str:
    if b64 is None:
        return ""
    return f"<figure>{_img(b64, alt)}<figcaption>{caption}</figcaption></figure>"


def _table(header: Sequence[str], rows: Sequence[Sequence], left_cols: int = 1) -> str:
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


def _card(value: str, key: str) -> str:
    return f'<div class="card"><div class="v">{html.escape(value)}</div><div class="k">{html.escape(key)}</div></div>'


def _fmt(v, spec=".3f"):
    return "—" if v is None else format(v, spec)


# One renderer per section kind: (summary cards, HTML of the section's body). A section whose
# name has no renderer here is shown by `_render_generic`.
def _render_mistakes(m: dict, figs: dict, names: Sequence[str]) -> tuple[list[str], list[str]]:
    cards = [_card(f"{m['top_k_accuracy']['top1']:.4f}", "top-1 accuracy")]
    if "top5" in m["top_k_accuracy"]:
        cards.append(_card(f"{m['top_k_accuracy']['top5']:.4f}", "top-5 accuracy"))
    bins = m["calibration"]["num_bins"]
    cards.append(_card(f"{m['calibration']['ece']:.4f}", f"ECE ({bins} bins)"))
    cards.append(
        _card(f"{names[m['worst_class']]}: {m['worst_class_accuracy']:.3f}", "worst class accuracy")
    )
    out = []
    out.append(
        "<p class='caption'>Accuracy per class on the whole test set, the confusion matrix (rows: "
        "true class, colour: fraction of the row, numbers: counts) and calibration: the expected "
        "calibration error bins the confidence (max softmax probability) into 15 equal-width bins "
        "((m-1)/15, m/15] and averages |accuracy - confidence| weighted by the bin's share of the "
        "examples (Guo et al. 2017).</p>"
    )
    out.append(
        _table(
            ["", "value"],
            [
                *[[f"top-{k[3:]} accuracy", v] for k, v in m["top_k_accuracy"].items()],
                ["mean per-class accuracy", m["mean_class_accuracy"]],
                [f"worst class ({names[m['worst_class']]})", m["worst_class_accuracy"]],
                ["gap mean − worst", m["gap_mean_minus_worst"]],
                ["ECE", m["calibration"]["ece"]],
            ],
        )
    )
    out.append(
        "<div class='row'>"
        + _figure(figs.get("per_class"), "Accuracy per class (worst in red).", "per-class accuracy")
        + _figure(figs.get("confusion"), "Confusion matrix.", "confusion matrix")
        + _figure(
            figs.get("reliability"),
            "Reliability diagram: accuracy per confidence bin against "
            "the diagonal; below it counts per bin (log scale).",
            "reliability diagram",
        )
        + "</div>"
    )
    if m["gallery"]:
        ig = m.get("integrated_gradients", {})
        out.append("<h3>Most confident mistakes</h3>")
        out.append(
            "<p class='caption'>The test images the model got wrong with the highest confidence. Each row: "
            "the image with its true class and top-3 predictions; integrated gradients of the predicted "
            f"class logit from a black baseline ({ig.get('steps')} trapezoid steps; red = pushes towards "
            "the prediction, blue = against; the completeness error |Σ attributions − (f(x) − f(baseline))| "
            "relative to |f(x) − f(baseline)| is printed, max "
            f"{_fmt(ig.get('max_relative_completeness_error'), '.1e')}); Grad-CAM at the last conv layer when "
            f"the model has one; then the {len(m['gallery'][0]['neighbors'])} nearest training images in "
            f"penultimate-feature space (searched among {m['neighbor_pool_size']} training images) with "
            "their given labels — the example-based explanation.</p>"
        )
        for b64 in figs.get("gallery", []):
            out.append(f"<figure>{_img(b64, 'mistake')}</figure>")

    return cards, out


def _render_robustness(r: dict, figs: dict, names: Sequence[str]) -> tuple[list[str], list[str]]:
    mid = len(r["epsilons"]) // 2
    cards = [
        _card(f"{r['pgd_accuracy'][mid]:.3f}", f"PGD accuracy at eps={r['epsilons'][mid]:g}"),
        _card(_fmt(r["min_eps"]["median"]), "median minimal adversarial eps"),
    ]
    out = []
    out.append(
        f"<p class='caption'>FGSM and PGD (L-inf, {r['pgd_steps']} steps of {r['pgd_step_size_fraction_of_eps']:g}·eps, "
        f"random start {'on' if r['random_start'] else 'off'}) on {r['n_curve_examples']} test images; "
        "eps in raw pixel units (images in [0, 1]), attacks clipped to the valid range. "
        + _OBJECTIVE_TEXT[r.get("objective", "cross_entropy")]
        + "An example "
        "counts as robust at eps only if no perturbation tried at that or any smaller eps fools it, and "
        "PGD keeps the FGSM point among its candidates, so the curves start at the clean accuracy, never "
        "rise, and PGD is never above FGSM. The minimal adversarial eps (leaving the predicted class) is "
        f"found by bisection with PGD on [0, {r['min_eps']['eps_max']:g}] to within "
        f"{r['min_eps']['bracket_width']:.4f}, on {r['n_min_eps_examples']} test images.</p>"
    )
    out.append(
        _table(
            ["eps", "FGSM accuracy", "PGD accuracy"],
            [
                [f"{e:g}", f, p]
                for e, f, p in zip(r["epsilons"], r["fgsm_accuracy"], r["pgd_accuracy"])
            ],
        )
    )
    me = r["min_eps"]
    out.append(
        _table(
            ["minimal adversarial eps", "value"],
            [
                ["median", me["median"]],
                ["mean (found only)", me["mean_of_found"]],
                ["fraction not fooled at eps_max", me["fraction_not_found"]],
            ],
        )
    )
    out.append(
        "<div class='row'>"
        + _figure(figs.get("curve"), "Accuracy under attack against eps.", "curve")
        + _figure(
            figs.get("min_eps_hist"), "Distribution of the minimal adversarial eps.", "histogram"
        )
        + _figure(
            figs.get("min_eps_per_class"),
            "Median minimal adversarial eps per true class (values in audit.json).",
            "per-class eps",
        )
        + "</div>"
    )
    out.append(
        _figure(
            figs.get("adversarial"),
            "The most fragile test images: original, the adversarial "
            "image found at the minimal eps with its new prediction, and the perturbation.",
            "adversarial examples",
        )
    )

    return cards, out


def _render_biases(b_res: dict, figs: dict, names: Sequence[str]) -> tuple[list[str], list[str]]:
    out = []
    out.append(
        "<p class='caption'>For each class (training images, grouped by their given label, "
        + html.escape(", ".join(f"{names[int(k)]}: {v}"
                                for k, v in b_res["examples_per_class"].items()))
        + " per class): "
        "<b>robust</b> prototypes are the images hardest to push out of the class (largest minimal PGD "
        "eps; ties by logit margin) and criticisms the easiest; <b>MMD</b> prototypes greedily minimise "
        "MMD² to the class in penultimate-feature space, and criticisms maximise |witness| plus a "
        "log-det diversity term (Kim et al. 2016; "
        + html.escape(b_res["kernel"])
        + "). The last column is "
        "the mean image of the row. A bias shows as an attribute shared by one side only; the table "
        "gives, per attribute, the class where its rate among prototypes and criticisms differs most "
        "(ink = mean pixel intensity).</p>"
    )
    rows = [
        [
            g["attribute"],
            g["method"],
            names[g["class"]],
            g["class_rate"],
            g["prototypes"],
            g["criticisms"],
            g["prototype_minus_criticism"],
        ]
        for g in b_res["largest_over_representation"]
    ]
    out.append(
        _table(
            [
                "attribute",
                "method",
                "class",
                "class rate",
                "prototypes",
                "criticisms",
                "prototypes − criticisms",
            ],
            rows,
            left_cols=3,
        )
    )
    for name, per_class in b_res["attributes"].items():
        if name == "ink":
            continue
        gap = lambda v: max(
            abs(v.get("robust_prototype_minus_criticism") or 0.0),
            abs(v.get("mmd_prototype_minus_criticism") or 0.0),
        )
        shown = sorted(per_class, key=lambda k: -gap(per_class[k]))[:10]
        out.append(f"<h3>Attribute <code>{html.escape(name)}</code> per class</h3>")
        out.append(
            f"<p class='caption'>Rate of <code>{html.escape(name)}</code> in the class and among its "
            "prototypes and criticisms"
            + (
                f" ({len(shown)} of {len(per_class)} classes, largest difference first)"
                if len(shown) < len(per_class)
                else ""
            )
            + ".</p>"
        )
        out.append(
            _table(
                [
                    "class",
                    "class rate",
                    "robust prototypes",
                    "robust criticisms",
                    "MMD prototypes",
                    "MMD criticisms",
                ],
                [
                    [
                        names[int(k)],
                        per_class[k]["class_rate"],
                        per_class[k]["robust_prototypes"],
                        per_class[k]["robust_criticisms"],
                        per_class[k]["mmd_prototypes"],
                        per_class[k]["mmd_criticisms"],
                    ]
                    for k in sorted(shown, key=int)
                ],
            )
        )
    bias_figs = figs.get("bias_classes", {})
    if len(bias_figs) < len(b_res["per_class"]):
        out.append(
            f"<p class='caption'>Image grids for {len(bias_figs)} of {len(b_res['per_class'])} classes "
            "(those with the largest attribute differences first); all indices are in audit.json.</p>"
        )
    out.append("<div class='row'>")
    for k, b64 in bias_figs.items():
        pc = b_res["per_class"][str(k)]
        out.append(
            _figure(
                b64,
                f"class {html.escape(names[int(k)])}: median minimal eps "
                f"{_fmt(pc['class_median_min_eps'])}, MMD² of prototypes {pc['mmd2']:.4f}, "
                f"sigma {pc['mmd_sigma']:.3g}.",
                f"class {k}",
            )
        )
    out.append("</div>")

    return [], out


def _render_label_issues(li: dict, figs: dict, names) -> tuple[list[str], list[str]]:
    cards = []
    main = li.get("suspects_ranking")
    if li["rankings"].get(main):
        first = next(iter(li["rankings"][main].values()))
        cards.append(_card(f"{first['precision']:.3f}", f"precision@{first['k']} ({main})"))
    out = []
    out.append(
        "<p class='caption'>Training examples ranked from most to least suspect: by the mean L2RW "
        "weight recorded over training (<code>l2rw_weight</code>, low first; ties by final loss), by "
        "the mean of the example's L2RW meta-gradient divided by its batch's RMS "
        "(<code>l2rw_meta_grad</code>, high first: the signal the weight is made of, before the clip "
        "at 0 and the per-batch normalisation), by the robust variant's memory of it "
        "(<code>l2rw_memory</code>, when recorded), by the final model's loss on the "
        "given label (high first; the same order as self-confidence p(given label|x) ascending), and by "
        "confident learning (Northcutt et al. 2021: examples whose confidently predicted class, with "
        "per-class thresholds = mean self-confidence of the class, differs from the given label come "
        "first, then by self-confidence). Scored against the injected-noise mask: precision@k = noisy "
        "among the top k / k, recall@k = noisy among the top k / all noisy.</p>"
    )
    if li["rankings"]:
        ks = list(next(iter(li["rankings"].values())).keys())
        header = ["ranking"] + [f"{s}@{k[2:]}" for k in ks for s in ("precision", "recall")]
        out.append(
            _table(
                header,
                [
                    [name] + [v[k][s] for k in ks for s in ("precision", "recall")]
                    for name, v in li["rankings"].items()
                ],
            )
        )
        out.append(
            f"<p class='caption'>{li['n_ranked']} training examples ranked, {li.get('n_noisy')} of them "
            "noisy.</p>"
        )
    out.append(
        "<div class='row'>"
        + _figure(
            figs.get("weight_hist"),
            "Mean L2RW weight of clean and noisy training examples.",
            "weights",
        )
        + _figure(
            figs.get("meta_grad_hist"),
            "Mean normalised L2RW meta-gradient of clean and noisy training examples "
            "(positive = harmful to the clean loss).",
            "meta-gradients",
        )
        + "</div>"
    )
    out.append(
        _figure(
            figs.get("suspects"),
            f"Top {len(li['top_suspects'])} suspects by the "
            f"<code>{html.escape(li['suspects_ranking'])}</code> ranking, most suspect first: given and "
            "predicted label, mean weight w and (when recorded) mean normalised meta-gradient g; red = "
            "injected noise, green = clean label.",
            "suspects",
        )
    )
    return cards, out


def _render_generic(results: dict, figs: dict, names) -> tuple[list[str], list[str]]:
    """Any other section: its scalar results as a table, then its figures."""
    rows = [[k, v] for k, v in results.items() if isinstance(v, (int, float, str)) or v is None]
    out = [_table(["", "value"], rows)] if rows else []
    pngs = [(k, v) for k, v in figs.items() if isinstance(v, str)]
    out.append(
        "<div class='row'>" + "".join(_figure(v, html.escape(k), k) for k, v in pngs) + "</div>"
    )
    return [], out


RENDERERS = {
    "mistakes": _render_mistakes,
    "robustness": _render_robustness,
    "biases": _render_biases,
    "label_issues": _render_label_issues,
}


def render_html(meta: dict, sections: Sequence) -> str:
    """The report page: a header with summary cards, then one block per section, in order.

    Args:
      meta: `audit.json["meta"]` (title, run, sizes, seconds, class_names).
      sections: `l2rw_jax.audit.sections.Section`s (name, title, results, figures, notes); each
        is drawn by `RENDERERS[name]`, or by a generic renderer (scalars and figures).
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
        render = RENDERERS.get(s.name, _render_generic)
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
    parts = html.escape(", ".join(f"{s.title.lower()} {secs.get(s.name, 0):.0f} s"
                                  for s in sections))
    out.append(
        f"<p class='caption'>{int(meta['n_test'])} test and {int(meta['n_train'])} training "
        f"examples; "
        f"audit took {secs.get('total', 0):.0f} s ({parts}). Every number on this page is in "
        "<code>audit.json</code>.</p>"
    )
    out += bodies
    out.append("</body></html>")
    return "\n".join(out)
