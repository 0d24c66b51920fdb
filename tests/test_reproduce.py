"""experiments.reproduce: JPEG data, the suites, flags, and the smoke suite end to end (cut-off,
continuation, skip of present parts)."""

import io
import json
import os
import time
import zipfile

import numpy as np
import pytest
from PIL import Image

from experiments import reproduce
from experiments import reproduce_data
from experiments.configs import cifar_background
from experiments.configs import reproduce as suites
from l2rw_jax import config as config_lib

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SHARED_CIFAR = os.path.join(ROOT, "..", "shared", "data", "cifar10_dev")
PARTS = [p.name for p in suites.SUITES["smoke"]]


def _jpeg_npz(path, splits):
    """Writes the cifar10_dev_jpeg.npz layout; ``splits[s] = (images, labels)``."""
    arrays = {}
    for split, (images, labels) in splits.items():
        files = []
        for im in images:
            b = io.BytesIO()
            Image.fromarray(im).save(b, format="JPEG", quality=75)
            files.append(np.frombuffer(b.getvalue(), np.uint8))
        arrays[f"x_{split}_jpeg"] = np.concatenate(files)
        arrays[f"x_{split}_offsets"] = np.concatenate([[0], np.cumsum([len(f) for f in files])])
        arrays[f"y_{split}"] = np.asarray(labels, np.uint8)
    np.savez(path, **arrays)
    return arrays


def _decode_one(arrays, split, i):
    off = arrays[f"x_{split}_offsets"]
    data = arrays[f"x_{split}_jpeg"][off[i] : off[i + 1]].tobytes()
    return np.asarray(Image.open(io.BytesIO(data)).convert("RGB"))


def test_decode_jpeg_npz_cuts_at_the_offsets(tmp_path):
    rng = np.random.default_rng(0)
    # Different sizes of files: an off-by-one in the offsets would break a decode or shift rows.
    images = [
        rng.integers(0, 256, (6, 6, 3), np.uint8) if i % 2 else np.full((6, 6, 3), 40 * i, np.uint8)
        for i in range(5)
    ]
    arrays = _jpeg_npz(
        tmp_path / "j.npz", {"train": (images, [0, 1, 2, 3, 4]), "test": (images[:2], [7, 8])}
    )
    reproduce_data.decode_jpeg_npz(str(tmp_path / "j.npz"), str(tmp_path / "d.npz"))
    with np.load(tmp_path / "d.npz") as d:
        assert sorted(d.files) == ["x_test", "x_train", "y_test", "y_train"]
        assert d["x_train"].shape == (5, 6, 6, 3) and d["x_train"].dtype == np.uint8
        for i in range(5):
            np.testing.assert_array_equal(d["x_train"][i], _decode_one(arrays, "train", i))
        np.testing.assert_array_equal(d["x_test"][1], _decode_one(arrays, "test", 1))
        np.testing.assert_array_equal(d["y_train"], [0, 1, 2, 3, 4])
        # The flat images decode to (nearly) themselves: rows are not shifted.
        assert np.abs(d["x_train"][2].astype(int) - 80).max() <= 2

    bad = dict(arrays, x_train_offsets=arrays["x_train_offsets"][:-1])
    np.savez(tmp_path / "bad.npz", **bad)
    with pytest.raises(ValueError, match="x_train_offsets must rise from 0"):
        reproduce_data.decode_jpeg_npz(str(tmp_path / "bad.npz"), str(tmp_path / "x.npz"))
    assert not os.path.exists(tmp_path / "x.npz")


