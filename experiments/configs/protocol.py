"""The CPU protocol's settings (docs/protocol.md): where plain training memorises the flips and
where the model underfits.

Config argument: the setting (run them all with `experiments/protocol.py`, which also sets the
method per run):

- `digits_uniform40`: the quickstart (experiments/configs/quickstart.py): embedded 8x8 digits,
  SmallCNN, 40% uniform flip, 10 clean per class, 1500 steps. ERM peaks near step 300, then
  memorises the flipped labels.
- `mnist_mlp_uniform40`, `mnist_mlp_background40`: an MLP 784-512-512-10 on the genuine MNIST
  (the development copy, `$L2RW_DEV_DATA/mnist/mnist.npz`, experiments/configs/dev_data.py),
  40% uniform / background flip, 100 clean images per class, batch 100 + clean batch 100,
  SGD momentum 0.9, lr 0.02 (constant), no weight decay, 30,000 steps, seeds vmapped (no
  convolution: the device backend scans the vmapped step). An outside measurement had plain training
  at 40% uniform peaking at 95.9% near step 2,500 and falling to 67.9% by step 30,000.
  The MLP's layers are flax `nn.Dense` with its default init, LeCun normal (variance scaling
  1/fan_in, truncated normal), not He (2/fan_in) as in that outside measurement.
- `cifar_underfit_uniform40`, `cifar_underfit_background40`: the other regime, where the model
  never memorises the flips within the budget: experiments/configs/robust_protocol.py's
  cifar10_dev recipe (SmallCNN 16-32 channels, pad-4 crop + flip, weight decay 5e-4, lr 0.05
  decayed at 2/3 and 5/6 of 1500 steps, 100 clean per class), 40% uniform / background flip.
  Plain training ends near 38% / 16% and training on the 1000 clean images alone beats every
  method (benchmarks/results/robust_cifar10_dev.md, 3 seeds).
- `cifar_mlp_uniform40`: a CIFAR setting whose model fits its training set within a CPU
  budget: the MNIST MLP recipe above (784 inputs become 3072) on the cifar10_dev development
  copy (`$L2RW_DEV_DATA/cifar10_dev/cifar10_dev.npz`: 20,000 training images, 5,000 test),
  40% uniform flip, no augmentation, 6000 steps (33 epochs of its 18,000 noisy images).
  Measured before it was added (1 seed, 10,000 steps): plain training's training loss falls
  to 0.36 by step 6000 and 0.28 by 10,000 (it fits the flipped labels); its test accuracy
  peaks at 38.8% and is below 31% from step 3500 on.
- The field's other noises on the same recipes (docs/noise.md), DEFINED, NOT YET RUN:
  `digits_pair45`, `digits_uniform20`, `digits_uniform60` (the digits recipe);
  `mnist_mlp_pair45` (pair flip c -> c + 1 mod 10, 45%: Han et al., Co-teaching, NeurIPS
  2018), `mnist_mlp_asymmetric40` (40% of each of the digits 2, 3, 5, 6, 7 flipped to
  2 -> 7, 3 -> 8, 5 <-> 6, 7 -> 1: the MNIST map of Patrini et al., CVPR 2017, §6, also used by
  the GLC of Hendrycks et al., NeurIPS 2018; flips.NOISE_MAPS["mnist"]) (the MNIST MLP
  recipe); `cifar_mlp_pair45` (the CIFAR MLP recipe).
- `cifar_fit_uniform40`: DEFINED, NOT RUN (hours on this CPU): cifar10_dev at 40% uniform
  with a wider SmallCNN (32-64-128 channels, 256 hidden), no augmentation and 20,000 steps
  (100 epochs of its ~18,000 noisy images), so that the model can fit (memorise) its training
  set; untested whether it does within this budget.


    L2RW_DEV_DATA=../shared/data python -m experiments.protocol --workdir=workdirs/protocol

5 seeds per setting (`num_seeds`, vmapped where the model has no convolution or is tiny).

Expected (measured, 5 seeds, final test accuracy; every setting and method with the share of
the gap to the oracle closed: docs/results.md; the tables:
benchmarks/results/protocol_<setting>*.md):
digits ERM 69.4%, class-balanced 72.6%, paper L2RW 90.7%, recommended 93.3%; MNIST MLP
uniform at 8000 steps: ERM 81.8%, paper L2RW 93.8%, recommended 95.2%; background at 8000
steps: ERM 63.9%, class-balanced 95.6%, paper L2RW collapses to chance (9.8%), recommended
97.1%; underfit CIFAR: ERM 37.8% / 15.1% (uniform / background), class-balanced 37.7% /
44.7%, recommended 37.2% / 42.3%; CIFAR MLP: ERM 29.9% (peak 40.1%), class-balanced 29.3%,
paper L2RW collapses to chance (10.0%), recommended 40.3%.
"""

