"""conv.conv_general_dilated: the shifted-plane fast path equals XLA's convolution, with the same
derivatives (jvp in x and w, vjp), under vmap (K seeds), and falls back where it does not apply."""

import functools

import jax
import jax.numpy as jnp
import numpy as np

from l2rw_jax import conv

FAST_COMPILE = {"xla_backend_optimization_level": 0}
NHWC = ("NHWC", "HWIO", "NHWC")
# (input channels, kernel, padding): LeNet's first layer (1 channel, 5x5 SAME), a CIFAR stem
# (3 channels, 3x3) with VALID and asymmetric explicit padding, and one that falls back
# (8 input channels > MAX_TAP_CHANNELS).
CASES = [(1, 5, "SAME"), (3, 3, "VALID"), (3, 3, ((0, 1), (2, 1))), (8, 3, "SAME")]


def _both(c_in, k, padding):
    """(ours, XLA's): value, jvp in x and w together, vjp in x and w."""

    def ours(x, w):
        return conv.conv_general_dilated(x, w, (1, 1), padding, dimension_numbers=NHWC)

    def xla(x, w):
        return jax.lax.conv_general_dilated(x, w, (1, 1), padding, dimension_numbers=NHWC)

    def derivatives(f, x, w, x_dot, w_dot, ct):
        y, t_y = jax.jvp(f, (x, w), (x_dot, w_dot))
        return y, t_y, jax.vjp(f, x, w)[1](ct)

    return [functools.partial(derivatives, f) for f in (ours, xla)]


def test_fast_path_values_and_derivatives_equal_xla_convolution():
    rng = np.random.default_rng(0)
    compiled = jax.jit(
        lambda args: [[f(*a) for f in _both(*case)] for case, a in zip(CASES, args)],
        compiler_options=FAST_COMPILE,
    )
    args = []
    for c_in, k, padding in CASES:
        x, x_dot = rng.standard_normal((2, 2, 7, 6, c_in), np.float32)
        w, w_dot = rng.standard_normal((2, k, k, c_in, 4), np.float32)
        y_shape = jax.eval_shape(
            lambda x, w: jax.lax.conv_general_dilated(
                x, w, (1, 1), padding, dimension_numbers=NHWC
            ),
            x,
            w,
        ).shape
        args.append((x, w, x_dot, w_dot, rng.standard_normal(y_shape, np.float32)))
    for ours, xla in compiled(args):
        for a, b in zip(jax.tree.leaves(ours), jax.tree.leaves(xla)):
            np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-5)


def test_fast_path_is_taken_only_where_it_applies():
    def hlo(c_in, **kw):
        x, w = jnp.zeros((2, 6, 6, c_in)), jnp.zeros((3, 3, c_in, 4))
        f = functools.partial(
            conv.conv_general_dilated,
            window_strides=kw.pop("s", (1, 1)),
            padding="SAME",
            dimension_numbers=NHWC,
            **kw,
        )
        return jax.jit(f).lower(x, w).as_text()

    assert "convolution" not in hlo(1) and "convolution" not in hlo(3)
    for text in (hlo(8), hlo(1, s=(2, 2)), hlo(1, rhs_dilation=(2, 2))):
        assert "convolution" in text


def test_vmap_over_seeds_and_flax_conv_parameters_unchanged():
    """K = 3 members with their own kernels (what the training loop vmaps) equal the members
    one at a time; nn.Conv with this function has nn.Conv's parameters and outputs."""
    import flax.linen as nn

    rng = np.random.default_rng(1)
    x_K = rng.standard_normal((3, 2, 6, 6, 1), np.float32)
    w_K = rng.standard_normal((3, 5, 5, 1, 4), np.float32)
    f = functools.partial(
        conv.conv_general_dilated, window_strides=(1, 1), padding="SAME", dimension_numbers=NHWC
    )
    grad = jax.grad(lambda x, w: jnp.sum(jnp.tanh(f(x, w))), argnums=1)
    batched = jax.jit(jax.vmap(lambda x, w: (f(x, w), grad(x, w))), compiler_options=FAST_COMPILE)(
        x_K, w_K
    )
    for k in range(3):
        ref = jax.lax.conv_general_dilated(x_K[k], w_K[k], (1, 1), "SAME", dimension_numbers=NHWC)
        np.testing.assert_allclose(batched[0][k], ref, rtol=1e-5, atol=1e-5)
        ref_grad = jax.grad(
            lambda w: jnp.sum(
                jnp.tanh(
                    jax.lax.conv_general_dilated(x_K[k], w, (1, 1), "SAME", dimension_numbers=NHWC)
                )
            )
        )(w_K[k])
        np.testing.assert_allclose(batched[1][k], ref_grad, rtol=1e-5, atol=1e-5)

    ours = nn.Conv(4, (5, 5), conv_general_dilated=conv.conv_general_dilated)
    plain = nn.Conv(4, (5, 5))
    variables = plain.init(jax.random.key(0), x_K[0])
    assert jax.tree.structure(ours.init(jax.random.key(0), x_K[0])) == jax.tree.structure(variables)
    np.testing.assert_allclose(
        ours.apply(variables, x_K[0]), plain.apply(variables, x_K[0]), rtol=1e-5, atol=1e-5
    )
