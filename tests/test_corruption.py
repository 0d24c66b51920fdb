"""Corruptions, imbalance and clean splits: exact counts, invariants, determinism, bad input."""

import hashlib

import numpy as np
import pytest

from l2rw_jax import corruption
from l2rw_jax import flips
from l2rw_jax import subsets

C = 10


def _balanced_labels(per_class: int, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).permutation(np.repeat(np.arange(C), per_class))


def _id_images(n: int, offset: int) -> np.ndarray:
    """n x 2 x 2 x 1 uint8 images whose pixels spell the id offset + i (base 256)."""
    ids = np.arange(n, dtype=np.int64) + offset
    digits = np.stack([(ids >> (8 * k)) & 255 for k in range(4)], axis=1).astype(np.uint8)
    return digits.reshape(n, 2, 2, 1)


def _ids(images: np.ndarray) -> np.ndarray:
    d = images.reshape(len(images), 4).astype(np.int64)
    return sum(d[:, k] << (8 * k) for k in range(4))


def _digest(*arrays) -> str:
    h = hashlib.sha256()
    for a in arrays:
        h.update(np.ascontiguousarray(a).tobytes())
    return h.hexdigest()[:16]


# ----------------------------------------------------------------------------- uniform flip


@pytest.mark.parametrize(
    "n,ratio,expected",
    [
        (10000, 0.4, 4000),
        (10000, 0.0, 0),
        (10000, 1.0, 10000),
        (7, 0.5, 4),
        (9, 0.5, 5),
        (1000, 0.2345, 235),
        (3, 1 / 3, 1),
    ],
)
def test_uniform_flip_exact_count_and_never_true_label(n, ratio, expected):
    true = np.arange(n) % C
    c = flips.uniform_flip(true, C, ratio, seed=3)
    assert flips.num_chosen(ratio, n) == expected
    assert int(c.is_noisy.sum()) == expected
    np.testing.assert_array_equal(c.true_labels, true)
    np.testing.assert_array_equal(c.is_noisy, c.labels != c.true_labels)
    assert not np.any(c.labels[c.is_noisy] == true[c.is_noisy])
    assert c.labels.dtype == np.int32 and c.true_labels.dtype == np.int32
    assert c.is_noisy.dtype == bool


def test_uniform_flip_every_other_class_receives_flips():
    true = _balanced_labels(1000)
    c = flips.uniform_flip(true, C, 0.4, seed=0)
    pairs = np.zeros((C, C), np.int64)
    np.add.at(pairs, (c.true_labels[c.is_noisy], c.labels[c.is_noisy]), 1)
    assert np.all(np.diag(pairs) == 0)
    assert np.all(pairs[~np.eye(C, dtype=bool)] > 0)
    assert pairs.sum() == 4000


def test_official_convention_draws_from_0_to_c_minus_2_and_may_keep_label():
    true = _balanced_labels(500)
    ours = flips.uniform_flip(true, C, 0.4, seed=5)
    official = flips.uniform_flip(true, C, 0.4, seed=5, official_convention=True)
    chosen = ours.is_noisy  # Same seed -> same chosen rows; ours always changes the label.
    assert chosen.sum() == 2000
    np.testing.assert_array_equal(official.labels[~chosen], true[~chosen])
    assert official.labels[chosen].max() == C - 2  # Class C-1 never produced.
    kept = chosen & (official.labels == true)
    assert kept.sum() > 0  # Some chosen rows keep their true label ...
    np.testing.assert_array_equal(official.is_noisy, chosen & ~kept)  # ... and are not noisy.
    assert official.is_noisy.sum() == 2000 - kept.sum()


# ----------------------------------------------------------------------------- background flip


def test_background_flip_counts_and_class_b_stays_clean():
    true = _balanced_labels(300)
    b = 3
    c = flips.background_flip(true, C, 0.4, seed=7, background_class=b)
    chosen = flips.uniform_flip(true, C, 0.4, seed=7).is_noisy  # Same chosen rows.
    assert chosen.sum() == 1200
    np.testing.assert_array_equal(c.labels[chosen], np.full(1200, b))
    np.testing.assert_array_equal(c.labels[~chosen], true[~chosen])
    np.testing.assert_array_equal(c.is_noisy, chosen & (true != b))
    assert int(c.is_noisy.sum()) == 1200 - int(np.sum(chosen & (true == b)))
    assert not np.any(c.is_noisy[true == b])  # Class b: never noisy, never counted.
    assert np.all(c.labels[c.is_noisy] == b)


