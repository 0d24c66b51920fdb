r"""The trusted set under audit: what each clean example does to the L2RW weights.

L2RW (Ren et al. 2018, arXiv 1803.09050, Alg. 1) trusts its small clean set absolutely. With a
plain-SGD look-ahead of learning rate lr at parameters θ (momentum SGD gives the same
Jacobian), the weight of training example i comes from

    c_i = -∂L_g/∂ε_i |_{ε=0} = (lr / M) Σ_j g_i·g_j,      L_g = (1/M) Σ_j C^v_j(θ'(ε)),

with g_i = ∇_θ C_i(θ) the training example's loss gradient and g_j = ∇_θ C^v_j(θ) a clean
example's; then w_i = max(0, c_i) / Σ_k max(0, c_k), and w = 0 when that sum is 0 (the paper's
δ rule). The positive factor lr cancels in the normalisation, so here c_i = (1/M) Σ_j g_i·g_j.

Leaving clean example j out. c_i is a mean over the clean examples of terms g_i·g_j, each of
which involves j alone, so without j

    c_i^(−j) = (1/(M−1)) Σ_{k≠j} g_i·g_k = (M c_i − g_i·g_j) / (M − 1)

exactly: nothing is retrained and nothing is linearised (unlike influence functions), the rule
is evaluated at the same θ with one clean example fewer; the clip and the normalisation are
then recomputed from c^(−j).

The gradients are the output layer's, in closed form. For logits z = W h + b and the
cross-entropy, ∇_W C = (softmax(z) − onehot(y)) ⊗ h and ∇_b C = softmax(z) − onehot(y), so with
r = softmax(z) − onehot(y)

    g_i·g_j = (r_i·r_j) (h_i·h_j + 1),

and no per-example gradient is ever formed: a batch of B training examples against the M clean
ones is a B x M matrix. The weights are those of one L2RW step at the final parameters with the
whole training set as its batch and the whole clean set as its validation batch, restricted to
the output layer's parameters (the layers below are held fixed).

`trusted_set_influence` reports per clean example j:

  * `loss`: the final model's cross-entropy on j's given label, −log p(y_j | x_j) (nats);
  * `predicted`, `confidence`: the model's most probable class and its probability;
  * `influence`: Σ_i |w_i^(−j) − w_i|, the L1 change of the normalised training weights when j
    is left out, in [0, 2];
  * `endorsement`: Σ_{i ∈ D} (w_i − w_i^(−j)), D = the training examples whose given label the
    model's prediction disputes (argmax p(x_i) ≠ y_i): the weight mass j's presence adds to
    them (positive: j vouches for labels the model disputes; negative: j takes weight from
    them), in [−1, 1];
  * a suspicion rank and a flag. The rank orders by `loss`, highest first (ties by clean row):
    a trusted label the trained model finds unlikely. The flag marks a likely wrong clean label
    that also steers the weighting: the model predicts another class (`predicted ≠ given`),
    gives the given label a probability p(y_j | x_j) = exp(−loss) below `flag_probability`
    *and* `endorsement > 0` (its vote moves weight onto training labels the model disputes).
    A clean label the model disputes but whose vote does not favour the disputed training
    labels is ranked, not flagged. The rule asks how unlikely the given label is, not how
    confident the prediction is: a model trained on noisy labels is rarely confident (under
    40% uniform noise over 10 classes a calibrated one gives its prediction about 0.6), but it
    still gives a wrong label little probability (about 0.04 there).
"""

from __future__ import annotations

import csv
from typing import Callable, Iterable, Iterator, NamedTuple, Sequence

import numpy as np

from l2rw_jax import workdir
from l2rw_jax.audit import common

# (h_BxD, logits_BxC, labels_B): one batch of training rows, as `train_batches()` yields them.
Batch = tuple[np.ndarray, np.ndarray, np.ndarray]


