"""The train / eval steps, the weighting schemes and the models behind them."""

import functools

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from l2rw_jax import methods, model_factory, models, reweight
from l2rw_jax import step as step_lib
from l2rw_jax.train_state import TrainState

B, M, NUM_CLASSES = 8, 4, 3
# Tiny graphs: XLA's backend optimisations cost more compile time than they save here.
FAST_COMPILE = {"xla_backend_optimization_level": 0}
NOISY_B = np.array([True, False, False, True, False, False, False, True])


def _batches(shape, seed=0):
    rng = np.random.default_rng(seed)
    batch = {
        "image": rng.normal(size=(B, *shape)).astype(np.float32),
        "label": rng.integers(0, NUM_CLASSES, B).astype(np.int32),
        "is_noisy": NOISY_B,
    }
    val_batch = {
        "image": rng.normal(size=(M, *shape)).astype(np.float32) + 0.5,
        "label": rng.integers(0, NUM_CLASSES, M).astype(np.int32),
    }
    return batch, val_batch


def _state(params, model_state, tx, seed=1):
    return TrainState(
        step=jnp.zeros([], jnp.int32),
        params=params,
        model_state=model_state,
        opt_state=tx.init(params),
        rng=jax.random.key(seed),
    )


@pytest.fixture(scope="module")
def cnn_bn():
    """A BatchNorm CNN taken one momentum step away from its initialisation (non-zero trace,
    non-trivial running statistics), and jitted l2rw/erm steps for it."""
    module = model_factory.create_model(
        "small_cnn", NUM_CLASSES, channels=(4,), hidden=8, batch_norm=True
    )
    params, model_state = models.init_model(module, jax.random.key(0), (1, 6, 6, 1))
    apply_fn = models.make_apply_fn(module)
    tx = optax.chain(optax.add_decayed_weights(1e-3), optax.sgd(0.1, momentum=0.9))
    batch, val_batch = _batches((6, 6, 1))
    steps = {
        name: jax.jit(
            step_lib.make_train_step(apply_fn, tx, weigh_fn), compiler_options=FAST_COMPILE
        )
        for name, weigh_fn in [
            ("forward", methods.get_scheme("l2rw")),
            ("reverse", methods.get_scheme("l2rw", mode="reverse")),
            ("erm", methods.get_scheme("erm")),
        ]
    }
    state, _ = steps["erm"](_state(params, model_state, tx), batch, val_batch)
    return dict(
        apply_fn=apply_fn, tx=tx, state=state, batch=batch, val_batch=val_batch, steps=steps
    )


def _loss_fn(apply_fn, model_state):
    def loss_fn(params, batch):
        logits, _ = apply_fn(params, model_state, batch["image"], True)
        return optax.softmax_cross_entropy_with_integer_labels(logits, batch["label"])

    return loss_fn


def test_l2rw_step_applies_the_weighted_update_exactly(cnn_bn):
    apply_fn, tx, state = cnn_bn["apply_fn"], cnn_bn["tx"], cnn_bn["state"]
    batch, val_batch = cnn_bn["batch"], cnn_bn["val_batch"]
    new_state, metrics = cnn_bn["steps"]["forward"](state, batch, val_batch)

    loss_fn = _loss_fn(apply_fn, state.model_state)

    @functools.partial(jax.jit, compiler_options=FAST_COMPILE)
    def by_hand(params, opt_state):
        mw = reweight.meta_weights(loss_fn, params, opt_state, tx, batch, val_batch)
        grads = jax.grad(lambda p: jnp.sum(mw.w * loss_fn(p, batch)))(params)
        updates, opt_state = tx.update(grads, opt_state, params)
        return mw, optax.apply_updates(params, updates), opt_state, loss_fn(params, batch)

    mw, expected, opt_state, losses_B = by_hand(state.params, state.opt_state)
    assert not bool(mw.all_clipped)

    np.testing.assert_allclose(metrics["w_B"], mw.w, rtol=1e-5, atol=1e-7)
    jax.tree.map(
        lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6),
        new_state.params,
        expected,
    )
    jax.tree.map(
        lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6),
        new_state.opt_state,
        opt_state,
    )
    assert int(new_state.step) == int(state.step) + 1
    np.testing.assert_array_equal(
        jax.random.key_data(new_state.rng), jax.random.key_data(state.rng)
    )

    w = np.asarray(mw.w)
    np.testing.assert_allclose(metrics["weighted_loss"], np.sum(w * losses_B), rtol=1e-5)
    np.testing.assert_allclose(metrics["val_loss"], mw.val_loss, rtol=1e-5)
    np.testing.assert_allclose(metrics["w_mean"], 1.0 / B, rtol=1e-5)
    np.testing.assert_allclose(metrics["w_max"], w.max(), rtol=1e-5)
    np.testing.assert_allclose(metrics["w_min"], w.min(), rtol=1e-5, atol=1e-8)
    np.testing.assert_allclose(metrics["ess"], w.sum() ** 2 / np.sum(w**2), rtol=1e-4)
    np.testing.assert_allclose(metrics["w_mean_noisy"], w[NOISY_B].mean(), rtol=1e-5, atol=1e-8)
    np.testing.assert_allclose(metrics["w_mean_clean"], w[~NOISY_B].mean(), rtol=1e-5, atol=1e-8)
    assert not bool(metrics["all_zero"])