def test_background_flip_seeded_class():
    true = _balanced_labels(100)
    a = flips.background_flip(true, C, 0.5, seed=11)
    again = flips.background_flip(true, C, 0.5, seed=11)
    np.testing.assert_array_equal(a.labels, again.labels)
    assert np.unique(a.labels[a.is_noisy]).size == 1  # One background class ...
    backgrounds = set()
    for seed in range(20):
        c = flips.background_flip(true, C, 0.5, seed=seed)
        backgrounds.add(int(c.labels[c.is_noisy][0]))
    assert len(backgrounds) > 1  # ... picked by the seed.


# ----------------------------------------------------------------------------- imbalance


@pytest.mark.parametrize(
    "p,n_nine", [(0.9, 4500), (0.95, 4750), (0.98, 4900), (0.99, 4950), (0.995, 4975)]
)
def test_imbalance_subset_exact_counts(p, n_nine):
    labels = _balanced_labels(6000)
    s = subsets.imbalance_subset(labels, majority_fraction=p, seed=0)
    assert s.classes == (4, 9)
    assert s.index.size == 5000 and np.unique(s.index).size == 5000
    assert np.all(np.diff(s.index) > 0)
    np.testing.assert_array_equal(
        np.bincount(labels[s.index], minlength=C)[[4, 9]], [5000 - n_nine, n_nine]
    )
    np.testing.assert_array_equal(s.labels, (labels[s.index] == 9).astype(np.int32))


def test_imbalance_balanced_is_half_half():
    labels = _balanced_labels(50)
    s = subsets.imbalance_subset(labels, majority_fraction=0.5, seed=1, num_examples=100)
    np.testing.assert_array_equal(np.bincount(s.labels), [50, 50])


@pytest.mark.parametrize("p", [0.0, 1.0, 1.5, -0.1, True])
def test_imbalance_fraction_outside_open_interval_raises(p):
    with pytest.raises(ValueError, match=rf"majority_fraction.*\(0, 1\).*{p!r}"):
        subsets.imbalance_subset(_balanced_labels(10), majority_fraction=p, seed=0)


def test_imbalance_not_enough_examples_raises():
    with pytest.raises(ValueError, match="needs 4500 examples of class 9, but only 100"):
        subsets.imbalance_subset(_balanced_labels(100), majority_fraction=0.9, seed=0)


# ----------------------------------------------------------------------------- clean split


def test_clean_split_balanced_disjoint_and_complete():
    labels = _balanced_labels(37)
    clean, rest = subsets.clean_split(labels, 10, seed=2)
    np.testing.assert_array_equal(np.bincount(labels[clean], minlength=C), np.full(C, 10))
    assert np.intersect1d(clean, rest).size == 0
    np.testing.assert_array_equal(np.sort(np.concatenate([clean, rest])), np.arange(labels.size))


def test_clean_split_k_larger_than_a_class_raises():
    labels = np.concatenate([np.zeros(5, int), np.ones(3, int)])
    with pytest.raises(ValueError, match=r"k_per_class=4 is larger than class 1 has \(3"):
        subsets.clean_split(labels, 4, seed=0)
    with pytest.raises(ValueError, match=r"k_per_class.*>= 1.*got 0"):
        subsets.clean_split(labels, 0, seed=0)
    with pytest.raises(ValueError, match="class 2 has"):  # A class with no example at all.
        subsets.clean_split(labels, 1, seed=0, num_classes=3)


# ----------------------------------------------------------------------------- make_splits


@pytest.fixture(scope="module")
def source():
    """60000 train rows (6000 per class) and 10000 test rows, images spelling their row id."""
    y_train = _balanced_labels(6000, seed=1)
    y_test = _balanced_labels(1000, seed=2)
    y_test[np.flatnonzero(y_test == 4)[:30]] = 0  # Make the 4-vs-9 test set unbalanced.
    return _id_images(60000, 0), y_train, _id_images(10000, 1_000_000), y_test


def _splits(source, **kw):
    x_tr, y_tr, x_te, y_te = source
    kw = {"num_classes": C, "clean_per_class": 100, "seed": 0, **kw}
    return corruption.make_splits(x_tr, y_tr, x_te, y_te, **kw)


