"""The first command of the README: noisy digits, ERM vs L2RW, a table and a plot.

    python -m experiments.quickstart [--workdir=workdirs/quickstart] [--config.num_steps=3000]

Trains ERM and L2RW (3 seeds each, vmapped) on the embedded digits with 40% of the training
labels flipped (config: experiments/configs/quickstart.py), prints their test accuracy (mean +-
95% CI over seeds) and saves `<workdir>/accuracy.png`, test accuracy over training. About 30 s
on 2 CPU cores; the digits are read from scikit-learn (offline, no TensorFlow).
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
    os.path.join(os.path.dirname(__file__), "configs", "quickstart.py"),
    "Training config (fields overridable: --config.num_steps=3000).",
)
_WORKDIR = flags.DEFINE_string("workdir", "workdirs/quickstart", "Where the runs are written.")
_METHODS = flags.DEFINE_list("methods", ["erm", "l2rw"], "Methods to compare.")


def main(argv):
    if len(argv) > 1:
        raise app.UsageError(f"Unexpected arguments: {argv[1:]}")
    common.quiet_checkpoint_logs()
    workdir = workdir_lib.path(_WORKDIR.value)  # gs:// stays a URI; local: absolute.
    results = common.run_methods(_CONFIG.value, workdir, _METHODS.value)
    config = _CONFIG.value
    d = config.data
    labels = (
        from_config.describe_data(d)
        if from_config.labels_as_given(d)
        else f"{d.dataset}, {d.noise} flip {d.noise_ratio:.0%}"
    )
    print(
        f"\n{labels}, {d.clean_per_class} clean per "
        f"class, {config.model.name}, {config.num_steps} steps"
    )
    print(common.method_table(results))
    path = workdir / "accuracy.png"
    plots.plot_curves(
        {m: common.test_curve(workdir / m) for m in results}, path, from_config.describe_data(d)
    )
    print(f"\nplot: {path}\nruns: {', '.join(str(workdir / m) for m in results)}")


if __name__ == "__main__":
    common.run_main(main)
