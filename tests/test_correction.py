"""Gold Loss Correction (l2rw_jax.correction): the corrected loss, the transition estimate from
the clean set, the estimation window, and the train step's objective, on hand-checkable problems."""

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from jax.sharding import Mesh, PartitionSpec as P

from l2rw_jax import correction, methods
from l2rw_jax import step as step_lib
from l2rw_jax.train_state import TrainState

B, M, C, D = 8, 4, 3, 5
AXIS = "data"


def test_forward_corrected_loss_is_the_hand_formula_and_the_cross_entropy_at_identity():
    z_BxC = jnp.array([[1.0, 2.0, 0.5], [0.1, -1.0, 3.0]])
    y_B = jnp.array([1, 2])
    T_CxC = jnp.array([[0.6, 0.3, 0.1], [0.2, 0.7, 0.1], [0.1, 0.1, 0.8]])
    p_BxC = np.asarray(jax.nn.softmax(z_BxC))
    hand_B = -np.log([p_BxC[0] @ np.asarray(T_CxC)[:, 1], p_BxC[1] @ np.asarray(T_CxC)[:, 2]])
    np.testing.assert_allclose(
        correction.forward_corrected_xent(z_BxC, y_B, T_CxC), hand_B, rtol=1e-6
    )
    np.testing.assert_allclose(
        correction.forward_corrected_xent(z_BxC, y_B, jnp.eye(C)),
        optax.softmax_cross_entropy_with_integer_labels(z_BxC, y_B),
        rtol=1e-5,
    )  # float32: log-sum-exp vs optax's log-softmax


def test_transition_estimate_recovers_a_known_T_within_its_standard_error():
    """Predictions that are one-hot draws of the observed label from T's row of the true class
    (a model that has learnt p(observed | x) exactly, sampled): every entry of the estimate
    within 4 standard errors of T (binomial, n = 3000 per class)."""
    T_CxC = np.array([[0.6, 0.4, 0.0], [0.0, 0.55, 0.45], [0.45, 0.0, 0.55]])  # pair flip 45%
    rng = np.random.default_rng(0)
    y_N = np.repeat(np.arange(C), 3000)
    noisy_N = np.array([rng.choice(C, p=T_CxC[y]) for y in y_N])
    onehot_y, onehot_noisy = np.eye(C)[y_N], np.eye(C)[noisy_N]
    T_hat = np.asarray(
        correction.transition_estimate(
            jnp.asarray(onehot_y.T @ onehot_noisy, jnp.float32),
            jnp.asarray(onehot_y.sum(0), jnp.float32),
        )
    )
    se = np.sqrt(T_CxC * (1 - T_CxC) / 3000)
    assert np.all(np.abs(T_hat - T_CxC) <= 4 * se + 1e-7)
    np.testing.assert_allclose(T_hat.sum(1), 1.0, rtol=1e-6)
    # A class the window never saw keeps the identity's row.
    T_hat = correction.transition_estimate(jnp.ones((C, C)), jnp.array([3.0, 0.0, 3.0]))
    np.testing.assert_allclose(T_hat[1], [0.0, 1.0, 0.0])


@pytest.fixture(scope="module")
def problem():
    """A linear softmax model, batches of B training rows and M clean rows."""
    rng = np.random.default_rng(0)
    params = {
        "w": jnp.asarray(rng.normal(size=(D, C)), jnp.float32),
        "b": jnp.zeros(C, jnp.float32),
    }

    def batch(n, seed, index=True):
        r = np.random.default_rng(seed)
        b = {
            "image": jnp.asarray(r.normal(size=(n, D)), jnp.float32),
            "label": jnp.asarray(r.integers(0, C, n), jnp.int32),
        }
        if index:
            b["index"] = jnp.arange(n, dtype=jnp.int32)
        return b

    def apply_fn(p, model_state, x, train, rng=None):
        del train, rng
        return x @ p["w"] + p["b"][None, :], model_state

    return dict(
        params=params,
        apply_fn=apply_fn,
        batch=batch(B, 1),
        val=batch(M, 2, index=False),
        val2=batch(M, 3, index=False),
    )


