"""Shared plumbing of the audit: input checks, pixel normalisation, batched jitted evaluation.

Every audit function works on the pure model interface of `l2rw_jax.models` (ARCHITECTURE.md)
and numpy arrays; it never imports the models:

  apply_fn(params, model_state, x_BxHxWxC, train: bool) -> (logits_BxC, new_model_state)
  feature_fn(params, model_state, x_BxHxWxC, conv_delta=None)
      -> (logits_BxC, {"penultimate": feats_BxD, "conv": fmap_Bxhxwxk})

`feats["penultimate"]` is the input of the output layer (nearest neighbours, MMD-critic);
`feats["conv"]` is the last convolutional feature map, absent for a model without conv layers,
and `conv_delta` is added to it inside the model, so Grad-CAM's d logit / d fmap is the gradient
with respect to `conv_delta` at zero. The audit always evaluates in eval mode (`train=False`)
and ignores the returned model state.

Pixel space. Images arrive *normalised* (as the input pipeline feeds them to the model):
`x = (raw - mean_C) / std_C` with `raw` in [0, 1]. Attacks and saliency baselines are defined in
raw pixel units (epsilon = 8/255 means 8 grey levels) and carried out in the normalised space, where
the L-inf ball of radius eps becomes a per-channel box of half-width `eps / std_C` and the valid
input range becomes `[(0 - mean_C)/std_C, (1 - mean_C)/std_C]`. `mean=0, std=1` means the images
are raw [0, 1] pixels already.
"""

from __future__ import annotations

import functools
from typing import Any, Callable, NamedTuple, Sequence

import jax
import jax.numpy as jnp
import numpy as np
from tqdm import auto as tqdm  # a widget in notebooks, a text bar in a terminal

ApplyFn = Callable[..., Any]
FeatureFn = Callable[..., Any]


class Model(NamedTuple):
    """A trained model as the audit sees it: the pure interface above and its variables.

    `feature_fn` may be None for the analyses that only need logits (the attacks).
    """

    apply_fn: ApplyFn
    params: Any
    model_state: Any
    feature_fn: FeatureFn | None = None


def check_images(x: np.ndarray, name: str = "x") -> np.ndarray:
    """Returns `x` as float32 NHWC, or raises ValueError naming what is wrong."""
    x = np.asarray(x)
    if x.ndim != 4:
        raise ValueError(f"{name} must be a batch of images B x H x W x C, got shape {x.shape}.")
    if x.shape[0] == 0:
        raise ValueError(f"{name} is empty (shape {x.shape}); the audit needs at least one image.")
    if not np.issubdtype(x.dtype, np.floating):
        raise ValueError(f"{name} must be float (normalised pixels), got dtype {x.dtype}.")
    return x.astype(np.float32, copy=False)


def check_labels(
    y: np.ndarray, n: int, num_classes: int | None = None, name: str = "labels"
) -> np.ndarray:
    """Returns `y` as int32 of length n with values in [0, num_classes), else ValueError."""
    y = np.asarray(y)
    if y.ndim != 1 or y.shape[0] != n:
        raise ValueError(f"{name} must have shape ({n},), got {y.shape}.")
    if not np.issubdtype(y.dtype, np.integer):
        raise ValueError(f"{name} must be integers, got dtype {y.dtype}.")
    if num_classes is not None and n and (y.min() < 0 or y.max() >= num_classes):
        raise ValueError(
            f"{name} must lie in [0, {num_classes}), got values in [{y.min()}, {y.max()}]."
        )
    return y.astype(np.int32, copy=False)


def channel_stats(mean: float | Sequence[float], std: float | Sequence[float], channels: int):
    """Per-channel (mean_C, std_C) float32 arrays from scalars or length-C sequences."""
    mean_C = (
        np.broadcast_to(np.asarray(mean, np.float32).reshape(-1), (channels,)).copy()
        if np.size(mean) in (1, channels)
        else None
    )
    std_C = (
        np.broadcast_to(np.asarray(std, np.float32).reshape(-1), (channels,)).copy()
        if np.size(std) in (1, channels)
        else None
    )
    if mean_C is None or std_C is None:
        raise ValueError(
            f"mean/std must be scalars or have one value per channel ({channels}); "
            f"got mean={mean!r}, std={std!r}."
        )
    if np.any(std_C <= 0):
        raise ValueError(f"std must be positive per channel, got {std_C.tolist()}.")
    return mean_C, std_C


def to_raw(x_BxHxWxC: np.ndarray, mean_C: np.ndarray, std_C: np.ndarray) -> np.ndarray:
    """Normalised images -> raw [0, 1] pixels (clipped), for display."""
    raw = x_BxHxWxC * std_C.reshape(1, 1, 1, -1) + mean_C.reshape(1, 1, 1, -1)
    return np.clip(raw, 0.0, 1.0)


