"""Data sources -> numpy arrays: tfds catalog datasets, the embedded digits, a user's npz.

`load_arrays(name)` returns the full train and test sets in memory as uint8 `N x H x W x C`
images and int32 labels, for the corruption and the input pipeline to work on:

- catalog names `mnist`, `fashion_mnist`, `cifar10`, `cifar100`, `svhn_cropped`: read with
  `tfds.builder(name, data_dir=...)`. Data that is not prepared in `data_dir` fails fast (no
  network is touched) unless `download=True` asks tfds to fetch it — which, offline, retries
  for minutes, so it is never the default.
- `digits`: scikit-learn's bundled 8x8 digits through the in-package tfds builder
  (`l2rw_jax.digits_builder`), built into `data_dir` on first use, offline, in seconds.
- `npz:<path>`: a `.npz` with `x_train, y_train, x_test, y_test` (uint8 images `N x H x W` or
  `N x H x W x C`, integer labels), e.g. `npz:../shared/data/mnist/mnist.npz`.

`data_dir=None` means tfds's default (`$TFDS_DATA_DIR`, else `~/tensorflow_datasets`).

tensorflow_datasets (and with it TensorFlow) is imported only when a catalog or digits source is
loaded: npz sources and the module itself need neither (DESIGN §7).
"""

from __future__ import annotations

import os
from typing import NamedTuple

import numpy as np

CATALOG = ("mnist", "fashion_mnist", "cifar10", "cifar100", "svhn_cropped")
EMBEDDED = ("digits",)
NPZ_PREFIX = "npz:"
NPZ_KEYS = ("x_train", "y_train", "x_test", "y_test")
ALLOWED = CATALOG + EMBEDDED + (NPZ_PREFIX + "<path>",)


class Arrays(NamedTuple):
    """A source's full train and test sets."""

    x_train: np.ndarray  # uint8 N x H x W x C
    y_train: np.ndarray  # int32 N
    x_test: np.ndarray  # uint8 T x H x W x C
    y_test: np.ndarray  # int32 T
    num_classes: int
    name: str


def check_name(name: str) -> str:
    """Raises ValueError unless `name` is a catalog name, `digits` or `npz:<path>`."""
    if not isinstance(name, str) or not (
        name in CATALOG + EMBEDDED or (name.startswith(NPZ_PREFIX) and len(name) > len(NPZ_PREFIX))
    ):
        raise ValueError(f"unknown dataset {name!r}; allowed: {', '.join(ALLOWED)}.")
    return name


def load_arrays(
    name: str,
    *,
    data_dir: str | os.PathLike | None = None,
    download: bool = False,
    num_classes: int | None = None,
) -> Arrays:
    """Loads a source's train and test sets into memory.

    Args:
      name: one of `CATALOG`, `digits`, or `npz:<path>`.
      data_dir: tfds data directory (catalog and digits; ignored for npz). None: tfds's default.
      download: catalog only: let tfds download and prepare missing data (needs the internet;
        offline, tfds retries for minutes). False (default): missing data raises at once.
      num_classes: npz only: the number of classes (default: largest label + 1).

    Returns:
      `Arrays` with uint8 `N x H x W x C` images and int32 labels.

    Raises:
      ValueError: unknown name, bad npz content, `num_classes` given for a tfds source.
      FileNotFoundError: catalog data not prepared in `data_dir` (with `download=False`), or a
        missing npz file; the message says where it looked and how to provide the data.
    """
    check_name(name)
    if num_classes is not None and (
        isinstance(num_classes, bool)
        or not isinstance(num_classes, (int, np.integer))
        or num_classes < 2
    ):
        raise ValueError(f"num_classes must be an integer >= 2, got {num_classes!r}.")
    if not isinstance(download, bool):
        raise ValueError(f"download must be True or False, got {download!r}.")
    if name.startswith(NPZ_PREFIX):
        return _load_npz(name[len(NPZ_PREFIX) :], num_classes)
    if num_classes is not None:
        raise ValueError(
            f"num_classes={num_classes!r} only applies to npz sources; {name!r} defines its own."
        )
    import tensorflow_datasets as tfds  # Here, not at the top: npz sources need no TensorFlow.

    from l2rw_jax import digits_builder  # A tfds builder class: imports tfds too.

    if name in EMBEDDED:
        builder = digits_builder.Digits(data_dir=data_dir)
        if not builder.is_prepared():
            try:
                # Local build from scikit-learn's bundled files; never ask GCS for a prepared copy.
                builder.download_and_prepare(
                    download_config=tfds.download.DownloadConfig(try_download_gcs=False)
                )
            except OSError:
                # Another process building the same data_dir may have renamed its copy in first.
                builder = digits_builder.Digits(data_dir=data_dir)
                if not builder.is_prepared():
                    raise
    else:
        builder = tfds.builder(name, data_dir=data_dir)
        if not builder.is_prepared():
            if not download:
                raise FileNotFoundError(_missing_message(name, builder))
            builder.download_and_prepare()
    x_train, y_train = _read_split(builder, "train")
    x_test, y_test = _read_split(builder, "test")
    return Arrays(
        x_train, y_train, x_test, y_test, int(builder.info.features["label"].num_classes), name
    )


