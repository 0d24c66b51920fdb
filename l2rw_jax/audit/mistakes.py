"""Understanding mistakes: accuracy per class, confusion, top-k, calibration, explanations.

Metrics are plain numpy functions of labels and predictions/logits (exact, float64). The
explanations (integrated gradients, Grad-CAM, nearest training images in feature space) work on
the pure model interface described in `l2rw_jax.audit.common`.

References:
  Stock & Cisse, "ConvNets and ImageNet Beyond Accuracy", ECCV 2018 (arXiv 1711.11443).
  Guo, Pleiss, Sun, Weinberger, "On Calibration of Modern Neural Networks", ICML 2017.
  Sundararajan, Taly, Yan, "Axiomatic Attribution for Deep Networks", ICML 2017.
  Selvaraju et al., "Grad-CAM", ICCV 2017.
"""

from __future__ import annotations

import functools
from typing import Callable, Sequence

import jax
import jax.numpy as jnp
import numpy as np

from l2rw_jax.audit import common


def confusion_matrix(labels: np.ndarray, preds: np.ndarray, num_classes: int) -> np.ndarray:
    """Counts `M[i, j]` = number of examples of true class i predicted as class j (int64 K x K)."""
    labels = common.check_labels(labels, len(np.asarray(labels)), num_classes, "labels")
    preds = common.check_labels(preds, len(labels), num_classes, "preds")
    m_KxK = np.zeros((num_classes, num_classes), np.int64)
    np.add.at(m_KxK, (labels, preds), 1)
    return m_KxK


def per_class_accuracy(
    labels: np.ndarray, preds: np.ndarray, num_classes: int, classes: Sequence[int] | None = None
) -> dict[int, float]:
    """Accuracy of each class: `acc_k = #{i: y_i = k, yhat_i = k} / #{i: y_i = k}`.

    Args:
      labels, preds: int arrays N.
      num_classes: K.
      classes: the classes to report (default all K). A requested class with no example raises
        ValueError (its accuracy is undefined; pass `classes=` to leave it out knowingly).
    """
    m_KxK = confusion_matrix(labels, preds, num_classes)
    classes = list(range(num_classes)) if classes is None else [int(k) for k in classes]
    bad = [k for k in classes if not 0 <= k < num_classes]
    if bad:
        raise ValueError(f"classes {bad} are outside [0, {num_classes}).")
    counts_K = m_KxK.sum(axis=1)
    empty = [k for k in classes if counts_K[k] == 0]
    if empty:
        raise ValueError(
            f"class(es) {empty} have no examples, so their accuracy is undefined; "
            f"pass classes= with the classes present ({np.flatnonzero(counts_K).tolist()})."
        )
    return {k: float(m_KxK[k, k] / counts_K[k]) for k in classes}


def class_accuracy_summary(acc_per_class: dict[int, float]) -> dict:
    """Worst class, its accuracy, the mean of per-class accuracies and the gap mean - worst."""
    if not acc_per_class:
        raise ValueError("acc_per_class is empty.")
    worst = min(acc_per_class, key=lambda k: (acc_per_class[k], k))
    mean = float(np.mean(list(acc_per_class.values())))
    return {
        "worst_class": int(worst),
        "worst_class_accuracy": acc_per_class[worst],
        "mean_class_accuracy": mean,
        "gap_mean_minus_worst": mean - acc_per_class[worst],
    }


def top_k_accuracy(labels: np.ndarray, logits_NxC: np.ndarray, k: int) -> float:
    """Fraction of examples whose label is among the k largest logits.

    Ties are broken by `np.argsort(-logits, kind="stable")` (lower class index first).
    """
    logits_NxC = np.asarray(logits_NxC)
    if logits_NxC.ndim != 2:
        raise ValueError(f"logits must be N x C, got shape {logits_NxC.shape}.")
    n, c = logits_NxC.shape
    if not 1 <= k <= c:
        raise ValueError(f"k must be in [1, {c}] (number of classes), got {k}.")
    labels = common.check_labels(labels, n, c)
    topk_NxK = np.argsort(-logits_NxC, axis=1, kind="stable")[:, :k]
    return float(np.mean(np.any(topk_NxK == labels[:, None], axis=1)))


