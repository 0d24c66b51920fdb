"""The stages of l2rw_stages, one by one on hand-checkable arrays, and methods.l2rw as their
chain (score -> weight map x loss gate -> normalise -> mix -> warm-up)."""

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from jax.sharding import Mesh, PartitionSpec as P

from l2rw_jax import l2rw_stages as stages
from l2rw_jax import methods, reweight

AXIS = "data"


# --- score ---


def test_score_without_memory_is_the_meta_gradient_and_leaves_the_state():
    g = jnp.array([0.5, -1.0, 2.0])
    state = methods.EmptyState()
    s, new_state = stages.score(g, state, None, 0.0)
    assert s is g and new_state is state


def test_memory_score_by_hand():
    # g = [3, -4, 0, 0]: rms 2.5, so g^ = [1.2, -1.6, 0, 0], at rows [1, 3, 0, 4]. Row 1 was
    # seen with m = 2: 0.5 * 2 + 0.5 * 1.2 = 1.6; rows 3, 0, 4 are first visits: g^ itself.
    # Row 2 is not in the batch and keeps its (unseen) 7.
    state = stages.L2RWState(
        memory_N=jnp.array([0.0, 2.0, 7.0, 5.0, 0.0]),
        seen_N=jnp.array([False, True, False, False, False]),
    )
    s, new = stages.score(jnp.array([3.0, -4.0, 0.0, 0.0]), state, jnp.array([1, 3, 0, 4]), 0.5)
    np.testing.assert_allclose(s, [1.6, -1.6, 0, 0], rtol=1e-6)
    np.testing.assert_allclose(new.memory_N, [0, 1.6, 7, -1.6, 0], rtol=1e-6)
    np.testing.assert_array_equal(new.seen_N, [True, True, False, True, True])
    assert type(new) is stages.L2RWState


def test_init_memory_and_rms_of_zero():
    state = stages.init_memory(3)
    np.testing.assert_array_equal(state.memory_N, np.zeros(3, np.float32))
    assert state.seen_N.dtype == jnp.bool_ and not bool(jnp.any(state.seen_N))
    np.testing.assert_array_equal(stages.rms_normalized(jnp.zeros(4)), np.zeros(4))
    np.testing.assert_allclose(
        stages.rms_normalized(jnp.array([3.0, -4.0])), [3 / 12.5**0.5, -4 / 12.5**0.5], rtol=1e-6
    )


def test_moving_only_holds_every_other_parameter_constant():
    params = {"body": {"w": jnp.array(2.0)}, "head": {"w": jnp.array(3.0)}}

    def loss_fn(p, batch):
        return batch * p["body"]["w"] * p["head"]["w"]  # d/d body = 3 b, d/d head = 2 b

    batch = jnp.array([1.0])
    grad = lambda f: jax.grad(lambda p: jnp.sum(f(p, batch)))(params)
    g_last = grad(stages.moving_only(loss_fn, "last"))
    assert (float(g_last["body"]["w"]), float(g_last["head"]["w"])) == (0.0, 2.0)
    g_body = grad(stages.moving_only(loss_fn, ("body",)))
    assert (float(g_body["body"]["w"]), float(g_body["head"]["w"])) == (3.0, 0.0)
    with pytest.raises(ValueError, match="'tail'"):
        stages.moving_only(loss_fn, ("tail",))(params, batch)


# --- weight map and loss gate ---


@pytest.mark.parametrize(
    "name,expected",
    [
        ("clip", [2.0, 0.5, 0.0, 0.0, 1.0]),
        ("sign", [1.0, 1.0, 0.0, 0.0, 1.0]),
        ("capped", [1.0, 0.5, 0.0, 0.0, 1.0]),  # the positive -s are 2, 0.5, 1: median 1
        ("one", [1.0, 1.0, 1.0, 1.0, 1.0]),
    ],
)
def test_weight_maps_by_hand(name, expected):
    s = jnp.array([-2.0, -0.5, 0.0, 1.0, -1.0])
    wt = stages.weight_map(s, name)
    assert wt.dtype == jnp.float32
    np.testing.assert_array_equal(wt, np.asarray(expected, np.float32))


