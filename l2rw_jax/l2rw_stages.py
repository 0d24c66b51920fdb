"""The stages that :func:`l2rw_jax.methods.l2rw` chains, each a pure function over arrays.

As ``optax.adam`` is ``chain(scale_by_adam(...), scale_by_learning_rate(...))``, the L2RW
scheme is a chain of four stages applied to the meta-gradient ``g_B`` of
:func:`l2rw_jax.reweight.meta_weights`, then a warm-up:

    g_B --score--> s_B --weight_map (x loss_gate)--> wt_B --normalize--> w_B --mix--> w_B

1. :func:`score`: this batch's meta-gradient ``g``, or the per-example memory of it
   (state :class:`L2RWState`); :func:`moving_only` restricts which parameters ``g`` moves.
2. :func:`weight_map`: ``"clip"``, ``"sign"``, ``"capped"`` or ``"one"``, times the
   :func:`loss_gate` when there is one.
3. :func:`normalize`: ``"batch"``, ``"class"``, ``"class_balanced"`` or
   ``"endorsed_classes"``.
4. :func:`mix`: ``e w_graded + (1 - e) w``, the :func:`graded_weights` by a share ``e`` the
   clean batch gives: :func:`excess_share` or :func:`split_half_reliability`.
5. :func:`warm_up`: uniform weights for the first steps.

Every stage that looks across the batch takes ``axis_name``: under ``pmap``/``shard_map`` the
``_B`` arrays are this program's share and the sums, medians and correlations run over the
global batch (``_G``, :func:`gathered`); without it the batch is all there is. Each option's
purpose is in :func:`l2rw_jax.methods.l2rw`'s docstring; docs/robust_default.md has the
evidence for the recommended combination.
"""

from __future__ import annotations

from typing import Any, NamedTuple

import jax
import jax.numpy as jnp

from l2rw_jax import models
from l2rw_jax import reweight

PyTree = Any

WEIGHT_MAPS = ("clip", "sign", "capped", "one")
NORMALIZE = ("batch", "class", "class_balanced", "endorsed_classes")
MIXES = ("none", "reliability", "reliability_classes", "excess_loss")


def gathered(x_B: jax.Array, axis_name: str | None) -> jax.Array:
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


# --- 1. score ---------------------------------------------------------------------------------


class L2RWState(NamedTuple):
    """The per-example meta-gradient memory of :func:`score` (``decay > 0``).

    Attributes:
      memory_N: float32 ``(N,)``, ``m_i`` of training row ``i`` (0 before its first visit).
      seen_N: bool ``(N,)``, whether row ``i`` has been in a batch.
    """

    memory_N: jax.Array
    seen_N: jax.Array


def init_memory(num_train: int) -> L2RWState:
    """An empty memory for ``num_train`` training rows: every ``m_i = 0``, none seen."""
    return L2RWState(
        memory_N=jnp.zeros((num_train,), jnp.float32), seen_N=jnp.zeros((num_train,), jnp.bool_)
    )


def rms_normalized(g_B: jax.Array) -> jax.Array:
    """``g / rms(g)`` over the batch (``g`` itself when it is all 0): the meta-gradient on a
    scale comparable across steps. The learning-rate schedule and the falling loss change the
    raw scale by orders of magnitude over training; the sign and the size relative to the rest
    of the batch are what carry the signal (used by the memory and by the recorded
    ``mean_meta_grad`` of :mod:`l2rw_jax.train`)."""
    rms = jnp.sqrt(jnp.mean(jnp.square(g_B)))
    return g_B / jnp.where(rms > 0, rms, 1.0)


def score(
    g_B: jax.Array,
    state: PyTree,
    index_B: jax.Array | None,
    decay: float,
    axis_name: str | None = None,
) -> tuple[jax.Array, PyTree]:
    r"""``(s_B, new_state)``: the score each example is weighed by.

    ``decay = 0``: this batch's meta-gradient, ``s = g``, and ``state`` is returned as it is
    (``index_B`` is not read). ``decay = d > 0``: the memory :class:`L2RWState`, keyed by the
    examples' training rows ``index_B`` (int ``(B,)``): ``m_i <- d m_i + (1 - d) g^_i``
    (``m_i <- g^_i`` at the first visit), with ``g^ = g / rms(g)`` over the global batch
    (:func:`rms_normalized`), and ``s_i = m_i`` after the update. Every program updates its
    replica with the whole global batch, so the replicas stay equal.
    """
    if not decay:
        return g_B, state
    index_G, gn_G = gathered(index_B, axis_name), rms_normalized(gathered(g_B, axis_name))
    memory_N, seen_N = state.memory_N, state.seen_N
    old_G = memory_N[index_G]
    new_G = jnp.where(seen_N[index_G], decay * old_G + (1.0 - decay) * gn_G, gn_G)
    state = L2RWState(memory_N=memory_N.at[index_G].set(new_G), seen_N=seen_N.at[index_G].set(True))
    return state.memory_N[index_B], state


