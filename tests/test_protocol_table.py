"""experiments.protocol_table: the cross-setting table from protocol result files."""

import json
import os
import subprocess
import sys


ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _row(per_seed):
    return {"final_test_accuracy": {"mean": sum(per_seed) / len(per_seed), "per_seed": per_seed}}


def _write(path, setting, date, methods, num_steps=100, own=100, selected=None):
    """A protocol file; ``selected``: per method, the per-seed accuracies of the checkpoint
    chosen on a clean selection hold-out (the file then has ``selection_size`` 20)."""
    rows = {m: _row(v) for m, v in methods.items()}
    for m, per_seed in (selected or {}).items():
        rows[m]["selected_by"] = "selection"
        rows[m]["selected_test_accuracy"] = _row(per_seed)["final_test_accuracy"]
    with open(path, "w") as f:
        json.dump(
            {
                "setting": setting,
                "date": date,
                "num_steps": num_steps,
                "setting_num_steps": own,
                "shortened": num_steps != own,
                **({"selection_size": 20} if selected else {}),
                "methods": rows,
            },
            f,
        )


def _table(tmp_path, *flags):
    out = subprocess.run(
        [sys.executable, "-m", "experiments.protocol_table", f"--results_dir={tmp_path}", *flags],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert out.returncode == 0, out.stderr
    return out.stdout


def test_cells_are_final_accuracy_and_paired_gap_closed_merged_across_files(tmp_path):
    os.makedirs(tmp_path / "candidates")
    # Two files of one setting (the candidates' is newer): rows merge, the newer row wins.
    _write(
        tmp_path / "protocol_a.json",
        "a",
        "2026-01-01 00:00 UTC",
        {"erm": [0.5, 0.6], "oracle": [0.9, 0.8], "recommended": [0.1, 0.1]},
    )
    _write(
        tmp_path / "candidates" / "protocol_a.json",
        "a",
        "2026-01-02 00:00 UTC",
        {"recommended": [0.7, 0.7]},
    )
    # A shortened budget is its own row; no oracle there, so no gap column.
    _write(
        tmp_path / "protocol_b_steps50.json",
        "b",
        "2026-01-01 00:00 UTC",
        {"erm": [0.2], "l2rw": [0.4]},
        num_steps=50,
    )
    # A selection hold-out is its own row (its runs trained on a smaller clean set): the
    # final accuracy, then the selected checkpoint's.
    _write(
        tmp_path / "protocol_a_selection20.json",
        "a",
        "2026-01-03 00:00 UTC",
        {"erm": [0.5, 0.6], "oracle": [0.9, 0.8], "recommended": [0.6, 0.6]},
        selected={"erm": [0.8, 0.7], "oracle": [0.9, 0.8], "recommended": [0.75, 0.75]},
    )
    text = _table(tmp_path)
    lines = {
        line.split("|")[1].strip(): [c.strip() for c in line.split("|")[2:-1]]
        for line in text.splitlines()
        if line.startswith("| a") or line.startswith("| b")
    }
    header = [c.strip() for c in text.splitlines()[0].split("|")[2:-1]]
    assert header == ["erm", "oracle", "l2rw", "recommended"]
    a = dict(zip(header, lines["a (100 steps)"]))
    # Gap closed per seed: (0.7 - 0.5) / (0.9 - 0.5) = 50%, (0.7 - 0.6) / (0.8 - 0.6) = 50%.
    assert a == {"erm": "55.00", "oracle": "85.00", "l2rw": "–", "recommended": "70.00 (50%)"}
    sel = dict(zip(header, lines["a (100 steps, 20 held out)"]))
    # Gap closed on the final accuracies: (0.6 - 0.5) / 0.4 = 25%, 0 / 0.2 = 0%.
    assert sel == {
        "erm": "55.00; sel. 75.00",
        "oracle": "85.00; sel. 85.00",
        "l2rw": "–",
        "recommended": "60.00 (12%); sel. 75.00",
    }
    b = dict(zip(header, lines["b (50 of 100 steps)"]))
    assert b == {"erm": "20.00", "oracle": "–", "l2rw": "40.00", "recommended": "–"}


def test_plot_is_written_and_an_empty_folder_is_one_line_error(tmp_path):
    _write(
        tmp_path / "protocol_a.json",
        "a",
        "2026-01-01 00:00 UTC",
        {"erm": [0.5], "oracle": [0.9], "recommended": [0.7]},
    )
    _table(tmp_path, f"--plot={tmp_path / 'gap.png'}", f"--out={tmp_path / 't.md'}")
    assert (tmp_path / "gap.png").read_bytes()[:4] == b"\x89PNG"
    assert (tmp_path / "t.md").read_text().startswith("| setting (steps)")
    empty = tmp_path / "empty"
    empty.mkdir()
    out = subprocess.run(
        [sys.executable, "-m", "experiments.protocol_table", f"--results_dir={empty}"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert out.returncode == 2
    assert out.stderr.strip().splitlines()[-1].startswith("error: no protocol_*.json in")


def test_rows_are_labelled_by_their_recorded_config_not_their_name():
    from experiments import protocol_table
    from experiments.configs import protocol as protocol_config
    from l2rw_jax import config as config_lib

    def recorded(method):
        return {"method": protocol_config.method_overrides(method)["method"]}

    # A row that ran under another name is labelled by what it ran.
    assert protocol_table.label("s", "foo", recorded("recommended+glc")) == "recommended+glc"
    assert protocol_table.label("s", "bar", recorded("erm")) == "erm"
    # A config recorded before the correction fields existed: they take their old behaviour
    # (none), so the paper's options without them are the paper's rule.
    old = dict(protocol_config.METHODS["l2rw"]["method"]["l2rw"])
    old.pop("correction"), old.pop("correction_at")
    assert protocol_table.label("s", "x", {"method": {"name": "l2rw", "l2rw": old}}) == "l2rw"
    assert config_lib.PAPER_L2RW["correction"] == "none"
    # Options no column has keep the name; so does a row without a recorded config.
    odd = dict(old, memory_decay=0.5)
    assert protocol_table.label("s", "odd", {"method": {"name": "l2rw", "l2rw": odd}}) == "odd"
    assert protocol_table.label("s", "plain", None) == "plain"
