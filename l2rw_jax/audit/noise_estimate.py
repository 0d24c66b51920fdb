"""The label noise, estimated: the transition matrix from the trusted set or from the noisy set.

Every estimate here is of the same matrix, in the same orientation as
`l2rw_jax.corruption.check_transition` and `l2rw_jax.correction.transition_estimate`:

  T[i, j] = P(observed label j | true label i),   rows = true class, columns = observed label,

each estimated row summing to 1. A row the data cannot estimate (no example of that true class)
is NaN: unknown, not the identity's and not zero.

  * `glc_transition`: Gold Loss Correction's estimate (Hendrycks, Mazeika, Wilson, Gimpel,
    NeurIPS 2018): on the trusted set, whose labels are the true ones, with probabilities from a
    model trained on the noisy labels (so that p(j | x) estimates P(observed j | x)),
    T^[i, j] = mean of p(j | x) over the trusted examples of class i. The same computation as
    the GLC training scheme's (`correction.transition_estimate`), which puts the identity's row
    where this one puts NaN.
  * `confident_joint`, `calibrate_confident_joint`, `estimate_joint`, `confident_transition`:
    confident learning (Northcutt, Jiang, Chuang, JAIR 2021, Sec. 3.1), from the noisy
    training set alone: probabilities (out-of-sample, or from a model that has not memorised the
    labels) and the given labels. The confident joint counts C[given i][true j] (rows = *given*
    label, as in the paper and cleanlab); the transition is its transpose, normalised.
  * `empirical_transition`: the training set's own T, where its true labels are known.
  * `transition_error`: how far an estimate is from a known T.

Against cleanlab (`cleanlab.count`, 2.x), which implements the same paper: the uncalibrated
confident joint is equal wherever these implementation details of cleanlab do not bite: it
compares p_j(x) >= t_j - 1e-6 (here: >= t_j exactly); where two or more classes pass their
thresholds it takes the argmax of *all* classes (here: of those that pass, the paper's Eq. 1);
it raises every diagonal count to at least 1; and it rounds the calibrated joint to integers
that keep the row totals (here: the real-valued Eq. 3). The tests check the equality and bound
the rounding.
"""

from __future__ import annotations

from typing import NamedTuple

import jax.numpy as jnp
import numpy as np

from l2rw_jax import correction
from l2rw_jax import corruption
from l2rw_jax.audit import common
from l2rw_jax.audit import label_issues


class TransitionEstimate(NamedTuple):
    """An estimated transition matrix and the support of each of its rows.

    Attributes:
      T_CxC: float64, T[i, j] = P(observed j | true i); row i is NaN where `count_C[i] == 0`.
      count_C: int64, the examples behind row i (`glc_transition`: trusted examples of class i;
        `confident_transition`: examples confidently counted into true class i).
    """

    T_CxC: np.ndarray
    count_C: np.ndarray


def _check_probs(probs_NxC, name: str = "probs") -> np.ndarray:
    """float64 N x C class probabilities (N >= 1, C >= 2, >= 0, rows summing to 1 within 1e-3)."""
    p = np.asarray(probs_NxC, np.float64)
    if p.ndim != 2 or p.shape[0] < 1 or p.shape[1] < 2:
        raise ValueError(
            f"{name} must be N x C class probabilities (N >= 1, C >= 2), got shape {p.shape}."
        )
    bad_NxC = ~(np.isfinite(p) & (p >= 0))
    if bad_NxC.any():
        i, j = np.argwhere(bad_NxC)[0]
        raise ValueError(f"{name} must be finite and >= 0, got {name}[{i}, {j}] = {p[i, j]}.")
    sums_N = p.sum(axis=1)
    bad = np.flatnonzero(np.abs(sums_N - 1.0) > 1e-3)
    if bad.size:
        raise ValueError(
            f"{name} rows must sum to 1 within 1e-3 (softmax outputs); row {int(bad[0])} sums to "
            f"{float(sums_N[bad[0]])}."
        )
    return p