def test_batchnorm_statistics_come_from_the_real_step_only(cnn_bn):
    apply_fn, state = cnn_bn["apply_fn"], cnn_bn["state"]
    batch, val_batch = cnn_bn["batch"], cnn_bn["val_batch"]
    # The real step's forward pass: the training batch at the current parameters.
    new_stats = jax.jit(
        lambda x: apply_fn(state.params, state.model_state, x, True)[1],
        compiler_options=FAST_COMPILE,
    )
    expected = new_stats(batch["image"])
    # What the clean-batch pass would have produced, had it been kept.
    from_val = new_stats(val_batch["image"])
    for mode in ("forward", "reverse", "erm"):
        new_state, _ = cnn_bn["steps"][mode](state, batch, val_batch)
        jax.tree.map(
            lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-6, atol=1e-7),
            new_state.model_state,
            expected,
        )
        mean_new = new_state.model_state["batch_stats"]["BatchNorm_0"]["mean"]
        mean_val = from_val["batch_stats"]["BatchNorm_0"]["mean"]
        assert float(jnp.max(jnp.abs(mean_new - mean_val))) > 1e-3


def test_forward_and_reverse_steps_agree(cnn_bn):
    state, batch, val_batch = cnn_bn["state"], cnn_bn["batch"], cnn_bn["val_batch"]
    s_fwd, m_fwd = cnn_bn["steps"]["forward"](state, batch, val_batch)
    s_rev, m_rev = cnn_bn["steps"]["reverse"](state, batch, val_batch)
    scale = float(jnp.max(jnp.abs(m_fwd["g_B"])))
    np.testing.assert_array_less(np.abs(m_fwd["g_B"] - m_rev["g_B"]), 1e-5 * scale)
    np.testing.assert_allclose(m_fwd["w_B"], m_rev["w_B"], atol=1e-6)
    jax.tree.map(
        lambda a, b: np.testing.assert_allclose(a, b, atol=1e-6), s_fwd.params, s_rev.params
    )


def test_erm_step_is_plain_sgd_on_the_mean_loss(cnn_bn):
    apply_fn, tx, state = cnn_bn["apply_fn"], cnn_bn["tx"], cnn_bn["state"]
    batch, val_batch = cnn_bn["batch"], cnn_bn["val_batch"]
    new_state, metrics = cnn_bn["steps"]["erm"](state, batch, val_batch)
    loss_fn = _loss_fn(apply_fn, state.model_state)

    @functools.partial(jax.jit, compiler_options=FAST_COMPILE)
    def by_hand(params, opt_state):
        grads = jax.grad(lambda p: jnp.mean(loss_fn(p, batch)))(params)
        updates, _ = tx.update(grads, opt_state, params)
        return optax.apply_updates(params, updates)

    jax.tree.map(
        lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6),
        new_state.params,
        by_hand(state.params, state.opt_state),
    )
    np.testing.assert_allclose(metrics["w_B"], np.full(B, 1.0 / B))
    np.testing.assert_allclose(metrics["ess"], B, rtol=1e-5)
    assert "val_loss" not in metrics