@pytest.mark.skipif(not os.path.isdir(SHARED_CIFAR), reason="../shared/data not here")
def test_decoded_jpeg_rows_are_the_pixels_of_cifar10_dev(tmp_path):
    """The first 40 test images of the real JPEG copy decode to the rows of cifar10_dev.npz."""
    with np.load(os.path.join(SHARED_CIFAR, "cifar10_dev_jpeg.npz")) as f:
        off = f["x_test_offsets"][:41]
        sub = {
            "x_train_jpeg": f["x_train_jpeg"][: f["x_train_offsets"][1]],
            "x_train_offsets": f["x_train_offsets"][:2],
            "y_train": f["y_train"][:1],
            "x_test_jpeg": f["x_test_jpeg"][: off[-1]],
            "x_test_offsets": off,
            "y_test": f["y_test"][:40],
        }
    np.savez(tmp_path / "sub.npz", **sub)
    reproduce_data.decode_jpeg_npz(str(tmp_path / "sub.npz"), str(tmp_path / "dec.npz"))
    with (
        np.load(os.path.join(SHARED_CIFAR, "cifar10_dev.npz")) as ref,
        np.load(tmp_path / "dec.npz") as dec,
    ):
        np.testing.assert_array_equal(dec["x_test"], ref["x_test"][:40])
        np.testing.assert_array_equal(dec["y_test"], ref["y_test"][:40])


def test_flags_defaults_and_one_line_errors(tmp_path):
    args = reproduce.parse_args([f"--workdir={tmp_path}"])
    assert (args.suite, args.budget_s, args.safety, args.bundle, args.git_commit) == (
        "paper",
        480.0,
        1.15,
        "",
        None,
    )
    assert args.parts == [p.name for p in suites.SUITES["paper"]]
    assert args.results_dir == reproduce.COMMITTED_DIR
    assert args.compilation_cache == os.path.join(str(tmp_path), "jax_cache")
    smoke = reproduce.parse_args(
        ["--suite=smoke", f"--workdir={tmp_path}", "--parts=cifar_uniform", "--compilation_cache="]
    )
    assert (smoke.parts, smoke.results_dir, smoke.compilation_cache) == (
        ["cifar_uniform"],
        os.path.join(str(tmp_path), "results"),
        "",
    )
    for argv, match in (
        (["--parts=mnist_4v9,cifar"], r"unknown part\(s\) \['cifar'\]"),
        (["--budget_s=0"], "--budget_s must be > 0"),
        (["--safety=0.9"], "--safety >= 1"),
        (["--suite=big"], "suite"),
        (["--budget=3"], "budget"),
    ):
        with pytest.raises(ValueError, match=match):
            reproduce.parse_args(argv)
    with pytest.raises(ValueError, match="unknown suite 'big'"):
        suites.get_config("big")
    assert suites.get_config("smoke") is suites.SUITES["smoke"]


def test_scaled_config_compresses_the_paper_schedule():
    base = cifar_background.get_config("cifar10")
    c = suites.scaled_config(base, 8000)
    assert (
        c.num_steps,
        tuple(c.optim.lr_boundaries),
        c.loop.eval_every,
        c.loop.checkpoint_every,
    ) == (8000, (4000, 6000), 800, 8000)
    assert base.num_steps == 80000  # not changed in place


