"""Data maps from the L2RW weights: each training example's weight over training.

Swayamdipta et al. ("Dataset Cartography", EMNLP 2020) place every training example by the
model's confidence in its label over training and the variability of that confidence: easy
(high confidence, low variability), ambiguous (high variability), hard and often mislabelled
(low confidence, low variability). L2RW gives a second signal the training already computes: the
weight the meta-gradient gave the example each time it was drawn. Per example:

  mean_weight    mean of its weight over the steps that drew it
  weight_std     standard deviation (population, ddof = 0) of the same
  nonzero_share  share of those steps with a weight != 0 (L2RW clips at 0: the share of its
                 draws the clean set endorsed)
  draws          the number of steps that drew it

and, from a probability history (the model evaluated on the training set E times):

  confidence     mean over the E evaluations of p(given label | x)
  variability    its standard deviation (population, as in the paper)
  correctness    share of the E evaluations whose argmax is the given label

A weight history is a float T x N array `W_TxN`, one row per recorded step, with NaN where the
step did not draw the example: a step that did not draw an example says nothing about it, and
counting it as weight 0 would make every rarely drawn example look rejected. Build one from the
batches with `weight_history_from_batches`, or pass a dense history with its `drawn_TxN` mask.
Units: each step's weights sum to 1 over its batch (uniform = 1 / B), as in
`example_weights.npz`; over the same steps, `mean_weight` and `draws` equal its
`mean_weight` and `count` for an example drawn at most once a step.

Training keeps no per-step history, but running sums of the weights, their squares and the
non-zero draws (`example_weights.npz`: `weight_sum`, `weight_sq_sum`, `nonzero_count`,
`count`), which give the same weight map without one: `weight_map_from_record`; and a bounded
trajectory, the weights and draws summed in each of a fixed number of equal step bins
(`weight_bin_sum`, `weight_bin_count`, `weight_bin_edges`): `weight_trajectory_from_record`.
"""

from __future__ import annotations

import numpy as np

from l2rw_jax import members
from l2rw_jax.audit import common


def weight_history_from_batches(
    rows_TxB: np.ndarray, weights_TxB: np.ndarray, num_examples: int
) -> np.ndarray:
    """The weight history W_TxN of T steps' batches: W[t, i] = the weight step t gave example i.

    An example drawn twice in one step gets the sum of its two weights (as `weight_sum`
    accumulates them); one the step did not draw gets NaN.

    Args:
      rows_TxB: int T x B, the training rows (0..N-1) each step's batch drew.
      weights_TxB: float T x B, the weights the step gave them, finite.
      num_examples: N, the training set's size.

    Returns:
      float64 T x N, NaN where not drawn.

    Raises:
      ValueError: shapes that differ or are not 2-D, rows outside [0, N), non-integer rows,
        weights not finite, N < 1.

    Example:
      >>> weight_history_from_batches(np.array([[0, 2]]), np.array([[0.25, 0.75]]), 3)
      array([[0.25,  nan, 0.75]])
    """
    if (
        isinstance(num_examples, bool)
        or not isinstance(num_examples, (int, np.integer))
        or (num_examples < 1)
    ):
        raise ValueError(f"num_examples must be an integer >= 1, got {num_examples!r}.")
    rows_TxB = np.asarray(rows_TxB)
    weights_TxB = np.asarray(weights_TxB, np.float64)
    if rows_TxB.ndim != 2 or rows_TxB.shape != weights_TxB.shape:
        raise ValueError(
            f"rows and weights must be T x B arrays of one shape, got "
            f"{rows_TxB.shape} and {weights_TxB.shape}."
        )
    if not np.issubdtype(rows_TxB.dtype, np.integer):
        raise ValueError(f"rows must be integers, got dtype {rows_TxB.dtype}.")
    if rows_TxB.size and (rows_TxB.min() < 0 or rows_TxB.max() >= num_examples):
        raise ValueError(
            f"rows must lie in [0, {num_examples}), got values in "
            f"[{rows_TxB.min()}, {rows_TxB.max()}]."
        )
    if not np.all(np.isfinite(weights_TxB)):
        raise ValueError("weights must be finite (a NaN weight would read as 'not drawn').")
    T = rows_TxB.shape[0]
    W_TxN = np.zeros((T, num_examples))
    drawn_TxN = np.zeros((T, num_examples), bool)
    t_TxB = np.broadcast_to(np.arange(T)[:, None], rows_TxB.shape)
    np.add.at(W_TxN, (t_TxB, rows_TxB), weights_TxB)
    drawn_TxN[t_TxB, rows_TxB] = True
    W_TxN[~drawn_TxN] = np.nan
    return W_TxN


