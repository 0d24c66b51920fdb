"""Where the weight goes, step by step: the per-class weight mass of a protocol run.

    L2RW_DEV_DATA=../shared/data python -m experiments.collapse_probe \\
        [--setting=cifar_mlp_uniform40] [--methods=l2rw,l2rw+class_balanced] \\
        [--num_steps=2000] [--eval_every=50] [--windows=200,1000] [--zoom=200,300] \\
        [--out=benchmarks/results/collapse/weight_mass_cifar_mlp_uniform40.json] [--notrain]

One seed (the protocol's first: same split, noise draw, data order and initialisation) of each
method of experiments/configs/protocol.py (the paper's rule or an ablation of it: a method whose
weights come from the meta-gradient), for ``--num_steps`` steps (the protocol's ``num_steps``
override: the learning-rate boundaries scale), trained by the library's device backend with the
protocol's train step; at every step, from the training batch's weights ``w_B`` and its
observed labels ``y_B`` (:func:`class_weight_stats`):

  mass_C      share of the batch's weight on each observed class, ``sum_{y_i=c} w_i / sum w``
  ess_C       effective sample size within each class, ``(sum_{y_i=c} w)^2 / sum_{y_i=c} w^2``
  ess         the batch's, ``(sum w)^2 / sum w^2``
  raw_mass_C  the same share of ``max(-g_B, 0)`` (g the meta-gradient): the mass the paper's
              map and batch normalisation give at this model; equal to mass_C under the paper's
              rule
  noisy_mass  share of the weight on flipped examples
  count_C     the batch's examples per observed class; clean_count_C the clean batch's
  pred_C      the model's predicted classes on the clean batch (before the step's update)
  train_loss, val_loss  the step's mean training loss and the clean batch's loss (the metrics')

and every ``--eval_every`` steps the test accuracy and the predicted-class histogram on the test
set. Summary statistics (:func:`summarize`, over all steps and over the windows ``--windows``
cuts): the top class's mass share, how long one class stays on top, the per-class ESS, and how
the mass and the predictions follow each other (lagged correlation of ``mass_C(t)`` with the
predicted share ``pred_C(t + k)``, pooled over classes). Written atomically: ``--out`` (JSON:
the summaries, the evaluations, the command and ``per_step_file``, the name of the per-step
record beside it), ``<out>_steps.npz`` (:func:`write_steps`: the per-step record rounded to 4
digits, keys ``<method>/<field>``) and ``<out>.png`` (the figure; ``--zoom`` adds columns over a
few steps), ``<out>`` being ``--out`` without ``.json``. ``--notrain`` recomputes the summaries
and the figure from the stored steps; the summaries are always computed from the rounded steps,
so both give the same numbers.
"""

from __future__ import annotations

import json
import os
import re
import sys
import time
from types import SimpleNamespace

import jax
import jax.numpy as jnp
import numpy as np
from absl import flags

from experiments import common
from experiments import plots
from experiments import provenance as provenance_lib
from experiments.configs import protocol as protocol_config
from l2rw_jax import backends
from l2rw_jax import build
from l2rw_jax import compose
from l2rw_jax import sharding
from l2rw_jax import train
from l2rw_jax import workdir as workdir_lib

LAGS = tuple(range(-20, 21))
FIGURE_DPI = 75  # 1500 x 825 pixels: readable, about 220 KB


def define_flags() -> SimpleNamespace:
    """The command's flags, defined only when it runs as a program (tests import the module)."""
    return SimpleNamespace(
        setting=flags.DEFINE_string(
            "setting", "cifar_mlp_uniform40", f"Of {list(protocol_config.SETTINGS)}."
        ),
        methods=flags.DEFINE_list(
            "methods", ["l2rw", "l2rw+class_balanced"], "Protocol methods to probe."
        ),
        num_steps=flags.DEFINE_integer("num_steps", 2000, "Steps per run.", lower_bound=1),
        eval_every=flags.DEFINE_integer(
            "eval_every", 50, "Steps between test-set evaluations.", lower_bound=1
        ),
        windows=flags.DEFINE_list(
            "windows", ["200", "1000"], "Step boundaries of the windows summarised apart."
        ),
        zoom=flags.DEFINE_list(
            "zoom", ["200", "300"], "Steps a,b of the figure's zoomed columns (empty: none)."
        ),
        train=flags.DEFINE_bool(
            "train",
            True,
            "Train (--notrain: only re-summarise and re-plot the JSON at --out and its steps).",
        ),
        out=flags.DEFINE_string(
            "out",
            "benchmarks/results/collapse/weight_mass_cifar_mlp_uniform40.json",
            "The JSON written (the steps: <out>_steps.npz, the figure: <out>.png).",
        ),
    )


