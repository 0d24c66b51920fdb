"""``train_and_evaluate(config, workdir)``: the training loop of every method, K seeds at once.

One run of the command trains ``config.num_seeds = K`` independent models. Member ``k`` uses
seed ``s_k = config.seed + k`` for *everything*: the clean / noisy split and the corruption
(``corruption.make_splits(seed=s_k)``), the batch order and augmentation, the model
initialisation and the step keys. So member ``k`` of a K-seed run is the run ``seed = s_k,
num_seeds = 1`` (the tests check this to 1e-6), and a K-seed run is K splits, as in the
paper's "mean over 5 splits" (Ren et al. 2018, arXiv 1803.09050, §5). With ``vmap_seeds``
(default) the K members advance in one jitted step, ``jax.vmap``-ed over a leading seed axis
of the state and the batches (small models on a CPU are dispatch-bound: K seeds cost little
more than one); without it, the same compiled step is called once per member (convnets on a
CPU, where vmapped kernels become slow grouped convolutions).

Methods (``config.method``):

- weighting schemes from :mod:`l2rw_jax.methods` (``erm``, ``l2rw``, ``random``, ``proportion``,
  ``hard_mining``, ``mwnet``): same data, different ``w_B``;
- data-level methods, here in the loop (they all weigh with ``erm``):
  ``resample`` trains on a class-balanced oversampling of the noisy training set (every
  observed class cycled to the size of the largest one, see :func:`balanced_rows`);
  ``finetune`` (the paper's "+FT") trains ``num_steps`` steps of ERM on the noisy set, then
  ``finetune_steps`` more on the clean set with the same optimizer (its state and schedule
  continue); ``clean_only`` trains ``num_steps`` steps on the clean set alone.

Evaluation every ``eval_every`` steps on the test set and on a *noisy hyper-validation split*:
``hyper_val_size`` examples held out of the noisy training set (seeded, after the corruption)
and scored against their observed, possibly wrong labels — the only validation a practitioner
without extra clean data has. ``results.json`` reports the final, the best-on-test (optimistic)
and the hyper-validation-selected test accuracy.

The run's workdir (everything written atomically: tmp file, then ``os.replace``)::

    config.json            the full config (a re-run with a different config fails)
    metrics.jsonl          one JSON object per line: {"step", "split": "train"|"test"|"hyperval",
                           "seed", metrics...}; see :func:`train_and_evaluate`
    tb/                    TensorBoard event files (tensorboardX; none where it is not installed)
    checkpoints/<step>/    orbax (atomic), newest keep_checkpoints kept: Composite
                           carry = (state, acc, msum): state a TrainState whose every leaf has
                             a leading seed axis K (also for K = 1); acc = {"w_sum": KxN,
                             "count": KxN, "all_zero_steps": K, and for l2rw "g_sum": KxN};
                             msum = metric sums since the last log;
                           meta = JSON {"history": evaluations so far, "seeds", "num_classes",
                             "mean", "std" (per member, the input normalisation), "elapsed_s"}
    example_weights.npz    member 0 (seed = config.seed), one row per noisy training example
                           (after the hyper-validation hold-out): index (row, 0..N-1),
                           mean_weight (= weight_sum / max(count, 1); each step's weights sum
                           to 1 over its batch, so uniform weights are 1/B), count (times in a
                           batch), weight_sum, is_noisy, label (observed), true_label,
                           source_index (row in the source training set), seed,
                           mean_meta_grad (l2rw: the example's meta-gradient g_i, divided by
                           its batch's RMS (methods.rms_normalized), averaged over its visits;
                           high = harmful to the clean loss = suspect; unlike mean_weight it
                           is not clipped at 0 nor divided by a batch sum), and
                           meta_grad_memory (l2rw with l2rw_memory_decay > 0: the final
                           per-example memory of the normalised meta-gradient; high = suspect)
    example_weights_seed<s>.npz   the same for every member when num_seeds > 1
    results.json           final summary (schema in :func:`train_and_evaluate`)

:func:`member_data` rebuilds a member's splits exactly as training saw them (for audits).

Resuming: re-running the same command restores the newest checkpoint (state, accumulated
weights, pending metric sums, evaluation history) and restarts the input streams at that step
(they are stateless functions of (seed, step), see :mod:`l2rw_jax.input_pipeline`), so on CPU
the final metrics equal those of an uninterrupted run.

Input (``config.backend``): ``device`` places every member's noisy and clean splits on the
devices once and builds each batch there, ``steps_per_call`` steps per jitted call under
``lax.scan`` (:mod:`l2rw_jax.device_data`; no TensorFlow); ``tfdata`` streams host batches
from :mod:`l2rw_jax.input_pipeline`, one dispatch per step. Both draw the same examples at each
(seed, step); without augmentation both train to identical parameters on CPU (tested); the
device path's crops and flips come from JAX's PRNG instead of TensorFlow's. ``auto`` (default)
is ``device``, or the backend of the run being resumed (runs from before the field: tfdata).
Every data-level method, augmentation, vmapped or looped seeds and data parallelism run on both.
"""
from __future__ import annotations

import json
import logging
import math
import os
import functools
import queue
import threading
import time
from typing import TYPE_CHECKING, Any, Callable, Iterator, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
import optax

from l2rw_jax import adapter
from l2rw_jax import corruption
from l2rw_jax import datasets
from l2rw_jax import device_data
from l2rw_jax import input_pipeline
from l2rw_jax import methods
from l2rw_jax import models
from l2rw_jax import reweight
from l2rw_jax import sharding
from l2rw_jax import step as step_lib
from l2rw_jax import workdir as workdir_lib
from l2rw_jax import xla_options
from l2rw_jax.train_state import TrainState

if TYPE_CHECKING:
    import ml_collections

log = logging.getLogger("l2rw_jax.train")

PyTree = Any

WEIGHING_METHODS = ("erm", "l2rw", "random", "proportion", "hard_mining", "mwnet")
DATA_METHODS = ("resample", "finetune", "clean_only")
METHODS = WEIGHING_METHODS + DATA_METHODS
# Fields that may change between a run and its resumption: they do not change the numbers.
_RESUMABLE_FIELDS = ("stop_after_steps", "progress_bar", "steps_per_fetch", "steps_per_call")
BACKENDS = ("auto", "device", "tfdata")
_EVAL_SPLITS = ("test", "hyperval")


# ----------------------------------------------------------------------------- config


