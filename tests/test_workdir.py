"""The one atomic writer: whole file or nothing, readable permissions, no temporary left.
Resuming: the data fingerprint refuses other data, a damaged checkpoint falls back; a class
absent from the test split is null in the logs and results."""

import json
import os
import stat

import numpy as np
import pytest

from l2rw_jax import workdir
from l2rw_jax import workdir as workdir_lib


def test_atomic_write_writes_whole_file_with_readable_permissions(tmp_path):
    path = str(tmp_path / "sub" / "out.txt")
    assert workdir.atomic_write(path, lambda f: f.write("a,b\n")) == path
    assert open(path).read() == "a,b\n"
    assert stat.S_IMODE(os.stat(path).st_mode) & 0o044 == 0o044 & ~_umask()  # not mkstemp's 0600
    workdir.atomic_write(path, lambda f: f.write(b"\x00\x01"), mode="wb")
    assert open(path, "rb").read() == b"\x00\x01"
    assert os.listdir(tmp_path / "sub") == ["out.txt"]


def test_atomic_write_failure_keeps_the_old_file_and_leaves_no_temporary(tmp_path):
    path = str(tmp_path / "out.txt")
    workdir.atomic_write(path, lambda f: f.write("old"))

    def fail(f):
        f.write("half")
        raise RuntimeError("boom")

    with pytest.raises(RuntimeError, match="boom"):
        workdir.atomic_write(path, fail)
    assert open(path).read() == "old"
    assert os.listdir(tmp_path) == ["out.txt"]
    with pytest.raises(ValueError, match="mode='a'"):
        workdir.atomic_write(path, lambda f: None, mode="a")


def _umask():
    umask = os.umask(0)
    os.umask(umask)
    return umask


# ------------------------------------------------------------------ resuming: data and checkpoints
# One tiny run shared by the tests below (ERM, 6 steps, checkpoints at 2, 4, 6).


def _tiny(tmp_path, name="t.npz", drop_test_class=None):
    import tiny_data

    path = tiny_data.write_tiny_npz(str(tmp_path / name))
    if drop_test_class is not None:
        with np.load(path) as f:
            a = dict(f)
        keep = a["y_test"] != drop_test_class
        a["x_test"], a["y_test"] = a["x_test"][keep], a["y_test"][keep]
        np.savez(path, **a)
    return path


def _config(npz, **loop):
    import tiny_data

    return tiny_data.tiny_config(
        npz, {"num_steps": 6, "loop": dict(checkpoint_every=2, eval_every=2, **loop)}
    )


@pytest.fixture(scope="module")
def stopped_run(tmp_path_factory):
    """A run stopped at step 4 of 6 (checkpoints 2 and 4) on a test split without class 9,
    and the same run uninterrupted."""
    from l2rw_jax import train

    root = tmp_path_factory.mktemp("resume")
    npz = _tiny(root, drop_test_class=9)
    full = train.train_and_evaluate(_config(npz), str(root / "full"))
    stopped = train.train_and_evaluate(_config(npz, stop_after_steps=4), str(root / "stopped"))
    assert (stopped["completed"], stopped["step"]) == (False, 4)
    return {"root": root, "npz": npz, "full": full}


def _copy(stopped_run, tmp_path):
    import shutil

    workdir = tmp_path / "run"
    shutil.copytree(stopped_run["root"] / "stopped", workdir)
    return str(workdir)


def test_a_class_absent_from_the_test_split_is_null_in_the_logs_and_results(stopped_run):
    r = stopped_run["full"]
    with open(stopped_run["root"] / "full" / "results.json") as f:
        on_disk = json.load(f)  # strict JSON: null, never NaN
    assert on_disk["per_class_accuracy"] == r["per_class_accuracy"]
    assert r["per_class_accuracy"]["per_seed"][0][9] is None
    assert r["per_class_accuracy"]["mean"][9] is None
    present = r["per_class_accuracy"]["per_seed"][0][:9]
    assert all(isinstance(a, float) for a in present)
    assert r["mean_class_accuracy"]["per_seed"] == [pytest.approx(np.mean(present))]
    assert r["worst_class_accuracy"]["per_seed"] == [min(present)]
    assert r["worst_class"] == [int(np.argmin(present))]
    records = [json.loads(line) for line in open(stopped_run["root"] / "full" / "metrics.jsonl")]
    test_records = [x for x in records if x["split"] == "test"]
    assert len(test_records) == 3 and all(x["per_class_accuracy"][9] is None for x in test_records)