def _check_clean_and_disjoint(s, source, clean_per_class, num_classes):
    x_tr, y_tr, x_te, _ = source
    np.testing.assert_array_equal(
        np.bincount(s.clean_labels, minlength=num_classes), np.full(num_classes, clean_per_class)
    )
    clean_ids, train_ids, test_ids = _ids(s.clean_x), _ids(s.train_x), _ids(s.test_x)
    assert np.intersect1d(clean_ids, train_ids).size == 0
    assert np.intersect1d(clean_ids, test_ids).size == 0
    assert np.intersect1d(train_ids, test_ids).size == 0
    np.testing.assert_array_equal(clean_ids, s.clean_source_index)
    np.testing.assert_array_equal(train_ids, s.train_source_index)
    np.testing.assert_array_equal(test_ids, s.test_source_index + 1_000_000)
    source_labels = np.asarray(s.source_classes)
    # Never corrupted: clean labels are the (relabelled) source labels of those rows.
    np.testing.assert_array_equal(source_labels[s.clean_labels], y_tr[s.clean_source_index])
    np.testing.assert_array_equal(source_labels[s.train_true_labels], y_tr[s.train_source_index])


def test_make_splits_uniform(source):
    s = _splits(source, noise="uniform", ratio=0.4)
    _check_clean_and_disjoint(s, source, 100, C)
    assert len(s.train_labels) == 59000 and s.train_is_noisy.sum() == 23600
    np.testing.assert_array_equal(s.train_is_noisy, s.train_labels != s.train_true_labels)
    assert len(s.test_labels) == 10000
    np.testing.assert_array_equal(s.test_labels, source[3])
    stats = corruption.split_stats(s)
    assert stats["num_noisy"] == 23600 and stats["clean_per_class"] == [100] * C
    assert stats["num_train"] == 59000 and stats["num_test"] == 10000


def test_make_splits_background(source):
    s = _splits(source, noise="background", ratio=0.4, clean_per_class=10)
    _check_clean_and_disjoint(s, source, 10, C)
    b = s.background_class
    assert 0 <= b < C
    true = s.train_true_labels
    assert len(true) == 59900
    # make_splits corrupts with sub-seed [seed, 1]; uniform_flip with it marks the chosen rows.
    chosen = flips.uniform_flip(true, C, 0.4, [0, 1]).is_noisy
    assert chosen.sum() == 23960
    np.testing.assert_array_equal(s.train_labels[chosen], np.full(23960, b))
    np.testing.assert_array_equal(s.train_labels[~chosen], true[~chosen])
    np.testing.assert_array_equal(s.train_is_noisy, chosen & (true != b))
    assert s.train_is_noisy.sum() == 23960 - np.sum(chosen & (true == b))
    assert not np.any(s.train_is_noisy[true == b])
    given = _splits(source, noise="background", ratio=0.4, clean_per_class=10, background_class=7)
    assert given.background_class == 7 and np.all(given.train_labels[given.train_is_noisy] == 7)


@pytest.mark.parametrize("p,n_nine", [(0.9, 4500), (0.995, 4975)])
def test_make_splits_imbalance(source, p, n_nine):
    s = _splits(source, noise="imbalance", majority_fraction=p, clean_per_class=5)
    _check_clean_and_disjoint(s, source, 5, 2)
    assert s.num_classes == 2 and s.source_classes == (4, 9)
    np.testing.assert_array_equal(np.bincount(s.train_labels, minlength=2), [5000 - n_nine, n_nine])
    assert not s.train_is_noisy.any()
    y_te = source[3]
    m = min(np.sum(y_te == 4), np.sum(y_te == 9))
    assert m < max(np.sum(y_te == 4), np.sum(y_te == 9))  # The source test set is unbalanced ...
    np.testing.assert_array_equal(np.bincount(s.test_labels), [m, m])  # ... ours is balanced.
    np.testing.assert_array_equal(np.asarray((4, 9))[s.test_labels], y_te[s.test_source_index])


def test_same_seed_same_splits_different_seed_different(source):
    a = _splits(source, noise="uniform", ratio=0.4)
    b = _splits(source, noise="uniform", ratio=0.4)
    c = _splits(source, noise="uniform", ratio=0.4, seed=1)
    for name in ("train_labels", "train_source_index", "clean_source_index", "train_is_noisy"):
        np.testing.assert_array_equal(getattr(a, name), getattr(b, name))
    assert not np.array_equal(a.clean_source_index, c.clean_source_index)
    assert not np.array_equal(a.train_is_noisy, c.train_is_noisy)


@pytest.fixture(scope="module")
def given_clean():
    """A trusted clean set of 37 rows, not in the training data, labels unsorted and unbalanced
    (class 9 absent): images spell ids 2_000_000 + j."""
    y = np.random.default_rng(3).integers(0, C - 1, 37)
    return _id_images(37, 2_000_000), y


