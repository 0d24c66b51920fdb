"""The accelerator reproduction suite: the paper's experiments, planned to a wall-time budget.

    python -m experiments.reproduce                      # suite "paper", --budget_s=480
    python -m experiments.reproduce --suite=smoke --workdir=/tmp/smoke --data_dir=<tiny data>

Parts, in priority order (Ren et al. 2018, arXiv 1803.09050; docs/design.md §4):

- ``mnist_4v9`` — Figure 3: MNIST 4 vs 9, LeNet, 8000 steps, 5 seeds vmapped (one program
  per (method, majority fraction)). Methods in priority order: erm, l2rw (paper-exact:
  ``experiments/configs/mnist_imbalance.py``), hard_mining (batch 500, as the official code)
  — the three of the paper's figure — then ``recommended`` (l2rw with every ``l2rw_*`` field
  at its ``config.default_config()`` value), mwnet, proportion, resample, random; at p =
  0.995, 0.99, 0.98, 0.95, 0.9 (that order: all of p = 0.995 first). Paper at 0.995: ERM
  ~18.2% error, hard mining ~7.7%, L2RW ~3.6%.
- ``cifar_background`` — Table 2: cifar10_dev (20,000 / 5,000 real CIFAR-10 images), 40%
  background flip, 10 clean per class, ResNet-32, erm / l2rw (paper) / recommended /
  proportion, 3 seeds vmapped. Paper (full CIFAR-10): ERM 59.54, L2RW 86.73 +- 0.48.
- ``cifar_uniform`` — the same recipe at 40% uniform flip with 100 clean per class (the
  paper's uniform protocol). Paper (full CIFAR-10, WRN-28-10, not our ResNet-32): ERM 67.97,
  L2RW 86.92 +- 0.19.

Majority fractions are not vmapped members: a run's members differ only by seed
(``l2rw_jax.train_and_evaluate``: member k is seed + k, one ``majority_fraction`` per config), so
each fraction is its own program with its seeds vmapped; they share compiled code through
JAX's persistent compilation cache (``--compilation_cache``; same shapes, same program).

Planning (the plan is printed as a table before anything is trained):

1. A part whose ``reproduce_<part>.json`` is present and complete (in ``--results_dir`` or in
   the committed ``benchmarks/results``) is skipped; a partial one is continued: its finished
   programs are kept, the missing ones planned (CIFAR at the same step count).
2. The part's first chunk is timed. MNIST: every method's first program (p = 0.995) runs
   ``probe_steps`` steps in its real workdir (kept; the program resumes from there). CIFAR:
   erm and l2rw run ``probe_steps`` steps in a scratch workdir (the step count is not known
   yet and the learning-rate schedule is compiled in, so that work is not reused);
   proportion is costed like erm and recommended like l2rw (an upper bound: its meta-step
   goes through the last layer only). Cost of a program of S steps: ``fixed + S * step``,
   with ``step`` the loop's time per step in the calls that did not compile (the timing a
   stopped ``train_and_evaluate`` returns) and ``fixed`` the rest of the probe (data,
   compile, evaluation, checkpoint), times ``--safety``; after each program the method's
   ``fixed`` becomes what the whole program took beyond ``S * step``.
3. MNIST: programs in priority order, each run if its estimate fits what is left, else
   skipped with a note (8000 steps and 5 seeds are never cut). CIFAR: the largest step count
   S of ``steps`` (1k ... 80k) at which every method fits, the learning-rate boundaries
   scaled to it (the paper's 40k / 60k of 80k become S/2, 3S/4); if none, the smallest S
   with the methods that fit in priority order. A part whose minimal run (erm and l2rw at
   its first fraction / smallest S) does not fit is skipped with a note; so is one started
   with less than its ``floor_s`` left.
4. Each part's ``reproduce_<part>.{md,json,png}`` is rewritten (atomically: tmp file, then
   rename) after every finished program, so a run cut off by the command's time limit still
   returns everything finished; ``reproduce_run.json`` records every part's status, notes,
   probes and plan, and is rewritten (with the bundle) after every probe and plan of the
   running part (``running``).
5. The budget bounds the probes too: a probe still running when it runs out is cut (SIGALRM;
   within one jitted call), recorded with ``cut_after_s`` and a note, and nothing more of
   the part runs. SIGTERM (a job's time limit) writes ``reproduce_run.json`` with
   ``interrupted`` and the bundle, then exits with code 143.

Files (``--results_dir``): ``reproduce_<part>.json`` with ``suite``, ``part``, ``status``
(complete | partial), ``device``, ``versions``, ``command``, ``git_commit``, ``budget_s``,
``wall_time_s``, ``plan``, ``programs`` (per program: method, majority_fraction, num_steps,
seeds, final / best / hyper-validation-selected test accuracy (mean, ci95, per seed),
test_error_pct (MNIST), all_zero_steps, wall_time_s, steps_per_s, curve, config),
``paper``, ``protocol``, ``notes``; ``.md`` the same as a table next to the paper's values;
``.png`` error vs majority fraction (MNIST) or test accuracy over training (CIFAR).

On the accelerator machine (one H200; ``python3`` is Python 3.12 with jax 0.11 (CUDA), flax,
optax, orbax, chex, numpy, scipy, pillow, matplotlib, tqdm, absl and PyYAML, but no
TensorFlow, tfds, tensorboardX or ml_collections; nothing installs from a registry there; 64
MiB travel with a command; at most 8 files come back from $OUT). ml_collections travels as its
pure-Python wheel, put on PYTHONPATH as it is (Python imports a wheel's modules straight from
the zip; no pip run there). Why not configs without it: ``train_and_evaluate`` validates
every config through ``ml_collections.ConfigDict``, so dropping it would mean a second config
path in the library, while the wheel is 80 KB and needs only absl and PyYAML, both there.

Prepare here, once, from the repository root (``.carry/`` is in .gitignore)::

    mkdir -p .carry/wheels
    cp ../shared/data/mnist/mnist.npz ../shared/data/cifar10_dev/cifar10_dev_jpeg.npz .carry/
    python3 -m pip download --no-deps --only-binary=:all: ml_collections==1.1.0 -d .carry/wheels
    git rev-parse HEAD > .carry/commit

(34.8 MB: mnist.npz 11.5 MB and the JPEG copy of cifar10_dev 23.3 MB, which the suite decodes
with Pillow into ``<workdir>/data/cifar10_dev.npz``, the very pixels of ``cifar10_dev.npz``:
checked here for all 25,000 images, 4 s.) Then one ``run`` call with ``carry=[".carry"]`` and
``timeout_s=570`` (the budget plus start-up and a margin), command::

    set -o pipefail; export PYTHONUNBUFFERED=1 \\
      PYTHONPATH=$(ls .carry/wheels/ml_collections-*.whl); \\
    python3 -m experiments.reproduce --budget_s=480 --data_dir=.carry --workdir=/tmp/reproduce \\
      --results_dir=/tmp/reproduce/results --bundle=$OUT/reproduce_results.zip \\
      --git_commit=$(cat .carry/commit) 2>&1 | tee $OUT/reproduce_log.txt | grep -v "^[WI]0000"

Afterwards, here: ``unzip -o <files_at>/reproduce_results.zip -d benchmarks/results``, read
the tables, commit them; the next window skips the parts they complete and continues a
partial one. Expected plan, first window: the table of parts ("run" for all three), then
``mnist_4v9`` probes its 8 methods at p = 0.995 (1000 of 8000 steps each) and prints one row
per program (40: method, majority_fraction, steps 8000, seeds 5, estimate_s, decision), all of
p = 0.995 first; whatever does not fit is "skip (budget)", the part is written as partial and
continued by the next window; the CIFAR parts print "not started: N s left" unless MNIST
left them their floor (120 s). Later windows: ``cifar_background``, then ``cifar_uniform``,
each printing the step count S it chose (the same for its 4 methods) and their estimates.
No accelerator window has run this suite yet; the smoke suite's plan (CPU) looks like::

    Plan for cifar_background (smoke: background flip); 3567 s left, estimates x1.15 must
    fit; one program per method at the chosen step count, its seeds vmapped; before it
    starts, each program is decided again with the time left and the costs measured by then:
    | method     | steps | seeds | estimate_s | decision |
    |------------|-------|-------|------------|----------|
    | erm        | 40    | 2     | 4.4        | run      |
    | l2rw       | 40    | 2     | 6.8        | run      |
    | proportion | 40    | 2     | 4.4        | run      |
"""
from __future__ import annotations

