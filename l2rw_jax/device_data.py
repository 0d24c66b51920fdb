"""Device-resident input for in-memory splits: placed once, batches gathered on the devices.

The tf.data streams (`l2rw_jax.input_pipeline`) build every batch on the host and send it to
the devices; for splits that fit in device memory (every source here: `datasets.load_arrays`
reads them whole) this module places the uint8 images and their columns on the devices once
and builds each step's batch there: gather by row, pad-crop + flip, normalise. The training
loop runs `steps_per_call` such steps per jitted call under `lax.scan`
(`l2rw_jax.backends`, `loop.backend="device"`). No TensorFlow is imported.

Order: the same examples as the tf.data streams. Global step s of a stream of N examples and
global batch B holds positions `p = s B + j` (j < B) and position p is example
`index_shuffle(p mod N, key=[seed, 8 (p div N) + stream, 0], max_index=N - 1)`, where
`index_shuffle` is TensorFlow's `RandomIndexShuffle` op with 4 rounds (a Simon block cipher on
the smallest even bit width >= max(log2 N, 16), cycle-walked into [0, N)), reimplemented here
in numpy and checked against the op (tests/test_device_data.py). Row lookup runs on the host
(:class:`StreamOrder`, one table per epoch, cached): cycle-walking is a data-dependent loop,
and the rows of a step are B integers, while the images never leave the devices.

Augmentation (`augment=True`, pad-4 crop + flip as in `input_pipeline`): same recipe, a
different random source. Row j of global step s of stream t draws its offsets `(oy, ox)` in
`[0, 2 pad]^2` and its flip from `fold_in(fold_in(fold_in(fold_in(key(seed), AUGMENT_TAG), t),
s), j)` (threefry2x32), so the draws are deterministic, depend on (seed, stream, step, row)
only, and not on the number of devices or processes; they are not TensorFlow's draws, so
with augmentation the two backends see the same examples differently cropped.

Normalisation: the tf.data streams' float32 `raw * scale_C + shift_C` (with
`input_pipeline.normaliser`'s coefficients), after padding, tabulated on the host for the 256
pixel values and looked up on the device: a compiler may fuse the multiply-add into one FMA
(XLA on CPU does), which rounds once instead of twice, while the table holds exactly the
streams' values, so without augmentation both backends feed bit-identical images.

Sharding: a split `K x N x ...` (K members, N rows padded to a multiple of the devices) is
split over the data mesh along N (`sharding.batch_sharding(mesh, leading_axes=1)`); in a
multi-host job each process places only its own block of rows (:func:`place_split`). A batch
is gathered by a masked local lookup on each device followed by a `psum_scatter` over the
mesh, so each device ends with its rows of the batch, which is split along B like the batches
of the tf.data path.
"""
from __future__ import annotations

import functools
import math
from collections import OrderedDict
from typing import Callable, NamedTuple

import chex
import jax
import jax.numpy as jnp
import numpy as np

from l2rw_jax import input_pipeline
from l2rw_jax import sharding
from l2rw_jax import xla_options

TRAIN_STREAM = input_pipeline.TRAIN_STREAM
CLEAN_STREAM = input_pipeline.CLEAN_STREAM
AUGMENT_TAG = 0x4A5547  # Separates the augmentation keys from other uses of key(seed).
_PRNG_IMPL = "threefry2x32"  # Pinned: the default implementation is a global setting.

# ----------------------------------------------------------------------------- order (host)


def _word_bits(max_index: int) -> int:
    """Half the cipher's block width: TF's `max(ceil(log2 max_index) rounded up to even, 16)`."""
    bits = int(math.ceil(math.log2(max_index)))
    return max(bits + bits % 2, 16) // 2


def _round_keys(key: tuple[int, int, int], w: int, rounds: int) -> tuple[int, ...]:
    """Simon key schedule on w-bit words; each key word is cast to uint32, then to w bits."""
    mask = (1 << w) - 1
    rk = [(int(k) & 0xFFFFFFFF) & mask for k in key]
    c, z = 0xFFFFFFFC & mask, 0x7369F885192C0EF5 & mask
    rotr = lambda x, r: ((x >> r) | (x << (w - r))) & mask
    for i in range(3, rounds):
        rk.append(c ^ (z & 1) ^ rk[i - 3] ^ rotr(rk[i - 1], 3) ^ rotr(rk[i - 1], 4))
        z >>= 1
    return tuple(rk)


