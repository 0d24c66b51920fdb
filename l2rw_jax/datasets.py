"""Data sources -> numpy arrays: any tfds image-classification dataset, the embedded digits, a
user's npz, a folder of image files, or arrays already in memory.

`load_arrays(name)` returns the full train and test sets (and a trusted clean set where the
source has one) in memory as uint8 `N x H x W x C` images and int32 labels, for the corruption
and the input pipeline to work on:

- a tfds name (`mnist`, `cifar10`, `kmnist`, `emnist/letters`, `name:1.0.0`, ...): read with
  `tfds.builder(name, data_dir=...)`. Any dataset whose features hold one fixed-size uint8
  `Image` and a `ClassLabel` (its supervised keys, else `image` and `label`), with `train` and
  `test` splits; anything else is refused with the features it has. Data that is not prepared
  in `data_dir` fails fast (no network is touched) unless `download=True` asks tfds to fetch it
  (offline, tfds retries for minutes, so it is never the default). Class names come from the
  `ClassLabel`.
- `digits`: scikit-learn's bundled 8x8 digits (1797 real images), read directly from
  scikit-learn with a fixed stratified split (`digits_arrays`): offline, in well under a second,
  without TensorFlow. The same arrays as a tfds dataset: `l2rw_jax.digits_builder.Digits`
  (tested equal).
- `npz:<path>`: a `.npz` with `x_train, y_train, x_test, y_test`, optionally `x_clean, y_clean`
  (a trusted clean set, used as given: see `corruption.make_splits`), `class_names` (strings,
  one per class), `num_classes` (a scalar) and `y_train_true` (the true labels of `x_train`
  when `y_train` holds the labels as observed, benchmarks only: docs/noise.md); `save_arrays`
  writes one from a notebook.
- `folder:<root>`: `root/train/<class>/<images>`, `root/test/<class>/...`, optional
  `root/clean/<class>/...`, read with Pillow (`l2rw_jax.image_folder`, which gives the row
  order).

tfds sources with several label features (cifar10_n: `worse_label`, `aggre_label`, ...) take
`label_key` (the observed training labels) and `true_label_key` (the truth, `Arrays.y_train_true`,
and the test labels); see docs/noise.md.

Images are uint8 (0..255) `N x H x W` or `N x H x W x C` (channel-last; a channel-first
`N x C x H x W` array is refused with the transpose that fixes it), or floats in [0, 1] (no NaN),
which are stored as `round(255 x)` uint8. Labels are integers in [0, num_classes).
`num_classes` is `len(class_names)` when names are given, else the largest label + 1.
docs/inputs.md states every source's rules.

`data_dir=None` means tfds's default (`$TFDS_DATA_DIR`, else `~/tensorflow_datasets`).

tensorflow_datasets (and with it TensorFlow) is imported only when a tfds source is loaded,
Pillow only for a folder, scikit-learn only for digits: the other sources and the module itself
run on a host without TensorFlow (accelerator hosts often have none). tfds sources need the
package's `[tfds]` extra and `digits` its `[digits]` extra (`pip install "l2rw_jax[tfds]"`);
without them loading fails at once with an ImportError that names the extra.
"""

from __future__ import annotations

import numbers
import os
import re
from typing import Any, NamedTuple, Sequence

import numpy as np

from l2rw_jax import _optional
from l2rw_jax import files

EMBEDDED = ("digits",)
NPZ_PREFIX = "npz:"
FOLDER_PREFIX = "folder:"
NPZ_KEYS = ("x_train", "y_train", "x_test", "y_test")
NPZ_OPTIONAL_KEYS = ("x_clean", "y_clean", "class_names", "num_classes", "y_train_true")
ALLOWED = (
    "a tfds image-classification dataset name (e.g. mnist, cifar10, kmnist)",
    "digits",
    NPZ_PREFIX + "<path>",
    FOLDER_PREFIX + "<path>",
)
# Channel counts of common images (grey, RGB, RGBA): how a channel axis is recognised.
CHANNEL_COUNTS = (1, 3, 4)
# tfds names: `name`, `name/config`, each optionally `:x.y.z`. Community namespaces
# (`ns:name`) are left out: they would reach the network.
_TFDS_NAME = re.compile(r"[a-z][a-z0-9_]*(/[A-Za-z0-9_.+-]+)?(:\d+\.\d+\.\d+)?\Z")


