"""The training config's checks: validation (defaults filled, every field checked), batch sizes
against the splits, and the differences that refuse a resumption; the one module entry points
and configs import, which re-exports the schema (:mod:`l2rw_jax.config_schema`) and the
upgrade of old configs (:mod:`l2rw_jax.config_upgrade`). Its translations into library
arguments are :mod:`l2rw_jax.from_config`.

Entry points and configs import this module, never the loop. Below it, no function takes the
whole config: :mod:`l2rw_jax.from_config` (``weighing``, ``make_optimizer``, ``split_options``,
``model_kwargs``, ...) hands the library what it needs.
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
from l2rw_jax.config_schema import BACKENDS
from l2rw_jax.config_schema import CORRECTIONS
from l2rw_jax.config_schema import GROUPS
from l2rw_jax.config_schema import METHODS
from l2rw_jax.config_schema import PAPER_L2RW
from l2rw_jax.config_schema import RESUMABLE_FIELDS
from l2rw_jax.config_schema import ROBUST_L2RW
from l2rw_jax.config_schema import WEIGHING_METHODS
from l2rw_jax.config_schema import default_config
from l2rw_jax.config_upgrade import ADDED_FIELDS
from l2rw_jax.config_upgrade import LEGACY_FIELDS
from l2rw_jax.config_upgrade import unflatten
from l2rw_jax.config_upgrade import flatten
from l2rw_jax.config_upgrade import is_legacy
from l2rw_jax.config_upgrade import upgrade

if TYPE_CHECKING:
    import ml_collections

# The schema and the upgrade, re-exported: callers use ``config.default_config``,
# ``config.upgrade``, ... whichever module holds them.
__all__ = [
    "ADDED_FIELDS",
    "BACKENDS",
    "CORRECTIONS",
    "GROUPS",
    "LEGACY_FIELDS",
    "METHODS",
    "PAPER_L2RW",
    "RESUMABLE_FIELDS",
    "ROBUST_L2RW",
    "WEIGHING_METHODS",
    "check_batch_sizes",
    "config_differences",
    "default_config",
    "flatten",
    "is_legacy",
    "unflatten",
    "upgrade",
    "validate",
]


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
    c = ml_collections.ConfigDict(unflatten(filled))
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
