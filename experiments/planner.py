"""The reproduction suite's time-budget planner: pure functions of probe timings and seconds.

A program of S steps costs ``fixed_s + S * step_s`` seconds (:class:`Cost`), measured by a
probe (:func:`probe_cost`); every estimate is multiplied by ``safety`` (>= 1) before it is
compared with the time left. :func:`plan_sweep` decides a list of programs in priority order,
:func:`plan_steps` picks one step count for a set of methods. No I/O, no clock: the caller
(``experiments/reproduce.py``) measures and passes the seconds.
"""

from __future__ import annotations

from typing import NamedTuple, Sequence


class Cost(NamedTuple):
    """Estimated seconds of a program: ``fixed_s + steps * step_s``."""

    fixed_s: float
    step_s: float

    def of(self, steps: int) -> float:
        return self.fixed_s + steps * self.step_s


def probe_cost(wall_s: float, steps: int, loop_s: float, timed_steps: int) -> Cost:
    """The :class:`Cost` a probe of ``steps`` steps that took ``wall_s`` seconds implies.

    ``loop_s`` is the training loop's time over its ``timed_steps`` steps that did not compile
    (``train_and_evaluate``'s ``timing_s["train_loop_s"]`` and ``timed_steps``): ``step_s =
    loop_s / timed_steps``, and ``fixed_s`` the rest of the probe (data, compile, evaluation,
    checkpoint), at least 0. Without such steps (``timed_steps == 0``) the whole probe counts
    per step, ``step_s = wall_s / steps`` (an overestimate: fewer programs, never an overrun).

    Raises:
      ValueError: ``steps`` < 1 or ``timed_steps`` < 0.
    """
    if steps < 1 or timed_steps < 0:
        raise ValueError(f"steps must be >= 1 and timed_steps >= 0, got {steps} and {timed_steps}.")
    step_s = loop_s / timed_steps if timed_steps else wall_s / steps
    return Cost(max(wall_s - steps * step_s, 0.0), step_s)


def measured_cost(wall_s: float, steps: int, step_s: float) -> Cost:
    """A finished program's whole (every evaluation and checkpoint, the compile or the cache
    hit) as the method's cost from then on: ``fixed_s = wall_s - steps * step_s`` (at least 0),
    the per-step time kept."""
    return Cost(max(wall_s - steps * step_s, 0.0), step_s)


def plan_sweep(
    estimates: Sequence[tuple[object, float]], remaining_s: float, safety: float
) -> list[tuple[object, float, bool]]:
    """Greedy in priority order: ``(key, est_s, run)``, run when ``safety * est_s`` fits in
    what the programs run before it left of ``remaining_s``; a program that does not fit is
    skipped and the next (cheaper ones may fit)."""
    used, out = 0.0, []
    for key, est in estimates:
        run = used + safety * est <= remaining_s
        used += safety * est if run else 0.0
        out.append((key, est, run))
    return out


def plan_steps(
    costs: dict,
    methods: Sequence[str],
    steps: Sequence[int],
    remaining_s: float,
    safety: float,
    min_methods: int,
) -> tuple[int, list[str]] | None:
    """``(S, methods to run)``: the largest S of ``steps`` at which every method fits;
    else the smallest S with the methods that fit in priority order, if the first
    ``min_methods`` are among them; else None. ``costs[m]`` is a :class:`Cost`."""
    for s in sorted(steps, reverse=True):
        if safety * sum(costs[m].of(s) for m in methods) <= remaining_s:
            return s, list(methods)
    s = min(steps)
    chosen = [
        k
        for k, _, run in plan_sweep([(m, costs[m].of(s)) for m in methods], remaining_s, safety)
        if run
    ]
    if all(m in chosen for m in methods[:min_methods]):
        return s, chosen
    return None
