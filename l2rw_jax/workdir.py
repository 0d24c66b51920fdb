"""A run's workdir: its paths, atomic writes, process-0-only writes, checkpoints, and the readers
the loop, the audit and the experiments use.

Paths go through ``etils.epath``, so a ``gs://bucket/run`` workdir is a bucket path (not
``<cwd>/gs:/bucket/run``) and local ones are plain files. Every file is written through the one
atomic writer, ``files.atomic_write`` (also ``workdir.atomic_write``): a reader (the audit, a
resumed run, a plot script, a person) must never see a half-written file. Orbax writes the
checkpoints themselves atomically (and coordinates the processes of a multi-host job).

Multi-host: every process runs the same loop, but only :func:`is_primary` (process 0) writes
the run's files (config.json, metrics.jsonl, TensorBoard, example weights, results.json);
that gate lives here, in the writers, not in the loop.
"""

from __future__ import annotations

import json
import logging
import os
from typing import Any

import numpy as np
from etils import epath

from l2rw_jax import _optional
from l2rw_jax.files import atomic_write
from l2rw_jax.files import is_remote

log = logging.getLogger("l2rw_jax.workdir")

PathLike = str | os.PathLike


def path(p: PathLike) -> epath.Path:
    """``p`` as an ``epath.Path``: URIs (``gs://...``) keep their scheme, local paths are made
    absolute."""
    s = os.fspath(p)
    return epath.Path(s if is_remote(s) else os.path.abspath(s))


def is_primary() -> bool:
    """True on the process that writes the run's files (process 0; the only one when local)."""
    import jax

    return jax.process_index() == 0


def write_json(p: PathLike, obj) -> None:
    """Atomic JSON file (sorted keys, indented); on process 0 only (:func:`is_primary`)."""
    if is_primary():
        atomic_write(p, lambda f: json.dump(obj, f, indent=2, sort_keys=True))


def write_npz(p: PathLike, **arrays) -> None:
    """Atomic ``np.savez`` file; on process 0 only (:func:`is_primary`)."""
    if is_primary():
        atomic_write(p, lambda f: np.savez(f, **arrays), mode="wb")


def read_json(p: PathLike):
    return json.loads(epath.Path(os.fspath(p)).read_text())


# ----------------------------------------------------------------------------- data fingerprint

DATA_FINGERPRINT = "data_fingerprint.json"
_FINGERPRINT_PARTS = ("shapes", "labels", "pixels")


def check_or_write_fingerprint(workdir: PathLike, fingerprint: dict, write: bool = True) -> None:
    """Raises ValueError if ``workdir`` records a run trained on other data than
    ``fingerprint`` (``datasets.fingerprint`` of the loaded data), else (``write``, on process
    0, atomically) records it in ``<workdir>/data_fingerprint.json``. A run recorded before
    the file existed gets it at its next start (nothing to compare then).

    The error is one line naming what changed: the shapes (with the old and new ones), the
    labels (any label, the class count or names), the pixels (a fixed sample of rows).
    """
    p = path(workdir) / DATA_FINGERPRINT
    if p.exists():
        recorded = read_json(p)
        changed = [k for k in _FINGERPRINT_PARTS if recorded.get(k) != fingerprint[k]]
        if changed:
            old, new = recorded.get("shapes") or {}, fingerprint["shapes"]
            shapes = "; ".join(
                f"{k} {tuple(old[k]) if k in old else 'absent'} -> "
                f"{tuple(new[k]) if k in new else 'absent'}"
                for k in sorted(set(old) | set(new))
                if old.get(k) != new.get(k)
            )
            raise ValueError(
                f"workdir {os.fspath(workdir)!r} holds a run trained on other data: its "
                f"{' and '.join(changed)} changed since{f' ({shapes})' if shapes else ''}; "
                f"resume with the data the run was trained on, or use a new workdir."
            )
        return
    if write:
        write_json(p, fingerprint)


# ----------------------------------------------------------------------------- metrics


def read_jsonl(p: PathLike, max_step: float = float("inf")) -> list[dict]:
    """Records with ``step <= max_step`` (a torn last line from a kill is dropped)."""
    p = epath.Path(os.fspath(p))
    if not p.exists():
        return []
    records = []
    for line in p.read_text().splitlines():
        try:
            record = json.loads(line)
        except json.JSONDecodeError:
            continue
        if record.get("step", 0) <= max_step:
            records.append(record)
    return records


class _NoSummaryWriter:
    """Stands in for tensorboardX's writer where it is not installed (or on processes other
    than 0): metrics.jsonl only."""

    def add_scalar(self, tag, value, step):
        del tag, value, step

    def flush(self):
        pass

    def close(self):
        pass