def default_config() -> ml_collections.ConfigDict:
    """Every field ``train_and_evaluate`` reads, with its default (presets: experiments/configs)."""
    # ml_collections (pure Python, with PyYAML) only when a config is made: `import l2rw_jax`
    # must work where it is not installed (DESIGN §7); carry it there to train.
    import ml_collections
    from ml_collections import config_dict

    c = ml_collections.ConfigDict()
    # --- Data (l2rw_jax.datasets, corruption, input_pipeline).
    c.dataset = "digits"            # tfds name (mnist, cifar10...), "digits" or "npz:/path.npz"
    # tfds data_dir; None: $TFDS_DATA_DIR, else ~/tensorflow_datasets.
    c.data_dir = config_dict.placeholder(str)
    c.noise = "uniform"             # none | uniform | background | imbalance (DESIGN §3)
    c.noise_ratio = 0.4             # fraction flipped (uniform / background); 0 otherwise
    c.background_class = config_dict.placeholder(int)  # background flip target; None: seeded draw
    c.official_convention = False   # official code's flip (label in 0..C-2): comparisons only
    c.majority_fraction = config_dict.placeholder(float)  # imbalance: majority fraction p
    c.num_train = 5000              # imbalance: size N of the training set
    c.majority_class = 9            # imbalance: majority source class (label 1 after relabelling)
    c.minority_class = 4            # imbalance: source class of the minority (label 0)
    c.clean_per_class = 10          # clean (trusted) examples per class, never corrupted
    c.hyper_val_size = 0            # noisy training examples held out for hyper-validation
    c.augment = False               # CIFAR pad-4 random crop + flip on the training streams
    # Input scaling: standardize ((x / 255 - mean_C) / std_C, statistics of the member's
    # training images) | unit (x / 255 in [0, 1], as the official MNIST code feeds LeNet).
    c.pixel_scale = "standardize"
    c.batch_size = 100              # noisy training batch B
    c.clean_batch_size = 100        # clean (validation) batch M of the meta-step
    c.eval_batch_size = 500         # evaluation batch (last one padded and masked)
    # --- Model (l2rw_jax.models.create_model).
    c.model = "small_cnn"           # lenet | resnet32 | wrn | small_cnn | mlp | pkg.mod:Class
    c.model_options = ml_collections.ConfigDict()  # extra create_model kwargs, e.g. depth / width
    # --- Method (l2rw_jax.methods and the data-level methods above).
    c.method = "l2rw"               # one of METHODS
    c.l2rw_mode = "forward"         # l2rw meta-gradient: forward | reverse (both exact)
    c.l2rw_all_clipped = "zero"     # l2rw weights when every -g_i <= 0: zero (paper) | uniform
    c.l2rw_lookahead = "optimizer"  # look-ahead: optimizer (DESIGN §2) | sgd (official code)
    # Options of methods.l2rw. The defaults are the recommended robust variant (ROBUST_L2RW,
    # README "Robust reweighting"); the paper's algorithm is PAPER_L2RW (reproduction configs).
    c.l2rw_memory_decay = 0.9       # per-example EMA of the meta-gradient, keyed by row; 0: off
    c.l2rw_warmup_steps = 200       # uniform weights for the first steps
    c.l2rw_weight_map = "sign"      # sign: 1[g < 0] | clip: max(-g, 0) (paper) | one (ablation)
    c.l2rw_normalize = "class_balanced"  # class_balanced | class | batch (paper)
    c.l2rw_meta_params = "last"     # last: meta-gradient through the last layer | all (paper)
    c.l2rw_loss_quantile = 0.0      # loss gate: keep C_i <= q-quantile of clean losses; 0: off
    c.mwnet_hidden = 100            # Meta-Weight-Net hidden units (Shu et al. 2019: 100)
    c.mwnet_lr = 1e-3               # Meta-Weight-Net Adam learning rate (Shu et al. 2019)
    c.mwnet_weight_decay = 1e-4     # Meta-Weight-Net L2 weight decay (Shu et al. 2019)
    c.mwnet_normalize = True        # weights V(C_i) / sum_j V(C_j) (True) or V(C_i) / B (False)
    c.finetune_steps = 0            # finetune only: clean-set steps after num_steps of ERM
    # --- Optimizer: add_decayed_weights(weight_decay) -> sgd(schedule, momentum, nesterov).
    c.learning_rate = 0.1           # initial learning rate
    c.momentum = 0.9                # SGD momentum (0: plain SGD)
    c.nesterov = False              # Nesterov momentum
    c.weight_decay = 0.0            # L2 coefficient (gradient += weight_decay * params)
    c.lr_boundaries = ()            # steps at which the learning rate is multiplied by lr_decay
    c.lr_decay = 0.1                # factor applied at each boundary
    c.num_steps = 1000              # training steps (before finetune_steps)
    # --- Seeds.
    c.seed = 0                      # member k uses seed + k for split, noise, order, init
    c.num_seeds = 1                 # K members trained in one run
    # True: one jitted step vmapped over the K members (dispatch-bound models: small CNNs on a
    # CPU). False: one call per member of the same step (convnets on a CPU, where vmapping
    # the kernels turns convolutions into slow grouped ones: LeNet 3-4x slower per member).
    c.vmap_seeds = True
    # --- Loop.
    c.num_devices = 1               # data-parallel devices (0: all); batches split over them
    # Input backend. device: the splits placed on the devices once, each batch gathered and
    # augmented there, steps_per_call steps per jitted call (lax.scan); no TensorFlow.
    # tfdata: input_pipeline's tf.data streams, batches built on the host. Same examples in
    # the same order; augmentation draws differ (l2rw_jax.device_data). auto: device (every
    # source is loaded into memory), or what the run being resumed in the workdir used.
    c.backend = "auto"
    c.steps_per_call = 100          # device: steps per jitted call (calls also end at evals
                                    # and checkpoints; each distinct length compiles once)
    c.steps_per_fetch = 10          # tfdata: batches read and sent to the devices together
    c.log_every = 100               # train metrics (means over the interval) every this many steps
    c.eval_every = 500              # test / hyper-validation evaluation every this many steps
    c.checkpoint_every = 1000       # orbax checkpoint every this many steps (and at the end)
    c.keep_checkpoints = 3          # newest checkpoints kept
    c.stop_after_steps = config_dict.placeholder(int)  # stop (as if killed) after this step: tests
    c.progress_bar = True           # tqdm bar with steps/s and ETA
    return c


# l2rw_* config fields of the paper's algorithm (Ren et al. 2018, Alg. 1; DESIGN.md section 2):
# what the reproduction configs use.
PAPER_L2RW = {"l2rw_memory_decay": 0.0, "l2rw_warmup_steps": 0, "l2rw_weight_map": "clip",
              "l2rw_normalize": "batch", "l2rw_meta_params": "all", "l2rw_loss_quantile": 0.0}
# The robust variant (methods.ROBUST_OPTIONS; README "Robust reweighting" has the evidence).
ROBUST_L2RW = {f"l2rw_{k}": v for k, v in methods.ROBUST_OPTIONS.items()}


# Config fields added after the first release, with the behaviour runs had before them.
_ADDED_FIELDS = {**PAPER_L2RW, "l2rw_lookahead": "optimizer", "pixel_scale": "standardize",
                 "backend": "tfdata"}


def _is_int(x) -> bool:
    return isinstance(x, (int, np.integer)) and not isinstance(x, bool)


def validate_config(config: ml_collections.ConfigDict) -> ml_collections.ConfigDict:
    """The config completed with defaults and checked; raises ValueError before any work.

    Unknown fields (typos) are errors, as are values outside what is allowed.
    """
    import ml_collections

    defaults = default_config()
    given = config.to_dict() if isinstance(config, ml_collections.ConfigDict) else dict(config)
    unknown = sorted(set(given) - set(defaults.keys()))
    if unknown:
        raise ValueError(f"unknown config field(s) {unknown}; allowed fields: "
                         f"{sorted(defaults.keys())}.")
    merged = defaults.to_dict()
    merged.update(given)
    c = ml_collections.ConfigDict(merged)

    if c.method not in METHODS:
        raise ValueError(f"method={c.method!r} is not supported; allowed: {', '.join(METHODS)}.")
    if c.backend not in BACKENDS:
        raise ValueError(f"backend={c.backend!r} is not supported; allowed: "
                         f"{', '.join(BACKENDS)}.")
    positive = ("batch_size", "clean_batch_size", "eval_batch_size", "num_steps", "num_seeds",
                "log_every", "eval_every", "checkpoint_every", "keep_checkpoints",
                "steps_per_fetch", "steps_per_call")
    for name in positive:
        if not _is_int(c[name]) or c[name] < 1:
            raise ValueError(f"{name} must be an integer >= 1, got {c[name]!r}.")
    for name in ("seed", "hyper_val_size", "finetune_steps", "num_devices"):
        if not _is_int(c[name]) or c[name] < 0:
            raise ValueError(f"{name} must be an integer >= 0, got {c[name]!r}.")
    if c.method == "finetune" and c.finetune_steps < 1:
        raise ValueError("method='finetune' needs finetune_steps >= 1, got "
                         f"{c.finetune_steps}.")
    if c.stop_after_steps is not None and (not _is_int(c.stop_after_steps)
                                           or c.stop_after_steps < 1):
        raise ValueError(f"stop_after_steps must be None or an integer >= 1, got "
                         f"{c.stop_after_steps!r}.")
    if not (isinstance(c.learning_rate, (int, float)) and c.learning_rate > 0):
        raise ValueError(f"learning_rate must be a positive number, got {c.learning_rate!r}.")
    if not (isinstance(c.momentum, (int, float)) and 0 <= c.momentum < 1):
        raise ValueError(f"momentum must be a number in [0, 1), got {c.momentum!r}.")
    if not (isinstance(c.weight_decay, (int, float)) and c.weight_decay >= 0):
        raise ValueError(f"weight_decay must be a number >= 0, got {c.weight_decay!r}.")
    if not (isinstance(c.lr_decay, (int, float)) and c.lr_decay > 0):
        raise ValueError(f"lr_decay must be a positive number, got {c.lr_decay!r}.")
    bounds = tuple(c.lr_boundaries)
    if any(not _is_int(b) or b < 1 for b in bounds) or list(bounds) != sorted(set(bounds)):
        raise ValueError(f"lr_boundaries must be increasing integers >= 1, got {bounds!r}.")
    if c.pixel_scale not in ("standardize", "unit"):
        raise ValueError(f"pixel_scale must be 'standardize' or 'unit', got {c.pixel_scale!r}.")
    if c.nesterov and c.momentum == 0:
        raise ValueError("nesterov=True needs momentum > 0.")
    datasets.check_name(c.dataset)
    corruption.check_split_args(
        num_classes=None, noise=c.noise, ratio=c.noise_ratio, clean_per_class=c.clean_per_class,
        seed=c.seed, background_class=c.background_class,
        official_convention=c.official_convention, majority_fraction=c.majority_fraction,
        num_train=c.num_train, majority_class=c.majority_class,
        minority_class=c.minority_class)
    models.create_model(c.model, 2, **c.model_options.to_dict())  # Checks name and options.
    name, options = _weighing(c)
    methods.get_scheme(name, **options)  # Checks the scheme's options.
    if c.num_devices > len(jax.devices()):
        raise ValueError(f"num_devices={c.num_devices} but only {len(jax.devices())} devices "
                         f"exist.")
    n_dev = c.num_devices or len(jax.devices())
    for name in ("batch_size", "clean_batch_size", "eval_batch_size"):
        if c[name] % n_dev:
            raise ValueError(f"{name}={c[name]} is not divisible by the {n_dev} devices "
                             f"(num_devices={c.num_devices}); use a multiple of {n_dev}.")
    return c


