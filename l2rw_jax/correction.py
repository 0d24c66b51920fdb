"""Gold Loss Correction: the trusted set estimates how labels were corrupted, then the training
loss is corrected for it (Hendrycks, Mazeika, Wilson, Gimpel, NeurIPS 2018, arXiv 1802.05300).

Reweighting can only drop examples; with a trusted set a scheme can also use the flipped ones.
:func:`gold_correction` wraps any weighting scheme (``erm``, ``l2rw``, ...) into one run of
``num_steps`` steps:

1. Steps ``t < E`` (``estimate_steps``): plain training on the noisy set (weights ``1 / B``;
   the clean set is not trained on, so that the model estimates ``p(observed label | x)``).
   During the last ``W = ceil(n_clean / M)`` of them (one pass of the clean stream) each clean
   batch's softmax at ``theta`` is summed per clean label:
   ``S[i, j] += sum_{k: y_k = i} softmax(z_k)_j``, ``n[i] += #{k: y_k = i}``.
2. From step ``E`` on: ``T^[i, j] = S[i, j] / n[i]`` (the GLC estimate of ``T[i, j] =
   P(observed j | true i)``; row ``i`` is the identity's when the window saw no clean example
   of class ``i``), and the step minimises
   ``(1 - s) sum_i w_i l^T_i + s mean_j C^v_j``:
   the inner scheme's weights on the forward-corrected loss
   ``l^T_i = -log sum_j softmax(z_i)_j T^[j, y_i]`` (Patrini et al., CVPR 2017), plus the
   clean set's cross-entropy at its natural share ``s = n_clean / (n_clean + n_train)`` (GLC
   trains on the union of the trusted and the corrected untrusted data): a mean over the
   rows of the clean batch that the natural rate gives, about ``B n_clean / n_train`` of
   them (:func:`l2rw_jax.step.clean_rows`), so that it costs a few rows' backward pass.
   The inner scheme's meta-gradient (l2rw) sees the corrected loss.

Unlike the paper's two runs (a first model for the estimate, then a fresh one), training goes
on from the model at step ``E``: the budget stays ``num_steps``. The state is
:class:`GoldCorrectionState`; the train step reads ``(T^, s)`` through the scheme's
``correction`` (:class:`l2rw_jax.weighing.WeighingScheme`).
"""
from __future__ import annotations

import math
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp

from l2rw_jax import weighing

PyTree = Any


class GoldCorrectionState(NamedTuple):
    """:func:`gold_correction`'s state.

    Attributes:
      inner: the wrapped scheme's state.
      confusion_sum_CxC: float32, ``S[i, j]``: the clean examples' softmax summed per clean
        label ``i`` over the estimation window.
      count_C: float32, ``n[i]``: clean examples of label ``i`` seen in the window.
    """

    inner: PyTree
    confusion_sum_CxC: jax.Array
    count_C: jax.Array


def transition_estimate(confusion_sum_CxC: jax.Array, count_C: jax.Array) -> jax.Array:
    """``T^[i, :] = S[i, :] / n[i]``, the identity's row where ``n[i] = 0``. Shape ``C x C``,
    rows sum to 1 (each is a mean of softmax vectors)."""
    eye_CxC = jnp.eye(confusion_sum_CxC.shape[0], dtype=jnp.float32)
    seen_C = count_C > 0
    mean_CxC = confusion_sum_CxC / jnp.where(seen_C, count_C, 1.0)[:, None]
    return jnp.where(seen_C[:, None], mean_CxC, eye_CxC)


def forward_corrected_xent(logits_BxC: jax.Array, labels_B: jax.Array,
                           T_CxC: jax.Array) -> jax.Array:
    """``-log sum_j softmax(z)_j T[j, y]`` per example, shape ``(B,)`` (Patrini et al. 2017's
    forward correction); with ``T = I`` it is the cross-entropy. ``T`` is a constant here
    (no gradient flows into it); entries below 1e-12 count as 1e-12."""
    log_T_CxC = jnp.log(jnp.maximum(jax.lax.stop_gradient(T_CxC), 1e-12))
    log_p_BxC = jax.nn.log_softmax(logits_BxC)
    # sum_j p_j T[j, y] for the observed y: log-sum-exp over j of log p_j + log T[j, y].
    return -jax.nn.logsumexp(log_p_BxC + log_T_CxC[:, labels_B].T, axis=-1)


