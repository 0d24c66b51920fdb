"""Starting a multi-host (multi-process) job: one call, before any JAX work, on every process.

A TPU pod slice, a multi-node GPU job or several CPU processes run one Python process per host;
:func:`initialize` connects them (``jax.distributed.initialize``), after which
``jax.devices()`` lists every process's devices, ``jax.process_index()`` /
``jax.process_count()`` say which process this is, and :func:`l2rw_jax.train_and_evaluate` runs
one data-parallel job over all of them (each process reads and places its own rows, process 0
writes the files; ARCHITECTURE.md "Training loop and workdir").

The entry points call it for ``--distributed`` (``experiments/common.py``); a notebook or a pod
script calls it first thing::

    from l2rw_jax import distributed
    distributed.initialize()            # TPU pod, Slurm, Open MPI: everything auto-detected
    distributed.initialize("10.0.0.1:1234", num_processes=2, process_id=0)   # explicit
"""

from __future__ import annotations

import os
from typing import Sequence

# Environment variables read for the arguments not given (JAX itself reads only the
# coordinator's; the other two are the usual names for hand-rolled launchers).
COORDINATOR_ENV, NUM_PROCESSES_ENV, PROCESS_ID_ENV = (
    "JAX_COORDINATOR_ADDRESS",
    "JAX_NUM_PROCESSES",
    "JAX_PROCESS_ID",
)


def _env_int(name: str) -> int | None:
    value = os.environ.get(name)
    if value in (None, ""):
        return None
    try:
        return int(value)
    except ValueError:
        raise ValueError(f"environment variable {name}={value!r} is not an integer.") from None


def initialize(
    coordinator_address: str | None = None,
    num_processes: int | None = None,
    process_id: int | None = None,
    *,
    local_device_ids: int | Sequence[int] | None = None,
    initialization_timeout: int = 300,
) -> tuple[int, int]:
    """Joins this process to the job (``jax.distributed.initialize``); returns
    ``(jax.process_index(), jax.process_count())``.

    Call it on every process before any JAX computation (even ``jax.devices()``). Arguments
    left None come from the environment: ``JAX_COORDINATOR_ADDRESS``, ``JAX_NUM_PROCESSES``,
    ``JAX_PROCESS_ID``, else from JAX's cluster auto-detection (Cloud TPU, Slurm, Open MPI,
    and ``mpi4py``). On CPU, cross-process collectives use gloo (selected here unless another
    implementation is configured), so several CPU processes form one mesh, as in the tests.
    A second call in the same process (a re-run notebook cell) does nothing.

    Args:
      coordinator_address: ``host:port`` of process 0's coordinator service.
      num_processes: the number of processes in the job.
      process_id: this process's index in ``[0, num_processes)``.
      local_device_ids: restricts this process to these local accelerators (GPU jobs with one
        process per device).
      initialization_timeout: seconds to wait for every process to connect.

    Raises:
      ValueError: an environment variable above that is not an integer; no coordinator /
        process count / process id given and none detected (JAX's message).
      RuntimeError: JAX already ran a computation in this process (too late to join).
    """
    import jax

    if jax.distributed.is_initialized():
        return jax.process_index(), jax.process_count()
    num_processes = num_processes if num_processes is not None else _env_int(NUM_PROCESSES_ENV)
    process_id = process_id if process_id is not None else _env_int(PROCESS_ID_ENV)
    coordinator_address = coordinator_address or os.environ.get(COORDINATOR_ENV) or None
    # Harmless where the devices are accelerators (it configures the CPU client only); without
    # it, older JAX releases run CPU processes with no cross-process collectives.
    if jax.config.jax_cpu_collectives_implementation is None:
        jax.config.update("jax_cpu_collectives_implementation", "gloo")
    jax.distributed.initialize(
        coordinator_address=coordinator_address,
        num_processes=num_processes,
        process_id=process_id,
        local_device_ids=local_device_ids,
        initialization_timeout=initialization_timeout,
    )
    return jax.process_index(), jax.process_count()
