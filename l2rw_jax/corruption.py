"""Label corruptions, class imbalance and clean splits: pure numpy functions of a seed.

No TensorFlow, no JAX: everything here is `np.random.default_rng(seed)` and integer arithmetic,
so the same seed gives the same split and the same noise on any machine (Ren et al., ICML 2018,
arXiv 1803.09050, §5; each function's docstring is its definition).

Counting convention (all corruptions): with N examples and ratio r, *exactly*
`n = floor(r * N + 1/2)` examples are chosen (round half up, computed in float64), uniformly
without replacement: the first n rows of `rng.permutation(N)`. `uniform_flip` and
`background_flip` draw this chosen set first from the same generator, so for the same
(labels, ratio, seed) they choose the same examples.

Labels are returned as int32; `is_noisy[i]` is True exactly where the observed label differs
from the true one.

The clean set (`make_splits`) is either drawn from the training data (`clean_per_class` per
class, the paper's setting on benchmarks) or given by the caller (`x_clean, y_clean`: a set they
verified, the setting on real noisy data), then used exactly as given and the whole of
`x_train` is the noisy training set.
"""

from __future__ import annotations

import numbers
from typing import Any, NamedTuple

import numpy as np

NOISE_TYPES = ("none", "given", "uniform", "background", "pair", "asymmetric", "transition",
               "imbalance")
# Noise types whose `ratio` is a fraction of examples flipped.
RATIO_NOISE_TYPES = ("uniform", "background", "pair", "asymmetric")

# Named class maps of `asymmetric_flip` (true class -> observed class).
NOISE_MAPS = {
    # Patrini et al., "Making deep neural networks robust to label noise: a loss correction
    # approach", CVPR 2017, §6 (CIFAR-10): truck -> automobile, bird -> airplane,
    # deer -> horse, cat <-> dog.
    "cifar10": {9: 1, 2: 0, 4: 7, 3: 5, 5: 3},
    # Patrini et al. CVPR 2017, §6 (MNIST): 2 -> 7, 3 -> 8, 5 <-> 6, 7 -> 1 (digits that look
    # alike; the same map as Hendrycks et al., GLC, NeurIPS 2018).
    "mnist": {2: 7, 3: 8, 5: 6, 6: 5, 7: 1},
}


# Sub-seeds of `make_splits`: `default_rng([seed, stage])`, so that one stage never shifts another.
_STAGE_CLEAN, _STAGE_NOISE, _STAGE_TRAIN_SUBSET, _STAGE_TEST_SUBSET, _STAGE_BACKGROUND = range(5)


class Corrupted(NamedTuple):
    """A corrupted label set: observed `labels`, `true_labels`, and `is_noisy = labels != true`."""

    labels: np.ndarray  # int32 N, observed (maybe noisy)
    true_labels: np.ndarray  # int32 N
    is_noisy: np.ndarray  # bool N


class Subset(NamedTuple):
    """A class subset: `index` rows of the source (ascending) and their relabelled `labels`."""

    index: np.ndarray  # int64 n, rows of the labels passed in
    labels: np.ndarray  # int32 n, position of the source class in `classes`
    classes: tuple  # source class ids; new label c means source class classes[c]


class Splits(NamedTuple):
    """Everything an experiment trains and evaluates on, as numpy arrays (`make_splits`).

    `train_*` rows are the noisy training set (row i is the example with batch `index` i);
    `*_source_index` are rows in the source train/test arrays, for audits; `clean_source_index`
    is a row of the given `x_clean` when `clean_given`, else of the source training arrays.
    `source_classes[c]` is the source class id behind label c (the identity except for
    `imbalance`). `train_true_labels` are the labels before *our* corruption: on real data with
    noisy labels of its own they are the labels as given, not a ground truth, and `train_is_noisy`
    marks only the synthetic flips. `truth_known` says whether `train_true_labels` and
    `train_is_noisy` are a ground truth: False for `none` and for `given` without true labels
    (then they are the observed labels and all False, and every metric that needs the truth is
    left out, not zero).
    """

    train_x: np.ndarray  # uint8 N x H x W x C
    train_labels: np.ndarray  # int32 N, observed (maybe noisy)
    train_true_labels: np.ndarray  # int32 N
    train_is_noisy: np.ndarray  # bool N
    train_source_index: np.ndarray  # int64 N, row in the source training arrays
    clean_x: np.ndarray  # uint8 M x H x W x C, never corrupted
    clean_labels: np.ndarray  # int32 M
    clean_source_index: np.ndarray  # int64 M, row in x_clean if clean_given, else in x_train
    test_x: np.ndarray  # uint8 T x H x W x C
    test_labels: np.ndarray  # int32 T
    test_source_index: np.ndarray  # int64 T, row in the source test arrays
    num_classes: int
    source_classes: tuple
    noise: str
    ratio: float
    background_class: int | None
    seed: int
    clean_given: bool = False  # True: the clean set is the caller's x_clean, y_clean, as given
    truth_known: bool = True  # False: train_true_labels / train_is_noisy are not a ground truth


