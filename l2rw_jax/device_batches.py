"""A step's batch built on the devices from placed splits: gather by row, pad-crop + flip,
normalise (jittable: the device backend builds its batches inside its jitted training call,
`l2rw_jax.device_backend`). No TensorFlow is imported.

Gather: the rows of a batch (from `stream_order.StreamOrder`) are looked up by a masked local
lookup on each device followed by a `psum_scatter` over the mesh, so each device ends with its
rows of the batch, which is split along B like the batches of the tf.data path.

Augmentation (`augment_images=True`, pad-4 crop + flip as in `input_pipeline`): same recipe,
a different random source. Row j of global step s of stream t draws its offsets `(oy, ox)` in
`[0, 2 pad]^2` and its flip from `fold_in(fold_in(fold_in(fold_in(key(seed), AUGMENT_TAG), t),
s), j)` (threefry2x32), so the draws are deterministic, depend on (seed, stream, step, row)
only, and not on the number of devices or processes; they are not TensorFlow's draws, so
with augmentation the two backends see the same examples differently cropped.

Normalisation: each uint8 pixel looked up in its member's table of the streams' float32
values (`stream_order.normalization_table`), so without augmentation the images are the
tf.data streams' bit for bit.
"""

from __future__ import annotations

import functools

import chex
import jax
import jax.numpy as jnp
import numpy as np

from l2rw_jax import sharding
from l2rw_jax.device_splits import PRNG_IMPL
from l2rw_jax.device_splits import DeviceSplit
from l2rw_jax.stream_order import StreamOrder

AUGMENT_TAG = 0x4A5547  # Separates the augmentation keys from other uses of key(seed).


def gather(split: DeviceSplit, rows_KxB: jax.Array, mesh: jax.sharding.Mesh) -> dict:
    """Rows `rows_KxB` of each member's columns: `K x B x ...`, split along B over `mesh`.

    Each device looks up the requested rows it holds (zeros elsewhere), then a `psum_scatter`
    over the mesh sums those (one holder per row, so the sum is exact) and leaves each device
    its B / D rows. Images stay uint8 until :func:`normalize`.
    """
    chex.assert_rank(rows_KxB, 2)
    axis = mesh.axis_names[0]
    spec_rows = jax.sharding.PartitionSpec(None, axis)

    def local(columns, rows_Kxb):
        rows_KxB = jax.lax.all_gather(rows_Kxb, axis, axis=1, tiled=True)
        n_local = columns["image"].shape[1]
        r_KxB = rows_KxB - jax.lax.axis_index(axis) * n_local
        here_KxB = (r_KxB >= 0) & (r_KxB < n_local)
        r_KxB = jnp.clip(r_KxB, 0, n_local - 1)

        def take(x):
            got = jax.vmap(lambda x_n, r_B: x_n[r_B])(x, r_KxB)
            here = here_KxB.reshape(here_KxB.shape + (1,) * (got.ndim - 2))
            return jax.lax.psum_scatter(
                jnp.where(here, got, jnp.zeros((), got.dtype)),
                axis,
                scatter_dimension=1,
                tiled=True,
            )

        return {name: take(x) for name, x in columns.items()}

    return jax.shard_map(local, mesh=mesh, in_specs=(spec_rows, spec_rows), out_specs=spec_rows)(
        split.columns, rows_KxB
    )