def glc_transition(probs_NxC: np.ndarray, labels: np.ndarray) -> TransitionEstimate:
    """Gold Loss Correction's T^ from the trusted set (Hendrycks et al., NeurIPS 2018, Sec. 3).

      T^[i, j] = (1 / n_i) sum_{k : y_k = i} p(j | x_k),   n_i = #{k : y_k = i},

    over the trusted examples (x_k, y_k), their labels taken as the true ones. `probs_NxC`
    must come from a model trained on the *noisy* labels (it estimates P(observed | x)), never
    trained on the trusted set itself. Computed by `correction.transition_estimate` (float32,
    as the GLC scheme trains with it); a class with no trusted example gets a NaN row here.

    Args:
      probs_NxC: the model's class probabilities on the N trusted examples (softmax outputs).
      labels: int N, the trusted labels, in [0, C).

    Returns:
      `TransitionEstimate(T_CxC, count_C)`, rows = true class, columns = observed label;
      count_C = n_i.

    Raises:
      ValueError: probabilities of the wrong shape or not probabilities; labels of the wrong
        length, type or range.

    Example:
      >>> glc_transition(np.array([[0.75, 0.25], [0.25, 0.75], [0.5, 0.5]]),
      ...                np.array([0, 0, 1])).T_CxC
      array([[0.5, 0.5],
             [0.5, 0.5]])
    """
    p = _check_probs(probs_NxC)
    n, c = p.shape
    labels = common.check_labels(labels, n, c)
    sum_CxC = np.zeros((c, c))
    np.add.at(sum_CxC, labels, p)
    count_C = np.bincount(labels, minlength=c)
    T_CxC = np.asarray(
        correction.transition_estimate(jnp.asarray(sum_CxC), jnp.asarray(count_C)), np.float64
    )
    T_CxC[count_C == 0] = np.nan
    return TransitionEstimate(T_CxC, count_C.astype(np.int64))


def confident_joint(probs_NxC: np.ndarray, labels: np.ndarray) -> np.ndarray:
    """The confident joint C[given i][true j] (Northcutt et al., JAIR 2021, Eq. 1), int64 C x C.

    C[i][j] = #{x labelled i : x's confident class is j}, where the confident class of x is the
    most probable class among those with p_j(x) >= t_j, t_j = the mean of p_j over the examples
    labelled j (`label_issues.confident_guess`). An example with no such class is counted
    nowhere. Rows = given label, columns = (estimated) true label, cleanlab's orientation.

    Args:
      probs_NxC: class probabilities on the N noisy training examples (out-of-sample).
      labels: int N, the given labels, in [0, C).

    Raises:
      ValueError: as `glc_transition`.

    Example:
      >>> confident_joint(np.array([[0.9, 0.1], [0.95, 0.05], [0.2, 0.8]]), np.array([0, 1, 1]))
      array([[1, 0],
             [1, 1]])
    """
    p = _check_probs(probs_NxC)
    n, c = p.shape
    labels = common.check_labels(labels, n, c)
    guess_N, confident_N = label_issues.confident_guess(p, labels)
    cj_CxC = np.zeros((c, c), np.int64)
    np.add.at(cj_CxC, (labels[confident_N], guess_N[confident_N]), 1)
    return cj_CxC


