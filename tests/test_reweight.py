"""The meta-gradient is exact: both modes against central finite differences, for every
optimizer family, on tiny linear / MLP / BatchNorm-CNN models; and the normalisation rule."""

import doctest
import functools

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from l2rw_jax import model_factory, models, reweight

B, M, NUM_CLASSES = 6, 4, 3
# Tiny graphs: XLA's backend optimisations cost more compile time than they save here.
FAST_COMPILE = {"xla_backend_optimization_level": 0}

MODELS = {
    "linear": ("mlp", dict(hidden=()), (5,)),
    "mlp": ("mlp", dict(hidden=(8,)), (5,)),
    "cnn_bn": ("small_cnn", dict(channels=(4,), hidden=8, batch_norm=True), (6, 6, 1)),
}
OPTIMIZERS = {
    "sgd": lambda: optax.sgd(0.1),
    "momentum": lambda: optax.sgd(0.1, momentum=0.9),
    "nesterov": lambda: optax.sgd(0.1, momentum=0.9, nesterov=True),
    # eps_root > 0: sqrt(nu + eps_root) stays differentiable for parameters whose moments are
    # still zero (see meta_gradient's docstring).
    "adam": lambda: optax.adam(1e-2, eps_root=1e-8),
    "adamw": lambda: optax.adamw(1e-2, weight_decay=0.1, eps_root=1e-8),
    # The paper's recipe: weight decay chained before SGD momentum with a step schedule whose
    # boundary falls on the look-ahead's count.
    "wd_schedule_momentum": lambda: optax.chain(
        optax.add_decayed_weights(2e-4),
        optax.sgd(optax.piecewise_constant_schedule(0.1, {1: 0.1}), momentum=0.9),
    ),
}


@functools.cache
def _problem(model_name):
    """Model, float64 numpy parameters and data, shared by the tests of one model."""
    name, kw, shape = MODELS[model_name]
    module = model_factory.create_model(name, NUM_CLASSES, **kw)
    params, model_state = models.init_model(module, jax.random.key(0), (1, *shape))
    to64 = lambda tree: jax.tree.map(lambda x: np.asarray(x, np.float64), tree)
    rng = np.random.default_rng(0)
    batch = {"image": rng.normal(size=(B, *shape)), "label": rng.integers(0, NUM_CLASSES, B)}
    val_batch = {"image": rng.normal(size=(M, *shape)), "label": rng.integers(0, NUM_CLASSES, M)}
    return models.make_apply_fn(module), to64(params), to64(model_state), batch, val_batch


def _loss_fn(apply_fn, model_state):
    def loss_fn(params, batch):
        logits, _ = apply_fn(params, model_state, batch["image"], True)
        return optax.softmax_cross_entropy_with_integer_labels(logits, batch["label"])

    return loss_fn


def _meta_and_finite_differences(model_name, tx, step_size=1e-6):
    """(g forward, g reverse, g central differences, zero-gradient look-ahead displacement),
    after one real step so that momentum traces / Adam moments / schedule counts are non-zero."""
    apply_fn, params, model_state, batch, val_batch = _problem(model_name)
    loss_fn = _loss_fn(apply_fn, model_state)

    def run(params, batch, val_batch):
        opt_state = tx.init(params)
        grads = jax.grad(lambda p: jnp.mean(loss_fn(p, batch)))(params)
        updates, opt_state = tx.update(grads, opt_state, params)
        params = optax.apply_updates(params, updates)

        g_fwd, val_fwd = reweight.meta_gradient(
            loss_fn, params, opt_state, tx, batch, val_batch, mode="forward"
        )
        g_rev, val_rev = reweight.meta_gradient(
            loss_fn, params, opt_state, tx, batch, val_batch, mode="reverse"
        )

        def val_after_lookahead(eps_B):  # L_val(theta'(eps)), written out directly
            grads = jax.grad(lambda p: jnp.sum(eps_B * loss_fn(p, batch)))(params)
            updates, _ = tx.update(grads, opt_state, params)
            return jnp.mean(loss_fn(optax.apply_updates(params, updates), val_batch))

        steps = step_size * jnp.concatenate([jnp.eye(B), -jnp.eye(B)])
        values = jax.vmap(val_after_lookahead)(steps)
        g_fd = (values[:B] - values[B:]) / (2 * step_size)
        zero_updates, _ = tx.update(jax.tree.map(jnp.zeros_like, params), opt_state, params)
        displacement = optax.tree.norm(zero_updates)
        return g_fwd, g_rev, g_fd, val_fwd - val_rev, displacement

    with jax.enable_x64(True):
        out = jax.jit(run, compiler_options=FAST_COMPILE)(params, batch, val_batch)
        return jax.tree.map(np.asarray, out)


