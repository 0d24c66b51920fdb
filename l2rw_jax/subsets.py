"""Class subsets drawn by a seed: the clean set (k per class) and the class imbalance subset.

Pure numpy functions of a seed (no TensorFlow, no JAX): each draws rows of a class uniformly
without replacement, the first rows of `rng.permutation` of that class's rows,
`rng = np.random.default_rng(seed)` (Ren et al., ICML 2018, arXiv 1803.09050, §5).
`corruption.make_splits` uses them for its clean set and its `imbalance` split.
"""

from __future__ import annotations

import numbers
from typing import Any, NamedTuple

import numpy as np

from l2rw_jax.label_checks import check_int
from l2rw_jax.label_checks import check_labels
from l2rw_jax.label_checks import check_seed


class Subset(NamedTuple):
    """A class subset: `index` rows of the source (ascending) and their relabelled `labels`."""

    index: np.ndarray  # int64 n, rows of the labels passed in
    labels: np.ndarray  # int32 n, position of the source class in `classes`
    classes: tuple  # source class ids; new label c means source class classes[c]


def check_fraction(majority_fraction: Any) -> float:
    """`majority_fraction` as a float, checked: a number in the open interval (0, 1)."""
    if (
        isinstance(majority_fraction, bool)
        or not isinstance(majority_fraction, numbers.Real)
        or not 0.0 < float(majority_fraction) < 1.0
    ):
        raise ValueError(
            f"majority_fraction must be a number in the open interval (0, 1), got "
            f"{majority_fraction!r}."
        )
    return float(majority_fraction)


def imbalance_subset(
    labels: np.ndarray,
    *,
    majority_fraction: float,
    seed,
    num_examples: int = 5000,
    majority_class: int = 9,
    minority_class: int = 4,
) -> Subset:
    """Class imbalance (the paper's MNIST 4-vs-9): n examples, a fraction p of the majority class.

    Exactly `n_maj = floor(p n + 1/2)` rows of `majority_class` and `n - n_maj` of
    `minority_class`, each drawn uniformly without replacement (`rng.permutation` of that class's
    rows, majority first, `rng = default_rng(seed)`). Labels are relabelled to 0..1 by sorted source
    class id (4 -> 0, 9 -> 1 by default; `Subset.classes` keeps the map). Nothing is mislabeled.
    A balanced set is `majority_fraction=0.5, num_examples=2 * m`.

    Args:
      labels: 1-D int source labels (any non-negative ids).
      majority_fraction: p in (0, 1) (paper: 0.9, 0.95, 0.98, 0.99, 0.995).
      seed: int >= 0 (or a sequence of them).
      num_examples: n >= 1 (paper: 5000).
      majority_class, minority_class: distinct source class ids.

    Returns:
      `Subset(index, labels, classes)`: `index` ascending rows of `labels`, new labels int32.

    >>> s = imbalance_subset(np.array([4, 9] * 50), majority_fraction=0.9, seed=0, num_examples=20)
    >>> np.bincount(s.labels).tolist(), s.classes
    ([2, 18], (4, 9))
    """
    p = check_fraction(majority_fraction)
    n = check_int("num_examples", num_examples, minimum=1)
    majority_class = check_int("majority_class", majority_class, minimum=0)
    minority_class = check_int("minority_class", minority_class, minimum=0)
    if majority_class == minority_class:
        raise ValueError(
            f"majority_class and minority_class must differ, both are {majority_class}."
        )
    labels = np.asarray(labels)
    if labels.ndim != 1 or not np.issubdtype(labels.dtype, np.integer):
        raise ValueError(
            f"labels must be a 1-D integer array, got dtype {labels.dtype} and shape "
            f"{labels.shape}."
        )
    n_major = int(np.floor(p * n + 0.5))
    counts = {majority_class: n_major, minority_class: n - n_major}
    for c, k in counts.items():
        have = int(np.sum(labels == c))
        if k > have:
            raise ValueError(
                f"imbalance of {n} examples with majority_fraction={p} needs {k} examples "
                f"of class {c}, but only {have} are available."
            )
    rng = np.random.default_rng(check_seed(seed))
    index = []
    for c in (majority_class, minority_class):
        rows = np.flatnonzero(labels == c)
        index.append(rows[rng.permutation(rows.size)[: counts[c]]])
    index = np.sort(np.concatenate(index))
    classes = tuple(sorted((minority_class, majority_class)))
    new_labels = (labels[index] == classes[1]).astype(np.int32)
    return Subset(index, new_labels, classes)


def clean_split(
    labels: np.ndarray, k_per_class: int, seed, *, num_classes: int | None = None
) -> tuple[np.ndarray, np.ndarray]:
    """A class-balanced clean set of k per class, and the rest: (clean_idx, rest_idx), disjoint.

    For every class c (0..num_classes-1 if given, else the classes present, ascending), the first
    k rows of `rng.permutation` of that class's rows, `rng = default_rng(seed)`. Both outputs are
    ascending and together cover `range(N)` exactly once.

    Raises:
      ValueError: k_per_class < 1, or larger than some class has.
    """
    k = check_int("k_per_class", k_per_class, minimum=1)
    labels = np.asarray(labels)
    if num_classes is None:
        if labels.ndim != 1 or not np.issubdtype(labels.dtype, np.integer):
            raise ValueError(
                f"labels must be a 1-D integer array, got dtype {labels.dtype} and shape "
                f"{labels.shape}."
            )
        classes = np.unique(labels)
    else:
        labels = check_labels(labels, check_int("num_classes", num_classes, minimum=1))
        classes = np.arange(num_classes)
    counts = np.array([np.sum(labels == c) for c in classes])
    if counts.size and counts.min() < k:
        c = int(classes[np.argmin(counts)])
        raise ValueError(
            f"k_per_class={k} is larger than class {c} has ({counts.min()} examples); "
            f"allowed: 1 <= k_per_class <= {counts.min()}."
        )
    rng = np.random.default_rng(check_seed(seed))
    clean = [
        rows[rng.permutation(rows.size)[:k]]
        for rows in (np.flatnonzero(labels == c) for c in classes)
    ]
    clean = np.sort(np.concatenate(clean)) if clean else np.zeros(0, np.int64)
    rest = np.setdiff1d(np.arange(labels.size), clean)
    return clean, rest