# ----------------------------------------------------------------------------- validation


def _check_int(name: str, value: Any, *, minimum: int) -> int:
    if isinstance(value, bool) or not isinstance(value, numbers.Integral) or value < minimum:
        raise ValueError(f"{name} must be an integer >= {minimum}, got {value!r}.")
    return int(value)


def _check_ratio(ratio: Any) -> float:
    if (
        isinstance(ratio, bool)
        or not isinstance(ratio, numbers.Real)
        or not 0.0 <= float(ratio) <= 1.0
    ):
        raise ValueError(f"ratio must be a number in [0, 1], got {ratio!r}.")
    return float(ratio)


def _check_labels(labels: Any, num_classes: int, name: str = "labels") -> np.ndarray:
    labels = np.asarray(labels)
    if labels.ndim != 1 or not np.issubdtype(labels.dtype, np.integer):
        raise ValueError(
            f"{name} must be a 1-D integer array, got dtype {labels.dtype} and shape "
            f"{labels.shape}."
        )
    if labels.size and (labels.min() < 0 or labels.max() >= num_classes):
        bad = labels[(labels < 0) | (labels >= num_classes)]
        raise ValueError(
            f"{name} must lie in [0, {num_classes}) (num_classes={num_classes}); found "
            f"{np.unique(bad)[:5].tolist()}."
        )
    return labels


def _check_seed(seed: Any) -> Any:
    """An int >= 0 or a sequence of them (anything `default_rng` takes as entropy)."""
    items = seed if isinstance(seed, (tuple, list)) else (seed,)
    for s in items:
        if isinstance(s, bool) or not isinstance(s, numbers.Integral) or s < 0:
            raise ValueError(f"seed must be an integer >= 0 (or a sequence of them), got {seed!r}.")
    return seed


def num_chosen(ratio: float, n: int) -> int:
    """The number of examples a corruption of ratio r over n examples picks: floor(r n + 1/2)."""
    return int(np.floor(_check_ratio(ratio) * n + 0.5))


def _choose(rng: np.random.Generator, n: int, ratio: float) -> np.ndarray:
    return rng.permutation(n)[: num_chosen(ratio, n)]


# ----------------------------------------------------------------------------- corruptions


def uniform_flip(
    labels: np.ndarray, num_classes: int, ratio: float, seed, *, official_convention: bool = False
) -> Corrupted:
    """Uniform label flip: exactly round(r N) examples get a label drawn from the other classes.

    With `K = floor(r N + 1/2)` chosen rows i (first K of `rng.permutation(N)`,
    `rng = default_rng(seed)`) and an offset `o_i ~ U{1, ..., C-1}`:

      y~_i = (y_i + o_i) mod C,

    i.e. uniform over the C-1 classes != y_i; never the true class, so `is_noisy.sum() == K`.

    `official_convention=True` reproduces the official code
    (uber-research/learning-to-reweight-examples, `_flip_data`): `y~_i ~ U{0, ..., C-2}`, which can
    keep the true label and never produces class C-1. For comparisons only. Then `is_noisy` is True
    only where the label actually changed (so it counts fewer than K).

    Args:
      labels: int N, the true labels in [0, num_classes).
      num_classes: C >= 2.
      ratio: r in [0, 1].
      seed: int >= 0 (or a sequence of them) for `np.random.default_rng`.
      official_convention: see above.

    Returns:
      `Corrupted(labels, true_labels, is_noisy)`, labels int32.

    >>> c = uniform_flip(np.arange(10) % 5, 5, 0.4, seed=0)
    >>> int(c.is_noisy.sum()), bool(np.all(c.labels[c.is_noisy] != c.true_labels[c.is_noisy]))
    (4, True)
    """
    num_classes = _check_int("num_classes", num_classes, minimum=2)
    true = _check_labels(labels, num_classes).astype(np.int32)
    ratio = _check_ratio(ratio)
    rng = np.random.default_rng(_check_seed(seed))
    chosen = _choose(rng, true.size, ratio)
    observed = true.copy()
    if official_convention:
        observed[chosen] = rng.integers(0, num_classes - 1, size=chosen.size)
    else:
        observed[chosen] = (
            true[chosen] + rng.integers(1, num_classes, size=chosen.size)
        ) % num_classes
    return Corrupted(observed, true, observed != true)