def _ctx(prob, step, val):
    def logits_fn(p, b):
        return prob["apply_fn"](p, {}, b["image"], True)[0]

    def loss_fn(p, b):
        return optax.softmax_cross_entropy_with_integer_labels(logits_fn(p, b), b["label"])

    tx = optax.sgd(0.1)
    return methods.WeighContext(
        loss_fn=loss_fn,
        params=prob["params"],
        opt_state=tx.init(prob["params"]),
        tx=tx,
        batch=prob["batch"],
        val_batch=val,
        rng=jax.random.PRNGKey(0),
        step=jnp.int32(step),
        val_loss_fn=loss_fn,
        val_logits_fn=logits_fn,
    )


def test_window_accumulates_the_clean_softmax_per_label_just_before_the_estimate(problem):
    """num_clean = 8, M = 4: a window of 2 steps, [E - 2, E) with E = 5. Before E the weights
    are ERM's and the correction is (I, 0); from E on the inner scheme's weights and (T^, s)."""
    inner = methods.get_scheme("random")
    scheme = correction.gold_correction(inner, estimate_steps=5, num_clean=8, num_train=24)
    state = scheme.init(jax.random.PRNGKey(0), np.array([8, 8, 8]))
    weigh = jax.jit(lambda s, t, v: scheme.weigh(_ctx(problem, t, v), s))
    expected_sum, expected_n = np.zeros((C, C)), np.zeros(C)
    for t, val in enumerate([problem["val"], problem["val2"]] * 3):
        T_CxC, share = scheme.correction(state, jnp.int32(t))
        w_B, state, metrics = weigh(state, t, val)
        if t < 5:
            np.testing.assert_allclose(w_B, np.full(B, 1 / B))
            np.testing.assert_array_equal(T_CxC, np.eye(C))
            assert float(share) == 0.0
        else:
            w_inner = inner.weigh(_ctx(problem, t, val), methods.EmptyState())[0]
            np.testing.assert_allclose(w_B, w_inner, rtol=1e-6)
            T_hat = expected_sum / expected_n[:, None]
            np.testing.assert_allclose(T_CxC, T_hat, rtol=1e-5)
            np.testing.assert_allclose(
                metrics["transition_diag"], np.mean(np.diag(T_hat)), rtol=1e-5
            )
            assert float(share) == pytest.approx(8 / 32)
        if t in (3, 4):  # the window
            p = np.asarray(jax.nn.softmax(val["image"] @ problem["params"]["w"]))
            onehot = np.eye(C)[np.asarray(val["label"])]
            expected_sum += onehot.T @ p
            expected_n += onehot.sum(0)
        np.testing.assert_allclose(state.confusion_sum_CxC, expected_sum, rtol=1e-5, atol=1e-7)
        np.testing.assert_allclose(state.count_C, expected_n)