@pytest.mark.parametrize("clean_per_class", [None, 0])
def test_make_splits_given_clean_set_is_used_as_given(source, given_clean, clean_per_class):
    x_tr, y_tr, x_te, y_te = source
    x_cl, y_cl = given_clean
    s = _splits(
        source,
        noise="uniform",
        ratio=0.4,
        clean_per_class=clean_per_class,
        x_clean=x_cl,
        y_clean=y_cl,
    )
    assert s.clean_given
    # Exactly those rows, in their order, labels untouched.
    np.testing.assert_array_equal(s.clean_x, x_cl)
    np.testing.assert_array_equal(s.clean_labels, y_cl)
    np.testing.assert_array_equal(s.clean_source_index, np.arange(37))
    # Every training row is in the training set, in order; source_index maps back to it.
    np.testing.assert_array_equal(s.train_source_index, np.arange(60000))
    np.testing.assert_array_equal(_ids(s.train_x), s.train_source_index)
    np.testing.assert_array_equal(s.train_true_labels, y_tr[s.train_source_index])
    # The known flips: uniform_flip of all of y_train with make_splits's noise sub-seed [0, 1].
    known = flips.uniform_flip(y_tr, C, 0.4, [0, 1])
    np.testing.assert_array_equal(s.train_labels, known.labels)
    np.testing.assert_array_equal(s.train_is_noisy, known.is_noisy)
    assert s.train_is_noisy.sum() == 24000
    np.testing.assert_array_equal(s.train_is_noisy, s.train_labels != y_tr)
    np.testing.assert_array_equal(s.test_x, x_te)
    np.testing.assert_array_equal(s.test_labels, y_te)
    stats = corruption.split_stats(s)
    assert stats["num_clean"] == 37 and stats["num_train"] == 60000


def test_make_splits_given_clean_set_noise_none_keeps_labels_as_they_came(source, given_clean):
    x_tr, y_tr, _, _ = source
    s = _splits(source, clean_per_class=None, x_clean=given_clean[0], y_clean=given_clean[1])
    np.testing.assert_array_equal(s.train_labels, y_tr)
    np.testing.assert_array_equal(s.train_true_labels, y_tr)
    assert not s.train_is_noisy.any() and s.train_labels.dtype == np.int32
    np.testing.assert_array_equal(_ids(s.train_x), np.arange(60000))
    np.testing.assert_array_equal(_ids(s.clean_x), 2_000_000 + np.arange(37))
    b = _splits(
        source,
        noise="background",
        ratio=0.4,
        background_class=2,
        clean_per_class=0,
        x_clean=given_clean[0],
        y_clean=given_clean[1],
    )
    chosen = flips.uniform_flip(y_tr, C, 0.4, [0, 1]).is_noisy
    np.testing.assert_array_equal(b.train_labels, np.where(chosen, 2, y_tr))


@pytest.mark.parametrize(
    "kw,match",
    [
        (
            {"clean_per_class": 100},
            r"clean_per_class=100 would draw a clean set from the training data, but a clean "
            r"set was given \(x_clean, y_clean\); set clean_per_class to 0 \(or None\)",
        ),
        (
            {"noise": "imbalance", "majority_fraction": 0.9},
            r"noise='imbalance' draws its clean set .* cannot be used with it",
        ),
        (
            {"y_clean": None},
            r"give both x_clean and y_clean or neither, got x_clean given and "
            r"y_clean None",
        ),
        ({"y_clean": np.full(37, 10)}, r"y_clean must lie in \[0, 10\).*\[10\]"),
        ({"y_clean": np.zeros(36, int)}, r"x_clean 37 vs y_clean 36"),
        (
            {"x_clean": np.zeros((37, 2, 3, 1), np.uint8)},
            r"clean and train images differ in shape: \(2, 3, 1\) vs \(2, 2, 1\)",
        ),
        ({"x_clean": np.zeros((37, 2, 2, 1))}, r"x_clean must be a uint8 .* float64"),
        (
            {"x_clean": np.zeros((0, 2, 2, 1), np.uint8), "y_clean": np.zeros(0, int)},
            r"at least one: x_clean 0 vs y_clean 0",
        ),
    ],
)
def test_make_splits_given_clean_set_conflicts_raise(source, given_clean, kw, match):
    kw = {"clean_per_class": None, "x_clean": given_clean[0], "y_clean": given_clean[1], **kw}
    with pytest.raises(ValueError, match=match):
        _splits(source, **kw)