def background_flip(
    labels: np.ndarray, num_classes: int, ratio: float, seed, *, background_class: int | None = None
) -> Corrupted:
    """Background flip: exactly round(r N) chosen examples all get one background class b.

    The chosen rows are the same as `uniform_flip`'s for the same seed (drawn first); then
    `b = background_class`, or when None `b ~ U{0, ..., C-1}` drawn next from the same generator.
    Chosen examples whose true class is b keep it and are *not* noisy, so
    `is_noisy.sum() == K - #{chosen i : y_i = b}` and class b never holds a noisy example. (The
    official code chooses the same way but draws b from 0..C-2.)

    Args:
      labels: int N true labels in [0, num_classes).
      num_classes: C >= 2.
      ratio: r in [0, 1].
      seed: int >= 0 (or a sequence of them).
      background_class: b in [0, C), or None to draw it from the seed.

    Returns:
      `Corrupted(labels, true_labels, is_noisy)`; `b` is the only observed label of noisy rows.
    """
    num_classes = _check_int("num_classes", num_classes, minimum=2)
    true = _check_labels(labels, num_classes).astype(np.int32)
    ratio = _check_ratio(ratio)
    if background_class is not None:
        _check_background(background_class, num_classes)
    rng = np.random.default_rng(_check_seed(seed))
    chosen = _choose(rng, true.size, ratio)
    b = int(rng.integers(num_classes)) if background_class is None else int(background_class)
    observed = true.copy()
    observed[chosen] = b
    return Corrupted(observed, true, observed != true)


def _check_background(background_class: Any, num_classes: int) -> int:
    if (
        isinstance(background_class, bool)
        or not isinstance(background_class, numbers.Integral)
        or not 0 <= background_class < num_classes
    ):
        raise ValueError(
            f"background_class must be an integer in [0, {num_classes}), got {background_class!r}."
        )
    return int(background_class)


def _check_pair_ratio(ratio: Any) -> float:
    if (
        isinstance(ratio, bool)
        or not isinstance(ratio, numbers.Real)
        or not 0.0 <= float(ratio) < 1.0
    ):
        raise ValueError(f"ratio must be a number in [0, 1) for noise 'pair', got {ratio!r}.")
    return float(ratio)


def _flip_within_classes(
    true: np.ndarray, targets: dict, ratio: float, seed
) -> Corrupted:
    """For each source class c of `targets` (ascending): exactly `num_chosen(ratio, n_c)` of its
    rows (first of `rng.permutation(n_c)`, one generator for all classes) get `targets[c]`."""
    rng = np.random.default_rng(_check_seed(seed))
    observed = true.copy()
    for c in sorted(targets):
        rows = np.flatnonzero(true == c)
        observed[rows[rng.permutation(rows.size)[: num_chosen(ratio, rows.size)]]] = targets[c]
    return Corrupted(observed, true, observed != true)


def pair_flip(labels: np.ndarray, num_classes: int, ratio: float, seed) -> Corrupted:
    """Pair flip: a fraction r of each class c moves to the next class, c -> (c + 1) mod C.

    For every class c (ascending) with n_c examples, exactly `K_c = floor(r n_c + 1/2)` of its
    rows (the first K_c of `rng.permutation(n_c)`, `rng = default_rng(seed)` shared by the
    classes in order) get label `(c + 1) mod C`; never the true class. The transition matrix
    has `1 - r` on the diagonal and r on the superdiagonal (Han et al., "Co-teaching",
    NeurIPS 2018, §4: "pair flipping").

    Args:
      labels: int N true labels in [0, num_classes).
      num_classes: C >= 2.
      ratio: r in [0, 1) (at r >= 1/2 the flipped class outnumbers the true one).
      seed: int >= 0 (or a sequence of them).

    Returns:
      `Corrupted(labels, true_labels, is_noisy)`; `is_noisy.sum() == sum_c K_c`.

    >>> c = pair_flip(np.repeat(np.arange(3), 4), 3, 0.5, seed=0)
    >>> np.bincount(c.true_labels[c.is_noisy]).tolist(), c.labels[c.is_noisy].tolist()
    ([2, 2, 2], [1, 1, 2, 2, 0, 0])
    """
    num_classes = _check_int("num_classes", num_classes, minimum=2)
    true = _check_labels(labels, num_classes).astype(np.int32)
    ratio = _check_pair_ratio(ratio)
    return _flip_within_classes(
        true, {c: (c + 1) % num_classes for c in range(num_classes)}, ratio, seed
    )


def class_map(spec: Any, num_classes: int | None = None) -> dict[int, int]:
    """The class map {true class: observed class} of `asymmetric_flip`, checked.

    `spec` is a preset name of `NOISE_MAPS` ("cifar10", "mnist"), a mapping {c: c'} (keys and
    values integers, or strings of integers as a JSON config stores them), or a string
    "c:c',c:c'" (e.g. "9:1,3:5,5:3", from the command line). Every c != c', and with
    `num_classes` both lie in [0, num_classes).

    Raises:
      ValueError: an unknown preset, a malformed entry, a class outside [0, C), or c -> c.
    """
    if isinstance(spec, str):
        if spec in NOISE_MAPS:
            spec = NOISE_MAPS[spec]
        else:
            try:
                spec = dict(item.split(":") for item in spec.replace(" ", "").split(",") if item)
            except ValueError:
                spec = None
    items = getattr(spec, "items", None)
    if not callable(items) or not spec:
        raise ValueError(
            f"noise_map must be a preset ({', '.join(NOISE_MAPS)}), a non-empty mapping "
            f"{{true class: observed class}} or a string like '9:1,3:5', got {spec!r}."
        )
    out = {}
    for k, v in items():
        try:
            kc, vc = int(str(k)), int(str(v))
        except ValueError:
            raise ValueError(
                f"noise_map entry {k!r}: {v!r} is not a pair of integer classes."
            ) from None
        for c in (kc, vc):
            if c < 0 or (num_classes is not None and c >= num_classes):
                hi = "num_classes" if num_classes is None else num_classes
                raise ValueError(
                    f"noise_map {dict(items())!r} names class {c}, outside [0, {hi})."
                )
        if kc == vc:
            raise ValueError(f"noise_map maps class {kc} to itself; every c -> c' needs c != c'.")
        out[kc] = vc
    return out


