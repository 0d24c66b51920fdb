"""The experiments' figures, each a PNG written atomically (local or a URI) by :func:`save`.

Test accuracy over training (:func:`plot_curves`, :func:`plot_program_curves`), test error
against the majority fraction (:func:`plot_error_vs_fraction`, :func:`plot_error_sweep`) and
grouped bars per setting (:func:`plot_bars`). matplotlib is imported inside each function
(Agg backend): importing this module costs nothing.
"""

from __future__ import annotations

import io
from typing import Sequence

import numpy as np

from l2rw_jax import workdir as workdir_lib


MARKERS_UP_TO = 20


def plot_curves(curves: dict, path: workdir_lib.PathLike, title: str) -> None:
    """Test accuracy over training: the mean over seeds, shaded from the min to the max seed;
    a curve of at most ``MARKERS_UP_TO`` evaluations also gets markers (one evaluation, a
    short run's, is a point that a line alone would not draw)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 4))
    for name, (steps, acc_KxE) in curves.items():
        (line,) = ax.plot(
            steps,
            100 * acc_KxE.mean(0),
            label=f"{name} ({len(acc_KxE)} seeds)",
            marker="o" if len(steps) <= MARKERS_UP_TO else None,
        )
        ax.fill_between(
            steps, 100 * acc_KxE.min(0), 100 * acc_KxE.max(0), alpha=0.2, color=line.get_color()
        )
    ax.set_xlabel("training step")
    ax.set_ylabel("test accuracy (%)")
    ax.set_title(title)
    ax.grid(alpha=0.3)
    ax.legend()
    fig.tight_layout()
    save(fig, path)


def plot_error_vs_fraction(
    results: dict, methods: Sequence[str], path: workdir_lib.PathLike, paper: dict | None = None
) -> None:
    """Test error (%) against the majority fraction p, mean with 95% CI bars, per method;
    ``paper = {p: {method: error}}`` adds the paper's values as crosses."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fractions = sorted(results)
    x = np.arange(len(fractions))
    fig, ax = plt.subplots(figsize=(7, 4.5))
    for i, m in enumerate(methods):
        stats = [results[p][m]["final_test_accuracy"] for p in fractions]
        err = [100 * (1 - s["mean"]) for s in stats]
        ci = [100 * (s["ci95"] or 0.0) for s in stats]
        dodge = (i - (len(methods) - 1) / 2) * 0.04  # side by side, centred on the tick
        line = ax.errorbar(x + dodge, err, yerr=ci, marker="o", capsize=3, label=m)
        for p, values in (paper or {}).items():
            if p in fractions and m in values:
                ax.plot(
                    fractions.index(p) + dodge,
                    values[m],
                    "x",
                    markersize=9,
                    color=line[0].get_color(),
                )
    ax.set_xticks(x, [str(p) for p in fractions])
    ax.set_xlim(-0.5, len(fractions) - 0.5)  # a single fraction too: the dodge stays small
    ax.set_xlabel("fraction of the majority class (9) in training")
    ax.set_ylabel("test error (%)")
    ax.set_yscale("log")
    ax.set_title("MNIST 4 vs 9 (x: paper, Figure 3)" if paper else "MNIST 4 vs 9")
    ax.grid(alpha=0.3, which="both")
    ax.legend(fontsize=8)
    fig.tight_layout()
    save(fig, path)


def save(fig, path: workdir_lib.PathLike, dpi: int = 120) -> None:
    """``fig`` as a PNG at ``path`` (local or a URI) through the one atomic writer, ``dpi``
    pixels per inch; closes it."""
    import matplotlib.pyplot as plt

    if not workdir_lib.is_primary():  # Multi-host: process 0 writes the files.
        plt.close(fig)
        return
    # Rendered to bytes first: matplotlib writes only local files, the writer also gs://.
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=dpi)
    plt.close(fig)
    workdir_lib.atomic_write(path, lambda f: f.write(buf.getvalue()), mode="wb")