def expected_calibration_error(
    probs_NxC: np.ndarray, labels: np.ndarray, num_bins: int = 15
) -> dict:
    """Expected calibration error with equal-width confidence bins (Guo et al. 2017).

    Confidence `conf_i = max_c p_ic`, correctness `1[argmax_c p_ic = y_i]`. Bin m (1-based) holds
    `conf in ((m-1)/M, m/M]` (a confidence of exactly 0 goes to bin 1), and

      ECE = sum_m |B_m|/N * |acc(B_m) - conf(B_m)|.

    Returns a dict with `ece` and per-bin `edges` (M+1), `count`, `accuracy`, `confidence`
    (None for empty bins).

    Example (one right at confidence .9, one wrong at .6: (|1 - .9| + |0 - .6|) / 2):
      >>> ece = expected_calibration_error(np.array([[.9, .1], [.6, .4]]), np.array([0, 1]))
      >>> round(ece["ece"], 6)
      0.35
    """
    probs_NxC = np.asarray(probs_NxC, np.float64)
    if probs_NxC.ndim != 2 or probs_NxC.shape[0] == 0:
        raise ValueError(f"probs must be a non-empty N x C array, got shape {probs_NxC.shape}.")
    if num_bins < 1:
        raise ValueError(f"num_bins must be >= 1, got {num_bins}.")
    n, c = probs_NxC.shape
    labels = common.check_labels(labels, n, c)
    conf_N = probs_NxC.max(axis=1)
    correct_N = (probs_NxC.argmax(axis=1) == labels).astype(np.float64)
    # Bin of conf: ceil(conf * M) - 1, so that right edges are closed; conf = 0 goes to bin 0.
    bin_N = np.clip(np.ceil(conf_N * num_bins).astype(np.int64) - 1, 0, num_bins - 1)
    count_M = np.bincount(bin_N, minlength=num_bins)
    acc_sum_M = np.bincount(bin_N, weights=correct_N, minlength=num_bins)
    conf_sum_M = np.bincount(bin_N, weights=conf_N, minlength=num_bins)
    nonempty = count_M > 0
    acc_M = np.where(nonempty, acc_sum_M / np.maximum(count_M, 1), np.nan)
    conf_M = np.where(nonempty, conf_sum_M / np.maximum(count_M, 1), np.nan)
    ece = float(np.sum(count_M[nonempty] / n * np.abs(acc_M[nonempty] - conf_M[nonempty])))
    to_list = lambda a: [None if np.isnan(v) else float(v) for v in a]
    return {
        "ece": ece,
        "num_bins": num_bins,
        "edges": np.linspace(0, 1, num_bins + 1).tolist(),
        "count": count_M.tolist(),
        "accuracy": to_list(acc_M),
        "confidence": to_list(conf_M),
    }


def most_confident_mistakes(probs_NxC: np.ndarray, labels: np.ndarray, n: int) -> np.ndarray:
    """Indices of the (up to) n misclassified examples with the highest confidence, most
    confident first."""
    probs_NxC = np.asarray(probs_NxC)
    labels = common.check_labels(labels, probs_NxC.shape[0], probs_NxC.shape[1])
    wrong = np.flatnonzero(probs_NxC.argmax(axis=1) != labels)
    conf = probs_NxC[wrong].max(axis=1)
    return wrong[np.argsort(-conf, kind="stable")[:n]]


def top_predictions(probs_NxC: np.ndarray, k: int = 3) -> tuple[np.ndarray, np.ndarray]:
    """(classes N x k, probabilities N x k) of the k most probable classes, most probable first."""
    probs_NxC = np.asarray(probs_NxC)
    cls_NxK = np.argsort(-probs_NxC, axis=1, kind="stable")[:, :k]
    return cls_NxK, np.take_along_axis(probs_NxC, cls_NxK, axis=1)


