"""Learning to Reweight Examples as a weighting scheme: :func:`l2rw`, the chain of the stages of
:mod:`l2rw_jax.l2rw_stages` behind the :class:`l2rw_jax.weighing.WeighingScheme` contract
(re-exported by :mod:`l2rw_jax.methods`: ``methods.l2rw``, ``methods.get_scheme("l2rw")``).
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import optax

from l2rw_jax import l2rw_stages as stages
from l2rw_jax import reweight
from l2rw_jax.weighing import EmptyState
from l2rw_jax.weighing import WeighContext
from l2rw_jax.weighing import WeighingScheme
from l2rw_jax.weighing import check_state
from l2rw_jax.weighing import class_counts
from l2rw_jax.weighing import local_and_global_size

L2RWState = stages.L2RWState

# The recommended robust variant of :func:`l2rw` (docs/robust_default.md has the evidence);
# ``config.ROBUST_L2RW`` is the same as config fields (``method.l2rw.*``).
ROBUST_OPTIONS = {
    "memory_decay": 0.9,
    "warmup_steps": 200,
    "weight_map": "sign",
    "normalize": "class_balanced",
    "meta_params": "last",
    "mix": "excess_loss",
}
# The no-mix variant (the default before the excess-loss mix): what
# benchmarks/results/robust_*.md's `l2rw_robust` rows and the meta-step table's earlier
# "recommended" rows measured.
ROBUST_OPTIONS_V1 = dict(ROBUST_OPTIONS, mix="none")

_META_PARAMS = ("all", "last")
# The metric under which each mix reports its share.
_MIX_METRIC = {
    "reliability": "reliability",
    "reliability_classes": "reliability",
    "excess_loss": "excess_loss_share",
}


def l2rw(
    mode: str = "forward",
    all_clipped: str = "zero",
    lookahead: str = "optimizer",
    *,
    memory_decay: float = 0.0,
    warmup_steps: int = 0,
    weight_map: str = "clip",
    normalize: str = "batch",
    meta_params: str | tuple[str, ...] = "all",
    loss_quantile: float = 0.0,
    mix: str = "none",
) -> WeighingScheme:
    r"""Learning to Reweight Examples (Ren et al. 2018, arXiv 1803.09050, Alg. 1), and variants.

    With the default options, exactly the paper: weights from
    :func:`l2rw_jax.reweight.meta_weights` (validation on the clean batch after a look-ahead
    step), ``w_i = max(-g_i, 0) / sum_k max(-g_k, 0)``. The options (docs/design.md §2 stays
    the reference; docs/robust_default.md has the evidence for each) choose the stages of
    :mod:`l2rw_jax.l2rw_stages` that turn the meta-gradient ``g`` into weights::

        w = warm_up(mix(normalize(weight_map(score(g)) * loss_gate), graded_weights))

    - ``memory_decay = d > 0`` (:func:`~l2rw_jax.l2rw_stages.score`): a per-example memory of
      the meta-gradient, keyed by the example's dataset row ``batch["index"]``: ``m_i <- d m_i
      + (1 - d) g^_i`` (``m_i <- g^_i`` at the first visit), ``s_i = m_i``, with ``g^ = g /
      rms(g)`` over the global batch (why: the learning-rate schedule and the falling loss
      change the scale of ``g`` by orders of magnitude over training; the sign and the rank
      within a batch are what carry the signal). The state is :class:`L2RWState` ``(memory_N,
      seen_N)`` with ``N = sum(class_counts_C)`` (so ``init`` needs ``class_counts_C``);
      ``EmptyState()`` when ``d = 0``, and then ``s = g``.
    - ``weight_map`` (:func:`~l2rw_jax.l2rw_stages.weight_map`): ``"clip"`` (paper: ``w~_i =
      max(-s_i, 0)``), ``"sign"`` (``w~_i = 1[s_i < 0]``: every example the clean batch
      endorses counts equally, so the effective batch does not collapse onto the few largest
      meta-gradients), ``"capped"`` (``w~_i = min(max(-s_i, 0), tau)``, ``tau`` the median of
      the positive ``-s`` of the global batch: graded like the paper's map, but no example
      outweighs half of the endorsed ones), or ``"one"`` (``w~_i = 1``: the meta-gradient is
      ignored; an ablation for the loss gate below).
    - ``loss_quantile = q > 0`` (:func:`~l2rw_jax.l2rw_stages.loss_gate`): ``w~_i`` is
      multiplied by ``1[C_i(theta) <= tau]`` with ``tau`` the ``q``-quantile of the clean
      batch's losses at ``theta``. Why: early in training (or on a model that underfits) the
      meta-gradient barely separates flipped from clean examples while the loss does; the
      clean set, which the model never trains on, says which losses a correct label has now.
      Once the model fits its training set, every training loss falls below ``tau`` and the
      gate opens, leaving the meta-gradient in charge.
    - ``normalize`` (:func:`~l2rw_jax.l2rw_stages.normalize`): ``"batch"`` (paper: ``w = w~ /
      sum w~`` over the batch), ``"class"`` (per observed label ``c`` present in the batch
      with ``n_c`` of its ``B`` examples: ``w_i = (n_c / B) w~_i / sum_{k: y_k = c} w~_k``, so
      no class can be switched off as a whole) or ``"class_balanced"`` (the same with an equal
      share ``1 / #classes present`` per class: the ``proportion`` baseline's class balance,
      redistributed within each class by L2RW). A class whose ``w~`` are all 0 gets its share
      spread uniformly over its examples. ``"endorsed_classes"``: an equal share ``1 / K`` for
      each of the ``K`` classes with a positive ``w~`` sum, spread by ``w~`` within the class;
      a class with none gets 0, as in the paper. Why: with the paper's batch normalisation the
      weight mass of a class follows the clean batch's verdict of the moment, and when a flip
      moves many labels into one class (background flip) the class mass can swing from step to
      step until training diverges; ``"class_balanced"`` stops the swing but re-admits,
      uniformly, a class whose examples were all judged harmful.
    - ``mix`` (:func:`~l2rw_jax.l2rw_stages.mix`): ``w = e w_graded + (1 - e) w_options``,
      graded weights (:func:`~l2rw_jax.l2rw_stages.graded_weights`) mixed into the weights the
      options above give, by a share ``e`` in [0, 1] that this step's clean batch gives.
      ``"excess_loss"`` (the recommended default): ``w_graded`` the clip map of ``g``
      normalised per endorsed class, ``e = clip(L_train / L_clean - 1, 0, 1)``
      (:func:`excess_loss_share`): how far the training batch's mean loss at ``theta``
      (unweighted, observed labels) exceeds the clean batch's. Why: the graded map pays once
      the model is confident on the true classes, so that the flipped examples stand out by
      their loss (``e`` near 1); it throws away data while the model's own error dominates
      both losses (early in training, or a model that underfits: ``e`` near 0, the options'
      weights lead). It needs no second meta-gradient, only a forward pass of both batches at
      ``theta``. ``"reliability"``: ``w_graded`` the paper's weights (this batch's ``g``,
      clip, batch normalisation; ``"reliability_classes"``: normalised per endorsed class as
      with ``"excess_loss"``), ``e = rho`` how reproducible the per-example meta-gradient is
      on this step's clean batch. The clean batch is split in halves ``A``, ``B``, its even
      and odd rows (the same split on any number of programs, as each program's share has an
      even size); ``g^A`` is the meta-gradient on ``A`` alone and ``g^B = 2 g - g^A`` (exact:
      the clean loss is a mean over equal halves, and ``g`` is linear in it); ``r`` is the
      Pearson correlation of ``g^A`` and ``g^B`` over the global batch and ``rho = clip(2 r /
      (1 + r), 0, 1)`` its Spearman-Brown value for the whole clean batch
      (:func:`~l2rw_jax.l2rw_stages.split_half_reliability`). Costs one more meta-gradient
      (on half the clean batch).
    - ``warmup_steps = W`` (:func:`~l2rw_jax.l2rw_stages.warm_up`): uniform weights ``1 /
      B`` while ``step < W`` (the meta-gradient is still computed, and fills the memory).
    - ``meta_params="last"`` (:func:`~l2rw_jax.l2rw_stages.moving_only`): the meta-gradient
      through the output layer only: ``epsilon`` moves only ``params["head"]``
      (``models.OUTPUT_LAYER``, the output layer of every model in :mod:`l2rw_jax.models`),
      the others enter as constants (``stop_gradient``). Still exact for that restricted
      look-ahead, and cheaper: the body of the network is run forward once per batch and never
      differentiated inside the meta-step. For a module of your own, give the output layer's
      path instead: ``meta_params = models.output_layer_path(module, input_shape)`` (any tuple
      of keys ``path`` moves only ``params[path[0]][path[1]]...``). Never "the last entry of
      params": Flax sorts the keys, so that is whatever name sorts last.

    Metrics: ``val_loss`` (at the zero-gradient look-ahead) and the raw meta-gradient ``g_B``;
    with a mix, ``excess_loss_share`` (``e``) or ``reliability`` (``rho``).

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
    reweight._check_choice("weight_map", weight_map, stages.WEIGHT_MAPS)
    reweight._check_choice("normalize", normalize, stages.NORMALIZE)
    if isinstance(meta_params, str):
        reweight._check_choice("meta_params", meta_params, _META_PARAMS)
    elif not (
        isinstance(meta_params, (tuple, list))
        and meta_params
        and all(isinstance(k, str) for k in meta_params)
    ):
        raise ValueError(
            f"meta_params={meta_params!r} is not supported; allowed: all, last, or "
            f"a non-empty tuple of keys (a path in params)."
        )
    else:
        meta_params = tuple(meta_params)
    reweight._check_choice("mix", mix, stages.MIXES)
    if not (isinstance(loss_quantile, (int, float)) and 0.0 <= loss_quantile <= 1.0):
        raise ValueError(f"loss_quantile must be a number in [0, 1], got {loss_quantile!r}.")
    if not (isinstance(memory_decay, (int, float)) and 0.0 <= memory_decay < 1.0):
        raise ValueError(f"memory_decay must be a number in [0, 1), got {memory_decay!r}.")
    if isinstance(warmup_steps, bool) or not isinstance(warmup_steps, int) or warmup_steps < 0:
        raise ValueError(f"warmup_steps must be an integer >= 0, got {warmup_steps!r}.")
    # With every stage at the paper's value the chain is the meta-step's own weights.
    paper_stages = (
        memory_decay == 0
        and weight_map == "clip"
        and normalize == "batch"
        and loss_quantile == 0
        and mix == "none"
    )
    plain_sgd = optax.sgd(1.0)

    def init(rng: jax.Array, class_counts_C=None):
        del rng
        if not memory_decay:
            return EmptyState()
        num_train = int(round(float(jnp.sum(class_counts("l2rw", class_counts_C)))))
        return stages.init_memory(num_train)

    def weigh(ctx: WeighContext, state):
        if memory_decay > 0:
            check_state("l2rw", state, L2RWState)
        if lookahead == "sgd":
            tx, opt_state = plain_sgd, plain_sgd.init(ctx.params)
        else:
            tx, opt_state = ctx.tx, ctx.opt_state
        # The losses at theta (the gate, the excess) use every parameter; the meta-gradient
        # moves only ``meta_params``.
        loss_fn, val_loss_fn = ctx.loss_fn, ctx.val_loss_fn or ctx.loss_fn
        meta_loss_fn, meta_val_loss_fn = loss_fn, val_loss_fn
        if meta_params != "all":
            meta_loss_fn, meta_val_loss_fn = (
                stages.moving_only(loss_fn, meta_params),
                stages.moving_only(val_loss_fn, meta_params),
            )
        mw = reweight.meta_weights(
            meta_loss_fn,
            ctx.params,
            opt_state,
            tx,
            ctx.batch,
            ctx.val_batch,
            mode=mode,
            axis_name=ctx.axis_name,
            val_loss_fn=meta_val_loss_fn,
            all_clipped=all_clipped,
        )
        w_B = mw.w
        metrics = {"val_loss": mw.val_loss, "g_B": mw.g}
        if not paper_stages:
            label_B, axis_name = ctx.batch["label"], ctx.axis_name
            s_B, state = stages.score(
                mw.g, state, ctx.batch["index"] if memory_decay else None, memory_decay, axis_name
            )
            wt_B = stages.weight_map(s_B, weight_map, axis_name)
            if loss_quantile > 0:
                wt_B = wt_B * stages.loss_gate(
                    *_losses_at_theta(loss_fn, val_loss_fn, ctx), loss_quantile
                )
            w_B = stages.normalize(wt_B, label_B, normalize, axis_name, all_clipped)
            if mix != "none":
                w_graded_B = stages.graded_weights(mix, mw.g, mw.w, label_B, axis_name)
                if mix == "excess_loss":
                    share = excess_loss_share(loss_fn, val_loss_fn, ctx)
                else:
                    g_half_B = reweight.meta_gradient(
                        meta_loss_fn,
                        ctx.params,
                        opt_state,
                        tx,
                        ctx.batch,
                        stages.even_rows(ctx.val_batch),
                        mode=mode,
                        axis_name=axis_name,
                        val_loss_fn=meta_val_loss_fn,
                    )[0]
                    share = stages.split_half_reliability(
                        g_half_B, 2.0 * mw.g - g_half_B, axis_name
                    )
                metrics[_MIX_METRIC[mix]] = share
                w_B = stages.mix(w_B, w_graded_B, share)
        if warmup_steps:
            w_B = stages.warm_up(w_B, ctx.step, warmup_steps, local_and_global_size(ctx)[1])
        return w_B, state, metrics

    return WeighingScheme(init, weigh)


