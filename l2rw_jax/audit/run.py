"""`run_audit`: the whole audit of one trained model, from arrays to `audit/report.html` + `audit.json`.

Works on any model behind the pure interface of `l2rw_jax.audit.common` and numpy arrays, so it
runs from a notebook as well as from `python -m experiments.audit --workdir=<run>`.
"""

from __future__ import annotations

import logging
import os
import time
from typing import TYPE_CHECKING, Callable, Mapping

import numpy as np

from l2rw_jax.audit import attacks
from l2rw_jax.audit import common
from l2rw_jax.audit import criticism
from l2rw_jax.audit import label_issues
from l2rw_jax.audit import mistakes
from l2rw_jax.audit import report

if TYPE_CHECKING:
    import ml_collections

log = logging.getLogger("l2rw_jax.audit")


def default_config() -> ml_collections.ConfigDict:
    """Audit settings; every field is overridable (`config.pgd_steps = 20`)."""
    import ml_collections  # Here: `import l2rw_jax` must work without it (DESIGN §7).

    c = ml_collections.ConfigDict()
    c.seed = 0  # subsampling and PGD random starts
    c.batch_size = 128  # examples per jitted call (fixed; last batch padded)
    # 1. Mistakes.
    c.ece_bins = 15  # equal-width confidence bins (Guo et al. 2017)
    c.num_mistakes = 8  # most confident mistakes shown
    c.num_neighbors = 5  # nearest training images per mistake (penultimate features)
    c.neighbor_pool = 20000  # training images searched for neighbours (random subset; 0 = all)
    c.ig_steps = 64  # integrated-gradients trapezoid intervals
    # 2. Robustness (epsilons in raw pixel units, images in [0, 1]).
    c.epsilons = (0.0, 0.02, 0.05, 0.1, 0.15, 0.2, 0.3)
    c.pgd_steps = 10
    c.pgd_step_size = 0.25  # PGD step as a fraction of eps
    c.random_start = True
    # What FGSM/PGD ascend: "margin" (max_{j != y} z_j - z_y; never saturates, invariant to the
    # logit scale) or "cross_entropy" (saturates in float32 past a margin of ~17: overstates
    # robustness of confident predictions; attacks.py).
    c.attack_objective = "margin"
    c.robust_examples = 500  # test subset for the accuracy-vs-eps curves (0 = all)
    c.min_eps_examples = 256  # test subset for the minimal adversarial eps (0 = all)
    c.eps_max = 0.5  # bisection bracket [0, eps_max]
    c.bisection_steps = 6  # bracket width eps_max / 2**steps
    # 3. Biases (training examples, grouped by their given label).
    c.bias_examples_per_class = 40  # random training examples per class (0 = all)
    c.num_prototypes = 8
    c.num_criticisms = 8
    c.mmd_reg_weight = 1.0  # weight of log det K_CC in the criticism objective
    c.max_classes_shown = 20  # image grids in the report (all classes are in audit.json)
    # 4. Label issues.
    c.suspect_ks = (100,)  # k for precision/recall@k, besides k = number of noisy
    c.num_suspects = 24  # top suspects shown
    c.lock()
    return c


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


