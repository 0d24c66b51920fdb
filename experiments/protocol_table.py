"""One table of every protocol setting: the final test accuracy and the share of the
plain-training-to-oracle gap each method closes, from the protocol's result files.

    python -m experiments.protocol_table [--results_dir=benchmarks/results] \\
        [--out=table.md] [--plot=benchmarks/results/protocol_gap_closed.png]

Reads every `protocol_*.json` that `experiments.protocol` wrote in `--results_dir` and in its
`candidates/` folder (`protocol_<setting>[_steps<N>][_selection<M>].json`, copied with any
suffix, e.g. `_default`: the file's own fields name its setting, budget and hold-out); the rows
of one (setting, budget, selection hold-out) found in several files are merged, the newest
file's row winning for a method found twice (their seeds are the same: a setting's seed fixes
its split, noise draw and data order). One row per (setting, budget, selection hold-out), one
column per method of `COLUMNS` that ran somewhere; a cell is the mean final test accuracy % over
seeds and, where both `erm` and `oracle` ran, the mean gap closed %
(`l2rw_jax.results.gap_closed`, as `experiments.protocol` reports it: per seed `(acc - acc_erm)
/ (acc_oracle - acc_erm)`, paired); with a selection hold-out, `sel.` and the mean test accuracy
of the checkpoint chosen on it (never instead of the final one). Each setting's own file has the
95% CIs, the best-during-training column and the command that produced it. `--plot` draws the
gap closed as a heat map (settings x methods).
"""

from __future__ import annotations

import glob
import json
import os

import numpy as np
from absl import flags

from experiments import common
from experiments import plots
from experiments.configs import protocol as protocol_config
from l2rw_jax import config as config_lib
from l2rw_jax import results as results_lib

_RESULTS_DIR = flags.DEFINE_string(
    "results_dir", "benchmarks/results", "Where experiments.protocol copied its protocol_*.json."
)
_OUT = flags.DEFINE_string("out", None, "Write the markdown here as well as printing it.")
_PLOT = flags.DEFINE_string("plot", None, "Write the gap-closed heat map (png) here.")

# The methods tabulated, in this order (ablations other than these stay in their own files).
# A row is labelled by its recorded config, not by the name it ran under: the first of these
# whose method config (experiments.configs.protocol, today's definitions) equals the row's, so
# that `recommended` is always today's default; a row that matches none keeps its name.
COLUMNS = (
    "erm",
    "resample",
    "oracle",
    "l2rw",
    "mwnet",
    "finetune",
    "clean_only",
    "recommended",
    "recommended-plateau",
    "recommended+plateau",
    "recommended+rewind",
    "recommended+reweighted",
    "recommended+glc",
    "glc",
)


def gap_closed(rows: dict, method: str) -> dict | None:
    """``method``'s gap closed over seeds (None without ``erm`` / ``oracle`` rows)."""
    if method not in rows or "erm" not in rows or "oracle" not in rows:
        return None
    return results_lib.gap_closed(
        *(rows[m]["final_test_accuracy"]["per_seed"] for m in (method, "erm", "oracle"))
    )


def load(results_dir: str) -> dict:
    """``{(setting, num_steps, the setting's own num_steps, selection_size): {method: row}}``
    from the protocol files of ``results_dir`` and ``results_dir/candidates``, the newest
    file's row winning.

    Raises:
      FileNotFoundError: no protocol_*.json in either folder.
    """
    paths = glob.glob(os.path.join(results_dir, "protocol_*.json")) + glob.glob(
        os.path.join(results_dir, "candidates", "protocol_*.json")
    )
    if not paths:
        raise FileNotFoundError(
            f"no protocol_*.json in {results_dir!r} or its candidates/; "
            "run experiments.protocol first."
        )
    files = []
    for path in paths:
        with open(path) as f:
            files.append(json.load(f))
    settings: dict = {}
    for d in sorted(files, key=lambda d: d["date"]):
        key = (d["setting"], d["num_steps"], d["setting_num_steps"], d.get("selection_size", 0))
        configs = d.get("configs", {})
        settings.setdefault(key, {}).update(
            {label(d["setting"], m, configs.get(m)): row for m, row in d["methods"].items()}
        )
    return settings


