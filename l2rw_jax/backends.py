"""The loop's two input backends behind one interface, :class:`Backend` (a NamedTuple of
functions, as optax's ``GradientTransformation``): ``require()`` fails at once where the
backend's packages are missing, ``eval_batches(members, feed)`` gives the evaluation batches and
``train_calls(...)`` the training calls, each a :class:`Call` whose ``advance(carries) ->
(carries after num_steps steps, msum_S per group)``: ``msum_S`` holds the step metrics summed
since the last log after each of the call's steps (read with :func:`step_sums`), and the
carries' ``msum`` restarts from zero after every step that ends a logging interval. The loop
picks one by name (:func:`get`) and never asks which it runs.

- ``device`` (:mod:`l2rw_jax.device_splits`, :mod:`l2rw_jax.device_batches`,
  :mod:`l2rw_jax.stream_order`, :mod:`l2rw_jax.device_call`): every group's noisy and clean
  splits are placed on the devices once; each call builds its batches there and runs up to
  ``steps_per_call`` steps (``lax.scan``, ``device_call.make_train_call``), ending at every
  evaluation, checkpoint, phase end and stop. No TensorFlow.
- ``tfdata`` (:mod:`l2rw_jax.input_pipeline`): the members' tf.data streams are stacked over
  the seed axis, read in chunks of ``steps_per_fetch`` steps by a background thread
  (:func:`prefetch`) which places each chunk on the devices a chunk ahead; one step per call.

Both draw the same examples at each (seed, step): the streams are stateless functions of
(seed, step), so a resumed run restarts them at its checkpoint's step. Every batch is placed
through :mod:`l2rw_jax.sharding` (the seed axis of vmapped members and the step axis of a
chunk kept whole, the batch axis split over the data mesh).
"""

from __future__ import annotations

import functools
import queue
import threading
from typing import Callable, Iterator, NamedTuple

import jax
import numpy as np

from l2rw_jax import _optional
from l2rw_jax import device_call
from l2rw_jax import device_splits
from l2rw_jax import input_pipeline
from l2rw_jax import members as members_lib
from l2rw_jax import sharding
from l2rw_jax import stream_order
from l2rw_jax import xla_options

EVAL_SPLITS = ("test", "hyperval", "selection")
TFDATA = "the tfdata input backend (loop.backend='tfdata')"  # what needs TensorFlow


class Feed(NamedTuple):
    """What the backends need to know of the run (built by ``compose.feed``)."""

    backend: str  # "device" or "tfdata": the name of its Backend (get)
    phases: list  # members.phases: [(phase, first step, end step)]
    batch_size: int
    clean_batch_size: int
    eval_batch_size: int
    augment: bool
    resample: bool  # the noisy phase trains on members.balanced_rows
    hyperval: bool  # evaluate the hyper-validation hold-out too
    log_every: int
    eval_every: int
    checkpoint_every: int
    steps_per_call: int  # device
    steps_per_fetch: int  # tfdata
    selection: bool = False  # evaluate the clean selection hold-out too

    @property
    def total_steps(self) -> int:
        return self.phases[-1][2]


class Call(NamedTuple):
    """One training call of the loop: ``num_steps`` steps of ``phase`` ("noisy" or "clean").

    ``advance(carries) -> (carries, msum_S per group)``: every group's carry ``(state, acc,
    msum)`` after the call's steps (dispatched, not waited for), and per group the metric sums
    after each step (:func:`step_sums`).
    """

    phase: str
    num_steps: int
    advance: Callable