def test_no_clean_set_at_all_raises(source):
    for k in (0, None):
        with pytest.raises(
            ValueError,
            match=rf"clean_per_class must be an integer >= 1, got "
            rf"{k} \(0 or None only with a given clean set",
        ):
            _splits(source, clean_per_class=k)


def test_check_split_args_before_the_data_is_known():
    """clean_given=None (data not loaded yet): 0/None and >= 1 both pass; the rest still fails."""
    kw = {"num_classes": None, "noise": "none", "ratio": 0.0, "seed": 0, "clean_given": None}
    for k in (None, 0, 5):
        corruption.check_split_args(clean_per_class=k, **kw)
    with pytest.raises(ValueError, match=r"clean_per_class must be an integer >= 1, got -1"):
        corruption.check_split_args(clean_per_class=-1, **kw)
    with pytest.raises(ValueError, match=r"got 0 \(0 or None only .*not for noise 'imbalance'"):
        corruption.check_split_args(
            clean_per_class=0, **{**kw, "noise": "imbalance", "majority_fraction": 0.9}
        )
    with pytest.raises(ValueError, match=r"clean_given must be True, False or None, got 1"):
        corruption.check_split_args(clean_per_class=1, **{**kw, "clean_given": 1})


def test_pinned_outputs_do_not_change_across_runs():
    """Regression pins: these digests were recorded from this code; a change in numpy's streams
    or in our sampling would change the splits of every published run, so it must be noticed."""
    true = np.arange(60) % 6
    u = flips.uniform_flip(true, 6, 0.4, seed=123)
    bg = flips.background_flip(true, 6, 0.4, seed=123)
    clean, rest = subsets.clean_split(true, 3, seed=123)
    imb = subsets.imbalance_subset(
        np.arange(200) % 10, majority_fraction=0.9, seed=123, num_examples=20
    )
    assert _digest(u.labels, bg.labels, clean, rest, imb.index) == PINNED_DIGEST


PINNED_DIGEST = "c04762c963032be4"


# ----------------------------------------------------------------------------- bad input


@pytest.mark.parametrize(
    "kw,match",
    [
        ({"noise": "uniform", "ratio": 1.2}, r"ratio must be a number in \[0, 1\], got 1.2"),
        ({"noise": "uniform", "ratio": -0.1}, r"ratio.*got -0.1"),
        ({"noise": "none", "ratio": 0.3}, r"ratio=0.3 only applies"),
        ({"noise": "salt"}, r"noise must be one of .*'salt'"),
        (
            {"clean_per_class": 6001},
            r"k_per_class=6001 is larger than class 0 has \(6000 examples\); allowed: "
            r"1 <= k_per_class <= 6000",
        ),
        ({"clean_per_class": 0}, r"clean_per_class must be an integer >= 1, got 0"),
        ({"seed": -1}, r"seed must be an integer >= 0, got -1"),
        ({"noise": "imbalance", "majority_fraction": 1.0}, r"majority_fraction.*\(0, 1\), got 1.0"),
        ({"noise": "imbalance", "majority_fraction": 0}, r"majority_fraction.*got 0"),
        ({"noise": "imbalance"}, r"majority_fraction.*got None"),
        (
            {"noise": "uniform", "ratio": 0.1, "majority_fraction": 0.9},
            r"majority_fraction=0.9 only",
        ),
        (
            {"noise": "background", "ratio": 0.1, "background_class": 10},
            r"background_class must be an integer in \[0, 10\), got 10",
        ),
        ({"noise": "uniform", "ratio": 0.1, "background_class": 1}, r"background_class=1 only"),
        (
            {"noise": "background", "ratio": 0.1, "official_convention": True},
            r"official_convention",
        ),
        (
            {"noise": "imbalance", "majority_fraction": 0.5, "num_train": 20000},
            r"needs 10\d\d\d training examples of class \d, only 6000",
        ),
        (
            {"noise": "imbalance", "majority_fraction": 0.5, "majority_class": 12},
            r"majority_class must be in \[0, 10\).*12",
        ),
        ({"num_classes": 5}, r"y_train must lie in \[0, 5\)"),
    ],
)
def test_make_splits_bad_input_raises(source, kw, match):
    with pytest.raises(ValueError, match=match):
        _splits(source, **kw)


