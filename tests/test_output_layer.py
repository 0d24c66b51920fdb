"""The output layer is found by what it computes, never by where its name sorts.

Flax returns the parameters as a dict with sorted keys, so "the last entry" was
``_PreActUnit_2`` on ResNet-32, ``_WideBasic_k`` on WRN and ``Dense_2`` on a 12-layer MLP
: ``meta_params="last"`` moved a residual block and froze the output layer. These
tests pin, for every model of the zoo and for a module of a user's own, that the layer the
selector moves is the one whose output is the logits, fed by the audit's penultimate features,
and that the meta-gradient is the finite-difference one of the output layer alone.
"""

import functools

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from l2rw_jax import methods, model_factory, models

C = 3
FAST_COMPILE = {"xla_backend_optimization_level": 0}

ZOO = {
    "lenet": ("lenet", {}, (8, 8, 1)),
    "small_cnn": ("small_cnn", dict(channels=(4,), hidden=5, batch_norm=True), (8, 8, 1)),
    "mlp12": ("mlp", dict(hidden=(4,) * 12), (5,)),
    "resnet32": ("resnet32", dict(units_per_stage=1, widths=(4, 4, 4)), (8, 8, 3)),
    "wrn": ("wrn", dict(depth=10, width=1), (8, 8, 3)),
}


def _subtree(params, path):
    for key in path:
        params = params[key]
    return params


def _xent(logits_BxC, labels_B):
    return optax.softmax_cross_entropy_with_integer_labels(logits_BxC, labels_B)


@pytest.mark.parametrize("name", ZOO)
def test_zoo_output_layer_is_head_fed_by_the_penultimate_and_the_only_one_moved(name):
    model, kw, shape = ZOO[name]
    module = model_factory.create_model(model, C, **kw)
    path = models.output_layer_path(module, (2, *shape))
    assert path == (models.OUTPUT_LAYER,)
    params, model_state = models.init_model(module, jax.random.key(0), (1, *shape))
    rng = np.random.default_rng(0)
    x = jnp.asarray(rng.normal(size=(4, *shape)), jnp.float32)
    labels = jnp.asarray(rng.integers(0, C, 4), jnp.int32)
    apply_fn = models.make_apply_fn(module)
    loss_fn = lambda p, b: _xent(apply_fn(p, model_state, b["image"], False)[0], b["label"])
    moving = methods._moving_only(loss_fn, "last")

    @functools.partial(jax.jit, compiler_options=FAST_COMPILE)
    def features_and_grads(params):
        logits, feats = models.make_feature_fn(module)(params, model_state, x)
        grads = jax.grad(lambda p: jnp.sum(moving(p, {"image": x, "label": labels})))(params)
        return logits, feats["penultimate"], grads

    logits, penultimate, grads = features_and_grads(params)
    # The audit's penultimate features are the output layer's input: logits = f W + b.
    head = _subtree(params, path)
    np.testing.assert_allclose(
        logits, penultimate @ head["kernel"] + head["bias"][None, :], rtol=1e-5, atol=1e-6
    )
    # "last" moves exactly the output layer: its gradient is non-zero, every other one is 0.
    for key_path, g in jax.tree.leaves_with_path(grads):
        keys = tuple(k.key for k in key_path)
        if keys[: len(path)] == path:
            assert np.any(np.asarray(g) != 0), keys
        else:
            assert not np.any(np.asarray(g)), keys


def test_resnet32_issue_input_meta_gradient_is_the_output_layers_finite_differences():
    """The reported input: tiny ResNet-32, 6 training and 4 clean images, SGD lr 0.1. The
    meta-gradient with meta_params="last" (both modes) equals float64 central finite
    differences of L_val(theta'(eps)) where only the output layer moves; moving the last
    residual unit (what sorting the keys picked) gives another vector."""
    B, M, shape = 6, 4, (8, 8, 3)
    module = model_factory.create_model("resnet32", C, units_per_stage=1, widths=(4, 4, 4))
    params, model_state = models.init_model(module, jax.random.key(0), (1, *shape))
    to64 = lambda tree: jax.tree.map(lambda a: np.asarray(a, np.float64), tree)
    params, model_state = to64(params), to64(model_state)
    path = models.output_layer_path(module, (1, *shape))
    rng = np.random.default_rng(0)
    batch = {"image": rng.normal(size=(B, *shape)), "label": rng.integers(0, C, B)}
    val = {"image": rng.normal(size=(M, *shape)), "label": rng.integers(0, C, M)}
    apply_fn = models.make_apply_fn(module)
    tx = optax.sgd(0.1)

    def loss_fn(p, b):  # training mode, as in step.make_train_step
        return _xent(apply_fn(p, model_state, b["image"], True)[0], b["label"])

    def with_head(head):
        return {**params, path[0]: head}

    def val_after_lookahead(eps_B):  # only the output layer moves, written out directly
        head = _subtree(params, path)
        grads = jax.grad(lambda h: jnp.sum(eps_B * loss_fn(with_head(h), batch)))(head)
        updates, _ = tx.update(grads, tx.init(head), head)
        return jnp.mean(loss_fn(with_head(optax.apply_updates(head, updates)), val))

    def run(params, batch, val):
        ctx = methods.WeighContext(
            loss_fn=loss_fn,
            params=params,
            opt_state=tx.init(params),
            tx=tx,
            batch=batch,
            val_batch=val,
            rng=jax.random.PRNGKey(0),
            step=jnp.int32(0),
        )
        empty = methods.EmptyState()
        g = {
            mode: methods.l2rw(mode, meta_params="last").weigh(ctx, empty)[2]["g_B"]
            for mode in ("forward", "reverse")
        }
        g["unit"] = methods.l2rw(meta_params=("_PreActUnit_2",)).weigh(ctx, empty)[2]["g_B"]
        step = 1e-6 * jnp.concatenate([jnp.eye(B), -jnp.eye(B)])
        values = jax.vmap(val_after_lookahead)(step)
        return g, (values[:B] - values[B:]) / 2e-6

    with jax.enable_x64(True):
        g, g_fd = jax.tree.map(
            np.asarray, jax.jit(run, compiler_options=FAST_COMPILE)(params, batch, val)
        )
    assert len(path) == 1 and sorted(params)[0] != path[0]
    assert g["forward"].dtype == np.float64
    scale = np.max(np.abs(g_fd))
    assert scale > 1e-4, "degenerate problem: the meta-gradient is ~0"
    for mode in ("forward", "reverse"):
        np.testing.assert_array_less(np.abs(g[mode] - g_fd), 1e-3 * scale)
    # The selection matters here: the last residual unit's meta-gradient is another vector.
    assert np.max(np.abs(g["unit"] - g_fd)) > 0.3 * scale


