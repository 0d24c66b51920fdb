"""The masked evaluation: exact per-class counts over padded batches, the loss, the summary."""
import jax
import numpy as np
import optax

from l2rw_jax import evaluate
from l2rw_jax.train_state import TrainState

IDENTITY = lambda params, model_state, x, train, rng=None: (x, model_state)  # logits = input
STATE = TrainState(step=0, params={}, model_state={}, opt_state=(), rng=None)
LOGITS = np.array([
    [5.0, 1, 0, 0],   # label 0: correct
    [0.0, 4, 3, 2],   # label 2: wrong (1 wins)
    [0.0, 0, 9, 0],   # label 2: correct, but a padding row
    [1.0, 2, 1, 7],   # label 3: correct
], np.float32)
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
    np.testing.assert_allclose(s["per_class_accuracy"], [1, 0, 0, 1])  # 0 for no examples
    no_mask = eval_fn(STATE, {"image": LOGITS, "label": LABELS})  # every row counts
    np.testing.assert_array_equal(no_mask["count_C"], [1, 0, 2, 1])
    np.testing.assert_array_equal(no_mask["correct_C"], [1, 0, 1, 1])


def test_batches_add_up_to_one_batch_and_members_vmap():
    eval_fn = evaluate.make_eval_fn(IDENTITY)
    whole = eval_fn(STATE, {"image": LOGITS, "label": LABELS, "mask": MASK})
    halves = [{"image": LOGITS[a:b], "label": LABELS[a:b], "mask": MASK[a:b]}
              for a, b in ((0, 2), (2, 4))]
    parts = evaluate.evaluate(eval_fn, STATE, halves)
    jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-6), parts, whole)
    assert evaluate.evaluate(eval_fn, STATE, []) is None
    # Two members stacked on a leading axis, as the loop evaluates them: row k is member k.
    stacked = {"image": np.stack([LOGITS, -LOGITS]), "label": np.stack([LABELS, LABELS]),
               "mask": np.stack([MASK, MASK])}
    sums_K = jax.vmap(eval_fn, in_axes=(None, 0))(STATE, stacked)
    s = evaluate.summarize(sums_K)
    np.testing.assert_allclose(s["accuracy"][0], 2 / 3)
    assert s["accuracy"].shape == (2,) and s["per_class_accuracy"].shape == (2, 4)