@pytest.mark.parametrize("opt_name", OPTIMIZERS)
@pytest.mark.parametrize("model_name", MODELS)
def test_both_modes_match_central_finite_differences(model_name, opt_name):
    g_fwd, g_rev, g_fd, val_diff, displacement = _meta_and_finite_differences(
        model_name, OPTIMIZERS[opt_name]()
    )
    assert g_fwd.dtype == np.float64
    scale = np.max(np.abs(g_fd))
    assert scale > 1e-4, "degenerate problem: the meta-gradient is ~0"
    np.testing.assert_array_less(np.abs(g_fwd - g_fd), 1e-3 * scale)
    np.testing.assert_array_less(np.abs(g_rev - g_fd), 1e-3 * scale)
    np.testing.assert_array_less(np.abs(g_fwd - g_rev), 1e-5 * scale)
    assert abs(val_diff) < 1e-12
    if opt_name != "sgd":
        # The optimizer state moves the look-ahead even with a zero gradient: theta'_0 != theta,
        # so these cases really test the look-ahead point and not just the direction.
        assert displacement > 1e-6


def test_sgd_meta_gradient_is_the_official_gradient_dot_product():
    """Plain SGD: g_i = -lr <grad L_val(theta), grad C_i(theta)> (the official code's form)."""
    apply_fn, params, model_state, batch, val_batch = _problem("mlp")
    loss_fn = _loss_fn(apply_fn, model_state)
    lr = 0.3
    tx = optax.sgd(lr)

    @functools.partial(jax.jit, compiler_options=FAST_COMPILE)
    def meta_and_dot_products(params, batch, val_batch):
        g_B, _ = reweight.meta_gradient(loss_fn, params, tx.init(params), tx, batch, val_batch)
        flat = lambda tree: jnp.concatenate([x.ravel() for x in jax.tree.leaves(tree)])
        grad_val = flat(jax.grad(lambda p: jnp.mean(loss_fn(p, val_batch)))(params))
        per_example = jax.vmap(lambda i: flat(jax.grad(lambda p: loss_fn(p, batch)[i])(params)))(
            jnp.arange(B)
        )
        return g_B, -lr * per_example @ grad_val

    with jax.enable_x64(True):
        g_B, expected = meta_and_dot_products(params, batch, val_batch)
    np.testing.assert_allclose(g_B, expected, rtol=1e-10, atol=1e-14)


def test_normalize_weights_exact_values():
    w_B, clipped = reweight.normalize_weights(jnp.array([-1.0, 3.0, -3.0, 0.0]))
    np.testing.assert_array_equal(w_B, [0.25, 0.0, 0.75, 0.0])
    assert not clipped


@pytest.mark.parametrize("seed", range(5))
def test_weights_are_nonnegative_and_sum_to_one(seed):
    g_B = jax.random.normal(jax.random.key(seed), (100,)) - 0.5 * seed
    w_B, clipped = reweight.normalize_weights(g_B)
    assert not clipped
    assert bool(jnp.all(w_B >= 0))
    np.testing.assert_allclose(jnp.sum(w_B), 1.0, rtol=1e-6)
    # Only examples whose up-weighting lowers the validation loss get weight.
    np.testing.assert_array_equal(w_B > 0, g_B < 0)