def _validate(test, train, config, example_weights, attributes):
    for name, d in (("test", test), ("train", train)):
        for key in ("image", "label"):
            if key not in d:
                raise ValueError(f"{name} must have key {key!r}; got keys {sorted(d)}.")
    x_test = common.check_images(test["image"], "test['image']")
    x_train = common.check_images(train["image"], "train['image']")
    y_test = common.check_labels(test["label"], len(x_test), None, "test['label']")
    y_train = common.check_labels(train["label"], len(x_train), None, "train['label']")
    if x_test.shape[1:] != x_train.shape[1:]:
        raise ValueError(
            f"test and train images differ in shape: {x_test.shape[1:]} vs {x_train.shape[1:]}."
        )
    for key in ("true_label", "is_noisy"):
        if key in train and len(train[key]) != len(x_train):
            raise ValueError(
                f"train[{key!r}] has {len(train[key])} rows, train['image'] has {len(x_train)}."
            )
    if example_weights is not None:
        for key in ("index", "mean_weight"):
            if key not in example_weights:
                raise ValueError(
                    f"example_weights must have key {key!r}; got {sorted(example_weights)}."
                )
        idx = np.asarray(example_weights["index"])
        if len(idx) and (idx.min() < 0 or idx.max() >= len(x_train)):
            raise ValueError(
                f"example_weights['index'] must be rows of train in [0, {len(x_train)}), got "
                f"[{idx.min()}, {idx.max()}]."
            )
        if len(np.unique(idx)) != len(idx):
            raise ValueError("example_weights['index'] has duplicate rows.")
    for name, a in (attributes or {}).items():
        if len(a) != len(x_train):
            raise ValueError(
                f"attribute {name!r} has {len(a)} values, train has {len(x_train)} rows."
            )
    eps = list(config.epsilons)
    if not eps or any(e < 0 for e in eps) or any(b < a for a, b in zip(eps, eps[1:])):
        raise ValueError(
            f"config.epsilons must be a non-empty ascending list of values >= 0, got {eps}."
        )
    if config.attack_objective not in attacks.OBJECTIVES:
        raise ValueError(
            f"config.attack_objective must be one of {attacks.OBJECTIVES}, "
            f"got {config.attack_objective!r}."
        )
    if config.ece_bins < 1 or config.num_neighbors < 1 or config.ig_steps < 1:
        raise ValueError(
            f"ece_bins, num_neighbors and ig_steps must be >= 1, got {config.ece_bins}, "
            f"{config.num_neighbors}, {config.ig_steps}."
        )
    need = config.num_prototypes + config.num_criticisms
    per_class = config.bias_examples_per_class
    if per_class > 0 and per_class < need:
        raise ValueError(
            f"bias_examples_per_class={per_class} is below num_prototypes + num_criticisms "
            f"= {need}."
        )
    classes, counts = np.unique(y_train, return_counts=True)
    small = {int(k): int(c) for k, c in zip(classes, counts) if c < need}
    if small:
        raise ValueError(
            f"classes {small} (class: training examples) have fewer than num_prototypes + "
            f"num_criticisms = {need} examples; lower them in the config."
        )
    if config.num_neighbors > len(x_train):
        raise ValueError(
            f"num_neighbors={config.num_neighbors} exceeds the {len(x_train)} training images."
        )
    return x_test, y_test, x_train, y_train


