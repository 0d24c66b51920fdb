"""Each feature behind an extra fails, before any work, with one line naming the extra.

A missing package is simulated with ``sys.modules[name] = None`` (then ``import name`` raises
ImportError, as on a host where it is not installed), for the package and every submodule this
process has already imported.
"""

import importlib
import logging
import os
import sys

import pytest

from l2rw_jax import _optional
from l2rw_jax import datasets
from l2rw_jax import input_pipeline
from l2rw_jax import workdir

import tiny_data


def _absent(monkeypatch, top: str) -> None:
    for name in [m for m in sys.modules if m == top or m.startswith(top + ".")] + [top]:
        monkeypatch.setitem(sys.modules, name, None)


def _pip(extra: str) -> str:
    return f'pip install "l2rw_jax[{extra}]"'


def test_digits_source_names_the_digits_extra(monkeypatch):
    _absent(monkeypatch, "sklearn")
    with pytest.raises(ImportError) as e:
        datasets.load_arrays("digits")
    assert str(e.value) == f"the digits source needs scikit-learn: {_pip('digits')}"


def test_tfds_source_names_the_tfds_extra(monkeypatch):
    _absent(monkeypatch, "tensorflow_datasets")
    with pytest.raises(ImportError) as e:
        datasets.load_arrays("mnist", data_dir="/nonexistent")
    assert str(e.value) == f"the tfds source 'mnist' needs TensorFlow Datasets: {_pip('tfds')}"


def test_digits_builder_names_the_tfds_extra(monkeypatch):
    _absent(monkeypatch, "tensorflow_datasets")
    monkeypatch.delitem(sys.modules, "l2rw_jax.digits_builder", raising=False)
    with pytest.raises(ImportError) as e:
        importlib.import_module("l2rw_jax.digits_builder")
    assert str(e.value) == (f"l2rw_jax.digits_builder needs TensorFlow Datasets: {_pip('tfds')}")


def test_tf_data_pipeline_names_the_tfds_extra(monkeypatch):
    _absent(monkeypatch, "tensorflow")
    with pytest.raises(ImportError) as e:
        input_pipeline.test_dataset(None, batch_size=8, mean=0.0, std=1.0)  # TF comes first.
    assert str(e.value) == (
        f"the tf.data input pipeline (loop.backend='tfdata') needs TensorFlow: {_pip('tfds')}"
    )


def test_tfdata_backend_fails_before_loading_data_or_writing(monkeypatch, tmp_path):
    from l2rw_jax import train

    _absent(monkeypatch, "tensorflow")
    c = tiny_data.tiny_config(str(tmp_path / "missing.npz"), {"loop": {"backend": "tfdata"}})
    run = tmp_path / "run"
    with pytest.raises(ImportError) as e:  # Not FileNotFoundError: the npz is not read yet.
        train.train_and_evaluate(c, str(run))
    assert str(e.value) == (
        f"the tfdata input backend (loop.backend='tfdata') needs TensorFlow: {_pip('tfds')}"
    )
    assert not run.exists()


def test_missing_tensorboardx_warns_once_naming_the_extra(monkeypatch, tmp_path, caplog):
    _absent(monkeypatch, "tensorboardX")
    with caplog.at_level(logging.WARNING, logger="l2rw_jax.workdir"):
        writer = workdir.MetricsWriter(str(tmp_path), 0)
        writer.write([{"step": 1, "loss": 1.0}], {"train/loss": 1.0}, 1)
        writer.close()
    assert [r.getMessage() for r in caplog.records] == [
        f"writing TensorBoard files (<workdir>/tb) needs tensorboardX: {_pip('tensorboard')}; "
        "metrics.jsonl has every metric."
    ]
    assert not (tmp_path / "tb").exists()
    assert workdir.read_jsonl(tmp_path / "metrics.jsonl") == [{"step": 1, "loss": 1.0}]


def test_require_returns_the_module_or_refuses_a_non_optional_one():
    assert _optional.require("sklearn.datasets", "x") is sys.modules["sklearn.datasets"]
    with pytest.raises(ValueError, match=r"module='numpy' is not an optional dependency"):
        _optional.require("numpy", "x")


def test_broken_install_keeps_its_cause(monkeypatch, tmp_path):
    # An installed package whose own import fails: same message, the real cause chained.
    (tmp_path / "brokenpkg").mkdir()
    (tmp_path / "brokenpkg" / "__init__.py").write_text("import l2rw_jax_no_such_module\n")
    monkeypatch.syspath_prepend(os.fspath(tmp_path))
    monkeypatch.setitem(_optional.EXTRAS, "brokenpkg", ("brokenpkg", "all"))
    with pytest.raises(ImportError) as e:
        _optional.require("brokenpkg", "the thing")
    assert str(e.value) == f"the thing needs brokenpkg: {_pip('all')}"
    assert e.value.__cause__.name == "l2rw_jax_no_such_module"