def label(setting: str, name: str, config: dict | None) -> str:
    """The name of COLUMNS whose method today (``experiments.configs.protocol``) is the one
    ``config`` ran: the same ``method.name`` and, for ``l2rw``, the same ``method.l2rw``
    options (fields added since it ran at their old behaviour, ``config.upgrade``); else
    ``name`` (also without a recorded config)."""
    del setting
    if config is None:
        return name
    # A config recorded before a field existed gets that field's old behaviour.
    ran = config_lib.upgrade(config, fill_added=True)["method"]
    for m in COLUMNS:
        today = protocol_config.method_overrides(m)["method"]
        if today["name"] == ran["name"] and (ran["name"] != "l2rw" or today["l2rw"] == ran["l2rw"]):
            return m
    return name


def cell(rows: dict, method: str) -> str:
    """The mean final accuracy %, the gap closed in brackets, and after "sel." the mean test
    accuracy of the checkpoint chosen on the clean selection hold-out (runs with one)."""
    if method not in rows:
        return "–"
    row = rows[method]
    text = f"{100 * row['final_test_accuracy']['mean']:.2f}"
    gap = gap_closed(rows, method)
    if gap and method not in ("erm", "oracle"):
        text += f" ({100 * gap['mean']:.0f}%)"
    if row.get("selected_by") == "selection":
        text += f"; sel. {100 * row['selected_test_accuracy']['mean']:.2f}"
    return text


def matrix(settings: dict) -> tuple[list[str], list[tuple], np.ndarray]:
    """The methods shown, the (setting, steps, own steps, selection) keys in order, and the
    gap closed % (NaN where not run / no oracle), shape ``settings x methods``."""
    methods = [m for m in COLUMNS if any(m in rows for rows in settings.values())]
    keys = sorted(settings, key=lambda k: (k[0], k[1], k[3]))
    gap = np.full((len(keys), len(methods)), np.nan)
    for i, k in enumerate(keys):
        for j, m in enumerate(methods):
            g = gap_closed(settings[k], m)
            if g is not None:
                gap[i, j] = 100 * g["mean"]
    return methods, keys, gap


def markdown(settings: dict) -> str:
    methods, keys, _ = matrix(settings)
    body = [
        [f"{s} ({n}{f' of {own}' if n != own else ''} steps{f', {sel} held out' if sel else ''})"]
        + [cell(settings[(s, n, own, sel)], m) for m in methods]
        for s, n, own, sel in keys
    ]
    return common.markdown_table(["setting (steps)"] + methods, body)


def plot(settings: dict, path: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    methods, keys, gap = matrix(settings)
    fig, ax = plt.subplots(figsize=(1.1 * len(methods) + 3, 0.45 * len(keys) + 1.5))
    im = ax.imshow(np.clip(gap, -50, 110), cmap="RdYlGn", vmin=-50, vmax=110, aspect="auto")
    for i in range(len(keys)):
        for j in range(len(methods)):
            if not np.isnan(gap[i, j]):
                ax.text(j, i, f"{gap[i, j]:.0f}", ha="center", va="center", fontsize=8)
    ax.set_xticks(range(len(methods)), methods, rotation=40, ha="right")
    ax.set_yticks(
        range(len(keys)), [f"{s} ({n}{f', sel. {sel}' if sel else ''})" for s, n, _, sel in keys]
    )
    ax.set_title("gap closed % (0: plain training, 100: the oracle; blank: not run)")
    fig.colorbar(im, ax=ax, shrink=0.8)
    fig.tight_layout()
    plots.save(fig, path)


def main(argv) -> None:
    del argv
    settings = load(_RESULTS_DIR.value)
    text = markdown(settings)
    print(text)
    if _OUT.value:
        common.write_text(_OUT.value, text + "\n")
    if _PLOT.value:
        plot(settings, _PLOT.value)


if __name__ == "__main__":
    common.run_main(main)
