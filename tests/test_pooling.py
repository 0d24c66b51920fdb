"""The separable custom-jvp max-pool: values and both derivatives equal flax's reduce_window."""

import functools

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from l2rw_jax import pooling

FAST_COMPILE = {"xla_backend_optimization_level": 0}
# (height, window, stride), width = height + 1: LeNet's 3x3/2 pads (1, 1) on 7 and (0, 1) on 8
# (as on 28 and 14), SmallCNN's 2x2/2 on an odd size (pad (0, 1)), overlapping stride 1.
CASES = [(7, 3, 2), (5, 2, 2), (5, 3, 1)]


@functools.partial(jax.jit, compiler_options=FAST_COMPILE)
def _values_and_derivatives(xs, tangents, cotangents):
    out = []
    for x, t, ct, (_, k, s) in zip(xs, tangents, cotangents, CASES):
        per_impl = []
        for pool in (
            lambda x: pooling.max_pool_same(x, k, s),
            lambda x: nn.max_pool(x, (k, k), strides=(s, s), padding="SAME"),
        ):
            y, t_y = jax.jvp(pool, (x,), (t,))
            per_impl.append((y, t_y, jax.vjp(pool, x)[1](ct)[0]))
        out.append(per_impl)
    return out


def _inputs(ties: bool):
    rng = np.random.default_rng(0)
    xs, tangents, cotangents = [], [], []
    for h, _, s in CASES:
        shape = (2, h, h + 1, 3)
        out_shape = (2, -(-h // s), -(-(h + 1) // s), 3)
        xs.append(rng.integers(0, 3, shape) if ties else rng.standard_normal(shape))
        tangents.append(rng.integers(-5, 6, shape))
        cotangents.append(rng.integers(-5, 6, out_shape))
    return [[a.astype(np.float32) for a in arrays] for arrays in (xs, tangents, cotangents)]


def test_values_and_vjp_equal_flax_max_pool_with_ties():
    """Inputs drawn from {0, 1, 2}: most windows have tied maxima, and the cotangent must go to
    the same (row-major first) element as reduce_window's select-and-scatter. Integer
    tangents and cotangents make every sum exact, so the comparisons are exact. The jvp is
    checked as the transpose of the vjp: <jvp(t), ct> = <t, vjp(ct)>. (Flax's jvp,
    select-and-gather, breaks ties in an implementation-defined order that need not agree
    with its own vjp, so on ties only its values and vjp are a reference.)"""
    xs, tangents, cotangents = _inputs(ties=True)
    results = _values_and_derivatives(xs, tangents, cotangents)
    for (ours, flax_pool), t, ct in zip(results, tangents, cotangents):
        y, t_y, x_bar = ours
        np.testing.assert_array_equal(y, flax_pool[0])
        np.testing.assert_array_equal(x_bar, flax_pool[2])
        assert np.sum(t_y * ct) == np.sum(t * x_bar)


def test_values_and_both_derivatives_equal_flax_max_pool_without_ties():
    xs, tangents, cotangents = _inputs(ties=False)
    for ours, flax_pool in _values_and_derivatives(xs, tangents, cotangents):
        for a, b in zip(ours, flax_pool):
            np.testing.assert_array_equal(a, b)


def test_nan_propagates_and_bad_arguments_fail():
    x = jnp.zeros((1, 4, 4, 1)).at[0, 3, 3, 0].set(jnp.nan)
    y = np.asarray(pooling.max_pool_same(x, 2, 2))[0, :, :, 0]
    assert np.isnan(y[1, 1]) and not np.isnan(y[:1]).any() and not np.isnan(y[1, 0])
    with pytest.raises(ValueError, match="B x H x W x C"):
        pooling.max_pool_same(jnp.zeros((4, 4, 1)), 2, 2)
    with pytest.raises(ValueError, match="window=0"):
        pooling.max_pool_same(jnp.zeros((1, 4, 4, 1)), 0, 2)
