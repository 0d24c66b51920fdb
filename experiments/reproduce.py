"""The paper's experiments on your own GPU or TPU host, planned to a wall-time budget.

Copy the data into one directory (``mnist.npz``, ``cifar10_dev.npz`` or its JPEG copy
``cifar10_dev_jpeg.npz``; docs/reproduce.md says how) and run, from the repository root::

    python -m experiments.reproduce --data_dir=data --workdir=workdirs/reproduce --budget_s=36000
    python -m experiments.reproduce --suite=smoke --data_dir=<tiny data> --workdir=/tmp/smoke

The same command again continues: complete parts are skipped, partial ones continued. The
suites and their parts are ``experiments/configs/reproduce.py``; the planner is
``experiments/planner.py``; the files ``experiments/reproduce_files.py``.

Majority fractions are not vmapped members: a run's members differ only by seed
(``l2rw_jax.train_and_evaluate``: member k is seed + k, one ``majority_fraction`` per config), so
each fraction is its own program with its seeds vmapped; they share compiled code through
JAX's persistent compilation cache (``--compilation_cache``; same shapes, same program).

Planning (the plan is printed as a table before anything is trained):

1. A part whose ``reproduce_<part>.json`` is present and complete (in ``--results_dir`` or in
   the committed ``benchmarks/results``) is skipped; a partial one is continued: its finished
   programs are kept, the missing ones planned (CIFAR at the same step count).
2. The part's first chunk is timed. MNIST: every method's first program (p = 0.995) runs
   ``probe_steps`` steps in its real workdir (kept; the program resumes from there). CIFAR:
   erm and l2rw run ``probe_steps`` steps in a scratch workdir (the step count is not known
   yet and the learning-rate schedule is compiled in, so that work is not reused);
   proportion is costed like erm and recommended like l2rw (an upper bound: its meta-step
   goes through the last layer only). Cost of a program of S steps: ``fixed + S * step``,
   with ``step`` the loop's time per step in the calls that did not compile (the timing a
   stopped ``train_and_evaluate`` returns) and ``fixed`` the rest of the probe (data,
   compile, evaluation, checkpoint), times ``--safety``; after each program the method's
   ``fixed`` becomes what the whole program took beyond ``S * step``.
3. MNIST: programs in priority order, each run if its estimate fits what is left, else
   skipped with a note (8000 steps and 5 seeds are never cut). CIFAR: the largest step count
   S of ``steps`` (1k ... 80k) at which every method fits, the learning-rate boundaries
   scaled to it (the paper's 40k / 60k of 80k become S/2, 3S/4); if none, the smallest S
   with the methods that fit in priority order. A part whose minimal run (erm and l2rw at
   its first fraction / smallest S) does not fit is skipped with a note; so is one started
   with less than its ``floor_s`` left.
4. Each part's ``reproduce_<part>.{md,json,png}`` is rewritten (atomically: tmp file, then
   rename) after every finished program, so a run cut off by the command's time limit still
   returns everything finished; ``reproduce_run.json`` records every part's status, notes,
   probes and plan, and is rewritten (with the bundle) after every probe and plan of the
   running part (``running``).
5. The budget bounds the probes too: a probe still running when it runs out is cut (SIGALRM;
   within one jitted call), recorded with ``cut_after_s`` and a note, and nothing more of
   the part runs. SIGTERM (a job's time limit) writes ``reproduce_run.json`` with
   ``interrupted`` and the bundle, then exits with code 143.

The smoke suite's plan (CPU) looks like::

    Plan for cifar_background (smoke: background flip); 3567 s left, estimates x1.15 must
    fit; one program per method at the chosen step count, its seeds vmapped; before it
    starts, each program is decided again with the time left and the costs measured by then:
    | method     | steps | seeds | estimate_s | decision |
    |------------|-------|-------|------------|----------|
    | erm        | 40    | 2     | 4.4        | run      |
    | l2rw       | 40    | 2     | 6.8        | run      |
    | proportion | 40    | 2     | 4.4        | run      |
"""

from __future__ import annotations

import contextlib
import os
import signal
import sys
import threading
import time
import traceback
from typing import Callable, NamedTuple, Sequence

from absl import app
from absl import flags

from experiments import common
from experiments import planner
from experiments import provenance
from experiments import reproduce_data
from experiments import reproduce_files
from experiments.configs.reproduce import PAPER
from experiments.configs.reproduce import Part
from experiments.configs.reproduce import program_config
from experiments.configs.reproduce import scaled_config
from experiments.configs.reproduce import SUITES
import l2rw_jax
from l2rw_jax import config as config_lib

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
COMMITTED_DIR = os.path.join(ROOT, "benchmarks", "results")

# ----------------------------------------------------------------------------- the run


