"""precision@k / recall@k on constructed rankings; the rankings themselves on hand examples."""

import numpy as np
import pytest

from l2rw_jax.audit import label_issues

IS_NOISY = np.array([1, 0, 1, 1, 0, 0, 1, 0], bool)  # 4 noisy
ORDER = np.array([2, 1, 3, 6, 0, 4, 5, 7])


def test_precision_and_recall_at_k_exact():
    # Noisy rows {0, 2, 3, 6}. top-4 = {2, 1, 3, 6}: 3 noisy; top-2 = {2, 1}: 1 noisy; top-8: all 4.
    assert label_issues.precision_at_k(ORDER, IS_NOISY, 4) == 0.75
    assert label_issues.recall_at_k(ORDER, IS_NOISY, 4) == 0.75
    assert label_issues.precision_at_k(ORDER, IS_NOISY, 2) == 0.5
    assert label_issues.recall_at_k(ORDER, IS_NOISY, 2) == 0.25
    assert label_issues.precision_at_k(ORDER, IS_NOISY, 8) == 0.5
    assert label_issues.recall_at_k(ORDER, IS_NOISY, 8) == 1.0
    perfect = np.argsort(~IS_NOISY, kind="stable")
    assert label_issues.precision_at_k(perfect, IS_NOISY, 4) == 1.0


def test_score_ranking_clips_k_and_keys_by_k():
    out = label_issues.score_ranking(ORDER, IS_NOISY, [4, 100])
    assert out == {
        "k=4": {"k": 4, "precision": 0.75, "recall": 0.75},
        "k=8": {"k": 8, "precision": 0.5, "recall": 1.0},
    }


@pytest.mark.parametrize("k", [0, 9])
def test_bad_k_is_a_clear_error(k):
    with pytest.raises(ValueError, match=r"k must be in \[1, 8\]"):
        label_issues.precision_at_k(ORDER, IS_NOISY, k)


def test_bad_order_and_no_positive_are_clear_errors():
    with pytest.raises(ValueError, match="permutation"):
        label_issues.precision_at_k(np.array([0, 0, 1, 2, 3, 4, 5, 6]), IS_NOISY, 2)
    with pytest.raises(ValueError, match="no positive"):
        label_issues.recall_at_k(ORDER, np.zeros(8, bool), 2)


def test_rank_by_l2rw_weight_breaks_ties_by_loss():
    w = np.array([0.3, 0.0, 0.0, 0.1, 0.0])
    loss = np.array([0.1, 1.0, 3.0, 0.5, 1.0])
    # Weight 0 first (losses 3.0, then the tie 1.0/1.0 by index), then 0.1, then 0.3.
    assert label_issues.rank_by_l2rw_weight(w, loss).tolist() == [2, 1, 4, 3, 0]
    with pytest.raises(ValueError, match="NaN"):
        label_issues.rank_by_l2rw_weight(np.array([np.nan, 1.0]), np.zeros(2))


def test_loss_ranking_equals_self_confidence_ranking():
    rng = np.random.default_rng(0)
    probs = rng.dirichlet(np.ones(4), size=50)
    labels = rng.integers(0, 4, 50)
    sc = label_issues.self_confidence(probs, labels)
    np.testing.assert_array_equal(
        label_issues.rank_by_loss(-np.log(sc)), np.argsort(sc, kind="stable")
    )


def test_confident_learning_flags_hand_example():
    probs = np.array(
        [
            [0.9, 0.1, 0.0],  # label 0, confidently 0: fine
            [0.7, 0.3, 0.0],  # label 0
            [0.2, 0.8, 0.0],  # label 1, confidently 1: fine
            [0.6, 0.4, 0.0],  # label 1, nothing above its threshold: not flagged
            [0.85, 0.15, 0.0],  # label 1, p_0 = .85 >= t_0 = .8: flagged (off-diagonal)
            [0.1, 0.1, 0.8],
        ]
    )  # label 2, t_2 = .8: fine
    labels = np.array([0, 0, 1, 1, 1, 2])
    # t_0 = mean(.9, .7) = .8; t_1 = mean(.8, .4, .15) = .45; t_2 = .8.
    # Row 3: p_1 = .4 < .45 and p_0 = .6 < .8 -> nothing confident -> not flagged.
    flags = label_issues.confident_learning_flags(probs, labels)
    assert flags.tolist() == [False, False, False, False, True, False]
    order = label_issues.rank_by_confident_learning(probs, labels)
    # Flagged first, then by self-confidence ascending: .15 (row 4) | .4 (3), .7 (1), .8 (2), .8 (5), .9 (0).
    assert order.tolist() == [4, 3, 1, 2, 5, 0]
