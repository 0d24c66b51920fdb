"""The loop's clock bills each lap to its bucket; a fake clock, no sleeping."""

import pytest

from l2rw_jax import chrono as chrono_lib


class FakeClock:
    """Returns ``now``; the test moves it."""

    def __init__(self, now: float = 100.0):
        self.now = now

    def __call__(self) -> float:
        return self.now


def test_first_call_of_each_key_is_compilation_the_rest_the_loop():
    clock = FakeClock()
    c = chrono_lib.Chrono(clock)
    clock.now += 7.0  # loading data, restoring: billed nowhere
    c.mark()
    clock.now += 5.0  # ("noisy", 4) compiles
    c.train_call(("noisy", 4), 4)
    assert c.rate() == 0.0  # nothing timed yet
    clock.now += 2.0
    c.train_call(("noisy", 4), 4)
    clock.now += 3.0  # a new length compiles again
    c.train_call(("noisy", 2), 2)
    clock.now += 1.0
    c.train_call(("noisy", 2), 2)
    clock.now += 0.5
    c.lap("eval_s")
    clock.now += 0.25
    c.lap("checkpoint_s")
    assert c.timing == {
        "first_step_s": 8.0,
        "train_loop_s": 3.0,
        "eval_s": 0.5,
        "checkpoint_s": 0.25,
    }
    assert c.timed_steps == 6
    assert c.rate() == 6 / 3.0
    assert c.steps_per_s(12) == 6 / 3.25  # checkpoints count, evaluation does not
    assert c.elapsed_s() == 7.0 + 5.0 + 2.0 + 3.0 + 1.0 + 0.5 + 0.25


def test_a_run_whose_every_call_compiled_reports_its_rate_with_compilation():
    clock = FakeClock(0.0)
    c = chrono_lib.Chrono(clock)
    clock.now = 4.0
    c.train_call(("noisy", 3), 3)
    clock.now = 5.0
    c.lap("checkpoint_s")
    assert c.timed_steps == 0 and c.rate() == 0.0
    assert c.steps_per_s(3) == 3 / (4.0 + 1.0)


def test_no_time_is_no_rate():
    c = chrono_lib.Chrono(FakeClock())
    assert c.steps_per_s(0) == 0.0 and c.rate() == 0.0
    c.train_call("a", 1)
    c.train_call("a", 1)  # timed, but the clock did not move
    assert c.rate() == 0.0


def test_unknown_bucket_is_refused():
    with pytest.raises(ValueError, match="bucket='train_loop_s'"):
        chrono_lib.Chrono(FakeClock()).lap("train_loop_s")