class TrustedSetAudit(NamedTuple):
    """What `trusted_set_influence` returns (M clean examples, N training examples).

    Attributes:
      loss_M: cross-entropy of the final model on each clean example's given label (nats).
      predicted_M: the model's most probable class (int).
      confidence_M: its probability.
      influence_M: Σ_i |w_i^(−j) − w_i|, in [0, 2].
      endorsement_M: Σ_{i ∈ D} (w_i − w_i^(−j)), in [−1, 1] (D: disputed training examples).
      flagged_M: bool, the flag rule of the module docstring.
      order_M: clean rows, most suspect first (loss descending, ties by row).
      rank_M: each clean row's place in `order_M` (1 = most suspect).
      n_train: N.
      n_disputed: |D|, training examples whose prediction differs from their given label.
      disputed_weight: Σ_{i ∈ D} w_i with every clean example: the weight L2RW's rule gives
        the disputed training labels.
      all_clipped: every c_i ≤ 0, so w = 0 (the δ rule); then influence and endorsement are
        those of w = 0.
    """

    loss_M: np.ndarray
    predicted_M: np.ndarray
    confidence_M: np.ndarray
    influence_M: np.ndarray
    endorsement_M: np.ndarray
    flagged_M: np.ndarray
    order_M: np.ndarray
    rank_M: np.ndarray
    n_train: int
    n_disputed: int
    disputed_weight: float
    all_clipped: bool


def residuals(logits_NxC: np.ndarray, labels_N: np.ndarray) -> np.ndarray:
    """r = softmax(z) − onehot(y), float64 N x C: the cross-entropy's gradient in the logits,
    hence the output layer's per-example gradient is r ⊗ [h, 1]."""
    r_NxC = common.softmax(logits_NxC)
    r_NxC[np.arange(len(labels_N)), labels_N] -= 1.0
    return r_NxC


def gradient_dots(h_BxD, r_BxC, h_MxD, r_MxC) -> np.ndarray:
    """g_i·g_j of the output layer's per-example gradients (weights and bias), B x M float64:
    (r_i·r_j)(h_i·h_j + 1)."""
    h_BxD, h_MxD = np.asarray(h_BxD, np.float64), np.asarray(h_MxD, np.float64)
    return (r_BxC @ r_MxC.T) * (h_BxD @ h_MxD.T + 1.0)


def array_batches(
    h_NxD: np.ndarray, logits_NxC: np.ndarray, labels_N: np.ndarray, batch_size: int
) -> Callable[[], Iterator[Batch]]:
    """`train_batches` for arrays already in memory: consecutive row blocks of `batch_size`."""
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}.")

    def batches():
        for start in range(0, len(labels_N), batch_size):
            stop = start + batch_size
            yield h_NxD[start:stop], logits_NxC[start:stop], labels_N[start:stop]

    return batches


def _normalised(a: np.ndarray, total) -> np.ndarray:
    """a / total, 0 where total is 0 (the δ rule); `total` broadcasts over a's last axis."""
    total = np.asarray(total, np.float64)
    return np.where(total > 0, a / np.where(total > 0, total, 1.0), 0.0)