def test_make_splits_bad_arrays_raise(source):
    x_tr, y_tr, x_te, y_te = source
    kw = {"num_classes": C, "clean_per_class": 1, "seed": 0}
    with pytest.raises(ValueError, match=r"x_train must be a uint8 .* float32"):
        corruption.make_splits(x_tr.astype(np.float32), y_tr, x_te, y_te, **kw)
    with pytest.raises(ValueError, match=r"same length: x_train 60000 vs y_train 59999"):
        corruption.make_splits(x_tr, y_tr[1:], x_te, y_te, **kw)
    with pytest.raises(ValueError, match=r"y_test must lie in \[0, 10\).*\[-1\]"):
        corruption.make_splits(x_tr, y_tr, x_te, np.where(y_te == 0, -1, y_te), **kw)
    with pytest.raises(ValueError, match=r"y_train must be a 1-D integer array.*float"):
        corruption.make_splits(x_tr, y_tr.astype(float), x_te, y_te, **kw)


@pytest.mark.parametrize("fn", [flips.uniform_flip, flips.background_flip])
@pytest.mark.parametrize("ratio", [1.01, -0.5, float("nan"), "0.4"])
def test_flip_ratio_outside_unit_interval_raises(fn, ratio):
    with pytest.raises(ValueError, match=r"ratio must be a number in \[0, 1\]"):
        fn(np.arange(10) % 5, 5, ratio, 0)


def test_flip_labels_out_of_range_raise():
    with pytest.raises(ValueError, match=r"labels must lie in \[0, 5\).*\[7\]"):
        flips.uniform_flip(np.array([0, 1, 7]), 5, 0.5, 0)


# ----------------------------------------------------------------------------- pair, asymmetric,
# transition, labels as given


def _uneven_labels(seed: int = 0) -> np.ndarray:
    """Classes of different sizes (7, 13, 20, ..., 7 + 13 c, shuffled) so per-class counts
    matter."""
    sizes = 7 + 13 * np.arange(C)
    return np.random.default_rng(seed).permutation(np.repeat(np.arange(C), sizes))


@pytest.mark.parametrize("ratio", [0.0, 0.2, 0.45, 0.5, 0.999])
def test_pair_flip_exact_per_class_counts_against_brute_force(ratio):
    true = _uneven_labels()
    c = flips.pair_flip(true, C, ratio, seed=5)
    np.testing.assert_array_equal(c.true_labels, true)
    np.testing.assert_array_equal(c.is_noisy, c.labels != true)
    for k in range(C):
        n_k = int(np.sum(true == k))
        # Brute force of round half up: the smallest integer m with |m - r n| minimal, ties up.
        want = min(range(n_k + 1), key=lambda m: (abs(m - ratio * n_k), -m))
        assert int(np.sum(c.is_noisy & (true == k))) == want
        # Every flipped example of class k reads k + 1 mod C; never its own class.
        assert set(c.labels[c.is_noisy & (true == k)].tolist()) <= {(k + 1) % C}
    assert not np.any(c.labels[c.is_noisy] == true[c.is_noisy])


def test_asymmetric_flip_exact_counts_only_mapped_classes_and_the_presets():
    true = _uneven_labels(1)
    c = flips.asymmetric_flip(true, C, 0.4, seed=2, noise_map="cifar10")
    assert flips.class_map("cifar10") == {9: 1, 2: 0, 4: 7, 3: 5, 5: 3}
    for k in range(C):
        n_k = int(np.sum(true == k))
        flipped = c.is_noisy & (true == k)
        if k in flips.NOISE_MAPS["cifar10"]:
            assert int(flipped.sum()) == int(np.floor(0.4 * n_k + 0.5))
            assert set(c.labels[flipped].tolist()) == {flips.NOISE_MAPS["cifar10"][k]}
        else:
            assert not flipped.any()
    # A map given as a mapping (string keys, as a JSON config stores them) or a string.
    m = flips.asymmetric_flip(
        true, C, 0.4, seed=2, noise_map={"9": 1, "2": 0, "4": 7, "3": 5, "5": 3}
    )
    np.testing.assert_array_equal(m.labels, c.labels)
    s = flips.asymmetric_flip(true, C, 0.4, seed=2, noise_map="9:1, 2:0,4:7,3:5,5:3")
    np.testing.assert_array_equal(s.labels, c.labels)
    assert flips.class_map("mnist") == {2: 7, 3: 8, 5: 6, 6: 5, 7: 1}


