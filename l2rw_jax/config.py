"""The training config: its schema (a tree of groups), defaults, validation and the upgrade of
old configs. Its translations into library arguments are :mod:`l2rw_jax.from_config`.

Why groups: 52 flat fields, 13 of them prefixed by a method's name, hid which part of the
library reads what. Here every group feeds one part (big_vision ``configs/*.py`` style)::

    seed, num_seeds, num_steps    member k uses seed + k for everything (l2rw_jax.members)
    data.*                        datasets, corruption, hold-out, batches (l2rw_jax.members)
    model.name, model.options     model_factory.create_model(name, num_classes, **options)
    optim.*                       the optimizer (from_config.make_optimizer, as big_vision's
                                  optax.make)
    method.name                   a weighting scheme or a data-level method (METHODS)
    method.l2rw.*, method.mwnet.* each scheme's own options: exactly methods.l2rw/mwnet's
                                  keyword arguments, so from_config.weighing hands them on
                                  unchanged
    method.finetune_steps         the finetune method's clean-set steps
    loop.*                        the loop: devices, input backend, logging, checkpoints

Entry points and configs import this module, never the loop. Below it, no function takes the
whole config: :mod:`l2rw_jax.from_config` (``weighing``, ``make_optimizer``, ``split_options``,
``model_kwargs``, ...) hands the library what it needs. Command-line overrides use the dotted
paths (``--config.optim.learning_rate=0.05``).

Old runs: a config.json written before the groups (flat fields) is read through
:func:`upgrade`, which maps every flat field to its group (``LEGACY_FIELDS``), so such runs
resume and can be audited; fields added later take the behaviour runs had before them
(``ADDED_FIELDS``).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import numpy as np

from l2rw_jax import array_source
from l2rw_jax import corruption
from l2rw_jax import datasets
from l2rw_jax import from_config
from l2rw_jax import methods
from l2rw_jax import model_factory

if TYPE_CHECKING:
    import ml_collections

WEIGHING_METHODS = ("erm", "l2rw", "random", "proportion", "hard_mining", "mwnet")
CORRECTIONS = ("none", "glc", "glc_plateau")
METHODS = WEIGHING_METHODS + from_config.DATA_METHODS
BACKENDS = ("auto", "device", "tfdata")
GROUPS = ("data", "model", "optim", "method", "loop")
# Fields that may change between a run and its resumption: they do not change the numbers.
RESUMABLE_FIELDS = (
    "loop.stop_after_steps",
    "loop.progress_bar",
    "loop.steps_per_fetch",
    "loop.steps_per_call",
)
# Free-form groups: any keys (model_factory.create_model checks them).
_OPEN_GROUPS = ("model.options", "data.noise_map")


def default_config() -> ml_collections.ConfigDict:
    """Every field ``train_and_evaluate`` reads, with its default (presets: experiments/configs)."""
    # ml_collections (pure Python, with PyYAML) only when a config is made: `import l2rw_jax`
    # must work where it is not installed (docs/design.md §7); carry it there to train.
    import ml_collections
    from ml_collections import config_dict

    c = ml_collections.ConfigDict()
    c.seed = 0  # member k uses seed + k for split, noise, order, init
    c.num_seeds = 1  # K members trained in one run
    c.num_steps = 1000  # training steps (before method.finetune_steps)

    # --- Data (l2rw_jax.datasets, corruption, members, input_pipeline, backends).
    c.data = d = ml_collections.ConfigDict()
    d.dataset = "digits"  # tfds name (mnist, cifar10...), "digits" or "npz:/path.npz"
    # tfds data_dir; None: $TFDS_DATA_DIR, else ~/tensorflow_datasets.
    d.data_dir = config_dict.placeholder(str)
    # none | given | uniform | background | pair | asymmetric | transition | imbalance
    # (docs/noise.md). Left at uniform 0.4, it becomes "given" when data.label_key is set or
    # the npz holds y_train_true.
    d.noise = "uniform"
    d.noise_ratio = 0.4  # fraction flipped (uniform/background/pair/asymmetric); else 0
    # asymmetric: {true: observed} class map, a preset (cifar10 | mnist) or "9:1,3:5,5:3";
    # None: cifar10 (Patrini et al. 2017).
    d.noise_map = config_dict.placeholder(object)
    # transition: C x C row-stochastic T[i][j] = P(observed j | true i), a nested tuple or the
    # path of a .npy file holding it.
    d.noise_matrix = config_dict.placeholder(object)
    # tfds: the feature holding the observed labels (e.g. worse_label of cifar10_n); None: the
    # dataset's supervised label. true_label_key: the feature holding the truth, read only
    # with label_key (None there: the truth is unknown).
    d.label_key = config_dict.placeholder(str)
    d.true_label_key = "label"
    # A source of your own (npz:, folder:) keeps its labels as given unless this is True: the
    # synthetic noise above is then applied to it too (an npz copy of a benchmark, say). Either
    # way the run says what it does (a warning line).
    d.corrupt_given_labels = False
    d.background_class = config_dict.placeholder(int)  # background flip target; None: seeded
    d.official_convention = False  # official code's flip (label in 0..C-2): comparisons only
    d.majority_fraction = config_dict.placeholder(float)  # imbalance: majority fraction p
    d.num_train = 5000  # imbalance: size N of the training set
    d.majority_class = 9  # imbalance: majority source class (label 1 after relabelling)
    d.minority_class = 4  # imbalance: source class of the minority (label 0)
    d.clean_per_class = 10  # clean (trusted) examples per class, never corrupted
    d.hyper_val_size = 0  # noisy training examples held out for hyper-validation
    # Clean examples held out of the clean (meta) set, stratified per class, to choose the
    # checkpoint (results' selected_test_accuracy, <workdir>/selected/); 0: off.
    d.selection_size = 0
    d.augment = False  # CIFAR pad-4 random crop + flip on the training streams
    # Input scaling: standardize ((x / 255 - mean_C) / std_C, statistics of the member's
    # training images) | unit (x / 255 in [0, 1], as the official MNIST code feeds LeNet).
    d.pixel_scale = "standardize"
    d.batch_size = 100  # noisy training batch B
    d.clean_batch_size = 100  # clean (validation) batch M of the meta-step
    d.eval_batch_size = 500  # evaluation batch (last one padded and masked)

    # --- Model (l2rw_jax.model_factory.create_model).
    c.model = ml_collections.ConfigDict()
    c.model.name = "small_cnn"  # lenet | resnet32 | wrn | small_cnn | mlp | pkg.mod:Class
    c.model.options = ml_collections.ConfigDict()  # create_model kwargs, e.g. depth / width

    # --- Optimizer: add_decayed_weights(weight_decay) -> sgd(schedule, momentum, nesterov).
    c.optim = o = ml_collections.ConfigDict()
    # Initial learning rate. 0.01 trains every model of l2rw_jax.models on 28x28 and 32x32
    # images; at 0.1 (momentum 0.9: steps of 1.0) LeNet, whose official initialisation (stddev
    # 0.1 whatever the fan-in) starts at a loss of ~8 on MNIST, blows up in its first steps
    # and ends at chance. The presets (experiments/configs) set their own.
    o.learning_rate = 0.01
    o.momentum = 0.9  # SGD momentum (0: plain SGD)
    o.nesterov = False  # Nesterov momentum
    o.weight_decay = 0.0  # L2 coefficient (gradient += weight_decay * params)
    o.lr_boundaries = ()  # steps at which the learning rate is multiplied by lr_decay
    o.lr_decay = 0.1  # factor applied at each boundary

    # --- Method (l2rw_jax.methods, and the data-level methods of l2rw_jax.members).
    c.method = ml_collections.ConfigDict()
    c.method.name = "l2rw"  # one of METHODS
    # methods.l2rw's options. The defaults are the recommended robust variant (ROBUST_L2RW,
    # docs/robust_default.md); the paper's algorithm is PAPER_L2RW (reproduction configs).
    c.method.l2rw = l = ml_collections.ConfigDict()
    l.mode = "forward"  # meta-gradient: forward | reverse (both exact)
    l.all_clipped = "zero"  # weights when every -g_i <= 0: zero (paper) | uniform
    l.lookahead = "optimizer"  # look-ahead: optimizer (docs/design.md §2) | sgd (the
    # official code)
    l.memory_decay = 0.9  # per-example EMA of the meta-gradient, keyed by row; 0: off
    l.warmup_steps = 200  # uniform weights for the first steps
    l.weight_map = "sign"  # sign: 1[g < 0] | clip: max(-g, 0) (paper) | capped | one
    l.normalize = "class_balanced"  # class_balanced | class | endorsed_classes | batch (paper)
    l.meta_params = "last"  # last: meta-gradient through the last layer | all (paper)
    l.loss_quantile = 0.0  # loss gate: keep C_i <= q-quantile of clean losses; 0: off
    l.mix = "excess_loss"  # graded weights mixed in by the training loss's excess over
    #                                 the clean loss | reliability_classes | reliability | none
    # Loss correction from the clean set (l2rw_jax.correction; not options of methods.l2rw;
    # docs/correction.md): none | glc (Gold Loss Correction: plain training until
    # correction_at * num_steps, the label transition matrix estimated on the clean set then,
    # the corrected loss after) | glc_plateau (class-balanced plain training until the clean
    # accuracy has not risen for correction_at * num_steps steps, the matrix from the model at
    # its best clean accuracy, the corrected loss after; never corrected while it keeps rising).
    l.correction = "glc_plateau"
    l.correction_at = 0.1  # glc: share of num_steps before the estimate; glc_plateau:
    #                                 the patience, as a share of num_steps
    # methods.mwnet's options (Meta-Weight-Net, Shu et al. 2019).
    c.method.mwnet = m = ml_collections.ConfigDict()
    m.hidden = 100  # hidden units (Shu et al. 2019: 100)
    m.meta_lr = 1e-3  # Adam learning rate of the weighting net
    m.meta_weight_decay = 1e-4  # its L2 weight decay
    m.normalize = True  # weights V(C_i) / sum_j V(C_j) (True) or V(C_i) / B (False)
    c.method.finetune_steps = 0  # finetune only: clean-set steps after num_steps of ERM

    # --- Loop (l2rw_jax.train).
    c.loop = p = ml_collections.ConfigDict()
    # True: one jitted step vmapped over the K members (dispatch-bound models: small CNNs on a
    # CPU). False: one call per member of the same step (convnets on a CPU, where vmapping
    # the kernels turns convolutions into slow grouped ones: LeNet 3-4x slower per member).
    p.vmap_seeds = True
    p.num_devices = 1  # data-parallel devices (0: all); batches split over them
    # Input backend. device: the splits placed on the devices once, each batch gathered and
    # augmented there, steps_per_call steps per jitted call (lax.scan); no TensorFlow.
    # tfdata: input_pipeline's tf.data streams, batches built on the host. Same examples in
    # the same order; augmentation draws differ (l2rw_jax.device_batches). auto: device (every
    # source is loaded into memory), or what the run being resumed in the workdir used.
    p.backend = "auto"
    p.steps_per_call = 100  # device: steps per jitted call (calls also end at evals
    # and checkpoints; each distinct length compiles once)
    p.steps_per_fetch = 10  # tfdata: batches read and sent to the devices together
    p.log_every = 100  # train metrics (means over the interval) every this many
    p.eval_every = 500  # test / hyper-validation evaluation every this many steps
    p.checkpoint_every = 1000  # orbax checkpoint every this many steps (and at the end)
    p.keep_checkpoints = 3  # newest checkpoints kept
    p.stop_after_steps = config_dict.placeholder(int)  # stop (as if killed) after it: tests
    p.progress_bar = True  # tqdm bar with steps/s and ETA
    return c


# method.l2rw options of the paper's algorithm (Ren et al. 2018, Alg. 1; docs/design.md §2):
# what the reproduction configs use (`c.method.l2rw.update(PAPER_L2RW)`).
PAPER_L2RW = {
    "memory_decay": 0.0,
    "warmup_steps": 0,
    "weight_map": "clip",
    "normalize": "batch",
    "meta_params": "all",
    "loss_quantile": 0.0,
    "mix": "none",
    "correction": "none",
    "correction_at": 0.1,
}
# The default: methods.ROBUST_OPTIONS and Gold Loss Correction estimated at the clean
# accuracy's plateau (docs/robust_default.md and docs/correction.md have the evidence).
ROBUST_L2RW = dict(methods.ROBUST_OPTIONS, correction="glc_plateau", correction_at=0.1)

# Flat fields of configs written before the groups -> their place now.
LEGACY_FIELDS = {
    **{
        f: f"data.{f}"
        for f in (
            "dataset",
            "data_dir",
            "noise",
            "noise_ratio",
            "background_class",
            "official_convention",
            "majority_fraction",
            "num_train",
            "majority_class",
            "minority_class",
            "clean_per_class",
            "hyper_val_size",
            "augment",
            "pixel_scale",
            "batch_size",
            "clean_batch_size",
            "eval_batch_size",
            "noise_map",
            "noise_matrix",
            "label_key",
            "true_label_key",
            "corrupt_given_labels",
            "selection_size",
        )
    },
    "model": "model.name",
    "model_options": "model.options",
    **{
        f: f"optim.{f}"
        for f in (
            "learning_rate",
            "momentum",
            "nesterov",
            "weight_decay",
            "lr_boundaries",
            "lr_decay",
        )
    },
    "method": "method.name",
    "finetune_steps": "method.finetune_steps",
    **{
        f"l2rw_{f}": f"method.l2rw.{f}"
        for f in (
            "mode",
            "all_clipped",
            "lookahead",
            "memory_decay",
            "warmup_steps",
            "weight_map",
            "normalize",
            "meta_params",
            "loss_quantile",
            "mix",
            "correction",
            "correction_at",
        )
    },
    "mwnet_hidden": "method.mwnet.hidden",
    "mwnet_lr": "method.mwnet.meta_lr",
    "mwnet_weight_decay": "method.mwnet.meta_weight_decay",
    "mwnet_normalize": "method.mwnet.normalize",
    **{
        f: f"loop.{f}"
        for f in (
            "vmap_seeds",
            "num_devices",
            "backend",
            "steps_per_call",
            "steps_per_fetch",
            "log_every",
            "eval_every",
            "checkpoint_every",
            "keep_checkpoints",
            "stop_after_steps",
            "progress_bar",
        )
    },
    "seed": "seed",
    "num_seeds": "num_seeds",
    "num_steps": "num_steps",
}
# Fields added after the first release, with the behaviour runs had before them.
ADDED_FIELDS = {
    **{f"method.l2rw.{k}": v for k, v in PAPER_L2RW.items()},
    "method.l2rw.lookahead": "optimizer",
    "data.pixel_scale": "standardize",
    "loop.backend": "tfdata",
    "data.corrupt_given_labels": True,
    "data.noise_map": None,
    "data.noise_matrix": None,
    "data.label_key": None,
    "data.true_label_key": "label",
    "data.selection_size": 0,
}


def flatten(tree: dict, prefix: str = "") -> dict:
    """{"a": {"b": 1}} -> {"a.b": 1}; the free-form groups (model.options) stay one value."""
    out = {}
    for key, value in tree.items():
        path = f"{prefix}{key}"
        if isinstance(value, dict) and path not in _OPEN_GROUPS:
            out.update(flatten(value, path + "."))
        else:
            out[path] = value
    return out


def _unflatten(flat: dict) -> dict:
    tree: dict = {}
    for path, value in flat.items():
        *groups, name = path.split(".")
        node = tree
        for g in groups:
            node = node.setdefault(g, {})
        node[name] = value
    return tree


def is_legacy(given: dict) -> bool:
    """True for a config written before the groups (flat fields; e.g. an old config.json)."""
    return any(k in given and not isinstance(given[k], dict) for k in GROUPS)


def upgrade(given, *, fill_added: bool = False) -> dict:
    """A config (ConfigDict or dict) as a nested dict of the current schema.

    Flat configs from before the groups (:func:`is_legacy`) are mapped through
    ``LEGACY_FIELDS``; with ``fill_added`` (a stored run's config), fields it lacks that were
    added later take their old behaviour (``ADDED_FIELDS``). Current configs pass through.
    """
    given = given.to_dict() if hasattr(given, "to_dict") else dict(given)
    if is_legacy(given):
        unknown = sorted(set(given) - set(LEGACY_FIELDS))
        if unknown:
            raise ValueError(
                f"unknown config field(s) {unknown} in a flat (pre-group) config; "
                f"allowed: {sorted(LEGACY_FIELDS)}."
            )
        flat = {LEGACY_FIELDS[k]: v for k, v in given.items()}
    else:
        flat = flatten(given)
    if fill_added:
        flat = {**ADDED_FIELDS, **flat}
    return _unflatten(flat)


def _is_int(x) -> bool:
    return isinstance(x, (int, np.integer)) and not isinstance(x, bool)


def _is_number(x) -> bool:
    return isinstance(x, (int, float, np.integer, np.floating)) and not isinstance(x, bool)


def validate(config, *, check_devices: bool = True) -> ml_collections.ConfigDict:
    """The config completed with defaults and checked; raises ValueError before any work.

    Accepts a ConfigDict or a dict, grouped, or flat from before the groups (:func:`upgrade`).
    Unknown fields (typos) are errors naming the field and the closest known one, as are values
    outside what is allowed (one line each). ``check_devices=False`` skips the checks against
    this machine's devices (``loop.num_devices``, batch divisibility): for reading a stored
    run's config elsewhere (the audit).
    """
    import ml_collections

    defaults = flatten(default_config().to_dict())
    given = flatten(upgrade(config))
    unknown = sorted(set(given) - set(defaults))
    if unknown:
        import difflib

        moved = {k: v for k, v in LEGACY_FIELDS.items() if k in unknown}
        close = {
            k: m[0]
            for k in unknown
            if k not in moved
            for m in [difflib.get_close_matches(k, sorted(defaults), n=1)]
            if m
        }
        hints = ([f"moved: {moved}"] if moved else []) + (
            [f"did you mean: {close}"] if close else []
        )
        hint = f" ({'; '.join(hints)})" if hints else ""
        raise ValueError(
            f"unknown config field(s) {unknown}{hint}; the fields are those of "
            f"l2rw_jax.config.default_config() (print it)."
        )
    filled = {**defaults, **given}
    # The default noise (uniform, 0.4) is the default of synthetic benchmarks only: labels read
    # as given (a label key, an npz with y_train_true) default to no noise on top, and a noise
    # without a ratio (given, transition) takes ratio 0 instead of the uniform default's.
    noise_default = (filled["data.noise"], filled["data.noise_ratio"]) == (
        defaults["data.noise"],
        defaults["data.noise_ratio"],
    )
    if noise_default and (
        filled["data.label_key"] is not None or array_source.npz_has_truth(filled["data.dataset"])
    ):
        filled["data.noise"] = "given"
    if (
        filled["data.noise"] in ("given", "transition")
        and filled["data.noise_ratio"] == defaults["data.noise_ratio"]
    ):
        filled["data.noise_ratio"] = 0.0
    c = ml_collections.ConfigDict(_unflatten(filled))
    if not isinstance(c.model.options, ml_collections.ConfigDict):
        c.model.options = ml_collections.ConfigDict(dict(c.model.options or {}))
    _check(c, check_devices)
    return c


def _check(c, check_devices: bool) -> None:
    d, o, p = c.data, c.optim, c.loop
    if c.method.name not in METHODS:
        raise ValueError(
            f"method.name={c.method.name!r} is not supported; allowed: {', '.join(METHODS)}."
        )
    if p.backend not in BACKENDS:
        raise ValueError(
            f"loop.backend={p.backend!r} is not supported; allowed: {', '.join(BACKENDS)}."
        )
    positive = [("num_steps", c.num_steps), ("num_seeds", c.num_seeds)]
    positive += [(f"data.{n}", d[n]) for n in ("batch_size", "clean_batch_size", "eval_batch_size")]
    positive += [
        (f"loop.{n}", p[n])
        for n in (
            "log_every",
            "eval_every",
            "checkpoint_every",
            "keep_checkpoints",
            "steps_per_fetch",
            "steps_per_call",
        )
    ]
    for name, value in positive:
        if not _is_int(value) or value < 1:
            raise ValueError(f"{name} must be an integer >= 1, got {value!r}.")
    for name, value in (
        ("seed", c.seed),
        ("data.hyper_val_size", d.hyper_val_size),
        ("data.selection_size", d.selection_size),
        ("method.finetune_steps", c.method.finetune_steps),
        ("loop.num_devices", p.num_devices),
    ):
        if not _is_int(value) or value < 0:
            raise ValueError(f"{name} must be an integer >= 0, got {value!r}.")
    if c.method.name == "finetune" and c.method.finetune_steps < 1:
        raise ValueError(
            "method.name='finetune' needs method.finetune_steps >= 1, got "
            f"{c.method.finetune_steps}."
        )
    if p.stop_after_steps is not None and (
        not _is_int(p.stop_after_steps) or p.stop_after_steps < 1
    ):
        raise ValueError(
            f"loop.stop_after_steps must be None or an integer >= 1, got {p.stop_after_steps!r}."
        )
    if not (_is_number(o.learning_rate) and o.learning_rate > 0):
        raise ValueError(f"optim.learning_rate must be a positive number, got {o.learning_rate!r}.")
    if not (_is_number(o.momentum) and 0 <= o.momentum < 1):
        raise ValueError(f"optim.momentum must be a number in [0, 1), got {o.momentum!r}.")
    if not (_is_number(o.weight_decay) and o.weight_decay >= 0):
        raise ValueError(f"optim.weight_decay must be a number >= 0, got {o.weight_decay!r}.")
    if not (_is_number(o.lr_decay) and o.lr_decay > 0):
        raise ValueError(f"optim.lr_decay must be a positive number, got {o.lr_decay!r}.")
    bounds = tuple(o.lr_boundaries)
    if any(not _is_int(b) or b < 1 for b in bounds) or list(bounds) != sorted(set(bounds)):
        raise ValueError(f"optim.lr_boundaries must be increasing integers >= 1, got {bounds!r}.")
    if o.nesterov and o.momentum == 0:
        raise ValueError("optim.nesterov=True needs optim.momentum > 0.")
    if d.pixel_scale not in ("standardize", "unit"):
        raise ValueError(
            f"data.pixel_scale must be 'standardize' or 'unit', got {d.pixel_scale!r}."
        )
    datasets.check_name(d.dataset)
    if d.noise not in corruption.RATIO_NOISE_TYPES and d.noise_ratio != 0:
        raise ValueError(
            f"data.noise_ratio={d.noise_ratio} only applies to data.noise "
            f"{', '.join(corruption.RATIO_NOISE_TYPES)}; with data.noise="
            f"{d.noise!r} set data.noise_ratio=0."
        )
    if d.label_key is not None and d.noise != "given":
        raise ValueError(
            f"data.label_key={d.label_key!r} reads labels as the user observed "
            f"them: data.noise must be 'given' (no synthetic noise on top), got "
            f"{d.noise!r}."
        )
    for name in ("label_key", "true_label_key"):
        if d[name] is not None and not (isinstance(d[name], str) and d[name]):
            raise ValueError(
                f"data.{name} must be a feature name (a non-empty string) or None, got {d[name]!r}."
            )
    if c.method.name == "oracle" and d.noise == "none":
        raise ValueError(
            "method.name='oracle' trains on the correctly labelled rows, which "
            "data.noise='none' does not know; use a synthetic noise or 'given' "
            "labels with their truth (y_train_true, data.true_label_key)."
        )
    # Whether the data brings its own clean set is known once it is loaded: make_splits checks
    # clean_per_class against it again then.
    for as_written in (True, False):
        corruption.check_split_args(
            num_classes=None,
            seed=c.seed,
            clean_given=None,
            **from_config.split_options(d, as_written=as_written),
        )
    # Checks the model's name and options.
    model_factory.create_model(c.model.name, 2, **from_config.model_kwargs(c.model))
    scheme, options = from_config.weighing(c.method)
    try:
        methods.get_scheme(scheme, **options)  # Checks the scheme's options.
    except ValueError as e:  # Named by its config group: the message says the option.
        raise ValueError(f"method.{scheme}: {e}") from None
    l = c.method.l2rw
    if l.correction not in CORRECTIONS:
        raise ValueError(
            f"method.l2rw.correction={l.correction!r} is not supported; allowed: "
            f"{', '.join(CORRECTIONS)}."
        )
    if not (_is_number(l.correction_at) and 0 < l.correction_at < 1):
        raise ValueError(
            f"method.l2rw.correction_at must be a number in (0, 1), got {l.correction_at!r}."
        )
    mix = options.get("mix", "none") if scheme == "l2rw" else "none"
    mixes = mix.startswith("reliability")  # the split-half mixes: an even clean batch
    if mixes and d.clean_batch_size % 2:
        raise ValueError(
            f"method.l2rw.mix={mix!r} splits the clean batch in two halves: "
            f"data.clean_batch_size must be even, got {d.clean_batch_size}."
        )
    if not check_devices:
        return
    import jax  # Here: the device count is the only thing validation asks JAX.

    if p.num_devices > len(jax.devices()):
        raise ValueError(
            f"loop.num_devices={p.num_devices} but only {len(jax.devices())} devices exist."
        )
    if jax.process_count() > 1 and p.num_devices not in (0, len(jax.devices())):
        # Every process must hold part of the mesh: each places its own rows on its devices.
        raise ValueError(
            f"loop.num_devices={p.num_devices} in a job of {jax.process_count()} "
            f"processes; a multi-host run trains on every process's devices: use "
            f"loop.num_devices=0 (all {len(jax.devices())})."
        )
    n_dev = p.num_devices or len(jax.devices())
    for name in ("batch_size", "clean_batch_size", "eval_batch_size"):
        if d[name] % n_dev:
            raise ValueError(
                f"data.{name}={d[name]} is not divisible by the {n_dev} devices "
                f"(loop.num_devices={p.num_devices}); use a multiple of {n_dev}."
            )
    if mixes and (d.clean_batch_size // n_dev) % 2:
        raise ValueError(
            f"method.l2rw.mix={mix!r} splits each device's clean batch in two "
            f"halves: data.clean_batch_size={d.clean_batch_size} over {n_dev} devices "
            f"is odd per device; use a multiple of {2 * n_dev}."
        )


def check_batch_sizes(data, num_train: int, num_clean: int) -> None:
    """A batch larger than its set would repeat examples within one step: refused.

    ``data`` is the config's data group; the set sizes are known once the splits are built.
    """
    for name, size, n, what in (
        ("batch_size", data.batch_size, num_train, "noisy training"),
        ("clean_batch_size", data.clean_batch_size, num_clean, "clean"),
    ):
        if size > n:
            raise ValueError(
                f"data.{name}={size} exceeds the {what} set ({n} examples after "
                f"the splits); allowed: 1..{n}."
            )


def config_differences(previous: dict, current) -> dict[str, tuple[Any, Any]]:
    """{dotted field: (previous, current)} of the fields that differ, ``RESUMABLE_FIELDS``
    and the options of the schemes the run does not use aside (``method.mwnet.*`` of an l2rw
    run, ``method.l2rw.*`` of an ERM run: a changed library default there changes nothing the
    run computes); ``previous`` is a stored config.json (flat ones from before the groups too).
    """
    before = flatten(upgrade(previous, fill_added=True))
    now = flatten(upgrade(current))
    unused = tuple(
        f"method.{name}." for name in from_config.SCHEME_GROUPS if name != now.get("method.name")
    )
    return {
        k: (before.get(k), now.get(k))
        for k in sorted(set(before) | set(now))
        if k not in RESUMABLE_FIELDS
        and not k.startswith(unused)
        and before.get(k) != now.get(k)
        and not (
            k == "data.corrupt_given_labels"  # only read for an own noisy source
            and (
                now.get("data.noise") not in from_config.SYNTHETIC_NOISES
                or not datasets.is_own_source(now.get("data.dataset"))
            )
        )
        and not (k == "data.dataset" and datasets.same_local_source(before.get(k), now.get(k)))
    }
