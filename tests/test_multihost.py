"""Multi-host end to end: two processes (gloo CPU collectives) run ``train_and_evaluate`` into one
workdir and end where one process with the same global batch and devices ends."""

import json
import os
import socket
import subprocess
import sys
import time

import numpy as np
import orbax.checkpoint as ocp
import pytest

import multihost_worker as worker
import tiny_data
from l2rw_jax import config as config_lib
from l2rw_jax import stream_order
from l2rw_jax import train

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
STEPS = 4
# Every number results.json holds that does not depend on time.
TIMED = ("wall_time_s", "steps_per_s", "timing_s")


def _config(npz, backend):
    c = tiny_data.tiny_config(
        npz,
        {
            "data": dict(eval_batch_size=32),
            "model": {"name": "mlp", "options": {"hidden": (16,)}},
            "num_steps": STEPS,
            "num_seeds": 2,
            "method": {"name": "l2rw"},
            "loop": dict(
                log_every=2,
                eval_every=2,
                checkpoint_every=2,
                num_devices=worker.GLOBAL_DEVICES,
                backend=backend,
                steps_per_call=2,
            ),
        },
    )
    return config_lib.validate(c)


def _free_port():
    with socket.socket() as s:
        s.bind(("localhost", 0))
        return s.getsockname()[1]


def _run_two_processes(config, workdir, tmp_path):
    config_json = tmp_path / "config.json"
    config_json.write_text(config.to_json())
    env = {k: v for k, v in os.environ.items() if k != "XLA_FLAGS"}
    env["PYTHONPATH"] = ROOT + os.pathsep + env.get("PYTHONPATH", "")
    script, port = os.path.join(ROOT, "tests", "multihost_worker.py"), _free_port()
    procs = [
        subprocess.Popen(
            [sys.executable, script, str(i), "2", str(port), str(config_json), str(workdir)],
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
        )
        for i in range(2)
    ]
    logs = []
    try:
        for proc in procs:
            logs.append(proc.communicate(timeout=300)[0])
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()
    assert all(p.returncode == 0 for p in procs), "\n".join(log[-4000:] for log in logs)


def _final_carry(workdir):
    manager = ocp.CheckpointManager(os.path.join(workdir, "checkpoints"))
    step = manager.latest_step()
    carry = manager.restore(step, args=ocp.args.Composite(carry=ocp.args.StandardRestore())).carry
    manager.close()
    return step, carry


def _files(workdir):
    """Every file's relative path, sorted, checkpoints aside (orbax's own layout); TensorBoard
    event files (named by time and host) as ``tb/events``."""
    out = []
    for folder, _, names in os.walk(workdir):
        rel = os.path.relpath(folder, workdir)
        if rel.split(os.sep)[0] != "checkpoints":
            out += [
                os.path.normpath(os.path.join(rel, "events" if rel == "tb" else n)) for n in names
            ]
    return sorted(out)


def _leaves(tree, prefix=""):
    """{path: numpy value} of a tree of dicts, lists and values."""
    if isinstance(tree, dict):
        return {
            k: v for key, sub in tree.items() for k, v in _leaves(sub, f"{prefix}/{key}").items()
        }
    if isinstance(tree, (list, tuple)):
        return {
            k: v for i, sub in enumerate(tree) for k, v in _leaves(sub, f"{prefix}/{i}").items()
        }
    return {prefix: np.asarray(tree)}


def _assert_same(got, expected, drop=(), rtol=1e-6):
    """Same tree; floats equal to ``rtol`` (atol 1e-6), everything else exactly."""
    if drop:
        got, expected = ({k: v for k, v in d.items() if k not in drop} for d in (got, expected))
    a, b = _leaves(got), _leaves(expected)
    assert a.keys() == b.keys()
    for name, x in b.items():
        if x.dtype.kind == "f":
            np.testing.assert_allclose(a[name], x, rtol=rtol, atol=1e-6, err_msg=name)
        else:
            np.testing.assert_array_equal(a[name], x, err_msg=name)


@pytest.mark.parametrize("backend", ["device", "tfdata"])
def test_two_processes_train_as_one(tmp_path, backend):
    npz = tiny_data.write_tiny_npz(str(tmp_path / "tiny.npz"), num_train=200, num_test=50)
    config = _config(npz, backend)
    one, two = tmp_path / "one", tmp_path / "two"
    t0 = time.time()
    _run_two_processes(config, two, tmp_path)
    t_two = time.time() - t0
    expected = train.train_and_evaluate(config, str(one))

    # The same final state: parameters, optimizer state, per-example accumulators.
    (step1, carry1), (step2, carry2) = _final_carry(one), _final_carry(two)
    assert step1 == step2 == STEPS
    _assert_same(carry2, carry1, rtol=1e-5)

    got = json.loads((two / "results.json").read_text())
    _assert_same(got, expected, drop=TIMED)
    # One copy of every file: the same files, metrics.jsonl with the same records (process 1
    # appending would double them), one TensorBoard event file.
    assert _files(two) == _files(one)
    assert _files(two).count(os.path.join("tb", "events")) == 1
    records = lambda wd: [
        json.loads(line) for line in (wd / "metrics.jsonl").read_text().splitlines()
    ]
    assert len(records(two)) == len(records(one))
    for r2, r1 in zip(records(two), records(one)):
        _assert_same(r2, r1, drop=("steps_per_s",))
    for name in ("example_weights_seed0.npz", "example_weights_seed1.npz"):
        with np.load(one / name) as a, np.load(two / name) as b:
            assert a.files == b.files
            for k in a.files:
                np.testing.assert_allclose(b[k], a[k], rtol=1e-5, atol=1e-6, err_msg=k)
    print(f"two processes: {t_two:.1f} s")


def test_each_process_gets_its_rows_of_every_evaluation_batch():
    # The processes' rows, side by side, are the one-process batches (no example twice).
    rng = np.random.default_rng(0)
    images, labels = rng.integers(0, 255, (11, 3, 3, 1)).astype(np.uint8), np.arange(11) % 3
    args = (images, labels, [0.5], [0.25], 8)
    one = stream_order.test_batches(*args)
    parts = [stream_order.test_batches(*args, process_index=p, process_count=2) for p in (0, 1)]
    assert len(one) == len(parts[0]) == len(parts[1]) == 2
    for b, (b0, b1) in zip(one, zip(*parts)):
        for key in ("image", "label", "mask"):
            np.testing.assert_array_equal(np.concatenate([b0[key], b1[key]]), b[key])
    assert parts[1][1]["mask"].tolist() == [False] * 4  # rows 12-15 of 11: padding