def test_train_step_minimises_the_corrected_loss_plus_the_clean_share(problem):
    """After the estimate, one SGD step equals the gradient step of
    (1 - s) sum_i w_i l^T_i + s mean_j CE_j, computed by hand."""
    scheme = correction.gold_correction(
        methods.get_scheme("erm"), estimate_steps=1, num_clean=8, num_train=24
    )
    tx = optax.sgd(0.5)
    params = problem["params"]
    T_CxC = jnp.array([[0.6, 0.2, 0.2], [0.1, 0.8, 0.1], [0.3, 0.0, 0.7]])
    gold = correction.GoldCorrectionState(methods.EmptyState(), T_CxC * 4.0, jnp.full((C,), 4.0))
    state = TrainState(
        step=jnp.int32(1),
        params=params,
        model_state={},
        opt_state=tx.init(params),
        rng=jax.random.key(0),
        method_state=gold,
    )
    train_step = step_lib.make_train_step(problem["apply_fn"], tx, scheme)
    new_state, metrics = jax.jit(train_step)(state, problem["batch"], problem["val"])

    def objective(p):
        z = problem["batch"]["image"] @ p["w"] + p["b"][None, :]
        zv = problem["val"]["image"] @ p["w"] + p["b"][None, :]
        p_BxC = jax.nn.softmax(z)
        noisy_B = -jnp.log(jnp.sum(p_BxC * T_CxC[:, problem["batch"]["label"]].T, axis=1))
        clean_M = optax.softmax_cross_entropy_with_integer_labels(zv, problem["val"]["label"])
        return 0.75 * jnp.mean(noisy_B) + 0.25 * jnp.mean(clean_M)

    grads = jax.grad(objective)(params)
    expected = jax.tree.map(lambda p, g: p - 0.5 * g, params, grads)
    for k in params:
        np.testing.assert_allclose(new_state.params[k], expected[k], rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(metrics["weighted_loss"], objective(params), rtol=1e-5)
    np.testing.assert_allclose(new_state.method_state.confusion_sum_CxC, gold.confusion_sum_CxC)


@pytest.mark.parametrize(
    "wrap",
    [
        lambda inner: correction.gold_correction(inner, estimate_steps=1, num_clean=4, num_train=8),
        lambda inner: correction.plateau_gold_correction(
            inner, patience=4, num_clean=4, num_train=8
        ),
    ],
    ids=["gold", "plateau"],
)
def test_correction_under_shard_map_equals_one_device(problem, wrap):
    """The weights and every leaf of the new state: one device against two (the clean sums,
    counts and accuracy are psummed)."""
    scheme = wrap(methods.get_scheme("l2rw"))
    state = scheme.init(jax.random.PRNGKey(0), np.array([3, 3, 2]))
    w_ref, s_ref, _ = jax.jit(lambda s: scheme.weigh(_ctx(problem, 0, problem["val"]), s))(state)

    def per_device(s, b, v):
        ctx = _ctx(problem, 0, v)._replace(batch=b, axis_name=AXIS)
        return scheme.weigh(ctx, s)[:2]

    mesh = Mesh(np.array(jax.devices()[:2]), (AXIS,))
    sharded = jax.jit(
        jax.shard_map(
            per_device, mesh=mesh, in_specs=(P(), P(AXIS), P(AXIS)), out_specs=(P(AXIS), P())
        )
    )
    w, s = sharded(state, problem["batch"], problem["val"])
    np.testing.assert_allclose(w, w_ref, rtol=1e-5)
    for a, b in zip(jax.tree.leaves(s), jax.tree.leaves(s_ref)):
        np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-7)


@pytest.mark.parametrize(
    "kwargs, match",
    [
        (dict(estimate_steps=0, num_clean=4, num_train=8), "estimate_steps"),
        (dict(estimate_steps=2, num_clean=0, num_train=8), "num_clean"),
        (dict(estimate_steps=2, num_clean=4, num_train=True), "num_train"),
    ],
)
def test_bad_arguments_raise(kwargs, match):
    with pytest.raises(ValueError, match=match):
        correction.gold_correction(methods.get_scheme("erm"), **kwargs)


def test_clean_rows_are_every_kth_global_row_at_the_natural_rate_on_any_number_of_programs():
    """B = M = 100, 1000 clean vs 17000 training rows: m = round(100 / 17) = 6 rows at the
    natural rate, k = 100 // 6 = 16: global rows 0, 16, ..., 96 (7 rows), sliced on one
    program, masked on 2 or 4 (50 or 25 rows each, not multiples of 16), the same rows."""
    share = 1000 / 18000
    batch = {"label": jnp.zeros((100,), jnp.int32)}
    val = {"label": jnp.arange(100, dtype=jnp.int32)}
    rows, mask, count = step_lib.clean_rows(batch, val, share)
    np.testing.assert_array_equal(rows["label"], np.arange(0, 100, 16))
    assert count == 7 and float(mask.sum()) == 7

    def per_device(b, v):
        rows, mask, count = step_lib.clean_rows(b, v, share, AXIS)
        kept = jnp.sum(mask * (rows["label"] + 1))  # sum of (global row + 1) over the subset
        return jax.lax.psum(kept, AXIS), jnp.int32(count)

    for n in (2, 4):
        mesh = Mesh(np.array(jax.devices()[:n]), (AXIS,))
        total, count = jax.jit(
            jax.shard_map(per_device, mesh=mesh, in_specs=(P(AXIS), P(AXIS)), out_specs=(P(), P()))
        )(batch, val)
        assert int(count) == 7 and int(total) == sum(range(0, 100, 16)) + 7