class Backend(NamedTuple):
    """An input backend as the training loop sees it; both backends are one (:func:`get`).

    require: ``() -> None``; raises the extra's one-line ImportError where a package the
      backend imports is missing (call it before loading data).
    eval_batches: ``(members, feed) -> {split: numpy batches stacked over the members}`` of the
      test set (and the hold-out): small and fixed, materialised once; the last batch padded
      and masked; this process's rows of each global batch (``sharding.shard_batch``
      assembles them).
    train_calls: ``(make_member_step, members, groups, mesh, feed, start_step, stop_at, scan)
      -> (calls, close)``: an iterator of :class:`Call` from ``start_step`` up to ``stop_at``,
      and a function that stops the backend's work (the tf.data reader thread). Arguments:
      ``make_member_step``: ``accumulate -> member_step(state, acc, msum, batch, val_batch)``
      (``build.make_loop_step``; ``accumulate`` is False on the clean phase); ``members``:
      every member's data; ``groups``: slices of it trained as one vmapped group; ``mesh``:
      the 1-D data mesh; ``scan``: ``() -> bool``, asked by the device backend only (it traces
      the step): run a call's steps under ``lax.scan`` (``device_call.make_train_call`` says when).
    """

    require: Callable[[], None]
    eval_batches: Callable[..., dict]
    train_calls: Callable[..., tuple]


def get(name: str) -> Backend:
    """The backend called ``name`` ("device" or "tfdata").

    Raises:
      ValueError: another name.
    """
    if name not in BACKENDS:
        raise ValueError(f"backend={name!r} must be one of {sorted(BACKENDS)}.")
    return BACKENDS[name]


def step_sums(msums_S: list, i: int) -> list:
    """Every group's metric sums after step ``i`` of a call (row ``i`` of its ``msum_S``: a
    list of pytrees, or a pytree with a leading step axis)."""
    return [m[i] if isinstance(m, list) else jax.tree.map(lambda y: y[i], m) for m in msums_S]


def _stacked_numpy(batches_K: list[list[dict]]) -> list[dict]:
    """K members' lists of numpy batches -> one list of batches with a leading seed axis K."""
    return [{k: np.stack([b[k] for b in bs]) for k in bs[0]} for bs in zip(*batches_K)]


def _stacked(datasets_K: list):
    """K member datasets -> one dataset of batches with a leading seed axis K.

    Why: one ``next()`` per step instead of one per member and stream (each costs about a
    millisecond of host time, as much as a small model's whole step).
    """
    tf = _optional.require("tensorflow", TFDATA)  # Only the tf.data backend imports it.

    return tf.data.Dataset.zip(tuple(datasets_K)).map(
        lambda *bs: {k: tf.stack([b[k] for b in bs]) for k in bs[0]},
        num_parallel_calls=tf.data.AUTOTUNE,
        deterministic=True,
    )


def _processes() -> dict:
    """This process's share of every global batch (multi-host: each process reads its rows)."""
    return dict(process_index=jax.process_index(), process_count=jax.process_count())


def _eval_pick(md: members_lib.MemberData, split: str):
    return {"test": md.splits, "hyperval": md.hyperval, "selection": md.selection}[split]


def _eval_splits(feed: Feed) -> list[str]:
    wanted = {"test": True, "hyperval": feed.hyperval, "selection": feed.selection}
    return [s for s in EVAL_SPLITS if wanted[s]]


# ----------------------------------------------------------------------------- tf.data


def _tfdata_require() -> None:
    _optional.require("tensorflow", TFDATA)


def _tfdata_eval_batches(
    members: list[members_lib.MemberData], feed: Feed
) -> dict[str, list[dict]]:
    return {
        split: list(
            _stacked(
                [
                    input_pipeline.test_dataset(
                        _eval_pick(md, split),
                        batch_size=feed.eval_batch_size,
                        mean=md.mean,
                        std=md.std,
                        **_processes(),
                    )
                    for md in members
                ]
            ).as_numpy_iterator()
        )
        for split in _eval_splits(feed)
    }


