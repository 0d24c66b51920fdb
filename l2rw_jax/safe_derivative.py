"""Derivatives without ``0 * inf``: exact where an infinite partial derivative meets a zero
tangent, and a check that says where the derivative really is undefined.

Why. JAX differentiates ``sqrt(x)`` at ``x = 0`` as ``t * 0.5 / sqrt(x) = t * inf``, which is
NaN even when the tangent ``t`` is exactly 0. Adam-type optimizers compute
``m / (sqrt(nu) + eps)``. At a zero gradient on a coordinate whose second moment is 0 (a
fresh state; a dead ReLU unit, an unused class row or a masked weight at any step) ``nu``'s
tangent ``2 (1 - b2) g dg`` is 0 and the derivative of the update exists (``dm / eps``: the
``sqrt(nu)`` term is multiplied by ``m = 0``), yet autodiff returns NaN there, and the NaN
spreads to everything it is summed with. The same happens in a branch that ``where`` does not
select, in reverse mode: its cotangent is 0, but ``0 * (1 / ||g||)`` in global-norm clipping
at ``g = 0``, or ``0 * r`` with RAdam's rectifier ``r = sqrt(rho - 4 ...)`` = NaN before step 5,
is NaN.

How. :func:`finite_derivative` traces ``fn`` to a jaxpr. If it contains no elementwise
primitive whose partial derivatives can be infinite (``_SINGULAR``: ``sqrt``, ``rsqrt``,
``cbrt``, ``div``, ``pow``, ``integer_pow`` with a negative exponent, ``log``, ...), ``fn`` is
differentiated as it is (SGD, momentum, weight decay, piecewise schedules). Otherwise the
jaxpr is re-evaluated, binding every primitive as it is except the singular ones and the
elementwise ones whose partials are NaN at a NaN input (``_SMOOTH``: ``mul``, ``exp``, ...).
Those get a ``jax.custom_jvp`` rule::

    t_out = sum_k where(isfinite(p_k), p_k, 0) * t_k

with ``p_k`` the primitive's own partial derivative (its JVP along a unit tangent). The rule
is linear in the tangents, so ``jax.vjp`` and ``jax.grad`` transpose it as usual, and it is
JAX's rule wherever every partial is finite. It drops a term only where a partial is infinite
or NaN, which changes the result only where that partial meets a non-zero tangent or
cotangent. With a zero tangent, the term is JAX's ``0 * inf``: dropping it takes the slope of
the kink this creates (``sqrt(nu) = sqrt(1 - b2) |g|`` at a fresh Adam state, ``||g||`` in
clipping) as 0, the mean of its two one-sided slopes and JAX's own convention for ``abs`` and
``max`` at 0. In the optimizers checked in ``tests/test_lookahead_derivative.py`` (adam,
adamw, nadam, radam, amsgrad, rmsprop, adagrad, adabelief, global-norm clipping) such a kink
only enters multiplied by a factor that is 0 at that point (``m = 0``), and a NaN partial only
in a branch that ``where`` discards, so the result is the derivative of the update; the tests
compare it with float64 finite differences. If an infinite partial meets a non-zero tangent
the derivative is undefined (``cbrt(g)``, ``g / ||g||`` with no ``eps``) and the dropped term
would make the result silently wrong: :func:`undefined_derivative` reports those cases.

Recursion: ``jit`` / ``closed_call`` / ``remat`` bodies are evaluated inline and ``cond``
branches through ``lax.switch``, with the same rules. ``custom_jvp`` / ``custom_vjp``
functions keep their authors' rules, loops (``scan``, ``while``) are bound as they are (a
singular primitive inside a loop body keeps JAX's rule), and so is ``dot_general``.
"""

from __future__ import annotations

import functools
from typing import Any, Callable

import jax
import jax.numpy as jnp
from jax import lax
from jax.custom_derivatives import SymbolicZero
from jax.extend import core as jex_core
from jax.extend import source_info_util
from jax.extend.core import primitives as P

PyTree = Any

# Elementwise primitives with a partial derivative that is infinite (or NaN) at some finite
# input: roots and negative powers at 0, division by 0, logarithms at 0, inverse
# trigonometric functions at +-1, poles of the gamma family. A function without them is
# differentiated as it is.
_SINGULAR = frozenset(
    {
        P.sqrt_p,
        P.rsqrt_p,
        P.cbrt_p,
        P.div_p,
        P.pow_p,
        P.integer_pow_p,
        P.log_p,
        P.log1p_p,
        P.atan2_p,
        P.asin_p,
        P.acos_p,
        P.atanh_p,
        P.acosh_p,
        P.lgamma_p,
        P.digamma_p,
        P.erf_inv_p,
    }
)
# Elementwise primitives whose partials are finite at finite inputs but NaN at a NaN input
# (made by a singular one, e.g. in a branch that `where` does not select): they get the
# same rule once a function is re-evaluated, so that such a NaN meets its zero cotangent as 0.
_SMOOTH = frozenset(
    {
        P.mul_p,
        P.integer_pow_p,
        P.square_p,
        P.exp_p,
        P.exp2_p,
        P.expm1_p,
        P.tanh_p,
        P.logistic_p,
        P.sin_p,
        P.cos_p,
        P.tan_p,
        P.sinh_p,
        P.cosh_p,
        P.asinh_p,
        P.atan_p,
        P.erf_p,
        P.erfc_p,
    }
)
# Bodies evaluated inline: (primitive, name of its jaxpr parameter).
_INLINE = {P.jit_p: "jaxpr", P.closed_call_p: "call_jaxpr", P.remat_p: "jaxpr"}


