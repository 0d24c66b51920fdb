"""experiments.collapse_probe: the per-class weight statistics against hand computations."""

import numpy as np
import pytest

from experiments import collapse_probe


def test_class_weight_stats_match_a_hand_computation():
    # Class 0: weights 0.2, 0.2 (sum 0.4, ESS 0.16 / 0.08 = 2); class 1: 0.6, 0 (sum 0.6,
    # ESS 0.36 / 0.36 = 1); class 2: absent; class 3: one row of weight 0 (mass 0, ESS 0).
    w_B = np.array([0.2, 0.6, 0.2, 0.0, 0.0], np.float32)
    y_B = np.array([0, 1, 0, 1, 3], np.int32)
    got = collapse_probe.class_weight_stats(w_B, y_B, 4)
    np.testing.assert_allclose(got["mass_C"], [0.4, 0.6, 0.0, 0.0], rtol=1e-6)
    np.testing.assert_allclose(got["ess_C"], [2.0, 1.0, 0.0, 0.0], rtol=1e-6)
    np.testing.assert_allclose(got["ess"], 1.0 / (0.04 + 0.36 + 0.04), rtol=1e-6)
    np.testing.assert_array_equal(got["count_C"], [2, 2, 0, 1])
    # Unnormalised weights: the same shares; all zero: zeros, not NaN.
    np.testing.assert_allclose(
        collapse_probe.class_weight_stats(5 * w_B, y_B, 4)["mass_C"], [0.4, 0.6, 0, 0], rtol=1e-6
    )
    zero = collapse_probe.class_weight_stats(np.zeros(5, np.float32), y_B, 4)
    assert np.all(np.asarray(zero["mass_C"]) == 0) and float(zero["ess"]) == 0


def test_runs_and_lagged_correlation():
    np.testing.assert_array_equal(collapse_probe._runs(np.array([3, 3, 1, 1, 1, 3])), [2, 3, 1])
    np.testing.assert_array_equal(collapse_probe._runs(np.array([7])), [1])
    # b is a shifted by 2 steps: correlation 1 at lag 2 (a leads b), below 1 at lag 0.
    rng = np.random.default_rng(0)
    a = rng.random((50, 3))
    b = np.roll(a, 2, axis=0)
    assert collapse_probe.lagged_correlation(a, b, 2) == pytest.approx(1.0)
    assert collapse_probe.lagged_correlation(a, b, 0) < 0.5
    assert collapse_probe.lagged_correlation(b, a, -2) == pytest.approx(1.0)
    assert np.isnan(collapse_probe.lagged_correlation(a, b, 50))  # no overlapping steps


def test_summarize_reads_the_top_class_and_its_runs():
    # Steps 0-2 class 0 holds 0.9 of the weight, steps 3-4 class 1 holds all of it.
    mass = np.array([[0.9, 0.1], [0.9, 0.1], [0.9, 0.1], [0, 1], [0, 1]], np.float64)
    rec = {
        "mass_C": mass,
        "raw_mass_C": mass,
        "ess_C": np.array([[3, 1], [3, 1], [3, 1], [0, 2], [0, 2]], np.float64),
        "ess": np.full(5, 4.0),
        "noisy_mass": np.full(5, 0.5),
        "count_C": np.full((5, 2), 50),
        "clean_count_C": np.full((5, 2), 50),
        "pred_C": np.array([[100, 0]] * 4 + [[0, 100]]),
    }
    s = collapse_probe.summarize(rec)
    assert s["steps"] == [0, 5]
    assert s["top_mass_share_q10_q50_q90"][1] == 0.9
    assert s["frac_steps_top_mass_over"]["0.8"] == 1.0
    assert s["frac_steps_top_mass_over"]["0.95"] == 0.4
    assert s["top_class_run_length"] == {"median": 2.5, "mean": 2.5, "max": 3}
    assert s["pred_class_equals_top_mass_class"] == 0.8
    # ESS within the top class: 3, 3, 3, 2, 2; within every weighted class: (3 + 1) x 3, 2 x 2.
    assert s["ess_within_top_class_q10_q50_q90"][1] == 3.0
    assert s["ess_within_class_mean_over_weighted"] == pytest.approx(16 / 8, abs=1e-3)
    # The predictions switch once (step 4, to class 1); the mass on the predicted class is
    # 0.9, 0.9, 0.9, 0 (class 0 at step 3), 1.
    assert s["pred_switches"] == 1 and s["first_step_pred_top_share_over_0.9"] == 0
    assert s["mass_on_pred_class_mean"] == pytest.approx(3.7 / 5)
    # A window: steps [3, 5) only.
    w = collapse_probe.summarize(rec, 3, 5)
    assert w["steps"] == [3, 5] and w["top_mass_share_q10_q50_q90"] == [1.0, 1.0, 1.0]
    assert list(collapse_probe.summaries(rec, [3, 9])) == ["all", "steps_0_3", "steps_3_5"]


