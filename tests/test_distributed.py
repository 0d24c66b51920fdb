"""One device or many, one process or two: the same weights and the same update for the same
global batch (normalisation over the global batch, validation gradient = global mean)."""

import os
import socket
import subprocess
import sys

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from jax.sharding import Mesh, NamedSharding, PartitionSpec as P

import multiprocess_worker as worker
from l2rw_jax import methods, model_factory, models, reweight, sharding
from l2rw_jax import step as step_lib
from l2rw_jax.train_state import TrainState

AXIS = "data"
TOL = 1e-6


@pytest.fixture(scope="module")
def problem():
    """The MLP problem of the multi-process worker: apply_fn, tx, params, two global batches."""
    return worker.make_problem()


def _run_single_device(problem, weigh_fn):
    apply_fn, tx, params, batches = problem
    train_step = jax.jit(step_lib.make_train_step(apply_fn, tx, weigh_fn))
    state, weights = worker.initial_state(params, tx), []
    for batch, val_batch in batches:
        state, metrics = train_step(state, batch, val_batch)
        weights.append(metrics["w_B"])
    return state, weights, metrics


def _assert_close(a, b):
    jax.tree.map(lambda x, y: np.testing.assert_allclose(x, y, rtol=TOL, atol=TOL), a, b)


@pytest.fixture(scope="module")
def reference(problem):
    """Single-device runs, one per mode."""
    return {
        mode: _run_single_device(problem, methods.get_scheme("l2rw", mode=mode))
        for mode in worker.MODES
    }


def _mesh(num_devices):
    return Mesh(np.array(jax.devices()[:num_devices]), (AXIS,))


@pytest.mark.parametrize("mode", worker.MODES)
def test_jit_over_a_data_mesh_1_vs_4_devices(problem, reference, mode):
    apply_fn, tx, params, batches = problem
    train_step = step_lib.make_train_step(apply_fn, tx, methods.get_scheme("l2rw", mode=mode))
    runs = {}
    for num_devices in (1, 4):
        mesh = _mesh(num_devices)
        # As the loop does: jit follows the placement of its inputs (l2rw_jax.sharding).
        step = jax.jit(train_step, donate_argnums=0)
        state = sharding.replicate(worker.initial_state(params, tx), mesh)
        weights = []
        for batch, val_batch in batches:
            put = lambda tree: sharding.shard_batch(tree, sharding.batch_sharding(mesh))
            state, metrics = step(state, put(batch), put(val_batch))
            weights.append(metrics["w_B"])
        assert len(state.params["Dense_0"]["kernel"].sharding.device_set) == num_devices
        if num_devices > 1:
            assert metrics["w_B"].sharding.spec == P(AXIS)
            assert state.params["Dense_0"]["kernel"].sharding.is_fully_replicated
        runs[num_devices] = (state.params, weights)
    _assert_close(runs[1], runs[4])
    ref_state, ref_weights, _ = reference[mode]
    _assert_close(runs[4], (ref_state.params, ref_weights))


def test_jit_over_a_data_mesh_with_batchnorm_uses_global_batch_statistics():
    """BatchNorm under jit + sharding normalises with the statistics of the global batch, so
    weights, parameters and running statistics match one device."""
    module = model_factory.create_model("small_cnn", 3, channels=(4,), hidden=8, batch_norm=True)
    params, model_state = models.init_model(module, jax.random.key(0), (1, 6, 6, 1))
    tx = optax.sgd(0.1, momentum=0.9)
    train_step = step_lib.make_train_step(
        models.make_apply_fn(module), tx, methods.get_scheme("l2rw")
    )
    rng = np.random.default_rng(1)
    batch = {
        "image": rng.normal(size=(8, 6, 6, 1)).astype(np.float32),
        "label": rng.integers(0, 3, 8).astype(np.int32),
    }
    val_batch = {
        "image": rng.normal(size=(4, 6, 6, 1)).astype(np.float32),
        "label": rng.integers(0, 3, 4).astype(np.int32),
    }
    runs = {}
    for num_devices in (1, 4):
        mesh = _mesh(num_devices)
        step = jax.jit(train_step, donate_argnums=0)
        # Copies: the step donates the state, and device_put may alias arrays already there.
        state = jax.device_put(
            jax.tree.map(
                jnp.copy,
                TrainState(
                    jnp.zeros([], jnp.int32),
                    params,
                    model_state,
                    tx.init(params),
                    jax.random.key(0),
                    (),
                ),
            ),
            NamedSharding(mesh, P()),
        )
        put = lambda tree: jax.device_put(tree, NamedSharding(mesh, P(AXIS)))
        for _ in range(2):
            state, metrics = step(state, put(batch), put(val_batch))
        runs[num_devices] = (state.params, state.model_state, metrics["w_B"])
    assert float(jnp.max(runs[4][2])) > 0
    _assert_close(runs[1], runs[4])


def _stack_shards(tree, num_devices):
    return jax.tree.map(lambda x: x.reshape((num_devices, -1) + x.shape[1:]), tree)


