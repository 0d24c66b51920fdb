"""`run_audit`: the whole audit of one trained model, from arrays to `report.html` + `audit.json`.

Works on any model behind the pure interface of `l2rw_jax.audit.common` and numpy arrays, so it
runs from a notebook as well as from `python -m experiments.audit --workdir=<run>`. The analyses
are the sections (`mistakes_section`, `robustness_section`, `bias_section`,
`label_issues_section`, `suspects_section`, `noise_section`, `trusted_set_section`; their
contract is `l2rw_jax.audit.sections`); `run_audit` checks the inputs once, runs the sections in
order and writes what they return.
"""

from __future__ import annotations

import logging
import time
from typing import TYPE_CHECKING, Callable, Mapping

import numpy as np

from tqdm import auto as tqdm  # a widget in notebooks, a text bar in a terminal

from l2rw_jax.audit import attacks
from l2rw_jax.audit import bias_section
from l2rw_jax.audit import common
from l2rw_jax.audit import label_issues_section
from l2rw_jax.audit import mistakes_section
from l2rw_jax.audit import noise_section
from l2rw_jax.audit import report
from l2rw_jax.audit import robustness_section
from l2rw_jax.audit import sections
from l2rw_jax.audit import suspects_section
from l2rw_jax.audit import trusted_set_section

if TYPE_CHECKING:
    import ml_collections

log = logging.getLogger("l2rw_jax.audit")


# Presets of `default_config`: "full" (the fields' values below) and "quick" (the same
# sections with fewer attack steps, epsilons and examples: a few times faster; on the digits
# quickstart run well under a CPU-minute).
QUICK = {
    "ig_steps": 16,
    "neighbor_pool": 5000,
    "epsilons": (0.0, 0.05, 0.1, 0.2, 0.3),
    "pgd_steps": 5,
    "robust_examples": 200,
    "min_eps_examples": 64,
    "bisection_steps": 4,
    "bias_examples_per_class": 20,
}
PRESETS = ("full", "quick")


def default_config(preset: str = "full") -> ml_collections.ConfigDict:
    """Audit settings; every field is overridable (`config.pgd_steps = 20`).

    `preset`: "full" (the values below) or "quick" (`QUICK`'s fewer attack steps, epsilons
    and examples, the same sections). ValueError for another preset.
    """
    import ml_collections  # Here: `import l2rw_jax` must work without it (docs/design.md §7).

    if preset not in PRESETS:
        raise ValueError(f"preset={preset!r} is not supported; allowed: {', '.join(PRESETS)}.")

    c = ml_collections.ConfigDict()
    c.seed = 0  # subsampling and PGD random starts
    c.batch_size = 128  # examples per jitted call (fixed; last batch padded)
    # 1. Mistakes.
    c.ece_bins = 15  # equal-width confidence bins (Guo et al. 2017)
    c.num_mistakes = 8  # most confident mistakes shown
    c.num_neighbors = 5  # nearest training images per mistake (penultimate features)
    c.neighbor_pool = 20000  # training images searched for neighbours (random subset; 0 = all)
    c.ig_steps = 64  # integrated-gradients trapezoid intervals
    # 2. Robustness (epsilons in raw pixel units, images in [0, 1]).
    c.epsilons = (0.0, 0.02, 0.05, 0.1, 0.15, 0.2, 0.3)
    c.pgd_steps = 10
    c.pgd_step_size = 0.25  # PGD step as a fraction of eps
    c.random_start = True
    # What FGSM/PGD ascend: "margin" (max_{j != y} z_j - z_y; never saturates, invariant to the
    # logit scale) or "cross_entropy" (saturates in float32 past a margin of ~17: overstates
    # robustness of confident predictions; attacks.py).
    c.attack_objective = "margin"
    c.robust_examples = 500  # test subset for the accuracy-vs-eps curves (0 = all)
    c.min_eps_examples = 256  # test subset for the minimal adversarial eps (0 = all)
    c.eps_max = 0.5  # bisection bracket [0, eps_max]
    c.bisection_steps = 6  # bracket width eps_max / 2**steps
    # 3. Biases (training examples, grouped by their given label).
    c.bias_examples_per_class = 40  # random training examples per class (0 = all)
    c.num_prototypes = 8
    c.num_criticisms = 8
    c.mmd_reg_weight = 1.0  # weight of log det K_CC in the criticism objective
    c.max_classes_shown = 20  # image grids in the report (all classes are in audit.json)
    # 4. Label issues.
    c.suspect_ks = (100,)  # k for precision/recall@k, besides k = number of noisy
    c.num_suspects = 24  # top suspects shown (training labels; clean labels)
    # 5. A card per suspect (the first of the suspects' ranking).
    c.num_cards = 12  # cards shown (>= 1; every training row when above their number)
    c.card_neighbors = 3  # nearest training images per card (penultimate features, every row)
    # 7. The trusted set: a clean label is flagged when the model predicts another class, gives
    # the label a probability below this, and its vote moves L2RW weight onto disputed labels.
    c.trusted_flag_probability = 0.05
    if preset == "quick":
        c.update(QUICK)
    c.lock()
    return c