def test_transition_flip_empirical_matrix_within_three_standard_errors():
    t = np.array(
        [
            [0.7, 0.2, 0.1, 0.0],
            [0.0, 0.9, 0.05, 0.05],
            [0.25, 0.25, 0.25, 0.25],
            [0.0, 0.0, 0.0, 1.0],
        ]
    )
    true = np.arange(100_000) % 4
    c = flips.transition_flip(true, t, seed=11)
    for i in range(4):
        rows = c.labels[true == i]
        emp = np.bincount(rows, minlength=4) / rows.size
        se = np.sqrt(t[i] * (1 - t[i]) / rows.size)
        assert np.all(np.abs(emp - t[i]) <= 3 * se + 1e-12), (i, emp, t[i])
    assert not np.any(c.labels[true == 3] != 3)  # A row with all its mass on the diagonal.
    np.testing.assert_array_equal(c.is_noisy, c.labels != true)


def test_new_flips_same_seed_same_labels_pinned():
    y = np.arange(20) % 4
    assert flips.pair_flip(y, 4, 0.5, seed=7).labels.tolist() == [
        1,
        2,
        2,
        0,
        0,
        2,
        2,
        3,
        1,
        1,
        3,
        0,
        0,
        1,
        3,
        0,
        1,
        2,
        3,
        3,
    ]
    assert flips.asymmetric_flip(np.arange(20) % 10, 10, 0.5, seed=7).labels.tolist() == [
        0,
        1,
        0,
        5,
        7,
        5,
        6,
        7,
        8,
        9,
        0,
        1,
        2,
        3,
        4,
        3,
        6,
        7,
        8,
        1,
    ]
    t = [[0.8, 0.2, 0, 0], [0, 0.7, 0.3, 0], [0.1, 0.1, 0.7, 0.1], [0, 0, 0, 1]]
    assert flips.transition_flip(y, t, seed=7).labels.tolist() == [
        0,
        2,
        2,
        3,
        0,
        2,
        0,
        3,
        0,
        1,
        2,
        3,
        0,
        1,
        2,
        3,
        1,
        2,
        2,
        3,
    ]
    for fn in (lambda s: flips.pair_flip(y, 4, 0.3, s), lambda s: flips.transition_flip(y, t, s)):
        np.testing.assert_array_equal(fn(3).labels, fn(3).labels)


@pytest.mark.parametrize(
    "call,match",
    [
        (lambda: flips.pair_flip(np.arange(10) % 5, 5, 1.0, 0), r"ratio .* \[0, 1\) .*1\.0"),
        (lambda: flips.pair_flip(np.arange(10) % 5, 5, -0.1, 0), r"\[0, 1\)"),
        (
            lambda: flips.asymmetric_flip(np.arange(10) % 5, 5, 0.2, 0, noise_map={3: 7}),
            r"names class 7, outside \[0, 5\)",
        ),
        (
            lambda: flips.asymmetric_flip(np.arange(10) % 5, 5, 0.2, 0, noise_map={2: 2}),
            r"maps class 2 to itself",
        ),
        (lambda: flips.class_map("cifar100"), r"preset \(cifar10, mnist\)"),
        (lambda: flips.class_map("1:x"), r"'1': 'x' is not a pair of integer"),
        (lambda: flips.check_transition(np.eye(3), 4), r"4 x 4 .*got shape \(3, 3\)"),
        (lambda: flips.check_transition(np.ones(3)), r"C x C .*got shape \(3,\)"),
        (lambda: flips.check_transition([[1.2, -0.2], [0, 1]]), r"T\[0, 1\] = -0\.2"),
        (lambda: flips.check_transition([[0.5, 0.4], [0, 1]]), r"row 0 sums to 0\.9"),
        (
            lambda: flips.check_transition([[1, 0], [0, 0]]),
            r"row 1 sums to 0\.0 \(put T\[1, 1\] = 1",
        ),
    ],
)
def test_new_flips_bad_input_one_line_errors(call, match):
    with pytest.raises(ValueError, match=match) as e:
        call()
    assert "\n" not in str(e.value)


@pytest.mark.parametrize(
    "noise,kw",
    [
        ("pair", dict(ratio=0.45)),
        ("asymmetric", dict(ratio=0.4, noise_map="cifar10")),
        ("transition", dict(noise_matrix=np.full((C, C), 1 / C))),
    ],
)
def test_make_splits_new_noise_clean_set_balanced_never_corrupted(noise, kw):
    y = _balanced_labels(30)
    x = _id_images(len(y), 0)
    s = corruption.make_splits(
        x, y, x[:10], y[:10], num_classes=C, noise=noise, clean_per_class=3, seed=4, **kw
    )
    assert np.bincount(s.clean_labels, minlength=C).tolist() == [3] * C
    np.testing.assert_array_equal(s.clean_labels, y[_ids(s.clean_x)])  # Never corrupted.
    np.testing.assert_array_equal(s.train_true_labels, y[s.train_source_index])
    assert s.truth_known and s.train_is_noisy.any()
    assert not np.intersect1d(s.clean_source_index, s.train_source_index).size


