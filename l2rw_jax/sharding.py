"""Data parallelism: a 1-D device mesh, and host numpy batches placed with the batch axis sharded.

Params and optimizer state live replicated (`replicated_sharding`); batches and per-example
weights are split along the batch axis over the mesh axis "data" (`batch_sharding`). A jitted
step over such arrays is data parallel with no other change (jit + NamedSharding; no pmap).

Multi-host: every process passes its own part of the global batch (what
`input_pipeline` yields for `jax.process_index()`); `shard_batch` assembles the global
`jax.Array` with `jax.make_array_from_process_local_data`, the same call on one process or many.
"""

from __future__ import annotations

import math
from typing import Any, Sequence

import jax
import numpy as np
from jax.sharding import Mesh, NamedSharding, PartitionSpec


def data_mesh(devices: Sequence[jax.Device] | None = None, axis_name: str = "data") -> Mesh:
    """A 1-D mesh over `devices` (default: all of `jax.devices()`, every process's)."""
    devices = jax.devices() if devices is None else list(devices)
    if not devices:
        raise ValueError("data_mesh needs at least one device, got an empty list.")
    if not isinstance(axis_name, str) or not axis_name:
        raise ValueError(f"axis_name must be a non-empty string, got {axis_name!r}.")
    return Mesh(np.asarray(devices), (axis_name,))


def _axis(mesh: Mesh) -> str:
    if len(mesh.axis_names) != 1:
        raise ValueError(f"expected a 1-D data mesh, got axes {mesh.axis_names}.")
    return mesh.axis_names[0]


def batch_sharding(mesh: Mesh) -> NamedSharding:
    """Leading (batch) axis split over the mesh axis, other axes whole."""
    return NamedSharding(mesh, PartitionSpec(_axis(mesh)))


def replicated_sharding(mesh: Mesh) -> NamedSharding:
    """A full copy on every device of the mesh (params, optimizer and model state)."""
    return NamedSharding(mesh, PartitionSpec())


def _batch_splits(sharding: jax.sharding.Sharding) -> int:
    """How many pieces `sharding` cuts the leading axis into (for error messages)."""
    if isinstance(sharding, NamedSharding) and len(sharding.spec) and sharding.spec[0] is not None:
        axes = sharding.spec[0] if isinstance(sharding.spec[0], tuple) else (sharding.spec[0],)
        return math.prod(sharding.mesh.shape[a] for a in axes)
    return len(sharding.device_set)


def shard_batch(batch: Any, sharding: jax.sharding.Sharding) -> Any:
    """Places a host batch (a pytree of numpy arrays, this process's rows) on devices.

    Every leaf must share the leading batch size b; the global batch is b * process_count and
    must divide evenly over the devices `sharding` splits it across. Returns the same pytree of
    global `jax.Array`s with that sharding.

    Raises:
      ValueError: leaves with different batch sizes, or a global batch not divisible by the number
        of devices along the batch axis (raised before anything is transferred).
    """
    leaves, _ = jax.tree.flatten_with_path(batch)
    if not leaves:
        raise ValueError("shard_batch got an empty batch.")
    sizes = {
        jax.tree_util.keystr(path): np.shape(x)[0] if np.ndim(x) else None for path, x in leaves
    }
    if None in sizes.values() or len(set(sizes.values())) != 1:
        got = ", ".join(f"{k}: {v}" for k, v in sizes.items())
        raise ValueError(f"every leaf of the batch needs the same leading batch axis; got {got}.")
    local = next(iter(sizes.values()))
    global_b = local * jax.process_count()
    for path, x in leaves:
        try:
            sharding.shard_shape((global_b,) + tuple(np.shape(x)[1:]))
        except ValueError:
            n = _batch_splits(sharding)
            raise ValueError(
                f"batch size {global_b} (leaf {jax.tree_util.keystr(path)}, {local} per process x "
                f"{jax.process_count()} processes) is not divisible by the {n} devices of the batch "
                f"axis; use a multiple of {n}."
            ) from None
    return jax.tree.map(
        lambda x: jax.make_array_from_process_local_data(sharding, np.asarray(x)), batch
    )
