"""The tf.data streams' order and values in numpy, without TensorFlow or JAX.

The device backend (`l2rw_jax.device_backend`, `loop.backend="device"`) feeds the examples the
tf.data streams (`l2rw_jax.input_pipeline`) draw, with the pixel values they compute; this
module computes on the host what that takes: which rows each step of a stream draws
(:class:`StreamOrder`), the streams' normalisation as a table (:func:`normalization_table`)
and the test stream's batches (:func:`test_batches`).

Order: global step s of a stream of N examples and global batch B holds positions
`p = s B + j` (j < B) and position p is example
`index_shuffle(p mod N, key=[seed, 8 (p div N) + stream, 0], max_index=N - 1)`, where
`index_shuffle` is TensorFlow's `RandomIndexShuffle` op with 4 rounds (a Simon block cipher on
the smallest even bit width >= max(log2 N, 16), cycle-walked into [0, N)), reimplemented here
in numpy and checked against the op (tests/test_device_data.py). Row lookup runs on the host
(:class:`StreamOrder`, one table per epoch, cached): cycle-walking is a data-dependent loop,
and the rows of a step are B integers, while the images never leave the devices.

Normalisation: the tf.data streams' float32 `raw * scale_C + shift_C` (with
`input_pipeline.normaliser`'s coefficients), after padding, tabulated for the 256 pixel
values and looked up on the devices (`device_batches.normalize`): a compiler may fuse the
multiply-add into one FMA (XLA on CPU does), which rounds once instead of twice, while the
table holds exactly the streams' values, so without augmentation both backends feed
bit-identical images.
"""

from __future__ import annotations

import math
from collections import OrderedDict

import numpy as np

from l2rw_jax import input_pipeline

TRAIN_STREAM = input_pipeline.TRAIN_STREAM
CLEAN_STREAM = input_pipeline.CLEAN_STREAM

# ----------------------------------------------------------------------------- index_shuffle


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

    def __init__(
        self,
        seed: int,
        stream: int,
        num_rows: int,
        batch_size: int,
        *,
        table: np.ndarray | None = None,
        process_index: int = 0,
        process_count: int = 1,
        cache_size: int = 64,
    ):
        if (
            isinstance(num_rows, bool)
            or not isinstance(num_rows, (int, np.integer))
            or (num_rows < 1)
        ):
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


# ----------------------------------------------------------------------------- values


def normalization_table(mean_KxC, std_KxC, channels: int) -> np.ndarray:
    """float32 `K x 256 x C`: pixel value v of channel c -> `v * scale_c + shift_c`, rounded
    after the product and after the sum as the tf.data streams compute it (no FMA)."""
    v_256x1 = np.arange(256, dtype=np.float32)[:, None]
    tables = []
    for mean, std in zip(mean_KxC, std_KxC):
        scale_C, shift_C = input_pipeline.normaliser(mean, std, channels)
        tables.append((v_256x1 * scale_C[None, :]) + shift_C[None, :])  # two float32 roundings
    return np.stack(tables).astype(np.float32)


def test_batches(
    images_TxHxWxC: np.ndarray,
    labels_T: np.ndarray,
    mean_C,
    std_C,
    batch_size: int,
    *,
    process_index: int = 0,
    process_count: int = 1,
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
        pos_B = np.arange(start, start + batch_size)[
            process_index * local : (process_index + 1) * local
        ]
        row_B = np.minimum(pos_B, t - 1)
        out.append(
            {
                "image": table_256xC[images_TxHxWxC[row_B], channel],
                "label": labels_T[row_B].astype(np.int32),
                "mask": pos_B < t,
            }
        )
    return out
