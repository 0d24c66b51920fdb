"""CIFAR background flip 40%, 10 clean images per class, ResNet-32 (Ren et al. 2018, Table 2).

Config argument: `cifar10` (default), `cifar100` (tfds catalog, prepared in data_dir), or `dev`
(the CIFAR-10 development subset in `$L2RW_DEV_DATA/cifar10_dev/cifar10_dev.npz`:
experiments/configs/dev_data.py). Recipe:
ResNet-32 with BatchNorm, SGD momentum 0.9, lr 0.1, x0.1 at 40k and 60k of 80k steps, weight
decay 2e-4, batch 100 + 100 clean, pad-4 crop + flip; 40% of the labels flipped to one seeded
background class; 10 clean images per class; 5000 noisy examples held out for
hyper-validation (2000 for `dev`).

    python -m experiments.cifar --config=experiments/configs/cifar_background.py:cifar10 \\
        --workdir=workdirs/cifar10_background

Expected (paper, test accuracy): CIFAR-10 ERM 59.54, L2RW 86.73 +- 0.48; CIFAR-100 ERM 37.82,
L2RW 59.30 +- 0.60.
"""

from experiments.configs import dev_data
from l2rw_jax import config as config_lib

_SOURCES = {"cifar10": ("cifar10", 5000), "cifar100": ("cifar100", 5000), "dev": (None, 2000)}


def get_config(source: str = "cifar10"):
    if source not in _SOURCES:
        raise ValueError(
            f"cifar_background config argument must be one of {sorted(_SOURCES)}, got {source!r}."
        )
    dataset, hyper_val = _SOURCES[source]
    c = config_lib.default_config()
    c.data.dataset = dataset or dev_data.source("cifar10_dev")
    # The dev copy (npz) of CIFAR-10 gets the synthetic noise; a source of your own given with
    # --config.data.dataset keeps its labels unless --config.data.corrupt_given_labels=True.
    c.data.corrupt_given_labels = dataset is None
    c.data.noise = "background"  # chosen labels all become one seeded background class
    c.data.noise_ratio = 0.4
    c.data.clean_per_class = 10  # paper: 10 per class
    c.data.hyper_val_size = hyper_val
    c.data.augment = True
    c.data.batch_size = 100
    c.data.clean_batch_size = 100  # CIFAR-10: the whole clean set every step
    c.data.eval_batch_size = 500
    c.model.name = "resnet32"  # pre-activation ResNet with BatchNorm
    c.model.options.units_per_stage = 5  # 3 stages x 5 units x 2 convs + 2 = 32 layers
    c.model.options.widths = (16, 32, 64)  # channels per stage
    c.method.name = "l2rw"
    c.method.l2rw.update(config_lib.PAPER_L2RW)  # the paper's L2RW (Ren et al. 2018, Alg. 1)
    c.optim.learning_rate = 0.1
    c.optim.momentum = 0.9
    c.optim.weight_decay = 2e-4
    c.optim.lr_boundaries = (40000, 60000)
    c.num_steps = 80000
    c.num_seeds = 1
    c.loop.log_every = 100
    c.loop.eval_every = 2000
    c.loop.checkpoint_every = 2000
    return c
