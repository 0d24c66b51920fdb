"""The look-ahead derivative through Adam-type optimizers and clipping is finite and exact where
second moments are zero: a fresh state, a dead ReLU unit after training steps, the
optimizers of docs/meta_step.md, Meta-Weight-Net's look-ahead, one real train step; float64 finite
differences and closed forms. Where the derivative is undefined, check_lookahead says so."""

import functools

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from l2rw_jax import methods, reweight
from l2rw_jax import step as step_lib
from l2rw_jax.train_state import TrainState

FAST_COMPILE = {"xla_backend_optimization_level": 0}
D, H, C, B, M = 16, 8, 3, 6, 4  # MLP 16 -> 8 -> 3, training batch B, clean batch M
DEAD = 2  # the hidden unit whose bias keeps it off on every input


def _linear_loss(params, batch):
    return (batch["x"] @ params - batch["y"]) ** 2


def _mlp_logits(params, x):
    hidden_BxH = jax.nn.relu(x @ params["w1"] + params["b1"][None, :])
    return hidden_BxH @ params["w2"] + params["b2"][None, :]


def _mlp_loss(params, batch):
    return optax.softmax_cross_entropy_with_integer_labels(
        _mlp_logits(params, batch["image"]), batch["label"]
    )


def _mlp_problem(dtype):
    """A 16-8-3 MLP with hidden unit DEAD switched off (bias -100): its 16 + 1 + 3 = 20
    parameters get a zero gradient from every example, so their Adam moments stay 0."""
    rng = np.random.default_rng(0)
    params = {
        "w1": rng.normal(size=(D, H)) / np.sqrt(D),
        "b1": np.zeros(H),
        "w2": rng.normal(size=(H, C)) / np.sqrt(H),
        "b2": np.zeros(C),
    }
    params["b1"][DEAD] = -100.0
    batch = {"image": rng.normal(size=(B, D)), "label": rng.integers(0, C, B).astype(np.int32)}
    val = {"image": rng.normal(size=(M, D)) + 0.5, "label": rng.integers(0, C, M).astype(np.int32)}
    cast = lambda t: jax.tree.map(lambda x: x.astype(dtype) if x.dtype.kind == "f" else x, t)
    return cast(params), cast(batch), cast(val)


def _naive_forward_meta_gradient(loss_fn, params, opt_state, tx, batch, val):
    """The forward mode as it was, with plain autodiff through tx.update (NaN here)."""
    zeros = jax.tree.map(jnp.zeros_like, params)
    updates0, pullback = jax.vjp(lambda g: tx.update(g, opt_state, params)[0], zeros)
    params0 = optax.apply_updates(params, updates0)
    grad_val = jax.grad(lambda p: jnp.mean(loss_fn(p, val)))(params0)
    (v,) = pullback(grad_val)
    return jax.jvp(lambda p: loss_fn(p, batch), (params,), (v,))[1]


def _meta_and_fd(loss_fn, params, opt_state, tx, batch, val, bend, naive=True):
    """``(g forward, g reverse, g central differences[, g plain autodiff])`` at ``opt_state``.

    Finite-difference step: ``h max|grad C_i| = 1e-6 bend``, ``bend`` the gradient size at
    which the update stops being linear (Adam's ``eps`` where a second moment is 0): the
    central difference then errs by ~1e-6 relative, and float64 round-off stays far below.
    """
    g_fwd, _ = reweight.meta_gradient(loss_fn, params, opt_state, tx, batch, val, mode="forward")
    g_rev, _ = reweight.meta_gradient(loss_fn, params, opt_state, tx, batch, val, mode="reverse")

    def val_after_lookahead(eps_B):  # L_val(theta'(eps)), written out directly
        grads = jax.grad(lambda p: jnp.sum(eps_B * loss_fn(p, batch)))(params)
        updates, _ = tx.update(grads, opt_state, params)
        return jnp.mean(loss_fn(optax.apply_updates(params, updates), val))

    jac = jax.jacrev(lambda p: loss_fn(p, batch))(params)
    h = 1e-6 * bend / jnp.max(jnp.stack([jnp.max(jnp.abs(x)) for x in jax.tree.leaves(jac)]))
    n = g_fwd.shape[0]
    values = jax.vmap(val_after_lookahead)(h * jnp.concatenate([jnp.eye(n), -jnp.eye(n)]))
    g_fd = (values[:n] - values[n:]) / (2 * h)
    if not naive:
        return g_fwd, g_rev, g_fd
    return (
        g_fwd,
        g_rev,
        g_fd,
        _naive_forward_meta_gradient(loss_fn, params, opt_state, tx, batch, val),
    )


