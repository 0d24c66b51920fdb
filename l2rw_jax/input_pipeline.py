"""tf.data streams over a `Splits` -> numpy batch dicts (keys in ARCHITECTURE.md).

Three streams, all built from the in-memory arrays of `corruption.make_splits`:

- train (noisy, infinite): `image, label, true_label, is_noisy, index`;
- clean (infinite): `image, label, index`;
- test (finite, in order): `image, label, mask`, the last batch padded to full size with
  `mask = False` on the padding rows (which repeat the last example), so no example is dropped.

Determinism without hidden state. Global step s of a stream of N examples and global batch B
holds positions `p = s B + j` (j < B); position p is example
`RandomIndexShuffle(p mod N, seed=[seed, 8 (p div N) + stream, 0], max_index=N-1)` (the op
behind `tf.random.experimental.index_shuffle`): a stateless pseudorandom permutation per epoch
`p div N`. Every epoch visits every example exactly once and is reshuffled; batches run across
epoch ends (shuffle, then repeat, then batch; static shapes, nothing dropped); nothing depends
on tf's global seed, thread timing or the process count; `start_step` resumes exactly. Each
step is built whole by one vectorised map (gather, augment, normalise), then prefetched.

Augmentation (`augment=True`, the CIFAR recipe of He et al. 2016 used by the paper): pad each
side by `pad` pixels (zeros by default, `pad_mode="reflect"` mirrors the border), take a random
H x W crop at offset `(oy, ox)` in `[0, 2 pad]^2` and mirror it horizontally with probability
1/2. Zero padding is the default: it is the standard ResNet/WRN CIFAR recipe, and what the
official L2RW code does (`resize_image_with_crop_or_pad` to 36 x 36, i.e. `pad=2` there, with
`mean=0.5, std=0.5`; pass those to reproduce it exactly). The draws are stateless too, keyed
by `[seed, 8 s + 2 + stream]` (offsets) and `[seed, 8 s + 4 + stream]` (flips) for the whole
global batch. Augmentation applies to both training streams (train and clean), never to test.

Normalisation: `x = (raw / 255 - mean_C) / std_C`, float32, with `mean_C, std_C` in [0, 1]
pixel units (the audit's convention); by default computed exactly from the noisy training
images (`channel_stats`), applied after padding (so zero padding is black, not the mean).

Multi-host: every process builds the same global batch of positions and keeps its own rows
`[process_index * B / P, (process_index + 1) * B / P)`; a per-process batch is B / P. Pass
`jax.process_index()` and `jax.process_count()` (this module does not import JAX).

TensorFlow is imported when a stream is built, not with the module: `channel_stats` and the
checks are numpy, and `l2rw_jax` must import on machines without TensorFlow (docs/design.md §7).
`l2rw_jax.stream_order` computes the same example order without TensorFlow.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np

from l2rw_jax import _optional
from l2rw_jax import corruption

if TYPE_CHECKING:
    import tensorflow as tf

PAD_MODES = ("constant", "reflect")
# Stream ids inside the stateless seeds (l2rw_jax.stream_order draws the same order).
TRAIN_STREAM, CLEAN_STREAM = 0, 1
_TRAIN, _CLEAN = TRAIN_STREAM, CLEAN_STREAM


def _tf():
    """TensorFlow, imported on first use (about 5 s, and absent on accelerator hosts)."""
    return _optional.require("tensorflow", "the tf.data input pipeline (loop.backend='tfdata')")


def channel_stats(x_NxHxWxC: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Exact per-channel mean and std of uint8 images, in [0, 1] units: (mean_C, std_C) float32.

    From the 256-bin histogram of each channel (float64 sums), so it is exact and needs no
    float copy of the images.
    """
    x = np.asarray(x_NxHxWxC)
    if x.dtype != np.uint8 or x.ndim != 4 or x.shape[0] == 0:
        raise ValueError(
            f"images must be a non-empty uint8 N x H x W x C array, got dtype {x.dtype} "
            f"and shape {x.shape}."
        )
    v = np.arange(256, dtype=np.float64) / 255.0
    mean, std = [], []
    for c in range(x.shape[-1]):
        h = np.bincount(x[..., c].ravel(), minlength=256).astype(np.float64)
        h /= h.sum()
        m = float(h @ v)
        mean.append(m)
        std.append(float(np.sqrt(max(h @ (v - m) ** 2, 0.0))))
    return np.asarray(mean, np.float32), np.asarray(std, np.float32)


