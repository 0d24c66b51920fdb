"""One part of the reproduction suite (:func:`run_part`): probe, plan, run and write it, within
the budget (:class:`BudgetSpent`, raised by a SIGALRM when a probe outlasts it). The driver,
the planning rules and the files are described in :mod:`experiments.reproduce`.
"""

from __future__ import annotations

import contextlib
import os
import signal
import threading
from typing import Callable, NamedTuple

from experiments import common
from experiments import planner
from experiments import reproduce_data
from experiments import reproduce_files
from experiments.configs.reproduce import PAPER
from experiments.configs.reproduce import Part
from experiments.configs.reproduce import program_config
from experiments.configs.reproduce import scaled_config
from experiments.reproduce_flags import Args
import l2rw_jax
from l2rw_jax import config as config_lib


class Ctx(NamedTuple):
    suite: str
    args: Args
    clock: Callable[[], float]
    deadline: float
    header: dict  # provenance.record(...) and budget_s
    say: Callable[[str], None]
    # progress(part, probes, plan_rows): the running part's probes and plan so far, written
    # into reproduce_run.json and the bundle at once (an interrupted run keeps them).
    progress: Callable[[str, dict, list | None], None] = lambda part, probes, plan: None

    def left(self) -> float:
        return self.deadline - self.clock()


class BudgetSpent(BaseException):
    """The budget ran out while a probe was running (raised by :func:`_budget_alarm`). A
    BaseException, as KeyboardInterrupt is: the alarm can ring inside the library's own
    ``except Exception`` blocks (a checkpoint restore tries every step), which must not take
    it for one of their errors."""


