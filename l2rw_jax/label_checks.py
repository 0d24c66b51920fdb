"""Argument checks shared by the seeded label functions (`flips`, `subsets`, `corruption`).

Each returns the checked value (as a plain int, float or array) or raises a one-line ValueError
naming the value and what is allowed.
"""

from __future__ import annotations

import numbers
from typing import Any

import numpy as np


def check_int(name: str, value: Any, *, minimum: int) -> int:
    """`value` as an int, checked: an integer (not a bool) >= `minimum`."""
    if isinstance(value, bool) or not isinstance(value, numbers.Integral) or value < minimum:
        raise ValueError(f"{name} must be an integer >= {minimum}, got {value!r}.")
    return int(value)


def check_ratio(ratio: Any) -> float:
    """`ratio` as a float, checked: a number (not a bool) in [0, 1]."""
    if (
        isinstance(ratio, bool)
        or not isinstance(ratio, numbers.Real)
        or not 0.0 <= float(ratio) <= 1.0
    ):
        raise ValueError(f"ratio must be a number in [0, 1], got {ratio!r}.")
    return float(ratio)


def check_labels(labels: Any, num_classes: int, name: str = "labels") -> np.ndarray:
    """`labels` as an array, checked: 1-D, integer, in [0, num_classes)."""
    labels = np.asarray(labels)
    if labels.ndim != 1 or not np.issubdtype(labels.dtype, np.integer):
        raise ValueError(
            f"{name} must be a 1-D integer array, got dtype {labels.dtype} and shape "
            f"{labels.shape}."
        )
    if labels.size and (labels.min() < 0 or labels.max() >= num_classes):
        bad = labels[(labels < 0) | (labels >= num_classes)]
        raise ValueError(
            f"{name} must lie in [0, {num_classes}) (num_classes={num_classes}); found "
            f"{np.unique(bad)[:5].tolist()}."
        )
    return labels


def check_seed(seed: Any) -> Any:
    """An int >= 0 or a sequence of them (anything `default_rng` takes as entropy)."""
    items = seed if isinstance(seed, (tuple, list)) else (seed,)
    for s in items:
        if isinstance(s, bool) or not isinstance(s, numbers.Integral) or s < 0:
            raise ValueError(f"seed must be an integer >= 0 (or a sequence of them), got {seed!r}.")
    return seed
