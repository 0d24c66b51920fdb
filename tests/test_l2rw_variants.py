"""The robust L2RW options of methods.l2rw: per-example meta-gradient memory, sign weights,
class-aware normalisation, warm-up; their mechanics on hand-checkable problems."""

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from jax.sharding import Mesh, PartitionSpec as P

from l2rw_jax import methods, reweight

N, B, M, C = 12, 8, 4, 3
AXIS = "data"


@pytest.fixture(scope="module")
def problem():
    """A linear softmax model one momentum step in, a batch of rows ``index`` of N, a clean
    batch."""
    rng = np.random.default_rng(0)
    params = {
        "w": jnp.asarray(rng.normal(size=(5, C)), jnp.float32),
        "b": jnp.zeros(C, jnp.float32),
    }
    tx = optax.sgd(0.1, momentum=0.9)
    opt_state = tx.update(jax.tree.map(jnp.ones_like, params), tx.init(params), params)[1]

    def batch(rows, seed):
        r = np.random.default_rng(seed)
        return {
            "x": jnp.asarray(r.normal(size=(len(rows), 5)), jnp.float32),
            "label": jnp.asarray(r.integers(0, C, len(rows)), jnp.int32),
            "index": jnp.asarray(rows, jnp.int32),
        }

    val = {k: v for k, v in batch(range(M), 99).items() if k != "index"}

    def loss_fn(p, b):
        return optax.softmax_cross_entropy_with_integer_labels(
            b["x"] @ p["w"] + p["b"][None, :], b["label"]
        )

    return dict(
        params=params,
        tx=tx,
        opt_state=opt_state,
        val=val,
        loss_fn=loss_fn,
        batch1=batch(range(0, 8), 1),
        batch2=batch([4, 5, 6, 7, 8, 9, 10, 11], 2),
    )


def _ctx(prob, batch, step=0):
    return methods.WeighContext(
        loss_fn=prob["loss_fn"],
        params=prob["params"],
        opt_state=prob["opt_state"],
        tx=prob["tx"],
        batch=batch,
        val_batch=prob["val"],
        rng=jax.random.PRNGKey(0),
        step=jnp.int32(step),
    )


def _jitted(prob, scheme):
    """``(state, batch, step) -> (w_B, new_state, metrics)``, jitted."""
    return jax.jit(lambda state, batch, step: scheme.weigh(_ctx(prob, batch, step), state))


def _weigh_once(scheme, ctx):
    """``scheme.weigh`` from the state its ``init`` gives (N = 12 training rows)."""
    return scheme.weigh(ctx, scheme.init(jax.random.PRNGKey(0), [5, 4, 3]))


def _init(**options):
    return methods.l2rw(**options).init(jax.random.PRNGKey(0), [5, 4, 3])


def test_default_options_are_the_papers_algorithm(problem):
    w, state, metrics = _weigh_once(methods.get_scheme("l2rw"), _ctx(problem, problem["batch1"]))
    mw = reweight.meta_weights(
        problem["loss_fn"],
        problem["params"],
        problem["opt_state"],
        problem["tx"],
        problem["batch1"],
        problem["val"],
    )
    np.testing.assert_array_equal(w, mw.w)
    np.testing.assert_array_equal(metrics["g_B"], mw.g)
    assert type(state) is methods.EmptyState and type(_init()) is methods.EmptyState