import re

from experiments.configs import dev_data
from experiments.configs import robust_protocol
from l2rw_jax import config as config_lib

SETTINGS = (
    "digits_uniform40",
    "mnist_mlp_uniform40",
    "mnist_mlp_background40",
    "cifar_underfit_uniform40",
    "cifar_underfit_background40",
    "cifar_mlp_uniform40",
    "cifar_fit_uniform40",
    "digits_pair45",
    "digits_uniform20",
    "digits_uniform60",
    "mnist_mlp_pair45",
    "mnist_mlp_asymmetric40",
    "cifar_mlp_pair45",
)
# The settings on the field's other noises: setting -> (recipe, data.noise, data.noise_ratio).
_NOISE_SETTINGS = {
    "digits_pair45": ("digits", "pair", 0.45),
    "digits_uniform20": ("digits", "uniform", 0.2),
    "digits_uniform60": ("digits", "uniform", 0.6),
    "mnist_mlp_pair45": ("mnist_mlp", "pair", 0.45),
    "mnist_mlp_asymmetric40": ("mnist_mlp", "asymmetric", 0.4),
    "cifar_mlp_pair45": ("cifar_mlp", "pair", 0.45),
}


def _set_noise(c, noise, ratio):
    c.data.noise = noise
    c.data.noise_ratio = ratio
    if noise == "asymmetric":
        c.data.noise_map = "mnist"  # 2->7, 3->8, 5<->6, 7->1 (Patrini et al. 2017, §6)


def _digits(c, noise="uniform", ratio=0.4):
    c.data.dataset = "digits"  # embedded: sklearn's 8x8 digits (no download)
    _set_noise(c, noise, ratio)
    c.data.clean_per_class = 10  # 100 trusted examples
    c.data.hyper_val_size = 100
    c.data.batch_size = 50
    c.data.clean_batch_size = 50
    c.data.eval_batch_size = 180  # 360 test images in 2 batches
    c.model.name = "small_cnn"
    c.model.options.channels = (16, 32)
    c.model.options.hidden = 64
    c.model.options.batch_norm = False
    c.optim.learning_rate = 0.05
    c.optim.momentum = 0.9
    c.optim.weight_decay = 0.0
    c.num_steps = 1500
    c.optim.lr_boundaries = (1000,)
    c.loop.vmap_seeds = True  # tiny convnet: dispatch-bound, vmapped is faster
    c.loop.log_every = 50
    c.loop.eval_every = 50
    c.loop.checkpoint_every = 500


def _mnist_mlp(c, noise, ratio=0.4):
    c.data.dataset = dev_data.source("mnist")  # genuine MNIST, 60,000 / 10,000
    _set_noise(c, noise, ratio)
    c.data.clean_per_class = 100  # 1000 clean images
    c.data.hyper_val_size = 1000  # noisy examples held out for hyper-validation
    c.data.batch_size = 100
    c.data.clean_batch_size = 100
    c.data.eval_batch_size = 1000
    c.model.name = "mlp"
    c.model.options.hidden = (512, 512)
    c.optim.learning_rate = 0.02
    c.optim.momentum = 0.9
    c.optim.weight_decay = 0.0
    c.optim.lr_boundaries = ()
    c.num_steps = 30000
    c.loop.vmap_seeds = True  # no convolution: one vmapped step for the 5 seeds
    c.loop.log_every = 250
    c.loop.eval_every = 250  # the ERM peak (near step 2,500) needs a fine curve
    c.loop.checkpoint_every = 1000


def _cifar_mlp(c, noise="uniform", ratio=0.4):
    _mnist_mlp(c, noise, ratio)
    c.data.dataset = dev_data.source("cifar10_dev")  # 20,000 / 5,000 real CIFAR-10 images
    c.data.augment = False  # as on MNIST: nothing stops it fitting the flips
    c.num_steps = 6000


