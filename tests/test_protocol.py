"""experiments.protocol: the command end to end on a tiny budget, and its per-method configs."""

import json
import re
import os
import subprocess
import sys

import numpy as np
import pytest

# Not experiments.protocol: an entry point defines absl flags (--workdir) at import, which
# would clash with the other entry points the suite imports (experiments.audit).
from experiments.configs import protocol as protocol_config
from l2rw_jax import config as config_lib

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def test_method_configs_are_the_paper_rule_and_the_library_default():
    default = config_lib.default_config().method.l2rw.to_dict()
    paper = protocol_config.setting_config("digits_uniform40", "l2rw")
    rec = protocol_config.setting_config("digits_uniform40", "recommended")
    assert paper.method.name == rec.method.name == "l2rw"
    assert paper.method.l2rw.to_dict() == dict(default, **config_lib.PAPER_L2RW)
    # "recommended" is the library's default (so the protocol measures what users get).
    assert rec.method.l2rw.to_dict() == default
    assert protocol_config.setting_config("digits_uniform40", "resample").method.name == "resample"
    # A shortened budget scales the lr boundaries (1000 of 1500 -> 20 of 30) and the seeds.
    short = protocol_config.setting_config("digits_uniform40", "erm", num_steps=30, num_seeds=2)
    assert (short.num_steps, tuple(short.optim.lr_boundaries), short.num_seeds) == (30, (20,), 2)
    assert protocol_config.get_config("digits_uniform40").num_seeds == 5
    with pytest.raises(ValueError, match=r"protocol config argument must be one of .*'digi'"):
        protocol_config.get_config("digi")


def test_ablation_names_switch_one_option_each():
    paper = dict(protocol_config.METHODS["l2rw"]["method"]["l2rw"])
    rec = dict(protocol_config.METHODS["recommended"]["method"]["l2rw"])
    got = protocol_config.method_overrides("l2rw+sign+last")["method"]["l2rw"]
    assert got == dict(paper, weight_map="sign", meta_params="last")
    got = protocol_config.method_overrides("recommended-memory+reliability")["method"]["l2rw"]
    assert got == dict(rec, memory_decay=0.0, mix="reliability")
    for bad, match in (
        ("l2rw+softmax", "unknown ablation token 'softmax'"),
        ("erm+sign", "unknown method 'erm\\+sign'"),
        ("l2rw", None),
    ):
        if match is None:  # a plain METHODS name is not an ablation
            assert protocol_config.method_overrides(bad) == protocol_config.METHODS[bad]
            continue
        with pytest.raises(ValueError, match=match):
            protocol_config.method_overrides(bad)


def test_underfit_cifar_settings_are_the_robust_protocol_recipe_with_five_seeds(monkeypatch):
    from experiments.configs import robust_protocol

    monkeypatch.setenv("L2RW_DEV_DATA", "/dev-copies")  # only named, never read here

    ref = robust_protocol.get_config("cifar10_dev")
    for noise in ("uniform", "background"):
        cfg = protocol_config.get_config(f"cifar_underfit_{noise}40")
        assert (cfg.data.noise, cfg.data.noise_ratio, cfg.num_seeds) == (noise, 0.4, 5)
        for field in ("num_steps", "model", "optim"):
            assert cfg[field] == ref[field]
        assert cfg.data.augment and cfg.data.dataset == ref.data.dataset


def test_cifar_mlp_setting_is_the_mnist_mlp_recipe_on_cifar10_dev(monkeypatch):
    monkeypatch.setenv("L2RW_DEV_DATA", "/dev-copies")  # only named, never read here
    mnist = protocol_config.get_config("mnist_mlp_uniform40")
    cfg = protocol_config.get_config("cifar_mlp_uniform40")
    assert cfg.data.dataset == "npz:/dev-copies/cifar10_dev/cifar10_dev.npz"
    assert (cfg.data.noise, cfg.data.noise_ratio, cfg.data.augment) == ("uniform", 0.4, False)
    assert (cfg.num_steps, cfg.num_seeds) == (6000, 5)
    for field in ("model", "optim", "loop"):
        assert cfg[field] == mnist[field]


