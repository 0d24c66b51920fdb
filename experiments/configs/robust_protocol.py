"""The small-compute robustness protocol (reweighting that pays off at every scale).

One CPU-sized CNN, a fixed step budget, 100 clean images per class, the same recipe for every
method; `experiments/robust.py` runs it at 40% uniform flip, 40% background flip and 0% noise.
Config argument: `cifar10_dev` (default: the 20,000 / 5,000 real CIFAR-10 images) or `mnist`
(the genuine MNIST), both development copies read from `$L2RW_DEV_DATA/<name>/<name>.npz`
(experiments/configs/dev_data.py; here `L2RW_DEV_DATA=../shared/data`).

    L2RW_DEV_DATA=../shared/data python -m experiments.robust \\
        --config=experiments/configs/robust_protocol.py:cifar10_dev \\
        --workdir=workdirs/robust_cifar10_dev

Recipe: SmallCNN (3x3 convs of 16 and 32 channels, each ReLU + 2x2 max-pool, global average
pool, 64 hidden units), SGD momentum 0.9, lr 0.05 (x0.1 at 2/3 and 5/6 of the budget), weight
decay 5e-4, batch 100 + 100 clean, pad-4 crop + flip on CIFAR, 1000 noisy examples held out
for hyper-validation, 3 seeds (one per split and noise draw). The learning-rate boundaries are
set from the default budget: with `--config.num_steps`, also set `--config.optim.lr_boundaries`.

Expected (measured; the full tables are benchmarks/results/robust_<source>.md): on cifar10_dev
the small CNN underfits in this budget (plain training ends near 38% at 40% uniform flip), so
the meta-gradient carries little signal; the recommended L2RW variant of the time
(methods.ROBUST_OPTIONS_V1, the `l2rw_robust` rows)
matches plain training there and the class-balanced baseline at 40% background flip, where
the paper's L2RW loses 10-15 points to both. Training on the 1000 clean images alone
(`clean_only`) beats every method that uses the noisy ones at both flips on cifar10_dev.
"""

from experiments.configs import dev_data
from l2rw_jax import config as config_lib

_SOURCES = {
    "cifar10_dev": dict(data=dict(augment=True), num_steps=1500),
    "mnist": dict(data=dict(augment=False), num_steps=1500),
}


def get_config(source: str = "cifar10_dev"):
    if source not in _SOURCES:
        raise ValueError(
            f"robust_protocol config argument must be one of {sorted(_SOURCES)}, got {source!r}."
        )
    c = config_lib.default_config()
    c.update(_SOURCES[source])
    c.data.dataset = dev_data.source(source)  # Development copies: $L2RW_DEV_DATA (dev_data.py).
    c.data.corrupt_given_labels = True  # an npz copy of a benchmark: the synthetic noise applies
    c.data.noise = "uniform"  # set per setting by experiments/robust.py
    c.data.noise_ratio = 0.4
    c.data.clean_per_class = 100  # 1000 clean images
    c.data.hyper_val_size = 1000
    c.data.batch_size = 100
    c.data.clean_batch_size = 100
    c.data.eval_batch_size = 1000
    c.model.name = "small_cnn"
    c.method.name = "erm"  # set per variant by experiments/robust.py
    c.optim.learning_rate = 0.05
    c.optim.momentum = 0.9
    c.optim.weight_decay = 5e-4
    c.optim.lr_boundaries = (c.num_steps * 2 // 3, c.num_steps * 5 // 6)
    c.num_seeds = 3
    c.loop.vmap_seeds = False  # convnets on a CPU: one call per seed
    c.loop.log_every = 100
    c.loop.eval_every = 500
    c.loop.checkpoint_every = 500
    return c
