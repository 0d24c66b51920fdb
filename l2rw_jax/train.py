"""``train_and_evaluate(config, workdir)``: the training loop of every method, K seeds at once.

One run trains ``config.num_seeds = K`` members; member ``k`` uses seed ``config.seed + k`` for
everything (:mod:`l2rw_jax.members`), so member ``k`` of a K-seed run is the run ``seed = s_k,
num_seeds = 1`` (tested to 1e-6). With ``loop.vmap_seeds`` the K members advance in one
jitted, ``jax.vmap``-ed step; without it the same step is called once per member. The loop
is a table of contents; each part has its module:

    l2rw_jax.config      the config: schema, validation, translation into library arguments
    l2rw_jax.compose     the config wired to the members, the feed and the workdir's config.json
    l2rw_jax.members     seeds, each member's splits, the data-level methods' phases
    l2rw_jax.build       model, step of one member with its accumulators, initial carry
    l2rw_jax.backends    the input backends (device / tfdata) behind one interface
    l2rw_jax.chrono      where the invocation's time went (compilation, loop, eval, checkpoints)
    l2rw_jax.sharding    placement of every batch (seed and step axes whole, batch split)
    l2rw_jax.evaluate    the masked evaluation
    l2rw_jax.workdir     metrics.jsonl, checkpoints, npz and JSON files
    l2rw_jax.results     statistics over members and results.json

Evaluation every ``loop.eval_every`` steps on the test set, on a noisy hyper-validation
hold-out (``data.hyper_val_size`` noisy training examples scored against their observed
labels) and on a clean selection hold-out (``data.selection_size`` clean examples taken out of
the meta set, ``members.hold_out_selection``). The workdir's files (config.json,
data_fingerprint.json, metrics.jsonl, tb/, checkpoints/<step>/ (orbax: carry = (state, acc,
msum) of :mod:`l2rw_jax.build`, meta = evaluation history, seeds, normalisation, elapsed time),
example_weights[_seed<s>].npz, selected/seed<s>.npz, results.json) and their schemas are in
ARCHITECTURE.md "The run's workdir"; results.json's also in :func:`train_and_evaluate`.

Resuming: re-running the same command restores the newest checkpoint (the newest that
restores: a damaged step is skipped with a warning, ``workdir.restore_latest``) and restarts
the input streams at that step (stateless functions of (seed, step)), so on CPU the final
metrics equal those of an uninterrupted run. Multi-host: every process runs this loop on its own
rows; only process 0 writes files (:mod:`l2rw_jax.workdir`).
"""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING

import jax
import numpy as np

from l2rw_jax import backends
from l2rw_jax import build
from l2rw_jax import chrono as chrono_lib
from l2rw_jax import compose
from l2rw_jax import config as config_lib
from l2rw_jax import correction as correction_lib
from l2rw_jax import datasets
from l2rw_jax import evaluate
from l2rw_jax import from_config
from l2rw_jax import members as members_lib
from l2rw_jax import methods
from l2rw_jax import results as results_lib
from l2rw_jax import sharding
from l2rw_jax import workdir as workdir_lib
from l2rw_jax import xla_options

if TYPE_CHECKING:
    import ml_collections

log = logging.getLogger("l2rw_jax.train")

# Divergence: a logged training loss (the mean over the log interval, per member) above
# DIVERGENCE_FACTOR x the member's first logged loss of this invocation (floored at 1, so a
# resumed run whose loss is already small keeps a sane bound) or above DIVERGENCE_LOSS stops
# the run with FloatingPointError, as a non-finite one does. Why these bounds: a diverging run
# jumps by orders of magnitude within a few steps (LeNet at learning rate 0.1: above 1e5),
# while a healthy cross-entropy starts near ln C and, even memorising flipped labels, stays
# within a few tens.
DIVERGENCE_FACTOR = 1e3
DIVERGENCE_LOSS = 1e4


def divergence(
    step: int, loss_K: np.ndarray, first_K: np.ndarray, seeds, learning_rate
) -> str | None:
    """The one-line error of a diverged run, or None: some member's logged ``train_loss``
    exceeds ``min(DIVERGENCE_FACTOR * max(first_K, 1), DIVERGENCE_LOSS)``.

    Args:
      step: the logged step. loss_K, first_K: ``[K]`` the members' logged training losses
        (means over the log interval) now and at the first log of this invocation.
      seeds: ``[K]`` the members' seeds. learning_rate: the config's, named in the message.
    """
    limit_K = np.minimum(DIVERGENCE_FACTOR * np.maximum(first_K, 1.0), DIVERGENCE_LOSS)
    over = np.flatnonzero(np.asarray(loss_K) > limit_K)
    if not over.size:
        return None
    k = int(over[0])
    return (
        f"training diverged at step {step}: train_loss {loss_K[k]:.4g} (seed {seeds[k]}, "
        f"mean since the last log) > {limit_K[k]:.4g} (the bound: {DIVERGENCE_FACTOR:g} x "
        f"the first logged loss, at most {DIVERGENCE_LOSS:g}) with "
        f"optim.learning_rate={learning_rate}; lower optim.learning_rate."
    )