def test_all_zero_step_has_no_data_term_and_no_nan():
    """Every example would raise the clean loss: w = 0, and the real step applies only the
    regulariser (weight decay), with no NaN anywhere."""
    module = model_factory.create_model("mlp", 2, hidden=())
    params, _ = models.init_model(module, jax.random.key(0), (1, 2))
    params = jax.tree.map(lambda x: jnp.full_like(x, 0.1), params)
    x = np.array([[1.0, 0.5], [0.8, 0.2], [1.2, 0.4]], np.float32)
    batch = {"image": x, "label": np.ones(3, np.int32), "is_noisy": np.zeros(3, bool)}
    val_batch = {"image": x, "label": np.zeros(3, np.int32)}
    lr, wd = 0.1, 0.01
    tx = optax.chain(optax.add_decayed_weights(wd), optax.sgd(lr))
    train_step = jax.jit(
        step_lib.make_train_step(models.make_apply_fn(module), tx, methods.get_scheme("l2rw")),
        donate_argnums=0,
    )
    # The state is donated: hand it copies, keep `params` for the comparison.
    new_state, metrics = train_step(
        _state(jax.tree.map(jnp.copy, params), {}, tx), batch, val_batch
    )
    assert bool(metrics["all_zero"])
    np.testing.assert_array_equal(metrics["w_B"], np.zeros(3))
    jax.tree.map(
        lambda a, b: np.testing.assert_allclose(a, b * (1 - lr * wd), rtol=1e-6),
        new_state.params,
        params,
    )
    for name, value in metrics.items():
        assert bool(jnp.all(jnp.isfinite(value))), name
    assert float(metrics["ess"]) == 0.0 and float(metrics["w_mean_noisy"]) == 0.0


def test_train_step_vmaps_over_seeds():
    module = model_factory.create_model("mlp", NUM_CLASSES, hidden=(8,))
    apply_fn = models.make_apply_fn(module)
    tx = optax.sgd(0.1, momentum=0.9)
    batch, val_batch = _batches((5,))
    states = [
        _state(models.init_model(module, jax.random.key(s), (1, 5))[0], {}, tx, seed=s)
        for s in (0, 1)
    ]
    train_step = step_lib.make_train_step(apply_fn, tx, methods.get_scheme("l2rw"))
    stacked = jax.tree.map(lambda *xs: jnp.stack(xs), *states)
    vmapped = jax.jit(jax.vmap(train_step, in_axes=(0, None, None)), compiler_options=FAST_COMPILE)
    out_states, out_metrics = vmapped(stacked, batch, val_batch)
    single = jax.jit(train_step, compiler_options=FAST_COMPILE)
    for k, state in enumerate(states):
        ref_state, ref_metrics = single(state, batch, val_batch)
        jax.tree.map(
            lambda a, b: np.testing.assert_allclose(a[k], b, rtol=1e-5, atol=1e-6),
            (out_states.params, out_states.opt_state, out_metrics["w_B"]),
            (ref_state.params, ref_state.opt_state, ref_metrics["w_B"]),
        )
    assert not np.allclose(out_metrics["w_B"][0], out_metrics["w_B"][1])


def test_sgd_lookahead_is_the_official_gradient_dot_product():
    """l2rw(lookahead="sgd"): w ~ max(<grad L_val(theta), grad C_i(theta)>, 0), whatever the
    training optimizer (here momentum with a non-zero trace)."""
    module = model_factory.create_model("mlp", NUM_CLASSES, hidden=(8,))
    apply_fn = models.make_apply_fn(module)
    params, _ = models.init_model(module, jax.random.key(0), (1, 5))
    batch, val_batch = _batches((5,))
    tx = optax.sgd(0.1, momentum=0.9)
    state = _state(params, {}, tx)
    opt_state = tx.update(jax.tree.map(jnp.ones_like, params), state.opt_state, params)[1]
    state = state._replace(opt_state=opt_state)
    loss_fn = _loss_fn(apply_fn, {})

    @functools.partial(jax.jit, compiler_options=FAST_COMPILE)
    def weights(state):
        official = methods.get_scheme("l2rw", lookahead="sgd")
        optimizer = methods.get_scheme("l2rw")
        ctx = methods.WeighContext(
            loss_fn, state.params, state.opt_state, tx, batch, val_batch, state.rng, state.step
        )
        flat = lambda tree: jnp.concatenate([x.ravel() for x in jax.tree.leaves(tree)])
        grad_val = flat(jax.grad(lambda p: jnp.mean(loss_fn(p, val_batch)))(state.params))
        per_example = jax.vmap(
            lambda i: flat(jax.grad(lambda p: loss_fn(p, batch)[i])(state.params))
        )(jnp.arange(B))
        dots_B = jnp.maximum(per_example @ grad_val, 0.0)
        return (
            official.weigh(ctx, state.method_state)[0],
            optimizer.weigh(ctx, state.method_state)[0],
            dots_B / jnp.sum(dots_B),
        )

    w_official, w_optimizer, expected = weights(state)
    np.testing.assert_allclose(w_official, expected, rtol=1e-4, atol=1e-7)
    assert not np.allclose(w_optimizer, expected, atol=1e-3)  # momentum moved theta'_0


