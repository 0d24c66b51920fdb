"""Transition-matrix estimates: hand cases, recovery of a known T, cleanlab's confident joint."""

import numpy as np
import pytest

from l2rw_jax.audit import noise_estimate

C = 10


def uniform_T(r: float) -> np.ndarray:
    T = np.full((C, C), r / (C - 1))
    np.fill_diagonal(T, 1 - r)
    return T


def pair_T(r: float) -> np.ndarray:
    return (1 - r) * np.eye(C) + r * np.roll(np.eye(C), 1, axis=1)


def noisy_posterior(T, n_per_class, sigma, seed):
    """(probs, given, true): n_per_class examples of each true class, the given label drawn from
    T[true], and a "model trained on enough data": p(observed | x) = T[true(x)] plus Gaussian
    noise of std sigma, clipped at 1e-6 and renormalised."""
    rng = np.random.default_rng(seed)
    true = np.repeat(np.arange(C), n_per_class)
    u = rng.random(len(true))
    given = (u[:, None] > np.cumsum(T[true], axis=1)).sum(axis=1).clip(max=C - 1)
    p = np.maximum(T[true] + rng.normal(0.0, sigma, (len(true), C)), 1e-6)
    return p / p.sum(axis=1, keepdims=True), given, true


def empirical_T(given, true):
    counts = np.zeros((C, C))
    np.add.at(counts, (true, given), 1)
    return counts / counts.sum(axis=1, keepdims=True)


# ------------------------------------------------------------------ hand cases
def test_glc_transition_by_hand():
    p = np.array([[0.75, 0.25, 0.0], [0.25, 0.75, 0.0], [0.0, 0.5, 0.5], [0.5, 0.5, 0.0]])
    est = noise_estimate.glc_transition(p, np.array([0, 0, 1, 1]))
    # Row 0: mean of the two class-0 rows; row 1: of the two class-1 rows; class 2 unseen: NaN.
    np.testing.assert_allclose(est.T_CxC[:2], [[0.5, 0.5, 0.0], [0.25, 0.5, 0.25]], atol=1e-7)
    assert np.isnan(est.T_CxC[2]).all()
    assert est.count_C.tolist() == [2, 2, 0]


# t = (0.5, 0.5, 0.625). a: only p0 >= t0 -> (0, 0); d: p1 = 0.5 >= t1 -> (0, 1); b: p0 -> (1, 0);
# e: p1 -> (1, 1); c: p2 -> (2, 2); f: no class passes -> counted nowhere.
HAND_P = np.array(
    [
        [0.75, 0.125, 0.125],  # a, labelled 0
        [0.25, 0.5, 0.25],  # d, labelled 0
        [0.625, 0.25, 0.125],  # b, labelled 1
        [0.125, 0.75, 0.125],  # e, labelled 1
        [0.125, 0.125, 0.75],  # c, labelled 2
        [0.25, 0.25, 0.5],  # f, labelled 2
    ]
)
HAND_Y = np.array([0, 0, 1, 1, 2, 2])


def test_confident_joint_calibration_and_transition_by_hand():
    cj = noise_estimate.confident_joint(HAND_P, HAND_Y)
    assert cj.tolist() == [[1, 1, 0], [1, 1, 0], [0, 0, 1]]
    # Row 2 counted 1 of its 2 labelled examples: calibration scales it to the label count.
    cal = noise_estimate.calibrate_confident_joint(cj, HAND_Y)
    assert cal.tolist() == [[1, 1, 0], [1, 1, 0], [0, 0, 2]]
    np.testing.assert_array_equal(noise_estimate.estimate_joint(HAND_P, HAND_Y), cal / 6)
    est = noise_estimate.confident_transition(HAND_P, HAND_Y)
    # True class 0 is given 0 or 1 equally often (column 0 of the joint), likewise class 1.
    np.testing.assert_array_equal(est.T_CxC, [[0.5, 0.5, 0], [0.5, 0.5, 0], [0, 0, 1]])
    assert est.count_C.tolist() == [2, 2, 1]


def test_confident_transition_row_unknown_where_no_example_is_confidently_that_class():
    p = np.array([[0.75, 0.25, 0.0], [0.75, 0.25, 0.0], [0.25, 0.75, 0.0]])
    est = noise_estimate.confident_transition(p, np.array([0, 1, 1]))
    assert np.isnan(est.T_CxC[2]).all() and est.count_C[2] == 0
    assert np.isfinite(est.T_CxC[:2]).all()