def test_paper_programs_are_the_papers_recipes():
    """Every program of the paper suite validates, with the recipe the issue names."""
    parts = {p.name: p for p in suites.SUITES["paper"]}
    assert list(parts) == ["mnist_4v9", "cifar_background", "cifar_uniform"]
    mnist = parts["mnist_4v9"]
    base = mnist.base("mnist.npz")
    configs = {
        (m, f): suites.program_config(mnist, base, m, f)
        for f in mnist.fractions
        for m in mnist.methods
    }
    assert {m for m, _ in configs} == {
        "erm",
        "random",
        "proportion",
        "resample",
        "hard_mining",
        "l2rw",
        "mwnet",
        "recommended",
    }
    assert mnist.fractions == (0.995, 0.99, 0.98, 0.95, 0.9)
    for (m, f), c in configs.items():
        assert (c.data.majority_fraction, c.num_steps, c.num_seeds, c.model.name) == (
            f,
            8000,
            5,
            "lenet",
        )
        assert c.loop.vmap_seeds and c.loop.backend == "device" and c.data.noise == "imbalance"
        assert c.data.batch_size == (500 if m == "hard_mining" else 100)
        assert c.method.name == ("l2rw" if m == "recommended" else m)
    paper = configs["l2rw", 0.995].method.l2rw
    assert {k: paper[k] for k in config_lib.PAPER_L2RW} == config_lib.PAPER_L2RW
    assert paper.lookahead == "sgd" and configs["l2rw", 0.995].data.pixel_scale == "unit"
    rec = configs["recommended", 0.995]
    assert (
        rec.method.name,
        rec.method.l2rw.weight_map,
        rec.method.l2rw.meta_params,
        rec.method.l2rw.lookahead,
    ) == ("l2rw", "sign", "last", "optimizer")
    for name, noise, clean in (
        ("cifar_background", "background", 10),
        ("cifar_uniform", "uniform", 100),
    ):
        part = parts[name]
        assert list(part.methods) == ["erm", "l2rw", "recommended", "proportion"]
        c = suites.program_config(part, suites.scaled_config(part.base("c.npz"), 4000), "l2rw")
        assert (
            c.data.noise,
            c.data.noise_ratio,
            c.data.clean_per_class,
            c.model.name,
            c.num_seeds,
        ) == (noise, 0.4, clean, "resnet32", 3)
        assert (
            c.num_steps,
            tuple(c.optim.lr_boundaries),
            c.optim.weight_decay,
            c.data.augment,
        ) == (4000, (2000, 3000), 2e-4, True)
        assert c.method.l2rw.weight_map == "clip" and c.loop.backend == "device"


# ----------------------------------------------------------------------------- the smoke run


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory):
    """Synthetic stand-ins for .carry/: mnist.npz (8x8 digits) and cifar10_dev_jpeg.npz."""
    d = tmp_path_factory.mktemp("carry")
    rng = np.random.default_rng(0)

    def digits(counts):
        y = np.repeat(np.arange(10), counts)
        x = rng.integers(0, 60, (len(y), 8, 8)).astype(np.uint8)
        x.reshape(len(y), 64)[np.arange(len(y)), 5 * y] = 255  # learnable: one bright pixel
        return x, y.astype(np.uint8)

    counts = np.full(10, 10)
    counts[[4, 9]] = 260  # 4 vs 9 at p = 0.99 of N = 200 needs 198 nines + 5 clean
    (xt, yt), (xs, ys) = digits(counts), digits(np.full(10, 12))
    np.savez(d / "mnist.npz", x_train=xt, y_train=yt, x_test=xs, y_test=ys)

    def colour(n):
        y = np.arange(n) % 10
        x = rng.integers(0, 80, (n, 8, 8, 3)).astype(np.uint8)
        x[np.arange(n), y % 8, :, y % 3] = 250
        return list(x), y

    _jpeg_npz(d / "cifar10_dev_jpeg.npz", {"train": colour(400), "test": colour(100)})
    return str(d)


class _ClockAfter:
    """Real time until ``path`` exists, then 10^6 s later: every budget is spent there."""

    def __init__(self, path):
        self.path = path

    def __call__(self):
        return time.monotonic() + (1e6 if os.path.exists(self.path) else 0.0)


_FIELDS = {
    "suite",
    "part",
    "title",
    "status",
    "device",
    "versions",
    "command",
    "git_commit",
    "budget_s",
    "wall_time_s",
    "plan",
    "programs",
    "paper",
    "protocol",
    "notes",
}


def _check_part_files(results, name, status="complete"):
    with open(os.path.join(results, f"reproduce_{name}.json")) as f:
        record = json.load(f)
    assert _FIELDS <= set(record) and record["suite"] == "smoke" and record["part"] == name
    assert record["status"] == status
    assert record["device"]["platform"] == "cpu" and record["versions"]["jax"]
    assert record["command"].startswith("python -m experiments.reproduce --suite=smoke")
    with open(os.path.join(results, f"reproduce_{name}.md")) as f:
        md = f.read()
    assert f"Status: **{status}**" in md and "Command: `python -m experiments.reproduce" in md
    assert "Versions: python" in md and "wall time" in md and "Paper:" in md
    with Image.open(os.path.join(results, f"reproduce_{name}.png")) as im:
        assert im.format == "PNG" and im.size[0] > 100
    return record


