"""The reproduction suite's files: ``reproduce_<part>.{png,md,json}`` and the zip bundle.

Every file is written atomically (a tmp file, then a rename), so a run cut off at any moment
leaves only whole files; the ``.json`` comes last and marks a part as written.

Files (``--results_dir``): ``reproduce_<part>.json`` with ``suite``, ``part``, ``status``
(complete | partial), ``command``, ``date``, ``versions``, ``device``, ``git_commit``
(``experiments/provenance.py``), ``budget_s``,
``wall_time_s``, ``plan``, ``programs`` (per program: method, majority_fraction, num_steps,
seeds, final / best / hyper-validation-selected test accuracy (mean, ci95, per seed),
test_error_pct (MNIST), all_zero_steps, wall_time_s, steps_per_s, curve, config),
``paper``, ``protocol``, ``notes``; ``.md`` the same as a table next to the paper's values;
``.png`` error vs majority fraction (MNIST) or test accuracy over training (CIFAR).
"""

from __future__ import annotations

import json
import os

import numpy as np

from experiments import common
from experiments import plots
from experiments.configs.reproduce import LABELS
from experiments.configs.reproduce import PAPER
from experiments.configs.reproduce import Part
from l2rw_jax import results as results_lib
from l2rw_jax import workdir as workdir_lib


def present(part: str, suite: str, *dirs: str) -> dict | None:
    """The stored record ``reproduce_<part>.json`` of ``suite`` in the first of ``dirs`` that
    has one (the results dir, then the committed one), else None."""
    for d in dirs:
        path = os.path.join(d, f"reproduce_{part}.json")
        if os.path.isfile(path):
            with open(path) as fh:
                record = json.load(fh)
            if record.get("suite") == suite:
                return record
    return None


def program_record(method: str, fraction, results: dict, workdir: str, wall: float) -> dict:
    """One program's entry of ``programs``: ``train_and_evaluate``'s ``results`` of the run in
    ``workdir`` (its test curve read from ``metrics.jsonl``), ``wall`` seconds, and for a
    sweep (``fraction`` set) ``test_error_pct`` (mean, ci95, per seed)."""
    steps, acc = common.test_curve(workdir)
    out = {
        "method": method,
        "label": LABELS.get(method, method),
        "majority_fraction": fraction,
        "num_steps": results["num_steps"],
        "seeds": results["seeds"],
        **{
            k: results[k]
            for k in (
                "final_test_accuracy",
                "best_test_accuracy",
                "selected_test_accuracy",
                "final_hyperval_accuracy",
                "all_zero_steps",
                "steps_per_s",
                "config",
            )
        },
        "wall_time_s": wall,
        "curve": {"steps": steps.tolist(), "test_accuracy_per_seed": acc.tolist()},
    }
    if fraction is not None:
        acc_K = np.array(results["final_test_accuracy"]["per_seed"])
        out["test_error_pct"] = results_lib.mean_ci95(100 * (1 - acc_K))
    return out


def write_part(results_dir: str, bundle_path: str, part: Part, record: dict) -> None:
    """``<results_dir>/reproduce_<part>.png``, ``.md``, then ``.json`` (the marker of a
    written part), each atomic; then the bundle (:func:`bundle`). ``record`` is the part's
    record (``programs``, ``plan``, ``status``, the provenance, ...)."""
    stem = os.path.join(results_dir, f"reproduce_{part.name}")
    paper = (PAPER.get(part.name) or {}).get("values", {})
    if part.fractions is not None:
        plots.plot_error_sweep(
            record["programs"],
            list(part.methods),
            part.fractions,
            stem + ".png",
            part.title,
            paper.get("0.995", {}),
            LABELS,
        )
    else:
        plots.plot_program_curves(record["programs"], stem + ".png", part.title, paper)
    common.write_text(stem + ".md", markdown(part, record))
    workdir_lib.write_json(stem + ".json", record)
    bundle(results_dir, bundle_path)


def bundle(results_dir: str, path: str) -> None:
    """Zips ``results_dir``'s ``reproduce_*`` files into ``path`` (atomically; nothing when
    ``path`` is empty): one file that holds every result, to copy off the machine."""
    if not path:
        return
    import zipfile

    names = sorted(f for f in os.listdir(results_dir) if f.startswith("reproduce_"))

    def write(f):
        with zipfile.ZipFile(f, "w", zipfile.ZIP_DEFLATED) as z:
            for name in names:
                z.write(os.path.join(results_dir, name), name)

    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    workdir_lib.atomic_write(path, write, mode="wb")


def markdown(part: Part, record: dict) -> str:
    """``reproduce_<part>.md``: the header (status, device, command, versions, protocol, the
    paper's source), the results next to the paper's values, the plan and the notes."""
    paper = PAPER.get(part.name) or {"values": {}}
    programs = record["programs"]
    head = [
        f"# {part.title}",
        "",
        f"Status: **{record['status']}**. Suite `{record['suite']}`; device "
        f"{record['device']['kind']} ({record['device']['platform']}); wall time "
        f"{record['wall_time_s']:.0f} s of a {record['budget_s']:.0f} s budget; commit "
        f"`{record['git_commit']}`.",
        "",
        f"Command: `{record['command']}`",
        "",
        "Versions: " + ", ".join(f"{k} {v}" for k, v in record["versions"].items()),
        "",
        f"Protocol: {part.protocol}",
        "",
        f"Paper: {paper.get('source', '-')}.",
        "",
    ]
    if part.fractions is not None:
        cells = {(p["method"], p["majority_fraction"]): p for p in programs}
        header = ["method"] + [f"p = {f}" for f in part.fractions] + ["paper, p = 0.995"]
        rows = []
        for m in part.methods:
            row = [LABELS.get(m, m)]
            for f in part.fractions:
                r = cells.get((m, f))
                row.append("-" if r is None else _pm(r["test_error_pct"], 1.0))
            v = paper["values"].get("0.995", {}).get(m)
            rows.append(row + [f"~{v}" if v is not None else "-"])
        body = [
            "Test error % (final step, mean +- 95% CI over seeds; '-': not run).",
            "",
            common.markdown_table(header, rows),
        ]
    else:
        header = [
            "method",
            "steps",
            "seeds",
            "final test acc %",
            "selected (hyper-val) %",
            "best %",
            "paper %",
            "wall s",
        ]
        rows = []
        for p in programs:
            v, ci = paper["values"].get(p["method"]), paper.get("ci95", {}).get(p["method"])
            rows.append(
                [
                    p["label"],
                    p["num_steps"],
                    len(p["seeds"]),
                    common.fmt(p["final_test_accuracy"]),
                    common.fmt(p["selected_test_accuracy"]),
                    common.fmt(p["best_test_accuracy"]),
                    "-" if v is None else f"{v}" + (f" +- {ci}" if ci else ""),
                    f"{p['wall_time_s']:.0f}",
                ]
            )
        body = [
            "Test accuracy % (mean +- 95% CI over seeds).",
            "",
            common.markdown_table(header, rows),
        ]
    plan = record["plan"]
    plan_md = (
        common.markdown_table(list(plan[0]), [[r[h] for h in plan[0]] for r in plan])
        if plan
        else "(empty)"
    )
    notes = "\n".join(f"- {n}" for n in record["notes"]) or "- none"
    return "\n".join(head + body + ["", "Plan:", "", plan_md, "", "Notes:", "", notes]) + "\n"


def _pm(stats: dict, scale: float) -> str:
    if stats["ci95"] is None:
        return f"{scale * stats['mean']:.2f}"
    return f"{scale * stats['mean']:.2f} +- {scale * stats['ci95']:.2f}"