def class_weight_stats(w_B: jax.Array, labels_B: jax.Array, num_classes: int) -> dict:
    """Per observed class: the weight share, the effective sample size, the count.

    Args:
      w_B: ``[B]`` weights ``>= 0``. labels_B: ``[B]`` int observed labels in ``[0, C)``.
      num_classes: ``C``.

    Returns:
      ``{"mass_C": sum_{y_i=c} w_i / sum_i w_i (0 when sum w = 0), "ess_C": (sum_{y_i=c}
      w_i)^2 / sum_{y_i=c} w_i^2 (0 for a class without weight), "ess": (sum w)^2 / sum w^2
      (0 when sum w = 0), "count_C": #{i: y_i = c}}`` (float32; jittable).
    """
    onehot_BxC = jax.nn.one_hot(labels_B, num_classes, dtype=jnp.float32)
    w_B = w_B.astype(jnp.float32)
    sum_C, sq_C = w_B @ onehot_BxC, (w_B * w_B) @ onehot_BxC
    total, total_sq = jnp.sum(sum_C), jnp.sum(sq_C)
    return {
        "mass_C": sum_C / jnp.where(total > 0, total, 1.0),
        "ess_C": sum_C**2 / jnp.where(sq_C > 0, sq_C, 1.0),
        "ess": total**2 / jnp.where(total_sq > 0, total_sq, 1.0),
        "count_C": jnp.sum(onehot_BxC, axis=0),
    }


def make_probe_step(train_step, apply_fn, num_classes: int):
    """``build.make_loop_step``'s signature; the carry's ``msum`` becomes this step's record
    (the per-example accumulators are left alone)."""

    def member_step(state, acc, msum, batch, val_batch):
        del msum
        logits_MxC, _ = apply_fn(state.params, state.model_state, val_batch["image"], False)
        state, metrics = train_step(state, batch, val_batch)
        labels_B = batch["label"]
        record = class_weight_stats(metrics["w_B"], labels_B, num_classes)
        raw = class_weight_stats(jnp.maximum(-metrics["g_B"], 0.0), labels_B, num_classes)
        w_B = metrics["w_B"].astype(jnp.float32)
        record.update(
            raw_mass_C=raw["mass_C"],
            noisy_mass=jnp.sum(w_B * batch["is_noisy"]) / jnp.maximum(jnp.sum(w_B), 1e-30),
            clean_count_C=jnp.sum(jax.nn.one_hot(val_batch["label"], num_classes), axis=0),
            pred_C=jnp.sum(jax.nn.one_hot(jnp.argmax(logits_MxC, -1), num_classes), axis=0),
            train_loss=metrics["train_loss"],
            val_loss=metrics["val_loss"],
        )
        return state, acc, record

    return member_step


def _runs(x_T: np.ndarray) -> np.ndarray:
    """Lengths of the maximal runs of equal consecutive values."""
    edges = np.flatnonzero(np.diff(x_T) != 0)
    return np.diff(np.concatenate([[-1], edges, [len(x_T) - 1]]))


def lagged_correlation(a_TxC: np.ndarray, b_TxC: np.ndarray, lag: int) -> float:
    """Pearson correlation of ``a[t, c]`` with ``b[t + lag, c]`` over every (t, c) where both
    exist, each class's series centred first (so it measures co-movement in time, not which
    classes are large on average); NaN when fewer than 2 steps overlap."""
    t = len(a_TxC)
    if t - abs(lag) < 2:
        return float("nan")
    a, b = (a_TxC[: t - lag], b_TxC[lag:]) if lag >= 0 else (a_TxC[-lag:], b_TxC[: t + lag])
    a, b = a - a.mean(0), b - b.mean(0)
    den = np.sqrt(np.sum(a * a) * np.sum(b * b))
    return float(np.sum(a * b) / den) if den > 0 else float("nan")


def _finite(x: float) -> float | None:
    """``x`` rounded to 4 digits, None (JSON null) when it is NaN."""
    return round(x, 4) if np.isfinite(x) else None


