"""Failure paths that lose nothing: a start that fails leaves no config.json (nothing that
blocks the corrected command), every method is checked before any trains, nonsense sizes are
refused before training, and the entry points print one line per user error."""

import os
import subprocess
import sys

import pytest

import tiny_data
from experiments import common
from experiments import plots
from l2rw_jax import train

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


@pytest.fixture(scope="module")
def npz(tmp_path_factory):
    """400 training / 100 test 8x8 images of 10 classes."""
    return tiny_data.write_tiny_npz(str(tmp_path_factory.mktemp("data") / "tiny.npz"))


_config = tiny_data.tiny_config


def test_failed_starts_leave_nothing_and_the_corrected_command_runs(npz, tmp_path):
    workdir = str(tmp_path / "run")
    with pytest.raises(FileNotFoundError):  # Data missing.
        train.train_and_evaluate(
            _config(npz, {"data": {"dataset": f"npz:{tmp_path}/missing.npz"}}), workdir
        )
    assert not os.path.exists(workdir)
    with pytest.raises(
        ValueError,
        match=r"^data\.batch_size=400 exceeds the noisy training "
        r"set \(360 examples after the splits\); allowed: "
        r"1\.\.360\.$",
    ):
        train.train_and_evaluate(_config(npz, {"data": {"batch_size": 400}}), workdir)
    with pytest.raises(
        ValueError,
        match=r"^data\.clean_batch_size=24 exceeds the clean set \(20 "
        r"examples after the splits\); allowed: 1\.\.20\.$",
    ):
        train.train_and_evaluate(_config(npz, {"data": {"clean_batch_size": 24}}), workdir)
    assert not os.path.exists(os.path.join(workdir, "config.json"))
    results = train.train_and_evaluate(_config(npz), workdir)  # The corrected command.
    assert results["completed"] and results["num_steps"] == 2
    # The protection stays for real runs: another config in this workdir is refused.
    with pytest.raises(ValueError, match="holds a run with a different config"):
        train.train_and_evaluate(_config(npz, {"optim": {"learning_rate": 0.5}}), workdir)


def test_every_method_is_checked_before_any_trains(npz, tmp_path):
    with pytest.raises(ValueError, match=r"^method\.name='l2wr' is not supported; allowed: .*l2rw"):
        common.run_methods(_config(npz), str(tmp_path / "runs"), ["erm", "l2wr"])
    assert not os.path.exists(tmp_path / "runs")  # erm was not trained, nothing was written.


def _quickstart(tmp_path, *flags):
    return subprocess.run(
        [
            sys.executable,
            "-m",
            "experiments.quickstart",
            f"--workdir={tmp_path}/qs",
            "--methods=erm,l2wr",
            *flags,
        ],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=300,
    )


def test_entry_point_error_is_one_line_and_the_traceback_is_behind_verbose(tmp_path):
    quiet = _quickstart(tmp_path)
    lines = [line for line in quiet.stderr.splitlines() if line.strip()]
    assert quiet.returncode == 2, quiet.stderr
    # One line: no traceback and no INFO logs (jax's backend probing runs before the check).
    assert len(lines) == 1 and lines[0].startswith(
        "error: method.name='l2wr' is not supported; allowed: "
    ), quiet.stderr
    assert quiet.stdout == ""
    assert not os.path.exists(tmp_path / "qs")
    verbose = _quickstart(tmp_path, "--verbose")
    assert verbose.returncode not in (0, 2)
    assert "Traceback" in verbose.stderr and "method.name='l2wr' is not supported" in verbose.stderr


@pytest.mark.parametrize(
    "override, message",
    [
        (
            "--config.num_step=3",
            "error: --config.num_step: no such config field; did you mean --config.num_steps?",
        ),
        (
            "--config.dataset=digits",
            "error: --config.dataset: no such config field; it moved to --config.data.dataset.",
        ),
        (
            "--config.method.l2rw.mode=backward",
            "error: method.l2rw: mode='backward' is not supported; allowed: forward, reverse.",
        ),
        (
            "--config.data.noise=none",
            "error: data.noise_ratio=0.4 only applies to data.noise "
            "uniform, background, pair, asymmetric; with data.noise='none' "
            "set data.noise_ratio=0.",
        ),
    ],
)
def test_bad_config_overrides_are_one_line_naming_the_field(tmp_path, override, message):
    out = subprocess.run(
        [sys.executable, "-m", "experiments.quickstart", f"--workdir={tmp_path}/qs", override],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=300,
    )
    lines = [line for line in out.stderr.splitlines() if line.strip()]
    assert out.returncode == 2 and lines == [f"{message} (--verbose for the traceback)"], (
        out.stderr[-2000:]
    )
    assert not os.path.exists(tmp_path / "qs")


