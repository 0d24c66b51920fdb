"""The training config's schema: its groups, every field with its default, and the presets.

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

The validation and the one module entry points import are :mod:`l2rw_jax.config` (it
re-exports these names); the upgrade of old configs is :mod:`l2rw_jax.config_upgrade`.
Command-line overrides use the dotted paths (``--config.optim.learning_rate=0.05``).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from l2rw_jax import from_config
from l2rw_jax import methods

if TYPE_CHECKING:
    import ml_collections

WEIGHING_METHODS = ("erm", "l2rw", "random", "proportion", "hard_mining", "mwnet")
CORRECTIONS = ("none", "glc", "glc_plateau", "glc_plateau_rewind", "glc_reweighted", "glc_guarded")
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
    # docs/correction.md): glc_guarded (the reweighting until the clean accuracy has not risen
    # for correction_at * num_steps steps; then the label transition matrix counted on the
    # training rows, the model set back to its best clean accuracy and the corrected loss,
    # taken back if the clean accuracy sets no new best within as many steps again) | none |
    # glc (plain training until correction_at * num_steps, the matrix from the clean set,
    # the corrected loss after) | glc_plateau (class-balanced plain training until the
    # plateau, the matrix from the clean set) | glc_plateau_rewind (that, set back to the
    # best) | glc_reweighted (glc_guarded without the guard).
    l.correction = "glc_guarded"
    l.correction_at = 0.1  # glc: share of num_steps before the estimate; the others: the
    #                                 patience (and the guard), as a share of num_steps
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
# The default: methods.ROBUST_OPTIONS and the guarded loss correction at the clean accuracy's
# plateau (docs/robust_default.md and docs/correction.md have the evidence).
ROBUST_L2RW = dict(methods.ROBUST_OPTIONS, correction="glc_guarded", correction_at=0.1)
