"""The config wired to what it configures: the run's members, its ``backends.Feed``, and its
config.json in a workdir.

Why here and not in :mod:`l2rw_jax.config`: the config holds the schema, validation and the
pure translations into plain values; building the objects of the modules it configures
(members, feeds) or reading and checking a workdir belongs above both, beside the loop
(:mod:`l2rw_jax.train`). So the config imports none of the modules it configures, and the
workdir and the members import no config (ARCHITECTURE.md: nothing low imports anything high;
tests/test_layers.py).
"""

from __future__ import annotations

import json
import os
from typing import TYPE_CHECKING, Sequence

import numpy as np

from l2rw_jax import array_source
from l2rw_jax import backends
from l2rw_jax import config as config_lib
from l2rw_jax import datasets
from l2rw_jax import from_config
from l2rw_jax import members as members_lib
from l2rw_jax import workdir as workdir_lib

if TYPE_CHECKING:
    import ml_collections


def members(
    config: ml_collections.ConfigDict,
    arrays: array_source.Arrays,
    which: Sequence[int] | None = None,
) -> list[members_lib.MemberData]:
    """The data of the run's members ``which`` (default: all ``config.num_seeds``; member ``k``
    has seed ``config.seed + k``) from the loaded ``arrays``: what training and the audit
    both rebuild (``config`` validated)."""
    which = range(config.num_seeds) if which is None else which
    return [
        members_lib.make_member(arrays, config.seed + int(k), **from_config.member_options(config))
        for k in which
    ]


def member_data(config, member: int = 0) -> members_lib.MemberData:
    """Member ``member``'s data (seed ``config.seed + member``) exactly as training saw it:
    the splits after the hyper-validation and selection hold-outs (``.hyperval``,
    ``.selection``) and the normalisation statistics. For audits and notebooks; ``config`` is
    a ConfigDict or a dict (e.g. a run's config.json, also one written before the config had
    groups).

    Raises:
      ValueError: an invalid config, or ``member`` not an integer in ``[0, num_seeds)``.
    """
    c = config_lib.validate(config_lib.upgrade(config, fill_added=True), check_devices=False)
    if (
        isinstance(member, bool)
        or not isinstance(member, (int, np.integer))
        or not (0 <= member < c.num_seeds)
    ):
        raise ValueError(f"member={member!r} must be an integer in [0, {c.num_seeds}).")
    arrays = datasets.load_arrays(c.data.dataset, **from_config.load_options(c.data))
    return members(c, arrays, [member])[0]


def feed(config: ml_collections.ConfigDict, backend: str) -> backends.Feed:
    """The ``backends.Feed`` of the run: what the input backends need (``backend`` resolved:
    "device" or "tfdata")."""
    d, p = config.data, config.loop
    return backends.Feed(
        backend=backend,
        phases=members_lib.phases(
            config.method.name, config.num_steps, config.method.finetune_steps
        ),
        batch_size=d.batch_size,
        clean_batch_size=d.clean_batch_size,
        eval_batch_size=d.eval_batch_size,
        augment=d.augment,
        resample=config.method.name == "resample",
        hyperval=d.hyper_val_size > 0,
        log_every=p.log_every,
        eval_every=p.eval_every,
        checkpoint_every=p.checkpoint_every,
        steps_per_call=p.steps_per_call,
        steps_per_fetch=p.steps_per_fetch,
        selection=d.selection_size > 0,
    )


# ----------------------------------------------------------------------------- config.json


def read_config(workdir: workdir_lib.PathLike) -> ml_collections.ConfigDict:
    """The validated config (a ConfigDict) of the run in ``workdir``; flat config.json files
    from before the config had groups are upgraded (``config.upgrade``).

    Raises:
      ValueError: no config.json in ``workdir``.
    """
    p = workdir_lib.path(workdir) / "config.json"
    if not p.exists():
        raise ValueError(
            f"workdir {os.fspath(workdir)!r} has no config.json; is it a training run's workdir?"
        )
    return config_lib.validate(
        config_lib.upgrade(workdir_lib.read_json(p), fill_added=True), check_devices=False
    )


def resolve_backend(backend: str, workdir: workdir_lib.PathLike) -> str:
    """``backend`` with "auto" resolved: the backend of the run being resumed in ``workdir``
    (runs from before the field used tf.data), else "device" (``datasets.load_arrays`` loads
    every source into memory, so every source fits the device-resident path)."""
    p = workdir_lib.path(workdir) / "config.json"
    if backend != "auto":
        return backend
    if not p.exists():
        return "device"
    return config_lib.upgrade(workdir_lib.read_json(p), fill_added=True)["loop"]["backend"]


def check_or_write_config(
    workdir: workdir_lib.PathLike, config: ml_collections.ConfigDict, write: bool = True
) -> None:
    """Raises ValueError if ``workdir`` holds a run of another config, else (``write``, on
    process 0) writes config.json. Checked before the data is loaded, written only after it
    loaded and its sizes passed: a start that fails leaves nothing that blocks the corrected
    command. Fields in ``config.RESUMABLE_FIELDS`` may differ."""
    p = workdir_lib.path(workdir) / "config.json"
    current = json.loads(config.to_json())
    if p.exists():
        differ = config_lib.config_differences(workdir_lib.read_json(p), current)
        if differ:
            raise ValueError(
                f"workdir {os.fspath(workdir)!r} holds a run with a different config (fields "
                f"{sorted(differ)}: {differ}); use a new workdir or the same config to resume."
            )
    if write:
        workdir_lib.write_json(p, current)