def test_weight_map_and_normalize_refuse_unknown_names():
    with pytest.raises(ValueError, match="weight_map"):
        stages.weight_map(jnp.zeros(2), "softmax")
    with pytest.raises(ValueError, match="normalize"):
        stages.normalize(jnp.zeros(2), jnp.zeros(2, jnp.int32), "classes")
    with pytest.raises(ValueError, match="mix"):
        stages.graded_weights("none", jnp.zeros(2), jnp.zeros(2), jnp.zeros(2, jnp.int32))


@pytest.mark.parametrize(
    "q,expected", [(0.0, [1, 0, 0, 0]), (0.5, [1, 1, 0, 0]), (1.0, [1, 1, 1, 0])]
)
def test_loss_gate_keeps_the_losses_up_to_the_clean_quantile(q, expected):
    losses = jnp.array([0.1, 0.5, 0.9, 2.0])
    val_losses = jnp.array([0.2, 0.4, 0.6, 0.8, 1.0])  # quantiles 0.2, 0.6, 1.0
    np.testing.assert_array_equal(
        stages.loss_gate(losses, val_losses, q), np.asarray(expected, np.float32)
    )


# --- normalise ---


LABEL6 = jnp.array([0, 0, 1, 1, 1, 2], jnp.int32)
WT6 = jnp.array([2.0, 2.0, 1.0, 0.0, 3.0, 0.0])


@pytest.mark.parametrize(
    "name,expected",
    [
        # class 0: 2/6 of the batch, 1/2 each; class 1: 3/6, by 1:0:3; class 2 (all 0): its 1/6.
        ("class", [1 / 6, 1 / 6, 1 / 8, 0, 3 / 8, 1 / 6]),
        # 1/3 per class present.
        ("class_balanced", [1 / 6, 1 / 6, 1 / 12, 0, 1 / 4, 1 / 3]),
        # classes 0 and 1 endorse an example: 1/2 each; class 2 none: 0.
        ("endorsed_classes", [1 / 4, 1 / 4, 1 / 8, 0, 3 / 8, 0]),
        ("batch", [0.25, 0.25, 0.125, 0, 0.375, 0]),
    ],
)
def test_normalize_by_hand(name, expected):
    np.testing.assert_allclose(stages.normalize(WT6, LABEL6, name), expected, rtol=1e-6)


def test_batch_normalisation_of_all_zero_weights_follows_all_clipped():
    zeros, label = jnp.zeros(4), jnp.zeros(4, jnp.int32)
    np.testing.assert_array_equal(stages.normalize(zeros, label, "batch"), np.zeros(4))
    np.testing.assert_array_equal(
        stages.normalize(zeros, label, "batch", all_clipped="uniform"), np.full(4, 0.25, np.float32)
    )


# --- mix ---


def test_mix_by_hand():
    w, graded = jnp.array([0.5, 0.5, 0.0, 0.0]), jnp.array([0.0, 0.0, 0.25, 0.75])
    np.testing.assert_allclose(
        stages.mix(w, graded, 0.25), [0.375, 0.375, 0.0625, 0.1875], rtol=1e-6
    )
    np.testing.assert_array_equal(stages.mix(w, graded, 0.0), w)
    np.testing.assert_array_equal(stages.mix(w, graded, 1.0), graded)


def test_graded_weights_are_the_papers_or_its_map_per_endorsed_class():
    g = jnp.array([-1.0, -3.0, 2.0, -2.0, 0.0])
    label = jnp.array([0, 0, 0, 1, 2], jnp.int32)
    w_paper = jnp.array([0.1, 0.2, 0.3, 0.4, 0.0])
    assert stages.graded_weights("reliability", g, w_paper, label) is w_paper
    # max(-g, 0) = [1, 3, 0, 2, 0]; classes 0 and 1 endorsed: 1/2 each, class 2 nothing.
    for name in ("reliability_classes", "excess_loss"):
        np.testing.assert_allclose(
            stages.graded_weights(name, g, w_paper, label), [1 / 8, 3 / 8, 0, 1 / 2, 0], rtol=1e-6
        )