def excess_loss_share(
    loss_fn: reweight.LossFn, val_loss_fn: reweight.LossFn, ctx: WeighContext
) -> jax.Array:
    """``clip(L_train / L_clean - 1, 0, 1)`` at ``theta``: the training loss's relative excess
    over the clean loss, the graded weights' share in ``l2rw(mix="excess_loss")``.
    ``L_train`` is the mean training loss (unweighted, against the observed labels) over the
    global batch, ``L_clean`` the clean batch's mean loss
    (:func:`l2rw_jax.l2rw_stages.excess_share` of the losses at ``ctx.params``). A float32
    scalar in [0, 1]; 0 when ``L_clean <= 0``.

    With a noise rate ``eta``, a model that has learnt the task without memorising the flips
    has ``L_train ~ (1 - eta) l_correct + eta l_flipped`` and ``L_clean ~ l_correct``, so the
    excess is ``eta (l_flipped / l_correct - 1)``: large when the flips stand out by their loss
    (the model is confident on the true classes), near 0 while the model's own error dominates
    both losses (it underfits, or early in training). It also falls to 0 when the model fits
    the flips anyway (``L_train`` drops to ``L_clean``): then the mix leaves the options'
    weights in charge.
    """
    losses_B, val_losses_G = _losses_at_theta(loss_fn, val_loss_fn, ctx)
    return stages.excess_share(losses_B, val_losses_G, ctx.axis_name)


def _losses_at_theta(loss_fn, val_loss_fn, ctx: WeighContext) -> tuple[jax.Array, jax.Array]:
    """``(losses_B, val_losses_G)``: this program's training losses and the global clean
    batch's losses at ``theta`` (constants: nothing differentiates through them)."""
    params = jax.lax.stop_gradient(ctx.params)
    return (
        loss_fn(params, ctx.batch),
        stages.gathered(val_loss_fn(params, ctx.val_batch), ctx.axis_name),
    )