def _assert_matches(g, g_fd, rtol):
    assert np.all(np.isfinite(g)), g
    scale = np.max(np.abs(g_fd))
    assert scale > 0
    np.testing.assert_array_less(np.abs(g - g_fd), rtol * scale)


def test_issue_input_fresh_adam_both_modes_are_finite_and_exact():
    """The reported input: linear least squares, params [0.2, -0.1, 0.3], 4 training rows,
    2 clean rows, optax.adam(0.1) with a fresh state. With every moment 0, ``m_hat = g`` and
    ``u'(0) = -lr / eps``: the closed form is ``g_i = -(lr / eps) <grad L_val, grad C_i>``."""
    rng = np.random.default_rng(11)
    lr, eps = 0.1, 1e-8
    tx = optax.adam(lr)
    with jax.enable_x64(True):
        params = jnp.array([0.2, -0.1, 0.3])
        batch = {"x": rng.normal(size=(4, 3)), "y": rng.normal(size=4)}
        val = {"x": rng.normal(size=(2, 3)), "y": rng.normal(size=2)}
        opt_state = tx.init(params)
        run = jax.jit(
            functools.partial(_meta_and_fd, _linear_loss, bend=eps, tx=tx),
            compiler_options=FAST_COMPILE,
        )
        g_fwd, g_rev, g_fd, g_naive = jax.tree.map(
            np.asarray, run(params=params, opt_state=opt_state, batch=batch, val=val)
        )
        weights = {
            mode: reweight.meta_weights(_linear_loss, params, opt_state, tx, batch, val, mode=mode)
            for mode in ("forward", "reverse")
        }
        grad_val = jax.grad(lambda p: jnp.mean(_linear_loss(p, val)))(params)
        jac_BxP = jax.jacrev(_linear_loss)(params, batch)
        closed_form = np.asarray(-(lr / eps) * (jac_BxP @ grad_val))
    assert np.all(np.isnan(g_naive))  # what plain autodiff gave (the issue)
    np.testing.assert_allclose(g_fwd, closed_form, rtol=1e-10)
    np.testing.assert_allclose(g_rev, closed_form, rtol=1e-10)
    _assert_matches(g_fwd, g_fd, 5e-5)  # the reported tolerance
    for mw in weights.values():
        np.testing.assert_allclose(np.asarray(mw.g), closed_form, rtol=1e-10)
        w = np.maximum(-closed_form, 0) / np.sum(np.maximum(-closed_form, 0))
        np.testing.assert_allclose(np.asarray(mw.w), w, rtol=1e-10)
    assert np.isclose(np.sum(w), 1.0) and np.sum(w > 0) >= 2  # a non-trivial weighting


def test_dead_relu_unit_after_five_adam_steps_keeps_zero_moments_and_finite_exact_g():
    """Taking steps first does not help: the dead unit's 20 parameters keep nu = 0 forever,
    and with plain autodiff they make every g_i NaN."""
    tx = optax.adam(1e-2)

    def run(params, batch, val):
        opt_state = tx.init(params)
        for _ in range(5):
            grads = jax.grad(lambda p: jnp.mean(_mlp_loss(p, batch)))(params)
            updates, opt_state = tx.update(grads, opt_state, params)
            params = optax.apply_updates(params, updates)
        nu = opt_state[0].nu
        num_zero_nu = sum(jnp.sum(x == 0) for x in jax.tree.leaves(nu))
        # The live parameters' moments are > 0, so the update is smooth where eps moves it.
        return num_zero_nu, _meta_and_fd(_mlp_loss, params, opt_state, tx, batch, val, bend=1.0)

    with jax.enable_x64(True):
        num_zero_nu, (g_fwd, g_rev, g_fd, g_naive) = jax.tree.map(
            np.asarray, jax.jit(run, compiler_options=FAST_COMPILE)(*_mlp_problem(np.float64))
        )
    assert num_zero_nu == D + 1 + C
    assert np.all(np.isnan(g_naive))
    _assert_matches(g_fwd, g_fd, 1e-6)
    _assert_matches(g_rev, g_fd, 1e-6)
    np.testing.assert_allclose(g_fwd, g_rev, rtol=1e-10)


# name: (optimizer, the gradient size at which its update bends where all moments are 0)
OPTIMIZERS = {
    "adam": (lambda: optax.adam(0.1), 1e-8),  # eps
    "adamw": (lambda: optax.adamw(0.1, weight_decay=0.1), 1e-8),
    "nadam": (lambda: optax.nadam(0.1), 1e-8),
    "radam": (lambda: optax.radam(0.1), 1.0),  # unrectified for 5 steps: linear in g
    "amsgrad": (lambda: optax.amsgrad(0.1), 1e-8),
    "rmsprop": (lambda: optax.rmsprop(0.1), 1e-4),  # sqrt(eps)
    "adagrad": (lambda: optax.adagrad(0.1), 0.3),  # sqrt(initial 0.1)
    "adabelief": (lambda: optax.adabelief(0.1), 3e-7),  # sqrt(eps / (1 - b2))
    "clip_global_norm": (
        lambda: optax.chain(optax.clip_by_global_norm(1.0), optax.sgd(0.1)),
        1.0,
    ),  # the clipping threshold
}


