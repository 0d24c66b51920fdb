"""The masked evaluation: exact per-class counts over padded batches, the loss, the summary."""

import jax
import numpy as np
import optax

from l2rw_jax import evaluate
from l2rw_jax.train_state import TrainState

IDENTITY = lambda params, model_state, x, train, rng=None: (x, model_state)  # logits = input
STATE = TrainState(step=0, params={}, model_state={}, opt_state=(), rng=None)
LOGITS = np.array(
    [
        [5.0, 1, 0, 0],  # label 0: correct
        [0.0, 4, 3, 2],  # label 2: wrong (1 wins)
        [0.0, 0, 9, 0],  # label 2: correct, but a padding row
        [1.0, 2, 1, 7],  # label 3: correct
    ],
    np.float32,
)
LABELS = np.array([0, 2, 2, 3], np.int32)
MASK = np.array([True, True, False, True])


def test_sums_count_the_real_rows_per_class_and_padding_not_at_all():
    eval_fn = jax.jit(evaluate.make_eval_fn(IDENTITY))
    sums = eval_fn(STATE, {"image": LOGITS, "label": LABELS, "mask": MASK})
    np.testing.assert_array_equal(sums["count_C"], [1, 0, 1, 1])
    np.testing.assert_array_equal(sums["correct_C"], [1, 0, 0, 1])
    losses = optax.softmax_cross_entropy_with_integer_labels(LOGITS, LABELS)
    np.testing.assert_allclose(sums["loss_sum"], losses[MASK].sum(), rtol=1e-6)
    s = evaluate.summarize(sums)
    np.testing.assert_allclose(s["accuracy"], 2 / 3)
    np.testing.assert_allclose(s["loss"], losses[MASK].sum() / 3, rtol=1e-6)
    # Class 1 has no real row: 0/0 is undefined (NaN), not 0; class 2's one real row is wrong.
    np.testing.assert_array_equal(s["per_class_accuracy"], [1, np.nan, 0, 1])
    no_mask = eval_fn(STATE, {"image": LOGITS, "label": LABELS})  # every row counts
    np.testing.assert_array_equal(no_mask["count_C"], [1, 0, 2, 1])
    np.testing.assert_array_equal(no_mask["correct_C"], [1, 0, 1, 1])


def test_batches_add_up_to_one_batch_and_members_vmap():
    eval_fn = evaluate.make_eval_fn(IDENTITY)
    whole = eval_fn(STATE, {"image": LOGITS, "label": LABELS, "mask": MASK})
    halves = [
        {"image": LOGITS[a:b], "label": LABELS[a:b], "mask": MASK[a:b]} for a, b in ((0, 2), (2, 4))
    ]
    parts = evaluate.evaluate(eval_fn, STATE, halves)
    jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-6), parts, whole)
    assert evaluate.evaluate(eval_fn, STATE, []) is None
    # Two members stacked on a leading axis, as the loop evaluates them: row k is member k.
    stacked = {
        "image": np.stack([LOGITS, -LOGITS]),
        "label": np.stack([LABELS, LABELS]),
        "mask": np.stack([MASK, MASK]),
    }
    sums_K = jax.vmap(eval_fn, in_axes=(None, 0))(STATE, stacked)
    s = evaluate.summarize(sums_K)
    np.testing.assert_allclose(s["accuracy"][0], 2 / 3)
    assert s["accuracy"].shape == (2,) and s["per_class_accuracy"].shape == (2, 4)


def _members(K, num_classes):
    from types import SimpleNamespace

    splits = SimpleNamespace(
        num_classes=num_classes,
        train_labels=np.zeros(5),
        clean_labels=np.zeros(2),
        test_labels=np.zeros(4),
        background_class=None,
    )
    return [SimpleNamespace(seed=k, splits=splits, hyperval=None, selection=None) for k in range(K)]


def test_a_class_absent_from_the_split_is_null_and_left_out_of_means_and_worst():
    import json

    from l2rw_jax import results as results_lib

    # Two members, four classes. Member 0's test split lacks class 1, member 1's lacks classes
    # 1 and 3 (hand-made sums, as the loop would add them up).
    sums = {
        "correct_C": np.array([[3, 0, 1, 2], [1, 0, 2, 0]], np.float32),
        "count_C": np.array([[4, 0, 4, 2], [2, 0, 4, 0]], np.float32),
        "loss_sum": np.array([1.0, 2.0], np.float32),
    }
    s = evaluate.summarize(sums)
    np.testing.assert_array_equal(
        s["per_class_accuracy"], [[0.75, np.nan, 0.25, 1.0], [0.5, np.nan, 0.5, np.nan]]
    )
    np.testing.assert_allclose(s["accuracy"], [6 / 10, 3 / 6])  # over examples: unchanged
    per_class = results_lib.undefined_to_none(s["per_class_accuracy"])
    assert per_class == [[0.75, None, 0.25, 1.0], [0.5, None, 0.5, None]]
    history = [
        {
            "step": 2,
            "test": {
                "accuracy": s["accuracy"].tolist(),
                "loss": s["loss"].tolist(),
                "per_class_accuracy": per_class,
            },
        }
    ]
    r = results_lib.summary(
        method="erm",
        config={},
        members=_members(2, 4),
        history=history,
        num_steps=2,
        all_zero_steps_K=[0, 0],
        wall_time=1.0,
        steps_per_s=1.0,
        timing={},
    )
    r = json.loads(json.dumps(r, allow_nan=False))  # valid JSON: null, no NaN
    assert r["per_class_accuracy"]["per_seed"] == per_class
    # Mean over the members that have the class: class 3 only member 0's 1.0; class 1 none.
    assert r["per_class_accuracy"]["mean"] == [0.625, None, 0.375, 1.0]
    # Means and worst class over the present classes only (0.0 for an absent class would make
    # class 1 the worst, at 0, and pull the means down).
    assert r["mean_class_accuracy"]["per_seed"] == [2 / 3, 0.5]
    assert r["worst_class"] == [2, 0]  # member 1: classes 0 and 2 tie at 0.5, the lower index
    assert r["worst_class_accuracy"]["per_seed"] == [0.25, 0.5]
    assert r["worst_class_accuracy"]["mean"] == 0.375


def test_robust_tables_leave_an_absent_background_class_out():
    from experiments import common

    per_class = [[0.5, None, 1.0, 0.0], [0.25, 0.75, None, 0.5]]
    out = common.background_accuracies(per_class, [1, 1])
    assert out["background_accuracy"]["per_seed"] == [0.75]  # member 0 has no class-1 example
    assert out["other_classes_accuracy"]["per_seed"] == [0.5, 0.375]
    out = common.background_accuracies([[0.5, None, 1.0]], [1])
    assert out["background_accuracy"] is None
    assert out["other_classes_accuracy"]["per_seed"] == [0.75]
