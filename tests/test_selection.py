"""Model selection on trusted data: the clean selection hold-out (data.selection_size), the
checkpoint it chooses (results.json) and the selected model the run exports."""

import json
import os
import re

import jax
import numpy as np
import orbax.checkpoint as ocp
import pytest

import tiny_data
from l2rw_jax import compose
from l2rw_jax import config as config_lib
from l2rw_jax import datasets
from l2rw_jax import from_config
from l2rw_jax import members as members_lib
from l2rw_jax import results as results_lib
from l2rw_jax import train
from l2rw_jax import workdir as workdir_lib

NUM_CLASSES = 10


@pytest.fixture(scope="module")
def npz(tmp_path_factory):
    return tiny_data.write_tiny_npz(str(tmp_path_factory.mktemp("data") / "tiny.npz"))


def _members(npz, clean_per_class, selection_size, seed=0, num_seeds=1):
    c = config_lib.validate(
        tiny_data.tiny_config(
            npz,
            {
                "data": {"clean_per_class": clean_per_class, "selection_size": selection_size},
                "seed": seed,
                "num_seeds": num_seeds,
            },
        )
    )
    arrays = datasets.load_arrays(c.data.dataset, **from_config.load_options(c.data))
    return compose.members(c, arrays)


@pytest.mark.parametrize(
    "clean_per_class, size, per_class",
    [(3, 10, [1] * 10), (3, 15, [2] * 5 + [1] * 5), (4, 30, [3] * 10)],
)
def test_selection_is_disjoint_from_the_meta_set_and_stratified(
    npz, clean_per_class, size, per_class
):
    (md,) = _members(npz, clean_per_class, size)
    (full,) = _members(npz, clean_per_class, 0)
    sel, meta = md.selection.test_source_index, md.splits.clean_source_index
    # Rows of the source training set: disjoint, and together the clean set drawn without the
    # hold-out (the selection rows come out of the clean set, nothing else moves).
    assert np.intersect1d(sel, meta).size == 0
    np.testing.assert_array_equal(
        np.sort(np.concatenate([sel, meta])), full.splits.clean_source_index
    )
    np.testing.assert_array_equal(md.splits.train_source_index, full.splits.train_source_index)
    assert np.all(np.diff(sel) > 0) and np.all(np.diff(meta) > 0)  # ascending rows
    # Exact counts per class, on both sides.
    np.testing.assert_array_equal(np.bincount(md.selection.test_labels, minlength=10), per_class)
    np.testing.assert_array_equal(
        np.bincount(md.splits.clean_labels, minlength=10), clean_per_class - np.array(per_class)
    )
    # The labels and images are those of the rows (the tiny data: label = row % 10).
    x_train = np.load(npz)["x_train"][..., None]
    np.testing.assert_array_equal(md.selection.test_labels, sel % 10)
    np.testing.assert_array_equal(md.selection.test_x, x_train[sel])
    np.testing.assert_array_equal(md.splits.clean_x, x_train[meta])
    assert md.selection.test_x.shape == (size, 8, 8, 1)


def test_same_seed_same_selection_and_members_differ(npz):
    a0, a1 = _members(npz, 3, 10, seed=0, num_seeds=2)
    (b1,) = _members(npz, 3, 10, seed=1)
    np.testing.assert_array_equal(a1.selection.test_source_index, b1.selection.test_source_index)
    np.testing.assert_array_equal(a1.splits.clean_source_index, b1.splits.clean_source_index)
    assert not np.array_equal(a0.selection.test_source_index, a1.selection.test_source_index)


def test_selection_counts_share_out_by_class_size():
    labels = np.array([0] * 10 + [1] * 2 + [2] * 5)
    # 7 of 17: quotas 70/17, 14/17, 35/17 -> 4, 0, 2 and one more to the largest remainder
    # (class 1: 14/17).
    np.testing.assert_array_equal(members_lib.selection_counts(labels, 3, 7), [4, 1, 2])
    np.testing.assert_array_equal(members_lib.selection_counts(labels, 4, 4), [2, 1, 1, 0])


@pytest.mark.parametrize(
    "clean_per_class, size, allowed",
    [
        (2, 20, "10..10"),  # the whole clean set
        (2, 15, "10..10"),  # classes 0-4 would give both their rows
        (3, 5, "10..20"),  # fewer rows than classes
        (1, 10, r"none \(every class needs 2 clean rows or more\)"),  # nothing left to meta
    ],
)
def test_a_clean_set_too_small_to_split_fails_before_any_write(
    npz, tmp_path, clean_per_class, size, allowed
):
    config = tiny_data.tiny_config(
        npz, {"data": {"clean_per_class": clean_per_class, "selection_size": size}}
    )
    m = 10 * clean_per_class
    with pytest.raises(ValueError) as e:
        train.train_and_evaluate(config, str(tmp_path / "run"))
    message = str(e.value)
    assert "\n" not in message
    assert message.startswith(
        f"selection_size={size} cannot be held out of the clean set of {m} examples in 10 classes"
    )
    assert re.search(f"allowed: {allowed}\\.$", message), message
    assert not os.path.exists(tmp_path / "run")