import argparse
import contextlib
import importlib.metadata
import io
import json
import os
import platform
import signal
import subprocess
import sys
import threading
import time
import traceback
from typing import Callable, NamedTuple, Sequence

import numpy as np

from experiments import common
from experiments.configs import cifar_background
from experiments.configs import mnist_imbalance
import l2rw_jax
from l2rw_jax import config as config_lib
from l2rw_jax import results as results_lib
from l2rw_jax import workdir

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
COMMITTED_DIR = os.path.join(ROOT, "benchmarks", "results")
SHARED_DATA = os.path.join(ROOT, "..", "shared", "data")

# The recommended default: every method.l2rw option at its default_config() value (ROBUST_L2RW
# and the library's look-ahead), whatever the part's paper config sets.
RECOMMENDED = config_lib.default_config().method.l2rw.to_dict()
LABELS = {"l2rw": "l2rw (paper)", "recommended": "l2rw recommended"}

# Ren et al. 2018 (docs/design.md §4). Keys are this suite's method names.
PAPER = {
    "mnist_4v9": {"source": "Ren et al. 2018, Figure 3 (read off the figure), LeNet, "
                            "mean of 10 runs", "metric": "test error %",
                  "values": {"0.995": {"erm": 18.2, "hard_mining": 7.7, "l2rw": 3.6}}},
    "cifar_background": {"source": "Ren et al. 2018, Table 2, CIFAR-10 (50,000 training "
                                   "images), ResNet-32, 80k steps, mean of 5 splits",
                         "metric": "test accuracy %",
                         "values": {"erm": 59.54, "l2rw": 86.73}, "ci95": {"l2rw": 0.48}},
    "cifar_uniform": {"source": "Ren et al. 2018, Table 1, CIFAR-10 (50,000 training images), "
                                "WRN-28-10 (we use ResNet-32), 60k steps, mean of 5 splits",
                      "metric": "test accuracy %",
                      "values": {"erm": 67.97, "l2rw": 86.92}, "ci95": {"l2rw": 0.19}},
}


class Part(NamedTuple):
    """One experiment of a suite.

    ``methods`` maps a method name to its config overrides, in priority order. A sweep part
    (``fractions`` set) runs ``steps[0]`` steps per program, one program per (fraction,
    method), fractions in priority order; otherwise the plan picks a step count from
    ``steps`` (ascending) and scales the base config's learning-rate boundaries to it.
    The minimal run is the first ``min_methods`` methods (at the first fraction / the
    smallest step count).
    """
    name: str
    title: str
    data: str                        # "mnist" | "cifar10_dev" (files under --data_dir)
    base: Callable[[str], object]    # npz path -> ConfigDict (the paper recipe)
    methods: dict
    fractions: tuple | None
    steps: tuple
    probe_steps: int
    cost_like: dict                  # method -> probed method it is costed like (CIFAR)
    min_methods: int = 2
    floor_s: float = 0.0             # not started with less than this left
    protocol: str = ""


def _mnist_base(path: str):
    c = mnist_imbalance.get_config("0.995")
    c.data.dataset = f"npz:{path}"
    c.data.corrupt_given_labels = True  # the npz copy of MNIST: the protocol's subsampling
    return c


def _cifar_base(noise: str) -> Callable[[str], object]:
    def base(path: str):
        # The recipe of cifar_background.py's "dev" variant (which finds its data through
        # $L2RW_DEV_DATA); this suite finds the copy itself (data_path).
        c = cifar_background.get_config("cifar10")
        c.data.dataset = f"npz:{path}"
        c.data.corrupt_given_labels = True  # the npz copy of CIFAR-10: the protocol's flips
        c.data.hyper_val_size = 2000
        c.data.noise = noise
        if noise == "uniform":
            c.data.clean_per_class = 100   # the paper's uniform-flip protocol: 1000 clean images
        c.num_seeds = 3
        return c
    return base


def _method(name: str, **changes) -> dict:
    """Config overrides of a method: ``method.name = name`` and ``changes`` (nested)."""
    return {**changes, "method": {"name": name, **changes.get("method", {})}}


