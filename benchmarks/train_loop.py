"""Does the training loop keep the step fed? Loop steps/s vs the bare jitted step.

For each row, two measurements of the same jitted (vmapped) train step:

- ``bare``: the step alone on one batch already on the device, timed in 10 blocks of
  ``steps / 10`` calls (each ended by ``block_until_ready``), 5 before and 5 after the loop's
  run; the median block (compilation excluded);
- ``loop``: :func:`l2rw_jax.train_and_evaluate` for ``--steps`` steps with everything on:
  the input backend, per-example weight accumulation, metrics to metrics.jsonl and
  TensorBoard every 100 steps, an orbax checkpoint every ``steps / 3`` steps (3000-step rows:
  every 1000, the configs' default) and the tqdm bar; its ``steps_per_s`` (compiling calls
  and the evaluations excluded), once per input backend: ``tfdata`` (host tf.data pipeline,
  one dispatch per step, metrics read one step late) and ``device`` (splits resident on the
  device, ``steps_per_call=100`` steps per jitted ``lax.scan`` call). ``--quick`` runs a tenth
  of the steps with the same number of checkpoints, so it overstates their share.

Targets: tf.data loop >= 90% of bare; device loop >= 1.5x the tf.data loop on the
digits rows and no slower on LeNet. Rows: the quickstart (digits, small CNN, 3
seeds vmapped; a dispatch-bound step of a few ms) for ERM and L2RW, and MNIST LeNet L2RW (the
compute-bound step of the reproduction, 1 seed). ``--repeats=r`` runs each backend's loop r
times, alternating which goes first, and keeps the median (the machine may be shared).

    # -> benchmarks/results/train_loop.json
    L2RW_DEV_DATA=../shared/data python -m benchmarks.train_loop
    # fewer steps, a smoke check
    L2RW_DEV_DATA=../shared/data python -m benchmarks.train_loop --quick
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import os
import platform
import statistics
import tempfile
import time

import ml_collections

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _config(name: str, arg: str | None = None):
    spec = importlib.util.spec_from_file_location(
        name, os.path.join(ROOT, "experiments", "configs", f"{name}.py")
    )
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.get_config(*([arg] if arg else []))


ROWS = {
    "digits_small_cnn_erm_x3": dict(config=("quickstart", None), method="erm", steps=3000),
    "digits_small_cnn_l2rw_x3": dict(config=("quickstart", None), method="l2rw", steps=3000),
    # MNIST from the development copy ($L2RW_DEV_DATA, experiments/configs/dev_data.py).
    "mnist_lenet_l2rw_x1": dict(
        config=("mnist_imbalance", "0.995"),
        method="l2rw",
        steps=200,
        overrides={"num_seeds": 1},
        dev_copy="mnist",
    ),
    # No convolution: on XLA:CPU the device backend scans this one (device_call.make_train_call).
    "digits_mlp_erm_x3": dict(
        config=("quickstart", None),
        method="erm",
        steps=3000,
        overrides={"model": {"name": "mlp", "options": {"hidden": (64,)}}},
    ),
}


def bare_step(config):
    """A function ``blocks(n_blocks, steps) -> [steps/s of each block]`` of the bare step."""
    import jax

    from l2rw_jax import build
    from l2rw_jax import compose
    from l2rw_jax import tfdata_backend
    from l2rw_jax import train
    from l2rw_jax import xla_options

    run = train.build_run(config)
    step = xla_options.jit(
        jax.vmap(build.make_loop_step(run.train_step, True, run.history_steps)),
        donate_argnums=(0, 1),
    )  # as the loop compiles it
    feed = compose.feed(config, "tfdata")
    _, _, train_SxK, clean_SxK = next(tfdata_backend.host_chunks(run.members, feed, 0, 1))
    batch, val_batch = jax.device_put(jax.tree.map(lambda x: x[0], (train_SxK, clean_SxK)))
    carry = [step(*jax.device_put(run.carry0), batch, val_batch)]  # compiles
    jax.block_until_ready(carry)

    def blocks(n_blocks: int, steps: int) -> list[float]:
        rates = []
        for _ in range(n_blocks):
            t = time.perf_counter()
            for _ in range(steps):
                carry[0] = step(*carry[0], batch, val_batch)
            jax.block_until_ready(carry)
            rates.append(steps / (time.perf_counter() - t))
        return rates

    return blocks


BACKENDS = {"tfdata": dict(backend="tfdata"), "device": dict(backend="device", steps_per_call=100)}


def loop_steps_per_s(config, steps: int, backend: str) -> tuple[float, dict]:
    import l2rw_jax

    config = config.copy_and_resolve_references()
    with tempfile.TemporaryDirectory() as workdir:
        config.update(
            dict(
                num_steps=steps,
                optim=dict(lr_boundaries=()),
                loop=dict(
                    log_every=100,
                    eval_every=steps,
                    checkpoint_every=max(steps // 3, 1),
                    **BACKENDS[backend],
                ),
            )
        )
        results = l2rw_jax.train_and_evaluate(config, workdir)
    return results["steps_per_s"], results["timing_s"]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="a tenth of the steps")
    parser.add_argument("--rows", default=",".join(ROWS), help="comma-separated row names")
    parser.add_argument("--out", default=None, help="JSON output path")
    parser.add_argument("--repeats", type=int, default=1, help="loop runs per backend")
    args = parser.parse_args()
    out = args.out or os.path.join(
        ROOT, "benchmarks", "results", "train_loop_quick.json" if args.quick else "train_loop.json"
    )
    os.chdir(ROOT)  # $L2RW_DEV_DATA may be relative to the repository root
    rows = []
    for name in args.rows.split(","):
        spec = ROWS[name]
        steps = max(spec["steps"] // (10 if args.quick else 1), 20)
        config = _config(*spec["config"])
        config.method.name = spec["method"]
        if "dev_copy" in spec:
            from experiments.configs import dev_data

            config.data.dataset = dev_data.source(spec["dev_copy"])
            config.data.corrupt_given_labels = True  # a benchmark's copy: its protocol applies
        config.loop.progress_bar = True
        for field, value in spec.get("overrides", {}).items():
            if field == "model":  # A new model: its options replace the old model's.
                config.model = ml_collections.ConfigDict(value)
            else:
                config.update({field: value})
        load_before = os.getloadavg()
        # Other processes share this CPU: the bare step is timed in blocks before and after
        # the loop, and the median taken, so a change of load hits both sides alike.
        blocks = bare_step(config.copy_and_resolve_references())
        bare_rates = blocks(5, max(steps // 10, 2))
        runs = {b: [] for b in BACKENDS}
        for r in range(args.repeats):
            for backend in list(BACKENDS) if r % 2 == 0 else list(BACKENDS)[::-1]:
                runs[backend].append(loop_steps_per_s(config, steps, backend))
        bare_rates += blocks(5, max(steps // 10, 2))
        bare = statistics.median(bare_rates)
        loop = {b: statistics.median(rate for rate, _ in v) for b, v in runs.items()}
        rows.append(
            dict(
                row=name,
                steps=steps,
                num_seeds=config.num_seeds,
                bare_steps_per_s=bare,
                bare_block_steps_per_s=bare_rates,
                loop_steps_per_s=loop["tfdata"],
                ratio=loop["tfdata"] / bare,
                device_loop_steps_per_s=loop["device"],
                device_over_tfdata=loop["device"] / loop["tfdata"],
                loop_runs={
                    b: [dict(steps_per_s=rate, timing_s=t) for rate, t in v]
                    for b, v in runs.items()
                },
                loadavg=[load_before, os.getloadavg()],
            )
        )
        print(
            f"{name:28s} bare {bare:8.1f}   tfdata loop {loop['tfdata']:8.1f} "
            f"({loop['tfdata'] / bare:6.1%} of bare)   device loop {loop['device']:8.1f} "
            f"({loop['device'] / loop['tfdata']:.2f}x tfdata) steps/s",
            flush=True,
        )
    report = dict(
        machine=dict(
            platform=platform.platform(), cpu_count=os.cpu_count(), python=platform.python_version()
        ),
        date=time.strftime("%Y-%m-%d %H:%M:%S"),
        quick=args.quick,
        target=0.9,
        device_target={"digits": 1.5, "mnist_lenet": 1.0},
        repeats=args.repeats,
        rows=rows,
    )
    os.makedirs(os.path.dirname(out), exist_ok=True)
    tmp = out + ".tmp"
    with open(tmp, "w") as f:
        json.dump(report, f, indent=2)
    os.replace(tmp, out)
    print(
        "\n| row | seeds | bare steps/s | tf.data loop steps/s | tf.data loop / bare | "
        "device loop steps/s | device / tf.data |\n|---|---|---|---|---|---|---|"
    )
    for r in rows:
        print(
            f"| {r['row']} | {r['num_seeds']} | {r['bare_steps_per_s']:.1f} | "
            f"{r['loop_steps_per_s']:.1f} | {r['ratio']:.1%} | "
            f"{r['device_loop_steps_per_s']:.1f} | {r['device_over_tfdata']:.2f}x |"
        )
    print(f"\n{out}")


if __name__ == "__main__":
    main()
