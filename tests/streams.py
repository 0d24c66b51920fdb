"""The three tf.data streams of one dataset, for the input-pipeline tests.

Not a library path: the training loop builds its streams per member
(:mod:`l2rw_jax.tfdata_backend`, from :mod:`l2rw_jax.members`); this helper goes from a dataset
name straight to ``input_pipeline.train_dataset`` / ``clean_dataset`` / ``test_dataset`` so the
tests can check those streams on real sources.
"""

from __future__ import annotations

import os
from typing import Iterable, Iterator, NamedTuple, Sequence

import numpy as np

from l2rw_jax import corruption
from l2rw_jax import datasets
from l2rw_jax.input_pipeline import (
    _check_aug,
    _check_batch,
    _check_processes,
    _check_start_step,
    channel_stats,
    clean_dataset,
    normaliser,
    test_dataset,
    train_dataset,
)


class Streams(NamedTuple):
    """What `make_streams` returns: three numpy batch streams and what a training loop needs."""

    train: Iterator[dict]  # infinite, per-process batches of the noisy training set
    clean: Iterator[dict]  # infinite, per-process batches of the clean set
    test: Iterable[dict]  # finite and re-iterable: `for batch in streams.test:` per evaluation
    num_classes: int
    image_shape: tuple  # H, W, C
    num_train: int
    num_clean: int
    num_test: int
    batch_size: int  # global batch sizes; a process gets batch_size // process_count
    clean_batch_size: int
    eval_batch_size: int
    mean: np.ndarray  # float32 C, [0, 1] pixel units
    std: np.ndarray  # float32 C
    splits: corruption.Splits


def make_streams(
    dataset: str,
    *,
    batch_size: int,
    clean_per_class: int,
    seed: int = 0,
    noise: str = "none",
    ratio: float = 0.0,
    clean_batch_size: int | None = None,
    eval_batch_size: int | None = None,
    augment: bool = False,
    pad: int = 4,
    pad_mode: str = "constant",
    mean: float | Sequence[float] | None = None,
    std: float | Sequence[float] | None = None,
    data_dir: str | os.PathLike | None = None,
    download: bool = False,
    background_class: int | None = None,
    official_convention: bool = False,
    majority_fraction: float | None = None,
    num_train: int = 5000,
    majority_class: int = 9,
    minority_class: int = 4,
    process_index: int = 0,
    process_count: int = 1,
    num_devices: int = 1,
    start_step: int = 0,
) -> Streams:
    """Loads `dataset`, builds its `Splits` and returns the three numpy batch streams.

    `datasets.load_arrays` -> `corruption.make_splits` -> `train_dataset` / `clean_dataset` /
    `test_dataset`, then numpy. Every setting is checked first (before any data is read): a bad
    one raises ValueError naming it. Batch sizes are global: they must divide by `process_count`
    (each process gets its share) and by `num_devices` (`jax.device_count()`), for sharding.
    `clean_batch_size` and `eval_batch_size` default to `batch_size`; `mean`/`std` default to the
    exact per-channel statistics of the noisy training images. `seed` drives both the splits and
    the stream order/augmentation. `start_step` resumes the training streams at that step.
    """
    datasets.check_name(dataset)
    corruption.check_split_args(
        num_classes=None,
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
        clean_given=None,  # Known once the data is loaded: make_splits checks again.
    )
    _check_processes(process_index, process_count)
    if (
        isinstance(num_devices, bool)
        or not isinstance(num_devices, (int, np.integer))
        or num_devices < 1
    ):
        raise ValueError(f"num_devices must be a positive integer, got {num_devices!r}.")
    clean_batch_size = batch_size if clean_batch_size is None else clean_batch_size
    eval_batch_size = batch_size if eval_batch_size is None else eval_batch_size
    for name, b in (
        ("batch_size", batch_size),
        ("clean_batch_size", clean_batch_size),
        ("eval_batch_size", eval_batch_size),
    ):
        _check_batch(name, b, process_count, num_devices)
    _check_aug(pad, pad_mode)
    if not isinstance(augment, bool):
        raise ValueError(f"augment must be True or False, got {augment!r}.")
    _check_start_step(start_step)
    if not isinstance(download, bool):
        raise ValueError(f"download must be True or False, got {download!r}.")
    if (mean is None) != (std is None):
        raise ValueError(f"give both mean and std or neither, got mean={mean!r}, std={std!r}.")

    arrays = datasets.load_arrays(dataset, data_dir=data_dir, download=download)
    splits = corruption.make_splits(
        arrays.x_train,
        arrays.y_train,
        arrays.x_test,
        arrays.y_test,
        num_classes=arrays.num_classes,
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
        x_clean=arrays.x_clean,
        y_clean=arrays.y_clean,
    )
    if mean is None:
        mean, std = channel_stats(splits.train_x)
    channels = splits.train_x.shape[-1]
    scale_C, shift_C = normaliser(mean, std, channels)  # Validates them.
    del scale_C, shift_C
    mean_C = np.broadcast_to(np.asarray(mean, np.float32).reshape(-1), (channels,)).copy()
    std_C = np.broadcast_to(np.asarray(std, np.float32).reshape(-1), (channels,)).copy()
    common = dict(mean=mean_C, std=std_C, process_index=process_index, process_count=process_count)
    aug = dict(augment=augment, pad=pad, pad_mode=pad_mode, seed=seed, start_step=start_step)
    train = train_dataset(splits, batch_size=batch_size, **aug, **common)
    clean = clean_dataset(splits, batch_size=clean_batch_size, **aug, **common)
    test = test_dataset(splits, batch_size=eval_batch_size, **common)
    import tensorflow_datasets as tfds  # Re-iterable numpy view of the test stream.

    return Streams(
        train=train.as_numpy_iterator(),
        clean=clean.as_numpy_iterator(),
        test=tfds.as_numpy(test),
        num_classes=splits.num_classes,
        image_shape=tuple(splits.train_x.shape[1:]),
        num_train=len(splits.train_x),
        num_clean=len(splits.clean_x),
        num_test=len(splits.test_x),
        batch_size=batch_size,
        clean_batch_size=clean_batch_size,
        eval_batch_size=eval_batch_size,
        mean=mean_C,
        std=std_C,
        splits=splits,
    )
