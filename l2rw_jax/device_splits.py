"""Splits placed on the devices once: the device backend's data (:class:`DeviceSplit`).

For splits that fit in device memory (every source here: `datasets.load_arrays` reads them
whole) the device backend (`l2rw_jax.device_backend`, `loop.backend="device"`) places K members'
uint8 images and their per-row columns on the devices once, with each member's normalisation
table (`stream_order.normalization_table`) and augmentation key; each step's batch is then
built there (`l2rw_jax.device_batches`). No TensorFlow is imported.

Sharding: a split `K x N x ...` (K members, N rows padded to a multiple of the devices) is
split over the data mesh along N (`sharding.batch_sharding(mesh, leading_axes=1)`); in a
multi-host job each process places only its own block of rows (:func:`place_split`).
"""

from __future__ import annotations

from typing import NamedTuple

import jax
import numpy as np

from l2rw_jax import sharding
from l2rw_jax import stream_order

PRNG_IMPL = "threefry2x32"  # Pinned: the default implementation is a global setting.


class DeviceSplit(NamedTuple):
    """One split of K members, on the devices (a pytree: pass it to jitted functions).

    columns: `image` uint8 `K x Np x H x W x C` and per-row columns `K x Np` (`label` int32,
      maybe `true_label` int32, `is_noisy` uint8), Np = N padded to a multiple of the devices,
      split along Np over the data mesh.
    table_Kx256xC: float32, the normalised value of each pixel value and channel per member.
    key_Kx2: uint32 threefry key data of `key(seed_k)` (augmentation), replicated.
    """

    columns: dict
    table_Kx256xC: jax.Array
    key_Kx2: jax.Array


def place_split(columns: dict, mean_KxC, std_KxC, seeds, mesh: jax.sharding.Mesh) -> DeviceSplit:
    """Places K members' copies of a split on the devices, rows split over `mesh`.

    Args:
      columns: numpy arrays with leading axes `K x N`: `image` uint8 `K x N x H x W x C` and any
        per-row integer or bool columns (`label`, `true_label`, `is_noisy`); bool is stored
        as uint8.
      mean_KxC, std_KxC: per-member normalisation statistics in [0, 1] pixel units.
      seeds: K integers (the members' seeds: augmentation keys).
      mesh: the 1-D data mesh.

    Rows are padded with zeros to a multiple of the mesh size (padding rows are never
    gathered); in a multi-host job each process places only its own block of rows.
    """
    image = np.asarray(columns["image"])
    if image.dtype != np.uint8 or image.ndim != 5:
        raise ValueError(
            f"columns['image'] must be uint8 K x N x H x W x C, got dtype "
            f"{image.dtype} and shape {image.shape}."
        )
    k, n = image.shape[:2]
    for name, x in columns.items():
        if np.shape(x)[:2] != (k, n):
            raise ValueError(
                f"columns[{name!r}] has leading axes {np.shape(x)[:2]}, the images have {(k, n)}."
            )
    if len(seeds) != k:
        raise ValueError(f"got {len(seeds)} seeds for {k} members.")
    devices = mesh.devices.size
    padded = -(-n // devices) * devices
    per_process = padded // jax.process_count()
    lo = jax.process_index() * per_process

    def local_rows(x):
        x = np.asarray(x)
        x = x.astype(np.uint8) if x.dtype == bool else x
        pad = np.zeros((k, padded - n) + x.shape[2:], x.dtype)
        return np.concatenate([x, pad], axis=1)[:, lo : lo + per_process]

    placed = sharding.shard_batch(
        {name: local_rows(x) for name, x in columns.items()},
        sharding.batch_sharding(mesh, leading_axes=1),
    )
    table_Kx256xC = stream_order.normalization_table(mean_KxC, std_KxC, image.shape[-1])
    return DeviceSplit(
        placed,
        *jax.device_put(
            (table_Kx256xC, augmentation_keys(seeds)), sharding.replicated_sharding(mesh)
        ),
    )


def augmentation_keys(seeds) -> np.ndarray:
    """uint32 `K x 2`: the key data of `jax.random.key(seed, impl="threefry2x32")` per seed."""
    return np.stack(
        [np.asarray(jax.random.key_data(jax.random.key(int(s), impl=PRNG_IMPL))) for s in seeds]
    )