def _entry(module, *flags, env=None):
    return subprocess.run(
        [sys.executable, "-m", module, *flags],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=300,
        env=env,
    )


def test_an_unset_dev_data_variable_is_a_one_line_error(tmp_path):
    env = {k: v for k, v in os.environ.items() if k != "L2RW_DEV_DATA"}
    out = _entry(
        "experiments.cifar",
        "--config=experiments/configs/cifar_background.py:dev",
        f"--workdir={tmp_path}/x",
        env=env,
    )
    assert out.returncode == 2, out.stderr
    assert out.stderr.splitlines() == [
        "error: the development copy 'cifar10_dev' is read from "
        "$L2RW_DEV_DATA/cifar10_dev/cifar10_dev.npz and L2RW_DEV_DATA is not set; set it to the "
        "folder holding cifar10_dev/ (here: ../shared/data), or pass "
        "--config.data.dataset=npz:/path/cifar10_dev.npz. (--verbose for the traceback)"
    ]
    assert not os.path.exists(tmp_path / "x")


def test_an_override_before_the_config_file_is_a_one_line_error(tmp_path):
    out = _entry(
        "experiments.quickstart",
        f"--workdir={tmp_path}/qs",
        "--config.num_steps=3",
        "--config=experiments/configs/quickstart.py",
    )
    assert out.returncode == 2, out.stderr
    assert out.stderr.splitlines() == [
        "error: --config=... must come before any --config.<field> override; found "
        "--config.num_steps=3 before --config=experiments/configs/quickstart.py. "
        "(--verbose for the traceback)"
    ]
    unknown = _entry("experiments.quickstart", f"--workdir={tmp_path}/qs", "--no_such_flag=1")
    assert unknown.returncode == 2 and len(unknown.stderr.splitlines()) == 1
    assert unknown.stderr.startswith("error: Unknown command line flag 'no_such_flag'")


def test_in_a_two_process_job_process_0_alone_prints_the_table(tmp_path):
    import socket

    with socket.socket() as s:
        s.bind(("localhost", 0))
        port = s.getsockname()[1]
    env = {k: v for k, v in os.environ.items() if k != "XLA_FLAGS"}
    env.update(JAX_PLATFORMS="cpu", XLA_FLAGS="--xla_force_host_platform_device_count=1")
    flags = [
        f"--workdir={tmp_path}/qs",
        "--methods=erm",
        "--distributed",
        f"--coordinator_address=localhost:{port}",
        "--num_processes=2",
        "--config.num_steps=4",
        "--config.num_seeds=1",
        "--config.loop.num_devices=0",
        "--config.loop.log_every=2",
        "--config.loop.eval_every=2",
        "--config.loop.checkpoint_every=4",
        "--config.loop.progress_bar=False",
    ]
    procs = [
        subprocess.Popen(
            [sys.executable, "-m", "experiments.quickstart", *flags, f"--process_id={i}"],
            cwd=ROOT,
            env=env,
            text=True,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
        )
        for i in range(2)
    ]
    try:
        outs = [p.communicate(timeout=300) for p in procs]
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()
    assert [p.returncode for p in procs] == [0, 0], [o[1][-2000:] for o in outs]
    assert "| erm    | 1     |" in outs[0][0] and "plot:" in outs[0][0]
    # Process 1 prints nothing of its own (gloo's C++ connection line is not ours to keep).
    assert "| erm" not in outs[1][0] and "plot:" not in outs[1][0], outs[1][0]


def test_a_curve_of_one_evaluation_is_drawn(tmp_path, monkeypatch):
    import numpy as np

    figures = []
    monkeypatch.setattr(plots, "save", lambda fig, path: figures.append(fig))
    plots.plot_curves(
        {
            "erm": (np.array([20]), np.array([[0.5], [0.7]])),
            "long": (np.arange(1, 50), np.full((1, 49), 0.5)),
        },
        tmp_path / "a.png",
        "t",
    )
    short, long = figures[0].axes[0].lines
    assert short.get_marker() == "o" and list(short.get_ydata()) == [60.0]
    assert long.get_marker() in (None, "None", "")
