"""Attack properties: exact on a linear model, invariants on a small trained net."""

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from sklearn.datasets import load_digits

from l2rw_jax.audit import attacks
from l2rw_jax.audit import common
from l2rw_jax.audit import criticism

EPS = (0.0, 0.05, 0.1, 0.2, 0.3)


# ------------------------------------------------------------------ a linear model: exact answers
def _linear_apply(params, model_state, x, train):
    return x.reshape(x.shape[0], -1) @ params["w"] + params["b"][None, :], model_state


@pytest.fixture(scope="module")
def linear():
    rng = np.random.default_rng(0)
    d = 4 * 4 * 3
    params = {"w": rng.normal(size=(d, 2)).astype(np.float32) * 0.3, "b": np.zeros(2, np.float32)}
    x_raw = rng.uniform(0.4, 0.6, size=(64, 4, 4, 3)).astype(np.float32)
    logits = np.asarray(_linear_apply(params, {}, x_raw, False)[0], np.float64)
    y = logits.argmax(1)
    dw = params["w"][:, 0] - params["w"][:, 1]
    margin = np.abs(logits[:, 0] - logits[:, 1])
    # The L-inf-optimal attack on a linear model moves every pixel by eps against the margin:
    # the margin falls by eps * ||w_y - w_o||_1, so the minimal eps is margin / ||w_y - w_o||_1.
    true_eps = margin / np.abs(dw).sum()
    assert true_eps.max() < 0.4  # the [0, 1] box never binds: pixels start in [0.4, 0.6]
    return params, x_raw, y, true_eps


def test_minimal_eps_matches_the_linear_closed_form(linear):
    params, x, y, true_eps = linear
    out = attacks.minimal_adversarial_epsilon(
        common.Model(_linear_apply, params, {}),
        x,
        y,
        attacks.AttackConfig(steps=3, random_start=False, batch_size=32),
        eps_max=0.5,
        bisection_steps=10,
        progress=False,
    )
    width = 0.5 / 2**10
    assert np.all(out["min_eps"] >= true_eps - 1e-5)
    assert np.all(out["min_eps"] <= true_eps + width + 1e-5)
    # The returned adversarial images are within min_eps and leave the class.
    assert np.all(np.abs(out["x_adv"] - x).reshape(64, -1).max(1) <= out["min_eps"] + 1e-6)
    pred_adv = np.asarray(_linear_apply(params, {}, out["x_adv"], False)[0]).argmax(1)
    assert np.all(pred_adv != y)


def test_epsilon_is_in_raw_pixels_under_per_channel_normalisation(linear):
    params, x_raw, y, true_eps = linear
    mean, std = np.array([0.2, 0.5, 0.7], np.float32), np.array([0.1, 0.3, 0.25], np.float32)
    x_norm = common.from_raw(x_raw, mean, std)

    def norm_apply(p, s, x, train):  # the same classifier, fed normalised images
        return _linear_apply(p, s, x * std.reshape(1, 1, 1, 3) + mean.reshape(1, 1, 1, 3), train)

    out = attacks.minimal_adversarial_epsilon(
        common.Model(norm_apply, params, {}),
        x_norm,
        y,
        attacks.AttackConfig(steps=3, random_start=False, mean=mean, std=std, batch_size=32),
        eps_max=0.5,
        bisection_steps=10,
        progress=False,
    )
    assert np.all(np.abs(out["min_eps"] - true_eps) <= 0.5 / 2**10 + 1e-5)


def test_linear_accuracy_curve_is_exact(linear):
    params, x, y, true_eps = linear
    curve = attacks.robust_accuracy_curve(
        common.Model(_linear_apply, params, {}),
        x,
        y,
        EPS,
        attacks.AttackConfig(steps=5, random_start=True, batch_size=32),
        progress=False,
    )
    for e, eps in enumerate(EPS):
        want = np.mean(true_eps > eps)  # no example sits within 1e-5 of these eps (checked below)
        assert not np.any(np.abs(true_eps - eps) < 1e-5)
        assert curve["fgsm_accuracy"][e] == want and curve["pgd_accuracy"][e] == want