def summarize(rec: dict, start: int = 0, stop: int | None = None) -> dict:
    """Statistics over the steps ``[start, stop)`` of one run's per-step record (numpy arrays
    as :func:`make_probe_step` records them, leading axis the step; step ``t`` is the model
    before update ``t + 1``).

    ``top``: the class with the most weight mass at a step; ``pred``: the class most of the
    clean batch is predicted as. A *switch* is a step whose ``pred`` differs from the step
    before's; ``new_pred_class_raw_mass_rank`` ranks the new class by its mean ``raw_mass_C``
    over the 10 steps before the switch (0 = the most; chance: ``top`` 1/C, ``top3`` 3/C).
    Correlations: :func:`lagged_correlation` over (step, class).
    """
    r = {k: np.asarray(v, np.float64)[start:stop] for k, v in rec.items()}
    mass, raw, t = r["mass_C"], r["raw_mass_C"], len(r["ess"])
    share = lambda n: n / np.maximum(n.sum(1, keepdims=True), 1)
    pred, count, clean = share(r["pred_C"]), share(r["count_C"]), share(r["clean_count_C"])
    top, weighted = mass.max(1), mass.sum(1) > 0
    top_class = np.where(weighted, mass.argmax(1), -1)
    pred_class = pred.argmax(1)
    ess_C, has_w = r["ess_C"], mass > 0
    q = lambda x: [round(float(v), 4) for v in np.quantile(x, (0.1, 0.5, 0.9))]
    rnd = lambda x: round(float(x), 4)
    corr = {k: lagged_correlation(mass, pred, k) for k in LAGS}
    corr = {k: v for k, v in corr.items() if np.isfinite(v)}
    switches = np.flatnonzero(np.diff(pred_class) != 0) + 1
    ranks = np.array(
        [
            int(np.sum(raw[s - 10 : s].mean(0) > raw[s - 10 : s, c].mean()))
            for s, c in zip(switches, pred_class[switches])
            if s >= 10
        ]
    )
    collapsed = np.flatnonzero(pred.max(1) > 0.9)
    runs_top, runs_pred = _runs(top_class), _runs(pred_class)
    return {
        "steps": [start, start + t],
        "top_mass_share_q10_q50_q90": q(top),
        "frac_steps_top_mass_over": {str(v): rnd(np.mean(top > v)) for v in (0.3, 0.5, 0.8, 0.95)},
        "classes_with_weight_mean": rnd(has_w.sum(1).mean()),
        "classes_in_batch_mean": rnd((count > 0).sum(1).mean()),
        "top_class_run_length": {
            "median": float(np.median(runs_top)),
            "mean": rnd(np.mean(runs_top)),
            "max": int(runs_top.max()),
        },
        "std_over_steps_mean_over_classes": {
            "mass": rnd(mass.std(0).mean()),
            "raw_mass": rnd(raw.std(0).mean()),
            "batch_count_share": rnd(count.std(0).mean()),
            "clean_batch_share": rnd(clean.std(0).mean()),
        },
        "first_step_pred_top_share_over_0.9": int(start + collapsed[0]) if collapsed.size else None,
        "top_pred_share_q10_q50_q90": q(pred.max(1)),
        "pred_class_run_length": {
            "median": float(np.median(runs_pred)),
            "mean": rnd(np.mean(runs_pred)),
            "max": int(runs_pred.max()),
        },
        "pred_switches": int(len(switches)),
        "new_pred_class_raw_mass_rank": {
            "switches": int(len(ranks)),
            "top": rnd(np.mean(ranks == 0)) if ranks.size else None,
            "top3": rnd(np.mean(ranks <= 2)) if ranks.size else None,
        },
        "pred_class_equals_top_mass_class": rnd(np.mean(pred_class == top_class)),
        "mass_on_pred_class_mean": rnd(mass[np.arange(t), pred_class].mean()),
        "batch_count_share_of_pred_class_mean": rnd(count[np.arange(t), pred_class].mean()),
        "ess_q10_q50_q90": q(r["ess"]),
        "ess_within_top_class_q10_q50_q90": q(
            ess_C[np.arange(t), np.maximum(top_class, 0)][weighted]
        ),
        "ess_within_class_mean_over_weighted": rnd(ess_C[has_w].mean()),
        "count_within_class_mean_over_weighted": rnd(r["count_C"][has_w].mean()),
        "noisy_mass_mean": rnd(np.nanmean(r["noisy_mass"])),
        "corr_mass_vs_pred_share_by_lag": {str(k): round(v, 4) for k, v in corr.items()},
        "lag_of_max_corr": max(corr, key=lambda k: corr[k]) if corr else None,
        "lag_of_min_corr": min(corr, key=lambda k: corr[k]) if corr else None,
        "corr_mass_vs_batch_count_share": _finite(lagged_correlation(mass, count, 0)),
        "corr_mass_vs_clean_batch_share": _finite(lagged_correlation(mass, clean, 0)),
        "corr_raw_mass_vs_clean_batch_share": _finite(lagged_correlation(raw, clean, 0)),
        "corr_raw_mass_vs_pred_share_lag0": _finite(lagged_correlation(raw, pred, 0)),
    }


