"""The L2RW meta-step: example weights from one look-ahead step of the training optimizer.

Learning to Reweight Examples for Robust Deep Learning, Ren, Zeng, Yang, Urtasun, ICML 2018,
arXiv 1803.09050, Algorithm 1 (docs/design.md §2). With per-example training losses
``C_i(theta)`` on a batch of B examples and a clean validation batch of M examples::

    L_f(theta, eps) = sum_i eps_i C_i(theta)                          (eps = 0, length B)
    theta'(eps)     = apply_updates(theta, tx.update(grad_theta L_f, opt_state, theta))
    L_val(theta')   = mean_j C^v_j(theta')
    g_i             = d L_val(theta'(eps)) / d eps_i   at eps = 0
    w_i             = max(-g_i, 0) / sum_k max(-g_k, 0)     (w = 0 when the sum is 0)

The look-ahead uses the training optimizer itself (any optax ``GradientTransformation``: its
state carries momentum traces, Adam moments and schedule counts; weight decay enters through
``params``). Two exact ways to compute ``g`` are offered, ``mode="reverse"`` and
``mode="forward"``; see :func:`meta_gradient`.

Data parallelism. Under ``jax.jit`` with a sharded ``Mesh`` the functions here see the global
batch and need nothing. Inside ``jax.pmap`` / ``jax.shard_map`` pass ``axis_name``: the
validation loss and its gradient become the mean over the axis and the normaliser a ``psum``,
so the weights equal the single-device weights of the global batch (given equal per-device
validation batch sizes).
"""

from __future__ import annotations

from typing import Any, NamedTuple, Protocol

import jax
import jax.numpy as jnp
import numpy as np
import optax

from l2rw_jax import safe_derivative

PyTree = Any

_MODES = ("forward", "reverse")
_ALL_CLIPPED = ("zero", "uniform")


class LossFn(Protocol):
    """Per-example losses: ``loss_fn(params, batch) -> losses_B`` (model state bound by caller)."""

    def __call__(self, params: PyTree, batch: PyTree) -> jax.Array: ...


class MetaWeights(NamedTuple):
    """Output of :func:`meta_weights`.

    Attributes:
      w: ``w_B``, the normalised example weights (>= 0, sum 1 over the global batch, or all 0).
      g: ``g_B``, the raw meta-gradient ``d L_val(theta'(eps)) / d eps`` at ``eps = 0``.
      all_clipped: scalar bool, True when every ``-g_i <= 0`` (the paper's all-zero step).
      val_loss: scalar, the validation loss at the zero-gradient look-ahead ``theta'_0``.
    """

    w: jax.Array
    g: jax.Array
    all_clipped: jax.Array
    val_loss: jax.Array


def _check_choice(name: str, value: str, allowed: tuple[str, ...]) -> None:
    if value not in allowed:
        raise ValueError(f"{name}={value!r} is not supported; allowed: {', '.join(allowed)}.")


def _to_varying(tree: PyTree, axis_name: str | None) -> PyTree:
    """Marks ``tree`` as device-varying along ``axis_name`` inside ``shard_map``.

    Why: with ``check_vma=True`` the gradient with respect to a device-invariant (replicated)
    input is summed over the axis automatically, whereas under ``pmap`` it stays local. Making
    the differentiated point varying gives the local gradient in both cases, so the explicit
    ``pmean``/``psum`` below is always the one and only cross-device reduction.
    """
    if axis_name is None:
        return tree

    def varying_axes(aval):
        # `manual_axis_type.varying` in the pinned jax; earlier releases called it `vma`.
        manual = getattr(aval, "manual_axis_type", None)
        return manual.varying if manual is not None else getattr(aval, "vma", frozenset())

    def leaf(x):
        if axis_name in varying_axes(jax.typeof(x)):
            return x
        return jax.lax.pcast(x, axis_name, to="varying")

    return jax.tree.map(leaf, tree)


