"""One process of a multi-process ``train_and_evaluate`` run on CPU, for test_multihost.py.

    python tests/multihost_worker.py PROCESS_ID NUM_PROCESSES PORT CONFIG_JSON WORKDIR

Each process owns ``GLOBAL_DEVICES / NUM_PROCESSES`` fake CPU devices; the processes join
through ``l2rw_jax.distributed.initialize`` (coordinator on localhost:PORT, gloo collectives)
and run the loop over one global data mesh into the shared WORKDIR, as the hosts of a pod do.
CONFIG_JSON is the config (``config.to_json()``) the test also runs in one process.
"""

import os
import sys

GLOBAL_DEVICES = 4


def main(process_id: int, num_processes: int, port: int, config_json: str, workdir: str) -> None:
    os.environ["XLA_FLAGS"] = (
        f"--xla_force_host_platform_device_count={GLOBAL_DEVICES // num_processes}"
    )
    os.environ["JAX_PLATFORMS"] = "cpu"
    from l2rw_jax import distributed

    index, count = distributed.initialize(
        f"localhost:{port}", num_processes, process_id, initialization_timeout=60
    )
    import json

    import jax

    from l2rw_jax import config as config_lib
    from l2rw_jax import train

    assert (index, count) == (process_id, num_processes), (index, count)
    assert len(jax.devices()) == GLOBAL_DEVICES
    with open(config_json) as f:
        config = config_lib.validate(json.load(f))
    results = train.train_and_evaluate(config, workdir)
    assert results["completed"], results
    jax.distributed.shutdown()


if __name__ == "__main__":
    sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    main(int(sys.argv[1]), int(sys.argv[2]), int(sys.argv[3]), sys.argv[4], sys.argv[5])