def asymmetric_flip(
    labels: np.ndarray, num_classes: int, ratio: float, seed, *, noise_map: Any = "cifar10"
) -> Corrupted:
    """Asymmetric (class-dependent) flip: a fraction r of each mapped class c gets `map[c]`.

    For every class c of the map (ascending) with n_c examples, exactly `floor(r n_c + 1/2)` of
    its rows (the first of `rng.permutation(n_c)`, `rng = default_rng(seed)` shared by the
    classes in order) get label `map[c] != c`; classes outside the map stay clean. The CIFAR-10
    preset "cifar10" is Patrini et al. CVPR 2017's truck -> automobile, bird -> airplane,
    deer -> horse, cat <-> dog; "mnist" their 2 -> 7, 3 -> 8, 5 <-> 6, 7 -> 1.

    Args:
      labels: int N true labels in [0, num_classes).
      num_classes: C >= 2.
      ratio: r in [0, 1].
      seed: int >= 0 (or a sequence of them).
      noise_map: see `class_map`.

    Returns:
      `Corrupted(labels, true_labels, is_noisy)`.

    >>> c = asymmetric_flip(np.repeat(np.arange(10), 5), 10, 0.4, seed=0)
    >>> sorted(set(zip(c.true_labels[c.is_noisy].tolist(), c.labels[c.is_noisy].tolist())))
    [(2, 0), (3, 5), (4, 7), (5, 3), (9, 1)]
    """
    num_classes = _check_int("num_classes", num_classes, minimum=2)
    true = _check_labels(labels, num_classes).astype(np.int32)
    ratio = _check_ratio(ratio)
    return _flip_within_classes(true, class_map(noise_map, num_classes), ratio, seed)


def check_transition(matrix: Any, num_classes: int | None = None) -> np.ndarray:
    """The transition matrix T (float64 C x C) of `transition_flip`, checked.

    `T[i, j] = P(observed j | true i)`: finite, non-negative, each row summing to 1 within 1e-6.

    Raises:
      ValueError: naming the shape, entry or row that breaks this.
    """
    try:
        t = np.asarray(matrix, dtype=np.float64)
    except (TypeError, ValueError):
        raise ValueError(
            f"noise_matrix must be a C x C array of numbers, got {matrix!r}."
        ) from None
    want = "C x C" if num_classes is None else f"{num_classes} x {num_classes}"
    if t.ndim != 2 or t.shape[0] != t.shape[1] or t.shape[0] < 2 or (
        num_classes is not None and t.shape[0] != num_classes
    ):
        raise ValueError(f"noise_matrix must be {want} (C >= 2), got shape {t.shape}.")
    if not np.all(np.isfinite(t)) or t.min() < 0:
        i, j = np.argwhere(~(np.isfinite(t) & (t >= 0)))[0]
        raise ValueError(
            f"noise_matrix entries must be finite and >= 0, got T[{i}, {j}] = {float(t[i, j])}."
        )
    sums = t.sum(axis=1)
    bad = np.flatnonzero(np.abs(sums - 1.0) > 1e-6)
    if bad.size:
        i = int(bad[0])
        hint = f" (put T[{i}, {i}] = 1 to keep class {i} clean)" if sums[i] == 0 else ""
        raise ValueError(
            f"noise_matrix rows must sum to 1 within 1e-6; row {i} sums to {float(sums[i])}{hint}."
        )
    return t


def transition_flip(labels: np.ndarray, matrix: Any, seed) -> Corrupted:
    """Noise from a transition matrix: example i's observed label is drawn from row T[y_i].

    `T[i, j] = P(observed j | true i)` (C x C, row-stochastic, `check_transition`). With
    `u_i ~ U[0, 1)` (`default_rng(seed).random(N)`), the observed label is the first j whose
    cumulative row sum `sum_{k <= j} T[y_i, k]` exceeds u_i. The number flipped is random
    (binomial per class), unlike the other flips.

    Args:
      labels: int N true labels in [0, C).
      matrix: T, C x C (C = num_classes).
      seed: int >= 0 (or a sequence of them).

    Returns:
      `Corrupted(labels, true_labels, is_noisy)`.
    """
    t = check_transition(matrix)
    num_classes = t.shape[0]
    true = _check_labels(labels, num_classes).astype(np.int32)
    u = np.random.default_rng(_check_seed(seed)).random(true.size)
    cdf = np.cumsum(t, axis=1)
    observed = np.sum(cdf[true] <= u[:, None], axis=1)
    # Rounding in the cumulative sum: u close to 1 may pass the last entry; keep it in range,
    # on the last class with mass.
    last = num_classes - 1 - np.argmax(t[:, ::-1] > 0, axis=1)
    observed = np.minimum(observed, last[true]).astype(np.int32)
    return Corrupted(observed, true, observed != true)


