"""Mistakes metrics against hand-computed values; explanations against closed forms."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from l2rw_jax.audit import common
from l2rw_jax.audit import mistakes


# ------------------------------------------------------------------ accuracy, confusion, top-k
LABELS = np.array([0, 0, 1, 2, 2, 2])
PREDS = np.array([0, 1, 1, 2, 0, 2])


def test_confusion_matrix_hand_counts():
    cm = mistakes.confusion_matrix(LABELS, PREDS, 3)
    np.testing.assert_array_equal(cm, [[1, 1, 0], [0, 1, 0], [1, 0, 2]])
    assert cm.sum() == len(LABELS)


def test_per_class_accuracy_and_summary_hand_values():
    acc = mistakes.per_class_accuracy(LABELS, PREDS, 3)
    assert acc == {0: 0.5, 1: 1.0, 2: pytest.approx(2 / 3)}
    s = mistakes.class_accuracy_summary(acc)
    assert s["worst_class"] == 0 and s["worst_class_accuracy"] == 0.5
    assert s["mean_class_accuracy"] == pytest.approx((0.5 + 1.0 + 2 / 3) / 3)
    assert s["gap_mean_minus_worst"] == pytest.approx((0.5 + 1.0 + 2 / 3) / 3 - 0.5)


def test_per_class_accuracy_empty_class_is_a_clear_error():
    with pytest.raises(ValueError, match=r"class\(es\) \[3\] have no examples"):
        mistakes.per_class_accuracy(LABELS, PREDS, 4)
    # Leaving the empty class out knowingly works.
    assert mistakes.per_class_accuracy(LABELS, PREDS, 4, classes=[0, 1, 2])[1] == 1.0


def test_labels_out_of_range_rejected():
    with pytest.raises(ValueError, match=r"must lie in \[0, 2\)"):
        mistakes.confusion_matrix(LABELS, PREDS, 2)


def test_top_k_accuracy_hand_values():
    logits = np.array([[3.0, 2, 1, 0], [0, 1, 2, 3], [1, 3, 2, 0]])
    labels = np.array([1, 0, 2])
    # top-1 predictions 0, 3, 1: none right; top-2 sets {0,1}, {3,2}, {1,2}: 2 of 3.
    assert mistakes.top_k_accuracy(labels, logits, 1) == 0.0
    assert mistakes.top_k_accuracy(labels, logits, 2) == pytest.approx(2 / 3)
    assert mistakes.top_k_accuracy(labels, logits, 3) == pytest.approx(2 / 3)
    assert mistakes.top_k_accuracy(labels, logits, 4) == 1.0
    # Ties go to the lower class index.
    assert mistakes.top_k_accuracy(np.array([1]), np.array([[1.0, 1.0, 0.0]]), 1) == 0.0
    with pytest.raises(ValueError, match="k must be in"):
        mistakes.top_k_accuracy(labels, logits, 5)


# ------------------------------------------------------------------ calibration
def test_ece_hand_computed_15_bins():
    probs = np.array([[0.95, 0.05], [0.94, 0.06], [0.3, 0.7], [0.62, 0.38], [0.45, 0.55]])
    labels = np.array([0, 1, 1, 0, 0])
    # conf .95 (right) and .94 (wrong) share bin 14 = (14/15, 1]: |0.5 - 0.945| * 2/5;
    # .7 right in bin 10, .62 right in bin 9, .55 wrong in bin 8: each 1/5 * |acc - conf|.
    want = 0.4 * 0.445 + 0.2 * 0.3 + 0.2 * 0.38 + 0.2 * 0.55
    out = mistakes.expected_calibration_error(probs, labels)
    assert out["ece"] == pytest.approx(want, abs=1e-12)
    assert out["num_bins"] == 15
    counts = np.zeros(15, int)
    counts[[14, 10, 9, 8]] = [2, 1, 1, 1]
    np.testing.assert_array_equal(out["count"], counts)
    assert out["accuracy"][14] == 0.5 and out["confidence"][14] == pytest.approx(0.945)
    assert out["accuracy"][0] is None


def test_ece_bins_are_closed_on_the_right():
    # Dyadic confidences on bin edges with 4 bins:
    # 0.25 -> bin 0, 0.5 -> bin 1, 0.75 -> bin 2, 1 -> bin 3.
    probs = np.array(
        [[0.25, 0.25, 0.25, 0.25], [0.5, 0.5, 0, 0], [0.75, 0.25, 0, 0], [1.0, 0, 0, 0]]
    )
    out = mistakes.expected_calibration_error(probs, np.array([0, 1, 0, 0]), num_bins=4)
    np.testing.assert_array_equal(out["count"], [1, 1, 1, 1])
    # Bins: acc 1 vs .25, acc 0 vs .5 (tie -> class 0 predicted), acc 1 vs .75, acc 1 vs 1.
    assert out["ece"] == pytest.approx((0.75 + 0.5 + 0.25 + 0.0) / 4, abs=1e-12)


def test_most_confident_mistakes_and_top_predictions():
    probs = np.array([[0.9, 0.1], [0.2, 0.8], [0.6, 0.4], [0.3, 0.7]])
    labels = np.array([1, 1, 1, 0])
    np.testing.assert_array_equal(mistakes.most_confident_mistakes(probs, labels, 5), [0, 3, 2])
    cls, p = mistakes.top_predictions(probs, 2)
    np.testing.assert_array_equal(cls[1], [1, 0])
    np.testing.assert_allclose(p[1], [0.8, 0.2])


def test_nearest_neighbors_match_brute_force():
    rng = np.random.default_rng(0)
    q, r = rng.normal(size=(7, 5)), rng.normal(size=(40, 5))
    idx, dist = mistakes.nearest_neighbors(q, r, 5, chunk=16)  # chunks exercise the merge
    d = np.linalg.norm(q[:, None] - r[None], axis=-1)
    np.testing.assert_array_equal(idx, np.argsort(d, axis=1)[:, :5])
    np.testing.assert_allclose(dist, np.sort(d, axis=1)[:, :5], rtol=1e-9)


# ------------------------------------------------------------------ integrated gradients
def _linear_apply(params, model_state, x, train):
    return x.reshape(x.shape[0], -1) @ params["w"] + params["b"][None, :], model_state


def _tanh_apply(params, model_state, x, train):
    h = jnp.tanh(x.reshape(x.shape[0], -1) @ params["w1"])
    return h @ params["w2"], model_state


def test_integrated_gradients_exact_for_a_linear_model():
    rng = np.random.default_rng(1)
    params = {"w": rng.normal(size=(12, 3)).astype(np.float32), "b": np.zeros(3, np.float32)}
    x = rng.uniform(size=(4, 2, 2, 3)).astype(np.float32)
    base = np.full_like(x, -0.5)
    target = np.array([0, 1, 2, 1])
    out = mistakes.integrated_gradients(
        _linear_apply, params, {}, x, target, baseline=base, steps=3
    )
    want = (x - base).reshape(4, -1) * params["w"][:, target].T  # IG_i = (x_i - x'_i) w_ic
    np.testing.assert_allclose(out["attributions"].reshape(4, -1), want, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(out["completeness_error"], 0.0, atol=1e-5)


def test_integrated_gradients_completeness_error_shrinks_with_steps():
    rng = np.random.default_rng(2)
    params = {
        "w1": rng.normal(size=(16, 8)).astype(np.float32),
        "w2": rng.normal(size=(8, 3)).astype(np.float32),
    }
    x = rng.uniform(size=(5, 4, 4, 1)).astype(np.float32)
    target = np.array([0, 1, 2, 0, 1])
    coarse = mistakes.integrated_gradients(_tanh_apply, params, {}, x, target, steps=2)
    fine = mistakes.integrated_gradients(_tanh_apply, params, {}, x, target, steps=256)
    # The trapezoid rule's error is O(1/steps^2) for this smooth model: at 256 steps only float32
    # rounding (~1e-6 relative) is left; at 2 steps the quadrature error is visible.
    assert np.max(fine["relative_completeness_error"]) < 1e-4
    assert np.max(coarse["relative_completeness_error"]) > 100 * np.max(
        fine["relative_completeness_error"]
    )
    np.testing.assert_allclose(
        fine["completeness_error"],
        fine["attributions"].reshape(5, -1).sum(1) - fine["delta_f"],
        atol=1e-6,
    )


# ------------------------------------------------------------------ Grad-CAM
def _gap_feature_fn(params, model_state, x, conv_delta=None):
    """A 1x1-conv net with a global-average-pool head: Grad-CAM reduces to CAM (Zhou et al.
    2016)."""
    fmap = jax.nn.relu(jnp.einsum("bhwc,ck->bhwk", x, params["conv"]))
    if conv_delta is not None:
        fmap = fmap + conv_delta
    pooled = fmap.mean(axis=(1, 2))
    return pooled @ params["dense"], {"penultimate": pooled, "conv": fmap}


def test_grad_cam_equals_class_activation_map_for_a_gap_head():
    rng = np.random.default_rng(3)
    params = {
        "conv": rng.normal(size=(2, 5)).astype(np.float32),
        "dense": rng.normal(size=(5, 3)).astype(np.float32),
    }
    x = rng.normal(size=(3, 4, 6, 2)).astype(np.float32)
    target = np.array([2, 0, 1])
    out = mistakes.grad_cam(_gap_feature_fn, params, {}, x, target)
    fmap = np.maximum(np.einsum("bhwc,ck->bhwk", x, params["conv"]), 0)
    # alpha_k = d y_c / d A^k_ij averaged = w_kc / (h w); CAM = ReLU(sum_k alpha_k A^k).
    want = np.maximum(np.einsum("bhwk,bk->bhw", fmap, params["dense"][:, target].T / 24.0), 0)
    np.testing.assert_allclose(out["cam"], want, rtol=1e-5, atol=1e-6)
    assert out["cam_upsampled"].shape == (3, 4, 6)  # 1x1 conv: same size as the input


def _mlp_feature_fn(params, model_state, x, conv_delta=None):
    if conv_delta is not None:
        raise ValueError("no conv map")
    h = x.reshape(x.shape[0], -1)
    return h @ params["w"] + params["b"][None, :], {"penultimate": h}


def test_grad_cam_without_conv_layers_is_a_clear_error():
    params = {"w": np.ones((12, 3), np.float32), "b": np.zeros(3, np.float32)}
    x = np.zeros((2, 2, 2, 3), np.float32)
    assert not mistakes.has_conv_map(_mlp_feature_fn, params, {}, x)
    with pytest.raises(ValueError, match="no conv layers"):
        mistakes.grad_cam(_mlp_feature_fn, params, {}, x, np.array([0, 1]))


def test_feature_fn_contract_checked():
    bad = lambda p, s, x, conv_delta=None: x.reshape(x.shape[0], -1)
    with pytest.raises(ValueError, match="feature_fn must return"):
        common.compute_features(bad, {}, {}, np.zeros((2, 2, 2, 1), np.float32))


def test_map_batched_pads_and_keeps_every_row():
    calls = []

    def fn(a):
        calls.append(a.shape[0])
        return a * 2

    out = common.map_batched(fn, [np.arange(10.0)], 4)
    np.testing.assert_array_equal(out, np.arange(10.0) * 2)
    assert calls == [4, 4, 4]  # fixed shape: the last batch padded, padding dropped


def test_grad_cam_on_the_project_models():
    import jax.random as jr
    from l2rw_jax import model_factory, models

    x = np.random.default_rng(4).normal(size=(2, 8, 8, 1)).astype(np.float32)
    mlp = model_factory.create_model("mlp", 3, hidden=(4,))
    params, state = models.init_model(mlp, jr.key(0), (1, 8, 8, 1))
    with pytest.raises(ValueError, match="no conv layers"):
        mistakes.grad_cam(models.make_feature_fn(mlp), params, state, x, np.array([0, 1]))
    cnn = model_factory.create_model("small_cnn", 3, channels=(4,), hidden=4)
    params, state = models.init_model(cnn, jr.key(0), (1, 8, 8, 1))
    out = mistakes.grad_cam(models.make_feature_fn(cnn), params, state, x, np.array([0, 2]))
    assert out["cam"].shape == (2, 4, 4) and out["cam_upsampled"].shape == (2, 8, 8)
    assert np.all(out["cam"] >= 0)
