"""XLA compiler options for the library's jitted steps, per backend (measured, see docs/speed.md
"Against PyTorch").

CPU, jaxlib 0.10: convolutions go to XLA's Eigen kernels instead of YNNPACK (dots and
reductions stay on YNNPACK, XLA's default). In jaxlib 0.10.2 YNNPACK's convolutions do not run
in parallel: on an idle 2-core CPU one 5x5 16->32 convolution of a batch of 100 took 5.2 ms on
one core and 5.2 ms on two, whereas Eigen's took 6.0 ms and 3.0 ms (forward; kernel and input
gradients alike). On one core YNNPACK is ~13% faster per step; from two cores on, Eigen wins:
the plain LeNet step went from 39 to 26 ms and the forward-mode L2RW step from 93 to 70 ms
(idle 2-core CPU, interleaved, minimum of 15).

Other jaxlib versions get XLA's defaults: the option is experimental (its name and values may
change, and an unknown option is a compile error), and whether YNNPACK's convolutions run in
parallel there has not been measured. Accelerators (GPU, TPU) get no options.

Why compiler options and not ``XLA_FLAGS``: they apply to the functions the library compiles
and nothing else, need no environment variable set before JAX starts, and leave the user's
own jitted code and flags alone. The same setting as an environment variable, for code
outside the library: ``XLA_FLAGS=--xla_cpu_experimental_ynn_fusion_type=-individual_convolution``.
"""

from __future__ import annotations

import jax

# The default YNNPACK fusion types of jaxlib 0.10.2 (individual dots and convolutions,
# reductions) without the convolutions.
_CPU_JAXLIB_0_10 = {
    "xla_cpu_experimental_ynn_fusion_type": (
        "LIBRARY_FUSION_TYPE_INDIVIDUAL_DOT,LIBRARY_FUSION_TYPE_REDUCE"
    )
}


def step_compiler_options(backend: str | None = None, jaxlib_version: str | None = None) -> dict:
    """``compiler_options`` for ``jax.jit`` of a train or eval step.

    Args:
      backend: ``"cpu"``, ``"gpu"``, ``"tpu"``; defaults to ``jax.default_backend()``.
      jaxlib_version: defaults to the running jaxlib's; only 0.10.x on CPU has options (the
        version they were measured on).

    Example:
      >>> step_compiler_options("gpu")
      {}
      >>> step_compiler_options("cpu", "0.11.0")
      {}
    """
    backend = jax.default_backend() if backend is None else backend
    if jaxlib_version is None:
        import jaxlib  # noqa: PLC0415 (jax itself imports it; only its version is read)

        jaxlib_version = jaxlib.__version__
    if backend == "cpu" and jaxlib_version.split(".")[:2] == ["0", "10"]:
        return dict(_CPU_JAXLIB_0_10)
    return {}


def jit(fun, **jit_kwargs):
    """``jax.jit(fun, compiler_options=step_compiler_options(), **jit_kwargs)``: how the library
    compiles its train and eval steps (the loop on both input backends, the benchmarks), so a
    step timed alone is the step the loop runs."""
    return jax.jit(fun, compiler_options=step_compiler_options(), **jit_kwargs)
