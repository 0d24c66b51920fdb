"""The baseline weighting schemes: random, proportion, hard_mining, mwnet (l2rw_jax.methods)."""

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from l2rw_jax import methods


def _ctx(batch, *, rng=None, loss_fn=None, **kw):
    defaults = dict(
        loss_fn=loss_fn or (lambda p, b: b["loss"]),
        params={},
        opt_state=(),
        tx=optax.sgd(0.1),
        batch=batch,
        val_batch=batch,
        rng=jax.random.PRNGKey(0) if rng is None else rng,
        step=jnp.int32(0),
    )
    defaults.update(kw)
    return methods.WeighContext(**defaults)


def test_random_is_normalised_rectified_gaussian():
    batch = {"label": jnp.zeros(64, jnp.int32)}
    key = jax.random.PRNGKey(3)
    scheme = methods.get_scheme("random")
    state0 = scheme.init(jax.random.PRNGKey(0))
    w, state, metrics = scheme.weigh(_ctx(batch, rng=key), state0)
    z = np.maximum(np.asarray(jax.random.normal(key, (64,))), 0.0)
    np.testing.assert_allclose(w, z / z.sum(), rtol=1e-6)
    assert type(state) is methods.EmptyState and metrics == {}
    assert 0 < int(np.sum(np.asarray(w) == 0)) < 64  # some clipped, some not
    w2, _, _ = scheme.weigh(_ctx(batch, rng=jax.random.PRNGKey(4)), state0)
    assert not np.allclose(w, w2)


def test_proportion_weights_inverse_class_frequency():
    counts = np.array([10, 5, 0, 20])
    scheme = methods.get_scheme("proportion")
    state = scheme.init(jax.random.PRNGKey(0), counts)
    np.testing.assert_allclose(state.class_weight_C, [0.1, 0.2, 0.0, 0.05])
    batch = {"label": jnp.array([0, 0, 1, 3], jnp.int32)}
    w, new_state, _ = scheme.weigh(_ctx(batch), state)
    assert new_state is state
    expected = np.array([0.1, 0.1, 0.2, 0.05])
    np.testing.assert_allclose(w, expected / expected.sum(), rtol=1e-6)


@pytest.mark.parametrize(
    "labels, losses, kept",
    [
        # One minority example (label 0): it and the single hardest majority example.
        ([1, 1, 1, 0, 1, 1], [0.1, 0.9, 0.5, 0.2, 0.7, 0.3], [1, 3]),
        # Three minority examples: them and the three hardest majority ones.
        ([0, 1, 0, 1, 1, 0, 1], [0.1, 0.4, 0.2, 0.9, 0.8, 0.3, 0.1], [0, 1, 2, 3, 4, 5]),
        # No minority example: k = 1, only the hardest.
        ([1, 1, 1, 1], [0.3, 0.2, 0.8, 0.1], [2]),
    ],
)
def test_hard_mining_keeps_minority_and_hardest_majority(labels, losses, kept):
    scheme = methods.get_scheme("hard_mining")
    state = scheme.init(jax.random.PRNGKey(0), [3, 97])
    assert int(state.majority) == 1
    batch = {"label": jnp.array(labels, jnp.int32), "loss": jnp.array(losses, jnp.float32)}
    w, _, _ = scheme.weigh(_ctx(batch), state)
    expected = np.zeros(len(labels))
    expected[kept] = 1.0 / len(kept)
    np.testing.assert_allclose(w, expected, rtol=1e-6)


def test_schemes_that_need_class_counts_say_so():
    for name in ("proportion", "hard_mining"):
        with pytest.raises(ValueError, match="class_counts_C"):
            methods.get_scheme(name).init(jax.random.PRNGKey(0))
    with pytest.raises(ValueError, match="hiden"):
        methods.get_scheme("mwnet", hiden=3)
    with pytest.raises(ValueError, match="no_such_method"):
        methods.get_scheme("no_such_method")
    assert type(methods.get_scheme("l2rw").init(jax.random.PRNGKey(0))) is methods.EmptyState


def test_a_state_of_the_wrong_type_is_refused_by_name():
    batch = {"label": jnp.zeros(4, jnp.int32), "loss": jnp.ones(4)}
    for name in ("proportion", "hard_mining"):
        with pytest.raises(ValueError, match=f"{name}.*got EmptyState"):
            methods.get_scheme(name).weigh(_ctx(batch), methods.EmptyState())