def test_memory_is_an_ema_of_the_normalised_meta_gradient_keyed_by_index(problem):
    d = 0.75
    weigh = _jitted(problem, methods.get_scheme("l2rw", memory_decay=d, weight_map="clip"))
    state0 = _init(memory_decay=d)
    assert type(state0) is methods.L2RWState
    assert state0.memory_N.shape == (N,) and not bool(jnp.any(state0.seen_N))
    w1, state1, m1 = weigh(state0, problem["batch1"], 0)
    w2, state2, m2 = weigh(state1, problem["batch2"], 1)
    g1, g2 = np.asarray(m1["g_B"], np.float64), np.asarray(m2["g_B"], np.float64)
    gn1, gn2 = g1 / np.sqrt(np.mean(g1**2)), g2 / np.sqrt(np.mean(g2**2))
    expected = np.zeros(N)
    expected[0:8] = gn1
    expected[4:8] = d * gn1[4:8] + (1 - d) * gn2[0:4]  # rows seen twice
    expected[8:12] = gn2[4:8]  # first visit: the value itself
    assert type(state2) is methods.L2RWState
    np.testing.assert_allclose(state2.memory_N, expected, rtol=1e-5, atol=1e-7)
    np.testing.assert_array_equal(state2.seen_N, np.ones(N, bool))
    # The weights are the paper's map applied to the memory at the batch's rows.
    wt = np.maximum(-expected[4:12], 0.0)
    np.testing.assert_allclose(w2, wt / wt.sum(), rtol=1e-5, atol=1e-7)
    np.testing.assert_allclose(w1, np.maximum(-gn1, 0) / np.maximum(-gn1, 0).sum(), rtol=1e-5)


def test_class_normalisation_exact_values():
    label = jnp.array([0, 0, 0, 1, 1, 2, 2, 2], jnp.int32)
    wt = jnp.array([1.0, 3.0, 0.0, 0.0, 0.0, 2.0, 2.0, 4.0])
    # "class": class c keeps its batch share n_c / B; class 1 is all clipped -> uniform inside.
    w = methods._class_normalized(wt, label, "class", None)
    np.testing.assert_allclose(
        w,
        [3 / 8 * 0.25, 3 / 8 * 0.75, 0, 1 / 8, 1 / 8, 3 / 8 * 0.25, 3 / 8 * 0.25, 3 / 8 * 0.5],
        rtol=1e-6,
    )
    # "class_balanced": each of the 3 classes present gets 1/3.
    w = methods._class_normalized(wt, label, "class_balanced", None)
    np.testing.assert_allclose(w, [1 / 12, 0.25, 0, 1 / 6, 1 / 6, 1 / 12, 1 / 12, 1 / 6], rtol=1e-6)
    assert abs(float(jnp.sum(w)) - 1) < 1e-6
    # "endorsed_classes": the 2 classes with an endorsed example get 1/2 each, class 1 none.
    w = methods._class_normalized(wt, label, "endorsed_classes", None)
    np.testing.assert_allclose(w, [1 / 8, 3 / 8, 0, 0, 0, 1 / 8, 1 / 8, 1 / 4], rtol=1e-6)
    np.testing.assert_array_equal(
        methods._class_normalized(jnp.zeros(8), label, "endorsed_classes", None), np.zeros(8)
    )


@pytest.mark.parametrize("normalize", ["batch", "class", "class_balanced"])
def test_sign_map_weighs_every_endorsed_example_equally(problem, normalize):
    batch = problem["batch1"]
    w, _, m = _weigh_once(
        methods.get_scheme("l2rw", weight_map="sign", normalize=normalize), _ctx(problem, batch)
    )
    endorsed = np.asarray(m["g_B"]) < 0
    assert 0 < endorsed.sum() < B
    w = np.asarray(w)
    label = np.asarray(batch["label"])
    for c in np.unique(label):
        in_c = label == c
        kept = w[in_c & endorsed]
        if kept.size:  # equal weights on the endorsed, none on the others of the class
            np.testing.assert_allclose(kept, kept[0], rtol=1e-6)
            assert np.all(w[in_c & ~endorsed] == 0)
        if normalize == "class":
            np.testing.assert_allclose(w[in_c].sum(), in_c.sum() / B, rtol=1e-6)
        if normalize == "class_balanced":
            np.testing.assert_allclose(w[in_c].sum(), 1 / len(np.unique(label)), rtol=1e-6)
    if normalize == "batch":
        np.testing.assert_allclose(w[endorsed], 1 / endorsed.sum(), rtol=1e-6)