def _encrypt(v: np.ndarray, w: int, rk: tuple[int, ...]) -> np.ndarray:
    """The Simon Feistel rounds on uint64 values of 2w bits (higher bits are dropped)."""
    mask, wu = np.uint64((1 << w) - 1), np.uint64(w)

    def rotl(x, r):
        return ((x << np.uint64(r)) | (x >> (wu - np.uint64(r)))) & mask

    def f(x):
        return (rotl(x, 1) & rotl(x, 8)) ^ rotl(x, 2)

    left, right = (v >> wu) & mask, v & mask
    for i in range(0, len(rk), 2):
        left = left ^ f(right) ^ np.uint64(rk[i])
        right = right ^ f(left) ^ np.uint64(rk[i + 1])
    return (left << wu) | right


def _permutation(w: int, rk: tuple[int, ...], max_index: int) -> np.ndarray:
    """`index_shuffle(i)` for i in [0, min(max_index + 1, 2^2w)), int64."""
    n = min(max_index + 1, 1 << (2 * w))
    if w == 8:
        # Small sets (N <= 2^16) in a 2^16 domain: a walk into [0, N) can take thousands of
        # steps, so tabulate the cipher on the whole domain (the round function of an 8-bit
        # half is a 256-entry table) and follow it by pointer doubling (<= 17 rounds): a_v
        # jumps over out-of-range values, doubling its reach each round.
        half = np.arange(256, dtype=np.int32)
        f_256 = ((((half << 1) | (half >> 7)) & 255) & half) ^ (((half << 2) | (half >> 6)) & 255)
        left, right = np.repeat(half, 256), np.tile(half, 256)
        for i in range(0, len(rk), 2):
            left = left ^ f_256[right] ^ rk[i]
            right = right ^ f_256[left] ^ rk[i + 1]
        a = (left << 8) | right
        while np.any(a[:n] > max_index):
            a = np.where(a > max_index, a[a], a)
        return a[:n].astype(np.int64)
    # Larger sets fill at least a quarter of the domain: walk directly.
    out = _encrypt(np.arange(n, dtype=np.uint64), w, rk)
    todo = np.flatnonzero(out > max_index)
    while todo.size:
        out[todo] = _encrypt(out[todo], w, rk)
        todo = todo[out[todo] > max_index]
    return out.astype(np.int64)


def index_shuffle(index, key, max_index: int, rounds: int = 4) -> np.ndarray:
    """TensorFlow's `RandomIndexShuffle(index, seed=key, max_index, rounds)`, in numpy.

    The position of `index` in a pseudorandom permutation of `[0, max_index]` keyed by the
    three integers `key` (TF casts each to uint32). Exactly the op's values (a Simon cipher
    of block width `max(ceil(log2 max_index) rounded up to even, 16)` bits, cycle-walked),
    including its quirks: only the low `width / 2` bits of each key word matter.

    Args:
      index: integer array, values in `[0, max_index]`.
      key: three integers.
      max_index: integer >= 0.
      rounds: even integer >= 4.

    Returns:
      int64 array shaped like `index`.
    """
    index = np.asarray(index)
    if not np.issubdtype(index.dtype, np.integer):
        raise ValueError(f"index must be an integer array, got dtype {index.dtype}.")
    if isinstance(max_index, bool) or not isinstance(max_index, (int, np.integer)) or max_index < 0:
        raise ValueError(f"max_index must be an integer >= 0, got {max_index!r}.")
    if isinstance(rounds, bool) or not isinstance(rounds, int) or rounds < 4 or rounds % 2:
        raise ValueError(f"rounds must be an even integer >= 4, got {rounds!r}.")
    if len(key) != 3:
        raise ValueError(f"key must hold three integers, got {key!r}.")
    if max_index == 0:
        return np.zeros(index.shape, np.int64)
    w = _word_bits(int(max_index))
    table = _permutation(w, _round_keys(tuple(key), w, rounds), int(max_index))
    return table[index.astype(np.uint64) & np.uint64((1 << (2 * w)) - 1)]