def _summary_writer(logdir: str, start_step: int):
    """A tensorboardX writer on ``logdir`` (a resumed run purges what follows ``start_step``);
    without tensorboardX (accelerator hosts), or on a ``gs://`` logdir without
    google-cloud-storage, one warning and a writer that does nothing."""
    try:  # Imported late: it pulls in protobuf.
        tensorboardx = _optional.require("tensorboardX", "writing TensorBoard files (<workdir>/tb)")
    except ImportError as err:
        log.warning("%s; metrics.jsonl has every metric.", err)
        return _NoSummaryWriter()
    if logdir.startswith("gs://") and not _has_gcs_client():
        # tensorboardX writes gs:// with google-cloud-storage (not through epath).
        log.warning(
            "google-cloud-storage is not installed: no TensorBoard files in %s "
            "(metrics.jsonl has every metric).",
            logdir,
        )
        return _NoSummaryWriter()
    return tensorboardx.SummaryWriter(logdir, purge_step=start_step + 1 if start_step else None)


def _has_gcs_client() -> bool:
    """Whether google-cloud-storage is installed: orbax and tensorboardX use it for gs://."""
    try:
        from google.cloud import storage  # noqa: F401
    except ImportError:
        return False
    return True


class MetricsWriter:
    """metrics.jsonl (one JSON object per line) and TensorBoard scalars of a run, from
    ``start_step`` on: records past it (written by a killed run after its last checkpoint)
    are dropped first. Writes on process 0 only; elsewhere every call does nothing.

    Local files are appended to (``tail -f`` shows progress); on a URI, where objects cannot
    be appended to, the whole file is rewritten (atomically) at each :meth:`flush`.
    """

    def __init__(self, workdir: PathLike, start_step: int):
        self._on = is_primary()
        self._path = path(workdir) / "metrics.jsonl"
        self._remote = is_remote(self._path)
        self._lines: list[str] = []
        self._file = None
        self._tb = _NoSummaryWriter()
        if not self._on:
            return
        kept = [json.dumps(r) + "\n" for r in read_jsonl(self._path, start_step)]
        atomic_write(self._path, lambda f: f.writelines(kept))
        if self._remote:
            self._lines = kept
        else:
            self._file = open(self._path, "a")
        self._tb = _summary_writer(os.fspath(path(workdir) / "tb"), start_step)

    def write(self, records: list[dict], scalars: dict, step: int) -> None:
        """Appends ``records`` to metrics.jsonl and ``scalars`` ({tag: value}) to TensorBoard."""
        if not self._on:
            return
        lines = [json.dumps(r) + "\n" for r in records]
        if self._remote:
            self._lines.extend(lines)
        else:
            self._file.writelines(lines)
            self._file.flush()  # Every log_every steps: cheap, and tail -f shows progress.
        for tag, value in scalars.items():
            self._tb.add_scalar(tag, value, step)

    def flush(self) -> None:
        if not self._on:
            return
        if self._remote:
            atomic_write(self._path, lambda f: f.writelines(self._lines))
        self._tb.flush()

    def close(self) -> None:
        if not self._on:
            return
        self.flush()
        if self._file is not None:
            self._file.close()
        self._tb.close()


# ----------------------------------------------------------------------------- checkpoints


def checkpoint_manager(workdir: PathLike, keep: int):
    """An orbax CheckpointManager on ``<workdir>/checkpoints`` keeping the newest ``keep``.

    Raises:
      ImportError: ``workdir`` is ``gs://`` and google-cloud-storage is not installed (orbax
        asks the bucket for its layout with it; without it, a deep traceback).
    """
    import orbax.checkpoint as ocp  # Here: it takes about a second to import.

    if os.fspath(workdir).startswith("gs://") and not _has_gcs_client():
        raise ImportError(
            f"workdir {os.fspath(workdir)!r}: orbax checkpoints on gs:// need "
            f"google-cloud-storage; pip install google-cloud-storage."
        )

    return ocp.CheckpointManager(
        path(workdir) / "checkpoints",
        options=ocp.CheckpointManagerOptions(
            max_to_keep=keep, create=True, cleanup_tmp_directories=True
        ),
    )


def save_checkpoint(manager, step: int, carry, meta: dict) -> None:
    """Saves ``carry`` (a pytree of host arrays) and ``meta`` (JSON) as checkpoint ``step``."""
    import orbax.checkpoint as ocp

    manager.save(
        step,
        args=ocp.args.Composite(carry=ocp.args.StandardSave(carry), meta=ocp.args.JsonSave(meta)),
    )


def restore_checkpoint(manager, step: int, like) -> tuple[Any, dict]:
    """(carry shaped like ``like``, meta) of checkpoint ``step``."""
    import orbax.checkpoint as ocp

    abstract = jax_tree_abstract(like)
    restored = manager.restore(
        step,
        args=ocp.args.Composite(
            carry=ocp.args.StandardRestore(abstract), meta=ocp.args.JsonRestore()
        ),
    )
    return restored.carry, restored.meta


