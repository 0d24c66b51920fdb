"""The loop's two input backends behind one interface, :class:`Backend` (a NamedTuple of
functions, as optax's ``GradientTransformation``): ``require()`` fails at once where the
backend's packages are missing, ``eval_batches(members, feed)`` gives the evaluation batches and
``train_calls(...)`` the training calls, each a :class:`Call` whose ``advance(carries) ->
(carries after num_steps steps, msum_S per group)``: ``msum_S`` holds the step metrics summed
since the last log after each of the call's steps (read with :func:`step_sums`), and the
carries' ``msum`` restarts from zero after every step that ends a logging interval. The loop
picks one by name (:func:`get`) and never asks which it runs. The interface's types are
:mod:`l2rw_jax.backend_base` (re-exported here); each backend is its own module.

- ``device`` (:mod:`l2rw_jax.device_backend`, over :mod:`l2rw_jax.device_splits`,
  :mod:`l2rw_jax.device_batches`, :mod:`l2rw_jax.stream_order`, :mod:`l2rw_jax.device_call`):
  every group's noisy and clean splits are placed on the devices once; each call builds its
  batches there and runs up to ``steps_per_call`` steps (``lax.scan``,
  ``device_call.make_train_call``), ending at every evaluation, checkpoint, phase end and stop.
  No TensorFlow.
- ``tfdata`` (:mod:`l2rw_jax.tfdata_backend`, over :mod:`l2rw_jax.input_pipeline`): the
  members' tf.data streams are stacked over the seed axis, read in chunks of
  ``steps_per_fetch`` steps by a background thread (``tfdata_backend.prefetch``) which places
  each chunk on the devices a chunk ahead; one step per call.

Both draw the same examples at each (seed, step): the streams are stateless functions of
(seed, step), so a resumed run restarts them at its checkpoint's step. Every batch is placed
through :mod:`l2rw_jax.sharding` (the seed axis of vmapped members and the step axis of a
chunk kept whole, the batch axis split over the data mesh).
"""

from __future__ import annotations

import jax

from l2rw_jax import device_backend
from l2rw_jax import tfdata_backend
from l2rw_jax.backend_base import Backend
from l2rw_jax.backend_base import Call
from l2rw_jax.backend_base import Feed

# The interface, re-exported: the loop and compose read ``backends.Feed``, ``backends.Call``.
__all__ = ["BACKENDS", "Backend", "Call", "Feed", "get", "step_sums"]


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


BACKENDS = {
    "device": device_backend.BACKEND,
    "tfdata": tfdata_backend.BACKEND,
}