def _missing_message(name: str, builder) -> str:
    return (
        f"dataset {name!r} is not prepared in data_dir {os.fspath(builder.data_dir_root)!r} "
        f"(looked for {builder.data_dir}/dataset_info.json) and downloading is off. Provide it "
        f"one of these ways: (1) pass data_dir=<dir> holding a prepared copy (e.g. made with "
        f"`tfds build {name} --data_dir <dir>` on a machine with internet access, then copied), or "
        f"set $TFDS_DATA_DIR; (2) save the arrays as an .npz with keys {', '.join(NPZ_KEYS)} and "
        f"use the dataset name 'npz:/path/file.npz'; (3) use the embedded 'digits', which "
        f"needs no files."
    )


def _read_split(builder, split: str) -> tuple[np.ndarray, np.ndarray]:
    import tensorflow_datasets as tfds

    # In file order (shuffle_files=False), so rows and thus seeded splits are reproducible.
    ds = builder.as_dataset(split=split, as_supervised=True, shuffle_files=False)
    xs, ys = [], []
    for x, y in tfds.as_numpy(ds.batch(8192)):
        xs.append(x)
        ys.append(y)
    shape = tuple(builder.info.features["image"].shape)
    x = np.concatenate(xs) if xs else np.zeros((0,) + shape, np.uint8)
    y = np.concatenate(ys) if ys else np.zeros((0,), np.int64)
    return x.astype(np.uint8, copy=False), y.astype(np.int32)


def _load_npz(path: str, num_classes: int | None) -> Arrays:
    if not os.path.isfile(path):
        raise FileNotFoundError(
            f"npz file {path!r} not found (resolved to "
            f"{os.path.abspath(path)!r}); expected a .npz with keys "
            f"{', '.join(NPZ_KEYS)}."
        )
    with np.load(path, allow_pickle=False) as f:
        missing = [k for k in NPZ_KEYS if k not in f.files]
        if missing:
            raise ValueError(
                f"npz {path!r} is missing key(s) {missing}; it has {sorted(f.files)}, "
                f"needs {list(NPZ_KEYS)}."
            )
        arrays = {k: f[k] for k in NPZ_KEYS}
    images = {}
    for split in ("train", "test"):
        x, y = arrays[f"x_{split}"], arrays[f"y_{split}"]
        if x.dtype != np.uint8 or x.ndim not in (3, 4):
            raise ValueError(
                f"npz {path!r}: x_{split} must be uint8 N x H x W or N x H x W x C, got "
                f"dtype {x.dtype} and shape {x.shape}."
            )
        if y.ndim != 1 or not np.issubdtype(y.dtype, np.integer):
            raise ValueError(
                f"npz {path!r}: y_{split} must be a 1-D integer array, got dtype "
                f"{y.dtype} and shape {y.shape}."
            )
        if len(x) != len(y):
            raise ValueError(
                f"npz {path!r}: x_{split} has {len(x)} images but y_{split} has {len(y)} labels."
            )
        if y.size and y.min() < 0:
            raise ValueError(
                f"npz {path!r}: y_{split} has negative labels, e.g. {int(y.min())}; "
                f"labels must lie in [0, num_classes)."
            )
        images[split] = x[..., None] if x.ndim == 3 else x
    if images["train"].shape[1:] != images["test"].shape[1:]:
        raise ValueError(
            f"npz {path!r}: train images are {images['train'].shape[1:]} but test "
            f"images are {images['test'].shape[1:]}."
        )
    if len(images["train"]) == 0:
        raise ValueError(f"npz {path!r}: x_train is empty.")
    top = int(max(arrays["y_train"].max(), arrays["y_test"].max(initial=0)))
    if num_classes is None:
        num_classes = top + 1
    if top >= num_classes:
        raise ValueError(
            f"npz {path!r}: labels out of range: found label {top}, allowed "
            f"[0, {num_classes}) (num_classes={num_classes})."
        )
    if num_classes < 2:
        raise ValueError(f"npz {path!r}: labels cover a single class ({top}); need at least 2.")
    return Arrays(
        images["train"],
        arrays["y_train"].astype(np.int32),
        images["test"],
        arrays["y_test"].astype(np.int32),
        int(num_classes),
        NPZ_PREFIX + path,
    )