@pytest.mark.parametrize("name", OPTIMIZERS)
def test_every_optimizer_gives_exact_finite_meta_gradients_with_zero_moments(name):
    """At a fresh state (every moment 0) and after 3 steps with the dead unit's moments still
    0: both modes finite and equal to float64 central finite differences."""
    make_tx, bend = OPTIMIZERS[name]
    tx = make_tx()

    def run(params, batch, val):
        opt_state = tx.init(params)
        fresh = _meta_and_fd(_mlp_loss, params, opt_state, tx, batch, val, bend, naive=False)
        for _ in range(3):
            grads = jax.grad(lambda p: jnp.mean(_mlp_loss(p, batch)))(params)
            updates, opt_state = tx.update(grads, opt_state, params)
            params = optax.apply_updates(params, updates)
        stepped = _meta_and_fd(_mlp_loss, params, opt_state, tx, batch, val, 1.0, naive=False)
        return fresh, stepped

    with jax.enable_x64(True):
        results = jax.tree.map(
            np.asarray, jax.jit(run, compiler_options=FAST_COMPILE)(*_mlp_problem(np.float64))
        )
    for g_fwd, g_rev, g_fd in results:
        _assert_matches(g_fwd, g_fd, 1e-5)
        _assert_matches(g_rev, g_fd, 1e-5)


def test_mwnet_lookahead_is_finite_and_exact_with_a_zero_gradient_coordinate():
    """Meta-Weight-Net differentiates the look-ahead at g = sum_i w_i grad C_i != 0; the dead
    unit's coordinates have g = 0 and nu = 0 under a fresh Adam state (plain autodiff: NaN)."""
    tx = optax.adam(0.01)
    phi = methods.mwnet(hidden=4).init(jax.random.key(1)).phi

    def weights(phi, losses_B):
        v_B = methods._vnet(phi, losses_B)
        return v_B / jnp.sum(v_B)

    def val_after_lookahead(phi, params, batch, val):  # L_val(theta'(phi)) written out
        w_B = weights(phi, _mlp_loss(params, batch))
        grads = jax.grad(lambda p: jnp.sum(w_B * _mlp_loss(p, batch)))(params)
        updates, _ = tx.update(grads, tx.init(params), params)
        return jnp.mean(_mlp_loss(optax.apply_updates(params, updates), val))

    def run(phi, params, batch, val):
        ctx = methods.WeighContext(
            loss_fn=_mlp_loss,
            params=params,
            opt_state=tx.init(params),
            tx=tx,
            batch=batch,
            val_batch=val,
            rng=jax.random.key(0),
            step=jnp.int32(0),
        )
        _, val_loss, grad_phi = methods._mwnet_meta_gradient(ctx, phi, weights)
        d = jax.tree.map(lambda x: jnp.cos(jnp.arange(x.size).reshape(x.shape) + 1.0), phi)
        h = 1e-6
        fd = (
            val_after_lookahead(jax.tree.map(lambda a, b: a + h * b, phi, d), params, batch, val)
            - val_after_lookahead(jax.tree.map(lambda a, b: a - h * b, phi, d), params, batch, val)
        ) / (2 * h)
        along_d = sum(jnp.vdot(grad_phi[k], d[k]) for k in phi)
        naive = jax.grad(val_after_lookahead)(phi, params, batch, val)
        return grad_phi, along_d, fd, val_loss - val_after_lookahead(phi, params, batch, val), naive

    with jax.enable_x64(True):
        phi64 = jax.tree.map(lambda x: x.astype(jnp.float64), phi)
        grad_phi, along_d, fd, val_diff, naive = jax.tree.map(
            np.asarray,
            jax.jit(run, compiler_options=FAST_COMPILE)(phi64, *_mlp_problem(np.float64)),
        )
    assert np.isnan(naive["b2"]) and np.all(np.isnan(naive["w2_H"]))  # plain autodiff
    assert all(np.all(np.isfinite(x)) for x in jax.tree.leaves(grad_phi))
    assert abs(val_diff) < 1e-12
    assert abs(fd) > 1e-6
    # The derivative is small (~2.5e-5: Adam's first step barely depends on the weights'
    # scale), so float64 round-off, ~1e-16 / h = 1e-10, limits the agreement to ~1e-5.
    np.testing.assert_allclose(along_d, fd, rtol=1e-5)