def _check_batch(name: str, batch_size, process_count: int, num_devices: int) -> int:
    if (
        isinstance(batch_size, bool)
        or not isinstance(batch_size, (int, np.integer))
        or batch_size < 1
    ):
        raise ValueError(f"{name} must be a positive integer, got {batch_size!r}.")
    if batch_size % process_count:
        raise ValueError(
            f"{name}={batch_size} is not divisible by the number of processes "
            f"({process_count}); use a multiple of {process_count}."
        )
    if batch_size % num_devices:
        raise ValueError(
            f"{name}={batch_size} is not divisible by the number of devices "
            f"({num_devices}); use a multiple of {num_devices}."
        )
    return int(batch_size)


def _check_processes(process_index, process_count) -> None:
    if (
        isinstance(process_count, bool)
        or not isinstance(process_count, (int, np.integer))
        or process_count < 1
    ):
        raise ValueError(f"process_count must be a positive integer, got {process_count!r}.")
    if (
        isinstance(process_index, bool)
        or not isinstance(process_index, (int, np.integer))
        or not 0 <= process_index < process_count
    ):
        raise ValueError(
            f"process_index must be an integer in [0, {process_count}), got {process_index!r}."
        )


def _check_start_step(start_step) -> None:
    if (
        isinstance(start_step, bool)
        or not isinstance(start_step, (int, np.integer))
        or start_step < 0
    ):
        raise ValueError(f"start_step must be an integer >= 0, got {start_step!r}.")


def _check_seed(seed) -> int:
    if isinstance(seed, bool) or not isinstance(seed, (int, np.integer)) or not 0 <= seed < 2**63:
        raise ValueError(f"seed must be an integer in [0, 2**63), got {seed!r}.")
    return int(seed)


def _check_aug(pad, pad_mode, image_shape=None) -> None:
    if pad_mode not in PAD_MODES:
        raise ValueError(f"pad_mode must be one of {PAD_MODES}, got {pad_mode!r}.")
    if isinstance(pad, bool) or not isinstance(pad, (int, np.integer)) or pad < 0:
        raise ValueError(f"pad must be an integer >= 0, got {pad!r}.")
    if image_shape is not None and pad_mode == "reflect" and pad >= min(image_shape[:2]):
        raise ValueError(
            f"pad={pad} with pad_mode='reflect' needs images larger than {pad} pixels, "
            f"got {image_shape[:2]}."
        )


def normaliser(mean, std, channels: int) -> tuple[np.ndarray, np.ndarray]:
    """(scale_C, shift_C) float32 with x = raw * scale + shift = (raw / 255 - mean) / std.

    Raises ValueError unless mean and std hold 1 or `channels` values, finite, std > 0.
    """
    mean_C = np.asarray(mean, np.float64).reshape(-1)
    std_C = np.asarray(std, np.float64).reshape(-1)
    if mean_C.size not in (1, channels) or std_C.size not in (1, channels):
        raise ValueError(
            f"mean and std need 1 or {channels} values (one per channel), got "
            f"mean={mean!r}, std={std!r}."
        )
    if not np.all(np.isfinite(mean_C)) or not np.all(std_C > 0):
        raise ValueError(f"mean must be finite and std positive, got mean={mean!r}, std={std!r}.")
    mean_C = np.broadcast_to(mean_C, (channels,))
    std_C = np.broadcast_to(std_C, (channels,))
    return (1.0 / (255.0 * std_C)).astype(np.float32), (-mean_C / std_C).astype(np.float32)