def _weighing(config) -> tuple[str, dict]:
    """(scheme name, options) of the weighting scheme behind ``config.method``: the arguments of
    ``methods.get_scheme`` (``build_run`` first resolves ``meta_params="last"`` for the model)."""
    if config.method == "l2rw":
        return "l2rw", {"mode": config.l2rw_mode, "all_clipped": config.l2rw_all_clipped,
                        "lookahead": config.l2rw_lookahead,
                        "memory_decay": config.l2rw_memory_decay,
                        "warmup_steps": config.l2rw_warmup_steps,
                        "weight_map": config.l2rw_weight_map, "normalize": config.l2rw_normalize,
                        "meta_params": config.l2rw_meta_params,
                        "loss_quantile": config.l2rw_loss_quantile}
    if config.method == "mwnet":
        return "mwnet", {"hidden": config.mwnet_hidden, "meta_lr": config.mwnet_lr,
                         "meta_weight_decay": config.mwnet_weight_decay,
                         "normalize": config.mwnet_normalize}
    if config.method in DATA_METHODS:
        return "erm", {}
    return config.method, {}


def make_optimizer(config) -> optax.GradientTransformation:
    """The paper's recipe: SGD with momentum, piecewise-constant learning rate, L2 weight decay.

    ``lr(t) = learning_rate * lr_decay ** #{b in lr_boundaries : t >= b}`` and
    ``update = -lr(t) * momentum_trace(grad + weight_decay * params)``: ``add_decayed_weights``
    before ``sgd`` is the gradient of ``weight_decay / 2 * ||params||^2`` added to the loss.
    """
    schedule = optax.piecewise_constant_schedule(
        config.learning_rate, {int(b): float(config.lr_decay) for b in config.lr_boundaries})
    return optax.chain(
        optax.add_decayed_weights(config.weight_decay),
        optax.sgd(schedule, momentum=config.momentum or None, nesterov=config.nesterov))


# ----------------------------------------------------------------------------- data


class MemberData(NamedTuple):
    """One member's (one seed's) data: its splits after the hyper-validation hold-out."""
    seed: int
    splits: corruption.Splits      # training rows = the noisy training set minus the hold-out
    hyperval: corruption.Splits | None  # test_* = the held-out noisy rows (observed labels)
    mean: np.ndarray
    std: np.ndarray
    class_counts: np.ndarray       # observed labels of the training rows, per class


def hold_out(splits: corruption.Splits, size: int, seed: int
             ) -> tuple[corruption.Splits, corruption.Splits | None]:
    """Moves ``size`` seeded random rows of the noisy training set into a hyper-validation set.

    The rows are the first ``size`` of ``default_rng([seed, 100]).permutation(N)``; both parts
    keep ascending row order. Returns ``(splits without them, hyperval)`` where ``hyperval`` is a
    ``Splits`` whose ``test_*`` fields hold the held-out images and *observed* labels
    (``test_source_index`` their rows in the source training set); None when ``size == 0``.
    """
    n = len(splits.train_labels)
    if size == 0:
        return splits, None
    if size >= n:
        raise ValueError(f"hyper_val_size={size} must be smaller than the noisy training set "
                         f"({n} examples).")
    perm = np.random.default_rng([seed, 100]).permutation(n)
    held, kept = np.sort(perm[:size]), np.sort(perm[size:])
    train = splits._replace(
        train_x=splits.train_x[kept], train_labels=splits.train_labels[kept],
        train_true_labels=splits.train_true_labels[kept],
        train_is_noisy=splits.train_is_noisy[kept],
        train_source_index=splits.train_source_index[kept])
    hyperval = splits._replace(
        test_x=splits.train_x[held], test_labels=splits.train_labels[held],
        test_source_index=splits.train_source_index[held])
    return train, hyperval


def balanced_rows(labels: np.ndarray, num_classes: int, seed: int) -> np.ndarray:
    """Rows of a class-balanced oversampling of ``labels`` (the ``resample`` method).

    Every class c present with ``n_c`` rows contributes ``n_max = max_c n_c`` rows: its rows
    in a seeded random order (``default_rng([seed, 101, c])``), cycled. The stream then shuffles
    these rows every epoch, so each batch is class-balanced in expectation.
    """
    counts = np.bincount(labels, minlength=num_classes)
    n_max = int(counts.max())
    rows = []
    for c in np.flatnonzero(counts):
        rows_c = np.flatnonzero(labels == c)
        rows_c = rows_c[np.random.default_rng([seed, 101, int(c)]).permutation(rows_c.size)]
        rows.append(np.resize(rows_c, n_max))
    return np.concatenate(rows)


def _member_data(config, arrays: datasets.Arrays, seed: int) -> MemberData:
    splits = corruption.make_splits(
        arrays.x_train, arrays.y_train, arrays.x_test, arrays.y_test,
        num_classes=arrays.num_classes, noise=config.noise, ratio=config.noise_ratio,
        clean_per_class=config.clean_per_class, seed=seed,
        background_class=config.background_class,
        official_convention=config.official_convention,
        majority_fraction=config.majority_fraction, num_train=config.num_train,
        majority_class=config.majority_class, minority_class=config.minority_class)
    splits, hyperval = hold_out(splits, config.hyper_val_size, seed)
    if config.pixel_scale == "unit":
        channels = splits.train_x.shape[-1]
        mean, std = np.zeros(channels, np.float32), np.ones(channels, np.float32)
    else:
        mean, std = input_pipeline.channel_stats(splits.train_x)
    counts = np.bincount(splits.train_labels, minlength=splits.num_classes)
    return MemberData(seed, splits, hyperval, mean, std, counts)


def member_data(config, member: int = 0) -> MemberData:
    """Member ``member``'s data (seed ``config.seed + member``) exactly as training saw it:
    the splits after the hyper-validation hold-out and the normalisation statistics. For
    audits and notebooks; ``config`` is a ConfigDict or a dict (e.g. a run's config.json)."""
    import ml_collections

    config = validate_config(ml_collections.ConfigDict(dict(config)))
    if not _is_int(member) or not 0 <= member < config.num_seeds:
        raise ValueError(f"member={member!r} must be an integer in [0, {config.num_seeds}).")
    arrays = datasets.load_arrays(config.dataset, data_dir=config.data_dir)
    return _member_data(config, arrays, config.seed + member)


def _clean_as_training(splits: corruption.Splits) -> corruption.Splits:
    """The clean set in the training fields (``clean_only`` and the ``finetune`` phase)."""
    labels = splits.clean_labels.astype(np.int32)
    return splits._replace(
        train_x=splits.clean_x, train_labels=labels, train_true_labels=labels,
        train_is_noisy=np.zeros(labels.shape, bool),
        train_source_index=splits.clean_source_index)


