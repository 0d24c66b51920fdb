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

`find_label_issues` returns one of these rankings over every training example as indices into
the user's own data (cleanlab's shape); `write_label_issues_csv` writes the table the audit
saves as `<run>/audit/label_issues.csv`.
"""

from __future__ import annotations

import csv
from typing import Mapping, Sequence

import numpy as np

from l2rw_jax import workdir
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


def confident_thresholds(probs_NxC: np.ndarray, labels: np.ndarray) -> np.ndarray:
    """Per-class thresholds t_j = mean of p_j(x) over the examples labelled j (float64 C).

    Northcutt, Jiang, Chuang, JAIR 2021, Eq. 2. A class with no labelled example gets +inf (no
    example is confidently in it).
    """
    probs_NxC = np.asarray(probs_NxC, np.float64)
    n, c = probs_NxC.shape
    labels = common.check_labels(labels, n, c)
    count_C = np.bincount(labels, minlength=c)
    sum_C = np.bincount(labels, weights=probs_NxC[np.arange(n), labels], minlength=c)
    return np.where(count_C > 0, sum_C / np.maximum(count_C, 1), np.inf)


def confident_guess(probs_NxC: np.ndarray, labels: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(guess_N, confident_N): each example's confident class and whether it has one.

    The confident class is the most probable among {j : p_j(x) >= t_j} (`confident_thresholds`;
    Northcutt et al. 2021, Eq. 1); `confident_N` is False where that set is empty (then
    `guess_N` is meaningless and the example is in no cell of the confident joint).
    """
    probs_NxC = np.asarray(probs_NxC, np.float64)
    above_NxC = probs_NxC >= confident_thresholds(probs_NxC, labels)[None, :]
    guess_N = np.argmax(np.where(above_NxC, probs_NxC, -np.inf), axis=1)
    return guess_N, above_NxC.any(axis=1)


def confident_learning_flags(probs_NxC: np.ndarray, labels: np.ndarray) -> np.ndarray:
    """Off-diagonal membership of the confident joint (Northcutt et al. 2021, Eq. 1-2).

    Classes with no labelled example get threshold +inf (no example is confidently in them).
    """
    guess_N, confident_N = confident_guess(probs_NxC, labels)
    return confident_N & (guess_N != np.asarray(labels))


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


# ------------------------------------------------------------------ every example, one ranking
RANKINGS = ("l2rw_meta_grad", "l2rw_memory", "l2rw_weight", "final_loss", "confident_learning")
# "auto": the first of these the caller has, the ranking the audit's suspects follow.
_AUTO = ("l2rw_meta_grad", "l2rw_memory", "l2rw_weight", "final_loss")


def final_loss(probs_NxC: np.ndarray, labels: np.ndarray) -> np.ndarray:
    """-log p(given label | x), float64 N; p clipped at 1e-300 so the loss stays finite."""
    return -np.log(np.maximum(self_confidence(probs_NxC, labels), 1e-300))


def _float_1d(name: str, a, n: int) -> np.ndarray:
    a = np.asarray(a, np.float64)
    if a.shape != (n,):
        raise ValueError(f"{name} must have shape ({n},) (one value per example), got {a.shape}.")
    return a