_MNIST_METHODS = {"erm": _method("erm"), "l2rw": _method("l2rw"),
                  "hard_mining": _method("hard_mining", data={"batch_size": 500}),
                  "recommended": _method("l2rw", method={"l2rw": RECOMMENDED}),
                  "mwnet": _method("mwnet"), "proportion": _method("proportion"),
                  "resample": _method("resample"), "random": _method("random")}
_CIFAR_METHODS = {"erm": _method("erm"), "l2rw": _method("l2rw"),
                  "recommended": _method("l2rw", method={"l2rw": RECOMMENDED}),
                  "proportion": _method("proportion")}
_CIFAR_STEPS = (1000, 2000, 3000, 4000, 6000, 8000, 12000, 16000, 24000, 32000, 40000, 60000,
                80000)
_CIFAR_PROTOCOL = ("cifar10_dev: 20,000 training / 5,000 test images of CIFAR-10 (JPEG "
                   "round-tripped), 2,000 noisy examples held out for hyper-validation; "
                   "ResNet-32, SGD momentum 0.9, lr 0.1, weight decay 2e-4, batch 100 + 100 "
                   "clean, pad-4 crop + flip; the paper's 80k-step schedule compressed to the "
                   "planned steps (x0.1 at 1/2 and 3/4).")

SUITES = {
    "paper": (
        Part("mnist_4v9", "MNIST 4 vs 9 class imbalance (Figure 3)", "mnist", _mnist_base,
             _MNIST_METHODS, (0.995, 0.99, 0.98, 0.95, 0.9), (8000,), 1000, {}, floor_s=60,
             protocol="mnist_imbalance.py: N = 5000, 10 clean images, LeNet, SGD momentum 0.9, "
                      "lr 1e-3, batch 100 (hard_mining 500), 8000 steps, pixels in [0, 1], the "
                      "official code's plain-SGD look-ahead for l2rw; 5 seeds (splits)."),
        Part("cifar_background", "CIFAR-10 (dev subset), 40% background flip, ResNet-32",
             "cifar10_dev", _cifar_base("background"), _CIFAR_METHODS, None, _CIFAR_STEPS,
             200, {"proportion": "erm", "recommended": "l2rw"}, floor_s=120,
             protocol="10 clean images per class. " + _CIFAR_PROTOCOL),
        Part("cifar_uniform", "CIFAR-10 (dev subset), 40% uniform flip, ResNet-32",
             "cifar10_dev", _cifar_base("uniform"), _CIFAR_METHODS, None, _CIFAR_STEPS,
             200, {"proportion": "erm", "recommended": "l2rw"}, floor_s=120,
             protocol="100 clean images per class (the paper's uniform protocol). "
                      + _CIFAR_PROTOCOL),
    ),
}


def _smoke_mnist(path: str):
    c = _mnist_base(path)
    c.update(dict(data=dict(num_train=200, eval_batch_size=64), num_seeds=2, num_steps=40,
                  loop=dict(log_every=10, eval_every=20, checkpoint_every=20, steps_per_call=10)))
    c.model.name = "mlp"
    c.model.options = {"hidden": (16,)}
    return c


def _smoke_cifar(noise: str) -> Callable[[str], object]:
    def base(path: str):
        c = _cifar_base(noise)(path)
        c.update(dict(data=dict(clean_per_class=2, hyper_val_size=20, batch_size=20,
                                clean_batch_size=20, eval_batch_size=50, augment=False),
                      num_seeds=2, num_steps=80, optim=dict(lr_boundaries=(40, 60)),
                      loop=dict(log_every=10, steps_per_call=5)))
        c.model.name = "mlp"
        c.model.options = {"hidden": (16,)}
        return c
    return base


# No augmentation: compiling it is most of a smoke call on XLA:CPU (4 of 6 s).
_SMOKE_CIFAR = "smoke: synthetic 8x8x3 JPEG images, MLP, no augmentation, 2 seeds"
# Tiny versions of the same parts (synthetic 8x8 data, an MLP, tens of steps) for CI.
SUITES["smoke"] = (
    Part("mnist_4v9", "smoke: 4 vs 9 imbalance", "mnist", _smoke_mnist,
         {"erm": _method("erm"), "l2rw": _method("l2rw")}, (0.99, 0.9), (40,), 20, {},
         protocol="smoke: synthetic 8x8 digits, MLP, 40 steps, 2 seeds"),
    Part("cifar_background", "smoke: background flip", "cifar10_dev", _smoke_cifar("background"),
         {"erm": _method("erm"), "l2rw": _method("l2rw"),
          "proportion": _method("proportion")}, None, (20, 40), 10,
         {"proportion": "erm"}, protocol=_SMOKE_CIFAR),
    Part("cifar_uniform", "smoke: uniform flip", "cifar10_dev", _smoke_cifar("uniform"),
         {"erm": _method("erm"), "l2rw": _method("l2rw")}, None, (20, 40), 10, {},
         protocol=_SMOKE_CIFAR),
)

# What every program of the suite sets: the device-resident loop, seeds vmapped.
_RUN_SETTINGS = {"loop": dict(progress_bar=False, vmap_seeds=True, num_devices=1,
                              backend="device")}


# ----------------------------------------------------------------------------- data


def decode_jpeg_npz(src: str, dst: str) -> None:
    """``cifar10_dev_jpeg.npz`` -> an npz with ``x_train, y_train, x_test, y_test`` (uint8).

    ``src`` holds, per split s, ``x_s_jpeg`` (uint8, the JPEG files concatenated),
    ``x_s_offsets`` (int64, N + 1: image i is ``x_s_jpeg[off[i]:off[i+1]]``) and ``y_s``.
    Each image is decoded with Pillow to RGB (``../shared/data/cifar10_dev/README.md``: the
    very pixels of ``cifar10_dev.npz``); ``dst`` is written atomically (uncompressed).

    Raises:
      ValueError: missing keys, offsets that do not cut the bytes into ``len(y_s)`` images,
        or images of different shapes.
    """
    from PIL import Image

    out = {}
    with np.load(src, allow_pickle=False) as f:
        for split in ("train", "test"):
            keys = [f"x_{split}_jpeg", f"x_{split}_offsets", f"y_{split}"]
            missing = [k for k in keys if k not in f.files]
            if missing:
                raise ValueError(f"{src!r} lacks key(s) {missing}; a JPEG npz has "
                                 f"x_<split>_jpeg, x_<split>_offsets, y_<split> for train, test.")
            buf, off, y = f[keys[0]], f[keys[1]].astype(np.int64), f[keys[2]]
            if (off.ndim != 1 or len(off) != len(y) + 1 or off[0] != 0
                    or off[-1] != len(buf) or np.any(np.diff(off) <= 0)):
                raise ValueError(f"{src!r}: x_{split}_offsets must rise from 0 to "
                                 f"{len(buf)} (the byte count) in {len(y) + 1} steps; got "
                                 f"{len(off)} offsets from {off[:1]} to {off[-1:]}.")
            images = [np.asarray(Image.open(io.BytesIO(buf[a:b].tobytes())).convert("RGB"))
                      for a, b in zip(off[:-1], off[1:])]
            shapes = {im.shape for im in images}
            if len(shapes) != 1:
                raise ValueError(f"{src!r}: x_{split} images differ in shape: {sorted(shapes)}.")
            out[f"x_{split}"], out[f"y_{split}"] = np.stack(images), y
    os.makedirs(os.path.dirname(os.path.abspath(dst)), exist_ok=True)
    workdir.write_npz(dst, **out)