def _train_dataset(config, md: MemberData, phase: str, start_step: int):
    """One member's training stream (tf.data) from ``start_step`` (relative to the phase)."""
    import tensorflow as tf  # Only the tf.data backend imports TensorFlow.

    splits, rows = md.splits, None
    if phase == "clean":
        splits = _clean_as_training(splits)
    elif config.method == "resample":
        rows = balanced_rows(splits.train_labels, splits.num_classes, md.seed)
        splits = splits._replace(
            train_x=splits.train_x[rows], train_labels=splits.train_labels[rows],
            train_true_labels=splits.train_true_labels[rows],
            train_is_noisy=splits.train_is_noisy[rows],
            train_source_index=splits.train_source_index[rows])
    ds = input_pipeline.train_dataset(
        splits, batch_size=config.batch_size, seed=md.seed, mean=md.mean, std=md.std,
        augment=config.augment, start_step=start_step)
    if rows is not None:
        # Back to rows of the noisy training set, so weights accumulate per example.
        rows_t = tf.constant(rows.astype(np.int32))
        ds = ds.map(lambda b: {**b, "index": tf.gather(rows_t, b["index"])})
    return ds


def _eval_dataset(config, md: MemberData, split: str):
    splits = md.splits if split == "test" else md.hyperval
    return input_pipeline.test_dataset(splits, batch_size=config.eval_batch_size, mean=md.mean,
                                       std=md.std)


def _stacked(datasets_K: list):
    """K member datasets -> one dataset of batches with a leading seed axis K.

    Why: one ``next()`` per step instead of one per member and stream (each costs about a
    millisecond of host time, as much as a small model's whole step).
    """
    import tensorflow as tf

    return tf.data.Dataset.zip(tuple(datasets_K)).map(
        lambda *bs: {k: tf.stack([b[k] for b in bs]) for k in bs[0]},
        num_parallel_calls=tf.data.AUTOTUNE, deterministic=True)


def _phases(config) -> list[tuple[str, int, int]]:
    """[(phase, first global step, last global step + 1)] of the run."""
    if config.method == "clean_only":
        return [("clean", 0, config.num_steps)]
    phases = [("noisy", 0, config.num_steps)]
    if config.method == "finetune":
        phases.append(("clean", config.num_steps, config.num_steps + config.finetune_steps))
    return phases