def _augment(
    raw_BxHxWxC, step, seed: int, stream: int, global_batch: int, lo: int, pad: int, pad_mode: str
):
    """Random pad-crop and horizontal flip of the rows [lo, lo + b) of the global batch `step`."""
    tf = _tf()
    b = raw_BxHxWxC.shape[0]
    h, w = raw_BxHxWxC.shape[1], raw_BxHxWxC.shape[2]
    seed_t = tf.constant(seed, tf.int64)
    # One draw for the whole global batch, then this process's rows: independent of process count.
    offsets_Gx2 = tf.random.stateless_uniform(
        [global_batch, 2],
        seed=tf.stack([seed_t, 8 * step + 2 + stream]),
        minval=0,
        maxval=2 * pad + 1,
        dtype=tf.int64,
    )
    flip_Gx1 = tf.random.stateless_uniform(
        [global_batch, 1],
        seed=tf.stack([seed_t, 8 * step + 4 + stream]),
        minval=0,
        maxval=2,
        dtype=tf.int64,
    )
    offsets_Bx2 = offsets_Gx2[lo : lo + b]
    flip_Bx1 = flip_Gx1[lo : lo + b] == 1
    padded = tf.pad(
        raw_BxHxWxC,
        [[0, 0], [pad, pad], [pad, pad], [0, 0]],
        mode="CONSTANT" if pad_mode == "constant" else "REFLECT",
    )
    rows_BxH = offsets_Bx2[:, 0:1] + tf.range(h, dtype=tf.int64)[None, :]
    fwd_BxW = offsets_Bx2[:, 1:2] + tf.range(w, dtype=tf.int64)[None, :]
    rev_BxW = offsets_Bx2[:, 1:2] + tf.range(w - 1, -1, -1, dtype=tf.int64)[None, :]
    cols_BxW = tf.where(flip_Bx1, rev_BxW, fwd_BxW)
    out = tf.gather(padded, rows_BxH, axis=1, batch_dims=1)
    return tf.gather(out, cols_BxW, axis=2, batch_dims=1)


def _options() -> tf.data.Options:
    tf = _tf()
    options = tf.data.Options()
    options.deterministic = True
    return options


def _shuffled_stream(
    images: np.ndarray,
    columns: dict,
    *,
    batch_size: int,
    seed: int,
    stream: int,
    augment: bool,
    pad: int,
    pad_mode: str,
    scale_C,
    shift_C,
    process_index: int,
    process_count: int,
    start_step: int,
) -> tf.data.Dataset:
    """Infinite per-process batches: reshuffled every epoch, optional augmentation, normalised."""
    tf = _tf()
    n = len(images)
    local = batch_size // process_count
    lo = process_index * local
    images_t = tf.constant(images)
    columns_t = {k: tf.constant(v) for k, v in columns.items()}
    scale_t, shift_t = tf.constant(scale_C), tf.constant(shift_C)

    def make_batch(step):
        pos_B = step * batch_size + tf.range(lo, lo + local, dtype=tf.int64)
        epoch_B = pos_B // n
        # The raw op: `tf.random.experimental.index_shuffle` mis-pads batched (n x 2) seeds.
        seed_Bx3 = tf.stack(
            [
                tf.fill([local], tf.constant(seed, tf.int64)),
                8 * epoch_B + stream,
                tf.zeros([local], tf.int64),
            ],
            1,
        )
        row_B = tf.raw_ops.RandomIndexShuffle(
            index=pos_B % n,
            seed=seed_Bx3,
            max_index=tf.fill([local], tf.constant(n - 1, tf.int64)),
            rounds=4,
        )
        raw = tf.gather(images_t, row_B)
        if augment:
            raw = _augment(raw, step, seed, stream, batch_size, lo, pad, pad_mode)
        out = {"image": tf.cast(raw, tf.float32) * scale_t + shift_t}
        out.update({k: tf.gather(v, row_B) for k, v in columns_t.items()})
        out["index"] = tf.cast(row_B, tf.int32)
        return out

    ds = tf.data.Dataset.counter(start_step, dtype=tf.int64)
    ds = ds.map(make_batch, num_parallel_calls=tf.data.AUTOTUNE, deterministic=True)
    return ds.prefetch(tf.data.AUTOTUNE).with_options(_options())


