"""MNIST, 10 classes, 40% noisy labels (uniform or background flip), 1000 clean images.

Not a table of the paper (its noisy-label experiments are on CIFAR); the same protocol on
MNIST so that it runs on a CPU: 100 clean images per class from the training pool, 40% of the
other 59,000 training labels flipped (the config argument: `uniform`, each to one of the 9
other classes, or `background`, all to one seeded class), 1000 of them held out (with their
noisy labels) for hyper-validation. LeNet, SGD momentum 0.9, learning rate 0.01 (x0.1 at 6000),
weight decay 2e-4 (docs/design.md §4), batch 100 + 100 clean, 8000 steps, 3 seeds.

    python -m experiments.mnist --config=experiments/configs/mnist_noisy.py:uniform \\
        --workdir=workdirs/mnist_uniform --methods=erm,l2rw,mwnet
    python -m experiments.mnist --config=experiments/configs/mnist_noisy.py:background \\
        --workdir=workdirs/mnist_background --methods=erm,l2rw,mwnet

Expected (not measured yet; no paper number): ERM memorises the flips (test accuracy falls
from its peak as training goes on; the background flip hurts the background class most), L2RW
and Meta-Weight-Net keep most of clean training's ~99%. The command writes the measured table
to <workdir>/table.md and the curves to <workdir>/accuracy.png.
"""

from l2rw_jax import config as config_lib

_NOISES = ("uniform", "background")


def get_config(noise: str = "uniform"):
    if noise not in _NOISES:
        raise ValueError(f"mnist_noisy config argument must be one of {_NOISES}, got {noise!r}.")
    c = config_lib.default_config()
    c.data.dataset = "mnist"  # tfds; the npz copy: --config.data.dataset=npz:<path>
    c.data.noise = noise  # uniform | background (docs/design.md §3)
    c.data.noise_ratio = 0.4  # exactly round(0.4 N) labels chosen
    c.data.clean_per_class = 100  # 1000 clean images
    c.data.hyper_val_size = 1000  # noisy examples held out for hyper-validation
    c.data.batch_size = 100
    c.data.clean_batch_size = 100
    c.data.eval_batch_size = 1000  # 10000 test images, 10 batches
    c.model.name = "lenet"
    c.method.name = "l2rw"  # erm | l2rw | mwnet | any other method
    c.method.l2rw.update(config_lib.PAPER_L2RW)  # the paper's L2RW (Ren et al. 2018, Alg. 1)
    c.optim.learning_rate = 0.01
    c.optim.momentum = 0.9
    c.optim.weight_decay = 2e-4
    c.optim.lr_boundaries = (6000,)  # x0.1 for the last quarter
    c.num_steps = 8000
    c.num_seeds = 3  # 3 splits
    c.loop.vmap_seeds = False  # LeNet on a CPU: one call per seed (vmapped convs are slower)
    c.loop.log_every = 100
    c.loop.eval_every = 500
    c.loop.checkpoint_every = 1000
    return c