def rank_label_issues(
    loss_N: np.ndarray,
    *,
    mean_meta_grad_N: np.ndarray | None = None,
    meta_grad_memory_N: np.ndarray | None = None,
    mean_weight_N: np.ndarray | None = None,
    count_N: np.ndarray | None = None,
    flags_N: np.ndarray | None = None,
    ranked_by: str = "auto",
) -> tuple[np.ndarray, str]:
    """Every example, most suspect first, by one score; returns (order_N, ranked_by).

    Scores (high = suspect): `l2rw_meta_grad` = mean_meta_grad, `l2rw_memory` =
    meta_grad_memory, `l2rw_weight` = -mean_weight, `final_loss` = loss; `confident_learning`
    sorts the flagged examples (`flags_N`) first, each group by loss descending (= self-confidence
    ascending). `auto` takes the first of l2rw_meta_grad, l2rw_memory, l2rw_weight, final_loss
    whose score is given: the ranking the audit's suspects follow. Ties go to the higher loss,
    then to the lower index. An example without a recorded score (`count_N` == 0, or a NaN
    score: never drawn in training) ranks after every scored one, those by loss descending.
    Over the scored examples the order equals `rank_by_l2rw_weight` / `rank_by_loss` /
    `rank_by_confident_learning` on them (the last up to self-confidences below 1e-300, which
    the loss clips).

    Args:
      loss_N: final loss on the given label (`final_loss`), finite.
      mean_meta_grad_N, meta_grad_memory_N, mean_weight_N: the run's recorded scores (float N).
      count_N: times each example was drawn (int N); count 0 = no recorded score.
      flags_N: confident-learning flags (bool N), needed for `confident_learning`.
      ranked_by: `auto` or one of `RANKINGS`.

    Raises:
      ValueError: an unknown or unavailable `ranked_by`, or arrays of other lengths.

    Example:
      >>> rank_label_issues(np.array([0.1, 2.0, 0.5]), mean_weight_N=np.array([0.0, 0.5, 0.0]))
      (array([2, 0, 1]), 'l2rw_weight')
    """
    loss_N = np.asarray(loss_N, np.float64)
    if loss_N.ndim != 1 or not np.all(np.isfinite(loss_N)):
        raise ValueError(f"loss must be 1-D and finite, got shape {loss_N.shape}.")
    n = len(loss_N)
    scores = {}
    if mean_meta_grad_N is not None:
        scores["l2rw_meta_grad"] = _float_1d("mean_meta_grad", mean_meta_grad_N, n)
    if meta_grad_memory_N is not None:
        scores["l2rw_memory"] = _float_1d("meta_grad_memory", meta_grad_memory_N, n)
    if mean_weight_N is not None:
        scores["l2rw_weight"] = -_float_1d("mean_weight", mean_weight_N, n)
    scores["final_loss"] = loss_N
    if flags_N is not None:
        flags_N = np.asarray(flags_N, bool)
        if flags_N.shape != (n,):
            raise ValueError(f"flags must have shape ({n},), got {flags_N.shape}.")
        scores["confident_learning"] = flags_N.astype(np.float64)
    if ranked_by == "auto":
        ranked_by = next(r for r in _AUTO if r in scores)
    if ranked_by not in RANKINGS:
        raise ValueError(f"ranked_by must be 'auto' or one of {RANKINGS}, got {ranked_by!r}.")
    if ranked_by not in scores:
        need = "flags" if ranked_by == "confident_learning" else "its score"
        raise ValueError(f"ranked_by={ranked_by!r} needs {need}; given: {sorted(scores)}.")
    score_N = scores[ranked_by]
    unscored_N = np.isnan(score_N)
    if count_N is not None and ranked_by.startswith("l2rw_"):
        count_N = np.asarray(count_N)
        if count_N.shape != (n,):
            raise ValueError(f"count must have shape ({n},), got {count_N.shape}.")
        unscored_N |= count_N <= 0
    # lexsort: the last key is the primary one.
    order_N = np.lexsort((np.arange(n), -loss_N, -np.where(unscored_N, 0.0, score_N), unscored_N))
    return order_N, ranked_by


