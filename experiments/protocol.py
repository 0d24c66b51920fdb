"""The CPU protocol (docs/protocol.md): plain and class-balanced training, the oracle, the
paper's L2RW, the library's default and the other baselines, in settings where plain training
memorises the flipped labels and where the model underfits.

    L2RW_DEV_DATA=../shared/data python -m experiments.protocol --workdir=workdirs/protocol \\
        [--settings=digits_uniform40,mnist_mlp_uniform40] [--num_steps=8000] [--num_seeds=5]

Settings: experiments/configs/protocol.py. Each (setting, method) trains the setting's seeds
(5) in `<workdir>/<setting>/steps<N>/<method>`, resumed if interrupted, skipped if finished.
Per setting it prints and writes `<workdir>/<setting>/steps<N>/table.md`, `summary.json` and
`accuracy.png` (test accuracy over training, one line per method: the mean over seeds, shaded
from the lowest to the highest seed), and copies them to
`<results_dir>/protocol_<setting>.{md,json,png}` (default results_dir: benchmarks/results;
`protocol_<setting>_steps<N>.*` for a budget other than the setting's own), with the command,
the date and the versions.

Columns: final and best test accuracy over the evaluations (mean +- 95% CI over seeds, Student
t), the drop from each seed's best to its final accuracy (memorisation shows as a large ERM
drop), steps per second. Under the table, for the recommended default and every other
candidate: its final accuracy minus ERM's, class-balanced training's and the paper rule's,
paired over seeds (each seed is one split, noise draw and data order shared by the methods),
mean +- 95% CI (the protocol's criteria: the default at least as accurate as ERM and as
class-balanced training, and within 2 points of the paper's rule where it works).

`selected test acc %` (shown when some run has a clean selection set: `--selection_size=M`
holds M clean examples out of each setting's clean set, stratified per class, to choose the
checkpoint; data.selection_size): the test accuracy at the evaluation with the best
selection accuracy (results.json's selected_test_accuracy); `-` for a run without one. Such
runs train on a smaller clean set, so they go to `<setting>/steps<N>_selection<M>/` and
`protocol_<setting>[_steps<N>]_selection<M>.*`, beside the runs without the hold-out.

`gap closed %` (shown when both `erm` and `oracle` ran): the share of the gap between plain
training and the oracle that a method closes, per seed `(acc - acc_erm) / (acc_oracle -
acc_erm)` on final test accuracies, then mean +- 95% CI over seeds (also `gap_closed` per
method in summary.json); 0 is ERM, 100 the oracle.

Methods: `erm`; `oracle` (plain training on exactly the correctly labelled rows and the clean
set: the reference a reweighting could reach at best); `resample` (class-balanced plain
training: batches drawn class-balanced from the noisy labels); `l2rw` (the paper's algorithm,
config.PAPER_L2RW); `recommended` (the library's default method.l2rw options,
config.ROBUST_L2RW); `mwnet` (Meta-Weight-Net); `clean_only` (the clean set alone);
`finetune` (plain training, then a tenth of the budget on the clean set); `glc` (Gold Loss
Correction with plain weights); and ablations, one option of
`methods.l2rw` switched at a time: `l2rw+<token>...` (the paper's rule with options on),
`recommended-<token>...` (the default with options back at the paper's value),
`recommended+<token>` (tokens: experiments/configs/protocol.ABLATIONS).

Why a command of its own rather than settings of experiments/robust.py: robust.py varies the
noise of one config and tabulates final accuracy and detection precision; here each setting
is its own dataset, model and budget, and the protocol's point is the curve over training
(best vs final).

`--num_steps` shortens (or lengthens) every setting's budget; the learning-rate boundaries
scale with it and the table says the budget is not the setting's own.
"""

from __future__ import annotations

import os
import shutil
import sys
from types import SimpleNamespace

import numpy as np
from absl import app
from absl import flags

from experiments import common
from experiments import plots
from experiments import provenance as provenance_lib
from experiments.configs import protocol as protocol_config
import l2rw_jax
from l2rw_jax import members
from l2rw_jax import results as results_lib