@pytest.fixture(scope="module")
def mwnet_problem():
    """A linear softmax model one momentum step in (non-zero trace), noisy batch + clean batch."""
    rng = np.random.default_rng(0)
    params = {
        "w": jnp.asarray(rng.normal(size=(5, 3)), jnp.float32),
        "b": jnp.zeros(3, jnp.float32),
    }
    batch = {
        "x": jnp.asarray(rng.normal(size=(8, 5)), jnp.float32),
        "label": jnp.asarray(rng.integers(0, 3, 8), jnp.int32),
    }
    val = {
        "x": jnp.asarray(rng.normal(size=(4, 5)), jnp.float32),
        "label": jnp.asarray(rng.integers(0, 3, 4), jnp.int32),
    }

    def loss_fn(p, b):
        return optax.softmax_cross_entropy_with_integer_labels(
            b["x"] @ p["w"] + p["b"][None, :], b["label"]
        )

    tx = optax.chain(optax.add_decayed_weights(1e-3), optax.sgd(0.5, momentum=0.9))
    opt_state = tx.init(params)
    grads = jax.grad(lambda p: jnp.mean(loss_fn(p, batch)))(params)
    _, opt_state = tx.update(grads, opt_state, params)
    phi = methods.mwnet(hidden=6).init(jax.random.PRNGKey(1)).phi
    return dict(
        params=params, batch=batch, val=val, loss_fn=loss_fn, tx=tx, opt_state=opt_state, phi=phi
    )


def _val_after_lookahead(prob, phi, normalize):
    """L_val(theta'(phi)) written out directly, for reverse mode and finite differences."""
    losses = prob["loss_fn"](prob["params"], prob["batch"])
    v = methods._vnet(phi, losses)
    w = v / jnp.sum(v) if normalize else v / v.shape[0]
    grads = jax.grad(lambda p: jnp.sum(w * prob["loss_fn"](p, prob["batch"])))(prob["params"])
    updates, _ = prob["tx"].update(grads, prob["opt_state"], prob["params"])
    params1 = optax.apply_updates(prob["params"], updates)
    return jnp.mean(prob["loss_fn"](params1, prob["val"]))


@pytest.mark.parametrize("normalize", [True, False])
def test_mwnet_meta_gradient_is_exact(mwnet_problem, normalize):
    prob = mwnet_problem
    ctx = _ctx(
        prob["batch"],
        loss_fn=prob["loss_fn"],
        params=prob["params"],
        opt_state=prob["opt_state"],
        tx=prob["tx"],
        val_batch=prob["val"],
    )

    def weights(phi, losses_B):
        v = methods._vnet(phi, losses_B)
        return v / jnp.sum(v) if normalize else v / v.shape[0]

    _, val_loss, grad_fwd = methods._mwnet_meta_gradient(ctx, prob["phi"], weights)
    f = lambda phi: _val_after_lookahead(prob, phi, normalize)
    grad_rev = jax.grad(f)(prob["phi"])
    np.testing.assert_allclose(val_loss, f(prob["phi"]), rtol=1e-6)
    for name in grad_rev:
        np.testing.assert_allclose(grad_fwd[name], grad_rev[name], rtol=1e-5, atol=1e-7)
    # Central finite difference in float64 along a random direction of phi.
    with jax.enable_x64():
        to64 = lambda t: jax.tree.map(
            lambda x: x.astype(jnp.float64) if jnp.issubdtype(x.dtype, jnp.floating) else x, t
        )
        prob64 = dict(
            prob, **{k: to64(prob[k]) for k in ("params", "batch", "val", "opt_state", "phi")}
        )
        phi64 = prob64["phi"]
        d = jax.tree.map(
            lambda x: jnp.asarray(np.random.default_rng(2).normal(size=x.shape)), phi64
        )
        h = 1e-5
        plus = _val_after_lookahead(
            prob64, jax.tree.map(lambda a, b: a + h * b, phi64, d), normalize
        )
        minus = _val_after_lookahead(
            prob64, jax.tree.map(lambda a, b: a - h * b, phi64, d), normalize
        )
        fd = float((plus - minus) / (2 * h))
    analytic = sum(float(np.vdot(np.asarray(grad_fwd[k]), np.asarray(d[k]))) for k in grad_fwd)
    np.testing.assert_allclose(analytic, fd, rtol=1e-3)