def train_dataset(
    splits: corruption.Splits,
    *,
    batch_size: int,
    seed: int,
    mean,
    std,
    augment: bool = False,
    pad: int = 4,
    pad_mode: str = "constant",
    process_index: int = 0,
    process_count: int = 1,
    start_step: int = 0,
) -> tf.data.Dataset:
    """The noisy training stream: `image, label, true_label, is_noisy, index`; see module doc."""
    _check_processes(process_index, process_count)
    _check_batch("batch_size", batch_size, process_count, 1)
    seed = _check_seed(seed)
    _check_start_step(start_step)
    _check_aug(pad, pad_mode, splits.train_x.shape[1:])
    scale_C, shift_C = normaliser(mean, std, splits.train_x.shape[-1])
    columns = {
        "label": splits.train_labels.astype(np.int32),
        "true_label": splits.train_true_labels.astype(np.int32),
        "is_noisy": splits.train_is_noisy.astype(bool),
    }
    return _shuffled_stream(
        splits.train_x,
        columns,
        batch_size=batch_size,
        seed=seed,
        stream=_TRAIN,
        augment=augment,
        pad=pad,
        pad_mode=pad_mode,
        scale_C=scale_C,
        shift_C=shift_C,
        process_index=process_index,
        process_count=process_count,
        start_step=start_step,
    )


def clean_dataset(
    splits: corruption.Splits,
    *,
    batch_size: int,
    seed: int,
    mean,
    std,
    augment: bool = False,
    pad: int = 4,
    pad_mode: str = "constant",
    process_index: int = 0,
    process_count: int = 1,
    start_step: int = 0,
) -> tf.data.Dataset:
    """The clean stream: `image, label, index` (row in the clean set), infinite, reshuffled."""
    _check_processes(process_index, process_count)
    _check_batch("clean_batch_size", batch_size, process_count, 1)
    seed = _check_seed(seed)
    _check_start_step(start_step)
    _check_aug(pad, pad_mode, splits.clean_x.shape[1:])
    scale_C, shift_C = normaliser(mean, std, splits.clean_x.shape[-1])
    return _shuffled_stream(
        splits.clean_x,
        {"label": splits.clean_labels.astype(np.int32)},
        batch_size=batch_size,
        seed=seed,
        stream=_CLEAN,
        augment=augment,
        pad=pad,
        pad_mode=pad_mode,
        scale_C=scale_C,
        shift_C=shift_C,
        process_index=process_index,
        process_count=process_count,
        start_step=start_step,
    )


def test_dataset(
    splits: corruption.Splits,
    *,
    batch_size: int,
    mean,
    std,
    process_index: int = 0,
    process_count: int = 1,
) -> tf.data.Dataset:
    """The test stream, in order: `image, label, mask`; ceil(T / B) batches, the last padded.

    Row j of global batch s is test example `s B + j` when that is < T (`mask` True), else a copy
    of the last example with `mask` False.
    """
    tf = _tf()
    _check_processes(process_index, process_count)
    _check_batch("eval_batch_size", batch_size, process_count, 1)
    scale_C, shift_C = normaliser(mean, std, splits.test_x.shape[-1])
    t = len(splits.test_x)
    if t == 0:
        raise ValueError("the test set is empty.")
    local = batch_size // process_count
    lo = process_index * local
    images_t = tf.constant(splits.test_x)
    labels_t = tf.constant(splits.test_labels.astype(np.int32))
    scale_t, shift_t = tf.constant(scale_C), tf.constant(shift_C)

    def make_batch(step):
        pos_B = step * batch_size + tf.range(lo, lo + local, dtype=tf.int64)
        row_B = tf.minimum(pos_B, t - 1)
        return {
            "image": tf.cast(tf.gather(images_t, row_B), tf.float32) * scale_t + shift_t,
            "label": tf.gather(labels_t, row_B),
            "mask": pos_B < t,
        }

    ds = tf.data.Dataset.range(-(-t // batch_size))
    ds = ds.map(make_batch, num_parallel_calls=tf.data.AUTOTUNE, deterministic=True)
    return ds.prefetch(tf.data.AUTOTUNE).with_options(_options())
