"""A user's own data trains end to end: arrays from a notebook with a trusted
clean set, a folder of PNGs, and a tfds dataset outside any list of ours.

Each run is a few steps of a tiny MLP; what is checked is that the data the loop trained on is
exactly the user's: the clean set as given, every training row traced back to its source row.
"""

import json
import os

import numpy as np
import pytest

from l2rw_jax import compose
from l2rw_jax import config as config_lib
from l2rw_jax import train

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _config(dataset, *overrides):
    c = config_lib.default_config()
    c.update(
        {
            "data": dict(
                dataset=dataset,
                noise="none",
                noise_ratio=0.0,
                clean_per_class=0,
                hyper_val_size=0,
                batch_size=8,
                clean_batch_size=4,
                eval_batch_size=32,
            ),
            "model": {"name": "mlp", "options": {"hidden": (8,)}},
            "method": {"name": "l2rw"},
            "num_steps": 3,
            "loop": dict(log_every=1, eval_every=3, checkpoint_every=3, progress_bar=False),
        }
    )
    for o in overrides:
        c.update(o)
    return c


def _digits(n, rng, offset=0):
    """n images of 6x6, class c marked by pixel c (c in 0..2), labels as the class."""
    y = (np.arange(n) + offset) % 3
    x = rng.integers(0, 40, (n, 6, 6), dtype=np.uint8)
    x.reshape(n, 36)[np.arange(n), y] = 255
    return x, y


def _trained_rows(workdir):
    with np.load(os.path.join(workdir, "example_weights.npz")) as f:
        return {k: f[k] for k in f.files}


def test_notebook_arrays_with_a_trusted_clean_set_train_on_exactly_those_rows(tmp_path):
    """save_arrays -> config.data.dataset -> train_and_evaluate, as a notebook would."""
    import l2rw_jax

    rng = np.random.default_rng(0)
    x_train, y_train = _digits(60, rng)
    x_test, y_test = _digits(12, rng)
    # Clean images are marked (pixel 35 = 200) so none can be mistaken for a training row.
    x_clean, y_clean = _digits(9, rng, offset=1)
    x_clean[:, 5, 5] = 200
    y_train_noisy = y_train.copy()
    y_train_noisy[[3, 7, 11]] = (y_train[[3, 7, 11]] + 1) % 3  # The user's own dirty labels.
    source = l2rw_jax.save_arrays(
        tmp_path / "mine.npz",
        x_train,
        y_train_noisy,
        x_test,
        y_test,
        x_clean=x_clean,
        y_clean=y_clean,
        class_names=("zero", "one", "two"),
    )
    config = _config(source)
    workdir = str(tmp_path / "run")
    results = train.train_and_evaluate(config, workdir)
    assert (results["num_train"], results["num_clean"], results["num_test"]) == (60, 9, 12)

    md = compose.member_data(json.load(open(os.path.join(workdir, "config.json"))))
    # The clean set is the given one, row for row, and no training row is in it.
    np.testing.assert_array_equal(md.splits.clean_x[..., 0], x_clean)
    np.testing.assert_array_equal(md.splits.clean_labels, y_clean)
    assert not np.any(md.splits.train_x[:, 5, 5, 0] == 200)
    # Every training row is the user's row source_index, with the user's label (noise="none":
    # the labels as they came).
    weights = _trained_rows(workdir)
    order = np.argsort(weights["source_index"])
    np.testing.assert_array_equal(weights["source_index"][order], np.arange(60))
    np.testing.assert_array_equal(md.splits.train_x[..., 0], x_train[md.splits.train_source_index])
    np.testing.assert_array_equal(
        md.splits.train_labels, y_train_noisy[md.splits.train_source_index]
    )
    # The audit reads this run as one whose ground truth is unknown (noise="none": the user's
    # labels as they came), so label_issues.csv leaves true_label and is_noisy empty.
    run = l2rw_jax.audit.load_run(workdir)
    assert "true_label" not in run["train"] and "is_noisy" not in run["train"]
    assert not {"true_label", "is_noisy"} & set(run["example_weights"])
    # The audit's trusted set is the given clean set, as trained with (the noise section's GLC).
    np.testing.assert_array_equal(run["clean"]["label"], y_clean)
    assert run["clean"]["image"].shape == (len(y_clean),) + run["train"]["image"].shape[1:]


def test_a_drawn_clean_set_is_refused_when_the_data_brings_one(tmp_path):
    import l2rw_jax

    rng = np.random.default_rng(0)
    x, y = _digits(30, rng)
    source = l2rw_jax.save_arrays(
        tmp_path / "mine.npz", x, y, x[:6], y[:6], x_clean=x[:3], y_clean=y[:3]
    )
    workdir = str(tmp_path / "run")
    with pytest.raises(ValueError, match="clean_per_class"):
        train.train_and_evaluate(_config(source, {"data": {"clean_per_class": 1}}), workdir)
    assert not os.path.exists(os.path.join(workdir, "config.json"))


