"""The audit's third section, on the training set grouped by given label: robust and MMD-critic
prototypes and criticisms per class, and how often each attribute occurs among them.
"""

from __future__ import annotations

import numpy as np

from l2rw_jax.audit import attacks
from l2rw_jax.audit import common
from l2rw_jax.audit import criticism
from l2rw_jax.audit import figures
from l2rw_jax.audit.sections import Inputs
from l2rw_jax.audit.sections import Section
from l2rw_jax.audit.sections import attack_config
from l2rw_jax.audit.sections import stratified_subset


def bias_section(inp: Inputs, config, rng: np.random.Generator) -> Section:
    """Per class of the training set (given labels): robust and MMD-critic prototypes and
    criticisms, and how often each attribute (`ink`, `is_noisy`, the user's) occurs among them."""
    apply_fn, params, model_state, feature_fn = model = inp.model
    x_train, y_train, num_classes, class_names = (
        inp.x_train,
        inp.y_train,
        inp.num_classes,
        inp.class_names,
    )
    bs = config.batch_size
    train_classes = np.unique(y_train)
    bias_rows = stratified_subset(y_train, train_classes, config.bias_examples_per_class, rng)
    xb, yb = x_train[bias_rows], y_train[bias_rows]
    logits_b = common.predict_logits(apply_fn, params, model_state, xb, batch_size=bs)
    margin_b = logits_b[np.arange(len(yb)), yb] - np.max(
        np.where(np.eye(num_classes, dtype=bool)[yb], -np.inf, logits_b), axis=1
    )
    feats_b = common.compute_features(
        feature_fn, params, model_state, xb, batch_size=bs, desc="bias features"
    )
    me_b = attacks.minimal_adversarial_epsilon(
        model,
        xb,
        yb,
        attack_config(config, inp, config.seed + 2),
        eps_max=config.eps_max,
        bisection_steps=config.bisection_steps,
    )
    raw_b = common.to_raw(xb, inp.mean_C, inp.std_C)
    all_attrs = {"ink": raw_b.mean(axis=(1, 2, 3))}
    if inp.is_noisy_train is not None:
        all_attrs["is_noisy"] = inp.is_noisy_train[bias_rows]
    for name, a in inp.attributes.items():
        all_attrs[name] = np.asarray(a)[bias_rows]
    groups = criticism.per_class_groups(yb, train_classes)
    b_res = {
        "data": "training examples grouped by their given label",
        "examples_per_class": {str(int(k)): int(len(r)) for k, r in groups.items()},
        "kernel": "RBF exp(-|x-y|^2 / (2 sigma^2)) on penultimate features, sigma = median "
        "pairwise distance within the class",
        "per_class": {},
        "attributes": {name: {} for name in all_attrs},
    }
    figs = {"bias_classes": {}}
    bias_sides = {}
    for k, rows in groups.items():
        rob = criticism.robustness_prototypes(
            me_b["min_eps"][rows], margin_b[rows], config.num_prototypes, config.num_criticisms
        )
        mmd = criticism.mmd_critic(
            feats_b[rows],
            config.num_prototypes,
            config.num_criticisms,
            reg_weight=config.mmd_reg_weight,
        )
        sides = {
            "robust_prototypes": rows[rob["prototypes"]],
            "robust_criticisms": rows[rob["criticisms"]],
            "mmd_prototypes": rows[mmd["prototypes"]],
            "mmd_criticisms": rows[mmd["criticisms"]],
        }
        eps_k = me_b["min_eps"][rows]
        b_res["per_class"][str(k)] = {
            **{side: bias_rows[r].tolist() for side, r in sides.items()},
            "robust_prototype_min_eps": [
                None if not np.isfinite(e) else float(e)
                for e in me_b["min_eps"][sides["robust_prototypes"]]
            ],
            "robust_criticism_min_eps": [
                None if not np.isfinite(e) else float(e)
                for e in me_b["min_eps"][sides["robust_criticisms"]]
            ],
            "class_median_min_eps": float(np.median(eps_k)),
            "mmd_sigma": mmd["sigma"],
            "mmd2": mmd["mmd2"],
            "mmd_criticism_logdet": mmd["criticism_logdet"],
        }
        for name, a in all_attrs.items():
            b_res["attributes"][name][str(k)] = criticism.attribute_rates(a, sides, rows)
        bias_sides[k] = sides
    b_res["largest_over_representation"] = _largest_gaps(b_res["attributes"])
    # Image grids: classes named in the largest over-representations first, then in order.
    flagged = [g["class"] for g in b_res["largest_over_representation"] if g["attribute"] != "ink"]
    shown = list(dict.fromkeys(flagged + sorted(groups)))[: config.max_classes_shown]
    for k in sorted(shown):
        figs["bias_classes"][k] = figures.fig_prototypes(
            {side: raw_b[r] for side, r in bias_sides[k].items()},
            class_names[k],
        )
    return Section("biases", "Uncovering biases", b_res, figs, [])


def _largest_gaps(attr_res: dict) -> list[dict]:
    """For each attribute, the class with the largest |prototype - criticism| rate, per method."""
    out = []
    for name, per_class in attr_res.items():
        for method in ("robust", "mmd"):
            key = f"{method}_prototype_minus_criticism"
            cands = [(k, v[key]) for k, v in per_class.items() if v.get(key) is not None]
            if cands:
                k, gap = max(cands, key=lambda kv: abs(kv[1]))
                out.append(
                    {
                        "attribute": name,
                        "method": method,
                        "class": int(k),
                        "prototype_minus_criticism": gap,
                        "class_rate": per_class[k]["class_rate"],
                        "prototypes": per_class[k][f"{method}_prototypes"],
                        "criticisms": per_class[k][f"{method}_criticisms"],
                    }
                )
    return out