def data_path(name: str, data_dir: str, workdir: str) -> str:
    """The npz of ``name`` ("mnist" | "cifar10_dev"): ``<data_dir>/<name>.npz``, else (CIFAR)
    ``<data_dir>/cifar10_dev_jpeg.npz`` decoded once into ``<workdir>/data/``, else the copy
    in ``../shared/data/<name>/``. Raises FileNotFoundError naming every place it looked."""
    tried = [os.path.join(data_dir, f"{name}.npz")]
    if os.path.isfile(tried[0]):
        return tried[0]
    if name == "cifar10_dev":
        jpeg = os.path.join(data_dir, "cifar10_dev_jpeg.npz")
        decoded = os.path.join(workdir, "data", "cifar10_dev.npz")
        tried.append(jpeg)
        if os.path.isfile(jpeg):
            if not os.path.isfile(decoded) or os.path.getmtime(decoded) < os.path.getmtime(jpeg):
                decode_jpeg_npz(jpeg, decoded)
            return decoded
    tried.append(os.path.join(SHARED_DATA, name, f"{name}.npz"))
    if os.path.isfile(tried[-1]):
        return tried[-1]
    raise FileNotFoundError(f"no data for {name!r}: looked for {tried}; copy it into "
                            f"--data_dir (see the experiments/reproduce.py docstring).")


# ----------------------------------------------------------------------------- planning


class Cost(NamedTuple):
    """Estimated seconds of a program: ``fixed_s + steps * step_s``."""
    fixed_s: float
    step_s: float

    def of(self, steps: int) -> float:
        return self.fixed_s + steps * self.step_s


def plan_sweep(estimates: Sequence[tuple[object, float]], remaining_s: float, safety: float
               ) -> list[tuple[object, float, bool]]:
    """Greedy in priority order: ``(key, est_s, run)``, run when ``safety * est_s`` fits in
    what the programs run before it left of ``remaining_s``; a program that does not fit is
    skipped and the next (cheaper ones may fit)."""
    used, out = 0.0, []
    for key, est in estimates:
        run = used + safety * est <= remaining_s
        used += safety * est if run else 0.0
        out.append((key, est, run))
    return out


def plan_steps(costs: dict, methods: Sequence[str], steps: Sequence[int], remaining_s: float,
               safety: float, min_methods: int) -> tuple[int, list[str]] | None:
    """``(S, methods to run)``: the largest S of ``steps`` at which every method fits;
    else the smallest S with the methods that fit in priority order, if the first
    ``min_methods`` are among them; else None. ``costs[m]`` is a :class:`Cost`."""
    for s in sorted(steps, reverse=True):
        if safety * sum(costs[m].of(s) for m in methods) <= remaining_s:
            return s, list(methods)
    s = min(steps)
    chosen = [k for k, _, run in plan_sweep([(m, costs[m].of(s)) for m in methods],
                                            remaining_s, safety) if run]
    if all(m in chosen for m in methods[:min_methods]):
        return s, chosen
    return None


def program_config(part: Part, base, method: str, fraction: float | None = None):
    """A program's config: ``base`` with ``part.methods[method]``'s overrides, the suite's
    run settings (device-resident input, seeds vmapped, no progress bar) and, for a sweep,
    ``majority_fraction = fraction`` and ``num_steps = part.steps[0]``."""
    c = config_lib.validate(base)
    c.update(part.methods[method])
    c.update(_RUN_SETTINGS)
    c = config_lib.validate(c)
    if fraction is not None:
        c.data.majority_fraction, c.num_steps = fraction, part.steps[0]
    return c