def define_flags() -> SimpleNamespace:
    """The command's flags, defined when it runs as a program: importing the module (tests,
    notebooks, other programs) defines none, so its --workdir never clashes with another entry
    point's."""
    workdir = flags.DEFINE_string("workdir", None, "Where the runs are written.", required=True)
    settings = flags.DEFINE_list(
        "settings",
        ["digits_uniform40", "mnist_mlp_uniform40", "mnist_mlp_background40"],
        f"Settings to run, of {list(protocol_config.SETTINGS)}.",
    )
    methods = flags.DEFINE_list(
        "methods",
        None,
        "Methods (default: every one of experiments/configs/protocol.py METHODS: "
        f"{','.join(protocol_config.METHODS)}), or ablations: l2rw or "
        "recommended followed by any number of +<token> (set that option; a mix token replaces "
        "the mix) and -<token> (back to the paper's value), tokens in "
        "experiments/configs/protocol.py ABLATIONS.",
    )
    num_steps = flags.DEFINE_integer(
        "num_steps",
        0,
        "Step budget of every setting (0: each setting's own; lr boundaries scale).",
        lower_bound=0,
    )
    num_seeds = flags.DEFINE_integer(
        "num_seeds", 0, "Seeds per run (0: the setting's, 5).", lower_bound=0
    )
    selection_size = flags.DEFINE_integer(
        "selection_size",
        0,
        "Clean examples held out of each setting's clean set to choose the checkpoint "
        "(data.selection_size; 0: none). The runs go to steps<N>_selection<M>/ and the "
        "files to protocol_<setting>[_steps<N>]_selection<M>.*.",
        lower_bound=0,
    )
    train = flags.DEFINE_bool(
        "train", True, "Train what is missing (--notrain: only tabulate the finished runs)."
    )
    results_dir = flags.DEFINE_string(
        "results_dir",
        "benchmarks/results",
        "Where the table, summary and plot are copied as "
        "protocol_<setting>.{md,json,png} (empty: not copied).",
    )
    return SimpleNamespace(
        workdir=workdir,
        settings=settings,
        methods=methods,
        num_steps=num_steps,
        num_seeds=num_seeds,
        selection_size=selection_size,
        train=train,
        results_dir=results_dir,
    )


# The methods and the config of one (setting, method) run live with the settings (no flags
# there, so tests and notebooks can import them).
METHODS = protocol_config.METHODS
NUM_CLASSES = protocol_config.NUM_CLASSES
setting_config = protocol_config.setting_config
COLUMNS = [
    "method",
    "seeds",
    "final test acc %",
    "best test acc %",
    "best - final (points)",
    "best step (median)",
    "steps/s",
]


def summarize(results: dict, run_dir: str) -> dict:
    """One method's row: final / best accuracy, the per-seed best-to-final drop, the curve."""
    steps_E, acc_KxE = common.test_curve(run_dir)
    final_K = np.array(results["final_test_accuracy"]["per_seed"])
    best_K = np.array(results["best_test_accuracy"]["per_seed"])
    return {
        "final_test_accuracy": results["final_test_accuracy"],
        "best_test_accuracy": results["best_test_accuracy"],
        "drop": results_lib.mean_ci95(best_K - final_K),
        "best_step": results["best_step"],
        "selected_test_accuracy": results["selected_test_accuracy"],
        # "selection" when the run held clean rows out to choose its checkpoint
        # (data.selection_size); runs from before the field: None.
        "selected_by": results.get("selected_by"),
        "steps_per_s": results["steps_per_s"],
        "wall_time_s": results["wall_time_s"],
        "num_seeds": results["num_seeds"],
        "curve": {"steps": steps_E.tolist(), "accuracy_per_seed": acc_KxE.tolist()},
    }


def gap_closed(rows: dict, method: str) -> dict | None:
    """The share of the ERM-to-oracle gap ``method`` closes, paired over seeds: per seed k
    ``g_k = (acc_k - erm_k) / (oracle_k - erm_k)`` on final test accuracies, then
    results.mean_ci95 over k (results.gap_closed). None when erm or oracle is missing, the
    seeds differ, or some seed's oracle equals its ERM (no gap to close)."""
    if method not in rows or "erm" not in rows or "oracle" not in rows:
        return None
    return results_lib.gap_closed(
        *(rows[m]["final_test_accuracy"]["per_seed"] for m in (method, "erm", "oracle"))
    )


