"""The robustness benchmark: every method and L2RW variant at 40% uniform, 40% background, 0%.

    python -m experiments.robust --config=experiments/configs/robust_protocol.py:cifar10_dev \\
        --workdir=workdirs/robust_cifar10_dev
    python -m experiments.robust --config=experiments/configs/robust_protocol.py:mnist \\
        --workdir=workdirs/robust_mnist \\
        --variants=erm,proportion,random,resample,hard_mining,finetune,clean_only,mwnet,l2rw,l2rw_robust

Each (setting, variant) trains `config.num_seeds` seeds in `<workdir>/<setting>/<variant>`
(resumed if interrupted, skipped if finished). Prints and writes `<workdir>/table.md`,
`summary.json` and `robust.png`; with `--results_dir` (default `benchmarks/results`) also
copies them there as `robust_<source>.{md,json,png}`, the versions docs/robust_default.md quotes.

Columns: final test accuracy (mean +- 95% CI over seeds); at background flip the background
class's test accuracy and the mean of the other classes'; precision@k (k = number of flipped
examples) of three recorded per-example scores: the mean weight (lowest = most suspect), the
mean normalised meta-gradient `mean_meta_grad` (l2rw; highest = most suspect) and, for
variants with a memory, the memory (highest = most suspect); seconds per step (3 members, one
after the other) relative to `erm`.
"""

from __future__ import annotations

import io
import json
import os
import sys

import numpy as np
from absl import app
from absl import flags

from experiments import common
from experiments import plots
from experiments import provenance
import l2rw_jax
from l2rw_jax import config as config_lib
from l2rw_jax import methods
from l2rw_jax import results as results_lib
from l2rw_jax import workdir as workdir_lib
from l2rw_jax.audit import label_issues

_CONFIG = common.define_config(
    os.path.join(os.path.dirname(__file__), "configs", "robust_protocol.py"),
    "Protocol config; fields overridable (--config.num_seeds=5).",
)
_WORKDIR = flags.DEFINE_string("workdir", None, "Where the runs are written.", required=True)
_SETTINGS = flags.DEFINE_list(
    "settings",
    ["uniform", "background", "none"],
    "Noise settings: uniform, background (40% each) and none.",
)
_VARIANTS = flags.DEFINE_list("variants", None, "Variants to run (default: all of VARIANTS).")
_TRAIN = flags.DEFINE_bool(
    "train",
    True,
    "Train what is missing (--notrain: only tabulate the finished runs; the others show as '-').",
)
_RESULTS_DIR = flags.DEFINE_string(
    "results_dir",
    "benchmarks/results",
    "Where the table, summary and plot are copied (empty: not copied).",
)


def _l2rw(base=config_lib.PAPER_L2RW, **changes) -> dict:
    """Overrides of an l2rw variant: method.l2rw options ``base`` with ``changes``."""
    return {"method": {"name": "l2rw", "l2rw": dict(base, **changes)}}


# name -> config overrides. The L2RW rows go from the paper's algorithm to the recommended one,
# one option at a time (methods.l2rw documents each option).
VARIANTS = {
    "erm": {"method": {"name": "erm"}},
    "proportion": {"method": {"name": "proportion"}},
    "random": {"method": {"name": "random"}},
    "resample": {"method": {"name": "resample"}},
    "hard_mining": {"method": {"name": "hard_mining"}},
    "finetune": {"method": {"name": "finetune", "finetune_steps": 300}},
    "clean_only": {"method": {"name": "clean_only"}},
    "mwnet": {"method": {"name": "mwnet"}},
    "l2rw": _l2rw(),
    "l2rw_last": _l2rw(meta_params="last"),
    "l2rw_last_mem": _l2rw(meta_params="last", memory_decay=0.9),
    "l2rw_last_mem_sign_class": _l2rw(
        meta_params="last", memory_decay=0.9, weight_map="sign", normalize="class_balanced"
    ),
    # ... and a 200-step warm-up: the no-mix variant, the default before the excess-loss mix
    # (its tables were measured with it; `recommended` below is the default, with the mix).
    "l2rw_robust": _l2rw(methods.ROBUST_OPTIONS_V1),
    "l2rw_robust_gate": _l2rw(methods.ROBUST_OPTIONS_V1, loss_quantile=0.7),
    "gate_only": _l2rw(methods.ROBUST_OPTIONS_V1, loss_quantile=0.7, weight_map="one"),
    "recommended": _l2rw(config_lib.ROBUST_L2RW),
}
SETTINGS = {
    "uniform": {"data": dict(noise="uniform", noise_ratio=0.4)},
    "background": {"data": dict(noise="background", noise_ratio=0.4)},
    "none": {"data": dict(noise="none", noise_ratio=0.0)},
}


def precision_at_noisy(
    workdir: workdir_lib.PathLike, seeds, key: str, suspect_high: bool
) -> list[float] | None:
    """Per seed: precision@k of ranking the training examples by ``key`` of the run's
    example_weights (k = number of flipped examples); None when not recorded or no noise."""
    out = []
    for s in seeds:
        path = workdir_lib.path(workdir) / f"example_weights_seed{s}.npz"
        if not path.exists():
            path = workdir_lib.path(workdir) / "example_weights.npz"
        with np.load(io.BytesIO(path.read_bytes())) as z:  # Local or gs://.
            if key not in z.files or "is_noisy" not in z.files or not z["is_noisy"].any():
                return None
            score, is_noisy = z[key].astype(np.float64), z["is_noisy"]
        order = np.lexsort((np.arange(len(score)), -score if suspect_high else score))
        out.append(label_issues.precision_at_k(order, is_noisy, int(is_noisy.sum())))
    return out


