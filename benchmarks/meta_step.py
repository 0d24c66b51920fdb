"""Meta-step speed and memory: plain weighted step vs reverse- and forward-mode L2RW steps.

For each row (model, batch B, clean batch M) and each variant (``plain``: the same jitted train
step with ERM weights 1/B; ``reverse`` / ``forward``: the paper's L2RW step in that mode;
``robust``: the recommended variant, ``methods.ROBUST_OPTIONS``, forward mode; ``robust_v1``:
the no-mix variant, ``methods.ROBUST_OPTIONS_V1``) it reports the
median wall-clock ms per step over ``--steps`` (>= 50) steps after ``--warmup`` steps, the
median process CPU time per step (``time.process_time``, all threads: less sensitive than wall
time to other processes on a shared machine), their ratios to the plain step, and two memory
figures:

- ``xla_mib`` (per variant, the peak-memory figure): XLA's compiled memory analysis of the
  step (arguments + outputs + temporaries - aliased/donated bytes), the step's own peak
  buffer footprint;
- ``row_rss_mib`` (per row): the row process's resident-set high-water mark
  (``resource.getrusage``, ``ru_maxrss``) with all variants compiled and run, Python,
  JAX and the compiler included.

Each row runs in its own subprocess, which compiles the variants and then times them
interleaved step by step (plain, reverse, forward, robust, plain, ...), so that on a shared
machine all see the same background load. Optimizer: the paper's recipe (SGD momentum 0.9, weight
decay 2e-4), or ``--optimizer=adam`` (``optax.adam(1e-3)``: the look-ahead's derivative then
goes through ``safe_derivative.finite_derivative``); data: random normal images, random labels,
already on the device.

    python -m benchmarks.meta_step            # full run -> benchmarks/results/meta_step.json
    python -m benchmarks.meta_step --quick    # smoke run -> benchmarks/results/meta_step_quick.json
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import statistics
import subprocess
import sys
import tempfile
import time

import tqdm

ROWS = {
    "lenet_clean100": dict(model="lenet", kw={}, image=(28, 28, 1), batch=100, clean=100, lr=1e-3),
    "lenet_clean10": dict(model="lenet", kw={}, image=(28, 28, 1), batch=100, clean=10, lr=1e-3),
    "resnet32_clean100": dict(
        model="resnet32", kw={}, image=(32, 32, 3), batch=100, clean=100, lr=0.1
    ),
    # The robust-reweighting protocol's model on CIFAR-size images (experiments/robust.py).
    "small_cnn_clean100": dict(
        model="small_cnn", kw={}, image=(32, 32, 3), batch=100, clean=100, lr=0.05
    ),
}
NUM_TRAIN = 20000  # rows of the per-example memory (the robust variant): cifar10_dev's size
# --quick: the same code paths on a tiny ResNet, to check the script end to end in seconds.
QUICK_KW = {"resnet32": {"units_per_stage": 1}}
# "robust": methods.ROBUST_OPTIONS (last-layer meta-gradient, memory, sign map, class balance,
# the excess-loss mix) and "robust_v1": the no-mix variant (ROBUST_OPTIONS_V1), both without the
# warm-up, which does not change the cost of a step; filled in by run_row, where l2rw_jax is
# imported.
VARIANTS = {
    "plain": ("erm", {}),
    "reverse": ("l2rw", {"mode": "reverse"}),
    "forward": ("l2rw", {"mode": "forward"}),
    "robust": ("l2rw", "ROBUST_OPTIONS"),
    "robust_v1": ("l2rw", "ROBUST_OPTIONS_V1"),
    # "robust" inside Gold Loss Correction, timed after its estimate (the corrected
    # loss and the clean rows' share in the real step).
    "robust_glc": ("l2rw+glc", "ROBUST_OPTIONS"),
    # The default: "robust" inside the default's loss correction (config.ROBUST_L2RW's; the
    # step computes the same before and after its trigger; only jnp.where picks).
    "default": ("l2rw+default_correction", "ROBUST_OPTIONS"),
}
TARGETS = {  # the paper-exact steps' targets: max ratio to the plain step on this 2-core CPU
    ("lenet_clean10", "forward"): 1.4,
    ("lenet_clean100", "forward"): 2.2,
    ("lenet_clean10", "reverse"): 2.0,
    ("lenet_clean100", "reverse"): 2.7,
    # the recommended variant at most 2x a plain step with a clean batch of 100
    ("small_cnn_clean100", "robust"): 2.0,
    ("lenet_clean100", "robust"): 2.0,
    ("small_cnn_clean100", "robust_glc"): 2.0,
    ("lenet_clean100", "robust_glc"): 2.0,
    ("small_cnn_clean100", "default"): 2.0,
    ("lenet_clean100", "default"): 2.0,
}


def run_row(
    row_name: str, steps: int, warmup: int, quick: bool, optimizer: str = "sgd"
) -> list[dict]:
    """Compiles the variants of one row, then times them interleaved in this process."""
    import jax
    import jax.numpy as jnp
    import optax

    from l2rw_jax import build, methods, model_factory, models, xla_options
    from l2rw_jax import config as config_lib
    from l2rw_jax import step as step_lib
    from l2rw_jax.train_state import TrainState

    row = ROWS[row_name]
    kw = dict(row["kw"], **(QUICK_KW.get(row["model"], {}) if quick else {}))
    module = model_factory.create_model(row["model"], 10, **kw)
    params, model_state = models.init_model(module, jax.random.key(0), (1, *row["image"]))
    apply_fn = models.make_apply_fn(module)
    tx = optax.chain(optax.add_decayed_weights(2e-4), optax.sgd(row["lr"], momentum=0.9))
    if optimizer == "adam":  # the look-ahead through Adam's moments (finite_derivative's cost)
        tx = optax.adam(1e-3)
    keys = jax.random.split(jax.random.key(2), 4)

    def make_batch(k_image, k_label, size):
        return {
            "image": jax.random.normal(k_image, (size, *row["image"])),
            "label": jax.random.randint(k_label, (size,), 0, 10),
            "index": jnp.arange(size, dtype=jnp.int32),
        }

    batch = make_batch(keys[0], keys[1], row["batch"])
    val_batch = make_batch(keys[2], keys[3], row["clean"])

    compiled, states, info = {}, {}, {}
    for variant, (method, options) in VARIANTS.items():
        if isinstance(options, str):
            options = {k: v for k, v in getattr(methods, options).items() if k != "warmup_steps"}
        scheme = methods.get_scheme(method.split("+")[0], **options)
        if "+" in method:
            kind = method.split("+")[1]
            if kind == "default_correction":
                kind = config_lib.ROBUST_L2RW["correction"]
            scheme = build.with_correction(scheme, kind, 1, num_clean=1000, num_train=NUM_TRAIN)
        # As the loop compiles its steps (on CPU: Eigen convolutions).
        train_step = xla_options.jit(
            step_lib.make_train_step(apply_fn, tx, scheme), donate_argnums=0
        )
        # Each variant owns a copy of the initial state (the step donates it).
        states[variant] = TrainState(
            step=jnp.zeros([], jnp.int32),
            params=jax.tree.map(jnp.copy, params),
            model_state=jax.tree.map(jnp.copy, model_state),
            opt_state=tx.init(params),
            rng=jax.random.key(1),
            method_state=scheme.init(jax.random.key(3), [NUM_TRAIN // 10] * 10)
            if scheme.rewind is None  # a rewinding correction keeps a copy of the parameters
            else scheme.init(jax.random.key(3), [NUM_TRAIN // 10] * 10, params=params),
        )
        t0 = time.perf_counter()
        compiled[variant] = train_step.lower(states[variant], batch, val_batch).compile()
        mem = compiled[variant].memory_analysis()
        info[variant] = {
            "compile_s": time.perf_counter() - t0,
            "xla_mib": (
                mem.argument_size_in_bytes
                + mem.output_size_in_bytes
                + mem.temp_size_in_bytes
                - mem.alias_size_in_bytes
            )
            / 2**20,
        }
        for _ in range(warmup):
            states[variant], _ = compiled[variant](states[variant], batch, val_batch)
        jax.block_until_ready(states[variant])

    # Interleaved (plain, reverse, forward, plain, ...): on a shared machine every variant
    # sees the same background load, so the ratios stay meaningful even when the absolute
    # times move.
    wall = {v: [] for v in VARIANTS}
    cpu = {v: [] for v in VARIANTS}
    finite = {}
    for _ in range(steps):
        for variant in VARIANTS:
            t0, c0 = time.perf_counter(), time.process_time()
            states[variant], metrics = compiled[variant](states[variant], batch, val_batch)
            jax.block_until_ready((states[variant], metrics))
            wall[variant].append(1e3 * (time.perf_counter() - t0))
            cpu[variant].append(1e3 * (time.process_time() - c0))
            finite[variant] = bool(jnp.isfinite(metrics["weighted_loss"]))
    rss_mib = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**10
    return [
        {
            "row": row_name,
            "variant": v,
            "model": row["model"],
            "model_kw": kw,
            "batch": row["batch"],
            "clean": row["clean"],
            "steps": steps,
            "warmup": warmup,
            "optimizer": optimizer,
            "median_ms": statistics.median(wall[v]),
            "min_ms": min(wall[v]),
            "max_ms": max(wall[v]),
            "cpu_median_ms": statistics.median(cpu[v]),
            **info[v],
            "row_rss_mib": rss_mib,
            "finite": finite[v],
        }
        for v in VARIANTS
    ]


def _write_json_atomic(path: str, payload: dict) -> None:
    os.makedirs(os.path.dirname(path), exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=os.path.dirname(path), suffix=".tmp")
    with os.fdopen(fd, "w") as f:
        json.dump(payload, f, indent=2)
    os.chmod(tmp, 0o644)  # mkstemp makes it private; results are meant to be read.
    os.replace(tmp, path)


def _table(results: list[dict]) -> str:
    plain = {r["row"]: r for r in results if r["variant"] == "plain"}
    lines = [
        f"{'row':<18} {'variant':<8} {'ms/step':>8} {'x plain':>8} {'cpu ms':>8} "
        f"{'x plain':>8} {'target':>7} {'xla MiB':>8}"
    ]
    for r in results:
        target = TARGETS.get((r["row"], r["variant"]))
        base = plain[r["row"]]
        lines.append(
            f"{r['row']:<18} {r['variant']:<8} {r['median_ms']:>8.1f} "
            f"{r['median_ms'] / base['median_ms']:>8.2f} {r['cpu_median_ms']:>8.1f} "
            f"{r['cpu_median_ms'] / base['cpu_median_ms']:>8.2f} "
            f"{'' if target is None else f'<={target}':>7} {r['xla_mib']:>8.1f}"
        )
    rss = {r["row"]: r["row_rss_mib"] for r in results}
    lines.append(
        "process RSS high-water per row (MiB): " + ", ".join(f"{k} {v:.0f}" for k, v in rss.items())
    )
    return "\n".join(lines)


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="smoke run: few steps, tiny ResNet")
    parser.add_argument("--steps", type=int, default=None, help="timed steps (default 50)")
    parser.add_argument("--warmup", type=int, default=None, help="untimed steps (default 5)")
    parser.add_argument("--rows", default=",".join(ROWS), help="comma-separated rows")
    parser.add_argument("--out", default=None, help="JSON output path")
    parser.add_argument(
        "--optimizer",
        default="sgd",
        choices=("sgd", "adam"),
        help="sgd: the paper's recipe (default); adam: optax.adam(1e-3)",
    )
    parser.add_argument("--worker", metavar="ROW", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    steps = args.steps if args.steps is not None else (5 if args.quick else 50)
    warmup = args.warmup if args.warmup is not None else (1 if args.quick else 5)
    if not args.quick and steps < 50:
        raise ValueError(f"--steps={steps}: a full run times at least 50 steps (or use --quick).")
    rows = args.rows.split(",")
    unknown = [r for r in rows if r not in ROWS]
    if unknown:
        raise ValueError(f"Unknown rows {unknown}; allowed: {', '.join(ROWS)}.")

    if args.worker:
        print(json.dumps(run_row(args.worker, steps, warmup, args.quick, args.optimizer)))
        return

    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    out = args.out or os.path.join(
        root, "benchmarks", "results", "meta_step_quick.json" if args.quick else "meta_step.json"
    )
    load_before = os.getloadavg()
    results = []
    for row in tqdm.tqdm(rows, desc="rows"):
        cmd = [
            sys.executable,
            "-m",
            "benchmarks.meta_step",
            "--worker",
            row,
            "--steps",
            str(steps),
            "--warmup",
            str(warmup),
            "--optimizer",
            args.optimizer,
        ] + (["--quick"] if args.quick else [])
        proc = subprocess.run(cmd, cwd=root, capture_output=True, text=True, check=False)
        if proc.returncode != 0:
            raise RuntimeError(f"worker {row} failed:\n{proc.stderr[-4000:]}")
        results.extend(json.loads(proc.stdout.strip().splitlines()[-1]))
    import jax

    table = _table(results)
    print(table)
    _write_json_atomic(
        out,
        {
            "machine": {
                "platform": platform.platform(),
                "processor": platform.processor(),
                "cpu_count": os.cpu_count(),
                "python": platform.python_version(),
                "jax": jax.__version__,
                "backend": jax.default_backend(),
                "loadavg_before": load_before,
                "loadavg_after": os.getloadavg(),
            },
            "quick": args.quick,
            "date": time.strftime("%Y-%m-%d %H:%M:%S"),
            "memory_note": "xla_mib: XLA compiled memory analysis of the step (arguments + "
            "outputs + temporaries - aliased/donated bytes); row_rss_mib: "
            "ru_maxrss high-water mark of the row's process (all variants "
            "compiled and run; includes Python, JAX, XLA)",
            "timing_note": "variants interleaved step by step in one process; ms = wall clock, "
            "cpu ms = process CPU time (all threads)",
            "results": results,
            "table": table,
        },
    )
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
