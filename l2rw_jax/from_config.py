"""The config's pure translations into plain values: each function takes one group of a
validated config (``config.data``, ``config.method``, ``config.optim``, ...; the whole config
where a value reads more than one group, or is the whole config: ``as_json``) and returns what a
library function takes, so nothing below the config reads it::

    data    split_options, load_options, member_options -> corruption.make_splits,
            datasets.load_arrays, members.make_member keyword arguments; labels_as_given,
            noise_note, describe_data, noise_description (what a run says of its labels)
    model   model_kwargs -> model_factory.create_model keyword arguments
    optim   make_optimizer -> the optax optimizer
    method  weighing -> (scheme, options) of methods.get_scheme; correction, correction_steps
    run     total_steps, as_json (config.json and results.json)

The schema, its defaults and checks are :mod:`l2rw_jax.config`, which imports this module (its
checks run these translations); this module never imports it.
"""

from __future__ import annotations

import json

import numpy as np
import optax

from l2rw_jax import datasets

# The data-level methods: they weigh with erm and change the data instead (l2rw_jax.members).
DATA_METHODS = ("resample", "finetune", "clean_only", "oracle")
# The method groups holding one scheme's options (weighing hands them to the scheme).
SCHEME_GROUPS = ("l2rw", "mwnet")
# Fields of a scheme's group that configure the loss correction around it (weighing leaves
# them out of the scheme's options; correction_steps reads them).
CORRECTION_FIELDS = {"l2rw": ("correction", "correction_at")}
# The data.noise values that corrupt the labels (or, imbalance, subsample the classes) of the
# source; the one a source of the user's own gets instead, unless data.corrupt_given_labels:
# labels as given, no synthetic corruption.
SYNTHETIC_NOISES = ("uniform", "background", "pair", "asymmetric", "transition", "imbalance")
LABELS_AS_GIVEN = "given"


def labels_as_given(data) -> bool:
    """Whether the data group's synthetic noise is left out: ``data.noise`` is one of
    ``SYNTHETIC_NOISES``, the source is the user's own (``npz:``, ``folder:``) and
    ``data.corrupt_given_labels`` is False. Then the run trains on the labels as given."""
    return (
        data.noise in SYNTHETIC_NOISES
        and not data.corrupt_given_labels
        and datasets.is_own_source(data.dataset)
    )


def split_options(data, *, as_written: bool = False) -> dict:
    """``corruption.make_splits`` keyword arguments (all but the seed) of the data group; the
    noise options are those of ``LABELS_AS_GIVEN`` when :func:`labels_as_given`, unless
    ``as_written`` (validation checks those too: a bad value fails even where unused).

    ``data.noise_map`` a mapping -> a plain dict; ``data.noise_matrix`` a string -> the array
    in that .npy file (a one-line error if it cannot be read)."""
    noise_map, matrix = data.noise_map, data.noise_matrix
    if hasattr(noise_map, "to_dict"):
        noise_map = noise_map.to_dict()
    if isinstance(matrix, str):
        try:
            matrix = np.load(matrix, allow_pickle=False)
        except (OSError, ValueError) as e:
            raise ValueError(
                f"data.noise_matrix={matrix!r} is not a readable .npy file "
                f"({type(e).__name__}); allowed: a .npy path or a nested tuple "
                f"C x C."
            ) from None
    options = dict(
        noise=data.noise,
        ratio=data.noise_ratio,
        clean_per_class=data.clean_per_class,
        background_class=data.background_class,
        official_convention=data.official_convention,
        majority_fraction=data.majority_fraction,
        num_train=data.num_train,
        majority_class=data.majority_class,
        minority_class=data.minority_class,
        noise_map=noise_map,
        noise_matrix=matrix,
    )
    if labels_as_given(data) and not as_written:
        options.update(
            noise=LABELS_AS_GIVEN,
            ratio=0.0,
            background_class=None,
            official_convention=False,
            majority_fraction=None,
            noise_map=None,
            noise_matrix=None,
        )
    return options


def load_options(data) -> dict:
    """``datasets.load_arrays(data.dataset, **load_options(data))`` keyword arguments."""
    return dict(
        data_dir=data.data_dir, label_key=data.label_key, true_label_key=data.true_label_key
    )


