"""train_and_evaluate: every method, resume after a kill, vmapped seeds, configs, the workdir."""

import importlib.util
import json
import os
import subprocess
import sys

import chex
import jax
import ml_collections
import numpy as np
import orbax.checkpoint as ocp
import pytest
from absl import flags
from ml_collections import config_flags

import tiny_data
from l2rw_jax import compose
from l2rw_jax import config as config_lib
from l2rw_jax import members
from l2rw_jax import results as results_lib
from l2rw_jax import train

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
NUM_CLASSES, STEPS, B = 10, 6, 8


@pytest.fixture(scope="module")
def npz(tmp_path_factory):
    """A tiny learnable 10-class dataset of 8x8 images (class c: a bright pixel c, plus noise)."""
    return tiny_data.write_tiny_npz(str(tmp_path_factory.mktemp("data") / "tiny.npz"))


def _config(npz, *overrides):
    """The tests' tiny config (tiny_data.tiny_config) with this file's model, learning rate,
    steps and logging, then each of ``overrides``."""
    base = {
        "data": {"batch_size": B, "clean_batch_size": B},
        "model": {"options": {"hidden": (16,)}},
        "method": {"name": "l2rw"},
        "optim": {"learning_rate": 0.1},
        "num_steps": STEPS,
        "loop": dict(log_every=2, eval_every=3, checkpoint_every=2),
    }
    return tiny_data.tiny_config(npz, base, *overrides)


def _final_params(workdir):
    manager = ocp.CheckpointManager(os.path.join(workdir, "checkpoints"))
    carry = manager.restore(
        manager.latest_step(), args=ocp.args.Composite(carry=ocp.args.StandardRestore())
    ).carry
    manager.close()
    return carry[0]["params"]


def _weights(path):
    with np.load(path) as z:
        return {k: z[k] for k in z.files}


def _records(workdir):
    with open(os.path.join(workdir, "metrics.jsonl")) as f:
        return [{k: v for k, v in json.loads(line).items() if k != "steps_per_s"} for line in f]


