"""Sources: the embedded digits builder, npz files, tfds catalog (mocked) and its fail-fast path."""

import hashlib
import os

import numpy as np
import pytest
import tensorflow_datasets as tfds
from sklearn.datasets import load_digits

from l2rw_jax import datasets
from l2rw_jax import digits_builder


@pytest.fixture(scope="module")
def digits_dir(tmp_path_factory):
    return str(tmp_path_factory.mktemp("tfds"))


@pytest.fixture(scope="module")
def digits(digits_dir):
    return datasets.load_arrays("digits", data_dir=digits_dir)


def test_digits_builds_offline_into_data_dir_and_matches_sklearn(digits, digits_dir):
    assert os.path.isfile(os.path.join(digits_dir, "digits", "1.0.0", "dataset_info.json"))
    assert digits.x_train.shape == (1437, 8, 8, 1) and digits.x_test.shape == (360, 8, 8, 1)
    assert digits.x_train.dtype == np.uint8 and digits.y_train.dtype == np.int32
    assert digits.num_classes == 10 and digits.name == "digits"
    np.testing.assert_array_equal(np.bincount(digits.y_test), np.full(10, 36))
    # The real images: sklearn's 0..16 pixels as (v * 255 + 8) // 16, rows of the fixed split.
    bunch = load_digits()
    train, test = digits_builder.digits_split_indices(bunch.target)
    assert train.size == 1437 and np.intersect1d(train, test).size == 0
    ref = ((bunch.images.astype(np.int64) * 255 + 8) // 16).astype(np.uint8)[..., None]
    np.testing.assert_array_equal(digits.x_train, ref[train])
    np.testing.assert_array_equal(digits.x_test, ref[test])
    np.testing.assert_array_equal(digits.y_train, bunch.target[train])
    np.testing.assert_array_equal(digits.y_test, bunch.target[test])
    assert digits.x_train.max() == 255 and digits.x_train.min() == 0


def test_digits_second_load_reads_the_prepared_copy(digits, digits_dir):
    prepared = digits_builder.Digits(data_dir=digits_dir)
    assert prepared.is_prepared()
    again = datasets.load_arrays("digits", data_dir=digits_dir)
    for a, b in zip(again[:4], digits[:4]):
        np.testing.assert_array_equal(a, b)


def test_digits_split_is_pinned():
    """The split is part of dataset version 1.0.0: these rows must never move."""
    train, test = digits_builder.digits_split_indices(load_digits().target)
    assert test[:8].tolist() == [5, 9, 12, 14, 16, 17, 19, 23]
    assert hashlib.sha256(test.astype(np.int64).tobytes()).hexdigest()[:16] == "7a50592c91659dd6"


# ----------------------------------------------------------------------------- npz


def _write_npz(path, **overrides):
    rng = np.random.default_rng(0)
    arrays = {
        "x_train": rng.integers(0, 256, (12, 5, 6), dtype=np.uint8),
        "y_train": np.arange(12) % 3,
        "x_test": rng.integers(0, 256, (4, 5, 6), dtype=np.uint8),
        "y_test": np.array([0, 1, 2, 1]),
    }
    arrays.update(overrides)
    arrays = {k: v for k, v in arrays.items() if v is not None}
    np.savez(path, **arrays)
    return f"npz:{path}"


def test_npz_grey_gets_a_channel_axis(tmp_path):
    name = _write_npz(tmp_path / "a.npz")
    a = datasets.load_arrays(name)
    assert a.x_train.shape == (12, 5, 6, 1) and a.x_test.shape == (4, 5, 6, 1)
    assert a.y_train.dtype == np.int32 and a.num_classes == 3 and a.name == name
    with np.load(tmp_path / "a.npz") as f:
        np.testing.assert_array_equal(a.x_train[..., 0], f["x_train"])
    assert datasets.load_arrays(name, num_classes=5).num_classes == 5


def test_npz_colour(tmp_path):
    x = np.zeros((12, 4, 4, 3), np.uint8)
    a = datasets.load_arrays(
        _write_npz(tmp_path / "c.npz", x_train=x, x_test=np.zeros((4, 4, 4, 3), np.uint8))
    )
    assert a.x_train.shape == (12, 4, 4, 3)


@pytest.mark.parametrize(
    "overrides,match",
    [
        ({"y_test": None}, r"missing key\(s\) \['y_test'\]"),
        ({"y_train": np.arange(11) % 3}, r"x_train has 12 images but y_train has 11 labels"),
        ({"y_test": np.array([0, -1, 2, 1])}, r"y_test has negative labels, e.g. -1"),
        ({"x_train": np.zeros((12, 5, 6), np.float32)}, r"x_train must be uint8 .* float32"),
        ({"y_train": np.arange(12) / 2}, r"y_train must be a 1-D integer array, got dtype float64"),
        (
            {"x_test": np.zeros((4, 5, 5), np.uint8)},
            r"train images are \(5, 6, 1\) but test images",
        ),
    ],
)
def test_npz_bad_content_raises(tmp_path, overrides, match):
    with pytest.raises(ValueError, match=match):
        datasets.load_arrays(_write_npz(tmp_path / "bad.npz", **overrides))


def test_npz_labels_out_of_range_raises(tmp_path):
    with pytest.raises(ValueError, match=r"labels out of range: found label 2, allowed \[0, 2\)"):
        datasets.load_arrays(_write_npz(tmp_path / "r.npz"), num_classes=2)


def test_npz_missing_file_raises(tmp_path):
    with pytest.raises(FileNotFoundError, match="nope.npz"):
        datasets.load_arrays(f"npz:{tmp_path}/nope.npz")


@pytest.mark.parametrize("name", ["imagenet", "MNIST", "npz:", "", 3])
def test_unknown_dataset_lists_allowed_names(name):
    with pytest.raises(
        ValueError,
        match=r"unknown dataset .*allowed: mnist, fashion_mnist, cifar10, "
        r"cifar100, svhn_cropped, digits, npz:<path>",
    ):
        datasets.load_arrays(name)


# ----------------------------------------------------------------------------- tfds catalog


def test_catalog_cifar10_through_tfds_mock():
    with tfds.testing.mock_data(num_examples=24):
        a = datasets.load_arrays("cifar10", download=True)
    assert a.x_train.shape == (24, 32, 32, 3) and a.x_test.shape == (24, 32, 32, 3)
    assert a.x_train.dtype == np.uint8 and a.y_train.dtype == np.int32
    assert a.num_classes == 10 and a.y_train.min() >= 0 and a.y_train.max() < 10
    assert a.x_train.std() > 0  # Random mock images, not a constant fill.


@pytest.mark.parametrize(
    "name,shape,classes",
    [
        ("mnist", (28, 28, 1), 10),
        ("cifar100", (32, 32, 3), 100),
        ("fashion_mnist", (28, 28, 1), 10),
        ("svhn_cropped", (32, 32, 3), 10),
    ],
)
def test_other_catalog_names_through_tfds_mock(name, shape, classes):
    with tfds.testing.mock_data(num_examples=3):
        a = datasets.load_arrays(name, download=True)
    assert a.x_train.shape == (3,) + shape and a.num_classes == classes


def test_missing_catalog_data_fails_fast_without_download(tmp_path):
    """Not prepared + download=False: raise before any download (the code path has none)."""
    with pytest.raises(FileNotFoundError) as err:
        datasets.load_arrays("cifar10", data_dir=str(tmp_path))
    msg = str(err.value)
    for part in (
        "'cifar10'",
        str(tmp_path),
        "dataset_info.json",
        "data_dir=",
        "npz:/path/file.npz",
        "tfds build cifar10",
    ):
        assert part in msg
    # No config field or flag exposes load_arrays(download=...): the message must not offer it.
    assert "download=True" not in msg
    assert not any(p.name == "downloads" for p in tmp_path.rglob("*"))  # Nothing was fetched.


def test_missing_catalog_data_fails_fast_under_mock():
    """Same check with tfds mocked (its download is a no-op there), so it can never hang."""
    with tfds.testing.mock_data(num_examples=2):
        with pytest.raises(FileNotFoundError, match="'mnist' is not prepared"):
            datasets.load_arrays("mnist")


def test_num_classes_only_for_npz():
    with pytest.raises(ValueError, match="num_classes=10 only applies to npz"):
        datasets.load_arrays("digits", num_classes=10)