def _is_float(eqn) -> bool:
    return all(jnp.issubdtype(v.aval.dtype, jnp.floating) for v in eqn.outvars)


def _is_singular(eqn) -> bool:
    if eqn.primitive not in _SINGULAR or not _is_float(eqn):
        return False
    # y x^(y-1) is finite for y >= 1 (and 0 for y = 0).
    return eqn.primitive is not P.integer_pow_p or eqn.params["y"] < 0


def _gets_rule(eqn) -> bool:
    return _is_singular(eqn) or (eqn.primitive in _SMOOTH and _is_float(eqn))


def _has_singular(jaxpr) -> bool:
    return any(_is_singular(e) for e in jaxpr.eqns) or any(
        _has_singular(sub) for sub in jex_core.subjaxprs(jaxpr)
    )


def _partial(prim, params, primals, k):
    """``d prim(x) / d x_k`` elementwise, from the primitive's own JVP with a unit tangent."""

    def along_k(x_k):
        return prim.bind(*primals[:k], x_k, *primals[k + 1 :], **params)

    return jax.jvp(along_k, (primals[k],), (lax.full_like(primals[k], 1),))[1]


def _finite_rule(prim, params: dict, strict: bool) -> Callable:
    """``prim`` with the tangent rule of the module docstring (``strict``: NaN instead of
    dropping a term whose partial is not finite and whose tangent is not 0). Written with
    ``lax`` rather than ``jnp``: no nested ``jit`` per operation, which would multiply the
    lowering time of an optimizer update by ~5."""

    @jax.custom_jvp
    def bound(*xs):
        return prim.bind(*xs, **params)

    def jvp(primals, tangents):
        out = prim.bind(*primals, **params)
        zeros = lax.full_like(out, 0)
        t_out = None
        for k, t in enumerate(tangents):
            if isinstance(t, SymbolicZero):
                continue
            p = _partial(prim, params, primals, k)
            if t.shape != out.shape:  # a scalar operand (pow's exponent): lax broadcasts it
                t = lax.broadcast_in_dim(t, out.shape, ())
            if strict:
                undefined = lax.select(lax.eq(t, zeros), zeros, lax.full_like(out, jnp.nan))
                term = lax.select(lax.is_finite(p), lax.mul(p, t), undefined)
            else:
                term = lax.mul(lax.select(lax.is_finite(p), p, zeros), t)
            t_out = term if t_out is None else lax.add(t_out, term)
        return out, zeros if t_out is None else t_out

    bound.defjvp(jvp, symbolic_zeros=True)
    return bound


def _eval_jaxpr(jaxpr, consts, args, strict: bool, taps: list | None) -> list:
    """``jax.core.eval_jaxpr`` with the singular and smooth elementwise primitives bound
    through :func:`_finite_rule`.

    ``taps``: when a list, each singular equation appends ``(eqn, inputs, output)`` to it
    (values of the current trace), for :func:`undefined_derivative` to locate a NaN.
    """
    env: dict = {}

    def read(v):
        return v.val if isinstance(v, jex_core.Literal) else env[v]

    env.update(zip(jaxpr.constvars, consts))
    env.update(zip(jaxpr.invars, args))
    for eqn in jaxpr.eqns:
        invals = [read(v) for v in eqn.invars]
        prim = eqn.primitive
        if _gets_rule(eqn):
            outvals = [_finite_rule(prim, eqn.params, strict)(*invals)]
            if taps is not None and _is_singular(eqn):
                taps.append(
                    (
                        eqn,
                        [
                            x
                            for v, x in zip(eqn.invars, invals)
                            if not isinstance(v, jex_core.Literal)
                        ],
                        outvals[0],
                    )
                )
        elif prim in _INLINE:
            body = eqn.params[_INLINE[prim]]
            closed = (
                body if isinstance(body, jex_core.ClosedJaxpr) else jex_core.ClosedJaxpr(body, ())
            )
            outvals = _eval_jaxpr(closed.jaxpr, closed.consts, invals, strict, taps)
        elif prim is P.cond_p:
            index, *operands = invals
            # Values inside the branches belong to the cond's own trace: no taps from there.
            branches = [
                functools.partial(_eval_closed, br, strict=strict) for br in eqn.params["branches"]
            ]
            outvals = jax.lax.switch(index, branches, *operands)
        else:
            bind_params = prim.get_bind_params(eqn.params)
            with eqn.ctx.manager:
                ans = prim.bind(*invals, **bind_params)
            outvals = ans if prim.multiple_results else [ans]
        env.update(zip(eqn.outvars, outvals))
    return [read(v) for v in jaxpr.outvars]