# --------------------------------------------- confident logits: the cross-entropy attack stalled
# A 2-class linear model fed per-channel-normalised images, with its logits multiplied by 1, 30 and
# 300 (weights and bias scaled: the same predictions and the same exact adversarial examples). In
# raw pixels its logit difference is z_1 - z_0 = v . x_raw + c with v_i = (w_1 - w_0)_i / std_c(i),
# so without the [0, 1] box the smallest L-inf eps that flips the class is
#     t = |v . x_raw + c| / ||v||_1,
# reached by moving every pixel by t against sign(v) -- which is exactly the FGSM point, so FGSM
# and PGD are exact here: accuracy at eps = mean(t > eps), and bisection with eps_max / 2**n
# brackets returns the dyadic grid point just above t.
SCALES = (1.0, 30.0, 300.0)
ISSUE_EPS = (0.0, 0.05, 0.12, 0.2)
ISSUE_EPS_MAX, ISSUE_BISECTION = 0.5, 8
ISSUE_WIDTH = ISSUE_EPS_MAX / 2**ISSUE_BISECTION
ISSUE_MEAN = np.array([0.2, 0.5, 0.7], np.float32)
ISSUE_STD = np.array([0.1, 0.3, 0.25], np.float32)
FLIPPED = np.array([3, 10, 21, 32])  # reference labels flipped for the prototype test


@pytest.fixture(scope="module")
def confident():
    """The reported input: 40 images, exact minimal eps t <= 0.25, three of them above 0.12.

    Each image is x0 + beta * sign(v) with x0 in [0.45, 0.55]^48 and beta chosen so that t is the
    centre of a bisection bracket, (k + 1/2) * eps_max / 2**8 for distinct k, so the bisection
    has a unique right answer and no decision is within float32 rounding of a tie.
    """
    rng = np.random.default_rng(11)
    n, hwc = 40, (4, 4, 3)
    d = int(np.prod(hwc))
    std_D = np.tile(ISSUE_STD, 16).astype(np.float64)  # NHWC flattening: channel fastest
    mean_D = np.tile(ISSUE_MEAN, 16).astype(np.float64)
    w = (rng.normal(size=(d, 2)) * 0.02).astype(np.float32)
    b = np.array([0.1, -0.1], np.float32)
    k = np.concatenate([rng.choice(np.arange(2, 61), 37, replace=False), [70, 90, 120]])
    y = (np.arange(n) % 2).astype(np.int32)
    s = np.where(y == 1, 1.0, -1.0)
    v = (w[:, 1].astype(np.float64) - w[:, 0]) / std_D
    c = float(b[1] - b[0]) - np.sum((w[:, 1].astype(np.float64) - w[:, 0]) * mean_D / std_D)
    x0 = rng.uniform(0.45, 0.55, size=(n, d))
    beta = (s * (k + 0.5) * ISSUE_WIDTH * np.abs(v).sum() - (x0 @ v + c)) / np.abs(v).sum()
    x_raw = (x0 + beta[:, None] * np.sign(v)[None, :]).reshape(n, *hwc).astype(np.float32)
    x_norm = common.from_raw(x_raw, ISSUE_MEAN, ISSUE_STD)
    y_ref = y.copy()
    y_ref[FLIPPED] = 1 - y_ref[FLIPPED]

    per_scale = {}
    for scale in SCALES:
        params = {"w": w * np.float32(scale), "b": b * np.float32(scale)}
        # The closed form, in float64 from the float32 parameters and images the attack sees.
        w64, b64 = params["w"].astype(np.float64), params["b"].astype(np.float64)
        v_s = (w64[:, 1] - w64[:, 0]) / std_D
        c_s = (b64[1] - b64[0]) - np.sum((w64[:, 1] - w64[:, 0]) * mean_D / std_D)
        diff = x_raw.reshape(n, d).astype(np.float64) @ v_s + c_s
        logits = np.asarray(_linear_apply(params, {}, x_norm, False)[0], np.float64)
        assert np.all(logits.argmax(1) == y)
        # The audit's defaults: 10 steps of eps / 4 from a random start, the margin objective.
        curve = attacks.robust_accuracy_curve(
            common.Model(_linear_apply, params, {}),
            x_norm,
            y,
            ISSUE_EPS,
            attacks.AttackConfig(mean=ISSUE_MEAN, std=ISSUE_STD, seed=1, batch_size=64),
            progress=False,
        )
        me = attacks.minimal_adversarial_epsilon(
            common.Model(_linear_apply, params, {}),
            x_norm,
            y_ref,
            attacks.AttackConfig(mean=ISSUE_MEAN, std=ISSUE_STD, seed=2, batch_size=64),
            eps_max=ISSUE_EPS_MAX,
            bisection_steps=ISSUE_BISECTION,
            progress=False,
        )
        margin_ref = logits[np.arange(n), y_ref] - logits[np.arange(n), 1 - y_ref]
        per_scale[scale] = {
            "t": np.abs(diff) / np.abs(v_s).sum(),
            "median_margin": float(np.median(np.abs(diff))),
            "curve": curve,
            "me": me,
            "margin_ref": margin_ref,
        }
    # The [0, 1] box never binds below t: moving every pixel by t against the margin stays inside.
    direction = -np.where(y == 1, 1.0, -1.0)[:, None] * np.sign(v)[None, :]
    room = np.where(direction > 0, 1.0 - x_raw.reshape(n, d), x_raw.reshape(n, d)).min(1)
    assert np.all(room > per_scale[1.0]["t"] + 0.1)
    return {"k": k, "x_raw": x_raw, "y": y, "y_ref": y_ref, "w": w, "b": b, **per_scale}