def _write_pngs(root, split, x, y, names):
    from PIL import Image

    for i, (image, label) in enumerate(zip(x, y)):
        folder = os.path.join(root, split, names[label])
        os.makedirs(folder, exist_ok=True)
        Image.fromarray(image, mode="L").save(os.path.join(folder, f"{i:03d}.png"))


def test_a_folder_of_pngs_trains(tmp_path):
    rng = np.random.default_rng(1)
    names = ("cat", "dog", "emu")
    root = str(tmp_path / "images")
    x_train, y_train = _digits(30, rng)
    x_test, y_test = _digits(9, rng)
    x_clean, y_clean = _digits(6, rng)
    for split, x, y in (
        ("train", x_train, y_train),
        ("test", x_test, y_test),
        ("clean", x_clean, y_clean),
    ):
        _write_pngs(root, split, x, y, names)
    workdir = str(tmp_path / "run")
    results = train.train_and_evaluate(_config(f"folder:{root}"), workdir)
    assert (results["num_train"], results["num_clean"], results["num_test"]) == (30, 6, 9)

    md = compose.member_data(json.load(open(os.path.join(workdir, "config.json"))))
    # Rows go class by class, files by name: row r of class c is the r-th PNG written for c.
    expected = np.concatenate([x_train[y_train == c] for c in range(3)])
    np.testing.assert_array_equal(md.splits.train_x[..., 0], expected[md.splits.train_source_index])
    np.testing.assert_array_equal(
        md.splits.clean_x[..., 0], np.concatenate([x_clean[y_clean == c] for c in range(3)])
    )
    assert len(_trained_rows(workdir)["source_index"]) == 30


def test_a_tfds_dataset_outside_any_list_trains(tmp_path):
    """kmnist through tfds's mock (random examples, the real metadata written to data_dir)."""
    import tensorflow_datasets as tfds

    data_dir = str(tmp_path / "tfds")
    builder = tfds.builder("kmnist", data_dir=data_dir)
    os.makedirs(builder.data_dir, exist_ok=True)
    builder.info.write_to_directory(builder.data_dir)  # "Prepared": metadata, mocked examples.
    config = _config(
        "kmnist",
        {
            "data": {
                "data_dir": data_dir,
                "clean_per_class": 1,
                "noise": "uniform",
                "noise_ratio": 0.4,
            },
            "method": {"name": "erm"},
        },
    )
    workdir = str(tmp_path / "run")
    with tfds.testing.mock_data(num_examples=120, data_dir=data_dir):
        results = train.train_and_evaluate(config, workdir)
        md = compose.member_data(json.load(open(os.path.join(workdir, "config.json"))))
    assert md.splits.train_x.shape[1:] == (28, 28, 1)
    assert len(md.splits.clean_labels) == 10  # One per class, drawn from the training pool.
    assert (results["num_train"], results["num_clean"], results["num_test"]) == (110, 10, 120)
    assert md.splits.train_is_noisy.sum() == 44  # floor(0.4 * 110 + 1/2) flipped.
    assert len(_trained_rows(workdir)["source_index"]) == 110


def test_a_benchmark_preset_on_your_npz_takes_your_labels_as_given(tmp_path):
    """experiments/configs/mnist_noisy.py flips 40% of MNIST's labels; pointed at your npz it
    trains on your labels exactly (no row flipped), unless data.corrupt_given_labels."""
    import importlib.util

    rng = np.random.default_rng(0)
    x, y = _digits(60, rng)
    path = str(tmp_path / "mine.npz")
    np.savez(path, x_train=x, y_train=y, x_test=x[:12], y_test=y[:12])
    spec = importlib.util.spec_from_file_location(
        "mnist_noisy", os.path.join(ROOT, "experiments", "configs", "mnist_noisy.py")
    )
    preset = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(preset)
    c = preset.get_config("uniform")
    c.data.update(dataset=f"npz:{path}", clean_per_class=2, hyper_val_size=0)
    md = compose.member_data(c, 0)
    assert not md.splits.train_is_noisy.any()
    np.testing.assert_array_equal(md.splits.train_labels, y[md.splits.train_source_index])
    c.data.corrupt_given_labels = True  # Opted in: the preset's 40% uniform flip.
    flipped = compose.member_data(c, 0).splits.train_is_noisy
    assert flipped.sum() == round(0.4 * len(flipped))


def test_the_your_data_page_block_runs_as_written(tmp_path):
    """docs/your_data.md's first python block, run as a user would, in an empty folder."""
    import re
    import subprocess
    import sys

    with open(os.path.join(ROOT, "docs", "your_data.md")) as f:
        block = re.search(
            r"## My npz with my own clean set.*?```python\n(.*?)```", f.read(), re.S
        ).group(1)
    out = subprocess.run(
        [sys.executable, "-c", block],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=600,
        env=dict(os.environ, PYTHONPATH=ROOT, JAX_PLATFORMS="cpu"),
    )
    assert out.returncode == 0, out.stderr[-3000:]
    assert out.stdout.splitlines()[-1] == "my_data.npz, labels as given 1.0"
    assert "labels as given; the config's synthetic data.noise='uniform'" in out.stderr
    with open(tmp_path / "workdirs" / "my_data" / "results.json") as f:
        assert json.load(f)["num_clean"] == 30