def weight_map(W_TxN: np.ndarray, drawn_TxN: np.ndarray | None = None) -> dict[str, np.ndarray]:
    """Per example, over the steps that drew it: mean weight, its std, share non-zero, draws.

      mean_weight[i] = (1 / d_i) sum_{t in D_i} W[t, i]
      weight_std[i] = sqrt((1 / d_i) sum_{t in D_i} (W[t, i] - mean_weight[i])^2)
      nonzero_share[i] = #{t in D_i : W[t, i] != 0} / d_i,        d_i = |D_i| = draws[i]

    D_i = the steps with W[t, i] not NaN (and `drawn_TxN[t, i]`, when given). An example never
    drawn gets NaN in the first three (unknown, not 0) and draws 0.

    Args:
      W_TxN: float T x N weight history (T >= 1 steps); NaN = not drawn.
      drawn_TxN: bool T x N, or None; a dense history (0 where not drawn) needs it.

    Returns:
      {"mean_weight", "weight_std", "nonzero_share": float64 N, "draws": int64 N}.

    Raises:
      ValueError: W not 2-D with T >= 1, an infinite weight, a mask of another shape or type,
        or a NaN weight the mask calls drawn.
    """
    W = np.asarray(W_TxN, np.float64)
    if W.ndim != 2 or W.shape[0] < 1:
        raise ValueError(f"W must be a T x N weight history (T >= 1), got shape {W.shape}.")
    if np.isinf(W).any():
        raise ValueError("W has an infinite weight; weights are finite, NaN where not drawn.")
    drawn = ~np.isnan(W)
    if drawn_TxN is not None:
        mask = np.asarray(drawn_TxN)
        if mask.shape != W.shape or mask.dtype != bool:
            raise ValueError(
                f"drawn must be a bool array of W's shape {W.shape}, got {mask.dtype} {mask.shape}."
            )
        if (mask & ~drawn).any():
            raise ValueError("drawn marks a step as drawing an example whose weight is NaN.")
        drawn = mask
    draws_N = drawn.sum(axis=0)
    seen_N = draws_N > 0
    w = np.where(drawn, W, 0.0)
    d = np.maximum(draws_N, 1)
    mean_N = w.sum(axis=0) / d
    var_N = np.where(drawn, (W - mean_N) ** 2, 0.0).sum(axis=0) / d
    nonzero_N = (drawn & (W != 0)).sum(axis=0) / d
    nan = np.nan
    return {
        "mean_weight": np.where(seen_N, mean_N, nan),
        "weight_std": np.where(seen_N, np.sqrt(var_N), nan),
        "nonzero_share": np.where(seen_N, nonzero_N, nan),
        "draws": draws_N.astype(np.int64),
    }


RECORD_KEYS = ("index", "weight_sum", "weight_sq_sum", "nonzero_count", "count")