@pytest.mark.parametrize(
    "losses,val_losses,expected",
    [
        ([1.0, 2.0], [1.0, 1.0], 0.5),  # 1.5 / 1 - 1
        ([3.0, 3.0], [1.0, 1.0], 1.0),  # 2, clipped
        ([0.5, 0.5], [1.0, 1.0], 0.0),  # below the clean loss, clipped
        ([1.0, 1.0], [0.0, 0.0], 0.0),  # no clean loss
    ],
)
def test_excess_share_by_hand(losses, val_losses, expected):
    assert float(stages.excess_share(jnp.array(losses), jnp.array(val_losses))) == expected


def test_split_half_reliability_by_hand():
    # Centred [-1, 0, 1] and [-1, 1, 0]: r = 1 / 2, Spearman-Brown 2 r / (1 + r) = 2/3.
    rho = stages.split_half_reliability(jnp.array([1.0, 2.0, 3.0]), jnp.array([1.0, 3.0, 2.0]))
    np.testing.assert_allclose(rho, 2 / 3, rtol=1e-6)


def test_even_rows_halves_the_clean_batch_or_refuses_an_odd_one():
    val = {"x": jnp.arange(8.0).reshape(4, 2), "label": jnp.array([0, 1, 2, 3])}
    half = stages.even_rows(val)
    np.testing.assert_array_equal(half["label"], [0, 2])
    np.testing.assert_array_equal(half["x"], [[0, 1], [4, 5]])
    with pytest.raises(ValueError, match="even, got \\[3\\]"):
        stages.even_rows(jax.tree.map(lambda x: x[:3], val))


# --- warm-up ---


def test_warm_up_is_uniform_before_its_last_step():
    w = jnp.array([0.7, 0.3])
    np.testing.assert_array_equal(stages.warm_up(w, jnp.int32(1), 2, 2), [0.5, 0.5])
    np.testing.assert_array_equal(stages.warm_up(w, jnp.int32(2), 2, 2), w)


# --- the stages across programs ---


def test_stages_on_two_programs_equal_one():
    """Each stage that looks across the batch sees the global batch under shard_map."""
    rng = np.random.default_rng(0)
    g = jnp.asarray(rng.normal(size=8), jnp.float32)
    label = jnp.array([0, 1, 1, 2, 0, 1, 2, 2], jnp.int32)
    index = jnp.array([5, 1, 7, 3, 0, 6, 2, 4], jnp.int32)
    losses, val_losses = jnp.asarray(rng.uniform(size=8), jnp.float32), jnp.array([0.4, 0.6])
    state = stages.init_memory(8)

    def chain(g, label, index, losses, state, axis_name):
        s, state = stages.score(g, state, index, 0.5, axis_name)
        wt = stages.weight_map(s, "capped", axis_name)
        out = [
            stages.normalize(wt, label, name, axis_name)
            for name in ("batch", "class", "class_balanced", "endorsed_classes")
        ]
        scalars = jnp.stack(
            [
                stages.excess_share(losses, val_losses, axis_name),
                stages.split_half_reliability(g, wt, axis_name),
            ]
        )
        return jnp.stack(out, axis=1), scalars, state

    expected = chain(g, label, index, losses, state, None)
    mesh = Mesh(np.array(jax.devices()[:2]), (AXIS,))
    sharded = jax.jit(
        jax.shard_map(
            lambda *a: chain(*a, AXIS),
            mesh=mesh,
            in_specs=(P(AXIS), P(AXIS), P(AXIS), P(AXIS), P()),
            out_specs=(P(AXIS), P(), P()),
        )
    )
    got = sharded(g, label, index, losses, state)
    for a, b in zip(jax.tree.leaves(got), jax.tree.leaves(expected)):
        np.testing.assert_allclose(a, b, rtol=1e-6, atol=1e-7)


# --- l2rw as their chain ---