def probe(setting: str, method: str, num_steps: int, eval_every: int) -> dict:
    """Trains the protocol's first seed of (setting, method) for ``num_steps`` steps and returns
    ``{"record": {name: [T, ...] numpy}, "eval": {"step", "accuracy", "pred_hist"}, "wall_s"}``."""
    config = protocol_config.setting_config(setting, method, num_steps=num_steps, num_seeds=1)
    config.loop.eval_every = eval_every  # the device backend's calls end there
    config.loop.log_every = 1
    config.loop.checkpoint_every = num_steps
    start = time.time()
    run = train.build_run(config)
    feed = compose.feed(config, "device")
    backend = backends.get("device")
    mesh = sharding.data_mesh(jax.devices()[:1])
    member_step = make_probe_step(run.train_step, run.apply_fn, run.num_classes)
    state0, acc0, _ = run.carry0
    one = lambda tree: jax.tree.map(lambda x: x[0], tree)
    shapes = jax.eval_shape(
        member_step,
        one(state0),
        one(acc0),
        None,
        *build.batch_shapes(
            feed.batch_size, feed.clean_batch_size, run.members[0].splits.train_x.shape[1:]
        ),
    )[2]
    record0 = jax.tree.map(lambda s: np.zeros((1,) + s.shape, s.dtype), shapes)
    carries = [sharding.replicate((state0, acc0, record0), mesh)]
    test = backend.eval_batches(run.members, feed)["test"]

    @jax.jit
    def test_counts(state, image, label, mask):
        def member(params, model_state, x, y, m):
            pred = jnp.argmax(run.apply_fn(params, model_state, x, False)[0], -1)
            hist = jnp.sum(jax.nn.one_hot(pred, run.num_classes) * m[:, None], axis=0)
            return hist, jnp.sum((pred == y) * m)

        return jax.vmap(member)(state.params, state.model_state, image, label, mask)

    def evaluate(state):
        hist, correct = 0.0, 0.0
        for b in test:
            h, c = test_counts(state, b["image"], b["label"], b["mask"])
            hist, correct = hist + np.asarray(h[0]), correct + float(c[0])
        return hist, correct / hist.sum()

    calls, close = backend.train_calls(
        lambda accumulate: member_step,
        run.members,
        [slice(0, 1)],
        mesh,
        feed,
        0,
        num_steps,
        lambda: build.use_scan(run, mesh, feed.batch_size, feed.clean_batch_size),
    )
    rows, evals, step = [], [], 0
    hist, acc = evaluate(carries[0][0])
    evals.append((0, acc, hist))
    try:
        for call in calls:
            carries, msums_S = call.advance(carries)
            rows.append(jax.tree.map(lambda x: np.asarray(x)[:, 0], sharding.to_host(msums_S[0])))
            step += call.num_steps
            if step % eval_every == 0 or step == num_steps:
                hist, acc = evaluate(carries[0][0])
                evals.append((step, acc, hist))
                print(f"{method} step {step}: test acc {acc:.4f}", flush=True)
    finally:
        close()
    record = jax.tree.map(lambda *xs: np.concatenate(xs), *rows)
    return {
        "record": record,
        "eval": {
            "step": [s for s, _, _ in evals],
            "accuracy": [round(float(a), 4) for _, a, _ in evals],
            "pred_hist": [h.astype(int).tolist() for _, _, h in evals],
        },
        "wall_s": round(time.time() - start, 1),
    }


COUNT_FIELDS = ("count_C", "clean_count_C", "pred_C")


def _rounded(record: dict) -> dict:
    """The per-step record as stored: counts as int64, the rest float64 rounded to 4 digits."""
    return {
        k: v.astype(np.int64) if k in COUNT_FIELDS else np.round(v.astype(np.float64), 4)
        for k, v in record.items()
    }