def noise_note(data) -> str | None:
    """The line a run prints about the labels of a source of the user's own (``npz:``,
    ``folder:``) when its config names a synthetic noise; None otherwise."""
    if data.noise not in SYNTHETIC_NOISES or not datasets.is_own_source(data.dataset):
        return None
    what = f"data.noise={data.noise!r}" + (
        f", data.noise_ratio={data.noise_ratio:g}" if data.noise != "imbalance" else ""
    )
    if labels_as_given(data):
        return (
            f"{data.dataset}: labels as given; the config's synthetic {what} is not applied "
            f"to a source of your own (data.corrupt_given_labels=True applies it)."
        )
    return (
        f"{data.dataset}: synthetic {what} applied to these labels "
        f"(data.corrupt_given_labels=True)."
    )


def describe_data(data) -> str:
    """The data of a run for titles: the source (a path's file or folder name for a source of
    the user's own) and :func:`noise_description`, e.g. ``"mnist.npz, labels as given"``."""
    name = data.dataset
    if datasets.is_own_source(name):
        name = name.split(":", 1)[1].rstrip("/").rsplit("/", 1)[-1]
    return f"{name}, {noise_description(data)}"


def noise_description(data) -> str:
    """A short description of the training labels for titles: ``"40% uniform flip"``,
    ``"labels as given"``, ``"imbalance p=0.995"``."""
    options = split_options(data)
    if options["noise"] in ("uniform", "background", "pair", "asymmetric"):
        return f"{options['ratio']:.0%} {options['noise']} flip"
    if options["noise"] == "transition":
        return "flips drawn from a transition matrix"
    if options["noise"] == "imbalance":
        return f"imbalance p={options['majority_fraction']}"
    return "labels as given"


def model_kwargs(model) -> dict:
    """``model_factory.create_model(model.name, num_classes, **model_kwargs(model))``."""
    options = model.options
    return dict(options.to_dict() if hasattr(options, "to_dict") else options or {})


def weighing(method) -> tuple[str, dict]:
    """(scheme name, its options) behind the method group: ``methods.get_scheme(name,
    **options)``. The data-level methods weigh with ``erm``."""
    if method.name in SCHEME_GROUPS:
        options = method[method.name].to_dict()
        for field in CORRECTION_FIELDS.get(method.name, ()):
            options.pop(field)
        return method.name, options
    if method.name in DATA_METHODS:
        return "erm", {}
    return method.name, {}


def correction(config) -> str:
    """The l2rw method's loss correction (``method.l2rw.correction``), ``"none"`` for the other
    methods."""
    return config.method.l2rw.correction if config.method.name == "l2rw" else "none"


def correction_steps(config) -> int:
    """``max(1, round(correction_at * num_steps))`` for an l2rw method with a loss correction
    (glc: the step at which it is estimated and starts; the plateau corrections: the patience,
    and glc_guarded's guard), else 0."""
    l2rw = config.method.l2rw
    if config.method.name != "l2rw" or l2rw.correction == "none":
        return 0
    return max(1, round(l2rw.correction_at * config.num_steps))


def make_optimizer(optim) -> optax.GradientTransformation:
    """The paper's recipe from the optim group: SGD with momentum, piecewise-constant learning
    rate, L2 weight decay.

    ``lr(t) = learning_rate * lr_decay ** #{b in lr_boundaries : t >= b}`` and
    ``update = -lr(t) * momentum_trace(grad + weight_decay * params)``: ``add_decayed_weights``
    before ``sgd`` is the gradient of ``weight_decay / 2 * ||params||^2`` added to the loss.
    """
    schedule = optax.piecewise_constant_schedule(
        optim.learning_rate, {int(b): float(optim.lr_decay) for b in optim.lr_boundaries}
    )
    return optax.chain(
        optax.add_decayed_weights(optim.weight_decay),
        optax.sgd(schedule, momentum=optim.momentum or None, nesterov=optim.nesterov),
    )


def as_json(config) -> dict:
    """The config as plain JSON values (what config.json and results.json hold)."""
    return json.loads(config.to_json())


def total_steps(config) -> int:
    """Training steps of the run, the finetune phase included."""
    extra = config.method.finetune_steps if config.method.name == "finetune" else 0
    return config.num_steps + extra


def member_options(config) -> dict:
    """``members.make_member`` keyword arguments (all but the arrays and the seed)."""
    return dict(
        split_options=split_options(config.data),
        hyper_val_size=config.data.hyper_val_size,
        selection_size=config.data.selection_size,
        pixel_scale=config.data.pixel_scale,
        oracle=config.method.name == "oracle",
    )