def _check_fraction(majority_fraction: Any) -> float:
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
    p = _check_fraction(majority_fraction)
    n = _check_int("num_examples", num_examples, minimum=1)
    majority_class = _check_int("majority_class", majority_class, minimum=0)
    minority_class = _check_int("minority_class", minority_class, minimum=0)
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
    rng = np.random.default_rng(_check_seed(seed))
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
    k = _check_int("k_per_class", k_per_class, minimum=1)
    labels = np.asarray(labels)
    if num_classes is None:
        if labels.ndim != 1 or not np.issubdtype(labels.dtype, np.integer):
            raise ValueError(
                f"labels must be a 1-D integer array, got dtype {labels.dtype} and shape "
                f"{labels.shape}."
            )
        classes = np.unique(labels)
    else:
        labels = _check_labels(labels, _check_int("num_classes", num_classes, minimum=1))
        classes = np.arange(num_classes)
    counts = np.array([np.sum(labels == c) for c in classes])
    if counts.size and counts.min() < k:
        c = int(classes[np.argmin(counts)])
        raise ValueError(
            f"k_per_class={k} is larger than class {c} has ({counts.min()} examples); "
            f"allowed: 1 <= k_per_class <= {counts.min()}."
        )
    rng = np.random.default_rng(_check_seed(seed))
    clean = [
        rows[rng.permutation(rows.size)[:k]]
        for rows in (np.flatnonzero(labels == c) for c in classes)
    ]
    clean = np.sort(np.concatenate(clean)) if clean else np.zeros(0, np.int64)
    rest = np.setdiff1d(np.arange(labels.size), clean)
    return clean, rest


# ----------------------------------------------------------------------------- splits


def _check_images(name: str, x: Any) -> np.ndarray:
    x = np.asarray(x)
    if x.dtype != np.uint8 or x.ndim != 4:
        raise ValueError(
            f"{name} must be a uint8 array N x H x W x C, got dtype {x.dtype} and shape {x.shape}."
        )
    return x


def _check_clean_per_class(k: Any, clean_given: bool | None, noise: str) -> None:
    """`clean_per_class` >= 1 draws the clean set from the training data; 0 or None means none
    is drawn, which is only right when a clean set was given (never both: a conflict raises)."""
    zero = not isinstance(k, bool) and isinstance(k, numbers.Integral) and k == 0
    draws = not (k is None or zero)
    if draws:
        _check_int("clean_per_class", k, minimum=1)
    if noise == "imbalance" and clean_given:
        raise ValueError(
            "noise='imbalance' draws its clean set from the two classes of the training data; "
            "a given clean set (x_clean, y_clean) cannot be used with it."
        )
    if draws and clean_given:
        raise ValueError(
            f"clean_per_class={k!r} would draw a clean set from the training data, but a clean "
            f"set was given (x_clean, y_clean); set clean_per_class to 0 (or None) to use the "
            f"given one as it is."
        )
    if not draws and (clean_given is False or noise == "imbalance"):
        raise ValueError(
            f"clean_per_class must be an integer >= 1, got {k!r} (0 or None only with a given "
            f"clean set x_clean, y_clean, and not for noise 'imbalance')."
        )


