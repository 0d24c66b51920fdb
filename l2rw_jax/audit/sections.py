"""The audit's analyses, one section each: arrays in, a `Section` (results, figures, notes) out.

`run_audit` is their table of contents: it checks the inputs once (`Inputs`), calls the sections
in order and hands them to `report.write_report`, which renders each with its own renderer
(`renderers.RENDERERS`). In the spirit of big_vision's evaluators (each one `run`s and yields its
metrics; the trainer only writes them) and clu's metric writers (scalars, images and text kept
apart from where they are written):

  mistakes      accuracy per class, confusion, calibration, the most confident mistakes explained
  robustness    FGSM / PGD accuracy over epsilon, minimal adversarial epsilon
  biases        prototypes and criticisms per class, attribute rates among them
  label_issues  rankings of suspect labels, precision/recall@k, `label_issues.csv`

Every section takes `(inputs, config, rng)`. The random subsets are drawn from one generator
shared in this order (neighbour pool; curve rows, minimal-eps rows; bias rows), so a section's
numbers depend on the sections before it only through that generator -- as in one function.
"""

from __future__ import annotations

from typing import Any, Callable, Mapping, NamedTuple

import numpy as np

from l2rw_jax.audit import attacks
from l2rw_jax.audit import common
from l2rw_jax.audit import criticism
from l2rw_jax.audit import label_issues
from l2rw_jax.audit import mistakes
from l2rw_jax.audit import figures


class Section(NamedTuple):
    """One analysis of the audit, ready to be written.

    Attributes:
      name: its key in `audit.json` (and its renderer in `renderers.RENDERERS`).
      title: its heading in the report.
      results: every number it reports (JSON-able after `report.to_jsonable`).
      figures: name -> base64 PNG, or a list / dict of them (galleries, per-class grids).
      notes: sentences on what was left out and why (also in `audit.json["meta"]["notes"]`).
      files: file name -> function writing it at the path given (inside the audit directory).
    """

    name: str
    title: str
    results: dict
    figures: dict
    notes: list
    files: Mapping[str, Callable[[str], Any]] = {}


class Inputs(NamedTuple):
    """What the sections read, checked once by `run_audit` (shapes: N test, M train rows)."""

    model: common.Model  # apply_fn, params, model_state, feature_fn
    x_test: np.ndarray  # N x H x W x C, normalised
    y_test: np.ndarray  # N
    logits_test: np.ndarray  # N x K
    x_train: np.ndarray  # M x H x W x C, normalised
    y_train: np.ndarray  # M, the given (maybe noisy) labels
    true_train: np.ndarray | None  # M, when known
    is_noisy_train: np.ndarray | None  # M bool, when known
    source_index: np.ndarray  # M, each row's index in the user's data
    example_weights: Mapping[str, np.ndarray] | None  # what the run recorded
    attributes: Mapping[str, np.ndarray]  # per-training-row attributes for the bias section
    num_classes: int
    mean_C: np.ndarray
    std_C: np.ndarray
    class_names: list  # names for the report (label ids as strings when none were given)
    names_given: bool  # the CSV gets class-name columns only then


def _subset(n: int, size: int, rng: np.random.Generator) -> np.ndarray:
    """Sorted random rows (all rows when size is 0 or >= n)."""
    if size <= 0 or size >= n:
        return np.arange(n)
    return np.sort(rng.choice(n, size, replace=False))


def _stratified_subset(labels: np.ndarray, classes, per_class: int, rng: np.random.Generator):
    rows = []
    for k in classes:
        rk = np.flatnonzero(labels == k)
        rows.append(
            rk
            if per_class <= 0 or per_class >= len(rk)
            else np.sort(rng.choice(rk, per_class, replace=False))
        )
    return np.sort(np.concatenate(rows))


def attack_config(config, inp: Inputs, seed: int) -> attacks.AttackConfig:
    """The audit config's attack settings as an `attacks.AttackConfig`."""
    return attacks.AttackConfig(
        steps=config.pgd_steps,
        step_size=config.pgd_step_size,
        random_start=config.random_start,
        objective=config.attack_objective,
        mean=inp.mean_C,
        std=inp.std_C,
        seed=seed,
        batch_size=config.batch_size,
    )


