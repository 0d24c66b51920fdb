"""What the audit's sections share: `Section` (what each returns), `Inputs` (what each reads,
checked once) and the subset and attack helpers. Each analysis is a module of its own, arrays in,
a `Section` (results, figures, notes) out.

`run_audit` is their table of contents: it checks the inputs once (`Inputs`), calls the sections
in order and hands them to `report.write_report`, which renders each with its own renderer
(`renderers.RENDERERS`). In the spirit of big_vision's evaluators (each one `run`s and yields its
metrics; the trainer only writes them) and clu's metric writers (scalars, images and text kept
apart from where they are written):

  mistakes_section      accuracy per class, confusion, calibration, the most confident mistakes
                        explained
  robustness_section    FGSM / PGD accuracy over epsilon, minimal adversarial epsilon
  bias_section          prototypes and criticisms per class, attribute rates among them
  label_issues_section  rankings of suspect labels, precision/recall@k, `label_issues.csv`
  suspects_section      a card per top suspect: image, labels, recorded weights, ranks,
                        nearest training neighbours
  noise_section         the transition matrix estimated from the clean set and from the
                        training set, against the true one where known
  trusted_set_section   each clean example's exact leave-one-out influence on the L2RW
                        weights, suspect clean labels, `trusted_set.csv`

Every section takes `(inputs, config, rng)`. The random subsets are drawn from one generator
shared in this order (neighbour pool; curve rows, minimal-eps rows; bias rows), so a section's
numbers depend on the sections before it only through that generator -- as in one function.
"""

from __future__ import annotations

from typing import Any, Callable, Mapping, NamedTuple

import numpy as np

from l2rw_jax.audit import attacks
from l2rw_jax.audit import common


class Section(NamedTuple):
    """One analysis of the audit, ready to be written.

    Attributes:
      name: its key in `audit.json` (and its renderer in `renderers.RENDERERS`).
      title: its heading in the report.
      results: every number it reports (JSON-able after `report.to_jsonable`).
      figures: name -> base64 PNG, or a list / dict of them (galleries, per-class grids); a
        section may keep the arrays behind a drawing here too (the renderers ignore them).
      notes: sentences on what was left out and why (also in `audit.json["meta"]["notes"]`).
      files: file name -> function writing it at the path given (inside the audit directory).
    """

    name: str
    title: str
    results: dict
    figures: dict
    notes: list
    files: Mapping[str, Callable[[str], Any]] = {}


class Inputs(NamedTuple):
    """What the sections read, checked once by `run_audit` (shapes: N test, M train rows)."""

    model: common.Model  # apply_fn, params, model_state, feature_fn
    x_test: np.ndarray  # N x H x W x C, normalised
    y_test: np.ndarray  # N
    logits_test: np.ndarray  # N x K
    x_train: np.ndarray  # M x H x W x C, normalised
    y_train: np.ndarray  # M, the given (maybe noisy) labels
    logits_train: np.ndarray  # M x K, the trained model's
    true_train: np.ndarray | None  # M, when known
    is_noisy_train: np.ndarray | None  # M bool, when known
    source_index: np.ndarray  # M, each row's index in the user's data
    example_weights: Mapping[str, np.ndarray] | None  # what the run recorded
    attributes: Mapping[str, np.ndarray]  # per-training-row attributes for the bias section
    num_classes: int
    mean_C: np.ndarray
    std_C: np.ndarray
    class_names: list  # names for the report (label ids as strings when none were given)
    names_given: bool  # the CSV gets class-name columns only then
    x_clean: np.ndarray | None = None  # L x H x W x C, normalised: the trusted set, when given
    y_clean: np.ndarray | None = None  # L, its labels (taken as the true ones)
    clean_source_index: np.ndarray | None = None  # L, each row's index in the user's clean data


def subset(n: int, size: int, rng: np.random.Generator) -> np.ndarray:
    """Sorted random rows (all rows when size is 0 or >= n)."""
    if size <= 0 or size >= n:
        return np.arange(n)
    return np.sort(rng.choice(n, size, replace=False))


def stratified_subset(labels: np.ndarray, classes, per_class: int, rng: np.random.Generator):
    """Sorted random rows, `per_class` of each class in `classes` (all of a class's rows when
    per_class is 0 or at least their number)."""
    rows = []
    for k in classes:
        rk = np.flatnonzero(labels == k)
        rows.append(
            rk
            if per_class <= 0 or per_class >= len(rk)
            else np.sort(rng.choice(rk, per_class, replace=False))
        )
    return np.sort(np.concatenate(rows))


def attack_config(config, inp: Inputs, seed: int) -> attacks.AttackConfig:
    """The audit config's attack settings as an `attacks.AttackConfig`."""
    return attacks.AttackConfig(
        steps=config.pgd_steps,
        step_size=config.pgd_step_size,
        random_start=config.random_start,
        objective=config.attack_objective,
        mean=inp.mean_C,
        std=inp.std_C,
        seed=seed,
        batch_size=config.batch_size,
    )