def test_mwnet_step_updates_phi_with_adam_and_returns_new_weights(mwnet_problem):
    prob = mwnet_problem
    scheme = methods.get_scheme("mwnet", hidden=6)
    state = scheme.init(jax.random.PRNGKey(1))
    ctx = _ctx(
        prob["batch"],
        loss_fn=prob["loss_fn"],
        params=prob["params"],
        opt_state=prob["opt_state"],
        tx=prob["tx"],
        val_batch=prob["val"],
    )
    w, new_state, metrics = scheme.weigh(ctx, state)
    grad = jax.grad(lambda phi: _val_after_lookahead(prob, phi, True))(state.phi)
    meta_tx = optax.chain(optax.add_decayed_weights(1e-4), optax.adam(1e-3))
    upd, opt_state1 = meta_tx.update(grad, meta_tx.init(state.phi), state.phi)
    phi1 = optax.apply_updates(state.phi, upd)
    assert type(new_state) is methods.MWNetState
    for name in phi1:
        np.testing.assert_allclose(new_state.phi[name], phi1[name], rtol=1e-5, atol=1e-8)
    # The Adam moments and count advanced by this one update.
    assert jax.tree.structure(new_state.opt_state) == jax.tree.structure(opt_state1)
    for a, b in zip(jax.tree.leaves(new_state.opt_state), jax.tree.leaves(opt_state1)):
        np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-10)
    losses = prob["loss_fn"](prob["params"], prob["batch"])
    v = methods._vnet(phi1, losses)
    np.testing.assert_allclose(w, v / jnp.sum(v), rtol=1e-5)
    np.testing.assert_allclose(float(jnp.sum(w)), 1.0, rtol=1e-6)
    assert float(metrics["val_loss"]) > 0


@pytest.mark.parametrize(
    "name, options, state_type",
    [
        ("erm", {}, methods.EmptyState),
        ("random", {}, methods.EmptyState),
        ("l2rw", {}, methods.EmptyState),
        ("l2rw", {"memory_decay": 0.5}, methods.L2RWState),
        ("proportion", {}, methods.ProportionState),
        ("hard_mining", {}, methods.HardMiningState),
        ("mwnet", {"hidden": 6}, methods.MWNetState),
    ],
)
def test_state_is_the_schemes_namedtuple_and_survives_jit_and_vmap(
    mwnet_problem, name, options, state_type
):
    """init gives the scheme's own NamedTuple; K=2 members' states stacked and weighed under
    jit(vmap(weigh)) come back as the same type and tree, each member equal to its own run."""
    prob = mwnet_problem
    scheme = methods.get_scheme(name, **options)
    batch = dict(prob["batch"], index=jnp.arange(8, dtype=jnp.int32))
    ctx = _ctx(
        batch,
        loss_fn=prob["loss_fn"],
        params=prob["params"],
        opt_state=prob["opt_state"],
        tx=prob["tx"],
        val_batch=prob["val"],
    )
    states = [scheme.init(key, [3, 4, 5]) for key in jax.random.split(jax.random.PRNGKey(5), 2)]
    assert all(type(s) is state_type for s in states)
    stacked = jax.tree.map(lambda *xs: jnp.stack(xs), *states)
    assert type(stacked) is state_type

    # Each member also has its own step key, as in the loop (and a mapped array for vmap when
    # the state has no leaves).
    keys_K = jax.random.split(jax.random.PRNGKey(6), 2)
    weigh = lambda s, key: scheme.weigh(ctx._replace(rng=key), s)
    w_KxB, new_K, _ = jax.jit(jax.vmap(weigh))(stacked, keys_K)
    assert type(new_K) is state_type
    assert jax.tree.structure(new_K) == jax.tree.structure(stacked)
    assert [(x.shape, x.dtype) for x in jax.tree.leaves(new_K)] == [
        (x.shape, x.dtype) for x in jax.tree.leaves(stacked)
    ]
    weigh_one = jax.jit(weigh)
    for k, state in enumerate(states):
        w_B, new_state, _ = weigh_one(state, keys_K[k])
        assert type(new_state) is state_type
        np.testing.assert_allclose(w_KxB[k], w_B, rtol=1e-5, atol=1e-8)
        for a, b in zip(jax.tree.leaves(new_K), jax.tree.leaves(new_state)):
            np.testing.assert_allclose(a[k], b, rtol=1e-5, atol=1e-8)
    if name in ("mwnet", "random"):  # members with their own phi or key stay apart
        assert not np.allclose(w_KxB[0], w_KxB[1])
