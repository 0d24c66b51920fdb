"""The device input backend: every group's noisy and clean splits placed on the devices once
(:mod:`l2rw_jax.device_splits`); each call computes its rows on the host
(:mod:`l2rw_jax.stream_order`), builds its batches on the devices and runs up to
``steps_per_call`` steps (``lax.scan``, ``device_call.make_train_call``), ending at every
evaluation, checkpoint, phase end and stop. No TensorFlow. Its :data:`BACKEND` is
``backends.get("device")``.
"""

from __future__ import annotations

import functools

import numpy as np

from l2rw_jax import device_call
from l2rw_jax import device_splits
from l2rw_jax import members as members_lib
from l2rw_jax import sharding
from l2rw_jax import stream_order
from l2rw_jax.backend_base import Backend
from l2rw_jax.backend_base import Call
from l2rw_jax.backend_base import Feed
from l2rw_jax.backend_base import eval_pick
from l2rw_jax.backend_base import eval_splits
from l2rw_jax.backend_base import process_fields


def _stacked_numpy(batches_K: list[list[dict]]) -> list[dict]:
    """K members' lists of numpy batches -> one list of batches with a leading seed axis K."""
    return [{k: np.stack([b[k] for b in bs]) for k in bs[0]} for bs in zip(*batches_K)]


def _device_require() -> None:
    """The device backend imports no optional package."""


def _device_eval_batches(
    members: list[members_lib.MemberData], feed: Feed
) -> dict[str, list[dict]]:
    return {
        split: _stacked_numpy(
            [
                stream_order.test_batches(
                    eval_pick(md, split).test_x,
                    eval_pick(md, split).test_labels,
                    md.mean,
                    md.std,
                    feed.eval_batch_size,
                    **process_fields(),
                )
                for md in members
            ]
        )
        for split in eval_splits(feed)
    }


def _train_order(md: members_lib.MemberData, phase: str, feed: Feed) -> stream_order.StreamOrder:
    """One member's training-stream order on the device path: the rows
    ``tfdata_backend._train_dataset`` draws (resample: the balanced rows, mapped back to rows
    of the noisy training set)."""
    processes = process_fields()
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
                        **process_fields(),
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


BACKEND = Backend(_device_require, _device_eval_batches, _device_calls)
