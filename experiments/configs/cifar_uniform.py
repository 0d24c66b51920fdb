"""CIFAR uniform flip 40%, 1000 clean images, WRN-28-10 (Ren et al. 2018, Table 1,
docs/design.md §4).

Config argument: `cifar10` (default), `cifar100` (tfds catalog: prepared in data_dir, or
`--config.data.dataset=npz:/path/cifar.npz`), or `dev` (the 20,000 / 5,000 CIFAR-10 development
subset in `$L2RW_DEV_DATA/cifar10_dev/cifar10_dev.npz`: experiments/configs/dev_data.py).
Recipe: WRN-28-10 with dropout 0.3,
SGD momentum 0.9, lr 0.1, x0.1 at 40k and 50k of 60k steps, weight decay 2e-4, batch 100 +
100 clean, pad-4 crop + flip augmentation; 1000 clean images (10 per class for CIFAR-100),
5000 noisy examples held out for hyper-validation (2000 for `dev`).

    python -m experiments.cifar --config=experiments/configs/cifar_uniform.py:cifar10 \\
        --workdir=workdirs/cifar10_uniform

Expected (paper, test accuracy): CIFAR-10 ERM 67.97, L2RW 86.92 +- 0.19; CIFAR-100 ERM 50.66,
L2RW 61.34 +- 2.06. A GPU job: the step of WRN-28-10 takes seconds on a CPU.
"""

from experiments.configs import dev_data
from l2rw_jax import config as config_lib

_SOURCES = {
    "cifar10": ("cifar10", 100, 5000),
    "cifar100": ("cifar100", 10, 5000),
    "dev": (None, 100, 2000),
}


def get_config(source: str = "cifar10"):
    if source not in _SOURCES:
        raise ValueError(
            f"cifar_uniform config argument must be one of {sorted(_SOURCES)}, got {source!r}."
        )
    dataset, clean_per_class, hyper_val = _SOURCES[source]
    c = config_lib.default_config()
    c.data.dataset = dataset or dev_data.source("cifar10_dev")
    # The dev copy (npz) of CIFAR-10 gets the synthetic noise; a source of your own given with
    # --config.data.dataset keeps its labels unless --config.data.corrupt_given_labels=True.
    c.data.corrupt_given_labels = dataset is None
    c.data.noise = "uniform"  # each chosen label moves to one of the C-1 other classes
    c.data.noise_ratio = 0.4
    c.data.clean_per_class = clean_per_class  # 1000 clean images in total
    c.data.hyper_val_size = hyper_val  # noisy examples held out for hyper-validation
    c.data.augment = True  # pad 4 + random 32x32 crop + horizontal flip
    c.data.batch_size = 100  # paper
    c.data.clean_batch_size = 100  # paper
    c.data.eval_batch_size = 500
    c.model.name = "wrn"  # Wide ResNet
    c.model.options.depth = 28  # WRN-28-10 (paper)
    c.model.options.width = 10
    c.model.options.dropout_rate = 0.3  # paper
    c.method.name = "l2rw"
    c.method.l2rw.update(config_lib.PAPER_L2RW)  # the paper's L2RW (Ren et al. 2018, Alg. 1)
    c.optim.learning_rate = 0.1  # paper
    c.optim.momentum = 0.9
    c.optim.weight_decay = 2e-4
    c.optim.lr_boundaries = (40000, 50000)
    c.num_steps = 60000
    c.num_seeds = 1  # one WRN per run; more seeds: more runs or --config.num_seeds
    c.loop.log_every = 100
    c.loop.eval_every = 2000
    c.loop.checkpoint_every = 2000
    return c
