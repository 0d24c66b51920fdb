"""The config's flat form (dotted paths) and the upgrade of old configs to the schema.

Old runs: a config.json written before the groups (flat fields) is read through
:func:`upgrade`, which maps every flat field to its group (``LEGACY_FIELDS``), so such runs
resume and can be audited; fields added later take the behaviour runs had before them
(``ADDED_FIELDS``). The schema is :mod:`l2rw_jax.config_schema`; :mod:`l2rw_jax.config`
re-exports these names.
"""

from __future__ import annotations

from l2rw_jax.config_schema import GROUPS
from l2rw_jax.config_schema import PAPER_L2RW

# Free-form groups: any keys (model_factory.create_model checks them).
_OPEN_GROUPS = ("model.options", "data.noise_map")

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


def unflatten(flat: dict) -> dict:
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
    return unflatten(flat)
