"""precision@k / recall@k on constructed rankings; the rankings themselves on hand examples."""

import csv
import os

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
    # Flagged first, then by self-confidence ascending:
    # .15 (row 4) | .4 (3), .7 (1), .8 (2), .8 (5), .9 (0).
    assert order.tolist() == [4, 3, 1, 2, 5, 0]


# ------------------------------------------------------------------ every example, one ranking
LOSS = np.array([1.0, 5.0, 0.2, 1.0, 0.3, 2.0])
META_GRAD = np.array([0.5, 9.0, 2.0, 0.5, -1.0, 0.5])
COUNT = np.array([3, 0, 1, 2, 4, 1])  # row 1 never drawn: its 9.0 is no recorded score


def test_rank_label_issues_hand_example():
    rank = label_issues.rank_label_issues
    # Meta-gradient descending: 2.0 (row 2); the 0.5 tie by loss (row 5: 2.0), then by index
    # (rows 0, 3: 1.0); -1.0 (row 4); the never-drawn row 1 last.
    expect = [2, 5, 0, 3, 4, 1]
    assert rank(LOSS, mean_meta_grad_N=META_GRAD, count_N=COUNT)[0].tolist() == expect
    nan_grad = np.where(COUNT > 0, META_GRAD, np.nan)  # NaN = not recorded, same as count 0
    order, by = rank(LOSS, mean_meta_grad_N=nan_grad)
    assert (order.tolist(), by) == (expect, "l2rw_meta_grad")
    # Mean weight ascending: 0 (rows 5 | 0, 3), 0.1 (row 2), 0.2 (row 4), then row 1.
    w = np.array([0.0, 0.0, 0.1, 0.0, 0.2, 0.0])
    order, by = rank(LOSS, mean_weight_N=w, count_N=COUNT)
    assert (order.tolist(), by) == ([5, 0, 3, 2, 4, 1], "l2rw_weight")
    # auto prefers the meta-gradient, then the memory, then the weight, then the loss.
    assert rank(LOSS, mean_weight_N=w, mean_meta_grad_N=META_GRAD)[1] == "l2rw_meta_grad"
    assert rank(LOSS, mean_weight_N=w, meta_grad_memory_N=META_GRAD)[1] == "l2rw_memory"
    # The loss ranking ignores count (the model scores every example).
    order, by = rank(LOSS, count_N=COUNT)
    assert (order.tolist(), by) == ([1, 5, 0, 3, 4, 2], "final_loss")
    order, _ = rank(
        LOSS, flags_N=np.array([0, 1, 0, 1, 0, 0], bool), ranked_by="confident_learning"
    )
    assert order.tolist() == [1, 3, 5, 0, 4, 2]  # flagged first, each group by loss


def test_rank_label_issues_clear_errors():
    with pytest.raises(ValueError, match="ranked_by must be 'auto' or one of"):
        label_issues.rank_label_issues(LOSS, ranked_by="self_confidence")
    with pytest.raises(ValueError, match="ranked_by='l2rw_weight' needs its score"):
        label_issues.rank_label_issues(LOSS, ranked_by="l2rw_weight")
    with pytest.raises(ValueError, match="needs flags"):
        label_issues.rank_label_issues(LOSS, ranked_by="confident_learning")
    with pytest.raises(ValueError, match=r"mean_weight must have shape \(6,\)"):
        label_issues.rank_label_issues(LOSS, mean_weight_N=np.zeros(5))


def test_rank_label_issues_equals_the_audit_rankings_on_the_recorded_rows():
    rng = np.random.default_rng(1)
    n = 200
    w = np.where(rng.random(n) < 0.4, 0.0, rng.random(n))  # many exact ties at 0
    loss = np.round(rng.random(n), 1)  # ties in the loss too
    count = rng.integers(0, 3, n)
    seen = np.flatnonzero(count > 0)
    order, _ = label_issues.rank_label_issues(loss, mean_weight_N=w, count_N=count)
    np.testing.assert_array_equal(
        order[: len(seen)], seen[label_issues.rank_by_l2rw_weight(w[seen], loss[seen])]
    )
    never = np.flatnonzero(count == 0)
    np.testing.assert_array_equal(  # the never-drawn rows follow, by loss
        order[len(seen) :], never[label_issues.rank_by_loss(loss[never])]
    )
    probs = rng.dirichlet(np.ones(4), size=n)
    labels = rng.integers(0, 4, n)
    flags = label_issues.confident_learning_flags(probs, labels)
    order, _ = label_issues.rank_label_issues(
        label_issues.final_loss(probs, labels), flags_N=flags, ranked_by="confident_learning"
    )
    np.testing.assert_array_equal(order, label_issues.rank_by_confident_learning(probs, labels))


def test_find_label_issues_returns_source_indices_most_suspect_first():
    probs = np.exp(-LOSS)[:, None] * np.array([1.0, 0.0]) + (1 - np.exp(-LOSS))[:, None] * [0, 1]
    labels = np.zeros(6, np.int64)  # p(label) = exp(-LOSS): the final loss is LOSS
    source = np.array([50, 51, 52, 53, 54, 55]) * 10
    got = label_issues.find_label_issues(
        labels, probs, source_index=source, mean_meta_grad=META_GRAD, count=COUNT
    )
    assert got.tolist() == [520, 550, 500, 530, 540, 510]
    assert label_issues.find_label_issues(labels, probs).tolist() == [1, 5, 0, 3, 4, 2]
    with pytest.raises(ValueError, match="source_index must be 6 integers"):
        label_issues.find_label_issues(labels, probs, source_index=np.arange(5))
    with pytest.raises(ValueError, match=r"labels must lie in \[0, 2\)"):
        label_issues.find_label_issues(labels + 2, probs)


