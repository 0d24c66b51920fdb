"""Data sources -> numpy arrays: any tfds image-classification dataset, the embedded digits, a
user's npz, a folder of image files, or arrays already in memory.

`load_arrays(name)` returns the full train and test sets (and a trusted clean set where the
source has one) in memory as uint8 `N x H x W x C` images and int32 labels, for the corruption
and the input pipeline to work on; this module knows the source names and hands each to its
reader:

- a tfds name (`mnist`, `cifar10`, `kmnist`, `emnist/letters`, `name:1.0.0`, ...): read with
  `tfds.builder(name, data_dir=...)` and `l2rw_jax.tfds_source` (which datasets it takes, the
  fail-fast path when the data is not prepared, `label_key` / `true_label_key` for datasets
  with several label features such as cifar10_n).
- `digits`: scikit-learn's bundled 8x8 digits (1797 real images), read directly from
  scikit-learn with a fixed stratified split (`digits_arrays`): offline, in well under a second,
  without TensorFlow. The same arrays as a tfds dataset: `l2rw_jax.digits_builder.Digits`
  (tested equal).
- `npz:<path>`: a `.npz` read by `l2rw_jax.array_source.load_npz` (its keys there);
  `array_source.save_arrays` writes one from a notebook.
- `folder:<root>`: `root/train/<class>/<images>`, `root/test/<class>/...`, optional
  `root/clean/<class>/...`, read with Pillow (`l2rw_jax.image_folder`, which gives the row
  order).

Every source ends in `array_source.make_arrays`, which states what images and labels may be.
docs/inputs.md states every source's rules. `fingerprint` summarises the loaded data for a run.

`data_dir=None` means tfds's default (`$TFDS_DATA_DIR`, else `~/tensorflow_datasets`).

tensorflow_datasets (and with it TensorFlow) is imported only when a tfds source is loaded,
Pillow only for a folder, scikit-learn only for digits: the other sources and the module itself
run on a host without TensorFlow (accelerator hosts often have none). tfds sources need the
package's `[tfds]` extra and `digits` its `[digits]` extra (`pip install "l2rw_jax[tfds]"`);
without them loading fails at once with an ImportError that names the extra.
"""

from __future__ import annotations

import os
import re

import numpy as np

from l2rw_jax import _optional
from l2rw_jax import tfds_source
from l2rw_jax.array_source import NPZ_PREFIX
from l2rw_jax.array_source import Arrays
from l2rw_jax.array_source import check_num_classes
from l2rw_jax.array_source import load_npz
from l2rw_jax.array_source import make_arrays

EMBEDDED = ("digits",)
FOLDER_PREFIX = "folder:"
ALLOWED = (
    "a tfds image-classification dataset name (e.g. mnist, cifar10, kmnist)",
    "digits",
    NPZ_PREFIX + "<path>",
    FOLDER_PREFIX + "<path>",
)
# tfds names: `name`, `name/config`, each optionally `:x.y.z`. Community namespaces
# (`ns:name`) are left out: they would reach the network.
_TFDS_NAME = re.compile(r"[a-z][a-z0-9_]*(/[A-Za-z0-9_.+-]+)?(:\d+\.\d+\.\d+)?\Z")

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
    return Arrays(
        images[train],
        labels[train],
        images[test],
        labels[test],
        DIGITS_NUM_CLASSES,
        "digits",
        class_names=tuple(str(c) for c in range(DIGITS_NUM_CLASSES)),
    )


def check_name(name: str) -> str:
    """Raises ValueError unless `name` has the form of a source (see the module docstring).

    Only the form is checked, without importing tfds: that a tfds name exists and is an image
    classification dataset is checked by `load_arrays`.
    """
    ok = isinstance(name, str) and (
        name in EMBEDDED
        or any(name.startswith(p) and len(name) > len(p) for p in (NPZ_PREFIX, FOLDER_PREFIX))
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
                return os.path.samefile(name_a[len(prefix) :], name_b[len(prefix) :])
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
        check_num_classes(num_classes)
    if not isinstance(download, bool):
        raise ValueError(f"download must be True or False, got {download!r}.")
    if label_key is not None and (name.startswith((NPZ_PREFIX, FOLDER_PREFIX)) or name in EMBEDDED):
        raise ValueError(
            f"label_key={label_key!r} only applies to tfds datasets; {name!r} has one label per "
            f"split (an npz gives its true labels as y_train_true)."
        )
    if name.startswith(NPZ_PREFIX):
        return load_npz(name[len(NPZ_PREFIX) :], num_classes)
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
    return tfds_source.load_builder(
        builder, name, download=download, label_key=label_key, true_label_key=true_label_key
    )


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
        rows = (
            np.unique(
                np.linspace(0, len(x) - 1, min(len(x), FINGERPRINT_SAMPLE_ROWS)).astype(np.int64)
            )
            if len(x)
            else np.zeros(0, np.int64)
        )
        pixels.update(np.ascontiguousarray(x[rows], np.uint8).tobytes())
    labels.update(repr((int(arrays.num_classes), arrays.class_names)).encode())
    return {"shapes": shapes, "labels": labels.hexdigest(), "pixels": pixels.hexdigest()}
