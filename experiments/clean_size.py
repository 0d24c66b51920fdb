"""The clean-set size curve: how accurate a method stays, and how stable its weights are, with
1, 3, 10 and 30 trusted images per class.

    L2RW_DEV_DATA=../shared/data python -m experiments.clean_size --workdir=workdirs/clean_size \\
        [--setting=digits_uniform40] [--per_class=1,3,10,30] \\
        [--methods=l2rw,recommended,clean_only] [--num_seeds=5] [--results_dir=benchmarks/results]

Each (clean images per class n, method) trains a protocol setting's config
(experiments/configs/protocol.py) with `data.clean_per_class = n` and the clean batch
`min(the setting's, n x classes)`, the setting's seeds, in `<workdir>/<setting>/clean<n>/<method>`
(resumed if interrupted, skipped if finished). The clean rows are drawn out of the same pool as
the training rows, so the training set loses the clean rows of each size; the seed fixes the
noise draw and the split.

Per (n, method), mean +- 95% CI over seeds (Student t):
  final test acc %   the test accuracy at the last step
  weight AUROC       how well the example's mean weight over training separates the flipped
                     training rows from the correct ones (`audit.ranking_quality.auroc` with
                     score = -mean weight, over the rows drawn at least once; 0.5 = chance)
  weight agreement   Spearman rank correlation of each training row's mean weight with the same
                     row's (matched by source index) in the same method and seed at the largest
                     n: 1 at the largest n by construction; how much of the weight ranking a
                     smaller trusted set keeps
Written to `<results_dir>/clean_size_<setting>.{md,json,png}` with the command, the date and the
versions. Methods that give every example the same weight (erm, clean_only, oracle) have no
weight columns.
"""

from __future__ import annotations

import os
import sys
from types import SimpleNamespace

import numpy as np
from absl import app
from absl import flags
from scipy import stats

from experiments import common
from experiments import plots
from experiments import provenance as provenance_lib
from experiments.configs import protocol as protocol_config
import l2rw_jax
from l2rw_jax import config as config_lib
from l2rw_jax import results as results_lib
from l2rw_jax.audit import ranking_quality


def define_flags() -> SimpleNamespace:
    """The command's flags, defined when it runs as a program: importing the module (tests,
    notebooks) defines none, so its --workdir never clashes with another entry point's."""
    workdir = flags.DEFINE_string("workdir", None, "Where the runs are written.", required=True)
    setting = flags.DEFINE_string(
        "setting", "digits_uniform40", f"The protocol setting, of {list(protocol_config.SETTINGS)}."
    )
    per_class = flags.DEFINE_list("per_class", ["1", "3", "10", "30"], "Clean images per class.")
    methods = flags.DEFINE_list(
        "methods",
        ["l2rw", "recommended", "clean_only"],
        "Methods of experiments/configs/protocol.py (names or ablations).",
    )
    num_seeds = flags.DEFINE_integer(
        "num_seeds", 0, "Seeds per run (0: the setting's, 5).", lower_bound=0
    )
    results_dir = flags.DEFINE_string(
        "results_dir",
        "benchmarks/results",
        "Where clean_size_<setting>.{md,json,png} are copied (empty: not copied).",
    )
    return SimpleNamespace(
        workdir=workdir,
        setting=setting,
        per_class=per_class,
        methods=methods,
        num_seeds=num_seeds,
        results_dir=results_dir,
    )


# Methods whose weights are all equal: no weight ranking to score.
UNWEIGHTED = ("erm", "resample", "oracle", "clean_only", "finetune")
# Every protocol setting has 10 classes (digits, MNIST, CIFAR-10); a clean batch larger than
# the clean set is refused by the training's own check, so a setting with fewer would fail
# loudly, not silently.
NUM_CLASSES = 10


def size_config(setting: str, method: str, per_class: int, num_seeds: int = 0):
    """The validated config of one (setting, method) run with ``per_class`` clean images per
    class and the clean batch ``min(the setting's, per_class x classes)``.

    Raises:
      ValueError: ``per_class`` < 1, or what the config's validation raises.
    """
    if per_class < 1:
        raise ValueError(f"per_class={per_class}: at least 1 clean image per class is needed.")
    cfg = protocol_config.setting_config(setting, method, num_seeds=num_seeds)
    cfg.data.clean_per_class = per_class
    cfg.data.clean_batch_size = min(cfg.data.clean_batch_size, per_class * NUM_CLASSES)
    return config_lib.validate(cfg)


def _weights(run_dir: str, seed: int) -> dict:
    path = os.path.join(run_dir, f"example_weights_seed{seed}.npz")
    if not os.path.exists(path):
        path = os.path.join(run_dir, "example_weights.npz")
    with np.load(path) as f:
        return {k: f[k] for k in f.files}


def weight_auroc(w: dict) -> float:
    """AUROC of -mean weight against the flipped rows, over the rows drawn at least once."""
    drawn = w["count"] > 0
    return ranking_quality.auroc(-w["mean_weight"][drawn], w["is_noisy"][drawn])


def weight_agreement(w: dict, ref: dict) -> float:
    """Spearman correlation of the mean weights of the rows drawn in both runs, matched by
    source index."""
    common_idx, i, j = np.intersect1d(w["source_index"], ref["source_index"], return_indices=True)
    both = (w["count"][i] > 0) & (ref["count"][j] > 0)
    if both.sum() < 3:
        return float("nan")
    return float(stats.spearmanr(w["mean_weight"][i][both], ref["mean_weight"][j][both])[0])


