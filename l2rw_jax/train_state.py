"""The training state: one NamedTuple of arrays, passed into and returned by the train step."""

from __future__ import annotations

from typing import Any, NamedTuple

import jax
import optax

PyTree = Any


class TrainState(NamedTuple):
    """Everything a train step reads and writes; a pytree, so it jits, shards, donates,
    checkpoints and ``jax.vmap``s over a leading seed axis as is.

    Attributes:
      step: int32 scalar, number of real steps taken.
      params: model parameters.
      model_state: ``{}`` or ``{"batch_stats": ...}`` (updated only by the real step).
      opt_state: state of the optax optimizer.
      rng: base PRNG key; the step's key is ``jax.random.fold_in(rng, step)``, so ``rng``
        itself never changes.
      method_state: state of the weighting scheme, from its ``init`` (``EmptyState()`` for
        the schemes without one; see :mod:`l2rw_jax.methods`).
    """

    step: jax.Array
    params: PyTree
    model_state: PyTree
    opt_state: optax.OptState
    rng: jax.Array
    method_state: PyTree = optax.EmptyState()
