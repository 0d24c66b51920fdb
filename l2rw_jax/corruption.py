"""The splits of one experiment: the clean set, the (corrupted) noisy training set, the test set.

`make_splits` draws the clean set (`subsets.clean_split`), then corrupts the rest by
`noise` (the flips of `l2rw_jax.flips`, labels as given, or the `subsets.imbalance_subset`),
all pure numpy functions of a seed: no TensorFlow, no JAX, so the same seed gives the same split
and the same noise on any machine (Ren et al., ICML 2018, arXiv 1803.09050, §5).

The clean set (`make_splits`) is either drawn from the training data (`clean_per_class` per
class, the paper's setting on benchmarks) or given by the caller (`x_clean, y_clean`: a set they
verified, the setting on real noisy data), then used exactly as given and the whole of
`x_train` is the noisy training set.
"""

from __future__ import annotations

import numbers
from typing import Any, NamedTuple

import numpy as np

from l2rw_jax.flips import Corrupted
from l2rw_jax.flips import asymmetric_flip
from l2rw_jax.flips import background_flip
from l2rw_jax.flips import check_background
from l2rw_jax.flips import check_pair_ratio
from l2rw_jax.flips import check_transition
from l2rw_jax.flips import class_map
from l2rw_jax.flips import pair_flip
from l2rw_jax.flips import transition_flip
from l2rw_jax.flips import uniform_flip
from l2rw_jax.label_checks import check_int
from l2rw_jax.label_checks import check_labels
from l2rw_jax.label_checks import check_ratio
from l2rw_jax.subsets import check_fraction
from l2rw_jax.subsets import clean_split
from l2rw_jax.subsets import imbalance_subset

NOISE_TYPES = (
    "none",
    "given",
    "uniform",
    "background",
    "pair",
    "asymmetric",
    "transition",
    "imbalance",
)
# Noise types whose `ratio` is a fraction of examples flipped.
RATIO_NOISE_TYPES = ("uniform", "background", "pair", "asymmetric")

# Sub-seeds of `make_splits`: `default_rng([seed, stage])`, so that one stage never shifts another.
_STAGE_CLEAN, _STAGE_NOISE, _STAGE_TRAIN_SUBSET, _STAGE_TEST_SUBSET, _STAGE_BACKGROUND = range(5)


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
        check_int("clean_per_class", k, minimum=1)
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
        check_int("num_classes", num_classes, minimum=2)
    ratio = check_ratio(ratio)
    if noise not in RATIO_NOISE_TYPES and ratio != 0.0:
        raise ValueError(
            f"ratio={ratio} only applies to noise {', '.join(RATIO_NOISE_TYPES)}, not "
            f"{noise!r}; leave it at 0."
        )
    if noise == "pair":
        check_pair_ratio(ratio)
    if noise == "asymmetric":
        class_map("cifar10" if noise_map is None else noise_map, num_classes)
    elif noise_map is not None:
        raise ValueError(
            f"noise_map={noise_map!r} only applies to noise 'asymmetric', not {noise!r}."
        )
    if noise == "transition":
        if noise_matrix is None:
            raise ValueError(
                "noise 'transition' needs noise_matrix (a C x C row-stochastic matrix), got None."
            )
        check_transition(noise_matrix, num_classes)
    elif noise_matrix is not None:
        raise ValueError(f"noise_matrix only applies to noise 'transition', not {noise!r}.")
    if not (clean_given is None or isinstance(clean_given, bool)):
        raise ValueError(f"clean_given must be True, False or None, got {clean_given!r}.")
    _check_clean_per_class(clean_per_class, clean_given, noise)
    check_int("seed", seed, minimum=0)
    if background_class is not None:
        if noise != "background":
            raise ValueError(
                f"background_class={background_class!r} only applies to noise "
                f"'background', not {noise!r}."
            )
        if num_classes is None:
            check_int("background_class", background_class, minimum=0)
        else:
            check_background(background_class, num_classes)
    if official_convention and noise != "uniform":
        raise ValueError(
            f"official_convention=True only applies to noise 'uniform', not {noise!r}."
        )
    if noise == "imbalance":
        check_fraction(majority_fraction)
        check_int("num_train", num_train, minimum=1)
        for name, c in (("majority_class", majority_class), ("minority_class", minority_class)):
            check_int(name, c, minimum=0)
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
    y_train = check_labels(y_train, num_classes, "y_train")
    y_test = check_labels(y_test, num_classes, "y_test")
    if y_train_true is not None:
        if noise != "given":
            raise ValueError(
                f"true labels (y_train_true) come only with noise 'given' (the observed labels "
                f"as they are), got noise={noise!r}."
            )
        y_train_true = check_labels(y_train_true, num_classes, "y_train_true")
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
        y_clean = check_labels(y_clean, num_classes, "y_clean")
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
                y_train if y_train_true is None else y_train_true,
                clean_per_class,
                [seed, _STAGE_CLEAN],
                num_classes=num_classes,
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
                true,
                num_classes,
                ratio,
                noise_seed,
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
        out.update(
            num_noisy=None,
            noise_fraction=None,
            train_true_per_class=None,
            noisy_per_true_class=None,
        )
    return out
