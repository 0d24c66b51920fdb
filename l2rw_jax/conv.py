"""A drop-in ``conv_general_dilated`` that is fast on XLA:CPU for convolutions with few input
channels (the first layer of an image model), for ``flax.linen.Conv(conv_general_dilated=...)``.

Why: XLA:CPU hands convolutions with one or three input channels (a LeNet on MNIST, a CIFAR
stem) to its generic Eigen kernel, which runs at ~9 GFLOP/s on this project's CPU: the 5x5
1 -> 16 convolution of LeNet's first layer takes 7.6 ms for 63 MFLOP, more than the 250-MMAC
convolutions after it. Written as a sum of ``kh * kw * c_in`` shifted input planes times
kernel rows (one fused elementwise loop), the same convolution takes 1.0 ms.

Derivatives: a ``jax.custom_jvp`` whose tangent is XLA's own convolution
(``lax.conv_general_dilated``) of the tangents. Reverse mode transposes that into XLA's
kernel-gradient convolution (cheap: 1.4 ms for LeNet's first layer), whereas transposing the
shifted-plane sum would reduce over the batch once per kernel tap (~80 ms). Forward mode
(``jax.jvp``, the forward-mode meta-step) evaluates the tangent as XLA's convolution, so a
jvp costs what it did before; the primal pass is the cheap one. Numbers: 1 CPU core, batch
100, see docs/speed.md "Against PyTorch".

Anything else (strides, dilation, groups, other layouts, more than ``MAX_TAP_CHANNELS`` input
channels, explicit precision) goes to ``lax.conv_general_dilated`` unchanged.

Where it pays depends on the consumer, so the models opt in per layer (only LeNet does):
XLA fuses the shifted-plane sum into whatever reads it. LeNet pads the convolution's output
for its max-pool, and that pad materialises it once (plain step -13%, forward-mode L2RW step
-10%, 1 core). SmallCNN's stem feeds a ReLU and a max-pool directly; XLA then recomputes the
27 products in every fusion of the pool's and ReLU's derivatives, and its step got 2.8x
slower. Forcing materialisation with a loop over batch chunks fixed that (-18%), but XLA
does not merge identical loops, so the forward-mode meta-step then computed the training
forward pass twice (+5%); a ResNet-32 stem made no difference. Hence opt-in.
"""

from __future__ import annotations

import functools
from typing import Sequence

import jax
import jax.numpy as jnp
from jax import lax
from jax.custom_derivatives import SymbolicZero

# Up to this many input channels the shifted-plane sum wins (measured: 1 and 3 channels; at
# 16 channels XLA hands the convolution to its fast library kernels).
MAX_TAP_CHANNELS = 4
_NHWC = ("NHWC", "HWIO", "NHWC")

Pads = tuple[tuple[int, int], tuple[int, int]]


def _xla_conv(x, w, pads: Pads):
    return lax.conv_general_dilated(x, w, (1, 1), pads, dimension_numbers=_NHWC)


def _shifted_plane_sum(x_BxHxWxC, w_hwio, pads: Pads):
    """``sum_{dy,dx,c} pad(x)[:, dy:dy+H', dx:dx+W', c, None] * w[dy, dx, c, :]``."""
    kh, kw, c_in, _ = w_hwio.shape
    height, width = x_BxHxWxC.shape[1:3]
    out_h = height + sum(pads[0]) - kh + 1
    out_w = width + sum(pads[1]) - kw + 1
    xp = jnp.pad(x_BxHxWxC, ((0, 0), pads[0], pads[1], (0, 0)))
    out = None
    for dy in range(kh):
        for dx in range(kw):
            for c in range(c_in):
                term = (
                    xp[:, dy : dy + out_h, dx : dx + out_w, c, None]
                    * w_hwio[dy, dx, c][None, None, None, :]
                )
                out = term if out is None else out + term
    return out


@functools.partial(jax.custom_jvp, nondiff_argnums=(2,))
def _tap_conv(x, w, pads: Pads):
    return _shifted_plane_sum(x, w, pads)


