"""experiments.planner: plans computed by hand from given costs and budgets."""

import pytest

from experiments import planner


def test_probe_cost_splits_the_probe_into_fixed_and_per_step_time():
    # 100 steps in 30 s; the loop's 80 uncompiled steps took 8 s: 0.1 s a step, 20 s fixed.
    assert planner.probe_cost(30.0, 100, 8.0, 80) == pytest.approx((20.0, 0.1))
    assert planner.Cost(20.0, 0.1).of(1000) == pytest.approx(120.0)
    # No uncompiled step: the whole probe per step (3 s over 10 steps), nothing fixed.
    assert planner.probe_cost(3.0, 10, 0.0, 0) == pytest.approx((0.0, 0.3))
    # A loop slower than the wall clock (rounding) never gives a negative fixed part.
    assert planner.probe_cost(1.0, 10, 2.0, 10) == pytest.approx((0.0, 0.2))
    with pytest.raises(ValueError, match="steps must be >= 1"):
        planner.probe_cost(1.0, 0, 0.0, 0)


def test_measured_cost_keeps_the_step_time():
    # 8000 steps at 0.01 s took 100 s in all: 20 s beyond the steps.
    assert planner.measured_cost(100.0, 8000, 0.01) == pytest.approx((20.0, 0.01))
    assert planner.measured_cost(50.0, 8000, 0.01) == (0.0, 0.01)


def test_plan_sweep_is_greedy_in_priority_order():
    plan = planner.plan_sweep(
        [("a", 40.0), ("b", 50.0), ("c", 10.0), ("d", 30.0)], remaining_s=115.0, safety=1.5
    )
    # a: 60 used; b: 60 + 75 > 115 skipped; c: 75; d: 75 + 45 > 115 skipped.
    assert [(k, run) for k, _, run in plan] == [
        ("a", True),
        ("b", False),
        ("c", True),
        ("d", False),
    ]


def test_plan_steps_largest_count_for_all_then_minimal():
    C = planner.Cost
    costs = {"erm": C(10.0, 0.01), "l2rw": C(20.0, 0.03), "rec": C(20.0, 0.03)}
    methods, steps = ["erm", "l2rw", "rec"], (1000, 2000, 4000)
    # all three: 50 + 0.07 S -> S = 2000 costs 190 <= 200; 4000 costs 330.
    assert planner.plan_steps(costs, methods, steps, 200.0, 1.0, 2) == (2000, methods)
    # 100 s: no S fits all; at 1000: erm 20 + l2rw 50 = 70 fit, rec would make 120.
    assert planner.plan_steps(costs, methods, steps, 100.0, 1.0, 2) == (1000, ["erm", "l2rw"])
    # 60 s: the minimal run (erm and l2rw at 1000 steps, 70 s) does not fit.
    assert planner.plan_steps(costs, methods, steps, 60.0, 1.0, 2) is None
    # The safety factor counts: 190 * 1.1 > 200.
    assert planner.plan_steps(costs, methods, steps, 200.0, 1.1, 2) == (1000, methods)
