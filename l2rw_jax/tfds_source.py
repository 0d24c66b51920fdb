"""tfds sources: a tfds image-classification dataset read whole into numpy arrays.

`load_builder` checks a `tfds.core.DatasetBuilder` (`datasets.load_arrays` makes it from the
source's name) and reads its `train` and `test` splits in file order: any dataset whose features
hold one fixed-size uint8 `Image` and a `ClassLabel` (its supervised keys, else `image` and
`label`); anything else is refused with the features it has. Data that is not prepared in the
builder's `data_dir` fails fast (no network is touched) unless `download=True` asks tfds to fetch
it (offline, tfds retries for minutes, so it is never the default). Class names come from the
`ClassLabel`.

Datasets with several label features (cifar10_n: `worse_label`, `aggre_label`, ...) take
`label_key` (the observed training labels) and `true_label_key` (the truth, `Arrays.y_train_true`,
and the test labels); see docs/noise.md.

tensorflow_datasets (and with it TensorFlow) is imported only when called (the package's
`[tfds]` extra; without it, an ImportError that names the extra).
"""

from __future__ import annotations

import os

import numpy as np

from l2rw_jax import _optional
from l2rw_jax.array_source import NPZ_KEYS
from l2rw_jax.array_source import Arrays


def load_builder(
    builder,
    name: str,
    *,
    download: bool = False,
    label_key: str | None = None,
    true_label_key: str | None = "label",
) -> Arrays:
    """A tfds dataset's train and test sets in memory, from its builder.

    Args:
      builder: a `tfds.core.DatasetBuilder` (`tfds.builder(name, data_dir=...)`).
      name: the source's name, for messages and `Arrays.name`.
      download, label_key, true_label_key: as `datasets.load_arrays`'s.

    Returns:
      `Arrays` with uint8 `N x H x W x C` images and int32 labels.

    Raises:
      ValueError: not an image-classification dataset, bad label keys, no train / test split.
      FileNotFoundError: data not prepared (with `download=False`); the message says where it
        looked and how to provide the data.
    """
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
        x_train,
        y_train,
        x_test,
        y_test,
        int(label.num_classes),
        name,
        class_names=names,
        y_train_true=y_true,
    )


def label_feature_keys(
    info, name: str, default_key: str, label_key: str, true_label_key: str | None
) -> None:
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
    if not (isinstance(image, tfds.features.Image) and isinstance(label, tfds.features.ClassLabel)):
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


def _read_split(
    builder, split: str, keys: tuple[str, ...]
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
    ys = tuple(
        (np.concatenate(c) if c else np.zeros((0,), np.int64)).astype(np.int32) for c in cols[1:]
    )
    return x.astype(np.uint8, copy=False), ys
