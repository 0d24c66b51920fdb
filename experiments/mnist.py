"""MNIST experiments: the 4-vs-9 imbalance of Ren et al. 2018 (§5.1), and noisy MNIST.

One config, several methods and (imbalance) majority fractions; each run in
`<workdir>/p<p>/<method>` (imbalance) or `<workdir>/<method>`, resumed if interrupted, skipped
if finished. Prints the table of test error (imbalance) or accuracy, mean +- 95% CI over the
seeds, and writes `summary.json`, `table.md` and a plot into the workdir.

    python -m experiments.mnist --workdir=workdirs/mnist_imbalance        # l2rw, p = 0.995
    python -m experiments.mnist --workdir=workdirs/mnist_imbalance \\
        --methods=erm,random,proportion,resample,hard_mining,l2rw,mwnet \\
        --majority_fractions=0.9,0.95,0.98,0.99,0.995                       # the reproduction
    python -m experiments.mnist --config=experiments/configs/mnist_noisy.py:uniform \\
        --workdir=workdirs/mnist_uniform --methods=erm,l2rw,mwnet

Run from the repository root. The configs read tfds `mnist` (prepared in `data.data_dir`); a
copy as npz: `--config.data.dataset=npz:/path/mnist.npz --config.data.corrupt_given_labels=True`
(without the flag an npz's labels are taken as given: your own data is never corrupted unless
asked; docs/your_data.md). Any config field can be overridden, e.g. `--config.num_seeds=10`.
"""

from __future__ import annotations

import os

from absl import app
from absl import flags

from experiments import common
from experiments import plots
from l2rw_jax import from_config
from l2rw_jax import workdir as workdir_lib

_CONFIG = common.define_config(
    os.path.join(os.path.dirname(__file__), "configs", "mnist_imbalance.py"),
    "Training config; fields overridable (--config.num_seeds=10).",
)
_WORKDIR = flags.DEFINE_string("workdir", None, "Where the runs are written.", required=True)
_METHODS = flags.DEFINE_list("methods", None, "Methods to run (default: the config's).")
_FRACTIONS = flags.DEFINE_list(
    "majority_fractions",
    None,
    "Imbalance only: majority fractions p to run (default: the config's).",
)
_HM_BATCH = flags.DEFINE_integer(
    "hard_mining_batch_size",
    500,
    "Batch size of hard_mining (the official MNIST code mines "
    "batches of 500; the other methods keep the config's).",
)

# Ren et al. 2018, Figure 3 at p = 0.995 (docs/design.md §4): test error in percent, read off
# the figure.
PAPER_ERROR_0995 = {"erm": 18.2, "hard_mining": 7.7, "l2rw": 3.6}


def main(argv):
    if len(argv) > 1:
        raise app.UsageError(f"Unexpected arguments: {argv[1:]}")
    common.quiet_checkpoint_logs()
    config, workdir = _CONFIG.value, workdir_lib.path(_WORKDIR.value)  # gs:// stays a URI.
    methods = _METHODS.value or [config.method.name]
    hm = lambda m: {"data": {"batch_size": _HM_BATCH.value}} if m == "hard_mining" else {}
    if from_config.split_options(config.data)["noise"] != "imbalance":  # labels as given: none
        if _FRACTIONS.value:
            given = (
                f" (data.dataset={config.data.dataset} is a source of your own: its labels "
                f"are taken as given; --config.data.corrupt_given_labels=True applies "
                f"the imbalance)"
                if from_config.labels_as_given(config.data)
                else ""
            )
            raise app.UsageError(
                f"--majority_fractions only applies to the imbalance config{given}."
            )
        results = common.run_methods(config, workdir, methods, hm)
        print(common.method_table(results))
        plots.plot_curves(
            {m: common.test_curve(workdir / m) for m in results},
            workdir / "accuracy.png",
            from_config.describe_data(config.data),
        )
        common.write_text(workdir / "table.md", common.method_table(results) + "\n")
        common.write_json(workdir / "summary.json", results)
        return

    fractions = [float(p) for p in (_FRACTIONS.value or [config.data.majority_fraction])]
    results = {}
    for p in fractions:
        cfg = config.copy_and_resolve_references()
        cfg.data.majority_fraction = p
        results[p] = common.run_methods(cfg, workdir / f"p{p}", methods, hm)
    header = ["method"] + [f"p = {p}" for p in fractions]
    rows = [
        [m] + [common.fmt(results[p][m]["final_test_accuracy"], error=True) for p in fractions]
        for m in methods
    ]
    if 0.995 in fractions:
        header.append("paper, p = 0.995")
        for row, m in zip(rows, methods):
            row.append(f"~{PAPER_ERROR_0995[m]}" if m in PAPER_ERROR_0995 else "-")
    table = common.markdown_table(header, rows)
    print(f"\nMNIST 4 vs 9, test error % (final, mean +- 95% CI over {config.num_seeds} seeds)")
    print(table)
    common.write_text(workdir / "table.md", table + "\n")
    common.write_json(workdir / "summary.json", {str(p): r for p, r in results.items()})
    plots.plot_error_vs_fraction(
        results, methods, workdir / "error.png", paper={0.995: PAPER_ERROR_0995}
    )


if __name__ == "__main__":
    common.run_main(main)
