"""The audit of a trained run's workdir: `audit_run(workdir)` (`python -m experiments.audit`).

Reads the run's workdir (written by `l2rw_jax.train.train_and_evaluate`), rebuilds its data and
model, and calls `run_audit`, which writes `<workdir>/audit/report.html`,
`<workdir>/audit/audit.json` and `<workdir>/audit/label_issues.csv` (every training example,
most suspect label first, with `source_index`: its row in the dataset's own training arrays)
and `<workdir>/audit/trusted_set.csv` (every clean example, most suspect label first).

  <workdir>/config.json          the training config (dataset, noise, model, seed, ...)
  <workdir>/checkpoints/<step>/  orbax: {"carry": (state, acc, msum), "meta": json}; `state` is a
                                 TrainState stacked over the run's members (leading seed axis)
  <workdir>/example_weights.npz  member 0 (seed = config.seed): index, mean_weight, count,
                                 is_noisy, label, true_label, source_index; l2rw runs also
                                 mean_meta_grad (and meta_grad_memory with the robust variant)
  <workdir>/example_weights_seed<s>.npz   other members of a multi-seed run

The noisy training set is rebuilt from the config (same seed, same split, same noise, same
hyper-validation hold-out, same normalisation) and checked row by row against the recorded labels
and source indices; a mismatch is an error. Call it from the directory training ran from (configs
may name data by relative path).

  from l2rw_jax import audit
  res = audit.audit_run("workdirs/mnist_uniform/l2rw")   # res["mistakes"]["top_k_accuracy"], ...
"""

from __future__ import annotations

import logging
import os

import numpy as np

from l2rw_jax.audit import run

log = logging.getLogger("l2rw_jax.audit")


def _restore_state(workdir: str) -> tuple[dict, int]:
    """The newest checkpoint's TrainState (as a dict of its fields) and its step."""
    import orbax.checkpoint as ocp  # Heavy import, only when a checkpoint is read.

    workdir = os.path.abspath(workdir)  # orbax refuses relative checkpoint paths
    ckpt_dir = os.path.join(workdir, "checkpoints")
    if not os.path.isdir(ckpt_dir) or not any(d.isdigit() for d in os.listdir(ckpt_dir)):
        raise ValueError(
            f"workdir {workdir!r} has no checkpoint (expected orbax steps under "
            f"{ckpt_dir!r}); train first, e.g. python -m experiments.mnist "
            f"--workdir={workdir}."
        )
    manager = ocp.CheckpointManager(ckpt_dir)
    try:
        step = manager.latest_step()
        if step is None:
            raise ValueError(f"workdir {workdir!r} has no finished checkpoint under {ckpt_dir!r}.")
        restored = manager.restore(step, args=ocp.args.Composite(carry=ocp.args.StandardRestore()))
    finally:
        manager.close()
    carry = restored.carry
    state = carry[0] if isinstance(carry, (list, tuple)) else carry["state"]
    if not isinstance(state, dict) or "params" not in state:
        raise ValueError(
            f"checkpoint {step} of {workdir!r} holds no TrainState with params; got "
            f"{type(state).__name__}."
        )
    return state, step