def weight_map_from_record(record) -> dict[str, np.ndarray] | None:
    """`weight_map`'s columns from a run's running sums (`example_weights.npz`), no history.

    mean_weight = weight_sum / count, weight_std = sqrt(weight_sq_sum / count - mean^2),
    nonzero_share = nonzero_count / count, draws = count (`members.running_weight_stats`):
    equal to `weight_map` of the run's per-step weights for an example drawn at most once a
    step (tested), up to the float32 sums. Rows as `record["index"]`'s; NaN where never drawn.

    Args:
      record: a mapping with `RECORD_KEYS` (what training writes), e.g. `dict(np.load(path))`.

    Returns:
      {"mean_weight", "weight_std", "nonzero_share": float64 N, "draws": int64 N}, or None for a
      record without `weight_sq_sum` / `nonzero_count` (written before they were kept).

    Raises:
      ValueError: arrays of different shapes, negative counts or non-zero counts above count.
    """
    if "weight_sq_sum" not in record or "nonzero_count" not in record:
        return None
    missing = [k for k in RECORD_KEYS if k not in record]
    if missing:
        raise ValueError(f"the record lacks {missing}; it needs {list(RECORD_KEYS)}.")
    if np.shape(record["index"]) != np.shape(record["count"]):
        raise ValueError(
            f"record['index'] {np.shape(record['index'])} and record['count'] "
            f"{np.shape(record['count'])} differ in shape."
        )
    out = members.running_weight_stats(
        record["weight_sum"], record["weight_sq_sum"], record["nonzero_count"], record["count"]
    )
    out["draws"] = np.asarray(record["count"]).astype(np.int64)
    return out


TRAJECTORY_KEYS = ("weight_bin_sum", "weight_bin_count", "weight_bin_edges")


def binned_weight_trajectory(W_TxN: np.ndarray, edges: np.ndarray) -> np.ndarray:
    """Each example's mean weight in each step bin, from a per-step weight history.

      trajectory[b, i] = mean of W[t, i] over the steps edges[b] <= t < edges[b + 1] that
                         drew example i (W finite)

    NaN where no step of the bin drew the example (unknown, not 0). On the loop's steps this
    is what `weight_trajectory_from_record` reads from the running per-bin sums (tested).

    Args:
      W_TxN: float T x N, NaN where step t did not draw example i (`weight_history_from_batches`).
      edges: int B + 1 non-decreasing step edges from 0 to T (`members.history_edges(B, T)`).

    Returns:
      float64 B x N.

    Raises:
      ValueError: W not 2-D, or edges not from 0 to T non-decreasing.
    """
    W = np.asarray(W_TxN, np.float64)
    e = np.asarray(edges)
    if W.ndim != 2:
        raise ValueError(f"W must be T x N, got shape {W.shape}.")
    if e.ndim != 1 or e.size < 2 or e[0] != 0 or e[-1] != len(W) or np.any(np.diff(e) < 0):
        raise ValueError(f"edges must be non-decreasing from 0 to T={len(W)}, got {e.tolist()}.")
    drawn = np.isfinite(W)
    out = np.full((e.size - 1, W.shape[1]), np.nan)
    for b in range(e.size - 1):
        d = drawn[e[b] : e[b + 1]]
        c = d.sum(axis=0)
        total = np.where(d, W[e[b] : e[b + 1]], 0.0).sum(axis=0)
        out[b] = np.where(c > 0, total / np.maximum(c, 1), np.nan)
    return out