@contextlib.contextmanager
def _budget_alarm(seconds: float):
    """Raises :class:`BudgetSpent` in the block once ``seconds`` have passed (SIGALRM; the
    jitted calls return to Python every few steps, so the block stops within a call). Only
    in the main thread (signals go there); elsewhere the block runs unbounded."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    if seconds <= 0:
        raise BudgetSpent()

    def ring(signum, frame):
        raise BudgetSpent()

    previous = signal.signal(signal.SIGALRM, ring)
    signal.setitimer(signal.ITIMER_REAL, seconds)
    try:
        yield
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, previous)


def _probe(ctx: Ctx, config, workdir: str, steps: int) -> tuple[planner.Cost, float]:
    """Runs ``steps`` steps of ``config`` in ``workdir`` and times them (compile included):
    ``(cost, wall seconds)``. Bounded by the budget: :class:`BudgetSpent` when it runs out
    first (or before it starts)."""
    c = config_lib.validate(config)
    c.loop.stop_after_steps = steps
    t0 = ctx.clock()
    with _budget_alarm(ctx.left()):
        out = l2rw_jax.train_and_evaluate(c, workdir)
    wall = ctx.clock() - t0
    # The loop's own time per step, from the calls that did not compile.
    cost = planner.probe_cost(
        wall, steps, out["timing_s"]["train_loop_s"], out.get("timed_steps", 0)
    )
    return cost, wall


def _run_program(ctx: Ctx, config, workdir: str, method: str, fraction) -> dict:
    t0 = ctx.clock()
    results = l2rw_jax.train_and_evaluate(config, workdir)
    return reproduce_files.program_record(method, fraction, results, workdir, ctx.clock() - t0)


def run_part(ctx: Ctx, part: Part, present: dict | None) -> tuple[str, list[str]]:
    """Probes, plans, runs and writes one part; returns (status, notes)."""
    t_part = ctx.clock()
    notes: list[str] = []
    programs = list(present["programs"]) if present else []
    done = {(p["method"], p["majority_fraction"]) for p in programs}
    workdir = os.path.join(ctx.args.workdir, part.name)
    base = part.base(reproduce_data.data_path(part.data, ctx.args.data_dir, ctx.args.workdir))
    if present:
        notes.append(f"continued: {len(programs)} programs from an earlier run kept.")

    probes: dict = {}  # method -> its probe: steps, wall_s, fixed_s, step_s (or cut_after_s)

    def write(plan_rows, status):
        _write_part(ctx, part, programs, plan_rows, status, notes, ctx.clock() - t_part, probes)

    def probe(m, config, probe_dir, label) -> planner.Cost | None:
        """The probe of ``m``, recorded (and written at once); None when the budget cut it."""
        t0 = ctx.clock()
        try:
            cost, wall = _probe(ctx, config, probe_dir, part.probe_steps)
        except BudgetSpent:
            probes[m] = {**label, "steps": part.probe_steps, "cut_after_s": ctx.clock() - t0}
            notes.append(f"probe of {m} cut by the budget after {ctx.clock() - t0:.0f} s.")
            ctx.progress(part.name, probes, None)
            return None
        probes[m] = {
            **label,
            "steps": part.probe_steps,
            "wall_s": wall,
            "fixed_s": cost.fixed_s,
            "step_s": cost.step_s,
        }
        ctx.progress(part.name, probes, None)
        return cost

    if part.fractions is not None:  # ---- sweep: fixed steps, one program per (p, method)
        steps = part.steps[0]
        keys = [(m, p) for p in part.fractions for m in part.methods if (m, p) not in done]
        configs = {}
        for m, p in keys:
            configs[m, p] = program_config(part, base, m, p)
        costs, probed = {}, {}  # probed: (method, p) -> the probe's wall seconds
        for m in part.methods:  # probe each method's first missing program
            first = next(((mm, p) for mm, p in keys if mm == m), None)
            if first is None:
                continue
            if ctx.left() <= 0:  # the probes alone spent the budget: the rest are not costed
                notes.append(f"not probed (budget spent): {m}.")
                continue
            ctx.say(f"[{part.name}] probe: {m} p={first[1]}, {part.probe_steps} steps")
            cost = probe(
                m,
                configs[first],
                os.path.join(workdir, f"p{first[1]}", m),
                {"majority_fraction": first[1]},
            )
            if cost is None:
                break
            costs[m], probed[first] = cost, probes[m]["wall_s"]
        est = lambda k: (
            costs[k[0]].of(steps - part.probe_steps) if k in probed else costs[k[0]].of(steps)
        )
        keys = [k for k in keys if k[0] in costs]
        plan = planner.plan_sweep([(k, est(k)) for k in keys], ctx.left(), ctx.args.safety)
        minimal = [(m, part.fractions[0]) for m in list(part.methods)[: part.min_methods]]
        runs = {k for k, _, run in plan if run}
        plan_rows = [
            {
                "method": m,
                "majority_fraction": p,
                "steps": steps,
                "seeds": configs[m, p].num_seeds,
                "estimate_s": round(e, 1),
                "decision": "run" if r else "skip (budget)",
            }
            for (m, p), e, r in plan
        ]
        _print_plan(ctx, part, plan_rows)
        ctx.progress(part.name, probes, plan_rows)
        if not all(k in runs or k in done for k in minimal):
            notes.append(
                f"skipped: the minimal run {minimal} does not fit in "
                f"{ctx.left():.0f} s (estimates in the plan)."
            )
            return "skipped", notes
        for (m, p), _, _ in plan:  # each decided again with what is left and known now
            left, e = ctx.left(), est((m, p))
            if ctx.args.safety * e > left:
                notes.append(f"not run: {m} p={p} (estimate {e:.0f} s, {left:.0f} s left).")
                continue
            ctx.say(f"[{part.name}] run: {m} p={p}, {steps} steps (estimate {e:.0f} s)")
            rec = _run_program(ctx, configs[m, p], os.path.join(workdir, f"p{p}", m), m, p)
            rec["wall_time_s"] += probed.get((m, p), 0.0)  # its first chunk ran as the probe
            programs.append(rec)
            # The measured whole (every evaluation and checkpoint, the compile or the cache
            # hit) is the method's estimate from now on.
            costs[m] = planner.measured_cost(rec["wall_time_s"], steps, costs[m].step_s)
            write(plan_rows, "partial")
        complete = len(programs) == len(part.fractions) * len(part.methods)
    else:  # ---- step count chosen by the plan
        methods = [m for m in part.methods if (m, None) not in done]
        step_choices = (programs[0]["num_steps"],) if programs else part.steps
        # The paper's schedule, evaluated and checkpointed at the probe's end (so its time
        # includes both and the loop waits for its last steps); the workdir is discarded.
        probe_base = scaled_config(base, max(part.steps))
        probe_base.loop.eval_every = probe_base.loop.checkpoint_every = part.probe_steps
        # A method is probed unless it is costed like another method that is (still) to run.
        like = {m: part.cost_like[m] for m in methods if part.cost_like.get(m) in methods}
        costs = {}
        for m in methods:
            if m not in like:
                ctx.say(f"[{part.name}] probe: {m}, {part.probe_steps} steps (scratch workdir)")
                cost = probe(
                    m, program_config(part, probe_base, m), os.path.join(workdir, "probe", m), {}
                )
                if cost is None:
                    break
                costs[m] = cost
        costs.update({m: costs[other] for m, other in like.items() if other in costs})
        methods = [m for m in methods if m in costs]  # a method not costed is not planned
        choice = planner.plan_steps(
            costs,
            methods,
            step_choices,
            ctx.left(),
            ctx.args.safety,
            part.min_methods if not programs else 0,
        )
        s = choice[0] if choice else min(step_choices)
        plan_rows = [
            {
                "method": m,
                "steps": s,
                "seeds": base.num_seeds,
                "estimate_s": round(costs[m].of(s), 1),
                "decision": "run" if choice and m in choice[1] else "skip (budget)",
            }
            for m in methods
        ]
        _print_plan(ctx, part, plan_rows)
        ctx.progress(part.name, probes, plan_rows)
        if choice is None:
            notes.append(
                f"skipped: the minimal run ({list(part.methods)[: part.min_methods]} "
                f"at {s} steps) does not fit in {ctx.left():.0f} s."
            )
            return "skipped", notes
        s = choice[0]
        config_s = scaled_config(base, s)
        for m in methods:  # each decided again with what is left and known now
            left, e = ctx.left(), costs[m].of(s)
            if ctx.args.safety * e > left:
                notes.append(f"not run: {m} at {s} steps (estimate {e:.0f} s, {left:.0f} s left).")
                continue
            ctx.say(f"[{part.name}] run: {m}, {s} steps (estimate {e:.0f} s)")
            rec = _run_program(
                ctx, program_config(part, config_s, m), os.path.join(workdir, f"S{s}", m), m, None
            )
            programs.append(rec)
            measured = planner.measured_cost(rec["wall_time_s"], s, costs[m].step_s)
            costs.update({x: measured for x in methods if x == m or like.get(x) == m})
            write(plan_rows, "partial")
        complete = len(programs) == len(part.methods)
        if complete and s < max(part.steps):
            notes.append(
                f"{s} of the paper's {max(part.steps)} steps (the budget's share), "
                f"learning-rate schedule compressed to them."
            )
    status = "complete" if complete else "partial"
    if programs:
        write(plan_rows, status)
    return status if programs else "skipped", notes


def _print_plan(ctx: Ctx, part: Part, rows: list[dict]) -> None:
    header = list(rows[0]) if rows else ["method"]
    how = (
        "one program per (majority fraction, method), its seeds vmapped: a run's members "
        "differ by seed only, so fractions cannot be members; programs of one method share "
        "the compiled step through the persistent compilation cache"
        if part.fractions
        else "one program per method at the chosen step count, its seeds vmapped"
    )
    ctx.say(
        f"\nPlan for {part.name} ({part.title}); {ctx.left():.0f} s left, estimates x"
        f"{ctx.args.safety} must fit; {how}; before it starts, each program is decided "
        f"again with the time left and the costs measured by then:\n"
        + common.markdown_table(header, [[r[h] for h in header] for r in rows])
        + "\n"
    )


def _write_part(
    ctx: Ctx,
    part: Part,
    programs: list[dict],
    plan_rows,
    status: str,
    notes: list[str],
    wall: float,
    probes: dict | None = None,
) -> None:
    """The part's record and files (``reproduce_files.write_part``), then the bundle."""
    record = {
        "suite": ctx.suite,
        "part": part.name,
        "title": part.title,
        "status": status,
        **ctx.header,
        "wall_time_s": wall,
        "plan": plan_rows,
        "programs": programs,
        "probes": probes or {},
        "paper": PAPER.get(part.name),
        "protocol": part.protocol,
        "notes": notes,
    }
    reproduce_files.write_part(ctx.args.results_dir, ctx.args.bundle, part, record)