def calibrate_confident_joint(cj_CxC: np.ndarray, labels: np.ndarray) -> np.ndarray:
    """The calibrated confident joint (Northcutt et al. 2021, Eq. 3), float64 C x C.

      C~[i][j] = C[i][j] / sum_j' C[i][j'] * |{x labelled i}|,

    so that each row sums to the count of its given label (a row with no confident example
    stays zero).

    Args:
      cj_CxC: a confident joint (`confident_joint`), counts >= 0, rows = given label.
      labels: int N, the given labels the joint was counted from.

    Raises:
      ValueError: a joint that is not C x C with finite entries >= 0, or labels out of range.
    """
    cj = np.asarray(cj_CxC, np.float64)
    if cj.ndim != 2 or cj.shape[0] != cj.shape[1] or cj.shape[0] < 2:
        raise ValueError(f"the confident joint must be C x C (C >= 2), got shape {cj.shape}.")
    if not np.all(np.isfinite(cj)) or cj.min() < 0:
        raise ValueError("the confident joint's entries must be finite counts >= 0.")
    c = cj.shape[0]
    labels = np.asarray(labels)
    if labels.ndim != 1:
        raise ValueError(f"labels must be 1-D (one per example), got shape {labels.shape}.")
    labels = common.check_labels(labels, labels.shape[0], c)
    label_count_C = np.bincount(labels, minlength=c)
    row_C = cj.sum(axis=1)
    return (
        np.where(row_C[:, None] > 0, cj / np.maximum(row_C, 1e-300)[:, None], 0.0)
        * (label_count_C[:, None])
    )


def estimate_joint(probs_NxC: np.ndarray, labels: np.ndarray) -> np.ndarray:
    """Q[i][j] = P(given i, true j) (Northcutt et al. 2021, Eq. 4), float64 C x C summing to 1.

    The calibrated confident joint divided by its sum; with every row of the confident joint
    non-empty, row i sums to the share of examples labelled i. cleanlab's
    `count.estimate_joint` up to its rounding (module docstring).

    Raises:
      ValueError: as `glc_transition`, or no example confidently in any class.
    """
    cal_CxC = calibrate_confident_joint(confident_joint(probs_NxC, labels), labels)
    total = cal_CxC.sum()
    if total <= 0:
        raise ValueError("the confident joint is empty: no example passes any class threshold.")
    return cal_CxC / total


def confident_transition(probs_NxC: np.ndarray, labels: np.ndarray) -> TransitionEstimate:
    """Confident learning's T^ from the noisy set (Northcutt et al. 2021, Sec. 3.1).

      T^[i, j] = Q[j][i] / sum_j' Q[j'][i]   (= P^(observed j | true i)),

    with Q = `estimate_joint` (rows = given label): the transpose of the paper's and cleanlab's
    noise matrix P(given | true) (columns = true there), so that it lines up with
    `glc_transition` and `corruption.check_transition`. Row i is NaN where no example is
    confidently in true class i.

    Args:
      probs_NxC: class probabilities on the N noisy training examples (out-of-sample).
      labels: int N, the given labels.

    Returns:
      `TransitionEstimate(T_CxC, count_C)`, count_C[i] = examples of the confident joint whose
      confident class is i (its column sums).

    Raises:
      ValueError: as `glc_transition`.
    """
    p = _check_probs(probs_NxC)
    labels = common.check_labels(labels, p.shape[0], p.shape[1])
    cj_CxC = confident_joint(p, labels)
    cal_CxC = calibrate_confident_joint(cj_CxC, labels)
    true_C = cal_CxC.sum(axis=0)
    with np.errstate(invalid="ignore", divide="ignore"):
        T_CxC = np.where(true_C[:, None] > 0, cal_CxC.T / true_C[:, None], np.nan)
    return TransitionEstimate(T_CxC, cj_CxC.sum(axis=0).astype(np.int64))