def test_smoke_suite_cut_off_continue_and_skip(data_dir, tmp_path, capsys):
    work, results = str(tmp_path / "work"), str(tmp_path / "results")
    bundle = str(tmp_path / "out" / "bundle.zip")
    argv = [
        "--suite=smoke",
        f"--data_dir={data_dir}",
        f"--workdir={work}",
        f"--results_dir={results}",
        "--compilation_cache=",
        f"--bundle={bundle}",
    ]
    mnist_json = os.path.join(results, "reproduce_mnist_4v9.json")

    # 1. Time runs out once the first program is written: it stays, the rest is skipped with
    #    notes, program by program and part by part.
    rec = reproduce.run_suite(argv + ["--budget_s=3600"], clock=_ClockAfter(mnist_json))
    out = capsys.readouterr().out
    assert "Plan for mnist_4v9" in out and "| method" in out and "estimate_s" in out
    assert [(p["part"], p["status"]) for p in rec["parts"]] == [
        ("mnist_4v9", "partial"),
        ("cifar_background", "skipped"),
        ("cifar_uniform", "skipped"),
    ]
    assert sum("not run: " in n for n in rec["parts"][0]["notes"]) == 3
    assert all("not started" in p["notes"][0] for p in rec["parts"][1:])
    first = _check_part_files(results, "mnist_4v9", "partial")["programs"]
    assert [(p["method"], p["majority_fraction"]) for p in first] == [("erm", 0.99)]
    assert not any(os.path.exists(os.path.join(results, f"reproduce_{n}.json")) for n in PARTS[1:])

    # 2. A new window continues the partial part (keeping what it has) and runs the others.
    rec = reproduce.run_suite(argv + ["--budget_s=3600"])
    out = capsys.readouterr().out
    assert [(p["part"], p["status"]) for p in rec["parts"]] == [
        ("mnist_4v9", "complete"),
        ("cifar_background", "complete"),
        ("cifar_uniform", "complete"),
    ]
    mnist = _check_part_files(results, "mnist_4v9")
    assert mnist["programs"][0] == first[0]
    cells = {(p["method"], p["majority_fraction"]) for p in mnist["programs"]}
    assert cells == {(m, f) for m in ("erm", "l2rw") for f in (0.99, 0.9)}
    for p in mnist["programs"]:
        assert p["num_steps"] == 40 and p["seeds"] == [0, 1]
        assert p["config"]["loop"]["vmap_seeds"] and p["config"]["num_seeds"] == 2
        np.testing.assert_allclose(
            p["test_error_pct"]["per_seed"],
            100 * (1 - np.array(p["final_test_accuracy"]["per_seed"])),
        )
    l2rw = next(p for p in mnist["programs"] if p["method"] == "l2rw")
    assert l2rw["config"]["method"]["l2rw"]["weight_map"] == "clip"  # the paper's rule
    assert "probe: erm" in out and "Plan for cifar_background" in out
    bg = _check_part_files(results, "cifar_background")
    # Ample budget: the largest step count, the schedule (40, 60 of 80) scaled to it.
    assert [p["method"] for p in bg["programs"]] == ["erm", "l2rw", "proportion"]
    for p in bg["programs"]:
        assert p["num_steps"] == 40 and p["config"]["optim"]["lr_boundaries"] == [20, 30]
        assert p["config"]["data"]["noise"] == "background"
        assert len(p["curve"]["test_accuracy_per_seed"]) == 2
    assert bg["paper"]["values"] == {"erm": 59.54, "l2rw": 86.73}
    uni = _check_part_files(results, "cifar_uniform")
    assert {p["config"]["data"]["noise"] for p in uni["programs"]} == {"uniform"}
    mtimes = {f: os.path.getmtime(os.path.join(results, f)) for f in os.listdir(results)}

    # 3. Everything present: nothing is trained or rewritten but the run log.
    rec = reproduce.run_suite(argv + ["--budget_s=1"])
    assert [p["status"] for p in rec["parts"]] == ["present"] * 3
    assert {f for f, t in mtimes.items() if os.path.getmtime(os.path.join(results, f)) != t} == {
        "reproduce_run.json"
    }
    assert not [f for f in os.listdir(results) if f.startswith(".") or ".tmp" in f]
    with zipfile.ZipFile(bundle) as z:
        assert sorted(z.namelist()) == sorted(os.listdir(results))