class _Classifier(nn.Module):
    @nn.compact
    def __call__(self, h):
        # Dense_0 is built first, so the output layer is Dense_0 and the hidden one Dense_1.
        return nn.Dense(C)(nn.relu(nn.Dense(4)(h)))


class _UserNet(nn.Module):
    """A user's own module: no train flag, no naming convention; the output layer is nested
    and sorts neither first nor last."""

    @nn.compact
    def __call__(self, x):
        h = nn.relu(nn.Dense(6, name="zz_stem")(x))
        return _Classifier(name="blocks")(h)


def test_user_module_output_layer_is_found_and_moved_alone():
    """The output layer of a plain Flax module is found by what it returns; with its path as
    meta_params, the SGD meta-gradient is -lr <grad_head L_val, grad_head C_i> (the official
    code's form, restricted to the output layer)."""
    module = _UserNet()
    path = models.output_layer_path(module, (1, 5))
    assert path == ("blocks", "Dense_0")
    params = module.init(jax.random.key(0), jnp.zeros((1, 5)))["params"]
    rng = np.random.default_rng(2)
    batch = {"image": rng.normal(size=(6, 5)), "label": rng.integers(0, C, 6)}
    val = {"image": rng.normal(size=(4, 5)), "label": rng.integers(0, C, 4)}
    lr = 0.3
    tx = optax.sgd(lr)
    loss_fn = lambda p, b: _xent(module.apply({"params": p}, b["image"]), b["label"])

    def run(params, batch, val):
        ctx = methods.WeighContext(
            loss_fn=loss_fn,
            params=params,
            opt_state=tx.init(params),
            tx=tx,
            batch=batch,
            val_batch=val,
            rng=jax.random.PRNGKey(0),
            step=jnp.int32(0),
        )
        g_B = methods.l2rw(meta_params=path).weigh(ctx, methods.EmptyState())[2]["g_B"]

        def head_grad(f):
            def of_head(head):
                inner = {**params["blocks"], "Dense_0": head}
                return f({**params, "blocks": inner})

            flat = jax.grad(of_head)(params["blocks"]["Dense_0"])
            return jnp.concatenate([a.ravel() for a in jax.tree.leaves(flat)])

        grad_val = head_grad(lambda p: jnp.mean(loss_fn(p, val)))
        per_example = jnp.stack([head_grad(lambda p, i=i: loss_fn(p, batch)[i]) for i in range(6)])
        return g_B, -lr * per_example @ grad_val

    with jax.enable_x64(True):
        params64 = jax.tree.map(lambda a: np.asarray(a, np.float64), params)
        g_B, expected = jax.jit(run, compiler_options=FAST_COMPILE)(params64, batch, val)
    assert np.max(np.abs(expected)) > 1e-4
    np.testing.assert_allclose(g_B, expected, rtol=1e-10, atol=1e-14)

    # "last" means params["head"]; a module without one fails loudly, naming the way out.
    ctx = methods.WeighContext(
        loss_fn=loss_fn,
        params=params,
        opt_state=tx.init(params),
        tx=tx,
        batch=batch,
        val_batch=val,
        rng=jax.random.PRNGKey(0),
        step=jnp.int32(0),
    )
    with pytest.raises(ValueError, match=r"'head'.*output_layer_path"):
        methods.l2rw(meta_params="last").weigh(ctx, methods.EmptyState())
    with pytest.raises(ValueError, match=r"'Dense_9'.*\('blocks',\)"):
        methods.l2rw(meta_params=("blocks", "Dense_9")).weigh(ctx, methods.EmptyState())


def test_output_computed_after_the_last_layer_has_no_output_layer():
    class Scaled(nn.Module):
        @nn.compact
        def __call__(self, x):
            return 2.0 * nn.Dense(C)(x)

    with pytest.raises(ValueError, match="No layer with parameters of Scaled returns"):
        models.output_layer_path(Scaled(), (1, 5))
