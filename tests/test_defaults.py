"""The defaults train every model of the zoo; a run that diverges stops, says so, and fails.

Data: 4 classes of stripes (horizontal or vertical, period 2 or 4) on noise, 28x28x1 or
32x32x3 uint8, so every model (global-average-pooled ones too) can separate them.
"""

import json
import os
import subprocess
import sys

import numpy as np
import pytest

import tiny_data
from l2rw_jax import config as config_lib
from l2rw_jax import train

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
STEPS, LOG_EVERY = 200, 20
# The two deep models at widths a CPU test can afford (their other options at the defaults).
TINY = {"resnet32": {"units_per_stage": 1, "widths": (4, 8, 8)}, "wrn": {"depth": 10, "width": 1}}


def _write_stripes(path, size, channels, n_train=400, n_test=100):
    rng = np.random.default_rng(0)

    def make(n):
        y = np.arange(n) % 4
        x = rng.integers(0, 60, (n, size, size, channels)).astype(np.int64)
        on = np.arange(size)
        for c, (axis, period) in enumerate([(0, 2), (1, 2), (0, 4), (1, 4)]):
            rows = on % period == 0
            mask = rows[:, None] if axis == 0 else rows[None, :]
            x[y == c] += 180 * np.broadcast_to(mask, (size, size))[None, :, :, None]
        return x.astype(np.uint8), y

    (x_train, y_train), (x_test, y_test) = make(n_train), make(n_test)
    np.savez(path, x_train=x_train, y_train=y_train, x_test=x_test, y_test=y_test)
    return path


@pytest.fixture(scope="module")
def stripes(tmp_path_factory):
    root = tmp_path_factory.mktemp("stripes")
    return {
        28: _write_stripes(str(root / "s28.npz"), 28, 1),
        32: _write_stripes(str(root / "s32.npz"), 32, 3),
    }


def _config(npz, model, **overrides):
    """The default config on ``npz`` (its labels as given: a source of your own), small
    batches, ``model`` (tiny widths for the deep ones), ERM; optimizer, input scaling and the
    rest at their defaults."""
    c = config_lib.default_config()
    c.update(
        {
            "data": dict(
                dataset=f"npz:{npz}",
                clean_per_class=4,
                batch_size=16,
                clean_batch_size=16,
                eval_batch_size=100,
            ),
            "model": {"name": model, "options": TINY.get(model, {})},
            "method": {"name": "erm"},
            "num_steps": STEPS,
            "loop": dict(
                log_every=LOG_EVERY, eval_every=STEPS, checkpoint_every=STEPS, progress_bar=False
            ),
        }
    )
    c.update(overrides)
    return c


def _train_losses(workdir):
    with open(os.path.join(workdir, "metrics.jsonl")) as f:
        return [r["train_loss"] for r in map(json.loads, f) if r["split"] == "train"]


@pytest.mark.parametrize(
    "model, size",
    [
        ("lenet", 28),
        ("mlp", 28),
        ("small_cnn", 28),
        ("resnet32", 32),
        ("wrn", 32),
        ("lenet", 32),
        ("mlp", 32),
    ],
)
def test_the_default_learning_rate_trains_every_zoo_model(stripes, tmp_path, model, size):
    # At the former default learning rate of 0.1, LeNet's loss passes 1e6 within 20 steps here.
    assert config_lib.default_config().optim.learning_rate == 0.01
    results = train.train_and_evaluate(_config(stripes[size], model), str(tmp_path / "run"))
    losses = _train_losses(tmp_path / "run")
    assert results["completed"] and len(losses) == STEPS // LOG_EVERY
    assert np.all(np.isfinite(losses))
    assert max(losses) <= losses[0] and losses[-1] < 0.25 * losses[0], losses
    assert results["final_test_accuracy"]["mean"] > 0.9


def test_default_l2rw_trains_lenet_past_its_warmup(stripes, tmp_path):
    """The default method too (its 200 uniform warm-up steps, then reweighting)."""
    cfg = _config(stripes[28], "lenet", num_steps=260, method={"name": "l2rw"})
    cfg.loop.update(eval_every=260, checkpoint_every=260)
    results = train.train_and_evaluate(cfg, str(tmp_path / "run"))
    losses = _train_losses(tmp_path / "run")
    assert np.all(np.isfinite(losses)) and losses[-1] < 0.25 * losses[0], losses
    assert results["completed"] and results["final_test_accuracy"]["mean"] > 0.9


