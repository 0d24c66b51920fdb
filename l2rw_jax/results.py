"""A run's statistics: the mean and 95% confidence interval over members, and results.json.

A class without examples in a split has no accuracy (0/0): NaN in arrays, null in JSON
(``undefined_to_none``), and left out of every mean and worst-class figure.

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
    out = {
        "per_seed": x.tolist(),
        "mean": float(x.mean()),
        "ci95": None,
        "ci95_low": None,
        "ci95_high": None,
    }
    if x.size > 1:
        h = float(stats.t.ppf(0.975, x.size - 1) * x.std(ddof=1) / math.sqrt(x.size))
        out.update(ci95=h, ci95_low=out["mean"] - h, ci95_high=out["mean"] + h)
    return out


def undefined_to_none(values) -> list:
    """An array (any shape) as nested lists with NaN -> None: JSON null for an undefined
    value (a class absent from a split has no accuracy; JSON has no NaN)."""
    a = np.asarray(values, np.float64)
    return np.where(np.isnan(a), None, a.astype(object)).tolist()


def as_float(values) -> np.ndarray:
    """Nested lists with None (JSON null) -> a float64 array with NaN in their place."""
    return np.array(values, np.float64)


def class_accuracy(per_class_KxC) -> dict:
    """Per member: the mean over the classes present in the split (balanced accuracy) and the
    worst present class; absent classes (NaN or None) are left out of both.

    Args:
      per_class_KxC: per-class accuracy of K members, NaN or None where the class has no
        example.

    Returns:
      ``{"mean_class_accuracy": mean_ci95 over members, "worst_class_accuracy": mean_ci95 of
      each member's lowest present class, "worst_class": [K] (that class; the lower index on
      ties)}``; the statistics are None, and the class None, for a member with no class present.
    """
    acc_KxC = as_float(per_class_KxC)
    present_KxC = ~np.isnan(acc_KxC)
    mean_K = [float(a[p].mean()) if p.any() else None for a, p in zip(acc_KxC, present_KxC)]
    worst_K = [
        int(np.argmin(np.where(p, a, np.inf))) if p.any() else None
        for a, p in zip(acc_KxC, present_KxC)
    ]
    worst_acc_K = [None if c is None else float(a[c]) for a, c in zip(acc_KxC, worst_K)]
    stats = lambda v: None if None in v else mean_ci95(v)
    return {
        "mean_class_accuracy": stats(mean_K),
        "worst_class_accuracy": stats(worst_acc_K),
        "worst_class": worst_K,
    }


def gap_closed(acc_K, erm_K, oracle_K) -> dict | None:
    """The share of the gap between plain training and the oracle that a method closes, paired
    over seeds: ``g_k = (acc_k - erm_k) / (oracle_k - erm_k)``, then :func:`mean_ci95` over k
    (a fraction: 0 is ERM, 1 the oracle, above 1 beyond it). None when the arrays differ in
    shape or some seed has ``oracle_k == erm_k`` (no gap to close there).
    """
    a, e, o = (np.asarray(v, np.float64) for v in (acc_K, erm_K, oracle_K))
    if not a.shape == e.shape == o.shape or a.ndim != 1 or np.any(o == e):
        return None
    return mean_ci95((a - e) / (o - e))


def selected_evaluations(history: list[dict], split: str) -> np.ndarray:
    """``[K]`` per member the index in ``history`` of the evaluation with the highest
    ``split`` accuracy (the earliest on ties); ``split="final"``: the last evaluation."""
    K = len(history[-1]["test"]["accuracy"])
    if split == "final":
        return np.full(K, len(history) - 1)
    return np.array([h[split]["accuracy"] for h in history]).argmax(0)


def selection_improved(history: list[dict]) -> np.ndarray:
    """The members (indices) whose selection accuracy at the last evaluation is above all their
    earlier ones: those whose selected evaluation (:func:`selected_evaluations`, the earliest
    of equals) is the last; empty without a selection split."""
    if "selection" not in history[-1]:
        return np.zeros(0, np.int64)
    return np.flatnonzero(selected_evaluations(history, "selection") == len(history) - 1)


def summary(
    *,
    method: str,
    config: dict,
    members: list,
    history: list[dict],
    num_steps: int,
    all_zero_steps_K,
    wall_time: float,
    steps_per_s: float,
    timing: dict,
) -> dict:
    """The results.json dict of a finished run.

    Args:
      method: the method's name.
      config: the run's config as JSON (a dict).
      members: the members' ``members.MemberData``.
      history: the evaluations, ``[{"step", "test": {"accuracy": [K], "loss": [K],
        "per_class_accuracy": [K][C]}, "hyperval": {...} (with a hold-out), "selection":
        {...} (with a selection hold-out)}]``.
      num_steps: training steps in all (finetune included).
      all_zero_steps_K: per member, steps whose weights were all 0.
    """
    K = len(members)
    test_acc_ExK = np.array([h["test"]["accuracy"] for h in history])
    final = history[-1]
    best_e_K = test_acc_ExK.argmax(0)
    final_hv = mean_ci95(final["hyperval"]["accuracy"]) if "hyperval" in final else None
    final_sel = mean_ci95(final["selection"]["accuracy"]) if "selection" in final else None
    selected_by = next((s for s in ("selection", "hyperval") if s in final), "final")
    sel_e_K = selected_evaluations(history, selected_by)
    per_class_KxC = as_float(final["test"]["per_class_accuracy"])  # NaN: class not in test
    present_KxC = ~np.isnan(per_class_KxC)
    # Over the members whose test split has the class; NaN (null) where none has it.
    mean_C = np.where(
        present_KxC.any(0),
        np.where(present_KxC, per_class_KxC, 0.0).sum(0) / np.maximum(present_KxC.sum(0), 1),
        np.nan,
    )
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
        "num_selection": 0 if md0.selection is None else int(len(md0.selection.test_labels)),
        "background_class": [md.splits.background_class for md in members],
        "final_test_accuracy": mean_ci95(final["test"]["accuracy"]),
        "best_test_accuracy": mean_ci95(test_acc_ExK.max(0)),
        "best_step": [int(history[e]["step"]) for e in best_e_K],
        "selected_test_accuracy": mean_ci95(test_acc_ExK[sel_e_K, np.arange(K)]),
        "selected_step": [int(history[e]["step"]) for e in sel_e_K],
        "selected_by": selected_by,
        "final_selection_accuracy": final_sel,
        "final_test_loss": mean_ci95(final["test"]["loss"]),
        "final_hyperval_accuracy": final_hv,
        "per_class_accuracy": {
            "per_seed": undefined_to_none(per_class_KxC),
            "mean": undefined_to_none(mean_C),
        },
        **class_accuracy(per_class_KxC),
        "all_zero_steps": [int(z) for z in all_zero_steps_K],
        "wall_time_s": float(wall_time),
        "steps_per_s": float(steps_per_s),
        "timing_s": {k: float(v) for k, v in timing.items()},
        "completed": True,
    }