def _checked(batch, d: int, c: int, n_before: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    h_BxD, logits_BxC, y_B = (np.asarray(a) for a in batch)
    b = len(y_B)
    if h_BxD.shape != (b, d) or logits_BxC.shape != (b, c):
        raise ValueError(
            f"training batch at row {n_before} must be h {b} x {d}, logits {b} x {c} "
            f"(like the clean set), got {h_BxD.shape}, {logits_BxC.shape}."
        )
    y_B = common.check_labels(y_B, b, c, f"training labels at row {n_before}")
    return h_BxD, logits_BxC, y_B


def trusted_set_influence(
    h_clean_MxD: np.ndarray,
    logits_clean_MxC: np.ndarray,
    labels_clean_M: np.ndarray,
    train_batches: Callable[[], Iterable[Batch]],
    *,
    flag_probability: float = 0.05,
) -> TrustedSetAudit:
    """Each clean example's loss, prediction, leave-one-out influence on the L2RW weights and
    endorsement of disputed training labels, ranked and flagged (the module docstring has the
    math, the exactness argument and the flag rule).

    Args:
      h_clean_MxD: the clean examples' output-layer inputs (penultimate features), M >= 2.
      logits_clean_MxC: the final model's logits on them.
      labels_clean_M: their given (trusted) labels, in [0, C).
      train_batches: called twice (two passes: the normalisers Σ_k max(0, c_k^(−j)) need every
        training row before any weight is known), each call an iterable of
        `(h_BxD, logits_BxC, labels_B)` over the same training rows in the same order; memory is
        one batch x M, never N x D (`array_batches` for arrays in memory).
      flag_probability: in [0, 1]; a disputed clean label is flagged only where the model gives
        it a lower probability (and its endorsement is positive).

    Returns:
      `TrustedSetAudit` (float64 arrays).

    Raises:
      ValueError: M < 2, shapes that disagree, labels outside [0, C), flag_probability outside
        [0, 1], no training row, or two passes over different numbers of rows.

    Example:
      >>> h, z, y = np.eye(3), 4 * np.eye(3), np.array([0, 1, 1])  # row 2: labelled 1, looks 2
      >>> res = trusted_set_influence(h, z, y, array_batches(h, z, y, 2))  # train = clean here
      >>> res.order_M.tolist(), res.flagged_M.tolist(), round(float(res.endorsement_M[2]), 3)
      ([2, 0, 1], [False, False, True], 0.084)
    """
    h_clean_MxD = np.asarray(h_clean_MxD, np.float64)
    logits_clean_MxC = np.asarray(logits_clean_MxC, np.float64)
    if h_clean_MxD.ndim != 2 or logits_clean_MxC.ndim != 2:
        raise ValueError(
            f"h_clean must be M x D and logits_clean M x C, got {h_clean_MxD.shape}, "
            f"{logits_clean_MxC.shape}."
        )
    m, d = h_clean_MxD.shape
    c = logits_clean_MxC.shape[1]
    if m < 2 or logits_clean_MxC.shape[0] != m:
        raise ValueError(
            f"the clean set needs M >= 2 rows (leave-one-out keeps one), in h and logits alike; "
            f"got {m} and {logits_clean_MxC.shape[0]}."
        )
    y_M = common.check_labels(labels_clean_M, m, c, "labels_clean")
    if not 0.0 <= flag_probability <= 1.0:
        raise ValueError(f"flag_probability must be in [0, 1], got {flag_probability}.")
    probs_MxC = common.softmax(logits_clean_MxC)
    r_MxC = residuals(logits_clean_MxC, y_M)

    def dots(batch, n_before):
        h_BxD, logits_BxC, y_B = _checked(batch, d, c, n_before)
        k_BxM = gradient_dots(h_BxD, residuals(logits_BxC, y_B), h_clean_MxD, r_MxC)
        c_B = k_BxM.mean(axis=1)
        c_loo_BxM = (m * c_B[:, None] - k_BxM) / (m - 1)
        disputed_B = np.argmax(logits_BxC, axis=1) != y_B
        return np.maximum(c_B, 0.0), np.maximum(c_loo_BxM, 0.0), disputed_B

    # Pass 1: the normalisers, with every clean example and without each.
    total, total_loo_M, n, n_disputed = 0.0, np.zeros(m), 0, 0
    for batch in train_batches():
        a_B, a_loo_BxM, disputed_B = dots(batch, n)
        total += a_B.sum()
        total_loo_M += a_loo_BxM.sum(axis=0)
        n += len(a_B)
        n_disputed += int(disputed_B.sum())
    if n == 0:
        raise ValueError("train_batches yielded no training row.")
    # Pass 2: the weights, their L1 change and the mass moved on the disputed rows.
    influence_M, endorsement_M = np.zeros(m), np.zeros(m)
    disputed_weight, n2 = 0.0, 0
    for batch in train_batches():
        a_B, a_loo_BxM, disputed_B = dots(batch, n2)
        w_B = _normalised(a_B, total)
        delta_BxM = w_B[:, None] - _normalised(a_loo_BxM, total_loo_M)
        influence_M += np.abs(delta_BxM).sum(axis=0)
        endorsement_M += delta_BxM[disputed_B].sum(axis=0)
        disputed_weight += float(w_B[disputed_B].sum())
        n2 += len(a_B)
    if n2 != n:
        raise ValueError(
            f"train_batches yielded {n} rows on the first pass and {n2} on the second; both "
            f"passes must cover the same rows."
        )
    # log-sum-exp minus the given logit: exact where p(y | x) underflows.
    z_max_M = logits_clean_MxC.max(axis=1)
    lse_M = z_max_M + np.log(np.exp(logits_clean_MxC - z_max_M[:, None]).sum(axis=1))
    loss_M = lse_M - logits_clean_MxC[np.arange(m), y_M]
    predicted_M = probs_MxC.argmax(axis=1)
    confidence_M = probs_MxC.max(axis=1)
    unlikely_M = loss_M > -np.log(flag_probability) if flag_probability > 0 else np.zeros(m, bool)
    flagged_M = (predicted_M != y_M) & unlikely_M & (endorsement_M > 0)
    order_M = np.lexsort((np.arange(m), -loss_M))
    rank_M = np.empty(m, np.int64)
    rank_M[order_M] = np.arange(1, m + 1)
    return TrustedSetAudit(
        loss_M=loss_M,
        predicted_M=predicted_M,
        confidence_M=confidence_M,
        influence_M=influence_M,
        endorsement_M=endorsement_M,
        flagged_M=flagged_M,
        order_M=order_M,
        rank_M=rank_M,
        n_train=n,
        n_disputed=n_disputed,
        disputed_weight=disputed_weight,
        all_clipped=not total > 0,
    )


# `trusted_set.csv`: one row per clean example, most suspect first.
CSV_COLUMNS = (
    "rank",  # 1 = most suspect (loss descending)
    "source_index",  # the example's row in the user's clean data
    "clean_row",  # its row in the clean set the audit was given
    "given_label",
    "predicted_label",
    "confidence",  # p(predicted_label | x)
    "loss",  # −log p(given_label | x), nats
    "influence",  # Σ_i |w_i^(−j) − w_i|
    "endorsement",  # Σ_{i ∈ D} (w_i − w_i^(−j))
    "flagged",  # 1 / 0
)
CSV_CLASS_COLUMNS = ("given_class", "predicted_class")


def write_trusted_set_csv(
    path: str,
    res: TrustedSetAudit,
    labels_M: np.ndarray,
    source_index_M: np.ndarray,
    class_names: Sequence[str] | None = None,
) -> str:
    """Writes `res` as one row per clean example, in `res.order_M`, to `path` (csv module; tmp
    file + os.replace, so a reader never sees half a file).

    Columns: `CSV_COLUMNS`, then with `class_names` `CSV_CLASS_COLUMNS`. Returns `path`.
    ValueError when `labels_M` or `source_index_M` is not one value per clean example.
    """
    m = len(res.order_M)
    labels_M, source_index_M = np.asarray(labels_M), np.asarray(source_index_M)
    if labels_M.shape != (m,) or source_index_M.shape != (m,):
        raise ValueError(
            f"labels and source_index must have shape ({m},), got {labels_M.shape}, "
            f"{source_index_M.shape}."
        )

    def write_rows(f):
        w = csv.writer(f)
        w.writerow(list(CSV_COLUMNS) + (list(CSV_CLASS_COLUMNS) if class_names else []))
        for j in res.order_M:
            given, pred = int(labels_M[j]), int(res.predicted_M[j])
            row = [
                int(res.rank_M[j]),
                int(source_index_M[j]),
                int(j),
                given,
                pred,
                float(res.confidence_M[j]),
                float(res.loss_M[j]),
                float(res.influence_M[j]),
                float(res.endorsement_M[j]),
                int(res.flagged_M[j]),
            ]
            if class_names:
                row += [class_names[given], class_names[pred]]
            w.writerow(row)

    workdir.atomic_write(path, write_rows, newline="")
    return path