class Arrays(NamedTuple):
    """A source's full train and test sets, and its trusted clean set if it has one."""

    x_train: np.ndarray  # uint8 N x H x W x C
    y_train: np.ndarray  # int32 N
    x_test: np.ndarray  # uint8 T x H x W x C
    y_test: np.ndarray  # int32 T
    num_classes: int
    name: str
    x_clean: np.ndarray | None = None  # uint8 M x H x W x C, a trusted clean set, or None
    y_clean: np.ndarray | None = None  # int32 M, or None
    class_names: tuple[str, ...] | None = None  # class_names[c] names label c, or None
    y_train_true: np.ndarray | None = None  # int32 N, true labels of x_train when known


DIGITS_NUM_CLASSES = 10
DIGITS_TEST_PER_CLASS = 36
DIGITS_SPLIT_SEED = 0


def digits_split_indices(labels: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """The digits' fixed stratified split: (train_rows, test_rows), each ascending.

    Test takes `DIGITS_TEST_PER_CLASS` rows of each class, the first ones of a per-class
    permutation drawn from `np.random.default_rng(DIGITS_SPLIT_SEED)` (classes visited in order
    0..9); train is the rest. Part of the dataset's definition: these rows never move.
    """
    rng = np.random.default_rng(DIGITS_SPLIT_SEED)
    test_rows = []
    for c in range(DIGITS_NUM_CLASSES):
        rows = np.flatnonzero(labels == c)
        test_rows.append(rows[rng.permutation(rows.size)[:DIGITS_TEST_PER_CLASS]])
    test = np.sort(np.concatenate(test_rows))
    train = np.setdiff1d(np.arange(labels.size), test)
    return train, test


def digits_pixels_uint8(images: np.ndarray) -> np.ndarray:
    """0..16 grey counts (any float/int array) -> uint8 0..255 by `(v * 255 + 8) // 16`."""
    v = np.rint(images).astype(np.int64)
    return ((v * 255 + 8) // 16).astype(np.uint8)


def digits_arrays() -> Arrays:
    """The `digits` source: scikit-learn's `load_digits` (1797 images, 8x8x1, pixels
    `digits_pixels_uint8`), train 1437 / test 360 by `digits_split_indices`, rows in
    `load_digits` order within each split, class names "0".."9"."""
    load_digits = _optional.require("sklearn.datasets", "the digits source").load_digits

    bunch = load_digits()
    images = digits_pixels_uint8(bunch.images)[..., None]
    labels = bunch.target.astype(np.int32)
    train, test = digits_split_indices(labels)
    return Arrays(images[train], labels[train], images[test], labels[test], DIGITS_NUM_CLASSES,
                  "digits", class_names=tuple(str(c) for c in range(DIGITS_NUM_CLASSES)))


def check_name(name: str) -> str:
    """Raises ValueError unless `name` has the form of a source (see the module docstring).

    Only the form is checked, without importing tfds: that a tfds name exists and is an image
    classification dataset is checked by `load_arrays`.
    """
    ok = isinstance(name, str) and (
        name in EMBEDDED
        or any(
            name.startswith(p) and len(name) > len(p) for p in (NPZ_PREFIX, FOLDER_PREFIX)
        )
        or _TFDS_NAME.match(name) is not None
    )
    if not ok:
        raise ValueError(f"unknown dataset {name!r}; allowed: {'; '.join(ALLOWED)}.")
    return name


def is_own_source(name) -> bool:
    """Whether ``name`` is a source of the user's own (``npz:`` or ``folder:``), not a
    benchmark (a tfds name, ``digits``)."""
    return isinstance(name, str) and name.startswith((NPZ_PREFIX, FOLDER_PREFIX))


def same_local_source(name_a, name_b) -> bool:
    """Whether two ``npz:`` / ``folder:`` sources name the same existing file or folder, by
    ``os.path.samefile`` (a copy reached by another path, say ``../shared`` from another
    checkout); False for other sources or a path that does not exist here."""
    if not (isinstance(name_a, str) and isinstance(name_b, str)):
        return False
    for prefix in (NPZ_PREFIX, FOLDER_PREFIX):
        if name_a.startswith(prefix) and name_b.startswith(prefix):
            try:
                return os.path.samefile(name_a[len(prefix):], name_b[len(prefix):])
            except OSError:
                return False
    return False


def load_arrays(
    name: str,
    *,
    data_dir: str | os.PathLike | None = None,
    download: bool = False,
    num_classes: int | None = None,
    label_key: str | None = None,
    true_label_key: str | None = "label",
) -> Arrays:
    """Loads a source's train and test sets (and clean set, if any) into memory.

    Args:
      name: a tfds name, `digits`, `npz:<path>` or `folder:<path>`.
      data_dir: tfds data directory (tfds sources; ignored otherwise). None: tfds's default.
      download: tfds only: let tfds download and prepare missing data (needs the internet;
        offline, tfds retries for minutes). False (default): missing data raises at once.
      num_classes: npz only: the number of classes (default: the npz's `num_classes` or
        `len(class_names)`, else the largest label + 1).
      label_key: tfds only: the `ClassLabel` feature holding the observed training labels
        (e.g. `worse_label` of `cifar10_n`); None: the dataset's label (supervised key).
      true_label_key: tfds only, read with `label_key`: the `ClassLabel` feature holding the
        true labels (`Arrays.y_train_true`, and the test labels); None: the truth is unknown
        (the test labels are then the dataset's label).

    Returns:
      `Arrays` with uint8 `N x H x W x C` images and int32 labels.

    Raises:
      ValueError: bad name, not an image-classification tfds dataset, bad npz or folder
        content, `num_classes` given for a source that defines its own.
      FileNotFoundError: tfds data not prepared in `data_dir` (with `download=False`), or a
        missing npz file or folder; the message says where it looked and how to provide the data.
    """
    check_name(name)
    if num_classes is not None:
        _check_num_classes(num_classes)
    if not isinstance(download, bool):
        raise ValueError(f"download must be True or False, got {download!r}.")
    if label_key is not None and (name.startswith((NPZ_PREFIX, FOLDER_PREFIX))
                                  or name in EMBEDDED):
        raise ValueError(
            f"label_key={label_key!r} only applies to tfds datasets; {name!r} has one label per "
            f"split (an npz gives its true labels as y_train_true)."
        )
    if name.startswith(NPZ_PREFIX):
        return _load_npz(name[len(NPZ_PREFIX) :], num_classes)
    if num_classes is not None:
        raise ValueError(
            f"num_classes={num_classes!r} only applies to npz sources; {name!r} defines its own."
        )
    if name.startswith(FOLDER_PREFIX):
        from l2rw_jax import image_folder  # Imports Pillow when reading.

        root = name[len(FOLDER_PREFIX) :]
        images = image_folder.read_folder(root)
        clean = images.splits.get("clean", (None, None))
        return make_arrays(
            *images.splits["train"],
            *images.splits["test"],
            x_clean=clean[0],
            y_clean=clean[1],
            class_names=images.class_names,
            name=name,
            where=f"image folder {root!r}: ",
        )
    if name in EMBEDDED:
        return digits_arrays()  # No tfds: the same arrays as digits_builder.Digits (tested).
    # Here, not at the top: other sources need no TensorFlow.
    tfds = _optional.require("tensorflow_datasets", f"the tfds source {name!r}")
    registered = tfds.core.registered

    try:
        builder = tfds.builder(name, data_dir=data_dir)
    except registered.DatasetNotFoundError:
        raise ValueError(
            f"unknown dataset {name!r}: tfds has no dataset of that name (see "
            f"tfds.list_builders()); allowed: {'; '.join(ALLOWED)}."
        ) from None
    # Before the data is looked for: a wrong kind of dataset is the more useful message.
    keys = image_label_keys(builder.info, name)
    if label_key is not None:
        label_feature_keys(builder.info, name, keys[1], label_key, true_label_key)
    if not builder.is_prepared():
        if not download:
            raise FileNotFoundError(_missing_message(name, builder))
        builder.download_and_prepare()
    # A prepared dataset lists its splits (tfds's mock_data lists none).
    have = list(builder.info.splits)
    if have and not {"train", "test"} <= set(have):
        raise ValueError(
            f"dataset {name!r} has splits {sorted(have)}; a 'train' and a 'test' split are "
            f"needed (save other splits with save_arrays, or as a folder: source)."
        )
    keys = image_label_keys(builder.info, name)
    if label_key is None:
        label = builder.info.features[keys[1]]
        x_train, (y_train,) = _read_split(builder, "train", keys)
        x_test, (y_test,) = _read_split(builder, "test", keys)
        y_true = None
    else:
        test_key = keys[1] if true_label_key is None else true_label_key
        label = builder.info.features[test_key]
        train_keys = (keys[0], label_key) + (() if true_label_key is None else (true_label_key,))
        x_train, ys = _read_split(builder, "train", train_keys)
        y_train, y_true = ys[0], (ys[1] if len(ys) > 1 else None)
        # The test split's labels are the truth (cifar10_n stores -1 as its human labels there).
        x_test, (y_test,) = _read_split(builder, "test", (keys[0], test_key))
    names = tuple(label.names) if label.names else None
    return Arrays(
        x_train, y_train, x_test, y_test, int(label.num_classes), name, class_names=names,
        y_train_true=y_true,
    )


def label_feature_keys(info, name: str, default_key: str, label_key: str,
                       true_label_key: str | None) -> None:
    """Checks that `label_key` and `true_label_key` (if not None) name distinct `ClassLabel`
    features of `info` with as many classes as the dataset's label `default_key`.

    Raises:
      ValueError: naming the key and the integer class labels the dataset has.
    """
    tfds = _optional.require("tensorflow_datasets", "label_feature_keys")
    features = info.features
    labels = {k: v for k, v in features.items() if isinstance(v, tfds.features.ClassLabel)}
    c = labels[default_key].num_classes
    allowed = [k for k, v in labels.items() if v.num_classes == c]
    for what, key in (("label_key", label_key), ("true_label_key", true_label_key)):
        if key is not None and key not in allowed:
            raise ValueError(
                f"{what}={key!r} is not an integer class label of dataset {name!r} with "
                f"{c} classes; allowed: {', '.join(allowed)}."
            )
    if label_key == true_label_key:
        raise ValueError(
            f"label_key and true_label_key are both {label_key!r}; the observed labels and the "
            f"truth are two different features (true_label_key=None: truth unknown)."
        )


def image_label_keys(info, name: str = "dataset") -> tuple[str, str]:
    """The (image, label) feature keys of a tfds dataset, checked: an image classification
    dataset has a fixed-size uint8 `Image` and a `ClassLabel`, found as its supervised keys,
    else as `image` and `label`.

    Args:
      info: a `tfds.core.DatasetInfo` (`builder.info`; no data needed).
      name: the dataset's name, for messages.

    Raises:
      ValueError: no such pair (the message lists the features it has), or images of varying
        size or of another dtype.
    """
    tfds = _optional.require("tensorflow_datasets", "image_label_keys")
    features = info.features
    keys = info.supervised_keys
    if not (isinstance(keys, tuple) and len(keys) == 2 and all(isinstance(k, str) for k in keys)):
        keys = ("image", "label")
    image, label = (features[k] if k in features else None for k in keys)
    if not (
        isinstance(image, tfds.features.Image) and isinstance(label, tfds.features.ClassLabel)
    ):
        have = ", ".join(f"{k}: {type(v).__name__}" for k, v in features.items())
        raise ValueError(
            f"dataset {name!r} is not an image classification dataset: need an Image feature "
            f"and a ClassLabel (as its supervised keys {keys}); it has {have}."
        )
    shape = tuple(image.shape)
    if any(d is None for d in shape) or np.dtype(image.np_dtype) != np.uint8:
        raise ValueError(
            f"dataset {name!r}: feature {keys[0]!r} has images of shape {shape} and dtype "
            f"{np.dtype(image.np_dtype)}; allowed: one fixed size (no None) and uint8. Resize "
            f"them and pass them through save_arrays or a folder: source."
        )
    return keys


def _missing_message(name: str, builder) -> str:
    return (
        f"dataset {name!r} is not prepared in data_dir {os.fspath(builder.data_dir_root)!r} "
        f"(looked for {builder.data_dir}/dataset_info.json) and downloading is off. Provide it "
        f"one of these ways: (1) pass data_dir=<dir> holding a prepared copy (e.g. made with "
        f"`tfds build {name} --data_dir <dir>` on a machine with internet access, then copied), or "
        f"set $TFDS_DATA_DIR; (2) save the arrays as an .npz with keys {', '.join(NPZ_KEYS)} "
        f"(l2rw_jax.save_arrays writes one) and use the dataset name 'npz:/path/file.npz', or "
        f"lay the images out as folder:/path (train/<class>/<images>, test/<class>/...); "
        f"(3) use the embedded 'digits', which needs no files."
    )


def _read_split(builder, split: str, keys: tuple[str, ...]
                ) -> tuple[np.ndarray, tuple[np.ndarray, ...]]:
    """(images, (labels of keys[1], labels of keys[2], ...)) of one split, in file order."""
    tfds = _optional.require("tensorflow_datasets", f"the tfds source {builder.name!r}")
    # In file order (shuffle_files=False), so rows and thus seeded splits are reproducible. Only
    # the named features are kept: others (file names, boxes) may not batch.
    ds = builder.as_dataset(split=split, shuffle_files=False)
    ds = ds.map(lambda ex: tuple(ex[k] for k in keys))  # Sequential: order kept.
    cols = [[] for _ in keys]
    for batch in tfds.as_numpy(ds.batch(8192)):
        for col, a in zip(cols, batch):
            col.append(a)
    shape = tuple(builder.info.features[keys[0]].shape)
    x = np.concatenate(cols[0]) if cols[0] else np.zeros((0,) + shape, np.uint8)
    ys = tuple((np.concatenate(c) if c else np.zeros((0,), np.int64)).astype(np.int32)
               for c in cols[1:])
    return x.astype(np.uint8, copy=False), ys


# ----------------------------------------------------------------------------- fingerprint

FINGERPRINT_SAMPLE_ROWS = 64  # rows of each split whose pixels are hashed


def fingerprint(arrays: Arrays) -> dict:
    """A cheap summary of the loaded data that changes when the data does: recorded with a
    run (`<workdir>/data_fingerprint.json`) so that resuming on other data is refused.

    Returns:
      `{"shapes": {"x_train": [N, H, W, C], "y_train": [N], ...} (each split present),
      "labels": sha256 hex of every label array, num_classes and class_names,
      "pixels": sha256 hex of FINGERPRINT_SAMPLE_ROWS rows of each image array, evenly
      strided (`np.linspace(0, N - 1, 64)` rounded down; all rows when N <= 64)}`.
      Hashing every label and a fixed sample of pixels costs milliseconds even on ImageNet
      sizes; a change confined to pixels of rows outside the sample goes unseen.
    """
    import hashlib

    splits = [k for k in ("train", "test", "clean") if getattr(arrays, f"x_{k}") is not None]
    shapes, labels, pixels = {}, hashlib.sha256(), hashlib.sha256()
    for k in splits:
        x, y = getattr(arrays, f"x_{k}"), getattr(arrays, f"y_{k}")
        shapes[f"x_{k}"], shapes[f"y_{k}"] = list(x.shape), list(y.shape)
        labels.update(np.ascontiguousarray(y, np.int64).tobytes())
        rows = np.unique(np.linspace(0, len(x) - 1, min(len(x), FINGERPRINT_SAMPLE_ROWS))
                         .astype(np.int64)) if len(x) else np.zeros(0, np.int64)
        pixels.update(np.ascontiguousarray(x[rows], np.uint8).tobytes())
    labels.update(repr((int(arrays.num_classes), arrays.class_names)).encode())
    return {"shapes": shapes, "labels": labels.hexdigest(), "pixels": pixels.hexdigest()}


# ----------------------------------------------------------------------------- arrays


def _check_num_classes(num_classes: Any, where: str = "") -> int:
    if (
        isinstance(num_classes, bool)
        or not isinstance(num_classes, numbers.Integral)
        or num_classes < 2
    ):
        raise ValueError(f"{where}num_classes must be an integer >= 2, got {num_classes!r}.")
    return int(num_classes)


def _images(key: str, x: Any, where: str) -> np.ndarray:
    """uint8 N x H x W x C from uint8 or [0, 1] float N x H x W (x C).

    Refused: another dtype or rank; NaN or values outside [0, 1] in a float array; and a 4-D
    array that is channel-first (N x C x H x W, PyTorch's layout): dimension 1 is a channel
    count (`CHANNEL_COUNTS`: grey, RGB, RGBA), the last dimension is not, and dimension 2 is
    larger than any channel count (an image height). Read as channel-last, such an array would
    be C-pixel-high images with W channels and would train without a word.
    """
    x = np.asarray(x)
    is_float = np.issubdtype(x.dtype, np.floating)
    if not (x.dtype == np.uint8 or is_float) or x.ndim not in (3, 4):
        raise ValueError(
            f"{where}{key} must be uint8 (0..255) or float (in [0, 1]) N x H x W or "
            f"N x H x W x C, got dtype {x.dtype} and shape {x.shape}."
        )
    if (x.ndim == 4 and x.shape[1] in CHANNEL_COUNTS and x.shape[3] not in CHANNEL_COUNTS
            and x.shape[2] > max(CHANNEL_COUNTS)):
        # N x C x H x W (PyTorch's layout) would pass as C-pixel-high images with W channels.
        raise ValueError(
            f"{where}{key} has shape {x.shape}, which is channel-first (N x C x H x W, PyTorch's "
            f"layout); images must be channel-last N x H x W x C: pass "
            f"{key}.transpose(0, 2, 3, 1) (shape {(x.shape[0], *x.shape[2:], x.shape[1])})."
        )
    if is_float:
        nan = np.isnan(x)
        if nan.any():
            first = np.unravel_index(int(np.argmax(nan)), x.shape)
            raise ValueError(
                f"{where}{key} holds {int(nan.sum())} NaN pixel value(s) (first at index "
                f"{tuple(int(i) for i in first)}); float images must lie in [0, 1]."
            )
        lo, hi = (float(x.min()), float(x.max())) if x.size else (0.0, 0.0)
        if not (lo >= 0.0 and hi <= 1.0):  # -inf / inf show as such.
            raise ValueError(
                f"{where}{key} is float, so it must lie in [0, 1]; found min {lo} and max {hi} "
                f"(scale 0..255 floats by 1/255, or pass uint8)."
            )
        # Stored as uint8: the input pipelines, the device backend and the npz all hold uint8
        # (4x less memory than float32), and k/255 maps back to exactly k.
        x = np.rint(x.astype(np.float64) * 255.0).astype(np.uint8)
    return x[..., None] if x.ndim == 3 else x


def _labels(key: str, y: Any, n: int, xkey: str, where: str) -> np.ndarray:
    y = np.asarray(y)
    if y.ndim != 1 or not np.issubdtype(y.dtype, np.integer):
        raise ValueError(
            f"{where}{key} must be a 1-D integer array, got dtype {y.dtype} and shape {y.shape}."
        )
    if len(y) != n:
        raise ValueError(f"{where}{xkey} has {n} images but {key} has {len(y)} labels.")
    if y.size and y.min() < 0:
        raise ValueError(
            f"{where}{key} has negative labels, e.g. {int(y.min())}; labels must lie in "
            f"[0, num_classes)."
        )
    return y


def _class_names(class_names: Any, where: str) -> tuple[str, ...]:
    if isinstance(class_names, np.ndarray):
        class_names = class_names.tolist() if class_names.ndim == 1 else class_names
    if (
        isinstance(class_names, (str, bytes))
        or not isinstance(class_names, Sequence)
        or not all(isinstance(c, str) and c for c in class_names)
        or len(set(class_names)) != len(class_names)
    ):
        raise ValueError(
            f"{where}class_names must be a sequence of distinct non-empty strings, one per "
            f"class, got {class_names!r}."
        )
    return tuple(class_names)


def make_arrays(
    x_train: Any,
    y_train: Any,
    x_test: Any,
    y_test: Any,
    *,
    x_clean: Any = None,
    y_clean: Any = None,
    class_names: Sequence[str] | None = None,
    num_classes: int | None = None,
    name: str = "arrays",
    where: str = "",
    y_train_true: Any = None,
) -> Arrays:
    """Checks numpy arrays and returns them as `Arrays` (uint8 images with a channel axis,
    int32 labels).

    Args:
      x_train, x_test, x_clean: images `N x H x W` or `N x H x W x C` (channel-last; a
        channel-first `N x C x H x W` array is refused, see `_images`), uint8 (0..255) or
        float in [0, 1] without NaN (stored as `round(255 x)`); all of one `H x W x C`.
      y_train, y_test, y_clean: 1-D integer labels in [0, num_classes).
      x_clean, y_clean: a trusted clean set (at least one example), both or neither.
      class_names: one distinct string per class; fixes `num_classes = len(class_names)`.
      num_classes: default `len(class_names)`, else the largest label + 1.
      name: `Arrays.name`.
      y_train_true: the true labels of `x_train` (1-D, same length as `y_train`, in
        [0, num_classes)) when `y_train` holds labels as observed; benchmarks only.
      where: prefix of every error message (e.g. "npz '/a/b.npz': ").

    Raises:
      ValueError: naming the key, the value found and what is allowed.
    """
    given = {"x_clean": x_clean is not None, "y_clean": y_clean is not None}
    if given["x_clean"] != given["y_clean"]:
        missing, present = ("y_clean", "x_clean") if given["x_clean"] else ("x_clean", "y_clean")
        raise ValueError(f"{where}{present} is given but {missing} is not; give both or neither.")
    splits = ("train", "test") + (("clean",) if given["x_clean"] else ())
    raw = {"train": (x_train, y_train), "test": (x_test, y_test), "clean": (x_clean, y_clean)}
    xs, ys = {}, {}
    for s in splits:
        xs[s] = _images(f"x_{s}", raw[s][0], where)
        ys[s] = _labels(f"y_{s}", raw[s][1], len(xs[s]), f"x_{s}", where)
    for s in splits[1:]:
        if xs[s].shape[1:] != xs["train"].shape[1:]:
            raise ValueError(
                f"{where}train images are {xs['train'].shape[1:]} but {s} images are "
                f"{xs[s].shape[1:]}; all must share one H x W x C."
            )
    if len(xs["train"]) == 0:
        raise ValueError(f"{where}x_train is empty.")
    if "clean" in xs and len(xs["clean"]) == 0:
        raise ValueError(f"{where}x_clean is empty; give at least one example, or no clean set.")
    names = None if class_names is None else _class_names(class_names, where)
    if num_classes is not None:
        num_classes = _check_num_classes(num_classes, where)
    if names is not None:
        if num_classes is not None and num_classes != len(names):
            raise ValueError(
                f"{where}num_classes={num_classes} but class_names has {len(names)} names; "
                f"they must agree."
            )
        num_classes = len(names)
    top = max(int(y.max(initial=0)) for y in ys.values())
    if num_classes is None:
        num_classes = top + 1
    if top >= num_classes:
        key = next(f"y_{s}" for s in splits if ys[s].max(initial=0) == top)
        raise ValueError(
            f"{where}labels out of range: found label {top} in {key}, allowed "
            f"[0, {num_classes}) (num_classes={num_classes})."
        )
    if num_classes < 2:
        raise ValueError(f"{where}labels cover a single class ({top}); need at least 2.")
    if y_train_true is not None:
        y_train_true = _labels("y_train_true", y_train_true, len(xs["train"]), "x_train", where)
        if y_train_true.max(initial=0) >= num_classes:
            raise ValueError(
                f"{where}y_train_true has label {int(y_train_true.max())}, allowed "
                f"[0, {num_classes}) (num_classes={num_classes})."
            )
        y_train_true = y_train_true.astype(np.int32)
    return Arrays(
        xs["train"],
        ys["train"].astype(np.int32),
        xs["test"],
        ys["test"].astype(np.int32),
        int(num_classes),
        name,
        x_clean=xs.get("clean"),
        y_clean=ys["clean"].astype(np.int32) if "clean" in ys else None,
        class_names=names,
        y_train_true=y_train_true,
    )


def save_arrays(
    path: str | os.PathLike,
    x_train: Any,
    y_train: Any,
    x_test: Any,
    y_test: Any,
    *,
    x_clean: Any = None,
    y_clean: Any = None,
    class_names: Sequence[str] | None = None,
    num_classes: int | None = None,
    y_train_true: Any = None,
) -> str:
    """Checks arrays (as `make_arrays`), writes them to an npz and returns its source name.

    For notebooks: the returned `"npz:<absolute path>"` is what `config.data.dataset` takes, so a
    run records a JSON-able name and can be resumed from it. The file holds the converted arrays
    (uint8 with a channel axis, int32 labels) and, when given, `x_clean, y_clean`,
    `class_names` and `num_classes`; it is written atomically (`files.atomic_write`): a
    reader never sees half a file, and a failure leaves none.

    >>> name = save_arrays("data.npz", x_train, y_train, x_test, y_test,  # doctest: +SKIP
    ...                    x_clean=x_trusted, y_clean=y_trusted)
    >>> config.data.dataset = name  # doctest: +SKIP

    Raises:
      ValueError: as `make_arrays`, before anything is written.
    """
    path = os.path.abspath(os.fspath(path))
    arrays = make_arrays(
        x_train, y_train, x_test, y_test, x_clean=x_clean, y_clean=y_clean,
        class_names=class_names, num_classes=num_classes, name=NPZ_PREFIX + path,
        y_train_true=y_train_true,
    )
    out = {k: getattr(arrays, k) for k in NPZ_KEYS}
    if arrays.y_train_true is not None:
        out["y_train_true"] = arrays.y_train_true
    if arrays.x_clean is not None:
        out.update(x_clean=arrays.x_clean, y_clean=arrays.y_clean)
    if arrays.class_names is not None:
        out["class_names"] = np.array(arrays.class_names, dtype=str)
    if num_classes is not None:
        out["num_classes"] = np.array(arrays.num_classes, np.int64)
    files.atomic_write(path, lambda f: np.savez(f, **out), mode="wb")
    return arrays.name


def _load_npz(path: str, num_classes: int | None) -> Arrays:
    if not os.path.isfile(path):
        raise FileNotFoundError(
            f"npz file {path!r} not found (resolved to "
            f"{os.path.abspath(path)!r}); expected a .npz with keys "
            f"{', '.join(NPZ_KEYS)}."
        )
    where = f"npz {path!r}: "
    with np.load(path, allow_pickle=False) as f:
        missing = [k for k in NPZ_KEYS if k not in f.files]
        if missing:
            raise ValueError(
                f"npz {path!r} is missing key(s) {missing}; it has {sorted(f.files)}, "
                f"needs {list(NPZ_KEYS)}, may have {list(NPZ_OPTIONAL_KEYS)}."
            )
        unknown = sorted(set(f.files) - set(NPZ_KEYS) - set(NPZ_OPTIONAL_KEYS))
        if unknown:
            raise ValueError(
                f"npz {path!r} has unknown key(s) {unknown}; allowed: "
                f"{list(NPZ_KEYS + NPZ_OPTIONAL_KEYS)}."
            )
        a = {k: f[k] for k in f.files}
    stored = a.get("num_classes")
    if stored is not None:
        if stored.ndim != 0 or not np.issubdtype(stored.dtype, np.integer):
            raise ValueError(f"{where}num_classes must be a scalar integer, got {stored!r}.")
        stored = int(stored)
        if num_classes is not None and num_classes != stored:
            raise ValueError(
                f"{where}num_classes={num_classes} was asked but the file says {stored}."
            )
    names = a.get("class_names")
    if names is not None and (names.ndim != 1 or names.dtype.kind != "U"):
        raise ValueError(
            f"{where}class_names must be a 1-D array of strings, got dtype {names.dtype} and "
            f"shape {names.shape}."
        )
    return make_arrays(
        a["x_train"], a["y_train"], a["x_test"], a["y_test"],
        x_clean=a.get("x_clean"), y_clean=a.get("y_clean"),
        class_names=names, num_classes=num_classes if stored is None else stored,
        name=NPZ_PREFIX + path, where=where, y_train_true=a.get("y_train_true"),
    )


def npz_has_truth(name: str) -> bool:
    """True when `name` is an `npz:` source whose file exists and holds `y_train_true` (read
    from the zip directory only; no array is loaded)."""
    if not (isinstance(name, str) and name.startswith(NPZ_PREFIX)):
        return False
    path = name[len(NPZ_PREFIX) :]
    if not os.path.isfile(path):
        return False
    try:
        with np.load(path, allow_pickle=False) as f:
            return "y_train_true" in f.files
    except (OSError, ValueError):
        return False