def scaled_config(base, steps: int):
    """``base`` at ``steps`` training steps: learning-rate boundaries scaled by
    ``steps / base.num_steps``, evaluation every ``steps / 10``, one checkpoint at the end."""
    c = config_lib.validate(base)
    ratio = steps / base.num_steps
    c.optim.lr_boundaries = tuple(max(1, int(round(b * ratio)))
                                  for b in base.optim.lr_boundaries)
    c.num_steps = steps
    c.loop.eval_every = max(steps // 10, 1)
    c.loop.checkpoint_every = steps
    return c


# ----------------------------------------------------------------------------- the run


class _Ctx(NamedTuple):
    suite: str
    args: argparse.Namespace
    clock: Callable[[], float]
    deadline: float
    header: dict                     # device, versions, command, git_commit, budget_s
    say: Callable[[str], None]
    # progress(part, probes, plan_rows): the running part's probes and plan so far, written
    # into reproduce_run.json and the bundle at once (an interrupted run keeps them).
    progress: Callable[[str, dict, list | None], None] = lambda part, probes, plan: None

    def left(self) -> float:
        return self.deadline - self.clock()


class BudgetSpent(Exception):
    """The budget ran out while a probe was running (raised by :func:`_budget_alarm`)."""


@contextlib.contextmanager
def _budget_alarm(seconds: float):
    """Raises :class:`BudgetSpent` in the block once ``seconds`` have passed (SIGALRM; the
    jitted calls return to Python every few steps, so the block stops within a call). Only
    in the main thread (signals go there); elsewhere the block runs unbounded."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    if seconds <= 0:
        raise BudgetSpent()

    def ring(signum, frame):
        raise BudgetSpent()

    previous = signal.signal(signal.SIGALRM, ring)
    signal.setitimer(signal.ITIMER_REAL, seconds)
    try:
        yield
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, previous)


def _versions() -> dict:
    out = {"python": platform.python_version()}
    for name in ("jax", "jaxlib", "flax", "optax", "orbax-checkpoint", "numpy", "scipy",
                 "pillow", "ml_collections"):
        try:
            out[name] = importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            out[name] = None
    return out


def _device() -> dict:
    import jax

    d = jax.devices()[0]
    return {"platform": d.platform, "kind": d.device_kind, "count": jax.device_count()}


def _git_commit() -> str | None:
    try:
        return subprocess.run(["git", "rev-parse", "HEAD"], cwd=ROOT, capture_output=True,
                              text=True, timeout=10, check=True).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return None  # The device machine gets the working tree without .git.


def _present(ctx: _Ctx, part: Part) -> dict | None:
    """The part's stored record of this suite (results dir first, then the committed one)."""
    for d in (ctx.args.results_dir, COMMITTED_DIR):
        path = os.path.join(d, f"reproduce_{part.name}.json")
        if os.path.isfile(path):
            with open(path) as f:
                record = json.load(f)
            if record.get("suite") == ctx.suite:
                return record
    return None


def _probe(ctx: _Ctx, config, workdir: str, steps: int) -> tuple[Cost, float]:
    """Runs ``steps`` steps of ``config`` in ``workdir`` and times them (compile included):
    ``(cost, wall seconds)``. Bounded by the budget: :class:`BudgetSpent` when it runs out
    first (or before it starts)."""
    c = config_lib.validate(config)
    c.loop.stop_after_steps = steps
    t0 = ctx.clock()
    with _budget_alarm(ctx.left()):
        out = l2rw_jax.train_and_evaluate(c, workdir)
    wall = ctx.clock() - t0
    # The loop's own time per step, from the calls that did not compile; without such calls
    # the whole probe counts per step (an overestimate: fewer programs, never an overrun).
    n = out.get("timed_steps", 0)
    step_s = out["timing_s"]["train_loop_s"] / n if n else wall / steps
    return Cost(max(wall - steps * step_s, 0.0), step_s), wall


def _program_record(method: str, fraction, results: dict, workdir: str, wall: float) -> dict:
    steps, acc = common.test_curve(workdir)
    out = {"method": method, "label": LABELS.get(method, method),
           "majority_fraction": fraction, "num_steps": results["num_steps"],
           "seeds": results["seeds"],
           **{k: results[k] for k in ("final_test_accuracy", "best_test_accuracy",
                                      "selected_test_accuracy", "final_hyperval_accuracy",
                                      "all_zero_steps", "steps_per_s", "config")},
           "wall_time_s": wall,
           "curve": {"steps": steps.tolist(), "test_accuracy_per_seed": acc.tolist()}}
    if fraction is not None:
        acc_K = np.array(results["final_test_accuracy"]["per_seed"])
        out["test_error_pct"] = results_lib.mean_ci95(100 * (1 - acc_K))
    return out


def _run_program(ctx: _Ctx, config, workdir: str, method: str, fraction) -> dict:
    t0 = ctx.clock()
    results = l2rw_jax.train_and_evaluate(config, workdir)
    return _program_record(method, fraction, results, workdir, ctx.clock() - t0)


def run_part(ctx: _Ctx, part: Part, present: dict | None) -> tuple[str, list[str]]:
    """Probes, plans, runs and writes one part; returns (status, notes)."""
    t_part = ctx.clock()
    notes: list[str] = []
    programs = list(present["programs"]) if present else []
    done = {(p["method"], p["majority_fraction"]) for p in programs}
    workdir = os.path.join(ctx.args.workdir, part.name)
    base = part.base(data_path(part.data, ctx.args.data_dir, ctx.args.workdir))
    if present:
        notes.append(f"continued: {len(programs)} programs from an earlier run kept.")

    probes: dict = {}  # method -> its probe: steps, wall_s, fixed_s, step_s (or cut_after_s)

    def write(plan_rows, status):
        _write_part(ctx, part, programs, plan_rows, status, notes, ctx.clock() - t_part, probes)

    def probe(m, config, probe_dir, label) -> Cost | None:
        """The probe of ``m``, recorded (and written at once); None when the budget cut it."""
        t0 = ctx.clock()
        try:
            cost, wall = _probe(ctx, config, probe_dir, part.probe_steps)
        except BudgetSpent:
            probes[m] = {**label, "steps": part.probe_steps, "cut_after_s": ctx.clock() - t0}
            notes.append(f"probe of {m} cut by the budget after {ctx.clock() - t0:.0f} s.")
            ctx.progress(part.name, probes, None)
            return None
        probes[m] = {**label, "steps": part.probe_steps, "wall_s": wall,
                     "fixed_s": cost.fixed_s, "step_s": cost.step_s}
        ctx.progress(part.name, probes, None)
        return cost

    if part.fractions is not None:   # ---- sweep: fixed steps, one program per (p, method)
        steps = part.steps[0]
        keys = [(m, p) for p in part.fractions for m in part.methods if (m, p) not in done]
        configs = {}
        for m, p in keys:
            configs[m, p] = program_config(part, base, m, p)
        costs, probed = {}, {}      # probed: (method, p) -> the probe's wall seconds
        for m in part.methods:       # probe each method's first missing program
            first = next(((mm, p) for mm, p in keys if mm == m), None)
            if first is None:
                continue
            if ctx.left() <= 0:  # the probes alone spent the budget: the rest are not costed
                notes.append(f"not probed (budget spent): {m}.")
                continue
            ctx.say(f"[{part.name}] probe: {m} p={first[1]}, {part.probe_steps} steps")
            cost = probe(m, configs[first], os.path.join(workdir, f"p{first[1]}", m),
                         {"majority_fraction": first[1]})
            if cost is None:
                break
            costs[m], probed[first] = cost, probes[m]["wall_s"]
        est = lambda k: (costs[k[0]].of(steps - part.probe_steps) if k in probed
                         else costs[k[0]].of(steps))
        keys = [k for k in keys if k[0] in costs]
        plan = plan_sweep([(k, est(k)) for k in keys], ctx.left(), ctx.args.safety)
        minimal = [(m, part.fractions[0]) for m in list(part.methods)[:part.min_methods]]
        runs = {k for k, _, run in plan if run}
        plan_rows = [{"method": m, "majority_fraction": p, "steps": steps,
                      "seeds": configs[m, p].num_seeds, "estimate_s": round(e, 1),
                      "decision": "run" if r else "skip (budget)"} for (m, p), e, r in plan]
        _print_plan(ctx, part, plan_rows)
        ctx.progress(part.name, probes, plan_rows)
        if not all(k in runs or k in done for k in minimal):
            notes.append(f"skipped: the minimal run {minimal} does not fit in "
                         f"{ctx.left():.0f} s (estimates in the plan).")
            return "skipped", notes
        for (m, p), _, _ in plan:  # each decided again with what is left and known now
            left, e = ctx.left(), est((m, p))
            if ctx.args.safety * e > left:
                notes.append(f"not run: {m} p={p} (estimate {e:.0f} s, {left:.0f} s left).")
                continue
            ctx.say(f"[{part.name}] run: {m} p={p}, {steps} steps (estimate {e:.0f} s)")
            rec = _run_program(ctx, configs[m, p], os.path.join(workdir, f"p{p}", m), m, p)
            rec["wall_time_s"] += probed.get((m, p), 0.0)  # its first chunk ran as the probe
            programs.append(rec)
            # The measured whole (every evaluation and checkpoint, the compile or the cache
            # hit) is the method's estimate from now on.
            costs[m] = Cost(max(rec["wall_time_s"] - steps * costs[m].step_s, 0.0),
                            costs[m].step_s)
            write(plan_rows, "partial")
        complete = len(programs) == len(part.fractions) * len(part.methods)
    else:                            # ---- step count chosen by the plan
        methods = [m for m in part.methods if (m, None) not in done]
        step_choices = (programs[0]["num_steps"],) if programs else part.steps
        # The paper's schedule, evaluated and checkpointed at the probe's end (so its time
        # includes both and the loop waits for its last steps); the workdir is discarded.
        probe_base = scaled_config(base, max(part.steps))
        probe_base.loop.eval_every = probe_base.loop.checkpoint_every = part.probe_steps
        # A method is probed unless it is costed like another method that is (still) to run.
        like = {m: part.cost_like[m] for m in methods if part.cost_like.get(m) in methods}
        costs = {}
        for m in methods:
            if m not in like:
                ctx.say(f"[{part.name}] probe: {m}, {part.probe_steps} steps (scratch workdir)")
                cost = probe(m, program_config(part, probe_base, m),
                             os.path.join(workdir, "probe", m), {})
                if cost is None:
                    break
                costs[m] = cost
        costs.update({m: costs[other] for m, other in like.items() if other in costs})
        methods = [m for m in methods if m in costs]  # a method not costed is not planned
        choice = plan_steps(costs, methods, step_choices, ctx.left(), ctx.args.safety,
                            part.min_methods if not programs else 0)
        s = choice[0] if choice else min(step_choices)
        plan_rows = [{"method": m, "steps": s, "seeds": base.num_seeds,
                      "estimate_s": round(costs[m].of(s), 1),
                      "decision": "run" if choice and m in choice[1] else "skip (budget)"}
                     for m in methods]
        _print_plan(ctx, part, plan_rows)
        ctx.progress(part.name, probes, plan_rows)
        if choice is None:
            notes.append(f"skipped: the minimal run ({list(part.methods)[:part.min_methods]} "
                         f"at {s} steps) does not fit in {ctx.left():.0f} s.")
            return "skipped", notes
        s = choice[0]
        config_s = scaled_config(base, s)
        for m in methods:  # each decided again with what is left and known now
            left, e = ctx.left(), costs[m].of(s)
            if ctx.args.safety * e > left:
                notes.append(f"not run: {m} at {s} steps (estimate {e:.0f} s, {left:.0f} s "
                             f"left).")
                continue
            ctx.say(f"[{part.name}] run: {m}, {s} steps (estimate {e:.0f} s)")
            rec = _run_program(ctx, program_config(part, config_s, m),
                               os.path.join(workdir, f"S{s}", m), m, None)
            programs.append(rec)
            measured = Cost(max(rec["wall_time_s"] - s * costs[m].step_s, 0.0), costs[m].step_s)
            costs.update({x: measured for x in methods if x == m or like.get(x) == m})
            write(plan_rows, "partial")
        complete = len(programs) == len(part.methods)
        if complete and s < max(part.steps):
            notes.append(f"{s} of the paper's {max(part.steps)} steps (the budget's share), "
                         f"learning-rate schedule compressed to them.")
    status = "complete" if complete else "partial"
    if programs:
        write(plan_rows, status)
    return status if programs else "skipped", notes


def _print_plan(ctx: _Ctx, part: Part, rows: list[dict]) -> None:
    header = list(rows[0]) if rows else ["method"]
    how = ("one program per (majority fraction, method), its seeds vmapped: a run's members "
           "differ by seed only, so fractions cannot be members; programs of one method share "
           "the compiled step through the persistent compilation cache" if part.fractions
           else "one program per method at the chosen step count, its seeds vmapped")
    ctx.say(f"\nPlan for {part.name} ({part.title}); {ctx.left():.0f} s left, estimates x"
            f"{ctx.args.safety} must fit; {how}; before it starts, each program is decided "
            f"again with the time left and the costs measured by then:\n" + common.markdown_table(
                header, [[r[h] for h in header] for r in rows]) + "\n")


# ----------------------------------------------------------------------------- files


def _write_part(ctx: _Ctx, part: Part, programs: list[dict], plan_rows, status: str,
                notes: list[str], wall: float, probes: dict | None = None) -> None:
    """reproduce_<part>.png, .md, then .json (the marker of a finished part), each atomic."""
    d = ctx.args.results_dir
    stem = os.path.join(d, f"reproduce_{part.name}")
    record = {"suite": ctx.suite, "part": part.name, "title": part.title, "status": status,
              **ctx.header, "wall_time_s": wall, "plan": plan_rows, "programs": programs,
              "probes": probes or {}, "paper": PAPER.get(part.name),
              "protocol": part.protocol, "notes": notes}
    if part.fractions is not None:
        _plot_sweep(part, programs, stem + ".png")
    else:
        _plot_curves(part, programs, stem + ".png")
    common.write_text(stem + ".md", _markdown(part, record))
    workdir.write_json(stem + ".json", record)
    _bundle(ctx.args)


def _bundle(args) -> None:
    """Zips the results dir's ``reproduce_*`` files into ``args.bundle`` (atomically): one
    file to bring back where few may (the device machine returns at most 8)."""
    if not args.bundle:
        return
    import zipfile

    names = sorted(f for f in os.listdir(args.results_dir) if f.startswith("reproduce_"))

    def write(f):
        with zipfile.ZipFile(f, "w", zipfile.ZIP_DEFLATED) as z:
            for name in names:
                z.write(os.path.join(args.results_dir, name), name)

    os.makedirs(os.path.dirname(os.path.abspath(args.bundle)), exist_ok=True)
    workdir.atomic_write(args.bundle, write, mode="wb")


def _markdown(part: Part, record: dict) -> str:
    paper = PAPER.get(part.name) or {"values": {}}
    programs = record["programs"]
    head = [f"# {part.title}", "",
            f"Status: **{record['status']}**. Suite `{record['suite']}`; device "
            f"{record['device']['kind']} ({record['device']['platform']}); wall time "
            f"{record['wall_time_s']:.0f} s of a {record['budget_s']:.0f} s budget; commit "
            f"`{record['git_commit']}`.", "",
            f"Command: `{record['command']}`", "",
            "Versions: " + ", ".join(f"{k} {v}" for k, v in record["versions"].items()), "",
            f"Protocol: {part.protocol}", "", f"Paper: {paper.get('source', '-')}.", ""]
    if part.fractions is not None:
        cells = {(p["method"], p["majority_fraction"]): p for p in programs}
        header = ["method"] + [f"p = {f}" for f in part.fractions] + ["paper, p = 0.995"]
        rows = []
        for m in part.methods:
            row = [LABELS.get(m, m)]
            for f in part.fractions:
                r = cells.get((m, f))
                row.append("-" if r is None else _pm(r["test_error_pct"], 1.0))
            v = paper["values"].get("0.995", {}).get(m)
            rows.append(row + [f"~{v}" if v is not None else "-"])
        body = ["Test error % (final step, mean +- 95% CI over seeds; '-': not run).", "",
                common.markdown_table(header, rows)]
    else:
        header = ["method", "steps", "seeds", "final test acc %", "selected (hyper-val) %",
                  "best %", "paper %", "wall s"]
        rows = []
        for p in programs:
            v, ci = paper["values"].get(p["method"]), paper.get("ci95", {}).get(p["method"])
            rows.append([p["label"], p["num_steps"], len(p["seeds"]),
                         common.fmt(p["final_test_accuracy"]),
                         common.fmt(p["selected_test_accuracy"]),
                         common.fmt(p["best_test_accuracy"]),
                         "-" if v is None else f"{v}" + (f" +- {ci}" if ci else ""),
                         f"{p['wall_time_s']:.0f}"])
        body = ["Test accuracy % (mean +- 95% CI over seeds).", "",
                common.markdown_table(header, rows)]
    plan = record["plan"]
    plan_md = (common.markdown_table(list(plan[0]), [[r[h] for h in plan[0]] for r in plan])
               if plan else "(empty)")
    notes = "\n".join(f"- {n}" for n in record["notes"]) or "- none"
    return "\n".join(head + body + ["", "Plan:", "", plan_md, "", "Notes:", "", notes]) + "\n"


def _pm(stats: dict, scale: float) -> str:
    if stats["ci95"] is None:
        return f"{scale * stats['mean']:.2f}"
    return f"{scale * stats['mean']:.2f} +- {scale * stats['ci95']:.2f}"


def _plot_sweep(part: Part, programs: list[dict], path: str) -> None:
    """Test error against the majority fraction, one line per method; crosses: paper."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fractions = sorted(part.fractions)
    paper = PAPER.get(part.name, {}).get("values", {}).get("0.995", {})
    fig, ax = plt.subplots(figsize=(7, 4.5))
    for i, m in enumerate(part.methods):
        rows = sorted((p["majority_fraction"], p["test_error_pct"]) for p in programs
                      if p["method"] == m)
        if not rows:
            continue
        x = [fractions.index(f) + (i - len(part.methods) / 2) * 0.03 for f, _ in rows]
        line = ax.errorbar(x, [s["mean"] for _, s in rows],
                           yerr=[s["ci95"] or 0.0 for _, s in rows], marker="o", capsize=3,
                           label=LABELS.get(m, m))
        if m in paper and 0.995 in fractions:
            ax.plot(fractions.index(0.995), paper[m], "x", markersize=9,
                    color=line[0].get_color())
    ax.set_xticks(range(len(fractions)), [str(f) for f in fractions])
    ax.set_xlabel("fraction of the majority class (9) in training")
    ax.set_ylabel("test error (%)")
    ax.set_yscale("symlog", linthresh=1.0)
    ax.set_title(f"{part.title} (x: paper)")
    ax.grid(alpha=0.3, which="both")
    if programs:
        ax.legend(fontsize=8)
    fig.tight_layout()
    common._save(fig, path)


def _plot_curves(part: Part, programs: list[dict], path: str) -> None:
    """Test accuracy over training per method (mean, min-max band); dashed: paper."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    paper = PAPER.get(part.name, {}).get("values", {})
    fig, ax = plt.subplots(figsize=(7, 4.5))
    for p in programs:
        steps = np.array(p["curve"]["steps"])
        acc = 100 * np.array(p["curve"]["test_accuracy_per_seed"])
        line, = ax.plot(steps, acc.mean(0), label=f"{p['label']} ({len(acc)} seeds)",
                        marker="o" if len(steps) <= common.MARKERS_UP_TO else None)
        ax.fill_between(steps, acc.min(0), acc.max(0), alpha=0.2, color=line.get_color())
        if p["method"] in paper:
            ax.axhline(paper[p["method"]], ls="--", color=line.get_color(), lw=1)
    ax.set_xlabel("training step")
    ax.set_ylabel("test accuracy (%)")
    ax.set_title(f"{part.title} (dashed: paper)", fontsize=10)
    ax.grid(alpha=0.3)
    if programs:
        ax.legend(fontsize=8)
    fig.tight_layout()
    common._save(fig, path)


# ----------------------------------------------------------------------------- CLI


def parse_args(argv: Sequence[str]) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m experiments.reproduce",
                                description=__doc__.split("\n")[0])
    p.add_argument("--suite", choices=sorted(SUITES), default="paper")
    p.add_argument("--budget_s", type=float, default=480.0,
                   help="wall-time budget of the whole run in seconds")
    p.add_argument("--parts", default="", help="comma-separated part names (default: all)")
    p.add_argument("--data_dir", default=".carry",
                   help="holds mnist.npz and cifar10_dev.npz or cifar10_dev_jpeg.npz "
                        "(fallback: ../shared/data)")
    p.add_argument("--workdir", default="workdirs/reproduce", help="runs, scratch, caches")
    p.add_argument("--results_dir", default=None,
                   help="where reproduce_<part>.* go (default: benchmarks/results for the "
                        "paper suite, <workdir>/results for smoke)")
    p.add_argument("--compilation_cache", default=None,
                   help="JAX persistent compilation cache dir (default <workdir>/jax_cache; "
                        "'' disables)")
    p.add_argument("--bundle", default="",
                   help="also zip the results into this file after every write (e.g. "
                        "$OUT/reproduce_results.zip on the device machine)")
    p.add_argument("--git_commit", default=None,
                   help="the commit to record (default: git rev-parse HEAD, if git works)")
    p.add_argument("--safety", type=float, default=1.15,
                   help="estimates are multiplied by this before they are compared with the "
                        "time left")
    args = p.parse_args(list(argv))
    if args.budget_s <= 0 or args.safety < 1:
        p.error(f"--budget_s must be > 0 and --safety >= 1, got {args.budget_s} and "
                f"{args.safety}.")
    names = [part.name for part in SUITES[args.suite]]
    args.parts = [s for s in args.parts.split(",") if s] or names
    unknown = [s for s in args.parts if s not in names]
    if unknown:
        p.error(f"unknown part(s) {unknown}; suite {args.suite!r} has {names}.")
    args.workdir = os.path.abspath(args.workdir)
    if args.results_dir is None:
        args.results_dir = (COMMITTED_DIR if args.suite == "paper"
                            else os.path.join(args.workdir, "results"))
    if args.compilation_cache is None:
        args.compilation_cache = os.path.join(args.workdir, "jax_cache")
    return args