def _validate(test, train, config, example_weights, attributes, clean=None):
    for name, d in (("test", test), ("train", train)):
        for key in ("image", "label"):
            if key not in d:
                raise ValueError(f"{name} must have key {key!r}; got keys {sorted(d)}.")
    x_test = common.check_images(test["image"], "test['image']")
    x_train = common.check_images(train["image"], "train['image']")
    y_test = common.check_labels(test["label"], len(x_test), None, "test['label']")
    y_train = common.check_labels(train["label"], len(x_train), None, "train['label']")
    if x_test.shape[1:] != x_train.shape[1:]:
        raise ValueError(
            f"test and train images differ in shape: {x_test.shape[1:]} vs {x_train.shape[1:]}."
        )
    x_clean = y_clean = clean_source = None
    if clean is not None:
        for key in ("image", "label"):
            if key not in clean:
                raise ValueError(f"clean must have key {key!r}; got keys {sorted(clean)}.")
        x_clean = common.check_images(clean["image"], "clean['image']")
        y_clean = common.check_labels(clean["label"], len(x_clean), None, "clean['label']")
        if x_clean.shape[1:] != x_train.shape[1:]:
            raise ValueError(
                f"clean and train images differ in shape: {x_clean.shape[1:]} vs "
                f"{x_train.shape[1:]}."
            )
        if "source_index" in clean:
            clean_source = np.asarray(clean["source_index"])
            if clean_source.shape != (len(x_clean),) or not np.issubdtype(
                clean_source.dtype, np.integer
            ):
                raise ValueError(
                    f"clean['source_index'] must be {len(x_clean)} integers (one per row), got "
                    f"{clean_source.dtype} {clean_source.shape}."
                )
            clean_source = clean_source.astype(np.int64)
    for key in ("true_label", "is_noisy"):
        if key in train and len(train[key]) != len(x_train):
            raise ValueError(
                f"train[{key!r}] has {len(train[key])} rows, train['image'] has {len(x_train)}."
            )
    if example_weights is not None:
        for key in ("index", "mean_weight"):
            if key not in example_weights:
                raise ValueError(
                    f"example_weights must have key {key!r}; got {sorted(example_weights)}."
                )
        idx = np.asarray(example_weights["index"])
        if len(idx) and (idx.min() < 0 or idx.max() >= len(x_train)):
            raise ValueError(
                f"example_weights['index'] must be rows of train in [0, {len(x_train)}), got "
                f"[{idx.min()}, {idx.max()}]."
            )
        if len(np.unique(idx)) != len(idx):
            raise ValueError("example_weights['index'] has duplicate rows.")
        for key in ("mean_weight", "count", "weight_sum", "weight_sq_sum", "nonzero_count"):
            if key in example_weights and np.shape(example_weights[key]) != idx.shape:
                raise ValueError(
                    f"example_weights[{key!r}] has shape {np.shape(example_weights[key])}, its "
                    f"index {idx.shape}."
                )
    for name, a in (attributes or {}).items():
        if len(a) != len(x_train):
            raise ValueError(
                f"attribute {name!r} has {len(a)} values, train has {len(x_train)} rows."
            )
    eps = list(config.epsilons)
    if not eps or any(e < 0 for e in eps) or any(b < a for a, b in zip(eps, eps[1:])):
        raise ValueError(
            f"config.epsilons must be a non-empty ascending list of values >= 0, got {eps}."
        )
    if config.attack_objective not in attacks.OBJECTIVES:
        raise ValueError(
            f"config.attack_objective must be one of {attacks.OBJECTIVES}, "
            f"got {config.attack_objective!r}."
        )
    if config.ece_bins < 1 or config.num_neighbors < 1 or config.ig_steps < 1:
        raise ValueError(
            f"ece_bins, num_neighbors and ig_steps must be >= 1, got {config.ece_bins}, "
            f"{config.num_neighbors}, {config.ig_steps}."
        )
    need = config.num_prototypes + config.num_criticisms
    per_class = config.bias_examples_per_class
    if per_class > 0 and per_class < need:
        raise ValueError(
            f"bias_examples_per_class={per_class} is below num_prototypes + num_criticisms "
            f"= {need}."
        )
    classes, counts = np.unique(y_train, return_counts=True)
    small = {int(k): int(c) for k, c in zip(classes, counts) if c < need}
    if small:
        raise ValueError(
            f"classes {small} (class: training examples) have fewer than num_prototypes + "
            f"num_criticisms = {need} examples; lower them in the config."
        )
    if config.num_neighbors > len(x_train):
        raise ValueError(
            f"num_neighbors={config.num_neighbors} exceeds the {len(x_train)} training images."
        )
    suspects_section.check_card_config(config.num_cards, config.card_neighbors, len(x_train))
    return x_test, y_test, x_train, y_train, x_clean, y_clean, clean_source