def test_new_pred_class_rank_reads_the_mass_of_the_10_steps_before():
    # 3 classes, 30 steps; class 2 gets the most raw mass over steps 10-19, then the
    # predictions switch from class 0 to 2 at step 20; class 1 never leads.
    t = 30
    raw = np.tile([0.5, 0.3, 0.2], (t, 1))
    raw[10:20] = [0.2, 0.3, 0.5]
    pred = np.zeros((t, 3))
    pred[:20, 0], pred[20:, 2] = 100, 100
    rec = {
        "mass_C": raw,
        "raw_mass_C": raw,
        "ess_C": np.ones((t, 3)),
        "ess": np.ones(t),
        "noisy_mass": np.zeros(t),
        "count_C": np.full((t, 3), 10),
        "clean_count_C": np.full((t, 3), 10),
        "pred_C": pred,
    }
    s = collapse_probe.summarize(rec)
    assert s["new_pred_class_raw_mass_rank"] == {"switches": 1, "top": 1.0, "top3": 1.0}
    raw[10:20] = [0.5, 0.3, 0.2]  # now class 2 had the least: rank 2 (in the top 3 of 3)
    s = collapse_probe.summarize(rec)
    assert s["new_pred_class_raw_mass_rank"] == {"switches": 1, "top": 0.0, "top3": 1.0}


def test_to_json_is_the_same_object_with_one_line_per_number_list():
    import json

    out = {
        "methods": {
            "a": {"eval": {"acc": [1.5, 2.0], "hist": [[1, 2], [3, None]]}, "wall_s": 1.0},
            "b+c": {"eval": {"acc": []}, "wall_s": 2.0},
        },
        "command": "x --zoom=[1, 2]",
    }
    text = collapse_probe.to_json(out)
    assert json.loads(text) == out
    assert '"acc": [1.5,2.0]' in text and "[1,2],\n" in text and '"acc": []' in text


def test_write_steps_then_read_steps_gives_back_what_was_written(tmp_path):
    # 4-digit floats (a NaN too), counts, and one field too large for float32's 4 digits.
    rng = np.random.default_rng(0)
    per_step = {
        "l2rw": {
            "mass_C": np.round(rng.random((7, 3)), 4),
            "noisy_mass": np.array([0.1234, np.nan, 0.3, 0.0, 1.0, 0.9999, 0.5]),
            "val_loss": np.array([1234.5678, 2.5, 0.1, 0.2, 0.3, 0.4, 0.5]),
            "pred_C": rng.integers(0, 300, (7, 3)),
        },
        "l2rw+class_balanced": {"ess": np.round(100 * rng.random(7), 4)},
    }
    path = str(tmp_path / "probe_steps.npz")
    collapse_probe.write_steps(path, per_step)
    with np.load(path) as npz:
        dtypes = {k: npz[k].dtype for k in npz.files}
    assert dtypes == {
        "l2rw/mass_C": np.float32,
        "l2rw/noisy_mass": np.float32,
        "l2rw/val_loss": np.float64,  # 1234.5678 is 1234.5677 in float32
        "l2rw/pred_C": np.uint16,
        "l2rw+class_balanced/ess": np.float32,
    }
    back = collapse_probe.read_steps(path)
    assert back.keys() == per_step.keys()
    for m in per_step:
        assert back[m].keys() == per_step[m].keys()
        for k, v in per_step[m].items():
            assert back[m][k].dtype in (np.float64, np.int64)
            np.testing.assert_array_equal(back[m][k], v, strict=False)
    assert collapse_probe.steps_path("d/probe.json") == "d/probe_steps.npz"
    assert [p.name for p in tmp_path.iterdir()] == ["probe_steps.npz"]  # no temporary left