def check_split_args(
    *,
    num_classes: int | None,
    noise: str,
    ratio: float,
    clean_per_class: int,
    seed: int,
    background_class: int | None = None,
    official_convention: bool = False,
    majority_fraction: float | None = None,
    num_train: int = 5000,
    majority_class: int = 9,
    minority_class: int = 4,
    clean_given: bool | None = False,
    noise_map: Any = None,
    noise_matrix: Any = None,
) -> None:
    """Checks `make_splits`'s settings; `num_classes=None` skips the checks that need it.

    Lets a caller (e.g. `config.validate`) reject a bad setting before loading data.
    `clean_given`: whether a clean set comes with the data (then `clean_per_class` must be 0 or
    None, and `noise` not `imbalance`); None: not known yet (before the data is loaded), so
    `clean_per_class` may be 0/None or >= 1, to be checked again by `make_splits`.
    Raises ValueError naming the bad value and what is allowed.
    """
    if noise not in NOISE_TYPES:
        raise ValueError(f"noise must be one of {NOISE_TYPES}, got {noise!r}.")
    if num_classes is not None:
        _check_int("num_classes", num_classes, minimum=2)
    ratio = _check_ratio(ratio)
    if noise not in RATIO_NOISE_TYPES and ratio != 0.0:
        raise ValueError(
            f"ratio={ratio} only applies to noise {', '.join(RATIO_NOISE_TYPES)}, not "
            f"{noise!r}; leave it at 0."
        )
    if noise == "pair":
        _check_pair_ratio(ratio)
    if noise == "asymmetric":
        class_map("cifar10" if noise_map is None else noise_map, num_classes)
    elif noise_map is not None:
        raise ValueError(f"noise_map={noise_map!r} only applies to noise 'asymmetric', not "
                         f"{noise!r}.")
    if noise == "transition":
        if noise_matrix is None:
            raise ValueError("noise 'transition' needs noise_matrix (a C x C row-stochastic "
                             "matrix), got None.")
        check_transition(noise_matrix, num_classes)
    elif noise_matrix is not None:
        raise ValueError(f"noise_matrix only applies to noise 'transition', not {noise!r}.")
    if not (clean_given is None or isinstance(clean_given, bool)):
        raise ValueError(f"clean_given must be True, False or None, got {clean_given!r}.")
    _check_clean_per_class(clean_per_class, clean_given, noise)
    _check_int("seed", seed, minimum=0)
    if background_class is not None:
        if noise != "background":
            raise ValueError(
                f"background_class={background_class!r} only applies to noise "
                f"'background', not {noise!r}."
            )
        if num_classes is None:
            _check_int("background_class", background_class, minimum=0)
        else:
            _check_background(background_class, num_classes)
    if official_convention and noise != "uniform":
        raise ValueError(
            f"official_convention=True only applies to noise 'uniform', not {noise!r}."
        )
    if noise == "imbalance":
        _check_fraction(majority_fraction)
        _check_int("num_train", num_train, minimum=1)
        for name, c in (("majority_class", majority_class), ("minority_class", minority_class)):
            _check_int(name, c, minimum=0)
            if num_classes is not None and c >= num_classes:
                raise ValueError(
                    f"{name} must be in [0, {num_classes}) (num_classes={num_classes}), got {c!r}."
                )
        if majority_class == minority_class:
            raise ValueError(
                f"majority_class and minority_class must differ, both are {majority_class}."
            )
    elif majority_fraction is not None:
        raise ValueError(
            f"majority_fraction={majority_fraction!r} only applies to noise "
            f"'imbalance', not {noise!r}."
        )


