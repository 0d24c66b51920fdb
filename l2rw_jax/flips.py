"""The synthetic label flips: pure numpy functions of a seed (no TensorFlow, no JAX).

Uniform, background, pair, asymmetric (a class map) and transition-matrix noise (Ren et al.,
ICML 2018, arXiv 1803.09050, §5, and the works each docstring names; each function's docstring
is its definition). `corruption.make_splits` applies them to the noisy training set.

Counting convention (all flips but `transition_flip`): with N examples and ratio r, *exactly*
`n = floor(r * N + 1/2)` examples are chosen (round half up, computed in float64), uniformly
without replacement: the first n rows of `rng.permutation(N)`. `uniform_flip` and
`background_flip` draw this chosen set first from the same generator, so for the same
(labels, ratio, seed) they choose the same examples.

Labels are returned as int32; `is_noisy[i]` is True exactly where the observed label differs
from the true one.
"""

from __future__ import annotations

import numbers
from typing import Any, NamedTuple

import numpy as np

from l2rw_jax.label_checks import check_int
from l2rw_jax.label_checks import check_labels
from l2rw_jax.label_checks import check_ratio
from l2rw_jax.label_checks import check_seed

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


class Corrupted(NamedTuple):
    """A corrupted label set: observed `labels`, `true_labels`, and `is_noisy = labels != true`."""

    labels: np.ndarray  # int32 N, observed (maybe noisy)
    true_labels: np.ndarray  # int32 N
    is_noisy: np.ndarray  # bool N


def num_chosen(ratio: float, n: int) -> int:
    """The number of examples a corruption of ratio r over n examples picks: floor(r n + 1/2)."""
    return int(np.floor(check_ratio(ratio) * n + 0.5))


def _choose(rng: np.random.Generator, n: int, ratio: float) -> np.ndarray:
    return rng.permutation(n)[: num_chosen(ratio, n)]


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
    num_classes = check_int("num_classes", num_classes, minimum=2)
    true = check_labels(labels, num_classes).astype(np.int32)
    ratio = check_ratio(ratio)
    rng = np.random.default_rng(check_seed(seed))
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
    num_classes = check_int("num_classes", num_classes, minimum=2)
    true = check_labels(labels, num_classes).astype(np.int32)
    ratio = check_ratio(ratio)
    if background_class is not None:
        check_background(background_class, num_classes)
    rng = np.random.default_rng(check_seed(seed))
    chosen = _choose(rng, true.size, ratio)
    b = int(rng.integers(num_classes)) if background_class is None else int(background_class)
    observed = true.copy()
    observed[chosen] = b
    return Corrupted(observed, true, observed != true)


def check_background(background_class: Any, num_classes: int) -> int:
    """`background_class` as an int, checked: an integer in [0, num_classes)."""
    if (
        isinstance(background_class, bool)
        or not isinstance(background_class, numbers.Integral)
        or not 0 <= background_class < num_classes
    ):
        raise ValueError(
            f"background_class must be an integer in [0, {num_classes}), got {background_class!r}."
        )
    return int(background_class)


def check_pair_ratio(ratio: Any) -> float:
    """`ratio` of `pair_flip` as a float, checked: a number in [0, 1)."""
    if (
        isinstance(ratio, bool)
        or not isinstance(ratio, numbers.Real)
        or not 0.0 <= float(ratio) < 1.0
    ):
        raise ValueError(f"ratio must be a number in [0, 1) for noise 'pair', got {ratio!r}.")
    return float(ratio)


def _flip_within_classes(true: np.ndarray, targets: dict, ratio: float, seed) -> Corrupted:
    """For each source class c of `targets` (ascending): exactly `num_chosen(ratio, n_c)` of its
    rows (first of `rng.permutation(n_c)`, one generator for all classes) get `targets[c]`."""
    rng = np.random.default_rng(check_seed(seed))
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
    num_classes = check_int("num_classes", num_classes, minimum=2)
    true = check_labels(labels, num_classes).astype(np.int32)
    ratio = check_pair_ratio(ratio)
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
                raise ValueError(f"noise_map {dict(items())!r} names class {c}, outside [0, {hi}).")
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
    num_classes = check_int("num_classes", num_classes, minimum=2)
    true = check_labels(labels, num_classes).astype(np.int32)
    ratio = check_ratio(ratio)
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
    if (
        t.ndim != 2
        or t.shape[0] != t.shape[1]
        or t.shape[0] < 2
        or (num_classes is not None and t.shape[0] != num_classes)
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
    true = check_labels(labels, num_classes).astype(np.int32)
    u = np.random.default_rng(check_seed(seed)).random(true.size)
    cdf = np.cumsum(t, axis=1)
    observed = np.sum(cdf[true] <= u[:, None], axis=1)
    # Rounding in the cumulative sum: u close to 1 may pass the last entry; keep it in range,
    # on the last class with mass.
    last = num_classes - 1 - np.argmax(t[:, ::-1] > 0, axis=1)
    observed = np.minimum(observed, last[true]).astype(np.int32)
    return Corrupted(observed, true, observed != true)
