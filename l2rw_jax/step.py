"""The train step: weights from a scheme, then the weighted update.

A pure function of arrays, ``jax.vmap``-able over a leading seed axis of the state and the
batches; it works unchanged on one device, under ``jax.jit`` over a data ``Mesh`` (the inputs
placed by :mod:`l2rw_jax.sharding`), and (with ``axis_name``) inside ``jax.pmap`` /
``jax.shard_map``. The evaluation is :mod:`l2rw_jax.evaluate`.
"""

from __future__ import annotations

from typing import Any, Callable

import jax
import jax.numpy as jnp
import optax

from l2rw_jax import correction as correction_lib
from l2rw_jax import methods
from l2rw_jax.reweight import _to_varying
from l2rw_jax.train_state import TrainState

PyTree = Any
ApplyFn = Callable[..., tuple[jax.Array, PyTree]]


def softmax_xent(logits_BxC: jax.Array, labels_B: jax.Array) -> jax.Array:
    """Per-example softmax cross-entropy ``-log softmax(logits)[label]``, shape (B,)."""
    return optax.softmax_cross_entropy_with_integer_labels(logits_BxC, labels_B)


_LOSSES = {"softmax_xent": softmax_xent}


def make_train_step(
    apply_fn: ApplyFn,
    tx: optax.GradientTransformation,
    scheme: methods.WeighingScheme,
    *,
    loss: str = "softmax_xent",
    axis_name: str | None = None,
) -> Callable[[TrainState, dict, dict], tuple[TrainState, dict]]:
    """``train_step(state, batch, val_batch) -> (state, metrics)``, un-jitted.

    One step of Ren et al. 2018 (arXiv 1803.09050) Alg. 1 for ``scheme = methods.l2rw(...)``:
    ``w_B, method_state, _ = scheme.weigh(ctx, state.method_state)``, then ``theta <-
    apply_updates(theta, tx.update(grad sum_i w_i C_i(theta)))`` with ``w_B`` a constant
    (``stop_gradient``).

    With a scheme that corrects its loss (``scheme.correction``, e.g.
    :func:`l2rw_jax.correction.gold_correction`), ``(T, s) = scheme.correction(method_state,
    step)`` before the weights, the training losses ``C_i`` (the scheme's meta-gradient
    included) are the forward-corrected ones, and the real step minimises ``(1 - s) sum_i w_i
    C_i + s mean_j C^v_j`` (the clean batch trained on at share ``s``). With a scheme that
    rewinds (``scheme.rewind``), the updated parameters are replaced where it says so.

    BatchNorm: every pass here runs the model in training mode, i.e. normalises with the
    statistics of the batch it sees, as the official code does: the look-ahead's training
    losses, the validation pass at the look-ahead (clean-batch statistics) and the real step.
    The running averages produced inside the weighting scheme are thrown away (its
    ``loss_fn`` returns losses only); only the real step's are kept. Under ``axis_name`` the
    statistics are per device and the kept running averages are averaged over the axis.

    Randomness: the step key is ``fold_in(state.rng, state.step)``, split into keys for the
    training batch (the same dropout masks in the meta computation and in the real step, so
    the weights are computed for the very losses that are trained on), the clean batch and the
    scheme.

    Metrics (scalars unless the key ends in ``_B``): ``weighted_loss`` (``sum_i w_i C_i``),
    ``train_loss`` (unweighted mean), ``w_mean``, ``w_max``, ``w_min``, ``ess`` (effective
    sample size ``(sum w)^2 / sum w^2``, 0 when all weights are 0), ``all_zero`` (bool), ``w_B``
    (the weights), with ``is_noisy`` in the batch ``w_mean_noisy`` / ``w_mean_clean`` (mean
    weight over the noisy / clean examples of the batch, 0 when there are none), plus the
    scheme's metrics (l2rw: ``val_loss`` at the look-ahead, ``g_B``). Under ``axis_name`` the
    scalars are global and the ``_B`` arrays local.

    Args:
      apply_fn: ``apply_fn(params, model_state, x, train, rng) -> (logits, new_model_state)``.
      tx: the optax optimizer (also used for the look-ahead, whose derivative is exact also
        where Adam-type moments are 0; see :func:`l2rw_jax.reweight.meta_gradient`). For an
        optimizer whose update has no derivative at a zero gradient the step would write NaN:
        :func:`l2rw_jax.reweight.check_lookahead` says so before the first step (as
        :func:`l2rw_jax.train.train_and_evaluate` does).
      scheme: a weighting scheme from :mod:`l2rw_jax.methods`; ``state.method_state`` must be
        what its ``init`` returned (or the state a previous step returned).
      loss: per-example loss, ``"softmax_xent"``.
      axis_name: mapped axis name when the step runs inside ``pmap``/``shard_map``.
    """
    if loss not in _LOSSES:
        raise ValueError(f"loss={loss!r} is not supported; allowed: {', '.join(_LOSSES)}.")
    loss_B = _LOSSES[loss]

    def train_step(state: TrainState, batch: dict, val_batch: dict):
        key = jax.random.fold_in(state.rng, state.step)
        key_train, key_val, key_method = jax.random.split(key, 3)
        if axis_name is not None:
            # Different dropout masks on each device's shard, as on one big batch.
            index = jax.lax.axis_index(axis_name)
            key_train, key_val = (jax.random.fold_in(k, index) for k in (key_train, key_val))

        if scheme.correction is None:
            train_loss_B, clean_share = loss_B, None
        else:
            T_CxC, clean_share = scheme.correction(state.method_state, state.step)

            def train_loss_B(logits, labels):
                return correction_lib.forward_corrected_xent(logits, labels, T_CxC)

        def losses_and_state(params, b):
            logits, new_model_state = apply_fn(
                params, state.model_state, b["image"], True, key_train
            )
            return train_loss_B(logits, b["label"]), new_model_state

        def loss_fn(params, b):
            return losses_and_state(params, b)[0]

        def val_logits_fn(params, b):
            return apply_fn(params, state.model_state, b["image"], True, key_val)[0]

        def val_loss_fn(params, b):
            return loss_B(val_logits_fn(params, b), b["label"])

        ctx = methods.WeighContext(
            loss_fn=loss_fn,
            params=state.params,
            opt_state=state.opt_state,
            tx=tx,
            batch=batch,
            val_batch=val_batch,
            rng=key_method,
            step=state.step,
            axis_name=axis_name,
            val_loss_fn=val_loss_fn,
            val_logits_fn=val_logits_fn,
        )
        w_B, method_state, method_metrics = scheme.weigh(ctx, state.method_state)
        w_B = jax.lax.stop_gradient(w_B)

        def weighted_loss(params):
            losses_B, new_model_state = losses_and_state(params, batch)
            total = jnp.sum(w_B.astype(losses_B.dtype) * losses_B)
            if clean_share is not None:
                # The clean rows trained on at their share: a global mean, as the sum of the
                # programs' sums over the global row count (the psum below adds them).
                rows, mask_R, count = clean_rows(batch, val_batch, scheme.clean_share, axis_name)
                val_losses_R = val_loss_fn(params, rows) * mask_R
                total = (1.0 - clean_share) * total + clean_share * jnp.sum(val_losses_R) / count
            return total, (losses_B, new_model_state)

        (wloss, (losses_B, model_state)), grads = jax.value_and_grad(weighted_loss, has_aux=True)(
            _to_varying(state.params, axis_name)
        )
        if axis_name is not None:
            # The global objective is the sum over all devices' examples.
            grads, wloss = jax.lax.psum((grads, wloss), axis_name)
            model_state = jax.lax.pmean(model_state, axis_name)
        updates, opt_state = tx.update(grads, state.opt_state, state.params)
        params = optax.apply_updates(state.params, updates)
        if scheme.rewind is not None:
            now, params_back = scheme.rewind(state.method_state, method_state)
            params = jax.tree.map(lambda b, p: jnp.where(now, b, p), params_back, params)

        metrics = _weight_metrics(w_B, batch, axis_name)
        metrics["weighted_loss"] = wloss
        metrics["train_loss"] = _global_mean(losses_B, axis_name)
        metrics.update(method_metrics)
        new_state = TrainState(
            step=state.step + 1,
            params=params,
            model_state=model_state,
            opt_state=opt_state,
            rng=state.rng,
            method_state=method_state,
        )
        return new_state, metrics

    return train_step


