"""Speed against PyTorch: our train step and L2RW meta-step vs PyTorch's, same CPU, same model.

For each row (model, batch 100, clean batch 100, the paper's optimizer: SGD momentum 0.9,
weight decay 2e-4) it times, interleaved step by step in one run:

- ``jax plain``: our jitted train step (``step.make_train_step`` with ERM weights 1/B);
- ``jax forward`` / ``jax reverse``: our paper-exact L2RW step (``methods.l2rw``, defaults)
  with the meta-gradient in forward / reverse mode;
- ``torch plain``: the same weighted step in PyTorch (``(w * losses).sum().backward()``,
  ``torch.optim.SGD(momentum=0.9, weight_decay=2e-4)``);
- ``torch reverse``: the L2RW meta-step as PyTorch reimplementations write it: per-example
  losses with ``torch.func.functional_call``, ``torch.autograd.grad(sum eps_i C_i, params,
  create_graph=True)``, an SGD-momentum look-ahead written out from the optimizer's momentum
  buffers, the clean loss at the look-ahead, ``torch.autograd.grad`` of it with respect to
  eps, the paper's clip-and-normalise, then the weighted step above;
- ``torch plain_cl`` / ``torch reverse_cl``: the same two in channels-last memory format.

Same everything: the PyTorch models are written here layer for layer like ``l2rw_jax.models``
(same SAME-padding geometry; timed in NCHW and in channels-last, PyTorch's faster CPU layout),
start from *our* initial parameters (copied over, so the init scale is the same by
construction), see the same batches, and use as many threads as the cores the workers may run
on (both pinned to the same ``--cores`` CPUs with ``os.sched_setaffinity``;
``torch.set_num_threads`` to that count, and XLA:CPU sizes its thread pool from the affinity
mask). Before timing, each framework runs 3 steps of every variant from the same state and the
script reports how far apart the two are (losses, and L2RW weights ``w_B``): it checks that the
two implementations compute the same thing.

Each framework runs in its own worker process (its own thread pools, no interference between
OpenMP and XLA's threads); the parent hands out one step at a time, alternating the order every
round, so both see the same background load. Reported per variant: the median wall-clock ms per
step, the median process CPU ms (all threads), the ratio of medians and the median of the
per-round ratios (robust to load that drifts during the run), and the load average.

PyTorch is a benchmark-only dependency (the library never imports it). The CPU build::

    pip install torch==2.13.0 --index-url https://download.pytorch.org/whl/cpu

Run::

    python -m benchmarks.vs_pytorch                       # all rows -> results/vs_pytorch.json
    python -m benchmarks.vs_pytorch --rows=lenet --steps=30
    python -m benchmarks.vs_pytorch --quick               # smoke run, tiny ResNet, few steps
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time

import numpy as np

ROWS = {
    "lenet": dict(model="lenet", image=(28, 28, 1), lr=1e-3),
    "small_cnn": dict(model="small_cnn", image=(32, 32, 3), lr=0.05),
    # 10 timed rounds by default: a PyTorch reverse-mode step takes seconds here.
    "resnet32": dict(model="resnet32", image=(32, 32, 3), lr=0.1, steps=10),
}
BATCH, CLEAN, NUM_CLASSES, MOMENTUM, WEIGHT_DECAY = 100, 100, 10, 0.9, 2e-4
QUICK_KW = {"resnet32": {"units_per_stage": 1}}
VARIANTS = {
    "jax": ("plain", "forward", "reverse"),
    "torch": ("plain", "reverse", "plain_cl", "reverse_cl"),
}
CHECK_STEPS = 3
# Targets: our plain step <= 1.0x PyTorch's plain step; our paper-exact L2RW step (forward
# mode) <= 0.5x PyTorch's reverse-mode meta-step.
TARGETS = {("jax plain", "torch plain"): 1.0, ("jax forward", "torch reverse"): 0.5}
RATIOS = [
    ("jax plain", "torch plain"),
    ("jax plain", "torch plain_cl"),
    ("jax forward", "torch reverse"),
    ("jax forward", "torch reverse_cl"),
    ("jax reverse", "torch reverse"),
    ("jax forward", "jax plain"),
    ("torch reverse", "torch plain"),
]


# --------------------------------------------------------------------------- JAX worker
def _jax_worker(row: dict, kw: dict, data: dict, params_out: str):
    import jax
    import jax.numpy as jnp
    import optax

    from l2rw_jax import methods, model_factory, models, xla_options
    from l2rw_jax import step as step_lib
    from l2rw_jax.train_state import TrainState

    module = model_factory.create_model(row["model"], NUM_CLASSES, **kw)
    params, model_state = models.init_model(module, jax.random.key(0), (1, *row["image"]))
    flat = {}

    def walk(tree, prefix):
        for k, v in tree.items():
            if isinstance(v, dict):
                walk(v, prefix + k + "/")
            else:
                flat[prefix + k] = np.asarray(v)

    walk(params, "")
    np.savez(params_out, **flat)
    apply_fn = models.make_apply_fn(module)
    tx = optax.chain(
        optax.add_decayed_weights(WEIGHT_DECAY), optax.sgd(row["lr"], momentum=MOMENTUM)
    )
    batch = {
        "image": jnp.asarray(data["x"]),
        "label": jnp.asarray(data["y"]),
        "index": jnp.arange(BATCH, dtype=jnp.int32),
    }
    val_batch = {
        "image": jnp.asarray(data["xv"]),
        "label": jnp.asarray(data["yv"]),
        "index": jnp.arange(CLEAN, dtype=jnp.int32),
    }
    schemes = {
        "plain": ("erm", {}),
        "forward": ("l2rw", {"mode": "forward"}),
        "reverse": ("l2rw", {"mode": "reverse"}),
    }

    def fresh_state(scheme):
        return TrainState(
            step=jnp.zeros([], jnp.int32),
            params=jax.tree.map(jnp.copy, params),
            model_state=jax.tree.map(jnp.copy, model_state),
            opt_state=tx.init(params),
            rng=jax.random.key(1),
            method_state=scheme.init(jax.random.key(3), [10] * NUM_CLASSES),
        )

    compiled, states, check = {}, {}, {}
    for variant, (method, options) in schemes.items():
        scheme = methods.get_scheme(method, **options)
        # As the loop compiles its steps (on CPU: Eigen convolutions).
        fn = xla_options.jit(step_lib.make_train_step(apply_fn, tx, scheme), donate_argnums=0)
        state = fresh_state(scheme)
        compiled[variant] = fn.lower(state, batch, val_batch).compile()
        losses, weights = [], []
        for _ in range(CHECK_STEPS):
            state, metrics = compiled[variant](state, batch, val_batch)
            losses.append(float(metrics["weighted_loss"]))
            weights.append(np.asarray(metrics["w_B"]).tolist())
        check[variant] = {"weighted_loss": losses, "w_B": weights}
        states[variant] = state  # timing continues from here

    def step(variant):
        states[variant], metrics = compiled[variant](states[variant], batch, val_batch)
        jax.block_until_ready((states[variant], metrics))

    threads = sum(
        1
        for t in os.listdir("/proc/self/task")
        if "Eigen" in open(f"/proc/self/task/{t}/comm").read()
    )
    return step, check, {"jax": jax.__version__, "xla_eigen_threads": threads}


# ------------------------------------------------------------------------- torch worker
def _torch_models():
    import torch
    import torch.nn.functional as F
    from torch import nn

    class LeNet(nn.Module):
        """``models.LeNet``: 5x5 SAME convs 16/32/64, each 3x3/2 SAME max-pool then ReLU."""

        def __init__(self):
            super().__init__()
            self.convs = nn.ModuleList(
                [nn.Conv2d(i, o, 5, padding=2) for i, o in ((1, 16), (16, 32), (32, 64))]
            )
            self.hidden = nn.Linear(1024, 100)
            self.out = nn.Linear(100, NUM_CLASSES)

        def forward(self, x):
            # TF/Flax SAME pooling: 28 -> 14 and 14 -> 7 pad (0, 1), which is ceil_mode
            # without padding; 7 -> 4 pads (1, 1).
            for conv, pad in zip(self.convs, (0, 0, 1)):
                x = F.relu(F.max_pool2d(conv(x), 3, 2, padding=pad, ceil_mode=True))
            return self.out(F.relu(self.hidden(x.flatten(1))))

        def load(self, p):
            for conv, name in zip(self.convs, ("Conv_0", "Conv_1", "Conv_2")):
                _conv(conv, p[name])
            hidden, out = _dense_pair(p)
            # Flax flattens (h, w, c), PyTorch (c, h, w): permute the input rows.
            k = hidden["kernel"].reshape(4, 4, 64, 100).transpose(2, 0, 1, 3).reshape(1024, 100)
            _dense(self.hidden, {"kernel": k, "bias": hidden["bias"]})
            _dense(self.out, out)

    class SmallCNN(nn.Module):
        """``models.SmallCNN`` (defaults): 3x3 convs 16/32, ReLU, 2x2/2 max-pool, GAP, 64, out."""

        def __init__(self):
            super().__init__()
            self.convs = nn.ModuleList(
                [nn.Conv2d(i, o, 3, padding=1) for i, o in ((3, 16), (16, 32))]
            )
            self.hidden = nn.Linear(32, 64)
            self.out = nn.Linear(64, NUM_CLASSES)

        def forward(self, x):
            for conv in self.convs:
                x = F.max_pool2d(F.relu(conv(x)), 2, 2)
            return self.out(F.relu(self.hidden(x.mean((2, 3)))))

        def load(self, p):
            for conv, name in zip(self.convs, ("Conv_0", "Conv_1")):
                _conv(conv, p[name])
            hidden, out = _dense_pair(p)
            _dense(self.hidden, hidden)
            _dense(self.out, out)

    def bn(c):  # Flax momentum 0.9 = PyTorch momentum 0.1
        return nn.BatchNorm2d(c, eps=1e-5, momentum=0.1)

    class Conv3x3(nn.Module):
        """3x3 SAME conv without bias; stride 2 pads (0, 1) as TF/Flax SAME does."""

        def __init__(self, cin, cout, stride):
            super().__init__()
            self.stride = stride
            self.conv = nn.Conv2d(cin, cout, 3, stride, padding=1 if stride == 1 else 0, bias=False)

        def forward(self, x):
            return self.conv(x if self.stride == 1 else F.pad(x, (0, 1, 0, 1)))

    class PreActUnit(nn.Module):
        def __init__(self, cin, cout, stride, preactivate):
            super().__init__()
            self.bn_pre = bn(cin) if preactivate else None
            self.conv0, self.bn_mid = Conv3x3(cin, cout, stride), bn(cout)
            self.conv1 = Conv3x3(cout, cout, 1)
            self.stride, self.extra = stride, cout - cin

        def forward(self, x):
            h = x if self.bn_pre is None else F.relu(self.bn_pre(x))
            h = self.conv1(F.relu(self.bn_mid(self.conv0(h))))
            shortcut = F.avg_pool2d(x, self.stride) if self.stride > 1 else x
            if self.extra > 0:
                shortcut = F.pad(
                    shortcut, (0, 0, 0, 0, self.extra // 2, self.extra - self.extra // 2)
                )
            return h + shortcut

        def load(self, p):
            _conv(self.conv0.conv, p["Conv_0"])
            _conv(self.conv1.conv, p["Conv_1"])
            if self.bn_pre is not None:
                _bn(self.bn_pre, p["BatchNorm_0"])
                _bn(self.bn_mid, p["BatchNorm_1"])
            else:
                _bn(self.bn_mid, p["BatchNorm_0"])

    class ResNet32(nn.Module):
        """``models.ResNet32``: stem, 3 stages of pre-activation units, BN-ReLU, GAP, out."""

        def __init__(self, units_per_stage=5, widths=(16, 32, 64)):
            super().__init__()
            self.stem, self.bn_stem = Conv3x3(3, widths[0], 1), bn(widths[0])
            units, cin = [], widths[0]
            for stage, cout in enumerate(widths):
                for unit in range(units_per_stage):
                    stride = 2 if (stage > 0 and unit == 0) else 1
                    units.append(PreActUnit(cin, cout, stride, (stage, unit) != (0, 0)))
                    cin = cout
            self.units = nn.ModuleList(units)
            self.bn_final, self.out = bn(cin), nn.Linear(cin, NUM_CLASSES)

        def forward(self, x):
            x = F.relu(self.bn_stem(self.stem(x)))
            for unit in self.units:
                x = unit(x)
            return self.out(F.relu(self.bn_final(x)).mean((2, 3)))

        def load(self, p):
            _conv(self.stem.conv, p["Conv_0"])
            _bn(self.bn_stem, p["BatchNorm_0"])
            for i, unit in enumerate(self.units):
                unit.load(p[f"_PreActUnit_{i}"])
            _bn(self.bn_final, p["BatchNorm_1"])
            _dense(self.out, _dense_pair(p)[1])

    def _t(a):
        return torch.from_numpy(np.ascontiguousarray(a))

    def _conv(m, p):  # Flax HWIO -> PyTorch OIHW
        m.weight.data.copy_(_t(p["kernel"].transpose(3, 2, 0, 1)))
        if m.bias is not None:
            m.bias.data.copy_(_t(p["bias"]))

    def _dense(m, p):
        m.weight.data.copy_(_t(p["kernel"].T))
        m.bias.data.copy_(_t(p["bias"]))

    def _bn(m, p):
        m.weight.data.copy_(_t(p["scale"]))
        m.bias.data.copy_(_t(p["bias"]))

    def _dense_pair(p):
        """(hidden, output) Dense layers at the top level, found by shape, not by name."""
        dense = [
            v for v in p.values() if isinstance(v, dict) and "kernel" in v and v["kernel"].ndim == 2
        ]
        out = [d for d in dense if d["kernel"].shape[1] == NUM_CLASSES]
        hidden = [d for d in dense if d["kernel"].shape[1] != NUM_CLASSES]
        return (hidden[0] if hidden else None), out[0]

    return {"lenet": LeNet, "small_cnn": SmallCNN, "resnet32": ResNet32}


def _torch_worker(row: dict, kw: dict, data: dict, params_in: str, threads: int):
    import torch
    import torch.nn.functional as F
    from torch.func import functional_call

    torch.set_num_threads(threads)
    flat = dict(np.load(params_in))
    nested: dict = {}
    for path, value in flat.items():
        node = nested
        *parents, leaf = path.split("/")
        for k in parents:
            node = node.setdefault(k, {})
        node[leaf] = value
    model = _torch_models()[row["model"]](**kw)
    with torch.no_grad():
        model.load(nested)
    model.train()
    lr = row["lr"]

    def nchw(a):
        return torch.from_numpy(np.ascontiguousarray(a.transpose(0, 3, 1, 2)))

    y, yv = torch.from_numpy(data["y"]).long(), torch.from_numpy(data["yv"]).long()
    inputs = {False: (nchw(data["x"]), nchw(data["xv"]))}
    # channels_last (NHWC in memory): PyTorch's faster layout on CPU (oneDNN, max-pool); the
    # default NCHW is what most code, and the L2RW reimplementations, use. Both are timed.
    inputs[True] = tuple(a.contiguous(memory_format=torch.channels_last) for a in inputs[False])

    def make_opt(m):
        return torch.optim.SGD(m.parameters(), lr=lr, momentum=MOMENTUM, weight_decay=WEIGHT_DECAY)

    def weighted_step(m, opt, w, x):
        opt.zero_grad(set_to_none=True)
        loss = (w * F.cross_entropy(m(x), y, reduction="none")).sum()
        loss.backward()
        opt.step()
        return loss.detach()

    def plain(m, opt, x, xv):
        w = torch.full((BATCH,), 1.0 / BATCH)
        return weighted_step(m, opt, w, x), w

    def reverse(m, opt, x, xv):
        # The meta-step as PyTorch L2RW reimplementations write it (reverse over reverse).
        params = dict(m.named_parameters())
        buffers = {k: v.clone() for k, v in m.named_buffers()}  # meta BN stats thrown away
        eps = torch.zeros(BATCH, requires_grad=True)
        losses = F.cross_entropy(functional_call(m, (params, buffers), (x,)), y, reduction="none")
        grads = torch.autograd.grad((eps * losses).sum(), list(params.values()), create_graph=True)
        lookahead = {}
        for (name, p), g in zip(params.items(), grads):
            d_p = g + WEIGHT_DECAY * p
            buf = opt.state[p].get("momentum_buffer") if p in opt.state else None
            lookahead[name] = p - lr * (d_p if buf is None else MOMENTUM * buf + d_p)
        val_loss = F.cross_entropy(functional_call(m, (lookahead, buffers), (xv,)), yv)
        (g_eps,) = torch.autograd.grad(val_loss, eps)
        w = torch.clamp(-g_eps, min=0.0)
        total = w.sum()
        w = w / total if total > 0 else w
        return weighted_step(m, opt, w.detach(), x), w

    schemes = {
        v: (reverse if v.startswith("reverse") else plain, v.endswith("_cl"))
        for v in VARIANTS["torch"]
    }
    models, opts, check = {}, {}, {}
    state0 = {k: v.clone() for k, v in model.state_dict().items()}
    for variant, (fn, channels_last) in schemes.items():
        m = _torch_models()[row["model"]](**kw)
        m.load_state_dict(state0)
        if channels_last:
            m = m.to(memory_format=torch.channels_last)
        m.train()
        models[variant], opts[variant] = m, make_opt(m)
        losses, weights = [], []
        for _ in range(CHECK_STEPS):
            loss, w = fn(m, opts[variant], *inputs[channels_last])
            losses.append(float(loss))
            weights.append(w.detach().numpy().tolist())
        check[variant] = {"weighted_loss": losses, "w_B": weights}

    def step(variant):
        fn, channels_last = schemes[variant]
        fn(models[variant], opts[variant], *inputs[channels_last])

    return (
        step,
        check,
        {
            "torch": torch.__version__,
            "torch_threads": torch.get_num_threads(),
            "mkldnn": torch.backends.mkldnn.is_available(),
        },
    )


def _serve(
    framework: str, row_name: str, quick: bool, data_path: str, params_path: str, cpus: list[int]
):
    """Worker loop: set up, print one JSON line, then one line per ``step <variant>``."""
    os.sched_setaffinity(0, cpus)  # before jax / torch create their thread pools
    threads = len(cpus)
    row = ROWS[row_name]
    kw = QUICK_KW.get(row["model"], {}) if quick else {}
    data = dict(np.load(data_path))
    if framework == "jax":
        step, check, info = _jax_worker(row, kw, data, params_path)
    else:
        step, check, info = _torch_worker(row, kw, data, params_path, threads)
    print(json.dumps({"check": check, "info": info}), flush=True)
    for line in sys.stdin:
        cmd = line.split()
        if not cmd or cmd[0] == "quit":
            break
        t0, c0 = time.perf_counter(), time.process_time()
        step(cmd[1])
        print(
            json.dumps(
                {
                    "wall_ms": 1e3 * (time.perf_counter() - t0),
                    "cpu_ms": 1e3 * (time.process_time() - c0),
                }
            ),
            flush=True,
        )


# ------------------------------------------------------------------------------ parent
def _spawn(root, framework, row, quick, data_path, params_path, cpus):
    cmd = [
        sys.executable,
        "-m",
        "benchmarks.vs_pytorch",
        "--worker",
        framework,
        "--rows",
        row,
        "--data",
        data_path,
        "--params",
        params_path,
        "--worker-cpus",
        ",".join(map(str, cpus)),
    ]
    proc = subprocess.Popen(
        cmd + (["--quick"] if quick else []),
        cwd=root,
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
    )
    line = proc.stdout.readline()
    if not line:
        raise RuntimeError(f"{framework} worker for {row} failed to start (see its stderr).")
    return proc, json.loads(line)


def _compare(check_jax: dict, check_torch: dict) -> dict:
    """How far the two frameworks are apart on the same 3 steps from the same state."""
    out = {}
    checks = {f"jax {k}": v for k, v in check_jax.items()}
    checks.update({f"torch {k}": v for k, v in check_torch.items()})
    # The last pair is JAX against itself (two exact modes): float32 noise for reference.
    for a, b in (
        ("jax plain", "torch plain"),
        ("jax forward", "torch reverse"),
        ("jax reverse", "torch reverse"),
        ("torch reverse_cl", "torch reverse"),
        ("jax forward", "jax reverse"),
    ):
        lj = np.array(checks[a]["weighted_loss"])
        lt = np.array(checks[b]["weighted_loss"])
        wj, wt = np.array(checks[a]["w_B"]), np.array(checks[b]["w_B"])
        out[f"{a} vs {b}"] = {
            "rel_loss_diff_per_step": (np.abs(lj - lt) / np.abs(lt)).tolist(),
            "max_abs_w_diff_per_step": np.max(np.abs(wj - wt), axis=1).tolist(),
            "max_w": float(np.max(wt)),
        }
    return out


def run_row(
    root: str, row_name: str, steps: int, warmup: int, quick: bool, cores: int | None
) -> dict:
    allowed = sorted(os.sched_getaffinity(0))
    if cores is not None and not 1 <= cores <= len(allowed):
        raise ValueError(f"--cores={cores} must be in [1, {len(allowed)}] (CPUs {allowed}).")
    cpus = allowed[:cores] if cores else allowed
    row = ROWS[row_name]
    rng = np.random.default_rng(0)
    data = {
        "x": rng.standard_normal((BATCH, *row["image"]), np.float32),
        "y": rng.integers(0, NUM_CLASSES, BATCH).astype(np.int32),
        "xv": rng.standard_normal((CLEAN, *row["image"]), np.float32),
        "yv": rng.integers(0, NUM_CLASSES, CLEAN).astype(np.int32),
    }
    with tempfile.TemporaryDirectory() as tmp:
        data_path, params_path = os.path.join(tmp, "data.npz"), os.path.join(tmp, "params.npz")
        np.savez(data_path, **data)
        # JAX first: it writes the initial parameters that PyTorch starts from.
        jax_proc, jax_hello = _spawn(root, "jax", row_name, quick, data_path, params_path, cpus)
        torch_proc, torch_hello = _spawn(
            root, "torch", row_name, quick, data_path, params_path, cpus
        )
    procs = {"jax": jax_proc, "torch": torch_proc}
    keys = [(fw, v) for fw in VARIANTS for v in VARIANTS[fw]]

    def one_step(fw, variant):
        procs[fw].stdin.write(f"step {variant}\n")
        procs[fw].stdin.flush()
        return json.loads(procs[fw].stdout.readline())

    for _ in range(warmup):
        for key in keys:
            one_step(*key)
    load_before = os.getloadavg()
    wall = {k: [] for k in keys}
    cpu = {k: [] for k in keys}
    for i in range(steps):
        # Alternate the order, so neither framework always runs right after the other.
        for key in keys if i % 2 == 0 else keys[::-1]:
            r = one_step(*key)
            wall[key].append(r["wall_ms"])
            cpu[key].append(r["cpu_ms"])
    load_after = os.getloadavg()
    for proc in procs.values():
        proc.stdin.write("quit\n")
        proc.stdin.flush()
        proc.wait()

    results = {
        f"{fw} {v}": {
            "median_ms": statistics.median(wall[(fw, v)]),
            "min_ms": min(wall[(fw, v)]),
            "max_ms": max(wall[(fw, v)]),
            "cpu_median_ms": statistics.median(cpu[(fw, v)]),
            "wall_ms": wall[(fw, v)],
        }
        for fw, v in keys
    }
    ratios = {}
    for a, b in RATIOS:
        per_round = [x / y for x, y in zip(results[a]["wall_ms"], results[b]["wall_ms"])]
        ratios[f"{a} / {b}"] = {
            "ratio_of_medians": results[a]["median_ms"] / results[b]["median_ms"],
            "median_paired_ratio": statistics.median(per_round),
            "cpu_ratio_of_medians": results[a]["cpu_median_ms"] / results[b]["cpu_median_ms"],
            "target": TARGETS.get((a, b)),
        }
    return {
        "row": row_name,
        "model": row["model"],
        "model_kw": QUICK_KW.get(row["model"], {}) if quick else {},
        "image": row["image"],
        "batch": BATCH,
        "clean": CLEAN,
        "lr": row["lr"],
        "steps": steps,
        "warmup": warmup,
        "cpus": cpus,
        "loadavg_before": load_before,
        "loadavg_after": load_after,
        "agreement": _compare(jax_hello["check"], torch_hello["check"]),
        "info": {**jax_hello["info"], **torch_hello["info"]},
        "results": results,
        "ratios": ratios,
    }


def _table(rows: list[dict]) -> str:
    lines = [f"{'row':<10} {'step':<18} {'ms/step':>8} {'min':>7} {'cpu ms':>8}   load"]
    for r in rows:
        for i, (name, res) in enumerate(r["results"].items()):
            load = f"{r['loadavg_before'][0]:.1f}-{r['loadavg_after'][0]:.1f}" if i == 0 else ""
            lines.append(
                f"{r['row'] if i == 0 else '':<10} {name:<18} {res['median_ms']:>8.1f} "
                f"{res['min_ms']:>7.1f} {res['cpu_median_ms']:>8.1f}   {load}"
            )
        for name, q in r["ratios"].items():
            target = "" if q["target"] is None else f"  target <= {q['target']}"
            lines.append(
                f"{'':<10} {name:<34} {q['ratio_of_medians']:>5.2f} (paired "
                f"{q['median_paired_ratio']:.2f}, cpu {q['cpu_ratio_of_medians']:.2f})"
                f"{target}"
            )
    lines.append(
        "ms/step, min: wall clock; cpu ms: process CPU time (all threads); paired: "
        "median over rounds of the per-round ratio"
    )
    for r in rows:
        for name, a in r["agreement"].items():
            loss = ", ".join(f"{d:.1e}" for d in a["rel_loss_diff_per_step"])
            w = ", ".join(f"{d:.1e}" for d in a["max_abs_w_diff_per_step"])
            lines.append(
                f"  {r['row']}: {name}, steps 1-{CHECK_STEPS}: rel loss diff {loss}; "
                f"max |w diff| {w} (max w {a['max_w']:.3f})"
            )
    return "\n".join(lines)


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rows", default=",".join(ROWS), help="comma-separated rows")
    parser.add_argument(
        "--steps", type=int, default=None, help="timed rounds (default 30; ResNet-32 10)"
    )
    parser.add_argument("--warmup", type=int, default=3, help="untimed rounds")
    parser.add_argument("--quick", action="store_true", help="smoke run: tiny ResNet, 3 rounds")
    parser.add_argument(
        "--cores",
        type=int,
        default=None,
        help="pin both frameworks to this many CPUs (default: all allowed)",
    )
    parser.add_argument("--out", default=None, help="JSON output path")
    parser.add_argument("--worker", choices=("jax", "torch"), help=argparse.SUPPRESS)
    parser.add_argument("--data", help=argparse.SUPPRESS)
    parser.add_argument("--params", help=argparse.SUPPRESS)
    parser.add_argument("--worker-cpus", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    rows = args.rows.split(",")
    unknown = [r for r in rows if r not in ROWS]
    if unknown:
        raise ValueError(f"Unknown rows {unknown}; allowed: {', '.join(ROWS)}.")
    if args.worker:
        _serve(
            args.worker,
            rows[0],
            args.quick,
            args.data,
            args.params,
            [int(c) for c in args.worker_cpus.split(",")],
        )
        return
    if args.steps is not None and args.steps < 1:
        raise ValueError(f"--steps={args.steps} must be >= 1.")
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    out = args.out or os.path.join(
        root, "benchmarks", "results", "vs_pytorch_quick.json" if args.quick else "vs_pytorch.json"
    )
    results = []
    for row in rows:
        steps = args.steps or (3 if args.quick else ROWS[row].get("steps", 30))
        results.append(run_row(root, row, steps, args.warmup, args.quick, args.cores))
    table = _table(results)
    print(table)
    os.makedirs(os.path.dirname(out), exist_ok=True)
    with open(out, "w") as f:
        json.dump(
            {
                "machine": {
                    "platform": platform.platform(),
                    "processor": platform.processor(),
                    "cpu_count": os.cpu_count(),
                    "python": platform.python_version(),
                },
                "quick": args.quick,
                "date": time.strftime("%Y-%m-%d %H:%M:%S"),
                "rows": results,
                "table": table,
            },
            f,
            indent=1,
        )
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
