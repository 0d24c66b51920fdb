"""How well a suspect ranking finds the wrong labels: AUROC, average precision, precision@k.

The field's standard for a label-error finder (Northcutt, Jiang, Chuang, JAIR 2021, Sec. 5)
is its ranking against the known wrong labels (`is_noisy`, where the noise was planted):

  * `auroc`: the probability that a wrong label scores above a right one, ties counting 1/2
    (the Mann-Whitney statistic; scikit-learn's `roc_auc_score`).
  * `average_precision`: sum over the distinct score thresholds, descending, of
    (R_n - R_{n-1}) P_n, recall R and precision P at each (tied scores enter together;
    scikit-learn's `average_precision_score`, no interpolation).
  * `score_rankings`: both, and precision / recall at k, for every ranking of
    `label_issues.RANKINGS` a run has (`suspect_rankings`: the L2RW weight or meta-gradient,
    the final loss, confident learning).

High score = suspect everywhere. Where the truth is unknown (`is_noisy` None) or a metric is
undefined on it (no wrong label: no recall, AUROC or AP; no right label: no AUROC), the metric
is None: absent, never 0.
"""

from __future__ import annotations

from typing import Mapping, Sequence

import numpy as np

from l2rw_jax.audit import label_issues


def _check(score_N, is_noisy_N) -> tuple[np.ndarray, np.ndarray]:
    score_N = np.asarray(score_N, np.float64)
    if score_N.ndim != 1:
        raise ValueError(f"score must be 1-D (one per example), got shape {score_N.shape}.")
    if not np.all(np.isfinite(score_N)):
        raise ValueError(
            f"score must be finite, got {int((~np.isfinite(score_N)).sum())} "
            "NaN/inf entries (rank unscored examples with `order_score`)."
        )
    is_noisy_N = _check_is_noisy(is_noisy_N, len(score_N))
    return score_N, is_noisy_N


def _check_is_noisy(is_noisy_N, n: int) -> np.ndarray:
    a = np.asarray(is_noisy_N)
    if a.shape != (n,) or not (
        a.dtype == bool or (np.issubdtype(a.dtype, np.integer) and np.isin(a, (0, 1)).all())
    ):
        raise ValueError(f"is_noisy must be {n} bools (one per example), got {a.dtype} {a.shape}.")
    return a.astype(bool)


def auroc(score_N: np.ndarray, is_noisy_N: np.ndarray) -> float:
    """Area under the ROC curve of `score_N` (high = suspect) against `is_noisy_N`.

      AUROC = (sum of the midranks of the P noisy examples - P (P + 1) / 2) / (P M),

    ranks of the score ascending (1-based), a tie group sharing its mean rank, M = the clean
    examples: the share of (noisy, clean) pairs the score orders right, ties counting 1/2.
    Equals scikit-learn's `roc_auc_score(is_noisy, score)` (tests).

    Args:
      score_N: float N, finite.
      is_noisy_N: bool N (or 0/1), True where the label is wrong.

    Raises:
      ValueError: shapes or values not as above, or only one class in `is_noisy_N` (then AUROC
        is undefined).

    Example:
      >>> auroc(np.array([0.9, 0.5, 0.5, 0.1]), np.array([True, True, False, False]))
      0.875
    """
    score_N, is_noisy_N = _check(score_N, is_noisy_N)
    p = int(is_noisy_N.sum())
    m = len(is_noisy_N) - p
    if p == 0 or m == 0:
        raise ValueError(
            f"AUROC is undefined: is_noisy has {p} noisy and {m} clean examples (needs both)."
        )
    _, inverse_N, count_G = np.unique(score_N, return_inverse=True, return_counts=True)
    midrank_G = np.cumsum(count_G) - (count_G - 1) / 2.0
    return float((midrank_G[inverse_N][is_noisy_N].sum() - p * (p + 1) / 2.0) / (p * m))


def average_precision(score_N: np.ndarray, is_noisy_N: np.ndarray) -> float:
    """Average precision of `score_N` (high = suspect) against `is_noisy_N`.

      AP = sum_n (R_n - R_{n-1}) P_n

    over the distinct values of the score, descending (each threshold takes its whole tie
    group), P_n / R_n the precision / recall of {score >= the n-th value}, R_0 = 0. Equals
    scikit-learn's `average_precision_score(is_noisy, score)` (tests).

    Args:
      score_N: float N, finite.
      is_noisy_N: bool N (or 0/1).

    Raises:
      ValueError: shapes or values not as above, or no noisy example (recall is undefined).

    Example:
      >>> average_precision(np.array([0.9, 0.5, 0.5, 0.1]), np.array([True, True, False, False]))
      0.8333333333333333
    """
    score_N, is_noisy_N = _check(score_N, is_noisy_N)
    p = int(is_noisy_N.sum())
    if p == 0:
        raise ValueError("average precision is undefined: is_noisy has no noisy example.")
    # Groups of -score ascending = score descending.
    _, inverse_N, count_G = np.unique(-score_N, return_inverse=True, return_counts=True)
    tp_G = np.cumsum(np.bincount(inverse_N, weights=is_noisy_N, minlength=len(count_G)))
    precision_G = tp_G / np.cumsum(count_G)
    recall_G = tp_G / p
    return float(np.sum(np.diff(recall_G, prepend=0.0) * precision_G))


