"""MMD-critic against brute force; robustness prototypes; attribute rates."""

import numpy as np
import pytest

from l2rw_jax.audit import criticism


def _points(n=30, d=4, seed=0):
    rng = np.random.default_rng(seed)
    # Two blobs of different size, so the choices are not all alike.
    return np.concatenate(
        [rng.normal(size=(2 * n // 3, d)), 3.0 + 0.5 * rng.normal(size=(n - 2 * n // 3, d))]
    )


def test_median_heuristic_hand_value():
    # Pairwise distances 1, 3, 2 -> median 2.
    assert criticism.median_heuristic_bandwidth(np.array([[0.0], [1.0], [3.0]])) == pytest.approx(
        2.0
    )
    assert criticism.median_heuristic_bandwidth(np.zeros((3, 2))) == 1.0


def test_rbf_kernel_hand_value():
    k = criticism.rbf_kernel(np.array([[0.0, 0.0]]), np.array([[3.0, 4.0], [0.0, 0.0]]), sigma=5.0)
    np.testing.assert_allclose(k, [[np.exp(-25 / 50), 1.0]])


def _brute_greedy_prototypes(k, m):
    chosen = []
    for _ in range(m):
        cands = [c for c in range(len(k)) if c not in chosen]
        vals = [criticism.mmd2(k, chosen + [c]) for c in cands]  # full recomputation of MMD^2
        chosen.append(cands[int(np.argmin(vals))])
    return chosen


def test_greedy_prototypes_match_brute_force_greedy():
    x = _points()
    k = criticism.rbf_kernel(x, x, criticism.median_heuristic_bandwidth(x))
    got = criticism.greedy_prototypes(k, 7)
    assert got.tolist() == _brute_greedy_prototypes(k, 7)
    # The first choice is the exact optimum over all single prototypes (exhaustive search).
    assert got[0] == int(np.argmin([criticism.mmd2(k, [c]) for c in range(len(x))]))


def _brute_greedy_criticisms(k, protos, c, reg):
    w = np.abs(criticism.witness(k, protos))
    chosen = []
    for _ in range(c):
        best, best_val = None, -np.inf
        for cand in range(len(k)):
            if cand in chosen or cand in protos:
                continue
            s = chosen + [cand]
            sign, logdet = np.linalg.slogdet(k[np.ix_(s, s)])
            val = w[s].sum() + reg * logdet if sign > 0 else -np.inf
            if val > best_val:
                best, best_val = cand, val
        chosen.append(best)
    return chosen


@pytest.mark.parametrize("reg", [1.0, 0.05])
def test_greedy_criticisms_match_brute_force_and_slogdet(reg):
    x = _points(seed=2)
    k = criticism.rbf_kernel(x, x, criticism.median_heuristic_bandwidth(x))
    protos = criticism.greedy_prototypes(k, 4)
    got, logdet = criticism.greedy_criticisms(k, protos, 6, reg_weight=reg)
    assert got.tolist() == _brute_greedy_criticisms(k, protos.tolist(), 6, reg)
    assert not set(got) & set(protos)
    sign, want = np.linalg.slogdet(k[np.ix_(got, got)])
    assert sign > 0 and logdet == pytest.approx(want, rel=1e-9, abs=1e-9)


def test_witness_hand_value():
    k = np.array([[1.0, 0.5, 0.0], [0.5, 1.0, 0.2], [0.0, 0.2, 1.0]])
    # w(x_i) = mean_j k_ij - k_{i,proto}.
    np.testing.assert_allclose(
        criticism.witness(k, [1]), [1.5 / 3 - 0.5, 1.7 / 3 - 1.0, 1.2 / 3 - 0.2]
    )


def test_mmd_critic_rejects_too_few_points():
    with pytest.raises(ValueError, match="need at least 5"):
        criticism.mmd_critic(np.zeros((4, 2)), 3, 2)


def test_robustness_prototypes_order_and_ties():
    min_eps = np.array([0.1, np.inf, 0.0, 0.3, np.inf, 0.0])
    margin = np.array([1.0, 2.0, -1.0, 0.5, 5.0, -3.0])
    out = criticism.robustness_prototypes(min_eps, margin, 2, 2)
    # Never fooled (inf) first, by margin; already outside the class (0) last, lowest margin last.
    assert out["prototypes"].tolist() == [4, 1]
    assert out["criticisms"].tolist() == [5, 2]
    with pytest.raises(ValueError, match="need at least 7"):
        criticism.robustness_prototypes(min_eps, margin, 4, 3)


def test_per_class_groups_empty_class_is_a_clear_error():
    with pytest.raises(ValueError, match=r"class\(es\) \[2\] have no examples"):
        criticism.per_class_groups(np.array([0, 1, 1, 0]), [0, 1, 2])


def test_attribute_rates_hand_values():
    attr = np.array([1, 1, 0, 0, 1, 0], bool)
    sides = {"robust_prototypes": np.array([0, 1]), "robust_criticisms": np.array([2, 4])}
    out = criticism.attribute_rates(attr, sides, np.arange(6))
    assert out == {
        "class_rate": 0.5,
        "robust_prototypes": 1.0,
        "robust_criticisms": 0.5,
        "robust_prototype_minus_criticism": 0.5,
    }
