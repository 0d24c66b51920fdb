"""The reproduction suite's parts (``experiments/reproduce.py``): data, recipes, methods, steps.

A suite is a tuple of :class:`Part`; :func:`get_config` returns one by name. ``smoke``: the
same three parts on synthetic 8x8 data with an MLP and tens of steps (CI). ``paper``, its
parts in priority order (Ren et al. 2018, arXiv 1803.09050; docs/design.md §4):

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

Every program of a part is ``base(npz path)`` (the paper recipe: experiments/configs/
mnist_imbalance.py, cifar_background.py) with its method's overrides and the suite's run
settings (:func:`program_config`); a part without ``fractions`` runs at the step count the
planner picks, the learning-rate schedule scaled to it (:func:`scaled_config`).
"""

from __future__ import annotations

from typing import Callable, NamedTuple

from experiments.configs import cifar_background
from experiments.configs import mnist_imbalance
from l2rw_jax import config as config_lib

# The recommended default: every method.l2rw option at its default_config() value (ROBUST_L2RW
# and the library's look-ahead), whatever the part's paper config sets.
RECOMMENDED = config_lib.default_config().method.l2rw.to_dict()
LABELS = {"l2rw": "l2rw (paper)", "recommended": "l2rw recommended"}

# Ren et al. 2018 (docs/design.md §4). Keys are this suite's method names.
PAPER = {
    "mnist_4v9": {
        "source": "Ren et al. 2018, Figure 3 (read off the figure), LeNet, mean of 10 runs",
        "metric": "test error %",
        "values": {"0.995": {"erm": 18.2, "hard_mining": 7.7, "l2rw": 3.6}},
    },
    "cifar_background": {
        "source": "Ren et al. 2018, Table 2, CIFAR-10 (50,000 training "
        "images), ResNet-32, 80k steps, mean of 5 splits",
        "metric": "test accuracy %",
        "values": {"erm": 59.54, "l2rw": 86.73},
        "ci95": {"l2rw": 0.48},
    },
    "cifar_uniform": {
        "source": "Ren et al. 2018, Table 1, CIFAR-10 (50,000 training images), "
        "WRN-28-10 (we use ResNet-32), 60k steps, mean of 5 splits",
        "metric": "test accuracy %",
        "values": {"erm": 67.97, "l2rw": 86.92},
        "ci95": {"l2rw": 0.19},
    },
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
    data: str  # "mnist" | "cifar10_dev" (files under --data_dir)
    base: Callable[[str], object]  # npz path -> ConfigDict (the paper recipe)
    methods: dict
    fractions: tuple | None
    steps: tuple
    probe_steps: int
    cost_like: dict  # method -> probed method it is costed like (CIFAR)
    min_methods: int = 2
    floor_s: float = 0.0  # not started with less than this left
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
            c.data.clean_per_class = 100  # the paper's uniform-flip protocol: 1000 clean images
        c.num_seeds = 3
        return c

    return base


def _method(name: str, **changes) -> dict:
    """Config overrides of a method: ``method.name = name`` and ``changes`` (nested)."""
    return {**changes, "method": {"name": name, **changes.get("method", {})}}


_MNIST_METHODS = {
    "erm": _method("erm"),
    "l2rw": _method("l2rw"),
    "hard_mining": _method("hard_mining", data={"batch_size": 500}),
    "recommended": _method("l2rw", method={"l2rw": RECOMMENDED}),
    "mwnet": _method("mwnet"),
    "proportion": _method("proportion"),
    "resample": _method("resample"),
    "random": _method("random"),
}
_CIFAR_METHODS = {
    "erm": _method("erm"),
    "l2rw": _method("l2rw"),
    "recommended": _method("l2rw", method={"l2rw": RECOMMENDED}),
    "proportion": _method("proportion"),
}
_CIFAR_STEPS = (1000, 2000, 3000, 4000, 6000, 8000, 12000, 16000, 24000, 32000, 40000, 60000, 80000)
_CIFAR_PROTOCOL = (
    "cifar10_dev: 20,000 training / 5,000 test images of CIFAR-10 (JPEG "
    "round-tripped), 2,000 noisy examples held out for hyper-validation; "
    "ResNet-32, SGD momentum 0.9, lr 0.1, weight decay 2e-4, batch 100 + 100 "
    "clean, pad-4 crop + flip; the paper's 80k-step schedule compressed to the "
    "planned steps (x0.1 at 1/2 and 3/4)."
)

SUITES = {
    "paper": (
        Part(
            "mnist_4v9",
            "MNIST 4 vs 9 class imbalance (Figure 3)",
            "mnist",
            _mnist_base,
            _MNIST_METHODS,
            (0.995, 0.99, 0.98, 0.95, 0.9),
            (8000,),
            1000,
            {},
            floor_s=60,
            protocol="mnist_imbalance.py: N = 5000, 10 clean images, LeNet, SGD momentum 0.9, "
            "lr 1e-3, batch 100 (hard_mining 500), 8000 steps, pixels in [0, 1], the "
            "official code's plain-SGD look-ahead for l2rw; 5 seeds (splits).",
        ),
        Part(
            "cifar_background",
            "CIFAR-10 (dev subset), 40% background flip, ResNet-32",
            "cifar10_dev",
            _cifar_base("background"),
            _CIFAR_METHODS,
            None,
            _CIFAR_STEPS,
            200,
            {"proportion": "erm", "recommended": "l2rw"},
            floor_s=120,
            protocol="10 clean images per class. " + _CIFAR_PROTOCOL,
        ),
        Part(
            "cifar_uniform",
            "CIFAR-10 (dev subset), 40% uniform flip, ResNet-32",
            "cifar10_dev",
            _cifar_base("uniform"),
            _CIFAR_METHODS,
            None,
            _CIFAR_STEPS,
            200,
            {"proportion": "erm", "recommended": "l2rw"},
            floor_s=120,
            protocol="100 clean images per class (the paper's uniform protocol). "
            + _CIFAR_PROTOCOL,
        ),
    ),
}


def _smoke_mnist(path: str):
    c = _mnist_base(path)
    c.update(
        dict(
            data=dict(num_train=200, eval_batch_size=64),
            num_seeds=2,
            num_steps=40,
            loop=dict(log_every=10, eval_every=20, checkpoint_every=20, steps_per_call=10),
        )
    )
    c.model.name = "mlp"
    c.model.options = {"hidden": (16,)}
    return c


def _smoke_cifar(noise: str) -> Callable[[str], object]:
    def base(path: str):
        c = _cifar_base(noise)(path)
        c.update(
            dict(
                data=dict(
                    clean_per_class=2,
                    hyper_val_size=20,
                    batch_size=20,
                    clean_batch_size=20,
                    eval_batch_size=50,
                    augment=False,
                ),
                num_seeds=2,
                num_steps=80,
                optim=dict(lr_boundaries=(40, 60)),
                loop=dict(log_every=10, steps_per_call=5),
            )
        )
        c.model.name = "mlp"
        c.model.options = {"hidden": (16,)}
        return c

    return base


# No augmentation: compiling it is most of a smoke call on XLA:CPU (4 of 6 s).
_SMOKE_CIFAR = "smoke: synthetic 8x8x3 JPEG images, MLP, no augmentation, 2 seeds"
# Tiny versions of the same parts (synthetic 8x8 data, an MLP, tens of steps) for CI.
SUITES["smoke"] = (
    Part(
        "mnist_4v9",
        "smoke: 4 vs 9 imbalance",
        "mnist",
        _smoke_mnist,
        {"erm": _method("erm"), "l2rw": _method("l2rw")},
        (0.99, 0.9),
        (40,),
        20,
        {},
        protocol="smoke: synthetic 8x8 digits, MLP, 40 steps, 2 seeds",
    ),
    Part(
        "cifar_background",
        "smoke: background flip",
        "cifar10_dev",
        _smoke_cifar("background"),
        {"erm": _method("erm"), "l2rw": _method("l2rw"), "proportion": _method("proportion")},
        None,
        (20, 40),
        10,
        {"proportion": "erm"},
        protocol=_SMOKE_CIFAR,
    ),
    Part(
        "cifar_uniform",
        "smoke: uniform flip",
        "cifar10_dev",
        _smoke_cifar("uniform"),
        {"erm": _method("erm"), "l2rw": _method("l2rw")},
        None,
        (20, 40),
        10,
        {},
        protocol=_SMOKE_CIFAR,
    ),
)

# What every program of the suite sets: the device-resident loop, seeds vmapped.
_RUN_SETTINGS = {"loop": dict(progress_bar=False, vmap_seeds=True, num_devices=1, backend="device")}


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
    c.optim.lr_boundaries = tuple(max(1, int(round(b * ratio))) for b in base.optim.lr_boundaries)
    c.num_steps = steps
    c.loop.eval_every = max(steps // 10, 1)
    c.loop.checkpoint_every = steps
    return c


def get_config(suite: str = "paper") -> tuple[Part, ...]:
    """The parts of ``suite`` (a name of :data:`SUITES`), in priority order.

    Raises:
      ValueError: an unknown suite.
    """
    if suite not in SUITES:
        raise ValueError(f"unknown suite {suite!r}; allowed: {sorted(SUITES)}.")
    return SUITES[suite]
