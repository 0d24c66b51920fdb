"""How far 2 and 4 devices drift from 1 over many L2RW steps (float32 reduction order).

`tests/test_distributed.py` checks 2 steps to 1e-6; this prints the difference after more steps
on the same kind of problem (the 5-feature MLP of `tests/multiprocess_worker.py`, batch 16 + 8
clean, forward-mode L2RW, SGD momentum 0.9 + weight decay), fresh batches each step:

    python -m benchmarks.device_drift --steps=40
"""

from __future__ import annotations

import argparse
import os

os.environ.setdefault("XLA_FLAGS", "--xla_force_host_platform_device_count=4")

import jax  # noqa: E402  (XLA_FLAGS must be set before jax is imported)
import numpy as np  # noqa: E402
import optax  # noqa: E402
from jax.sharding import Mesh, NamedSharding, PartitionSpec as P  # noqa: E402

from l2rw_jax import methods, model_factory, models  # noqa: E402
from l2rw_jax import step as step_lib  # noqa: E402
from l2rw_jax.train_state import TrainState  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=40)
    args = parser.parse_args()
    rng = np.random.default_rng(1)
    module = model_factory.create_model("mlp", 3, hidden=(8,))
    params, _ = models.init_model(module, jax.random.key(0), (1, 5))
    params = jax.tree.map(np.asarray, params)
    tx = optax.chain(optax.add_decayed_weights(1e-3), optax.sgd(0.1, momentum=0.9))
    batches = [
        (
            {
                "image": rng.normal(size=(16, 5)).astype(np.float32),
                "label": rng.integers(0, 3, 16).astype(np.int32),
            },
            {
                "image": rng.normal(size=(8, 5)).astype(np.float32) + 0.3,
                "label": rng.integers(0, 3, 8).astype(np.int32),
            },
        )
        for _ in range(args.steps)
    ]
    train_step = step_lib.make_train_step(
        models.make_apply_fn(module), tx, methods.get_scheme("l2rw", mode="forward")
    )
    final = {}
    for num_devices in (1, 2, 4):
        mesh = Mesh(np.array(jax.devices()[:num_devices]), ("data",))
        step = jax.jit(train_step, donate_argnums=0)  # follows the inputs' placement
        state = TrainState(
            step=np.int32(0),
            params=params,
            model_state={},
            opt_state=tx.init(params),
            rng=jax.random.key(0),
        )
        state = jax.device_put(state, NamedSharding(mesh, P()))
        for batch, val_batch in batches:
            put = lambda tree: jax.device_put(tree, NamedSharding(mesh, P("data")))
            state, _ = step(state, put(batch), put(val_batch))
        final[num_devices] = [np.asarray(x) for x in jax.tree.leaves(state.params)]
    scale = max(float(np.abs(x).max()) for x in final[1])
    for num_devices in (2, 4):
        diff = max(float(np.abs(a - b).max()) for a, b in zip(final[num_devices], final[1]))
        print(
            f"{num_devices} vs 1 device after {args.steps} steps: max |a - b| = {diff:.2e} "
            f"(max |param| {scale:.2f})"
        )


if __name__ == "__main__":
    main()