def mistakes_section(inp: Inputs, config, rng: np.random.Generator) -> Section:
    """Accuracy (top-k, per class, worst class), confusion, calibration (ECE), and the most
    confident mistakes with integrated gradients, Grad-CAM and their nearest training images."""
    apply_fn, params, model_state, feature_fn = inp.model
    x_test, y_test, x_train, y_train = inp.x_test, inp.y_test, inp.x_train, inp.y_train
    num_classes, class_names, bs = inp.num_classes, inp.class_names, config.batch_size
    notes, figs = [], {}
    probs_test = common.softmax(inp.logits_test)
    pred_test = probs_test.argmax(axis=1)
    present = np.unique(y_test)
    if len(present) < num_classes:
        notes.append(
            f"Classes {sorted(set(range(num_classes)) - set(present.tolist()))} have no test "
            f"example; per-class accuracy covers the {len(present)} classes present."
        )
    acc_k = mistakes.per_class_accuracy(y_test, pred_test, num_classes, classes=present)
    cm = mistakes.confusion_matrix(y_test, pred_test, num_classes)
    top_ks = sorted({1, min(5, num_classes)})
    ece = mistakes.expected_calibration_error(probs_test, y_test, config.ece_bins)
    m_res = {
        "top_k_accuracy": {
            f"top{k}": mistakes.top_k_accuracy(y_test, inp.logits_test, k) for k in top_ks
        },
        "per_class_accuracy": {str(k): v for k, v in acc_k.items()},
        **mistakes.class_accuracy_summary(acc_k),
        "confusion_matrix": cm.tolist(),
        "calibration": ece,
    }
    gallery_rows = mistakes.most_confident_mistakes(probs_test, y_test, config.num_mistakes)
    pool = _subset(len(x_train), config.neighbor_pool, rng)
    gallery = []
    if len(gallery_rows):
        feats_pool = common.compute_features(
            feature_fn,
            params,
            model_state,
            x_train[pool],
            batch_size=bs,
            desc="train features (neighbours)",
        )
        feats_q = common.compute_features(
            feature_fn, params, model_state, x_test[gallery_rows], batch_size=bs
        )
        nn_idx, nn_dist = mistakes.nearest_neighbors(feats_q, feats_pool, config.num_neighbors)
        top_cls, top_p = mistakes.top_predictions(probs_test[gallery_rows], min(3, num_classes))
        black = common.from_raw(np.zeros_like(x_test[gallery_rows]), inp.mean_C, inp.std_C)
        ig = mistakes.integrated_gradients(
            apply_fn,
            params,
            model_state,
            x_test[gallery_rows],
            pred_test[gallery_rows],
            baseline=black,
            steps=config.ig_steps,
        )
        cams = None
        if mistakes.has_conv_map(feature_fn, params, model_state, x_test[:1]):
            cams = mistakes.grad_cam(
                feature_fn, params, model_state, x_test[gallery_rows], pred_test[gallery_rows]
            )["cam_upsampled"]
        else:
            notes.append(
                "The model has no conv feature map, so Grad-CAM is not shown; integrated "
                "gradients is."
            )
        for j, row in enumerate(gallery_rows):
            gallery.append(
                {
                    "test_row": int(row),
                    "label": int(y_test[row]),
                    "top3": [
                        {"class": int(c), "prob": float(p)} for c, p in zip(top_cls[j], top_p[j])
                    ],
                    "neighbors": [
                        {
                            "train_row": int(pool[i]),
                            "label": int(y_train[pool[i]]),
                            "distance": float(d),
                        }
                        for i, d in zip(nn_idx[j], nn_dist[j])
                    ],
                    "ig_delta_f": float(ig["delta_f"][j]),
                    "ig_completeness_error": float(ig["completeness_error"][j]),
                    "ig_relative_completeness_error": float(ig["relative_completeness_error"][j]),
                }
            )
        figs["gallery"] = [
            figures.fig_mistake(
                common.to_raw(x_test[row : row + 1], inp.mean_C, inp.std_C)[0],
                ig["attributions"][j],
                None if cams is None else cams[j],
                common.to_raw(x_train[pool[nn_idx[j]]], inp.mean_C, inp.std_C),
                gallery[j],
                class_names,
            )
            for j, row in enumerate(gallery_rows)
        ]
        m_res["integrated_gradients"] = {
            "steps": config.ig_steps,
            "baseline": "black image (raw 0)",
            "target": "predicted-class logit",
            "max_abs_completeness_error": float(np.max(np.abs(ig["completeness_error"]))),
            "max_relative_completeness_error": float(np.max(ig["relative_completeness_error"])),
        }
    else:
        notes.append("The model makes no mistake on the test set: the mistakes gallery is empty.")
    m_res["gallery"] = gallery
    m_res["neighbor_pool_size"] = int(len(pool))
    figs["confusion"] = figures.fig_confusion(cm, class_names)
    figs["reliability"] = figures.fig_reliability(ece)
    figs["per_class"] = figures.fig_per_class(acc_k, class_names)
    return Section("mistakes", "Understanding mistakes", m_res, figs, notes)