def make_splits(
    x_train: np.ndarray,
    y_train: np.ndarray,
    x_test: np.ndarray,
    y_test: np.ndarray,
    *,
    num_classes: int,
    noise: str = "none",
    ratio: float = 0.0,
    clean_per_class: int | None = None,
    seed: int,
    background_class: int | None = None,
    official_convention: bool = False,
    majority_fraction: float | None = None,
    num_train: int = 5000,
    majority_class: int = 9,
    minority_class: int = 4,
    x_clean: np.ndarray | None = None,
    y_clean: np.ndarray | None = None,
    noise_map: Any = None,
    noise_matrix: Any = None,
    y_train_true: np.ndarray | None = None,
) -> Splits:
    """The clean set, the (corrupted) noisy training set and the test set of one experiment.

    1. Clean set: `clean_split` of the source training labels, k = `clean_per_class` per class
       (for `imbalance`: of the two classes only), never corrupted. Sub-seed `[seed, 0]`.
       Or, when `x_clean, y_clean` are given (a trusted set of the user's), exactly those rows,
       in their order, never corrupted (`clean_source_index = arange(M)`, `clean_given=True`);
       then `clean_per_class` must be 0 or None (a value >= 1 raises: the two would conflict)
       and `noise` may not be `imbalance` (it draws its own clean set).
    2. Noisy training set = the rest of the training pool (ALL of `x_train`, in order, when a
       clean set was given: `train_source_index = arange(N)`), then by `noise`:
       - `none`: labels as they came (`train_is_noisy` all False, `train_true_labels` = the
         given labels: on real data any noise of its own is unknown here; `truth_known=False`);
       - `given`: the labels as the user observed them, no synthetic noise on top. With
         `y_train_true` (the true labels of `x_train`, benchmarks only) `train_is_noisy =
         y_train != y_train_true` and `truth_known=True`; without it as `none`;
       - `pair`: `pair_flip(ratio)`; `asymmetric`: `asymmetric_flip(ratio, noise_map)` (None:
         the "cifar10" preset); `transition`: `transition_flip(noise_matrix)` (all sub-seed
         `[seed, 1]`);
       - `uniform`: `uniform_flip(ratio)` (sub-seed `[seed, 1]`; `official_convention` passes on);
       - `background`: `background_flip(ratio)` (sub-seed `[seed, 1]`) to `background_class`, or
         when None to `b ~ U{0..C-1}` from sub-seed `[seed, 4]` (`Splits.background_class`);
       - `imbalance`: `imbalance_subset` of the rest: `num_train` examples, a fraction
         `majority_fraction` of `majority_class` (sub-seed `[seed, 2]`), labels 0/1 by sorted class
         id; the test set becomes the balanced subset of the two classes, m = min of their test
         counts each (sub-seed `[seed, 3]`).
    3. Test set: the source test set (all of it, except for `imbalance`).

    Paper sizes: uniform flip 1000 clean images (CIFAR-10: 100 per class, CIFAR-100: 10),
    background flip 10 per class, MNIST imbalance 5 per class with N = 5000.

    With `y_train_true` the clean set is drawn by the true labels and carries them (a clean
    set is verified); `y_train_true` needs `noise='given'` (noise on top of noisy labels would
    have no single truth).

    Every argument is checked before any work; a bad one raises ValueError naming it.
    """
    if (x_clean is None) != (y_clean is None):
        raise ValueError(
            f"give both x_clean and y_clean or neither, got x_clean "
            f"{'None' if x_clean is None else 'given'} and y_clean "
            f"{'None' if y_clean is None else 'given'}."
        )
    clean_given = x_clean is not None
    check_split_args(
        num_classes=num_classes,
        noise=noise,
        ratio=ratio,
        clean_per_class=clean_per_class,
        seed=seed,
        background_class=background_class,
        official_convention=official_convention,
        majority_fraction=majority_fraction,
        num_train=num_train,
        majority_class=majority_class,
        minority_class=minority_class,
        clean_given=clean_given,
        noise_map=noise_map,
        noise_matrix=noise_matrix,
    )
    ratio = float(ratio)
    x_train, x_test = _check_images("x_train", x_train), _check_images("x_test", x_test)
    y_train = _check_labels(y_train, num_classes, "y_train")
    y_test = _check_labels(y_test, num_classes, "y_test")
    if y_train_true is not None:
        if noise != "given":
            raise ValueError(
                f"true labels (y_train_true) come only with noise 'given' (the observed labels "
                f"as they are), got noise={noise!r}."
            )
        y_train_true = _check_labels(y_train_true, num_classes, "y_train_true")
        if len(y_train_true) != len(y_train):
            raise ValueError(
                f"y_train_true has {len(y_train_true)} labels, y_train {len(y_train)}; they "
                f"must have the same length."
            )
    if len(x_train) != len(y_train) or len(x_test) != len(y_test):
        raise ValueError(
            f"images and labels must have the same length: x_train {len(x_train)} vs "
            f"y_train {len(y_train)}, x_test {len(x_test)} vs y_test {len(y_test)}."
        )
    if x_train.shape[1:] != x_test.shape[1:]:
        raise ValueError(
            f"train and test images differ in shape: {x_train.shape[1:]} vs {x_test.shape[1:]}."
        )
    if clean_given:
        x_clean = _check_images("x_clean", x_clean)
        y_clean = _check_labels(y_clean, num_classes, "y_clean")
        if len(x_clean) != len(y_clean) or len(x_clean) == 0:
            raise ValueError(
                f"the given clean set needs as many labels as images and at least one: x_clean "
                f"{len(x_clean)} vs y_clean {len(y_clean)}."
            )
        if x_clean.shape[1:] != x_train.shape[1:]:
            raise ValueError(
                f"clean and train images differ in shape: {x_clean.shape[1:]} vs "
                f"{x_train.shape[1:]}."
            )

    if noise == "imbalance":
        classes = tuple(sorted((minority_class, majority_class)))
        pool = np.flatnonzero(np.isin(y_train, classes))
        n_major = int(np.floor(majority_fraction * num_train + 0.5))
        need = {
            majority_class: n_major + clean_per_class,
            minority_class: num_train - n_major + clean_per_class,
        }
        for c, k in need.items():
            have = int(np.sum(y_train == c))
            if k > have:
                raise ValueError(
                    f"imbalance with num_train={num_train}, majority_fraction="
                    f"{majority_fraction} and clean_per_class={clean_per_class} needs {k} "
                    f"training examples of class {c}, only {have} exist."
                )
        binary = (y_train[pool] == classes[1]).astype(np.int32)
        clean_rows, rest_rows = clean_split(
            binary, clean_per_class, [seed, _STAGE_CLEAN], num_classes=2
        )
        clean_idx, rest_idx = pool[clean_rows], pool[rest_rows]
        sub = imbalance_subset(
            y_train[rest_idx],
            majority_fraction=majority_fraction,
            seed=[seed, _STAGE_TRAIN_SUBSET],
            num_examples=num_train,
            majority_class=majority_class,
            minority_class=minority_class,
        )
        train_idx = rest_idx[sub.index]
        corrupted = Corrupted(sub.labels, sub.labels.copy(), np.zeros(sub.labels.size, bool))
        m = int(min(np.sum(y_test == c) for c in classes))
        if m == 0:
            raise ValueError(
                f"the test set has no example of class {classes} for the imbalance split."
            )
        test_sub = imbalance_subset(
            y_test,
            majority_fraction=0.5,
            seed=[seed, _STAGE_TEST_SUBSET],
            num_examples=2 * m,
            majority_class=majority_class,
            minority_class=minority_class,
        )
        test_idx, test_labels = test_sub.index, test_sub.labels
        clean_labels = (y_train[clean_idx] == classes[1]).astype(np.int32)
        out_classes, out_num_classes, b = classes, 2, None
    else:
        if clean_given:
            clean_idx, train_idx = np.arange(len(y_clean)), np.arange(len(y_train))
        else:
            clean_idx, train_idx = clean_split(
                y_train if y_train_true is None else y_train_true, clean_per_class,
                [seed, _STAGE_CLEAN], num_classes=num_classes,
            )
        if train_idx.size == 0 and clean_given:
            raise ValueError("x_train is empty; nothing to train on.")
        if train_idx.size == 0:
            raise ValueError(
                f"clean_per_class={clean_per_class} takes every training example "
                f"({len(y_train)}); nothing is left to train on."
            )
        true = (y_train if y_train_true is None else y_train_true)[train_idx].astype(np.int32)
        noise_seed = [seed, _STAGE_NOISE]
        b = None
        if noise == "given" and y_train_true is not None:
            observed = y_train[train_idx].astype(np.int32)
            corrupted = Corrupted(observed, true, observed != true)
        elif noise == "pair":
            corrupted = pair_flip(true, num_classes, ratio, noise_seed)
        elif noise == "asymmetric":
            corrupted = asymmetric_flip(
                true, num_classes, ratio, noise_seed,
                noise_map="cifar10" if noise_map is None else noise_map,
            )
        elif noise == "transition":
            corrupted = transition_flip(true, noise_matrix, noise_seed)
        elif noise == "uniform":
            corrupted = uniform_flip(
                true, num_classes, ratio, noise_seed, official_convention=official_convention
            )
        elif noise == "background":
            b = background_class
            if b is None:
                b = int(np.random.default_rng([seed, _STAGE_BACKGROUND]).integers(num_classes))
            corrupted = background_flip(true, num_classes, ratio, noise_seed, background_class=b)
        else:
            t = true.astype(np.int32)
            corrupted = Corrupted(t, t.copy(), np.zeros(t.size, bool))
        test_idx = np.arange(len(y_test))
        test_labels = y_test.astype(np.int32)
        if clean_given:
            clean_labels = y_clean.astype(np.int32)
        else:
            clean_labels = (y_train if y_train_true is None else y_train_true)[clean_idx]
            clean_labels = clean_labels.astype(np.int32)
        out_classes, out_num_classes = tuple(range(num_classes)), num_classes

    return Splits(
        train_x=x_train[train_idx],
        train_labels=corrupted.labels,
        train_true_labels=corrupted.true_labels,
        train_is_noisy=corrupted.is_noisy,
        train_source_index=train_idx.astype(np.int64),
        clean_x=x_clean if clean_given else x_train[clean_idx],
        clean_labels=clean_labels,
        clean_source_index=clean_idx.astype(np.int64),
        test_x=x_test[test_idx],
        test_labels=test_labels,
        test_source_index=test_idx.astype(np.int64),
        num_classes=out_num_classes,
        source_classes=out_classes,
        noise=noise,
        ratio=ratio,
        background_class=b,
        seed=seed,
        clean_given=clean_given,
        truth_known=not (noise == "none" or (noise == "given" and y_train_true is None)),
    )


