"""`import l2rw_jax` needs no TensorFlow, tfds, ml_collections, scikit-learn or tensorboardX.

Accelerator hosts have jax, flax, optax, orbax, chex, numpy, scipy and matplotlib only
(docs/design.md §7), so these modules must be imported where they are used, never at import
time. Each check runs in a fresh interpreter: this test process has imported TensorFlow through
other tests.
"""

import os
import subprocess
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
ABSENT = ("tensorflow", "tensorflow_datasets", "ml_collections", "sklearn", "tensorboardX")
# `sys.modules[name] = None` makes `import name` (and `import name.sub`) raise ImportError,
# as on a host where it is not installed.
BLOCK = "import sys\nfor _name in {names!r}:\n    sys.modules[_name] = None\n"


def _python(code: str) -> subprocess.CompletedProcess:
    env = dict(os.environ, JAX_PLATFORMS="cpu")
    return subprocess.run(
        [sys.executable, "-c", code], cwd=ROOT, env=env, capture_output=True, text=True, timeout=300
    )


def test_package_imports_with_tf_tfds_ml_collections_sklearn_tensorboardx_absent():
    code = BLOCK.format(names=ABSENT) + (
        "import l2rw_jax\nimport l2rw_jax.train\nimport l2rw_jax.audit\n"
        "import l2rw_jax.backends\nimport l2rw_jax.stream_order\n"
        "import l2rw_jax.tfdata_backend\nimport l2rw_jax.device_backend\n"
        "import l2rw_jax.device_splits\nimport l2rw_jax.device_batches\n"
        "import l2rw_jax.device_call\nimport l2rw_jax.from_config\n"
        "import l2rw_jax.image_folder\nimport l2rw_jax.chrono\n"
        "assert l2rw_jax.train_and_evaluate and l2rw_jax.audit.run_audit\n"
        "print('ok')\n"
    )
    out = _python(code)
    assert out.returncode == 0 and out.stdout.strip() == "ok", out.stderr[-3000:]


def test_import_loads_none_of_the_heavy_optional_modules():
    # With everything installed: importing the package must still not load them.
    heavy = ABSENT + ("orbax", "matplotlib", "scipy", "PIL")  # PIL: only folder: sources.
    out = _python(
        f"import sys\nimport l2rw_jax\nprint(sorted(m for m in {heavy!r} if m in sys.modules))\n"
    )
    assert out.returncode == 0, out.stderr[-3000:]
    assert out.stdout.strip() == "[]"


def test_public_surface_is_all_and_leaves_out_the_loop_internals():
    import ast

    import l2rw_jax

    with open(os.path.join(ROOT, "l2rw_jax", "__init__.py")) as f:
        tree = ast.parse(f.read())
    imported = [
        a.asname or a.name
        for node in tree.body
        if isinstance(node, ast.ImportFrom)
        for a in node.names
    ]
    # Every name imported is listed once in __all__, and every listed name exists.
    assert sorted(imported) == sorted(l2rw_jax.__all__)
    assert len(set(l2rw_jax.__all__)) == len(l2rw_jax.__all__)
    assert all(hasattr(l2rw_jax, name) for name in l2rw_jax.__all__)
    internals = {
        "DeviceSplit",
        "StreamOrder",
        "batch_at",
        "place_split",
        "index_shuffle",
        "backends",
        "build",
        "stream_order",
        "device_splits",
        "device_batches",
        "chrono",
        "Chrono",
        "Backend",
        "Call",
        "Feed",
        "workdir",
        "xla_options",
        "members",
        "device_call",
        "make_train_call",
    }
    assert not internals & set(l2rw_jax.__all__)
