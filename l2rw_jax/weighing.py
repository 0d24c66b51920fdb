"""The weighting-scheme contract: :class:`WeighingScheme` ``(init, weigh)`` and what ``weigh``
sees, :class:`WeighContext` (as ``optax``'s ``GradientTransformation(init, update)`` in its
``base.py``), with the few checks every scheme shares. The schemes themselves are in
:mod:`l2rw_jax.methods` (and :mod:`l2rw_jax.l2rw_scheme`), which re-exports these names.
"""

from __future__ import annotations

from typing import Any, Callable, NamedTuple

import jax
import jax.numpy as jnp
import optax

from l2rw_jax import reweight

PyTree = Any


class WeighContext(NamedTuple):
    """What a weighting scheme may look at in one step (its own state is passed beside it).

    Attributes:
      loss_fn: ``loss_fn(params, batch) -> losses_B``, per-example training losses in training
        mode with the model state bound (BatchNorm statistics it produces are discarded).
      params, opt_state, tx: current parameters, optimizer state and the optax optimizer.
      batch: the training batch dict (``image``, ``label``, maybe ``is_noisy``, ``index``...).
      val_batch: the clean batch dict.
      rng: a PRNG key for this step and this scheme.
      step: int32 scalar, the number of real steps taken so far.
      axis_name: mapped axis under ``pmap``/``shard_map``, else None.
      val_loss_fn: per-example loss for the clean batch (defaults to ``loss_fn``).
      val_logits_fn: ``val_logits_fn(params, batch) -> logits_MxC`` of the clean batch in
        training mode (what ``val_loss_fn`` scores), or None.
    """

    loss_fn: reweight.LossFn
    params: PyTree
    opt_state: optax.OptState
    tx: optax.GradientTransformation
    batch: PyTree
    val_batch: PyTree
    rng: jax.Array
    step: jax.Array
    axis_name: str | None = None
    val_loss_fn: reweight.LossFn | None = None
    val_logits_fn: Callable[[PyTree, PyTree], jax.Array] | None = None


# The state of a scheme without one (erm, random, l2rw without memory): optax's, so that one
# empty-state type serves the optimizer and the schemes alike.
EmptyState = optax.EmptyState


InitFn = Callable[..., PyTree]
"""``init(rng, class_counts_C=None) -> state``: ``rng`` a PRNG key, ``class_counts_C`` the
number of training examples per *observed* class (needed by ``proportion``, ``hard_mining`` and
``l2rw(memory_decay > 0)``, which sizes its memory by ``N = sum(class_counts_C)``)."""

WeighFn = Callable[[WeighContext, PyTree], tuple[jax.Array, PyTree, dict]]
"""``weigh(ctx, state) -> (w_B, new_state, metrics)``; ``new_state`` has ``state``'s type."""


class WeighingScheme(NamedTuple):
    """A weighting scheme: a pair of pure functions, as ``optax.GradientTransformation``.

    Attributes:
      init: ``init(rng, class_counts_C=None) -> state``, the scheme's initial state (a
        ``NamedTuple``; ``EmptyState()`` when it has none). Raises ValueError when the scheme
        needs ``class_counts_C`` and it is missing or not a 1-D array of counts.
      weigh: ``weigh(ctx: WeighContext, state) -> (w_B, new_state, metrics)``: this step's
        weights ``(B,)``, the next state (same type and shapes as ``state``) and the scheme's
        metrics. Raises ValueError (when traced) if ``state`` is not the type ``init`` returns.
      correction: None (the training loss is the cross-entropy against the observed label), or
        ``correction(state, step) -> (T_CxC, s)``: the train step then minimises
        ``(1 - s) sum_i w_i l^T_i + s mean_{j in R} C^v_j`` with the forward-corrected loss
        ``l^T_i = -log sum_j softmax(z_i)_j T[j, y_i]`` (Patrini et al., CVPR 2017) and the
        cross-entropy ``C^v_j`` of the rows ``R`` of the clean batch that the clean set's
        natural rate gives (:func:`l2rw_jax.step.clean_rows`; :mod:`l2rw_jax.correction`).
        ``state`` is the state before this step's ``weigh``; ``s`` is 0 or ``clean_share``.
      clean_share: the clean set's share of all training examples, ``n_clean / (n_clean +
        n_train)``, when the scheme trains on the clean batch (with a ``correction``); else 0.
      rewind: None, or ``rewind(state, new_state) -> (now, params)``: where ``now`` (a bool
        scalar, from the states before and after this step's ``weigh``) the train step
        replaces the updated parameters by ``params`` (the same tree); its ``init`` then takes
        ``params=`` too (:func:`l2rw_jax.correction.rewind_at_trigger`).
    """

    init: InitFn
    weigh: WeighFn
    correction: Callable[[PyTree, jax.Array], tuple[jax.Array, jax.Array]] | None = None
    clean_share: float = 0.0
    rewind: Callable[[PyTree, PyTree], tuple[jax.Array, PyTree]] | None = None


def init_empty(rng: jax.Array, class_counts_C=None) -> EmptyState:
    """The ``init`` of a scheme without state: ``EmptyState()``."""
    del rng, class_counts_C
    return EmptyState()


def check_state(name: str, state: PyTree, state_type: type) -> None:
    """Raises ValueError unless ``state`` is a ``state_type`` (method ``name``'s own state)."""
    if not isinstance(state, state_type):
        raise ValueError(
            f"method {name!r} needs its state {state_type.__name__} from its own "
            f"init(rng, class_counts_C), got {type(state).__name__}."
        )


def local_and_global_size(ctx: WeighContext) -> tuple[int, Any]:
    """``(B_local, B_global)``: this program's batch size and the global one (a traced int
    under ``ctx.axis_name``, else ``B_local``)."""
    local = jax.tree.leaves(ctx.batch)[0].shape[0]
    if ctx.axis_name is None:
        return local, local
    return local, local * jax.lax.psum(1, ctx.axis_name)


def class_counts(name: str, class_counts_C) -> jax.Array:
    """``class_counts_C`` as float32 ``(C,)``; ValueError (naming method ``name``) when it is
    missing, not 1-D, negative or all 0."""
    if class_counts_C is None:
        raise ValueError(
            f"method {name!r} needs class_counts_C, the number of training "
            f"examples per observed class."
        )
    counts_C = jnp.asarray(class_counts_C, jnp.float32)
    if counts_C.ndim != 1 or not bool(jnp.all(counts_C >= 0)) or not bool(jnp.any(counts_C > 0)):
        raise ValueError(
            f"class_counts_C must be a 1-D array of counts >= 0, not all 0; got {class_counts_C!r}."
        )
    return counts_C
