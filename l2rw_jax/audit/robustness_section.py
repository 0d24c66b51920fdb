"""The audit's second section, on the test set: accuracy under FGSM and PGD over epsilon and
the minimal adversarial epsilon per example (bisection), with the most fragile test images.
"""

from __future__ import annotations

import numpy as np

from l2rw_jax.audit import attacks
from l2rw_jax.audit import common
from l2rw_jax.audit import figures
from l2rw_jax.audit.sections import Inputs
from l2rw_jax.audit.sections import Section
from l2rw_jax.audit.sections import attack_config
from l2rw_jax.audit.sections import subset


def robustness_section(inp: Inputs, config, rng: np.random.Generator) -> Section:
    """Accuracy under FGSM and PGD over `config.epsilons`, and the minimal adversarial epsilon
    that leaves the predicted class (bisection), with the most fragile test images."""
    model, x_test, y_test, class_names = inp.model, inp.x_test, inp.y_test, inp.class_names
    pred_test = common.softmax(inp.logits_test).argmax(axis=1)
    figs = {}
    rob_rows = subset(len(x_test), config.robust_examples, rng)
    curve = attacks.robust_accuracy_curve(
        model,
        x_test[rob_rows],
        y_test[rob_rows],
        config.epsilons,
        attack_config(config, inp, config.seed),
    )
    me_rows = rob_rows[subset(len(rob_rows), config.min_eps_examples, rng)]
    me = attacks.minimal_adversarial_epsilon(
        model,
        x_test[me_rows],
        pred_test[me_rows],
        attack_config(config, inp, config.seed + 1),
        eps_max=config.eps_max,
        bisection_steps=config.bisection_steps,
    )
    min_eps = me["min_eps"]
    finite = np.isfinite(min_eps)
    per_class_median = {}
    for k in np.unique(y_test[me_rows]):
        e = min_eps[y_test[me_rows] == k]
        per_class_median[str(int(k))] = float(np.median(e))
    r_res = {
        "epsilon_units": "raw pixels in [0, 1] (L-inf)",
        "n_curve_examples": int(len(rob_rows)),
        "n_min_eps_examples": int(len(me_rows)),
        "epsilons": curve["epsilons"],
        "clean_accuracy": curve["clean_accuracy"],
        "fgsm_accuracy": curve["fgsm_accuracy"],
        "pgd_accuracy": curve["pgd_accuracy"],
        "pgd_steps": config.pgd_steps,
        "pgd_step_size_fraction_of_eps": config.pgd_step_size,
        "random_start": bool(config.random_start),
        "objective": config.attack_objective,
        "min_eps": {
            "reference": "predicted class",
            "eps_max": config.eps_max,
            "bracket_width": config.eps_max / 2**config.bisection_steps,
            "median": float(np.median(min_eps)),
            "mean_of_found": float(min_eps[finite].mean()) if finite.any() else None,
            "fraction_not_found": float(1.0 - finite.mean()),
            "per_true_class_median": per_class_median,
        },
    }
    figs["curve"] = figures.fig_curve(curve)
    figs["min_eps_hist"] = figures.fig_min_eps(min_eps, config.eps_max)
    figs["min_eps_per_class"] = figures.fig_class_bars(
        per_class_median, class_names, "median minimal eps"
    )
    fragile = np.argsort(min_eps, kind="stable")
    fragile = fragile[(min_eps[fragile] > 0) & np.isfinite(min_eps[fragile])][:6]
    if len(fragile):
        x_adv = me["x_adv"][fragile]
        pred_adv = common.softmax(
            common.predict_logits(
                model.apply_fn, model.params, model.model_state, x_adv, batch_size=config.batch_size
            )
        ).argmax(axis=1)
        figs["adversarial"] = figures.fig_adversarial(
            common.to_raw(x_test[me_rows[fragile]], inp.mean_C, inp.std_C),
            common.to_raw(x_adv, inp.mean_C, inp.std_C),
            pred_test[me_rows[fragile]],
            pred_adv,
            min_eps[fragile],
            class_names,
        )
    return Section("robustness", "Robustness", r_res, figs, [])