def _csv_columns(**over):
    cols = {
        "source_index": np.array([70, 71, 72]),
        "train_row": np.arange(3),
        "given_label": np.array([0, 1, 1]),
        "predicted_label": np.array([0, 0, 1]),
        "true_label": None,
        "count": np.array([2, None, 1], object),
        "mean_meta_grad": None,
        "meta_grad_memory": None,
        "mean_weight": np.array([0.25, np.nan, 0.1]),
        "weight_std": np.array([0.0, np.nan, 0.05]),
        "nonzero_share": None,
        "loss": np.array([0.1, 2.5, 1 / 3]),
        "confident_learning": np.array([False, True, False]),
    }
    cols.update(over)
    return cols


def test_write_label_issues_csv_rows_in_rank_order_missing_values_empty(tmp_path):
    path = str(tmp_path / "li.csv")
    label_issues.write_label_issues_csv(path, np.array([1, 2, 0]), _csv_columns(), ["cat", "dog"])
    with open(path, newline="") as f:
        rows = list(csv.reader(f))
    assert rows[0] == (
        list(label_issues.CSV_COLUMNS)
        + list(label_issues.CSV_RANK_COLUMNS)
        + list(label_issues.CSV_CLASS_COLUMNS)
    )
    no_ranks = [""] * len(label_issues.RANKINGS)  # no ranking given: every rank column empty
    assert rows[1:] == [
        [
            "1",
            "71",
            "1",
            "1",
            "0",
            "",
            "",
            "",
            "",
            "",
            "",
            "",
            "2.5",
            "1",
            *no_ranks,
            "dog",
            "cat",
            "",
        ],
        [
            "2",
            "72",
            "2",
            "1",
            "1",
            "",
            "1",
            "",
            "",
            "0.1",
            "0.05",
            "",
            repr(1 / 3),
            "0",
            *no_ranks,
            "dog",
            "dog",
            "",
        ],
        [
            "3",
            "70",
            "0",
            "0",
            "0",
            "",
            "2",
            "",
            "",
            "0.25",
            "0.0",
            "",
            "0.1",
            "0",
            *no_ranks,
            "cat",
            "cat",
            "",
        ],
    ]
    assert float(rows[2][12]) == 1 / 3  # floats round-trip exactly
    assert os.listdir(tmp_path) == ["li.csv"]  # atomic: no temporary file left
    label_issues.write_label_issues_csv(path, np.array([0, 1, 2]), _csv_columns())
    with open(path, newline="") as f:
        assert next(csv.reader(f)) == (
            list(label_issues.CSV_COLUMNS)  # no name columns
            + list(label_issues.CSV_RANK_COLUMNS)
        )


def test_write_label_issues_csv_names_each_ranking_column(tmp_path):
    # Rows in the file's order ([1, 2, 0]); each rank_<ranking> column is that ranking's rank
    # of the row (1 = most suspect), empty for a ranking not given.
    path = str(tmp_path / "li.csv")
    ranks = {"final_loss": np.array([1, 2, 0]), "l2rw_weight": np.array([2, 0, 1])}
    label_issues.write_label_issues_csv(path, np.array([1, 2, 0]), _csv_columns(), ranks=ranks)
    with open(path, newline="") as f:
        rows = list(csv.DictReader(f))
    assert [r["train_row"] for r in rows] == ["1", "2", "0"]
    assert [r["rank_final_loss"] for r in rows] == ["1", "2", "3"]
    assert [r["rank_l2rw_weight"] for r in rows] == ["3", "1", "2"]  # example 2 first, then 0, 1
    for name in ("l2rw_meta_grad", "l2rw_memory", "confident_learning"):
        assert [r[f"rank_{name}"] for r in rows] == ["", "", ""]
    with pytest.raises(ValueError, match=r"unknown rankings \['weight'\]"):
        label_issues.write_label_issues_csv(
            path, np.arange(3), _csv_columns(), ranks={"weight": np.arange(3)}
        )
    with pytest.raises(ValueError, match=r"ranks\['final_loss'\] must be a permutation"):
        label_issues.write_label_issues_csv(
            path, np.arange(3), _csv_columns(), ranks={"final_loss": np.array([0, 0, 1])}
        )


def test_write_label_issues_csv_clear_errors(tmp_path):
    path = str(tmp_path / "li.csv")
    with pytest.raises(ValueError, match=r"missing \['mean_weight'\]"):
        cols = _csv_columns()
        del cols["mean_weight"]
        label_issues.write_label_issues_csv(path, np.arange(3), cols)
    with pytest.raises(ValueError, match=r"column 'loss' must have shape \(3,\)"):
        label_issues.write_label_issues_csv(path, np.arange(3), _csv_columns(loss=np.zeros(2)))
    with pytest.raises(ValueError, match="permutation"):
        label_issues.write_label_issues_csv(path, np.array([0, 0, 1]), _csv_columns())
    assert os.listdir(tmp_path) == []