def table(rows: dict) -> str:
    """The markdown table of one setting: one row per method (COLUMNS, then `selected test acc
    %` when some run chose its checkpoint on a clean selection set, `-` for the others, then
    `gap closed %` when both erm and oracle ran)."""
    show_gap = "erm" in rows and "oracle" in rows
    show_selected = any(r.get("selected_by") == "selection" for r in rows.values())
    body = []
    for m, r in rows.items():
        drop = r["drop"]
        selected = r["selected_test_accuracy"] if r.get("selected_by") == "selection" else None
        body.append(
            [
                m,
                r["num_seeds"],
                common.fmt(r["final_test_accuracy"]),
                common.fmt(r["best_test_accuracy"]),
                f"{100 * drop['mean']:.2f}"
                + (f" +- {100 * drop['ci95']:.2f}" if drop["ci95"] is not None else ""),
                f"{int(np.median(r['best_step']))}",
                f"{r['steps_per_s']:.1f}",
            ]
            + ([common.fmt(selected)] if show_selected else [])
            + ([common.fmt(gap_closed(rows, m))] if show_gap else [])
        )
    columns = COLUMNS + (["selected test acc %"] if show_selected else [])
    return common.markdown_table(columns + (["gap closed %"] if show_gap else []), body)


def paired_difference(rows: dict, method: str, other: str) -> dict | None:
    """``method``'s final test accuracy minus ``other``'s, seed by seed (the seeds share the
    split, the noise draw and the data order, so the difference is paired): mean +- 95% CI
    (results.mean_ci95, in points). None when either is missing or the seeds differ."""
    if method not in rows or other not in rows:
        return None
    a = np.array(rows[method]["final_test_accuracy"]["per_seed"])
    b = np.array(rows[other]["final_test_accuracy"]["per_seed"])
    if a.shape != b.shape:
        return None
    return results_lib.mean_ci95(100 * (a - b))


REFERENCES = ("erm", "resample", "l2rw")


def criteria(rows: dict) -> str:
    """The protocol's criteria: each candidate's (the recommended default's, then every other
    non-reference method's) final accuracy minus ERM's, class-balanced training's and the
    paper rule's, paired over seeds (points, mean +- 95% CI); one line per candidate."""
    lines = []
    for cand in sorted(
        (m for m in rows if m not in REFERENCES),
        key=lambda m: (m != "recommended", list(rows).index(m)),
    ):
        parts = []
        for m in REFERENCES:
            d = paired_difference(rows, cand, m)
            if d is not None:
                ci = f" +- {d['ci95']:.2f}" if d["ci95"] is not None else ""
                parts.append(f"{m} {d['mean']:+.2f}{ci}")
        if parts:
            lines.append(f"{cand} minus: " + ", ".join(parts))
    if not lines:
        return ""
    return (
        "Final test accuracy minus the references' (points, paired over seeds, mean +- 95% "
        "CI):\n\n" + "\n".join(f"- {line}" for line in lines)
    )


def selection_suffix(selection_size: int) -> str:
    """``_selection<M>`` for a selection hold-out of ``M`` clean examples, ``""`` without one:
    the runs' folder and the results' file names carry it."""
    return f"_selection{selection_size}" if selection_size else ""


def run_folder(num_steps: int, selection_size: int) -> str:
    """A setting's runs of one budget and selection hold-out: ``steps<N>[_selection<M>]``."""
    return f"steps{num_steps}" + selection_suffix(selection_size)


