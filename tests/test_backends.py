"""The loop sees both input backends through one interface (backends.Backend) and never asks
which one runs. That both train identically is tests/test_train.py's
test_device_and_tfdata_backends_train_identically."""

import ast
import os

import numpy as np
import pytest

from l2rw_jax import backends

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def test_every_backend_is_the_same_interface():
    assert sorted(backends.BACKENDS) == ["device", "tfdata"]
    for name, backend in backends.BACKENDS.items():
        assert backends.get(name) is backend
        assert isinstance(backend, backends.Backend)
        assert all(callable(f) for f in backend), name
    with pytest.raises(ValueError, match=r"backend='tpu' must be one of \['device', 'tfdata'\]"):
        backends.get("tpu")


def test_the_loop_never_names_a_backend():
    with open(os.path.join(ROOT, "l2rw_jax", "train.py"), encoding="utf-8") as f:
        tree = ast.parse(f.read())
    named = [
        node.value
        for node in ast.walk(tree)
        if isinstance(node, ast.Constant) and node.value in backends.BACKENDS
    ]
    assert named == []


def test_step_sums_reads_row_i_of_a_stacked_or_a_listed_call():
    stacked = {"loss": np.array([[1.0, 2.0], [3.0, 4.0], [5.0, 6.0]])}  # S x K, scanned call
    listed = [{"loss": np.array([7.0])}, {"loss": np.array([8.0])}]  # one per step
    rows = backends.step_sums([stacked, listed], 1)
    np.testing.assert_array_equal(rows[0]["loss"], [3.0, 4.0])
    np.testing.assert_array_equal(rows[1]["loss"], [8.0])