def restore_latest(manager, like) -> tuple[int, Any, dict] | None:
    """``(step, carry, meta)`` of the newest checkpoint that restores; None without any.

    A step that cannot be restored (files cut short or damaged) is skipped with one warning
    naming it and the step restored instead, and deleted: orbax saves no step at or before
    its newest one, so a damaged newest step would otherwise stop the run from checkpointing
    again until it passes that step.

    Raises:
      ValueError: checkpoints exist but none restores (one line, naming the steps).
    """
    failed = []
    for step in sorted(manager.all_steps(), reverse=True):
        try:
            carry, meta = restore_checkpoint(manager, step, like)
        except Exception as e:  # noqa: BLE001 -- orbax raises many kinds for damaged files.
            failed.append((step, " ".join(f"{type(e).__name__}: {e}".split())[:200]))
            continue
        if failed:
            log.warning(
                "Checkpoint step(s) %s in %s cannot be restored (%s); resuming from "
                "step %d instead, and deleting them.",
                ", ".join(str(f) for f, _ in failed),
                manager.directory,
                failed[0][1],
                step,
            )
            for bad, _ in failed:
                manager.delete(bad)
        return step, carry, meta
    if failed:
        raise ValueError(
            f"no checkpoint in {os.fspath(manager.directory)!r} can be restored (steps "
            f"{', '.join(str(f) for f, _ in failed)}; newest: {failed[0][1]}); move the "
            f"checkpoints/ folder away to start over."
        )
    return None


def jax_tree_abstract(tree):
    import jax
    import orbax.checkpoint as ocp

    return jax.tree.map(ocp.utils.to_shape_dtype_struct, tree)


# ----------------------------------------------------------------------------- selected model

SELECTED = "selected"  # <workdir>/selected/seed<s>.npz: the model chosen on the selection set


def selected_path(workdir: PathLike, seed: int) -> epath.Path:
    """``<workdir>/selected/seed<seed>.npz``: member ``seed``'s selected model."""
    return path(workdir) / SELECTED / f"seed{int(seed)}.npz"


def _flat(prefix: str, tree) -> dict[str, np.ndarray]:
    """Nested dicts of arrays -> ``{"prefix/a/b": array}`` (the npz keys of the selected model)."""
    import jax

    leaves = jax.tree_util.tree_flatten_with_path(tree)[0]
    return {
        "/".join([prefix, *(str(getattr(k, "key", k)) for k in keys)]): np.asarray(leaf)
        for keys, leaf in leaves
    }


def write_selected(
    workdir: PathLike, seed: int, params, model_state, *, step: int, selection_accuracy: float
) -> None:
    """Atomically writes member ``seed``'s model (``params``, ``model_state``: nested dicts of
    host arrays) as :func:`selected_path`, with the ``step`` and ``selection_accuracy`` of the
    evaluation that chose it; on process 0 only. Read it with :func:`read_selected`."""
    write_npz(
        selected_path(workdir, seed),
        **_flat("params", params),
        **_flat("model_state", model_state),
        step=np.int64(step),
        selection_accuracy=np.float64(selection_accuracy),
    )


def read_selected(workdir: PathLike, seed: int) -> dict:
    """Member ``seed``'s selected model: ``{"params", "model_state"}`` (nested dicts of numpy
    arrays, as ``models.init_model`` returns them: ``models.make_apply_fn(module)(params,
    model_state, x, False)`` evaluates it), ``"step"`` (int) and ``"selection_accuracy"``.

    Raises:
      ValueError: the run wrote none for ``seed`` (no ``data.selection_size``, or no
        evaluation yet).
    """
    p = selected_path(workdir, seed)
    if not p.exists():
        raise ValueError(
            f"{os.fspath(p)!r} does not exist: the run in {os.fspath(workdir)!r} has no "
            f"selected model for seed {seed} (it needs data.selection_size > 0 and one evaluation)."
        )
    with p.open("rb") as f, np.load(f) as z:
        arrays = {k: z[k] for k in z.files}
    out: dict = {"params": {}, "model_state": {}}
    for key, value in arrays.items():
        if key in ("step", "selection_accuracy"):
            continue
        *groups, name = key.split("/")
        node = out
        for g in groups:
            node = node.setdefault(g, {})
        node[name] = value
    out["step"] = int(arrays["step"])
    out["selection_accuracy"] = float(arrays["selection_accuracy"])
    return out


def read_results(workdir: PathLike) -> dict | None:
    """The run's results.json, or None before it ended (a run stopped by an error has
    ``"completed": false`` and the ``"error"``: see ``train.train_and_evaluate``)."""
    p = path(workdir) / "results.json"
    return read_json(p) if p.exists() else None