def _validation_value_and_grad(val_loss_fn, params, val_batch, axis_name):
    """``(L_val(params), grad L_val(params))``, the mean over the global validation batch."""

    def mean_loss(p):
        losses_M = val_loss_fn(p, val_batch)
        if losses_M.ndim != 1:
            raise ValueError(
                f"val_loss_fn must return per-example losses of shape (M,), got {losses_M.shape}."
            )
        return jnp.mean(losses_M)

    val_loss, grad_val = jax.value_and_grad(mean_loss)(_to_varying(params, axis_name))
    if axis_name is not None:
        val_loss, grad_val = jax.lax.pmean((val_loss, grad_val), axis_name)
    return val_loss, grad_val


def _losses(loss_fn, params, batch):
    losses_B = loss_fn(params, batch)
    if losses_B.ndim != 1:
        raise ValueError(
            f"loss_fn must return per-example losses of shape (B,), got {losses_B.shape}."
        )
    return losses_B


def meta_gradient(
    loss_fn: LossFn,
    params: PyTree,
    opt_state: optax.OptState,
    tx: optax.GradientTransformation,
    batch: PyTree,
    val_batch: PyTree,
    *,
    mode: str = "forward",
    axis_name: str | None = None,
    val_loss_fn: LossFn | None = None,
    base_grads: PyTree | None = None,
) -> tuple[jax.Array, jax.Array]:
    r"""Meta-gradient of the validation loss after one look-ahead step, per training example.

    .. math::
        g_i = \frac{\partial}{\partial \epsilon_i}
              L_{val}\big(\theta + u(\textstyle\sum_j \epsilon_j \nabla C_j(\theta);
              \ s, \theta)\big)
              \Big|_{\epsilon=0}

    where ``u(., s, theta) = tx.update(., opt_state, theta)[0]`` (Ren et al. 2018,
    arXiv 1803.09050, Alg. 1 lines 4-9, with the training optimizer as the look-ahead).

    ``mode="reverse"``: ``jax.grad`` of ``eps -> L_val(theta'(eps))``, reverse-over-reverse
    through ``tx.update`` and ``optax.apply_updates``. The outermost link of the chain rule is
    written out (``vjp`` of ``eps -> theta'(eps)`` applied to ``grad L_val(theta'_0)``) so that
    under ``axis_name`` the cross-device mean of the validation gradient sits outside the
    differentiated function; the numbers are those of ``jax.grad`` of the composition.

    ``mode="forward"`` (default, cheaper): by the chain rule at ``eps = 0``,

    .. math::
        g_i = \langle \nabla L_{val}(\theta'_0),\ J_u \nabla C_i(\theta) \rangle
            = \big[ J_C(\theta)\, v \big]_i, \qquad v = J_u^\top \nabla L_{val}(\theta'_0),

    with ``theta'_0 = apply_updates(theta, u(0))`` the look-ahead with a zero gradient and
    ``J_u`` the Jacobian of ``u`` with respect to its gradient input at zero. Cost: one
    forward+backward of the validation batch at ``theta'_0``, one ``vjp`` through
    ``tx.update`` (elementwise for SGD/momentum/Adam) and one ``jax.jvp`` of the vector of
    per-example training losses along ``v``: no second-order reverse pass, no per-example
    gradients. Exact, not an approximation: both modes evaluate the same derivative. For
    plain SGD with learning rate ``lr`` it is the official code's
    ``g_i = -lr <grad L_val(theta), grad C_i(theta)>``.

    Both modes differentiate the loss *vector* as a whole, so models that couple examples
    (BatchNorm in training mode) stay exact.

    Adam-type optimizers, clipping: ``u`` is nonlinear in the gradient
    (``m / (sqrt(nu + eps_root) + eps)``, ``g min(1, c / ||g||)``) but has a derivative at a
    zero gradient, also on a coordinate whose second moment ``nu`` is 0 (a fresh state; a dead
    ReLU unit, an unused class row or a masked weight at any step): there ``sqrt(nu)`` only
    enters multiplied by ``m = 0``. Plain autodiff returns NaN for it (``sqrt``'s partial
    derivative at 0 is infinite and JAX multiplies it by the zero tangent), and one such
    coordinate makes every ``g_i`` NaN. Both modes therefore differentiate ``u`` through
    :func:`l2rw_jax.safe_derivative.finite_derivative`, which drops exactly those ``0 * inf``
    terms, and so return the derivative (tested against float64 finite differences for adam,
    adamw, nadam, radam, amsgrad, rmsprop, adagrad, adabelief and global-norm clipping, at a
    fresh state and with zero second moments). For an update without singular operations
    (SGD, momentum, weight decay, schedules) ``u`` is differentiated as it is. Where the
    derivative really is undefined (``adam(eps=0, eps_root=0)`` at a zero moment, ``g / ||g||``
    without ``eps``) the result is NaN or meaningless: :func:`check_lookahead` says so, and
    :func:`l2rw_jax.train.train_and_evaluate` calls it before the first step.

    Args:
      loss_fn: ``loss_fn(params, batch) -> losses_B``, per-example training losses.
      params: model parameters ``theta`` (any pytree), replicated across ``axis_name``.
      opt_state: the current state of ``tx``.
      tx: the training optimizer, any ``optax.GradientTransformation``.
      batch: the (noisy) training batch, B examples (B per device under ``axis_name``).
      val_batch: the clean validation batch, M examples (M per device under ``axis_name``).
      mode: ``"forward"`` or ``"reverse"``.
      axis_name: mapped axis name inside ``pmap``/``shard_map``, else None.
      val_loss_fn: per-example loss for the validation batch; defaults to ``loss_fn``.
      base_grads: ``G``, the gradient the look-ahead starts from (a pytree like ``params``;
        None means 0, the L2RW meta-step): ``g_i`` is then the derivative of
        ``L_val(theta + u(G + sum_j eps_j grad C_j(theta)))``. Meta-Weight-Net uses
        ``G = sum_i w_i grad C_i`` to get ``d L_val / d w_i``.

    Returns:
      ``(g_B, val_loss)``: the meta-gradient for the local examples and ``L_val(theta'_0)``
      (global mean under ``axis_name``), ``theta'_0 = apply_updates(theta, u(G))``.

    Example:
      >>> import jax.numpy as jnp, optax
      >>> loss_fn = lambda p, b: (b["x"] @ p - b["y"]) ** 2
      >>> batch = {"x": jnp.eye(3), "y": jnp.array([1.0, -1.0, 5.0])}
      >>> val = {"x": jnp.ones((1, 3)), "y": jnp.array([1.0])}
      >>> tx, params = optax.sgd(0.1), jnp.zeros(3)
      >>> g_B, val_loss = meta_gradient(loss_fn, params, tx.init(params), tx, batch, val)
      >>> print(g_B.round(3))   # -0.1 <grad L_val, grad C_i> = -0.1 <-2 * 1, -2 y_i e_i>
      [-0.4  0.4 -2. ]
    """
    _check_choice("mode", mode, _MODES)
    val_loss_fn = loss_fn if val_loss_fn is None else val_loss_fn
    update = _lookahead_update(tx, opt_state, params)

    if mode == "forward":
        if base_grads is None:
            base_grads = jax.tree.map(jnp.zeros_like, params)
        updates0, pullback_u = jax.vjp(update, base_grads)
        params0 = optax.apply_updates(params, updates0)
        val_loss, grad_val = _validation_value_and_grad(val_loss_fn, params0, val_batch, axis_name)
        (v,) = pullback_u(jax.tree.map(lambda c, u: c.astype(u.dtype), grad_val, updates0))
        v = jax.tree.map(lambda t, p: t.astype(p.dtype), v, params)
        _, g_B = jax.jvp(lambda p: _losses(loss_fn, p, batch), (params,), (v,))
        return g_B, val_loss

    # Reverse mode. The derivative at eps = 0 with respect to *local* eps does not see the
    # other devices' terms of sum_j eps_j grad C_j (zero at eps = 0, linear in eps), so the
    # look-ahead needs no collective; only the validation gradient is reduced.
    # grad_theta sum_i eps_i C_i(theta) is the loss vector's pullback applied to eps: the same
    # reverse-over-reverse computation as jax.grad inside the eps-function, with the forward
    # pass of the training batch (which does not depend on eps) taken once, outside it.
    losses_B, pullback_losses = jax.vjp(
        lambda p: _losses(loss_fn, p, batch), _to_varying(params, axis_name)
    )

    def lookahead(eps_B):
        (grads,) = pullback_losses(eps_B)
        if base_grads is not None:
            grads = jax.tree.map(lambda b, g: b + g.astype(b.dtype), base_grads, grads)
        return optax.apply_updates(params, update(grads))

    # eps is per example, hence device-varying: from a replicated zero, the gradient with
    # respect to it would be summed over the axis under shard_map's check_vma.
    eps_B = _to_varying(jnp.zeros_like(losses_B), axis_name)
    params0, pullback = jax.vjp(lookahead, eps_B)
    val_loss, grad_val = _validation_value_and_grad(val_loss_fn, params0, val_batch, axis_name)
    cotangent = jax.tree.map(lambda c, p: c.astype(p.dtype), grad_val, params0)
    (g_B,) = pullback(_to_varying(cotangent, axis_name))
    return g_B, val_loss


