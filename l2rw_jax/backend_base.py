"""What the input backends share: the run's :class:`Feed`, a training :class:`Call`, the
:class:`Backend` interface each backend fills (:mod:`l2rw_jax.backends` describes it and picks
one by name), and the rows of the evaluation splits each process reads.
"""

from __future__ import annotations

from typing import Callable, NamedTuple

import jax

from l2rw_jax import members as members_lib

EVAL_SPLITS = ("test", "hyperval", "selection")


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


def process_fields() -> dict:
    """This process's share of every global batch (multi-host: each process reads its rows)."""
    return dict(process_index=jax.process_index(), process_count=jax.process_count())


def eval_pick(md: members_lib.MemberData, split: str):
    return {"test": md.splits, "hyperval": md.hyperval, "selection": md.selection}[split]


def eval_splits(feed: Feed) -> list[str]:
    wanted = {"test": True, "hyperval": feed.hyperval, "selection": feed.selection}
    return [s for s in EVAL_SPLITS if wanted[s]]
