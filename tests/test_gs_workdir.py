"""A ``gs://`` workdir goes through ``epath``: the entry points and their writers (tables, JSON,
plots, curves) and the workdir's readers and writers put every file in the bucket and nothing
under the current directory (before, ``os.path.abspath("gs://b/run")`` made ``<cwd>/gs:/b/run``).

The bucket is a local folder behind etils' own double (``fake_bucket.fake_gs``). Orbax does not
go through epath for ``gs://`` (google-cloud-storage and TensorStore's GCS driver talk to GCS
directly), so training itself cannot run on the fake bucket: a finished local run is copied in
and everything else is checked on it; training on ``gs://`` is checked to fail with one clear
error (google-cloud-storage is not installed here) after writing only into the bucket.
"""

import io
import json
import os
import shutil
import subprocess
import sys

import numpy as np
import pytest
from etils import epath

import tiny_data
from experiments import common
from experiments import plots
from fake_bucket import fake_gs
from l2rw_jax import compose
from l2rw_jax import workdir as workdir_lib

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
HAS_GCS = workdir_lib._has_gcs_client()


@pytest.fixture(scope="module")
def npz(tmp_path_factory):
    return tiny_data.write_tiny_npz(str(tmp_path_factory.mktemp("data") / "tiny.npz"))


def _config(npz):
    # The tiny config at the default learning rate (0.01), 4 steps, 2 seeds.
    return tiny_data.tiny_config(
        npz,
        {
            "optim": {"learning_rate": 0.01},
            "num_steps": 4,
            "num_seeds": 2,
            "loop": dict(checkpoint_every=4),
        },
    )


@pytest.fixture
def bucket(tmp_path, monkeypatch):
    """(the folder behind gs://, an empty current directory), the fake bucket on."""
    cwd = tmp_path / "cwd"
    cwd.mkdir()
    monkeypatch.chdir(cwd)
    with fake_gs(str(tmp_path / "gcs")):
        yield tmp_path / "gcs", cwd


def test_writers_and_readers_put_everything_in_the_bucket(npz, tmp_path, bucket):
    gcs, cwd = bucket
    config = _config(npz)
    local = tmp_path / "local"
    results = common.run_methods(config, str(local), ["erm"])  # Trained locally (orbax).
    shutil.copytree(local, gcs / "b" / "run")  # The finished run, now in the bucket.
    run = "gs://b/run"

    # The entry points' writers (quickstart, mnist, cifar, robust).
    curve = common.test_curve(f"{run}/erm")
    local_curve = common.test_curve(local / "erm")
    assert curve[0].tolist() == [2, 4] and curve[1].shape == (2, 2)
    np.testing.assert_array_equal(curve[0], local_curve[0])
    np.testing.assert_array_equal(curve[1], local_curve[1])
    workdir = workdir_lib.path(run)
    assert str(workdir / "erm") == "gs://b/run/erm"
    plots.plot_curves({"erm": curve}, workdir / "accuracy.png", "title")
    common.write_text(workdir / "table.md", common.method_table(results) + "\n")
    common.write_json(workdir / "summary.json", results)
    assert (gcs / "b/run/accuracy.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert (gcs / "b/run/table.md").read_text() == common.method_table(results) + "\n"
    assert "| erm" in (gcs / "b/run/table.md").read_text()
    assert json.loads((gcs / "b/run/summary.json").read_text()) == json.loads(json.dumps(results))

    # The workdir's readers and writers on the same run.
    assert workdir_lib.read_results(f"{run}/erm") == workdir_lib.read_results(local / "erm")
    assert (
        compose.read_config(f"{run}/erm").to_json() == compose.read_config(local / "erm").to_json()
    )
    assert compose.resolve_backend("auto", f"{run}/erm") == compose.resolve_backend(
        "auto", local / "erm"
    )
    # The same config: resumable (no error; config.json rewritten in the bucket).
    compose.check_or_write_config(f"{run}/erm", compose.read_config(local / "erm"))
    other = compose.read_config(local / "erm")
    other.optim.learning_rate = 0.5
    with pytest.raises(
        ValueError,
        match=r"^workdir 'gs://b/run/erm' holds a run with a "
        r"different config \(fields \['optim.learning_rate'\]",
    ):
        compose.check_or_write_config(f"{run}/erm", other)

    # metrics.jsonl rewritten as one object: a resume from step 2 drops the later records.
    all_records = workdir_lib.read_jsonl(local / "erm/metrics.jsonl")
    assert max(r["step"] for r in all_records) == 4
    writer = workdir_lib.MetricsWriter(f"{run}/erm", start_step=2)
    kept = [r for r in all_records if r["step"] <= 2]
    assert workdir_lib.read_jsonl(gcs / "b/run/erm/metrics.jsonl") == kept
    writer.write([{"step": 3, "split": "train", "loss": 1.5}], {"train/loss": 1.5}, 3)
    writer.close()
    assert workdir_lib.read_jsonl(gcs / "b/run/erm/metrics.jsonl") == kept + [
        {"step": 3, "split": "train", "loss": 1.5}
    ]

    x = np.arange(6, dtype=np.float32).reshape(2, 3)
    workdir_lib.write_npz(f"{run}/w.npz", x=x)
    with np.load(io.BytesIO((gcs / "b/run/w.npz").read_bytes())) as z:
        np.testing.assert_array_equal(z["x"], x)
    assert os.listdir(cwd) == []  # No <cwd>/gs:/..., no TensorBoard folder.


@pytest.mark.skipif(HAS_GCS, reason="google-cloud-storage installed: orbax would call GCS")
def test_quickstart_on_gs_writes_only_into_the_bucket_then_stops_at_orbax(npz, tmp_path, bucket):
    gcs, cwd = bucket
    # The real entry point (flags, workdir_lib.path, run_methods) in a process of its own.
    code = (
        "import runpy, sys; from fake_bucket import fake_gs\n"
        f"with fake_gs({str(gcs)!r}):\n"
        "    runpy.run_module('experiments.quickstart', run_name='__main__')"
    )
    flags = [
        f"--config.data.dataset=npz:{npz}",
        "--config.data.clean_per_class=2",
        "--config.data.hyper_val_size=20",
        "--config.data.batch_size=8",
        "--config.data.clean_batch_size=8",
        "--config.data.eval_batch_size=64",
        "--config.num_steps=2",
        "--config.optim.lr_boundaries=()",
        "--config.num_seeds=1",
        "--config.loop.progress_bar=False",
    ]
    out = subprocess.run(
        [sys.executable, "-c", code, "--workdir=gs://b/run", "--methods=erm", *flags],
        cwd=cwd,
        capture_output=True,
        text=True,
        timeout=300,
        env={
            **os.environ,
            "EPATH_USE_TF": "false",  # As conftest.py.
            "PYTHONPATH": os.pathsep.join([ROOT, os.path.join(ROOT, "tests")]),
        },
    )
    assert out.returncode != 0
    assert (
        "ImportError: workdir 'gs://b/run/erm': orbax checkpoints on gs:// need "
        "google-cloud-storage"
    ) in out.stderr, out.stderr[-3000:]
    # What ran before orbax (the config check and write) went to the bucket, nothing to cwd.
    assert json.loads((gcs / "b/run/erm/config.json").read_text())["method"]["name"] == "erm"
    assert os.listdir(cwd) == []
    with pytest.raises(ImportError, match="google-cloud-storage"):
        workdir_lib.checkpoint_manager(epath.Path("gs://b/run/erm"), keep=1)
