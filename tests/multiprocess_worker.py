"""One process of a multi-process (multi-host style) L2RW run on CPU, for test_distributed.py.

    python tests/multiprocess_worker.py PROCESS_ID NUM_PROCESSES PORT OUT_NPZ

Each process owns 4 / NUM_PROCESSES fake CPU devices and its slice of every global batch; the
processes meet through ``jax.distributed.initialize`` (coordinator on localhost:PORT, gloo CPU
collectives) and run the jitted L2RW train step over one global 4-device data mesh, the path a
TPU pod or a multi-node GPU job takes. Process 0 writes the weights and parameters to OUT_NPZ.
``make_problem`` is shared with the single-process reference in the test.
"""

import os
import sys

GLOBAL_DEVICES = 4
B, M, NUM_CLASSES, FEATURES, NUM_STEPS = 16, 8, 3, 5, 2
MODES = ("forward", "reverse")
MULTIPROCESS_MODES = ("forward",)  # the collectives are the same in both modes


def make_problem():
    """The model, optimizer, initial parameters and the global batches (host numpy)."""
    import jax
    import numpy as np
    import optax

    from l2rw_jax import model_factory, models

    module = model_factory.create_model("mlp", NUM_CLASSES, hidden=(8,))
    params, _ = models.init_model(module, jax.random.key(0), (1, FEATURES))
    params = jax.tree.map(np.asarray, params)
    tx = optax.chain(optax.add_decayed_weights(1e-3), optax.sgd(0.1, momentum=0.9))
    rng = np.random.default_rng(0)
    batches = []
    for _ in range(NUM_STEPS):
        batches.append(
            (
                {
                    "image": rng.normal(size=(B, FEATURES)).astype(np.float32),
                    "label": rng.integers(0, NUM_CLASSES, B).astype(np.int32),
                    "is_noisy": rng.random(B) < 0.4,
                },
                {
                    "image": rng.normal(size=(M, FEATURES)).astype(np.float32) + 0.3,
                    "label": rng.integers(0, NUM_CLASSES, M).astype(np.int32),
                },
            )
        )
    return models.make_apply_fn(module), tx, params, batches


def initial_state(params, tx):
    import jax
    import jax.numpy as jnp

    from l2rw_jax.train_state import TrainState

    return TrainState(
        step=jnp.zeros([], jnp.int32),
        params=params,
        model_state={},
        opt_state=tx.init(params),
        rng=jax.random.key(7),
    )


def main(process_id: int, num_processes: int, port: int, out_path: str) -> None:
    os.environ["XLA_FLAGS"] = (
        f"--xla_force_host_platform_device_count={GLOBAL_DEVICES // num_processes}"
    )
    os.environ["JAX_PLATFORMS"] = "cpu"
    import jax

    jax.config.update("jax_cpu_collectives_implementation", "gloo")
    jax.distributed.initialize(
        coordinator_address=f"localhost:{port}",
        num_processes=num_processes,
        process_id=process_id,
        initialization_timeout=60,
    )
    import numpy as np
    from jax.experimental import multihost_utils
    from jax.sharding import Mesh, NamedSharding, PartitionSpec as P

    from l2rw_jax import methods
    from l2rw_jax import step as step_lib

    assert jax.process_count() == num_processes and len(jax.devices()) == GLOBAL_DEVICES
    mesh = Mesh(np.array(jax.devices()), ("data",))
    replicated, data = NamedSharding(mesh, P()), NamedSharding(mesh, P("data"))

    def global_batch(host_batch):
        # This process's rows of the global batch, as in a per-host input pipeline.
        rows = host_batch["label"].shape[0] // num_processes
        local = {k: v[process_id * rows : (process_id + 1) * rows] for k, v in host_batch.items()}
        return {k: jax.make_array_from_process_local_data(data, v) for k, v in local.items()}

    apply_fn, tx, params, batches = make_problem()
    results = {}
    for mode in MULTIPROCESS_MODES:
        # As the loop does: jit follows the placement of its inputs.
        train_step = jax.jit(
            step_lib.make_train_step(apply_fn, tx, methods.get_scheme("l2rw", mode=mode)),
            donate_argnums=0,
        )
        # Built inside jit straight onto the mesh: identical on every process.
        state = jax.jit(lambda p: initial_state(p, tx), out_shardings=replicated)(params)
        for t, (batch, val_batch) in enumerate(batches):
            state, metrics = train_step(state, global_batch(batch), global_batch(val_batch))
            results[f"{mode}/w_{t}"] = multihost_utils.process_allgather(metrics["w_B"], tiled=True)
        for i, leaf in enumerate(jax.tree.leaves(state.params)):
            results[f"{mode}/param_{i}"] = np.asarray(leaf.addressable_data(0))
    if process_id == 0:
        tmp = out_path + ".tmp.npz"
        np.savez(tmp, **results)
        os.replace(tmp, out_path)
    jax.distributed.shutdown()


if __name__ == "__main__":
    sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    main(int(sys.argv[1]), int(sys.argv[2]), int(sys.argv[3]), sys.argv[4])