def test_divergence_bound_exact_values():
    seeds = [0, 1]
    # First logged loss 2.3: the bound is 2300 (1e3 x); a first loss below 1 counts as 1.
    assert train.divergence(5, np.array([2299.0, 999.0]), np.array([2.3, 0.01]), seeds, 0.1) is None
    msg = train.divergence(5, np.array([2301.0, 5.0]), np.array([2.3, 0.01]), seeds, 0.1)
    assert msg == (
        "training diverged at step 5: train_loss 2301 (seed 0, mean since the last "
        "log) > 2300 (the bound: 1000 x the first logged loss, at most 10000) with "
        "optim.learning_rate=0.1; lower optim.learning_rate."
    )
    assert "train_loss 1001 (seed 1" in train.divergence(
        7, np.array([2.0, 1001.0]), np.array([2.3, 0.01]), seeds, 0.1
    )
    # The absolute bound: 1e4 whatever the first loss.
    assert train.divergence(9, np.array([10001.0]), np.array([50.0]), [3], 1.0).startswith(
        "training diverged at step 9: train_loss 1e+04 (seed 3"
    )
    assert train.divergence(9, np.array([9999.0]), np.array([50.0]), [3], 1.0) is None


def test_a_diverging_run_stops_with_the_step_loss_and_learning_rate(stripes, tmp_path):
    cfg = _config(stripes[28], "lenet", num_steps=40, optim={"learning_rate": 0.5})
    cfg.loop.update(log_every=5, eval_every=40, checkpoint_every=10)
    workdir = str(tmp_path / "run")
    with pytest.raises(
        FloatingPointError,
        match=r"^training diverged at step (\d+): .* with "
        r"optim\.learning_rate=0\.5; lower "
        r"optim\.learning_rate\.$",
    ) as e:
        train.train_and_evaluate(cfg, workdir)
    assert "\n" not in str(e.value)
    with open(os.path.join(workdir, "results.json")) as f:
        results = json.load(f)
    assert results["completed"] is False and results["error"] == str(e.value)
    assert results["method"] == "erm" and results["num_steps"] == 40
    # Re-running the command does not take the failed run for a finished one: it fails again.
    with pytest.raises(FloatingPointError, match="^training diverged"):
        train.train_and_evaluate(cfg, workdir)


def test_the_entry_point_fails_with_one_line_and_a_nonzero_exit_code(tmp_path):
    out = subprocess.run(
        [
            sys.executable,
            "-m",
            "experiments.quickstart",
            f"--workdir={tmp_path}/qs",
            "--methods=erm",
            "--config.optim.learning_rate=100",
            "--config.num_steps=20",
            "--config.num_seeds=1",
            "--config.loop.log_every=5",
            "--config.loop.eval_every=20",
            "--config.loop.checkpoint_every=20",
            "--config.loop.progress_bar=False",
        ],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=300,
    )
    lines = [line for line in out.stderr.splitlines() if line.strip()]
    assert out.returncode == 1, out.stderr
    assert len(lines) == 1 and lines[0].startswith("error: training diverged at step "), out.stderr
    assert "optim.learning_rate=100.0; lower optim.learning_rate." in lines[0]
    with open(tmp_path / "qs" / "erm" / "results.json") as f:
        results = json.load(f)
    assert results["completed"] is False and results["error"].startswith("training diverged")


def test_the_progress_bar_ends_on_the_final_evaluation(tmp_path, monkeypatch):
    """Every update of the bar shows the evaluation of the step it reaches (the last one: the
    final accuracy the table prints), not the one before."""
    import tqdm.auto

    shown = []

    class Recording(tqdm.auto.tqdm):
        def update(self, n=1):
            shown.append((self.n + n, self.postfix))
            return super().update(n)

    monkeypatch.setattr(tqdm.auto, "tqdm", Recording)
    npz = tiny_data.write_tiny_npz(str(tmp_path / "tiny.npz"))
    cfg = tiny_data.tiny_config(
        npz,
        {
            "num_steps": 6,
            "loop": dict(
                eval_every=3, checkpoint_every=6, log_every=3, steps_per_call=3, progress_bar=True
            ),
        },
    )
    results = train.train_and_evaluate(cfg, str(tmp_path / "run"))
    final = results["final_test_accuracy"]["mean"]
    assert shown[-1] == (6, f"test_acc={final:.4f}")