def build_run(
    config: ml_collections.ConfigDict, arrays: datasets.Arrays | None = None
) -> build.Run:
    """Builds every member's splits, the model, optimizer and step from ``arrays`` (the
    source loaded once; default: ``config.data.dataset`` loaded here)."""
    if arrays is None:
        arrays = datasets.load_arrays(config.data.dataset, **from_config.load_options(config.data))
    mds = compose.members(config, arrays)
    config_lib.check_batch_sizes(
        config.data, len(mds[0].splits.train_labels), len(mds[0].splits.clean_labels)
    )
    scheme, options = from_config.weighing(config.method)
    return build.build_run(
        mds,
        model=config.model.name,
        model_kwargs=from_config.model_kwargs(config.model),
        tx=from_config.make_optimizer(config.optim),
        scheme=scheme,
        options=options,
        batch_size=config.data.batch_size,
        clean_batch_size=config.data.clean_batch_size,
        total_steps=from_config.total_steps(config),
        correction=from_config.correction(config),
        correction_steps=from_config.correction_steps(config),
        history_steps=config.num_steps,  # the noisy phase: the steps that weigh examples
    )


def _concat(trees: list):
    """Member groups -> one pytree over all members (numpy, leading seed axis)."""
    if len(trees) == 1:
        return trees[0]
    return jax.tree.map(lambda *xs: np.concatenate(xs), *trees)