def test_selection_size_is_validated_and_old_runs_resume_without_it():
    with pytest.raises(ValueError, match=r"data.selection_size must be an integer >= 0, got -1"):
        config_lib.validate({"data": {"selection_size": -1}}, check_devices=False)
    old = config_lib.default_config().to_dict()
    del old["data"]["selection_size"]
    assert config_lib.config_differences(old, config_lib.default_config()) == {}


def test_selected_by_the_best_selection_accuracy_earliest_on_ties():
    from types import SimpleNamespace

    def ev(step, test, sel, hv):
        split = lambda a: {"accuracy": a, "loss": [0.0, 0.0], "per_class_accuracy": [[1.0]] * 2}
        return {"step": step, "test": split(test), "selection": split(sel), "hyperval": split(hv)}

    history = [
        ev(2, [0.1, 0.2], [0.5, 0.3], [0.9, 0.0]),
        ev(4, [0.3, 0.4], [0.7, 0.6], [0.1, 0.9]),
        ev(6, [0.5, 0.6], [0.7, 0.4], [0.2, 0.1]),  # member 0: a tie, the earlier one stays
        ev(8, [0.7, 0.8], [0.6, 0.2], [0.3, 0.2]),
    ]
    splits = SimpleNamespace(
        num_classes=1,
        train_labels=np.zeros(5),
        clean_labels=np.zeros(2),
        test_labels=np.zeros(4),
        background_class=None,
    )
    mds = [
        SimpleNamespace(
            seed=k,
            splits=splits,
            hyperval=SimpleNamespace(test_labels=np.zeros(3)),
            selection=SimpleNamespace(test_labels=np.zeros(7)),
        )
        for k in range(2)
    ]

    def summarize():
        return results_lib.summary(
            method="erm",
            config={},
            members=mds,
            history=history,
            num_steps=8,
            all_zero_steps_K=[0, 0],
            wall_time=1.0,
            steps_per_s=1.0,
            timing={},
        )

    r = summarize()
    assert r["selected_by"] == "selection" and r["selected_step"] == [4, 4]
    assert r["selected_test_accuracy"]["per_seed"] == [0.3, 0.4]
    assert r["final_selection_accuracy"]["per_seed"] == [0.6, 0.2]
    assert r["final_test_accuracy"]["per_seed"] == [0.7, 0.8]  # never replaced
    assert r["num_selection"] == 7 and r["num_hyperval"] == 3
    # Without the selection split: the noisy hyper-validation chooses, as before.
    for h in history:
        del h["selection"]
    for md in mds:
        md.selection = None
    r = summarize()
    assert r["selected_by"] == "hyperval" and r["selected_step"] == [2, 4]
    assert r["selected_test_accuracy"]["per_seed"] == [0.1, 0.4]
    assert r["final_selection_accuracy"] is None and r["num_selection"] == 0


def _run_config(npz, **loop):
    """Two vmapped members, 8 steps, an evaluation every 2."""
    return tiny_data.tiny_config(
        npz,
        {
            "data": {"clean_per_class": 3, "selection_size": 10},
            "num_seeds": 2,
            "num_steps": 8,
            "optim": {"learning_rate": 0.5},  # large steps: the accuracies move up and down
            "loop": {"eval_every": 2, "keep_checkpoints": 10, **loop},
        },
    )


@pytest.fixture(scope="module")
def run(npz, tmp_path_factory):
    """The run of _run_config with a checkpoint at every evaluation (all kept)."""
    workdir = str(tmp_path_factory.mktemp("selection_run"))
    return workdir, train.train_and_evaluate(_run_config(npz, checkpoint_every=2), workdir)


def _history(workdir, split):
    """{seed: [(step, accuracy)]} of ``split`` from metrics.jsonl."""
    out: dict = {}
    with open(os.path.join(workdir, "metrics.jsonl")) as f:
        for r in map(json.loads, f):
            if r["split"] == split:
                out.setdefault(r["seed"], []).append((r["step"], r["accuracy"]))
    return out


