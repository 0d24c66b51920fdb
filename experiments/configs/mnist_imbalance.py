"""MNIST 4-vs-9 class imbalance (Ren et al. 2018, §5.1 and Figure 3), LeNet, 10 clean images.

Training set: N = 5000 images of 4s and 9s from the genuine MNIST training set, a fraction p of
them 9s (p = 0.9, 0.95, 0.98, 0.99, 0.995; the config argument, default 0.995); clean set:
5 + 5 images from the rest of the training pool; test set: every 4 and an equal number of 9s of
the MNIST test set (982 + 982). Recipe of the official code (uber-research/learning-to-reweight-
examples, mnist/mnist_train.py): LeNet, SGD momentum 0.9, learning rate 1e-3 throughout (its
"halve after half of training" never reaches the optimizer), no weight decay, batch 100, the
clean batch = all 10 clean images, 8000 steps; 5 seeds (5 splits) per run.

One run (L2RW at p = 0.995, 5 seeds):

    python -m experiments.mnist --workdir=workdirs/mnist_imbalance

The reproduction (every method at every p; the table and plot land in the workdir):

    python -m experiments.mnist --workdir=workdirs/mnist_imbalance \\
        --methods=erm,random,proportion,resample,hard_mining,l2rw,mwnet \\
        --majority_fractions=0.9,0.95,0.98,0.99,0.995

Expected (paper, Figure 3, test error at p = 0.995): ERM about 18%, hard mining about 7.7%,
L2RW about 3.6%; target here: L2RW <= 2.0%. Measured here, 5 seeds at p = 0.995 (8000 steps,
this config, benchmarks/results/mnist_4v9_p0995.md): L2RW 4.10 +- 3.99% error (per seed 1.83 /
2.75 / 9.73 / 2.55 / 3.67), ERM 15.31 +- 2.27%. Earlier, one seed at p = 0.995 (8000 steps):
L2RW 3.51% error (4152 of 8000 steps with all weights zero), with this config (inputs and
look-ahead of the official code); 6.31% with standardised pixels and the optimizer look-ahead;
ERM 21.54% (standardised pixels). The sweep writes its measured table (mean +- 95% CI)
to <workdir>/table.md and the plot to <workdir>/error.png. Cost on a 2-core CPU (LeNet, one
seed, 8000 steps): about 14 min for ERM-like methods, 30 min for L2RW / Meta-Weight-Net.
"""

from l2rw_jax import config as config_lib


def get_config(majority_fraction: str = "0.995"):
    c = config_lib.default_config()
    c.data.dataset = "mnist"  # tfds; the npz copy: --config.data.dataset=npz:<path>
    c.data.noise = "imbalance"  # 4 vs 9, relabelled 4 -> 0, 9 -> 1
    c.data.noise_ratio = 0.0  # no label flips
    c.data.majority_fraction = float(majority_fraction)  # fraction p of 9s in the training set
    c.data.num_train = 5000  # N training images (paper)
    c.data.majority_class = 9
    c.data.minority_class = 4
    c.data.clean_per_class = 5  # 5 + 5 = 10 clean images (paper)
    c.data.hyper_val_size = 0  # the paper's N = 5000 stays whole
    c.data.batch_size = 100  # paper
    c.data.clean_batch_size = 10  # the whole clean set every step (official code)
    c.data.eval_batch_size = 1000  # 1964 test images, 2 batches
    c.model.name = "lenet"  # official LeNet (16/32/64 conv, FC 100), 2 logits
    c.method.name = "l2rw"  # any of config_lib.METHODS (the sweep sets it)
    c.method.l2rw.update(config_lib.PAPER_L2RW)  # the paper's L2RW (Ren et al. 2018, Alg. 1)
    # The official code's inputs and look-ahead: pixels in [0, 1] and theta' = theta - grad
    # (no momentum in the look-ahead). Measured at p = 0.995, one seed: 3.51% error with both,
    # 6.31% with standardised pixels and the optimizer look-ahead.
    c.data.pixel_scale = "unit"
    c.method.l2rw.lookahead = "sgd"
    c.optim.learning_rate = 1e-3  # official code
    c.optim.momentum = 0.9
    c.optim.weight_decay = 0.0  # none in the official MNIST code
    c.optim.lr_boundaries = ()  # constant learning rate
    c.num_steps = 8000  # paper
    c.num_seeds = 5  # 5 splits
    c.loop.vmap_seeds = False  # LeNet on a CPU: one call per seed (vmapped convs are slower)
    c.loop.log_every = 100
    c.loop.eval_every = 500
    c.loop.checkpoint_every = 1000
    return c