class _Ctx(NamedTuple):
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


def _probe(ctx: _Ctx, config, workdir: str, steps: int) -> tuple[planner.Cost, float]:
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


def _run_program(ctx: _Ctx, config, workdir: str, method: str, fraction) -> dict:
    t0 = ctx.clock()
    results = l2rw_jax.train_and_evaluate(config, workdir)
    return reproduce_files.program_record(method, fraction, results, workdir, ctx.clock() - t0)


def run_part(ctx: _Ctx, part: Part, present: dict | None) -> tuple[str, list[str]]:
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


def _print_plan(ctx: _Ctx, part: Part, rows: list[dict]) -> None:
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
    ctx: _Ctx,
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


# ----------------------------------------------------------------------------- CLI


class Args(NamedTuple):
    """The parsed flags (:func:`parse_args`): paths absolute, defaults filled in."""

    suite: str
    budget_s: float
    parts: list
    data_dir: str
    workdir: str
    results_dir: str
    compilation_cache: str
    bundle: str
    git_commit: str | None
    safety: float


def define_flags(fv: flags.FlagValues) -> None:
    """The command's flags, on ``fv`` (the global ``flags.FLAGS`` when run as a program; a
    fresh ``FlagValues`` in :func:`parse_args`, so that importing this module defines none
    that could clash with another entry point's)."""
    flags.DEFINE_enum("suite", "paper", sorted(SUITES), "The suite to run.", flag_values=fv)
    flags.DEFINE_float(
        "budget_s", 480.0, "Wall-time budget of the whole run in seconds.", flag_values=fv
    )
    flags.DEFINE_list("parts", [], "Comma-separated part names (default: all).", flag_values=fv)
    flags.DEFINE_string(
        "data_dir",
        ".carry",
        "Holds mnist.npz and cifar10_dev.npz or cifar10_dev_jpeg.npz (fallback: ../shared/data).",
        flag_values=fv,
    )
    flags.DEFINE_string("workdir", "workdirs/reproduce", "Runs, scratch, caches.", flag_values=fv)
    flags.DEFINE_string(
        "results_dir",
        None,
        "Where reproduce_<part>.* go (default: "
        "benchmarks/results for the paper suite, <workdir>/results for smoke).",
        flag_values=fv,
    )
    flags.DEFINE_string(
        "compilation_cache",
        None,
        "JAX persistent compilation cache dir (default <workdir>/jax_cache; '' disables).",
        flag_values=fv,
    )
    flags.DEFINE_string(
        "bundle",
        "",
        "Also zip the results into this file after every write (one file that holds them all).",
        flag_values=fv,
    )
    flags.DEFINE_string(
        "git_commit",
        None,
        "The commit to record (default: git rev-parse HEAD, if git works).",
        flag_values=fv,
    )
    flags.DEFINE_float(
        "safety",
        1.15,
        "Estimates are multiplied by this before they are compared with the time left.",
        flag_values=fv,
    )


def parse_args(argv: Sequence[str]) -> Args:
    """The :class:`Args` of the command-line flags ``argv`` (without the program name).

    Raises:
      ValueError: an unknown or malformed flag, ``--budget_s <= 0``, ``--safety < 1``, or a
        part the suite does not have.
    """
    fv = flags.FlagValues()
    define_flags(fv)
    try:
        fv(["reproduce", *argv])
    except flags.Error as e:
        raise ValueError(str(e)) from None
    return _args(fv)


def _args(fv: flags.FlagValues) -> Args:
    if fv.budget_s <= 0 or fv.safety < 1:
        raise ValueError(
            f"--budget_s must be > 0 and --safety >= 1, got {fv.budget_s} and {fv.safety}."
        )
    names = [part.name for part in SUITES[fv.suite]]
    parts = list(fv.parts or names)
    unknown = [s for s in parts if s not in names]
    if unknown:
        raise ValueError(f"unknown part(s) {unknown}; suite {fv.suite!r} has {names}.")
    workdir = os.path.abspath(fv.workdir)
    results_dir = fv.results_dir
    if results_dir is None:
        results_dir = COMMITTED_DIR if fv.suite == "paper" else os.path.join(workdir, "results")
    cache = fv.compilation_cache
    if cache is None:
        cache = os.path.join(workdir, "jax_cache")
    return Args(
        fv.suite,
        fv.budget_s,
        parts,
        fv.data_dir,
        workdir,
        results_dir,
        cache,
        fv.bundle,
        fv.git_commit,
        fv.safety,
    )