def weight_trajectory_from_record(record) -> dict[str, np.ndarray] | None:
    """Each example's mean weight per step bin, from a run's per-bin sums (`example_weights.npz`).

      mean[b, i] = weight_bin_sum[b, i] / weight_bin_count[b, i]

    in float64 from the float32 sums; NaN where the bin never drew the example (unknown, not
    0). Columns as `record["index"]`'s rows.

    Args:
      record: a mapping with `TRAJECTORY_KEYS` and `index` (what training writes,
        `members.weight_history_columns`), e.g. `dict(np.load(path))`.

    Returns:
      {"mean": float64 B x N, "count": int64 B x N, "edges": int64 B + 1 (bin b: steps
      edges[b] <= t < edges[b + 1])}, or None for a record without a trajectory (written
      before it was kept: no history, not a flat one).

    Raises:
      ValueError: some but not all of `TRAJECTORY_KEYS`; sums and counts not B x N with N
        rows of `index`; edges not B + 1 non-decreasing from 0; negative counts.
    """
    present = [k for k in TRAJECTORY_KEYS if k in record]
    if not present:
        return None
    if len(present) != len(TRAJECTORY_KEYS):
        missing = [k for k in TRAJECTORY_KEYS if k not in record]
        raise ValueError(f"the record lacks {missing}; a trajectory needs {list(TRAJECTORY_KEYS)}.")
    s = np.asarray(record["weight_bin_sum"], np.float64)
    c = np.asarray(record["weight_bin_count"]).astype(np.int64)
    e = np.asarray(record["weight_bin_edges"]).astype(np.int64)
    n = np.shape(record["index"])
    if s.ndim != 2 or s.shape != c.shape or s.shape[1:] != n:
        raise ValueError(
            f"weight_bin_sum {s.shape} and weight_bin_count {c.shape} must be B x N with "
            f"N = len(index) = {n[0] if n else n}."
        )
    if e.shape != (s.shape[0] + 1,) or e[0] != 0 or np.any(np.diff(e) < 0):
        raise ValueError(
            f"weight_bin_edges must be {s.shape[0] + 1} non-decreasing steps from 0, got "
            f"{e.tolist()}."
        )
    if (c < 0).any():
        raise ValueError("weight_bin_count must be >= 0.")
    mean = np.where(c > 0, s / np.maximum(c, 1), np.nan)
    return {"mean": mean, "count": c, "edges": e}


def confidence_map(probs_ExNxC: np.ndarray, labels: np.ndarray) -> dict[str, np.ndarray]:
    """Swayamdipta et al.'s coordinates from E evaluations of the model on the training set.

      confidence[i] = (1 / E) sum_e p_e(y_i | x_i)
      variability[i] = sqrt((1 / E) sum_e (p_e(y_i | x_i) - confidence[i])^2)
      correctness[i] = #{e : argmax_c p_e(c | x_i) = y_i} / E      (first maximum on ties)

    with y_i the given label (the one training sees; the paper's "gold" label).

    Args:
      probs_ExNxC: float E x N x C, the class probabilities at each evaluation (E >= 1).
      labels: int N, the given labels.

    Returns:
      {"confidence", "variability", "correctness": float64 N}.

    Raises:
      ValueError: probabilities not E x N x C and finite, or labels not N integers in [0, C).
    """
    p = np.asarray(probs_ExNxC, np.float64)
    if p.ndim != 3 or p.shape[0] < 1 or not np.all(np.isfinite(p)):
        raise ValueError(f"probs must be a finite E x N x C history (E >= 1), got shape {p.shape}.")
    _, n, c = p.shape
    labels = common.check_labels(labels, n, c)
    given_ExN = p[:, np.arange(n), labels]
    return {
        "confidence": given_ExN.mean(axis=0),
        "variability": given_ExN.std(axis=0),
        "correctness": (p.argmax(axis=2) == labels[None, :]).mean(axis=0),
    }


def data_map(
    W_TxN: np.ndarray,
    probs_ExNxC: np.ndarray | None = None,
    labels: np.ndarray | None = None,
    *,
    drawn_TxN: np.ndarray | None = None,
) -> dict[str, np.ndarray]:
    """`weight_map`'s columns, and `confidence_map`'s beside them where a probability history
    is given: one dict of per-example arrays (length N each), ready to export per row.

    Raises:
      ValueError: as `weight_map` / `confidence_map`; probabilities without labels or the
        other way round, or a history of another N than W's.
    """
    out = weight_map(W_TxN, drawn_TxN)
    if (probs_ExNxC is None) != (labels is None):
        raise ValueError("probs and labels go together: give both or neither.")
    if probs_ExNxC is not None:
        n = len(out["draws"])
        shape = np.shape(probs_ExNxC)
        if len(shape) != 3 or shape[1] != n:
            raise ValueError(f"probs must be E x {n} x C (W has {n} examples), got shape {shape}.")
        out.update(confidence_map(probs_ExNxC, labels))
    return out
