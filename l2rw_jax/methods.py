"""Example-weighting schemes as optax-style pairs of pure functions.

A scheme is one value, :class:`WeighingScheme` ``(init, weigh)`` (as ``optax``'s
``GradientTransformation(init, update)``), built by one function per scheme from its options
(``l2rw(mode="reverse")``, ``mwnet(hidden=100)``, ...) or by name with :func:`get_scheme`:

    state = scheme.init(rng, class_counts_C)
    w_B, state, metrics = scheme.weigh(ctx, state)

``state`` is the scheme's typed state (a ``NamedTuple``: :class:`L2RWState`,
:class:`ProportionState`, :class:`HardMiningState`, :class:`MWNetState`, or ``EmptyState()``
for schemes without one); it lives in ``TrainState.method_state``, so it jits, vmaps over seeds
and is checkpointed with the rest of the state. ``w_B`` are this step's example weights (the
real step minimises ``sum_i w_i C_i`` and treats ``w_B`` as a constant); ``metrics`` is a dict
of scalars, plus per-example ``(B,)`` arrays under keys ending in ``_B``. Pure and traceable: no
Python branching on traced values (the train step is ``jax.vmap``-ed over seeds). To add a
scheme, write its constructor returning a ``WeighingScheme`` and add it to ``_SCHEMES``.
"""
from __future__ import annotations

import inspect
from typing import Any, Callable, NamedTuple

import jax
import jax.numpy as jnp
import optax

from l2rw_jax import models
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


class L2RWState(NamedTuple):
    """:func:`l2rw`'s per-example meta-gradient memory (only with ``memory_decay > 0``).

    Attributes:
      memory_N: float32 ``(N,)``, ``m_i`` of training row ``i`` (0 before its first visit).
      seen_N: bool ``(N,)``, whether row ``i`` has been in a batch.
    """

    memory_N: jax.Array
    seen_N: jax.Array


class ProportionState(NamedTuple):
    """:func:`proportion`'s class weights: ``class_weight_C[c] = 1 / n_c`` (0 when ``n_c = 0``)."""

    class_weight_C: jax.Array


class HardMiningState(NamedTuple):
    """:func:`hard_mining`'s majority class: int32 scalar, the most frequent observed label."""

    majority: jax.Array