def plot_bars(summary: dict, settings, variants, path: workdir_lib.PathLike, title: str) -> None:
    """Grouped bars: test accuracy per setting, one bar per variant, 95% CI whiskers."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(max(7, 1.2 * len(variants) * len(settings) / 3), 4.5))
    width = 0.8 / len(variants)
    for i, v in enumerate(variants):
        means = [
            100 * summary[s][v]["test_accuracy"]["mean"] if v in summary[s] else np.nan
            for s in settings
        ]
        cis = [
            100 * (summary[s][v]["test_accuracy"]["ci95"] or 0) if v in summary[s] else 0
            for s in settings
        ]
        ax.bar(
            np.arange(len(settings)) + (i - (len(variants) - 1) / 2) * width,
            means,
            width,
            yerr=cis,
            capsize=2,
            label=v,
        )
    ax.set_xticks(
        np.arange(len(settings)), [f"{s} flip" if s != "none" else "no noise" for s in settings]
    )
    ax.set_ylabel("final test accuracy (%)")
    ax.set_title(title)
    ax.grid(axis="y", alpha=0.3)
    ax.legend(fontsize=7, ncol=2)
    lows = [
        100 * summary[s][v]["test_accuracy"]["mean"]
        for s in settings
        for v in variants
        if v in summary[s]
    ]
    ax.set_ylim(max(0, min(lows) - 10), min(100, max(lows) + 5))
    fig.tight_layout()
    save(fig, path)


def plot_error_sweep(
    programs: Sequence[dict],
    methods: Sequence[str],
    fractions: Sequence[float],
    path: workdir_lib.PathLike,
    title: str,
    paper: dict | None = None,
    labels: dict | None = None,
) -> None:
    """Test error (%) against the majority fraction, one line per method (mean, 95% CI bars),
    from the reproduction suite's program records (``method``, ``majority_fraction``,
    ``test_error_pct``); ``paper = {method: error}`` at p = 0.995 adds crosses, ``labels``
    renames methods in the legend."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fractions, paper, labels = sorted(fractions), paper or {}, labels or {}
    fig, ax = plt.subplots(figsize=(7, 4.5))
    for i, m in enumerate(methods):
        rows = sorted(
            (p["majority_fraction"], p["test_error_pct"]) for p in programs if p["method"] == m
        )
        if not rows:
            continue
        x = [fractions.index(f) + (i - len(methods) / 2) * 0.03 for f, _ in rows]
        line = ax.errorbar(
            x,
            [s["mean"] for _, s in rows],
            yerr=[s["ci95"] or 0.0 for _, s in rows],
            marker="o",
            capsize=3,
            label=labels.get(m, m),
        )
        if m in paper and 0.995 in fractions:
            ax.plot(fractions.index(0.995), paper[m], "x", markersize=9, color=line[0].get_color())
    ax.set_xticks(range(len(fractions)), [str(f) for f in fractions])
    ax.set_xlabel("fraction of the majority class (9) in training")
    ax.set_ylabel("test error (%)")
    ax.set_yscale("symlog", linthresh=1.0)
    ax.set_title(f"{title} (x: paper)")
    ax.grid(alpha=0.3, which="both")
    if programs:
        ax.legend(fontsize=8)
    fig.tight_layout()
    save(fig, path)


def plot_program_curves(
    programs: Sequence[dict], path: workdir_lib.PathLike, title: str, paper: dict | None = None
) -> None:
    """Test accuracy over training per program record (``label``, ``method``, ``curve``:
    mean over seeds, min-max band); ``paper = {method: accuracy %}`` adds dashed lines."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    paper = paper or {}
    fig, ax = plt.subplots(figsize=(7, 4.5))
    for p in programs:
        steps = np.array(p["curve"]["steps"])
        acc = 100 * np.array(p["curve"]["test_accuracy_per_seed"])
        (line,) = ax.plot(
            steps,
            acc.mean(0),
            label=f"{p['label']} ({len(acc)} seeds)",
            marker="o" if len(steps) <= MARKERS_UP_TO else None,
        )
        ax.fill_between(steps, acc.min(0), acc.max(0), alpha=0.2, color=line.get_color())
        if p["method"] in paper:
            ax.axhline(paper[p["method"]], ls="--", color=line.get_color(), lw=1)
    ax.set_xlabel("training step")
    ax.set_ylabel("test accuracy (%)")
    ax.set_title(f"{title} (dashed: paper)", fontsize=10)
    ax.grid(alpha=0.3)
    if programs:
        ax.legend(fontsize=8)
    fig.tight_layout()
    save(fig, path)