def test_command_end_to_end_writes_the_table_it_claims(tmp_path):
    res = tmp_path / "res"
    out = subprocess.run(
        [
            sys.executable,
            "-m",
            "experiments.protocol",
            f"--workdir={tmp_path}/w",
            "--settings=digits_uniform40",
            "--num_steps=20",
            "--num_seeds=2",
            "--methods=erm,l2rw,recommended,finetune,oracle",
            f"--results_dir={res}",
        ],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert out.returncode == 0, out.stderr[-3000:]
    methods = ["erm", "l2rw", "recommended", "finetune", "oracle"]
    for ext in ("md", "json", "png"):
        assert (res / f"protocol_digits_uniform40_steps20.{ext}").stat().st_size > 0
        # A shortened budget never takes the name of the setting's own (full-budget) results.
        assert not (res / f"protocol_digits_uniform40.{ext}").exists()
    summary = json.loads((res / "protocol_digits_uniform40_steps20.json").read_text())
    assert sorted(summary["methods"]) == sorted(methods)  # written with sorted keys
    assert summary["shortened"] and summary["num_steps"] == 20
    assert summary["command"].startswith("python -m experiments.protocol --workdir=")
    for m, r in summary["methods"].items():
        acc_KxE = np.array(r["curve"]["accuracy_per_seed"])
        # 2 seeds x 10 evaluations (a short budget is evaluated at least 10 times); finetune
        # adds a tenth of the budget on the clean set (2 steps, one more evaluation).
        last = 22 if m == "finetune" else 20
        assert acc_KxE.shape == (2, last // 2)
        assert r["curve"]["steps"] == list(range(2, last + 1, 2))
        # Final, best and drop are the curve's last point, its max and their difference.
        np.testing.assert_allclose(r["final_test_accuracy"]["per_seed"], acc_KxE[:, -1])
        np.testing.assert_allclose(r["best_test_accuracy"]["per_seed"], acc_KxE.max(1))
        np.testing.assert_allclose(r["drop"]["per_seed"], acc_KxE.max(1) - acc_KxE[:, -1])
        run = json.loads(
            (tmp_path / "w" / "digits_uniform40" / "steps20" / m / "results.json").read_text()
        )
        assert run["final_test_accuracy"] == r["final_test_accuracy"]
    lines = (res / "protocol_digits_uniform40_steps20.md").read_text().splitlines()
    assert "SHORTENED budget" in lines[0]
    header = [c.strip() for c in lines[2].strip("|").split("|")]
    assert header == [
        "method",
        "seeds",
        "final test acc %",
        "best test acc %",
        "best - final (points)",
        "best step (median)",
        "steps/s",
        "gap closed %",
    ]
    rows = [[c.strip() for c in line.strip("|").split("|")] for line in lines[4 : 4 + len(methods)]]
    assert [r[0] for r in rows] == methods
    for row, m in zip(rows, methods):
        final = summary["methods"][m]["final_test_accuracy"]
        assert row[1] == "2" and row[2] == (
            f"{100 * final['mean']:.2f} +- {100 * final['ci95']:.2f}"
        )
        gap = summary["methods"][m]["gap_closed"]
        assert row[-1] == (
            "-" if gap is None else f"{100 * gap['mean']:.2f} +- {100 * gap['ci95']:.2f}"
        )
    gap_erm = summary["methods"]["erm"]["gap_closed"]
    assert gap_erm is None or gap_erm["per_seed"] == [0.0, 0.0]
    assert lines[4 + len(methods) + 1].startswith(
        "Final test accuracy minus the references' (points, paired over seeds"
    )
    crit = lines[4 + len(methods) + 3]
    assert crit.startswith("- recommended minus: ")
    # The paired difference: per seed, then mean +- CI (not the difference of the means' CIs).
    rec = np.array(summary["methods"]["recommended"]["final_test_accuracy"]["per_seed"])
    erm = np.array(summary["methods"]["erm"]["final_test_accuracy"]["per_seed"])
    d = 100 * (rec - erm)
    h = 12.706 * d.std(ddof=1) / np.sqrt(2)  # t_{0.975, 1}
    # Printed to 2 decimals from float32 accuracies: compare within the last printed digit.
    printed = re.search(r"erm ([+-][0-9.]+) \+- ([0-9.]+)", crit)
    assert printed and abs(float(printed[1]) - d.mean()) <= 0.011
    assert abs(float(printed[2]) - h) <= 0.011


def test_gap_closed_against_a_hand_computation():
    from l2rw_jax import results

    # Seeds: erm 0.50 / 0.60, oracle 0.90 / 0.80, method 0.80 / 0.65:
    # per seed (0.80 - 0.50) / 0.40 = 0.75 and (0.65 - 0.60) / 0.20 = 0.25.
    g = results.gap_closed([0.80, 0.65], [0.50, 0.60], [0.90, 0.80])
    np.testing.assert_allclose(g["per_seed"], [0.75, 0.25])
    assert g["mean"] == pytest.approx(0.5)
    # t_{0.975, 1} = 12.706; s = |0.75 - 0.25| / sqrt(2); h = t s / sqrt(2) = 12.706 * 0.25.
    assert g["ci95"] == pytest.approx(12.7062 * 0.25, rel=1e-4)
    assert results.gap_closed([0.8], [0.5], [0.5]) is None  # no gap on a seed
    assert results.gap_closed([0.8, 0.7], [0.5], [0.9]) is None  # seeds differ


def test_noise_settings_and_the_oracle_row(monkeypatch):
    monkeypatch.setenv("L2RW_DEV_DATA", "/dev-copies")
    for setting, noise, ratio in (
        ("digits_pair45", "pair", 0.45),
        ("digits_uniform20", "uniform", 0.2),
        ("digits_uniform60", "uniform", 0.6),
        ("mnist_mlp_pair45", "pair", 0.45),
        ("mnist_mlp_asymmetric40", "asymmetric", 0.4),
        ("cifar_mlp_pair45", "pair", 0.45),
    ):
        c = protocol_config.setting_config(setting, "oracle")
        assert (c.data.noise, c.data.noise_ratio, c.method.name) == (noise, ratio, "oracle")
        recipe = {
            "digits": "digits_uniform40",
            "mnist": "mnist_mlp_uniform40",
            "cifar": "cifar_mlp_uniform40",
        }[setting.split("_")[0]]
        base = protocol_config.setting_config(recipe, "oracle")
        # The same recipe: only the noise differs.
        diff = config_lib.config_differences(base.to_dict(), c)
        assert set(diff) <= {"data.noise", "data.noise_ratio", "data.noise_map"}, diff
    asym = protocol_config.setting_config("mnist_mlp_asymmetric40", "erm")
    assert asym.data.noise_map == "mnist"


def _protocol(tmp_path, *flags):
    return subprocess.run(
        [sys.executable, "-m", "experiments.protocol", f"--workdir={tmp_path}/w", *flags],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=300,
    )


def test_selection_hold_out_runs_beside_the_others_and_reports_the_selected_checkpoint(tmp_path):
    res = tmp_path / "res"
    out = _protocol(
        tmp_path,
        "--settings=digits_uniform40",
        "--num_steps=20",
        "--num_seeds=2",
        "--methods=erm",
        "--selection_size=20",
        f"--results_dir={res}",
    )
    assert out.returncode == 0, out.stderr[-3000:]
    # Its own folder and files: they never replace the runs without the hold-out.
    run = tmp_path / "w" / "digits_uniform40" / "steps20_selection20" / "erm"
    results = json.loads((run / "results.json").read_text())
    assert results["selected_by"] == "selection" and results["num_selection"] == 20
    assert results["num_clean"] == 80  # 10 per class, 2 of each held out
    summary = json.loads((res / "protocol_digits_uniform40_steps20_selection20.json").read_text())
    assert summary["selection_size"] == 20
    assert (
        summary["methods"]["erm"]["selected_test_accuracy"] == (results["selected_test_accuracy"])
    )
    lines = (res / "protocol_digits_uniform40_steps20_selection20.md").read_text().splitlines()
    assert (
        "10 clean per class (20 of the clean examples held out to choose the checkpoint)"
        in lines[0]
    )
    header = [c.strip() for c in lines[2].strip("|").split("|")]
    row = [c.strip() for c in lines[4].strip("|").split("|")]
    sel = results["selected_test_accuracy"]
    assert dict(zip(header, row))["selected test acc %"] == (
        f"{100 * sel['mean']:.2f} +- {100 * sel['ci95']:.2f}"
    )
    assert not (res / "protocol_digits_uniform40_steps20.json").exists()


def test_a_selection_set_the_clean_set_cannot_give_is_one_line_error_before_any_run(tmp_path):
    # The digits setting has 10 clean examples per class: 100 cannot all be held out.
    out = _protocol(
        tmp_path, "--settings=digits_uniform40", "--methods=erm", "--selection_size=100"
    )
    assert out.returncode != 0
    last = out.stderr.strip().splitlines()[-1]
    assert "setting digits_uniform40: selection_size=100 cannot be held out of the clean set" in (
        last
    )
    assert "of 100 examples" in last and "allowed: 10..90" in last
    assert not (tmp_path / "w").exists()