def steps_path(out: str) -> str:
    """The per-step file written beside the JSON ``out``: ``<out without .json>_steps.npz``."""
    return os.path.splitext(out)[0] + "_steps.npz"


def write_steps(path: str, per_step: dict) -> None:
    """Writes ``{method: {field: [T, ...] array}}`` (as :func:`_rounded` gives) atomically to
    ``path`` with ``np.savez_compressed``, keys ``<method>/<field>``: counts (``>= 0``) as the
    smallest unsigned integer type that holds them, every other field as float32 where that
    keeps its 4 rounded digits (below 1024 in magnitude, which :func:`read_steps` recovers
    exactly), else float64."""
    arrays = {}
    for m, rec in per_step.items():
        for k, v in rec.items():
            v = np.asarray(v)
            if k in COUNT_FIELDS:
                arrays[f"{m}/{k}"] = v.astype(np.min_scalar_type(int(v.max(initial=0))))
            else:
                v32 = v.astype(np.float32)
                exact = np.array_equal(np.round(v32.astype(np.float64), 4), v, equal_nan=True)
                arrays[f"{m}/{k}"] = v32 if exact else v.astype(np.float64)
    workdir_lib.atomic_write(path, lambda fh: np.savez_compressed(fh, **arrays), mode="wb")


def read_steps(path: str) -> dict:
    """The ``{method: {field: array}}`` :func:`write_steps` wrote: counts int64, the rest
    float64 rounded to 4 digits (the values that were written)."""
    per_step = {}
    with np.load(path) as npz:
        for key in npz.files:
            m, k = key.rsplit("/", 1)
            v = npz[key]
            per_step.setdefault(m, {})[k] = (
                v.astype(np.int64) if k in COUNT_FIELDS else np.round(v.astype(np.float64), 4)
            )
    return per_step


def to_json(out: dict) -> str:
    """``out`` as indented JSON, each list of numbers on one line (else one number a line)."""
    text = json.dumps(out, indent=2, sort_keys=True)
    # A list without brackets, braces or quotes inside holds only numbers (or null, true,
    # false); JSON strings hold no raw newline, so a match inside one is left as it is.
    text = re.sub(r"\[[^\[\]{}\"]*\]", lambda m: re.sub(r"\n\s*", "", m.group()), text)
    return text + "\n"