def test_warmup_gives_uniform_weights_before_step_w_and_reweights_from_it(problem):
    d, warmup = 0.5, 3
    weigh = _jitted(problem, methods.get_scheme("l2rw", memory_decay=d, warmup_steps=warmup))
    state = _init(memory_decay=d)
    w_before, state_before, _ = weigh(state, problem["batch1"], warmup - 1)
    w_at, state_at, _ = weigh(state, problem["batch1"], warmup)
    np.testing.assert_array_equal(w_before, np.full(B, 1 / B, np.float32))
    assert not np.allclose(w_at, 1 / B)
    np.testing.assert_allclose(np.sum(w_at), 1.0, rtol=1e-6)
    # The memory is filled during the warm-up too.
    np.testing.assert_array_equal(state_before.memory_N, state_at.memory_N)
    assert bool(jnp.all(state_before.seen_N[:8]))


@pytest.mark.parametrize(
    "options",
    [
        dict(memory_decay=1.0),
        dict(memory_decay=-0.1),
        dict(warmup_steps=-1),
        dict(warmup_steps=2.5),
        dict(weight_map="softmax"),
        dict(normalize="classes"),
        dict(meta_params="body"),
        dict(meta_params=()),
        dict(meta_params=("head", 0)),
        dict(loss_quantile=1.5),
    ],
)
def test_bad_options_raise(options):
    key = next(iter(options))
    with pytest.raises(ValueError, match=key):
        methods.get_scheme("l2rw", **options)


def test_memory_needs_class_counts_to_size_itself_and_its_state(problem):
    scheme = methods.get_scheme("l2rw", memory_decay=0.5)
    with pytest.raises(ValueError, match="class_counts_C"):
        scheme.init(jax.random.PRNGKey(0))
    with pytest.raises(ValueError, match="L2RWState"):
        scheme.weigh(_ctx(problem, problem["batch1"]), methods.EmptyState())


def test_variants_under_shard_map_equal_one_device(problem):
    """Memory, sign map and class normalisation over 4 devices: same weights and memory."""
    options = dict(memory_decay=0.5, weight_map="sign", normalize="class_balanced")
    scheme = methods.get_scheme("l2rw", **options)
    state = _init(memory_decay=0.5)
    expected = _jitted(problem, scheme)
    w_ref, state_ref, _ = expected(state, problem["batch1"], 0)
    w_ref2, state_ref2, _ = expected(state_ref, problem["batch2"], 1)

    def per_device(s, b, v):
        ctx = _ctx(problem, b)._replace(val_batch=v, axis_name=AXIS)
        return scheme.weigh(ctx, s)[:2]

    mesh = Mesh(np.array(jax.devices()[:4]), (AXIS,))
    sharded = jax.jit(
        jax.shard_map(
            per_device, mesh=mesh, in_specs=(P(), P(AXIS), P(AXIS)), out_specs=(P(AXIS), P())
        )
    )
    w1, s1 = sharded(state, problem["batch1"], problem["val"])
    w2, s2 = sharded(s1, problem["batch2"], problem["val"])
    assert type(s2) is methods.L2RWState
    for a, b in ((w1, w_ref), (w2, w_ref2), (s2.memory_N, state_ref2.memory_N)):
        np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6)
    np.testing.assert_array_equal(s2.seen_N, state_ref2.seen_N)


