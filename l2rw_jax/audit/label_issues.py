"""Finding mislabeled training examples: rankings and their precision/recall against `is_noisy`.

Rankings (most suspect first):
  * `l2rw_weight`: mean L2RW weight the run recorded for the example over training, ascending
    (examples the meta-gradient kept switching off are suspect; Ren et al. 2018). Ties (many
    examples sit at exactly 0) are broken by the final loss, higher first.
  * `l2rw_meta_grad`: the mean over the example's visits of its L2RW meta-gradient g_i divided
    by the RMS of its batch's g (`mean_meta_grad` of the run), descending: the signal the L2RW
    weight max(-g_i, 0) / sum_k max(-g_k, 0) is made of, before the clip sends every rejected
    example to the same 0 and the per-batch sum makes weights from different batches
    incomparable. Same tie rule. `l2rw_memory` ranks the robust variant's memory the same way.
  * `final_loss`: cross-entropy of the final model on the given label, descending. This is
    -log of the self-confidence p(given label | x), so it orders examples exactly as
    self-confidence ascending would.
  * `confident_learning`: Northcutt, Jiang, Chuang, JAIR 2021. Per-class thresholds
    t_j = mean of p_j(x) over the examples labelled j; an example is off the diagonal of the
    confident joint when the most probable class among {j : p_j(x) >= t_j} exists and differs from
    its label. Flagged examples come first, each group ordered by self-confidence ascending.
"""

from __future__ import annotations

import numpy as np

from l2rw_jax.audit import common


def _check_order(
    order_N: np.ndarray, is_noisy_N: np.ndarray, k: int
) -> tuple[np.ndarray, np.ndarray]:
    order_N = np.asarray(order_N)
    is_noisy_N = np.asarray(is_noisy_N, bool)
    n = len(is_noisy_N)
    if (
        order_N.ndim != 1
        or len(order_N) != n
        or (n and not np.array_equal(np.sort(order_N), np.arange(n)))
    ):
        raise ValueError(
            f"order must be a permutation of range({n}) (one rank per example), got "
            f"shape {order_N.shape}."
        )
    if not 1 <= k <= n:
        raise ValueError(f"k must be in [1, {n}] (number of ranked examples), got {k}.")
    return order_N, is_noisy_N


def precision_at_k(order_N: np.ndarray, is_noisy_N: np.ndarray, k: int) -> float:
    """|top-k of the ranking that are noisy| / k.

    Example:
      >>> precision_at_k(np.array([2, 0, 1]), np.array([False, False, True]), 2)
      0.5
    """
    order_N, is_noisy_N = _check_order(order_N, is_noisy_N, k)
    return float(is_noisy_N[order_N[:k]].sum() / k)


def recall_at_k(order_N: np.ndarray, is_noisy_N: np.ndarray, k: int) -> float:
    """|top-k of the ranking that are noisy| / |noisy|; ValueError when nothing is noisy."""
    order_N, is_noisy_N = _check_order(order_N, is_noisy_N, k)
    n_noisy = int(is_noisy_N.sum())
    if n_noisy == 0:
        raise ValueError("recall@k is undefined: is_noisy has no positive example.")
    return float(is_noisy_N[order_N[:k]].sum() / n_noisy)


def self_confidence(probs_NxC: np.ndarray, labels: np.ndarray) -> np.ndarray:
    """p(given label | x) for every example."""
    probs_NxC = np.asarray(probs_NxC, np.float64)
    labels = common.check_labels(labels, probs_NxC.shape[0], probs_NxC.shape[1])
    return probs_NxC[np.arange(len(labels)), labels]


def confident_learning_flags(probs_NxC: np.ndarray, labels: np.ndarray) -> np.ndarray:
    """Off-diagonal membership of the confident joint (Northcutt et al. 2021, Eq. 1-2).

    Classes with no labelled example get threshold +inf (no example is confidently in them).
    """
    probs_NxC = np.asarray(probs_NxC, np.float64)
    n, c = probs_NxC.shape
    labels = common.check_labels(labels, n, c)
    count_C = np.bincount(labels, minlength=c)
    sum_C = np.bincount(labels, weights=probs_NxC[np.arange(n), labels], minlength=c)
    t_C = np.where(count_C > 0, sum_C / np.maximum(count_C, 1), np.inf)
    above_NxC = probs_NxC >= t_C[None, :]
    guess_N = np.argmax(np.where(above_NxC, probs_NxC, -np.inf), axis=1)
    return above_NxC.any(axis=1) & (guess_N != labels)


def rank_by_l2rw_weight(mean_weight_N: np.ndarray, loss_N: np.ndarray) -> np.ndarray:
    """Most suspect first: mean weight ascending, ties by loss descending, then by index."""
    mean_weight_N = np.asarray(mean_weight_N, np.float64)
    loss_N = np.asarray(loss_N, np.float64)
    if mean_weight_N.shape != loss_N.shape or mean_weight_N.ndim != 1:
        raise ValueError(
            f"mean_weight and loss must be 1-D of equal length, got {mean_weight_N.shape} "
            f"and {loss_N.shape}."
        )
    if np.any(np.isnan(mean_weight_N)):
        raise ValueError(
            f"mean_weight has {int(np.isnan(mean_weight_N).sum())} NaN entries (examples "
            f"never seen in training?); drop them before ranking."
        )
    return np.lexsort((np.arange(len(loss_N)), -loss_N, mean_weight_N))


def rank_by_loss(loss_N: np.ndarray) -> np.ndarray:
    """Most suspect first: final loss descending (stable)."""
    return np.argsort(-np.asarray(loss_N, np.float64), kind="stable")


def rank_by_confident_learning(probs_NxC: np.ndarray, labels: np.ndarray) -> np.ndarray:
    """Flagged by confident learning first, each group by self-confidence ascending (stable)."""
    flags_N = confident_learning_flags(probs_NxC, labels)
    sc_N = self_confidence(probs_NxC, labels)
    return np.lexsort((np.arange(len(sc_N)), sc_N, ~flags_N))


def score_ranking(order_N: np.ndarray, is_noisy_N: np.ndarray, ks) -> dict:
    """precision@k and recall@k for each k in `ks` (k larger than N is clipped to N)."""
    n = len(is_noisy_N)
    out = {}
    for k in ks:
        kk = int(min(k, n))
        out[f"k={kk}"] = {
            "k": kk,
            "precision": precision_at_k(order_N, is_noisy_N, kk),
            "recall": recall_at_k(order_N, is_noisy_N, kk),
        }
    return out