def _cifar_underfit(c, noise):
    # c starts as experiments/configs/robust_protocol.py's cifar10_dev recipe (get_config); its
    # 3 seeds become the protocol's 5.
    c.data.noise = noise
    c.data.noise_ratio = 0.4


def _cifar_fit(c):
    c.data.dataset = dev_data.source("cifar10_dev")
    c.data.noise = "uniform"
    c.data.noise_ratio = 0.4
    c.data.clean_per_class = 100
    c.data.hyper_val_size = 1000
    c.data.augment = False  # no augmentation: the network can memorise the flips
    c.data.batch_size = 100
    c.data.clean_batch_size = 100
    c.data.eval_batch_size = 1000
    c.model.name = "small_cnn"
    c.model.options.channels = (32, 64, 128)
    c.model.options.hidden = 256
    c.model.options.batch_norm = False
    c.optim.learning_rate = 0.05
    c.optim.momentum = 0.9
    c.optim.weight_decay = 0.0
    c.optim.lr_boundaries = ()
    c.num_steps = 20000
    c.loop.vmap_seeds = False  # convnets on a CPU: one call per seed
    c.loop.log_every = 250
    c.loop.eval_every = 500
    c.loop.checkpoint_every = 1000


def get_config(setting: str = "digits_uniform40"):
    if setting not in SETTINGS:
        raise ValueError(
            f"protocol config argument must be one of {list(SETTINGS)}, got {setting!r}."
        )
    if setting.startswith("cifar_underfit"):
        c = robust_protocol.get_config("cifar10_dev")
    else:
        c = config_lib.default_config()
    if setting in _NOISE_SETTINGS:
        recipe, noise, ratio = _NOISE_SETTINGS[setting]
        {"digits": _digits, "mnist_mlp": _mnist_mlp, "cifar_mlp": _cifar_mlp}[recipe](
            c, noise, ratio
        )
    elif setting == "digits_uniform40":
        _digits(c)
    elif setting == "cifar_fit_uniform40":
        _cifar_fit(c)
    elif setting == "cifar_mlp_uniform40":
        _cifar_mlp(c)
    elif setting.startswith("cifar_underfit"):
        _cifar_underfit(c, "uniform" if setting == "cifar_underfit_uniform40" else "background")
    else:
        _mnist_mlp(c, "uniform" if setting == "mnist_mlp_uniform40" else "background")
    c.method.name = "erm"  # set per method by experiments/protocol.py
    c.data.corrupt_given_labels = True  # the npz development copies get the synthetic flips
    c.num_seeds = 5  # seeds 0..4: split, noise draw, order and init per seed
    return c


# name -> config overrides. Every l2rw option explicit, so the rows do not move with defaults.
_DEFAULT_L2RW = dict(config_lib.default_config().method.l2rw.to_dict())
METHODS = {
    "erm": {"method": {"name": "erm"}},
    "resample": {"method": {"name": "resample"}},
    "l2rw": {"method": {"name": "l2rw", "l2rw": dict(_DEFAULT_L2RW, **config_lib.PAPER_L2RW)}},
    "recommended": {
        "method": {"name": "l2rw", "l2rw": dict(_DEFAULT_L2RW, **config_lib.ROBUST_L2RW)}
    },
    # The reference: plain training on exactly the correctly labelled rows + the clean set.
    "oracle": {"method": {"name": "oracle"}},
    "mwnet": {"method": {"name": "mwnet"}},
    "clean_only": {"method": {"name": "clean_only"}},
    # The paper's "+FT": ERM for the setting's steps, then a tenth of them on the clean set
    # (setting_config sets finetune_steps; the budget is 1.1x the others').
    "finetune": {"method": {"name": "finetune"}},
    # Gold Loss Correction (l2rw_jax.correction) with plain weights (weight_map "one": every
    # w_i = 1 / B, the meta-gradient ignored). Around the paper's rule or the default: the
    # ablation token glc (`l2rw+glc`, `recommended+glc`).
    "glc": {
        "method": {
            "name": "l2rw",
            "l2rw": dict(
                _DEFAULT_L2RW, **dict(config_lib.PAPER_L2RW, weight_map="one", correction="glc")
            ),
        }
    },
}
# Ablation tokens: option name -> (method.l2rw field, its non-paper value), or a tuple of such
# pairs set together. A method name
# `<base>(+|-)<token>...` with base l2rw (the paper's rule) or recommended (the default):
# `+token` switches the option on, `-token` back to the paper's value; e.g. `l2rw+sign+last`,
# `recommended-memory`, `recommended+reliability_classes`.
ABLATIONS = {
    "memory": ("memory_decay", 0.9),
    "warmup": ("warmup_steps", 200),
    "sign": ("weight_map", "sign"),
    "capped": ("weight_map", "capped"),
    "class": ("normalize", "class"),
    "class_balanced": ("normalize", "class_balanced"),
    "endorsed_classes": ("normalize", "endorsed_classes"),
    "last": ("meta_params", "last"),
    "reliability": ("mix", "reliability"),
    "reliability_classes": ("mix", "reliability_classes"),
    "excess_loss": ("mix", "excess_loss"),
    "glc": ("correction", "glc"),
    # GLC estimated at the clean accuracy's plateau: patience correction_at = 10% of the
    # budget (plateau), 5% (glcp).
    "plateau": ("correction", "glc_plateau"),
    "glcp": (("correction", "glc_plateau"), ("correction_at", 0.05)),
    # The plateau correction that also sets the model back to its parameters at the estimate.
    "rewind": ("correction", "glc_plateau_rewind"),
    # That with the scheme's weights before the trigger, the matrix counted on training rows.
    "reweighted": ("correction", "glc_reweighted"),
    # That, taken back where the clean accuracy sets no new best within the patience after.
    "guarded": ("correction", "glc_guarded"),
}