class MWNetState(NamedTuple):
    """:func:`mwnet`'s weighting network and its optimizer.

    Attributes:
      phi: the MLP ``{"w1_H", "b1_H", "w2_H", "b2"}`` (``H`` hidden units).
      opt_state: state of its optimizer (Adam with L2 weight decay).
    """

    phi: PyTree
    opt_state: optax.OptState


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
    """

    init: InitFn
    weigh: WeighFn
    correction: Callable[[PyTree, jax.Array], tuple[jax.Array, jax.Array]] | None = None
    clean_share: float = 0.0


def _init_empty(rng: jax.Array, class_counts_C=None) -> EmptyState:
    del rng, class_counts_C
    return EmptyState()


def _check_state(name: str, state: PyTree, state_type: type) -> None:
    if not isinstance(state, state_type):
        raise ValueError(f"method {name!r} needs its state {state_type.__name__} from its own "
                         f"init(rng, class_counts_C), got {type(state).__name__}.")


def _local_and_global_size(ctx: WeighContext) -> tuple[int, Any]:
    local = jax.tree.leaves(ctx.batch)[0].shape[0]
    if ctx.axis_name is None:
        return local, local
    return local, local * jax.lax.psum(1, ctx.axis_name)


def erm() -> WeighingScheme:
    """Empirical risk minimisation: ``w_i = 1 / B`` (B the global batch size); no state."""

    def weigh(ctx: WeighContext, state):
        local, total = _local_and_global_size(ctx)
        return jnp.full((local,), 1.0 / total, jnp.float32), state, {}

    return WeighingScheme(_init_empty, weigh)


# The recommended robust variant of :func:`l2rw` (docs/robust_default.md has the evidence);
# ``config.ROBUST_L2RW`` is the same as config fields (``method.l2rw.*``).
ROBUST_OPTIONS = {"memory_decay": 0.9, "warmup_steps": 200, "weight_map": "sign",
                  "normalize": "class_balanced", "meta_params": "last",
                  "mix": "excess_loss"}
# The no-mix variant (the default before the excess-loss mix): what benchmarks/results/robust_*.md's
# `l2rw_robust` rows and the meta-step table's earlier "recommended" rows measured.
ROBUST_OPTIONS_V1 = dict(ROBUST_OPTIONS, mix="none")

_WEIGHT_MAPS = ("clip", "sign", "capped", "one")
_NORMALIZE = ("batch", "class", "class_balanced", "endorsed_classes")
_META_PARAMS = ("all", "last")
_MIXES = ("none", "reliability", "reliability_classes", "excess_loss")


def l2rw(mode: str = "forward", all_clipped: str = "zero", lookahead: str = "optimizer", *,
         memory_decay: float = 0.0, warmup_steps: int = 0, weight_map: str = "clip",
         normalize: str = "batch", meta_params: str | tuple[str, ...] = "all",
         loss_quantile: float = 0.0, mix: str = "none"
         ) -> WeighingScheme:
    r"""Learning to Reweight Examples (Ren et al. 2018, arXiv 1803.09050, Alg. 1), and variants.

    With the default options, exactly the paper: weights from
    :func:`l2rw_jax.reweight.meta_weights` (validation on the clean batch after a look-ahead
    step), ``w_i = max(-g_i, 0) / sum_k max(-g_k, 0)``. The options (docs/design.md §2 stays
    the reference; docs/robust_default.md has the measured effect of each) replace the
    single-batch score ``s_i = g_i`` and the map from scores to weights:

    - ``memory_decay = d > 0``: a per-example memory of the meta-gradient, keyed by the example's
      dataset row ``batch["index"]``: ``m_i <- d m_i + (1 - d) g^_i`` (``m_i <- g^_i`` at the
      first visit), ``s_i = m_i``, with ``g^ = g / rms(g)`` over the global batch (why: the
      learning-rate schedule and the falling loss change the scale of ``g`` by orders of
      magnitude over training; the sign and the rank within a batch are what carry the
      signal). The state is :class:`L2RWState` ``(memory_N, seen_N)`` with ``N =
      sum(class_counts_C)`` (so ``init`` needs ``class_counts_C``); ``EmptyState()`` when
      ``d = 0``.
    - ``weight_map``: ``"clip"`` (paper: ``w~_i = max(-s_i, 0)``) or ``"sign"`` (``w~_i =
      1[s_i < 0]``: every example the clean batch endorses counts equally, so the effective
      batch does not collapse onto the few largest meta-gradients), ``"capped"`` (``w~_i =
      min(max(-s_i, 0), tau)``, ``tau`` the median of the positive ``-s`` of the global batch:
      graded like the paper's map, but no example outweighs half of the endorsed ones), or
      ``"one"`` (``w~_i = 1``: the meta-gradient is ignored; an ablation for the loss gate
      below).
    - ``normalize``: ``"batch"`` (paper: ``w = w~ / sum w~`` over the batch), ``"class"`` (per
      observed label ``c`` present in the batch with ``n_c`` of its ``B`` examples: ``w_i =
      (n_c / B) w~_i / sum_{k: y_k = c} w~_k``, so no class can be switched off as a whole) or
      ``"class_balanced"`` (the same with an equal share ``1 / #classes present`` per class: the
      ``proportion`` baseline's class balance, redistributed within each class by L2RW). A
      class whose ``w~`` are all 0 gets its share spread uniformly over its examples.
      ``"endorsed_classes"``: an equal share ``1 / K`` for each of the ``K`` classes with a
      positive ``w~`` sum, spread by ``w~`` within the class; a class with none gets 0, as in
      the paper. Why: with the paper's batch normalisation the weight mass of a class follows
      the clean batch's verdict of the moment, and when a flip moves many labels into one
      class (background flip) the class mass swings from step to step until training diverges
      (measured: docs/protocol.md); ``"class_balanced"`` stops the swing but re-admits,
      uniformly, a class whose examples were all judged harmful.
    - ``warmup_steps = W``: uniform weights ``1 / B`` while ``step < W`` (the meta-gradient is
      still computed, and fills the memory).
    - ``loss_quantile = q > 0``: a loss gate calibrated on the clean batch: ``w~_i`` is
      multiplied by ``1[C_i(theta) <= tau]`` with ``tau`` the ``q``-quantile of the clean
      batch's losses at ``theta``. Why: early in training (or on a model that underfits) the
      meta-gradient barely separates flipped from clean examples while the loss does; the
      clean set, which the model never trains on, says which losses a correct label has now.
      Once the model fits its training set, every training loss falls below ``tau`` and the
      gate opens, leaving the meta-gradient in charge.
    - ``meta_params="last"``: the meta-gradient through the output layer only: ``epsilon``
      moves only ``params["head"]`` (``models.OUTPUT_LAYER``, the output layer of every model
      in :mod:`l2rw_jax.models`), the others enter as constants (``stop_gradient``). Still
      exact for that restricted look-ahead, and cheaper: the body of the network is run
      forward once per batch and never differentiated inside the meta-step. For a module of
      your own, give the output layer's path instead: ``meta_params =
      models.output_layer_path(module, input_shape)`` (any tuple of keys ``path`` moves only
      ``params[path[0]][path[1]]...``). Never "the last entry of params": Flax sorts the keys,
      so that is whatever name sorts last.

    - ``mix="reliability"``: ``w = rho w_paper + (1 - rho) w_options``, the paper's weights
      (this batch's ``g``, clip, batch normalisation; with ``"reliability_classes"`` the clip
      map normalised per endorsed class, as ``normalize="endorsed_classes"``) mixed with the
      weights the options above give, by how reproducible the per-example meta-gradient is on
      this step's clean batch. The clean batch is split in halves ``A``, ``B``, its even and
      odd rows (the same split on any number of programs, as each program's share has an even
      size); ``g^A`` is the meta-gradient on ``A`` alone and ``g^B = 2 g - g^A`` (exact: the
      clean loss is a mean over equal halves, and ``g`` is linear in it); ``r`` is the Pearson
      correlation of ``g^A`` and ``g^B`` over the global batch and ``rho = clip(2 r / (1 + r),
      0, 1)`` its Spearman-Brown value for the whole clean batch (the reliability of the
      scores ``g``). Why: the paper's map concentrates the weights on the largest ``-g``; that
      pays where the clean set separates the flipped examples reproducibly (a model memorising
      them), and throws away data where ``g`` is mostly the clean batch's sampling noise (a
      model that underfits). The clean set decides per step; nobody has to guess the regime.
      Measured (docs/protocol.md): it recovers most of the paper's gain where the model
      memorises, but ``rho`` separates the regimes only partly, and on an underfitting model
      it still costs up to 5 points against class-balanced training. Costs one more
      meta-gradient (on half the clean batch). Metric ``reliability`` (``rho``).
    - ``mix="excess_loss"`` (the recommended default): ``w = e w_graded + (1 - e) w_options``,
      ``w_graded`` the clip map normalised per endorsed class (as with
      ``"reliability_classes"``) and ``e = clip(L_train / L_clean - 1, 0, 1)``
      (:func:`excess_loss_share`): how far the training batch's mean loss at ``theta``
      (unweighted, observed labels) exceeds the clean batch's. Why: the graded map pays once
      the model is confident on the true classes, so that the flipped examples stand out (their
      loss is far above the clean loss: ``e`` is above 0.95 from step 350 on the digits and
      1 from step 1000-1750 on the MNIST settings); it throws away data while the model's own error
      dominates both losses (early in training, or a model that underfits: ``e`` is 0 at
      first and rises to 0.22-0.25 by the end of the underfit CIFAR settings, so the options'
      weights lead). It needs no second meta-gradient, only a forward pass of both batches at
      ``theta``. Measured (docs/protocol.md): the only variant we measured that is, in
      every setting of the protocol and within the seeds' CI, at least plain and
      class-balanced training and within 2 points of the paper's rule where that works.
      Metric ``excess_loss_share`` (``e``).

    Metrics: ``val_loss`` (at the zero-gradient look-ahead) and the raw meta-gradient ``g_B``;
    with a mix, ``excess_loss_share`` or ``reliability``.

    Args:
      mode: ``"forward"`` (default, cheaper) or ``"reverse"``; both exact.
      all_clipped: ``"zero"`` (paper) or ``"uniform"``: weights when every ``w~_i = 0`` (with
        ``normalize="batch"``).
      lookahead: ``"optimizer"`` (docs/design.md §2: the training optimizer with its state, so
        momentum moves the look-ahead point to ``theta'_0 != theta``) or ``"sgd"`` (the official
        code: ``theta' = theta - grad L_f``, no momentum or weight decay, evaluated at
        ``theta`` itself; its learning rate cancels in the normalisation).
      memory_decay: ``d`` in ``[0, 1)``; 0 (paper) uses this batch's ``g`` alone.
      warmup_steps: steps of uniform weights before reweighting starts (``>= 0``).
      weight_map: ``"clip"`` (paper), ``"sign"``, ``"capped"`` or ``"one"``.
      normalize: ``"batch"`` (paper), ``"class"``, ``"class_balanced"`` or
        ``"endorsed_classes"``.
      meta_params: ``"all"`` (paper), ``"last"`` or a path (tuple of keys) in ``params``.
      loss_quantile: ``q`` in ``[0, 1]``; 0 (paper) means no loss gate.
      mix: ``"none"`` (paper: the options' weights alone), ``"reliability"``,
        ``"reliability_classes"`` or ``"excess_loss"``.

    Raises:
      ValueError: an option outside the values above; with a ``"reliability*"`` mix (when
        traced), a clean batch whose per-program size is odd.

    Returns:
      A :class:`WeighingScheme`; its state is :class:`L2RWState` when ``memory_decay > 0``,
      else ``EmptyState()``.
    """
    reweight._check_choice("mode", mode, reweight._MODES)
    reweight._check_choice("all_clipped", all_clipped, reweight._ALL_CLIPPED)
    reweight._check_choice("lookahead", lookahead, ("optimizer", "sgd"))
    reweight._check_choice("weight_map", weight_map, _WEIGHT_MAPS)
    reweight._check_choice("normalize", normalize, _NORMALIZE)
    if isinstance(meta_params, str):
        reweight._check_choice("meta_params", meta_params, _META_PARAMS)
    elif not (isinstance(meta_params, (tuple, list)) and meta_params
              and all(isinstance(k, str) for k in meta_params)):
        raise ValueError(f"meta_params={meta_params!r} is not supported; allowed: all, last, or "
                         f"a non-empty tuple of keys (a path in params).")
    else:
        meta_params = tuple(meta_params)
    reweight._check_choice("mix", mix, _MIXES)
    if not (isinstance(loss_quantile, (int, float)) and 0.0 <= loss_quantile <= 1.0):
        raise ValueError(f"loss_quantile must be a number in [0, 1], got {loss_quantile!r}.")
    if not (isinstance(memory_decay, (int, float)) and 0.0 <= memory_decay < 1.0):
        raise ValueError(f"memory_decay must be a number in [0, 1), got {memory_decay!r}.")
    if isinstance(warmup_steps, bool) or not isinstance(warmup_steps, int) or warmup_steps < 0:
        raise ValueError(f"warmup_steps must be an integer >= 0, got {warmup_steps!r}.")
    paper_map = (memory_decay == 0 and weight_map == "clip" and normalize == "batch"
                 and loss_quantile == 0 and mix == "none")
    plain_sgd = optax.sgd(1.0)

    def init(rng: jax.Array, class_counts_C=None):
        del rng
        if not memory_decay:
            return EmptyState()
        num_train = int(round(float(jnp.sum(_class_counts("l2rw", class_counts_C)))))
        return L2RWState(memory_N=jnp.zeros((num_train,), jnp.float32),
                         seen_N=jnp.zeros((num_train,), jnp.bool_))

    def weigh(ctx: WeighContext, state):
        if memory_decay > 0:
            _check_state("l2rw", state, L2RWState)
        if lookahead == "sgd":
            tx, opt_state = plain_sgd, plain_sgd.init(ctx.params)
        else:
            tx, opt_state = ctx.tx, ctx.opt_state
        loss_fn, val_loss_fn = ctx.loss_fn, ctx.val_loss_fn or ctx.loss_fn
        loss_fn_plain, val_loss_fn_plain = loss_fn, val_loss_fn
        if meta_params != "all":
            loss_fn, val_loss_fn = (_moving_only(loss_fn, meta_params),
                                    _moving_only(val_loss_fn, meta_params))
        mw = reweight.meta_weights(
            loss_fn, ctx.params, opt_state, tx, ctx.batch, ctx.val_batch,
            mode=mode, axis_name=ctx.axis_name, val_loss_fn=val_loss_fn,
            all_clipped=all_clipped)
        w_B = mw.w
        metrics = {"val_loss": mw.val_loss, "g_B": mw.g}
        if not paper_map:
            score_B = mw.g
            if memory_decay > 0:
                score_B, state = _remember(state, ctx.batch["index"], mw.g, memory_decay,
                                           ctx.axis_name)
            if weight_map == "clip":
                wt_B = jnp.maximum(-score_B, 0.0)
            elif weight_map == "sign":
                wt_B = (score_B < 0).astype(jnp.float32)
            elif weight_map == "capped":
                wt_B = _capped(jnp.maximum(-score_B, 0.0), ctx.axis_name)
            else:  # "one": the ablation without the meta-gradient (only the gate decides)
                wt_B = jnp.ones_like(score_B)
            if loss_quantile > 0:
                wt_B = wt_B * _loss_gate(loss_fn_plain, val_loss_fn_plain, ctx, loss_quantile)
            if normalize == "batch":
                w_B = reweight.normalize_weights(-wt_B, axis_name=ctx.axis_name,
                                                 all_clipped=all_clipped)[0]
            else:
                w_B = _class_normalized(wt_B, ctx.batch["label"], normalize, ctx.axis_name)
            if mix != "none":
                # The graded weights: the paper's map, normalised over the batch (paper) or per
                # endorsed class; mixed in by a weight the clean set gives at this step.
                w_graded_B = mw.w if mix == "reliability" else _class_normalized(
                    jnp.maximum(-mw.g, 0.0), ctx.batch["label"], "endorsed_classes",
                    ctx.axis_name)
                if mix == "excess_loss":
                    mix_weight = excess_loss_share(loss_fn_plain, val_loss_fn_plain, ctx)
                    metrics["excess_loss_share"] = mix_weight
                else:
                    g_half_B = reweight.meta_gradient(
                        loss_fn, ctx.params, opt_state, tx, ctx.batch,
                        _even_rows(ctx.val_batch), mode=mode, axis_name=ctx.axis_name,
                        val_loss_fn=val_loss_fn)[0]
                    mix_weight = split_half_reliability(g_half_B, 2.0 * mw.g - g_half_B,
                                                        ctx.axis_name)
                    metrics["reliability"] = mix_weight
                w_B = mix_weight * w_graded_B + (1.0 - mix_weight) * w_B
        if warmup_steps:
            _, total = _local_and_global_size(ctx)
            w_B = jnp.where(ctx.step < warmup_steps, jnp.full_like(w_B, 1.0 / total), w_B)
        return w_B, state, metrics

    return WeighingScheme(init, weigh)


def _even_rows(val_batch: PyTree) -> PyTree:
    sizes = {x.shape[0] for x in jax.tree.leaves(val_batch)}
    if len(sizes) != 1 or next(iter(sizes)) % 2:
        raise ValueError(f"mix='reliability*' splits the clean batch in two equal halves; its "
                         f"per-program size must be even, got {sorted(sizes)}.")
    return jax.tree.map(lambda x: x[0::2], val_batch)


def split_half_reliability(gA_B: jax.Array, gB_B: jax.Array,
                           axis_name: str | None = None) -> jax.Array:
    """``clip(2 r / (1 + r), 0, 1)``, ``r`` the Pearson correlation of the meta-gradients on
    two halves of the clean batch over the global training batch (0 when either is constant):
    the Spearman-Brown reliability of the whole clean batch's meta-gradient (Spearman 1910,
    Brown 1910). A float32 scalar in [0, 1]."""
    a_G, b_G = _gathered(gA_B, axis_name), _gathered(gB_B, axis_name)
    a_G, b_G = a_G - jnp.mean(a_G), b_G - jnp.mean(b_G)
    denom = jnp.sqrt(jnp.sum(a_G * a_G) * jnp.sum(b_G * b_G))
    r = jnp.where(denom > 0, jnp.sum(a_G * b_G) / jnp.where(denom > 0, denom, 1.0), 0.0)
    r = jnp.maximum(r, 0.0)
    return jnp.clip(2.0 * r / (1.0 + r), 0.0, 1.0)


def excess_loss_share(loss_fn: reweight.LossFn, val_loss_fn: reweight.LossFn,
                      ctx: WeighContext) -> jax.Array:
    """``clip(L_train / L_clean - 1, 0, 1)`` at ``theta``: the training loss's relative excess
    over the clean loss, the graded weights' share in ``l2rw(mix="excess_loss")``.
    ``L_train`` is the mean training loss (unweighted, against the observed labels) over the
    global batch, ``L_clean`` the clean batch's mean loss. A float32 scalar in [0, 1]; 0 when
    ``L_clean <= 0``.

    With a noise rate ``eta``, a model that has learnt the task without memorising the flips
    has ``L_train ~ (1 - eta) l_correct + eta l_flipped`` and ``L_clean ~ l_correct``, so the
    excess is ``eta (l_flipped / l_correct - 1)``: large when the flips stand out by their loss
    (the model is confident on the true classes), near 0 while the model's own error dominates
    both losses (it underfits, or early in training). It also falls to 0 when the model fits
    the flips anyway (``L_train`` drops to ``L_clean``): then the mix leaves the options'
    weights in charge, which slow that memorisation without stopping it (docs/protocol.md,
    the CIFAR MLP setting). Where the graded weights keep the flips out (digits,
    MNIST), ``L_train`` stays high and the excess at 1."""
    losses_B, val_losses_G = _losses_at_theta(loss_fn, val_loss_fn, ctx)
    train_loss = jnp.mean(_gathered(losses_B, ctx.axis_name))
    clean_loss = jnp.mean(val_losses_G)
    excess = train_loss / jnp.where(clean_loss > 0, clean_loss, 1.0) - 1.0
    return jnp.where(clean_loss > 0, jnp.clip(excess, 0.0, 1.0), 0.0)


def _capped(wt_B: jax.Array, axis_name: str | None) -> jax.Array:
    """``min(wt_i, tau)`` with ``tau`` the median of the positive ``wt`` of the global batch
    (``wt`` itself when none is positive)."""
    wt_G = _gathered(wt_B, axis_name)
    pos_G = wt_G > 0
    tau = jnp.nanmedian(jnp.where(pos_G, wt_G, jnp.nan))
    return jnp.where(jnp.any(pos_G), jnp.minimum(wt_B, tau), wt_B)


def _loss_gate(loss_fn, val_loss_fn, ctx: WeighContext, q: float) -> jax.Array:
    """``1[C_i(theta) <= tau]`` (float, shape B), ``tau`` the ``q``-quantile of the clean
    batch's losses at ``theta`` over the global clean batch."""
    losses_B, val_losses_G = _losses_at_theta(loss_fn, val_loss_fn, ctx)
    return (losses_B <= jnp.quantile(val_losses_G, q)).astype(jnp.float32)


def _losses_at_theta(loss_fn, val_loss_fn, ctx: WeighContext) -> tuple[jax.Array, jax.Array]:
    """``(losses_B, val_losses_G)``: this program's training losses and the global clean
    batch's losses at ``theta`` (constants: nothing differentiates through them)."""
    params = jax.lax.stop_gradient(ctx.params)
    return (loss_fn(params, ctx.batch),
            _gathered(val_loss_fn(params, ctx.val_batch), ctx.axis_name))


def _moving_only(loss_fn: reweight.LossFn, meta_params: str | tuple[str, ...]
                 ) -> reweight.LossFn:
    """``loss_fn`` with every parameter outside the ``meta_params`` subtree held constant.

    ``meta_params`` is ``"last"`` (the subtree ``params[models.OUTPUT_LAYER]``) or a path,
    a tuple of keys. Raises ValueError (when traced) if ``params`` has no such subtree, so a
    model whose output layer is named otherwise fails loudly instead of moving another layer.
    """
    path = (models.OUTPUT_LAYER,) if meta_params == "last" else tuple(meta_params)

    def frozen_loss_fn(params, batch):
        _check_meta_path(params, path, meta_params)

        def freeze(key_path, x):
            keys = tuple(getattr(k, "key", None) for k in key_path[:len(path)])
            return x if keys == path else jax.lax.stop_gradient(x)

        return loss_fn(jax.tree.map_with_path(freeze, params), batch)

    return frozen_loss_fn


def _check_meta_path(params: PyTree, path: tuple[str, ...], meta_params) -> None:
    node = params
    for depth, key in enumerate(path):
        if not hasattr(node, "keys") or key not in node:
            keys = sorted(node) if hasattr(node, "keys") else type(node).__name__
            if meta_params == "last":
                raise ValueError(
                    f"meta_params='last' moves params[{models.OUTPUT_LAYER!r}], the output layer "
                    f"of every l2rw_jax model, but these params have no {models.OUTPUT_LAYER!r} "
                    f"(top-level: {keys}); pass the output layer's path instead: "
                    f"meta_params=models.output_layer_path(module, input_shape).")
            raise ValueError(f"meta_params={meta_params!r}: params has no {key!r} at "
                             f"{path[:depth]} (keys there: {keys}).")
        node = node[key]
    if not jax.tree.leaves(node):
        raise ValueError(f"meta_params={meta_params!r}: params{list(path)} holds no parameters.")


def _gathered(x_B: jax.Array, axis_name: str | None) -> jax.Array:
    """The global batch of ``x_B`` on every program (itself without ``axis_name``)."""
    if axis_name is None:
        return x_B
    # A psum of each program's block placed at its offset: exact (the rest adds zeros), and
    # its result is known to be replicated, so state built from it can leave as replicated.
    size = x_B.shape[0]
    offset = jax.lax.axis_index(axis_name) * size
    x_G = jnp.zeros((size * jax.lax.psum(1, axis_name),), x_B.dtype)
    x_G = jax.lax.dynamic_update_slice_in_dim(x_G, x_B, offset, axis=0)
    return jax.lax.psum(x_G, axis_name)


def rms_normalized(g_B: jax.Array) -> jax.Array:
    """``g / rms(g)`` over the batch (``g`` itself when it is all 0): the meta-gradient on a
    scale comparable across steps. The learning-rate schedule and the falling loss change the
    raw scale by orders of magnitude over training; the sign and the size relative to the rest
    of the batch are what carry the signal (used by the memory and by the recorded
    ``mean_meta_grad`` of :mod:`l2rw_jax.train`)."""
    rms = jnp.sqrt(jnp.mean(jnp.square(g_B)))
    return g_B / jnp.where(rms > 0, rms, 1.0)


def _remember(state: L2RWState, index_B: jax.Array, g_B: jax.Array, decay: float,
              axis_name: str | None) -> tuple[jax.Array, L2RWState]:
    """``(m_B, new_state)``: the per-example memory updated with ``g^ = g / rms(g)`` at rows
    ``index_B`` (see :func:`l2rw`), and its new values there. Every program updates its
    replica with the whole global batch, so the replicas stay equal."""
    index_G, gn_G = _gathered(index_B, axis_name), rms_normalized(_gathered(g_B, axis_name))
    memory_N, seen_N = state.memory_N, state.seen_N
    old_G = memory_N[index_G]
    new_G = jnp.where(seen_N[index_G], decay * old_G + (1.0 - decay) * gn_G, gn_G)
    state = L2RWState(memory_N=memory_N.at[index_G].set(new_G),
                      seen_N=seen_N.at[index_G].set(True))
    return state.memory_N[index_B], state


def _class_normalized(wt_B: jax.Array, label_B: jax.Array, normalize: str,
                      axis_name: str | None) -> jax.Array:
    """``w_i = share_{y_i} wt_i / sum_{k: y_k = y_i} wt_k`` over the global batch. ``normalize``
    sets the shares: ``"class"``: ``n_c / B``; ``"class_balanced"``: ``1 / #classes present``,
    a class whose ``wt`` sum to 0 getting ``share_c / n_c`` on each of its examples (both sum
    to 1); ``"endorsed_classes"``: ``1 / K`` for each of the ``K`` classes with a positive
    ``wt`` sum, 0 for the others (all 0 when nothing is endorsed)."""
    wt_G, label_G = _gathered(wt_B, axis_name), _gathered(label_B, axis_name)
    same_BxG = (label_B[:, None] == label_G[None, :]).astype(jnp.float32)
    same_GxG = (label_G[:, None] == label_G[None, :]).astype(jnp.float32)
    count_B = jnp.sum(same_BxG, axis=1)           # n_{y_i}, >= 1
    total_B = same_BxG @ wt_G                     # sum of wt over the class of example i
    switched_off_B = total_B <= 0
    within_B = wt_B / jnp.where(switched_off_B, 1.0, total_B)
    if normalize == "endorsed_classes":
        endorsed_G = (same_GxG @ wt_G) > 0
        num_endorsed = jnp.sum(jnp.where(endorsed_G, 1.0 / jnp.sum(same_GxG, axis=1), 0.0))
        return jnp.where(switched_off_B, 0.0, within_B) / jnp.maximum(num_endorsed, 1.0)
    num_present = jnp.sum(1.0 / jnp.sum(same_GxG, axis=1))
    share_B = 1.0 / num_present if normalize == "class_balanced" else count_B / label_G.shape[0]
    return share_B * jnp.where(switched_off_B, 1.0 / count_B, within_B)


def _normalized(wt_B: jax.Array, axis_name: str | None) -> jax.Array:
    """``wt_B / sum(wt)`` over the global batch for ``wt_B >= 0``; 0 when the sum is 0."""
    return reweight.normalize_weights(-wt_B, axis_name=axis_name)[0]


def _single_device_only(name: str, ctx: WeighContext) -> None:
    if ctx.axis_name is not None:
        raise ValueError(f"method {name!r} needs the whole batch on one program (axis_name="
                         f"None); for data parallelism use jax.jit over a Mesh, which keeps "
                         f"global-batch semantics, instead of pmap/shard_map "
                         f"(axis_name={ctx.axis_name!r}).")


def random_weights() -> WeighingScheme:
    """Random weights (Ren et al. 2018 §5.1; official code ``reweight_random``).

    ``w~_i = max(z_i, 0)`` with ``z_i ~ N(0, 1)`` i.i.d. (a rectified Gaussian), ``w = w~ /
    sum_k w~_k`` over the global batch (0 if all are clipped, probability ``2^-B``). No state;
    the randomness is ``ctx.rng``.
    """

    def weigh(ctx: WeighContext, state):
        local, _ = _local_and_global_size(ctx)
        key = ctx.rng
        if ctx.axis_name is not None:
            key = jax.random.fold_in(key, jax.lax.axis_index(ctx.axis_name))
        z_B = jax.random.normal(key, (local,), jnp.float32)
        return _normalized(jnp.maximum(z_B, 0.0), ctx.axis_name), state, {}

    return WeighingScheme(_init_empty, weigh)


def proportion() -> WeighingScheme:
    """Inverse class frequency (the paper's "Proportion" baseline, Ren et al. 2018 §5.1).

    ``w_i = (1 / n_{y_i}) / sum_k (1 / n_{y_k})`` over the global batch, ``n_c`` the number of
    training examples with *observed* label ``c``: the state is :class:`ProportionState`
    ``(class_weight_C = 1 / n_c)``, so ``init`` needs ``class_counts_C``.
    """

    def init(rng: jax.Array, class_counts_C=None) -> ProportionState:
        del rng
        counts_C = _class_counts("proportion", class_counts_C)
        return ProportionState(
            class_weight_C=jnp.where(counts_C > 0, 1.0 / jnp.maximum(counts_C, 1.0), 0.0))

    def weigh(ctx: WeighContext, state: ProportionState):
        _check_state("proportion", state, ProportionState)
        wt_B = state.class_weight_C[ctx.batch["label"]]
        return _normalized(wt_B, ctx.axis_name), state, {}

    return WeighingScheme(init, weigh)


def _class_counts(name: str, class_counts_C) -> jax.Array:
    if class_counts_C is None:
        raise ValueError(f"method {name!r} needs class_counts_C, the number of training "
                         f"examples per observed class.")
    counts_C = jnp.asarray(class_counts_C, jnp.float32)
    if counts_C.ndim != 1 or not bool(jnp.all(counts_C >= 0)) or not bool(jnp.any(counts_C > 0)):
        raise ValueError(f"class_counts_C must be a 1-D array of counts >= 0, not all 0; got "
                         f"{class_counts_C!r}.")
    return counts_C


def hard_mining() -> WeighingScheme:
    """Class-balanced hard example mining (the official MNIST code's ``reweight_hard_mining``).

    With ``m`` the majority class (most observed training labels; the state is
    :class:`HardMiningState` ``(majority = m)``, so ``init`` needs ``class_counts_C``): every
    example of another class is kept, and of the majority class the ``k = max(#{i : y_i != m},
    1)`` examples with the highest loss ``C_i(theta)`` (ties: lower batch position first); ``w_i
    = 1 / #kept`` on the kept examples, 0 elsewhere. (The official code ranks by the
    *batch-mean* loss, so it keeps an arbitrary ``k`` majority examples; here each example's own
    loss is used. It also used batches of 500 for this baseline.)
    """

    def init(rng: jax.Array, class_counts_C=None) -> HardMiningState:
        del rng
        counts_C = _class_counts("hard_mining", class_counts_C)
        return HardMiningState(majority=jnp.argmax(counts_C).astype(jnp.int32))

    def weigh(ctx: WeighContext, state: HardMiningState):
        _single_device_only("hard_mining", ctx)
        _check_state("hard_mining", state, HardMiningState)
        losses_B = jax.lax.stop_gradient(ctx.loss_fn(ctx.params, ctx.batch))
        major_B = ctx.batch["label"] == state.majority
        k = jnp.maximum(jnp.sum(~major_B), 1)
        order_B = jnp.argsort(jnp.where(major_B, -losses_B, jnp.inf), stable=True)
        rank_B = jnp.zeros_like(order_B).at[order_B].set(jnp.arange(order_B.shape[0]))
        keep_B = (~major_B | (rank_B < k)).astype(jnp.float32)
        return keep_B / jnp.sum(keep_B), state, {}

    return WeighingScheme(init, weigh)


def _vnet(phi: PyTree, losses_B: jax.Array) -> jax.Array:
    """Meta-Weight-Net ``V(C; phi) = sigmoid(w2 . relu(w1 C + b1) + b2)``, per example."""
    h_BxH = jax.nn.relu(losses_B[:, None] * phi["w1_H"][None, :] + phi["b1_H"][None, :])
    return jax.nn.sigmoid(h_BxH @ phi["w2_H"] + phi["b2"])


def _mwnet_tx(meta_lr: float, meta_weight_decay: float) -> optax.GradientTransformation:
    # torch.optim.Adam(weight_decay=wd) adds wd * phi to the gradient (L2, not AdamW).
    return optax.chain(optax.add_decayed_weights(meta_weight_decay), optax.adam(meta_lr))


def mwnet(hidden: int = 100, meta_lr: float = 1e-3, meta_weight_decay: float = 1e-4,
          normalize: bool = True) -> WeighingScheme:
    r"""Meta-Weight-Net (Shu et al., NeurIPS 2019, arXiv 1902.07379, Alg. 1).

    A 1-``hidden``-1 MLP ``V(C; phi)`` (ReLU, sigmoid output) maps an example's loss to its
    weight, ``w_i(phi) = V(C_i; phi) / sum_k V(C_k; phi)`` (``normalize=True``, their class-
    imbalance code) or ``V(C_i; phi) / B`` (``normalize=False``, their noisy-label code). Each
    step (the losses ``C_i`` are inputs, not differentiated through, as ``cost_v.data`` there):

    .. math::
        \theta'(\phi) = \theta + u\big(\textstyle\sum_i w_i(\phi) \nabla C_i(\theta)\big),\quad
        \phi \leftarrow \mathrm{Adam}\big(\phi, \nabla_\phi L_{val}(\theta'(\phi))\big),\quad
        w = w(\phi_{new}),

    with ``u`` the training optimizer's update (``tx.update``, the same look-ahead as L2RW;
    the paper uses plain SGD at the current learning rate) and ``w`` then used by the real step.
    The meta-gradient is computed exactly in forward mode by
    :func:`l2rw_jax.reweight.meta_gradient` started from ``base_grads = g``:
    ``dL/dw_i = <J_u(g)^T grad L_val(theta'), grad C_i(theta)> = [J_C(theta) v]_i`` (one
    ``jax.jvp`` of the loss vector along ``v``) with ``g = sum_i w_i grad C_i``, then
    ``dL/dphi`` is the ``vjp`` of ``phi -> w(phi)`` applied to ``dL/dw``.

    The state is :class:`MWNetState` ``(phi, opt_state)``; ``init(rng)`` draws ``phi`` as
    PyTorch's ``nn.Linear`` does (uniform in ``+-1/sqrt(fan_in)``), as in their code, and
    ignores ``class_counts_C``.
    Metrics: ``val_loss`` (clean loss at the look-ahead with the old ``phi``).
    """
    meta_tx = _mwnet_tx(meta_lr, meta_weight_decay)

    def weights(phi, losses_B):
        v_B = _vnet(phi, losses_B)
        if normalize:
            total = jnp.sum(v_B)
            return v_B / jnp.where(total > 0, total, 1.0)
        return v_B / v_B.shape[0]

    def init(rng: jax.Array, class_counts_C=None) -> MWNetState:
        del class_counts_C
        k1, k2, k3, k4 = jax.random.split(rng, 4)
        bound2 = 1.0 / hidden ** 0.5
        phi = {"w1_H": jax.random.uniform(k1, (hidden,), jnp.float32, -1.0, 1.0),
               "b1_H": jax.random.uniform(k2, (hidden,), jnp.float32, -1.0, 1.0),
               "w2_H": jax.random.uniform(k3, (hidden,), jnp.float32, -bound2, bound2),
               "b2": jax.random.uniform(k4, (), jnp.float32, -bound2, bound2)}
        return MWNetState(phi=phi, opt_state=meta_tx.init(phi))

    def weigh(ctx: WeighContext, state: MWNetState):
        _single_device_only("mwnet", ctx)
        _check_state("mwnet", state, MWNetState)
        losses_B, val_loss, grad_phi = _mwnet_meta_gradient(ctx, state.phi, weights)
        phi_updates, phi_opt_state = meta_tx.update(grad_phi, state.opt_state, state.phi)
        phi = optax.apply_updates(state.phi, phi_updates)
        return (weights(phi, losses_B), MWNetState(phi=phi, opt_state=phi_opt_state),
                {"val_loss": val_loss})

    return WeighingScheme(init, weigh)


def _mwnet_meta_gradient(ctx: WeighContext, phi: PyTree, weights: Callable):
    """``(losses_B, L_val(theta'(phi)), d L_val(theta'(phi)) / d phi)`` in forward mode.

    ``weights(phi, losses_B) -> w_B``; ``theta'(phi) = theta + u(sum_i w_i(phi) grad C_i)``
    with ``u = tx.update``; see :func:`mwnet` for the chain rule used. ``d L_val / d w`` is
    :func:`l2rw_jax.reweight.meta_gradient` with ``base_grads = sum_i w_i grad C_i``: the same
    look-ahead derivative as L2RW's (finite on coordinates whose gradient and Adam moments are
    0, see there).
    """
    losses_B, pullback_C = jax.vjp(lambda p: ctx.loss_fn(p, ctx.batch), ctx.params)
    losses_B = jax.lax.stop_gradient(losses_B)
    w_B, pullback_w = jax.vjp(lambda f: weights(f, losses_B), phi)
    (grads,) = pullback_C(w_B)  # sum_i w_i grad C_i(theta), one backward pass.
    dval_dw_B, val_loss = reweight.meta_gradient(
        ctx.loss_fn, ctx.params, ctx.opt_state, ctx.tx, ctx.batch, ctx.val_batch,
        mode="forward", val_loss_fn=ctx.val_loss_fn, base_grads=grads)
    (grad_phi,) = pullback_w(dval_dw_B)
    return losses_B, val_loss, grad_phi


_SCHEMES: dict[str, Callable[..., WeighingScheme]] = {
    "erm": erm,
    "l2rw": l2rw,
    "random": random_weights,
    "proportion": proportion,
    "hard_mining": hard_mining,
    "mwnet": mwnet,
}


def get_scheme(name: str, **options) -> WeighingScheme:
    """The weighting scheme ``name`` built with ``options``, e.g.
    ``get_scheme("l2rw", mode="reverse")`` is ``l2rw(mode="reverse")``.

    Raises:
      ValueError: unknown ``name``, an option the scheme does not take, or a bad option value.
    """
    if name not in _SCHEMES:
        raise ValueError(f"Unknown weighting method {name!r}; allowed: {', '.join(_SCHEMES)}.")
    constructor = _SCHEMES[name]
    allowed = list(inspect.signature(constructor).parameters)
    unknown = sorted(set(options) - set(allowed))
    if unknown:
        raise ValueError(f"Unknown option(s) {unknown} for method {name!r}; allowed: {allowed}.")
    return constructor(**options)