def test_l2rw_is_the_chain_of_its_stages():
    """Every stage switched on (memory, capped map, loss gate, class normalisation, the
    excess-loss mix, warm-up, last-layer meta-gradient): the scheme's weights, state and
    metrics are the stages applied one after another, to the bit."""
    rng = np.random.default_rng(0)
    params = {
        "body": {"w": jnp.asarray(rng.normal(size=(5, 4)), jnp.float32)},
        "head": {"w": jnp.asarray(rng.normal(size=(4, 3)), jnp.float32)},
    }
    tx = optax.sgd(0.1, momentum=0.9)
    opt_state = tx.update(jax.tree.map(jnp.ones_like, params), tx.init(params), params)[1]

    def loss_fn(p, b):
        logits = jnp.tanh(b["x"] @ p["body"]["w"]) @ p["head"]["w"]
        return optax.softmax_cross_entropy_with_integer_labels(logits, b["label"])

    batch = {
        "x": jnp.asarray(rng.normal(size=(8, 5)), jnp.float32),
        "label": jnp.asarray(rng.integers(0, 3, 8), jnp.int32),
        "index": jnp.array([3, 0, 7, 1, 9, 4, 2, 8], jnp.int32),
    }
    val_x = jnp.asarray(rng.normal(size=(6, 5)), jnp.float32)
    # The model's own prediction on 4 of the 6 clean rows: a clean loss below the training
    # loss, so that the excess-loss share is strictly inside (0, 1).
    predicted = jnp.argmax(jnp.tanh(val_x @ params["body"]["w"]) @ params["head"]["w"], -1)
    val = {
        "x": val_x,
        "label": jnp.where(jnp.arange(6) < 4, predicted, jnp.asarray(rng.integers(0, 3, 6))).astype(
            jnp.int32
        ),
    }
    options = dict(
        memory_decay=0.5,
        weight_map="capped",
        loss_quantile=0.9,
        normalize="class",
        mix="excess_loss",
        warmup_steps=1,
        meta_params="last",
    )
    scheme = methods.l2rw(**options)
    state = scheme.init(jax.random.PRNGKey(0), [4, 3, 3])
    ctx = methods.WeighContext(
        loss_fn=loss_fn,
        params=params,
        opt_state=opt_state,
        tx=tx,
        batch=batch,
        val_batch=val,
        rng=jax.random.PRNGKey(0),
        step=jnp.int32(1),
    )
    w, new_state, metrics = scheme.weigh(ctx, state)

    head_only = stages.moving_only(loss_fn, "last")
    mw = reweight.meta_weights(head_only, params, opt_state, tx, batch, val, val_loss_fn=head_only)
    s, state_ref = stages.score(mw.g, state, batch["index"], 0.5)
    losses, val_losses = loss_fn(params, batch), loss_fn(params, val)
    gate = stages.loss_gate(losses, val_losses, 0.9)
    assert 0 < float(jnp.sum(gate)) < 8  # the gate closes on some examples here
    w_options = stages.normalize(stages.weight_map(s, "capped") * gate, batch["label"], "class")
    share = stages.excess_share(losses, val_losses)
    assert 0 < float(share) < 1
    w_ref = stages.mix(
        w_options, stages.graded_weights("excess_loss", mw.g, mw.w, batch["label"]), share
    )
    np.testing.assert_array_equal(w, w_ref)
    np.testing.assert_array_equal(new_state.memory_N, state_ref.memory_N)
    np.testing.assert_array_equal(new_state.seen_N, state_ref.seen_N)
    assert sorted(metrics) == ["excess_loss_share", "g_B", "val_loss"]
    np.testing.assert_array_equal(metrics["g_B"], mw.g)
    np.testing.assert_array_equal(metrics["excess_loss_share"], share)
    # Before the warm-up's end the chain's weights give way to 1 / B.
    w0, _, _ = scheme.weigh(ctx._replace(step=jnp.int32(0)), state)
    np.testing.assert_array_equal(w0, np.full(8, 1 / 8, np.float32))
