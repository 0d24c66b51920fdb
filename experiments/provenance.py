"""The one provenance record of an experiment's results: command, date, versions, machine, commit.

``record(module, args)`` is written into every results file of the entry points that keep
results (``experiments/reproduce.py``, ``experiments/protocol.py``) and :func:`describe` is its
one-line form under their tables.
"""

from __future__ import annotations

import datetime
import importlib.metadata
import os
import platform
import subprocess
from typing import Sequence

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
# The distributions whose versions are recorded (None: not installed).
PACKAGES = (
    "jax",
    "jaxlib",
    "flax",
    "optax",
    "orbax-checkpoint",
    "numpy",
    "scipy",
    "pillow",
    "ml_collections",
)


def versions() -> dict:
    """``{"python": ..., "l2rw_jax": ..., <each of PACKAGES>: version or None}``."""
    import l2rw_jax

    out = {"python": platform.python_version(), "l2rw_jax": l2rw_jax.__version__}
    for name in PACKAGES:
        try:
            out[name] = importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            out[name] = None
    return out


def device() -> dict:
    """The machine: JAX's first device's ``platform`` and ``kind``, the device ``count`` and
    the host's ``cpu_cores``."""
    import jax

    d = jax.devices()[0]
    return {
        "platform": d.platform,
        "kind": d.device_kind,
        "count": jax.device_count(),
        "cpu_cores": os.cpu_count(),
    }


def git_commit(root: str = ROOT) -> str | None:
    """``git rev-parse HEAD`` in ``root``; None where git or the repository is missing (a copy
    of the working tree without .git)."""
    try:
        return subprocess.run(
            ["git", "rev-parse", "HEAD"],
            cwd=root,
            capture_output=True,
            text=True,
            timeout=10,
            check=True,
        ).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return None


def command(module: str, args: Sequence[str]) -> str:
    """``python -m <module> <args...>``: the command line that made the results."""
    return " ".join(["python -m", module, *args]).strip()


def now() -> str:
    """The UTC date and time, ``YYYY-MM-DD HH:MM UTC``."""
    return datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC")


def record(module: str, args: Sequence[str], commit: str | None = None) -> dict:
    """``{"command", "date", "versions", "device", "git_commit"}`` of a run of ``python -m
    <module> <args>``; ``commit`` overrides ``git rev-parse HEAD`` (a copy without .git)."""
    return {
        "command": command(module, args),
        "date": now(),
        "versions": versions(),
        "device": device(),
        "git_commit": commit or git_commit(),
    }


def describe(rec: dict) -> str:
    """One line: command, date, device, versions and commit of a :func:`record`."""
    d = rec["device"]
    return (
        f"command: `{rec['command']}`; {rec['date']}; {d['platform']}: {d['kind']}, "
        f"{d['cpu_cores']} CPU cores; "
        + ", ".join(f"{k} {v}" for k, v in rec["versions"].items())
        + f"; commit {rec['git_commit'] or 'unknown'}"
    )