def moving_only(loss_fn: reweight.LossFn, meta_params: str | tuple[str, ...]) -> reweight.LossFn:
    """``loss_fn`` with every parameter outside the ``meta_params`` subtree held constant.

    ``meta_params`` is ``"last"`` (the subtree ``params[models.OUTPUT_LAYER]``) or a path,
    a tuple of keys. Raises ValueError (when traced) if ``params`` has no such subtree, so a
    model whose output layer is named otherwise fails loudly instead of moving another layer.
    """
    path = (models.OUTPUT_LAYER,) if meta_params == "last" else tuple(meta_params)

    def frozen_loss_fn(params, batch):
        _check_meta_path(params, path, meta_params)

        def freeze(key_path, x):
            keys = tuple(getattr(k, "key", None) for k in key_path[: len(path)])
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
                    f"meta_params=models.output_layer_path(module, input_shape)."
                )
            raise ValueError(
                f"meta_params={meta_params!r}: params has no {key!r} at "
                f"{path[:depth]} (keys there: {keys})."
            )
        node = node[key]
    if not jax.tree.leaves(node):
        raise ValueError(f"meta_params={meta_params!r}: params{list(path)} holds no parameters.")


# --- 2. weight map ----------------------------------------------------------------------------


def weight_map(s_B: jax.Array, name: str, axis_name: str | None = None) -> jax.Array:
    """``wt_B >= 0``, the unnormalised weights from the scores ``s_B``.

    ``name``: ``"clip"`` (the paper: ``wt_i = max(-s_i, 0)``), ``"sign"`` (``wt_i = 1[s_i <
    0]``), ``"capped"`` (the clip map capped at the median of its positive values over the
    global batch, :func:`capped`) or ``"one"`` (``wt_i = 1``: the scores are ignored).
    float32 ``(B,)``. Raises ValueError for another ``name``.
    """
    reweight._check_choice("weight_map", name, WEIGHT_MAPS)
    if name == "clip":
        return jnp.maximum(-s_B, 0.0)
    if name == "sign":
        return (s_B < 0).astype(jnp.float32)
    if name == "capped":
        return capped(jnp.maximum(-s_B, 0.0), axis_name)
    return jnp.ones_like(s_B)


def capped(wt_B: jax.Array, axis_name: str | None = None) -> jax.Array:
    """``min(wt_i, tau)`` with ``tau`` the median of the positive ``wt`` of the global batch
    (``wt`` itself when none is positive)."""
    wt_G = gathered(wt_B, axis_name)
    pos_G = wt_G > 0
    tau = jnp.nanmedian(jnp.where(pos_G, wt_G, jnp.nan))
    return jnp.where(jnp.any(pos_G), jnp.minimum(wt_B, tau), wt_B)


def loss_gate(losses_B: jax.Array, val_losses_G: jax.Array, q: float) -> jax.Array:
    """``1[C_i <= tau]`` (float32 ``(B,)``), ``tau`` the ``q``-quantile (``q`` in [0, 1]) of
    the clean batch's losses ``val_losses_G`` (the global clean batch); ``losses_B`` the
    training losses, both at ``theta``. The weight map is multiplied by it."""
    return (losses_B <= jnp.quantile(val_losses_G, q)).astype(jnp.float32)


# --- 3. normalise -----------------------------------------------------------------------------


def normalize(
    wt_B: jax.Array,
    label_B: jax.Array,
    name: str,
    axis_name: str | None = None,
    all_clipped: str = "zero",
) -> jax.Array:
    """``w_B``, the weights ``wt_B >= 0`` normalised over the global batch.

    ``name``: ``"batch"`` (the paper: ``w = wt / sum wt``; when the sum is 0, all 0 with
    ``all_clipped="zero"`` or ``1 / B`` with ``"uniform"``,
    :func:`l2rw_jax.reweight.normalize_weights`), or per observed class ``label_B``
    (:func:`class_normalize`: ``"class"``, ``"class_balanced"``, ``"endorsed_classes"``;
    ``all_clipped`` is not read). Raises ValueError for another ``name``.
    """
    reweight._check_choice("normalize", name, NORMALIZE)
    if name == "batch":
        return reweight.normalize_weights(-wt_B, axis_name=axis_name, all_clipped=all_clipped)[0]
    return class_normalize(wt_B, label_B, name, axis_name)


