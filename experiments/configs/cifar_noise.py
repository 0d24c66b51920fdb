"""The field's standard label-noise settings on CIFAR (docs/noise.md), with the Ren et al. CIFAR
recipe of cifar_uniform.py.

Config argument, and the paper table whose *noise setting* it reproduces:

- `pair45`: CIFAR-10, pair flip 45% (c -> c + 1 mod 10): Han et al., "Co-teaching", NeurIPS
  2018, Table 3 ("Pair-45%" column of CIFAR-10).
- `asymmetric40`: CIFAR-10, asymmetric flip 40% with Patrini et al.'s class map (truck ->
  automobile, bird -> airplane, deer -> horse, cat <-> dog): Patrini et al., "Making deep
  neural networks robust to label noise", CVPR 2017, Table 3 (CIFAR-10, asymmetric N = 0.4).
- `cifar10n_worse`, `cifar10n_aggre`, `cifar10n_random1`: CIFAR-10N's human labels
  (`worse_label` ~40.2% noisy, `aggre_label` ~9.0%, `random_label1` ~17.2%), truth `label`:
  Wei et al., "Learning with Noisy Labels Revisited: A Study Using Real-World Human
  Annotations", ICLR 2022, Table 2 (CIFAR-10N Worst / Aggregate / Random 1).
- `cifar100n`: CIFAR-100N's `noise_label` (~40.2% noisy), truth `label`: Wei et al. ICLR 2022,
  Table 2 (CIFAR-100N Noisy Fine).

The CIFAR-N datasets need a manual download (tfds `cifar10_n` / `cifar100_n`; docs/noise.md).

Schedule (ours, not the papers'): the Ren et al. 2018 CIFAR recipe: WRN-28-10 (dropout 0.3),
SGD momentum 0.9, lr 0.1, x0.1 at 40k and 50k of 60k steps (120 epochs of 50,000 at batch
100), weight decay 2e-4, batch 100 + 100 clean, pad-4 crop + flip; 1000 clean images drawn
by the true labels (10 per class for CIFAR-100N), 5000 noisy examples held out for
hyper-validation. The papers train other networks on other schedules (Co-teaching: a 9-layer
CNN, Adam, 200 epochs; CIFAR-N: ResNet-34, 100 epochs), so their accuracies are a reference
for the ordering of methods, not numbers to match. Compare methods with `--config.method.name`
(erm, l2rw, oracle: the reference trained on the correct rows only).

    python -m experiments.cifar --config=experiments/configs/cifar_noise.py:pair45 \\
        --workdir=workdirs/cifar10_pair45

Expected: no run of ours yet (a GPU job: the WRN step takes seconds on a CPU); the papers'
tables give the cross-entropy baselines to compare the `erm` row against.
"""

from experiments.configs import cifar_uniform
from l2rw_jax import config as config_lib

# argument: (dataset, noise group fields, clean per class)
_SETTINGS = {
    "pair45": ("cifar10", dict(noise="pair", noise_ratio=0.45), 100),
    "asymmetric40": (
        "cifar10",
        dict(noise="asymmetric", noise_ratio=0.4, noise_map="cifar10"),
        100,
    ),
    "cifar10n_worse": (
        "cifar10_n",
        dict(noise="given", noise_ratio=0.0, label_key="worse_label"),
        100,
    ),
    "cifar10n_aggre": (
        "cifar10_n",
        dict(noise="given", noise_ratio=0.0, label_key="aggre_label"),
        100,
    ),
    "cifar10n_random1": (
        "cifar10_n",
        dict(noise="given", noise_ratio=0.0, label_key="random_label1"),
        100,
    ),
    "cifar100n": ("cifar100_n", dict(noise="given", noise_ratio=0.0, label_key="noise_label"), 10),
}


def get_config(setting: str = "pair45"):
    if setting not in _SETTINGS:
        raise ValueError(
            f"cifar_noise config argument must be one of {sorted(_SETTINGS)}, got {setting!r}."
        )
    dataset, noise, clean_per_class = _SETTINGS[setting]
    # The paper's WRN-28-10 recipe of the uniform-flip reproduction (cifar_uniform.py: data
    # pipeline, model, optimizer, schedule, loop), with this table's data and noise.
    c = cifar_uniform.get_config("cifar10")
    c.data.dataset = dataset
    c.data.corrupt_given_labels = False
    c.data.update(noise)  # the noise of the paper's table (module docstring)
    c.data.true_label_key = "label"  # CIFAR-N: the original CIFAR label is the truth
    c.data.clean_per_class = clean_per_class  # 1000 clean images in total
    c.method.l2rw.update(config_lib.ROBUST_L2RW)  # the library's default L2RW; erm / oracle
    return c