def empirical_transition(
    true_labels: np.ndarray, given_labels: np.ndarray, num_classes: int
) -> TransitionEstimate:
    """The training set's own transition matrix, where its true labels are known.

      T[i, j] = #{k : true_k = i, given_k = j} / #{k : true_k = i},

    the noise the set actually carries (a synthetic corruption's T up to sampling). A true class
    with no example gets a NaN row: unknown, not the identity's.

    Args:
      true_labels: int N, the true labels, in [0, num_classes).
      given_labels: int N, the observed labels of the same examples.
      num_classes: C >= 2.

    Returns:
      `TransitionEstimate(T_CxC, count_C)`, count_C[i] = examples of true class i.

    Raises:
      ValueError: labels of different lengths, not integers or out of range; C < 2.

    Example:
      >>> empirical_transition(np.array([0, 0, 1, 1]), np.array([0, 1, 1, 1]), 3).T_CxC
      array([[0.5, 0.5, 0. ],
             [0. , 1. , 0. ],
             [nan, nan, nan]])
    """
    if (
        isinstance(num_classes, bool)
        or not isinstance(num_classes, (int, np.integer))
        or (num_classes < 2)
    ):
        raise ValueError(f"num_classes must be an integer >= 2, got {num_classes!r}.")
    true_labels = np.asarray(true_labels)
    if true_labels.ndim != 1:
        raise ValueError(
            f"true_labels must be 1-D (one per example), got shape {true_labels.shape}."
        )
    n = len(true_labels)
    true_labels = common.check_labels(true_labels, n, num_classes, "true_labels")
    given_labels = common.check_labels(given_labels, n, num_classes, "given_labels")
    counts_CxC = np.zeros((num_classes, num_classes), np.int64)
    np.add.at(counts_CxC, (true_labels, given_labels), 1)
    count_C = counts_CxC.sum(axis=1)
    with np.errstate(invalid="ignore", divide="ignore"):
        T_CxC = np.where(count_C[:, None] > 0, counts_CxC / count_C[:, None], np.nan)
    return TransitionEstimate(T_CxC, count_C)


def transition_error(T_hat_CxC: np.ndarray, T_CxC: np.ndarray) -> dict:
    """How far an estimate is from the known transition matrix, over its estimated rows.

    With D = T^ - T restricted to the rows R where T^ is not NaN (unknown rows are left out, not
    counted as errors):

      mean_abs_error = mean over the |R| x C entries of |D|     (in probability units)
      max_abs_error = max |D|
      frobenius_error = sqrt(sum D^2)                           (over R; not normalised)

    Args:
      T_hat_CxC: an estimate (`glc_transition(...).T_CxC`, `confident_transition(...).T_CxC`):
        finite or NaN entries, a NaN row being unknown.
      T_CxC: the known matrix, row-stochastic (`corruption.check_transition`).

    Returns:
      {"mean_abs_error", "max_abs_error", "frobenius_error": float, or None when no row is
      estimated; "rows_compared": |R|}.

    Raises:
      ValueError: shapes that differ, a T that is not a transition matrix, a row of T^ partly
        NaN, or an infinite entry.

    Example:
      >>> transition_error(np.array([[0.75, 0.25], [np.nan, np.nan]]), np.eye(2))
      {'mean_abs_error': 0.25, 'max_abs_error': 0.25, 'frobenius_error': 0.3535533905932738,
       'rows_compared': 1}
    """
    T = corruption.check_transition(T_CxC)
    T_hat = np.asarray(T_hat_CxC, np.float64)
    if T_hat.shape != T.shape:
        raise ValueError(f"the estimate must have T's shape {T.shape}, got {T_hat.shape}.")
    nan_CxC = np.isnan(T_hat)
    rows_R = ~nan_CxC.any(axis=1)
    partly = np.flatnonzero(nan_CxC.any(axis=1) & ~nan_CxC.all(axis=1))
    if partly.size:
        raise ValueError(
            f"the estimate's row {int(partly[0])} is partly NaN; a row is known "
            "or unknown (all NaN) as a whole."
        )
    if np.isinf(T_hat).any():
        raise ValueError("the estimate has an infinite entry; entries are probabilities or NaN.")
    if not rows_R.any():
        return {
            "mean_abs_error": None,
            "max_abs_error": None,
            "frobenius_error": None,
            "rows_compared": 0,
        }
    d = T_hat[rows_R] - T[rows_R]
    return {
        "mean_abs_error": float(np.abs(d).mean()),
        "max_abs_error": float(np.abs(d).max()),
        "frobenius_error": float(np.sqrt((d**2).sum())),
        "rows_compared": int(rows_R.sum()),
    }