def split_stats(splits: Splits) -> dict:
    """Counts that describe a `Splits` (all computed from its arrays), e.g. for a summary table.

    The counts that need the truth (`num_noisy`, `noise_fraction`, `train_true_per_class`,
    `noisy_per_true_class`) are None when `splits.truth_known` is False: unknown, not zero.
    """
    c = splits.num_classes
    noisy = splits.train_is_noisy
    out = {
        "num_classes": c,
        "image_shape": tuple(splits.train_x.shape[1:]),
        "num_train": int(splits.train_labels.size),
        "num_noisy": int(noisy.sum()),
        "noise_fraction": float(noisy.mean()) if noisy.size else 0.0,
        "train_observed_per_class": np.bincount(splits.train_labels, minlength=c).tolist(),
        "train_true_per_class": np.bincount(splits.train_true_labels, minlength=c).tolist(),
        "noisy_per_true_class": np.bincount(splits.train_true_labels[noisy], minlength=c).tolist(),
        "num_clean": int(splits.clean_labels.size),
        "clean_per_class": np.bincount(splits.clean_labels, minlength=c).tolist(),
        "num_test": int(splits.test_labels.size),
        "test_per_class": np.bincount(splits.test_labels, minlength=c).tolist(),
    }
    if not splits.truth_known:
        out.update(num_noisy=None, noise_fraction=None, train_true_per_class=None,
                   noisy_per_true_class=None)
    return out
