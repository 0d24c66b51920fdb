"""A run's statistics: the mean and 95% confidence interval over members, and results.json.

``results.json`` schema: see :func:`l2rw_jax.train.train_and_evaluate`.
"""
from __future__ import annotations

import math

import numpy as np


def mean_ci95(values) -> dict:
    """Mean and 95% confidence interval of the mean (Student t, K - 1 degrees of freedom).

    ``h = t_{0.975, K-1} * s / sqrt(K)`` with ``s`` the sample standard deviation; ``ci95`` is
    None for a single value.
    """
    from scipy import stats  # scipy comes with jax (one of its dependencies).

    x = np.asarray(values, np.float64)
    out = {"per_seed": x.tolist(), "mean": float(x.mean()), "ci95": None,
           "ci95_low": None, "ci95_high": None}
    if x.size > 1:
        h = float(stats.t.ppf(0.975, x.size - 1) * x.std(ddof=1) / math.sqrt(x.size))
        out.update(ci95=h, ci95_low=out["mean"] - h, ci95_high=out["mean"] + h)
    return out


def summary(*, method: str, config: dict, members: list, history: list[dict],
            num_steps: int, all_zero_steps_K, wall_time: float, steps_per_s: float,
            timing: dict) -> dict:
    """The results.json dict of a finished run.

    Args:
      method: the method's name.
      config: the run's config as JSON (a dict).
      members: the members' ``members.MemberData``.
      history: the evaluations, ``[{"step", "test": {"accuracy": [K], "loss": [K],
        "per_class_accuracy": [K][C]}, "hyperval": {...} (with a hold-out)}]``.
      num_steps: training steps in all (finetune included).
      all_zero_steps_K: per member, steps whose weights were all 0.
    """
    K = len(members)
    test_acc_ExK = np.array([h["test"]["accuracy"] for h in history])
    final = history[-1]
    best_e_K = test_acc_ExK.argmax(0)
    if "hyperval" in final:
        hv_ExK = np.array([h["hyperval"]["accuracy"] for h in history])
        sel_e_K = hv_ExK.argmax(0)
        final_hv = mean_ci95(final["hyperval"]["accuracy"])
    else:
        sel_e_K = np.full(K, len(history) - 1)
        final_hv = None
    per_class_KxC = np.array(final["test"]["per_class_accuracy"])
    md0 = members[0]
    return {
        "method": method,
        "config": config,
        "seeds": [md.seed for md in members],
        "num_seeds": K,
        "num_steps": num_steps,
        "num_classes": md0.splits.num_classes,
        "num_train": int(len(md0.splits.train_labels)),
        "num_clean": int(len(md0.splits.clean_labels)),
        "num_test": int(len(md0.splits.test_labels)),
        "num_hyperval": 0 if md0.hyperval is None else int(len(md0.hyperval.test_labels)),
        "background_class": [md.splits.background_class for md in members],
        "final_test_accuracy": mean_ci95(final["test"]["accuracy"]),
        "best_test_accuracy": mean_ci95(test_acc_ExK.max(0)),
        "best_step": [int(history[e]["step"]) for e in best_e_K],
        "selected_test_accuracy": mean_ci95(test_acc_ExK[sel_e_K, np.arange(K)]),
        "final_test_loss": mean_ci95(final["test"]["loss"]),
        "final_hyperval_accuracy": final_hv,
        "per_class_accuracy": {"per_seed": per_class_KxC.tolist(),
                               "mean": per_class_KxC.mean(0).tolist()},
        "all_zero_steps": [int(z) for z in all_zero_steps_K],
        "wall_time_s": float(wall_time),
        "steps_per_s": float(steps_per_s),
        "timing_s": {k: float(v) for k, v in timing.items()},
        "completed": True,
    }
