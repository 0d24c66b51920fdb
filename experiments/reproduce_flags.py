"""The reproduction command's flags (``python -m experiments.reproduce``), parsed into
:class:`Args`: paths made absolute, defaults filled in, bad values refused before any work.
"""

from __future__ import annotations

import os
from typing import NamedTuple, Sequence

from absl import flags

from experiments.configs.reproduce import SUITES

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
COMMITTED_DIR = os.path.join(ROOT, "benchmarks", "results")


class Args(NamedTuple):
    """The parsed flags (:func:`parse_args`): paths absolute, defaults filled in."""

    suite: str
    budget_s: float
    parts: list
    data_dir: str
    workdir: str
    results_dir: str
    compilation_cache: str
    bundle: str
    git_commit: str | None
    safety: float


def define_flags(fv: flags.FlagValues) -> None:
    """The command's flags, on ``fv`` (the global ``flags.FLAGS`` when run as a program; a
    fresh ``FlagValues`` in :func:`parse_args`, so that importing this module defines none
    that could clash with another entry point's)."""
    flags.DEFINE_enum("suite", "paper", sorted(SUITES), "The suite to run.", flag_values=fv)
    flags.DEFINE_float(
        "budget_s", 480.0, "Wall-time budget of the whole run in seconds.", flag_values=fv
    )
    flags.DEFINE_list("parts", [], "Comma-separated part names (default: all).", flag_values=fv)
    flags.DEFINE_string(
        "data_dir",
        ".carry",
        "Holds mnist.npz and cifar10_dev.npz or cifar10_dev_jpeg.npz (fallback: ../shared/data).",
        flag_values=fv,
    )
    flags.DEFINE_string("workdir", "workdirs/reproduce", "Runs, scratch, caches.", flag_values=fv)
    flags.DEFINE_string(
        "results_dir",
        None,
        "Where reproduce_<part>.* go (default: "
        "benchmarks/results for the paper suite, <workdir>/results for smoke).",
        flag_values=fv,
    )
    flags.DEFINE_string(
        "compilation_cache",
        None,
        "JAX persistent compilation cache dir (default <workdir>/jax_cache; '' disables).",
        flag_values=fv,
    )
    flags.DEFINE_string(
        "bundle",
        "",
        "Also zip the results into this file after every write (one file that holds them all).",
        flag_values=fv,
    )
    flags.DEFINE_string(
        "git_commit",
        None,
        "The commit to record (default: git rev-parse HEAD, if git works).",
        flag_values=fv,
    )
    flags.DEFINE_float(
        "safety",
        1.15,
        "Estimates are multiplied by this before they are compared with the time left.",
        flag_values=fv,
    )


def parse_args(argv: Sequence[str]) -> Args:
    """The :class:`Args` of the command-line flags ``argv`` (without the program name).

    Raises:
      ValueError: an unknown or malformed flag, ``--budget_s <= 0``, ``--safety < 1``, or a
        part the suite does not have.
    """
    fv = flags.FlagValues()
    define_flags(fv)
    try:
        fv(["reproduce", *argv])
    except flags.Error as e:
        raise ValueError(str(e)) from None
    return args_from_flags(fv)


def args_from_flags(fv: flags.FlagValues) -> Args:
    if fv.budget_s <= 0 or fv.safety < 1:
        raise ValueError(
            f"--budget_s must be > 0 and --safety >= 1, got {fv.budget_s} and {fv.safety}."
        )
    names = [part.name for part in SUITES[fv.suite]]
    parts = list(fv.parts or names)
    unknown = [s for s in parts if s not in names]
    if unknown:
        raise ValueError(f"unknown part(s) {unknown}; suite {fv.suite!r} has {names}.")
    workdir = os.path.abspath(fv.workdir)
    results_dir = fv.results_dir
    if results_dir is None:
        results_dir = COMMITTED_DIR if fv.suite == "paper" else os.path.join(workdir, "results")
    cache = fv.compilation_cache
    if cache is None:
        cache = os.path.join(workdir, "jax_cache")
    return Args(
        fv.suite,
        fv.budget_s,
        parts,
        fv.data_dir,
        workdir,
        results_dir,
        cache,
        fv.bundle,
        fv.git_commit,
        fv.safety,
    )
