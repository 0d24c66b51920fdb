"""One masked evaluation: per-class sums over padded batches, then accuracy, loss and
per-class accuracy.

Evaluation never drops examples: the last batch is padded and its padding rows carry
``mask = False`` (``input_pipeline.test_dataset``, ``stream_order.test_batches``), so the sums
count every example exactly once (big_vision ``evaluators/classification.py``). The loop
evaluates K members at once (``jax.vmap`` over a leading seed axis); the same functions serve
one model (the audit): :func:`evaluate` on un-stacked batches.
"""

from __future__ import annotations

from typing import Callable, Iterable

import jax
import jax.numpy as jnp
import numpy as np
import optax

from l2rw_jax.train_state import TrainState


def make_eval_fn(apply_fn) -> Callable[[TrainState, dict], dict]:
    """``eval_fn(state, batch) -> sums`` (one model, evaluation mode: running BatchNorm
    statistics).

    ``batch``: ``image`` (B x ...), ``label`` (B,) and optionally ``mask`` (B,) bool, True for
    real rows (every row when absent). Returns sums over the real rows, to be added over
    batches: ``correct_C`` (top-1 correct per class of the label), ``count_C`` (rows per class)
    and ``loss_sum`` (softmax cross-entropy).
    """

    def eval_fn(state: TrainState, batch: dict) -> dict:
        logits_BxC, _ = apply_fn(state.params, state.model_state, batch["image"], False)
        labels_B = batch["label"]
        mask_B = batch.get("mask", jnp.ones(labels_B.shape, bool))
        num_classes = logits_BxC.shape[-1]
        onehot_BxC = jax.nn.one_hot(labels_B, num_classes) * mask_B[:, None]
        correct_B = (jnp.argmax(logits_BxC, axis=-1) == labels_B).astype(jnp.float32)
        losses_B = optax.softmax_cross_entropy_with_integer_labels(logits_BxC, labels_B)
        return {
            "correct_C": jnp.sum(onehot_BxC * correct_B[:, None], axis=0),
            "count_C": jnp.sum(onehot_BxC, axis=0),
            "loss_sum": jnp.sum(jnp.where(mask_B, losses_B, 0.0)),
        }

    return eval_fn


def evaluate(eval_fn: Callable, state, batches: Iterable, place: Callable = lambda b: b):
    """``eval_fn``'s sums over ``batches`` (each passed through ``place`` first, e.g. onto the
    devices), added on the device; None for no batches."""
    sums = None
    for batch in batches:
        part = eval_fn(state, place(batch))
        sums = part if sums is None else jax.tree.map(jnp.add, sums, part)
    return sums


def summarize(sums: dict) -> dict:
    """Host sums (any leading axes, e.g. K members) -> ``accuracy``, ``loss`` (means over the
    examples) and ``per_class_accuracy`` (``... x C`` float64; NaN for a class without examples
    in the split: 0/0 is undefined, not 0. Written as JSON null by
    ``results.undefined_to_none``)."""
    sums = jax.device_get(sums)
    count = np.asarray(sums["count_C"]).sum(-1)
    correct_C = np.asarray(sums["correct_C"], np.float64)
    count_C = np.asarray(sums["count_C"], np.float64)
    return {
        "accuracy": np.asarray(sums["correct_C"]).sum(-1) / count,
        "loss": np.asarray(sums["loss_sum"]) / count,
        "per_class_accuracy": np.where(count_C > 0, correct_C / np.maximum(count_C, 1), np.nan),
    }