def _smoke_argv(data_dir, tmp_path):
    return [
        "--suite=smoke",
        f"--data_dir={data_dir}",
        f"--workdir={tmp_path / 'work'}",
        f"--results_dir={tmp_path / 'results'}",
        "--compilation_cache=",
        f"--bundle={tmp_path / 'out' / 'bundle.zip'}",
    ]


def test_probes_are_bounded_by_the_budget(data_dir, tmp_path):
    """A budget of 2 s ends inside the first probe (start-up and compilation alone take
    longer): the probe is cut, recorded, and nothing else runs."""
    import jax

    # Earlier tests in this process may have compiled the same steps: compile afresh, as a
    # new process does, so that the probe cannot finish within the budget.
    jax.clear_caches()
    t0 = time.monotonic()
    rec = reproduce.run_suite(_smoke_argv(data_dir, tmp_path) + ["--budget_s=2"])
    assert time.monotonic() - t0 < 2 + 30  # the budget, then the cut call and the file writes
    first = rec["parts"][0]
    assert first["status"] == "skipped"
    if first["probes"]:  # The probe started within the budget: it is cut and recorded.
        assert "cut_after_s" in first["probes"]["erm"]
        assert any(n.startswith("probe of erm cut by the budget") for n in first["notes"])
    else:  # A loaded machine spent the 2 s before the first probe began: none is started.
        spent = ("not probed (budget spent): erm", "not started:")
        assert any(n.startswith(spent) for n in first["notes"]), first["notes"]
    assert all(p["status"] == "skipped" for p in rec["parts"][1:])
    with zipfile.ZipFile(tmp_path / "out" / "bundle.zip") as z:
        assert json.loads(z.read("reproduce_run.json"))["parts"] == rec["parts"]


def test_sigterm_writes_what_finished_into_the_bundle_and_exits(data_dir, tmp_path):
    import signal
    import subprocess
    import sys

    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "experiments.reproduce",
            *_smoke_argv(data_dir, tmp_path),
            "--budget_s=3600",
        ],
        cwd=ROOT,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        env=dict(os.environ, JAX_PLATFORMS="cpu"),
    )
    run_json = tmp_path / "results" / "reproduce_run.json"
    try:
        deadline = time.monotonic() + 240
        while time.monotonic() < deadline and proc.poll() is None:
            running = (json.loads(run_json.read_text()) if run_json.exists() else {}).get(
                "running"
            ) or {}
            if "wall_s" in running.get("probes", {}).get("erm", {}):  # a probe has finished
                break
            time.sleep(0.2)
        assert proc.poll() is None, proc.communicate()[0][-3000:]
        proc.send_signal(signal.SIGTERM)
        out = proc.communicate(timeout=60)[0]
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == 128 + signal.SIGTERM, out[-3000:]
    assert "Interrupted (SIGTERM)" in out
    with zipfile.ZipFile(tmp_path / "out" / "bundle.zip") as z:
        record = json.loads(z.read("reproduce_run.json"))
    assert record["interrupted"].startswith("SIGTERM after ")
    erm = record["running"]["probes"]["erm"]
    assert record["running"]["part"] == "mnist_4v9" and erm["majority_fraction"] == 0.99
    assert erm["wall_s"] > 0 and erm["step_s"] > 0 and erm["steps"] > 0