def find_label_issues(
    labels: np.ndarray,
    pred_probs: np.ndarray,
    *,
    source_index: np.ndarray | None = None,
    mean_meta_grad: np.ndarray | None = None,
    meta_grad_memory: np.ndarray | None = None,
    mean_weight: np.ndarray | None = None,
    count: np.ndarray | None = None,
    return_indices_ranked_by: str = "auto",
) -> np.ndarray:
    """Indices of the training examples into the user's own data, most suspect label first.

    The shape cleanlab users know (`cleanlab.filter.find_label_issues(labels, pred_probs,
    return_indices_ranked_by=...)`), with one difference: cleanlab returns only the examples it
    flags; this returns *every* example, ranked (the L2RW scores have no threshold of their own),
    so take the first k, e.g. k = the expected number of wrong labels. The order is that of
    `rank_label_issues` (see there for the scores, the ties and the never-drawn examples); with
    the audit's inputs it is the row order of `label_issues.csv`.

    Args:
      labels: int N, the given (maybe wrong) labels.
      pred_probs: float N x C, the model's class probabilities for the same rows.
      source_index: int N, each row's index in the user's data (a run's `example_weights.npz`
        has it); None: the rows themselves (0..N-1).
      mean_meta_grad, meta_grad_memory, mean_weight, count: what the run recorded per example
        (`example_weights.npz` keys of the same names, rows aligned with `labels`).
      return_indices_ranked_by: `auto` (the audit's suspects: the first recorded of
        mean_meta_grad, meta_grad_memory, mean_weight, else the final loss) or one of `RANKINGS`.

    Returns:
      int64 N: source indices, most suspect first.

    Raises:
      ValueError: labels / probabilities / indices of the wrong shape or values, or a ranking
        whose score was not given.

    Example:
      >>> find_label_issues(np.array([0, 1]), np.array([[0.9, 0.1], [0.8, 0.2]]),
      ...                   source_index=np.array([7, 3]))
      array([3, 7])
    """
    probs_NxC = np.asarray(pred_probs, np.float64)
    if probs_NxC.ndim != 2 or not np.all(np.isfinite(probs_NxC)):
        raise ValueError(f"pred_probs must be a finite N x C array, got shape {probs_NxC.shape}.")
    n = probs_NxC.shape[0]
    labels = common.check_labels(labels, n, probs_NxC.shape[1])
    if source_index is None:
        source_N = np.arange(n, dtype=np.int64)
    else:
        source_N = np.asarray(source_index)
        if source_N.shape != (n,) or not np.issubdtype(source_N.dtype, np.integer):
            raise ValueError(
                f"source_index must be {n} integers (one per example), got "
                f"{source_N.dtype} {source_N.shape}."
            )
    flags_N = (
        confident_learning_flags(probs_NxC, labels)
        if return_indices_ranked_by == "confident_learning"
        else None
    )
    order_N, _ = rank_label_issues(
        final_loss(probs_NxC, labels),
        mean_meta_grad_N=mean_meta_grad,
        meta_grad_memory_N=meta_grad_memory,
        mean_weight_N=mean_weight,
        count_N=count,
        flags_N=flags_N,
        ranked_by=return_indices_ranked_by,
    )
    return source_N[order_N].astype(np.int64)


# ------------------------------------------------------------------ the CSV
CSV_COLUMNS = (
    "rank",
    "source_index",
    "train_row",
    "given_label",
    "predicted_label",
    "true_label",
    "count",
    "mean_meta_grad",
    "meta_grad_memory",
    "mean_weight",
    "weight_std",
    "nonzero_share",
    "loss",
    "confident_learning",
)
# Each ranking's rank of the row (1 = most suspect), one column per ranking of `RANKINGS`,
# named for it; empty for a ranking the run cannot compute (e.g. no meta-gradient recorded).
CSV_RANK_COLUMNS = tuple(f"rank_{name}" for name in RANKINGS)
CSV_CLASS_COLUMNS = ("given_class", "predicted_class", "true_class")


def _cell(v) -> str | int | float:
    """CSV cell: None / NaN -> empty (not recorded); numpy scalars -> Python (exact repr)."""
    if v is None:
        return ""
    if isinstance(v, (bool, np.bool_)):
        return int(v)
    if isinstance(v, (np.integer, int)):
        return int(v)
    v = float(v)
    return "" if np.isnan(v) else v


