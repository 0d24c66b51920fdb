"""The audit's first section, on the test set: accuracy per class and its worst class, the
confusion matrix, calibration (ECE), and the most confident mistakes explained (integrated
gradients, Grad-CAM, nearest training images in penultimate-feature space).
"""

from __future__ import annotations

import numpy as np

from l2rw_jax.audit import common
from l2rw_jax.audit import figures
from l2rw_jax.audit import mistakes
from l2rw_jax.audit.sections import Inputs
from l2rw_jax.audit.sections import Section
from l2rw_jax.audit.sections import subset


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
    pool = subset(len(x_train), config.neighbor_pool, rng)
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