def summarize(results: dict, run_dir: workdir_lib.PathLike, erm_rate: float | None) -> dict:
    """The numbers of one (setting, variant) run for the table."""
    out = {
        "test_accuracy": results["final_test_accuracy"],
        "steps_per_s": results["steps_per_s"],
        "time_vs_erm": erm_rate / results["steps_per_s"] if erm_rate else None,
    }
    bg = results["background_class"]
    if bg[0] is not None:
        out.update(common.background_accuracies(results["per_class_accuracy"]["per_seed"], bg))
    if results["method"] in ("l2rw", "mwnet", "hard_mining"):
        p = precision_at_noisy(run_dir, results["seeds"], "mean_weight", suspect_high=False)
        out["precision_weight"] = None if p is None else results_lib.mean_ci95(p)
    for key, name in (
        ("mean_meta_grad", "precision_meta_grad"),
        ("meta_grad_memory", "precision_memory"),
    ):
        p = precision_at_noisy(run_dir, results["seeds"], key, suspect_high=True)
        out[name] = None if p is None else results_lib.mean_ci95(p)
    return out


def table(summary: dict, settings, variants) -> str:
    header = ["variant"]
    for s in settings:
        header += [f"{s}: test acc %"]
        if s == "background":
            header += ["background: bg class / others %"]
        if s != "none":
            header += [f"{s}: precision@k (weight / meta-grad / memory)"]
    header += ["time / erm"]
    rows = []
    for v in variants:
        row = [v]
        for s in settings:
            r = summary[s].get(v)
            row.append(common.fmt(r and r["test_accuracy"]))
            if s == "background":
                pct = lambda stats: "-" if stats is None else f"{100 * stats['mean']:.1f}"
                row.append(
                    "-"
                    if not r
                    else f"{pct(r['background_accuracy'])} / {pct(r['other_classes_accuracy'])}"
                )
            if s != "none":
                ps = [
                    r and r.get(k)
                    for k in ("precision_weight", "precision_meta_grad", "precision_memory")
                ]
                row.append(
                    " / ".join(f"{p['mean']:.3f}" if p else "-" for p in ps) if any(ps) else "-"
                )
        times = [
            summary[s][v]["time_vs_erm"]
            for s in settings
            if v in summary[s] and summary[s][v]["time_vs_erm"]
        ]
        row.append(f"{np.mean(times):.2f}x" if times else "-")
        rows.append(row)
    return common.markdown_table(header, rows)


def main(argv):
    if len(argv) > 1:
        raise app.UsageError(f"Unexpected arguments: {argv[1:]}")
    variants = _VARIANTS.value or list(VARIANTS)
    unknown = [v for v in variants if v not in VARIANTS]
    bad_settings = [s for s in _SETTINGS.value if s not in SETTINGS]
    if unknown or bad_settings:
        raise app.UsageError(
            f"unknown variants {unknown} / settings {bad_settings}; allowed: "
            f"{list(VARIANTS)} / {list(SETTINGS)}."
        )
    common.quiet_checkpoint_logs()
    config, workdir = _CONFIG.value, workdir_lib.path(_WORKDIR.value)  # gs:// stays a URI.
    # Every run is validated before the first one starts: a typo fails now, not in an hour.
    configs = {}
    for s in _SETTINGS.value:
        for v in variants:
            cfg = config_lib.validate(config)
            cfg.update(SETTINGS[s])
            # Every l2rw option explicit: independent of the defaults.
            cfg.method.l2rw.update(config_lib.PAPER_L2RW)
            cfg.update(VARIANTS[v])
            configs[s, v] = config_lib.validate(cfg)
    summary = {s: {} for s in _SETTINGS.value}
    for s in _SETTINGS.value:
        erm_rate = None
        for v in (["erm"] if "erm" in variants else []) + [v for v in variants if v != "erm"]:
            run_dir = workdir / s / v
            if not _TRAIN.value and not (run_dir / "results.json").exists():
                continue
            print(f"--- {s} / {v}", flush=True)
            results = l2rw_jax.train_and_evaluate(configs[s, v], run_dir)
            erm_rate = results["steps_per_s"] if v == "erm" else erm_rate
            summary[s][v] = summarize(results, run_dir, erm_rate)
    text = table(summary, _SETTINGS.value, variants)
    source = os.path.basename(config.data.dataset).split(".")[0]
    head = (
        f"{source}: {config.model.name}, {config.num_steps} steps, batch "
        f"{config.data.batch_size} + {config.data.clean_batch_size} clean, "
        f"{config.data.clean_per_class} clean per class, "
        f"{config.num_seeds} seeds; final test accuracy mean +- 95% CI"
    )
    print(head + "\n" + text)
    record = provenance.record("experiments.robust", sys.argv[1:])
    common.write_text(
        workdir / "table.md", head + "\n\n" + text + "\n\n" + provenance.describe(record) + "\n"
    )
    common.write_json(
        workdir / "summary.json",
        {"config": json.loads(config.to_json()), "summary": summary, "provenance": record},
    )
    plots.plot_bars(
        summary,
        _SETTINGS.value,
        variants,
        workdir / "robust.png",
        f"{source}, {config.model.name}, {config.num_steps} steps, {config.num_seeds} seeds",
    )
    if _RESULTS_DIR.value and workdir_lib.is_primary():
        for name, ext in (("table.md", "md"), ("summary.json", "json"), ("robust.png", "png")):
            data = (workdir / name).read_bytes()
            dst = workdir_lib.path(_RESULTS_DIR.value) / f"robust_{source}.{ext}"
            workdir_lib.atomic_write(dst, lambda f: f.write(data), mode="wb")


if __name__ == "__main__":
    common.run_main(main)