def test_all_clipped_gives_zero_or_uniform_weights_without_nan():
    g_B = jnp.array([0.0, 2.0, 1e-30, 5.0])
    w_B, clipped = reweight.normalize_weights(g_B)
    assert clipped
    np.testing.assert_array_equal(w_B, np.zeros(4))
    w_B, clipped = reweight.normalize_weights(g_B, all_clipped="uniform")
    assert clipped
    np.testing.assert_array_equal(w_B, np.full(4, 0.25))
    # The gradient of anything downstream of the weights stays finite too.
    d = jax.grad(lambda g: jnp.sum(reweight.normalize_weights(g)[0] ** 2))(g_B)
    assert bool(jnp.all(jnp.isfinite(d)))


def _all_clipped_problem():
    """Every training example is a clean validation point with the wrong label: descending on
    any of them raises the validation loss, so every g_i > 0."""
    module = model_factory.create_model("mlp", 2, hidden=())
    params, _ = models.init_model(module, jax.random.key(0), (1, 2))
    params = jax.tree.map(jnp.zeros_like, params)
    apply_fn = models.make_apply_fn(module)
    x = jnp.array([[1.0, 0.5], [0.8, 0.2], [1.2, 0.4]])
    batch = {"image": x, "label": jnp.ones(3, jnp.int32)}
    val_batch = {"image": x, "label": jnp.zeros(3, jnp.int32)}
    return apply_fn, params, batch, val_batch


@pytest.mark.parametrize("mode", ["forward", "reverse"])
def test_all_clipped_batch_meta_weights_are_zero(mode):
    apply_fn, params, batch, val_batch = _all_clipped_problem()
    loss_fn = _loss_fn(apply_fn, {})
    tx = optax.sgd(0.1, momentum=0.9)
    mw = jax.jit(
        lambda p: reweight.meta_weights(loss_fn, p, tx.init(p), tx, batch, val_batch, mode=mode)
    )(params)
    assert bool(jnp.all(mw.g > 0))
    assert bool(mw.all_clipped)
    np.testing.assert_array_equal(mw.w, np.zeros(3))
    assert bool(jnp.isfinite(mw.val_loss))


def test_bad_options_raise_before_any_work():
    def loss_fn(params, batch):
        raise AssertionError("no work may start before the options are checked")

    tx = optax.sgd(0.1)
    with pytest.raises(ValueError, match="mode='backward'.*forward, reverse"):
        reweight.meta_weights(
            loss_fn, jnp.zeros(2), tx.init(jnp.zeros(2)), tx, {}, {}, mode="backward"
        )
    with pytest.raises(ValueError, match="all_clipped='skip'.*zero, uniform"):
        reweight.meta_weights(
            loss_fn, jnp.zeros(2), tx.init(jnp.zeros(2)), tx, {}, {}, all_clipped="skip"
        )
    with pytest.raises(ValueError, match="all_clipped"):
        reweight.normalize_weights(jnp.zeros(3), all_clipped="none")


def test_loss_fn_must_return_per_example_losses():
    tx = optax.sgd(0.1)
    params = jnp.zeros(2)
    scalar_loss = lambda p, b: jnp.sum((b @ p) ** 2)
    for mode in ("forward", "reverse"):
        with pytest.raises(ValueError, match=r"shape \(B,\)"):
            reweight.meta_gradient(
                scalar_loss,
                params,
                tx.init(params),
                tx,
                jnp.ones((3, 2)),
                jnp.ones((2, 2)),
                mode=mode,
                val_loss_fn=lambda p, b: (b @ p) ** 2,
            )


def test_docstring_examples():
    result = doctest.testmod(reweight)
    assert result.attempted >= 3 and result.failed == 0