@pytest.mark.parametrize("mode", ["forward", "reverse"])
def test_last_layer_meta_gradient_is_the_meta_gradient_of_the_head_on_fixed_features(mode):
    """meta_params="last" on an MLP equals L2RW on the output layer alone, fed the hidden
    features as constant inputs (plain SGD: the look-ahead leaves the body where it is)."""
    from l2rw_jax import model_factory, models

    module = model_factory.create_model("mlp", C, hidden=(6,))
    params, _ = models.init_model(module, jax.random.key(0), (1, 5))
    apply_fn = models.make_apply_fn(module)
    rng = np.random.default_rng(1)
    batch = {
        "image": jnp.asarray(rng.normal(size=(B, 5)), jnp.float32),
        "label": jnp.asarray(rng.integers(0, C, B), jnp.int32),
    }
    val = {
        "image": jnp.asarray(rng.normal(size=(M, 5)), jnp.float32),
        "label": jnp.asarray(rng.integers(0, C, M), jnp.int32),
    }
    tx = optax.sgd(0.3)

    def loss_fn(p, b):
        return optax.softmax_cross_entropy_with_integer_labels(
            apply_fn(p, {}, b["image"], True)[0], b["label"]
        )

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
    _, _, metrics = methods.l2rw(mode, meta_params="last").weigh(ctx, methods.EmptyState())
    assert sorted(params) == ["Dense_0", "head"]
    hidden = lambda x: jax.nn.relu(
        x @ params["Dense_0"]["kernel"] + params["Dense_0"]["bias"][None, :]
    )
    head = {"kernel": params["head"]["kernel"], "bias": params["head"]["bias"]}

    def head_loss(hp, b):
        logits = b["h"] @ hp["kernel"] + hp["bias"][None, :]
        return optax.softmax_cross_entropy_with_integer_labels(logits, b["label"])

    g_ref, _ = reweight.meta_gradient(
        head_loss,
        head,
        tx.init(head),
        tx,
        {"h": hidden(batch["image"]), "label": batch["label"]},
        {"h": hidden(val["image"]), "label": val["label"]},
        mode=mode,
    )
    np.testing.assert_allclose(metrics["g_B"], g_ref, rtol=1e-5, atol=1e-8)
    _, _, full = methods.l2rw(mode).weigh(ctx, methods.EmptyState())
    assert not np.allclose(full["g_B"], g_ref)  # the body's share of the full meta-gradient


def test_loss_gate_keeps_examples_below_the_clean_loss_quantile(problem):
    q = 0.5
    ctx = _ctx(problem, problem["batch1"])
    w, _, m = _weigh_once(methods.get_scheme("l2rw", weight_map="sign", loss_quantile=q), ctx)
    losses = np.asarray(problem["loss_fn"](problem["params"], problem["batch1"]))
    tau = np.quantile(np.asarray(problem["loss_fn"](problem["params"], problem["val"])), q)
    kept = (losses <= tau) & (np.asarray(m["g_B"]) < 0)
    assert 0 < kept.sum() < B and (losses > tau).any()
    np.testing.assert_allclose(w, kept / kept.sum(), rtol=1e-6)
    # q = 1 with a clean batch whose losses are all at least the training ones: no gating.
    w1, _, m1 = _weigh_once(
        methods.get_scheme("l2rw", weight_map="sign", loss_quantile=1.0),
        ctx._replace(val_batch={k: v for k, v in problem["batch1"].items() if k != "index"}),
    )
    endorsed = np.asarray(m1["g_B"]) < 0
    np.testing.assert_allclose(w1, endorsed / endorsed.sum(), rtol=1e-6)


def test_capped_map_caps_at_the_median_of_the_positive_scores():
    wt = jnp.array([0.0, 1.0, 2.0, 3.0, 5.0])  # positives 1, 2, 3, 5: median 2.5
    np.testing.assert_allclose(methods._capped(wt, None), [0, 1, 2, 2.5, 2.5], rtol=1e-6)
    np.testing.assert_array_equal(methods._capped(jnp.zeros(4), None), np.zeros(4))