def method_overrides(name: str) -> dict:
    """The config overrides of a method name: one of METHODS, or an ablation
    `<base>(+|-)<token>...` of base `l2rw` / `recommended` with tokens from ABLATIONS.

    Raises:
      ValueError: an unknown name or token (the message lists what is allowed).
    """
    if name in METHODS:
        return METHODS[name]
    parts = re.split(r"([+-])", name)
    base, edits = parts[0], list(zip(parts[1::2], parts[2::2]))
    if base not in ("l2rw", "recommended") or not edits:
        raise ValueError(
            f"unknown method {name!r}; allowed: {list(METHODS)}, or ablations "
            f"l2rw|recommended followed by +<token> / -<token> with tokens "
            f"{list(ABLATIONS)}."
        )
    options = dict(METHODS[base]["method"]["l2rw"])
    for sign, token in edits:
        if token not in ABLATIONS:
            raise ValueError(
                f"method {name!r}: unknown ablation token {token!r}; allowed: {list(ABLATIONS)}."
            )
        pairs = ABLATIONS[token]
        for field, value in pairs if isinstance(pairs[0], tuple) else (pairs,):
            options[field] = value if sign == "+" else config_lib.PAPER_L2RW[field]
    return {"method": {"name": "l2rw", "l2rw": options}}


# Every setting's dataset (the digits, MNIST, CIFAR-10) has 10 classes.
NUM_CLASSES = 10


def setting_config(
    setting: str, method: str, num_steps: int = 0, num_seeds: int = 0, selection_size: int = 0
):
    """The validated config of one (setting, method) run; ``num_steps`` / ``num_seeds`` 0 keep
    the setting's (the lr boundaries scale with ``num_steps``); ``selection_size`` clean
    examples held out of the clean set to choose the checkpoint (``data.selection_size``)."""
    cfg = get_config(setting)
    cfg.data.selection_size = selection_size
    if num_steps:
        scale = num_steps / cfg.num_steps
        cfg.optim.lr_boundaries = tuple(max(1, round(b * scale)) for b in cfg.optim.lr_boundaries)
        cfg.num_steps = num_steps
        # At least 10 evaluations on a short budget: best and final stay distinct points.
        cfg.loop.eval_every = min(cfg.loop.eval_every, max(1, num_steps // 10))
        cfg.loop.log_every = min(cfg.loop.log_every, max(1, num_steps // 10))
    if num_seeds:
        cfg.num_seeds = num_seeds
    cfg = config_lib.validate(cfg)
    cfg.update(method_overrides(method))
    if cfg.method.name == "finetune":
        cfg.method.finetune_steps = max(1, cfg.num_steps // 10)
    return config_lib.validate(cfg)