@functools.partial(_tap_conv.defjvp, symbolic_zeros=True)
def _tap_conv_jvp(pads, primals, tangents):
    x, w = primals
    x_dot, w_dot = tangents
    y = _shifted_plane_sum(x, w, pads)
    # The convolution is bilinear: d(x * w) = x_dot * w + x * w_dot, each an XLA convolution
    # (see the module docstring for why not the shifted-plane sum). The input is usually
    # data (a symbolic zero), so its term is skipped.
    parts = []
    if not isinstance(w_dot, SymbolicZero):
        parts.append(_xla_conv(x, w_dot, pads))
    if not isinstance(x_dot, SymbolicZero):
        parts.append(_xla_conv(x_dot, w, pads))
    if not parts:
        return y, jnp.zeros_like(y)
    return y, parts[0] if len(parts) == 1 else parts[0] + parts[1]


def _tap_pads(
    lhs,
    rhs,
    window_strides,
    padding,
    lhs_dilation,
    rhs_dilation,
    dimension_numbers,
    feature_group_count,
    precision,
    preferred_element_type,
):
    """The (H, W) paddings when the fast path applies, else None."""
    if lhs.ndim != 4 or rhs.ndim != 4 or feature_group_count != 1 or precision is not None:
        return None
    if preferred_element_type is not None or tuple(window_strides) != (1, 1):
        return None
    if any(d not in (None, (1, 1), [1, 1]) for d in (lhs_dilation, rhs_dilation)):
        return None
    if dimension_numbers is None or (
        lax.conv_dimension_numbers(lhs.shape, rhs.shape, dimension_numbers)
        != lax.conv_dimension_numbers(lhs.shape, rhs.shape, _NHWC)
    ):
        return None
    if rhs.shape[2] > MAX_TAP_CHANNELS or lhs.shape[3] != rhs.shape[2]:
        return None
    if isinstance(padding, str):
        pads = lax.padtype_to_pads(lhs.shape[1:3], rhs.shape[:2], (1, 1), padding)
    else:
        pads = padding
    return tuple((int(lo), int(hi)) for lo, hi in pads)


def conv_general_dilated(
    lhs,
    rhs,
    window_strides: Sequence[int],
    padding,
    lhs_dilation=None,
    rhs_dilation=None,
    dimension_numbers=None,
    feature_group_count: int = 1,
    batch_group_count: int = 1,
    precision=None,
    preferred_element_type=None,
) -> jax.Array:
    """``lax.conv_general_dilated`` with a fast path for few input channels (module docstring).

    Fast path: NHWC input, HWIO kernel, NHWC output (Flax's layout), stride 1, no dilation,
    one group, at most ``MAX_TAP_CHANNELS`` input channels. Same values as
    ``lax.conv_general_dilated`` up to float32 summation order; same derivatives.

    Example:
      >>> x, w = jnp.ones((2, 5, 5, 1)), jnp.ones((3, 3, 1, 4))
      >>> y = conv_general_dilated(x, w, (1, 1), "SAME", dimension_numbers=("NHWC", "HWIO", "NHWC"))
      >>> y.shape, float(y[0, 2, 2, 0]), float(y[0, 0, 0, 0])
      ((2, 5, 5, 4), 9.0, 4.0)
    """
    pads = None
    if batch_group_count == 1:
        pads = _tap_pads(
            lhs,
            rhs,
            window_strides,
            padding,
            lhs_dilation,
            rhs_dilation,
            dimension_numbers,
            feature_group_count,
            precision,
            preferred_element_type,
        )
    if pads is None:
        return lax.conv_general_dilated(
            lhs,
            rhs,
            window_strides,
            padding,
            lhs_dilation=lhs_dilation,
            rhs_dilation=rhs_dilation,
            dimension_numbers=dimension_numbers,
            feature_group_count=feature_group_count,
            batch_group_count=batch_group_count,
            precision=precision,
            preferred_element_type=preferred_element_type,
        )
    return _tap_conv(lhs, rhs, pads)