def test_check_lookahead_accepts_defined_and_rejects_undefined_derivatives():
    params, _, _ = _mlp_problem(np.float32)
    params = jax.tree.map(jnp.asarray, params)
    for make_tx, _ in OPTIMIZERS.values():
        tx = make_tx()
        reweight.check_lookahead(tx, params, tx.init(params))  # no error
    sgd = optax.chain(optax.add_decayed_weights(1e-4), optax.sgd(0.1, momentum=0.9))
    reweight.check_lookahead(sgd, params, sgd.init(params))
    # 0 / 0 on a zero moment: the update itself is NaN (the real step would write it).
    tx = optax.adam(0.1, eps=0.0)
    with pytest.raises(
        ValueError,
        match=r"no derivative at a zero gradient.*its value is not "
        r"finite.*from div at .*optax",
    ):
        reweight.check_lookahead(tx, params, tx.init(params))
    tx = optax.normalize_by_update_norm(eps=0.0)
    with pytest.raises(ValueError, match=r"its value is not finite.*div"):
        reweight.check_lookahead(tx, params, tx.init(params))
    # A finite update with an infinite slope at 0: the meta-gradient would be NaN.
    tx = optax.stateless_with_tree_map(lambda g, _: -0.1 * jnp.cbrt(g))
    with pytest.raises(ValueError, match=r"its derivative is not finite.*from cbrt at "):
        reweight.check_lookahead(tx, params, tx.init(params))
    # With eps_root > 0 instead of eps, Adam's update is differentiable at 0 again.
    tx = optax.adam(0.1, eps=0.0, eps_root=1e-8)
    reweight.check_lookahead(tx, params, tx.init(params))


def test_one_train_step_with_adam_keeps_the_parameters_finite():
    """The reported symptom: one make_train_step step with optax.adam(1e-3) (fresh state, a
    dead unit) made every parameter NaN. Two seeds under jax.vmap, as the training loop runs."""
    tx = optax.adam(1e-3)
    params, batch, val = _mlp_problem(np.float32)

    def apply_fn(params, model_state, x, train, rng=None):
        return _mlp_logits(params, x), model_state

    train_step = step_lib.make_train_step(apply_fn, tx, methods.get_scheme("l2rw"))
    state = TrainState(
        step=jnp.int32(0), params=params, model_state={}, opt_state=tx.init(params), rng=None
    )
    states = jax.tree.map(lambda x: jnp.stack([x, x]), state)._replace(
        rng=jax.random.split(jax.random.key(0), 2)
    )
    new_states, metrics = jax.jit(
        jax.vmap(train_step, in_axes=(0, None, None)), compiler_options=FAST_COMPILE
    )(states, batch, val)
    for x in jax.tree.leaves((new_states.params, new_states.opt_state)):
        assert np.all(np.isfinite(x))
    assert np.all(np.isfinite(metrics["g_B"]))
    np.testing.assert_allclose(np.sum(metrics["w_B"], axis=1), 1.0, rtol=1e-5)
    moved = np.abs(new_states.params["w1"] - params["w1"][None])
    assert np.all(moved[:, :, DEAD] == 0) and np.all(moved[:, :, :DEAD] > 0)


def test_adam_lookahead_under_shard_map_equals_one_device():
    """Clipping + Adam at a fresh state, 4 devices with axis_name: the same g as 1 device."""
    from jax.sharding import Mesh, PartitionSpec as P

    tx = optax.chain(optax.clip_by_global_norm(1.0), optax.adam(0.1))
    params, batch, val = _mlp_problem(np.float32)
    batch = {k: np.concatenate([v, v[::-1]]) for k, v in batch.items()}  # 2B rows: 4 x 3
    opt_state = tx.init(params)

    def both_modes(batch, val, axis_name=None):
        return tuple(
            reweight.meta_gradient(
                _mlp_loss, params, opt_state, tx, batch, val, mode=mode, axis_name=axis_name
            )[0]
            for mode in ("forward", "reverse")
        )

    expected = jax.jit(both_modes, compiler_options=FAST_COMPILE)(batch, val)
    mesh = Mesh(np.array(jax.devices()[:4]), ("data",))
    sharded = jax.jit(
        jax.shard_map(
            functools.partial(both_modes, axis_name="data"),
            mesh=mesh,
            in_specs=(P("data"), P("data")),
            out_specs=(P("data"), P("data")),
        ),
        compiler_options=FAST_COMPILE,
    )(batch, val)
    for g, g_ref in zip(sharded, expected):
        assert np.all(np.isfinite(g_ref)) and np.max(np.abs(g_ref)) > 1e3  # ~ 1 / eps scale
        np.testing.assert_allclose(g, g_ref, rtol=2e-5, atol=1e-6 * np.max(np.abs(g_ref)))