def nearest_neighbors(
    query_QxD: np.ndarray, ref_NxD: np.ndarray, k: int, chunk: int = 8192
) -> tuple[np.ndarray, np.ndarray]:
    """k nearest rows of `ref` for each query row in Euclidean distance: (indices Q x k,
    distances Q x k).

    Example-based explanation (Stock & Cisse 2018, Sec. 4): the training images closest to a test
    image in the penultimate feature space are the model's "reasons by analogy".
    """
    query_QxD = np.asarray(query_QxD, np.float64)
    ref_NxD = np.asarray(ref_NxD, np.float64)
    if query_QxD.ndim != 2 or ref_NxD.ndim != 2 or query_QxD.shape[1] != ref_NxD.shape[1]:
        raise ValueError(
            f"query and ref must be Q x D and N x D, got {query_QxD.shape} and {ref_NxD.shape}."
        )
    if not 1 <= k <= ref_NxD.shape[0]:
        raise ValueError(f"k must be in [1, {ref_NxD.shape[0]}] (reference size), got {k}.")
    q2_Q = np.sum(query_QxD**2, axis=1)
    best_d, best_i = [], []
    for start in range(0, ref_NxD.shape[0], chunk):
        r = ref_NxD[start : start + chunk]
        d2 = q2_Q[:, None] + np.sum(r**2, axis=1)[None, :] - 2.0 * query_QxD @ r.T
        best_d.append(np.maximum(d2, 0.0))
        best_i.append(np.broadcast_to(np.arange(start, start + len(r)), d2.shape))
    d2_all = np.concatenate(best_d, axis=1)
    i_all = np.concatenate(best_i, axis=1)
    order = np.argsort(d2_all, axis=1, kind="stable")[:, :k]
    return np.take_along_axis(i_all, order, axis=1), np.sqrt(
        np.take_along_axis(d2_all, order, axis=1)
    )


@functools.partial(jax.jit, static_argnums=(0, 1))
def _integrated_gradients_batch(
    apply_fn, steps, params, model_state, x_BxHxWxC, base_BxHxWxC, target_B
):
    def target_logit_sum(x):
        logits_BxC, _ = apply_fn(params, model_state, x, False)
        return jnp.sum(jnp.take_along_axis(logits_BxC, target_B[:, None], axis=1)), logits_BxC

    grad_fn = jax.grad(target_logit_sum, has_aux=True)
    diff = x_BxHxWxC - base_BxHxWxC

    # Trapezoid rule over alpha_s = s / steps, s = 0..steps: ends weigh 1/2.
    def body(s, acc):
        alpha = s / steps
        g, _ = grad_fn(base_BxHxWxC + alpha * diff)
        w = jnp.where((s == 0) | (s == steps), 0.5, 1.0) / steps
        return acc + w * g

    avg_grad = jax.lax.fori_loop(0, steps + 1, body, jnp.zeros_like(x_BxHxWxC))
    attr = diff * avg_grad
    _, logits_x = target_logit_sum(x_BxHxWxC)
    _, logits_b = target_logit_sum(base_BxHxWxC)
    f_x = jnp.take_along_axis(logits_x, target_B[:, None], axis=1)[:, 0]
    f_b = jnp.take_along_axis(logits_b, target_B[:, None], axis=1)[:, 0]
    return attr, f_x - f_b