def _lookahead_update(tx: optax.GradientTransformation, opt_state: optax.OptState, params: PyTree):
    """``u(g) = tx.update(g, opt_state, params)[0]``, differentiable in ``g`` where a zero
    second moment makes plain autodiff NaN (see :func:`meta_gradient`)."""
    update = safe_derivative.finite_derivative(lambda g, s, p: tx.update(g, s, p)[0])
    return lambda grads: update(grads, opt_state, params)


def check_lookahead(
    tx: optax.GradientTransformation, params: PyTree, opt_state: optax.OptState
) -> None:
    """Raises ValueError when the look-ahead ``u(g) = tx.update(g, opt_state, params)[0]`` has
    no derivative at a zero gradient, so that :func:`meta_gradient` would be NaN or wrong.

    Evaluates ``u`` at ``g = 0`` and its directional derivative along a fixed pseudo-random
    direction (every coordinate moves), with the strict rule of
    :func:`l2rw_jax.safe_derivative.undefined_derivative`: it fails where ``u(0)`` is not
    finite (e.g. ``adam(eps=0)``: ``0 / 0`` on a zero moment, which the real step would also
    write into the parameters) or where an infinite partial derivative meets a moving input
    (e.g. ``cbrt(g)``). Adam-type optimizers with ``eps > 0`` or ``eps_root > 0``, clipping,
    SGD, momentum and weight-decay chains pass. Eager (not jit-able), cheap: call it once,
    before the first step, on one member's ``params`` and ``opt_state``.

    Raises:
      ValueError: naming the problem and the first operation that produced a non-finite number.
    """
    leaves, treedef = jax.tree.flatten(params)
    rng = np.random.default_rng(0)
    probe = jax.tree.unflatten(
        treedef,
        [
            rng.standard_normal(np.shape(x)).astype(x.dtype)
            if jnp.issubdtype(x.dtype, jnp.floating)
            else np.zeros(np.shape(x), jax.dtypes.float0)
            for x in leaves
        ],
    )
    zeros = jax.tree.map(jnp.zeros_like, params)
    reason = safe_derivative.undefined_derivative(
        lambda g, s, p: tx.update(g, s, p)[0], (zeros,), (probe,), args=(opt_state, params)
    )
    if reason is not None:
        raise ValueError(
            f"The optimizer's update tx.update(g, opt_state, params) has no derivative at a zero "
            f"gradient g, so the L2RW / Meta-Weight-Net look-ahead meta-gradient would be NaN "
            f"or wrong: at g = 0 {reason}. Use an update that is differentiable there (e.g. "
            f"adam / rmsprop with eps > 0, or eps_root > 0)."
        )