def plot(results: dict, path: str, title: str, zoom: tuple[int, int] | None = None) -> None:
    """Per method (columns; with ``zoom = (a, b)`` each method again over the steps [a, b)):
    stacked per-class weight mass, the mass the paper's batch normalisation gives the same
    meta-gradient, the predicted-class shares on the clean batch, ESS and test accuracy. Step
    ``t`` is the model after ``t`` updates (the record's row ``t``, the evaluation at ``t``)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    columns = [(m, None) for m in results] + ([(m, zoom) for m in results] if zoom else [])
    fig, axes = plt.subplots(4, len(columns), figsize=(5 * len(columns), 11), squeeze=False)
    colors = plt.get_cmap("tab10").colors
    for j, (name, window) in enumerate(columns):
        rec, ev = results[name]["record"], results[name]["eval"]
        a, b = window or (0, len(rec["ess"]))
        t = np.arange(a, min(b, len(rec["ess"])))
        pred = rec["pred_C"] / np.maximum(rec["pred_C"].sum(1, keepdims=True), 1)
        for i, (arr, label) in enumerate(
            (
                (rec["mass_C"], "weight mass per observed class"),
                (rec["raw_mass_C"], "mass of max(-g, 0) / its batch sum"),
                (pred, "predicted-class share, clean batch"),
            )
        ):
            # Not antialiased: solid bands of 10 colours, which halves the PNG.
            axes[i, j].stackplot(
                t, arr[t].T, colors=colors, linewidth=0, step="post", antialiased=False
            )
            axes[i, j].set_ylim(0, 1)
            axes[i, j].set_xlim(t[0], t[-1])
            axes[i, j].set_ylabel(label, fontsize=8)
        axes[0, j].set_title(name + (f", steps {a}-{b}" if window else ""), fontsize=10)
        ax = axes[3, j]
        ax.plot(t, rec["ess"][t], lw=0.5, color="gray", label="ESS of the batch (of 100)")
        ax.set_ylabel("ESS", fontsize=8)
        ax.set_xlim(t[0], t[-1])
        ax2 = ax.twinx()
        steps = np.asarray(ev["step"])
        keep = (steps >= t[0]) & (steps <= t[-1])
        ax2.plot(steps[keep], 100 * np.asarray(ev["accuracy"])[keep], "k.-", label="test acc %")
        ax2.set_ylabel("test accuracy %", fontsize=8)
        ax.set_xlabel("step")
        ax.legend(loc="upper left", fontsize=7)
        ax2.legend(loc="upper right", fontsize=7)
    handles = [plt.Rectangle((0, 0), 1, 1, color=colors[c]) for c in range(10)]
    fig.legend(handles, [f"class {c}" for c in range(10)], loc="upper center", ncol=10, fontsize=8)
    fig.suptitle(title, y=0.97, fontsize=10)
    fig.tight_layout(rect=(0, 0, 1, 0.95))
    plots.save(fig, path, dpi=FIGURE_DPI)


def summaries(per_step: dict, windows: list[int]) -> dict:
    """``{"all": summarize(all steps), "steps_<a>_<b>": summarize([a, b)) ...}`` over the
    windows the boundaries ``windows`` cut (those inside the run)."""
    t = len(per_step["ess"])
    cuts = [0] + [w for w in windows if 0 < w < t] + [t]
    out = {"all": summarize(per_step)}
    if len(cuts) > 2:
        for a, b in zip(cuts[:-1], cuts[1:]):
            out[f"steps_{a}_{b}"] = summarize(per_step, a, b)
    return out


def main(argv, f: SimpleNamespace) -> None:
    del argv
    windows = [int(w) for w in f.windows.value]
    if f.zoom.value and (len(f.zoom.value) != 2 or int(f.zoom.value[0]) >= int(f.zoom.value[1])):
        raise ValueError(f"--zoom must be two steps a < b, got {f.zoom.value}.")
    png = os.path.splitext(f.out.value)[0] + ".png"
    if not f.train.value:
        out = json.loads(open(f.out.value).read())
        out["summarized_by"] = provenance_lib.command("experiments.collapse_probe", sys.argv[1:])
        per_step = read_steps(os.path.join(os.path.dirname(f.out.value), out["per_step_file"]))
        kept = ("eval", "wall_s")  # the summaries are recomputed below
        out["methods"] = {m: {k: e[k] for k in kept} for m, e in out["methods"].items()}
    else:
        for m in f.methods.value:  # a bad name or method fails before any run
            if protocol_config.setting_config(f.setting.value, m).method.name != "l2rw":
                raise ValueError(
                    f"--methods: {m!r} has no meta-gradient weights; allowed: l2rw, "
                    f"recommended, glc, or an ablation of l2rw / recommended."
                )
        out = {"setting": f.setting.value, "num_steps": f.num_steps.value, "methods": {}}
        out.update(provenance_lib.record("experiments.collapse_probe", sys.argv[1:]))
        per_step = {}
        for m in f.methods.value:
            r = probe(f.setting.value, m, f.num_steps.value, f.eval_every.value)
            out["methods"][m] = {"eval": r["eval"], "wall_s": r["wall_s"]}
            per_step[m] = _rounded(r["record"])
    out["per_step_file"] = os.path.basename(steps_path(f.out.value))
    for m, entry in out["methods"].items():
        # From the stored (rounded) steps, so that --notrain gives the same numbers.
        entry["summary"] = summaries(per_step[m], windows)
        print(m, json.dumps(entry["summary"]["all"]), flush=True)
    os.makedirs(os.path.dirname(f.out.value) or ".", exist_ok=True)
    write_steps(steps_path(f.out.value), per_step)
    workdir_lib.atomic_write(f.out.value, lambda fh: fh.write(to_json(out)))
    records = {
        m: {
            "record": {k: np.asarray(v, np.float64) for k, v in per_step[m].items()},
            "eval": e["eval"],
        }
        for m, e in out["methods"].items()
    }
    zoom = tuple(int(z) for z in f.zoom.value) if f.zoom.value else None
    plot(records, png, f"{out['setting']}, seed 0, {out['num_steps']} steps", zoom)
    print(f"wrote {f.out.value}, {steps_path(f.out.value)} and {png}")


if __name__ == "__main__":
    _flags = define_flags()
    common.run_main(lambda argv: main(argv, _flags))
