"""Attack properties: exact on a linear model, invariants on a small trained net."""

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from sklearn.datasets import load_digits

from l2rw_jax.audit import attacks
from l2rw_jax.audit import common

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
        _linear_apply,
        params,
        {},
        x,
        y,
        eps_max=0.5,
        bisection_steps=10,
        steps=3,
        random_start=False,
        batch_size=32,
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
        norm_apply,
        params,
        {},
        x_norm,
        y,
        eps_max=0.5,
        bisection_steps=10,
        steps=3,
        random_start=False,
        mean=mean,
        std=std,
        batch_size=32,
        progress=False,
    )
    assert np.all(np.abs(out["min_eps"] - true_eps) <= 0.5 / 2**10 + 1e-5)


def test_linear_accuracy_curve_is_exact(linear):
    params, x, y, true_eps = linear
    curve = attacks.robust_accuracy_curve(
        _linear_apply,
        params,
        {},
        x,
        y,
        EPS,
        steps=5,
        random_start=True,
        batch_size=32,
        progress=False,
    )
    for e, eps in enumerate(EPS):
        want = np.mean(true_eps > eps)  # no example sits within 1e-5 of these eps (checked below)
        assert not np.any(np.abs(true_eps - eps) < 1e-5)
        assert curve["fgsm_accuracy"][e] == want and curve["pgd_accuracy"][e] == want


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
        _mlp_apply,
        params,
        {},
        x,
        y,
        EPS,
        steps=10,
        step_size=0.25,
        random_start=True,
        seed=3,
        batch_size=128,
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
        norm_apply, 10, True, params, {}, x_n, y[:128], eps_B, 0.25, mean, std, jax.random.key(0)
    )
    x_adv_raw = np.asarray(out["x_adv"]) * std[0] + mean[0]
    assert x_adv_raw.min() >= -1e-6 and x_adv_raw.max() <= 1 + 1e-6
    assert np.all(np.abs(x_adv_raw - x[:128]).reshape(128, -1).max(1) <= eps_B + 1e-6)


def test_same_seed_same_numbers(mlp, mlp_curve):
    params, x, y = mlp
    again = attacks.robust_accuracy_curve(
        _mlp_apply,
        params,
        {},
        x,
        y,
        EPS,
        steps=10,
        step_size=0.25,
        random_start=True,
        seed=3,
        batch_size=128,
        progress=False,
    )
    np.testing.assert_array_equal(again["pgd_correct_NxE"], mlp_curve["pgd_correct_NxE"])


@pytest.mark.parametrize("eps", [(0.1, 0.05), (-0.1, 0.2), ()])
def test_bad_epsilons_are_clear_errors(mlp, eps):
    params, x, y = mlp
    with pytest.raises(ValueError, match="ascending list"):
        attacks.robust_accuracy_curve(_mlp_apply, params, {}, x, y, eps)


def test_bad_attack_settings_are_clear_errors(mlp):
    params, x, y = mlp
    with pytest.raises(ValueError, match="eps_max must be > 0"):
        attacks.minimal_adversarial_epsilon(_mlp_apply, params, {}, x, y, eps_max=0.0)
    with pytest.raises(ValueError, match="std must be positive"):
        attacks.robust_accuracy_curve(_mlp_apply, params, {}, x, y, EPS, std=0.0)