def robustness_section(inp: Inputs, config, rng: np.random.Generator) -> Section:
    """Accuracy under FGSM and PGD over `config.epsilons`, and the minimal adversarial epsilon
    that leaves the predicted class (bisection), with the most fragile test images."""
    model, x_test, y_test, class_names = inp.model, inp.x_test, inp.y_test, inp.class_names
    pred_test = common.softmax(inp.logits_test).argmax(axis=1)
    figs = {}
    rob_rows = _subset(len(x_test), config.robust_examples, rng)
    curve = attacks.robust_accuracy_curve(
        model,
        x_test[rob_rows],
        y_test[rob_rows],
        config.epsilons,
        attack_config(config, inp, config.seed),
    )
    me_rows = rob_rows[_subset(len(rob_rows), config.min_eps_examples, rng)]
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


def bias_section(inp: Inputs, config, rng: np.random.Generator) -> Section:
    """Per class of the training set (given labels): robust and MMD-critic prototypes and
    criticisms, and how often each attribute (`ink`, `is_noisy`, the user's) occurs among them."""
    apply_fn, params, model_state, feature_fn = model = inp.model
    x_train, y_train, num_classes, class_names = (
        inp.x_train, inp.y_train, inp.num_classes, inp.class_names
    )
    bs = config.batch_size
    train_classes = np.unique(y_train)
    bias_rows = _stratified_subset(y_train, train_classes, config.bias_examples_per_class, rng)
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


def label_issues_section(inp: Inputs, config, rng: np.random.Generator) -> Section:
    """Training labels ranked from most to least suspect (the recorded L2RW signals when given,
    final loss, confident learning), scored against the noise mask when known; the ranked CSV of
    every training row (`label_issues.rank_label_issues`) as the section's file."""
    del rng  # no random subset: every training row is ranked
    apply_fn, params, model_state, _ = inp.model
    x_train, y_train, class_names = inp.x_train, inp.y_train, inp.class_names
    example_weights, is_noisy_train = inp.example_weights, inp.is_noisy_train
    true_train, source_index = inp.true_train, inp.source_index
    notes = []
    logits_train = common.predict_logits(
        apply_fn, params, model_state, x_train, batch_size=config.batch_size, desc="train logits"
    )
    probs_train = common.softmax(logits_train)
    loss_train = label_issues.final_loss(probs_train, y_train)
    rows_ranked = np.arange(len(x_train))
    orders = {}
    mean_w = meta_grad = None
    if example_weights is not None:
        idx = np.asarray(example_weights["index"])
        w = np.asarray(example_weights["mean_weight"], np.float64)
        seen = np.isfinite(w)
        if "count" in example_weights:
            seen &= np.asarray(example_weights["count"]) > 0
        if (~seen).any():
            notes.append(
                f"{int((~seen).sum())} training examples have no recorded weight (never drawn); "
                f"they are left out of every ranking."
            )
        rows_ranked = np.sort(idx[seen])
        mean_w = np.full(len(x_train), np.nan)
        mean_w[idx] = w
        orders["l2rw_weight"] = label_issues.rank_by_l2rw_weight(
            mean_w[rows_ranked], loss_train[rows_ranked]
        )
        # The meta-gradient itself (high = harmful): its mean over the example's visits, and
        # the robust variant's per-example memory of it.
        for key, name in (("mean_meta_grad", "l2rw_meta_grad"), ("meta_grad_memory",
                                                                 "l2rw_memory")):
            if key in example_weights:
                score = np.full(len(x_train), np.nan)
                score[idx] = np.asarray(example_weights[key], np.float64)
                orders[name] = label_issues.rank_by_l2rw_weight(
                    -score[rows_ranked], loss_train[rows_ranked]
                )
                if key == "mean_meta_grad":
                    meta_grad = score
    else:
        notes.append(
            "No recorded L2RW weights were given: label issues are ranked by the baselines only."
        )
    orders["final_loss"] = label_issues.rank_by_loss(loss_train[rows_ranked])
    orders["confident_learning"] = label_issues.rank_by_confident_learning(
        probs_train[rows_ranked], y_train[rows_ranked]
    )
    l_res = {"n_ranked": int(len(rows_ranked)), "rankings": {}}
    if is_noisy_train is not None and is_noisy_train[rows_ranked].any():
        noisy_r = is_noisy_train[rows_ranked]
        n_noisy = int(noisy_r.sum())
        ks = [n_noisy] + [int(k) for k in config.suspect_ks]
        l_res["n_noisy"] = n_noisy
        for name, order in orders.items():
            l_res["rankings"][name] = label_issues.score_ranking(order, noisy_r, ks)
    else:
        notes.append(
            "No example is marked noisy (is_noisy missing or all False): precision@k and "
            "recall@k are not computed."
        )
    main = next(
        n for n in ("l2rw_meta_grad", "l2rw_memory", "l2rw_weight", "final_loss") if n in orders
    )
    top = rows_ranked[orders[main][: config.num_suspects]]
    pred_train = probs_train.argmax(axis=1)
    l_res["suspects_ranking"] = main
    l_res["top_suspects"] = [
        {
            "train_row": int(r),
            "source_index": int(source_index[r]),
            "given_label": int(y_train[r]),
            "predicted_label": int(pred_train[r]),
            "true_label": None if true_train is None else int(true_train[r]),
            "is_noisy": None if is_noisy_train is None else bool(is_noisy_train[r]),
            "mean_weight": None if mean_w is None else float(mean_w[r]),
            "mean_meta_grad": None if meta_grad is None else float(meta_grad[r]),
            "loss": float(loss_train[r]),
        }
        for r in top
    ]
    l_res["csv"], write_csv = _label_issues_csv(
        example_weights,
        source_index,
        y_train,
        probs_train,
        loss_train,
        true_train,
        class_names if inp.names_given else None,
    )
    figs = {}
    figs["suspects"] = figures.fig_suspects(
        common.to_raw(x_train[top], inp.mean_C, inp.std_C), l_res["top_suspects"], class_names
    )
    if mean_w is not None and is_noisy_train is not None:
        figs["weight_hist"] = figures.fig_weight_hist(
            mean_w[rows_ranked], is_noisy_train[rows_ranked]
        )
        if meta_grad is not None:
            figs["meta_grad_hist"] = figures.fig_weight_hist(
                meta_grad[rows_ranked],
                is_noisy_train[rows_ranked],
                xlabel="mean normalised L2RW meta-gradient",
            )
    files = {l_res["csv"]["file"]: write_csv}
    return Section("label_issues", "Finding mislabeled examples", l_res, figs, notes, files)


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