def write_label_issues_csv(
    path: str,
    order_N: np.ndarray,
    columns: Mapping[str, np.ndarray | None],
    class_names: Sequence[str] | None = None,
    ranks: Mapping[str, np.ndarray] | None = None,
) -> str:
    """Writes one row per example, in `order_N`, to `path` (csv module; tmp file + os.replace).

    Columns: `CSV_COLUMNS`, then `CSV_RANK_COLUMNS` (`rank_<ranking>`: the row's rank, 1 = most
    suspect, in each ranking of `ranks`; empty for the rankings not given), then with
    `class_names` `CSV_CLASS_COLUMNS`. `rank` is the row's place in the file (`order_N`).

    Args:
      path: the CSV file.
      order_N: a permutation of range(N), most suspect first; row r of the file is example
        order_N[r - 1], with `rank` = r.
      columns: per-example arrays (length N, indexed by example) for every name of
        `CSV_COLUMNS` but `rank`; None for a column the run does not have: written empty, as is
        every NaN (e.g. the mean weight of an example never drawn). Bools are written 1 / 0.
      class_names: names of the label ids; when given, `given_class`, `predicted_class` and
        `true_class` columns follow (empty where the label is).
      ranks: {ranking name (of `RANKINGS`): order_N, a permutation of range(N), most suspect
        first}, e.g. `ranking_quality.suspect_rankings`; None: every rank column empty.

    Returns:
      `path`.

    Raises:
      ValueError: a missing or unknown column, a column of the wrong length, an order that
        is not a permutation, or a ranking not in `RANKINGS`.
    """
    order_N = np.asarray(order_N)
    n = len(order_N)
    if order_N.ndim != 1 or not np.array_equal(np.sort(order_N), np.arange(n)):
        raise ValueError(f"order must be a permutation of range({n}), got shape {order_N.shape}.")
    want = set(CSV_COLUMNS) - {"rank"}
    if set(columns) != want:
        raise ValueError(
            f"columns must be exactly {sorted(want)}; missing {sorted(want - set(columns))}, "
            f"unknown {sorted(set(columns) - want)}."
        )
    ranks = dict(ranks or {})
    unknown = sorted(set(ranks) - set(RANKINGS))
    if unknown:
        raise ValueError(f"ranks has unknown rankings {unknown}; allowed: {list(RANKINGS)}.")
    rank_cols = {}
    for name in RANKINGS:
        if name not in ranks:
            rank_cols[f"rank_{name}"] = None
            continue
        o = np.asarray(ranks[name])
        if o.ndim != 1 or not np.array_equal(np.sort(o), np.arange(n)):
            raise ValueError(
                f"ranks[{name!r}] must be a permutation of range({n}), got shape {o.shape}."
            )
        r_N = np.empty(n, np.int64)
        r_N[o] = np.arange(1, n + 1)
        rank_cols[f"rank_{name}"] = r_N
    cols = {}
    for name, a in columns.items():
        if a is not None:
            a = np.asarray(a)
            if a.shape != (n,):
                raise ValueError(f"column {name!r} must have shape ({n},), got {a.shape}.")
        cols[name] = a
    header = list(CSV_COLUMNS) + list(CSV_RANK_COLUMNS)
    if class_names is not None:
        header += list(CSV_CLASS_COLUMNS)

    def name_of(label) -> str:
        return "" if label == "" else str(class_names[label])

    def write_rows(f):
        w = csv.writer(f)
        w.writerow(header)
        for r, i in enumerate(order_N, start=1):
            row = {"rank": r}
            for name, a in cols.items():
                row[name] = "" if a is None else _cell(a[i])
            out = [row[c] for c in CSV_COLUMNS]
            out += ["" if a is None else int(a[i]) for a in rank_cols.values()]
            if class_names is not None:
                out += [name_of(row[c]) for c in ("given_label", "predicted_label", "true_label")]
            w.writerow(out)

    workdir.atomic_write(path, write_rows, newline="")
    return path