def _val_with_accuracy(prob, hit_M):
    """The clean batch ``val`` with labels set so that the model's argmax is right exactly
    where ``hit_M`` is True (wrong ones get the next class)."""
    z = prob["val"]["image"] @ prob["params"]["w"]
    pred = np.argmax(np.asarray(z), axis=1)
    return dict(prob["val"], label=jnp.asarray(np.where(hit_M, pred, (pred + 1) % C), jnp.int32))


def test_plateau_correction_starts_after_patience_steps_without_a_new_best(problem):
    """patience 4: the accuracy EMA's time constant is 1 step (decay 0), so the EMA is the
    batch's accuracy. Accuracies 0.25, 0.5, 0.5, 0.5, 0.5, 0.5, ...: the best is set at
    step 1 and not beaten; at step 5 four steps have passed without a new best, so the state
    that step 5 returns has the correction on, and from step 6 the weights are the inner
    scheme's and (T^, s) the softmax sums of step 1's clean batch per label. Until then the
    weights are class-balanced plain ones: every observed class of the batch the same mass."""
    inner = methods.get_scheme("random")
    scheme = correction.plateau_gold_correction(inner, patience=4, num_clean=8, num_train=24)
    state = scheme.init(jax.random.PRNGKey(0), np.array([8, 8, 8]))
    weigh = jax.jit(lambda s, t, v: scheme.weigh(_ctx(problem, t, v), s))
    vals = [_val_with_accuracy(problem, np.arange(M) < 1)] + [
        _val_with_accuracy(problem, np.arange(M) < 2)
    ] * 8
    labels = np.asarray(problem["batch"]["label"])
    counts = {c: np.sum(labels == c) for c in set(labels.tolist())}
    balanced = np.array([1 / (len(counts) * counts[y]) for y in labels])
    p1 = np.asarray(jax.nn.softmax(vals[1]["image"] @ problem["params"]["w"]))
    onehot1 = np.eye(C)[np.asarray(vals[1]["label"])]
    n1 = onehot1.sum(0)
    T_hat = np.where(n1[:, None] > 0, (onehot1.T @ p1) / np.maximum(n1, 1)[:, None], np.eye(C))
    for t, val in enumerate(vals):
        T_CxC, share = scheme.correction(state, jnp.int32(t))
        w_B, state, metrics = weigh(state, t, val)
        assert bool(state.on) == (t >= 5), t
        if t <= 5:
            np.testing.assert_allclose(w_B, balanced, rtol=1e-6)
            np.testing.assert_array_equal(T_CxC, np.eye(C))
            assert float(share) == 0.0
        else:
            w_inner = inner.weigh(_ctx(problem, t, val), methods.EmptyState())[0]
            np.testing.assert_allclose(w_B, w_inner, rtol=1e-6)
            np.testing.assert_allclose(T_CxC, T_hat, rtol=1e-5, atol=1e-7)
            assert float(share) == pytest.approx(8 / 32)
        assert float(metrics["clean_acc_ema"]) == pytest.approx(0.25 if t == 0 else 0.5)


def test_plateau_correction_ema_and_snapshot_follow_the_hand_recursion(problem):
    """patience 8: time constant 2 steps (decay 1/2). The EMA, best, steps-since-best and
    the snapshot of the softmax-sum EMAs at the last new best, against the recursion in
    numpy; a run whose accuracy keeps rising is never corrected."""
    scheme = correction.plateau_gold_correction(
        methods.get_scheme("erm"), patience=8, num_clean=8, num_train=24
    )
    state = scheme.init(jax.random.PRNGKey(0), np.array([8, 8, 8]))
    weigh = jax.jit(lambda s, t, v: scheme.weigh(_ctx(problem, t, v), s))
    hits = [1, 2, 4, 3, 4, 2, 4, 4]  # correct rows of the M = 4 per step
    acc = best = 0.0
    conf, cnt = np.zeros((C, C)), np.zeros(C)
    since = 0
    for t, h in enumerate(hits):
        val = _val_with_accuracy(problem, np.arange(M) < h)
        _, state, _ = weigh(state, t, val)
        p = np.asarray(jax.nn.softmax(val["image"] @ problem["params"]["w"]))
        onehot = np.eye(C)[np.asarray(val["label"])]
        acc = 0.5 * acc + 0.5 * h / M
        conf, cnt = 0.5 * conf + 0.5 * onehot.T @ p, 0.5 * cnt + 0.5 * onehot.sum(0)
        if acc > best:
            best, since, conf_best, cnt_best = acc, 0, conf.copy(), cnt.copy()
        else:
            since += 1
        assert float(state.acc_ema) == pytest.approx(acc)
        assert float(state.best_acc) == pytest.approx(best)
        assert int(state.since_best) == since
        np.testing.assert_allclose(state.confusion_best_CxC, conf_best, rtol=1e-5, atol=1e-7)
        np.testing.assert_allclose(state.count_best_C, cnt_best, rtol=1e-6)
        assert not bool(state.on)


