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

The contract (:class:`WeighingScheme`, :class:`WeighContext`) is defined in
:mod:`l2rw_jax.weighing`, :func:`l2rw` in :mod:`l2rw_jax.l2rw_scheme` as a chain of the stages
of :mod:`l2rw_jax.l2rw_stages`; this module re-exports them, so ``methods.l2rw`` and
``methods.WeighingScheme`` are the names to use.
"""

from __future__ import annotations

import inspect
from typing import Any, Callable, NamedTuple

import jax
import jax.numpy as jnp
import optax

from l2rw_jax import l2rw_stages
from l2rw_jax import reweight
from l2rw_jax import weighing

# The contract and the L2RW scheme, re-exported: every scheme is reached through this module.
from l2rw_jax.l2rw_scheme import L2RWState as L2RWState
from l2rw_jax.l2rw_scheme import ROBUST_OPTIONS as ROBUST_OPTIONS
from l2rw_jax.l2rw_scheme import ROBUST_OPTIONS_V1 as ROBUST_OPTIONS_V1
from l2rw_jax.l2rw_scheme import excess_loss_share as excess_loss_share
from l2rw_jax.l2rw_scheme import l2rw as l2rw
from l2rw_jax.l2rw_stages import rms_normalized as rms_normalized
from l2rw_jax.l2rw_stages import split_half_reliability as split_half_reliability
from l2rw_jax.weighing import EmptyState as EmptyState
from l2rw_jax.weighing import InitFn as InitFn
from l2rw_jax.weighing import WeighContext as WeighContext
from l2rw_jax.weighing import WeighFn as WeighFn
from l2rw_jax.weighing import WeighingScheme as WeighingScheme

PyTree = Any

# Shared helpers and l2rw's stages under the names their callers (correction.py, tests) use.
_init_empty = weighing.init_empty
_check_state = weighing.check_state
_local_and_global_size = weighing.local_and_global_size
_class_counts = weighing.class_counts
_capped = l2rw_stages.capped
_class_normalized = l2rw_stages.class_normalize
_moving_only = l2rw_stages.moving_only


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


def erm() -> WeighingScheme:
    """Empirical risk minimisation: ``w_i = 1 / B`` (B the global batch size); no state."""

    def weigh(ctx: WeighContext, state):
        local, total = _local_and_global_size(ctx)
        return jnp.full((local,), 1.0 / total, jnp.float32), state, {}

    return WeighingScheme(_init_empty, weigh)


def _normalized(wt_B: jax.Array, axis_name: str | None) -> jax.Array:
    """``wt_B / sum(wt)`` over the global batch for ``wt_B >= 0``; 0 when the sum is 0."""
    return reweight.normalize_weights(-wt_B, axis_name=axis_name)[0]


def _single_device_only(name: str, ctx: WeighContext) -> None:
    if ctx.axis_name is not None:
        raise ValueError(
            f"method {name!r} needs the whole batch on one program (axis_name="
            f"None); for data parallelism use jax.jit over a Mesh, which keeps "
            f"global-batch semantics, instead of pmap/shard_map "
            f"(axis_name={ctx.axis_name!r})."
        )


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
            class_weight_C=jnp.where(counts_C > 0, 1.0 / jnp.maximum(counts_C, 1.0), 0.0)
        )

    def weigh(ctx: WeighContext, state: ProportionState):
        _check_state("proportion", state, ProportionState)
        wt_B = state.class_weight_C[ctx.batch["label"]]
        return _normalized(wt_B, ctx.axis_name), state, {}

    return WeighingScheme(init, weigh)


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


def mwnet(
    hidden: int = 100,
    meta_lr: float = 1e-3,
    meta_weight_decay: float = 1e-4,
    normalize: bool = True,
) -> WeighingScheme:
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
        bound2 = 1.0 / hidden**0.5
        phi = {
            "w1_H": jax.random.uniform(k1, (hidden,), jnp.float32, -1.0, 1.0),
            "b1_H": jax.random.uniform(k2, (hidden,), jnp.float32, -1.0, 1.0),
            "w2_H": jax.random.uniform(k3, (hidden,), jnp.float32, -bound2, bound2),
            "b2": jax.random.uniform(k4, (), jnp.float32, -bound2, bound2),
        }
        return MWNetState(phi=phi, opt_state=meta_tx.init(phi))

    def weigh(ctx: WeighContext, state: MWNetState):
        _single_device_only("mwnet", ctx)
        _check_state("mwnet", state, MWNetState)
        losses_B, val_loss, grad_phi = _mwnet_meta_gradient(ctx, state.phi, weights)
        phi_updates, phi_opt_state = meta_tx.update(grad_phi, state.opt_state, state.phi)
        phi = optax.apply_updates(state.phi, phi_updates)
        return (
            weights(phi, losses_B),
            MWNetState(phi=phi, opt_state=phi_opt_state),
            {"val_loss": val_loss},
        )

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
        ctx.loss_fn,
        ctx.params,
        ctx.opt_state,
        ctx.tx,
        ctx.batch,
        ctx.val_batch,
        mode="forward",
        val_loss_fn=ctx.val_loss_fn,
        base_grads=grads,
    )
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