def test_split_half_reliability_is_the_spearman_brown_correlation():
    rng = np.random.default_rng(0)
    a = rng.normal(size=64)
    assert float(methods.split_half_reliability(jnp.asarray(a), jnp.asarray(3 * a + 1))) == 1.0
    assert float(methods.split_half_reliability(jnp.asarray(a), jnp.asarray(-a))) == 0.0
    assert float(methods.split_half_reliability(jnp.asarray(a), jnp.ones(64))) == 0.0
    c = a + rng.normal(size=64)  # positively correlated with a
    r = np.corrcoef(a, c)[0, 1]
    assert 0 < r < 1
    np.testing.assert_allclose(
        methods.split_half_reliability(jnp.asarray(a), jnp.asarray(c)), 2 * r / (1 + r), rtol=1e-5
    )


def _val8():
    """8 clean rows whose odd rows are the even ones perturbed: halves that agree in part."""
    r = np.random.default_rng(7)
    x = np.repeat(r.normal(size=(4, 5)), 2, axis=0)
    x[1::2] += 0.7 * r.normal(size=(4, 5))
    return {
        "x": jnp.asarray(x, jnp.float32),
        "label": jnp.asarray(np.repeat(r.integers(0, C, 4), 2), jnp.int32),
    }


@pytest.mark.parametrize("mix", ["reliability", "reliability_classes"])
def test_reliability_mix_weighs_the_papers_weights_by_the_split_half_reliability(problem, mix):
    options = dict(weight_map="sign", normalize="class_balanced")
    val = _val8()
    ctx = _ctx(problem, problem["batch1"])._replace(val_batch=val)
    w, _, metrics = _weigh_once(methods.get_scheme("l2rw", mix=mix, **options), ctx)
    w_options = _weigh_once(methods.get_scheme("l2rw", **options), ctx)[0]
    args = (
        problem["loss_fn"],
        problem["params"],
        problem["opt_state"],
        problem["tx"],
        problem["batch1"],
    )
    mw = reweight.meta_weights(*args, val)
    # Each half's meta-gradient computed on its own: checks g^B = 2 g - g^A as well.
    g_even = reweight.meta_gradient(*args, jax.tree.map(lambda x: x[0::2], val))[0]
    g_odd = reweight.meta_gradient(*args, jax.tree.map(lambda x: x[1::2], val))[0]
    np.testing.assert_allclose((g_even + g_odd) / 2, mw.g, rtol=1e-5, atol=1e-7)
    rho = methods.split_half_reliability(g_even, g_odd)
    assert 0 < float(rho) < 1  # a real mixture on this problem
    np.testing.assert_allclose(metrics["reliability"], rho, rtol=1e-4)
    w_graded = mw.w  # the paper's map, normalised over the batch or per endorsed class
    if mix == "reliability_classes":
        w_graded = methods._class_normalized(
            jnp.maximum(-mw.g, 0), problem["batch1"]["label"], "endorsed_classes", None
        )
        assert not np.allclose(w_graded, mw.w)
    np.testing.assert_allclose(w, rho * w_graded + (1 - rho) * w_options, rtol=1e-4, atol=1e-7)
    np.testing.assert_allclose(np.sum(w), 1.0, rtol=1e-6)


def test_reliability_mix_needs_an_even_clean_batch(problem):
    scheme = methods.get_scheme("l2rw", mix="reliability", weight_map="sign")
    odd = jax.tree.map(lambda x: x[:3], problem["val"])
    with pytest.raises(ValueError, match="even, got \\[3\\]"):
        _weigh_once(scheme, _ctx(problem, problem["batch1"])._replace(val_batch=odd))
    with pytest.raises(ValueError, match="mix"):
        methods.get_scheme("l2rw", mix="softmax")


