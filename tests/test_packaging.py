"""Packaging: the wheel holds only l2rw_jax, the extras exist, constraints.txt pins everything."""

import configparser
import os

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
    assert set(extras) == {"cuda", "tpu", "tensorboard", "test"}
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