# Weighing methods normalise each step's weights to sum 1 (or all 0), so the per-example
# weight sums add up to the number of non-zero steps.
@pytest.mark.parametrize("method", config_lib.METHODS)
def test_every_method_trains_and_records_its_weights(npz, tmp_path, method):
    finetune = 2 if method == "finetune" else 0
    config = _config(npz, {"method": {"name": method, "finetune_steps": finetune}, "num_seeds": 2})
    results = train.train_and_evaluate(config, str(tmp_path))

    assert results["completed"] and results["num_steps"] == STEPS + finetune
    assert results["seeds"] == [0, 1] and results["num_hyperval"] == 20
    for s in (0, 1):
        w = _weights(tmp_path / f"example_weights_seed{s}.npz")
        n = results["num_train"]
        assert all(
            w[k].shape == (n,)
            for k in (
                "index",
                "mean_weight",
                "count",
                "is_noisy",
                "label",
                "true_label",
                "source_index",
            )
        )
        np.testing.assert_array_equal(w["index"], np.arange(n))
        noisy_steps = 0 if method == "clean_only" else STEPS
        assert int(w["count"].sum()) == noisy_steps * B
        zero_steps = results["all_zero_steps"][s]
        np.testing.assert_allclose(w["weight_sum"].sum(), noisy_steps - zero_steps, rtol=1e-5)
        assert np.all(w["mean_weight"] >= 0)
        # The running sums behind the data map: squares and non-zero draws per example.
        seen = w["count"] > 0
        assert all(
            w[k].shape == (n,)
            for k in ("weight_sq_sum", "nonzero_count", "weight_std", "nonzero_share")
        )
        assert np.all(w["nonzero_count"] <= w["count"])
        np.testing.assert_allclose(
            w["nonzero_share"][seen], w["nonzero_count"][seen] / w["count"][seen], rtol=1e-6
        )
        assert np.isnan(w["weight_std"][~seen]).all() and np.all(w["weight_std"][seen] >= 0)
        if method in ("erm", "resample", "finetune"):
            np.testing.assert_allclose(w["mean_weight"][seen], 1.0 / B, rtol=1e-6)
            # Every draw weighs 1 / B: no spread, every draw non-zero.
            np.testing.assert_array_equal(w["weight_std"][seen], 0.0)
            np.testing.assert_array_equal(w["nonzero_share"][seen], 1.0)
            np.testing.assert_allclose(w["weight_sq_sum"], w["count"] / B**2, rtol=1e-6)
        np.testing.assert_array_equal(w["is_noisy"], w["label"] != w["true_label"])
        assert ("mean_meta_grad" in w) == (method == "l2rw")
        # The trajectory: 16 bins over the weighing (noisy) phase's steps, adding up to the
        # running sums; 6 steps fill 6 bins (t * 16 // 6), the others drew nothing.
        bins = w["weight_bin_count"]
        assert bins.shape == w["weight_bin_sum"].shape == (16, n)
        np.testing.assert_array_equal(w["weight_bin_edges"], members.history_edges(16, STEPS))
        np.testing.assert_array_equal(bins.sum(axis=0), w["count"])
        np.testing.assert_allclose(
            w["weight_bin_sum"].sum(axis=0), w["weight_sum"], rtol=1e-5, atol=1e-7
        )
        filled = sorted({t * 16 // STEPS for t in range(STEPS)})
        assert np.flatnonzero(bins.sum(axis=1)).tolist() == ([] if not noisy_steps else filled)
        assert (bins.sum(axis=1)[filled] == (B if noisy_steps else 0)).all()
    member0 = _weights(tmp_path / "example_weights.npz")
    np.testing.assert_array_equal(
        member0["weight_sum"], _weights(tmp_path / "example_weights_seed0.npz")["weight_sum"]
    )
    steps = sorted({r["step"] for r in _records(str(tmp_path)) if r["split"] == "test"})
    assert steps == [3, 6] + ([8] if finetune else [])


def test_l2rw_records_the_meta_gradient_its_weights_are_made_of(npz, tmp_path):
    # One step of the paper's L2RW: every drawn example is seen once, so its mean_meta_grad is
    # its g_i / rms(g) and its weight must be max(-g_i, 0) / sum_k max(-g_k, 0).
    config = _config(
        npz,
        {
            "method": {"name": "l2rw", "l2rw": config_lib.PAPER_L2RW},
            "num_steps": 1,
            "loop": dict(eval_every=1, checkpoint_every=1, log_every=1),
        },
    )
    train.train_and_evaluate(config, str(tmp_path))
    w = _weights(tmp_path / "example_weights.npz")
    seen = w["count"] > 0
    assert seen.sum() == B and w["count"].max() == 1
    g_B = w["mean_meta_grad"][seen]
    assert np.all(w["mean_meta_grad"][~seen] == 0)
    np.testing.assert_allclose(np.mean(g_B**2), 1.0, rtol=1e-5)  # divided by the batch RMS
    clipped_B = np.maximum(-g_B, 0.0)
    assert 0 < np.count_nonzero(clipped_B) < B  # the clip matters in this check
    np.testing.assert_allclose(
        w["mean_weight"][seen], clipped_B / clipped_B.sum(), rtol=1e-5, atol=1e-7
    )
    # One draw each: no spread; non-zero exactly where the clip kept the meta-gradient.
    np.testing.assert_array_equal(w["weight_std"][seen], 0.0)
    np.testing.assert_array_equal(w["nonzero_count"][seen], (clipped_B > 0).astype(int))
    np.testing.assert_allclose(w["weight_sq_sum"][seen], w["mean_weight"][seen] ** 2, rtol=1e-6)


def test_a_run_checkpointed_without_the_trajectory_resumes_without_it(npz, tmp_path, monkeypatch):
    # A checkpoint of the layout before the trajectory was kept: the run resumes from it and
    # its record has no trajectory (absent, not a partial one), the running sums complete.
    from l2rw_jax import build

    config = _config(npz, {"method": {"name": "erm"}})
    build_run = train.build_run

    def old_layout(*args, **kwargs):
        run = build_run(*args, **kwargs)
        return run._replace(carry0=build.without_history(run.carry0))

    monkeypatch.setattr(train, "build_run", old_layout)
    stopped = train.train_and_evaluate(
        _config(npz, {"method": {"name": "erm"}, "loop": {"stop_after_steps": 3}}), str(tmp_path)
    )
    assert (stopped["completed"], stopped["step"]) == (False, 3)
    monkeypatch.setattr(train, "build_run", build_run)
    results = train.train_and_evaluate(config, str(tmp_path))
    assert results["completed"]
    w = _weights(tmp_path / "example_weights.npz")
    assert int(w["count"].sum()) == STEPS * B and not [k for k in w if "bin" in k]


def test_balanced_rows_and_hold_out_are_exact_and_seeded():
    labels = np.array([0] * 7 + [1] * 2 + [3] * 4)
    rows = members.balanced_rows(labels, 4, seed=0)
    assert np.bincount(labels[rows], minlength=4).tolist() == [7, 7, 0, 7]
    assert set(rows[labels[rows] == 1]) == {7, 8}  # every row of a class is used
    np.testing.assert_array_equal(rows, members.balanced_rows(labels, 4, seed=0))

    from l2rw_jax import corruption

    rng = np.random.default_rng(0)
    x = rng.integers(0, 255, (60, 4, 4, 1)).astype(np.uint8)
    y = np.arange(60) % 3
    splits = corruption.make_splits(
        x, y, x[:9], y[:9], num_classes=3, noise="uniform", ratio=0.5, clean_per_class=2, seed=4
    )
    kept, held = members.hold_out(splits, 10, seed=4)
    assert len(kept.train_labels) == len(splits.train_labels) - 10
    assert len(held.test_labels) == 10
    union = np.concatenate([kept.train_source_index, held.test_source_index])
    np.testing.assert_array_equal(np.sort(union), np.sort(splits.train_source_index))
    # Held-out rows keep their observed (noisy) labels.
    rows = np.searchsorted(splits.train_source_index, held.test_source_index)
    np.testing.assert_array_equal(held.test_labels, splits.train_labels[rows])
    again, _ = members.hold_out(splits, 10, seed=4)
    np.testing.assert_array_equal(again.train_source_index, kept.train_source_index)
    with pytest.raises(ValueError, match="hyper_val_size"):
        members.hold_out(splits, len(splits.train_labels), seed=4)


@pytest.fixture(scope="module")
def resumed(npz, tmp_path_factory):
    """An uninterrupted run, and a run killed after step 7 (last checkpoint: 6) then resumed.

    L2RW with the robust options: the per-example memory lives in the checkpointed state. The
    device-resident input with augmentation: its draws are keyed by (seed, step, row)."""
    base = {
        "method": {
            "name": "l2rw",
            "l2rw": dict(
                memory_decay=0.5,
                warmup_steps=2,
                weight_map="sign",
                normalize="class",
                meta_params="last",
            ),
        },
        "num_seeds": 2,
        "num_steps": 8,
        "data": {"augment": True},
        "loop": dict(checkpoint_every=3, log_every=1, backend="device"),
    }
    full = str(tmp_path_factory.mktemp("full"))
    killed = str(tmp_path_factory.mktemp("killed"))
    results_full = train.train_and_evaluate(_config(npz, base), full)
    stopped = train.train_and_evaluate(
        _config(npz, base, {"loop": {"stop_after_steps": 7}}), killed
    )
    # What a kill leaves: a torn last line and an unfinished checkpoint directory.
    with open(os.path.join(killed, "metrics.jsonl"), "a") as f:
        f.write('{"step": 7, "split": "tr')
    os.makedirs(os.path.join(killed, "checkpoints", "7.orbax-checkpoint-tmp-1234"))
    results_resumed = train.train_and_evaluate(_config(npz, base), killed)
    return dict(
        full=full,
        killed=killed,
        results_full=results_full,
        stopped=stopped,
        results_resumed=results_resumed,
        config=_config(npz, base),
    )


def test_resume_after_kill_matches_uninterrupted_run(resumed):
    stopped = resumed["stopped"]
    assert (stopped["completed"], stopped["step"]) == (False, 7)
    # Calls end at checkpoints (3, 6) and the stop (7): [0, 3) and [6, 7) compile.
    assert stopped["timed_steps"] == 3
    assert set(stopped["timing_s"]) == {"first_step_s", "train_loop_s", "eval_s", "checkpoint_s"}
    full, resumed_results = resumed["results_full"], resumed["results_resumed"]
    volatile = {"wall_time_s", "steps_per_s", "timing_s", "config"}
    assert {k: v for k, v in full.items() if k not in volatile} == {
        k: v for k, v in resumed_results.items() if k not in volatile
    }
    assert _records(resumed["full"]) == _records(resumed["killed"])
    for name in ("example_weights_seed0.npz", "example_weights_seed1.npz"):
        a = _weights(os.path.join(resumed["full"], name))
        b = _weights(os.path.join(resumed["killed"], name))
        # (NaN where never drawn: weight_std, nonzero_share.)
        assert set(a) == set(b) and all(
            np.array_equal(a[k], b[k], equal_nan=a[k].dtype.kind == "f") for k in a
        )
        # The memory survived the kill: every example drawn in the 8 steps has a value.
        seen = a["count"] > 0
        assert np.all(a["meta_grad_memory"][seen] != 0) and np.all(
            a["meta_grad_memory"][~seen] == 0
        )
    jax.tree.map(
        np.testing.assert_array_equal,
        _final_params(resumed["full"]),
        _final_params(resumed["killed"]),
    )
    assert sorted(os.listdir(os.path.join(resumed["killed"], "checkpoints"))) == ["3", "6", "8"]
    assert any(
        f.startswith("events.out.tfevents")
        for f in os.listdir(os.path.join(resumed["killed"], "tb"))
    )
    # A finished run is not trained again.
    again = train.train_and_evaluate(resumed["config"], resumed["killed"])
    assert again == resumed_results


def test_results_json_schema(resumed):
    with open(os.path.join(resumed["killed"], "results.json")) as f:
        r = json.load(f)
    assert r == resumed["results_resumed"]
    stats_keys = {"per_seed", "mean", "ci95", "ci95_low", "ci95_high"}
    for key in (
        "final_test_accuracy",
        "best_test_accuracy",
        "selected_test_accuracy",
        "final_test_loss",
        "final_hyperval_accuracy",
    ):
        assert set(r[key]) == stats_keys and len(r[key]["per_seed"]) == 2
        assert (
            r[key]["ci95_low"] < r[key]["mean"] < r[key]["ci95_high"]
            or r[key]["per_seed"][0] == r[key]["per_seed"][1]
        )
    assert r["method"] == "l2rw" and r["seeds"] == [0, 1] and r["num_seeds"] == 2
    assert r["config"]["num_steps"] == 8 and r["config"]["method"]["name"] == "l2rw"
    assert len(r["per_class_accuracy"]["per_seed"]) == 2
    assert len(r["per_class_accuracy"]["mean"]) == r["num_classes"] == NUM_CLASSES
    assert r["num_train"] + r["num_hyperval"] + r["num_clean"] == 400
    assert r["num_test"] == 100 and len(r["best_step"]) == 2
    assert r["background_class"] == [None, None]  # uniform flip
    assert r["wall_time_s"] > 0 and r["steps_per_s"] > 0 and r["completed"] is True
    assert all(0 <= a <= 1 for a in r["final_test_accuracy"]["per_seed"])
    # The 95% interval: mean +- t_{0.975, K-1} s / sqrt(K); t_{0.975, 1} = 12.7062.
    ci = results_lib.mean_ci95([0.5, 0.7])
    np.testing.assert_allclose(
        ci["ci95"], 12.7062 * np.std([0.5, 0.7], ddof=1) / np.sqrt(2), rtol=1e-4
    )
    assert results_lib.mean_ci95([0.5])["ci95"] is None


def test_seeds_in_one_step_and_data_parallel_equal_separate_runs(npz, tmp_path):
    base = {
        "method": {"name": "l2rw"},
        "num_steps": 4,
        "loop": {"checkpoint_every": 4, "eval_every": 4},
    }
    runs = {}
    variants = {
        "vmap": {"num_seeds": 2},
        "loop": {"num_seeds": 2, "loop": {"vmap_seeds": False}},
        # Data parallel: each batch split over 2 of the 4 fake CPU devices.
        "mesh2": {"num_seeds": 2, "loop": {"num_devices": 2}},
        "seed0": {"seed": 0},
        "seed1": {"seed": 1},
    }
    for name, kw in variants.items():
        runs[name] = (
            train.train_and_evaluate(_config(npz, base, kw), str(tmp_path / name)),
            _final_params(str(tmp_path / name)),
        )
    for name in ("vmap", "loop", "mesh2"):
        results, params = runs[name]
        for k, single in enumerate(("seed0", "seed1")):
            r1, p1 = runs[single]
            jax.tree.map(lambda a, b: np.testing.assert_allclose(a[k], b[0], atol=1e-6), params, p1)
            np.testing.assert_allclose(
                results["final_test_loss"]["per_seed"][k],
                r1["final_test_loss"]["per_seed"][0],
                rtol=1e-6,
            )
            a = _weights(tmp_path / name / f"example_weights_seed{k}.npz")
            b = _weights(tmp_path / single / "example_weights.npz")
            np.testing.assert_allclose(a["weight_sum"], b["weight_sum"], atol=1e-6)
            for key in ("count", "label", "true_label", "source_index"):
                np.testing.assert_array_equal(a[key], b[key])


@pytest.mark.parametrize(
    "variant",
    [
        # vmapped seeds, batches on 2 devices
        {"method": {"name": "l2rw"}, "num_seeds": 2, "loop": {"num_devices": 2}},
        {
            "method": {"name": "finetune", "finetune_steps": 3},
            "loop": {"vmap_seeds": False},
            "num_seeds": 2,
        },
        # The oracle's row tables differ in length between the vmapped members.
        {
            "method": {"name": "oracle"},
            "num_seeds": 2,
            "data": {"noise": "pair", "noise_ratio": 0.45},
        },
        # A convolutional model: on CPU its device calls dispatch step by step (no scan).
        {
            "method": {"name": "resample"},
            "model": {
                "name": "small_cnn",
                "options": {"channels": (4,), "hidden": 8, "batch_norm": True},
            },
        },
    ],
)
def test_device_and_tfdata_backends_train_identically(npz, tmp_path, variant):
    # Without augmentation the two backends feed the same examples, bit for bit (same order,
    # same float32 normalisation), and on CPU the scanned (or dispatched) steps compute what
    # the per-step calls compute: identical parameters, metrics and recorded weights.
    runs, variant = {}, dict(variant)
    model = variant.pop("model", None)
    for backend in ("tfdata", "device"):
        config = _config(npz, variant, {"loop": {"backend": backend, "steps_per_call": 4}})
        if model is not None:  # replaced: its options are not merged into the MLP's
            config.model = ml_collections.ConfigDict(model)
        runs[backend] = (
            train.train_and_evaluate(config, str(tmp_path / backend)),
            _final_params(str(tmp_path / backend)),
            _records(tmp_path / backend),
            _weights(tmp_path / backend / "example_weights.npz"),
        )
    (r_tf, p_tf, m_tf, w_tf), (r_dev, p_dev, m_dev, w_dev) = runs["tfdata"], runs["device"]
    chex.assert_trees_all_equal(p_dev, p_tf)
    assert m_dev == m_tf
    chex.assert_trees_all_equal(w_dev, w_tf)
    assert r_dev["final_test_accuracy"] == r_tf["final_test_accuracy"]
    assert (r_dev["config"]["loop"]["backend"], r_tf["config"]["loop"]["backend"]) == (
        "device",
        "tfdata",
    )


def test_bad_configs_fail_before_any_work(npz, tmp_path):
    workdir = tmp_path / "run"
    for bad, match in [
        ({"num_stepz": 3}, r"num_stepz"),
        ({"data": {"batchsize": 3}}, r"data\.batchsize"),
        ({"batch_size": 3}, r"moved: \{'batch_size': 'data\.batch_size'\}"),
        ({"method": {"name": "mentornet"}}, "method.name='mentornet'"),
        ({"method": {"name": "finetune"}}, "method.finetune_steps"),
        ({"model": {"name": "vgg"}}, "vgg"),
        ({"data": {"noise_ratio": 1.5}}, "ratio"),
        ({"data": {"batch_size": 0}}, "data.batch_size must be"),
        ({"optim": {"lr_boundaries": (5, 2)}}, "optim.lr_boundaries"),
        ({"method": {"l2rw": {"mode": "sideways"}}}, "sideways"),
        ({"method": {"l2rw": {"memory_decay": 1.0}}}, "memory_decay"),
        ({"method": {"l2rw": {"normalize": "global"}}}, "global"),
        ({"data": {"pixel_scale": "minmax"}}, "data.pixel_scale"),
        ({"loop": {"backend": "tpu"}}, "loop.backend"),
        ({"loop": {"steps_per_call": 0}}, "loop.steps_per_call"),
        ({"data": {"dataset": "imagenet"}}, "imagenet"),
        ({"data": {"batch_size": 6}, "loop": {"num_devices": 4}}, "divisible"),
    ]:
        cfg = _config(npz, bad)  # update() adds unknown keys: validation must refuse them
        with pytest.raises(ValueError, match=match):
            train.train_and_evaluate(cfg, str(workdir))
        assert not workdir.exists()
    short = {"num_steps": 2, "loop": {"eval_every": 2}}
    train.train_and_evaluate(_config(npz, short), str(workdir))
    with pytest.raises(ValueError, match=r"different config.*optim\.learning_rate"):
        train.train_and_evaluate(
            _config(npz, short, {"optim": {"learning_rate": 0.3}}), str(workdir)
        )


def test_unit_pixel_scale_feeds_raw_pixels_over_255(npz):
    md = compose.member_data(_config(npz, {"data": {"pixel_scale": "unit"}}))
    np.testing.assert_array_equal(md.mean, [0.0])
    np.testing.assert_array_equal(md.std, [1.0])
    standard = compose.member_data(_config(npz))
    assert 0.1 < float(standard.mean[0]) < 0.5 and float(standard.std[0]) > 0.05


def _load_config_module(name):
    spec = importlib.util.spec_from_file_location(
        name, os.path.join(ROOT, "experiments", "configs", f"{name}.py")
    )
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.mark.parametrize(
    "name, args",
    [
        ("quickstart", [()]),
        ("mnist_imbalance", [(p,) for p in ("0.9", "0.95", "0.98", "0.99")]),
        ("mnist_noisy", [("uniform",), ("background",)]),
        ("cifar_uniform", [("cifar10",), ("cifar100",), ("dev",)]),
        ("cifar_background", [("cifar10",), ("cifar100",), ("dev",)]),
        (
            "cifar_noise",
            [
                ("pair45",),
                ("asymmetric40",),
                ("cifar10n_worse",),
                ("cifar10n_aggre",),
                ("cifar10n_random1",),
                ("cifar100n",),
            ],
        ),
        ("robust_protocol", [("cifar10_dev",), ("mnist",)]),
        (
            "protocol",
            [
                ("digits_uniform40",),
                ("mnist_mlp_uniform40",),
                ("mnist_mlp_background40",),
                ("cifar_fit_uniform40",),
            ],
        ),
    ],
)
def test_preset_configs_are_valid(name, args, monkeypatch):
    monkeypatch.setenv("L2RW_DEV_DATA", "/dev-copies")  # The dev variants read it (dev_data.py).
    module = _load_config_module(name)
    assert "python -m experiments." in module.__doc__ and "Expected" in module.__doc__
    for a in args:
        config = config_lib.validate(module.get_config(*a))
        assert (
            config_lib.flatten(config.to_dict()).keys()
            == config_lib.flatten(config_lib.default_config().to_dict()).keys()
        )
    if name != "quickstart":
        with pytest.raises(ValueError):
            module.get_config("nonsense")
    if name in ("mnist_imbalance", "mnist_noisy", "cifar_uniform", "cifar_background"):
        assert module.get_config(*args[0]).data.dataset in ("mnist", "cifar10")  # Real sources.


@pytest.mark.parametrize(
    "name, arg",
    [("cifar_uniform", "dev"), ("cifar_background", "dev"), ("robust_protocol", "mnist")],
)
def test_development_copies_come_from_the_environment(name, arg, monkeypatch):
    module = _load_config_module(name)
    monkeypatch.delenv("L2RW_DEV_DATA", raising=False)
    with pytest.raises(ValueError, match=r"L2RW_DEV_DATA is not set"):
        module.get_config(arg)
    monkeypatch.setenv("L2RW_DEV_DATA", "/somewhere")
    copy = "mnist" if arg == "mnist" else "cifar10_dev"
    assert module.get_config(arg).data.dataset == f"npz:/somewhere/{copy}/{copy}.npz"


def test_command_line_overrides_fail_on_typos():
    path = os.path.join(ROOT, "experiments", "configs", "mnist_imbalance.py")

    def parse(*argv):
        fv = flags.FlagValues()
        # config_flags reads the overrides from sys.argv unless given sys_argv.
        config_flags.DEFINE_config_file(
            "config", path, flag_values=fv, lock_config=True, sys_argv=["prog", *argv]
        )
        fv(["prog", *argv])
        return fv.config

    config = parse(
        f"--config={path}:0.95",
        "--config.num_steps=20",
        "--config.method.name=mwnet",
        "--config.method.mwnet.hidden=7",
    )
    assert (
        config.num_steps,
        config.method.name,
        config.data.majority_fraction,
        config.method.mwnet.hidden,
    ) == (20, "mwnet", 0.95, 7)
    with pytest.raises(AttributeError, match="num_stepz"):
        parse("--config.num_stepz=20")
    with pytest.raises(AttributeError, match="batch_size"):
        parse("--config.batch_size=20")  # moved to data.batch_size
    with pytest.raises(flags.IllegalFlagValueError):
        parse("--config.num_steps=twenty")


def test_mnist_entry_point_sweeps_methods_and_fractions(npz, tmp_path):
    workdir = tmp_path / "sweep"
    cmd = [
        sys.executable,
        "-m",
        "experiments.mnist",
        f"--workdir={workdir}",
        "--methods=erm,l2rw",
        "--majority_fractions=0.6,0.5",
        f"--config.data.dataset=npz:{npz}",
        "--config.data.corrupt_given_labels=True",
        "--config.data.num_train=40",
        "--config.model.name=mlp",
        "--config.data.batch_size=20",
        "--config.num_steps=4",
        "--config.num_seeds=2",
        "--config.loop.eval_every=2",
        "--config.data.eval_batch_size=40",
        "--config.loop.progress_bar=False",
        "--hard_mining_batch_size=20",
    ]
    out = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr[-3000:]
    assert "| erm" in out.stdout and "| l2rw" in out.stdout and "p = 0.5" in out.stdout
    for p in ("0.6", "0.5"):
        for m in ("erm", "l2rw"):
            with open(workdir / f"p{p}" / m / "results.json") as f:
                assert json.load(f)["config"]["data"]["majority_fraction"] == float(p)
    assert (workdir / "error.png").stat().st_size > 0
    with open(workdir / "summary.json") as f:
        assert set(json.load(f)) == {"0.6", "0.5"}