def run_setting(
    setting: str,
    methods,
    workdir: str,
    num_steps: int,
    num_seeds: int,
    train: bool,
    provenance: dict,
    selection_size: int = 0,
) -> tuple[str, dict]:
    """Trains (or reads) one setting's methods; writes and returns (table text, summary)."""
    configs = {m: setting_config(setting, m, num_steps, num_seeds, selection_size) for m in methods}
    cfg0 = next(iter(configs.values()))
    own_steps = protocol_config.get_config(setting).num_steps
    setting_dir = os.path.join(workdir, setting, run_folder(cfg0.num_steps, selection_size))
    rows = {}
    for m, cfg in configs.items():
        run_dir = os.path.join(setting_dir, m)
        if not train and not os.path.exists(os.path.join(run_dir, "results.json")):
            continue
        print(f"--- {setting} / {m}", flush=True)
        rows[m] = summarize(l2rw_jax.train_and_evaluate(cfg, run_dir), run_dir)
    for m in rows:
        rows[m]["gap_closed"] = gap_closed(rows, m)
    d = cfg0.data
    budget = (
        f"{cfg0.num_steps} steps"
        if cfg0.num_steps == own_steps
        else f"{cfg0.num_steps} steps (SHORTENED budget: the setting's own is {own_steps})"
    )
    head = (
        f"{setting}: {os.path.basename(d.dataset)}, {cfg0.model.name} "
        f"{dict(cfg0.model.options)}, {d.noise} flip {d.noise_ratio:.0%}, "
        f"{d.clean_per_class} clean per class"
        + (
            f" ({selection_size} of the clean examples held out to choose the checkpoint)"
            if selection_size
            else ""
        )
        + f", batch {d.batch_size} + {d.clean_batch_size} "
        f"clean, SGD momentum {cfg0.optim.momentum} lr {cfg0.optim.learning_rate}, {budget}, "
        f"{cfg0.num_seeds} seeds; test accuracy mean +- 95% CI over seeds "
        f"(best: the highest of the evaluations every {cfg0.loop.eval_every} steps)"
    )
    text = table(rows)
    crit = criteria(rows)
    foot = (f"\n\n{crit}" if crit else "") + ("\n\n" + provenance_lib.describe(provenance))
    full = head + "\n\n" + text + foot + "\n"
    summary = {
        "setting": setting,
        "num_steps": cfg0.num_steps,
        "setting_num_steps": own_steps,
        "shortened": cfg0.num_steps < own_steps,
        "selection_size": selection_size,
        **provenance,
        "configs": {m: c.to_dict() for m, c in configs.items()},
        "methods": rows,
    }
    common.write_text(os.path.join(setting_dir, "table.md"), full)
    common.write_json(os.path.join(setting_dir, "summary.json"), summary)
    if rows:
        plots.plot_curves(
            {
                m: (np.array(r["curve"]["steps"]), np.array(r["curve"]["accuracy_per_seed"]))
                for m, r in rows.items()
            },
            os.path.join(setting_dir, "accuracy.png"),
            f"{setting}, {cfg0.num_steps} steps",
        )
    return full, summary


def main(argv, f: SimpleNamespace):
    if len(argv) > 1:
        raise app.UsageError(f"Unexpected arguments: {argv[1:]}")
    methods = f.methods.value or list(METHODS)
    size = f.selection_size.value
    bad = [s for s in f.settings.value if s not in protocol_config.SETTINGS]
    if bad:
        raise app.UsageError(f"unknown settings {bad}; allowed: {list(protocol_config.SETTINGS)}.")
    for m in methods:
        try:
            protocol_config.method_overrides(m)
        except ValueError as e:
            raise app.UsageError(str(e)) from None
    common.quiet_checkpoint_logs()
    workdir = os.path.abspath(f.workdir.value)
    # Every run's config is built (and validated) before the first trains: a typo fails now.
    for s in f.settings.value:
        for m in methods:
            setting_config(s, m, f.num_steps.value, f.num_seeds.value, size)
        if size:  # a selection set the clean set cannot give, before anything trains
            per_class = protocol_config.get_config(s).data.clean_per_class
            try:
                members.selection_counts(
                    np.repeat(np.arange(NUM_CLASSES), per_class), NUM_CLASSES, size
                )
            except ValueError as e:
                raise app.UsageError(f"setting {s}: {e}") from None
    provenance = provenance_lib.record("experiments.protocol", sys.argv[1:])
    for s in f.settings.value:
        text, summary = run_setting(
            s,
            methods,
            workdir,
            f.num_steps.value,
            f.num_seeds.value,
            f.train.value,
            provenance,
            selection_size=size,
        )
        print("\n" + text, flush=True)
        if f.results_dir.value and summary["methods"]:
            os.makedirs(f.results_dir.value, exist_ok=True)
            setting_dir = os.path.join(workdir, s, run_folder(summary["num_steps"], size))
            # A budget other than the setting's own is named by it, and so is a selection
            # hold-out: neither replaces the full-budget results (nor another budget's).
            stem = (
                f"protocol_{s}"
                + (
                    ""
                    if summary["num_steps"] == summary["setting_num_steps"]
                    else f"_steps{summary['num_steps']}"
                )
                + selection_suffix(size)
            )
            for name, ext in (
                ("table.md", "md"),
                ("summary.json", "json"),
                ("accuracy.png", "png"),
            ):
                dst = os.path.join(f.results_dir.value, f"{stem}.{ext}")
                shutil.copyfile(os.path.join(setting_dir, name), dst + ".tmp")
                os.replace(dst + ".tmp", dst)


if __name__ == "__main__":
    _flags = define_flags()
    common.run_main(lambda argv: main(argv, _flags))