def test_transition_error_by_hand():
    T = np.array([[0.5, 0.5], [0.0, 1.0]])
    out = noise_estimate.transition_error(np.array([[0.75, 0.25], [0.0, 1.0]]), T)
    assert out == {
        "mean_abs_error": 0.125,
        "max_abs_error": 0.25,
        "frobenius_error": np.sqrt(0.125),
        "rows_compared": 2,
    }
    # An unknown row is left out, not counted as an error of 1.
    out = noise_estimate.transition_error(np.array([[0.75, 0.25], [np.nan, np.nan]]), T)
    assert out["mean_abs_error"] == 0.25 and out["rows_compared"] == 1
    none = noise_estimate.transition_error(np.full((2, 2), np.nan), T)
    assert none == {
        "mean_abs_error": None,
        "max_abs_error": None,
        "frobenius_error": None,
        "rows_compared": 0,
    }


@pytest.mark.parametrize(
    "call, match",
    [
        (lambda: noise_estimate.glc_transition(np.ones((3, 2)), np.zeros(3, int)), "sum to 1"),
        (
            lambda: noise_estimate.glc_transition(np.full((2, 2), 0.5), np.array([0, 2])),
            r"\[0, 2\)",
        ),
        (
            lambda: noise_estimate.confident_joint(np.full((2, 2), np.nan), np.zeros(2, int)),
            "finite",
        ),
        (lambda: noise_estimate.confident_transition(np.ones((2,)), np.zeros(2, int)), "N x C"),
        (lambda: noise_estimate.transition_error(np.eye(3), np.eye(2)), "shape"),
        (
            lambda: noise_estimate.transition_error(np.array([[1, np.nan], [0, 1]]), np.eye(2)),
            "partly NaN",
        ),
        (lambda: noise_estimate.transition_error(np.eye(2), np.ones((2, 2))), "sum to 1"),
        (lambda: noise_estimate.calibrate_confident_joint(-np.eye(2), np.zeros(2, int)), ">= 0"),
        (lambda: noise_estimate.calibrate_confident_joint(np.eye(2), 3), "1-D"),
    ],
)
def test_bad_input_is_a_one_line_value_error(call, match):
    with pytest.raises(ValueError, match=match) as e:
        call()
    assert "\n" not in str(e.value)


# ------------------------------------------------------------------ a known T, recovered
@pytest.mark.parametrize("name, T", [("uniform 40%", uniform_T(0.4)), ("pair 45%", pair_T(0.45))])
def test_both_estimates_recover_a_known_T(name, T):
    # 2000 noisy examples per class, 100 trusted per class, probabilities within ~0.02 of the
    # noisy posterior. Tolerances: every entry within 0.05 of T, mean within 0.015 (the
    # identity is 0.45-0.6 off on the diagonal). Over 8 seeds the worst were 0.038 / 0.012
    # (GLC, pair: its 100 trusted examples a class) and 0.027 / 0.005 (confident learning).
    probs, given, true = noisy_posterior(T, 2000, 0.02, seed=0)
    probs_trusted, _, true_trusted = noisy_posterior(T, 100, 0.02, seed=1)
    glc = noise_estimate.glc_transition(probs_trusted, true_trusted)
    cl = noise_estimate.confident_transition(probs, given)
    for est in (glc, cl):
        err = noise_estimate.transition_error(est.T_CxC, T)
        assert err["rows_compared"] == C
        assert err["max_abs_error"] < 0.05 and err["mean_abs_error"] < 0.015, (name, err)
        np.testing.assert_allclose(est.T_CxC.sum(axis=1), 1.0, atol=1e-6)
    assert glc.count_C.tolist() == [100] * C
    # Confident learning's remaining error is the sample's own: with the posterior this close
    # its confident class is the true one, and T^ is the sample's empirical transition.
    tight, given, true = noisy_posterior(T, 1000, 0.005, seed=0)
    np.testing.assert_allclose(
        noise_estimate.confident_transition(tight, given).T_CxC,
        empirical_T(given, true),
        atol=1e-12,
    )


# ------------------------------------------------------------------ cleanlab, same probabilities
def _cleanlab_differs(p, y):
    """Where cleanlab's details (module docstring) could change a count: a probability within
    1e-6 of its threshold, or two classes passing with the overall argmax not among them."""
    from l2rw_jax.audit import label_issues

    t = label_issues.confident_thresholds(p, y)
    near = (np.abs(p - t) <= 1e-6).any()
    above = p >= t
    argmax_fails = ((above.sum(axis=1) > 1) & ~above[np.arange(len(p)), p.argmax(axis=1)]).any()
    return near or argmax_fails