def test_bad_names_and_options_raise_value_errors():
    with pytest.raises(ValueError, match="loss='mse'.*softmax_xent"):
        step_lib.make_train_step(None, optax.sgd(0.1), methods.erm(), loss="mse")
    with pytest.raises(ValueError, match="'no_such_method'.*erm, l2rw"):
        methods.get_scheme("no_such_method")
    with pytest.raises(ValueError, match=r"\['lr'\].*'l2rw'"):
        methods.get_scheme("l2rw", lr=0.1)
    with pytest.raises(ValueError, match="mode='fwd'"):
        methods.get_scheme("l2rw", mode="fwd")
    with pytest.raises(ValueError, match="lookahead='adam'.*optimizer, sgd"):
        methods.get_scheme("l2rw", lookahead="adam")
    with pytest.raises(ValueError, match="'vgg'.*lenet"):
        model_factory.create_model("vgg", 10)
    with pytest.raises(ValueError, match=r"\['dropout'\].*'lenet'"):
        model_factory.create_model("lenet", 10, dropout=0.5)
    with pytest.raises(ValueError, match="depth=12"):
        models.init_model(
            model_factory.create_model("wrn", 10, depth=12), jax.random.key(0), (1, 8, 8, 3)
        )


# --- models -------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "name, kw, shape, num_params, conv_shape, feat_dim",
    [
        ("lenet", {}, (28, 28, 1), 168_022, (4, 4, 64), 100),
        ("resnet32", {}, (32, 32, 3), 464_154, (8, 8, 64), 64),
        ("wrn", {}, (32, 32, 3), 36_479_194, (8, 8, 640), 640),
    ],
)
def test_paper_models_have_the_published_sizes(name, kw, shape, num_params, conv_shape, feat_dim):
    """Shapes only (jax.eval_shape: traced, never compiled)."""
    module = model_factory.create_model(name, 10, **kw)
    variables = jax.eval_shape(
        lambda k: module.init(k, jnp.zeros((2, *shape)), train=False), jax.random.key(0)
    )
    assert sum(np.prod(x.shape) for x in jax.tree.leaves(variables["params"])) == num_params
    assert ("batch_stats" in variables) == (name != "lenet")
    params, model_state = variables["params"], {k: v for k, v in variables.items() if k != "params"}
    logits, feats = jax.eval_shape(
        models.make_feature_fn(module), params, model_state, jnp.zeros((2, *shape))
    )
    assert logits.shape == (2, 10)
    assert feats["penultimate"].shape == (2, feat_dim)
    assert feats["conv"].shape == (2, *conv_shape)


def test_batchnorm_train_and_eval_modes():
    module = model_factory.create_model("resnet32", 5, units_per_stage=1, widths=(4, 8, 8))
    params, model_state = models.init_model(module, jax.random.key(0), (1, 8, 8, 3))
    apply_fn = jax.jit(
        models.make_apply_fn(module), static_argnums=3, compiler_options=FAST_COMPILE
    )
    features = models.make_feature_fn(module)
    feature_fn = jax.jit(features, compiler_options=FAST_COMPILE)
    x = jax.random.normal(jax.random.key(1), (6, 8, 8, 3)) * 2 + 1
    logits_train, new_state = apply_fn(params, model_state, x, True)
    changed = jax.tree.map(lambda a, b: bool(jnp.any(a != b)), new_state, model_state)
    assert all(jax.tree.leaves(changed))
    logits_eval, same_state = apply_fn(params, model_state, x, False)
    jax.tree.map(np.testing.assert_array_equal, same_state, model_state)
    assert not np.allclose(logits_train, logits_eval)  # batch vs running statistics
    feat_logits, feats = feature_fn(params, model_state, x)
    np.testing.assert_allclose(feat_logits, logits_eval, rtol=1e-5, atol=1e-6)
    # Grad-CAM's derivative: with respect to an additive delta on the last feature map; the
    # logits are linear in the pooled map, so d logit_c / d fmap = W[:, c] / (h * w).
    grad_cam = jax.jit(
        jax.grad(lambda d: features(params, model_state, x, d)[0][:, 2].sum()),
        compiler_options=FAST_COMPILE,
    )
    d_fmap = grad_cam(jnp.zeros_like(feats["conv"]))
    kernel = params[models.OUTPUT_LAYER]["kernel"]
    h, w = feats["conv"].shape[1:3]
    np.testing.assert_allclose(
        d_fmap, jnp.broadcast_to(kernel[:, 2] / (h * w), d_fmap.shape), rtol=1e-5
    )