def run_suite(
    argv: Sequence[str],
    clock: Callable[[], float] = time.monotonic,
    say: Callable[[str], None] = lambda s: print(s, flush=True),
    args: Args | None = None,
) -> dict:
    """Runs the suite of ``argv`` (the command's flags; ``args``: already parsed); returns
    the run record (also written to ``<results_dir>/reproduce_run.json``). ``clock``
    measures the budget (seconds). Raises ValueError for bad flags (:func:`parse_args`)."""
    t0 = clock()
    args = args or parse_args(argv)
    os.makedirs(args.results_dir, exist_ok=True)
    os.makedirs(args.workdir, exist_ok=True)
    if args.compilation_cache:
        import jax

        jax.config.update("jax_compilation_cache_dir", args.compilation_cache)
        jax.config.update("jax_persistent_cache_min_compile_time_secs", 0.0)
    header = {
        **provenance.record("experiments.reproduce", argv, args.git_commit),
        "budget_s": args.budget_s,
    }
    record = {"suite": args.suite, **header, "parts": [], "running": None}
    run_json = os.path.join(args.results_dir, "reproduce_run.json")

    def save():
        record["wall_time_s"] = clock() - t0
        common.write_json(run_json, record)
        reproduce_files.bundle(args.results_dir, args.bundle)

    def progress(name, probes, plan):
        running = record["running"] if (record["running"] or {}).get("part") == name else {}
        record["running"] = {
            "part": name,
            "probes": dict(probes),
            "plan": plan if plan is not None else running.get("plan"),
        }
        save()

    ctx = _Ctx(args.suite, args, clock, t0 + args.budget_s, header, say, progress)
    parts = [p for p in SUITES[args.suite] if p.name in args.parts]
    present = {
        p.name: reproduce_files.present(p.name, args.suite, args.results_dir, COMMITTED_DIR)
        for p in parts
    }
    rows = [
        [
            p.name,
            p.title,
            "present: skip"
            if (present[p.name] or {}).get("status") == "complete"
            else "continue"
            if present[p.name]
            else "run",
            f"{p.floor_s:.0f}",
        ]
        for p in parts
    ]
    say(
        f"Reproduction suite {args.suite!r}: budget {args.budget_s:.0f} s on "
        f"{header['device']['kind']}; results in {args.results_dir}\n"
        + common.markdown_table(["part", "what", "status", "needs at least (s)"], rows)
        + "\nEach part: time its first chunk, print its plan, run, write its files.\n"
    )

    def log(name, status, notes):
        running = record["running"] if (record["running"] or {}).get("part") == name else {}
        record["parts"].append(
            {
                "part": name,
                "status": status,
                "notes": notes,
                "probes": running.get("probes", {}),
                "plan": running.get("plan"),
            }
        )
        record["running"] = None
        save()
        say(f"[{name}] {status}" + "".join(f"\n  - {n}" for n in notes))

    def on_sigterm(signum, frame):
        # Whatever finished is on disk already (each program, probe and plan is written when
        # it ends); the run log says where it stopped, then the bundle is rewritten.
        record["interrupted"] = f"SIGTERM after {clock() - t0:.0f} s"
        save()
        say(f"Interrupted (SIGTERM) after {clock() - t0:.0f} s; results in {args.results_dir}.")
        sys.stdout.flush()
        os._exit(128 + signum)  # now: the loop's cleanup could outlast the sender's patience

    main_thread = threading.current_thread() is threading.main_thread()
    previous = signal.signal(signal.SIGTERM, on_sigterm) if main_thread else None
    try:
        _run_parts(ctx, parts, present, log)
    finally:
        if main_thread:
            signal.signal(signal.SIGTERM, previous)
    say(f"Done in {clock() - t0:.0f} s.")
    return record


def _run_parts(ctx: _Ctx, parts, present: dict, log) -> None:
    say = ctx.say
    for part in parts:
        prev = present[part.name]
        if prev and prev.get("status") == "complete":
            log(part.name, "present", ["already present (complete): skipped."])
            continue
        if ctx.left() < part.floor_s or ctx.left() <= 0:
            log(
                part.name,
                "skipped",
                [
                    f"not started: {ctx.left():.0f} s left, the part needs "
                    f"at least {part.floor_s:.0f} s."
                ],
            )
            continue
        try:
            status, notes = run_part(ctx, part, prev)
        except Exception as e:  # noqa: BLE001 -- one broken part must not cost the others
            say(traceback.format_exc())
            status, notes = "failed", [f"failed: {type(e).__name__}: {e}"]
        log(part.name, status, notes)


def main(argv: Sequence[str]) -> None:
    if len(argv) > 1:
        raise app.UsageError(f"Unexpected arguments: {argv[1:]}")
    common.quiet_checkpoint_logs()
    run_suite(sys.argv[1:], args=_args(flags.FLAGS))


if __name__ == "__main__":
    define_flags(flags.FLAGS)
    common.run_main(main)