@pytest.mark.parametrize("T", [uniform_T(0.4), pair_T(0.45)], ids=["uniform", "pair"])
def test_confident_joint_equals_cleanlabs(T):
    count = pytest.importorskip("cleanlab.count")
    # Noisier probabilities, so that the joint has off-diagonal mistakes of its own.
    probs, given, _ = noisy_posterior(T, 300, 0.1, seed=2)
    assert not _cleanlab_differs(probs, given)
    cj = noise_estimate.confident_joint(probs, given)
    assert cj.diagonal().min() >= 1  # cleanlab raises a zero diagonal to 1
    np.testing.assert_array_equal(cj, count.compute_confident_joint(given, probs, calibrate=False))
    # Calibrated: cleanlab rounds to integers keeping row totals, so within 1 count a cell;
    # the joint within 1 / N.
    cal = noise_estimate.calibrate_confident_joint(cj, given)
    cal_cleanlab = count.compute_confident_joint(given, probs, calibrate=True)
    assert np.abs(cal - cal_cleanlab).max() < 1
    np.testing.assert_allclose(cal.sum(axis=1), cal_cleanlab.sum(axis=1), rtol=1e-12)
    assert np.abs(
        noise_estimate.estimate_joint(probs, given) - count.estimate_joint(given, probs)
    ).max() <= 1 / len(given)
    # The noise matrix P(given | true) (columns = true) is our T^ transposed.
    _, noise_matrix, _ = count.estimate_latent(cal_cleanlab, given, converge_latent_estimates=False)
    T_hat = noise_estimate.confident_transition(probs, given).T_CxC
    np.testing.assert_allclose(T_hat, noise_matrix.T, atol=1e-2)
    # |a / s - a' / s'| <= (|a - a'| + (a / s) |s - s'|) / s' with |a - a'| < 1, a / s <= 1:
    # row i of T^ (column i of the joints, sums s, s') is off by at most (1 + |s - s'|) / s'.
    s, s_cleanlab = cal.sum(axis=0), cal_cleanlab.sum(axis=0)
    bound_C = (1 + np.abs(s - s_cleanlab)) / s_cleanlab
    assert (np.abs(T_hat - noise_matrix.T).max(axis=1) <= bound_C).all()


def test_where_cleanlab_departs_from_the_paper():
    count = pytest.importorskip("cleanlab.count")
    # x = row 1 passes classes 1 and 2 (t = 0.9, 0.25, 0.1) but not class 0, its argmax. The
    # paper's Eq. 1 takes the most probable class that passes (1); cleanlab the argmax (0), and
    # then raises the emptied diagonal cell to 1. (The third example counts at 2 in both.)
    p = np.array([[0.9, 0.05, 0.05], [0.5, 0.3, 0.2], [0.6, 0.2, 0.2], [0.1, 0.8, 0.1]])
    y = np.array([0, 1, 1, 2])
    assert noise_estimate.confident_joint(p, y)[1].tolist() == [0, 1, 1]
    assert count.compute_confident_joint(y, p, calibrate=False)[1].tolist() == [1, 1, 1]


def test_empirical_transition_by_hand_and_errors():
    est = noise_estimate.empirical_transition(
        np.array([0, 0, 0, 0, 1, 1]), np.array([0, 0, 0, 1, 1, 0]), 3
    )
    np.testing.assert_array_equal(est.T_CxC[:2], [[0.75, 0.25, 0.0], [0.5, 0.5, 0.0]])
    assert np.isnan(est.T_CxC[2]).all() and est.count_C.tolist() == [4, 2, 0]
    # On sampled labels: the same matrix as counting by hand.
    _, given, true = noisy_posterior(pair_T(0.3), 50, 0.01, seed=3)
    np.testing.assert_array_equal(
        noise_estimate.empirical_transition(true, given, C).T_CxC, empirical_T(given, true)
    )
    with pytest.raises(ValueError, match=r"given_labels must have shape \(2,\)"):
        noise_estimate.empirical_transition(np.array([0, 1]), np.array([0]), 2)
    with pytest.raises(ValueError, match=r"true_labels must lie in \[0, 2\)"):
        noise_estimate.empirical_transition(np.array([0, 2]), np.array([0, 1]), 2)
    with pytest.raises(ValueError, match="num_classes must be an integer >= 2"):
        noise_estimate.empirical_transition(np.array([0]), np.array([0]), 1)