class StreamOrder:
    """Rows of one member's stream, step by step: the order of `input_pipeline`'s streams.

    `rows(steps)` gives, for each global step s in `steps`, the rows of positions
    `s B + lo ... s B + lo + b - 1` (this process's share: `b = B / process_count`,
    `lo = process_index * b`), mapped through `table` when given (e.g. the class-balanced rows
    of `resample`: the stream then runs over `len(table)` positions per epoch). Epoch
    permutations are cached (the newest `cache_size`); the order is a pure function of
    (seed, stream, N, B), the cache only saves time.
    """

    def __init__(self, seed: int, stream: int, num_rows: int, batch_size: int, *,
                 table: np.ndarray | None = None, process_index: int = 0,
                 process_count: int = 1, cache_size: int = 64):
        if isinstance(num_rows, bool) or not isinstance(num_rows, (int, np.integer)) or (
                num_rows < 1):
            raise ValueError(f"num_rows must be an integer >= 1, got {num_rows!r}.")
        if table is not None and len(table) != num_rows:
            raise ValueError(f"table has {len(table)} rows, num_rows is {num_rows}.")
        input_pipeline._check_processes(process_index, process_count)
        input_pipeline._check_batch("batch_size", batch_size, process_count, 1)
        self.seed = input_pipeline._check_seed(seed)
        self.stream, self.num_rows, self.batch_size = int(stream), int(num_rows), int(batch_size)
        self.table = None if table is None else np.asarray(table, np.int64)
        local = self.batch_size // process_count
        self._offsets_b = np.arange(process_index * local, (process_index + 1) * local)
        self._cache: OrderedDict = OrderedDict()
        self._cache_size = cache_size

    def _epoch(self, epoch: int) -> np.ndarray:
        n = self.num_rows
        if n == 1:
            return np.zeros(1, np.int64)
        w = _word_bits(n - 1)
        # The key as TF sees it (only the low w bits of each word): epochs whose keys agree
        # there share a permutation (every 32 epochs when N <= 2^16).
        rk = _round_keys((self.seed, 8 * epoch + self.stream, 0), w, 4)
        if rk not in self._cache:
            if len(self._cache) >= self._cache_size:
                self._cache.popitem(last=False)
            self._cache[rk] = _permutation(w, rk, n - 1)
        self._cache.move_to_end(rk)
        return self._cache[rk]

    def rows(self, steps) -> np.ndarray:
        """int32 `S x b`: the rows of this process's share of each of the S global `steps`."""
        steps_S = np.asarray(steps, np.int64).reshape(-1)
        if steps_S.size and steps_S.min() < 0:
            raise ValueError(f"steps must be >= 0, got {steps_S.min()}.")
        pos_Sxb = steps_S[:, None] * self.batch_size + self._offsets_b[None, :]
        epoch_Sxb, within_Sxb = np.divmod(pos_Sxb, self.num_rows)
        rows_Sxb = np.empty(pos_Sxb.shape, np.int64)
        for e in np.unique(epoch_Sxb):
            at = epoch_Sxb == e
            perm = self._epoch(int(e))
            # % len: TF drops the bits above the cipher's block (only N = 2^16 + 1 has any).
            rows_Sxb[at] = perm[within_Sxb[at] % len(perm)]
        if self.table is not None:
            rows_Sxb = self.table[rows_Sxb]
        return rows_Sxb.astype(np.int32)


# ----------------------------------------------------------------------------- placement


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


