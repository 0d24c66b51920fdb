"""The audit's figures: matplotlib drawings returned as base64 PNG strings, inlined by the report.

Figures are drawn with matplotlib's object API (`matplotlib.figure.Figure`, Agg), never pyplot,
so no global figure state is touched. Each `fig_*` takes numbers a section computed (raw images
in [0, 1], H x W x C) and returns the PNG at 80 dpi, cropped to its content.
"""

from __future__ import annotations

import base64
import io
import math
from typing import Sequence

import numpy as np

_DPI = 80


def Figure(**kwargs):  # noqa: N802 -- stands for matplotlib.figure.Figure at every call site.
    """``matplotlib.figure.Figure(**kwargs)``, imported on first use: matplotlib takes 0.4 s to
    import, and `import l2rw_jax` stays cheap (the report is the only user)."""
    from matplotlib.figure import Figure as MplFigure

    return MplFigure(**kwargs)


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


def image_png(img_HxWxC: np.ndarray) -> str:
    """One raw image (H x W x C, C = 1 or 3, values in [0, 1]; clipped) as a base64 PNG at its
    own pixel size, no axes or margins (Pillow): the report scales it up with CSS."""
    from PIL import Image  # Here: the report is the only user (as matplotlib above).

    img = np.asarray(img_HxWxC, np.float64)
    if img.ndim != 3 or img.shape[-1] not in (1, 3):
        raise ValueError(f"image must be H x W x C with C in (1, 3), got shape {img.shape}.")
    pixels = np.round(np.clip(img, 0.0, 1.0) * 255).astype(np.uint8)
    buf = io.BytesIO()
    Image.fromarray(pixels[..., 0] if pixels.shape[-1] == 1 else pixels).save(buf, format="PNG")
    return base64.b64encode(buf.getvalue()).decode("ascii")


def saliency_png(attr_HxWxC: np.ndarray) -> str:
    """An attribution map (H x W x C) as a base64 PNG at its own pixel size (Pillow): the sum
    over channels in matplotlib's "bwr" colour map, symmetric about 0 (red raises the target,
    blue lowers it, white 0; the largest |value| saturates), as the mistakes gallery draws it."""
    from matplotlib import colormaps
    from PIL import Image

    a = np.asarray(attr_HxWxC, np.float64)
    if a.ndim != 3:
        raise ValueError(f"attributions must be H x W x C, got shape {a.shape}.")
    a = a.sum(axis=-1)
    lim = float(np.max(np.abs(a))) or 1.0
    rgb = colormaps["bwr"](0.5 + 0.5 * a / lim)[..., :3]
    buf = io.BytesIO()
    Image.fromarray(np.round(rgb * 255).astype(np.uint8)).save(buf, format="PNG")
    return base64.b64encode(buf.getvalue()).decode("ascii")


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


def fig_transitions(mats: dict, class_names: Sequence[str]) -> str:
    """Transition matrices side by side as heat maps on one colour scale [0, 1] (rows = true
    class, columns = observed label); an unknown (NaN) row is left blank, entries are printed
    for up to 12 classes."""
    n = len(mats)
    k = next(iter(mats.values())).shape[0]
    size = min(max(3.0, 0.3 * k + 1.4), 7.0)
    fig = Figure(figsize=(size * n + 0.9, size + 0.3))
    axes = fig.subplots(1, n, squeeze=False)[0]
    ticks = list(range(k)) if k <= 30 else list(range(0, k, max(1, k // 20)))
    im = None
    for ax, (title, T) in zip(axes, mats.items()):
        T = np.asarray(T, np.float64)
        im = ax.imshow(np.ma.masked_invalid(T), cmap="viridis", vmin=0.0, vmax=1.0)
        if k <= 12:
            for i in range(k):
                for j in range(k):
                    if np.isfinite(T[i, j]):
                        ax.text(
                            j,
                            i,
                            f"{T[i, j]:.2f}",
                            ha="center",
                            va="center",
                            fontsize=6,
                            color="black" if T[i, j] > 0.6 else "white",
                        )
        ax.set_xticks(
            ticks, [class_names[t] for t in ticks], fontsize=7, rotation=90 if k > 10 else 0
        )
        ax.set_yticks(ticks, [class_names[t] for t in ticks], fontsize=7)
        ax.set_xlabel("observed label")
        ax.set_title(title, fontsize=9)
    axes[0].set_ylabel("true class")
    fig.colorbar(im, ax=list(axes), fraction=0.02, label="P(observed | true)")
    return _png(fig)


def fig_data_map(
    mean_w: np.ndarray, std_w: np.ndarray, is_noisy: np.ndarray | None, nonzero_share: np.ndarray
) -> str:
    """The weight data map: per training example, the std of its L2RW weight over its draws (x)
    against its mean weight (y), coloured clean / noisy where known, else by the share of its
    draws with a non-zero weight."""
    fig = Figure(figsize=(5.2, 3.8))
    ax = fig.add_subplot()
    kw = dict(s=6, alpha=0.5, linewidths=0)
    if is_noisy is not None:
        for mask, color, name in ((~is_noisy, "#4c72b0", "clean"), (is_noisy, "#c44e52", "noisy")):
            ax.scatter(
                std_w[mask], mean_w[mask], color=color, label=f"{name} ({int(mask.sum())})", **kw
            )
        ax.legend(fontsize=8, markerscale=2)
    else:
        sc = ax.scatter(std_w, mean_w, c=nonzero_share, cmap="viridis", vmin=0, vmax=1, **kw)
        fig.colorbar(sc, ax=ax, label="share of draws with weight > 0")
    ax.set_xlabel("std of the L2RW weight over the example's draws")
    ax.set_ylabel("mean L2RW weight")
    ax.grid(alpha=0.3)
    return _png(fig)


def fig_trusted_set(
    loss_M: np.ndarray, influence_M: np.ndarray, disputed_M: np.ndarray, flagged_M: np.ndarray
) -> str:
    """The trusted set: per clean example its loss under the final model (x) against its
    leave-one-out influence on the L2RW weights (y); flagged, disputed (predicted ≠ given) and
    agreed labels in three colours."""
    fig = Figure(figsize=(5.2, 3.8))
    ax = fig.add_subplot()
    groups = (
        (~disputed_M & ~flagged_M, "#4c72b0", "prediction = given label"),
        (disputed_M & ~flagged_M, "#dd8452", "prediction ≠ given label"),
        (flagged_M, "#c44e52", "flagged"),
    )
    for mask, color, name in groups:
        if mask.any():
            ax.scatter(
                loss_M[mask],
                influence_M[mask],
                s=14,
                alpha=0.7,
                linewidths=0,
                color=color,
                label=f"{name} ({int(mask.sum())})",
            )
    ax.legend(fontsize=8, markerscale=1.5)
    ax.set_xlabel("loss on the given label (final model, nats)")
    ax.set_ylabel("influence: Σ|Δw| when left out")
    ax.grid(alpha=0.3)
    return _png(fig)
