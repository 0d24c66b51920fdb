"""AUROC / average precision against scikit-learn (ties included); the rankings' scorecard."""

import numpy as np
import pytest

from l2rw_jax.audit import label_issues
from l2rw_jax.audit import ranking_quality as rq


def test_auroc_and_ap_by_hand():
    score = np.array([0.9, 0.5, 0.5, 0.1])
    noisy = np.array([True, True, False, False])
    # Pairs (noisy, clean): (0.9, 0.5) 1, (0.9, 0.1) 1, (0.5, 0.5) 1/2, (0.5, 0.1) 1.
    assert rq.auroc(score, noisy) == 3.5 / 4
    # Thresholds 0.9: P 1, R 1/2; 0.5 (two examples at once): P 2/3, R 1.
    assert rq.average_precision(score, noisy) == pytest.approx(0.5 * 1 + 0.5 * 2 / 3, abs=1e-15)
    assert rq.auroc(-score, noisy) == 0.5 / 4
    assert rq.average_precision(np.zeros(4), noisy) == 0.5  # one tie group: P = share noisy


@pytest.mark.parametrize("seed", range(4))
@pytest.mark.parametrize("levels", [3, 20, None], ids=["3 levels", "20 levels", "continuous"])
def test_equal_to_scikit_learn_with_ties(seed, levels):
    metrics = pytest.importorskip("sklearn.metrics")
    rng = np.random.default_rng(seed)
    n = 300
    noisy = rng.random(n) < 0.3
    score = noisy * 0.5 + rng.random(n)  # informative, not perfect
    if levels is not None:
        score = np.round(score * levels) / levels  # many ties, across noisy and clean
    assert rq.auroc(score, noisy) == pytest.approx(metrics.roc_auc_score(noisy, score), rel=1e-12)
    assert rq.average_precision(score, noisy) == pytest.approx(
        metrics.average_precision_score(noisy, score), rel=1e-12
    )
    assert rq.auroc(score, noisy.astype(int)) == rq.auroc(score, noisy)


def test_order_score_ranks_the_first_highest():
    order = np.array([3, 0, 2, 1])
    s = rq.order_score(order)
    assert s.tolist() == [3, 1, 2, 4]
    assert np.argsort(-s, kind="stable").tolist() == order.tolist()


NOISY = np.array([1, 0, 1, 1, 0, 0, 1, 0], bool)  # noisy rows {0, 2, 3, 6}
ORDER = np.array([2, 1, 3, 6, 0, 4, 5, 7])


def test_score_rankings_by_hand():
    perfect = np.array([0, 2, 3, 6, 1, 4, 5, 7])
    out = rq.score_rankings({"mine": ORDER, "perfect": perfect}, NOISY, ks=[2, 4, 100])
    # ORDER's noisy at positions 1, 3, 4, 5 (1-based): each is preceded by 0, 1, 1, 1 clean ones
    # of 4, so AUROC = 1 - 3 / 16; AP = mean precision at each hit = (1 + 2/3 + 3/4 + 4/5) / 4.
    assert out["mine"]["auroc"] == 1 - 3 / 16
    assert out["mine"]["average_precision"] == pytest.approx(
        (1 + 2 / 3 + 3 / 4 + 4 / 5) / 4, abs=1e-15
    )
    assert out["mine"]["at_k"] == label_issues.score_ranking(ORDER, NOISY, [2, 4, 100])
    assert out["perfect"]["auroc"] == 1.0 and out["perfect"]["average_precision"] == 1.0


def test_unknown_or_undefined_is_none_not_zero():
    unknown = rq.score_rankings({"a": ORDER}, None)
    assert unknown == {"a": {"auroc": None, "average_precision": None, "at_k": None}}
    clean = rq.score_rankings({"a": ORDER}, np.zeros(8, bool), ks=[2])
    assert clean["a"] == {
        "auroc": None,
        "average_precision": None,
        "at_k": {"k=2": {"k": 2, "precision": 0.0, "recall": None}},
    }
    all_noisy = rq.score_rankings({"a": ORDER}, np.ones(8, bool), ks=[2])
    assert all_noisy["a"]["auroc"] is None and all_noisy["a"]["average_precision"] == 1.0


def test_suspect_rankings_are_label_issues_rankings():
    rng = np.random.default_rng(0)
    probs = rng.dirichlet(np.ones(3), size=40)
    labels = rng.integers(0, 3, 40)
    w = rng.random(40).round(1)  # ties in the weight
    count = rng.integers(0, 3, 40)
    w[count == 0] = np.nan
    only_probs = rq.suspect_rankings(probs, labels)
    assert set(only_probs) == {"final_loss", "confident_learning"}
    np.testing.assert_array_equal(
        only_probs["final_loss"], label_issues.rank_by_loss(label_issues.final_loss(probs, labels))
    )
    np.testing.assert_array_equal(
        only_probs["confident_learning"], label_issues.rank_by_confident_learning(probs, labels)
    )
    out = rq.suspect_rankings(probs, labels, mean_weight=w, count=count)
    assert set(out) == {"l2rw_weight", "final_loss", "confident_learning"}
    seen = count > 0
    # The drawn examples first, in rank_by_l2rw_weight's order among themselves.
    first = out["l2rw_weight"][: seen.sum()]
    assert seen[first].all()
    loss = label_issues.final_loss(probs, labels)
    sub = np.flatnonzero(seen)
    np.testing.assert_array_equal(first, sub[label_issues.rank_by_l2rw_weight(w[sub], loss[sub])])
    scored = rq.score_rankings(out, rng.random(40) < 0.3, ks=[5])
    assert set(scored) == set(out)
    assert all(0 <= v["auroc"] <= 1 and 0 < v["average_precision"] <= 1 for v in scored.values())


@pytest.mark.parametrize(
    "call, match",
    [
        (lambda: rq.auroc(np.array([0.1, np.nan]), np.array([True, False])), "finite"),
        (lambda: rq.auroc(np.zeros((2, 2)), np.array([True, False])), "1-D"),
        (lambda: rq.auroc(np.zeros(2), np.array([True, True])), "undefined"),
        (lambda: rq.auroc(np.zeros(2), np.array([0, 2])), "bools"),
        (lambda: rq.average_precision(np.zeros(2), np.array([False, False])), "undefined"),
        (lambda: rq.average_precision(np.zeros(3), np.array([True, False])), "bools"),
        (lambda: rq.order_score(np.array([0, 0, 1])), "permutation"),
        (lambda: rq.score_rankings({"a": ORDER, "b": ORDER[:4]}, None), "one length"),
        (lambda: rq.score_rankings({"a": ORDER}, NOISY, ks=[0]), "ks"),
        (lambda: rq.score_rankings({"a": ORDER}, NOISY[:3]), "bools"),
    ],
)
def test_bad_input_is_a_one_line_value_error(call, match):
    with pytest.raises(ValueError, match=match) as e:
        call()
    assert "\n" not in str(e.value)