def test_selected_test_accuracy_is_the_test_accuracy_at_the_best_selection(run):
    workdir, r = run
    sel, test = _history(workdir, "selection"), _history(workdir, "test")
    assert r["num_selection"] == 10 and r["num_clean"] == 20 and r["selected_by"] == "selection"
    # The run covers a choice before the end (and, for seed 0, ties: 0.3 at steps 2, 4 and 8).
    assert r["selected_step"] != [8, 8]
    for k, seed in enumerate(r["seeds"]):
        steps = [s for s, _ in sel[seed]]
        assert steps == [2, 4, 6, 8] and [s for s, _ in test[seed]] == steps
        e = int(np.argmax([a for _, a in sel[seed]]))  # the first maximum: the earliest
        assert r["selected_step"][k] == steps[e]
        assert r["selected_test_accuracy"]["per_seed"][k] == test[seed][e][1]
        assert r["final_selection_accuracy"]["per_seed"][k] == sel[seed][-1][1]
        assert r["final_test_accuracy"]["per_seed"][k] == test[seed][-1][1]


def test_the_exported_model_is_the_model_at_the_selected_evaluation(run):
    workdir, r = run
    manager = ocp.CheckpointManager(os.path.join(workdir, "checkpoints"))
    try:
        for k, seed in enumerate(r["seeds"]):
            step = r["selected_step"][k]
            selected = workdir_lib.read_selected(workdir, seed)
            assert selected["step"] == step
            recorded = dict(_history(workdir, "selection")[seed])[step]
            assert selected["selection_accuracy"] == recorded
            carry = manager.restore(
                step, args=ocp.args.Composite(carry=ocp.args.StandardRestore())
            ).carry
            params_k = jax.tree.map(lambda x: np.asarray(x)[k], carry[0]["params"])
            assert jax.tree.structure(selected["params"]) == jax.tree.structure(params_k)
            jax.tree.map(np.testing.assert_array_equal, selected["params"], params_k)
            assert selected["model_state"] == {}  # the MLP has no batch statistics
    finally:
        manager.close()
    assert sorted(os.listdir(os.path.join(workdir, "selected"))) == ["seed0.npz", "seed1.npz"]
    with pytest.raises(ValueError, match="no selected model for seed 7"):
        workdir_lib.read_selected(workdir, 7)


def test_protocol_table_shows_the_selected_column_only_with_a_selection_set():
    from experiments import protocol

    def row(final, selected, selected_by):
        stats = lambda m: {"mean": m, "ci95": None, "per_seed": [m]}
        return {
            "num_seeds": 1,
            "final_test_accuracy": stats(final),
            "best_test_accuracy": stats(0.9),
            "drop": {"mean": 0.9 - final, "ci95": None},
            "best_step": [10],
            "steps_per_s": 5.0,
            "selected_test_accuracy": stats(selected),
            "selected_by": selected_by,
        }

    rows = {"erm": row(0.5, 0.6, "hyperval"), "l2rw": row(0.7, 0.8, "selection")}
    lines = protocol.table(rows).splitlines()
    header = [c.strip() for c in lines[0].strip("|").split("|")]
    assert header == protocol.COLUMNS + ["selected test acc %"]
    cells = [[c.strip() for c in line.strip("|").split("|")] for line in lines[2:]]
    assert [c[-1] for c in cells] == ["-", "80.00"]  # the hyper-validation choice is not shown
    rows["l2rw"]["selected_by"] = None  # a run from before the field
    assert "selected" not in protocol.table(rows).splitlines()[0]


def test_a_resumed_run_exports_what_an_uninterrupted_one_does(npz, tmp_path, run):
    workdir, r = run
    assert r["selected_step"] == [2, 6]  # seed 1: after the killed run's last checkpoint (4)
    killed = str(tmp_path / "killed")
    config = _run_config(npz, checkpoint_every=4, stop_after_steps=6)
    assert not train.train_and_evaluate(config, killed)["completed"]
    # The evaluation at step 6 wrote seed 1's file; the checkpoint at 4 does not hold it.
    assert workdir_lib.read_selected(killed, 1)["step"] == 6
    config.loop.stop_after_steps = None
    resumed = train.train_and_evaluate(config, killed)
    for key in ("selected_step", "selected_test_accuracy", "final_selection_accuracy"):
        assert resumed[key] == r[key]
    for seed in r["seeds"]:
        a, b = workdir_lib.read_selected(workdir, seed), workdir_lib.read_selected(killed, seed)
        assert (a["step"], a["selection_accuracy"]) == (b["step"], b["selection_accuracy"])
        jax.tree.map(np.testing.assert_array_equal, a["params"], b["params"])


def test_selection_improved_is_strictly_above_every_earlier_evaluation():
    def ev(sel):
        return {"test": {"accuracy": [0.0] * len(sel)}, "selection": {"accuracy": sel}}

    history = [ev([0.5, 0.5, 0.2])]
    assert list(results_lib.selection_improved(history)) == [0, 1, 2]  # the first always
    history.append(ev([0.6, 0.5, 0.1]))  # a rise, a tie (the earlier stays chosen), a fall
    assert list(results_lib.selection_improved(history)) == [0]
    assert results_lib.selection_improved([{"test": {"accuracy": [0.1]}}]).size == 0
