"""CIFAR-10/100 with noisy labels: WRN-28-10 uniform flip, ResNet-32 background flip.

    python -m experiments.cifar --config=experiments/configs/cifar_uniform.py:cifar10 \\
        --workdir=workdirs/cifar10_uniform --methods=erm,l2rw
    L2RW_DEV_DATA=../shared/data python -m experiments.cifar \\
        --config=experiments/configs/cifar_background.py:dev \\
        --workdir=workdirs/cifar_dev_background --config.num_steps=2000

The `dev` variants read the 20,000 / 5,000 CIFAR-10 development copy from
`$L2RW_DEV_DATA/cifar10_dev/cifar10_dev.npz` (experiments/configs/dev_data.py); unset, the
command stops with a one-line error saying so. Each method runs in `<workdir>/<method>`
(resumed if interrupted); prints the table of test accuracy (mean +- 95% CI over the seeds)
and writes `table.md`, `summary.json`, `accuracy.png`.
Catalog datasets must be prepared in the tfds data_dir (`--config.data.data_dir`), or given as
`--config.data.dataset=npz:/path/file.npz`.
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
    os.path.join(os.path.dirname(__file__), "configs", "cifar_uniform.py"),
    "Training config; fields overridable (--config.num_steps=2000).",
)
_WORKDIR = flags.DEFINE_string("workdir", None, "Where the runs are written.", required=True)
_METHODS = flags.DEFINE_list("methods", None, "Methods to run (default: the config's).")


def main(argv):
    if len(argv) > 1:
        raise app.UsageError(f"Unexpected arguments: {argv[1:]}")
    common.quiet_checkpoint_logs()
    config, workdir = _CONFIG.value, workdir_lib.path(_WORKDIR.value)  # gs:// stays a URI.
    results = common.run_methods(config, workdir, _METHODS.value or [config.method.name])
    table = common.method_table(results)
    print(table)
    common.write_text(workdir / "table.md", table + "\n")
    common.write_json(workdir / "summary.json", results)
    plots.plot_curves(
        {m: common.test_curve(workdir / m) for m in results},
        workdir / "accuracy.png",
        from_config.describe_data(config.data),
    )


if __name__ == "__main__":
    common.run_main(main)
