"""The training loop's clock: where an invocation's time went, kept out of the loop.

The loop marks the clock at points of its own (after a training call, an evaluation, a
checkpoint) and :class:`Chrono` bills the time since the previous mark to one bucket:

- ``first_step_s``: training calls that compiled, i.e. the first call of each kind
  (``key``, e.g. ``(phase, steps)``) in this invocation;
- ``train_loop_s``: every other training call (input pipeline and logging included), and the
  steps it ran (``timed_steps``);
- ``eval_s`` and ``checkpoint_s``: evaluations and checkpoint writes.

Nothing waits here: a caller that wants queued device work billed to a call blocks on it
before marking (``jax.block_until_ready``). In the spirit of big_vision's ``utils.Chrono``
(training time apart from compilation and pauses); the clock is injected, so the arithmetic
is tested without sleeping (tests/test_chrono.py).
"""

from __future__ import annotations

import time
from typing import Callable, Hashable

BUCKETS = ("first_step_s", "train_loop_s", "eval_s", "checkpoint_s")


class Chrono:
    """Seconds per bucket of one invocation of the loop.

    Args:
      clock: seconds as a float, never decreasing (default ``time.monotonic``; tests pass a
        fake). Read once here: the invocation starts now.
    """

    def __init__(self, clock: Callable[[], float] = time.monotonic):
        self._clock = clock
        self._start = self._mark = float(clock())
        self.timing = dict.fromkeys(BUCKETS, 0.0)
        self.timed_steps = 0
        self._seen: set = set()

    def _lap(self) -> float:
        now = float(self._clock())
        lap, self._mark = now - self._mark, now
        return lap

    def mark(self) -> None:
        """Starts a lap here; the time since the previous mark is billed to no bucket."""
        self._lap()

    def train_call(self, key: Hashable, steps: int) -> None:
        """Bills the lap to a training call of ``steps`` steps: to ``first_step_s`` when no call
        of ``key`` was billed before in this invocation (it compiled), else to
        ``train_loop_s`` (and ``steps`` to ``timed_steps``)."""
        lap = self._lap()
        if key in self._seen:
            self.timing["train_loop_s"] += lap
            self.timed_steps += int(steps)
        else:
            self._seen.add(key)
            self.timing["first_step_s"] += lap

    def lap(self, bucket: str) -> None:
        """Bills the lap to ``bucket`` (``"eval_s"`` or ``"checkpoint_s"``).

        Raises:
          ValueError: ``bucket`` is not one of those two.
        """
        if bucket not in ("eval_s", "checkpoint_s"):
            raise ValueError(f"bucket={bucket!r} must be 'eval_s' or 'checkpoint_s'.")
        self.timing[bucket] += self._lap()

    def rate(self) -> float:
        """Steps per second of the timed training calls so far (0.0 before the first)."""
        if not self.timed_steps or self.timing["train_loop_s"] <= 0:
            return 0.0
        return self.timed_steps / self.timing["train_loop_s"]

    def steps_per_s(self, steps: int) -> float:
        """The invocation's loop rate: ``timed_steps / (train_loop_s + checkpoint_s)``; when no
        call was timed (every call compiled: a short run), ``steps`` (all the steps this
        invocation ran) over those and ``first_step_s``, compilation included. 0.0 without
        time."""
        timed, loop_s = self.timed_steps, self.timing["train_loop_s"] + self.timing["checkpoint_s"]
        if not timed:
            timed, loop_s = steps, loop_s + self.timing["first_step_s"]
        return timed / loop_s if loop_s > 0 else 0.0

    def elapsed_s(self) -> float:
        """Seconds since this invocation started (the construction of this clock)."""
        return float(self._clock()) - self._start