def summarize(runs: dict, sizes: list[int]) -> dict:
    """``{method: {n: row}}`` from ``runs[(method, n)] = (results, run_dir)``."""
    out = {}
    for method in sorted({m for m, _ in runs}):
        out[method] = {}
        ref_n = max(n for m, n in runs if m == method)
        for n in sizes:
            if (method, n) not in runs:
                continue
            results, run_dir = runs[(method, n)]
            row = {
                "final_test_accuracy": results["final_test_accuracy"],
                "best_test_accuracy": results["best_test_accuracy"],
                "num_clean": results["num_clean"],
                "seeds": results["seeds"],
            }
            if method not in UNWEIGHTED:
                ws = [_weights(run_dir, s) for s in results["seeds"]]
                refs = [_weights(runs[(method, ref_n)][1], s) for s in results["seeds"]]
                if all("is_noisy" in w for w in ws):
                    row["weight_auroc"] = results_lib.mean_ci95([weight_auroc(w) for w in ws])
                row["weight_agreement"] = results_lib.mean_ci95(
                    [weight_agreement(w, r) for w, r in zip(ws, refs)]
                )
            out[method][n] = row
    return out


def table(summary: dict, sizes: list[int]) -> str:
    body = []
    for method, rows in summary.items():
        for n in sizes:
            if n not in rows:
                continue
            r = rows[n]
            auroc, agree = r.get("weight_auroc"), r.get("weight_agreement")
            body.append(
                [
                    method,
                    str(n),
                    str(r["num_clean"]),
                    common.fmt(r["final_test_accuracy"]),
                    common.fmt(r["best_test_accuracy"]),
                    "-" if auroc is None else f"{auroc['mean']:.3f} +- {auroc['ci95'] or 0:.3f}",
                    "-" if agree is None else f"{agree['mean']:.3f} +- {agree['ci95'] or 0:.3f}",
                ]
            )
    return common.markdown_table(
        [
            "method",
            "clean per class",
            "clean images",
            "final test acc %",
            "best test acc %",
            "weight AUROC",
            "weight agreement",
        ],
        body,
    )


def plot(summary: dict, path: str, title: str) -> None:
    import matplotlib.pyplot as plt

    fig, (ax_acc, ax_auc) = plt.subplots(1, 2, figsize=(10, 4))
    for i, (method, rows) in enumerate(summary.items()):
        ns = sorted(rows)
        style = dict(marker="o", capsize=3, label=method, color=f"C{i}")  # one colour a method
        acc = [100 * rows[n]["final_test_accuracy"]["mean"] for n in ns]
        err = [100 * (rows[n]["final_test_accuracy"]["ci95"] or 0) for n in ns]
        ax_acc.errorbar(ns, acc, yerr=err, **style)
        if all("weight_auroc" in rows[n] for n in ns):
            auc = [rows[n]["weight_auroc"]["mean"] for n in ns]
            aerr = [rows[n]["weight_auroc"]["ci95"] or 0 for n in ns]
            ax_auc.errorbar(ns, auc, yerr=aerr, **style)
    for ax, label in ((ax_acc, "final test accuracy %"), (ax_auc, "weight AUROC (flipped rows)")):
        ax.set_xscale("log")
        ax.set_xlabel("clean images per class")
        ax.set_ylabel(label)
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
    fig.suptitle(title)
    fig.tight_layout()
    plots.save(fig, path)


def main(argv, f: SimpleNamespace):
    if len(argv) > 1:
        raise app.UsageError(f"unexpected arguments {argv[1:]}.")
    try:
        sizes = sorted({int(n) for n in f.per_class.value})
    except ValueError:
        raise app.UsageError(f"--per_class={f.per_class.value}: integers >= 1 expected.") from None
    if f.setting.value not in protocol_config.SETTINGS:
        raise app.UsageError(
            f"unknown setting {f.setting.value!r}; allowed: {list(protocol_config.SETTINGS)}."
        )
    # Every config is built (and validated) before anything trains or is written.
    try:
        configs = {
            (m, n): size_config(f.setting.value, m, n, f.num_seeds.value)
            for m in f.methods.value
            for n in sizes
        }
    except ValueError as e:
        raise app.UsageError(str(e)) from None
    provenance = provenance_lib.record("experiments.clean_size", sys.argv[1:])
    root = os.path.join(f.workdir.value, f.setting.value)
    runs = {}
    for (m, n), cfg in configs.items():
        run_dir = os.path.join(root, f"clean{n}", m)
        print(f"--- {f.setting.value} / {n} clean per class / {m}", flush=True)
        runs[(m, n)] = (l2rw_jax.train_and_evaluate(cfg, run_dir), run_dir)
    summary = summarize(runs, sizes)
    cfg0 = next(iter(configs.values()))
    head = (
        f"{f.setting.value}: {cfg0.data.noise} flip {cfg0.data.noise_ratio:.0%}, "
        f"{cfg0.num_steps} steps, {cfg0.num_seeds} seeds; the clean set of n images per class; "
        "mean +- 95% CI over seeds; weight agreement against the largest n (same method, seed)"
    )
    text = head + "\n\n" + table(summary, sizes) + "\n\n" + provenance_lib.describe(provenance)
    print(text)
    record = {**provenance, "setting": f.setting.value, "per_class": sizes, "methods": summary}
    common.write_text(os.path.join(root, "table.md"), text + "\n")
    common.write_json(os.path.join(root, "summary.json"), record)
    plot(summary, os.path.join(root, "clean_size.png"), f"{f.setting.value}: clean-set size")
    if f.results_dir.value:
        stem = os.path.join(f.results_dir.value, f"clean_size_{f.setting.value}")
        common.write_text(stem + ".md", text + "\n")
        common.write_json(stem + ".json", record)
        plot(summary, stem + ".png", f"{f.setting.value}: clean-set size")


if __name__ == "__main__":
    _flags = define_flags()
    common.run_main(lambda argv: main(argv, _flags))
