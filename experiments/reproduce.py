"""The paper's experiments on your own GPU or TPU host, planned to a wall-time budget.

Copy the data into one directory (``mnist.npz``, ``cifar10_dev.npz`` or its JPEG copy
``cifar10_dev_jpeg.npz``; docs/reproduce.md says how) and run, from the repository root::

    python -m experiments.reproduce --data_dir=data --workdir=workdirs/reproduce --budget_s=36000
    python -m experiments.reproduce --suite=smoke --data_dir=<tiny data> --workdir=/tmp/smoke

The same command again continues: complete parts are skipped, partial ones continued. The
suites and their parts are ``experiments/configs/reproduce.py``; the planner is
``experiments/planner.py``; the files ``experiments/reproduce_files.py``; the flags
``experiments/reproduce_flags.py``; one part's probes, plan and programs
``experiments/reproduce_parts.py``. This module runs the suite's parts in order.

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

import os
import signal
import sys
import threading
import time
import traceback
from typing import Callable, Sequence

from absl import app
from absl import flags

from experiments import common
from experiments import provenance
from experiments import reproduce_files
from experiments import reproduce_flags
from experiments.configs.reproduce import SUITES
from experiments.reproduce_flags import args_from_flags
from experiments.reproduce_flags import Args
from experiments.reproduce_flags import COMMITTED_DIR
from experiments.reproduce_flags import define_flags
from experiments.reproduce_flags import parse_args
from experiments.reproduce_parts import Ctx
from experiments.reproduce_parts import run_part


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

    ctx = Ctx(args.suite, args, clock, t0 + args.budget_s, header, say, progress)
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


def _run_parts(ctx: Ctx, parts, present: dict, log) -> None:
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
    run_suite(sys.argv[1:], args=args_from_flags(flags.FLAGS))


if __name__ == "__main__":
    define_flags(flags.FLAGS)
    # Defined in reproduce_flags: adopted, so --help lists them as this command's own.
    flags.adopt_module_key_flags(reproduce_flags)
    common.run_main(main)