def test_confident_linear_model_is_exact_at_every_logit_scale(confident):
    # The reported numbers: at scale 300 (median |margin| ~113) the cross-entropy attacks gave
    # PGD accuracy 0.6 at eps 0.12 and 21 infinite minimal eps; the exact values follow.
    assert confident[30.0]["median_margin"] > 10 and confident[300.0]["median_margin"] > 100
    for scale in SCALES:
        t, curve, me = confident[scale]["t"], confident[scale]["curve"], confident[scale]["me"]
        # Each t is the centre of its bisection bracket (to float rounding of the construction).
        np.testing.assert_allclose(t, (confident["k"] + 0.5) * ISSUE_WIDTH, rtol=1e-4)
        for e, eps in enumerate(ISSUE_EPS):
            assert curve["pgd_accuracy"][e] == curve["fgsm_accuracy"][e] == np.mean(t > eps)
        assert curve["pgd_accuracy"][ISSUE_EPS.index(0.12)] == 3 / 40 == 0.075
        # Bisection returns the upper end of the bracket holding t; 0 where the reference label
        # is already not the prediction; never inf (every t is below eps_max).
        want = np.where(np.isin(np.arange(40), FLIPPED), 0.0, (confident["k"] + 1) * ISSUE_WIDTH)
        np.testing.assert_array_equal(me["min_eps"], want)


def test_attacks_do_not_depend_on_the_logit_scale(confident):
    # sign(grad margin) is the same at every positive scale, so the iterates, the fooling images
    # and every decision are bit-identical (no decision here sits within rounding of a tie).
    base = confident[1.0]
    for scale in SCALES[1:]:
        other = confident[scale]
        for key in ("pgd_correct_NxE", "fgsm_correct_NxE"):
            np.testing.assert_array_equal(other["curve"][key], base["curve"][key])
        np.testing.assert_array_equal(other["me"]["min_eps"], base["me"]["min_eps"])
        np.testing.assert_array_equal(other["me"]["x_adv"], base["me"]["x_adv"])


def test_robustness_prototypes_do_not_depend_on_the_logit_scale(confident):
    # The flipped examples all have min eps 0 and are ordered by their (negative) clean margin,
    # the rest by min eps: the expected order follows from the closed form at any scale.
    t_ref = np.where(np.isin(np.arange(40), FLIPPED), 0.0, confident[1.0]["t"])
    want = criticism.robustness_prototypes(t_ref, confident[1.0]["margin_ref"], 8, 8)
    assert set(want["criticisms"][:4]) == set(FLIPPED)
    for scale in SCALES:
        got = criticism.robustness_prototypes(
            confident[scale]["me"]["min_eps"], confident[scale]["margin_ref"], 8, 8
        )
        np.testing.assert_array_equal(got["prototypes"], want["prototypes"])
        np.testing.assert_array_equal(got["criticisms"], want["criticisms"])