def order_score(order_N: np.ndarray) -> np.ndarray:
    """A strict ranking as a score: example order_N[r] gets N - r (the first gets N), int64 N.

    Raises:
      ValueError: `order_N` is not a permutation of range(N).

    Example:
      >>> order_score(np.array([2, 0, 1]))
      array([2, 1, 3])
    """
    order_N = np.asarray(order_N)
    n = len(order_N)
    if order_N.ndim != 1 or not np.array_equal(np.sort(order_N), np.arange(n)):
        raise ValueError(f"order must be a permutation of range({n}), got shape {order_N.shape}.")
    score_N = np.empty(n, np.int64)
    score_N[order_N] = np.arange(n, 0, -1)
    return score_N


def suspect_rankings(
    probs_NxC: np.ndarray,
    labels: np.ndarray,
    *,
    mean_weight: np.ndarray | None = None,
    mean_meta_grad: np.ndarray | None = None,
    meta_grad_memory: np.ndarray | None = None,
    count: np.ndarray | None = None,
) -> dict[str, np.ndarray]:
    """Every ranking of `label_issues.RANKINGS` these inputs allow: {name: order_N}.

    `final_loss` and `confident_learning` always (from the probabilities); `l2rw_weight`,
    `l2rw_meta_grad`, `l2rw_memory` where their score is given. Each order is
    `label_issues.rank_label_issues`'s (its ties and never-drawn examples), rows as given.

    Args:
      probs_NxC: float N x C, the final model's class probabilities on the training rows.
      labels: int N, the given labels.
      mean_weight, mean_meta_grad, meta_grad_memory, count: what the run recorded per row
        (`example_weights.npz`'s keys of the same names), or None.

    Raises:
      ValueError: as `label_issues.rank_label_issues` and `label_issues.find_label_issues`.
    """
    probs_NxC = np.asarray(probs_NxC, np.float64)
    if probs_NxC.ndim != 2 or not np.all(np.isfinite(probs_NxC)):
        raise ValueError(f"probs must be a finite N x C array, got shape {probs_NxC.shape}.")
    loss_N = label_issues.final_loss(probs_NxC, labels)
    flags_N = label_issues.confident_learning_flags(probs_NxC, labels)
    given = {
        "l2rw_meta_grad": mean_meta_grad,
        "l2rw_memory": meta_grad_memory,
        "l2rw_weight": mean_weight,
    }
    out = {}
    for name in label_issues.RANKINGS:
        if name in given and given[name] is None:
            continue
        out[name], _ = label_issues.rank_label_issues(
            loss_N,
            mean_meta_grad_N=mean_meta_grad,
            meta_grad_memory_N=meta_grad_memory,
            mean_weight_N=mean_weight,
            count_N=count,
            flags_N=flags_N,
            ranked_by=name,
        )
    return out


def score_rankings(
    orders: Mapping[str, np.ndarray],
    is_noisy_N: np.ndarray | None,
    ks: Sequence[int] = (10, 50, 100),
) -> dict[str, dict]:
    """AUROC, average precision and precision / recall at k of each ranking.

    Each ranking is scored as the strict order it gives (`order_score`): the order of the CSV
    and of its top k, with its tie-breaks, so AUROC and AP describe the same list as
    precision@k.

    Args:
      orders: {ranking name: order_N}, each a permutation of range(N), most suspect first
        (`suspect_rankings`).
      is_noisy_N: bool N, True where the label is wrong; None where the truth is unknown.
      ks: the k of precision / recall at k (each clipped to N; `label_issues.score_ranking`).

    Returns:
      {name: {"auroc": float | None, "average_precision": float | None,
              "at_k": {"k=<k>": {"k", "precision", "recall": float | None}} | None}}.
      Truth unknown: every metric None. No noisy example: recall, AUROC and AP None (precision
      is 0, which is true); no clean example: AUROC None.

    Raises:
      ValueError: an order that is not a permutation, orders of different lengths, `is_noisy`
        of another length, or a k < 1.
    """
    lengths = {name: len(np.asarray(o)) for name, o in orders.items()}
    if len(set(lengths.values())) > 1:
        raise ValueError(
            f"the orders must all have one length (one rank per example), got {lengths}."
        )
    bad_k = [k for k in ks if isinstance(k, bool) or not isinstance(k, (int, np.integer)) or k < 1]
    if bad_k:
        raise ValueError(f"ks must be integers >= 1, got {list(ks)}.")
    scores = {name: order_score(o) for name, o in orders.items()}
    if is_noisy_N is None:
        return {name: {"auroc": None, "average_precision": None, "at_k": None} for name in orders}
    n = next(iter(lengths.values()), 0)
    is_noisy_N = _check_is_noisy(is_noisy_N, n)
    n_noisy = int(is_noisy_N.sum())
    out = {}
    for name, order_N in orders.items():
        at_k = {}
        for k in ks:
            kk = int(min(k, n))
            at_k[f"k={kk}"] = {
                "k": kk,
                "precision": label_issues.precision_at_k(order_N, is_noisy_N, kk),
                "recall": (label_issues.recall_at_k(order_N, is_noisy_N, kk) if n_noisy else None),
            }
        out[name] = {
            "auroc": auroc(scores[name], is_noisy_N) if 0 < n_noisy < n else None,
            "average_precision": (average_precision(scores[name], is_noisy_N) if n_noisy else None),
            "at_k": at_k,
        }
    return out