def _label_issues_csv(
    example_weights, source_index, y_train, probs_train, loss_train, true_train, class_names
) -> tuple[dict, Callable[[str], str]]:
    """`label_issues.csv`: every training row, ranked as the report's suspects are
    (`label_issues.rank_label_issues`, ranked_by="auto"); returns its audit.json entry and the
    function that writes it at a path.

    Recorded values are written only for the examples the run recorded them for (count > 0);
    the confident-learning flag is computed over every training row.
    """
    n = len(y_train)
    recorded = {}
    count = None
    if example_weights is not None:
        idx = np.asarray(example_weights["index"])
        seen = np.isfinite(np.asarray(example_weights["mean_weight"], np.float64))
        if "count" in example_weights:
            c = np.asarray(example_weights["count"])
            seen &= c > 0
            count = np.full(n, None, object)
            count[idx] = [int(v) for v in c]
        for key in ("mean_meta_grad", "meta_grad_memory", "mean_weight"):
            if key in example_weights:
                score = np.full(n, np.nan)
                score[idx[seen]] = np.asarray(example_weights[key], np.float64)[seen]
                recorded[key] = score
    flags = label_issues.confident_learning_flags(probs_train, y_train)
    order, ranked_by = label_issues.rank_label_issues(
        loss_train,
        mean_meta_grad_N=recorded.get("mean_meta_grad"),
        meta_grad_memory_N=recorded.get("meta_grad_memory"),
        mean_weight_N=recorded.get("mean_weight"),
        flags_N=flags,
    )
    columns = {
        "source_index": source_index,
        "train_row": np.arange(n),
        "given_label": y_train,
        "predicted_label": probs_train.argmax(axis=1),
        "true_label": true_train,
        "count": count,
        "mean_meta_grad": recorded.get("mean_meta_grad"),
        "meta_grad_memory": recorded.get("meta_grad_memory"),
        "mean_weight": recorded.get("mean_weight"),
        "loss": loss_train,
        "confident_learning": flags,
    }
    entry = {
        "file": "label_issues.csv",
        "rows": n,
        "ranked_by": ranked_by,
        "empty_columns": sorted(k for k, v in columns.items() if v is None),
    }
    return entry, lambda path: label_issues.write_label_issues_csv(
        path, order, columns, class_names
    )