def test_wide_resnet_dropout_needs_and_uses_rng():
    module = model_factory.create_model("wrn", 4, depth=10, width=1, dropout_rate=0.5)
    params, model_state = models.init_model(module, jax.random.key(0), (1, 8, 8, 3))
    apply_fn = jax.jit(
        models.make_apply_fn(module), static_argnums=3, compiler_options=FAST_COMPILE
    )
    x = jax.random.normal(jax.random.key(1), (2, 8, 8, 3))
    a, _ = apply_fn(params, model_state, x, True, jax.random.key(2))
    b, _ = apply_fn(params, model_state, x, True, jax.random.key(3))
    assert not np.allclose(a, b)
    e1, _ = apply_fn(params, model_state, x, False)
    e2, _ = apply_fn(params, model_state, x, False)
    np.testing.assert_array_equal(e1, e2)


def test_max_pool_same_matches_flax():
    cases = [(28, 3, 2), (7, 3, 2), (6, 2, 2), (5, 2, 2)]

    @functools.partial(jax.jit, compiler_options=FAST_COMPILE)
    def both(xs):
        return [
            (models.max_pool_same(x, k, s), nn.max_pool(x, (k, k), strides=(s, s), padding="SAME"))
            for x, (_, k, s) in zip(xs, cases)
        ]

    xs = [jax.random.normal(jax.random.key(n), (2, n, n + 1, 3)) for n, _, _ in cases]
    for ours, flax_pool in both(xs):
        np.testing.assert_array_equal(ours, flax_pool)


# --- the noisy-label toy --------------------------------------------------------------------


def test_l2rw_downweights_flipped_labels_on_gaussian_blobs():
    """Two Gaussian blobs, 40% of the training labels flipped, 10 clean points: over training,
    the mean weight of a flipped example is below a third of that of a clean one."""
    rng = np.random.default_rng(0)
    n, num_steps, batch_size = 400, 40, 50
    labels = rng.integers(0, 2, n)
    x = rng.normal(size=(n, 2)) + np.where(labels[:, None] == 1, 2.0, -2.0) * np.array([1, 0])
    flipped = np.zeros(n, bool)
    flipped[rng.permutation(n)[: round(0.4 * n)]] = True
    observed = np.where(flipped, 1 - labels, labels)
    clean_labels = np.array([0] * 5 + [1] * 5)
    clean_x = rng.normal(size=(10, 2)) + np.where(clean_labels[:, None] == 1, 2.0, -2.0) * [1, 0]
    val_batch = {"image": clean_x.astype(np.float32), "label": clean_labels.astype(np.int32)}

    # A linear (logistic-regression) model under plain SGD. (Under momentum 0.9 the model
    # fits the 10 clean points within a few steps, after which the clean gradient, and with it
    # the meta-signal, is mostly noise: the flipped/clean ratio then varies a lot with the seed.)
    module = model_factory.create_model("mlp", 2, hidden=())
    params, _ = models.init_model(module, jax.random.key(0), (1, 2))
    tx = optax.sgd(0.1)
    train_step = jax.jit(
        step_lib.make_train_step(models.make_apply_fn(module), tx, methods.get_scheme("l2rw")),
        donate_argnums=0,
    )
    state = _state(params, {}, tx)
    weights, noisy = [], []
    for _ in range(num_steps):
        rows = rng.choice(n, batch_size, replace=False)
        batch = {
            "image": x[rows].astype(np.float32),
            "label": observed[rows].astype(np.int32),
            "is_noisy": flipped[rows],
        }
        state, metrics = train_step(state, batch, val_batch)
        weights.append(np.asarray(metrics["w_B"]))
        noisy.append(flipped[rows])
    weights, noisy = np.concatenate(weights), np.concatenate(noisy)
    mean_flipped, mean_clean = weights[noisy].mean(), weights[~noisy].mean()
    assert mean_clean > 0
    assert mean_flipped < mean_clean / 3, (mean_flipped, mean_clean)