@pytest.mark.parametrize(
    "kwargs, match",
    [
        (dict(patience=0, num_clean=4, num_train=8), "patience"),
        (dict(patience=2, num_clean=0, num_train=8), "num_clean"),
    ],
)
def test_plateau_bad_arguments_raise(kwargs, match):
    with pytest.raises(ValueError, match=match):
        correction.plateau_gold_correction(methods.get_scheme("erm"), **kwargs)


def _initial_state(scheme, tx, params0, **init_kwargs):
    """Step 0's TrainState with ``scheme``'s initial state (3 classes of 8 examples)."""
    return TrainState(
        step=jnp.int32(0),
        params=jax.tree.map(jnp.copy, params0),
        model_state={},
        opt_state=tx.init(params0),
        rng=jax.random.key(0),
        method_state=scheme.init(jax.random.PRNGKey(0), np.array([8, 8, 8]), **init_kwargs),
    )


def test_plateau_state_trains_under_a_donating_jit(problem):
    """The initial state holds no buffer twice: a train step that donates its state runs."""
    from l2rw_jax import xla_options

    scheme = correction.plateau_gold_correction(
        methods.get_scheme("erm"), patience=2, num_clean=8, num_train=24
    )
    tx = optax.sgd(0.1)
    state = _initial_state(scheme, tx, problem["params"])
    train_step = xla_options.jit(
        step_lib.make_train_step(problem["apply_fn"], tx, scheme), donate_argnums=0
    )
    for _ in range(3):
        state, _ = train_step(state, problem["batch"], problem["val"])
    assert int(state.step) == 3


def test_rewind_sets_the_model_back_to_its_parameters_at_the_last_new_best(problem):
    """A train step with the rewinding plateau correction (patience 2): at every step the
    returned parameters are the plain update, except at the step where the trigger fires:
    there they are exactly the parameters the step saw at the last new best of the clean
    accuracy EMA before it (tracked here from the states). After it, no more rewinds."""
    scheme = correction.rewind_at_trigger(
        correction.plateau_gold_correction(
            methods.get_scheme("erm"), patience=2, num_clean=8, num_train=24
        )
    )
    tx = optax.sgd(0.5)
    plain = step_lib.make_train_step(
        problem["apply_fn"],
        tx,
        correction.plateau_gold_correction(
            methods.get_scheme("erm"), patience=2, num_clean=8, num_train=24
        ),
    )
    params = problem["params"]
    state = _initial_state(scheme, tx, params, params=params)
    train_step = jax.jit(step_lib.make_train_step(problem["apply_fn"], tx, scheme))
    plain_step = jax.jit(plain)
    best_params, fired = params, []
    for t in range(12):
        val = problem["val"] if t % 3 else problem["val2"]
        new, _ = train_step(state, problem["batch"], val)
        # The same step without the rewind (its state is the inner plateau state).
        ref, _ = plain_step(
            state._replace(method_state=state.method_state.inner), problem["batch"], val
        )
        rose = float(new.method_state.inner.best_acc) > float(state.method_state.inner.best_acc)
        if rose and not bool(state.method_state.inner.on):
            best_params = state.params
        now = bool(new.method_state.inner.on) and not bool(state.method_state.inner.on)
        expected = best_params if now else ref.params
        jax.tree.map(np.testing.assert_array_equal, new.params, expected)
        jax.tree.map(np.testing.assert_array_equal, new.method_state.params_best, best_params)
        fired.append(now)
        state = new
    assert sum(fired) == 1, fired