def normalize_weights(
    g_B: jax.Array, *, axis_name: str | None = None, all_clipped: str = "zero"
) -> tuple[jax.Array, jax.Array]:
    r"""Example weights from the meta-gradient (Ren et al. 2018, Alg. 1 lines 10-11).

    .. math::
        \tilde w_i = \max(-g_i, 0), \qquad
        w_i = \tilde w_i / \textstyle\sum_k \tilde w_k, \qquad
        w = 0 \text{ when } \textstyle\sum_k \tilde w_k = 0
        \ (\text{the paper's } \delta \text{ rule}).

    Args:
      g_B: the meta-gradient, shape (B,) (local shard under ``axis_name``).
      axis_name: mapped axis name: the sum runs over the global batch (``psum``).
      all_clipped: what to do when every weight is clipped: ``"zero"`` (the paper: that step
        has no data term) or ``"uniform"`` (``1 / B_global``).

    Returns:
      ``(w_B, all_clipped_flag)``; ``w_B`` has no NaN when ``g_B`` has none.

    Example:
      >>> normalize_weights(jnp.array([-1.0, 3.0, -3.0]))[0].tolist()
      [0.25, 0.0, 0.75]
    """
    _check_choice("all_clipped", all_clipped, _ALL_CLIPPED)
    if g_B.ndim != 1:
        raise ValueError(f"g_B must have shape (B,), got {g_B.shape}.")
    wt_B = jnp.maximum(-g_B, 0.0)
    total = jnp.sum(wt_B)
    num_examples = g_B.shape[0]
    if axis_name is not None:
        total = jax.lax.psum(total, axis_name)
        num_examples = num_examples * jax.lax.psum(1, axis_name)
    clipped = total <= 0.0
    # where() on the denominator, not on the quotient: no 0/0 is ever formed.
    w_B = wt_B / jnp.where(clipped, jnp.ones_like(total), total)
    if all_clipped == "uniform":
        w_B = jnp.where(clipped, jnp.full_like(w_B, 1.0 / num_examples), w_B)
    return w_B, clipped