def clean_rows(
    batch: dict, val_batch: dict, clean_share: float, axis_name: str | None = None
) -> tuple[dict, jax.Array, int]:
    """The rows of the clean batch that a loss-correcting scheme trains on: every ``k``-th row
    of the global clean batch (``j % k == 0``), ``k = max(1, M // m)``, ``m = max(1,
    round(B r))`` the clean examples that ``B`` training examples bring at the clean set's
    natural rate ``r = clean_share / (1 - clean_share) = n_clean / n_train``.

    Why a subset: the clean term's gradient has the same expectation from these rows as from
    the whole batch (the clean stream is shuffled), at the cost of a few rows' backward pass.
    The same global rows on any number of programs (row ``j`` of the global batch is row ``j
    - p M_local`` of program ``p``): sliced ``[::k]`` on one program or where ``M_local % k ==
    0``, else masked.

    Returns:
      ``(rows, mask_R, count)``: this program's rows (a batch dict), a float32 mask over them
      (0 on rows outside the subset) and the global number of rows in the subset.
    """
    programs = 1 if axis_name is None else jax.lax.axis_size(axis_name)  # static
    global_b = jax.tree.leaves(batch)[0].shape[0] * programs
    local_m = jax.tree.leaves(val_batch)[0].shape[0]
    global_m = local_m * programs
    rate = clean_share / (1.0 - clean_share)
    k = max(1, global_m // max(1, round(global_b * rate)))
    count = -(-global_m // k)  # ceil
    if programs == 1 or local_m % k == 0:  # every program's first row is a multiple of k
        rows = jax.tree.map(lambda x: x[::k], val_batch)
        return rows, jnp.ones((-(-local_m // k),), jnp.float32), count
    offset = 0 if axis_name is None else jax.lax.axis_index(axis_name) * local_m
    mask_M = ((offset + jnp.arange(local_m)) % k == 0).astype(jnp.float32)
    return val_batch, mask_M, count


def _global_sum(x, axis_name):
    total = jnp.sum(x)
    return total if axis_name is None else jax.lax.psum(total, axis_name)


def _global_mean(x_B, axis_name):
    return _global_sum(x_B, axis_name) / _global_sum(jnp.ones_like(x_B), axis_name)


def _weight_metrics(w_B, batch, axis_name) -> dict:
    sum_w = _global_sum(w_B, axis_name)
    sum_w2 = _global_sum(w_B * w_B, axis_name)
    w_max, w_min = jnp.max(w_B), jnp.min(w_B)
    if axis_name is not None:
        w_max, w_min = jax.lax.pmax(w_max, axis_name), jax.lax.pmin(w_min, axis_name)
    metrics = {
        "w_mean": _global_mean(w_B, axis_name),
        "w_max": w_max,
        "w_min": w_min,
        "ess": sum_w**2 / jnp.where(sum_w2 > 0, sum_w2, 1.0),
        "all_zero": sum_w == 0,
        "w_B": w_B,
    }
    if "is_noisy" in batch:
        noisy_B = batch["is_noisy"].astype(w_B.dtype)
        for name, mask_B in (("noisy", noisy_B), ("clean", 1.0 - noisy_B)):
            count = _global_sum(mask_B, axis_name)
            metrics[f"w_mean_{name}"] = _global_sum(w_B * mask_B, axis_name) / jnp.maximum(
                count, 1.0
            )
    return metrics