def run_suite(argv: Sequence[str], clock: Callable[[], float] = time.monotonic,
              say: Callable[[str], None] = lambda s: print(s, flush=True)) -> dict:
    """Runs the suite of ``argv`` (the CLI's flags); returns the run record (also written to
    ``<results_dir>/reproduce_run.json``). ``clock`` measures the budget (seconds)."""
    t0 = clock()
    args = parse_args(argv)
    os.makedirs(args.results_dir, exist_ok=True)
    os.makedirs(args.workdir, exist_ok=True)
    if args.compilation_cache:
        import jax
        jax.config.update("jax_compilation_cache_dir", args.compilation_cache)
        jax.config.update("jax_persistent_cache_min_compile_time_secs", 0.0)
    command = "python -m experiments.reproduce " + " ".join(argv)
    header = {"device": _device(), "versions": _versions(), "command": command.strip(),
              "git_commit": args.git_commit or _git_commit(), "budget_s": args.budget_s}
    record = {"suite": args.suite, **header, "parts": [], "running": None}
    run_json = os.path.join(args.results_dir, "reproduce_run.json")

    def save():
        record["wall_time_s"] = clock() - t0
        workdir.write_json(run_json, record)
        _bundle(args)

    def progress(name, probes, plan):
        running = record["running"] if (record["running"] or {}).get("part") == name else {}
        record["running"] = {"part": name, "probes": dict(probes),
                             "plan": plan if plan is not None else running.get("plan")}
        save()

    ctx = _Ctx(args.suite, args, clock, t0 + args.budget_s, header, say, progress)
    parts = [p for p in SUITES[args.suite] if p.name in args.parts]
    present = {p.name: _present(ctx, p) for p in parts}
    rows = [[p.name, p.title, "present: skip" if (present[p.name] or {}).get("status") ==
             "complete" else "continue" if present[p.name] else "run",
             f"{p.floor_s:.0f}"] for p in parts]
    say(f"Reproduction suite {args.suite!r}: budget {args.budget_s:.0f} s on "
        f"{header['device']['kind']}; results in {args.results_dir}\n"
        + common.markdown_table(["part", "what", "status", "needs at least (s)"], rows)
        + "\nEach part: time its first chunk, print its plan, run, write its files.\n")

    def log(name, status, notes):
        running = record["running"] if (record["running"] or {}).get("part") == name else {}
        record["parts"].append({"part": name, "status": status, "notes": notes,
                                "probes": running.get("probes", {}),
                                "plan": running.get("plan")})
        record["running"] = None
        save()
        say(f"[{name}] {status}" + "".join(f"\n  - {n}" for n in notes))

    def on_sigterm(signum, frame):
        # Whatever finished is on disk already (each program, probe and plan is written when
        # it ends); the run log says where it stopped, then the bundle is rewritten.
        record["interrupted"] = f"SIGTERM after {clock() - t0:.0f} s"
        save()
        say(f"Interrupted (SIGTERM) after {clock() - t0:.0f} s; results in {args.results_dir}.")
        sys.stdout.flush()
        os._exit(128 + signum)  # now: the loop's cleanup could outlast the sender's patience

    main_thread = threading.current_thread() is threading.main_thread()
    previous = signal.signal(signal.SIGTERM, on_sigterm) if main_thread else None
    try:
        _run_parts(ctx, parts, present, log)
    finally:
        if main_thread:
            signal.signal(signal.SIGTERM, previous)
    say(f"Done in {clock() - t0:.0f} s.")
    return record


def _run_parts(ctx: _Ctx, parts, present: dict, log) -> None:
    say = ctx.say
    for part in parts:
        prev = present[part.name]
        if prev and prev.get("status") == "complete":
            log(part.name, "present", ["already present (complete): skipped."])
            continue
        if ctx.left() < part.floor_s or ctx.left() <= 0:
            log(part.name, "skipped", [f"not started: {ctx.left():.0f} s left, the part needs "
                                       f"at least {part.floor_s:.0f} s."])
            continue
        try:
            status, notes = run_part(ctx, part, prev)
        except Exception as e:  # noqa: BLE001 -- one broken part must not cost the others
            say(traceback.format_exc())
            status, notes = "failed", [f"failed: {type(e).__name__}: {e}"]
        log(part.name, status, notes)


def main(argv: Sequence[str] | None = None) -> None:
    common.quiet_checkpoint_logs()
    run_suite(sys.argv[1:] if argv is None else argv)


if __name__ == "__main__":
    main()