def _eval_closed(closed, *args, strict: bool) -> list:
    return _eval_jaxpr(closed.jaxpr, closed.consts, args, strict, None)


def _interpreted(fn: Callable, strict: bool, taps: list | None) -> Callable:
    def wrapped(*args):
        closed, out_shape = jax.make_jaxpr(fn, return_shape=True)(*args)
        if not _has_singular(closed.jaxpr):
            return fn(*args)  # nothing to replace: the very same computation, no interpreter
        out = _eval_jaxpr(closed.jaxpr, closed.consts, jax.tree.leaves(args), strict, taps)
        return jax.tree.unflatten(jax.tree.structure(out_shape), out)

    return wrapped


def finite_derivative(fn: Callable) -> Callable:
    """``fn`` with the same values and derivative rules that drop ``0 * inf`` terms.

    See the module docstring for the rule and why it is exact where an infinite partial
    derivative only meets zero tangents. ``fn`` takes and returns pytrees of arrays; the
    result is traced once per call (cheap elementwise work for an optimizer update) and,
    when ``fn`` contains no primitive with a possibly infinite partial, just calls ``fn``.

    Example:
      >>> import jax, jax.numpy as jnp
      >>> f = lambda g: g / (jnp.sqrt(g * g) + 1e-2)    # Adam's first step, in one number
      >>> float(jax.grad(f)(0.0)), float(jax.grad(finite_derivative(f))(0.0))
      (nan, 100.0)
    """
    return _interpreted(fn, strict=False, taps=None)


def _all_finite(tree) -> jax.Array:
    """Scalar bool: every inexact number in ``tree`` is finite (integers, float0 skipped)."""
    flags = [
        jnp.all(jnp.isfinite(x))
        for x in jax.tree.leaves(tree)
        if jnp.issubdtype(jnp.result_type(x), jnp.inexact)
    ]
    return jnp.all(jnp.stack(flags)) if flags else jnp.array(True)


def undefined_derivative(
    fn: Callable, primals: tuple, tangents: tuple, args: tuple = ()
) -> str | None:
    """Why the derivative of ``fn(*primals, *args)`` with respect to ``primals``, at
    ``primals`` along ``tangents``, is undefined, or None.

    Evaluates ``jax.jvp`` of ``fn`` (jitted: one compilation) with the strict form of the
    rule of :func:`finite_derivative`: a term whose partial is not finite and whose tangent is
    not 0 becomes NaN instead of being dropped. Returns a one-line reason when the value or
    the directional derivative is not finite: then :func:`finite_derivative` would be NaN or
    silently wrong there. A function without singular primitives makes finite numbers from
    finite ones (barring overflow) and is not evaluated. Says nothing about ``where``-guarded
    singularities, which JAX differentiates as their author chose. ``args`` (pytrees of
    arrays) are passed to the compiled function as arguments, not folded in as constants.
    """
    if not _has_singular(jax.make_jaxpr(fn)(*primals, *args).jaxpr):
        return None

    def finite_flags(primals, tangents, args, taps):
        def fn_and_taps(*primals):
            out = _interpreted(fn, strict=True, taps=taps)(*primals, *args)
            return out, [(ins, out_x) for _, ins, out_x in taps or ()]

        (value, taps_value), (d_value, taps_tangent) = jax.jvp(fn_and_taps, primals, tangents)
        # An origin: a singular operation that makes a non-finite number out of finite ones.
        origins = [
            _all_finite((ins, d_ins)) & ~_all_finite((out_x, d_out))
            for (ins, out_x), (d_ins, d_out) in zip(taps_value, taps_tangent)
        ]
        return _all_finite(value), _all_finite(d_value), origins

    # Run once, unoptimised (XLA's optimisations cost more compile time than they save here);
    # the operations are located in a second pass, only when something is not finite.
    jit = functools.partial(jax.jit, compiler_options={"xla_backend_optimization_level": 0})
    value_ok, derivative_ok, _ = jax.device_get(
        jit(lambda p, t, a: finite_flags(p, t, a, None))(primals, tangents, args)
    )
    if value_ok and derivative_ok:
        return None
    what = "its value" if not value_ok else "its derivative"
    taps: list = []
    origins = jax.device_get(
        jit(lambda p, t, a: finite_flags(p, t, a, taps)[2])(primals, tangents, args)
    )
    culprit = next(
        (
            f"; the first non-finite number comes from {eqn.primitive.name} at "
            f"{source_info_util.summarize(eqn.source_info)}"
            for (eqn, _, _), origin in zip(taps, origins)
            if origin
        ),
        "",
    )
    return f"{what} is not finite{culprit}"