def meta_weights(
    loss_fn: LossFn,
    params: PyTree,
    opt_state: optax.OptState,
    tx: optax.GradientTransformation,
    batch: PyTree,
    val_batch: PyTree,
    *,
    mode: str = "forward",
    axis_name: str | None = None,
    val_loss_fn: LossFn | None = None,
    all_clipped: str = "zero",
) -> MetaWeights:
    """L2RW example weights: :func:`meta_gradient` followed by :func:`normalize_weights`.

    Ren et al. 2018, arXiv 1803.09050, Algorithm 1. Pure and jit-able; the caller treats the
    returned ``w`` as a constant (``stop_gradient``) in the real training step.

    Example:
      >>> import jax.numpy as jnp, optax
      >>> loss_fn = lambda p, b: (b["x"] @ p - b["y"]) ** 2
      >>> batch = {"x": jnp.eye(3), "y": jnp.array([1.0, -1.0, 5.0])}
      >>> val = {"x": jnp.ones((1, 3)), "y": jnp.array([1.0])}
      >>> tx, params = optax.sgd(0.1), jnp.zeros(3)
      >>> mw = meta_weights(loss_fn, params, tx.init(params), tx, batch, val)
      >>> print((12 * mw.w).round(3), mw.all_clipped)   # w = [0.4, 0, 2.0] / 2.4
      [ 2.  0. 10.] False
    """
    _check_choice("mode", mode, _MODES)
    _check_choice("all_clipped", all_clipped, _ALL_CLIPPED)
    g_B, val_loss = meta_gradient(
        loss_fn,
        params,
        opt_state,
        tx,
        batch,
        val_batch,
        mode=mode,
        axis_name=axis_name,
        val_loss_fn=val_loss_fn,
    )
    w_B, clipped = normalize_weights(g_B, axis_name=axis_name, all_clipped=all_clipped)
    return MetaWeights(w=w_B, g=g_B, all_clipped=clipped, val_loss=val_loss)