def test_cross_entropy_objective_stalls_on_confident_logits(confident):
    # The option kept for comparison reproduces the issue: exact at scale 1 (margins < 2), but at
    # scale 300 its float32 gradient has vanished and the minimal eps of confidently classified
    # examples come back too large or infinite (not found up to eps_max = 0.5, though all
    # t <= 0.25).
    x_norm = common.from_raw(confident["x_raw"], ISSUE_MEAN, ISSUE_STD)
    for scale, exact in ((1.0, True), (300.0, False)):
        assert (np.abs(confident[scale]["margin_ref"]).max() < 2) == exact
        params = {"w": confident["w"] * np.float32(scale), "b": confident["b"] * np.float32(scale)}
        me = attacks.minimal_adversarial_epsilon(
            common.Model(_linear_apply, params, {}),
            x_norm,
            confident["y_ref"],
            attacks.AttackConfig(
                mean=ISSUE_MEAN, std=ISSUE_STD, objective="cross_entropy", seed=2, batch_size=64
            ),
            eps_max=ISSUE_EPS_MAX,
            bisection_steps=ISSUE_BISECTION,
            progress=False,
        )  # one more compiled function (the objective is a static argument)
        right = me["min_eps"] == confident[scale]["me"]["min_eps"]
        assert right.all() == exact
        if not exact:
            assert np.all(me["min_eps"][~right] > confident[scale]["me"]["min_eps"][~right])
            assert np.isinf(me["min_eps"]).sum() >= 10


def test_margin_loss_hand_values():
    logits = jnp.array([[1.0, 3.0, 2.0], [1.0, 3.0, 2.0], [5.0, 5.0, 0.0]])
    got = attacks.margin_loss(logits, jnp.array([0, 1, 0]))
    np.testing.assert_array_equal(np.asarray(got), [2.0, -1.0, 0.0])


# ------------------------------------------------------------------ a small trained MLP on digits
def _mlp_apply(params, model_state, x, train):
    h = jax.nn.relu(x.reshape(x.shape[0], -1) @ params["w1"] + params["b1"][None, :])
    return h @ params["w2"] + params["b2"][None, :], model_state


@pytest.fixture(scope="module")
def mlp():
    d = load_digits()
    x = (d.images / 16.0).astype(np.float32)[..., None]
    y = d.target.astype(np.int32)
    rng = np.random.default_rng(0)
    k1, k2 = jax.random.split(jax.random.key(0))
    params = {
        "w1": jax.random.normal(k1, (64, 32)) * 0.2,
        "b1": jnp.zeros(32),
        "w2": jax.random.normal(k2, (32, 10)) * 0.2,
        "b2": jnp.zeros(10),
    }
    tx = optax.adam(1e-2)
    opt = tx.init(params)

    @jax.jit
    def step(params, opt, xb, yb):
        loss = lambda p: optax.softmax_cross_entropy_with_integer_labels(
            _mlp_apply(p, {}, xb, True)[0], yb
        ).mean()
        g = jax.grad(loss)(params)
        u, opt = tx.update(g, opt, params)
        return optax.apply_updates(params, u), opt

    for _ in range(200):
        idx = rng.choice(1500, 128)
        params, opt = step(params, opt, x[idx], y[idx])
    return params, x[1500:1756], y[1500:1756]


@pytest.fixture(scope="module")
def mlp_curve(mlp):
    params, x, y = mlp
    return attacks.robust_accuracy_curve(
        common.Model(_mlp_apply, params, {}),
        x,
        y,
        EPS,
        attacks.AttackConfig(steps=10, step_size=0.25, random_start=True, seed=3, batch_size=128),
        progress=False,
    )


def test_eps_zero_gives_clean_accuracy(mlp, mlp_curve):
    params, x, y = mlp
    clean = np.mean(common.predict_logits(_mlp_apply, params, {}, x).argmax(1) == y)
    assert clean > 0.85  # the model learned something, so the curve has room to fall
    assert mlp_curve["clean_accuracy"] == clean
    assert mlp_curve["fgsm_accuracy"][0] == clean and mlp_curve["pgd_accuracy"][0] == clean