def from_raw(raw_BxHxWxC: np.ndarray, mean_C: np.ndarray, std_C: np.ndarray) -> np.ndarray:
    """Raw [0, 1] pixels -> normalised images."""
    return ((raw_BxHxWxC - mean_C.reshape(1, 1, 1, -1)) / std_C.reshape(1, 1, 1, -1)).astype(
        np.float32
    )


def map_batched(
    fn: Callable[..., Any],
    arrays: Sequence[np.ndarray],
    batch_size: int,
    *,
    desc: str | None = None,
    with_index: bool = False,
) -> Any:
    """Applies `fn(*batch_arrays)` (or `fn(batch_number, *batch_arrays)` with `with_index`) over
    fixed-size batches and concatenates the outputs.

    The last batch is padded by repeating its final row so every call has the same shape (one
    compilation per shape); outputs of padding rows are dropped, so no example is lost or counted
    twice. `fn` returns an array or a pytree of arrays with the batch as leading axis.
    """
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}.")
    n = len(arrays[0])
    if any(len(a) != n for a in arrays):
        raise ValueError(
            f"arrays must share their first dimension, got {[len(a) for a in arrays]}."
        )
    outs = []
    starts = range(0, n, batch_size)
    it = tqdm.tqdm(starts, desc=desc, leave=False) if desc else starts
    for number, start in enumerate(it):
        stop = min(start + batch_size, n)
        pad = batch_size - (stop - start)
        batch = [a[start:stop] for a in arrays]
        if pad:
            batch = [np.concatenate([b, np.repeat(b[-1:], pad, axis=0)]) for b in batch]
        out = jax.device_get(fn(number, *batch) if with_index else fn(*batch))
        outs.append(jax.tree.map(lambda o: np.asarray(o)[: stop - start], out))
    return jax.tree.map(lambda *o: np.concatenate(o, axis=0), *outs)


@functools.partial(jax.jit, static_argnums=0)
def _logits_batch(apply_fn, params, model_state, x_BxHxWxC):
    logits_BxC, _ = apply_fn(params, model_state, x_BxHxWxC, False)
    return logits_BxC.astype(jnp.float32)


@functools.partial(jax.jit, static_argnums=0)
def _features_batch(feature_fn, params, model_state, x_BxHxWxC):
    _, feats = feature_fn(params, model_state, x_BxHxWxC)
    f = feats["penultimate"]
    return f.reshape(f.shape[0], -1).astype(jnp.float32)


def predict_logits(
    apply_fn: ApplyFn,
    params,
    model_state,
    x: np.ndarray,
    *,
    batch_size: int = 512,
    desc: str | None = None,
) -> np.ndarray:
    """Logits N x C of `apply_fn` in eval mode over all of `x` (batched, jitted, padded)."""
    x = check_images(x)
    return map_batched(
        lambda xb: _logits_batch(apply_fn, params, model_state, xb), [x], batch_size, desc=desc
    )


def num_classes_of(apply_fn: ApplyFn, params, model_state, x: np.ndarray) -> int:
    """Number of logits of `apply_fn` (by shape inference; no computation)."""
    logits = jax.eval_shape(lambda xx: apply_fn(params, model_state, xx, False)[0], x[:1])
    if len(logits.shape) != 2:
        raise ValueError(f"apply_fn must return logits B x C, got shape {logits.shape}.")
    return int(logits.shape[1])


def check_feature_fn(feature_fn: FeatureFn, params, model_state, x: np.ndarray) -> dict:
    """Shapes of `feature_fn`'s features on one example; ValueError unless it follows the
    contract."""
    out = jax.eval_shape(lambda xx: feature_fn(params, model_state, xx), x[:1])
    if not (
        isinstance(out, tuple)
        and len(out) == 2
        and isinstance(out[1], dict)
        and "penultimate" in out[1]
    ):
        raise ValueError(
            "feature_fn must return (logits_BxC, {'penultimate': feats_BxD, ['conv': "
            f"fmap_Bxhxwxk]}}) as l2rw_jax.models.make_feature_fn does; got {out}."
        )
    return {k: v.shape for k, v in out[1].items()}


def compute_features(
    feature_fn: FeatureFn,
    params,
    model_state,
    x: np.ndarray,
    *,
    batch_size: int = 512,
    desc: str | None = None,
) -> np.ndarray:
    """Penultimate features N x D (flattened) of `feature_fn` over all of `x`."""
    x = check_images(x)
    check_feature_fn(feature_fn, params, model_state, x)
    return map_batched(
        lambda xb: _features_batch(feature_fn, params, model_state, xb), [x], batch_size, desc=desc
    )


def softmax(logits_NxC: np.ndarray) -> np.ndarray:
    """Numerically stable softmax in numpy (float64 for exact metrics)."""
    z = np.asarray(logits_NxC, np.float64)
    z = z - z.max(axis=1, keepdims=True)
    e = np.exp(z)
    return e / e.sum(axis=1, keepdims=True)
