"""Data parallelism: a 1-D device mesh, and host numpy batches placed with the batch axis sharded.

Params and optimizer state live replicated (`replicated_sharding`); batches and per-example
weights are split along the batch axis over the mesh axis "data" (`batch_sharding`). A jitted
step over such arrays is data parallel with no other change (jit + NamedSharding; no pmap).

Multi-host: every process passes its own part of the global batch (what
`input_pipeline` yields for `jax.process_index()`); `shard_batch` assembles the global
`jax.Array` with `jax.make_array_from_process_local_data`, the same call on one process or many.

Stacked batches: the training loop stacks the batches of K vmapped members (seed axis K) and
of S steps (a step axis), so the batch axis is not always first. `batch_sharding(mesh,
leading_axes=a)` splits axis `a` and keeps the `a` axes before it whole: a member-stacked
`K x B x ...` batch is `leading_axes=1`, a chunk `S x K x B x ...` is `leading_axes=2`, and the
device-resident splits `K x N x ...` of `l2rw_jax.device_splits` are `leading_axes=1`.
"""

from __future__ import annotations

import math
from typing import Any, Sequence

import jax
import numpy as np
from jax.sharding import Mesh, NamedSharding, PartitionSpec


def data_mesh(devices: Sequence[jax.Device] | None = None, axis_name: str = "data") -> Mesh:
    """A 1-D mesh over `devices` (default: all of `jax.devices()`, every process's).

    The devices are ordered by process (stable: each process's in the given order), so
    process p holds block p of every batch axis split over the mesh: the rows
    `[p B / P, (p + 1) B / P)` that the input streams give process p.
    """
    devices = jax.devices() if devices is None else list(devices)
    devices = sorted(devices, key=lambda d: d.process_index)
    if not devices:
        raise ValueError("data_mesh needs at least one device, got an empty list.")
    if not isinstance(axis_name, str) or not axis_name:
        raise ValueError(f"axis_name must be a non-empty string, got {axis_name!r}.")
    return Mesh(np.asarray(devices), (axis_name,))


def _axis(mesh: Mesh) -> str:
    if len(mesh.axis_names) != 1:
        raise ValueError(f"expected a 1-D data mesh, got axes {mesh.axis_names}.")
    return mesh.axis_names[0]


def batch_sharding(mesh: Mesh, leading_axes: int = 0) -> NamedSharding:
    """Batch axis split over the mesh axis, other axes whole.

    The batch axis is axis `leading_axes`: 0 for a plain `B x ...` batch, 1 for the
    member-stacked `K x B x ...` batches of vmapped seeds, 2 for `S x K x B x ...` chunks.
    """
    if isinstance(leading_axes, bool) or not isinstance(leading_axes, int) or leading_axes < 0:
        raise ValueError(f"leading_axes must be an integer >= 0, got {leading_axes!r}.")
    return NamedSharding(mesh, PartitionSpec(*(None,) * leading_axes, _axis(mesh)))


def replicated_sharding(mesh: Mesh) -> NamedSharding:
    """A full copy on every device of the mesh (params, optimizer and model state)."""
    return NamedSharding(mesh, PartitionSpec())


def _batch_axis(sharding: jax.sharding.Sharding) -> int:
    """The batch axis of `sharding`: its first split axis (0 when none is named)."""
    if isinstance(sharding, NamedSharding):
        for axis, entry in enumerate(sharding.spec):
            if entry is not None:
                return axis
    return 0


def _batch_splits(sharding: jax.sharding.Sharding) -> int:
    """How many pieces `sharding` cuts the batch axis into (for error messages)."""
    axis = _batch_axis(sharding)
    if (
        isinstance(sharding, NamedSharding)
        and len(sharding.spec) > axis
        and (sharding.spec[axis] is not None)
    ):
        entry = sharding.spec[axis]
        axes = entry if isinstance(entry, tuple) else (entry,)
        return math.prod(sharding.mesh.shape[a] for a in axes)
    return len(sharding.device_set)