def _train_dataset(md: members_lib.MemberData, phase: str, start_step: int, feed: Feed):
    """One member's training stream (tf.data) from ``start_step`` (relative to the phase)."""
    tf = _optional.require("tensorflow", TFDATA)

    splits, rows = members_lib.training_rows(md, phase, feed.resample)
    ds = input_pipeline.train_dataset(
        splits,
        batch_size=feed.batch_size,
        seed=md.seed,
        mean=md.mean,
        std=md.std,
        augment=feed.augment,
        start_step=start_step,
        **_processes(),
    )
    if rows is not None:
        # Back to rows of the noisy training set, so weights accumulate per example.
        rows_t = tf.constant(rows.astype(np.int32))
        ds = ds.map(lambda b: {**b, "index": tf.gather(rows_t, b["index"])})
    return ds


def host_chunks(
    members: list[members_lib.MemberData], feed: Feed, start_step: int, size: int
) -> Iterator[tuple[str, int, dict, dict]]:
    """(phase, steps, train_SxK, clean_SxK) numpy chunks of ``size`` steps from ``start_step``.

    Each leaf has a leading axis of ``size`` steps, then the seed axis K. The last chunk of a
    phase holds ``steps <= size`` steps to use (it is filled up from the infinite streams, so
    every chunk has one shape). Why chunks: one ``next()`` and one transfer per ``size``
    steps instead of per step (each costs about a millisecond of host time, as much as a
    small model's whole step).
    """
    tf = _optional.require("tensorflow", TFDATA)

    for phase, first, end in feed.phases:
        if start_step >= end:
            continue
        begin = max(start_step, first)
        train = _stacked([_train_dataset(md, phase, begin - first, feed) for md in members])
        clean = _stacked(
            [
                input_pipeline.clean_dataset(
                    md.splits,
                    batch_size=feed.clean_batch_size,
                    seed=md.seed,
                    mean=md.mean,
                    std=md.std,
                    augment=feed.augment,
                    start_step=begin,
                    **_processes(),
                )
                for md in members
            ]
        )
        n_chunks = -(-(end - begin) // size)
        chunks = tf.data.Dataset.zip((train, clean)).take(n_chunks * size).batch(size)
        for c, (train_SxK, clean_SxK) in enumerate(chunks.prefetch(1).as_numpy_iterator()):
            yield phase, min(size, end - begin - c * size), train_SxK, clean_SxK


def prefetch(iterator: Iterator, size: int) -> Iterator:
    """Runs ``iterator`` in a background thread, up to ``size`` items ahead.

    Closing the returned generator (or leaving its loop) stops the thread; an exception in
    the thread is re-raised here.
    """
    items: queue.Queue = queue.Queue(size)
    stop = threading.Event()
    done = object()

    def put(item) -> bool:
        while not stop.is_set():
            try:
                items.put(item, timeout=0.1)
                return True
            except queue.Full:
                pass
        return False

    def work():
        try:
            for item in iterator:
                if not put(item):
                    return
            put(done)
        except BaseException as e:  # noqa: BLE001 -- handed to the consumer.
            put(e)

    thread = threading.Thread(target=work, daemon=True, name="l2rw-prefetch")
    thread.start()
    try:
        while True:
            item = items.get()
            if item is done:
                return
            if isinstance(item, BaseException):
                raise item
            yield item
    finally:
        stop.set()
        thread.join()


def chunk_step(member_step: Callable) -> Callable:
    """``member_step`` on row ``i`` of chunks of batches (leading step axis S).

    ``step(state, acc, msum, train_chunk, clean_chunk, i)``: the chunks stay on the device
    for S calls and only the scalar ``i`` changes, so a call costs the host one dispatch.
    """

    def step(state, acc, msum, train_chunk, clean_chunk, i):
        row = lambda tree: jax.tree.map(
            lambda x: jax.lax.dynamic_index_in_dim(x, i, 0, keepdims=False), tree
        )
        return member_step(state, acc, msum, row(train_chunk), row(clean_chunk))

    return step


def _tfdata_advance(step_fn, group_chunks, i, ends_log, zeros, carries):
    """One step of every group on row ``i`` of its chunks (a call of the tf.data backend); after
    a step that ends a logging interval the carry's ``msum`` restarts from ``zeros(g, msum)``."""
    out, msums_S = [], []
    for g, (carry, chunks) in enumerate(zip(carries, group_chunks)):
        state, acc, msum = step_fn(*carry, *chunks, i)
        msums_S.append([msum])
        out.append((state, acc, zeros(g, msum) if ends_log else msum))
    return out, msums_S


def _tfdata_calls(make_member_step, members, groups, mesh, feed, start_step, stop_at, scan):
    del scan  # One dispatch per step: nothing to scan.
    steps = {
        phase: xla_options.jit(
            jax.vmap(chunk_step(make_member_step(phase == "noisy")), in_axes=(0, 0, 0, 1, 1, None)),
            donate_argnums=(0, 1),
        )
        for phase in ("noisy", "clean")
    }
    # A background thread reads the streams and places each group's chunk of batches on
    # the devices, a chunk ahead, so the loop itself only dispatches steps.
    placed = prefetch(
        (
            (
                phase,
                n,
                [
                    tuple(
                        sharding.shard_members(x, mesh, g, step_axis=True)
                        for x in (train_SxK, clean_SxK)
                    )
                    for g in groups
                ],
            )
            for phase, n, train_SxK, clean_SxK in host_chunks(
                members, feed, start_step, feed.steps_per_fetch
            )
        ),
        size=1,
    )
    zero_msums: dict = {}  # per group, placed once: the sums after a logging interval ends

    def zeros(g, msum):
        if g not in zero_msums:
            zero_msums[g] = sharding.replicate(
                jax.tree.map(lambda m: np.zeros(m.shape, m.dtype), msum), mesh
            )
        return zero_msums[g]

    def calls():
        t = start_step
        for phase, n, chunks in placed:
            for i in range(n):
                if t >= stop_at:
                    return
                t += 1  # the steps done after this call
                ends_log = t % feed.log_every == 0 or t == feed.total_steps
                yield Call(
                    phase,
                    1,
                    functools.partial(
                        _tfdata_advance, steps[phase], chunks, np.int32(i), ends_log, zeros
                    ),
                )

    return calls(), placed.close


# ----------------------------------------------------------------------------- device


def _device_require() -> None:
    """The device backend imports no optional package."""


def _device_eval_batches(
    members: list[members_lib.MemberData], feed: Feed
) -> dict[str, list[dict]]:
    return {
        split: _stacked_numpy(
            [
                stream_order.test_batches(
                    _eval_pick(md, split).test_x,
                    _eval_pick(md, split).test_labels,
                    md.mean,
                    md.std,
                    feed.eval_batch_size,
                    **_processes(),
                )
                for md in members
            ]
        )
        for split in _eval_splits(feed)
    }


def _train_order(md: members_lib.MemberData, phase: str, feed: Feed) -> stream_order.StreamOrder:
    """One member's training-stream order on the device path: the rows ``_train_dataset``
    draws (resample: the balanced rows, mapped back to rows of the noisy training set)."""
    processes = _processes()
    if phase == "clean":
        return stream_order.StreamOrder(
            md.seed,
            stream_order.TRAIN_STREAM,
            len(md.splits.clean_labels),
            feed.batch_size,
            **processes,
        )
    table = md.row_table
    if feed.resample:
        table = members_lib.balanced_rows(md.splits.train_labels, md.splits.num_classes, md.seed)
    n = len(md.splits.train_labels) if table is None else len(table)
    return stream_order.StreamOrder(
        md.seed, stream_order.TRAIN_STREAM, n, feed.batch_size, table=table, **processes
    )


def _place_group(mds: list[members_lib.MemberData], mesh):
    """(noisy, clean) ``device_splits.DeviceSplit``s of a group's members, placed once."""
    stat = dict(
        mean_KxC=[md.mean for md in mds],
        std_KxC=[md.std for md in mds],
        seeds=[md.seed for md in mds],
        mesh=mesh,
    )
    stack = lambda f: np.stack([f(md.splits) for md in mds])
    noisy = device_splits.place_split(
        {
            "image": stack(lambda s: s.train_x),
            "label": stack(lambda s: s.train_labels.astype(np.int32)),
            "true_label": stack(lambda s: s.train_true_labels.astype(np.int32)),
            "is_noisy": stack(lambda s: s.train_is_noisy.astype(bool)),
        },
        **stat,
    )
    clean = device_splits.place_split(
        {
            "image": stack(lambda s: s.clean_x),
            "label": stack(lambda s: s.clean_labels.astype(np.int32)),
        },
        **stat,
    )
    return noisy, clean


def _device_calls(make_member_step, members, groups, mesh, feed, start_step, stop_at, scan):
    """The device backend's calls from ``start_step``: a call ends at the next evaluation,
    checkpoint, phase end or ``stop_at``, so the loop sees the state there; ``advance``
    dispatches every group's call without waiting for it."""
    scan = scan()  # Decided now, before the first call (it traces the step).
    return _device_call_iter(
        make_member_step, members, groups, mesh, feed, start_step, stop_at, scan
    ), lambda: None


def _device_call_iter(make_member_step, members, groups, mesh, feed, start_step, stop_at, scan):
    placed = [_place_group(members[g], mesh) for g in groups]
    calls = {
        phase: device_call.make_train_call(
            make_member_step(phase == "noisy"),
            mesh,
            clean_phase=phase == "clean",
            augment_images=feed.augment,
            pad=4,
            pad_mode="constant",
            log_every=feed.log_every,
            total_steps=feed.total_steps,
            scan=scan,
        )
        for phase in ("noisy", "clean")
    }

    def advance(phase, first, steps_S, orders, carries):
        n = len(steps_S)
        if not scan:  # Rows of steps_per_call steps (those past n unused): one shape, one compile.
            steps_S = np.arange(steps_S[0], steps_S[0] + feed.steps_per_call)
        out = []
        for carry, (noisy, clean), (train_K, clean_K) in zip(carries, placed, orders):
            # S x K x B and S x K x M rows: placed apart (B and M may differ).
            rows_train = sharding.shard_members(
                np.stack([o.rows(steps_S - first) for o in train_K], 1), mesh, step_axis=True
            )
            rows_clean = sharding.shard_members(
                np.stack([o.rows(steps_S) for o in clean_K], 1), mesh, step_axis=True
            )
            out.append(
                calls[phase](
                    carry,
                    noisy,
                    clean,
                    rows_train,
                    rows_clean,
                    steps_S.astype(np.int32),
                    np.int32(first),
                    num_steps=n,
                )
            )
        return [c for c, _ in out], [m for _, m in out]

    every = (feed.eval_every, feed.checkpoint_every)
    for phase, first, end in feed.phases:
        if start_step >= end:
            continue
        orders = [
            (
                [_train_order(md, phase, feed) for md in members[g]],
                [
                    stream_order.StreamOrder(
                        md.seed,
                        stream_order.CLEAN_STREAM,
                        len(md.splits.clean_labels),
                        feed.clean_batch_size,
                        **_processes(),
                    )
                    for md in members[g]
                ],
            )
            for g in groups
        ]
        t = max(start_step, first)
        while t < min(end, stop_at):
            n = min([feed.steps_per_call, end - t, stop_at - t] + [e - t % e for e in every])
            yield Call(
                phase, n, functools.partial(advance, phase, first, np.arange(t, t + n), orders)
            )
            t += n


BACKENDS = {
    "device": Backend(_device_require, _device_eval_batches, _device_calls),
    "tfdata": Backend(_tfdata_require, _tfdata_eval_batches, _tfdata_calls),
}
