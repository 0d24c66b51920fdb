"""The tfdata input backend: the members' tf.data streams (:mod:`l2rw_jax.input_pipeline`)
stacked over the seed axis, read in chunks of ``steps_per_fetch`` steps by a background thread
(:func:`prefetch`) which places each chunk on the devices a chunk ahead; one step per call.
TensorFlow is imported when the backend runs, never at import. Its :data:`BACKEND` is
``backends.get("tfdata")``.
"""

from __future__ import annotations

import functools
import queue
import threading
from typing import Callable, Iterator

import jax
import numpy as np

from l2rw_jax import _optional
from l2rw_jax import input_pipeline
from l2rw_jax import members as members_lib
from l2rw_jax import sharding
from l2rw_jax import xla_options
from l2rw_jax.backend_base import Backend
from l2rw_jax.backend_base import Call
from l2rw_jax.backend_base import Feed
from l2rw_jax.backend_base import eval_pick
from l2rw_jax.backend_base import eval_splits
from l2rw_jax.backend_base import process_fields

TFDATA = "the tfdata input backend (loop.backend='tfdata')"  # what needs TensorFlow


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
                        eval_pick(md, split),
                        batch_size=feed.eval_batch_size,
                        mean=md.mean,
                        std=md.std,
                        **process_fields(),
                    )
                    for md in members
                ]
            ).as_numpy_iterator()
        )
        for split in eval_splits(feed)
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
        **process_fields(),
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
                    **process_fields(),
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


BACKEND = Backend(_tfdata_require, _tfdata_eval_batches, _tfdata_calls)