def shard_batch(batch: Any, sharding: jax.sharding.Sharding) -> Any:
    """Places a host batch (a pytree of numpy arrays, this process's rows) on devices.

    Every leaf must share the batch size b on the batch axis of `sharding` (axis 0, or
    `leading_axes` of `batch_sharding`; the axes before it are whole: the seed axis of
    vmapped members, a step axis); the global batch is b * process_count and must divide
    evenly over the devices `sharding` splits it across. Returns the same pytree of global
    `jax.Array`s with that sharding.

    Raises:
      ValueError: leaves with different batch sizes, or a global batch not divisible by the number
        of devices along the batch axis (raised before anything is transferred).
    """
    leaves, _ = jax.tree.flatten_with_path(batch)
    if not leaves:
        raise ValueError("shard_batch got an empty batch.")
    a = _batch_axis(sharding)
    sizes = {
        jax.tree_util.keystr(path): np.shape(x)[a] if np.ndim(x) > a else None for path, x in leaves
    }
    if None in sizes.values() or len(set(sizes.values())) != 1:
        got = ", ".join(f"{k}: {v}" for k, v in sizes.items())
        where = "leading batch axis" if a == 0 else f"batch axis (axis {a})"
        raise ValueError(f"every leaf of the batch needs the same {where}; got {got}.")
    local = next(iter(sizes.values()))
    global_b = local * jax.process_count()
    for path, x in leaves:
        shape = tuple(np.shape(x))
        try:
            sharding.shard_shape(shape[:a] + (global_b,) + shape[a + 1 :])
        except ValueError:
            n = _batch_splits(sharding)
            raise ValueError(
                f"batch size {global_b} (leaf {jax.tree_util.keystr(path)}, {local} per process x "
                f"{jax.process_count()} processes) is not divisible by the {n} devices of the "
                f"batch axis; use a multiple of {n}."
            ) from None
    if jax.process_count() == 1:  # The same arrays; one batched transfer is faster.
        return jax.device_put(batch, sharding)
    return jax.tree.map(
        lambda x: jax.make_array_from_process_local_data(sharding, np.asarray(x)), batch
    )


def shard_members(
    batch: Any, mesh: Mesh, members: slice = slice(None), *, step_axis: bool = False
) -> Any:
    """Places members ``members`` of a host batch stacked over the run's K members.

    The loop's batches carry the members' seed axis K before the batch axis (``K x B x
    ...``), and chunks of S steps a step axis before that (``S x K x B x ...``,
    ``step_axis=True``). This takes the members of one vmapped group along the seed axis and
    places the result with the batch axis split over ``mesh`` (:func:`shard_batch`, so also
    multi-host), the seed and step axes whole.
    """
    seed_axis = 1 if step_axis else 0
    picked = jax.tree.map(lambda x: x[(slice(None),) * seed_axis + (members,)], batch)
    return shard_batch(picked, batch_sharding(mesh, leading_axes=seed_axis + 1))


def replicate(tree: Any, mesh: Mesh) -> Any:
    """A full copy of ``tree`` on every device of ``mesh`` (states, accumulators)."""
    return jax.device_put(tree, replicated_sharding(mesh))


def to_host(tree: Any) -> Any:
    """Numpy copies of ``tree``'s arrays with their global values, on every process.

    A fully replicated or fully addressable array is copied from this process's devices;
    an array split over several processes' devices is gathered
    (``multihost_utils.process_allgather``, a collective: every process calls this in the
    same order, as the training loop does). Copies, so they outlive donated buffers.
    """

    def get(x):
        if not isinstance(x, jax.Array) or x.is_fully_addressable or x.is_fully_replicated:
            return np.array(x)
        from jax.experimental import multihost_utils

        return np.array(multihost_utils.process_allgather(x, tiled=True))

    return jax.tree.map(get, tree)