def place_split(columns: dict, mean_KxC, std_KxC, seeds, mesh: jax.sharding.Mesh
                ) -> DeviceSplit:
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
        raise ValueError(f"columns['image'] must be uint8 K x N x H x W x C, got dtype "
                         f"{image.dtype} and shape {image.shape}.")
    k, n = image.shape[:2]
    for name, x in columns.items():
        if np.shape(x)[:2] != (k, n):
            raise ValueError(f"columns[{name!r}] has leading axes {np.shape(x)[:2]}, the images "
                             f"have {(k, n)}.")
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
        return np.concatenate([x, pad], axis=1)[:, lo:lo + per_process]

    placed = sharding.shard_batch({name: local_rows(x) for name, x in columns.items()},
                                  sharding.batch_sharding(mesh, leading_axes=1))
    return DeviceSplit(placed, *jax.device_put(
        (normalization_table(mean_KxC, std_KxC, image.shape[-1]), augmentation_keys(seeds)),
        sharding.replicated_sharding(mesh)))


def normalization_table(mean_KxC, std_KxC, channels: int) -> np.ndarray:
    """float32 `K x 256 x C`: pixel value v of channel c -> `v * scale_c + shift_c`, rounded
    after the product and after the sum as the tf.data streams compute it (no FMA)."""
    v_256x1 = np.arange(256, dtype=np.float32)[:, None]
    tables = []
    for mean, std in zip(mean_KxC, std_KxC):
        scale_C, shift_C = input_pipeline.normaliser(mean, std, channels)
        tables.append((v_256x1 * scale_C[None, :]) + shift_C[None, :])  # two float32 roundings
    return np.stack(tables).astype(np.float32)


def augmentation_keys(seeds) -> np.ndarray:
    """uint32 `K x 2`: the key data of `jax.random.key(seed, impl="threefry2x32")` per seed."""
    return np.stack([np.asarray(jax.random.key_data(jax.random.key(int(s), impl=_PRNG_IMPL)))
                     for s in seeds])


def test_batches(images_TxHxWxC: np.ndarray, labels_T: np.ndarray, mean_C, std_C,
                 batch_size: int, *, process_index: int = 0, process_count: int = 1
                 ) -> list[dict]:
    """`input_pipeline.test_dataset`'s batches in numpy: `image, label, mask`, in order.

    ceil(T / B) global batches; row j of batch s is example `s B + j` when that is < T
    (`mask` True), else a copy of the last example (`mask` False). Each process gets its
    rows `[process_index b, (process_index + 1) b)` of every batch, `b = B / process_count`
    (as the stream). Images normalised with the same float32 arithmetic
    (:func:`normalization_table`), so the values are the stream's.
    """
    t = len(labels_T)
    if t == 0:
        raise ValueError("the test set is empty.")
    input_pipeline._check_processes(process_index, process_count)
    input_pipeline._check_batch("eval_batch_size", batch_size, process_count, 1)
    local = batch_size // process_count
    table_256xC = normalization_table([mean_C], [std_C], images_TxHxWxC.shape[-1])[0]
    channel = np.arange(images_TxHxWxC.shape[-1])
    out = []
    for start in range(0, t, batch_size):
        pos_B = np.arange(start, start + batch_size)[process_index * local:
                                                     (process_index + 1) * local]
        row_B = np.minimum(pos_B, t - 1)
        out.append({"image": table_256xC[images_TxHxWxC[row_B], channel],
                    "label": labels_T[row_B].astype(np.int32), "mask": pos_B < t})
    return out


# ----------------------------------------------------------------------------- on device


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
            return jax.lax.psum_scatter(jnp.where(here, got, jnp.zeros((), got.dtype)), axis,
                                        scatter_dimension=1, tiled=True)

        return {name: take(x) for name, x in columns.items()}

    return jax.shard_map(local, mesh=mesh, in_specs=(spec_rows, spec_rows),
                         out_specs=spec_rows)(split.columns, rows_KxB)