def augment(
    raw_KxBxHxWxC: jax.Array,
    key_Kx2: jax.Array,
    stream: int,
    step,
    pad: int = 4,
    pad_mode: str = "constant",
) -> jax.Array:
    """Pad-crop + horizontal flip of every row, keyed by (seed, stream, step, row); uint8 in/out.

    Row j of member k is padded by `pad` pixels per side (zeros, or mirrored with
    `pad_mode="reflect"`), cropped to H x W at offset `(oy, ox)` in `[0, 2 pad]^2` and
    mirrored left-right with probability 1/2; the draws come from
    `fold_in(key_k, AUGMENT_TAG, stream, step, j)` (see the module docstring). `step` is the
    stream's global step (a traced int is fine); j is the row in the global batch.
    """
    chex.assert_rank(raw_KxBxHxWxC, 5)
    _, b, h, w, _ = raw_KxBxHxWxC.shape
    width = 2 * pad + 1

    def member(raw_BxHxWxC, key_2):
        key = jax.random.wrap_key_data(key_2, impl=PRNG_IMPL)
        key = jax.random.fold_in(
            jax.random.fold_in(jax.random.fold_in(key, AUGMENT_TAG), stream), step
        )
        keys_B = jax.vmap(lambda j: jax.random.fold_in(key, j))(jnp.arange(b))
        draws_Bx3 = jax.vmap(
            lambda k: jax.random.randint(k, (3,), 0, jnp.array([width, width, 2]))
        )(keys_B)
        mode = "constant" if pad_mode == "constant" else "reflect"
        padded = jnp.pad(raw_BxHxWxC, ((0, 0), (pad, pad), (pad, pad), (0, 0)), mode=mode)

        def crop(img, d_3):
            out = jax.lax.dynamic_slice(img, (d_3[0], d_3[1], 0), (h, w, img.shape[-1]))
            return jnp.where(d_3[2] == 1, out[:, ::-1], out)

        return jax.vmap(crop)(padded, draws_Bx3)

    return jax.vmap(member)(raw_KxBxHxWxC, key_Kx2)


def normalize(raw_KxBxHxWxC: jax.Array, table_Kx256xC: jax.Array) -> jax.Array:
    """float32 images: each uint8 pixel looked up in its member's table (`DeviceSplit`)."""
    chex.assert_rank(raw_KxBxHxWxC, 5)
    chex.assert_shape(table_Kx256xC, (raw_KxBxHxWxC.shape[0], 256, raw_KxBxHxWxC.shape[-1]))
    c = raw_KxBxHxWxC.shape[-1]
    channel = jnp.arange(c, dtype=jnp.int32).reshape((1, 1, 1, c))

    def member(raw_BxHxWxC, table_256xC):
        return table_256xC.reshape(-1)[raw_BxHxWxC.astype(jnp.int32) * c + channel]

    return jax.vmap(member)(raw_KxBxHxWxC, table_Kx256xC)


def make_batch(
    split: DeviceSplit,
    rows_KxB: jax.Array,
    step,
    mesh: jax.sharding.Mesh,
    *,
    stream: int,
    augment_images: bool = False,
    pad: int = 4,
    pad_mode: str = "constant",
    as_training: bool = False,
) -> dict:
    """The batch dict of rows `rows_KxB` at the stream's global `step` (jittable).

    Keys as the tf.data streams (ARCHITECTURE.md "Batch dicts"): `image` float32
    `K x B x H x W x C`, the split's columns (`label`, and for the noisy training set
    `true_label`, `is_noisy` bool) and `index` (= the rows). `as_training` adds
    `true_label = label` and `is_noisy = False` (the clean set trained on, as
    `members.clean_as_training` does).
    """
    cols = gather(split, rows_KxB, mesh)
    raw = cols.pop("image")
    if augment_images:
        raw = augment(raw, split.key_Kx2, stream, step, pad, pad_mode)
    batch = {"image": normalize(raw, split.table_Kx256xC), **cols, "index": rows_KxB}
    if "is_noisy" in batch:
        batch["is_noisy"] = batch["is_noisy"].astype(bool)
    if as_training:
        batch.update(true_label=batch["label"], is_noisy=jnp.zeros_like(batch["label"], bool))
    return batch


def batch_at(
    split: DeviceSplit, orders: list[StreamOrder], step: int, mesh: jax.sharding.Mesh, **options
) -> dict:
    """The batch of global `step` of K members' streams: rows from `orders` (host), the rest on
    the devices (:func:`make_batch`; `options` go there, `stream` from the orders)."""
    rows_Kxb = np.stack([o.rows([step])[0] for o in orders])
    rows = sharding.shard_batch(rows_Kxb, sharding.batch_sharding(mesh, leading_axes=1))
    return _make_batch_jit(split, rows, step, mesh, orders[0].stream, **options)


@functools.partial(
    jax.jit, static_argnames=("mesh", "stream", "augment_images", "pad", "pad_mode", "as_training")
)
def _make_batch_jit(split, rows, step, mesh, stream, **options):
    return make_batch(split, rows, step, mesh, stream=stream, **options)
