"""Sources: the embedded digits builder, npz files, tfds catalog (mocked) and its fail-fast path."""

import hashlib
import os
import re
import subprocess
import sys

import numpy as np
import pytest
import tensorflow_datasets as tfds
from sklearn.datasets import load_digits

from l2rw_jax import array_source
from l2rw_jax import datasets
from l2rw_jax import digits_builder
from l2rw_jax import tfds_source


@pytest.fixture(scope="module")
def digits_dir(tmp_path_factory):
    return str(tmp_path_factory.mktemp("tfds"))


@pytest.fixture(scope="module")
def digits():
    return datasets.load_arrays("digits")


def test_digits_match_sklearn(digits):
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


def test_digits_tfds_builder_gives_the_same_arrays(digits, digits_dir):
    """load_arrays("digits") reads scikit-learn directly; the tfds builder builds offline into
    data_dir and yields the same rows in the same order."""
    builder = digits_builder.Digits(data_dir=digits_dir)
    builder.download_and_prepare(
        download_config=tfds.download.DownloadConfig(try_download_gcs=False)
    )
    assert os.path.isfile(os.path.join(digits_dir, "digits", "1.0.0", "dataset_info.json"))
    for split, x, y in (
        ("train", digits.x_train, digits.y_train),
        ("test", digits.x_test, digits.y_test),
    ):
        ds = tfds.as_numpy(
            builder.as_dataset(split=split, as_supervised=True, shuffle_files=False).batch(2000)
        )
        bx, by = next(iter(ds))
        np.testing.assert_array_equal(bx, x)
        np.testing.assert_array_equal(by, y)
    assert digits.class_names == tuple(builder.info.features["label"].names)