def augment(raw_KxBxHxWxC: jax.Array, key_Kx2: jax.Array, stream: int, step,
            pad: int = 4, pad_mode: str = "constant") -> jax.Array:
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
        key = jax.random.wrap_key_data(key_2, impl=_PRNG_IMPL)
        key = jax.random.fold_in(jax.random.fold_in(jax.random.fold_in(
            key, AUGMENT_TAG), stream), step)
        keys_B = jax.vmap(lambda j: jax.random.fold_in(key, j))(jnp.arange(b))
        draws_Bx3 = jax.vmap(lambda k: jax.random.randint(
            k, (3,), 0, jnp.array([width, width, 2])))(keys_B)
        mode = "constant" if pad_mode == "constant" else "reflect"
        padded = jnp.pad(raw_BxHxWxC, ((0, 0), (pad, pad), (pad, pad), (0, 0)), mode=mode)

        def crop(img, d_3):
            out = jax.lax.dynamic_slice(img, (d_3[0], d_3[1], 0), (h, w, img.shape[-1]))
            return jnp.where(d_3[2] == 1, out[:, ::-1], out)

        return jax.vmap(crop)(padded, draws_Bx3)

    return jax.vmap(member)(raw_KxBxHxWxC, key_Kx2)


def normalize(raw_KxBxHxWxC: jax.Array, table_Kx256xC: jax.Array) -> jax.Array:
    """float32 images: each uint8 pixel looked up in its member's :func:`normalization_table`."""
    chex.assert_rank(raw_KxBxHxWxC, 5)
    chex.assert_shape(table_Kx256xC, (raw_KxBxHxWxC.shape[0], 256, raw_KxBxHxWxC.shape[-1]))
    c = raw_KxBxHxWxC.shape[-1]
    channel = jnp.arange(c, dtype=jnp.int32).reshape((1, 1, 1, c))

    def member(raw_BxHxWxC, table_256xC):
        return table_256xC.reshape(-1)[raw_BxHxWxC.astype(jnp.int32) * c + channel]

    return jax.vmap(member)(raw_KxBxHxWxC, table_Kx256xC)


def make_batch(split: DeviceSplit, rows_KxB: jax.Array, step, mesh: jax.sharding.Mesh, *,
               stream: int, augment_images: bool = False, pad: int = 4,
               pad_mode: str = "constant", as_training: bool = False) -> dict:
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
    batch = {"image": normalize(raw, split.table_Kx256xC), **cols,
             "index": rows_KxB}
    if "is_noisy" in batch:
        batch["is_noisy"] = batch["is_noisy"].astype(bool)
    if as_training:
        batch.update(true_label=batch["label"], is_noisy=jnp.zeros_like(batch["label"], bool))
    return batch


def batch_at(split: DeviceSplit, orders: list[StreamOrder], step: int,
             mesh: jax.sharding.Mesh, **options) -> dict:
    """The batch of global `step` of K members' streams: rows from `orders` (host), the rest on
    the devices (:func:`make_batch`; `options` go there, `stream` from the orders)."""
    rows_Kxb = np.stack([o.rows([step])[0] for o in orders])
    rows = sharding.shard_batch(rows_Kxb, sharding.batch_sharding(mesh, leading_axes=1))
    return _make_batch_jit(split, rows, step, mesh, orders[0].stream, **options)


@functools.partial(jax.jit, static_argnames=("mesh", "stream", "augment_images", "pad",
                                             "pad_mode", "as_training"))
def _make_batch_jit(split, rows, step, mesh, stream, **options):
    return make_batch(split, rows, step, mesh, stream=stream, **options)