def test_accuracy_never_rises_with_eps(mlp_curve):
    for name in ("fgsm", "pgd"):
        assert np.all(np.diff(mlp_curve[f"{name}_accuracy"]) <= 0)
        ok = mlp_curve[f"{name}_correct_NxE"]
        assert np.all(
            ok[:, 1:] <= ok[:, :-1]
        )  # per example: robust at eps_k => robust at eps_(k-1)


def test_pgd_never_weaker_than_fgsm_on_the_same_examples(mlp_curve):
    pgd, fgsm = mlp_curve["pgd_correct_NxE"], mlp_curve["fgsm_correct_NxE"]
    assert np.all(pgd <= fgsm)  # elementwise: PGD-robust implies FGSM-robust
    assert np.all(np.asarray(mlp_curve["pgd_accuracy"]) <= np.asarray(mlp_curve["fgsm_accuracy"]))
    # The iterations do work: somewhere PGD finds adversarials FGSM misses.
    assert np.any(np.asarray(mlp_curve["pgd_accuracy"]) < np.asarray(mlp_curve["fgsm_accuracy"]))


def test_pgd_stays_in_the_ball_and_the_valid_range(mlp):
    params, x, y = mlp
    mean, std = np.array([0.3], np.float32), np.array([0.4], np.float32)
    x_n = common.from_raw(x[:128], mean, std)

    def norm_apply(p, s, xx, train):
        return _mlp_apply(p, s, xx * std[0] + mean[0], train)

    eps_B = np.linspace(0.0, 0.5, 128).astype(np.float32)
    out = attacks.attack_batch(
        common.Model(norm_apply, params, {}),
        attacks.AttackConfig(steps=10, step_size=0.25, random_start=True, mean=mean, std=std),
        x_n,
        y[:128],
        eps_B,
        jax.random.key(0),
    )
    x_adv_raw = np.asarray(out["x_adv"]) * std[0] + mean[0]
    assert x_adv_raw.min() >= -1e-6 and x_adv_raw.max() <= 1 + 1e-6
    assert np.all(np.abs(x_adv_raw - x[:128]).reshape(128, -1).max(1) <= eps_B + 1e-6)


def test_same_seed_same_numbers(mlp, mlp_curve):
    params, x, y = mlp
    again = attacks.robust_accuracy_curve(
        common.Model(_mlp_apply, params, {}),
        x,
        y,
        EPS,
        attacks.AttackConfig(steps=10, step_size=0.25, random_start=True, seed=3, batch_size=128),
        progress=False,
    )
    np.testing.assert_array_equal(again["pgd_correct_NxE"], mlp_curve["pgd_correct_NxE"])


@pytest.mark.parametrize("eps", [(0.1, 0.05), (-0.1, 0.2), ()])
def test_bad_epsilons_are_clear_errors(mlp, eps):
    params, x, y = mlp
    with pytest.raises(ValueError, match="ascending list"):
        attacks.robust_accuracy_curve(common.Model(_mlp_apply, params, {}), x, y, eps)


def test_bad_attack_settings_are_clear_errors(mlp):
    params, x, y = mlp
    model = common.Model(_mlp_apply, params, {})
    with pytest.raises(ValueError, match="eps_max must be > 0"):
        attacks.minimal_adversarial_epsilon(model, x, y, eps_max=0.0)
    with pytest.raises(ValueError, match="std must be positive"):
        attacks.robust_accuracy_curve(model, x, y, EPS, attacks.AttackConfig(std=0.0))
    with pytest.raises(ValueError, match="objective must be one of"):
        attacks.robust_accuracy_curve(model, x, y, EPS, attacks.AttackConfig(objective="ce"))
    # The bundles are checked: the old long argument list, or a dict of settings, is refused.
    with pytest.raises(TypeError, match="model must be an l2rw_jax.audit.common.Model"):
        attacks.robust_accuracy_curve(_mlp_apply, params, {}, x, y)
    with pytest.raises(TypeError, match="attack must be an AttackConfig, got dict"):
        attacks.robust_accuracy_curve(model, x, y, EPS, {"steps": 1})