def load_run(workdir: str, member: int = 0) -> dict:
    """Everything `run_audit` needs from a run's workdir (see the module docstring), for the
    member `member` (seed = config.seed + member) of a multi-seed run.

    Returns dict: apply_fn, feature_fn, params, model_state, test, train, clean (the member's
    clean set: image, label, source_index), example_weights
    (None when the run has not finished), mean, std, class_names, run_info.
    Raises ValueError for a missing workdir, config or checkpoint, or data that does not match
    the recorded weights.
    """
    workdir = os.path.abspath(workdir)
    if not os.path.isdir(workdir):
        raise ValueError(f"workdir {workdir!r} does not exist.")
    config_path = os.path.join(workdir, "config.json")
    if not os.path.exists(config_path):
        raise ValueError(f"workdir {workdir!r} has no config.json; is it a training run's workdir?")
    from l2rw_jax import compose

    cfg = compose.read_config(workdir)  # Grouped; flat config.json files are upgraded.
    num_seeds = int(cfg.num_seeds)
    if not 0 <= member < num_seeds:
        raise ValueError(f"member={member} must be in [0, {num_seeds}) (the run's num_seeds).")
    state, step = _restore_state(workdir)

    # The data modules pull in TensorFlow: imported only once the cheap checks passed.
    import jax
    from l2rw_jax import from_config
    from l2rw_jax import model_factory
    from l2rw_jax import models

    # The member's data exactly as training rebuilt it (splits, hold-out, normalisation).
    md = compose.member_data(cfg, member)
    seed, splits, mean, std = md.seed, md.splits, md.mean, md.std

    weights_path = os.path.join(
        workdir, "example_weights.npz" if member == 0 else f"example_weights_seed{seed}.npz"
    )
    example_weights = None
    if os.path.exists(weights_path):
        with np.load(weights_path) as z:
            example_weights = {k: z[k] for k in z.files}
        idx = example_weights["index"]
        if (
            len(idx) != len(splits.train_labels)
            or not np.array_equal(example_weights["label"], splits.train_labels[idx])
            or (
                "source_index" in example_weights
                and not np.array_equal(
                    example_weights["source_index"], splits.train_source_index[idx]
                )
            )
        ):
            raise ValueError(
                f"{weights_path} does not match the training set rebuilt from config.json "
                f"(seed {seed}): the data or the corruption code changed since training."
            )
    else:
        log.warning(
            "%s not found (run not finished?): label issues are ranked by the baselines only.",
            weights_path,
        )

    module = model_factory.create_model(
        cfg.model.name, splits.num_classes, **from_config.model_kwargs(cfg.model)
    )
    pick = lambda t: jax.tree.map(lambda x: np.asarray(x)[member], t)
    params = pick(state["params"])
    model_state = pick(state.get("model_state") or {})

    def normalise(x_uint8):
        return (
            (x_uint8.astype(np.float32) / 255.0 - mean.reshape(1, 1, 1, -1))
            / std.reshape(1, 1, 1, -1)
        ).astype(np.float32)

    # The source's own names (tfds ClassLabel, npz class_names, folder: directories), by the
    # source class behind each label; else the class ids.
    if md.class_names is not None:
        class_names = [md.class_names[c] for c in splits.source_classes]
    else:
        class_names = [str(c) for c in splits.source_classes]
    train = {
        "image": normalise(splits.train_x),
        "label": splits.train_labels.astype(np.int32),
        "true_label": splits.train_true_labels.astype(np.int32),
        "is_noisy": splits.train_is_noisy.astype(bool),
        "source_index": splits.train_source_index.astype(np.int64),
    }
    if not splits.truth_known:
        # No corruption of ours and no true labels: the given labels are all we know, so the
        # ground truth is unknown (label_issues.csv leaves true_label and is_noisy empty), not
        # "all correct".
        del train["true_label"], train["is_noisy"]
        if example_weights is not None:
            example_weights = {
                k: v for k, v in example_weights.items() if k not in ("true_label", "is_noisy")
            }
    return {
        "apply_fn": models.make_apply_fn(module),
        "feature_fn": models.make_feature_fn(module),
        "params": params,
        "model_state": model_state,
        "test": {"image": normalise(splits.test_x), "label": splits.test_labels.astype(np.int32)},
        "train": train,
        # The trusted set the run weighed with (its labels are the true ones): the noise
        # section's GLC estimate. Never the test set.
        "clean": {
            "image": normalise(splits.clean_x),
            "label": splits.clean_labels.astype(np.int32),
            "source_index": splits.clean_source_index.astype(np.int64),
        },
        "example_weights": example_weights,
        "mean": mean,
        "std": std,
        "class_names": class_names,
        "run_info": {
            "workdir": workdir,
            "dataset": cfg.data.dataset,
            "model": cfg.model.name,
            "method": cfg.method.name,
            "noise": cfg.data.noise,
            "noise_ratio": cfg.data.noise_ratio,
            "data": from_config.describe_data(cfg.data),
            "seed": seed,
            "checkpoint_step": int(step),
        },
    }


def audit_run(workdir: str, config=None, out_dir: str | None = None, member: int = 0) -> dict:
    """Loads the run (`load_run`) and writes its audit to `out_dir` (default `<workdir>/audit`):
    report.html, audit.json, label_issues.csv, trusted_set.csv. `config`:
    `l2rw_jax.audit.default_config()` when None.

    Returns the audit.json dict (`run_audit`). Raises ValueError as `load_run` and `run_audit` do.
    """
    loaded = load_run(workdir, member)
    info = loaded["run_info"]
    title = f"Audit: {info['method']} on {info['data']}"
    return run.run_audit(
        loaded["apply_fn"],
        loaded["feature_fn"],
        loaded["params"],
        loaded["model_state"],
        test=loaded["test"],
        train=loaded["train"],
        clean=loaded["clean"],
        out_dir=out_dir or os.path.join(os.path.abspath(workdir), "audit"),
        config=config,
        example_weights=loaded["example_weights"],
        mean=loaded["mean"],
        std=loaded["std"],
        class_names=loaded["class_names"],
        title=title,
        run_info=info,
    )