def train_and_evaluate(config: ml_collections.ConfigDict, workdir) -> dict:
    """Trains ``config.num_seeds`` models of ``config.method.name``, evaluates them; resumable.

    Args:
      config: a config of :func:`l2rw_jax.config.default_config`'s fields (missing ones take
        the default; unknown ones raise ValueError).
      workdir: the run's directory, local or a URI (``gs://``; created; an existing run there
        is resumed).

    Returns:
      The ``results.json`` dict::

        {"method", "config", "seeds", "num_seeds", "num_steps" (total, finetune included),
         "num_classes", "num_train", "num_clean" (the meta set, after the selection
         hold-out), "num_test", "num_hyperval", "num_selection" (0 without the hold-out),
         "background_class": [K] (the background flip's class per member, else None),
         "final_test_accuracy", "best_test_accuracy", "selected_test_accuracy",
         "final_test_loss", "final_hyperval_accuracy", "final_selection_accuracy": each
            {"per_seed": [K], "mean", "ci95", "ci95_low", "ci95_high"} (ci95 None when K = 1;
            the hyper-validation and selection ones None without their hold-out; "best" peeks
            at the test set; "selected" = test accuracy at the evaluation chosen by
            "selected_by"),
         "selected_by": "selection" (the best accuracy on the clean selection hold-out, with
            data.selection_size), else "hyperval" (the best noisy hyper-validation accuracy),
            else "final" (the last evaluation); the earliest evaluation on ties,
         "selected_step": [K] (the step of that evaluation; with "selection" the model saved
            in selected/seed<s>.npz),
         "best_step": [K] (step of the best test accuracy),
         "per_class_accuracy": {"per_seed": [K][C], "mean": [C]} (final, test set; null for
            a class with no test example, 0/0 being undefined, not 0; "mean" over the members
            whose test split has the class),
         "mean_class_accuracy", "worst_class_accuracy": {"per_seed", "mean", "ci95", ...} of
            each member's mean and lowest per-class accuracy over the classes present in its
            test split (absent ones left out; None if a member has no class),
         "worst_class": [K] (that lowest class; the lower index on ties),
         "all_zero_steps": [K] (steps whose weights were all 0),
         "wall_time_s" (all invocations), "steps_per_s" (training loop of the last invocation,
         input pipeline, logging and checkpoints included, evaluation and compilation not;
         when every call of the invocation compiled, compilation included),
         "completed": true}

      A run stopped by ``loop.stop_after_steps`` returns ``{"completed": False, "step": t,
      "timed_steps", "timing_s"}`` (this invocation's loop timing, as in results.json) and
      writes no results.json.

    Raises:
      FloatingPointError: the training diverged: a logged training metric is not finite, or
        the logged ``train_loss`` of a member exceeds ``DIVERGENCE_FACTOR`` (1e3) x its first
        logged one (floored at 1) or ``DIVERGENCE_LOSS`` (1e4). The one-line message names the
        step, the loss and the learning rate; results.json then holds ``{"method", "config",
        "seeds", "num_seeds", "num_steps", "completed": false, "error": <the message>,
        "step"}`` (the step the loop had reached; the metrics are read one call late).

    metrics.jsonl records: ``{"step", "split": "train", "seed", <means of the step metrics
    since the last log, e.g. train_loss, weighted_loss, w_mean_noisy, all_zero (fraction of
    steps)>, "steps_per_s"}`` and ``{"step", "split": "test"|"hyperval"|"selection", "seed",
    "accuracy", "loss", "per_class_accuracy": [C]}`` (null for a class without examples in the
    split).
    """
    from tqdm.auto import tqdm  # A notebook widget in Jupyter, a console bar elsewhere.

    config = config_lib.validate(config)
    note = from_config.noise_note(config.data)  # Whether a source of the user's own is corrupted.
    if note and workdir_lib.is_primary():
        log.warning(note)
    wd = workdir_lib.path(workdir)
    config.loop.backend = compose.resolve_backend(config.loop.backend, wd)
    backend = backends.get(config.loop.backend)
    backend.require()  # Its packages: now, not after loading the data.
    compose.check_or_write_config(wd, config, write=False)  # Another run's workdir: fail now.
    chrono = chrono_lib.Chrono()  # The invocation starts: its time counts in wall_time_s.
    arrays = datasets.load_arrays(config.data.dataset, **from_config.load_options(config.data))
    # Resuming on data regenerated at the same path (other rows): fail now.
    data_fingerprint = datasets.fingerprint(arrays)
    workdir_lib.check_or_write_fingerprint(wd, data_fingerprint, write=False)
    run = build_run(config, arrays)  # Checks the sizes: may fail, nothing written.
    del arrays  # The members hold their splits.
    wd.mkdir(parents=True, exist_ok=True)
    compose.check_or_write_config(wd, config)
    workdir_lib.check_or_write_fingerprint(wd, data_fingerprint)
    loop, feed = config.loop, compose.feed(config, config.loop.backend)
    members, K = run.members, len(run.members)
    seeds = [md.seed for md in members]

    # Members are trained in groups: one group of K (vmap_seeds) or K groups of one, each
    # group a call of the same jitted, vmapped step. Devices: the batch axis split over a mesh.
    groups = [slice(0, K)] if loop.vmap_seeds else [slice(k, k + 1) for k in range(K)]
    mesh = sharding.data_mesh(jax.devices()[: loop.num_devices or len(jax.devices())])
    eval_fn = xla_options.jit(jax.vmap(evaluate.make_eval_fn(run.apply_fn)))
    eval_sets = backend.eval_batches(members, feed)

    # Restore the newest checkpoint, if any.
    manager = workdir_lib.checkpoint_manager(wd, loop.keep_checkpoints)
    host_carry, start_step, meta = run.carry0, 0, {"history": [], "elapsed_s": 0.0}
    if manager.latest_step() is not None:
        finished = workdir_lib.read_results(wd)
        if (
            manager.latest_step() == run.total_steps
            and finished is not None
            and finished.get("completed", True)
        ):
            manager.close()
            return finished  # Finished before: nothing to do.
        # The newest step that restores (a damaged one is skipped, with a warning).
        try:
            start_step, carry, meta = workdir_lib.restore_latest(manager, host_carry)
        except ValueError:
            # Checkpoints written before the weight trajectory was kept: resume without it
            # (example_weights.npz then has no trajectory, not a partial one).
            host_carry = build.without_history(host_carry)
            start_step, carry, meta = workdir_lib.restore_latest(manager, host_carry)
            log.info("The checkpoints keep no weight trajectory: this run records none.")
        host_carry = tuple(carry)
        log.info("Resuming %s from step %d.", wd, start_step)
    carries = [sharding.replicate(jax.tree.map(lambda x: x[g], host_carry), mesh) for g in groups]
    history: list[dict] = meta["history"]
    # Logs: keep what the checkpoint covers, drop what a killed run wrote after it.
    writer = workdir_lib.MetricsWriter(wd, start_step)

    first_loss: dict = {}  # "K": each member's first logged train_loss of this invocation
    lr = config.optim.learning_rate

    def log_train(step: int, msums: list, n_steps: int, rate: float) -> None:
        msum = _concat(sharding.to_host(msums))
        means = {name: np.asarray(msum[name], np.float64) / n_steps for name in run.metric_names}
        bad = sorted(name for name, v in means.items() if not np.all(np.isfinite(v)))
        if bad:
            raise FloatingPointError(
                f"training diverged at step {step}: non-finite training metrics "
                f"{ {n: means[n].tolist() for n in bad} } with optim.learning_rate={lr}; "
                f"lower optim.learning_rate."
            )
        loss_K = means["train_loss"]
        message = divergence(step, loss_K, first_loss.setdefault("K", loss_K), seeds, lr)
        if message:
            raise FloatingPointError(message)
        writer.write(
            [
                {
                    "step": step,
                    "split": "train",
                    "seed": seeds[k],
                    **{name: float(v[k]) for name, v in means.items()},
                    "steps_per_s": rate,
                }
                for k in range(K)
            ],
            {
                **{f"train/{name}": float(v.mean()) for name, v in means.items()},
                "train/steps_per_s": rate,
            },
            step,
        )

    def evaluate_all(step: int) -> dict:
        out = {}
        for split, batches in eval_sets.items():
            sums = _concat(
                sharding.to_host(
                    [
                        evaluate.evaluate(
                            eval_fn,
                            state,
                            batches,
                            lambda b, g=g: sharding.shard_members(b, mesh, g),
                        )
                        for (state, _, _), g in zip(carries, groups)
                    ]
                )
            )
            s = evaluate.summarize(sums)
            scalars = {
                f"{split}/accuracy": float(s["accuracy"].mean()),
                f"{split}/loss": float(s["loss"].mean()),
            }
            if K > 1:
                scalars.update(
                    {f"{split}/accuracy/seed_{sd}": float(a) for sd, a in zip(seeds, s["accuracy"])}
                )
            per_class = results_lib.undefined_to_none(s["per_class_accuracy"])  # null: absent
            writer.write(
                [
                    {
                        "step": step,
                        "split": split,
                        "seed": seeds[k],
                        "accuracy": float(s["accuracy"][k]),
                        "loss": float(s["loss"][k]),
                        "per_class_accuracy": per_class[k],
                    }
                    for k in range(K)
                ],
                scalars,
                step,
            )
            out[split] = {
                "accuracy": s["accuracy"].tolist(),
                "loss": s["loss"].tolist(),
                "per_class_accuracy": per_class,
            }
        return out

    def export_selected() -> None:  # The model just evaluated, of each member it improves.
        improved = results_lib.selection_improved(history)
        if improved.size:
            params, model_state = _concat(
                sharding.to_host([(c[0].params, c[0].model_state) for c in carries])
            )
        for k in improved:
            workdir_lib.write_selected(
                wd,
                seeds[k],
                jax.tree.map(lambda x: x[k], params),
                jax.tree.map(lambda x: x[k], model_state),
                step=history[-1]["step"],
                selection_accuracy=history[-1]["selection"]["accuracy"][k],
            )

    stop_at = min(run.total_steps, loop.stop_after_steps or run.total_steps)
    bar = tqdm(
        total=run.total_steps,
        initial=start_step,
        unit="step",
        dynamic_ncols=True,
        disable=not (loop.progress_bar and workdir_lib.is_primary()),  # one bar per job
        desc=f"{config.method.name} x{K}",
        mininterval=1.0,
    )
    # Timing (l2rw_jax.chrono): a call of a (phase, length) not run before in this invocation
    # compiles (first_step_s); evaluations and checkpoints are timed apart, so steps_per_s is
    # the training loop's own rate (pipeline and logging included).
    pending: list[tuple] = []  # [(step, msums, steps in the interval, steps/s)]: read late.
    step, last_log_step = start_step, start_step

    def flush_pending():
        for args in pending:
            log_train(*args)
        pending.clear()

    # The loop advances by calls (backends.Call): advance(carries) -> (carries after its
    # num_steps steps, the metric sums after each step per group), whichever backend runs.
    calls, close_calls = backend.train_calls(
        lambda accumulate: build.make_loop_step(run.train_step, accumulate, run.history_steps),
        members,
        groups,
        mesh,
        feed,
        start_step,
        stop_at,
        lambda: build.use_scan(run, mesh, feed.batch_size, feed.clean_batch_size),
    )
    try:
        chrono.mark()
        for call in calls:
            if step >= stop_at:
                break
            carries, msums_S = call.advance(carries)
            first, step = step, step + call.num_steps
            flush_pending()  # The previous call's logs: those steps are done by now.
            for t in range(first + 1, step + 1):
                if t % loop.log_every and t != run.total_steps:
                    continue
                # The sums after step t (the backend restarted them after it).
                msums = backends.step_sums(msums_S, t - first - 1)
                pending.append((t, msums, t - last_log_step, chrono.rate()))
                last_log_step = t
            is_eval = step % loop.eval_every == 0 or step == run.total_steps
            is_ckpt = step % loop.checkpoint_every == 0 or step == run.total_steps
            if is_eval or is_ckpt or step >= stop_at:
                # They need the state (and a stopped run's timing its last steps); waiting
                # here bills the queued steps to the loop's time.
                jax.block_until_ready(carries)
            chrono.train_call((call.phase, call.num_steps), call.num_steps)
            if is_eval:
                flush_pending()
                history.append({"step": step, **evaluate_all(step)})
                export_selected()
                bar.set_postfix(
                    test_acc=f"{np.mean(history[-1]['test']['accuracy']):.4f}", refresh=False
                )  # shown by the update below: this evaluation's
                chrono.lap("eval_s")
            if is_ckpt:
                flush_pending()
                writer.flush()
                # Every process saves (orbax coordinates them; process 0 writes the numpy
                # carry): the carry is gathered on each, a collective.
                workdir_lib.save_checkpoint(
                    manager,
                    step,
                    _concat(sharding.to_host(carries)),
                    {
                        "history": history,
                        "seeds": seeds,
                        "num_classes": run.num_classes,
                        "mean": [md.mean.tolist() for md in members],
                        "std": [md.std.tolist() for md in members],
                        "elapsed_s": meta["elapsed_s"] + chrono.elapsed_s(),
                    },
                )
                chrono.lap("checkpoint_s")
            bar.update(call.num_steps)  # After the evaluation: its postfix is the last shown.
        flush_pending()
    except FloatingPointError as e:
        # A diverged run: results.json says so (and why); re-running the command resumes
        # from the last checkpoint, saved only after its logged losses were checked.
        workdir_lib.write_json(
            wd / "results.json",
            {
                "method": config.method.name,
                "config": from_config.as_json(config),
                "seeds": seeds,
                "num_seeds": K,
                "num_steps": run.total_steps,
                "completed": False,
                "error": str(e),
                "step": step,
            },
        )
        raise
    finally:
        close_calls()
        bar.close()
        manager.wait_until_finished()
        manager.close()
        writer.close()

    if step < run.total_steps:
        log.info("Stopped at step %d of %d (stop_after_steps).", step, run.total_steps)
        return {
            "completed": False,
            "step": step,
            "timed_steps": chrono.timed_steps,
            "timing_s": {k: float(v) for k, v in chrono.timing.items()},
        }

    acc_host = _concat(sharding.to_host([c[1] for c in carries]))
    method_state = correction_lib.scheme_state(
        _concat(sharding.to_host([c[0].method_state for c in carries]))
    )
    for k, md in enumerate(members):
        weights = members_lib.example_weights(
            md,
            acc_host["w_sum"][k],
            acc_host["count"][k],
            w_sq_sum_N=acc_host["w_sq_sum"][k],
            nonzero_N=acc_host["nonzero"][k],
        )
        if "w_bin_sum" in acc_host:
            weights.update(
                members_lib.weight_history_columns(
                    acc_host["w_bin_sum"][k], acc_host["bin_count"][k], run.history_steps
                )
            )
        if "g_sum" in acc_host:
            weights["mean_meta_grad"] = (
                acc_host["g_sum"][k] / np.maximum(acc_host["count"][k], 1)
            ).astype(np.float32)
        if isinstance(method_state, methods.L2RWState):
            # l2rw's per-example meta-gradient memory: the variant's own score (low = clean).
            weights["meta_grad_memory"] = method_state.memory_N[k].astype(np.float32)
        if k == 0:
            workdir_lib.write_npz(wd / "example_weights.npz", **weights)
        if K > 1:
            workdir_lib.write_npz(wd / f"example_weights_seed{md.seed}.npz", **weights)
    # Steps/s of the loop including checkpoint writes (evaluation is separate work); a short
    # run whose every call compiled: its rate, compilation included.
    results = results_lib.summary(
        method=config.method.name,
        config=from_config.as_json(config),
        members=members,
        history=history,
        num_steps=run.total_steps,
        all_zero_steps_K=acc_host["all_zero_steps"],
        wall_time=meta["elapsed_s"] + chrono.elapsed_s(),
        steps_per_s=chrono.steps_per_s(step - start_step),
        timing=chrono.timing,
    )
    workdir_lib.write_json(wd / "results.json", results)
    return results