def class_normalize(
    wt_B: jax.Array, label_B: jax.Array, name: str, axis_name: str | None = None
) -> jax.Array:
    """``w_i = share_{y_i} wt_i / sum_{k: y_k = y_i} wt_k`` over the global batch, ``y`` the
    observed labels ``label_B``. ``name`` sets the shares: ``"class"``: ``n_c / B`` (``n_c``
    examples of class ``c`` in the batch of ``B``); ``"class_balanced"``: ``1 / #classes
    present``, a class whose ``wt`` sum to 0 getting ``share_c / n_c`` on each of its examples
    (both sum to 1); ``"endorsed_classes"``: ``1 / K`` for each of the ``K`` classes with a
    positive ``wt`` sum, 0 for the others (all 0 when nothing is endorsed)."""
    wt_G, label_G = gathered(wt_B, axis_name), gathered(label_B, axis_name)
    same_BxG = (label_B[:, None] == label_G[None, :]).astype(jnp.float32)
    same_GxG = (label_G[:, None] == label_G[None, :]).astype(jnp.float32)
    count_B = jnp.sum(same_BxG, axis=1)  # n_{y_i}, >= 1
    total_B = same_BxG @ wt_G  # sum of wt over the class of example i
    switched_off_B = total_B <= 0
    within_B = wt_B / jnp.where(switched_off_B, 1.0, total_B)
    if name == "endorsed_classes":
        endorsed_G = (same_GxG @ wt_G) > 0
        num_endorsed = jnp.sum(jnp.where(endorsed_G, 1.0 / jnp.sum(same_GxG, axis=1), 0.0))
        return jnp.where(switched_off_B, 0.0, within_B) / jnp.maximum(num_endorsed, 1.0)
    num_present = jnp.sum(1.0 / jnp.sum(same_GxG, axis=1))
    share_B = 1.0 / num_present if name == "class_balanced" else count_B / label_G.shape[0]
    return share_B * jnp.where(switched_off_B, 1.0 / count_B, within_B)


# --- 4. mix -----------------------------------------------------------------------------------


def graded_weights(
    name: str,
    g_B: jax.Array,
    w_paper_B: jax.Array,
    label_B: jax.Array,
    axis_name: str | None = None,
) -> jax.Array:
    """The graded weights a mix brings in: the paper's map ``max(-g, 0)`` normalised over the
    batch (``name="reliability"``: ``w_paper_B``, the meta-step's own weights) or per endorsed
    class (``"reliability_classes"``, ``"excess_loss"``: :func:`class_normalize` with
    ``"endorsed_classes"``). Raises ValueError for another ``name``."""
    reweight._check_choice("mix", name, MIXES[1:])
    if name == "reliability":
        return w_paper_B
    return class_normalize(jnp.maximum(-g_B, 0.0), label_B, "endorsed_classes", axis_name)


def mix(w_B: jax.Array, w_graded_B: jax.Array, share: jax.Array) -> jax.Array:
    """``share w_graded + (1 - share) w``: the graded weights mixed into the options' weights
    by ``share`` in [0, 1] (:func:`excess_share` or :func:`split_half_reliability`)."""
    return share * w_graded_B + (1.0 - share) * w_B


def excess_share(
    losses_B: jax.Array, val_losses_G: jax.Array, axis_name: str | None = None
) -> jax.Array:
    """``clip(L_train / L_clean - 1, 0, 1)``: ``L_train`` the mean of the training losses
    ``losses_B`` over the global batch, ``L_clean`` the mean of the global clean batch's
    ``val_losses_G``. A float32 scalar in [0, 1]; 0 when ``L_clean <= 0``."""
    train_loss = jnp.mean(gathered(losses_B, axis_name))
    clean_loss = jnp.mean(val_losses_G)
    excess = train_loss / jnp.where(clean_loss > 0, clean_loss, 1.0) - 1.0
    return jnp.where(clean_loss > 0, jnp.clip(excess, 0.0, 1.0), 0.0)


def split_half_reliability(
    gA_B: jax.Array, gB_B: jax.Array, axis_name: str | None = None
) -> jax.Array:
    """``clip(2 r / (1 + r), 0, 1)``, ``r`` the Pearson correlation of the meta-gradients on
    two halves of the clean batch over the global training batch (0 when either is constant):
    the Spearman-Brown reliability of the whole clean batch's meta-gradient (Spearman 1910,
    Brown 1910). A float32 scalar in [0, 1]."""
    a_G, b_G = gathered(gA_B, axis_name), gathered(gB_B, axis_name)
    a_G, b_G = a_G - jnp.mean(a_G), b_G - jnp.mean(b_G)
    denom = jnp.sqrt(jnp.sum(a_G * a_G) * jnp.sum(b_G * b_G))
    r = jnp.where(denom > 0, jnp.sum(a_G * b_G) / jnp.where(denom > 0, denom, 1.0), 0.0)
    r = jnp.maximum(r, 0.0)
    return jnp.clip(2.0 * r / (1.0 + r), 0.0, 1.0)


def even_rows(val_batch: PyTree) -> PyTree:
    """The even rows of every leaf of the clean batch: the half ``A`` of the split-half
    reliability. Raises ValueError if the leaves' first dimension is odd or not shared."""
    sizes = {x.shape[0] for x in jax.tree.leaves(val_batch)}
    if len(sizes) != 1 or next(iter(sizes)) % 2:
        raise ValueError(
            f"mix='reliability*' splits the clean batch in two equal halves; its "
            f"per-program size must be even, got {sorted(sizes)}."
        )
    return jax.tree.map(lambda x: x[0::2], val_batch)


# --- 5. warm-up -------------------------------------------------------------------------------


def warm_up(w_B: jax.Array, step: jax.Array, warmup_steps: int, total: Any) -> jax.Array:
    """``1 / total`` on every example while ``step < warmup_steps``, else ``w_B``; ``total`` is
    the global batch size (a Python int, or traced under ``axis_name``)."""
    return jnp.where(step < warmup_steps, jnp.full_like(w_B, 1.0 / total), w_B)