def run_audit(
    apply_fn: Callable,
    feature_fn: Callable,
    params,
    model_state,
    *,
    test: Mapping[str, np.ndarray],
    train: Mapping[str, np.ndarray],
    out_dir: str,
    clean: Mapping[str, np.ndarray] | None = None,
    config: ml_collections.ConfigDict | None = None,
    example_weights: Mapping[str, np.ndarray] | None = None,
    attributes: Mapping[str, np.ndarray] | None = None,
    mean=0.0,
    std=1.0,
    class_names=None,
    title: str = "Model audit",
    run_info: Mapping | None = None,
    progress: bool = True,
) -> dict:
    """Audits a trained classifier and writes `<out_dir>/report.html`, `<out_dir>/audit.json`
    and `<out_dir>/label_issues.csv` (every training row, most suspect first, in the order of
    `label_issues.rank_label_issues`; columns `label_issues.CSV_COLUMNS`, class names when
    `class_names` is given) and, with a clean set of at least two examples,
    `<out_dir>/trusted_set.csv` (every clean example, most suspect first; columns
    `trusted_set.CSV_COLUMNS`).

    Args:
      apply_fn, feature_fn: the pure model interface (`l2rw_jax.audit.common`); for a model
        without a conv feature map Grad-CAM is left out of the gallery, with a note.
      params, model_state: the trained variables.
      test: `image` (normalised N x H x W x C), `label`.
      train: `image`, `label` (given, maybe noisy), optionally `true_label`, `is_noisy`,
        `source_index` (each row's index in the user's data; default: the recorded one, else
        the row itself).
      clean: the trusted set, `image` (normalised like train) and `label` (taken as the true
        ones), optionally `source_index` (each row's index in the user's clean data; default the
        row itself), or None; the noise section's GLC estimate and the trusted-set section
        (`trusted_set.csv`) need it.
      example_weights: what the run recorded: `index` (row of `train`), `mean_weight`, optionally
        `count`, `is_noisy`, `mean_meta_grad`, `meta_grad_memory`, `source_index`; enables the
        L2RW rankings of label issues (the top suspects follow the first of mean_meta_grad,
        meta_grad_memory, mean_weight that is there).
      attributes: optional per-training-row attributes (bool or float), e.g. a planted cue; the bias
        section reports their rate among each class's prototypes and criticisms. `ink` (mean raw
        intensity) and `is_noisy` (when known) are always added.
      mean, std: per-channel normalisation of the images (raw = x * std + mean lies in [0, 1]).
      class_names: optional names for the report.
      run_info: free-form facts about the run, copied into `audit.json["meta"]`.
      progress: a tqdm bar over the sections (besides the bars of their own loops).

    Returns:
      The dict written to `audit.json` (every number in the report).
    """
    config = default_config() if config is None else config
    inputs = _inputs(
        apply_fn,
        feature_fn,
        params,
        model_state,
        test,
        train,
        config,
        example_weights,
        attributes,
        mean,
        std,
        class_names,
        clean,
    )
    t0 = time.time()
    meta = {
        "title": title,
        "config": config.to_dict(),
        "run": dict(run_info or {}),
        "n_test": int(len(inputs.x_test)),
        "n_train": int(len(inputs.x_train)),
        "n_clean": None if inputs.x_clean is None else int(len(inputs.x_clean)),
        "mean": inputs.mean_C.tolist(),
        "std": inputs.std_C.tolist(),
        "seconds": {},
        "class_names": list(inputs.class_names),
    }
    # The table of contents. One generator, drawn from in this order, picks every random subset.
    rng = np.random.default_rng(config.seed)
    done = []
    todo = (
        ("mistakes", mistakes_section.mistakes_section),
        ("robustness", robustness_section.robustness_section),
        ("biases", bias_section.bias_section),
        ("label issues", label_issues_section.label_issues_section),
        ("suspect cards", suspects_section.suspects_section),
        ("noise", noise_section.noise_section),
        ("trusted set", trusted_set_section.trusted_set_section),
    )
    # One bar over the sections, named by the one running (its own loops have bars below it).
    bar = tqdm.tqdm(total=len(todo), unit="section", desc="audit", disable=not progress)
    for name, section in todo:
        bar.set_description(f"audit: {name}")
        t = time.time()
        done.append(section(inputs, config, rng))
        meta["seconds"][done[-1].name] = time.time() - t
        bar.update()
    bar.close()
    meta["seconds"]["total"] = time.time() - t0
    meta["notes"] = [note for s in done for note in s.notes]
    results = {"meta": meta, **{s.name: s.results for s in done}}
    report.write_report(out_dir, results, done)
    log.info("Audit written to %s (%.1f s).", out_dir, time.time() - t0)
    return results


