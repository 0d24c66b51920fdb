"""Audit a trained run: `python -m experiments.audit --workdir=<run>`.

Parses flags and calls `l2rw_jax.audit.audit_run` (`l2rw_jax/audit/from_workdir.py`: how the run's
data and model are rebuilt and checked), which writes `<workdir>/audit/report.html`,
`<workdir>/audit/audit.json` and `<workdir>/audit/label_issues.csv` (every training example,
most suspect label first, with `source_index`: its row in the dataset's own training arrays)
and `<workdir>/audit/trusted_set.csv` (every clean example, most suspect label first).

Run it from the directory training ran from (configs may name data by relative path).

`--preset=quick` runs the same sections with fewer attack steps, epsilons and examples
(`l2rw_jax.audit.run.QUICK`; the quickstart's run in under a CPU-minute); `--audit.<field>`
overrides apply on top of the preset. A bar follows the sections.

Examples:
  python -m experiments.audit --workdir=workdirs/mnist_uniform/l2rw
  python -m experiments.audit --workdir=workdirs/quickstart/l2rw --preset=quick
  python -m experiments.audit --workdir=workdirs/mnist_uniform/l2rw --audit.robust_examples=0 \\
      --audit.pgd_steps=20          # every test image, stronger PGD
"""

from __future__ import annotations

import os
import sys
from typing import Sequence

from absl import app
from absl import flags
from ml_collections import config_flags

from experiments import common
from l2rw_jax import audit
from l2rw_jax.audit.run import PRESETS

_WORKDIR = flags.DEFINE_string("workdir", None, "The run's workdir.", required=True)
_OUT = flags.DEFINE_string("out_dir", None, "Where to write the audit; default <workdir>/audit.")
_MEMBER = flags.DEFINE_integer(
    "member", 0, "Which member (seed = config.seed + member) of a multi-seed run to audit."
)
_AUDIT = config_flags.DEFINE_config_dict("audit", audit.default_config(), "Audit settings.")
_PRESET = flags.DEFINE_enum(
    "preset",
    "full",
    PRESETS,
    "full: the default settings; quick: the same sections with "
    "fewer attack steps, epsilons and examples. --audit.<field> overrides apply on top.",
)

# The library's functions, under the names this script always had (tests, notebooks).
load_run = audit.load_run
audit_run = audit.audit_run


def _config(argv: Sequence[str]):
    """The preset's settings with the command line's ``--audit.<field>`` overrides on top."""
    config = audit.default_config(_PRESET.value)
    given = {a[len("--audit.") :].split("=", 1)[0] for a in argv if a.startswith("--audit.")}
    config.update({field: _AUDIT.value[field] for field in given if field in config})
    return config


def main(argv: Sequence[str]) -> None:
    if len(argv) > 1:
        raise app.UsageError(f"Unexpected arguments: {argv[1:]}")
    res = audit_run(_WORKDIR.value, _config(sys.argv), _OUT.value, _MEMBER.value)
    out = _OUT.value or os.path.join(os.path.abspath(_WORKDIR.value), "audit")
    m, r, li = res["mistakes"], res["robustness"], res["label_issues"]
    print(f"report: {os.path.join(out, 'report.html')}")
    print(
        f"top-1 {m['top_k_accuracy']['top1']:.4f}  ECE {m['calibration']['ece']:.4f}  worst class "
        f"{m['worst_class']} {m['worst_class_accuracy']:.4f}"
    )
    print("eps      " + " ".join(f"{e:>6g}" for e in r["epsilons"]))
    print("FGSM acc " + " ".join(f"{a:6.3f}" for a in r["fgsm_accuracy"]))
    print("PGD acc  " + " ".join(f"{a:6.3f}" for a in r["pgd_accuracy"]))
    for name, scores in li["rankings"].items():
        print(
            f"{name:20s} "
            + "  ".join(
                f"P@{v['k']} {v['precision']:.3f} R@{v['k']} {v['recall']:.3f}"
                for v in scores.values()
            )
        )


if __name__ == "__main__":
    common.run_main(main)