def _host_chunks(config, members: list[MemberData], start_step: int, size: int
                 ) -> Iterator[tuple[str, int, dict, dict]]:
    """(phase, steps, train_SxK, clean_SxK) numpy chunks of ``size`` steps from ``start_step``.

    Each leaf has a leading axis of ``size`` steps, then the seed axis K. The last chunk of a
    phase holds ``steps <= size`` steps to use (it is filled up from the infinite streams, so
    every chunk has one shape). Every stream is a stateless function of (seed, step)
    (:mod:`l2rw_jax.input_pipeline`), so starting at ``start_step`` gives exactly the batches
    an uninterrupted run sees there. Why chunks: one ``next()`` and one transfer per ``size``
    steps instead of per step (each costs about a millisecond of host time, as much as a
    small model's whole step).
    """
    import tensorflow as tf

    for phase, first, end in _phases(config):
        if start_step >= end:
            continue
        begin = max(start_step, first)
        train = _stacked([_train_dataset(config, md, phase, begin - first) for md in members])
        clean = _stacked([input_pipeline.clean_dataset(
            md.splits, batch_size=config.clean_batch_size, seed=md.seed, mean=md.mean,
            std=md.std, augment=config.augment, start_step=begin) for md in members])
        n_chunks = -(-(end - begin) // size)
        chunks = tf.data.Dataset.zip((train, clean)).take(n_chunks * size).batch(size)
        for c, (train_SxK, clean_SxK) in enumerate(chunks.prefetch(1).as_numpy_iterator()):
            yield phase, min(size, end - begin - c * size), train_SxK, clean_SxK


def _resolve_backend(backend: str, workdir: str) -> str:
    """``backend`` with "auto" resolved: the backend of the run being resumed in ``workdir``
    (runs from before the field used tf.data), else "device" (``datasets.load_arrays`` loads
    every source into memory, so every source fits the device-resident path)."""
    if backend != "auto":
        return backend
    path = os.path.join(workdir, "config.json")
    if os.path.exists(path):
        with open(path) as f:
            return json.load(f).get("backend", _ADDED_FIELDS["backend"])
    return "device"


def _tfdata_advance(step_fn, group_chunks, i, carries):
    """One step of every group on row ``i`` of its chunks (a call of the tf.data backend)."""
    return [step_fn(*carry, *chunks, i) for carry, chunks in zip(carries, group_chunks)], None


def _eval_arrays(md: MemberData, split: str) -> tuple[np.ndarray, np.ndarray]:
    splits = md.splits if split == "test" else md.hyperval
    return splits.test_x, splits.test_labels


def _stacked_numpy(batches_K: list[list[dict]]) -> list[dict]:
    """K members' lists of numpy batches -> one list of batches with a leading seed axis K."""
    return [{k: np.stack([b[k] for b in bs]) for k in bs[0]} for bs in zip(*batches_K)]


def _train_order(config, md: MemberData, phase: str) -> device_data.StreamOrder:
    """One member's training-stream order on the device path: the rows ``_train_dataset``
    draws (resample: the balanced rows, mapped back to rows of the noisy training set)."""
    processes = dict(process_index=jax.process_index(), process_count=jax.process_count())
    if phase == "clean":
        return device_data.StreamOrder(md.seed, device_data.TRAIN_STREAM,
                                       len(md.splits.clean_labels), config.batch_size,
                                       **processes)
    table = None
    if config.method == "resample":
        table = balanced_rows(md.splits.train_labels, md.splits.num_classes, md.seed)
    n = len(md.splits.train_labels) if table is None else len(table)
    return device_data.StreamOrder(md.seed, device_data.TRAIN_STREAM, n, config.batch_size,
                                   table=table, **processes)


def _device_calls(config, run, groups: list[slice], mesh, start_step: int, stop_at: int
                  ) -> Iterator[tuple[str, int, Callable]]:
    """The device backend's calls from ``start_step``: ``(phase, n, advance)``, n <=
    ``steps_per_call``.

    Every group's noisy training set and clean set are placed on the devices once
    (:func:`device_data.place_split`). A call ends at the next evaluation, checkpoint, phase
    end or ``stop_at``, whichever comes first, so the loop sees the state there; its rows
    come from the same stateless (seed, step) order as the tf.data streams. ``advance
    (carries)`` dispatches the call of every group and returns ``(carries, msum_S per
    group)`` without waiting for it.
    """
    placed = []
    for g in groups:
        mds = run.members[g]
        stat = dict(mean_KxC=[md.mean for md in mds], std_KxC=[md.std for md in mds],
                    seeds=[md.seed for md in mds], mesh=mesh)
        stack = lambda f: np.stack([f(md.splits) for md in mds])
        noisy = device_data.place_split({
            "image": stack(lambda s: s.train_x),
            "label": stack(lambda s: s.train_labels.astype(np.int32)),
            "true_label": stack(lambda s: s.train_true_labels.astype(np.int32)),
            "is_noisy": stack(lambda s: s.train_is_noisy.astype(bool))}, **stat)
        clean = device_data.place_split({
            "image": stack(lambda s: s.clean_x),
            "label": stack(lambda s: s.clean_labels.astype(np.int32))}, **stat)
        placed.append((noisy, clean))
    rows_sharding = sharding.batch_sharding(mesh, leading_axes=2)  # S x K x B
    # lax.scan, except for convolutional models on XLA:CPU (see device_data.make_train_call).
    image_shape = run.members[0].splits.train_x.shape[1:]
    scan = mesh.devices.flat[0].platform != "cpu" or not device_data.has_convolution(
        run.train_step, jax.tree.map(lambda x: x[0], run.carry0[0]),
        *_batch_shapes(config, image_shape))
    calls = {phase: device_data.make_train_call(
        make_loop_step(run.train_step, phase == "noisy"), mesh, clean_phase=phase == "clean",
        augment_images=config.augment, pad=4, pad_mode="constant", log_every=config.log_every,
        total_steps=run.total_steps, scan=scan) for phase in ("noisy", "clean")}

    def advance(phase, first, steps_S, orders, carries):
        n = len(steps_S)
        if not scan:  # Rows of steps_per_call steps (those past n unused): one shape, one compile.
            steps_S = np.arange(steps_S[0], steps_S[0] + config.steps_per_call)
        out = []
        for carry, (noisy, clean), (train_K, clean_K) in zip(carries, placed, orders):
            # S x K x B and S x K x M: placed apart (B and M may differ).
            rows_train = sharding.shard_batch(
                np.stack([o.rows(steps_S - first) for o in train_K], 1), rows_sharding)
            rows_clean = sharding.shard_batch(
                np.stack([o.rows(steps_S) for o in clean_K], 1), rows_sharding)
            out.append(calls[phase](carry, noisy, clean, rows_train, rows_clean,
                                    steps_S.astype(np.int32), np.int32(first), num_steps=n))
        return [c for c, _ in out], [m for _, m in out]

    every = (config.eval_every, config.checkpoint_every)
    for phase, first, end in _phases(config):
        if start_step >= end:
            continue
        orders = [([_train_order(config, md, phase) for md in run.members[g]],
                   [device_data.StreamOrder(md.seed, device_data.CLEAN_STREAM,
                                            len(md.splits.clean_labels),
                                            config.clean_batch_size,
                                            process_index=jax.process_index(),
                                            process_count=jax.process_count())
                    for md in run.members[g]]) for g in groups]
        t = max(start_step, first)
        while t < min(end, stop_at):
            n = min([config.steps_per_call, end - t, stop_at - t] + [e - t % e for e in every])
            yield phase, n, functools.partial(advance, phase, first, np.arange(t, t + n), orders)
            t += n


# ----------------------------------------------------------------------------- jitted steps


def chunk_step(member_step: Callable) -> Callable:
    """``member_step`` on row ``i`` of chunks of batches (leading step axis S).

    ``step(state, acc, msum, train_chunk, clean_chunk, i)``: the chunks stay on the device
    for S calls and only the scalar ``i`` changes, so a call costs the host one dispatch.
    """

    def step(state, acc, msum, train_chunk, clean_chunk, i):
        row = lambda tree: jax.tree.map(
            lambda x: jax.lax.dynamic_index_in_dim(x, i, 0, keepdims=False), tree)
        return member_step(state, acc, msum, row(train_chunk), row(clean_chunk))

    return step


def make_loop_step(train_step: Callable, accumulate: bool) -> Callable:
    """One member's step plus the per-example weight accumulation and the metric sums.

    ``acc = {"w_sum": (N,), "count": (N,)}`` is scatter-added at ``batch["index"]`` (the row in
    the noisy training set) with this step's ``w_B`` (when ``accumulate``; and ``acc["g_sum"]``,
    when present, with the RMS-normalised meta-gradient ``g_B``), ``acc
    ["all_zero_steps"]`` counts the steps whose weights were all 0, and ``msum`` adds up the
    scalar metrics of the steps since the last log.
    """

    def member_step(state, acc, msum, batch, val_batch):
        state, metrics = train_step(state, batch, val_batch)
        acc = dict(acc, all_zero_steps=acc["all_zero_steps"] + metrics["all_zero"])
        if accumulate:
            index_B = batch["index"]
            acc.update(w_sum=acc["w_sum"].at[index_B].add(metrics["w_B"]),
                       count=acc["count"].at[index_B].add(1))
            if "g_sum" in acc:  # l2rw: the meta-gradient before it is clipped and normalised
                gn_B = methods.rms_normalized(metrics["g_B"])
                acc.update(g_sum=acc["g_sum"].at[index_B].add(gn_B))
        msum = {k: msum[k] + metrics[k].astype(jnp.float32) for k in msum}
        return state, acc, msum

    return member_step


def make_eval_fn(apply_fn) -> Callable[[TrainState, dict], dict]:
    """``eval_fn(state, batch) -> sums`` (one member): per-class ``correct_C`` and ``count_C``,
    and ``loss_sum``, over the rows with ``mask`` True; add them up over batches."""

    def eval_fn(state: TrainState, batch: dict) -> dict:
        logits_BxC, _ = apply_fn(state.params, state.model_state, batch["image"], False)
        labels_B, mask_B = batch["label"], batch["mask"]
        num_classes = logits_BxC.shape[-1]
        onehot_BxC = jax.nn.one_hot(labels_B, num_classes) * mask_B[:, None]
        correct_B = (jnp.argmax(logits_BxC, axis=-1) == labels_B).astype(jnp.float32)
        losses_B = step_lib.softmax_xent(logits_BxC, labels_B)
        return {"correct_C": jnp.sum(onehot_BxC * correct_B[:, None], axis=0),
                "count_C": jnp.sum(onehot_BxC, axis=0),
                "loss_sum": jnp.sum(jnp.where(mask_B, losses_B, 0.0))}

    return eval_fn


# ----------------------------------------------------------------------------- files


def write_json(path: str, obj) -> None:
    """Atomic JSON file."""
    workdir_lib.atomic_write(path, lambda f: json.dump(obj, f, indent=2, sort_keys=True))


def _write_npz(path: str, **arrays) -> None:
    workdir_lib.atomic_write(path, lambda f: np.savez(f, **arrays), mode="wb")


def _check_or_write_config(workdir: str, config, write: bool = True) -> None:
    """Raises ValueError if ``workdir`` holds a run of another config, else (``write``) writes
    config.json. Checked before the data is loaded, written only after it loaded and its sizes
    passed: a start that fails leaves nothing that blocks the corrected command."""
    path = os.path.join(workdir, "config.json")
    current = json.loads(config.to_json())
    if os.path.exists(path):
        with open(path) as f:
            # A field the stored config lacks was added to the library after that run was
            # written: the run had the behaviour from before the field existed.
            previous = {**_ADDED_FIELDS, **json.load(f)}
        differ = sorted(k for k in set(previous) | set(current)
                        if k not in _RESUMABLE_FIELDS and previous.get(k) != current.get(k))
        if differ:
            raise ValueError(
                f"workdir {workdir!r} holds a run with a different config (fields {differ}: "
                f"{ {k: (previous.get(k), current.get(k)) for k in differ} }); use a new "
                f"workdir or the same config to resume.")
    if write:
        write_json(path, current)


def _read_jsonl(path: str, max_step: int) -> list[dict]:
    """Records with ``step <= max_step`` (a torn last line from a kill is dropped)."""
    if not os.path.exists(path):
        return []
    records = []
    with open(path) as f:
        for line in f:
            try:
                record = json.loads(line)
            except json.JSONDecodeError:
                continue
            if record.get("step", 0) <= max_step:
                records.append(record)
    return records


def mean_ci95(values) -> dict:
    """Mean and 95% confidence interval of the mean (Student t, K - 1 degrees of freedom).

    ``h = t_{0.975, K-1} * s / sqrt(K)`` with ``s`` the sample standard deviation; ``ci95`` is
    None for a single value.
    """
    from scipy import stats  # scipy comes with scikit-learn.

    x = np.asarray(values, np.float64)
    out = {"per_seed": x.tolist(), "mean": float(x.mean()), "ci95": None,
           "ci95_low": None, "ci95_high": None}
    if x.size > 1:
        h = float(stats.t.ppf(0.975, x.size - 1) * x.std(ddof=1) / math.sqrt(x.size))
        out.update(ci95=h, ci95_low=out["mean"] - h, ci95_high=out["mean"] + h)
    return out


# ----------------------------------------------------------------------------- the loop


class _Run(NamedTuple):
    """What the loop needs, built once from the config."""
    members: list[MemberData]
    apply_fn: Callable
    train_step: Callable          # one member, un-jitted
    carry0: tuple                 # host (numpy) initial (state, acc, msum), stacked over K
    metric_names: list[str]
    total_steps: int
    num_classes: int


def _init_states(module, tx, members: list[MemberData], scheme: methods.WeighingScheme,
                 image_shape) -> TrainState:
    """The K members' initial TrainStates, stacked (numpy).

    Member keys: ``split(PRNGKey(seed), 3)`` -> (model init, step rng, method state). The
    model is initialised for all members in one vmapped call (one compilation, and the same
    numbers as K separate calls: the random bits are a function of each key alone).
    """
    keys = [jax.random.split(jax.random.PRNGKey(md.seed), 3) for md in members]

    def init_one(key):
        params, model_state = models.init_model(module, key, (1,) + tuple(image_shape))
        return params, model_state, tx.init(params)

    # Not jitted here: init_model jits itself with compile-time-saving options.
    params, model_state, opt_state = jax.vmap(init_one)(jnp.stack([k[0] for k in keys]))
    method_states = [scheme.init(k[2], md.class_counts) for k, md in zip(keys, members)]
    state = TrainState(step=np.zeros((len(members),), np.int32), params=params,
                       model_state=model_state, opt_state=opt_state,
                       rng=jnp.stack([k[1] for k in keys]),
                       method_state=jax.tree.map(lambda *xs: jnp.stack(xs), *method_states))
    return _to_host(state)


def _to_host(tree):
    # np.array copies: the host copy must outlive the donated device buffers.
    return jax.tree.map(lambda x: np.array(x), tree)


def _batch_shapes(config, image_shape) -> tuple[dict, dict]:
    """Abstract (train, clean) batches of one member, as the streams yield them."""
    sds = jax.ShapeDtypeStruct
    b, m = config.batch_size, config.clean_batch_size
    train = {"image": sds((b,) + tuple(image_shape), jnp.float32), "label": sds((b,), jnp.int32),
             "true_label": sds((b,), jnp.int32), "is_noisy": sds((b,), jnp.bool_),
             "index": sds((b,), jnp.int32)}
    clean = {"image": sds((m,) + tuple(image_shape), jnp.float32), "label": sds((m,), jnp.int32),
             "index": sds((m,), jnp.int32)}
    return train, clean


def _check_batch_sizes(config, num_train: int, num_clean: int) -> None:
    """A batch larger than its set would repeat examples within one step: refused."""
    for name, size, n, what in (("batch_size", config.batch_size, num_train, "noisy training"),
                                ("clean_batch_size", config.clean_batch_size, num_clean,
                                 "clean")):
        if size > n:
            raise ValueError(f"{name}={size} exceeds the {what} set ({n} examples after the "
                             f"splits); allowed: 1..{n}.")


def build_run(config) -> _Run:
    """Loads the data once, builds every member's splits, the model, optimizer and step."""
    arrays = datasets.load_arrays(config.dataset, data_dir=config.data_dir)
    members = [_member_data(config, arrays, config.seed + k) for k in range(config.num_seeds)]
    sizes = {len(md.splits.train_labels) for md in members}
    if len(sizes) != 1:
        raise ValueError(f"members' training sets differ in size {sorted(sizes)}.")
    num_train, K = sizes.pop(), len(members)
    _check_batch_sizes(config, num_train, len(members[0].splits.clean_labels))
    num_classes = members[0].splits.num_classes
    image_shape = members[0].splits.train_x.shape[1:]
    module = models.create_model(config.model, num_classes, **config.model_options.to_dict())
    apply_fn = models.make_apply_fn(module)
    tx = make_optimizer(config)
    method, options = _weighing(config)
    # meta_params="last" of a module of the user's: its output layer, wherever it is.
    options = adapter.resolve_meta_params(module, options, (1,) + tuple(image_shape))
    scheme = methods.get_scheme(method, **options)
    train_step = step_lib.make_train_step(apply_fn, tx, scheme)
    state = _init_states(module, tx, members, scheme, image_shape)
    if method in ("l2rw", "mwnet"):  # they differentiate tx.update: fail before step 1, not NaN
        params, opt_state = jax.tree.map(lambda x: x[0], (state.params, state.opt_state))
        reweight.check_lookahead(tx, params, opt_state)
    metrics = jax.eval_shape(train_step, jax.tree.map(lambda x: x[0], state),
                             *_batch_shapes(config, image_shape))[1]
    names = sorted(k for k, v in metrics.items() if not k.endswith("_B") and v.shape == ())
    acc = {"w_sum": np.zeros((K, num_train), np.float32),
           "count": np.zeros((K, num_train), np.int32),
           "all_zero_steps": np.zeros((K,), np.int32)}
    if "g_B" in metrics:
        acc["g_sum"] = np.zeros((K, num_train), np.float32)
    msum = {k: np.zeros((K,), np.float32) for k in names}
    return _Run(members, apply_fn, train_step, (state, acc, msum), names,
                _phases(config)[-1][2], num_classes)


def train_and_evaluate(config: ml_collections.ConfigDict, workdir: str) -> dict:
    """Trains ``config.num_seeds`` models of ``config.method`` and evaluates them; resumable.

    Args:
      config: a ConfigDict with fields of :func:`default_config` (missing ones take the default;
        unknown ones raise ValueError).
      workdir: the run's directory (created; an existing run there is resumed).

    Returns:
      The ``results.json`` dict::

        {"method", "config", "seeds", "num_seeds", "num_steps" (total, finetune included),
         "num_classes", "num_train", "num_clean", "num_test", "num_hyperval",
         "background_class": [K] (the background flip's class per member, else None),
         "final_test_accuracy", "best_test_accuracy", "selected_test_accuracy",
         "final_test_loss", "final_hyperval_accuracy": each {"per_seed": [K], "mean", "ci95",
            "ci95_low", "ci95_high"} (ci95 None when K = 1; the hyper-validation ones None
            without a hold-out; "selected" = test accuracy at the evaluation with the best
            hyper-validation accuracy, else at the final step),
         "best_step": [K] (step of the best test accuracy),
         "per_class_accuracy": {"per_seed": [K][C], "mean": [C]} (final, test set),
         "all_zero_steps": [K] (steps whose weights were all 0),
         "wall_time_s" (all invocations), "steps_per_s" (training loop of the last invocation,
         input pipeline, logging and checkpoints included, evaluation and compilation not;
         when every call of the invocation compiled, compilation included),
         "completed": true}

      A run stopped by ``stop_after_steps`` returns ``{"completed": False, "step": t,
      "timed_steps", "timing_s"}`` (this invocation's loop timing, as in results.json:
      ``timed_steps`` steps ran in calls that did not compile, in ``timing_s["train_loop_s"]``;
      the loop waits for the last step first) and writes no results.json.

    metrics.jsonl records: ``{"step", "split": "train", "seed", <means of the step metrics
    since the last log, e.g. train_loss, weighted_loss, w_mean_noisy, all_zero (fraction of
    steps)>, "steps_per_s"}`` and ``{"step", "split": "test"|"hyperval", "seed", "accuracy",
    "loss", "per_class_accuracy": [C]}``.
    """
    import orbax.checkpoint as ocp  # Here: it takes about a second to import.

    config = validate_config(config)
    workdir = os.path.abspath(os.fspath(workdir))
    config.backend = _resolve_backend(config.backend, workdir)
    _check_or_write_config(workdir, config, write=False)  # Another run's workdir: fail now.
    t_invocation = time.time()
    run = build_run(config)  # Loads the data and checks the sizes: may fail, nothing written.
    os.makedirs(workdir, exist_ok=True)
    _check_or_write_config(workdir, config)
    members, K = run.members, len(run.members)
    seeds = [md.seed for md in members]

    # Members are trained in groups: one group of K (vmap_seeds) or K groups of one, each
    # group a call of the same jitted, vmapped step. Devices: the batch axis split over a mesh.
    groups = [slice(0, K)] if config.vmap_seeds else [slice(k, k + 1) for k in range(K)]
    mesh = sharding.data_mesh(jax.devices()[:config.num_devices or len(jax.devices())])
    replicated = sharding.replicated_sharding(mesh)
    # Batches stacked over a group's members: leaves K x B x ..., batch axis split.
    member_batches = sharding.batch_sharding(mesh, leading_axes=1)
    place = lambda tree, g: sharding.shard_batch(jax.tree.map(lambda x: x[g], tree),
                                                 member_batches)
    # Training batches come in chunks of S steps: leaves S x K x B x ..., batch axis split.
    chunk_sharding = sharding.batch_sharding(mesh, leading_axes=2)
    place_chunk = lambda tree, g: sharding.shard_batch(jax.tree.map(lambda x: x[:, g], tree),
                                                       chunk_sharding)
    options = xla_options.step_compiler_options()  # on CPU: parallel convolutions
    steps = {acc: jax.jit(jax.vmap(chunk_step(make_loop_step(run.train_step, acc)),
                                   in_axes=(0, 0, 0, 1, 1, None)), donate_argnums=(0, 1),
                          compiler_options=options)
             for acc in (True, False)}
    eval_fn = jax.jit(jax.vmap(make_eval_fn(run.apply_fn)), compiler_options=options)
    # Evaluation sets are small and fixed: materialised once, stacked over members.
    if config.backend == "device":
        eval_batches = {
            split: _stacked_numpy([device_data.test_batches(
                *_eval_arrays(md, split), md.mean, md.std, config.eval_batch_size)
                for md in members])
            for split in _EVAL_SPLITS if split == "test" or config.hyper_val_size}
    else:
        eval_batches = {
            split: list(_stacked([_eval_dataset(config, md, split) for md in members])
                        .as_numpy_iterator())
            for split in _EVAL_SPLITS if split == "test" or config.hyper_val_size}

    # Restore the newest checkpoint, if any.
    manager = ocp.CheckpointManager(
        os.path.join(workdir, "checkpoints"), options=ocp.CheckpointManagerOptions(
            max_to_keep=config.keep_checkpoints, create=True, cleanup_tmp_directories=True))
    host_carry = run.carry0
    start_step, meta = 0, {"history": [], "elapsed_s": 0.0}
    if manager.latest_step() is not None:
        start_step = manager.latest_step()
        results_path = os.path.join(workdir, "results.json")
        if start_step == run.total_steps and os.path.exists(results_path):
            manager.close()
            with open(results_path) as f:
                return json.load(f)  # Finished before: nothing to do.
        abstract = jax.tree.map(ocp.utils.to_shape_dtype_struct, host_carry)
        restored = manager.restore(start_step, args=ocp.args.Composite(
            carry=ocp.args.StandardRestore(abstract), meta=ocp.args.JsonRestore()))
        host_carry, meta = tuple(restored.carry), restored.meta
        log.info("Resuming %s from step %d.", workdir, start_step)
    carries = [jax.device_put(jax.tree.map(lambda x: x[g], host_carry), replicated)
               for g in groups]
    history: list[dict] = meta["history"]

    # Logs: keep what the checkpoint covers, drop what a killed run wrote after it.
    metrics_path = os.path.join(workdir, "metrics.jsonl")
    kept = _read_jsonl(metrics_path, start_step)
    workdir_lib.atomic_write(metrics_path, lambda f: f.writelines(json.dumps(r) + "\n" for r in kept))
    from tqdm import tqdm
    metrics_file = open(metrics_path, "a")
    tb = _summary_writer(os.path.join(workdir, "tb"), start_step)

    def emit(records: list[dict], scalars: dict, step: int) -> None:
        metrics_file.writelines(json.dumps(r) + "\n" for r in records)
        metrics_file.flush()  # Every log_every steps: cheap, and tail -f shows progress.
        for tag, value in scalars.items():
            tb.add_scalar(tag, value, step)

    def log_train(step: int, msums: list, n_steps: int, rate: float) -> None:
        msum = _concat(jax.device_get(msums))
        means = {name: np.asarray(msum[name], np.float64) / n_steps for name in run.metric_names}
        bad = sorted(name for name, v in means.items() if not np.all(np.isfinite(v)))
        if bad:
            raise FloatingPointError(f"non-finite training metrics {bad} at step {step}: "
                                     f"{ {n: means[n].tolist() for n in bad} }.")
        emit([{"step": step, "split": "train", "seed": seeds[k],
               **{name: float(v[k]) for name, v in means.items()}, "steps_per_s": rate}
              for k in range(K)],
             {**{f"train/{name}": float(v.mean()) for name, v in means.items()},
              "train/steps_per_s": rate}, step)

    def evaluate(step: int) -> dict:
        out = {}
        for split, batches in eval_batches.items():
            parts = []
            for (state, _, _), g in zip(carries, groups):
                sums = None
                for batch in batches:
                    part = eval_fn(state, place(batch, g))
                    sums = part if sums is None else jax.tree.map(jnp.add, sums, part)
                parts.append(sums)
            sums = _concat(jax.device_get(parts))
            count_K = sums["count_C"].sum(-1)
            accuracy_K = sums["correct_C"].sum(-1) / count_K
            per_class_KxC = sums["correct_C"] / np.maximum(sums["count_C"], 1)
            loss_K = sums["loss_sum"] / count_K
            scalars = {f"{split}/accuracy": float(accuracy_K.mean()),
                       f"{split}/loss": float(loss_K.mean())}
            if K > 1:
                scalars.update({f"{split}/accuracy/seed_{s}": float(a)
                                for s, a in zip(seeds, accuracy_K)})
            emit([{"step": step, "split": split, "seed": seeds[k],
                   "accuracy": float(accuracy_K[k]), "loss": float(loss_K[k]),
                   "per_class_accuracy": per_class_KxC[k].tolist()} for k in range(K)],
                 scalars, step)
            out[split] = {"accuracy": accuracy_K.tolist(), "loss": loss_K.tolist(),
                          "per_class_accuracy": per_class_KxC.tolist()}
        return out

    stop_at = run.total_steps
    if config.stop_after_steps is not None:
        stop_at = min(stop_at, config.stop_after_steps)
    zero_msums = [jax.device_put(jax.tree.map(lambda x: np.zeros_like(x[g]), host_carry[2]),
                                 replicated) for g in groups]
    bar = tqdm(total=run.total_steps, initial=start_step, unit="step", dynamic_ncols=True,
               disable=not config.progress_bar, desc=f"{config.method} x{K}", mininterval=1.0)
    # Timing: a call of a (phase, length) not run before in this invocation compiles
    # (first_step_s); evaluations and checkpoints are timed apart, so steps_per_s is the
    # training loop's own rate (pipeline and logging included).
    timing = {"first_step_s": 0.0, "train_loop_s": 0.0, "eval_s": 0.0, "checkpoint_s": 0.0}
    # [(step, msums, steps in the interval, steps/s)]: read one call (step) late.
    pending: list[tuple] = []
    step, last_log_step, timed_steps = start_step, start_step, 0
    compiled: set[tuple[str, int]] = set()

    def flush_pending():
        for args in pending:
            log_train(*args)
        pending.clear()

    # The loop advances by calls: (phase, n, advance) with advance(carries) -> (carries
    # after n steps, msum_S per group or None). tf.data: one step per call; device: up to
    # steps_per_call steps under lax.scan, ending at every evaluation and checkpoint.
    if config.backend == "device":
        placed = None
        calls = _device_calls(config, run, groups, mesh, start_step, stop_at)
    else:
        # A background thread reads the streams and places each group's chunk of batches on
        # the devices, a chunk ahead, so the loop itself only dispatches steps.
        placed = _prefetch(
            ((phase, n, [(place_chunk(train_SxK, g), place_chunk(clean_SxK, g))
                         for g in groups])
             for phase, n, train_SxK, clean_SxK in _host_chunks(config, members, start_step,
                                                                config.steps_per_fetch)),
            size=1)
        calls = ((phase, 1, functools.partial(_tfdata_advance, steps[phase == "noisy"], chunks,
                                              np.int32(i)))
                 for phase, n, chunks in placed for i in range(n))
    try:
        t_mark = time.time()
        for phase, n, advance in calls:
            if step >= stop_at:
                break
            carries, msums_S = advance(carries)
            first, step = step, step + n
            flush_pending()  # The previous call's logs: those steps are done by now.
            for t in range(first + 1, step + 1):
                if t % config.log_every and t != run.total_steps:
                    continue
                rate = timed_steps / timing["train_loop_s"] if timed_steps else 0.0
                if msums_S is None:  # tf.data: the sums are in the carry; restart them.
                    msums = [c[2] for c in carries]
                    carries = [(s, a, z) for (s, a, _), z in zip(carries, zero_msums)]
                else:  # device: the call restarted them; its row for step t.
                    msums = [m[t - first - 1] if isinstance(m, list)
                             else jax.tree.map(lambda y: y[t - first - 1], m) for m in msums_S]
                pending.append((t, msums, t - last_log_step, rate))
                last_log_step = t
            bar.update(n)
            is_eval = step % config.eval_every == 0 or step == run.total_steps
            is_ckpt = step % config.checkpoint_every == 0 or step == run.total_steps
            if is_eval or is_ckpt or step >= stop_at:
                # They need the state (and a stopped run's timing its last steps); waiting
                # here bills the queued steps to the loop's time.
                jax.block_until_ready(carries)
            now = time.time()
            if (phase, n) not in compiled:
                compiled.add((phase, n))
                timing["first_step_s"] += now - t_mark
            else:
                timing["train_loop_s"] += now - t_mark
                timed_steps += n
            t_mark = now
            if is_eval:
                flush_pending()
                history.append({"step": step, **evaluate(step)})
                bar.set_postfix(test_acc=f"{np.mean(history[-1]['test']['accuracy']):.4f}",
                                refresh=False)
                now = time.time()
                timing["eval_s"] += now - t_mark
                t_mark = now
            if is_ckpt:
                flush_pending()
                metrics_file.flush()
                tb.flush()
                manager.save(step, args=ocp.args.Composite(
                    carry=ocp.args.StandardSave(_concat(_to_host(carries))),
                    meta=ocp.args.JsonSave({
                        "history": history, "seeds": seeds, "num_classes": run.num_classes,
                        "mean": [md.mean.tolist() for md in members],
                        "std": [md.std.tolist() for md in members],
                        "elapsed_s": meta["elapsed_s"] + time.time() - t_invocation})))
                now = time.time()
                timing["checkpoint_s"] += now - t_mark
                t_mark = now
        flush_pending()
    finally:
        if placed is not None:
            placed.close()
        bar.close()
        manager.wait_until_finished()
        manager.close()
        metrics_file.close()
        tb.close()

    if step < run.total_steps:
        log.info("Stopped at step %d of %d (stop_after_steps).", step, run.total_steps)
        return {"completed": False, "step": step, "timed_steps": timed_steps,
                "timing_s": {k: float(v) for k, v in timing.items()}}

    acc_host = _concat(jax.device_get([c[1] for c in carries]))
    method_state = _concat(jax.device_get([c[0].method_state for c in carries]))
    for k, md in enumerate(members):
        weights = _example_weights(md, acc_host["w_sum"][k], acc_host["count"][k])
        if "g_sum" in acc_host:
            weights["mean_meta_grad"] = (acc_host["g_sum"][k]
                                         / np.maximum(acc_host["count"][k], 1)).astype(np.float32)
        if isinstance(method_state, methods.L2RWState):
            # l2rw's per-example meta-gradient memory: the variant's own score (low = clean).
            weights["meta_grad_memory"] = method_state.memory_N[k].astype(np.float32)
        if k == 0:
            _write_npz(os.path.join(workdir, "example_weights.npz"), **weights)
        if K > 1:
            _write_npz(os.path.join(workdir, f"example_weights_seed{md.seed}.npz"), **weights)
    # Steps/s of the loop including checkpoint writes (evaluation is separate work).
    loop_s = timing["train_loop_s"] + timing["checkpoint_s"]
    if not timed_steps:  # Every call compiled (a short run): its rate, compilation included.
        timed_steps, loop_s = step - start_step, loop_s + timing["first_step_s"]
    results = _results(config, run, history, seeds, acc_host["all_zero_steps"],
                       wall_time=meta["elapsed_s"] + time.time() - t_invocation,
                       steps_per_s=timed_steps / loop_s if loop_s > 0 else 0.0, timing=timing)
    write_json(os.path.join(workdir, "results.json"), results)
    return results


class _NoSummaryWriter:
    """Stands in for tensorboardX's writer where it is not installed: metrics.jsonl only."""

    def add_scalar(self, tag, value, step):
        del tag, value, step

    def flush(self):
        pass

    def close(self):
        pass


def _summary_writer(logdir: str, start_step: int):
    """A tensorboardX writer on ``logdir`` (a resumed run purges what follows ``start_step``);
    without tensorboardX (accelerator hosts), one warning and a writer that does nothing."""
    try:
        from tensorboardX import SummaryWriter  # Imported late: it pulls in protobuf.
    except ImportError:
        log.warning("tensorboardX is not installed: no TensorBoard files (metrics.jsonl has "
                    "every metric).")
        return _NoSummaryWriter()
    return SummaryWriter(logdir, purge_step=start_step + 1 if start_step else None)


def _prefetch(iterator: Iterator, size: int) -> Iterator:
    """Runs ``iterator`` in a background thread, up to ``size`` items ahead.

    Closing the returned generator (or leaving its loop) stops the thread; an exception in
    the thread is re-raised here.
    """
    items: queue.Queue = queue.Queue(size)
    stop = threading.Event()
    done = object()

    def put(item) -> bool:
        while not stop.is_set():
            try:
                items.put(item, timeout=0.1)
                return True
            except queue.Full:
                pass
        return False

    def work():
        try:
            for item in iterator:
                if not put(item):
                    return
            put(done)
        except BaseException as e:  # noqa: BLE001 -- handed to the consumer.
            put(e)

    thread = threading.Thread(target=work, daemon=True, name="l2rw-prefetch")
    thread.start()
    try:
        while True:
            item = items.get()
            if item is done:
                return
            if isinstance(item, BaseException):
                raise item
            yield item
    finally:
        stop.set()
        thread.join()


def _concat(trees: list):
    """Member groups -> one pytree over all members (numpy, leading seed axis)."""
    if len(trees) == 1:
        return trees[0]
    return jax.tree.map(lambda *xs: np.concatenate(xs), *trees)


def _example_weights(md: MemberData, w_sum_N: np.ndarray, count_N: np.ndarray) -> dict:
    s = md.splits
    return {
        "index": np.arange(len(s.train_labels), dtype=np.int32),
        "mean_weight": (w_sum_N / np.maximum(count_N, 1)).astype(np.float32),
        "count": count_N.astype(np.int32),
        "weight_sum": w_sum_N.astype(np.float32),
        "is_noisy": s.train_is_noisy.astype(bool),
        "label": s.train_labels.astype(np.int32),
        "true_label": s.train_true_labels.astype(np.int32),
        "source_index": s.train_source_index.astype(np.int64),
        "seed": np.int64(md.seed),
    }


def _results(config, run: _Run, history: list[dict], seeds, all_zero_steps_K, *,
             wall_time: float, steps_per_s: float, timing: dict) -> dict:
    K = len(seeds)
    test_acc_ExK = np.array([h["test"]["accuracy"] for h in history])
    final = history[-1]
    best_e_K = test_acc_ExK.argmax(0)
    if "hyperval" in final:
        hv_ExK = np.array([h["hyperval"]["accuracy"] for h in history])
        sel_e_K = hv_ExK.argmax(0)
        final_hv = mean_ci95(final["hyperval"]["accuracy"])
    else:
        sel_e_K = np.full(K, len(history) - 1)
        final_hv = None
    per_class_KxC = np.array(final["test"]["per_class_accuracy"])
    md0 = run.members[0]
    return {
        "method": config.method,
        "config": json.loads(config.to_json()),
        "seeds": seeds,
        "num_seeds": K,
        "num_steps": run.total_steps,
        "num_classes": run.num_classes,
        "num_train": int(len(md0.splits.train_labels)),
        "num_clean": int(len(md0.splits.clean_labels)),
        "num_test": int(len(md0.splits.test_labels)),
        "num_hyperval": 0 if md0.hyperval is None else int(len(md0.hyperval.test_labels)),
        "background_class": [md.splits.background_class for md in run.members],
        "final_test_accuracy": mean_ci95(final["test"]["accuracy"]),
        "best_test_accuracy": mean_ci95(test_acc_ExK.max(0)),
        "best_step": [int(history[e]["step"]) for e in best_e_K],
        "selected_test_accuracy": mean_ci95(test_acc_ExK[sel_e_K, np.arange(K)]),
        "final_test_loss": mean_ci95(final["test"]["loss"]),
        "final_hyperval_accuracy": final_hv,
        "per_class_accuracy": {"per_seed": per_class_KxC.tolist(),
                               "mean": per_class_KxC.mean(0).tolist()},
        "all_zero_steps": [int(z) for z in all_zero_steps_K],
        "wall_time_s": float(wall_time),
        "steps_per_s": float(steps_per_s),
        "timing_s": {k: float(v) for k, v in timing.items()},
        "completed": True,
    }