def test_excess_loss_share_is_the_relative_excess_of_the_training_loss(problem):
    train_loss = float(np.mean(problem["loss_fn"](problem["params"], problem["batch1"])))
    clean_loss = float(np.mean(problem["loss_fn"](problem["params"], problem["val"])))
    ctx = _ctx(problem, problem["batch1"])
    expected = min(max(train_loss / clean_loss - 1, 0.0), 1.0)
    assert 0 < expected < 1  # neither clip is active on this problem
    np.testing.assert_allclose(
        methods.excess_loss_share(problem["loss_fn"], problem["loss_fn"], ctx), expected, rtol=1e-5
    )
    # The clean batch as the training batch: no excess. Logits scaled up: the relative excess
    # grows past 1 and is clipped; scaled to 0, both losses are log C: 0.
    same = ctx._replace(batch=dict(problem["val"], index=jnp.arange(M)))
    assert float(methods.excess_loss_share(problem["loss_fn"], problem["loss_fn"], same)) == 0
    big = ctx._replace(params=jax.tree.map(lambda x: 50 * x, problem["params"]))
    assert float(methods.excess_loss_share(problem["loss_fn"], problem["loss_fn"], big)) == 1
    flat = ctx._replace(params=jax.tree.map(jnp.zeros_like, problem["params"]))
    assert float(methods.excess_loss_share(problem["loss_fn"], problem["loss_fn"], flat)) == 0


def test_excess_loss_mix_weighs_the_graded_weights_by_the_excess(problem):
    options = dict(weight_map="sign", normalize="class_balanced")
    ctx = _ctx(problem, problem["batch1"])
    w, _, metrics = _weigh_once(methods.get_scheme("l2rw", mix="excess_loss", **options), ctx)
    w_options = _weigh_once(methods.get_scheme("l2rw", **options), ctx)[0]
    share = methods.excess_loss_share(problem["loss_fn"], problem["loss_fn"], ctx)
    np.testing.assert_allclose(metrics["excess_loss_share"], share, rtol=1e-6)
    mw = reweight.meta_weights(
        problem["loss_fn"],
        problem["params"],
        problem["opt_state"],
        problem["tx"],
        problem["batch1"],
        problem["val"],
    )
    w_graded = methods._class_normalized(
        jnp.maximum(-mw.g, 0), problem["batch1"]["label"], "endorsed_classes", None
    )
    assert not np.allclose(w_graded, w_options)
    np.testing.assert_allclose(w, share * w_graded + (1 - share) * w_options, rtol=1e-4, atol=1e-7)
    np.testing.assert_allclose(np.sum(w), 1.0, rtol=1e-6)
    assert "reliability" not in metrics  # no second meta-gradient
    # An odd clean batch is fine: nothing is split.
    odd = jax.tree.map(lambda x: x[:3], problem["val"])
    _weigh_once(
        methods.get_scheme("l2rw", mix="excess_loss", **options), ctx._replace(val_batch=odd)
    )


@pytest.mark.parametrize(
    "mix,metric", [("reliability_classes", "reliability"), ("excess_loss", "excess_loss_share")]
)
def test_mixes_under_shard_map_equal_one_device(problem, mix, metric):
    """The even/odd split is the same on 4 programs (2 clean rows each) as on one; the losses
    of the excess are means over the global batches."""
    scheme = methods.get_scheme("l2rw", mix=mix, weight_map="sign", normalize="class_balanced")
    val = _val8()
    w_ref, _, m_ref = jax.jit(
        lambda b: scheme.weigh(_ctx(problem, b)._replace(val_batch=val), methods.EmptyState())
    )(problem["batch1"])

    def per_device(b, v):
        w, _, m = scheme.weigh(
            _ctx(problem, b)._replace(val_batch=v, axis_name=AXIS), methods.EmptyState()
        )
        return w, m[metric]

    mesh = Mesh(np.array(jax.devices()[:4]), (AXIS,))
    sharded = jax.jit(
        jax.shard_map(per_device, mesh=mesh, in_specs=(P(AXIS), P(AXIS)), out_specs=(P(AXIS), P()))
    )
    w, rho = sharded(problem["batch1"], val)
    np.testing.assert_allclose(rho, m_ref[metric], rtol=1e-5)
    np.testing.assert_allclose(w, w_ref, rtol=1e-5, atol=1e-6)
