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

A fixed ``E`` is a guess about the model: early enough that it has not yet memorised the
flips, late enough that its predictions say something. Where the model underfits (a short
budget, augmentation) the model at ``E`` predicts little, ``T^`` comes out close to "every
label is random", and the corrected loss barely trains. :func:`plateau_gold_correction` lets
the run say when: it trains class-balanced plain weights, watches the clean batches' accuracy
(an EMA) and estimates ``T^`` from the model at its best clean accuracy once that has not
risen for ``patience`` steps, the point where plain training starts to memorise (the paper
trains its first model to that point too). A run whose clean accuracy keeps rising is never
corrected. Its ``reweight_first`` keeps the inner scheme's weights before the trigger and counts
``T^`` on the training rows (:func:`train_posterior_sums`); :func:`rewind_at_trigger` sets the
model back to its best at the trigger and, with a ``guard``, takes the correction back where
the clean accuracy sets no new best after it: the library's default (``glc_guarded``).
"""

from __future__ import annotations

import math
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp

from l2rw_jax import l2rw_stages
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


def clean_softmax_sums(ctx: weighing.WeighContext, num_classes: int):
    """The clean batch under the current parameters: ``(logits_MxC, S_CxC, n_C)`` with
    ``S[i, j] = sum_{k: y_k = i} softmax(z_k)_j`` and ``n[i] = #{k: y_k = i}``, both summed
    over the devices of ``ctx.axis_name`` (the logits are this device's, shape ``(M, C)``).
    The parameters are held constant: the sums estimate, they are not trained through."""
    logits_MxC = ctx.val_logits_fn(jax.lax.stop_gradient(ctx.params), ctx.val_batch)
    onehot_MxC = jax.nn.one_hot(ctx.val_batch["label"], num_classes, dtype=jnp.float32)
    sum_CxC, count_C = onehot_MxC.T @ jax.nn.softmax(logits_MxC), jnp.sum(onehot_MxC, axis=0)
    if ctx.axis_name is not None:
        sum_CxC, count_C = jax.lax.psum((sum_CxC, count_C), ctx.axis_name)
    return logits_MxC, sum_CxC, count_C


def train_posterior_sums(ctx: weighing.WeighContext, num_classes: int):
    """The training batch under the current parameters (held constant): ``(S_CxC, n_C)`` with
    ``S[i, j] = sum_{k: y~_k = j} softmax(z_k)_i`` and ``n[i] = sum_k softmax(z_k)_i``, summed
    over the devices of ``ctx.axis_name``: row ``i`` of ``S / n`` is the observed-label mix of
    the rows the model puts in class ``i``."""
    logits_BxC = ctx.val_logits_fn(jax.lax.stop_gradient(ctx.params), ctx.batch)
    p_BxC = jax.nn.softmax(logits_BxC)
    onehot_BxC = jax.nn.one_hot(ctx.batch["label"], num_classes, dtype=jnp.float32)
    sum_CxC, count_C = p_BxC.T @ onehot_BxC, jnp.sum(p_BxC, axis=0)
    if ctx.axis_name is not None:
        sum_CxC, count_C = jax.lax.psum((sum_CxC, count_C), ctx.axis_name)
    return sum_CxC, count_C


def scheme_state(method_state):
    """The weighing scheme's own state: a loss correction's state keeps it in ``.inner``
    (nested corrections unwrapped); any other state is returned as it is."""
    while isinstance(method_state, (GoldCorrectionState, PlateauCorrectionState, RewindState)):
        method_state = method_state.inner
    return method_state


def forward_corrected_xent(
    logits_BxC: jax.Array, labels_B: jax.Array, T_CxC: jax.Array
) -> jax.Array:
    """``-log sum_j softmax(z)_j T[j, y]`` per example, shape ``(B,)`` (Patrini et al. 2017's
    forward correction); with ``T = I`` it is the cross-entropy. ``T`` is a constant here
    (no gradient flows into it); entries below 1e-12 count as 1e-12."""
    log_T_CxC = jnp.log(jnp.maximum(jax.lax.stop_gradient(T_CxC), 1e-12))
    log_p_BxC = jax.nn.log_softmax(logits_BxC)
    # sum_j p_j T[j, y] for the observed y: log-sum-exp over j of log p_j + log T[j, y].
    return -jax.nn.logsumexp(log_p_BxC + log_T_CxC[:, labels_B].T, axis=-1)


def gold_correction(
    scheme: weighing.WeighingScheme, *, estimate_steps: int, num_clean: int, num_train: int
) -> weighing.WeighingScheme:
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
    for name, value in (
        ("estimate_steps", estimate_steps),
        ("num_clean", num_clean),
        ("num_train", num_train),
    ):
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise ValueError(f"gold_correction: {name} must be an integer >= 1, got {value!r}.")
    if scheme.correction is not None:
        raise ValueError("gold_correction: the scheme already corrects its loss.")
    clean_share = num_clean / (num_clean + num_train)

    def init(rng: jax.Array, class_counts_C=None) -> GoldCorrectionState:
        if class_counts_C is None:
            raise ValueError(
                "gold_correction needs class_counts_C (its length is the number of classes)."
            )
        C = int(jnp.shape(class_counts_C)[0])
        return GoldCorrectionState(
            scheme.init(rng, class_counts_C),
            jnp.zeros((C, C), jnp.float32),
            jnp.zeros((C,), jnp.float32),
        )

    def correction(state: GoldCorrectionState, step: jax.Array):
        on = step >= estimate_steps
        T_CxC = jnp.where(
            on,
            transition_estimate(state.confusion_sum_CxC, state.count_C),
            jnp.eye(state.count_C.shape[0], dtype=jnp.float32),
        )
        return T_CxC, jnp.where(on, clean_share, 0.0).astype(jnp.float32)

    def weigh(ctx: weighing.WeighContext, state: GoldCorrectionState):
        weighing.check_state("gold_correction", state, GoldCorrectionState)
        if ctx.val_logits_fn is None:
            raise ValueError(
                "gold_correction needs ctx.val_logits_fn (the clean batch's "
                "logits), which l2rw_jax.step passes."
            )
        w_inner_B, inner, metrics = scheme.weigh(ctx, state.inner)
        local, total = weighing.local_and_global_size(ctx)
        w_B = jnp.where(
            ctx.step < estimate_steps, jnp.full((local,), 1.0 / total, jnp.float32), w_inner_B
        )
        # The window: one pass of the clean stream just before the estimate is used.
        local_m = jax.tree.leaves(ctx.val_batch)[0].shape[0]
        global_m = local_m if ctx.axis_name is None else local_m * jax.lax.psum(1, ctx.axis_name)
        window = math.ceil(num_clean / global_m)
        in_window = (ctx.step >= estimate_steps - window) & (ctx.step < estimate_steps)
        _, add_CxC, add_C = clean_softmax_sums(ctx, state.count_C.shape[0])
        new_state = GoldCorrectionState(
            inner,
            jnp.where(in_window, state.confusion_sum_CxC + add_CxC, state.confusion_sum_CxC),
            jnp.where(in_window, state.count_C + add_C, state.count_C),
        )
        T_CxC, _ = correction(state, ctx.step)
        metrics = dict(metrics, transition_diag=jnp.mean(jnp.diagonal(T_CxC)))
        return w_B, new_state, metrics

    return weighing.WeighingScheme(init, weigh, correction, clean_share)


class PlateauCorrectionState(NamedTuple):
    """:func:`plateau_gold_correction`'s state (float32 scalars but ``since_best``, int32).

    Attributes:
      inner: the wrapped scheme's state.
      acc_ema: EMA of the clean batches' accuracy at the current parameters.
      best_acc: the highest ``acc_ema`` so far.
      since_best: steps since ``best_acc`` last rose.
      confusion_ema_CxC, count_ema_C: EMAs (same decay) of the clean batches' softmax summed
        per clean label and of the per-label counts.
      confusion_best_CxC, count_best_C: their values when ``best_acc`` last rose.
      on: bool, the correction is in use (frozen once set).
    """

    inner: PyTree
    acc_ema: jax.Array
    best_acc: jax.Array
    since_best: jax.Array
    confusion_ema_CxC: jax.Array
    count_ema_C: jax.Array
    confusion_best_CxC: jax.Array
    count_best_C: jax.Array
    on: jax.Array


def plateau_gold_correction(
    scheme: weighing.WeighingScheme,
    *,
    patience: int,
    num_clean: int,
    num_train: int,
    reweight_first: bool = False,
) -> weighing.WeighingScheme:
    """``scheme`` with Gold Loss Correction that starts only once the model stops improving on
    the clean set (module docstring: why).

    Until the trigger the weights are class-balanced plain ones (each observed class of the
    global batch the same mass, split evenly among its rows: a model of ``p(observed | x)``
    that a class swollen by the flips, as under background flips, does not take over) and the
    loss is the cross-entropy; the clean set is not trained on. Each step the clean batch's
    accuracy ``a_t`` at ``theta`` and its per-label softmax sums and counts (as in
    :func:`gold_correction`'s window) enter EMAs of decay ``1 - 1 / max(1, patience // 4)``;
    the EMAs of the sums are kept (``S_best``, ``n_best``) at each new best of the accuracy
    EMA. When ``patience`` steps have passed without a new best, ``T^ = S_best / n_best`` is
    frozen and from the next step on the inner scheme's weights apply to the corrected loss
    with the clean term, as in :func:`gold_correction`. A run whose clean accuracy keeps
    rising (a model that underfits, with nothing memorised) is never corrected.

    Args:
      scheme: the inner weighting scheme (its weights apply once the correction is on; it
        weighs, and updates its own state, every step).
      patience: ``P >= 1`` steps without a new best accuracy EMA.
      num_clean, num_train: as in :func:`gold_correction` (the clean share ``s``).
      reweight_first: until the trigger, the inner scheme's weights instead of class-balanced
        plain ones (the model is not let memorise while the trigger waits), and ``T^`` counted
        on the training rows instead of the clean ones: ``S[i, j] = sum_k softmax(z_k)_i
        [y~_k = j]``, ``n[i] = sum_k softmax(z_k)_i`` (the model's posterior of the true class
        against the observed label; a reweighted model predicts the true class, so its
        softmax on the clean set would estimate its own errors, not the flips). The EMAs and
        the snapshot at the best clean accuracy are as above.

    Returns:
      A :class:`l2rw_jax.weighing.WeighingScheme` with a ``correction``; its state is
      :class:`PlateauCorrectionState`. Metrics: the inner scheme's, ``transition_diag`` (1
      before the trigger), ``clean_acc_ema`` and ``correction_on`` (0 / 1).

    Raises:
      ValueError: ``patience < 1``, ``num_clean < 1`` or ``num_train < 1``; a scheme that
        already has a correction.
    """
    for name, value in (("patience", patience), ("num_clean", num_clean), ("num_train", num_train)):
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise ValueError(
                f"plateau_gold_correction: {name} must be an integer >= 1, got {value!r}."
            )
    if scheme.correction is not None:
        raise ValueError("plateau_gold_correction: the scheme already corrects its loss.")
    clean_share = num_clean / (num_clean + num_train)
    decay = 1.0 - 1.0 / max(1, patience // 4)

    def init(rng: jax.Array, class_counts_C=None) -> PlateauCorrectionState:
        if class_counts_C is None:
            raise ValueError(
                "plateau_gold_correction needs class_counts_C (its length is the "
                "number of classes)."
            )
        C = int(jnp.shape(class_counts_C)[0])
        # Every field its own buffer: a train step that donates its state (the loop's, the
        # benchmark's) may not be given one buffer twice.
        return PlateauCorrectionState(
            scheme.init(rng, class_counts_C),
            jnp.zeros((), jnp.float32),
            jnp.zeros((), jnp.float32),
            jnp.zeros((), jnp.int32),
            jnp.zeros((C, C), jnp.float32),
            jnp.zeros((C,), jnp.float32),
            jnp.zeros((C, C), jnp.float32),
            jnp.zeros((C,), jnp.float32),
            jnp.zeros((), jnp.bool_),
        )

    def correction(state: PlateauCorrectionState, step: jax.Array):
        del step
        C = state.count_best_C.shape[0]
        T_CxC = jnp.where(
            state.on,
            transition_estimate(state.confusion_best_CxC, state.count_best_C),
            jnp.eye(C, dtype=jnp.float32),
        )
        return T_CxC, jnp.where(state.on, clean_share, 0.0).astype(jnp.float32)

    def weigh(ctx: weighing.WeighContext, state: PlateauCorrectionState):
        weighing.check_state("plateau_gold_correction", state, PlateauCorrectionState)
        if ctx.val_logits_fn is None:
            raise ValueError(
                "plateau_gold_correction needs ctx.val_logits_fn (the clean "
                "batch's logits), which l2rw_jax.step passes."
            )
        w_inner_B, inner, metrics = scheme.weigh(ctx, state.inner)
        C = state.count_best_C.shape[0]
        logits_MxC, add_CxC, add_C = clean_softmax_sums(ctx, C)
        if reweight_first:  # the counts on the training rows replace the clean set's
            w_B = w_inner_B
            add_CxC, add_C = train_posterior_sums(ctx, C)
        else:
            # Until the trigger: class-balanced plain training (every observed class of the
            # batch the same mass), a model of p(observed label | x) that a flipped-to
            # class's excess does not bend (background flips).
            w_plain_B = l2rw_stages.class_normalize(
                jnp.ones_like(w_inner_B), ctx.batch["label"], "class_balanced", ctx.axis_name
            )
            w_B = jnp.where(state.on, w_inner_B, w_plain_B)
        hits = jnp.sum(jnp.argmax(logits_MxC, -1) == ctx.val_batch["label"]).astype(jnp.float32)
        size = jnp.asarray(logits_MxC.shape[0], jnp.float32)
        if ctx.axis_name is not None:
            hits, size = jax.lax.psum((hits, size), ctx.axis_name)
        acc_ema = decay * state.acc_ema + (1 - decay) * hits / size
        conf_ema = decay * state.confusion_ema_CxC + (1 - decay) * add_CxC
        count_ema = decay * state.count_ema_C + (1 - decay) * add_C
        rose = acc_ema > state.best_acc
        since = jnp.where(rose, 0, state.since_best + 1).astype(jnp.int32)
        watching = ~state.on
        new_state = PlateauCorrectionState(
            inner,
            acc_ema,
            jnp.maximum(acc_ema, state.best_acc),
            since,
            conf_ema,
            count_ema,
            jnp.where(rose & watching, conf_ema, state.confusion_best_CxC),
            jnp.where(rose & watching, count_ema, state.count_best_C),
            state.on | (since >= patience),
        )
        T_CxC, _ = correction(state, ctx.step)
        metrics = dict(
            metrics,
            transition_diag=jnp.mean(jnp.diagonal(T_CxC)),
            clean_acc_ema=acc_ema,
            correction_on=state.on.astype(jnp.float32),
        )
        return w_B, new_state, metrics

    return weighing.WeighingScheme(init, weigh, correction, clean_share)


class RewindState(NamedTuple):
    """:func:`rewind_at_trigger`'s state.

    Attributes:
      inner: the plateau correction's state (:class:`PlateauCorrectionState`).
      params_best: the model parameters at the last new best of the clean accuracy EMA before
        the trigger (the model that ``T^`` is estimated from); the parameters' tree.
      since_on: int32, steps since the trigger (counted until the guard decides).
      improved: bool, the clean accuracy EMA set a new best after the trigger.
      reverted: bool, the guard took the correction back (frozen once set).
    """

    inner: PlateauCorrectionState
    params_best: PyTree
    since_on: jax.Array
    improved: jax.Array
    reverted: jax.Array


def rewind_at_trigger(
    scheme: weighing.WeighingScheme, *, guard: int = 0
) -> weighing.WeighingScheme:
    """``scheme`` (a :func:`plateau_gold_correction`) that, at its trigger, also sets the model
    back to the parameters ``T^`` was estimated from; with ``guard``, it also takes the
    correction back where it does not pay on the clean set.

    Why the rewind: until the trigger the model goes on for the ``patience`` steps the
    trigger waits (memorising the flips, under plain weights); training goes on from the model
    at its best clean accuracy instead. The parameters are kept at each new best of the clean
    accuracy EMA before the trigger (a copy of the parameters in the state: one model's
    memory) and put back in the step at which the trigger fires; the optimizer's state (the
    schedule's count, the momentum) and the model's batch statistics go on as they are.

    Why the guard: the corrected loss can end below the scheme's weights alone (on MNIST with
    the reweighting the model learns the true labels already, and the corrected loss lets it
    drift). If the clean accuracy EMA has set no new best ``guard`` steps after the trigger,
    the model is set back to the same parameters once more and the correction is off for the
    rest of the run (``T = I``, ``s = 0``: the scheme's weights on the cross-entropy). The
    clean batches it judges by are the ones the meta-gradient sees (and, once corrected, a few
    rows of them are trained on), so the test leans towards keeping the correction.

    Args:
      scheme: a scheme from :func:`plateau_gold_correction`.
      guard: ``>= 0`` steps after the trigger by which the correction must have set a new
        best clean accuracy EMA; 0: no guard.

    Returns:
      A :class:`l2rw_jax.weighing.WeighingScheme` with ``correction`` (the plateau
      correction's, the identity and 0 once reverted) and ``rewind``; its state is
      :class:`RewindState` (``init`` needs ``params``, the model's initial parameters).
      Metrics: the plateau correction's, plus ``correction_reverted`` (0 / 1).

    Raises:
      ValueError: ``scheme`` is not a plateau correction (its state is checked at ``init``);
        ``guard`` not an integer >= 0; ``init`` without ``params``.
    """
    if scheme.correction is None:
        raise ValueError("rewind_at_trigger needs a plateau_gold_correction scheme.")
    if isinstance(guard, bool) or not isinstance(guard, int) or guard < 0:
        raise ValueError(f"rewind_at_trigger: guard must be an integer >= 0, got {guard!r}.")

    def init(rng: jax.Array, class_counts_C=None, params=None) -> RewindState:
        if params is None:
            raise ValueError("rewind_at_trigger's init needs params (the model's initial ones).")
        inner = scheme.init(rng, class_counts_C)
        if not isinstance(inner, PlateauCorrectionState):
            raise ValueError(
                "rewind_at_trigger needs a plateau_gold_correction scheme, got one whose "
                f"state is {type(inner).__name__}."
            )
        # Its own buffers (a donating train step may not be given one buffer twice).
        return RewindState(
            inner,
            jax.tree.map(jnp.array, params),
            jnp.zeros((), jnp.int32),
            jnp.zeros((), jnp.bool_),
            jnp.zeros((), jnp.bool_),
        )

    def correction(state: RewindState, step: jax.Array):
        T_CxC, share = scheme.correction(state.inner, step)
        eye_CxC = jnp.eye(T_CxC.shape[0], dtype=T_CxC.dtype)
        return (
            jnp.where(state.reverted, eye_CxC, T_CxC),
            jnp.where(state.reverted, 0.0, share).astype(jnp.float32),
        )

    def weigh(ctx: weighing.WeighContext, state: RewindState):
        weighing.check_state("rewind_at_trigger", state, RewindState)
        w_B, inner, metrics = scheme.weigh(ctx, state.inner)
        rose = inner.best_acc > state.inner.best_acc
        # The same test as the plateau correction's S_best: a new best while watching.
        keep = rose & ~state.inner.on
        params_best = jax.tree.map(
            lambda p, b: jnp.where(keep, jax.lax.stop_gradient(p), b), ctx.params, state.params_best
        )
        after = state.inner.on  # this step trains with the correction (unless reverted)
        since_on = jnp.where(after, state.since_on + 1, 0).astype(jnp.int32)
        improved = state.improved | (after & rose)
        revert = (guard > 0) & after & ~state.reverted & ~improved & (since_on >= max(guard, 1))
        new_state = RewindState(inner, params_best, since_on, improved, state.reverted | revert)
        metrics = dict(metrics, correction_reverted=state.reverted.astype(jnp.float32))
        return w_B, new_state, metrics

    def rewind(state: RewindState, new_state: RewindState):
        fired = new_state.inner.on & ~state.inner.on
        reverted = new_state.reverted & ~state.reverted
        return fired | reverted, new_state.params_best

    return weighing.WeighingScheme(init, weigh, correction, scheme.clean_share, rewind)