def test_hyper_validation_is_corrupted_like_the_training_set():
    from l2rw_jax import members

    y = _balanced_labels(30)
    x = _id_images(len(y), 0)
    s = corruption.make_splits(
        x, y, x[:10], y[:10], num_classes=C, noise="pair", ratio=0.45, clean_per_class=3, seed=4
    )
    train, hv = members.hold_out(s, 60, seed=4)
    # The held-out rows keep their observed (pair-flipped) labels: noisy at the same rate.
    rows = np.searchsorted(s.train_source_index, hv.test_source_index)
    np.testing.assert_array_equal(hv.test_labels, s.train_labels[rows])
    flipped = hv.test_labels != y[hv.test_source_index]
    assert flipped.any()
    np.testing.assert_array_equal(
        hv.test_labels[flipped], (y[hv.test_source_index][flipped] + 1) % C
    )


def test_make_splits_given_labels_with_truth():
    y_true = _balanced_labels(30)
    y_obs = y_true.copy()
    y_obs[::4] = (y_obs[::4] + 3) % C
    x = _id_images(len(y_true), 0)
    s = corruption.make_splits(
        x,
        y_obs,
        x[:10],
        y_true[:10],
        num_classes=C,
        noise="given",
        clean_per_class=2,
        seed=1,
        y_train_true=y_true,
    )
    assert s.truth_known
    np.testing.assert_array_equal(s.train_labels, y_obs[s.train_source_index])
    np.testing.assert_array_equal(s.train_true_labels, y_true[s.train_source_index])
    np.testing.assert_array_equal(s.train_is_noisy, s.train_labels != s.train_true_labels)
    # The clean set is drawn (class-balanced) by the truth and carries it.
    np.testing.assert_array_equal(s.clean_labels, y_true[s.clean_source_index])
    assert np.bincount(s.clean_labels, minlength=C).tolist() == [2] * C
    # Without the truth: labels as given, the truth unknown.
    u = corruption.make_splits(
        x, y_obs, x[:10], y_true[:10], num_classes=C, noise="given", clean_per_class=2, seed=1
    )
    assert not u.truth_known and not u.train_is_noisy.any()
    np.testing.assert_array_equal(u.train_labels, y_obs[u.train_source_index])
    # The counts that need the truth: known with it, absent (None, not 0) without.
    assert corruption.split_stats(s)["num_noisy"] == int(s.train_is_noisy.sum()) > 0
    stats = corruption.split_stats(u)
    assert stats["num_noisy"] is None and stats["noisy_per_true_class"] is None
    assert stats["num_train"] == len(u.train_labels)


@pytest.mark.parametrize(
    "kw,match",
    [
        (
            dict(noise="given", y_train_true=np.zeros(5, int)),
            r"y_train_true has 5 labels, y_train 300",
        ),
        (dict(noise="given", y_train_true=np.full(300, C)), r"y_train_true must lie in \[0, 10\)"),
        (
            dict(noise="uniform", ratio=0.2, y_train_true=np.zeros(300, int)),
            r"only with noise 'given'.*'uniform'",
        ),
        (dict(noise="transition", noise_matrix=np.eye(3)), r"10 x 10 .*\(3, 3\)"),
        (dict(noise="transition"), r"needs noise_matrix"),
        (dict(noise="pair", ratio=1.0), r"\[0, 1\) for noise 'pair'"),
        (dict(noise="asymmetric", ratio=0.2, noise_map={1: 10}), r"class 10, outside \[0, 10\)"),
        (dict(noise="uniform", ratio=0.2, noise_map="cifar10"), r"only applies to noise 'asymm"),
        (dict(noise="given", ratio=0.2), r"ratio=0.2 only applies"),
    ],
)
def test_make_splits_new_noise_bad_input(kw, match):
    y = _balanced_labels(30)
    x = _id_images(len(y), 0)
    with pytest.raises(ValueError, match=match) as e:
        corruption.make_splits(x, y, x[:10], y[:10], num_classes=C, clean_per_class=2, seed=0, **kw)
    assert "\n" not in str(e.value)
