"""The device backend's training call (:func:`make_train_call`): S steps of K vmapped members
with every batch built on the devices (:mod:`l2rw_jax.device_batches`), under one ``lax.scan``
or as S dispatches of one jitted step; :func:`has_convolution` tells ``build.use_scan`` which
(XLA:CPU runs convolutions inside a loop body on a slow path). :mod:`l2rw_jax.device_backend` wraps
it in the loop's ``Call`` interface.
"""

from __future__ import annotations

import functools
from typing import Callable

import jax
import jax.numpy as jnp
import numpy as np

from l2rw_jax import device_batches
from l2rw_jax import stream_order
from l2rw_jax import xla_options


def make_train_call(
    member_step: Callable,
    mesh: jax.sharding.Mesh,
    *,
    clean_phase: bool,
    augment_images: bool,
    pad: int,
    pad_mode: str,
    log_every: int,
    total_steps: int,
    scan: bool = True,
) -> Callable:
    """The training loop's call: S steps of K vmapped members, batches built on the devices.

    `call(carry, noisy, clean, rows_train_SxKxB, rows_clean_SxKxM, steps_S, phase_first,
    num_steps=S) -> (carry, msum_S)`, with `carry = (state, acc, msum)` of the loop
    (`build.make_loop_step`; every leaf with a leading member axis K), `noisy` / `clean` the
    placed splits, the rows of each step from `stream_order.StreamOrder` (placed) and
    `steps_S` the global steps. Step i trains on the noisy split (or, `clean_phase`, on the
    clean split as training data) at stream step `steps_S[i] - phase_first` and on the clean
    split at `steps_S[i]`, then adds its metrics to `msum`; after a step that ends a logging
    interval (`(t + 1) % log_every == 0` or `t + 1 == total_steps`) `msum` restarts from
    zero, as the tf.data backend's calls restart it. `msum_S[i]` is `msum` after step i,
    before that reset: the host reads the rows of the logging steps. The carry is donated.

    `scan=True`: one jitted call runs the S steps under `lax.scan` (one dispatch per call;
    `num_steps` must be S: each S compiles once).
    `scan=False`: the call dispatches a jitted single step for the first `num_steps` of the S
    rows (`msum_S` is then a list; pad the rows to one S and nothing recompiles);
    for XLA:CPU with convolutional models, where a convolution inside a loop body misses the
    fast kernels (XLA's CPU ConvCanonicalization rewrites top-level convolutions only, so the
    kernel-gradient convolution of a loop body runs on a generic path, 10-50x slower:
    jax-ml/jax#12868) and a scan would be slower than dispatching. Same numbers either way.
    """
    step_K = jax.vmap(member_step)
    batch_options = dict(augment_images=augment_images, pad=pad, pad_mode=pad_mode)

    def body(carry, noisy, clean, rows_train_Kxb, rows_clean_Kxm, t, phase_first):
        batch = device_batches.make_batch(
            clean if clean_phase else noisy,
            rows_train_Kxb,
            t - phase_first,
            mesh,
            stream=stream_order.TRAIN_STREAM,
            as_training=clean_phase,
            **batch_options,
        )
        val_batch = device_batches.make_batch(
            clean, rows_clean_Kxm, t, mesh, stream=stream_order.CLEAN_STREAM, **batch_options
        )
        state, acc, msum = step_K(*carry, batch, val_batch)
        ends_log = ((t + 1) % log_every == 0) | (t + 1 == total_steps)
        restart = jax.tree.map(lambda m: jnp.where(ends_log, jnp.zeros_like(m), m), msum)
        return (state, acc, restart), msum

    # The library's step options (on CPU: parallel convolutions), as the tf.data loop's step.
    jit = functools.partial(xla_options.jit, donate_argnums=0)

    if not scan:

        @jit
        def one(carry, noisy, clean, rows_train, rows_clean, steps_S, phase_first, i):
            return body(carry, noisy, clean, rows_train[i], rows_clean[i], steps_S[i], phase_first)

        def dispatch(
            carry, noisy, clean, rows_train, rows_clean, steps_S, phase_first, num_steps=None
        ):
            num_steps = len(steps_S) if num_steps is None else num_steps
            steps_S, phase_first = jax.device_put((steps_S, phase_first))  # Sent once.
            msum_S = []
            for i in range(num_steps):
                carry, msum = one(
                    carry, noisy, clean, rows_train, rows_clean, steps_S, phase_first, np.int32(i)
                )
                msum_S.append(msum)
            return carry, msum_S

        return dispatch

    @jit
    def scanned(carry, noisy, clean, rows_train, rows_clean, steps_S, phase_first):
        def scan_body(carry, x):
            return body(carry, noisy, clean, *x, phase_first)

        return jax.lax.scan(scan_body, carry, (rows_train, rows_clean, steps_S))

    def call(carry, noisy, clean, rows_train, rows_clean, steps_S, phase_first, num_steps=None):
        if num_steps not in (None, len(steps_S)):
            raise ValueError(
                f"a scanned call runs all its {len(steps_S)} steps, got num_steps={num_steps}."
            )
        return scanned(carry, noisy, clean, rows_train, rows_clean, steps_S, phase_first)

    return call


def has_convolution(fn: Callable, *args) -> bool:
    """Whether `fn(*args)` traces to a convolution, sub-computations (vmap, cond, grad) included.

    Arguments may be `jax.ShapeDtypeStruct`s: only the jaxpr is built.
    """

    def found(jaxpr) -> bool:
        for eqn in jaxpr.eqns:
            if eqn.primitive.name == "conv_general_dilated":
                return True
            for param in eqn.params.values():
                for sub in param if isinstance(param, (tuple, list)) else (param,):
                    if hasattr(sub, "eqns") and found(sub):  # a (closed) sub-jaxpr
                        return True
        return False

    return found(jax.make_jaxpr(fn)(*args))