def test_rewind_needs_a_plateau_correction_and_the_initial_params(problem):
    with pytest.raises(ValueError, match="plateau_gold_correction"):
        correction.rewind_at_trigger(methods.get_scheme("erm"))
    gold = correction.gold_correction(
        methods.get_scheme("erm"), estimate_steps=2, num_clean=8, num_train=24
    )
    with pytest.raises(ValueError, match="GoldCorrectionState"):
        correction.rewind_at_trigger(gold).init(
            jax.random.PRNGKey(0), np.array([8, 8, 8]), params=problem["params"]
        )
    plateau = correction.plateau_gold_correction(
        methods.get_scheme("erm"), patience=2, num_clean=8, num_train=24
    )
    with pytest.raises(ValueError, match="needs params"):
        correction.rewind_at_trigger(plateau).init(jax.random.PRNGKey(0), np.array([8, 8, 8]))


def test_train_posterior_sums_are_the_posterior_against_the_observed_label(problem):
    """S[i, j] = sum_k p_k[i] [y~_k = j] and n[i] = sum_k p_k[i] on the training batch, by
    hand; S / n's rows sum to 1."""
    ctx = _ctx(problem, 0, problem["val"])
    S, n = correction.train_posterior_sums(ctx, C)
    p = np.asarray(jax.nn.softmax(problem["batch"]["image"] @ problem["params"]["w"]))
    y = np.asarray(problem["batch"]["label"])
    S_hand = np.array([[p[y == j, i].sum() for j in range(C)] for i in range(C)])
    np.testing.assert_allclose(S, S_hand, rtol=1e-5, atol=1e-7)
    np.testing.assert_allclose(n, p.sum(0), rtol=1e-5)
    np.testing.assert_allclose(correction.transition_estimate(S, n).sum(1), 1.0, rtol=1e-5)


@pytest.mark.parametrize("improves", [False, True])
def test_guard_takes_the_correction_back_when_no_new_best_follows_the_trigger(problem, improves):
    """patience 4 (the EMA is the batch's accuracy), guard 3. Accuracies 0.25, then 0.5: the
    trigger fires at step 5 (the rewind's first "now"). Steps 6, 7, 8 train corrected; with
    no new best among them, the state step 8 returns is reverted (the second "now") and from
    step 9 on the correction is (I, 0). If step 7's accuracy is 1 (a new best), nothing is
    taken back."""
    plateau = correction.plateau_gold_correction(
        methods.get_scheme("erm"), patience=4, num_clean=8, num_train=24
    )
    scheme = correction.rewind_at_trigger(plateau, guard=3)
    state = scheme.init(jax.random.PRNGKey(0), np.array([8, 8, 8]), params=problem["params"])
    weigh = jax.jit(lambda s, t, v: scheme.weigh(_ctx(problem, t, v), s))
    half, full = (_val_with_accuracy(problem, np.arange(M) < h) for h in (2, 4))
    vals = [_val_with_accuracy(problem, np.arange(M) < 1)] + [half] * 12
    if improves:
        vals[7] = full
    nows = []
    for t, val in enumerate(vals):
        T_CxC, share = scheme.correction(state, jnp.int32(t))
        _, new, metrics = weigh(state, t, val)
        nows.append(bool(scheme.rewind(state, new)[0]))
        reverted = not improves and t >= 9
        assert bool(new.reverted) == (not improves and t >= 8), t
        assert float(metrics["correction_reverted"]) == float(reverted), t
        if reverted:
            np.testing.assert_array_equal(T_CxC, np.eye(C))
            assert float(share) == 0.0
        elif t >= 6:
            assert float(share) == pytest.approx(8 / 32)
        state = new
    assert [t for t, now in enumerate(nows) if now] == ([5] if improves else [5, 8])


def test_guard_must_be_a_non_negative_integer():
    plateau = correction.plateau_gold_correction(
        methods.get_scheme("erm"), patience=4, num_clean=8, num_train=24
    )
    with pytest.raises(ValueError, match="guard must be an integer >= 0, got -1"):
        correction.rewind_at_trigger(plateau, guard=-1)