def integrated_gradients(
    apply_fn,
    params,
    model_state,
    x: np.ndarray,
    target: np.ndarray,
    *,
    baseline: np.ndarray | None = None,
    steps: int = 64,
    batch_size: int = 16,
) -> dict:
    """Integrated gradients of the target-class logit (Sundararajan et al. 2017).

      IG_i(x) = (x_i - x'_i) * int_0^1 d f_c(x' + a (x - x')) / d x_i da,

    with the integral by the trapezoid rule on `steps` equal intervals, `f_c` the logit of class
    `target`, `x'` the baseline (default: zeros in the *given* space; the audit passes the black
    image, i.e. raw 0 normalised). Completeness says `sum_i IG_i = f_c(x) - f_c(x')`; its error

      completeness_error = sum_i IG_i - (f_c(x) - f_c(x')),

    measures the quadrature error and shrinks as `steps` grows.

    Returns dict: `attributions` (same shape as x), `delta_f` (f(x) - f(x'), N),
    `completeness_error` (N), `relative_completeness_error` (N, divided by |delta_f|).
    """
    x = common.check_images(x)
    target = common.check_labels(target, x.shape[0], None, "target")
    if steps < 1:
        raise ValueError(f"steps must be >= 1, got {steps}.")
    if baseline is None:
        baseline = np.zeros_like(x)
    baseline = np.broadcast_to(np.asarray(baseline, np.float32), x.shape).copy()
    attr, delta_f = common.map_batched(
        lambda xb, bb, tb: _integrated_gradients_batch(
            apply_fn, steps, params, model_state, xb, bb, tb
        ),
        [x, baseline, target],
        batch_size,
    )
    attr = np.asarray(attr, np.float64)
    err = attr.reshape(len(x), -1).sum(axis=1) - delta_f
    return {
        "attributions": attr.astype(np.float32),
        "delta_f": delta_f.astype(np.float64),
        "completeness_error": err,
        "relative_completeness_error": np.abs(err) / np.maximum(np.abs(delta_f), 1e-12),
    }


@functools.partial(jax.jit, static_argnums=0)
def _grad_cam_batch(feature_fn, params, model_state, x_BxHxWxC, target_B):
    _, feats = feature_fn(params, model_state, x_BxHxWxC)
    fmap_Bxhxwxk = feats["conv"]

    def target_logit_sum(delta):
        logits_BxC, _ = feature_fn(params, model_state, x_BxHxWxC, delta)
        return jnp.sum(jnp.take_along_axis(logits_BxC, target_B[:, None], axis=1))

    # d logit_c / d fmap = gradient w.r.t. the additive conv_delta at 0 (models.make_feature_fn).
    dfmap = jax.grad(target_logit_sum)(jnp.zeros_like(fmap_Bxhxwxk))
    alpha_Bxk = dfmap.mean(axis=(1, 2))
    cam_Bxhxw = jax.nn.relu(jnp.einsum("bhwk,bk->bhw", fmap_Bxhxwxk, alpha_Bxk))
    b, h, w, _ = x_BxHxWxC.shape
    return cam_Bxhxw, jax.image.resize(cam_Bxhxw, (b, h, w), method="bilinear")


def has_conv_map(feature_fn: Callable, params, model_state, x: np.ndarray) -> bool:
    """Whether the model exposes a 4-D last conv feature map (`feats["conv"]`)."""
    shapes = common.check_feature_fn(feature_fn, params, model_state, common.check_images(x))
    return "conv" in shapes and len(shapes["conv"]) == 4


def grad_cam(
    feature_fn: Callable,
    params,
    model_state,
    x: np.ndarray,
    target: np.ndarray,
    *,
    batch_size: int = 64,
) -> dict:
    """Grad-CAM (Selvaraju et al. 2017) at the last conv layer for class `target`.

      alpha_k = mean_{ij} d y_c / d A^k_ij,    L_c = ReLU(sum_k alpha_k A^k),

    with `A = feats["conv"]` the last conv feature map (B x h x w x k) of
    `feature_fn(params, model_state, x)` and `y` the logits; `d y / d A` is taken through the
    model's additive `conv_delta` at 0.

    Returns dict `cam` (N x h x w) and `cam_upsampled` (N x H x W, bilinear to the input size).
    Raises ValueError for a model without conv layers (no 4-D `feats["conv"]`).
    """
    x = common.check_images(x)
    target = common.check_labels(target, x.shape[0], None, "target")
    shapes = common.check_feature_fn(feature_fn, params, model_state, x)
    if "conv" not in shapes or len(shapes["conv"]) != 4:
        raise ValueError(
            "Grad-CAM needs a conv net: feature_fn gives no 4-D last conv feature map "
            f"feats['conv'] (got features {shapes}); this model has no conv layers — use "
            "integrated_gradients instead."
        )
    cam, up = common.map_batched(
        lambda xb, tb: _grad_cam_batch(feature_fn, params, model_state, xb, tb),
        [x, target],
        batch_size,
    )
    return {"cam": cam, "cam_upsampled": up}
