"""Packaging: the wheel holds only l2rw_jax, `pip install l2rw_jax` brings what the library
imports and nothing an accelerator host lacks, the extras hold the rest, constraints.txt pins
everything."""

import ast
import configparser
import os
import sys

import setuptools
from packaging.requirements import Requirement

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _setup_cfg():
    cfg = configparser.ConfigParser()
    cfg.read(os.path.join(ROOT, "setup.cfg"))
    return cfg


def _lines(text):
    return [ln.split("#")[0].strip() for ln in text.splitlines() if ln.split("#")[0].strip()]


def test_wheel_packages_are_exactly_l2rw_jax_and_its_subpackages():
    include = _lines(_setup_cfg()["options.packages.find"]["include"])
    found = setuptools.find_packages(where=ROOT, include=include)
    # Every folder of l2rw_jax with an __init__.py (a new subpackage must not be left out) ...
    on_disk = sorted(
        os.path.relpath(d, ROOT).replace(os.sep, ".")
        for d, _, files in os.walk(os.path.join(ROOT, "l2rw_jax"))
        if "__init__.py" in files
    )
    assert sorted(found) == on_disk and "l2rw_jax.audit" in found
    # ... and no top-level `experiments` (or benchmarks, tests) in everyone's site-packages.
    assert os.path.exists(os.path.join(ROOT, "experiments", "__init__.py"))
    assert {p.split(".")[0] for p in found} == {"l2rw_jax"}


def test_extras_and_constraints_pin_every_requirement():
    opts = _setup_cfg()
    extras = {
        k: [Requirement(r) for r in _lines(v)] for k, v in opts["options.extras_require"].items()
    }
    assert set(extras) == {"cuda", "tpu", "tfds", "digits", "tensorboard", "all", "test"}
    assert [(r.name, r.extras) for r in extras["cuda"]] == [("jax", {"cuda12"})]
    assert [(r.name, r.extras) for r in extras["tpu"]] == [("jax", {"tpu"})]
    with open(os.path.join(ROOT, "constraints.txt")) as f:
        pins = {}
        for r in map(Requirement, _lines(f.read())):
            (spec,) = r.specifier  # exactly one `==` per line
            assert spec.operator == "==", r
            pins[r.name.lower().replace("_", "-")] = spec.version
    install = [Requirement(r) for r in _lines(opts["options"]["install_requires"])]
    with open(os.path.join(ROOT, "requirements.txt")) as f:
        requirements = [Requirement(r) for r in _lines(f.read())]
    for r in install + requirements + [r for rs in extras.values() for r in rs]:
        name = r.name.lower().replace("_", "-")
        assert name in pins, f"{r.name} has no pin in constraints.txt"
        assert r.specifier.contains(pins[name]), f"pin {name}=={pins[name]} violates {r}"
    assert pins["jaxlib"] == pins["jax"]  # jax[cuda12] / jax[tpu] need jaxlib == jax


def _names(reqs):
    return {Requirement(r).name.lower().replace("_", "-") for r in reqs}


# The optional packages (l2rw_jax._optional.EXTRAS' modules) as distributions.
OPTIONAL_DISTS = {
    "tensorflow": "tensorflow-cpu",
    "tensorflow_datasets": "tensorflow-datasets",
    "sklearn": "scikit-learn",
    "tensorboardX": "tensorboardx",
}


def test_install_requires_has_no_optional_package_and_the_extras_hold_them():
    from l2rw_jax import _optional

    opts = _setup_cfg()
    install = _names(_lines(opts["options"]["install_requires"]))
    extras = {k: _names(_lines(v)) for k, v in opts["options.extras_require"].items()}
    assert not install & {
        "tensorflow",
        "tensorflow-cpu",
        "tensorflow-datasets",
        "scikit-learn",
        "tensorboardx",
        "tensorboard",
        "importlib-resources",
    }
    assert set(OPTIONAL_DISTS) == set(_optional.EXTRAS)
    for module, (_, extra) in _optional.EXTRAS.items():  # the extra the message names has it
        assert OPTIONAL_DISTS[module] in extras[extra], (module, extra)
    assert extras["tfds"] == {"tensorflow-cpu", "tensorflow-datasets", "importlib-resources"}
    assert extras["digits"] == {"scikit-learn"}
    assert extras["tensorboard"] == {"tensorboardx", "tensorboard"}
    assert extras["all"] == extras["tfds"] | extras["digits"] | extras["tensorboard"]


# Import name -> distribution, for the library's non-optional third-party imports.
INSTALLED_DISTS = {
    "jax": "jax",
    "flax": "flax",
    "optax": "optax",
    "chex": "chex",
    "orbax": "orbax-checkpoint",
    "etils": "etils",
    "ml_collections": "ml-collections",
    "absl": "absl-py",
    "numpy": "numpy",
    "matplotlib": "matplotlib",
    "PIL": "pillow",
    "tqdm": "tqdm",
    "jaxlib": "jax",
    "scipy": "jax",
}  # jaxlib, scipy: dependencies of jax.
# Imported inside `try: ... except ImportError` (a gs:// workdir's client), never required.
GUARDED = {"google"}


def _imports(tree):
    """Top-level module names of the absolute imports in ``tree``, outside
    ``if TYPE_CHECKING:`` blocks."""
    out = set()

    def visit(node):
        if isinstance(node, ast.If) and getattr(node.test, "id", None) == "TYPE_CHECKING":
            return
        if isinstance(node, ast.Import):
            out.update(a.name.split(".")[0] for a in node.names)
        elif isinstance(node, ast.ImportFrom) and node.level == 0:
            out.add(node.module.split(".")[0])
        for child in ast.iter_child_nodes(node):
            visit(child)

    visit(tree)
    return out


def test_every_library_import_is_installed_or_goes_through_the_optional_helper():
    install = _names(_lines(_setup_cfg()["options"]["install_requires"]))
    assert set(INSTALLED_DISTS.values()) <= install
    for d, _, files in os.walk(os.path.join(ROOT, "l2rw_jax")):
        for f in files:
            if f.endswith(".py"):
                path = os.path.join(d, f)
                with open(path) as fh:
                    names = _imports(ast.parse(fh.read()))
                third_party = names - set(sys.stdlib_module_names) - {"l2rw_jax"}
                # TensorFlow & co only through l2rw_jax._optional.require (one-line errors).
                assert not third_party & set(OPTIONAL_DISTS), (path, third_party)
                assert third_party <= set(INSTALLED_DISTS) | GUARDED, (path, third_party)