def test_digits_need_no_tensorflow(tmp_path):
    code = (
        "import sys\n"
        "for m in ('tensorflow', 'tensorflow_datasets'):\n"
        "    sys.modules[m] = None\n"
        "from l2rw_jax import datasets\n"
        "a = datasets.load_arrays('digits')\n"
        "print(a.x_train.shape, a.x_test.shape)\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert out.returncode == 0 and "(1437, 8, 8, 1) (360, 8, 8, 1)" in out.stdout, out.stderr


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
        ({"x_train": np.zeros((12, 5, 6), np.int16)}, r"x_train must be uint8 .* int16"),
        (
            {"x_train": np.full((12, 5, 6), 255.0, np.float32)},
            r"x_train is float, so it must lie in \[0, 1\]; found min 255.0 and max 255.0",
        ),
        (
            {"x_test": np.full((4, 5, 6), -0.5)},
            r"x_test is float, so it must lie in \[0, 1\]; found min -0.5",
        ),
        ({"x_clean": np.zeros((2, 5, 6), np.uint8)}, r"x_clean is given but y_clean is not"),
        ({"y_clean": np.array([0, 1])}, r"y_clean is given but x_clean is not"),
        (
            {"x_clean": np.zeros((2, 5, 5), np.uint8), "y_clean": np.array([0, 1])},
            r"train images are \(5, 6, 1\) but clean images are \(5, 5, 1\)",
        ),
        (
            {"x_clean": np.zeros((2, 5, 6), np.uint8), "y_clean": np.array([0, 1, 1])},
            r"x_clean has 2 images but y_clean has 3 labels",
        ),
        (
            {"x_clean": np.zeros((0, 5, 6), np.uint8), "y_clean": np.zeros(0, int)},
            r"x_clean is empty",
        ),
        ({"class_names": np.array(["a", "b"])}, r"found label 2 in y_train, allowed \[0, 2\)"),
        ({"class_names": np.array([1, 2, 3])}, r"class_names must be a 1-D array of strings"),
        ({"x_valid": np.zeros(3)}, r"unknown key\(s\) \['x_valid'\]"),
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
    with pytest.raises(
        ValueError, match=r"labels out of range: found label 2 in y_train, allowed \[0, 2\)"
    ):
        datasets.load_arrays(_write_npz(tmp_path / "r.npz"), num_classes=2)


def test_npz_clean_set_and_class_names(tmp_path):
    x_clean = np.arange(2 * 5 * 6, dtype=np.uint8).reshape(2, 5, 6)
    name = _write_npz(
        tmp_path / "c.npz",
        x_clean=x_clean,
        y_clean=np.array([2, 0]),
        class_names=np.array(["cat", "dog", "eel", "fox"]),
    )
    a = datasets.load_arrays(name)
    np.testing.assert_array_equal(a.x_clean, x_clean[..., None])
    assert a.y_clean.tolist() == [2, 0] and a.y_clean.dtype == np.int32
    # class_names fixes num_classes (4), though the labels only reach 2.
    assert a.class_names == ("cat", "dog", "eel", "fox") and a.num_classes == 4
    assert datasets.load_arrays(_write_npz(tmp_path / "n.npz")).x_clean is None
    with pytest.raises(ValueError, match=r"num_classes=5 but class_names has 4 names"):
        datasets.load_arrays(name, num_classes=5)
    with pytest.raises(ValueError, match=r"found label 3 in y_clean, allowed \[0, 3\)"):
        datasets.load_arrays(
            _write_npz(tmp_path / "b.npz", x_clean=x_clean, y_clean=[3, 0]), num_classes=3
        )


def test_float_images_in_unit_interval_become_round_255x():
    k = np.arange(256, dtype=np.uint8)
    x = np.stack([k / 255.0, (k / 255.0).astype(np.float32)]).reshape(2, 16, 16)
    x[0, 0, :3] = [0.5, 0.4999, 1.0 / 510 + 1e-9]  # 127.5 -> 128 (half to even), 127.47 -> 127.
    a = array_source.make_arrays(x, [0, 1], x[:1], [1])
    assert a.x_train.dtype == np.uint8 and a.x_train.shape == (2, 16, 16, 1)
    np.testing.assert_array_equal(a.x_train[1, ..., 0].ravel(), k)  # k / 255 -> k exactly.
    np.testing.assert_array_equal(a.x_train[0, ..., 0].ravel()[3:], k[3:])
    assert a.x_train[0, 0, :3, 0].tolist() == [128, 127, 1]
    for bad, shown in ((1.0 + 1e-6, "1.000001"), (-1e-3, "-0.001"), (np.inf, "max inf")):
        with pytest.raises(ValueError, match=rf"x_test is float, so it must lie in .*{shown}"):
            array_source.make_arrays(x, [0, 1], np.full((1, 16, 16), bad), [1])


def test_nan_pixels_are_named_as_nan():
    x = np.full((2, 4, 4), 0.5)
    x[1, 2, 3] = np.nan
    x[1, 3, 0] = np.nan
    with pytest.raises(
        ValueError,
        match=r"^x_train holds 2 NaN pixel value\(s\) \(first at index "
        r"\(1, 2, 3\)\); float images must lie in \[0, 1\]\.$",
    ):
        array_source.make_arrays(x, [0, 1], x[:1], [1])


CHANNEL_FIRST = [
    ((6, 1, 28, 28), (6, 28, 28, 1)),  # MNIST as torchvision gives it
    ((6, 3, 32, 32), (6, 32, 32, 3)),  # CIFAR
    ((6, 4, 9, 7), (6, 9, 7, 4)),  # RGBA, not square
]


@pytest.mark.parametrize("shape,fixed", CHANNEL_FIRST)
def test_channel_first_arrays_are_refused_with_the_transpose(tmp_path, shape, fixed):
    x = np.zeros(shape, np.uint8)
    y = np.arange(6) % 2
    message = (
        re.escape(
            f"x_train has shape {shape}, which is channel-first (N x C x H x W, PyTorch's layout); "
            f"images must be channel-last N x H x W x C: pass x_train.transpose(0, 2, 3, 1) (shape "
            f"{fixed})."
        )
        + "$"
    )
    good = np.zeros(fixed, np.uint8)
    # make_arrays (notebooks), save_arrays (nothing written), an npz written by other code.
    with pytest.raises(ValueError, match="^" + message):
        array_source.make_arrays(x, y, good, y)
    with pytest.raises(ValueError, match="^" + message):
        array_source.save_arrays(tmp_path / "s.npz", x, y, good, y)
    assert not list(tmp_path.iterdir())
    np.savez(tmp_path / "t.npz", x_train=x, y_train=y, x_test=good, y_test=y)
    with pytest.raises(ValueError, match=rf"^npz '{re.escape(str(tmp_path))}/t.npz': " + message):
        datasets.load_arrays(f"npz:{tmp_path}/t.npz")
    # The transpose the message names is the fix.
    a = array_source.make_arrays(x.transpose(0, 2, 3, 1), y, good, y)
    assert a.x_train.shape == fixed
    # The test split is checked too, by its own name.
    with pytest.raises(ValueError, match=r"^x_test has shape .* pass x_test.transpose"):
        array_source.make_arrays(good, y, x, y)


@pytest.mark.parametrize(
    "shape",
    [(5, 28, 28, 1), (5, 32, 32, 3), (5, 3, 3, 3), (5, 1, 8, 1), (5, 4, 4, 4), (5, 3, 4, 2)],
)
def test_channel_last_arrays_are_not_taken_for_channel_first(shape):
    # Channel-last shapes, also tiny or odd ones: their last axis is a channel count, or
    # axis 2 is too small to be an image height.
    a = array_source.make_arrays(
        np.zeros(shape, np.uint8), np.arange(5) % 2, np.zeros(shape, np.uint8)[:2], [0, 1]
    )
    assert a.x_train.shape == shape


def test_save_arrays_round_trip_atomic_and_checked_first(tmp_path):
    rng = np.random.default_rng(1)
    x = rng.random((10, 4, 4, 3))
    y = np.arange(10) % 3
    name = array_source.save_arrays(
        tmp_path / "d" / "s.npz",
        x,
        y,
        x[:4],
        y[:4],
        x_clean=x[:2],
        y_clean=y[:2],
        class_names=["a", "b", "c"],
        num_classes=3,
        y_train_true=(y + 1) % 3,
    )
    path = str(tmp_path / "d" / "s.npz")
    assert name == "npz:" + path and datasets.check_name(name) == name
    a = datasets.load_arrays(name)
    np.testing.assert_array_equal(a.x_train, np.rint(x * 255).astype(np.uint8))
    np.testing.assert_array_equal(a.x_clean, a.x_train[:2])
    assert a.y_clean.tolist() == [0, 1] and a.class_names == ("a", "b", "c")
    assert a.num_classes == 3 and a.name == name
    np.testing.assert_array_equal(a.y_train_true, (y + 1) % 3)
    with np.load(path) as f:
        assert sorted(f.files) == sorted(array_source.NPZ_KEYS + array_source.NPZ_OPTIONAL_KEYS)
        assert f["x_train"].dtype == np.uint8 and int(f["num_classes"]) == 3
    # A stored num_classes is the file's own: no class 3 appears, yet it holds.
    name4 = array_source.save_arrays(tmp_path / "f.npz", x, y, x[:4], y[:4], num_classes=4)
    assert datasets.load_arrays(name4).num_classes == 4
    with pytest.raises(ValueError, match=r"num_classes=5 was asked but the file says 4"):
        datasets.load_arrays(name4, num_classes=5)
    # Checked before writing: nothing appears, not even a temporary file.
    with pytest.raises(ValueError, match=r"y_test has negative labels"):
        array_source.save_arrays(tmp_path / "e" / "bad.npz", x, y, x[:4], -y[:4] - 1)
    assert not (tmp_path / "e").exists() or not list((tmp_path / "e").iterdir())
    assert sorted(p.name for p in tmp_path.iterdir()) == ["d", "f.npz"]


def test_save_arrays_is_exported():
    import l2rw_jax

    assert l2rw_jax.save_arrays is array_source.save_arrays


def test_npz_missing_file_raises(tmp_path):
    with pytest.raises(FileNotFoundError, match="nope.npz"):
        datasets.load_arrays(f"npz:{tmp_path}/nope.npz")


@pytest.mark.parametrize("name", ["MNIST", "npz:", "folder:", "", 3, "hf:mnist", "a b"])
def test_malformed_name_lists_allowed_sources(name):
    with pytest.raises(
        ValueError,
        match=r"unknown dataset .*allowed: a tfds image-classification dataset name "
        r"\(e.g. mnist, cifar10, kmnist\); digits; npz:<path>; folder:<path>\.",
    ):
        datasets.check_name(name)  # The form alone: no tfds import.
    with pytest.raises(ValueError, match="unknown dataset"):
        datasets.load_arrays(name)


def test_name_tfds_does_not_know_is_refused():
    with pytest.raises(ValueError, match=r"unknown dataset 'imagenet': tfds has no dataset"):
        datasets.load_arrays("imagenet")


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


# ----------------------------------------------------------------------------- any tfds dataset


def test_any_tfds_image_classification_dataset_through_tfds_mock(tmp_path):
    """kmnist is in no list of ours: its features (Image + ClassLabel) make it acceptable."""
    with tfds.testing.mock_data(num_examples=7):
        a = datasets.load_arrays("kmnist", data_dir=str(tmp_path), download=True)
    assert a.x_train.shape == (7, 28, 28, 1) and a.x_test.shape == (7, 28, 28, 1)
    assert a.x_train.dtype == np.uint8 and a.y_train.dtype == np.int32
    assert a.num_classes == 10 and 0 <= a.y_train.min() and a.y_train.max() < 10
    assert a.class_names == tuple(tfds.builder("kmnist").info.features["label"].names)
    assert a.x_clean is None


def test_supervised_keys_name_the_features(tmp_path):
    """smallnorb's label is `label_category` (its supervised key), next to four other labels."""
    info = tfds.builder("smallnorb", data_dir=str(tmp_path)).info
    assert tfds_source.image_label_keys(info, "smallnorb") == ("image", "label_category")


@pytest.mark.parametrize(
    "name,match",
    [
        (
            "imdb_reviews",
            r"'imdb_reviews' is not an image classification dataset: need an Image feature and "
            r"a ClassLabel \(as its supervised keys \('text', 'label'\)\); it has text: "
            r"Text, label: ClassLabel\.",
        ),
        (
            "cats_vs_dogs",
            r"'cats_vs_dogs': feature 'image' has images of shape \(None, None, 3\) and dtype "
            r"uint8; allowed: one fixed size",
        ),
    ],
)
def test_non_image_classification_tfds_dataset_refused_by_its_features(tmp_path, name, match):
    # Refused from the builder's info (no data needed), before the missing data is reported.
    with tfds.testing.mock_data(num_examples=2):
        with pytest.raises(ValueError, match=match):
            datasets.load_arrays(name, data_dir=str(tmp_path), download=True)
    with pytest.raises(ValueError, match=match):
        datasets.load_arrays(name, data_dir=str(tmp_path))