@pytest.mark.parametrize("mode", worker.MODES)
def test_meta_weights_with_axis_name_under_pmap_and_shard_map(problem, mode):
    apply_fn, tx, params, batches = problem
    batch, val_batch = batches[0]

    def loss_fn(p, b):
        logits, _ = apply_fn(p, {}, b["image"], True)
        return optax.softmax_cross_entropy_with_integer_labels(logits, b["label"])

    # A non-zero momentum trace, so the look-ahead point differs from params.
    opt_state = tx.update(jax.tree.map(jnp.ones_like, params), tx.init(params), params)[1]
    expected = jax.jit(
        lambda p, s: reweight.meta_weights(loss_fn, p, s, tx, batch, val_batch, mode=mode)
    )(params, opt_state)

    def per_device(p, s, b, v):
        return reweight.meta_weights(loss_fn, p, s, tx, b, v, mode=mode, axis_name=AXIS)

    pmapped = jax.pmap(per_device, axis_name=AXIS, in_axes=(None, None, 0, 0))(
        params, opt_state, _stack_shards(batch, 4), _stack_shards(val_batch, 4)
    )
    sharded = jax.jit(
        jax.shard_map(
            per_device,
            mesh=_mesh(4),
            in_specs=(P(), P(), P(AXIS), P(AXIS)),
            out_specs=reweight.MetaWeights(P(AXIS), P(AXIS), P(), P()),
        )
    )(params, opt_state, batch, val_batch)
    for out in (pmapped, sharded):
        _assert_close(out.w.reshape(-1), expected.w)
        _assert_close(out.g.reshape(-1), expected.g)
        _assert_close(out.val_loss, expected.val_loss)
        assert not bool(jnp.any(out.all_clipped))


# The step's own collectives (gradient psum, metrics) do not depend on the mode; both modes
# run under both wrappers in the meta_weights test above.
@pytest.mark.parametrize("mode, wrapper", [("forward", "pmap"), ("reverse", "shard_map")])
def test_train_step_with_axis_name_under_pmap_and_shard_map(problem, reference, mode, wrapper):
    apply_fn, tx, params, batches = problem
    train_step = step_lib.make_train_step(
        apply_fn, tx, methods.get_scheme("l2rw", mode=mode), axis_name=AXIS
    )
    ref_state, ref_weights, ref_metrics = reference[mode]
    if wrapper == "shard_map":
        metric_specs = {k: P(AXIS) if k.endswith("_B") else P() for k in ref_metrics}
        run = jax.jit(
            jax.shard_map(
                train_step,
                mesh=_mesh(4),
                in_specs=(P(), P(AXIS), P(AXIS)),
                out_specs=(P(), metric_specs),
            )
        )
    else:
        pmapped = jax.pmap(train_step, axis_name=AXIS, in_axes=(None, 0, 0), out_axes=(None, 0))
        run = lambda s, b, v: pmapped(s, _stack_shards(b, 4), _stack_shards(v, 4))
    state, weights = worker.initial_state(params, tx), []
    for batch, val_batch in batches:
        state, metrics = run(state, batch, val_batch)
        weights.append(metrics["w_B"].reshape(-1))
    _assert_close((state.params, weights), (ref_state.params, ref_weights))
    for key in ("weighted_loss", "train_loss", "val_loss", "ess", "w_mean_noisy", "w_max", "w_min"):
        np.testing.assert_allclose(metrics[key], ref_metrics[key], rtol=1e-5, err_msg=key)


def _free_port():
    with socket.socket() as s:
        s.bind(("localhost", 0))
        return s.getsockname()[1]


def test_two_processes_with_jax_distributed_agree_with_one(reference, tmp_path):
    out = tmp_path / "two_processes.npz"
    port = _free_port()
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    env = {k: v for k, v in os.environ.items() if k != "XLA_FLAGS"}
    env["PYTHONPATH"] = root + os.pathsep + env.get("PYTHONPATH", "")
    script = os.path.join(root, "tests", "multiprocess_worker.py")
    procs = [
        subprocess.Popen(
            [sys.executable, script, str(i), "2", str(port), str(out)],
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
        )
        for i in range(2)
    ]
    logs = []
    for proc in procs:
        try:
            logs.append(proc.communicate(timeout=240)[0])
        except subprocess.TimeoutExpired:
            for p in procs:
                p.kill()
            raise
    assert all(p.returncode == 0 for p in procs), "\n".join(log[-3000:] for log in logs)
    got = np.load(out)
    for mode in worker.MULTIPROCESS_MODES:
        ref_state, ref_weights, _ = reference[mode]
        for t, w in enumerate(ref_weights):
            np.testing.assert_allclose(got[f"{mode}/w_{t}"], w, rtol=TOL, atol=TOL)
        for i, leaf in enumerate(jax.tree.leaves(ref_state.params)):
            np.testing.assert_allclose(got[f"{mode}/param_{i}"], leaf, rtol=TOL, atol=TOL)