def _inputs(
    apply_fn,
    feature_fn,
    params,
    model_state,
    test,
    train,
    config,
    example_weights,
    attributes,
    mean,
    std,
    class_names,
    clean=None,
) -> sections.Inputs:
    """Checks everything `run_audit` is given, before any file is written (ValueError, one line
    naming the value), and gathers what the sections read; computes the test and training
    logits."""
    x_test, y_test, x_train, y_train, x_clean, y_clean, clean_source = _validate(
        test, train, config, example_weights, attributes, clean
    )
    source_index = _source_index(train, example_weights, len(x_train))
    num_classes = common.num_classes_of(apply_fn, params, model_state, x_test)
    common.check_labels(y_test, len(y_test), num_classes, "test['label']")
    common.check_labels(y_train, len(y_train), num_classes, "train['label']")
    if y_clean is not None:
        common.check_labels(y_clean, len(y_clean), num_classes, "clean['label']")
    if "true_label" in train:
        common.check_labels(train["true_label"], len(y_train), num_classes, "train['true_label']")
    mean_C, std_C = common.channel_stats(mean, std, x_test.shape[-1])
    common.check_feature_fn(feature_fn, params, model_state, x_test)
    names_given = class_names is not None
    if class_names is None:
        class_names = [str(k) for k in range(num_classes)]
    if len(class_names) != num_classes:
        raise ValueError(f"class_names has {len(class_names)} names for {num_classes} classes.")
    is_noisy_train = None
    if "is_noisy" in train:
        is_noisy_train = np.asarray(train["is_noisy"], bool)
    elif example_weights is not None and "is_noisy" in example_weights:
        is_noisy_train = np.zeros(len(x_train), bool)
        is_noisy_train[np.asarray(example_weights["index"])] = np.asarray(
            example_weights["is_noisy"], bool
        )
    logits_test = common.predict_logits(
        apply_fn, params, model_state, x_test, batch_size=config.batch_size, desc="test logits"
    )
    logits_train = common.predict_logits(
        apply_fn, params, model_state, x_train, batch_size=config.batch_size, desc="train logits"
    )
    return sections.Inputs(
        model=common.Model(apply_fn, params, model_state, feature_fn),
        x_test=x_test,
        y_test=y_test,
        logits_test=logits_test,
        x_train=x_train,
        y_train=y_train,
        logits_train=logits_train,
        true_train=np.asarray(train["true_label"]) if "true_label" in train else None,
        is_noisy_train=is_noisy_train,
        source_index=source_index,
        example_weights=example_weights,
        attributes=dict(attributes or {}),
        num_classes=num_classes,
        mean_C=mean_C,
        std_C=std_C,
        class_names=list(class_names),
        names_given=names_given,
        x_clean=x_clean,
        y_clean=y_clean,
        clean_source_index=clean_source,
    )


def _source_index(train, example_weights, n: int) -> np.ndarray:
    """Each training row's index in the user's data: `train['source_index']`, else the recorded
    `example_weights['source_index']`, else the row itself (`train` is then the user's data)."""
    from_train = from_weights = None
    if "source_index" in train:
        from_train = np.asarray(train["source_index"])
        if from_train.shape != (n,) or not np.issubdtype(from_train.dtype, np.integer):
            raise ValueError(
                f"train['source_index'] must be {n} integers (one per row), got "
                f"{from_train.dtype} {from_train.shape}."
            )
    if example_weights is not None and "source_index" in example_weights:
        idx = np.asarray(example_weights["index"])
        src = np.asarray(example_weights["source_index"])
        if src.shape != idx.shape or not np.issubdtype(src.dtype, np.integer):
            raise ValueError(
                f"example_weights['source_index'] must be integers shaped like its index "
                f"{idx.shape}, got {src.dtype} {src.shape}."
            )
        if from_train is not None and not np.array_equal(from_train[idx], src):
            raise ValueError(
                "train['source_index'] and example_weights['source_index'] disagree: the "
                "recorded weights belong to other data."
            )
        if from_train is None and len(idx) == n:
            from_weights = np.empty(n, np.int64)
            from_weights[idx] = src
    if from_train is not None:
        return from_train.astype(np.int64)
    if from_weights is not None:
        return from_weights
    return np.arange(n, dtype=np.int64)