def run_audit(
    apply_fn: Callable,
    feature_fn: Callable,
    params,
    model_state,
    *,
    test: Mapping[str, np.ndarray],
    train: Mapping[str, np.ndarray],
    out_dir: str,
    config: ml_collections.ConfigDict | None = None,
    example_weights: Mapping[str, np.ndarray] | None = None,
    attributes: Mapping[str, np.ndarray] | None = None,
    mean=0.0,
    std=1.0,
    class_names=None,
    title: str = "Model audit",
    run_info: Mapping | None = None,
) -> dict:
    """Audits a trained classifier and writes `<out_dir>/report.html`, `<out_dir>/audit.json`
    and `<out_dir>/label_issues.csv` (every training row, most suspect first, in the order of
    `label_issues.rank_label_issues`; columns `label_issues.CSV_COLUMNS`, class names when
    `class_names` is given).

    Args:
      apply_fn, feature_fn: the pure model interface (`l2rw_jax.audit.common`); for a model
        without a conv feature map Grad-CAM is left out of the gallery, with a note.
      params, model_state: the trained variables.
      test: `image` (normalised N x H x W x C), `label`.
      train: `image`, `label` (given, maybe noisy), optionally `true_label`, `is_noisy`,
        `source_index` (each row's index in the user's data; default: the recorded one, else
        the row itself).
      example_weights: what the run recorded: `index` (row of `train`), `mean_weight`, optionally
        `count`, `is_noisy`, `mean_meta_grad`, `meta_grad_memory`, `source_index`; enables the
        L2RW rankings of label issues (the top suspects follow the first of mean_meta_grad,
        meta_grad_memory, mean_weight that is there).
      attributes: optional per-training-row attributes (bool or float), e.g. a planted cue; the bias
        section reports their rate among each class's prototypes and criticisms. `ink` (mean raw
        intensity) and `is_noisy` (when known) are always added.
      mean, std: per-channel normalisation of the images (raw = x * std + mean lies in [0, 1]).
      class_names: optional names for the report.
      run_info: free-form facts about the run, copied into `audit.json["meta"]`.

    Returns:
      The dict written to `audit.json` (every number in the report).
    """
    config = default_config() if config is None else config
    x_test, y_test, x_train, y_train = _validate(test, train, config, example_weights, attributes)
    source_index = _source_index(train, example_weights, len(x_train))
    num_classes = common.num_classes_of(apply_fn, params, model_state, x_test)
    common.check_labels(y_test, len(y_test), num_classes, "test['label']")
    common.check_labels(y_train, len(y_train), num_classes, "train['label']")
    mean_C, std_C = common.channel_stats(mean, std, x_test.shape[-1])
    common.check_feature_fn(feature_fn, params, model_state, x_test)
    names_given = class_names is not None  # the CSV gets class-name columns only then
    if class_names is None:
        class_names = [str(k) for k in range(num_classes)]
    if len(class_names) != num_classes:
        raise ValueError(f"class_names has {len(class_names)} names for {num_classes} classes.")
    rng = np.random.default_rng(config.seed)
    bs = config.batch_size
    results: dict = {
        "meta": {
            "title": title,
            "config": config.to_dict(),
            "run": dict(run_info or {}),
            "n_test": int(len(x_test)),
            "n_train": int(len(x_train)),
            "mean": mean_C.tolist(),
            "std": std_C.tolist(),
            "seconds": {},
        }
    }
    figs: dict = {}
    notes: list[str] = []
    t0 = time.time()

    # ---------------------------------------------------------------- 1. mistakes
    logits_test = common.predict_logits(
        apply_fn, params, model_state, x_test, batch_size=bs, desc="test logits"
    )
    results["meta"]["class_names"] = list(class_names)
    probs_test = common.softmax(logits_test)
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
            f"top{k}": mistakes.top_k_accuracy(y_test, logits_test, k) for k in top_ks
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
        black = common.from_raw(np.zeros_like(x_test[gallery_rows]), mean_C, std_C)
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
            report.fig_mistake(
                common.to_raw(x_test[row : row + 1], mean_C, std_C)[0],
                ig["attributions"][j],
                None if cams is None else cams[j],
                common.to_raw(x_train[pool[nn_idx[j]]], mean_C, std_C),
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
    results["mistakes"] = m_res
    figs["confusion"] = report.fig_confusion(cm, class_names)
    figs["reliability"] = report.fig_reliability(ece)
    figs["per_class"] = report.fig_per_class(acc_k, class_names)
    results["meta"]["seconds"]["mistakes"] = time.time() - t0

    # ---------------------------------------------------------------- 2. robustness
    t1 = time.time()
    rob_rows = _subset(len(x_test), config.robust_examples, rng)
    curve = attacks.robust_accuracy_curve(
        apply_fn,
        params,
        model_state,
        x_test[rob_rows],
        y_test[rob_rows],
        config.epsilons,
        steps=config.pgd_steps,
        step_size=config.pgd_step_size,
        random_start=config.random_start,
        objective=config.attack_objective,
        mean=mean_C,
        std=std_C,
        seed=config.seed,
        batch_size=bs,
    )
    me_rows = rob_rows[_subset(len(rob_rows), config.min_eps_examples, rng)]
    me = attacks.minimal_adversarial_epsilon(
        apply_fn,
        params,
        model_state,
        x_test[me_rows],
        pred_test[me_rows],
        eps_max=config.eps_max,
        bisection_steps=config.bisection_steps,
        steps=config.pgd_steps,
        step_size=config.pgd_step_size,
        random_start=config.random_start,
        objective=config.attack_objective,
        mean=mean_C,
        std=std_C,
        seed=config.seed + 1,
        batch_size=bs,
    )
    min_eps = me["min_eps"]
    finite = np.isfinite(min_eps)
    per_class_median = {}
    for k in np.unique(y_test[me_rows]):
        e = min_eps[y_test[me_rows] == k]
        per_class_median[str(int(k))] = float(np.median(e))
    results["robustness"] = {
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
    figs["curve"] = report.fig_curve(curve)
    figs["min_eps_hist"] = report.fig_min_eps(min_eps, config.eps_max)
    figs["min_eps_per_class"] = report.fig_class_bars(
        per_class_median, class_names, "median minimal eps"
    )
    fragile = np.argsort(min_eps, kind="stable")
    fragile = fragile[(min_eps[fragile] > 0) & np.isfinite(min_eps[fragile])][:6]
    if len(fragile):
        x_adv = me["x_adv"][fragile]
        pred_adv = common.softmax(
            common.predict_logits(apply_fn, params, model_state, x_adv, batch_size=bs)
        ).argmax(axis=1)
        figs["adversarial"] = report.fig_adversarial(
            common.to_raw(x_test[me_rows[fragile]], mean_C, std_C),
            common.to_raw(x_adv, mean_C, std_C),
            pred_test[me_rows[fragile]],
            pred_adv,
            min_eps[fragile],
            class_names,
        )
    results["meta"]["seconds"]["robustness"] = time.time() - t1

    # ---------------------------------------------------------------- 3. biases
    t2 = time.time()
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
        apply_fn,
        params,
        model_state,
        xb,
        yb,
        eps_max=config.eps_max,
        bisection_steps=config.bisection_steps,
        steps=config.pgd_steps,
        step_size=config.pgd_step_size,
        random_start=config.random_start,
        objective=config.attack_objective,
        mean=mean_C,
        std=std_C,
        seed=config.seed + 2,
        batch_size=bs,
    )
    all_attrs = {"ink": common.to_raw(x_train[bias_rows], mean_C, std_C).mean(axis=(1, 2, 3))}
    is_noisy_train = None
    if "is_noisy" in train:
        is_noisy_train = np.asarray(train["is_noisy"], bool)
    elif example_weights is not None and "is_noisy" in example_weights:
        is_noisy_train = np.zeros(len(x_train), bool)
        is_noisy_train[np.asarray(example_weights["index"])] = np.asarray(
            example_weights["is_noisy"], bool
        )
    if is_noisy_train is not None:
        all_attrs["is_noisy"] = is_noisy_train[bias_rows]
    for name, a in (attributes or {}).items():
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
    figs["bias_classes"] = {}
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
        figs["bias_classes"][k] = report.fig_prototypes(
            {side: common.to_raw(xb[r], mean_C, std_C) for side, r in bias_sides[k].items()},
            class_names[k],
        )
    results["biases"] = b_res
    results["meta"]["seconds"]["biases"] = time.time() - t2

    # ---------------------------------------------------------------- 4. label issues
    t3 = time.time()
    logits_train = common.predict_logits(
        apply_fn, params, model_state, x_train, batch_size=bs, desc="train logits"
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
    true_train = np.asarray(train["true_label"]) if "true_label" in train else None
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
    l_res["csv"] = _write_label_issues_csv(
        out_dir, example_weights, source_index, y_train, probs_train, loss_train, true_train,
        class_names if names_given else None,
    )
    results["label_issues"] = l_res
    figs["suspects"] = report.fig_suspects(
        common.to_raw(x_train[top], mean_C, std_C), l_res["top_suspects"], class_names
    )
    if mean_w is not None and is_noisy_train is not None:
        figs["weight_hist"] = report.fig_weight_hist(
            mean_w[rows_ranked], is_noisy_train[rows_ranked]
        )
        if meta_grad is not None:
            figs["meta_grad_hist"] = report.fig_weight_hist(
                meta_grad[rows_ranked],
                is_noisy_train[rows_ranked],
                xlabel="mean normalised L2RW meta-gradient",
            )
    results["meta"]["seconds"]["label_issues"] = time.time() - t3
    results["meta"]["seconds"]["total"] = time.time() - t0
    results["meta"]["notes"] = notes
    report.write_report(out_dir, results, figs)
    log.info("Audit written to %s (%.1f s).", out_dir, time.time() - t0)
    return results


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


def _source_index(train, example_weights, n: int) -> np.ndarray:
    """Each training row's index in the user's data: `train['source_index']`, else the recorded
    `example_weights['source_index']`, else the row itself (`train` is then the user's data)."""
    from_train = from_weights = None
    if "source_index" in train:
        from_train = np.asarray(train["source_index"])
        if from_train.shape != (n,) or not np.issubdtype(from_train.dtype, np.integer):
            raise ValueError(
                f"train['source_index'] must be {n} integers (one per row), got "
                f"{from_train.dtype} {from_train.shape}."
            )
    if example_weights is not None and "source_index" in example_weights:
        idx = np.asarray(example_weights["index"])
        src = np.asarray(example_weights["source_index"])
        if src.shape != idx.shape or not np.issubdtype(src.dtype, np.integer):
            raise ValueError(
                f"example_weights['source_index'] must be integers shaped like its index "
                f"{idx.shape}, got {src.dtype} {src.shape}."
            )
        if from_train is not None and not np.array_equal(from_train[idx], src):
            raise ValueError(
                "train['source_index'] and example_weights['source_index'] disagree: the "
                "recorded weights belong to other data."
            )
        if from_train is None and len(idx) == n:
            from_weights = np.empty(n, np.int64)
            from_weights[idx] = src
    if from_train is not None:
        return from_train.astype(np.int64)
    if from_weights is not None:
        return from_weights
    return np.arange(n, dtype=np.int64)


def _write_label_issues_csv(
    out_dir, example_weights, source_index, y_train, probs_train, loss_train, true_train,
    class_names,
) -> dict:
    """`<out_dir>/label_issues.csv`: every training row, ranked as the report's suspects are
    (`label_issues.rank_label_issues`, ranked_by="auto"); returns its audit.json entry.

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
    path = label_issues.write_label_issues_csv(
        os.path.join(out_dir, "label_issues.csv"), order, columns, class_names
    )
    return {
        "file": os.path.basename(path),
        "rows": n,
        "ranked_by": ranked_by,
        "empty_columns": sorted(k for k, v in columns.items() if v is None),
    }