def make_train_call(member_step: Callable, mesh: jax.sharding.Mesh, *, clean_phase: bool,
                    augment_images: bool, pad: int, pad_mode: str, log_every: int,
                    total_steps: int, scan: bool = True) -> Callable:
    """The training loop's call: S steps of K vmapped members, batches built on the devices.

    `call(carry, noisy, clean, rows_train_SxKxB, rows_clean_SxKxM, steps_S, phase_first,
    num_steps=S) -> (carry, msum_S)`, with `carry = (state, acc, msum)` of the loop
    (`build.make_loop_step`; every leaf with a leading member axis K), `noisy` / `clean` the
    placed splits, the rows of each step from :class:`StreamOrder` (placed) and `steps_S` the
    global steps. Step i trains on the noisy split (or, `clean_phase`, on the clean split as
    training data) at stream step `steps_S[i] - phase_first` and on the clean split at
    `steps_S[i]`, then adds its metrics to `msum`; after a step that ends a logging interval
    (`(t + 1) % log_every == 0` or `t + 1 == total_steps`) `msum` restarts from zero, as the
    tf.data loop resets it.
    `msum_S[i]` is `msum` after step i, before that reset: the host reads the rows of the
    logging steps. The carry is donated.

    `scan=True`: one jitted call runs the S steps under `lax.scan` (one dispatch per call;
    `num_steps` must be S: each S compiles once).
    `scan=False`: the call dispatches a jitted single step for the first `num_steps` of the S
    rows (`msum_S` is then a list; pad the rows to one S and nothing recompiles);
    for XLA:CPU with convolutional models, where a convolution inside a loop body misses the
    fast kernels (XLA's CPU ConvCanonicalization rewrites top-level convolutions only, so the
    kernel-gradient convolution of a loop body runs on a generic path, 10-50x slower:
    jax-ml/jax#12868) and a scan would be slower than dispatching. Same numbers either way.
    """
    step_K = jax.vmap(member_step)
    batch_options = dict(augment_images=augment_images, pad=pad, pad_mode=pad_mode)

    def body(carry, noisy, clean, rows_train_Kxb, rows_clean_Kxm, t, phase_first):
        batch = make_batch(clean if clean_phase else noisy, rows_train_Kxb, t - phase_first,
                           mesh, stream=TRAIN_STREAM, as_training=clean_phase, **batch_options)
        val_batch = make_batch(clean, rows_clean_Kxm, t, mesh, stream=CLEAN_STREAM,
                               **batch_options)
        state, acc, msum = step_K(*carry, batch, val_batch)
        ends_log = ((t + 1) % log_every == 0) | (t + 1 == total_steps)
        restart = jax.tree.map(lambda m: jnp.where(ends_log, jnp.zeros_like(m), m), msum)
        return (state, acc, restart), msum

    # The library's step options (on CPU: parallel convolutions), as the tf.data loop's step.
    jit = functools.partial(xla_options.jit, donate_argnums=0)

    if not scan:
        @jit
        def one(carry, noisy, clean, rows_train, rows_clean, steps_S, phase_first, i):
            return body(carry, noisy, clean, rows_train[i], rows_clean[i], steps_S[i],
                        phase_first)

        def dispatch(carry, noisy, clean, rows_train, rows_clean, steps_S, phase_first,
                     num_steps=None):
            num_steps = len(steps_S) if num_steps is None else num_steps
            steps_S, phase_first = jax.device_put((steps_S, phase_first))  # Sent once.
            msum_S = []
            for i in range(num_steps):
                carry, msum = one(carry, noisy, clean, rows_train, rows_clean, steps_S,
                                  phase_first, np.int32(i))
                msum_S.append(msum)
            return carry, msum_S

        return dispatch

    @jit
    def scanned(carry, noisy, clean, rows_train, rows_clean, steps_S, phase_first):
        def scan_body(carry, x):
            return body(carry, noisy, clean, *x, phase_first)

        return jax.lax.scan(scan_body, carry, (rows_train, rows_clean, steps_S))

    def call(carry, noisy, clean, rows_train, rows_clean, steps_S, phase_first,
             num_steps=None):
        if num_steps not in (None, len(steps_S)):
            raise ValueError(f"a scanned call runs all its {len(steps_S)} steps, got "
                             f"num_steps={num_steps}.")
        return scanned(carry, noisy, clean, rows_train, rows_clean, steps_S, phase_first)

    return call


def has_convolution(fn: Callable, *args) -> bool:
    """Whether `fn(*args)` traces to a convolution, sub-computations (vmap, cond, grad) included.

    Arguments may be `jax.ShapeDtypeStruct`s: only the jaxpr is built.
    """

    def found(jaxpr) -> bool:
        for eqn in jaxpr.eqns:
            if eqn.primitive.name == "conv_general_dilated":
                return True
            for param in eqn.params.values():
                for sub in (param if isinstance(param, (tuple, list)) else (param,)):
                    if hasattr(sub, "eqns") and found(sub):  # a (closed) sub-jaxpr
                        return True
        return False

    return found(jax.make_jaxpr(fn)(*args))