def test_the_data_fingerprint_is_recorded_and_a_changed_npz_refused_on_resume(
    stopped_run, tmp_path
):
    from l2rw_jax import datasets
    from l2rw_jax import train

    workdir = _copy(stopped_run, tmp_path)
    npz = stopped_run["npz"]
    with open(os.path.join(workdir, workdir_lib.DATA_FINGERPRINT)) as f:
        recorded = json.load(f)
    assert recorded == datasets.fingerprint(datasets.load_arrays(f"npz:{npz}"))
    assert recorded["shapes"]["x_test"] == [90, 8, 8, 1]
    with np.load(npz) as f:
        original = dict(f)

    def regenerate(**changes):
        np.savez(npz, **{**original, **changes})

    try:
        y = original["y_train"].copy()
        y[[0, 1]] = y[[1, 0]]  # two labels swapped: same shapes, same pixels
        regenerate(y_train=y)
        with pytest.raises(
            ValueError,
            match=r"^workdir '.*' holds a run trained on other data: "
            r"its labels changed since; resume with the data",
        ):
            train.train_and_evaluate(_config(npz), workdir)
        x = original["x_train"].copy()
        x[0, 0, 0] ^= 1  # row 0 is in the hashed sample
        regenerate(x_train=x)
        with pytest.raises(ValueError, match=r"its pixels changed since;"):
            train.train_and_evaluate(_config(npz), workdir)
        regenerate(x_train=original["x_train"][:390], y_train=original["y_train"][:390])
        with pytest.raises(
            ValueError,
            match=r"its shapes and labels and pixels changed since "
            r"\(x_train \(400, 8, 8, 1\) -> \(390, 8, 8, 1\); "
            r"y_train \(400,\) -> \(390,\)\);",
        ):
            train.train_and_evaluate(_config(npz), workdir)
        # Refused before any work: the run is as it was.
        assert sorted(os.listdir(os.path.join(workdir, "checkpoints"))) == ["2", "4"]
    finally:
        regenerate()
    # The data the run was trained on: it resumes and ends as the uninterrupted run.
    results = train.train_and_evaluate(_config(npz), workdir)
    volatile = {"wall_time_s", "steps_per_s", "timing_s", "config"}
    assert {k: v for k, v in results.items() if k not in volatile} == {
        k: v for k, v in stopped_run["full"].items() if k not in volatile
    }


def test_a_damaged_newest_checkpoint_falls_back_to_the_previous_one(stopped_run, tmp_path, caplog):
    from l2rw_jax import train

    workdir = _copy(stopped_run, tmp_path)
    carry = os.path.join(workdir, "checkpoints", "4", "carry")
    for folder, _, files in os.walk(carry):  # every file of step 4's arrays overwritten
        for name in files:
            with open(os.path.join(folder, name), "wb") as f:
                f.write(b"\0garbage")
    with caplog.at_level("WARNING", logger="l2rw_jax.workdir"):
        results = train.train_and_evaluate(_config(stopped_run["npz"]), workdir)
    # The checkpoint helpers' warnings (the run also notes, once, the noise of its own npz).
    warnings = [
        r.getMessage()
        for r in caplog.records
        if r.levelname == "WARNING" and r.name == "l2rw_jax.workdir"
    ]
    assert len(warnings) == 1 and "\n" not in warnings[0]
    assert warnings[0].startswith("Checkpoint step(s) 4 in ")
    assert "resuming from step 2 instead, and deleting them." in warnings[0]
    # Resumed from step 2 and trained on: the same run as the uninterrupted one.
    volatile = {"wall_time_s", "steps_per_s", "timing_s", "config"}
    assert {k: v for k, v in results.items() if k not in volatile} == {
        k: v for k, v in stopped_run["full"].items() if k not in volatile
    }
    assert sorted(os.listdir(os.path.join(workdir, "checkpoints"))) == ["2", "4", "6"]


def test_no_restorable_checkpoint_is_one_line(stopped_run, tmp_path):
    from l2rw_jax import train

    workdir = _copy(stopped_run, tmp_path)
    for step in ("2", "4"):
        for folder, _, files in os.walk(os.path.join(workdir, "checkpoints", step, "carry")):
            for name in files:
                with open(os.path.join(folder, name), "wb") as f:
                    f.write(b"\0garbage")
    with pytest.raises(
        ValueError,
        match=r"^no checkpoint in '.*checkpoints' can be restored "
        r"\(steps 4, 2; newest: [^\n]*\); move the checkpoints/ "
        r"folder away to start over\.$",
    ):
        train.train_and_evaluate(_config(stopped_run["npz"]), workdir)
