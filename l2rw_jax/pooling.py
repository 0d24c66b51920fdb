"""Max-pooling with cheap derivatives on XLA:CPU, in forward and reverse mode.

``max_pool_same(x_BxHxWxC, window, stride)`` has the values of
``flax.linen.max_pool(x, (window, window), (stride, stride), "SAME")``. It is separable (a 1-D
max-pool along W, then along H: the max over a square window is the max of the row maxima)
and each 1-D pool carries a ``jax.custom_jvp`` whose tangent is the input tangent at the
window's argmax, selected by a small int8 index computed once in the forward pass.

Why: the derivatives XLA:CPU gets otherwise are slow. ``reduce_window``'s
(select-and-scatter for the vjp, select-and-gather for the jvp) cost several times a whole LeNet
step; the max over ``window**2`` strided slices with ``jnp.maximum`` (this library's earlier
pool) differentiates through a chain of ``maximum`` ops whose tie-splitting selects XLA
recomputes in each of many full-size padded buffers: about half of a LeNet training step. The
separable custom-jvp pool cuts the plain LeNet step by about 45% on a 2-core CPU
(``benchmarks/vs_pytorch.py``, docs/speed.md "Against PyTorch"); its derivative is one linear
``select`` chain per 1-D pool, which ``jax.jvp`` (the forward-mode meta-step) evaluates as is
and reverse mode transposes into one fused loop per pool.

Derivative: where several inputs of a window share the maximum, the whole tangent/cotangent goes
to the first of them in row-major order, exactly as ``reduce_window``'s select-and-scatter (the
derivative of ``flax.linen.max_pool``) and PyTorch's ``max_pool2d`` do; ``jnp.maximum`` would
split it evenly. A NaN in a window propagates to the output.
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
from jax import lax


def _same_geometry(size: int, window: int, stride: int) -> tuple[int, tuple[int, int]]:
    """Output size and (low, high) padding of TF/Flax ``"SAME"`` pooling along one axis."""
    out = -(-size // stride)
    pad = max((out - 1) * stride + window - size, 0)
    return out, (pad // 2, pad - pad // 2)


def _window_slices(xp: jax.Array, window: int, stride: int, axis: int, out: int):
    """The ``window`` strided slices of the padded ``xp``: slice ``k`` holds offset ``k``."""
    return [
        lax.slice_in_dim(xp, k, k + stride * (out - 1) + 1, stride, axis) for k in range(window)
    ]


def _max_and_argmax(x, window, stride, axis):
    if not 1 <= window <= 127 or stride < 1:  # the argmax is int8
        raise ValueError(f"window={window} must be in [1, 127] and stride={stride} >= 1.")
    out, pads = _same_geometry(x.shape[axis], window, stride)
    widths = [(0, 0)] * x.ndim
    widths[axis] = pads
    xp = jnp.pad(x, widths, constant_values=-jnp.inf)
    best = idx = None
    for k, s in enumerate(_window_slices(xp, window, stride, axis, out)):
        if best is None:
            best, idx = s, jnp.zeros(s.shape, jnp.int8)
        else:
            # Strictly greater: the first maximum wins. `s != s`: a NaN wins and then stays.
            take = (s > best) | (s != s)
            best = jnp.where(take, s, best)
            idx = jnp.where(take, jnp.int8(k), idx)
    return best, idx, widths, out


@functools.partial(jax.custom_jvp, nondiff_argnums=(1, 2, 3))
def max_pool_1d(x: jax.Array, window: int, stride: int, axis: int) -> jax.Array:
    """1-D max-pool of ``x`` along ``axis`` with TF/Flax ``"SAME"`` padding.

    Output size ``ceil(n / stride)`` along ``axis``; the padding (``-inf``) is split as TF
    does, the extra element at the end. Derivative: see the module docstring.
    """
    return _max_and_argmax(x, window, stride, axis)[0]


@max_pool_1d.defjvp
def _max_pool_1d_jvp(window, stride, axis, primals, tangents):
    (x,), (t_x,) = primals, tangents
    best, idx, widths, out = _max_and_argmax(x, window, stride, axis)
    # Linear in t_x (slices and selects only), so reverse mode is its transpose: pads of the
    # masked cotangent that XLA fuses into one loop.
    t_out = None
    for k, s in enumerate(_window_slices(jnp.pad(t_x, widths), window, stride, axis, out)):
        t_out = s if t_out is None else jnp.where(idx == k, s, t_out)
    return best, t_out


def max_pool_same(x_BxHxWxC: jax.Array, window: int, stride: int) -> jax.Array:
    """Square max-pool with TF/Flax ``"SAME"`` padding: ``B x ceil(H/s) x ceil(W/s) x C``.

    Same values as ``flax.linen.max_pool(x, (window, window), (stride, stride), "SAME")``;
    separable, with the cheap derivative of :func:`max_pool_1d` (module docstring).

    Example:
      >>> x = jnp.arange(16.0).reshape(1, 4, 4, 1)
      >>> max_pool_same(x, 3, 2)[0, :, :, 0].tolist()
      [[10.0, 11.0], [14.0, 15.0]]
    """
    if x_BxHxWxC.ndim != 4:
        raise ValueError(f"max_pool_same expects B x H x W x C, got shape {x_BxHxWxC.shape}.")
    # W first, then H: ties then go to the first maximum in row-major order, as in
    # reduce_window (select-and-scatter) and PyTorch.
    return max_pool_1d(max_pool_1d(x_BxHxWxC, window, stride, 2), window, stride, 1)