def gold_correction(scheme: weighing.WeighingScheme, *, estimate_steps: int, num_clean: int,
                    num_train: int) -> weighing.WeighingScheme:
    """``scheme`` with Gold Loss Correction (module docstring: the update and the estimate).

    Args:
      scheme: the inner weighting scheme (its weights apply from step ``estimate_steps`` on).
      estimate_steps: ``E >= 1``, the step at which ``T^`` is estimated and the correction
        starts.
      num_clean, num_train: sizes of the clean set and the noisy training set (the clean
        batch's share ``s = num_clean / (num_clean + num_train)``; the window's length
        ``ceil(num_clean / M)``).

    Returns:
      A :class:`l2rw_jax.weighing.WeighingScheme` with a ``correction``; its state is
      :class:`GoldCorrectionState` (``init`` needs ``class_counts_C``, whose length is C).
      Metrics: the inner scheme's, plus ``transition_diag`` (the mean diagonal of the ``T``
      in use: 1 before ``E``).

    Raises:
      ValueError: ``estimate_steps < 1``, ``num_clean < 1`` or ``num_train < 1``; a scheme
        that already has a correction.
    """
    for name, value in (("estimate_steps", estimate_steps), ("num_clean", num_clean),
                        ("num_train", num_train)):
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise ValueError(f"gold_correction: {name} must be an integer >= 1, got {value!r}.")
    if scheme.correction is not None:
        raise ValueError("gold_correction: the scheme already corrects its loss.")
    clean_share = num_clean / (num_clean + num_train)

    def init(rng: jax.Array, class_counts_C=None) -> GoldCorrectionState:
        if class_counts_C is None:
            raise ValueError("gold_correction needs class_counts_C (its length is the number "
                             "of classes).")
        C = int(jnp.shape(class_counts_C)[0])
        return GoldCorrectionState(scheme.init(rng, class_counts_C),
                                   jnp.zeros((C, C), jnp.float32), jnp.zeros((C,), jnp.float32))

    def correction(state: GoldCorrectionState, step: jax.Array):
        on = step >= estimate_steps
        T_CxC = jnp.where(on, transition_estimate(state.confusion_sum_CxC, state.count_C),
                          jnp.eye(state.count_C.shape[0], dtype=jnp.float32))
        return T_CxC, jnp.where(on, clean_share, 0.0).astype(jnp.float32)

    def weigh(ctx: weighing.WeighContext, state: GoldCorrectionState):
        weighing.check_state("gold_correction", state, GoldCorrectionState)
        if ctx.val_logits_fn is None:
            raise ValueError("gold_correction needs ctx.val_logits_fn (the clean batch's "
                             "logits), which l2rw_jax.step passes.")
        w_inner_B, inner, metrics = scheme.weigh(ctx, state.inner)
        local, total = weighing.local_and_global_size(ctx)
        w_B = jnp.where(ctx.step < estimate_steps, jnp.full((local,), 1.0 / total, jnp.float32),
                        w_inner_B)
        # The window: one pass of the clean stream just before the estimate is used.
        local_m = jax.tree.leaves(ctx.val_batch)[0].shape[0]
        global_m = local_m if ctx.axis_name is None else local_m * jax.lax.psum(1, ctx.axis_name)
        window = math.ceil(num_clean / global_m)
        in_window = (ctx.step >= estimate_steps - window) & (ctx.step < estimate_steps)
        C = state.count_C.shape[0]
        p_MxC = jax.nn.softmax(ctx.val_logits_fn(jax.lax.stop_gradient(ctx.params),
                                                 ctx.val_batch))
        onehot_MxC = jax.nn.one_hot(ctx.val_batch["label"], C, dtype=jnp.float32)
        add_CxC, add_C = onehot_MxC.T @ p_MxC, jnp.sum(onehot_MxC, axis=0)
        if ctx.axis_name is not None:
            add_CxC, add_C = jax.lax.psum((add_CxC, add_C), ctx.axis_name)
        new_state = GoldCorrectionState(
            inner, jnp.where(in_window, state.confusion_sum_CxC + add_CxC,
                             state.confusion_sum_CxC),
            jnp.where(in_window, state.count_C + add_C, state.count_C))
        T_CxC, _ = correction(state, ctx.step)
        metrics = dict(metrics, transition_diag=jnp.mean(jnp.diagonal(T_CxC)))
        return w_B, new_state, metrics

    return weighing.WeighingScheme(init, weigh, correction, clean_share)
